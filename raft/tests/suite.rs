//! openraft's storage conformance suite (`openraft::testing::Suite`) on nvkv: the log store and the
//! state machine of a node on a RAM disk and on a file. (The NVMe backend runs it in the VM:
//! `tests/vm.rs`.)

use nvkv::bdev::MemDisk;
use nvkv_raft::{LogStore, NodeStore, StateMachine, StoreBackend, StoreOptions, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};

/// What a test's store needs kept alive: the open database and its directory.
struct Guard {
    _store: NodeStore,
    _dir: tempfile::TempDir,
}

struct Memory;
struct File;

async fn build(file: bool) -> Result<(Guard, LogStore, StateMachine), openraft::StorageError<u64>> {
    let dir = tempfile::tempdir().map_err(|e| openraft::StorageIOError::write(&e))?;
    let backend = if file {
        StoreBackend::File {
            path: dir.path().join("node.db"),
            size: 64 << 20,
        }
    } else {
        StoreBackend::Memory(MemDisk::new(4096, 16384))
    };
    let opts = StoreOptions::new(backend, dir.path().join("snapshots"));
    let (store, log, sm) = NodeStore::open(opts)
        .await
        .map_err(|e| openraft::StorageIOError::write(&e))?;
    Ok((
        Guard {
            _store: store,
            _dir: dir,
        },
        log,
        sm,
    ))
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, Guard> for Memory {
    async fn build(&self) -> Result<(Guard, LogStore, StateMachine), openraft::StorageError<u64>> {
        build(false).await
    }
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, Guard> for File {
    async fn build(&self) -> Result<(Guard, LogStore, StateMachine), openraft::StorageError<u64>> {
        build(true).await
    }
}

#[test]
fn openraft_suite_on_a_ram_disk() {
    Suite::test_all(Memory).expect("openraft's storage suite on the memory backend");
}

#[test]
fn openraft_suite_on_a_file() {
    Suite::test_all(File).expect("openraft's storage suite on the file backend");
}
