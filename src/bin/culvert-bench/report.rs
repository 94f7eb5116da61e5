//! Output: the summary on stdout, the JSON file, and the SVG chart (written by hand: a scatter
//! of every sample plus a rolling median line per run).

use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use crate::{
    measure::{median, percentile},
    scenarios::RunOutput,
};

pub struct Report<'a> {
    pub scenario: &'a str,
    pub label: &'a str,
    pub url: &'a str,
    pub params: Value,
    pub series_label: &'a str,
    pub runs: &'a [RunOutput],
}

/// Figure names in first-seen order with the median over the runs that have them.
pub fn medians(runs: &[RunOutput]) -> Vec<(String, f64)> {
    let mut names: Vec<&str> = Vec::new();
    for run in runs {
        for (name, _) in &run.figures {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
    }
    names
        .into_iter()
        .map(|name| {
            let values: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.figures.iter().find(|(n, _)| n == name).map(|f| f.1))
                .collect();
            (name.to_owned(), median(&values))
        })
        .collect()
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v.fract() == 0.0 && v.abs() < 1e12 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

impl Report<'_> {
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "culvert-bench {} against {} ({}), {} run(s); medians over runs:",
            self.scenario,
            self.label,
            self.url,
            self.runs.len()
        );
        let width = medians(self.runs)
            .iter()
            .map(|(n, _)| n.len())
            .max()
            .unwrap_or(10);
        for (name, value) in medians(self.runs) {
            let per_run: Vec<String> = self
                .runs
                .iter()
                .map(|r| {
                    r.figures
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map_or("–".into(), |f| number(f.1))
                })
                .collect();
            let _ = writeln!(
                out,
                "  {name:<width$}  {:>12}   (runs: {})",
                number(value),
                per_run.join(", ")
            );
        }
        out
    }

    pub fn json(&self) -> Value {
        let figures = |figs: &[(String, f64)]| {
            let mut map = Map::new();
            for (name, value) in figs {
                // NaN is not JSON: a figure with no samples is null.
                map.insert(
                    name.clone(),
                    serde_json::Number::from_f64(*value).map_or(Value::Null, Value::Number),
                );
            }
            Value::Object(map)
        };
        json!({
            "tool": "culvert-bench",
            "version": env!("CARGO_PKG_VERSION"),
            "scenario": self.scenario,
            "label": self.label,
            "url": self.url,
            "params": self.params,
            "unix_time": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            "median": figures(&medians(self.runs)),
            "runs": self.runs.iter().map(|r| json!({
                "figures": figures(&r.figures),
                "series_label": self.series_label,
                // Thinned for size (the chart has them all, up to `CHART_POINTS`); the figures
                // above are computed on every sample.
                "series": thin(&r.series, JSON_POINTS)
                    .iter()
                    .map(|(t, v)| json!([round(*t), round(*v)]))
                    .collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }

    pub fn svg(&self) -> String {
        const W: f64 = 900.0;
        const H: f64 = 440.0;
        const LEFT: f64 = 70.0;
        const RIGHT: f64 = 20.0;
        const TOP: f64 = 66.0;
        const BOTTOM: f64 = 55.0;
        const COLORS: [&str; 6] = [
            "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
        ];
        let all: Vec<f64> = self
            .runs
            .iter()
            .flat_map(|r| r.series.iter().map(|p| p.1))
            .collect();
        let x_max = self
            .runs
            .iter()
            .flat_map(|r| r.series.iter().map(|p| p.0))
            .fold(0.0, f64::max)
            .max(1e-3);
        // Outliers above the 99.5th percentile are pinned to the top edge so that one slow
        // request does not flatten the picture.
        let y_top = if all.is_empty() {
            1.0
        } else {
            (percentile(&all, 99.5) * 1.1).max(1e-3)
        };
        let y_bottom = if all.is_empty() {
            0.0
        } else {
            percentile(&all, 0.0).min(0.0)
        };
        let (x_ticks, y_ticks) = (ticks(0.0, x_max), ticks(y_bottom, y_top));
        let x_end = x_ticks.last().copied().unwrap_or(x_max).max(x_max);
        let y_end = y_ticks.last().copied().unwrap_or(y_top).max(y_top);
        let y_start = y_ticks.first().copied().unwrap_or(y_bottom).min(y_bottom);
        let px = |x: f64| LEFT + (x / x_end) * (W - LEFT - RIGHT);
        let py = |y: f64| {
            let y = y.clamp(y_start, y_end);
            H - BOTTOM - (y - y_start) / (y_end - y_start) * (H - TOP - BOTTOM)
        };

        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="22" font-size="15">{}</text>"#,
            xml(&format!(
                "culvert-bench {} — {} ({} run{})",
                self.scenario,
                self.label,
                self.runs.len(),
                if self.runs.len() == 1 { "" } else { "s" }
            ))
        );
        let _ = writeln!(
            s,
            r##"<text x="{LEFT}" y="38" fill="#555">{}</text>"##,
            xml(self.url)
        );
        let _ = writeln!(
            s,
            r##"<text x="{LEFT}" y="54" fill="#555">{}</text>"##,
            xml(&self.headline())
        );
        // Grid and axes.
        for &t in &x_ticks {
            let x = px(t);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                H - BOTTOM,
                H - BOTTOM + 16.0,
                number_tick(t)
            );
        }
        for &t in &y_ticks {
            let y = py(t);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                W - RIGHT,
                LEFT - 6.0,
                y + 4.0,
                number_tick(t)
            );
        }
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{TOP}" width="{:.1}" height="{:.1}" fill="none" stroke="#888"/>"##,
            W - LEFT - RIGHT,
            H - TOP - BOTTOM
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds since the measured phase began</text>"#,
            LEFT + (W - LEFT - RIGHT) / 2.0,
            H - 12.0
        );
        let _ = writeln!(
            s,
            r#"<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            TOP + (H - TOP - BOTTOM) / 2.0,
            xml(self.series_label)
        );
        // Points, then each run's rolling median.
        for (i, run) in self.runs.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            // Every point a dot: a zero-length stroke with round caps, all of a run's in one
            // path (a `<circle>` each made charts of thousands of lines).
            let dots: String = thin(&run.series, CHART_POINTS)
                .into_iter()
                .map(|(t, v)| format!("M{:.1} {:.1}h0", px(t), py(v)))
                .collect();
            let _ = writeln!(
                s,
                r#"<path d="{dots}" stroke="{color}" stroke-opacity="0.35" stroke-width="3.2" stroke-linecap="round"/>"#
            );
            let line = rolling_median(&run.series, x_end, 60);
            if line.len() > 1 {
                let points: Vec<String> = line
                    .iter()
                    .map(|(t, v)| format!("{:.1},{:.1}", px(*t), py(*v)))
                    .collect();
                let _ = writeln!(
                    s,
                    r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
                    points.join(" ")
                );
            }
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" fill="{color}" text-anchor="end">run {} (line: rolling median)</text>"#,
                W - RIGHT - 6.0,
                TOP + 16.0 + 15.0 * i as f64,
                i + 1
            );
        }
        let _ = writeln!(s, "</svg>");
        s
    }

    /// The few figures that matter most, for the chart's subtitle.
    fn headline(&self) -> String {
        let medians = medians(self.runs);
        let wanted = [
            "events_per_s",
            "send_p50_ms",
            "send_p99_ms",
            "deliver_p50_ms",
            "deliver_p99_ms",
            "sync_p50_ms",
            "first_p50_ms",
            "list_total_ms",
            "page_p50_ms",
            "server_rss_peak_mib",
        ];
        let parts: Vec<String> = wanted
            .iter()
            .filter_map(|w| medians.iter().find(|(n, _)| n == w))
            .map(|(n, v)| format!("{n} {}", number(*v)))
            .collect();
        format!("medians: {}", parts.join(", "))
    }
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Points of each run's series in the JSON file: enough to redraw its shape.
const JSON_POINTS: usize = 500;
/// Points of each run's series in the chart.
const CHART_POINTS: usize = 3000;

/// At most `max` points, evenly strided.
fn thin(series: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if series.len() <= max {
        return series.to_vec();
    }
    let stride = series.len().div_ceil(max);
    series.iter().step_by(stride).copied().collect()
}

/// The median of each of `buckets` equal time slices (empty slices skipped).
fn rolling_median(series: &[(f64, f64)], x_end: f64, buckets: usize) -> Vec<(f64, f64)> {
    let mut slices = vec![Vec::new(); buckets];
    for &(t, v) in series {
        let i = ((t / x_end) * buckets as f64) as usize;
        slices[i.min(buckets - 1)].push(v);
    }
    slices
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.is_empty())
        .map(|(i, s)| ((i as f64 + 0.5) * x_end / buckets as f64, median(s)))
        .collect()
}

/// About five round tick values (1, 2 or 5 × 10^k apart) covering `lo..=hi`.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-9);
    let raw = span / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let start = (lo / step).floor() * step;
    let mut out = Vec::new();
    let mut t = start;
    while t < hi + step * 0.999 && out.len() < 50 {
        out.push(t);
        t += step;
    }
    out
}

fn number_tick(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
