//! `offload` on this host, with the real binary: the start-up line says whether kTLS is available and
//! why not, `require` refuses to start without it, and every connection is counted by the path it took
//! (`offload="ktls|userspace"` for TLS, `"splice"` for permissive plaintext). The kTLS path itself is
//! proved in a VM (`cli/tests/ktls_vm.rs`); this machine's kernel has no kTLS.

use std::net::SocketAddr;
use std::process::Command;

use ringseal_testkit::process::Proc;
use ringseal_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TLS_TABLE: &str = "[tls]\ncert = \"node.crt\"\nkey = \"node.key\"\nca = \"ca.crt\"\n";

/// The address logged after `prefix` in a line of `proc`'s stderr.
fn logged_addr(proc: &mut Proc, prefix: &str) -> SocketAddr {
    let line = match proc.seen.iter().find(|l| l.contains(prefix)) {
        Some(l) => l.clone(),
        None => proc.wait_for(prefix),
    };
    line.split(prefix)
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

#[test]
fn require_refuses_to_start_without_ktls() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    pki.write(dir.path());
    let config = dir.path().join("ringseal.toml");
    std::fs::write(
        &config,
        format!(
            "offload = \"require\"\n{TLS_TABLE}\n[[inbound]]\nlisten = \"127.0.0.1:0\"\n\
             forward = \"127.0.0.1:7000\"\n"
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringseal"))
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if ringseal::ktls_support().available() {
        assert!(out.status.success(), "{stderr}");
        assert!(
            stdout.contains("offload    require (kTLS available"),
            "{stdout}"
        );
    } else {
        assert_eq!(out.status.code(), Some(64), "{stdout}{stderr}");
        assert!(
            stderr.contains("offload: \"require\", but this kernel has no kTLS: ")
                && stderr.contains("set offload = \"auto\""),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }
}

#[tokio::test]
async fn connections_are_counted_by_path() {
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    pki.write(dir.path());
    let config = dir.path().join("ringseal.toml");
    std::fs::write(
        &config,
        format!(
            "mode = \"permissive\"\n{TLS_TABLE}\n[[inbound]]\nlisten = \"127.0.0.1:0\"\n\
             forward = \"{}\"\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            backend.addr
        ),
    )
    .unwrap();
    let mut proc = Proc::spawn(&[], &config, dir);
    let listen = logged_addr(&mut proc, "listener on ");
    let metrics = logged_addr(&mut proc, "serving metrics on ");
    let ktls = ringseal::ktls_support().available();
    let line = proc
        .seen
        .iter()
        .find(|l| l.contains("kTLS "))
        .unwrap_or_else(|| panic!("no kTLS start-up line: {:?}", proc.seen))
        .clone();
    if ktls {
        assert!(line.contains("kTLS available ("), "{line}");
    } else {
        // Says why, and what to do.
        assert!(line.contains("kTLS unavailable: "), "{line}");
        assert!(line.contains("user space"), "{line}");
    }

    roundtrip(&client(pki.roots(), Some(&pki.node)), LOCALHOST, listen)
        .await
        .unwrap();
    let mut plain = tokio::net::TcpStream::connect(listen).await.unwrap();
    plain
        .write_all(&[0xCA, 0x55, 0x2D, 0xFA, 1, 2, 3])
        .await
        .unwrap();
    plain.shutdown().await.unwrap();
    let mut back = Vec::new();
    within("plaintext echo", plain.read_to_end(&mut back))
        .await
        .unwrap();
    assert_eq!(back, [0xCA, 0x55, 0x2D, 0xFA, 1, 2, 3]);
    backend.wait_finished(2).await;

    let m = scrape(metrics);
    let tls_path = if ktls { "ktls" } else { "userspace" };
    let count = |tls: &str, offload: &str| {
        m.lines()
            .filter(|l| l.starts_with("ringseal_connections_total{"))
            .filter(|l| {
                l.contains("direction=\"inbound\"")
                    && l.contains(&format!("tls=\"{tls}\""))
                    && l.contains(&format!("offload=\"{offload}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert_eq!(count("true", tls_path), 1.0, "{m}");
    assert_eq!(count("false", "splice"), 1.0, "{m}");
    assert_eq!(
        count("true", "ktls") + count("true", "userspace"),
        1.0,
        "one TLS connection: {m}"
    );
}
