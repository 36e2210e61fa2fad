//! openraft's log store on nvkv: entries, the vote and the committed id as records of the node's
//! database. Appends, truncations and the vote are written durably (acknowledged from nvkv's durable
//! log or its persistence cycle), and openraft hears that an append is flushed only when nvkv says so.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use nvkv::api::{Op, Reply};
use nvkv::shard::WriteOpts;
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, RaftLogReader};

use crate::db_thread::{Answers, DbThread};
use crate::error::StoreError;
use crate::keyspace::{log_index, log_key, LOG_END, META_COMMITTED, META_PURGED, META_VOTE};
use crate::recent::Recent;
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// Entries read per scan.
const SCAN_CHUNK: usize = 256;
/// Requests per job at most (a job's answers are held together).
const JOB_OPS: u64 = 16384;

/// Newest entries kept in memory for replication's reads (see `recent.rs`).
const RECENT_ENTRIES: usize = 4096;
const RECENT_BYTES: usize = 8 << 20;

#[derive(Debug)]
struct Tail {
    last_purged: Option<LogId>,
    last_log: Option<LogId>,
    recent: Recent,
}

/// The log store of one node (also its log reader: clones share the database and the cached tail).
#[derive(Debug, Clone)]
pub struct LogStore {
    db: DbThread,
    tail: Arc<Mutex<Tail>>,
}

fn durable() -> WriteOpts {
    WriteOpts {
        durable: true,
        ..WriteOpts::default()
    }
}

pub(crate) fn encode<T: serde::Serialize>(
    what: &'static str,
    v: &T,
) -> Result<Vec<u8>, StoreError> {
    bincode::serialize(v).map_err(|e| StoreError::decode(what, e))
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    raw: &[u8],
) -> Result<T, StoreError> {
    bincode::deserialize(raw).map_err(|e| StoreError::decode(what, e))
}

/// The first error among a job's answers.
pub(crate) fn check(answers: Answers) -> Result<Vec<Reply>, StoreError> {
    answers
        .into_iter()
        .map(|a| a.map_err(StoreError::from))
        .collect()
}

/// Runs `ops` in order and fails with the first error among their answers.
pub(crate) async fn exec(db: &DbThread, ops: Vec<Op>) -> Result<Vec<Reply>, StoreError> {
    check(db.exec(ops).await?)
}

/// A point read's value.
pub(crate) fn value_of(reply: Reply) -> Result<Option<Vec<u8>>, StoreError> {
    match reply {
        Reply::Value(v) => Ok(v.map(|(v, _)| v)),
        _ => Err(StoreError::UnexpectedReply("get")),
    }
}

pub(crate) async fn get(db: &DbThread, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
    let mut r = exec(db, vec![Op::Get(key.to_vec())]).await?;
    value_of(r.pop().ok_or(StoreError::UnexpectedReply("get"))?)
}

pub(crate) async fn scan(
    db: &DbThread,
    start: Vec<u8>,
    end: Vec<u8>,
    limit: usize,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
    let mut r = exec(db, vec![Op::Scan(start, Some(end), limit)]).await?;
    match r.pop() {
        Some(Reply::Scan(pairs)) => Ok(pairs),
        _ => Err(StoreError::UnexpectedReply("scan")),
    }
}

impl LogStore {
    /// Opens the log kept in `db`'s database: reads the purge point and finds the last entry.
    pub(crate) async fn open(db: DbThread) -> Result<LogStore, StoreError> {
        let last_purged: Option<LogId> = match get(&db, META_PURGED).await? {
            Some(raw) => decode("purged log id", &raw)?,
            None => None,
        };
        let first = last_purged.map_or(0, |l| l.index + 1);
        let mut last_log = last_purged;
        let mut start = log_key(first).to_vec();
        loop {
            let pairs = scan(&db, start.clone(), LOG_END.to_vec(), SCAN_CHUNK).await?;
            let Some((k, v)) = pairs.last() else { break };
            let e: Entry = decode("log entry", v)?;
            last_log = Some(e.log_id);
            let idx = log_index(k).ok_or_else(|| StoreError::decode("log key", "not a log key"))?;
            if pairs.len() < SCAN_CHUNK || idx == u64::MAX {
                break;
            }
            start = log_key(idx + 1).to_vec();
        }
        Ok(LogStore {
            db,
            tail: Arc::new(Mutex::new(Tail {
                last_purged,
                last_log,
                recent: Recent::new(RECENT_ENTRIES, RECENT_BYTES),
            })),
        })
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        // The tail's ids are updated whole and the recent entries by steps that each leave a valid
        // suffix; a panic elsewhere cannot leave it half-written.
        self.tail.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The index of the last entry (0: none), for the state machine's replay horizon.
    pub(crate) fn last_index(&self) -> u64 {
        self.tail().last_log.map_or(0, |l| l.index)
    }

    async fn read_range(&self, start: u64, end: Option<u64>) -> Result<Vec<Entry>, StoreError> {
        let first = {
            let t = self.tail();
            let first = start.max(t.last_purged.map_or(0, |l| l.index + 1));
            if let Some(held) = t.recent.get(first, end) {
                return Ok(held);
            }
            first
        };
        let mut out = Vec::new();
        let mut from = first;
        loop {
            if end.is_some_and(|e| from >= e) {
                break;
            }
            let stop = end.map_or(LOG_END.to_vec(), |e| log_key(e).to_vec());
            let want = end.map_or(SCAN_CHUNK, |e| ((e - from) as usize).min(SCAN_CHUNK));
            let pairs = scan(&self.db, log_key(from).to_vec(), stop, want).await?;
            let n = pairs.len();
            for (k, v) in pairs {
                let idx =
                    log_index(&k).ok_or_else(|| StoreError::decode("log key", "not a log key"))?;
                if !out.is_empty() && idx != from {
                    // A hole: entries are consecutive, so stop at the first missing one.
                    return Ok(out);
                }
                out.push(decode::<Entry>("log entry", &v)?);
                from = idx.saturating_add(1);
            }
            if n < want {
                break;
            }
        }
        Ok(out)
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => Some(e.saturating_add(1)),
        Bound::Excluded(&e) => Some(e),
        Bound::Unbounded => None,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = bounds(&range);
        self.read_range(start, end)
            .await
            .map_err(|e| e.raft(ErrorSubject::Logs, ErrorVerb::Read))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let t = self.tail();
        Ok(LogState {
            last_purged_log_id: t.last_purged,
            last_log_id: t.last_log.or(t.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let err = |e: StoreError| e.raft(ErrorSubject::Vote, ErrorVerb::Write);
        let raw = encode("vote", vote).map_err(err)?;
        exec(&self.db, vec![Op::Put(META_VOTE.to_vec(), raw, durable())])
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let err = |e: StoreError| e.raft(ErrorSubject::Vote, ErrorVerb::Read);
        match get(&self.db, META_VOTE).await.map_err(err)? {
            Some(raw) => Ok(Some(decode("vote", &raw).map_err(err)?)),
            None => Ok(None),
        }
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not durable on its own: openraft only uses it to apply sooner after a restart, and it becomes
        // durable with the next cycle.
        let err = |e: StoreError| e.raft(ErrorSubject::Store, ErrorVerb::Write);
        let raw = encode("committed log id", &committed).map_err(err)?;
        let op = Op::Put(META_COMMITTED.to_vec(), raw, WriteOpts::default());
        // Not waited for either: later reads see it, and a failure refuses every later job.
        self.db
            .submit_detached("saving the committed id", vec![op])
            .map_err(|e| err(e.into()))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let err = |e: StoreError| e.raft(ErrorSubject::Store, ErrorVerb::Read);
        match get(&self.db, META_COMMITTED).await.map_err(err)? {
            Some(raw) => decode("committed log id", &raw).map_err(err),
            None => Ok(None),
        }
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let err = |e: StoreError| e.raft(ErrorSubject::Logs, ErrorVerb::Write);
        let mut ops = Vec::new();
        let mut kept = Vec::new();
        let mut last = None;
        for e in entries {
            let raw = encode("log entry", &e).map_err(err)?;
            last = Some(e.log_id);
            let key = log_key(e.log_id.index).to_vec();
            kept.push((raw.len(), e));
            ops.push(Op::Put(key, raw, durable()));
        }
        if ops.is_empty() {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        // Submitted before this returns, so any later read (queued behind) sees the entries; openraft
        // hears of the flush only once nvkv has made every one of them durable.
        self.db
            .submit(ops, move |answers| {
                let r = check(answers)
                    .map(|_| ())
                    .map_err(|e| std::io::Error::other(e.to_string()));
                callback.log_io_completed(r);
            })
            .map_err(|e| err(e.into()))?;
        let mut t = self.tail();
        t.last_log = last;
        for (size, e) in kept {
            t.recent.push(e, size);
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Durable deletes: a crash after the new entries are appended must not bring back the
        // truncated ones beyond them.
        let err = |e: StoreError| e.raft(ErrorSubject::Logs, ErrorVerb::Delete);
        // No read is served the truncated entries from memory from here on.
        self.tail().recent.truncate_from(log_id.index);
        let last = self.last_index();
        let mut i = log_id.index;
        while i <= last {
            let end = last.min(i.saturating_add(JOB_OPS - 1));
            let ops = (i..=end)
                .map(|i| Op::Delete(log_key(i).to_vec(), durable()))
                .collect();
            exec(&self.db, ops).await.map_err(err)?;
            if end == u64::MAX {
                break;
            }
            i = end + 1;
        }
        let prev = if log_id.index == 0 {
            None
        } else {
            self.read_range(log_id.index - 1, Some(log_id.index))
                .await
                .map_err(err)?
                .pop()
                .map(|e| e.log_id)
        };
        let mut t = self.tail();
        t.last_log = prev.or(t.last_purged);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let err = |e: StoreError| e.raft(ErrorSubject::Logs, ErrorVerb::Delete);
        // The state machine's writes are not durable one by one: make everything up to here durable
        // before the entries that could rebuild it go.
        exec(&self.db, vec![Op::Sync]).await.map_err(err)?;
        let raw = encode("purged log id", &Some(log_id)).map_err(err)?;
        exec(
            &self.db,
            vec![Op::Put(META_PURGED.to_vec(), raw, durable())],
        )
        .await
        .map_err(err)?;
        let first = {
            let mut t = self.tail();
            let first = t.last_purged.map_or(0, |l| l.index + 1);
            t.last_purged = Some(log_id);
            t.recent.purge_upto(log_id.index);
            if t.last_log.is_none_or(|l| l.index < log_id.index) {
                t.last_log = Some(log_id);
            }
            first
        };
        // Reads stop at the purge point already; these deletes reclaim the space.
        let mut i = first;
        while i <= log_id.index {
            let end = log_id.index.min(i.saturating_add(JOB_OPS - 1));
            let ops = (i..=end)
                .map(|i| Op::Delete(log_key(i).to_vec(), WriteOpts::default()))
                .collect();
            exec(&self.db, ops).await.map_err(err)?;
            if end == u64::MAX {
                break;
            }
            i = end + 1;
        }
        Ok(())
    }
}
