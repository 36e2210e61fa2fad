//! The synchronous operations: get, put, delete, compare-and-swap, increment, sync, statistics.

use super::*;

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
        self::with_db(db, |d| {
            // SAFETY: see `self::key`.
            let k = unsafe { self::key(key, key_len)? };
            let len_out = out(value_len, "value_len")?;
            let meta_out = opt_out(meta, "meta")?;
            if buf.is_null() && buf_cap > 0 {
                return Err(CapiError::Null("buf"));
            }
            ops::get_with(&d.handle, k, |v, m| {
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
                    // SAFETY: `buf` is non-NULL (buf_cap >= v.len() > 0) and the caller promises `buf_cap`
                    // writable bytes; the library's buffer cannot overlap the caller's.
                    unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), buf, v.len()) };
                }
                Ok(())
            })
        })
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
        self::with_db(db, |d| {
            // SAFETY: see `self::key`.
            let k = unsafe { self::key(key, key_len)? };
            let val_out = out(value, "value")?;
            let len_out = out(value_len, "value_len")?;
            let meta_out = opt_out(meta, "meta")?;
            ops::get_with(&d.handle, k, |v, m| {
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
        })
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
        self::with_db(db, |d| {
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
        self::with_db(db, |d| {
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
        self::with_db(db, |d| {
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
        self::with_db(db, |d| {
            // SAFETY: see `key` and `read_in`.
            let (k, o) = unsafe { (self::key(key, key_len)?, read_in(opts, "opts")?) };
            // SAFETY: as `read_in`.
            let expected = unsafe { read_expected(expected_version)? };
            let r = opt_out(result, "result")?;
            finish_cas(ops::cas(&d.handle, k, expected, None, write_opts(o)?), r)
        })
    })
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
        self::with_db(db, |d| {
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
    })
}

/// Persists everything written so far on every shard, and waits for it.
#[no_mangle]
pub unsafe extern "C" fn nvkv_sync(db: *const nvkv_db) -> nvkv_result {
    guard(|| {
        self::with_db(db, |d| {
            d.handle.sync()?;
            Ok(())
        })
    })
}

/// The number of shards.
#[no_mangle]
pub unsafe extern "C" fn nvkv_shard_count(db: *const nvkv_db, count: *mut usize) -> nvkv_result {
    guard(|| {
        self::with_db(db, |d| {
            let p = out(count, "count")?;
            // SAFETY: checked by `out`.
            unsafe { store(p, d.handle.shards()) };
            Ok(())
        })
    })
}

/// Statistics summed over all shards (`total->shard` is the number of shards).
#[no_mangle]
pub unsafe extern "C" fn nvkv_db_stats(db: *const nvkv_db, total: *mut nvkv_stats) -> nvkv_result {
    guard(|| {
        self::with_db(db, |d| {
            let p = out(total, "total")?;
            let all = ops::stats(&d.handle)?;
            // SAFETY: checked by `out`.
            unsafe { store(p, stats(&ops::total(&all))) };
            Ok(())
        })
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
        self::with_db(db, |d| {
            let p = out(out_stats, "out_stats")?;
            let all = ops::stats(&d.handle)?;
            let s = all
                .get(shard)
                .ok_or_else(|| CapiError::Invalid(format!("shard {shard} of {}", all.len())))?;
            // SAFETY: checked by `out`.
            unsafe { store(p, stats(s)) };
            Ok(())
        })
    })
}
