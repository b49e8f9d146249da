//! A real CQL driver through ringseal's client listener: PyPI's `cassandra-driver` (CI installs it into
//! `target/cql-venv`, see .ci/run) connects with an `ssl_context` to an `[[inbound]]` named "client"
//! whose `[inbound.tls]` has its own server certificate from a CA other than the cluster's, with
//! optional client certificates, in front of a CQL stub ([`ringseal_testkit::cql`]); the same process
//! also runs the internode listener with the cluster CA. The driver gets its answer; a driver trusting
//! the cluster CA instead is refused; a driver presenting a certificate of the wrong CA is refused
//! (optional still verifies what is sent); a driver without TLS is refused as `not_tls`, and the log
//! names a plaintext CQL client and the fix.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use ringseal_testkit::Pki;
use ringseal_testkit::cql::{CqlStub, RELEASE_VERSION};
use ringseal_testkit::process::{Proc, address_after};
use ringseal_testkit::scrape::{samples, scrape};

/// Connects with the driver and runs one query; prints `release_version=...` or `refused: ...`.
const DRIVER: &str = r#"
import ssl, sys
from cassandra.cluster import Cluster, NoHostAvailable

host, port, ca, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
options = dict(contact_points=[host], port=port, protocol_version=4, connect_timeout=10,
               control_connection_timeout=10, schema_metadata_enabled=False,
               token_metadata_enabled=False)
if ca:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(ca)
    if cert:
        context.load_cert_chain(cert, key)
    options["ssl_context"] = context
cluster = Cluster(**options)
try:
    session = cluster.connect()
    row = session.execute("SELECT release_version FROM system.local").one()
    print("release_version=" + row.release_version, flush=True)
except NoHostAvailable as e:
    print("refused: " + repr(e), flush=True)
    sys.exit(3)
finally:
    cluster.shutdown()
"#;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The venv's Python with cassandra-driver; `None` (skip) outside CI without it.
fn driver_python() -> Option<PathBuf> {
    let python = root().join("target/cql-venv/bin/python");
    let installed = python.is_file()
        && Command::new(&python)
            .args(["-c", "import cassandra.cluster"])
            .output()
            .is_ok_and(|o| o.status.success());
    if installed {
        return Some(python);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "cassandra-driver is required in CI (.ci/run installs it into target/cql-venv)"
    );
    eprintln!(
        "skipping: the Python cassandra-driver is not installed (python3 -m venv target/cql-venv && \
         CASS_DRIVER_NO_CYTHON=1 target/cql-venv/bin/pip install cassandra-driver==3.30.1)"
    );
    None
}

/// Runs the driver script against `addr`; (succeeded, its output).
fn drive(python: &Path, script: &Path, addr: SocketAddr, tls: [&Path; 3]) -> (bool, String) {
    let out = Command::new(python)
        .arg(script)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .args(tls)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn refused(metrics: SocketAddr, reason: &str) -> f64 {
    samples(
        &scrape(metrics),
        "ringseal_handshakes_total",
        &[
            ("direction", "inbound"),
            ("listener", "client"),
            ("result", "refused"),
            ("reason", reason),
        ],
    )
}

#[test]
fn python_driver_through_the_client_listener() {
    let Some(python) = driver_python() else {
        return;
    };
    let stub = CqlStub::start();
    let cluster = Pki::new_named("Payments Prod");
    let clients = Pki::new_named("CQL Clients");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    cluster.write(d);
    let client_files = clients.write_files(&d.join("clients")).unwrap();
    // A driver certificate from the clients' CA, and one from the cluster CA (valid for internode,
    // not for CQL clients).
    let good = clients.issue("reporting", &[]);
    let wrong = cluster.issue("reporting", &[]);
    for (name, id) in [("good", &good), ("wrong", &wrong)] {
        std::fs::write(d.join(format!("{name}.crt")), &id.cert_pem).unwrap();
        std::fs::write(d.join(format!("{name}.key")), &id.key_pem).unwrap();
    }
    let script = d.join("driver.py");
    std::fs::write(&script, DRIVER).unwrap();
    let config = d.join("ringseal.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"127.0.0.1:9\"\n\n\
             [[inbound]]\nname = \"client\"\nlisten = \"127.0.0.1:0\"\nforward = \"{}\"\n\
             [inbound.tls]\ncert = \"clients/node.crt\"\nkey = \"clients/node.key\"\n\
             ca = \"clients/ca.crt\"\nrequire_client_auth = \"optional\"\n\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n",
            ringseal_testkit::TLS_TABLE,
            stub.addr
        ),
    )
    .unwrap();
    let mut proc = Proc::spawn(&[], &config, dir);
    let metrics = address_after(&proc.wait_for("serving metrics on"), "serving metrics on ");
    let internode = address_after(
        &proc.wait_for("starting inbound mTLS listener on"),
        "listener on ",
    );
    let client = address_after(
        &proc.wait_for("starting inbound mTLS listener on"),
        "listener on ",
    );
    assert_ne!(internode, client);
    let none = PathBuf::new();
    let base = client_files.dir.parent().unwrap().to_owned();
    let files = |name: &str| {
        (
            base.join(format!("{name}.crt")),
            base.join(format!("{name}.key")),
        )
    };

    // TLS, the clients' CA, no client certificate: served.
    let (ok, out) = drive(&python, &script, client, [&client_files.ca, &none, &none]);
    assert!(
        ok,
        "the driver through the client listener: {out}\n{}",
        proc.tail()
    );
    assert!(
        out.contains(&format!("release_version={RELEASE_VERSION}")),
        "{out}"
    );
    assert!(stub.queries() >= 1);

    // A client certificate from the clients' CA: verified and served.
    let (crt, key) = files("good");
    let (ok, out) = drive(&python, &script, client, [&client_files.ca, &crt, &key]);
    assert!(ok, "a driver with a valid client certificate: {out}");

    // A client certificate from the cluster CA: optional still verifies it, refused.
    let before = refused(metrics, "unknown_ca");
    let (crt, key) = files("wrong");
    let (ok, out) = drive(&python, &script, client, [&client_files.ca, &crt, &key]);
    assert!(!ok && out.contains("refused:"), "{out}");
    proc.wait_for("reason=\"unknown_ca\"");
    assert!(refused(metrics, "unknown_ca") > before);

    // Trusting the cluster CA: the client listener's certificate is not from it.
    let cluster_ca = base.join("ca.crt");
    let before = refused(metrics, "peer_alert");
    let (ok, out) = drive(&python, &script, client, [&cluster_ca, &none, &none]);
    assert!(!ok && out.contains("certificate verify failed"), "{out}");
    proc.wait_for("reason=\"peer_alert\"");
    assert!(refused(metrics, "peer_alert") > before);

    // No TLS at all: refused as not_tls, and the log names a plaintext CQL client and the fix.
    let before = refused(metrics, "not_tls");
    let (ok, out) = drive(&python, &script, client, [&none, &none, &none]);
    assert!(!ok && out.contains("refused:"), "{out}");
    let line = proc.wait_for("a plaintext CQL client");
    assert!(
        line.contains("reason=\"not_tls\"") || line.contains("reason=not_tls"),
        "{line}"
    );
    assert!(
        line.contains(&client.to_string()),
        "names the address: {line}"
    );
    assert!(
        line.contains("listener=\"client\"") || line.contains("listener=client"),
        "names the listener: {line}"
    );
    assert!(line.contains("ssl_context"), "names the fix: {line}");
    assert!(refused(metrics, "not_tls") > before);
    // Every handshake was the client listener's: the internode one saw none.
    let exposition = scrape(metrics);
    let internode = [("direction", "inbound"), ("listener", "internode")];
    assert_eq!(
        samples(&exposition, "ringseal_handshakes_total", &internode),
        0.0
    );
    let client = [("listener", "client"), ("result", "ok")];
    assert!(samples(&exposition, "ringseal_handshakes_total", &client) >= 2.0);
}
