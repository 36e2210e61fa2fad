//! nvkv: the key-value engine — per-core shards over an asynchronous block device.
//!
//! See `DESIGN.md` (engine section) and `engine/FORMAT.md` for the on-disk layout.
//!
//! Layers, bottom up: [`bdev`] (devices), [`format`](mod@format) (bytes on disk), [`space`] (free extents),
//! [`index`] and [`buffer`] (memory), [`shard`] with `persist`, `recovery` and `gc` (one core's engine),
//! and [`api`] (threads, routing, the `Db` handle).
//!
//! # Semantics in brief
//!
//! - **Limits**: keys are 1 to [`MAX_KEY_LEN`] (1024) bytes; values up to [`MAX_VALUE_LEN`] (1 MiB) and
//!   never more than one write buffer holds ([`Shard::max_value_len`]). Larger ones fail with
//!   [`Error::KeyTooLarge`] / [`Error::ValueTooLarge`]; an empty key with [`Error::EmptyKey`].
//! - **Visibility**: a read sees the newest write of its key at once, persisted or not.
//! - **Durability**: a write is durable once the persistence cycle holding it completed (write, then
//!   Flush when the device has a volatile cache). Cycles start when the commit interval runs out, when
//!   the buffer fills, on `sync`, and as soon as nothing is in flight when a write asked to be durable
//!   (group commit: writes arriving meanwhile share the next cycle).
//! - **Versions** come from a per-shard counter and are never reused (also not after a delete), so
//!   compare-and-swap has no ABA problem. **Timestamps** come from a hybrid logical clock (the wall clock
//!   at kernel-tick granularity, a logical counter within a tick) or the caller.
//! - **Conflicts** ([`Conflict`]): last writer wins compares timestamps (ties keep the stored value; a
//!   delete is applied only when newer than the stored value, and leaves no timestamp behind, so a later
//!   put with an older caller timestamp is applied); first writer wins keeps the stored value unless the
//!   new write carries a strictly older caller timestamp; merge stores `merge(key, old, new)`.
//!   Compare-and-swap and increment are decided by the version, not by the strategy.
//! - **Increment** works on 8-byte little-endian `i64` values; an absent key counts as 0.

pub mod api;
pub mod bdev;
pub mod buffer;
pub mod cache;
mod checkpoint;
pub mod durable_log;
pub mod error;
pub mod format;
mod gc;
pub mod hlc;
pub mod index;
mod log;
pub mod mailbox;
mod persist;
pub mod pmem;
pub mod recovery;
pub mod salvage;
pub mod shard;
pub(crate) mod slot;
pub mod space;
mod timer_slack;
mod zeroed;

pub use api::{Backend, Db, DbHandle, LocalCtx, Options};
pub use durable_log::DurableLogDevice;
pub use error::{Error, MAX_KEY_LEN, MAX_VALUE_LEN};
pub use recovery::RecoveryReport;
pub use shard::{
    Conflict, KvPairs, MergeFn, Meta, Shard, ShardConfig, ShardStats, WriteOpts, WriteResult,
};
