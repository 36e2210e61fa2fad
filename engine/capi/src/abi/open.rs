//! Opening and closing a database.

use super::*;

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
        match take_handle(db, ("db", "*db"), "database", |o| {
            matches!(o, Object::Db(_))
        })? {
            Object::Db(d) => d.close(),
            _ => Err(CapiError::BadHandle("database")),
        }
    })
}
