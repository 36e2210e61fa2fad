//! The append-only write buffer: records packed after a segment header in a device buffer, so a full
//! buffer *is* the segment image and goes to the device without a copy. A shard has two: one fills while
//! the other is being written (see `persist`). A newer write of a key that is still in the buffer
//! overwrites the old record in place when the sizes match, and otherwise leaves it dead. The buffer
//! lists its dead records, so [`WriteBuffer::compact`] squeezes them out without asking the index which
//! records are live. Dead records may also be written as they are: recovery replays a segment's records
//! in order, and the record that replaced a dead one comes after it.

use crate::format::{self, SegmentHeader, REC_HDR_LEN, SEG_HDR_LEN};

/// A write buffer over the device buffer type `B`.
#[derive(Debug)]
pub struct WriteBuffer<B> {
    buf: B,
    /// Bytes this buffer may fill: the log reservation it will be written to (at most the capacity).
    limit: usize,
    len: usize,
    dead_bytes: usize,
    /// Offsets of the records replaced by a later record of another size (in the order they died).
    dead: Vec<u32>,
    /// Bytes of the value records no later record in this buffer replaced: the records the index points
    /// at, which the segment's live bytes start from when it is sealed.
    live_bytes: usize,
    records: u32,
}

impl<B: std::ops::DerefMut<Target = [u8]>> WriteBuffer<B> {
    /// Wraps an empty device buffer (its length is the capacity).
    pub fn new(buf: B) -> Self {
        WriteBuffer {
            limit: buf.len(),
            buf,
            len: SEG_HDR_LEN,
            dead_bytes: 0,
            dead: Vec::new(),
            live_bytes: 0,
            records: 0,
        }
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }
    /// Bytes used (header included).
    pub fn len(&self) -> usize {
        self.len
    }
    /// No records?
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }
    /// Bytes of records superseded inside this buffer.
    pub fn dead_bytes(&self) -> usize {
        self.dead_bytes
    }
    /// Bytes of value records not superseded inside this buffer (see [`WriteBuffer::append`]).
    pub fn live_bytes(&self) -> usize {
        self.live_bytes
    }
    /// Limits the bytes this buffer fills (header included) to the reservation it will be written to.
    pub fn set_limit(&mut self, bytes: usize) {
        self.limit = bytes.min(self.buf.len());
    }
    /// Whether a record of `rec_len` bytes fits.
    pub fn fits(&self, rec_len: usize) -> bool {
        self.len + rec_len <= self.limit
    }
    /// Whether it would fit once dead records are squeezed out.
    pub fn fits_after_compaction(&self, rec_len: usize) -> bool {
        self.len - self.dead_bytes + rec_len <= self.limit
    }
    /// Whether squeezing out the dead records is worth its cost: every live record behind the first
    /// dead one moves, and each move is an index update (about 1 ms for a megabyte of small records at a
    /// million keys). At least as many dead bytes as live ones bounds that work by half a buffer and
    /// saves at least half the write; below that the dead records are written as they are, and GC
    /// reclaims them with the segment.
    pub fn worth_compacting(&self) -> bool {
        self.dead_bytes > 0 && self.dead_bytes >= self.live_bytes
    }
    /// Whether it would fit in an empty buffer of a full reservation.
    pub fn fits_empty(&self, rec_len: usize) -> bool {
        SEG_HDR_LEN + rec_len <= self.buf.len()
    }

    /// Appends a record, or overwrites the key's buffered record `prev` (its offset, as the index knows
    /// it) in place when it has the same size; a replaced record of another size becomes dead bytes.
    /// Returns the record's offset. The caller checked [`WriteBuffer::fits`], and passes as `prev` the
    /// key's record whenever the index points into this buffer: that is what keeps
    /// [`WriteBuffer::live_bytes`] exact.
    pub fn append(
        &mut self,
        prev: Option<u32>,
        tombstone: bool,
        ts: u64,
        version: u64,
        key: &[u8],
        value: &[u8],
    ) -> u32 {
        let rl = format::record_len(key.len(), value.len());
        if !tombstone {
            self.live_bytes += rl;
        }
        if let Some(old) = prev {
            let o = old as usize;
            if let Ok((okl, ovl)) = format::record_lens(&self.buf[o..]) {
                let old_rl = format::record_len(okl, ovl);
                if self.buf[o + 4] & format::FLAG_TOMBSTONE == 0 {
                    self.live_bytes -= old_rl;
                }
                if old_rl == rl {
                    format::encode_record(
                        &mut self.buf[o..o + rl],
                        tombstone,
                        ts,
                        version,
                        key,
                        value,
                    );
                    return old;
                }
                self.dead_bytes += old_rl;
                self.dead.push(old);
            }
        }
        let off = self.len;
        format::encode_record(
            &mut self.buf[off..off + rl],
            tombstone,
            ts,
            version,
            key,
            value,
        );
        self.len += rl;
        self.records += 1;
        off as u32
    }

    /// The record at `off`, checked.
    pub fn record(&self, off: usize) -> Result<format::Record<'_>, format::FormatError> {
        let b = self
            .buf
            .get(off..self.len)
            .ok_or(format::FormatError::Truncated("buffered record"))?;
        format::decode_record(b).map(|(r, _)| r)
    }

    /// Squeezes out the dead records; `moved(key, old_off, new_off)` is called for every value record
    /// that moves, so its index entry follows. Tombstones that nothing replaced stay: replay needs them to
    /// delete what older segments hold.
    pub fn compact(&mut self, mut moved: impl FnMut(&[u8], u32, u32)) {
        if self.dead.is_empty() {
            return;
        }
        self.dead.sort_unstable();
        let mut dead = self.dead.iter().copied().peekable();
        let mut rd = SEG_HDR_LEN;
        let mut wr = SEG_HDR_LEN;
        let mut records = 0;
        let mut live_bytes = 0;
        while rd < self.len {
            let Ok((kl, vl)) = format::record_lens(&self.buf[rd..]) else {
                break;
            };
            let rl = format::record_len(kl, vl);
            if dead.peek() == Some(&(rd as u32)) {
                dead.next();
                rd += rl;
                continue;
            }
            let tombstone = self.buf[rd + 4] & format::FLAG_TOMBSTONE != 0;
            if rd != wr {
                self.buf.copy_within(rd..rd + rl, wr);
                if !tombstone {
                    let key = &self.buf[wr + REC_HDR_LEN..wr + REC_HDR_LEN + kl];
                    moved(key, rd as u32, wr as u32);
                }
            }
            if !tombstone {
                live_bytes += rl;
            }
            wr += rl;
            records += 1;
            rd += rl;
        }
        // Every listed offset was a record's start, and each record dies once.
        assert!(dead.next().is_none(), "a dead offset names no record");
        debug_assert_eq!(live_bytes, self.live_bytes);
        self.len = wr;
        self.records = records;
        self.dead_bytes = 0;
        self.dead.clear();
        self.live_bytes = live_bytes;
    }

    /// Iterates (offset, record) over the buffer's records (dead ones included unless compacted).
    pub fn records(&self) -> impl Iterator<Item = (usize, format::Record<'_>)> + '_ {
        format::records(&self.buf[SEG_HDR_LEN..self.len])
            .map_while(Result::ok)
            .map(|(o, r)| (o + SEG_HDR_LEN, r))
    }

    /// Writes the segment header and zeroes the tail of the last block; returns the blocks to write
    /// and the header's crc.
    pub fn seal(&mut self, hdr: &mut SegmentHeader, block_size: usize) -> (u32, u32) {
        let nblocks = self.len.div_ceil(block_size);
        let end = (nblocks * block_size).min(self.buf.len());
        self.buf[self.len..end].fill(0);
        hdr.nblocks = nblocks as u32;
        hdr.payload_len = (self.len - SEG_HDR_LEN) as u32;
        hdr.payload_crc = crc32c::crc32c(&self.buf[SEG_HDR_LEN..self.len]);
        hdr.nrecords = self.records;
        let crc = hdr.encode(&mut self.buf[..SEG_HDR_LEN]);
        (nblocks as u32, crc)
    }

    /// The first `len` bytes of the sealed buffer (the segment image).
    pub fn image(&self, len: usize) -> &[u8] {
        &self.buf[..len.min(self.buf.len())]
    }

    /// Gives the device buffer up (to be written) and resets this one around `next`.
    pub fn swap(&mut self, next: B) -> B {
        self.len = SEG_HDR_LEN;
        self.dead_bytes = 0;
        self.dead.clear();
        self.live_bytes = 0;
        self.records = 0;
        std::mem::replace(&mut self.buf, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_bytes_count_the_records_nothing_replaced() {
        let rl = format::record_len;
        let mut b = WriteBuffer::new(vec![0u8; 4096]);
        let a = b.append(None, false, 1, 1, b"k1", b"aaaa");
        let c = b.append(None, false, 2, 2, b"k2", b"bb");
        assert_eq!(b.live_bytes(), rl(2, 4) + rl(2, 2));
        // In place: same size, still one live record.
        assert_eq!(b.append(Some(a), false, 3, 3, b"k1", b"cccc"), a);
        assert_eq!(b.live_bytes(), rl(2, 4) + rl(2, 2));
        // A tombstone replaces k2's value: not live (tombstones are never what the index points at).
        let t = b.append(Some(c), true, 4, 4, b"k2", b"");
        assert_eq!(b.live_bytes(), rl(2, 4));
        // A value over the buffered tombstone.
        let d = b.append(Some(t), false, 5, 5, b"k2", b"ddddddd");
        assert_eq!(b.live_bytes(), rl(2, 4) + rl(2, 7));
        // An empty value over a tombstone of the same size is written in place and becomes live.
        let e = b.append(None, true, 6, 6, b"k3", b"");
        assert_eq!(b.append(Some(e), false, 7, 7, b"k3", b""), e);
        assert_eq!(b.live_bytes(), rl(2, 4) + rl(2, 7) + rl(2, 0));
        // And back: the tombstone in place is not live.
        assert_eq!(b.append(Some(e), true, 8, 8, b"k3", b""), e);
        assert_eq!(b.live_bytes(), rl(2, 4) + rl(2, 7));
        // Compaction drops k2's first value and the tombstone that replaced it, keeps k3's tombstone,
        // and moves k2's newest value and k3's tombstone forward.
        let mut moves = vec![];
        b.compact(|k, o, n| moves.push((k.to_vec(), o, n)));
        assert_eq!(
            moves,
            vec![(b"k2".to_vec(), d, c)],
            "tombstones move unreported"
        );
        assert_eq!(b.live_bytes(), rl(2, 4) + rl(2, 7));
        let kept: Vec<_> = b
            .records()
            .map(|(o, r)| (o as u32, r.key.to_vec(), r.tombstone))
            .collect();
        let after_d = c + rl(2, 7) as u32;
        assert_eq!(
            kept,
            vec![
                (a, b"k1".to_vec(), false),
                (c, b"k2".to_vec(), false),
                (after_d, b"k3".to_vec(), true)
            ]
        );
        assert_eq!(b.dead_bytes(), 0);
        b.swap(vec![0u8; 4096]);
        assert_eq!(b.live_bytes(), 0);
    }

    #[test]
    fn overwrite_in_place_and_compact() {
        let mut b = WriteBuffer::new(vec![0u8; 4096]);
        let a = b.append(None, false, 1, 1, b"k1", b"aaaa");
        let c = b.append(None, false, 2, 2, b"k2", b"bb");
        // Same size: in place.
        assert_eq!(b.append(Some(a), false, 3, 3, b"k1", b"cccc"), a);
        assert_eq!(b.dead_bytes(), 0);
        // Different size: appended, the old one dies.
        let d = b.append(Some(c), false, 4, 4, b"k2", b"ddddd");
        assert!(d > c);
        assert!(b.dead_bytes() > 0);
        let mut moves = vec![];
        b.compact(|k, o, n| moves.push((k.to_vec(), o, n)));
        assert_eq!(moves, vec![(b"k2".to_vec(), d, c)]);
        let recs: Vec<_> = b.records().map(|(o, r)| (o, r.value.to_vec())).collect();
        assert_eq!(
            recs,
            vec![
                (a as usize, b"cccc".to_vec()),
                (c as usize, b"ddddd".to_vec())
            ]
        );
        let mut h = SegmentHeader {
            seq: 1,
            volume: [1; 16],
            epoch: 1,
            shard_id: 0,
            nblocks: 0,
            payload_len: 0,
            payload_crc: 0,
            next_lba: 9,
            next_blocks: 1,
            nrecords: 0,
            prev_crc: 0,
        };
        let (n, crc) = b.seal(&mut h, 512);
        assert_eq!(n, 1);
        let img = b.swap(vec![0u8; 4096]);
        let (h2, crc2) = SegmentHeader::decode(&img, 512).expect("header");
        assert_eq!((&h2, crc2), (&h, crc));
        assert!(h2.check_payload(&img).is_ok());
    }
}
