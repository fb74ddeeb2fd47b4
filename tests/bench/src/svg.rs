//! `bench svg`: the latency chart (hand-written SVG, no dependencies) of one run from the
//! results file: round-trip p50 / p99 / p99.9 per system for `echo`, and time to the last
//! member for `fanout`, on a logarithmic axis.

use std::fmt::Write as _;

use super::report::Row;

const WIDTH: f64 = 960.0;
const PANEL_HEIGHT: f64 = 330.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 70.0;
const COLORS: [&str; 3] = ["#4c78a8", "#f58518", "#e45756"];
const NAMES: [&str; 3] = ["p50", "p99", "p99.9"];

/// One group of bars.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// The system (and store).
    pub label: String,
    /// p50, p99, p99.9 in ms.
    pub values: [f64; 3],
}

/// The bars of `scenario` in `rows` (rows with latency, not skipped).
pub fn series(rows: &[Row], scenario: &str) -> Vec<Series> {
    rows.iter()
        .filter(|r| r.scenario == scenario && r.skipped.is_none())
        .filter_map(|r| {
            let l = r.latency.as_ref().filter(|l| l.count > 0)?;
            let label = if r.store == "-" {
                r.system.clone()
            } else {
                format!("{} ({})", r.system, r.store)
            };
            Some(Series {
                label,
                values: [l.p50_ms, l.p99_ms, l.p999_ms],
            })
        })
        .collect()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Draws one panel at vertical offset `y0`.
fn panel(out: &mut String, title: &str, bars: &[Series], y0: f64) {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = PANEL_HEIGHT - TOP - BOTTOM;
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{}" font-size="15" font-weight="bold">{}</text>"#,
        y0 + 28.0,
        escape(title)
    );
    if bars.is_empty() {
        let _ = writeln!(
            out,
            r#"<text x="{LEFT}" y="{}" font-size="13">no data</text>"#,
            y0 + TOP + 20.0
        );
        return;
    }
    let positive = bars.iter().flat_map(|b| b.values).filter(|v| *v > 0.0);
    let lo = positive.clone().fold(f64::MAX, f64::min).log10().floor();
    let hi = positive
        .fold(0.0_f64, f64::max)
        .log10()
        .ceil()
        .max(lo + 1.0);
    let y_of = |v: f64| {
        let v = v.max(10f64.powf(lo));
        y0 + TOP + plot_h - (v.log10() - lo) / (hi - lo) * plot_h
    };
    // Decade grid lines and labels.
    let mut d = lo;
    while d <= hi {
        let y = y_of(10f64.powf(d));
        let label = format_ms(10f64.powf(d));
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{label}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0
        );
        d += 1.0;
    }
    let _ = writeln!(
        out,
        r#"<text x="16" y="{:.1}" font-size="12" transform="rotate(-90 16 {:.1})">ms (log scale)</text>"#,
        y0 + TOP + plot_h / 2.0,
        y0 + TOP + plot_h / 2.0
    );
    let group_w = plot_w / bars.len() as f64;
    let bar_w = (group_w * 0.8 / 3.0).min(40.0);
    for (i, b) in bars.iter().enumerate() {
        let gx = LEFT + group_w * i as f64 + (group_w - bar_w * 3.0) / 2.0;
        for (k, v) in b.values.iter().enumerate() {
            let x = gx + bar_w * k as f64;
            let y = y_of(*v);
            let base = y0 + TOP + plot_h;
            let _ = writeln!(
                out,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {}: {} ms</title></rect>"#,
                bar_w - 2.0,
                (base - y).max(0.5),
                COLORS[k],
                escape(&b.label),
                NAMES[k],
                format_ms(*v)
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
            gx + bar_w * 1.5,
            y0 + TOP + plot_h + 18.0,
            escape(&b.label)
        );
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle" fill="#555">{} / {} / {}</text>"##,
            gx + bar_w * 1.5,
            y0 + TOP + plot_h + 33.0,
            format_ms(b.values[0]),
            format_ms(b.values[1]),
            format_ms(b.values[2])
        );
    }
}

/// `1.23`, `12.3`, `123` — three significant figures for axis labels and tooltips.
fn format_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The whole chart for `rows` (one run), with `subtitle` (date, machine) under the title.
pub fn render(rows: &[Row], subtitle: &str) -> String {
    let height = TOP + PANEL_HEIGHT * 2.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">"#
    );
    let _ = writeln!(
        out,
        r##"<rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="24" font-size="18" font-weight="bold">Switchboard benchmark: latency percentiles</text><text x="{LEFT}" y="42" font-size="11" fill="#555">{}</text>"##,
        escape(subtitle)
    );
    for (k, name) in NAMES.iter().enumerate() {
        let x = WIDTH - RIGHT - 210.0 + 70.0 * k as f64;
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="12" width="12" height="12" fill="{}"/><text x="{}" y="22" font-size="12">{name}</text>"#,
            COLORS[k],
            x + 16.0
        );
    }
    panel(
        &mut out,
        "echo: round trip (client → system → function → client)",
        &series(rows, "echo"),
        TOP,
    );
    let mut fan = series(rows, "fanout");
    fan.extend(series(rows, "fanout-batch").into_iter().map(|mut s| {
        s.label = format!("{} batch", s.label);
        s
    }));
    panel(
        &mut out,
        "fanout: publish → last member received",
        &fan,
        TOP + PANEL_HEIGHT,
    );
    out.push_str("</svg>\n");
    out
}

/// The rows of the latest run in `rows` (or of `run_id`).
pub fn run_rows(rows: &[Row], run_id: Option<&str>) -> Vec<Row> {
    let id = match run_id {
        Some(id) => id.to_owned(),
        None => match rows.last() {
            Some(r) => r.run_id.clone(),
            None => return Vec::new(),
        },
    };
    rows.iter().filter(|r| r.run_id == id).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Percentiles;

    #[test]
    fn renders_bars_for_each_system() {
        let mut a = Row::new("echo", "switchboard", "memory");
        a.run_id = "r1".into();
        a.latency = Some(Percentiles {
            count: 10,
            p50_ms: 0.8,
            p99_ms: 3.0,
            p999_ms: 12.0,
            ..Percentiles::default()
        });
        let mut b = a.clone();
        b.system = "pushpin".into();
        b.store = "-".into();
        let mut old = a.clone();
        old.run_id = "r0".into();
        let rows = vec![old, a, b];
        let latest = run_rows(&rows, None);
        assert_eq!(latest.len(), 2);
        let svg = render(&latest, "test <machine>");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("switchboard (memory)") && svg.contains(">pushpin<"));
        assert!(svg.contains("test &lt;machine&gt;"));
        assert_eq!(svg.matches("<rect x=").count(), 3 + 6);
        assert!(render(&[], "").contains("no data"));
    }
}
