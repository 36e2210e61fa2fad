//! Embedding: libnvkv from C (`bench/c/embed.c`, built here against `libnvkv.a`) against the same
//! workloads through the Rust handle, alternating, on one shard. Each run is a fresh process on a fresh
//! database, for both sides (the Rust side is `nvkv-bench embed-run`). The C program calls `nvkv_put` /
//! `nvkv_get` (or queues `nvkv_batch_*` requests and waits once); the Rust side calls what those calls
//! run on, `DbHandle::put_opts` / `DbHandle::get_into` (or an `api::Client` batch), so the difference is
//! the C ABI's own cost: the handle lookup, the pointer checks, the panic guard, the copy of a value
//! into the caller's buffer.
//!
//! Workloads, in this order on one database per run: fillrandom (every key once, split between the client
//! threads), readrandom and mix50 (uniform keys; half gets, half overwrites) for a fixed time. Keys,
//! values and random sequences are the same on both sides.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use nvkv::bdev::MemDisk;
use nvkv::{Db, DbHandle, Options, WriteOpts};
use serde::{Deserialize, Serialize};

use crate::kv::{key, value, KvMeasurement, Rng};
use crate::plan::Latency;

/// Which interface a run drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The C program through libnvkv.
    C,
    /// The Rust handle (`nvkv-bench embed-run`).
    Rust,
}

impl Side {
    /// The `system` its run program names itself with.
    fn child(self) -> &'static str {
        match self {
            Side::C => "nvkv-c",
            Side::Rust => "nvkv-rust",
        }
    }

    /// The `system` of its measurements.
    pub fn system(self) -> &'static str {
        match self {
            Side::C => "embed-c",
            Side::Rust => "embed-rust",
        }
    }
}

/// Where the database lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A RAM disk.
    Memory,
    /// A file (O_DIRECT where the filesystem has it).
    File,
    /// An NVMe controller through nvkv's driver (needs vfio-pci; in the VM).
    Nvme,
}

/// One configuration of a run.
#[derive(Debug, Clone)]
pub struct Config {
    pub backend: Backend,
    /// File path or PCI address (file and nvme backends).
    pub path: Option<PathBuf>,
    pub threads: usize,
    /// Requests per batch (1: one call per request).
    pub batch: usize,
    pub keys: u64,
    pub value_size: usize,
    pub seconds: f64,
    /// Bytes of the memory disk or the file.
    pub size: u64,
}

const KEY_SIZE: usize = 16;

impl Config {
    /// The `workload` name of a measurement: batched runs carry their batch size.
    pub fn workload(&self, name: &str) -> String {
        if self.batch > 1 {
            format!("{name}-batch{}", self.batch)
        } else {
            name.to_string()
        }
    }

    /// The conditions of a measurement, for its `path`.
    pub fn path_label(&self, side: Side) -> String {
        let how = match side {
            Side::C => "libnvkv.a from C (nvkv_put/nvkv_get, nvkv_batch_*)",
            Side::Rust => "Rust DbHandle (put_opts/get_into, Client batches)",
        };
        let backend = match self.backend {
            Backend::Memory => "memory backend".to_string(),
            Backend::File => format!(
                "file backend ({})",
                self.path.as_deref().unwrap_or(Path::new("?")).display()
            ),
            Backend::Nvme => "nvme backend (nvkv's driver)".to_string(),
        };
        let batch = if self.batch > 1 {
            format!("batches of {}", self.batch)
        } else {
            "one request per call".into()
        };
        format!(
            "{how}, {backend}, 1 shard (pinned, busy-polling), {} client thread(s), {batch}",
            self.threads
        )
    }
}

/// A workload of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    Fill,
    Read,
    Mix,
}

impl Work {
    const ALL: [Work; 3] = [Work::Fill, Work::Read, Work::Mix];

    fn name(self) -> &'static str {
        match self {
            Work::Fill => "fillrandom",
            Work::Read => "readrandom",
            Work::Mix => "mix50",
        }
    }
}

/// One request: the key, the value's index (writes), whether it is a read. The same sequence as the C
/// program's `next_req`.
fn next_req(w: Work, rng: &mut Rng, keys: u64, fill_next: u64) -> (u64, u64, bool) {
    match w {
        Work::Fill => (fill_next, fill_next, false),
        Work::Read => (rng.below(keys), 0, true),
        Work::Mix => {
            let k = rng.below(keys);
            let read = rng.below(100) < 50;
            (k, k ^ 1, read)
        }
    }
}

fn hist() -> Result<Histogram<u64>> {
    Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3).map_err(|e| anyhow!("{e:?}"))
}

fn open(c: &Config) -> Result<Db> {
    let mut o = match c.backend {
        Backend::Memory => Options::memory(MemDisk::new(4096, c.size / 4096)),
        Backend::File => {
            let p = c.path.clone().context("file backend needs a path")?;
            Options::file(p, Some(c.size))
        }
        Backend::Nvme => {
            let addr = c
                .path
                .as_ref()
                .context("nvme backend needs a PCI address")?;
            let addr = addr.to_string_lossy();
            let factory = nvkv::bdev::NvmeFactory::open(&addr, 1).map_err(|e| anyhow!("{e}"))?;
            let mut o = Options::file(format!("nvme:{addr}"), None);
            set(&mut o);
            return Ok(Db::open_with(o, std::sync::Arc::new(factory))?);
        }
    };
    set(&mut o);
    Ok(Db::open(o)?)
}

/// The options both sides open with: one shard, pinned and busy-polling, formatting a blank device.
fn set(o: &mut Options) {
    o.shards = 1;
    o.create = true;
    o.pin_threads = true;
    o.busy_poll = true;
}

/// The three workloads through the Rust handle on a fresh database, in this process; one record per
/// workload, as the C program prints them. `nvkv-bench embed-run` calls it in a process of its own.
pub fn rust_workloads(c: &Config) -> Result<Vec<RunLine>> {
    let db = open(c)?;
    let h = db.handle();
    let keys: Vec<Vec<u8>> = (0..c.keys).map(|i| key(i, KEY_SIZE)).collect();
    let values: Vec<Vec<u8>> = (0..256).map(|i| value(i, c.value_size)).collect();
    let mut out = Vec::new();
    for w in Work::ALL {
        let start = Barrier::new(c.threads + 1);
        let (ops, secs, lat) = std::thread::scope(|s| -> Result<(u64, f64, Histogram<u64>)> {
            let workers: Vec<_> = (0..c.threads)
                .map(|t| {
                    let (h, keys, values, start) = (h.clone(), &keys, &values, &start);
                    s.spawn(move || rust_worker(c, w, t, &h, keys, values, start))
                })
                .collect();
            start.wait();
            let t0 = Instant::now();
            let mut total = hist()?;
            let mut ops = 0;
            for wk in workers {
                let (n, hh) = wk
                    .join()
                    .unwrap_or_else(|_| Err(anyhow!("worker panicked")))?;
                ops += n;
                total.add(&hh).map_err(|e| anyhow!("{e:?}"))?;
            }
            Ok((ops, t0.elapsed().as_secs_f64(), total))
        })?;
        let ns = |q: f64| lat.value_at_quantile(q) as f64;
        out.push(RunLine {
            system: Side::Rust.child().into(),
            workload: w.name().into(),
            threads: c.threads,
            batch: c.batch,
            ops,
            seconds: secs,
            p50_ns: ns(0.5),
            p99_ns: ns(0.99),
            p999_ns: ns(0.999),
            max_ns: lat.max() as f64,
        });
    }
    db.close()?;
    Ok(out)
}

fn rust_worker(
    c: &Config,
    w: Work,
    t: usize,
    h: &DbHandle,
    keys: &[Vec<u8>],
    values: &[Vec<u8>],
    start: &Barrier,
) -> Result<(u64, Histogram<u64>)> {
    let per = c.keys / c.threads as u64;
    let first = t as u64 * per;
    let mut rng = Rng(t as u64 + if w == Work::Mix { 99 } else { 7 });
    let mut lat = hist()?;
    let mut buf = Vec::with_capacity(c.value_size + 1);
    let mut client = (c.batch > 1).then(|| h.client());
    let value_of = |i: u64| &values[(i % 256) as usize][..];
    let check = |k: u64, len: Option<usize>| match len {
        Some(n) if n == c.value_size => Ok(()),
        got => Err(anyhow!("key {k}: {got:?} bytes, expected {}", c.value_size)),
    };
    start.wait();
    let end = Instant::now() + Duration::from_secs_f64(c.seconds);
    let mut done = 0u64;
    loop {
        if if w == Work::Fill {
            done >= per
        } else {
            Instant::now() >= end
        } {
            break;
        }
        let s = Instant::now();
        match client.as_mut() {
            None => {
                let (k, v, read) = next_req(w, &mut rng, c.keys, first + done);
                let kb = &keys[k as usize];
                if read {
                    let m = h.get_into(kb, &mut buf)?;
                    check(k, m.map(|_| buf.len()))?;
                } else {
                    h.put_opts(kb, value_of(v), WriteOpts::default())?;
                }
                done += 1;
            }
            Some(cl) => {
                let n = if w == Work::Fill {
                    (c.batch as u64).min(per - done) as usize
                } else {
                    c.batch
                };
                for i in 0..n {
                    let (k, v, read) = next_req(w, &mut rng, c.keys, first + done + i as u64);
                    let kb = &keys[k as usize];
                    if read {
                        cl.batch_get(kb);
                    } else {
                        cl.batch_put(kb, value_of(v), WriteOpts::default());
                    }
                }
                cl.batch_wait();
                for i in 0..n {
                    match cl.batch_answer(i) {
                        Some(Ok(nvkv::api::Answer::Value(Some((v, _))))) => {
                            check(i as u64, Some(v.len()))?
                        }
                        Some(Ok(nvkv::api::Answer::Value(None))) => {
                            bail!("a batched get found nothing")
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(e.into()),
                        None => bail!("request {i} unanswered after the batch's wait"),
                    }
                }
                cl.batch_clear();
                done += n as u64;
            }
        }
        // Bounds 1 ns .. 600 s: a longer call would be a hang, which the harness reports anyway.
        let _ = lat.record((s.elapsed().as_nanos() as u64).max(1));
    }
    Ok((done, lat))
}

fn measurement(
    c: &Config,
    side: Side,
    work: &str,
    ops: u64,
    seconds: f64,
    latency: Latency,
    round: usize,
) -> KvMeasurement {
    KvMeasurement {
        system: side.system().into(),
        workload: c.workload(work),
        path: c.path_label(side),
        key_size: KEY_SIZE,
        value_size: c.value_size,
        keys: c.keys,
        threads: c.threads,
        ops,
        seconds,
        ops_per_s: ops as f64 / seconds.max(1e-9),
        mb_per_s: None,
        latency,
        boot: 0,
        round,
        engine: None,
    }
}

/// What a run prints per workload (the C program and `nvkv-bench embed-run` alike).
#[derive(Debug, Serialize, Deserialize)]
pub struct RunLine {
    pub system: String,
    pub workload: String,
    pub threads: usize,
    pub batch: usize,
    pub ops: u64,
    pub seconds: f64,
    pub p50_ns: f64,
    pub p99_ns: f64,
    pub p999_ns: f64,
    pub max_ns: f64,
}

impl Config {
    /// The arguments both run programs take.
    fn args(&self, cmd: &mut Command) {
        let backend = match self.backend {
            Backend::Memory => "memory",
            Backend::File => "file",
            Backend::Nvme => "nvme",
        };
        cmd.args(["--backend", backend, "--busy-poll"])
            .args(["--threads", &self.threads.to_string()])
            .args(["--batch", &self.batch.to_string()])
            .args(["--keys", &self.keys.to_string()])
            .args(["--value-size", &self.value_size.to_string()])
            .args(["--seconds", &self.seconds.to_string()])
            .args(["--size", &self.size.to_string()]);
        if let Some(p) = &self.path {
            cmd.arg("--path").arg(p);
        }
    }
}

/// The three workloads of `side` on a fresh database, in a fresh process: the C program (`c_bin`) or this
/// executable's `embed-run`. Both sides pay the same process start, page faults and allocator warm-up.
pub fn run(side: Side, c_bin: &Path, c: &Config, round: usize) -> Result<Vec<KvMeasurement>> {
    let mut cmd = match side {
        Side::C => Command::new(c_bin),
        Side::Rust => {
            let mut cmd =
                Command::new(std::env::current_exe().context("finding the nvkv-bench executable")?);
            cmd.arg("embed-run");
            cmd
        }
    };
    c.args(&mut cmd);
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut ms = Vec::new();
    for line in text.lines().filter(|l| l.starts_with('{')) {
        let l: RunLine =
            serde_json::from_str(line).with_context(|| format!("run output {line:?}"))?;
        if l.system != side.child() || l.threads != c.threads || l.batch != c.batch {
            bail!("output of another run: {line}");
        }
        let lat = Latency {
            p50_us: l.p50_ns / 1000.0,
            p99_us: l.p99_ns / 1000.0,
            p999_us: l.p999_ns / 1000.0,
            max_us: l.max_ns / 1000.0,
            cdf: Vec::new(),
        };
        ms.push(measurement(
            c,
            side,
            &l.workload,
            l.ops,
            l.seconds,
            lat,
            round,
        ));
    }
    if ms.len() != Work::ALL.len() {
        bail!("{cmd:?} printed {} results, expected 3:\n{text}", ms.len());
    }
    Ok(ms)
}

/// The workspace's root (this crate is `bench/`).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Cargo's target directory (`CARGO_TARGET_DIR`, else the workspace's `target/`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// Builds libnvkv (release) and the C program against `libnvkv.a`, into `dir`; the program's path.
pub fn build_c(dir: &Path) -> Result<PathBuf> {
    let root = workspace();
    let prefix = dir.join("libnvkv");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let st = Command::new("sh")
        .arg(root.join("engine/capi/install.sh"))
        .arg(&prefix)
        .status()
        .context("running engine/capi/install.sh")?;
    if !st.success() {
        bail!("engine/capi/install.sh failed ({st})");
    }
    let pc = Command::new("pkg-config")
        .args(["--cflags", "--libs", "--static", "nvkv-static"])
        .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"))
        .output()
        .context("running pkg-config (apt-get install pkg-config)")?;
    if !pc.status.success() {
        bail!(
            "pkg-config nvkv-static: {}",
            String::from_utf8_lossy(&pc.stderr)
        );
    }
    let flags = String::from_utf8_lossy(&pc.stdout).into_owned();
    let bin = dir.join("nvkv-embed-bench");
    let st = Command::new("cc")
        .args(["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-pthread"])
        .arg(root.join("bench/c/embed.c"))
        .arg("-o")
        .arg(&bin)
        .args(flags.split_whitespace())
        .status()
        .context("running cc")?;
    if !st.success() {
        bail!("compiling bench/c/embed.c failed ({st})");
    }
    Ok(bin)
}

/// Makes the next run's database fresh on the host: the file backend's file is removed (the memory
/// backend is fresh anyway).
pub fn fresh_on_host(c: &Config) -> Result<()> {
    if let (Backend::File, Some(p)) = (c.backend, &c.path) {
        match std::fs::remove_file(p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", p.display()))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Runs every configuration `rounds` times, C and Rust alternating (C first in even rounds); `fresh`
/// readies a blank device before each run.
pub fn compare(
    bin: &Path,
    configs: &[Config],
    rounds: std::ops::Range<usize>,
    fresh: &dyn Fn(&Config) -> Result<()>,
    mut step: impl FnMut(&str),
) -> Result<Vec<KvMeasurement>> {
    let mut all = Vec::new();
    for round in rounds {
        for c in configs {
            let order = if round % 2 == 0 {
                [Side::C, Side::Rust]
            } else {
                [Side::Rust, Side::C]
            };
            for side in order {
                step(&format!(
                    "embed round {} {:?} {} thread(s) batch {} {}",
                    round + 1,
                    c.backend,
                    c.threads,
                    c.batch,
                    side.system()
                ));
                fresh(c)?;
                all.extend(run(side, bin, c, round)?);
            }
        }
    }
    Ok(all)
}

/// The comparison in the VM, on the key-value controller through nvkv's driver (part of [`KvPlan`]).
///
/// [`KvPlan`]: crate::plan::KvPlan
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbedPlan {
    /// The C program in the guest.
    pub bin: String,
    pub threads: Vec<usize>,
    pub batch: Vec<usize>,
    pub keys: u64,
    pub value_size: usize,
    pub seconds: f64,
}

impl EmbedPlan {
    /// Its configurations on `backend` (`path`: the file or the PCI address).
    pub fn configs(&self, backend: Backend, path: Option<PathBuf>) -> Vec<Config> {
        let mut out = Vec::new();
        for &threads in &self.threads {
            for &batch in &self.batch {
                out.push(Config {
                    backend,
                    path: path.clone(),
                    threads,
                    batch,
                    keys: self.keys,
                    value_size: self.value_size,
                    seconds: self.seconds,
                    size: 512 << 20,
                });
            }
        }
        out
    }

    /// Runs per round (both sides of each configuration).
    pub fn steps(&self) -> usize {
        2 * self.threads.len() * self.batch.len()
    }
}

/// A row of the comparison: one workload and configuration, both sides' medians.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub workload: String,
    pub backend: String,
    pub threads: usize,
    pub samples: usize,
    pub c_ops_per_s: f64,
    pub rust_ops_per_s: f64,
    /// C over Rust (1.0: the C ABI costs nothing; the target is >= 0.9).
    pub ratio: f64,
    pub c_p50_us: f64,
    pub rust_p50_us: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The backend a measurement's path names.
fn backend_of(path: &str) -> String {
    ["memory", "file", "nvme"]
        .into_iter()
        .find(|b| path.contains(&format!("{b} backend")))
        .unwrap_or("?")
        .to_string()
}

/// Medians per workload, backend and thread count, C beside Rust.
pub fn rows(ms: &[KvMeasurement]) -> Vec<Row> {
    let mut keys: Vec<(String, String, usize)> = Vec::new();
    for m in ms {
        let k = (backend_of(&m.path), m.workload.clone(), m.threads);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.into_iter()
        .map(|(backend, workload, threads)| {
            let of = |sys: &str| -> Vec<&KvMeasurement> {
                ms.iter()
                    .filter(|m| {
                        m.system == sys
                            && m.workload == workload
                            && m.threads == threads
                            && backend_of(&m.path) == backend
                    })
                    .collect()
            };
            let (c, r) = (of(Side::C.system()), of(Side::Rust.system()));
            let ops = |v: &[&KvMeasurement]| median(v.iter().map(|m| m.ops_per_s).collect());
            let p50 = |v: &[&KvMeasurement]| median(v.iter().map(|m| m.latency.p50_us).collect());
            Row {
                samples: c.len().min(r.len()),
                c_ops_per_s: ops(&c),
                rust_ops_per_s: ops(&r),
                ratio: ops(&c) / ops(&r),
                c_p50_us: p50(&c),
                rust_p50_us: p50(&r),
                workload,
                backend,
                threads,
            }
        })
        .collect()
}

/// The comparison as a text table.
pub fn table(rows: &[Row]) -> String {
    let mut s = format!(
        "{:<22} {:<7} {:>3} {:>12} {:>12} {:>6} {:>9} {:>9} {:>3}\n",
        "workload", "backend", "thr", "C ops/s", "Rust ops/s", "C/Rust", "C p50", "Rust p50", "n"
    );
    for r in rows {
        s += &format!(
            "{:<22} {:<7} {:>3} {:>12.0} {:>12.0} {:>6.2} {:>7.2}us {:>7.2}us {:>3}\n",
            r.workload,
            r.backend,
            r.threads,
            r.c_ops_per_s,
            r.rust_ops_per_s,
            r.ratio,
            r.c_p50_us,
            r.rust_p50_us,
            r.samples
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Rust side draws the same requests as the C program's `next_req` (checked against values
    /// computed by hand from xorshift64*: the first key of a read run with seed 7 over 1000 keys).
    #[test]
    fn request_sequences_are_the_c_programs() {
        let mut r = Rng(7);
        let first = next_req(Work::Read, &mut r, 1000, 0);
        let mut x: u64 = 7;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        assert_eq!(
            first,
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) % 1000, 0, true)
        );
        assert_eq!(next_req(Work::Fill, &mut r, 1000, 42), (42, 42, false));
    }

    #[test]
    fn rows_pair_the_sides_and_take_medians() {
        let c = Config {
            backend: Backend::Memory,
            path: None,
            threads: 1,
            batch: 1,
            keys: 10,
            value_size: 100,
            seconds: 1.0,
            size: 1 << 20,
        };
        let m = |side, ops: f64| {
            measurement(
                &c,
                side,
                "readrandom",
                ops as u64,
                1.0,
                Latency::default(),
                0,
            )
        };
        let ms = vec![
            m(Side::C, 90.0),
            m(Side::Rust, 100.0),
            m(Side::C, 80.0),
            m(Side::Rust, 100.0),
            m(Side::C, 100.0),
            m(Side::Rust, 120.0),
        ];
        let rows = rows(&ms);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].samples, 3);
        assert_eq!(rows[0].c_ops_per_s, 90.0);
        assert_eq!(rows[0].rust_ops_per_s, 100.0);
        assert!((rows[0].ratio - 0.9).abs() < 1e-9);
        assert_eq!(rows[0].backend, "memory");
    }
}
