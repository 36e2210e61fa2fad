//! Turning the caller's pointers into slices and values, and results into the caller's structs.

use super::*;

/// A key: non-NULL, 1..=NVKV_MAX_KEY_LEN bytes; the length is checked before a byte is read.
pub(super) unsafe fn key<'a>(p: *const u8, len: usize) -> Result<&'a [u8], CapiError> {
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
pub(super) unsafe fn value<'a>(p: *const u8, len: usize) -> Result<&'a [u8], CapiError> {
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
pub(super) unsafe fn bytes<'a>(
    p: *const u8,
    len: usize,
    what: &'static str,
) -> Result<&'a [u8], CapiError> {
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

/// An array of `n` elements the caller passes: NULL only when `n` is 0; aligned.
pub(super) unsafe fn array<'a, T>(
    p: *const T,
    n: usize,
    what: &'static str,
) -> Result<&'a [T], CapiError> {
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(CapiError::Null(what));
    }
    if !p.is_aligned() {
        return Err(CapiError::Invalid(format!("{what} is misaligned")));
    }
    if n > isize::MAX as usize / std::mem::size_of::<T>().max(1) {
        return Err(CapiError::Invalid(format!("{what}: {n} elements")));
    }
    // SAFETY: non-NULL, aligned, a size that fits isize; the caller promises `n` readable elements.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// A required output pointer: non-NULL and aligned.
pub(super) fn out<T>(p: *mut T, what: &'static str) -> Result<NonNull<T>, CapiError> {
    let p = NonNull::new(p).ok_or(CapiError::Null(what))?;
    if !p.is_aligned() {
        return Err(CapiError::Invalid(format!("{what} is misaligned")));
    }
    Ok(p)
}

/// An optional output pointer (NULL: the caller does not want it).
pub(super) fn opt_out<T>(p: *mut T, what: &'static str) -> Result<Option<NonNull<T>>, CapiError> {
    if p.is_null() {
        Ok(None)
    } else {
        out(p, what).map(Some)
    }
}

/// Stores `v` through a checked output pointer.
pub(super) unsafe fn store<T>(p: NonNull<T>, v: T) {
    // SAFETY: `p` passed `out` (non-NULL, aligned) and the caller promises it is writable; `write` does not
    // read or drop the (possibly uninitialized) old contents.
    unsafe { p.as_ptr().write(v) }
}

/// Reads an input struct (NULL: its defaults).
pub(super) unsafe fn read_in<T: Copy + Default>(
    p: *const T,
    what: &'static str,
) -> Result<T, CapiError> {
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

pub(super) fn write_opts(o: nvkv_write_opts) -> Result<WriteOpts, CapiError> {
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

pub(super) fn write_result(w: WriteResult) -> nvkv_write_result {
    nvkv_write_result {
        applied: w.applied,
        version: w.version,
        ts: w.ts,
    }
}

pub(super) fn meta(m: Meta) -> nvkv_meta {
    nvkv_meta {
        version: m.version,
        ts: m.ts,
    }
}

pub(super) fn stats(s: &ShardStats) -> nvkv_stats {
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

/// Closes or frees the handle at `*p`: the handle (of `kind`, checked by `expect` before anything is
/// removed, so a handle of another kind passed by mistake stays open) leaves the table and `*p` becomes
/// NULL. `names` name `p` and `*p` in messages. The object, for the caller to finish (close, drain, drop).
pub(super) fn take_handle<T>(
    p: *mut *mut T,
    names: (&'static str, &'static str),
    kind: &'static str,
    expect: fn(&Object) -> bool,
) -> Result<Object, CapiError> {
    let slot = out(p, names.0)?;
    // SAFETY: checked by `out`; the caller promises it holds a handle (or NULL).
    let h = unsafe { slot.as_ptr().read() };
    if h.is_null() {
        return Err(CapiError::Null(names.1));
    }
    let obj = handles::remove(h.addr(), kind, expect)?;
    // SAFETY: checked by `out`.
    unsafe { store(slot, std::ptr::null_mut()) };
    Ok(obj)
}

/// A handle value for C: the token as a pointer that must never be dereferenced.
pub(super) fn to_handle<T>(token: usize) -> *mut T {
    std::ptr::without_provenance_mut(token)
}

/// The database behind `p`, as a reference of its own (for objects that keep it).
pub(super) fn db(p: *const nvkv_db) -> Result<Arc<ops::DbObj>, CapiError> {
    if p.is_null() {
        return Err(CapiError::Null("db"));
    }
    handles::db(p.addr())
}

/// Runs `f` on the database behind `p`, borrowed (the per-call path: no lock, no reference count).
pub(super) fn with_db<R>(
    p: *const nvkv_db,
    f: impl FnOnce(&ops::DbObj) -> Result<R, CapiError>,
) -> Result<R, CapiError> {
    if p.is_null() {
        return Err(CapiError::Null("db"));
    }
    handles::with_db(p.addr(), f)
}

pub(super) unsafe fn read_expected(p: *const u64) -> Result<Option<u64>, CapiError> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL; `read_in` checks alignment.
    Ok(Some(unsafe { read_in(p, "expected_version")? }))
}
