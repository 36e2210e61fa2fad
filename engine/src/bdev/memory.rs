//! The `memory` backend: a RAM disk shared by the shards' instances; a request completes on the next poll.
//! It measures the CPU path alone and makes tests fast; the disk outlives a `Db`, so tests can reopen it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{
    check_range, AlignedBuf, BlockDevice, Completion, DeviceFactory, IoError, SubmitError,
};

/// Bytes per lock: shards touch disjoint slices, so they rarely meet on one chunk.
const CHUNK: usize = 1 << 20;

/// A RAM disk. Cloning gives another handle on the same bytes.
#[derive(Clone, Debug)]
pub struct MemDisk {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    chunks: Vec<Mutex<Box<[u8]>>>,
    block_size: u32,
    num_blocks: u64,
    volatile_cache: bool,
}

fn lock(m: &Mutex<Box<[u8]>>) -> MutexGuard<'_, Box<[u8]>> {
    // A panic while holding a chunk lock leaves plain bytes behind; they are still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MemDisk {
    /// A zeroed disk of `num_blocks` blocks of `block_size` bytes.
    pub fn new(block_size: u32, num_blocks: u64) -> Self {
        Self::from_image(
            block_size,
            &vec![0u8; block_size as usize * num_blocks as usize],
        )
    }

    /// A disk holding `image` (its length is rounded down to whole blocks).
    pub fn from_image(block_size: u32, image: &[u8]) -> Self {
        let num_blocks = (image.len() / block_size as usize) as u64;
        let chunks = image[..num_blocks as usize * block_size as usize]
            .chunks(CHUNK)
            .map(|c| Mutex::new(c.to_vec().into_boxed_slice()))
            .collect();
        MemDisk {
            inner: Arc::new(Inner {
                chunks,
                block_size,
                num_blocks,
                volatile_cache: false,
            }),
        }
    }

    /// Makes the instances report a volatile write cache, so the engine issues Flush (crash tests).
    pub fn with_volatile_cache(self, on: bool) -> Self {
        let inner = Inner {
            chunks: self
                .inner
                .chunks
                .iter()
                .map(|c| Mutex::new(lock(c).clone()))
                .collect(),
            block_size: self.inner.block_size,
            num_blocks: self.inner.num_blocks,
            volatile_cache: on,
        };
        MemDisk {
            inner: Arc::new(inner),
        }
    }

    /// A copy of the whole disk.
    pub fn image(&self) -> Vec<u8> {
        let mut v =
            Vec::with_capacity(self.inner.num_blocks as usize * self.inner.block_size as usize);
        for c in &self.inner.chunks {
            v.extend_from_slice(&lock(c));
        }
        v
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.inner.block_size
    }

    /// Number of blocks.
    pub fn num_blocks(&self) -> u64 {
        self.inner.num_blocks
    }

    /// Copies bytes at byte offset `pos` into `out`.
    pub fn read_at(&self, mut pos: usize, out: &mut [u8]) {
        let mut done = 0;
        while done < out.len() {
            let (ci, co) = (pos / CHUNK, pos % CHUNK);
            let Some(chunk) = self.inner.chunks.get(ci) else {
                return;
            };
            let c = lock(chunk);
            let n = (c.len() - co).min(out.len() - done);
            out[done..done + n].copy_from_slice(&c[co..co + n]);
            done += n;
            pos += n;
        }
    }

    /// Copies `data` to byte offset `pos`.
    pub fn write_at(&self, mut pos: usize, data: &[u8]) {
        let mut done = 0;
        while done < data.len() {
            let (ci, co) = (pos / CHUNK, pos % CHUNK);
            let Some(chunk) = self.inner.chunks.get(ci) else {
                return;
            };
            let mut c = lock(chunk);
            let n = (c.len() - co).min(data.len() - done);
            c[co..co + n].copy_from_slice(&data[done..done + n]);
            done += n;
            pos += n;
        }
    }

    /// A new per-shard instance on this disk.
    pub fn bdev(&self) -> MemBdev {
        MemBdev {
            disk: self.clone(),
            done: VecDeque::new(),
            queue_depth: 256,
            lifo: false,
        }
    }
}

impl DeviceFactory for MemDisk {
    type Dev = MemBdev;
    fn open(&self, _shard: usize) -> Result<MemBdev, IoError> {
        Ok(self.bdev())
    }
}

/// One shard's instance of a [`MemDisk`]. The transfer happens at submit; the completion waits for a poll.
#[derive(Debug)]
pub struct MemBdev {
    disk: MemDisk,
    done: VecDeque<Completion<AlignedBuf>>,
    queue_depth: usize,
    lifo: bool,
}

impl MemBdev {
    /// Limits requests in flight, so tests see `Busy`.
    pub fn set_queue_depth(&mut self, qd: usize) {
        self.queue_depth = qd.max(1);
    }

    /// Completes the newest request first (a device may complete in any order; tests use this to see
    /// completions out of submission order).
    pub fn set_lifo_completions(&mut self, lifo: bool) {
        self.lifo = lifo;
    }

    fn admit(&self) -> bool {
        self.done.len() < self.queue_depth
    }

    fn byte_pos(&self, lba: u64) -> usize {
        lba as usize * self.disk.inner.block_size as usize
    }
}

impl BlockDevice for MemBdev {
    type Buf = AlignedBuf;

    fn block_size(&self) -> u32 {
        self.disk.inner.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.disk.inner.num_blocks
    }
    fn has_volatile_cache(&self) -> bool {
        self.disk.inner.volatile_cache
    }
    fn alloc_buf(&mut self, len: usize) -> Result<AlignedBuf, IoError> {
        AlignedBuf::new(len).ok_or(IoError::Device(libc::ENOMEM))
    }

    fn submit_read(
        &mut self,
        lba: u64,
        nblocks: u32,
        mut buf: AlignedBuf,
        buf_offset: usize,
        tag: u64,
    ) -> Result<(), SubmitError<AlignedBuf>> {
        if !self.admit() {
            return Err(SubmitError::Busy(Some(buf)));
        }
        let bs = self.block_size();
        if let Err(e) = check_range(
            self.num_blocks(),
            bs,
            lba,
            nblocks,
            Some((buf.len(), buf_offset)),
        ) {
            return Err(SubmitError::Invalid(Some(buf), e));
        }
        let n = nblocks as usize * bs as usize;
        self.disk
            .read_at(self.byte_pos(lba), &mut buf[buf_offset..buf_offset + n]);
        self.done.push_back(Completion {
            tag,
            result: Ok(()),
            buf: Some(buf),
        });
        Ok(())
    }

    fn submit_write(
        &mut self,
        lba: u64,
        nblocks: u32,
        buf: AlignedBuf,
        buf_offset: usize,
        tag: u64,
    ) -> Result<(), SubmitError<AlignedBuf>> {
        if !self.admit() {
            return Err(SubmitError::Busy(Some(buf)));
        }
        let bs = self.block_size();
        if let Err(e) = check_range(
            self.num_blocks(),
            bs,
            lba,
            nblocks,
            Some((buf.len(), buf_offset)),
        ) {
            return Err(SubmitError::Invalid(Some(buf), e));
        }
        let n = nblocks as usize * bs as usize;
        self.disk
            .write_at(self.byte_pos(lba), &buf[buf_offset..buf_offset + n]);
        self.done.push_back(Completion {
            tag,
            result: Ok(()),
            buf: Some(buf),
        });
        Ok(())
    }

    fn submit_flush(&mut self, tag: u64) -> Result<(), SubmitError<AlignedBuf>> {
        if !self.admit() {
            return Err(SubmitError::Busy(None));
        }
        self.done.push_back(Completion {
            tag,
            result: Ok(()),
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
        if !self.admit() {
            return Err(SubmitError::Busy(None));
        }
        if let Err(e) = check_range(self.num_blocks(), self.block_size(), lba, nblocks, None) {
            return Err(SubmitError::Invalid(None, e));
        }
        let zeros = vec![0u8; nblocks as usize * self.block_size() as usize];
        self.disk.write_at(self.byte_pos(lba), &zeros);
        self.done.push_back(Completion {
            tag,
            result: Ok(()),
            buf: None,
        });
        Ok(())
    }

    fn submit_deallocate(
        &mut self,
        lba: u64,
        nblocks: u32,
        tag: u64,
    ) -> Result<(), SubmitError<AlignedBuf>> {
        // A hint only: the bytes stay as they were, which is one of the allowed outcomes.
        if !self.admit() {
            return Err(SubmitError::Busy(None));
        }
        if let Err(e) = check_range(self.num_blocks(), self.block_size(), lba, nblocks, None) {
            return Err(SubmitError::Invalid(None, e));
        }
        self.done.push_back(Completion {
            tag,
            result: Ok(()),
            buf: None,
        });
        Ok(())
    }

    fn poll(&mut self, max: usize, mut f: impl FnMut(Completion<AlignedBuf>)) -> usize {
        if !self.lifo {
            return super::drain_completed(&mut self.done, max, f);
        }
        let mut n = 0;
        while n < max {
            let Some(c) = self.done.pop_back() else { break };
            f(c);
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_back_and_busy() {
        let disk = MemDisk::new(512, 64);
        let mut d = disk.bdev();
        d.set_queue_depth(1);
        let mut b = d.alloc_buf(1024).expect("alloc");
        b[..4].copy_from_slice(b"abcd");
        d.submit_write(3, 2, b, 0, 7).expect("submit");
        let b2 = d.alloc_buf(512).expect("alloc");
        let busy = d.submit_read(3, 1, b2, 0, 8);
        assert!(matches!(busy, Err(SubmitError::Busy(Some(_)))));
        let mut tags = vec![];
        d.poll(8, |c| tags.push((c.tag, c.result.is_ok())));
        assert_eq!(tags, vec![(7, true)]);
        let b3 = d.alloc_buf(512).expect("alloc");
        d.submit_read(3, 1, b3, 0, 9).expect("submit");
        let mut got = None;
        d.poll(8, |c| got = c.buf);
        assert_eq!(&got.expect("buf")[..4], b"abcd");
        let b4 = d.alloc_buf(512).expect("alloc");
        assert!(matches!(
            d.submit_read(64, 1, b4, 0, 1),
            Err(SubmitError::Invalid(..))
        ));
    }
}
