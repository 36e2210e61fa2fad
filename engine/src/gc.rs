//! Garbage collection: when free space runs low, clean the segment with the most dead bytes — copy its
//! live records into the active buffer and give its extent back once those copies are durable. One
//! segment per step, called from the shard loop, so the pause stays one segment long.
//!
//! Only segments a checkpoint covers are cleaned: later ones are still needed to replay the log, while
//! a covered one is only reached through index entries, and the moved copies supersede those on replay.
//! Segments nothing points at any more are freed by the next checkpoint without copying.

use crate::bdev::BlockDevice;
use crate::error::Error;
use crate::format::{self, SegmentHeader, SEG_HDR_LEN};
use crate::shard::Shard;

impl<D: BlockDevice> Shard<D> {
    fn free_fraction(&self) -> f64 {
        self.space.free_blocks() as f64 / self.slice_blocks.max(1) as f64
    }

    /// Is cleaning worth a step now?
    pub(crate) fn gc_wanted(&self) -> bool {
        self.free_fraction() < self.cfg.gc_free_low && self.victim().is_some()
    }

    /// The covered segment with the most dead bytes, if any has some.
    fn victim(&self) -> Option<(u64, u64)> {
        let bs = self.bs;
        self.segments
            .iter()
            .filter(|(l, s)| s.seq <= self.ckpt_seg_seq && !self.gc_bad.contains(l))
            .map(|(&l, s)| (l, (u64::from(s.blocks) * bs).saturating_sub(s.live)))
            .filter(|&(_, dead)| dead > 0)
            .max_by_key(|&(l, dead)| (dead, std::cmp::Reverse(l)))
    }

    /// Cleans one segment. Returns whether it did anything.
    pub(crate) fn gc_step(&mut self) -> Result<bool, Error> {
        let Some((lba, _)) = self.victim() else {
            return Ok(false);
        };
        let Some(seg) = self.segments.get(&lba).copied() else {
            return Ok(false);
        };
        if seg.live == 0 {
            // Nothing to move: the next checkpoint frees it.
            if !self.need_checkpoint && self.pipeline.is_idle() {
                self.checkpoint()?;
                return Ok(true);
            }
            self.need_checkpoint = true;
            return Ok(false);
        }
        let buf = self
            .dev
            .alloc_buf((u64::from(seg.blocks) * self.bs) as usize)?;
        let buf = self.sync_read(lba, seg.blocks, buf)?;
        let payload = SegmentHeader::decode(&buf, self.bs as u32).and_then(|h| {
            if h.seq != seg.seq {
                return Err(format::FormatError::BadField("segment.seq"));
            }
            h.check_payload(&buf).map(<[u8]>::to_vec)
        });
        let payload = match payload {
            Ok(p) => p,
            Err(_) => {
                // Unreadable: leave it (its records fail their checks when read) and do not retry.
                self.gc_bad.insert(lba);
                return Ok(true);
            }
        };
        let base = lba * self.bs;
        let mut moved = 0u64;
        for r in format::records(&payload) {
            let Ok((off, rec)) = r else { break };
            if rec.tombstone {
                continue;
            }
            let loc = base + (off + SEG_HDR_LEN) as u64;
            let Some(e) = self.index.get(rec.key) else {
                continue;
            };
            if e.loc != loc {
                continue;
            }
            // Same timestamp and version: a move, not a new write.
            self.write_record(rec.key, Some(rec.value), e.ts, e.version, true)?;
            moved += format::record_len(rec.key.len(), rec.value.len()) as u64;
        }
        self.segments.remove(&lba);
        // Freed once the copies are durable (they are in the active generation or an earlier one).
        self.pending_free
            .push((self.active_gen, lba, u64::from(seg.blocks)));
        self.stats.gc_segments += 1;
        self.stats.gc_bytes_moved += moved;
        Ok(true)
    }

    /// Makes room for the next log reservation, cleaning synchronously; NoSpace when nothing helps.
    pub(crate) fn make_room(&mut self) -> Result<(), Error> {
        let mut tries = 0;
        while self.space.largest() < self.buf_blocks {
            tries += 1;
            if tries > 64 {
                return Err(Error::NoSpace);
            }
            if !self.pending_free.is_empty() || !self.pipeline.is_idle() {
                // Copies waiting to become durable: finish that cycle (and the one holding them).
                self.drive_cycle()?;
                if !self.pending_free.is_empty() && !self.active.is_empty() {
                    self.start_cycle()?;
                    self.drive_cycle()?;
                }
                continue;
            }
            if self.segs_since_ckpt > 0 || self.segments.values().any(|s| s.live == 0) {
                self.checkpoint()?;
                if self.space.largest() >= self.buf_blocks {
                    break;
                }
            }
            if !self.gc_step()? {
                return Err(Error::NoSpace);
            }
        }
        Ok(())
    }
}
