//! Deriving a ringseal config from the node's own `cassandra.yaml` (`--cassandra-yaml`).
//!
//! [`derive`] reads the file Cassandra reads and turns `server_encryption_options` and the port and
//! address settings into a ringseal config, as a TOML table; [`merge`] lays a ringseal config file
//! over it (the file wins key by key), and the result deserializes into the file structs like any
//! ringseal config. Cassandra does not have to be running, and nothing is resolved or connected:
//! host names and interfaces are reported, not looked up.
//!
//! Every key inside `server_encryption_options` is either mapped or named in a warning
//! ([`Derived::warnings`], one line per key: what ringseal does instead and how to get what the key
//! asked for). Facts an operator should know but need not act on are [`Derived::notes`]. Other
//! top-level keys (a cassandra.yaml has a few hundred: `num_tokens`, `commitlog_sync_period`, the 4.1
//! duration and size spellings...) are ignored without a word, except the address keys below.
//! `client_encryption_options` is CQL, not internode traffic, and is ignored entirely.
//!
//! # Mapping
//!
//! Versions were checked against the `conf/cassandra.yaml`, `EncryptionOptions.java`, `Config.java`
//! and `DatabaseDescriptor.java` of the cassandra-3.11, 4.0, 4.1 and 5.0 branches and trunk (after
//! 5.0). Defaults are Cassandra's.
//!
//! | cassandra.yaml | versions | ringseal |
//! |---|---|---|
//! | `cluster_name` (`Test Cluster`) | all | `cluster_name`, [`Derived::cluster_name`] |
//! | `listen_address` (IP) | all | the address of `inbound[0].listen` and `.forward` |
//! | `listen_address: localhost` | all | `127.0.0.1` |
//! | `listen_address` absent or empty | all | `127.0.0.1` + warning: Cassandra takes the host name's address, which is not looked up |
//! | `listen_address` host name, `listen_interface` | all | warning; `inbound[0]` gets no `listen`/`forward`, the ringseal config must give them |
//! | `listen_address` wildcard (`0.0.0.0`, `::`), both `listen_address` and `listen_interface` | all | error, as in Cassandra |
//! | `listen_on_broadcast_address: true` | all | warning: add a second `[[inbound]]` on `broadcast_address` |
//! | `storage_port` (7000) | all | port of `inbound[0].forward` |
//! | `ssl_storage_port` (7001) | all (deprecated 4.0+) | port of `inbound[0].listen`, `outbound[0].tls_port`; equal ports are an error |
//! | `internode_authenticator` | string ≤4.1, `class_name` + `parameters` 5.0+ | `AllowAllInternodeAuthenticator`: nothing; any other: warning (use `allow`) |
//! | `internode_encryption: none` (default) | all | note: ringseal encrypts all internode traffic |
//! | `internode_encryption: all` | all | warning: Cassandra's own TLS cannot run behind ringseal; set `none` |
//! | `internode_encryption: dc`, `rack` | all | warning: ringseal encrypts all traffic, also inside the dc/rack (mode stays strict unless `optional: true`, although Cassandra accepts plaintext then) |
//! | `optional` | 4.0+ | `true`: `mode = "permissive"` (+ `inbound[0].allow_non_loopback_plaintext = true` on a non-loopback address); else `"strict"` |
//! | `enabled` | 4.0+ (no effect on internode) | `true`: warning; `false`: nothing |
//! | `enable_legacy_ssl_storage_port` | 4.0 | `true`: warning (Cassandra takes ringseal's port); both spellings: error, as in Cassandra |
//! | `legacy_ssl_storage_port_enabled` | 4.1+ | as `enable_legacy_ssl_storage_port` |
//! | `keystore` (`conf/.keystore`) | all | `tls.keystore` |
//! | `keystore_password` (`cassandra` ≤4.1.1; none from 4.1.2) | all | `tls.keystore_password`; absent: `"cassandra"` (not for PEM) |
//! | `keystore_password_file` | trunk | `tls.keystore_password_file` (the password wins when both are set, as in Cassandra) |
//! | `truststore` (`conf/.truststore`) | all | `tls.truststore` |
//! | `truststore_password`, `truststore_password_file` | all, trunk | `tls.truststore_password`, `tls.truststore_password_file`; as the keystore's; ignored for PEM, as in Cassandra |
//! | `outbound_keystore`, `outbound_keystore_password` | 5.0+ | `tls.outbound_keystore`, `tls.outbound_keystore_password`, `tls.outbound_keystore_type` (defaults: the keystore's, as in Cassandra) |
//! | `outbound_keystore_password_file` | trunk | `tls.outbound_keystore_password_file` |
//! | `store_type` (`JKS`) | all | `tls.keystore_type`, `tls.truststore_type` (and `tls.outbound_keystore_type`): `jks`, `pkcs12`, `pem`; others: warning. As in Java, ringseal reads a PKCS#12 file said to be JKS and the other way round |
//! | `keystore_type`, `truststore_type` | DataStax Enterprise spellings; no Apache version has them | override `store_type` for their store |
//! | `ssl_context_factory.class_name` | 4.1+ | `DefaultSslContextFactory`: nothing; `PEMBasedSslContextFactory`: both store types `pem`; any other: warning |
//! | `ssl_context_factory.parameters` `private_key`, `trusted_certificates`, `outbound_private_key` (+ `_password`) | 4.1+ (outbound 5.0+) | warning (inline PEM: write it to a file); the store path is left out |
//! | `protocol` (`TLS`) | all | `TLS`: the defaults; a version: `tls.protocols = [it]` |
//! | `accepted_protocols` | 4.0+ | `tls.protocols` (plus a `protocol` version not in it, as in Cassandra); TLSv1, TLSv1.1, SSL: warning, left out |
//! | `cipher_suites` | all | `tls.cipher_suites`; suites ringseal refuses (CBC, static RSA, DHE...): warning with the replacement, left out. Without a TLS 1.3 (or 1.2) suite that version is turned off, as Java does |
//! | `require_client_auth` (`false`) | all; `optional` trunk | `tls.require_client_auth` (`optional`: `false`, which still verifies a presented certificate) |
//! | `require_endpoint_verification` (`false`) | all | `outbound[0]`'s, and `inbound[0]`'s when client certificates are required (Cassandra can only check a certificate it asked for) |
//! | `algorithm` | all | warning (Java's key manager algorithm) |
//! | `max_certificate_validity_period`, `certificate_validity_warn_threshold` | trunk | warning |
//! | anything else inside `server_encryption_options` | | warning: not a Cassandra setting |
//!
//! `[[outbound]]` is always the transparent listener `127.0.0.1:7002` (fed by `ringseal rules`).
//!
//! # Decisions
//!
//! * **Relative paths** are relative to Cassandra's working directory, normally `CASSANDRA_HOME`:
//!   they are resolved against `$CASSANDRA_HOME` when it is set, else against the parent of the
//!   yaml's directory when that directory is called `conf` (a tarball install), else against the
//!   yaml's directory (`/etc/cassandra` for packages). A note says which. Paths in the table are
//!   absolute.
//! * **Values** follow Cassandra's YAML reader (SnakeYAML, YAML 1.1) where it matters: a string
//!   setting takes any scalar as written (`keystore_password: 123456` is the password "123456"),
//!   booleans may be `yes`/`no`/`on`/`off`, a port may be quoted (`"7000"`), and `~`, `null` or an
//!   empty value means "not set" (the default). Anchors, aliases and merge keys (`<<: *tls`) work.
//!   Duplicate keys are allowed, the last one counts (as in Cassandra), with a warning for the keys
//!   read here.
//! * **An empty file** (or one with only comments) is an error, not "all defaults": Cassandra itself
//!   would not start without `partitioner`, `commitlog_sync` and `endpoint_snitch`, so an empty
//!   file is a wrong path or a truncated write, and a TLS config invented from nothing would hide
//!   that. A real file without `server_encryption_options` does get Cassandra's defaults (and a note).
//! * **`internode_encryption: none` without `optional`** is `mode = "strict"`. Cassandra 4.0+ then
//!   implicitly accepts both (optional defaults to true when a keystore exists), but that describes
//!   a node that does no TLS at all; a sidecar whose job is mTLS starts strict unless `optional:
//!   true` says a migration is under way.
//! * **Passwords** default to `"cassandra"`, the value every shipped cassandra.yaml up to 4.1 sets
//!   and the default up to 4.1.1 (from 4.1.2 Cassandra has no default and needs `keystore_password`
//!   for JKS and PKCS12 anyway). PEM stores get no default: their keys are normally unencrypted.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

// YAML parser: saphyr-parser (the parser of saphyr, the maintained successor of yaml-rust and
// yaml-rust2, released 2026-10). serde_yaml is deprecated, serde_yml is not trustworthy, and
// serde_yaml_ng / serde_norway have not been released since 2024. The event API also gives what a
// serde deserializer hides: the position of every value (errors and warnings name line and
// column), the scalar as written (SnakeYAML reads `password: 0123` as the string "0123"), whether
// it was quoted, and duplicate keys (a map would drop them).
use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Span, StrInput};
use toml::{Table, Value};

use crate::tls::suites::{self, SuiteError};

/// Nesting deeper than this is refused (cassandra.yaml nests three levels).
const MAX_DEPTH: usize = 64;
/// How many nodes alias expansion may copy (a "billion laughs" file stops here).
const MAX_ALIAS_NODES: usize = 100_000;

const DEFAULT_CLUSTER_NAME: &str = "Test Cluster";
const DEFAULT_STORAGE_PORT: u16 = 7000;
const DEFAULT_SSL_STORAGE_PORT: u16 = 7001;
const DEFAULT_KEYSTORE: &str = "conf/.keystore";
const DEFAULT_TRUSTSTORE: &str = "conf/.truststore";
const DEFAULT_PASSWORD: &str = "cassandra";
/// Where the transparent outbound listener takes the node's redirected connections.
const OUTBOUND_LISTEN: &str = "127.0.0.1:7002";
const SEO: &str = "server_encryption_options";
const PEM_FACTORY: &str = "org.apache.cassandra.security.PEMBasedSslContextFactory";
const DEFAULT_FACTORY: &str = "org.apache.cassandra.security.DefaultSslContextFactory";
const ALLOW_ALL_AUTHENTICATOR: &str = "org.apache.cassandra.auth.AllowAllInternodeAuthenticator";

/// A ringseal config derived from a cassandra.yaml.
pub struct Derived {
    /// A ringseal config as a TOML table, ready to be merged with (overridden by) a ringseal config
    /// file and deserialized into `FileConfig`. Paths in it are absolute.
    pub table: Table,
    /// One line per cassandra.yaml key or value ringseal cannot honour, naming the key and why.
    pub warnings: Vec<String>,
    /// Facts about the derivation that need no action (defaults used, where relative paths were
    /// resolved, what `internode_encryption: none` means here). For `check` to print.
    pub notes: Vec<String>,
    /// `cluster_name`, or Cassandra's default "Test Cluster" when the file does not set it.
    pub cluster_name: Option<String>,
}

impl Derived {
    /// The table as TOML text with every password replaced by `"<redacted>"`: what `check` prints.
    pub fn to_toml_redacted(&self) -> String {
        let mut table = self.table.clone();
        redact(&mut table);
        toml::to_string(&table).unwrap_or_else(|e| format!("# cannot render the table: {e}\n"))
    }
}

/// Passwords never appear in Debug output.
impl fmt::Debug for Derived {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut table = self.table.clone();
        redact(&mut table);
        f.debug_struct("Derived")
            .field("table", &table)
            .field("warnings", &self.warnings)
            .field("notes", &self.notes)
            .field("cluster_name", &self.cluster_name)
            .finish()
    }
}

fn redact(table: &mut Table) {
    for (key, value) in table.iter_mut() {
        match value {
            Value::Table(t) => redact(t),
            Value::Array(items) => items.iter_mut().for_each(|v| {
                if let Value::Table(t) = v {
                    redact(t);
                }
            }),
            Value::String(s) if key.ends_with("password") => *s = "<redacted>".into(),
            _ => {}
        }
    }
}

/// Why a cassandra.yaml cannot be used. Every message names the file, and where it applies the key
/// and the line and column, and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum CassandraYamlError {
    #[error(
        "cassandra.yaml {path}: cannot read: {source} (check the path given to --cassandra-yaml)"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cassandra.yaml {path}: {why} (check the path given to --cassandra-yaml)")]
    Unusable {
        path: PathBuf,
        why: crate::files::ReadError,
    },
    #[error(
        "cassandra.yaml {path}: not a text file (invalid UTF-8 at byte {offset}); give the node's \
         cassandra.yaml"
    )]
    NotText { path: PathBuf, offset: usize },
    #[error("cassandra.yaml {path}: not valid YAML: {message} (line {line} column {column}){hint}")]
    Syntax {
        path: PathBuf,
        message: String,
        line: usize,
        column: usize,
        hint: &'static str,
    },
    #[error(
        "cassandra.yaml {path}: the file has no settings (it is empty or only comments); give the \
         node's real cassandra.yaml"
    )]
    Empty { path: PathBuf },
    #[error(
        "cassandra.yaml {path}: a second YAML document starts at line {line}; Cassandra reads \
         exactly one, so remove the `---` line and what follows it"
    )]
    MultipleDocuments { path: PathBuf, line: usize },
    #[error(
        "cassandra.yaml {path}: {key}: expected {expected}, found {found} (line {line} column \
         {column}){hint}"
    )]
    Type {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: String,
        line: usize,
        column: usize,
        hint: &'static str,
    },
    #[error("cassandra.yaml {path}: {key}: {message} (line {line} column {column})")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
        line: usize,
        column: usize,
    },
}

/// Reads `yaml_path` and derives a ringseal config from it. Relative paths in it are resolved
/// against `$CASSANDRA_HOME` when that is set (see [`derive_with_home`]).
pub fn derive(yaml_path: &Path) -> Result<Derived, CassandraYamlError> {
    let home = std::env::var_os("CASSANDRA_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from);
    derive_with_home(yaml_path, home.as_deref())
}

/// [`derive`] with `CASSANDRA_HOME` given instead of read from the environment.
pub fn derive_with_home(
    yaml_path: &Path,
    cassandra_home: Option<&Path>,
) -> Result<Derived, CassandraYamlError> {
    let bytes =
        crate::files::read(yaml_path, crate::files::CASSANDRA_YAML).map_err(|e| match e {
            crate::files::ReadError::Io(source) => CassandraYamlError::Read {
                path: yaml_path.to_owned(),
                source,
            },
            why => CassandraYamlError::Unusable {
                path: yaml_path.to_owned(),
                why,
            },
        })?;
    derive_bytes(&bytes, yaml_path, cassandra_home)
}

/// [`derive_with_home`] on the contents of the file, already read: `yaml_path` only names the file in
/// messages and locates relative paths; nothing is read.
pub fn derive_bytes(
    bytes: &[u8],
    yaml_path: &Path,
    cassandra_home: Option<&Path>,
) -> Result<Derived, CassandraYamlError> {
    let path = yaml_path.to_owned();
    let text = std::str::from_utf8(bytes).map_err(|e| CassandraYamlError::NotText {
        path: path.clone(),
        offset: e.valid_up_to(),
    })?;
    let root = parse(text).map_err(|e| match e {
        ParseError::Syntax { message, at } => CassandraYamlError::Syntax {
            path: path.clone(),
            // ("unprintable" contains "tab": match the word.)
            hint: if message
                .split(|c: char| !c.is_ascii_alphabetic())
                .any(|w| w == "tab" || w == "tabs")
            {
                "; YAML indents with spaces, never tabs"
            } else {
                toml_hint(text)
            },
            message,
            line: at.line,
            column: at.column,
        },
        ParseError::Empty => CassandraYamlError::Empty { path: path.clone() },
        ParseError::MultipleDocuments { at } => CassandraYamlError::MultipleDocuments {
            path: path.clone(),
            line: at.line,
        },
    })?;
    let (base, base_why) = base_dir(yaml_path, cassandra_home);
    let deriver = Deriver {
        path,
        base,
        base_why,
        relative_resolved: false,
        warnings: Vec::new(),
        notes: Vec::new(),
    };
    let Kind::Map(entries) = &root.kind else {
        return Err(deriver.type_error("top level", EXPECTED_SETTINGS, &root, toml_hint(text)));
    };
    deriver.derive(entries)
}

/// Deep merge: `overrides` (a parsed ringseal config) wins key by key inside tables; arrays (e.g.
/// `[[inbound]]`) and every other value are replaced whole.
pub fn merge(base: &mut Table, overrides: Table) {
    for (key, value) in overrides {
        match (base.get_mut(&key), value) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Where Cassandra's relative paths point, and why (for the note).
fn base_dir(yaml_path: &Path, cassandra_home: Option<&Path>) -> (PathBuf, &'static str) {
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    if let Some(home) = cassandra_home {
        return (absolute(home), "$CASSANDRA_HOME");
    }
    let yaml = absolute(yaml_path);
    let dir = yaml.parent().unwrap_or(Path::new("/")).to_owned();
    match dir.parent() {
        Some(parent) if dir.file_name().is_some_and(|n| n == "conf") => (
            parent.to_owned(),
            "the parent of the yaml's conf directory, i.e. CASSANDRA_HOME of a tarball install",
        ),
        _ => (
            dir,
            "the yaml's directory; set $CASSANDRA_HOME if Cassandra runs elsewhere",
        ),
    }
}

/// A hint for a TOML file given where a cassandra.yaml belongs (the ringseal config is TOML).
fn toml_hint(text: &str) -> &'static str {
    if text.parse::<Table>().is_ok_and(|t| !t.is_empty()) {
        "; this is TOML (a ringseal config?): pass the ringseal config with --config and the node's \
         cassandra.yaml with --cassandra-yaml"
    } else {
        ""
    }
}

// ---------------------------------------------------------------------------------------------
// The YAML tree: what SnakeYAML would see, with positions.
// ---------------------------------------------------------------------------------------------

/// A position in the file, both 1-based.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pos {
    line: usize,
    column: usize,
}

impl From<&saphyr_parser::Marker> for Pos {
    fn from(m: &saphyr_parser::Marker) -> Self {
        Pos {
            line: m.line(),
            column: m.col() + 1,
        }
    }
}

#[derive(Clone, Debug)]
struct Node<'a> {
    at: Pos,
    kind: Kind<'a>,
}

#[derive(Clone, Debug)]
enum Kind<'a> {
    /// A scalar as written. `plain` scalars (not quoted, no block style, no `!!str` tag) are the
    /// ones YAML resolves to null, booleans and numbers.
    Scalar {
        text: Cow<'a, str>,
        plain: bool,
    },
    Seq(Vec<Node<'a>>),
    /// Entries in file order, duplicates kept.
    Map(Vec<(Node<'a>, Node<'a>)>),
}

impl Node<'_> {
    /// `~`, `null` or an empty value: "not set" in Cassandra's Config.
    fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, plain: true }
            if matches!(text.as_ref(), "" | "~" | "null" | "Null" | "NULL"))
    }

    fn scalar(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// What the value is, for "found ..." in type errors.
    fn describe(&self) -> String {
        match &self.kind {
            Kind::Seq(_) => "a list".into(),
            Kind::Map(_) => "a mapping".into(),
            Kind::Scalar { .. } if self.is_null() => "nothing (null)".into(),
            Kind::Scalar { text, plain } => {
                let first = text.lines().next().unwrap_or_default();
                let shown: String = if first.chars().count() > 60 {
                    first.chars().take(57).chain("...".chars()).collect()
                } else if first.len() < text.len() {
                    format!("{first}...")
                } else {
                    text.to_string()
                };
                if !plain {
                    format!("string {shown:?}")
                } else if matches!(
                    text.as_ref(),
                    "true" | "True" | "TRUE" | "false" | "False" | "FALSE"
                ) {
                    format!("boolean {shown}")
                } else if text.parse::<i64>().is_ok() {
                    format!("integer {shown}")
                } else if text.parse::<f64>().is_ok() && text.chars().any(|c| c.is_ascii_digit()) {
                    format!("number {shown}")
                } else {
                    format!("string {shown:?}")
                }
            }
        }
    }
}

#[derive(Debug)]
enum ParseError {
    Syntax { message: String, at: Pos },
    Empty,
    MultipleDocuments { at: Pos },
}

impl From<ScanError> for ParseError {
    fn from(e: ScanError) -> Self {
        ParseError::Syntax {
            message: e.info().to_owned(),
            at: e.marker().into(),
        }
    }
}

/// Parses the single YAML document of `text` into a tree.
fn parse(text: &str) -> Result<Node<'_>, ParseError> {
    let mut builder = TreeBuilder {
        parser: Parser::new_from_str(text),
        anchors: HashMap::new(),
        alias_nodes: 0,
    };
    let mut root = None;
    loop {
        let (event, at) = builder.next()?;
        match event {
            Event::StreamStart | Event::Nothing | Event::DocumentEnd => {}
            Event::StreamEnd => break,
            Event::DocumentStart(_) if root.is_some() => {
                return Err(ParseError::MultipleDocuments { at });
            }
            Event::DocumentStart(_) => {
                let (event, at) = builder.next()?;
                root = Some(builder.node(event, at, 0)?);
            }
            _ => {
                return Err(ParseError::Syntax {
                    message: format!("unexpected {event:?} outside a document"),
                    at,
                });
            }
        }
    }
    match root {
        Some(root) if !root.is_null() => Ok(root),
        _ => Err(ParseError::Empty),
    }
}

struct TreeBuilder<'a> {
    parser: Parser<'a, StrInput<'a>>,
    anchors: HashMap<usize, Node<'a>>,
    alias_nodes: usize,
}

impl<'a> TreeBuilder<'a> {
    fn next(&mut self) -> Result<(Event<'a>, Pos), ParseError> {
        match self.parser.next_event() {
            Some(Ok((event, Span { start, .. }))) => Ok((event, (&start).into())),
            Some(Err(e)) => Err(e.into()),
            None => Ok((Event::StreamEnd, Pos { line: 0, column: 0 })),
        }
    }

    fn node(&mut self, event: Event<'a>, at: Pos, depth: usize) -> Result<Node<'a>, ParseError> {
        if depth > MAX_DEPTH {
            return Err(ParseError::Syntax {
                message: format!("nested deeper than {MAX_DEPTH} levels"),
                at,
            });
        }
        let (node, anchor) = match event {
            Event::Scalar(text, style, anchor, tag) => {
                let str_tag = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let plain = style == ScalarStyle::Plain && !str_tag;
                (
                    Node {
                        at,
                        kind: Kind::Scalar { text, plain },
                    },
                    anchor,
                )
            }
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                loop {
                    let (event, at) = self.next()?;
                    if event == Event::SequenceEnd {
                        break;
                    }
                    items.push(self.node(event, at, depth + 1)?);
                }
                (
                    Node {
                        at,
                        kind: Kind::Seq(items),
                    },
                    anchor,
                )
            }
            Event::MappingStart(anchor, _) => {
                let mut entries = Vec::new();
                loop {
                    let (event, key_at) = self.next()?;
                    if event == Event::MappingEnd {
                        break;
                    }
                    let key = self.node(event, key_at, depth + 1)?;
                    let (event, value_at) = self.next()?;
                    let value = self.node(event, value_at, depth + 1)?;
                    entries.push((key, value));
                }
                (
                    Node {
                        at,
                        kind: Kind::Map(entries),
                    },
                    anchor,
                )
            }
            Event::Alias(id) => {
                let Some(target) = self.anchors.get(&id) else {
                    return Err(ParseError::Syntax {
                        message: "alias to an unknown anchor".into(),
                        at,
                    });
                };
                self.alias_nodes += count_nodes(target);
                if self.alias_nodes > MAX_ALIAS_NODES {
                    return Err(ParseError::Syntax {
                        message: format!("aliases expand to more than {MAX_ALIAS_NODES} values"),
                        at,
                    });
                }
                let mut copy = target.clone();
                copy.at = at;
                return Ok(copy);
            }
            other => {
                return Err(ParseError::Syntax {
                    message: format!("unexpected {other:?}"),
                    at,
                });
            }
        };
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        Ok(node)
    }
}

fn count_nodes(node: &Node<'_>) -> usize {
    1 + match &node.kind {
        Kind::Scalar { .. } => 0,
        Kind::Seq(items) => items.iter().map(count_nodes).sum(),
        Kind::Map(entries) => entries
            .iter()
            .map(|(k, v)| count_nodes(k) + count_nodes(v))
            .sum(),
    }
}

/// The entries of a mapping with scalar keys, as SnakeYAML (and so Cassandra) reads them.
struct Keyed<'n, 'a> {
    /// `(name, key, value)` in file order; of duplicate keys only the last, which wins.
    entries: Vec<(&'n str, &'n Node<'a>, &'n Node<'a>)>,
    /// Names given more than once, with the line of each occurrence.
    duplicates: Vec<(&'n str, Vec<usize>)>,
    /// Keys that are not scalars (`? [a, b]: ...`).
    odd: Vec<&'n Node<'a>>,
}

fn last_wins<'n, 'a>(entries: &'n [(Node<'a>, Node<'a>)]) -> Keyed<'n, 'a> {
    use std::collections::{HashMap, HashSet};
    // Indexes by name, not scans: a file of tens of thousands of keys (within the size bound) must
    // not take quadratic time.
    let mut merged: Vec<(&'n str, &'n Node<'a>, &'n Node<'a>)> = Vec::new();
    let mut merged_names: HashSet<&'n str> = HashSet::new();
    let mut dups: Vec<(&'n str, Vec<usize>)> = Vec::new();
    let mut odd = Vec::new();
    // YAML 1.1 merge keys (`<<: *defaults`), which SnakeYAML applies: merged entries come first,
    // the mapping's own keys override them, and of several merged mappings the first one wins.
    let is_merge =
        |k: &Node<'_>| matches!(&k.kind, Kind::Scalar { text, plain: true } if text == "<<");
    for (key, value) in entries.iter().filter(|(k, _)| is_merge(k)) {
        let maps: Vec<&'n Node<'a>> = match &value.kind {
            Kind::Seq(items) => items.iter().collect(),
            _ => vec![value],
        };
        for map in maps {
            let Kind::Map(inner) = &map.kind else {
                odd.push(key);
                continue;
            };
            for entry in last_wins(inner).entries {
                if merged_names.insert(entry.0) {
                    merged.push(entry);
                }
            }
        }
    }
    let mut explicit: Vec<(&'n str, &'n Node<'a>, &'n Node<'a>)> = Vec::new();
    let mut first_line: HashMap<&'n str, usize> = HashMap::new();
    let mut dup_of: HashMap<&'n str, usize> = HashMap::new();
    // Where each name occurs last among the mapping's own keys: that occurrence is the one kept.
    let mut last: HashMap<&'n str, usize> = HashMap::new();
    for (key, value) in entries.iter().filter(|(k, _)| !is_merge(k)) {
        let Some(name) = key.scalar() else {
            odd.push(key);
            continue;
        };
        match (first_line.get(name), dup_of.get(name)) {
            (None, _) => {
                first_line.insert(name, key.at.line);
            }
            (Some(_), Some(&i)) => dups[i].1.push(key.at.line),
            (Some(&first), None) => {
                dup_of.insert(name, dups.len());
                dups.push((name, vec![first, key.at.line]));
            }
        }
        last.insert(name, explicit.len());
        explicit.push((name, key, value));
    }
    // Merged entries the mapping does not override, in merge order, then the mapping's own keys in the
    // order of their last occurrence.
    let mut out: Vec<_> = merged
        .into_iter()
        .filter(|(n, _, _)| !last.contains_key(n))
        .collect();
    out.extend(
        explicit
            .into_iter()
            .enumerate()
            .filter(|(i, (n, _, _))| last.get(n) == Some(i))
            .map(|(_, e)| e),
    );
    Keyed {
        entries: out,
        duplicates: dups,
        odd,
    }
}

// ---------------------------------------------------------------------------------------------
// From the tree to the ringseal table.
// ---------------------------------------------------------------------------------------------

const EXPECTED_SETTINGS: &str = "a mapping of settings (key: value lines)";
const EXPECTED_MAPPING: &str = "a mapping (key: value lines indented below it)";
const EXPECTED_STRING: &str = "a string";
const EXPECTED_BOOL: &str = "a boolean";
const EXPECTED_PORT: &str = "a port number from 1 to 65535";
const EXPECTED_LIST: &str = "a list of strings";

struct Deriver {
    path: PathBuf,
    base: PathBuf,
    base_why: &'static str,
    relative_resolved: bool,
    /// With the line they are about (0: the file as a whole), to be listed in file order.
    warnings: Vec<(usize, String)>,
    notes: Vec<String>,
}

/// How Cassandra builds its SSL contexts (`ssl_context_factory`, 4.1+).
#[derive(Debug, Default, PartialEq, Eq)]
enum Factory {
    #[default]
    Default,
    Pem,
    Custom(String),
}

/// `server_encryption_options` as read, before mapping. `None`: not set (Cassandra's default).
#[derive(Default)]
struct Seo {
    internode_encryption: Option<(String, Pos)>,
    optional: Option<bool>,
    keystore: Option<String>,
    keystore_password: Option<String>,
    keystore_password_file: Option<String>,
    truststore: Option<String>,
    truststore_password: Option<String>,
    truststore_password_file: Option<String>,
    outbound_keystore: Option<String>,
    outbound_keystore_password: Option<String>,
    outbound_keystore_password_file: Option<String>,
    store_type: Option<(String, Pos)>,
    keystore_type: Option<(String, Pos)>,
    truststore_type: Option<(String, Pos)>,
    protocol: Option<(String, Pos)>,
    accepted_protocols: Option<(Vec<String>, Pos)>,
    cipher_suites: Option<(Vec<String>, Pos)>,
    require_client_auth: Option<ClientAuth>,
    require_endpoint_verification: Option<bool>,
    factory: Factory,
    /// Inline PEM given as factory parameters: the file paths of these stores are not used.
    inline_key: bool,
    inline_trust: bool,
    inline_outbound_key: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientAuth {
    Required,
    NotRequired,
    /// trunk: verify a certificate if the peer sends one.
    Optional,
}

/// The address part of `inbound[0]`.
enum Listen {
    /// An IP address (`localhost` and an absent listen_address are 127.0.0.1).
    Ip(IpAddr),
    /// Cannot be derived (host name, interface): the ringseal config must give it.
    Unknown,
}

impl Deriver {
    fn derive(mut self, root: &[(Node<'_>, Node<'_>)]) -> Result<Derived, CassandraYamlError> {
        let Keyed {
            entries: top,
            duplicates: dups,
            ..
        } = last_wins(root);
        let get = |name: &str| top.iter().find(|(n, _, _)| *n == name).map(|(_, _, v)| *v);
        for (name, lines) in &dups {
            if READ_TOP_LEVEL.contains(name) {
                self.duplicate(name, lines);
            }
        }

        let cluster_name = match get("cluster_name") {
            Some(v) => self.string("cluster_name", v)?,
            None => None,
        };
        let cluster_name = cluster_name.unwrap_or_else(|| {
            self.notes.push(format!(
                "cluster_name is not set: Cassandra's default {DEFAULT_CLUSTER_NAME:?} is used"
            ));
            DEFAULT_CLUSTER_NAME.to_owned()
        });
        let storage_port = self
            .port("storage_port", get("storage_port"))?
            .unwrap_or(DEFAULT_STORAGE_PORT);
        let ssl_port_node = get("ssl_storage_port");
        let ssl_storage_port = self
            .port("ssl_storage_port", ssl_port_node)?
            .unwrap_or(DEFAULT_SSL_STORAGE_PORT);
        if ssl_storage_port == storage_port {
            let at = ssl_port_node.map_or(Pos { line: 1, column: 1 }, |n| n.at);
            return Err(self.invalid(
                "ssl_storage_port",
                format!(
                    "equals storage_port ({storage_port}), but ringseal takes TLS on ssl_storage_port \
                     and forwards it to storage_port; give them different ports (Cassandra's \
                     defaults are 7000 and 7001)"
                ),
                at,
            ));
        }
        let listen = self.listen(
            get("listen_address"),
            get("listen_interface"),
            get("listen_interface_prefer_ipv6"),
        )?;
        self.broadcast(
            get("listen_on_broadcast_address"),
            get("broadcast_address"),
            ssl_storage_port,
        )?;
        self.authenticator(get("internode_authenticator"))?;

        let seo = match get(SEO) {
            Some(node) if !node.is_null() => {
                let Kind::Map(entries) = &node.kind else {
                    return Err(self.type_error(SEO, EXPECTED_MAPPING, node, ""));
                };
                self.server_encryption_options(entries, ssl_storage_port)?
            }
            _ => {
                self.notes.push(format!(
                    "{SEO} is not set: Cassandra's defaults are used (keystore {DEFAULT_KEYSTORE}, \
                     truststore {DEFAULT_TRUSTSTORE}, password {DEFAULT_PASSWORD:?}, no client \
                     authentication)"
                ));
                Seo::default()
            }
        };
        Ok(self.build(cluster_name, storage_port, ssl_storage_port, listen, seo))
    }

    /// The ringseal table from what was read.
    fn build(
        mut self,
        cluster_name: String,
        storage_port: u16,
        ssl_storage_port: u16,
        listen: Listen,
        seo: Seo,
    ) -> Derived {
        let mut tls = Table::new();
        self.stores(&seo, &mut tls);
        self.protocols_and_suites(&seo, &mut tls);

        // Client authentication and endpoint verification.
        let client_auth = seo.require_client_auth.unwrap_or(ClientAuth::NotRequired);
        let require_client_auth = client_auth == ClientAuth::Required;
        match client_auth {
            ClientAuth::Required => {}
            ClientAuth::NotRequired => self.notes.push(format!(
                "{SEO}.require_client_auth is false (Cassandra's default): peers without a \
                 certificate are accepted, as by Cassandra; set it to true for mutual TLS"
            )),
            ClientAuth::Optional => self.notes.push(format!(
                "{SEO}.require_client_auth is optional: tls.require_client_auth = false, which \
                 accepts peers without a certificate and verifies one that is presented"
            )),
        }
        tls.insert("require_client_auth".into(), require_client_auth.into());
        let endpoint_verification = seo.require_endpoint_verification.unwrap_or(false);
        if endpoint_verification && !require_client_auth {
            self.notes.push(format!(
                "{SEO}.require_endpoint_verification: only outbound connections check the peer's \
                 address, because inbound peers need not present a certificate \
                 (require_client_auth is not true); Cassandra does the same"
            ));
        }

        self.internode_encryption(&seo, ssl_storage_port);
        let permissive = seo.optional == Some(true);

        let mut inbound = Table::new();
        let mut non_loopback = None;
        if let Listen::Ip(ip) = listen {
            let addr = |port: u16| std::net::SocketAddr::new(ip, port).to_string();
            inbound.insert("listen".into(), addr(ssl_storage_port).into());
            inbound.insert("forward".into(), addr(storage_port).into());
            if !ip.is_loopback() {
                non_loopback = Some(ip);
            }
        }
        inbound.insert(
            "require_endpoint_verification".into(),
            (endpoint_verification && require_client_auth).into(),
        );
        if permissive {
            let mut note = format!(
                "{SEO}.optional is true: mode = \"permissive\", so peers without TLS are still \
                 served during the migration"
            );
            if let Some(ip) = non_loopback {
                inbound.insert("allow_non_loopback_plaintext".into(), true.into());
                note.push_str(&format!(
                    ", and inbound allow_non_loopback_plaintext = true, because Cassandra accepted \
                     that plaintext on {ip}"
                ));
            }
            note.push_str(
                "; switch to mode = \"strict\" once ringseal_connections_total{tls=\"false\"} no \
                 longer grows",
            );
            self.notes.push(note);
        }

        let mut outbound = Table::new();
        outbound.insert("listen".into(), OUTBOUND_LISTEN.into());
        outbound.insert("transparent".into(), true.into());
        outbound.insert("tls_port".into(), i64::from(ssl_storage_port).into());
        outbound.insert(
            "require_endpoint_verification".into(),
            endpoint_verification.into(),
        );

        if self.relative_resolved {
            self.notes.push(format!(
                "relative paths in {SEO} are resolved against {} ({}), as Cassandra resolves them \
                 against its working directory",
                self.base.display(),
                self.base_why
            ));
        }

        let mut table = Table::new();
        table.insert("cluster_name".into(), cluster_name.clone().into());
        let mode = if permissive { "permissive" } else { "strict" };
        table.insert("mode".into(), mode.into());
        table.insert("tls".into(), Value::Table(tls));
        table.insert("inbound".into(), Value::Array(vec![Value::Table(inbound)]));
        table.insert(
            "outbound".into(),
            Value::Array(vec![Value::Table(outbound)]),
        );
        self.warnings.sort_by_key(|(line, _)| *line);
        // Keys and values of the yaml are quoted in them, and each is one log line.
        Derived {
            table,
            warnings: self
                .warnings
                .iter()
                .map(|(_, w)| super::visible(w))
                .collect(),
            notes: self.notes.iter().map(|n| super::visible(n)).collect(),
            cluster_name: Some(cluster_name),
        }
    }

    /// Keystore, truststore and outbound keystore: paths, passwords (or password files), types.
    fn stores(&mut self, seo: &Seo, tls: &mut Table) {
        let pem = seo.factory == Factory::Pem;

        // One store_type for every store (Apache), or DSE's per-store spellings.
        let (keystore_type, truststore_type) = if pem {
            if let Some((name, _)) = &seo.store_type
                && store_type_name(name) != Some("pem")
            {
                self.notes.push(format!(
                    "{SEO}.store_type {name:?} is ignored with PEMBasedSslContextFactory, as in \
                     Cassandra: the stores are PEM files"
                ));
            }
            (Some("pem"), Some("pem"))
        } else {
            let common = match (&seo.keystore_type, &seo.truststore_type, &seo.store_type) {
                (Some(_), Some(_), _) | (_, _, None) => Some("jks"),
                (_, _, Some(given)) => self.store_type("store_type", given),
            };
            let keystore_type = match &seo.keystore_type {
                Some(given) => self.store_type("keystore_type", given),
                None => common,
            };
            let truststore_type = match &seo.truststore_type {
                Some(given) => self.store_type("truststore_type", given),
                None => common,
            };
            (keystore_type, truststore_type)
        };

        // The identity (inbound, and outbound unless outbound_keystore says otherwise).
        let keystore_password = self.password(
            "keystore",
            seo.keystore_password.clone(),
            seo.keystore_password_file.clone(),
            pem,
        );
        if !seo.inline_key {
            let keystore = self.resolve(seo.keystore.as_deref().unwrap_or(DEFAULT_KEYSTORE));
            tls.insert("keystore".into(), Value::String(keystore));
            insert_password(tls, "keystore", &keystore_password);
            if let Some(ty) = keystore_type {
                tls.insert("keystore_type".into(), ty.into());
            }
        }

        // Trust.
        if !seo.inline_trust {
            let truststore = self.resolve(seo.truststore.as_deref().unwrap_or(DEFAULT_TRUSTSTORE));
            tls.insert("truststore".into(), Value::String(truststore));
            if truststore_type == Some("pem") {
                if seo.truststore_password.is_some() || seo.truststore_password_file.is_some() {
                    self.notes.push(format!(
                        "{SEO}.truststore_password is ignored for a PEM truststore, as in Cassandra"
                    ));
                }
            } else {
                let password = self.password(
                    "truststore",
                    seo.truststore_password.clone(),
                    seo.truststore_password_file.clone(),
                    false,
                );
                insert_password(tls, "truststore", &password);
            }
            if let Some(ty) = truststore_type {
                tls.insert("truststore_type".into(), ty.into());
            }
        }

        // The outbound identity (5.0+): defaults to the keystore and its password, as in Cassandra.
        let outbound_given = seo.outbound_keystore.is_some()
            || seo.outbound_keystore_password.is_some()
            || seo.outbound_keystore_password_file.is_some();
        if outbound_given && !seo.inline_outbound_key {
            let path = seo
                .outbound_keystore
                .as_deref()
                .or(seo.keystore.as_deref())
                .unwrap_or(DEFAULT_KEYSTORE);
            let path = self.resolve(path);
            tls.insert("outbound_keystore".into(), Value::String(path));
            let password = match (
                seo.outbound_keystore_password.clone(),
                seo.outbound_keystore_password_file.clone(),
            ) {
                (None, None) => keystore_password,
                (value, file) => self.password("outbound_keystore", value, file, pem),
            };
            insert_password(tls, "outbound_keystore", &password);
            if let Some(ty) = keystore_type {
                tls.insert("outbound_keystore_type".into(), ty.into());
            }
        }
    }

    /// `tls.protocols` and `tls.cipher_suites`: what ringseal accepts of them, consistent together.
    fn protocols_and_suites(&mut self, seo: &Seo, tls: &mut Table) {
        let protocols = self.protocols(seo.protocol.as_ref(), seo.accepted_protocols.as_ref());
        let (protocols, suites) = match &seo.cipher_suites {
            Some((names, at)) => {
                let suites = self.cipher_suites(names, *at);
                self.protocols_for_suites(protocols, suites, *at)
            }
            None => (protocols, Vec::new()),
        };
        if !protocols.is_empty() {
            tls.insert("protocols".into(), strings_value(&protocols));
        }
        if !suites.is_empty() {
            tls.insert("cipher_suites".into(), strings_value(&suites));
        }
    }

    /// What `internode_encryption` means next to ringseal: a note for `none`, a warning otherwise.
    fn internode_encryption(&mut self, seo: &Seo, ssl_storage_port: u16) {
        let key = format!("{SEO}.internode_encryption");
        match seo
            .internode_encryption
            .as_ref()
            .map(|(v, at)| (v.as_str(), *at))
        {
            None | Some(("none", _)) => self.notes.push(format!(
                "{key} is none: Cassandra itself sends plaintext, and ringseal encrypts all \
                 internode traffic (that is its job)"
            )),
            Some(("all", at)) => self.warn_at(
                &key,
                at,
                format!(
                    "\"all\": Cassandra still encrypts internode traffic itself, which cannot \
                     work behind ringseal (3.x binds ssl_storage_port {ssl_storage_port}, the port \
                     ringseal's inbound listener takes; 4.0+ sends TLS into ringseal's outbound \
                     listener and, without optional: true, refuses the plaintext ringseal forwards \
                     to storage_port); ringseal encrypts all internode traffic, so set \
                     internode_encryption: none in cassandra.yaml when ringseal takes over"
                ),
            ),
            Some((scope, at)) => self.warn_at(
                &key,
                at,
                format!(
                    "{scope:?}: ringseal encrypts all internode traffic, also between nodes in the \
                     same {}; set internode_encryption: none in cassandra.yaml when ringseal takes \
                     over (Cassandra's own TLS cannot run behind ringseal)",
                    if scope == "dc" { "datacenter" } else { "rack" }
                ),
            ),
        }
    }

    /// Reads `server_encryption_options`: every key is type-checked, then mapped or warned about.
    fn server_encryption_options(
        &mut self,
        entries: &[(Node<'_>, Node<'_>)],
        ssl_storage_port: u16,
    ) -> Result<Seo, CassandraYamlError> {
        let Keyed {
            entries,
            duplicates: dups,
            odd,
        } = last_wins(entries);
        for (name, lines) in &dups {
            self.duplicate(&format!("{SEO}.{name}"), lines);
        }
        for key in odd {
            self.warn_at(
                SEO,
                key.at,
                "a key that is not a plain name; ignored".into(),
            );
        }
        let mut seo = Seo::default();
        let mut legacy: Vec<(&str, Pos)> = Vec::new();
        for (name, key_node, value) in entries {
            let key = format!("{SEO}.{name}");
            let key = key.as_str();
            if value.is_null() && SEO_KEYS.contains(&name) {
                continue; // not set: Cassandra's default
            }
            let at = value.at;
            match name {
                "internode_encryption" => {
                    let v = self.string(key, value)?.unwrap_or_default();
                    if !matches!(v.as_str(), "none" | "all" | "dc" | "rack") {
                        return Err(self.invalid(
                            key,
                            format!(
                                "{v:?} is not one of none, all, dc, rack (Cassandra spells them in \
                                 lower case)"
                            ),
                            at,
                        ));
                    }
                    seo.internode_encryption = Some((v, at));
                }
                "optional" => seo.optional = self.boolean(key, value)?,
                "enabled" => {
                    if self.boolean(key, value)? == Some(true) {
                        self.warn_at(
                            key,
                            at,
                            "true has no effect on internode traffic, in Cassandra as in ringseal \
                             (internode_encryption decides); ignored"
                                .into(),
                        );
                    }
                }
                "enable_legacy_ssl_storage_port" | "legacy_ssl_storage_port_enabled" => {
                    legacy.push((name, key_node.at));
                    if self.boolean(key, value)? == Some(true) {
                        self.warn_at(
                            key,
                            at,
                            format!(
                                "true: Cassandra itself listens with TLS on ssl_storage_port \
                                 {ssl_storage_port}, the port ringseal's inbound listener takes; \
                                 set it to false"
                            ),
                        );
                    }
                }
                "keystore" => seo.keystore = self.string(key, value)?,
                "keystore_password" => seo.keystore_password = self.string(key, value)?,
                "keystore_password_file" => seo.keystore_password_file = self.string(key, value)?,
                "truststore" => seo.truststore = self.string(key, value)?,
                "truststore_password" => seo.truststore_password = self.string(key, value)?,
                "truststore_password_file" => {
                    seo.truststore_password_file = self.string(key, value)?;
                }
                "outbound_keystore" => seo.outbound_keystore = self.string(key, value)?,
                "outbound_keystore_password" => {
                    seo.outbound_keystore_password = self.string(key, value)?;
                }
                "outbound_keystore_password_file" => {
                    seo.outbound_keystore_password_file = self.string(key, value)?;
                }
                "store_type" => seo.store_type = self.string(key, value)?.map(|s| (s, at)),
                "keystore_type" => seo.keystore_type = self.string(key, value)?.map(|s| (s, at)),
                "truststore_type" => {
                    seo.truststore_type = self.string(key, value)?.map(|s| (s, at));
                }
                "protocol" => seo.protocol = self.string(key, value)?.map(|s| (s, at)),
                "accepted_protocols" => {
                    seo.accepted_protocols = self.strings(key, value)?.map(|l| (l, at));
                }
                "cipher_suites" => seo.cipher_suites = self.strings(key, value)?.map(|l| (l, at)),
                "require_client_auth" => seo.require_client_auth = self.client_auth(key, value)?,
                "require_endpoint_verification" => {
                    seo.require_endpoint_verification = self.boolean(key, value)?;
                }
                "algorithm" => {
                    let v = self.string(key, value)?.unwrap_or_default();
                    self.warn_at(
                        key,
                        at,
                        format!(
                            "{v:?} selects Java's key and trust manager implementation; ignored: \
                             ringseal verifies certificate chains with webpki"
                        ),
                    );
                }
                "ssl_context_factory" => self.ssl_context_factory(key, value, &mut seo)?,
                "max_certificate_validity_period" => {
                    self.string(key, value)?;
                    self.warn_at(
                        key,
                        at,
                        "ringseal does not limit how long peer certificates may be valid; ignored"
                            .into(),
                    );
                }
                "certificate_validity_warn_threshold" => {
                    self.string(key, value)?;
                    self.warn_at(
                        key,
                        at,
                        "ringseal warns about its own certificate 30, 14, 7 and 1 days before it \
                         expires and exports every certificate's expiry as a metric; ignored"
                            .into(),
                    );
                }
                _ => self.warn_at(
                    key,
                    key_node.at,
                    "not a server_encryption_options setting of any Cassandra version (Cassandra \
                     refuses unknown keys); ignored"
                        .into(),
                ),
            }
        }
        if let [(_, _), (_, second)] = legacy[..] {
            return Err(self.invalid(
                &format!("{SEO}.enable_legacy_ssl_storage_port"),
                "is given together with legacy_ssl_storage_port_enabled, its 4.1 name, which \
                 Cassandra refuses; keep one of them"
                    .into(),
                second,
            ));
        }
        Ok(seo)
    }

    /// `ssl_context_factory: {class_name, parameters}` (4.1+).
    fn ssl_context_factory(
        &mut self,
        key: &str,
        value: &Node<'_>,
        seo: &mut Seo,
    ) -> Result<(), CassandraYamlError> {
        let Kind::Map(entries) = &value.kind else {
            return Err(self.type_error(key, EXPECTED_MAPPING, value, ""));
        };
        let Keyed {
            entries,
            duplicates: dups,
            ..
        } = last_wins(entries);
        for (name, lines) in &dups {
            self.duplicate(&format!("{key}.{name}"), lines);
        }
        let mut parameters = None;
        for (name, key_node, v) in entries {
            let sub = format!("{key}.{name}");
            match name {
                "class_name" => {
                    let class = self.string(&sub, v)?.unwrap_or_default();
                    let full = if class.contains('.') {
                        class.clone()
                    } else {
                        format!("org.apache.cassandra.security.{class}")
                    };
                    seo.factory = match full.as_str() {
                        PEM_FACTORY => Factory::Pem,
                        DEFAULT_FACTORY | "" => Factory::Default,
                        _ => {
                            self.warn_at(
                                &sub,
                                v.at,
                                format!(
                                    "{class:?}: ringseal cannot run Cassandra's SSL context \
                                     factories; the keystore and truststore are read as files, so \
                                     set tls.keystore and tls.truststore in the ringseal config if \
                                     this factory loads them from elsewhere"
                                ),
                            );
                            Factory::Custom(class)
                        }
                    };
                }
                "parameters" => parameters = Some((sub, v)),
                _ => self.warn_at(
                    &sub,
                    key_node.at,
                    "not a setting of ssl_context_factory (class_name, parameters); ignored".into(),
                ),
            }
        }
        let Some((sub, params)) = parameters else {
            return Ok(());
        };
        if params.is_null() {
            return Ok(());
        }
        let Kind::Map(entries) = &params.kind else {
            return Err(self.type_error(&sub, EXPECTED_MAPPING, params, ""));
        };
        let entries = last_wins(entries).entries;
        for (name, key_node, v) in entries {
            let param = format!("{sub}.{name}");
            if let Factory::Custom(class) = &seo.factory {
                let class = class.clone();
                self.warn_at(
                    &param,
                    key_node.at,
                    format!("a parameter of {class}, which ringseal cannot run; ignored"),
                );
                continue;
            }
            let pem = seo.factory == Factory::Pem;
            let known = [
                "private_key",
                "private_key_password",
                "trusted_certificates",
                "outbound_private_key",
                "outbound_private_key_password",
            ];
            if v.is_null() && pem && known.contains(&name) {
                continue;
            }
            let (store, flag) = match name {
                "private_key" if pem => ("tls.keystore", &mut seo.inline_key),
                "trusted_certificates" if pem => ("tls.truststore", &mut seo.inline_trust),
                "outbound_private_key" if pem => {
                    ("tls.outbound_keystore", &mut seo.inline_outbound_key)
                }
                "private_key_password" | "outbound_private_key_password" if pem => {
                    self.string(&param, v)?;
                    self.warn_at(
                        &param,
                        key_node.at,
                        "ignored: ringseal does not take key material inline (see private_key)"
                            .into(),
                    );
                    continue;
                }
                _ => {
                    self.warn_at(
                        &param,
                        key_node.at,
                        format!(
                            "not a parameter of {}; ignored",
                            if pem {
                                "PEMBasedSslContextFactory"
                            } else {
                                "DefaultSslContextFactory"
                            }
                        ),
                    );
                    continue;
                }
            };
            self.string(&param, v)?;
            *flag = true;
            self.warn_at(
                &param,
                key_node.at,
                format!(
                    "inline PEM material is not read by ringseal; write it to a file and set \
                     {store} to it (type \"pem\") in the ringseal config"
                ),
            );
        }
        Ok(())
    }

    /// `tls.<store>_password` or `tls.<store>_password_file`, with Cassandra's precedence and
    /// default. Returns the ringseal key suffix and value to insert.
    fn password(
        &mut self,
        store: &str,
        value: Option<String>,
        file: Option<String>,
        pem: bool,
    ) -> Option<(&'static str, Value)> {
        match (value, file) {
            (Some(value), file) => {
                if file.is_some() {
                    self.notes.push(format!(
                        "{SEO}.{store}_password_file is ignored because {store}_password is set, as \
                         in Cassandra"
                    ));
                }
                Some(("_password", value.into()))
            }
            (None, Some(file)) => Some(("_password_file", self.resolve(&file).into())),
            (None, None) if pem => None,
            (None, None) => {
                self.notes.push(format!(
                    "{SEO}.{store}_password is not set: Cassandra's old default {DEFAULT_PASSWORD:?} \
                     is used (from 4.1.2 Cassandra has no default)"
                ));
                Some(("_password", DEFAULT_PASSWORD.into()))
            }
        }
    }

    /// Cassandra 4.0+'s combination of `protocol` and `accepted_protocols` (3.x has only
    /// `protocol`), minus what ringseal refuses. Empty: the defaults (TLS 1.2 and 1.3).
    fn protocols(
        &mut self,
        protocol: Option<&(String, Pos)>,
        accepted: Option<&(Vec<String>, Pos)>,
    ) -> Vec<String> {
        let specific = protocol.filter(|(p, _)| !p.eq_ignore_ascii_case("TLS"));
        let names: Vec<(String, &'static str, Pos)> = match (accepted, specific) {
            (Some((list, at)), p) => {
                let mut names: Vec<_> = list
                    .iter()
                    .map(|n| (n.clone(), "accepted_protocols", *at))
                    .collect();
                if let Some((p, pat)) = p
                    && !list.iter().any(|a| a.eq_ignore_ascii_case(p))
                {
                    names.push((p.clone(), "protocol", *pat));
                }
                names
            }
            (None, Some((p, at))) => vec![(p.clone(), "protocol", *at)],
            (None, None) => Vec::new(),
        };
        let mut kept: Vec<String> = Vec::new();
        let mut every_version = false;
        for (name, key, at) in &names {
            match suites::parse_protocols(std::slice::from_ref(name)) {
                Ok(_) if name.trim().eq_ignore_ascii_case("TLS") => every_version = true,
                Ok(_) => {
                    if !kept.iter().any(|k| k.eq_ignore_ascii_case(name.trim())) {
                        kept.push(name.trim().to_owned());
                    }
                }
                Err(e) => self.warn_at(&format!("{SEO}.{key}"), *at, format!("left out: {e}")),
            }
        }
        if every_version {
            return Vec::new();
        }
        if kept.is_empty()
            && let Some((_, key, at)) = names.first()
        {
            self.warn_at(
                &format!("{SEO}.{key}"),
                *at,
                "no protocol ringseal supports is left; TLSv1.2 and TLSv1.3 are used".into(),
            );
        }
        kept
    }

    /// `cipher_suites` minus the suites ringseal refuses, each with the reason and replacement.
    fn cipher_suites(&mut self, names: &[String], at: Pos) -> Vec<String> {
        let key = format!("{SEO}.cipher_suites");
        let provider = crate::tls::provider();
        let mut kept: Vec<String> = Vec::new();
        for name in names {
            match suites::parse_cipher_suites(
                std::slice::from_ref(name),
                rustls::ALL_VERSIONS,
                &provider,
            ) {
                // One suite never covers both versions: the name itself resolved.
                Ok(_) | Err(SuiteError::NoSuiteForVersion { .. } | SuiteError::NoSuites) => {
                    kept.push(name.trim().to_owned());
                }
                Err(e) => self.warn_at(&key, at, format!("left out: {e}")),
            }
        }
        if kept.is_empty() && !names.is_empty() {
            self.warn_at(
                &key,
                at,
                "none of the listed suites can be used; ringseal's default suites are used".into(),
            );
        }
        kept
    }

    /// Java enables a protocol version only with a cipher suite for it: do the same rather than
    /// derive a config that ringseal refuses. Returns the protocols and suites to write.
    fn protocols_for_suites(
        &mut self,
        protocols: Vec<String>,
        suites: Vec<String>,
        at: Pos,
    ) -> (Vec<String>, Vec<String>) {
        if suites.is_empty() {
            return (protocols, suites);
        }
        let Ok(mut versions) = suites::parse_protocols(&protocols) else {
            return (protocols, suites);
        };
        let provider = crate::tls::provider();
        let mut turned_off = Vec::new();
        while let Err(SuiteError::NoSuiteForVersion { version, .. }) =
            suites::parse_cipher_suites(&suites, &versions, &provider)
        {
            versions.retain(|v| suites::protocol_name(v.version) != version);
            turned_off.push(version);
        }
        if turned_off.is_empty() {
            return (protocols, suites);
        }
        if versions.is_empty() {
            self.warn_at(
                &format!("{SEO}.cipher_suites"),
                at,
                format!(
                    "no listed suite can be used with {}; ringseal's default suites are used",
                    turned_off.join(" or ")
                ),
            );
            return (protocols, Vec::new());
        }
        let left: Vec<String> = versions
            .iter()
            .map(|v| suites::protocol_name(v.version).to_owned())
            .collect();
        self.notes.push(format!(
            "{SEO}.cipher_suites names no suite for {}, so {} off, as in Java: protocols = {left:?}",
            turned_off.join(" or "),
            if turned_off.len() == 1 { "it is" } else { "they are" },
        ));
        (left, suites)
    }

    /// A store type ringseal reads, or a warning naming the key.
    fn store_type(&mut self, key: &str, (name, at): &(String, Pos)) -> Option<&'static str> {
        let ty = store_type_name(name);
        if ty.is_none() {
            self.warn_at(
                &format!("{SEO}.{key}"),
                *at,
                format!(
                    "{name:?}: ringseal reads PKCS12, JKS and PEM stores only; convert the store \
                     (keytool -importkeystore -deststoretype PKCS12) and set tls.keystore_type and \
                     tls.truststore_type in the ringseal config"
                ),
            );
        }
        ty
    }

    fn listen(
        &mut self,
        address: Option<&Node<'_>>,
        interface: Option<&Node<'_>>,
        prefer_ipv6: Option<&Node<'_>>,
    ) -> Result<Listen, CassandraYamlError> {
        let address = match address {
            Some(node) => self
                .string("listen_address", node)?
                .map(|a| (a.trim().to_owned(), node.at)),
            None => None,
        };
        let interface = match interface {
            Some(node) => self.string("listen_interface", node)?.map(|i| (i, node.at)),
            None => None,
        };
        let prefer_ipv6 = self.boolean_opt("listen_interface_prefer_ipv6", prefer_ipv6)?;
        match (address, interface) {
            (Some(_), Some((_, at))) => Err(self.invalid(
                "listen_interface",
                "is set together with listen_address, which Cassandra refuses (\"Set \
                 listen_address OR listen_interface, not both\"); keep one"
                    .into(),
                at,
            )),
            (None, Some((interface, at))) => {
                let family = if prefer_ipv6 == Some(true) {
                    "first IPv6 address"
                } else {
                    "first IPv4 address"
                };
                self.warn_at(
                    "listen_interface",
                    at,
                    format!(
                        "{interface:?}: ringseal does not look up interface addresses; give \
                         [[inbound]] listen and forward with the {family} of {interface} in the \
                         ringseal config"
                    ),
                );
                Ok(Listen::Unknown)
            }
            (None, None) => {
                self.warnings.push((
                    0,
                    "listen_address: not set, so Cassandra listens on the address of this host's \
                     name (InetAddress.getLocalHost()), which ringseal does not look up; 127.0.0.1 \
                     is assumed: give [[inbound]] listen and forward with that address in the \
                     ringseal config"
                        .into(),
                ));
                Ok(Listen::Ip(IpAddr::from([127, 0, 0, 1])))
            }
            (Some((address, at)), None) => {
                if address.eq_ignore_ascii_case("localhost") {
                    return Ok(Listen::Ip(IpAddr::from([127, 0, 0, 1])));
                }
                match address.parse::<IpAddr>() {
                    Ok(ip) if ip.is_unspecified() => Err(self.invalid(
                        "listen_address",
                        format!(
                            "{address} is a wildcard address, which Cassandra refuses; give the \
                             node's own IP address"
                        ),
                        at,
                    )),
                    Ok(ip) => Ok(Listen::Ip(ip)),
                    Err(_) => {
                        self.warn_at(
                            "listen_address",
                            at,
                            format!(
                                "{address:?} is a host name, which ringseal does not resolve; give \
                                 [[inbound]] listen and forward with its IP address in the \
                                 ringseal config"
                            ),
                        );
                        Ok(Listen::Unknown)
                    }
                }
            }
        }
    }

    fn broadcast(
        &mut self,
        on_broadcast: Option<&Node<'_>>,
        broadcast: Option<&Node<'_>>,
        ssl_storage_port: u16,
    ) -> Result<(), CassandraYamlError> {
        let Some(flag) = on_broadcast else {
            return Ok(());
        };
        let address = match broadcast {
            Some(node) => self.string("broadcast_address", node)?,
            None => None,
        };
        if self.boolean("listen_on_broadcast_address", flag)? == Some(true)
            && let Some(address) = address
        {
            let listen = match address.parse::<IpAddr>() {
                Ok(ip) => std::net::SocketAddr::new(ip, ssl_storage_port).to_string(),
                Err(_) => format!("<IP of {address}>:{ssl_storage_port}"),
            };
            self.warn_at(
                "listen_on_broadcast_address",
                flag.at,
                format!(
                    "Cassandra also listens on broadcast_address {address}; add a second \
                     [[inbound]] with listen = \"{listen}\" to the ringseal config"
                ),
            );
        }
        Ok(())
    }

    /// `internode_authenticator`: a class name (up to 4.1) or `{class_name, parameters}` (5.0+).
    fn authenticator(&mut self, node: Option<&Node<'_>>) -> Result<(), CassandraYamlError> {
        let Some(node) = node.filter(|n| !n.is_null()) else {
            return Ok(());
        };
        let class = match &node.kind {
            Kind::Scalar { .. } => self.string("internode_authenticator", node)?,
            Kind::Map(entries) => {
                let entries = last_wins(entries).entries;
                match entries.iter().find(|(n, _, _)| *n == "class_name") {
                    Some((_, _, v)) => self.string("internode_authenticator.class_name", v)?,
                    None => None,
                }
            }
            Kind::Seq(_) => {
                return Err(self.type_error(
                    "internode_authenticator",
                    "a class name, or a mapping with class_name",
                    node,
                    "",
                ));
            }
        };
        let Some(class) = class else {
            return Ok(());
        };
        let full = if class.contains('.') {
            class.clone()
        } else {
            format!("org.apache.cassandra.auth.{class}")
        };
        if full != ALLOW_ALL_AUTHENTICATOR {
            self.warn_at(
                "internode_authenticator",
                node.at,
                format!(
                    "{class}: ringseal does not run Cassandra's internode authenticators; it checks \
                     peers by certificate chain, endpoint verification and the [[inbound]] \
                     allow-list (e.g. allow = {{ uri = [...] }} for SPIFFE identities), which the \
                     ringseal config can set"
                ),
            );
        }
        Ok(())
    }

    // --- typed values ----------------------------------------------------------------------------

    /// Any scalar, as written (SnakeYAML gives a String setting the text of a number or boolean).
    fn string(&self, key: &str, node: &Node<'_>) -> Result<Option<String>, CassandraYamlError> {
        if node.is_null() {
            return Ok(None);
        }
        match &node.kind {
            Kind::Scalar { text, .. } => Ok(Some(text.to_string())),
            _ => Err(self.type_error(key, EXPECTED_STRING, node, "")),
        }
    }

    /// `true`/`false`, and SnakeYAML's `yes`/`no`/`on`/`off`, in any case, quoted or not.
    fn boolean(&self, key: &str, node: &Node<'_>) -> Result<Option<bool>, CassandraYamlError> {
        if node.is_null() {
            return Ok(None);
        }
        match node.scalar().map(str::to_ascii_lowercase).as_deref() {
            Some("true" | "yes" | "on") => Ok(Some(true)),
            Some("false" | "no" | "off") => Ok(Some(false)),
            _ => Err(self.type_error(key, EXPECTED_BOOL, node, "")),
        }
    }

    fn boolean_opt(
        &self,
        key: &str,
        node: Option<&Node<'_>>,
    ) -> Result<Option<bool>, CassandraYamlError> {
        node.map_or(Ok(None), |n| self.boolean(key, n))
    }

    /// A boolean, or trunk's `required` / `not_required` / `optional`.
    fn client_auth(
        &self,
        key: &str,
        node: &Node<'_>,
    ) -> Result<Option<ClientAuth>, CassandraYamlError> {
        match node.scalar().map(str::to_ascii_lowercase).as_deref() {
            Some("required") => return Ok(Some(ClientAuth::Required)),
            Some("not_required") => return Ok(Some(ClientAuth::NotRequired)),
            Some("optional") => return Ok(Some(ClientAuth::Optional)),
            _ => {}
        }
        match self.boolean(key, node) {
            Ok(b) => Ok(b.map(|b| {
                if b {
                    ClientAuth::Required
                } else {
                    ClientAuth::NotRequired
                }
            })),
            Err(_) => Err(self.type_error(
                key,
                "a boolean (or \"optional\", Cassandra after 5.0)",
                node,
                "",
            )),
        }
    }

    /// A port: an integer (quoted or not, as SnakeYAML reads an int setting) from 1 to 65535.
    fn port(&self, key: &str, node: Option<&Node<'_>>) -> Result<Option<u16>, CassandraYamlError> {
        let Some(node) = node.filter(|n| !n.is_null()) else {
            return Ok(None);
        };
        let port = node
            .scalar()
            .map(|t| t.trim().replace('_', ""))
            .and_then(|t| t.parse::<u16>().ok())
            .filter(|p| *p != 0);
        match port {
            Some(p) => Ok(Some(p)),
            None => Err(self.type_error(key, EXPECTED_PORT, node, "")),
        }
    }

    /// A list of scalars (`[a, b]` or `- a` lines).
    fn strings(
        &self,
        key: &str,
        node: &Node<'_>,
    ) -> Result<Option<Vec<String>>, CassandraYamlError> {
        if node.is_null() {
            return Ok(None);
        }
        let Kind::Seq(items) = &node.kind else {
            return Err(self.type_error(
                key,
                EXPECTED_LIST,
                node,
                "; write it as a list, e.g. [TLSv1.2, TLSv1.3]",
            ));
        };
        items
            .iter()
            .map(|item| match &item.kind {
                Kind::Scalar { text, .. } if !item.is_null() => Ok(text.to_string()),
                _ => Err(self.type_error(&format!("{key} entry"), EXPECTED_STRING, item, "")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    // --- paths, messages -------------------------------------------------------------------------

    /// An absolute path: relative ones are resolved as Cassandra would (see the module docs).
    fn resolve(&mut self, path: &str) -> String {
        let p = Path::new(path);
        if p.is_absolute() {
            return path.to_owned();
        }
        self.relative_resolved = true;
        self.base.join(p).to_string_lossy().into_owned()
    }

    fn warn_at(&mut self, key: &str, at: Pos, why: String) {
        self.warnings
            .push((at.line, format!("{key} (line {}): {why}", at.line)));
    }

    fn duplicate(&mut self, key: &str, lines: &[usize]) {
        let list: Vec<String> = lines.iter().map(usize::to_string).collect();
        self.warnings.push((
            lines[0],
            format!(
                "{key} (lines {}): given {} times; the last one counts, as in Cassandra",
                list.join(", "),
                lines.len()
            ),
        ));
    }

    fn type_error(
        &self,
        key: &str,
        expected: &'static str,
        node: &Node<'_>,
        hint: &'static str,
    ) -> CassandraYamlError {
        CassandraYamlError::Type {
            path: self.path.clone(),
            key: key.to_owned(),
            expected,
            found: node.describe(),
            line: node.at.line,
            column: node.at.column,
            hint,
        }
    }

    fn invalid(&self, key: &str, message: String, at: Pos) -> CassandraYamlError {
        CassandraYamlError::Invalid {
            path: self.path.clone(),
            key: key.to_owned(),
            message,
            line: at.line,
            column: at.column,
        }
    }
}

/// Every `server_encryption_options` key of Cassandra 3.11 to trunk (and DataStax Enterprise's
/// per-store types): set to null they mean "the default"; any other key is warned about.
const SEO_KEYS: &[&str] = &[
    "internode_encryption",
    "optional",
    "enabled",
    "enable_legacy_ssl_storage_port",
    "legacy_ssl_storage_port_enabled",
    "keystore",
    "keystore_password",
    "keystore_password_file",
    "truststore",
    "truststore_password",
    "truststore_password_file",
    "outbound_keystore",
    "outbound_keystore_password",
    "outbound_keystore_password_file",
    "store_type",
    "keystore_type",
    "truststore_type",
    "protocol",
    "accepted_protocols",
    "cipher_suites",
    "require_client_auth",
    "require_endpoint_verification",
    "algorithm",
    "ssl_context_factory",
    "max_certificate_validity_period",
    "certificate_validity_warn_threshold",
];

/// Top-level keys read here: a duplicate of one of them is warned about.
const READ_TOP_LEVEL: &[&str] = &[
    "cluster_name",
    "storage_port",
    "ssl_storage_port",
    "listen_address",
    "listen_interface",
    "listen_interface_prefer_ipv6",
    "listen_on_broadcast_address",
    "broadcast_address",
    "internode_authenticator",
    SEO,
];

/// Java's KeyStore types (case-insensitive) that ringseal reads.
fn store_type_name(name: &str) -> Option<&'static str> {
    match name.trim().to_ascii_lowercase().as_str() {
        "jks" => Some("jks"),
        "pkcs12" => Some("pkcs12"),
        "pem" => Some("pem"),
        _ => None,
    }
}

fn insert_password(tls: &mut Table, store: &str, password: &Option<(&'static str, Value)>) {
    if let Some((suffix, value)) = password {
        tls.insert(format!("{store}{suffix}"), value.clone());
    }
}

fn strings_value(items: &[String]) -> Value {
    Value::Array(items.iter().map(|s| Value::String(s.clone())).collect())
}

#[cfg(test)]
mod tests {
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
        let root =
            parse("a: 0123\nb: '0123'\nc: ~\nd:\ne: \"\"\nf: !!str 7000\ng: Null\n").unwrap();
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
        let Err(ParseError::Syntax { message, .. }) = parse(&bomb) else {
            panic!("an alias bomb was expanded");
        };
        assert_eq!(message, "aliases expand to more than 100000 values");
    }

    #[test]
    fn parse_errors_and_empty_files() {
        let Err(ParseError::Syntax { message, at }) = parse("a: 1\nb:\n\tc: 2\n") else {
            panic!("tabs accepted");
        };
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
        let Err(ParseError::Syntax { message, .. }) = parse(&deep) else {
            panic!("100 levels accepted");
        };
        assert_eq!(message, "nested deeper than 64 levels");
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
        assert!(
            d.warnings.contains(
                &"storage_port (lines 1, 2): given 2 times; the last one counts, as in Cassandra"
                    .into()
            )
        );
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
        let d = ok(
            "server_encryption_options:\n  keystore: conf/node.p12\n  truststore: /etc/ts.p12\n",
        );
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
        let d =
            ok("cluster_name: Defaults\nlisten_address: 127.0.0.1\nserver_encryption_options:\n");
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
        assert!(d.warnings[2].ends_with(
            "none of the listed suites can be used; ringseal's default suites are used"
        ));
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
        for (value, required) in [
            ("true", true),
            ("REQUIRED", true),
            ("false", false),
            ("not_required", false),
            ("optional", false),
        ] {
            let d = ok(&format!(
                "server_encryption_options:\n  require_client_auth: {value}\n"
            ));
            assert_eq!(
                tls(&d)["require_client_auth"].as_bool(),
                Some(required),
                "{value}"
            );
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
}
