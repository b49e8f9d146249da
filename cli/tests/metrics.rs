//! The admin endpoint through the real binary: `/metrics`, `/healthz`, `/readyz`, `/status`, what
//! garbage and slow clients get, bounded series while handshakes fail, and `promtool` on the
//! exposition, the alert rules and the fleet scrape config. Also: the Grafana dashboard, the alerts
//! and the README reference only metric names that `src/metrics.rs` defines.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::{RngCore, SeedableRng};
use ringseal::pki::{Identity, NodeSpec};
use ringseal_testkit::process::Proc;
use ringseal_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

// ---------------------------------------------------------------------------------------------------
// Harness

/// `ringseal run` with one inbound listener and `[metrics] listen = "127.0.0.1:0"`, presenting `id`.
struct Sidecar {
    proc: Proc,
    inbound: SocketAddr,
    admin: SocketAddr,
}

impl Sidecar {
    fn start(pki: &Pki, forward: SocketAddr) -> Self {
        Self::start_with(pki, &pki.node, forward)
    }

    fn start_with(pki: &Pki, id: &Identity, forward: SocketAddr) -> Self {
        let mut proc = spawn(pki, id, forward, "127.0.0.1:0", "");
        let line = proc.wait_for("serving metrics on");
        assert!(
            line.contains("INFO") && line.ends_with(" (/metrics, /healthz, /readyz, /status)"),
            "{line}"
        );
        let admin = address_after(&line, "serving metrics on ");
        let inbound = address_after(
            &proc.wait_for("starting inbound mTLS listener"),
            "listener on ",
        );
        Self {
            proc,
            inbound,
            admin,
        }
    }

    fn assert_alive(&mut self) {
        assert!(
            self.proc.child.try_wait().unwrap().is_none(),
            "ringseal exited; stderr:\n{}",
            self.proc.drain(Duration::from_millis(100)).join("\n")
        );
    }
}

/// Writes the PKI (presenting `id`) and a config with `[metrics] listen = metrics` and `[limits]`
/// `limits`, and starts `ringseal run`.
fn spawn(pki: &Pki, id: &Identity, forward: SocketAddr, metrics: &str, limits: &str) -> Proc {
    spawn_env(pki, id, forward, metrics, limits, &[])
}

/// As [`spawn`], with extra environment variables.
fn spawn_env(
    pki: &Pki,
    id: &Identity,
    forward: SocketAddr,
    metrics: &str,
    limits: &str,
    env: &[(&str, &str)],
) -> Proc {
    let dir = tempfile::tempdir().unwrap();
    pki.write(dir.path());
    std::fs::write(dir.path().join("node.crt"), &id.cert_pem).unwrap();
    std::fs::write(dir.path().join("node.key"), &id.key_pem).unwrap();
    let config = dir.path().join("ringseal.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert = \"node.crt\"\nkey = \"node.key\"\nca = \"ca.crt\"\n\n\
             [[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"{forward}\"\n\n\
             [metrics]\nlisten = \"{metrics}\"\n\n[limits]\n{limits}\n"
        ),
    )
    .unwrap();
    Proc::spawn_with(&[], &config, dir, env)
}

fn address_after(line: &str, marker: &str) -> SocketAddr {
    line.split(marker)
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no address after {marker:?} in {line:?}"))
}

/// An HTTP response as read off the wire.
#[derive(Debug)]
struct Http {
    status: u16,
    /// Names lowercased.
    headers: Vec<(String, String)>,
    body: String,
}

impl Http {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `raw` on a fresh connection and reads until the server closes (bounded).
async fn exchange(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Http> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(raw).await?;
    let mut buf = Vec::new();
    within("HTTP response", s.read_to_end(&mut buf)).await?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("no head: {text:?}"),
        )
    })?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, head.to_owned()))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Http {
        status,
        headers,
        body: body.to_owned(),
    })
}

async fn request(addr: SocketAddr, method: &str, path: &str) -> Http {
    let raw = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    exchange(addr, raw.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

async fn scrape(addr: SocketAddr) -> String {
    let r = request(addr, "GET", "/metrics").await;
    assert_eq!(r.status, 200, "{r:?}");
    r.body
}

/// Sample lines (not comments) of `metric` (exactly that name, not its `_bucket` etc.).
fn samples<'a>(exposition: &'a str, metric: &str) -> Vec<&'a str> {
    exposition
        .lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .collect()
}

/// The sum of `metric`'s samples whose line contains every one of `having`.
fn sum(exposition: &str, metric: &str, having: &[&str]) -> f64 {
    samples(exposition, metric)
        .into_iter()
        .filter(|l| having.iter().all(|h| l.contains(h)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls the exposition until `done` holds (30 s bound); returns the exposition that satisfied it.
async fn scrape_until(addr: SocketAddr, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape(addr).await;
        if done(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within 30s; last exposition:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `/readyz` once the listeners accept: the endpoint starts a moment before them, and answers
/// 503 "listeners are not accepting connections" until then.
async fn readyz_after_start(addr: SocketAddr) -> Http {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = request(addr, "GET", "/readyz").await;
        if !r.body.contains("listeners are not accepting") {
            return r;
        }
        assert_eq!(r.status, 503, "{r:?}");
        assert!(Instant::now() < deadline, "listeners never ready: {r:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `/readyz` until 200 (bounded).
async fn wait_ready(addr: SocketAddr) -> Http {
    let r = readyz_after_start(addr).await;
    assert_eq!(r.status, 200, "{r:?}");
    r
}

/// `promtool`, or `None` (and why) outside CI when it is not installed. In CI it must be there.
fn promtool() -> Option<&'static str> {
    match Command::new("promtool").arg("--version").output() {
        Ok(o) if o.status.success() => Some("promtool"),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "promtool (Debian package prometheus) is required in CI"
            );
            eprintln!(
                "skipping the promtool checks: promtool not installed (apt-get install prometheus)"
            );
            None
        }
    }
}

/// Runs `promtool args...` with `stdin`, asserting success and printing its output on failure.
fn run_promtool(promtool: &str, args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(promtool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_owned();
    let writer =
        std::thread::spawn(move || std::io::Write::write_all(&mut input, stdin.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

fn repo(path: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join(path)
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs() as f64
}

// ---------------------------------------------------------------------------------------------------
// The endpoint

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_answer_and_every_metric_is_described() {
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let mut sc = Sidecar::start(&pki, backend.addr);

    let health = request(sc.admin, "GET", "/healthz").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let ready = wait_ready(sc.admin).await;
    assert_eq!(ready.body, "ready\n");

    let m = request(sc.admin, "GET", "/metrics").await;
    assert_eq!(m.status, 200);
    assert!(
        m.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        m.headers
    );
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        m.body
            .lines()
            .any(|l| l == format!("ringseal_build_info{{version=\"{version}\"}} 1")),
        "{}",
        m.body
    );
    // Expiry gauges: our identity and the CA, at their notAfter.
    let info = |der| ringseal::tls::x509::CertInfo::parse(der).unwrap();
    let (node, ca) = (info(&pki.node.cert_der), info(&pki.ca.cert_der));
    let expiry = "ringseal_certificate_expiry_timestamp_seconds";
    for (role, cert) in [("identity", &node), ("ca", &ca)] {
        let role_label = format!("role=\"{role}\"");
        let subject_label = format!("subject=\"{}\"", cert.subject);
        let v = sum(&m.body, expiry, &[&role_label, &subject_label]);
        assert_eq!(v, unix(cert.not_after), "{role}: {}", m.body);
    }

    // Errors.
    let r = request(sc.admin, "GET", "/").await;
    assert_eq!(r.status, 404, "{r:?}");
    let r = request(sc.admin, "GET", "/metrics/../secret").await;
    assert_eq!(r.status, 404, "{r:?}");
    for path in ["/metrics", "/healthz", "/readyz", "/status"] {
        let r = request(sc.admin, "POST", path).await;
        assert_eq!(r.status, 405, "POST {path}: {r:?}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"), "{r:?}");
    }
    let r = request(sc.admin, "DELETE", "/metrics").await;
    assert_eq!(r.status, 405, "{r:?}");
    let r = request(sc.admin, "HEAD", "/metrics").await;
    assert_eq!((r.status, r.body.as_str()), (200, ""), "{r:?}");

    // Some traffic, then every metric the code defines is in the exposition with HELP and TYPE.
    let good = client(pki.roots(), Some(&pki.node));
    roundtrip(&good, LOCALHOST, sc.inbound).await.unwrap();
    let anonymous = client(pki.roots(), None);
    assert!(roundtrip(&anonymous, LOCALHOST, sc.inbound).await.is_err());
    // The server counts a refusal just after its alert is on the way, so poll for the counts too.
    let all_present = |text: &str| {
        ringseal::metrics::ALL.iter().all(|name| {
            text.contains(&format!("# HELP {name} ")) && text.contains(&format!("# TYPE {name} "))
        }) && sum(text, "ringseal_handshakes_total", &[]) >= 2.0
    };
    let text = scrape_until(sc.admin, "HELP and TYPE for every metric", all_present).await;
    assert_eq!(
        sum(
            &text,
            "ringseal_handshakes_total",
            &["result=\"ok\"", "listener=\"internode\""]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        sum(
            &text,
            "ringseal_handshakes_total",
            &["result=\"refused\"", "reason=\"no_certificate\""]
        ),
        1.0,
        "{text}"
    );
    assert!(
        sum(&text, "ringseal_bytes_total", &["flow=\"from_peer\""]) >= 10.0,
        "{text}"
    );
    // Series that alerts use with increase() exist from the start, at zero.
    assert_eq!(
        samples(&text, "ringseal_config_reloads_total").len(),
        2,
        "{text}"
    );
    if let Some(promtool) = promtool() {
        run_promtool(promtool, &["check", "metrics"], &text);
    }
    sc.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_with_a_reason_while_the_identity_is_not_valid() {
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    // Valid from tomorrow: loads (a clock may be behind), but the node is not ready.
    let mut spec = NodeSpec::new("node1", &[LOCALHOST]);
    spec.not_before = time::OffsetDateTime::now_utc() + Duration::from_secs(86400);
    let future = pki.ca.issue(&spec).unwrap();
    let mut sc = Sidecar::start_with(&pki, &future, backend.addr);
    let r = readyz_after_start(sc.admin).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.starts_with("not ready: "), "{r:?}");
    assert!(r.body.contains("not valid before"), "{r:?}");
    assert_eq!(r.body.lines().count(), 1, "one line: {r:?}");
    assert_eq!(request(sc.admin, "GET", "/healthz").await.status, 200);

    // Valid for a few seconds: ready, then not ready once it has expired (decided at request time).
    let mut spec = NodeSpec::new("node1", &[LOCALHOST]);
    spec.not_after = time::OffsetDateTime::now_utc() + Duration::from_secs(6);
    let brief = pki.ca.issue(&spec).unwrap();
    let mut sc2 = Sidecar::start_with(&pki, &brief, backend.addr);
    wait_ready(sc2.admin).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let expired = loop {
        let r = request(sc2.admin, "GET", "/readyz").await;
        if r.status != 200 {
            break r;
        }
        assert!(Instant::now() < deadline, "still ready after expiry: {r:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(expired.status, 503, "{expired:?}");
    assert!(expired.body.contains("expired at"), "{expired:?}");
    sc.assert_alive();
    sc2.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_does_not_kill_the_endpoint() {
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let mut sc = Sidecar::start(&pki, backend.addr);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);

    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut random = vec![0u8; 4096];
    rng.fill_bytes(&mut random);
    cases.push(("random bytes", random));
    cases.push(("truncated request line", b"GET /metr".to_vec()));
    cases.push((
        "request line without version",
        b"GET /metrics\r\n\r\n".to_vec(),
    ));
    cases.push(("NUL bytes", vec![0u8; 1024]));
    cases.push((
        "HTTP/2 preface",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
    ));
    cases.push((
        "over-long header",
        format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\n\r\n",
            "a".repeat(64 * 1024)
        )
        .into_bytes(),
    ));
    cases.push((
        "bad header line",
        b"GET /metrics HTTP/1.1\r\nthis is not a header\r\n\r\n".to_vec(),
    ));
    for (what, bytes) in &cases {
        // Either an error status or a closed connection (the write itself may be reset).
        match exchange(sc.admin, bytes).await {
            Ok(r) => assert!(
                matches!(r.status, 400 | 405 | 414 | 431 | 505),
                "{what}: {r:?}"
            ),
            Err(e) => eprintln!("{what}: connection closed: {e}"),
        }
        let r = request(sc.admin, "GET", "/healthz").await;
        assert_eq!(r.status, 200, "after {what}: {r:?}");
    }

    // A TLS ClientHello (someone pointing a TLS scraper at it): the handshake fails, the endpoint serves.
    let tls = client(pki.roots(), Some(&pki.node));
    assert!(connect(&tls, sc.admin).await.is_err());
    // A truncated request, the client gone half-way.
    {
        let mut s = TcpStream::connect(sc.admin).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost:")
            .await
            .unwrap();
    }
    assert!(scrape(sc.admin).await.contains("ringseal_build_info"));
    // Two requests on one kept-alive connection.
    let r = exchange(
        sc.admin,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.contains("ready\n"), "{r:?}");
    sc.assert_alive();
}

/// Opens up to `n` connections to `to` (each connect bounded: a server that stopped accepting lets the
/// backlog fill, and then a connect waits for SYN retries), sending `first` on each; keeps those that
/// connected.
async fn hold(n: usize, to: SocketAddr, first: &[u8]) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        if let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(to)).await
        {
            let _ = s.write_all(first).await;
            held.push(s);
        }
    }
    held
}

/// The issue's starvation: 500 idle connections and 500 slowloris ones (a request head sent a byte a
/// second) held at once used to take the endpoint's 64 slots for 5 s each, so that neither a scrape nor
/// a liveness probe got an answer within 10 s. Every new client now gets a slot at once (the least
/// recently active connection is closed for it): each path answers. The latency is printed, not
/// asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_answers_while_500_idle_and_500_slowloris_connections_are_held() {
    let _ = rlimit::increase_nofile_limit(16_384);
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let mut sc = Sidecar::start(&pki, backend.addr);
    wait_ready(sc.admin).await;
    let idle = hold(500, sc.admin, b"").await;
    let mut slow = hold(500, sc.admin, b"GET /metrics HTTP/1.1\r\nHost: x\r\n").await;
    let held = idle.len() + slow.len();
    eprintln!(
        "holding {} idle and {} slowloris connections",
        idle.len(),
        slow.len()
    );
    let dribble = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for s in &mut slow {
                let _ = s.write_all(b"X").await;
            }
        }
    });
    let mut text = String::new();
    for path in ["/healthz", "/readyz", "/status", "/metrics"] {
        let started = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(10), request(sc.admin, "GET", path))
            .await
            .unwrap_or_else(|_| panic!("GET {path}: no answer within 10s while the flood is held"));
        assert_eq!(r.status, 200, "{path}: {r:?}");
        eprintln!("GET {path}: 200 after {:?}", started.elapsed());
        text = r.body;
    }
    // Every connection beyond the 64 slots evicted one.
    let evicted = sum(&text, "ringseal_admin_connections_evicted_total", &[]);
    assert!(
        evicted >= (held - ringseal::ADMIN_MAX_CONNECTIONS) as f64,
        "{evicted} evictions for {held} connections"
    );
    dribble.abort();
    drop(idle);
    sc.assert_alive();
}

/// An HTTP/2 client (prior knowledge) gets HTTP/2's own answer at once: the server preface (an empty
/// SETTINGS frame) and GOAWAY with HTTP_1_1_REQUIRED, then a close; the reason is logged at debug.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_preface_gets_goaway_http_1_1_required() {
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let mut proc = spawn_env(
        &pki,
        &pki.node,
        backend.addr,
        "127.0.0.1:0",
        "",
        &[("RINGSEAL_LOG", "debug")],
    );
    let admin = address_after(&proc.wait_for("serving metrics on"), "serving metrics on ");
    let mut s = TcpStream::connect(admin).await.unwrap();
    // The preface, then the client's (empty) SETTINGS frame, as an HTTP/2 client sends them.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    within("the answer to an HTTP/2 preface", s.read_to_end(&mut got))
        .await
        .unwrap();
    eprintln!(
        "HTTP/2 preface answered and closed after {:?}",
        started.elapsed()
    );
    let settings = [0, 0, 0, 4, 0, 0, 0, 0, 0];
    let goaway = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xd];
    assert_eq!(got, [&settings[..], &goaway[..]].concat());
    proc.wait_for("sent the HTTP/2 connection preface; this endpoint speaks HTTP/1.1 only");
    assert_eq!(request(admin, "GET", "/healthz").await.status, 200);
}

/// On SIGTERM the endpoint stops accepting at once, while open connections still drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_closes_when_shutdown_begins() {
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let mut proc = spawn(
        &pki,
        &pki.node,
        backend.addr,
        "127.0.0.1:0",
        "shutdown_grace = \"30s\"",
    );
    let admin = address_after(&proc.wait_for("serving metrics on"), "serving metrics on ");
    let inbound = address_after(
        &proc.wait_for("starting inbound mTLS listener"),
        "listener on ",
    );
    let mut open = connect(&client(pki.roots(), Some(&pki.node)), inbound)
        .await
        .unwrap();
    echo(&mut open, b"live").await.unwrap();
    wait_ready(admin).await;
    proc.signal("TERM");
    proc.wait_for("stopped accepting; waiting up to 30s for 1 open connection");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(admin).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the metrics endpoint still accepts during shutdown"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        proc.child.try_wait().unwrap().is_none(),
        "exited before draining"
    );
    // The open connection still works, then ends the drain.
    echo(&mut open, b"still").await.unwrap();
    drop(open);
    proc.wait_for("all connections finished");
    assert!(proc.wait_exit().success());
}

/// A metrics port that is taken fails start-up like any listener: one line naming metrics.listen, exit 64.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_metrics_port_fails_start_up_with_exit_64() {
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap();
    let mut proc = spawn(&pki, &pki.node, backend.addr, &port.to_string(), "");
    let line = proc.wait_for("metrics.listen");
    assert!(line.starts_with("error: "), "{line}");
    assert!(line.contains(&format!("{port}: cannot listen")), "{line}");
    let status = proc.wait_exit();
    assert_eq!(status.code(), Some(64), "{status:?}");
}

// ---------------------------------------------------------------------------------------------------
// Cardinality

async fn no_certificate(
    config: &std::sync::Arc<rustls::ClientConfig>,
    from: IpAddr,
    to: SocketAddr,
) {
    assert!(
        within("anonymous roundtrip", roundtrip(config, from, to))
            .await
            .is_err(),
        "a client without a certificate was relayed"
    );
}

async fn junk(i: usize, from: IpAddr, to: SocketAddr) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let mut s = socket.connect(to).await.unwrap();
    let payload: &[u8] = match i % 3 {
        0 => b"GET / HTTP/1.1\r\nHost: scanner\r\n\r\n",
        1 => b"\xca\x55\x2d\xf0\x00\x00\x00\x0b internode?",
        _ => b"SSH-2.0-OpenSSH_9.2\r\n",
    };
    let _ = s.write_all(payload).await;
    let mut buf = Vec::new();
    let _ = within("junk refused", s.read_to_end(&mut buf)).await;
    assert!(buf.is_empty(), "plaintext junk got an answer: {buf:?}");
}

/// `n` failed handshakes, half without a client certificate and half plaintext junk, from three source
/// addresses, 16 at a time.
async fn fail_handshakes(pki: &Pki, to: SocketAddr, n: usize) {
    let anonymous = client(pki.roots(), None);
    let sources = [ip("127.0.0.1"), ip("127.0.0.2"), ip("127.0.0.3")];
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        if tasks.len() >= 16 {
            tasks.join_next().await.unwrap().unwrap();
        }
        let from = sources[i % sources.len()];
        let anonymous = anonymous.clone();
        tasks.spawn(async move {
            if i % 2 == 0 {
                no_certificate(&anonymous, from, to).await;
            } else {
                junk(i, from, to).await;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_stay_bounded_while_handshakes_fail() {
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let mut sc = Sidecar::start(&pki, backend.addr);
    let handshakes = "ringseal_handshakes_total";
    let before = scrape(sc.admin).await;
    let series_before = samples(&before, handshakes).len();
    let lines_before = before.lines().count();

    fail_handshakes(&pki, sc.inbound, 500).await;
    let refused = |n: f64| move |t: &str| sum(t, handshakes, &["result=\"refused\""]) == n;
    let after_500 = scrape_until(sc.admin, "500 refusals counted", refused(500.0)).await;
    fail_handshakes(&pki, sc.inbound, 500).await;
    let after_1000 = scrape_until(sc.admin, "1000 refusals counted", refused(1000.0)).await;

    let (series_500, series_1000) = (
        samples(&after_500, handshakes).len(),
        samples(&after_1000, handshakes).len(),
    );
    eprintln!(
        "{handshakes} series: {series_before} before, {series_500} after 500 failures, \
         {series_1000} after 1000; exposition lines: {lines_before} before, {} after",
        after_1000.lines().count()
    );
    assert!(series_500 > series_before, "refusals were not counted");
    assert_eq!(
        series_1000, series_500,
        "the number of series grew with the number of failures:\n{after_1000}"
    );
    assert!(series_1000 < 20, "{series_1000} series:\n{after_1000}");
    assert_eq!(
        after_1000.lines().count(),
        after_500.lines().count(),
        "the exposition grew with the number of failures"
    );
    for line in after_1000.lines() {
        assert!(
            !line.contains("127.0.0."),
            "a peer address in a label: {line}"
        );
    }
    assert_eq!(
        sum(&after_1000, handshakes, &["reason=\"no_certificate\""]),
        500.0
    );
    assert_eq!(sum(&after_1000, handshakes, &["reason=\"not_tls\""]), 500.0);
    assert_eq!(
        backend.accepted(),
        0,
        "a refused peer reached the storage port"
    );
    if let Some(promtool) = promtool() {
        run_promtool(promtool, &["check", "metrics"], &after_1000);
    }
    sc.assert_alive();
}

// ---------------------------------------------------------------------------------------------------
// Alerts, scrape config, dashboard, README

/// Every `ringseal_*` identifier in `text`, with a histogram's `_bucket`/`_sum`/`_count` suffix removed
/// when the base name is a histogram we define.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("ringseal_") {
        let start = i + at;
        let boundary = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_' || c == b':')
        };
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .map_or(text.len(), |e| start + e);
        // "ringseal_" alone is a prefix in a regex (`ringseal_.*`), not a name.
        if boundary && end > start + "ringseal_".len() {
            let name = &text[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|b| *b == ringseal::metrics::HANDSHAKE_DURATION)
                })
                .unwrap_or(name);
            names.insert(base.to_owned());
        }
        i = end;
    }
    names
}

fn assert_known(what: &str, names: &BTreeSet<String>) {
    let known: BTreeSet<String> = ringseal::metrics::ALL
        .iter()
        .map(|s| s.to_string())
        .collect();
    let unknown: Vec<_> = names.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "{what} references metrics that src/metrics.rs does not define: {unknown:?}"
    );
}

#[test]
fn metric_constants_are_all_listed() {
    // Every "ringseal_..." literal in src/metrics.rs is in ALL, and ALL has nothing else.
    let source = std::fs::read_to_string(repo("src/metrics.rs")).unwrap();
    let literals: BTreeSet<String> = source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with("ringseal_"))
        .map(str::to_owned)
        .collect();
    let all: BTreeSet<String> = ringseal::metrics::ALL
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(literals, all);
}

#[test]
fn readme_metrics_table_lists_every_metric() {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let section = readme
        .split("\n## Metrics")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has a ## Metrics section");
    let in_table: BTreeSet<String> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.starts_with("ringseal_"))
        .map(str::to_owned)
        .collect();
    let all: BTreeSet<String> = ringseal::metrics::ALL
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(in_table, all, "README's metrics table vs src/metrics.rs");
}

#[test]
fn dashboard_queries_reference_only_defined_metrics() {
    let text = std::fs::read_to_string(repo("config/grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dashboard["uid"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dashboard["schemaVersion"].as_u64().is_some());

    fn panels(v: &serde_json::Value, out: &mut Vec<serde_json::Value>) {
        for p in v["panels"].as_array().into_iter().flatten() {
            out.push(p.clone());
            panels(p, out);
        }
    }
    let mut all = Vec::new();
    panels(&dashboard, &mut all);
    let mut used = BTreeSet::new();
    let mut ids = BTreeSet::new();
    let mut queries = 0;
    for p in all.iter().filter(|p| p["type"] != "row") {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate id: {title}"
        );
        assert!(p["gridPos"]["w"].as_u64().is_some(), "{title}: no gridPos");
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        for t in targets {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{title}: no expr"));
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{title}: {expr} uses no ringseal metric");
            assert_known(&format!("panel {title:?}"), &names);
            used.extend(names);
            queries += 1;
        }
    }
    // The dashboard covers every metric except the constant build info.
    let missing: Vec<_> = ringseal::metrics::ALL
        .iter()
        .filter(|m| **m != ringseal::metrics::BUILD_INFO && !used.contains(**m))
        .collect();
    assert!(missing.is_empty(), "no panel shows {missing:?}");
    eprintln!("dashboard: {} panels, {queries} queries", all.len());
}

#[test]
fn alerts_and_scrape_config_reference_only_defined_metrics() {
    for file in ["config/alerts.yml", "config/prometheus.yml"] {
        let text = std::fs::read_to_string(repo(file)).unwrap();
        let names = metric_names(&text);
        assert_known(file, &names);
        if file.ends_with("alerts.yml") {
            for m in [
                ringseal::metrics::CERT_EXPIRY,
                ringseal::metrics::HANDSHAKES,
                ringseal::metrics::CONNECTIONS,
                ringseal::metrics::RELOADS,
                ringseal::metrics::PLAINTEXT_FALLBACKS,
                ringseal::metrics::TURNED_AWAY,
            ] {
                assert!(names.contains(m), "no alert on {m}");
            }
        }
    }
}

#[test]
fn promtool_checks_the_rules_and_the_scrape_config() {
    let Some(promtool) = promtool() else { return };
    let rules = repo("config/alerts.yml");
    let out = run_promtool(promtool, &["check", "rules", rules.to_str().unwrap()], "");
    assert!(out.contains("SUCCESS"), "{out}");
    let config = repo("config/prometheus.yml");
    run_promtool(promtool, &["check", "config", config.to_str().unwrap()], "");
}

/// The alerts fire on what they describe (promtool's rule unit tests, on synthetic series).
#[test]
fn alerts_fire_on_what_they_describe() {
    let Some(promtool) = promtool() else { return };
    let dir = tempfile::tempdir().unwrap();
    let rules = repo("config/alerts.yml");
    let test = format!(
        r#"rule_files: ["{rules}"]
evaluation_interval: 1m
tests:
  # Identity expires 10 days after t=0 (Unix epoch in promtool time); a CA in 400 days.
  - interval: 1m
    input_series:
      - series: 'ringseal_certificate_expiry_timestamp_seconds{{instance="a:9464",listener="internode",role="identity",subject="CN=node1"}}'
        values: '864000x30'
      - series: 'ringseal_certificate_expiry_timestamp_seconds{{instance="a:9464",listener="internode",role="ca",subject="CN=ca"}}'
        values: '34560000x30'
    alert_rule_test:
      - eval_time: 20m
        alertname: RingsealCertificateExpiringSoon
        exp_alerts:
          - exp_labels: {{severity: warning, instance: "a:9464", listener: internode, role: identity, subject: "CN=node1"}}
            exp_annotations:
              summary: 'ringseal identity certificate of listener internode on a:9464 expires in 9d 23h 40m 0s'
              description: 'The identity certificate "CN=node1" used by listener internode of the ringseal sidecar on a:9464 expires in 9d 23h 40m 0s. Issue a new one from the cluster CA and replace tls.cert/tls.key (identity) or add the new CA to tls.ca (ca); ringseal reloads it without a restart. An expired identity makes every peer refuse this node.'
  # 10% of handshakes refused for 10 minutes.
  - interval: 1m
    input_series:
      - series: 'ringseal_handshakes_total{{instance="a:9464",direction="inbound",listener="internode",result="ok",reason="",protocol="TLSv1.3",cipher_suite="TLS_AES_256_GCM_SHA384"}}'
        values: '0+540x30'
      - series: 'ringseal_handshakes_total{{instance="a:9464",direction="inbound",listener="internode",result="refused",reason="unknown_ca",protocol="",cipher_suite=""}}'
        values: '0+60x30'
      - series: 'ringseal_handshakes_total{{instance="b:9464",direction="inbound",listener="internode",result="ok",reason="",protocol="TLSv1.3",cipher_suite="TLS_AES_256_GCM_SHA384"}}'
        values: '0+600x30'
    alert_rule_test:
      - eval_time: 20m
        alertname: RingsealHandshakeFailures
        exp_alerts:
          - exp_labels: {{severity: warning, instance: "a:9464", direction: inbound, listener: internode}}
            exp_annotations:
              summary: '10% of inbound handshakes refused on listener internode of a:9464'
              description: 'ringseal on a:9464 refuses 10% of the inbound TLS handshakes of its listener internode. The reason label says why (see the dashboard''s "Handshakes by result and reason"); ringseal logs one WARN line per peer and reason with the details. Typical causes: a node with a certificate from another CA (unknown_ca), a missing IP SAN (endpoint_mismatch), an expired peer certificate, or a scanner (not_tls).'
  # A plaintext connection, in a series that appears only then.
  - interval: 1m
    input_series:
      - series: 'ringseal_connections_total{{instance="a:9464",direction="inbound",listener="internode",tls="false"}}'
        values: '_x10 1x20'
      - series: 'ringseal_connections_total{{instance="b:9464",direction="inbound",listener="internode",tls="true"}}'
        values: '0+5x30'
    alert_rule_test:
      - eval_time: 12m
        alertname: RingsealPlaintextConnection
        exp_alerts:
          - exp_labels: {{severity: critical, instance: "a:9464", direction: inbound, listener: internode}}
            exp_annotations:
              summary: 'Plaintext inbound connection on listener internode of a:9464'
              description: 'ringseal on a:9464 relayed inbound traffic on its listener internode without TLS in the last 10 minutes. In a strict cluster nothing may; find the node that still connects in plaintext (ringseal''s logs name it) and enable its sidecar.'
      - eval_time: 5m
        alertname: RingsealPlaintextConnection
        exp_alerts: []
  # A plaintext fallback of permissive outbound, in a series that starts at 0.
  - interval: 1m
    input_series:
      - series: 'ringseal_plaintext_fallbacks_total{{instance="a:9464",listener="outbound",reason="connection_refused"}}'
        values: '0x5 3x25'
      - series: 'ringseal_plaintext_fallbacks_total{{instance="a:9464",listener="outbound",reason="not_tls"}}'
        values: '0x30'
      - series: 'ringseal_plaintext_fallbacks_total{{instance="b:9464",listener="outbound",reason="connection_refused"}}'
        values: '0x30'
    alert_rule_test:
      - eval_time: 8m
        alertname: RingsealPlaintextFallback
        exp_alerts:
          - exp_labels: {{severity: warning, instance: "a:9464", listener: outbound, reason: connection_refused}}
            exp_annotations:
              summary: 'Permissive outbound listener outbound fell back to plaintext (connection_refused) on a:9464'
              description: 'ringseal on a:9464 sent outbound internode connections in plaintext in the last 10 minutes (reason connection_refused: connection_refused = the peer''s TLS port refused, not_tls = it answered with bytes that are not TLS) to a peer it has not verified over TLS recently. Its WARN log line names the peer. If that peer should have a sidecar, its sidecar is down or something on the network blocks or answers its TLS port in its place; if every node has one, switch to strict mode.'
      - eval_time: 4m
        alertname: RingsealPlaintextFallback
        exp_alerts: []
      - eval_time: 20m
        alertname: RingsealPlaintextFallback
        exp_alerts: []
  # A burst of connections over the per-source cap, in a series that starts at 0.
  - interval: 1m
    input_series:
      - series: 'ringseal_connections_turned_away_total{{instance="a:9464",direction="inbound",listener="internode",reason="source_limit"}}'
        values: '0x5 236x25'
      - series: 'ringseal_connections_turned_away_total{{instance="b:9464",direction="inbound",listener="internode",reason="source_limit"}}'
        values: '0x30'
    alert_rule_test:
      - eval_time: 12m
        alertname: RingsealConnectionsTurnedAway
        exp_alerts:
          - exp_labels: {{severity: warning, instance: "a:9464", direction: inbound, listener: internode, reason: source_limit}}
            exp_annotations:
              summary: 'ringseal on a:9464 turns inbound connections away on listener internode (source_limit)'
              description: '236 inbound connections in 10 minutes were closed by admission control on a:9464, reason source_limit. source_limit and evicted: connections that do not finish their handshake (a flood or a scanner; ringseal''s log names the address). connections_full: limits.max_connections is reached; raise it.'
      - eval_time: 5m
        alertname: RingsealConnectionsTurnedAway
        exp_alerts: []
  # A failed reload.
  - interval: 1m
    input_series:
      - series: 'ringseal_config_reloads_total{{instance="a:9464",result="error"}}'
        values: '0x5 1x25'
      - series: 'ringseal_config_reloads_total{{instance="b:9464",result="error"}}'
        values: '0x30'
    alert_rule_test:
      - eval_time: 8m
        alertname: RingsealReloadFailed
        exp_alerts:
          - exp_labels: {{severity: warning, instance: "a:9464", result: error}}
            exp_annotations:
              summary: 'ringseal on a:9464 rejected a configuration reload'
              description: 'A reload of the config or certificate files on a:9464 failed in the last 10 minutes, so ringseal keeps the previous material. Its log has one line with the file and the reason (a key not matching the certificate, a half-written file, an empty CA bundle...). Fix the files; the next check or SIGHUP retries. With several listeners, the line (and /status listeners[].tls.reload_error) names the listener that kept its previous material; the others took their new material.'
      - eval_time: 3m
        alertname: RingsealReloadFailed
        exp_alerts: []
"#,
        rules = rules.display()
    );
    let path = dir.path().join("alerts.test.yml");
    std::fs::write(&path, test).unwrap();
    run_promtool(promtool, &["test", "rules", path.to_str().unwrap()], "");
}
