//! The verified-chain cache through the real binary: `/metrics` shows which handshakes were answered
//! from it, a CRL brought in by a reload revokes a cached chain at the next handshake, and a cached
//! chain presented from an address its certificate does not name is still refused.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ringseal::metrics::CHAIN_CACHE;
use ringseal_testkit::process::{Proc, address_after};
use ringseal_testkit::*;
use time::OffsetDateTime;

/// `ringseal run` on `dir/ringseal.toml`: one inbound listener to `forward` (with `inbound_extra`),
/// `tls_extra` in [tls], and a metrics endpoint. Returns the process, the inbound and the metrics
/// addresses.
fn start(
    dir: tempfile::TempDir,
    forward: SocketAddr,
    tls_extra: &str,
    inbound_extra: &str,
) -> (Proc, SocketAddr, SocketAddr) {
    let config = dir.path().join("ringseal.toml");
    std::fs::write(&config, config_text(forward, tls_extra, inbound_extra)).unwrap();
    let mut proc = Proc::spawn(&[], &config, dir);
    let metrics = address_after(&proc.wait_for("serving metrics on "), "serving metrics on ");
    let line = proc.wait_for("starting inbound mTLS listener");
    (proc, address_after(&line, "listener on "), metrics)
}

fn config_text(forward: SocketAddr, tls_extra: &str, inbound_extra: &str) -> String {
    format!(
        "[tls]\ncert = \"node.crt\"\nkey = \"node.key\"\nca = \"ca.crt\"\n{tls_extra}\n\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n\n\
         [[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"{forward}\"\n{inbound_extra}\n"
    )
}

/// Inbound cache lookups so far: (hits, misses).
fn lookups(metrics: SocketAddr) -> (f64, f64) {
    let text = scrape(metrics);
    let count = |result: &str| {
        text.lines()
            .filter(|l| {
                l.starts_with(&format!("{CHAIN_CACHE}{{"))
                    && l.contains("direction=\"inbound\"")
                    && l.contains(&format!("result=\"{result}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    (count("hit"), count("miss"))
}

/// Write-then-rename, as deployment tools do.
fn write(dir: &Path, name: &str, content: impl AsRef<[u8]>) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn tomorrow() -> OffsetDateTime {
    OffsetDateTime::now_utc() + Duration::from_secs(86400)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_brought_in_by_a_reload_revokes_a_cached_chain() {
    let pki = Pki::new();
    let peer = pki.issue("node2", &[LOCALHOST]);
    let backend = Backend::start(Mode::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    pki.write(dir.path());
    let path: PathBuf = dir.path().to_owned();
    write(&path, "crl.pem", pki.ca.crl(&[], tomorrow()).unwrap());
    let (mut proc, addr, metrics) = start(dir, backend.addr, "crl = [\"crl.pem\"]", "");

    let c = client(pki.roots(), Some(&peer));
    for _ in 0..3 {
        roundtrip(&c, LOCALHOST, addr).await.unwrap();
    }
    // One full verification, then answered from the cache.
    assert_eq!(lookups(metrics), (2.0, 1.0));

    // The CA revokes node2; the next handshake after the reload refuses it, cache or not.
    write(&path, "crl.pem", pki.ca.crl(&[&peer], tomorrow()).unwrap());
    proc.signal("HUP");
    let line = proc.wait_for("reloaded /");
    assert!(line.contains("1 CRL(s)"), "{line}");
    assert!(roundtrip(&c, LOCALHOST, addr).await.is_err());
    let line = proc.wait_for("refused 127.0.0.1");
    assert!(line.contains("reason=\"revoked\""), "{line}");
    // It went through the full verification: the new verifier's cache started empty.
    assert_eq!(lookups(metrics), (2.0, 2.0));
    assert!(roundtrip(&c, LOCALHOST, addr).await.is_err());
    assert_eq!(
        lookups(metrics),
        (2.0, 3.0),
        "a refusal must never be cached"
    );

    // Everyone else is still accepted, and cached again under the new trust.
    let good = client(pki.roots(), Some(&pki.node));
    roundtrip(&good, LOCALHOST, addr).await.unwrap();
    roundtrip(&good, LOCALHOST, addr).await.unwrap();
    assert_eq!(lookups(metrics), (3.0, 4.0));
    assert_eq!(backend.accepted(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_chain_from_the_wrong_address_is_refused() {
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    pki.write(dir.path());
    let (mut proc, addr, metrics) = start(
        dir,
        backend.addr,
        "",
        "require_endpoint_verification = true",
    );

    // node1's only IP SAN is 127.0.0.1.
    let c = client(pki.roots(), Some(&pki.node));
    roundtrip(&c, LOCALHOST, addr).await.unwrap();
    roundtrip(&c, LOCALHOST, addr).await.unwrap();
    assert_eq!(lookups(metrics), (1.0, 1.0));

    assert!(roundtrip(&c, ip("127.0.0.2"), addr).await.is_err());
    let line = proc.wait_for("refused 127.0.0.2");
    assert!(line.contains("endpoint verification failed"), "{line}");
    // The chain was answered from the cache; the address check refused the connection all the same.
    assert_eq!(lookups(metrics), (2.0, 1.0));
    assert_eq!(backend.accepted(), 2);
}
