//! What a node's storage can fail with, and how it reaches openraft.

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};

use crate::types::{NodeId, StorageError};

/// A storage failure below openraft.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The nvkv database refused or failed an operation.
    #[error("nvkv: {0}")]
    Engine(#[from] nvkv::Error),
    /// A stored record does not decode.
    #[error("undecodable {what}: {detail}")]
    Decode {
        /// Which record.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// The engine answered with a reply of another kind (a bug).
    #[error("unexpected answer to {0}")]
    UnexpectedReply(&'static str),
    /// A snapshot file is damaged or not one of ours.
    #[error("snapshot {file}: {detail}")]
    Snapshot {
        /// The file.
        file: String,
        /// What is wrong.
        detail: String,
    },
    /// A file operation (snapshots) failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The node's storage options do not fit.
    #[error("storage configuration: {0}")]
    Config(String),
}

impl StoreError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> StoreError {
        StoreError::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn decode(what: &'static str, detail: impl ToString) -> StoreError {
        StoreError::Decode {
            what,
            detail: detail.to_string(),
        }
    }

    /// As openraft's error, naming what was being read or written.
    pub(crate) fn raft(self, subject: ErrorSubject<NodeId>, verb: ErrorVerb) -> StorageError {
        StorageIOError::new(subject, verb, AnyError::new(&self)).into()
    }
}
