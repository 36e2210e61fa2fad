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

pub(super) type Answer = Result<Reply, Error>;

pub(super) type Inbox = Arc<Mailbox<Answer>>;

pub(super) struct Request {
    pub(super) op: Op,
    pub(super) id: u64,
    pub(super) reply: Inbox,
}

pub(super) fn inbox() -> Inbox {
    INBOX.with(Arc::clone)
}

pub(super) fn answer_id(reply: &Inbox, id: u64, a: Answer) {
    reply.post(id, a);
}
