//! The etcd side: three members of Debian's etcd 3.4 on 127.0.0.1, their health over plain HTTP (no protoc
//! needed), and, with the `etcd` feature, the gRPC put client of the etcd-client crate.

use crate::procs::Proc;
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct MemberSpec {
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
    pub data_dir: PathBuf,
}

pub fn member_specs(client_ports: &[u16], peer_ports: &[u16], data_root: &Path) -> Vec<MemberSpec> {
    client_ports
        .iter()
        .zip(peer_ports)
        .enumerate()
        .map(|(i, (c, p))| MemberSpec {
            name: format!("etcd-{}", i + 1),
            client_url: format!("http://127.0.0.1:{c}"),
            peer_url: format!("http://127.0.0.1:{p}"),
            data_dir: data_root.join(format!("etcd-{}", i + 1)),
        })
        .collect()
}

/// `etcd --version`'s first line, or an error that says how to install it.
pub fn version(etcd: &Path) -> Result<String> {
    let out = Command::new(etcd).arg("--version").output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            let v = text
                .lines()
                .find_map(|l| l.strip_prefix("etcd Version:"))
                .map(|v| v.trim().to_string())
                .ok_or_else(|| anyhow!("`{} --version` printed no version: {text}", etcd.display()))?;
            if !v.starts_with("3.4") {
                eprintln!(
                    "nvkv-raft-bench: {} is etcd {v}, not 3.4: the report says so",
                    etcd.display()
                );
            }
            Ok(v)
        }
        Ok(o) => bail!(
            "`{} --version` failed ({}): run `bash bench/raft/setup.sh` to install Debian's etcd-server",
            etcd.display(),
            o.status
        ),
        Err(e) => bail!(
            "cannot run {} ({e}): etcd is not installed; run `bash bench/raft/setup.sh` (as root) to install \
             Debian's etcd-server, etcd-client and protobuf-compiler",
            etcd.display()
        ),
    }
}

/// Starts the three members with etcd's default durability (the WAL is fsynced before a member acknowledges
/// an entry; no `--unsafe-no-fsync`).
pub fn start(
    etcd: &Path,
    members: &[MemberSpec],
    extra: &[String],
    log_dir: &Path,
) -> Result<Vec<Proc>> {
    let initial_cluster = members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs = Vec::new();
    for m in members {
        std::fs::create_dir_all(&m.data_dir)
            .with_context(|| format!("creating {}", m.data_dir.display()))?;
        let mut cmd = Command::new(etcd);
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .arg("--listen-client-urls")
            .arg(&m.client_url)
            .arg("--advertise-client-urls")
            .arg(&m.client_url)
            .arg("--listen-peer-urls")
            .arg(&m.peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&m.peer_url)
            .arg("--initial-cluster")
            .arg(&initial_cluster)
            .arg("--initial-cluster-token")
            .arg("nvkv-raft-bench")
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--logger")
            .arg("zap")
            .arg("--log-outputs")
            .arg("stderr")
            // Warnings and errors only: at the info level etcd logs every slow apply, which on 2 shared
            // cores is most of them, and the log then costs CPU inside the measurement.
            .arg("--log-level")
            .arg("warn")
            // The environment could carry ETCD_* settings (etcd reads them as flags): start from none.
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .args(extra);
        let log = log_dir.join(format!("{}.log", m.name));
        procs.push(Proc::spawn(&m.name, &mut cmd, &log)?);
    }
    Ok(procs)
}

/// Waits (bounded) until every member answers `GET /health` with `"health":"true"` (which etcd 3.4 says
/// only once the cluster has a leader and the member can serve a linearizable request).
pub async fn wait_healthy(
    members: &[MemberSpec],
    procs: &mut [Proc],
    wait: Duration,
) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .context("building an HTTP client")?;
    let deadline = Instant::now() + wait;
    for (m, p) in members.iter().zip(procs.iter_mut()) {
        let url = format!("{}/health", m.client_url);
        loop {
            let last = match http.get(&url).send().await {
                Ok(r) => {
                    let body = r.text().await.unwrap_or_default();
                    if body.replace(' ', "").contains("\"health\":\"true\"") {
                        break;
                    }
                    body
                }
                Err(e) => format!("{e:#}"),
            };
            p.check_alive()?;
            if Instant::now() >= deadline {
                bail!(
                    "{} was not healthy within {wait:?} (GET {url}: {last}); the end of {}:\n{}",
                    m.name,
                    p.log.display(),
                    p.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

#[cfg(feature = "etcd")]
pub use client::*;

#[cfg(feature = "etcd")]
mod client {
    use super::MemberSpec;
    use crate::workload::Putter;
    use anyhow::{anyhow, Context, Result};
    use etcd_client::{Client, ConnectOptions, KvClient};
    use std::time::Duration;

    fn options() -> ConnectOptions {
        ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            // The same per-request bound as the nvkv client's.
            .with_timeout(crate::nvkv::REQUEST_TIMEOUT)
    }

    /// The client URL of the member that is the leader now: the one whose status names itself as leader.
    pub async fn leader_url(members: &[MemberSpec]) -> Result<String> {
        let mut seen = Vec::new();
        for m in members {
            let mut c = Client::connect([m.client_url.as_str()], Some(options()))
                .await
                .with_context(|| format!("connecting to {}", m.client_url))?;
            let st = c
                .status()
                .await
                .with_context(|| format!("status of {}", m.client_url))?;
            let me = st.header().map(|h| h.member_id());
            if me == Some(st.leader()) {
                return Ok(m.client_url.clone());
            }
            seen.push((m.name.clone(), me, st.leader()));
        }
        Err(anyhow!("no etcd member says it is the leader: {seen:?}"))
    }

    /// One client connection: its own `Client` (its own gRPC channel, so its own HTTP/2 connection) on the
    /// given endpoints (one: the leader; three: etcd-client balances over them and followers forward).
    pub struct EtcdPutter {
        // Kept so the channel's owner lives as long as the KV handle that shares it.
        _client: Client,
        kv: KvClient,
    }

    // By hand: etcd-client's types do not implement Debug.
    impl std::fmt::Debug for EtcdPutter {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("EtcdPutter").finish_non_exhaustive()
        }
    }

    impl EtcdPutter {
        pub async fn connect(endpoints: &[String]) -> Result<Self> {
            let client = Client::connect(endpoints, Some(options()))
                .await
                .with_context(|| format!("connecting to etcd at {endpoints:?}"))?;
            let kv = client.kv_client();
            Ok(EtcdPutter {
                _client: client,
                kv,
            })
        }

        pub async fn get(&mut self, key: &str) -> Result<Option<String>> {
            let r = self.kv.get(key, None).await.context("etcd get")?;
            match r.kvs().first() {
                Some(kv) => Ok(Some(
                    kv.value_str().context("a non-UTF-8 value")?.to_string(),
                )),
                None => Ok(None),
            }
        }
    }

    impl Putter for EtcdPutter {
        async fn put(&mut self, key: String, value: String) -> Result<u32> {
            self.kv.put(key, value, None).await.context("etcd put")?;
            Ok(0)
        }
    }
}
