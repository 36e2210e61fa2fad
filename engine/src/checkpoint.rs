//! The checkpointer: writes the index as a checkpoint (in one or more extents, read back before
//! anything references it), switches the superblock to it while keeping the previous one as the
//! fallback, and frees what neither references any more. Checkpoints are written synchronously, so
//! the persistence rules keep them rare (see `persist`).

use std::time::Instant;

use crate::bdev::{BlockDevice, IoError};
use crate::error::Error;
use crate::format::{self, CkptHeader, CkptRef, FormatError, SegmentRef, Superblock, VolumeId};
use crate::persist::elapsed_ns;
use crate::shard::Shard;

/// A checkpoint on the device: what the superblock says of it, and every extent it occupies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CkptPlace {
    pub r: CkptRef,
    pub extents: Vec<(u64, u64)>,
}

/// What the superblock holds, and the checkpoints it references.
#[derive(Debug, Default)]
pub(crate) struct Checkpoints {
    /// The database's identity, written into everything.
    pub volume: VolumeId,
    /// This life's number (versions handed out are at least `life << LIFE_SHIFT`); 0 before open.
    pub life: u64,
    /// Sequence number of the newest superblock: the epoch of the segments written now.
    pub sb_seq: u64,
    /// The newest checkpoint (lba 0 before the first).
    pub current: CkptPlace,
    /// The checkpoint kept before it: its extents and the log since it stay until the next one.
    pub fallback: Option<CkptPlace>,
    /// Space ran out with nothing to clean below the fallback's horizon and no room for a checkpoint:
    /// GC may clean the fallback's log until the next checkpoint (recovery then refuses that fallback
    /// rather than replay a log with holes). Reset by the next checkpoint.
    pub fallback_spent: bool,
    /// A checkpoint is due (the log since the last one is long enough, or a new life starts).
    pub due: bool,
    /// `life` is not on the device yet: no superblock written since it was advanced. Versions are
    /// handed out only once it is (see `Shard::next_version`).
    pub life_unwritten: bool,
    /// The epoch of the attached durable log the superblock names (0: none attached).
    pub durable_log: u64,
}

impl Checkpoints {
    /// Segments up to this sequence number may be cleaned: those the fallback checkpoint covers too.
    /// A later segment is still needed to replay the log from the fallback, should the newest
    /// checkpoint be found damaged.
    pub(crate) fn gc_horizon(&self) -> u64 {
        if self.fallback_spent {
            return self.current.r.seg_seq;
        }
        self.fallback.as_ref().map_or(0, |p| p.r.seg_seq)
    }
}

impl<D: BlockDevice> Shard<D> {
    /// Writes a checkpoint of the whole index and switches the superblock to it. Persists the active
    /// buffer first, so every index entry points at a durable record.
    pub(crate) fn checkpoint(&mut self) -> Result<(), Error> {
        let started = Instant::now();
        let r = self.write_checkpoint();
        let ns = elapsed_ns(started);
        self.stats.checkpoint_ns_total += ns;
        self.stats.checkpoint_ns_max = self.stats.checkpoint_ns_max.max(ns);
        r
    }

    fn write_checkpoint(&mut self) -> Result<(), Error> {
        self.ckpts.due = false;
        self.sync()?;
        let seg_seq = self.log.next_seq - 1;
        // The checkpoint being replaced becomes the fallback: the log since it must stay whole, so
        // segments after it are listed (and kept) even when nothing points at them any more.
        let keep_after = self.ckpts.current.r.seg_seq;
        let segs: Vec<SegmentRef> = self
            .log
            .segments
            .iter()
            .filter(|(_, s)| s.live > 0 || s.seq > keep_after)
            .map(|(&lba, s)| SegmentRef {
                seq: s.seq,
                lba,
                blocks: s.blocks,
            })
            .collect();
        let Some(extents) = self.alloc_ckpt_extents(segs.len()) else {
            self.stats.checkpoints_skipped += 1;
            if self.ckpts.life_unwritten {
                // No room for a checkpoint, but a new life must be on the device before it hands
                // out a version: the superblock alone, referencing the same checkpoints.
                self.rewrite_superblock()?;
            }
            return Ok(());
        };
        if let Err(e) = self.write_and_verify_ckpt(&extents, seg_seq, &segs) {
            for &(l, n) in &extents {
                // Cannot fail: the extents were allocated above and nothing else took them.
                let _ = self.space.free(l, n);
            }
            return Err(e);
        }
        let new = CkptPlace {
            r: CkptRef {
                lba: extents[0].0,
                blocks: extents[0].1,
                seg_seq,
                log_lba: self.log.head.0,
                log_blocks: self.log.head.1,
                log_prev: self.log.chain_crc,
            },
            extents,
        };
        let kept = (self.ckpts.current.r.lba != 0).then(|| self.ckpts.current.clone());
        // The superblock may or may not be on the device after a failure: the new checkpoint's
        // extents stay allocated (they may be referenced) and the shard stops writing.
        self.publish_superblock(new.r, kept.as_ref().map(|k| k.r))?;
        // The superblock no longer references the fallback before the old one: free its extents, and
        // the segments nothing points at that only the dropped fallback's log still needed.
        if let Some(old) = self.ckpts.fallback.take() {
            for (l, n) in old.extents {
                // Cannot fail: the extent was in use until now.
                let _ = self.space.free(l, n);
            }
        }
        self.ckpts.fallback = kept;
        self.ckpts.current = new;
        let empty: Vec<(u64, u32)> = self
            .log
            .segments
            .iter()
            .filter(|(_, s)| s.live == 0 && s.seq <= keep_after)
            .map(|(&l, s)| (l, s.blocks))
            .collect();
        for (l, n) in empty {
            self.log.segments.remove(&l);
            // Cannot fail: a live segment's extent is allocated.
            let _ = self.space.free(l, u64::from(n));
        }
        self.log.segs_since_ckpt = 0;
        self.log.bytes_since_ckpt = 0;
        // The old checkpoint's log (the new fallback's) was never open to GC.
        self.ckpts.fallback_spent = false;
        self.stats.checkpoints += 1;
        self.check_space();
        Ok(())
    }

    /// Writes a superblock that only advances the sequence number (the epoch), the life and the
    /// durable-log attachment; the checkpoints stay.
    pub(crate) fn rewrite_superblock(&mut self) -> Result<(), Error> {
        let (ckpt, prev) = (
            self.ckpts.current.r,
            self.ckpts.fallback.as_ref().map(|k| k.r),
        );
        self.publish_superblock(ckpt, prev)
    }

    /// Writes the next superblock (sequence + 1, this life) naming `ckpt` and `prev`; a failure stops
    /// the shard's writes.
    fn publish_superblock(&mut self, ckpt: CkptRef, prev: Option<CkptRef>) -> Result<(), Error> {
        let sb = Superblock {
            block_size: self.bs as u32,
            shard_id: self.cfg.shard_id,
            shard_count: self.cfg.shard_count,
            slice_blocks: self.slice_blocks,
            volume: self.ckpts.volume,
            seq: self.ckpts.sb_seq + 1,
            life: self.ckpts.life,
            ckpt,
            prev,
            durable_log: self.ckpts.durable_log,
        };
        if let Err(e) = self.write_superblock(&sb) {
            let io = match &e {
                Error::Io(io) => io.clone(),
                _ => IoError::Device(libc::EIO),
            };
            self.fail_pipeline(io, "a superblock write failed");
            return Err(e);
        }
        self.ckpts.sb_seq = sb.seq;
        self.ckpts.life_unwritten = false;
        Ok(())
    }

    /// Blocks a checkpoint of the current index takes (in one extent).
    pub(crate) fn ckpt_blocks_estimate(&self) -> u64 {
        let len = format::ckpt_len(
            self.log.segments.len(),
            self.index.key_bytes(),
            self.index.len(),
            1,
        );
        (len as u64).div_ceil(self.bs)
    }

    /// Extents for a checkpoint with `n_segs` segment rows: one when a free extent is large enough,
    /// else the largest ones (fragmented free space still takes a checkpoint). None: no room.
    fn alloc_ckpt_extents(&mut self, n_segs: usize) -> Option<Vec<(u64, u64)>> {
        let need = |n: usize| {
            let len = format::ckpt_len(n_segs, self.index.key_bytes(), self.index.len(), n);
            (len as u64).div_ceil(self.bs)
        };
        if let Some(l) = self.space.alloc(need(1)) {
            return Some(vec![(l, need(1))]);
        }
        let mut got: Vec<(u64, u64)> = Vec::new();
        loop {
            let total: u64 = got.iter().map(|e| e.1).sum();
            let want = need(got.len() + 1).saturating_sub(total);
            // The first extent (the largest) holds the header and the table of the others.
            let table = format::CKPT_HDR_LEN + format::CKPT_EXT_LEN * got.len().saturating_sub(1);
            if want == 0 && got.first().is_some_and(|f| f.1 * self.bs >= table as u64) {
                return Some(got);
            }
            let piece = if got.len() + 1 >= format::CKPT_MAX_EXTENTS {
                None
            } else if let Some(l) = self.space.alloc(want) {
                Some((l, want))
            } else {
                let n = self.space.largest();
                self.space.alloc(n).map(|l| (l, n))
            };
            match piece {
                Some(p) if want > 0 => got.push(p),
                other => {
                    for (l, n) in got.into_iter().chain(other) {
                        // Cannot fail: allocated just above.
                        let _ = self.space.free(l, n);
                    }
                    return None;
                }
            }
        }
    }

    /// Writes the checkpoint of the current index into `extents`, flushes it, and reads it back to
    /// check it decodes to what was written before anything references it.
    fn write_and_verify_ckpt(
        &mut self,
        extents: &[(u64, u64)],
        seg_seq: u64,
        segs: &[SegmentRef],
    ) -> Result<(), Error> {
        let blocks: u64 = extents.iter().map(|e| e.1).sum();
        let mut buf = self.dev.alloc_buf((blocks * self.bs) as usize)?;
        let mut h = CkptHeader {
            shard_id: self.cfg.shard_id,
            volume: self.ckpts.volume,
            seg_seq,
            sb_seq: self.ckpts.sb_seq + 1,
            // Not `version_ctr`: a write that took its version and is not appended yet (this
            // checkpoint makes room for it) is not in the checkpoint, and recovery replays the durable
            // log's records above this number.
            version_ctr: self.version_done,
            n_extents: 0,
            n_segments: 0,
            n_entries: 0,
            payload_len: 0,
        };
        format::encode_ckpt(
            &mut buf,
            &mut h,
            extents,
            segs,
            self.index
                .iter_unordered()
                .map(|(k, e)| (k, e.val_len, e.ts, e.version, e.loc)),
        );
        let mut buf = Some(buf);
        let mut off = 0usize;
        for &(l, n) in extents {
            let b = buf.take().ok_or(Error::Io(IoError::Device(libc::EIO)))?;
            buf = Some(
                self.sync_write_at(l, n as u32, b, off)?
                    .ok_or(Error::Io(IoError::Device(libc::EIO)))?,
            );
            off += (n * self.bs) as usize;
        }
        self.sync_flush()?;
        let mut back = self.dev.alloc_buf((blocks * self.bs) as usize)?;
        let mut off = 0usize;
        for &(l, n) in extents {
            back = self.sync_read_at(l, n as u32, back, off)?;
            off += (n * self.bs) as usize;
        }
        // Byte for byte what was written (cheaper than decoding it again, and stricter).
        let len = (blocks * self.bs) as usize;
        let written = buf
            .as_deref()
            .ok_or(Error::Io(IoError::Device(libc::EIO)))?;
        if back[..len] != written[..len] {
            return Err(Error::Corrupt(FormatError::BadField(
                "checkpoint read back differs from what was written",
            )));
        }
        Ok(())
    }

    /// Writes `sb` to both copies, one after the other, each followed by a flush: a torn write spoils
    /// one copy while the other holds the previous (or the new) state, and afterwards a damaged copy has
    /// an identical twin. The previous checkpoint is freed only after both are durable.
    pub(crate) fn write_superblock(&mut self, sb: &Superblock) -> Result<(), Error> {
        for copy in [sb.seq % 2, (sb.seq + 1) % 2] {
            let mut buf = self.dev.alloc_buf(self.bs as usize)?;
            buf.fill(0);
            sb.encode(&mut buf);
            self.sync_write(copy, 1, buf)?;
            self.sync_flush()?;
        }
        Ok(())
    }
}
