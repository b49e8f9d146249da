//! Crafted stores for what keytool never writes (version 1, foreign algorithms and types, duplicate
//! aliases, odd aliases). cli/tests/integration/jks.rs covers real keytool files.

use super::*;

const PASSWORD: &str = "changeit";

fn utf(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u16::try_from(bytes.len()).unwrap().to_be_bytes());
    out.extend_from_slice(bytes);
}

fn len_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap().to_be_bytes());
    out.extend_from_slice(bytes);
}

fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match contents.len() {
        n @ 0..0x80 => out.push(n as u8),
        n @ 0x80..0x100 => out.extend_from_slice(&[0x81, n as u8]),
        n => out.extend([0x82].into_iter().chain((n as u16).to_be_bytes())),
    }
    out.extend_from_slice(contents);
    out
}

/// A fake PKCS#8 key: one DER SEQUENCE of `contents` bytes, distinct per `seed`.
fn fake_key(contents: usize, seed: u8) -> Vec<u8> {
    der(
        DER_SEQUENCE,
        &(0..contents).map(|i| seed ^ i as u8).collect::<Vec<_>>(),
    )
}

/// KeyProtector.protect, with a fixed salt, wrapped as EncryptedPrivateKeyInfo with `oid`.
fn protect(key: &[u8], password: &str, oid: &[u8]) -> Vec<u8> {
    let password = password_bytes(password);
    let mut data = vec![0x5a; SALT_LEN];
    let mut block = [0x5a; SHA1_LEN];
    for chunk in key.chunks(SHA1_LEN) {
        block = sha1(&[&password, &block]);
        data.extend(chunk.iter().zip(block).map(|(k, s)| k ^ s));
    }
    data.extend_from_slice(&sha1(&[&password, key]));
    let mut algorithm = der(DER_OID, oid);
    algorithm.extend_from_slice(&[0x05, 0x00]);
    let mut info = der(DER_SEQUENCE, &algorithm);
    info.extend(der(DER_OCTET_STRING, &data));
    der(DER_SEQUENCE, &info)
}

fn cert(seed: u8) -> Vec<u8> {
    der(DER_SEQUENCE, &[seed; 40])
}

/// What `engineStore` writes, for `version`, sealed with `password`.
struct Writer {
    version: u32,
    entries: Vec<Vec<u8>>,
}

impl Writer {
    fn new(version: u32) -> Self {
        Writer {
            version,
            entries: Vec::new(),
        }
    }

    fn cert_bytes(&self, out: &mut Vec<u8>, cert_type: &str, der: &[u8]) {
        if self.version == 2 {
            utf(out, cert_type.as_bytes());
        }
        len_prefixed(out, der);
    }

    fn key(mut self, alias: &[u8], protected: &[u8], chain: &[Vec<u8>]) -> Self {
        let mut e = TAG_PRIVATE_KEY.to_be_bytes().to_vec();
        utf(&mut e, alias);
        e.extend_from_slice(&1_700_000_000_000u64.to_be_bytes());
        len_prefixed(&mut e, protected);
        e.extend_from_slice(&u32::try_from(chain.len()).unwrap().to_be_bytes());
        for c in chain {
            self.cert_bytes(&mut e, "X.509", c);
        }
        self.entries.push(e);
        self
    }

    fn trusted(mut self, alias: &[u8], cert_type: &str, der: &[u8]) -> Self {
        let mut e = TAG_TRUSTED_CERT.to_be_bytes().to_vec();
        utf(&mut e, alias);
        e.extend_from_slice(&1_700_000_000_000u64.to_be_bytes());
        self.cert_bytes(&mut e, cert_type, der);
        self.entries.push(e);
        self
    }

    fn raw(mut self, entry: Vec<u8>) -> Self {
        self.entries.push(entry);
        self
    }

    fn seal(&self, password: &str) -> Vec<u8> {
        let mut out = JKS_MAGIC.to_vec();
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&u32::try_from(self.entries.len()).unwrap().to_be_bytes());
        for e in &self.entries {
            out.extend_from_slice(e);
        }
        let digest = sha1(&[&password_bytes(password), INTEGRITY_SALT, &out]);
        out.extend_from_slice(&digest);
        out
    }
}

#[test]
fn version_1_and_2_stores_read_alike() {
    let key = fake_key(300, 7);
    let chain = vec![cert(1), cert(2)];
    let protected = protect(&key, PASSWORD, KEY_PROTECTOR_OID);
    let expected = Jks {
        entries: vec![
            Entry::PrivateKey {
                alias: "node1".into(),
                pkcs8: key.clone(),
                chain: chain.clone(),
            },
            Entry::TrustedCert {
                alias: "ca".into(),
                der: cert(3),
            },
        ],
    };
    for version in [1, 2] {
        let store = Writer::new(version)
            .key(b"node1", &protected, &chain)
            .trusted(b"ca", "X.509", &cert(3))
            .seal(PASSWORD);
        assert_eq!(
            parse(&store, PASSWORD).unwrap(),
            expected,
            "version {version}"
        );
    }
}

#[test]
fn key_stream_is_right_at_every_length_around_block_boundaries() {
    // Keys of 2 to 133 bytes: every length modulo the 20-byte SHA-1 block, several times.
    for contents in 0..=130 {
        let key = fake_key(contents, contents as u8);
        let len = key.len();
        let store = Writer::new(2)
            .key(
                b"k",
                &protect(&key, PASSWORD, KEY_PROTECTOR_OID),
                &[cert(1)],
            )
            .seal(PASSWORD);
        let jks = parse(&store, PASSWORD).unwrap();
        let Entry::PrivateKey { pkcs8, .. } = &jks.entries[0] else {
            panic!("not a key entry")
        };
        assert_eq!(pkcs8, &key, "key length {len}");
    }
}

#[test]
fn non_ascii_passwords_hash_as_java_utf16_code_units() {
    // U+1D11E is one Rust char but two Java chars (a surrogate pair): both sides must agree.
    let password = "pässwörd-\u{1D11E}";
    assert_eq!(password_bytes(password).len(), 2 * 11);
    let key = fake_key(100, 1);
    let store = Writer::new(2)
        .key(b"k", &protect(&key, password, KEY_PROTECTOR_OID), &[])
        .seal(password);
    let jks = parse(&store, password).unwrap();
    assert_eq!(
        jks.entries,
        vec![Entry::PrivateKey {
            alias: "k".into(),
            pkcs8: key,
            chain: vec![]
        }]
    );
    assert!(matches!(
        parse(&store, "pässwörd-"),
        Err(JksError::WrongPassword)
    ));
}

#[test]
fn a_different_key_password_is_named_with_the_alias() {
    let protected = protect(&fake_key(100, 1), "otherpass", KEY_PROTECTOR_OID);
    let store = Writer::new(2)
        .key(b"node1", &protected, &[cert(1)])
        .seal(PASSWORD);
    let err = parse(&store, PASSWORD).unwrap_err();
    assert!(
        matches!(&err, JksError::KeyPasswordMismatch { alias } if alias == "node1"),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("\"node1\"") && text.contains("differs"),
        "{text}"
    );
}

#[test]
fn unsupported_key_protection_names_the_oid() {
    // PBES2 (1.2.840.113549.1.5.13), as a PKCS#12 store or `openssl pkcs8 -topk8` would use.
    let pbes2 = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05, 0x0d];
    let store = Writer::new(2)
        .key(b"node1", &protect(&fake_key(100, 1), PASSWORD, &pbes2), &[])
        .seal(PASSWORD);
    let err = parse(&store, PASSWORD).unwrap_err();
    assert!(
        matches!(&err, JksError::UnsupportedKeyProtection { alias, oid }
            if alias == "node1" && oid == "1.2.840.113549.1.5.13"),
        "{err:?}"
    );
    assert_eq!(oid_to_string(KEY_PROTECTOR_OID), "1.3.6.1.4.1.42.2.17.1.1");
    assert_eq!(oid_to_string(&[0x88, 0x37]), "2.999");
    assert_eq!(oid_to_string(&[0x2a, 0x86]), "(a malformed OID of 2 bytes)");
    assert_eq!(oid_to_string(&[0xff; 12]), "(a malformed OID of 12 bytes)");
}

#[test]
fn the_integrity_digest_is_checked_before_any_key_is_looked_at() {
    let store = Writer::new(2)
        .key(b"a", &protect(&fake_key(100, 1), "otherpass", &[0x2a]), &[])
        .key(b"b", b"not DER at all", &[])
        .seal(PASSWORD);
    assert!(matches!(
        parse(&store, "wrongpass"),
        Err(JksError::WrongPassword)
    ));
    assert!(matches!(
        parse(&store, PASSWORD),
        Err(JksError::UnsupportedKeyProtection { .. })
    ));
}

#[test]
fn certificate_types_other_than_x509_are_named() {
    for accepted in ["X.509", "x.509", "X509"] {
        let store = Writer::new(2)
            .trusted(b"ca", accepted, &cert(1))
            .seal(PASSWORD);
        assert!(parse(&store, PASSWORD).is_ok(), "{accepted}");
    }
    let store = Writer::new(2)
        .trusted(b"ca", "PGP", &cert(1))
        .seal(PASSWORD);
    let err = parse(&store, PASSWORD).unwrap_err();
    assert!(
        matches!(&err, JksError::UnsupportedCertType { alias, cert_type }
            if alias == "ca" && cert_type == "PGP"),
        "{err:?}"
    );
}

#[test]
fn aliases_decode_like_java_read_utf() {
    // NUL as C0 80, U+00E9 in two bytes, U+1D11E as a CESU-8 surrogate pair, a lone surrogate.
    let cases: [(&[u8], &str); 4] = [
        (b"a\xc0\x80b", "a\0b"),
        (b"caf\xc3\xa9", "café"),
        (b"\xed\xa0\xb4\xed\xb4\x9e", "\u{1D11E}"),
        (b"x\xed\xa0\xb4", "x\u{FFFD}"),
    ];
    for (raw, alias) in cases {
        let store = Writer::new(2)
            .trusted(raw, "X.509", &cert(1))
            .seal(PASSWORD);
        let jks = parse(&store, PASSWORD).unwrap();
        assert_eq!(jks.entries[0].alias(), alias);
    }
    // Malformed: a continuation byte first, a 4-byte UTF-8 lead, a cut 3-byte form.
    for (raw, bad_at) in [
        (&b"ab\x80"[..], 2),
        (b"\xf0\x9d\x84\x9e", 0),
        (b"a\xe0\x80", 3),
    ] {
        let store = Writer::new(2)
            .trusted(raw, "X.509", &cert(1))
            .seal(PASSWORD);
        let err = parse(&store, PASSWORD).unwrap_err();
        // The alias starts after magic, version, count, tag and its u16 length.
        let offset = 4 + 4 + 4 + 4 + 2 + bad_at;
        assert!(
            matches!(&err, JksError::Corrupt { offset: o, field, .. }
                if *o == offset && field == "entry 1: alias"),
            "{raw:?}: {err:?}"
        );
    }
}

#[test]
fn duplicate_aliases_and_unknown_tags_are_corrupt() {
    let store = Writer::new(2)
        .trusted(b"ca", "X.509", &cert(1))
        .trusted(b"ca", "X.509", &cert(2))
        .seal(PASSWORD);
    let err = parse(&store, PASSWORD).unwrap_err();
    assert!(
        err.to_string()
            .contains("entry 2: alias: \"ca\" appears twice"),
        "{err}"
    );

    let mut entry = 3u32.to_be_bytes().to_vec();
    utf(&mut entry, b"x");
    let store = Writer::new(2).raw(entry).seal(PASSWORD);
    let err = parse(&store, PASSWORD).unwrap_err();
    assert!(
        matches!(&err, JksError::Corrupt { offset: 12, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("unknown entry type 3"), "{err}");
}

#[test]
fn headers_other_than_jks_versions_1_and_2_are_refused() {
    assert!(matches!(parse(b"", PASSWORD), Err(JksError::NotJks)));
    assert!(matches!(
        parse(&[0xfe, 0xed], PASSWORD),
        Err(JksError::NotJks)
    ));
    assert!(matches!(
        parse(&[0x30, 0x82, 1, 2], PASSWORD),
        Err(JksError::NotJks)
    ));
    assert!(matches!(
        parse(&JCEKS_MAGIC, PASSWORD),
        Err(JksError::Jceks)
    ));
    assert!(is_jks(&JKS_MAGIC) && !is_jks(&JCEKS_MAGIC) && !is_jks(b"\xfe\xed\xfe"));
    assert!(is_jceks(&JCEKS_MAGIC) && !is_jceks(&JKS_MAGIC));
    let err = parse(&JKS_MAGIC, PASSWORD).unwrap_err();
    assert_eq!(
        err.to_string(),
        "truncated or corrupt: version at offset 4 needs 4 bytes, only 0 left"
    );
    for version in [0, 3, 0xffff_ffff] {
        let mut store = Writer::new(version).seal(PASSWORD);
        store.truncate(8);
        assert!(matches!(
            parse(&store, PASSWORD),
            Err(JksError::UnsupportedVersion(v)) if v == version
        ));
    }
    assert_eq!(
        parse(&Writer::new(2).seal(PASSWORD), PASSWORD)
            .unwrap()
            .entries,
        vec![]
    );
}

#[test]
fn huge_declared_counts_and_lengths_fail_without_allocating() {
    // Entry count, then (in the one entry) key length, chain count and certificate length.
    let mut store = Writer::new(2).seal(PASSWORD);
    store[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
    // The digest is read as the first entry, whose alias then runs past the end.
    let err = parse(&store, PASSWORD).unwrap_err();
    assert!(
        matches!(&err, JksError::Truncated { field, .. } if field == "entry 1: alias"),
        "{err:?}"
    );

    let protected = protect(&fake_key(100, 1), PASSWORD, KEY_PROTECTOR_OID);
    let store = Writer::new(2)
        .key(b"k", &protected, &[cert(1)])
        .seal(PASSWORD);
    let key_len_at = 12 + 4 + 2 + 1 + 8;
    let chain_count_at = key_len_at + 4 + protected.len();
    let cert_len_at = chain_count_at + 4 + 2 + 5;
    for (at, field) in [
        (key_len_at, "protected key"),
        // Certificate 1 is there; certificate 2's type length is read from the digest.
        (chain_count_at, "certificate 2 type"),
        (cert_len_at, "certificate 1"),
    ] {
        let mut bad = store.clone();
        bad[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        let err = parse(&bad, PASSWORD).unwrap_err();
        assert!(
            matches!(&err, JksError::Truncated { field: f, .. }
                if f == &format!("entry 1 (\"k\"): {field}")),
            "{field}: {err:?}"
        );
    }
}

#[test]
fn trailing_bytes_and_a_missing_digest_are_refused() {
    let mut store = Writer::new(2)
        .trusted(b"ca", "X.509", &cert(1))
        .seal(PASSWORD);
    let len = store.len();
    store.push(0);
    let err = parse(&store, PASSWORD).unwrap_err();
    assert!(
        matches!(err, JksError::TrailingData { offset, len: 1 } if offset == len),
        "{err:?}"
    );
    store.truncate(len - 1);
    let err = parse(&store, PASSWORD).unwrap_err();
    assert!(err.to_string().contains("integrity digest"), "{err}");
}

#[test]
fn der_reader_refuses_indefinite_high_tag_and_oversized_lengths() {
    assert_eq!(
        der_element(&[0x30, 0x80, 0, 0]),
        Err("indefinite DER length")
    );
    assert_eq!(
        der_element(&[0x1f, 0x01, 0]),
        Err("unsupported high-number DER tag")
    );
    assert_eq!(
        der_element(&[0x30, 0x85, 1, 1, 1, 1, 1]),
        Err("DER length over 4 bytes")
    );
    assert_eq!(
        der_element(&[0x30, 0x84, 0xff, 0xff]),
        Err("DER length cut short")
    );
    assert_eq!(
        der_element(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff, 0]),
        Err("DER length runs past the data")
    );
    assert_eq!(der_element(&[0x30]), Err("DER element cut short"));
    assert_eq!(
        der_element(&[0x04, 0x81, 1, 9, 8]),
        Ok((0x04, &[9][..], &[8][..]))
    );
    assert_eq!(
        der_only(&[0x30, 0, 0], DER_SEQUENCE),
        Err("bytes after the DER element")
    );
    // A key blob that is not DER, with a valid store digest.
    let store = Writer::new(2).key(b"k", b"\x30\x80", &[]).seal(PASSWORD);
    let err = parse(&store, PASSWORD).unwrap_err();
    assert!(
        err.to_string()
            .contains("protected key: not an EncryptedPrivateKeyInfo: indefinite DER length"),
        "{err}"
    );
}

#[test]
fn debug_output_shows_no_key_bytes_and_errors_no_password() {
    let key = fake_key(64, 0xab);
    let redacted = format!("<{} bytes, redacted>", key.len());
    let store = Writer::new(2)
        .key(
            b"node1",
            &protect(&key, PASSWORD, KEY_PROTECTOR_OID),
            &[cert(1)],
        )
        .seal(PASSWORD);
    let jks = parse(&store, PASSWORD).unwrap();
    let debug = format!("{jks:?}");
    assert!(
        debug.contains("node1") && debug.contains(&redacted),
        "{debug}"
    );
    assert!(!debug.contains("171"), "a key byte (0xab) leaked: {debug}");

    let secret = "s3cr3t-Pa55";
    let errors = [
        parse(&store, secret).unwrap_err(),
        parse(&store[..50], secret).unwrap_err(),
        parse(
            &Writer::new(2)
                .key(b"k", &protect(&key, "other", KEY_PROTECTOR_OID), &[])
                .seal(secret),
            secret,
        )
        .unwrap_err(),
    ];
    for err in errors {
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains(secret), "{text}");
        }
    }
}
