//! Key-value workloads: nvkv (shard-local and through the handle, YCSB A–F, durable puts) and RocksDB's
//! `db_bench` with the same key and value sizes, key counts and thread counts.

use crate::driver_perf::latency_of;
use crate::plan::Latency;
use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use nvkv::{DbHandle, WriteOpts};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, Instant};

/// One KV measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KvMeasurement {
    /// "nvkv" (shard-local), "nvkv-handle" (through a DbHandle), "rocksdb" or "device" (raw writes).
    pub system: String,
    /// fillrandom, readrandom, mix50, mix95, durable_put, ycsb-a ... (see [`Workload`]).
    pub workload: String,
    /// Access path and device, e.g. "handle, nvme backend" or "db_bench on ext4, kernel nvme (identity domain)".
    pub path: String,
    pub key_size: usize,
    pub value_size: usize,
    pub keys: u64,
    pub threads: usize,
    pub ops: u64,
    pub seconds: f64,
    pub ops_per_s: f64,
    /// Bytes per second of user data (keys and values) for write-throughput workloads; of the device's
    /// data for raw device runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mb_per_s: Option<f64>,
    pub latency: Latency,
    pub boot: usize,
    pub round: usize,
    /// nvkv's persistence work during this run (all shards), to tell device time from engine time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineWork>,
}

/// What nvkv's shards spent on persistence during one run: differences of [`nvkv::ShardStats`] taken
/// before and after it, summed over shards (the maxima are since the database was opened).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EngineWork {
    /// Persistence cycles (segments written and published).
    pub cycles: u64,
    /// Flushes (each covers every segment written before it).
    pub flushes: u64,
    /// Mean and longest segment write, submission to completion (µs).
    pub write_mean_us: f64,
    pub write_max_us: f64,
    /// Mean and longest Flush (µs).
    pub flush_mean_us: f64,
    pub flush_max_us: f64,
    /// Checkpoints written, the time they took in total and the longest (ms; the shard does nothing else
    /// meanwhile).
    pub checkpoints: u64,
    pub checkpoint_total_ms: f64,
    pub checkpoint_max_ms: f64,
    /// Segments cleaned by GC.
    pub gc_segments: u64,
    /// Mean and longest seal of a full buffer into a segment write (µs): the shard's own work on the
    /// path of the write that filled the buffer.
    #[serde(default)]
    pub seal_mean_us: f64,
    #[serde(default)]
    pub seal_max_us: f64,
    /// Writes that waited for the device to take a segment (every cycle slot busy), and the longest
    /// such wait (µs).
    #[serde(default)]
    pub device_waits: u64,
    #[serde(default)]
    pub device_wait_max_us: f64,
    /// Durable writes acknowledged by the durable log, and by a persistence cycle.
    #[serde(default)]
    pub durable_by_log: u64,
    #[serde(default)]
    pub durable_by_cycle: u64,
}

impl EngineWork {
    /// The work done between two snapshots of every shard's stats.
    pub fn between(before: &[nvkv::ShardStats], after: &[nvkv::ShardStats]) -> EngineWork {
        let sum = |f: fn(&nvkv::ShardStats) -> u64| -> u64 {
            let (a, b): (u64, u64) = (after.iter().map(f).sum(), before.iter().map(f).sum());
            a.saturating_sub(b)
        };
        let max =
            |f: fn(&nvkv::ShardStats) -> u64| -> u64 { after.iter().map(f).max().unwrap_or(0) };
        let cycles = sum(|s| s.cycles);
        let flushes = sum(|s| s.flushes);
        let mean = |total: u64, n: u64| {
            if n == 0 {
                0.0
            } else {
                total as f64 / n as f64 / 1e3
            }
        };
        EngineWork {
            cycles,
            flushes,
            write_mean_us: mean(sum(|s| s.write_ns_total), cycles),
            write_max_us: max(|s| s.write_ns_max) as f64 / 1e3,
            flush_mean_us: mean(sum(|s| s.flush_ns_total), flushes),
            flush_max_us: max(|s| s.flush_ns_max) as f64 / 1e3,
            checkpoints: sum(|s| s.checkpoints),
            checkpoint_total_ms: sum(|s| s.checkpoint_ns_total) as f64 / 1e6,
            checkpoint_max_ms: max(|s| s.checkpoint_ns_max) as f64 / 1e6,
            gc_segments: sum(|s| s.gc_segments),
            seal_mean_us: mean(sum(|s| s.seal_ns_total), sum(|s| s.seals)),
            seal_max_us: max(|s| s.seal_ns_max) as f64 / 1e3,
            device_waits: sum(|s| s.device_waits),
            device_wait_max_us: max(|s| s.device_wait_ns_max) as f64 / 1e3,
            durable_by_log: sum(|s| s.durable_log_writes),
            durable_by_cycle: sum(|s| s.durable_cycle_writes),
        }
    }
}

/// Key i as a fixed-size key: the index scrambled (so inserts are in random order) and hex-printed.
pub fn key(i: u64, size: usize) -> Vec<u8> {
    let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29) ^ i;
    let mut k = format!("{h:016x}").into_bytes();
    k.resize(size.max(1), b'k');
    k
}

/// A value of `size` bytes that encodes `i` (so a read can be checked).
pub fn value(i: u64, size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size];
    for (j, b) in v.iter_mut().enumerate() {
        *b = (i as u8).wrapping_add(j as u8).wrapping_mul(31);
    }
    v
}

/// xorshift64*: cheap and deterministic.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);
impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// YCSB's Zipfian generator (Gray et al., "Quickly generating billion-record synthetic databases"), items
/// 0..n with constant theta; `next` returns a rank, which callers scramble so hot keys are spread.
#[derive(Debug, Clone)]
pub struct Zipf {
    n: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

impl Zipf {
    pub fn new(n: u64, theta: f64) -> Self {
        let zeta = |n: u64| (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zetan = zeta(n);
        let zeta2 = zeta(2);
        let alpha = 1.0 / (1.0 - theta);
        let eta = (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan);
        Self {
            n,
            theta,
            alpha,
            zetan,
            eta,
        }
    }
    pub fn next(&self, rng: &mut Rng) -> u64 {
        let u = rng.unit();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        ((self.n as f64) * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64 % self.n
    }
}

/// Key-popularity distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dist {
    Uniform,
    Zipfian,
}

/// The workloads both systems run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Workload {
    /// Insert every key once, in random order.
    FillRandom,
    /// Read existing keys, uniformly.
    ReadRandom,
    /// Reads and overwrites of existing keys, `read_percent` reads (50: YCSB A's mix, 95: YCSB B's).
    Mix { read_percent: u32 },
    /// One client, each put acknowledged only once durable (RocksDB `--sync=1`).
    DurablePut,
    /// Durable-write throughput: one client keeps [`DURABLE_WINDOW`] durable puts in flight (a batch through
    /// the handle, answered when the persistence cycle covering it completes: group commit).
    DurableThroughput,
    /// YCSB core workload A–F.
    Ycsb { which: char, dist: Dist },
}

impl Workload {
    pub fn name(&self) -> String {
        match self {
            Workload::FillRandom => "fillrandom".into(),
            Workload::ReadRandom => "readrandom".into(),
            Workload::Mix { read_percent } => format!("mix{read_percent}"),
            Workload::DurablePut => "durable_put".into(),
            Workload::DurableThroughput => "durable_throughput".into(),
            Workload::Ycsb { which, dist } => {
                format!(
                    "ycsb-{}-{}",
                    which.to_ascii_lowercase(),
                    if *dist == Dist::Zipfian {
                        "zipf0.99"
                    } else {
                        "uniform"
                    }
                )
            }
        }
    }
}

fn hist() -> Result<Histogram<u64>> {
    Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3).map_err(|e| anyhow!("{e:?}"))
}

/// Runs `op` on `threads` threads until `ops_per_thread` each are done or `limit` passes; op(thread, i)
/// does one operation. Returns (ops, seconds, latency histogram in ns).
fn drive(
    threads: usize,
    ops_per_thread: u64,
    limit: Duration,
    op: impl Fn(usize, u64) -> Result<()> + Sync,
) -> Result<(u64, f64, Histogram<u64>)> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let start = Instant::now();
    let results: Vec<Result<(u64, Histogram<u64>)>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let op = &op;
                s.spawn(move || -> Result<(u64, Histogram<u64>)> {
                    // Clients take the last CPUs: the engine pins its shard threads to the first ones.
                    crate::driver_perf::pin_to_cpu(cpus.saturating_sub(1 + t) % cpus.max(1));
                    let mut h = hist()?;
                    let mut n = 0;
                    while n < ops_per_thread && start.elapsed() < limit {
                        let t0 = Instant::now();
                        op(t, n)?;
                        let _ = h.record((t0.elapsed().as_nanos() as u64).max(1));
                        n += 1;
                    }
                    Ok((n, h))
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("worker panicked"))))
            .collect()
    });
    let secs = start.elapsed().as_secs_f64();
    let mut total = hist()?;
    let mut ops = 0;
    for r in results {
        let (n, h) = r?;
        ops += n;
        total.add(&h).map_err(|e| anyhow!("{e:?}"))?;
    }
    Ok((ops, secs, total))
}

/// Parameters shared by both systems.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct KvSpec {
    pub key_size: usize,
    pub value_size: usize,
    pub keys: u64,
    pub threads: usize,
    /// Upper bound per run (fills stop at `keys`).
    pub duration_s: f64,
}

/// A read of key `k` found a value of `got` bytes (None: missing); `expected` bytes were written.
fn check_value(k: u64, got: Option<usize>, expected: usize) -> Result<()> {
    match got {
        Some(n) if n == expected => Ok(()),
        Some(n) => bail!("key {k}: value of {n} bytes, expected {expected}"),
        None => bail!("key {k} missing"),
    }
}

/// Runs workload `w` on nvkv through the handle. The database must hold keys 0..keys for reads and mixes
/// (run FillRandom first).
pub fn nvkv_run(h: &DbHandle, w: Workload, s: &KvSpec) -> Result<(u64, f64, Histogram<u64>)> {
    let limit = Duration::from_secs_f64(s.duration_s);
    let per_thread = s.keys / s.threads as u64;
    let check = |k: u64, got: Option<Vec<u8>>| check_value(k, got.map(|v| v.len()), s.value_size);
    match w {
        // A fill writes every key once, however long it takes: the reads after it need them all.
        Workload::FillRandom => drive(s.threads, per_thread, Duration::from_secs(3600), |t, i| {
            let k = t as u64 * per_thread + i;
            h.put(&key(k, s.key_size), &value(k, s.value_size))?;
            Ok(())
        }),
        Workload::ReadRandom => {
            let rngs: Vec<std::sync::Mutex<Rng>> = (0..s.threads)
                .map(|t| std::sync::Mutex::new(Rng(t as u64 + 7)))
                .collect();
            drive(s.threads, u64::MAX, limit, |t, _| {
                let k = rngs[t]
                    .lock()
                    .map_err(|_| anyhow!("rng poisoned"))?
                    .below(s.keys);
                check(k, h.get(&key(k, s.key_size))?)
            })
        }
        Workload::Mix { read_percent } => {
            let rngs: Vec<std::sync::Mutex<Rng>> = (0..s.threads)
                .map(|t| std::sync::Mutex::new(Rng(t as u64 + 99)))
                .collect();
            drive(s.threads, u64::MAX, limit, |t, _| {
                let (k, read) = {
                    let mut r = rngs[t].lock().map_err(|_| anyhow!("rng poisoned"))?;
                    (r.below(s.keys), r.below(100) < read_percent as u64)
                };
                if read {
                    check(k, h.get(&key(k, s.key_size))?)
                } else {
                    h.put(&key(k, s.key_size), &value(k ^ 1, s.value_size))?;
                    Ok(())
                }
            })
        }
        Workload::DurablePut => drive(1, u64::MAX, limit, |_, i| {
            let k = s.keys + i;
            h.put_opts(
                &key(k, s.key_size),
                &value(k, s.value_size),
                WriteOpts {
                    ts: None,
                    durable: true,
                },
            )?;
            Ok(())
        }),
        Workload::Ycsb { which, dist } => ycsb(h, which, dist, s),
        Workload::DurableThroughput => durable_throughput(h, s, limit),
    }
}

/// Runs workload `w` on a shard this thread owns: the engine's shard-per-core use, where the application's
/// loop runs on the shard's core and polls the device between operations (as an SPDK application's reactor
/// does), with no thread hop per operation — the way db_bench calls RocksDB. After each operation the loop
/// calls [`nvkv::Shard::tick`] (reap completions, start due persistence cycles), which is what the shard
/// thread of the handle path does between requests. The shard must hold keys 0..keys for reads and mixes.
pub fn nvkv_local_run<D: nvkv::bdev::BlockDevice>(
    shard: &mut nvkv::Shard<D>,
    w: Workload,
    s: &KvSpec,
) -> Result<(u64, f64, Histogram<u64>)> {
    let (ops, limit) = match w {
        Workload::FillRandom => (s.keys, Duration::from_secs(3600)),
        Workload::ReadRandom | Workload::Mix { .. } | Workload::DurablePut => {
            (u64::MAX, Duration::from_secs_f64(s.duration_s))
        }
        _ => bail!("{} runs through the handle only", w.name()),
    };
    let mut rng = Rng(match w {
        Workload::ReadRandom => 7,
        _ => 99,
    });
    let mut out = Vec::with_capacity(s.value_size);
    let mut read = |shard: &mut nvkv::Shard<D>, k: u64| -> Result<()> {
        out.clear();
        let got = shard.get_into(&key(k, s.key_size), &mut out)?;
        check_value(k, got.map(|_| out.len()), s.value_size)
    };
    let mut h = hist()?;
    let start = Instant::now();
    let mut n = 0u64;
    while n < ops && start.elapsed() < limit {
        let t0 = Instant::now();
        match w {
            Workload::FillRandom => {
                shard.put(
                    &key(n, s.key_size),
                    &value(n, s.value_size),
                    WriteOpts::default(),
                )?;
            }
            Workload::ReadRandom => {
                let k = rng.below(s.keys);
                read(shard, k)?;
            }
            Workload::Mix { read_percent } => {
                let (k, is_read) = (rng.below(s.keys), rng.below(100) < read_percent as u64);
                if is_read {
                    read(shard, k)?;
                } else {
                    shard.put(
                        &key(k, s.key_size),
                        &value(k ^ 1, s.value_size),
                        WriteOpts::default(),
                    )?;
                }
            }
            _ => {
                // DurablePut: new keys, each acknowledged once durable.
                let k = s.keys + n;
                let r = shard.put(
                    &key(k, s.key_size),
                    &value(k, s.value_size),
                    WriteOpts {
                        ts: None,
                        durable: true,
                    },
                )?;
                // By its durable-log record when the shard has a log, else by its cycle.
                shard.wait_write(&r)?;
            }
        }
        shard.tick()?;
        let _ = h.record((t0.elapsed().as_nanos() as u64).max(1));
        n += 1;
    }
    Ok((n, start.elapsed().as_secs_f64(), h))
}

/// Durable puts in flight per batch in [`Workload::DurableThroughput`].
pub const DURABLE_WINDOW: u64 = 1024;

/// Batches of [`DURABLE_WINDOW`] durable puts of new keys until `limit`; every put's latency is its
/// batch's (the batch is answered as a whole).
fn durable_throughput(
    h: &DbHandle,
    s: &KvSpec,
    limit: Duration,
) -> Result<(u64, f64, Histogram<u64>)> {
    let mut hist = hist()?;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < limit {
        let mut b = h.batch();
        let t0 = Instant::now();
        for j in 0..DURABLE_WINDOW {
            // Keys past the loaded range (and past durable_put's): fresh inserts.
            let k = 2 * s.keys + 1_000_000_000 + n + j;
            let key = key(k, s.key_size);
            b.submit(
                nvkv::api::shard_of(&key, h.shards()),
                nvkv::api::Op::Put(
                    key,
                    value(k, s.value_size),
                    WriteOpts {
                        ts: None,
                        durable: true,
                    },
                ),
            )?;
        }
        for a in b.wait() {
            a?;
        }
        let ns = (t0.elapsed().as_nanos() as u64).max(1);
        let _ = hist.record_n(ns, DURABLE_WINDOW);
        n += DURABLE_WINDOW;
    }
    Ok((n, start.elapsed().as_secs_f64(), hist))
}

/// YCSB core workloads on nvkv: A 50/50 read/update, B 95/5, C read only, D 95 read latest / 5 insert,
/// E 95 short scans / 5 insert, F 50 read / 50 read-modify-write.
fn ycsb(h: &DbHandle, which: char, dist: Dist, s: &KvSpec) -> Result<(u64, f64, Histogram<u64>)> {
    let zipf = Zipf::new(s.keys, 0.99);
    let inserted = std::sync::atomic::AtomicU64::new(s.keys);
    let rngs: Vec<std::sync::Mutex<Rng>> = (0..s.threads)
        .map(|t| std::sync::Mutex::new(Rng(t as u64 * 31 + 5)))
        .collect();
    let limit = Duration::from_secs_f64(s.duration_s);
    drive(s.threads, u64::MAX, limit, |t, _| {
        let mut r = rngs[t].lock().map_err(|_| anyhow!("rng poisoned"))?;
        let n = inserted.load(std::sync::atomic::Ordering::Relaxed);
        let pick = |r: &mut Rng| match dist {
            Dist::Uniform => r.below(n),
            // Scramble ranks so the hot keys are spread over the key space, as YCSB does.
            Dist::Zipfian => (zipf.next(r).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 1) % n,
        };
        let p = r.below(100);
        match which {
            'A' | 'B' | 'C' => {
                let reads = match which {
                    'A' => 50,
                    'B' => 95,
                    _ => 100,
                };
                let k = pick(&mut r);
                drop(r);
                if p < reads {
                    h.get(&key(k, s.key_size))?;
                } else {
                    h.put(&key(k, s.key_size), &value(k, s.value_size))?;
                }
            }
            'D' => {
                if p < 95 {
                    // Read latest: the most recently inserted keys are the hottest.
                    let back = match dist {
                        Dist::Uniform => r.below(n),
                        Dist::Zipfian => zipf.next(&mut r) % n,
                    };
                    drop(r);
                    h.get(&key(n - 1 - back, s.key_size))?;
                } else {
                    drop(r);
                    let k = inserted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    h.put(&key(k, s.key_size), &value(k, s.value_size))?;
                }
            }
            'E' => {
                if p < 95 {
                    let k = pick(&mut r);
                    let len = 1 + r.below(100) as usize;
                    drop(r);
                    h.scan(&key(k, s.key_size), None, len)?;
                } else {
                    drop(r);
                    let k = inserted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    h.put(&key(k, s.key_size), &value(k, s.value_size))?;
                }
            }
            'F' => {
                let k = pick(&mut r);
                drop(r);
                let kk = key(k, s.key_size);
                if p < 50 {
                    h.get(&kk)?;
                } else {
                    let mut v = h.get(&kk)?.unwrap_or_else(|| value(k, s.value_size));
                    if let Some(b) = v.first_mut() {
                        *b = b.wrapping_add(1);
                    }
                    h.put(&kk, &v)?;
                }
            }
            other => bail!("unknown YCSB workload {other}"),
        }
        Ok(())
    })
}

/// A finished measurement from (ops, seconds, histogram).
#[allow(clippy::too_many_arguments)]
pub fn measurement(
    system: &str,
    w: Workload,
    path: &str,
    s: &KvSpec,
    r: (u64, f64, Histogram<u64>),
    boot: usize,
    round: usize,
    threads: usize,
) -> KvMeasurement {
    let (ops, seconds, h) = r;
    KvMeasurement {
        system: system.into(),
        workload: w.name(),
        path: path.into(),
        key_size: s.key_size,
        value_size: s.value_size,
        keys: s.keys,
        threads,
        ops,
        seconds,
        ops_per_s: ops as f64 / seconds.max(1e-9),
        mb_per_s: (w == Workload::DurableThroughput)
            .then(|| ops as f64 * (s.key_size + s.value_size) as f64 / seconds.max(1e-9) / 1e6),
        latency: latency_of(&h),
        boot,
        round,
        engine: None,
    }
}

// ---------- RocksDB's db_bench ----------

/// The db_bench invocations that measure `workloads` the way nvkv runs them: nvkv fills once and then reads
/// and mixes on the same open database (its caches warm), so RocksDB runs its fill, reads and mix in one
/// process too (memtable and block cache warm), not each in a fresh process that first replays and flushes
/// the WAL. A mix with another read percentage needs its own process (`--readwritepercent` is global), which
/// starts with its own fill; durable puts run alone, on a fresh database. Each session's first workload is the
/// fill (or the durable puts).
pub fn db_bench_sessions(workloads: &[Workload]) -> Vec<Vec<Workload>> {
    let mut main = vec![Workload::FillRandom];
    let mut more: Vec<Vec<Workload>> = Vec::new();
    for &w in workloads {
        match w {
            Workload::FillRandom => {}
            Workload::DurablePut => more.push(vec![w]),
            Workload::Mix { .. } if main.iter().any(|m| matches!(m, Workload::Mix { .. })) => {
                more.push(vec![Workload::FillRandom, w])
            }
            Workload::ReadRandom | Workload::Mix { .. } => main.push(w),
            _ => {}
        }
    }
    let mut out = vec![main];
    out.extend(more);
    out
}

/// db_bench's arguments for one session (see [`db_bench_sessions`]): the benchmarks in order on a fresh
/// database at `db_dir`. Reads and mixes do `keys` operations each (a duration would also cut the fill short:
/// `--duration` applies to every benchmark of the invocation); durable puts run for the spec's duration.
pub fn db_bench_session_args(
    session: &[Workload],
    s: &KvSpec,
    db_dir: &Path,
    wal: bool,
) -> Result<Vec<String>> {
    let names: Vec<&str> = session
        .iter()
        .map(|w| match w {
            Workload::FillRandom | Workload::DurablePut => Ok("fillrandom"),
            Workload::ReadRandom => Ok("readrandom"),
            Workload::Mix { .. } => Ok("readrandomwriterandom"),
            _ => Err(anyhow!("{} runs on nvkv only", w.name())),
        })
        .collect::<Result<_>>()?;
    let mut a = vec![
        format!("--benchmarks={}", names.join(",")),
        format!("--db={}", db_dir.display()),
        format!("--num={}", s.keys),
        format!("--key_size={}", s.key_size),
        format!("--value_size={}", s.value_size),
        format!("--threads={}", s.threads),
        "--compression_type=none".into(),
        "--histogram=1".into(),
        "--statistics=0".into(),
        "--use_existing_db=0".into(),
    ];
    if session.contains(&Workload::DurablePut) {
        a.push("--sync=1".into());
        if s.duration_s > 0.0 {
            a.push(format!("--duration={}", s.duration_s.ceil() as u64));
        }
    }
    if session
        .iter()
        .any(|w| matches!(w, Workload::ReadRandom | Workload::Mix { .. }))
    {
        a.push(format!("--reads={}", s.keys));
    }
    if let Some(p) = session.iter().find_map(|w| match w {
        Workload::Mix { read_percent } => Some(*read_percent),
        _ => None,
    }) {
        a.push(format!("--readwritepercent={p}"));
    }
    if !wal {
        a.push("--disable_wal=1".into());
    }
    Ok(a)
}

/// Splits db_bench's output into one section per benchmark report line (`name : ... micros/op ...`), each
/// with the histogram printed after it.
pub fn db_bench_sections(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let starts =
            line.contains("micros/op") && line.split_whitespace().nth(1).is_some_and(|t| t == ":");
        if starts {
            let name = line
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            out.push((name, String::new()));
        }
        if let Some((_, sec)) = out.last_mut() {
            sec.push_str(line);
            sec.push('\n');
        }
    }
    out
}

/// Runs one db_bench session; returns (workload, ops/s, latency, ops) for each of its benchmarks.
pub fn db_bench_session(
    bin: &Path,
    session: &[Workload],
    s: &KvSpec,
    db_dir: &Path,
    wal: bool,
    pin_cpu: Option<usize>,
) -> Result<Vec<(Workload, f64, Latency, u64)>> {
    let args = db_bench_session_args(session, s, db_dir, wal)?;
    let mut cmd = if let Some(cpu) = pin_cpu {
        let mut c = std::process::Command::new("taskset");
        c.arg("-c").arg(cpu.to_string()).arg(bin);
        c
    } else {
        std::process::Command::new(bin)
    };
    let out = cmd
        .args(&args)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("db_bench failed ({}): {text}", out.status);
    }
    let sections = db_bench_sections(&text);
    if sections.len() != session.len() {
        bail!(
            "db_bench reported {} benchmarks, expected {}:\n{text}",
            sections.len(),
            session.len()
        );
    }
    session
        .iter()
        .zip(sections)
        .map(|(&w, (name, sec))| {
            let (ops_per_s, lat, ops) = parse_db_bench(&name, &sec)?;
            Ok((w, ops_per_s, lat, ops))
        })
        .collect()
}

/// Parses db_bench's report line (`fillrandom : 72.472 micros/op 13798 ops/sec; ...`) and its histogram's
/// percentile line (`Percentiles: P50: 1.44 P75: ... P99: ... P99.9: ... P99.99: ...`, microseconds).
pub fn parse_db_bench(bench: &str, text: &str) -> Result<(f64, Latency, u64)> {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(bench) && l.contains("ops/sec"))
        .ok_or_else(|| anyhow!("db_bench printed no '{bench} ... ops/sec' line:\n{text}"))?;
    let toks: Vec<&str> = line.split_whitespace().collect();
    let ops_per_s = toks
        .iter()
        .position(|t| *t == "ops/sec;" || *t == "ops/sec")
        .and_then(|i| toks.get(i.checked_sub(1)?))
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| anyhow!("no ops/sec in {line:?}"))?;
    let ops = text
        .lines()
        .find(|l| l.starts_with("Count:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    let mut lat = Latency::default();
    if let Some(p) = text.lines().find(|l| l.starts_with("Percentiles:")) {
        let t: Vec<&str> = p.split_whitespace().collect();
        let get = |name: &str| {
            t.iter()
                .position(|x| *x == name)
                .and_then(|i| t.get(i + 1)?.parse::<f64>().ok())
        };
        lat.p50_us = get("P50:").unwrap_or(0.0);
        lat.p99_us = get("P99:").unwrap_or(0.0);
        lat.p999_us = get("P99.9:").unwrap_or(0.0);
        lat.cdf = [
            (50.0, "P50:"),
            (75.0, "P75:"),
            (99.0, "P99:"),
            (99.9, "P99.9:"),
            (99.99, "P99.99:"),
        ]
        .iter()
        .filter_map(|(p, n)| Some((*p, get(n)?)))
        .collect();
    }
    if let Some(m) = text.lines().find(|l| l.starts_with("Min:")) {
        let t: Vec<&str> = m.split_whitespace().collect();
        if let Some(i) = t.iter().position(|x| *x == "Max:") {
            lat.max_us = t.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        }
    }
    Ok((ops_per_s, lat, ops))
}

// ---------- The CPU path on the host ----------

/// nvkv's shard-local put and get on the `memory` backend, on this thread (pinned to CPU 0): no thread hop,
/// no device wait — the engine's own CPU cost. Each operation is timed with `Instant` (its ~20 ns are inside the
/// percentiles; ops/s comes from the whole loop).
pub fn nvkv_shard_local(value_size: usize, keys: u64) -> Result<Vec<KvMeasurement>> {
    use nvkv::bdev::MemDisk;
    use nvkv::{Shard, ShardConfig};
    crate::driver_perf::pin_to_cpu(0);
    let blocks = (keys * (value_size as u64 + 96) * 3) / 4096 + 65_536;
    let disk = MemDisk::new(4096, blocks);
    let (mut shard, _) = Shard::open(
        disk.bdev(),
        ShardConfig {
            buffer_bytes: 1 << 20,
            ..Default::default()
        },
    )
    .map_err(|e| anyhow!("opening the shard: {e}"))?;
    let s = KvSpec {
        key_size: 16,
        value_size,
        keys,
        threads: 1,
        duration_s: 0.0,
    };
    let path = "shard-local (engine on this thread), memory backend, CPU 0";
    let mut out = Vec::new();
    let keys_v: Vec<Vec<u8>> = (0..keys).map(|i| key(i, 16)).collect();
    let vals: Vec<Vec<u8>> = (0..64).map(|i| value(i, value_size)).collect();
    let mut h = hist()?;
    let start = Instant::now();
    for (i, k) in keys_v.iter().enumerate() {
        let t0 = Instant::now();
        shard
            .put(k, &vals[i % 64], WriteOpts::default())
            .map_err(|e| anyhow!("put: {e}"))?;
        let _ = h.record((t0.elapsed().as_nanos() as u64).max(1));
    }
    out.push(measurement(
        "nvkv",
        Workload::FillRandom,
        path,
        &s,
        (keys, start.elapsed().as_secs_f64(), h),
        0,
        0,
        1,
    ));
    let mut h = hist()?;
    let mut rng = Rng(3);
    let start = Instant::now();
    for _ in 0..keys {
        let k = &keys_v[rng.below(keys) as usize];
        let t0 = Instant::now();
        let v = shard.get(k).map_err(|e| anyhow!("get: {e}"))?;
        let _ = h.record((t0.elapsed().as_nanos() as u64).max(1));
        if v.is_none() {
            bail!("a key written in the fill is missing");
        }
    }
    out.push(measurement(
        "nvkv",
        Workload::ReadRandom,
        path,
        &s,
        (keys, start.elapsed().as_secs_f64(), h),
        0,
        0,
        1,
    ));
    Ok(out)
}

/// db_bench on tmpfs (`/dev/shm`), pinned to CPU 0 with taskset, with and without its WAL.
pub fn rocksdb_tmpfs(bin: &Path, value_size: usize, keys: u64) -> Result<Vec<KvMeasurement>> {
    let s = KvSpec {
        key_size: 16,
        value_size,
        keys,
        threads: 1,
        duration_s: 0.0,
    };
    let mut out = Vec::new();
    for wal in [true, false] {
        let dir = std::env::temp_dir().join(format!("nvkv-dbbench-{}-{wal}", std::process::id()));
        let dir = if Path::new("/dev/shm").is_dir() {
            Path::new("/dev/shm").join(dir.file_name().unwrap_or_default())
        } else {
            dir
        };
        let path = format!(
            "db_bench on tmpfs, {}, CPU 0 (Debian's build: assertions on)",
            if wal { "WAL on" } else { "WAL off" }
        );
        // One process for the fill and the reads (block cache and memtable warm, as nvkv's reads follow
        // its fill on the same shard).
        let session = [Workload::FillRandom, Workload::ReadRandom];
        for (w, ops_per_s, latency, ops) in db_bench_session(bin, &session, &s, &dir, wal, Some(0))?
        {
            out.push(KvMeasurement {
                system: "rocksdb".into(),
                workload: w.name(),
                path: path.clone(),
                key_size: 16,
                value_size,
                keys,
                threads: 1,
                ops,
                seconds: ops as f64 / ops_per_s.max(1e-9),
                ops_per_s,
                mb_per_s: None,
                latency,
                boot: 0,
                round: 0,
                engine: None,
            });
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_db_bench_output() {
        let text = "fillrandom   :      72.472 micros/op 13798 ops/sec 14.494 seconds 200000 operations;    1.5 MB/s
Microseconds per write:
Count: 200000 Average: 72.4720  StdDev: 300.12
Min: 3  Median: 40.1234  Max: 25000
Percentiles: P50: 40.12 P75: 60.00 P99: 500.50 P99.9: 2000.00 P99.99: 9000.00
";
        let (ops, lat, n) = parse_db_bench("fillrandom", text).expect("parse");
        assert_eq!(ops, 13798.0);
        assert_eq!(n, 200000);
        assert_eq!(lat.p50_us, 40.12);
        assert_eq!(lat.p99_us, 500.5);
        assert_eq!(lat.p999_us, 2000.0);
        assert_eq!(lat.max_us, 25000.0);
        assert!(parse_db_bench("readrandom", text).is_err());
    }

    #[test]
    fn zipf_is_skewed_and_in_range() {
        let z = Zipf::new(10_000, 0.99);
        let mut r = Rng(1);
        let mut counts = vec![0u32; 10_000];
        for _ in 0..100_000 {
            let v = z.next(&mut r);
            assert!(v < 10_000);
            counts[v as usize] += 1;
        }
        // Rank 0 is by far the most popular; the tail is thin.
        assert!(counts[0] > 5_000, "rank 0: {}", counts[0]);
        assert!(counts[0] > 20 * counts[5_000].max(1));
    }

    #[test]
    fn db_bench_sessions_keep_reads_warm_after_the_fill() {
        let ws = [
            Workload::FillRandom,
            Workload::ReadRandom,
            Workload::Mix { read_percent: 50 },
            Workload::Mix { read_percent: 95 },
            Workload::DurablePut,
        ];
        let ss = db_bench_sessions(&ws);
        assert_eq!(
            ss,
            vec![
                vec![
                    Workload::FillRandom,
                    Workload::ReadRandom,
                    Workload::Mix { read_percent: 50 }
                ],
                vec![Workload::FillRandom, Workload::Mix { read_percent: 95 }],
                vec![Workload::DurablePut],
            ]
        );
        let s = KvSpec {
            key_size: 16,
            value_size: 100,
            keys: 1000,
            threads: 1,
            duration_s: 3.0,
        };
        let a = db_bench_session_args(&ss[0], &s, Path::new("/mnt/db"), true).expect("args");
        assert!(a.contains(&"--benchmarks=fillrandom,readrandom,readrandomwriterandom".to_string()));
        assert!(
            a.contains(&"--readwritepercent=50".to_string())
                && a.contains(&"--reads=1000".to_string())
        );
        assert!(
            !a.iter().any(|x| x.starts_with("--duration")),
            "a duration would cut the fill short"
        );
        let d = db_bench_session_args(&ss[2], &s, Path::new("/mnt/db"), false).expect("args");
        assert!(d.contains(&"--sync=1".to_string()) && d.contains(&"--duration=3".to_string()));
        assert!(d.contains(&"--disable_wal=1".to_string()));
        let y = [Workload::Ycsb {
            which: 'A',
            dist: Dist::Uniform,
        }];
        assert!(db_bench_session_args(&y, &s, Path::new("/x"), true).is_err());
        assert_eq!(key(5, 16).len(), 16);
        assert_ne!(key(5, 16), key(6, 16));
    }

    #[test]
    fn db_bench_output_splits_per_benchmark() {
        let text = "Keys: 16 bytes each\n\
fillrandom   :      72.472 micros/op 13798 ops/sec 1.449 seconds 20000 operations;\n\
Microseconds per write:\n\
Count: 20000 Average: 72.4 StdDev: 10\n\
Min: 3 Median: 50.1 Max: 900\n\
Percentiles: P50: 50.10 P75: 60.0 P99: 200.00 P99.9: 700.00 P99.99: 900.00\n\
readrandom   :      20.000 micros/op 50000 ops/sec 0.4 seconds 20000 operations;\n\
Microseconds per read:\n\
Count: 20000 Average: 20.0 StdDev: 1\n\
Min: 1 Median: 18.0 Max: 90\n\
Percentiles: P50: 18.00 P75: 19.0 P99: 40.00 P99.9: 80.00 P99.99: 90.00\n";
        let secs = db_bench_sections(text);
        assert_eq!(secs.len(), 2);
        let (ops, lat, n) = parse_db_bench(&secs[1].0, &secs[1].1).expect("parse");
        assert_eq!((ops, n), (50000.0, 20000));
        assert_eq!(lat.p50_us, 18.0);
        let (ops, lat, _) = parse_db_bench(&secs[0].0, &secs[0].1).expect("parse");
        assert_eq!((ops, lat.p99_us), (13798.0, 200.0));
    }
}
