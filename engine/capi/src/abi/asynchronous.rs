//! The asynchronous form: requests with callbacks, collected in the caller's own loop.

use super::*;

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
        let mut c = nvkv_completion::empty(id);
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
            Err(e) => c.fail(&CapiError::Engine(e)),
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
        let Object::Async(c) = take_handle(ctx, ("ctx", "*ctx"), "async context", |o| {
            matches!(o, Object::Async(_))
        })?
        else {
            return Err(CapiError::BadHandle("async context"));
        };
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
