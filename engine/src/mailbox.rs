//! The two cross-thread wake-up paths the engine writes itself (the queues are crossbeam's):
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

/// The shuttle runtime: every step of the protocols above is a scheduling point shuttle explores.
#[cfg(test)]
#[derive(Debug)]
pub struct Shuttle;

#[cfg(test)]
impl Runtime for Shuttle {
    type Handle = shuttle::thread::Thread;
    type Flag = shuttle::sync::atomic::AtomicBool;
    type Queue<T: Send + 'static> = shuttle::sync::Mutex<VecDeque<T>>;
    // No spinning: shuttle explores the interleavings instead, and spins make its schedules unbounded.
    const SPIN_TIME: Duration = Duration::ZERO;
    fn current() -> Self::Handle {
        shuttle::thread::current()
    }
    fn park(timeout: Option<Duration>) {
        match timeout {
            Some(t) => shuttle::thread::park_timeout(t),
            None => shuttle::thread::park(),
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
        let stop: Arc<<Shuttle as Runtime>::Flag> = Arc::default();
        let bell_slot: Arc<shuttle::sync::Mutex<Option<Arc<ShardBell<Shuttle>>>>> = Arc::default();
        let server = {
            let requests = requests.clone();
            let stop = stop.clone();
            let bell_slot = bell_slot.clone();
            shuttle::thread::spawn(move || loop {
                let mut did = false;
                while let Some((id, mb)) = Shuttle::pop(&requests) {
                    mb.post(id, id * 10);
                    did = true;
                }
                if !did {
                    if Shuttle::get(&stop) {
                        return;
                    }
                    let bell = bell_slot.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    if let Some(bell) = bell {
                        let (rq, st) = (requests.clone(), stop.clone());
                        bell.sleep(
                            move || {
                                !rq.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
                                    || Shuttle::get(&st)
                            },
                            None,
                        );
                    }
                }
            })
        };
        let bell = Arc::new(ShardBell::<Shuttle>::for_thread(server.thread().clone()));
        *bell_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(bell.clone());
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let requests = requests.clone();
                let bell = bell.clone();
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
        Shuttle::set(&stop, true);
        bell.ring();
        server.join().unwrap_or_else(|_| panic!("server panicked"));
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
