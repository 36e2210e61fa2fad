//! nvkv-raft-bench: a 3-node nvkv-server cluster (raft/) against a 3-member etcd 3.4 cluster, both on
//! 127.0.0.1 of this machine, with the same workload of replicated durable puts. See README.md.

mod etcd;
mod nvkv;
mod procs;
mod report;
mod vm;
mod workload;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use nvkv_bench::conditions::{cpu_model, timestamp};
use procs::{DirGuard, Proc};
use report::{Conditions, Report, System, Turn};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use workload::{Putter, Timing};

#[derive(Debug, Parser)]
#[command(
    name = "nvkv-raft-bench",
    about = "A 3-node nvkv-server cluster against a 3-member etcd 3.4 cluster on loopback: replicated durable puts"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start both clusters, alternate their turns over the rounds, print the table, write report.json.
    Run(Box<RunArgs>),
    /// The same inside the test VM: each nvkv node on its own emulated NVMe controller (nvkv's driver,
    /// the durable log in its PMR), etcd on ext4 on another (the kernel's driver).
    Vm(vm::VmArgs),
    /// In the guest (started by `vm`): mount etcd's file system and run.
    #[command(hide = true)]
    VmGuest {
        #[arg(last = true)]
        run: Vec<String>,
    },
}

/// Parses `run`'s arguments from a full command line (the guest builds one).
fn parse_run(argv: Vec<String>) -> Result<RunArgs> {
    match Cli::try_parse_from(argv)?.cmd {
        Cmd::Run(a) => Ok(*a),
        _ => bail!("not a run command line"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Endpoints {
    /// Every etcd client connects to the leader's client URL only (as the nvkv clients talk to the leader).
    Leader,
    /// Every etcd client gets all three client URLs; etcd-client balances, followers forward to the leader.
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Only {
    Etcd,
    Nvkv,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// A smoke run: 1 round, 1 s timed per turn (explicit --rounds / --duration-s still win).
    #[arg(long)]
    quick: bool,
    /// Rounds of alternating turns (default 3; 1 with --quick).
    #[arg(long)]
    rounds: Option<usize>,
    /// Timed seconds per turn, after the warm-up (default 5; 1 with --quick).
    #[arg(long)]
    duration_s: Option<f64>,
    /// Warm-up seconds per turn (not measured).
    #[arg(long, default_value_t = 0.5)]
    warmup_s: f64,
    /// Client counts, each a turn per system per round.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 16])]
    clients: Vec<usize>,
    /// Keys are drawn uniformly from this many.
    #[arg(long, default_value_t = 100_000)]
    key_space: u64,
    /// Output dir: logs, report.json and (without --tmpfs) both systems' data dirs
    /// [default: /tmp/nvkv-raft-bench/<UTC time>].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Put both systems' data under /dev/shm (fsync costs nothing: compares the software, not the disk).
    #[arg(long)]
    tmpfs: bool,
    /// The nvkv-server binary [default: nvkv-server next to this executable].
    #[arg(long)]
    server: Option<PathBuf>,
    /// The etcd binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// Which etcd client URLs each etcd client connects to.
    #[arg(long, value_enum, default_value_t = Endpoints::Leader)]
    etcd_endpoints: Endpoints,
    /// Run one system only (nvkv alone needs no `etcd` feature).
    #[arg(long, value_enum)]
    only: Option<Only>,
    /// nvkv-server's --db-size (bytes) [default: the server's, 256 MiB].
    #[arg(long)]
    db_size: Option<u64>,
    /// nvkv-server's --commit-interval-ms [default: the server's].
    #[arg(long)]
    commit_interval_ms: Option<u64>,
    /// Ports: nvkv nodes base+1..3, etcd clients base+11..13, etcd peers base+21..23 (all on 127.0.0.1).
    #[arg(long, default_value_t = 21000)]
    port_base: u16,
    /// Worker threads of the bench's client runtime [default: the machine's cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Keep the data dirs (otherwise removed at the end, also under /dev/shm).
    #[arg(long)]
    keep_data: bool,
    /// Bound on each start-up wait (members healthy, nodes listening, a leader).
    #[arg(long, default_value_t = 30)]
    startup_timeout_s: u64,
    /// The three nvkv nodes' databases on these NVMe controllers (PCI addresses, bound to vfio-pci)
    /// instead of files in the data dir (snapshots stay in the data dir).
    #[arg(long, value_delimiter = ',', num_args = 1)]
    nvme: Vec<String>,
    /// nvkv-server's --durable-log (`none`, `pmr`, or a path) [default: the server's, none].
    #[arg(long)]
    durable_log: Option<String>,
    /// One more argument for every nvkv-server (repeat it), e.g. `--server-arg=--election-ms=1000`.
    #[arg(long, allow_hyphen_values = true)]
    server_arg: Vec<String>,
    /// One more argument for every etcd member (repeat it), e.g. `--etcd-arg=--election-timeout=5000`.
    #[arg(long, allow_hyphen_values = true)]
    etcd_arg: Vec<String>,
}

/// The run as resolved from the arguments.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    rounds: usize,
    timing_warmup_s: f64,
    timing_duration_s: f64,
    clients: Vec<usize>,
    systems: Vec<System>,
    nvkv_ports: [u16; 3],
    etcd_client_ports: [u16; 3],
    etcd_peer_ports: [u16; 3],
}

impl Plan {
    fn from_args(a: &RunArgs) -> Result<Plan> {
        let rounds = a.rounds.unwrap_or(if a.quick { 1 } else { 3 });
        let duration = a.duration_s.unwrap_or(if a.quick { 1.0 } else { 5.0 });
        if rounds == 0 {
            bail!("--rounds must be at least 1");
        }
        if !(duration > 0.0 && duration <= 3600.0 && (0.0..=600.0).contains(&a.warmup_s)) {
            bail!("--duration-s must be in (0, 3600] and --warmup-s in [0, 600]");
        }
        if a.clients.is_empty() || a.clients.iter().any(|&c| c == 0 || c > 1024) {
            bail!("--clients must list counts from 1 to 1024");
        }
        if a.key_space == 0 {
            bail!("--key-space must be at least 1");
        }
        let b = a.port_base;
        if !(1024..=u16::MAX - 30).contains(&b) {
            bail!("--port-base must be in 1024..={}", u16::MAX - 30);
        }
        let systems = match a.only {
            None => vec![System::Etcd, System::Nvkv],
            Some(Only::Etcd) => vec![System::Etcd],
            Some(Only::Nvkv) => vec![System::Nvkv],
        };
        Ok(Plan {
            rounds,
            timing_warmup_s: a.warmup_s,
            timing_duration_s: duration,
            clients: a.clients.clone(),
            systems,
            nvkv_ports: [b + 1, b + 2, b + 3],
            etcd_client_ports: [b + 11, b + 12, b + 13],
            etcd_peer_ports: [b + 21, b + 22, b + 23],
        })
    }

    fn timing(&self) -> Timing {
        Timing {
            warmup: Duration::from_secs_f64(self.timing_warmup_s),
            duration: Duration::from_secs_f64(self.timing_duration_s),
        }
    }

    /// The turns of one round (1-based), in order: for each client count, both systems, etcd first in odd
    /// rounds and nvkv first in even ones, so neither always runs on the warmer (or more fragmented) machine.
    fn round_order(&self, round: usize) -> Vec<(usize, System)> {
        let mut out = Vec::new();
        for &c in &self.clients {
            let mut pair = [System::Etcd, System::Nvkv];
            if round % 2 == 0 {
                pair.reverse();
            }
            for s in pair {
                if self.systems.contains(&s) {
                    out.push((c, s));
                }
            }
        }
        out
    }
}

/// `df -T PATH`'s data line and its type column.
fn df_t(path: &Path) -> (String, String) {
    let out = std::process::Command::new("df")
        .arg("-T")
        .arg(path)
        .output();
    let line = out
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .nth(1)
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_else(|| "unknown (df -T failed)".into());
    let fs_type = line.split(' ').nth(1).unwrap_or("unknown").to_string();
    (line, fs_type)
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn cpu_of(procs: &[Proc]) -> Option<f64> {
    procs.iter().map(Proc::cpu_seconds).sum()
}

fn self_cpu() -> Option<f64> {
    procs::cpu_seconds_of("/proc/self/stat")
}

/// Everything a turn needs that lives for the whole run.
struct Env<'a> {
    rt: &'a tokio::runtime::Runtime,
    plan: &'a Plan,
    key_space: u64,
    etcd_members: Vec<etcd::MemberSpec>,
    // Read only by the etcd client code, which the `etcd` feature brings.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    etcd_endpoints: Vec<String>,
    etcd_procs: Vec<Proc>,
    nvkv_nodes: Vec<nvkv::NodeSpec>,
    nvkv_procs: Vec<Proc>,
}

impl Env<'_> {
    /// Both clusters' members must still be there: a member that died would turn the rest of the run into a
    /// measurement of a 2-node cluster.
    fn check_alive(&mut self) -> Result<()> {
        for p in self.etcd_procs.iter_mut().chain(self.nvkv_procs.iter_mut()) {
            p.check_alive()?;
        }
        Ok(())
    }

    fn procs_of(&self, s: System) -> &[Proc] {
        match s {
            System::Etcd => &self.etcd_procs,
            System::Nvkv => &self.nvkv_procs,
        }
    }

    fn turn(
        &mut self,
        system: System,
        clients: usize,
        round: usize,
        position: usize,
    ) -> Result<Turn> {
        self.check_alive()?;
        // The same keys for both systems in the same round and client count.
        let seed = (round as u64) << 32 | clients as u64;
        let timing = self.plan.timing();
        let key_space = self.key_space;
        let other = match system {
            System::Etcd => System::Nvkv,
            System::Nvkv => System::Etcd,
        };
        let r = match system {
            System::Nvkv => {
                let wait = Duration::from_secs(10);
                let leader = self
                    .rt
                    .block_on(nvkv::wait_leader(&self.nvkv_nodes, wait))?;
                let putters = (0..clients)
                    .map(|_| nvkv::NvkvPutter::new(&leader))
                    .collect::<Result<Vec<_>>>()?;
                self.measure(system, other, putters, timing, key_space, seed)?
            }
            System::Etcd => {
                let putters = self.etcd_putters(clients)?;
                self.measure(system, other, putters, timing, key_space, seed)?
            }
        };
        let (res, cpu_active, cpu_idle, cpu_self, wall) = r;
        let ops_per_s = res.ops_per_s();
        let t = Turn {
            system,
            clients,
            round,
            position,
            ops: res.ops,
            elapsed_s: res.elapsed_s,
            ops_per_s,
            p50_us: res.quantile_us(0.5),
            p90_us: res.quantile_us(0.9),
            p99_us: res.quantile_us(0.99),
            p999_us: res.quantile_us(0.999),
            max_us: res.hist.max() as f64 / 1000.0,
            mean_us: res.hist.mean() / 1000.0,
            errors: res.errors,
            retries: res.retries,
            first_error: res.first_error.clone(),
            server_cpu_us_per_op: cpu_active.map(|c| c * 1e6 / res.ops as f64),
            idle_cluster_cpu_cores: cpu_idle.map(|c| c / wall),
            bench_cpu_cores: cpu_self.map(|c| c / wall),
        };
        eprintln!(
            "  round {round} {:<4} {clients:>2} clients: {:>8.0} ops/s  p50 {:>7.0} µs  p99 {:>7.0} µs{}",
            system.name(),
            t.ops_per_s,
            t.p50_us,
            t.p99_us,
            if t.errors > 0 {
                format!(
                    "  {} errors (first: {})",
                    t.errors,
                    t.first_error.as_deref().unwrap_or("")
                )
            } else {
                String::new()
            }
        );
        Ok(t)
    }

    #[cfg(feature = "etcd")]
    fn etcd_putters(&self, clients: usize) -> Result<Vec<etcd::EtcdPutter>> {
        let eps = self.etcd_endpoints.clone();
        self.rt.block_on(async move {
            let mut v = Vec::with_capacity(clients);
            for _ in 0..clients {
                v.push(etcd::EtcdPutter::connect(&eps).await?);
            }
            Ok(v)
        })
    }

    #[cfg(not(feature = "etcd"))]
    fn etcd_putters(&self, _clients: usize) -> Result<Vec<nvkv::NvkvPutter>> {
        // Unreachable in practice: run() refuses an etcd turn without the feature before starting anything.
        bail!("built without the `etcd` feature: {NO_ETCD_FEATURE}")
    }

    /// Runs the turn with the CPU counters read around it: (result, measured cluster's CPU s, idle cluster's
    /// CPU s, the bench's own CPU s, wall s).
    #[allow(clippy::type_complexity)]
    fn measure<P: Putter>(
        &self,
        system: System,
        other: System,
        putters: Vec<P>,
        timing: Timing,
        key_space: u64,
        seed: u64,
    ) -> Result<(
        workload::TurnResult,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        f64,
    )> {
        let a0 = cpu_of(self.procs_of(system));
        let i0 = cpu_of(self.procs_of(other));
        let s0 = self_cpu();
        let t0 = Instant::now();
        let res = self
            .rt
            .block_on(workload::run_turn(putters, timing, key_space, seed))
            .with_context(|| format!("the {} turn", system.name()))?;
        let wall = t0.elapsed().as_secs_f64();
        let diff = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
        let idle = if self.procs_of(other).is_empty() {
            None
        } else {
            diff(i0, cpu_of(self.procs_of(other)))
        };
        Ok((
            res,
            diff(a0, cpu_of(self.procs_of(system))),
            idle,
            diff(s0, self_cpu()),
            wall,
        ))
    }
}

const NO_ETCD_FEATURE: &str =
    "rebuild with `--features etcd` (needs protoc: run `bash bench/raft/setup.sh`), \
                               or run the nvkv turns alone with `--only nvkv`";

/// One put and a linearizable get through each system before measuring: a cluster that acknowledges puts it
/// does not keep would otherwise only look fast.
fn smoke_check(env: &mut Env<'_>) -> Result<()> {
    let key = "nvkv-raft-bench/smoke";
    let value = format!("started {}", timestamp());
    if !env.nvkv_nodes.is_empty() && !env.nvkv_procs.is_empty() {
        let nodes = env.nvkv_nodes.clone();
        let v = value.clone();
        env.rt.block_on(async move {
            let leader = nvkv::wait_leader(&nodes, Duration::from_secs(10)).await?;
            let mut p = nvkv::NvkvPutter::new(&leader)?;
            p.put(key.to_string(), v.clone()).await?;
            let got = p.get(key).await?;
            if got.as_deref() != Some(v.as_str()) {
                bail!("nvkv: put {key:?} = {v:?}, then get answered {got:?}");
            }
            Ok(())
        })?;
    }
    #[cfg(feature = "etcd")]
    if !env.etcd_procs.is_empty() {
        let eps = env.etcd_endpoints.clone();
        env.rt.block_on(async move {
            let mut p = etcd::EtcdPutter::connect(&eps).await?;
            p.put(key.to_string(), value.clone()).await?;
            let got = p.get(key).await?;
            if got.as_deref() != Some(value.as_str()) {
                bail!("etcd: put {key:?} = {value:?}, then get answered {got:?}");
            }
            Ok(())
        })?;
    }
    Ok(())
}

fn run(a: RunArgs) -> Result<()> {
    let plan = Plan::from_args(&a)?;
    let want_etcd = plan.systems.contains(&System::Etcd);
    let want_nvkv = plan.systems.contains(&System::Nvkv);
    if want_etcd && !cfg!(feature = "etcd") {
        bail!("this build has no etcd client: {NO_ETCD_FEATURE}");
    }
    let stamp = timestamp();
    let out_dir = a
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/tmp/nvkv-raft-bench").join(&stamp));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let data_root = if a.tmpfs {
        let (_, t) = df_t(Path::new("/dev/shm"));
        if t != "tmpfs" {
            bail!("--tmpfs: /dev/shm is {t}, not tmpfs");
        }
        PathBuf::from(format!(
            "/dev/shm/nvkv-raft-bench-{stamp}-{}",
            std::process::id()
        ))
    } else {
        out_dir.join("data")
    };
    if data_root.exists() {
        bail!(
            "{} exists already (a previous run's data?): remove it or pick another --dir",
            data_root.display()
        );
    }
    std::fs::create_dir_all(&data_root)
        .with_context(|| format!("creating {}", data_root.display()))?;
    // Declared before the processes, so it is dropped (the data removed) after they are stopped.
    let _data_guard = DirGuard {
        path: data_root.clone(),
        keep: a.keep_data,
    };
    let (data_fs, data_fs_type) = df_t(&data_root);
    let mut notes = Vec::new();
    if !a.tmpfs && data_fs_type == "tmpfs" {
        let n = format!(
            "the data dir {} is on tmpfs although --tmpfs was not given: fsync is free for both",
            data_root.display()
        );
        eprintln!("nvkv-raft-bench: warning: {n}");
        notes.push(n);
    }

    let etcd_version = if want_etcd {
        Some(etcd::version(&a.etcd)?)
    } else {
        None
    };
    let server = if want_nvkv {
        let s = match &a.server {
            Some(s) => s.clone(),
            None => nvkv::default_server()?,
        };
        nvkv::check_server(&s)?;
        Some(s)
    } else {
        None
    };
    for p in plan
        .nvkv_ports
        .iter()
        .filter(|_| want_nvkv)
        .chain(plan.etcd_client_ports.iter().filter(|_| want_etcd))
        .chain(plan.etcd_peer_ports.iter().filter(|_| want_etcd))
    {
        procs::check_port_free(*p)?;
    }

    let threads = a.threads.unwrap_or_else(cores).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("building the client runtime")?;
    let startup = Duration::from_secs(a.startup_timeout_s);
    eprintln!(
        "nvkv-raft-bench: output in {}, data in {} ({data_fs_type})",
        out_dir.display(),
        data_root.display()
    );

    let etcd_members = if want_etcd {
        etcd::member_specs(&plan.etcd_client_ports, &plan.etcd_peer_ports, &data_root)
    } else {
        Vec::new()
    };
    let mut etcd_procs = Vec::new();
    if want_etcd {
        eprintln!(
            "nvkv-raft-bench: starting 3 etcd {} members",
            etcd_version.as_deref().unwrap_or("?")
        );
        etcd_procs = etcd::start(&a.etcd, &etcd_members, &a.etcd_arg, &out_dir)?;
        rt.block_on(etcd::wait_healthy(&etcd_members, &mut etcd_procs, startup))?;
    }
    let nvkv_nodes = if want_nvkv {
        nvkv::node_specs(&plan.nvkv_ports, &data_root, &a.nvme)?
    } else {
        Vec::new()
    };
    let mut nvkv_procs = Vec::new();
    if let Some(server) = &server {
        eprintln!(
            "nvkv-raft-bench: starting 3 nvkv-server nodes ({})",
            server.display()
        );
        let settings = nvkv::Settings {
            server: server.clone(),
            db_size: a.db_size,
            commit_interval_ms: a.commit_interval_ms,
            durable_log: a.durable_log.clone(),
            extra: a.server_arg.clone(),
        };
        nvkv_procs = nvkv::start(&settings, &nvkv_nodes, &out_dir, startup)?;
        rt.block_on(nvkv::init(&nvkv_nodes))?;
        let leader = rt.block_on(nvkv::wait_leader(&nvkv_nodes, startup))?;
        eprintln!("nvkv-raft-bench: nvkv leader {leader}");
    }
    let etcd_endpoints = etcd_endpoints(&rt, a.etcd_endpoints, &etcd_members)?;

    let mut env = Env {
        rt: &rt,
        plan: &plan,
        key_space: a.key_space,
        etcd_members,
        etcd_endpoints,
        etcd_procs,
        nvkv_nodes,
        nvkv_procs,
    };
    smoke_check(&mut env)?;

    let mut turns = Vec::new();
    for round in 1..=plan.rounds {
        eprintln!("nvkv-raft-bench: round {round} of {}", plan.rounds);
        let order = plan.round_order(round);
        for (i, (clients, system)) in order.iter().enumerate() {
            let position = order[..i].iter().filter(|(c, _)| c == clients).count();
            turns.push(env.turn(*system, *clients, round, position)?);
            // A short pause between turns: etcd's backend commits (every 100 ms) and whatever the previous
            // turn left in flight settle before the next system's warm-up starts.
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    // Both clusters are still up, as they must have been for every turn.
    env.check_alive()?;
    // Stop all six processes now, before the report: nothing of ours runs past this point.
    let etcd_members_n = env.etcd_members.len();
    drop(env);
    drop(rt);

    let summary = report::summarize(&turns);
    let ratios = report::ratios(&summary);
    if turns.iter().any(|t| t.errors > 0) {
        notes.push("some turns had failed puts: see turns[].errors and first_error".into());
    }
    notes.push(format!(
        "the bench client ({threads} runtime threads) and all {} server processes share this machine's {} cores",
        etcd_members_n + if want_nvkv { 3 } else { 0 },
        cores()
    ));
    notes.push(
        "the cluster not being measured stays up and idle during the other's turn; \
         turns[].idle_cluster_cpu_cores is what it used meanwhile"
            .into(),
    );
    let tmpfs_note = if a.tmpfs {
        " On tmpfs (--tmpfs) an fsync costs nothing: this compares the software, not the disk."
    } else {
        ""
    };
    let conditions = Conditions {
        host_cores: cores(),
        cpu_model: cpu_model(),
        kernel: kernel(),
        data_dir: data_root.display().to_string(),
        data_fs,
        data_fs_type,
        tmpfs: a.tmpfs,
        etcd_binary: want_etcd.then(|| a.etcd.display().to_string()),
        etcd_version,
        etcd_durability: format!(
            "etcd defaults (no --unsafe-no-fsync): each member fdatasyncs its WAL before it acknowledges an \
             entry, and the leader answers a put once a quorum has it durable and it is applied; snapshot-count \
             and backend batching at their defaults.{tmpfs_note}"
        ),
        etcd_endpoints: match a.etcd_endpoints {
            Endpoints::Leader => "leader: each client connects to the leader's client URL only".into(),
            Endpoints::All => {
                "all: each client gets all three client URLs (balanced; followers forward to the leader)".into()
            }
        },
        nvkv_server: server.as_ref().map(|s| s.display().to_string()),
        nvkv_durability: format!(
            "nvkv-server answers a put once the entry is committed on a quorum and applied; by its design a \
             node counts towards the quorum only once the entry is durable in its nvkv database (the server's \
             guarantee: the bench does not test it); --commit-interval-ms {}; databases {}; durable log {}.{tmpfs_note}",
            a.commit_interval_ms
                .map(|m| m.to_string())
                .unwrap_or_else(|| "at the server's default".into()),
            if a.nvme.is_empty() {
                "in files in the data dir".to_string()
            } else {
                format!("on NVMe controllers {} through nvkv's userspace driver", a.nvme.join(", "))
            },
            a.durable_log.as_deref().unwrap_or("none (acknowledged by persistence cycles)")
        ),
        nvkv_db_size: a.db_size,
        nvkv_commit_interval_ms: a.commit_interval_ms,
        rounds: plan.rounds,
        warmup_s: plan.timing_warmup_s,
        duration_s: plan.timing_duration_s,
        clients: plan.clients.clone(),
        key_space: a.key_space,
        key_bytes: workload::KEY_BYTES,
        value_bytes: workload::VALUE_BYTES,
        client_runtime_threads: threads,
        order: "per round, for each client count, one turn of each system: etcd first in odd rounds, nvkv \
                first in even ones"
            .into(),
        cluster_lifetime: "both clusters started once and kept up through all rounds".into(),
        systems: plan.systems.clone(),
    };
    let table = report::table(&summary, &ratios);
    let rep = Report {
        conditions,
        summary,
        ratios,
        turns,
        notes,
    };
    let path = out_dir.join("report.json");
    let json = serde_json::to_string_pretty(&rep).context("serializing the report")?;
    std::fs::write(&path, json + "\n").with_context(|| format!("writing {}", path.display()))?;

    let c = &rep.conditions;
    println!(
        "nvkv-raft-bench: 3 × nvkv-server against 3 × etcd {} on 127.0.0.1; {} cores ({}); data on {} ({}{}); \
         {} round(s) of {} s (+{} s warm-up) per turn; {}-byte keys over {}, {}-byte values; etcd clients: {}",
        c.etcd_version.as_deref().unwrap_or("-"),
        c.host_cores,
        c.cpu_model,
        c.data_dir,
        c.data_fs_type,
        if c.tmpfs { ", --tmpfs" } else { "" },
        c.rounds,
        c.duration_s,
        c.warmup_s,
        c.key_bytes,
        c.key_space,
        c.value_bytes,
        match a.etcd_endpoints {
            Endpoints::Leader => "leader",
            Endpoints::All => "all",
        }
    );
    println!("medians over rounds:\n{table}");
    println!("report: {}", path.display());
    Ok(())
}

/// The etcd client URLs the clients use: the leader's alone, or all three.
fn etcd_endpoints(
    rt: &tokio::runtime::Runtime,
    mode: Endpoints,
    members: &[etcd::MemberSpec],
) -> Result<Vec<String>> {
    if members.is_empty() {
        return Ok(Vec::new());
    }
    match mode {
        Endpoints::All => Ok(members.iter().map(|m| m.client_url.clone()).collect()),
        Endpoints::Leader => {
            #[cfg(feature = "etcd")]
            {
                let url = rt.block_on(etcd::leader_url(members))?;
                eprintln!("nvkv-raft-bench: etcd leader {url}");
                Ok(vec![url])
            }
            #[cfg(not(feature = "etcd"))]
            {
                let _ = rt;
                Err(anyhow::anyhow!(
                    "no etcd client in this build: {NO_ETCD_FEATURE}"
                ))
            }
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run(a) => run(*a),
        Cmd::Vm(a) => vm::host(a),
        Cmd::VmGuest { run } => vm::guest(run),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<RunArgs> {
        let mut v = vec!["nvkv-raft-bench", "run"];
        v.extend_from_slice(extra);
        let cli = Cli::try_parse_from(v).map_err(|e| anyhow::anyhow!("{e}"))?;
        match cli.cmd {
            Cmd::Run(a) => Ok(*a),
            _ => bail!("not run"),
        }
    }

    #[test]
    fn nvme_controllers_one_per_node_and_pass_through_arguments() -> Result<()> {
        let a = args(&[
            "--nvme",
            "0000:00:10.0,0000:00:11.0,0000:00:12.0",
            "--durable-log",
            "pmr",
            "--server-arg=--election-ms=1000",
            "--server-arg",
            "--heartbeat-ms=100",
            "--etcd-arg=--election-timeout=1000",
        ])?;
        let nodes = nvkv::node_specs(&[1, 2, 3], Path::new("/x"), &a.nvme)?;
        assert_eq!(nodes[1].nvme.as_deref(), Some("0000:00:11.0"));
        assert_eq!(a.durable_log.as_deref(), Some("pmr"));
        assert_eq!(a.server_arg, ["--election-ms=1000", "--heartbeat-ms=100"]);
        assert_eq!(a.etcd_arg, ["--election-timeout=1000"]);
        let two = args(&["--nvme", "0000:00:10.0,0000:00:11.0"])?;
        assert!(nvkv::node_specs(&[1, 2, 3], Path::new("/x"), &two.nvme).is_err());
        let none = nvkv::node_specs(&[1, 2, 3], Path::new("/x"), &[])?;
        assert!(none.iter().all(|n| n.nvme.is_none()));
        Ok(())
    }

    #[test]
    fn defaults_and_quick() -> Result<()> {
        let p = Plan::from_args(&args(&[])?)?;
        assert_eq!(
            (p.rounds, p.timing_duration_s, p.timing_warmup_s),
            (3, 5.0, 0.5)
        );
        assert_eq!(p.clients, vec![1, 16]);
        assert_eq!(p.systems, vec![System::Etcd, System::Nvkv]);
        assert_eq!(p.nvkv_ports, [21001, 21002, 21003]);
        let q = Plan::from_args(&args(&["--quick"])?)?;
        assert_eq!((q.rounds, q.timing_duration_s), (1, 1.0));
        // An explicit value wins over --quick.
        let q2 = Plan::from_args(&args(&["--quick", "--rounds", "2"])?)?;
        assert_eq!((q2.rounds, q2.timing_duration_s), (2, 1.0));
        Ok(())
    }

    #[test]
    fn options_parse_and_bad_values_are_refused() -> Result<()> {
        let a = args(&[
            "--clients",
            "1,4,16",
            "--only",
            "nvkv",
            "--tmpfs",
            "--etcd-endpoints",
            "all",
            "--port-base",
            "30000",
            "--server",
            "/x/nvkv-server",
        ])?;
        assert!(a.tmpfs);
        assert_eq!(a.etcd_endpoints, Endpoints::All);
        assert_eq!(a.server.as_deref(), Some(Path::new("/x/nvkv-server")));
        let p = Plan::from_args(&a)?;
        assert_eq!(p.clients, vec![1, 4, 16]);
        assert_eq!(p.systems, vec![System::Nvkv]);
        assert_eq!(p.etcd_peer_ports, [30021, 30022, 30023]);
        assert!(Plan::from_args(&args(&["--rounds", "0"])?).is_err());
        assert!(Plan::from_args(&args(&["--clients", "0"])?).is_err());
        assert!(Plan::from_args(&args(&["--duration-s", "0"])?).is_err());
        assert!(Plan::from_args(&args(&["--port-base", "65530"])?).is_err());
        assert!(args(&["--only", "redis"]).is_err());
        Ok(())
    }

    #[test]
    fn rounds_alternate_which_system_goes_first() -> Result<()> {
        let p = Plan::from_args(&args(&[])?)?;
        use System::{Etcd, Nvkv};
        assert_eq!(
            p.round_order(1),
            vec![(1, Etcd), (1, Nvkv), (16, Etcd), (16, Nvkv)]
        );
        assert_eq!(
            p.round_order(2),
            vec![(1, Nvkv), (1, Etcd), (16, Nvkv), (16, Etcd)]
        );
        assert_eq!(p.round_order(3), p.round_order(1));
        let only = Plan::from_args(&args(&["--only", "etcd", "--clients", "2"])?)?;
        assert_eq!(only.round_order(2), vec![(2, Etcd)]);
        Ok(())
    }
}
