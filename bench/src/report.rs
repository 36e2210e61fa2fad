//! Medians and spread over rounds and boots, ratios against the kernel path, the table, `report.json`, plots.

use crate::plan::{Contender, Measurement, Rw, Workload};
use crate::svg::{self, Series};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Where and how the figures were measured; printed with the table and stored in the JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Conditions {
    /// "QEMU TCG", "QEMU KVM" or "bare metal".
    pub environment: String,
    pub vcpus: usize,
    pub host: String,
    pub qemu: Option<String>,
    pub guest_kernel: Option<String>,
    /// The device under test.
    pub device: String,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub rounds_per_boot: usize,
    pub boots: usize,
    pub pinning: String,
    pub started: String,
    pub nvkv_version: String,
    pub notes: Vec<String>,
}

/// Median and spread of one contender on one workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub workload: Workload,
    pub contender: Contender,
    pub samples: usize,
    pub median_iops: f64,
    pub min_iops: f64,
    pub max_iops: f64,
    pub median_p50_us: f64,
    pub median_p99_us: f64,
    pub median_p999_us: f64,
    pub median_mmio_writes_per_io: Option<f64>,
    /// nvkv's median IOPS divided by this contender's (only for kernel contenders).
    pub nvkv_ratio: Option<f64>,
}

/// The whole report (`report.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    pub conditions: Conditions,
    pub info: BTreeMap<String, String>,
    pub summary: Vec<Summary>,
    pub measurements: Vec<Measurement>,
    /// Key-value comparison in the guest: medians per system, workload and value size.
    #[serde(default)]
    pub kv_summary: Vec<KvSummary>,
    /// Every key-value measurement in the guest.
    #[serde(default)]
    pub kv: Vec<crate::kv::KvMeasurement>,
    /// The CPU path on the host: nvkv shard-local on the memory backend vs db_bench on tmpfs.
    #[serde(default)]
    pub kv_host: Vec<crate::kv::KvMeasurement>,
}

/// Median and spread of one system on one key-value workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KvSummary {
    pub workload: String,
    pub value_size: usize,
    pub system: String,
    pub path: String,
    pub samples: usize,
    pub median_ops_per_s: f64,
    pub min_ops_per_s: f64,
    pub max_ops_per_s: f64,
    pub median_p50_us: f64,
    pub median_p99_us: f64,
    pub median_p999_us: f64,
    /// Median MB/s (user data for durable throughput; device data for the raw sequential write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub median_mb_per_s: Option<f64>,
    /// On nvkv rows: their median ops/s over RocksDB's for the same workload and value size, and RocksDB's
    /// median p50 over theirs.
    pub nvkv_ratio: Option<f64>,
    pub nvkv_p50_ratio: Option<f64>,
    /// nvkv's persistence work per run (each field's median over the samples).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<crate::kv::EngineWork>,
}

/// Each field's median over the runs that report engine work.
fn median_engine(v: &[&crate::kv::KvMeasurement]) -> Option<crate::kv::EngineWork> {
    let e: Vec<&crate::kv::EngineWork> = v.iter().filter_map(|m| m.engine.as_ref()).collect();
    if e.is_empty() {
        return None;
    }
    let med = |f: &dyn Fn(&crate::kv::EngineWork) -> f64| -> f64 {
        median(&mut e.iter().map(|x| f(x)).collect::<Vec<f64>>())
    };
    Some(crate::kv::EngineWork {
        cycles: med(&|x| x.cycles as f64) as u64,
        flushes: med(&|x| x.flushes as f64) as u64,
        write_mean_us: med(&|x| x.write_mean_us),
        write_max_us: med(&|x| x.write_max_us),
        flush_mean_us: med(&|x| x.flush_mean_us),
        flush_max_us: med(&|x| x.flush_max_us),
        checkpoints: med(&|x| x.checkpoints as f64) as u64,
        checkpoint_total_ms: med(&|x| x.checkpoint_total_ms),
        checkpoint_max_ms: med(&|x| x.checkpoint_max_ms),
        gc_segments: med(&|x| x.gc_segments as f64) as u64,
        durable_by_log: med(&|x| x.durable_by_log as f64) as u64,
        durable_by_cycle: med(&|x| x.durable_by_cycle as f64) as u64,
    })
}

/// Groups key-value measurements by (workload, value size, system) and puts RocksDB beside nvkv.
pub fn summarize_kv(ms: &[crate::kv::KvMeasurement]) -> Vec<KvSummary> {
    let mut groups: BTreeMap<(String, usize, String), Vec<&crate::kv::KvMeasurement>> =
        BTreeMap::new();
    for m in ms {
        groups
            .entry((m.workload.clone(), m.value_size, m.system.clone()))
            .or_default()
            .push(m);
    }
    let mut out: Vec<KvSummary> = groups
        .into_iter()
        .map(|((workload, value_size, system), v)| {
            let ops: Vec<f64> = v.iter().map(|m| m.ops_per_s).collect();
            let col = |f: &dyn Fn(&crate::kv::KvMeasurement) -> f64| -> Vec<f64> {
                v.iter().map(|m| f(m)).collect()
            };
            KvSummary {
                workload,
                value_size,
                system,
                path: v[0].path.clone(),
                samples: v.len(),
                median_ops_per_s: median(&mut ops.clone()),
                min_ops_per_s: ops.iter().copied().fold(f64::MAX, f64::min),
                max_ops_per_s: ops.iter().copied().fold(0.0, f64::max),
                median_p50_us: median(&mut col(&|m| m.latency.p50_us)),
                median_p99_us: median(&mut col(&|m| m.latency.p99_us)),
                median_p999_us: median(&mut col(&|m| m.latency.p999_us)),
                median_mb_per_s: {
                    let mut mb: Vec<f64> = v.iter().filter_map(|m| m.mb_per_s).collect();
                    (!mb.is_empty()).then(|| median(&mut mb))
                },
                nvkv_ratio: None,
                nvkv_p50_ratio: None,
                engine: median_engine(&v),
            }
        })
        .collect();
    let rocks: BTreeMap<(String, usize), (f64, f64)> = out
        .iter()
        .filter(|s| s.system == "rocksdb")
        .map(|s| {
            (
                (s.workload.clone(), s.value_size),
                (s.median_ops_per_s, s.median_p50_us),
            )
        })
        .collect();
    for s in out.iter_mut().filter(|s| s.system.starts_with("nvkv")) {
        if let Some(&(ops, p50)) = rocks.get(&(s.workload.clone(), s.value_size)) {
            s.nvkv_ratio = (ops > 0.0).then(|| s.median_ops_per_s / ops);
            s.nvkv_p50_ratio = (s.median_p50_us > 0.0).then(|| p50 / s.median_p50_us);
        }
    }
    out
}

/// The key-value part of the table.
pub fn kv_table(r: &Report) -> String {
    let mut t = String::new();
    if !r.kv_summary.is_empty() {
        t += "\nkey-value in the guest (16 B keys; one client thread; medians [min–max]; nvkv × = this row's ops/s ÷ RocksDB's; p50 ÷ = RocksDB p50 ÷ this row's p50)\n";
        t += &format!(
            "{:<22} {:>6} {:<8} {:>24} {:>9} {:>9} {:>9} {:>8} {:>8}\n",
            "workload",
            "value",
            "system",
            "ops/s median [min-max]",
            "p50 us",
            "p99 us",
            "p99.9 us",
            "nvkv ×",
            "p50 ÷"
        );
        for s in r.kv_summary.iter().filter(|s| s.system != "device") {
            t += &format!(
                "{:<22} {:>6} {:<8} {:>24} {:>9.1} {:>9.1} {:>9.1} {:>8} {:>8}\n",
                s.workload,
                s.value_size,
                s.system,
                format!(
                    "{} [{}–{}]",
                    svg::human(s.median_ops_per_s),
                    svg::human(s.min_ops_per_s),
                    svg::human(s.max_ops_per_s)
                ),
                s.median_p50_us,
                s.median_p99_us,
                s.median_p999_us,
                s.nvkv_ratio
                    .map(|v| format!("{v:.2}"))
                    .unwrap_or_else(|| "-".into()),
                s.nvkv_p50_ratio
                    .map(|v| format!("{v:.1}"))
                    .unwrap_or_else(|| "-".into()),
            );
        }
        if let Some(p) = r.kv_summary.iter().find(|s| s.system == "rocksdb") {
            t += &format!("rocksdb: {}\n", p.path);
        }
        let mut paths: Vec<&str> = r
            .kv_summary
            .iter()
            .filter(|s| s.system.starts_with("nvkv"))
            .map(|s| s.path.as_str())
            .collect();
        paths.sort_unstable();
        paths.dedup();
        for p in paths {
            t += &format!("{p}\n");
        }
        t += &engine_work_table(&r.kv_summary);
        t += &durable_put_table(&r.kv_summary);
        t += &durable_vs_raw(&r.kv_summary);
    }
    if !r.kv_host.is_empty() {
        t += &kv_host_table(&r.kv_host);
    }
    t
}

/// What nvkv's shards spent on persistence in each run: how much of a latency is the device's.
fn engine_work_table(sums: &[KvSummary]) -> String {
    let rows: Vec<(&KvSummary, &crate::kv::EngineWork)> = sums
        .iter()
        .filter_map(|s| Some((s, s.engine.as_ref()?)))
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut t = String::from(
        "\nnvkv persistence work per run (medians): segment writes and flushes, submission to completion; checkpoints block the shard\n",
    );
    t += &format!(
        "{:<22} {:>6} {:<12} {:>7} {:>7} {:>17} {:>17} {:>6} {:>17}\n",
        "workload",
        "value",
        "system",
        "cycles",
        "flushes",
        "write us mean/max",
        "flush us mean/max",
        "ckpts",
        "ckpt ms total/max"
    );
    for (s, e) in rows {
        t += &format!(
            "{:<22} {:>6} {:<12} {:>7} {:>7} {:>17} {:>17} {:>6} {:>17}\n",
            s.workload,
            s.value_size,
            s.system,
            e.cycles,
            e.flushes,
            format!("{:.0}/{:.0}", e.write_mean_us, e.write_max_us),
            format!("{:.0}/{:.0}", e.flush_mean_us, e.flush_max_us),
            e.checkpoints,
            format!("{:.1}/{:.1}", e.checkpoint_total_ms, e.checkpoint_max_ms),
        );
    }
    t
}

/// Durable puts, one client, one at a time, by acknowledgement path: the persistence cycle (segment
/// write + Flush), a durable log in the PMR, one on the NVDIMM, and RocksDB `--sync=1`; with the ratio
/// of RocksDB's p50 to each, and each path's durable fill rate against the non-durable fill through
/// the same handle.
pub fn durable_put_table(sums: &[KvSummary]) -> String {
    let rows: Vec<&KvSummary> = sums
        .iter()
        .filter(|s| s.workload == "durable_put")
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut t = String::from(
        "\ndurable put, one client, each acknowledged once durable (16 B keys; medians over all rounds of all boots)\n",
    );
    t += &format!(
        "{:>6} {:<18} {:>10} {:>9} {:>9} {:>10} {:>12} {:>14} {:>12}\n",
        "value",
        "system",
        "ops/s",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "RocksDB p50÷",
        "% of fill ops/s",
        "by log/cycle"
    );
    for s in rows {
        let fill = sums
            .iter()
            .find(|f| {
                f.system == "nvkv-handle"
                    && f.workload == "fillrandom"
                    && f.value_size == s.value_size
            })
            .map(|f| f.median_ops_per_s);
        let paths = s
            .engine
            .as_ref()
            .map(|e| format!("{}/{}", e.durable_by_log, e.durable_by_cycle))
            .unwrap_or_else(|| "-".into());
        t += &format!(
            "{:>6} {:<18} {:>10} {:>9.1} {:>9.1} {:>10.1} {:>12} {:>14} {:>12}\n",
            s.value_size,
            s.system,
            svg::human(s.median_ops_per_s),
            s.median_p50_us,
            s.median_p99_us,
            s.median_p999_us,
            s.nvkv_p50_ratio
                .map(|v| format!("{v:.1}"))
                .unwrap_or_else(|| "-".into()),
            match (fill, s.system.starts_with("nvkv")) {
                (Some(f), true) if f > 0.0 => format!("{:.0}%", 100.0 * s.median_ops_per_s / f),
                _ => "-".into(),
            },
            if s.system.starts_with("nvkv") {
                paths
            } else {
                "-".into()
            },
        );
    }
    t += "(nvkv / nvkv-handle: acknowledged by the persistence cycle (segment write + Flush), 1 ms commit \
          interval; nvkv-pmr, nvkv-nvdimm (shard-local) and their -handle rows: by the durable-log record's \
          barrier, 100 ms commit interval; % of fill: durable puts per second ÷ the non-durable fill's on the \
          same path; QEMU 7.2's NVMe reports a volatile write cache (Identify VWC bit 0 = 1) even with \
          write-cache=off, so the cycle path issues a Flush here; on a drive without one (VWC = 0, power-loss \
          protection) the engine skips the Flush)\n";
    t
}

/// Durable-write throughput (user bytes of durable puts per second) against the device's raw sequential
/// write bandwidth measured in the same boots.
fn durable_vs_raw(sums: &[KvSummary]) -> String {
    let Some(raw) = sums
        .iter()
        .find(|s| s.system == "device" && s.workload == "raw_seq_write")
    else {
        return String::new();
    };
    let raw_mb = raw.median_mb_per_s.unwrap_or(0.0);
    let mut t = format!(
        "\ndurable-write throughput against the raw device, same boots (medians): raw sequential write {raw_mb:.1} MB/s ({})\n",
        raw.path
    );
    t += &format!(
        "{:>6} {:>14} {:>16} {:>9} {:>10}\n",
        "value", "durable ops/s", "user data MB/s", "% of raw", "p50 us"
    );
    for s in sums
        .iter()
        .filter(|s| s.system.starts_with("nvkv") && s.workload == "durable_throughput")
    {
        let mb = s.median_mb_per_s.unwrap_or(0.0);
        t += &format!(
            "{:>6} {:>14} {:>16.2} {:>9.1} {:>10.0}\n",
            s.value_size,
            svg::human(s.median_ops_per_s),
            mb,
            if raw_mb > 0.0 {
                100.0 * mb / raw_mb
            } else {
                0.0
            },
            s.median_p50_us
        );
    }
    t += &format!(
        "(one client, {} durable puts in flight per batch, answered when the covering persistence cycle completes; 16 B keys)\n",
        crate::kv::DURABLE_WINDOW
    );
    t
}

/// The host CPU-path table: each RocksDB figure with nvkv's ratio for the same workload and value size.
pub fn kv_host_table(ms: &[crate::kv::KvMeasurement]) -> String {
    let mut t = String::new();
    {
        t += "\nkey-value CPU path on the host (one core, 16 B keys; percentiles include ~20 ns of clock reads for nvkv)\n";
        t += &format!(
            "{:<12} {:>6} {:<8} {:<66} {:>12} {:>9} {:>9} {:>8}\n",
            "workload", "value", "system", "path", "ops/s", "p50 us", "p99 us", "nvkv ×"
        );
        for m in ms {
            let nv = ms.iter().find(|n| {
                n.system == "nvkv" && n.workload == m.workload && n.value_size == m.value_size
            });
            let ratio = match (m.system.as_str(), nv) {
                ("rocksdb", Some(n)) if m.ops_per_s > 0.0 => {
                    format!("{:.1}", n.ops_per_s / m.ops_per_s)
                }
                _ => "-".into(),
            };
            t += &format!(
                "{:<12} {:>6} {:<8} {:<66} {:>12.0} {:>9.2} {:>9.2} {:>8}\n",
                m.workload,
                m.value_size,
                m.system,
                m.path,
                m.ops_per_s,
                m.latency.p50_us,
                m.latency.p99_us,
                ratio
            );
        }
    }
    t
}

pub const SCHEMA: &str = "nvkv-bench/report/v1";

pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn summarize(ms: &[Measurement]) -> Vec<Summary> {
    let mut groups: BTreeMap<(Workload, Contender), Vec<&Measurement>> = BTreeMap::new();
    for m in ms {
        groups
            .entry((m.workload.clone(), m.contender))
            .or_default()
            .push(m);
    }
    let mut out: Vec<Summary> = groups
        .into_iter()
        .map(|((workload, contender), v)| {
            let col =
                |f: &dyn Fn(&Measurement) -> f64| -> Vec<f64> { v.iter().map(|m| f(m)).collect() };
            let iops = col(&|m| m.iops);
            let mmio: Vec<f64> = v.iter().filter_map(|m| m.mmio_writes_per_io).collect();
            Summary {
                workload,
                contender,
                samples: v.len(),
                median_iops: median(&mut iops.clone()),
                min_iops: iops.iter().copied().fold(f64::MAX, f64::min),
                max_iops: iops.iter().copied().fold(0.0, f64::max),
                median_p50_us: median(&mut col(&|m| m.latency.p50_us)),
                median_p99_us: median(&mut col(&|m| m.latency.p99_us)),
                median_p999_us: median(&mut col(&|m| m.latency.p999_us)),
                median_mmio_writes_per_io: (!mmio.is_empty()).then(|| median(&mut mmio.clone())),
                nvkv_ratio: None,
            }
        })
        .collect();
    let nvkv: BTreeMap<Workload, f64> = out
        .iter()
        .filter(|s| s.contender == Contender::Nvkv)
        .map(|s| (s.workload.clone(), s.median_iops))
        .collect();
    for s in out.iter_mut().filter(|s| s.contender.is_kernel()) {
        if let Some(n) = nvkv.get(&s.workload) {
            if s.median_iops > 0.0 {
                s.nvkv_ratio = Some(n / s.median_iops);
            }
        }
    }
    out
}

/// The human-readable table.
pub fn table(r: &Report) -> String {
    let c = &r.conditions;
    let mut t = String::new();
    t += &format!(
        "nvkv-bench: {} · {} vCPUs · {}\ndevice: {}\n{} s per run after {} s warm-up · {} rounds/boot × {} boots (A B alternation) · medians [min–max]\n{}\n\n",
        c.environment, c.vcpus, c.host, c.device, c.duration_s, c.warmup_s, c.rounds_per_boot, c.boots, c.pinning
    );
    t += &format!(
        "{:<28} {:<30} {:>22} {:>9} {:>9} {:>9} {:>9} {:>8}\n",
        "workload",
        "contender",
        "IOPS median [min-max]",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "MMIO/IO",
        "nvkv ×"
    );
    let mut last = None;
    for s in &r.summary {
        if last.as_ref() != Some(&s.workload) && last.is_some() {
            t.push('\n');
        }
        last = Some(s.workload.clone());
        let spread = format!(
            "{} [{}–{}]",
            svg::human(s.median_iops),
            svg::human(s.min_iops),
            svg::human(s.max_iops)
        );
        t += &format!(
            "{:<28} {:<30} {:>22} {:>9.1} {:>9.1} {:>9.1} {:>9} {:>8}\n",
            s.workload.label(),
            s.contender.label(),
            spread,
            s.median_p50_us,
            s.median_p99_us,
            s.median_p999_us,
            s.median_mmio_writes_per_io
                .map(|v| format!("{v:.3}"))
                .unwrap_or_else(|| "-".into()),
            s.nvkv_ratio
                .map(|v| format!("{v:.2}"))
                .unwrap_or_else(|| "-".into()),
        );
    }
    for n in &c.notes {
        t += &format!("note: {n}\n");
    }
    for (k, v) in r.info.iter().filter(|(k, _)| k.starts_with("failed")) {
        t += &format!("{k}: {v}\n");
    }
    t += &kv_table(r);
    t
}

/// Writes report.json, table.txt and the plots into `dir`.
/// Interval logs are moved out of the measurements into `hdr/*.hlog` files, named in `hdr_log_file`.
pub fn write(r: &Report, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut r = r.clone();
    for m in r.measurements.iter_mut() {
        if let Some(log) = m.hdr_interval_log.take() {
            let name = format!(
                "hdr/{:?}-{}-{}k-qd{}-t{}-b{}-r{}.hlog",
                m.contender,
                m.workload.rw.fio_name(),
                m.workload.bs / 1024,
                m.workload.qd,
                m.workload.threads,
                m.boot,
                m.round
            )
            .to_lowercase();
            std::fs::create_dir_all(dir.join("hdr"))?;
            std::fs::write(dir.join(&name), log)?;
            m.hdr_log_file = Some(name);
        }
    }
    let r = &r;
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(r)?)?;
    std::fs::write(dir.join("table.txt"), table(r))?;
    let env = format!("{}, {} vCPUs", r.conditions.environment, r.conditions.vcpus);
    for rw in [Rw::RandRead, Rw::RandWrite] {
        let series: Vec<Series> = contenders(r)
            .into_iter()
            .map(|c| Series {
                label: c.label().into(),
                points: r
                    .summary
                    .iter()
                    .filter(|s| {
                        s.contender == c
                            && s.workload.rw == rw
                            && s.workload.threads == 1
                            && s.workload.bs == 4096
                    })
                    .map(|s| (s.workload.qd as f64, s.median_iops))
                    .collect(),
            })
            .filter(|s| !s.points.is_empty())
            .collect();
        if !series.is_empty() {
            let title = format!(
                "4 KiB {} IOPS vs queue depth ({env}, median)",
                rw.fio_name()
            );
            let svg = svg::line_chart(&title, "queue depth", "IOPS", &series, true, true);
            std::fs::write(dir.join(format!("iops_vs_qd_{}.svg", rw.fio_name())), svg)?;
        }
    }
    // Latency CDF at QD1 random read: the run with the median IOPS of each contender.
    let series: Vec<Series> = contenders(r)
        .into_iter()
        .filter_map(|c| {
            let mut v: Vec<&Measurement> = r
                .measurements
                .iter()
                .filter(|m| {
                    m.contender == c
                        && m.workload.rw == Rw::RandRead
                        && m.workload.qd == 1
                        && m.workload.threads == 1
                })
                .collect();
            v.sort_by(|a, b| a.iops.total_cmp(&b.iops));
            let m = v.get(v.len() / 2)?;
            Some(Series {
                label: c.label().into(),
                points: m.latency.cdf.iter().map(|&(p, us)| (us, p)).collect(),
            })
        })
        .collect();
    if !series.is_empty() {
        let svg = svg::line_chart(
            &format!("4 KiB random read latency CDF, QD1 ({env})"),
            "latency (µs)",
            "percentile",
            &series,
            true,
            false,
        );
        std::fs::write(dir.join("latency_cdf_qd1.svg"), svg)?;
    }
    Ok(())
}

fn contenders(r: &Report) -> Vec<Contender> {
    let mut c: Vec<Contender> = r.summary.iter().map(|s| s.contender).collect();
    c.sort();
    c.dedup();
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Latency;

    fn m(c: Contender, qd: usize, iops: f64, round: usize) -> Measurement {
        Measurement {
            contender: c,
            workload: Workload {
                rw: Rw::RandRead,
                bs: 4096,
                qd,
                threads: 1,
            },
            boot: 0,
            round,
            ios: iops as u64,
            seconds: 1.0,
            iops,
            mb_per_s: iops * 4096.0 / 1e6,
            latency: Latency {
                p50_us: 10.0,
                cdf: vec![(50.0, 10.0), (99.0, 20.0)],
                ..Default::default()
            },
            mmio_writes_per_io: (c == Contender::Nvkv).then_some(1.0),
            shadow_updates_per_io: None,
            poll_queue: None,
            iommu_domain: None,
            hdr_interval_log: (c == Contender::Nvkv).then(|| "#[StartTime: 0]\n".to_string()),
            hdr_log_file: None,
        }
    }

    fn kvm(system: &str, ops: f64, p50: f64) -> crate::kv::KvMeasurement {
        crate::kv::KvMeasurement {
            system: system.into(),
            workload: "mix50".into(),
            path: format!("{system}: test"),
            key_size: 16,
            value_size: 100,
            keys: 10,
            threads: 1,
            ops: 1,
            seconds: 1.0,
            ops_per_s: ops,
            mb_per_s: None,
            latency: Latency {
                p50_us: p50,
                ..Default::default()
            },
            boot: 0,
            round: 0,
            engine: (system != "rocksdb").then(|| crate::kv::EngineWork {
                cycles: ops as u64,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn kv_ratios_sit_on_each_nvkv_row() {
        let ms = vec![
            kvm("nvkv", 300.0, 10.0),
            kvm("nvkv", 500.0, 30.0),
            kvm("nvkv-handle", 200.0, 20.0),
            kvm("rocksdb", 100.0, 40.0),
        ];
        let s = summarize_kv(&ms);
        let row = |sys: &str| s.iter().find(|x| x.system == sys).expect("row");
        assert_eq!(row("nvkv").median_ops_per_s, 400.0);
        assert_eq!(row("nvkv").nvkv_ratio, Some(4.0));
        assert_eq!(row("nvkv").nvkv_p50_ratio, Some(2.0));
        assert_eq!(row("nvkv-handle").nvkv_ratio, Some(2.0));
        assert_eq!(row("rocksdb").nvkv_ratio, None);
        assert_eq!(row("nvkv").engine.as_ref().map(|e| e.cycles), Some(400));
        assert!(row("rocksdb").engine.is_none());
    }

    #[test]
    fn medians_spread_and_ratio() {
        let ms = vec![
            m(Contender::Nvkv, 1, 100.0, 0),
            m(Contender::Nvkv, 1, 300.0, 1),
            m(Contender::Nvkv, 1, 200.0, 2),
            m(Contender::KernelIoUringPolled, 1, 50.0, 0),
            m(Contender::KernelIoUringPolled, 1, 40.0, 1),
        ];
        let s = summarize(&ms);
        let n = s
            .iter()
            .find(|s| s.contender == Contender::Nvkv)
            .expect("nvkv row");
        assert_eq!(
            (n.median_iops, n.min_iops, n.max_iops, n.samples),
            (200.0, 100.0, 300.0, 3)
        );
        let k = s
            .iter()
            .find(|s| s.contender == Contender::KernelIoUringPolled)
            .expect("kernel row");
        assert_eq!(k.median_iops, 45.0);
        assert!((k.nvkv_ratio.expect("ratio") - 200.0 / 45.0).abs() < 1e-9);
        assert_eq!(n.nvkv_ratio, None);
    }

    #[test]
    fn report_json_round_trips_with_schema() {
        let ms = vec![
            m(Contender::Nvkv, 1, 100.0, 0),
            m(Contender::KernelIoUring, 1, 50.0, 0),
        ];
        let r = Report {
            schema: SCHEMA.into(),
            conditions: Conditions {
                environment: "QEMU TCG".into(),
                vcpus: 2,
                host: "test".into(),
                qemu: None,
                guest_kernel: None,
                device: "d".into(),
                duration_s: 1.0,
                warmup_s: 0.1,
                rounds_per_boot: 1,
                boots: 1,
                pinning: "p".into(),
                started: "now".into(),
                nvkv_version: "0".into(),
                notes: vec![],
            },
            info: BTreeMap::new(),
            summary: summarize(&ms),
            measurements: ms,
            kv_summary: vec![],
            kv: vec![],
            kv_host: vec![],
        };
        let text = serde_json::to_string(&r).expect("serialize");
        let back: Report = serde_json::from_str(&text).expect("deserialize");
        assert_eq!(back.schema, SCHEMA);
        assert_eq!(back.summary.len(), 2);
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        for key in ["conditions", "summary", "measurements"] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert!(v["measurements"][0]["latency"]["p99_us"].is_number());
        assert!(table(&back).contains("nvkv (VFIO, polled)"));
        let dir = std::env::temp_dir().join(format!("nvkv-report-test-{}", std::process::id()));
        write(&back, &dir).expect("write report");
        assert!(dir.join("report.json").exists() && dir.join("iops_vs_qd_randread.svg").exists());
        assert!(dir.join("latency_cdf_qd1.svg").exists());
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).expect("read"))
                .expect("json");
        let file = written["measurements"][0]["hdr_log_file"]
            .as_str()
            .expect("log file named");
        assert!(dir.join(file).exists(), "{file} missing");
        assert!(
            written["measurements"][0].get("hdr_interval_log").is_none(),
            "log text left in the JSON"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
