//! The thread through which a node's async code reaches its nvkv database.
//!
//! nvkv answers a request in the mailbox of the thread that asked, and wakes that thread; tokio tasks
//! move between threads and must not block. So one plain thread per node owns the database's
//! [`AsyncRequests`]: tasks hand it jobs over a channel, it submits their requests in the order the jobs
//! came, and it calls each job's completion when the job's last answer is in. Requests reach the
//! (single) shard in submission order, so a job submitted after another sees its writes, and a durable
//! write is answered only once it and everything before it are durable.
//!
//! A job can also be a closure run on this thread with the database handle (a snapshot build or
//! install, which must see one state of the database): the thread runs nothing else meanwhile.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::{self, JoinHandle, Thread};
use std::time::Duration;

use nvkv::api::{AsyncRequests, Op, Reply};
use nvkv::{DbHandle, Error};

/// Answers to a job's requests, in the order they were given.
pub(crate) type Answers = Vec<Result<Reply, Error>>;

type Done = Box<dyn FnOnce(Answers) + Send>;
type Work = Box<dyn FnOnce(&DbHandle) + Send>;

enum Job {
    Ops(Vec<Op>, Done),
    Run(Work),
    /// Take no more jobs; end once every pending one is answered.
    Stop,
}

struct Pending {
    answers: Vec<Option<Result<Reply, Error>>>,
    missing: usize,
    done: Done,
}

/// A handle on the node's database thread; clone it freely.
#[derive(Clone)]
pub(crate) struct DbThread {
    inner: Arc<Link>,
}

struct Link {
    tx: mpsc::Sender<Job>,
    thread: Thread,
    handle: DbHandle,
    join: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// The first failure of a job nobody waited for ([`DbThread::submit_detached`]): every job after
    /// it is refused with it.
    detached_failure: Arc<std::sync::Mutex<Option<Error>>>,
}

impl std::fmt::Debug for DbThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DbThread")
    }
}

impl DbThread {
    /// Starts the thread for `handle`.
    pub(crate) fn start(handle: DbHandle) -> std::io::Result<DbThread> {
        let (tx, rx) = mpsc::channel::<Job>();
        let h = handle.clone();
        let join = thread::Builder::new()
            .name("nvkv-raft-db".into())
            .spawn(move || run(h, rx))?;
        let thread = join.thread().clone();
        Ok(DbThread {
            inner: Arc::new(Link {
                tx,
                thread,
                handle,
                join: std::sync::Mutex::new(Some(join)),
                detached_failure: Arc::default(),
            }),
        })
    }

    /// The database handle (for calls that may block the caller, such as from the thread itself).
    pub(crate) fn handle(&self) -> &DbHandle {
        &self.inner.handle
    }

    fn detached_failure(&self) -> Option<Error> {
        self.inner
            .detached_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn send(&self, job: Job) -> Result<(), Error> {
        if let Some(e) = self.detached_failure() {
            return Err(e);
        }
        self.inner.tx.send(job).map_err(|_| Error::Closed)?;
        self.inner.thread.unpark();
        Ok(())
    }

    /// Submits `ops` in order; `done` gets their answers once all are in (on the database thread: it
    /// must not block).
    pub(crate) fn submit(
        &self,
        ops: Vec<Op>,
        done: impl FnOnce(Answers) + Send + 'static,
    ) -> Result<(), Error> {
        self.send(Job::Ops(ops, Box::new(done)))
    }

    /// Submits `ops` without waiting for their answers: for writes whose effect later jobs see (they
    /// reach the shard in order) and whose failure need not reach this caller but must stop the node:
    /// the first failing answer is kept and refuses every later job, so no caller goes on past it.
    pub(crate) fn submit_detached(&self, what: &'static str, ops: Vec<Op>) -> Result<(), Error> {
        let slot = self.inner.detached_failure.clone();
        self.submit(ops, move |answers| {
            if let Some(Err(e)) = answers.into_iter().find(|a| a.is_err()) {
                let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
                if s.is_none() {
                    eprintln!("nvkv-raft: {what} failed, refusing every later database job: {e}");
                    *s = Some(e);
                }
            }
        })
    }

    /// Fails with the first failure of a detached job, if one failed.
    pub(crate) fn check_detached(&self) -> Result<(), Error> {
        self.detached_failure().map_or(Ok(()), Err)
    }

    /// Submits `ops` and waits for their answers.
    pub(crate) async fn exec(&self, ops: Vec<Op>) -> Result<Answers, Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(ops, move |a| {
            // The caller may have given up (its task was cancelled): nobody to tell.
            let _ = tx.send(a);
        })?;
        rx.await.map_err(|_| Error::Closed)
    }

    /// Runs `f` on the database thread with the handle, nothing else running meanwhile, and waits.
    pub(crate) async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&DbHandle) -> R + Send + 'static,
    ) -> Result<R, Error> {
        let rx = self.run_later(f)?;
        rx.await.map_err(|_| Error::Closed)
    }

    /// Queues `f` behind every job submitted so far; the receiver gets its result.
    pub(crate) fn run_later<R: Send + 'static>(
        &self,
        f: impl FnOnce(&DbHandle) -> R + Send + 'static,
    ) -> Result<tokio::sync::oneshot::Receiver<R>, Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Job::Run(Box::new(move |h| {
            // As in exec: a receiver that went away needs no answer.
            let _ = tx.send(f(h));
        })))?;
        Ok(rx)
    }

    /// Stops the thread once every job queued so far is answered.
    pub(crate) fn stop(&self) {
        let join = match self.inner.join.lock() {
            Ok(mut j) => j.take(),
            Err(p) => p.into_inner().take(),
        };
        if let Some(j) = join {
            if self.send(Job::Stop).is_ok() {
                // The thread only returns; a panic there was already reported on stderr.
                let _ = j.join();
            }
        }
    }
}

/// How long a stopping thread waits for pending answers.
const STOP_GRACE: Duration = Duration::from_secs(10);

fn run(handle: DbHandle, rx: mpsc::Receiver<Job>) {
    let reqs: AsyncRequests = handle.async_requests();
    let mut pending: HashMap<u64, Pending> = HashMap::new();
    // Request ids: job number in the high bits, position in the low 20.
    let mut next_job: u64 = 1;
    let mut open = true;
    let mut stopping: Option<std::time::Instant> = None;
    loop {
        let mut busy = false;
        while open {
            match rx.try_recv() {
                Ok(Job::Ops(ops, done)) => {
                    busy = true;
                    let job = next_job;
                    next_job += 1;
                    let n = ops.len();
                    assert!(n < 1 << 20, "a job holds fewer than 2^20 requests");
                    let mut p = Pending {
                        answers: (0..n).map(|_| None).collect(),
                        missing: n,
                        done,
                    };
                    for (i, op) in ops.into_iter().enumerate() {
                        if let Err(e) = reqs.submit(0, op, job << 20 | i as u64) {
                            p.answers[i] = Some(Err(e));
                            p.missing -= 1;
                        }
                    }
                    if p.missing == 0 {
                        finish(p);
                    } else {
                        pending.insert(job, p);
                    }
                }
                Ok(Job::Run(f)) => {
                    busy = true;
                    f(&handle);
                }
                Ok(Job::Stop) | Err(mpsc::TryRecvError::Disconnected) => open = false,
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
        while let Some((id, answer)) = reqs.try_next() {
            busy = true;
            let job = id >> 20;
            let i = (id & ((1 << 20) - 1)) as usize;
            if let Some(p) = pending.get_mut(&job) {
                if let Some(slot) = p.answers.get_mut(i) {
                    if slot.is_none() {
                        p.missing -= 1;
                    }
                    *slot = Some(answer);
                }
                if p.missing == 0 {
                    if let Some(p) = pending.remove(&job) {
                        finish(p);
                    }
                }
            }
        }
        if !open && pending.is_empty() {
            return;
        }
        if !open {
            let since = *stopping.get_or_insert_with(std::time::Instant::now);
            if handle.is_closed() || since.elapsed() > STOP_GRACE {
                // The database closed under pending requests, or they are not answered in time: fail
                // them rather than wait without end.
                for (_, p) in pending.drain() {
                    finish(p);
                }
                return;
            }
        }
        if !busy {
            // Answers and new jobs both unpark this thread; the timeout only bounds a missed wake-up.
            thread::park_timeout(Duration::from_millis(5));
        }
    }
}

fn finish(p: Pending) {
    let answers = p
        .answers
        .into_iter()
        .map(|a| a.unwrap_or(Err(Error::Closed)))
        .collect();
    (p.done)(answers);
}
