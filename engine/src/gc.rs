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
    /// The fraction of the slice free beyond the reserve.
    fn free_fraction(&self) -> f64 {
        let spare = self
            .space
            .free_blocks()
            .saturating_sub(self.reserve_blocks());
        spare as f64 / self.slice_blocks.max(1) as f64
    }

    /// Is cleaning worth a step now?
    pub(crate) fn gc_wanted(&self) -> bool {
        self.free_fraction() < self.cfg.gc_free_low && self.victim().is_some()
    }

    /// The covered segment with the most dead bytes worth moving. Worth it in the background: nothing
    /// live (freed without copying), or a quarter of the segment and two blocks dead — header and
    /// padding alone count as dead bytes, and cleaning for those moved the same records round and
    /// round. In `make_room` (space is short): [`crate::log::SegInfo::worth_cleaning_pressed`].
    fn victim(&self) -> Option<(u64, u64)> {
        let bs = self.bs;
        self.log
            .segments
            .iter()
            .filter(|(l, s)| s.seq <= self.gc_horizon() && !self.log.gc_bad.contains(l))
            .filter(|(_, s)| {
                let dead = s.dead(bs);
                s.live == 0
                    || if self.making_room {
                        s.worth_cleaning_pressed(bs)
                    } else {
                        dead >= 2 * bs && dead * 4 >= dead + s.live
                    }
            })
            .map(|(&l, s)| (l, s.dead(bs)))
            .max_by_key(|&(l, dead)| (dead, std::cmp::Reverse(l)))
    }

    /// Segments up to this sequence number may be cleaned (see [`crate::checkpoint::Checkpoints`]).
    pub(crate) fn gc_horizon(&self) -> u64 {
        self.ckpts.gc_horizon()
    }

    /// Cleans one segment. Returns whether it did anything.
    pub(crate) fn gc_step(&mut self) -> Result<bool, Error> {
        let Some((lba, _)) = self.victim() else {
            return Ok(false);
        };
        let Some(seg) = self.log.segments.get(&lba).copied() else {
            return Ok(false);
        };
        if seg.live == 0 {
            // Nothing to move: free it once what superseded its records is durable (recovery from
            // either checkpoint replays those records over the entries that pointed here). That is
            // in the active buffer or an older generation.
            self.log.segments.remove(&lba);
            let gen = if self.active.is_empty() {
                self.active_gen - 1
            } else {
                self.active_gen
            };
            if gen <= self.durable_gen && self.pipeline.is_idle() {
                // Cannot fail: the segment's extent was allocated.
                let _ = self.space.free(lba, u64::from(seg.blocks));
            } else {
                self.log
                    .pending_free
                    .push((gen, lba, u64::from(seg.blocks)));
            }
            self.stats.gc_segments += 1;
            return Ok(true);
        }
        let buf = self
            .dev
            .alloc_buf((u64::from(seg.blocks) * self.bs) as usize)?;
        let payload = match self.sync_read(lba, seg.blocks, buf) {
            Ok(buf) => SegmentHeader::decode(&buf, self.bs as u32).and_then(|(h, _)| {
                if h.seq != seg.seq || h.volume != self.ckpts.volume {
                    return Err(format::FormatError::BadField("segment.seq"));
                }
                h.check_payload(&buf).map(<[u8]>::to_vec)
            }),
            Err(Error::Io(_)) => Err(format::FormatError::BadField("segment unreadable")),
            Err(e) => return Err(e),
        };
        let Ok(payload) = payload else {
            // Unreadable: leave it whole (its records fail their checks when read) and do not retry.
            self.log.gc_bad.insert(lba);
            self.stats.gc_unreadable += 1;
            return Ok(true);
        };
        let base = lba * self.bs;
        let mut moved = 0u64;
        let mut whole = true;
        for r in format::records(&payload) {
            let Ok((off, rec)) = r else {
                // A record that does not decode in a payload whose crc checked: keep the segment
                // (the records after it would be lost with it), never free what was not moved.
                whole = false;
                break;
            };
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
            self.log
                .moves
                .push((self.active_gen, rec.key.to_vec(), e.version, loc));
            moved += format::record_len(rec.key.len(), rec.value.len()) as u64;
        }
        self.stats.gc_bytes_moved += moved;
        if !whole {
            self.log.gc_bad.insert(lba);
            self.stats.gc_unreadable += 1;
            return Ok(true);
        }
        self.log.segments.remove(&lba);
        // Freed once the copies are durable (they are in the active generation or an earlier one).
        self.log
            .pending_free
            .push((self.active_gen, lba, u64::from(seg.blocks)));
        self.stats.gc_segments += 1;
        Ok(true)
    }

    /// Makes `need` blocks free, cleaning synchronously; NoSpace when nothing helps.
    pub(crate) fn make_room(&mut self, need: u64) -> Result<(), Error> {
        // Cleaning writes (moved records, checkpoints); none of that may ask for cleaning again.
        if self.making_room {
            return Err(Error::NoSpace);
        }
        self.making_room = true;
        let r = self.make_room_inner(need);
        self.making_room = false;
        r
    }

    fn make_room_inner(&mut self, need: u64) -> Result<(), Error> {
        let mut tries = 0;
        while self.space.free_blocks() < need {
            // A cycle failed meanwhile: nothing more is written (moves and seals included).
            self.check_writable()?;
            tries += 1;
            if tries > 256 {
                return Err(Error::NoSpace);
            }
            if !self.pipeline.is_idle() {
                self.drive_cycle()?;
                continue;
            }
            let victim = self.victim();
            // Moved copies waiting to become durable: seal the buffer holding them once it is half
            // full or nothing else is worth moving (each seal costs a header and padding, so one
            // per victim ate what cleaning gained).
            let half_full = self.active.len() * 2 >= self.active.capacity();
            if !self.log.pending_free.is_empty() && (victim.is_none() || half_full) {
                if !self.active.is_empty() {
                    self.start_cycle()?;
                }
                self.drive_cycle()?;
                let durable = self.durable_gen;
                self.log.free_durable(durable, &mut self.space);
                if !self.log.pending_free.is_empty() && self.active.is_empty() && victim.is_none() {
                    // Nothing buffered holds them and nothing is in flight: they are durable.
                    let all = self.active_gen;
                    self.log.free_durable(all, &mut self.space);
                }
                continue;
            }
            if victim.is_some() {
                self.gc_step()?;
                continue;
            }
            // Nothing to clean below the horizon: a checkpoint moves it up (and frees segments
            // nothing points at).
            let horizon = self.gc_horizon();
            let behind = self
                .log
                .segments
                .values()
                .any(|s| s.seq > horizon && s.dead(self.bs) > 0);
            // Only a checkpoint that leaves room for the next one: a checkpoint costs its size less
            // the fallback it frees, and one that leaves too little stops the next for good.
            // Or one whose cost GC then wins back: what the segments after the horizon have dead,
            // reachable once it is in place (the fallback's log given up if need be).
            let reachable: u64 = self
                .log
                .segments
                .values()
                .filter(|s| s.seq > horizon && s.worth_cleaning_pressed(self.bs))
                .map(|s| s.dead(self.bs))
                .sum::<u64>()
                / self.bs;
            let cost = self
                .ckpt_blocks_estimate()
                .saturating_sub(self.fallback_blocks());
            let worth = reachable > cost + 2 * self.buf_blocks;
            if (behind || self.log.segs_since_ckpt > 0)
                && (self.checkpoint_keeps_next() || worth)
                && self.space.free_blocks() >= self.ckpt_blocks_estimate()
            {
                let before = self.stats.checkpoints;
                self.checkpoint()?;
                if self.stats.checkpoints > before {
                    continue;
                }
            }
            if (behind || self.log.segs_since_ckpt > 0) && !self.ckpts.fallback_spent {
                // No room for a checkpoint either: give up the fallback's log to GC.
                self.ckpts.fallback_spent = true;
                self.stats.fallbacks_spent += 1;
                continue;
            }
            return Err(Error::NoSpace);
        }
        Ok(())
    }
}
