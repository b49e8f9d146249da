//! TCP health checks against the real binary (issue 13): a connection that closes (FIN) or resets
//! (RST) before sending a byte, as Kubernetes `tcpSocket` probes, load balancers' checks and HAProxy's
//! `check` do every few seconds, is counted in `ringseal_connections_closed_total{how="no_data"}`
//! and logged at debug only, never a refused handshake. What is not a probe stays a refusal: a
//! connection that holds its slot in silence until `handshake_timeout` (`timeout`), bytes that are not
//! TLS (`not_tls`). The shipped `RingsealHandshakeFailures` alert is run through `promtool test
//! rules` on series built from what one probe and one real refusal do to the real binary's counters.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ringseal_testkit::process::{Proc, address_after};
use ringseal_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `ringseal run` (debug logs for ringseal itself) with one inbound listener in `mode`, `[metrics]`
/// and `[limits] handshake_timeout`; optionally an outbound listener to `upstream`.
struct Running {
    proc: Proc,
    inbound: SocketAddr,
    outbound: Option<SocketAddr>,
    admin: SocketAddr,
}

fn start(pki: &Pki, mode: &str, handshake_timeout: &str, upstream: Option<SocketAddr>) -> Running {
    let outbound = upstream.map_or_else(String::new, |u| {
        format!("[[outbound]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{u}\"\n\n")
    });
    // The storage port is never reached by anything in these tests: a closed port will do.
    let (dir, config) = write_config(
        pki,
        "",
        &format!(
            "[[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"127.0.0.1:9\"\nmode = \"{mode}\"\n\n\
             {outbound}[metrics]\nlisten = \"127.0.0.1:0\"\n\n\
             [limits]\nhandshake_timeout = \"{handshake_timeout}\"\n"
        ),
    );
    let mut proc = Proc::spawn_with(
        &[],
        &config,
        dir,
        &[("RINGSEAL_LOG", "info,ringseal=debug")],
    );
    // In the order they are logged.
    let admin = address_after(&proc.wait_for("serving metrics on"), "metrics on ");
    let inbound = address_after(
        &proc.wait_for("starting inbound mTLS listener on"),
        "listener on ",
    );
    let outbound = upstream.map(|_| {
        address_after(
            &proc.wait_for("starting outbound listener on"),
            "listener on ",
        )
    });
    // From here on `seen` holds what the test's connections caused (start-up warnings about the test
    // certificates are not the subject).
    proc.seen.clear();
    Running {
        proc,
        inbound,
        outbound,
        admin,
    }
}

impl Running {
    fn metrics(&self) -> String {
        scrape(self.admin)
    }

    /// Waits for the sidecar's line about the connection from `client`; every other line logged
    /// meanwhile is kept in `proc.seen`.
    fn line_about(&mut self, client: SocketAddr) -> String {
        self.proc.wait_for(&format!("peer={client}"))
    }

    /// The lines logged so far that name `client` (each line names its peer in the `peer` field).
    fn lines_about(&self, client: SocketAddr) -> Vec<&String> {
        let field = format!("peer={client}");
        self.proc
            .seen
            .iter()
            .filter(|l| l.contains(&field))
            .collect()
    }
}

/// The level of a text log line (`2026-01-01T00:00:00.000000Z  WARN message ...`).
fn level(line: &str) -> &str {
    line.split_whitespace().nth(1).unwrap_or_default()
}

fn closed(m: &str, dir: &str, how: &str) -> f64 {
    samples(
        m,
        "ringseal_connections_closed_total",
        &[("direction", dir), ("how", how)],
    )
}

fn refused(m: &str, dir: &str) -> f64 {
    samples(
        m,
        "ringseal_handshakes_total",
        &[("direction", dir), ("result", "refused")],
    )
}

/// Connects and closes without a byte: FIN, or with `reset` RST (`SO_LINGER` 0, as HAProxy's checks
/// do). Returns the client's address, which the sidecar's log lines name.
async fn probe(to: SocketAddr, reset: bool) -> SocketAddr {
    let s = within("probe connect", TcpStream::connect(to))
        .await
        .unwrap();
    let me = s.local_addr().unwrap();
    if reset {
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    }
    drop(s);
    me
}

/// A connect-close or connect-reset: counted as `no_data`, logged once at debug naming the peer, no
/// refusal, nothing at info or above.
async fn a_probe_is_not_a_refusal(mode: &str, reset: bool) {
    let pki = Pki::new();
    let mut sc = start(&pki, mode, "10s", None);
    assert_eq!(closed(&sc.metrics(), "inbound", "no_data"), 0.0);
    let client = probe(sc.inbound, reset).await;
    let line = sc.line_about(client);
    assert_eq!(level(&line), "DEBUG", "{line}");
    let what = if reset { "reset" } else { "closed" };
    assert!(
        line.contains(&format!(
            "{client} {what} the connection before sending a byte"
        )),
        "{line}"
    );
    let m = sc.metrics();
    assert_eq!(closed(&m, "inbound", "no_data"), 1.0, "{m}");
    assert_eq!(
        refused(&m, "inbound"),
        0.0,
        "a probe counted as a refusal:\n{m}"
    );
    // A second probe and a real peer: the first probe's lines are all in by then.
    let second = probe(sc.inbound, reset).await;
    sc.line_about(second);
    let about = sc.lines_about(client);
    assert_eq!(about.len(), 1, "{about:#?}");
    let loud: Vec<_> = sc.proc.seen.iter().filter(|l| level(l) == "WARN").collect();
    assert!(loud.is_empty(), "probes logged a warning: {loud:#?}");
    assert_eq!(closed(&sc.metrics(), "inbound", "no_data"), 2.0);
    sc.proc.check_alive().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_close_is_a_probe_not_a_refusal() {
    a_probe_is_not_a_refusal("strict", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_reset_is_a_probe_not_a_refusal() {
    a_probe_is_not_a_refusal("strict", true).await;
}

/// Permissive listeners sniff the first bytes too: no bytes is a probe there as well, not a plaintext
/// peer and not a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_on_a_permissive_listener_is_a_probe() {
    a_probe_is_not_a_refusal("permissive", false).await;
    a_probe_is_not_a_refusal("permissive", true).await;
}

/// A connection that says nothing and stays open holds a handshake slot until `handshake_timeout`: it
/// is not a probe (a probe closes at once) but a peer that did not handshake, refused with reason
/// `timeout` and a (rate-limited) warning, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_until_the_handshake_timeout_stays_a_refusal() {
    let pki = Pki::new();
    let mut sc = start(&pki, "strict", "300ms", None);
    let mut s = TcpStream::connect(sc.inbound).await.unwrap();
    let client = s.local_addr().unwrap();
    // The sidecar ends it: EOF (its FIN after the refusal) or a reset, within the test's bound.
    let mut buf = [0u8; 64];
    let got = within("closed by the handshake timeout", s.read(&mut buf)).await;
    assert!(matches!(got, Ok(0) | Err(_)), "{got:?}");
    let line = sc.line_about(client);
    assert_eq!(level(&line), "WARN", "{line}");
    assert!(line.contains("reason=\"timeout\""), "{line}");
    assert!(line.contains("limits.handshake_timeout"), "{line}");
    let m = sc.metrics();
    assert_eq!(
        samples(
            &m,
            "ringseal_handshakes_total",
            &[("result", "refused"), ("reason", "timeout")]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(closed(&m, "inbound", "no_data"), 0.0, "{m}");
}

/// Bytes that are not TLS are a refusal (`not_tls`), however short the conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_tls_stay_a_refusal() {
    let pki = Pki::new();
    let mut sc = start(&pki, "strict", "10s", None);
    let mut s = TcpStream::connect(sc.inbound).await.unwrap();
    let client = s.local_addr().unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    drop(s);
    let line = sc.line_about(client);
    assert_eq!(level(&line), "WARN", "{line}");
    assert!(line.contains("reason=\"not_tls\""), "{line}");
    let m = sc.metrics();
    assert_eq!(
        samples(
            &m,
            "ringseal_handshakes_total",
            &[("result", "refused"), ("reason", "not_tls")]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(closed(&m, "inbound", "no_data"), 0.0, "{m}");
}

/// Outbound listeners do not wait for the node's first byte: they dial the peer at once, so a
/// connect-close there is an empty relayed connection (a verified handshake, 0 bytes, `clean`), not
/// a refusal and not `no_data`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_on_an_outbound_listener_is_an_empty_connection() {
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let peer = Sidecar::start(config(&pki, backend.addr)).await;
    let sc = start(&pki, "strict", "10s", Some(peer.addr));
    probe(sc.outbound.unwrap(), false).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let m = loop {
        let m = sc.metrics();
        if closed(&m, "outbound", "clean") >= 1.0 {
            break m;
        }
        assert!(std::time::Instant::now() < deadline, "never closed:\n{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(refused(&m, "outbound"), 0.0, "{m}");
    assert_eq!(closed(&m, "outbound", "no_data"), 0.0, "{m}");
    let loud: Vec<_> = sc.proc.seen.iter().filter(|l| level(l) == "WARN").collect();
    assert!(loud.is_empty(), "{loud:#?}");
}

// ---------------------------------------------------------------------------------------------------
// The refusal alert under probes, from the counters the real binary exports

/// Every counter sample (`*_total`) of an exposition: series (name and labels) -> value.
fn counters(exposition: &str) -> BTreeMap<String, f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| series.split('{').next().unwrap().ends_with("_total"))
        .map(|(series, v)| (series.to_owned(), v.parse().unwrap()))
        .collect()
}

/// What one event did to every counter: `after - before`, series by series.
fn deltas(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(s, v)| (s.clone(), v - before.get(s).copied().unwrap_or(0.0)))
        .collect()
}

/// `series` with `instance` and `job` labels, as Prometheus stores a scraped sample.
fn scraped(series: &str) -> String {
    let labels = "instance=\"a:9464\",job=\"ringseal\"";
    match series.split_once('{') {
        Some((name, rest)) if rest.starts_with('}') => format!("{name}{{{labels}}}"),
        Some((name, rest)) => format!("{name}{{{labels},{rest}"),
        None => format!("{series}{{{labels}}}"),
    }
}

/// promtool input series: each counter at its scraped value, growing by what one event did to it,
/// once per 10 s interval for `steps` intervals.
fn input_series(
    start: &BTreeMap<String, f64>,
    per_event: &BTreeMap<String, f64>,
    steps: u32,
) -> String {
    per_event
        .iter()
        .map(|(series, d)| {
            let from = start.get(series).copied().unwrap_or(0.0);
            format!(
                "      - series: '{}'\n        values: '{from}+{d}x{steps}'\n",
                scraped(series)
            )
        })
        .collect()
}

/// `RingsealHandshakeFailures` from the shipped `config/alerts.yml`: silent on a quiet node probed
/// every 10 s for 30 minutes, firing when a real refusal (a peer with a certificate from another CA)
/// happens every 10 s instead. The input series are the real binary's counters, moved by exactly
/// what one probe and one refusal moved them by, so a probe counted as a refusal again fails this.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refusal_alert_ignores_probes_and_fires_on_refusals() {
    if !tools::have(&["promtool"]) {
        return;
    }
    let pki = Pki::new();
    let mut sc = start(&pki, "strict", "10s", None);
    let before = counters(&sc.metrics());
    let prober = probe(sc.inbound, false).await;
    // The line about the connection is logged after it was counted (refusal or not).
    sc.line_about(prober);
    let after_probe = counters(&sc.metrics());
    let probe = deltas(&before, &after_probe);
    assert!(
        probe.values().any(|d| *d != 0.0),
        "a probe moved no counter"
    );

    let stranger = Pki::new_named("OtherCluster");
    let impostor = client(pki.roots(), Some(&stranger.node));
    let from = ip("127.0.0.2");
    within("refused roundtrip", roundtrip(&impostor, from, sc.inbound))
        .await
        .expect_err("a certificate from another CA was accepted");
    sc.proc.wait_for("refused 127.0.0.2");
    let after_refusal = counters(&sc.metrics());
    let refusal = deltas(&after_probe, &after_refusal);
    let refused_handshakes: f64 = refusal
        .iter()
        .filter(|(s, _)| s.starts_with("ringseal_handshakes_total{"))
        .map(|(_, d)| d)
        .sum();
    assert_eq!(refused_handshakes, 1.0, "{refusal:#?}");

    // 30 minutes at one event per 10 s.
    let steps = 180;
    let rules = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/alerts.yml"));
    let test = format!(
        r#"rule_files: ["{rules}"]
evaluation_interval: 10s
tests:
  # A quiet node (no handshakes at all) probed every 10 s.
  - interval: 10s
    input_series:
{probes}
    alert_rule_test:
      - eval_time: 15m
        alertname: RingsealHandshakeFailures
        exp_alerts: []
      - eval_time: 30m
        alertname: RingsealHandshakeFailures
        exp_alerts: []
  # The same node refusing a peer every 10 s.
  - interval: 10s
    input_series:
{refusals}
    alert_rule_test:
      - eval_time: 30m
        alertname: RingsealHandshakeFailures
        exp_alerts:
          - exp_labels: {{severity: warning, instance: "a:9464", direction: inbound, listener: internode}}
            exp_annotations:
              summary: '100% of inbound handshakes refused on listener internode of a:9464'
              description: 'ringseal on a:9464 refuses 100% of the inbound TLS handshakes of its listener internode. The reason label says why (see the dashboard''s "Handshakes by result and reason"); ringseal logs one WARN line per peer and reason with the details. Typical causes: a node with a certificate from another CA (unknown_ca), a missing IP SAN (endpoint_mismatch), an expired peer certificate, or a scanner (not_tls).'
"#,
        rules = rules.display(),
        probes = input_series(&before, &probe, steps),
        refusals = input_series(&after_probe, &refusal, steps),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("probes.test.yml");
    std::fs::write(&path, &test).unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool test rules failed:\n{}{}\n{test}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
