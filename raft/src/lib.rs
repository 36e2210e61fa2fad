//! nvkv as the storage under [openraft]: the Raft log, the vote and the state machine of each node are
//! records of the node's own nvkv database, and [`server`] serves a replicated key-value store over
//! HTTP/JSON (the `nvkv-server` binary).
//!
//! # Which openraft
//! openraft 0.9 (0.9.25), with its `storage-v2` traits ([`openraft::storage::RaftLogStorage`] and
//! [`openraft::storage::RaftStateMachine`]). 0.9 is the stable line that production users (Databend's
//! meta service) run; 0.10 is still a series of alphas whose storage API changes from one to the next.
//! The v2 traits are the ones 0.10 keeps, and they separate the log from the state machine and let an
//! append be acknowledged when the log is flushed, which is how nvkv's durable writes work: openraft
//! hears that entries are flushed exactly when nvkv has made them durable (from its durable log in a
//! PMR or persistent memory, or from a persistence cycle's segment write and Flush), never before.
//!
//! # Where things are
//! - [`keyspace`]: the key layout in the node's database.
//! - [`log_store`]: entries, vote, committed id; durable appends and truncations.
//! - [`state_machine`]: commands applied to data keys; snapshots streamed from range scans
//!   ([`snapshot`] is the file format).
//! - [`store`]: opening a node's database and both of the above.
//! - [`network`], [`server`], [`client`]: Raft RPCs and the client API over HTTP/JSON.
//!
//! A node's database has one shard: the state machine's writes are not durable one by one, and the
//! marker naming the last applied entry is ordered after them only within a shard.

pub mod client;
mod db_thread;
pub mod error;
pub mod keyspace;
pub mod log_store;
pub mod network;
mod recent;
pub mod server;
pub mod snapshot;
pub mod state_machine;
pub mod store;
pub mod types;

pub use error::StoreError;
pub use log_store::LogStore;
pub use state_machine::StateMachine;
pub use store::{NodeStore, StoreBackend, StoreOptions};
pub use types::{Command, CommandResult, NodeId, TypeConfig};
