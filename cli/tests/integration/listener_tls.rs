//! Per-listener TLS policy through the real binary (issue 16): two inbound listeners of one process
//! with their own CA and identity (`[inbound.tls]`), each refusing the other's client certificates;
//! client auth "optional" and false; a per-listener keystore with a wrong password; a reload that
//! breaks one listener's material and keeps it on its old material while the other takes its new one.
//! Two outbound listeners of one process (`[outbound.tls]`), each dialling with its own CA and client
//! certificate, each refused by the other's peer; one that only narrows `protocols`.
//! Each of these configs is refused by a build without per-listener policies (unknown `name`/`tls`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use ringseal::pki::{Ca, Identity, NodeSpec};
use ringseal::tls::x509::CertInfo;
use ringseal_testkit::process::{Proc, address_after};
use ringseal_testkit::tls_peer::Seen;
use ringseal_testkit::*;
use rustls::RootCertStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The cluster PKI (internode, `[tls]`) and a second CA for the client port, with the client port's
/// server certificate and one driver certificate.
struct TwoPkis {
    cluster: Pki,
    clients: Ca,
    client_port: Identity,
    driver: Identity,
}

impl TwoPkis {
    fn new() -> Self {
        let clients = Ca::new("Clients").unwrap();
        let client_port = clients
            .issue(&NodeSpec::new("cql-node1", &[LOCALHOST]))
            .unwrap();
        let driver = clients
            .issue(&NodeSpec::new("driver1", &[LOCALHOST]))
            .unwrap();
        Self {
            cluster: Pki::new(),
            clients,
            client_port,
            driver,
        }
    }

    /// node.crt/node.key/ca.crt (cluster), client.crt/client.key/client-ca.crt (client port).
    fn write(&self, dir: &Path) {
        self.cluster.write(dir);
        std::fs::write(dir.join("client.crt"), &self.client_port.cert_pem).unwrap();
        std::fs::write(dir.join("client.key"), &self.client_port.key_pem).unwrap();
        std::fs::write(dir.join("client-ca.crt"), &self.clients.cert_pem).unwrap();
    }

    /// A client trusting both CAs (so the server's certificate is never why a handshake fails),
    /// presenting `id`.
    fn client(&self, id: Option<&Identity>) -> Arc<rustls::ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cluster.ca.cert_der.clone()).unwrap();
        roots.add(self.clients.cert_der.clone()).unwrap();
        client(Arc::new(roots), id)
    }
}

/// `[tls]` (the cluster's), an internode listener and a "client" listener with `client_tls` as its
/// `[inbound.tls]`, both in front of `forward`, and a metrics endpoint.
fn two_listeners(forward: SocketAddr, client_tls: &str) -> String {
    format!(
        "{TLS_TABLE}\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n\
         [[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"{forward}\"\n\n\
         [[inbound]]\nname = \"client\"\nlisten = \"127.0.0.1:0\"\nforward = \"{forward}\"\n\n\
         [inbound.tls]\n{client_tls}\n"
    )
}

/// The client port's own identity and CA.
const CLIENT_TLS: &str = "cert = \"client.crt\"\nkey = \"client.key\"\nca = \"client-ca.crt\"\n";

/// Starts `ringseal run` on `config` in `dir`; returns it with its two inbound addresses (config order)
/// and its metrics address.
fn start(dir: tempfile::TempDir, config: &str) -> (Proc, [SocketAddr; 2], SocketAddr) {
    let path = dir.path().join("ringseal.toml");
    std::fs::write(&path, config).unwrap();
    let mut proc = Proc::spawn(&[], &path, dir);
    let metrics = address_after(&proc.wait_for("serving metrics on "), "serving metrics on ");
    let first = address_after(
        &proc.wait_for("starting inbound mTLS listener"),
        "listener on ",
    );
    let second = address_after(
        &proc.wait_for("starting inbound mTLS listener"),
        "listener on ",
    );
    (proc, [first, second], metrics)
}

/// The subject of the certificate the listener at `to` presents, after a relayed echo (the client
/// is accepted).
async fn presented(config: &Arc<rustls::ClientConfig>, to: SocketAddr) -> String {
    let mut tls = connect(config, to).await.unwrap();
    echo(&mut tls, b"who are you").await.unwrap();
    let cert = &tls.get_ref().1.peer_certificates().unwrap()[0];
    CertInfo::parse(cert).unwrap().subject
}

/// The subjects the internode listener and the client port present, each to its own client.
async fn presented_by_both(
    node: &Arc<rustls::ClientConfig>,
    internode: SocketAddr,
    driver: &Arc<rustls::ClientConfig>,
    client_port: SocketAddr,
) -> [String; 2] {
    [
        presented(node, internode).await,
        presented(driver, client_port).await,
    ]
}

fn refusals(m: &str, listener: &str, reason: &str) -> f64 {
    samples(
        m,
        "ringseal_handshakes_total",
        &[
            ("listener", listener),
            ("result", "refused"),
            ("reason", reason),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_listeners_with_their_own_cas_accept_only_their_own_clients() {
    let p = TwoPkis::new();
    let backend = Backend::start(Mode::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    p.write(dir.path());
    let (mut proc, [internode, client_port], metrics) =
        start(dir, &two_listeners(backend.addr, CLIENT_TLS));

    let node = p.client(Some(&p.cluster.node));
    let driver = p.client(Some(&p.driver));
    // Each listener presents its own identity.
    assert_eq!(
        presented_by_both(&node, internode, &driver, client_port).await,
        ["CN=node1, OU=TestCluster", "CN=cql-node1, OU=Clients"]
    );
    // Each accepts the certificates of its own CA ...
    roundtrip(&node, LOCALHOST, internode).await.unwrap();
    roundtrip(&driver, LOCALHOST, client_port).await.unwrap();
    // ... and refuses those of the other's.
    assert!(
        roundtrip(&node, LOCALHOST, client_port).await.is_err(),
        "a cluster certificate was accepted on the client port"
    );
    assert!(
        roundtrip(&driver, LOCALHOST, internode).await.is_err(),
        "a driver certificate was accepted on the internode port"
    );
    assert_eq!(backend.accepted(), 4);
    proc.wait_for("unknown CA");
    // Every refusal is counted under the listener that refused it.
    let m = scrape_until(metrics, |m| {
        refusals(m, "client", "unknown_ca") >= 1.0 && refusals(m, "internode", "unknown_ca") >= 1.0
    })
    .await;
    assert_eq!(refusals(&m, "client", "unknown_ca"), 1.0, "{m}");
    assert_eq!(refusals(&m, "internode", "unknown_ca"), 1.0, "{m}");
    for listener in ["internode", "client"] {
        let ok = samples(
            &m,
            "ringseal_handshakes_total",
            &[("listener", listener), ("result", "ok")],
        );
        assert_eq!(ok, 2.0, "{listener}: {m}");
    }
    // Each listener's identity has its expiry gauge.
    let expiry = |listener: &str, subject: &str| {
        samples(
            &m,
            "ringseal_certificate_expiry_timestamp_seconds",
            &[
                ("listener", listener),
                ("role", "identity"),
                ("subject", subject),
            ],
        )
    };
    assert!(expiry("client", "CN=cql-node1, OU=Clients") > 0.0, "{m}");
    assert!(expiry("internode", "CN=node1, OU=TestCluster") > 0.0, "{m}");
    proc.check_alive().unwrap();
}

/// Polls `/metrics` until `done` holds (bounded).
async fn scrape_until(addr: SocketAddr, done: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let m = scrape(addr);
        if done(&m) || std::time::Instant::now() > deadline {
            return m;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_client_auth_relays_anonymous_clients_and_verifies_the_rest() {
    let p = TwoPkis::new();
    let backend = Backend::start(Mode::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    p.write(dir.path());
    let client_tls = format!("{CLIENT_TLS}require_client_auth = \"optional\"\n");
    let (mut proc, [internode, client_port], metrics) =
        start(dir, &two_listeners(backend.addr, &client_tls));

    // No certificate: accepted and relayed, logged as identity "none".
    let anonymous = p.client(None);
    roundtrip(&anonymous, LOCALHOST, client_port).await.unwrap();
    let line = proc.wait_for("listener=\"client\"");
    assert!(line.contains("peer_identity=\"none\""), "{line}");
    // A certificate of another CA: verified, so refused.
    let stranger = p.client(Some(&p.cluster.node));
    assert!(
        roundtrip(&stranger, LOCALHOST, client_port).await.is_err(),
        "a certificate the client port does not trust was accepted"
    );
    // A good certificate: accepted, its identity logged.
    let driver = p.client(Some(&p.driver));
    roundtrip(&driver, LOCALHOST, client_port).await.unwrap();
    let line = proc.wait_for("peer_identity=\"CN=driver1, OU=Clients\"");
    assert!(line.contains("listener=\"client\""), "{line}");
    // The internode listener still requires a certificate.
    assert!(roundtrip(&anonymous, LOCALHOST, internode).await.is_err());
    assert_eq!(backend.accepted(), 2);
    let m = scrape_until(metrics, |m| {
        refusals(m, "internode", "no_certificate") >= 1.0
    })
    .await;
    assert_eq!(refusals(&m, "client", "unknown_ca"), 1.0, "{m}");
    assert_eq!(refusals(&m, "internode", "no_certificate"), 1.0, "{m}");
    proc.check_alive().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_auth_false_asks_for_no_certificate() {
    let p = TwoPkis::new();
    let backend = Backend::start(Mode::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    p.write(dir.path());
    let client_tls = format!("{CLIENT_TLS}require_client_auth = false\n");
    let (mut proc, [_, client_port], _) = start(dir, &two_listeners(backend.addr, &client_tls));
    // A client holding a certificate the listener does not trust is relayed: it was never asked for
    // it (rustls sends a client certificate only when requested), so nothing was verified ...
    let stranger = p.client(Some(&p.cluster.node));
    roundtrip(&stranger, LOCALHOST, client_port).await.unwrap();
    // ... and the connection is anonymous.
    let line = proc.wait_for("listener=\"client\"");
    assert!(line.contains("peer_identity=\"none\""), "{line}");
    assert_eq!(backend.accepted(), 1);
}

#[test]
fn a_listener_keystore_with_a_wrong_password_exits_64_naming_the_listener_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bin = env!("CARGO_BIN_EXE_ringseal");
    std::fs::write(d.join("p12.password"), "storepass1").unwrap();
    tools::run(
        d,
        bin,
        &["certs", "ca", "--cluster-name", "Clients", "--out", "cca"],
    );
    tools::run(
        d,
        bin,
        &[
            "certs",
            "node",
            "--ca",
            "cca",
            "--name",
            "cql1",
            "--ip",
            "127.0.0.1",
            "--out",
            "cql1",
            "--p12-password-file",
            "p12.password",
        ],
    );
    Pki::new().write(d);
    let config = d.join("ringseal.toml");
    std::fs::write(
        &config,
        two_listeners(
            "127.0.0.1:9042".parse().unwrap(),
            "keystore = \"cql1/cql1.p12\"\nkeystore_password = \"wrongpass9\"\n",
        ),
    )
    .unwrap();
    let out = Command::new(bin)
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    for want in [
        "listener \"client\"",
        "cql1/cql1.p12",
        "wrong password",
        "keystore_password",
    ] {
        assert!(stderr.contains(want), "{want:?} missing in: {stderr}");
    }
    assert!(
        !stderr.contains("wrongpass9"),
        "the password leaked: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_breaks_one_listener_keeps_it_on_its_old_material() {
    let p = TwoPkis::new();
    let backend = Backend::start(Mode::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    p.write(dir.path());
    let path = dir.path().to_owned();
    let (mut proc, [internode, client_port], metrics) =
        start(dir, &two_listeners(backend.addr, CLIENT_TLS));
    let node = p.client(Some(&p.cluster.node));
    let driver = p.client(Some(&p.driver));
    assert_eq!(
        presented_by_both(&node, internode, &driver, client_port).await,
        ["CN=node1, OU=TestCluster", "CN=cql-node1, OU=Clients"]
    );

    // New material for both listeners: the internode identity is renewed, the client port gets a
    // renewed certificate but the key of another one (a botched rotation).
    let renewed = p.cluster.issue("node1-renewed", &[LOCALHOST]);
    let write = |name: &str, text: &str| {
        let tmp = path.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path.join(name)).unwrap();
    };
    write("node.crt", &renewed.cert_pem);
    write("node.key", &renewed.key_pem);
    let client_renewed = p
        .clients
        .issue(&NodeSpec::new("cql-node1-renewed", &[LOCALHOST]))
        .unwrap();
    write("client.crt", &client_renewed.cert_pem);
    write("client.key", &p.driver.key_pem);
    proc.signal("HUP");
    let line = proc.wait_for("kept the previous certificates");
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("listener \"client\""), "{line}");
    assert!(line.contains("does not match the certificate"), "{line}");
    assert!(!line.contains("listener \"internode\""), "{line}");

    // The internode listener presents its new identity; the client port its old one, still working.
    assert_eq!(
        presented_by_both(&node, internode, &driver, client_port).await,
        [
            "CN=node1-renewed, OU=TestCluster",
            "CN=cql-node1, OU=Clients"
        ]
    );
    roundtrip(&node, LOCALHOST, internode).await.unwrap();
    roundtrip(&driver, LOCALHOST, client_port).await.unwrap();

    // The failure is counted and /status names the listener.
    let m = scrape(metrics);
    assert_eq!(
        sample(&m, "ringseal_config_reloads_total{result=\"error\"}"),
        1.0,
        "{m}"
    );
    let status = ringseal_testkit::scrape::status(metrics);
    let listeners = status["listeners"].as_array().unwrap();
    let by_name = |n: &str| {
        listeners
            .iter()
            .find(|l| l["name"] == n)
            .unwrap_or_else(|| panic!("no listener {n} in {status:#}"))
    };
    let client = by_name("client");
    assert_eq!(client["tls"]["identity"], "CN=cql-node1, OU=Clients");
    let error = client["tls"]["reload_error"].as_str().unwrap();
    assert!(error.contains("client.key"), "{error}");
    let internode_status = by_name("internode");
    assert_eq!(
        internode_status["tls"]["identity"],
        "CN=node1-renewed, OU=TestCluster"
    );
    assert!(internode_status["tls"]["reload_error"].is_null());

    // Repaired: the client port takes its renewed certificate, and the error clears.
    write("client.key", &client_renewed.key_pem);
    proc.signal("HUP");
    proc.wait_for("reloaded listener \"client\"");
    assert_eq!(
        presented(&driver, client_port).await,
        "CN=cql-node1-renewed, OU=Clients"
    );
    roundtrip(&driver, LOCALHOST, client_port).await.unwrap();
    let status = ringseal_testkit::scrape::status(metrics);
    let client = status["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "client")
        .unwrap()
        .clone();
    assert!(client["tls"]["reload_error"].is_null(), "{client:#}");
    proc.check_alive().unwrap();
}

/// `ringseal check` on `config` in `dir`: exit code, stdout, stderr.
fn check(dir: &Path, config: &str, json: bool) -> (Option<i32>, String, String) {
    let path = dir.join("ringseal.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringseal"));
    cmd.args(["check", "--config"]).arg(&path);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_reports_each_listener_and_names_it_in_its_problems() {
    let p = TwoPkis::new();
    let dir = tempfile::tempdir().unwrap();
    p.write(dir.path());
    let forward: SocketAddr = "127.0.0.1:9042".parse().unwrap();
    let client_tls = format!("{CLIENT_TLS}require_client_auth = \"optional\"\n");
    let (code, stdout, stderr) = check(dir.path(), &two_listeners(forward, &client_tls), false);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    for want in [
        "listener   internode (inbound 127.0.0.1:0): [tls], client auth required, identity \
         \"CN=node1, OU=TestCluster\"",
        "listener   client (inbound 127.0.0.1:0): inbound[1].tls, client auth optional, identity \
         \"CN=cql-node1, OU=Clients\"",
        "serverAuth ok, clientAuth ok; trust tls.ca ",
    ] {
        assert!(stdout.contains(want), "{want:?} missing in:\n{stdout}");
    }
    let (code, stdout, _) = check(dir.path(), &two_listeners(forward, &client_tls), true);
    assert_eq!(code, Some(0), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let client = &report["listeners"][1];
    assert_eq!(client["name"], "client", "{report:#}");
    assert_eq!(client["client_auth"], "optional");
    assert_eq!(
        client["identity"]["certificate"]["subject"],
        "CN=cql-node1, OU=Clients"
    );
    assert!(
        client["identity"]["certificate"]["days_left"]
            .as_i64()
            .unwrap()
            > 300
    );

    // The client port's certificate with the cluster CA as its trust: its own chain does not verify,
    // and the error names the listener.
    let wrong_trust = "cert = \"client.crt\"\nkey = \"client.key\"\nca = \"ca.crt\"\n";
    let (code, stdout, stderr) = check(dir.path(), &two_listeners(forward, wrong_trust), false);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(
            "error: listener \"client\": identity \"CN=cql-node1, OU=Clients\" does not verify"
        ),
        "{stdout}"
    );
    assert!(
        !stdout.contains("error: listener \"internode\""),
        "{stdout}"
    );
}

/// The cluster's PKI (`[tls]`) and another data centre's, with a peer's TLS port for each: each
/// requires client certificates of its own CA and presents a server certificate from it.
struct TwoDcs {
    cluster: Pki,
    dc2: Pki,
    cluster_peer: TlsPeer,
    dc2_peer: TlsPeer,
}

impl TwoDcs {
    async fn new() -> Self {
        let cluster = Pki::new();
        let dc2 = Pki::new_named("DC2");
        let cluster_peer = TlsPeer::start(&cluster, &cluster.issue("node2", &[LOCALHOST])).await;
        let dc2_peer = TlsPeer::start(&dc2, &dc2.issue("dc2-node1", &[LOCALHOST])).await;
        Self {
            cluster,
            dc2,
            cluster_peer,
            dc2_peer,
        }
    }

    /// node.crt/node.key/ca.crt (the cluster's), dc2.crt/dc2.key/dc2-ca.crt (DC2's node1).
    fn write(&self, dir: &Path) {
        self.cluster.write(dir);
        std::fs::write(dir.join("dc2.crt"), &self.dc2.node.cert_pem).unwrap();
        std::fs::write(dir.join("dc2.key"), &self.dc2.node.key_pem).unwrap();
        std::fs::write(dir.join("dc2-ca.crt"), &self.dc2.ca.cert_pem).unwrap();
    }
}

const CLUSTER_NODE: &str = "CN=node1, OU=TestCluster";
const DC2_NODE: &str = "CN=node1, OU=DC2";

/// `[tls]` (the cluster's), a metrics endpoint and two outbound listeners: "outbound" with `[tls]`
/// towards `first`, "dc2" with `dc2_tls` as its `[outbound.tls]` towards `second`.
fn two_outbound(first: SocketAddr, second: SocketAddr, dc2_tls: &str) -> String {
    format!(
        "{TLS_TABLE}\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n\
         [[outbound]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{first}\"\n\n\
         [[outbound]]\nname = \"dc2\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{second}\"\n\n\
         [outbound.tls]\n{dc2_tls}\n"
    )
}

/// DC2's identity and CA.
const DC2_TLS: &str = "cert = \"dc2.crt\"\nkey = \"dc2.key\"\nca = \"dc2-ca.crt\"\n";

/// Starts `ringseal run` on `config` in `dir`; returns it with the addresses of its outbound
/// listeners "outbound" and `second` (by the names their start lines carry) and its metrics address.
fn start_outbound(
    dir: tempfile::TempDir,
    config: &str,
    second: &str,
) -> (Proc, [SocketAddr; 2], SocketAddr) {
    let path = dir.path().join("ringseal.toml");
    std::fs::write(&path, config).unwrap();
    let mut proc = Proc::spawn(&[], &path, dir);
    let metrics = address_after(&proc.wait_for("serving metrics on "), "serving metrics on ");
    let mut first = None;
    let mut other = None;
    for _ in 0..2 {
        let line = proc.wait_for("starting outbound listener");
        let addr = address_after(&line, "listener on ");
        if line.contains("listener=\"outbound\"") {
            first = Some(addr);
        } else if line.contains(&format!("listener=\"{second}\"")) {
            other = Some(addr);
        }
    }
    let listeners = [first.unwrap(), other.unwrap()];
    (proc, listeners, metrics)
}

/// The local node's plaintext through the outbound listener at `to`, echoed by the peer.
async fn through(to: SocketAddr, msg: &[u8]) {
    let mut local = TcpStream::connect(to).await.unwrap();
    local.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    within("echo through the peer", local.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(back, msg);
}

/// The local node's connection through the outbound listener at `to` ends (EOF or reset) without a
/// byte delivered to it.
async fn refused_through(to: SocketAddr) {
    let mut local = TcpStream::connect(to).await.unwrap();
    // The peer may already have refused: the write may fail, the read decides.
    let _ = local.write_all(b"mutation for the wrong peer").await;
    let mut buf = [0u8; 64];
    match within("local close", local.read(&mut buf)).await {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("{n} bytes reached the node: {:?}", &buf[..n]),
    }
}

fn outbound_handshakes(m: &str, listener: &str, labels: &[(&str, &str)]) -> f64 {
    let mut all = vec![("direction", "outbound"), ("listener", listener)];
    all.extend_from_slice(labels);
    samples(m, "ringseal_handshakes_total", &all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_outbound_listeners_dial_with_their_own_identity_and_ca() {
    let p = TwoDcs::new().await;
    let dir = tempfile::tempdir().unwrap();
    p.write(dir.path());
    let config = two_outbound(p.cluster_peer.addr, p.dc2_peer.addr, DC2_TLS);
    let (mut proc, [outbound, dc2], metrics) = start_outbound(dir, &config, "dc2");

    // Each listener's peer trusts only its own CA and verifies the client certificate, so an echo
    // proves the listener presented a certificate of that CA and trusted the peer's.
    through(outbound, b"gossip").await;
    through(dc2, b"gossip to dc2").await;
    let tls13 = |subject: &str| Seen {
        subject: subject.to_owned(),
        protocol: "TLSv1.3",
    };
    assert_eq!(p.cluster_peer.seen(), [tls13(CLUSTER_NODE)]);
    assert_eq!(p.dc2_peer.seen(), [tls13(DC2_NODE)]);
    assert_eq!(p.cluster_peer.failed() + p.dc2_peer.failed(), 0);

    let m = scrape_until(metrics, |m| {
        outbound_handshakes(m, "dc2", &[("result", "ok")]) >= 1.0
    })
    .await;
    for listener in ["outbound", "dc2"] {
        let ok = outbound_handshakes(&m, listener, &[("result", "ok")]);
        assert_eq!(ok, 1.0, "{listener}: {m}");
        let refused = outbound_handshakes(&m, listener, &[("result", "refused")]);
        assert_eq!(refused, 0.0, "{listener}: {m}");
    }
    proc.check_alive().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_outbound_listener_refuses_the_other_listeners_peer() {
    let p = TwoDcs::new().await;
    let dir = tempfile::tempdir().unwrap();
    p.write(dir.path());
    // Crossed: the cluster's listener dials DC2's peer, DC2's listener the cluster's.
    let config = two_outbound(p.dc2_peer.addr, p.cluster_peer.addr, DC2_TLS);
    let (mut proc, [outbound, dc2], metrics) = start_outbound(dir, &config, "dc2");

    refused_through(outbound).await;
    refused_through(dc2).await;
    // The listener refused the peer's server certificate (its CA is not the listener's): the peer
    // saw a failed handshake and never a client certificate.
    p.dc2_peer.wait_failed(1).await;
    p.cluster_peer.wait_failed(1).await;
    assert_eq!(p.cluster_peer.seen(), []);
    assert_eq!(p.dc2_peer.seen(), []);

    let m = scrape_until(metrics, |m| {
        refusals(m, "outbound", "unknown_ca") >= 1.0 && refusals(m, "dc2", "unknown_ca") >= 1.0
    })
    .await;
    for listener in ["outbound", "dc2"] {
        let refused = outbound_handshakes(
            &m,
            listener,
            &[("result", "refused"), ("reason", "unknown_ca")],
        );
        assert_eq!(refused, 1.0, "{listener}: {m}");
        let ok = outbound_handshakes(&m, listener, &[("result", "ok")]);
        assert_eq!(ok, 0.0, "{listener}: {m}");
    }
    proc.check_alive().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_listener_that_only_narrows_protocols_keeps_the_inherited_identity_and_trust() {
    let p = TwoDcs::new().await;
    let dir = tempfile::tempdir().unwrap();
    p.write(dir.path());
    let peer = p.cluster_peer.addr;
    let config = format!(
        "{TLS_TABLE}\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n\
         [[outbound]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{peer}\"\n\n\
         [[outbound]]\nname = \"legacy\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{peer}\"\n\n\
         [outbound.tls]\nprotocols = [\"TLSv1.2\"]\n"
    );
    let (mut proc, [outbound, legacy], metrics) = start_outbound(dir, &config, "legacy");

    // The peer offers both versions: each listener's own `protocols` decides.
    through(outbound, b"modern").await;
    through(legacy, b"legacy").await;
    let seen = |protocol| Seen {
        subject: CLUSTER_NODE.to_owned(),
        protocol,
    };
    assert_eq!(p.cluster_peer.seen(), [seen("TLSv1.3"), seen("TLSv1.2")]);

    let m = scrape_until(metrics, |m| {
        outbound_handshakes(m, "legacy", &[("result", "ok")]) >= 1.0
    })
    .await;
    for (listener, protocol) in [("outbound", "TLSv1.3"), ("legacy", "TLSv1.2")] {
        let ok = outbound_handshakes(&m, listener, &[("result", "ok"), ("protocol", protocol)]);
        assert_eq!(ok, 1.0, "{listener}: {m}");
    }
    proc.check_alive().unwrap();
}
