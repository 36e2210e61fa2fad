//! A node of the replicated store: its Raft, its storage, and the HTTP/JSON routes for clients and for
//! the other nodes' RPCs, served on one address.
//!
//! HTTP/JSON because it is what openraft's own example servers and etcd's JSON gateway speak, it needs
//! no code generation, and `curl` can drive it; the Raft RPCs on the same port use bincode bodies.
//!
//! Client routes (JSON bodies; keys and values are UTF-8 strings):
//!
//! | route | body | answer |
//! | --- | --- | --- |
//! | `POST /cluster/init` | `{"members": {"1": "127.0.0.1:21001", ...}}` | `{}` |
//! | `GET /cluster/status` | | `{"id", "leader", "term", "last_applied", "members"}` |
//! | `POST /cluster/add-learner` | `{"id": 4, "addr": "..."}` | `{"index"}` |
//! | `POST /cluster/change-membership` | `{"members": [1, 2, 3]}` | `{"index"}` |
//! | `POST /kv/put` | `{"key", "value"}` | `{"index"}` once committed on a quorum and applied |
//! | `POST /kv/delete` | `{"key"}` | `{"index"}` |
//! | `POST /kv/cas` | `{"key", "expected": null or "v", "value": null or "v"}` | `{"ok", "current", "index"}` |
//! | `POST /kv/get` | `{"key", "stale": false}` | `{"value": "v" or null}` |
//! | `POST /kv/scan` | `{"start", "end": null or "k", "limit", "stale": false}` | `{"pairs": [["k", "v"], ...]}` |
//!
//! Reads are linearizable (the leader confirms its leadership with a quorum first) unless `stale` is
//! true, which any node answers from its own state. A write or linearizable read sent to a node that
//! is not the leader gets HTTP 421 `{"error": "not the leader", "leader_id", "leader_addr"}` (null
//! during an election). Other failures: 400 for bad input, 503 when no quorum answers in time, 500
//! otherwise, each `{"error": "..."}`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use openraft::error::{ForwardToLeader, RaftError};
use openraft::BasicNode;
use serde::{Deserialize, Serialize};

use crate::db_thread::DbThread;
use crate::keyspace::MAX_USER_KEY;
use crate::network::{Network, ROUTE_APPEND, ROUTE_SNAPSHOT, ROUTE_VOTE};
use crate::state_machine::{read, read_range};
use crate::store::{NodeStore, StoreOptions};
use crate::types::{Command, NodeId, Raft};
use crate::StoreError;

/// Largest value a client may store (a log entry holding it must fit nvkv's write buffer).
pub const MAX_USER_VALUE: usize = 64 << 10;

/// How a node runs.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// This node's id.
    pub id: NodeId,
    /// The address it serves on (and that peers reach it at).
    pub addr: String,
    /// Its storage.
    pub store: StoreOptions,
    /// Leader heartbeat interval.
    pub heartbeat: Duration,
    /// Election timeout range (a follower that hears no leader for a random time in it stands).
    pub election_timeout: (Duration, Duration),
    /// A snapshot is built after this many applied entries since the last.
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot (for followers slightly behind).
    pub keep_behind_snapshot: u64,
    /// Longest a client request waits for a quorum.
    pub request_timeout: Duration,
}

impl NodeOptions {
    /// Defaults for a cluster on one network: 50 ms heartbeats, 150–300 ms elections, a snapshot
    /// every 10,000 entries.
    pub fn new(id: NodeId, addr: impl Into<String>, store: StoreOptions) -> NodeOptions {
        NodeOptions {
            id,
            addr: addr.into(),
            store,
            heartbeat: Duration::from_millis(50),
            election_timeout: (Duration::from_millis(150), Duration::from_millis(300)),
            snapshot_every: 10_000,
            keep_behind_snapshot: 1_000,
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// What starting or running a node can fail with.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Its storage.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// openraft refused the configuration.
    #[error("raft configuration: {0}")]
    Config(String),
    /// openraft stopped.
    #[error("raft: {0}")]
    Raft(String),
    /// The listening socket.
    #[error("serve on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A running node.
#[derive(Debug, Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

struct NodeInner {
    id: NodeId,
    raft: Raft,
    db: DbThread,
    timeout: Duration,
    store: std::sync::Mutex<Option<NodeStore>>,
}

impl Node {
    /// Opens the node's storage and starts its Raft (not yet serving).
    pub async fn start(opts: NodeOptions) -> Result<Node, NodeError> {
        let (store, log, sm) = NodeStore::open(opts.store.clone()).await?;
        let config = openraft::Config {
            cluster_name: "nvkv".into(),
            heartbeat_interval: opts.heartbeat.as_millis() as u64,
            election_timeout_min: opts.election_timeout.0.as_millis() as u64,
            election_timeout_max: opts.election_timeout.1.as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(opts.snapshot_every),
            max_in_snapshot_log_to_keep: opts.keep_behind_snapshot,
            install_snapshot_timeout: 10_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| NodeError::Config(e.to_string()))?;
        let raft = Raft::new(opts.id, Arc::new(config), Network::new(), log, sm)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        let db = store.thread().clone();
        Ok(Node {
            inner: Arc::new(NodeInner {
                id: opts.id,
                raft,
                db,
                timeout: opts.request_timeout,
                store: std::sync::Mutex::new(Some(store)),
            }),
        })
    }

    /// The node's Raft.
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// The routes: Raft RPCs and the client API.
    pub fn router(&self) -> Router {
        Router::new()
            .route(ROUTE_APPEND, post(raft_append))
            .route(ROUTE_VOTE, post(raft_vote))
            .route(ROUTE_SNAPSHOT, post(raft_snapshot))
            .route("/cluster/init", post(cluster_init))
            .route("/cluster/status", get(cluster_status))
            .route("/cluster/add-learner", post(cluster_add_learner))
            .route(
                "/cluster/change-membership",
                post(cluster_change_membership),
            )
            .route("/kv/put", post(kv_put))
            .route("/kv/delete", post(kv_delete))
            .route("/kv/cas", post(kv_cas))
            .route("/kv/get", post(kv_get))
            .route("/kv/scan", post(kv_scan))
            .with_state(self.clone())
    }

    /// Serves on `addr` until `stop` resolves, then stops Raft and closes the database.
    pub async fn serve(
        &self,
        addr: &str,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
        on_listening: impl FnOnce(),
    ) -> Result<(), NodeError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| NodeError::Listen {
                addr: addr.into(),
                source,
            })?;
        on_listening();
        axum::serve(listener, self.router())
            .with_graceful_shutdown(stop)
            .await
            .map_err(|source| NodeError::Listen {
                addr: addr.into(),
                source,
            })?;
        self.shutdown().await
    }

    /// Stops Raft and closes the database cleanly.
    pub async fn shutdown(&self) -> Result<(), NodeError> {
        self.inner
            .raft
            .shutdown()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        let store = self
            .inner
            .store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match store {
            Some(s) => tokio::task::spawn_blocking(move || s.close())
                .await
                .map_err(|e| NodeError::Raft(e.to_string()))?
                .map_err(NodeError::from),
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for NodeInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.id).finish()
    }
}

/// An answer with an HTTP status and a JSON `{"error": ...}` body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: serde_json::Value,
}

impl ApiError {
    fn new(status: StatusCode, msg: impl ToString) -> ApiError {
        ApiError {
            status,
            body: serde_json::json!({ "error": msg.to_string() }),
        }
    }

    fn bad(msg: impl ToString) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, msg)
    }

    fn internal(msg: impl ToString) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, msg)
    }

    fn not_leader(f: &ForwardToLeader<NodeId, BasicNode>) -> ApiError {
        ApiError {
            status: StatusCode::MISDIRECTED_REQUEST,
            body: serde_json::json!({
                "error": "not the leader",
                "leader_id": f.leader_id,
                "leader_addr": f.leader_node.as_ref().map(|n| n.addr.clone()),
            }),
        }
    }

    fn raft<E>(e: RaftError<NodeId, E>) -> ApiError
    where
        E: std::error::Error + openraft::TryAsRef<ForwardToLeader<NodeId, BasicNode>>,
    {
        match e.forward_to_leader() {
            Some(f) => ApiError::not_leader(f),
            None => ApiError::internal(e),
        }
    }

    fn timeout() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no quorum answered in time",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

async fn bounded<T>(node: &Node, f: impl std::future::Future<Output = T>) -> Result<T, ApiError> {
    tokio::time::timeout(node.inner.timeout, f)
        .await
        .map_err(|_| ApiError::timeout())
}

fn key_bytes(key: &str) -> Result<Vec<u8>, ApiError> {
    if key.is_empty() {
        return Err(ApiError::bad("empty key"));
    }
    if key.len() > MAX_USER_KEY {
        return Err(ApiError::bad(format!(
            "key of {} bytes exceeds the limit of {MAX_USER_KEY}",
            key.len()
        )));
    }
    Ok(key.as_bytes().to_vec())
}

fn value_bytes(v: &str) -> Result<Vec<u8>, ApiError> {
    if v.len() > MAX_USER_VALUE {
        return Err(ApiError::bad(format!(
            "value of {} bytes exceeds the limit of {MAX_USER_VALUE}",
            v.len()
        )));
    }
    Ok(v.as_bytes().to_vec())
}

fn text(v: Vec<u8>) -> String {
    String::from_utf8(v).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

// ---- Raft RPCs ----

fn rpc_answer<T: Serialize>(r: &T) -> Response {
    match bincode::serialize(r) {
        Ok(b) => (StatusCode::OK, b).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

async fn raft_append(State(node): State<Node>, body: Bytes) -> Response {
    match bincode::deserialize(&body) {
        Ok(req) => rpc_answer(&node.inner.raft.append_entries(req).await),
        Err(e) => ApiError::bad(e).into_response(),
    }
}

async fn raft_vote(State(node): State<Node>, body: Bytes) -> Response {
    match bincode::deserialize(&body) {
        Ok(req) => rpc_answer(&node.inner.raft.vote(req).await),
        Err(e) => ApiError::bad(e).into_response(),
    }
}

async fn raft_snapshot(State(node): State<Node>, body: Bytes) -> Response {
    match bincode::deserialize(&body) {
        Ok(req) => rpc_answer(&node.inner.raft.install_snapshot(req).await),
        Err(e) => ApiError::bad(e).into_response(),
    }
}

// ---- cluster ----

#[derive(Debug, Deserialize)]
struct InitRequest {
    members: BTreeMap<NodeId, String>,
}

async fn cluster_init(
    State(node): State<Node>,
    Json(req): Json<InitRequest>,
) -> ApiResult<serde_json::Value> {
    if req.members.is_empty() {
        return Err(ApiError::bad("no members"));
    }
    let members: BTreeMap<NodeId, BasicNode> = req
        .members
        .into_iter()
        .map(|(id, addr)| (id, BasicNode { addr }))
        .collect();
    bounded(&node, node.inner.raft.initialize(members))
        .await?
        .map_err(ApiError::internal)?;
    Ok(Json(serde_json::json!({})))
}

/// The answer of `GET /cluster/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// Its current term.
    pub term: u64,
    /// Index of the last entry its state machine applied.
    pub last_applied: Option<u64>,
    /// Index of the last entry in its log.
    pub last_log: Option<u64>,
    /// Voters and learners with their addresses.
    pub members: BTreeMap<NodeId, String>,
    /// Voters only.
    pub voters: Vec<NodeId>,
}

async fn cluster_status(State(node): State<Node>) -> Json<Status> {
    let m = node.inner.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    Json(Status {
        id: node.inner.id,
        leader: m.current_leader,
        term: m.current_term,
        last_applied: m.last_applied.map(|l| l.index),
        last_log: m.last_log_index,
        members: membership
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect(),
        voters: membership.voter_ids().collect(),
    })
}

#[derive(Debug, Deserialize)]
struct AddLearner {
    id: NodeId,
    addr: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Written {
    index: u64,
}

async fn cluster_add_learner(
    State(node): State<Node>,
    Json(req): Json<AddLearner>,
) -> ApiResult<Written> {
    let r = bounded(
        &node,
        node.inner
            .raft
            .add_learner(req.id, BasicNode { addr: req.addr }, true),
    )
    .await?
    .map_err(ApiError::raft)?;
    Ok(Json(Written {
        index: r.log_id.index,
    }))
}

#[derive(Debug, Deserialize)]
struct ChangeMembership {
    members: BTreeSet<NodeId>,
}

async fn cluster_change_membership(
    State(node): State<Node>,
    Json(req): Json<ChangeMembership>,
) -> ApiResult<Written> {
    let r = bounded(&node, node.inner.raft.change_membership(req.members, false))
        .await?
        .map_err(ApiError::raft)?;
    Ok(Json(Written {
        index: r.log_id.index,
    }))
}

// ---- key-value ----

#[derive(Debug, Deserialize)]
struct PutRequest {
    key: String,
    value: String,
}

#[derive(Debug, Deserialize)]
struct KeyRequest {
    key: String,
    #[serde(default)]
    stale: bool,
}

#[derive(Debug, Deserialize)]
struct CasRequest {
    key: String,
    expected: Option<String>,
    value: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ScanRequest {
    #[serde(default)]
    start: String,
    end: Option<String>,
    #[serde(default = "default_limit")]
    limit: usize,
    #[serde(default)]
    stale: bool,
}

fn default_limit() -> usize {
    100
}

/// The largest scan answered at once.
const MAX_SCAN: usize = 10_000;

async fn write(node: &Node, cmd: Command) -> Result<(u64, crate::CommandResult), ApiError> {
    let r = bounded(node, node.inner.raft.client_write(cmd))
        .await?
        .map_err(ApiError::raft)?;
    Ok((r.log_id.index, r.data))
}

async fn kv_put(State(node): State<Node>, Json(req): Json<PutRequest>) -> ApiResult<Written> {
    let cmd = Command::Put {
        key: key_bytes(&req.key)?,
        value: value_bytes(&req.value)?,
    };
    let (index, _) = write(&node, cmd).await?;
    Ok(Json(Written { index }))
}

async fn kv_delete(State(node): State<Node>, Json(req): Json<KeyRequest>) -> ApiResult<Written> {
    let (index, _) = write(
        &node,
        Command::Delete {
            key: key_bytes(&req.key)?,
        },
    )
    .await?;
    Ok(Json(Written { index }))
}

async fn kv_cas(
    State(node): State<Node>,
    Json(req): Json<CasRequest>,
) -> ApiResult<serde_json::Value> {
    let cmd = Command::Cas {
        key: key_bytes(&req.key)?,
        expected: req.expected.as_deref().map(value_bytes).transpose()?,
        value: req.value.as_deref().map(value_bytes).transpose()?,
    };
    let (index, r) = write(&node, cmd).await?;
    Ok(Json(
        serde_json::json!({ "ok": r.ok, "current": r.current.map(text), "index": index }),
    ))
}

async fn linearize(node: &Node, stale: bool) -> Result<(), ApiError> {
    if !stale {
        bounded(node, node.inner.raft.ensure_linearizable())
            .await?
            .map_err(ApiError::raft)?;
    }
    Ok(())
}

async fn kv_get(
    State(node): State<Node>,
    Json(req): Json<KeyRequest>,
) -> ApiResult<serde_json::Value> {
    let key = key_bytes(&req.key)?;
    linearize(&node, req.stale).await?;
    let v = read(&node.inner.db, &key)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(serde_json::json!({ "value": v.map(text) })))
}

async fn kv_scan(
    State(node): State<Node>,
    Json(req): Json<ScanRequest>,
) -> ApiResult<serde_json::Value> {
    let limit = req.limit.min(MAX_SCAN);
    linearize(&node, req.stale).await?;
    let end = req.end.as_deref().map(str::as_bytes);
    let pairs = read_range(&node.inner.db, req.start.as_bytes(), end, limit)
        .await
        .map_err(ApiError::internal)?;
    let pairs: Vec<(String, String)> = pairs.into_iter().map(|(k, v)| (text(k), text(v))).collect();
    Ok(Json(serde_json::json!({ "pairs": pairs })))
}
