//! The fio ioengine: `struct ioengine_ops` filled with the functions below, handed to fio by `get_ioengine`.
//!
//! Ownership, from fio's point of view:
//! - per process: one [`Controller`] per PCI address, opened by the first job that names it and shut down when
//!   the last job using it has cleaned up (`CONTROLLERS`);
//! - per job (`td->io_ops_data`): a [`Job`] with the job's [`QueuePair`] and the io_us reaped by `getevents`;
//! - per io_u (`io_u->engine_data`): a [`Unit`] owning the io_u's DMA buffer (`io_u->buf` points into it);
//! - per file (`f->engine_data`): a [`FileCtx`] with the namespace.
//!
//! Every `extern "C"` function checks its pointers and catches panics: nothing unwinds into fio.

use crate::errors::{detail, errno, lba_range};
use crate::sys;
use crate::target::Target;
use nvme_driver::{Controller, DmaBuf, Namespace, QueueConfig, QueuePair, SubmitErrorKind};
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const DMA_ALIGN: usize = 4096;

/// Controllers open in this process: address, handle, jobs using it.
static CONTROLLERS: Mutex<Vec<(String, Controller, usize)>> = Mutex::new(Vec::new());

struct Job {
    ctrl: Controller,
    addr: String,
    qp: QueuePair,
    /// io_us reaped by the last `getevents`, handed out by `event`.
    done: Vec<*mut sys::io_u>,
    /// Every io_u `io_u_init` saw (their buffers are swapped in by `post_init`).
    units: Vec<*mut sys::io_u>,
    /// Bytes of one io_u's buffer (fio's max_bs).
    max_bs: usize,
}

struct Unit {
    buf: Option<DmaBuf>,
    /// Start and length of the DMA buffer (kept while the buffer itself is with the device).
    ptr: *mut u8,
    len: usize,
    /// Text for `errdetails` when the last request failed.
    detail: Option<String>,
}

struct FileCtx {
    target: Target,
    ns: Namespace,
}

fn log(msg: impl std::fmt::Display) {
    eprintln!("nvkv: {msg}");
}

/// Runs `f`, turning a panic into `on_panic` (after saying so): nothing unwinds into C.
fn guard<T>(on_panic: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            log(format!(
                "internal error (panic caught at the fio boundary): {msg}"
            ));
            on_panic
        }
    }
}

fn lock_controllers() -> std::sync::MutexGuard<'static, Vec<(String, Controller, usize)>> {
    CONTROLLERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The controller at `addr`, opened when not open yet; `users` is added to its count of jobs.
fn controller(addr: &str, users: usize) -> Result<Controller, String> {
    let mut list = lock_controllers();
    if let Some(e) = list.iter_mut().find(|e| e.0 == addr) {
        e.2 += users;
        return Ok(e.1.clone());
    }
    let c = Controller::open(addr).map_err(|e| e.to_string())?;
    list.push((addr.to_string(), c.clone(), users));
    Ok(c)
}

/// A job is done with the controller at `addr`; the last one closes it (orderly shutdown).
fn release(addr: &str) {
    let mut list = lock_controllers();
    if let Some(i) = list.iter().position(|e| e.0 == addr) {
        list[i].2 = list[i].2.saturating_sub(1);
        if list[i].2 == 0 {
            list.remove(i);
        }
    }
}

/// # Safety
/// `td` must be null or a live `thread_data`.
unsafe fn files(td: *mut sys::thread_data) -> Vec<*mut sys::fio_file> {
    let mut out = Vec::new();
    if td.is_null() {
        return out;
    }
    // SAFETY: td is live (caller); files has o.nr_files entries when non-null, as fio's for_each_file assumes.
    unsafe {
        let files = (*td).files;
        if files.is_null() {
            return out;
        }
        for i in 0..(*td).o.nr_files as usize {
            let f = *files.add(i);
            if f.is_null() {
                break;
            }
            out.push(f);
        }
    }
    out
}

/// # Safety
/// `f` must be a live `fio_file`.
unsafe fn file_name(f: *mut sys::fio_file) -> String {
    // SAFETY: f is live (caller); file_name is a NUL-terminated string fio owns.
    unsafe {
        let n = (*f).file_name;
        if n.is_null() {
            return String::new();
        }
        CStr::from_ptr(n).to_string_lossy().into_owned()
    }
}

/// Parses the file's name, opens its controller and finds its namespace; stores the result in
/// `f->engine_data` and tells fio the size. Idempotent.
///
/// # Safety
/// `f` must be a live `fio_file`.
unsafe fn file_ctx(f: *mut sys::fio_file) -> Result<&'static FileCtx, String> {
    // SAFETY: f is live (caller); engine_data is null or a FileCtx this module leaked.
    unsafe {
        if !(*f).engine_data.is_null() {
            return Ok(&*((*f).engine_data as *const FileCtx));
        }
        let name = file_name(f);
        let target = Target::parse(&name).map_err(|e| e.to_string())?;
        let ctrl = controller(&target.addr, 0).map_err(|e| format!("{name}: {e}"))?;
        let ns = ctrl.namespace(target.nsid).map_err(|e| {
            let have: Vec<String> = ctrl
                .namespaces()
                .iter()
                .map(|n| n.nsid.to_string())
                .collect();
            format!("{name}: {e} (active namespaces: {})", have.join(", "))
        })?;
        let ctx = Box::into_raw(Box::new(FileCtx { target, ns }));
        (*f).engine_data = ctx as *mut c_void;
        (*f).real_file_size = ns.size_bytes();
        (*f).filetype = sys::fio_filetype_FIO_TYPE_BLOCK;
        (*f).flags |= sys::fio_file_flags_FIO_FILE_size_known;
        Ok(&*ctx)
    }
}

/// # Safety
/// `td` must be null or a live `thread_data`.
unsafe fn job<'a>(td: *mut sys::thread_data) -> Option<&'a mut Job> {
    if td.is_null() {
        return None;
    }
    // SAFETY: io_ops_data is null or the Job `init` leaked for this td; one thread drives a td.
    unsafe { ((*td).io_ops_data as *mut Job).as_mut() }
}

unsafe extern "C" fn setup(td: *mut sys::thread_data) -> c_int {
    guard(1, || {
        if td.is_null() {
            return 1;
        }
        // SAFETY: fio passes a live td.
        if unsafe { (*td).o.use_thread } == 0 {
            log(
                "the nvkv engine needs thread=1: jobs share the process's VFIO container and DMA memory, which \
                 forked job processes cannot use",
            );
            return 1;
        }
        let mut addr: Option<String> = None;
        // SAFETY: td is live.
        for f in unsafe { files(td) } {
            // SAFETY: f comes from td's file table.
            match unsafe { file_ctx(f) } {
                Ok(c) => {
                    if let Some(a) = &addr {
                        if *a != c.target.addr {
                            log(format!(
                                "all files of one job must be on one controller (DMA buffers belong to one \
                                 controller's IOMMU domain), got {a} and {}: use one job per controller",
                                c.target.addr
                            ));
                            return 1;
                        }
                    }
                    addr = Some(c.target.addr.clone());
                }
                Err(e) => {
                    log(e);
                    return 1;
                }
            }
        }
        0
    })
}

unsafe extern "C" fn init(td: *mut sys::thread_data) -> c_int {
    guard(1, || {
        if td.is_null() {
            return 1;
        }
        // SAFETY: td is live; its file table exists from job parsing on.
        let files = unsafe { files(td) };
        let Some(&first) = files.first() else {
            log("the job names no file: give filename=DDDD.BB.DD.F/NSID");
            return 1;
        };
        // SAFETY: first is live.
        let name = unsafe { file_name(first) };
        let target = match Target::parse(&name) {
            Ok(t) => t,
            Err(e) => {
                log(e);
                return 1;
            }
        };
        let ctrl = match controller(&target.addr, 1) {
            Ok(c) => c,
            Err(e) => {
                log(format!("{name}: {e}"));
                return 1;
            }
        };
        // SAFETY: td is live.
        let (iodepth, max_bs) = unsafe {
            let o = &(*td).o;
            (
                o.iodepth as usize,
                o.max_bs.iter().copied().max().unwrap_or(0) as usize,
            )
        };
        let mut config = QueueConfig::default();
        if iodepth + 1 > config.sq_entries as usize {
            config.sq_entries = (iodepth + 1).min(u16::MAX as usize / 2) as u16;
            config.cq_entries = config.sq_entries.saturating_mul(2);
        }
        let qp = match ctrl.queue_pair_with(config) {
            Ok(q) => q,
            Err(e) => {
                log(format!("{name}: creating the job's queue pair: {e}"));
                release(&target.addr);
                return 1;
            }
        };
        if qp.max_outstanding() < iodepth {
            log(format!(
                "note: iodepth {iodepth} is above what the queue pair holds ({}); fio will see FIO_Q_BUSY",
                qp.max_outstanding()
            ));
        }
        let job = Box::new(Job {
            ctrl,
            addr: target.addr,
            qp,
            done: Vec::with_capacity(iodepth.max(1)),
            units: Vec::with_capacity(iodepth.max(1)),
            max_bs,
        });
        // SAFETY: td is live; io_ops_data is the engine's to use.
        unsafe { (*td).io_ops_data = Box::into_raw(job) as *mut c_void };
        0
    })
}

unsafe extern "C" fn io_u_init(td: *mut sys::thread_data, io_u: *mut sys::io_u) -> c_int {
    guard(1, || {
        // SAFETY: td is null or live.
        let Some(job) = (unsafe { job(td) }) else {
            return 1;
        };
        if io_u.is_null() {
            return 1;
        }
        let len = job.max_bs.max(1).div_ceil(DMA_ALIGN) * DMA_ALIGN;
        let mut buf = match job.ctrl.alloc(len) {
            Ok(b) => b,
            Err(e) => {
                log(format!("allocating a {len}-byte DMA buffer: {e}"));
                return 1;
            }
        };
        let unit = Box::new(Unit {
            ptr: buf.as_mut_ptr(),
            len,
            buf: Some(buf),
            detail: None,
        });
        // SAFETY: io_u is live; engine_data is the engine's to use.
        unsafe { (*io_u).__bindgen_anon_1.engine_data = Box::into_raw(unit) as *mut c_void };
        job.units.push(io_u);
        0
    })
}

/// After fio has given each io_u its buffer (and maybe filled it): point the io_u at its DMA buffer instead,
/// with the same contents. fio reads and writes data through `io_u->buf` only, so I/O then needs no copy.
unsafe extern "C" fn post_init(td: *mut sys::thread_data) -> c_int {
    guard(1, || {
        // SAFETY: td is null or live.
        let Some(job) = (unsafe { job(td) }) else {
            return 1;
        };
        for &io_u in &job.units {
            // SAFETY: the io_us io_u_init saw are alive until io_u_free; engine_data is our Unit.
            unsafe {
                let unit = (*io_u).__bindgen_anon_1.engine_data as *mut Unit;
                let Some(unit) = unit.as_mut() else { continue };
                let old = (*io_u).buf as *const u8;
                if old.is_null() {
                    continue; // no data transfer in this job (trim only)
                }
                std::ptr::copy_nonoverlapping(old, unit.ptr, job.max_bs.min(unit.len));
                (*io_u).buf = unit.ptr as *mut c_void;
            }
        }
        0
    })
}

unsafe extern "C" fn io_u_free(_td: *mut sys::thread_data, io_u: *mut sys::io_u) {
    guard((), || {
        if io_u.is_null() {
            return;
        }
        // SAFETY: io_u is live; engine_data is null or our Unit. Its buffer, if the device still has it, is owned
        // by the queue pair and freed there, never here.
        unsafe {
            let unit = (*io_u).__bindgen_anon_1.engine_data as *mut Unit;
            if !unit.is_null() {
                drop(Box::from_raw(unit));
                (*io_u).__bindgen_anon_1.engine_data = std::ptr::null_mut();
            }
        }
    })
}

/// Completes `io_u` at once with `err`, keeping `msg` for `errdetails`.
///
/// # Safety
/// `io_u` must be live.
unsafe fn fail_now(io_u: *mut sys::io_u, err: i32, msg: String) -> sys::fio_q_status {
    // SAFETY: io_u is live (caller); engine_data is null or our Unit.
    unsafe {
        (*io_u).error = err as c_uint;
        (*io_u).resid = (*io_u).xfer_buflen;
        if let Some(u) = ((*io_u).__bindgen_anon_1.engine_data as *mut Unit).as_mut() {
            u.detail = Some(msg);
        } else {
            log(msg);
        }
    }
    sys::fio_q_status_FIO_Q_COMPLETED
}

fn op_name(ddir: sys::fio_ddir) -> &'static str {
    match ddir {
        sys::fio_ddir_DDIR_READ => "read",
        sys::fio_ddir_DDIR_WRITE => "write",
        sys::fio_ddir_DDIR_TRIM => "trim (deallocate)",
        sys::fio_ddir_DDIR_SYNC
        | sys::fio_ddir_DDIR_DATASYNC
        | sys::fio_ddir_DDIR_SYNC_FILE_RANGE => "flush",
        _ => "unknown operation",
    }
}

unsafe extern "C" fn queue(td: *mut sys::thread_data, io_u: *mut sys::io_u) -> sys::fio_q_status {
    let r = guard(None, || {
        // SAFETY: pointers are checked before use; fio passes live ones.
        unsafe { Some(queue_inner(td, io_u)) }
    });
    match r {
        Some(s) => s,
        None if io_u.is_null() => sys::fio_q_status_FIO_Q_COMPLETED,
        // SAFETY: io_u is non-null and fio's.
        None => unsafe { fail_now(io_u, libc::EIO, "internal error (panic) in queue".into()) },
    }
}

/// # Safety
/// `td` and `io_u` must be null or live.
unsafe fn queue_inner(td: *mut sys::thread_data, io_u: *mut sys::io_u) -> sys::fio_q_status {
    if io_u.is_null() {
        return sys::fio_q_status_FIO_Q_COMPLETED;
    }
    // SAFETY: td is null or live.
    let Some(job) = (unsafe { job(td) }) else {
        // SAFETY: io_u is live.
        return unsafe { fail_now(io_u, libc::EINVAL, "queue before init".into()) };
    };
    // SAFETY: io_u is live; its file is live while the io_u is in use.
    let (u, f) = unsafe { (&mut *io_u, (*io_u).file) };
    u.error = 0;
    if f.is_null() {
        // SAFETY: io_u is live.
        return unsafe { fail_now(io_u, libc::EINVAL, "io_u without a file".into()) };
    }
    // SAFETY: f is live.
    let ctx = match unsafe { file_ctx(f) } {
        Ok(c) => c,
        // SAFETY: io_u is live.
        Err(e) => return unsafe { fail_now(io_u, libc::EINVAL, e) },
    };
    if ctx.target.addr != job.addr {
        let msg = format!(
            "{} is not on this job's controller {}",
            ctx.target, job.addr
        );
        // SAFETY: io_u is live.
        return unsafe { fail_now(io_u, libc::EINVAL, msg) };
    }
    let ns = &ctx.ns;
    let tag = io_u as u64;
    let (offset, len) = (u.offset, u.xfer_buflen);
    let r = match u.ddir {
        sys::fio_ddir_DDIR_READ | sys::fio_ddir_DDIR_WRITE => {
            let (slba, _) = match lba_range(offset, len, ns.lba_shift) {
                Ok(r) => r,
                // SAFETY: io_u is live.
                Err(e) => return unsafe { fail_now(io_u, libc::EINVAL, e) },
            };
            // SAFETY: engine_data is our Unit (io_u_init).
            let Some(unit) = (unsafe { (u.__bindgen_anon_1.engine_data as *mut Unit).as_mut() })
            else {
                // SAFETY: io_u is live.
                return unsafe {
                    fail_now(io_u, libc::EINVAL, "io_u without its DMA buffer".into())
                };
            };
            let start = (u.xfer_buf as usize).wrapping_sub(unit.ptr as usize);
            let end = start.saturating_add(len as usize);
            if end > unit.len {
                let msg = format!(
                    "the io_u's data ({len} bytes at {:p}) is not inside its DMA buffer",
                    u.xfer_buf
                );
                // SAFETY: io_u is live.
                return unsafe { fail_now(io_u, libc::EINVAL, msg) };
            }
            let Some(buf) = unit.buf.take() else {
                // SAFETY: io_u is live.
                return unsafe { fail_now(io_u, libc::EBUSY, "io_u queued twice".into()) };
            };
            let r = if u.ddir == sys::fio_ddir_DDIR_READ {
                job.qp.read(ns, slba, buf, start..end, tag)
            } else {
                job.qp.write(ns, slba, buf, start..end, tag)
            };
            r.map_err(|mut e| {
                unit.buf = e.buf.take();
                e.kind
            })
        }
        sys::fio_ddir_DDIR_TRIM => match lba_range(offset, len, ns.lba_shift) {
            Ok((slba, n)) => job.qp.deallocate(ns, slba, n, tag).map_err(|e| e.kind),
            // SAFETY: io_u is live.
            Err(e) => return unsafe { fail_now(io_u, libc::EINVAL, e) },
        },
        sys::fio_ddir_DDIR_SYNC
        | sys::fio_ddir_DDIR_DATASYNC
        | sys::fio_ddir_DDIR_SYNC_FILE_RANGE => job.qp.flush(ns, tag).map_err(|e| e.kind),
        other => {
            // SAFETY: io_u is live.
            return unsafe {
                fail_now(
                    io_u,
                    libc::EINVAL,
                    format!("fio data direction {other} is not supported"),
                )
            };
        }
    };
    match r {
        Ok(()) => sys::fio_q_status_FIO_Q_QUEUED,
        Err(SubmitErrorKind::Busy) => sys::fio_q_status_FIO_Q_BUSY,
        Err(kind) => {
            let msg = format!(
                "nvkv: {} of {len} bytes at offset {offset} on {} refused: {kind}",
                op_name(u.ddir),
                ctx.target
            );
            let e = match kind {
                SubmitErrorKind::Unsupported(_) => libc::EOPNOTSUPP,
                _ => libc::EINVAL,
            };
            // SAFETY: io_u is live.
            unsafe { fail_now(io_u, e, msg) }
        }
    }
}

unsafe extern "C" fn commit(td: *mut sys::thread_data) -> c_int {
    guard(1, || {
        // SAFETY: td is null or live.
        match unsafe { job(td) } {
            Some(job) => {
                job.qp.ring();
                0
            }
            None => 1,
        }
    })
}

unsafe extern "C" fn getevents(
    td: *mut sys::thread_data,
    min: c_uint,
    max: c_uint,
    t: *const sys::timespec,
) -> c_int {
    guard(-libc::EIO, || {
        // SAFETY: td is null or live.
        let Some(job) = (unsafe { job(td) }) else {
            return -libc::EINVAL;
        };
        // SAFETY: t is null or a live timespec.
        let timeout = unsafe { t.as_ref() }.map(|t| {
            Duration::new(
                t.tv_sec.max(0) as u64,
                t.tv_nsec.clamp(0, 999_999_999) as u32,
            )
        });
        let start = timeout.map(|_| Instant::now());
        let (min, max) = (min as usize, (max as usize).max(min as usize));
        let Job { qp, done, .. } = job;
        done.clear();
        let mut spins: u32 = 0;
        loop {
            let want = max - done.len();
            if want == 0 {
                break;
            }
            qp.poll(want, |c| {
                let io_u = c.tag as *mut sys::io_u;
                // SAFETY: the tag is the io_u queue() submitted; fio keeps it alive until it is reaped here.
                unsafe {
                    if let Some(unit) = ((*io_u).__bindgen_anon_1.engine_data as *mut Unit).as_mut()
                    {
                        if c.buf.is_some() {
                            unit.buf = c.buf;
                        }
                        match &c.result {
                            Ok(()) => {
                                (*io_u).error = 0;
                                (*io_u).resid = 0;
                            }
                            Err(e) => {
                                (*io_u).error = errno(e) as c_uint;
                                (*io_u).resid = (*io_u).xfer_buflen;
                                let target = ((*(*io_u).file).engine_data as *const FileCtx)
                                    .as_ref()
                                    .map(|c| c.target.to_string())
                                    .unwrap_or_default();
                                unit.detail = Some(detail(
                                    op_name((*io_u).ddir),
                                    (*io_u).offset,
                                    (*io_u).xfer_buflen,
                                    &target,
                                    e,
                                ));
                            }
                        }
                    }
                }
                done.push(io_u);
            });
            if done.len() >= min {
                break;
            }
            spins = spins.wrapping_add(1);
            if let (Some(limit), Some(start)) = (timeout, start) {
                if spins % 256 == 0 && start.elapsed() >= limit {
                    break;
                }
            }
            std::hint::spin_loop();
        }
        done.len() as c_int
    })
}

unsafe extern "C" fn event(td: *mut sys::thread_data, n: c_int) -> *mut sys::io_u {
    guard(std::ptr::null_mut(), || {
        // SAFETY: td is null or live.
        let Some(job) = (unsafe { job(td) }) else {
            return std::ptr::null_mut();
        };
        usize::try_from(n)
            .ok()
            .and_then(|i| job.done.get(i).copied())
            .unwrap_or(std::ptr::null_mut())
    })
}

/// fio prints this after its own "io_u error" line, and frees it with free().
unsafe extern "C" fn errdetails(io_u: *mut sys::io_u) -> *mut c_char {
    guard(std::ptr::null_mut(), || {
        if io_u.is_null() {
            return std::ptr::null_mut();
        }
        // SAFETY: io_u is live; engine_data is null or our Unit.
        let text = unsafe { ((*io_u).__bindgen_anon_1.engine_data as *mut Unit).as_mut() }
            .and_then(|u| u.detail.take())
            .unwrap_or_else(|| "nvkv: no details".into());
        let bytes: Vec<u8> = text.bytes().filter(|&b| b != 0).collect();
        // SAFETY: malloc of len+1 bytes, filled and NUL-terminated below; fio frees it with free().
        unsafe {
            let p = libc::malloc(bytes.len() + 1) as *mut u8;
            if p.is_null() {
                return std::ptr::null_mut();
            }
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
            *p.add(bytes.len()) = 0;
            p as *mut c_char
        }
    })
}

unsafe extern "C" fn cleanup(td: *mut sys::thread_data) {
    guard((), || {
        if td.is_null() {
            return;
        }
        // SAFETY: td is live; io_ops_data is null or our Job, taken back exactly once here.
        let job = unsafe {
            let p = (*td).io_ops_data as *mut Job;
            (*td).io_ops_data = std::ptr::null_mut();
            if p.is_null() {
                None
            } else {
                Some(Box::from_raw(p))
            }
        };
        if let Some(mut job) = job {
            // Requests still in flight (fio normally reaps all): wait for them, a bounded time, before the queue
            // pair is deleted. Their io_us may be gone, so the completions are only counted.
            let deadline = Instant::now() + Duration::from_secs(5);
            while job.qp.outstanding() > 0 && Instant::now() < deadline {
                job.qp.poll(usize::MAX, |_| {});
            }
            let addr = job.addr.clone();
            drop(job);
            release(&addr);
        }
        // SAFETY: td is live.
        for f in unsafe { files(td) } {
            // SAFETY: f is live; engine_data is null or our FileCtx.
            unsafe {
                let p = (*f).engine_data as *mut FileCtx;
                if !p.is_null() {
                    (*f).engine_data = std::ptr::null_mut();
                    drop(Box::from_raw(p));
                }
            }
        }
    })
}

unsafe extern "C" fn open_file(td: *mut sys::thread_data, f: *mut sys::fio_file) -> c_int {
    guard(1, || {
        if f.is_null() {
            return 1;
        }
        // SAFETY: f is live.
        match unsafe { file_ctx(f) } {
            Ok(c) => {
                // SAFETY: td is null or live.
                if let Some(job) = unsafe { job(td) } {
                    if job.addr != c.target.addr {
                        log(format!(
                            "{} is not on this job's controller {}: use one job per controller",
                            c.target, job.addr
                        ));
                        return 1;
                    }
                }
                0
            }
            Err(e) => {
                log(e);
                1
            }
        }
    })
}

unsafe extern "C" fn close_file(_td: *mut sys::thread_data, _f: *mut sys::fio_file) -> c_int {
    0
}

unsafe extern "C" fn get_file_size(_td: *mut sys::thread_data, f: *mut sys::fio_file) -> c_int {
    guard(1, || {
        if f.is_null() {
            return 1;
        }
        // SAFETY: f is live.
        match unsafe { file_ctx(f) } {
            Ok(_) => 0,
            Err(e) => {
                log(e);
                1
            }
        }
    })
}

/// No page cache on this path: nothing to invalidate.
unsafe extern "C" fn invalidate(_td: *mut sys::thread_data, _f: *mut sys::fio_file) -> c_int {
    0
}

struct Ops(*mut sys::ioengine_ops);
// SAFETY: the ops table is written once (below) and then only by fio, which sets `dlhandle` under its own
// engine-loading lock; this module never reads it again.
unsafe impl Send for Ops {}
// SAFETY: as above.
unsafe impl Sync for Ops {}

static OPS: OnceLock<Ops> = OnceLock::new();

fn ops() -> *mut sys::ioengine_ops {
    OPS.get_or_init(|| {
        // SAFETY: ioengine_ops is plain C data (pointers, integers, optional function pointers): all-zero is its
        // empty value, as a C static initializer would leave it.
        let mut o: sys::ioengine_ops = unsafe { std::mem::zeroed() };
        o.name = c"nvkv".as_ptr();
        o.version = sys::FIO_IOOPS_VERSION as c_int;
        o.flags = (sys::fio_ioengine_flags_FIO_RAWIO
            | sys::fio_ioengine_flags_FIO_NOEXTEND
            | sys::fio_ioengine_flags_FIO_NODISKUTIL
            | sys::fio_ioengine_flags_FIO_DISKLESSIO) as c_int;
        o.setup = Some(setup);
        o.init = Some(init);
        o.post_init = Some(post_init);
        o.queue = Some(queue);
        o.commit = Some(commit);
        o.getevents = Some(getevents);
        o.event = Some(event);
        o.errdetails = Some(errdetails);
        o.cleanup = Some(cleanup);
        o.open_file = Some(open_file);
        o.close_file = Some(close_file);
        o.invalidate = Some(invalidate);
        o.get_file_size = Some(get_file_size);
        o.io_u_init = Some(io_u_init);
        o.io_u_free = Some(io_u_free);
        Ops(Box::into_raw(Box::new(o)))
    })
    .0
}

/// The symbol fio looks up in an external engine when there is no `ioengine` data symbol.
///
/// # Safety
/// `out` must be null or point to writable storage for a pointer.
#[no_mangle]
pub unsafe extern "C" fn get_ioengine(out: *mut *mut sys::ioengine_ops) {
    guard((), || {
        if !out.is_null() {
            let p = ops();
            // SAFETY: out is writable (caller).
            unsafe { *out = p };
        }
    })
}
