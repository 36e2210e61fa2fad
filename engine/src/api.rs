//! The database: N shard threads (pinned to cores when possible), each running one [`Shard`] in a
//! run-to-completion loop, and a `Send + Sync` handle that routes each key to its shard over a lock-free
//! queue and waits for the answer in the calling thread's [`Mailbox`]. [`Batch`] keeps many requests in
//! flight from one thread; [`Db::run_on`] runs a closure on a shard's own thread against the
//! [`LocalCtx`] (no hop per operation).

use std::any::Any;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;

use crate::bdev::{BlockDevice, DeviceFactory, FileDisk, IoError, MemDisk};
use crate::durable_log::DurableLogDevice;
use crate::error::Error;
use crate::format::VolumeId;
use crate::mailbox::{Doorbell, Mailbox};
use crate::recovery::{RecoveryReport, SliceState};
use crate::shard::{
    Conflict, KvPairs, Meta, Shard, ShardConfig, ShardStats, WriteOpts, WriteResult,
};

/// Which device the database lives on.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A RAM disk (kept by the caller, so it can be reopened).
    Memory(MemDisk),
    /// A file or block device, opened with O_DIRECT when possible; `size` extends a smaller file.
    File {
        /// Path.
        path: PathBuf,
        /// Size to extend a regular file to.
        size: Option<u64>,
    },
}

/// How to open a database.
#[derive(Debug, Clone)]
pub struct Options {
    /// The device.
    pub backend: Backend,
    /// Number of shards (threads); the device is split in as many slices. Fixed at format time.
    pub shards: usize,
    /// Write-buffer size per shard (also the largest segment), bytes.
    pub buffer_bytes: usize,
    /// Longest a write stays buffered before its cycle starts (1 ms .. minutes).
    pub commit_interval: Duration,
    /// Write buffers' worth of log at least between index checkpoints (a checkpoint also waits until the
    /// log since the last one is as large as the checkpoint itself).
    pub checkpoint_every: u32,
    /// Conflict strategy.
    pub conflict: Conflict,
    /// Format a blank device.
    pub create: bool,
    /// GC runs while a slice's free fraction is below this.
    pub gc_free_low: f64,
    /// Pin shard threads to cores (falls back to unpinned when that fails).
    pub pin_threads: bool,
    /// Request queue capacity per shard.
    pub queue_capacity: usize,
    /// Spin instead of sleeping when idle (lowest latency, burns a core per shard).
    pub busy_poll: bool,
    /// Bytes of recently written segments each shard keeps in memory for reads (0: none).
    pub cache_bytes: usize,
    /// Segments each shard writes at once (at least 1; each holds a write buffer of `buffer_bytes` while
    /// its write is in flight). More absorb longer device stalls before writers wait.
    pub max_inflight_cycles: usize,
    /// Where durable writes are acknowledged from: a persistent-memory log (microseconds) or the
    /// persistence cycle (a segment write and a Flush). A database opened with a durable log must be
    /// reopened with it after a crash (its records may hold acknowledged writes); after a clean close
    /// it opens without it.
    pub durable_log: DurableLogDevice,
    /// Bytes of the durable-log device each shard uses (0: an equal share of the whole device).
    pub durable_log_bytes: usize,
}

impl Options {
    /// Defaults on the given backend: 1 shard, 256 KiB buffers, 5 ms commit interval.
    pub fn new(backend: Backend) -> Self {
        Options {
            backend,
            shards: 1,
            buffer_bytes: 256 << 10,
            commit_interval: Duration::from_millis(5),
            checkpoint_every: 64,
            conflict: Conflict::LastWriterWins,
            create: true,
            gc_free_low: 0.25,
            pin_threads: true,
            queue_capacity: 4096,
            busy_poll: false,
            cache_bytes: crate::shard::DEFAULT_CACHE_BYTES,
            max_inflight_cycles: crate::shard::DEFAULT_INFLIGHT_CYCLES,
            durable_log: DurableLogDevice::None,
            durable_log_bytes: 0,
        }
    }

    /// On a RAM disk.
    pub fn memory(disk: MemDisk) -> Self {
        Self::new(Backend::Memory(disk))
    }

    /// On a file or block device.
    pub fn file(path: impl Into<PathBuf>, size: Option<u64>) -> Self {
        Self::new(Backend::File {
            path: path.into(),
            size,
        })
    }

    /// The settings of shard `id`.
    pub fn shard_config(&self, id: usize) -> ShardConfig {
        ShardConfig {
            shard_id: id as u32,
            shard_count: self.shards as u32,
            buffer_bytes: self.buffer_bytes,
            commit_interval: self
                .commit_interval
                .clamp(Duration::from_millis(1), Duration::from_secs(3600)),
            checkpoint_every: self.checkpoint_every.max(1),
            conflict: self.conflict.clone(),
            create: self.create,
            gc_free_low: self.gc_free_low,
            cache_bytes: self.cache_bytes,
            max_inflight_cycles: self.max_inflight_cycles.max(1),
        }
    }
}

/// Operations a closure can run on a shard's own thread, without a hop per call.
pub trait LocalCtx {
    /// Shard number.
    fn shard_id(&self) -> u32;
    /// See [`Shard::get`].
    fn get(&mut self, key: &[u8]) -> Result<Option<(Vec<u8>, Meta)>, Error>;
    /// See [`Shard::put`]; `durable` is not waited for here (use `sync`).
    fn put(&mut self, key: &[u8], value: &[u8], opts: WriteOpts) -> Result<WriteResult, Error>;
    /// See [`Shard::delete`].
    fn delete(&mut self, key: &[u8], opts: WriteOpts) -> Result<WriteResult, Error>;
    /// See [`Shard::cas`].
    fn cas(
        &mut self,
        key: &[u8],
        expected: Option<u64>,
        new: Option<&[u8]>,
        opts: WriteOpts,
    ) -> Result<WriteResult, Error>;
    /// See [`Shard::incr`].
    fn incr(
        &mut self,
        key: &[u8],
        delta: i64,
        opts: WriteOpts,
    ) -> Result<(i64, WriteResult), Error>;
    /// See [`Shard::scan`] (this shard's keys only).
    fn scan(&mut self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<KvPairs, Error>;
    /// See [`Shard::sync`].
    fn sync(&mut self) -> Result<(), Error>;
    /// See [`Shard::stats`].
    fn stats(&self) -> ShardStats;
    /// See [`Shard::tick`]: a closure that runs long calls this between operations, as the shard thread
    /// does between requests, so completions are reaped and persistence cycles start on time.
    fn tick(&mut self) -> Result<bool, Error>;
    /// See [`Shard::wait_durable`] (polls the device until generation `gen` is durable).
    fn wait_durable(&mut self, gen: u64) -> Result<(), Error>;
    /// See [`Shard::wait_write`] (returns once write `w` is durable: by its durable-log record when
    /// it has one, else by its persistence cycle).
    fn wait_write(&mut self, w: &WriteResult) -> Result<(), Error>;
}

impl<D: BlockDevice> LocalCtx for Shard<D> {
    fn shard_id(&self) -> u32 {
        self.id()
    }
    fn get(&mut self, key: &[u8]) -> Result<Option<(Vec<u8>, Meta)>, Error> {
        Shard::get(self, key)
    }
    fn put(&mut self, key: &[u8], value: &[u8], opts: WriteOpts) -> Result<WriteResult, Error> {
        Shard::put(self, key, value, opts)
    }
    fn delete(&mut self, key: &[u8], opts: WriteOpts) -> Result<WriteResult, Error> {
        Shard::delete(self, key, opts)
    }
    fn cas(
        &mut self,
        key: &[u8],
        expected: Option<u64>,
        new: Option<&[u8]>,
        opts: WriteOpts,
    ) -> Result<WriteResult, Error> {
        Shard::cas(self, key, expected, new, opts)
    }
    fn incr(
        &mut self,
        key: &[u8],
        delta: i64,
        opts: WriteOpts,
    ) -> Result<(i64, WriteResult), Error> {
        Shard::incr(self, key, delta, opts)
    }
    fn scan(&mut self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<KvPairs, Error> {
        Shard::scan(self, start, end, limit)
    }
    fn sync(&mut self) -> Result<(), Error> {
        Shard::sync(self)
    }
    fn stats(&self) -> ShardStats {
        Shard::stats(self)
    }
    fn tick(&mut self) -> Result<bool, Error> {
        Shard::tick(self)
    }
    fn wait_durable(&mut self, gen: u64) -> Result<(), Error> {
        Shard::wait_durable(self, gen)
    }
    fn wait_write(&mut self, w: &WriteResult) -> Result<(), Error> {
        Shard::wait_write(self, w)
    }
}

type LocalFn = Box<dyn FnOnce(&mut dyn LocalCtx) -> Box<dyn Any + Send> + Send>;

/// A request to a shard.
pub enum Op {
    /// Get.
    Get(Vec<u8>),
    /// Put.
    Put(Vec<u8>, Vec<u8>, WriteOpts),
    /// Delete.
    Delete(Vec<u8>, WriteOpts),
    /// Compare-and-swap.
    Cas(Vec<u8>, Option<u64>, Option<Vec<u8>>, WriteOpts),
    /// Increment.
    Incr(Vec<u8>, i64, WriteOpts),
    /// Range scan on one shard.
    Scan(Vec<u8>, Option<Vec<u8>>, usize),
    /// Persist everything.
    Sync,
    /// Statistics.
    Stats,
    /// Run a closure on the shard thread.
    Run(LocalFn),
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Op::Get(_) => "Get",
            Op::Put(..) => "Put",
            Op::Delete(..) => "Delete",
            Op::Cas(..) => "Cas",
            Op::Incr(..) => "Incr",
            Op::Scan(..) => "Scan",
            Op::Sync => "Sync",
            Op::Stats => "Stats",
            Op::Run(_) => "Run",
        })
    }
}

/// An answer.
pub enum Reply {
    /// Get's answer.
    Value(Option<(Vec<u8>, Meta)>),
    /// A write's answer.
    Write(WriteResult),
    /// Increment's answer.
    Incr(i64, WriteResult),
    /// Scan's answer.
    Scan(Vec<(Vec<u8>, Vec<u8>)>),
    /// Sync done.
    Synced,
    /// Statistics.
    Stats(Box<ShardStats>),
    /// A closure's result.
    Any(Box<dyn Any + Send>),
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Value(v) => write!(f, "Value({v:?})"),
            Reply::Write(w) => write!(f, "Write({w:?})"),
            Reply::Incr(n, w) => write!(f, "Incr({n}, {w:?})"),
            Reply::Scan(s) => write!(f, "Scan({} items)", s.len()),
            Reply::Synced => f.write_str("Synced"),
            Reply::Stats(s) => write!(f, "Stats({s:?})"),
            Reply::Any(_) => f.write_str("Any"),
        }
    }
}

type Answer = Result<Reply, Error>;
type Inbox = Arc<Mailbox<Answer>>;

struct Request {
    op: Op,
    id: u64,
    reply: Inbox,
}

struct ShardLink {
    queue: ArrayQueue<Request>,
    bell: Arc<Doorbell>,
    depth: AtomicU64,
    /// The shard thread died (a bug): requests are refused instead of waiting forever.
    dead: AtomicBool,
}

struct Inner {
    shards: Vec<ShardLink>,
    stop: AtomicBool,
    closed: AtomicBool,
}

/// A `Send + Sync` handle on an open database; clone it freely.
#[derive(Clone)]
pub struct DbHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DbHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbHandle")
            .field("shards", &self.inner.shards.len())
            .finish()
    }
}

/// An open database. Dropping it closes it (use [`Db::close`] to see errors).
#[derive(Debug)]
pub struct Db {
    handle: DbHandle,
    threads: Vec<JoinHandle<Result<ShardStats, Error>>>,
    reports: Vec<RecoveryReport>,
}

thread_local! {
    static INBOX: Inbox = Arc::new(Mailbox::new());
}

fn inbox() -> Inbox {
    INBOX.with(Arc::clone)
}

/// What a shard thread reports while the database opens.
enum Opening {
    /// Step 1 done: what the slice holds (nothing written yet).
    Probed(SliceState),
    /// Step 2 done: the shard runs.
    Opened(Arc<Doorbell>, RecoveryReport),
}

/// One report from every shard thread, of the kind `pick` takes; the first error (a report of the
/// other kind is one) once all have answered.
fn gather<T>(
    starts: &[mpsc::Receiver<Result<Opening, Error>>],
    pick: impl Fn(Opening) -> Option<T>,
) -> Result<Vec<T>, Error> {
    let mut got = Vec::with_capacity(starts.len());
    let mut first_err = None;
    for rx in starts {
        match rx.recv() {
            Ok(Ok(o)) => match pick(o) {
                Some(t) => got.push(t),
                None => {
                    first_err.get_or_insert(Error::Config("shard reported out of turn".into()));
                }
            },
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert(Error::Config("shard thread died while opening".into()));
            }
        }
    }
    first_err.map_or(Ok(got), Err)
}

/// Decides, from what every shard found, whether to format (Some(volume id)), to open (None), or to
/// refuse. A database is formatted only when every slice is blank, and opened only when every slice
/// holds the same volume: a blank or foreign slice among the others is a damaged database, never
/// formatted over.
fn decide_open(states: &[SliceState], create: bool) -> Result<Option<VolumeId>, Error> {
    let blank = |s: &SliceState| *s == SliceState::Blank;
    // Blank slices beside slices formatted and never written: a format that was interrupted (no
    // data can be lost by formatting again).
    let unwritten =
        |s: &SliceState| blank(s) || matches!(s, SliceState::Database { pristine: true, .. });
    if states.iter().any(blank) && states.iter().all(unwritten) {
        if !create {
            return Err(Error::NotADatabase(
                "blank device and `create` is off".into(),
            ));
        }
        let v = crate::format::new_volume_id()
            .map_err(|e| Error::Config(format!("no random volume id: {e}")))?;
        return Ok(Some(v));
    }
    let first = states.iter().find_map(|s| match s {
        SliceState::Database { volume, .. } => Some(*volume),
        SliceState::Blank => None,
    });
    for (i, s) in states.iter().enumerate() {
        match s {
            SliceState::Database { volume, .. } if Some(*volume) == first => {}
            SliceState::Database { .. } => {
                return Err(Error::Unrecoverable(format!(
                    "shard {i} belongs to another database than shard 0's"
                )))
            }
            SliceState::Blank => {
                return Err(Error::Unrecoverable(format!(
                    "shard {i} is blank while the others hold a database (damaged or partly \
                     overwritten); nothing was written"
                )))
            }
        }
    }
    Ok(None)
}

/// Which shard owns `key` (crc32c: hardware-accelerated and well spread).
pub fn shard_of(key: &[u8], shards: usize) -> usize {
    (crc32c::crc32c(key) as usize) % shards.max(1)
}

impl Db {
    /// Opens (recovering or formatting) the database the options describe.
    pub fn open(opts: Options) -> Result<Db, Error> {
        match opts.backend.clone() {
            Backend::Memory(disk) => Self::open_with(opts, Arc::new(disk)),
            Backend::File { path, size } => {
                let disk = FileDisk::open_with(&path, size, opts.create).map_err(|e| {
                    match e.raw_os_error() {
                        Some(libc::EWOULDBLOCK) => Error::Locked(format!(
                            "{} is opened by another handle or process",
                            path.display()
                        )),
                        Some(libc::ENOENT) if !opts.create => Error::NotADatabase(format!(
                            "{} does not exist and `create` is off",
                            path.display()
                        )),
                        n => Error::Io(IoError::Device(n.unwrap_or(libc::EIO))),
                    }
                })?;
                Self::open_with(opts, Arc::new(disk))
            }
        }
    }

    /// Opens on devices made by `factory` (one instance per shard, opened on the shard's thread): the
    /// way in for the NVMe backend and for the recording backend of the crash tests.
    pub fn open_with<F: DeviceFactory + 'static>(
        opts: Options,
        factory: Arc<F>,
    ) -> Result<Db, Error> {
        let n = opts.shards.max(1);
        let cores = if opts.pin_threads {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            vec![]
        };
        let mut threads = Vec::with_capacity(n);
        let mut starts = Vec::with_capacity(n);
        let queues: Vec<ArrayQueue<Request>> = (0..n)
            .map(|_| ArrayQueue::new(opts.queue_capacity.max(16)))
            .collect();
        // The shard threads create their doorbells; the links are assembled once all have reported.
        let inner_slot: Arc<std::sync::OnceLock<Arc<Inner>>> = Arc::new(std::sync::OnceLock::new());
        let mut decide_tx = Vec::with_capacity(n);
        let mut dlogs =
            crate::durable_log::regions(&opts.durable_log, opts.durable_log_bytes, n, &*factory)?
                .into_iter();
        for id in 0..n {
            let dlog = dlogs.next().flatten();
            let (tx, rx) = mpsc::channel::<Result<Opening, Error>>();
            let (dtx, drx) = mpsc::channel::<Option<Option<VolumeId>>>();
            decide_tx.push(dtx);
            let factory = factory.clone();
            let cfg = opts.shard_config(id);
            let core = cores.get(id % cores.len().max(1)).copied();
            let slot = inner_slot.clone();
            let busy = opts.busy_poll;
            let t = std::thread::Builder::new()
                .name(format!("nvkv-shard-{id}"))
                .spawn(move || {
                    if let Some(c) = core {
                        // Best effort: containers and small machines may refuse; the shard runs anyway.
                        let _ = core_affinity::set_for_current(c);
                    }
                    // Step 1, reads only: what the slice holds.
                    let probed = factory
                        .open(id)
                        .map_err(Error::from)
                        .and_then(|dev| Shard::probe_with_log(dev, cfg, dlog));
                    let (mut shard, mut report, state) = match probed {
                        Ok(x) => x,
                        Err(e) => {
                            // The opener waits for this answer; if it is gone there is no one to tell.
                            let _ = tx.send(Err(e.clone()));
                            return Err(e);
                        }
                    };
                    if tx.send(Ok(Opening::Probed(state))).is_err() {
                        return Err(Error::Closed);
                    }
                    // Step 2, once every shard has probed: format, commit, or give up unwritten.
                    let committed = match drx.recv() {
                        Ok(Some(volume)) => shard.commit_open(volume, &mut report),
                        _ => return Err(Error::Closed),
                    };
                    if let Err(e) = committed {
                        // As above: the opener is waiting for this answer or gone.
                        let _ = tx.send(Err(e.clone()));
                        return Err(e);
                    }
                    let bell = Arc::new(Doorbell::new());
                    if tx.send(Ok(Opening::Opened(bell, report))).is_err() {
                        return Ok(shard.stats());
                    }
                    // Wait for the shared state (all shards opened) or give up when open failed.
                    let inner = loop {
                        if let Some(i) = slot.get() {
                            break i.clone();
                        }
                        // Only this thread holds the slot and it is still empty: open failed elsewhere.
                        // (Re-checked: the slot may have been filled just before the others let go.)
                        if Arc::strong_count(&slot) == 1 && slot.get().is_none() {
                            return Ok(shard.stats());
                        }
                        std::thread::park_timeout(Duration::from_millis(1));
                    };
                    drop(slot);
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run_shard(shard, inner.clone(), id, busy)
                    }));
                    match outcome {
                        Ok(r) => r,
                        Err(_) => {
                            // Answer what is queued (and whatever races in) so no client hangs.
                            let link = &inner.shards[id];
                            link.dead.store(true, Ordering::SeqCst);
                            for _ in 0..3 {
                                while let Some(r) = link.queue.pop() {
                                    r.reply.post(r.id, Err(Error::Closed));
                                }
                                std::thread::sleep(Duration::from_millis(1));
                            }
                            Err(Error::Config(format!("shard {id} thread panicked")))
                        }
                    }
                })
                .map_err(|e| Error::Config(format!("spawn: {e}")))?;
            threads.push(t);
            starts.push(rx);
        }
        let fail = |threads: Vec<std::thread::JoinHandle<Result<ShardStats, Error>>>,
                    decide_tx: Vec<mpsc::Sender<Option<Option<VolumeId>>>>,
                    e: Error| {
            for d in decide_tx {
                // A shard that already failed has dropped its receiver: nothing to tell it.
                let _ = d.send(None);
            }
            for t in threads {
                // Its error is the one reported (or a consequence of it).
                let _ = t.join();
            }
            Err(e)
        };
        // Step 1 everywhere before anything is written.
        let states = match gather(&starts, |o| match o {
            Opening::Probed(s) => Some(s),
            Opening::Opened(..) => None,
        }) {
            Ok(s) => s,
            Err(e) => {
                drop(inner_slot);
                return fail(threads, decide_tx, e);
            }
        };
        let decision = match decide_open(&states, opts.create) {
            Ok(d) => d,
            Err(e) => {
                drop(inner_slot);
                return fail(threads, decide_tx, e);
            }
        };
        for d in &decide_tx {
            // A shard thread that died is reported by its channel below.
            let _ = d.send(Some(decision));
        }
        let opened = match gather(&starts, |o| match o {
            Opening::Opened(b, r) => Some((b, r)),
            Opening::Probed(_) => None,
        }) {
            Ok(o) => o,
            Err(e) => {
                drop(inner_slot);
                return fail(threads, Vec::new(), e);
            }
        };
        let (bells, reports): (Vec<_>, Vec<_>) = opened.into_iter().unzip();
        let shards = queues
            .into_iter()
            .zip(bells)
            .map(|(queue, bell)| ShardLink {
                queue,
                bell,
                depth: AtomicU64::new(0),
                dead: AtomicBool::new(false),
            })
            .collect();
        let inner = Arc::new(Inner {
            shards,
            stop: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        let _ = inner_slot.set(inner.clone());
        for t in &threads {
            t.thread().unpark();
        }
        Ok(Db {
            handle: DbHandle { inner },
            threads,
            reports,
        })
    }

    /// What recovery found, per shard.
    pub fn recovery_reports(&self) -> &[RecoveryReport] {
        &self.reports
    }

    /// A handle for other threads.
    pub fn handle(&self) -> DbHandle {
        self.handle.clone()
    }

    /// Runs `f` on shard `shard`'s own thread and returns its result.
    pub fn run_on<R: Send + 'static>(
        &self,
        shard: usize,
        f: impl FnOnce(&mut dyn LocalCtx) -> R + Send + 'static,
    ) -> Result<R, Error> {
        self.handle.run_on(shard, f)
    }

    /// Persists everything, checkpoints, stops the shard threads; returns their final statistics.
    pub fn close(mut self) -> Result<Vec<ShardStats>, Error> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<Vec<ShardStats>, Error> {
        let inner = &self.handle.inner;
        inner.closed.store(true, Ordering::SeqCst);
        inner.stop.store(true, Ordering::SeqCst);
        for s in &inner.shards {
            s.bell.ring();
        }
        let mut out = Vec::new();
        let mut err = None;
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(Ok(s)) => out.push(s),
                Ok(Err(e)) => {
                    err.get_or_insert(e);
                }
                Err(_) => {
                    err.get_or_insert(Error::Config("shard thread panicked".into()));
                }
            }
        }
        match err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            let _ = self.shutdown();
        }
    }
}

impl std::ops::Deref for Db {
    type Target = DbHandle;
    fn deref(&self) -> &DbHandle {
        &self.handle
    }
}

fn answer_id(reply: &Inbox, id: u64, a: Answer) {
    reply.post(id, a);
}

/// The loop of one shard thread: take requests, apply them, move I/O along, answer durable writes
/// once their cycle is published, sleep when idle.
fn run_shard<D: BlockDevice>(
    mut shard: Shard<D>,
    inner: Arc<Inner>,
    id: usize,
    busy: bool,
) -> Result<ShardStats, Error> {
    const BATCH: usize = 64;
    let link = &inner.shards[id];
    let mut waiting: Vec<Waiter> = Vec::new();
    let mut idle = 0u32;
    loop {
        let mut n = 0;
        while n < BATCH {
            let Some(req) = link.queue.pop() else { break };
            n += 1;
            handle(&mut shard, req, &mut waiting);
        }
        // One barrier covers the durable-log records of every write taken above.
        shard.flush_durable_log();
        link.depth.store(link.queue.len() as u64, Ordering::Relaxed);
        // Errors of background work surface through `sync_failed` and the next request.
        let did = shard.tick().unwrap_or_default();
        if !waiting.is_empty() {
            let durable = shard.durable_gen();
            let failed = shard.sync_failed();
            // Writes that cannot be sealed now (no room for the next segment): told at once.
            let stuck = shard.cycle_error().map(|e| (shard.active_gen(), e));
            let mut i = 0;
            while i < waiting.len() {
                let w = &waiting[i];
                // Durable (by its log record or its cycle, also before a failure): a success.
                let answer = if w.gen <= durable || shard.write_is_durable(w.gen, w.lsn) {
                    Some(Ok(()))
                } else if let Some((_, e)) = stuck.as_ref().filter(|(from, _)| w.gen >= *from) {
                    Some(Err(e.clone()))
                } else {
                    failed.clone().map(Err)
                };
                match answer {
                    Some(a) => {
                        let w = waiting.swap_remove(i);
                        answer_id(&w.inbox, w.id, a.map(|()| w.reply));
                    }
                    None => i += 1,
                }
            }
        }
        // Closing is not held up by background work that keeps finding something to do.
        let stopping = inner.stop.load(Ordering::SeqCst) && link.queue.is_empty();
        if (n > 0 || did) && !stopping {
            idle = 0;
            continue;
        }
        if stopping {
            let logged: Vec<bool> = waiting
                .iter()
                .map(|w| shard.write_is_durable(w.gen, w.lsn))
                .collect();
            let res = shard.close();
            for (w, logged) in waiting.drain(..).zip(logged) {
                match &res {
                    Err(e) if !logged => answer_id(&w.inbox, w.id, Err(e.clone())),
                    _ => answer_id(&w.inbox, w.id, Ok(w.reply)),
                }
            }
            return res;
        }
        idle += 1;
        if busy || idle < 64 {
            std::hint::spin_loop();
            continue;
        }
        // Sleep until a request arrives or the commit interval of buffered writes runs out; with
        // segments being written, only briefly: completions are polled (no interrupts), and a writer
        // waiting for durability would otherwise wait out the whole sleep.
        let timeout = if shard.io_pending() {
            Duration::from_micros(20)
        } else {
            shard
                .next_deadline()
                .unwrap_or(Duration::from_millis(50))
                .max(Duration::from_micros(50))
        };
        let q = &link.queue;
        let stop = &inner.stop;
        link.bell.sleep(
            || !q.is_empty() || stop.load(Ordering::SeqCst),
            Some(timeout),
        );
    }
}

/// A durable write waiting to be answered: once its log record or its cycle is durable.
struct Waiter {
    gen: u64,
    lsn: u64,
    id: u64,
    inbox: Inbox,
    reply: Reply,
}

fn handle<D: BlockDevice>(shard: &mut Shard<D>, req: Request, waiting: &mut Vec<Waiter>) {
    let Request { op, id, reply } = req;
    let wait = |w: &WriteResult, r: Reply, inbox: &Inbox| Waiter {
        gen: w.gen,
        lsn: w.lsn,
        id,
        inbox: inbox.clone(),
        reply: r,
    };
    let write = |r: Result<WriteResult, Error>, durable: bool, waiting: &mut Vec<Waiter>| match r {
        Ok(w) if durable && w.applied => waiting.push(wait(&w, Reply::Write(w), &reply)),
        Ok(w) => reply.post(id, Ok(Reply::Write(w))),
        Err(e) => reply.post(id, Err(e)),
    };
    match op {
        Op::Get(k) => reply.post(id, shard.get(&k).map(Reply::Value)),
        Op::Put(k, v, o) => write(shard.put(&k, &v, o), o.durable, waiting),
        Op::Delete(k, o) => write(shard.delete(&k, o), o.durable, waiting),
        Op::Cas(k, e, v, o) => write(shard.cas(&k, e, v.as_deref(), o), o.durable, waiting),
        Op::Incr(k, d, o) => match shard.incr(&k, d, o) {
            Ok((n, w)) if o.durable => waiting.push(wait(&w, Reply::Incr(n, w), &reply)),
            Ok((n, w)) => reply.post(id, Ok(Reply::Incr(n, w))),
            Err(e) => reply.post(id, Err(e)),
        },
        Op::Scan(s, e, l) => reply.post(id, shard.scan(&s, e.as_deref(), l).map(Reply::Scan)),
        Op::Sync => reply.post(id, shard.sync().map(|_| Reply::Synced)),
        Op::Stats => {
            let mut st = shard.stats();
            st.durable_waiters = waiting.len() as u64;
            reply.post(id, Ok(Reply::Stats(Box::new(st))))
        }
        Op::Run(f) => {
            // A panicking closure fails its call, not the shard.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(shard)));
            let a = r
                .map(Reply::Any)
                .map_err(|_| Error::Config("closure panicked on the shard".into()));
            reply.post(id, a)
        }
    }
}

/// Several requests in flight from one thread; answers come back in any order and are returned in
/// submission order.
#[derive(Debug)]
pub struct Batch {
    handle: DbHandle,
    inbox: Inbox,
    sent: u64,
}

impl Batch {
    /// Queues `op` for shard `shard`; returns its position in the batch.
    pub fn submit(&mut self, shard: usize, op: Op) -> Result<u64, Error> {
        let id = self.sent;
        self.handle.send(shard, op, id, &self.inbox)?;
        self.sent += 1;
        Ok(id)
    }

    /// Queues an operation on `key`, routed to its shard.
    pub fn submit_key(&mut self, key: &[u8], op: Op) -> Result<u64, Error> {
        let s = shard_of(key, self.handle.shards());
        self.submit(s, op)
    }

    /// Waits for every answer, returned in submission order.
    pub fn wait(self) -> Vec<Answer> {
        let mut out: Vec<Option<Answer>> = (0..self.sent).map(|_| None).collect();
        for _ in 0..self.sent {
            let (id, a) = self.inbox.recv();
            if let Some(slot) = out.get_mut(id as usize) {
                *slot = Some(a);
            }
        }
        out.into_iter()
            .map(|a| a.unwrap_or(Err(Error::Closed)))
            .collect()
    }
}

/// Requests whose answers are taken one at a time without blocking, for callers that run their own
/// loop (the C API's asynchronous form). Unlike [`Batch`] it has a mailbox of its own rather than the
/// thread's, so it can stay open while the same thread makes synchronous calls. Answers wake the thread
/// that created it.
#[derive(Debug)]
pub struct Pipeline {
    handle: DbHandle,
    inbox: Inbox,
}

impl Pipeline {
    /// Queues `op` for shard `shard`; its answer comes back tagged with `id`.
    pub fn submit(&self, shard: usize, op: Op, id: u64) -> Result<(), Error> {
        self.handle.send(shard, op, id, &self.inbox)
    }

    /// Queues an operation on `key`, routed to its shard.
    pub fn submit_key(&self, key: &[u8], op: Op, id: u64) -> Result<(), Error> {
        self.submit(shard_of(key, self.handle.shards()), op, id)
    }

    /// Takes one answer (its id and result) if one has arrived.
    pub fn try_next(&self) -> Option<(u64, Result<Reply, Error>)> {
        self.inbox.try_recv()
    }
}

impl DbHandle {
    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.inner.shards.len()
    }

    /// Whether the database was closed (every call then fails with [`Error::Closed`]).
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    fn send(&self, shard: usize, op: Op, id: u64, inbox: &Inbox) -> Result<(), Error> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        let link = self
            .inner
            .shards
            .get(shard)
            .ok_or(Error::Config("no such shard".into()))?;
        if link.dead.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        let mut req = Request {
            op,
            id,
            reply: inbox.clone(),
        };
        let mut spins = 0u32;
        loop {
            match link.queue.push(req) {
                Ok(()) => break,
                Err(r) => {
                    // Full: back-pressure. Let the shard drain.
                    req = r;
                    link.bell.ring();
                    spins += 1;
                    if spins > 64 {
                        std::thread::yield_now();
                    }
                    if self.inner.closed.load(Ordering::SeqCst) {
                        return Err(Error::Closed);
                    }
                }
            }
        }
        link.bell.ring();
        Ok(())
    }

    /// Starts a batch: submit many requests, then wait once.
    pub fn batch(&self) -> Batch {
        Batch {
            handle: self.clone(),
            inbox: inbox(),
            sent: 0,
        }
    }

    /// Starts a pipeline (answers taken without blocking; see [`Pipeline`]).
    pub fn pipeline(&self) -> Pipeline {
        Pipeline {
            handle: self.clone(),
            inbox: Arc::new(Mailbox::new()),
        }
    }

    fn call(&self, shard: usize, op: Op) -> Answer {
        let mut b = self.batch();
        b.submit(shard, op)?;
        b.wait().pop().unwrap_or(Err(Error::Closed))
    }

    fn call_key(&self, key: &[u8], op: Op) -> Answer {
        self.call(shard_of(key, self.shards()), op)
    }

    /// The value under `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.get_meta(key)?.map(|(v, _)| v))
    }

    /// The value under `key` with its version and timestamp.
    pub fn get_meta(&self, key: &[u8]) -> Result<Option<(Vec<u8>, Meta)>, Error> {
        match self.call_key(key, Op::Get(key.to_vec()))? {
            Reply::Value(v) => Ok(v),
            _ => Err(Error::Closed),
        }
    }

    fn write(&self, key: &[u8], op: Op) -> Result<WriteResult, Error> {
        match self.call_key(key, op)? {
            Reply::Write(w) => Ok(w),
            _ => Err(Error::Closed),
        }
    }

    /// Stores a value (acknowledged once buffered).
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<WriteResult, Error> {
        self.put_opts(key, value, WriteOpts::default())
    }

    /// Stores a value with options (timestamp, durable acknowledgement).
    pub fn put_opts(
        &self,
        key: &[u8],
        value: &[u8],
        opts: WriteOpts,
    ) -> Result<WriteResult, Error> {
        self.write(key, Op::Put(key.to_vec(), value.to_vec(), opts))
    }

    /// Deletes a key.
    pub fn delete(&self, key: &[u8]) -> Result<WriteResult, Error> {
        self.delete_opts(key, WriteOpts::default())
    }

    /// Deletes a key with options.
    pub fn delete_opts(&self, key: &[u8], opts: WriteOpts) -> Result<WriteResult, Error> {
        self.write(key, Op::Delete(key.to_vec(), opts))
    }

    /// Compare-and-swap on the version (None: absent); `new` None deletes.
    pub fn cas(
        &self,
        key: &[u8],
        expected: Option<u64>,
        new: Option<&[u8]>,
    ) -> Result<WriteResult, Error> {
        self.write(
            key,
            Op::Cas(
                key.to_vec(),
                expected,
                new.map(<[u8]>::to_vec),
                WriteOpts::default(),
            ),
        )
    }

    /// Adds `delta` to the integer under `key`; returns the new value.
    pub fn incr(&self, key: &[u8], delta: i64) -> Result<i64, Error> {
        match self.call_key(key, Op::Incr(key.to_vec(), delta, WriteOpts::default()))? {
            Reply::Incr(n, _) => Ok(n),
            _ => Err(Error::Closed),
        }
    }

    /// Up to `limit` pairs with `start <= key < end`, in key order, merged across shards.
    pub fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<KvPairs, Error> {
        let mut b = self.batch();
        for s in 0..self.shards() {
            b.submit(s, Op::Scan(start.to_vec(), end.map(<[u8]>::to_vec), limit))?;
        }
        let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for a in b.wait() {
            match a? {
                Reply::Scan(v) => out.extend(v),
                _ => return Err(Error::Closed),
            }
        }
        // Each shard's stream is ordered; the stable sort merges the runs.
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.truncate(limit);
        Ok(out)
    }

    /// Persists everything written so far on every shard, and waits.
    pub fn sync(&self) -> Result<(), Error> {
        let mut b = self.batch();
        for s in 0..self.shards() {
            b.submit(s, Op::Sync)?;
        }
        for a in b.wait() {
            a?;
        }
        Ok(())
    }

    /// Statistics of every shard.
    pub fn stats(&self) -> Result<Vec<ShardStats>, Error> {
        let mut b = self.batch();
        for s in 0..self.shards() {
            b.submit(s, Op::Stats)?;
        }
        let mut out = Vec::new();
        for (i, a) in b.wait().into_iter().enumerate() {
            match a? {
                Reply::Stats(mut st) => {
                    st.queue_depth = self.inner.shards[i].depth.load(Ordering::Relaxed);
                    out.push(*st)
                }
                _ => return Err(Error::Closed),
            }
        }
        Ok(out)
    }

    /// Runs `f` on shard `shard`'s thread.
    pub fn run_on<R: Send + 'static>(
        &self,
        shard: usize,
        f: impl FnOnce(&mut dyn LocalCtx) -> R + Send + 'static,
    ) -> Result<R, Error> {
        let boxed: LocalFn = Box::new(move |ctx| Box::new(f(ctx)) as Box<dyn Any + Send>);
        match self.call(shard, Op::Run(boxed))? {
            Reply::Any(a) => a.downcast::<R>().map(|b| *b).map_err(|_| Error::Closed),
            _ => Err(Error::Closed),
        }
    }
}
