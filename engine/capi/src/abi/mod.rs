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
pub const NVKV_ABI_VERSION: u32 = 3;
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

/// A batch of requests (opaque).
#[derive(Debug)]
pub struct nvkv_batch {
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

impl nvkv_completion {
    /// The completion of request `id`, before its answer is filled in (`NVKV_OK`, nothing else set).
    fn empty(id: u64) -> Self {
        nvkv_completion {
            id,
            result: nvkv_result::NVKV_OK,
            value: std::ptr::null(),
            value_len: 0,
            meta: nvkv_meta::default(),
            write: nvkv_write_result::default(),
            number: 0,
        }
    }

    /// Records the request's failure: its code, and after a version mismatch the current version in
    /// `write.version` (0: absent), as `nvkv_cas` reports it.
    fn fail(&mut self, e: &CapiError) {
        if let CapiError::Engine(engine::Error::VersionMismatch { current }) = e {
            self.write.version = current.unwrap_or(0);
        }
        self.result = e.code();
    }
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

mod asynchronous;
mod batch;
mod open;
mod pointers;
mod scan;
mod sync_ops;
mod version;

// The entry points, at `abi::` as before the split (the fuzz targets and tests call them there).
pub use asynchronous::*;
pub use batch::*;
pub use open::*;
use pointers::*;
pub use scan::*;
pub use sync_ops::*;
pub use version::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_constants_match_the_engine() {
        assert_eq!(NVKV_MAX_KEY_LEN, engine::MAX_KEY_LEN);
        assert_eq!(NVKV_MAX_VALUE_LEN, engine::MAX_VALUE_LEN);
    }
}
