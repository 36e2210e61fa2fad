//! The `file` backend: O_DIRECT on a regular file or a kernel block device, through io_uring where the
//! kernel offers it and plain pread/pwrite (done at submit, completed on the next poll) otherwise.
//! It serves laptops and CI, and is the kernel-path baseline the NVMe path is measured against.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{
    check_range, AlignedBuf, BlockDevice, Completion, DeviceFactory, IoError, SubmitError,
};

/// Block size the file backend exposes: 4 KiB satisfies O_DIRECT on every common device.
pub const FILE_BLOCK_SIZE: u32 = 4096;

/// Requests in flight per instance.
const QUEUE_DEPTH: u32 = 128;

/// An opened file or block device; the factory of per-shard [`FileBdev`] instances.
#[derive(Debug, Clone)]
pub struct FileDisk {
    file: Arc<File>,
    path: PathBuf,
    num_blocks: u64,
    direct: bool,
    use_uring: bool,
}

fn errno(e: &std::io::Error) -> IoError {
    IoError::Device(e.raw_os_error().unwrap_or(libc::EIO))
}

impl FileDisk {
    /// Opens `path` (created if absent). When `size` is given and the path is an empty regular file
    /// (or a new one), it is extended to that size. O_DIRECT is used when the filesystem accepts it
    /// (tmpfs does not). See [`FileDisk::open_with`].
    pub fn open(path: &Path, size: Option<u64>) -> std::io::Result<FileDisk> {
        Self::open_with(path, size, true)
    }

    /// Opens `path`, creating it only when `create` is set. A file that holds data is never resized
    /// (a foreign file is refused by the engine without being touched). The file or device is locked
    /// (`flock`, exclusive) for as long as this disk or an instance of it lives: a second open fails
    /// with `EWOULDBLOCK`.
    pub fn open_with(path: &Path, size: Option<u64>, create: bool) -> std::io::Result<FileDisk> {
        let open = |direct: bool| {
            let mut o = OpenOptions::new();
            o.read(true).write(true).create(create).truncate(false);
            if direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o.open(path)
        };
        let (file, direct) = match open(true) {
            Ok(f) => (f, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (open(false)?, false),
            Err(e) => return Err(e),
        };
        // SAFETY: flock on a file descriptor this function owns; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let meta = file.metadata()?;
        if meta.is_file() && meta.len() == 0 {
            if let Some(sz) = size {
                file.set_len(sz)?;
            }
        }
        // Block devices report a zero length in metadata; seeking to the end gives their size.
        let len = {
            use std::io::Seek;
            let mut f = &file;
            f.seek(std::io::SeekFrom::End(0))?
        };
        let use_uring = std::env::var_os("NVKV_NO_URING").is_none();
        Ok(FileDisk {
            file: Arc::new(file),
            path: path.to_path_buf(),
            num_blocks: len / u64::from(FILE_BLOCK_SIZE),
            direct,
            use_uring,
        })
    }

    /// Whether O_DIRECT is in effect.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Forces the pread/pwrite path (for tests and comparisons).
    pub fn without_uring(mut self) -> Self {
        self.use_uring = false;
        self
    }

    /// A new per-shard instance.
    pub fn bdev(&self) -> FileBdev {
        let ring = if self.use_uring {
            uring::Ring::new(QUEUE_DEPTH)
        } else {
            None
        };
        FileBdev {
            disk: self.clone(),
            ring,
            done: VecDeque::new(),
        }
    }
}

impl DeviceFactory for FileDisk {
    type Dev = FileBdev;
    fn open(&self, _shard: usize) -> Result<FileBdev, IoError> {
        Ok(self.bdev())
    }
}

/// One shard's instance on a [`FileDisk`].
#[derive(Debug)]
pub struct FileBdev {
    disk: FileDisk,
    ring: Option<uring::Ring>,
    /// Completions of requests done synchronously (fallback path and the rare commands).
    done: VecDeque<Completion<AlignedBuf>>,
}

impl FileBdev {
    /// True when this instance submits through io_uring.
    pub fn uses_io_uring(&self) -> bool {
        self.ring.is_some()
    }

    /// Path of the file behind the instance.
    pub fn path(&self) -> &Path {
        &self.disk.path
    }

    fn fd(&self) -> i32 {
        self.disk.file.as_raw_fd()
    }

    fn busy(&self) -> bool {
        self.done.len() >= QUEUE_DEPTH as usize
    }

    fn sync_rw(
        &mut self,
        write: bool,
        lba: u64,
        nblocks: u32,
        mut buf: AlignedBuf,
        off: usize,
        tag: u64,
    ) {
        let len = nblocks as usize * FILE_BLOCK_SIZE as usize;
        let pos = lba * u64::from(FILE_BLOCK_SIZE);
        let ptr = buf[off..off + len].as_mut_ptr();
        let r = if write {
            // SAFETY: `ptr..ptr+len` lies inside `buf` (checked by check_range) and is valid for reads.
            unsafe {
                libc::pwrite(
                    self.fd(),
                    ptr as *const libc::c_void,
                    len,
                    pos as libc::off_t,
                )
            }
        } else {
            // SAFETY: `ptr..ptr+len` lies inside `buf`, which we own mutably, so it is valid for writes.
            unsafe { libc::pread(self.fd(), ptr as *mut libc::c_void, len, pos as libc::off_t) }
        };
        let result = if r < 0 {
            Err(errno(&std::io::Error::last_os_error()))
        } else if (r as usize) < len {
            Err(IoError::Short(r as usize))
        } else {
            Ok(())
        };
        self.done.push_back(Completion {
            tag,
            result,
            buf: Some(buf),
        });
    }

    fn submit_rw(
        &mut self,
        write: bool,
        lba: u64,
        nblocks: u32,
        buf: AlignedBuf,
        off: usize,
        tag: u64,
    ) -> Result<(), SubmitError<AlignedBuf>> {
        if let Err(e) = check_range(
            self.disk.num_blocks,
            FILE_BLOCK_SIZE,
            lba,
            nblocks,
            Some((buf.len(), off)),
        ) {
            return Err(SubmitError::Invalid(Some(buf), e));
        }
        let fd = self.fd();
        match &mut self.ring {
            Some(ring) => ring.submit_rw(
                fd,
                write,
                lba * u64::from(FILE_BLOCK_SIZE),
                nblocks,
                buf,
                off,
                tag,
            ),
            None => {
                if self.busy() {
                    return Err(SubmitError::Busy(Some(buf)));
                }
                self.sync_rw(write, lba, nblocks, buf, off, tag);
                Ok(())
            }
        }
    }
}

impl BlockDevice for FileBdev {
    type Buf = AlignedBuf;

    fn block_size(&self) -> u32 {
        FILE_BLOCK_SIZE
    }
    fn num_blocks(&self) -> u64 {
        self.disk.num_blocks
    }
    fn has_volatile_cache(&self) -> bool {
        // The page cache (without O_DIRECT) or the drive's cache may hold written data: always flush.
        true
    }
    fn alloc_buf(&mut self, len: usize) -> Result<AlignedBuf, IoError> {
        AlignedBuf::new(len).ok_or(IoError::Device(libc::ENOMEM))
    }

    fn submit_read(
        &mut self,
        lba: u64,
        nblocks: u32,
        buf: AlignedBuf,
        off: usize,
        tag: u64,
    ) -> Result<(), SubmitError<AlignedBuf>> {
        self.submit_rw(false, lba, nblocks, buf, off, tag)
    }

    fn submit_write(
        &mut self,
        lba: u64,
        nblocks: u32,
        buf: AlignedBuf,
        off: usize,
        tag: u64,
    ) -> Result<(), SubmitError<AlignedBuf>> {
        self.submit_rw(true, lba, nblocks, buf, off, tag)
    }

    fn submit_flush(&mut self, tag: u64) -> Result<(), SubmitError<AlignedBuf>> {
        let fd = self.fd();
        if let Some(ring) = &mut self.ring {
            return ring.submit_fsync(fd, tag);
        }
        if self.busy() {
            return Err(SubmitError::Busy(None));
        }
        let result = self.disk.file.sync_data().map_err(|e| errno(&e));
        self.done.push_back(Completion {
            tag,
            result,
            buf: None,
        });
        Ok(())
    }

    fn submit_write_zeroes(
        &mut self,
        lba: u64,
        nblocks: u32,
        tag: u64,
    ) -> Result<(), SubmitError<AlignedBuf>> {
        if let Err(e) = check_range(self.disk.num_blocks, FILE_BLOCK_SIZE, lba, nblocks, None) {
            return Err(SubmitError::Invalid(None, e));
        }
        if self.busy() {
            return Err(SubmitError::Busy(None));
        }
        // Rare on the engine's path: done synchronously with a zeroed buffer.
        match AlignedBuf::new(nblocks as usize * FILE_BLOCK_SIZE as usize) {
            Some(buf) => {
                self.sync_rw(true, lba, nblocks, buf, 0, tag);
                if let Some(c) = self.done.back_mut() {
                    c.buf = None;
                }
            }
            None => self.done.push_back(Completion {
                tag,
                result: Err(IoError::Device(libc::ENOMEM)),
                buf: None,
            }),
        }
        Ok(())
    }

    fn submit_deallocate(
        &mut self,
        lba: u64,
        nblocks: u32,
        tag: u64,
    ) -> Result<(), SubmitError<AlignedBuf>> {
        if let Err(e) = check_range(self.disk.num_blocks, FILE_BLOCK_SIZE, lba, nblocks, None) {
            return Err(SubmitError::Invalid(None, e));
        }
        if self.busy() {
            return Err(SubmitError::Busy(None));
        }
        // A hint: punching a hole may be unsupported (block devices, some filesystems); that is not an error.
        let _ = punch_hole(self.fd(), lba, nblocks);
        self.done.push_back(Completion {
            tag,
            result: Ok(()),
            buf: None,
        });
        Ok(())
    }

    fn poll(&mut self, max: usize, mut f: impl FnMut(Completion<AlignedBuf>)) -> usize {
        let mut n = super::drain_completed(&mut self.done, max, &mut f);
        if let Some(ring) = &mut self.ring {
            n += ring.poll(max - n, &mut f);
        }
        n
    }
}

fn punch_hole(fd: i32, lba: u64, nblocks: u32) -> std::io::Result<()> {
    let off = (lba * u64::from(FILE_BLOCK_SIZE)) as libc::off_t;
    let len = (u64::from(nblocks) * u64::from(FILE_BLOCK_SIZE)) as libc::off_t;
    // SAFETY: fallocate only reads its integer arguments; a bad fd gives an error, not UB.
    let r = unsafe {
        libc::fallocate(
            fd,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            len,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The io_uring path: requests own their buffers in a slab until their completion is reaped.
mod uring {
    use super::*;
    use io_uring::{opcode, squeue, types, IoUring};

    struct Slot {
        tag: u64,
        buf: Option<AlignedBuf>,
        want: usize,
    }

    pub(super) struct Ring {
        ring: IoUring,
        slots: Vec<Option<Slot>>,
        free: Vec<usize>,
        unsubmitted: bool,
    }

    impl std::fmt::Debug for Ring {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Ring")
                .field("in_flight", &(self.slots.len() - self.free.len()))
                .finish()
        }
    }

    impl Ring {
        /// None when the kernel has no io_uring (or it is forbidden, as in some containers).
        pub(super) fn new(depth: u32) -> Option<Ring> {
            let ring = IoUring::new(depth).ok()?;
            let n = depth as usize;
            Some(Ring {
                ring,
                slots: (0..n).map(|_| None).collect(),
                free: (0..n).rev().collect(),
                unsubmitted: false,
            })
        }

        fn push(&mut self, sqe: squeue::Entry, slot: usize) -> bool {
            // SAFETY: every buffer an entry points to is owned by `self.slots[slot]` until its completion
            // is reaped in `poll`, so the kernel never sees freed memory.
            let ok = unsafe { self.ring.submission().push(&sqe.user_data(slot as u64)) }.is_ok();
            if ok {
                self.unsubmitted = true;
            }
            ok
        }

        #[allow(clippy::too_many_arguments)]
        pub(super) fn submit_rw(
            &mut self,
            fd: i32,
            write: bool,
            pos: u64,
            nblocks: u32,
            mut buf: AlignedBuf,
            off: usize,
            tag: u64,
        ) -> Result<(), SubmitError<AlignedBuf>> {
            let Some(slot) = self.free.pop() else {
                return Err(SubmitError::Busy(Some(buf)));
            };
            let len = nblocks as usize * FILE_BLOCK_SIZE as usize;
            let ptr = buf[off..off + len].as_mut_ptr();
            let sqe = if write {
                opcode::Write::new(types::Fd(fd), ptr, len as u32)
                    .offset(pos)
                    .build()
            } else {
                opcode::Read::new(types::Fd(fd), ptr, len as u32)
                    .offset(pos)
                    .build()
            };
            // The buffer moves into the slab; its heap memory (what `ptr` points at) does not move.
            self.slots[slot] = Some(Slot {
                tag,
                buf: Some(buf),
                want: len,
            });
            if !self.push(sqe, slot) {
                let buf = self.slots[slot].take().and_then(|s| s.buf);
                self.free.push(slot);
                return Err(SubmitError::Busy(buf));
            }
            Ok(())
        }

        pub(super) fn submit_fsync(
            &mut self,
            fd: i32,
            tag: u64,
        ) -> Result<(), SubmitError<AlignedBuf>> {
            let Some(slot) = self.free.pop() else {
                return Err(SubmitError::Busy(None));
            };
            let sqe = opcode::Fsync::new(types::Fd(fd))
                .flags(types::FsyncFlags::DATASYNC)
                .build();
            self.slots[slot] = Some(Slot {
                tag,
                buf: None,
                want: 0,
            });
            if !self.push(sqe, slot) {
                self.slots[slot] = None;
                self.free.push(slot);
                return Err(SubmitError::Busy(None));
            }
            Ok(())
        }

        pub(super) fn poll(
            &mut self,
            max: usize,
            f: &mut impl FnMut(Completion<AlignedBuf>),
        ) -> usize {
            if self.unsubmitted {
                // One syscall per batch of submissions, like one doorbell write per batch.
                if self.ring.submit().is_ok() {
                    self.unsubmitted = false;
                }
            }
            let mut n = 0;
            while n < max {
                let Some(cqe) = self.ring.completion().next() else {
                    break;
                };
                let idx = cqe.user_data() as usize;
                let Some(slot) = self.slots.get_mut(idx).and_then(Option::take) else {
                    continue;
                };
                self.free.push(idx);
                let r = cqe.result();
                let result = if r < 0 {
                    Err(IoError::Device(-r))
                } else if (r as usize) < slot.want {
                    Err(IoError::Short(r as usize))
                } else {
                    Ok(())
                };
                f(Completion {
                    tag: slot.tag,
                    result,
                    buf: slot.buf,
                });
                n += 1;
            }
            n
        }
    }

    impl Drop for Ring {
        fn drop(&mut self) {
            // Buffers must outlive the kernel's use of them: wait for everything in flight.
            let mut guard = 0;
            while self.free.len() < self.slots.len() && guard < 100_000 {
                let _ = self.ring.submit_and_wait(1);
                let mut sink = |_c: Completion<AlignedBuf>| {};
                self.poll(usize::MAX, &mut sink);
                guard += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(disk: FileDisk) {
        let mut d = disk.bdev();
        let mut b = d.alloc_buf(8192).expect("alloc");
        b[4096..4100].copy_from_slice(b"wxyz");
        d.submit_write(5, 1, b, 4096, 1).expect("submit");
        d.submit_flush(2).expect("flush");
        let mut seen = vec![];
        while seen.len() < 2 {
            d.poll(8, |c| seen.push((c.tag, c.result.clone())));
        }
        assert!(seen.iter().all(|(_, r)| r.is_ok()), "{seen:?}");
        let b = d.alloc_buf(4096).expect("alloc");
        d.submit_read(5, 1, b, 0, 3).expect("submit");
        let mut got = None;
        while got.is_none() {
            d.poll(8, |c| got = c.buf);
        }
        assert_eq!(&got.expect("buf")[..4], b"wxyz");
        let b = d.alloc_buf(4096).expect("alloc");
        assert!(matches!(
            d.submit_read(disk.num_blocks, 1, b, 0, 4),
            Err(SubmitError::Invalid(..))
        ));
    }

    #[test]
    fn file_backend_both_paths() {
        let dir = std::env::temp_dir().join(format!("nvkv-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("disk");
        let disk = FileDisk::open(&p, Some(1 << 20)).expect("open");
        assert_eq!(disk.num_blocks, 256);
        let again = FileDisk::open(&p, None)
            .map(|_| ())
            .map_err(|e| e.raw_os_error());
        assert_eq!(
            again,
            Err(Some(libc::EWOULDBLOCK)),
            "a second open is refused"
        );
        roundtrip(disk.clone());
        roundtrip(disk.without_uring());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
