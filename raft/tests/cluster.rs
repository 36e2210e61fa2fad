//! Three nvkv-server processes on loopback, each with its database in a file: the scenario of
//! `common/mod.rs` (kill -9 of the leader, restart and catch-up, SIGSTOP of the leader and of a follower,
//! every acknowledged write on every node). The same scenario runs on three NVMe controllers in the VM
//! (`tests/vm.rs`).

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_survive_kill_and_stop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = (1..=3)
        .map(|id| {
            let db = dir.path().join(format!("node{id}.db"));
            common::Node::new(
                id,
                vec![
                    "--db".into(),
                    db.display().to_string(),
                    "--db-size".into(),
                    (64u64 << 20).to_string(),
                    "--snapshot-every".into(),
                    "64".into(),
                ],
            )
        })
        .collect();
    let setup = common::Setup {
        server: env!("CARGO_BIN_EXE_nvkv-server").into(),
        slow: 1,
    };
    let out = common::run(&setup, nodes).await;
    println!("FAILOVER_MS {}", out.failover.as_millis());
    println!("STOPPED_LEADER_MS {}", out.stopped_leader.as_millis());
    println!("KEYS {}", out.keys);
}
