//! `ringseal check` as the PKI doctor, on certificates made with openssl the way guides make them: the
//! report (text and `--json`), each warning the issue names, and the exit status (0 with warnings, 1 when
//! our own chain does not verify against our trust store, 64 when the config cannot be loaded).

use std::path::Path;
use std::process::Command;

use ringseal_testkit::tools::{have, sh};

struct Checked {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn check(dir: &Path, config: &str, json: bool) -> Checked {
    std::fs::write(dir.join("ringseal.toml"), config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringseal"));
    cmd.args(["check", "--config", "ringseal.toml"])
        .current_dir(dir);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().unwrap();
    Checked {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A v3 CA (`ca.crt`/`ca.key`, `-newkey rsa:{bits}`), and `node.crt`/`node.key` signed with `digest`,
/// valid `days` days, with the given extensions file content (empty: a v1 certificate).
fn pki(dir: &Path, bits: u32, digest: &str, days: u32, ext: &str) {
    std::fs::write(dir.join("ext.cnf"), ext).unwrap();
    let extfile = if ext.is_empty() {
        String::new()
    } else {
        "-extfile ext.cnf".to_owned()
    };
    sh(
        dir,
        &format!(
            "openssl req -x509 -newkey rsa:{bits} -nodes -keyout ca.key -out ca.crt -days 365 \
               -subj '/OU=ProdCluster/CN=Prod CA' 2>/dev/null
             openssl req -new -newkey rsa:2048 -nodes -keyout node.key -out node.csr \
               -subj '/OU=TestCluster/CN=node1' 2>/dev/null
             openssl x509 -req -in node.csr -CA ca.crt -CAkey ca.key -CAcreateserial -{digest} \
               -days {days} -out node.crt {extfile} 2>/dev/null"
        ),
    );
}

const SAN_EXT: &str = "subjectAltName = IP:10.0.0.1\nextendedKeyUsage = serverAuth, clientAuth\n";

fn config(extra_top: &str, tls_extra: &str, endpoint: bool) -> String {
    format!(
        "{extra_top}\n[tls]\ncert = \"node.crt\"\nkey = \"node.key\"\nca = \"ca.crt\"\n{tls_extra}\n\
         [[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"127.0.0.1:7000\"\n\
         require_endpoint_verification = {endpoint}\n"
    )
}

#[test]
fn a_sound_pki_reports_every_field_and_no_warning() {
    if !have(&["openssl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path(), 2048, "sha256", 365, SAN_EXT);
    let r = check(
        dir.path(),
        &config("cluster_name = \"TestCluster\"", "", true),
        false,
    );
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.starts_with("config OK\n"), "{}", r.stdout);
    for want in [
        "cluster    TestCluster",
        "identity   tls.cert ",
        "  subject  OU=TestCluster, CN=node1",
        "  issuer   OU=ProdCluster, CN=Prod CA",
        "  version  v3",
        "  key      RSA 2048",
        "  signed   sha256WithRSAEncryption",
        "(364 days left)",
        "  IP SANs  10.0.0.1",
        "  EKU      serverAuth, clientAuth",
        "  keypair  private key matches the certificate",
        "  verifies serverAuth: ok; clientAuth: ok",
        "trust      tls.ca ",
        "  CA       OU=ProdCluster, CN=Prod CA (v3, RSA 2048,",
        "inbound[0] listen 127.0.0.1:0",
    ] {
        assert!(
            r.stdout.contains(want),
            "{want:?} missing in:\n{}",
            r.stdout
        );
    }
    assert!(!r.stdout.contains("warning"), "{}", r.stdout);
}

#[test]
fn warnings_v1_no_ip_san_expiry_sha1_small_rsa_ou() {
    if !have(&["openssl"]) {
        return;
    }
    // v1 leaf (no -extfile), SHA-1 signature, 10 days left, issued by an RSA 1024 CA.
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path(), 1024, "sha1", 10, "");
    let r = check(
        dir.path(),
        &config(
            "cluster_name = \"ProdCluster\"",
            "accept_v1_certificates = true",
            true,
        ),
        false,
    );
    let all = format!("{}{}", r.stdout, r.stderr);
    for want in [
        "warning: identity \"OU=TestCluster, CN=node1\" is an X.509 v1 certificate",
        "warning: endpoint verification is on but identity \"OU=TestCluster, CN=node1\" has no IP SAN",
        "warning: identity \"OU=TestCluster, CN=node1\" expires in 9 days",
        "is signed with sha1WithRSAEncryption (SHA-1/MD5 signatures are forgeable",
        "warning: trusted CA \"OU=ProdCluster, CN=Prod CA\" has an RSA 1024 key, below 2048 bits",
        "has OU \"TestCluster\" but the cluster is \"ProdCluster\"",
        "  version  v1",
        "  EKU      none (any usage)",
    ] {
        assert!(all.contains(want), "{want:?} missing in:\n{all}");
    }
    // SHA-1 chains do not verify (webpki refuses SHA-1): an error, exit status 1.
    assert_eq!(r.code, Some(1), "{all}");
    assert!(
        all.contains("error: identity \"OU=TestCluster, CN=node1\" does not verify"),
        "{all}"
    );
}

#[test]
fn chain_not_in_trust_store_is_an_error_and_json_says_so() {
    if !have(&["openssl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path(), 2048, "sha256", 365, SAN_EXT);
    // Trust another CA than the one that issued our certificate.
    sh(
        dir.path(),
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout other.key -out other.crt -days 30 \
           -subj '/CN=Other CA' 2>/dev/null",
    );
    let text = config("", "", false).replace("ca = \"ca.crt\"", "ca = \"other.crt\"");
    let r = check(dir.path(), &text, true);
    assert_eq!(r.code, Some(1), "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON");
    assert_eq!(v["ok"], false);
    assert_eq!(
        v["identity"]["certificate"]["subject"],
        "OU=TestCluster, CN=node1"
    );
    assert_eq!(v["identity"]["certificate"]["version"], 3);
    assert_eq!(v["identity"]["certificate"]["key"], "RSA 2048");
    assert_eq!(v["identity"]["certificate"]["ip_sans"][0], "10.0.0.1");
    assert_eq!(v["identity"]["key_matches_certificate"], true);
    assert!(
        v["identity"]["verifies_for_client_auth"]
            .as_str()
            .unwrap()
            .contains("unknown CA"),
        "{v:#}"
    );
    assert_eq!(v["trust"]["cas"][0]["subject"], "CN=Other CA");
    assert!(v["trust"]["cas"][0]["days_left"].as_i64().unwrap() <= 30);
    let warnings = v["warnings"].as_array().unwrap();
    assert!(
        warnings.iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("trusted CA \"CN=Other CA\" expires in")),
        "{v:#}"
    );
    assert!(
        v["errors"][0]
            .as_str()
            .unwrap()
            .contains("does not verify against the trust store")
    );
}

#[test]
fn unloadable_config_exits_64_with_json_error() {
    let dir = tempfile::tempdir().unwrap();
    let r = check(dir.path(), &config("", "", false), true);
    assert_eq!(r.code, Some(64), "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON");
    assert_eq!(v["ok"], false);
    assert!(
        v["errors"][0].as_str().unwrap().contains("tls.cert"),
        "{v:#}"
    );
    assert!(r.stderr.starts_with("error: config "), "{}", r.stderr);
}

/// A trust bundle whose CA names do not fit a CertificateRequest (peers refuse handshake messages above
/// 64 KiB, rustls with "excessive message size"): `check` says so, and the sidecar sends no CA names
/// instead of failing every handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_too_large_for_a_certificate_request_sends_no_names() {
    use ringseal_testkit::process::Proc;
    use ringseal_testkit::{Backend, LOCALHOST, Mode, Pki, client, roundtrip};
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    pki.write(dir.path());
    // 600 more CAs with names of ~140 bytes: about 80 KiB of names.
    let mut bundle = pki.ca.cert_pem.clone();
    for i in 0..600 {
        let ca =
            ringseal::pki::Ca::new(&format!("Retired-Cluster-{i:04}-{}", "x".repeat(100))).unwrap();
        bundle.push_str(&ca.cert_pem);
    }
    std::fs::write(dir.path().join("ca.crt"), bundle).unwrap();
    let backend = Backend::start(Mode::Echo).await;
    let config = format!(
        "[tls]\ncert = \"node.crt\"\nkey = \"node.key\"\nca = \"ca.crt\"\n\n[[inbound]]\n\
         listen = \"127.0.0.1:0\"\nforward = \"{}\"\n",
        backend.addr
    );
    let checked = check(dir.path(), &config, false);
    assert_eq!(
        checked.code,
        Some(0),
        "{}{}",
        checked.stdout,
        checked.stderr
    );
    assert!(
        checked.stdout.contains("601 trusted CAs") && checked.stdout.contains("sends no CA names"),
        "{}",
        checked.stdout
    );
    let mut proc = Proc::spawn(&[], &dir.path().join("ringseal.toml"), dir);
    let line = proc.wait_for("starting inbound mTLS listener");
    let addr = ringseal_testkit::process::address_after(&line, "listener on ");
    let good = client(pki.roots(), Some(&pki.node));
    roundtrip(&good, LOCALHOST, addr)
        .await
        .expect("a handshake with a trusted peer");
}
