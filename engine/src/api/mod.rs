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
use crate::mailbox::{Mailbox, ShardBell};
use crate::recovery::{RecoveryReport, SliceState};
use crate::shard::{
    Conflict, KvPairs, Meta, Shard, ShardConfig, ShardStats, WriteOpts, WriteResult,
};

mod client;
mod handle;
mod local;
mod options;
mod protocol;
mod requests;
mod shard_loop;

pub use crate::slot::Wait;
use client::{execute, CallRef, Kind};
pub use client::{Answer, Client, Done};
pub use local::LocalCtx;
pub use options::{Backend, Options};
use protocol::OpAnswer;
use protocol::{inbox, Inbox, LocalFn, MailReply, Request};
pub use protocol::{Op, Reply};
pub use requests::{AsyncRequests, Batch};
use shard_loop::run_shard;

struct ShardLink {
    queue: ArrayQueue<Request>,
    bell: Arc<ShardBell>,
    /// Written by the shard; on a line of its own, so that writing it does not take the line that
    /// clients read on every request (the queue's buffer pointer, `dead`) away from them.
    depth: OwnLine<AtomicU64>,
    /// The shard thread stopped (closed, or died of a bug): requests are refused instead of waiting
    /// forever.
    dead: AtomicBool,
}

/// A value alone on its cache line (128 bytes: adjacent-line prefetch pairs lines on x86).
#[repr(align(128))]
struct OwnLine<T>(T);

impl ShardLink {
    /// Answers "closed" to every request left in the queue.
    fn refuse_queued(&self) {
        while let Some(r) = self.queue.pop() {
            r.refuse();
        }
    }
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

/// What a shard thread reports while the database opens.
enum Opening {
    /// Step 1 done: what the slice holds (nothing written yet).
    Probed(SliceState),
    /// Step 2 done: the shard runs.
    Opened(Arc<ShardBell>, RecoveryReport),
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
                    // Best effort too: refused, the shard's short sleeps only last longer.
                    let _ = crate::timer_slack::set_fine_for_current_thread();
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
                    let bell = Arc::new(ShardBell::new());
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
                    // Whatever raced in after the loop's last look (or was queued when it died) is
                    // answered, and later pushes see `dead` (see `DbHandle::push`).
                    let link = &inner.shards[id];
                    link.dead.store(true, Ordering::SeqCst);
                    link.refuse_queued();
                    match outcome {
                        Ok(r) => r,
                        Err(_) => Err(Error::Config(format!("shard {id} thread panicked"))),
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
                depth: OwnLine(AtomicU64::new(0)),
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
