//! The report's tables as data: a title, columns, rows of cells and notes. `table.txt` and the terminal get
//! them as aligned text ([`Table::text`]), `report.html` as HTML tables (`crate::html`); both from the same
//! cells.

use crate::kv::{EngineWork, KvMeasurement};
use crate::plots::human;
use crate::report::{KvSummary, Report};

/// One column: its heading and whether its cells are numbers (right-aligned).
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub numeric: bool,
}

/// One table of the report.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// Short name (the HTML page's heading).
    pub name: String,
    /// What the figures are (printed above the table).
    pub title: String,
    pub columns: Vec<Column>,
    /// Rows of cells; an empty row separates groups.
    pub rows: Vec<Vec<String>>,
    /// Lines printed under the table.
    pub notes: Vec<String>,
}

impl Table {
    fn new(name: &str, title: impl Into<String>, columns: &[(&str, bool)]) -> Table {
        Table {
            name: name.into(),
            title: title.into(),
            columns: columns
                .iter()
                .map(|&(n, numeric)| Column {
                    name: n.into(),
                    numeric,
                })
                .collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Aligned text: the title, the heading row, the rows (each column as wide as its widest cell), notes.
    pub fn text(&self) -> String {
        let mut widths: Vec<usize> = self
            .columns
            .iter()
            .map(|c| c.name.chars().count())
            .collect();
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: &mut dyn Iterator<Item = &str>| -> String {
            let mut s = String::new();
            for (i, (c, col)) in cells.zip(&self.columns).enumerate() {
                let pad = widths[i].saturating_sub(c.chars().count());
                if i > 0 {
                    s.push(' ');
                }
                if col.numeric {
                    s.push_str(&" ".repeat(pad));
                    s.push_str(c);
                } else {
                    s.push_str(c);
                    s.push_str(&" ".repeat(pad));
                }
            }
            s.trim_end().to_string() + "\n"
        };
        let mut t = String::new();
        if !self.title.is_empty() {
            t += &self.title;
            t.push('\n');
        }
        t += &line(&mut self.columns.iter().map(|c| c.name.as_str()));
        for r in &self.rows {
            if r.is_empty() {
                t.push('\n');
            } else {
                t += &line(&mut r.iter().map(String::as_str));
            }
        }
        for n in &self.notes {
            t += n;
            t.push('\n');
        }
        t
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

fn spread(median: f64, min: f64, max: f64) -> String {
    format!("{} [{}–{}]", human(median), human(min), human(max))
}

/// The conditions, as the lines above the text table.
pub fn conditions_text(r: &Report) -> String {
    let c = &r.conditions;
    format!(
        "nvkv-bench: {} · {} vCPUs · {}\ndevice: {}\n{} s per run after {} s warm-up · {} rounds/boot × {} boots (A B alternation) · medians [min–max]\n{}\n",
        c.environment, c.vcpus, c.host, c.device, c.duration_s, c.warmup_s, c.rounds_per_boot, c.boots, c.pinning
    )
}

/// The driver comparison: each contender on each workload.
pub fn driver(r: &Report) -> Option<Table> {
    if r.summary.is_empty() {
        return None;
    }
    let mut t = Table::new(
        "driver",
        "driver: nvkv's userspace driver against the kernel NVMe path (medians [min–max] over all rounds of all boots)",
        &[
            ("workload", false),
            ("contender", false),
            ("IOPS median [min-max]", true),
            ("p50 us", true),
            ("p99 us", true),
            ("p99.9 us", true),
            ("MMIO/IO", true),
            ("nvkv ×", true),
        ],
    );
    let mut last = None;
    for s in &r.summary {
        if last.is_some() && last.as_ref() != Some(&s.workload) {
            t.rows.push(Vec::new());
        }
        last = Some(s.workload.clone());
        t.rows.push(vec![
            s.workload.label(),
            s.contender.label().into(),
            spread(s.median_iops, s.min_iops, s.max_iops),
            format!("{:.1}", s.median_p50_us),
            format!("{:.1}", s.median_p99_us),
            format!("{:.1}", s.median_p999_us),
            opt(s.median_mmio_writes_per_io, 3),
            opt(s.nvkv_ratio, 2),
        ]);
    }
    Some(t)
}

/// The key-value comparison in the guest: every system on every workload.
pub fn kv(r: &Report) -> Option<Table> {
    if r.kv_summary.is_empty() {
        return None;
    }
    let mut t = Table::new(
        "key-value",
        "key-value in the guest (16 B keys; one client thread; medians [min–max]; nvkv × = this row's ops/s ÷ RocksDB's; p50 ÷ = RocksDB p50 ÷ this row's p50)",
        &[
            ("workload", false),
            ("value", true),
            ("system", false),
            ("ops/s median [min-max]", true),
            ("p50 us", true),
            ("p99 us", true),
            ("p99.9 us", true),
            ("nvkv ×", true),
            ("p50 ÷", true),
        ],
    );
    for s in r.kv_summary.iter().filter(|s| s.system != "device") {
        t.rows.push(vec![
            s.workload.clone(),
            s.value_size.to_string(),
            s.system.clone(),
            spread(s.median_ops_per_s, s.min_ops_per_s, s.max_ops_per_s),
            format!("{:.1}", s.median_p50_us),
            format!("{:.1}", s.median_p99_us),
            format!("{:.1}", s.median_p999_us),
            opt(s.nvkv_ratio, 2),
            opt(s.nvkv_p50_ratio, 1),
        ]);
    }
    if let Some(p) = r.kv_summary.iter().find(|s| s.system == "rocksdb") {
        t.notes.push(format!("rocksdb: {}", p.path));
    }
    let mut paths: Vec<&str> = r
        .kv_summary
        .iter()
        .filter(|s| s.system.starts_with("nvkv"))
        .map(|s| s.path.as_str())
        .collect();
    paths.sort_unstable();
    paths.dedup();
    t.notes.extend(paths.into_iter().map(String::from));
    Some(t)
}

/// What nvkv's shards spent on persistence in each run: how much of a latency is the device's.
pub fn engine_work(sums: &[KvSummary]) -> Option<Table> {
    let rows: Vec<(&KvSummary, &EngineWork)> = sums
        .iter()
        .filter_map(|s| Some((s, s.engine.as_ref()?)))
        .collect();
    if rows.is_empty() {
        return None;
    }
    let mut t = Table::new(
        "persistence work",
        "nvkv persistence work per run (medians): segment writes and flushes, submission to completion; seals (checksum, cache copy, submission) and checkpoints run on the shard; device waits: writes that found every segment write slot busy",
        &[
            ("workload", false),
            ("value", true),
            ("system", false),
            ("cycles", true),
            ("flushes", true),
            ("write us mean/max", true),
            ("flush us mean/max", true),
            ("seal us mean/max", true),
            ("device waits", true),
            ("wait us max", true),
            ("ckpts", true),
            ("ckpt ms total/max", true),
        ],
    );
    for (s, e) in rows {
        t.rows.push(vec![
            s.workload.clone(),
            s.value_size.to_string(),
            s.system.clone(),
            e.cycles.to_string(),
            e.flushes.to_string(),
            format!("{:.0}/{:.0}", e.write_mean_us, e.write_max_us),
            format!("{:.0}/{:.0}", e.flush_mean_us, e.flush_max_us),
            format!("{:.0}/{:.0}", e.seal_mean_us, e.seal_max_us),
            e.device_waits.to_string(),
            format!("{:.0}", e.device_wait_max_us),
            e.checkpoints.to_string(),
            format!("{:.1}/{:.1}", e.checkpoint_total_ms, e.checkpoint_max_ms),
        ]);
    }
    Some(t)
}

/// Durable puts, one client, one at a time, by acknowledgement path: the persistence cycle (segment
/// write + Flush), a durable log in the PMR, one on the NVDIMM, and RocksDB `--sync=1`; with the ratio
/// of RocksDB's p50 to each, and each path's durable fill rate against the non-durable fill through
/// the same handle.
pub fn durable_put(sums: &[KvSummary]) -> Option<Table> {
    let rows: Vec<&KvSummary> = sums
        .iter()
        .filter(|s| s.workload == "durable_put")
        .collect();
    if rows.is_empty() {
        return None;
    }
    let mut t = Table::new(
        "durable puts",
        "durable put, one client, each acknowledged once durable (16 B keys; medians over all rounds of all boots)",
        &[
            ("value", true),
            ("system", false),
            ("ops/s", true),
            ("p50 us", true),
            ("p99 us", true),
            ("p99.9 us", true),
            ("RocksDB p50÷", true),
            ("% of fill ops/s", true),
            ("by log/cycle", true),
        ],
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
        let nvkv = s.system.starts_with("nvkv");
        t.rows.push(vec![
            s.value_size.to_string(),
            s.system.clone(),
            human(s.median_ops_per_s),
            format!("{:.1}", s.median_p50_us),
            format!("{:.1}", s.median_p99_us),
            format!("{:.1}", s.median_p999_us),
            opt(s.nvkv_p50_ratio, 1),
            match fill {
                Some(f) if nvkv && f > 0.0 => format!("{:.0}%", 100.0 * s.median_ops_per_s / f),
                _ => "-".into(),
            },
            match (&s.engine, nvkv) {
                (Some(e), true) => format!("{}/{}", e.durable_by_log, e.durable_by_cycle),
                _ => "-".into(),
            },
        ]);
    }
    t.notes.push(
        "(nvkv / nvkv-handle: acknowledged by the persistence cycle (segment write + Flush), 1 ms commit \
         interval; nvkv-pmr, nvkv-nvdimm (shard-local) and their -handle rows: by the durable-log record's \
         barrier, 100 ms commit interval; % of fill: durable puts per second ÷ the non-durable fill's on the \
         same path; QEMU 7.2's NVMe reports a volatile write cache (Identify VWC bit 0 = 1) even with \
         write-cache=off, so the cycle path issues a Flush here; on a drive without one (VWC = 0, power-loss \
         protection) the engine skips the Flush)"
            .into(),
    );
    Some(t)
}

/// Durable-write throughput (user bytes of durable puts per second) against the device's raw sequential
/// write bandwidth measured in the same boots.
pub fn durable_vs_raw(sums: &[KvSummary]) -> Option<Table> {
    let raw = sums
        .iter()
        .find(|s| s.system == "device" && s.workload == "raw_seq_write")?;
    let raw_mb = raw.median_mb_per_s.unwrap_or(0.0);
    let mut t = Table::new(
        "durable throughput",
        format!(
            "durable-write throughput against the raw device, same boots (medians): raw sequential write {raw_mb:.1} MB/s ({})",
            raw.path
        ),
        &[
            ("value", true),
            ("durable ops/s", true),
            ("user data MB/s", true),
            ("% of raw", true),
            ("p50 us", true),
        ],
    );
    for s in sums
        .iter()
        .filter(|s| s.system.starts_with("nvkv") && s.workload == "durable_throughput")
    {
        let mb = s.median_mb_per_s.unwrap_or(0.0);
        t.rows.push(vec![
            s.value_size.to_string(),
            human(s.median_ops_per_s),
            format!("{mb:.2}"),
            format!(
                "{:.1}",
                if raw_mb > 0.0 {
                    100.0 * mb / raw_mb
                } else {
                    0.0
                }
            ),
            format!("{:.0}", s.median_p50_us),
        ]);
    }
    t.notes.push(format!(
        "(one client, {} durable puts in flight per batch, answered when the covering persistence cycle completes; 16 B keys)",
        crate::kv::DURABLE_WINDOW
    ));
    Some(t)
}

/// The host CPU path: each RocksDB figure with nvkv's ratio for the same workload and value size.
pub fn kv_host(ms: &[KvMeasurement]) -> Option<Table> {
    if ms.is_empty() {
        return None;
    }
    let mut t = Table::new(
        "CPU path on the host",
        "key-value CPU path on the host (one core, 16 B keys; percentiles include ~20 ns of clock reads for nvkv)",
        &[
            ("workload", false),
            ("value", true),
            ("system", false),
            ("path", false),
            ("ops/s", true),
            ("p50 us", true),
            ("p99 us", true),
            ("nvkv ×", true),
        ],
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
        t.rows.push(vec![
            m.workload.clone(),
            m.value_size.to_string(),
            m.system.clone(),
            m.path.clone(),
            format!("{:.0}", m.ops_per_s),
            format!("{:.2}", m.latency.p50_us),
            format!("{:.2}", m.latency.p99_us),
            ratio,
        ]);
    }
    Some(t)
}

/// Embedding: libnvkv from C beside the Rust handle, per workload, backend and client threads (medians).
pub fn embed(ms: &[KvMeasurement]) -> Option<Table> {
    if ms.is_empty() {
        return None;
    }
    let mut t = Table::new(
        "Embedding: C ABI and Rust handle",
        "embedding: libnvkv from C (bench/c/embed.c) against the Rust handle, same workloads, alternating (medians)",
        &[
            ("workload", false),
            ("backend", false),
            ("threads", true),
            ("C ops/s", true),
            ("Rust ops/s", true),
            ("C / Rust", true),
            ("C p50 us", true),
            ("Rust p50 us", true),
            ("runs", true),
        ],
    );
    let mut last = String::new();
    for r in crate::embed::rows(ms) {
        if !last.is_empty() && last != r.backend {
            t.rows.push(Vec::new());
        }
        last = r.backend.clone();
        t.rows.push(vec![
            r.workload,
            r.backend,
            r.threads.to_string(),
            format!("{:.0}", r.c_ops_per_s),
            format!("{:.0}", r.rust_ops_per_s),
            format!("{:.2}", r.ratio),
            format!("{:.2}", r.c_p50_us),
            format!("{:.2}", r.rust_p50_us),
            r.samples.to_string(),
        ]);
    }
    t.notes.push(
        "(16 B keys, 100 B values, one shard pinned and busy-polling; -batch64: 64 requests queued, waited on once, p50 per batch; \
         C: nvkv_put/nvkv_get, nvkv_batch_get_many/put_many + nvkv_batch_results; Rust: DbHandle put_opts/get_into, Client batches)"
            .into(),
    );
    Some(t)
}

/// Every table of a report, in the order the text and the page show them.
pub fn all(r: &Report) -> Vec<Table> {
    [
        driver(r),
        kv(r),
        engine_work(&r.kv_summary),
        durable_put(&r.kv_summary),
        durable_vs_raw(&r.kv_summary),
        kv_host(&r.kv_host),
        embed(&r.embed),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Notes and failed runs of the report (under the driver table in the text).
pub fn notes(r: &Report) -> Vec<String> {
    let mut n: Vec<String> = r
        .conditions
        .notes
        .iter()
        .map(|n| format!("note: {n}"))
        .collect();
    n.extend(
        r.info
            .iter()
            .filter(|(k, _)| k.starts_with("failed"))
            .map(|(k, v)| format!("{k}: {v}")),
    );
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_aligns_columns_and_separates_groups() {
        let mut t = Table::new("t", "title", &[("name", false), ("n", true)]);
        t.rows.push(vec!["a".into(), "1".into()]);
        t.rows.push(Vec::new());
        t.rows.push(vec!["long name".into(), "12345".into()]);
        t.notes.push("note".into());
        assert_eq!(
            t.text(),
            "title\nname          n\na             1\n\nlong name 12345\nnote\n"
        );
    }
}
