//! The durable log: a circular log of checksummed, chained records in one shard's persistent memory.
//!
//! A durable write is appended here (besides going into the write buffer as every write does) and is
//! acknowledged once a barrier covers its record: microseconds instead of a persistence cycle. A
//! persistence cycle that makes the write's segment durable retires the record; the region header,
//! rewritten now and then, names the oldest record still needed. Recovery replays the records after
//! what the segments hold (see `recovery`), in order, stopping at the first that does not check out.
//!
//! Rules that keep every acknowledged write and never replay a wrong one:
//! - A record carries the volume id, the shard, the attachment's epoch (which the superblock names),
//!   its sequence number and the crc of the record before it: a record an earlier attachment, an
//!   earlier lap of the circle or another database left behind ends the log, it is never replayed.
//! - Space is reused only behind the head of a header a barrier covered (the persisted head): a header
//!   torn by a crash leaves the other copy, whose head still points at intact records.
//! - Only one header write is outstanding at a time, always into the slot the newest persisted header
//!   does not occupy.
//! - A replayed record is applied only when its version is newer than everything the checkpoint and the
//!   segments held: versions only grow, so an older one is already there (or superseded by a write the
//!   segments hold, such as a delete), and replay is idempotent across crashes during recovery.

use std::collections::VecDeque;

use crate::format::{
    self, check_dlog_record, dlog_record_len, DlogHeader, DlogRecordHeader, FormatError, VolumeId,
    DLOG_DATA_START, DLOG_HDR_LEN, DLOG_HDR_SLOT, DLOG_KIND_PAD, DLOG_KIND_WRITE,
    DLOG_MIN_CAPACITY, DLOG_REC_HDR_LEN,
};
use crate::pmem::{PersistentMemory, PmemError};

mod device;
mod shard;

pub use device::DurableLogDevice;
pub(crate) use device::{region_bytes, regions};
pub(crate) use shard::DurableLogSlot;

/// Records longer than this fraction of the area go the cycle path (a few huge values must not
/// crowd out the small writes the log is for).
const MAX_RECORD_FRACTION: u64 = 8;

/// A position in the log: where the next record starts, its sequence number and its chain value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Cursor {
    pos: u64,
    lsn: u64,
    prev: u32,
}

/// Why an append went the cycle path instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotLogged {
    /// The log holds too many unretired records.
    Full,
    /// The record is too large for the log.
    TooLarge,
    /// A barrier failed earlier: the log takes no more writes in this life.
    Failed,
}

/// A write found in the log by recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoggedWrite {
    pub lsn: u64,
    pub tombstone: bool,
    pub ts: u64,
    pub version: u64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// Values the log holds, by key: (version, value).
pub(crate) type LoggedValues = std::collections::HashMap<Vec<u8>, (u64, Vec<u8>)>;

/// What a scan of the log found.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// The writes, in log order.
    pub writes: Vec<LoggedWrite>,
    /// Why the scan stopped.
    pub stop: String,
}

/// One shard's durable log, attached (records may be appended).
pub(crate) struct DurableLog {
    mem: Box<dyn PersistentMemory>,
    volume: VolumeId,
    shard_id: u32,
    epoch: u64,
    /// Bytes of the record area (a multiple of 8).
    cap: u64,
    /// Where the next record goes.
    tail: Cursor,
    /// The oldest record not yet retired.
    head: Cursor,
    /// The head the newest persisted header names: bytes from here on are not reused.
    persisted_head: u64,
    /// Sequence number of the newest persisted header.
    hdr_seq: u64,
    /// A header write (seq `hdr_seq + 1`, naming this head) that no barrier covered yet.
    hdr_pending: Option<u64>,
    /// Newest record appended, and newest a barrier covered.
    appended_lsn: u64,
    durable_lsn: u64,
    /// The end of each generation's records, oldest first: retiring generation g moves the head there.
    marks: VecDeque<(u64, Cursor)>,
    /// Set once a barrier failed: no further appends.
    failed: Option<PmemError>,
    /// Bytes of one record being built.
    scratch: Vec<u8>,
    /// Barriers issued (records and headers).
    pub barriers: u64,
    /// Write records appended since the last barrier.
    pub unbarriered_writes: u64,
}

impl std::fmt::Debug for DurableLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableLog")
            .field("kind", &self.mem.kind())
            .field("epoch", &self.epoch)
            .field("tail", &self.tail)
            .field("head", &self.head)
            .finish()
    }
}

/// The chain value of the first record of an attachment.
fn chain_seed(volume: &VolumeId, epoch: u64) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(volume), &epoch.to_le_bytes())
}

/// The record-area capacity of a region of `len` bytes (None: too small).
pub(crate) fn capacity(len: usize) -> Option<u64> {
    let cap = (len.checked_sub(DLOG_DATA_START)? / 8 * 8) as u64;
    (cap >= DLOG_MIN_CAPACITY as u64).then_some(cap)
}

/// Reads both header copies; returns the valid one of epoch `epoch` (any epoch when None) with the
/// highest sequence number, or why there is none.
fn read_header(
    mem: &dyn PersistentMemory,
    volume: &VolumeId,
    shard_id: u32,
    epoch: Option<u64>,
) -> Result<DlogHeader, String> {
    let mut best: Option<DlogHeader> = None;
    let mut why = Vec::new();
    for slot in 0..2 {
        let mut b = [0u8; DLOG_HDR_LEN];
        mem.read(slot * DLOG_HDR_SLOT, &mut b);
        match DlogHeader::decode(&b) {
            Ok(h) if h.volume != *volume => why.push(format!("copy {slot}: another database's")),
            Ok(h) if h.shard_id != shard_id => {
                why.push(format!("copy {slot}: shard {}'s", h.shard_id))
            }
            Ok(h) if h.region_len != mem.len() as u64 => why.push(format!(
                "copy {slot}: a region of {} bytes, this one has {}",
                h.region_len,
                mem.len()
            )),
            Ok(h) if epoch.is_some_and(|e| e != h.epoch) => why.push(format!(
                "copy {slot}: epoch {}, not {}",
                h.epoch,
                epoch.unwrap_or(0)
            )),
            Ok(h) if (h.seq % 2) as usize != slot => why.push(format!("copy {slot}: misplaced")),
            Ok(h) => {
                if best.is_none_or(|b| h.seq > b.seq) {
                    best = Some(h);
                }
            }
            Err(e) => why.push(format!("copy {slot}: {e}")),
        }
    }
    best.ok_or_else(|| why.join("; "))
}

/// Reads the log attached as `epoch` and returns its records from the header's head on, stopping at
/// the first that does not check out. Reads only.
pub(crate) fn scan(
    mem: &dyn PersistentMemory,
    volume: &VolumeId,
    shard_id: u32,
    epoch: u64,
) -> Result<Scan, String> {
    let cap = capacity(mem.len()).ok_or("region too small")?;
    let h = read_header(mem, volume, shard_id, Some(epoch))?;
    let mut out = Scan::default();
    let mut at = Cursor {
        pos: h.head_pos,
        lsn: h.head_lsn,
        prev: h.head_prev,
    };
    let mut buf = Vec::new();
    let stop = loop {
        if at.pos - h.head_pos >= cap {
            break "the whole area was read".to_string();
        }
        let off = at.pos % cap;
        let left = cap - off;
        if left < DLOG_REC_HDR_LEN as u64 {
            at.pos += left;
            continue;
        }
        let mut hb = [0u8; DLOG_REC_HDR_LEN];
        mem.read(DLOG_DATA_START + off as usize, &mut hb);
        let r = match DlogRecordHeader::decode(&hb) {
            Ok(r) => r,
            Err(e) => break format!("record {}: {e}", at.lsn),
        };
        if r.epoch != epoch || r.volume != *volume || r.shard_id != shard_id {
            break format!("record {}: another attachment's", at.lsn);
        }
        if r.lsn != at.lsn || r.prev != at.prev {
            break format!("record {}: not the next in the chain", at.lsn);
        }
        if u64::from(r.len) > left || at.pos + u64::from(r.len) - h.head_pos > cap {
            break format!("record {}: longer than the area", at.lsn);
        }
        let body = DLOG_REC_HDR_LEN + r.payload_len as usize;
        buf.resize(body, 0);
        mem.read(DLOG_DATA_START + off as usize, &mut buf);
        let crc = match check_dlog_record(&r, &buf) {
            Ok(c) => c,
            Err(e) => break format!("record {}: {e}", at.lsn),
        };
        if r.kind == DLOG_KIND_WRITE {
            let rec = match format::decode_record(&buf[DLOG_REC_HDR_LEN..]) {
                Ok((rec, n)) if n == r.payload_len as usize => rec,
                Ok(_) => break format!("record {}: {}", at.lsn, FormatError::BadField("length")),
                Err(e) => break format!("record {}: {e}", at.lsn),
            };
            out.writes.push(LoggedWrite {
                lsn: r.lsn,
                tombstone: rec.tombstone,
                ts: rec.ts,
                version: rec.version,
                key: rec.key.to_vec(),
                value: rec.value.to_vec(),
            });
        } else {
            debug_assert_eq!(r.kind, DLOG_KIND_PAD);
        }
        at = Cursor {
            pos: at.pos + u64::from(r.len),
            lsn: at.lsn + 1,
            prev: crc,
        };
    };
    out.stop = stop;
    Ok(out)
}

impl DurableLog {
    /// Attaches `mem` as a new, empty log of epoch `epoch`: both header slots rewritten (the older
    /// slot zeroed, so no header of an earlier attachment can outrank this one), then a barrier.
    pub(crate) fn attach(
        mem: Box<dyn PersistentMemory>,
        volume: VolumeId,
        shard_id: u32,
        epoch: u64,
    ) -> Result<Self, PmemError> {
        let cap = capacity(mem.len()).ok_or_else(|| {
            PmemError::Map(format!(
                "region of {} bytes; the durable log needs at least {}",
                mem.len(),
                DLOG_DATA_START + DLOG_MIN_CAPACITY
            ))
        })?;
        assert!(epoch != 0, "epoch 0 means no durable log");
        let start = Cursor {
            pos: 0,
            lsn: 1,
            prev: chain_seed(&volume, epoch),
        };
        let mut log = DurableLog {
            mem,
            volume,
            shard_id,
            epoch,
            cap,
            tail: start,
            head: start,
            persisted_head: 0,
            hdr_seq: 0,
            hdr_pending: None,
            appended_lsn: 0,
            durable_lsn: 0,
            marks: VecDeque::new(),
            failed: None,
            scratch: Vec::new(),
            barriers: 0,
            unbarriered_writes: 0,
        };
        log.mem.write(0, &[0u8; DLOG_HDR_LEN]);
        log.write_header();
        log.barrier()?;
        Ok(log)
    }

    /// What the region is ("pmr", "devdax", ...).
    pub(crate) fn kind(&self) -> &'static str {
        self.mem.kind()
    }

    /// Bytes of unretired records (and padding).
    pub(crate) fn used(&self) -> u64 {
        self.tail.pos - self.head.pos
    }

    /// The writes this log holds from its persisted head on (what recovery would read now).
    pub(crate) fn scan_own(&self) -> Result<Scan, String> {
        scan(&*self.mem, &self.volume, self.shard_id, self.epoch)
    }

    /// Bytes appended since the attachment (records, pads and skipped ends).
    pub(crate) fn appended(&self) -> u64 {
        self.tail.pos
    }

    /// Bytes of the record area.
    pub(crate) fn capacity(&self) -> u64 {
        self.cap
    }

    /// Whether a barrier covered record `lsn`.
    pub(crate) fn is_durable(&self, lsn: u64) -> bool {
        lsn != 0 && lsn <= self.durable_lsn
    }

    /// Whether records or a header wait for a barrier.
    pub(crate) fn barrier_due(&self) -> bool {
        self.appended_lsn > self.durable_lsn || self.hdr_pending.is_some()
    }

    /// Writes the header naming the current head into the slot of the next header sequence number
    /// (rewriting it when a previous write there is still pending: the persisted one stays intact).
    fn write_header(&mut self) {
        let h = DlogHeader {
            volume: self.volume,
            shard_id: self.shard_id,
            region_len: self.mem.len() as u64,
            epoch: self.epoch,
            seq: self.hdr_seq + 1,
            head_pos: self.head.pos,
            head_lsn: self.head.lsn,
            head_prev: self.head.prev,
        };
        let mut b = [0u8; DLOG_HDR_LEN];
        h.encode(&mut b);
        self.mem.write((h.seq % 2) as usize * DLOG_HDR_SLOT, &b);
        self.hdr_pending = Some(self.head.pos);
    }

    /// Makes every record appended and the pending header persistent. A failure ends the log's use
    /// for this life: the records it did not cover are acknowledged by the cycle path instead.
    pub(crate) fn barrier(&mut self) -> Result<(), PmemError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if !self.barrier_due() {
            return Ok(());
        }
        if let Err(e) = self.mem.barrier() {
            self.failed = Some(e.clone());
            return Err(e);
        }
        self.barriers += 1;
        self.unbarriered_writes = 0;
        self.durable_lsn = self.appended_lsn;
        if let Some(p) = self.hdr_pending.take() {
            self.hdr_seq += 1;
            self.persisted_head = p;
        }
        Ok(())
    }

    /// Appends a write of generation `gen`; returns its sequence number (durable once a barrier
    /// covers it, see [`DurableLog::is_durable`]).
    pub(crate) fn append(
        &mut self,
        gen: u64,
        tombstone: bool,
        ts: u64,
        version: u64,
        key: &[u8],
        value: &[u8],
    ) -> Result<u64, NotLogged> {
        if self.failed.is_some() {
            return Err(NotLogged::Failed);
        }
        let payload = format::record_len(key.len(), value.len());
        let len = dlog_record_len(payload) as u64;
        if len > self.cap / MAX_RECORD_FRACTION {
            return Err(NotLogged::TooLarge);
        }
        let left = self.cap - self.tail.pos % self.cap;
        let skip = if left < len { left } else { 0 };
        if !self.room_for(skip + len) {
            return Err(NotLogged::Full);
        }
        if skip >= DLOG_REC_HDR_LEN as u64 {
            // Only the pad's header is written: a scan does not read the rest of the area.
            self.put_record(DLOG_KIND_PAD, skip as u32, 0, &mut [0u8; DLOG_REC_HDR_LEN]);
        } else {
            self.tail.pos += skip;
        }
        self.scratch.clear();
        self.scratch.resize(len as usize, 0);
        format::encode_record(
            &mut self.scratch[DLOG_REC_HDR_LEN..DLOG_REC_HDR_LEN + payload],
            tombstone,
            ts,
            version,
            key,
            value,
        );
        let mut rec = std::mem::take(&mut self.scratch);
        let lsn = self.tail.lsn;
        self.put_record(DLOG_KIND_WRITE, len as u32, payload, &mut rec);
        self.scratch = rec;
        self.unbarriered_writes += 1;
        match self.marks.back_mut() {
            Some((g, end)) if *g == gen => *end = self.tail,
            _ => self.marks.push_back((gen, self.tail)),
        }
        Ok(lsn)
    }

    /// Whether `n` more bytes fit without reusing bytes at or after the persisted head; makes the
    /// retired head persistent first when that is what it takes.
    fn room_for(&mut self, n: u64) -> bool {
        let cap = self.cap;
        let fits = move |persisted: u64, tail: u64| tail + n - persisted <= cap;
        if fits(self.persisted_head, self.tail.pos) {
            return true;
        }
        if self.head.pos == self.persisted_head || !fits(self.head.pos, self.tail.pos) {
            return false;
        }
        // Retired records hold the space: name the new head in a header and cover it (and the
        // records appended since the last barrier) now.
        self.write_header();
        self.barrier().is_ok() && fits(self.persisted_head, self.tail.pos)
    }

    /// Writes a record of `kind`, `len` bytes long with `payload_len` payload bytes, at the tail; `rec`
    /// holds the whole record, its header to be filled in (a pad's is just the header).
    fn put_record(&mut self, kind: u32, len: u32, payload_len: usize, rec: &mut [u8]) {
        let h = DlogRecordHeader {
            len,
            kind,
            lsn: self.tail.lsn,
            epoch: self.epoch,
            volume: self.volume,
            shard_id: self.shard_id,
            payload_len: payload_len as u32,
            prev: self.tail.prev,
        };
        let (hb, body) = rec.split_at_mut(DLOG_REC_HDR_LEN);
        let crc = h.encode(hb, &body[..payload_len]);
        let off = DLOG_DATA_START + (self.tail.pos % self.cap) as usize;
        self.mem.write(off, rec);
        self.tail = Cursor {
            pos: self.tail.pos + u64::from(len),
            lsn: self.tail.lsn + 1,
            prev: crc,
        };
        self.appended_lsn = h.lsn;
    }

    /// Retires the records of generations up to `durable_gen` (their segments are durable). The
    /// header naming the new head is written once a quarter of the area waits behind the persisted
    /// head; the next barrier covers it.
    pub(crate) fn retire(&mut self, durable_gen: u64) {
        while let Some(&(g, end)) = self.marks.front() {
            if g > durable_gen {
                break;
            }
            self.head = end;
            self.marks.pop_front();
        }
        if self.head.pos - self.persisted_head >= self.cap / 4 {
            self.write_header();
        }
    }
}

#[cfg(test)]
mod tests;
