//! Many requests in flight from one thread: a batch waited on once, or requests whose answers are polled.

use super::*;

/// Several requests in flight from one thread; answers come back in any order and are returned in
/// submission order.
#[derive(Debug)]
pub struct Batch {
    pub(super) handle: DbHandle,
    pub(super) inbox: Inbox,
    pub(super) sent: u64,
    /// Answers taken from the inbox so far.
    pub(super) received: u64,
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
    pub fn wait(mut self) -> Vec<OpAnswer> {
        let mut out: Vec<Option<OpAnswer>> = (0..self.sent).map(|_| None).collect();
        while self.received < self.sent {
            let (id, a) = self.inbox.recv();
            self.received += 1;
            if let Some(slot) = out.get_mut(id as usize) {
                *slot = Some(a);
            }
        }
        out.into_iter()
            .map(|a| a.unwrap_or(Err(Error::Closed)))
            .collect()
    }
}

impl Drop for Batch {
    /// A batch given up before its answers came (an error part-way through submitting) still takes
    /// them: they would otherwise land in the thread's mailbox and be read as answers to a later
    /// batch. Every queued request is answered (by its shard, or "closed" when the shard stopped).
    fn drop(&mut self) {
        while self.received < self.sent {
            // Only taken out of the mailbox: nobody asked for it any more.
            let _ = self.inbox.recv();
            self.received += 1;
        }
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
