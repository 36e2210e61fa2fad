//! A small SVG line chart: enough for IOPS-versus-queue-depth and latency CDF plots, no dependencies.

use std::fmt::Write;

const W: f64 = 760.0;
const H: f64 = 440.0;
const L: f64 = 80.0;
const R: f64 = 220.0;
const T: f64 = 50.0;
const B: f64 = 60.0;
const COLORS: &[&str] = &[
    "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

/// One line of the chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Renders a line chart. With `log_x` the x axis is logarithmic (base 10 ticks, or powers of two when
/// `pow2_ticks`).
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_x: bool,
    pow2_ticks: bool,
) -> String {
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|p| p.0 > 0.0 || !log_x)
        .collect();
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        s,
        r#"<rect width="{W}" height="{H}" fill="white"/><text x="{}" y="24" font-size="15" text-anchor="middle">{}</text>"#,
        (W - R + L) / 2.0,
        esc(title)
    );
    if pts.is_empty() {
        s.push_str("<text x=\"100\" y=\"100\">no data</text></svg>");
        return s;
    }
    let fx = |x: f64| if log_x { x.max(1e-9).log10() } else { x };
    let (mut x0, mut x1) = pts.iter().fold((f64::MAX, f64::MIN), |a, p| {
        (a.0.min(fx(p.0)), a.1.max(fx(p.0)))
    });
    if x1 <= x0 {
        x1 = x0 + 1.0;
        x0 -= 1.0;
    }
    let y1 = pts.iter().fold(0.0f64, |a, p| a.max(p.1)) * 1.08;
    let y1 = if y1 <= 0.0 { 1.0 } else { y1 };
    let px = |x: f64| L + (fx(x) - x0) / (x1 - x0) * (W - L - R);
    let py = |y: f64| H - B - y / y1 * (H - T - B);
    // Axes.
    let _ = write!(
        s,
        r##"<line x1="{L}" y1="{}" x2="{}" y2="{}" stroke="#333"/><line x1="{L}" y1="{T}" x2="{L}" y2="{}" stroke="#333"/>"##,
        H - B,
        W - R,
        H - B,
        H - B
    );
    // Y ticks.
    for i in 0..=5 {
        let v = y1 * i as f64 / 5.0;
        let y = py(v);
        let _ = write!(
            s,
            r##"<line x1="{L}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            W - R,
            L - 6.0,
            y + 4.0,
            human(v)
        );
    }
    // X ticks.
    let ticks: Vec<f64> = if log_x && pow2_ticks {
        (0..20)
            .map(|i| 2f64.powi(i))
            .filter(|&v| fx(v) >= x0 - 1e-9 && fx(v) <= x1 + 1e-9)
            .collect()
    } else if log_x {
        (-3..8)
            .map(|i| 10f64.powi(i))
            .filter(|&v| fx(v) >= x0 - 1e-9 && fx(v) <= x1 + 1e-9)
            .collect()
    } else {
        (0..=5).map(|i| x0 + (x1 - x0) * i as f64 / 5.0).collect()
    };
    for v in ticks {
        let x = px(v);
        let _ = write!(
            s,
            r##"<line x1="{x}" y1="{T}" x2="{x}" y2="{}" stroke="#eee"/><text x="{x}" y="{}" text-anchor="middle">{}</text>"##,
            H - B,
            H - B + 16.0,
            human(v)
        );
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (W - R + L) / 2.0,
        H - 18.0,
        esc(x_label)
    );
    let _ = write!(
        s,
        r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">{}</text>"#,
        (H - B + T) / 2.0,
        (H - B + T) / 2.0,
        esc(y_label)
    );
    for (i, ser) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let mut p: Vec<(f64, f64)> = ser
            .points
            .iter()
            .copied()
            .filter(|p| p.0 > 0.0 || !log_x)
            .collect();
        p.sort_by(|a, b| a.0.total_cmp(&b.0));
        let path: Vec<String> = p
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for &(x, y) in &p {
            let _ = write!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}"/>"#,
                px(x),
                py(y)
            );
        }
        let ly = T + 10.0 + i as f64 * 20.0;
        let _ = write!(
            s,
            r#"<rect x="{}" y="{}" width="14" height="4" fill="{c}"/><text x="{}" y="{}">{}</text>"#,
            W - R + 12.0,
            ly - 4.0,
            W - R + 32.0,
            ly + 2.0,
            esc(&ser.label)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// 1234567 → "1.23M", 0.5 → "0.5".
pub fn human(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        let s = format!("{:.2}", v / 1e6);
        format!("{}M", s.trim_end_matches('0').trim_end_matches('.'))
    } else if a >= 1e3 {
        let s = format!("{:.1}", v / 1e3);
        format!("{}K", s.trim_end_matches(".0"))
    } else if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_has_a_polyline_per_series_and_escapes_labels() {
        let svg = line_chart(
            "t <x>",
            "QD",
            "IOPS",
            &[
                Series {
                    label: "a&b".into(),
                    points: vec![(1.0, 10.0), (32.0, 100.0)],
                },
                Series {
                    label: "c".into(),
                    points: vec![(1.0, 5.0)],
                },
            ],
            true,
            true,
        );
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a&amp;b") && svg.contains("t &lt;x&gt;"));
        assert!(svg.ends_with("</svg>\n"));
    }

    #[test]
    fn human_numbers() {
        assert_eq!(human(1500.0), "1.5K");
        assert_eq!(human(2_000.0), "2K");
        assert_eq!(human(0.25), "0.25");
        assert_eq!(human(1_250_000.0), "1.25M");
    }
}
