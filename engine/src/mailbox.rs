//! The two cross-thread wake-up paths the engine writes itself (the queues are crossbeam's; the request
//! slots of [`crate::slot`] are the third, on the same [`Runtime`]):
//!
//! - [`Mailbox`]: where a shard posts answers for one client thread. Post = push, then unpark the
//!   owner; receive = pop, else park. Thread park tokens make a post between the client's failed pop
//!   and its park wake it anyway, so no answer is slept through.
//! - [`ShardBell`]: how a client wakes an idle shard. The shard raises `sleeping`, re-checks its queue,
//!   then parks; a client pushes, then unparks the shard if `sleeping` is up. Both sides use SeqCst, so
//!   either the shard's re-check sees the request or the client sees the flag.
//!
//! Both are generic over the threading runtime, so the shuttle unit tests below model-check
//! exactly this code.

#[cfg(test)]
use std::collections::VecDeque;
use std::time::Duration;

/// The thread primitives the protocols need.
pub trait Runtime: 'static {
    /// A handle to wake a thread.
    type Handle: Clone + Send + Sync + 'static;
    /// A boolean flag shared across threads.
    type Flag: Send + Sync + Default + 'static;
    /// A queue shared across threads.
    type Queue<T: Send + 'static>: Send + Sync + Default + 'static;
    /// A 32-bit word shared across threads (a request slot's state).
    type Word: Send + Sync + Default + 'static;
    /// How long a receiver polls an empty mailbox before parking (zero: park at once).
    const SPIN_TIME: Duration;
    /// The current thread's handle.
    fn current() -> Self::Handle;
    /// Parks the current thread (None: until unparked).
    fn park(timeout: Option<Duration>);
    /// Wakes a thread (or makes its next park return at once).
    fn unpark(h: &Self::Handle);
    /// Sets a flag (SeqCst).
    fn set(f: &Self::Flag, v: bool);
    /// Reads a flag (SeqCst).
    fn get(f: &Self::Flag) -> bool;
    /// Reads a word (SeqCst).
    fn load(w: &Self::Word) -> u32;
    /// Writes a word (SeqCst).
    fn store(w: &Self::Word, v: u32);
    /// Compare-and-swap on a word (SeqCst): Ok(old) when it held `cur`, else Err(what it held).
    fn cas(w: &Self::Word, cur: u32, new: u32) -> Result<u32, u32>;
    /// Pushes onto a queue.
    fn push<T: Send + 'static>(q: &Self::Queue<T>, v: T);
    /// Pops from a queue.
    fn pop<T: Send + 'static>(q: &Self::Queue<T>) -> Option<T>;
}

/// The real runtime: std threads, atomics and crossbeam's lock-free queue.
#[derive(Debug)]
pub struct Std;

impl Runtime for Std {
    type Handle = std::thread::Thread;
    type Flag = std::sync::atomic::AtomicBool;
    type Queue<T: Send + 'static> = crossbeam_queue::SegQueue<T>;
    type Word = std::sync::atomic::AtomicU32;
    // An answer that is a device read away (tens of µs; more under emulation) comes back while the
    // client polls: parking and the futex wake-up cost more than the wait itself (measured in the TCG
    // guest: a handle round trip of ~100 µs when parking on every request).
    const SPIN_TIME: Duration = Duration::from_micros(200);
    fn current() -> Self::Handle {
        std::thread::current()
    }
    fn park(timeout: Option<Duration>) {
        match timeout {
            Some(t) => std::thread::park_timeout(t),
            None => std::thread::park(),
        }
    }
    fn unpark(h: &Self::Handle) {
        h.unpark()
    }
    fn set(f: &Self::Flag, v: bool) {
        f.store(v, std::sync::atomic::Ordering::SeqCst)
    }
    fn get(f: &Self::Flag) -> bool {
        f.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn load(w: &Self::Word) -> u32 {
        w.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn store(w: &Self::Word, v: u32) {
        w.store(v, std::sync::atomic::Ordering::SeqCst)
    }
    fn cas(w: &Self::Word, cur: u32, new: u32) -> Result<u32, u32> {
        use std::sync::atomic::Ordering::SeqCst;
        w.compare_exchange(cur, new, SeqCst, SeqCst)
    }
    fn push<T: Send + 'static>(q: &Self::Queue<T>, v: T) {
        q.push(v)
    }
    fn pop<T: Send + 'static>(q: &Self::Queue<T>) -> Option<T> {
        q.pop()
    }
}

/// Answers for one client thread.
pub struct Mailbox<T: Send + 'static, R: Runtime = Std> {
    q: R::Queue<(u64, T)>,
    owner: R::Handle,
}

impl<T: Send + 'static, R: Runtime> std::fmt::Debug for Mailbox<T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mailbox")
    }
}

impl<T: Send + 'static, R: Runtime> Mailbox<T, R> {
    /// A mailbox owned by the calling thread (only it may receive).
    pub fn new() -> Self {
        Mailbox {
            q: <R::Queue<(u64, T)>>::default(),
            owner: R::current(),
        }
    }

    /// Posts answer `v` to request `id` and wakes the owner.
    pub fn post(&self, id: u64, v: T) {
        R::push(&self.q, (id, v));
        R::unpark(&self.owner);
    }

    /// Takes an answer if one is there.
    pub fn try_recv(&self) -> Option<(u64, T)> {
        R::pop(&self.q)
    }

    /// Waits for the next answer. Only the owner thread may call this.
    pub fn recv(&self) -> (u64, T) {
        let mut spin_until: Option<std::time::Instant> = None;
        let mut spins = 0u32;
        loop {
            if let Some(x) = R::pop(&self.q) {
                return x;
            }
            // Poll for a while before parking (the clock is read once per 64 polls).
            if !R::SPIN_TIME.is_zero() {
                spins = spins.wrapping_add(1);
                if spins % 64 != 0 {
                    std::hint::spin_loop();
                    continue;
                }
                let now = std::time::Instant::now();
                if now < *spin_until.get_or_insert(now + R::SPIN_TIME) {
                    continue;
                }
            }
            R::park(None);
        }
    }
}

impl<T: Send + 'static, R: Runtime> Default for Mailbox<T, R> {
    fn default() -> Self {
        Self::new()
    }
}

/// Wakes an idle shard thread.
pub struct ShardBell<R: Runtime = Std> {
    sleeping: R::Flag,
    shard: R::Handle,
}

impl<R: Runtime> std::fmt::Debug for ShardBell<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShardBell")
    }
}

impl<R: Runtime> ShardBell<R> {
    /// A doorbell for the calling (shard) thread.
    pub fn new() -> Self {
        Self::for_thread(R::current())
    }

    /// A doorbell for the thread `h`.
    pub fn for_thread(h: R::Handle) -> Self {
        ShardBell {
            sleeping: R::Flag::default(),
            shard: h,
        }
    }

    /// Client side, after queueing a request: wake the shard if it sleeps.
    pub fn ring(&self) {
        if R::get(&self.sleeping) {
            R::unpark(&self.shard);
        }
    }

    /// Shard side: sleep until rung (or the timeout), unless `has_work` says there is work.
    pub fn sleep(&self, has_work: impl Fn() -> bool, timeout: Option<Duration>) {
        R::set(&self.sleeping, true);
        if !has_work() {
            R::park(timeout);
        }
        R::set(&self.sleeping, false);
    }
}

impl<R: Runtime> Default for ShardBell<R> {
    fn default() -> Self {
        Self::new()
    }
}

/// A thread's park token under shuttle, without the spurious wake-ups shuttle's own `park` may take
/// whenever another thread can run: those would wake a thread whose wake-up was lost and hide the very
/// bug the tests look for. `park` here returns only after an `unpark` (the token semantics of std's,
/// minus its allowed spurious returns, which the protocols' loops tolerate anyway).
#[cfg(test)]
#[derive(Debug, Default)]
pub struct ShuttleToken {
    available: shuttle::sync::Mutex<bool>,
    cv: shuttle::sync::Condvar,
}

#[cfg(test)]
shuttle::thread_local! {
    static TOKEN: std::cell::RefCell<Option<std::sync::Arc<ShuttleToken>>> =
        const { std::cell::RefCell::new(None) };
}

#[cfg(test)]
impl Shuttle {
    /// Spawns a shuttle thread and returns its wake-up handle with it (what `JoinHandle::thread` is for
    /// std threads).
    pub fn spawn<F: FnOnce() + Send + 'static>(
        f: F,
    ) -> (
        shuttle::thread::JoinHandle<()>,
        std::sync::Arc<ShuttleToken>,
    ) {
        let token: std::sync::Arc<ShuttleToken> = std::sync::Arc::default();
        let t = token.clone();
        let h = shuttle::thread::spawn(move || {
            TOKEN.with(|slot| *slot.borrow_mut() = Some(t));
            f()
        });
        (h, token)
    }
}

/// A server thread under shuttle, shaped like a shard's loop: it serves what it pops from `queue` and,
/// when the queue is empty, sleeps on a [`ShardBell`] that clients ring after pushing. The protocol
/// tests of the mailbox and of the request slots share it, so both check the same wake-up path.
#[cfg(test)]
#[derive(Debug)]
pub struct BellServer {
    /// What clients ring after pushing onto the queue.
    pub bell: std::sync::Arc<ShardBell<Shuttle>>,
    stop: std::sync::Arc<<Shuttle as Runtime>::Flag>,
    join: shuttle::thread::JoinHandle<()>,
}

#[cfg(test)]
impl BellServer {
    /// Starts the server on `queue`; `serve` handles each item.
    pub fn spawn<T: Send + 'static>(
        queue: std::sync::Arc<<Shuttle as Runtime>::Queue<T>>,
        mut serve: impl FnMut(T) + Send + 'static,
    ) -> Self {
        use std::sync::Arc;
        let stop: Arc<<Shuttle as Runtime>::Flag> = Arc::default();
        // The bell names the server's token, which exists only once the thread does.
        let bell_slot: Arc<shuttle::sync::Mutex<Option<Arc<ShardBell<Shuttle>>>>> = Arc::default();
        let (join, token) = {
            let (q, stop, bell_slot) = (queue.clone(), stop.clone(), bell_slot.clone());
            Shuttle::spawn(move || loop {
                if let Some(item) = Shuttle::pop(&q) {
                    serve(item);
                    continue;
                }
                if Shuttle::get(&stop) {
                    return;
                }
                let bell = bell_slot.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if let Some(bell) = bell {
                    let (q, st) = (q.clone(), stop.clone());
                    bell.sleep(
                        move || {
                            !q.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
                                || Shuttle::get(&st)
                        },
                        None,
                    );
                }
            })
        };
        let bell = Arc::new(ShardBell::<Shuttle>::for_thread(token));
        *bell_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(bell.clone());
        BellServer { bell, stop, join }
    }

    /// Stops the server once its queue is empty and joins it.
    pub fn stop(self) {
        Shuttle::set(&self.stop, true);
        self.bell.ring();
        self.join
            .join()
            .unwrap_or_else(|_| panic!("server panicked"));
    }
}

/// The shuttle runtime: every step of the protocols above is a scheduling point shuttle explores.
#[cfg(test)]
#[derive(Debug)]
pub struct Shuttle;

#[cfg(test)]
impl Runtime for Shuttle {
    type Handle = std::sync::Arc<ShuttleToken>;
    type Flag = shuttle::sync::atomic::AtomicBool;
    type Queue<T: Send + 'static> = shuttle::sync::Mutex<VecDeque<T>>;
    type Word = shuttle::sync::atomic::AtomicU32;
    // No spinning: shuttle explores the interleavings instead, and spins make its schedules unbounded.
    const SPIN_TIME: Duration = Duration::ZERO;
    fn current() -> Self::Handle {
        TOKEN.with(|slot| {
            slot.borrow_mut()
                .get_or_insert_with(Default::default)
                .clone()
        })
    }
    /// Shuttle does not model time: a timeout never fires (a thread that relies on one to make progress
    /// shows up as a deadlock).
    fn park(_timeout: Option<Duration>) {
        let t = Self::current();
        let mut available = t.available.lock().unwrap_or_else(|e| e.into_inner());
        while !*available {
            available = t.cv.wait(available).unwrap_or_else(|e| e.into_inner());
        }
        *available = false;
    }
    fn unpark(h: &Self::Handle) {
        *h.available.lock().unwrap_or_else(|e| e.into_inner()) = true;
        h.cv.notify_one();
    }
    fn set(f: &Self::Flag, v: bool) {
        f.store(v, std::sync::atomic::Ordering::SeqCst)
    }
    fn get(f: &Self::Flag) -> bool {
        f.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn load(w: &Self::Word) -> u32 {
        w.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn store(w: &Self::Word, v: u32) {
        w.store(v, std::sync::atomic::Ordering::SeqCst)
    }
    fn cas(w: &Self::Word, cur: u32, new: u32) -> Result<u32, u32> {
        use std::sync::atomic::Ordering::SeqCst;
        w.compare_exchange(cur, new, SeqCst, SeqCst)
    }
    fn push<T: Send + 'static>(q: &Self::Queue<T>, v: T) {
        q.lock().unwrap_or_else(|e| e.into_inner()).push_back(v)
    }
    fn pop<T: Send + 'static>(q: &Self::Queue<T>) -> Option<T> {
        q.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
    }
}

#[cfg(test)]
mod shuttle_tests {
    use super::*;
    use std::sync::Arc;

    /// A client sends requests to a server thread through a queue + doorbell and waits for every answer
    /// in its mailbox. A lost wake-up on either path leaves a thread parked forever, which shuttle
    /// reports as a deadlock; a lost or duplicated answer fails the asserts.
    type Requests = <Shuttle as Runtime>::Queue<(u64, Arc<Mailbox<u64, Shuttle>>)>;

    fn scenario(clients: usize, reqs: u64) {
        let requests: Arc<Requests> = Arc::default();
        let server = BellServer::spawn(
            requests.clone(),
            |(id, mb): (u64, Arc<Mailbox<u64, Shuttle>>)| mb.post(id, id * 10),
        );
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let requests = requests.clone();
                let bell = server.bell.clone();
                shuttle::thread::spawn(move || {
                    let mb = Arc::new(Mailbox::<u64, Shuttle>::new());
                    for i in 0..reqs {
                        Shuttle::push(&requests, (c as u64 * 100 + i, mb.clone()));
                        bell.ring();
                    }
                    let mut got: Vec<u64> = (0..reqs)
                        .map(|_| mb.recv())
                        .map(|(id, v)| {
                            assert_eq!(v, id * 10);
                            id
                        })
                        .collect();
                    got.sort_unstable();
                    let want: Vec<u64> = (0..reqs).map(|i| c as u64 * 100 + i).collect();
                    assert_eq!(got, want);
                    assert!(mb.try_recv().is_none());
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap_or_else(|_| panic!("client panicked"));
        }
        server.stop();
    }

    #[test]
    fn answer_and_wake_paths_dfs_bounded() {
        shuttle::check_dfs(|| scenario(1, 2), Some(3000));
    }

    #[test]
    fn answer_and_wake_paths_random() {
        shuttle::check_random(|| scenario(2, 3), 3000);
    }

    #[test]
    fn answer_and_wake_paths_pct() {
        shuttle::check_pct(|| scenario(2, 2), 3000, 3);
    }
}
