//! The config file exactly as operators write it. Unknown keys are errors (a typo must not silently turn a
//! security check off). `config/ringseal.toml` documents every key; a test parses it.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Limits, Logging, Mode, Offload, Permissive};
use crate::secret::Secret;
use crate::tls::settings::{ClientAuth, CrlExpired};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Cassandra's `cluster_name`: `ringseal check` warns when certificates carry another OU.
    #[serde(default)]
    pub cluster_name: Option<String>,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub offload: Offload,
    pub tls: FileTls,
    #[serde(default)]
    pub inbound: Vec<FileInbound>,
    #[serde(default)]
    pub outbound: Vec<FileOutbound>,
    #[serde(default)]
    pub limits: FileLimits,
    #[serde(default)]
    pub metrics: Option<FileMetrics>,
    #[serde(default)]
    pub permissive: FilePermissive,
    #[serde(default)]
    pub logging: FileLogging,
    #[serde(default)]
    pub tcp: FileTcp,
    #[serde(default)]
    pub handover: FileHandover,
}

/// `[handover]`: where a new `ringseal run` finds this one to take its listeners and connections over.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHandover {
    #[serde(default)]
    pub socket: Option<PathBuf>,
}

/// `[tcp]`: the congestion control of the loopback legs (see `crate::tcp`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileTcp {
    pub loopback_congestion_control: crate::tcp::LoopbackCongestion,
}

/// `[logging]`; a missing key takes its default from [`Logging::default`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileLogging {
    pub connections: bool,
}

impl Default for FileLogging {
    fn default() -> Self {
        Self {
            connections: Logging::default().connections,
        }
    }
}

/// `[permissive]`: how permissive outbound remembers the peers that have TLS; a missing key takes its
/// default from [`Permissive::default`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilePermissive {
    #[serde(deserialize_with = "duration")]
    pub tls_peer_memory: Duration,
    pub state_file: Option<PathBuf>,
}

impl Default for FilePermissive {
    fn default() -> Self {
        let p = Permissive::default();
        Self {
            tls_peer_memory: p.tls_peer_memory,
            state_file: p.state_file,
        }
    }
}

/// `[metrics]`: the Prometheus endpoint (off when the table is absent).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMetrics {
    pub listen: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default)]
    pub keystore: Option<PathBuf>,
    #[serde(default)]
    pub keystore_password: Option<Secret>,
    #[serde(default)]
    pub keystore_password_file: Option<PathBuf>,
    #[serde(default)]
    pub keystore_password_env: Option<String>,
    #[serde(default)]
    pub keystore_type: Option<String>,
    #[serde(default)]
    pub keystore_alias: Option<String>,
    #[serde(default)]
    pub truststore: Option<PathBuf>,
    #[serde(default)]
    pub truststore_password: Option<Secret>,
    #[serde(default)]
    pub truststore_password_file: Option<PathBuf>,
    #[serde(default)]
    pub truststore_password_env: Option<String>,
    #[serde(default)]
    pub truststore_type: Option<String>,
    #[serde(default)]
    pub outbound_keystore: Option<PathBuf>,
    #[serde(default)]
    pub outbound_keystore_password: Option<Secret>,
    #[serde(default)]
    pub outbound_keystore_password_file: Option<PathBuf>,
    #[serde(default)]
    pub outbound_keystore_password_env: Option<String>,
    #[serde(default)]
    pub outbound_keystore_type: Option<String>,
    #[serde(default)]
    pub outbound_keystore_alias: Option<String>,
    #[serde(default)]
    pub accept_v1_certificates: bool,
    #[serde(default)]
    pub protocols: Vec<String>,
    #[serde(default)]
    pub cipher_suites: Vec<String>,
    /// Mutual TLS unless the operator says otherwise.
    #[serde(default)]
    pub require_client_auth: ClientAuth,
    #[serde(default)]
    pub crl: Vec<PathBuf>,
    #[serde(default)]
    pub crl_expired: CrlExpired,
    #[serde(default = "default_reload_interval", deserialize_with = "duration")]
    pub reload_interval: Duration,
}

/// `[inbound.tls]` / `[outbound.tls]`: one listener's TLS policy, the keys of `[tls]` (but
/// `reload_interval`, which is per process) merged over `[tls]` by group: naming any identity key
/// replaces the whole identity, any trust key the whole trust, and the other keys one by one (the three
/// ways of giving `outbound_keystore`'s password count as one key). Its fields repeat [`FileTls`]'s
/// because serde's `flatten` cannot be combined with `deny_unknown_fields`, and a typo here must fail.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListenerTls {
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    #[serde(default)]
    pub keystore: Option<PathBuf>,
    #[serde(default)]
    pub keystore_password: Option<Secret>,
    #[serde(default)]
    pub keystore_password_file: Option<PathBuf>,
    #[serde(default)]
    pub keystore_password_env: Option<String>,
    #[serde(default)]
    pub keystore_type: Option<String>,
    #[serde(default)]
    pub keystore_alias: Option<String>,
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default)]
    pub truststore: Option<PathBuf>,
    #[serde(default)]
    pub truststore_password: Option<Secret>,
    #[serde(default)]
    pub truststore_password_file: Option<PathBuf>,
    #[serde(default)]
    pub truststore_password_env: Option<String>,
    #[serde(default)]
    pub truststore_type: Option<String>,
    #[serde(default)]
    pub outbound_keystore: Option<PathBuf>,
    #[serde(default)]
    pub outbound_keystore_password: Option<Secret>,
    #[serde(default)]
    pub outbound_keystore_password_file: Option<PathBuf>,
    #[serde(default)]
    pub outbound_keystore_password_env: Option<String>,
    #[serde(default)]
    pub outbound_keystore_type: Option<String>,
    #[serde(default)]
    pub outbound_keystore_alias: Option<String>,
    #[serde(default)]
    pub accept_v1_certificates: Option<bool>,
    #[serde(default)]
    pub protocols: Option<Vec<String>>,
    #[serde(default)]
    pub cipher_suites: Option<Vec<String>>,
    #[serde(default)]
    pub require_client_auth: Option<ClientAuth>,
    #[serde(default)]
    pub crl: Option<Vec<PathBuf>>,
    #[serde(default)]
    pub crl_expired: Option<CrlExpired>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileInbound {
    /// The `listener` metric label and log field; see `ListenerName`.
    #[serde(default)]
    pub name: Option<String>,
    pub listen: String,
    pub forward: String,
    #[serde(default)]
    pub require_endpoint_verification: bool,
    #[serde(default)]
    pub allow: Option<FileAllow>,
    #[serde(default)]
    pub mode: Option<Mode>,
    #[serde(default)]
    pub allow_non_loopback_plaintext: bool,
    #[serde(default)]
    pub tls: Option<FileListenerTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOutbound {
    /// The `listener` metric label and log field; see `ListenerName`.
    #[serde(default)]
    pub name: Option<String>,
    pub listen: String,
    #[serde(default)]
    pub upstream: Option<String>,
    #[serde(default)]
    pub transparent: bool,
    #[serde(default = "cassandra_tls_port")]
    pub tls_port: u16,
    #[serde(default)]
    pub require_endpoint_verification: bool,
    #[serde(default)]
    pub allow: Option<FileAllow>,
    #[serde(default)]
    pub allow_non_loopback_plaintext: bool,
    #[serde(default)]
    pub mode: Option<Mode>,
    #[serde(default)]
    pub plaintext_fallback: Option<String>,
    /// `source`: the local IP outgoing connections are bound to.
    #[serde(default, rename = "source")]
    pub bind_ip: Option<String>,
    #[serde(default)]
    pub tls: Option<FileListenerTls>,
}

/// `allow = { ou = [...], cn = [...], dns = [...], ip = [...], uri = [...] }`: a peer is accepted when any
/// listed value matches its certificate.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAllow {
    #[serde(default)]
    pub ou: Vec<String>,
    #[serde(default)]
    pub cn: Vec<String>,
    #[serde(default)]
    pub dns: Vec<String>,
    #[serde(default)]
    pub ip: Vec<String>,
    #[serde(default)]
    pub uri: Vec<String>,
}

/// `[limits]`; a missing key takes its default from [`Limits::default`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileLimits {
    #[serde(deserialize_with = "duration")]
    pub handshake_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub close_linger: Duration,
    pub max_connections: usize,
    pub max_pending_handshakes: usize,
    pub max_pending_per_source: usize,
    /// 0: the system's `net.core.somaxconn`.
    pub listen_backlog: u32,
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
}

impl Default for FileLimits {
    fn default() -> Self {
        let l = Limits::default();
        Self {
            handshake_timeout: l.handshake_timeout,
            connect_timeout: l.connect_timeout,
            idle_timeout: l.idle_timeout.unwrap_or_default(),
            close_linger: l.close_linger,
            max_connections: l.max_connections,
            max_pending_handshakes: l.max_pending_handshakes,
            max_pending_per_source: l.max_pending_per_source,
            listen_backlog: l.listen_backlog.unwrap_or(0),
            shutdown_grace: l.shutdown_grace,
        }
    }
}

/// `outbound.tls_port`: Cassandra's `ssl_storage_port`.
fn cassandra_tls_port() -> u16 {
    7001
}

/// `tls.reload_interval`.
fn default_reload_interval() -> Duration {
    Duration::from_secs(60)
}

/// A human duration ("10s", "500ms", "1m 30s"). Written here rather than with humantime-serde, whose
/// error drops humantime's reason (unknown unit, missing unit).
fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {s:?}: {e}; write e.g. \"10s\", \"500ms\" or \"1m 30s\""
        ))
    })
}
