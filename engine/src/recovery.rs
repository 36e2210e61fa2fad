//! Opening a shard: find the newest valid superblock, load its checkpoint, replay the segments written
//! after it (following each segment's pointer to the next) until one does not check out, rebuild the
//! free-space trees from what is in use, and write a fresh checkpoint. A blank slice is formatted.
//! Nothing read is trusted: every structure is checked, and what fails is reported and skipped.

use std::collections::BTreeMap;

use crate::bdev::BlockDevice;
use crate::buffer::WriteBuffer;
use crate::cache::SegmentCache;
use crate::error::Error;
use crate::format::{self, FormatError, SegmentHeader, Superblock, SB_BLOCKS, SEG_HDR_LEN};
use crate::hlc::Hlc;
use crate::index::{Entry, Index};
use crate::persist::Pipeline;
use crate::shard::{SegInfo, Shard, ShardConfig, ShardStats, TAG_SYNC_FIRST};
use crate::space::FreeSpace;

/// What opening a shard found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Shard number.
    pub shard: u32,
    /// The slice was blank and has been formatted.
    pub formatted: bool,
    /// Sequence number of the superblock used.
    pub superblock_seq: u64,
    /// Problems with superblock copies (one bad copy is survivable).
    pub superblock_errors: Vec<String>,
    /// Whether a checkpoint was loaded.
    pub checkpoint_loaded: bool,
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
    /// Index entries dropped because they point at no live segment.
    pub entries_dropped: u64,
    /// Keys after recovery.
    pub keys: u64,
}

fn describe(e: &Error) -> String {
    e.to_string()
}

impl<D: BlockDevice> Shard<D> {
    /// Opens (recovering or formatting) the slice of `dev` that `cfg.shard_id` owns.
    pub fn open(mut dev: D, cfg: ShardConfig) -> Result<(Self, RecoveryReport), Error> {
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
            pipeline: Pipeline::new(),
            durable_gen: 0,
            durable_wanted: 0,
            space: FreeSpace::new(SB_BLOCKS, slice_blocks),
            segments: BTreeMap::new(),
            next_seq: 1,
            log_head: (0, 0),
            sb_seq: 0,
            ckpt: None,
            ckpt_seg_seq: 0,
            segs_since_ckpt: 0,
            log_bytes_since_ckpt: 0,
            need_checkpoint: false,
            pending_free: Vec::new(),
            gc_bad: Default::default(),
            hlc: Hlc::new(0),
            version_ctr: 0,
            sync_done: Vec::new(),
            polled: Vec::new(),
            next_tag: TAG_SYNC_FIRST,
            stats: ShardStats::default(),
            failed: None,
            read_buf: None,
            cache: SegmentCache::new(cfg.cache_bytes, bs),
            cfg,
        };
        let report = shard.recover()?;
        Ok((shard, report))
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

    fn recover(&mut self) -> Result<RecoveryReport, Error> {
        let mut rep = RecoveryReport {
            shard: self.cfg.shard_id,
            ..Default::default()
        };
        // Superblocks: both copies, newest valid first.
        let mut sbs = Vec::new();
        let mut blank = 0;
        for copy in 0..SB_BLOCKS {
            let b = self.read_blocks(copy, 1)?;
            match Superblock::decode(&b) {
                Ok(sb) => match self.check_geometry(&sb) {
                    Ok(()) => sbs.push(sb),
                    Err(e) => return Err(e),
                },
                Err(FormatError::BadMagic(_)) => {
                    blank += 1;
                    rep.superblock_errors
                        .push(format!("copy {copy}: no superblock"));
                }
                Err(e) => rep.superblock_errors.push(format!("copy {copy}: {e}")),
            }
        }
        sbs.sort_by_key(|s| std::cmp::Reverse(s.seq));
        let Some(newest) = sbs.first().cloned() else {
            if blank == SB_BLOCKS as usize && self.cfg.create {
                self.format()?;
                rep.formatted = true;
                rep.superblock_seq = self.sb_seq;
                rep.superblock_errors.clear();
                return Ok(rep);
            }
            return Err(Error::Unrecoverable(format!(
                "no valid superblock: {:?}",
                rep.superblock_errors
            )));
        };
        // Checkpoint: the newest superblock's, else an older copy's (its extent may have been reused; the
        // checksum tells), else none: replay alone, reporting the loss.
        let mut base = newest.clone();
        let mut ckpt_segs = Vec::new();
        let mut loaded = newest.ckpt_lba == 0;
        for sb in &sbs {
            if sb.ckpt_lba == 0 {
                base = sb.clone();
                loaded = true;
                break;
            }
            match self.load_checkpoint(sb) {
                Ok(segs) => {
                    base = sb.clone();
                    ckpt_segs = segs;
                    loaded = true;
                    rep.checkpoint_loaded = true;
                    rep.checkpoint_keys = self.index.len() as u64;
                    break;
                }
                Err(e) => {
                    rep.checkpoint_errors
                        .push(format!("superblock {}: {}", sb.seq, describe(&e)))
                }
            }
        }
        if !loaded {
            rep.checkpoint_errors
                .push("no checkpoint could be loaded; keys only it held are lost".into());
        }
        rep.superblock_seq = base.seq;
        self.sb_seq = sbs.iter().map(|s| s.seq).max().unwrap_or(base.seq);
        if base.ckpt_lba != 0 && rep.checkpoint_loaded {
            self.ckpt = Some((base.ckpt_lba, base.ckpt_blocks));
        }
        self.ckpt_seg_seq = base.ckpt_seg_seq;

        // Replay.
        let mut replayed: Vec<(u64, SegInfo)> = Vec::new();
        let (mut lba, mut reserved) = (base.log_lba, base.log_blocks);
        let mut expect = base.ckpt_seg_seq + 1;
        rep.replay_stop = loop {
            match self.read_segment(lba, reserved, expect) {
                Ok(Some((hdr, records))) => {
                    for (off, tomb, ts, version, key, value) in records {
                        self.hlc.observe(ts);
                        self.version_ctr = self.version_ctr.max(version);
                        if tomb {
                            self.index.remove(&key);
                        } else {
                            let loc = lba * self.bs + off as u64;
                            self.index
                                .insert(
                                    &key,
                                    Entry {
                                        loc,
                                        val_len: value as u32,
                                        ts,
                                        version,
                                    },
                                )
                                .map_err(|_| Error::NoSpace)?;
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
                }
                Ok(None) => break format!("segment {expect} not written"),
                Err(e) => break format!("segment {expect}: {}", describe(&e)),
            }
        };
        self.next_seq = expect;
        self.log_head = (lba, reserved);

        // Live segments: the checkpoint's, less those a replayed segment or the log head now occupies
        // (they were cleaned and their space reused), plus the replayed ones.
        let mut segs: BTreeMap<u64, SegInfo> = BTreeMap::new();
        let overlaps = |a: u64, an: u64, b: u64, bn: u64| a < b + bn && b < a + an;
        for s in ckpt_segs {
            let taken = replayed
                .iter()
                .any(|(l, r)| overlaps(s.lba, u64::from(s.blocks), *l, u64::from(r.blocks)))
                || overlaps(s.lba, u64::from(s.blocks), self.log_head.0, self.log_head.1);
            if !taken {
                segs.insert(
                    s.lba,
                    SegInfo {
                        seq: s.seq,
                        blocks: s.blocks,
                        live: 0,
                    },
                );
            }
        }
        for (l, s) in replayed {
            segs.insert(l, s);
        }
        // Every entry must point inside a live segment's payload; count live bytes.
        let bs = self.bs;
        let mut dropped = Vec::new();
        for (k, e) in self.index.iter_unordered() {
            let blk = e.loc / bs;
            let end = e.loc + format::record_len(k.len(), e.val_len as usize) as u64;
            self.hlc.observe(e.ts);
            self.version_ctr = self.version_ctr.max(e.version);
            match segs.range_mut(..=blk).next_back() {
                Some((&l, s))
                    if e.loc >= l * bs + SEG_HDR_LEN as u64
                        && end <= (l + u64::from(s.blocks)) * bs =>
                {
                    s.live += end - e.loc;
                }
                _ => dropped.push(k.to_vec()),
            }
        }
        for k in &dropped {
            self.index.remove(k);
        }
        rep.entries_dropped = dropped.len() as u64;
        self.segments = segs;

        // Free space: everything not used by a segment, the checkpoint or the log reservation.
        let mut used: Vec<(u64, u64)> = self
            .segments
            .iter()
            .map(|(&l, s)| (l, u64::from(s.blocks)))
            .collect();
        if let Some(c) = self.ckpt {
            used.push(c);
        }
        used.push(self.log_head);
        self.space = FreeSpace::with_used(SB_BLOCKS, self.slice_blocks, &mut used)
            .map_err(|e| Error::Unrecoverable(format!("extents overlap: {e}")))?;
        // A reservation made with a smaller buffer: take a fresh one (nothing valid is there).
        if self.log_head.1 < self.buf_blocks {
            let next = self.space.alloc(self.buf_blocks).ok_or(Error::NoSpace)?;
            let _ = self.space.free(self.log_head.0, self.log_head.1);
            self.log_head = (next, self.buf_blocks);
        }
        self.checkpoint()?;
        rep.keys = self.index.len() as u64;
        Ok(rep)
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

    fn format(&mut self) -> Result<(), Error> {
        self.space = FreeSpace::new(SB_BLOCKS, self.slice_blocks);
        let head = self.space.alloc(self.buf_blocks).ok_or(Error::NoSpace)?;
        self.log_head = (head, self.buf_blocks);
        self.checkpoint()
    }

    fn load_checkpoint(&mut self, sb: &Superblock) -> Result<Vec<format::SegmentRef>, Error> {
        let b = self.read_blocks(sb.ckpt_lba, sb.ckpt_blocks)?;
        let (h, segs, entries) = format::decode_ckpt(&b, self.slice_blocks * self.bs)?;
        if h.shard_id != self.cfg.shard_id || h.seg_seq != sb.ckpt_seg_seq {
            return Err(Error::Corrupt(FormatError::BadField(
                "checkpoint does not match its superblock",
            )));
        }
        self.index = Index::new();
        for e in entries {
            self.index
                .insert(
                    &e.key,
                    Entry {
                        loc: e.loc,
                        val_len: e.val_len,
                        ts: e.ts,
                        version: e.version,
                    },
                )
                .map_err(|_| Error::NoSpace)?;
        }
        Ok(segs)
    }

    /// Reads and checks segment `expect` at `lba`. None when what is there is not that segment.
    #[allow(clippy::type_complexity)]
    fn read_segment(
        &mut self,
        lba: u64,
        reserved: u64,
        expect: u64,
    ) -> Result<Option<(SegmentHeader, Vec<(usize, bool, u64, u64, Vec<u8>, usize)>)>, Error> {
        let first = self.read_blocks(lba, 1)?;
        let hdr = match SegmentHeader::decode(&first, self.bs as u32) {
            Ok(h) => h,
            // A magic a bit or two away from ours is a damaged header, not the end of the log.
            Err(FormatError::BadMagic(_)) if !near_magic(&first[..8]) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if hdr.seq != expect {
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
        Ok(Some((hdr, out)))
    }
}

/// True when `b` differs from the segment magic in one or two bits.
fn near_magic(b: &[u8]) -> bool {
    let bits: u32 = b
        .iter()
        .zip(format::SEG_MAGIC.iter())
        .map(|(x, y)| (x ^ y).count_ones())
        .sum();
    (1..=2).contains(&bits)
}
