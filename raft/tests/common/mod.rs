//! The three-node scenario shared by `tests/cluster.rs` (file backends on the host) and `tests/vm.rs`
//! (one emulated NVMe controller with a PMR per node, in the test VM): form the cluster, write through
//! the leader and a follower, read on every node, `kill -9` the leader, elect a new one and go on
//! writing, restart the killed node and let it catch up (by snapshot: the log is purged often), stop a
//! node with SIGSTOP and resume it. Every acknowledged write is then on every node, checked against a
//! model of what was acknowledged. Every wait is bounded.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nvkv_raft::client::Client;

/// One node: how to start its server.
pub struct Node {
    pub id: u64,
    pub addr: String,
    /// The backend's arguments (`--db PATH ...` or `--nvme ADDR ...`) and any others.
    pub args: Vec<String>,
    child: Option<Child>,
}

impl Node {
    pub fn new(id: u64, args: Vec<String>) -> Node {
        Node {
            id,
            addr: format!("127.0.0.1:{}", free_port()),
            args,
            child: None,
        }
    }
}

/// How the scenario runs.
pub struct Setup {
    /// The nvkv-server binary.
    pub server: PathBuf,
    /// Multiplies every bound on a wait (the VM runs under TCG, tens of times slower than the host).
    pub slow: u32,
}

impl Setup {
    fn bound(&self, secs: u64) -> Duration {
        Duration::from_secs(secs * self.slow as u64)
    }
}

/// What the scenario measured.
pub struct Outcome {
    /// `kill -9` of the leader to the first write acknowledged under the new one.
    pub failover: Duration,
    /// SIGSTOP of the leader to the first write acknowledged by the other two.
    pub stopped_leader: Duration,
    /// Acknowledged keys present on all three nodes at the end.
    pub keys: usize,
}

fn start(setup: &Setup, n: &mut Node) {
    let mut child = Command::new(&setup.server)
        .args(["--id", &n.id.to_string(), "--listen", &n.addr])
        .args(&n.args)
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
    let line = match rx.recv_timeout(setup.bound(30)) {
        Ok(l) => l,
        Err(e) => {
            // Dead or hung: either way it is of no use; reap it so no process outlives the test.
            let _ = child.kill();
            let status = child.wait();
            panic!("nvkv-server {} did not start ({e}; {status:?})", n.id);
        }
    };
    assert!(line.contains("listening"), "unexpected first line: {line}");
    n.child = Some(child);
}

fn signal(n: &Node, sig: i32) {
    let pid = n.child.as_ref().expect("running").id() as i32;
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    let r = unsafe { libc::kill(pid, sig) };
    assert_eq!(r, 0, "kill({pid}, {sig})");
}

fn kill9(n: &mut Node) {
    signal(n, libc::SIGKILL);
    if let Some(mut c) = n.child.take() {
        // Reap it; it is dead either way.
        let _ = c.wait();
    }
}

/// The running nodes; dropping it kills them (also when an assertion failed).
struct Cluster(Vec<Node>);

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.0 {
            if let Some(mut c) = n.child.take() {
                // A stopped process must be continued to die of SIGKILL promptly; errors mean it is gone.
                // SAFETY: kill(2) on a child of this test.
                let _ = unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
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
    setup: &Setup,
    client: &Client,
    addrs: &[String],
    index: u64,
    model: &BTreeMap<String, String>,
) {
    for a in addrs {
        wait_for(
            &format!("{a} applies index {index}"),
            setup.bound(30),
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

/// Writes fresh `w`-prefixed keys until one is acknowledged (an attempt whose answer was lost may or
/// may not be there, which the model allows for `w` keys); how long that took.
async fn first_write(
    setup: &Setup,
    client: &Client,
    prefix: &str,
    model: &mut BTreeMap<String, String>,
) -> (u64, Duration) {
    let since = Instant::now();
    let mut i = 0u32;
    loop {
        let k = format!("w{prefix}{i:05}");
        i += 1;
        match client.put(&k, prefix).await {
            Ok(idx) => {
                model.insert(k, prefix.into());
                return (idx, since.elapsed());
            }
            Err(e) => assert!(
                since.elapsed() < setup.bound(30),
                "no write acknowledged within {:?} ({prefix}): {e}",
                setup.bound(30)
            ),
        }
    }
}

/// A client of `addrs`: request deadlines and exchange timeouts scaled to the machine.
fn client(setup: &Setup, addrs: Vec<String>) -> Client {
    Client::new(addrs)
        .with_deadline(setup.bound(30))
        .with_exchange_timeout(Duration::from_millis(500 * setup.slow as u64))
}

/// Runs the whole scenario on `nodes` (not started yet); panics on the first broken expectation.
pub async fn run(setup: &Setup, nodes: Vec<Node>) -> Outcome {
    let mut c = Cluster(nodes);
    for n in &mut c.0 {
        start(setup, n);
    }
    let addrs: Vec<String> = c.0.iter().map(|n| n.addr.clone()).collect();
    let all = client(setup, addrs.clone());
    let members: BTreeMap<u64, String> = c.0.iter().map(|n| (n.id, n.addr.clone())).collect();
    all.init(&members).await.expect("init");
    let leader = wait_for("a leader", setup.bound(20), async || {
        agreed_leader(&all, &addrs).await
    })
    .await;
    eprintln!("leader: node {leader}");

    // Writes through the leader (and through a follower: the client follows the redirection).
    let mut model = BTreeMap::new();
    let mut last = write_keys(&all, "a", 150, &mut model).await;
    let follower = c.0.iter().find(|n| n.id != leader).expect("a follower");
    let redirected = client(setup, vec![follower.addr.clone()]);
    last = last.max(write_keys(&redirected, "b", 10, &mut model).await);
    // Overwrites, a delete and compare-and-swaps.
    last = last.max(all.put("a00000", "overwritten").await.expect("overwrite"));
    model.insert("a00000".into(), "overwritten".into());
    last = last.max(all.delete("a00001").await.expect("delete"));
    model.remove("a00001");
    let (ok, cur) = all
        .cas("a00002", Some("wrong"), Some("x"))
        .await
        .expect("cas");
    assert!(
        !ok && cur.as_deref() == Some("value of a00002"),
        "cas on a mismatch: {ok} {cur:?}"
    );
    let (ok, _) = all
        .cas("a00002", Some("value of a00002"), Some("swapped"))
        .await
        .expect("cas");
    assert!(ok);
    model.insert("a00002".into(), "swapped".into());
    let (ok, _) = all.cas("c-new", None, Some("created")).await.expect("cas");
    assert!(ok);
    model.insert("c-new".into(), "created".into());
    assert_eq!(
        all.get("a00002").await.expect("get").as_deref(),
        Some("swapped")
    );
    assert_eq!(all.get("a00001").await.expect("get"), None);
    last = last.max(all.put("c-last", "1").await.expect("put"));
    model.insert("c-last".into(), "1".into());
    check_all(setup, &all, &addrs, last, &model).await;

    // kill -9 the leader; time until a write is acknowledged under the new one.
    let li = c.0.iter().position(|n| n.id == leader).expect("leader");
    let killed_at = Instant::now();
    kill9(&mut c.0[li]);
    let survivors: Vec<String> =
        c.0.iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.addr.clone())
            .collect();
    let after = client(setup, survivors.clone());
    let (first, _) = first_write(setup, &after, "kill", &mut model).await;
    let failover = killed_at.elapsed();
    let new_leader = wait_for("a new leader", setup.bound(20), async || {
        agreed_leader(&after, &survivors).await
    })
    .await;
    assert_ne!(new_leader, leader);
    eprintln!(
        "failover: kill -9 of node {leader} to the first acknowledged write under node {new_leader}: {failover:?}"
    );
    last = last
        .max(first)
        .max(write_keys(&after, "d", 200, &mut model).await);
    check_all(setup, &after, &survivors, last, &model).await;

    // Restart the killed node: it recovers its database and catches up (by snapshot when the leader has
    // purged what it missed).
    start(setup, &mut c.0[li]);
    last = last.max(write_keys(&all, "e", 20, &mut model).await);
    check_all(setup, &all, &addrs, last, &model).await;

    // A partition: SIGSTOP the current leader; the other two elect a leader and go on; SIGCONT it and
    // it steps down and catches up.
    let leader2 = wait_for("a leader", setup.bound(20), async || {
        agreed_leader(&all, &addrs).await
    })
    .await;
    let si = c.0.iter().position(|n| n.id == leader2).expect("leader");
    signal(&c.0[si], libc::SIGSTOP);
    let others: Vec<String> =
        c.0.iter()
            .filter(|n| n.id != leader2)
            .map(|n| n.addr.clone())
            .collect();
    let during = client(setup, others);
    let (first, stopped_leader) = first_write(setup, &during, "stop", &mut model).await;
    eprintln!("SIGSTOP of leader {leader2}: writes went on after {stopped_leader:?}");
    last = last
        .max(first)
        .max(write_keys(&during, "f", 100, &mut model).await);
    signal(&c.0[si], libc::SIGCONT);
    last = last.max(write_keys(&all, "g", 20, &mut model).await);
    check_all(setup, &all, &addrs, last, &model).await;

    // A follower stopped: the other two still make a quorum.
    let leader3 = wait_for("a leader", setup.bound(20), async || {
        agreed_leader(&all, &addrs).await
    })
    .await;
    let fi = c.0.iter().position(|n| n.id != leader3).expect("follower");
    signal(&c.0[fi], libc::SIGSTOP);
    last = last.max(write_keys(&all, "h", 50, &mut model).await);
    signal(&c.0[fi], libc::SIGCONT);
    check_all(setup, &all, &addrs, last, &model).await;
    eprintln!("{} acknowledged keys on all three nodes", model.len());
    Outcome {
        failover,
        stopped_leader,
        keys: model.len(),
    }
}
