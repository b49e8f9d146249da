//! Why a config is refused. Each message names the file and key and says how to fix it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use humantime::format_duration;

use super::{MAX_CONNECTIONS, MAX_DURATION, MIN_RELOAD_INTERVAL};
use crate::files;
use crate::tls::suites::SuiteError;

/// Errors that stop ringseal before it binds a port.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {source}{}", read_hint(.source))]
    Read {
        path: PathBuf,
        source: files::ReadError,
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
        why: &'static str,
        example: &'static str,
    },
    /// A value that parses but is refused; `key` is the config key (`inbound[0].forward`).
    #[error("config {path}: {key}: {problem}")]
    Invalid {
        path: PathBuf,
        key: String,
        /// Boxed: the largest problem would make every `Result` of the config this large.
        problem: Box<Problem>,
    },
    #[error("config {path}: {key}: {source}")]
    Suites {
        path: PathBuf,
        /// Boxed to keep every `Result` of the config small.
        key: Box<str>,
        source: SuiteError,
    },
    /// A `--set` that cannot be applied: `arg` is the key (and value, unless it is a password).
    #[error("--set {arg}: {message}")]
    Set { arg: String, message: String },
    /// Boxed: the derivation's errors carry their data and would make every `ConfigError` large.
    #[error(transparent)]
    Cassandra(Box<super::cassandra::CassandraYamlError>),
}

/// What is wrong with one key's value.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error(
        "contains the control character {0:?}; names, addresses and file names are one line of \
         printable text"
    )]
    ControlCharacter(char),
    #[error(
        "{given} is out of range: at least {min} (every check reads and hashes every file it names) \
         and at most {max}; 60s is a good default, and SIGHUP reloads at once",
        given = format_duration(*.0),
        min = format_duration(MIN_RELOAD_INTERVAL),
        max = format_duration(MAX_DURATION)
    )]
    ReloadInterval(Duration),

    // [tls] files
    #[error("tls.cert is set but tls.key is not; name the private key file")]
    CertWithoutKey,
    #[error("tls.key is set but tls.cert is not; name the certificate chain file")]
    KeyWithoutCert,
    #[error(
        "no identity: set cert + key (PEM files) or keystore (PKCS#12, JKS or PEM, with \
         keystore_password)"
    )]
    NoIdentity,
    #[error("give either cert + key or keystore for the identity, not both")]
    TwoIdentities,
    #[error(
        "no trust: set ca (the cluster CA certificates in PEM) or truststore (PKCS#12, JKS or PEM, \
         with truststore_password)"
    )]
    NoTrust,
    #[error("give either ca or truststore for the trusted CAs, not both")]
    TwoTrusts,
    /// `store` is `tls.keystore`, `tls.truststore` or `tls.outbound_keystore`.
    #[error("is set but {store} is not; name the store file or remove it")]
    StoreOptionWithoutStore { store: &'static str },
    #[error("give one of {store}_password, {store}_password_file and {store}_password_env")]
    TwoPasswords { store: &'static str },
    #[error(
        "{0:?} is not a store type; write \"pkcs12\", \"jks\" or \"pem\" (or leave it out: the format \
         is detected from the content)"
    )]
    StoreType(String),

    // listeners
    #[error(
        "no [[inbound]] or [[outbound]] listener is configured; add one with listen = \
         \"0.0.0.0:7001\" and forward = \"127.0.0.1:7000\""
    )]
    NoListener,
    #[error(
        "{value}: scope id %{scope_id} names no network interface on this host (`ip link` lists them with their index)"
    )]
    UnknownScopeId { value: String, scope_id: u32 },
    #[error("{0} cannot be connected to; name the storage port's address, e.g. 127.0.0.1:7000")]
    ForwardUnreachable(SocketAddr),
    #[error(transparent)]
    AllowList(#[from] AllowListError),
    /// `tls` is where the listener's `require_client_auth` comes from (`tls`, `inbound[1].tls`).
    #[error(
        "endpoint verification checks the client certificate, but {tls}.require_client_auth = false \
         asks for none; set it to true (or \"optional\": checked when a client sends one)"
    )]
    EndpointVerificationWithoutClientAuth { tls: String },
    #[error(
        "an allow-list checks the client certificate, but {tls}.require_client_auth = false asks for \
         none; set it to true (or \"optional\": checked when a client sends one)"
    )]
    AllowListWithoutClientAuth { tls: String },
    #[error(
        "{0:?} is not a listener name: 1 to 32 characters of a-z, 0-9, _ and - (it becomes the \
         `listener` metric label), e.g. \"client\""
    )]
    ListenerName(String),
    #[error("{name:?} is also the name of {other}; give each listener its own name")]
    DuplicateListenerName { name: String, other: String },
    #[error(
        "permissive mode accepts plaintext, and {listen} is reachable from the network; set \
         inbound[{index}].allow_non_loopback_plaintext = true to accept plaintext peers there during \
         the migration, and switch to strict when no plaintext is left"
    )]
    PermissiveOnNetwork { index: usize, listen: SocketAddr },
    #[error(
        "{listen} would accept plaintext from the network, which defeats mutual TLS (Cassandra's \
         CVE-2020-17516 was exactly that); listen on 127.0.0.1, or set \
         outbound[{index}].allow_non_loopback_plaintext = true if a firewall guards it"
    )]
    PlaintextOnNetwork { index: usize, listen: SocketAddr },
    #[error("{0} cannot be connected to; name the peer's TLS address, e.g. 10.0.0.2:7001")]
    UpstreamUnreachable(SocketAddr),
    #[error("must be the peers' TLS port, e.g. 7001")]
    NoTlsPort,
    #[error(
        "has both upstream and transparent = true; use upstream for one fixed peer, or transparent = \
         true to carry each redirected connection to its own peer"
    )]
    UpstreamAndTransparent,
    #[error(
        "says nowhere to connect: set transparent = true (with the rules from `ringseal rules`) or \
         upstream = \"PEER_IP:7001\""
    )]
    NoTarget,
    #[error(
        "permissive mode with a fixed upstream needs to know where plaintext goes when the peer has \
         no TLS yet, e.g. plaintext_fallback = \"10.0.0.2:7000\""
    )]
    NoPlaintextFallback,
    #[error("{0:?} is not an IP address (the node's listen_address, e.g. 10.0.0.1)")]
    BindIp(String),
    #[error("{addr} is also used by {other}")]
    SameListen { addr: SocketAddr, other: String },
    #[error(
        "{addr} overlaps {other}.listen {other_addr} (0.0.0.0 and [::] take the port on every \
         address, and on Linux [::] also takes it for IPv4); use one listener on [::]:{port} for \
         both, or different ports",
        port = .addr.port()
    )]
    OverlappingListen {
        addr: SocketAddr,
        other: String,
        other_addr: SocketAddr,
    },
    #[error(
        "{target} is this process's own {listener}.listen {listen}: every connection would come back \
         into ringseal, again and again, until the connection limit is taken; point it at {instead}"
    )]
    Loop {
        target: SocketAddr,
        /// `inbound[0]`, `outbound[1]`.
        listener: String,
        listen: SocketAddr,
        /// What the key should name, with an example.
        instead: &'static str,
    },
    #[error("{listen} overlaps {listener}.listen; give the metrics endpoint its own port")]
    MetricsOverlap {
        listen: SocketAddr,
        listener: String,
    },

    // [permissive]
    #[error(
        "{given} is outside 1m..3650d; it is how long a peer that completed a verified TLS handshake \
         is never sent plaintext (24h is a good default)",
        given = format_duration(*.0)
    )]
    TlsPeerMemory(Duration),
    #[error("is empty; name a file, e.g. \"/var/lib/ringseal/tls-peers\", or remove the key")]
    EmptyStateFile,
    #[error(
        "{dir} is a directory; name a file in it, e.g. \"{file}\"",
        dir = .0.display(),
        file = .0.join("tls-peers").display()
    )]
    StateFileIsDirectory(PathBuf),

    // [handover]
    #[error("is empty; name a socket, e.g. \"/run/ringseal/handover.sock\", or remove the key")]
    EmptyHandoverSocket,
    #[error(
        "{path} is longer than {max} bytes (a Unix socket path holds 107, and a temporary name is bound \
         first); choose a shorter path, e.g. \"/run/ringseal/handover.sock\"",
        path = .0.display(),
        max = crate::config::Handover::MAX_PATH
    )]
    HandoverSocketTooLong(PathBuf),
    #[error(
        "{dir} is a directory; name a socket in it, e.g. \"{file}\"",
        dir = .0.display(),
        file = .0.join("handover.sock").display()
    )]
    HandoverSocketIsDirectory(PathBuf),

    // [limits]
    #[error(
        "{0} is out of range: at least 1 and at most {MAX_CONNECTIONS} (each connection holds 2 to 6 \
         descriptors; 10000 is a good default)"
    )]
    MaxConnections(usize),
    #[error(
        "{given} is longer than the {max} ringseal accepts for a deadline",
        given = format_duration(*.0),
        max = format_duration(MAX_DURATION)
    )]
    DeadlineTooLong(Duration),
    #[error("must be longer than 0s")]
    ZeroDeadline,
    #[error(
        "{0} is out of range: at least 1 and at most {MAX_CONNECTIONS} (1024 is a good default)"
    )]
    MaxPendingHandshakes(usize),
    #[error(
        "{value} must be from 1 to limits.max_pending_handshakes ({max}): one address must not be \
         able to take every handshake slot (64 is a good default)"
    )]
    MaxPendingPerSource { value: usize, max: usize },
    #[error(
        "{0} is more than listen(2) takes ({max}); write 0 for the system's net.core.somaxconn",
        max = i32::MAX
    )]
    ListenBacklog(u32),
}

/// Why an `allow = { ... }` table is refused.
#[derive(Debug, thiserror::Error)]
pub enum AllowListError {
    #[error("ip entry {0:?} is not an IP address")]
    NotAnIp(String),
    /// A `dns` or `uri` entry with a `*` that is not a pattern we take; the key names the entry
    /// (`inbound[0].allow.dns[1]`), so the message starts with its value.
    #[error("{entry:?}: {source}")]
    Pattern {
        field: &'static str,
        index: usize,
        entry: String,
        source: crate::tls::pattern::PatternError,
    },
    #[error(
        "the allow-list is present but lists nothing, which would refuse every peer; list at least \
         one ou, cn, dns, ip or uri, or remove it"
    )]
    Empty,
}

/// The hint after a config file that cannot be read.
fn read_hint(e: &files::ReadError) -> &'static str {
    match e {
        files::ReadError::Io(_) => " (check the path given to --config)",
        _ => "",
    }
}

impl AllowListError {
    /// What to append to `listener.allow` to name the offending entry (`.dns[1]`), if one is.
    pub fn entry_key(&self) -> Option<String> {
        match self {
            Self::Pattern { field, index, .. } => Some(format!(".{field}[{index}]")),
            _ => None,
        }
    }
}

impl From<super::cassandra::CassandraYamlError> for ConfigError {
    fn from(e: super::cassandra::CassandraYamlError) -> Self {
        Self::Cassandra(Box::new(e))
    }
}
