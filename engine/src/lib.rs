//! nvkv: the key-value engine — per-core shards over an asynchronous block device.
//!
//! See `DESIGN.md` (engine section) and `engine/FORMAT.md` for the on-disk layout.
//!
//! Layers, bottom up: [`bdev`] (devices), [`format`] (bytes on disk), [`space`] (free extents),
//! [`index`] and [`buffer`] (memory), [`shard`] with `persist`, `recovery` and `gc` (one core's engine),
//! and [`api`] (threads, routing, the `Db` handle).

pub mod api;
pub mod bdev;
pub mod buffer;
pub mod error;
pub mod format;
mod gc;
pub mod hlc;
pub mod index;
pub mod mailbox;
mod persist;
pub mod recovery;
pub mod shard;
pub mod space;

pub use api::{Backend, Db, DbHandle, LocalCtx, Options};
pub use error::{Error, MAX_KEY_LEN, MAX_VALUE_LEN};
pub use recovery::RecoveryReport;
pub use shard::{
    Conflict, KvPairs, MergeFn, Meta, Shard, ShardConfig, ShardStats, WriteOpts, WriteResult,
};
