//! A client of the replicated store: sends each request to the leader it knows, follows "not the
//! leader" answers, and tries the other nodes while an election runs, all within a deadline.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::server::Status;
use crate::types::NodeId;

/// What a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No node answered as leader within the deadline (the last failure is given).
    #[error("no leader answered within {waited:?}: {last}")]
    NoLeader {
        /// How long it tried.
        waited: Duration,
        /// The last failure.
        last: String,
    },
    /// The node did not answer (connection refused, timed out).
    #[error("{addr} did not answer: {detail}")]
    Unreachable {
        /// The node.
        addr: String,
        /// Why.
        detail: String,
    },
    /// The server refused the request (bad input, or a failure it reported).
    #[error("{addr} answered {status}: {message}")]
    Refused {
        /// The node.
        addr: String,
        /// HTTP status.
        status: u16,
        /// Its error message.
        message: String,
    },
}

/// A client of a cluster.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    nodes: Vec<String>,
    leader: Mutex<Option<String>>,
    deadline: Duration,
}

fn unreachable(addr: &str, e: reqwest::Error) -> ClientError {
    ClientError::Unreachable {
        addr: addr.into(),
        detail: e.to_string(),
    }
}

/// A refusal with the server's `{"error": ...}` message.
fn refused(addr: &str, status: u16, body: &Value) -> ClientError {
    let message = body
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    ClientError::Refused {
        addr: addr.into(),
        status,
        message,
    }
}

/// The default for [`Client::with_exchange_timeout`].
const DEFAULT_EXCHANGE_TIMEOUT: Duration = Duration::from_secs(3);

fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .timeout(timeout)
        .build()
        // Building fails only when the TLS or resolver back end cannot start; the plain client has none.
        .unwrap_or_else(|_| reqwest::Client::new())
}

#[derive(Debug, Deserialize)]
struct NotLeader {
    leader_addr: Option<String>,
}

impl Client {
    /// A client of the nodes at `nodes` (host:port), with a 10 s deadline per request and a 3 s
    /// timeout per HTTP exchange.
    pub fn new(nodes: Vec<String>) -> Client {
        Client {
            http: http_client(DEFAULT_EXCHANGE_TIMEOUT),
            nodes,
            leader: Mutex::new(None),
            deadline: Duration::from_secs(10),
        }
    }

    /// Sets the deadline of each request.
    pub fn with_deadline(mut self, d: Duration) -> Client {
        self.deadline = d;
        self
    }

    /// Sets how long one HTTP exchange with one node may take before the client tries another: a node
    /// that stopped answering (a paused process, a partition) costs this much per request until an
    /// election moves the leadership away from it.
    pub fn with_exchange_timeout(mut self, t: Duration) -> Client {
        self.http = http_client(t);
        self
    }

    fn leader(&self) -> Option<String> {
        self.leader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_leader(&self, addr: Option<String>) {
        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = addr;
    }

    /// POSTs `body` to `route` on `addr` only (no leader following).
    pub async fn post_to<T: DeserializeOwned>(
        &self,
        addr: &str,
        route: &str,
        body: &Value,
    ) -> Result<T, ClientError> {
        let r = self
            .http
            .post(format!("http://{addr}{route}"))
            .json(body)
            .send()
            .await
            .map_err(|e| unreachable(addr, e))?;
        let status = r.status().as_u16();
        let v: Value = r.json().await.map_err(|e| ClientError::Refused {
            addr: addr.into(),
            status,
            message: format!("undecodable answer: {e}"),
        })?;
        if status != 200 {
            return Err(refused(addr, status, &v));
        }
        serde_json::from_value(v).map_err(|e| ClientError::Refused {
            addr: addr.into(),
            status,
            message: format!("unexpected answer: {e}"),
        })
    }

    /// POSTs to the leader, following redirections and elections until the deadline.
    pub async fn call<T: DeserializeOwned>(
        &self,
        route: &str,
        body: Value,
    ) -> Result<T, ClientError> {
        let start = Instant::now();
        let mut next = 0usize;
        let mut last;
        loop {
            let addr = match self.leader() {
                Some(a) => a,
                None => {
                    let a = self.nodes[next % self.nodes.len().max(1)].clone();
                    next += 1;
                    a
                }
            };
            let sent = self
                .http
                .post(format!("http://{addr}{route}"))
                .json(&body)
                .send()
                .await;
            match sent {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    match status {
                        200 => {
                            self.set_leader(Some(addr.clone()));
                            return serde_json::from_value(v).map_err(|e| ClientError::Refused {
                                addr,
                                status,
                                message: format!("unexpected answer: {e}"),
                            });
                        }
                        421 => {
                            let nl: Option<NotLeader> = serde_json::from_value(v).ok();
                            let to = nl.and_then(|n| n.leader_addr).filter(|a| *a != addr);
                            last = format!("{addr} is not the leader");
                            let pause = to.is_none();
                            self.set_leader(to);
                            if pause {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                        503 => {
                            last = format!("{addr}: no quorum in time");
                            self.set_leader(None);
                        }
                        _ => {
                            return Err(refused(&addr, status, &v));
                        }
                    }
                }
                Err(e) => {
                    last = format!("{addr}: {e}");
                    self.set_leader(None);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            if start.elapsed() > self.deadline {
                return Err(ClientError::NoLeader {
                    waited: start.elapsed(),
                    last,
                });
            }
        }
    }

    /// Forms the cluster from `members` (id → address), asking the first node.
    pub async fn init(&self, members: &BTreeMap<NodeId, String>) -> Result<(), ClientError> {
        let first = members.values().next().cloned().unwrap_or_default();
        let _: Value = self
            .post_to(&first, "/cluster/init", &json!({ "members": members }))
            .await?;
        Ok(())
    }

    /// One node's status.
    pub async fn status(&self, addr: &str) -> Result<Status, ClientError> {
        let r = self
            .http
            .get(format!("http://{addr}/cluster/status"))
            .send()
            .await
            .map_err(|e| unreachable(addr, e))?;
        r.json().await.map_err(|e| ClientError::Refused {
            addr: addr.into(),
            status: 0,
            message: e.to_string(),
        })
    }

    /// Stores `value` under `key`; the entry's log index.
    pub async fn put(&self, key: &str, value: &str) -> Result<u64, ClientError> {
        let v: Value = self
            .call("/kv/put", json!({ "key": key, "value": value }))
            .await?;
        Ok(v.get("index").and_then(Value::as_u64).unwrap_or(0))
    }

    /// Deletes `key`.
    pub async fn delete(&self, key: &str) -> Result<u64, ClientError> {
        let v: Value = self.call("/kv/delete", json!({ "key": key })).await?;
        Ok(v.get("index").and_then(Value::as_u64).unwrap_or(0))
    }

    /// Compare-and-swap; whether it applied, and the value after.
    pub async fn cas(
        &self,
        key: &str,
        expected: Option<&str>,
        value: Option<&str>,
    ) -> Result<(bool, Option<String>), ClientError> {
        #[derive(Deserialize)]
        struct R {
            ok: bool,
            current: Option<String>,
        }
        let r: R = self
            .call(
                "/kv/cas",
                json!({ "key": key, "expected": expected, "value": value }),
            )
            .await?;
        Ok((r.ok, r.current))
    }

    /// A linearizable read through the leader.
    pub async fn get(&self, key: &str) -> Result<Option<String>, ClientError> {
        #[derive(Deserialize)]
        struct R {
            value: Option<String>,
        }
        let r: R = self.call("/kv/get", json!({ "key": key })).await?;
        Ok(r.value)
    }

    /// A read of `addr`'s own state (may be stale).
    pub async fn get_stale(&self, addr: &str, key: &str) -> Result<Option<String>, ClientError> {
        #[derive(Deserialize)]
        struct R {
            value: Option<String>,
        }
        let r: R = self
            .post_to(addr, "/kv/get", &json!({ "key": key, "stale": true }))
            .await?;
        Ok(r.value)
    }

    /// Up to `limit` pairs in `[start, end)` from `addr`'s own state (stale) or, with `addr` None,
    /// linearizably through the leader.
    pub async fn scan(
        &self,
        addr: Option<&str>,
        start: &str,
        end: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, ClientError> {
        #[derive(Deserialize)]
        struct R {
            pairs: Vec<(String, String)>,
        }
        let r: R = match addr {
            Some(a) => {
                self.post_to(
                    a,
                    "/kv/scan",
                    &json!({ "start": start, "end": end, "limit": limit, "stale": true }),
                )
                .await?
            }
            None => {
                self.call(
                    "/kv/scan",
                    json!({ "start": start, "end": end, "limit": limit }),
                )
                .await?
            }
        };
        Ok(r.pairs)
    }
}
