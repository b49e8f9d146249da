//! `--cassandra-yaml`: a ringseal config derived from realistic cassandra.yaml files of Cassandra 3.11,
//! 4.0, 4.1 (its new key spellings), 5.0 (PEM, outbound keystore, the 5.0 authenticator) and trunk
//! (password files), in `testdata/cassandra-yaml/`. Each derived table is compared key by key, every
//! warning is checked to name its key, a ringseal config overrides the derived one, and every file of
//! `testdata/cassandra-yaml/invalid/` (plus generated garbage) fails with its exact message. No network,
//! no ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ringseal::config::cassandra::{Derived, derive, derive_with_home, merge};
use ringseal::config::{Config, FileConfig, Mode, Target};
use ringseal::pki::files::{load_ca, write_ca, write_node};
use ringseal::pki::{KeyType, NodeSpec};
use ringseal_testkit::tools::{have, run};
use toml::{Table, Value};

/// The fixtures folder, as the derived absolute paths spell it.
fn dir() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join("testdata/cassandra-yaml")
}

fn fixture(name: &str) -> PathBuf {
    dir().join(name)
}

fn derive_fixture(name: &str, home: Option<&str>) -> Derived {
    derive_with_home(&fixture(name), home.map(Path::new)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A TOML table; `{dir}` stands for the fixtures folder.
fn table(text: &str) -> Table {
    toml::from_str(&text.replace("{dir}", &dir().to_string_lossy())).unwrap()
}

/// Compares two tables key by key and names the first key that differs.
fn assert_table_eq(actual: &Table, expected: &Table, at: &str) {
    for (key, want) in expected {
        let path = format!("{at}{key}");
        let Some(got) = actual.get(key) else {
            panic!("{path}: missing, expected {want}");
        };
        assert_value_eq(got, want, &path);
    }
    for key in actual.keys() {
        assert!(
            expected.contains_key(key),
            "{at}{key}: not expected, but derived as {}",
            actual[key]
        );
    }
}

fn assert_value_eq(got: &Value, want: &Value, path: &str) {
    match (got, want) {
        (Value::Table(g), Value::Table(w)) => assert_table_eq(g, w, &format!("{path}.")),
        (Value::Array(g), Value::Array(w)) if g.iter().all(Value::is_table) => {
            assert_eq!(g.len(), w.len(), "{path}: number of tables");
            for (i, (g, w)) in g.iter().zip(w).enumerate() {
                assert_value_eq(g, w, &format!("{path}[{i}]"));
            }
        }
        _ => assert_eq!(got, want, "{path}"),
    }
}

/// The key each warning is about (what stands before " (line" or ":"), in order.
fn warned(d: &Derived) -> Vec<&str> {
    d.warnings
        .iter()
        .map(|w| w.split([' ', ':']).next().unwrap())
        .collect()
}

fn has_note(d: &Derived, text: &str) -> bool {
    d.notes.iter().any(|n| n.contains(text))
}

const SEO: &str = "server_encryption_options";
const CEO: &str = "client_encryption_options";

#[test]
fn cassandra_3_11_tarball_with_java_keystores() {
    let d = derive_fixture("cassandra-3.11/conf/cassandra.yaml", None);
    let expected = table(
        r#"
        cluster_name = "Payments Prod"
        mode = "strict"
        [tls]
        keystore = "{dir}/cassandra-3.11/conf/.keystore"
        keystore_password = "Kx9!prod"
        keystore_type = "jks"
        truststore = "/etc/cassandra/ssl/truststore.jks"
        truststore_password = "123456"
        truststore_type = "jks"
        protocols = ["TLSv1.2"]
        cipher_suites = ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"]
        require_client_auth = true
        [[inbound]]
        listen = "10.20.0.11:7001"
        forward = "10.20.0.11:7000"
        require_endpoint_verification = true
        [[outbound]]
        listen = "127.0.0.1:7002"
        transparent = true
        tls_port = 7001
        require_endpoint_verification = true
        "#,
    );
    assert_table_eq(&d.table, &expected, "");
    assert_eq!(d.cluster_name.as_deref(), Some("Payments Prod"));
    let seo = |k: &str| format!("{SEO}.{k}");
    assert_eq!(
        warned(&d),
        [
            seo("internode_encryption"),
            seo("algorithm"),
            seo("cipher_suites"),
            seo("cipher_suites"),
            seo("cipher_suites"),
        ]
    );
    assert!(d.warnings[0].starts_with(&format!(
        "{SEO}.internode_encryption (line 89): \"all\": Cassandra still encrypts internode traffic itself"
    )));
    assert!(d.warnings[2].contains(
        "\"TLS_RSA_WITH_AES_128_CBC_SHA\" is refused: CBC mode (MAC-then-encrypt, padding-oracle \
         attacks such as Lucky13; rustls implements only AEAD ciphers) and no forward secrecy"
    ));
    assert!(
        d.warnings[4].contains("\"TLS_DHE_RSA_WITH_AES_128_CBC_SHA\" is refused")
            && d.warnings[4].contains("Use TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
        "the replacement is named: {}",
        d.warnings[4]
    );
    assert!(has_note(
        &d,
        "cipher_suites names no suite for TLSv1.3, so it is off, as in Java"
    ));
    assert!(has_note(
        &d,
        &format!(
            "resolved against {} (the parent of the yaml's conf directory",
            dir().join("cassandra-3.11").display()
        )
    ));
    assert!(
        !d.warnings.iter().any(|w| w.contains("client_encryption")),
        "client TLS is off: nothing to warn about"
    );
    assert!(has_note(
        &d,
        "client_encryption_options.enabled is false: Cassandra serves CQL clients without TLS on \
         native_transport_port 9042, and no client listener is derived"
    ));
}

#[test]
fn cassandra_4_0_in_the_middle_of_cassandra_s_own_migration() {
    let d = derive_fixture("cassandra-4.0.yaml", None);
    let expected = table(
        r#"
        cluster_name = "Orders"
        mode = "permissive"
        [tls]
        keystore = "/etc/cassandra/tls/node.p12"
        keystore_password = "cassandra"
        keystore_type = "pkcs12"
        truststore = "/etc/cassandra/tls/truststore.p12"
        truststore_password = "cassandra"
        truststore_type = "pkcs12"
        protocols = ["TLSv1.2", "TLSv1.3"]
        cipher_suites = [
            "TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256",
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        ]
        require_client_auth = true
        [[inbound]]
        listen = "10.30.1.5:7001"
        forward = "10.30.1.5:7000"
        require_endpoint_verification = false
        allow_non_loopback_plaintext = true
        [[outbound]]
        listen = "127.0.0.1:7002"
        transparent = true
        tls_port = 7001
        require_endpoint_verification = false
        "#,
    );
    assert_table_eq(&d.table, &expected, "");
    assert_eq!(
        warned(&d),
        [
            format!("{SEO}.internode_encryption"),
            format!("{SEO}.accepted_protocols"),
            format!("{SEO}.cipher_suites"),
            format!("{CEO}.enabled"),
        ]
    );
    assert!(d.warnings[3].starts_with(&format!(
        "{CEO}.enabled (line 101): true without a separate native_transport_port_ssl: Cassandra \
         itself takes TLS on native_transport_port 9042 and serves no plaintext port for ringseal to \
         forward to, so no client listener is derived"
    )));
    assert!(d.warnings[1].contains("protocol \"TLSv1.1\" is refused"));
    assert!(d.warnings[2].contains("\"TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA\" is refused"));
    assert!(has_note(
        &d,
        "optional is true: mode = \"permissive\", so peers without TLS are still served during the \
         migration, and inbound allow_non_loopback_plaintext = true, because Cassandra accepted that \
         plaintext on 10.30.1.5"
    ));
    assert!(
        !has_note(&d, "relative paths"),
        "every path is absolute: {:?}",
        d.notes
    );
}

#[test]
fn cassandra_4_1_spellings_ipv6_ports_and_datacenter_encryption() {
    let d = derive_fixture("cassandra-4.1.yaml", None);
    let expected = table(
        r#"
        cluster_name = "Telemetry EU"
        mode = "strict"
        [tls]
        keystore = "/etc/cassandra/tls/keystore.jks"
        keystore_password = "changeit"
        keystore_type = "jks"
        truststore = "/etc/cassandra/tls/truststore.jks"
        truststore_password = "changeit"
        truststore_type = "jks"
        protocols = ["TLSv1.2"]
        require_client_auth = true
        [[inbound]]
        listen = "[fd00:41::11]:7011"
        forward = "[fd00:41::11]:7010"
        require_endpoint_verification = true
        [[outbound]]
        listen = "127.0.0.1:7002"
        transparent = true
        tls_port = 7011
        require_endpoint_verification = true
        "#,
    );
    assert_table_eq(&d.table, &expected, "");
    assert_eq!(
        d.warnings,
        [
            "listen_on_broadcast_address (line 54): Cassandra also listens on broadcast_address \
             192.0.2.41; add a second [[inbound]] with listen = \"192.0.2.41:7011\" to the ringseal \
             config"
                .to_owned(),
            format!(
                "{SEO}.internode_encryption (line 85): \"dc\": ringseal encrypts all internode \
                 traffic, also between nodes in the same datacenter; set internode_encryption: none \
                 in cassandra.yaml when ringseal takes over (Cassandra's own TLS cannot run behind \
                 ringseal)"
            ),
        ]
    );
}

#[test]
fn cassandra_4_1_as_shipped() {
    let d = derive_fixture("cassandra-4.1-default.yaml", None);
    let expected = table(
        r#"
        cluster_name = "Test Cluster"
        mode = "strict"
        [tls]
        keystore = "{dir}/conf/.keystore"
        keystore_password = "cassandra"
        keystore_type = "jks"
        truststore = "{dir}/conf/.truststore"
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
    );
    assert_table_eq(&d.table, &expected, "");
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    assert!(has_note(
        &d,
        "internode_encryption is none: Cassandra itself sends plaintext, and ringseal encrypts all \
         internode traffic"
    ));
    assert!(has_note(
        &d,
        "require_client_auth is false (Cassandra's default): peers without a certificate are accepted"
    ));
    assert!(has_note(
        &d,
        &format!(
            "resolved against {} (the yaml's directory; set $CASSANDRA_HOME if Cassandra runs \
             elsewhere)",
            dir().display()
        )
    ));
}

#[test]
fn cassandra_5_0_pem_files_outbound_keystore_and_mutual_tls_authenticator() {
    let d = derive_fixture("cassandra-5.0.yaml", Some("/opt/cassandra"));
    let expected = table(
        r#"
        cluster_name = "Search Cluster"
        mode = "strict"
        [tls]
        keystore = "/opt/cassandra/conf/tls/node.pem"
        keystore_type = "pem"
        outbound_keystore = "/opt/cassandra/conf/tls/node-client.pem"
        outbound_keystore_type = "pem"
        truststore = "/opt/cassandra/conf/tls/ca.pem"
        truststore_type = "pem"
        protocols = ["TLSv1.3"]
        cipher_suites = ["TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"]
        require_client_auth = true
        [[inbound]]
        listen = "127.0.0.1:7001"
        forward = "127.0.0.1:7000"
        require_endpoint_verification = true
        [[outbound]]
        listen = "127.0.0.1:7002"
        transparent = true
        tls_port = 7001
        require_endpoint_verification = true
        "#,
    );
    assert_table_eq(&d.table, &expected, "");
    assert_eq!(warned(&d), ["internode_authenticator"]);
    assert!(d.warnings[0].starts_with(
        "internode_authenticator (line 67): org.apache.cassandra.auth.MutualTlsInternodeAuthenticator: \
         ringseal does not run Cassandra's internode authenticators"
    ));
    assert!(has_note(
        &d,
        "resolved against /opt/cassandra ($CASSANDRA_HOME)"
    ));
    assert!(
        !has_note(&d, "password"),
        "PEM keys get no default password: {:?}",
        d.notes
    );
}

#[test]
fn cassandra_5_0_inline_pem_is_named_in_warnings_and_not_used() {
    let d = derive_fixture("cassandra-5.0-pem-inline.yaml", None);
    let expected = table(
        r#"
        cluster_name = "Inline PEM"
        mode = "strict"
        [tls]
        require_client_auth = true
        [[inbound]]
        listen = "10.50.0.7:7001"
        forward = "10.50.0.7:7000"
        require_endpoint_verification = false
        [[outbound]]
        listen = "127.0.0.1:7002"
        transparent = true
        tls_port = 7001
        require_endpoint_verification = false
        "#,
    );
    assert_table_eq(&d.table, &expected, "");
    let params = format!("{SEO}.ssl_context_factory.parameters");
    assert_eq!(
        warned(&d),
        [
            format!("{params}.private_key"),
            format!("{params}.private_key_password"),
            format!("{params}.trusted_certificates"),
        ]
    );
    assert_eq!(
        d.warnings[0],
        format!(
            "{params}.private_key (line 18): inline PEM material is not read by ringseal; write it \
             to a file and set tls.keystore to it (type \"pem\") in the ringseal config"
        )
    );
    let everything = format!("{d:?} {}", d.to_toml_redacted());
    assert!(
        !everything.contains("pem-key-secret") && !everything.contains("MIIF"),
        "inline secrets are never repeated"
    );
}

#[test]
fn cassandra_trunk_password_files_and_keys_ringseal_cannot_honour() {
    let d = derive_fixture("cassandra-trunk.yaml", None);
    let expected = table(
        r#"
        cluster_name = "Trunk"
        mode = "strict"
        [tls]
        keystore = "/etc/cassandra/tls/node.p12"
        keystore_password_file = "{dir}/tls/keystore.password"
        keystore_type = "pkcs12"
        outbound_keystore = "/etc/cassandra/tls/client.p12"
        outbound_keystore_password_file = "/etc/cassandra/tls/client.password"
        outbound_keystore_type = "pkcs12"
        truststore = "/etc/cassandra/tls/truststore.p12"
        truststore_password_file = "{dir}/tls/truststore.password"
        truststore_type = "pkcs12"
        require_client_auth = "optional"
        [[inbound]]
        listen = "10.60.0.2:7001"
        forward = "10.60.0.2:7000"
        require_endpoint_verification = false
        [[outbound]]
        listen = "127.0.0.1:7002"
        transparent = true
        tls_port = 7001
        require_endpoint_verification = true
        "#,
    );
    assert_table_eq(&d.table, &expected, "");
    let seo = |k: &str| format!("{SEO}.{k}");
    assert_eq!(
        warned(&d),
        [
            seo("internode_encryption"),
            seo("enabled"),
            seo("algorithm"),
            seo("max_certificate_validity_period"),
            seo("certificate_validity_warn_threshold"),
            seo("cipher_suits"),
        ]
    );
    assert_eq!(
        d.warnings[5],
        format!(
            "{SEO}.cipher_suits (line 28): not a server_encryption_options setting of any Cassandra \
             version (Cassandra refuses unknown keys); ignored"
        )
    );
    assert!(has_note(&d, "require_client_auth is optional"));
    assert!(has_note(
        &d,
        "require_endpoint_verification: only outbound connections check the peer's address"
    ));
}

#[test]
fn a_ringseal_config_overrides_the_derived_one() {
    let mut d = derive_fixture("cassandra-3.11/conf/cassandra.yaml", None);
    let overrides: Table =
        toml::from_str(&std::fs::read_to_string(fixture("ringseal-override.toml")).unwrap())
            .unwrap();
    merge(&mut d.table, overrides);
    let expected = table(
        r#"
        cluster_name = "Payments Prod"
        mode = "permissive"
        [tls]
        keystore = "{dir}/cassandra-3.11/conf/.keystore"
        keystore_password = "Kx9!prod"
        keystore_type = "jks"
        truststore = "/etc/ringseal/cluster-ca.p12"
        truststore_password = "123456"
        truststore_type = "pkcs12"
        protocols = ["TLSv1.3", "TLSv1.2"]
        cipher_suites = ["TLS_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]
        require_client_auth = true
        crl = ["/etc/ringseal/cluster.crl"]
        [[inbound]]
        listen = "0.0.0.0:7001"
        forward = "10.20.0.11:7000"
        allow_non_loopback_plaintext = true
        require_endpoint_verification = true
        allow = { ou = ["Payments Prod"] }
        [[outbound]]
        listen = "127.0.0.1:7002"
        transparent = true
        tls_port = 7001
        require_endpoint_verification = true
        [metrics]
        listen = "127.0.0.1:9464"
        "#,
    );
    assert_table_eq(&d.table, &expected, "");
}

/// Every derived table has the shape of a ringseal config: the file structs (which refuse unknown keys)
/// accept it, so no key is misspelt.
#[test]
fn derived_tables_are_ringseal_configs() {
    for (name, home) in [
        ("cassandra-3.11/conf/cassandra.yaml", None),
        ("cassandra-4.0.yaml", None),
        ("cassandra-4.1.yaml", None),
        ("cassandra-4.1-default.yaml", None),
        ("cassandra-5.0.yaml", Some("/opt/cassandra")),
        ("cassandra-5.0-pem-inline.yaml", None),
        ("cassandra-trunk.yaml", None),
        ("cassandra-3.11-client.yaml", None),
        ("cassandra-4.1-client.yaml", None),
        ("cassandra-5.0-client.yaml", Some("/opt/cassandra")),
    ] {
        let d = derive_fixture(name, home);
        if let Err(e) = Value::Table(d.table).try_into::<FileConfig>() {
            panic!("{name}: {e}");
        }
    }
}

/// Derives from `yaml` (written as CASSANDRA_HOME/conf/cassandra.yaml) and loads the result the way
/// `run` does, every store included.
fn load(home: &Path, yaml: &str) -> Config {
    let path = home.join("conf/cassandra.yaml");
    std::fs::write(&path, yaml).unwrap();
    let d = derive_with_home(&path, Some(home)).unwrap_or_else(|e| panic!("{e}"));
    let file: FileConfig = Value::Table(d.table)
        .try_into()
        .unwrap_or_else(|e| panic!("{e}"));
    file.validate(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// `config` with the key material it names loaded, as `ringseal run` does after validating.
fn load_material(home: &Path, config: Config) -> Config<ringseal::tls::LoadedTls> {
    ringseal::load_tls(config, &home.join("conf/cassandra.yaml")).unwrap_or_else(|e| panic!("{e}"))
}

/// A cluster CA and node1 (127.0.0.1) in `home/ca` and `home/node`, as `ringseal certs` writes them.
fn pki(home: &Path) {
    write_ca(
        &home.join("ca"),
        "Payments Prod",
        KeyType::default(),
        30,
        false,
    )
    .unwrap();
    let ca = load_ca(&home.join("ca")).unwrap();
    let spec = NodeSpec::new("node1", &["127.0.0.1".parse().unwrap()]);
    write_node(&ca, &spec, &home.join("node"), Some("p12-pass"), false).unwrap();
    std::fs::create_dir_all(home.join("conf")).unwrap();
}

/// The 3.11 way: JKS keystore and truststore at Cassandra's default relative paths, made with the
/// keytool commands of the tutorials, derived and loaded as `run` loads them.
#[test]
fn a_derived_config_loads_keytool_jks_stores_at_cassandra_s_default_paths() {
    if !have(&["keytool"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    pki(home);
    run(
        home,
        "keytool",
        &[
            "-importkeystore",
            "-noprompt",
            "-srckeystore",
            "node/node1.p12",
            "-srcstoretype",
            "PKCS12",
            "-srcstorepass",
            "p12-pass",
            "-destkeystore",
            "conf/.keystore",
            "-deststoretype",
            "JKS",
            "-deststorepass",
            "ks-pass",
            "-destkeypass",
            "ks-pass",
        ],
    );
    run(
        home,
        "keytool",
        &[
            "-importcert",
            "-noprompt",
            "-trustcacerts",
            "-alias",
            "ca",
            "-file",
            "ca/ca.crt",
            "-keystore",
            "conf/.truststore",
            "-storetype",
            "JKS",
            "-storepass",
            "ts-pass",
        ],
    );
    let config = load(
        home,
        "cluster_name: 'Payments Prod'\nlisten_address: 127.0.0.1\nserver_encryption_options:\n    \
         internode_encryption: none\n    keystore: conf/.keystore\n    keystore_password: ks-pass\n    \
         truststore: conf/.truststore\n    truststore_password: ts-pass\n    store_type: JKS\n    \
         require_client_auth: true\n    require_endpoint_verification: true\n",
    );
    let config = load_material(home, config);
    assert!(config.tls.material.identity.subject.contains("node1"));
    assert_eq!(config.tls.material.cas.len(), 1);
    assert_eq!(
        config.tls.require_client_auth,
        ringseal::tls::settings::ClientAuth::Required
    );
    let inbound = &config.inbound[0];
    assert_eq!(
        inbound.listen,
        "127.0.0.1:7001".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(
        inbound.forward,
        "127.0.0.1:7000".parse::<SocketAddr>().unwrap()
    );
    assert!(inbound.require_endpoint_verification);
    assert_eq!(inbound.mode, Mode::Strict);
    let outbound = &config.outbound[0];
    assert_eq!(outbound.target, Target::Transparent { tls_port: 7001 });
    assert!(outbound.require_endpoint_verification);
}

/// The 5.0 way: PEMBasedSslContextFactory with PEM files (key + chain in one) and a separate outbound
/// keystore, derived and loaded; a wrong keystore password is reported on ringseal's key, with the
/// cassandra.yaml key it came from.
#[test]
fn a_derived_config_loads_pem_stores_and_an_outbound_keystore() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    pki(home);
    let read = |p: &str| std::fs::read_to_string(home.join(p)).unwrap();
    let pem = format!("{}{}", read("node/node1.key"), read("node/node1.crt"));
    std::fs::create_dir_all(home.join("conf/tls")).unwrap();
    std::fs::write(home.join("conf/tls/node.pem"), &pem).unwrap();
    std::fs::write(home.join("conf/tls/client.pem"), &pem).unwrap();
    std::fs::write(home.join("conf/tls/ca.pem"), read("ca/ca.crt")).unwrap();
    let config = load(
        home,
        "listen_address: 127.0.0.1\nserver_encryption_options:\n  internode_encryption: none\n  \
         keystore: conf/tls/node.pem\n  ssl_context_factory:\n    class_name: \
         org.apache.cassandra.security.PEMBasedSslContextFactory\n  outbound_keystore: \
         conf/tls/client.pem\n  truststore: conf/tls/ca.pem\n  require_client_auth: true\n  \
         optional: true\n",
    );
    let config = load_material(home, config);
    assert!(config.tls.material.identity.subject.contains("node1"));
    assert!(
        config.tls.material.outbound.is_some(),
        "the outbound keystore is loaded"
    );
    assert_eq!(config.inbound[0].mode, Mode::Permissive);

    // The PKCS#12 keystore with the wrong password: ringseal's message names the cassandra.yaml key.
    let path = home.join("conf/cassandra.yaml");
    std::fs::write(
        &path,
        "listen_address: 127.0.0.1\nserver_encryption_options:\n  keystore: node/node1.p12\n  \
         keystore_password: not-the-password\n  truststore: conf/tls/ca.pem\n  truststore_type: pem\n  \
         store_type: PKCS12\n",
    )
    .unwrap();
    let d = derive_with_home(&path, Some(home)).unwrap();
    let file: FileConfig = Value::Table(d.table).try_into().unwrap();
    let err = ringseal::load_tls(file.validate(&path).unwrap(), &path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("wrong password")
            && err.contains("server_encryption_options.keystore_password"),
        "{err}"
    );
    assert!(!err.contains("not-the-password"), "{err}");
}

/// Every file of `testdata/cassandra-yaml/invalid/` and the exact message it fails with (after
/// "cassandra.yaml <path>: ").
const INVALID: &[(&str, &str)] = &[
    (
        "ringseal-config.toml",
        "top level: expected a mapping of settings (key: value lines), found string \"mode = \
         \\\"strict\\\"...\" (line 2 column 1); this is TOML (a ringseal config?): pass the ringseal \
         config with --config and the node's cassandra.yaml with --cassandra-yaml",
    ),
    (
        "tabs.yaml",
        "not valid YAML: tabs disallowed within this context (block indentation) (line 4 column 2); \
         YAML indents with spaces, never tabs",
    ),
    (
        "unclosed-list.yaml",
        "not valid YAML: illegal placement of ':' indicator (line 4 column 22)",
    ),
    (
        "two-documents.yaml",
        "a second YAML document starts at line 3; Cassandra reads exactly one, so remove the `---` \
         line and what follows it",
    ),
    (
        "comments-only.yaml",
        "the file has no settings (it is empty or only comments); give the node's real \
         cassandra.yaml",
    ),
    (
        "storage-port-string.yaml",
        "storage_port: expected a port number from 1 to 65535, found string \"seven\" (line 2 \
         column 15)",
    ),
    (
        "ssl-storage-port-out-of-range.yaml",
        "ssl_storage_port: expected a port number from 1 to 65535, found integer 70000 (line 3 \
         column 19)",
    ),
    (
        "storage-port-negative.yaml",
        "storage_port: expected a port number from 1 to 65535, found integer -7000 (line 1 column \
         15)",
    ),
    (
        "require-client-auth-list.yaml",
        "server_encryption_options.require_client_auth: expected a boolean (or \"optional\", \
         Cassandra after 5.0), found a list (line 4 column 26)",
    ),
    (
        "require-client-auth-maybe.yaml",
        "server_encryption_options.require_client_auth: expected a boolean (or \"optional\", \
         Cassandra after 5.0), found string \"maybe\" (line 10 column 26)",
    ),
    (
        "endpoint-verification-quoted-string.yaml",
        "server_encryption_options.require_endpoint_verification: expected a boolean, found string \
         \"sometimes\" (line 2 column 34)",
    ),
    (
        "optional-number.yaml",
        "server_encryption_options.optional: expected a boolean, found integer 1 (line 3 column 13)",
    ),
    (
        "server-encryption-options-scalar.yaml",
        "server_encryption_options: expected a mapping (key: value lines indented below it), found \
         string \"all\" (line 2 column 28)",
    ),
    (
        "cipher-suites-string.yaml",
        "server_encryption_options.cipher_suites: expected a list of strings, found string \
         \"TLS_AES_128_GCM_SHA256\" (line 3 column 18); write it as a list, e.g. [TLSv1.2, TLSv1.3]",
    ),
    (
        "accepted-protocols-nested.yaml",
        "server_encryption_options.accepted_protocols entry: expected a string, found a list (line \
         5 column 7)",
    ),
    (
        "keystore-mapping.yaml",
        "server_encryption_options.keystore: expected a string, found a mapping (line 4 column 5)",
    ),
    (
        "cluster-name-list.yaml",
        "cluster_name: expected a string, found a list (line 1 column 15)",
    ),
    (
        "internode-authenticator-list.yaml",
        "internode_authenticator: expected a class name, or a mapping with class_name, found a list \
         (line 1 column 26)",
    ),
    (
        "internode-encryption-unknown.yaml",
        "server_encryption_options.internode_encryption: \"ALL\" is not one of none, all, dc, rack \
         (Cassandra spells them in lower case) (line 2 column 25)",
    ),
    (
        "listen-address-wildcard.yaml",
        "listen_address: 0.0.0.0 is a wildcard address, which Cassandra refuses; give the node's own \
         IP address (line 2 column 17)",
    ),
    (
        "listen-address-and-interface.yaml",
        "listen_interface: is set together with listen_address, which Cassandra refuses (\"Set \
         listen_address OR listen_interface, not both\"); keep one (line 3 column 19)",
    ),
    (
        "same-ports.yaml",
        "ssl_storage_port: equals storage_port (7000), but ringseal takes TLS on ssl_storage_port \
         and forwards it to storage_port; give them different ports (Cassandra's defaults are 7000 \
         and 7001) (line 3 column 19)",
    ),
    (
        "legacy-port-both-spellings.yaml",
        "server_encryption_options.enable_legacy_ssl_storage_port: is given together with \
         legacy_ssl_storage_port_enabled, its 4.1 name, which Cassandra refuses; keep one of them \
         (line 4 column 3)",
    ),
];

#[test]
fn invalid_files_fail_with_the_expected_message() {
    for (name, message) in INVALID {
        let path = fixture("invalid").join(name);
        let err = derive(&path).expect_err(name).to_string();
        assert_eq!(
            err,
            format!("cassandra.yaml {}: {message}", path.display()),
            "{name}"
        );
        assert!(!err.contains('\n'), "one line: {err}");
    }
}

/// Input that cannot be kept as a fixture file: binary garbage, nothing, no file, a directory, a
/// huge file.
#[test]
fn garbage_empty_missing_and_huge_files() {
    let tmp = tempfile::tempdir().unwrap();
    let case = |name: &str, bytes: &[u8]| {
        let path = tmp.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let err = derive(&path).unwrap_err().to_string();
        let prefix = format!("cassandra.yaml {}: ", path.display());
        assert!(err.starts_with(&prefix), "{err}");
        err[prefix.len()..].to_owned()
    };
    assert_eq!(
        case("png.yaml", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"),
        "not a text file (invalid UTF-8 at byte 0); give the node's cassandra.yaml"
    );
    assert_eq!(
        case("latin1.yaml", b"cluster_name: 'Z\xfcrich'\n"),
        "not a text file (invalid UTF-8 at byte 16); give the node's cassandra.yaml"
    );
    assert_eq!(
        case("control.yaml", b"\0\x01\x02\x03garbage\x7f"),
        "not valid YAML: found unprintable character (line 1 column 1)"
    );
    assert_eq!(
        case("empty.yaml", b""),
        "the file has no settings (it is empty or only comments); give the node's real \
         cassandra.yaml"
    );
    assert_eq!(
        case("list.yaml", b"- cluster_name: x\n"),
        "top level: expected a mapping of settings (key: value lines), found a list (line 1 \
         column 1)"
    );

    let missing = tmp.path().join("nope/cassandra.yaml");
    assert_eq!(
        derive(&missing).unwrap_err().to_string(),
        format!(
            "cassandra.yaml {}: cannot read: No such file or directory (os error 2) (check the path \
             given to --cassandra-yaml)",
            missing.display()
        )
    );
    assert_eq!(
        derive(tmp.path()).unwrap_err().to_string(),
        format!(
            "cassandra.yaml {}: is a directory, not a regular file; name the file itself (check the \
             path given to --cassandra-yaml)",
            tmp.path().display()
        )
    );
    let huge = tmp.path().join("huge.yaml");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(17 << 20)
        .unwrap();
    assert_eq!(
        derive(&huge).unwrap_err().to_string(),
        format!(
            "cassandra.yaml {}: is 17.0 MiB, more than the 16.0 MiB ringseal reads for a \
             cassandra.yaml; is this the right file? (check the path given to --cassandra-yaml)",
            huge.display()
        )
    );
    // A character device (unbounded) and a FIFO (no writer: opening it would hang): refused at once.
    let e = derive(std::path::Path::new("/dev/zero"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("is a character device, not a regular file"),
        "{e}"
    );
    let fifo = tmp.path().join("fifo.yaml");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let e = derive(&fifo).unwrap_err().to_string();
    assert!(e.contains("is a FIFO, not a regular file"), "{e}");
}

/// A cassandra.yaml saved by a Windows editor (byte order mark, CRLF) reads the same.
#[test]
fn byte_order_mark_and_crlf_line_ends() {
    let text = std::fs::read_to_string(fixture("cassandra-4.0.yaml")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (unix, windows) = (
        tmp.path().join("unix.yaml"),
        tmp.path().join("windows.yaml"),
    );
    std::fs::write(&unix, &text).unwrap();
    std::fs::write(&windows, format!("\u{feff}{}", text.replace('\n', "\r\n"))).unwrap();
    let (unix, windows) = (
        derive_with_home(&unix, None).unwrap(),
        derive_with_home(&windows, None).unwrap(),
    );
    assert_table_eq(&windows.table, &unix.table, "");
    assert_eq!(windows.warnings, unix.warnings);
}

/// `derive` reads CASSANDRA_HOME, which only matters for relative paths: the 4.0 file has none.
#[test]
fn derive_reads_cassandra_home_only_for_relative_paths() {
    let path = fixture("cassandra-4.0.yaml");
    let from_env = derive(&path).unwrap();
    let given = derive_with_home(&path, Some(Path::new("/somewhere/else"))).unwrap();
    assert_table_eq(&from_env.table, &given.table, "");
    assert_eq!(from_env.warnings, given.warnings);
    assert_eq!(from_env.notes, given.notes);
}

/// Every fixture is used by a test above: a file added without a test fails here.
#[test]
fn every_fixture_is_tested() {
    let tested_valid = [
        "cassandra-3.11/conf/cassandra.yaml",
        "cassandra-4.0.yaml",
        "cassandra-4.1.yaml",
        "cassandra-4.1-default.yaml",
        "cassandra-5.0.yaml",
        "cassandra-5.0-pem-inline.yaml",
        "cassandra-trunk.yaml",
        "ringseal-override.toml",
        "cassandra-3.11-client.yaml",
        "cassandra-4.1-client.yaml",
        "cassandra-5.0-client.yaml",
    ];
    let mut found = Vec::new();
    let mut dirs = vec![dir()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let rel = path
                    .strip_prefix(dir())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                found.push(rel);
            }
        }
    }
    for rel in found {
        let tested = tested_valid.contains(&rel.as_str())
            || rel
                .strip_prefix("invalid/")
                .is_some_and(|name| INVALID.iter().any(|(n, _)| *n == name));
        assert!(tested, "{rel} is not used by any test");
    }
}

/// The derived client listener (`[[inbound]]` named "client"), if any.
fn client(table: &Table) -> Option<&Table> {
    table["inbound"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_table)
        .find(|l| l.get("name").and_then(Value::as_str) == Some("client"))
}

/// 3.11 with a dedicated TLS port for drivers (native_transport_port_ssl): the client listener takes
/// TLS there and forwards to the plaintext native_transport_port; the suites of the 3.11 tutorials
/// are warned about one by one, and Cassandra holding the TLS port itself is named.
#[test]
fn cassandra_3_11_dedicated_cql_tls_port() {
    let d = derive_fixture("cassandra-3.11-client.yaml", Some("/opt/cassandra"));
    let expected = table(
        r#"
        name = "client"
        listen = "10.20.0.17:9142"
        forward = "10.20.0.17:9042"
        [tls]
        keystore = "/etc/cassandra/ssl/cql-server.jks"
        keystore_password = "cql-Kx9"
        keystore_type = "jks"
        protocols = ["TLSv1.2"]
        cipher_suites = ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]
        require_client_auth = false
        "#,
    );
    assert_table_eq(
        client(&d.table).expect("a client listener"),
        &expected,
        "client.",
    );
    assert_eq!(d.table["inbound"].as_array().unwrap().len(), 2);
    let ceo = |k: &str| format!("{CEO}.{k}");
    let mut expected_warnings = vec![ceo("enabled"), ceo("algorithm")];
    expected_warnings.extend(std::iter::repeat_n(ceo("cipher_suites"), 6));
    assert_eq!(warned(&d), expected_warnings);
    assert_eq!(
        d.warnings[0],
        format!(
            "{CEO}.enabled (line 34): true: Cassandra itself also listens with TLS on \
             native_transport_port_ssl 9142, the port of ringseal's client listener, and only one \
             of them can. To hand client TLS to ringseal, set enabled: false (Cassandra then serves \
             plaintext on native_transport_port 9042 only, where ringseal forwards) and add an \
             [[inbound]] with name = \"client\" to the ringseal config: it is completed from {CEO}"
        )
    );
    assert!(d.warnings[2].contains("\"TLS_RSA_WITH_AES_128_CBC_SHA\" is refused"));
    assert!(has_note(
        &d,
        "client_encryption_options.truststore is not used"
    ));
    assert!(has_note(
        &d,
        "client_encryption_options.cipher_suites names no suite for TLSv1.3, so it is off"
    ));
    // The internode [tls] is not the client's: a separate keystore, no truststore of its own.
    assert_eq!(
        d.table["tls"]["keystore"].as_str(),
        Some("/opt/cassandra/conf/.keystore")
    );
}

/// 4.1 during a migration: every address (rpc_address 0.0.0.0, so Cassandra is reached on
/// loopback), optional: true (permissive client listener), client certificates from their own CA,
/// and protocols that do not inherit the internode listener's TLS 1.3-only setting.
#[test]
fn cassandra_4_1_client_certificates_during_a_migration() {
    let d = derive_fixture("cassandra-4.1-client.yaml", None);
    let expected = table(
        r#"
        name = "client"
        listen = "0.0.0.0:9142"
        forward = "127.0.0.1:9042"
        mode = "permissive"
        allow_non_loopback_plaintext = true
        [tls]
        keystore = "/etc/cassandra/tls/cql.p12"
        keystore_password = "cql-secret"
        keystore_type = "pkcs12"
        truststore = "/etc/cassandra/tls/clients-ca.p12"
        truststore_password = "cql-trust"
        truststore_type = "pkcs12"
        protocols = ["TLSv1.2", "TLSv1.3"]
        cipher_suites = [
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
        ]
        require_client_auth = true
        "#,
    );
    assert_table_eq(
        client(&d.table).expect("a client listener"),
        &expected,
        "client.",
    );
    assert_eq!(
        d.table["tls"]["protocols"],
        Value::Array(vec!["TLSv1.3".into()])
    );
    assert_eq!(warned(&d), [format!("{CEO}.enabled")]);
    assert!(has_note(
        &d,
        "client_encryption_options.optional is true: the client listener has mode = \"permissive\""
    ));
    assert_eq!(
        d.table["mode"].as_str(),
        Some("strict"),
        "internode stays strict"
    );
}

/// 5.0 after client TLS was handed to ringseal (enabled: false, Cassandra on 9043 in plaintext, 9042
/// named as native_transport_port_ssl): no listener is derived, `check` says so, and the ringseal
/// config's `[[inbound]]` named "client" is completed from client_encryption_options (PEM files,
/// optional client certificates).
#[test]
fn cassandra_5_0_after_the_handover_completes_the_file_s_client_listener() {
    let d = derive_fixture("cassandra-5.0-client.yaml", Some("/opt/cassandra"));
    assert!(
        client(&d.table).is_none(),
        "enabled: false derives no listener"
    );
    assert!(has_note(
        &d,
        "client_encryption_options.enabled is false: Cassandra serves CQL clients without TLS on \
         native_transport_port 9043, and no client listener is derived; an [[inbound]] named \
         \"client\" in the ringseal config takes its TLS settings from client_encryption_options \
         and listens on native_transport_port_ssl 9042 unless it says otherwise"
    ));
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    let merged = d.merged(table(
        "[[inbound]]\n[[inbound]]\nname = \"client\"\nallow = { cn = [\"reporting\"] }\n",
    ));
    let expected = table(
        r#"
        name = "client"
        listen = "10.50.0.4:9042"
        forward = "10.50.0.4:9043"
        allow = { cn = ["reporting"] }
        [tls]
        keystore = "/opt/cassandra/conf/tls/cql.pem"
        keystore_type = "pem"
        truststore = "/opt/cassandra/conf/tls/clients-ca.pem"
        truststore_type = "pem"
        protocols = ["TLSv1.2", "TLSv1.3"]
        require_client_auth = "optional"
        "#,
    );
    assert_table_eq(client(&merged).unwrap(), &expected, "client.");
    let internode = merged["inbound"][0].as_table().unwrap();
    assert_eq!(internode["listen"].as_str(), Some("10.50.0.4:7001"));
    assert_eq!(merged["inbound"].as_array().unwrap().len(), 2);
}

/// 4.0 with TLS on the one native port: the operator names Cassandra's new plaintext address as the
/// client listener's forward, and the rest comes from client_encryption_options; PEM identity files
/// given in the file replace the derived keystore.
#[test]
fn one_tls_port_takes_the_forward_from_the_ringseal_config() {
    let d = derive_fixture("cassandra-4.0.yaml", None);
    assert!(client(&d.table).is_none());
    let merged = d.merged(table(
        "[[inbound]]\nname = \"client\"\nforward = \"127.0.0.1:9043\"\n[inbound.tls]\n\
         cert = \"/etc/ringseal/cql.crt\"\nkey = \"/etc/ringseal/cql.key\"\n",
    ));
    let client = client(&merged).unwrap();
    assert_eq!(client["listen"].as_str(), Some("10.30.1.5:9042"));
    assert_eq!(client["forward"].as_str(), Some("127.0.0.1:9043"));
    let tls = client["tls"].as_table().unwrap();
    assert_eq!(tls["cert"].as_str(), Some("/etc/ringseal/cql.crt"));
    for gone in ["keystore", "keystore_password", "keystore_type"] {
        assert!(!tls.contains_key(gone), "{gone} kept: {tls:?}");
    }
    assert_eq!(tls["require_client_auth"].as_bool(), Some(false));
    // Without the file's listener, nothing is added: the derived table stays valid on its own.
    let merged = d.merged(table("[metrics]\nlisten = \"127.0.0.1:9464\"\n"));
    assert_eq!(merged["inbound"].as_array().unwrap().len(), 1);
}

/// A ringseal file that only replaces the internode listener keeps the derived client listener.
#[test]
fn a_file_s_internode_listener_keeps_the_derived_client_listener() {
    let d = derive_fixture("cassandra-3.11-client.yaml", None);
    let overrides: Table =
        toml::from_str(&std::fs::read_to_string(fixture("ringseal-override.toml")).unwrap())
            .unwrap();
    let merged = d.merged(overrides);
    let inbound = merged["inbound"].as_array().unwrap();
    assert_eq!(inbound.len(), 2);
    assert_eq!(inbound[0]["listen"].as_str(), Some("0.0.0.0:7001"));
    assert_eq!(
        client(&merged).unwrap()["listen"].as_str(),
        Some("10.20.0.17:9142")
    );
}

/// A client listener derived from a 5.0-style section (PEM files through PEMBasedSslContextFactory, a
/// CQL certificate from its own CA, optional client certificates) loads as `run` loads it: its own
/// identity and trust, not the internode ones, and `require_client_auth = "optional"`.
#[test]
fn a_derived_client_listener_loads_its_own_pem_files() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    pki(home);
    write_ca(
        &home.join("cql-ca"),
        "CQL Clients",
        KeyType::default(),
        30,
        false,
    )
    .unwrap();
    let cql_ca = load_ca(&home.join("cql-ca")).unwrap();
    let spec = NodeSpec::new("cql", &["127.0.0.1".parse().unwrap()]);
    write_node(&cql_ca, &spec, &home.join("cql"), None, false).unwrap();
    let read = |p: &str| std::fs::read_to_string(home.join(p)).unwrap();
    std::fs::create_dir_all(home.join("conf/tls")).unwrap();
    let node = format!("{}{}", read("node/node1.key"), read("node/node1.crt"));
    std::fs::write(home.join("conf/tls/node.pem"), node).unwrap();
    std::fs::write(home.join("conf/tls/ca.pem"), read("ca/ca.crt")).unwrap();
    let cql = format!("{}{}", read("cql/cql.key"), read("cql/cql.crt"));
    std::fs::write(home.join("conf/tls/cql.pem"), cql).unwrap();
    std::fs::write(home.join("conf/tls/clients-ca.pem"), read("cql-ca/ca.crt")).unwrap();
    let pem = "    ssl_context_factory:\n      class_name: PEMBasedSslContextFactory\n";
    let config = load(
        home,
        &format!(
            "listen_address: 127.0.0.1\nrpc_address: 127.0.0.1\nnative_transport_port: 9042\n\
             native_transport_port_ssl: 9142\nserver_encryption_options:\n    \
             internode_encryption: none\n    keystore: conf/tls/node.pem\n    \
             truststore: conf/tls/ca.pem\n    require_client_auth: true\n{pem}\
             client_encryption_options:\n    enabled: true\n    keystore: conf/tls/cql.pem\n    \
             truststore: conf/tls/clients-ca.pem\n    require_client_auth: optional\n{pem}"
        ),
    );
    let config = load_material(home, config);
    let client = &config.inbound[1];
    assert_eq!(client.name.as_str(), "client");
    assert_eq!(
        client.listen,
        "127.0.0.1:9142".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(
        client.forward,
        "127.0.0.1:9042".parse::<SocketAddr>().unwrap()
    );
    assert!(client.tls.material.identity.subject.contains("cql"));
    assert!(
        config.inbound[0]
            .tls
            .material
            .identity
            .subject
            .contains("node1")
    );
    assert_eq!(
        client.tls.require_client_auth,
        ringseal::tls::settings::ClientAuth::Optional
    );
    assert_eq!(client.tls.material.cas.len(), 1);
    assert_ne!(
        client.tls.material.cas[0].subject, config.inbound[0].tls.material.cas[0].subject,
        "the client listener trusts the clients' CA, not the cluster's"
    );
}

/// `ringseal check` says that no client listener is derived when client TLS is off.
#[test]
fn check_says_when_no_client_listener_is_derived() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringseal"))
        .args(["check", "--cassandra-yaml"])
        .arg(fixture("cassandra-4.1-default.yaml"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "# note: client_encryption_options.enabled is false: Cassandra serves CQL clients \
             without TLS on native_transport_port 9042, and no client listener is derived"
        ),
        "{stdout}"
    );
    assert!(!stdout.contains("name = \"client\""), "{stdout}");
}
