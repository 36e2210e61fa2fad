//! openraft's state machine on nvkv: commands applied to data keys of the node's database, the last
//! applied log id and membership beside them, and snapshots as files streamed from a range scan.
//!
//! Applied writes are not durable one by one (the log is): they reach the device with the next
//! persistence cycle, in order, with the marker naming the last applied entry written after them. After a
//! crash the marker names a prefix of what was applied, openraft re-applies the entries after it, and
//! each data value's log index (see [`crate::keyspace`]) makes that re-application exact. Before log
//! entries are purged the database is synced, so the marker is durable past them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nvkv::api::Op;
use nvkv::shard::WriteOpts;
use nvkv::DbHandle;
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, Snapshot};

use crate::db_thread::DbThread;
use crate::error::StoreError;
use crate::keyspace::{
    data_key, user_key, DataValue, SnapshotRecord, DATA_END, META_APPLIED, META_INSTALLING,
    META_SNAPSHOT,
};
use crate::log_store::{decode, encode, exec, get, scan};
use crate::snapshot::{SnapshotReader, SnapshotWriter};
use crate::types::{
    Command, CommandResult, Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

/// Keys per scan when streaming the data keys.
const SCAN_CHUNK: usize = 1024;

fn durable() -> WriteOpts {
    WriteOpts {
        durable: true,
        ..WriteOpts::default()
    }
}

fn sm_err(verb: ErrorVerb) -> impl Fn(StoreError) -> StorageError {
    move |e| e.raft(ErrorSubject::StateMachine, verb)
}

fn snap_err(verb: ErrorVerb) -> impl Fn(StoreError) -> StorageError {
    move |e| e.raft(ErrorSubject::Snapshot(None), verb)
}

/// The state machine of one node.
#[derive(Debug)]
pub struct StateMachine {
    db: DbThread,
    dir: PathBuf,
    applied: Option<LogId>,
    membership: StoredMembership,
    /// Entries up to this index may have been applied in an earlier life: check their keys' index.
    horizon: u64,
    current: Arc<Mutex<Option<SnapshotRecord>>>,
    snapshots_built: u64,
}

/// Builds a snapshot of the state at the moment it was asked for.
#[derive(Debug)]
pub struct SnapshotBuilder {
    db: DbThread,
    dir: PathBuf,
    meta: SnapshotMeta,
    current: Arc<Mutex<Option<SnapshotRecord>>>,
    built: Option<tokio::sync::oneshot::Receiver<Result<PathBuf, StoreError>>>,
}

fn lock(m: &Mutex<Option<SnapshotRecord>>) -> std::sync::MutexGuard<'_, Option<SnapshotRecord>> {
    // Holds a value replaced whole: a panic elsewhere cannot leave it half-written.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Which snapshot file a snapshot id names.
fn file_name(meta: &SnapshotMeta) -> String {
    let id: String = meta
        .snapshot_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("snapshot-{id}.bin")
}

/// The user value stored under a data key (None: absent or a tombstone).
pub(crate) fn live(raw: Option<Vec<u8>>) -> Result<Option<DataValue>, StoreError> {
    raw.map(|r| DataValue::decode(&r).map_err(|e| StoreError::decode("data value", e)))
        .transpose()
}

impl StateMachine {
    /// Opens the state machine kept in `db`, with snapshots in `dir`; entries up to `horizon` may
    /// already have been applied before a crash. An install a crash interrupted is finished first.
    pub(crate) async fn open(
        db: DbThread,
        dir: &Path,
        horizon: u64,
    ) -> Result<StateMachine, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::io(format!("create {}", dir.display()), e))?;
        // Leftovers of builds and receptions a crash interrupted.
        if let Ok(rd) = std::fs::read_dir(dir) {
            for f in rd.flatten() {
                let n = f.file_name().to_string_lossy().into_owned();
                if n.ends_with(".tmp") || n.starts_with("receiving-") {
                    // Best effort: a leftover that cannot be removed is only wasted space.
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
        if let Some(raw) = get(&db, META_INSTALLING).await? {
            let rec: SnapshotRecord = decode("installing snapshot", &raw)?;
            let path = dir.join(&rec.file);
            let meta = rec.meta.clone();
            db.run(move |h| install_into(h, &path, &meta)).await??;
        }
        let (applied, membership) = match get(&db, META_APPLIED).await? {
            Some(raw) => decode("applied marker", &raw)?,
            None => (None, StoredMembership::default()),
        };
        let current = match get(&db, META_SNAPSHOT).await? {
            Some(raw) => Some(decode::<SnapshotRecord>("snapshot record", &raw)?),
            None => None,
        };
        Ok(StateMachine {
            db,
            dir: dir.to_path_buf(),
            applied,
            membership,
            horizon,
            current: Arc::new(Mutex::new(current)),
            snapshots_built: 0,
        })
    }

    /// The value of user key `key` on this node (no Raft round: may be stale on a follower).
    pub async fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        read(&self.db, key).await
    }

    fn marker(&self) -> Result<Op, StoreError> {
        let raw = encode("applied marker", &(self.applied, &self.membership))?;
        Ok(Op::Put(META_APPLIED.to_vec(), raw, WriteOpts::default()))
    }

    async fn apply_command(
        &mut self,
        index: u64,
        cmd: Command,
        ops: &mut Vec<Op>,
    ) -> Result<CommandResult, StoreError> {
        let key = data_key(cmd.key());
        let replay = index <= self.horizon;
        let current = if replay || matches!(cmd, Command::Cas { .. }) {
            // Writes queued so far must land before the read.
            if !ops.is_empty() {
                exec(&self.db, std::mem::take(ops)).await?;
            }
            live(get(&self.db, &key).await?)?
        } else {
            None
        };
        if replay && current.as_ref().is_some_and(|c| c.index >= index) {
            // Applied in an earlier life (or overwritten since): its effect is already there.
            return Ok(CommandResult {
                ok: true,
                current: current.and_then(|c| c.value),
            });
        }
        let now = current.and_then(|c| c.value);
        let (write, result) = match cmd {
            Command::Put { value, .. } => (
                Some(Some(value)),
                CommandResult {
                    ok: true,
                    current: None,
                },
            ),
            Command::Delete { .. } => (
                Some(None),
                CommandResult {
                    ok: true,
                    current: None,
                },
            ),
            Command::Cas {
                expected, value, ..
            } => {
                if now == expected {
                    (
                        Some(value.clone()),
                        CommandResult {
                            ok: true,
                            current: value,
                        },
                    )
                } else {
                    (
                        None,
                        CommandResult {
                            ok: false,
                            current: now,
                        },
                    )
                }
            }
        };
        if let Some(value) = write {
            let dv = DataValue { index, value };
            ops.push(Op::Put(key, dv.encode(), WriteOpts::default()));
        }
        Ok(result)
    }
}

/// A user key's value (None: absent or deleted).
pub(crate) async fn read(db: &DbThread, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(live(get(db, &data_key(key)).await?)?.and_then(|v| v.value))
}

/// Up to `limit` live user keys in `[start, end)`, in key order.
pub(crate) async fn read_range(
    db: &DbThread,
    start: &[u8],
    end: Option<&[u8]>,
    limit: usize,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
    let stop = end.map_or(DATA_END.to_vec(), data_key);
    let mut from = data_key(start);
    let mut out = Vec::new();
    while out.len() < limit {
        let pairs = scan(db, from.clone(), stop.clone(), SCAN_CHUNK).await?;
        let n = pairs.len();
        for (k, v) in pairs {
            if let Some(DataValue { value: Some(v), .. }) = live(Some(v))? {
                if let Some(uk) = user_key(&k) {
                    out.push((uk.to_vec(), v));
                    if out.len() == limit {
                        return Ok(out);
                    }
                }
            }
            from = k;
            from.push(0);
        }
        if n < SCAN_CHUNK {
            break;
        }
    }
    Ok(out)
}

/// Streams every live data key of the database into a snapshot file (run on the database thread,
/// so no write comes between the chunks).
fn build_into(h: &DbHandle, path: &Path, meta: &SnapshotMeta) -> Result<PathBuf, StoreError> {
    let mut w = SnapshotWriter::create(path, meta)?;
    let mut from = data_key(b"");
    loop {
        let pairs = h.scan(&from, Some(DATA_END), SCAN_CHUNK)?;
        let n = pairs.len();
        for (k, v) in pairs {
            if let Some(DataValue { value: Some(v), .. }) = live(Some(v))? {
                if let Some(uk) = user_key(&k) {
                    w.record(uk, &v)?;
                }
            }
            from = k;
            from.push(0);
        }
        if n < SCAN_CHUNK {
            break;
        }
    }
    w.finish()
}

/// Replaces the state machine's data with the snapshot at `path` (run on the database thread). The
/// `installing` record, written durably first, makes a crash part-way finish the install on the next
/// open instead of serving a mix of old and new.
fn install_into(h: &DbHandle, path: &Path, meta: &SnapshotMeta) -> Result<(), StoreError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let rec = SnapshotRecord {
        meta: meta.clone(),
        file: name.clone(),
    };
    h.put_opts(
        META_INSTALLING,
        &encode("installing snapshot", &rec)?,
        durable(),
    )?;
    // Out with the old data.
    loop {
        let pairs = h.scan(&data_key(b""), Some(DATA_END), SCAN_CHUNK)?;
        if pairs.is_empty() {
            break;
        }
        let mut b = h.batch();
        for (k, _) in pairs {
            b.submit(0, Op::Delete(k, WriteOpts::default()))?;
        }
        b.wait().into_iter().collect::<Result<Vec<_>, _>>()?;
    }
    // In with the snapshot's.
    let f = std::fs::File::open(path)
        .map_err(|e| StoreError::io(format!("open {}", path.display()), e))?;
    let mut r = SnapshotReader::new(f, &name)?;
    let index = meta.last_log_id.map_or(0, |l| l.index);
    loop {
        let mut b = h.batch();
        let mut n = 0;
        while n < SCAN_CHUNK {
            let Some((k, v)) = r.next_record()? else {
                break;
            };
            let dv = DataValue {
                index,
                value: Some(v),
            };
            b.submit(0, Op::Put(data_key(&k), dv.encode(), WriteOpts::default()))?;
            n += 1;
        }
        b.wait().into_iter().collect::<Result<Vec<_>, _>>()?;
        if n < SCAN_CHUNK {
            break;
        }
    }
    // The data first (a sync), then the three records durably and in this order: a durable log
    // replays a prefix of its records, so whoever sees `installing` gone sees the other two.
    h.sync()?;
    let marker = encode("applied marker", &(meta.last_log_id, &meta.last_membership))?;
    h.put_opts(META_APPLIED, &marker, durable())?;
    h.put_opts(META_SNAPSHOT, &encode("snapshot record", &rec)?, durable())?;
    h.delete_opts(META_INSTALLING, durable())?;
    Ok(())
}

/// Opens a snapshot file for openraft.
async fn open_snapshot(
    dir: &Path,
    rec: &SnapshotRecord,
) -> Result<Snapshot<TypeConfig>, StoreError> {
    let path = dir.join(&rec.file);
    let f = tokio::fs::File::open(&path)
        .await
        .map_err(|e| StoreError::io(format!("open {}", path.display()), e))?;
    Ok(Snapshot {
        meta: rec.meta.clone(),
        snapshot: Box::new(f),
    })
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let err = snap_err(ErrorVerb::Write);
        let rx = self
            .built
            .take()
            .ok_or_else(|| err(StoreError::Config("snapshot built twice".into())))?;
        let path = rx
            .await
            .map_err(|_| err(nvkv::Error::Closed.into()))?
            .map_err(&err)?;
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let rec = SnapshotRecord {
            meta: self.meta.clone(),
            file,
        };
        let raw = encode("snapshot record", &rec).map_err(&err)?;
        exec(
            &self.db,
            vec![Op::Put(META_SNAPSHOT.to_vec(), raw, durable())],
        )
        .await
        .map_err(&err)?;
        let old = lock(&self.current).replace(rec.clone());
        if let Some(old) = old.filter(|o| o.file != rec.file) {
            // The superseded file; failing to remove it only wastes space.
            let _ = std::fs::remove_file(self.dir.join(old.file));
        }
        open_snapshot(&self.dir, &rec).await.map_err(err)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let err = sm_err(ErrorVerb::Write);
        // A batch whose writes failed after an earlier apply returned stops the state machine here.
        self.db.check_detached().map_err(|e| err(e.into()))?;
        let mut results = Vec::new();
        let mut ops = Vec::new();
        for e in entries {
            self.applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => results.push(CommandResult {
                    ok: true,
                    current: None,
                }),
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(e.log_id), m);
                    results.push(CommandResult {
                        ok: true,
                        current: None,
                    });
                }
                EntryPayload::Normal(cmd) => {
                    let r = self
                        .apply_command(e.log_id.index, cmd, &mut ops)
                        .await
                        .map_err(&err)?;
                    results.push(r);
                }
            }
        }
        ops.push(self.marker().map_err(&err)?);
        // Not waited for: the entries are committed in the log already, so their answers may go out
        // now; every later job (a read, a snapshot, the next batch) reaches the shard after these
        // writes and sees them, and a failure refuses every later job (openraft then stops the node,
        // which re-applies from its marker when it restarts).
        self.db
            .submit_detached("applying entries", ops)
            .map_err(|e| err(e.into()))?;
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshots_built += 1;
        let last = self.applied;
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: self.membership.clone(),
            snapshot_id: format!(
                "{}-{}-{}",
                last.map_or(0, |l| l.leader_id.term),
                last.map_or(0, |l| l.index),
                self.snapshots_built
            ),
        };
        let path = self.dir.join(file_name(&meta));
        let m = meta.clone();
        // Queued now, behind every write applied so far and ahead of any applied later: the snapshot
        // is exactly the state `meta` names, though openraft asks for it later.
        let built = self.db.run_later(move |h| build_into(h, &path, &m)).ok();
        SnapshotBuilder {
            db: self.db.clone(),
            dir: self.dir.clone(),
            meta,
            current: self.current.clone(),
            built,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let err = snap_err(ErrorVerb::Write);
        self.snapshots_built += 1;
        let path = self.dir.join(format!(
            "receiving-{}-{}.part",
            std::process::id(),
            self.snapshots_built
        ));
        let f = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| err(StoreError::io(format!("create {}", path.display()), e)))?;
        Ok(Box::new(f))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let err = snap_err(ErrorVerb::Write);
        let path = self.dir.join(file_name(meta));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut f = snapshot.into_std().await;
        let p = path.clone();
        // Check the received bytes whole, then keep them under the snapshot's name (synced), before
        // anything in the database changes.
        tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            use std::io::Seek;
            f.rewind()
                .map_err(|e| StoreError::io("rewind received snapshot", e))?;
            let n = SnapshotReader::new(&mut f, &name)?.verify();
            n?;
            f.rewind()
                .map_err(|e| StoreError::io("rewind received snapshot", e))?;
            let tmp = p.with_extension("tmp");
            let mut out = std::fs::File::create(&tmp)
                .map_err(|e| StoreError::io(format!("create {}", tmp.display()), e))?;
            std::io::copy(&mut f, &mut out)
                .map_err(|e| StoreError::io(format!("write {}", tmp.display()), e))?;
            out.sync_all()
                .map_err(|e| StoreError::io(format!("sync {}", tmp.display()), e))?;
            std::fs::rename(&tmp, &p)
                .map_err(|e| StoreError::io(format!("rename {}", tmp.display()), e))?;
            crate::snapshot::sync_dir(&p)
        })
        .await
        .map_err(|e| err(StoreError::Config(format!("snapshot check task: {e}"))))?
        .map_err(&err)?;
        let m = meta.clone();
        let p = path.clone();
        self.db
            .run(move |h| install_into(h, &p, &m))
            .await
            .map_err(|e| err(e.into()))?
            .map_err(&err)?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        let rec = SnapshotRecord {
            meta: meta.clone(),
            file: file_name(meta),
        };
        let old = lock(&self.current).replace(rec);
        if let Some(old) = old.filter(|o| o.file != file_name(meta)) {
            // The superseded file; failing to remove it only wastes space.
            let _ = std::fs::remove_file(self.dir.join(old.file));
        }
        // Received copies are no longer needed (best effort, as above).
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for f in rd.flatten() {
                if f.file_name().to_string_lossy().starts_with("receiving-") {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let rec = lock(&self.current).clone();
        match rec {
            Some(rec) => Ok(Some(
                open_snapshot(&self.dir, &rec)
                    .await
                    .map_err(snap_err(ErrorVerb::Read))?,
            )),
            None => Ok(None),
        }
    }
}
