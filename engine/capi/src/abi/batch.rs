//! Batches: many requests queued one call each, waited on once. A batch reuses its request slots (no
//! allocation per request once they have grown), so a steady stream of batches costs the queueing and
//! the shard's work, not the library's.

use super::*;

use crate::ops::BatchState;
use engine::api::Answer;

/// A batch on `db`. Queue requests with `nvkv_batch_get`/`_put`/`_delete`/`_cas`/`_incr` (each goes to
/// its shard at once), wait with `nvkv_batch_wait`, read answers with `nvkv_batch_result`, then
/// `nvkv_batch_clear` to reuse the batch. Used by one thread at a time (calls on it are serialized).
#[no_mangle]
pub unsafe extern "C" fn nvkv_batch_new(
    db: *const nvkv_db,
    batch: *mut *mut nvkv_batch,
) -> nvkv_result {
    guard(|| {
        let slot = out(batch, "batch")?;
        let st = self::with_db(db, |d| Ok(BatchState::new(&d.handle)))?;
        let token = handles::insert(Object::Batch(Arc::new(std::sync::Mutex::new(st))))?;
        // SAFETY: checked by `out`.
        unsafe { store(slot, to_handle(token)) };
        Ok(())
    })
}

/// Queues one request on the batch behind `b` (already checked); stores its index through `index` (may
/// be NULL).
fn queue(
    b: *mut nvkv_batch,
    index: *mut usize,
    f: impl FnOnce(&mut BatchState) -> usize,
) -> Result<(), CapiError> {
    let mut f = Some(f);
    queue_many(
        b,
        1,
        index,
        |_| Ok(()),
        |st, _| {
            if let Some(f) = f.take() {
                f(st);
            }
            Ok(())
        },
    )
}

/// Queues a get (`NVKV_CLOSED` once the database is closed). Indices count from 0 in the order of
/// queueing since `nvkv_batch_new` or `nvkv_batch_clear`; `*index` (may be NULL) receives this one's. On a
/// non-OK return nothing was queued.
#[no_mangle]
pub unsafe extern "C" fn nvkv_batch_get(
    batch: *mut nvkv_batch,
    key: *const u8,
    key_len: usize,
    index: *mut usize,
) -> nvkv_result {
    guard(|| {
        // SAFETY: see `key`.
        let k = unsafe { self::key(key, key_len)? };
        queue(batch, index, |b| b.get(k))
    })
}

/// Queues `n` requests at once with one look-up of the batch; stores the first one's index. `check`
/// validates request `i` (every one is checked before any is queued, so a bad one queues nothing);
/// `queue` queues it.
fn queue_many(
    b: *mut nvkv_batch,
    n: usize,
    first_index: *mut usize,
    check: impl Fn(usize) -> Result<(), CapiError>,
    mut queue: impl FnMut(&mut BatchState, usize) -> Result<(), CapiError>,
) -> Result<(), CapiError> {
    if b.is_null() {
        return Err(CapiError::Null("batch"));
    }
    let idx_out = opt_out(first_index, "first_index")?;
    (0..n).try_for_each(&check)?;
    let first = handles::with_batch(b.addr(), |st| {
        let mut st = st.lock().unwrap_or_else(|e| e.into_inner());
        // Refused here rather than queued to be answered "closed": the caller learns it at once.
        if st.is_closed() {
            return Err(CapiError::Closed("database"));
        }
        let first = st.len();
        (0..n).try_for_each(|i| queue(&mut st, i))?;
        Ok(first)
    })?;
    if let Some(p) = idx_out {
        // SAFETY: checked by `opt_out`.
        unsafe { store(p, first) };
    }
    Ok(())
}

/// Queues `n` gets at once: key `i` is `keys[i]`, `key_lens[i]` bytes (the arrays may be NULL when `n` is
/// 0). Their indices are `*first_index` (may be NULL) onwards. Cheaper than `n` calls of
/// `nvkv_batch_get`; every key is checked first, so on a non-OK return nothing was queued.
#[no_mangle]
pub unsafe extern "C" fn nvkv_batch_get_many(
    batch: *mut nvkv_batch,
    keys: *const *const u8,
    key_lens: *const usize,
    n: usize,
    first_index: *mut usize,
) -> nvkv_result {
    guard(|| {
        // SAFETY: see `array`.
        let (ks, kl) = unsafe { (array(keys, n, "keys")?, array(key_lens, n, "key_lens")?) };
        let k = |i: usize| {
            // SAFETY: see `key`; `ks[i]` and `kl[i]` are the caller's pointer and length of key `i`.
            unsafe { self::key(ks[i], kl[i]) }
        };
        queue_many(
            batch,
            n,
            first_index,
            |i| k(i).map(drop),
            |st, i| {
                st.get(k(i)?);
                Ok(())
            },
        )
    })
}

/// Queues `n` puts at once (`keys[i]` of `key_lens[i]` bytes gets `values[i]` of `value_lens[i]` bytes;
/// all with `opts`, which may be NULL), as `nvkv_batch_get_many` does gets.
#[no_mangle]
pub unsafe extern "C" fn nvkv_batch_put_many(
    batch: *mut nvkv_batch,
    keys: *const *const u8,
    key_lens: *const usize,
    values: *const *const u8,
    value_lens: *const usize,
    n: usize,
    opts: *const nvkv_write_opts,
    first_index: *mut usize,
) -> nvkv_result {
    guard(|| {
        // SAFETY: see `array` and `read_in`.
        let (ks, kl, vs, vl, o) = unsafe {
            (
                array(keys, n, "keys")?,
                array(key_lens, n, "key_lens")?,
                array(values, n, "values")?,
                array(value_lens, n, "value_lens")?,
                read_in(opts, "opts")?,
            )
        };
        let o = write_opts(o)?;
        let kv = |i: usize| -> Result<(&[u8], &[u8]), CapiError> {
            // SAFETY: see `key` and `value`; the arrays hold the caller's pointers and lengths of request `i`.
            unsafe { Ok((self::key(ks[i], kl[i])?, self::value(vs[i], vl[i])?)) }
        };
        queue_many(
            batch,
            n,
            first_index,
            |i| kv(i).map(drop),
            |st, i| {
                let (k, v) = kv(i)?;
                st.put(k, v, o);
                Ok(())
            },
        )
    })
}

/// Queues a put (key and value are copied). `opts` and `index` may be NULL.
#[no_mangle]
pub unsafe extern "C" fn nvkv_batch_put(
    batch: *mut nvkv_batch,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
    opts: *const nvkv_write_opts,
    index: *mut usize,
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
        let o = write_opts(o)?;
        queue(batch, index, |b| b.put(k, v, o))
    })
}

/// Queues a delete. `opts` and `index` may be NULL.
#[no_mangle]
pub unsafe extern "C" fn nvkv_batch_delete(
    batch: *mut nvkv_batch,
    key: *const u8,
    key_len: usize,
    opts: *const nvkv_write_opts,
    index: *mut usize,
) -> nvkv_result {
    guard(|| {
        // SAFETY: see `key` and `read_in`.
        let (k, o) = unsafe { (self::key(key, key_len)?, read_in(opts, "opts")?) };
        let o = write_opts(o)?;
        queue(batch, index, |b| b.delete(k, o))
    })
}

/// Queues a compare-and-swap, as `nvkv_cas` (`expected_version` NULL: only if absent). Its result is
/// `NVKV_VERSION_MISMATCH` with the current version in `write.version` when the version differs.
#[no_mangle]
pub unsafe extern "C" fn nvkv_batch_cas(
    batch: *mut nvkv_batch,
    key: *const u8,
    key_len: usize,
    expected_version: *const u64,
    value: *const u8,
    value_len: usize,
    opts: *const nvkv_write_opts,
    index: *mut usize,
) -> nvkv_result {
    guard(|| {
        // SAFETY: see `key`, `value`, `read_in` and `read_expected`.
        let (k, v, o, e) = unsafe {
            (
                self::key(key, key_len)?,
                self::value(value, value_len)?,
                read_in(opts, "opts")?,
                read_expected(expected_version)?,
            )
        };
        let o = write_opts(o)?;
        queue(batch, index, |b| b.cas(k, e, Some(v), o))
    })
}

/// Queues an increment, as `nvkv_incr`; the new value comes back in `number`.
#[no_mangle]
pub unsafe extern "C" fn nvkv_batch_incr(
    batch: *mut nvkv_batch,
    key: *const u8,
    key_len: usize,
    delta: i64,
    opts: *const nvkv_write_opts,
    index: *mut usize,
) -> nvkv_result {
    guard(|| {
        // SAFETY: see `key` and `read_in`.
        let (k, o) = unsafe { (self::key(key, key_len)?, read_in(opts, "opts")?) };
        let o = write_opts(o)?;
        queue(batch, index, |b| b.incr(k, delta, o))
    })
}

/// Runs `f` on the batch behind `b`, locked.
fn with_batch<R>(
    b: *mut nvkv_batch,
    f: impl FnOnce(&mut BatchState) -> Result<R, CapiError>,
) -> Result<R, CapiError> {
    if b.is_null() {
        return Err(CapiError::Null("batch"));
    }
    handles::with_batch(b.addr(), |st| {
        f(&mut st.lock().unwrap_or_else(|e| e.into_inner()))
    })
}

/// Waits until every request queued on the batch is answered (durable writes: once durable). Requests
/// fail one by one (see `nvkv_batch_result`); this returns `NVKV_OK` once all are in.
#[no_mangle]
pub unsafe extern "C" fn nvkv_batch_wait(batch: *mut nvkv_batch) -> nvkv_result {
    guard(|| {
        with_batch(batch, |st| {
            st.wait();
            Ok(())
        })
    })
}

/// The number of requests queued since `nvkv_batch_new` or `nvkv_batch_clear`.
#[no_mangle]
pub unsafe extern "C" fn nvkv_batch_len(batch: *mut nvkv_batch, len: *mut usize) -> nvkv_result {
    guard(|| {
        let p = out(len, "len")?;
        let n = with_batch(batch, |st| Ok(st.len()))?;
        // SAFETY: checked by `out`.
        unsafe { store(p, n) };
        Ok(())
    })
}

/// The answer of request `index` (waiting for the batch if it is not in yet), as a completion: `id` is
/// the index; for a get, `value` points into the batch and stays valid until `nvkv_batch_clear` or
/// `nvkv_batch_free`. `c` may be NULL. Returns the request's result code (`NVKV_NOT_FOUND` for a get of
/// an absent key, the write's error, ...), or `NVKV_INVALID_ARGUMENT` for an index not in the batch.
#[no_mangle]
pub unsafe extern "C" fn nvkv_batch_result(
    batch: *mut nvkv_batch,
    index: usize,
    c: *mut nvkv_completion,
) -> nvkv_result {
    guard(|| {
        let c_out = opt_out(c, "c")?;
        with_batch(batch, |st| result(st, index, c_out))
    })
}

/// The answers of requests `first .. first + n` (waiting for the batch if they are not in yet) into
/// `out[0 .. n]`, as `nvkv_batch_result` gives them one at a time: one call for a whole batch. Each
/// request's own code is in its `result`; the call returns `NVKV_OK` when it could fill them all
/// (`NVKV_INVALID_ARGUMENT` when the range is not in the batch, and then `out` is untouched).
#[no_mangle]
pub unsafe extern "C" fn nvkv_batch_results(
    batch: *mut nvkv_batch,
    first: usize,
    out: *mut nvkv_completion,
    n: usize,
) -> nvkv_result {
    guard(|| {
        if n == 0 {
            return Ok(());
        }
        let base = self::out(out, "out")?;
        with_batch(batch, |st| {
            let len = st.len();
            if first.checked_add(n).is_none_or(|end| end > len) {
                return Err(CapiError::Invalid(format!(
                    "requests {first}..{first}+{n} of a batch of {len}"
                )));
            }
            for i in 0..n {
                // SAFETY: the caller promises `n` writable completions at `out` (non-NULL and aligned,
                // checked above); `i < n`.
                let p = unsafe { NonNull::new_unchecked(base.as_ptr().add(i)) };
                // A request's failure is its completion's code, not the call's.
                let _ = result(st, first + i, Some(p));
            }
            Ok(())
        })
    })
}

/// Request `index`'s answer into `c_out`; the request's outcome.
fn result(
    st: &mut BatchState,
    index: usize,
    c_out: Option<NonNull<nvkv_completion>>,
) -> Result<(), CapiError> {
    let mut done = nvkv_completion::empty(index as u64);
    let res = match st.answer(index)? {
        Ok(Answer::Value(Some((v, m)))) => {
            done.value = v.as_ptr();
            done.value_len = v.len();
            done.meta = meta(m);
            Ok(())
        }
        Ok(Answer::Value(None)) => Err(CapiError::NotFound),
        Ok(Answer::Write(w)) => {
            done.write = write_result(w);
            Ok(())
        }
        Ok(Answer::Incr(n, w)) => {
            done.number = n;
            done.write = write_result(w);
            Ok(())
        }
        Err(e) => Err(CapiError::Engine(e)),
    };
    if let Err(e) = &res {
        done.fail(e);
    }
    if let Some(p) = c_out {
        // SAFETY: checked by `opt_out`; the value pointer stays valid while the batch's slots are not
        // reused, which the contract above covers.
        unsafe { store(p, done) };
    }
    res
}

/// Waits for what is still in flight and empties the batch; its slots are reused by the next requests.
#[no_mangle]
pub unsafe extern "C" fn nvkv_batch_clear(batch: *mut nvkv_batch) -> nvkv_result {
    guard(|| {
        with_batch(batch, |st| {
            st.clear();
            Ok(())
        })
    })
}

/// Waits for what is still in flight, frees the batch and sets `*batch` to NULL; later calls with a copy
/// of it return `NVKV_CLOSED`.
#[no_mangle]
pub unsafe extern "C" fn nvkv_batch_free(batch: *mut *mut nvkv_batch) -> nvkv_result {
    guard(|| {
        let obj = take_handle(batch, ("batch", "*batch"), "batch", |o| {
            matches!(o, Object::Batch(_))
        })?;
        if let Object::Batch(b) = obj {
            b.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
        Ok(())
    })
}
