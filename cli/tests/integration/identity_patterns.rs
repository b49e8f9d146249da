//! Allow-list patterns through the real binary, as Kubernetes uses them: certificates carry only the
//! pod's DNS name under the headless service (cert-manager issues them before the pod has an IP), and
//! both sidecars of a pair allow `*.<service>.<namespace>.svc.cluster.local`. A pod of that service gets
//! through in both directions; a certificate from the same CA with a name under another service, or
//! two labels deep, is refused by the inbound sidecar with the reason `identity_not_allowed`.

use std::net::SocketAddr;

use ringseal::pki::{Identity, NodeSpec};
use ringseal_testkit::process::{Proc, address_after};
use ringseal_testkit::*;

const SERVICE: &str = "cassandra-dc1-all-pods-service.db.svc.cluster.local";

/// A certificate from `pki`'s CA with `dns` as its only SAN (no IP, as cert-manager issues them).
fn dns_only(pki: &Pki, dns: &str) -> Identity {
    with_ips(pki, dns, &[])
}

fn with_ips(pki: &Pki, dns: &str, ips: &[std::net::IpAddr]) -> Identity {
    let mut spec = NodeSpec::new("cassandra", ips);
    spec.dns = vec![dns.to_owned()];
    pki.ca.issue(&spec).unwrap()
}

/// Starts the binary on `listeners` with `id` as its identity; returns it, the start-up line of the
/// first listener, its address and the metrics address.
fn sidecar(pki: &Pki, id: &Identity, listeners: &str) -> (Proc, String, SocketAddr, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    pki.write(dir.path());
    std::fs::write(dir.path().join("node.crt"), &id.cert_pem).unwrap();
    std::fs::write(dir.path().join("node.key"), &id.key_pem).unwrap();
    let config = dir.path().join("ringseal.toml");
    std::fs::write(
        &config,
        format!("{TLS_TABLE}\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n{listeners}\n"),
    )
    .unwrap();
    let mut proc = Proc::spawn(&[], &config, dir);
    let metrics = address_after(&proc.wait_for("serving metrics on"), "serving metrics on ");
    let line = proc.wait_for("listener on");
    let addr = address_after(&line, "listener on ");
    (proc, line, addr, metrics)
}

fn refused(metrics: SocketAddr, reason: &str) -> f64 {
    scrape(metrics)
        .lines()
        .filter(|l| {
            l.starts_with("ringseal_handshakes_total{")
                && l.contains("result=\"refused\"")
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_pattern_admits_pods_of_the_service_and_refuses_others() {
    let pki = Pki::new();
    // pod0 also carries 127.0.0.1, only so that the test's own TLS clients (which match the server's
    // name as an IP) can talk to it directly; the sidecars never look at it (no endpoint verification).
    let pod0 = with_ips(
        &pki,
        &format!("cassandra-dc1-default-sts-0.{}", SERVICE.to_uppercase()),
        &[LOCALHOST],
    );
    let pod1 = dns_only(&pki, &format!("cassandra-dc1-default-sts-1.{SERVICE}"));
    let allow = format!("allow = {{ dns = [\"*.{SERVICE}\"] }}");
    let backend = Backend::start(Mode::Echo).await;

    // pod0's inbound sidecar and pod1's outbound sidecar towards it, each allowing the other by pattern.
    let (mut inbound, started, in_addr, in_metrics) = sidecar(
        &pki,
        &pod0,
        &format!(
            "[[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"{}\"\n{allow}",
            backend.addr
        ),
    );
    assert!(
        started.contains(&format!("*.{SERVICE}")) && started.contains("one left-most label"),
        "{started}"
    );
    let (_outbound, _, out_addr, out_metrics) = sidecar(
        &pki,
        &pod1,
        &format!("[[outbound]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{in_addr}\"\n{allow}"),
    );
    let mut plain = tokio::net::TcpStream::connect(out_addr).await.unwrap();
    within("echo through the pair", async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        plain.write_all(b"gossip syn").await.unwrap();
        let mut back = [0u8; 10];
        plain.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"gossip syn");
    })
    .await;

    // Same CA, but not a pod of the service: another service, a name two labels deep, the service
    // name itself.
    for name in [
        "cassandra-dc2-default-sts-0.cassandra-dc2-all-pods-service.db.svc.cluster.local"
            .to_owned(),
        format!("x.cassandra-dc1-default-sts-0.{SERVICE}"),
        SERVICE.to_owned(),
    ] {
        let other = client(pki.roots(), Some(&dns_only(&pki, &name)));
        assert!(
            roundtrip(&other, LOCALHOST, in_addr).await.is_err(),
            "{name} was admitted"
        );
    }
    let line = inbound.wait_for("identity not allowed");
    assert!(line.contains(&format!("*.{SERVICE}")), "{line}");
    assert_eq!(refused(in_metrics, "identity_not_allowed"), 3.0);
    // The admitted pod is still admitted directly, and nothing was refused on the outbound side.
    let pod = client(pki.roots(), Some(&pod1));
    roundtrip(&pod, LOCALHOST, in_addr).await.unwrap();
    assert_eq!(refused(out_metrics, "identity_not_allowed"), 0.0);
}
