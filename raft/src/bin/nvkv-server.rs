//! One node of the replicated nvkv store: `nvkv-server --id 1 --listen 127.0.0.1:21001 --db node1.db`.
//! Start three, then `curl -d '{"members":{"1":"127.0.0.1:21001",...}}' 127.0.0.1:21001/cluster/init`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use nvkv::DurableLogDevice;
use nvkv_raft::server::{Node, NodeOptions};
use nvkv_raft::{StoreBackend, StoreOptions};

#[derive(Debug, Parser)]
#[command(
    about = "A node of the replicated nvkv store (openraft on nvkv), HTTP/JSON on one address"
)]
struct Args {
    /// This node's id (as the cluster's membership names it).
    #[arg(long)]
    id: u64,
    /// Address to serve on (clients and peers), for example 127.0.0.1:21001.
    #[arg(long)]
    listen: String,
    /// The node's database file (created when absent).
    #[arg(long, conflicts_with = "nvme")]
    db: Option<PathBuf>,
    /// Size of the database file when it is created.
    #[arg(long, default_value_t = 256 << 20)]
    db_size: u64,
    /// The node's database on an NVMe controller bound to vfio-pci (PCI address) instead of a file.
    #[arg(long)]
    nvme: Option<String>,
    /// Create an absent database file sparse instead of writing it full of zeros (quicker to create,
    /// slower durable writes until the log has gone round the file once).
    #[arg(long)]
    sparse: bool,
    /// Directory for snapshot files (default: beside the database file, or ./nvkv-snapshots-ID).
    #[arg(long)]
    snapshot_dir: Option<PathBuf>,
    /// nvkv's commit interval in milliseconds (how long a durable write waits for its cycle at most).
    #[arg(long, default_value_t = 1)]
    commit_interval_ms: u64,
    /// nvkv's durable log: `none`, `pmr` (the controller's PMR) or a path to persistent memory.
    #[arg(long, default_value = "none")]
    durable_log: String,
    /// Build a snapshot after this many applied entries.
    #[arg(long, default_value_t = 10_000)]
    snapshot_every: u64,
    /// Threads of the async runtime (HTTP, openraft); 1 runs it all on one thread.
    #[arg(long, default_value_t = 2)]
    runtime_threads: usize,
    /// Leader heartbeat interval, milliseconds.
    #[arg(long, default_value_t = 50)]
    heartbeat_ms: u64,
    /// Shortest election timeout, milliseconds (the longest is twice this).
    #[arg(long, default_value_t = 150)]
    election_ms: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NVKV_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let (backend, default_snap) = match (&args.db, &args.nvme) {
        (Some(p), None) => {
            let mut s = p.clone().into_os_string();
            s.push(".snapshots");
            (
                StoreBackend::File {
                    path: p.clone(),
                    size: args.db_size,
                },
                PathBuf::from(s),
            )
        }
        (None, Some(pci)) => (
            StoreBackend::Nvme { pci: pci.clone() },
            PathBuf::from(format!("nvkv-snapshots-{}", args.id)),
        ),
        _ => anyhow::bail!("give the database: --db FILE or --nvme PCI-ADDRESS"),
    };
    let mut store = StoreOptions::new(backend, args.snapshot_dir.clone().unwrap_or(default_snap));
    store.commit_interval = Duration::from_millis(args.commit_interval_ms.max(1));
    store.zero_fill_new_file = !args.sparse;
    store.durable_log = match args.durable_log.as_str() {
        "none" => DurableLogDevice::None,
        "pmr" => DurableLogDevice::Pmr,
        p => DurableLogDevice::Pmem(PathBuf::from(p)),
    };
    let mut opts = NodeOptions::new(args.id, args.listen.clone(), store);
    opts.snapshot_every = args.snapshot_every;
    opts.keep_behind_snapshot = (args.snapshot_every / 10).max(10);
    opts.heartbeat = Duration::from_millis(args.heartbeat_ms);
    opts.election_timeout = (
        Duration::from_millis(args.election_ms),
        Duration::from_millis(args.election_ms * 2),
    );

    let rt = match args.runtime_threads {
        0 | 1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
    .context("start the async runtime")?;
    rt.block_on(async move {
        let node = Node::start(opts).await.context("start the node")?;
        let stop = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return std::future::pending().await,
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        let id = args.id;
        let listen = args.listen.clone();
        node.serve(&args.listen, stop, move || {
            println!("nvkv-server {id} listening on {listen}")
        })
        .await
        .context("serve")?;
        anyhow::Ok(())
    })
}
