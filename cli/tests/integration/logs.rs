//! Logs for log shippers (issue 13), through the real binary: `--log-format json` (or
//! `RINGSEAL_LOG_FORMAT=json`) writes one JSON object per line with stable field names, and a relayed
//! connection that ends leaves one info line with who, how much and how it ended, for an inbound and
//! an outbound connection alike; `[logging] connections = false` takes it down to debug.

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use ringseal::tls::x509::CertInfo;
use ringseal_testkit::process::{Proc, address_after, ringseal_binary};
use ringseal_testkit::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The real binary with an inbound listener in front of `backend` and an outbound listener to
/// `upstream`, JSON logs; `logging` is the `[logging]` table, `env` extra environment.
struct Running {
    proc: Proc,
    inbound: SocketAddr,
    outbound: SocketAddr,
}

fn start(
    pki: &Pki,
    backend: SocketAddr,
    upstream: SocketAddr,
    logging: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Running {
    let (dir, config) = write_config(
        pki,
        "",
        &format!(
            "[[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"{backend}\"\n\n\
             [[outbound]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n\n{logging}\n"
        ),
    );
    let mut cmd = ringseal_testkit::process::ringseal_run(&ringseal_binary(), &[], &config);
    cmd.args(args).envs(env.iter().copied());
    let mut proc = Proc::launch("ringseal", cmd, ringseal_testkit::process::Lines::All)
        .unwrap()
        .keep(dir);
    let inbound = address_after(
        &proc.wait_for("starting inbound mTLS listener on"),
        "listener on ",
    );
    let outbound = address_after(
        &proc.wait_for("starting outbound listener on"),
        "listener on ",
    );
    Running {
        proc,
        inbound,
        outbound,
    }
}

/// A line as JSON, or a failure naming it.
fn json(line: &str) -> serde_json::Map<String, Value> {
    match serde_json::from_str(line) {
        Ok(Value::Object(o)) => o,
        other => panic!("not a JSON object ({other:?}): {line}"),
    }
}

/// The next line whose `message` contains `needle`, parsed.
fn next(proc: &mut Proc, needle: &str) -> serde_json::Map<String, Value> {
    json(&proc.wait_for(needle))
}

fn str_of<'a>(o: &'a serde_json::Map<String, Value>, key: &str) -> &'a str {
    o.get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string {key:?} in {o:?}"))
}

fn u64_of(o: &serde_json::Map<String, Value>, key: &str) -> u64 {
    o.get(key)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no integer {key:?} in {o:?}"))
}

/// A verified TLS connection to `to` that sends `msg`, reads its echo and ends in order both ways
/// (close_notify, then EOF from the sidecar). Returns the client's address.
async fn tls_exchange(pki: &Pki, to: SocketAddr, msg: &[u8]) -> SocketAddr {
    let cfg = client(pki.roots(), Some(&pki.node));
    let mut tls = within("connect", connect(&cfg, to)).await.unwrap();
    let me = tls.get_ref().0.local_addr().unwrap();
    within("echo", echo(&mut tls, msg)).await.unwrap();
    tls.shutdown().await.unwrap();
    let mut rest = Vec::new();
    within("close", tls.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty());
    me
}

/// The local node's plaintext connection through the outbound listener: `msg`, its echo, FIN, EOF.
async fn plain_exchange(to: SocketAddr, msg: &[u8]) -> SocketAddr {
    let mut s = within("connect", TcpStream::connect(to)).await.unwrap();
    let me = s.local_addr().unwrap();
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    within("echo", s.read_exact(&mut back)).await.unwrap();
    assert_eq!(back, msg);
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    within("close", s.read_to_end(&mut rest)).await.unwrap();
    me
}

/// The connection-end line's fields, as the README documents them.
#[allow(clippy::too_many_arguments)]
fn assert_connection_end(
    line: &serde_json::Map<String, Value>,
    direction: &str,
    peer: SocketAddr,
    local: SocketAddr,
    identity: &str,
    from_peer: u64,
    to_peer: u64,
) {
    assert_eq!(str_of(line, "level"), "INFO", "{line:?}");
    assert_eq!(str_of(line, "direction"), direction, "{line:?}");
    // The listener's default name: the first [[inbound]] is "internode", the first [[outbound]]
    // "outbound".
    let listener = if direction == "inbound" {
        "internode"
    } else {
        "outbound"
    };
    assert_eq!(str_of(line, "listener"), listener, "{line:?}");
    assert_eq!(str_of(line, "peer"), peer.to_string(), "{line:?}");
    assert_eq!(str_of(line, "local"), local.to_string(), "{line:?}");
    assert_eq!(line.get("tls"), Some(&Value::Bool(true)), "{line:?}");
    assert_eq!(str_of(line, "peer_identity"), identity, "{line:?}");
    assert!(
        ["TLSv1.3", "TLSv1.2"].contains(&str_of(line, "protocol")),
        "{line:?}"
    );
    assert!(str_of(line, "cipher_suite").starts_with("TLS_"), "{line:?}");
    assert!(
        ["ktls", "userspace"].contains(&str_of(line, "offload")),
        "{line:?}"
    );
    assert_eq!(u64_of(line, "bytes_from_peer"), from_peer, "{line:?}");
    assert_eq!(u64_of(line, "bytes_to_peer"), to_peer, "{line:?}");
    let took = line.get("duration_seconds").and_then(Value::as_f64);
    assert!(took.is_some_and(|d| d >= 0.0), "{line:?}");
    assert_eq!(str_of(line, "how"), "clean", "{line:?}");
    assert!(!str_of(line, "timestamp").is_empty(), "{line:?}");
}

/// Every line is a JSON object with `timestamp`, `level` and `message`; the connection-end line of an
/// inbound and of an outbound connection carries every field with the values of the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_and_the_connection_end_line_in_both_directions() {
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let peer = Sidecar::start(config(&pki, backend.addr)).await;
    let mut sc = start(
        &pki,
        backend.addr,
        peer.addr,
        "",
        &["--log-format", "json"],
        &[],
    );
    let subject = CertInfo::parse(&pki.node.cert_der).unwrap().subject;

    let client = tls_exchange(&pki, sc.inbound, b"seventeen bytes!!").await;
    let line = next(&mut sc.proc, "inbound connection with");
    assert_connection_end(&line, "inbound", client, backend.addr, &subject, 17, 17);
    assert_eq!(
        str_of(&line, "message"),
        format!("inbound connection with {client} on internode ended (clean)")
    );

    let local = plain_exchange(sc.outbound, b"five!").await;
    let line = next(&mut sc.proc, "outbound connection with");
    // The peer is the remote TLS end; its bytes are the echo.
    assert_connection_end(&line, "outbound", peer.addr, local, &subject, 5, 5);

    for l in &sc.proc.seen {
        let o = json(l);
        for key in ["timestamp", "level", "message"] {
            assert!(o.get(key).is_some_and(Value::is_string), "{key} in {l}");
        }
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&str_of(&o, "level")),
            "{l}"
        );
    }
    sc.proc.check_alive().unwrap();
}

/// `[logging] connections = false`: the connection-end line is logged at debug only (so with the
/// default filter, not at all); the environment variable selects JSON like the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_end_line_can_be_switched_off() {
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let peer = Sidecar::start(config(&pki, backend.addr)).await;
    let mut sc = start(
        &pki,
        backend.addr,
        peer.addr,
        "[logging]\nconnections = false\n",
        &[],
        &[
            ("RINGSEAL_LOG_FORMAT", "json"),
            ("RINGSEAL_LOG", "info,ringseal=debug"),
        ],
    );
    let client = tls_exchange(&pki, sc.inbound, b"hello").await;
    let line = next(&mut sc.proc, "inbound connection with");
    assert_eq!(str_of(&line, "level"), "DEBUG", "{line:?}");
    assert_eq!(str_of(&line, "peer"), client.to_string());
    plain_exchange(sc.outbound, b"hello").await;
    let line = next(&mut sc.proc, "outbound connection with");
    assert_eq!(str_of(&line, "level"), "DEBUG", "{line:?}");
    let info: Vec<_> = sc
        .proc
        .seen
        .iter()
        .map(|l| json(l))
        .filter(|o| o.contains_key("how") && str_of(o, "level") != "DEBUG")
        .collect();
    assert!(info.is_empty(), "{info:?}");
}

/// A config error under `--log-format json` is one JSON line too (exit 64); an unknown format is a
/// usage error naming the choices.
#[test]
fn json_config_errors_and_unknown_formats() {
    let out = Command::new(ringseal_binary())
        .args([
            "run",
            "--log-format",
            "json",
            "--config",
            "/nonexistent/ringseal.toml",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let o = json(lines[0]);
    assert_eq!(str_of(&o, "level"), "ERROR");
    assert!(
        str_of(&o, "message").contains("/nonexistent/ringseal.toml"),
        "{o:?}"
    );

    let out = Command::new(ringseal_binary())
        .args(["run", "--log-format", "xml", "--config", "x.toml"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("text") && stderr.contains("json"),
        "{stderr}"
    );
}
