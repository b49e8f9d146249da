//! Outbound: accept the local node's plaintext connection, dial the peer's sidecar, complete mutual TLS
//! (our identity as client certificate, the peer verified by `ServerVerifier`), then relay.
//!
//! Per connection: admission (a handshake slot, [`super::admission`]) -> connect `upstream` under
//! `connect_timeout` -> handshake under `handshake_timeout` -> an established slot -> relay. The local
//! node's bytes wait in the kernel until the peer is verified; if it cannot be, the local connection is
//! closed and the node retries as it would for a dead peer.
//!
//! Permissive mode reaches a peer in plaintext only when it has no TLS endpoint (its TLS port refuses
//! the connection, or answers our ClientHello with bytes that are not a TLS record) and it has never
//! completed a verified handshake with this sidecar within `permissive.tls_peer_memory`
//! ([`super::tls_peers`]). Anything else, an EOF or reset after the ClientHello, a timeout, a TLS or
//! certificate error, is a refused handshake: an attacker on the path can make a peer unreachable,
//! but cannot make a peer that has TLS receive plaintext.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};

use super::admission::{self, Admission, Pending};
use super::status::ReloadError;
use super::tls_peers::TlsPeers;
use super::{Ended, RateLimit, Refusal, RefusalKey, Session, suppressed_note};
use crate::config::{Limits, Mode, Outbound, Target};
use crate::metrics::{self, ActiveConnection, Direction, FallbackReason, Reason};
use crate::relay::{self, Offload};
use crate::tls::LoadedTls;
use crate::tls::suites::protocol_name;
use crate::tls::verify::PeerPolicy;

/// How long a peer found without TLS (and never verified) is reached in plaintext before TLS is tried
/// again.
const FALLBACK_MEMORY: Duration = Duration::from_secs(30);

/// What a reload may change: TLS material, peer policy, mode.
struct OutboundSnapshot {
    settings: LoadedTls,
    config: Arc<ClientConfig>,
    mode: Mode,
    plaintext_fallback: Option<SocketAddr>,
    source: Option<std::net::IpAddr>,
    /// What a connection verified with this snapshot depends on, for a hand-over to compare.
    print: crate::tls::PolicyPrint,
}

impl OutboundSnapshot {
    fn build(cfg: &Outbound<LoadedTls>) -> Self {
        let tls = &cfg.tls;
        let policy = Arc::new(PeerPolicy {
            allow: cfg.allow.clone(),
        });
        Self {
            settings: tls.clone(),
            config: crate::tls::client_config(
                tls,
                crate::tls::provider_for(tls),
                policy,
                cfg.require_endpoint_verification,
            ),
            mode: cfg.mode,
            plaintext_fallback: cfg.plaintext_fallback,
            source: cfg.bind_ip,
            print: tls.print(&format!(
                "allow {} endpoint verification {} mode {} fallback {:?}",
                cfg.allow, cfg.require_endpoint_verification, cfg.mode, cfg.plaintext_fallback
            )),
        }
    }
}

/// Lets a reload swap the TLS material and peer policy of new outbound connections.
#[derive(Clone)]
pub struct OutboundHandle(Arc<OutboundContext>);

impl OutboundHandle {
    /// Its metric labels and established connections now (a hand-over counts those that stay).
    pub fn established(&self) -> (metrics::Listener, usize) {
        (self.0.who.clone(), self.0.admission.established())
    }

    /// What connections verified now depend on (a hand-over compares it with the other process's).
    pub fn policy(&self) -> crate::tls::PolicyPrint {
        self.0.snapshot.load().print.clone()
    }

    /// What a connection adopted from an old process joins.
    pub fn joinable(&self) -> super::moves::Joinable {
        super::moves::Joinable {
            who: self.0.who.clone(),
            admission: self.0.admission.clone(),
            limits: super::relay_limits(&self.0.limits),
            log_connections: self.0.log_connections,
        }
    }

    pub fn apply(&self, cfg: &Outbound<LoadedTls>) {
        self.0
            .snapshot
            .store(Arc::new(OutboundSnapshot::build(cfg)));
        self.0.reload_error.set(None);
    }

    /// A reload could not load this listener's material: it keeps its current one.
    pub fn kept(&self, error: String) {
        self.0.reload_error.set(Some(error));
    }

    /// What `/status` shows of this listener, `outbound[index]`.
    pub fn status(&self, index: usize) -> super::status::ListenerStatus {
        let ctx = &self.0;
        super::status::ListenerStatus {
            name: ctx.who.name().to_owned(),
            key: format!("outbound[{index}]"),
            kind: "outbound",
            listen: ctx.listen,
            mode: ctx.snapshot.load().mode.to_string(),
            connections_active: ctx.admission.established(),
            handshakes_in_progress: ctx.admission.pending(),
            max_connections: ctx.admission.max_connections(),
            storage: None,
            target: Some(match ctx.target {
                Target::Fixed(a) => a.to_string(),
                Target::Transparent { tls_port } => format!("transparent:{tls_port}"),
            }),
            tls: super::status::ListenerTls::new(
                &ctx.snapshot.load().settings,
                ctx.reload_error.get(),
            ),
        }
    }
}

/// Where a connection goes: the peer's TLS address, and its plaintext address for permissive mode.
struct Route {
    tls: SocketAddr,
    plain: Option<SocketAddr>,
}

/// Why a local connection has no route: the listener is transparent and the connection did not come
/// through the redirect rules as they should be.
#[derive(Debug, thiserror::Error)]
enum RouteError {
    #[error("{0}")]
    LocalAddr(#[from] std::io::Error),
    #[error(
        "it was not redirected (no original destination); Cassandra's connections to peers' \
         storage port must reach {listen} through the rules `ringseal rules` prints"
    )]
    NoOriginalDestination { listen: SocketAddr },
    #[error(
        "it was not redirected (its original destination is this listener, {dst}); connect to a \
         peer's storage port and let the rules redirect it"
    )]
    ToThisListener { dst: SocketAddr },
    #[error(
        "redirect loop: its original destination {dst} is already a TLS port ({tls_port}); the \
         rules must redirect only the storage port and exclude ringseal's own connections"
    )]
    RedirectLoop { dst: SocketAddr, tls_port: u16 },
}

/// The fixed upstream (with `fallback` as its plaintext address), or the redirected connection's
/// original destination with the TLS port.
fn route(
    local: &TcpStream,
    ctx: &OutboundContext,
    fallback: Option<SocketAddr>,
) -> Result<Route, RouteError> {
    let tls_port = match ctx.target {
        Target::Fixed(upstream) => {
            return Ok(Route {
                tls: upstream,
                plain: fallback,
            });
        }
        Target::Transparent { tls_port } => tls_port,
    };
    let here = local.local_addr()?;
    let here = SocketAddr::new(crate::tls::verify::canonical_ip(here.ip()), here.port());
    match original_destination(local, here) {
        // Without a NAT entry the "original" destination is this socket itself.
        None => Err(RouteError::NoOriginalDestination { listen: ctx.listen }),
        Some(dst) if dst == here || dst == ctx.listen => Err(RouteError::ToThisListener { dst }),
        Some(dst) if dst.port() == tls_port => Err(RouteError::RedirectLoop { dst, tls_port }),
        Some(dst) => Ok(Route {
            tls: SocketAddr::new(dst.ip(), tls_port),
            plain: Some(dst),
        }),
    }
}

/// The destination the redirect rules' NAT entry recorded for `local` (whose local address is
/// `here`), with its IP canonical.
fn original_destination(local: &TcpStream, here: SocketAddr) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(local);
    // The connection's own family decides, not the listener's: an IPv4 connection accepted on a
    // dual-stack [::] listener has an IPv4 NAT entry (and an IPv4-mapped local address). `here` is
    // canonical, so an IPv4-mapped address is IPv4 by now.
    let original = if here.is_ipv4() {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    original
        .ok()
        .and_then(|a| a.as_socket())
        .map(|a| SocketAddr::new(crate::tls::verify::canonical_ip(a.ip()), a.port()))
}

/// A bound outbound listener.
pub struct OutboundListener {
    listener: TcpListener,
    ctx: Arc<OutboundContext>,
}

/// What every connection task of one outbound listener shares: its address and target, budgets, log
/// limits, the memories of peers with and without TLS, and the current [`OutboundSnapshot`].
struct OutboundContext {
    /// The `direction` and `listener` labels (the name is fixed at start).
    who: metrics::Listener,
    listen: SocketAddr,
    target: Target,
    /// Swapped whole by a reload; each connection takes the current one.
    snapshot: ArcSwap<OutboundSnapshot>,
    /// Permissive mode: peers found without TLS, when and why; TLS is tried again after
    /// `FALLBACK_MEMORY`.
    plaintext_peers:
        std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (Instant, FallbackReason)>>,
    /// Peers that completed a verified handshake: never sent plaintext. Shared by every outbound
    /// listener of the process.
    tls_peers: Arc<TlsPeers>,
    /// This listener's budgets (no per-source cap: every connection comes from the local node).
    admission: Arc<Admission>,
    fallback_log: RateLimit<(FallbackReason, std::net::IpAddr)>,
    limits: Limits,
    refusals: RateLimit<RefusalKey>,
    accept_log: RateLimit<&'static str>,
    /// Fixed at start.
    offload: Offload,
    /// `[logging] connections`: one info line per relayed connection when it ends. Fixed at start.
    log_connections: bool,
    /// The congestion control of the node's plaintext leg when it comes from this host. Fixed at
    /// start.
    loopback: Arc<crate::tcp::Loopback>,
    /// Why the last reload kept this listener on its previous material, for `/status`.
    reload_error: ReloadError,
    /// This process's movable connections (a hand-over asks them to release).
    moves: Arc<super::moves::Moves>,
}

impl OutboundListener {
    #[allow(clippy::too_many_arguments)]
    pub async fn bind(
        cfg: &Outbound<LoadedTls>,
        limits: &Limits,
        offload: Offload,
        tls_peers: Arc<TlsPeers>,
        log_connections: bool,
        loopback: Arc<crate::tcp::Loopback>,
        inherited: Option<std::os::fd::OwnedFd>,
        moves: Arc<super::moves::Moves>,
    ) -> std::io::Result<Self> {
        let listener = match inherited {
            Some(fd) => super::adopt(fd, cfg.listen)?,
            None => super::bind(cfg.listen, limits.backlog())?,
        };
        let listen = listener.local_addr()?;
        let who = metrics::Listener::new(Direction::Outbound, cfg.name.shared());
        Ok(Self {
            listener,
            ctx: Arc::new(OutboundContext {
                who: who.clone(),
                listen,
                target: cfg.target,
                snapshot: ArcSwap::from_pointee(OutboundSnapshot::build(cfg)),
                plaintext_peers: Default::default(),
                tls_peers,
                admission: Arc::new(Admission::new(who, listen, limits, false)),
                fallback_log: RateLimit::new(Duration::from_secs(60)),
                limits: limits.clone(),
                refusals: RateLimit::new(Duration::from_secs(60)),
                accept_log: RateLimit::new(Duration::from_secs(10)),
                offload,
                log_connections,
                loopback,
                reload_error: ReloadError::default(),
                moves,
            }),
        })
    }

    /// A duplicate of the listening socket's descriptor (the same socket), to hand over.
    pub fn dup_fd(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        self.listener.as_fd().try_clone_to_owned()
    }

    pub fn handle(&self) -> OutboundHandle {
        OutboundHandle(self.ctx.clone())
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.ctx.listen
    }

    pub fn log_start(&self, cfg: &Outbound<LoadedTls>) {
        let protocols: Vec<_> = cfg
            .tls
            .versions
            .iter()
            .map(|v| protocol_name(v.version))
            .collect();
        tracing::info!(
            listener = self.ctx.who.name(),
            "starting outbound listener on {} (plaintext from the local node) connecting with mutual TLS \
             to {} (protocols {}; endpoint verification {}; allow {})",
            self.ctx.listen,
            self.ctx.target,
            protocols.join(","),
            if cfg.require_endpoint_verification {
                "on"
            } else {
                "off"
            },
            cfg.allow,
        );
        if cfg.mode == Mode::Permissive {
            let peers = &self.ctx.tls_peers;
            tracing::info!(
                "outbound listener on {} is permissive: a peer whose TLS port refuses or does not speak \
                 TLS is reached in plaintext, unless it completed a verified TLS handshake with this \
                 sidecar within {} ({})",
                self.ctx.listen,
                humantime::format_duration(peers.memory()),
                peers.state_file().map_or_else(
                    || "remembered in memory only: a restart forgets; set permissive.state_file"
                        .into(),
                    |f| format!("remembered in {}", f.display())
                )
            );
        }
    }

    /// Accepts until `life.shutdown`; hands the listener back (a hand-over may resume it).
    pub async fn serve(self, life: super::Lifecycle) -> Self {
        super::serve(
            &self.listener,
            life,
            &self.ctx.admission,
            &self.ctx.accept_log,
            self.ctx.clone(),
            |stream, local, ctx, pending| async move {
                serve_local_connection(stream, local, &ctx, pending).await
            },
        )
        .await;
        self
    }
}

/// One local connection: route, dial the peer (or its plaintext port in permissive mode), relay.
async fn serve_local_connection(
    local: TcpStream,
    from: SocketAddr,
    ctx: &OutboundContext,
    pending: Pending,
) {
    let started = Instant::now();
    let _ = local.set_nodelay(true);
    if ctx.loopback.algorithm().is_some()
        && let Ok(addr) = local.local_addr()
    {
        ctx.loopback.apply_if_local(&local, addr, from);
    }
    let snapshot = ctx.snapshot.load_full();
    let route = match route(&local, ctx, snapshot.plaintext_fallback) {
        Ok(route) => route,
        Err(why) => {
            if let Some(n) = ctx.refusals.check((Reason::Other, from.ip())) {
                tracing::warn!(
                    listen = %ctx.listen,
                    "refused local connection from {from}: {why}{}",
                    suppressed_note(n)
                );
            }
            return;
        }
    };
    let peer = route.tls;
    let ip = crate::tls::verify::canonical_ip(peer.ip());
    let permissive_plain = route.plain.filter(|_| snapshot.mode == Mode::Permissive);
    // A peer known to have no TLS yet (and never verified) goes straight to plaintext. If its plaintext
    // port refuses, it has most likely moved to strict: TLS is tried at once instead of waiting out
    // the memory (success forgets it and logs the move).
    if let Some(plain) = permissive_plain
        && let Some(reason) = ctx.recently_plaintext(ip)
        && let Ok(remote) = connect_plain(plain, ctx).await
    {
        metrics::plaintext_fallback(&ctx.who, reason);
        return relay_plain(local, from, plain, remote, ctx, pending, started).await;
    }
    // Boxed, and the connection it returns too: inline, the handshake's state and rustls's connection
    // would size the task, which an idle relayed connection keeps for its whole life.
    let (tls, conn) = match Box::pin(dial(peer, &snapshot, ctx)).await {
        Ok(ok) => ok,
        Err((refusal, no_tls)) => {
            let known = ctx.tls_peers.has_tls(ip);
            if let (Some(plain), Some(reason), false) = (permissive_plain, no_tls, known) {
                let fallback = (plain, reason, &refusal);
                return fall_back(local, from, peer, fallback, ctx, pending, started).await;
            }
            // A permissive listener says why this "no TLS there" does not fall back.
            let kept_from_plaintext = permissive_plain.is_some() && no_tls.is_some() && known;
            refused(from, peer, &refusal, kept_from_plaintext, ctx, started);
            return;
        }
    };
    relay_verified(
        local,
        from,
        peer,
        tls,
        conn,
        permissive_plain.is_some(),
        ctx,
        pending,
        started,
    )
    .await;
}

/// Counts and logs (rate-limited) a peer that could not be reached or verified; the local connection
/// is closed. `kept_from_plaintext`: permissive mode would have fallen back, but the peer is known
/// to have TLS.
fn refused(
    from: SocketAddr,
    peer: SocketAddr,
    refusal: &Refusal,
    kept_from_plaintext: bool,
    ctx: &OutboundContext,
    started: Instant,
) {
    metrics::handshake_refused(&ctx.who, refusal.reason, started.elapsed());
    let Some(n) = ctx.refusals.check((refusal.reason, peer.ip())) else {
        return;
    };
    let why_not_plaintext = if kept_from_plaintext {
        format!(
            " (mode = permissive, but this peer completed a verified TLS handshake within \
             permissive.tls_peer_memory ({}), so it is never sent plaintext: its sidecar is \
             down or something on the path blocks TLS)",
            humantime::format_duration(ctx.tls_peers.memory())
        )
    } else {
        String::new()
    };
    tracing::warn!(
        listener = ctx.who.name(),
        peer = %peer,
        listen = %ctx.listen,
        reason = refusal.reason.as_str(),
        "outbound to {peer} failed: {}; closing the local connection from {from}{why_not_plaintext}{}",
        refusal.message,
        suppressed_note(n)
    );
}

/// A verified peer: remembered as having TLS, an established slot taken, then the relay.
#[allow(clippy::too_many_arguments)]
async fn relay_verified(
    local: TcpStream,
    from: SocketAddr,
    peer: SocketAddr,
    tls: TcpStream,
    conn: Box<rustls::Connection>,
    permissive: bool,
    ctx: &OutboundContext,
    pending: Pending,
    started: Instant,
) {
    let ip = crate::tls::verify::canonical_ip(peer.ip());
    if ctx.tls_peers.verified(ip) && permissive {
        tracing::info!(
            peer = %peer,
            "peer {ip} completed a verified TLS handshake: permissive mode will not send it plaintext \
             for {} after its last one",
            humantime::format_duration(ctx.tls_peers.memory())
        );
    }
    if ctx.forget_plaintext(ip) {
        tracing::info!(peer = %peer, "peer {} now accepts TLS; its connections are encrypted", peer.ip());
    }
    let session = Session::of(&conn, super::wants_identity(ctx.log_connections));
    let (protocol, suite) = (session.protocol, session.suite);
    metrics::handshake_ok(&ctx.who, protocol, suite, started.elapsed());
    let Some(_slot) = pending.establish(from) else {
        return admission::reset(&local);
    };
    tracing::debug!(peer = %peer, "outbound {from} -> {peer} established ({protocol}, {suite})");

    let relay = relay::Relay::start(tls, *conn, local, ctx.offload).await;
    let active = ActiveConnection::start(&ctx.who, true, relay.path().label());
    let ended = Ended {
        peer,
        local: from,
        tls: Some(session),
        offload: relay.path().label(),
        started,
    };
    let limits = super::relay_limits(&ctx.limits);
    // A user-space relay never releases: rustls holds its TLS state.
    let movable = relay.path() != relay::Path::Userspace;
    let run = std::pin::pin!(relay.run(limits, active.bytes.clone(), ctx.moves.token()));
    let log = ctx.log_connections;
    super::moves::relay_to_end(&ctx.moves, movable, run, active, &ended, limits, log).await;
}

/// Permissive mode, for a peer without a TLS endpoint that was never verified: counts, logs
/// (rate-limited) and carries the connection to the peer's plaintext port (`plain`, found without TLS
/// for `reason`, as `refusal` says).
#[allow(clippy::too_many_arguments)]
async fn fall_back(
    local: TcpStream,
    from: SocketAddr,
    peer: SocketAddr,
    (plain, reason, refusal): (SocketAddr, FallbackReason, &Refusal),
    ctx: &OutboundContext,
    pending: Pending,
    started: Instant,
) {
    let ip = crate::tls::verify::canonical_ip(peer.ip());
    ctx.remember_plaintext(ip, reason);
    if let Some(n) = ctx.fallback_log.check((reason, ip)) {
        tracing::warn!(
            peer = %peer,
            reason = reason.as_str(),
            "peer {ip} has no TLS on {peer} ({}) and has not completed a verified TLS handshake with this \
             sidecar within {}; mode = permissive: its connections go in plaintext to {plain}, TLS is \
             tried again every {}s (counted in ringseal_plaintext_fallbacks_total){}",
            refusal.message,
            humantime::format_duration(ctx.tls_peers.memory()),
            FALLBACK_MEMORY.as_secs(),
            suppressed_note(n)
        );
    }
    match connect_plain(plain, ctx).await {
        Ok(remote) => {
            metrics::plaintext_fallback(&ctx.who, reason);
            relay_plain(local, from, plain, remote, ctx, pending, started).await;
        }
        Err(why) => {
            if let Some(n) = ctx.refusals.check((Reason::Io, plain.ip())) {
                tracing::warn!(
                    peer = %plain,
                    "plaintext fallback to {plain} failed: {why}{}",
                    suppressed_note(n)
                );
            }
        }
    }
}

/// Why dialing a peer failed, and whether that shows the peer has no TLS endpoint at all.
type DialFailure = (Refusal, Option<FallbackReason>);

/// Connects and completes mutual TLS. On failure, the refusal and, when the peer plainly has no TLS
/// endpoint, why: its TLS port refused the connection, or answered our ClientHello with bytes that are
/// not a TLS record header. Only then may permissive mode fall back to plaintext. An EOF or reset after
/// the ClientHello, a timeout, or any TLS or certificate error never does: an attacker on the path can
/// cause each of those to a peer that has TLS, and a certificate failure would hand plaintext to
/// whoever fails verification.
async fn dial(
    peer: SocketAddr,
    snapshot: &OutboundSnapshot,
    ctx: &OutboundContext,
) -> Result<(TcpStream, Box<rustls::Connection>), DialFailure> {
    let mut tcp = connect_peer(peer, snapshot, ctx).await?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::IpAddress(peer.ip().into());
    let mut conn = match rustls::ClientConnection::new(snapshot.config.clone(), name) {
        Ok(c) => rustls::Connection::Client(c),
        Err(e) => {
            let why = format!("cannot start the TLS session: {e}");
            return Err((Refusal::new(Reason::Io, why), None));
        }
    };
    let handshake = async {
        match first_answer(&mut tcp, &mut conn).await? {
            Answer::Tls => relay::handshake(&tcp, &mut conn).await.map(|()| None),
            Answer::NotTls(first) => Ok(Some(first)),
        }
    };
    match tokio::time::timeout(ctx.limits.handshake_timeout, handshake).await {
        Ok(Ok(None)) => Ok((tcp, Box::new(conn))),
        Ok(Ok(Some(first))) => Err((
            Refusal::new(
                Reason::NotTls,
                format!(
                    "it answered our ClientHello with bytes that are not a TLS record ({})",
                    describe_first_bytes(&first)
                ),
            ),
            Some(FallbackReason::NotTls),
        )),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err((
            Refusal::new(
                Reason::Io,
                "the peer closed the connection in the middle of the handshake",
            ),
            None,
        )),
        Ok(Err(e)) => {
            let refusal = super::refusal_from_io(&e);
            // rustls's alert went out: a FIN after it, and the rest of the peer's flight read and
            // discarded, so that no reset can destroy the alert before the peer reads it.
            relay::refuse(tcp).await;
            Err((refusal, None))
        }
        Err(_) => Err((
            Refusal::new(
                Reason::Timeout,
                format!(
                    "handshake not completed within limits.handshake_timeout ({})",
                    humantime::format_duration(ctx.limits.handshake_timeout)
                ),
            ),
            None,
        )),
    }
}

/// Connects the peer's TLS port under `connect_timeout`; a refused connection is evidence of no TLS
/// endpoint there.
async fn connect_peer(
    peer: SocketAddr,
    snapshot: &OutboundSnapshot,
    ctx: &OutboundContext,
) -> Result<TcpStream, DialFailure> {
    let connect = connect_from(snapshot.source, peer);
    match tokio::time::timeout(ctx.limits.connect_timeout, connect).await {
        Ok(Ok(tcp)) => Ok(tcp),
        Ok(Err(e)) => {
            let refused = (e.kind() == std::io::ErrorKind::ConnectionRefused)
                .then_some(FallbackReason::ConnectionRefused);
            Err((
                Refusal::new(Reason::Io, format!("cannot connect: {e}")),
                refused,
            ))
        }
        Err(_) => Err((
            Refusal::new(
                Reason::Timeout,
                format!(
                    "no answer within limits.connect_timeout ({})",
                    humantime::format_duration(ctx.limits.connect_timeout)
                ),
            ),
            None,
        )),
    }
}

/// What the peer's TLS port sent first, in answer to our ClientHello.
enum Answer {
    /// A TLS record header (or its first byte): the handshake goes on.
    Tls,
    /// Something else: the first bytes, for the log.
    NotTls(Vec<u8>),
}

/// Sends the ClientHello and looks (without taking them) at the first bytes that come back: the
/// evidence for "no TLS there". An EOF or reset before any byte is an error, like any other failed
/// handshake.
async fn first_answer(
    tcp: &mut TcpStream,
    conn: &mut rustls::Connection,
) -> std::io::Result<Answer> {
    use tokio::io::AsyncWriteExt;
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello)?;
    }
    tcp.write_all(&hello).await?;
    let mut first = [0u8; 5];
    let n = tcp.peek(&mut first).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(if is_tls_record_start(&first[..n]) {
        Answer::Tls
    } else {
        Answer::NotTls(first[..n].to_vec())
    })
}

/// Whether `bytes` (one to five) can begin a TLS record: content type change_cipher_spec, alert,
/// handshake or application_data, then protocol major version 3.
fn is_tls_record_start(bytes: &[u8]) -> bool {
    match bytes {
        [] => true,
        [t] => (20..=23).contains(t),
        [t, major, ..] => (20..=23).contains(t) && *major == 3,
    }
}

/// "first bytes 48 54 54 50 2f", for the log.
fn describe_first_bytes(bytes: &[u8]) -> String {
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("first bytes {}", hex.join(" "))
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

/// Why the peer's plaintext storage port could not be reached.
#[derive(Debug, thiserror::Error)]
enum PlainConnectError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within limits.connect_timeout")]
    Timeout,
}

/// Permissive mode: connects the peer's plaintext storage port.
async fn connect_plain(
    to: SocketAddr,
    ctx: &OutboundContext,
) -> Result<TcpStream, PlainConnectError> {
    let source = ctx.snapshot.load().source;
    match tokio::time::timeout(ctx.limits.connect_timeout, connect_from(source, to)).await {
        Ok(Ok(r)) => {
            let _ = r.set_nodelay(true);
            Ok(r)
        }
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(PlainConnectError::Timeout),
    }
}

/// Permissive mode: carries the local connection to the peer's plaintext storage port.
async fn relay_plain(
    local: TcpStream,
    from: SocketAddr,
    to: SocketAddr,
    remote: TcpStream,
    ctx: &OutboundContext,
    pending: Pending,
    started: Instant,
) {
    let Some(_slot) = pending.establish(from) else {
        return admission::reset(&local);
    };
    let active = ActiveConnection::start(&ctx.who, false, relay::Path::Splice.label());
    let ended = Ended {
        peer: to,
        local: from,
        tls: None,
        offload: relay::Path::Splice.label(),
        started,
    };
    let limits = super::relay_limits(&ctx.limits);
    // The peer is the remote end: its bytes count as from_peer, as on the TLS path.
    let run = std::pin::pin!(relay::plain(
        remote,
        local,
        limits,
        active.bytes.clone(),
        ctx.moves.token(),
    ));
    let log = ctx.log_connections;
    super::moves::relay_to_end(&ctx.moves, true, run, active, &ended, limits, log).await;
}

impl OutboundContext {
    /// Why `ip` was found without TLS, if it was within `FALLBACK_MEMORY` and has not completed a
    /// verified handshake since.
    fn recently_plaintext(&self, ip: std::net::IpAddr) -> Option<FallbackReason> {
        let reason = self
            .plaintext_peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ip)
            .filter(|(t, _)| t.elapsed() < FALLBACK_MEMORY)
            .map(|(_, reason)| *reason);
        reason.filter(|_| !self.tls_peers.has_tls(ip))
    }

    fn remember_plaintext(&self, ip: std::net::IpAddr, reason: FallbackReason) {
        let mut peers = self
            .plaintext_peers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if peers.len() >= 4096 {
            peers.retain(|_, (t, _)| t.elapsed() < FALLBACK_MEMORY);
        }
        peers.insert(ip, (Instant::now(), reason));
    }

    fn forget_plaintext(&self, ip: std::net::IpAddr) -> bool {
        let mut peers = self
            .plaintext_peers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        peers.remove(&ip).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_counts_as_the_start_of_a_tls_record() {
        // A ServerHello, an alert, their first byte alone.
        assert!(is_tls_record_start(&[22, 3, 3, 0, 90]));
        assert!(is_tls_record_start(&[21, 3, 3, 0, 2]));
        assert!(is_tls_record_start(&[22]));
        // HTTP, Cassandra's internode magic, a handshake type with a wrong version, SSLv2-style.
        assert!(!is_tls_record_start(b"HTTP/"));
        assert!(!is_tls_record_start(&[0xCA, 0x55, 0x2D, 0xFA]));
        assert!(!is_tls_record_start(&[22, 0x48]));
        assert!(!is_tls_record_start(&[0x80, 0x2e]));
        assert!(!is_tls_record_start(&[24, 3, 3, 0, 1]));
    }
}
