//! nvkv: the key-value engine — per-core shards over an asynchronous block device.
//!
//! See `DESIGN.md` (engine section) and `engine/FORMAT.md` for the on-disk layout.

pub mod bdev;
pub mod format;
pub mod space;
