//! How a shard uses its durable log: appends durable writes, barriers them in batches, retires them
//! as cycles publish, replays them at open and attaches a fresh log afterwards, detaches at close.
//!
//! The superblock's `durable_log` field says whether a log may hold acknowledged writes that are in no
//! segment. The order of writes keeps it truthful through crashes:
//! - open: replay what the log holds into the write buffer, persist it and write a superblock naming
//!   no log; then attach (both header slots rewritten, barrier) and write a superblock naming the new
//!   epoch. A crash in between leaves a superblock naming no log, and nothing was acknowledged by it.
//! - close: persist everything, then a checkpoint (or a superblock) naming no log, so the database
//!   opens without the log device afterwards.

use super::{scan, DurableLog, LoggedWrite, NotLogged};
use crate::bdev::BlockDevice;
use crate::error::Error;
use crate::pmem::PersistentMemory;
use crate::recovery::RecoveryReport;
use crate::shard::Shard;

/// A shard's durable log: the region handed in at open, then the attached log.
#[derive(Default)]
pub(crate) enum DurableLogSlot {
    /// No durable log: durable writes wait for a persistence cycle.
    #[default]
    None,
    /// Recovery reads it; the open attaches it.
    Unattached(Box<dyn PersistentMemory>),
    Attached(Box<DurableLog>),
}

impl std::fmt::Debug for DurableLogSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DurableLogSlot::None => f.write_str("None"),
            DurableLogSlot::Unattached(m) => write!(f, "Unattached({})", m.kind()),
            DurableLogSlot::Attached(l) => write!(f, "{l:?}"),
        }
    }
}

impl DurableLogSlot {
    pub(crate) fn attached(&self) -> Option<&DurableLog> {
        match self {
            DurableLogSlot::Attached(l) => Some(l),
            _ => None,
        }
    }
    fn attached_mut(&mut self) -> Option<&mut DurableLog> {
        match self {
            DurableLogSlot::Attached(l) => Some(l),
            _ => None,
        }
    }
}

impl<D: BlockDevice> Shard<D> {
    /// Recovery: the writes the durable log of epoch `epoch` (the newest superblock's; 0: none)
    /// holds that are newer than `recovered_version` (everything the checkpoint and the segments
    /// hold), kept for [`Shard::commit_open`] to apply. Reads only.
    pub(crate) fn read_durable_log(
        &mut self,
        epoch: u64,
        recovered_version: u64,
        rep: &mut RecoveryReport,
    ) -> Result<(), Error> {
        let id = self.cfg.shard_id;
        let mem = match (&self.dlog, epoch) {
            (_, 0) => return Ok(()),
            (DurableLogSlot::Unattached(m), _) => m,
            _ => {
                return Err(Error::DurableLog(format!(
                    "shard {id}: the database has a durable log attached (epoch {epoch}) that may \
                     hold acknowledged writes no segment has; open it with that log device"
                )))
            }
        };
        let found = scan(&**mem, &self.ckpts.volume, id, epoch).map_err(|why| {
            Error::DurableLog(format!(
                "shard {id}: the durable log the superblock names (epoch {epoch}) is not on this \
                 device ({why}); nothing was written"
            ))
        })?;
        rep.durable_log_records = found.writes.len() as u64;
        rep.durable_log_stop = found.stop;
        self.dlog_replay = found
            .writes
            .into_iter()
            .filter(|w| w.version > recovered_version)
            .collect();
        rep.durable_log_replayed = self.dlog_replay.len() as u64;
        if let Some(last) = self.dlog_replay.last() {
            self.version_ctr = self.version_ctr.max(last.version);
            self.version_done = self.version_done.max(last.version);
        }
        for w in &self.dlog_replay {
            self.hlc.observe(w.ts);
        }
        Ok(())
    }

    /// Open: applies the writes recovery found in the durable log (before the open's checkpoint
    /// persists them). They were acknowledged: they may use the reserve, as GC moves do.
    pub(crate) fn apply_durable_log(&mut self) -> Result<(), Error> {
        let writes: Vec<LoggedWrite> = std::mem::take(&mut self.dlog_replay);
        for w in &writes {
            let mut found = self.index.find(&w.key);
            let value = (!w.tombstone).then_some(&w.value[..]);
            if value.is_none() && self.index.found_entry(&found).is_none() {
                continue;
            }
            self.write_found(&mut found, &w.key, value, w.ts, w.version, true)?;
        }
        Ok(())
    }

    /// Open, after the checkpoint that persisted everything: attaches the region as a new log and
    /// names it in the superblock. A region that cannot be attached (its barrier fails) leaves the
    /// shard without a log: durable writes take the cycle path, and the stats say why.
    pub(crate) fn attach_durable_log(&mut self) -> Result<(), Error> {
        let DurableLogSlot::Unattached(mem) = std::mem::take(&mut self.dlog) else {
            return Ok(());
        };
        // The sequence number of the superblock about to name it: unique within the volume.
        let epoch = self.ckpts.sb_seq + 1;
        let kind = mem.kind();
        match DurableLog::attach(mem, self.ckpts.volume, self.cfg.shard_id, epoch) {
            Ok(log) => {
                self.ckpts.durable_log = epoch;
                self.rewrite_superblock()?;
                self.stats.durable_log = Some(log.kind());
                self.dlog = DurableLogSlot::Attached(Box::new(log));
            }
            // The superblock on the device names no log: nothing depends on the region.
            Err(e) => self.stats.durable_log_failed = Some(format!("{kind}: cannot attach: {e}")),
        }
        Ok(())
    }

    /// Close: persists everything and writes a checkpoint naming no log (when the checkpoint is
    /// skipped for lack of space, a superblock alone), so the database opens without the log device
    /// afterwards.
    pub(crate) fn checkpoint_detached(&mut self) -> Result<(), Error> {
        let before = self.ckpts.sb_seq;
        let had = self.ckpts.durable_log != 0;
        self.ckpts.durable_log = 0;
        self.checkpoint()?;
        if had && self.ckpts.sb_seq == before {
            self.rewrite_superblock()?;
        }
        Ok(())
    }

    /// Appends a durable write to the log; returns its log sequence number, or 0 when it goes the
    /// cycle path (no log, the log full or failed, the record too large).
    pub(crate) fn log_durable(
        &mut self,
        durable: bool,
        key: &[u8],
        value: Option<&[u8]>,
        ts: u64,
        version: u64,
    ) -> u64 {
        if !durable {
            return 0;
        }
        let gen = self.active_gen;
        let Some(log) = self.dlog.attached_mut() else {
            return 0;
        };
        let (tombstone, value) = (value.is_none(), value.unwrap_or(&[]));
        let r = log.append(gen, tombstone, ts, version, key, value);
        // Past half full: start a cycle soon, so that retiring keeps up and writes stay on the log.
        let pressed = log.used() > log.capacity() / 2;
        match r {
            Ok(lsn) => {
                if pressed {
                    self.durable_wanted = self.durable_wanted.max(gen);
                }
                lsn
            }
            Err(why) => {
                match why {
                    NotLogged::Full => self.stats.durable_log_full += 1,
                    NotLogged::TooLarge => self.stats.durable_log_too_large += 1,
                    NotLogged::Failed => {}
                }
                0
            }
        }
    }

    /// Makes the durable-log records appended so far persistent (one barrier for all of them). When
    /// the barrier fails the log is not used again in this life, and the writes it did not cover are
    /// made durable by the next persistence cycle instead.
    pub fn flush_durable_log(&mut self) {
        let active = self.active_gen;
        let Some(log) = self.dlog.attached_mut() else {
            return;
        };
        if !log.barrier_due() {
            return;
        }
        let writes = log.unbarriered_writes;
        let t = std::time::Instant::now();
        let r = log.barrier();
        let ns = crate::persist::elapsed_ns(t);
        self.stats.durable_log_barriers += 1;
        self.stats.durable_log_barrier_ns_total += ns;
        self.stats.durable_log_barrier_ns_max = self.stats.durable_log_barrier_ns_max.max(ns);
        match r {
            Ok(()) => self.stats.durable_log_writes += writes,
            Err(e) => {
                self.stats.durable_log_failed = Some(e.to_string());
                self.stats.durable_cycle_writes += writes;
                self.durable_wanted = self.durable_wanted.max(active);
            }
        }
    }

    /// Whether the write `lsn` (0: not logged) of generation `gen` is durable, by its log record or by
    /// its persistence cycle.
    pub fn write_is_durable(&self, gen: u64, lsn: u64) -> bool {
        gen <= self.durable_gen || self.dlog.attached().is_some_and(|l| l.is_durable(lsn))
    }

    /// Cycles published up to `durable_gen`: their writes' log records are no longer needed.
    pub(crate) fn retire_durable_log(&mut self) {
        let g = self.durable_gen;
        if let Some(log) = self.dlog.attached_mut() {
            log.retire(g);
        }
    }

    /// After a failed cycle, reads of a write the durable log made durable cannot rely on its segment
    /// (its write or the Flush covering it failed): its value at `version` from the log, if the log
    /// holds it. The log is read once, at the first such read (no writes follow a failure).
    pub(crate) fn value_from_durable_log(&mut self, key: &[u8], version: u64) -> Option<Vec<u8>> {
        self.failed.as_ref()?;
        let log = self.dlog.attached()?;
        if self.dlog_reads.is_none() {
            let mut m = std::collections::HashMap::new();
            if let Ok(found) = log.scan_own() {
                for w in found.writes.into_iter().filter(|w| !w.tombstone) {
                    m.insert(w.key, (w.version, w.value));
                }
            }
            self.dlog_reads = Some(m);
        }
        let (v, value) = self.dlog_reads.as_ref()?.get(key)?;
        (*v == version).then(|| value.clone())
    }

    /// The durable log's figures for [`crate::ShardStats`].
    pub(crate) fn durable_log_stats(&self, s: &mut crate::ShardStats) {
        if let Some(log) = self.dlog.attached() {
            s.durable_log_used_bytes = log.used();
            s.durable_log_appended_bytes = log.appended();
            s.durable_log_capacity = log.capacity();
        }
    }
}
