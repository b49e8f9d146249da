//! Outbound: accept the local node's plaintext connection, dial the peer's sidecar, complete mutual TLS
//! (our identity as client certificate, the peer verified by `ServerVerifier`), then relay.
//!
//! Per connection: admission (a handshake slot, [`super::admission`]) -> connect `upstream` under
//! `connect_timeout` -> handshake under `handshake_timeout` -> an established slot -> relay. The local
//! node's bytes wait in the kernel until the peer is verified; if it cannot be, the local connection is
//! closed and the node retries as it would for a dead peer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};

use super::admission::{self, Admission, Pending};
use super::{RateLimit, Refusal, RefusalKey, suppressed_note};
use crate::config::{Limits, Mode, Outbound, Target, TlsSettings};
use crate::metrics::{self, ActiveConnection, Direction, Reason};
use crate::relay::{self, Offload, RelayLimits};
use crate::tls::suites::{iana_name, protocol_name};
use crate::tls::verify::PeerPolicy;

/// How long a peer found without TLS is reached in plaintext before TLS is tried again.
const FALLBACK_MEMORY: Duration = Duration::from_secs(30);

/// What a reload may change: TLS material, peer policy, mode.
struct OutboundTls {
    config: Arc<ClientConfig>,
    mode: Mode,
    plaintext_fallback: Option<SocketAddr>,
    source: Option<std::net::IpAddr>,
}

impl OutboundTls {
    fn build(cfg: &Outbound, tls: &TlsSettings) -> Self {
        let policy = Arc::new(PeerPolicy {
            allow: cfg.allow.clone(),
        });
        Self {
            config: crate::tls::client_config(
                tls,
                crate::tls::provider_for(tls),
                policy,
                cfg.require_endpoint_verification,
            ),
            mode: cfg.mode,
            plaintext_fallback: cfg.plaintext_fallback,
            source: cfg.source,
        }
    }
}

/// Lets a reload swap the TLS material and peer policy of new outbound connections.
#[derive(Clone)]
pub struct OutboundHandle(Arc<Shared>);

impl OutboundHandle {
    pub fn apply(&self, cfg: &Outbound, tls: &TlsSettings) {
        self.0.state.store(Arc::new(OutboundTls::build(cfg, tls)));
    }

    pub fn listen(&self) -> SocketAddr {
        self.0.listen
    }
}

/// Where this connection goes: the fixed upstream, or the redirected connection's original destination
/// with the TLS port.
/// Where a connection goes: the peer's TLS address, and its plaintext address for permissive mode.
struct Route {
    tls: SocketAddr,
    plain: Option<SocketAddr>,
}

fn destination(
    local: &TcpStream,
    s: &Shared,
    fallback: Option<SocketAddr>,
) -> Result<Route, String> {
    let tls_port = match s.target {
        Target::Fixed(upstream) => {
            return Ok(Route {
                tls: upstream,
                plain: fallback,
            });
        }
        Target::Transparent { tls_port } => tls_port,
    };
    let sock = socket2::SockRef::from(local);
    let original = if s.listen.is_ipv4() {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    }
    .ok()
    .and_then(|a| a.as_socket())
    .map(|a| SocketAddr::new(crate::tls::verify::canonical_ip(a.ip()), a.port()));
    let here = local.local_addr().map_err(|e| e.to_string())?;
    match original {
        // Without a NAT entry the "original" destination is this socket itself.
        None => Err(format!(
            "it was not redirected (no original destination); Cassandra's connections to peers' \
             storage port must reach {} through the rules `ringseal rules` prints",
            s.listen
        )),
        Some(dst) if dst == here || dst == s.listen => Err(format!(
            "it was not redirected (its original destination is this listener, {dst}); connect to a \
             peer's storage port and let the rules redirect it"
        )),
        Some(dst) if dst.port() == tls_port => Err(format!(
            "redirect loop: its original destination {dst} is already a TLS port ({tls_port}); the \
             rules must redirect only the storage port and exclude ringseal's own connections"
        )),
        Some(dst) => Ok(Route {
            tls: SocketAddr::new(dst.ip(), tls_port),
            plain: Some(dst),
        }),
    }
}

/// A bound outbound listener.
pub struct OutboundListener {
    listener: TcpListener,
    shared: Arc<Shared>,
}

struct Shared {
    listen: SocketAddr,
    target: Target,
    /// Swapped whole by a reload; each connection takes the current one.
    state: ArcSwap<OutboundTls>,
    /// Permissive mode: peers found without TLS, and when; TLS is tried again after `FALLBACK_MEMORY`.
    plaintext_peers: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, Instant>>,
    limits: Limits,
    refusals: RateLimit<RefusalKey>,
    accept_log: RateLimit<&'static str>,
    /// This listener's budgets (no per-source cap: every connection comes from the local node).
    admission: Arc<Admission>,
    /// Fixed at start.
    offload: Offload,
}

impl OutboundListener {
    pub async fn bind(
        cfg: &Outbound,
        tls: &TlsSettings,
        limits: &Limits,
        offload: Offload,
    ) -> std::io::Result<Self> {
        let listener = super::bind(cfg.listen, limits.backlog())?;
        let listen = listener.local_addr()?;
        Ok(Self {
            listener,
            shared: Arc::new(Shared {
                listen,
                target: cfg.target,
                state: ArcSwap::from_pointee(OutboundTls::build(cfg, tls)),
                plaintext_peers: Default::default(),
                limits: limits.clone(),
                refusals: RateLimit::new(Duration::from_secs(60)),
                accept_log: RateLimit::new(Duration::from_secs(10)),
                admission: Arc::new(Admission::new(Direction::Outbound, listen, limits, false)),
                offload,
            }),
        })
    }

    pub fn handle(&self) -> OutboundHandle {
        OutboundHandle(self.shared.clone())
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.shared.listen
    }

    pub fn log_start(&self, cfg: &Outbound, tls: &TlsSettings) {
        let protocols: Vec<_> = tls
            .versions
            .iter()
            .map(|v| protocol_name(v.version))
            .collect();
        tracing::info!(
            "starting outbound listener on {} (plaintext from the local node) connecting with mutual TLS \
             to {} (protocols {}; endpoint verification {}; allow {})",
            self.shared.listen,
            self.shared.target,
            protocols.join(","),
            if cfg.require_endpoint_verification {
                "on"
            } else {
                "off"
            },
            cfg.allow,
        );
    }

    pub async fn serve(self, life: super::Lifecycle) {
        super::serve(
            &self.listener,
            life,
            &self.shared.admission,
            &self.shared.accept_log,
            self.shared.clone(),
            |stream, local, shared, pending| async move {
                handle(stream, local, &shared, pending).await
            },
        )
        .await;
    }
}

async fn handle(local: TcpStream, from: SocketAddr, s: &Shared, pending: Pending) {
    let started = Instant::now();
    let _ = local.set_nodelay(true);
    let state = s.state.load_full();
    let route = match destination(&local, s, state.plaintext_fallback) {
        Ok(route) => route,
        Err(message) => {
            if let Some(n) = s.refusals.check((Reason::Other, from.ip())) {
                tracing::warn!(
                    listen = %s.listen,
                    "refused local connection from {from}: {message}{}",
                    suppressed_note(n)
                );
            }
            return;
        }
    };
    let peer = route.tls;
    let permissive_plain = route.plain.filter(|_| state.mode == Mode::Permissive);
    // A peer known to have no TLS yet goes straight to plaintext. If its plaintext port refuses, it
    // has most likely moved to strict: TLS is tried at once instead of waiting out the memory (success
    // forgets it and logs the move).
    if let Some(plain) = permissive_plain
        && s.recently_plaintext(peer.ip())
        && let Ok(remote) = connect_plain(plain, s).await
    {
        return relay_plain(local, from, plain, remote, s, pending).await;
    }
    let (tls, conn) = match dial(peer, &state, s).await {
        Ok(ok) => ok,
        Err((refusal, no_tls_there)) => {
            if let Some(plain) = permissive_plain
                && no_tls_there
            {
                if s.remember_plaintext(peer.ip()) {
                    tracing::warn!(
                        peer = %peer,
                        "peer {} has no TLS on {peer} yet ({}); mode = permissive: its connections go \
                         in plaintext to {plain}, TLS is tried again every {}s",
                        peer.ip(),
                        refusal.message,
                        FALLBACK_MEMORY.as_secs()
                    );
                }
                return match connect_plain(plain, s).await {
                    Ok(remote) => relay_plain(local, from, plain, remote, s, pending).await,
                    Err(why) => {
                        if let Some(n) = s.refusals.check((Reason::Io, plain.ip())) {
                            tracing::warn!(
                                peer = %plain,
                                "plaintext fallback to {plain} failed: {why}{}",
                                suppressed_note(n)
                            );
                        }
                    }
                };
            }
            metrics::handshake_refused(Direction::Outbound, refusal.reason, started.elapsed());
            if let Some(n) = s.refusals.check((refusal.reason, peer.ip())) {
                tracing::warn!(
                    peer = %peer,
                    listen = %s.listen,
                    reason = refusal.reason.as_str(),
                    "outbound to {peer} failed: {}; closing the local connection from {from}{}",
                    refusal.message,
                    suppressed_note(n)
                );
            }
            return;
        }
    };
    if s.forget_plaintext(peer.ip()) {
        tracing::info!(peer = %peer, "peer {} now accepts TLS; its connections are encrypted", peer.ip());
    }
    let protocol = conn.protocol_version().map_or("unknown", protocol_name);
    let suite = conn.negotiated_cipher_suite().map_or("unknown", iana_name);
    metrics::handshake_ok(Direction::Outbound, protocol, suite, started.elapsed());
    let Some(_slot) = pending.establish(from) else {
        return admission::reset(&local);
    };
    tracing::debug!(peer = %peer, "outbound {from} -> {peer} established ({protocol}, {suite})");

    let relay = relay::Relay::start(tls, conn, local, s.offload).await;
    let active = ActiveConnection::start(Direction::Outbound, true, relay.path().label());
    let limits = RelayLimits {
        idle: s.limits.idle_timeout,
        linger: s.limits.close_linger,
    };
    let outcome = relay.run(limits, active.bytes.clone()).await;
    super::report_close(Direction::Outbound, peer, from, &outcome);
}

/// Connects and completes mutual TLS. On failure, the refusal and whether the peer simply has no TLS
/// endpoint (nothing listens on the TLS port, or what answers is not TLS): only then may permissive
/// mode fall back to plaintext. A certificate problem never does: that would hand plaintext to
/// whoever fails verification.
async fn dial(
    peer: SocketAddr,
    state: &OutboundTls,
    s: &Shared,
) -> Result<(TcpStream, rustls::Connection), (Refusal, bool)> {
    let connect = connect_from(state.source, peer);
    let tcp = match tokio::time::timeout(s.limits.connect_timeout, connect).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            let refused = e.kind() == std::io::ErrorKind::ConnectionRefused;
            return Err((
                Refusal::new(Reason::Io, format!("cannot connect: {e}")),
                refused,
            ));
        }
        Err(_) => {
            return Err((
                Refusal::new(
                    Reason::Timeout,
                    format!(
                        "no answer within limits.connect_timeout ({})",
                        humantime::format_duration(s.limits.connect_timeout)
                    ),
                ),
                false,
            ));
        }
    };
    let _ = tcp.set_nodelay(true);
    let name = ServerName::IpAddress(peer.ip().into());
    let mut conn = match rustls::ClientConnection::new(state.config.clone(), name) {
        Ok(c) => rustls::Connection::Client(c),
        Err(e) => {
            let why = format!("cannot start the TLS session: {e}");
            return Err((Refusal::new(Reason::Io, why), false));
        }
    };
    let handshake = relay::handshake(&tcp, &mut conn);
    match tokio::time::timeout(s.limits.handshake_timeout, handshake).await {
        Ok(Ok(())) => Ok((tcp, conn)),
        Ok(Err(e)) => {
            let not_tls = e.kind() == std::io::ErrorKind::UnexpectedEof
                || e.get_ref()
                    .and_then(|i| i.downcast_ref::<rustls::Error>())
                    .is_some_and(|t| matches!(t, rustls::Error::InvalidMessage(_)));
            Err((super::refusal_from_io(&e), not_tls))
        }
        Err(_) => Err((
            Refusal::new(
                Reason::Timeout,
                format!(
                    "handshake not completed within limits.handshake_timeout ({})",
                    humantime::format_duration(s.limits.handshake_timeout)
                ),
            ),
            false,
        )),
    }
}

/// Connects to `to`, from `source` when given.
async fn connect_from(
    source: Option<std::net::IpAddr>,
    to: SocketAddr,
) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(to).await;
    };
    let socket = if to.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(to).await
}

/// Permissive mode: connects the peer's plaintext storage port.
async fn connect_plain(to: SocketAddr, s: &Shared) -> Result<TcpStream, String> {
    let source = s.state.load().source;
    match tokio::time::timeout(s.limits.connect_timeout, connect_from(source, to)).await {
        Ok(Ok(r)) => {
            let _ = r.set_nodelay(true);
            Ok(r)
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within limits.connect_timeout".into()),
    }
}

/// Permissive mode: carries the local connection to the peer's plaintext storage port.
async fn relay_plain(
    local: TcpStream,
    from: SocketAddr,
    to: SocketAddr,
    remote: TcpStream,
    s: &Shared,
    pending: Pending,
) {
    let Some(_slot) = pending.establish(from) else {
        return admission::reset(&local);
    };
    let active = ActiveConnection::start(Direction::Outbound, false, relay::Path::Splice.label());
    let limits = RelayLimits {
        idle: s.limits.idle_timeout,
        linger: s.limits.close_linger,
    };
    // The peer is the remote end: its bytes count as from_peer, as on the TLS path.
    let outcome = relay::plain(remote, local, limits, active.bytes.clone()).await;
    super::report_close(Direction::Outbound, to, from, &outcome);
}

impl Shared {
    fn recently_plaintext(&self, ip: std::net::IpAddr) -> bool {
        let peers = self
            .plaintext_peers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        peers
            .get(&ip)
            .is_some_and(|t| t.elapsed() < FALLBACK_MEMORY)
    }

    /// True when the peer was not known as plaintext-only before (log once per peer and period).
    fn remember_plaintext(&self, ip: std::net::IpAddr) -> bool {
        let mut peers = self
            .plaintext_peers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if peers.len() >= 4096 {
            peers.retain(|_, t| t.elapsed() < FALLBACK_MEMORY);
        }
        peers.insert(ip, Instant::now()).is_none()
    }

    fn forget_plaintext(&self, ip: std::net::IpAddr) -> bool {
        let mut peers = self
            .plaintext_peers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        peers.remove(&ip).is_some()
    }
}
