//! Keystores and truststores as `[tls]` reads them, made by the tools clusters use (keytool on JDK 17,
//! `openssl pkcs12`, `ringseal certs`), through `ringseal check` (the same loading as `run`): the formats
//! that must work, and the bad inputs that must fail with one precise line naming the file and the fix —
//! never a panic, never a password in the output.

use std::path::PathBuf;
use std::process::Command;

use ringseal_testkit::tools::{have, run, sh};
use ringseal_testkit::*;

/// The files of one test: a `ringseal certs` CA with node1 and node2, and keytool stores made from them.
struct Stores {
    dir: tempfile::TempDir,
}

impl Stores {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let bin = env!("CARGO_BIN_EXE_ringseal");
        std::fs::write(d.join("p12.password"), "storepass1").unwrap();
        run(
            d,
            bin,
            &[
                "certs",
                "ca",
                "--cluster-name",
                "TestCluster",
                "--out",
                "ca",
            ],
        );
        for (name, ip) in [("node1", "127.0.0.1"), ("node2", "127.0.0.2")] {
            run(
                d,
                bin,
                &[
                    "certs",
                    "node",
                    "--ca",
                    "ca",
                    "--name",
                    name,
                    "--ip",
                    ip,
                    "--out",
                    name,
                    "--p12-password-file",
                    "p12.password",
                ],
            );
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn sh(&self, command: &str) {
        sh(self.dir.path(), command);
    }

    /// `keytool -importkeystore` of `node`'s PKCS#12 (from `ringseal certs`) into `dest` (added to it
    /// when it exists), as `storetype`, keeping the alias and the password.
    fn convert(&self, node: &str, dest: &str, storetype: &str) {
        self.sh(&format!(
            "keytool -importkeystore -noprompt -srckeystore {node}/{node}.p12 -srcstoretype PKCS12 \
             -srcstorepass storepass1 -srcalias {node} -destkeystore {dest} -deststoretype {storetype} \
             -deststorepass storepass1 -destalias {node}"
        ));
    }

    /// `ringseal check` on a config with this `[tls]` body and one inbound listener.
    fn check(&self, tls: &str) -> (Option<i32>, String, String) {
        self.check_env(tls, &[])
    }

    fn check_env(&self, tls: &str, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
        let config = self.path("ringseal.toml");
        std::fs::write(
            &config,
            format!("[tls]\n{tls}\n\n[[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"127.0.0.1:7000\"\n"),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_ringseal"))
            .args(["check", "--config"])
            .arg(&config)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Expects `check` to fail with exit 64 and one line containing every `want`, and no password.
    fn refused(&self, tls: &str, want: &[&str]) {
        let (code, stdout, stderr) = self.check(tls);
        assert_eq!(code, Some(64), "stdout:\n{stdout}\nstderr:\n{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
        for w in want {
            assert!(stderr.contains(w), "{w:?} missing in: {stderr}");
        }
        for secret in ["storepass1", "wrongpass9", "trustpass7"] {
            assert!(!stderr.contains(secret), "a password leaked: {stderr}");
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
    }

    fn accepted(&self, tls: &str) -> String {
        let (code, stdout, stderr) = self.check(tls);
        assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
        stdout
    }
}

/// A truststore made by keytool (JDK 17, PKCS#12) holding the cluster CA as a trusted entry.
fn keytool_truststore(s: &Stores, name: &str, storetype: &str) {
    s.sh(&format!(
        "keytool -importcert -noprompt -alias ca -file ca/ca.crt -keystore {name} \
         -storepass trustpass7 -storetype {storetype}"
    ));
}

#[test]
fn formats_that_clusters_use_are_read() {
    if !have(&["openssl", "keytool"]) {
        return;
    }
    let s = Stores::new();
    keytool_truststore(&s, "trust.p12", "PKCS12");
    keytool_truststore(&s, "trust.jks", "JKS");
    let trust_p12 = "truststore = \"trust.p12\"\ntruststore_password = \"trustpass7\"";

    // The PKCS#12 `ringseal certs` writes (keytool reads it, see cli/tests/integration/certs.rs).
    let out = s.accepted(&format!(
        "keystore = \"node1/node1.p12\"\nkeystore_password = \"storepass1\"\n{trust_p12}"
    ));
    assert!(out.contains("CN=node1"), "{out}");
    // keytool -importkeystore to JKS and to PKCS#12 (JDK 17: AES-256/PBES2).
    for (file, storetype) in [("node1.jks", "JKS"), ("node1-keytool.p12", "PKCS12")] {
        s.convert("node1", file, storetype);
        let out = s.accepted(&format!(
            "keystore = \"{file}\"\nkeystore_password = \"storepass1\"\n\
             truststore = \"trust.jks\"\ntruststore_password = \"trustpass7\""
        ));
        assert!(out.contains("CN=node1"), "{file}: {out}");
    }
    // openssl's legacy PKCS#12 (3DES + RC2), as older tooling writes it.
    s.sh(
        "openssl pkcs12 -export -legacy -in node1/node1.crt -inkey node1/node1.key \
         -out legacy.p12 -passout pass:storepass1 -name node1",
    );
    s.accepted(&format!(
        "keystore = \"legacy.p12\"\nkeystore_password = \"storepass1\"\n{trust_p12}"
    ));
    // A truststore made by openssl (no Java trust attribute): its certificates are the trust.
    s.sh("openssl pkcs12 -export -nokeys -in ca/ca.crt -out openssl-trust.p12 -passout pass:trustpass7");
    s.accepted(
        "cert = \"node1/node1.crt\"\nkey = \"node1/node1.key\"\n\
         truststore = \"openssl-trust.p12\"\ntruststore_password = \"trustpass7\"",
    );
    // PEM keystore (Cassandra 4.1+ PEMBasedSslContextFactory): key and chain in one file; stated type
    // in Cassandra's spelling.
    s.sh("cat node1/node1.key node1/node1.crt > node1-bundle.pem");
    s.accepted(
        "keystore = \"node1-bundle.pem\"\nkeystore_type = \"PEM\"\n\
         truststore = \"ca/ca.crt\"\ntruststore_type = \"PEM\"",
    );
    // Passwords from a file (first line, newline ignored) and from the environment.
    std::fs::write(s.path("store.password"), "storepass1\n").unwrap();
    let (code, _, stderr) = s.check_env(
        "keystore = \"node1/node1.p12\"\nkeystore_password_file = \"store.password\"\n\
         truststore = \"trust.p12\"\ntruststore_password_env = \"TRUST_PW\"",
        &[("TRUST_PW", "trustpass7")],
    );
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn wrong_password_names_the_file_and_the_key() {
    if !have(&["openssl", "keytool"]) {
        return;
    }
    let s = Stores::new();
    keytool_truststore(&s, "trust.jks", "JKS");
    s.convert("node1", "node1.jks", "JKS");
    let trust = "truststore = \"trust.jks\"\ntruststore_password = \"trustpass7\"";
    for (file, what) in [("node1/node1.p12", "PKCS#12"), ("node1.jks", "JKS")] {
        s.refused(
            &format!("keystore = \"{file}\"\nkeystore_password = \"wrongpass9\"\n{trust}"),
            &[
                "tls.keystore",
                file,
                "wrong password",
                &format!("the {what} integrity check failed"),
                "tls.keystore_password",
            ],
        );
    }
    s.refused(
        "keystore = \"node1.jks\"\nkeystore_password = \"storepass1\"\n\
         truststore = \"trust.jks\"\ntruststore_password = \"wrongpass9\"",
        &[
            "tls.truststore",
            "trust.jks",
            "wrong password",
            "tls.truststore_password",
        ],
    );
}

#[test]
fn truncated_and_corrupt_keystores_are_refused() {
    if !have(&["openssl", "keytool"]) {
        return;
    }
    let s = Stores::new();
    s.convert("node1", "node1.jks", "JKS");
    for file in ["node1/node1.p12", "node1.jks"] {
        let bytes = std::fs::read(s.path(file)).unwrap();
        for (name, damaged) in [
            ("half.bin", bytes[..bytes.len() / 2].to_vec()),
            ("head.bin", bytes[..40].to_vec()),
            ("flipped.bin", {
                let mut b = bytes.clone();
                let i = b.len() / 3;
                b[i] ^= 0x5a;
                b
            }),
        ] {
            std::fs::write(s.path(name), damaged).unwrap();
            s.refused(
                &format!(
                    "keystore = \"{name}\"\nkeystore_password = \"storepass1\"\nca = \"ca/ca.crt\""
                ),
                &["tls.keystore", name],
            );
        }
    }
    // A JCEKS store: refused with the conversion command.
    s.convert("node1", "node1.jceks", "JCEKS");
    s.refused(
        "keystore = \"node1.jceks\"\nkeystore_password = \"storepass1\"\nca = \"ca/ca.crt\"",
        &[
            "JCEKS keystores are not supported",
            "keytool -importkeystore",
            "-deststoretype PKCS12",
        ],
    );
}

#[test]
fn keystore_entries_no_key_several_keys_alias() {
    if !have(&["openssl", "keytool"]) {
        return;
    }
    let s = Stores::new();
    // A truststore given as keystore: no private key.
    keytool_truststore(&s, "trust.p12", "PKCS12");
    s.refused(
        "keystore = \"trust.p12\"\nkeystore_password = \"trustpass7\"\nca = \"ca/ca.crt\"",
        &["tls.keystore", "trust.p12", "holds no private key entry"],
    );
    // Two key entries: an alias is needed, and picks the right one.
    for (store, alias) in [("both.p12", "PKCS12"), ("both.jks", "JKS")] {
        for node in ["node1", "node2"] {
            s.convert(node, store, alias);
        }
        let base = format!(
            "keystore = \"{store}\"\nkeystore_password = \"storepass1\"\nca = \"ca/ca.crt\""
        );
        s.refused(
            &base,
            &[
                "holds 2 private key entries",
                "\"node1\"",
                "\"node2\"",
                "tls.keystore_alias",
            ],
        );
        let out = s.accepted(&format!("{base}\nkeystore_alias = \"node2\""));
        assert!(out.contains("CN=node2"), "{store}: {out}");
        s.refused(
            &format!("{base}\nkeystore_alias = \"node9\""),
            &["tls.keystore_alias = \"node9\" names no private key entry"],
        );
    }
}

#[test]
fn empty_truststore_key_mismatch_expired_ca() {
    if !have(&["openssl", "keytool"]) {
        return;
    }
    let s = Stores::new();
    // A keystore holding only a key entry, given as truststore: no trusted certificate.
    s.sh(
        "keytool -genkeypair -keyalg EC -alias lonely -dname CN=lonely -keystore lonely.p12 \
         -storetype PKCS12 -storepass trustpass7 -validity 30",
    );
    s.refused(
        "cert = \"node1/node1.crt\"\nkey = \"node1/node1.key\"\n\
         truststore = \"lonely.p12\"\ntruststore_password = \"trustpass7\"",
        &[
            "tls.truststore",
            "lonely.p12",
            "holds no trusted certificate",
            "keytool -importcert",
        ],
    );
    // A PEM keystore whose key belongs to another certificate.
    s.sh("cat node2/node2.key node1/node1.crt > mismatch.pem");
    s.refused(
        "keystore = \"mismatch.pem\"\nca = \"ca/ca.crt\"",
        &[
            "tls.keystore",
            "mismatch.pem",
            "does not match its certificate",
        ],
    );
    // Every trusted CA expired: no peer could ever be verified.
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "OldCA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let old = params
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap();
    std::fs::write(s.path("old-ca.crt"), old.pem()).unwrap();
    s.refused(
        "cert = \"node1/node1.crt\"\nkey = \"node1/node1.key\"\nca = \"old-ca.crt\"",
        &["tls.ca", "old-ca.crt", "CN=OldCA", "expired"],
    );
}

/// `tls.outbound_keystore`: outbound connections present that identity, inbound ones ours. Proven by an
/// inbound sidecar whose allow-list admits only the outbound identity's CN.
#[tokio::test(flavor = "multi_thread")]
async fn outbound_keystore_is_the_client_certificate() {
    use ringseal_testkit::process::{Proc, address_after};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if !have(&["openssl", "keytool"]) {
        return;
    }
    let s = Stores::new();
    let backend = Backend::start(Mode::Echo).await;
    let start = |name: &str, body: String| {
        let dir = tempfile::tempdir().unwrap();
        s.sh(&format!("cp -r ca node1 node2 {}/", dir.path().display()));
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(&config, body).unwrap();
        let mut p = Proc::spawn(&[], &config, dir);
        let addr = address_after(&p.wait_for("listener on"), "listener on ");
        (p, addr)
    };
    let inbound = |cn: &str| {
        format!(
            "[tls]\ncert = \"node1/node1.crt\"\nkey = \"node1/node1.key\"\nca = \"ca/ca.crt\"\n\n\
             [[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"{}\"\nallow = {{ cn = [\"{cn}\"] }}\n",
            backend.addr
        )
    };
    let outbound = |upstream: std::net::SocketAddr| {
        format!(
            "[tls]\nkeystore = \"node1/node1.p12\"\nkeystore_password = \"storepass1\"\n\
             outbound_keystore = \"node2/node2.p12\"\noutbound_keystore_password_file = \"../p12.password\"\n\
             ca = \"ca/ca.crt\"\n\n[[outbound]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n"
        )
        .replace("../p12.password", &s.path("p12.password").display().to_string())
    };
    let echo_through = |addr: std::net::SocketAddr| async move {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = c.write_all(b"ping").await;
        let mut buf = [0u8; 4];
        within("echo", c.read_exact(&mut buf)).await.is_ok() && &buf == b"ping"
    };

    let (_a, a_addr) = start("a", inbound("node2"));
    let (_b, b_addr) = start("b", outbound(a_addr));
    assert!(
        echo_through(b_addr).await,
        "node2's certificate must be presented"
    );

    let (mut a2, a2_addr) = start("a2", inbound("node1"));
    let (_b2, b2_addr) = start("b2", outbound(a2_addr));
    assert!(
        !echo_through(b2_addr).await,
        "node1's certificate must not be presented outbound"
    );
    let line = a2.wait_for("refused");
    assert!(line.contains("CN=node2"), "{line}");
    assert_eq!(backend.accepted(), 1);
}

/// A keystore and its password file are watched like PEM files: SIGHUP after replacing both loads the
/// new identity for new handshakes; a replacement with the wrong password keeps the old identity.
#[tokio::test(flavor = "multi_thread")]
async fn keystore_reload_swaps_identity_and_keeps_it_on_a_wrong_password() {
    use ringseal_testkit::process::{Proc, address_after};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    if !have(&["openssl", "keytool"]) {
        return;
    }
    let s = Stores::new();
    let bin = env!("CARGO_BIN_EXE_ringseal");
    std::fs::write(s.path("other.password"), "otherpass2").unwrap();
    run(
        s.dir.path(),
        bin,
        &[
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
            "--p12-password-file",
            "other.password",
        ],
    );
    let backend = Backend::start(Mode::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let install = |p12: &str, password: &str| {
        std::fs::copy(s.path(p12), d.join("node.p12.tmp")).unwrap();
        std::fs::rename(d.join("node.p12.tmp"), d.join("node.p12")).unwrap();
        std::fs::write(d.join("pw.tmp"), password).unwrap();
        std::fs::rename(d.join("pw.tmp"), d.join("node.password")).unwrap();
    };
    install("node1/node1.p12", "storepass1\n");
    std::fs::copy(s.path("ca/ca.crt"), d.join("ca.crt")).unwrap();
    std::fs::write(
        d.join("ringseal.toml"),
        format!(
            "[tls]\nkeystore = \"node.p12\"\nkeystore_password_file = \"node.password\"\nca = \"ca.crt\"\n\
             reload_interval = \"1h\"\n\n\
             [[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"{}\"\n",
            backend.addr
        ),
    )
    .unwrap();
    let mut proc = Proc::spawn(&[], &d.join("ringseal.toml"), dir);
    let addr = address_after(&proc.wait_for("listener on"), "listener on ");

    // A client with node2's identity; reports the CN the sidecar presented.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(s.path("ca/ca.crt")).unwrap())
        .unwrap();
    let chain = CertificateDer::pem_file_iter(s.path("node2/node2.crt"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(s.path("node2/node2.key")).unwrap();
    let config = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(ringseal::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap(),
    );
    let presented = || {
        let config = config.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(
                    ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
                    tcp,
                )
                .await
                .unwrap();
            let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
            ringseal::tls::x509::CertInfo::parse(&leaf).unwrap().cn[0].clone()
        }
    };
    assert_eq!(within("handshake", presented()).await, "node1");

    install("node3/node3.p12", "otherpass2\n");
    proc.signal("HUP");
    proc.wait_for("reloaded");
    assert_eq!(within("handshake", presented()).await, "node3");

    // node1's store with node3's password: the reload fails, node3 stays.
    install("node1/node1.p12", "otherpass2\n");
    proc.signal("HUP");
    let line = proc.wait_for("reload failed");
    assert!(
        line.contains("wrong password") && line.contains("node.p12"),
        "{line}"
    );
    assert!(!line.contains("otherpass2"), "{line}");
    assert_eq!(within("handshake", presented()).await, "node3");
}
