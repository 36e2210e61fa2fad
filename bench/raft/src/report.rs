//! The report: each turn as measured, the median over rounds per system and client count, the ratios, the
//! conditions, as a table for stdout and as report.json.

use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Etcd,
    Nvkv,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Etcd => "etcd",
            System::Nvkv => "nvkv",
        }
    }
}

/// One turn as measured.
#[derive(Debug, Clone, Serialize)]
pub struct Turn {
    pub system: System,
    pub clients: usize,
    pub round: usize,
    /// 0 or 1: which of the two turns of this client count in this round it was.
    pub position: usize,
    pub ops: u64,
    pub elapsed_s: f64,
    pub ops_per_s: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
    pub errors: u64,
    pub retries: u64,
    pub first_error: Option<String>,
    /// CPU seconds the measured cluster's three processes used during the turn (warm-up included), per
    /// acknowledged put of the window: what a put costs the servers, on a machine where everything shares cores.
    pub server_cpu_us_per_op: Option<f64>,
    /// The other (idle) cluster's CPU during the turn, as a share of one core: what it took from this turn.
    pub idle_cluster_cpu_cores: Option<f64>,
    /// The bench process's own CPU during the turn, as a share of one core.
    pub bench_cpu_cores: Option<f64>,
}

/// The median over rounds of one system at one client count.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub system: System,
    pub clients: usize,
    pub rounds: usize,
    pub ops_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub server_cpu_us_per_op: Option<f64>,
    pub errors: u64,
}

/// nvkv against etcd at one client count, from the medians: above 1 means nvkv is better in both.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub clients: usize,
    pub ops_nvkv_over_etcd: f64,
    pub p50_etcd_over_nvkv: f64,
    pub p99_etcd_over_nvkv: f64,
}

/// The median; the mean of the two middle values for an even count; `None` for no values.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// `a / b`, NaN when b is 0 (shown as "-" and written as null).
pub fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        f64::NAN
    } else {
        a / b
    }
}

pub fn summarize(turns: &[Turn]) -> Vec<Summary> {
    let mut groups: BTreeMap<(usize, System), Vec<&Turn>> = BTreeMap::new();
    for t in turns {
        groups.entry((t.clients, t.system)).or_default().push(t);
    }
    groups
        .into_iter()
        .filter_map(|((clients, system), ts)| {
            let pick = |f: fn(&Turn) -> f64| median(&ts.iter().map(|t| f(t)).collect::<Vec<_>>());
            let cpu: Vec<f64> = ts.iter().filter_map(|t| t.server_cpu_us_per_op).collect();
            Some(Summary {
                system,
                clients,
                rounds: ts.len(),
                ops_per_s: pick(|t| t.ops_per_s)?,
                p50_us: pick(|t| t.p50_us)?,
                p99_us: pick(|t| t.p99_us)?,
                server_cpu_us_per_op: median(&cpu),
                errors: ts.iter().map(|t| t.errors).sum(),
            })
        })
        .collect()
}

pub fn ratios(summaries: &[Summary]) -> Vec<Ratio> {
    let mut by_clients: BTreeMap<usize, (Option<&Summary>, Option<&Summary>)> = BTreeMap::new();
    for s in summaries {
        let e = by_clients.entry(s.clients).or_default();
        match s.system {
            System::Etcd => e.0 = Some(s),
            System::Nvkv => e.1 = Some(s),
        }
    }
    by_clients
        .into_iter()
        .filter_map(|(clients, (etcd, nvkv))| {
            let (etcd, nvkv) = (etcd?, nvkv?);
            Some(Ratio {
                clients,
                ops_nvkv_over_etcd: ratio(nvkv.ops_per_s, etcd.ops_per_s),
                p50_etcd_over_nvkv: ratio(etcd.p50_us, nvkv.p50_us),
                p99_etcd_over_nvkv: ratio(etcd.p99_us, nvkv.p99_us),
            })
        })
        .collect()
}

fn num(x: f64, digits: usize) -> String {
    if x.is_finite() {
        format!("{x:.digits$}")
    } else {
        "-".into()
    }
}

/// The table for stdout.
pub fn table(summaries: &[Summary], ratios: &[Ratio]) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "{:<6} {:>7} {:>6} {:>10} {:>10} {:>10} {:>12} {:>7}\n",
        "system", "clients", "rounds", "ops/s", "p50 µs", "p99 µs", "cpu µs/put", "errors"
    ));
    for m in summaries {
        s.push_str(&format!(
            "{:<6} {:>7} {:>6} {:>10} {:>10} {:>10} {:>12} {:>7}\n",
            m.system.name(),
            m.clients,
            m.rounds,
            num(m.ops_per_s, 0),
            num(m.p50_us, 0),
            num(m.p99_us, 0),
            m.server_cpu_us_per_op
                .map(|x| num(x, 0))
                .unwrap_or_else(|| "-".into()),
            m.errors
        ));
    }
    if !ratios.is_empty() {
        s.push('\n');
        s.push_str(&format!(
            "{:>7} {:>22} {:>22} {:>22}\n",
            "clients", "ops/s nvkv ÷ etcd", "p50 etcd ÷ nvkv", "p99 etcd ÷ nvkv"
        ));
        for r in ratios {
            s.push_str(&format!(
                "{:>7} {:>22} {:>22} {:>22}\n",
                r.clients,
                num(r.ops_nvkv_over_etcd, 2),
                num(r.p50_etcd_over_nvkv, 2),
                num(r.p99_etcd_over_nvkv, 2)
            ));
        }
    }
    s
}

/// Where the data lived and under which rules both systems acknowledged a put.
#[derive(Debug, Clone, Serialize)]
pub struct Conditions {
    pub host_cores: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub data_dir: String,
    /// `df -T` of the data dir: device, type, mount point.
    pub data_fs: String,
    pub data_fs_type: String,
    pub tmpfs: bool,
    pub etcd_binary: Option<String>,
    pub etcd_version: Option<String>,
    pub etcd_durability: String,
    pub etcd_endpoints: String,
    pub nvkv_server: Option<String>,
    pub nvkv_durability: String,
    pub nvkv_db_size: Option<u64>,
    pub nvkv_commit_interval_ms: Option<u64>,
    pub rounds: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub clients: Vec<usize>,
    pub key_space: u64,
    pub key_bytes: usize,
    pub value_bytes: usize,
    pub client_runtime_threads: usize,
    pub order: String,
    pub cluster_lifetime: String,
    pub systems: Vec<System>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub conditions: Conditions,
    pub summary: Vec<Summary>,
    pub ratios: Vec<Ratio>,
    pub turns: Vec<Turn>,
    pub notes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(system: System, clients: usize, round: usize, ops_per_s: f64, p50: f64) -> Turn {
        Turn {
            system,
            clients,
            round,
            position: 0,
            ops: 1,
            elapsed_s: 1.0,
            ops_per_s,
            p50_us: p50,
            p90_us: p50,
            p99_us: p50 * 2.0,
            p999_us: p50 * 3.0,
            max_us: p50 * 4.0,
            mean_us: p50,
            errors: 0,
            retries: 0,
            first_error: None,
            server_cpu_us_per_op: None,
            idle_cluster_cpu_cores: None,
            bench_cpu_cores: None,
        }
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn summaries_take_the_median_over_rounds_and_ratios_compare_them() {
        let turns = vec![
            turn(System::Etcd, 1, 1, 1000.0, 900.0),
            turn(System::Etcd, 1, 2, 1200.0, 800.0),
            turn(System::Etcd, 1, 3, 1100.0, 1000.0),
            turn(System::Nvkv, 1, 1, 3000.0, 300.0),
            turn(System::Nvkv, 1, 2, 2000.0, 450.0),
            turn(System::Nvkv, 1, 3, 2200.0, 400.0),
            // Only etcd at 16: no ratio for it.
            turn(System::Etcd, 16, 1, 5000.0, 3000.0),
        ];
        let s = summarize(&turns);
        assert_eq!(s.len(), 3);
        let e1 = &s[0];
        assert_eq!((e1.system, e1.clients, e1.rounds), (System::Etcd, 1, 3));
        assert_eq!((e1.ops_per_s, e1.p50_us), (1100.0, 900.0));
        let n1 = &s[1];
        assert_eq!((n1.system, n1.clients), (System::Nvkv, 1));
        assert_eq!((n1.ops_per_s, n1.p50_us, n1.p99_us), (2200.0, 400.0, 800.0));
        let r = ratios(&s);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].clients, 1);
        assert!((r[0].ops_nvkv_over_etcd - 2.0).abs() < 1e-12);
        assert!((r[0].p50_etcd_over_nvkv - 2.25).abs() < 1e-12);
        assert!(ratio(1.0, 0.0).is_nan());
        let t = table(&s, &r);
        assert!(t.contains("2.00") && t.contains("2.25"), "{t}");
    }
}
