//! A real Prometheus scrapes a real ringseal: after exactly 7 good and 5 refused handshakes, its query
//! API returns 7 and 5, bytes were counted, and the alert rules in config/alerts.yml load and evaluate
//! without error against the live series.
//!
//! Needs `prometheus` (Debian package `prometheus`); outside CI the test is skipped when it is missing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ringseal_testkit::process::Proc;
use ringseal_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GOOD: usize = 7;
const REFUSED: usize = 5;

/// A Prometheus server on its own port and storage, killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Starts Prometheus scraping `target` every second, with config/alerts.yml loaded. Prometheus
    /// cannot listen on port 0, so a free port is picked and the start retried if someone takes it first.
    async fn start(binary: &str, target: SocketAddr) -> Self {
        let rules = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join("config/alerts.yml");
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let port = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().port()
            };
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let dir = tempfile::tempdir().unwrap();
            let config = dir.path().join("prometheus.yml");
            std::fs::write(
                &config,
                format!(
                    "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                     rule_files: [\"{}\"]\n\
                     scrape_configs:\n  - job_name: ringseal\n    static_configs:\n      - targets: [\"{target}\"]\n",
                    rules.display()
                ),
            )
            .unwrap();
            let log = dir.path().join("prometheus.log");
            let out = std::fs::File::create(&log).unwrap();
            let child = Command::new(binary)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .unwrap();
            let mut prom = Self {
                child,
                addr,
                log,
                _dir: dir,
            };
            // Ready, or exited (then: port taken -> try another; anything else -> fail).
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Some(status) = prom.child.try_wait().unwrap() {
                    last_log = prom.log();
                    assert!(
                        last_log.contains("address already in use"),
                        "prometheus exited with {status}:\n{last_log}"
                    );
                    break;
                }
                if let Ok((200, _)) = http_get(addr, "/-/ready").await {
                    return prom;
                }
                assert!(
                    Instant::now() < deadline,
                    "prometheus not ready within 60s:\n{}",
                    prom.log()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        panic!("could not start prometheus on a free port in 5 attempts:\n{last_log}");
    }

    /// The single value of an instant query, or `None` while it has no result.
    async fn query(&self, promql: &str) -> Option<f64> {
        let (status, body) = http_get(
            self.addr,
            &format!("/api/v1/query?query={}", encode(promql)),
        )
        .await
        .unwrap_or_else(|e| panic!("query {promql}: {e}"));
        assert_eq!(status, 200, "query {promql}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["status"], "success", "{body}");
        let result = json["data"]["result"].as_array()?;
        assert!(result.len() <= 1, "query {promql}: several series: {body}");
        result.first()?["value"][1].as_str()?.parse().ok()
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A minimal HTTP/1.0 GET (the server closes after the response, and sends no chunked encoding).
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 10s"))??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, text.clone()))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, head.to_owned()))?;
    Ok((status, body.to_owned()))
}

fn prometheus_binary() -> Option<&'static str> {
    for candidate in ["prometheus", "/usr/bin/prometheus"] {
        if Command::new(candidate)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Some(candidate);
        }
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "prometheus (Debian package prometheus) is required in CI"
    );
    eprintln!("skipping: prometheus not installed (apt-get install prometheus)");
    None
}

/// `ringseal run` with one inbound listener in front of `forward` and the endpoint on 127.0.0.1:0.
fn start_ringseal(pki: &Pki, forward: SocketAddr) -> (Proc, SocketAddr, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    pki.write(dir.path());
    let config = dir.path().join("ringseal.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert = \"node.crt\"\nkey = \"node.key\"\nca = \"ca.crt\"\n\n\
             [[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"{forward}\"\n\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n"
        ),
    )
    .unwrap();
    let mut proc = Proc::spawn(&[], &config, dir);
    let addr_after = |line: &str, marker: &str| -> SocketAddr {
        line.split(marker)
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no address after {marker:?} in {line:?}"))
    };
    let admin = addr_after(&proc.wait_for("serving metrics on"), "serving metrics on ");
    let inbound = addr_after(
        &proc.wait_for("starting inbound mTLS listener"),
        "listener on ",
    );
    (proc, inbound, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_exact_handshake_counts() {
    let Some(binary) = prometheus_binary() else {
        return;
    };
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let (mut ringseal, inbound, admin) = start_ringseal(&pki, backend.addr);
    let prom = Prometheus::start(binary, admin).await;

    let good = client(pki.roots(), Some(&pki.node));
    for _ in 0..GOOD {
        within("good roundtrip", roundtrip(&good, LOCALHOST, inbound))
            .await
            .unwrap();
    }
    let anonymous = client(pki.roots(), None);
    for _ in 0..REFUSED {
        assert!(
            within(
                "refused roundtrip",
                roundtrip(&anonymous, LOCALHOST, inbound)
            )
            .await
            .is_err()
        );
    }
    assert_eq!(backend.accepted(), GOOD);

    let ok_q = r#"sum(ringseal_handshakes_total{job="ringseal",result="ok"})"#;
    let refused_q = r#"sum(ringseal_handshakes_total{job="ringseal",result="refused"})"#;
    let bytes_q = r#"sum(ringseal_bytes_total{job="ringseal"})"#;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (ok, refused, bytes) = loop {
        let got = (
            prom.query(ok_q).await,
            prom.query(refused_q).await,
            prom.query(bytes_q).await,
        );
        if let (Some(ok), Some(refused), _) = got {
            // Counters only grow: more than we did is a counting bug, not a matter of waiting.
            assert!(ok <= GOOD as f64, "{ok} ok handshakes, {GOOD} were made");
            assert!(
                refused <= REFUSED as f64,
                "{refused} refused handshakes, {REFUSED} were made"
            );
        }
        if got.0 == Some(GOOD as f64) && got.1 == Some(REFUSED as f64) {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not see {GOOD} ok and {REFUSED} refused within 60s: got {got:?}\n\
             prometheus log:\n{}",
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let bytes = bytes.unwrap_or(0.0);
    eprintln!("prometheus saw ok={ok:?} refused={refused:?} bytes={bytes}");
    // Each roundtrip echoes "hello ring" (10 bytes) each way.
    assert_eq!(bytes, (GOOD * 20) as f64);
    assert_eq!(prom.query(r#"up{job="ringseal"}"#).await, Some(1.0));
    assert_eq!(
        prom.query(
            r#"sum(ringseal_handshakes_total{job="ringseal",result="refused",reason="no_certificate"})"#
        )
        .await,
        Some(REFUSED as f64)
    );
    assert_eq!(
        prom.query(r#"sum(ringseal_handshake_duration_seconds_count{job="ringseal"})"#)
            .await,
        Some((GOOD + REFUSED) as f64)
    );
    assert_eq!(
        prom.query(r#"count(ringseal_certificate_expiry_timestamp_seconds{job="ringseal"})"#)
            .await,
        Some(2.0)
    );

    // The alert rules loaded and evaluate against the live series without errors.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = http_get(prom.addr, "/api/v1/rules").await.unwrap();
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        let rules: Vec<&serde_json::Value> = json["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        assert!(rules.len() >= 4, "alert rules not loaded: {body}");
        for r in &rules {
            assert_ne!(
                r["health"], "err",
                "rule {} fails: {}",
                r["name"], r["lastError"]
            );
        }
        if rules.iter().all(|r| r["health"] == "ok") {
            // Nothing is wrong with this sidecar: no alert fires (the refusals are below the minimum rate).
            let firing: Vec<_> = rules
                .iter()
                .filter(|r| r["state"] == "firing")
                .map(|r| r["name"].clone())
                .collect();
            assert!(firing.is_empty(), "alerts firing: {firing:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rules not evaluated within 60s: {body}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        ringseal.child.try_wait().unwrap().is_none(),
        "ringseal exited"
    );
}
