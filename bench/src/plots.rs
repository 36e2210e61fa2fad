//! The report's plots, drawn with `plotters` on its SVG backend.
//!
//! Text goes into the SVG as `<text>` elements (plotters escapes it) and is laid out by whatever renders the
//! file, so no font files, fontconfig or freetype are needed to draw: plotters is built without its `ttf`
//! and `ab_glyph` features and estimates text widths itself. Titles are sized from their length so they fit
//! inside the image; the legend sits in a margin of its own at the right.
//!
//! - [`line_chart`]: a y value against a logarithmic x axis with ticks at powers of two (IOPS against queue
//!   depth).
//! - [`latency_percentiles`]: latency against percentile on the HdrHistogram axis: x = 1/(1−p) on a log
//!   scale, labelled p50, p90, p99, p99.9, p99.99.
//! - [`grouped_bars`]: one group of bars per category (workload, acknowledgement path), one bar per series,
//!   each bar labelled with its value.

use anyhow::{anyhow, Result};
use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::ops::Range;

/// Image size of every plot (pixels).
pub const WIDTH: u32 = 960;
pub const HEIGHT: u32 = 520;
/// Room at the right for the legend: enough for its longest label, within these bounds.
const LEGEND_W: (u32, u32) = (110, 260);
/// Room at the top for the title and the subtitle.
const HEADER_H: u32 = 62;
const FONT: &str = "sans-serif";

/// Tableau 10: distinguishable, and the same colour means the same series in every plot of a report.
const PALETTE: [RGBColor; 10] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
];

/// The colour of series `i`.
pub fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// One series of bars: a value (or none) for each group of a [`grouped_bars`] chart.
#[derive(Debug, Clone)]
pub struct Bars {
    pub label: String,
    pub values: Vec<Option<f64>>,
}

/// An axis (linear or log, whatever `inner` is) with its ticks where the caller wants them and labelled
/// by the caller: powers of two for queue depths, p50 … p99.99 for percentiles, group names for bars.
struct Ticked<'a, R> {
    inner: R,
    ticks: Vec<f64>,
    label: &'a dyn Fn(f64) -> String,
}

impl<R: Ranged<ValueType = f64>> Ranged for Ticked<'_, R> {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;
    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }
    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }
    fn range(&self) -> Range<f64> {
        self.inner.range()
    }
    fn axis_pixel_range(&self, limit: (i32, i32)) -> Range<i32> {
        self.inner.axis_pixel_range(limit)
    }
}

impl<R> ValueFormatter<f64> for Ticked<'_, R> {
    fn format_ext(&self, value: &f64) -> String {
        (self.label)(*value)
    }
}

/// Title and subtitle of a plot.
#[derive(Debug, Clone)]
pub struct Heading<'a> {
    pub title: &'a str,
    /// Conditions in a smaller line under the title ("QEMU TCG, 2 vCPUs, medians").
    pub subtitle: &'a str,
}

fn plot_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing a plot: {e}")
}

/// The plotters font size (`size / 1.24` ends up in the SVG) at which `text` fits in `width` pixels, at most
/// `max`. Assumes 0.62 em per character, a little wider than DejaVu Sans's average, so it errs on the small
/// side.
pub fn fitting_font_size(text: &str, width: f64, max: f64) -> f64 {
    let chars = text.chars().count().max(1) as f64;
    (width * 1.24 / (0.62 * chars)).clamp(6.0, max)
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

/// The legend's width for these labels (about 8 px per character at its 16-point font, plus the key).
fn legend_width(labels: &[String]) -> u32 {
    let chars = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0) as u32;
    (48 + 8 * chars).clamp(LEGEND_W.0, LEGEND_W.1)
}

/// Draws the white background, the title and subtitle, and the legend; returns the area left for the chart.
fn frame<'a>(
    root: &DrawingArea<SVGBackend<'a>, Shift>,
    heading: &Heading<'_>,
    legend: &[String],
    line_legend: bool,
) -> Result<DrawingArea<SVGBackend<'a>, Shift>> {
    root.fill(&WHITE).map_err(plot_err)?;
    let w = f64::from(WIDTH) - 24.0;
    let center = Pos::new(HPos::Center, VPos::Top);
    let ts = TextStyle::from((FONT, fitting_font_size(heading.title, w, 24.0)).into_font())
        .pos(center)
        .color(&BLACK);
    root.draw(&Text::new(
        heading.title.to_string(),
        (WIDTH as i32 / 2, 8),
        ts,
    ))
    .map_err(plot_err)?;
    if !heading.subtitle.is_empty() {
        let ss = TextStyle::from((FONT, fitting_font_size(heading.subtitle, w, 16.0)).into_font())
            .pos(center)
            .color(&RGBColor(0x55, 0x55, 0x55));
        root.draw(&Text::new(
            heading.subtitle.to_string(),
            (WIDTH as i32 / 2, 38),
            ss,
        ))
        .map_err(plot_err)?;
    }
    let chart_and_legend = root.margin(HEADER_H, 0, 0, 0);
    let legend_w = legend_width(legend);
    let (chart, legend_area) = chart_and_legend.split_horizontally(WIDTH.saturating_sub(legend_w));
    let lw = f64::from(legend_w) - 40.0;
    for (i, label) in legend.iter().enumerate() {
        let y = 30 + 24 * i as i32;
        let c = color(i);
        if line_legend {
            legend_area
                .draw(&Rectangle::new([(8, y - 2), (28, y + 2)], c.filled()))
                .map_err(plot_err)?;
            legend_area
                .draw(&Circle::new((18, y), 4, c.filled()))
                .map_err(plot_err)?;
        } else {
            legend_area
                .draw(&Rectangle::new([(8, y - 7), (28, y + 7)], c.filled()))
                .map_err(plot_err)?;
        }
        let ls = TextStyle::from((FONT, fitting_font_size(label, lw, 16.0)).into_font())
            .pos(Pos::new(HPos::Left, VPos::Center))
            .color(&BLACK);
        legend_area
            .draw(&Text::new(label.clone(), (36, y), ls))
            .map_err(plot_err)?;
    }
    Ok(chart)
}

/// The range of a y axis holding `values`: from 0 (linear) or, on a log axis, from the power of ten below
/// the smallest (`bars`: they stand on it) or a little under the smallest (lines), with head room above
/// the largest (for the value labels of bars).
fn y_range(values: impl Iterator<Item = f64>, log: bool, bars: bool) -> (f64, f64) {
    let v: Vec<f64> = values
        .filter(|v| v.is_finite() && (*v > 0.0 || !log))
        .collect();
    let max = v.iter().copied().fold(0.0f64, f64::max);
    if log {
        let min = v.iter().copied().fold(f64::MAX, f64::min);
        if v.is_empty() || max <= 0.0 {
            return (1.0, 10.0);
        }
        let lo = if bars {
            10f64.powf(min.log10().floor())
        } else {
            min / 1.4
        };
        (lo, (max * if bars { 1.8 } else { 1.4 }).max(lo * 10.0))
    } else {
        (0.0, if max > 0.0 { max * 1.12 } else { 1.0 })
    }
}

/// Whether values spread over so many orders of magnitude that a linear axis would flatten the small ones.
pub fn wants_log(values: impl Iterator<Item = f64>) -> bool {
    let v: Vec<f64> = values.filter(|v| v.is_finite() && *v > 0.0).collect();
    let max = v.iter().copied().fold(0.0f64, f64::max);
    let min = v.iter().copied().fold(f64::MAX, f64::min);
    !v.is_empty() && max / min > 30.0
}

fn finish(root: DrawingArea<SVGBackend<'_>, Shift>) -> Result<()> {
    root.present().map_err(plot_err)
}

/// Draws lines and markers on a chart whose x axis is built by the caller (log with chosen ticks).
#[allow(clippy::too_many_arguments)]
fn draw_lines<X>(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    x: X,
    series: &[Series],
    log_y: bool,
    x_label: &str,
    y_label: &str,
    map_x: &dyn Fn(f64) -> Option<f64>,
) -> Result<()>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let pts = |s: &Series| -> Vec<(f64, f64)> {
        let mut p: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter_map(|&(x, y)| Some((map_x(x)?, y)))
            .filter(|&(_, y)| y.is_finite() && (y > 0.0 || !log_y))
            .collect();
        p.sort_by(|a, b| a.0.total_cmp(&b.0));
        p
    };
    let (y0, y1) = y_range(
        series.iter().flat_map(|s| pts(s).into_iter().map(|p| p.1)),
        log_y,
        false,
    );
    let y_fmt = |v: &f64| human(*v);
    macro_rules! body {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x_label)
                .y_desc(y_label)
                .y_label_formatter(&y_fmt)
                .y_labels(8)
                .label_style((FONT, 15))
                .axis_desc_style((FONT, 16))
                .max_light_lines(if log_y { 9 } else { 1 })
                .light_line_style(RGBColor(0xf0, 0xf0, 0xf0))
                .bold_line_style(RGBColor(0xd0, 0xd0, 0xd0))
                .draw()
                .map_err(plot_err)?;
            for (i, s) in series.iter().enumerate() {
                let c = color(i);
                let p = pts(s);
                chart
                    .draw_series(LineSeries::new(p.clone(), c.stroke_width(2)))
                    .map_err(plot_err)?;
                chart
                    .draw_series(p.into_iter().map(|xy| Circle::new(xy, 4, c.filled())))
                    .map_err(plot_err)?;
            }
        }};
    }
    let mut b = ChartBuilder::on(area);
    b.margin(14)
        .margin_right(10)
        .x_label_area_size(52)
        .y_label_area_size(78);
    if log_y {
        body!(b
            .build_cartesian_2d(x, (y0..y1).log_scale())
            .map_err(plot_err)?);
    } else {
        body!(b.build_cartesian_2d(x, y0..y1).map_err(plot_err)?);
    }
    Ok(())
}

/// A line chart against a logarithmic x axis with ticks at the powers of two the data spans (queue depths).
pub fn line_chart(
    heading: &Heading<'_>,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, HEIGHT)).into_drawing_area();
        let labels: Vec<String> = series.iter().map(|s| s.label.clone()).collect();
        let area = frame(&root, heading, &labels, true)?;
        let xs: Vec<f64> = series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .filter(|x| *x > 0.0)
            .collect();
        let lo = xs
            .iter()
            .copied()
            .fold(f64::MAX, f64::min)
            .min(1.0)
            .log2()
            .floor();
        let hi = xs
            .iter()
            .copied()
            .fold(2.0, f64::max)
            .log2()
            .ceil()
            .max(lo + 1.0);
        // log2(x) on a linear axis: ticks land on whole powers of two.
        let ticks: Vec<f64> = (lo as i32..=hi as i32).map(f64::from).collect();
        let pad = (hi - lo) * 0.04;
        let fmt = |v: f64| format!("{}", 2f64.powf(v.round()));
        let x = Ticked {
            inner: RangedCoordf64::from((lo - pad)..(hi + pad)),
            ticks,
            label: &fmt,
        };
        let map = |x: f64| (x > 0.0).then(|| x.log2());
        draw_lines(&area, x, series, false, x_label, y_label, &map)?;
        finish(root)?;
    }
    Ok(out)
}

/// The HdrHistogram percentile axis: x = 1/(1 − p) for p in percent.
fn hdr_x(p: f64) -> Option<f64> {
    (0.0..100.0).contains(&p).then(|| 100.0 / (100.0 - p))
}

/// Tick labels of the HdrHistogram axis at 2, 10, 100, ... (p50, p90, p99, ...).
fn hdr_label(x: f64) -> String {
    let p = 100.0 - 100.0 / x;
    let s = format!("{p:.4}");
    format!("p{}", s.trim_end_matches('0').trim_end_matches('.'))
}

/// Latency against percentile on the HdrHistogram axis (x = 1/(1−p), log scale; ticks p50, p90, p99,
/// p99.9, p99.99 as far as the data goes). Points are (percentile in %, microseconds). The y axis is
/// logarithmic when the latencies span more than a factor of 30.
pub fn latency_percentiles(heading: &Heading<'_>, series: &[Series]) -> Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, HEIGHT)).into_drawing_area();
        let labels: Vec<String> = series.iter().map(|s| s.label.clone()).collect();
        let area = frame(&root, heading, &labels, true)?;
        let xmax = series
            .iter()
            .flat_map(|s| s.points.iter().filter_map(|p| hdr_x(p.0)))
            .fold(100.0, f64::max);
        let decades = xmax.log10().ceil().clamp(2.0, 6.0) as i32;
        let ticks: Vec<f64> = std::iter::once(2.0)
            .chain((1..=decades).map(|d| 10f64.powi(d)))
            .collect();
        let hi = 10f64.powi(decades) * 1.25;
        let x = Ticked {
            inner: LogCoord::from((1.0f64..hi).log_scale()),
            ticks,
            label: &hdr_label,
        };
        let log_y = wants_log(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
        draw_lines(
            &area,
            x,
            series,
            log_y,
            "percentile (HdrHistogram axis: 1/(1−p), log scale)",
            if log_y {
                "latency (µs, log scale)"
            } else {
                "latency (µs)"
            },
            &hdr_x,
        )?;
        finish(root)?;
    }
    Ok(out)
}

/// Grouped bars: one group per entry of `groups`, one bar per [`Bars`] series, each labelled with its
/// value. `log_y` draws the bars from the power of ten below the smallest value on a log axis.
pub fn grouped_bars(
    heading: &Heading<'_>,
    y_label: &str,
    groups: &[String],
    bars: &[Bars],
    log_y: bool,
) -> Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, HEIGHT)).into_drawing_area();
        let labels: Vec<String> = bars.iter().map(|s| s.label.clone()).collect();
        let area = frame(&root, heading, &labels, false)?;
        let n = groups.len().max(1) as f64;
        let (y0, y1) = y_range(
            bars.iter().flat_map(|b| b.values.iter().flatten().copied()),
            log_y,
            true,
        );
        let ticks: Vec<f64> = (0..groups.len()).map(|i| i as f64 + 0.5).collect();
        let x_fmt = |v: f64| {
            groups
                .get(v.floor().max(0.0) as usize)
                .cloned()
                .unwrap_or_default()
        };
        let x = Ticked {
            inner: RangedCoordf64::from(0.0..n),
            ticks,
            label: &x_fmt,
        };
        let y_fmt = |v: &f64| human(*v);
        // Group labels shrink to fit their slot.
        let slot = (f64::from(WIDTH - legend_width(&labels)) - 100.0) / n;
        let longest = groups.iter().map(|g| g.chars().count()).max().unwrap_or(1);
        let x_size = fitting_font_size(&"m".repeat(longest), slot - 6.0, 15.0);
        let bar_w = 0.8 / bars.len().max(1) as f64;
        let value_size = fitting_font_size("00.0K", bar_w * slot, 12.0);
        macro_rules! body {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .disable_x_mesh()
                    .y_desc(y_label)
                    .y_label_formatter(&y_fmt)
                    .y_labels(8)
                    .x_label_style((FONT, x_size))
                    .y_label_style((FONT, 15))
                    .axis_desc_style((FONT, 16))
                    .max_light_lines(if log_y { 9 } else { 1 })
                    .light_line_style(RGBColor(0xf2, 0xf2, 0xf2))
                    .bold_line_style(RGBColor(0xdd, 0xdd, 0xdd))
                    .draw()
                    .map_err(plot_err)?;
                for (j, b) in bars.iter().enumerate() {
                    let c = color(j);
                    let rects = b.values.iter().enumerate().filter_map(|(i, v)| {
                        let v = (*v)?;
                        let x0 = i as f64 + 0.1 + j as f64 * bar_w;
                        Some(Rectangle::new(
                            [(x0, y0), (x0 + bar_w * 0.92, v)],
                            c.filled(),
                        ))
                    });
                    chart.draw_series(rects).map_err(plot_err)?;
                    let texts = b.values.iter().enumerate().filter_map(|(i, v)| {
                        let v = (*v)?;
                        let xc = i as f64 + 0.1 + (j as f64 + 0.46) * bar_w;
                        Some(Text::new(
                            human(v),
                            (xc, v),
                            TextStyle::from((FONT, value_size).into_font())
                                .pos(Pos::new(HPos::Center, VPos::Bottom))
                                .color(&RGBColor(0x33, 0x33, 0x33)),
                        ))
                    });
                    chart.draw_series(texts).map_err(plot_err)?;
                }
            }};
        }
        let mut b = ChartBuilder::on(&area);
        b.margin(14)
            .margin_right(10)
            .x_label_area_size(40)
            .y_label_area_size(78);
        if log_y {
            body!(b
                .build_cartesian_2d(x, (y0..y1).log_scale())
                .map_err(plot_err)?);
        } else {
            body!(b.build_cartesian_2d(x, y0..y1).map_err(plot_err)?);
        }
        finish(root)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text of every `<text>` element (plotters puts it on a line of its own).
    fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                let body = t.split_once('>')?.1;
                Some(body.split("</text>").next()?.trim().to_string())
            })
            .collect()
    }

    fn heading() -> Heading<'static> {
        Heading {
            title: "t <x> & y",
            subtitle: "QEMU TCG, 2 vCPUs",
        }
    }

    #[test]
    fn line_chart_has_a_line_per_series_ticks_at_powers_of_two_and_escapes_labels() {
        let svg = line_chart(
            &heading(),
            "queue depth",
            "IOPS",
            &[
                Series {
                    label: "a&b".into(),
                    points: vec![(1.0, 10.0), (32.0, 100.0), (128.0, 90.0)],
                },
                Series {
                    label: "c".into(),
                    points: vec![(1.0, 5.0)],
                },
            ],
        )
        .expect("plot");
        assert_eq!(svg.matches(r#"stroke-width="2""#).count(), 2, "{svg}");
        let t = texts(&svg);
        assert!(t.iter().any(|t| t == "a&amp;b") && t.iter().any(|t| t == "t &lt;x&gt; &amp; y"));
        for tick in ["1", "2", "32", "128"] {
            assert!(t.iter().any(|t| t == tick), "no x tick {tick}: {t:?}");
        }
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn percentile_axis_is_labelled_with_nines() {
        let svg = latency_percentiles(
            &heading(),
            &[Series {
                label: "nvkv".into(),
                points: vec![
                    (50.0, 10.0),
                    (90.0, 12.0),
                    (99.0, 20.0),
                    (99.9, 40.0),
                    (99.99, 90.0),
                    (100.0, 1e9),
                ],
            }],
        )
        .expect("plot");
        let t = texts(&svg);
        for tick in ["p50", "p90", "p99", "p99.9", "p99.99"] {
            assert!(t.iter().any(|t| t == tick), "no {tick} tick: {t:?}");
        }
        assert_eq!(hdr_x(99.0), Some(100.0));
        assert_eq!(hdr_x(100.0), None);
        assert_eq!(hdr_label(1000.0), "p99.9");
    }

    #[test]
    fn bars_are_labelled_and_log_axes_are_chosen_for_wide_spreads() {
        let svg = grouped_bars(
            &heading(),
            "ops/s",
            &["fillrandom".into(), "readrandom".into()],
            &[
                Bars {
                    label: "nvkv".into(),
                    values: vec![Some(1500.0), Some(2_000.0)],
                },
                Bars {
                    label: "rocksdb".into(),
                    values: vec![None, Some(700.0)],
                },
            ],
            false,
        )
        .expect("plot");
        let t = texts(&svg);
        for want in ["1.5K", "2K", "700", "fillrandom", "readrandom"] {
            assert!(t.iter().any(|t| t == want), "no {want}: {t:?}");
        }
        assert!(wants_log([2.0, 2000.0].into_iter()));
        assert!(!wants_log([200.0, 2000.0].into_iter()));
    }

    #[test]
    fn titles_shrink_to_fit() {
        let long = "x".repeat(200);
        let size = fitting_font_size(&long, 900.0, 24.0);
        // The SVG font size is size / 1.24; DejaVu Sans's average advance is under 0.62 em.
        assert!(size / 1.24 * 0.62 * 200.0 <= 900.0 + 1e-9);
        assert_eq!(fitting_font_size("short", 900.0, 24.0), 24.0);
    }

    #[test]
    fn human_numbers() {
        assert_eq!(human(1500.0), "1.5K");
        assert_eq!(human(2_000.0), "2K");
        assert_eq!(human(0.25), "0.25");
        assert_eq!(human(1_250_000.0), "1.25M");
    }
}
