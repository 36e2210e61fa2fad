//! Scans through an iterator.

use super::*;

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
        take_handle(iter, ("iter", "*iter"), "iterator", |o| {
            matches!(o, Object::Iter(_))
        })?;
        Ok(())
    })
}
