//! The safe half of the C ABI: what each entry point does once its pointers have become slices and
//! values. No `unsafe` here.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use engine::api::{Answer, AsyncRequests, Client, Op, Reply};
use engine::bdev::{MemDisk, NvmeFactory};
use engine::{Db, DbHandle, Meta, Options, ShardStats, WriteOpts, WriteResult};

use crate::abi::Callback;
use crate::error::CapiError;

/// Where the database lives.
#[derive(Debug)]
pub enum BackendSpec {
    /// A RAM disk of `size` bytes (gone at close).
    Memory {
        /// Bytes.
        size: u64,
        /// Block size.
        block_size: u32,
    },
    /// A file or block device.
    File {
        /// Path.
        path: PathBuf,
        /// Size to extend a regular file to.
        size: Option<u64>,
    },
    /// A controller bound to vfio-pci, through nvkv's driver.
    Nvme {
        /// PCI address.
        addr: String,
        /// Namespace.
        nsid: u32,
    },
}

/// An open database: the handle every call uses, and the `Db` that `nvkv_close` takes to close it.
#[derive(Debug)]
pub struct DbObj {
    /// Clones of it stay usable (they fail with `Closed`) after the database is closed.
    pub handle: DbHandle,
    db: Mutex<Option<Db>>,
}

/// Opens the database; `tune` sets the options beyond the backend.
pub fn open(spec: BackendSpec, tune: impl FnOnce(&mut Options)) -> Result<DbObj, CapiError> {
    let db = match spec {
        BackendSpec::Memory { size, block_size } => {
            if block_size < 512 || !block_size.is_power_of_two() {
                return Err(CapiError::Invalid(format!(
                    "block size {block_size} (a power of two >= 512)"
                )));
            }
            let blocks = size / u64::from(block_size);
            if blocks == 0 {
                return Err(CapiError::Invalid(
                    "memory backend needs a size of at least one block".into(),
                ));
            }
            let mut o = Options::memory(MemDisk::new(block_size, blocks));
            tune(&mut o);
            Db::open(o)?
        }
        BackendSpec::File { path, size } => {
            let mut o = Options::file(path, size);
            tune(&mut o);
            Db::open(o)?
        }
        BackendSpec::Nvme { addr, nsid } => {
            let factory = NvmeFactory::open(&addr, nsid).map_err(|e| CapiError::Device {
                addr: addr.clone(),
                why: e.to_string(),
            })?;
            // The backend field is not read by open_with: the factory is the device.
            let mut o = Options::file(format!("nvme:{addr}"), None);
            tune(&mut o);
            Db::open_with(o, Arc::new(factory))?
        }
    };
    Ok(DbObj {
        handle: db.handle(),
        db: Mutex::new(Some(db)),
    })
}

impl DbObj {
    /// Persists, checkpoints and stops the shards. Other threads' calls in flight end with `Closed`.
    pub fn close(&self) -> Result<(), CapiError> {
        let db = self.db.lock().unwrap_or_else(|e| e.into_inner()).take();
        match db {
            Some(db) => {
                db.close()?;
                Ok(())
            }
            None => Err(CapiError::Closed("database")),
        }
    }
}

/// Runs `f` on the value under `key` and its metadata. The value is read into a buffer the calling
/// thread keeps (through the handle's request slot: no allocation once the buffer has grown), so `f`
/// sees it without a copy of its own.
pub fn get_with<R>(
    h: &DbHandle,
    key: &[u8],
    f: impl FnOnce(&[u8], Meta) -> Result<R, CapiError>,
) -> Result<R, CapiError> {
    thread_local! {
        static VALUE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    /// A buffer that grew past this (a large value) is given back after the call.
    const KEEP: usize = 64 << 10;
    let mut f = Some(f);
    let mut read = |buf: &mut Vec<u8>| -> Result<R, CapiError> {
        let m = h.get_into(key, buf)?.ok_or(CapiError::NotFound);
        let r = match (m, f.take()) {
            (Ok(m), Some(f)) => f(buf, m),
            (Err(e), _) => Err(e),
            (_, None) => Err(CapiError::Panic("get_with ran twice".into())),
        };
        if buf.capacity() > KEEP {
            *buf = Vec::new();
        }
        r
    };
    // Not available during thread teardown or when re-entered: a buffer of the call's own then.
    match VALUE.try_with(|b| b.try_borrow_mut().ok().map(|mut b| read(&mut b))) {
        Ok(Some(r)) => r,
        _ => read(&mut Vec::new()),
    }
}

/// Stores a value.
pub fn put(h: &DbHandle, key: &[u8], value: &[u8], o: WriteOpts) -> Result<WriteResult, CapiError> {
    Ok(h.put_opts(key, value, o)?)
}

/// Deletes a key.
pub fn delete(h: &DbHandle, key: &[u8], o: WriteOpts) -> Result<WriteResult, CapiError> {
    Ok(h.delete_opts(key, o)?)
}

/// Compare-and-swap (`new` None deletes).
pub fn cas(
    h: &DbHandle,
    key: &[u8],
    expected: Option<u64>,
    new: Option<&[u8]>,
    o: WriteOpts,
) -> Result<WriteResult, CapiError> {
    Ok(h.cas_opts(key, expected, new, o)?)
}

/// Increment; the new value.
pub fn incr(h: &DbHandle, key: &[u8], delta: i64, o: WriteOpts) -> Result<i64, CapiError> {
    Ok(h.incr_opts(key, delta, o)?.0)
}

/// Every shard's statistics.
pub fn stats(h: &DbHandle) -> Result<Vec<ShardStats>, CapiError> {
    Ok(h.stats()?)
}

/// The sum over shards (`shard` holds the number of shards).
pub fn total(all: &[ShardStats]) -> ShardStats {
    let mut t = ShardStats {
        shard: all.len() as u32,
        ..ShardStats::default()
    };
    for s in all {
        t.keys += s.keys;
        t.live_bytes += s.live_bytes;
        t.dead_bytes += s.dead_bytes;
        t.free_blocks += s.free_blocks;
        t.free_extents += s.free_extents;
        t.segments += s.segments;
        t.cycles += s.cycles;
        t.checkpoints += s.checkpoints;
        t.checkpoints_skipped += s.checkpoints_skipped;
        t.gc_segments += s.gc_segments;
        t.gc_bytes_moved += s.gc_bytes_moved;
        t.buffer_bytes_saved += s.buffer_bytes_saved;
        t.queue_depth += s.queue_depth;
        t.durable_waiters += s.durable_waiters;
        t.durable_log = t.durable_log.or(s.durable_log);
        t.durable_log_failed = t.durable_log_failed.take().or(s.durable_log_failed.clone());
        t.durable_log_writes += s.durable_log_writes;
        t.durable_cycle_writes += s.durable_cycle_writes;
        t.durable_log_barriers += s.durable_log_barriers;
        t.durable_log_barrier_ns_total += s.durable_log_barrier_ns_total;
        t.durable_log_used_bytes += s.durable_log_used_bytes;
        t.durable_log_capacity += s.durable_log_capacity;
    }
    t
}

/// Pairs fetched per scan request: bounds the memory of an iterator over a large range.
const PAGE: usize = 256;

/// A scan in pages: each page is one ordered scan starting just after the last key seen, so the iterator
/// holds at most a page of pairs. Not a snapshot: a key written during the iteration may or may not appear.
#[derive(Debug)]
pub struct IterState {
    db: DbHandle,
    /// Where the next page starts (None: no more pages).
    next: Option<Vec<u8>>,
    end: Option<Vec<u8>>,
    /// Pairs the caller still wants.
    left: usize,
    page: VecDeque<(Vec<u8>, Vec<u8>)>,
    /// The pair the last `advance` returned; the caller's pointers point into it.
    pub cur: Option<(Vec<u8>, Vec<u8>)>,
}

impl IterState {
    /// An iterator over `start <= key < end`, at most `limit` pairs.
    pub fn new(db: DbHandle, start: &[u8], end: Option<&[u8]>, limit: usize) -> Self {
        IterState {
            db,
            next: Some(start.to_vec()),
            end: end.map(<[u8]>::to_vec),
            left: limit,
            page: VecDeque::new(),
            cur: None,
        }
    }

    /// Moves to the next pair (into `cur`), or fails with `End`.
    pub fn advance(&mut self) -> Result<(), CapiError> {
        self.cur = None;
        // Pages already fetched are not served after `nvkv_close`: the header promises NVKV_CLOSED.
        if self.db.is_closed() {
            self.page.clear();
            return Err(CapiError::Closed("database"));
        }
        if self.left == 0 {
            return Err(CapiError::End);
        }
        if self.page.is_empty() {
            let Some(start) = self.next.take() else {
                return Err(CapiError::End);
            };
            let want = self.left.min(PAGE);
            let got = self.db.scan(&start, self.end.as_deref(), want)?;
            if got.len() == want {
                // The smallest key after the last one: the last key with a zero byte appended.
                if let Some((k, _)) = got.last() {
                    let mut n = k.clone();
                    n.push(0);
                    self.next = Some(n);
                }
            }
            self.page = got.into();
        }
        let pair = self.page.pop_front().ok_or(CapiError::End)?;
        self.left -= 1;
        self.cur = Some(pair);
        Ok(())
    }
}

/// An asynchronous context: a pipeline and the callbacks of the requests in flight.
#[derive(Debug)]
pub struct AsyncState {
    pipe: AsyncRequests,
    next_id: u64,
    pending: HashMap<u64, Callback>,
}

/// A finished asynchronous request.
pub type Done = (u64, Callback, Result<Reply, engine::Error>);

impl AsyncState {
    /// A context on `db`.
    pub fn new(db: &DbHandle) -> Self {
        AsyncState {
            pipe: db.async_requests(),
            next_id: 1,
            pending: HashMap::new(),
        }
    }

    /// Queues `op` on `key`'s shard; its id.
    pub fn submit(&mut self, key: &[u8], op: Op, cb: Callback) -> Result<u64, CapiError> {
        let id = self.next_id;
        self.pipe.submit_key(key, op, id)?;
        self.next_id += 1;
        self.pending.insert(id, cb);
        Ok(id)
    }

    /// Requests in flight.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Up to `max` finished requests, with their callbacks.
    pub fn take(&mut self, max: usize) -> Vec<Done> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some((id, r)) = self.pipe.try_next() else {
                break;
            };
            // Ids are ours and unique; an unknown one would be an engine bug and is dropped.
            if let Some(cb) = self.pending.remove(&id) {
                out.push((id, cb, r));
            }
        }
        out
    }
}

/// A batch: requests through one client's reused slots, submitted one by one and waited for once.
#[derive(Debug)]
pub struct BatchState {
    client: Client,
}

/// What one request of a batch answered.
pub type BatchAnswer<'a> = Result<Answer<'a>, engine::Error>;

impl BatchState {
    /// A batch on `db`.
    pub fn new(db: &DbHandle) -> Self {
        BatchState {
            client: db.client(),
        }
    }

    /// Queues a get; its index.
    pub fn get(&mut self, key: &[u8]) -> usize {
        self.client.batch_get(key)
    }

    /// Queues a put; its index.
    pub fn put(&mut self, key: &[u8], value: &[u8], o: WriteOpts) -> usize {
        self.client.batch_put(key, value, o)
    }

    /// Queues a delete; its index.
    pub fn delete(&mut self, key: &[u8], o: WriteOpts) -> usize {
        self.client.batch_delete(key, o)
    }

    /// Queues a compare-and-swap (`new` None deletes); its index.
    pub fn cas(
        &mut self,
        key: &[u8],
        expected: Option<u64>,
        new: Option<&[u8]>,
        o: WriteOpts,
    ) -> usize {
        self.client.batch_cas(key, expected, new, o)
    }

    /// Queues an increment; its index.
    pub fn incr(&mut self, key: &[u8], delta: i64, o: WriteOpts) -> usize {
        self.client.batch_incr(key, delta, o)
    }

    /// Whether the database was closed (requests queued now would be answered `Closed`).
    pub fn is_closed(&self) -> bool {
        self.client.handle().is_closed()
    }

    /// Requests queued since the batch was created or cleared.
    pub fn len(&self) -> usize {
        self.client.batch_len()
    }

    /// Waits for every request queued.
    pub fn wait(&mut self) {
        self.client.batch_wait()
    }

    /// The answer of request `i`, waiting for the batch if it is not in yet.
    pub fn answer(&mut self, i: usize) -> Result<BatchAnswer<'_>, CapiError> {
        let n = self.len();
        if i >= n {
            return Err(CapiError::Invalid(format!("request {i} of a batch of {n}")));
        }
        if self.client.batch_answer(i).is_none() {
            self.client.batch_wait();
        }
        self.client
            .batch_answer(i)
            .ok_or_else(|| CapiError::Panic(format!("request {i} unanswered after the wait")))
    }

    /// Waits for what is in flight and empties the batch (its slots are reused).
    pub fn clear(&mut self) {
        self.client.batch_clear()
    }
}
