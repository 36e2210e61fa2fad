//! Where a node keeps each thing in its nvkv database: one key space, split by a leading byte.
//!
//! | key | value |
//! | --- | --- |
//! | `00` `vote` | the vote (bincode), written durably |
//! | `00` `committed` | the committed log id (bincode) |
//! | `00` `purged` | the last purged log id (bincode), written after a sync |
//! | `00` `applied` | the state machine's last applied log id and membership (bincode) |
//! | `00` `snapshot` | the current snapshot's metadata and file name (bincode), written durably |
//! | `00` `installing` | the file of a snapshot being installed (present only while it is) |
//! | `01` index (u64 big-endian) | a log entry (bincode), written durably |
//! | `02` user key | a data value: [`DataValue`] |
//!
//! A data value carries the index of the log entry that wrote it, and a delete leaves a tombstone with
//! its index: after a crash the state machine re-applies entries above its persisted marker, and an
//! entry whose key already holds its own or a later index is skipped. Without that, a compare-and-swap
//! re-applied over a value a later entry wrote could decide differently than it did the first time.

use serde::{Deserialize, Serialize};

pub(crate) const META_VOTE: &[u8] = b"\x00vote";
pub(crate) const META_COMMITTED: &[u8] = b"\x00committed";
pub(crate) const META_PURGED: &[u8] = b"\x00purged";
pub(crate) const META_APPLIED: &[u8] = b"\x00applied";
pub(crate) const META_SNAPSHOT: &[u8] = b"\x00snapshot";
pub(crate) const META_INSTALLING: &[u8] = b"\x00installing";

const LOG: u8 = 1;
const DATA: u8 = 2;

/// Longest user key: nvkv's limit less the prefix byte.
pub const MAX_USER_KEY: usize = nvkv::MAX_KEY_LEN - 1;

/// The key of log entry `index`.
pub(crate) fn log_key(index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = LOG;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

/// The index a log key names (None: not a log key).
pub(crate) fn log_index(key: &[u8]) -> Option<u64> {
    match key {
        [LOG, rest @ ..] if rest.len() == 8 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(rest);
            Some(u64::from_be_bytes(b))
        }
        _ => None,
    }
}

/// The first key after every log key.
pub(crate) const LOG_END: &[u8] = &[LOG + 1];

/// The key of user key `key`.
pub(crate) fn data_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(DATA);
    k.extend_from_slice(key);
    k
}

/// The user key of a data key (None: not a data key).
pub(crate) fn user_key(key: &[u8]) -> Option<&[u8]> {
    match key {
        [DATA, rest @ ..] => Some(rest),
        _ => None,
    }
}

/// The first key after every data key.
pub(crate) const DATA_END: &[u8] = &[DATA + 1];

/// A data value as stored: which log entry wrote it, and the value (None: a tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DataValue {
    pub(crate) index: u64,
    pub(crate) value: Option<Vec<u8>>,
}

impl DataValue {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let len = self.value.as_ref().map_or(0, Vec::len);
        let mut out = Vec::with_capacity(9 + len);
        out.push(u8::from(self.value.is_some()));
        out.extend_from_slice(&self.index.to_le_bytes());
        if let Some(v) = &self.value {
            out.extend_from_slice(v);
        }
        out
    }

    pub(crate) fn decode(raw: &[u8]) -> Result<DataValue, String> {
        if raw.len() < 9 || raw[0] > 1 || (raw[0] == 0 && raw.len() != 9) {
            return Err(format!("data value of {} bytes is malformed", raw.len()));
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&raw[1..9]);
        Ok(DataValue {
            index: u64::from_le_bytes(b),
            value: (raw[0] == 1).then(|| raw[9..].to_vec()),
        })
    }
}

/// The current snapshot, as `META_SNAPSHOT` stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapshotRecord {
    pub(crate) meta: crate::types::SnapshotMeta,
    pub(crate) file: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_index_and_round_trip() {
        let mut keys: Vec<[u8; 9]> = [5u64, 1, 300, 256, u64::MAX]
            .iter()
            .map(|&i| log_key(i))
            .collect();
        keys.sort();
        let idx: Vec<u64> = keys.iter().filter_map(|k| log_index(k)).collect();
        assert_eq!(idx, vec![1, 5, 256, 300, u64::MAX]);
        assert!(keys.iter().all(|k| k.as_slice() < LOG_END));
        assert_eq!(log_index(b"\x01short"), None);
        assert_eq!(log_index(&data_key(b"12345678")), None);
    }

    #[test]
    fn data_keys_stay_apart_from_meta_and_log() {
        let k = data_key(b"");
        assert!(k.as_slice() > log_key(u64::MAX).as_slice() && k.as_slice() < DATA_END);
        assert_eq!(user_key(&data_key(b"abc")), Some(&b"abc"[..]));
        assert_eq!(user_key(META_VOTE), None);
    }

    #[test]
    fn data_values_round_trip_and_damage_is_refused() {
        for v in [
            DataValue {
                index: 7,
                value: Some(b"hello".to_vec()),
            },
            DataValue {
                index: u64::MAX,
                value: Some(vec![]),
            },
            DataValue {
                index: 3,
                value: None,
            },
        ] {
            assert_eq!(DataValue::decode(&v.encode()), Ok(v.clone()));
        }
        assert!(DataValue::decode(b"").is_err());
        assert!(DataValue::decode(&[2, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(DataValue::decode(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 9]).is_err());
    }
}
