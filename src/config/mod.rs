//! Configuration: the TOML file as written by operators (`file` structs, `deny_unknown_fields`) and the
//! validated runtime [`Config`] it converts into exactly once. Everything downstream takes the runtime
//! types and never re-checks: addresses are parsed, durations are [`Duration`]s, cipher suite names are
//! rustls suites, and the certificate files are already loaded into a [`TlsMaterial`].

pub mod cassandra;
pub(crate) mod file;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::{SupportedCipherSuite, SupportedProtocolVersion};

use crate::files;
use crate::tls::keystore::{Password, StoreFile, StoreType};
use crate::tls::material::{IdentityFiles, MaterialError, TlsFiles, TlsMaterial, TrustFiles};
use crate::tls::suites::{self, SuiteError};
use crate::tls::verify::AllowList;

pub use file::FileConfig;

/// Errors that stop ringseal before it binds a port. Each names the file and key and says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {source}{}", read_hint(.source))]
    Read {
        path: PathBuf,
        source: crate::files::ReadError,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(
        "config {path}: {key} = {value:?} is not an IP:port address ({why}); write e.g. {example}"
    )]
    Address {
        path: PathBuf,
        key: String,
        value: String,
        why: String,
        example: &'static str,
    },
    #[error("config {path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("config {path}: {key}: {source}")]
    Suites {
        path: PathBuf,
        key: &'static str,
        source: SuiteError,
    },
    #[error(transparent)]
    Cassandra(#[from] cassandra::CassandraYamlError),
    #[error("config {path}: {source}")]
    Material {
        path: PathBuf,
        source: MaterialError,
    },
}

/// The most connections `limits.max_connections` allows: far above any node's need, far below what
/// the runtime's semaphore can count.
pub const MAX_CONNECTIONS: usize = 1_000_000;
/// The longest deadline or interval accepted: longer ones are mistakes, and a deadline past what
/// `Instant` can represent would panic.
pub const MAX_DURATION: Duration = Duration::from_secs(31_557_600); // humantime's "1year"
/// Checking files for changes more often costs CPU for nothing.
pub const MIN_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// The validated runtime configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub tls: TlsSettings,
    pub inbound: Vec<Inbound>,
    pub outbound: Vec<Outbound>,
    pub limits: Limits,
    /// `offload`: kTLS after the handshake (`auto`), never (`off`), or for every connection (`require`,
    /// checked against the kernel here).
    pub offload: crate::relay::Offload,
    /// `[metrics]`: where to serve `/metrics`, `/healthz` and `/readyz`; `None`: not served.
    pub metrics: Option<MetricsSettings>,
    /// The files this config was read from: what a reload reads again. `None` for in-memory configs.
    pub source: Option<Sources>,
    /// `cluster_name` (Cassandra's): `check` warns about certificates whose OU differs.
    pub cluster_name: Option<String>,
    /// `[permissive]`: the outbound side's memory of peers that have TLS. Fixed at start.
    pub permissive: Permissive,
}

/// `[permissive]`: permissive outbound falls back to plaintext only for a peer that has not completed
/// a verified TLS handshake with this sidecar within `tls_peer_memory`; this is that memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissive {
    /// How long after its last verified handshake a peer is never reached in plaintext.
    pub tls_peer_memory: Duration,
    /// Where the memory survives restarts (written atomically); `None`: in memory only.
    pub state_file: Option<PathBuf>,
}

impl Permissive {
    /// Shorter would let an attacker wait out the memory between two of a quiet peer's connections.
    pub const MIN_MEMORY: Duration = Duration::from_secs(60);
    /// Ten years: "forever" for a migration, and far from any `Instant` overflow.
    pub const MAX_MEMORY: Duration = Duration::from_secs(3650 * 86_400);
}

impl Default for Permissive {
    fn default() -> Self {
        Self {
            tls_peer_memory: Duration::from_secs(24 * 3600),
            state_file: None,
        }
    }
}

/// `[metrics]`.
#[derive(Debug, Clone)]
pub struct MetricsSettings {
    pub listen: SocketAddr,
}

/// `tls.crl_expired`: what a CRL past its nextUpdate means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrlExpired {
    /// Refuse certificates checked against it (the CRL can no longer be trusted to be complete).
    #[default]
    Deny,
    /// Keep using it and log a warning at every load.
    Warn,
}

/// `[tls]`: our identity, whom we trust, and how we negotiate.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// Where the material came from; `None` for in-memory material (the demo, tests).
    pub files: Option<TlsFiles>,
    pub material: Arc<TlsMaterial>,
    pub versions: Vec<&'static SupportedProtocolVersion>,
    pub suites: Vec<SupportedCipherSuite>,
    pub require_client_auth: bool,
    pub crl_expired: CrlExpired,
    /// How often the referenced files are checked for changes (SIGHUP reloads at once).
    pub reload_interval: Duration,
    /// `tls.accept_v1_certificates`: X.509 v1 peer certificates signed directly by a trusted CA.
    pub accept_v1: bool,
}

/// One `[[inbound]]` listener: mutual TLS in, plaintext out to the local storage port.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub listen: SocketAddr,
    pub forward: SocketAddr,
    pub require_endpoint_verification: bool,
    pub allow: AllowList,
    /// Permissive: plaintext peers (recognised by their first bytes) are passed through untouched.
    pub mode: Mode,
}

/// `mode`: the migration switch, in the spirit of Cassandra's `optional: true` and Istio's PERMISSIVE.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Mutual TLS only: plaintext is refused.
    #[default]
    Strict,
    /// TLS where the peer has it, plaintext where it does not yet: for moving a live cluster one
    /// node at a time. Every connection is counted with `tls="true|false"`.
    Permissive,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Strict => "strict",
            Self::Permissive => "permissive",
        })
    }
}

/// One `[[outbound]]` listener: plaintext in from the local node, mutual TLS out to a peer's sidecar.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// A loopback address unless `allow_non_loopback_plaintext` said otherwise.
    pub listen: SocketAddr,
    /// Where the mutual TLS connection goes.
    pub target: Target,
    /// The dialed IP must be an IP SAN of the peer's certificate.
    pub require_endpoint_verification: bool,
    pub allow: AllowList,
    /// Permissive: a peer without TLS (its TLS port refuses, or does not speak TLS) is reached in
    /// plaintext at `plaintext_fallback` (transparent: the original destination).
    pub mode: Mode,
    /// Permissive with a fixed upstream: where plaintext goes.
    pub plaintext_fallback: Option<SocketAddr>,
    /// The local address outgoing connections come from (a multi-homed node's listen_address, so that
    /// peers with endpoint verification see the IP its certificate names). `None`: the kernel's choice.
    pub source: Option<std::net::IpAddr>,
}

/// The peer an outbound connection is carried to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `upstream = "10.0.0.2:7001"`: always this address.
    Fixed(SocketAddr),
    /// `transparent = true`: the original destination of a connection redirected by the firewall
    /// (SO_ORIGINAL_DST), with its port replaced by `tls_port` (the 7000 -> 7001 remap).
    Transparent { tls_port: u16 },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fixed(a) => write!(f, "{a}"),
            Self::Transparent { tls_port } => {
                write!(f, "the original destination's IP, port {tls_port}")
            }
        }
    }
}

/// `[limits]`: every phase of a connection has a deadline, and each listener admits connections within
/// its own budgets (see [`crate::listener::admission`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub handshake_timeout: Duration,
    pub connect_timeout: Duration,
    /// `None`: connections may be idle forever (internode connections are long-lived).
    pub idle_timeout: Option<Duration>,
    /// How long a half-closed connection may wait for the other direction to finish.
    pub close_linger: Duration,
    /// Established (verified, relaying) connections per listener.
    pub max_connections: usize,
    /// Handshakes in progress per listener; when full, the oldest is closed for the newcomer.
    pub max_pending_handshakes: usize,
    /// Handshakes in progress per source address (an IPv6 /64) on an inbound listener; a connection
    /// over it is closed at once.
    pub max_pending_per_source: usize,
    /// The listen(2) backlog; `None`: the system's `net.core.somaxconn`.
    pub listen_backlog: Option<u32>,
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: None,
            close_linger: Duration::from_secs(30),
            max_connections: 10_000,
            max_pending_handshakes: 1024,
            max_pending_per_source: 64,
            listen_backlog: None,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Where Linux publishes the largest listen backlog it grants (larger requests are cut to it).
const SOMAXCONN: &str = "/proc/sys/net/core/somaxconn";

/// The system's `net.core.somaxconn`, or Linux's default since 5.4 (4096) when it cannot be read.
pub fn system_backlog() -> u32 {
    std::fs::read_to_string(SOMAXCONN)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096)
}

impl Limits {
    /// The backlog to pass to listen(2): `listen_backlog`, or the system's maximum.
    pub fn backlog(&self) -> u32 {
        self.listen_backlog.unwrap_or_else(system_backlog)
    }
}

impl TlsSettings {
    /// Settings for in-memory material (the demo, tests, benchmarks): both protocol versions, the
    /// provider's suites, client certificates required, no CRLs.
    pub fn from_material(material: TlsMaterial) -> Self {
        Self {
            files: None,
            material: Arc::new(material),
            versions: rustls::ALL_VERSIONS.to_vec(),
            suites: crate::tls::provider().cipher_suites.clone(),
            require_client_auth: true,
            crl_expired: CrlExpired::Deny,
            reload_interval: Duration::from_secs(60),
            accept_v1: false,
        }
    }
}

impl Config {
    /// A config with no listeners yet and default limits, around `tls`.
    pub fn new(tls: TlsSettings) -> Self {
        Self {
            tls,
            inbound: Vec::new(),
            outbound: Vec::new(),
            limits: Limits::default(),
            offload: crate::relay::Offload::default(),
            metrics: None,
            source: None,
            cluster_name: None,
            permissive: Permissive::default(),
        }
    }

    /// Reads, parses and validates a config file, loading every certificate and key it names.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = files::read_text(path, files::CONFIG).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::from_toml(&text, path)?;
        config.source = Some(Sources {
            config: Some(path.to_owned()),
            cassandra_yaml: None,
        });
        Ok(config)
    }

    /// Parses config text; relative file names in it are resolved against `path`'s directory.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| toml_error(&e, text, path))?;
        // Values are echoed in messages and logs, which are one line each: a file name or address
        // with a newline or carriage return in it would break or overwrite the line.
        let table: toml::Table = toml::from_str(text).map_err(|e| toml_error(&e, text, path))?;
        if let Some((key, c)) = control_character(&toml::Value::Table(table), String::new()) {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                key,
                message: format!(
                    "contains the control character {:?}; names, addresses and file names are one line \
                     of printable text",
                    c
                ),
            });
        }
        file.validate(path)
    }
}

/// The first string value (other than a password) holding a control character other than tab, with
/// its key (`tls.crl[1]`).
fn control_character(value: &toml::Value, key: String) -> Option<(String, char)> {
    match value {
        toml::Value::String(s) if !key.ends_with("password") => s
            .chars()
            .find(|c| c.is_control() && *c != '\t')
            .map(|c| (key, c)),
        toml::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| control_character(v, format!("{key}[{i}]"))),
        toml::Value::Table(t) => t.iter().find_map(|(k, v)| {
            let key = if key.is_empty() {
                k.clone()
            } else {
                format!("{key}.{k}")
            };
            control_character(v, key)
        }),
        _ => None,
    }
}

/// The hint after a config file that cannot be read.
fn read_hint(e: &files::ReadError) -> &'static str {
    match e {
        files::ReadError::Io(_) => " (check the path given to --config)",
        _ => "",
    }
}

/// One line, not toml's multi-line snippet: where, the offending line, what is wrong.
fn toml_error(e: &toml::de::Error, text: &str, path: &Path) -> ConfigError {
    let at = e.span().map_or_else(String::new, |span| {
        let line = text[..span.start].matches('\n').count() + 1;
        let source = text.lines().nth(line - 1).unwrap_or_default().trim();
        format!("line {line} `{}`: ", visible(source))
    });
    ConfigError::Parse {
        path: path.to_owned(),
        message: format!(
            "{at}{}",
            visible(&e.message().trim_end().replace('\n', " "))
        ),
    }
}

/// Control characters (a bare carriage return, an escape sequence) written as escapes: the message
/// stays one line, and a terminal shows it as it is.
pub(crate) fn visible(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Where a config comes from: a ringseal file, the node's cassandra.yaml, or both (the ringseal file's
/// values override the derived ones key by key; its `[[inbound]]`/`[[outbound]]` lists replace them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    pub config: Option<PathBuf>,
    pub cassandra_yaml: Option<PathBuf>,
}

/// A loaded config and, with a cassandra.yaml, what was derived from it.
pub struct Loaded {
    pub config: Config,
    pub derived: Option<cassandra::Derived>,
}

impl Sources {
    /// Reads, derives, merges and validates.
    pub fn load(&self) -> Result<Loaded, ConfigError> {
        let Some(yaml) = &self.cassandra_yaml else {
            let path = self
                .config
                .as_ref()
                .expect("the command line requires --config or --cassandra-yaml");
            return Ok(Loaded {
                config: Config::load(path)?,
                derived: None,
            });
        };
        let derived = cassandra::derive(yaml)?;
        let mut table = derived.table.clone();
        // Derived paths are absolute; relative paths of the ringseal file resolve against its directory.
        let base = match &self.config {
            Some(path) => {
                let text =
                    files::read_text(path, files::CONFIG).map_err(|source| ConfigError::Read {
                        path: path.clone(),
                        source,
                    })?;
                let overrides: toml::Table =
                    toml::from_str(&text).map_err(|e| toml_error(&e, &text, path))?;
                cassandra::merge(&mut table, overrides);
                path.clone()
            }
            None => yaml.clone(),
        };
        let text = toml::to_string(&table).map_err(|e| ConfigError::Parse {
            path: base.clone(),
            message: e.to_string(),
        })?;
        let mut config = Config::from_toml(&text, &base)?;
        config.source = Some(self.clone());
        Ok(Loaded {
            config,
            derived: Some(derived),
        })
    }

    /// The contents of the source files, for noticing a change.
    pub fn read(&self) -> Result<Vec<u8>, String> {
        let mut all = Vec::new();
        for path in self.config.iter().chain(&self.cassandra_yaml) {
            let limit = if Some(path) == self.cassandra_yaml.as_ref() {
                files::CASSANDRA_YAML
            } else {
                files::CONFIG
            };
            all.extend_from_slice(
                &files::read(path, limit).map_err(|e| format!("{}: {e}", path.display()))?,
            );
        }
        Ok(all)
    }

    /// For log lines: `ringseal.toml`, `cassandra.yaml` or `ringseal.toml + cassandra.yaml`.
    pub fn describe(&self) -> String {
        self.config
            .iter()
            .chain(&self.cassandra_yaml)
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" + ")
    }
}

impl FileConfig {
    /// Converts the file structs into the runtime [`Config`]: the one place where input is checked.
    pub fn validate(self, path: &Path) -> Result<Config, ConfigError> {
        let base = path.parent().unwrap_or(Path::new("."));
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            message,
        };

        let versions =
            suites::parse_protocols(&self.tls.protocols).map_err(|source| ConfigError::Suites {
                path: path.to_owned(),
                key: "tls.protocols",
                source,
            })?;
        let provider = crate::tls::provider();
        let suites = suites::parse_cipher_suites(&self.tls.cipher_suites, &versions, &provider)
            .map_err(|source| ConfigError::Suites {
                path: path.to_owned(),
                key: "tls.cipher_suites",
                source,
            })?;

        let files = tls_files(&self.tls, base, &invalid)?;
        let interval = self.tls.reload_interval;
        if interval < MIN_RELOAD_INTERVAL || interval > MAX_DURATION {
            return Err(invalid(
                "tls.reload_interval",
                format!(
                    "{} is out of range: at least {} (every check reads and hashes every file it \
                     names) and at most {}; 60s is a good default, and SIGHUP reloads at once",
                    humantime::format_duration(interval),
                    humantime::format_duration(MIN_RELOAD_INTERVAL),
                    humantime::format_duration(MAX_DURATION)
                ),
            ));
        }
        let material = TlsMaterial::load(&files).map_err(|source| ConfigError::Material {
            path: path.to_owned(),
            source,
        })?;
        material
            .check_suites(&suites)
            .map_err(|source| ConfigError::Material {
                path: path.to_owned(),
                source,
            })?;
        let v1 = std::iter::once(&material.identity)
            .chain(material.outbound.as_ref().map(|(_, info)| info))
            .find(|id| id.version == 1);
        if let (Some(id), false) = (v1, self.tls.accept_v1_certificates) {
            let (key, file) = files.identity_origin();
            return Err(invalid(
                key,
                format!(
                    "{}: certificate \"{}\" is an X.509 v1 certificate (no extensions, no SANs), which \
                     ringseal refuses by default; set tls.accept_v1_certificates = true (v1 leaves are then \
                     accepted only when signed directly by a trusted CA) or reissue it with `ringseal certs node`",
                    file.display(),
                    id.subject
                ),
            ));
        }

        if self.inbound.is_empty() && self.outbound.is_empty() {
            return Err(invalid(
                "inbound",
                "no [[inbound]] or [[outbound]] listener is configured; add one with listen = \
                 \"0.0.0.0:7001\" and forward = \"127.0.0.1:7000\""
                    .into(),
            ));
        }
        let mut inbound = Vec::with_capacity(self.inbound.len());
        for (i, l) in self.inbound.into_iter().enumerate() {
            let listen = parse_addr(
                path,
                &format!("inbound[{i}].listen"),
                &l.listen,
                "0.0.0.0:7001",
            )?;
            let forward = parse_addr(
                path,
                &format!("inbound[{i}].forward"),
                &l.forward,
                "127.0.0.1:7000",
            )?;
            if forward.port() == 0 || forward.ip().is_unspecified() {
                return Err(invalid(
                    &format!("inbound[{i}].forward"),
                    format!(
                        "{forward} cannot be connected to; name the storage port's address, e.g. 127.0.0.1:7000"
                    ),
                ));
            }
            let allow = l
                .allow
                .map(|a| a.into_allow_list())
                .transpose()
                .map_err(|m| invalid(&format!("inbound[{i}].allow"), m))?
                .unwrap_or_default();
            if l.require_endpoint_verification && !self.tls.require_client_auth {
                return Err(invalid(
                    &format!("inbound[{i}].require_endpoint_verification"),
                    "endpoint verification checks the client certificate, so it needs \
                     tls.require_client_auth = true"
                        .into(),
                ));
            }
            if !allow.is_empty() && !self.tls.require_client_auth {
                return Err(invalid(
                    &format!("inbound[{i}].allow"),
                    "an allow-list checks the client certificate, so it needs tls.require_client_auth = true"
                        .into(),
                ));
            }
            let mode = l.mode.unwrap_or(self.mode);
            if mode == Mode::Permissive
                && !listen.ip().is_loopback()
                && !l.allow_non_loopback_plaintext
            {
                return Err(invalid(
                    &format!("inbound[{i}].mode"),
                    format!(
                        "permissive mode accepts plaintext, and {listen} is reachable from the network; \
                         set inbound[{i}].allow_non_loopback_plaintext = true to accept plaintext peers \
                         there during the migration, and switch to strict when no plaintext is left"
                    ),
                ));
            }
            inbound.push(Inbound {
                listen,
                forward,
                require_endpoint_verification: l.require_endpoint_verification,
                allow,
                mode,
            });
        }
        let mut outbound = Vec::with_capacity(self.outbound.len());
        for (i, o) in self.outbound.into_iter().enumerate() {
            let key = format!("outbound[{i}].listen");
            let listen = parse_addr(path, &key, &o.listen, "127.0.0.1:7002")?;
            if !listen.ip().is_loopback() && !o.allow_non_loopback_plaintext {
                return Err(invalid(
                    &key,
                    format!(
                        "{listen} would accept plaintext from the network, which defeats mutual TLS \
                         (Cassandra's CVE-2020-17516 was exactly that); listen on 127.0.0.1, or set \
                         outbound[{i}].allow_non_loopback_plaintext = true if a firewall guards it"
                    ),
                ));
            }
            let target = match (o.upstream.as_deref(), o.transparent) {
                (Some(upstream), false) => {
                    let key = format!("outbound[{i}].upstream");
                    let upstream = parse_addr(path, &key, upstream, "10.0.0.2:7001")?;
                    if upstream.port() == 0 || upstream.ip().is_unspecified() {
                        return Err(invalid(
                            &key,
                            format!(
                                "{upstream} cannot be connected to; name the peer's TLS address, \
                                 e.g. 10.0.0.2:7001"
                            ),
                        ));
                    }
                    Target::Fixed(upstream)
                }
                (None, true) if o.tls_port != 0 => Target::Transparent {
                    tls_port: o.tls_port,
                },
                (None, true) => {
                    return Err(invalid(
                        &format!("outbound[{i}].tls_port"),
                        "must be the peers' TLS port, e.g. 7001".into(),
                    ));
                }
                (Some(_), true) => {
                    return Err(invalid(
                        &format!("outbound[{i}]"),
                        "has both upstream and transparent = true; use upstream for one fixed peer, \
                         or transparent = true to carry each redirected connection to its own peer"
                            .into(),
                    ));
                }
                (None, false) => {
                    return Err(invalid(
                        &format!("outbound[{i}]"),
                        "says nowhere to connect: set transparent = true (with the rules from \
                         `ringseal rules`) or upstream = \"PEER_IP:7001\""
                            .into(),
                    ));
                }
            };
            let allow = o
                .allow
                .map(|a| a.into_allow_list())
                .transpose()
                .map_err(|m| invalid(&format!("outbound[{i}].allow"), m))?
                .unwrap_or_default();
            let mode = o.mode.unwrap_or(self.mode);
            let plaintext_fallback = o
                .plaintext_fallback
                .as_deref()
                .map(|f| {
                    parse_addr(
                        path,
                        &format!("outbound[{i}].plaintext_fallback"),
                        f,
                        "10.0.0.2:7000",
                    )
                })
                .transpose()?;
            if mode == Mode::Permissive
                && matches!(target, Target::Fixed(_))
                && plaintext_fallback.is_none()
            {
                return Err(invalid(
                    &format!("outbound[{i}].plaintext_fallback"),
                    "permissive mode with a fixed upstream needs to know where plaintext goes when the \
                     peer has no TLS yet, e.g. plaintext_fallback = \"10.0.0.2:7000\""
                        .into(),
                ));
            }
            let source = o
                .source
                .as_deref()
                .map(|ip| {
                    ip.parse::<std::net::IpAddr>().map_err(|_| {
                        invalid(
                            &format!("outbound[{i}].source"),
                            format!("{ip:?} is not an IP address (the node's listen_address, e.g. 10.0.0.1)"),
                        )
                    })
                })
                .transpose()?;
            outbound.push(Outbound {
                listen,
                target,
                mode,
                plaintext_fallback,
                source,
                require_endpoint_verification: o.require_endpoint_verification,
                allow,
            });
        }
        let listens: Vec<(String, SocketAddr)> = inbound
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("inbound[{i}]"), l.listen))
            .chain(
                outbound
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (format!("outbound[{i}]"), l.listen)),
            )
            .collect();
        for (i, (name, a)) in listens.iter().enumerate() {
            if let Some((other, b)) = listens[..i].iter().find(|(_, b)| overlaps(*a, *b)) {
                let message = if a == b {
                    format!("{a} is also used by {other}")
                } else {
                    format!(
                        "{a} overlaps {other}.listen {b} (0.0.0.0 and [::] take the port on every \
                         address, and on Linux [::] also takes it for IPv4); use one listener on \
                         [::]:{} for both, or different ports",
                        a.port()
                    )
                };
                return Err(invalid(&format!("{name}.listen"), message));
            }
        }

        let targets = inbound
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("inbound[{i}].forward"), l.forward))
            .chain(outbound.iter().enumerate().flat_map(|(i, o)| {
                let upstream = match o.target {
                    Target::Fixed(a) => Some((format!("outbound[{i}].upstream"), a)),
                    Target::Transparent { .. } => None,
                };
                upstream.into_iter().chain(
                    o.plaintext_fallback
                        .map(|a| (format!("outbound[{i}].plaintext_fallback"), a)),
                )
            }));
        for (key, target) in targets {
            if let Some((name, listen)) = listens.iter().find(|(_, l)| reaches(target, *l)) {
                return Err(invalid(
                    &key,
                    format!(
                        "{target} is this process's own {name}.listen {listen}: every connection would \
                         come back into ringseal, again and again, until the connection limit is \
                         taken; point it at {}",
                        if key.ends_with("forward") {
                            "the local storage port (e.g. 127.0.0.1:7000)"
                        } else if key.ends_with("upstream") {
                            "the peer's TLS address (e.g. 10.0.0.2:7001)"
                        } else {
                            "the peer's plaintext storage port (e.g. 10.0.0.2:7000)"
                        }
                    ),
                ));
            }
        }

        let metrics = self
            .metrics
            .map(|m| {
                parse_addr(path, "metrics.listen", &m.listen, "127.0.0.1:9464")
                    .map(|listen| MetricsSettings { listen })
            })
            .transpose()?;
        if let Some(m) = &metrics
            && let Some((name, _)) = listens.iter().find(|(_, b)| overlaps(m.listen, *b))
        {
            return Err(invalid(
                "metrics.listen",
                format!(
                    "{} overlaps {name}.listen; give the metrics endpoint its own port",
                    m.listen
                ),
            ));
        }

        let permissive = permissive(self.permissive, base, &invalid)?;

        if self.offload == crate::relay::Offload::Require {
            let support = crate::relay::support();
            if let Err(why) = &support.result {
                return Err(invalid(
                    "offload",
                    format!(
                        "\"require\", but this kernel has no kTLS: {why}; or set offload = \"auto\""
                    ),
                ));
            }
            if let Some(s) = suites.iter().find(|s| !support.offloads(**s)) {
                return Err(invalid(
                    "offload",
                    format!(
                        "\"require\", but the kernel cannot offload {} (it takes {}); remove it from \
                         tls.cipher_suites or set offload = \"auto\"",
                        crate::tls::suites::iana_name(*s),
                        support.describe()
                    ),
                ));
            }
        }

        let l = self.limits;
        if l.max_connections == 0 || l.max_connections > MAX_CONNECTIONS {
            return Err(invalid(
                "limits.max_connections",
                format!(
                    "{} is out of range: at least 1 and at most {MAX_CONNECTIONS} (each connection \
                     holds 2 to 6 descriptors; 10000 is a good default)",
                    l.max_connections
                ),
            ));
        }
        for (key, d) in [
            ("limits.handshake_timeout", l.handshake_timeout),
            ("limits.connect_timeout", l.connect_timeout),
            ("limits.idle_timeout", l.idle_timeout),
            ("limits.close_linger", l.close_linger),
            ("limits.shutdown_grace", l.shutdown_grace),
        ] {
            if d > MAX_DURATION {
                return Err(invalid(
                    key,
                    format!(
                        "{} is longer than the {} ringseal accepts for a deadline",
                        humantime::format_duration(d),
                        humantime::format_duration(MAX_DURATION)
                    ),
                ));
            }
        }
        for (key, d) in [
            ("limits.handshake_timeout", l.handshake_timeout),
            ("limits.connect_timeout", l.connect_timeout),
            ("limits.close_linger", l.close_linger),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "must be longer than 0s".into()));
            }
        }
        if l.max_pending_handshakes == 0 || l.max_pending_handshakes > MAX_CONNECTIONS {
            return Err(invalid(
                "limits.max_pending_handshakes",
                format!(
                    "{} is out of range: at least 1 and at most {MAX_CONNECTIONS} (1024 is a good \
                     default)",
                    l.max_pending_handshakes
                ),
            ));
        }
        if l.max_pending_per_source == 0 || l.max_pending_per_source > l.max_pending_handshakes {
            return Err(invalid(
                "limits.max_pending_per_source",
                format!(
                    "{} must be from 1 to limits.max_pending_handshakes ({}): one address must not \
                     be able to take every handshake slot (64 is a good default)",
                    l.max_pending_per_source, l.max_pending_handshakes
                ),
            ));
        }
        if l.listen_backlog > i32::MAX as u32 {
            return Err(invalid(
                "limits.listen_backlog",
                format!(
                    "{} is more than listen(2) takes ({}); write 0 for the system's \
                     net.core.somaxconn",
                    l.listen_backlog,
                    i32::MAX
                ),
            ));
        }
        let limits = Limits {
            handshake_timeout: l.handshake_timeout,
            connect_timeout: l.connect_timeout,
            idle_timeout: (!l.idle_timeout.is_zero()).then_some(l.idle_timeout),
            close_linger: l.close_linger,
            max_connections: l.max_connections,
            max_pending_handshakes: l.max_pending_handshakes,
            max_pending_per_source: l.max_pending_per_source,
            listen_backlog: (l.listen_backlog != 0).then_some(l.listen_backlog),
            shutdown_grace: l.shutdown_grace,
        };

        Ok(Config {
            tls: TlsSettings {
                files: Some(files),
                material: Arc::new(material),
                versions,
                suites,
                require_client_auth: self.tls.require_client_auth,
                crl_expired: self.tls.crl_expired,
                reload_interval: self.tls.reload_interval,
                accept_v1: self.tls.accept_v1_certificates,
            },
            inbound,
            outbound,
            limits,
            offload: self.offload,
            metrics,
            source: None,
            cluster_name: self.cluster_name,
            permissive,
        })
    }
}

/// What `ringseal check` prints after the PKI report (see `doctor`): the negotiation, the listeners and
/// the limits, every validated value.
pub fn describe(c: &Config) -> String {
    use crate::tls::suites::{iana_name, protocol_name};
    use std::fmt::Write;
    let mut out = String::new();
    let versions: Vec<_> = c
        .tls
        .versions
        .iter()
        .map(|v| protocol_name(v.version))
        .collect();
    let suites: Vec<_> = c.tls.suites.iter().map(|s| iana_name(*s)).collect();
    let _ = writeln!(out, "protocols  {}", versions.join(", "));
    let _ = writeln!(out, "suites     {}", suites.join(", "));
    let _ = writeln!(
        out,
        "client auth {}",
        if c.tls.require_client_auth {
            "required"
        } else {
            "optional (peers without a certificate are accepted)"
        }
    );
    for (i, l) in c.inbound.iter().enumerate() {
        let _ = writeln!(
            out,
            "inbound[{i}] listen {} -> forward {} (endpoint verification {}, allow {})",
            l.listen,
            l.forward,
            if l.require_endpoint_verification {
                "on"
            } else {
                "off"
            },
            l.allow
        );
    }
    for (i, o) in c.outbound.iter().enumerate() {
        let _ = writeln!(
            out,
            "outbound[{i}] listen {} (plaintext) -> mTLS to {} (endpoint verification {}, allow {})",
            o.listen,
            o.target,
            if o.require_endpoint_verification {
                "on"
            } else {
                "off"
            },
            o.allow
        );
    }
    let _ = writeln!(
        out,
        "permissive peers verified over TLS are never sent plaintext for {} after their last handshake ({})",
        humantime::format_duration(c.permissive.tls_peer_memory),
        c.permissive
            .state_file
            .as_ref()
            .map_or("in memory only".into(), |f| format!(
                "state file {}",
                f.display()
            ))
    );
    let support = crate::relay::support();
    let _ = writeln!(
        out,
        "offload    {} ({})",
        c.offload,
        if support.available() {
            format!("kTLS available: {}", support.describe())
        } else {
            format!("kTLS unavailable: {}", support.describe())
        }
    );
    let l = &c.limits;
    let _ = writeln!(
        out,
        "limits     handshake {}, connect {}, idle {}, linger {}, max {} connections, shutdown grace {}",
        humantime::format_duration(l.handshake_timeout),
        humantime::format_duration(l.connect_timeout),
        l.idle_timeout
            .map_or("none".into(), |d| humantime::format_duration(d).to_string()),
        humantime::format_duration(l.close_linger),
        l.max_connections,
        humantime::format_duration(l.shutdown_grace),
    );
    let system = system_backlog();
    let backlog = match l.listen_backlog {
        None => format!("{system} (the system's net.core.somaxconn)"),
        Some(b) if b > system => format!("{b}, cut to net.core.somaxconn = {system} by the kernel"),
        Some(b) => b.to_string(),
    };
    let _ = writeln!(
        out,
        "admission  per listener: max {} connections, max {} handshakes in progress (inbound: {} per \
         source address); listen backlog {backlog}",
        l.max_connections, l.max_pending_handshakes, l.max_pending_per_source,
    );
    out
}

/// `[permissive]`: the memory's length within bounds, the state file a file (not a directory).
fn permissive(
    p: file::FilePermissive,
    base: &Path,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Permissive, ConfigError> {
    let memory = p.tls_peer_memory;
    if memory < Permissive::MIN_MEMORY || memory > Permissive::MAX_MEMORY {
        return Err(invalid(
            "permissive.tls_peer_memory",
            format!(
                "{} is outside 1m..3650d; it is how long a peer that completed a verified TLS \
                 handshake is never sent plaintext (24h is a good default)",
                humantime::format_duration(memory)
            ),
        ));
    }
    let state_file = match p.state_file {
        None => None,
        Some(f) if f.as_os_str().is_empty() => {
            return Err(invalid(
                "permissive.state_file",
                "is empty; name a file, e.g. \"/var/lib/ringseal/tls-peers\", or remove the key"
                    .into(),
            ));
        }
        Some(f) => {
            let path = base.join(f);
            if path.is_dir() {
                return Err(invalid(
                    "permissive.state_file",
                    format!(
                        "{} is a directory; name a file in it, e.g. \"{}\"",
                        path.display(),
                        path.join("tls-peers").display()
                    ),
                ));
            }
            Some(path)
        }
    };
    Ok(Permissive {
        tls_peer_memory: memory,
        state_file,
    })
}

/// The identity and trust files of `[tls]`: PEM files or keystores, exactly one of each.
fn tls_files(
    tls: &file::FileTls,
    base: &Path,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<TlsFiles, ConfigError> {
    let keystore = store(
        StoreKeys {
            key: "tls.keystore",
            path: &tls.keystore,
            password: &tls.keystore_password,
            password_file: &tls.keystore_password_file,
            password_env: &tls.keystore_password_env,
            kind: &tls.keystore_type,
            alias: &tls.keystore_alias,
        },
        base,
        invalid,
    )?;
    let truststore = store(
        StoreKeys {
            key: "tls.truststore",
            path: &tls.truststore,
            password: &tls.truststore_password,
            password_file: &tls.truststore_password_file,
            password_env: &tls.truststore_password_env,
            kind: &tls.truststore_type,
            alias: &None,
        },
        base,
        invalid,
    )?;
    let outbound = store(
        StoreKeys {
            key: "tls.outbound_keystore",
            path: &tls.outbound_keystore,
            password: &tls.outbound_keystore_password,
            password_file: &tls.outbound_keystore_password_file,
            password_env: &tls.outbound_keystore_password_env,
            kind: &tls.outbound_keystore_type,
            alias: &tls.outbound_keystore_alias,
        },
        base,
        invalid,
    )?;
    let identity = match (&tls.cert, &tls.key, keystore) {
        (Some(cert), Some(key), None) => IdentityFiles::Pem {
            cert: base.join(cert),
            key: base.join(key),
        },
        (None, None, Some(store)) => IdentityFiles::Store(store),
        (Some(_), None, None) => {
            return Err(invalid(
                "tls.key",
                "tls.cert is set but tls.key is not; name the private key file".into(),
            ));
        }
        (None, Some(_), None) => {
            return Err(invalid(
                "tls.cert",
                "tls.key is set but tls.cert is not; name the certificate chain file".into(),
            ));
        }
        (None, None, None) => {
            return Err(invalid(
                "tls",
                "no identity: set cert + key (PEM files) or keystore (PKCS#12, JKS or PEM, with \
                 keystore_password)"
                    .into(),
            ));
        }
        (_, _, Some(_)) => {
            return Err(invalid(
                "tls.keystore",
                "give either cert + key or keystore for the identity, not both".into(),
            ));
        }
    };
    let trust = match (&tls.ca, truststore) {
        (Some(ca), None) => TrustFiles::Pem(base.join(ca)),
        (None, Some(store)) => TrustFiles::Store(store),
        (None, None) => {
            return Err(invalid(
                "tls",
                "no trust: set ca (the cluster CA certificates in PEM) or truststore (PKCS#12, JKS or \
                 PEM, with truststore_password)"
                    .into(),
            ));
        }
        (Some(_), Some(_)) => {
            return Err(invalid(
                "tls.truststore",
                "give either ca or truststore for the trusted CAs, not both".into(),
            ));
        }
    };
    Ok(TlsFiles {
        identity,
        outbound_identity: outbound.map(IdentityFiles::Store),
        trust,
        crls: tls.crl.iter().map(|c| base.join(c)).collect(),
    })
}

/// The keys of one keystore in `[tls]` (`keystore`, `truststore` or `outbound_keystore`).
struct StoreKeys<'a> {
    key: &'static str,
    path: &'a Option<PathBuf>,
    password: &'a Option<crate::tls::keystore::Secret>,
    password_file: &'a Option<PathBuf>,
    password_env: &'a Option<String>,
    kind: &'a Option<String>,
    alias: &'a Option<String>,
}

fn store(
    k: StoreKeys<'_>,
    base: &Path,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Option<StoreFile>, ConfigError> {
    let given = [
        ("password", k.password.is_some()),
        ("password_file", k.password_file.is_some()),
        ("password_env", k.password_env.is_some()),
        ("type", k.kind.is_some()),
        ("alias", k.alias.is_some()),
    ];
    let Some(path) = k.path else {
        if let Some((suffix, _)) = given.iter().find(|(_, set)| *set) {
            return Err(invalid(
                &format!("{}_{suffix}", k.key),
                format!(
                    "is set but {} is not; name the store file or remove it",
                    k.key
                ),
            ));
        }
        return Ok(None);
    };
    if given[..3].iter().filter(|(_, set)| *set).count() > 1 {
        return Err(invalid(
            &format!("{}_password", k.key),
            format!(
                "give one of {0}_password, {0}_password_file and {0}_password_env",
                k.key
            ),
        ));
    }
    let password = if let Some(p) = k.password {
        Password::Inline(p.clone())
    } else if let Some(f) = k.password_file {
        Password::File(base.join(f))
    } else if let Some(var) = k.password_env {
        let value = std::env::var(var).map_err(|e| {
            invalid(
                &format!("{}_password_env", k.key),
                format!("environment variable {var}: {e}; export it in the service's environment"),
            )
        })?;
        Password::Inline(crate::tls::keystore::Secret::new(value))
    } else {
        Password::None
    };
    let stated = match k.kind {
        None => None,
        Some(t) => Some(StoreType::parse(t).ok_or_else(|| {
            invalid(
                &format!("{}_type", k.key),
                format!(
                    "{t:?} is not a store type; write \"pkcs12\", \"jks\" or \"pem\" (or leave it out: \
                     the format is detected from the content)"
                ),
            )
        })?),
    };
    Ok(Some(StoreFile {
        key: k.key,
        path: base.join(path),
        stated,
        password,
        alias: k.alias.clone(),
    }))
}

/// Whether connecting to `target` reaches a socket listening on `listen`: the same port, and the same
/// address, or a wildcard listen of a compatible family and an address of this host (a dual-stack
/// `[::]` also takes IPv4). Port 0 listens on a port chosen at bind time, which no config can name.
fn reaches(target: SocketAddr, listen: SocketAddr) -> bool {
    let ip = crate::tls::verify::canonical_ip(target.ip());
    if target.port() != listen.port() || listen.port() == 0 {
        return false;
    }
    if ip == crate::tls::verify::canonical_ip(listen.ip()) {
        return true;
    }
    let family_ok = match listen.ip() {
        std::net::IpAddr::V4(l) => l.is_unspecified() && ip.is_ipv4(),
        std::net::IpAddr::V6(l) => l.is_unspecified(),
    };
    family_ok && is_local(ip)
}

/// Whether `ip` is an address of this host: loopback, or one it can bind to.
fn is_local(ip: std::net::IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Whether two listen addresses would fight over the same port (port 0 means "any free port").
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let wildcard_v6 = |x: SocketAddr| x.is_ipv6() && x.ip().is_unspecified();
    a.ip() == b.ip()
        || (a.ip().is_unspecified() && a.is_ipv4() == b.is_ipv4())
        || (b.ip().is_unspecified() && a.is_ipv4() == b.is_ipv4())
        || wildcard_v6(a)
        || wildcard_v6(b)
}

fn parse_addr(
    path: &Path,
    key: &str,
    value: &str,
    example: &'static str,
) -> Result<SocketAddr, ConfigError> {
    let addr = parse_addr_text(path, key, value, example)?;
    if let SocketAddr::V6(a) = addr
        && a.scope_id() != 0
        && !crate::sys::interface_exists(a.scope_id())
    {
        return Err(ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            message: format!(
                "{value}: scope id %{} names no network interface on this host (`ip link` lists them \
                 with their index)",
                a.scope_id()
            ),
        });
    }
    Ok(addr)
}

fn parse_addr_text(
    path: &Path,
    key: &str,
    value: &str,
    example: &'static str,
) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        let why = if value.contains(':') && value.parse::<std::net::IpAddr>().is_ok() {
            "an IPv6 address with a port is written in brackets, e.g. [::1]:7001".to_owned()
        } else if !value.contains(':') {
            "the port is missing".to_owned()
        } else if value
            .rsplit_once(':')
            .is_some_and(|(host, _)| host.parse::<std::net::IpAddr>().is_err())
        {
            "host names are not resolved; give the IP address".to_owned()
        } else {
            "the port must be a number from 0 to 65535".to_owned()
        };
        ConfigError::Address {
            path: path.to_owned(),
            key: key.to_owned(),
            value: value.to_owned(),
            why,
            example,
        }
    })
}

#[cfg(test)]
mod tests;
