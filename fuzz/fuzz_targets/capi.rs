//! The C ABI's argument handling, driven by the input: options (shards, buffer and disk sizes, flags),
//! then a sequence of calls with keys and values of any length (including empty and over the limits),
//! NULL pointers, forged handles, batches (single requests, arrays, answers out of range), and calls
//! after close. Every call must return a result code; none
//! may panic, abort or hang.
#![no_main]
use capi::abi::*;
use libfuzzer_sys::fuzz_target;
use std::ptr::{null, null_mut};

fuzz_target!(|data: &[u8]| {
    let mut d = data.iter().copied();
    let mut next = move || d.next().unwrap_or(0);
    // SAFETY: every pointer passed is NULL, points into a live local buffer with the length given, or
    // is a forged handle the library must reject without dereferencing (its contract).
    unsafe {
        let mut o = std::mem::zeroed::<nvkv_options>();
        let _ = nvkv_options_init(&mut o);
        o.backend = nvkv_backend::NVKV_BACKEND_MEMORY as u32;
        o.size = (1u64 << 20) << (next() % 4);
        o.block_size = [512, 4096, 1000, 0][usize::from(next() % 4)];
        o.shards = u32::from(next() % 3);
        o.buffer_bytes = [0usize, 4096, 65536, 1 << 30][usize::from(next() % 4)];
        o.flags = u32::from(next()) & 0x7;
        let mut db: *mut nvkv_db = null_mut();
        if nvkv_open(&o, &mut db) as i32 != 0 {
            return;
        }
        let mut batch: *mut nvkv_batch = null_mut();
        let _ = nvkv_batch_new(db, &mut batch);
        let buf = vec![0xabu8; 2 << 20];
        let mut out = vec![0u8; 4096];
        for _ in 0..64 {
            let op = next();
            let kl = match next() % 4 {
                0 => 0,
                1 => 1 + usize::from(next() % 16),
                2 => 1024 + usize::from(next() % 3),
                _ => usize::from(next()) * 5,
            };
            let vl = match next() % 4 {
                0 => 0,
                1 => usize::from(next()),
                2 => (1 << 20) + usize::from(next() % 2),
                _ => usize::from(next()) << 8,
            };
            let key = if next() % 16 == 0 {
                null()
            } else {
                buf.as_ptr()
            };
            let val = if next() % 16 == 0 {
                null()
            } else {
                buf.as_ptr()
            };
            let target = if next() % 32 == 0 {
                0x1234_5678usize as *const nvkv_db
            } else {
                db
            };
            let mut len = 0usize;
            let _ = match op % 10 {
                0 | 1 => nvkv_put(target, key, kl, val, vl, null(), null_mut()),
                2 | 3 => nvkv_get(
                    target,
                    key,
                    kl,
                    out.as_mut_ptr(),
                    out.len(),
                    &mut len,
                    null_mut(),
                ),
                4 => nvkv_delete(target, key, kl, null(), null_mut()),
                5 => {
                    let mut it: *mut nvkv_iter = null_mut();
                    let r = nvkv_scan(target, key, kl, null(), 0, usize::from(next()), &mut it);
                    if !it.is_null() {
                        let (mut k, mut kn) = (null(), 0usize);
                        for _ in 0..4 {
                            let _ = nvkv_iter_next(it, &mut k, &mut kn, null_mut(), null_mut());
                        }
                        let _ = nvkv_iter_free(&mut it);
                    }
                    r
                }
                6 => nvkv_sync(target),
                8 => {
                    // Arrays of up to three requests, one of them possibly of another length.
                    let ks = [key, key, val];
                    let kls = [kl, kl.wrapping_add(1), vl];
                    let n = usize::from(next() % 4);
                    if next() % 2 == 0 {
                        nvkv_batch_get_many(batch, ks.as_ptr(), kls.as_ptr(), n, null_mut())
                    } else {
                        let vs = [val, key, val];
                        let vls = [vl, kl, 0];
                        let n = n.min(3);
                        nvkv_batch_put_many(
                            batch,
                            ks.as_ptr(),
                            kls.as_ptr(),
                            vs.as_ptr(),
                            vls.as_ptr(),
                            n,
                            null(),
                            null_mut(),
                        )
                    }
                }
                9 => {
                    let _ = nvkv_batch_put(batch, key, kl, val, vl, null(), null_mut());
                    let _ = nvkv_batch_wait(batch);
                    let mut cs = [std::mem::zeroed::<nvkv_completion>(); 4];
                    let first = usize::from(next() % 8);
                    let n = usize::from(next() % 5).min(cs.len());
                    let r = nvkv_batch_results(batch, first, cs.as_mut_ptr(), n);
                    if next() % 2 == 0 {
                        let _ = nvkv_batch_clear(batch);
                    }
                    r
                }
                _ => {
                    let mut n = 0i64;
                    nvkv_incr(target, key, kl, i64::from(next() as i8), null(), &mut n)
                }
            };
        }
        let copy = db;
        let _ = nvkv_close(&mut db);
        // After close every call on a copy of the handle answers, never touches freed memory.
        let mut len = 0usize;
        let _ = nvkv_get(
            copy,
            buf.as_ptr(),
            1,
            out.as_mut_ptr(),
            out.len(),
            &mut len,
            null_mut(),
        );
        let mut c2 = copy;
        let _ = nvkv_close(&mut c2);
        // A batch outlives its database: its calls answer, its free waits for nothing left.
        let _ = nvkv_batch_put(batch, buf.as_ptr(), 1, buf.as_ptr(), 1, null(), null_mut());
        let _ = nvkv_batch_wait(batch);
        let _ = nvkv_batch_free(&mut batch);
    }
});
