//! Benchmark plans and result records (the JSON the guest sends back and `report.json` holds).

use serde::{Deserialize, Serialize};

/// Access pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Rw {
    RandRead,
    RandWrite,
    Read,
    Write,
}

impl Rw {
    pub fn fio_name(self) -> &'static str {
        match self {
            Rw::RandRead => "randread",
            Rw::RandWrite => "randwrite",
            Rw::Read => "read",
            Rw::Write => "write",
        }
    }
    pub fn is_write(self) -> bool {
        matches!(self, Rw::RandWrite | Rw::Write)
    }
    pub fn is_random(self) -> bool {
        matches!(self, Rw::RandRead | Rw::RandWrite)
    }
}

/// One workload: pattern, block size, queue depth per thread, threads (one queue pair each, pinned).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
pub struct Workload {
    pub rw: Rw,
    pub bs: usize,
    pub qd: usize,
    pub threads: usize,
}

impl Workload {
    pub fn label(&self) -> String {
        let t = if self.threads > 1 {
            format!(" x{} qpairs", self.threads)
        } else {
            String::new()
        };
        format!(
            "{} {}K QD{}{}",
            self.rw.fio_name(),
            self.bs / 1024,
            self.qd,
            t
        )
    }
}

/// Who performs the I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Contender {
    /// nvkv's userspace driver over VFIO.
    Nvkv,
    /// fio, io_uring on the kernel's block device, interrupt-driven completions.
    KernelIoUring,
    /// fio, io_uring with `--hipri` on a poll queue (polled completions).
    KernelIoUringPolled,
    /// fio, io_uring_cmd NVMe passthrough on the generic char device, polled.
    KernelIoUringCmdPolled,
}

impl Contender {
    pub fn label(self) -> &'static str {
        match self {
            Contender::Nvkv => "nvkv (VFIO, polled)",
            Contender::KernelIoUring => "kernel io_uring",
            Contender::KernelIoUringPolled => "kernel io_uring --hipri",
            Contender::KernelIoUringCmdPolled => "kernel io_uring_cmd --hipri",
        }
    }
    pub fn is_kernel(self) -> bool {
        self != Contender::Nvkv
    }
}

/// The key-value comparison of one boot: nvkv on the nvme backend against RocksDB's db_bench on ext4 over the
/// kernel's nvme driver, on the same (file-backed) controller, alternating.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KvPlan {
    /// PCI address of the controller the KV runs use (a raw-image-backed namespace: data is real).
    pub device: String,
    pub value_sizes: Vec<usize>,
    pub spec: crate::kv::KvSpec,
    pub workloads: Vec<crate::kv::Workload>,
    /// YCSB A–F (zipfian 0.99) on nvkv as well.
    pub ycsb: bool,
    pub rounds: usize,
    pub db_bench: String,
    pub mke2fs: String,
    /// Durable puts also with a durable log in the KV controller's Persistent Memory Region.
    #[serde(default)]
    pub pmr_log: bool,
    /// Durable puts also with a durable log on the guest's NVDIMM (devdax).
    #[serde(default)]
    pub nvdimm_log: bool,
    /// libnvkv from C against the Rust handle on the same controller (nvme backend), each round.
    #[serde(default)]
    pub embed: Option<crate::embed::EmbedPlan>,
}

impl KvPlan {
    /// Progress steps of the key-value part of one boot: per round, per value size, each workload on
    /// both nvkv paths and RocksDB, the durable throughput, YCSB A–F and the durable-log paths (two
    /// each); plus each round's raw sequential write and its embedding runs.
    pub fn steps(&self) -> usize {
        let logs = 2 * (usize::from(self.pmr_log) + usize::from(self.nvdimm_log));
        let per_round = self.value_sizes.len()
            * (3 * self.workloads.len() + 1 + if self.ycsb { 6 } else { 0 } + logs)
            + 1
            + self
                .embed
                .as_ref()
                .map_or(0, crate::embed::EmbedPlan::steps);
        self.rounds * per_round
    }
}

/// What one boot (or one bare-metal run) measures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// PCI address of the controller under test.
    pub device: String,
    pub workloads: Vec<Workload>,
    pub contenders: Vec<Contender>,
    /// Seconds per measurement.
    pub duration_s: f64,
    /// Seconds of warm-up before each measurement.
    pub warmup_s: f64,
    /// Rounds of A B A B alternation.
    pub rounds: usize,
    /// Use shadow doorbells when the controller offers them.
    pub shadow_doorbells: bool,
    /// Give the kernel an identity IOMMU domain (the fair baseline of QEMU.md).
    pub kernel_identity_domain: bool,
    /// The key-value comparison, if any.
    #[serde(default)]
    pub kv: Option<KvPlan>,
}

impl Plan {
    /// Progress steps of the driver part of one boot: each contender on each workload, each round.
    pub fn driver_steps(&self) -> usize {
        let kernel = self.contenders.iter().filter(|c| c.is_kernel()).count();
        let nvkv = usize::from(self.contenders.contains(&Contender::Nvkv));
        self.rounds * self.workloads.len() * (kernel + nvkv)
    }

    /// Progress steps of one boot (the runner numbers its progress lines 1 ..= this).
    pub fn steps(&self) -> usize {
        self.driver_steps() + self.kv.as_ref().map_or(0, KvPlan::steps)
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// (percentile, microseconds) points for a CDF plot.
    pub cdf: Vec<(f64, f64)>,
}

/// One measurement of one contender on one workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    pub contender: Contender,
    pub workload: Workload,
    pub boot: usize,
    pub round: usize,
    pub ios: u64,
    pub seconds: f64,
    pub iops: f64,
    pub mb_per_s: f64,
    pub latency: Latency,
    /// nvkv only: MMIO doorbell writes per I/O.
    pub mmio_writes_per_io: Option<f64>,
    /// nvkv only: shadow doorbell updates per I/O.
    pub shadow_updates_per_io: Option<f64>,
    /// Kernel only: whether the poll queue was really in use (`/sys/block/*/queue/io_poll`).
    pub poll_queue: Option<bool>,
    /// Kernel only: the IOMMU group type the kernel driver ran with.
    pub iommu_domain: Option<String>,
    /// nvkv only: the HdrHistogram interval log (1 s intervals) of this run. The report moves it into a file
    /// beside report.json and keeps the file name in `hdr_log_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hdr_interval_log: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hdr_log_file: Option<String>,
}

/// Percentiles reported for every contender (fio's `--percentile_list` uses the same).
pub const PERCENTILES: &[f64] = &[
    1.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.99,
];

/// Framing of lines the in-guest runner prints, read back by the host.
pub const RESULT_PREFIX: &str = "@@NVKV-RESULT ";
pub const PROGRESS_PREFIX: &str = "@@NVKV-PROGRESS ";
pub const INFO_PREFIX: &str = "@@NVKV-INFO ";
pub const KV_PREFIX: &str = "@@NVKV-KV ";
