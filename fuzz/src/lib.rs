//! What each fuzz target checks, and the seeds it starts from: shared by the cargo-fuzz targets in
//! `fuzz_targets/` and by their seeded short runs in ringseal's `cargo test` (`cli/tests/fuzz_seeded.rs`
//! includes this file), so both run exactly the same properties.
//!
//! Every check returns a short label of the outcome (the tests count them, to notice seeds that stop
//! reaching the code behind the first refusal) and panics when a property does not hold.
//!
//! | target | code | properties beyond "no panic" |
//! |---|---|---|
//! | `sniff` | `fuzzing::sniff` (`listener::sniff`) | total; decided by the first 5 bytes; a verdict on a prefix stands as more bytes arrive |
//! | `cassandra_yaml` | `config::cassandra::derive_bytes` | errors and warnings are one line naming the file; a derived table renders to TOML that deserializes into a ringseal config (a `ConfigError::Parse` is a bug), also with PEM files in place of the stores; `to_toml_redacted` shows no password |
//! | `config_toml` | `Config::from_toml` | errors are one line starting `config <path>: `; a config that loads keeps every invariant the runtime relies on and renders (`describe`, `Debug`) |
//! | `pem_crl` | `certs_from`, `key_from`, `TlsMaterial::from_der`, `add_crls` | material only for a leaf whose public key is the key's; a CRL `add_crls` accepts is usable: the outbound verifier then judges the fixture's valid node with a revocation verdict or its own (never "unknown issuer", "expired"...) |
//! | `record_framing` | `relay::handshake::{frame, wakes}` | a flight arriving in pieces is framed exactly as when it arrives whole; woken, the driver always takes something or ends (never spins); records stay within the RFC limits |
//! | `allow_list` | `FileAllow::into_allow_list`, `verify::check_identity` | matching is deterministic; an empty certificate never matches; a list naming one of the certificate's own values (CN, OU, DNS in another case, IP, URI) admits it; endpoint verification admits only an address the certificate lists |

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ringseal::config::cassandra::{self, CassandraYamlError};
use ringseal::config::{self, Config, ConfigError};
use ringseal::fuzzing;
use ringseal::fuzzing::{Sniffed, sniff as sniff_bytes};
use ringseal::pki::{Ca, Identity, NodeSpec};
use ringseal::tls::material::TlsMaterial;
use ringseal::tls::verify::{AllowList, PeerPolicy, ServerVerifier};
use ringseal::tls::x509::CertInfo;
use ringseal::{LoadError, StartError};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, Error as TlsError};
use toml::{Table, Value};

/// The fuzz targets, in the order `fuzz/run.sh` runs them.
pub const TARGETS: [&str; 6] = [
    "sniff",
    "cassandra_yaml",
    "config_toml",
    "pem_crl",
    "allow_list",
    "record_framing",
];

/// The largest input worth trying: every seed fits, and longer inputs only slow a run down.
pub const MAX_LEN: usize = 16 * 1024;

/// Runs `target`'s check on `data`.
pub fn check(target: &str, pki: &Pki, data: &[u8]) -> &'static str {
    match target {
        "sniff" => sniff(data),
        "cassandra_yaml" => cassandra_yaml(pki, data),
        "config_toml" => config_toml(pki, data),
        "pem_crl" => pem_crl(pki, data),
        "allow_list" => allow_list(data),
        "record_framing" => record_framing(data),
        _ => panic!("no fuzz target {target:?}; known: {TARGETS:?}"),
    }
}

/// A message meant for one log line.
fn one_line(what: &str, message: &str) {
    assert!(
        !message.contains(['\n', '\r']),
        "{what} spans several lines: {message:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The fixture PKI: what the `{placeholders}` of the config seeds name.
// ---------------------------------------------------------------------------------------------

/// A cluster CA, node certificates and the odd files the invalid configs name, in one directory.
/// Reused when the directory already holds them, so seeds written by one process (CRLs signed by this
/// CA) stay meaningful to the next.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: Ca,
    /// CN=node1, OU=FuzzCluster, IP SAN 127.0.0.1, DNS SAN node1.fuzz.
    pub node: Identity,
    /// `{placeholder}` (and the shipped configs' `/etc/ringseal/...` paths) -> file.
    substitutions: Vec<(String, String)>,
}

const CLUSTER: &str = "FuzzCluster";
/// The PKCS#12 keystore's password (`{p12}`; also in `{p12_password}`).
pub const P12_PASSWORD: &str = "changeit";

impl Pki {
    /// The PKI in `dir`, created there first when it is not complete.
    pub fn at(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let (ca, node) = Self::load(dir).unwrap_or_else(|| Self::create(dir));
        let file = |name: &str, bytes: &[u8]| {
            let path = dir.join(name);
            if std::fs::read(&path).ok().as_deref() != Some(bytes) {
                std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
            path
        };
        // Letters and digits, no PEM markers, no DER; starts with '0' (0x30, DER's first byte) like the
        // garbage of the config tests.
        let garbage: String = (0..40u32)
            .map(|i| {
                let line: String = (0..64u32)
                    .map(|j| {
                        let n = (i * 64 + j).wrapping_mul(2_654_435_761) >> 26;
                        char::from(
                            b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                [n as usize % 62],
                        )
                    })
                    .collect();
                line + "\n"
            })
            .collect();
        let big = dir.join("big.pem");
        if std::fs::metadata(&big).map(|m| m.len()).ok() != Some(5 << 20) {
            std::fs::File::create(&big)
                .and_then(|f| f.set_len(5 << 20))
                .unwrap_or_else(|e| panic!("{}: {e}", big.display()));
        }
        let fifo = dir.join("fifo.pem");
        if !fifo.exists() {
            // No FIFO without mkfifo: a device is refused the same way (not a regular file).
            let made = std::process::Command::new("mkfifo").arg(&fifo).status();
            if !made.is_ok_and(|s| s.success()) {
                let _ = std::os::unix::fs::symlink("/dev/null", &fifo);
            }
        }
        let s = |p: &Path| p.to_str().expect("a UTF-8 temporary directory").to_owned();
        let mut substitutions = vec![
            ("{cert}", s(&dir.join("node1.crt"))),
            ("{key}", s(&dir.join("node1.key"))),
            ("{ca}", s(&dir.join("ca.crt"))),
            ("{other_key}", s(&dir.join("node2.key"))),
            ("{empty}", s(&file("empty.pem", b""))),
            ("{garbage}", s(&file("garbage.pem", garbage.as_bytes()))),
            ("{der_cert}", s(&file("node1.der", node.cert_der.as_ref()))),
            ("{expired_cert}", s(&dir.join("expired.crt"))),
            ("{expired_key}", s(&dir.join("expired.key"))),
            ("{ca_as_key}", s(&dir.join("ca.crt"))),
            ("{dir}", s(dir)),
            ("{fifo}", s(&fifo)),
            ("{big}", s(&big)),
            ("{p12}", s(&dir.join("node1.p12"))),
            (
                "{p12_password}",
                s(&file("p12.password", P12_PASSWORD.as_bytes())),
            ),
            ("/etc/ringseal/node.crt", s(&dir.join("node1.crt"))),
            ("/etc/ringseal/node1.crt", s(&dir.join("node1.crt"))),
            ("/etc/ringseal/node.key", s(&dir.join("node1.key"))),
            ("/etc/ringseal/node1.key", s(&dir.join("node1.key"))),
            ("/etc/ringseal/ca.crt", s(&dir.join("ca.crt"))),
        ];
        // Longest first, so that no shorter name eats part of a longer one.
        substitutions.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
        Self {
            dir: dir.to_owned(),
            ca,
            node,
            substitutions: substitutions
                .into_iter()
                .map(|(a, b)| (a.to_owned(), b))
                .collect(),
        }
    }

    fn load(dir: &Path) -> Option<(Ca, Identity)> {
        let text = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
        let ca = Ca::load(&text("ca.crt")?, &text("ca.key")?).ok()?;
        // node1.crt is the chain (leaf, CA): the identity is its first block.
        let chain = text("node1.crt")?;
        let end = chain.find("-----END CERTIFICATE-----")? + "-----END CERTIFICATE-----\n".len();
        let cert_pem = chain.get(..end)?.to_owned();
        let key_pem = text("node1.key")?;
        let cert_der = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .next()?
            .ok()?;
        let key_der =
            rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes()).ok()?;
        // Renewed well before it expires, so that a reused directory never fails on an old certificate.
        let info = CertInfo::parse(&cert_der)?;
        if info.not_after < SystemTime::now() + Duration::from_secs(30 * 86400)
            || ["node2.key", "expired.crt", "expired.key", "node1.p12"]
                .iter()
                .any(|f| !dir.join(f).exists())
        {
            return None;
        }
        Some((
            ca,
            Identity {
                cert_der,
                cert_pem,
                key_der,
                key_pem,
            },
        ))
    }

    fn create(dir: &Path) -> (Ca, Identity) {
        use ringseal::pki::files::{write_ca, write_node};
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        write_ca(dir, CLUSTER, Default::default(), 3650, true).expect("a fuzz CA");
        let ca = ringseal::pki::files::load_ca(dir).expect("the fuzz CA just written");
        let node1 = NodeSpec {
            dns: vec!["node1.fuzz".into()],
            ..NodeSpec::new("node1", &[localhost])
        };
        write_node(&ca, &node1, dir, Some(P12_PASSWORD), true).expect("node1");
        write_node(
            &ca,
            &NodeSpec::new("node2", &[localhost]),
            dir,
            Some(P12_PASSWORD),
            true,
        )
        .expect("node2");
        let now = time::OffsetDateTime::now_utc();
        let expired = ca
            .issue(&NodeSpec {
                not_before: now - Duration::from_secs(2 * 86400),
                not_after: now - Duration::from_secs(86400),
                ..NodeSpec::new("expired-node", &[localhost])
            })
            .expect("an expired certificate");
        std::fs::write(dir.join("expired.crt"), &expired.cert_pem).unwrap();
        std::fs::write(dir.join("expired.key"), &expired.key_pem).unwrap();
        Self::load(dir).expect("the PKI just written")
    }

    /// The fuzz process's PKI: in `$RINGSEAL_FUZZ_PKI` (what `fuzz/run.sh` sets), else in a directory
    /// of the system's temporary directory that every run reuses.
    pub fn for_fuzzing() -> Self {
        let dir = std::env::var_os("RINGSEAL_FUZZ_PKI")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("ringseal-fuzz-pki"));
        Self::at(&dir)
    }

    /// Replaces every placeholder (and the shipped configs' paths) by the fixture's file.
    pub fn substitute(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (from, to) in &self.substitutions {
            if out.contains(from.as_str()) {
                out = out.replace(from.as_str(), to);
            }
        }
        out
    }

    fn path(&self, placeholder: &str) -> String {
        self.substitute(placeholder)
    }

    /// Fresh material of the node's identity, trusting the CA.
    fn material(&self) -> TlsMaterial {
        TlsMaterial::from_der(
            vec![self.node.cert_der.clone()],
            self.node.key(),
            vec![self.ca.cert_der.clone()],
            None,
        )
        .expect("the fixture's material")
    }
}

// ---------------------------------------------------------------------------------------------
// sniff
// ---------------------------------------------------------------------------------------------

/// The first bytes of a connection, classified.
pub fn sniff(data: &[u8]) -> &'static str {
    let verdict = sniff_bytes(data);
    assert!(!verdict.to_string().is_empty());
    // The listener sniffs whatever its first peek returned (1 to 8 bytes): more bytes may refine
    // "other" into a verdict, but never change a verdict.
    assert_eq!(
        verdict,
        sniff_bytes(&data[..data.len().min(5)]),
        "decided beyond the 5th byte"
    );
    for n in 1..data.len().min(5) {
        let early = sniff_bytes(&data[..n]);
        assert!(
            early == Sniffed::Other || early == verdict,
            "{:02x?}: {early:?} after {n} bytes, {verdict:?} after all",
            &data[..data.len().min(8)]
        );
    }
    match verdict {
        Sniffed::Tls => "tls",
        Sniffed::Ssl2Hello => "ssl2",
        Sniffed::CassandraInternode => "internode",
        Sniffed::Cql => "cql",
        Sniffed::Http => "http",
        Sniffed::Other => "other",
    }
}

// ---------------------------------------------------------------------------------------------
// cassandra_yaml
// ---------------------------------------------------------------------------------------------

/// A cassandra.yaml derived into a ringseal config, which must then deserialize.
pub fn cassandra_yaml(pki: &Pki, data: &[u8]) -> &'static str {
    let yaml_path = pki.dir.join("conf").join("cassandra.yaml");
    let derived = match cassandra::derive_bytes(data, &yaml_path, None) {
        Ok(d) => d,
        Err(e) => {
            let message = e.to_string();
            one_line("a cassandra.yaml error", &message);
            assert!(
                message.starts_with(&format!("cassandra.yaml {}: ", yaml_path.display())),
                "does not name the file: {message}"
            );
            let _ = format!("{e:?}");
            return match e {
                CassandraYamlError::NotText { .. } => "not text",
                CassandraYamlError::Syntax { .. } => "syntax",
                CassandraYamlError::Empty { .. } => "empty",
                CassandraYamlError::MultipleDocuments { .. } => "documents",
                CassandraYamlError::Type { .. } => "type",
                CassandraYamlError::SamePorts { .. }
                | CassandraYamlError::AddressAndInterface { .. }
                | CassandraYamlError::WildcardAddress { .. }
                | CassandraYamlError::InternodeEncryption { .. }
                | CassandraYamlError::LegacyPortTwice { .. } => "invalid",
                CassandraYamlError::Read { .. } | CassandraYamlError::Unusable { .. } => {
                    panic!("derive_bytes read a file: {message}")
                }
            };
        }
    };
    for line in derived.warnings.iter().chain(&derived.notes) {
        one_line("a derivation warning or note", line);
    }
    let _ = format!("{derived:?}");
    let redacted: Table = derived
        .to_toml_redacted()
        .parse()
        .expect("to_toml_redacted renders TOML");
    no_password_shown(&redacted);

    // What a ringseal config file completes when the yaml does not say where to listen (a host name
    // or interface): Sources::load merges it over the derived table.
    let mut table = derived.table.clone();
    if let Some(Value::Array(inbound)) = table.get_mut("inbound") {
        for l in inbound.iter_mut().filter_map(Value::as_table_mut) {
            l.entry("listen").or_insert("127.0.0.2:7001".into());
            l.entry("forward").or_insert("127.0.0.2:7000".into());
        }
    }
    let config_path = pki.dir.join("ringseal.toml");
    let text = toml::to_string(&table).expect("a derived table renders as TOML");
    let stores = derived_parses(&text, &config_path);

    // The same with the fixture's PEM files in place of the stores, so that the derived listeners,
    // modes and suites are validated too.
    if let Some(Value::Table(tls)) = table.get_mut("tls") {
        tls.retain(|k, _| {
            !["keystore", "truststore", "outbound_keystore"]
                .iter()
                .any(|s| k.starts_with(s))
        });
        for (k, p) in [("cert", "{cert}"), ("key", "{key}"), ("ca", "{ca}")] {
            tls.insert(k.into(), pki.path(p).into());
        }
    }
    let text = toml::to_string(&table).expect("a derived table renders as TOML");
    match derived_parses(&text, &config_path) {
        "ok" => "derived, loads",
        _ if stores == "ok" => "derived, loads with its stores",
        _ => "derived, refused",
    }
}

/// `Config::from_toml` on a derived table: anything but a parse error (missing stores, refused
/// suites...).
fn derived_parses(text: &str, path: &Path) -> &'static str {
    match Config::from_toml(text, path) {
        Ok(config) => {
            let _ = config::describe(&config, "");
            "ok"
        }
        Err(ConfigError::Parse { message, .. }) => {
            panic!("a derived config does not deserialize: {message}\n{text}")
        }
        Err(e) => {
            one_line("a config error", &e.to_string());
            "refused"
        }
    }
}

fn no_password_shown(table: &Table) {
    for (key, value) in table {
        match value {
            Value::Table(t) => no_password_shown(t),
            Value::Array(items) => items
                .iter()
                .filter_map(Value::as_table)
                .for_each(no_password_shown),
            Value::String(s) if key.ends_with("password") => {
                assert_eq!(s, "<redacted>", "{key} shown by to_toml_redacted")
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// config_toml
// ---------------------------------------------------------------------------------------------

/// A ringseal config file, its placeholders replaced by the fixture's files.
pub fn config_toml(pki: &Pki, data: &[u8]) -> &'static str {
    let Ok(text) = std::str::from_utf8(data) else {
        return "not utf-8";
    };
    let text = pki.substitute(text);
    let path = pki.dir.join("ringseal.toml");
    let loaded = Config::from_toml(&text, &path)
        .map_err(StartError::from)
        .and_then(|c| Ok(ringseal::load_tls(c, &path)?));
    match loaded {
        Ok(c) => {
            valid(&c);
            let _ = ringseal::describe(&c);
            let _ = format!("{c:?}");
            "ok"
        }
        Err(e) => {
            let message = e.to_string();
            one_line("a config error", &message);
            assert!(
                message.starts_with(&format!("config {}: ", path.display())),
                "does not name the config file: {message}"
            );
            match e {
                StartError::Config(ConfigError::Parse { .. }) => "parse",
                StartError::Config(ConfigError::Address { .. }) => "address",
                StartError::Config(ConfigError::Invalid { .. }) => "invalid",
                StartError::Config(ConfigError::Suites { .. }) => "suites",
                StartError::Load(LoadError::Material { .. }) => "material",
                StartError::Load(_) => "invalid",
                StartError::Config(
                    ConfigError::Read { .. } | ConfigError::Cassandra(_) | ConfigError::Set { .. },
                ) => {
                    panic!("from_toml cannot fail this way: {message}")
                }
            }
        }
    }
}

/// What the runtime takes for granted of a validated config ("parse, don't validate twice").
fn valid(c: &Config<ringseal::tls::LoadedTls>) {
    use ringseal::config::{MAX_CONNECTIONS, MAX_DURATION, MIN_RELOAD_INTERVAL, Permissive};
    assert!(!c.inbound.is_empty() || !c.outbound.is_empty());
    assert!(!c.tls.versions.is_empty() && !c.tls.suites.is_empty());
    assert!(!c.tls.material.roots.is_empty());
    assert!((1..=MAX_CONNECTIONS).contains(&c.limits.max_connections));
    assert!((MIN_RELOAD_INTERVAL..=MAX_DURATION).contains(&c.tls.reload_interval));
    let l = &c.limits;
    for d in [l.handshake_timeout, l.connect_timeout, l.close_linger] {
        assert!(!d.is_zero() && d <= MAX_DURATION);
    }
    assert!(l.shutdown_grace <= MAX_DURATION && l.idle_timeout.is_none_or(|d| d <= MAX_DURATION));
    assert!(
        (Permissive::MIN_MEMORY..=Permissive::MAX_MEMORY).contains(&c.permissive.tls_peer_memory)
    );
    for i in &c.inbound {
        assert!(i.forward.port() != 0 && !i.forward.ip().is_unspecified());
        assert!(i.forward != i.listen);
    }
    let listens: Vec<_> = c
        .inbound
        .iter()
        .map(|i| i.listen)
        .chain(c.outbound.iter().map(|o| o.listen))
        .collect();
    for (n, a) in listens.iter().enumerate() {
        assert!(!listens[..n].contains(a), "{a} listened on twice");
    }
}

// ---------------------------------------------------------------------------------------------
// pem_crl
// ---------------------------------------------------------------------------------------------

/// The bytes as a certificate chain, a CA bundle, a private key and a CRL file.
pub fn pem_crl(pki: &Pki, data: &[u8]) -> &'static str {
    let path = pki.dir.join("input.pem");
    let ca = vec![pki.ca.cert_der.clone()];
    let mut outcome = "nothing";

    match fuzzing::certs_from(false, &path, data) {
        Ok(chain) => {
            outcome = "certificates";
            assert!(!chain.is_empty());
            for c in &chain {
                let _ = CertInfo::parse(c);
            }
            let leaf = ringseal::tls::x509::spki(&chain[0]);
            match TlsMaterial::from_der(chain, pki.node.key(), ca.clone(), None) {
                Ok(_) => {
                    assert_eq!(
                        leaf,
                        ringseal::tls::x509::spki(&pki.node.cert_der),
                        "material for a leaf that is not the key's"
                    );
                    outcome = "node chain";
                }
                Err(e) => one_line("a material error", &e.to_string()),
            }
        }
        Err(e) => one_line("a certificate error", &e.to_string()),
    }
    match fuzzing::certs_from(true, &path, data) {
        Ok(cas) => {
            let n = cas.len();
            match TlsMaterial::from_der(vec![pki.node.cert_der.clone()], pki.node.key(), cas, None)
            {
                Ok(m) => assert_eq!(m.cas.len(), n),
                Err(e) => one_line("a material error", &e.to_string()),
            }
        }
        Err(e) => one_line("a CA bundle error", &e.to_string()),
    }
    match fuzzing::key_from(&path, data) {
        Ok(key) => {
            outcome = "key";
            if let Ok(m) =
                TlsMaterial::from_der(vec![pki.node.cert_der.clone()], key, ca.clone(), None)
            {
                assert!(
                    m.certified.keys_match().is_ok(),
                    "a key not matching its certificate"
                );
                outcome = "node key";
            }
        }
        Err(e) => one_line("a key error", &e.to_string()),
    }

    let mut material = pki.material();
    match material.add_crls(&path, data) {
        Ok(()) => {
            assert!(!material.crls.is_empty());
            assert_eq!(material.crls.len(), material.parsed_crls.len());
            assert_eq!(material.crls.len(), material.crl_info.len());
            let _ = material.expired_crls(SystemTime::now()).count();
            outcome = crl_verdict(pki, material);
        }
        Err(e) => one_line("a CRL error", &e.to_string()),
    }
    outcome
}

/// The outbound verifier with the CRLs of `material`, judging the fixture's valid node certificate:
/// a CRL may revoke it or be unusable for it, never change the verdict on the chain itself.
fn crl_verdict(pki: &Pki, material: TlsMaterial) -> &'static str {
    use ringseal::tls::CrlExpired;
    let verifier = ServerVerifier::new(
        Arc::new(material),
        CrlExpired::Deny,
        false,
        ringseal::tls::provider(),
        Arc::new(PeerPolicy::default()),
        false,
    );
    let verdict = verifier.verify_server_cert(
        &pki.node.cert_der,
        &[],
        &ServerName::IpAddress(Ipv4Addr::LOCALHOST.into()),
        &[],
        UnixTime::now(),
    );
    match verdict {
        Ok(_) => "crl, node valid",
        Err(TlsError::InvalidCertificate(CertificateError::Revoked)) => "crl, node revoked",
        Err(TlsError::InvalidCertificate(CertificateError::BadSignature)) => "crl, bad signature",
        Err(TlsError::InvalidCertificate(
            CertificateError::ExpiredRevocationList
            | CertificateError::ExpiredRevocationListContext { .. },
        )) => "crl, expired",
        Err(TlsError::InvalidCertificate(CertificateError::UnknownRevocationStatus)) => {
            "crl, unknown status"
        }
        Err(TlsError::InvalidCertificate(CertificateError::Other(e)))
            if e.to_string().contains("Crl") || e.to_string().contains("Revocation") =>
        {
            "crl, other"
        }
        Err(e) => panic!("a CRL turned the valid node certificate into {e:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// allow_list
// ---------------------------------------------------------------------------------------------

/// `allow = { ... }` as TOML text, a NUL byte, then a DER certificate.
pub fn allow_list(data: &[u8]) -> &'static str {
    let (text, cert) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let mut outcome = "list refused";
    if let Ok(list) = std::str::from_utf8(text)
        .map_err(|e| e.to_string())
        .and_then(fuzzing::allow_list)
    {
        assert!(!list.is_empty(), "an empty list was accepted");
        let _ = list.to_string();
        let verdict = fuzzing::check_identity(cert, None, &list);
        assert_eq!(
            format!("{verdict:?}"),
            format!("{:?}", fuzzing::check_identity(cert, None, &list)),
            "two verdicts on the same certificate"
        );
        assert!(
            fuzzing::check_identity(&[], None, &list).is_err(),
            "an empty certificate matched {list}"
        );
        outcome = if verdict.is_ok() {
            "admitted"
        } else {
            "refused"
        };
    }

    let Some(info) = CertInfo::parse(&CertificateDer::from(cert)) else {
        return outcome;
    };
    // Each value of the certificate, named in a list of its own, admits it.
    let own = [
        ("cn", info.cn.first().cloned()),
        ("ou", info.ou.first().cloned()),
        // DNS names are matched ignoring ASCII case.
        ("dns", info.dns.first().map(|d| flip_ascii_case(d))),
        ("ip", info.ips.first().map(IpAddr::to_string)),
        ("uri", info.uris.first().cloned()),
    ];
    for (key, value) in own {
        let Some(value) = value else { continue };
        // A `*` makes a dns or uri entry a pattern, which is refused or matched as one (unit tests in
        // ringseal's tls::pattern); only exact values must admit their own certificate.
        if value.contains('*') && matches!(key, "dns" | "uri") {
            continue;
        }
        let mut t = Table::new();
        t.insert(key.into(), Value::Array(vec![value.clone().into()]));
        let text = toml::to_string(&t).expect("a table renders");
        let list = fuzzing::allow_list(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert!(
            fuzzing::check_identity(cert, None, &list).is_ok(),
            "the certificate's own {key} {value:?} did not admit it"
        );
        if outcome == "list refused" {
            outcome = "own values admit";
        }
    }
    // Endpoint verification admits only an address the certificate lists (and shows in a refusal).
    // Not asserted for a malformed SAN extension: webpki matches the entries before the first bad one,
    // x509-parser refuses the whole extension (the allow-list then sees no SAN and fails closed).
    if !san_well_formed(cert) {
        return outcome;
    }
    let nothing = AllowList::default();
    let mut candidates = info.ips.clone();
    candidates.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
    if let Some(tail) = cert.last_chunk::<4>() {
        candidates.push(IpAddr::from(*tail));
    }
    if let Some(tail) = cert.last_chunk::<16>() {
        candidates.push(IpAddr::from(*tail));
    }
    for ip in candidates {
        let ip = ringseal::tls::verify::canonical_ip(ip);
        if fuzzing::check_identity(cert, Some(ip), &nothing).is_ok() {
            assert!(
                info.ips
                    .iter()
                    .any(|a| ringseal::tls::verify::canonical_ip(*a) == ip),
                "endpoint verification admitted {ip}, which the certificate does not list ({:?})",
                info.ips
            );
        }
    }
    outcome
}

/// The subjectAltName extension is absent or parses.
fn san_well_formed(der: &[u8]) -> bool {
    use x509_parser::prelude::{FromDer, X509Certificate};
    X509Certificate::from_der(der).is_ok_and(|(_, c)| c.subject_alternative_name().is_ok())
}

fn flip_ascii_case(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_lowercase() {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// record_framing
// ---------------------------------------------------------------------------------------------

const HEADER: usize = 5;
/// RFC 8446 5.1 / RFC 5246 6.2.1: a plaintext record carries at most 2^14 bytes, any record at most
/// 2^14 + 2048 (RFC 5246 6.2.3).
const MAX_PLAINTEXT_RECORD: usize = HEADER + (1 << 14);
const MAX_ANY_RECORD: usize = MAX_PLAINTEXT_RECORD + 2048;

/// How the driver's rounds over a flight ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Everything that arrived was taken or is an incomplete record: waiting for the peer.
    Waiting,
    NotTls,
    Overflow,
    HeaderOnly,
}

/// A flags byte, then the peer's bytes. Flags: bit 0, the peer's ChangeCipherSpec was taken (TLS
/// 1.2); bit 1, our records are encrypted; bit 2, the connection is TLS 1.2 (a CCS record switches
/// the peer to encrypted records); bits 3-7, the size of the pieces the bytes arrive in.
pub fn record_framing(data: &[u8]) -> &'static str {
    let Some((&flags, flight)) = data.split_first() else {
        return "empty";
    };
    let whole = drive(flight, flight.len().max(1), flags);
    let piece = 1 + usize::from(flags >> 3) * 67;
    let pieces = drive(flight, piece, flags);
    assert_eq!(
        whole, pieces,
        "the flight framed differently when it arrives in pieces of {piece} bytes"
    );
    // A decision taken on part of the bytes stands when more arrive.
    let (peer_ccs, encrypted) = (flags & 1 != 0, flags & 2 != 0);
    let last = fuzzing::frame(flight, peer_ccs, encrypted);
    for n in (HEADER..flight.len())
        .take(64)
        .chain(flight.len().checked_sub(1))
    {
        let early = fuzzing::frame(&flight[..n], peer_ccs, encrypted);
        assert!(
            early == fuzzing::Framing::NeedMore || early == last,
            "{early:?} after {n} bytes, {last:?} after {}",
            flight.len()
        );
    }
    match whole {
        (records, End::Waiting) if records.is_empty() => "waiting",
        (_, End::Waiting) => "records",
        (_, End::NotTls) => "not tls",
        (_, End::Overflow) => "overflow",
        (_, End::HeaderOnly) => "header only",
    }
}

/// The driver's rounds (`queued_records`, then `take`) over `flight` arriving `piece` bytes at a time,
/// rustls aside: the lengths of the records given to rustls, and how it ended.
fn drive(flight: &[u8], piece: usize, flags: u8) -> (Vec<usize>, End) {
    use fuzzing::Framing;
    let (mut peer_ccs, encrypted, tls12) = (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0);
    let mut records = Vec::new();
    let (mut consumed, mut arrived) = (0, piece.min(flight.len()));
    loop {
        let queued = &flight[consumed..arrived];
        let header = &queued[..queued.len().min(HEADER)];
        if !fuzzing::wakes(header, queued.len(), peer_ccs, encrypted) {
            if arrived == flight.len() {
                return (records, End::Waiting);
            }
            arrived = (arrived + piece).min(flight.len());
            continue;
        }
        let mut taken = 0;
        loop {
            let rest = &queued[taken..];
            match fuzzing::frame(rest, peer_ccs, encrypted) {
                Framing::NeedMore => break,
                Framing::NotTls if taken > 0 => break,
                Framing::NotTls => return (records, End::NotTls),
                Framing::Overflow => return (records, End::Overflow),
                Framing::HeaderOnly => return (records, End::HeaderOnly),
                Framing::Record(len) => {
                    assert!((HEADER..=rest.len()).contains(&len) && len <= MAX_ANY_RECORD);
                    let announced = HEADER + usize::from(u16::from_be_bytes([rest[3], rest[4]]));
                    assert_eq!(
                        len, announced,
                        "a record of another length than its header's"
                    );
                    if rest[0] != 23 && !peer_ccs {
                        assert!(len <= MAX_PLAINTEXT_RECORD, "a plaintext record over 2^14");
                    }
                    records.push(len);
                    if rest[0] == 20 && tls12 {
                        peer_ccs = true;
                    }
                    taken += len;
                }
            }
        }
        assert!(
            taken > 0,
            "woken with {} bytes queued, yet nothing to take: the driver would spin",
            queued.len()
        );
        consumed += taken;
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds
// ---------------------------------------------------------------------------------------------

/// The seed inputs of `target`: (file name, bytes). `repo` is ringseal's source tree (the configs and
/// cassandra.yaml fixtures are read from it).
pub fn seeds(target: &str, repo: &Path, pki: &Pki) -> Vec<(String, Vec<u8>)> {
    match target {
        "sniff" => sniff_seeds(),
        "cassandra_yaml" => files(&repo.join("testdata/cassandra-yaml"), &["yaml", "toml"]),
        "config_toml" => {
            let mut out = files(&repo.join("config"), &["toml"]);
            out.extend(files(&repo.join("testdata/invalid-configs"), &["toml"]));
            out.extend(
                EXTRA_CONFIGS
                    .iter()
                    .map(|(name, text)| (name.to_string(), text.as_bytes().to_vec())),
            );
            out
        }
        "pem_crl" => pem_seeds(pki),
        "allow_list" => allow_seeds(pki),
        "record_framing" => framing_seeds(pki),
        _ => panic!("no fuzz target {target:?}; known: {TARGETS:?}"),
    }
}

/// Every file below `dir` with one of `extensions`, sorted, named by its path below `dir`.
fn files(dir: &Path, extensions: &[&str]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = entry.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if p
                .extension()
                .is_some_and(|e| extensions.iter().any(|x| e == *x))
            {
                let name = p
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .replace('/', "-");
                out.push((name, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn sniff_seeds() -> Vec<(String, Vec<u8>)> {
    let seeds: [(&str, &[u8]); 9] = [
        (
            "tls-client-hello",
            &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01],
        ),
        (
            "internode",
            &[0xCA, 0x55, 0x2D, 0xFA, 0x00, 0x00, 0x00, 0x0c],
        ),
        (
            "cql-v4-startup",
            &[0x04, 0x00, 0x00, 0x01, 0x01, 0x00, 0x00, 0x00],
        ),
        (
            "cql-v5-options",
            &[0x05, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00],
        ),
        (
            "ssl2-hello",
            &[0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00],
        ),
        ("http-get", b"GET /metrics HTTP/1.1\r\n"),
        ("http2-preface", b"PRI * HTTP/2.0\r\n"),
        ("http-options", b"OPTIONS * HTTP/1.1\r\n"),
        ("ssh", b"SSH-2.0-OpenSSH_9.2\r\n"),
    ];
    seeds
        .iter()
        .map(|(n, b)| (n.to_string(), b.to_vec()))
        .collect()
}

/// Configs that reach what the shipped ones do not: a PKCS#12 keystore, an allow-list, a CRL.
const EXTRA_CONFIGS: [(&str, &str); 3] = [
    (
        "extra-p12.toml",
        "[tls]\nkeystore = \"{p12}\"\nkeystore_password_file = \"{p12_password}\"\n\
         truststore = \"{ca}\"\ntruststore_type = \"pem\"\n\n[[inbound]]\nlisten = \
         \"127.0.0.1:7001\"\nforward = \"127.0.0.1:7000\"\n",
    ),
    (
        "extra-allow-outbound.toml",
        "mode = \"permissive\"\n[tls]\ncert = \"{cert}\"\nkey = \"{key}\"\nca = \"{ca}\"\n\
         protocols = [\"TLSv1.3\"]\n\n[[inbound]]\nlisten = \"[::1]:7001\"\nforward = \
         \"[::1]:7000\"\nallow = { ou = [\"FuzzCluster\"], ip = [\"::ffff:10.0.0.1\"] }\n\n\
         [[outbound]]\nlisten = \"127.0.0.1:7002\"\ntransparent = true\ntls_port = 7001\n\n\
         [limits]\nmax_connections = 100\nidle_timeout = \"0s\"\n",
    ),
    (
        "extra-crl.toml",
        "[tls]\ncert = \"{cert}\"\nkey = \"{key}\"\nca = \"{ca}\"\ncrl = [\"{garbage}\"]\n\
         crl_expired = \"warn\"\n\n[[outbound]]\nlisten = \"127.0.0.1:7002\"\nupstream = \
         \"10.0.0.2:7001\"\nmode = \"permissive\"\nplaintext_fallback = \"10.0.0.2:7000\"\n",
    ),
];

fn pem_seeds(pki: &Pki) -> Vec<(String, Vec<u8>)> {
    let later = time::OffsetDateTime::now_utc() + Duration::from_secs(365 * 86400);
    let earlier = time::OffsetDateTime::now_utc() - Duration::from_secs(86400);
    let crl = |revoked: &[&Identity], next| pki.ca.crl(revoked, next).expect("a CRL");
    let der = |pem: &str| {
        rustls::pki_types::CertificateRevocationListDer::from_pem_slice(pem.as_bytes())
            .expect("a PEM CRL")
            .to_vec()
    };
    let revoking = crl(&[&pki.node], later);
    let chain = std::fs::read(pki.dir.join("node1.crt")).expect("node1.crt");
    let mut seeds = vec![
        ("node-chain.pem", chain.clone()),
        ("node-cert.pem", pki.node.cert_pem.clone().into_bytes()),
        ("node-cert.der", pki.node.cert_der.to_vec()),
        ("ca.pem", pki.ca.cert_pem.clone().into_bytes()),
        ("node-key.pem", pki.node.key_pem.clone().into_bytes()),
        (
            "node-key-encrypted-label.pem",
            pki.node
                .key_pem
                .replace("PRIVATE KEY", "ENCRYPTED PRIVATE KEY")
                .into_bytes(),
        ),
        ("crl-empty.pem", crl(&[], later).into_bytes()),
        ("crl-revoking-node.der", der(&revoking)),
        ("crl-revoking-node.pem", revoking.into_bytes()),
        ("crl-expired.pem", crl(&[], earlier).into_bytes()),
    ];
    // Several blocks in one file, and the key beside its certificate.
    let mut bundle = chain;
    bundle.extend_from_slice(pki.node.key_pem.as_bytes());
    bundle.extend_from_slice(crl(&[], later).as_bytes());
    seeds.push(("bundle.pem", bundle));
    seeds.into_iter().map(|(n, b)| (n.to_owned(), b)).collect()
}

fn allow_seeds(pki: &Pki) -> Vec<(String, Vec<u8>)> {
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, "node3");
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, CLUSTER);
    params.subject_alt_names = vec![
        SanType::DnsName("Node3.Fuzz".try_into().unwrap()),
        SanType::IpAddress("10.0.0.3".parse().unwrap()),
        SanType::IpAddress("fd00::3".parse().unwrap()),
        SanType::URI("spiffe://fuzz/node3".try_into().unwrap()),
    ];
    let key = KeyPair::generate().expect("a key");
    let rich = params
        .self_signed(&key)
        .expect("a certificate")
        .der()
        .to_vec();
    let node = pki.node.cert_der.to_vec();
    let lists: [(&str, &str, &[u8]); 8] = [
        ("ou-node1", "ou = [\"FuzzCluster\"]", &node),
        ("cn-other", "cn = [\"node2\", \"node9\"]", &node),
        ("ip-mapped", "ip = [\"::ffff:127.0.0.1\"]", &node),
        ("dns-case", "dns = [\"NODE3.fuzz\"]", &rich),
        ("uri", "uri = [\"spiffe://fuzz/node3\"]", &rich),
        ("ipv6", "ip = [\"fd00::3\", \"10.0.0.9\"]", &rich),
        (
            "all-kinds",
            "ou = [\"x\"]\ncn = [\"y\"]\ndns = [\"z\"]\nip = [\"10.0.0.3\"]\nuri = [\"u\"]",
            &rich,
        ),
        ("no-cert", "cn = [\"node1\"]", &[]),
    ];
    lists
        .iter()
        .map(|(name, list, cert)| {
            let mut bytes = list.as_bytes().to_vec();
            bytes.push(0);
            bytes.extend_from_slice(cert);
            (name.to_string(), bytes)
        })
        .collect()
}

/// The start of a fuzz process (`fuzz_crate` is the fuzz crate's directory): with `$RINGSEAL_FUZZ_SEEDS`
/// set, as `fuzz/run.sh` does, `target`'s seeds are written there first as `seed-*` files (before
/// libFuzzer reads that directory), with the PKI of `$RINGSEAL_FUZZ_PKI` that the run then uses.
pub fn init(target: &str, fuzz_crate: &str) {
    let Some(out) = std::env::var_os("RINGSEAL_FUZZ_SEEDS").map(PathBuf::from) else {
        return;
    };
    let repo = Path::new(fuzz_crate)
        .parent()
        .expect("the fuzz crate is inside ringseal's tree");
    std::fs::create_dir_all(&out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    for (name, bytes) in seeds(target, repo, &Pki::for_fuzzing()) {
        let path = out.join(format!("seed-{name}"));
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// Real client flights (rustls, with a client certificate) of a TLS 1.3 and a TLS 1.2 handshake with
/// the flags the driver has when each arrives, and hand-made edges: records over the limits, bytes
/// that are not TLS after whole records, a partial header, an SSLv2 hello.
fn framing_seeds(pki: &Pki) -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    for (name, version, flags) in [
        ("tls13", &rustls::version::TLS13, [0u8, 2]),
        ("tls12", &rustls::version::TLS12, [0u8, 4]),
    ] {
        for (i, flight) in client_flights(pki, version).into_iter().enumerate() {
            let mut seed = vec![flags[i.min(1)]];
            seed.extend(flight);
            seeds.push((format!("{name}-client-flight-{}", i + 1), seed));
        }
    }
    let record = |typ: u8, len: usize| {
        let mut r = vec![typ, 3, 3];
        r.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
        r.resize(HEADER + len, 0x41);
        r
    };
    let edges: [(&str, u8, Vec<u8>); 7] = [
        ("plaintext-over-2-14", 0, record(22, (1 << 14) + 1)),
        ("over-any-record", 2, record(23, 0xffff)[..64].to_vec()),
        ("not-tls", 0, b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        (
            "records-then-garbage",
            0,
            [record(22, 2), record(21, 2), b"\x80\x2e\x01".to_vec()].concat(),
        ),
        ("partial-header", 0, vec![22, 3]),
        (
            "ssl2-hello",
            0,
            vec![0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15],
        ),
        (
            "tls12-ccs-then-large",
            4,
            [record(20, 1), record(22, (1 << 14) + 2048)].concat(),
        ),
    ];
    for (name, flags, bytes) in edges {
        let mut seed = vec![flags];
        seed.extend(bytes);
        seeds.push((name.to_owned(), seed));
    }
    seeds
}

/// The flights a rustls client (the fixture's node certificate) sends in a handshake with a rustls
/// server requiring client certificates, over memory.
fn client_flights(pki: &Pki, version: &'static rustls::SupportedProtocolVersion) -> Vec<Vec<u8>> {
    use rustls::server::WebPkiClientVerifier;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
    let provider = ringseal::tls::provider();
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.cert_der.clone()).expect("the CA");
    let roots = Arc::new(roots);
    let chain = vec![pki.node.cert_der.clone()];
    let client = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[version])
        .expect("the version")
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(chain.clone(), pki.node.key())
        .expect("a client config");
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .expect("a client verifier");
    let server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .expect("the version")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, pki.node.key())
        .expect("a server config");
    let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let mut client = ClientConnection::new(Arc::new(client), name).expect("a client");
    let mut server = ServerConnection::new(Arc::new(server)).expect("a server");
    let mut flights = Vec::new();
    for _ in 0..8 {
        if !client.is_handshaking() && !server.is_handshaking() {
            break;
        }
        let mut flight = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut flight).expect("writing to memory");
        }
        let mut rest = &flight[..];
        while !rest.is_empty() {
            server.read_tls(&mut rest).expect("reading from memory");
            server.process_new_packets().expect("the client's flight");
        }
        if !flight.is_empty() {
            flights.push(flight);
        }
        let mut back = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut back).expect("writing to memory");
        }
        let mut rest = &back[..];
        while !rest.is_empty() {
            client.read_tls(&mut rest).expect("reading from memory");
            client.process_new_packets().expect("the server's flight");
        }
    }
    assert!(
        !server.is_handshaking(),
        "the in-memory handshake did not complete"
    );
    flights
}
