//! Point operations through request slots: a [`Client`] owns its slots and reuses them, so a steady
//! stream of gets and puts from one thread allocates nothing, clones no `Arc` and copies a get's value
//! straight into the caller's buffer. The caller picks how to wait ([`Wait`]). [`DbHandle`]'s own
//! point operations go through one slot per thread in the same way.

use std::cell::RefCell;

use super::shard_loop::answer_waits;
use super::*;
use crate::slot::{Abandon, OwnedSlot, SlotRef, Wait};

/// Which point operation a slot carries.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    Get,
    Put,
    Delete,
    /// Compare-and-swap on the version; `delete`: the new value is "absent".
    Cas {
        expected: Option<u64>,
        delete: bool,
    },
    Incr(i64),
}

impl Kind {
    /// A compare-and-swap to `new` (None: delete) and the bytes it stores.
    pub(super) fn cas(expected: Option<u64>, new: Option<&[u8]>) -> (Kind, &[u8]) {
        let kind = Kind::Cas {
            expected,
            delete: new.is_none(),
        };
        (kind, new.unwrap_or_default())
    }
}

/// What a point operation answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// A get: the value's metadata (the bytes are in the caller's buffer), None when absent.
    Value(Option<Meta>),
    /// A write.
    Write(WriteResult),
    /// An increment: the new value.
    Incr(i64, WriteResult),
}

/// Request bytes kept across calls: in the slot itself up to `N` bytes, next to the state word on
/// lines the shard reads anyway, rather than behind a pointer it would have to follow to another line;
/// beyond `N`, in a heap buffer that keeps its capacity.
#[derive(Debug)]
#[repr(C)]
pub(super) struct Bytes<const N: usize> {
    len: usize,
    inline: [u8; N],
    heap: Vec<u8>,
}

impl<const N: usize> Bytes<N> {
    fn new() -> Self {
        Bytes {
            len: 0,
            inline: [0; N],
            heap: Vec::new(),
        }
    }

    fn set(&mut self, b: &[u8]) {
        self.len = b.len();
        if b.len() <= N {
            self.inline[..b.len()].copy_from_slice(b);
        } else {
            self.heap.clear();
            self.heap.extend_from_slice(b);
        }
    }

    pub(super) fn get(&self) -> &[u8] {
        if self.len <= N {
            &self.inline[..self.len]
        } else {
            &self.heap
        }
    }
}

/// A request slot's body: the request's bytes kept across calls, and the answer. `repr(C)` keeps the
/// order: the answer and what the shard reads first (kind, options, key, then the value) follow the
/// slot's state word without gaps, so a small request and its answer move between cores in few lines.
#[derive(Debug)]
#[repr(C)]
pub(super) struct Call {
    pub(super) kind: Kind,
    pub(super) opts: WriteOpts,
    pub(super) answer: Result<Done, Error>,
    pub(super) key: Bytes<64>,
    /// A put's or a compare-and-swap's new value.
    pub(super) value: Bytes<256>,
    /// A get's value, written by the shard.
    pub(super) out: Vec<u8>,
}

impl Call {
    fn new() -> Self {
        Call {
            kind: Kind::Get,
            opts: WriteOpts::default(),
            key: Bytes::new(),
            value: Bytes::new(),
            out: Vec::new(),
            answer: Err(Error::Closed),
        }
    }

    /// Fills the request in; the buffers keep their capacity, so this allocates only when a key or
    /// value is longer than the slot holds and longer than any before it.
    fn set(&mut self, kind: Kind, key: &[u8], value: &[u8], opts: WriteOpts) {
        self.kind = kind;
        self.opts = opts;
        self.key.set(key);
        self.value.set(value);
        self.answer = Err(Error::Closed);
    }
}

impl Abandon for Call {
    fn abandon(&mut self) {
        self.answer = Err(Error::Closed);
    }
}

pub(super) type CallRef = SlotRef<Call>;

impl SlotRef<Call> {
    /// Answers with an error.
    pub(super) fn fail(mut self, e: Error) {
        self.body().answer = Err(e);
        self.answer();
    }
}

/// Runs a slot's request on the shard; Some(write) when the answer must wait for that write to be
/// durable (the caller then holds the slot until it is).
pub(super) fn execute<D: BlockDevice>(
    shard: &mut Shard<D>,
    r: &mut CallRef,
) -> Option<WriteResult> {
    let c = r.body();
    let o = c.opts;
    let key = c.key.get();
    let res = match c.kind {
        Kind::Get => shard.get_into(key, &mut c.out).map(Done::Value),
        Kind::Put => shard.put(key, c.value.get(), o).map(Done::Write),
        Kind::Delete => shard.delete(key, o).map(Done::Write),
        Kind::Cas { expected, delete } => {
            let new = (!delete).then_some(c.value.get());
            shard.cas(key, expected, new, o).map(Done::Write)
        }
        Kind::Incr(d) => shard.incr(key, d, o).map(|(n, w)| Done::Incr(n, w)),
    };
    let wait = match &res {
        Ok(Done::Write(w)) => answer_waits(o, w, false).then_some(*w),
        Ok(Done::Incr(_, w)) => answer_waits(o, w, true).then_some(*w),
        _ => None,
    };
    c.answer = res;
    wait
}

/// The answer of one request of a client's batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer<'a> {
    /// A get: the value and its metadata, None when absent.
    Value(Option<(&'a [u8], Meta)>),
    /// A write.
    Write(WriteResult),
    /// An increment: the new value.
    Incr(i64, WriteResult),
}

/// Point operations from one thread through request slots it owns: no allocation, no `Arc` traffic
/// per call once the slots' buffers have grown to the largest key and value seen. Single calls wait
/// for their answer; the `batch_*` calls put many requests in flight and wait once.
///
/// `Send` (it may move to another thread between calls) but not `Sync`: one thread at a time.
#[derive(Debug)]
pub struct Client {
    handle: DbHandle,
    wait: Wait,
    single: OwnedSlot<Call>,
    batch: Vec<OwnedSlot<Call>>,
    /// Slots of `batch` in use (posted or answered) in the current batch.
    used: usize,
}

impl DbHandle {
    /// A client with request slots of its own (see [`Client`]), waiting the default way.
    pub fn client(&self) -> Client {
        Client {
            handle: self.clone(),
            wait: Wait::default(),
            single: OwnedSlot::new(Call::new()),
            batch: Vec::new(),
            used: 0,
        }
    }

    /// Posts a slot to `key`'s shard; a refused slot is answered with the reason.
    fn post_call(&self, r: CallRef, key_shard: usize) {
        // A refused slot was answered with the reason, which its wait returns.
        let _ = self.push(key_shard, Request::Slot(r));
    }

    /// One point operation through `slot`, waited for.
    fn call_slot(
        &self,
        slot: &mut OwnedSlot<Call>,
        how: Wait,
        kind: Kind,
        key: &[u8],
        value: &[u8],
        opts: WriteOpts,
    ) -> Result<Done, Error> {
        slot.body().set(kind, key, value, opts);
        let shard = shard_of(key, self.shards());
        slot.call(how, |r| self.post_call(r, shard));
        std::mem::replace(&mut slot.body().answer, Err(Error::Closed))
    }

    /// One point operation through this thread's slot (DbHandle's own point calls). The slot is
    /// reused by every call the thread makes; a call made while it is taken (not possible today: no
    /// caller code runs during a call) would get a slot of its own.
    pub(super) fn call_point(
        &self,
        kind: Kind,
        key: &[u8],
        value: &[u8],
        opts: WriteOpts,
        out: Option<&mut Vec<u8>>,
    ) -> Result<Done, Error> {
        thread_local! {
            static SLOT: RefCell<OwnedSlot<Call>> = RefCell::new(OwnedSlot::new(Call::new()));
        }
        let run = |slot: &mut OwnedSlot<Call>| {
            let mut out = out;
            if let Some(o) = out.as_deref_mut() {
                // The shard writes into the caller's own buffer.
                std::mem::swap(o, &mut slot.body().out);
            }
            let r = self.call_slot(slot, Wait::default(), kind, key, value, opts);
            if let Some(o) = out {
                std::mem::swap(o, &mut slot.body().out);
            }
            r
        };
        SLOT.with(|s| match s.try_borrow_mut() {
            Ok(mut slot) => run(&mut slot),
            Err(_) => run(&mut OwnedSlot::new(Call::new())),
        })
    }
}

fn write_of(d: Done) -> Result<WriteResult, Error> {
    match d {
        Done::Write(w) => Ok(w),
        _ => Err(Error::Closed),
    }
}

impl Client {
    /// How this client waits for answers (default: [`Wait::default`]).
    pub fn set_wait(&mut self, how: Wait) {
        self.wait = how;
    }

    /// The handle this client sends through.
    pub fn handle(&self) -> &DbHandle {
        &self.handle
    }

    fn single(
        &mut self,
        kind: Kind,
        key: &[u8],
        value: &[u8],
        opts: WriteOpts,
    ) -> Result<Done, Error> {
        self.handle
            .call_slot(&mut self.single, self.wait, kind, key, value, opts)
    }

    /// The value under `key` into `out` (replaced; the shard writes into `out` itself, so a reused
    /// `out` reads without allocating); its metadata, None when absent (`out` then empty).
    pub fn get_into(&mut self, key: &[u8], out: &mut Vec<u8>) -> Result<Option<Meta>, Error> {
        std::mem::swap(out, &mut self.single.body().out);
        let r = self.single(Kind::Get, key, &[], WriteOpts::default());
        std::mem::swap(out, &mut self.single.body().out);
        match r? {
            Done::Value(m) => Ok(m),
            _ => Err(Error::Closed),
        }
    }

    /// Stores a value (acknowledged once buffered, or once durable with `opts.durable`).
    pub fn put(&mut self, key: &[u8], value: &[u8], opts: WriteOpts) -> Result<WriteResult, Error> {
        write_of(self.single(Kind::Put, key, value, opts)?)
    }

    /// Deletes a key.
    pub fn delete(&mut self, key: &[u8], opts: WriteOpts) -> Result<WriteResult, Error> {
        write_of(self.single(Kind::Delete, key, &[], opts)?)
    }

    /// Compare-and-swap on the version (None: absent); `new` None deletes.
    pub fn cas(
        &mut self,
        key: &[u8],
        expected: Option<u64>,
        new: Option<&[u8]>,
        opts: WriteOpts,
    ) -> Result<WriteResult, Error> {
        let (kind, value) = Kind::cas(expected, new);
        write_of(self.single(kind, key, value, opts)?)
    }

    /// Adds `delta` to the integer under `key`; the new value.
    pub fn incr(&mut self, key: &[u8], delta: i64, opts: WriteOpts) -> Result<i64, Error> {
        match self.single(Kind::Incr(delta), key, &[], opts)? {
            Done::Incr(n, _) => Ok(n),
            _ => Err(Error::Closed),
        }
    }

    /// Queues one request of the current batch; its position.
    fn batch_push(&mut self, kind: Kind, key: &[u8], value: &[u8], opts: WriteOpts) -> usize {
        if self.used == self.batch.len() {
            self.batch.push(OwnedSlot::new(Call::new()));
        }
        let i = self.used;
        let slot = &mut self.batch[i];
        slot.body().set(kind, key, value, opts);
        let r = slot.post();
        self.used += 1;
        self.handle
            .post_call(r, shard_of(key, self.handle.shards()));
        i
    }

    /// Queues a get; its position in the batch.
    pub fn batch_get(&mut self, key: &[u8]) -> usize {
        self.batch_push(Kind::Get, key, &[], WriteOpts::default())
    }

    /// Queues a put; its position in the batch.
    pub fn batch_put(&mut self, key: &[u8], value: &[u8], opts: WriteOpts) -> usize {
        self.batch_push(Kind::Put, key, value, opts)
    }

    /// Queues a delete; its position in the batch.
    pub fn batch_delete(&mut self, key: &[u8], opts: WriteOpts) -> usize {
        self.batch_push(Kind::Delete, key, &[], opts)
    }

    /// Queues a compare-and-swap; its position in the batch.
    pub fn batch_cas(
        &mut self,
        key: &[u8],
        expected: Option<u64>,
        new: Option<&[u8]>,
        opts: WriteOpts,
    ) -> usize {
        let (kind, value) = Kind::cas(expected, new);
        self.batch_push(kind, key, value, opts)
    }

    /// Queues an increment; its position in the batch.
    pub fn batch_incr(&mut self, key: &[u8], delta: i64, opts: WriteOpts) -> usize {
        self.batch_push(Kind::Incr(delta), key, &[], opts)
    }

    /// Requests in the current batch.
    pub fn batch_len(&self) -> usize {
        self.used
    }

    /// Waits until every request of the current batch is answered.
    pub fn batch_wait(&mut self) {
        let how = self.wait;
        for s in &mut self.batch[..self.used] {
            s.wait(how);
        }
    }

    /// The answer of request `i` of the current batch (after [`Client::batch_wait`]); None when `i` is
    /// not in the batch or not answered yet.
    pub fn batch_answer(&mut self, i: usize) -> Option<Result<Answer<'_>, Error>> {
        if i >= self.used || !self.batch[i].is_ready() {
            return None;
        }
        let c = self.batch[i].body();
        Some(match &c.answer {
            Err(e) => Err(e.clone()),
            Ok(Done::Value(m)) => Ok(Answer::Value(m.map(|m| (&c.out[..], m)))),
            Ok(Done::Write(w)) => Ok(Answer::Write(*w)),
            Ok(Done::Incr(n, w)) => Ok(Answer::Incr(*n, *w)),
        })
    }

    /// Ends the current batch (waiting for what is still in flight); its slots are reused by the next.
    pub fn batch_clear(&mut self) {
        self.batch_wait();
        self.used = 0;
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Slots still posted would be leaked (see `OwnedSlot`); every posted request is answered, so
        // waiting here is bounded by the shard.
        self.batch_wait();
    }
}
