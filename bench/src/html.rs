//! `report.html`: one self-contained page (no scripts, no external files) with the conditions, what was
//! measured, every plot (the SVG inline, each linked to its file beside the page) and every table.

use crate::report::{Figure, Report};
use crate::tables::Table;
use std::collections::BTreeSet;
use std::fmt::Write;

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const STYLE: &str = "
body { font-family: sans-serif; margin: 24px auto; max-width: 1240px; color: #222; padding: 0 12px; }
h1 { font-size: 26px; margin-bottom: 4px; }
h2 { font-size: 20px; margin-top: 32px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 16px; margin: 20px 0 4px; }
p.title { margin: 4px 0 8px; color: #444; }
table { border-collapse: collapse; font-size: 13px; margin: 4px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; white-space: nowrap; }
th { background: #f3f5f8; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.sep td { border: none; height: 8px; padding: 0; }
dl.conditions { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; font-size: 14px; }
dl.conditions dt { font-weight: bold; }
dl.conditions dd { margin: 0; }
.note { font-size: 12px; color: #555; max-width: 1200px; }
figure { margin: 16px 0; }
figure svg { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 13px; color: #555; }
.scroll { overflow-x: auto; }
";

fn table_html(t: &Table) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "<h3>{}</h3>", escape(&t.name));
    if !t.title.is_empty() {
        let _ = writeln!(s, "<p class=\"title\">{}</p>", escape(&t.title));
    }
    s.push_str("<div class=\"scroll\"><table>\n<thead><tr>");
    for c in &t.columns {
        let _ = write!(s, "<th>{}</th>", escape(&c.name));
    }
    s.push_str("</tr></thead>\n<tbody>\n");
    for r in &t.rows {
        if r.is_empty() {
            let _ = writeln!(
                s,
                "<tr class=\"sep\"><td colspan=\"{}\"></td></tr>",
                t.columns.len()
            );
            continue;
        }
        s.push_str("<tr>");
        for (cell, col) in r.iter().zip(&t.columns) {
            let class = if col.numeric { " class=\"n\"" } else { "" };
            let _ = write!(s, "<td{class}>{}</td>", escape(cell));
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</tbody></table></div>\n");
    for n in &t.notes {
        let _ = writeln!(s, "<p class=\"note\">{}</p>", escape(n));
    }
    s
}

/// What the report holds: the driver workloads and contenders, the key-value workloads, systems and value
/// sizes, and how many runs of each.
fn measured(r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    if !r.measurements.is_empty() {
        let workloads: BTreeSet<String> = r.summary.iter().map(|s| s.workload.label()).collect();
        let contenders: BTreeSet<&str> = r.summary.iter().map(|s| s.contender.label()).collect();
        out.push(format!(
            "driver: {} runs of {} workloads ({}) by {} contenders ({})",
            r.measurements.len(),
            workloads.len(),
            workloads.into_iter().collect::<Vec<_>>().join(", "),
            contenders.len(),
            contenders.into_iter().collect::<Vec<_>>().join(", "),
        ));
    }
    let kv: Vec<&crate::kv::KvMeasurement> = r.kv.iter().filter(|m| m.system != "device").collect();
    if !kv.is_empty() {
        let workloads: BTreeSet<&str> = kv.iter().map(|m| m.workload.as_str()).collect();
        let systems: BTreeSet<&str> = kv.iter().map(|m| m.system.as_str()).collect();
        let sizes: BTreeSet<usize> = kv.iter().map(|m| m.value_size).collect();
        out.push(format!(
            "key-value in the guest: {} runs of {} workloads ({}) by {} systems ({}), values of {} B",
            kv.len(),
            workloads.len(),
            workloads.into_iter().collect::<Vec<_>>().join(", "),
            systems.len(),
            systems.into_iter().collect::<Vec<_>>().join(", "),
            sizes
                .into_iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(" and "),
        ));
    }
    let raw = r.kv.iter().filter(|m| m.system == "device").count();
    if raw > 0 {
        out.push(format!(
            "the raw device: {raw} runs of sequential writes, in the same boots as the key-value runs"
        ));
    }
    if !r.kv_host.is_empty() {
        out.push(format!(
            "key-value CPU path on the host: {} runs (nvkv shard-local on the memory backend, db_bench on tmpfs)",
            r.kv_host.len()
        ));
    }
    if !r.embed.is_empty() {
        out.push(format!(
            "embedding: {} runs of libnvkv from C and of the Rust handle (fill, random reads, 50/50; 1 and 4 threads; unbatched and batches of 64)",
            r.embed.len()
        ));
    }
    out
}

fn conditions_html(r: &Report) -> String {
    let c = &r.conditions;
    let mut rows: Vec<(&str, String)> = vec![
        ("environment", c.environment.clone()),
        ("vCPUs", c.vcpus.to_string()),
        ("machine", c.host.clone()),
    ];
    if let Some(q) = &c.qemu {
        rows.push(("QEMU", q.clone()));
    }
    if let Some(k) = &c.guest_kernel {
        rows.push(("guest kernel", k.clone()));
    }
    rows.push(("device", c.device.clone()));
    rows.push((
        "runs",
        format!(
            "{} s per driver run after {} s warm-up; {} rounds per boot × {} boots, contenders alternating (A B, B A); medians [min–max] over all rounds of all boots",
            c.duration_s, c.warmup_s, c.rounds_per_boot, c.boots
        ),
    ));
    rows.push(("pinning", c.pinning.clone()));
    rows.push(("started", format!("{} (UTC)", c.started)));
    rows.push(("nvkv", c.nvkv_version.clone()));
    for (k, v) in r.info.iter().filter(|(k, _)| !k.starts_with("failed")) {
        rows.push((k.as_str(), v.clone()));
    }
    let mut s = String::from("<dl class=\"conditions\">\n");
    for (k, v) in rows {
        let _ = writeln!(s, "<dt>{}</dt><dd>{}</dd>", escape(k), escape(&v));
    }
    s.push_str("</dl>\n");
    for n in &c.notes {
        let _ = writeln!(s, "<p class=\"note\">note: {}</p>", escape(n));
    }
    s
}

/// The whole page. `figures` are inlined (their SVG is plotters' output, whose text is already escaped).
pub fn page(r: &Report, tables: &[Table], figures: &[Figure]) -> String {
    let mut s = String::new();
    let title = format!(
        "nvkv-bench report, {} ({})",
        r.conditions.started, r.conditions.environment
    );
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        escape(&title)
    );
    let _ = writeln!(s, "<h1>nvkv-bench report</h1>");
    let _ = writeln!(
        s,
        "<p class=\"title\">{} · {} vCPUs · schema {}</p>",
        escape(&r.conditions.environment),
        r.conditions.vcpus,
        escape(&r.schema)
    );
    s.push_str("<h2>Conditions</h2>\n");
    s.push_str(&conditions_html(r));
    s.push_str("<h2>What was measured</h2>\n<ul>\n");
    for m in measured(r) {
        let _ = writeln!(s, "<li>{}</li>", escape(&m));
    }
    s.push_str("</ul>\n");
    let failed: Vec<(&String, &String)> = r
        .info
        .iter()
        .filter(|(k, _)| k.starts_with("failed"))
        .collect();
    if !failed.is_empty() {
        s.push_str("<h2>Failed runs</h2>\n<ul>\n");
        for (k, v) in failed {
            let _ = writeln!(s, "<li>{}: {}</li>", escape(k), escape(v));
        }
        s.push_str("</ul>\n");
    }
    if !figures.is_empty() {
        s.push_str("<h2>Plots</h2>\n");
        for f in figures {
            let svg = f.svg.trim_start();
            let svg = if svg.starts_with("<?xml") {
                svg.split_once("?>").map(|x| x.1).unwrap_or(svg)
            } else {
                svg
            };
            let _ = writeln!(
                s,
                "<figure>\n{}\n<figcaption>{} (<a href=\"{}\">{}</a>)</figcaption>\n</figure>",
                svg.trim(),
                escape(&f.title),
                escape(&f.file),
                escape(&f.file)
            );
        }
    }
    if !tables.is_empty() {
        s.push_str("<h2>Tables</h2>\n");
        for t in tables {
            s.push_str(&table_html(t));
        }
    }
    let _ = writeln!(
        s,
        "<p class=\"note\">Written by nvkv-bench {} beside report.json (all figures), table.txt and the HdrHistogram interval logs (hdr/).</p>",
        escape(&r.conditions.nvkv_version)
    );
    s.push_str("</body>\n</html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape(r#"<a href="x">&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn tables_become_html_tables_with_escaped_cells() {
        let t = Table {
            name: "n<1>".into(),
            title: "t & u".into(),
            columns: vec![
                crate::tables::Column {
                    name: "a".into(),
                    numeric: false,
                },
                crate::tables::Column {
                    name: "b".into(),
                    numeric: true,
                },
            ],
            rows: vec![vec!["<x>".into(), "1".into()], vec![]],
            notes: vec!["note".into()],
        };
        let h = table_html(&t);
        assert!(h.contains("<h3>n&lt;1&gt;</h3>") && h.contains("t &amp; u"));
        assert!(h.contains("<td>&lt;x&gt;</td><td class=\"n\">1</td>"));
        assert!(h.contains("class=\"sep\""));
    }
}
