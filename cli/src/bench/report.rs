//! What was measured, and how it is shown: medians of the interleaved runs, ratios against ringseal,
//! the terminal table, JSON and CSV.
//!
//! The ratio printed next to a peer's value is **ringseal ÷ peer**, so it reads as ringseal's
//! standing: throughput 2.3x means ringseal moves 2.3 times as much; CPU 0.5x means ringseal needs
//! half the CPU. For throughput and handshakes/s above 1 is better for ringseal; for CPU, latency
//! and memory below 1 is.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::catalog::{Group, KeyType, Metric, Peer, STimeClient, Suite, Test};
use super::messages::MessageMix;
use super::options::Options;

/// What a row measures.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    pub test: Test,
    pub suite: &'static Suite,
    pub key_type: KeyType,
    /// The one group the driver offered (the `kx` test); `None`: what the peers negotiate by
    /// themselves (X25519 for every peer here).
    pub group: Option<Group>,
    /// What the `s_time` client does after each handshake; `None` for the other tests.
    pub client: Option<STimeClient>,
    pub metric: Metric,
}

impl PartialEq for Key {
    fn eq(&self, o: &Self) -> bool {
        self.test == o.test
            && std::ptr::eq(self.suite, o.suite)
            && self.key_type == o.key_type
            && self.group == o.group
            && self.client == o.client
            && self.metric == o.metric
    }
}

impl Key {
    /// The row label within its test's section.
    pub fn scenario(&self) -> String {
        match self.test {
            Test::Bulk | Test::Latency | Test::Messages => {
                if self.suite.key_type() == self.key_type {
                    self.suite.iana.to_owned()
                } else {
                    format!("{} ({})", self.suite.iana, self.key_type.name())
                }
            }
            Test::Handshake => self.key_type.name().to_owned(),
            Test::Kx => self.group.map_or("", Group::name).to_owned(),
            Test::STime => format!(
                "{} X25519, {}",
                self.key_type.name(),
                self.client.map_or("", STimeClient::label)
            ),
            Test::Memory => "idle, established".to_owned(),
        }
    }
}

/// One peer's runs of one row.
#[derive(Debug, Clone, Default)]
pub struct Cell {
    pub samples: Vec<f64>,
    /// Why there is no (or not every) sample: not installed, failed, unsupported.
    pub note: Option<String>,
}

impl Cell {
    pub fn median(&self) -> Option<f64> {
        let mut v: Vec<f64> = self
            .samples
            .iter()
            .copied()
            .filter(|x| x.is_finite())
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let m = v.len() / 2;
        Some(if v.len() % 2 == 1 {
            v[m]
        } else {
            (v[m - 1] + v[m]) / 2.0
        })
    }
}

#[derive(Debug, Clone)]
pub struct Row {
    pub key: Key,
    pub cells: BTreeMap<Peer, Cell>,
}

impl Row {
    /// ringseal's median ÷ `peer`'s median.
    pub fn ratio(&self, peer: Peer) -> Option<f64> {
        // The direct baseline is no competitor: a ratio against it would read like one.
        if matches!(peer, Peer::Ringseal | Peer::Direct) {
            return None;
        }
        let r = self.cells.get(&Peer::Ringseal)?.median()?;
        let p = self.cells.get(&peer)?.median()?;
        (p > 0.0 && r >= 0.0).then(|| r / p)
    }
}

/// The run's circumstances: the README table must say where and when it was measured.
#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    pub date: String,
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub os: String,
    /// /proc/loadavg when the run started: other work on the machine skews every figure.
    pub load_average_at_start: String,
    pub build: &'static str,
    /// Version lines of ringseal, the anchors and openssl.
    pub versions: BTreeMap<String, String>,
    pub repeat: usize,
    pub bytes: u64,
    pub duration_s: f64,
    pub connections: usize,
    /// The small-message test's workload.
    pub messages: MessageMix,
    pub quick: bool,
    /// CPU flags, congestion control, `lo`'s qdisc, kTLS: what else the figures depend on.
    pub host: super::host::Host,
}

impl Meta {
    pub fn collect(o: &Options, connections: usize, versions: BTreeMap<String, String>) -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown CPU".to_owned(), |(_, v)| v.trim().to_owned());
        let os = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map_or_else(String::new, |v| v.trim_matches('"').to_owned());
        let load = read("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        Self {
            date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            cpu,
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            os,
            load_average_at_start: load,
            build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            versions,
            repeat: o.repeat,
            bytes: o.bytes,
            duration_s: o.duration.as_secs_f64(),
            connections,
            messages: o.messages.clone(),
            quick: o.quick,
            host: super::host::Host::collect(
                &o.loopback_congestion_control.clone().unwrap_or_default(),
                o.glibc_tunables.as_deref(),
            ),
        }
    }
}

/// Every row, in the order measured.
#[derive(Debug, Clone)]
pub struct Results {
    pub meta: Meta,
    pub rows: Vec<Row>,
}

impl Results {
    pub fn new(meta: Meta) -> Self {
        Self {
            meta,
            rows: Vec::new(),
        }
    }

    /// The row for `key`, created (at the end) if new.
    pub fn ensure(&mut self, key: Key) -> &mut Row {
        let i = match self.rows.iter().position(|r| r.key == key) {
            Some(i) => i,
            None => {
                self.rows.push(Row {
                    key,
                    cells: BTreeMap::new(),
                });
                self.rows.len() - 1
            }
        };
        &mut self.rows[i]
    }

    fn cell(&mut self, key: Key, peer: Peer) -> &mut Cell {
        self.ensure(key).cells.entry(peer).or_default()
    }

    pub fn add(&mut self, key: Key, peer: Peer, value: f64) {
        self.cell(key, peer).samples.push(value);
    }

    pub fn note(&mut self, key: Key, peer: Peer, note: &str) {
        let c = self.cell(key, peer);
        if c.note.is_none() {
            c.note = Some(note.to_owned());
        }
    }

    /// Peers that appear anywhere, in column order.
    pub fn peers(&self) -> Vec<Peer> {
        let mut v: Vec<Peer> = self
            .rows
            .iter()
            .flat_map(|r| r.cells.keys().copied())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn find(&self, test: Test, metric: Metric) -> impl Iterator<Item = &Row> {
        self.rows
            .iter()
            .filter(move |r| r.key.test == test && r.key.metric == metric)
    }
}

/// The heading of a test's section: what was measured, and how.
fn section_title(test: Test, m: &Meta) -> String {
    let size = if m.bytes >= 1 << 30 {
        format!("{:.2} GiB", m.bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{} MiB", m.bytes >> 20)
    };
    let d = m.duration_s;
    match test {
        Test::Bulk => format!(
            "Bulk transfer: one connection, {size} plaintext -> outbound -> mutual TLS -> inbound -> sink; \
             CPU = both proxies (direct = no proxy)"
        ),
        Test::Latency => format!(
            "1 KiB ping-pong for {d}s through the pair; added = median round trip minus the direct one's (no proxy)"
        ),
        Test::Handshake => format!(
            "New connections through the pair for {d}s ({} in flight), each a full mutual TLS 1.3 handshake \
             (TLS_AES_128_GCM_SHA256, X25519) between the proxies, per key type",
            super::workload::HANDSHAKE_WORKERS
        ),
        Test::Kx => format!(
            "Full mutual handshakes straight to the inbound side for {d}s, the client offering one group \
             (ECDSA P-256, TLS_AES_128_GCM_SHA256); server CPU = the inbound proxy"
        ),
        Test::STime => format!(
            "openssl s_time -new -cert -key for {}s against the inbound side (client certificate, X25519); \
             server CPU = the inbound proxy. \"closes at once\": a proxy may skip the backend for a client \
             already gone (HAProxy does); \"one request\" (-www): every proxy connects the backend, relays \
             the request and its reply, and closes: the whole path for every handshake",
            d.max(1.0).floor()
        ),
        Test::Memory => format!(
            "Resident memory per idle established connection at {} connections (fresh pair, RSS delta)",
            m.connections
        ),
        Test::Messages => format!(
            "Small messages for {d}s after a warm-up: {}, to an echo backend, every echo checked; CPU = both \
             proxies per message (direct = no proxy); RTT = each message's round trip",
            m.messages.describe()
        ),
    }
}

fn fmt_value(v: f64, metric: Metric) -> String {
    format!("{v:.*}", metric.decimals())
}

/// The terminal table: one section per test, a column per peer with ratio ringseal ÷ peer.
pub fn table(r: &Results) -> String {
    let m = &r.meta;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ringseal bench, {}, {} ({} cores), {} {}, load average at start {}",
        m.date, m.cpu, m.cores, m.os, m.kernel, m.load_average_at_start
    );
    let _ = writeln!(out, "{}", m.host.line());
    let versions: Vec<&str> = m.versions.values().map(String::as_str).collect();
    let _ = writeln!(out, "{}", versions.join("; "));
    let _ = writeln!(
        out,
        "medians of {} interleaved run(s); (x) = ringseal / peer{}",
        m.repeat,
        if m.build == "debug" {
            "; DEBUG BUILD: not representative"
        } else {
            ""
        }
    );
    let peers = r.peers();
    let mut tests: Vec<Test> = Vec::new();
    for row in &r.rows {
        if !tests.contains(&row.key.test) {
            tests.push(row.key.test);
        }
    }
    for test in tests {
        let rows: Vec<&Row> = r.rows.iter().filter(|row| row.key.test == test).collect();
        let _ = writeln!(out, "\n{}", section_title(test, m));
        out.push_str(&test_section(&rows, &peers));
    }
    out
}

/// One test's rows: a column per peer that has a cell in them, then the notes of empty cells.
fn test_section(rows: &[&Row], peers: &[Peer]) -> String {
    let cols: Vec<Peer> = peers
        .iter()
        .copied()
        .filter(|p| rows.iter().any(|row| row.cells.contains_key(p)))
        .collect();
    let mut lines: Vec<Vec<String>> = Vec::new();
    let mut head = vec!["".to_owned(), "".to_owned()];
    head.extend(cols.iter().map(|p| p.name().to_owned()));
    lines.push(head);
    let mut notes: Vec<String> = Vec::new();
    let mut last = String::new();
    for row in rows {
        // A scenario with several metrics is named on its first line only.
        let scenario = row.key.scenario();
        let mut line = vec![
            if scenario == last {
                String::new()
            } else {
                scenario.clone()
            },
            row.key.metric.label().to_owned(),
        ];
        last = scenario;
        line.extend(cols.iter().map(|p| cell_text(row, *p, &mut notes)));
        lines.push(line);
    }
    let mut out = aligned(&lines);
    for n in notes {
        let _ = writeln!(out, "  note: {n}");
    }
    out
}

/// A peer's cell: the median with its ratio, or one word for why there is none (the why itself
/// goes to `notes`, once).
fn cell_text(row: &Row, peer: Peer, notes: &mut Vec<String>) -> String {
    let cell = row.cells.get(&peer);
    match cell.and_then(Cell::median) {
        Some(v) => match row.ratio(peer) {
            Some(x) => format!("{} ({x:.2}x)", fmt_value(v, row.key.metric)),
            None => fmt_value(v, row.key.metric),
        },
        None => match cell.and_then(|c| c.note.as_ref()) {
            Some(n) => {
                let msg = format!("{}: {}", peer.name(), clip(first_line(n)));
                if !notes.contains(&msg) {
                    notes.push(msg);
                }
                note_tag(n).to_owned()
            }
            None => "-".to_owned(),
        },
    }
}

/// The lines as columns: the two label columns left-aligned, the peers' right-aligned.
fn aligned(lines: &[Vec<String>]) -> String {
    let ncol = lines[0].len();
    let widths: Vec<usize> = (0..ncol)
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in lines {
        let mut s = String::new();
        for (i, cell) in l.iter().enumerate() {
            let pad = widths[i] - cell.chars().count();
            if i < 2 {
                s.push_str(cell);
                s.push_str(&" ".repeat(pad + 2));
            } else {
                s.push_str(&" ".repeat(pad + 2));
                s.push_str(cell);
            }
        }
        let _ = writeln!(out, "{}", s.trim_end());
    }
    out
}

/// One word for a cell without a value.
fn note_tag(note: &str) -> &'static str {
    if note.starts_with("unsupported") {
        "unsupported"
    } else if note.contains("not installed") {
        "missing"
    } else {
        "failed"
    }
}

/// The headline of a multi-line error (the rest stays in JSON and CSV).
pub fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// A note short enough for a table footnote (JSON and CSV keep it whole).
pub fn clip(s: &str) -> String {
    const MAX: usize = 240;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        format!("{}...", s.chars().take(MAX).collect::<String>())
    }
}

#[derive(Serialize)]
struct JsonResult<'a> {
    test: &'static str,
    suite: &'static str,
    protocol: &'static str,
    key_type: &'static str,
    group: Option<&'static str>,
    /// `s_time` only: `closes_at_once` or `one_request`.
    client: Option<&'static str>,
    metric: &'static str,
    unit: &'static str,
    higher_is_better: bool,
    peer: &'static str,
    median: Option<f64>,
    samples: &'a [f64],
    ratio_ringseal_to_peer: Option<f64>,
    note: Option<&'a str>,
}

fn flat(r: &Results) -> Vec<JsonResult<'_>> {
    let mut v = Vec::new();
    for row in &r.rows {
        for (peer, cell) in &row.cells {
            v.push(JsonResult {
                test: row.key.test.name(),
                suite: row.key.suite.iana,
                protocol: row.key.suite.protocol(),
                key_type: row.key.key_type.name(),
                group: row.key.group.map(Group::name),
                client: row.key.client.map(STimeClient::id),
                metric: row.key.metric.id(),
                unit: row.key.metric.unit(),
                higher_is_better: row.key.metric.higher_is_better(),
                peer: peer.name(),
                median: cell.median(),
                samples: &cell.samples,
                ratio_ringseal_to_peer: row.ratio(*peer),
                note: cell.note.as_deref(),
            });
        }
    }
    v
}

/// `{"meta": {...}, "results": [...]}`, one result per row and peer.
pub fn json(r: &Results) -> String {
    #[derive(Serialize)]
    struct Doc<'a> {
        meta: &'a Meta,
        results: Vec<JsonResult<'a>>,
    }
    let mut s = serde_json::to_string_pretty(&Doc {
        meta: &r.meta,
        results: flat(r),
    })
    .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}

pub const CSV_HEADER: &str = "test,suite,protocol,key_type,group,client,metric,unit,peer,median,runs,ratio_ringseal_to_peer,note";

/// One line per row and peer; the machine and date go in `#` comment lines at the top.
pub fn csv(r: &Results) -> String {
    let m = &r.meta;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# ringseal bench {} on {} ({} cores), {}",
        m.date, m.cpu, m.cores, m.kernel
    );
    let _ = writeln!(out, "# {}", m.host.line());
    let _ = writeln!(out, "{CSV_HEADER}");
    let num = |x: Option<f64>| x.map_or(String::new(), |v| format!("{v:.6}"));
    for j in flat(r) {
        let note = j.note.map_or(String::new(), |n| {
            format!("\"{}\"", first_line(n).replace('"', "\"\""))
        });
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{}",
            j.test,
            j.suite,
            j.protocol,
            j.key_type,
            j.group.unwrap_or(""),
            j.client.unwrap_or(""),
            j.metric,
            j.unit,
            j.peer,
            num(j.median),
            j.samples.len(),
            num(j.ratio_ringseal_to_peer),
            note
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios() {
        let c = Cell {
            samples: vec![3.0, 1.0, 2.0, f64::NAN],
            note: None,
        };
        assert_eq!(c.median(), Some(2.0));
        let even = Cell {
            samples: vec![4.0, 1.0, 2.0, 3.0],
            note: None,
        };
        assert_eq!(even.median(), Some(2.5));
        let mut row = Row {
            key: Key {
                test: Test::Bulk,
                suite: crate::bench::catalog::default_suite(),
                key_type: KeyType::EcdsaP256,
                group: None,
                client: None,
                metric: Metric::GbitPerSec,
            },
            cells: BTreeMap::new(),
        };
        row.cells.insert(
            Peer::Ringseal,
            Cell {
                samples: vec![6.0],
                note: None,
            },
        );
        row.cells.insert(
            Peer::Haproxy,
            Cell {
                samples: vec![3.0],
                note: None,
            },
        );
        assert_eq!(row.ratio(Peer::Haproxy), Some(2.0));
        assert_eq!(row.ratio(Peer::Ringseal), None);
        assert_eq!(row.ratio(Peer::Nginx), None);
    }
}
