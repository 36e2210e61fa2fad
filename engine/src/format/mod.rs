//! The on-disk layout (described for humans in `engine/FORMAT.md`): superblocks, segment headers,
//! records and index checkpoints, one module each. Little-endian; crc32c over everything; every field
//! checked on decode. Decoders take untrusted bytes and return typed errors; they never panic.

mod checkpoint;
mod durable_log;
mod segment;
mod superblock;

pub use checkpoint::*;
pub use durable_log::*;
pub use segment::*;
pub use superblock::*;

/// Format version written in every superblock and checkpoint. Version 1 images (no volume id, no
/// chained segment headers) are refused with [`FormatError::BadVersion`]. Version 2 differs from 3
/// only by the superblock's durable-log field (absent: no durable log attached) and is read as such.
pub const FORMAT_VERSION: u32 = 3;
/// The oldest format version this build reads.
pub const OLDEST_READABLE_VERSION: u32 = 2;
/// Superblock magic.
pub const SB_MAGIC: [u8; 8] = *b"NVKVSUPR";
/// Segment header magic.
pub const SEG_MAGIC: [u8; 8] = *b"NVKVSEGM";
/// Checkpoint header magic.
pub const CKPT_MAGIC: [u8; 8] = *b"NVKVCKPT";
/// Encoded superblock length (it occupies one block).
pub const SB_LEN: usize = 172;
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
    #[error("format version {0} (this build reads versions {OLDEST_READABLE_VERSION} to {FORMAT_VERSION})")]
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
