//! Opening a shard, in two steps so that a failed open writes nothing:
//!
//! 1. [`Shard::probe`] reads only: the superblock copies, then a checkpoint (the newest, else the one
//!    kept before it) and the log that follows it, segment by segment along the chain (same volume,
//!    expected sequence number, the previous header's crc, epochs that never decrease), until one does
//!    not check out. It rebuilds the index, the live segments and the free-space trees, and checks
//!    that every index entry points into a live segment. A slice whose superblock area is all zeroes
//!    is [`SliceState::Blank`]; anything else that is not a recoverable nvkv slice is an error.
//! 2. [`Shard::commit_open`] writes: a blank slice is formatted (when the caller allows it); a
//!    recovered one gets a fresh checkpoint and superblock, which also starts a new life (a new
//!    version range) and a new epoch for the segments written from now on.
//!
//! [`Shard::open`] does both for one shard; the `api` layer probes every shard before any commits, so
//! a database with one damaged shard is refused as a whole, and a database is formatted only when
//! every shard is blank.

use std::collections::BTreeMap;

use crate::bdev::BlockDevice;
use crate::buffer::WriteBuffer;
use crate::cache::SegmentCache;
use crate::checkpoint::{Checkpoints, CkptPlace};
use crate::durable_log::DurableLogSlot;
use crate::error::Error;
use crate::format::{
    self, CkptRef, FormatError, SegmentHeader, Superblock, VolumeId, LIFE_SHIFT, SB_BLOCKS,
    SEG_HDR_LEN,
};
use crate::hlc::Hlc;
use crate::index::{Entry, Index};
use crate::log::{Log, SegInfo};
use crate::persist::CyclePipeline;
use crate::pmem::PersistentMemory;
use crate::shard::{Shard, ShardConfig, ShardStats, TAG_SYNC_FIRST};
use crate::space::FreeSpace;

/// What opening a shard found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Shard number.
    pub shard: u32,
    /// The slice was blank and has been formatted.
    pub formatted: bool,
    /// Sequence number of the newest valid superblock.
    pub superblock_seq: u64,
    /// Problems with superblock copies (one bad copy is survivable).
    pub superblock_errors: Vec<String>,
    /// Whether a checkpoint was loaded.
    pub checkpoint_loaded: bool,
    /// The newest checkpoint failed its checks and the one before it was used (with a longer replay).
    pub checkpoint_fallback: bool,
    /// Keys the checkpoint held.
    pub checkpoint_keys: u64,
    /// Problems loading checkpoints.
    pub checkpoint_errors: Vec<String>,
    /// Segments replayed after the checkpoint.
    pub segments_replayed: u64,
    /// Records replayed.
    pub records_replayed: u64,
    /// Why replay stopped (normally: the next segment is not there yet).
    pub replay_stop: String,
    /// Keys after recovery.
    pub keys: u64,
    /// Writes found in the durable log, and those of them newer than what the segments hold (applied).
    pub durable_log_records: u64,
    pub durable_log_replayed: u64,
    /// Why the durable-log scan stopped (empty: no log attached).
    pub durable_log_stop: String,
}

/// What [`Shard::probe`] found in the slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SliceState {
    /// Both superblock blocks are all zeroes: nothing was ever written here.
    Blank,
    /// A recovered nvkv slice of this volume. `pristine`: just formatted, never written to (an
    /// interrupted format of a multi-shard database leaves such slices beside blank ones).
    Database {
        /// The database's identity.
        volume: VolumeId,
        /// Formatted and never written to.
        pristine: bool,
    },
}

/// A segment read for replay: its header, the header's crc (the next one's chain value), and its
/// records as (offset in the segment, tombstone, timestamp, version, key, value length).
type ReplayedSegment = (
    SegmentHeader,
    u32,
    Vec<(usize, bool, u64, u64, Vec<u8>, usize)>,
);

/// The state one checkpoint and the log after it rebuild.
struct Rebuilt {
    /// The checkpoint loaded, and the fallback the newest superblock keeps (when that one was loaded).
    place: CkptPlace,
    kept: Option<CkptPlace>,
    index: Index,
    segments: BTreeMap<u64, SegInfo>,
    space: FreeSpace,
    next_seq: u64,
    log_head: (u64, u64),
    chain_crc: u32,
    version_ctr: u64,
    max_ts: u64,
}

impl<D: BlockDevice> Shard<D> {
    /// Opens (recovering, or formatting a blank slice when `cfg.create`) the slice of `dev` that
    /// `cfg.shard_id` owns. A slice that is neither blank nor a recoverable nvkv slice is refused
    /// without writing anything.
    pub fn open(dev: D, cfg: ShardConfig) -> Result<(Self, RecoveryReport), Error> {
        Self::open_with_log(dev, cfg, None)
    }

    /// Like [`Shard::open`], with `log` as the shard's durable log (persistent memory).
    pub fn open_with_log(
        dev: D,
        cfg: ShardConfig,
        log: Option<Box<dyn PersistentMemory>>,
    ) -> Result<(Self, RecoveryReport), Error> {
        let (mut shard, mut rep, state) = Self::probe_with_log(dev, cfg, log)?;
        let volume = match state {
            SliceState::Blank if shard.cfg.create => Some(
                format::new_volume_id()
                    .map_err(|e| Error::Config(format!("no random volume id: {e}")))?,
            ),
            SliceState::Blank => {
                return Err(Error::NotADatabase(
                    "blank device and `create` is off".into(),
                ))
            }
            SliceState::Database { .. } => None,
        };
        shard.commit_open(volume, &mut rep)?;
        Ok((shard, rep))
    }

    /// Reads the slice and rebuilds the shard's state from it; writes nothing.
    pub fn probe(dev: D, cfg: ShardConfig) -> Result<(Self, RecoveryReport, SliceState), Error> {
        Self::probe_with_log(dev, cfg, None)
    }

    /// Like [`Shard::probe`], with `log` as the shard's durable log: the writes it holds beyond the
    /// segments are read (and applied by [`Shard::commit_open`]).
    pub fn probe_with_log(
        mut dev: D,
        cfg: ShardConfig,
        log: Option<Box<dyn PersistentMemory>>,
    ) -> Result<(Self, RecoveryReport, SliceState), Error> {
        if let Some(m) = &log {
            if crate::durable_log::capacity(m.len()).is_none() {
                return Err(Error::DurableLog(format!(
                    "shard {}: a region of {} bytes is too small for a durable log (at least {})",
                    cfg.shard_id,
                    m.len(),
                    format::DLOG_DATA_START + format::DLOG_MIN_CAPACITY
                )));
            }
        }
        let bs = u64::from(dev.block_size());
        if cfg.shard_count == 0 || cfg.shard_id >= cfg.shard_count {
            return Err(Error::Config("shard id out of range".into()));
        }
        if !(512..=65536).contains(&bs) || !bs.is_power_of_two() {
            return Err(Error::Config(format!("unsupported block size {bs}")));
        }
        let slice_blocks = dev.num_blocks() / u64::from(cfg.shard_count);
        let buf_blocks = (cfg.buffer_bytes.max(4096) as u64).div_ceil(bs);
        if slice_blocks < SB_BLOCKS + 8 * buf_blocks {
            return Err(Error::Config(format!(
                "slice of {slice_blocks} blocks too small for {buf_blocks}-block buffers"
            )));
        }
        let cap = (buf_blocks * bs) as usize;
        let active = WriteBuffer::new(dev.alloc_buf(cap)?);
        let spares = vec![dev.alloc_buf(cap)?];
        let mut shard = Shard {
            base: u64::from(cfg.shard_id) * slice_blocks,
            dev,
            bs,
            slice_blocks,
            buf_blocks,
            index: Index::new(),
            active,
            active_gen: 1,
            active_since: None,
            spares,
            pipeline: CyclePipeline::new(),
            durable_gen: 0,
            durable_wanted: 0,
            space: FreeSpace::new(SB_BLOCKS, slice_blocks),
            log: Log {
                next_seq: 1,
                ..Default::default()
            },
            ckpts: Checkpoints::default(),
            hlc: Hlc::new(0),
            version_ctr: 0,
            version_done: 0,
            sync_done: Vec::new(),
            polled: Vec::new(),
            next_tag: TAG_SYNC_FIRST,
            stats: ShardStats::default(),
            failed: None,
            cycle_error: None,
            making_room: false,
            read_buf: None,
            cache: SegmentCache::new(cfg.cache_bytes, bs).with_segment_len(cap),
            dlog: log.map_or(DurableLogSlot::None, DurableLogSlot::Unattached),
            dlog_replay: Vec::new(),
            dlog_reads: None,
            cfg,
        };
        let mut rep = RecoveryReport {
            shard: shard.cfg.shard_id,
            ..Default::default()
        };
        let state = shard.recover(&mut rep)?;
        Ok((shard, rep, state))
    }

    /// Finishes an open: formats a blank slice as part of `volume` (Some), or writes the recovered
    /// state's checkpoint (None), starting a new life.
    pub fn commit_open(
        &mut self,
        volume: Option<VolumeId>,
        rep: &mut RecoveryReport,
    ) -> Result<(), Error> {
        match volume {
            Some(v) => {
                if self.ckpts.life != 0 && !(self.ckpts.sb_seq == 1 && self.index.is_empty()) {
                    return Err(Error::Config(
                        "formatting a slice that holds a database".into(),
                    ));
                }
                // A slice formatted and never written (an interrupted format) starts over.
                self.ckpts.sb_seq = 0;
                self.ckpts.current = CkptPlace::default();
                self.ckpts.fallback = None;
                self.log.segments.clear();
                self.log.next_seq = 1;
                self.ckpts.volume = v;
                self.ckpts.life = 1;
                self.ckpts.life_unwritten = true;
                self.space = FreeSpace::new(SB_BLOCKS, self.slice_blocks);
                let head = self.space.alloc(self.buf_blocks).ok_or(Error::NoSpace)?;
                self.log.head = (head, self.buf_blocks);
                self.active.set_limit((self.buf_blocks * self.bs) as usize);
                self.log.chain_crc = crc32c::crc32c(&v);
                self.version_ctr = 1 << LIFE_SHIFT;
                self.version_done = self.version_ctr;
                self.ckpts.durable_log = 0;
                self.checkpoint()?;
                rep.formatted = true;
                rep.superblock_seq = self.ckpts.sb_seq;
            }
            None => {
                if self.ckpts.life == 0 {
                    return Err(Error::Config("nothing recovered to commit".into()));
                }
                // The writes only the durable log held go into the log of segments, which the
                // checkpoint persists; its superblock names no durable log (the old one is done).
                self.apply_durable_log()?;
                self.ckpts.durable_log = 0;
                self.checkpoint()?;
            }
        }
        self.attach_durable_log()?;
        // A life not on the device could hand out versions an earlier life did.
        if self.ckpts.life_unwritten {
            return Err(Error::Unrecoverable(
                "the new life's superblock was not written".into(),
            ));
        }
        rep.keys = self.index.len() as u64;
        Ok(())
    }

    fn read_blocks(&mut self, lba: u64, n: u64) -> Result<D::Buf, Error> {
        if n == 0
            || lba.checked_add(n).is_none_or(|e| e > self.slice_blocks)
            || n > u64::from(u32::MAX)
        {
            return Err(Error::Corrupt(FormatError::BadField("extent")));
        }
        let buf = self.dev.alloc_buf((n * self.bs) as usize)?;
        self.sync_read(lba, n as u32, buf)
    }

    fn recover(&mut self, rep: &mut RecoveryReport) -> Result<SliceState, Error> {
        // Superblocks: both copies, newest valid first.
        let mut sbs: Vec<Superblock> = Vec::new();
        let mut blank = 0;
        for copy in 0..SB_BLOCKS {
            let mut b = self.read_blocks(copy, 1)?;
            let mut decoded = Superblock::decode(&b);
            if decoded.is_err() {
                // Once more: a transient bad read must not make a good copy look damaged.
                b = self.read_blocks(copy, 1)?;
                decoded = Superblock::decode(&b);
            }
            if b.iter().all(|&x| x == 0) {
                blank += 1;
                rep.superblock_errors.push(format!("copy {copy}: blank"));
                continue;
            }
            match decoded {
                Ok(sb) => {
                    self.check_geometry(&sb)?;
                    sbs.push(sb);
                }
                Err(FormatError::BadVersion(v)) => {
                    return Err(Error::NotADatabase(format!(
                        "shard {}: superblock of format version {v}; this build reads version {} \
                         only (no migration: export with the old build and import)",
                        self.cfg.shard_id,
                        format::FORMAT_VERSION
                    )))
                }
                Err(e) => rep.superblock_errors.push(format!("copy {copy}: {e}")),
            }
        }
        if sbs.is_empty() {
            if blank == SB_BLOCKS as usize {
                return Ok(SliceState::Blank);
            }
            return Err(Error::NotADatabase(format!(
                "shard {}: no valid nvkv superblock ({})",
                self.cfg.shard_id,
                rep.superblock_errors.join("; ")
            )));
        }
        sbs.sort_by_key(|s| std::cmp::Reverse(s.seq));
        if sbs.iter().any(|s| s.volume != sbs[0].volume) {
            return Err(Error::Unrecoverable(format!(
                "shard {}: the two superblock copies belong to different volumes",
                self.cfg.shard_id
            )));
        }
        let newest = sbs[0].clone();
        rep.superblock_seq = newest.seq;
        self.ckpts.volume = newest.volume;

        // The checkpoints the superblocks reference, newest first; the first that rebuilds a
        // consistent state wins. The one kept before the newest has its log intact behind it.
        let mut candidates: Vec<CkptRef> = Vec::new();
        for sb in &sbs {
            for c in std::iter::once(sb.ckpt).chain(sb.prev) {
                if !candidates.contains(&c) {
                    candidates.push(c);
                }
            }
        }
        let mut chosen = None;
        for (i, c) in candidates.iter().enumerate() {
            match self.rebuild(c, &newest, rep) {
                Ok(r) => {
                    chosen = Some((i, *c, r));
                    break;
                }
                // The device failed a read: the open fails as such (nothing written), it does not
                // fall back to an older state.
                Err(e @ Error::Io(_)) => return Err(e),
                Err(e) => {
                    rep.checkpoint_errors
                        .push(format!("checkpoint at block {}: {e}", c.lba));
                    rep.segments_replayed = 0;
                    rep.records_replayed = 0;
                }
            }
        }
        let Some((i, _, r)) = chosen else {
            return Err(Error::Unrecoverable(format!(
                "shard {}: no checkpoint rebuilds a consistent index ({}); nothing was written — \
                 `nvkv salvage` copies what the segments hold",
                self.cfg.shard_id,
                rep.checkpoint_errors.join("; ")
            )));
        };
        rep.checkpoint_loaded = true;
        rep.checkpoint_fallback = i > 0;
        self.index = r.index;
        self.log.segments = r.segments;
        self.space = r.space;
        self.log.next_seq = r.next_seq;
        self.log.head = r.log_head;
        self.log.chain_crc = r.chain_crc;
        self.hlc.observe(r.max_ts);
        // The newest checkpoint's predecessor stays allocated until the next superblock no longer
        // references it (only when the newest itself was loaded: a damaged one is not kept).
        self.ckpts.current = r.place;
        self.ckpts.fallback = r.kept;
        self.ckpts.sb_seq = newest.seq;
        let life = sbs.iter().map(|s| s.life).max().unwrap_or(0) + 1;
        if life >= 1 << (64 - LIFE_SHIFT) {
            return Err(Error::Unrecoverable("version space exhausted".into()));
        }
        self.ckpts.life = life;
        self.ckpts.life_unwritten = true;
        // Nothing an earlier life handed out (persisted or lost in a crash) is handed out again.
        self.version_ctr = r.version_ctr.max(life << LIFE_SHIFT);
        // The open's checkpoint persists everything recovered (and replayed from the durable log).
        self.version_done = self.version_ctr;
        self.ckpts.durable_log = newest.durable_log;
        self.read_durable_log(newest.durable_log, r.version_ctr, rep)?;
        self.active.set_limit((self.log.head.1 * self.bs) as usize);
        rep.checkpoint_keys = self.index.len() as u64;
        rep.keys = self.index.len() as u64;
        let pristine = newest.seq == 1 && self.index.is_empty() && self.log.segments.is_empty();
        Ok(SliceState::Database {
            volume: self.ckpts.volume,
            pristine,
        })
    }

    /// Loads checkpoint `c`, replays the log after it and checks the result; touches no shard state.
    fn rebuild(
        &mut self,
        c: &CkptRef,
        newest: &Superblock,
        rep: &mut RecoveryReport,
    ) -> Result<Rebuilt, Error> {
        let (b, _) = self.read_checkpoint(c)?;
        let decoded = match format::decode_ckpt(&b, self.slice_blocks, self.bs as u32) {
            Ok(d) => d,
            // Once more before the checkpoint counts as damaged (a transient bad read).
            Err(_) => {
                let (b, _) = self.read_checkpoint(c)?;
                format::decode_ckpt(&b, self.slice_blocks, self.bs as u32)?
            }
        };
        let (h, extents, ckpt_segs, entries) = decoded;
        if h.shard_id != self.cfg.shard_id
            || h.volume != self.ckpts.volume
            || h.seg_seq != c.seg_seq
        {
            return Err(Error::Corrupt(FormatError::BadField(
                "checkpoint does not match its superblock",
            )));
        }
        let mut index = Index::new();
        let mut version_ctr = h.version_ctr;
        let mut max_ts = 0u64;
        for e in entries {
            max_ts = max_ts.max(e.ts);
            let entry = Entry {
                loc: e.loc,
                val_len: e.val_len,
                ts: e.ts,
                version: e.version,
            };
            if index
                .insert(&e.key, entry)
                .map_err(|_| Error::NoSpace)?
                .is_some()
            {
                return Err(Error::Corrupt(FormatError::BadField(
                    "checkpoint.duplicate_key",
                )));
            }
        }

        // Replay along the chain.
        let mut replayed: Vec<(u64, SegInfo)> = Vec::new();
        let (mut lba, mut reserved) = (c.log_lba, c.log_blocks);
        let mut expect = c.seg_seq + 1;
        let mut chain = c.log_prev;
        let mut epoch = h.sb_seq;
        rep.segments_replayed = 0;
        rep.records_replayed = 0;
        rep.replay_stop = loop {
            match self.read_segment_twice(lba, reserved, expect, chain, epoch, newest.seq + 1) {
                Ok(Some((hdr, crc, records))) => {
                    for (off, tomb, ts, version, key, value) in records {
                        max_ts = max_ts.max(ts);
                        version_ctr = version_ctr.max(version);
                        if tomb {
                            index.remove(&key);
                        } else {
                            let entry = Entry {
                                loc: lba * self.bs + off as u64,
                                val_len: value as u32,
                                ts,
                                version,
                            };
                            index.insert(&key, entry).map_err(|_| Error::NoSpace)?;
                        }
                        rep.records_replayed += 1;
                    }
                    rep.segments_replayed += 1;
                    replayed.push((
                        lba,
                        SegInfo {
                            seq: hdr.seq,
                            blocks: hdr.nblocks,
                            live: 0,
                        },
                    ));
                    lba = hdr.next_lba;
                    reserved = u64::from(hdr.next_blocks);
                    expect += 1;
                    chain = crc;
                    epoch = hdr.epoch;
                }
                Ok(None) => break format!("segment {expect} not written"),
                // A read that failed is not the end of the log: what follows may be there. The open
                // fails (typed, nothing written) rather than cut the log short.
                Err(e @ Error::Io(_)) => return Err(e),
                Err(e) => break format!("segment {expect}: {e}"),
            }
        };
        let log_head = (lba, reserved);
        // A fallback must replay at least what the newest checkpoint covered: a shorter log has holes
        // (GC cleaned it when space ran out) and would bring back an older state.
        if c.seg_seq < newest.ckpt.seg_seq && expect <= newest.ckpt.seg_seq {
            return Err(Error::Corrupt(FormatError::BadField(
                "the log after this checkpoint ends before the newest checkpoint's",
            )));
        }

        // Live segments: the checkpoint's, less those a replayed segment or the log head now occupies
        // (they were cleaned and their space reused), plus the replayed ones.
        let mut segs: BTreeMap<u64, SegInfo> = BTreeMap::new();
        let overlaps = |a: u64, an: u64, b: u64, bn: u64| a < b + bn && b < a + an;
        for s in ckpt_segs {
            let taken = replayed
                .iter()
                .any(|(l, r)| overlaps(s.lba, u64::from(s.blocks), *l, u64::from(r.blocks)))
                || overlaps(s.lba, u64::from(s.blocks), log_head.0, log_head.1);
            if !taken {
                let info = SegInfo {
                    seq: s.seq,
                    blocks: s.blocks,
                    live: 0,
                };
                if segs.insert(s.lba, info).is_some() {
                    return Err(Error::Corrupt(FormatError::BadField("checkpoint.segment")));
                }
            }
        }
        for (l, s) in replayed {
            segs.insert(l, s);
        }
        // Every entry must point inside a live segment's payload: one that does not means the
        // checkpoint and the log disagree, and this checkpoint is not used (never drop a key).
        let bs = self.bs;
        let mut stray = 0u64;
        for (k, e) in index.iter_unordered() {
            let blk = e.loc / bs;
            let end = e.loc + format::record_len(k.len(), e.val_len as usize) as u64;
            version_ctr = version_ctr.max(e.version);
            match segs.range_mut(..=blk).next_back() {
                Some((&l, s))
                    if e.loc >= l * bs + SEG_HDR_LEN as u64
                        && end <= (l + u64::from(s.blocks)) * bs =>
                {
                    s.live += end - e.loc;
                }
                _ => stray += 1,
            }
        }
        if stray > 0 {
            return Err(Error::Corrupt(FormatError::BadField(
                "index entries point outside the live segments",
            )));
        }

        // Free space: everything not used by a segment, this checkpoint, the one the newest
        // superblock keeps before it (still referenced until the next superblock) or the log head.
        let mut used: Vec<(u64, u64)> = segs
            .iter()
            .map(|(&l, s)| (l, u64::from(s.blocks)))
            .collect();
        let place = CkptPlace {
            r: *c,
            extents: std::iter::once((c.lba, c.blocks)).chain(extents).collect(),
        };
        used.extend(place.extents.iter().copied());
        let mut kept = None;
        if newest.ckpt == *c {
            if let Some(p) = newest.prev {
                // Its header names its extents; when it does not check out only the first is known
                // (a damaged fallback is of no use, its other extents may be reused).
                let k = match self.read_checkpoint(&p) {
                    Ok((_, x)) => x,
                    Err(_) => CkptPlace {
                        r: p,
                        extents: vec![(p.lba, p.blocks)],
                    },
                };
                used.extend(k.extents.iter().copied());
                kept = Some(k);
            }
        }
        used.push(log_head);
        let space = FreeSpace::with_used(SB_BLOCKS, self.slice_blocks, &mut used)
            .map_err(|e| Error::Corrupt(FormatError::BadField(overlap_what(&e))))?;
        Ok(Rebuilt {
            place,
            kept,
            index,
            segments: segs,
            space,
            next_seq: expect,
            log_head,
            chain_crc: chain,
            version_ctr,
            max_ts,
        })
    }

    /// Reads checkpoint `c` whole (its first extent names the others); returns its bytes, the
    /// extents concatenated, and where it lies.
    fn read_checkpoint(&mut self, c: &CkptRef) -> Result<(Vec<u8>, CkptPlace), Error> {
        let first = self.read_blocks(c.lba, c.blocks)?;
        let (_, more) = format::decode_ckpt_header(&first, self.slice_blocks)?;
        // Buffers may be longer than asked (whole pages): take exactly the extents' bytes.
        let mut all = first[..(c.blocks * self.bs) as usize].to_vec();
        for &(l, n) in &more {
            let b = self.read_blocks(l, n)?;
            all.extend_from_slice(&b[..(n * self.bs) as usize]);
        }
        let place = CkptPlace {
            r: *c,
            extents: std::iter::once((c.lba, c.blocks)).chain(more).collect(),
        };
        Ok((all, place))
    }

    fn check_geometry(&self, sb: &Superblock) -> Result<(), Error> {
        if u64::from(sb.block_size) != self.bs
            || sb.shard_count != self.cfg.shard_count
            || sb.shard_id != self.cfg.shard_id
            || sb.slice_blocks != self.slice_blocks
        {
            return Err(Error::Config(format!(
                "device formatted as shard {}/{} of {} blocks of {} bytes; opened as shard {}/{} of {} blocks of {}",
                sb.shard_id,
                sb.shard_count,
                sb.slice_blocks,
                sb.block_size,
                self.cfg.shard_id,
                self.cfg.shard_count,
                self.slice_blocks,
                self.bs
            )));
        }
        Ok(())
    }

    /// [`Self::read_segment`], and when what it finds is not the next segment, once more: the end of
    /// the log only when both reads agree. A segment that checks out on the second read is used; two
    /// reads that fail differently are a device error (unstable reads), never the end of the log.
    fn read_segment_twice(
        &mut self,
        lba: u64,
        reserved: u64,
        expect: u64,
        chain: u32,
        min_epoch: u64,
        max_epoch: u64,
    ) -> Result<Option<ReplayedSegment>, Error> {
        let first = self.read_segment(lba, reserved, expect, chain, min_epoch, max_epoch);
        match &first {
            Ok(Some(_)) | Err(Error::Io(_)) => return first,
            _ => {}
        }
        let second = self.read_segment(lba, reserved, expect, chain, min_epoch, max_epoch);
        match (&first, &second) {
            (_, Ok(Some(_))) | (_, Err(Error::Io(_))) => second,
            (Ok(None), Ok(None)) => first,
            (Err(a), Err(b)) if a == b => first,
            _ => Err(Error::Io(crate::bdev::IoError::Device(libc::EIO))),
        }
    }

    /// Reads and checks segment `expect` at `lba`: it must belong to this volume and shard, carry the
    /// chain value `chain` and an epoch in `min_epoch..=max_epoch`. None when what is there is not
    /// that segment (the end of the log).
    fn read_segment(
        &mut self,
        lba: u64,
        reserved: u64,
        expect: u64,
        chain: u32,
        min_epoch: u64,
        max_epoch: u64,
    ) -> Result<Option<ReplayedSegment>, Error> {
        let first = self.read_blocks(lba, 1)?;
        let (hdr, crc) = match SegmentHeader::decode(&first, self.bs as u32) {
            Ok(h) => h,
            Err(FormatError::BadMagic(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        // Another volume, another place in the log, another branch of it, or an earlier life: not
        // the segment the chain continues with.
        if hdr.volume != self.ckpts.volume
            || hdr.seq != expect
            || hdr.prev_crc != chain
            || hdr.epoch < min_epoch
            || hdr.epoch > max_epoch
        {
            return Ok(None);
        }
        if hdr.shard_id != self.cfg.shard_id || u64::from(hdr.nblocks) > reserved {
            return Err(Error::Corrupt(FormatError::BadField("segment header")));
        }
        let next_ok = hdr.next_lba >= SB_BLOCKS
            && hdr
                .next_lba
                .checked_add(u64::from(hdr.next_blocks))
                .is_some_and(|e| e <= self.slice_blocks);
        if !next_ok {
            return Err(Error::Corrupt(FormatError::BadField("segment.next")));
        }
        let all = if hdr.nblocks > 1 {
            self.read_blocks(lba, u64::from(hdr.nblocks))?
        } else {
            first
        };
        let payload = hdr.check_payload(&all)?;
        let mut out = Vec::with_capacity(hdr.nrecords as usize);
        for r in format::records(payload) {
            let (off, rec) = r?;
            out.push((
                off + SEG_HDR_LEN,
                rec.tombstone,
                rec.ts,
                rec.version,
                rec.key.to_vec(),
                rec.value.len(),
            ));
        }
        if out.len() != hdr.nrecords as usize {
            return Err(Error::Corrupt(FormatError::BadField("segment.nrecords")));
        }
        Ok(Some((hdr, crc, out)))
    }
}

fn overlap_what(e: &crate::space::SpaceError) -> &'static str {
    match e {
        crate::space::SpaceError::OutOfRange(..) => "an extent outside the slice",
        crate::space::SpaceError::DoubleFree(..) => "two extents in use overlap",
    }
}
