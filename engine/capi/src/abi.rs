//! The `extern "C"` entry points and the `#[repr(C)]` types of `nvkv.h`. All of the crate's `unsafe` is
//! here: turning the caller's pointers into slices and values (after NULL, alignment and length checks),
//! writing results through its output pointers, and calling its callbacks.
//!
//! Every function is `unsafe` to call from Rust; its contract is the header's: a non-NULL pointer with a
//! length points to that many readable (or, for outputs, writable) bytes, and output structs are aligned.
#![allow(non_camel_case_types, clippy::missing_safety_doc)]

use std::ffi::{c_char, c_int, c_void, CStr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::api::{Op, Reply};
use engine::{Conflict, MergeFn, Meta, ShardStats, WriteOpts, WriteResult};

use crate::error::{guard, nvkv_result, CapiError};
use crate::handles::{self, Object};
use crate::ops::{self, AsyncState, BackendSpec, Done, IterState};

/// Version of the ABI this header describes; `nvkv_abi_version()` returns the library's.
pub const NVKV_ABI_VERSION: u32 = 2;
/// Largest key, in bytes.
pub const NVKV_MAX_KEY_LEN: usize = 1024;
/// Largest value, in bytes (a database with small write buffers has a lower limit).
pub const NVKV_MAX_VALUE_LEN: usize = 1048576;

/// `nvkv_options.flags`: format a blank device (an existing image is opened either way).
pub const NVKV_OPEN_CREATE: u32 = 1;
/// `nvkv_options.flags`: pin shard threads to cores (falls back to unpinned).
pub const NVKV_OPEN_PIN_THREADS: u32 = 2;
/// `nvkv_options.flags`: shard threads spin instead of sleeping when idle (lowest latency, a core each).
pub const NVKV_OPEN_BUSY_POLL: u32 = 4;
const OPEN_FLAGS: u32 = NVKV_OPEN_CREATE | NVKV_OPEN_PIN_THREADS | NVKV_OPEN_BUSY_POLL;

/// `nvkv_write_opts.flags`: acknowledge only once the write is durable on the device.
pub const NVKV_WRITE_DURABLE: u32 = 1;
/// `nvkv_write_opts.flags`: use `ts` as the write's timestamp instead of the shard's clock.
pub const NVKV_WRITE_TIMESTAMP: u32 = 2;
const WRITE_FLAGS: u32 = NVKV_WRITE_DURABLE | NVKV_WRITE_TIMESTAMP;

/// An open database (opaque; never dereferenced by the library either: see "Handles").
#[derive(Debug)]
pub struct nvkv_db {
    _opaque: [u8; 0],
}

/// A scan iterator (opaque).
#[derive(Debug)]
pub struct nvkv_iter {
    _opaque: [u8; 0],
}

/// An asynchronous context (opaque).
#[derive(Debug)]
pub struct nvkv_async {
    _opaque: [u8; 0],
}

/// Values of `nvkv_options.backend`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub enum nvkv_backend {
    /// A RAM disk of `size` bytes with `block_size`-byte blocks; its contents are gone at close.
    NVKV_BACKEND_MEMORY = 0,
    /// A file or block device at `path` (O_DIRECT when possible); a regular file is extended to `size`
    /// (0: keep its size).
    NVKV_BACKEND_FILE = 1,
    /// An NVMe controller bound to vfio-pci, driven by nvkv's userspace driver: `path` is its PCI address
    /// ("0000:01:00.0"), `nsid` the namespace (0: 1). Needs root (or access to /dev/vfio) and memlock.
    NVKV_BACKEND_NVME = 2,
}

/// Values of `nvkv_options.durable_log`: where durable writes are acknowledged from.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub enum nvkv_durable_log {
    /// The persistence cycle: a durable write waits for its segment write and Flush.
    NVKV_DURABLE_LOG_NONE = 0,
    /// A log in the NVMe controller's Persistent Memory Region (`NVKV_BACKEND_NVME` only).
    NVKV_DURABLE_LOG_PMR = 1,
    /// A log in persistent memory mapped from `durable_log_path`: an NVDIMM's devdax device, a file
    /// on a DAX filesystem (mapped with `MAP_SYNC`), or any file (its barrier is `msync`).
    NVKV_DURABLE_LOG_PMEM = 2,
}

/// Values of `nvkv_options.conflict`: what a put does when the key exists.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub enum nvkv_conflict {
    /// The write with the higher timestamp wins (ties keep the stored value).
    NVKV_CONFLICT_LAST_WRITER_WINS = 0,
    /// The stored value stays unless the new write carries a strictly older timestamp.
    NVKV_CONFLICT_FIRST_WRITER_WINS = 1,
    /// The stored value becomes `merge(key, old, new)`.
    NVKV_CONFLICT_MERGE = 2,
}

/// A merge function (`NVKV_CONFLICT_MERGE`). Returns a buffer allocated with `malloc` holding the value
/// to store, its length in `*out_len`; the library frees it. NULL stores `new_value` unchanged. Called on
/// the shard threads, possibly concurrently: it must be thread-safe, must not call into the same database
/// and must not unwind (C++ exceptions, longjmp).
pub type nvkv_merge_fn = Option<
    unsafe extern "C" fn(
        ctx: *mut c_void,
        key: *const u8,
        key_len: usize,
        old_value: *const u8,
        old_len: usize,
        new_value: *const u8,
        new_len: usize,
        out_len: *mut usize,
    ) -> *mut u8,
>;

/// How to open a database. Fill it with `nvkv_options_init`, then change what you need.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct nvkv_options {
    /// One of `nvkv_backend`.
    pub backend: u32,
    /// File path (`NVKV_BACKEND_FILE`) or PCI address (`NVKV_BACKEND_NVME`), NUL-terminated.
    pub path: *const c_char,
    /// Memory: bytes of the RAM disk. File: size to extend a regular file to (0: keep).
    pub size: u64,
    /// Memory: block size (a power of two >= 512; default 4096).
    pub block_size: u32,
    /// NVMe: namespace id (0: 1).
    pub nsid: u32,
    /// Number of shards (threads); fixed when the database is created (default 1).
    pub shards: u32,
    /// `NVKV_OPEN_*` bits (default `NVKV_OPEN_CREATE | NVKV_OPEN_PIN_THREADS`).
    pub flags: u32,
    /// Longest a write stays buffered before its persistence cycle starts, in microseconds (default 5000).
    pub commit_interval_us: u64,
    /// Write-buffer size per shard in bytes; also bounds the largest value (default 256 KiB).
    pub buffer_bytes: usize,
    /// Request queue capacity per shard (default 4096).
    pub queue_capacity: usize,
    /// Write buffers' worth of log at least between index checkpoints (default 64; a checkpoint also waits
    /// until the log since the last one is as large as the checkpoint).
    pub checkpoint_every: u32,
    /// One of `nvkv_conflict` (default last writer wins).
    pub conflict: u32,
    /// Merge function for `NVKV_CONFLICT_MERGE`.
    pub merge: nvkv_merge_fn,
    /// Passed to `merge` as `ctx`.
    pub merge_ctx: *mut c_void,
    /// Garbage collection runs while a shard's free fraction is below this (default 0.25).
    pub gc_free_low: f64,
    /// One of `nvkv_durable_log` (default none). A database opened with a durable log must be
    /// reopened with it after a crash (`NVKV_DURABLE_LOG` otherwise); after `nvkv_close` it opens
    /// without it.
    pub durable_log: u32,
    /// `NVKV_DURABLE_LOG_PMEM`: the path, NUL-terminated.
    pub durable_log_path: *const c_char,
    /// Bytes of the durable-log device per shard (0: an equal share of the whole device).
    pub durable_log_bytes: u64,
}

/// Options of one write.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct nvkv_write_opts {
    /// `NVKV_WRITE_*` bits.
    pub flags: u32,
    /// The write's timestamp when `NVKV_WRITE_TIMESTAMP` is set.
    pub ts: u64,
}

/// Outcome of a write.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct nvkv_write_result {
    /// False when the conflict strategy kept the stored value, a delete found nothing, or a
    /// compare-and-swap failed.
    pub applied: bool,
    /// The key's version after the write; after `NVKV_VERSION_MISMATCH`, the current version (0: absent).
    pub version: u64,
    /// The write's timestamp.
    pub ts: u64,
}

/// Version and timestamp of a stored value. Versions start at 1 and are never reused.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct nvkv_meta {
    /// Version.
    pub version: u64,
    /// Timestamp.
    pub ts: u64,
}

/// Statistics of one shard, or their sum (then `shard` is the number of shards).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct nvkv_stats {
    /// Shard number (in a sum: the number of shards).
    pub shard: u32,
    /// Live keys.
    pub keys: u64,
    /// Bytes of live records on the device.
    pub live_bytes: u64,
    /// Bytes of segments not live.
    pub dead_bytes: u64,
    /// Free blocks.
    pub free_blocks: u64,
    /// Free extents.
    pub free_extents: u64,
    /// Segments on the device.
    pub segments: u64,
    /// Persistence cycles completed.
    pub cycles: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Checkpoints skipped for lack of space.
    pub checkpoints_skipped: u64,
    /// Segments cleaned by garbage collection.
    pub gc_segments: u64,
    /// Bytes of live records garbage collection moved.
    pub gc_bytes_moved: u64,
    /// Buffered records overwritten or squeezed out before being written.
    pub buffer_bytes_saved: u64,
    /// Requests waiting in the shard's queue when last looked at.
    pub queue_depth: u64,
    /// Writes waiting for durability.
    pub durable_waiters: u64,
    /// Whether a durable log is attached (durable writes are acknowledged by its records).
    pub durable_log_attached: bool,
    /// Whether it failed (a barrier failed: durable writes take the cycle path since).
    pub durable_log_failed: bool,
    /// Durable writes acknowledged by their durable-log record.
    pub durable_log_writes: u64,
    /// Durable writes acknowledged by a persistence cycle (no log, log full or failed, too large).
    pub durable_cycle_writes: u64,
    /// Durable-log barriers, and their total time in nanoseconds.
    pub durable_log_barriers: u64,
    pub durable_log_barrier_ns: u64,
    /// Bytes of unretired durable-log records, and the log's capacity.
    pub durable_log_used_bytes: u64,
    pub durable_log_capacity: u64,
}

/// What an asynchronous request's callback receives. Pointers in it are valid during the callback only.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct nvkv_completion {
    /// The id `nvkv_async_*` returned for the request.
    pub id: u64,
    /// Its result code.
    pub result: nvkv_result,
    /// Get: the value (NULL when not found).
    pub value: *const u8,
    /// Get: the value's length.
    pub value_len: usize,
    /// Get: the value's version and timestamp.
    pub meta: nvkv_meta,
    /// Put, delete, compare-and-swap, increment: the write's outcome.
    pub write: nvkv_write_result,
    /// Increment: the new value.
    pub number: i64,
}

/// Called once per asynchronous request, on the thread that runs `nvkv_async_poll` / `nvkv_async_wait` /
/// `nvkv_async_free`. It may submit more requests on the same context; it must not unwind.
pub type nvkv_callback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, c: *const nvkv_completion)>;

/// A request's callback and its user data (kept as an address: the library never touches it).
#[derive(Debug, Clone, Copy)]
pub struct Callback {
    f: nvkv_callback,
    user: usize,
}

// ---- pointer checks ----------------------------------------------------------------------------------

/// A key: non-NULL, 1..=NVKV_MAX_KEY_LEN bytes; the length is checked before a byte is read.
unsafe fn key<'a>(p: *const u8, len: usize) -> Result<&'a [u8], CapiError> {
    if p.is_null() {
        return Err(CapiError::Null("key"));
    }
    if len == 0 {
        return Err(engine::Error::EmptyKey.into());
    }
    if len > NVKV_MAX_KEY_LEN {
        return Err(engine::Error::KeyTooLarge {
            len,
            max: NVKV_MAX_KEY_LEN,
        }
        .into());
    }
    // SAFETY: non-NULL, and the caller promises `len` readable bytes at `p` (bounded by the key limit).
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// A value: NULL only when empty; at most NVKV_MAX_VALUE_LEN bytes, checked before a byte is read.
unsafe fn value<'a>(p: *const u8, len: usize) -> Result<&'a [u8], CapiError> {
    if len > NVKV_MAX_VALUE_LEN {
        return Err(engine::Error::ValueTooLarge {
            len,
            max: NVKV_MAX_VALUE_LEN,
        }
        .into());
    }
    // SAFETY: as `bytes`; the length is bounded by the value limit.
    unsafe { bytes(p, len, "value") }
}

/// Bytes: NULL only when `len` is 0.
unsafe fn bytes<'a>(p: *const u8, len: usize, what: &'static str) -> Result<&'a [u8], CapiError> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(CapiError::Null(what));
    }
    if len > isize::MAX as usize {
        return Err(CapiError::Invalid(format!("{what} length {len}")));
    }
    // SAFETY: non-NULL, and the caller promises `len` readable bytes at `p`.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// A required output pointer: non-NULL and aligned.
fn out<T>(p: *mut T, what: &'static str) -> Result<NonNull<T>, CapiError> {
    let p = NonNull::new(p).ok_or(CapiError::Null(what))?;
    if !p.is_aligned() {
        return Err(CapiError::Invalid(format!("{what} is misaligned")));
    }
    Ok(p)
}

/// An optional output pointer (NULL: the caller does not want it).
fn opt_out<T>(p: *mut T, what: &'static str) -> Result<Option<NonNull<T>>, CapiError> {
    if p.is_null() {
        Ok(None)
    } else {
        out(p, what).map(Some)
    }
}

/// Stores `v` through a checked output pointer.
unsafe fn store<T>(p: NonNull<T>, v: T) {
    // SAFETY: `p` passed `out` (non-NULL, aligned) and the caller promises it is writable; `write` does not
    // read or drop the (possibly uninitialized) old contents.
    unsafe { p.as_ptr().write(v) }
}

/// Reads an input struct (NULL: its defaults).
unsafe fn read_in<T: Copy + Default>(p: *const T, what: &'static str) -> Result<T, CapiError> {
    if p.is_null() {
        return Ok(T::default());
    }
    if !p.is_aligned() {
        return Err(CapiError::Invalid(format!("{what} is misaligned")));
    }
    // SAFETY: non-NULL and aligned; the caller promises a readable, initialized struct. Every bit pattern
    // of these structs' fields (integers) is valid.
    Ok(unsafe { p.read() })
}

fn write_opts(o: nvkv_write_opts) -> Result<WriteOpts, CapiError> {
    if o.flags & !WRITE_FLAGS != 0 {
        return Err(CapiError::Invalid(format!(
            "unknown write flags {:#x}",
            o.flags & !WRITE_FLAGS
        )));
    }
    Ok(WriteOpts {
        ts: (o.flags & NVKV_WRITE_TIMESTAMP != 0).then_some(o.ts),
        durable: o.flags & NVKV_WRITE_DURABLE != 0,
    })
}

fn write_result(w: WriteResult) -> nvkv_write_result {
    nvkv_write_result {
        applied: w.applied,
        version: w.version,
        ts: w.ts,
    }
}

fn meta(m: Meta) -> nvkv_meta {
    nvkv_meta {
        version: m.version,
        ts: m.ts,
    }
}

fn stats(s: &ShardStats) -> nvkv_stats {
    nvkv_stats {
        shard: s.shard,
        keys: s.keys,
        live_bytes: s.live_bytes,
        dead_bytes: s.dead_bytes,
        free_blocks: s.free_blocks,
        free_extents: s.free_extents,
        segments: s.segments,
        cycles: s.cycles,
        checkpoints: s.checkpoints,
        checkpoints_skipped: s.checkpoints_skipped,
        gc_segments: s.gc_segments,
        gc_bytes_moved: s.gc_bytes_moved,
        buffer_bytes_saved: s.buffer_bytes_saved,
        queue_depth: s.queue_depth,
        durable_waiters: s.durable_waiters,
        durable_log_attached: s.durable_log.is_some(),
        durable_log_failed: s.durable_log_failed.is_some(),
        durable_log_writes: s.durable_log_writes,
        durable_cycle_writes: s.durable_cycle_writes,
        durable_log_barriers: s.durable_log_barriers,
        durable_log_barrier_ns: s.durable_log_barrier_ns_total,
        durable_log_used_bytes: s.durable_log_used_bytes,
        durable_log_capacity: s.durable_log_capacity,
    }
}

/// A handle value for C: the token as a pointer that must never be dereferenced.
fn to_handle<T>(token: usize) -> *mut T {
    std::ptr::without_provenance_mut(token)
}

fn db(p: *const nvkv_db) -> Result<Arc<ops::DbObj>, CapiError> {
    if p.is_null() {
        return Err(CapiError::Null("db"));
    }
    handles::db(p.addr())
}

// ---- version and errors -----------------------------------------------------------------------------

/// The library's version ("0.1.0"), a static string.
#[no_mangle]
pub extern "C" fn nvkv_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The library's ABI version; compare with `NVKV_ABI_VERSION` from the header you compiled against.
#[no_mangle]
pub extern "C" fn nvkv_abi_version() -> u32 {
    NVKV_ABI_VERSION
}

/// A static description of a result code (any int; unknown ones get "unknown result code").
#[no_mangle]
pub extern "C" fn nvkv_strerror(code: c_int) -> *const c_char {
    crate::error::strerror(code).as_ptr().cast()
}

/// Details of the calling thread's last failure ("" if none), e.g. which pointer was NULL or the device's
/// error. Valid until the thread's next failing call.
#[no_mangle]
pub extern "C" fn nvkv_last_error() -> *const c_char {
    crate::error::last()
}

// ---- open and close ---------------------------------------------------------------------------------

impl Default for nvkv_options {
    fn default() -> Self {
        nvkv_options {
            backend: nvkv_backend::NVKV_BACKEND_MEMORY as u32,
            path: std::ptr::null(),
            size: 0,
            block_size: 4096,
            nsid: 1,
            shards: 1,
            flags: NVKV_OPEN_CREATE | NVKV_OPEN_PIN_THREADS,
            commit_interval_us: 5000,
            buffer_bytes: 256 << 10,
            queue_capacity: 4096,
            checkpoint_every: 64,
            conflict: nvkv_conflict::NVKV_CONFLICT_LAST_WRITER_WINS as u32,
            merge: None,
            merge_ctx: std::ptr::null_mut(),
            gc_free_low: 0.25,
            durable_log: nvkv_durable_log::NVKV_DURABLE_LOG_NONE as u32,
            durable_log_path: std::ptr::null(),
            durable_log_bytes: 0,
        }
    }
}

/// Fills `opts` with the defaults (memory backend without a size: set `backend` and its fields).
#[no_mangle]
pub unsafe extern "C" fn nvkv_options_init(opts: *mut nvkv_options) -> nvkv_result {
    guard(|| {
        let o = out(opts, "opts")?;
        // SAFETY: checked by `out`.
        unsafe { store(o, nvkv_options::default()) };
        Ok(())
    })
}

/// The C merge function as the engine's merge closure.
#[derive(Debug, Clone, Copy)]
struct CMerge {
    f: unsafe extern "C" fn(
        *mut c_void,
        *const u8,
        usize,
        *const u8,
        usize,
        *const u8,
        usize,
        *mut usize,
    ) -> *mut u8,
    ctx: usize,
}

impl CMerge {
    fn call(&self, key: &[u8], old: &[u8], new: &[u8]) -> Vec<u8> {
        let mut len = 0usize;
        let ctx: *mut c_void = std::ptr::with_exposed_provenance_mut(self.ctx);
        // SAFETY: `nvkv_open`'s caller promised a thread-safe function of this signature; the slices
        // outlive the call and `len` is a valid output.
        let p = unsafe {
            (self.f)(
                ctx,
                key.as_ptr(),
                key.len(),
                old.as_ptr(),
                old.len(),
                new.as_ptr(),
                new.len(),
                &mut len,
            )
        };
        if p.is_null() {
            return new.to_vec();
        }
        // SAFETY: a non-NULL result is a malloc'ed buffer of `len` bytes handed to us.
        let v = unsafe { std::slice::from_raw_parts(p, len) }.to_vec();
        // SAFETY: allocated with malloc by the callback, freed exactly once here.
        unsafe { libc::free(p.cast()) };
        v
    }
}

unsafe fn c_path(p: *const c_char) -> Result<&'static CStr, CapiError> {
    if p.is_null() {
        return Err(CapiError::Null("opts->path"));
    }
    // SAFETY: the caller promises a NUL-terminated string; it is copied before `nvkv_open` returns.
    Ok(unsafe { CStr::from_ptr(p) })
}

/// Opens (recovering, or formatting a blank device with `NVKV_OPEN_CREATE`) the database `opts` describes
/// and stores its handle in `*db`.
#[no_mangle]
pub unsafe extern "C" fn nvkv_open(
    opts: *const nvkv_options,
    db: *mut *mut nvkv_db,
) -> nvkv_result {
    guard(|| {
        let slot = out(db, "db")?;
        if opts.is_null() {
            return Err(CapiError::Null("opts"));
        }
        // SAFETY: non-NULL; `read_in` checks alignment.
        let o = unsafe { read_in(opts, "opts")? };
        if o.flags & !OPEN_FLAGS != 0 {
            return Err(CapiError::Invalid(format!(
                "unknown open flags {:#x}",
                o.flags & !OPEN_FLAGS
            )));
        }
        let spec = match o.backend {
            0 => BackendSpec::Memory {
                size: o.size,
                block_size: if o.block_size == 0 {
                    4096
                } else {
                    o.block_size
                },
            },
            1 => {
                // SAFETY: NULL-checked inside; NUL-terminated by contract.
                let p = unsafe { c_path(o.path)? };
                BackendSpec::File {
                    path: PathBuf::from(std::ffi::OsStr::from_bytes(p.to_bytes())),
                    size: (o.size > 0).then_some(o.size),
                }
            }
            2 => {
                // SAFETY: as above.
                let p = unsafe { c_path(o.path)? };
                let addr = p
                    .to_str()
                    .map_err(|_| CapiError::Invalid("PCI address is not UTF-8".into()))?;
                BackendSpec::Nvme {
                    addr: addr.to_string(),
                    nsid: o.nsid.max(1),
                }
            }
            b => return Err(CapiError::Invalid(format!("unknown backend {b}"))),
        };
        let conflict = match o.conflict {
            0 => Conflict::LastWriterWins,
            1 => Conflict::FirstWriterWins,
            2 => {
                let f = o.merge.ok_or(CapiError::Null("opts->merge"))?;
                let m = CMerge {
                    f,
                    ctx: o.merge_ctx.expose_provenance(),
                };
                let mf: MergeFn = Arc::new(move |k: &[u8], a: &[u8], b: &[u8]| m.call(k, a, b));
                Conflict::Merge(mf)
            }
            c => return Err(CapiError::Invalid(format!("unknown conflict strategy {c}"))),
        };
        let durable_log = match o.durable_log {
            0 => engine::DurableLogDevice::None,
            1 => engine::DurableLogDevice::Pmr,
            2 => {
                // SAFETY: as for `path`: NULL is refused, else a NUL-terminated string.
                let p = unsafe { c_path(o.durable_log_path) }
                    .map_err(|_| CapiError::Null("opts->durable_log_path"))?;
                engine::DurableLogDevice::Pmem(PathBuf::from(std::ffi::OsStr::from_bytes(
                    p.to_bytes(),
                )))
            }
            d => return Err(CapiError::Invalid(format!("unknown durable log {d}"))),
        };
        let durable_log_bytes = usize::try_from(o.durable_log_bytes)
            .map_err(|_| CapiError::Invalid("durable_log_bytes too large".into()))?;
        if !(0.0..1.0).contains(&o.gc_free_low) {
            return Err(CapiError::Invalid(format!(
                "gc_free_low {} (0 <= x < 1)",
                o.gc_free_low
            )));
        }
        let obj = ops::open(spec, |x| {
            x.shards = o.shards.max(1) as usize;
            if o.buffer_bytes > 0 {
                x.buffer_bytes = o.buffer_bytes;
            }
            if o.commit_interval_us > 0 {
                x.commit_interval = Duration::from_micros(o.commit_interval_us);
            }
            if o.queue_capacity > 0 {
                x.queue_capacity = o.queue_capacity;
            }
            if o.checkpoint_every > 0 {
                x.checkpoint_every = o.checkpoint_every;
            }
            x.conflict = conflict;
            x.create = o.flags & NVKV_OPEN_CREATE != 0;
            x.pin_threads = o.flags & NVKV_OPEN_PIN_THREADS != 0;
            x.busy_poll = o.flags & NVKV_OPEN_BUSY_POLL != 0;
            x.gc_free_low = o.gc_free_low;
            x.durable_log = durable_log;
            x.durable_log_bytes = durable_log_bytes;
        })?;
        let token = handles::insert(Object::Db(Arc::new(obj)))?;
        // SAFETY: checked by `out`.
        unsafe { store(slot, to_handle(token)) };
        Ok(())
    })
}

/// Persists everything, checkpoints and closes the database, and sets `*db` to NULL. The handle (and any
/// copy of it) is dead afterwards: calls with it return `NVKV_CLOSED`. Calls other threads have in flight
/// finish or fail with `NVKV_CLOSED`; iterators and async contexts on it fail with `NVKV_CLOSED`.
#[no_mangle]
pub unsafe extern "C" fn nvkv_close(db: *mut *mut nvkv_db) -> nvkv_result {
    guard(|| {
        let slot = out(db, "db")?;
        // SAFETY: checked by `out`; the caller promises it holds a handle (or NULL).
        let h = unsafe { slot.as_ptr().read() };
        if h.is_null() {
            return Err(CapiError::Null("*db"));
        }
        // Check the kind before removing, so an iterator passed by mistake stays alive.
        let obj = handles::db(h.addr())?;
        handles::remove(h.addr(), "database")?;
        // SAFETY: checked by `out`.
        unsafe { store(slot, std::ptr::null_mut()) };
        obj.close()
    })
}

// ---- synchronous operations -------------------------------------------------------------------------

/// Reads `key` into the caller's buffer. `*value_len` always receives the value's length; when it exceeds
/// `buf_cap` the result is `NVKV_BUFFER_TOO_SMALL` and `buf` is untouched (call again with a larger one; a
/// NULL `buf` with `buf_cap` 0 asks for the length only). `meta` may be NULL. `NVKV_NOT_FOUND` when absent.
#[no_mangle]
pub unsafe extern "C" fn nvkv_get(
    db: *const nvkv_db,
    key: *const u8,
    key_len: usize,
    buf: *mut u8,
    buf_cap: usize,
    value_len: *mut usize,
    meta: *mut nvkv_meta,
) -> nvkv_result {
    guard(|| {
        let d = self::db(db)?;
        // SAFETY: see `self::key`.
        let k = unsafe { self::key(key, key_len)? };
        let len_out = out(value_len, "value_len")?;
        let meta_out = opt_out(meta, "meta")?;
        if buf.is_null() && buf_cap > 0 {
            return Err(CapiError::Null("buf"));
        }
        let (v, m) = ops::get(&d.handle, k)?;
        // SAFETY: outputs checked above.
        unsafe { store(len_out, v.len()) };
        if let Some(p) = meta_out {
            // SAFETY: checked by `opt_out`.
            unsafe { store(p, self::meta(m)) };
        }
        if v.len() > buf_cap {
            return Err(CapiError::TooSmall {
                need: v.len(),
                cap: buf_cap,
            });
        }
        if !v.is_empty() {
            // SAFETY: `buf` is non-NULL (buf_cap >= v.len() > 0) and the caller promises `buf_cap` writable
            // bytes; a fresh Vec cannot overlap the caller's buffer.
            unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), buf, v.len()) };
        }
        Ok(())
    })
}

/// Reads `key` into a buffer the library allocates: `*value` (free it with `nvkv_free`; never NULL on
/// success, also for an empty value) and `*value_len`. `meta` may be NULL.
#[no_mangle]
pub unsafe extern "C" fn nvkv_get_alloc(
    db: *const nvkv_db,
    key: *const u8,
    key_len: usize,
    value: *mut *mut u8,
    value_len: *mut usize,
    meta: *mut nvkv_meta,
) -> nvkv_result {
    guard(|| {
        let d = self::db(db)?;
        // SAFETY: see `self::key`.
        let k = unsafe { self::key(key, key_len)? };
        let val_out = out(value, "value")?;
        let len_out = out(value_len, "value_len")?;
        let meta_out = opt_out(meta, "meta")?;
        let (v, m) = ops::get(&d.handle, k)?;
        // SAFETY: malloc of at least one byte, so an empty value still gets a pointer to free.
        let p: *mut u8 = unsafe { libc::malloc(v.len().max(1)) }.cast();
        if p.is_null() {
            return Err(CapiError::NoMemory(v.len()));
        }
        // SAFETY: `p` holds at least v.len() bytes and is fresh.
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), p, v.len()) };
        // SAFETY: outputs checked above.
        unsafe {
            store(val_out, p);
            store(len_out, v.len());
        }
        if let Some(mp) = meta_out {
            // SAFETY: checked by `opt_out`.
            unsafe { store(mp, self::meta(m)) };
        }
        Ok(())
    })
}

/// Frees a buffer from `nvkv_get_alloc` (NULL is ignored).
#[no_mangle]
pub unsafe extern "C" fn nvkv_free(ptr: *mut c_void) {
    // SAFETY: the caller passes NULL or a pointer from `nvkv_get_alloc` (malloc), not yet freed.
    unsafe { libc::free(ptr) }
}

/// Stores `value` under `key`. `opts` may be NULL (not durable, the shard's clock); `result` may be NULL.
/// A value may be empty (`value` NULL with `value_len` 0).
#[no_mangle]
pub unsafe extern "C" fn nvkv_put(
    db: *const nvkv_db,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
    opts: *const nvkv_write_opts,
    result: *mut nvkv_write_result,
) -> nvkv_result {
    guard(|| {
        let d = self::db(db)?;
        // SAFETY: see `key`, `value` and `read_in`.
        let (k, v, o) = unsafe {
            (
                self::key(key, key_len)?,
                self::value(value, value_len)?,
                read_in(opts, "opts")?,
            )
        };
        let r = opt_out(result, "result")?;
        let w = ops::put(&d.handle, k, v, write_opts(o)?)?;
        if let Some(p) = r {
            // SAFETY: checked by `opt_out`.
            unsafe { store(p, write_result(w)) };
        }
        Ok(())
    })
}

/// Deletes `key` (`result->applied` false when there was nothing to delete). `opts`, `result` may be NULL.
#[no_mangle]
pub unsafe extern "C" fn nvkv_delete(
    db: *const nvkv_db,
    key: *const u8,
    key_len: usize,
    opts: *const nvkv_write_opts,
    result: *mut nvkv_write_result,
) -> nvkv_result {
    guard(|| {
        let d = self::db(db)?;
        // SAFETY: see `key` and `read_in`.
        let (k, o) = unsafe { (self::key(key, key_len)?, read_in(opts, "opts")?) };
        let r = opt_out(result, "result")?;
        let w = ops::delete(&d.handle, k, write_opts(o)?)?;
        if let Some(p) = r {
            // SAFETY: checked by `opt_out`.
            unsafe { store(p, write_result(w)) };
        }
        Ok(())
    })
}

fn finish_cas(
    r: Result<WriteResult, CapiError>,
    out: Option<NonNull<nvkv_write_result>>,
) -> Result<(), CapiError> {
    let (res, ret) = match r {
        Ok(w) => (write_result(w), Ok(())),
        Err(CapiError::Engine(engine::Error::VersionMismatch { current })) => (
            nvkv_write_result {
                applied: false,
                version: current.unwrap_or(0),
                ts: 0,
            },
            Err(CapiError::Engine(engine::Error::VersionMismatch {
                current,
            })),
        ),
        Err(e) => return Err(e),
    };
    if let Some(p) = out {
        // SAFETY: checked by `opt_out` in the caller.
        unsafe { store(p, res) };
    }
    ret
}

/// Compare-and-swap: stores `value` if the key's version is `*expected_version` (NULL: only if the key is
/// absent). `NVKV_VERSION_MISMATCH` otherwise, with the current version (0: absent) in
/// `result->version`. `opts`, `result` may be NULL.
#[no_mangle]
pub unsafe extern "C" fn nvkv_cas(
    db: *const nvkv_db,
    key: *const u8,
    key_len: usize,
    expected_version: *const u64,
    value: *const u8,
    value_len: usize,
    opts: *const nvkv_write_opts,
    result: *mut nvkv_write_result,
) -> nvkv_result {
    guard(|| {
        let d = self::db(db)?;
        // SAFETY: see `key`, `value` and `read_in`.
        let (k, v, o) = unsafe {
            (
                self::key(key, key_len)?,
                self::value(value, value_len)?,
                read_in(opts, "opts")?,
            )
        };
        // SAFETY: as `read_in` (NULL is "absent", handled before reading).
        let expected = unsafe { read_expected(expected_version)? };
        let r = opt_out(result, "result")?;
        finish_cas(ops::cas(&d.handle, k, expected, Some(v), write_opts(o)?), r)
    })
}

/// Compare-and-swap that deletes: removes `key` if its version is `*expected_version` (NULL: only if absent,
/// which deletes nothing). Results as `nvkv_cas`.
#[no_mangle]
pub unsafe extern "C" fn nvkv_cas_delete(
    db: *const nvkv_db,
    key: *const u8,
    key_len: usize,
    expected_version: *const u64,
    opts: *const nvkv_write_opts,
    result: *mut nvkv_write_result,
) -> nvkv_result {
    guard(|| {
        let d = self::db(db)?;
        // SAFETY: see `key` and `read_in`.
        let (k, o) = unsafe { (self::key(key, key_len)?, read_in(opts, "opts")?) };
        // SAFETY: as `read_in`.
        let expected = unsafe { read_expected(expected_version)? };
        let r = opt_out(result, "result")?;
        finish_cas(ops::cas(&d.handle, k, expected, None, write_opts(o)?), r)
    })
}

unsafe fn read_expected(p: *const u64) -> Result<Option<u64>, CapiError> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL; `read_in` checks alignment.
    Ok(Some(unsafe { read_in(p, "expected_version")? }))
}

/// Adds `delta` to the 8-byte little-endian integer under `key` (absent: 0); the new value goes to
/// `*new_value` (may be NULL). `opts` may be NULL.
#[no_mangle]
pub unsafe extern "C" fn nvkv_incr(
    db: *const nvkv_db,
    key: *const u8,
    key_len: usize,
    delta: i64,
    opts: *const nvkv_write_opts,
    new_value: *mut i64,
) -> nvkv_result {
    guard(|| {
        let d = self::db(db)?;
        // SAFETY: see `key` and `read_in`.
        let (k, o) = unsafe { (self::key(key, key_len)?, read_in(opts, "opts")?) };
        let r = opt_out(new_value, "new_value")?;
        let n = ops::incr(&d.handle, k, delta, write_opts(o)?)?;
        if let Some(p) = r {
            // SAFETY: checked by `opt_out`.
            unsafe { store(p, n) };
        }
        Ok(())
    })
}

/// Persists everything written so far on every shard, and waits for it.
#[no_mangle]
pub unsafe extern "C" fn nvkv_sync(db: *const nvkv_db) -> nvkv_result {
    guard(|| {
        let d = self::db(db)?;
        d.handle.sync()?;
        Ok(())
    })
}

/// The number of shards.
#[no_mangle]
pub unsafe extern "C" fn nvkv_shard_count(db: *const nvkv_db, count: *mut usize) -> nvkv_result {
    guard(|| {
        let d = self::db(db)?;
        let p = out(count, "count")?;
        // SAFETY: checked by `out`.
        unsafe { store(p, d.handle.shards()) };
        Ok(())
    })
}

/// Statistics summed over all shards (`total->shard` is the number of shards).
#[no_mangle]
pub unsafe extern "C" fn nvkv_db_stats(db: *const nvkv_db, total: *mut nvkv_stats) -> nvkv_result {
    guard(|| {
        let d = self::db(db)?;
        let p = out(total, "total")?;
        let all = ops::stats(&d.handle)?;
        // SAFETY: checked by `out`.
        unsafe { store(p, stats(&ops::total(&all))) };
        Ok(())
    })
}

/// Statistics of shard `shard` (< `nvkv_shard_count`).
#[no_mangle]
pub unsafe extern "C" fn nvkv_shard_stats(
    db: *const nvkv_db,
    shard: usize,
    out_stats: *mut nvkv_stats,
) -> nvkv_result {
    guard(|| {
        let d = self::db(db)?;
        let p = out(out_stats, "out_stats")?;
        let all = ops::stats(&d.handle)?;
        let s = all
            .get(shard)
            .ok_or_else(|| CapiError::Invalid(format!("shard {shard} of {}", all.len())))?;
        // SAFETY: checked by `out`.
        unsafe { store(p, stats(s)) };
        Ok(())
    })
}

// ---- scans ------------------------------------------------------------------------------------------

/// Starts a scan of `start <= key < end` in key order, at most `limit` pairs (0: no limit). `start` may be
/// NULL with `start_len` 0 (from the first key); `end` NULL means no upper bound. The iterator fetches pairs
/// in pages, so it is not a snapshot: keys written meanwhile may or may not appear; keys left alone appear
/// exactly once. Free it with `nvkv_iter_free`.
#[no_mangle]
pub unsafe extern "C" fn nvkv_scan(
    db: *const nvkv_db,
    start: *const u8,
    start_len: usize,
    end: *const u8,
    end_len: usize,
    limit: usize,
    iter: *mut *mut nvkv_iter,
) -> nvkv_result {
    guard(|| {
        let d = self::db(db)?;
        // SAFETY: see `bytes`.
        let s = unsafe { bytes(start, start_len, "start")? };
        let e = if end.is_null() {
            None
        } else {
            // SAFETY: see `bytes`.
            Some(unsafe { bytes(end, end_len, "end")? })
        };
        let slot = out(iter, "iter")?;
        let limit = if limit == 0 { usize::MAX } else { limit };
        let st = IterState::new(d.handle.clone(), s, e, limit);
        let token = handles::insert(Object::Iter(Arc::new(std::sync::Mutex::new(st))))?;
        // SAFETY: checked by `out`.
        unsafe { store(slot, to_handle(token)) };
        Ok(())
    })
}

/// Moves to the next pair: `*key`/`*key_len` and (if not NULL) `*value`/`*value_len` point into the
/// iterator, valid until its next `nvkv_iter_next` or `nvkv_iter_free`. `NVKV_END` when there is none.
#[no_mangle]
pub unsafe extern "C" fn nvkv_iter_next(
    iter: *mut nvkv_iter,
    key: *mut *const u8,
    key_len: *mut usize,
    value: *mut *const u8,
    value_len: *mut usize,
) -> nvkv_result {
    guard(|| {
        if iter.is_null() {
            return Err(CapiError::Null("iter"));
        }
        let it = handles::iter(iter.addr())?;
        let (kp, kl) = (out(key, "key")?, out(key_len, "key_len")?);
        let (vp, vl) = (opt_out(value, "value")?, opt_out(value_len, "value_len")?);
        let mut st = it.lock().unwrap_or_else(|e| e.into_inner());
        st.advance()?;
        let (k, v) = st.cur.as_ref().ok_or(CapiError::End)?;
        // SAFETY: outputs checked above; the pointers stay valid while `cur` is not replaced, which the
        // header's contract covers (until the next call on this iterator).
        unsafe {
            store(kp, k.as_ptr());
            store(kl, k.len());
            if let Some(p) = vp {
                store(p, v.as_ptr());
            }
            if let Some(p) = vl {
                store(p, v.len());
            }
        }
        Ok(())
    })
}

/// Frees an iterator and sets `*iter` to NULL; later calls with a copy of it return `NVKV_CLOSED`.
#[no_mangle]
pub unsafe extern "C" fn nvkv_iter_free(iter: *mut *mut nvkv_iter) -> nvkv_result {
    guard(|| {
        let slot = out(iter, "iter")?;
        // SAFETY: checked by `out`.
        let h = unsafe { slot.as_ptr().read() };
        if h.is_null() {
            return Err(CapiError::Null("*iter"));
        }
        // Check the kind before removing, so a database handle passed by mistake stays open.
        handles::iter(h.addr())?;
        handles::remove(h.addr(), "iterator")?;
        // SAFETY: checked by `out`.
        unsafe { store(slot, std::ptr::null_mut()) };
        Ok(())
    })
}

// ---- asynchronous form ------------------------------------------------------------------------------

/// A context for asynchronous requests on `db`: submit with `nvkv_async_*` (returns at once), then collect
/// with `nvkv_async_poll` (never blocks) or `nvkv_async_wait`. Answers wake the thread that created the
/// context, so create it on the thread that waits.
#[no_mangle]
pub unsafe extern "C" fn nvkv_async_new(
    db: *const nvkv_db,
    ctx: *mut *mut nvkv_async,
) -> nvkv_result {
    guard(|| {
        let d = self::db(db)?;
        let slot = out(ctx, "ctx")?;
        let st = AsyncState::new(&d.handle);
        let token = handles::insert(Object::Async(Arc::new(std::sync::Mutex::new(st))))?;
        // SAFETY: checked by `out`.
        unsafe { store(slot, to_handle(token)) };
        Ok(())
    })
}

fn async_ctx(ctx: *const nvkv_async) -> Result<Arc<std::sync::Mutex<AsyncState>>, CapiError> {
    if ctx.is_null() {
        return Err(CapiError::Null("ctx"));
    }
    handles::async_ctx(ctx.addr())
}

fn submit(
    ctx: *const nvkv_async,
    key: &[u8],
    op: Op,
    cb: nvkv_callback,
    user_data: *mut c_void,
    id: *mut u64,
) -> Result<(), CapiError> {
    let c = async_ctx(ctx)?;
    let id_out = opt_out(id, "id")?;
    let cb = Callback {
        f: cb,
        user: user_data.expose_provenance(),
    };
    let n = c
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .submit(key, op, cb)?;
    if let Some(p) = id_out {
        // SAFETY: checked by `opt_out`.
        unsafe { store(p, n) };
    }
    Ok(())
}

/// Queues a get; `cb` (may be NULL) gets the value in `value`/`value_len`/`meta`, or `NVKV_NOT_FOUND`.
/// `*id` (may be NULL) receives the request's id. On a non-OK return nothing was queued and `cb` is not
/// called.
#[no_mangle]
pub unsafe extern "C" fn nvkv_async_get(
    ctx: *mut nvkv_async,
    key: *const u8,
    key_len: usize,
    cb: nvkv_callback,
    user_data: *mut c_void,
    id: *mut u64,
) -> nvkv_result {
    guard(|| {
        // SAFETY: see `key`.
        let k = unsafe { self::key(key, key_len)? };
        submit(ctx, k, Op::Get(k.to_vec()), cb, user_data, id)
    })
}

/// Queues a put (the key and value are copied); `cb` gets `write`. With `NVKV_WRITE_DURABLE` the callback
/// comes once the write is durable.
#[no_mangle]
pub unsafe extern "C" fn nvkv_async_put(
    ctx: *mut nvkv_async,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
    opts: *const nvkv_write_opts,
    cb: nvkv_callback,
    user_data: *mut c_void,
    id: *mut u64,
) -> nvkv_result {
    guard(|| {
        // SAFETY: see `key`, `value` and `read_in`.
        let (k, v, o) = unsafe {
            (
                self::key(key, key_len)?,
                self::value(value, value_len)?,
                read_in(opts, "opts")?,
            )
        };
        let op = Op::Put(k.to_vec(), v.to_vec(), write_opts(o)?);
        submit(ctx, k, op, cb, user_data, id)
    })
}

/// Queues a delete; `cb` gets `write`.
#[no_mangle]
pub unsafe extern "C" fn nvkv_async_delete(
    ctx: *mut nvkv_async,
    key: *const u8,
    key_len: usize,
    opts: *const nvkv_write_opts,
    cb: nvkv_callback,
    user_data: *mut c_void,
    id: *mut u64,
) -> nvkv_result {
    guard(|| {
        // SAFETY: see `key` and `read_in`.
        let (k, o) = unsafe { (self::key(key, key_len)?, read_in(opts, "opts")?) };
        let op = Op::Delete(k.to_vec(), write_opts(o)?);
        submit(ctx, k, op, cb, user_data, id)
    })
}

/// Queues a compare-and-swap (as `nvkv_cas`; `value` NULL with `delete_key` non-zero deletes); `cb` gets
/// `write`, or `NVKV_VERSION_MISMATCH` with the current version in `write.version`.
#[no_mangle]
pub unsafe extern "C" fn nvkv_async_cas(
    ctx: *mut nvkv_async,
    key: *const u8,
    key_len: usize,
    expected_version: *const u64,
    value: *const u8,
    value_len: usize,
    delete_key: c_int,
    opts: *const nvkv_write_opts,
    cb: nvkv_callback,
    user_data: *mut c_void,
    id: *mut u64,
) -> nvkv_result {
    guard(|| {
        // SAFETY: see `key`, `value` and `read_in`.
        let (k, v, o, e) = unsafe {
            (
                self::key(key, key_len)?,
                self::value(value, value_len)?,
                read_in(opts, "opts")?,
                read_expected(expected_version)?,
            )
        };
        let new = (delete_key == 0).then(|| v.to_vec());
        let op = Op::Cas(k.to_vec(), e, new, write_opts(o)?);
        submit(ctx, k, op, cb, user_data, id)
    })
}

/// Queues an increment; `cb` gets the new value in `number`.
#[no_mangle]
pub unsafe extern "C" fn nvkv_async_incr(
    ctx: *mut nvkv_async,
    key: *const u8,
    key_len: usize,
    delta: i64,
    opts: *const nvkv_write_opts,
    cb: nvkv_callback,
    user_data: *mut c_void,
    id: *mut u64,
) -> nvkv_result {
    guard(|| {
        // SAFETY: see `key` and `read_in`.
        let (k, o) = unsafe { (self::key(key, key_len)?, read_in(opts, "opts")?) };
        let op = Op::Incr(k.to_vec(), delta, write_opts(o)?);
        submit(ctx, k, op, cb, user_data, id)
    })
}

/// Runs the callbacks of finished requests, outside the context's lock (so they may submit more).
fn deliver(done: Vec<Done>) {
    for (id, cb, r) in done {
        let mut c = nvkv_completion {
            id,
            result: nvkv_result::NVKV_OK,
            value: std::ptr::null(),
            value_len: 0,
            meta: nvkv_meta::default(),
            write: nvkv_write_result::default(),
            number: 0,
        };
        // Owns the value while the callback looks at it.
        let mut _keep: Vec<u8> = Vec::new();
        match r {
            Ok(Reply::Value(Some((v, m)))) => {
                c.value = v.as_ptr();
                c.value_len = v.len();
                c.meta = meta(m);
                _keep = v;
            }
            Ok(Reply::Value(None)) => c.result = nvkv_result::NVKV_NOT_FOUND,
            Ok(Reply::Write(w)) => c.write = write_result(w),
            Ok(Reply::Incr(n, w)) => {
                c.number = n;
                c.write = write_result(w);
            }
            Ok(_) => c.result = nvkv_result::NVKV_PANIC,
            Err(e) => {
                if let engine::Error::VersionMismatch { current } = e {
                    c.write.version = current.unwrap_or(0);
                }
                c.result = CapiError::Engine(e).code();
            }
        }
        if let Some(f) = cb.f {
            let user: *mut c_void = std::ptr::with_exposed_provenance_mut(cb.user);
            // SAFETY: a callback of the declared signature given with the request; `c` and the value it
            // points to live until it returns.
            unsafe { f(user, &c) };
        }
    }
}

/// Takes up to `max` (0: all) finished requests and runs their callbacks on this thread; never blocks.
/// `*completed` (may be NULL) receives how many.
#[no_mangle]
pub unsafe extern "C" fn nvkv_async_poll(
    ctx: *mut nvkv_async,
    max: usize,
    completed: *mut usize,
) -> nvkv_result {
    guard(|| {
        let c = async_ctx(ctx)?;
        let n_out = opt_out(completed, "completed")?;
        let max = if max == 0 { usize::MAX } else { max };
        let done = c.lock().unwrap_or_else(|e| e.into_inner()).take(max);
        let n = done.len();
        deliver(done);
        if let Some(p) = n_out {
            // SAFETY: checked by `opt_out`.
            unsafe { store(p, n) };
        }
        Ok(())
    })
}

/// Like `nvkv_async_poll` with no limit, but first waits up to `timeout_us` microseconds (UINT64_MAX: no
/// limit) for at least one request to finish. Returns at once when nothing is in flight. `*completed` 0 and
/// `NVKV_OK` after a timeout.
#[no_mangle]
pub unsafe extern "C" fn nvkv_async_wait(
    ctx: *mut nvkv_async,
    timeout_us: u64,
    completed: *mut usize,
) -> nvkv_result {
    guard(|| {
        let c = async_ctx(ctx)?;
        let n_out = opt_out(completed, "completed")?;
        let deadline = Instant::now().checked_add(Duration::from_micros(timeout_us));
        let n = loop {
            let (done, pending) = {
                let mut s = c.lock().unwrap_or_else(|e| e.into_inner());
                (s.take(usize::MAX), s.pending())
            };
            if !done.is_empty() || pending == 0 {
                let n = done.len();
                deliver(done);
                break n;
            }
            let left = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(l) if !l.is_zero() => l,
                    _ => break 0,
                },
                None => Duration::MAX,
            };
            // Answers unpark the creating thread; from another thread, the 1 ms cap bounds the delay.
            std::thread::park_timeout(left.min(Duration::from_millis(1)));
        };
        if let Some(p) = n_out {
            // SAFETY: checked by `opt_out`.
            unsafe { store(p, n) };
        }
        Ok(())
    })
}

/// The number of requests in flight (submitted, callback not yet run).
#[no_mangle]
pub unsafe extern "C" fn nvkv_async_pending(
    ctx: *mut nvkv_async,
    pending: *mut usize,
) -> nvkv_result {
    guard(|| {
        let c = async_ctx(ctx)?;
        let p = out(pending, "pending")?;
        let n = c.lock().unwrap_or_else(|e| e.into_inner()).pending();
        // SAFETY: checked by `out`.
        unsafe { store(p, n) };
        Ok(())
    })
}

/// Waits for the requests still in flight, runs their callbacks (so their user data can be released),
/// frees the context and sets `*ctx` to NULL.
#[no_mangle]
pub unsafe extern "C" fn nvkv_async_free(ctx: *mut *mut nvkv_async) -> nvkv_result {
    guard(|| {
        let slot = out(ctx, "ctx")?;
        // SAFETY: checked by `out`.
        let h = unsafe { slot.as_ptr().read() };
        if h.is_null() {
            return Err(CapiError::Null("*ctx"));
        }
        let c = handles::async_ctx(h.addr())?;
        handles::remove(h.addr(), "async context")?;
        // SAFETY: checked by `out`.
        unsafe { store(slot, std::ptr::null_mut()) };
        loop {
            let (done, pending) = {
                let mut s = c.lock().unwrap_or_else(|e| e.into_inner());
                (s.take(usize::MAX), s.pending())
            };
            deliver(done);
            if pending == 0 {
                return Ok(());
            }
            std::thread::park_timeout(Duration::from_millis(1));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_constants_match_the_engine() {
        assert_eq!(NVKV_MAX_KEY_LEN, engine::MAX_KEY_LEN);
        assert_eq!(NVKV_MAX_VALUE_LEN, engine::MAX_VALUE_LEN);
    }
}
