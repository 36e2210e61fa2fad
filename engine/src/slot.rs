//! Request slots: one request and its answer in memory the client owns and reuses, handed to a shard
//! and back by one atomic state word, so a steady stream of calls allocates nothing and moves no
//! reference count.
//!
//! The client owns a [`Slot`] ([`OwnedSlot`]); [`OwnedSlot::post`] gives the shard a [`SlotRef`] and
//! the body with it. While the state says posted, only the shard touches the body; once it says
//! answered, only the client does. States:
//!
//! - `IDLE` / `ANSWERED`: the client's (it writes the request, reads the answer);
//! - `POSTED`: the shard's; the client polls;
//! - `PARKING`: the shard's; the client has gone to sleep and wrote its thread into `owner` first.
//!
//! The shard answers with a compare-and-swap `POSTED → ANSWERED`: when it succeeds the client was
//! polling and the shard never touches the slot again (the client may reuse or free it at once). When it
//! fails the state is `PARKING`: the client cannot leave before `ANSWERED`, so the shard reads `owner`,
//! stores `ANSWERED`, and wakes that thread. A [`SlotRef`] dropped unanswered (a shard that unwinds, a
//! queue drained at close) answers through [`Abandon`], so every posted request gets exactly one answer
//! and no client waits for a shard that is gone.
//!
//! Generic over the threading [`Runtime`] like [`crate::mailbox`]: the shuttle tests below check this
//! very code.

use std::cell::UnsafeCell;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use crate::mailbox::{Runtime, Std};

const IDLE: u32 = 0;
const POSTED: u32 = 1;
const PARKING: u32 = 2;
const ANSWERED: u32 = 3;

/// How a client waits for its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Poll until answered: the lowest latency, a busy core.
    Spin,
    /// Poll for this long, then sleep until woken (the shard pays a wake-up only for a sleeper).
    SpinThenPark(Duration),
    /// Sleep at once.
    Park,
}

impl Default for Wait {
    /// 200 µs of polling: an answer a device read away (tens of µs; more under emulation) comes back
    /// while the client polls, and parking with its futex wake-up costs more than that wait.
    fn default() -> Self {
        Wait::SpinThenPark(Duration::from_micros(200))
    }
}

/// What an answer looks like when its shard could not give one.
pub trait Abandon {
    /// Records "no answer: the shard is gone" in the body.
    fn abandon(&mut self);
}

/// One request's memory: the state word, the client's thread for wake-ups, the body.
#[repr(C)]
struct Slot<T, R: Runtime = Std> {
    state: R::Word,
    /// Written by the client only before it moves the state to `PARKING`; read by the shard only after
    /// it saw `PARKING`.
    owner: UnsafeCell<Option<R::Handle>>,
    body: UnsafeCell<T>,
}

/// The client's side of a slot: the only way to reach the body outside the shard.
pub struct OwnedSlot<T: Abandon + Send + 'static, R: Runtime = Std> {
    slot: NonNull<Slot<T, R>>,
}

// SAFETY: the slot is reached from two threads only through the state protocol above: the body and
// `owner` are each accessed by one side at a time, ordered by the SeqCst state word. `T: Send` because
// the shard thread writes it; the handle type is Send + Sync by the Runtime's bounds.
unsafe impl<T: Abandon + Send + 'static, R: Runtime> Send for OwnedSlot<T, R> {}

/// The shard's side of a posted slot. Answering consumes it; dropping it answers through [`Abandon`].
pub struct SlotRef<T: Abandon + Send + 'static, R: Runtime = Std> {
    slot: NonNull<Slot<T, R>>,
}

// SAFETY: as for `OwnedSlot`: while a `SlotRef` exists the state is POSTED or PARKING and only its holder
// touches the body.
unsafe impl<T: Abandon + Send + 'static, R: Runtime> Send for SlotRef<T, R> {}

impl<T: Abandon + Send + 'static, R: Runtime> OwnedSlot<T, R> {
    /// A new idle slot holding `body`.
    pub fn new(body: T) -> Self {
        let b = Box::new(Slot {
            state: R::Word::default(),
            owner: UnsafeCell::new(None),
            body: UnsafeCell::new(body),
        });
        OwnedSlot {
            slot: NonNull::from(Box::leak(b)),
        }
    }

    fn state(&self) -> u32 {
        // SAFETY: the slot is alive while its `OwnedSlot` is (freed only in `drop`, never while posted).
        R::load(unsafe { &self.slot.as_ref().state })
    }

    /// Whether the slot is in the client's hands (never posted, or answered).
    pub fn is_ready(&self) -> bool {
        matches!(self.state(), IDLE | ANSWERED)
    }

    /// The body, to write a request or read an answer. Panics if the slot is posted (a bug of the
    /// caller in this crate: the state is checked, in release builds too, because the alternative is a
    /// data race).
    pub fn body(&mut self) -> &mut T {
        let s = self.state();
        assert!(matches!(s, IDLE | ANSWERED), "slot body taken in state {s}");
        // SAFETY: in IDLE or ANSWERED no `SlotRef` exists (it is created by `post` and consumed by the
        // answer that stores ANSWERED), so this `&mut self` is the only access.
        unsafe { &mut *self.slot.as_ref().body.get() }
    }

    /// Hands the slot to a shard: from here until [`OwnedSlot::wait`] returns, the body is the shard's.
    pub fn post(&mut self) -> SlotRef<T, R> {
        let s = self.state();
        assert!(matches!(s, IDLE | ANSWERED), "slot posted in state {s}");
        // SAFETY: alive (see `state`).
        R::store(unsafe { &self.slot.as_ref().state }, POSTED);
        SlotRef { slot: self.slot }
    }

    /// Waits until the shard answered.
    pub fn wait(&mut self, how: Wait) {
        let spin_for = match how {
            Wait::Spin => None,
            Wait::SpinThenPark(d) => Some(d),
            Wait::Park => Some(Duration::ZERO),
        };
        let mut spins = 0u32;
        let mut until: Option<Instant> = None;
        loop {
            if self.state() == ANSWERED {
                return;
            }
            let Some(limit) = spin_for else {
                std::hint::spin_loop();
                continue;
            };
            if limit.is_zero() || R::SPIN_TIME.is_zero() {
                break;
            }
            // The clock is read once per 64 polls.
            spins = spins.wrapping_add(1);
            if spins % 64 != 0 {
                std::hint::spin_loop();
                continue;
            }
            let now = Instant::now();
            if now >= *until.get_or_insert(now + limit) {
                break;
            }
        }
        // SAFETY: alive; `owner` is the client's until it moves the state to PARKING below, and the shard
        // reads it only after seeing PARKING.
        let slot = unsafe { self.slot.as_ref() };
        // SAFETY: as above; no other access to `owner` can be in progress.
        unsafe { *slot.owner.get() = Some(R::current()) };
        if R::cas(&slot.state, POSTED, PARKING).is_err() {
            // Answered meanwhile (the only other state a posted slot can reach).
            return;
        }
        while R::load(&slot.state) != ANSWERED {
            R::park(None);
        }
    }

    /// Posts and waits.
    pub fn call(&mut self, how: Wait, send: impl FnOnce(SlotRef<T, R>)) {
        let r = self.post();
        send(r);
        self.wait(how);
    }
}

impl<T: Abandon + Send + 'static, R: Runtime> Drop for OwnedSlot<T, R> {
    fn drop(&mut self) {
        if self.is_ready() {
            // SAFETY: the slot came from `Box::leak` in `new`, and no `SlotRef` exists (ready state).
            drop(unsafe { Box::from_raw(self.slot.as_ptr()) });
        }
        // Still posted (a client unwinding mid-call): the shard will write into it, so it is leaked
        // rather than freed.
    }
}

impl<T: Abandon + Send + 'static, R: Runtime> std::fmt::Debug for OwnedSlot<T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OwnedSlot(state {})", self.state())
    }
}

impl<T: Abandon + Send + 'static, R: Runtime> SlotRef<T, R> {
    /// The request, to read it and to write the answer.
    pub fn body(&mut self) -> &mut T {
        // SAFETY: a `SlotRef` exists only while the state is POSTED or PARKING, when the client does not
        // touch the body (and may not free the slot); `&mut self` makes this the only access.
        unsafe { &mut *self.slot.as_ref().body.get() }
    }

    /// Hands the answer (written into the body) back to the client.
    pub fn answer(self) {
        let slot = self.slot;
        std::mem::forget(self);
        // SAFETY: posted, so alive until the state below says ANSWERED.
        let s = unsafe { slot.as_ref() };
        match R::cas(&s.state, POSTED, ANSWERED) {
            // The client polls: from here on the slot is its own (it may be freed at once).
            Ok(_) => {}
            Err(PARKING) => {
                // SAFETY: the client wrote `owner` before PARKING and cannot leave before ANSWERED.
                let owner = unsafe { (*s.owner.get()).clone() };
                R::store(&s.state, ANSWERED);
                if let Some(h) = owner {
                    R::unpark(&h);
                }
            }
            Err(other) => panic!("answer to a slot in state {other}"),
        }
    }
}

impl<T: Abandon + Send + 'static, R: Runtime> Drop for SlotRef<T, R> {
    fn drop(&mut self) {
        self.body().abandon();
        let r = SlotRef::<T, R> { slot: self.slot };
        r.answer();
    }
}

impl<T: Abandon + Send + 'static, R: Runtime> std::fmt::Debug for SlotRef<T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SlotRef")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::{BellServer, Shuttle};
    use std::sync::Arc;

    #[derive(Debug, Default)]
    struct Echo {
        req: u64,
        ans: Option<u64>,
    }

    impl Abandon for Echo {
        fn abandon(&mut self) {
            self.ans = Some(u64::MAX);
        }
    }

    type Queue = <Shuttle as Runtime>::Queue<SlotRef<Echo, Shuttle>>;

    /// Clients post slots to a server thread through a queue and its doorbell (the shard's
    /// [`ShardBell`], as in production); the server answers `req * 10`, or drops every `drop_every`-th
    /// request (answered by `Abandon`). A lost wake-up leaves a thread parked forever (shuttle reports
    /// the deadlock); a wrong or missing answer fails the asserts; a body touched by both sides at once
    /// would trip the state asserts.
    fn scenario(clients: usize, reqs: u64, how: Wait, drop_every: u64) {
        let q: Arc<Queue> = Arc::default();
        let mut n = 0u64;
        let server = BellServer::spawn(q.clone(), move |mut r: SlotRef<Echo, Shuttle>| {
            n += 1;
            if drop_every != 0 && n % drop_every == 0 {
                drop(r);
                return;
            }
            let b = r.body();
            b.ans = Some(b.req * 10);
            r.answer();
        });
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let (q, bell) = (q.clone(), server.bell.clone());
                shuttle::thread::spawn(move || {
                    let mut s = OwnedSlot::<Echo, Shuttle>::new(Echo::default());
                    for i in 0..reqs {
                        let req = c as u64 * 100 + i + 1;
                        *s.body() = Echo { req, ans: None };
                        s.call(how, |r| {
                            Shuttle::push(&q, r);
                            bell.ring();
                        });
                        let a = s.body().ans.expect("answered");
                        assert!(a == req * 10 || a == u64::MAX, "answer {a} to {req}");
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap_or_else(|_| panic!("client panicked"));
        }
        server.stop();
    }

    #[test]
    fn park_and_answer_dfs_bounded() {
        shuttle::check_dfs(|| scenario(1, 2, Wait::Park, 0), Some(3000));
    }

    #[test]
    fn park_and_answer_random_with_abandoned_requests() {
        shuttle::check_random(|| scenario(2, 3, Wait::Park, 2), 3000);
    }

    #[test]
    fn spin_then_park_pct() {
        shuttle::check_pct(
            || scenario(2, 2, Wait::SpinThenPark(Duration::from_micros(1)), 3),
            3000,
            3,
        );
    }

    #[test]
    fn std_threads_spin_and_park() {
        for how in [Wait::Spin, Wait::Park, Wait::default()] {
            let (tx, rx) = std::sync::mpsc::channel::<SlotRef<Echo>>();
            let server = std::thread::spawn(move || {
                for mut r in rx {
                    let b = r.body();
                    b.ans = Some(b.req + 1);
                    r.answer();
                }
            });
            let mut s = OwnedSlot::<Echo>::new(Echo::default());
            for i in 0..2000 {
                s.body().req = i;
                s.call(how, |r| tx.send(r).expect("server alive"));
                assert_eq!(s.body().ans, Some(i + 1));
            }
            drop(tx);
            server.join().expect("server");
        }
    }

    #[test]
    fn a_dropped_ref_answers_abandoned() {
        let mut s = OwnedSlot::<Echo>::new(Echo::default());
        let r = s.post();
        assert!(!s.is_ready());
        drop(r);
        s.wait(Wait::Spin);
        assert_eq!(s.body().ans, Some(u64::MAX));
    }
}
