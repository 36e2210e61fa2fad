//! The loop of one shard thread: take requests, apply them, move I/O along, answer durable writes.

use super::*;
use std::time::Instant;

/// The loop of one shard thread: take requests, apply them, move I/O along, answer durable writes
/// once their cycle is published, sleep when idle.
pub(super) fn run_shard<D: BlockDevice>(
    mut shard: Shard<D>,
    inner: Arc<Inner>,
    id: usize,
    busy: bool,
) -> Result<ShardStats, Error> {
    const BATCH: usize = 64;
    let link = &inner.shards[id];
    let mut waiting: Vec<Waiter> = Vec::new();
    let mut idle = 0u32;
    let mut depth = 0u64;
    // Since when the shard has polled, making no progress, for I/O a durable writer waits on.
    let mut polling_since: Option<Instant> = None;
    loop {
        let mut n = 0;
        while n < BATCH {
            let Some(req) = link.queue.pop() else { break };
            n += 1;
            handle(&mut shard, req, &mut waiting);
        }
        // One barrier covers the durable-log records of every write taken above.
        shard.flush_durable_log();
        // The queue's depth for stats: it is empty when the loop above stopped short of a full batch,
        // so the queue's indices (the clients' lines) are read only after a full one; stored only when
        // it changed, since a store takes the line from readers.
        let now = if n == BATCH {
            link.queue.len() as u64
        } else {
            0
        };
        if now != depth {
            depth = now;
            link.depth.0.store(now, Ordering::Relaxed);
        }
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
                    Some(a) => waiting.swap_remove(i).dest.answer(a),
                    None => i += 1,
                }
            }
        }
        // Closing is not held up by background work that keeps finding something to do.
        let stopping = inner.stop.load(Ordering::SeqCst) && link.queue.is_empty();
        if (n > 0 || did) && !stopping {
            idle = 0;
            polling_since = None;
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
                    Err(e) if !logged => w.dest.answer(Err(e.clone())),
                    _ => w.dest.answer(Ok(())),
                }
            }
            return res;
        }
        idle += 1;
        if busy || idle < 64 {
            std::hint::spin_loop();
            continue;
        }
        // A writer waits for a cycle in flight: poll for its completion, giving the core to any other
        // runnable thread at each pass, rather than sleep (a sleep of 20 µs costs a timer and a wake-up,
        // and the completion waits for the next poll). Bounded: after DURABLE_POLL without progress the
        // shard goes back to sleeping between polls.
        if !waiting.is_empty() && shard.io_pending() {
            let since = *polling_since.get_or_insert_with(Instant::now);
            if since.elapsed() < DURABLE_POLL {
                std::thread::yield_now();
                continue;
            }
        } else {
            polling_since = None;
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

/// How long a shard polls without progress for the I/O a durable writer waits on before it sleeps
/// between polls again: a Flush of a fast device (about 140 µs on the host's virtio disk) completes
/// well within it, a stalled device costs a core for this long only.
const DURABLE_POLL: Duration = Duration::from_millis(1);

/// Whether a write's answer waits until the write is durable: a durable write does, unless it changed
/// nothing (a conflict kept the stored value, a delete found nothing, a compare-and-swap failed); a
/// durable increment always does (its answer is a new value). Mailbox requests and request slots both
/// follow this one rule.
pub(super) fn answer_waits(o: WriteOpts, w: &WriteResult, incr: bool) -> bool {
    o.durable && (w.applied || incr)
}

/// A durable write waiting to be answered: once its log record or its cycle is durable.
struct Waiter {
    gen: u64,
    lsn: u64,
    dest: Dest,
}

/// Where a waiting write's answer goes.
enum Dest {
    /// A mailbox request and the answer it gets once durable.
    Mail(MailReply, Reply),
    /// A request slot (its answer is in the slot already).
    Slot(CallRef),
}

impl Dest {
    fn answer(self, durable: Result<(), Error>) {
        match (self, durable) {
            (Dest::Mail(m, r), d) => m.post(d.map(|()| r)),
            (Dest::Slot(s), Ok(())) => s.answer(),
            (Dest::Slot(s), Err(e)) => s.fail(e),
        }
    }
}

fn handle<D: BlockDevice>(shard: &mut Shard<D>, req: Request, waiting: &mut Vec<Waiter>) {
    let (op, reply) = match req {
        Request::Mail { op, reply } => (op, reply),
        Request::Slot(mut r) => {
            match execute(shard, &mut r) {
                Some(w) => waiting.push(Waiter {
                    gen: w.gen,
                    lsn: w.lsn,
                    dest: Dest::Slot(r),
                }),
                None => r.answer(),
            }
            return;
        }
    };
    let wait = |w: &WriteResult, r: Reply, reply: MailReply| Waiter {
        gen: w.gen,
        lsn: w.lsn,
        dest: Dest::Mail(reply, r),
    };
    let write = |r: Result<WriteResult, Error>,
                 o: WriteOpts,
                 waiting: &mut Vec<Waiter>,
                 reply: MailReply| match r {
        Ok(w) if answer_waits(o, &w, false) => waiting.push(wait(&w, Reply::Write(w), reply)),
        Ok(w) => reply.post(Ok(Reply::Write(w))),
        Err(e) => reply.post(Err(e)),
    };
    match op {
        Op::Get(k) => reply.post(shard.get(&k).map(Reply::Value)),
        Op::Put(k, v, o) => write(shard.put(&k, &v, o), o, waiting, reply),
        Op::Delete(k, o) => write(shard.delete(&k, o), o, waiting, reply),
        Op::Cas(k, e, v, o) => write(shard.cas(&k, e, v.as_deref(), o), o, waiting, reply),
        Op::Incr(k, d, o) => match shard.incr(&k, d, o) {
            Ok((n, w)) if answer_waits(o, &w, true) => {
                waiting.push(wait(&w, Reply::Incr(n, w), reply))
            }
            Ok((n, w)) => reply.post(Ok(Reply::Incr(n, w))),
            Err(e) => reply.post(Err(e)),
        },
        Op::Scan(s, e, l) => reply.post(shard.scan(&s, e.as_deref(), l).map(Reply::Scan)),
        Op::Sync => reply.post(shard.sync().map(|_| Reply::Synced)),
        Op::Stats => {
            let mut st = shard.stats();
            st.durable_waiters = waiting.len() as u64;
            reply.post(Ok(Reply::Stats(Box::new(st))))
        }
        Op::Run(f) => {
            // A panicking closure fails its call, not the shard.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(shard)));
            let a = r
                .map(Reply::Any)
                .map_err(|_| Error::Config("closure panicked on the shard".into()));
            reply.post(a)
        }
    }
}
