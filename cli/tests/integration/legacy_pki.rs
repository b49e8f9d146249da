//! The PKI of the seed tutorial (shared/seeds/000, "Hardening Cassandra Step by Step"), made with its own
//! commands, verbatim: an openssl CA from `gen_ca_cert.conf`, keytool keystores and CSRs, openssl signing,
//! keytool imports of the CA and the signed replies, one shared truststore. Once with keytool's default
//! store type (PKCS#12 inside a `.jks` name on JDK 9+) and once with `-storetype JKS` (the real JKS of
//! JDK 8). With this machine's OpenSSL 3.0 the CA and node certificates are X.509 v1.
//!
//! Proven with two ringseal processes reading those files as they are: node2's outbound sidecar dials
//! node1's inbound sidecar, mutual TLS completes and bytes echo; v1 certificates are refused (our own at
//! start-up, a peer's at the handshake) unless `tls.accept_v1_certificates = true`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ringseal_testkit::process::{Proc, address_after};
use ringseal_testkit::tools::{have, sh};
use ringseal_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GEN_CA_CERT_CONF: &str = "[ req ]
distinguished_name     = req_distinguished_name
prompt                 = no
output_password        = mypass
default_bits           = 2048

[ req_distinguished_name ]
C                      = US
ST                     = TX
L                      = Austin
O                      = TLP
OU                     = TestCluster
CN                     = TestClusterMasterCA
emailAddress           = info@thelastpickle.com
";

/// The tutorial's commands for nodes 1 and 2, in its order. `{jks}` is empty for keytool's default store
/// type, or ` -storetype JKS`.
const COMMANDS: &[&str] = &[
    "openssl req -config gen_ca_cert.conf -new -x509 -keyout ca-key -out ca-cert -days 365",
    "keytool -genkeypair -keyalg RSA -alias node1 -keystore node1-server-keystore.jks -storepass awesomekeypass -keypass awesomekeypass -validity 365 -keysize 2048 -dname \"CN=node1, OU=SSL-verification-cluster, O=TheLastPickle, C=US\"{jks}",
    "keytool -genkeypair -keyalg RSA -alias node2 -keystore node2-server-keystore.jks -storepass awesomekeypass -keypass awesomekeypass -validity 365 -keysize 2048 -dname \"CN=node2, OU=SSL-verification-cluster, O=TheLastPickle, C=US\"{jks}",
    "keytool -keystore node1-server-keystore.jks -alias node1 -certreq -file node1_cert_sr -keypass awesomekeypass -storepass awesomekeypass",
    "keytool -keystore node2-server-keystore.jks -alias node2 -certreq -file node2_cert_sr -keypass awesomekeypass -storepass awesomekeypass",
    "openssl x509 -req -CA ca-cert -CAkey ca-key -in node1_cert_sr -out node1_cert_signed -days 365 -CAcreateserial -passin pass:mypass",
    "openssl x509 -req -CA ca-cert -CAkey ca-key -in node2_cert_sr -out node2_cert_signed -days 365 -CAcreateserial -passin pass:mypass",
    "keytool -keystore node1-server-keystore.jks -alias CARoot -import -file ca-cert -noprompt -keypass awesomekeypass -storepass awesomekeypass",
    "keytool -keystore node2-server-keystore.jks -alias CARoot -import -file ca-cert -noprompt -keypass awesomekeypass -storepass awesomekeypass",
    "keytool -keystore node1-server-keystore.jks -alias node1 -import -file node1_cert_signed -keypass awesomekeypass -storepass awesomekeypass",
    "keytool -keystore node2-server-keystore.jks -alias node2 -import -file node2_cert_signed -keypass awesomekeypass -storepass awesomekeypass",
    "keytool -keystore generic-server-truststore.jks -alias CARoot -importcert -file ca-cert -keypass mypass -storepass truststorepass -noprompt{jks}",
];

/// Runs the tutorial in a new directory; `jks`: with `-storetype JKS`.
fn tutorial(jks: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gen_ca_cert.conf"), GEN_CA_CERT_CONF).unwrap();
    for command in COMMANDS {
        sh(
            dir.path(),
            &command.replace("{jks}", if jks { " -storetype JKS" } else { "" }),
        );
    }
    // What the tutorial produced on this machine: v1 certificates, and the store type asked for.
    for cert in ["ca-cert", "node1_cert_signed"] {
        let text = sh(dir.path(), &format!("openssl x509 -in {cert} -noout -text"));
        assert!(
            String::from_utf8_lossy(&text.stdout).contains("Version: 1 (0x0)"),
            "{cert} is expected to be X.509 v1 with this OpenSSL"
        );
    }
    let magic = std::fs::read(dir.path().join("node1-server-keystore.jks")).unwrap();
    assert_eq!(
        magic.starts_with(&[0xfe, 0xed, 0xfe, 0xed]),
        jks,
        "store type"
    );
    dir
}

fn write_config(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path
}

/// node1's keystore (password inline) and the shared truststore, for an inbound sidecar.
fn node1_tls(accept_v1: bool) -> String {
    format!(
        "[tls]\nkeystore = \"node1-server-keystore.jks\"\nkeystore_password = \"awesomekeypass\"\n\
         truststore = \"generic-server-truststore.jks\"\ntruststore_password = \"truststorepass\"\n\
         accept_v1_certificates = {accept_v1}\n"
    )
}

fn check(config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringseal"))
        .args(["check", "--config"])
        .arg(config)
        .output()
        .unwrap()
}

/// A copy of `dir` (configs point at the tutorial's files by relative name).
fn copy_dir(dir: &Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if !entry.file_type().unwrap().is_file() {
            continue;
        }
        std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
    }
    copy
}

async fn seed_pki_runs_mutual_tls(jks: bool) {
    if !have(&["openssl", "keytool"]) {
        return;
    }
    let files = tutorial(jks);
    let backend = Backend::start(Mode::Echo).await;

    // Our own v1 certificate with the option off: refused before any port is bound, naming both fixes.
    let refused = write_config(
        files.path(),
        "refused.toml",
        &format!(
            "{}\n[[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"{}\"\n",
            node1_tls(false),
            backend.addr
        ),
    );
    let out = check(&refused);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    for want in [
        "tls.keystore",
        "node1-server-keystore.jks",
        "X.509 v1",
        "tls.accept_v1_certificates = true",
        "ringseal certs node",
    ] {
        assert!(stderr.contains(want), "{want:?} missing in: {stderr}");
    }
    assert!(
        !stderr.contains("awesomekeypass"),
        "password in a message: {stderr}"
    );

    // node1: inbound, keystore password inline.
    let a_dir = copy_dir(files.path());
    let a_config = write_config(
        a_dir.path(),
        "ringseal.toml",
        &format!(
            "{}\n[[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"{}\"\n",
            node1_tls(true),
            backend.addr
        ),
    );
    let mut a = Proc::spawn(&[], &a_config, a_dir);
    let a_addr = address_after(&a.wait_for("listener on"), "listener on ");
    // What `check` warns about is logged at start-up too.
    assert!(
        a.seen
            .iter()
            .any(|l| l.contains("WARN") && l.contains("is an X.509 v1 certificate")),
        "{}",
        a.seen.join("\n")
    );

    // node2: outbound to node1, keystore password from a file, truststore password from the environment.
    let b_dir = copy_dir(files.path());
    std::fs::write(b_dir.path().join("keystore.password"), "awesomekeypass\n").unwrap();
    let b_config = write_config(
        b_dir.path(),
        "ringseal.toml",
        &format!(
            "[tls]\nkeystore = \"node2-server-keystore.jks\"\nkeystore_password_file = \"keystore.password\"\n\
             truststore = \"generic-server-truststore.jks\"\ntruststore_password_env = \"SEED_TRUSTSTORE_PASSWORD\"\n\
             accept_v1_certificates = true\n\n\
             [[outbound]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{a_addr}\"\n"
        ),
    );
    let mut b = Proc::spawn_with(
        &[],
        &b_config,
        b_dir,
        &[("SEED_TRUSTSTORE_PASSWORD", "truststorepass")],
    );
    let b_addr = address_after(&b.wait_for("listener on"), "listener on ");

    // Plaintext into node2's sidecar, mutual TLS between the sidecars, plaintext out of node1's.
    let mut s = within("connect", tokio::net::TcpStream::connect(b_addr))
        .await
        .unwrap();
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    s.write_all(&payload).await.unwrap();
    let mut back = vec![0u8; payload.len()];
    within("echo", s.read_exact(&mut back)).await.unwrap();
    assert_eq!(back, payload);
    drop(s);
    assert_eq!(backend.accepted(), 1);

    for p in [&mut a, &mut b] {
        let lines = p.drain(std::time::Duration::from_millis(200)).join("\n");
        assert!(
            !lines.contains("awesomekeypass") && !lines.contains("truststorepass"),
            "{lines}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_tutorial_pki_with_keytool_default_store_type() {
    seed_pki_runs_mutual_tls(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_tutorial_pki_with_storetype_jks() {
    seed_pki_runs_mutual_tls(true).await;
}

/// A node with a proper v3 certificate (issued by `ringseal certs node` from the tutorial's CA) and the
/// option off refuses a peer's v1 certificate at the handshake, and the warning names both remedies; with
/// the option on, the same peer gets through.
#[tokio::test(flavor = "multi_thread")]
async fn peer_v1_certificate_refused_unless_accepted() {
    if !have(&["openssl", "keytool"]) {
        return;
    }
    let files = tutorial(false);
    let dir = files.path();
    // The tutorial's CA as a `ringseal certs` CA directory (its key decrypted with the tutorial's password).
    std::fs::create_dir(dir.join("ca")).unwrap();
    std::fs::copy(dir.join("ca-cert"), dir.join("ca/ca.crt")).unwrap();
    sh(
        dir,
        "openssl pkey -in ca-key -passin pass:mypass -out ca/ca.key",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_ringseal"))
        .args([
            "certs",
            "node",
            "--ca",
            "ca",
            "--name",
            "node3",
            "--ip",
            "127.0.0.1",
            "--out",
            "node3",
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let backend = Backend::start(Mode::Echo).await;
    let start_a = |accept_v1: bool| {
        let a_dir = copy_dir(dir);
        std::fs::create_dir(a_dir.path().join("node3")).unwrap();
        for f in ["node3.crt", "node3.key"] {
            std::fs::copy(
                dir.join("node3").join(f),
                a_dir.path().join("node3").join(f),
            )
            .unwrap();
        }
        let config = write_config(
            a_dir.path(),
            "ringseal.toml",
            &format!(
                "[tls]\ncert = \"node3/node3.crt\"\nkey = \"node3/node3.key\"\n\
                 truststore = \"generic-server-truststore.jks\"\ntruststore_password = \"truststorepass\"\n\
                 accept_v1_certificates = {accept_v1}\n\n\
                 [[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"{}\"\n",
                backend.addr
            ),
        );
        let mut a = Proc::spawn(&[], &config, a_dir);
        let addr = address_after(&a.wait_for("listener on"), "listener on ");
        (a, addr)
    };
    let start_b = |upstream: std::net::SocketAddr| {
        let b_dir = copy_dir(dir);
        let config = write_config(
            b_dir.path(),
            "ringseal.toml",
            &format!(
                "[tls]\nkeystore = \"node1-server-keystore.jks\"\nkeystore_password = \"awesomekeypass\"\n\
                 truststore = \"generic-server-truststore.jks\"\ntruststore_password = \"truststorepass\"\n\
                 accept_v1_certificates = true\n\n\
                 [[outbound]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n"
            ),
        );
        let mut b = Proc::spawn(&[], &config, b_dir);
        let addr = address_after(&b.wait_for("listener on"), "listener on ");
        (b, addr)
    };

    let (mut strict, strict_addr) = start_a(false);
    let (_b, b_addr) = start_b(strict_addr);
    let mut s = tokio::net::TcpStream::connect(b_addr).await.unwrap();
    let _ = s.write_all(b"hello").await;
    let mut buf = [0u8; 16];
    let n = within("refused", s.read(&mut buf)).await.unwrap_or(0);
    assert_eq!(n, 0, "the v1 peer must not get an echo");
    let line = strict.wait_for("refused");
    for want in [
        "X.509 v1",
        "node1",
        "tls.accept_v1_certificates = true",
        "ringseal certs node",
    ] {
        assert!(line.contains(want), "{want:?} missing in: {line}");
    }
    assert_eq!(backend.accepted(), 0, "nothing may reach the storage port");

    let (_lenient, lenient_addr) = start_a(true);
    let (_b2, b2_addr) = start_b(lenient_addr);
    let mut s = tokio::net::TcpStream::connect(b2_addr).await.unwrap();
    s.write_all(b"hello").await.unwrap();
    within("echo", s.read_exact(&mut buf[..5])).await.unwrap();
    assert_eq!(&buf[..5], b"hello");
}

/// The tutorial's own `server_encryption_options` (its cassandra.yaml snippet, paths adjusted) is all
/// ringseal needs: `--cassandra-yaml` derives keystore, truststore, passwords and store type; the
/// tutorial's CBC suite and `algorithm` are named in warnings; a small `--config` adds only what the
/// yaml cannot say (loopback test ports, accepting the tutorial's v1 certificates).
#[tokio::test(flavor = "multi_thread")]
async fn seed_tutorial_cassandra_yaml_runs_as_is() {
    if !have(&["openssl", "keytool"]) {
        return;
    }
    let files = tutorial(true);
    let backend = Backend::start(Mode::Echo).await;
    let yaml = |dir: &Path, node: &str| {
        let text = format!(
            "cluster_name: 'sslverify'\nnum_tokens: 256\nlisten_address: 127.0.0.1\n\
             storage_port: 7000\nssl_storage_port: 7001\n\
             endpoint_snitch: SimpleSnitch\n\
             server_encryption_options:\n\
             \x20 internode_encryption: all\n\
             \x20 keystore: {dir}/{node}-server-keystore.jks\n\
             \x20 keystore_password: awesomekeypass\n\
             \x20 truststore: {dir}/generic-server-truststore.jks\n\
             \x20 truststore_password: truststorepass\n\
             \x20 protocol: TLS\n\
             \x20 algorithm: SunX509\n\
             \x20 store_type: JKS\n\
             \x20 cipher_suites: [TLS_RSA_WITH_AES_256_CBC_SHA]\n\
             \x20 require_client_auth: true\n",
            dir = dir.display()
        );
        let path = dir.join(format!("{node}-cassandra.yaml"));
        std::fs::write(&path, text).unwrap();
        path
    };

    // `check` prints the derived config (passwords redacted) and names what it cannot honour.
    let a_dir = copy_dir(files.path());
    let a_yaml = yaml(a_dir.path(), "node1");
    let overrides = write_config(
        a_dir.path(),
        "overrides.toml",
        &format!(
            "[tls]\naccept_v1_certificates = true\n\n\
             [[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"{}\"\n",
            backend.addr
        ),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_ringseal"))
        .args(["check", "--cassandra-yaml"])
        .arg(&a_yaml)
        .arg("--config")
        .arg(&overrides)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    for want in [
        "node1-server-keystore.jks",
        "generic-server-truststore.jks",
        "cluster_name = \"sslverify\"",
        "algorithm",
        "TLS_RSA_WITH_AES_256_CBC_SHA",
        "X.509 v1",
    ] {
        assert!(text.contains(want), "{want:?} missing in:\n{text}");
    }
    assert!(
        !text.contains("awesomekeypass") && !text.contains("truststorepass"),
        "{text}"
    );

    // node1 inbound and node2 outbound, both from their cassandra.yaml.
    let mut a = spawn_yaml(&a_yaml, &overrides, a_dir);
    let a_addr = address_after(&a.wait_for("listener on"), "listener on ");
    let b_dir = copy_dir(files.path());
    let b_yaml = yaml(b_dir.path(), "node2");
    let b_overrides = write_config(
        b_dir.path(),
        "overrides.toml",
        &format!(
            "[tls]\naccept_v1_certificates = true\n\n\
             [[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"{}\"\n\n\
             [[outbound]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{a_addr}\"\n",
            backend.addr
        ),
    );
    let mut b = spawn_yaml(&b_yaml, &b_overrides, b_dir);
    let b_out = address_after(&b.wait_for("starting outbound listener"), "listener on ");
    let mut s = within("connect", tokio::net::TcpStream::connect(b_out))
        .await
        .unwrap();
    s.write_all(b"gossip").await.unwrap();
    let mut back = [0u8; 6];
    within("echo", s.read_exact(&mut back)).await.unwrap();
    assert_eq!(&back, b"gossip");
    let lines = b.drain(std::time::Duration::from_millis(100)).join("\n");
    assert!(lines.contains("cassandra.yaml"), "{lines}");
}

/// `ringseal run --cassandra-yaml Y --config C`, stderr collected like [`Proc::spawn`].
fn spawn_yaml(yaml: &Path, config: &Path, dir: tempfile::TempDir) -> Proc {
    Proc::spawn_args(&["--cassandra-yaml", yaml.to_str().unwrap()], config, dir)
}
