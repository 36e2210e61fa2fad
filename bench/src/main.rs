//! `nvkv-bench`: the benchmark harness. `run` is the project's main job.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use nvkv_bench::conditions::timestamp;
use nvkv_bench::plan::{
    Contender, Measurement, Plan, Rw, Workload, INFO_PREFIX, KV_PREFIX, PROGRESS_PREFIX,
    RESULT_PREFIX,
};
use nvkv_bench::progress::{JobLayout, JobProgress};
use nvkv_bench::report::{self, Conditions, Report};
use nvkv_bench::runner::{self, Sink};
use nvkv_qemu::{Accel, NvmeController, NvmeNamespace, Vm};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Parser)]
#[command(
    version,
    about = "nvkv benchmark harness: nvkv's userspace NVMe driver against the kernel's NVMe path (fio), in the same boot"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// Boots of the test VM; medians are taken over all rounds of all boots.
    #[arg(long, default_value_t = 3)]
    boots: usize,
    /// Rounds per boot; contenders alternate (A B, B A, ...).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Seconds per measurement (1 s keeps the main job near 12 minutes: 3 boots × 2 rounds give 6
    /// samples per figure; longer runs narrow each sample, more boots the spread across boots).
    #[arg(long, default_value_t = 1.0)]
    duration: f64,
    /// Seconds of warm-up before each measurement.
    #[arg(long, default_value_t = 0.25)]
    warmup: f64,
    /// Queue depths for 4 KiB random reads (random writes use the first two).
    #[arg(long, value_delimiter = ',', default_value = "1,32,128")]
    qd: Vec<usize>,
    /// A short run (seconds): QD 1 and 32, nvkv against polled io_uring, one round, one boot.
    #[arg(long)]
    quick: bool,
    /// Use shadow doorbells when the controller offers them (off by default: see ControllerOptions; on QEMU
    /// 7.2 they cost IOPS and can stall at QD 1).
    #[arg(long)]
    shadow: bool,
    /// Leave the kernel's IOMMU domain as DMA (the naive baseline) instead of identity (the fair one).
    #[arg(long)]
    naive_kernel: bool,
    /// Bare metal: benchmark this PCI device (bound to vfio-pci) on this host, without a VM.
    #[arg(long)]
    device: Option<String>,
    /// tcg (default, works everywhere) or kvm (hosts where KVM works).
    #[arg(long, default_value = "tcg")]
    accel: Accel,
    /// Where to write results (a timestamped folder is made inside).
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// Keys for the key-value comparison (100-byte values; a quarter of that for 4 KiB values).
    #[arg(long, default_value_t = 20_000)]
    kv_keys: u64,
    /// Seconds per key-value read/mix/durable run (fills always write every key).
    #[arg(long, default_value_t = 1.0)]
    kv_duration: f64,
    /// Key-value rounds per boot. Which system goes first alternates by round and by boot, so with one
    /// round per boot (the default, to keep the job near 12 minutes) the boots alternate it.
    #[arg(long, default_value_t = 1)]
    kv_rounds: usize,
    /// Skip the key-value comparison.
    #[arg(long)]
    no_kv: bool,
    /// Only the key-value comparison (no driver workloads).
    #[arg(long, conflicts_with = "no_kv")]
    kv_only: bool,
    /// fio binary for the kernel baseline.
    #[arg(long, default_value = "/usr/bin/fio")]
    fio: PathBuf,
}

#[derive(clap::Args, Clone)]
struct EmbedArgs {
    /// Keys written by the fill and read by the other workloads.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Value size in bytes (keys are 16 bytes).
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Seconds of readrandom and of mix50 per run.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Rounds; C and Rust alternate (C first in even rounds).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Client thread counts.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    threads: Vec<usize>,
    /// Requests per batch (1: one call per request).
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    batch: Vec<usize>,
    /// Backends (memory, file).
    #[arg(long, value_delimiter = ',', default_value = "memory,file")]
    backends: Vec<nvkv_bench::embed::Backend>,
    /// The file backend's file (recreated for each run).
    #[arg(long, default_value = "/var/tmp/nvkv-embed-bench.img")]
    file: PathBuf,
    /// Write every measurement and the summary rows as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The configurations of an embed comparison.
fn embed_configs(a: &EmbedArgs) -> Vec<nvkv_bench::embed::Config> {
    let plan = nvkv_bench::embed::EmbedPlan {
        bin: String::new(),
        threads: a.threads.clone(),
        batch: a.batch.clone(),
        keys: a.keys,
        value_size: a.value_size,
        seconds: a.seconds,
    };
    a.backends
        .iter()
        .flat_map(|&b| {
            let path = (b == nvkv_bench::embed::Backend::File).then(|| a.file.clone());
            plan.configs(b, path)
        })
        .collect()
}

/// Where the harness builds the C program: beside cargo's outputs.
fn embed_build_dir() -> PathBuf {
    nvkv_bench::embed::target_dir().join("embed-bench")
}

#[derive(Subcommand)]
enum Cmd {
    /// The main job: set up the host, boot the VM with an emulated NVMe, run the suite, write the report.
    Run(RunArgs),
    /// The driver's own cost per I/O against an in-memory loopback controller (no VM, no device).
    Loopback {
        #[arg(long, value_delimiter = ',', default_value = "1,32,128")]
        qd: Vec<usize>,
        /// I/Os per measurement.
        #[arg(long, default_value_t = 2_000_000)]
        ios: u64,
        /// Also count instructions per I/O with valgrind's callgrind (slow).
        #[arg(long)]
        instructions: bool,
        /// Submission APIs to measure: owned (buffers move through the queue pair) and borrowed (the caller
        /// keeps its buffers, as with SPDK).
        #[arg(long, value_delimiter = ',', default_value = "owned,borrowed")]
        path: Vec<nvkv_bench::loopback::BufferPath>,
        /// Print one JSON object per queue depth instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The CPU path on this host: nvkv's shard-local put/get on the memory backend against RocksDB's
    /// db_bench on tmpfs (with and without WAL), one core, 16 B keys with 100 B and 4 KiB values.
    KvHost {
        /// Keys for the 100-byte-value runs (a quarter of them for 4 KiB values).
        #[arg(long, default_value_t = 200_000)]
        keys: u64,
        #[arg(long, default_value = "/usr/bin/db_bench")]
        db_bench: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Embedding on this host: libnvkv from a C program against the Rust handle, same workloads
    /// (fillrandom, readrandom, mix50), one shard, alternating rounds; one request per call and batches.
    Embed(EmbedArgs),
    /// The durable log's own cost per write on this host: a durable put through the log against a
    /// non-durable put and against the plain copy + msync of the same record into a /dev/shm file.
    DlogCost(nvkv_bench::dlog_cost::Args),
    /// One run of the Rust side of `embed`, in a process of its own as the C program's (prints one JSON
    /// object per workload, as `bench/c/embed.c` does).
    #[command(hide = true)]
    EmbedRun {
        #[arg(long, value_enum)]
        backend: nvkv_bench::embed::Backend,
        #[arg(long)]
        path: Option<PathBuf>,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long, default_value_t = 1)]
        batch: usize,
        #[arg(long, default_value_t = 100_000)]
        keys: u64,
        #[arg(long, default_value_t = 100)]
        value_size: usize,
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        #[arg(long, default_value_t = 512 << 20)]
        size: u64,
        /// Accepted for the C program's argument list; the shard always busy-polls.
        #[arg(long)]
        busy_poll: bool,
    },
    /// One loopback run (used under callgrind by `loopback --instructions`).
    #[command(hide = true)]
    LoopbackRun {
        #[arg(long)]
        qd: usize,
        #[arg(long)]
        ios: u64,
        #[arg(long, value_enum, default_value = "owned")]
        path: nvkv_bench::loopback::BufferPath,
    },
    /// Runs a plan where the device is (used inside the VM; also usable by hand on bare metal).
    #[command(hide = true)]
    Guest {
        #[arg(long)]
        plan: PathBuf,
        #[arg(long, default_value_t = 0)]
        boot: usize,
        #[arg(long, default_value = "/bin/fio")]
        fio: PathBuf,
    },
}

fn plan_for(a: &RunArgs, device: &str) -> Plan {
    let rr = |qd| Workload {
        rw: Rw::RandRead,
        bs: 4096,
        qd,
        threads: 1,
    };
    let rw = |qd| Workload {
        rw: Rw::RandWrite,
        bs: 4096,
        qd,
        threads: 1,
    };
    if a.quick {
        return Plan {
            device: device.into(),
            workloads: if a.kv_only {
                vec![]
            } else {
                vec![rr(1), rr(32)]
            },
            contenders: vec![Contender::Nvkv, Contender::KernelIoUringPolled],
            duration_s: 0.5,
            warmup_s: 0.2,
            rounds: 1,
            shadow_doorbells: a.shadow,
            kernel_identity_domain: !a.naive_kernel,
            kv: kv_plan(a),
        };
    }
    let mut workloads: Vec<Workload> = a.qd.iter().map(|&q| rr(q)).collect();
    workloads.extend(a.qd.iter().take(2).map(|&q| rw(q)));
    workloads.push(Workload {
        rw: Rw::RandRead,
        bs: 4096,
        qd: 32,
        threads: 2,
    });
    if a.kv_only {
        workloads.clear();
    }
    Plan {
        device: device.into(),
        workloads,
        contenders: vec![
            Contender::Nvkv,
            Contender::KernelIoUring,
            Contender::KernelIoUringPolled,
            Contender::KernelIoUringCmdPolled,
        ],
        duration_s: a.duration,
        warmup_s: a.warmup,
        rounds: a.rounds,
        shadow_doorbells: a.shadow,
        kernel_identity_domain: !a.naive_kernel,
        kv: kv_plan(a),
    }
}

/// The key-value comparison in the VM (not on bare metal: it formats the device with ext4).
fn kv_plan(a: &RunArgs) -> Option<nvkv_bench::plan::KvPlan> {
    use nvkv_bench::kv::{KvSpec, Workload};
    if a.no_kv || a.device.is_some() {
        return None;
    }
    let (keys, dur, sizes, ycsb) = if a.quick {
        (2_000, 0.5, vec![100], false)
    } else {
        (a.kv_keys, a.kv_duration, vec![100, 4096], true)
    };
    let mut workloads = vec![
        Workload::FillRandom,
        Workload::ReadRandom,
        Workload::Mix { read_percent: 50 },
    ];
    if !a.quick {
        workloads.push(Workload::Mix { read_percent: 95 });
    }
    workloads.push(Workload::DurablePut);
    Some(nvkv_bench::plan::KvPlan {
        device: NvmeController::guest_address(1),
        value_sizes: sizes,
        spec: KvSpec {
            key_size: 16,
            value_size: 100,
            keys,
            threads: 1,
            duration_s: dur,
        },
        workloads,
        ycsb,
        rounds: if a.quick { 1 } else { a.kv_rounds.max(1) },
        db_bench: "/bin/db_bench".into(),
        mke2fs: "/bin/mke2fs".into(),
        pmr_log: true,
        nvdimm_log: true,
        embed: Some(embed_plan(a, "/bin/nvkv-embed-bench")),
    })
}

/// The embedding comparison's settings in the main job (the VM's nvme backend and the host's memory and
/// file backends): 100 B values, one and four client threads, unbatched and batches of 64.
fn embed_plan(a: &RunArgs, bin: &str) -> nvkv_bench::embed::EmbedPlan {
    let (threads, keys, seconds) = if a.quick {
        (vec![1], 2_000, 0.3)
    } else {
        (vec![1, 4], 20_000, 1.0)
    };
    nvkv_bench::embed::EmbedPlan {
        bin: bin.into(),
        threads,
        batch: vec![1, 64],
        keys,
        value_size: 100,
        seconds,
    }
}

/// Rounds of the host's embedding comparison in the main job.
fn embed_host_rounds(a: &RunArgs) -> usize {
    if a.quick {
        1
    } else {
        2
    }
}

/// The host's embedding configurations in the main job: memory and file backends.
fn embed_host_configs(a: &RunArgs) -> Vec<nvkv_bench::embed::Config> {
    use nvkv_bench::embed::Backend;
    let mut p = embed_plan(a, "");
    if !a.quick {
        // The host is fast: more keys than in the VM, half-second reads and mixes.
        p.keys = 100_000;
        p.seconds = 0.5;
    }
    let file = std::env::temp_dir().join(format!("nvkv-embed-{}.img", std::process::id()));
    let mut c = p.configs(Backend::Memory, None);
    c.extend(p.configs(Backend::File, Some(file)));
    c
}

/// Sink that prints framed lines (inside the guest, read back by the host).
struct FramedSink;
impl Sink for FramedSink {
    fn measurement(&mut self, m: Measurement) {
        if let Ok(j) = serde_json::to_string(&m) {
            println!("{RESULT_PREFIX}{j}");
        }
    }
    fn progress(&mut self, step: usize, total: usize, what: &str) {
        println!("{PROGRESS_PREFIX}{step} {total} {what}");
    }
    fn info(&mut self, key: &str, value: &str) {
        println!("{INFO_PREFIX}{key}={value}");
    }
    fn kv(&mut self, m: nvkv_bench::kv::KvMeasurement) {
        if let Ok(j) = serde_json::to_string(&m) {
            println!("{KV_PREFIX}{j}");
        }
    }
}

/// Sink that collects (bare metal; in the VM's case the console callback fills one).
#[derive(Default)]
struct Collect {
    ms: Vec<Measurement>,
    info: BTreeMap<String, String>,
    kv: Vec<nvkv_bench::kv::KvMeasurement>,
    /// The job's progress and where this run's steps sit in it (bare metal: one "boot").
    progress: Option<(JobProgress, JobLayout)>,
}
impl Sink for Collect {
    fn measurement(&mut self, m: Measurement) {
        self.ms.push(m);
    }
    fn progress(&mut self, step: usize, _total: usize, what: &str) {
        if let Some((p, layout)) = &self.progress {
            p.at(layout.guest_step(0, step as u64), what);
        }
    }
    fn info(&mut self, key: &str, value: &str) {
        self.info.insert(key.into(), value.into());
    }
    fn kv(&mut self, m: nvkv_bench::kv::KvMeasurement) {
        self.kv.push(m);
    }
}

fn first_line_of(cmd: &str, arg: &str) -> Option<String> {
    let out = std::process::Command::new(cmd).arg(arg).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(str::to_string)
}

fn host_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("host: {n} × {cpu}")
}

/// Measurements and info lines read back from the guest.
type Collected = Collect;

/// The main job's steps: the host's CPU-path runs (one step), then each boot (booting, then the plan's
/// steps).
fn job_layout(a: &RunArgs, plan: &Plan) -> JobLayout {
    JobLayout {
        before: if a.no_kv {
            0
        } else {
            1 + (2 * embed_host_configs(a).len() * embed_host_rounds(a)) as u64
        },
        boots: if a.device.is_some() || a.quick {
            1
        } else {
            a.boots.max(1) as u64
        },
        per_boot: plan.steps() as u64,
    }
}

fn run_vm(
    a: &RunArgs,
    plan: &Plan,
    embed_bin: Option<&Path>,
    progress: &JobProgress,
    layout: JobLayout,
) -> Result<(Collect, Conditions)> {
    let exe = std::env::current_exe().context("finding the nvkv-bench executable")?;
    if !a.fio.exists() {
        bail!(
            "{} not found: run `cargo run -p nvkv-qemu -- setup` (installs Debian's fio)",
            a.fio.display()
        );
    }
    let boots = if a.quick { 1 } else { a.boots.max(1) };
    let plan_json = serde_json::to_vec(plan)?;
    let kernel = nvkv_qemu::host::find_kernel().map_err(|e| anyhow!("{e}"))?;
    let collected: Arc<Mutex<Collected>> = Arc::default();
    let mut vcpus = 2;
    let kv_img = std::env::temp_dir().join(format!("nvkv-bench-kv-{}.img", std::process::id()));
    let pmr_file = PathBuf::from(format!("/dev/shm/nvkv-bench-pmr-{}", std::process::id()));
    let nvdimm_file = PathBuf::from(format!("/dev/shm/nvkv-bench-nvdimm-{}", std::process::id()));
    for boot in 0..boots {
        let _ = std::fs::remove_file(&kv_img);
        // Fresh persistent memory each boot, as the disk image.
        let _ = std::fs::remove_file(&pmr_file);
        let _ = std::fs::remove_file(&nvdimm_file);
        let sink = collected.clone();
        let p = progress.clone();
        let this_boot = boot as u64;
        let mut vm = Vm::builder()
            .accel(a.accel)
            .controller(
                NvmeController::new("NVKV-BENCH").namespace(NvmeNamespace::null(1 << 30, 4096)),
            )
            // The key-value comparison needs real data: a raw image, fresh each boot. Its controller
            // has a PMR and the VM an NVDIMM for the durable logs, both on the host's tmpfs (memory
            // that outlives QEMU, and whose msync costs no disk write: the barrier's own cost).
            .controller(
                NvmeController::new("NVKV-KV")
                    .namespace(NvmeNamespace::file(&kv_img, 2 << 30, 4096))
                    .pmr(&pmr_file, 16 << 20),
            )
            .nvdimm(&nvdimm_file, 64 << 20)
            .binary(&exe, "nvkv-bench")
            .binary(&a.fio, "fio")
            .binary("/usr/bin/db_bench", "db_bench")
            .binary("/usr/sbin/mke2fs", "mke2fs")
            .modules(&["crc32c_generic", "crc16", "mbcache", "jbd2", "ext4"])
            .file("/etc/nvkv/plan.json", plan_json.clone())
            .timeout(std::time::Duration::from_secs(3600))
            .on_line(move |l| {
                if let Some(line) = l.strip_prefix(PROGRESS_PREFIX) {
                    let mut it = line.splitn(3, ' ');
                    let step = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                    let _total = it.next();
                    p.at(layout.guest_step(this_boot, step), it.next().unwrap_or(""));
                } else if let Some(j) = l.strip_prefix(RESULT_PREFIX) {
                    if let (Ok(m), Ok(mut g)) =
                        (serde_json::from_str::<Measurement>(j), sink.lock())
                    {
                        g.ms.push(m);
                    }
                } else if let Some(kv) = l.strip_prefix(INFO_PREFIX) {
                    if let (Some((k, v)), Ok(mut g)) = (kv.split_once('='), sink.lock()) {
                        g.info.insert(k.to_string(), v.to_string());
                    }
                } else if let Some(j) = l.strip_prefix(KV_PREFIX) {
                    if let (Ok(m), Ok(mut g)) = (serde_json::from_str(j), sink.lock()) {
                        g.kv.push(m);
                    }
                }
            });
        if let Some(b) = embed_bin {
            vm = vm.binary(b, "nvkv-embed-bench");
        }
        vcpus = vm.cpu_count() as usize;
        progress.at(
            layout.boot_start(boot as u64),
            &format!(
                "boot {}/{boots}: building the initramfs, booting the VM",
                boot + 1
            ),
        );
        let out = vm
            .run(&format!(
                "/bin/nvkv-bench guest --plan /etc/nvkv/plan.json --boot {boot} --fio /bin/fio\n"
            ))
            .map_err(|e| anyhow!("{e}"))?;
        progress.at(
            layout.boot_end(boot as u64),
            &format!("boot {}/{boots} done", boot + 1),
        );
        if out.exit_code != 0 {
            let tail: Vec<&str> = out.output.lines().collect();
            bail!(
                "the in-guest benchmark failed (exit {}):\n{}",
                out.exit_code,
                tail[tail.len().saturating_sub(30)..].join("\n")
            );
        }
    }
    let _ = std::fs::remove_file(&kv_img);
    let _ = std::fs::remove_file(&pmr_file);
    let _ = std::fs::remove_file(&nvdimm_file);
    let got = std::mem::take(
        &mut *collected
            .lock()
            .map_err(|_| anyhow!("result collector poisoned"))?,
    );
    let environment = match a.accel {
        Accel::Tcg => "QEMU TCG (software emulation; compare ratios, not absolute figures)",
        Accel::Kvm => "QEMU KVM",
    };
    let c = Conditions {
        environment: environment.into(),
        vcpus,
        host: host_description(),
        qemu: first_line_of("qemu-system-x86_64", "--version"),
        guest_kernel: Some(kernel.version),
        device: "QEMU NVMe (1b36:0010), 1 namespace on null-co 1 GiB with read-zeroes, 4096 B LBA, behind intel-iommu".into(),
        duration_s: plan.duration_s,
        warmup_s: plan.warmup_s,
        rounds_per_boot: plan.rounds,
        boots,
        pinning: "each queue pair / fio job on its own vCPU (0, 1); guest clocksource=tsc".into(),
        started: timestamp(),
        nvkv_version: env!("CARGO_PKG_VERSION").into(),
        notes: notes(plan),
    };
    Ok((got, c))
}

fn notes(plan: &Plan) -> Vec<String> {
    let mut n =
        vec![format!(
        "kernel path: nvme.ko with poll_queues=2; IOMMU group type {} for the kernel driver ({})",
        if plan.kernel_identity_domain { "identity" } else { "DMA" },
        if plan.kernel_identity_domain { "the fair baseline" } else { "the naive baseline" }
    )];
    n.push(format!(
        "nvkv: shadow doorbells {}",
        if plan.shadow_doorbells {
            "on when offered"
        } else {
            "off"
        }
    ));
    n.push("nvkv × = nvkv median IOPS / this contender's median IOPS".into());
    n
}

fn run_bare_metal(
    a: &RunArgs,
    device: &str,
    plan: &Plan,
    progress: &JobProgress,
    layout: JobLayout,
) -> Result<(Collect, Conditions)> {
    let mut sink = Collect {
        progress: Some((progress.clone(), layout)),
        ..Default::default()
    };
    progress.at(layout.boot_start(0), &format!("bare metal: {device}"));
    runner::run(plan, 0, &a.fio, &mut sink)?;
    progress.at(layout.boot_end(0), "bare metal: done");
    let c = Conditions {
        environment: "bare metal".into(),
        vcpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        host: host_description(),
        qemu: None,
        guest_kernel: first_line_of("uname", "-r"),
        device: format!("{device} (namespace 1)"),
        duration_s: plan.duration_s,
        warmup_s: plan.warmup_s,
        rounds_per_boot: plan.rounds,
        boots: 1,
        pinning: "each queue pair / fio job on its own CPU (0, 1)".into(),
        started: timestamp(),
        nvkv_version: env!("CARGO_PKG_VERSION").into(),
        notes: notes(plan),
    };
    Ok((sink, c))
}

fn kv_host(keys: u64, db_bench: &Path) -> Result<Vec<nvkv_bench::kv::KvMeasurement>> {
    if !db_bench.exists() {
        bail!(
            "{} not found: install Debian's rocksdb-tools (apt-get install rocksdb-tools)",
            db_bench.display()
        );
    }
    let mut ms = Vec::new();
    for (vs, n) in [(100usize, keys), (4096, (keys / 4).max(1000))] {
        // On a thread of its own: it pins itself to CPU 0, which must not stick to the main thread.
        let local = std::thread::spawn(move || nvkv_bench::kv::nvkv_shard_local(vs, n))
            .join()
            .map_err(|_| anyhow!("the shard-local benchmark panicked"))??;
        ms.extend(local);
        ms.extend(nvkv_bench::kv::rocksdb_tmpfs(db_bench, vs, n)?);
    }
    Ok(ms)
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Guest { plan, boot, fio } => {
            let plan: Plan = serde_json::from_slice(&std::fs::read(&plan)?)?;
            runner::run(&plan, boot, &fio, &mut FramedSink)?;
        }
        Cmd::Loopback {
            qd,
            ios,
            instructions,
            path,
            json,
        } => {
            let rs = nvkv_bench::loopback::run(&qd, &path, ios, instructions)?;
            if json {
                for r in &rs {
                    println!("{}", serde_json::to_string(r)?);
                }
            } else {
                println!(
                    "{}",
                    rs.first().map(|r| r.conditions.as_str()).unwrap_or("")
                );
                println!(
                    "{:>5} {:>9} {:>10} {:>12} {:>14} {:>14} {:>10}",
                    "QD",
                    "buffers",
                    "ns/IO",
                    "instr/IO",
                    "driver instr",
                    "loopback instr",
                    "MMIO/IO"
                );
                let f = |v: Option<f64>| v.map(|x| format!("{x:.0}")).unwrap_or_else(|| "-".into());
                for r in &rs {
                    println!(
                        "{:>5} {:>9} {:>10.1} {:>12} {:>14} {:>14} {:>10.4}",
                        r.qd,
                        format!("{:?}", r.path).to_lowercase(),
                        r.ns_per_io,
                        f(r.instructions_per_io),
                        f(r.driver_instructions_per_io),
                        f(r.loopback_instructions_per_io),
                        r.mmio_writes_per_io
                    );
                }
            }
        }
        Cmd::KvHost {
            keys,
            db_bench,
            json,
        } => {
            let ms = kv_host(keys, &db_bench)?;
            if json {
                for m in &ms {
                    println!("{}", serde_json::to_string(m)?);
                }
            } else {
                print!("{}", report::kv_host_table(&ms));
            }
        }
        Cmd::Embed(a) => {
            use nvkv_bench::embed;
            if a.backends.contains(&embed::Backend::Nvme) {
                bail!("the nvme backend runs in the VM (the main job); here: memory, file");
            }
            let bin = embed::build_c(&embed_build_dir())?;
            let configs = embed_configs(&a);
            let ms = embed::compare(&bin, &configs, 0..a.rounds, &embed::fresh_on_host, |s| {
                eprintln!("{s}")
            })?;
            let rows = embed::rows(&ms);
            println!(
                "libnvkv from C against the Rust handle ({} keys, 16 B keys, {} B values, 1 shard, medians of {} rounds):",
                a.keys, a.value_size, a.rounds
            );
            print!("{}", embed::table(&rows));
            if let Some(p) = &a.json {
                let doc = serde_json::json!({ "conditions": nvkv_bench::conditions::timestamp(), "measurements": ms, "rows": rows });
                std::fs::write(p, serde_json::to_string_pretty(&doc)?)
                    .with_context(|| format!("writing {}", p.display()))?;
            }
        }
        Cmd::EmbedRun {
            backend,
            path,
            threads,
            batch,
            keys,
            value_size,
            seconds,
            size,
            busy_poll: _,
        } => {
            if threads == 0 || batch == 0 || keys < threads as u64 || seconds <= 0.0 {
                bail!("threads >= 1, batch >= 1, keys >= threads, seconds > 0");
            }
            let c = nvkv_bench::embed::Config {
                backend,
                path,
                threads,
                batch,
                keys,
                value_size,
                seconds,
                size,
            };
            for l in nvkv_bench::embed::rust_workloads(&c)? {
                println!("{}", serde_json::to_string(&l)?);
            }
        }
        Cmd::DlogCost(a) => nvkv_bench::dlog_cost::main(a)?,
        Cmd::LoopbackRun { qd, ios, path } => {
            nvkv_bench::loopback::measure(qd, ios, path)?;
        }
        Cmd::Run(a) => {
            let device = a
                .device
                .clone()
                .unwrap_or_else(|| NvmeController::guest_address(0));
            let plan = plan_for(&a, &device);
            let layout = job_layout(&a, &plan);
            if a.device.is_none() {
                // Everything the job needs, before its first step: QEMU and the guest's pieces, and for
                // the host's steps db_bench, cc and pkg-config.
                nvkv_qemu::host::setup().map_err(|e| anyhow!("{e}"))?;
            }
            let progress = JobProgress::new(layout.total());
            // The CPU path on this host first (seconds), then the device runs.
            let kv_host = if a.no_kv {
                Vec::new()
            } else {
                progress.at(
                    0,
                    "key-value CPU path on this host (nvkv shard-local vs db_bench on tmpfs)",
                );
                kv_host(
                    if a.quick { 20_000 } else { 200_000 },
                    Path::new("/usr/bin/db_bench"),
                )?
            };
            // libnvkv from C against the Rust handle on this host (the VM's turn is in its plan).
            let embed_bin = if a.no_kv {
                None
            } else {
                Some(nvkv_bench::embed::build_c(&embed_build_dir())?)
            };
            let mut embed = Vec::new();
            if let Some(bin) = &embed_bin {
                let configs = embed_host_configs(&a);
                let mut n = 1;
                embed = nvkv_bench::embed::compare(
                    bin,
                    &configs,
                    0..embed_host_rounds(&a),
                    &nvkv_bench::embed::fresh_on_host,
                    |what| {
                        progress.at(n, &format!("host: {what}"));
                        n += 1;
                    },
                )?;
                for c in &configs {
                    // Gone with the run; a file already removed is fine.
                    let _ = c.path.as_ref().map(std::fs::remove_file);
                }
            }
            let (mut got, conditions) = if a.device.is_some() {
                run_bare_metal(&a, &device, &plan, &progress, layout)?
            } else {
                run_vm(&a, &plan, embed_bin.as_deref(), &progress, layout)?
            };
            // The VM's embedding runs came back with the key-value ones.
            let (vm_embed, kv): (Vec<_>, Vec<_>) = std::mem::take(&mut got.kv)
                .into_iter()
                .partition(|m| m.system.starts_with("embed-"));
            got.kv = kv;
            embed.extend(vm_embed);
            progress.finish();
            if got.ms.is_empty() && !plan.workloads.is_empty() {
                bail!("no driver measurements came back");
            }
            if got.kv.is_empty() && plan.kv.is_some() {
                bail!("no key-value measurements came back");
            }
            let r = Report {
                schema: report::SCHEMA.into(),
                summary: report::summarize(&got.ms),
                conditions,
                info: got.info,
                measurements: got.ms,
                kv_summary: report::summarize_kv(&got.kv),
                kv: got.kv,
                kv_host,
                embed,
            };
            let dir = a.out.join(&r.conditions.started);
            report::write(&r, &dir)?;
            println!("{}", report::table(&r));
            println!("results: {}", Path::new(&dir).join("report.json").display());
            println!("page:    {}", Path::new(&dir).join("report.html").display());
            println!("plots:   {}/*.svg", dir.display());
        }
    }
    Ok(())
}
