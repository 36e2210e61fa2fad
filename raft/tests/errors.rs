//! Error paths of a node's storage: a state machine on a device that fills up. Applied writes are not
//! waited for one by one (their entries are committed already), so the failure of one must still stop
//! the state machine: every later apply and every read fails, instead of serving a state that lacks the
//! failed write.

use nvkv::bdev::MemDisk;
use nvkv_raft::types::{Entry, LogId};
use nvkv_raft::{Command, NodeStore, StoreBackend, StoreOptions};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload};

fn entry(index: u64, cmd: Command) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(cmd),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_device_stops_the_state_machine_at_the_first_failed_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 8 MiB: room for a few hundred 32 KiB values at most.
    let disk = MemDisk::new(4096, 2048);
    let (store, _log, mut sm) = NodeStore::open(StoreOptions::new(
        StoreBackend::Memory(disk.clone()),
        dir.path(),
    ))
    .await
    .expect("open store");
    let mut index = 0u64;
    let mut applied_ok = 0usize;
    let failure = loop {
        let batch: Vec<Entry> = (0..8)
            .map(|_| {
                index += 1;
                entry(
                    index,
                    Command::Put {
                        key: format!("k{index:06}").into_bytes(),
                        value: vec![index as u8; 32 << 10],
                    },
                )
            })
            .collect();
        match sm.apply(batch).await {
            Ok(_) => applied_ok += 1,
            Err(e) => break e,
        }
        assert!(index < 100_000, "the 8 MiB device never filled up");
    };
    eprintln!("apply failed after {applied_ok} batches: {failure}");
    assert!(applied_ok > 0, "the first batch should fit");
    // Stopped for good: later applies and reads fail too, even of a key written long before.
    for i in 0..3 {
        let r = sm
            .apply([entry(
                index + 1 + i,
                Command::Put {
                    key: b"small".to_vec(),
                    value: b"v".to_vec(),
                },
            )])
            .await;
        assert!(r.is_err(), "an apply after the failure succeeded");
    }
    assert!(
        sm.read(b"k000001").await.is_err(),
        "a read after the failure was answered"
    );
    // Closing still works (what was written before is safe) or reports the device's failure.
    let _ = store.close();
}
