use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::yaml::{Keyed, Kind, Node, ParseError, Pos, last_wins, parse};
use super::*;

/// Derives from `yaml` written to a fresh directory, with CASSANDRA_HOME = /opt/cassandra.
fn derive_text(yaml: &str) -> Result<Derived, CassandraYamlError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cassandra.yaml");
    std::fs::write(&path, yaml).unwrap();
    derive_with_home(&path, Some(Path::new("/opt/cassandra")))
}

fn ok(yaml: &str) -> Derived {
    derive_text(yaml).unwrap_or_else(|e| panic!("{e}"))
}

fn tls(d: &Derived) -> &Table {
    d.table["tls"].as_table().unwrap()
}

fn listener<'d>(d: &'d Derived, kind: &str) -> &'d Table {
    d.table[kind].as_array().unwrap()[0].as_table().unwrap()
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

/// The keys the warnings are about, in order.
fn warned(d: &Derived) -> Vec<String> {
    d.warnings
        .iter()
        .map(|w| w.split([' ', ':']).next().unwrap().to_owned())
        .collect()
}

fn map<'n, 'a>(node: &'n Node<'a>) -> &'n [(Node<'a>, Node<'a>)] {
    match &node.kind {
        Kind::Map(entries) => entries,
        other => panic!("not a mapping: {other:?}"),
    }
}

#[test]
fn warnings_and_notes_stay_one_line() {
    // A cipher suite and an unknown key with a line break in them (found by the cassandra_yaml
    // fuzz target: the suite's name was quoted raw in the warning).
    let d = ok(
        "server_encryption_options:\n  cipher_suites: [\"TLS_ECDHE_RSA_WITH_AES_128_G\\nCM_SHA256\"]\n  \
                \"odd\\rkey\": 1\n",
    );
    for line in d.warnings.iter().chain(&d.notes) {
        assert!(!line.contains(['\n', '\r']), "{line:?}");
    }
    for shown in [
        r#"suite "TLS_ECDHE_RSA_WITH_AES_128_G\nCM_SHA256""#,
        r"odd\rkey (line 3)",
    ] {
        assert!(
            d.warnings.iter().any(|w| w.contains(shown)),
            "{shown} in {:?}",
            d.warnings
        );
    }
}

#[test]
fn scalars_keep_their_text_quoting_and_position() {
    let root = parse("a: 0123\nb: '0123'\nc: ~\nd:\ne: \"\"\nf: !!str 7000\ng: Null\n").unwrap();
    let entries = map(&root);
    let get = |k: &str| {
        &entries
            .iter()
            .find(|(key, _)| key.scalar() == Some(k))
            .unwrap()
            .1
    };
    assert!(matches!(&get("a").kind, Kind::Scalar { text, plain: true } if text == "0123"));
    assert!(matches!(&get("b").kind, Kind::Scalar { text, plain: false } if text == "0123"));
    assert!(get("c").is_null() && get("d").is_null() && get("g").is_null());
    assert!(!get("e").is_null(), "a quoted empty string is a value");
    assert!(
        matches!(&get("f").kind, Kind::Scalar { plain: false, .. }),
        "!!str is a string"
    );
    assert_eq!(get("b").at, Pos { line: 2, column: 4 });
}

#[test]
fn aliases_are_copied_and_bounded() {
    let root = parse("base: &ks conf/node.p12\nkeystore: *ks\n").unwrap();
    assert_eq!(map(&root)[1].1.scalar(), Some("conf/node.p12"));
    assert_eq!(
        map(&root)[1].1.at.line,
        2,
        "a copy is reported where the alias is"
    );

    // Ten levels of ten aliases each: 10^10 values if expanded.
    let mut bomb = String::from("l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let p = i - 1;
        bomb.push_str(&format!(
            "l{i}: &l{i} [*l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}]\n"
        ));
    }
    let Err(ParseError::Syntax { error, .. }) = parse(&bomb) else {
        panic!("an alias bomb was expanded");
    };
    assert_eq!(
        error.to_string(),
        "aliases expand to more than 100000 values"
    );
}

#[test]
fn parse_errors_and_empty_files() {
    let Err(ParseError::Syntax { error, at }) = parse("a: 1\nb:\n\tc: 2\n") else {
        panic!("tabs accepted");
    };
    let message = error.to_string();
    assert!(message.contains("tabs"), "{message}");
    assert_eq!(at.line, 3);
    for empty in ["", "\n\n", "# nothing\n", "---\n", "~\n"] {
        assert!(matches!(parse(empty), Err(ParseError::Empty)), "{empty:?}");
    }
    assert!(matches!(
        parse("a: 1\n---\nb: 2\n"),
        Err(ParseError::MultipleDocuments {
            at: Pos { line: 2, .. }
        })
    ));
    let deep = format!("a: {}{}\n", "[".repeat(100), "]".repeat(100));
    let Err(ParseError::Syntax { error, .. }) = parse(&deep) else {
        panic!("100 levels accepted");
    };
    assert_eq!(error.to_string(), "nested deeper than 64 levels");
}

#[test]
fn the_last_of_duplicate_keys_wins() {
    let root = parse("a: 1\nb: 2\na: 3\n[x]: 4\na: 5\n").unwrap();
    let Keyed {
        entries,
        duplicates: dups,
        odd,
    } = last_wins(map(&root));
    let flat: Vec<_> = entries
        .iter()
        .map(|(k, _, v)| (*k, v.scalar().unwrap()))
        .collect();
    assert_eq!(flat, [("b", "2"), ("a", "5")]);
    assert_eq!(dups, [("a", vec![1, 3, 5])]);
    assert_eq!(odd.len(), 1);

    let d = ok("storage_port: 7100\nstorage_port: 7200\nnum_tokens: 1\nnum_tokens: 2\n");
    assert_eq!(
        listener(&d, "inbound")["forward"].as_str(),
        Some("127.0.0.1:7200")
    );
    assert!(d.warnings.contains(
        &"storage_port (lines 1, 2): given 2 times; the last one counts, as in Cassandra".into()
    ));
    assert!(
        !d.warnings.iter().any(|w| w.contains("num_tokens")),
        "unread keys are not ours"
    );
}

#[test]
fn merge_keys_are_applied_as_snakeyaml_does() {
    let d = ok("listen_address: 10.0.0.1\n\
                client_encryption_options: &tls\n  keystore: /shared.p12\n  keystore_password: shared\n  \
                truststore: /shared-trust.p12\n\
                other: &strict {require_client_auth: true, keystore: /other.p12}\n\
                server_encryption_options:\n  <<: [*tls, *strict]\n  internode_encryption: none\n  \
                truststore: /own-trust.p12\n");
    let t = tls(&d);
    assert_eq!(
        t["keystore"].as_str(),
        Some("/shared.p12"),
        "the first merged mapping wins"
    );
    assert_eq!(t["keystore_password"].as_str(), Some("shared"));
    assert_eq!(
        t["truststore"].as_str(),
        Some("/own-trust.p12"),
        "own keys win"
    );
    assert_eq!(t["require_client_auth"].as_bool(), Some(true));
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
}

#[test]
fn found_values_are_described_by_their_yaml_type() {
    let root = parse(
        "a: 70000\nb: 1.5\nc: true\nd: maybe\ne: '7000'\nf: [1]\ng: {x: 1}\nh: ~\ni: |\n  one\n  two\n",
    )
    .unwrap();
    let found: Vec<String> = map(&root).iter().map(|(_, v)| v.describe()).collect();
    assert_eq!(
        found,
        [
            "integer 70000",
            "number 1.5",
            "boolean true",
            "string \"maybe\"",
            "string \"7000\"",
            "a list",
            "a mapping",
            "nothing (null)",
            "string \"one...\"",
        ]
    );
    let long = format!("a: {}\n", "x".repeat(100));
    let root = parse(&long).unwrap();
    assert_eq!(
        map(&root)[0].1.describe(),
        format!("string \"{}...\"", "x".repeat(57))
    );
}

#[test]
fn relative_paths_are_resolved_like_cassandra_s_working_directory() {
    let yaml = Path::new("/opt/apache-cassandra-4.1.5/conf/cassandra.yaml");
    assert_eq!(
        base_dir(yaml, Some(Path::new("/srv/cassandra"))),
        (PathBuf::from("/srv/cassandra"), "$CASSANDRA_HOME")
    );
    assert_eq!(
        base_dir(yaml, None).0,
        Path::new("/opt/apache-cassandra-4.1.5")
    );
    assert_eq!(
        base_dir(Path::new("/etc/cassandra/cassandra.yaml"), None).0,
        Path::new("/etc/cassandra")
    );
    let d =
        ok("server_encryption_options:\n  keystore: conf/node.p12\n  truststore: /etc/ts.p12\n");
    assert_eq!(
        tls(&d)["keystore"].as_str(),
        Some("/opt/cassandra/conf/node.p12")
    );
    assert_eq!(tls(&d)["truststore"].as_str(), Some("/etc/ts.p12"));
    assert!(d.notes.iter().any(|n| n.starts_with(
        "relative paths in server_encryption_options are resolved against /opt/cassandra ($CASSANDRA_HOME)"
    )));
}

#[test]
fn merge_overrides_key_by_key_and_replaces_arrays_whole() {
    let mut base: Table = toml::from_str(
        r#"
        mode = "strict"
        [tls]
        keystore = "/a.p12"
        require_client_auth = false
        protocols = ["TLSv1.2", "TLSv1.3"]
        [[inbound]]
        listen = "10.0.0.1:7001"
        forward = "10.0.0.1:7000"
        require_endpoint_verification = true
        "#,
    )
    .unwrap();
    let overrides: Table = toml::from_str(
        r#"
        [tls]
        require_client_auth = true
        protocols = ["TLSv1.3"]
        crl = ["/crl.pem"]
        [[inbound]]
        listen = "0.0.0.0:7001"
        forward = "127.0.0.1:7000"
        [metrics]
        listen = "127.0.0.1:9464"
        "#,
    )
    .unwrap();
    merge(&mut base, overrides);
    let expected: Table = toml::from_str(
        r#"
        mode = "strict"
        [tls]
        keystore = "/a.p12"
        require_client_auth = true
        protocols = ["TLSv1.3"]
        crl = ["/crl.pem"]
        [[inbound]]
        listen = "0.0.0.0:7001"
        forward = "127.0.0.1:7000"
        [metrics]
        listen = "127.0.0.1:9464"
        "#,
    )
    .unwrap();
    assert_eq!(base, expected);

    // A table replacing a scalar (and the other way round) replaces it whole.
    let mut base: Table = toml::from_str("tls = 1\n[limits]\nmax_connections = 5\n").unwrap();
    merge(
        &mut base,
        toml::from_str("limits = 2\n[tls]\nca = \"x\"\n").unwrap(),
    );
    assert_eq!(
        base,
        toml::from_str::<Table>("limits = 2\n[tls]\nca = \"x\"\n").unwrap()
    );
}

#[test]
fn passwords_never_appear_in_debug_or_the_printed_config() {
    let d = ok(
        "server_encryption_options:\n  keystore_password: hunter2-ks\n  truststore_password: hunter2-ts\n  \
         outbound_keystore: /o.p12\n  outbound_keystore_password: hunter2-out\n",
    );
    assert_eq!(tls(&d)["keystore_password"].as_str(), Some("hunter2-ks"));
    let debug = format!("{d:?}");
    let printed = d.to_toml_redacted();
    for text in [&debug, &printed] {
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }
    assert!(
        printed.contains("keystore_password = \"<redacted>\""),
        "{printed}"
    );
    assert!(
        printed.contains("outbound_keystore = \"/o.p12\""),
        "{printed}"
    );
}

#[test]
fn protocol_and_accepted_protocols_combine_as_in_cassandra_4() {
    let protocols = |seo: &str| {
        let d = ok(&format!(
            "listen_address: 10.0.0.1\nserver_encryption_options:\n{seo}"
        ));
        let kept = tls(&d).get("protocols").map(|p| strings(p).join(","));
        (kept, warned(&d))
    };
    assert_eq!(protocols("  protocol: TLS\n").0, None);
    assert_eq!(protocols("  protocol: tls\n").0, None);
    assert_eq!(
        protocols("  protocol: TLSv1.2\n").0.as_deref(),
        Some("TLSv1.2")
    );
    assert_eq!(
        protocols("  protocol: TLSv1.2\n  accepted_protocols: [TLSv1.3]\n")
            .0
            .as_deref(),
        Some("TLSv1.3,TLSv1.2"),
        "a specific protocol missing from accepted_protocols is added"
    );
    assert_eq!(
        protocols("  protocol: TLSv1.2\n  accepted_protocols: [TLSv1.2, TLSv1.3]\n")
            .0
            .as_deref(),
        Some("TLSv1.2,TLSv1.3")
    );
    assert_eq!(
        protocols("  accepted_protocols: [TLS, TLSv1]\n").0,
        None,
        "TLS: every version"
    );
    let (kept, warned) =
        protocols("  protocol: SSLv3\n  accepted_protocols: [TLSv1, SSLv2Hello]\n");
    assert_eq!(kept, None, "nothing usable: the defaults");
    let (p, ap) = (
        "server_encryption_options.protocol",
        "server_encryption_options.accepted_protocols",
    );
    assert_eq!(
        warned,
        [p, ap, ap, ap],
        "each refused name, then the fallback, in file order"
    );
}

#[test]
fn values_are_read_as_snakeyaml_reads_them() {
    let d = ok(
        "storage_port: \"7100\"\nssl_storage_port: 7_101\nlisten_address: 10.1.1.1\n\
                server_encryption_options:\n  require_client_auth: On\n  \
                require_endpoint_verification: YES\n  keystore_password: 0123\n  optional: no\n",
    );
    let inbound = listener(&d, "inbound");
    assert_eq!(inbound["forward"].as_str(), Some("10.1.1.1:7100"));
    assert_eq!(inbound["listen"].as_str(), Some("10.1.1.1:7101"));
    assert_eq!(
        inbound["require_endpoint_verification"].as_bool(),
        Some(true)
    );
    assert_eq!(tls(&d)["require_client_auth"].as_bool(), Some(true));
    assert_eq!(tls(&d)["keystore_password"].as_str(), Some("0123"));
    assert_eq!(d.table["mode"].as_str(), Some("strict"));
    assert_eq!(
        listener(&d, "outbound")["tls_port"].as_integer(),
        Some(7101)
    );
}

#[test]
fn a_file_without_server_encryption_options_gets_cassandra_s_defaults() {
    let d = ok("cluster_name: Defaults\nlisten_address: 127.0.0.1\nserver_encryption_options:\n");
    let expected: Table = toml::from_str(
        r#"
        cluster_name = "Defaults"
        mode = "strict"
        [tls]
        keystore = "/opt/cassandra/conf/.keystore"
        keystore_password = "cassandra"
        keystore_type = "jks"
        truststore = "/opt/cassandra/conf/.truststore"
        truststore_password = "cassandra"
        truststore_type = "jks"
        require_client_auth = false
        [[inbound]]
        listen = "127.0.0.1:7001"
        forward = "127.0.0.1:7000"
        require_endpoint_verification = false
        [[outbound]]
        listen = "127.0.0.1:7002"
        transparent = true
        tls_port = 7001
        require_endpoint_verification = false
        "#,
    )
    .unwrap();
    assert_eq!(d.table, expected);
    assert_eq!(d.cluster_name.as_deref(), Some("Defaults"));
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    assert!(
        d.notes
            .iter()
            .any(|n| n.starts_with("server_encryption_options is not set"))
    );

    let d = ok("num_tokens: 16\n");
    assert_eq!(d.cluster_name.as_deref(), Some("Test Cluster"));
    assert_eq!(
        d.warnings.len(),
        1,
        "listen_address is not set: {:?}",
        d.warnings
    );
}

#[test]
fn listen_address_forms() {
    let inbound = |yaml: &str| {
        let d = ok(yaml);
        let t = listener(&d, "inbound");
        let get = |k: &str| t.get(k).and_then(Value::as_str).map(str::to_owned);
        (
            format!("{:?} {:?}", get("listen"), get("forward")),
            warned(&d),
        )
    };
    let (addr, w) = inbound("listen_address: LocalHost\n");
    assert_eq!(addr, r#"Some("127.0.0.1:7001") Some("127.0.0.1:7000")"#);
    assert!(w.is_empty());
    let (addr, w) = inbound("listen_address: ::1\n");
    assert_eq!(addr, r#"Some("[::1]:7001") Some("[::1]:7000")"#);
    assert!(w.is_empty());
    let (addr, w) = inbound("listen_address:\n");
    assert_eq!(addr, r#"Some("127.0.0.1:7001") Some("127.0.0.1:7000")"#);
    assert_eq!(w, ["listen_address"]);
    let (addr, w) = inbound("listen_address: cass-1.example.com\n");
    assert_eq!(
        addr, "None None",
        "the ringseal config must give the address"
    );
    assert_eq!(w, ["listen_address"]);
    let (addr, w) = inbound("listen_interface: eth1\nlisten_interface_prefer_ipv6: true\n");
    assert_eq!(addr, "None None");
    assert_eq!(w, ["listen_interface"]);
    let d = ok("listen_interface: eth1\nlisten_interface_prefer_ipv6: true\n");
    assert!(
        d.warnings[0].contains("the first IPv6 address of eth1"),
        "{}",
        d.warnings[0]
    );
    let e = derive_text("listen_address: '::'\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.ends_with(
            "listen_address: :: is a wildcard address, which Cassandra refuses; give the \
             node's own IP address (line 1 column 17)"
        ),
        "{e}"
    );
}

#[test]
fn store_types() {
    let types = |seo: &str| {
        let d = ok(&format!(
            "listen_address: 10.0.0.1\nserver_encryption_options:\n{seo}"
        ));
        let t = tls(&d);
        let get = |k: &str| t.get(k).and_then(Value::as_str).map(str::to_owned);
        let (k, t) = (get("keystore_type"), get("truststore_type"));
        (k, t, warned(&d), d.notes.clone())
    };
    let (k, t, w, _) = types("  store_type: PKCS12\n");
    assert_eq!(
        (k.as_deref(), t.as_deref(), w.len()),
        (Some("pkcs12"), Some("pkcs12"), 0)
    );
    let (k, t, w, _) = types("  store_type: JCEKS\n");
    assert_eq!((k, t), (None, None));
    assert_eq!(
        w,
        ["server_encryption_options.store_type"],
        "one warning for both stores"
    );
    // DataStax Enterprise's per-store spellings win over store_type.
    let (k, t, w, _) = types("  store_type: JKS\n  keystore_type: PKCS12\n");
    assert_eq!(
        (k.as_deref(), t.as_deref(), w.len()),
        (Some("pkcs12"), Some("jks"), 0)
    );
    let (k, t, w, _) =
        types("  store_type: BCFKS\n  keystore_type: pkcs12\n  truststore_type: pem\n");
    assert_eq!(
        (k.as_deref(), t.as_deref(), w.len()),
        (Some("pkcs12"), Some("pem"), 0)
    );
    let (k, t, _, notes) = types(
        "  ssl_context_factory:\n    class_name: PEMBasedSslContextFactory\n  store_type: JKS\n  \
         truststore_password: x\n",
    );
    assert_eq!((k.as_deref(), t.as_deref()), (Some("pem"), Some("pem")));
    assert!(
        notes
            .iter()
            .any(|n| n.contains("store_type \"JKS\" is ignored")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("truststore_password is ignored")),
        "{notes:?}"
    );
}

#[test]
fn passwords_files_and_outbound_defaults() {
    let d = ok(
        "server_encryption_options:\n  keystore: /k.p12\n  keystore_password: pw\n  \
                keystore_password_file: conf/ks.pass\n  outbound_keystore: /o.p12\n",
    );
    let t = tls(&d);
    assert_eq!(t["keystore_password"].as_str(), Some("pw"));
    assert!(
        !t.contains_key("keystore_password_file"),
        "the password wins, as in Cassandra"
    );
    assert_eq!(t["outbound_keystore"].as_str(), Some("/o.p12"));
    assert_eq!(
        t["outbound_keystore_password"].as_str(),
        Some("pw"),
        "inherited"
    );
    assert_eq!(t["outbound_keystore_type"].as_str(), Some("jks"));
    assert!(
        d.notes
            .iter()
            .any(|n| n.contains("keystore_password_file is ignored"))
    );

    let d = ok(
        "server_encryption_options:\n  keystore_password_file: conf/ks.pass\n  \
                outbound_keystore_password: out\n",
    );
    let t = tls(&d);
    assert_eq!(
        t["keystore_password_file"].as_str(),
        Some("/opt/cassandra/conf/ks.pass")
    );
    assert_eq!(
        t["outbound_keystore"].as_str(),
        Some("/opt/cassandra/conf/.keystore")
    );
    assert_eq!(t["outbound_keystore_password"].as_str(), Some("out"));
}

#[test]
fn custom_ssl_context_factories_are_warned_with_their_parameters() {
    let d = ok(
        "listen_address: 10.0.0.1\nserver_encryption_options:\n  ssl_context_factory:\n    \
                class_name: com.example.VaultSslContextFactory\n    parameters:\n      \
                vault_path: secret/cassandra\n    extra: 1\n  keystore: /k.jks\n",
    );
    assert_eq!(
        warned(&d),
        [
            "server_encryption_options.ssl_context_factory.class_name",
            "server_encryption_options.ssl_context_factory.parameters.vault_path",
            "server_encryption_options.ssl_context_factory.extra",
        ]
    );
    assert_eq!(
        tls(&d)["keystore"].as_str(),
        Some("/k.jks"),
        "still read as a file"
    );
    let d = ok(
        "listen_address: 10.0.0.1\nserver_encryption_options:\n  ssl_context_factory:\n    \
                class_name: DefaultSslContextFactory\n    parameters:\n      unknown: 1\n",
    );
    assert_eq!(
        warned(&d),
        ["server_encryption_options.ssl_context_factory.parameters.unknown"]
    );
}

#[test]
fn cipher_suites_that_cover_one_version_restrict_the_protocols() {
    let d = ok("listen_address: 10.0.0.1\nserver_encryption_options:\n  \
                cipher_suites: [TLS_AES_128_GCM_SHA256]\n");
    assert_eq!(strings(&tls(&d)["protocols"]), ["TLSv1.3"]);
    assert!(
        d.notes
            .iter()
            .any(|n| n.contains("names no suite for TLSv1.2, so it is off"))
    );

    // TLS 1.3 only, but only TLS 1.2 suites: nothing fits, ringseal's default suites are used.
    let d = ok(
        "listen_address: 10.0.0.1\nserver_encryption_options:\n  accepted_protocols: [TLSv1.3]\n  \
                cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]\n",
    );
    assert_eq!(strings(&tls(&d)["protocols"]), ["TLSv1.3"]);
    assert!(!tls(&d).contains_key("cipher_suites"));
    assert_eq!(warned(&d), ["server_encryption_options.cipher_suites"]);

    // Nothing usable at all.
    let d = ok("listen_address: 10.0.0.1\nserver_encryption_options:\n  \
                cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA, SSL_RSA_WITH_RC4_128_MD5]\n");
    assert!(!tls(&d).contains_key("cipher_suites"));
    assert_eq!(warned(&d).len(), 3);
    assert!(
        d.warnings[2]
            .ends_with("none of the listed suites can be used; ringseal's default suites are used")
    );
}

#[test]
fn unknown_keys_are_warned_about_even_when_empty() {
    let d = ok(
        "listen_address: 10.0.0.1\nserver_encryption_options:\n  internode_encryption: none\n  \
                keystore:\n  algorithm: ~\n  ca_file:\n  trust_all: ~\n",
    );
    assert_eq!(
        warned(&d),
        [
            "server_encryption_options.ca_file",
            "server_encryption_options.trust_all"
        ]
    );
    assert_eq!(
        tls(&d)["keystore"].as_str(),
        Some("/opt/cassandra/conf/.keystore"),
        "null: the default"
    );
}

#[test]
fn optional_on_loopback_needs_no_non_loopback_plaintext() {
    let d = ok("listen_address: 127.0.0.1\nserver_encryption_options:\n  optional: true\n");
    assert_eq!(d.table["mode"].as_str(), Some("permissive"));
    assert!(!listener(&d, "inbound").contains_key("allow_non_loopback_plaintext"));
}

#[test]
fn the_trunk_client_auth_values() {
    for (value, written) in [
        ("true", toml::Value::from(true)),
        ("REQUIRED", true.into()),
        ("false", false.into()),
        ("not_required", false.into()),
        ("optional", "optional".into()),
    ] {
        let d = ok(&format!(
            "server_encryption_options:\n  require_client_auth: {value}\n"
        ));
        assert_eq!(tls(&d)["require_client_auth"], written, "{value}");
    }
}

#[test]
fn other_internode_authenticators_are_warned_and_allow_all_is_not() {
    for quiet in [
        "internode_authenticator: org.apache.cassandra.auth.AllowAllInternodeAuthenticator\n",
        "internode_authenticator: AllowAllInternodeAuthenticator\n",
        "internode_authenticator:\n  class_name: AllowAllInternodeAuthenticator\n",
        "internode_authenticator:\n",
    ] {
        let d = ok(&format!("listen_address: 10.0.0.1\n{quiet}"));
        assert!(d.warnings.is_empty(), "{quiet}: {:?}", d.warnings);
    }
    let d = ok("listen_address: 10.0.0.1\ninternode_authenticator: com.example.IpAllowList\n");
    assert_eq!(warned(&d), ["internode_authenticator"]);
}

/// cert-manager mounts a PKCS#12 keystore with its password in a file, and a PEM CA: a ringseal file
/// naming them over a cassandra.yaml without server_encryption_options (whose derivation names
/// Cassandra's default stores and password) replaces those defaults instead of clashing with them.
#[test]
fn file_alternatives_replace_the_derived_ones() {
    let d = ok("listen_address: 10.0.0.1\n");
    let derived = tls(&d).clone();
    assert!(derived.contains_key("keystore_password"), "{derived:?}");
    assert!(derived.contains_key("truststore"), "{derived:?}");
    let mut base = d.table.clone();
    let overrides: Table = toml::from_str(
        "[tls]\nkeystore = \"/tls/keystore.p12\"\nkeystore_password_file = \"/pw/password\"\n\
         ca = \"/tls/ca.crt\"\n",
    )
    .unwrap();
    merge(&mut base, overrides);
    let t = base["tls"].as_table().unwrap();
    assert_eq!(t["keystore"].as_str(), Some("/tls/keystore.p12"));
    assert_eq!(t["keystore_password_file"].as_str(), Some("/pw/password"));
    assert_eq!(t["ca"].as_str(), Some("/tls/ca.crt"));
    for gone in [
        "keystore_password",
        "truststore",
        "truststore_password",
        "truststore_type",
    ] {
        assert!(!t.contains_key(gone), "{gone} kept: {t:?}");
    }
    // PEM identity files replace a derived keystore; a keystore replaces derived PEM files.
    let mut base: Table = toml::from_str(
        "[tls]\nkeystore = \"/a.p12\"\nkeystore_password = \"x\"\nkeystore_type = \"pkcs12\"\n",
    )
    .unwrap();
    merge(
        &mut base,
        toml::from_str("[tls]\ncert = \"/n.crt\"\nkey = \"/n.key\"\n").unwrap(),
    );
    assert_eq!(
        base,
        toml::from_str::<Table>("[tls]\ncert = \"/n.crt\"\nkey = \"/n.key\"\n").unwrap()
    );
    let mut base: Table = toml::from_str("[tls]\ncert = \"/n.crt\"\nkey = \"/n.key\"\n").unwrap();
    merge(
        &mut base,
        toml::from_str("[tls]\nkeystore = \"/a.p12\"\n").unwrap(),
    );
    assert_eq!(
        base,
        toml::from_str::<Table>("[tls]\nkeystore = \"/a.p12\"\n").unwrap()
    );
}

/// Under Kubernetes listen_address is the pod IP, known only when cass-operator renders cassandra.yaml:
/// a file `[[inbound]]` without addresses adds its allow-list to the derived listener; one with
/// addresses replaces it whole, as before.
#[test]
fn a_file_inbound_without_addresses_takes_the_derived_ones() {
    let d = ok("listen_address: 10.1.2.3\n");
    let mut base = d.table.clone();
    merge(
        &mut base,
        toml::from_str("[[inbound]]\nallow = { dns = [\"*.svc.ns.svc.cluster.local\"] }\n")
            .unwrap(),
    );
    let inbound = base["inbound"].as_array().unwrap()[0].as_table().unwrap();
    assert_eq!(inbound["listen"].as_str(), Some("10.1.2.3:7001"));
    assert_eq!(inbound["forward"].as_str(), Some("10.1.2.3:7000"));
    assert!(inbound.contains_key("allow"));
    // Only the addresses are filled in: the derived endpoint verification is not.
    assert!(!inbound.contains_key("require_endpoint_verification"));

    let mut base = d.table.clone();
    merge(
        &mut base,
        toml::from_str("[[inbound]]\nlisten = \"0.0.0.0:7001\"\n").unwrap(),
    );
    let inbound = base["inbound"].as_array().unwrap()[0].as_table().unwrap();
    assert_eq!(inbound["listen"].as_str(), Some("0.0.0.0:7001"));
    assert!(!inbound.contains_key("forward"));
}

fn client_listener(d: &Derived) -> Option<&Table> {
    d.table["inbound"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_table)
        .find(|l| l.get("name").and_then(Value::as_str) == Some("client"))
}

const CLIENT_ON: &str =
    "native_transport_port_ssl: 9142\nclient_encryption_options:\n  enabled: true\n";

#[test]
fn every_client_encryption_key_is_mapped_or_warned() {
    let d = ok(&format!(
        "listen_address: 10.0.0.1\nrpc_address: 10.0.0.1\n{CLIENT_ON}  internode_encryption: all\n  \
         outbound_keystore: /o.p12\n  keystore_pasword: x\n  algorithm: SunX509\n  keystore: ~\n"
    ));
    let ceo = |k: &str| format!("client_encryption_options.{k}");
    assert_eq!(
        warned(&d),
        [
            ceo("enabled"),
            ceo("internode_encryption"),
            ceo("outbound_keystore"),
            ceo("keystore_pasword"),
            ceo("algorithm"),
        ]
    );
    assert!(d.warnings[1].ends_with(
        "a server_encryption_options setting, not one of client_encryption_options (Cassandra \
         refuses it here); ignored"
    ));
    assert!(d.warnings[3].contains("not a client_encryption_options setting"));
    let client = client_listener(&d).unwrap();
    assert_eq!(
        client["tls"]["keystore"].as_str(),
        Some("/opt/cassandra/conf/.keystore"),
        "null: Cassandra's default"
    );
    assert!(
        !client["tls"]
            .as_table()
            .unwrap()
            .contains_key("outbound_keystore"),
        "a server key is not taken from the client section"
    );
}

#[test]
fn rpc_address_forms_for_the_client_listener() {
    let addresses = |rpc: &str| {
        let d = ok(&format!("listen_address: 10.0.0.1\n{rpc}{CLIENT_ON}"));
        let addr = client_listener(&d).map(|c| {
            format!(
                "{} -> {}",
                c["listen"].as_str().unwrap(),
                c["forward"].as_str().unwrap()
            )
        });
        let warned: Vec<String> = warned(&d)
            .into_iter()
            .filter(|w| !w.starts_with("client_encryption_options.enabled"))
            .collect();
        (addr, warned, d.client_template.is_some())
    };
    let (addr, w, _) = addresses("rpc_address: localhost\n");
    assert_eq!(addr.as_deref(), Some("127.0.0.1:9142 -> 127.0.0.1:9042"));
    assert!(w.is_empty());
    let (addr, _, _) = addresses("rpc_address: 0.0.0.0\n");
    assert_eq!(addr.as_deref(), Some("0.0.0.0:9142 -> 127.0.0.1:9042"));
    let (addr, _, _) = addresses("rpc_address: '::'\n");
    assert_eq!(addr.as_deref(), Some("[::]:9142 -> [::1]:9042"));
    for (rpc, key) in [
        ("", "rpc_address"),
        ("rpc_address: cass-1.example.com\n", "rpc_address"),
        ("rpc_interface: eth0\n", "rpc_interface"),
        (
            "rpc_address: 10.0.0.1\nrpc_interface: eth0\n",
            "rpc_interface",
        ),
    ] {
        let (addr, w, template) = addresses(rpc);
        assert_eq!(addr, None, "{rpc:?}: the ringseal config must give them");
        assert_eq!(w, [key], "{rpc:?}");
        assert!(
            template,
            "{rpc:?}: a file listener named client is still completed"
        );
    }
}

#[test]
fn no_client_listener_without_a_cql_server_or_a_client_section() {
    let d = ok(&format!(
        "rpc_address: 10.0.0.1\nstart_native_transport: false\n{CLIENT_ON}"
    ));
    assert!(client_listener(&d).is_none());
    assert_eq!(warned(&d), ["listen_address", "start_native_transport"]);
    let d = ok("listen_address: 10.0.0.1\n");
    assert!(client_listener(&d).is_none() && d.client_template.is_none());
    assert!(d.notes.iter().any(|n| n.starts_with(
        "client_encryption_options is not set: Cassandra serves CQL clients without TLS on \
         native_transport_port 9042, and no client listener is derived"
    )));
    // The same port twice is one port: TLS only there, no plaintext port to forward to.
    let d = ok(
        "rpc_address: 10.0.0.1\nlisten_address: 10.0.0.1\nnative_transport_port_ssl: 9042\n\
                client_encryption_options:\n  enabled: true\n",
    );
    assert!(client_listener(&d).is_none());
    assert!(d.warnings[0].contains("true without a separate native_transport_port_ssl"));
}
