//! Many requests in flight from one thread: a batch waited on once, or requests whose answers are polled.

use super::*;

/// Several requests in flight from one thread; answers come back in any order and are returned in
/// submission order.
#[derive(Debug)]
pub struct Batch {
    pub(super) handle: DbHandle,
    pub(super) inbox: Inbox,
    pub(super) sent: u64,
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
pub struct AsyncRequests {
    pub(super) handle: DbHandle,
    pub(super) inbox: Inbox,
}

impl AsyncRequests {
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
