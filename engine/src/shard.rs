//! One shard: the state a single core owns — its device instance, index, write buffers, free space, log —
//! and the operations on it. It is single-threaded by construction (`&mut self` everywhere); the `api`
//! module runs one per thread and routes keys to it. `persist`, `recovery` and `gc` add the rest of the
//! impl.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bdev::{BlockDevice, Completion, IoError};
use crate::buffer::WriteBuffer;
use crate::cache::SegmentCache;
use crate::checkpoint::Checkpoints;
use crate::durable_log::{DurableLogSlot, LoggedWrite};
use crate::error::{check_sizes, Error, MAX_VALUE_LEN};
use crate::format::{self, FormatError, REC_HDR_LEN, SEG_HDR_LEN};
use crate::hlc::Hlc;
use crate::index::{Entry, Found, Index};
use crate::log::Log;
use crate::persist::CyclePipeline;
use crate::space::FreeSpace;

/// Key-value pairs, as scans return them.
pub type KvPairs = Vec<(Vec<u8>, Vec<u8>)>;

/// A merge function: (key, old value, new value) → the value to store.
pub type MergeFn = Arc<dyn Fn(&[u8], &[u8], &[u8]) -> Vec<u8> + Send + Sync>;

/// What a put does when the key already exists.
#[derive(Clone)]
pub enum Conflict {
    /// The write with the higher timestamp wins (ties keep the existing value).
    LastWriterWins,
    /// The existing value stays unless the new write carries a strictly older timestamp.
    FirstWriterWins,
    /// The stored value becomes `merge(key, old, new)`.
    Merge(MergeFn),
}

impl std::fmt::Debug for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conflict::LastWriterWins => "LastWriterWins",
            Conflict::FirstWriterWins => "FirstWriterWins",
            Conflict::Merge(_) => "Merge",
        })
    }
}

/// Settings of one shard.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// This shard's number.
    pub shard_id: u32,
    /// Number of shards the device is split into.
    pub shard_count: u32,
    /// Write-buffer (and so maximum segment) size in bytes; rounded up to whole blocks.
    pub buffer_bytes: usize,
    /// A buffer holding writes is persisted at the latest this long after its first write.
    pub commit_interval: Duration,
    /// A checkpoint of the index is written once the log written since the last one holds at least this
    /// many write buffers' worth of bytes and is at least as large as the checkpoint (see `persist`).
    pub checkpoint_every: u32,
    /// Conflict strategy.
    pub conflict: Conflict,
    /// Format a blank device.
    pub create: bool,
    /// Garbage collection runs while the free fraction of the slice is below this.
    pub gc_free_low: f64,
    /// Bytes of recently written segments kept in memory for reads (0: none). See [`crate::cache`].
    pub cache_bytes: usize,
    /// Segments written at once (each holds a write buffer until its write completes); at least 1.
    /// More absorb longer device stalls before writers wait (see the `persist` module).
    pub max_inflight_cycles: usize,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig {
            shard_id: 0,
            shard_count: 1,
            buffer_bytes: 256 << 10,
            commit_interval: Duration::from_millis(5),
            checkpoint_every: 64,
            conflict: Conflict::LastWriterWins,
            create: true,
            gc_free_low: 0.25,
            cache_bytes: DEFAULT_CACHE_BYTES,
            max_inflight_cycles: DEFAULT_INFLIGHT_CYCLES,
        }
    }
}

/// Default number of segments written at once per shard.
pub const DEFAULT_INFLIGHT_CYCLES: usize = 4;

/// Default segment-cache budget per shard.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// Options of one write.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOpts {
    /// Caller-supplied timestamp (None: the shard's hybrid logical clock).
    pub ts: Option<u64>,
    /// Acknowledge only once durable (the handle path waits; locally, see [`Shard::wait_durable`]).
    pub durable: bool,
}

/// Outcome of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteResult {
    /// False when the conflict strategy kept the existing value (or a delete found nothing).
    pub applied: bool,
    /// The key's version after the write.
    pub version: u64,
    /// The write's timestamp.
    pub ts: u64,
    /// Persistence generation holding the write: durable once [`Shard::durable_gen`] reaches it.
    pub gen: u64,
    /// The write's record in the durable log (0: none): durable once a barrier covers it, before its
    /// generation is (see [`Shard::write_is_durable`]).
    pub lsn: u64,
}

/// Version and timestamp of a stored value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Version.
    pub version: u64,
    /// Timestamp.
    pub ts: u64,
}

/// Statistics of one shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Shard number.
    pub shard: u32,
    /// Live keys.
    pub keys: u64,
    /// Bytes of live records on the device.
    pub live_bytes: u64,
    /// Bytes of segments not live (superseded records, tombstones).
    pub dead_bytes: u64,
    /// Free blocks in the slice.
    pub free_blocks: u64,
    /// Free extents.
    pub free_extents: u64,
    /// Segments on the device.
    pub segments: u64,
    /// Persistence cycles completed.
    pub cycles: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Checkpoints skipped for lack of space.
    pub checkpoints_skipped: u64,
    /// Segments cleaned by GC.
    pub gc_segments: u64,
    /// Bytes of live records GC moved.
    pub gc_bytes_moved: u64,
    /// Segments GC could not read or decode (left in place, not tried again).
    pub gc_unreadable: u64,
    /// Times space ran out so far that GC had to clean the fallback checkpoint's log.
    pub fallbacks_spent: u64,
    /// Segment writes that failed and were written again.
    pub write_retries: u64,
    /// Why the shard refuses writes (None: it takes them): a failed segment write or Flush. Reads of
    /// everything durable go on; reopening recovers.
    pub failed: Option<String>,
    /// Buffered records overwritten in place or squeezed out before being written.
    pub buffer_bytes_saved: u64,
    /// Requests waiting in the shard's queue when last looked at (handle path).
    pub queue_depth: u64,
    /// Writes waiting for durability (handle path).
    pub durable_waiters: u64,
    /// Reads of on-device records served by the segment cache.
    pub cache_hits: u64,
    /// Reads of on-device records that went to the device.
    pub cache_misses: u64,
    /// Bytes the segment cache holds.
    pub cache_bytes: u64,
    /// Full segments the cache did not keep because the memory for them was not ready yet.
    pub cache_skipped: u64,
    /// Segment writes completed, their total and longest time from submission to completion (ns).
    pub write_ns_total: u64,
    pub write_ns_max: u64,
    /// Flushes of persistence cycles completed, their total and longest time (ns).
    pub flushes: u64,
    pub flush_ns_total: u64,
    pub flush_ns_max: u64,
    /// Seals of the active buffer into a segment write (checksum, the segment cache's copy, the
    /// submission), their total and longest time (ns): work on the path of the write that filled it.
    pub seals: u64,
    pub seal_ns_total: u64,
    pub seal_ns_max: u64,
    /// Writes that found every cycle slot busy and waited for the device to finish a segment write
    /// (the device slower than the writes), their total and longest wait (ns).
    pub device_waits: u64,
    pub device_wait_ns_total: u64,
    pub device_wait_ns_max: u64,
    /// Time spent writing checkpoints (the shard does nothing else meanwhile), total and longest (ns).
    pub checkpoint_ns_total: u64,
    pub checkpoint_ns_max: u64,
    /// The durable log's kind ("pmr", "devdax", "memory", ...; None: no durable log, durable writes
    /// wait for a persistence cycle).
    pub durable_log: Option<&'static str>,
    /// Durable writes acknowledged by their durable-log record (counted at its barrier).
    pub durable_log_writes: u64,
    /// Durable writes acknowledged by a persistence cycle (no log, log full, record too large, log
    /// failed).
    pub durable_cycle_writes: u64,
    /// Of those, the ones the log was full for, and the ones too large for it.
    pub durable_log_full: u64,
    pub durable_log_too_large: u64,
    /// Barriers of the durable log, their total and longest time (ns).
    pub durable_log_barriers: u64,
    pub durable_log_barrier_ns_total: u64,
    pub durable_log_barrier_ns_max: u64,
    /// Bytes of unretired records, and of the record area; bytes appended since the log was
    /// attached (divided by the capacity: how many times it went round).
    pub durable_log_used_bytes: u64,
    pub durable_log_appended_bytes: u64,
    pub durable_log_capacity: u64,
    /// Why the durable log takes no more writes (a barrier failed), if it does not.
    pub durable_log_failed: Option<String>,
}

/// A cycle's segment write: this bit plus the generation.
pub(crate) const TAG_CYCLE_WRITE: u64 = 1 << 63;
pub(crate) const TAG_CYCLE_FLUSH: u64 = 2;
pub(crate) const TAG_SYNC_FIRST: u64 = 1 << 32;

/// One shard over the device `D`.
pub struct Shard<D: BlockDevice> {
    pub(crate) dev: D,
    pub(crate) cfg: ShardConfig,
    /// Block size.
    pub(crate) bs: u64,
    /// Device LBA of the slice's first block.
    pub(crate) base: u64,
    pub(crate) slice_blocks: u64,
    /// Write-buffer size in blocks (also the size of a log reservation).
    pub(crate) buf_blocks: u64,
    pub(crate) index: Index,
    pub(crate) active: WriteBuffer<D::Buf>,
    pub(crate) active_gen: u64,
    pub(crate) active_since: Option<Instant>,
    /// Write buffers not in use (returned by completed segment writes).
    pub(crate) spares: Vec<D::Buf>,
    /// Segments being written and the Flush that makes them durable.
    pub(crate) pipeline: CyclePipeline<D::Buf>,
    pub(crate) durable_gen: u64,
    /// Highest generation someone waits on (group commit: triggers a cycle when nothing is in flight).
    pub(crate) durable_wanted: u64,
    pub(crate) space: FreeSpace,
    /// The log: live segments, its head, sequence and chain, extents waiting to be freed.
    pub(crate) log: Log,
    /// The checkpoints and superblock state: volume, life, epoch, the newest and the fallback.
    pub(crate) ckpts: Checkpoints,
    pub(crate) hlc: Hlc,
    pub(crate) version_ctr: u64,
    /// Every write with a version up to this one has its record in the write buffer (or a segment):
    /// what a checkpoint (after its sync) may promise to hold. Behind `version_ctr` while a write that
    /// took a version is being appended (a checkpoint can happen inside it, to make room).
    pub(crate) version_done: u64,
    pub(crate) sync_done: Vec<Completion<D::Buf>>,
    pub(crate) polled: Vec<Completion<D::Buf>>,
    pub(crate) next_tag: u64,
    pub(crate) stats: ShardStats,
    /// A failed cycle makes the shard refuse writes: durability can no longer be promised.
    pub(crate) failed: Option<IoError>,
    /// Why the active buffer could not be sealed when last tried (see [`Shard::cycle_error`]).
    pub(crate) cycle_error: Option<Error>,
    /// Inside `make_room` (it must not recurse through the writes it makes).
    pub(crate) making_room: bool,
    /// Device buffer reused by reads of single records (no allocation per read).
    pub(crate) read_buf: Option<D::Buf>,
    /// Copies of the newest segments, for reads.
    pub(crate) cache: SegmentCache,
    /// The durable log (persistent memory), if the shard has one.
    pub(crate) dlog: DurableLogSlot,
    /// Writes recovery found in the durable log, for the open to apply.
    pub(crate) dlog_replay: Vec<LoggedWrite>,
    /// After a failed cycle: the values the durable log holds, by key (version, value), for reads.
    pub(crate) dlog_reads: Option<crate::durable_log::LoggedValues>,
}

/// Largest read buffer a shard keeps for reuse.
const READ_BUF_KEEP: usize = 256 << 10;

impl<D: BlockDevice> std::fmt::Debug for Shard<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("id", &self.cfg.shard_id)
            .field("keys", &self.index.len())
            .finish()
    }
}

impl<D: BlockDevice> Shard<D> {
    /// The largest value this shard accepts: the engine limit, or what fits in one write buffer.
    pub fn max_value_len(&self) -> usize {
        let room = self.active.capacity() - SEG_HDR_LEN - REC_HDR_LEN - crate::error::MAX_KEY_LEN;
        MAX_VALUE_LEN.min(room)
    }

    /// This shard's number.
    pub fn id(&self) -> u32 {
        self.cfg.shard_id
    }

    /// Generations up to this one are durable.
    pub fn durable_gen(&self) -> u64 {
        self.durable_gen
    }

    /// The error that stopped writes, if one did.
    pub fn sync_failed(&self) -> Option<Error> {
        self.failed.clone().map(Error::Io)
    }

    /// Why the last attempt to start a persistence cycle failed (None once one starts): writes of
    /// generation [`Shard::active_gen`] and later are not on their way to the device.
    pub fn cycle_error(&self) -> Option<Error> {
        self.cycle_error.clone()
    }

    /// The generation the active write buffer will be persisted as.
    pub fn active_gen(&self) -> u64 {
        self.active_gen
    }

    pub(crate) fn check_writable(&self) -> Result<(), Error> {
        match &self.failed {
            Some(e) => Err(Error::Io(e.clone())),
            None => Ok(()),
        }
    }

    /// Blocks kept free for what must always proceed: the next checkpoint, one segment of GC moves
    /// and the reservation of the segment after the active one.
    pub(crate) fn reserve_blocks(&self) -> u64 {
        // The next checkpoint frees the fallback's extents once it is in place: when the fallback is
        // smaller than a checkpoint now is, the one after it needs the difference as well.
        let est = self.ckpt_blocks_estimate();
        est + est.saturating_sub(self.fallback_blocks()) + 2 * self.buf_blocks
    }

    /// Blocks the fallback checkpoint occupies.
    pub(crate) fn fallback_blocks(&self) -> u64 {
        self.ckpts
            .fallback
            .as_ref()
            .map_or(0, |f| f.extents.iter().map(|e| e.1).sum())
    }

    /// Free blocks once a checkpoint now is in place: it takes its size and frees the fallback's
    /// extents.
    fn free_after_checkpoint(&self) -> u64 {
        (self.space.free_blocks() + self.fallback_blocks())
            .saturating_sub(self.ckpt_blocks_estimate())
    }

    /// Whether a checkpoint now leaves room for the one after it (so GC can always be let further).
    pub(crate) fn checkpoint_keeps_next(&self) -> bool {
        self.free_after_checkpoint() >= self.ckpt_blocks_estimate() + self.buf_blocks
    }

    /// Whether a checkpoint now leaves the reserve whole. A due checkpoint waits otherwise: when space
    /// is short, `make_room` takes one only to let GC reach what the log since the last one holds.
    pub(crate) fn checkpoint_affordable(&self) -> bool {
        self.free_after_checkpoint() >= self.reserve_blocks()
    }

    /// Free blocks new data needs before it is buffered: the reserve and a buffer's worth.
    pub(crate) fn room_for_puts(&self) -> u64 {
        self.reserve_blocks() + self.buf_blocks
    }

    /// Free blocks a delete asks to keep: the reserve less the buffer puts keep beyond it. Deletes
    /// make room (the record they kill is at least as long as their tombstone), but only a checkpoint
    /// and GC give it back, and those need the reserve.
    pub(crate) fn room_for_deletes(&self) -> u64 {
        self.reserve_blocks()
    }

    /// Everything in use — live segments, both checkpoints, the log reservation, extents waiting to be
    /// freed — is disjoint, and disjoint from the free space, and together they cover the slice. O(n):
    /// debug builds check it after every cycle and checkpoint.
    pub(crate) fn check_space(&self) {
        if !cfg!(debug_assertions) || self.log.segments.len() > 512 {
            return;
        }
        let mut used: Vec<(u64, u64, &str)> = self
            .log
            .segments
            .iter()
            .map(|(&l, s)| (l, u64::from(s.blocks), "segment"))
            .collect();
        used.extend(
            self.ckpts
                .current
                .extents
                .iter()
                .map(|&(l, n)| (l, n, "checkpoint")),
        );
        if let Some(p) = &self.ckpts.fallback {
            used.extend(
                p.extents
                    .iter()
                    .map(|&(l, n)| (l, n, "fallback checkpoint")),
            );
        }
        used.push((self.log.head.0, self.log.head.1, "log head"));
        used.extend(
            self.log
                .pending_free
                .iter()
                .map(|&(_, l, n)| (l, n, "pending free")),
        );
        used.extend(self.space.iter().map(|(l, n)| (l, n, "free")));
        used.sort_unstable();
        let mut at = format::SB_BLOCKS;
        let mut last = "superblocks";
        for (l, n, what) in used {
            assert!(l >= at, "{what} at {l}+{n} overlaps {last} ending at {at}");
            at = l + n;
            last = what;
        }
    }

    /// Marks the record `e` points at dead in its segment's accounting (a record in the active buffer
    /// is in no segment yet: the buffer's own count left it out when it was replaced).
    pub(crate) fn kill(&mut self, e: &Entry, key_len: usize) {
        if self.buffered_off(e).is_none() {
            self.log.kill(e, key_len, self.bs);
        }
    }

    /// Where the active buffer's records are: the byte offset of the log head in the slice, where the
    /// buffer will be written. An entry whose record is in the buffer holds that offset plus the
    /// record's place in the buffer, so sealing the buffer changes no entry.
    fn active_base(&self) -> u64 {
        self.log.head.0 * self.bs
    }

    /// The place in the active buffer of the record `e` points at, when it is there. Nothing else is in
    /// that range: the log head's reservation was free space, and the records appended since are below
    /// the buffer's length.
    pub(crate) fn buffered_off(&self, e: &Entry) -> Option<u32> {
        let off = e.loc.checked_sub(self.active_base())?;
        (off >= SEG_HDR_LEN as u64 && off < self.active.len() as u64).then_some(off as u32)
    }

    /// Appends a record (`value` None: a tombstone) to the active buffer, making room first
    /// (compaction, or a new cycle); returns its buffer offset.
    pub(crate) fn append(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
        ts: u64,
        version: u64,
        check_room: bool,
        found: &mut Found,
    ) -> Result<u32, Error> {
        let (tombstone, value) = (value.is_none(), value.unwrap_or(&[]));
        let rl = format::record_len(key.len(), value.len());
        if check_room {
            // New data may not eat into the reserve that deletes, GC moves, checkpoints, `sync` and
            // `close` need: clean first, or refuse the write. Deletes may use the reserve, except the
            // part GC needs to give their space back.
            let need = if tombstone {
                self.room_for_deletes()
            } else {
                self.room_for_puts()
            };
            if self.space.free_blocks() < need {
                match self.make_room(need) {
                    Ok(()) => {}
                    // A delete goes on with what is left (it is how room is made), down to what the
                    // next checkpoint (which lets GC give the space back) and one seal need.
                    Err(Error::NoSpace)
                        if tombstone
                            && self.space.free_blocks()
                                >= self.ckpt_blocks_estimate() + self.buf_blocks => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let mut tries = 0;
        while !self.active.fits(rl) {
            if self.active.fits_after_compaction(rl) && self.active.worth_compacting() {
                self.compact_active();
                continue;
            }
            tries += 1;
            if tries > 2 {
                return Err(Error::NoSpace);
            }
            self.wait_cycle_slot()?;
            // The next reservation must hold this record (the current one may be a small extent).
            let need = ((SEG_HDR_LEN + rl) as u64).div_ceil(self.bs);
            // (Not for GC's own moves: cleaning does not wait for cleaning.)
            if check_room && self.active.is_empty() && self.space.largest() < need {
                self.make_room(self.room_for_deletes())?;
            }
            self.seal_cycle(need)?;
        }
        // The key's record in this buffer, if its newest is one (looked up after making room: a
        // compaction or a new cycle may have moved it).
        self.index.refresh(found, key);
        let prev = self
            .index
            .found_entry(found)
            .and_then(|e| self.buffered_off(&e));
        let before = self.active.len() + self.active.dead_bytes();
        let off = self.active.append(prev, tombstone, ts, version, key, value);
        if self.active.len() + self.active.dead_bytes() == before {
            self.stats.buffer_bytes_saved += rl as u64;
        }
        if self.active_since.is_none() {
            self.active_since = Some(Instant::now());
        }
        Ok(off)
    }

    /// Squeezes dead records out of the active buffer, fixing the index offsets of moved records.
    pub(crate) fn compact_active(&mut self) {
        let saved = self.active.dead_bytes() as u64;
        let base = self.active_base();
        let index = &mut self.index;
        self.active.compact(|key, old, new| {
            let followed = index.update(key, |e| {
                let here = e.loc == base + u64::from(old);
                if here {
                    e.loc = base + u64::from(new);
                }
                here
            });
            // A record the buffer did not list as dead is the key's newest.
            debug_assert_eq!(
                followed,
                Some(true),
                "a moved record the index does not point at"
            );
        });
        self.stats.buffer_bytes_saved += saved;
    }

    /// Writes `value` (or a tombstone) for `key` with the given timestamp and version, updating the index.
    pub(crate) fn write_record(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
        ts: u64,
        version: u64,
        moving: bool,
    ) -> Result<(), Error> {
        let mut found = self.index.find(key);
        self.write_found(&mut found, key, value, ts, version, moving)
    }

    /// [`Shard::write_record`] for a key already looked up.
    pub(crate) fn write_found(
        &mut self,
        found: &mut Found,
        key: &[u8],
        value: Option<&[u8]>,
        ts: u64,
        version: u64,
        moving: bool,
    ) -> Result<(), Error> {
        if value.is_some() && !found.is_present() && !self.index.has_room(key) {
            return Err(Error::NoSpace);
        }
        // GC moves may use the whole reserve: they make room, never take it.
        let off = self.append(key, value, ts, version, !moving, found)?;
        // The cache's memory for a later segment is faulted in a little per write, not on a seal.
        self.cache
            .step(format::record_len(key.len(), value.map_or(0, <[u8]>::len)));
        // After the append: it may have sealed the buffer and moved the log head.
        let loc = self.active_base() + u64::from(off);
        if !moving {
            self.version_done = self.version_done.max(version);
        }
        let old = match value {
            Some(v) => self
                .index
                .set_found(
                    found,
                    key,
                    Entry {
                        loc,
                        val_len: v.len() as u32,
                        ts,
                        version,
                    },
                )
                .map_err(|_| Error::NoSpace)?,
            None => self.index.remove_found(found, key),
        };
        if let Some(old) = old {
            self.kill(&old, key.len());
        }
        Ok(())
    }

    fn stamp(&mut self, ts: Option<u64>) -> u64 {
        match ts {
            Some(t) => {
                self.hlc.observe(t);
                t
            }
            None => self.hlc.now(),
        }
    }

    fn next_version(&mut self) -> u64 {
        self.version_ctr += 1;
        // Half way through this life's version range: start a new life at the next checkpoint, long
        // before the range runs out (the superblock then guarantees the next range to a later open).
        let used = self.version_ctr - (self.ckpts.life << format::LIFE_SHIFT);
        if used >= 1 << (format::LIFE_SHIFT - 1)
            && self.version_ctr >> format::LIFE_SHIFT == self.ckpts.life
        {
            self.ckpts.life += 1;
            self.ckpts.life_unwritten = true;
            self.ckpts.due = true;
        }
        assert!(
            self.version_ctr < (self.ckpts.life + 1) << format::LIFE_SHIFT,
            "version counter left its life's range"
        );
        self.version_ctr
    }

    fn result(&mut self, applied: bool, version: u64, ts: u64, durable: bool) -> WriteResult {
        self.result_logged(applied, version, ts, durable, 0)
    }

    /// The outcome of a write whose durable-log record (if any) is `lsn`.
    fn result_logged(
        &mut self,
        applied: bool,
        version: u64,
        ts: u64,
        durable: bool,
        lsn: u64,
    ) -> WriteResult {
        let gen = if applied {
            self.active_gen
        } else {
            self.durable_gen.min(self.active_gen)
        };
        // A logged write is counted when its barrier succeeds or fails (`flush_durable_log`).
        if durable && applied && lsn == 0 {
            self.durable_wanted = self.durable_wanted.max(gen);
            self.stats.durable_cycle_writes += 1;
        }
        WriteResult {
            applied,
            version,
            ts,
            gen,
            lsn,
        }
    }

    /// Stores `value` under `key`, subject to the conflict strategy.
    pub fn put(&mut self, key: &[u8], value: &[u8], opts: WriteOpts) -> Result<WriteResult, Error> {
        check_sizes(key, Some(value), self.max_value_len())?;
        self.check_writable()?;
        let ts = self.stamp(opts.ts);
        let mut found = self.index.find(key);
        let existing = self.index.found_entry(&found);
        let merged;
        let value = match (existing, &self.cfg.conflict) {
            (None, _) => value,
            (Some(e), Conflict::LastWriterWins) => {
                if ts <= e.ts {
                    return Ok(self.result(false, e.version, e.ts, false));
                }
                value
            }
            (Some(e), Conflict::FirstWriterWins) => {
                if opts.ts.is_none_or(|t| t >= e.ts) {
                    return Ok(self.result(false, e.version, e.ts, false));
                }
                value
            }
            (Some(e), Conflict::Merge(f)) => {
                let f = f.clone();
                let old = self.read_value(key, &e)?;
                merged = f(key, &old, value);
                check_sizes(key, Some(&merged), self.max_value_len())?;
                &merged
            }
        };
        let version = self.next_version();
        self.write_found(&mut found, key, Some(value), ts, version, false)?;
        let lsn = self.log_durable(opts.durable, key, Some(value), ts, version);
        Ok(self.result_logged(true, version, ts, opts.durable, lsn))
    }

    /// Deletes `key` (with last-writer-wins, only when the delete is newer than the stored value).
    pub fn delete(&mut self, key: &[u8], opts: WriteOpts) -> Result<WriteResult, Error> {
        check_sizes(key, None, 0)?;
        self.check_writable()?;
        let ts = self.stamp(opts.ts);
        let mut found = self.index.find(key);
        let Some(e) = self.index.found_entry(&found) else {
            return Ok(self.result(false, 0, ts, false));
        };
        if matches!(self.cfg.conflict, Conflict::LastWriterWins) && ts <= e.ts {
            return Ok(self.result(false, e.version, e.ts, false));
        }
        let version = self.next_version();
        self.write_found(&mut found, key, None, ts, version, false)?;
        let lsn = self.log_durable(opts.durable, key, None, ts, version);
        Ok(self.result_logged(true, version, ts, opts.durable, lsn))
    }

    /// Compare-and-swap: when the key's version is `expected` (None: the key is absent), store `new`
    /// (None: delete). The conflict strategy does not apply: the version check decides.
    pub fn cas(
        &mut self,
        key: &[u8],
        expected: Option<u64>,
        new: Option<&[u8]>,
        opts: WriteOpts,
    ) -> Result<WriteResult, Error> {
        check_sizes(key, new, self.max_value_len())?;
        self.check_writable()?;
        let mut found = self.index.find(key);
        let current = self.index.found_entry(&found).map(|e| e.version);
        if current != expected {
            return Err(Error::VersionMismatch { current });
        }
        let ts = self.stamp(opts.ts);
        if new.is_none() && current.is_none() {
            return Ok(self.result(false, 0, ts, false));
        }
        let version = self.next_version();
        self.write_found(&mut found, key, new, ts, version, false)?;
        let lsn = self.log_durable(opts.durable, key, new, ts, version);
        Ok(self.result_logged(true, version, ts, opts.durable, lsn))
    }

    /// Adds `delta` to the 8-byte little-endian integer under `key` (absent counts as 0); returns the sum.
    pub fn incr(
        &mut self,
        key: &[u8],
        delta: i64,
        opts: WriteOpts,
    ) -> Result<(i64, WriteResult), Error> {
        check_sizes(key, None, 0)?;
        self.check_writable()?;
        let mut found = self.index.find(key);
        let cur = match self.index.found_entry(&found) {
            None => 0,
            Some(e) => {
                let v = self.read_value(key, &e)?;
                let b: [u8; 8] = v.as_slice().try_into().map_err(|_| Error::NotAnInteger)?;
                i64::from_le_bytes(b)
            }
        };
        let sum = cur.checked_add(delta).ok_or(Error::Overflow)?;
        let ts = self.stamp(opts.ts);
        let version = self.next_version();
        let bytes = sum.to_le_bytes();
        self.write_found(&mut found, key, Some(&bytes), ts, version, false)?;
        let lsn = self.log_durable(opts.durable, key, Some(&bytes), ts, version);
        Ok((
            sum,
            self.result_logged(true, version, ts, opts.durable, lsn),
        ))
    }

    /// The value under `key`, with its version and timestamp.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<(Vec<u8>, Meta)>, Error> {
        let mut v = Vec::new();
        Ok(self.get_into(key, &mut v)?.map(|m| (v, m)))
    }

    /// Like [`Shard::get`], into `out` (replaced): a caller reusing `out` reads without allocating.
    pub fn get_into(&mut self, key: &[u8], out: &mut Vec<u8>) -> Result<Option<Meta>, Error> {
        check_sizes(key, None, 0)?;
        let Some(e) = self.index.get(key) else {
            return Ok(None);
        };
        self.read_value_into(key, &e, out)?;
        Ok(Some(Meta {
            version: e.version,
            ts: e.ts,
        }))
    }

    /// Up to `limit` (key, value) pairs with `start <= key < end`, in key order.
    pub fn scan(
        &mut self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<KvPairs, Error> {
        let hits: Vec<(Vec<u8>, Entry)> = self
            .index
            .range(start, end)
            .take(limit)
            .map(|(k, e)| (k.to_vec(), e))
            .collect();
        let mut out = Vec::with_capacity(hits.len());
        for (k, e) in hits {
            let v = self.read_value(&k, &e)?;
            out.push((k, v));
        }
        Ok(out)
    }

    /// Reads the value an index entry points at, checking the record it comes from.
    pub(crate) fn read_value(&mut self, key: &[u8], e: &Entry) -> Result<Vec<u8>, Error> {
        let mut v = Vec::new();
        self.read_value_into(key, e, &mut v)?;
        Ok(v)
    }

    /// [`Shard::read_value`] into `out` (replaced).
    pub(crate) fn read_value_into(
        &mut self,
        key: &[u8],
        e: &Entry,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        out.clear();
        if let Some(off) = self.buffered_off(e) {
            let r = self.active.record(off as usize)?;
            if r.key != key
                || r.tombstone
                || r.value.len() != e.val_len as usize
                || r.version != e.version
            {
                return Err(Error::Corrupt(FormatError::BadField(
                    "buffered record does not match the index",
                )));
            }
            out.extend_from_slice(r.value);
            return Ok(());
        }
        let rl = format::record_len(key.len(), e.val_len as usize) as u64;
        let first = e.loc / self.bs;
        let nblocks = (e.loc + rl).div_ceil(self.bs) - first;
        let off = (e.loc - first * self.bs) as usize;
        if let Some(blocks) = self.cache.get(first, nblocks) {
            let v = checked_value(
                &blocks[off..],
                key,
                e,
                "cached record does not match the index",
            )?;
            out.extend_from_slice(v);
            return Ok(());
        }
        // After a failed cycle the segment may not be on the device: the durable log has the value
        // of a write it made durable.
        if let Some(v) = self.value_from_durable_log(key, e.version) {
            out.extend_from_slice(&v);
            return Ok(());
        }
        // A record in a segment being written: wait until the device has it.
        self.drive_write_holding(e.loc / self.bs)?;
        let need = (nblocks * self.bs) as usize;
        let buf = match self.read_buf.take() {
            Some(b) if b.len() >= need => b,
            _ => self.dev.alloc_buf(need)?,
        };
        let buf = self.sync_read(first, nblocks as u32, buf)?;
        let checked = checked_value(&buf[off..need], key, e, "record does not match the index")
            .map(|v| out.extend_from_slice(v));
        if buf.len() <= READ_BUF_KEEP {
            self.read_buf = Some(buf);
        }
        checked
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when the shard holds no key.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Current statistics.
    pub fn stats(&self) -> ShardStats {
        let mut s = self.stats.clone();
        s.shard = self.cfg.shard_id;
        s.keys = self.index.len() as u64;
        (s.live_bytes, s.dead_bytes) = self.log.live_and_dead(self.bs);
        s.free_blocks = self.space.free_blocks();
        s.free_extents = self.space.extents() as u64;
        s.segments = self.log.segments.len() as u64;
        s.cache_hits = self.cache.hits;
        s.cache_misses = self.cache.misses;
        s.cache_skipped = self.cache.skipped;
        s.cache_bytes = self.cache.bytes() as u64;
        self.durable_log_stats(&mut s);
        s
    }

    /// Does the periodic work: reaps completions, advances the cycle in flight, starts one when the
    /// commit interval has passed, the buffer has durable waiters or a checkpoint is due, and runs a GC
    /// step when space is short. Returns whether anything was done.
    pub fn tick(&mut self) -> Result<bool, Error> {
        let mut did = self.poll_dev() > 0;
        self.advance_cycle();
        if self.failed.is_none() {
            if self.ckpts.due && self.checkpoint_affordable() {
                self.checkpoint()?;
                did = true;
            } else if !self.active.is_empty() && self.cycle_slot_free() {
                let due = self
                    .active_since
                    .is_some_and(|t| t.elapsed() >= self.cfg.commit_interval);
                if due || self.durable_wanted >= self.active_gen {
                    // No reservation for the segment after this one: clean, then try once more;
                    // failing that, durable waiters are told now instead of waiting on.
                    let started = match self.start_cycle() {
                        Err(Error::NoSpace) => self
                            .make_room(self.room_for_deletes())
                            .and_then(|()| self.start_cycle()),
                        r => r,
                    };
                    self.cycle_error = started.as_ref().err().cloned();
                    started?;
                    did = true;
                }
            }
        }
        if self.failed.is_none() && self.gc_wanted() {
            did |= self.gc_step()?;
        }
        Ok(did)
    }

    /// Whether segment writes or their Flush are in flight (they progress only when polled).
    pub fn io_pending(&self) -> bool {
        !self.pipeline.is_idle()
    }

    /// Time until the commit interval of the active buffer runs out (None: nothing buffered).
    pub fn next_deadline(&self) -> Option<Duration> {
        self.active_since
            .map(|t| self.cfg.commit_interval.saturating_sub(t.elapsed()))
    }

    /// Persists everything written so far and waits for it.
    pub fn sync(&mut self) -> Result<(), Error> {
        self.check_writable()?;
        self.drive_cycle()?;
        if !self.active.is_empty() {
            self.start_cycle()?;
            self.drive_cycle()?;
        }
        self.check_writable()
    }

    /// Waits (polling the device) until generation `gen` is durable.
    pub fn wait_durable(&mut self, gen: u64) -> Result<(), Error> {
        while self.durable_gen < gen {
            self.check_writable()?;
            if self.cycle_slot_free() && self.active_gen == gen && !self.active.is_empty() {
                self.start_cycle()?;
            }
            self.advance_cycle();
            self.poll_dev();
        }
        Ok(())
    }

    /// Waits until write `w` is durable: its durable-log record covered by a barrier, else its
    /// persistence cycle published.
    pub fn wait_write(&mut self, w: &WriteResult) -> Result<(), Error> {
        if w.lsn != 0 {
            self.flush_durable_log();
            if self.write_is_durable(w.gen, w.lsn) {
                return Ok(());
            }
        }
        self.wait_durable(w.gen)
    }

    /// Persists everything and writes a checkpoint, so the next open replays nothing (and needs no
    /// durable log).
    pub fn close(mut self) -> Result<ShardStats, Error> {
        self.sync()?;
        self.checkpoint_detached()?;
        Ok(self.stats())
    }
}

/// Whether a record read back is the one the index entry describes.
fn matches_entry(r: &format::Record<'_>, key: &[u8], e: &Entry) -> bool {
    r.key == key && !r.tombstone && r.value.len() == e.val_len as usize && r.version == e.version
}

/// The value of the record at the start of `bytes`, checked (checksum, and against the index entry).
fn checked_value<'a>(
    bytes: &'a [u8],
    key: &[u8],
    e: &Entry,
    mismatch: &'static str,
) -> Result<&'a [u8], Error> {
    match format::decode_record(bytes) {
        Ok((r, _)) if matches_entry(&r, key, e) => Ok(r.value),
        Ok(_) => Err(Error::Corrupt(FormatError::BadField(mismatch))),
        Err(err) => Err(Error::Corrupt(err)),
    }
}
