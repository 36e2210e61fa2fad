//! The durable log in persistent memory: a region header (two copies) and chained records.
//!
//! Layout of one shard's region (see `engine/FORMAT.md`, "Durable log"): header copy A at byte 0,
//! copy B at [`DLOG_HDR_SLOT`], records from [`DLOG_DATA_START`] to the end, circular. A record is
//! never split: a pad record (or, when fewer than [`DLOG_REC_HDR_LEN`] bytes are left, nothing) fills
//! the end of the area and the next record starts at the beginning.
//!
//! Positions are byte counts since the log was attached (they only grow); a position's offset in the
//! region is `DLOG_DATA_START + pos % capacity`.

use super::*;

/// Region header magic.
pub const DLOG_MAGIC: [u8; 8] = *b"NVKVDLOG";
/// Record magic.
pub const DLOG_REC_MAGIC: [u8; 4] = *b"NVDL";
/// Durable-log format version.
pub const DLOG_VERSION: u32 = 1;
/// Encoded region header length.
pub const DLOG_HDR_LEN: usize = 84;
/// Distance between the two header copies.
pub const DLOG_HDR_SLOT: usize = 128;
/// Where records start.
pub const DLOG_DATA_START: usize = 256;
/// Record header length (the engine record follows, then zeroes to a multiple of 8).
pub const DLOG_REC_HDR_LEN: usize = 64;
/// Record kind: a write (the payload is an engine record, as in segments).
pub const DLOG_KIND_WRITE: u32 = 1;
/// Record kind: padding to the end of the area (no payload; the next record starts at the beginning).
pub const DLOG_KIND_PAD: u32 = 2;

/// One copy of the region header: whose log this is and where its oldest unretired record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DlogHeader {
    /// The database.
    pub volume: VolumeId,
    /// The shard.
    pub shard_id: u32,
    /// Bytes of the whole region when attached (a region of another size is another layout).
    pub region_len: u64,
    /// The epoch the shard's superblock names (`durable_log`): one per attachment.
    pub epoch: u64,
    /// Incremented at every header write; the valid copy with the highest wins. Copy `seq % 2`.
    pub seq: u64,
    /// Position of the oldest record not known to be in a durable segment.
    pub head_pos: u64,
    /// Its sequence number.
    pub head_lsn: u64,
    /// The chain value it carries (the crc of the record before it).
    pub head_prev: u32,
}

impl DlogHeader {
    /// Encodes into `out[..DLOG_HDR_LEN]`.
    pub fn encode(&self, out: &mut [u8]) {
        put(out, 0, &DLOG_MAGIC);
        put(out, 8, &DLOG_VERSION.to_le_bytes());
        put(out, 12, &self.shard_id.to_le_bytes());
        put(out, 16, &self.volume);
        put(out, 32, &self.region_len.to_le_bytes());
        put(out, 40, &self.epoch.to_le_bytes());
        put(out, 48, &self.seq.to_le_bytes());
        put(out, 56, &self.head_pos.to_le_bytes());
        put(out, 64, &self.head_lsn.to_le_bytes());
        put(out, 72, &self.head_prev.to_le_bytes());
        put(out, 76, &0u32.to_le_bytes());
        let crc = crc32c::crc32c(&out[..80]);
        put(out, 80, &crc.to_le_bytes());
    }

    /// Decodes and checks one header copy.
    pub fn decode(b: &[u8]) -> R<DlogHeader> {
        if get::<8>(b, 0, "durable log header")? != DLOG_MAGIC {
            return Err(FormatError::BadMagic("durable log header"));
        }
        let crc = u32_at(b, 80, "durable log header")?;
        if crc_of(b, 80, "durable log header")? != crc {
            return Err(FormatError::BadCrc("durable log header"));
        }
        let version = u32_at(b, 8, "durable log header")?;
        if version != DLOG_VERSION {
            return Err(FormatError::BadVersion(version));
        }
        if u32_at(b, 76, "durable log header")? != 0 {
            return Err(FormatError::BadField("durable log header.reserved"));
        }
        let h = DlogHeader {
            shard_id: u32_at(b, 12, "durable log header")?,
            volume: get::<16>(b, 16, "durable log header")?,
            region_len: u64_at(b, 32, "durable log header")?,
            epoch: u64_at(b, 40, "durable log header")?,
            seq: u64_at(b, 48, "durable log header")?,
            head_pos: u64_at(b, 56, "durable log header")?,
            head_lsn: u64_at(b, 64, "durable log header")?,
            head_prev: u32_at(b, 72, "durable log header")?,
        };
        if h.volume == [0; 16] {
            return Err(FormatError::BadField("durable log header.volume"));
        }
        if h.epoch == 0 || h.seq == 0 || h.head_lsn == 0 {
            return Err(FormatError::BadField("durable log header.epoch"));
        }
        if (h.region_len as usize) < DLOG_DATA_START + DLOG_MIN_CAPACITY {
            return Err(FormatError::BadField("durable log header.region_len"));
        }
        Ok(h)
    }
}

/// The smallest record area a region may have.
pub const DLOG_MIN_CAPACITY: usize = 4096;

/// The header of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DlogRecordHeader {
    /// Bytes of the whole record (header, payload, zero padding): a multiple of 8.
    pub len: u32,
    /// [`DLOG_KIND_WRITE`] or [`DLOG_KIND_PAD`].
    pub kind: u32,
    /// Sequence number: one more than the record before it.
    pub lsn: u64,
    /// The attachment's epoch.
    pub epoch: u64,
    /// The database.
    pub volume: VolumeId,
    /// The shard.
    pub shard_id: u32,
    /// Payload bytes (the engine record; 0 for a pad).
    pub payload_len: u32,
    /// The crc of the record before it (the chain).
    pub prev: u32,
}

/// The record length, padded, for a payload of `payload` bytes.
pub fn dlog_record_len(payload: usize) -> usize {
    (DLOG_REC_HDR_LEN + payload).next_multiple_of(8)
}

impl DlogRecordHeader {
    /// Encodes the header into `out[..DLOG_REC_HDR_LEN]`, its crc covering the header and `payload`;
    /// returns the crc (the next record's chain value).
    pub fn encode(&self, out: &mut [u8], payload: &[u8]) -> u32 {
        debug_assert_eq!(payload.len(), self.payload_len as usize);
        put(out, 0, &DLOG_REC_MAGIC);
        put(out, 4, &self.len.to_le_bytes());
        put(out, 8, &self.lsn.to_le_bytes());
        put(out, 16, &self.epoch.to_le_bytes());
        put(out, 24, &self.volume);
        put(out, 40, &self.shard_id.to_le_bytes());
        put(out, 44, &self.kind.to_le_bytes());
        put(out, 48, &self.payload_len.to_le_bytes());
        put(out, 52, &self.prev.to_le_bytes());
        put(out, 60, &0u32.to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&out[..56]), payload);
        put(out, 56, &crc.to_le_bytes());
        crc
    }

    /// Decodes the header fields and checks their ranges; the crc is checked by [`check_dlog_record`]
    /// once the whole record is read.
    pub fn decode(b: &[u8]) -> R<DlogRecordHeader> {
        const W: &str = "durable log record";
        if get::<4>(b, 0, W)? != DLOG_REC_MAGIC {
            return Err(FormatError::BadMagic(W));
        }
        let h = DlogRecordHeader {
            len: u32_at(b, 4, W)?,
            lsn: u64_at(b, 8, W)?,
            epoch: u64_at(b, 16, W)?,
            volume: get::<16>(b, 24, W)?,
            shard_id: u32_at(b, 40, W)?,
            kind: u32_at(b, 44, W)?,
            payload_len: u32_at(b, 48, W)?,
            prev: u32_at(b, 52, W)?,
        };
        let len = h.len as usize;
        if len < DLOG_REC_HDR_LEN || len % 8 != 0 {
            return Err(FormatError::BadField("durable log record.len"));
        }
        match h.kind {
            DLOG_KIND_WRITE if dlog_record_len(h.payload_len as usize) == len => {}
            DLOG_KIND_PAD if h.payload_len == 0 => {}
            _ => return Err(FormatError::BadField("durable log record.kind")),
        }
        if u32_at(b, 60, W)? != 0 {
            return Err(FormatError::BadField("durable log record.reserved"));
        }
        Ok(h)
    }
}

/// Checks the crc of a whole record (`b` holds at least its header and payload); returns its crc.
pub fn check_dlog_record(h: &DlogRecordHeader, b: &[u8]) -> R<u32> {
    let end = DLOG_REC_HDR_LEN + h.payload_len as usize;
    let body = b
        .get(..end)
        .ok_or(FormatError::Truncated("durable log record"))?;
    let want = u32_at(b, 56, "durable log record")?;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&body[..56]), &body[DLOG_REC_HDR_LEN..]);
    if crc != want {
        return Err(FormatError::BadCrc("durable log record"));
    }
    Ok(crc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr() -> DlogHeader {
        DlogHeader {
            volume: [3; 16],
            shard_id: 1,
            region_len: 1 << 20,
            epoch: 5,
            seq: 7,
            head_pos: 4096,
            head_lsn: 40,
            head_prev: 0xabcd,
        }
    }

    #[test]
    fn header_roundtrip_and_every_bit_flip_rejected() {
        let mut b = vec![0u8; DLOG_HDR_LEN];
        hdr().encode(&mut b);
        assert_eq!(DlogHeader::decode(&b), Ok(hdr()));
        for bit in 0..DLOG_HDR_LEN * 8 {
            let mut c = b.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(DlogHeader::decode(&c).is_err(), "bit {bit}");
        }
        assert!(DlogHeader::decode(&b[..DLOG_HDR_LEN - 1]).is_err());
    }

    #[test]
    fn record_roundtrip_and_every_bit_flip_rejected() {
        let payload = b"an engine record, 29 bytes..";
        let h = DlogRecordHeader {
            len: dlog_record_len(payload.len()) as u32,
            kind: DLOG_KIND_WRITE,
            lsn: 41,
            epoch: 5,
            volume: [3; 16],
            shard_id: 1,
            payload_len: payload.len() as u32,
            prev: 0x1234,
        };
        let mut b = vec![0u8; h.len as usize];
        let crc = h.encode(&mut b, payload);
        b[DLOG_REC_HDR_LEN..DLOG_REC_HDR_LEN + payload.len()].copy_from_slice(payload);
        let d = DlogRecordHeader::decode(&b).expect("test");
        assert_eq!(d, h);
        assert_eq!(check_dlog_record(&d, &b), Ok(crc));
        // Every bit of header and payload is covered (the zero padding is not part of the record).
        for bit in 0..(DLOG_REC_HDR_LEN + payload.len()) * 8 {
            let mut c = b.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            let ok = DlogRecordHeader::decode(&c).and_then(|d| check_dlog_record(&d, &c));
            assert!(ok.is_err(), "bit {bit}");
        }
    }

    #[test]
    fn pad_record_has_no_payload() {
        let h = DlogRecordHeader {
            len: 200,
            kind: DLOG_KIND_PAD,
            lsn: 2,
            epoch: 1,
            volume: [1; 16],
            shard_id: 0,
            payload_len: 0,
            prev: 0,
        };
        let mut b = vec![0u8; 200];
        let crc = h.encode(&mut b, &[]);
        let d = DlogRecordHeader::decode(&b).expect("test");
        assert_eq!(check_dlog_record(&d, &b), Ok(crc));
        let mut bad = b.clone();
        bad[48] = 1; // a pad with a payload length
        assert!(DlogRecordHeader::decode(&bad).is_err());
    }
}
