//! The TCP congestion control of the loopback legs (`[tcp] loopback_congestion_control`).
//!
//! A pacing algorithm (BBR) arms a kernel timer for every burst a sender may send. Between data centres
//! that is its point; on loopback, where the storage port is on the same host, it only costs CPU (a
//! timer interrupt per burst, on both legs of every relayed connection). So by default the legs whose
//! peer is on this host (the storage-port leg of inbound listeners, the node's plaintext leg of outbound
//! listeners) get a non-pacing algorithm when the host's default paces; network (TLS) legs always keep
//! the host's default. The choice is made once, at start, against this network namespace's settings.

use std::fmt;
use std::net::SocketAddr;
use std::os::fd::AsFd;

/// Where Linux publishes the namespace's default algorithm, what is loaded, and what an unprivileged
/// process may set (`net.ipv4.tcp_*congestion_control`; they apply to IPv6 too).
pub const DEFAULT_PATH: &str = "/proc/sys/net/ipv4/tcp_congestion_control";
pub const AVAILABLE_PATH: &str = "/proc/sys/net/ipv4/tcp_available_congestion_control";
pub const ALLOWED_PATH: &str = "/proc/sys/net/ipv4/tcp_allowed_congestion_control";

/// The kernel's limit on an algorithm name, the terminating NUL included (`TCP_CA_NAME_MAX`).
const NAME_MAX: usize = 16;

/// `[tcp] loopback_congestion_control`, as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LoopbackCongestion {
    /// A non-pacing algorithm when the host's default paces (cubic if this process may set it, else
    /// reno, which every process may); the host's default otherwise.
    #[default]
    Auto,
    /// The host's default, whatever it is.
    Host,
    /// This algorithm (it must be loaded, and allowed or the process must have CAP_NET_ADMIN).
    Named(String),
}

impl fmt::Display for LoopbackCongestion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Host => f.write_str("host"),
            Self::Named(n) => f.write_str(n),
        }
    }
}

impl std::str::FromStr for LoopbackCongestion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "host" => Ok(Self::Host),
            n if (1..NAME_MAX).contains(&n.len())
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
            {
                Ok(Self::Named(n.to_owned()))
            }
            _ => Err(format!(
                "{s:?} is not \"auto\", \"host\" or a congestion control name (such as \"cubic\" or \
                 \"reno\": letters, digits, '_', at most {} characters)",
                NAME_MAX - 1
            )),
        }
    }
}

impl<'de> serde::Deserialize<'de> for LoopbackCongestion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Whether an algorithm paces every sender with a timer (the BBR family: bbr, bbr2, bbr3).
pub fn paces(name: &str) -> bool {
    name.starts_with("bbr")
}

/// The namespace's congestion control settings, read from `/proc/sys` (empty where unreadable).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostCongestion {
    pub default: String,
    pub available: Vec<String>,
    pub allowed: Vec<String>,
}

impl HostCongestion {
    pub fn read() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let words = |p: &str| read(p).split_whitespace().map(str::to_owned).collect();
        Self {
            default: read(DEFAULT_PATH).trim().to_owned(),
            available: words(AVAILABLE_PATH),
            allowed: words(ALLOWED_PATH),
        }
    }
}

/// The named algorithm cannot be set by this process.
#[derive(Debug, thiserror::Error)]
#[error(
    "tcp.loopback_congestion_control: this process cannot set \"{name}\" ({why}); the kernel has \
     [{available}] loaded (net.ipv4.tcp_available_congestion_control) and lets unprivileged \
     processes set [{allowed}] (net.ipv4.tcp_allowed_congestion_control): name one of those, load \
     the module (modprobe tcp_{name}), add it to the allowed list or grant CAP_NET_ADMIN, or use \
     \"auto\" or \"host\"",
    available = .host.available.join(" "),
    allowed = .host.allowed.join(" ")
)]
pub struct CongestionError {
    pub name: String,
    why: std::io::Error,
    host: HostCongestion,
}

/// What the loopback legs use, decided at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loopback {
    /// Set on every loopback leg; `None`: the legs keep the host's default.
    algorithm: Option<String>,
    host_default: String,
    setting: LoopbackCongestion,
}

impl Loopback {
    /// Decides against this network namespace: reads its default and tries the candidate on a fresh
    /// socket (whether this process may set an algorithm depends on the allowed list, its
    /// capabilities and what is loaded; trying is the only sure test).
    pub fn resolve(setting: &LoopbackCongestion) -> Result<Self, CongestionError> {
        let host = HostCongestion::read();
        let algorithm = match setting {
            LoopbackCongestion::Host => None,
            LoopbackCongestion::Auto if !paces(&host.default) => None,
            LoopbackCongestion::Auto => ["cubic", "reno"]
                .into_iter()
                .find(|c| try_set(c).is_ok())
                .map(str::to_owned),
            LoopbackCongestion::Named(name) => match try_set(name) {
                Ok(()) => Some(name.clone()),
                Err(why) => {
                    return Err(CongestionError {
                        name: name.clone(),
                        why,
                        host,
                    });
                }
            },
        };
        Ok(Self {
            algorithm,
            host_default: host.default,
            setting: setting.clone(),
        })
    }

    /// The legs keep the host's default (in-memory configs that never resolved).
    pub fn host() -> Self {
        Self {
            algorithm: None,
            host_default: HostCongestion::read().default,
            setting: LoopbackCongestion::Host,
        }
    }

    /// The algorithm loopback legs get; `None`: the host's default.
    pub fn algorithm(&self) -> Option<&str> {
        self.algorithm.as_deref()
    }

    /// The algorithm loopback legs end up with, set or inherited.
    pub fn effective(&self) -> &str {
        self.algorithm.as_deref().unwrap_or(&self.host_default)
    }

    /// Sets the algorithm on a connected or connecting socket when it has one.
    pub fn apply(&self, sock: &impl AsFd) {
        if let Some(name) = &self.algorithm
            && let Err(e) = socket2::SockRef::from(sock).set_tcp_congestion(name.as_bytes())
        {
            // Resolve proved it settable; a socket refusing it is not worth a connection.
            tracing::debug!("cannot set TCP congestion control {name} on a loopback leg: {e}");
        }
    }

    /// Sets the algorithm on an established socket whose two ends are on this host: a loopback
    /// address at either end (redirected connections keep the node's own address as their source), or
    /// the same address at both.
    pub fn apply_if_local(&self, sock: &impl AsFd, local: SocketAddr, peer: SocketAddr) {
        if self.algorithm.is_some() && is_local_leg(local, peer) {
            self.apply(sock);
        }
    }
}

/// Whether a connection between `local` and `peer` never leaves this host.
pub fn is_local_leg(local: SocketAddr, peer: SocketAddr) -> bool {
    let canon = |a: SocketAddr| a.ip().to_canonical();
    canon(local).is_loopback() || canon(peer).is_loopback() || canon(local) == canon(peer)
}

impl fmt::Display for Loopback {
    /// "cubic (host default bbr paces)": what the start-up log and `ringseal check` say.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host_default.is_empty() {
            "unknown"
        } else {
            &self.host_default
        };
        match (&self.setting, &self.algorithm) {
            (LoopbackCongestion::Auto, Some(a)) => write!(f, "{a} (host default {host} paces)"),
            (LoopbackCongestion::Auto, None) if paces(host) => write!(
                f,
                "{host} (host default paces, but this process may set neither cubic nor reno)"
            ),
            (LoopbackCongestion::Auto, None) => {
                write!(f, "{host} (host default, does not pace)")
            }
            (LoopbackCongestion::Host, _) => {
                write!(
                    f,
                    "{host} (host default; loopback_congestion_control = \"host\")"
                )
            }
            (LoopbackCongestion::Named(n), _) => {
                write!(f, "{n} (configured; host default {host})")
            }
        }
    }
}

/// Sets `name` on a fresh, unconnected TCP socket: what the kernel would say on a real leg.
fn try_set(name: &str) -> std::io::Result<()> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.set_tcp_congestion(name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_names() {
        let parse = |s: &str| {
            toml::from_str::<std::collections::BTreeMap<String, LoopbackCongestion>>(&format!(
                "k = {s:?}"
            ))
            .map(|m| m["k"].clone())
        };
        assert_eq!(parse("auto").unwrap(), LoopbackCongestion::Auto);
        assert_eq!(parse("host").unwrap(), LoopbackCongestion::Host);
        assert_eq!(
            parse("cubic").unwrap(),
            LoopbackCongestion::Named("cubic".into())
        );
        for bad in ["", "a b", "sixteen-chars-xx", "cubic\n"] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("is not \"auto\", \"host\""), "{bad:?}: {e}");
        }
    }

    #[test]
    fn local_legs() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(is_local_leg(a("127.0.0.1:7000"), a("127.0.0.1:5000")));
        assert!(is_local_leg(a("127.0.0.1:7002"), a("10.0.0.5:5000")));
        assert!(is_local_leg(a("10.0.0.5:7000"), a("10.0.0.5:5000")));
        assert!(is_local_leg(
            a("[::ffff:127.0.0.1]:1"),
            a("[::ffff:10.0.0.6]:2")
        ));
        assert!(!is_local_leg(a("10.0.0.5:7001"), a("10.0.0.6:5000")));
    }

    #[test]
    fn pacing_family() {
        assert!(paces("bbr") && paces("bbr2"));
        assert!(!paces("cubic") && !paces("reno") && !paces(""));
    }

    #[test]
    fn refused_names_say_what_is_allowed() {
        let e = Loopback::resolve(&LoopbackCongestion::Named("nosuchcc".into())).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("tcp.loopback_congestion_control"), "{msg}");
        assert!(msg.contains("tcp_available_congestion_control"), "{msg}");
    }
}
