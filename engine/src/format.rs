//! The on-disk layout (described for humans in `engine/FORMAT.md`): superblocks, segment headers,
//! records and index checkpoints. Little-endian; crc32c over everything; every field checked on decode.
//! Decoders take untrusted bytes and return typed errors; they never panic.

/// Format version written in every superblock and checkpoint. Version 1 images (no volume id, no
/// chained segment headers) are refused with [`FormatError::BadVersion`].
pub const FORMAT_VERSION: u32 = 2;
/// Superblock magic.
pub const SB_MAGIC: [u8; 8] = *b"NVKVSUPR";
/// Segment header magic.
pub const SEG_MAGIC: [u8; 8] = *b"NVKVSEGM";
/// Checkpoint header magic.
pub const CKPT_MAGIC: [u8; 8] = *b"NVKVCKPT";
/// Encoded superblock length (it occupies one block).
pub const SB_LEN: usize = 164;
/// Segment header length.
pub const SEG_HDR_LEN: usize = 80;
/// Record header length.
pub const REC_HDR_LEN: usize = 32;
/// Checkpoint header length.
pub const CKPT_HDR_LEN: usize = 96;
/// A checkpoint's segment-table row.
pub const CKPT_SEG_LEN: usize = 24;
/// A checkpoint's index-entry header (the key follows).
pub const CKPT_ENTRY_LEN: usize = 32;
/// Blocks reserved at the start of every shard slice for the two superblock copies.
pub const SB_BLOCKS: u64 = 2;
/// Record flag: tombstone (the key was deleted; no value).
pub const FLAG_TOMBSTONE: u8 = 1;
/// Versions of one life of a shard live in `[life << LIFE_SHIFT, (life + 1) << LIFE_SHIFT)`: a version
/// handed out by a life that crashed before persisting it is never handed out again by a later life.
pub const LIFE_SHIFT: u32 = 40;

/// The random identity of one formatted database (all its shards share it). Everything the engine
/// writes carries it, so nothing an earlier format left on the device is ever replayed.
pub type VolumeId = [u8; 16];

/// Why bytes read from the device were rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Not this structure (blank or overwritten).
    #[error("bad magic in {0}")]
    BadMagic(&'static str),
    /// Written by another format version.
    #[error("format version {0} (this build reads version {FORMAT_VERSION} only)")]
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
/// The crc32c of `b[..n]`, or Truncated.
fn crc_of(b: &[u8], n: usize, what: &'static str) -> R<u32> {
    Ok(crc32c::crc32c(
        b.get(..n).ok_or(FormatError::Truncated(what))?,
    ))
}

/// A new random volume id (from the kernel's random source).
pub fn new_volume_id() -> std::io::Result<VolumeId> {
    let mut id = [0u8; 16];
    let mut got = 0;
    while got < id.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `id`, which lives across the call.
        let n = unsafe { libc::getrandom(id[got..].as_mut_ptr().cast(), id.len() - got, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        got += n as usize;
    }
    Ok(id)
}

/// Where a checkpoint is and where the log that follows it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CkptRef {
    /// Checkpoint extent (slice-relative block; 0 = none).
    pub lba: u64,
    /// Checkpoint extent length in blocks.
    pub blocks: u64,
    /// Segments with a sequence number up to this one are covered by the checkpoint.
    pub seg_seq: u64,
    /// Where segment `seg_seq + 1` is (or will be) written: the head of the log to replay.
    pub log_lba: u64,
    /// Blocks reserved there.
    pub log_blocks: u64,
    /// The chain value segment `seg_seq + 1` must carry: the header crc of segment `seg_seq`.
    pub log_prev: u32,
}

/// Encoded length of a [`CkptRef`].
const CKPT_REF_LEN: usize = 48;

impl CkptRef {
    fn encode(&self, out: &mut [u8]) {
        put(out, 0, &self.lba.to_le_bytes());
        put(out, 8, &self.blocks.to_le_bytes());
        put(out, 16, &self.seg_seq.to_le_bytes());
        put(out, 24, &self.log_lba.to_le_bytes());
        put(out, 32, &self.log_blocks.to_le_bytes());
        put(out, 40, &self.log_prev.to_le_bytes());
        put(out, 44, &0u32.to_le_bytes());
    }

    fn decode(b: &[u8], slice_blocks: u64) -> R<CkptRef> {
        let r = CkptRef {
            lba: u64_at(b, 0, "superblock")?,
            blocks: u64_at(b, 8, "superblock")?,
            seg_seq: u64_at(b, 16, "superblock")?,
            log_lba: u64_at(b, 24, "superblock")?,
            log_blocks: u64_at(b, 32, "superblock")?,
            log_prev: u32_at(b, 40, "superblock")?,
        };
        if u32_at(b, 44, "superblock")? != 0 {
            return Err(FormatError::BadField("superblock.reserved"));
        }
        let in_slice = |lba: u64, n: u64| {
            n > 0 && lba >= SB_BLOCKS && lba.checked_add(n).is_some_and(|e| e <= slice_blocks)
        };
        if !in_slice(r.lba, r.blocks) {
            return Err(FormatError::BadField("superblock.ckpt"));
        }
        if !in_slice(r.log_lba, r.log_blocks) {
            return Err(FormatError::BadField("superblock.log"));
        }
        Ok(r)
    }

    fn is_none(b: &[u8]) -> bool {
        b.iter().all(|&x| x == 0)
    }
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
    /// The database's identity (the same in every shard).
    pub volume: VolumeId,
    /// Incremented at every superblock write; the valid copy with the highest wins. Segments written
    /// while this superblock is the newest carry it as their epoch.
    pub seq: u64,
    /// Incremented by every open (and when a life used up its version range): versions handed out
    /// from now on are at least `life << LIFE_SHIFT`.
    pub life: u64,
    /// The newest checkpoint.
    pub ckpt: CkptRef,
    /// The one before it, kept (with the log since it) as a fallback until a newer one is verified.
    pub prev: Option<CkptRef>,
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
        put(out, 32, &self.volume);
        put(out, 48, &self.seq.to_le_bytes());
        put(out, 56, &self.life.to_le_bytes());
        self.ckpt.encode(&mut out[64..64 + CKPT_REF_LEN]);
        match &self.prev {
            Some(p) => p.encode(&mut out[112..112 + CKPT_REF_LEN]),
            None => out[112..112 + CKPT_REF_LEN].fill(0),
        }
        let crc = crc32c::crc32c(&out[..160]);
        put(out, 160, &crc.to_le_bytes());
    }

    /// Decodes and checks a superblock.
    pub fn decode(b: &[u8]) -> R<Superblock> {
        if get::<8>(b, 0, "superblock")? != SB_MAGIC {
            return Err(FormatError::BadMagic("superblock"));
        }
        let version = u32_at(b, 8, "superblock")?;
        // A version 1 superblock is shorter (its crc covers bytes 0..80, stored at 80): named as such,
        // while a damaged version field is just a damaged copy.
        if version == 1 && crc_of(b, 80, "superblock")? == u32_at(b, 80, "superblock")? {
            return Err(FormatError::BadVersion(1));
        }
        let crc = u32_at(b, 160, "superblock")?;
        if crc_of(b, 160, "superblock")? != crc {
            return Err(FormatError::BadCrc("superblock"));
        }
        if version != FORMAT_VERSION {
            return Err(FormatError::BadVersion(version));
        }
        let slice_blocks = u64_at(b, 24, "superblock")?;
        let prev_bytes = &b[112..112 + CKPT_REF_LEN];
        let sb = Superblock {
            block_size: u32_at(b, 12, "superblock")?,
            shard_id: u32_at(b, 16, "superblock")?,
            shard_count: u32_at(b, 20, "superblock")?,
            slice_blocks,
            volume: get::<16>(b, 32, "superblock")?,
            seq: u64_at(b, 48, "superblock")?,
            life: u64_at(b, 56, "superblock")?,
            ckpt: CkptRef::decode(&b[64..64 + CKPT_REF_LEN], slice_blocks)?,
            prev: if CkptRef::is_none(prev_bytes) {
                None
            } else {
                Some(CkptRef::decode(prev_bytes, slice_blocks)?)
            },
        };
        if !sb.block_size.is_power_of_two() || sb.block_size < 512 {
            return Err(FormatError::BadField("superblock.block_size"));
        }
        if sb.shard_count == 0 || sb.shard_id >= sb.shard_count {
            return Err(FormatError::BadField("superblock.shard"));
        }
        if sb.volume == [0; 16] {
            return Err(FormatError::BadField("superblock.volume"));
        }
        if sb.seq == 0 || sb.life == 0 || sb.life >= 1 << (64 - LIFE_SHIFT) {
            return Err(FormatError::BadField("superblock.seq"));
        }
        if sb.prev.is_some_and(|p| p.seg_seq > sb.ckpt.seg_seq) {
            return Err(FormatError::BadField("superblock.prev"));
        }
        Ok(sb)
    }
}

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
    if version != FORMAT_VERSION {
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

    fn sb() -> Superblock {
        Superblock {
            block_size: 512,
            shard_id: 1,
            shard_count: 2,
            slice_blocks: 1000,
            volume: [7; 16],
            seq: 9,
            life: 3,
            ckpt: CkptRef {
                lba: 10,
                blocks: 3,
                seg_seq: 4,
                log_lba: 20,
                log_blocks: 8,
                log_prev: 0xdead_beef,
            },
            prev: Some(CkptRef {
                lba: 30,
                blocks: 2,
                seg_seq: 2,
                log_lba: 40,
                log_blocks: 8,
                log_prev: 5,
            }),
        }
    }

    #[test]
    fn superblock_roundtrip_and_every_bit_flip_rejected() {
        for prev in [sb().prev, None] {
            let s = Superblock { prev, ..sb() };
            let mut b = vec![0u8; 512];
            s.encode(&mut b);
            assert_eq!(Superblock::decode(&b), Ok(s.clone()));
            for bit in 0..SB_LEN * 8 {
                let mut c = b.clone();
                c[bit / 8] ^= 1 << (bit % 8);
                assert!(Superblock::decode(&c).is_err(), "bit {bit}");
            }
            assert!(Superblock::decode(&b[..10]).is_err());
            assert!(Superblock::decode(&b[..SB_LEN - 1]).is_err());
        }
    }

    #[test]
    fn version_1_superblock_is_named() {
        // A version 1 superblock: magic, version 1, a crc at offset 80 that does not check at 160.
        let mut b = vec![0u8; 512];
        b[..8].copy_from_slice(&SB_MAGIC);
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        let crc = crc32c::crc32c(&b[..80]);
        b[80..84].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(Superblock::decode(&b), Err(FormatError::BadVersion(1)));
    }

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
