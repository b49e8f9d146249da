//! `ringseal certs` through the real binary, checked by the tools Cassandra operators use: openssl
//! verifies the chain and extensions, keytool (JDK) reads the PKCS#12 keystore and installs a signed
//! reply to its own CSR, and ringseal itself runs mutual TLS with the files.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use ringseal_testkit::tools::have;
use ringseal_testkit::*;

fn ringseal(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringseal"))
        .args(args)
        .output()
        .unwrap()
}

fn tool(name: &str, args: &[&str], dir: &Path) -> Output {
    Command::new(name)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `ringseal certs ca` into `dir/ca`.
fn make_ca(dir: &Path) -> std::path::PathBuf {
    let ca = dir.join("ca");
    let out = ringseal(&[
        "certs",
        "ca",
        "--cluster-name",
        "TestCluster",
        "--out",
        ca.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    ca
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn ca_and_node_files_verify_and_refuse_to_overwrite() {
    if !have(&["openssl", "keytool"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = make_ca(d);
    assert_eq!(mode(&ca.join("ca.key")), 0o600);
    let node = d.join("n1");
    let args = [
        "certs",
        "node",
        "--ca",
        ca.to_str().unwrap(),
        "--name",
        "node1",
        "--ip",
        "10.0.0.1",
        "--ip",
        "127.0.0.1",
        "--dns",
        "node1.example",
        "--out",
        node.to_str().unwrap(),
    ];
    let out = ringseal(&args);
    assert!(out.status.success(), "{}", text(&out));
    for (f, m) in [
        ("node1.key", 0o600),
        ("node1.p12", 0o600),
        ("node1.p12.password", 0o600),
        ("node1.crt", 0o644),
    ] {
        assert_eq!(mode(&node.join(f)), m, "{f}");
    }

    // openssl: the chain verifies; IP SANs, both purposes, OU = cluster name.
    let v = tool(
        "openssl",
        &["verify", "-CAfile", "ca/ca.crt", "n1/node1.crt"],
        d,
    );
    assert!(v.status.success(), "{}", text(&v));
    let x = tool(
        "openssl",
        &[
            "x509",
            "-in",
            "n1/node1.crt",
            "-noout",
            "-subject",
            "-ext",
            "subjectAltName,extendedKeyUsage",
        ],
        d,
    );
    let x = text(&x);
    assert!(
        x.contains("IP Address:10.0.0.1") && x.contains("IP Address:127.0.0.1"),
        "{x}"
    );
    assert!(x.contains("DNS:node1.example"), "{x}");
    assert!(
        x.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{x}"
    );
    assert!(
        x.contains("OU = TestCluster") || x.contains("OU=TestCluster"),
        "{x}"
    );

    // keytool reads the PKCS#12 keystore with the generated password: one key entry, alias node1.
    let password = std::fs::read_to_string(node.join("node1.p12.password")).unwrap();
    let k = tool(
        "keytool",
        &[
            "-list",
            "-keystore",
            "n1/node1.p12",
            "-storetype",
            "PKCS12",
            "-storepass",
            &password,
        ],
        d,
    );
    let k = text(&k);
    assert!(k.contains("node1,") && k.contains("PrivateKeyEntry"), "{k}");
    let wrong = tool(
        "keytool",
        &[
            "-list",
            "-keystore",
            "n1/node1.p12",
            "-storepass",
            "wrong-password",
        ],
        d,
    );
    assert!(!wrong.status.success(), "a wrong password must not open it");

    // Nothing is overwritten without --force, and the refusal names the file.
    let again = ringseal(&args);
    assert_eq!(again.status.code(), Some(64));
    assert!(
        text(&again).contains("node1.crt exists; pass --force"),
        "{}",
        text(&again)
    );
    let mut forced = args.to_vec();
    forced.push("--force");
    assert!(ringseal(&forced).status.success());
    assert_ne!(
        std::fs::read_to_string(node.join("node1.p12.password")).unwrap(),
        password
    );

    // RSA on request.
    let rsa = ringseal(&[
        "certs",
        "node",
        "--ca",
        ca.to_str().unwrap(),
        "--name",
        "node2",
        "--ip",
        "10.0.0.2",
        "--key-type",
        "rsa-2048",
        "--out",
        node.to_str().unwrap(),
    ]);
    assert!(rsa.status.success(), "{}", text(&rsa));
    let t = text(&tool(
        "openssl",
        &["x509", "-in", "n1/node2.crt", "-noout", "-text"],
        d,
    ));
    assert!(
        t.contains("Public-Key: (2048 bit)") && t.contains("rsaEncryption"),
        "{t}"
    );
}

#[test]
fn keytool_csr_is_signed_and_the_reply_installs() {
    if !have(&["openssl", "keytool"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = make_ca(d);
    // The tutorial's flow: keytool makes the key pair and the request...
    let keystore = ["-keystore", "node2.p12", "-storepass", "cassandra"];
    let g = tool(
        "keytool",
        &[
            &[
                "-genkeypair",
                "-keyalg",
                "EC",
                "-groupname",
                "secp256r1",
                "-alias",
                "node2",
                "-dname",
                "CN=node2, OU=TestCluster",
                "-validity",
                "365",
            ][..],
            &keystore[..],
        ]
        .concat(),
        d,
    );
    assert!(g.status.success(), "{}", text(&g));
    let r = tool(
        "keytool",
        &[
            &[
                "-certreq",
                "-alias",
                "node2",
                "-file",
                "node2.csr",
                "-ext",
                "SAN=ip:10.0.0.2",
            ][..],
            &keystore[..],
        ]
        .concat(),
        d,
    );
    assert!(r.status.success(), "{}", text(&r));
    // ...ringseal signs it...
    let signed = ringseal(&[
        "certs",
        "sign",
        "--ca",
        ca.to_str().unwrap(),
        "--csr",
        d.join("node2.csr").to_str().unwrap(),
    ]);
    assert!(signed.status.success(), "{}", text(&signed));
    std::fs::write(d.join("node2.crt"), &signed.stdout).unwrap();
    let x = text(&tool(
        "openssl",
        &[
            "x509",
            "-in",
            "node2.crt",
            "-noout",
            "-subject",
            "-ext",
            "subjectAltName,extendedKeyUsage",
        ],
        d,
    ));
    assert!(x.contains("IP Address:10.0.0.2"), "{x}");
    assert!(
        x.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{x}"
    );
    assert!(
        tool(
            "openssl",
            &["verify", "-CAfile", "ca/ca.crt", "node2.crt"],
            d
        )
        .status
        .success()
    );
    // ...and keytool installs the reply once it trusts the CA.
    let t = tool(
        "keytool",
        &[
            &[
                "-importcert",
                "-noprompt",
                "-alias",
                "ca",
                "-file",
                "ca/ca.crt",
            ][..],
            &keystore[..],
        ]
        .concat(),
        d,
    );
    assert!(t.status.success(), "{}", text(&t));
    let i = tool(
        "keytool",
        &[
            &["-importcert", "-alias", "node2", "-file", "node2.crt"][..],
            &keystore[..],
        ]
        .concat(),
        d,
    );
    assert!(
        text(&i).contains("Certificate reply was installed in keystore"),
        "{}",
        text(&i)
    );

    // A file that is not a request is refused with the file named.
    std::fs::write(d.join("bad.csr"), "hello").unwrap();
    let bad = ringseal(&[
        "certs",
        "sign",
        "--ca",
        ca.to_str().unwrap(),
        "--csr",
        d.join("bad.csr").to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(64));
    assert!(text(&bad).contains("bad.csr"), "{}", text(&bad));
}

/// The files `certs` writes are what ringseal runs with: two sidecars' worth of mutual TLS.
#[tokio::test]
async fn issued_files_run_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = make_ca(d);
    for n in ["node1", "node2"] {
        let out = ringseal(&[
            "certs",
            "node",
            "--ca",
            ca.to_str().unwrap(),
            "--name",
            n,
            "--ip",
            "127.0.0.1",
            "--out",
            d.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let backend = Backend::start(Mode::Echo).await;
    std::fs::write(
        d.join("node1.toml"),
        format!(
            "[tls]\ncert = \"node1.crt\"\nkey = \"node1.key\"\nca = \"ca/ca.crt\"\n\n\
             [[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"{}\"\nrequire_endpoint_verification = true\n\
             allow = {{ ou = [\"TestCluster\"] }}\n",
            backend.addr
        ),
    )
    .unwrap();
    let path = d.join("node1.toml");
    let config = ringseal::load_tls(ringseal::config::Config::load(&path).unwrap(), &path).unwrap();
    let sidecar = Sidecar::start(config).await;
    // node2's files as the connecting peer.
    let ca_pem = std::fs::read(ca.join("ca.crt")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(&ca_pem).unwrap())
        .unwrap();
    let chain: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(d.join("node2.crt"))
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(d.join("node2.key")).unwrap();
    let client = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(ringseal::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap(),
    );
    within(
        "mTLS with issued files",
        roundtrip(&client, LOCALHOST, sidecar.addr),
    )
    .await
    .unwrap();
    assert_eq!(backend.accepted(), 1);
}
