//! Handles are tokens, not pointers: a handle's value encodes a slot of a process-wide table and the
//! slot's generation at the time it was handed out. The library never dereferences a handle, so a closed
//! handle, a copy of one, a handle of another kind or an arbitrary value is detected, not undefined
//! behaviour: closing bumps the slot's generation (`NVKV_CLOSED` afterwards), a value naming no slot or
//! an object of another kind is `NVKV_BAD_HANDLE`. A slot is reused with a new generation; the check could
//! only be fooled by a copy kept while the same slot is reused 2^32 times (2^16 on 32-bit targets).
//!
//! The lookup every call makes takes no lock and writes no shared memory:
//! - Each slot's state (generation, open or not) is an atomic word in chunks that are allocated once
//!   and never freed, so a reader needs no lock to find it (a chunk is 8 KiB; at most
//!   `MAX_CHUNKS` of them).
//! - Each thread keeps the objects it looked up recently in a small cache of its own. A hit costs one
//!   atomic load of the slot's state (a cache line other threads only read while the handle stays
//!   open) and no reference-count traffic: the database is used through a borrow ([`with_db`]).
//! - A miss, inserting and removing take the table's mutex (the slow path).
//!
//! A closed database may stay referenced from other threads' caches until they look it up again (it
//! then answers `NVKV_CLOSED` and is dropped) or evict it: a few hundred bytes of handle, not the
//! database, which `nvkv_close` has shut down. The thread that frees an object drops its own cached
//! copy at once.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::CapiError;
use crate::ops::{AsyncState, BatchState, DbObj, IterState};

/// What a slot holds.
#[derive(Clone)]
pub enum Object {
    /// An open database.
    Db(Arc<DbObj>),
    /// A scan iterator.
    Iter(Arc<Mutex<IterState>>),
    /// An asynchronous context.
    Async(Arc<Mutex<AsyncState>>),
    /// A batch of requests.
    Batch(Arc<Mutex<BatchState>>),
}

const CHUNK_BITS: u32 = 10;
const CHUNK: usize = 1 << CHUNK_BITS;
const MAX_CHUNKS: usize = 1024;
/// Handles open at once, at most (a million).
const MAX_SLOTS: usize = CHUNK * MAX_CHUNKS;

/// Slot states: `generation << 1 | open`. 0 is a slot never used (generation 0 is never issued).
type Chunk = [AtomicUsize; CHUNK];
static STATES: [OnceLock<Box<Chunk>>; MAX_CHUNKS] = [const { OnceLock::new() }; MAX_CHUNKS];

/// The objects, and the free slots; only the slow path takes this.
struct Table {
    objs: Vec<Option<Object>>,
    free: Vec<usize>,
}

static TABLE: Mutex<Table> = Mutex::new(Table {
    objs: Vec::new(),
    free: Vec::new(),
});

const IDX_BITS: u32 = usize::BITS / 2;
const IDX_MASK: usize = (1 << IDX_BITS) - 1;
const GEN_MASK: usize = usize::MAX >> IDX_BITS;
const _: () = assert!(MAX_SLOTS < IDX_MASK, "slot indices fit a token");

fn token(idx: usize, gen: usize) -> usize {
    ((gen & GEN_MASK) << IDX_BITS) | (idx + 1)
}

fn split(token: usize) -> Option<(usize, usize)> {
    let i = token & IDX_MASK;
    // Index 0 is never handed out, so small integers and NULL-ish values are rejected.
    // Generation 0 is never handed out either (see `remove`), so 1, 2, ... are foreign values too.
    let gen = token >> IDX_BITS;
    (i != 0 && gen != 0).then(|| (i - 1, gen))
}

fn open_state(gen: usize) -> usize {
    (gen << 1) | 1
}

/// The state word of slot `idx`, if its chunk exists.
fn state(idx: usize) -> Option<&'static AtomicUsize> {
    let chunk = STATES.get(idx >> CHUNK_BITS)?.get()?;
    Some(&chunk[idx & (CHUNK - 1)])
}

/// Whether slot `idx` holds an open object at generation `gen` (one atomic load, no lock).
fn is_open(idx: usize, gen: usize) -> bool {
    state(idx).is_some_and(|s| s.load(Ordering::Acquire) == open_state(gen))
}

/// Why a token does not name an open object, given its slot's state.
fn dead(gen: usize, st: usize, kind: &'static str) -> CapiError {
    let cur = st >> 1;
    // An older generation of a slot that exists: a handle that was closed. A newer one was never issued.
    if cur != 0 && gen < cur {
        CapiError::Closed(kind)
    } else {
        CapiError::BadHandle(kind)
    }
}

// No code panics while holding the lock, but a poisoned lock must not turn every later call into a panic.
fn table() -> std::sync::MutexGuard<'static, Table> {
    TABLE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Stores `obj`; returns its handle value (never 0).
pub fn insert(obj: Object) -> Result<usize, CapiError> {
    let mut t = table();
    let idx = match t.free.pop() {
        Some(i) => i,
        None => {
            let i = t.objs.len();
            if i >= MAX_SLOTS {
                return Err(CapiError::Invalid("too many open handles".into()));
            }
            STATES[i >> CHUNK_BITS]
                .get_or_init(|| Box::new([const { AtomicUsize::new(0) }; CHUNK]));
            t.objs.push(None);
            i
        }
    };
    let st = state(idx).ok_or_else(|| CapiError::Panic("handle chunk missing".into()))?;
    // A fresh slot starts at generation 1; a reused one keeps the generation `remove` moved it to.
    let gen = match st.load(Ordering::Acquire) >> 1 {
        0 => 1,
        g => g,
    };
    t.objs[idx] = Some(obj);
    st.store(open_state(gen), Ordering::Release);
    Ok(token(idx, gen))
}

/// The slow path: the object behind a token, from the table.
fn lookup(idx: usize, gen: usize, kind: &'static str) -> Result<Object, CapiError> {
    let t = table();
    let st = state(idx).ok_or(CapiError::BadHandle(kind))?;
    let s = st.load(Ordering::Acquire);
    if s != open_state(gen) {
        return Err(dead(gen, s, kind));
    }
    t.objs
        .get(idx)
        .and_then(Option::clone)
        .ok_or(CapiError::Closed(kind))
}

/// Entries of a thread's cache.
const WAYS: usize = 8;

/// A thread's recently used objects, by token.
struct Cache {
    entries: [Option<(usize, Object)>; WAYS],
    /// The entry the next eviction replaces (round robin).
    next: usize,
}

thread_local! {
    static CACHE: RefCell<Cache> = const {
        RefCell::new(Cache { entries: [const { None }; WAYS], next: 0 })
    };
}

impl Cache {
    /// The cached object for `handle` if its slot is still open at that generation; drops entries of
    /// slots that were closed since.
    fn find(&mut self, handle: usize, idx: usize, gen: usize) -> Option<&Object> {
        let open = is_open(idx, gen);
        let i = self
            .entries
            .iter()
            .position(|e| matches!(e, Some((t, _)) if *t == handle))?;
        if open {
            return self.entries[i].as_ref().map(|(_, o)| o);
        }
        self.entries[i] = None;
        None
    }

    /// Caches `obj` for `handle`, evicting the oldest entry (and every entry of a closed slot).
    fn put(&mut self, handle: usize, obj: Object) -> &Object {
        for e in &mut self.entries {
            if let Some((t, _)) = e {
                if !split(*t).is_some_and(|(i, g)| is_open(i, g)) {
                    *e = None;
                }
            }
        }
        let i = match self.entries.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                let i = self.next;
                self.next = (i + 1) % WAYS;
                i
            }
        };
        &self.entries[i].insert((handle, obj)).1
    }
}

/// Runs `f` on the object behind `handle`: through the calling thread's cache (no lock, no shared
/// write), or, on a miss, from the table (then cached). `f` runs while the cache is borrowed: a call into
/// the table from inside it (not done today) takes the slow path.
fn with<R>(
    handle: usize,
    kind: &'static str,
    f: impl FnOnce(&Object) -> Result<R, CapiError>,
) -> Result<R, CapiError> {
    let (idx, gen) = split(handle).ok_or(CapiError::BadHandle(kind))?;
    let mut f = Some(f);
    let mut run = |o: &Object| match f.take() {
        Some(f) => f(o),
        None => Err(CapiError::Panic("handle lookup ran twice".into())),
    };
    // Not available: during thread teardown, or re-entered from inside `f`.
    let cached = CACHE.try_with(|c| {
        let mut c = c.try_borrow_mut().ok()?;
        if let Some(o) = c.find(handle, idx, gen) {
            return Some(run(o));
        }
        Some(lookup(idx, gen, kind).and_then(|o| run(c.put(handle, o))))
    });
    match cached {
        Ok(Some(r)) => r,
        _ => run(&lookup(idx, gen, kind)?),
    }
}

/// Takes the object out of the table: the handle (and every copy) is dead from here on. `expect` checks
/// the kind first, so a handle of another kind passed by mistake stays open.
pub fn remove(
    handle: usize,
    kind: &'static str,
    expect: fn(&Object) -> bool,
) -> Result<Object, CapiError> {
    let (idx, gen) = split(handle).ok_or(CapiError::BadHandle(kind))?;
    let obj = {
        let mut t = table();
        let st = state(idx).ok_or(CapiError::BadHandle(kind))?;
        let s = st.load(Ordering::Acquire);
        if s != open_state(gen) {
            return Err(dead(gen, s, kind));
        }
        let slot = t.objs.get_mut(idx).ok_or(CapiError::BadHandle(kind))?;
        if !slot.as_ref().is_some_and(expect) {
            return Err(CapiError::BadHandle(kind));
        }
        let obj = slot.take().ok_or(CapiError::Closed(kind))?;
        let next = match gen.wrapping_add(1) & GEN_MASK {
            0 => 1,
            g => g,
        };
        // Closed at `next`, not `gen`: `dead` then calls the old token closed, and `insert` reuses the
        // slot at `next`.
        st.store(next << 1, Ordering::Release);
        t.free.push(idx);
        obj
    };
    // This thread's cached copy goes now (other threads drop theirs at their next lookup of it).
    // Not available during thread teardown or from inside `with`: then it goes at the next lookup.
    let _ = CACHE.try_with(|c| {
        if let Ok(mut c) = c.try_borrow_mut() {
            for e in &mut c.entries {
                if matches!(e, Some((t, _)) if *t == handle) {
                    *e = None;
                }
            }
        }
    });
    Ok(obj)
}

/// Runs `f` on the database behind `handle`, borrowed: no reference count is touched.
pub fn with_db<R>(
    handle: usize,
    f: impl FnOnce(&DbObj) -> Result<R, CapiError>,
) -> Result<R, CapiError> {
    with(handle, "database", |o| match o {
        Object::Db(d) => f(d),
        _ => Err(CapiError::BadHandle("database")),
    })
}

/// The database behind `handle`, as a reference of its own (for objects that keep it and for closing).
pub fn db(handle: usize) -> Result<Arc<DbObj>, CapiError> {
    with(handle, "database", |o| match o {
        Object::Db(d) => Ok(d.clone()),
        _ => Err(CapiError::BadHandle("database")),
    })
}

/// The iterator behind `handle`.
pub fn iter(handle: usize) -> Result<Arc<Mutex<IterState>>, CapiError> {
    with(handle, "iterator", |o| match o {
        Object::Iter(i) => Ok(i.clone()),
        _ => Err(CapiError::BadHandle("iterator")),
    })
}

/// The asynchronous context behind `handle`.
pub fn async_ctx(handle: usize) -> Result<Arc<Mutex<AsyncState>>, CapiError> {
    with(handle, "async context", |o| match o {
        Object::Async(a) => Ok(a.clone()),
        _ => Err(CapiError::BadHandle("async context")),
    })
}

/// Runs `f` on the batch behind `handle`, borrowed (every queued request looks it up).
pub fn with_batch<R>(
    handle: usize,
    f: impl FnOnce(&Mutex<BatchState>) -> Result<R, CapiError>,
) -> Result<R, CapiError> {
    with(handle, "batch", |o| match o {
        Object::Batch(b) => f(b),
        _ => Err(CapiError::BadHandle("batch")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_index_zero() {
        assert_eq!(split(token(5, 7)), Some((5, 7)));
        assert_eq!(split(0), None);
        assert_eq!(split(1 << IDX_BITS), None);
        assert_eq!(split(1), None, "generation 0 is never issued");
    }

    /// The table is the process's: tests that count on which slot is reused run one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn memory_db() -> Arc<DbObj> {
        let spec = crate::ops::BackendSpec::Memory {
            size: 8 << 20,
            block_size: 4096,
        };
        Arc::new(crate::ops::open(spec, |o| o.create = true).expect("open"))
    }

    fn is_db(o: &Object) -> bool {
        matches!(o, Object::Db(_))
    }

    /// A thread that cached a handle sees it closed once another thread removes it, and a slot reused
    /// for a new object is never served under the old token (nor the old object under the new one).
    #[test]
    fn cached_lookups_see_removal_and_reuse() {
        let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let a = memory_db();
        let ta = insert(Object::Db(a.clone())).expect("insert");
        with_db(ta, |d| {
            assert!(std::ptr::eq(d, &*a));
            Ok(())
        })
        .expect("cached");
        let (go, gone) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
        std::thread::scope(|s| {
            s.spawn(|| {
                go.wait();
                remove(ta, "database", is_db).expect("remove");
                gone.wait();
            });
            go.wait();
            gone.wait();
        });
        assert!(matches!(with_db(ta, |_| Ok(())), Err(CapiError::Closed(_))));
        // The freed slot is reused (the free list is last in, first out) at a newer generation.
        let b = memory_db();
        let tb = insert(Object::Db(b.clone())).expect("insert");
        assert_eq!(tb & IDX_MASK, ta & IDX_MASK, "same slot");
        assert_ne!(tb, ta);
        assert!(matches!(with_db(ta, |_| Ok(())), Err(CapiError::Closed(_))));
        with_db(tb, |d| {
            assert!(std::ptr::eq(d, &*b));
            Ok(())
        })
        .expect("new object");
        // The wrong kind is refused and leaves the object in place.
        assert!(matches!(
            remove(tb, "iterator", |o| matches!(o, Object::Iter(_))),
            Err(CapiError::BadHandle(_))
        ));
        assert!(matches!(remove(tb, "database", is_db), Ok(Object::Db(_))));
        assert!(matches!(
            remove(tb, "database", is_db),
            Err(CapiError::Closed(_))
        ));
        for d in [a, b] {
            d.close().expect("close");
        }
    }

    /// Threads looking a handle up while another closes it: each sees the object or `Closed`, never
    /// anything else, and all see `Closed` afterwards.
    #[test]
    fn lookups_race_a_close() {
        let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let d = memory_db();
        let t = insert(Object::Db(d.clone())).expect("insert");
        let closed = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| loop {
                    let done = closed.load(Ordering::SeqCst);
                    match with_db(t, |_| Ok(())) {
                        Ok(()) => assert!(!done, "served after the close returned"),
                        Err(CapiError::Closed(_)) => {}
                        Err(e) => panic!("unexpected {e}"),
                    }
                    if done {
                        return;
                    }
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            remove(t, "database", is_db).expect("remove");
            closed.store(true, Ordering::SeqCst);
        });
        d.close().expect("close");
    }

    #[test]
    fn dead_tells_closed_from_foreign() {
        // Slot at generation 3, open: token generation 2 was closed, 4 never issued.
        assert!(matches!(dead(2, open_state(3), "x"), CapiError::Closed(_)));
        assert!(matches!(
            dead(4, open_state(3), "x"),
            CapiError::BadHandle(_)
        ));
        // Slot closed at generation 4 (free): the generation-3 token is closed.
        assert!(matches!(dead(3, 4 << 1, "x"), CapiError::Closed(_)));
        // A slot never used.
        assert!(matches!(dead(1, 0, "x"), CapiError::BadHandle(_)));
    }
}
