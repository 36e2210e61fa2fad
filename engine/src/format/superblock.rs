//! The superblock: two copies at the start of every slice, naming the database and its checkpoints.

use super::*;

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
    /// The epoch of the durable log (persistent memory) attached to this shard: its records may hold
    /// acknowledged writes that are in no segment yet, so the shard must not open without it. 0: none
    /// attached (everything acknowledged is in the segments). Version 2 superblocks have no such field.
    pub durable_log: u64,
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
        put(out, 160, &self.durable_log.to_le_bytes());
        let crc = crc32c::crc32c(&out[..168]);
        put(out, 168, &crc.to_le_bytes());
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
        // Version 2 ends at 164 (crc at 160) and has no durable-log field.
        let crc_at = if version == 2 { 160 } else { 168 };
        let crc = u32_at(b, crc_at, "superblock")?;
        if crc_of(b, crc_at, "superblock")? != crc {
            return Err(FormatError::BadCrc("superblock"));
        }
        if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&version) {
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
            durable_log: if version == 2 {
                0
            } else {
                u64_at(b, 160, "superblock")?
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
            durable_log: 0x1234_5678_9abc,
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
    fn version_2_superblock_reads_as_no_durable_log() {
        let s = sb();
        let mut b = vec![0u8; 512];
        s.encode(&mut b);
        // Rewrite as version 2: version field, no durable-log field, crc over 0..160 at 160.
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        b[160..172].fill(0);
        let crc = crc32c::crc32c(&b[..160]);
        b[160..164].copy_from_slice(&crc.to_le_bytes());
        let want = Superblock {
            durable_log: 0,
            ..s
        };
        assert_eq!(Superblock::decode(&b), Ok(want));
        for bit in 0..164 * 8 {
            let mut c = b.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(Superblock::decode(&c).is_err(), "bit {bit}");
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
}
