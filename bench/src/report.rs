//! Medians and spread over rounds and boots, ratios against the kernel path, the table, `report.json`, the
//! plots ([`figures`]) and `report.html` ([`write`]).

use crate::plan::{Contender, Measurement, Rw, Workload};
use crate::plots::{self, Bars, Heading, Series};
use crate::tables::{self, Table};
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
    /// Embedding: libnvkv from C against the Rust handle (host memory and file backends, the VM's nvme).
    #[serde(default)]
    pub embed: Vec<crate::kv::KvMeasurement>,
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
        seal_mean_us: med(&|x| x.seal_mean_us),
        seal_max_us: med(&|x| x.seal_max_us),
        device_waits: med(&|x| x.device_waits as f64) as u64,
        device_wait_max_us: med(&|x| x.device_wait_max_us),
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

/// The host CPU-path table as text: each RocksDB figure with nvkv's ratio for the same workload and value
/// size.
pub fn kv_host_table(ms: &[crate::kv::KvMeasurement]) -> String {
    tables::kv_host(ms).map(|t| t.text()).unwrap_or_default()
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

/// The human-readable table (table.txt and the terminal): the conditions, then every table.
pub fn table(r: &Report) -> String {
    let mut t = tables::conditions_text(r);
    let all = tables::all(r);
    let (driver, rest): (Vec<&Table>, Vec<&Table>) = all.iter().partition(|t| t.name == "driver");
    for d in driver {
        t.push('\n');
        t += &d.text();
    }
    for n in tables::notes(r) {
        t += &n;
        t.push('\n');
    }
    for x in rest {
        t.push('\n');
        t += &x.text();
    }
    t
}

/// One plot of the report: its file name beside report.json, what it shows, and the SVG.
#[derive(Debug, Clone)]
pub struct Figure {
    pub file: String,
    pub title: String,
    pub svg: String,
}

/// "QEMU TCG (software emulation; ...)" → "QEMU TCG": the environment as a plot's subtitle says it.
fn short_environment(c: &Conditions) -> String {
    let env = c
        .environment
        .split_once(" (")
        .map(|(a, _)| a)
        .unwrap_or(&c.environment);
    format!("{env}, {} vCPUs", c.vcpus)
}

/// Order of the key-value workloads on the plots (as the plan runs them; others after, by name).
fn workload_rank(w: &str) -> (usize, &str) {
    let known = ["fillrandom", "readrandom", "mix50", "mix95", "durable_put"];
    (known.iter().position(|k| *k == w).unwrap_or(known.len()), w)
}

/// The durable-put paths, in the order of the table, with their labels on the plots.
const DURABLE_PATHS: &[(&str, &str)] = &[
    ("nvkv", "cycle"),
    ("nvkv-handle", "cycle, handle"),
    ("nvkv-pmr", "PMR log"),
    ("nvkv-pmr-handle", "PMR, handle"),
    ("nvkv-nvdimm", "NVDIMM log"),
    ("nvkv-nvdimm-handle", "NVDIMM, handle"),
    ("rocksdb", "RocksDB sync"),
];

/// The system names of the key-value comparison, with their labels on the plots.
const KV_SYSTEMS: &[(&str, &str)] = &[
    ("nvkv", "nvkv shard-local"),
    ("nvkv-handle", "nvkv through the handle"),
    ("rocksdb", "RocksDB (db_bench, ext4)"),
];

/// The run with the median ops/s (or IOPS) among `v`, by `key`.
fn median_run<T>(mut v: Vec<&T>, key: impl Fn(&T) -> f64) -> Option<&T> {
    v.sort_by(|a, b| key(a).total_cmp(&key(b)));
    v.get(v.len() / 2).copied()
}

/// Every plot the report has data for.
pub fn figures(r: &Report) -> Result<Vec<Figure>> {
    let mut out = Vec::new();
    let env = short_environment(&r.conditions);
    let runs = |n: usize| {
        format!(
            "{env}; medians over {n} runs ({} boots × {} rounds)",
            r.conditions.boots, r.conditions.rounds_per_boot
        )
    };
    for rw in [Rw::RandRead, Rw::RandWrite] {
        let rows = |c: Contender| {
            r.summary.iter().filter(move |s| {
                s.contender == c
                    && s.workload.rw == rw
                    && s.workload.threads == 1
                    && s.workload.bs == 4096
            })
        };
        let series: Vec<Series> = contenders(r)
            .into_iter()
            .map(|c| Series {
                label: c.label().into(),
                points: rows(c)
                    .map(|s| (s.workload.qd as f64, s.median_iops))
                    .collect(),
            })
            .filter(|s| !s.points.is_empty())
            .collect();
        if series.is_empty() {
            continue;
        }
        let n = r
            .summary
            .iter()
            .filter(|s| s.workload.rw == rw)
            .map(|s| s.samples)
            .max()
            .unwrap_or(0);
        let title = format!("4 KiB {} IOPS against queue depth", rw.fio_name());
        let heading = Heading {
            title: &title,
            subtitle: &runs(n),
        };
        out.push(Figure {
            file: format!("iops_vs_qd_{}.svg", rw.fio_name()),
            svg: plots::line_chart(&heading, "queue depth (log scale)", "IOPS", &series)?,
            title,
        });
    }
    // Latency percentiles at QD1: the run with the median IOPS of each contender.
    for rw in [Rw::RandRead, Rw::RandWrite] {
        let series: Vec<Series> = contenders(r)
            .into_iter()
            .filter_map(|c| {
                let v: Vec<&Measurement> = r
                    .measurements
                    .iter()
                    .filter(|m| {
                        m.contender == c
                            && m.workload.rw == rw
                            && m.workload.bs == 4096
                            && m.workload.qd == 1
                            && m.workload.threads == 1
                    })
                    .collect();
                let m = median_run(v, |m| m.iops)?;
                Some(Series {
                    label: c.label().into(),
                    points: m.latency.cdf.clone(),
                })
            })
            .filter(|s| !s.points.is_empty())
            .collect();
        if series.is_empty() {
            continue;
        }
        let title = format!("4 KiB {} latency percentiles at QD1", rw.fio_name());
        let heading = Heading {
            title: &title,
            subtitle: &format!("{env}; each contender's run with the median IOPS"),
        };
        out.push(Figure {
            file: format!("latency_qd1_{}.svg", rw.fio_name()),
            svg: plots::latency_percentiles(&heading, &series)?,
            title,
        });
    }
    let mut sizes: Vec<usize> = r.kv_summary.iter().map(|s| s.value_size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    for &vs in &sizes {
        // The key-value comparison: workloads RocksDB ran too, durable puts aside (their own plot).
        let mut groups: Vec<&str> = r
            .kv_summary
            .iter()
            .filter(|s| s.value_size == vs && s.system == "rocksdb" && s.workload != "durable_put")
            .map(|s| s.workload.as_str())
            .collect();
        groups.sort_by_key(|w| workload_rank(w));
        groups.dedup();
        let get = |sys: &str, w: &str| {
            r.kv_summary
                .iter()
                .find(|s| s.value_size == vs && s.system == sys && s.workload == w)
        };
        if !groups.is_empty() {
            let names: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
            for (what, file, y, f) in [
                (
                    "throughput",
                    "kv_ops",
                    "ops/s",
                    &(|s: &KvSummary| s.median_ops_per_s) as &dyn Fn(&KvSummary) -> f64,
                ),
                (
                    "median latency",
                    "kv_p50",
                    "p50 latency (µs)",
                    &|s: &KvSummary| s.median_p50_us,
                ),
            ] {
                let bars: Vec<Bars> = KV_SYSTEMS
                    .iter()
                    .map(|&(sys, label)| Bars {
                        label: label.into(),
                        values: groups.iter().map(|w| get(sys, w).map(f)).collect(),
                    })
                    .filter(|b| b.values.iter().any(Option::is_some))
                    .collect();
                let title = format!("key-value {what}: nvkv against RocksDB, {vs} B values");
                let log =
                    plots::wants_log(bars.iter().flat_map(|b| b.values.iter().flatten().copied()));
                let heading = Heading {
                    title: &title,
                    subtitle: &format!(
                        "{env}; 16 B keys, one client thread; medians{}",
                        if log { "; log scale" } else { "" }
                    ),
                };
                out.push(Figure {
                    file: format!("{file}_{vs}.svg"),
                    svg: plots::grouped_bars(&heading, y, &names, &bars, log)?,
                    title,
                });
            }
        }
        // Durable puts by acknowledgement path: p50 and p99 bars, and each path's percentiles.
        let paths: Vec<(&str, &KvSummary)> = DURABLE_PATHS
            .iter()
            .filter_map(|&(sys, label)| Some((label, get(sys, "durable_put")?)))
            .collect();
        if !paths.is_empty() {
            let names: Vec<String> = paths.iter().map(|p| p.0.to_string()).collect();
            let bars = vec![
                Bars {
                    label: "p50".into(),
                    values: paths.iter().map(|p| Some(p.1.median_p50_us)).collect(),
                },
                Bars {
                    label: "p99".into(),
                    values: paths.iter().map(|p| Some(p.1.median_p99_us)).collect(),
                },
            ];
            let log =
                plots::wants_log(bars.iter().flat_map(|b| b.values.iter().flatten().copied()));
            let title = format!("durable put latency by acknowledgement path, {vs} B values");
            let heading = Heading {
                title: &title,
                subtitle: &format!(
                    "{env}; one client, one put at a time; medians{}",
                    if log { "; log scale" } else { "" }
                ),
            };
            out.push(Figure {
                file: format!("durable_put_{vs}.svg"),
                svg: plots::grouped_bars(&heading, "latency (µs)", &names, &bars, log)?,
                title,
            });
            let series: Vec<Series> = DURABLE_PATHS
                .iter()
                .filter_map(|&(sys, label)| {
                    let v: Vec<&crate::kv::KvMeasurement> =
                        r.kv.iter()
                            .filter(|m| {
                                m.system == sys && m.workload == "durable_put" && m.value_size == vs
                            })
                            .collect();
                    let m = median_run(v, |m| m.ops_per_s)?;
                    Some(Series {
                        label: label.into(),
                        points: m.latency.cdf.clone(),
                    })
                })
                .filter(|s| !s.points.is_empty())
                .collect();
            if !series.is_empty() {
                let title = format!("durable put latency percentiles, {vs} B values");
                let heading = Heading {
                    title: &title,
                    subtitle: &format!("{env}; each path's run with the median ops/s"),
                };
                out.push(Figure {
                    file: format!("latency_durable_put_{vs}.svg"),
                    svg: plots::latency_percentiles(&heading, &series)?,
                    title,
                });
            }
        }
    }
    Ok(out)
}

/// Writes report.json, table.txt, the plots (SVG) and report.html (the tables, the plots inline and the
/// conditions in one page) into `dir`. Interval logs are moved out of the measurements into `hdr/*.hlog`
/// files, named in `hdr_log_file`.
pub fn write(r: &Report, dir: &Path) -> Result<()> {
    let file = |p: &Path| p.display().to_string();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", file(dir)))?;
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
            let hdr = dir.join("hdr");
            std::fs::create_dir_all(&hdr).with_context(|| format!("creating {}", file(&hdr)))?;
            let path = dir.join(&name);
            std::fs::write(&path, log).with_context(|| format!("writing {}", file(&path)))?;
            m.hdr_log_file = Some(name);
        }
    }
    let r = &r;
    let put = |name: &str, text: &str| -> Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", file(&path)))
    };
    put("report.json", &serde_json::to_string_pretty(r)?)?;
    put("table.txt", &table(r))?;
    let figs = figures(r)?;
    for f in &figs {
        put(&f.file, &f.svg)?;
    }
    put("report.html", &crate::html::page(r, &tables::all(r), &figs))?;
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
            embed: vec![],
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
        assert!(dir.join("latency_qd1_randread.svg").exists());
        let html = std::fs::read_to_string(dir.join("report.html")).expect("report.html");
        assert!(html.contains("<svg") && html.contains("nvkv (VFIO, polled)"));
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
