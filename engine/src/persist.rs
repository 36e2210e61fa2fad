//! Persistence cycles: seal the active buffer into a segment, write it at the log head, Flush when the
//! device has a volatile cache, then publish the generation (durable waiters are answered).
//!
//! Cycles are pipelined: up to `max_inflight_cycles` segments are being written at once while the active
//! buffer takes new writes, and one Flush at a time covers every segment whose write completed before it
//! was submitted (group commit). A generation is published only when it and every older one are durable,
//! so the log chain a recovery follows never has a published segment behind a hole. With one buffer in
//! flight a device stall (QEMU's Flush is the host's fdatasync, which can take 100 ms when the image has
//! dirty pages) stopped every writer once the active buffer filled; now the stall has to outlast all the
//! buffers in flight.
//!
//! Once the log written since the last checkpoint holds `checkpoint_every` write buffers' worth of bytes
//! and is at least as large as a checkpoint would be (and at open and close), the index is written as a
//! checkpoint and the superblock switched to it — done synchronously, so it must stay rare: with small
//! segments (a short commit interval) a count of segments made it the shard's main work (a whole index and
//! three Flushes every 64 ms at a 1 ms interval), while the log-size rules keep its cost at most that of the
//! log it saves replaying.

use std::collections::VecDeque;
use std::time::Instant;

use crate::bdev::{BlockDevice, Completion, IoError, SubmitError};
use crate::error::Error;
use crate::format::SegmentHeader;
use crate::log::SegInfo;
use crate::shard::{Shard, TAG_CYCLE_FLUSH, TAG_CYCLE_WRITE};

/// Where the write of one cycle is.
pub(crate) enum WriteState<B> {
    /// Not submitted yet (or refused as busy): retry.
    Submit(B),
    Writing,
    /// On the device; durable once a Flush submitted after this covers it.
    Written,
}

/// A cycle whose segment is being written.
pub(crate) struct InFlight<B> {
    pub gen: u64,
    pub lba: u64,
    pub nblocks: u32,
    pub state: WriteState<B>,
    pub started: Instant,
    /// Times its write failed and was submitted again.
    pub retries: u8,
}

/// Times a failed segment write is submitted again before the shard stops writing.
const WRITE_RETRIES: u8 = 2;

/// The Flush in flight and the cycles it makes durable.
pub(crate) struct FlushInFlight {
    /// Newest generation covered.
    pub gen: u64,
    /// Cycles (segments) and blocks covered.
    pub cycles: u32,
    pub blocks: u64,
    /// Submitted (false: refused as busy, retry).
    pub submitted: bool,
    pub started: Instant,
}

/// The persistence pipeline: segments being written, in generation order, and the Flush in flight.
pub(crate) struct CyclePipeline<B> {
    pub writes: VecDeque<InFlight<B>>,
    pub flush: Option<FlushInFlight>,
}

impl<B> CyclePipeline<B> {
    pub(crate) fn new() -> Self {
        CyclePipeline {
            writes: VecDeque::new(),
            flush: None,
        }
    }

    /// Nothing written and not yet durable.
    pub(crate) fn is_idle(&self) -> bool {
        self.writes.is_empty() && self.flush.is_none()
    }

    /// The cycle writing the segment that holds block `blk`, when its write has not completed.
    fn unwritten_holding(&self, blk: u64) -> Option<u64> {
        self.writes
            .iter()
            .find(|f| {
                !matches!(f.state, WriteState::Written)
                    && blk >= f.lba
                    && blk < f.lba + u64::from(f.nblocks)
            })
            .map(|f| f.gen)
    }
}

fn submit_err<B>(e: SubmitError<B>) -> (Option<B>, Option<IoError>) {
    match e {
        SubmitError::Busy(b) => (b, None),
        SubmitError::Invalid(b, _) => (b, Some(IoError::Device(libc::EINVAL))),
        SubmitError::Gone(b) => (b, Some(IoError::Gone)),
    }
}

pub(crate) fn elapsed_ns(t: Instant) -> u64 {
    t.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64
}

impl<D: BlockDevice> Shard<D> {
    /// Reaps completions: the cycles' go to the pipeline, the others wait in `sync_done`.
    pub(crate) fn poll_dev(&mut self) -> usize {
        let mut got = std::mem::take(&mut self.polled);
        let n = self.dev.poll(64, |c| got.push(c));
        for c in got.drain(..) {
            if c.tag == TAG_CYCLE_FLUSH || c.tag & TAG_CYCLE_WRITE != 0 {
                self.on_cycle_completion(c);
            } else {
                self.sync_done.push(c);
            }
        }
        self.polled = got;
        n
    }

    /// A failed write (after its retries) or Flush: the segment may or may not be on the device, so stop
    /// writing rather than guess. Nothing in the pipeline becomes durable; reads go on.
    pub(crate) fn fail_pipeline(&mut self, e: IoError, why: &str) {
        self.stats.failed = Some(format!("read-only: {why}: {e}"));
        self.failed = Some(e);
        // Copies GC made into segments that may now never be durable: read the durable originals.
        for (_, key, version, old) in std::mem::take(&mut self.log.moves) {
            self.index.update(&key, |en| {
                let moved = en.version == version && en.loc != old;
                if moved {
                    en.loc = old;
                }
                moved
            });
        }
        for f in self.pipeline.writes.drain(..) {
            if let WriteState::Submit(b) = f.state {
                self.spares.push(b);
            }
        }
        self.pipeline.flush = None;
    }

    fn on_cycle_completion(&mut self, c: Completion<D::Buf>) {
        if self.failed.is_some() {
            if let Some(b) = c.buf {
                self.spares.push(b);
            }
            return;
        }
        if c.tag == TAG_CYCLE_FLUSH {
            if let Some(b) = c.buf {
                self.spares.push(b);
            }
            if let Err(e) = c.result {
                // Not retried: after a failed Flush a device may have dropped what it cached, and a
                // second Flush that succeeds would prove nothing about it (PostgreSQL's fsync lesson).
                self.fail_pipeline(e, "a Flush failed");
                return;
            }
            if let Some(fl) = self.pipeline.flush.take() {
                self.stats.flushes += 1;
                let ns = elapsed_ns(fl.started);
                self.stats.flush_ns_total += ns;
                self.stats.flush_ns_max = self.stats.flush_ns_max.max(ns);
                self.publish(fl.gen, fl.cycles, fl.blocks);
            }
        } else {
            let gen = c.tag & !TAG_CYCLE_WRITE;
            let Some(i) = self.pipeline.writes.iter().position(|f| f.gen == gen) else {
                if let Some(b) = c.buf {
                    self.spares.push(b);
                }
                return;
            };
            match (c.result, c.buf) {
                (Ok(()), buf) => {
                    if let Some(b) = buf {
                        self.spares.push(b);
                    }
                    let f = &mut self.pipeline.writes[i];
                    f.state = WriteState::Written;
                    let ns = elapsed_ns(f.started);
                    self.stats.write_ns_total += ns;
                    self.stats.write_ns_max = self.stats.write_ns_max.max(ns);
                }
                // A failed write is written again, whole, at the same place (the chain points there):
                // a transient error costs a retry, not the shard.
                (Err(_), Some(b)) if self.pipeline.writes[i].retries < WRITE_RETRIES => {
                    let f = &mut self.pipeline.writes[i];
                    f.retries += 1;
                    f.state = WriteState::Submit(b);
                    self.stats.write_retries += 1;
                }
                (Err(e), buf) => {
                    if let Some(b) = buf {
                        self.spares.push(b);
                    }
                    self.fail_pipeline(e, "a segment write failed");
                    return;
                }
            }
        }
        self.advance_cycle();
    }

    /// Moves the pipeline forward as far as it goes without waiting: submits the writes not yet
    /// submitted (in order), then covers the oldest written segments with a Flush (or publishes them
    /// when the device has no volatile cache).
    pub(crate) fn advance_cycle(&mut self) {
        if self.failed.is_some() {
            return;
        }
        for i in 0..self.pipeline.writes.len() {
            let f = &mut self.pipeline.writes[i];
            let state = std::mem::replace(&mut f.state, WriteState::Writing);
            let WriteState::Submit(buf) = state else {
                // Writing or Written: leave it as it was.
                f.state = state;
                continue;
            };
            let (lba, nblocks, tag) = (self.base + f.lba, f.nblocks, TAG_CYCLE_WRITE | f.gen);
            match self.dev.submit_write(lba, nblocks, buf, 0, tag) {
                Ok(()) => {}
                Err(e) => match submit_err(e) {
                    (b, Some(err)) => {
                        if let Some(b) = b {
                            self.spares.push(b);
                        }
                        self.fail_pipeline(err, "a segment write was refused");
                        return;
                    }
                    (Some(b), None) => {
                        self.pipeline.writes[i].state = WriteState::Submit(b);
                        break;
                    }
                    (None, None) => {
                        self.fail_pipeline(
                            IoError::Device(libc::EIO),
                            "a segment write was refused",
                        );
                        return;
                    }
                },
            }
        }
        if self.pipeline.flush.is_none() {
            let mut cycles = 0u32;
            let mut blocks = 0u64;
            let mut gen = 0;
            while let Some(f) = self.pipeline.writes.front() {
                if !matches!(f.state, WriteState::Written) {
                    break;
                }
                cycles += 1;
                blocks += u64::from(f.nblocks);
                gen = f.gen;
                self.pipeline.writes.pop_front();
            }
            if cycles > 0 {
                if self.dev.has_volatile_cache() {
                    self.pipeline.flush = Some(FlushInFlight {
                        gen,
                        cycles,
                        blocks,
                        submitted: false,
                        started: Instant::now(),
                    });
                } else {
                    self.publish(gen, cycles, blocks);
                }
            }
        }
        if let Some(fl) = &mut self.pipeline.flush {
            if !fl.submitted {
                match self.dev.submit_flush(TAG_CYCLE_FLUSH) {
                    Ok(()) => fl.submitted = true,
                    Err(e) => {
                        if let (_, Some(err)) = submit_err(e) {
                            self.fail_pipeline(err, "a Flush was refused");
                        }
                    }
                }
            }
        }
    }

    /// Generations up to `gen` (`cycles` segments of `blocks` blocks since the last publication) are
    /// durable.
    fn publish(&mut self, gen: u64, cycles: u32, blocks: u64) {
        self.durable_gen = gen;
        self.retire_durable_log();
        self.log.moves.retain(|m| m.0 > gen);
        self.stats.cycles += u64::from(cycles);
        self.log.free_durable(self.durable_gen, &mut self.space);
        self.log.segs_since_ckpt += cycles;
        self.log.bytes_since_ckpt += blocks * self.bs;
        // In bytes, not segments: with a short commit interval segments are a few blocks each, and
        // counting them made checkpoints (three Flushes, the shard blocked) the main work of a busy shard.
        let full_buffers = u64::from(self.cfg.checkpoint_every) * self.buf_blocks * self.bs;
        if self.log.bytes_since_ckpt >= full_buffers
            && self.log.bytes_since_ckpt >= self.ckpt_blocks_estimate() * self.bs
        {
            self.ckpts.due = true;
        }
    }

    /// Whether another cycle may start now (a buffer is free to seal the active one into).
    pub(crate) fn cycle_slot_free(&self) -> bool {
        self.pipeline.writes.len() < self.cfg.max_inflight_cycles.max(1)
    }

    /// Polls until another cycle may start.
    pub(crate) fn wait_cycle_slot(&mut self) -> Result<(), Error> {
        if !self.cycle_slot_free() {
            let started = Instant::now();
            while !self.cycle_slot_free() && self.failed.is_none() {
                self.advance_cycle();
                self.poll_dev();
            }
            let ns = elapsed_ns(started);
            self.stats.device_waits += 1;
            self.stats.device_wait_ns_total += ns;
            self.stats.device_wait_ns_max = self.stats.device_wait_ns_max.max(ns);
        }
        self.check_writable()
    }

    /// Seals the active buffer into the next segment and starts writing it. A cycle slot must be free
    /// ([`Self::cycle_slot_free`]).
    pub(crate) fn start_cycle(&mut self) -> Result<(), Error> {
        if self.active.is_empty() {
            return Ok(());
        }
        self.seal_cycle(1)
    }

    /// Seals the active buffer (even when empty: a header-only segment) so that the next one has a
    /// reservation of at least `min_next` blocks; a record that does not fit in the current
    /// reservation gets one that holds it this way.
    pub(crate) fn seal_cycle(&mut self, min_next: u64) -> Result<(), Error> {
        debug_assert!(self.cycle_slot_free());
        // After a failed cycle nothing is sealed: a segment that can never be written would take
        // records (GC's moved copies among them) out of the memory that still serves them.
        self.check_writable()?;
        let started = Instant::now();
        let r = self.seal_and_submit(min_next);
        let ns = elapsed_ns(started);
        self.stats.seals += 1;
        self.stats.seal_ns_total += ns;
        self.stats.seal_ns_max = self.stats.seal_ns_max.max(ns);
        r
    }

    fn seal_and_submit(&mut self, min_next: u64) -> Result<(), Error> {
        if self.active.worth_compacting() {
            self.compact_active();
        }
        let (lba, reserved) = self.log.head;
        let used = self.active.len().div_ceil(self.bs as usize) as u64;
        if used > reserved {
            // Cannot happen: the buffer's limit is its reservation.
            return Err(Error::Config("segment larger than its reservation".into()));
        }
        let (next, next_blocks) = self.next_reservation(lba, reserved, used, min_next)?;
        let seq = self.log.next_seq;
        let mut hdr = SegmentHeader {
            seq,
            volume: self.ckpts.volume,
            epoch: self.ckpts.sb_seq,
            shard_id: self.cfg.shard_id,
            nblocks: 0,
            payload_len: 0,
            payload_crc: 0,
            next_lba: next,
            next_blocks: next_blocks as u32,
            nrecords: 0,
            prev_crc: self.log.chain_crc,
        };
        let (nblocks, crc) = self.active.seal(&mut hdr, self.bs as usize);
        debug_assert_eq!(u64::from(nblocks), used);
        self.log.chain_crc = crc;
        // Reads of this segment (also while it is being written) come from memory.
        self.cache
            .insert(lba, self.active.image(nblocks as usize * self.bs as usize));
        // The index already points at the records' places in this segment (entries of buffered
        // records hold where the buffer is written), so sealing changes no entry; the records the
        // buffer's count holds are the segment's live bytes.
        let live = self.active.live_bytes() as u64;
        #[cfg(debug_assertions)]
        self.check_live_bytes(lba, live);
        // Give back the part of this reservation that neither this segment nor the next one uses.
        let tail_end = lba + reserved;
        let keep_until = if next == lba + used {
            (next + next_blocks).min(tail_end)
        } else {
            lba + used
        };
        if tail_end > keep_until {
            let _ = self.space.free(keep_until, tail_end - keep_until);
        }
        self.log.segments.insert(
            lba,
            SegInfo {
                seq,
                blocks: nblocks,
                live,
            },
        );
        self.log.head = (next, next_blocks);
        self.log.next_seq += 1;
        let fresh = match self.spares.pop() {
            Some(b) => b,
            None => self.dev.alloc_buf(self.active.capacity())?,
        };
        let buf = self.active.swap(fresh);
        self.active.set_limit((next_blocks * self.bs) as usize);
        self.pipeline.writes.push_back(InFlight {
            gen: self.active_gen,
            lba,
            nblocks,
            state: WriteState::Submit(buf),
            started: Instant::now(),
            retries: 0,
        });
        self.active_gen += 1;
        self.active_since = None;
        self.check_space();
        self.advance_cycle();
        Ok(())
    }

    /// Test builds: the buffer's count of live bytes is what the index points at in it (the count
    /// replaced a pass over the index at every seal, which took over a millisecond at a million keys).
    #[cfg(debug_assertions)]
    fn check_live_bytes(&self, lba: u64, live: u64) {
        let base = lba * self.bs;
        let pointed: u64 = self
            .active
            .records()
            .filter(|(off, r)| {
                !r.tombstone
                    && self
                        .index
                        .get(r.key)
                        .is_some_and(|e| e.loc == base + *off as u64)
            })
            .map(|(_, r)| crate::format::record_len(r.key.len(), r.value.len()) as u64)
            .sum();
        assert_eq!(pointed, live, "write buffer's live bytes against the index");
    }

    /// Where the segment after the one being sealed (at `lba`, `reserved` blocks, `used` of them) goes,
    /// and how many blocks it may fill: right behind it when a whole buffer's worth is free there — the
    /// log stays sequential and free space does not fragment into reservation-sized holes — else the
    /// best fit for a whole buffer elsewhere, else the largest free extent (at least `min` blocks):
    /// fragmented free space still takes segments, only smaller ones.
    fn next_reservation(
        &mut self,
        lba: u64,
        reserved: u64,
        used: u64,
        min: u64,
    ) -> Result<(u64, u64), Error> {
        let next = lba + used;
        let owned_end = lba + reserved;
        let want_end = next + self.buf_blocks;
        if want_end <= owned_end || self.space.alloc_at(owned_end, want_end - owned_end) {
            return Ok((next, self.buf_blocks));
        }
        if let Some(l) = self.space.alloc(self.buf_blocks) {
            return Ok((l, self.buf_blocks));
        }
        let tail = owned_end - next;
        let largest = self.space.largest();
        if largest > tail && largest >= min {
            if let Some(l) = self.space.alloc(largest) {
                return Ok((l, largest));
            }
        }
        if tail >= min.max(1) {
            return Ok((next, tail));
        }
        Err(Error::NoSpace)
    }

    /// Polls until every cycle started is durable (or the pipeline failed).
    pub(crate) fn drive_cycle(&mut self) -> Result<(), Error> {
        while !self.pipeline.is_idle() && self.failed.is_none() {
            self.advance_cycle();
            if !self.pipeline.is_idle() {
                self.poll_dev();
            }
        }
        self.check_writable()
    }

    /// Polls until the segment holding block `blk`, if it is being written, is on the device (reads
    /// may then go to the device).
    pub(crate) fn drive_write_holding(&mut self, blk: u64) -> Result<(), Error> {
        while self.pipeline.unwritten_holding(blk).is_some() && self.failed.is_none() {
            self.advance_cycle();
            self.poll_dev();
        }
        // After a failed cycle reads go on: a record whose segment never reached the device fails
        // its checks when read back, everything durable reads as before.
        Ok(())
    }

    fn sync_io(
        &mut self,
        mut submit: impl FnMut(&mut D, u64, Option<D::Buf>) -> Result<(), SubmitError<D::Buf>>,
        mut buf: Option<D::Buf>,
    ) -> Result<Option<D::Buf>, Error> {
        let tag = self.next_tag;
        self.next_tag += 1;
        loop {
            match submit(&mut self.dev, tag, buf.take()) {
                Ok(()) => break,
                Err(e) => match submit_err(e) {
                    (_, Some(err)) => return Err(Error::Io(err)),
                    (b, None) => {
                        buf = b;
                        self.poll_dev();
                        self.advance_cycle();
                    }
                },
            }
        }
        loop {
            if let Some(i) = self.sync_done.iter().position(|c| c.tag == tag) {
                let c = self.sync_done.swap_remove(i);
                c.result?;
                return Ok(c.buf);
            }
            self.poll_dev();
            self.advance_cycle();
        }
    }

    /// Reads `nblocks` at slice block `lba` into `buf`, waiting.
    pub(crate) fn sync_read(
        &mut self,
        lba: u64,
        nblocks: u32,
        buf: D::Buf,
    ) -> Result<D::Buf, Error> {
        self.sync_read_at(lba, nblocks, buf, 0)
    }

    /// Reads `nblocks` at slice block `lba` into `buf[off..]`, waiting.
    pub(crate) fn sync_read_at(
        &mut self,
        lba: u64,
        nblocks: u32,
        buf: D::Buf,
        off: usize,
    ) -> Result<D::Buf, Error> {
        let dev_lba = self.base + lba;
        let b = self.sync_io(
            |d, tag, b| match b {
                Some(b) => d.submit_read(dev_lba, nblocks, b, off, tag),
                None => Err(SubmitError::Invalid(None, "no buffer")),
            },
            Some(buf),
        )?;
        b.ok_or(Error::Io(IoError::Device(libc::EIO)))
    }

    /// Writes `nblocks` at slice block `lba` from `buf`, waiting; returns the buffer.
    pub(crate) fn sync_write(
        &mut self,
        lba: u64,
        nblocks: u32,
        buf: D::Buf,
    ) -> Result<Option<D::Buf>, Error> {
        self.sync_write_at(lba, nblocks, buf, 0)
    }

    /// Writes `nblocks` at slice block `lba` from `buf[off..]`, waiting; returns the buffer.
    pub(crate) fn sync_write_at(
        &mut self,
        lba: u64,
        nblocks: u32,
        buf: D::Buf,
        off: usize,
    ) -> Result<Option<D::Buf>, Error> {
        let dev_lba = self.base + lba;
        self.sync_io(
            |d, tag, b| match b {
                Some(b) => d.submit_write(dev_lba, nblocks, b, off, tag),
                None => Err(SubmitError::Invalid(None, "no buffer")),
            },
            Some(buf),
        )
    }

    /// Flushes the volatile cache (when there is one), waiting.
    pub(crate) fn sync_flush(&mut self) -> Result<(), Error> {
        if self.dev.has_volatile_cache() {
            self.sync_io(|d, tag, _| d.submit_flush(tag), None)?;
        }
        Ok(())
    }
}
