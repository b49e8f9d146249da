//! `--plot FILE.svg`: grouped bar charts, one panel per comparison (suites, key types, key exchange
//! groups, latency, small messages, memory), one colour per peer.
//!
//! Hand-written SVG rather than the `plotters` crate: the chart is a few dozen rectangles and text
//! elements, which takes less code than configuring plotters, adds no dependency (plotters' SVG
//! backend still pulls in its font and colour stack), and the output stays plain, diffable SVG with
//! a `data-series` attribute on every bar that tests and scripts can read.

use std::fmt::Write as _;

use super::catalog::{Metric, Peer, STimeClient, Test};
use super::report::Results;

const WIDTH_MIN: f64 = 900.0;
const PANEL_H: f64 = 250.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 46.0;
const HEADER: f64 = 64.0;

fn colour(p: Peer) -> &'static str {
    match p {
        Peer::Ringseal => "#d9480f",
        Peer::Haproxy => "#1c7ed6",
        Peer::Stunnel => "#2f9e44",
        Peer::Nginx => "#7048e8",
        Peer::Direct => "#868e96",
    }
}

/// A group of bars: its label and each peer's value (`None`: no measurement).
type BarGroup = (String, Vec<(Peer, Option<f64>)>);

struct Panel {
    title: String,
    unit: &'static str,
    groups: Vec<BarGroup>,
}

fn panel(
    r: &Results,
    peers: &[Peer],
    tests: &[Test],
    metric: Metric,
    title: &str,
) -> Option<Panel> {
    let mut groups = Vec::new();
    for row in r
        .rows
        .iter()
        .filter(|row| tests.contains(&row.key.test) && row.key.metric == metric)
    {
        let label = match row.key.test {
            Test::Bulk | Test::Latency | Test::Messages => {
                if row.key.suite.key_type() == row.key.key_type {
                    row.key.suite.short.to_owned()
                } else {
                    format!("{} {}", row.key.suite.short, row.key.key_type.name())
                }
            }
            Test::STime => format!("s_time, {}", row.key.client.map_or("", STimeClient::label)),
            _ => row.key.scenario(),
        };
        let values = peers
            .iter()
            .map(|p| (*p, row.cells.get(p).and_then(|c| c.median())))
            .collect();
        groups.push((label, values));
    }
    if groups.is_empty() {
        return None;
    }
    let better = if metric.higher_is_better() {
        "higher is better"
    } else {
        "lower is better"
    };
    Some(Panel {
        title: format!("{title} ({}, {better})", metric.unit()),
        unit: metric.unit(),
        groups,
    })
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round tick step for a range up to `max` with about four ticks.
fn tick_step(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let raw = max / 4.0;
    let mag = 10f64.powf(raw.log10().floor());
    let n = raw / mag;
    let nice = if n <= 1.0 {
        1.0
    } else if n <= 2.0 {
        2.0
    } else if n <= 2.5 {
        2.5
    } else if n <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn short(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The panels in chart order, each with the tests and metric it shows; panels without rows are left
/// out.
#[rustfmt::skip]
const PANELS: [(&[Test], Metric, &str); 9] = [
    (&[Test::Bulk], Metric::GbitPerSec, "Bulk throughput through the pair, per suite"),
    (&[Test::Bulk], Metric::CpuSecPerGb, "Proxy CPU per GB (both sides), per suite"),
    (&[Test::Latency], Metric::AddedP99Us, "Added p99 latency, 1 KiB ping-pong, per suite"),
    (&[Test::Messages], Metric::MessagesPerSec, "Small messages/s through the pair, per suite"),
    (&[Test::Messages], Metric::CpuUsPerMessage, "Proxy CPU per small message (both sides), per suite"),
    (&[Test::Messages], Metric::RttP99Us, "p99 round trip of small messages, per suite"),
    (&[Test::Handshake], Metric::HandshakesPerSec, "Mutual handshakes/s through the pair, per key type"),
    (&[Test::Kx, Test::STime], Metric::ServerCpuMsPerHandshake, "Server CPU per full mutual handshake, per key exchange"),
    (&[Test::Memory], Metric::MemKibPerConnPair, "Memory per idle connection (both sides)"),
];

/// The whole chart as an SVG document.
pub fn svg(r: &Results) -> String {
    // The direct baseline is a ceiling, not a competitor: it is named in the header instead.
    let peers: Vec<Peer> = r
        .peers()
        .into_iter()
        .filter(|p| *p != Peer::Direct)
        .collect();
    let panels: Vec<Panel> = PANELS
        .iter()
        .filter_map(|(t, m, title)| panel(r, &peers, t, *m, title))
        .collect();

    let bars = peers.len().max(1) as f64;
    let most_groups = panels.iter().map(|p| p.groups.len()).max().unwrap_or(1) as f64;
    let width = WIDTH_MIN.max(LEFT + RIGHT + most_groups * (bars * 24.0 + 28.0));
    let height = HEADER + panels.len() as f64 * PANEL_H + 10.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="11">
<rect x="0" y="0" width="{width:.0}" height="{height:.0}" fill="white"/>"#
    );
    header(&mut s, r);
    legend(&mut s, &peers);
    for (i, panel) in panels.iter().enumerate() {
        let top = HEADER + i as f64 * PANEL_H;
        draw_panel(&mut s, panel, top, width - LEFT - RIGHT, bars);
    }
    s.push_str("</svg>\n");
    s
}

/// The title and the machine line (with the direct loopback ceiling, when measured).
fn header(s: &mut String, r: &Results) {
    let m = &r.meta;
    let direct = r
        .find(Test::Bulk, Metric::GbitPerSec)
        .find_map(|row| row.cells.get(&Peer::Direct)?.median());
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="20" font-size="14" font-weight="bold">ringseal bench: sidecar pairs on loopback, medians of {} run(s)</text>
<text x="{LEFT}" y="36" fill="#495057">{}</text>"##,
        m.repeat,
        esc(&format!(
            "{}, {} ({} cores), kernel {}{}{}",
            m.date,
            m.cpu,
            m.cores,
            m.kernel,
            direct.map_or(String::new(), |d| format!(
                "; direct loopback without proxies {d:.1} Gbit/s"
            )),
            if m.build == "debug" {
                "; DEBUG BUILD, not representative"
            } else {
                ""
            }
        ))
    );
}

fn legend(s: &mut String, peers: &[Peer]) {
    let mut x = LEFT;
    for p in peers {
        let _ = writeln!(
            s,
            r#"<g class="legend" data-series="{name}"><rect x="{x:.1}" y="46" width="12" height="12" fill="{c}"/><text x="{tx:.1}" y="56">{name}</text></g>"#,
            name = p.name(),
            c = colour(*p),
            tx = x + 16.0,
        );
        x += 24.0 + 7.0 * p.name().len() as f64;
    }
}

/// One panel at `top`: title, y axis with round ticks, a group of bars per row, the baseline.
fn draw_panel(s: &mut String, panel: &Panel, top: f64, plot_w: f64, bars: f64) {
    let plot_h = PANEL_H - TOP - BOTTOM;
    let base = top + TOP + plot_h;
    let max = panel
        .groups
        .iter()
        .flat_map(|(_, v)| v.iter().filter_map(|(_, x)| *x))
        .fold(0.0f64, f64::max);
    let step = tick_step(max);
    let ymax = (max / step).ceil().max(1.0) * step;
    let axis = Axis { base, plot_h, ymax };
    let _ = writeln!(
        s,
        r#"<g class="panel" data-unit="{}"><text x="{LEFT}" y="{:.1}" font-size="12" font-weight="bold">{}</text>"#,
        esc(panel.unit),
        top + 20.0,
        esc(&panel.title)
    );
    ticks(s, &axis, step, plot_w);
    let slot = plot_w / panel.groups.len() as f64;
    let bar_w = (slot * 0.8 / bars).min(40.0);
    for (g, (label, values)) in panel.groups.iter().enumerate() {
        let x0 = LEFT + g as f64 * slot + (slot - bar_w * bars) / 2.0;
        for (k, (peer, v)) in values.iter().enumerate() {
            let bar = Bar {
                peer: *peer,
                group: label,
                unit: panel.unit,
                x: x0 + k as f64 * bar_w,
                width: bar_w,
            };
            draw_bar(s, &axis, &bar, *v);
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + g as f64 * slot + slot / 2.0,
            base + 16.0,
            esc(label)
        );
    }
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" x2="{:.1}" y1="{base:.1}" y2="{base:.1}" stroke="#212529"/></g>"##,
        LEFT + plot_w
    );
}

/// A panel's vertical scale: `base` is the y of zero, `plot_h` the height of `ymax`.
struct Axis {
    base: f64,
    plot_h: f64,
    ymax: f64,
}

impl Axis {
    fn y(&self, v: f64) -> f64 {
        self.base - (v.max(0.0) / self.ymax) * self.plot_h
    }
}

/// Grid lines and their labels every `step` from zero to the top.
fn ticks(s: &mut String, axis: &Axis, step: f64, plot_w: f64) {
    let decimals = if step >= 1.0 {
        0
    } else if step >= 0.1 {
        1
    } else {
        2
    };
    let mut t = 0.0;
    while t <= axis.ymax + step / 2.0 {
        let ty = axis.y(t);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{ty:.1}" y2="{ty:.1}" stroke="#dee2e6"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#495057">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            ty + 4.0,
            format_args!("{t:.decimals$}")
        );
        t += step;
    }
}

/// Where one peer's bar of one group goes.
struct Bar<'a> {
    peer: Peer,
    group: &'a str,
    unit: &'a str,
    x: f64,
    width: f64,
}

/// The bar with its value on top, or "n/a" where the peer has no measurement.
fn draw_bar(s: &mut String, axis: &Axis, bar: &Bar, value: Option<f64>) {
    let (bx, bar_w, base) = (bar.x, bar.width, axis.base);
    match value {
        Some(v) => {
            let by = axis.y(v);
            let _ = writeln!(
                s,
                r#"<rect class="bar" data-series="{p}" data-group="{gl}" data-value="{v}" x="{bx:.1}" y="{by:.1}" width="{w:.1}" height="{h:.1}" fill="{c}"><title>{p}, {gl}: {vs} {u}</title></rect><text x="{tx:.1}" y="{ty:.1}" text-anchor="middle" font-size="9">{vs}</text>"#,
                p = bar.peer.name(),
                gl = esc(bar.group),
                w = (bar_w - 2.0).max(1.0),
                h = (base - by).max(0.5),
                c = colour(bar.peer),
                vs = short(v),
                u = esc(bar.unit),
                tx = bx + bar_w / 2.0 - 1.0,
                ty = by - 3.0,
            );
        }
        None => {
            let _ = writeln!(
                s,
                r##"<text class="missing" data-series="{p}" x="{tx:.1}" y="{ty:.1}" text-anchor="middle" font-size="8" fill="#868e96">n/a</text>"##,
                p = bar.peer.name(),
                tx = bx + bar_w / 2.0 - 1.0,
                ty = base - 3.0,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_step(10.0), 2.5);
        assert_eq!(tick_step(7.0), 2.0);
        assert!((tick_step(0.9) - 0.25).abs() < 1e-12);
        assert_eq!(tick_step(3000.0), 1000.0);
        assert_eq!(tick_step(0.0), 1.0);
    }

    #[test]
    fn escapes() {
        assert_eq!(esc("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }
}
