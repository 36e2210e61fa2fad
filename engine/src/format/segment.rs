//! Segments: a chained header, then records packed back to back.

use super::*;

/// The header at the start of every segment (the first [`SEG_HDR_LEN`] bytes of its first block).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Log sequence number: segment n+1 is found at segment n's `next_lba`.
    pub seq: u64,
    /// The database this segment belongs to.
    pub volume: VolumeId,
    /// Sequence number of the superblock in force when it was written. Along the log epochs never
    /// decrease, so a segment an earlier life left behind at the next location ends the log.
    pub epoch: u64,
    /// Owner shard.
    pub shard_id: u32,
    /// Blocks this segment occupies.
    pub nblocks: u32,
    /// Bytes of records after the header.
    pub payload_len: u32,
    /// crc32c of those bytes.
    pub payload_crc: u32,
    /// Where the next segment will be written (slice-relative block).
    pub next_lba: u64,
    /// Blocks reserved there.
    pub next_blocks: u32,
    /// Number of records.
    pub nrecords: u32,
    /// The header crc of the segment before this one (or the superblock's `log_prev`): the chain.
    pub prev_crc: u32,
}

impl SegmentHeader {
    /// Encodes into `out[..SEG_HDR_LEN]`; returns the header crc (the next segment's `prev_crc`).
    pub fn encode(&self, out: &mut [u8]) -> u32 {
        put(out, 0, &SEG_MAGIC);
        put(out, 8, &self.seq.to_le_bytes());
        put(out, 16, &self.volume);
        put(out, 32, &self.epoch.to_le_bytes());
        put(out, 40, &self.shard_id.to_le_bytes());
        put(out, 44, &self.nblocks.to_le_bytes());
        put(out, 48, &self.payload_len.to_le_bytes());
        put(out, 52, &self.payload_crc.to_le_bytes());
        put(out, 56, &self.next_lba.to_le_bytes());
        put(out, 64, &self.next_blocks.to_le_bytes());
        put(out, 68, &self.nrecords.to_le_bytes());
        put(out, 72, &self.prev_crc.to_le_bytes());
        let crc = crc32c::crc32c(&out[..76]);
        put(out, 76, &crc.to_le_bytes());
        crc
    }

    /// Decodes and checks the header alone (the payload crc is checked by
    /// [`SegmentHeader::check_payload`]); returns it with its crc.
    pub fn decode(b: &[u8], block_size: u32) -> R<(SegmentHeader, u32)> {
        if get::<8>(b, 0, "segment")? != SEG_MAGIC {
            return Err(FormatError::BadMagic("segment"));
        }
        let crc = u32_at(b, 76, "segment")?;
        if crc_of(b, 76, "segment")? != crc {
            return Err(FormatError::BadCrc("segment header"));
        }
        let h = SegmentHeader {
            seq: u64_at(b, 8, "segment")?,
            volume: get::<16>(b, 16, "segment")?,
            epoch: u64_at(b, 32, "segment")?,
            shard_id: u32_at(b, 40, "segment")?,
            nblocks: u32_at(b, 44, "segment")?,
            payload_len: u32_at(b, 48, "segment")?,
            payload_crc: u32_at(b, 52, "segment")?,
            next_lba: u64_at(b, 56, "segment")?,
            next_blocks: u32_at(b, 64, "segment")?,
            nrecords: u32_at(b, 68, "segment")?,
            prev_crc: u32_at(b, 72, "segment")?,
        };
        let cap = u64::from(h.nblocks) * u64::from(block_size);
        if h.nblocks == 0 || SEG_HDR_LEN as u64 + u64::from(h.payload_len) > cap {
            return Err(FormatError::BadField("segment.length"));
        }
        if h.next_blocks == 0 {
            return Err(FormatError::BadField("segment.next"));
        }
        Ok((h, crc))
    }

    /// Checks the payload (`seg` is the whole segment, header included).
    pub fn check_payload<'a>(&self, seg: &'a [u8]) -> R<&'a [u8]> {
        let p = seg
            .get(SEG_HDR_LEN..SEG_HDR_LEN + self.payload_len as usize)
            .ok_or(FormatError::Truncated("segment"))?;
        if crc32c::crc32c(p) != self.payload_crc {
            return Err(FormatError::BadCrc("segment payload"));
        }
        Ok(p)
    }
}

/// A record as decoded (borrowing key and value from the buffer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// Deleted?
    pub tombstone: bool,
    /// Write timestamp (hybrid logical clock or caller-supplied).
    pub ts: u64,
    /// Per-key version, incremented on every write.
    pub version: u64,
    /// The key.
    pub key: &'a [u8],
    /// The value (empty for a tombstone).
    pub value: &'a [u8],
}

/// Encoded length of a record.
pub fn record_len(key_len: usize, val_len: usize) -> usize {
    REC_HDR_LEN + key_len + val_len
}

/// Encodes a record into `out` (exactly [`record_len`] bytes).
pub fn encode_record(
    out: &mut [u8],
    tombstone: bool,
    ts: u64,
    version: u64,
    key: &[u8],
    value: &[u8],
) {
    out[4] = if tombstone { FLAG_TOMBSTONE } else { 0 };
    out[5] = 0;
    put(out, 6, &(key.len() as u16).to_le_bytes());
    put(out, 8, &(value.len() as u32).to_le_bytes());
    put(out, 12, &0u32.to_le_bytes());
    put(out, 16, &ts.to_le_bytes());
    put(out, 24, &version.to_le_bytes());
    put(out, REC_HDR_LEN, key);
    put(out, REC_HDR_LEN + key.len(), value);
    let crc = crc32c::crc32c(&out[4..REC_HDR_LEN + key.len() + value.len()]);
    put(out, 0, &crc.to_le_bytes());
}

/// Reads the key and value lengths of the record at the start of `b` (no crc check).
pub fn record_lens(b: &[u8]) -> R<(usize, usize)> {
    Ok((
        u16_at(b, 6, "record")? as usize,
        u32_at(b, 8, "record")? as usize,
    ))
}

/// Decodes and checks the record at the start of `b`; returns it and its encoded length.
pub fn decode_record(b: &[u8]) -> R<(Record<'_>, usize)> {
    let (kl, vl) = record_lens(b)?;
    let len = record_len(kl, vl);
    let body = b.get(4..len).ok_or(FormatError::Truncated("record"))?;
    if crc32c::crc32c(body) != u32_at(b, 0, "record")? {
        return Err(FormatError::BadCrc("record"));
    }
    let flags = b[4];
    if flags & !FLAG_TOMBSTONE != 0 || b[5] != 0 || u32_at(b, 12, "record")? != 0 {
        return Err(FormatError::BadField("record.flags"));
    }
    let tombstone = flags & FLAG_TOMBSTONE != 0;
    if tombstone && vl != 0 {
        return Err(FormatError::BadField("record.tombstone"));
    }
    // The engine never writes keys or values beyond its limits (the index relies on them).
    if kl == 0 || kl > crate::error::MAX_KEY_LEN {
        return Err(FormatError::BadField("record.key_len"));
    }
    if vl > crate::error::MAX_VALUE_LEN {
        return Err(FormatError::BadField("record.value_len"));
    }
    let rec = Record {
        tombstone,
        ts: u64_at(b, 16, "record")?,
        version: u64_at(b, 24, "record")?,
        key: &b[REC_HDR_LEN..REC_HDR_LEN + kl],
        value: &b[REC_HDR_LEN + kl..len],
    };
    Ok((rec, len))
}

/// Iterates the records of a checked segment payload; yields an error at the first that does not decode.
pub fn records(payload: &[u8]) -> impl Iterator<Item = R<(usize, Record<'_>)>> + '_ {
    let mut off = 0usize;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || off >= payload.len() {
            return None;
        }
        match decode_record(&payload[off..]) {
            Ok((rec, len)) => {
                let at = off;
                off += len;
                Some(Ok((at, rec)))
            }
            Err(e) => {
                failed = true;
                Some(Err(e))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg() -> SegmentHeader {
        SegmentHeader {
            seq: 5,
            volume: [3; 16],
            epoch: 9,
            shard_id: 0,
            nblocks: 2,
            payload_len: 100,
            payload_crc: 77,
            next_lba: 50,
            next_blocks: 8,
            nrecords: 1,
            prev_crc: 0x1234_5678,
        }
    }

    #[test]
    fn segment_header_roundtrip_and_every_bit_flip_rejected() {
        let mut b = vec![0u8; 1024];
        let crc = seg().encode(&mut b);
        assert_eq!(SegmentHeader::decode(&b, 512), Ok((seg(), crc)));
        for bit in 0..SEG_HDR_LEN * 8 {
            let mut c = b.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(SegmentHeader::decode(&c, 512).is_err(), "bit {bit}");
        }
        // Different chain values give different header crcs: the next segment's check tells them apart.
        let mut other = seg();
        other.prev_crc ^= 1;
        assert_ne!(other.encode(&mut vec![0u8; 1024]), crc);
    }

    #[test]
    fn record_roundtrip_and_flips() {
        let mut b = vec![0u8; record_len(3, 5)];
        encode_record(&mut b, false, 77, 2, b"key", b"value");
        let (r, len) = decode_record(&b).expect("decode");
        assert_eq!(
            (r.key, r.value, r.ts, r.version, r.tombstone, len),
            (&b"key"[..], &b"value"[..], 77, 2, false, b.len())
        );
        for bit in 0..b.len() * 8 {
            let mut c = b.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            if let Ok((r, _)) = decode_record(&c) {
                panic!("flip {bit} accepted: {r:?}");
            }
        }
    }
}
