//! The on-disk layout (described for humans in `engine/FORMAT.md`): superblocks, segment headers,
//! records and index checkpoints. Little-endian; crc32c over everything; every field checked on decode.
//! Decoders take untrusted bytes and return typed errors; they never panic.

/// Format version written in every superblock and checkpoint.
pub const FORMAT_VERSION: u32 = 1;
/// Superblock magic.
pub const SB_MAGIC: [u8; 8] = *b"NVKVSUPR";
/// Segment header magic.
pub const SEG_MAGIC: [u8; 8] = *b"NVKVSEGM";
/// Checkpoint header magic.
pub const CKPT_MAGIC: [u8; 8] = *b"NVKVCKPT";
/// Encoded superblock length (it occupies one block).
pub const SB_LEN: usize = 84;
/// Segment header length.
pub const SEG_HDR_LEN: usize = 64;
/// Record header length.
pub const REC_HDR_LEN: usize = 32;
/// Checkpoint header length.
pub const CKPT_HDR_LEN: usize = 64;
/// A checkpoint's segment-table row.
pub const CKPT_SEG_LEN: usize = 24;
/// A checkpoint's index-entry header (the key follows).
pub const CKPT_ENTRY_LEN: usize = 32;
/// Blocks reserved at the start of every shard slice for the two superblock copies.
pub const SB_BLOCKS: u64 = 2;
/// Record flag: tombstone (the key was deleted; no value).
pub const FLAG_TOMBSTONE: u8 = 1;

/// Why bytes read from the device were rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Not this structure (blank or overwritten).
    #[error("bad magic in {0}")]
    BadMagic(&'static str),
    /// Written by an unknown format version.
    #[error("unsupported format version {0}")]
    BadVersion(u32),
    /// The checksum does not match.
    #[error("checksum mismatch in {0}")]
    BadCrc(&'static str),
    /// The bytes end early.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// A field holds an impossible value.
    #[error("bad field {0}")]
    BadField(&'static str),
}

type R<T> = Result<T, FormatError>;

fn get<const N: usize>(b: &[u8], at: usize, what: &'static str) -> R<[u8; N]> {
    b.get(at..at + N)
        .and_then(|s| s.try_into().ok())
        .ok_or(FormatError::Truncated(what))
}
fn u16_at(b: &[u8], at: usize, w: &'static str) -> R<u16> {
    Ok(u16::from_le_bytes(get(b, at, w)?))
}
fn u32_at(b: &[u8], at: usize, w: &'static str) -> R<u32> {
    Ok(u32::from_le_bytes(get(b, at, w)?))
}
fn u64_at(b: &[u8], at: usize, w: &'static str) -> R<u64> {
    Ok(u64::from_le_bytes(get(b, at, w)?))
}
fn put(b: &mut [u8], at: usize, v: &[u8]) {
    b[at..at + v.len()].copy_from_slice(v);
}

/// The superblock of one shard slice (two copies: blocks 0 and 1 of the slice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// Logical block size the slice was formatted with.
    pub block_size: u32,
    /// Which shard this slice belongs to.
    pub shard_id: u32,
    /// How many shards the device was formatted for.
    pub shard_count: u32,
    /// Blocks in the slice.
    pub slice_blocks: u64,
    /// Incremented at every superblock write; the valid copy with the highest wins.
    pub seq: u64,
    /// Checkpoint extent (slice-relative block; 0 = no checkpoint yet).
    pub ckpt_lba: u64,
    /// Checkpoint extent length in blocks.
    pub ckpt_blocks: u64,
    /// Segments with a sequence number up to this one are covered by the checkpoint.
    pub ckpt_seg_seq: u64,
    /// Where segment `ckpt_seg_seq + 1` is (or will be) written: the head of the log to replay.
    pub log_lba: u64,
    /// Blocks reserved there.
    pub log_blocks: u64,
}

impl Superblock {
    /// Encodes into `out` (at least [`SB_LEN`] bytes).
    pub fn encode(&self, out: &mut [u8]) {
        put(out, 0, &SB_MAGIC);
        put(out, 8, &FORMAT_VERSION.to_le_bytes());
        put(out, 12, &self.block_size.to_le_bytes());
        put(out, 16, &self.shard_id.to_le_bytes());
        put(out, 20, &self.shard_count.to_le_bytes());
        put(out, 24, &self.slice_blocks.to_le_bytes());
        put(out, 32, &self.seq.to_le_bytes());
        put(out, 40, &self.ckpt_lba.to_le_bytes());
        put(out, 48, &self.ckpt_blocks.to_le_bytes());
        put(out, 56, &self.ckpt_seg_seq.to_le_bytes());
        put(out, 64, &self.log_lba.to_le_bytes());
        put(out, 72, &self.log_blocks.to_le_bytes());
        let crc = crc32c::crc32c(&out[..80]);
        put(out, 80, &crc.to_le_bytes());
    }

    /// Decodes and checks a superblock.
    pub fn decode(b: &[u8]) -> R<Superblock> {
        if get::<8>(b, 0, "superblock")? != SB_MAGIC {
            return Err(FormatError::BadMagic("superblock"));
        }
        let crc = u32_at(b, 80, "superblock")?;
        if crc32c::crc32c(&b[..80]) != crc {
            return Err(FormatError::BadCrc("superblock"));
        }
        let version = u32_at(b, 8, "superblock")?;
        if version != FORMAT_VERSION {
            return Err(FormatError::BadVersion(version));
        }
        let sb = Superblock {
            block_size: u32_at(b, 12, "superblock")?,
            shard_id: u32_at(b, 16, "superblock")?,
            shard_count: u32_at(b, 20, "superblock")?,
            slice_blocks: u64_at(b, 24, "superblock")?,
            seq: u64_at(b, 32, "superblock")?,
            ckpt_lba: u64_at(b, 40, "superblock")?,
            ckpt_blocks: u64_at(b, 48, "superblock")?,
            ckpt_seg_seq: u64_at(b, 56, "superblock")?,
            log_lba: u64_at(b, 64, "superblock")?,
            log_blocks: u64_at(b, 72, "superblock")?,
        };
        let in_slice = |lba: u64, n: u64| {
            lba >= SB_BLOCKS && lba.checked_add(n).is_some_and(|e| e <= sb.slice_blocks)
        };
        if !sb.block_size.is_power_of_two() || sb.block_size < 512 {
            return Err(FormatError::BadField("superblock.block_size"));
        }
        if sb.shard_count == 0 || sb.shard_id >= sb.shard_count {
            return Err(FormatError::BadField("superblock.shard"));
        }
        if sb.ckpt_lba != 0 && (sb.ckpt_blocks == 0 || !in_slice(sb.ckpt_lba, sb.ckpt_blocks)) {
            return Err(FormatError::BadField("superblock.ckpt"));
        }
        if sb.log_blocks == 0 || !in_slice(sb.log_lba, sb.log_blocks) {
            return Err(FormatError::BadField("superblock.log"));
        }
        Ok(sb)
    }
}

/// The header at the start of every segment (the first 64 bytes of its first block).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Log sequence number: segment n+1 is found at segment n's `next_lba`.
    pub seq: u64,
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
}

impl SegmentHeader {
    /// Encodes into `out[..SEG_HDR_LEN]`.
    pub fn encode(&self, out: &mut [u8]) {
        put(out, 0, &SEG_MAGIC);
        put(out, 8, &self.seq.to_le_bytes());
        put(out, 16, &self.shard_id.to_le_bytes());
        put(out, 20, &self.nblocks.to_le_bytes());
        put(out, 24, &self.payload_len.to_le_bytes());
        put(out, 28, &self.payload_crc.to_le_bytes());
        put(out, 32, &self.next_lba.to_le_bytes());
        put(out, 40, &self.next_blocks.to_le_bytes());
        put(out, 44, &self.nrecords.to_le_bytes());
        put(out, 48, &0u64.to_le_bytes());
        let crc = crc32c::crc32c(&out[..56]);
        put(out, 56, &crc.to_le_bytes());
        put(out, 60, &0u32.to_le_bytes());
    }

    /// Decodes and checks the header alone (the payload crc is checked by [`SegmentHeader::check_payload`]).
    pub fn decode(b: &[u8], block_size: u32) -> R<SegmentHeader> {
        if get::<8>(b, 0, "segment")? != SEG_MAGIC {
            return Err(FormatError::BadMagic("segment"));
        }
        let crc = u32_at(b, 56, "segment")?;
        if crc32c::crc32c(&b[..56]) != crc {
            return Err(FormatError::BadCrc("segment header"));
        }
        let h = SegmentHeader {
            seq: u64_at(b, 8, "segment")?,
            shard_id: u32_at(b, 16, "segment")?,
            nblocks: u32_at(b, 20, "segment")?,
            payload_len: u32_at(b, 24, "segment")?,
            payload_crc: u32_at(b, 28, "segment")?,
            next_lba: u64_at(b, 32, "segment")?,
            next_blocks: u32_at(b, 40, "segment")?,
            nrecords: u32_at(b, 44, "segment")?,
        };
        if u64_at(b, 48, "segment")? != 0 || u32_at(b, 60, "segment")? != 0 {
            return Err(FormatError::BadField("segment.reserved"));
        }
        let cap = u64::from(h.nblocks) * u64::from(block_size);
        if h.nblocks == 0 || SEG_HDR_LEN as u64 + u64::from(h.payload_len) > cap {
            return Err(FormatError::BadField("segment.length"));
        }
        if h.next_blocks == 0 {
            return Err(FormatError::BadField("segment.next"));
        }
        Ok(h)
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

/// A live segment as listed in a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentRef {
    /// Sequence number.
    pub seq: u64,
    /// Slice-relative first block.
    pub lba: u64,
    /// Blocks.
    pub blocks: u32,
}

/// An index entry as stored in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CkptEntry {
    /// The key.
    pub key: Vec<u8>,
    /// Value length.
    pub val_len: u32,
    /// Timestamp.
    pub ts: u64,
    /// Version.
    pub version: u64,
    /// Byte offset of the record in the slice.
    pub loc: u64,
}

/// Header fields of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CkptHeader {
    /// Owner shard.
    pub shard_id: u32,
    /// Segments up to this sequence number are covered.
    pub seg_seq: u64,
    /// Rows in the segment table.
    pub n_segments: u32,
    /// Index entries.
    pub n_entries: u64,
    /// Payload bytes after the header.
    pub payload_len: u64,
}

/// Encoded size of a checkpoint.
pub fn ckpt_len(n_segments: usize, key_bytes: usize, n_entries: usize) -> usize {
    CKPT_HDR_LEN + n_segments * CKPT_SEG_LEN + n_entries * CKPT_ENTRY_LEN + key_bytes
}

/// Writes a checkpoint into `out` (at least [`ckpt_len`] bytes).
pub fn encode_ckpt<'a>(
    out: &mut [u8],
    shard_id: u32,
    seg_seq: u64,
    segments: &[SegmentRef],
    entries: impl Iterator<Item = (&'a [u8], u32, u64, u64, u64)>,
) -> usize {
    let mut off = CKPT_HDR_LEN;
    for s in segments {
        put(out, off, &s.seq.to_le_bytes());
        put(out, off + 8, &s.lba.to_le_bytes());
        put(out, off + 16, &s.blocks.to_le_bytes());
        put(out, off + 20, &0u32.to_le_bytes());
        off += CKPT_SEG_LEN;
    }
    let mut n = 0u64;
    for (key, val_len, ts, version, loc) in entries {
        put(out, off, &(key.len() as u16).to_le_bytes());
        put(out, off + 2, &0u16.to_le_bytes());
        put(out, off + 4, &val_len.to_le_bytes());
        put(out, off + 8, &ts.to_le_bytes());
        put(out, off + 16, &version.to_le_bytes());
        put(out, off + 24, &loc.to_le_bytes());
        put(out, off + CKPT_ENTRY_LEN, key);
        off += CKPT_ENTRY_LEN + key.len();
        n += 1;
    }
    let payload_len = (off - CKPT_HDR_LEN) as u64;
    let payload_crc = crc32c::crc32c(&out[CKPT_HDR_LEN..off]);
    put(out, 0, &CKPT_MAGIC);
    put(out, 8, &FORMAT_VERSION.to_le_bytes());
    put(out, 12, &shard_id.to_le_bytes());
    put(out, 16, &seg_seq.to_le_bytes());
    put(out, 24, &(segments.len() as u32).to_le_bytes());
    put(out, 28, &0u32.to_le_bytes());
    put(out, 32, &n.to_le_bytes());
    put(out, 40, &payload_len.to_le_bytes());
    put(out, 48, &payload_crc.to_le_bytes());
    put(out, 52, &0u32.to_le_bytes());
    let crc = crc32c::crc32c(&out[..56]);
    put(out, 56, &crc.to_le_bytes());
    put(out, 60, &0u32.to_le_bytes());
    off
}

/// Decodes and checks a checkpoint: header, segment table, entries. `slice_bytes` bounds record locations.
pub fn decode_ckpt(b: &[u8], slice_bytes: u64) -> R<(CkptHeader, Vec<SegmentRef>, Vec<CkptEntry>)> {
    if get::<8>(b, 0, "checkpoint")? != CKPT_MAGIC {
        return Err(FormatError::BadMagic("checkpoint"));
    }
    if crc32c::crc32c(&b[..56]) != u32_at(b, 56, "checkpoint")? {
        return Err(FormatError::BadCrc("checkpoint header"));
    }
    if u32_at(b, 60, "checkpoint")? != 0 {
        return Err(FormatError::BadField("checkpoint.reserved"));
    }
    let version = u32_at(b, 8, "checkpoint")?;
    if version != FORMAT_VERSION {
        return Err(FormatError::BadVersion(version));
    }
    let h = CkptHeader {
        shard_id: u32_at(b, 12, "checkpoint")?,
        seg_seq: u64_at(b, 16, "checkpoint")?,
        n_segments: u32_at(b, 24, "checkpoint")?,
        n_entries: u64_at(b, 32, "checkpoint")?,
        payload_len: u64_at(b, 40, "checkpoint")?,
    };
    let end = usize::try_from(h.payload_len)
        .ok()
        .and_then(|l| l.checked_add(CKPT_HDR_LEN))
        .ok_or(FormatError::BadField("checkpoint.payload_len"))?;
    let payload = b
        .get(CKPT_HDR_LEN..end)
        .ok_or(FormatError::Truncated("checkpoint"))?;
    if crc32c::crc32c(payload) != u32_at(b, 48, "checkpoint")? {
        return Err(FormatError::BadCrc("checkpoint payload"));
    }
    let mut off = 0usize;
    let mut segs = Vec::with_capacity((h.n_segments as usize).min(payload.len() / CKPT_SEG_LEN));
    for _ in 0..h.n_segments {
        let s = SegmentRef {
            seq: u64_at(payload, off, "checkpoint.segment")?,
            lba: u64_at(payload, off + 8, "checkpoint.segment")?,
            blocks: u32_at(payload, off + 16, "checkpoint.segment")?,
        };
        if s.seq > h.seg_seq || s.blocks == 0 {
            return Err(FormatError::BadField("checkpoint.segment"));
        }
        segs.push(s);
        off += CKPT_SEG_LEN;
    }
    let mut entries =
        Vec::with_capacity((h.n_entries as usize).min(payload.len() / CKPT_ENTRY_LEN));
    for _ in 0..h.n_entries {
        let kl = u16_at(payload, off, "checkpoint.entry")? as usize;
        let e = CkptEntry {
            val_len: u32_at(payload, off + 4, "checkpoint.entry")?,
            ts: u64_at(payload, off + 8, "checkpoint.entry")?,
            version: u64_at(payload, off + 16, "checkpoint.entry")?,
            loc: u64_at(payload, off + 24, "checkpoint.entry")?,
            key: payload
                .get(off + CKPT_ENTRY_LEN..off + CKPT_ENTRY_LEN + kl)
                .ok_or(FormatError::Truncated("checkpoint.entry"))?
                .to_vec(),
        };
        if kl == 0
            || kl > crate::error::MAX_KEY_LEN
            || e.val_len as usize > crate::error::MAX_VALUE_LEN
            || e.loc
                .saturating_add(record_len(kl, e.val_len as usize) as u64)
                > slice_bytes
        {
            return Err(FormatError::BadField("checkpoint.entry"));
        }
        entries.push(e);
        off += CKPT_ENTRY_LEN + kl;
    }
    if off != payload.len() {
        return Err(FormatError::BadField("checkpoint.payload_len"));
    }
    Ok((h, segs, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb() -> Superblock {
        Superblock {
            block_size: 512,
            shard_id: 1,
            shard_count: 2,
            slice_blocks: 1000,
            seq: 9,
            ckpt_lba: 10,
            ckpt_blocks: 3,
            ckpt_seg_seq: 4,
            log_lba: 20,
            log_blocks: 8,
        }
    }

    #[test]
    fn superblock_roundtrip_and_every_bit_flip_rejected() {
        let mut b = vec![0u8; 512];
        sb().encode(&mut b);
        assert_eq!(Superblock::decode(&b), Ok(sb()));
        for bit in 0..SB_LEN * 8 {
            let mut c = b.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(Superblock::decode(&c).is_err(), "bit {bit}");
        }
        assert!(Superblock::decode(&b[..10]).is_err());
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

    #[test]
    fn checkpoint_roundtrip_and_flips() {
        let segs = [SegmentRef {
            seq: 3,
            lba: 40,
            blocks: 4,
        }];
        let entries: Vec<(&[u8], u32, u64, u64, u64)> = vec![
            (b"a", 1, 5, 1, 40 * 512 + 64),
            (b"bb", 2, 6, 3, 40 * 512 + 100),
        ];
        let len = ckpt_len(1, 3, 2);
        let mut b = vec![0u8; len + 100];
        assert_eq!(encode_ckpt(&mut b, 0, 3, &segs, entries.into_iter()), len);
        let (h, s, e) = decode_ckpt(&b, 1 << 20).expect("decode");
        assert_eq!((h.seg_seq, s.len(), e.len()), (3, 1, 2));
        assert_eq!(e[1].key, b"bb");
        for bit in 0..len * 8 {
            let mut c = b.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_ckpt(&c, 1 << 20).is_err(), "bit {bit}");
        }
    }
}
