//! `nvkv-bench dlog-cost`: what a durable put through the durable log costs on this host, against the
//! floor of what it has to do anyway.
//!
//! Five variants, one shard-local thread, 16 B keys:
//! 1. `copy`: a plain copy of an encoded durable-log record (the bytes the log writes: 64 B record
//!    header, 32 B engine record header, key, value, padded to 8) into a shared mapping of a file,
//!    at successive 8-aligned positions of a circular area, as the log places them;
//! 2. `copy-msync`: the same, then `msync(MS_SYNC)` of the pages the copy touched (what `MappedPmem`'s
//!    `file (msync)` barrier does);
//! 3. `put`: `Shard::put` not durable (index and write buffer), then `Shard::tick`;
//! 4. `durable-mapped`: `Shard::put` durable with the log on a `MappedPmem` file, `flush_durable_log`
//!    (one barrier) after every put, then `tick`;
//! 5. `durable-memory`: the same with the log on a `MemPmemImage` region (in memory with its crash
//!    model: every store and barrier takes the image's mutex, and a barrier copies the stored bytes a
//!    second time, into the persisted copy).
//!
//! The shard is on a `MemDisk` large enough for every write of the run (no GC), with a 1 MiB write
//! buffer and a 10 s commit interval: no cycle starts on the timer. Cycles do start whenever the write
//! buffer fills (every ~1 MiB of records, in 3, 4 and 5 alike: that is part of an ordinary put), and
//! in 4 and 5 also when the log is more than half full (the log asking for its records to be
//! retired); the run counts both. Every file and region is written through once before the run (no
//! first-touch page faults in the figures). Each run is a fresh shard; rounds run every variant once,
//! the order reversed every other round; the figures are best, median and range over the rounds.
//! Instructions per operation come from callgrind as the slope between two run lengths (set-up
//! cancels), as `loopback` does; they count user space only (not the kernel's side of `msync`).

use anyhow::{anyhow, bail, Context, Result};
use nvkv::bdev::MemDisk;
use nvkv::format::{
    dlog_record_len, encode_record, record_len, DlogRecordHeader, DLOG_DATA_START, DLOG_KIND_WRITE,
    DLOG_REC_HDR_LEN,
};
use nvkv::pmem::{MappedPmem, MemPmemImage, PersistentMemory};
use nvkv::{Shard, ShardConfig, ShardStats, WriteOpts};
use serde::Serialize;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Key size of every variant.
pub const KEY_SIZE: usize = 16;
/// Write buffer of the shard.
pub const BUFFER_BYTES: usize = 1 << 20;
/// Commit interval of the shard: long, so that no cycle starts on the timer.
pub const COMMIT_INTERVAL: Duration = Duration::from_secs(10);

/// One thing measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// (1) copy of an encoded record into a mapped file.
    Copy,
    /// (2) the copy plus msync(MS_SYNC) of the touched pages.
    CopyMsync,
    /// (3) nvkv put, not durable.
    Put,
    /// (4) nvkv durable put, log on a MappedPmem file, a barrier after every put.
    DurableMapped,
    /// (5) nvkv durable put, log on a MemPmemImage region, a barrier after every put.
    DurableMemory,
}

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::Copy => "copy",
            Variant::CopyMsync => "copy-msync",
            Variant::Put => "put",
            Variant::DurableMapped => "durable-mapped",
            Variant::DurableMemory => "durable-memory",
        }
    }

    fn number(self) -> usize {
        match self {
            Variant::Copy => 1,
            Variant::CopyMsync => 2,
            Variant::Put => 3,
            Variant::DurableMapped => 4,
            Variant::DurableMemory => 5,
        }
    }

    /// What the figure measures, for the table and the JSON.
    pub fn what(self, record: usize) -> String {
        match self {
            Variant::Copy => {
                format!("copy of a {record} B encoded log record into a mapped /dev/shm file")
            }
            Variant::CopyMsync => "(1) + msync(MS_SYNC) of the touched pages, every write".into(),
            Variant::Put => "nvkv put, not durable (index + write buffer), + tick".into(),
            Variant::DurableMapped => {
                "nvkv durable put, log on MappedPmem /dev/shm file (msync), barrier every put"
                    .into()
            }
            Variant::DurableMemory => {
                "nvkv durable put, log on MemPmemImage (mutex, crash copy), barrier every put"
                    .into()
            }
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Operations per timed run with 100 B values (a quarter of them, at least 1000, with larger values).
    #[arg(long, default_value_t = 200_000)]
    pub ops: u64,
    /// Untimed operations before each timed run, on the same shard or file (a quarter with larger values).
    #[arg(long, default_value_t = 20_000)]
    pub warmup: u64,
    /// Interleaved rounds: each runs every variant once, the order reversed every other round.
    #[arg(long, default_value_t = 7)]
    pub rounds: usize,
    #[arg(long, value_delimiter = ',', default_value = "100,4096")]
    pub value_sizes: Vec<usize>,
    /// Bytes of the log region (and of the floor's mapped file), MiB.
    #[arg(long, default_value_t = 32)]
    pub log_mib: usize,
    /// Where the mapped files go.
    #[arg(long, default_value = "/dev/shm")]
    pub dir: PathBuf,
    /// Leave out variant 5 (the log on MemPmemImage).
    #[arg(long)]
    pub no_memory_image: bool,
    /// Also count instructions per operation with valgrind's callgrind (slow).
    #[arg(long)]
    pub instructions: bool,
    /// Operations of the longer callgrind run with 100 B values (the shorter: a sixth; a quarter of both
    /// with larger values).
    #[arg(long, default_value_t = 60_000)]
    pub callgrind_ops: u64,
    /// Writes the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Runs one variant once, untimed output (used under callgrind).
    #[arg(long, hide = true, value_enum)]
    pub one: Option<Variant>,
}

/// Operations for a value size: `n` for values up to 100 B, a quarter (at least `min`) above.
pub fn scaled(n: u64, value_size: usize, min: u64) -> u64 {
    if value_size <= 100 {
        n
    } else {
        (n / 4).max(min.min(n))
    }
}

/// Bytes of the durable-log record of a write of `value_size` bytes under a 16 B key.
pub fn log_record_bytes(value_size: usize) -> usize {
    dlog_record_len(record_len(KEY_SIZE, value_size))
}

/// Pages `[start, end)` (byte offsets, page-aligned) covering `[off, off + len)`.
pub fn touched_pages(off: usize, len: usize, page: usize) -> (usize, usize) {
    let s = off - off % page;
    let e = (off + len).div_ceil(page) * page;
    (s, e)
}

/// The next record position in a circular area of `cap` bytes: `pos`, or 0 when `len` does not fit
/// before the end (the log pads the end and starts again at the beginning).
pub fn next_pos(pos: usize, len: usize, cap: usize) -> usize {
    if pos + len > cap {
        0
    } else {
        pos
    }
}

/// Median of a slice (sorted in place).
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The key of operation `i`: 16 hex digits of a hash of `i` (random insert order, as `kv::key`).
pub fn key16(i: u64) -> [u8; KEY_SIZE] {
    let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29) ^ i;
    let mut k = [0u8; KEY_SIZE];
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (j, b) in k.iter_mut().enumerate() {
        *b = HEX[((h >> (60 - 4 * j)) & 0xf) as usize];
    }
    k
}

/// An encoded durable-log write record for a 16 B key and `value_size` bytes of value, as the log
/// writes it (header, engine record, zero padding).
pub fn encoded_record(value_size: usize) -> Vec<u8> {
    let payload = record_len(KEY_SIZE, value_size);
    let len = dlog_record_len(payload);
    let mut rec = vec![0u8; len];
    let value = crate::kv::value(1, value_size);
    encode_record(
        &mut rec[DLOG_REC_HDR_LEN..DLOG_REC_HDR_LEN + payload],
        false,
        1,
        1,
        &key16(1),
        &value,
    );
    let h = DlogRecordHeader {
        len: len as u32,
        kind: DLOG_KIND_WRITE,
        lsn: 1,
        epoch: 1,
        volume: [7; 16],
        shard_id: 0,
        payload_len: payload as u32,
        prev: 0,
    };
    let (hb, body) = rec.split_at_mut(DLOG_REC_HDR_LEN);
    h.encode(hb, &body[..payload]);
    rec
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).ok().filter(|&p| p > 0).unwrap_or(4096)
}

/// A file in `dir`, removed on drop.
struct TempFile(PathBuf);
impl TempFile {
    fn new(dir: &Path, what: &str, len: usize) -> Result<Self> {
        let p = dir.join(format!("nvkv-dlog-cost-{}-{what}", std::process::id()));
        let f = std::fs::File::create(&p).with_context(|| format!("creating {}", p.display()))?;
        f.set_len(len as u64)
            .with_context(|| format!("sizing {}", p.display()))?;
        Ok(TempFile(p))
    }
}
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A shared mapping of a whole file (the floor's own, not `MappedPmem`).
struct Mapping {
    ptr: *mut u8,
    len: usize,
    _file: std::fs::File,
}
impl Mapping {
    fn new(path: &Path, len: usize) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: a fresh shared mapping of a file we opened, at an address the kernel picks.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            bail!(
                "mmap of {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(Mapping {
            ptr: p.cast(),
            len,
            _file: file,
        })
    }

    /// `msync(MS_SYNC)` of `[s, e)` (page-aligned, inside the mapping).
    fn msync(&self, s: usize, e: usize) -> Result<()> {
        assert!(s <= e && e <= self.len.div_ceil(page_size()) * page_size());
        // SAFETY: a page-aligned range inside the mapping's pages (asserted).
        let rc = unsafe { libc::msync(self.ptr.add(s).cast(), e - s, libc::MS_SYNC) };
        if rc != 0 {
            bail!("msync: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }
}
impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: exactly what mmap returned; nothing references the mapping any more.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// Engine figures of the timed part of a run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RunCounts {
    /// Persistence cycles completed during the timed part.
    pub cycles: u64,
    pub checkpoints: u64,
    /// Durable writes acknowledged by their log record / by a cycle (log full, too large, failed).
    pub durable_log_writes: u64,
    pub durable_cycle_writes: u64,
    pub durable_log_barriers: u64,
    /// Time inside the barriers (the shard's own clock reads around `PersistentMemory::barrier`).
    pub durable_log_barrier_ns: u64,
    /// Bytes appended to the log and its capacity.
    pub durable_log_appended_bytes: u64,
    pub durable_log_capacity: u64,
}

fn counts(a: &ShardStats, b: &ShardStats) -> RunCounts {
    RunCounts {
        cycles: b.cycles - a.cycles,
        checkpoints: b.checkpoints - a.checkpoints,
        durable_log_writes: b.durable_log_writes - a.durable_log_writes,
        durable_cycle_writes: b.durable_cycle_writes - a.durable_cycle_writes,
        durable_log_barriers: b.durable_log_barriers - a.durable_log_barriers,
        durable_log_barrier_ns: b.durable_log_barrier_ns_total - a.durable_log_barrier_ns_total,
        durable_log_appended_bytes: b.durable_log_appended_bytes - a.durable_log_appended_bytes,
        durable_log_capacity: b.durable_log_capacity,
    }
}

/// Writes every byte of a region once and barriers it (no first-touch faults in the timed part).
fn prefault(m: &mut dyn PersistentMemory) -> Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < m.len() {
        let n = zeros.len().min(m.len() - off);
        m.write(off, &zeros[..n]);
        off += n;
    }
    m.barrier().map_err(|e| anyhow!("prefault barrier: {e}"))
}

/// The floor: `warmup` then `ops` copies of the record (each followed by an msync of its pages with
/// `sync`); returns the seconds of the timed part.
fn copy_run(
    dir: &Path,
    region: usize,
    value_size: usize,
    warmup: u64,
    ops: u64,
    sync: bool,
) -> Result<f64> {
    let rec = encoded_record(value_size);
    let file = TempFile::new(dir, "floor", region)?;
    let map = Mapping::new(&file.0, region)?;
    let page = page_size();
    // Written once through the mapping, then synced: every page is present and mapped writable.
    // SAFETY: inside the mapping.
    unsafe { std::ptr::write_bytes(map.ptr, 0, region) };
    map.msync(0, region.div_ceil(page) * page)?;
    let cap = (region - DLOG_DATA_START) / 8 * 8;
    let mut pos = 0usize;
    let one = |pos: &mut usize| -> Result<()> {
        *pos = next_pos(*pos, rec.len(), cap);
        let off = DLOG_DATA_START + *pos;
        // SAFETY: `off + rec.len() <= DLOG_DATA_START + cap <= region` (next_pos), inside the mapping;
        // `rec` is ordinary memory.
        unsafe {
            std::ptr::copy_nonoverlapping(
                std::hint::black_box(rec.as_ptr()),
                map.ptr.add(off),
                rec.len(),
            )
        };
        if sync {
            let (s, e) = touched_pages(off, rec.len(), page);
            map.msync(s, e)?;
        }
        *pos += rec.len();
        Ok(())
    };
    for _ in 0..warmup {
        one(&mut pos)?;
    }
    let t = Instant::now();
    for _ in 0..ops {
        one(&mut pos)?;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// nvkv on a fresh shard: `warmup` then `ops` puts of new keys (durable with a barrier after each
/// when `log` is given), each followed by `tick`; returns the seconds and counts of the timed part.
fn shard_run(
    log: Option<Box<dyn PersistentMemory>>,
    value_size: usize,
    warmup: u64,
    ops: u64,
) -> Result<(f64, RunCounts)> {
    let durable = log.is_some();
    let total = warmup + ops;
    // Every record twice over, plus room for the reservations and checkpoints: GC never runs.
    let bytes = total * (record_len(KEY_SIZE, value_size) as u64 + 64) * 2;
    let blocks = bytes / 4096 + 16_384;
    let disk = MemDisk::new(4096, blocks);
    let (mut shard, _) = Shard::open_with_log(
        disk.bdev(),
        ShardConfig {
            buffer_bytes: BUFFER_BYTES,
            commit_interval: COMMIT_INTERVAL,
            ..Default::default()
        },
        log,
    )
    .map_err(|e| anyhow!("opening the shard: {e}"))?;
    if durable {
        let s = shard.stats();
        if s.durable_log.is_none() {
            bail!(
                "the durable log did not attach: {}",
                s.durable_log_failed.unwrap_or_default()
            );
        }
    }
    let keys: Vec<[u8; KEY_SIZE]> = (0..total).map(key16).collect();
    let vals: Vec<Vec<u8>> = (0..64).map(|i| crate::kv::value(i, value_size)).collect();
    let opts = WriteOpts { ts: None, durable };
    let one = |shard: &mut Shard<_>, i: usize| -> Result<()> {
        shard
            .put(&keys[i], &vals[i % 64], opts)
            .map_err(|e| anyhow!("put: {e}"))?;
        if durable {
            shard.flush_durable_log();
        }
        shard.tick().map_err(|e| anyhow!("tick: {e}"))?;
        Ok(())
    };
    for i in 0..warmup as usize {
        one(&mut shard, i)?;
    }
    let before = shard.stats();
    let t = Instant::now();
    for i in warmup as usize..total as usize {
        one(&mut shard, i)?;
    }
    let secs = t.elapsed().as_secs_f64();
    let c = counts(&before, &shard.stats());
    if let Some(e) = shard.stats().durable_log_failed {
        bail!("the durable log failed during the run: {e}");
    }
    Ok((secs, c))
}

/// One run of one variant: seconds of the timed part, and the engine's counts.
pub fn run_once(
    v: Variant,
    dir: &Path,
    region: usize,
    value_size: usize,
    warmup: u64,
    ops: u64,
) -> Result<(f64, Option<RunCounts>)> {
    match v {
        Variant::Copy => Ok((copy_run(dir, region, value_size, warmup, ops, false)?, None)),
        Variant::CopyMsync => Ok((copy_run(dir, region, value_size, warmup, ops, true)?, None)),
        Variant::Put => {
            let (s, c) = shard_run(None, value_size, warmup, ops)?;
            Ok((s, Some(c)))
        }
        Variant::DurableMapped => {
            let file = TempFile::new(dir, "log", region)?;
            let mut m = MappedPmem::open(&file.0, 0, region).map_err(|e| anyhow!("{e}"))?;
            if m.kind() != "file (msync)" {
                bail!(
                    "{} maps as {}, not file (msync)",
                    file.0.display(),
                    m.kind()
                );
            }
            prefault(&mut m)?;
            let (s, c) = shard_run(Some(Box::new(m)), value_size, warmup, ops)?;
            Ok((s, Some(c)))
        }
        Variant::DurableMemory => {
            let img = MemPmemImage::new(region);
            let mut m = img.region(0, region);
            prefault(&mut m)?;
            let (s, c) = shard_run(Some(Box::new(m)), value_size, warmup, ops)?;
            Ok((s, Some(c)))
        }
    }
}

/// Instructions of one run under callgrind (user space, the whole process).
fn callgrind(
    exe: &Path,
    a: &Args,
    v: Variant,
    value_size: usize,
    warmup: u64,
    ops: u64,
) -> Result<f64> {
    let out = std::env::temp_dir().join(format!(
        "nvkv-dlog-cost-callgrind-{}-{}-{value_size}-{ops}.out",
        std::process::id(),
        v.name()
    ));
    let status = std::process::Command::new("valgrind")
        .args(["--tool=callgrind", "--quiet"])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(exe)
        .args(["dlog-cost", "--one", v.name()])
        .arg(format!("--value-sizes={value_size}"))
        .arg(format!("--ops={ops}"))
        .arg(format!("--warmup={warmup}"))
        .arg(format!("--log-mib={}", a.log_mib))
        .arg("--dir")
        .arg(&a.dir)
        .status()
        .context("running valgrind (apt-get install valgrind)")?;
    if !status.success() {
        bail!("valgrind failed: {status}");
    }
    let text = std::fs::read_to_string(&out).context("reading the callgrind output")?;
    let _ = std::fs::remove_file(&out);
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .ok_or_else(|| anyhow!("no summary line in the callgrind output"))
}

/// Figures of one variant at one value size.
#[derive(Debug, Clone, Serialize)]
pub struct VariantResult {
    pub variant: Variant,
    pub number: usize,
    pub what: String,
    pub value_size: usize,
    pub key_size: usize,
    /// Bytes of the durable-log record (what 1 and 2 copy, what 4 and 5 append).
    pub record_bytes: usize,
    pub ops_per_run: u64,
    pub warmup_ops: u64,
    /// ns per operation of each round, in round order.
    pub ns_per_op_runs: Vec<f64>,
    pub ns_per_op_best: f64,
    pub ns_per_op_median: f64,
    pub ns_per_op_max: f64,
    /// Instructions per operation (callgrind slope), if measured.
    pub instructions_per_op: Option<f64>,
    /// The engine's counts of the round with the best time (3, 4, 5).
    pub counts_of_best: Option<RunCounts>,
}

/// The log's own cost at one value size: (4) − (3).
#[derive(Debug, Clone, Serialize)]
pub struct LogCost {
    pub value_size: usize,
    /// (4) − (3) per round (the two ran next to each other in each round).
    pub ns_per_op_paired_runs: Vec<f64>,
    pub ns_per_op_paired_median: f64,
    pub ns_per_op_paired_min: f64,
    pub ns_per_op_paired_max: f64,
    /// best (4) − best (3).
    pub ns_per_op_best_minus_best: f64,
    pub instructions_per_op: Option<f64>,
    /// Mean barrier time per durable put in (4)'s best round, as the shard measures it.
    pub barrier_ns_per_op: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub conditions: Conditions,
    pub results: Vec<VariantResult>,
    pub log_cost: Vec<LogCost>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Conditions {
    pub cpu: String,
    pub cpus: usize,
    pub kernel: String,
    pub build: &'static str,
    pub dir: String,
    /// File system of the directory (from /proc/mounts: type and options).
    pub dir_fs: String,
    pub pinned_cpu: Option<usize>,
    pub rounds: usize,
    pub order: &'static str,
    pub region_bytes: usize,
    pub shard: String,
    pub instructions: String,
    pub notes: Vec<String>,
}

/// The mount `path` is on, as "type (options)" from /proc/mounts (the longest mount point prefix).
fn fs_of(path: &Path) -> String {
    let p = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && p.starts_with(f[1]))
                .then(|| (f[1].len(), format!("{} ({}) at {}", f[2], f[3], f[1])))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, s)| s)
        .unwrap_or_else(|| "unknown".into())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Runs the whole measurement (or, with `--one`, one run for callgrind).
pub fn main(a: Args) -> Result<()> {
    let region = a.log_mib << 20;
    if region < DLOG_DATA_START + 4096 {
        bail!("--log-mib too small");
    }
    if let Some(v) = a.one {
        let vs = *a
            .value_sizes
            .first()
            .ok_or_else(|| anyhow!("no value size"))?;
        run_once(v, &a.dir, region, vs, a.warmup, a.ops)?;
        return Ok(());
    }
    let r = measure(&a)?;
    print!("{}", table(&r));
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_vec_pretty(&r)?)
            .with_context(|| format!("writing {}", p.display()))?;
        println!("json: {}", p.display());
    }
    Ok(())
}

fn measure(a: &Args) -> Result<Report> {
    let region = a.log_mib << 20;
    let mut variants = vec![
        Variant::Copy,
        Variant::CopyMsync,
        Variant::Put,
        Variant::DurableMapped,
    ];
    if !a.no_memory_image {
        variants.push(Variant::DurableMemory);
    }
    // Counted before pinning (the affinity mask then holds one CPU).
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let pinned = crate::driver_perf::pin_to_cpu(0).then_some(0);
    let rounds = a.rounds.max(1);
    let exe = std::env::current_exe()?;
    let mut results = Vec::new();
    let mut log_cost = Vec::new();
    for &vs in &a.value_sizes {
        let ops = scaled(a.ops, vs, 1000);
        let warmup = scaled(a.warmup, vs, 0);
        let mut runs: Vec<Vec<(f64, Option<RunCounts>)>> = vec![Vec::new(); variants.len()];
        for round in 0..rounds {
            let order: Vec<usize> = if round % 2 == 0 {
                (0..variants.len()).collect()
            } else {
                (0..variants.len()).rev().collect()
            };
            for i in order {
                eprintln!(
                    "dlog-cost: value {vs} B, round {}/{rounds}, ({}) {}",
                    round + 1,
                    variants[i].number(),
                    variants[i].name()
                );
                let (secs, c) = run_once(variants[i], &a.dir, region, vs, warmup, ops)?;
                runs[i].push((secs * 1e9 / ops as f64, c));
            }
        }
        let mut ins: Vec<Option<f64>> = vec![None; variants.len()];
        if a.instructions {
            let n2 = scaled(a.callgrind_ops, vs, 600);
            let n1 = (n2 / 6).max(1);
            let w = scaled(a.warmup, vs, 0).min(n2);
            for (i, &v) in variants.iter().enumerate() {
                eprintln!(
                    "dlog-cost: value {vs} B, callgrind, ({}) {}, {n1} and {n2} ops",
                    v.number(),
                    v.name()
                );
                let t1 = callgrind(&exe, a, v, vs, w, n1)?;
                let t2 = callgrind(&exe, a, v, vs, w, n2)?;
                ins[i] = Some((t2 - t1) / (n2 - n1) as f64);
            }
        }
        let rec = log_record_bytes(vs);
        for (i, &v) in variants.iter().enumerate() {
            let ns: Vec<f64> = runs[i].iter().map(|r| r.0).collect();
            let best = runs[i]
                .iter()
                .min_by(|x, y| x.0.total_cmp(&y.0))
                .copied()
                .ok_or_else(|| anyhow!("no runs"))?;
            results.push(VariantResult {
                variant: v,
                number: v.number(),
                what: v.what(rec),
                value_size: vs,
                key_size: KEY_SIZE,
                record_bytes: rec,
                ops_per_run: ops,
                warmup_ops: warmup,
                ns_per_op_best: best.0,
                ns_per_op_median: median(&mut ns.clone()),
                ns_per_op_max: ns.iter().copied().fold(f64::MIN, f64::max),
                ns_per_op_runs: ns,
                instructions_per_op: ins[i],
                counts_of_best: best.1,
            });
        }
        let idx = |v: Variant| variants.iter().position(|&x| x == v);
        if let (Some(p), Some(d)) = (idx(Variant::Put), idx(Variant::DurableMapped)) {
            let paired: Vec<f64> = runs[d]
                .iter()
                .zip(&runs[p])
                .map(|(x, y)| x.0 - y.0)
                .collect();
            let best = |i: usize| runs[i].iter().map(|r| r.0).fold(f64::MAX, f64::min);
            let best_d = runs[d].iter().min_by(|x, y| x.0.total_cmp(&y.0));
            log_cost.push(LogCost {
                value_size: vs,
                ns_per_op_paired_median: median(&mut paired.clone()),
                ns_per_op_paired_min: paired.iter().copied().fold(f64::MAX, f64::min),
                ns_per_op_paired_max: paired.iter().copied().fold(f64::MIN, f64::max),
                ns_per_op_paired_runs: paired,
                ns_per_op_best_minus_best: best(d) - best(p),
                instructions_per_op: ins[d].zip(ins[p]).map(|(x, y)| x - y),
                barrier_ns_per_op: best_d.and_then(|r| r.1).map(|c| {
                    c.durable_log_barrier_ns as f64 / c.durable_log_barriers.max(1) as f64
                }),
            });
        }
    }
    let conditions = Conditions {
        cpu: crate::conditions::cpu_model(),
        cpus,
        kernel: kernel(),
        build: if cfg!(debug_assertions) {
            "debug (figures not meaningful)"
        } else {
            "release"
        },
        dir: a.dir.display().to_string(),
        dir_fs: fs_of(&a.dir),
        pinned_cpu: pinned,
        rounds,
        order: "every round runs each variant once; the order is reversed every other round",
        region_bytes: region,
        shard: format!(
            "one shard, shard-local on this thread; MemDisk (4096 B blocks, twice the run's records, no GC, \
             no volatile cache); write buffer {} KiB; commit interval {} s; every put a new key (hashed order); \
             tick() after every put; a fresh shard per run",
            BUFFER_BYTES >> 10,
            COMMIT_INTERVAL.as_secs()
        ),
        instructions: if a.instructions {
            format!(
                "valgrind --tool=callgrind, whole process, user space only, slope between {} and {} ops \
                 (100 B; a quarter for larger values), same warm-up in both",
                (a.callgrind_ops / 6).max(1),
                a.callgrind_ops
            )
        } else {
            "not measured (pass --instructions)".into()
        },
        notes: vec![
            format!(
                "region of the log and of the floor's file: {} MiB, written through once before each run \
                 (no first-touch faults timed); records at 8-aligned positions from byte {DLOG_DATA_START}, \
                 circular, as the log places them",
                a.log_mib
            ),
            "cycles start only when the write buffer fills (every ~1 MiB of records, in (3), (4) and (5) \
             alike) or, in (4) and (5), when the log is more than half full (it asks for retiring): the \
             counts are in the JSON; extra cycles of (4) over (3) are the log's"
                .into(),
            "msync on tmpfs writes nothing back: (2) is the system call and its page-table walk".into(),
            "(5) MemPmemImage takes a mutex on every store and barrier and copies the stored bytes again \
             at the barrier (its crash model)"
                .into(),
            "(6) = (4) − (3) paired per round (they ran next to each other); the shard's clock reads around \
             each barrier are part of (4)"
                .into(),
        ],
    };
    Ok(Report {
        schema: "nvkv-bench/dlog-cost/v1",
        conditions,
        results,
        log_cost,
    })
}

/// The table.
pub fn table(r: &Report) -> String {
    let c = &r.conditions;
    let mut t = String::new();
    t += &format!(
        "durable-log cost per write: {} ({} CPUs, {}), kernel {}, {} build, files on {}: {}\n",
        c.cpu,
        c.cpus,
        match c.pinned_cpu {
            Some(n) => format!("this thread pinned to CPU {n}"),
            None => "not pinned".into(),
        },
        c.kernel,
        c.build,
        c.dir,
        c.dir_fs
    );
    t += &format!("{}\n", c.shard);
    t += &format!(
        "ns/op: best, median and max of {} interleaved rounds ({}); instr/op: {}\n",
        c.rounds, c.order, c.instructions
    );
    let f = |v: Option<f64>| v.map(|x| format!("{x:.0}")).unwrap_or_else(|| "-".into());
    for lc_vs in r
        .results
        .iter()
        .map(|x| x.value_size)
        .fold(Vec::new(), |mut v: Vec<usize>, x| {
            if !v.contains(&x) {
                v.push(x);
            }
            v
        })
    {
        let rows: Vec<&VariantResult> =
            r.results.iter().filter(|x| x.value_size == lc_vs).collect();
        let Some(first) = rows.first() else { continue };
        t += &format!(
            "\n16 B keys, {lc_vs} B values: log record {} B; {} ops per run after {} untimed\n",
            first.record_bytes, first.ops_per_run, first.warmup_ops
        );
        t += &format!(
            "{:<4} {:<82} {:>9} {:>9} {:>9} {:>9} {:>10}\n",
            "", "measured", "best ns", "median", "max", "instr/op", "cycles/1k"
        );
        for x in &rows {
            t += &format!(
                "({})  {:<82} {:>9.1} {:>9.1} {:>9.1} {:>9} {:>10}\n",
                x.number,
                x.what,
                x.ns_per_op_best,
                x.ns_per_op_median,
                x.ns_per_op_max,
                f(x.instructions_per_op),
                x.counts_of_best
                    .map(|c| format!("{:.2}", c.cycles as f64 * 1000.0 / x.ops_per_run as f64))
                    .unwrap_or_else(|| "-".into())
            );
        }
        if let Some(lc) = r.log_cost.iter().find(|l| l.value_size == lc_vs) {
            t += &format!(
                "(6)  {:<82} {:>9.1} {:>9.1} {:>9.1} {:>9} {:>10}\n",
                "the durable log's own cost = (4) − (3), paired per round (best: best(4) − best(3))",
                lc.ns_per_op_best_minus_best,
                lc.ns_per_op_paired_median,
                lc.ns_per_op_paired_max,
                f(lc.instructions_per_op),
                "-"
            );
            t += &format!(
                "     paired (4) − (3) per round: min {:.1}, median {:.1}, max {:.1} ns; of which inside the barrier \
                 (shard's own timing, (4)'s best round): {} ns/op\n",
                lc.ns_per_op_paired_min,
                lc.ns_per_op_paired_median,
                lc.ns_per_op_paired_max,
                lc.barrier_ns_per_op.map(|b| format!("{b:.0}")).unwrap_or_else(|| "-".into())
            );
        }
        for x in &rows {
            if let Some(c) = x.counts_of_best {
                if x.variant != Variant::Put && c.durable_cycle_writes > 0 {
                    t += &format!(
                        "     warning: ({}) {} durable writes went the cycle path (log full or failed)\n",
                        x.number, c.durable_cycle_writes
                    );
                }
            }
        }
    }
    for n in &c.notes {
        t += &format!("note: {n}\n");
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_sizes_match_the_format() {
        // 64 B log header + 32 B engine header + 16 B key + value, padded to 8.
        assert_eq!(log_record_bytes(100), 216);
        assert_eq!(log_record_bytes(4096), 4208);
        assert_eq!(encoded_record(100).len(), 216);
        assert_eq!(&encoded_record(100)[..4], b"NVDL");
    }

    #[test]
    fn pages_and_positions() {
        assert_eq!(touched_pages(256, 216, 4096), (0, 4096));
        assert_eq!(touched_pages(4000, 216, 4096), (0, 8192));
        assert_eq!(touched_pages(4096, 4096, 4096), (4096, 8192));
        assert_eq!(next_pos(0, 216, 1000), 0);
        assert_eq!(next_pos(800, 216, 1000), 0);
        assert_eq!(next_pos(784, 216, 1000), 784);
    }

    #[test]
    fn helpers() {
        assert_eq!(scaled(200_000, 100, 1000), 200_000);
        assert_eq!(scaled(200_000, 4096, 1000), 50_000);
        assert_eq!(scaled(2000, 4096, 1000), 1000);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(key16(5), key16(5));
        assert_ne!(key16(5), key16(6));
        assert!(key16(123).iter().all(|b| b.is_ascii_hexdigit()));
    }
}
