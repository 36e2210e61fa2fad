//! The engine's error type.

use crate::bdev::IoError;
use crate::format::FormatError;

/// Largest key, in bytes (the record header stores it in 16 bits; 1 KiB keeps index memory sane).
pub const MAX_KEY_LEN: usize = 1024;
/// Largest value, in bytes (a record must fit in one write buffer, whose size bounds it further).
pub const MAX_VALUE_LEN: usize = 1 << 20;

/// Everything an engine operation can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Keys must not be empty.
    #[error("empty key")]
    EmptyKey,
    /// The key is longer than the limit.
    #[error("key of {len} bytes exceeds the limit of {max}")]
    KeyTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value is longer than the limit.
    #[error("value of {len} bytes exceeds the limit of {max}")]
    ValueTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Compare-and-swap found another version (None: the key is absent).
    #[error("version mismatch: current {current:?}")]
    VersionMismatch {
        /// The key's current version.
        current: Option<u64>,
    },
    /// Increment on a value that is not an 8-byte little-endian integer.
    #[error("value is not an integer")]
    NotAnInteger,
    /// Increment overflowed.
    #[error("integer overflow")]
    Overflow,
    /// The shard's slice is full.
    #[error("no space left in the shard")]
    NoSpace,
    /// A device request failed.
    #[error("I/O error: {0}")]
    Io(#[from] IoError),
    /// Bytes read back do not check out (checksum, magic, key mismatch...). Never served as a value.
    #[error("corrupt data: {0}")]
    Corrupt(#[from] FormatError),
    /// The device or its format does not fit the options.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The device holds something that is not an nvkv database of this format (a foreign file, a
    /// version 1 image, a damaged superblock area) or is blank without `create`. Nothing was written.
    #[error("not an nvkv database: {0}")]
    NotADatabase(String),
    /// An nvkv database that cannot be recovered from what is valid on it (every checkpoint damaged,
    /// or the index and the log disagree). Nothing was written; salvage copies what the segments hold.
    #[error("unrecoverable database: {0}")]
    Unrecoverable(String),
    /// The device is opened by another handle or process.
    #[error("in use: {0}")]
    Locked(String),
    /// The durable log (persistent memory) the database needs is missing, belongs to something else,
    /// or cannot be attached. Nothing was written when an open fails with it.
    #[error("durable log: {0}")]
    DurableLog(String),
    /// The database is closed.
    #[error("database closed")]
    Closed,
}

/// Checks the size limits of a key and an optional value against the engine's and the buffer's limits.
pub fn check_sizes(key: &[u8], value: Option<&[u8]>, max_value: usize) -> Result<(), Error> {
    if key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Error::KeyTooLarge {
            len: key.len(),
            max: MAX_KEY_LEN,
        });
    }
    if let Some(v) = value {
        if v.len() > max_value {
            return Err(Error::ValueTooLarge {
                len: v.len(),
                max: max_value,
            });
        }
    }
    Ok(())
}
