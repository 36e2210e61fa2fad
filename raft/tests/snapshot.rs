//! Snapshots between two nodes' stores: built from one state machine, streamed into another, installed,
//! and still there after the receiver reopens; a damaged snapshot is refused and changes nothing.

use nvkv::bdev::MemDisk;
use nvkv_raft::types::{Entry, LogId};
use nvkv_raft::{Command, NodeStore, StateMachine, StoreBackend, StoreOptions};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

fn entry(index: u64, cmd: Command) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(cmd),
    }
}

async fn open(disk: &MemDisk, dir: &std::path::Path) -> (NodeStore, StateMachine) {
    let (store, _log, sm) =
        NodeStore::open(StoreOptions::new(StoreBackend::Memory(disk.clone()), dir))
            .await
            .expect("open store");
    (store, sm)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_moves_the_state_to_another_node_and_survives_its_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (da, db) = (MemDisk::new(4096, 16384), MemDisk::new(4096, 16384));
    let (sa, mut a) = open(&da, &dir.path().join("a")).await;
    let (sb, mut b) = open(&db, &dir.path().join("b")).await;
    let mut entries = Vec::new();
    for i in 0..3000u64 {
        entries.push(entry(
            i + 1,
            Command::Put {
                key: format!("k{i:05}").into_bytes(),
                value: vec![i as u8; 50],
            },
        ));
    }
    entries.push(entry(
        3001,
        Command::Delete {
            key: b"k00007".to_vec(),
        },
    ));
    a.apply(entries).await.expect("apply on a");
    // B holds something the snapshot must replace.
    b.apply([entry(
        1,
        Command::Put {
            key: b"only-on-b".to_vec(),
            value: b"x".to_vec(),
        },
    )])
    .await
    .expect("apply on b");

    let snap = a
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");
    // Writes after the builder was asked for are not in the snapshot.
    a.apply([entry(
        3002,
        Command::Put {
            key: b"later".to_vec(),
            value: b"y".to_vec(),
        },
    )])
    .await
    .expect("apply");
    let mut src = snap.snapshot;
    src.seek(std::io::SeekFrom::Start(0)).await.expect("seek");
    let mut bytes = Vec::new();
    src.read_to_end(&mut bytes).await.expect("read snapshot");

    // A damaged copy is refused, and B is unchanged.
    let mut bad = bytes.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x10;
    let mut rx = b.begin_receiving_snapshot().await.expect("begin");
    rx.write_all(&bad).await.expect("write");
    rx.flush().await.expect("flush");
    assert!(
        b.install_snapshot(&snap.meta, rx).await.is_err(),
        "a damaged snapshot was installed"
    );
    assert_eq!(
        b.read(b"only-on-b").await.expect("read"),
        Some(b"x".to_vec())
    );

    let mut rx = b.begin_receiving_snapshot().await.expect("begin");
    rx.write_all(&bytes).await.expect("write");
    rx.flush().await.expect("flush");
    b.install_snapshot(&snap.meta, rx).await.expect("install");
    let check = async |sm: &StateMachine| {
        assert_eq!(sm.read(b"only-on-b").await.expect("read"), None);
        assert_eq!(sm.read(b"later").await.expect("read"), None);
        assert_eq!(sm.read(b"k00007").await.expect("read"), None);
        for i in (0..3000u64).filter(|&i| i != 7) {
            assert_eq!(
                sm.read(format!("k{i:05}").as_bytes()).await.expect("read"),
                Some(vec![i as u8; 50]),
                "k{i:05}"
            );
        }
    };
    check(&b).await;
    assert_eq!(
        b.applied_state().await.expect("applied").0.map(|l| l.index),
        Some(3001)
    );

    // Reopened, B has the snapshot's state, its marker and the snapshot itself.
    drop(b);
    sb.close().expect("close b");
    let (_sb, mut b) = open(&db, &dir.path().join("b")).await;
    check(&b).await;
    assert_eq!(
        b.applied_state().await.expect("applied").0.map(|l| l.index),
        Some(3001)
    );
    let cur = b
        .get_current_snapshot()
        .await
        .expect("current")
        .expect("a snapshot");
    assert_eq!(cur.meta, snap.meta);
    drop(a);
    sa.close().expect("close a");
}
