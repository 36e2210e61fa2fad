//! Checkpoints of the index: one byte stream in up to 32 extents.

use super::*;

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
    /// The database it belongs to.
    pub volume: VolumeId,
    /// Segments up to this sequence number are covered.
    pub seg_seq: u64,
    /// Sequence number of the superblock that points at it.
    pub sb_seq: u64,
    /// The shard's version counter when it was written: no version up to it is handed out again.
    pub version_ctr: u64,
    /// Extents after the first (the extent table opens the payload).
    pub n_extents: u32,
    /// Rows in the segment table.
    pub n_segments: u32,
    /// Index entries.
    pub n_entries: u64,
    /// Payload bytes after the header (extent table, segment table, entries).
    pub payload_len: u64,
}

/// Most extents a checkpoint is written in (its first extent holds their table).
pub const CKPT_MAX_EXTENTS: usize = 32;
/// A row of the checkpoint's extent table.
pub const CKPT_EXT_LEN: usize = 16;

/// Encoded size of a checkpoint in `n_extents` extents.
pub fn ckpt_len(n_segments: usize, key_bytes: usize, n_entries: usize, n_extents: usize) -> usize {
    CKPT_HDR_LEN
        + n_extents.saturating_sub(1) * CKPT_EXT_LEN
        + n_segments * CKPT_SEG_LEN
        + n_entries * CKPT_ENTRY_LEN
        + key_bytes
}

/// Writes a checkpoint into `out` (at least [`ckpt_len`] bytes), to be stored in `extents` (slice
/// block, blocks) in that order: the first extent holds `out`'s first bytes, and so on. The header
/// counts are filled in from what is written. Returns the encoded length.
pub fn encode_ckpt<'a>(
    out: &mut [u8],
    h: &mut CkptHeader,
    extents: &[(u64, u64)],
    segments: &[SegmentRef],
    entries: impl Iterator<Item = (&'a [u8], u32, u64, u64, u64)>,
) -> usize {
    let mut off = CKPT_HDR_LEN;
    for &(lba, blocks) in extents.iter().skip(1) {
        put(out, off, &lba.to_le_bytes());
        put(out, off + 8, &(blocks as u32).to_le_bytes());
        put(out, off + 12, &0u32.to_le_bytes());
        off += CKPT_EXT_LEN;
    }
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
    h.n_extents = extents.len().saturating_sub(1) as u32;
    h.n_segments = segments.len() as u32;
    h.n_entries = n;
    h.payload_len = (off - CKPT_HDR_LEN) as u64;
    let payload_crc = crc32c::crc32c(&out[CKPT_HDR_LEN..off]);
    put(out, 0, &CKPT_MAGIC);
    put(out, 8, &FORMAT_VERSION.to_le_bytes());
    put(out, 12, &h.shard_id.to_le_bytes());
    put(out, 16, &h.volume);
    put(out, 32, &h.seg_seq.to_le_bytes());
    put(out, 40, &h.n_segments.to_le_bytes());
    put(out, 44, &h.n_extents.to_le_bytes());
    put(out, 48, &h.n_entries.to_le_bytes());
    put(out, 56, &h.payload_len.to_le_bytes());
    put(out, 64, &payload_crc.to_le_bytes());
    put(out, 68, &0u32.to_le_bytes());
    put(out, 72, &h.version_ctr.to_le_bytes());
    put(out, 80, &h.sb_seq.to_le_bytes());
    let crc = crc32c::crc32c(&out[..88]);
    put(out, 88, &crc.to_le_bytes());
    put(out, 92, &0u32.to_le_bytes());
    off
}

/// Decodes and checks a checkpoint's header (in the first bytes of its first extent) and returns it
/// with the extents after the first, which the caller reads and appends before [`decode_ckpt`].
pub fn decode_ckpt_header(b: &[u8], slice_blocks: u64) -> R<(CkptHeader, Vec<(u64, u64)>)> {
    if get::<8>(b, 0, "checkpoint")? != CKPT_MAGIC {
        return Err(FormatError::BadMagic("checkpoint"));
    }
    if crc_of(b, 88, "checkpoint")? != u32_at(b, 88, "checkpoint")? {
        return Err(FormatError::BadCrc("checkpoint header"));
    }
    if u32_at(b, 92, "checkpoint")? != 0 || u32_at(b, 68, "checkpoint")? != 0 {
        return Err(FormatError::BadField("checkpoint.reserved"));
    }
    let version = u32_at(b, 8, "checkpoint")?;
    if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(FormatError::BadVersion(version));
    }
    let h = CkptHeader {
        shard_id: u32_at(b, 12, "checkpoint")?,
        volume: get::<16>(b, 16, "checkpoint")?,
        seg_seq: u64_at(b, 32, "checkpoint")?,
        n_segments: u32_at(b, 40, "checkpoint")?,
        n_extents: u32_at(b, 44, "checkpoint")?,
        n_entries: u64_at(b, 48, "checkpoint")?,
        payload_len: u64_at(b, 56, "checkpoint")?,
        version_ctr: u64_at(b, 72, "checkpoint")?,
        sb_seq: u64_at(b, 80, "checkpoint")?,
    };
    if h.n_extents as usize >= CKPT_MAX_EXTENTS {
        return Err(FormatError::BadField("checkpoint.n_extents"));
    }
    let mut ext = Vec::with_capacity(h.n_extents as usize);
    for i in 0..h.n_extents as usize {
        let at = CKPT_HDR_LEN + i * CKPT_EXT_LEN;
        let lba = u64_at(b, at, "checkpoint.extent")?;
        let blocks = u64::from(u32_at(b, at + 8, "checkpoint.extent")?);
        if u32_at(b, at + 12, "checkpoint.extent")? != 0
            || blocks == 0
            || lba < SB_BLOCKS
            || lba.checked_add(blocks).is_none_or(|e| e > slice_blocks)
        {
            return Err(FormatError::BadField("checkpoint.extent"));
        }
        ext.push((lba, blocks));
    }
    Ok((h, ext))
}

/// Decodes and checks a whole checkpoint (its extents' bytes concatenated): header, extent table,
/// segment table, entries. `slice_blocks` bounds extents and record locations.
#[allow(clippy::type_complexity)]
pub fn decode_ckpt(
    b: &[u8],
    slice_blocks: u64,
    block_size: u32,
) -> R<(CkptHeader, Vec<(u64, u64)>, Vec<SegmentRef>, Vec<CkptEntry>)> {
    let (h, extents) = decode_ckpt_header(b, slice_blocks)?;
    let slice_bytes = slice_blocks.saturating_mul(u64::from(block_size));
    let end = usize::try_from(h.payload_len)
        .ok()
        .and_then(|l| l.checked_add(CKPT_HDR_LEN))
        .ok_or(FormatError::BadField("checkpoint.payload_len"))?;
    let payload = b
        .get(CKPT_HDR_LEN..end)
        .ok_or(FormatError::Truncated("checkpoint"))?;
    if crc32c::crc32c(payload) != u32_at(b, 64, "checkpoint")? {
        return Err(FormatError::BadCrc("checkpoint payload"));
    }
    let mut off = extents.len() * CKPT_EXT_LEN;
    let mut segs = Vec::with_capacity((h.n_segments as usize).min(payload.len() / CKPT_SEG_LEN));
    for _ in 0..h.n_segments {
        let s = SegmentRef {
            seq: u64_at(payload, off, "checkpoint.segment")?,
            lba: u64_at(payload, off + 8, "checkpoint.segment")?,
            blocks: u32_at(payload, off + 16, "checkpoint.segment")?,
        };
        if s.seq > h.seg_seq
            || s.blocks == 0
            || u32_at(payload, off + 20, "checkpoint.segment")? != 0
        {
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
            || u16_at(payload, off + 2, "checkpoint.entry")? != 0
            || e.val_len as usize > crate::error::MAX_VALUE_LEN
            || e.version > h.version_ctr
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
    Ok((h, extents, segs, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let extents = [(100, 1), (7, 2)];
        let len = ckpt_len(1, 3, 2, extents.len());
        let mut b = vec![0u8; len + 100];
        let mut h = CkptHeader {
            shard_id: 0,
            volume: [9; 16],
            seg_seq: 3,
            sb_seq: 4,
            version_ctr: 10,
            n_extents: 0,
            n_segments: 0,
            n_entries: 0,
            payload_len: 0,
        };
        assert_eq!(
            encode_ckpt(&mut b, &mut h, &extents, &segs, entries.into_iter()),
            len
        );
        let (dh, x, s, e) = decode_ckpt(&b, 2048, 512).expect("decode");
        assert_eq!(dh, h);
        assert_eq!(x, vec![(7, 2)]);
        assert_eq!((dh.seg_seq, s.len(), e.len()), (3, 1, 2));
        assert_eq!(e[1].key, b"bb");
        for bit in 0..len * 8 {
            let mut c = b.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_ckpt(&c, 2048, 512).is_err(), "bit {bit}");
        }
    }
}
