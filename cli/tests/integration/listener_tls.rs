//! Per-listener TLS policy through the real binary (issue 16): two inbound listeners of one process
//! with their own CA and identity (`[inbound.tls]`), each refusing the other's client certificates;
//! client auth "optional" and false; a per-listener keystore with a wrong password; a reload that
//! breaks one listener's material and keeps it on its old material while the other takes its new one.
//! Each of these configs is refused by a build without per-listener policies (unknown `name`/`tls`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use ringseal::pki::{Ca, Identity, NodeSpec};
use ringseal::tls::x509::CertInfo;
use ringseal_testkit::process::{Proc, address_after};
use ringseal_testkit::*;
use rustls::RootCertStore;

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
        presented(&node, internode).await,
        "CN=node1, OU=TestCluster"
    );
    assert_eq!(
        presented(&driver, client_port).await,
        "CN=cql-node1, OU=Clients"
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
        presented(&node, internode).await,
        "CN=node1, OU=TestCluster"
    );
    assert_eq!(
        presented(&driver, client_port).await,
        "CN=cql-node1, OU=Clients"
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
        presented(&node, internode).await,
        "CN=node1-renewed, OU=TestCluster"
    );
    assert_eq!(
        presented(&driver, client_port).await,
        "CN=cql-node1, OU=Clients"
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
