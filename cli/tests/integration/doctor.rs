//! `ringseal check` reports every problem with the key material at once (each store on its own line,
//! with its fix), prints the derived config first, and takes `--set` overrides; `run` still stops at the
//! first problem with the same message.

use std::path::Path;
use std::process::{Command, Output};

use ringseal_testkit::tools::{have, sh};

fn ringseal(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringseal"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect()
}

/// A CA and two node certificates made by `ringseal certs` (PKCS#12 + PEM each).
fn certs(dir: &Path) {
    let bin = env!("CARGO_BIN_EXE_ringseal");
    sh(
        dir,
        &format!(
            "{bin} certs ca --cluster-name T --out ca >/dev/null
             {bin} certs node --ca ca --name node1 --ip 127.0.0.1 --out node1 >/dev/null
             {bin} certs node --ca ca --name other --ip 127.0.0.1 --out other >/dev/null
             echo 'not a CRL' > garbage.crl"
        ),
    );
}

#[test]
fn check_reports_every_problem_with_the_material_and_run_stops_at_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    certs(d);
    let listener = "[[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"127.0.0.1:9\"\n";
    // Four stores, four different problems.
    std::fs::write(
        d.join("stores.toml"),
        format!(
            "[tls]\nkeystore = \"node1/node1.p12\"\nkeystore_password = \"wrong-pass-4711\"\n\
             outbound_keystore = \"missing.p12\"\nca = \"other/other.key\"\ncrl = [\"garbage.crl\"]\n\
             {listener}"
        ),
    )
    .unwrap();
    let out = ringseal(d, &["check", "--config", "stores.toml"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(64), "{stdout}{stderr}");
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 4, "{stderr}");
    for (want, fix) in [
        ("tls.keystore", "wrong password"),
        ("tls.outbound_keystore", "cannot read"),
        ("tls.ca", "holds a private key, not a certificate"),
        ("tls.crl", "openssl ca -gencrl"),
    ] {
        assert!(
            errors.iter().any(|e| e.contains(want) && e.contains(fix)),
            "{want} / {fix} missing in:\n{stderr}"
        );
    }
    assert!(
        stdout.contains("config NOT usable: 4 problem(s)"),
        "{stdout}"
    );
    assert!(stdout.contains("inbound[0] listen 127.0.0.1:0"), "{stdout}");
    assert!(
        !format!("{stdout}{stderr}").contains("wrong-pass-4711"),
        "password shown"
    );
    // `run` keeps failing fast: one line, the first of them.
    let run = ringseal(d, &["run", "--config", "stores.toml"]);
    let (_, run_err) = text(&run);
    assert_eq!(run.status.code(), Some(64), "{run_err}");
    assert_eq!(error_lines(&run_err).len(), 1, "{run_err}");
    assert!(errors.contains(&error_lines(&run_err)[0]), "{run_err}");

    // PEM: a key that is not the certificate's, and a missing trust bundle; the outbound keystore
    // loads and says so.
    std::fs::write(
        d.join("pem.toml"),
        format!(
            "[tls]\ncert = \"node1/node1.crt\"\nkey = \"other/other.key\"\nca = \"nowhere/ca.crt\"\n\
             outbound_keystore = \"other/other.p12\"\noutbound_keystore_password_file = \
             \"other/other.p12.password\"\n{listener}"
        ),
    )
    .unwrap();
    let out = ringseal(d, &["check", "--config", "pem.toml", "--json"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    let errors = json["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{json:#}");
    let all = errors
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect::<Vec<_>>();
    assert!(
        all.iter()
            .any(|e| e.contains("tls.key") && e.contains("does not match the certificate")),
        "{all:#?}"
    );
    assert!(
        all.iter()
            .any(|e| e.contains("tls.ca") && e.contains("nowhere/ca.crt")),
        "{all:#?}"
    );
    assert!(
        json["loaded"][0]
            .as_str()
            .unwrap()
            .starts_with("outbound identity tls.outbound_keystore"),
        "{json:#}"
    );
}

#[test]
fn set_overrides_keys_and_refuses_bad_ones_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    certs(d);
    std::fs::write(
        d.join("ringseal.toml"),
        "[tls]\ncert = \"node1/node1.crt\"\nkey = \"node1/node1.key\"\nca = \"ca/ca.crt\"\n\
         [[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"127.0.0.1:9\"\n",
    )
    .unwrap();
    let check = |set: &[&str]| {
        let mut args = vec!["check", "--config", "ringseal.toml"];
        for s in set {
            args.extend(["--set", s]);
        }
        let out = ringseal(d, &args);
        let (stdout, stderr) = text(&out);
        (out.status.code(), stdout, stderr)
    };
    let (code, stdout, stderr) = check(&["limits.connect_timeout=\"2s\"", "offload=off"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("# set on the command line (--set)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("limits.connect_timeout = \"2s\""),
        "{stdout}"
    );
    assert!(stdout.contains("connect 2s"), "{stdout}");
    assert!(stdout.contains("offload    off"), "{stdout}");

    for (set, want) in [
        (
            "tls.acept_v1_certificates=true",
            "error: --set tls.acept_v1_certificates = true: unknown field `acept_v1_certificates`, \
             expected one of",
        ),
        (
            "tls.accept_v1_certificates=yes",
            "error: --set tls.accept_v1_certificates = \"yes\": invalid type: string \"yes\", \
             expected a boolean",
        ),
        (
            "tls.accept_v1_certificates",
            "error: --set tls.accept_v1_certificates: expected KEY=VALUE",
        ),
        ("limits.connect_timeout=soon", "limits.connect_timeout"),
        (
            "tls.keystore_password=s3cret-99",
            "error: --set tls.keystore_password: a password on the command line is visible",
        ),
    ] {
        let (code, stdout, stderr) = check(&[set]);
        assert_eq!(code, Some(64), "{set}: {stdout}{stderr}");
        assert_eq!(error_lines(&stderr).len(), 1, "{set}: {stderr}");
        assert!(stderr.contains(want), "{set}: want {want:?} in {stderr}");
        assert!(!stderr.contains("s3cret-99"), "{stderr}");
    }
}

/// Seed 001 ("Encryption in Cassandra"): its commands verbatim for one node (IP 127.0.0.1), which
/// with OpenSSL 3.0 make X.509 v1 certificates, and its `server_encryption_options`. With only this
/// cassandra.yaml, `check` shows the derived config and the v1 refusal with both ways to opt in; the
/// opt-in given as `--set` makes the config load.
#[test]
fn seed_001_v1_certificates_with_only_a_cassandra_yaml() {
    if !have(&["openssl", "keytool"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("rootCa_cert.conf"),
        "[ req ]\ndistinguished_name = req_distinguished_name\nprompt = no\n\
         output_password = RootCaPass-1\ndefault_bits = 2048\n\n[ req_distinguished_name ]\n\
         C = BE\nO = SkylineCommunications\nOU = DMS\nCN = rootCa\n",
    )
    .unwrap();
    let pass = "StoreP4ss-seed1";
    for command in [
        "openssl req -config rootCa_cert.conf -new -x509 -nodes -keyout rootCa.key -out rootCa.crt -days 365",
        "keytool -genkeypair -keyalg RSA -alias 127.0.0.1 -keystore 127.0.0.1.jks -storepass {P} -keypass {P} -validity 365 -keysize 2048 -dname \"CN=127.0.0.1, OU=DMS, O=SkylineCommunications, C=BE\" -ext \"san=ip:127.0.0.1\"",
        "keytool -certreq -keystore 127.0.0.1.jks -alias 127.0.0.1 -file 127.0.0.1.csr -keypass {P} -storepass {P} -ext SAN=DNS:node1,IP:127.0.0.1",
        "openssl x509 -req -CA rootCa.crt -CAkey rootCa.key -in 127.0.0.1.csr -out 127.0.0.1.crt_signed -days 365 -CAcreateserial -passin pass:RootCaPass-1",
        "keytool -keystore 127.0.0.1.jks -alias rootCa -importcert -file rootCa.crt -keypass {P} -storepass {P} -noprompt",
        "keytool -keystore 127.0.0.1.jks -alias 127.0.0.1 -importcert -file 127.0.0.1.crt_signed -keypass {P} -storepass {P} -noprompt",
        "keytool -keystore rootCa-truststore.jks -storetype JKS -importcert -file rootCa.crt -keypass {P} -storepass {P} -alias rootCa -noprompt",
    ] {
        sh(d, &command.replace("{P}", pass));
    }
    let signed = sh(d, "openssl x509 -in 127.0.0.1.crt_signed -noout -text");
    assert!(
        String::from_utf8_lossy(&signed.stdout).contains("Version: 1 (0x0)"),
        "the seed's node certificate is expected to be X.509 v1 with this OpenSSL"
    );
    std::fs::write(
        d.join("cassandra.yaml"),
        format!(
            "cluster_name: DMS\nlisten_address: 127.0.0.1\nstorage_port: 7000\nssl_storage_port: 7001\n\
             server_encryption_options:\n   internode_encryption: all\n   optional: false\n\
             \x20  keystore: {0}/127.0.0.1.jks\n   keystore_password: {pass}\n\
             \x20  truststore: {0}/rootCa-truststore.jks\n   truststore_password: {pass}\n",
            d.display()
        ),
    )
    .unwrap();

    let out = ringseal(d, &["check", "--cassandra-yaml", "cassandra.yaml"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(64), "{stdout}{stderr}");
    assert!(
        stdout.contains("# derived from cassandra.yaml (passwords redacted)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("keystore_password = \"<redacted>\""),
        "{stdout}"
    );
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "{stderr}");
    for want in [
        "X.509 v1",
        "tls.accept_v1_certificates = true in the config file",
        "--set tls.accept_v1_certificates=true",
    ] {
        assert!(errors[0].contains(want), "{want:?} missing in {stderr}");
    }
    assert!(
        stdout.contains("loaded     trust tls.truststore"),
        "the truststore loaded and is reported: {stdout}"
    );
    assert!(
        !format!("{stdout}{stderr}").contains(pass),
        "password shown"
    );

    let out = ringseal(
        d,
        &[
            "check",
            "--cassandra-yaml",
            "cassandra.yaml",
            "--set",
            "tls.accept_v1_certificates=true",
        ],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(
            "# set on the command line (--set), over the config above\ntls.accept_v1_certificates = true"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("is an X.509 v1 certificate"), "{stdout}");
    assert!(
        !format!("{stdout}{stderr}").contains(pass),
        "password shown"
    );
}
