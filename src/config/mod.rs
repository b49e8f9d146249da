//! Configuration: the TOML file as written by operators ([`file`] structs, `deny_unknown_fields`) and the
//! validated runtime [`Config`] it converts into exactly once (`validate`). Everything downstream takes
//! the runtime types and never re-checks: addresses are parsed, durations are [`Duration`]s, cipher suite
//! names are rustls suites. The config names files, secrets and settings but reads no key material:
//! [`TlsSettings::load`] does that, so `ringseal rules` works where the key is unreadable.

pub mod cassandra;
mod describe;
mod error;
pub(crate) mod file;
mod overrides;
mod sources;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::tls::allow::AllowList;
use crate::tls::settings::TlsSettings;

pub use crate::secret::Secret;
pub use describe::describe;
pub use error::{ConfigError, Problem};
pub use file::FileConfig;
pub use overrides::Override;
pub(crate) use sources::visible;
pub use sources::{Loaded, SourceReadError, Sources};

/// The most connections `limits.max_connections` allows: far above any node's need, far below what
/// the runtime's semaphore can count.
pub const MAX_CONNECTIONS: usize = 1_000_000;
/// The longest deadline or interval accepted: longer ones are mistakes, and a deadline past what
/// `Instant` can represent would panic.
pub const MAX_DURATION: Duration = Duration::from_secs(31_557_600); // humantime's "1year"
/// Checking files for changes more often costs CPU for nothing.
pub const MIN_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// The validated runtime configuration. `Tls` is what `[tls]` is at this stage: the [`TlsSettings`]
/// the file describes, or the loaded material (`tls::LoadedTls`) a sidecar runs with.
#[derive(Debug, Clone)]
pub struct Config<Tls = TlsSettings> {
    /// `[tls]`: the default policy; each listener carries its own resolved copy (`Inbound::tls`).
    pub tls: Tls,
    pub inbound: Vec<Inbound<Tls>>,
    pub outbound: Vec<Outbound<Tls>>,
    pub limits: Limits,
    /// `offload`: kTLS after the handshake (`auto`), never (`off`), or for every connection (`require`,
    /// checked against the kernel when the material is loaded).
    pub offload: Offload,
    /// `[metrics]`: where to serve `/metrics`, `/healthz` and `/readyz`; `None`: not served.
    pub metrics: Option<MetricsSettings>,
    /// The files this config was read from: what a reload reads again. `None` for in-memory configs.
    pub sources: Option<Sources>,
    /// `cluster_name` (Cassandra's): `check` warns about certificates whose OU differs.
    pub cluster_name: Option<String>,
    /// `[permissive]`: the outbound side's memory of peers that have TLS. Fixed at start.
    pub permissive: Permissive,
    /// `[logging]`: what is logged besides warnings and errors. Fixed at start.
    pub logging: Logging,
    /// `[tcp]`: the congestion control of the loopback legs. Decided at start, fixed then.
    pub tcp: Tcp,
    /// `[handover]`: the Unix socket of the process hand-over. Fixed at start.
    pub handover: Handover,
}

impl<Tls> Config<Tls> {
    /// A config with no listeners yet and default limits, around `tls`.
    pub fn new(tls: Tls) -> Self {
        Self {
            tls,
            inbound: Vec::new(),
            outbound: Vec::new(),
            limits: Limits::default(),
            offload: Offload::default(),
            metrics: None,
            sources: None,
            cluster_name: None,
            permissive: Permissive::default(),
            logging: Logging::default(),
            tcp: Tcp::default(),
            handover: Handover::default(),
        }
    }

    /// The same config with `[tls]` and every listener's policy converted (to their loaded form) by
    /// `f`, which is told whose policy it converts; the first error stops the conversion.
    pub fn try_map_tls<T, E>(
        self,
        mut f: impl FnMut(Policy<'_>, Tls) -> Result<T, E>,
    ) -> Result<Config<T>, E> {
        let tls = f(Policy::Default, self.tls)?;
        let inbound = self
            .inbound
            .into_iter()
            .map(|l| {
                let (l, t) = l.split_tls();
                let t = f(Policy::Listener(&l.name), t)?;
                Ok(l.with_tls(t))
            })
            .collect::<Result<_, E>>()?;
        let outbound = self
            .outbound
            .into_iter()
            .map(|o| {
                let (o, t) = o.split_tls();
                let t = f(Policy::Listener(&o.name), t)?;
                Ok(o.with_tls(t))
            })
            .collect::<Result<_, E>>()?;
        Ok(Config {
            tls,
            inbound,
            outbound,
            limits: self.limits,
            offload: self.offload,
            metrics: self.metrics,
            sources: self.sources,
            cluster_name: self.cluster_name,
            permissive: self.permissive,
            logging: self.logging,
            tcp: self.tcp,
            handover: self.handover,
        })
    }
}

/// `offload`: whether TLS records are encrypted by the kernel (kTLS) after the handshake.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Offload {
    /// kTLS where the kernel can take the connection's cipher, the user-space path otherwise.
    #[default]
    Auto,
    /// Always the user-space path.
    Off,
    /// kTLS for every connection: start-up fails when the kernel cannot take every configured suite,
    /// and a connection that cannot be offloaded is closed instead of relayed in user space.
    Require,
}

impl std::fmt::Display for Offload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Off => "off",
            Self::Require => "require",
        })
    }
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

/// `[logging]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logging {
    /// One info line when a relayed connection ends (who, how much, how it ended); `false`: routine
    /// ends are logged at debug, abnormal ones still at info.
    pub connections: bool,
}

impl Default for Logging {
    fn default() -> Self {
        Self { connections: true }
    }
}

/// `[tcp]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tcp {
    /// Which congestion control the legs to and from this host's node use (`crate::tcp::Loopback`
    /// resolves it against the kernel).
    pub loopback_congestion_control: crate::tcp::LoopbackCongestion,
}

/// `[handover]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Handover {
    /// The hand-over socket: `[handover] socket`, else `$RUNTIME_DIRECTORY/handover.sock` when systemd
    /// set `RuntimeDirectory=`; `None`: no hand-over (a restart refuses connections while no process
    /// listens, as before).
    pub socket: Option<PathBuf>,
}

impl Handover {
    /// The file name under `$RUNTIME_DIRECTORY` when `[handover] socket` is not set.
    pub const DEFAULT_NAME: &str = "handover.sock";
    /// `sun_path` holds 108 bytes with its NUL; the serving side binds a temporary name (the path plus
    /// `.PID.tmp`, at most 17 more bytes) before renaming it over the path.
    pub const MAX_PATH: usize = 107 - 17;
}

/// `[metrics]`.
#[derive(Debug, Clone)]
pub struct MetricsSettings {
    pub listen: SocketAddr,
}

/// Whose TLS policy [`Config::try_map_tls`] is converting.
#[derive(Debug, Clone, Copy)]
pub enum Policy<'a> {
    /// `[tls]`.
    Default,
    /// A listener's own (its `[inbound.tls]` merged over `[tls]`, or `[tls]` itself).
    Listener(&'a ListenerName),
}

/// A listener's `name`: the `listener` label of its metrics and the field of its log lines. Bounded
/// (`[a-z0-9_-]{1,32}`, unique per process, never taken from the wire). Default: `internode` for the
/// first `[[inbound]]`, `outbound` for the first `[[outbound]]`, then `inbound-2`, `outbound-2`, ...
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerName(std::sync::Arc<str>);

impl ListenerName {
    /// The longest name: a metric label value, not a description.
    pub const MAX_LEN: usize = 32;

    /// A name as written in the config, or why it is refused.
    pub fn parse(s: &str) -> Result<Self, Problem> {
        let ok = (1..=Self::MAX_LEN).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(s.into()))
        } else {
            Err(Problem::ListenerName(s.to_owned()))
        }
    }

    /// The default name of the `index`th `[[inbound]]` (`inbound = true`) or `[[outbound]]`.
    pub fn default_for(inbound: bool, index: usize) -> Self {
        Self(
            match (inbound, index) {
                (true, 0) => "internode".to_owned(),
                (false, 0) => "outbound".to_owned(),
                (true, i) => format!("inbound-{}", i + 1),
                (false, i) => format!("outbound-{}", i + 1),
            }
            .into(),
        )
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a shared string (a metric label value without a copy).
    pub fn shared(&self) -> std::sync::Arc<str> {
        self.0.clone()
    }
}

impl std::fmt::Display for ListenerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One `[[inbound]]` listener: mutual TLS in, plaintext out to the local storage port. `tls` is its
/// policy: settings before loading, loaded material after.
#[derive(Debug, Clone)]
pub struct Inbound<Tls = TlsSettings> {
    /// `name`, or its default.
    pub name: ListenerName,
    /// `[inbound.tls]` merged over `[tls]` (or `[tls]` itself when the listener has none).
    pub tls: Tls,
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
pub struct Outbound<Tls = TlsSettings> {
    /// `name`, or its default.
    pub name: ListenerName,
    /// `[outbound.tls]` merged over `[tls]` (or `[tls]` itself when the listener has none).
    pub tls: Tls,
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
    /// `source`: the local address outgoing connections come from (a multi-homed node's listen_address,
    /// so that peers with endpoint verification see the IP its certificate names). `None`: the kernel's
    /// choice.
    pub bind_ip: Option<std::net::IpAddr>,
}

/// Moves a listener's policy out and back in (another type), keeping the rest.
macro_rules! tls_swap {
    ($t:ident { $($field:ident),* }) => {
        impl<Tls> $t<Tls> {
            /// The listener with `tls` instead of its policy.
            pub fn with_tls<T>(self, tls: T) -> $t<T> {
                $t { name: self.name, tls, $($field: self.$field),* }
            }

            /// The listener without its policy (`()` in its place), and the policy.
            pub fn split_tls(self) -> ($t<()>, Tls) {
                let tls = self.tls;
                ($t { name: self.name, tls: (), $($field: self.$field),* }, tls)
            }
        }
    };
}
tls_swap!(Inbound {
    listen,
    forward,
    require_endpoint_verification,
    allow,
    mode
});
tls_swap!(Outbound {
    listen,
    target,
    require_endpoint_verification,
    allow,
    mode,
    plaintext_fallback,
    bind_ip
});

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
/// its own budgets (see `listener::admission`).
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

#[cfg(test)]
mod tests;
