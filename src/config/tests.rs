//! The config files we ship and the ones we refuse.
//!
//! * Every `*.toml` under `config/` (the reference file and the examples) must parse and fully validate
//!   once its `[tls]` files are replaced by certificates generated here.
//! * Every file in `testdata/invalid-configs/` must be refused with the message its first line announces,
//!   `# expect: <substring>`, and the message must start with `config <its path>: `. More header lines
//!   may follow: `# expect: S` (contains S), `# expect-not: S` (does not contain S, e.g. a wrong hint),
//!   and every message must be a single line.
//!   Paths in the files and in the header lines are placeholders, replaced by generated files:
//!
//!   | placeholder      | file                                                       |
//!   |------------------|------------------------------------------------------------|
//!   | `{cert}`         | a node certificate (PEM), CN=node1, OU=TestCluster         |
//!   | `{key}`          | its private key (PKCS#8 PEM, ECDSA P-256)                  |
//!   | `{ca}`           | the CA certificate that issued it (PEM)                    |
//!   | `{other_key}`    | the private key of a different node certificate            |
//!   | `{empty}`        | an empty file                                              |
//!   | `{garbage}`      | random text that is not PEM                                |
//!   | `{der_cert}`     | the node certificate in DER                                |
//!   | `{expired_cert}` | an expired node certificate, CN=expired-node               |
//!   | `{expired_key}`  | its private key                                            |
//!   | `{ca_as_key}`    | a certificate file (the CA), for use as a key              |
//!   | `{dir}`          | the directory the config file is written to                |
//!   | `{fifo}`         | a FIFO (named pipe) with no writer                         |
//!   | `{big}`          | a 5 MiB file (sparse), above every key-material bound      |

use std::collections::BTreeSet;

use crate::tls::LoadedTls;
use crate::tls::settings::{ClientAuth, IdentityFiles, TrustFiles};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde::de::DeserializeOwned;
use tempfile::TempDir;
use time::OffsetDateTime;

use super::file::{
    FileAllow, FileHandover, FileInbound, FileLimits, FileListenerTls, FileLogging, FilePermissive,
    FileTls,
};
use super::*;
use crate::pki::{Ca, NodeSpec};
use crate::tls::settings::Negotiation;
use crate::tls::suites::{iana_name, protocol_name};

const PLACEHOLDERS: [&str; 13] = [
    "cert",
    "key",
    "ca",
    "other_key",
    "empty",
    "garbage",
    "der_cert",
    "expired_cert",
    "expired_key",
    "ca_as_key",
    "dir",
    "fifo",
    "big",
];

/// Generated key material in a temporary directory, one file per placeholder.
struct Material {
    dir: TempDir,
    files: Vec<(&'static str, PathBuf)>,
}

impl Material {
    fn generate() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("TestCluster").unwrap();
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let node = ca.issue(&NodeSpec::new("node1", &[localhost])).unwrap();
        let other = ca.issue(&NodeSpec::new("node2", &[localhost])).unwrap();
        let now = OffsetDateTime::now_utc();
        let expired = ca
            .issue(&NodeSpec {
                not_before: now - Duration::from_secs(2 * 86400),
                not_after: now - Duration::from_secs(86400),
                ..NodeSpec::new("expired-node", &[localhost])
            })
            .unwrap();
        // Random letters and digits: no PEM markers, no DER. With this seed the text starts with the digit
        // '0' (0x30, also the first byte of every DER certificate), which cert-garbage.toml relies on.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7001);
        let garbage: String = (0..40)
            .map(|_| {
                let line: String = (0..64)
                    .map(|_| char::from(rng.sample(rand::distr::Alphanumeric)))
                    .collect();
                line + "\n"
            })
            .collect();

        assert!(garbage.starts_with('0'), "{garbage}");
        let d = dir.path();
        let write = |name: &str, bytes: &[u8]| {
            let p = d.join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let ca_path = write("ca.crt", ca.cert_pem.as_bytes());
        let files = vec![
            ("cert", write("node.crt", node.cert_pem.as_bytes())),
            ("key", write("node.key", node.key_pem.as_bytes())),
            ("ca", ca_path.clone()),
            ("other_key", write("other.key", other.key_pem.as_bytes())),
            ("empty", write("empty.pem", b"")),
            ("garbage", write("garbage.pem", garbage.as_bytes())),
            ("der_cert", write("node.der", node.cert_der.as_ref())),
            (
                "expired_cert",
                write("expired.crt", expired.cert_pem.as_bytes()),
            ),
            (
                "expired_key",
                write("expired.key", expired.key_pem.as_bytes()),
            ),
            ("ca_as_key", ca_path),
            ("dir", d.to_owned()),
            ("fifo", {
                let p = d.join("fifo.pem");
                let made = std::process::Command::new("mkfifo").arg(&p).status();
                assert!(made.is_ok_and(|s| s.success()), "mkfifo failed");
                p
            }),
            ("big", {
                let p = d.join("big.pem");
                std::fs::File::create(&p).unwrap().set_len(5 << 20).unwrap();
                p
            }),
        ];
        assert_eq!(
            files.iter().map(|f| f.0).collect::<Vec<_>>(),
            PLACEHOLDERS,
            "every placeholder has a file"
        );
        Self { dir, files }
    }

    fn path(&self, name: &str) -> &Path {
        &self.files.iter().find(|f| f.0 == name).unwrap().1
    }

    /// Replaces every `{placeholder}`; panics on an unknown one (a typo in a test file).
    fn substitute(&self, text: &str, origin: &Path) -> String {
        let mut out = text.to_owned();
        for (name, path) in &self.files {
            out = out.replace(&format!("{{{name}}}"), path.to_str().unwrap());
        }
        let mut rest = out.as_str();
        while let Some(i) = rest.find('{') {
            rest = &rest[i + 1..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() && rest[name.len()..].starts_with('}') {
                panic!(
                    "{}: unknown placeholder {{{name}}}; known: {PLACEHOLDERS:?}",
                    origin.display()
                );
            }
        }
        out
    }
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `*.toml` below `dir`, recursively, sorted.
fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        let entries = std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        for entry in entries {
            let p = entry.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|e| e == "toml") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn table(text: &str, origin: &Path) -> toml::Table {
    toml::from_str(text).unwrap_or_else(|e| panic!("{}: {e}", origin.display()))
}

/// Points `[tls]` cert/key/ca at the generated files, by editing the parsed table.
fn with_material(mut t: toml::Table, m: &Material) -> toml::Table {
    let tls = t
        .get_mut("tls")
        .and_then(toml::Value::as_table_mut)
        .expect("[tls] is a table");
    for key in ["cert", "key", "ca"] {
        assert!(tls.contains_key(key), "[tls] {key} is present");
        let path = m.path(key).to_str().unwrap().to_owned();
        tls.insert(key.into(), toml::Value::String(path));
    }
    t
}

/// The config is "written" next to the material.
/// Validates a shipped config file with the generated material and loads the material.
fn validate_shipped(path: &Path, m: &Material) -> Config<LoadedTls> {
    let text = read(path);
    toml::from_str::<FileConfig>(&text)
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
    let text = toml::to_string(&with_material(table(&text, path), m)).unwrap();
    let at = m.dir.path().join(path.file_name().unwrap());
    let config = Config::from_toml(&text, &at)
        .unwrap_or_else(|e| panic!("{} does not validate: {e}\n{text}", path.display()));
    crate::load_tls(config, &at)
        .unwrap_or_else(|e| panic!("{} does not load: {e}\n{text}", path.display()))
}

fn shipped(name: &str) -> PathBuf {
    manifest_dir().join("config").join(name)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn versions<T: Negotiation>(c: &Config<T>) -> Vec<&'static str> {
    c.tls
        .versions()
        .iter()
        .map(|v| protocol_name(v.version))
        .collect()
}

fn suite_names<T: Negotiation>(c: &Config<T>) -> Vec<&'static str> {
    c.tls.suites().iter().map(|s| iana_name(*s)).collect()
}

#[test]
fn every_shipped_config_parses_and_validates() {
    let m = Material::generate();
    let files = toml_files(&manifest_dir().join("config"));
    for want in [
        "ringseal.toml",
        "examples/minimal.toml",
        "examples/strict-cluster.toml",
        "examples/multi-listener.toml",
    ] {
        assert!(files.contains(&shipped(want)), "config/{want} is missing");
    }
    for path in &files {
        let c = validate_shipped(path, &m);
        assert!(!c.inbound.is_empty(), "{}", path.display());
        let f = c.tls.files.as_ref().expect("loaded from files");
        assert_eq!(
            f.identity,
            IdentityFiles::Pem {
                cert: m.path("cert").to_path_buf(),
                key: m.path("key").to_path_buf()
            },
            "{}",
            path.display()
        );
        assert_eq!(
            f.trust,
            TrustFiles::Pem(m.path("ca").to_path_buf()),
            "{}",
            path.display()
        );
    }
}

#[test]
fn reference_config_values() {
    let m = Material::generate();
    let c = validate_shipped(&shipped("ringseal.toml"), &m);

    assert_eq!(versions(&c), ["TLSv1.3", "TLSv1.2"]);
    let suites = [
        "TLS_AES_256_GCM_SHA384",
        "TLS_AES_128_GCM_SHA256",
        "TLS_CHACHA20_POLY1305_SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    ];
    assert_eq!(suite_names(&c), suites);
    assert_eq!(c.tls.require_client_auth, ClientAuth::Required);
    assert_eq!(c.tls.material.identity.cn, ["node1"]);

    let [l] = &c.inbound[..] else {
        panic!("one [[inbound]]: {:?}", c.inbound)
    };
    assert_eq!(l.listen, addr("0.0.0.0:7001"));
    assert_eq!(l.forward, addr("127.0.0.1:7000"));
    assert!(!l.require_endpoint_verification);
    let allow = AllowList {
        ou: strings(&["TestCluster"]),
        ..AllowList::default()
    };
    assert_eq!(l.allow, allow);

    let l = &c.limits;
    assert_eq!(l.handshake_timeout, Duration::from_secs(10));
    assert_eq!(l.connect_timeout, Duration::from_secs(5));
    assert_eq!(l.idle_timeout, None);
    assert_eq!(l.close_linger, Duration::from_secs(30));
    assert_eq!(l.max_connections, 10_000);
    assert_eq!(l.max_pending_handshakes, 1024);
    assert_eq!(l.max_pending_per_source, 64);
    assert_eq!(l.listen_backlog, None, "0 is the system's somaxconn");
    assert_eq!(l.shutdown_grace, Duration::from_secs(30));

    assert_eq!(
        c.permissive,
        crate::config::Permissive {
            tls_peer_memory: Duration::from_secs(24 * 3600),
            state_file: Some(PathBuf::from("/var/lib/ringseal/tls-peers")),
        }
    );
}

/// The reference says "where a key has a default, the value written here IS the default": removing
/// every such key must not change the validated config.
#[test]
fn reference_config_shows_the_defaults() {
    let m = Material::generate();
    let path = shipped("ringseal.toml");
    let full = validate_shipped(&path, &m);

    let mut t = table(&read(&path), &path);
    let tls = t["tls"].as_table_mut().unwrap();
    for key in ["protocols", "cipher_suites", "require_client_auth"] {
        assert!(tls.remove(key).is_some(), "tls.{key}");
    }
    assert!(t.remove("limits").is_some(), "[limits]");
    let permissive = t["permissive"].as_table_mut().unwrap();
    assert!(permissive.remove("tls_peer_memory").is_some());
    for l in t["inbound"].as_array_mut().unwrap() {
        let l = l.as_table_mut().unwrap();
        assert!(l.remove("require_endpoint_verification").is_some());
    }
    let text = toml::to_string(&with_material(t, &m)).unwrap();
    let defaults = Config::from_toml(&text, &m.dir.path().join("ringseal.toml")).unwrap();

    // `describe` prints every validated value; the versions and suites also keep their order.
    assert_eq!(describe(&defaults, ""), describe(&full, ""));
    assert_eq!(suite_names(&defaults), suite_names(&full));
    assert_eq!(versions(&defaults), versions(&full));
    let d = FileLimits::default();
    let l = &full.limits;
    assert_eq!(
        (d.handshake_timeout, d.connect_timeout, d.close_linger),
        (l.handshake_timeout, l.connect_timeout, l.close_linger)
    );
    assert_eq!(
        (d.max_connections, d.shutdown_grace),
        (l.max_connections, l.shutdown_grace)
    );
    assert_eq!(
        (d.max_pending_handshakes, d.max_pending_per_source),
        (l.max_pending_handshakes, l.max_pending_per_source)
    );
    assert_eq!(l.listen_backlog, None);
}

/// The keys a `deny_unknown_fields` struct accepts, read from serde's "unknown field" error, so that a
/// key added to the file structs without being added to the reference file fails this test.
fn fields_of<T: DeserializeOwned + std::fmt::Debug>() -> BTreeSet<String> {
    let err = toml::from_str::<T>("zz_no_such_key = 0")
        .unwrap_err()
        .to_string();
    let line = err
        .lines()
        .find(|l| l.contains("unknown field `zz_no_such_key`"))
        .unwrap_or_else(|| panic!("no unknown-field error: {err}"));
    let expected = line.split_once("expected").expect("lists the fields").1;
    let fields: BTreeSet<String> = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    assert!(!fields.is_empty(), "{err}");
    fields
}

/// The `# key = value` lines of one table of a config file: documented keys not set in the example.
fn commented_keys(text: &str, header: &str) -> BTreeSet<String> {
    text.lines()
        .skip_while(|l| *l != header)
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .filter_map(|l| l.strip_prefix("# ")?.split_once(" = "))
        .map(|(k, _)| k.to_owned())
        .filter(|k| {
            k.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .collect()
}

fn keys(t: &toml::Table) -> BTreeSet<String> {
    t.keys().cloned().collect()
}

#[test]
fn reference_config_has_every_key() {
    let path = shipped("ringseal.toml");
    let t = table(&read(&path), &path);
    assert_eq!(keys(&t), fields_of::<FileConfig>(), "top level");
    // cert/key/ca exclude keystore/truststore: the alternatives are documented as commented-out keys.
    let mut tls = keys(t["tls"].as_table().unwrap());
    tls.extend(commented_keys(&read(&path), "[tls]"));
    assert_eq!(tls, fields_of::<FileTls>(), "[tls]");
    assert_eq!(
        keys(t["limits"].as_table().unwrap()),
        fields_of::<FileLimits>(),
        "[limits]"
    );
    assert_eq!(
        keys(t["permissive"].as_table().unwrap()),
        fields_of::<FilePermissive>(),
        "[permissive]"
    );
    assert_eq!(
        keys(t["logging"].as_table().unwrap()),
        fields_of::<FileLogging>(),
        "[logging]"
    );
    let mut handover = keys(t["handover"].as_table().unwrap());
    handover.extend(commented_keys(&read(&path), "[handover]"));
    assert_eq!(handover, fields_of::<FileHandover>(), "[handover]");
    let inbound = t["inbound"].as_array().unwrap();
    assert!(!inbound.is_empty());
    for l in inbound {
        let l = l.as_table().unwrap();
        assert_eq!(keys(l), fields_of::<FileInbound>(), "[[inbound]]");
        let allow = l["allow"].as_table().unwrap();
        assert_eq!(keys(allow), fields_of::<FileAllow>(), "[inbound.allow]");
        let mut own = keys(l["tls"].as_table().unwrap());
        own.extend(commented_keys(&read(&path), "[inbound.tls]"));
        assert_eq!(own, fields_of::<FileListenerTls>(), "[inbound.tls]");
    }
    // A listener's table takes every key of [tls] but the per-process reload_interval.
    let mut top = fields_of::<FileTls>();
    top.remove("reload_interval");
    assert_eq!(fields_of::<FileListenerTls>(), top);
}

/// Every `key = value` line of the reference file has a comment right above it.
#[test]
fn reference_config_documents_every_key() {
    let text = read(&shipped("ringseal.toml"));
    let mut previous = "";
    let mut undocumented = Vec::new();
    for line in text.lines() {
        let is_key = line.contains(" = ") && !line.starts_with([' ', '#', '"', '[']);
        if is_key && !previous.starts_with('#') {
            undocumented.push(line);
        }
        if !line.trim().is_empty() {
            previous = line;
        }
    }
    assert!(
        undocumented.is_empty(),
        "keys without a comment: {undocumented:#?}"
    );
}

#[test]
fn example_configs_values() {
    let m = Material::generate();

    let c = validate_shipped(&shipped("examples/minimal.toml"), &m);
    assert_eq!(versions(&c), ["TLSv1.3", "TLSv1.2"]);
    let all: Vec<_> = crate::tls::provider()
        .cipher_suites
        .iter()
        .map(|s| iana_name(*s))
        .collect();
    assert_eq!(suite_names(&c), all);
    assert_eq!(c.tls.require_client_auth, ClientAuth::Required);
    let [l] = &c.inbound[..] else {
        panic!("one [[inbound]]: {:?}", c.inbound)
    };
    assert_eq!(
        (l.listen, l.forward),
        (addr("0.0.0.0:7001"), addr("127.0.0.1:7000"))
    );
    assert!(!l.require_endpoint_verification);
    assert!(l.allow.is_empty());
    let d = Limits::default();
    assert_eq!(
        format!("{:?}", c.limits),
        format!("{d:?}"),
        "minimal: default limits"
    );

    let c = validate_shipped(&shipped("examples/strict-cluster.toml"), &m);
    assert_eq!(versions(&c), ["TLSv1.3"]);
    assert_eq!(
        suite_names(&c),
        ["TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256"]
    );
    assert_eq!(c.tls.require_client_auth, ClientAuth::Required);
    let [l] = &c.inbound[..] else {
        panic!("one [[inbound]]: {:?}", c.inbound)
    };
    assert!(l.require_endpoint_verification);
    let allow = AllowList {
        ou: strings(&["ProdCluster"]),
        ..AllowList::default()
    };
    assert_eq!(l.allow, allow);
    assert_eq!(c.limits.handshake_timeout, Duration::from_secs(5));
    assert_eq!(c.limits.max_connections, 2000);
    assert_eq!(c.limits.connect_timeout, d.connect_timeout);

    let c = validate_shipped(&shipped("examples/multi-listener.toml"), &m);
    let got: Vec<_> = c
        .inbound
        .iter()
        .map(|l| (l.listen, l.forward, l.require_endpoint_verification))
        .collect();
    let forward = addr("127.0.0.1:7000");
    assert_eq!(
        got,
        [
            (addr("0.0.0.0:7001"), forward, true),
            (addr("[::]:7011"), forward, true)
        ]
    );
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let m = Material::generate();
    let sub = m.dir.path().join("etc");
    std::fs::create_dir(&sub).unwrap();
    let text = "[tls]\ncert = \"../node.crt\"\nkey = \"../node.key\"\nca = \"../ca.crt\"\n\
                [[inbound]]\nlisten = \"0.0.0.0:7001\"\nforward = \"127.0.0.1:7000\"\n";
    let path = sub.join("ringseal.toml");
    std::fs::write(&path, text).unwrap();
    let c = Config::load(&path).unwrap();
    let f = c.tls.files;
    assert_eq!(
        f.identity,
        IdentityFiles::Pem {
            cert: sub.join("../node.crt"),
            key: sub.join("../node.key")
        }
    );
    assert_eq!(f.trust, TrustFiles::Pem(sub.join("../ca.crt")));
}

#[test]
fn dns_allow_entries_are_lower_cased_and_ips_canonical() {
    let m = Material::generate();
    let text = format!(
        "[tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n[[inbound]]\nlisten = \"[::]:7001\"\n\
         forward = \"[::1]:7000\"\nallow = {{ dns = [\"Node1.Example.COM\"], ip = [\"::ffff:10.0.0.1\"], \
         uri = [\"spiffe://example.com/cassandra\"], cn = [\"node1\"] }}\n",
        m.path("cert"),
        m.path("key"),
        m.path("ca")
    );
    let c = Config::from_toml(&text, &m.dir.path().join("x.toml")).unwrap();
    let allow = &c.inbound[0].allow;
    assert_eq!(allow.dns, ["node1.example.com"]);
    assert_eq!(allow.ip, [IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))]);
    assert_eq!(allow.uri, ["spiffe://example.com/cassandra"]);
    assert_eq!(allow.cn, ["node1"]);
    assert!(allow.ou.is_empty());
    assert_eq!(c.inbound[0].forward, addr("[::1]:7000"));
}

/// What the header of an invalid config asks of its error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// `# expect: S`: the message contains S.
    Contains,
    /// `# expect-not: S`: the message does not contain S (e.g. a wrong hint).
    Lacks,
}

/// One file of `testdata/invalid-configs/`, read.
struct InvalidCase {
    name: String,
    text: String,
    /// `(check, substring)` from the header lines.
    checks: Vec<(Check, String)>,
}

impl InvalidCase {
    fn read(path: &Path) -> Self {
        let text = read(path);
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let mut checks = Vec::new();
        for line in text.lines() {
            let Some(d) = line.strip_prefix("# ") else {
                break;
            };
            let (check, want) = if let Some(w) = d.strip_prefix("expect: ") {
                (Check::Contains, w)
            } else if let Some(w) = d.strip_prefix("expect-not: ") {
                (Check::Lacks, w)
            } else {
                break;
            };
            assert!(!want.trim().is_empty(), "{name}: empty `{line}`");
            checks.push((check, want.to_owned()));
        }
        assert!(
            text.starts_with("# expect: "),
            "{name}: the first line must be `# expect: <substring of the error message>`"
        );
        Self { name, text, checks }
    }

    /// Writes the case with its placeholders filled into the material directory and loads it; returns
    /// the failed checks.
    fn run(&self, m: &Material) -> Vec<String> {
        let origin = Path::new(&self.name);
        let config_path = m.dir.path().join(&self.name);
        std::fs::write(&config_path, m.substitute(&self.text, origin)).unwrap();
        let name = &self.name;
        let loaded = Config::load(&config_path)
            .map_err(crate::StartError::from)
            .and_then(|c| Ok(crate::load_tls(c, &config_path)?));
        let msg = match loaded {
            Ok(c) => return vec![format!("{name}: accepted:\n{}", describe(&c, ""))],
            Err(e) => e.to_string(),
        };
        let mut failures = Vec::new();
        let prefix = format!("config {}: ", config_path.display());
        if !msg.starts_with(&prefix) {
            failures.push(format!("{name}: does not start with {prefix:?}:\n{msg}"));
        }
        if msg.contains(['\n', '\r']) {
            failures.push(format!("{name}: not one line:\n{msg}"));
        }
        for (check, want) in &self.checks {
            let want = m.substitute(want, origin);
            match check {
                Check::Contains if !msg.contains(&want) => {
                    failures.push(format!("{name}: want {want:?} in:\n{msg}"));
                }
                Check::Lacks if msg.contains(&want) => {
                    failures.push(format!("{name}: unwanted {want:?} in:\n{msg}"));
                }
                _ => {}
            }
        }
        failures
    }
}

fn invalid_cases() -> Vec<InvalidCase> {
    let cases: Vec<_> = toml_files(&manifest_dir().join("testdata/invalid-configs"))
        .iter()
        .map(|p| InvalidCase::read(p))
        .collect();
    assert!(cases.len() >= 30, "only {} invalid configs", cases.len());
    cases
}

fn assert_no_failures(failures: &[String], cases: usize) {
    assert!(
        failures.is_empty(),
        "{} failed check(s) over {cases} invalid configs:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// Each file of `testdata/invalid-configs/` is refused with its `# expect:` message, naming the config file.
#[test]
fn invalid_configs_fail_with_their_message() {
    let m = Material::generate();
    let cases = invalid_cases();
    let failures: Vec<_> = cases.iter().flat_map(|c| c.run(&m)).collect();
    assert_no_failures(&failures, cases.len());
}

#[test]
fn dns_and_uri_entries_with_a_star_become_patterns_beside_exact_values() {
    let m = Material::generate();
    let text = format!(
        "[tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n[[inbound]]\nlisten = \"0.0.0.0:7001\"\n\
         forward = \"127.0.0.1:7000\"\nallow = {{ dns = [\"Node1.Example\", \
         \"*.DC1-Service.db.svc.cluster.local\"], uri = [\"spiffe://cluster.local/ns/db/sa/*\", \
         \"spiffe://cluster.local/ns/db/sa/x\"] }}\n",
        m.path("cert"),
        m.path("key"),
        m.path("ca")
    );
    let c = Config::from_toml(&text, &m.dir.path().join("x.toml")).unwrap();
    let allow = &c.inbound[0].allow;
    assert_eq!(allow.dns, ["node1.example"]);
    assert_eq!(allow.uri, ["spiffe://cluster.local/ns/db/sa/x"]);
    assert_eq!(allow.dns_patterns.len(), 1);
    assert_eq!(allow.uri_patterns.len(), 1);
    // What `check` and the start-up line print: every entry, and what a * stands for.
    let shown = allow.to_string();
    assert_eq!(
        shown,
        "dns=node1.example|*.dc1-service.db.svc.cluster.local \
         uri=spiffe://cluster.local/ns/db/sa/x|spiffe://cluster.local/ns/db/sa/* \
         (dns *: one left-most label) (uri *: one path segment, final **: one or more)"
    );
}

/// Two inbound listeners and an outbound one; `client_tls` is the second inbound's own `[inbound.tls]`.
fn three_listeners(m: &Material, client_tls: &str) -> String {
    format!(
        "[tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\nprotocols = [\"TLSv1.3\"]\n\
         [[inbound]]\nlisten = \"0.0.0.0:7001\"\nforward = \"127.0.0.1:7000\"\n\
         [[inbound]]\nname = \"client\"\nlisten = \"0.0.0.0:9142\"\nforward = \"127.0.0.1:9042\"\n\
         [inbound.tls]\n{client_tls}\n\
         [[outbound]]\nlisten = \"127.0.0.1:7002\"\nupstream = \"10.0.0.2:7001\"\n",
        m.path("cert"),
        m.path("key"),
        m.path("ca")
    )
}

#[test]
fn listeners_are_named_by_position_unless_named() {
    let m = Material::generate();
    let text = three_listeners(&m, "")
        + "[[outbound]]\nlisten = \"127.0.0.1:7003\"\nupstream = \"10.0.0.3:7001\"\n";
    let c = Config::from_toml(&text, &m.dir.path().join("x.toml")).unwrap();
    let names: Vec<_> = c.inbound.iter().map(|l| l.name.to_string()).collect();
    assert_eq!(names, ["internode", "client"]);
    let names: Vec<_> = c.outbound.iter().map(|l| l.name.to_string()).collect();
    assert_eq!(names, ["outbound", "outbound-2"]);
}

#[test]
fn a_listener_table_inherits_from_tls_by_group() {
    let m = Material::generate();
    let at = m.dir.path().join("x.toml");
    // Without keys of its own (or without the table) a listener's policy is [tls].
    let c = Config::from_toml(&three_listeners(&m, ""), &at).unwrap();
    assert_eq!(c.inbound[0].tls, c.tls);
    assert_eq!(c.inbound[1].tls, c.tls);
    assert_eq!(c.outbound[0].tls, c.tls);

    // One key replaces itself; identity, trust and the other keys stay [tls]'s.
    let c = Config::from_toml(
        &three_listeners(&m, "require_client_auth = \"optional\""),
        &at,
    )
    .unwrap();
    let client = &c.inbound[1].tls;
    assert_eq!(client.require_client_auth, ClientAuth::Optional);
    assert_eq!(c.inbound[0].tls.require_client_auth, ClientAuth::Required);
    assert_eq!(client.files, c.tls.files);
    assert_eq!(client.versions, c.tls.versions);

    // Naming the CA replaces the trust, not the identity; `protocols` is still inherited.
    let other_ca = m.dir.path().join("other-ca.crt");
    std::fs::write(&other_ca, Ca::new("Clients").unwrap().cert_pem.as_bytes()).unwrap();
    let c = Config::from_toml(
        &three_listeners(
            &m,
            &format!("ca = {other_ca:?}\nrequire_client_auth = false"),
        ),
        &at,
    )
    .unwrap();
    let client = &c.inbound[1].tls;
    assert_eq!(client.files.trust, TrustFiles::Pem(other_ca));
    assert_eq!(client.files.identity, c.tls.files.identity);
    assert_eq!(client.versions, c.tls.versions);
    assert_eq!(client.require_client_auth, ClientAuth::Off);

    // Naming a keystore replaces cert + key: they are not carried over into a two-identity error.
    let c = Config::from_toml(
        &three_listeners(&m, &format!("keystore = {:?}", m.path("cert"))),
        &at,
    )
    .unwrap();
    assert!(matches!(
        c.inbound[1].tls.files.identity,
        IdentityFiles::Store(_)
    ));
    assert_eq!(c.inbound[1].tls.files.trust, c.tls.files.trust);
}

#[test]
fn listeners_with_equal_policies_share_the_loaded_material() {
    let m = Material::generate();
    let at = m.dir.path().join("x.toml");
    let c = Config::from_toml(
        &three_listeners(&m, "require_client_auth = \"optional\""),
        &at,
    )
    .unwrap();
    let c = crate::load_tls(c, &at).unwrap();
    let same = |a: &LoadedTls, b: &LoadedTls| std::sync::Arc::ptr_eq(&a.material, &b.material);
    // [tls], internode and outbound: one policy, one load.
    assert!(same(&c.tls, &c.inbound[0].tls));
    assert!(same(&c.tls, &c.outbound[0].tls));
    // The client listener's policy differs (client auth), so it has its own.
    assert!(!same(&c.tls, &c.inbound[1].tls));
    assert_eq!(c.inbound[1].tls.require_client_auth, ClientAuth::Optional);
}

#[test]
fn the_handover_socket_defaults_to_the_runtime_directory() {
    use super::validate::default_handover_socket as default;
    assert_eq!(default(None), None);
    assert_eq!(default(Some("".into())), None);
    assert_eq!(
        default(Some("/run/ringseal".into())),
        Some(PathBuf::from("/run/ringseal/handover.sock"))
    );
    assert_eq!(
        default(Some("/run/ringseal:/run/other".into())),
        Some(PathBuf::from("/run/ringseal/handover.sock"))
    );
    // A key given is relative to the config file's directory.
    let m = Material::generate();
    let text = format!(
        "[handover]\nsocket = \"h.sock\"\n[tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n[[inbound]]\n\
         listen = \"0.0.0.0:7001\"\nforward = \"127.0.0.1:7000\"\n",
        m.path("cert"),
        m.path("key"),
        m.path("ca")
    );
    let c = Config::from_toml(&text, &m.dir.path().join("x.toml")).unwrap();
    assert_eq!(c.handover.socket, Some(m.dir.path().join("h.sock")));
}
