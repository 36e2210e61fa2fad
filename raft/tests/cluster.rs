//! Three nvkv-server processes on loopback: form the cluster, write through the leader, read on every
//! node, `kill -9` the leader, elect a new one and go on writing, restart the killed node and let it
//! catch up (by snapshot: the log is purged often), stop a node with SIGSTOP and resume it. Every
//! acknowledged write is then on every node, checked against a model of what was acknowledged.
//! Every wait is bounded.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nvkv_raft::client::Client;

const SERVER: &str = env!("CARGO_BIN_EXE_nvkv-server");

struct Proc {
    id: u64,
    addr: String,
    db: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn start(&mut self) {
        let mut child = Command::new(SERVER)
            .args(["--id", &self.id.to_string(), "--listen", &self.addr])
            .arg("--db")
            .arg(&self.db)
            .args([
                "--db-size",
                &(64u64 << 20).to_string(),
                "--snapshot-every",
                "64",
            ])
            // openraft logs every unreachable peer; NVKV_LOG=warn (or finer) shows it.
            .env(
                "NVKV_LOG",
                std::env::var("NVKV_LOG").unwrap_or_else(|_| "off".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nvkv-server");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(out).lines();
            if let Some(Ok(l)) = lines.next() {
                // The test may have given up waiting: nothing to tell then.
                let _ = tx.send(l);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("nvkv-server did not start within 30 s");
        assert!(line.contains("listening"), "unexpected first line: {line}");
        self.child = Some(child);
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
        let r = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(r, 0, "kill({}, {sig})", self.pid());
    }

    fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        if let Some(mut c) = self.child.take() {
            // Reap it; it is dead either way.
            let _ = c.wait();
        }
    }
}

struct Cluster {
    procs: Vec<Proc>,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if let Some(mut c) = p.child.take() {
                // A stopped process must be continued to die of SIGKILL promptly; errors mean it is gone.
                let _ = unsafe_signal(c.id() as i32, libc::SIGCONT);
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn unsafe_signal(pid: i32, sig: i32) -> i32 {
    // SAFETY: kill(2) on a child of this test.
    unsafe { libc::kill(pid, sig) }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn cluster(dir: &Path) -> Vec<Proc> {
    (1..=3)
        .map(|id| Proc {
            id,
            addr: format!("127.0.0.1:{}", free_port()),
            db: dir.join(format!("node{id}.db")),
            child: None,
        })
        .collect()
}

async fn wait_for<T>(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The leader every running node in `addrs` agrees on.
async fn agreed_leader(client: &Client, addrs: &[String]) -> Option<u64> {
    let mut leader = None;
    for a in addrs {
        let s = client.status(a).await.ok()?;
        match (leader, s.leader) {
            (_, None) => return None,
            (None, l) => leader = l,
            (Some(x), Some(y)) if x != y => return None,
            _ => {}
        }
    }
    leader
}

/// Waits until every node in `addrs` applied `index`, then checks that each holds `model` exactly.
async fn check_all(
    client: &Client,
    addrs: &[String],
    index: u64,
    model: &BTreeMap<String, String>,
) {
    for a in addrs {
        wait_for(
            &format!("{a} applies index {index}"),
            Duration::from_secs(30),
            async || {
                let s = client.status(a).await.ok()?;
                (s.last_applied? >= index).then_some(())
            },
        )
        .await;
        let pairs = client.scan(Some(a), "", None, 100_000).await.expect("scan");
        let got: BTreeMap<String, String> = pairs.into_iter().collect();
        let missing: Vec<&String> = model
            .keys()
            .filter(|k| got.get(*k) != model.get(*k))
            .collect();
        assert!(
            missing.is_empty(),
            "{a} lacks or differs on {} acknowledged keys, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        // Keys the model does not have may only be writes whose answer was lost (w* keys).
        for k in got.keys().filter(|k| !model.contains_key(*k)) {
            assert!(k.starts_with('w'), "{a} holds {k}, never written");
        }
    }
}

/// Writes `n` fresh keys, each acknowledged one into the model; the last acknowledged index.
async fn write_keys(
    client: &Client,
    prefix: &str,
    n: usize,
    model: &mut BTreeMap<String, String>,
) -> u64 {
    let mut last = 0;
    for i in 0..n {
        let k = format!("{prefix}{i:05}");
        let v = format!("value of {k}");
        last = client
            .put(&k, &v)
            .await
            .unwrap_or_else(|e| panic!("put {k}: {e}"));
        model.insert(k, v);
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_survive_kill_and_stop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Cluster {
        procs: cluster(dir.path()),
        _dir: dir,
    };
    for p in &mut c.procs {
        p.start();
    }
    let addrs: Vec<String> = c.procs.iter().map(|p| p.addr.clone()).collect();
    let client = Client::new(addrs.clone()).with_deadline(Duration::from_secs(20));
    let members: BTreeMap<u64, String> = c.procs.iter().map(|p| (p.id, p.addr.clone())).collect();
    client.init(&members).await.expect("init");
    let leader = wait_for("a leader", Duration::from_secs(20), async || {
        agreed_leader(&client, &addrs).await
    })
    .await;
    eprintln!("leader: node {leader}");

    // Writes through the leader (and through a follower: the client follows the redirection).
    let mut model = BTreeMap::new();
    let mut last = write_keys(&client, "a", 150, &mut model).await;
    let follower = c
        .procs
        .iter()
        .find(|p| p.id != leader)
        .expect("a follower")
        .addr
        .clone();
    let redirected = Client::new(vec![follower]);
    last = last.max(write_keys(&redirected, "b", 10, &mut model).await);
    // Overwrites, a delete and compare-and-swaps.
    last = last.max(
        client
            .put("a00000", "overwritten")
            .await
            .expect("overwrite"),
    );
    model.insert("a00000".into(), "overwritten".into());
    last = last.max(client.delete("a00001").await.expect("delete"));
    model.remove("a00001");
    let (ok, cur) = client
        .cas("a00002", Some("wrong"), Some("x"))
        .await
        .expect("cas");
    assert!(
        !ok && cur.as_deref() == Some("value of a00002"),
        "cas on a mismatch: {ok} {cur:?}"
    );
    let (ok, _) = client
        .cas("a00002", Some("value of a00002"), Some("swapped"))
        .await
        .expect("cas");
    assert!(ok);
    model.insert("a00002".into(), "swapped".into());
    let (ok, _) = client
        .cas("c-new", None, Some("created"))
        .await
        .expect("cas");
    assert!(ok);
    model.insert("c-new".into(), "created".into());
    assert_eq!(
        client.get("a00002").await.expect("get").as_deref(),
        Some("swapped")
    );
    assert_eq!(client.get("a00001").await.expect("get"), None);
    last = last.max(client.put("c-last", "1").await.expect("put"));
    model.insert("c-last".into(), "1".into());
    check_all(&client, &addrs, last, &model).await;

    // kill -9 the leader; time until a write is acknowledged under the new one.
    let li = c
        .procs
        .iter()
        .position(|p| p.id == leader)
        .expect("leader process");
    let killed_at = Instant::now();
    c.procs[li].kill9();
    let survivors: Vec<String> = c
        .procs
        .iter()
        .filter(|p| p.child.is_some())
        .map(|p| p.addr.clone())
        .collect();
    let after = Client::new(survivors.clone()).with_deadline(Duration::from_secs(30));
    let mut i = 0u32;
    let first = loop {
        // Each attempt is its own key: one whose answer was lost may or may not be there (w* keys).
        let k = format!("w{i:05}");
        i += 1;
        match after.put(&k, "after the kill").await {
            Ok(idx) => {
                model.insert(k, "after the kill".into());
                break idx;
            }
            Err(e) => {
                assert!(
                    killed_at.elapsed() < Duration::from_secs(30),
                    "no write acknowledged 30 s after the kill: {e}"
                );
            }
        }
    };
    let failover = killed_at.elapsed();
    let new_leader = wait_for("a new leader", Duration::from_secs(20), async || {
        agreed_leader(&after, &survivors).await
    })
    .await;
    assert_ne!(new_leader, leader);
    eprintln!("failover: kill -9 of node {leader} to the first acknowledged write under node {new_leader}: {failover:?}");
    println!("FAILOVER_MS {}", failover.as_millis());
    last = last
        .max(first)
        .max(write_keys(&after, "d", 200, &mut model).await);
    check_all(&after, &survivors, last, &model).await;

    // Restart the killed node: it recovers its database and catches up (by snapshot: with a snapshot
    // every 64 entries the leader has purged what it missed).
    c.procs[li].start();
    last = last.max(write_keys(&client, "e", 20, &mut model).await);
    check_all(&client, &addrs, last, &model).await;

    // A partition: SIGSTOP the current leader; the other two elect a leader and go on; SIGCONT it and
    // it steps down and catches up.
    let leader2 = wait_for("a leader", Duration::from_secs(20), async || {
        agreed_leader(&client, &addrs).await
    })
    .await;
    let si = c
        .procs
        .iter()
        .position(|p| p.id == leader2)
        .expect("leader process");
    c.procs[si].signal(libc::SIGSTOP);
    let others: Vec<String> = c
        .procs
        .iter()
        .filter(|p| p.id != leader2)
        .map(|p| p.addr.clone())
        .collect();
    let during = Client::new(others.clone()).with_deadline(Duration::from_secs(30));
    let stopped_at = Instant::now();
    let mut j = 0u32;
    loop {
        let k = format!("w-stop{j:05}");
        j += 1;
        if during.put(&k, "while stopped").await.is_ok() {
            model.insert(k, "while stopped".into());
            break;
        }
        assert!(
            stopped_at.elapsed() < Duration::from_secs(30),
            "no write acknowledged 30 s after SIGSTOP"
        );
    }
    eprintln!(
        "SIGSTOP of leader {leader2}: writes went on after {:?}",
        stopped_at.elapsed()
    );
    last = last.max(write_keys(&during, "f", 100, &mut model).await);
    c.procs[si].signal(libc::SIGCONT);
    last = last.max(write_keys(&client, "g", 20, &mut model).await);
    check_all(&client, &addrs, last, &model).await;

    // A follower stopped: the other two still make a quorum.
    let leader3 = wait_for("a leader", Duration::from_secs(20), async || {
        agreed_leader(&client, &addrs).await
    })
    .await;
    let fi = c
        .procs
        .iter()
        .position(|p| p.id != leader3)
        .expect("a follower");
    c.procs[fi].signal(libc::SIGSTOP);
    last = last.max(write_keys(&client, "h", 50, &mut model).await);
    c.procs[fi].signal(libc::SIGCONT);
    check_all(&client, &addrs, last, &model).await;
    eprintln!("{} acknowledged keys on all three nodes", model.len());
}
