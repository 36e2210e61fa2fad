//! The nvkv side: three nvkv-server processes (raft/, openraft over nvkv), formed into one cluster through
//! `POST /cluster/init`, and the HTTP/JSON put client.

use crate::procs::Proc;
use crate::workload::Putter;
use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// One request's bound: far above any put latency, so only a stuck server trips it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a put keeps retrying while the cluster has no leader (an election) before it counts as failed.
const NO_LEADER_PATIENCE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub id: u64,
    pub addr: String,
    /// The database file, or (with `nvme`) the file beside which the snapshots go.
    pub db: PathBuf,
    /// The database's NVMe controller (PCI address) instead of the file.
    pub nvme: Option<String>,
}

#[derive(Debug)]
pub struct Settings {
    pub server: PathBuf,
    pub db_size: Option<u64>,
    pub commit_interval_ms: Option<u64>,
    pub durable_log: Option<String>,
    /// More arguments for every server.
    pub extra: Vec<String>,
}

/// One node per port: databases in files under `data_root`, or on the `nvme` controllers (one each).
pub fn node_specs(ports: &[u16], data_root: &Path, nvme: &[String]) -> Result<Vec<NodeSpec>> {
    if !nvme.is_empty() && nvme.len() != ports.len() {
        bail!(
            "--nvme names {} controllers; the cluster has {} nodes, one controller each",
            nvme.len(),
            ports.len()
        );
    }
    Ok(ports
        .iter()
        .enumerate()
        .map(|(i, p)| NodeSpec {
            id: i as u64 + 1,
            addr: format!("127.0.0.1:{p}"),
            db: data_root.join(format!("nvkv-{}", i + 1)).join("db"),
            nvme: nvme.get(i).cloned(),
        })
        .collect())
}

/// The default server binary: `nvkv-server` next to the bench's own executable (`target/release/`).
pub fn default_server() -> Result<PathBuf> {
    let me = std::env::current_exe().context("finding the bench's own executable")?;
    let dir = me
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", me.display()))?;
    Ok(dir.join("nvkv-server"))
}

pub fn check_server(server: &Path) -> Result<()> {
    if !server.is_file() {
        bail!(
            "no nvkv-server binary at {}: build it with `cargo build --release -p nvkv-raft` \
             (or point --server at one)",
            server.display()
        );
    }
    Ok(())
}

/// Starts the three nodes and waits (bounded) until each prints its `nvkv-server N listening on ADDR` line.
pub fn start(
    s: &Settings,
    nodes: &[NodeSpec],
    log_dir: &Path,
    wait: Duration,
) -> Result<Vec<Proc>> {
    let mut procs = Vec::new();
    for n in nodes {
        let dir =
            n.db.parent()
                .ok_or_else(|| anyhow!("{} has no parent directory", n.db.display()))?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut cmd = Command::new(&s.server);
        cmd.arg("--id")
            .arg(n.id.to_string())
            .arg("--listen")
            .arg(&n.addr);
        match &n.nvme {
            Some(pci) => cmd
                .arg("--nvme")
                .arg(pci)
                .arg("--snapshot-dir")
                .arg(dir.join("snapshots")),
            None => cmd.arg("--db").arg(&n.db),
        };
        if let Some(b) = s.db_size.filter(|_| n.nvme.is_none()) {
            cmd.arg("--db-size").arg(b.to_string());
        }
        if let Some(d) = &s.durable_log {
            cmd.arg("--durable-log").arg(d);
        }
        cmd.args(&s.extra);
        if let Some(ms) = s.commit_interval_ms {
            cmd.arg("--commit-interval-ms").arg(ms.to_string());
        }
        let log = log_dir.join(format!("nvkv-{}.log", n.id));
        procs.push(Proc::spawn(
            &format!("nvkv-server {}", n.id),
            &mut cmd,
            &log,
        )?);
    }
    let deadline = Instant::now() + wait;
    for (n, p) in nodes.iter().zip(procs.iter_mut()) {
        let line = format!("nvkv-server {} listening on", n.id);
        loop {
            if p.log_text().contains(&line) {
                break;
            }
            p.check_alive()?;
            if Instant::now() >= deadline {
                bail!(
                    "{} did not print `{line} ...` within {wait:?}; the end of {}:\n{}",
                    p.name,
                    p.log.display(),
                    p.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(procs)
}

/// The part of `GET /cluster/status` the bench uses (serde ignores the other fields).
#[derive(Debug, Deserialize)]
pub struct Status {
    pub leader: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct NotLeader {
    leader_addr: Option<String>,
}

fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        // One connection per client (task): a closed loop never has two requests in flight.
        .pool_max_idle_per_host(1)
        .build()
        .context("building an HTTP client")
}

/// `POST /cluster/init` on the first node with all three members.
pub async fn init(nodes: &[NodeSpec]) -> Result<()> {
    let http = http_client()?;
    let members: BTreeMap<String, String> = nodes
        .iter()
        .map(|n| (n.id.to_string(), n.addr.clone()))
        .collect();
    let first = nodes.first().ok_or_else(|| anyhow!("no nodes"))?;
    let url = format!("http://{}/cluster/init", first.addr);
    let resp = http
        .post(&url)
        .json(&serde_json::json!({ "members": members }))
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        bail!("POST {url}: {status}: {body}");
    }
    Ok(())
}

pub async fn status(http: &reqwest::Client, addr: &str) -> Result<Status> {
    let url = format!("http://{addr}/cluster/status");
    let resp = http
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let code = resp.status();
    if !code.is_success() {
        let body = resp.text().await.unwrap_or_default();
        bail!("GET {url}: {code}: {body}");
    }
    resp.json()
        .await
        .with_context(|| format!("GET {url}: the JSON answer"))
}

/// Waits (bounded) until every node names the same leader, and returns that leader's address.
pub async fn wait_leader(nodes: &[NodeSpec], wait: Duration) -> Result<String> {
    let http = http_client()?;
    let deadline = Instant::now() + wait;
    let mut last = String::from("no answer yet");
    loop {
        let mut leaders = Vec::new();
        for n in nodes {
            match status(&http, &n.addr).await {
                Ok(s) => leaders.push(s.leader),
                Err(e) => {
                    last = format!("{e:#}");
                    leaders.push(None);
                }
            }
        }
        if let Some(Some(l)) = leaders.first() {
            if leaders.iter().all(|x| *x == Some(*l)) {
                let addr = nodes
                    .iter()
                    .find(|n| n.id == *l)
                    .map(|n| n.addr.clone())
                    .ok_or_else(|| anyhow!("the nodes name leader {l}, which is not a member"))?;
                return Ok(addr);
            }
        }
        last = format!("leaders as the nodes see them: {leaders:?} ({last})");
        if Instant::now() >= deadline {
            bail!("the nvkv cluster had no agreed leader within {wait:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One client connection (its own reqwest client, so its own keep-alive connection) to the leader.
#[derive(Debug)]
pub struct NvkvPutter {
    http: reqwest::Client,
    target: String,
}

impl NvkvPutter {
    pub fn new(leader: &str) -> Result<Self> {
        Ok(NvkvPutter {
            http: http_client()?,
            target: leader.to_string(),
        })
    }

    pub async fn get(&mut self, key: &str) -> Result<Option<String>> {
        #[derive(Deserialize)]
        struct Got {
            value: Option<String>,
        }
        let url = format!("http://{}/kv/get", self.target);
        let resp = self
            .http
            .post(&url)
            .json(&serde_json::json!({ "key": key, "stale": false }))
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let code = resp.status();
        if !code.is_success() {
            let body = resp.text().await.unwrap_or_default();
            bail!("POST {url}: {code}: {body}");
        }
        let g: Got = resp.json().await.context("the /kv/get answer")?;
        Ok(g.value)
    }
}

impl Putter for NvkvPutter {
    async fn put(&mut self, key: String, value: String) -> Result<u32> {
        let body = serde_json::json!({ "key": key, "value": value });
        let mut retries = 0u32;
        let mut followed = false;
        let started = Instant::now();
        loop {
            let url = format!("http://{}/kv/put", self.target);
            let resp = self
                .http
                .post(&url)
                .json(&body)
                .send()
                .await
                .with_context(|| format!("POST {url}"))?;
            let code = resp.status();
            if code.is_success() {
                // Read the body: it completes the exchange, so the connection goes back for the next put.
                resp.bytes().await.context("the /kv/put answer")?;
                return Ok(retries);
            }
            let text = resp.text().await.unwrap_or_default();
            if code.as_u16() != 421 {
                bail!("POST {url}: {code}: {text}");
            }
            retries += 1;
            let nl: NotLeader = serde_json::from_str(&text)
                .with_context(|| format!("POST {url}: a 421 answer that is not JSON: {text}"))?;
            match nl.leader_addr {
                // Follow a named leader once; a second redirect in the same put means the leadership is
                // moving: fall through to the bounded wait below.
                Some(a) if !followed && a != self.target => {
                    self.target = a;
                    followed = true;
                    continue;
                }
                Some(a) => self.target = a,
                None => {}
            }
            if started.elapsed() >= NO_LEADER_PATIENCE {
                bail!("POST {url}: no leader for {NO_LEADER_PATIENCE:?}: {text}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
