//! The requests a handle sends to a shard and the answers it gets back.

use super::*;

pub(super) type LocalFn = Box<dyn FnOnce(&mut dyn LocalCtx) -> Box<dyn Any + Send> + Send>;

/// A request to a shard.
pub enum Op {
    /// Get.
    Get(Vec<u8>),
    /// Put.
    Put(Vec<u8>, Vec<u8>, WriteOpts),
    /// Delete.
    Delete(Vec<u8>, WriteOpts),
    /// Compare-and-swap.
    Cas(Vec<u8>, Option<u64>, Option<Vec<u8>>, WriteOpts),
    /// Increment.
    Incr(Vec<u8>, i64, WriteOpts),
    /// Range scan on one shard.
    Scan(Vec<u8>, Option<Vec<u8>>, usize),
    /// Persist everything.
    Sync,
    /// Statistics.
    Stats,
    /// Run a closure on the shard thread.
    Run(LocalFn),
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Op::Get(_) => "Get",
            Op::Put(..) => "Put",
            Op::Delete(..) => "Delete",
            Op::Cas(..) => "Cas",
            Op::Incr(..) => "Incr",
            Op::Scan(..) => "Scan",
            Op::Sync => "Sync",
            Op::Stats => "Stats",
            Op::Run(_) => "Run",
        })
    }
}

/// An answer.
pub enum Reply {
    /// Get's answer.
    Value(Option<(Vec<u8>, Meta)>),
    /// A write's answer.
    Write(WriteResult),
    /// Increment's answer.
    Incr(i64, WriteResult),
    /// Scan's answer.
    Scan(Vec<(Vec<u8>, Vec<u8>)>),
    /// Sync done.
    Synced,
    /// Statistics.
    Stats(Box<ShardStats>),
    /// A closure's result.
    Any(Box<dyn Any + Send>),
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Value(v) => write!(f, "Value({v:?})"),
            Reply::Write(w) => write!(f, "Write({w:?})"),
            Reply::Incr(n, w) => write!(f, "Incr({n}, {w:?})"),
            Reply::Scan(s) => write!(f, "Scan({} items)", s.len()),
            Reply::Synced => f.write_str("Synced"),
            Reply::Stats(s) => write!(f, "Stats({s:?})"),
            Reply::Any(_) => f.write_str("Any"),
        }
    }
}

pub(super) type OpAnswer = Result<Reply, Error>;

pub(super) type Inbox = Arc<Mailbox<OpAnswer>>;

/// What a shard's queue carries: a request with owned buffers answered through a mailbox, or a
/// client's request slot.
pub(super) enum Request {
    Mail { op: Op, reply: MailReply },
    Slot(CallRef),
}

impl Request {
    /// Gives up on a request no shard will take (the queue of a shard that stopped): answered
    /// "closed", never left waiting.
    pub(super) fn refuse(self) {
        match self {
            Request::Mail { reply, .. } => reply.post(Err(Error::Closed)),
            Request::Slot(r) => r.fail(Error::Closed),
        }
    }

    /// A request that never reached a queue: a mailbox request's sender is told by the error returned
    /// to it (no answer is posted); a slot is answered with `e`.
    pub(super) fn turn_away(self, e: Error) {
        match self {
            Request::Mail { reply, .. } => reply.disarm(),
            Request::Slot(r) => r.fail(e),
        }
    }
}

/// Where a mailbox request's answer goes. Dropped unanswered (a shard that unwinds), it answers
/// "closed", so every request that reached a shard's queue gets exactly one answer.
pub(super) struct MailReply {
    inbox: Inbox,
    id: u64,
    armed: bool,
}

impl MailReply {
    pub(super) fn new(inbox: &Inbox, id: u64) -> Self {
        MailReply {
            inbox: inbox.clone(),
            id,
            armed: true,
        }
    }

    /// Sends the answer.
    pub(super) fn post(mut self, a: OpAnswer) {
        self.armed = false;
        self.inbox.post(self.id, a);
    }

    /// The request never reached a queue: its sender already knows, so no answer is sent.
    pub(super) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for MailReply {
    fn drop(&mut self) {
        if self.armed {
            self.inbox.post(self.id, Err(Error::Closed));
        }
    }
}

pub(super) fn inbox() -> Inbox {
    INBOX.with(Arc::clone)
}
