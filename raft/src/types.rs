//! The replicated state machine's commands and answers, and openraft's type configuration.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A command replicated through the Raft log and applied to every node's state machine.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Store `value` under `key`.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// Compare-and-swap on the value: when the current value is `expected` (None: absent), store
    /// `value` (None: delete). Decided when applied, so every node decides the same.
    Cas {
        /// The key.
        key: Vec<u8>,
        /// The value the key must hold (None: the key must be absent).
        expected: Option<Vec<u8>>,
        /// The new value (None: delete).
        value: Option<Vec<u8>>,
    },
}

impl Command {
    /// The key the command writes.
    pub fn key(&self) -> &[u8] {
        match self {
            Command::Put { key, .. } | Command::Delete { key } | Command::Cas { key, .. } => key,
        }
    }
}

impl fmt::Debug for Command {
    // Keys and values can be large: show lengths, not bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Put { key, value } => {
                write!(f, "Put({} B key, {} B value)", key.len(), value.len())
            }
            Command::Delete { key } => write!(f, "Delete({} B key)", key.len()),
            Command::Cas {
                key,
                expected,
                value,
            } => write!(
                f,
                "Cas({} B key, expected {:?} B, new {:?} B)",
                key.len(),
                expected.as_ref().map(Vec::len),
                value.as_ref().map(Vec::len)
            ),
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What applying a command returned.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CommandResult {
    /// The command took effect (false: a compare-and-swap found another value).
    pub ok: bool,
    /// For a compare-and-swap: the key's value after it was applied.
    pub current: Option<Vec<u8>>,
}

openraft::declare_raft_types!(
    /// openraft's types for nvkv: u64 node ids, nodes known by their HTTP address, snapshots as files
    /// (streamed, never held whole in memory).
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
);

/// A node's id.
pub type NodeId = u64;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id.
pub type LogId = openraft::LogId<NodeId>;
/// A vote.
pub type Vote = openraft::Vote<NodeId>;
/// A membership as stored.
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
/// A snapshot's metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
/// openraft's storage error.
pub type StorageError = openraft::StorageError<NodeId>;
/// The Raft node.
pub type Raft = openraft::Raft<TypeConfig>;
