//! The JKS reader against real keystores, made at test time with the commands operators run: `keytool
//! -genkeypair -storetype JKS` (RSA and EC), `-importcert -trustcacerts`, a CA-signed reply to `keytool
//! -certreq` (CA and signature by openssl), a `-keypass` different from `-storepass`. Keys are checked
//! against the certificates keytool issued for them, against rustls, and against openssl's reading of
//! the same key exported through PKCS#12; then every prefix, every single-byte change and a few thousand
//! seeded mutations of those stores must be errors, never panics.
//!
//! Needs `keytool` and `openssl`: without them the tests skip, saying so, except under `CI`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;

use aws_lc_rs::digest::{SHA1_FOR_LEGACY_USE_ONLY, digest};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ringseal::tls::jks::{self, Entry, Jks, JksError};
use ringseal_testkit::mutate::mutate;
use ringseal_testkit::tools::{have, run};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const PASS: &str = "changeit";

fn keytool(dir: &Path, args: &[&str]) -> Output {
    run(dir, "keytool", args)
}

/// `keytool -genkeypair -storetype JKS` of an RSA 2048 or EC P-256 key.
fn genkeypair(dir: &Path, store: &str, alias: &str, ec: bool, keypass: &str) {
    let alg: &[&str] = if ec {
        &["-keyalg", "EC", "-groupname", "secp256r1"]
    } else {
        &["-keyalg", "RSA", "-keysize", "2048"]
    };
    let dname = format!("CN={alias},OU=TestCluster");
    let mut args = vec![
        "-genkeypair",
        "-storetype",
        "JKS",
        "-keystore",
        store,
        "-storepass",
        PASS,
        "-keypass",
        keypass,
        "-alias",
        alias,
        "-dname",
        &dname,
        "-validity",
        "30",
    ];
    args.extend_from_slice(alg);
    keytool(dir, &args);
}

fn read(dir: &Path, file: &str) -> Vec<u8> {
    std::fs::read(dir.join(file)).unwrap()
}

fn parse_ok(dir: &Path, store: &str) -> Jks {
    jks::parse(&read(dir, store), PASS).unwrap_or_else(|e| panic!("{store}: {e}"))
}

/// The aliases `keytool -list -v` shows.
fn keytool_aliases(dir: &Path, store: &str) -> BTreeSet<String> {
    let out = keytool(
        dir,
        &["-list", "-v", "-keystore", store, "-storepass", PASS],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("Alias name: "))
        .map(str::to_owned)
        .collect()
}

fn aliases(jks: &Jks) -> BTreeSet<String> {
    jks.entries.iter().map(|e| e.alias().to_owned()).collect()
}

/// The chain `keytool -list -rfc -alias` prints, as DER.
fn keytool_chain(dir: &Path, store: &str, alias: &str) -> Vec<Vec<u8>> {
    let out = keytool(
        dir,
        &[
            "-list",
            "-rfc",
            "-keystore",
            store,
            "-storepass",
            PASS,
            "-alias",
            alias,
        ],
    );
    CertificateDer::pem_slice_iter(&out.stdout)
        .map(|c| c.unwrap().to_vec())
        .collect()
}

/// `keytool -exportcert` (DER).
fn exportcert(dir: &Path, store: &str, alias: &str) -> Vec<u8> {
    let file = format!("{alias}.export.der");
    keytool(
        dir,
        &[
            "-exportcert",
            "-keystore",
            store,
            "-storepass",
            PASS,
            "-alias",
            alias,
            "-file",
            &file,
        ],
    );
    read(dir, &file)
}

fn key_entry<'a>(jks: &'a Jks, alias: &str) -> (&'a [u8], &'a [Vec<u8>]) {
    jks.entries
        .iter()
        .find_map(|e| match e {
            Entry::PrivateKey {
                alias: a,
                pkcs8,
                chain,
            } if a == alias => Some((&pkcs8[..], &chain[..])),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no key entry {alias}"))
}

/// The decrypted key is the private half of the leaf certificate's public key, and rustls takes it.
fn assert_key_matches_leaf(pkcs8: &[u8], leaf: &[u8]) {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap();
    let public = match aws_lc_rs::rsa::KeyPair::from_pkcs8(pkcs8) {
        Ok(rsa) => rsa.public_key().as_ref().to_vec(),
        Err(_) => EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8)
            .expect("neither an RSA nor a P-256 PKCS#8 key")
            .public_key()
            .as_ref()
            .to_vec(),
    };
    assert_eq!(public, cert.public_key().subject_public_key.data.as_ref());
    rustls::crypto::aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            pkcs8.to_vec(),
        )))
        .expect("rustls refuses the decrypted key");
}

/// openssl's canonical DER of a key given as PEM or DER.
fn openssl_pkey(dir: &Path, input: &str, inform: &str) -> Vec<u8> {
    run(
        dir,
        "openssl",
        &["pkey", "-in", input, "-inform", inform, "-outform", "DER"],
    )
    .stdout
}

/// The key as openssl reads it after `keytool -importkeystore -deststoretype PKCS12`, in canonical
/// form, next to our decrypted key in the same canonical form.
fn openssl_view(dir: &Path, store: &str, alias: &str, pkcs8: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let p12 = format!("{alias}.p12");
    let pem = format!("{alias}.openssl.pem");
    let ours = format!("{alias}.ours.der");
    keytool(
        dir,
        &[
            "-importkeystore",
            "-srckeystore",
            store,
            "-srcstorepass",
            PASS,
            "-srcalias",
            alias,
            "-destkeystore",
            &p12,
            "-deststoretype",
            "PKCS12",
            "-deststorepass",
            PASS,
        ],
    );
    run(
        dir,
        "openssl",
        &[
            "pkcs12",
            "-in",
            &p12,
            "-passin",
            &format!("pass:{PASS}"),
            "-nocerts",
            "-nodes",
            "-out",
            &pem,
        ],
    );
    std::fs::write(dir.join(&ours), pkcs8).unwrap();
    (
        openssl_pkey(dir, &pem, "PEM"),
        openssl_pkey(dir, &ours, "DER"),
    )
}

/// A CA made by openssl (`ca.pem`, `ca.key`, and `ca.der`).
fn openssl_ca(dir: &Path, name: &str, ec: bool) -> PathBuf {
    let key_alg: &[&str] = if ec {
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    } else {
        &["-newkey", "rsa:2048"]
    };
    let mut args = vec!["req", "-x509", "-nodes", "-days", "30"];
    args.extend_from_slice(key_alg);
    let (key, pem, subj) = (
        format!("{name}.key"),
        format!("{name}.pem"),
        format!("/CN={name}/OU=TestCluster"),
    );
    args.extend_from_slice(&[
        "-keyout",
        &key,
        "-out",
        &pem,
        "-subj",
        &subj,
        "-addext",
        "basicConstraints=critical,CA:true",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(dir, "openssl", &args);
    let der = format!("{name}.der");
    run(
        dir,
        "openssl",
        &["x509", "-in", &pem, "-outform", "DER", "-out", &der],
    );
    dir.join(der)
}

/// A store with an RSA and an EC key entry: the common fixture of the robustness tests.
fn two_key_store(dir: &Path) -> Vec<u8> {
    genkeypair(dir, "keys.jks", "node-rsa", false, PASS);
    genkeypair(dir, "keys.jks", "node-ec", true, PASS);
    read(dir, "keys.jks")
}

/// Recomputes the trailing integrity digest, so that a mutated store gets past the password check and
/// reaches the entry and key code.
fn reseal(store: &mut [u8], password: &str) {
    if store.len() < 20 {
        return;
    }
    let body = store.len() - 20;
    let mut input: Vec<u8> = password.encode_utf16().flat_map(u16::to_be_bytes).collect();
    input.extend_from_slice(b"Mighty Aphrodite");
    input.extend_from_slice(&store[..body]);
    store[body..].copy_from_slice(digest(&SHA1_FOR_LEGACY_USE_ONLY, &input).as_ref());
}

#[test]
fn rsa_and_ec_key_entries_decrypt_to_the_keys_keytool_made() {
    if !have(&["keytool", "openssl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = two_key_store(d);
    assert!(jks::is_jks(&store) && !jks::is_jceks(&store));
    let jks = jks::parse(&store, PASS).unwrap();

    assert_eq!(aliases(&jks), keytool_aliases(d, "keys.jks"));
    assert_eq!(jks.entries.len(), 2);
    for alias in ["node-rsa", "node-ec"] {
        let (pkcs8, chain) = key_entry(&jks, alias);
        assert_eq!(chain, keytool_chain(d, "keys.jks", alias), "{alias}");
        assert_eq!(chain.len(), 1, "{alias}: a self-signed chain");
        assert_eq!(chain[0], exportcert(d, "keys.jks", alias), "{alias}");
        assert_key_matches_leaf(pkcs8, &chain[0]);
        let (theirs, ours) = openssl_view(d, "keys.jks", alias, pkcs8);
        assert!(!theirs.is_empty());
        assert_eq!(theirs, ours, "{alias}: openssl reads a different key");
    }
}

#[test]
fn a_ca_signed_reply_makes_the_chain_leaf_first() {
    if !have(&["keytool", "openssl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = openssl_ca(d, "cluster-ca", false);
    genkeypair(d, "node.jks", "node1", true, PASS);
    fn with<'a>(args: &[&'a str]) -> Vec<&'a str> {
        [args, &["-keystore", "node.jks", "-storepass", PASS]].concat()
    }
    keytool(
        d,
        &with(&["-certreq", "-alias", "node1", "-file", "node1.csr"]),
    );
    run(
        d,
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            "node1.csr",
            "-CA",
            "cluster-ca.pem",
            "-CAkey",
            "cluster-ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-outform",
            "DER",
            "-out",
            "node1.der",
        ],
    );
    keytool(
        d,
        &with(&[
            "-importcert",
            "-noprompt",
            "-trustcacerts",
            "-alias",
            "cluster-ca",
            "-file",
            "cluster-ca.pem",
        ]),
    );
    keytool(
        d,
        &with(&[
            "-importcert",
            "-noprompt",
            "-alias",
            "node1",
            "-file",
            "node1.der",
        ]),
    );

    let jks = parse_ok(d, "node.jks");
    assert_eq!(aliases(&jks), keytool_aliases(d, "node.jks"));
    let ca_der = std::fs::read(ca).unwrap();
    let leaf_der = read(d, "node1.der");
    let (pkcs8, chain) = key_entry(&jks, "node1");
    assert_eq!(chain, [leaf_der.clone(), ca_der.clone()]);
    assert_eq!(chain, keytool_chain(d, "node.jks", "node1"));
    assert_key_matches_leaf(pkcs8, &leaf_der);
    assert!(jks.entries.contains(&Entry::TrustedCert {
        alias: "cluster-ca".into(),
        der: ca_der,
    }));
}

#[test]
fn truststore_entries_are_the_imported_certificates() {
    if !have(&["keytool", "openssl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut expected = Vec::new();
    for (name, ec) in [("old-ca", false), ("new-ca", true)] {
        let der = std::fs::read(openssl_ca(d, name, ec)).unwrap();
        keytool(
            d,
            &[
                "-importcert",
                "-noprompt",
                "-trustcacerts",
                "-storetype",
                "JKS",
                "-keystore",
                "truststore.jks",
                "-storepass",
                PASS,
                "-alias",
                name,
                "-file",
                &format!("{name}.pem"),
            ],
        );
        expected.push(Entry::TrustedCert {
            alias: name.into(),
            der,
        });
    }
    let mut jks = parse_ok(d, "truststore.jks");
    assert_eq!(aliases(&jks), keytool_aliases(d, "truststore.jks"));
    for entry in &jks.entries {
        let Entry::TrustedCert { alias, der } = entry else {
            panic!("{entry:?} in a truststore")
        };
        assert_eq!(der, &exportcert(d, "truststore.jks", alias));
    }
    // keytool writes entries in hash-table order.
    jks.entries.sort_by(|a, b| b.alias().cmp(a.alias()));
    assert_eq!(jks.entries, expected);
}

#[test]
fn a_key_password_other_than_the_store_password_is_named() {
    if !have(&["keytool", "openssl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    genkeypair(d, "mixed.jks", "same", true, PASS);
    genkeypair(d, "mixed.jks", "other", true, "otherpass");
    let err = jks::parse(&read(d, "mixed.jks"), PASS).unwrap_err();
    assert!(
        matches!(&err, JksError::KeyPasswordMismatch { alias } if alias == "other"),
        "{err:?}"
    );
    let text = format!("keystore mixed.jks: {err}");
    assert!(
        text.contains("\"other\"") && text.contains("differs from the store password"),
        "{text}"
    );
    assert!(!text.contains("otherpass"), "{text}");
}

#[test]
fn a_wrong_store_password_is_reported_as_such() {
    if !have(&["keytool", "openssl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = two_key_store(dir.path());
    for wrong in ["changeiT", "", "changeit ", "\u{1F511}"] {
        let err = jks::parse(&store, wrong).unwrap_err();
        assert!(matches!(err, JksError::WrongPassword), "{wrong:?}: {err:?}");
        assert_eq!(
            format!("keystore /etc/c/node.jks: {err}"),
            "keystore /etc/c/node.jks: wrong password (integrity check failed)"
        );
    }
}

#[test]
fn every_prefix_of_a_real_store_is_a_truncation_error() {
    if !have(&["keytool", "openssl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = two_key_store(dir.path());
    for len in 0..store.len() {
        match jks::parse(&store[..len], PASS) {
            Err(JksError::NotJks) => assert!(len < 4),
            Err(JksError::Truncated {
                offset,
                needed,
                available,
                ..
            }) => {
                assert!(offset <= len && needed > available, "prefix {len}")
            }
            other => panic!("prefix of {len} bytes: {other:?}"),
        }
    }
}

#[test]
fn every_single_byte_change_is_detected() {
    if !have(&["keytool", "openssl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = two_key_store(dir.path());
    let mut wrong_password = 0;
    for at in 0..store.len() {
        for mask in [0x01, 0x80, 0xff] {
            let mut bad = store.clone();
            bad[at] ^= mask;
            match jks::parse(&bad, PASS) {
                Ok(_) => panic!("byte {at} ^ {mask:#x} went unnoticed"),
                Err(JksError::WrongPassword) => wrong_password += 1,
                Err(_) => {}
            }
        }
    }
    // Most changes keep the structure and are caught by the digest.
    assert!(wrong_password > store.len(), "{wrong_password}");
}

#[test]
fn huge_declared_lengths_and_trailing_garbage_are_refused() {
    if !have(&["keytool", "openssl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = two_key_store(dir.path());
    // Entry count, and the first entry's protected-key length (after its tag, alias and timestamp).
    let alias_len = usize::from(u16::from_be_bytes([store[16], store[17]]));
    let key_len_at = 12 + 4 + 2 + alias_len + 8;
    for at in [8, key_len_at] {
        for huge in [u32::MAX, 0x7fff_ffff, 0x8000_0000] {
            let mut bad = store.clone();
            bad[at..at + 4].copy_from_slice(&huge.to_be_bytes());
            let err = jks::parse(&bad, PASS).unwrap_err();
            assert!(
                matches!(err, JksError::Truncated { .. }),
                "{at}: {huge:#x}: {err:?}"
            );
        }
    }
    let mut long = store.clone();
    long.extend_from_slice(b"\n");
    let err = jks::parse(&long, PASS).unwrap_err();
    assert!(
        matches!(err, JksError::TrailingData { offset, len: 1 } if offset == store.len()),
        "{err:?}"
    );
}

#[test]
fn pkcs12_jceks_pem_and_empty_files_are_not_jks() {
    if !have(&["keytool", "openssl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (file, storetype) in [("node.p12", "PKCS12"), ("node.jceks", "JCEKS")] {
        keytool(
            d,
            &[
                "-genkeypair",
                "-storetype",
                storetype,
                "-keystore",
                file,
                "-storepass",
                PASS,
                "-keypass",
                PASS,
                "-alias",
                "node",
                "-keyalg",
                "EC",
                "-dname",
                "CN=node",
            ],
        );
    }
    let p12 = read(d, "node.p12");
    assert!(!jks::is_jks(&p12) && !jks::is_jceks(&p12));
    assert!(matches!(jks::parse(&p12, PASS), Err(JksError::NotJks)));

    let jceks = read(d, "node.jceks");
    assert!(jks::is_jceks(&jceks) && !jks::is_jks(&jceks));
    let err = jks::parse(&jceks, PASS).unwrap_err();
    assert!(matches!(err, JksError::Jceks));
    assert!(
        err.to_string()
            .contains("-srcstoretype JCEKS -deststoretype PKCS12")
    );

    keytool(
        d,
        &[
            "-exportcert",
            "-rfc",
            "-keystore",
            "node.p12",
            "-storepass",
            PASS,
            "-alias",
            "node",
            "-file",
            "node.pem",
        ],
    );
    for other in [read(d, "node.pem"), Vec::new()] {
        assert!(!jks::is_jks(&other) && !jks::is_jceks(&other));
        assert!(matches!(jks::parse(&other, PASS), Err(JksError::NotJks)));
    }
}

/// A few thousand seeded mutations of real stores, half of them resealed with a correct digest so that
/// they reach the entry and key code: each must return (no panic), and together they must reach every
/// kind of outcome. A cheap, deterministic stand-in for `fuzz/` that runs in every `cargo test`.
#[test]
fn seeded_mutations_of_real_stores_never_panic() {
    if !have(&["keytool", "openssl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let keys = two_key_store(d);
    genkeypair(d, "keys.jks", "other", true, "otherpass");
    let mixed = read(d, "keys.jks");
    exportcert(d, "keys.jks", "node-ec");
    keytool(
        d,
        &[
            "-importcert",
            "-noprompt",
            "-keystore",
            "keys.jks",
            "-storepass",
            PASS,
            "-alias",
            "trusted",
            "-file",
            "node-ec.export.der",
        ],
    );
    let with_trusted = read(d, "keys.jks");
    let seeds = [keys, mixed, with_trusted];

    let mut rng = ChaCha8Rng::seed_from_u64(0x4a4b_5321);
    let mut outcomes = BTreeMap::<&str, usize>::new();
    for round in 0..4000 {
        let mut data = seeds[round % seeds.len()].clone();
        for _ in 0..rng.random_range(1..=3) {
            mutate(&mut rng, &mut data);
        }
        let resealed = round % 2 == 0;
        if resealed {
            reseal(&mut data, PASS);
        }
        let outcome = match jks::parse(&data, PASS) {
            Ok(jks) => {
                for entry in &jks.entries {
                    if let Entry::PrivateKey { pkcs8, .. } = entry {
                        assert_eq!(pkcs8.first(), Some(&0x30), "a key that is not DER");
                    }
                }
                "ok"
            }
            Err(JksError::NotJks) => "not jks",
            Err(JksError::Jceks) => "jceks",
            Err(JksError::UnsupportedVersion(_)) => "version",
            Err(JksError::Truncated { .. }) => "truncated",
            Err(JksError::Corrupt { .. }) => "corrupt",
            // A correct digest over whatever the structure spans: never the password's fault.
            Err(JksError::WrongPassword) if resealed => panic!("resealed, yet wrong password"),
            Err(JksError::WrongPassword) => "wrong password",
            Err(JksError::KeyPasswordMismatch { .. }) => "key password",
            Err(JksError::UnsupportedKeyProtection { .. }) => "key protection",
            Err(JksError::UnsupportedCertType { .. }) => "cert type",
            Err(JksError::TrailingData { .. }) => "trailing",
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    for expected in [
        "ok",
        "truncated",
        "corrupt",
        "wrong password",
        "key password",
        "trailing",
    ] {
        assert!(
            outcomes.contains_key(expected),
            "never {expected}: {outcomes:?}"
        );
    }
    eprintln!("outcomes: {outcomes:?}");
}
