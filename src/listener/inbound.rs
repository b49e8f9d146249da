//! Inbound: accept mutual TLS from a peer node, verify it, and only then connect to the local storage
//! port and relay.
//!
//! Per connection: admission (a handshake slot, [`super::admission`]) -> sniff the first bytes (not TLS:
//! refuse) -> wait for a whole first record (no TLS state before) -> handshake under
//! `handshake_timeout`, with the verifier deciding inside it -> an established slot -> connect
//! `forward` under `connect_timeout` -> relay. No connection to `forward` exists before the peer is
//! fully verified; a refused peer gets its alert, then a FIN (`relay::refuse`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use tokio::net::{TcpListener, TcpStream};

use super::admission::{self, Admission, Pending};
use super::sniff::{Sniffed, sniff};
use super::status::{LastConnect, ListenerStatus, ListenerTls, ReloadError, StorageStatus};
use super::{Ended, NoData, RateLimit, Refusal, RefusalKey, Session, suppressed_note};
use crate::config::{Inbound, Limits, Mode};
use crate::metrics::{self, ActiveConnection, Direction, Reason};
use crate::relay::{self, Offload};
use crate::tls::LoadedTls;
use crate::tls::settings::ClientAuth;
use crate::tls::suites::{iana_name, protocol_name};
use crate::tls::verify::{ClientVerifier, PeerPolicy};

/// Identical refusals from one address are logged once per minute.
const REFUSAL_LOG_WINDOW: Duration = Duration::from_secs(60);

/// A bound inbound listener.
pub struct InboundListener {
    listener: TcpListener,
    ctx: Arc<InboundContext>,
}

/// What every connection task of one inbound listener shares: its addresses, budgets, log limits and
/// the current [`InboundSnapshot`].
struct InboundContext {
    /// The `direction` and `listener` labels (the name is fixed at start).
    who: metrics::Listener,
    listen: SocketAddr,
    forward: SocketAddr,
    /// Swapped whole by a reload; each handshake takes the current one.
    snapshot: ArcSwap<InboundSnapshot>,
    limits: Limits,
    refusals: RateLimit<RefusalKey>,
    backend_log: RateLimit<()>,
    accept_log: RateLimit<&'static str>,
    /// This listener's budgets: handshakes in progress (per source too) and established connections.
    admission: Arc<Admission>,
    /// Permissive mode: peers last seen in plaintext, to log once when each moves to TLS.
    plaintext_peers: super::PeerSet,
    /// Fixed at start.
    offload: Offload,
    /// `[logging] connections`: one info line per relayed connection when it ends. Fixed at start.
    log_connections: bool,
    /// The last attempt to connect `forward`, for `/status`.
    last_connect: LastConnect,
    /// The congestion control of the storage-port leg when it stays on this host. Fixed at start.
    loopback: Arc<crate::tcp::Loopback>,
    /// Why the last reload kept this listener on its previous material, for `/status`.
    reload_error: ReloadError,
    /// This process's movable connections (a hand-over asks them to release).
    moves: Arc<super::moves::Moves>,
}

/// Everything a handshake needs, built from one snapshot of the TLS material and the peer policy.
struct InboundSnapshot {
    settings: LoadedTls,
    provider: Arc<CryptoProvider>,
    verifier: Arc<ClientVerifier>,
    /// The config every connection uses, unless endpoint verification needs a verifier bound to the
    /// peer's address.
    config: Arc<ServerConfig>,
    endpoint_verification: bool,
    mode: Mode,
    /// What a connection verified with this snapshot depends on, for a hand-over to compare.
    print: crate::tls::PolicyPrint,
}

impl InboundSnapshot {
    fn build(cfg: &Inbound<LoadedTls>) -> Self {
        let tls = &cfg.tls;
        let policy = Arc::new(PeerPolicy {
            allow: cfg.allow.clone(),
        });
        let provider = crate::tls::provider_for(tls);
        let verifier = Arc::new(crate::tls::client_verifier(tls, provider.clone(), policy));
        let config = crate::tls::server_config(tls, provider.clone(), verifier.clone());
        Self {
            settings: tls.clone(),
            provider,
            verifier,
            config,
            endpoint_verification: cfg.require_endpoint_verification,
            mode: cfg.mode,
            print: tls.print(&format!(
                "allow {} endpoint verification {} mode {}",
                cfg.allow, cfg.require_endpoint_verification, cfg.mode
            )),
        }
    }
}

/// Lets a reload swap a listener's TLS material and peer policy; connections already established keep
/// the material they were verified with.
#[derive(Clone)]
pub struct InboundHandle(Arc<InboundContext>);

impl InboundHandle {
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

    pub fn apply(&self, cfg: &Inbound<LoadedTls>) {
        self.0.snapshot.store(Arc::new(InboundSnapshot::build(cfg)));
        self.0.reload_error.set(None);
    }

    /// A reload could not load this listener's material: it keeps its current one.
    pub fn kept(&self, error: String) {
        self.0.reload_error.set(Some(error));
    }

    /// What `/status` shows of this listener, `inbound[index]`.
    pub fn status(&self, index: usize) -> ListenerStatus {
        let ctx = &self.0;
        ListenerStatus {
            name: ctx.who.name().to_owned(),
            key: format!("inbound[{index}]"),
            kind: "inbound",
            listen: ctx.listen,
            mode: ctx.snapshot.load().mode.to_string(),
            connections_active: ctx.admission.established(),
            handshakes_in_progress: ctx.admission.pending(),
            max_connections: ctx.admission.max_connections(),
            storage: Some(StorageStatus {
                address: ctx.forward,
                last_connect: ctx.last_connect.get(),
            }),
            target: None,
            tls: ListenerTls::new(&ctx.snapshot.load().settings, ctx.reload_error.get()),
        }
    }
}

impl InboundListener {
    /// Binds the listening socket. Errors name the address (in use, not local, no permission).
    pub async fn bind(
        cfg: &Inbound<LoadedTls>,
        limits: &Limits,
        offload: Offload,
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
        let who = metrics::Listener::new(Direction::Inbound, cfg.name.shared());
        let ctx = Arc::new(InboundContext {
            who: who.clone(),
            listen,
            forward: cfg.forward,
            snapshot: ArcSwap::from_pointee(InboundSnapshot::build(cfg)),
            limits: limits.clone(),
            refusals: RateLimit::new(REFUSAL_LOG_WINDOW),
            backend_log: RateLimit::new(Duration::from_secs(10)),
            accept_log: RateLimit::new(Duration::from_secs(10)),
            admission: Arc::new(Admission::new(who, listen, limits, true)),
            plaintext_peers: super::PeerSet::default(),
            offload,
            log_connections,
            last_connect: LastConnect::default(),
            loopback,
            reload_error: ReloadError::default(),
            moves,
        });
        Ok(Self { listener, ctx })
    }

    /// A duplicate of the listening socket's descriptor (the same socket), to hand over.
    pub fn dup_fd(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        self.listener.as_fd().try_clone_to_owned()
    }

    pub fn handle(&self) -> InboundHandle {
        InboundHandle(self.ctx.clone())
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.ctx.listen
    }

    /// The start-up line, in the spirit of Cassandra's "Starting Encrypted Messaging Service on TLS port".
    pub fn log_start(&self, cfg: &Inbound<LoadedTls>) {
        let ctx = &self.ctx;
        let tls = ctx.snapshot.load();
        let protocols: Vec<_> = tls
            .settings
            .versions
            .iter()
            .map(|v| protocol_name(v.version))
            .collect();
        let suites: Vec<_> = tls.settings.suites.iter().map(|c| iana_name(*c)).collect();
        tracing::info!(
            listener = ctx.who.name(),
            "starting inbound mTLS listener on {} forwarding to {} (protocols {}; cipher suites {}; \
             client auth {}; endpoint verification {}; allow {})",
            ctx.listen,
            ctx.forward,
            protocols.join(","),
            suites.join(","),
            match tls.settings.require_client_auth {
                ClientAuth::Required => "required",
                ClientAuth::Optional => "OPTIONAL (verified when sent)",
                ClientAuth::Off => "OFF",
            },
            if cfg.require_endpoint_verification {
                "on"
            } else {
                "off"
            },
            cfg.allow,
        );
    }

    /// Accepts until shutdown; see [`super::serve`].
    /// Accepts until `life.shutdown`; hands the listener back (a hand-over may resume it).
    pub async fn serve(self, life: super::Lifecycle) -> Self {
        super::serve(
            &self.listener,
            life,
            &self.ctx.admission,
            &self.ctx.accept_log,
            self.ctx.clone(),
            |stream, peer, ctx, pending| async move {
                serve_connection(stream, peer, &ctx, pending).await
            },
        )
        .await;
        self
    }
}

/// One accepted connection, from its first bytes to the end of its relay (or its refusal).
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: &InboundContext,
    pending: Pending,
) {
    let started = Instant::now();
    let _ = stream.set_nodelay(true);
    let deadline = tokio::time::Instant::from_std(started + ctx.limits.handshake_timeout);
    // Until the peer has sent a whole first record, the task holds the socket and this small future;
    // everything after (rustls, the handshake, the relay) is boxed below, allocated only for a peer
    // that has sent something to handshake with.
    let first = tokio::time::timeout_at(deadline, first_bytes(&stream, ctx))
        .await
        .unwrap_or_else(|_| Err(timed_out(ctx)));
    Box::pin(after_first_bytes(
        stream, peer, ctx, pending, started, deadline, first,
    ))
    .await;
}

fn timed_out(ctx: &InboundContext) -> Refusal {
    Refusal::new(
        Reason::Timeout,
        format!(
            "handshake not completed within limits.handshake_timeout ({})",
            humantime::format_duration(ctx.limits.handshake_timeout)
        ),
    )
}

/// The connection once its first bytes are known: handshake, then relay (or passthrough, or refusal).
async fn after_first_bytes(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: &InboundContext,
    pending: Pending,
    started: Instant,
    deadline: tokio::time::Instant,
    first: Result<Opening, Refusal>,
) {
    let result = match first {
        Ok(Opening::NoData(how)) => {
            return super::no_data(&ctx.who, peer, ctx.listen, how);
        }
        Ok(Opening::Sniffed(Sniffed::Tls)) => {
            // Boxed, and the connection it returns too: inline, the handshake's state and rustls's
            // connection would size this future, which an idle relayed connection keeps for its life.
            tokio::time::timeout_at(deadline, Box::pin(handshake(&stream, peer, ctx)))
                .await
                .unwrap_or_else(|_| Err(timed_out(ctx)))
                .map(Accepted::Tls)
        }
        Ok(Opening::Sniffed(plain)) => Ok(Accepted::Plain(plain)),
        Err(refusal) => Err(refusal),
    };
    match result {
        Ok(Accepted::Tls(conn)) => relay_verified(stream, conn, peer, ctx, pending, started).await,
        Ok(Accepted::Plain(sniffed)) => {
            let Some(_slot) = pending.establish(peer) else {
                return admission::reset(&stream);
            };
            passthrough(stream, peer, sniffed, ctx, started).await;
        }
        Err(refusal) => refuse(stream, peer, ctx, &refusal, started).await,
    }
}

/// Counts and logs (rate-limited) a refused handshake, then ends the connection.
async fn refuse(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: &InboundContext,
    refusal: &Refusal,
    started: Instant,
) {
    metrics::handshake_refused(&ctx.who, refusal.reason, started.elapsed());
    if let Some(n) = ctx.refusals.check((refusal.reason, peer.ip())) {
        tracing::warn!(
            listener = ctx.who.name(),
            peer = %peer,
            listen = %ctx.listen,
            reason = refusal.reason.as_str(),
            "refused {peer}: {}{}",
            refusal.message,
            suppressed_note(n)
        );
    }
    // FIN after the alert, and what the peer still sends read and discarded: a reset could
    // destroy the alert before the peer reads it.
    relay::refuse(stream).await;
}

/// A verified peer: takes an established slot, connects `forward` and relays.
async fn relay_verified(
    tls: TcpStream,
    conn: Box<rustls::Connection>,
    peer: SocketAddr,
    ctx: &InboundContext,
    pending: Pending,
    started: Instant,
) {
    if ctx.plaintext_peers.remove(peer.ip()) {
        tracing::info!(peer = %peer, "peer {} now connects with TLS (was plaintext)", peer.ip());
    }
    let session = Session::of(&conn, super::wants_identity(ctx.log_connections));
    let (protocol, suite) = (session.protocol, session.suite);
    metrics::handshake_ok(&ctx.who, protocol, suite, started.elapsed());
    let Some(_slot) = pending.establish(peer) else {
        return admission::reset(&tls);
    };
    if let Some(subject) = &session.identity {
        tracing::debug!(peer = %peer, "accepted {peer} \"{subject}\" ({protocol}, {suite})");
    }

    let Some(backend) = connect_forward(peer, ctx).await else {
        relay::close_without_data(tls, *conn).await;
        return;
    };
    let _ = backend.set_nodelay(true);

    let relay = relay::Relay::start(tls, *conn, backend, ctx.offload).await;
    let active = ActiveConnection::start(&ctx.who, true, relay.path().label());
    let ended = Ended {
        peer,
        local: ctx.forward,
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

/// Connects the storage port for a peer that was accepted; `None` (logged) when it cannot be reached.
async fn connect_forward(peer: SocketAddr, ctx: &InboundContext) -> Option<TcpStream> {
    match tokio::time::timeout(ctx.limits.connect_timeout, connect_storage(ctx)).await {
        Ok(Ok(b)) => {
            ctx.last_connect.ok();
            Some(b)
        }
        failed => {
            let (why, error) = match failed {
                Ok(Err(e)) => (e.to_string(), Some(e)),
                _ => (
                    format!(
                        "no answer within limits.connect_timeout ({})",
                        humantime::format_duration(ctx.limits.connect_timeout)
                    ),
                    None,
                ),
            };
            ctx.last_connect.failed(error.as_ref(), &why);
            metrics::backend_failure(&ctx.who);
            if let Some(n) = ctx.backend_log.check(()) {
                tracing::warn!(
                    peer = %peer,
                    "cannot connect to forward address {} for verified peer {peer}: {why}; closing its TLS \
                     connection (is Cassandra running and listening on its storage port?){}",
                    ctx.forward,
                    suppressed_note(n)
                );
            }
            None
        }
    }
}

/// Connects `forward`. A loopback storage port gets the loopback congestion control before the SYN,
/// so the whole connection runs with it; another address of this host gets it once connected.
async fn connect_storage(ctx: &InboundContext) -> std::io::Result<TcpStream> {
    let socket = match ctx.forward {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    let loopback = ctx.forward.ip().is_loopback();
    if loopback {
        ctx.loopback.apply(&socket);
    }
    let stream = socket.connect(ctx.forward).await?;
    if !loopback && let Ok(local) = stream.local_addr() {
        ctx.loopback.apply_if_local(&stream, local, ctx.forward);
    }
    Ok(stream)
}

/// Permissive mode: a plaintext peer is passed through to the storage port untouched.
async fn passthrough(
    plain: TcpStream,
    peer: SocketAddr,
    sniffed: Sniffed,
    ctx: &InboundContext,
    started: Instant,
) {
    if ctx.plaintext_peers.insert(peer.ip()) {
        tracing::info!(
            peer = %peer,
            "peer {} connects in plaintext ({sniffed}); passed through because mode = permissive",
            peer.ip()
        );
    }
    let Some(backend) = connect_forward(peer, ctx).await else {
        return;
    };
    let _ = backend.set_nodelay(true);
    let active = ActiveConnection::start(&ctx.who, false, relay::Path::Splice.label());
    let ended = Ended {
        peer,
        local: ctx.forward,
        tls: None,
        offload: relay::Path::Splice.label(),
        started,
    };
    let limits = super::relay_limits(&ctx.limits);
    let run = std::pin::pin!(relay::plain(
        plain,
        backend,
        limits,
        active.bytes.clone(),
        ctx.moves.token(),
    ));
    let log = ctx.log_connections;
    super::moves::relay_to_end(&ctx.moves, true, run, active, &ended, limits, log).await;
}

/// What the first bytes and the handshake came to.
// The connection is boxed: inline, its size would stay reserved in the connection's future for the
// whole life of the relay.
enum Accepted {
    Tls(Box<rustls::Connection>),
    /// Permissive mode only.
    Plain(Sniffed),
}

/// Sniffs the first bytes; for TLS, waits until a whole first record is queued. A peer that closes or
/// resets before its first byte is a TCP health check ([`NoData`]), not a refused handshake; one that
/// stays silent until `handshake_timeout` held a handshake slot all that time and is refused
/// (`timeout`), like any peer that does not finish its handshake. Holds nothing but a
/// few bytes on the stack: a peer that dribbles its ClientHello costs the socket and the task.
async fn first_bytes(stream: &TcpStream, ctx: &InboundContext) -> Result<Opening, Refusal> {
    let mut first = [0u8; 8];
    let n = match stream.peek(&mut first).await {
        Ok(0) => return Ok(Opening::NoData(NoData::Closed)),
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            return Ok(Opening::NoData(NoData::Reset));
        }
        Err(e) => {
            let why = format!("reading the first bytes failed: {e}");
            return Err(Refusal::new(Reason::Io, why));
        }
    };
    match sniff(&first[..n]) {
        Sniffed::Tls => {}
        Sniffed::Ssl2Hello => {
            return Err(Refusal::new(
                Reason::ProtocolVersion,
                Sniffed::Ssl2Hello.to_string(),
            ));
        }
        other if ctx.snapshot.load().mode == Mode::Permissive => {
            return Ok(Opening::Sniffed(other));
        }
        other => return Err(Refusal::new(Reason::NotTls, format!("peer sent {other}"))),
    }
    relay::first_record(stream)
        .await
        .map_err(|e| super::refusal_from_io(&e))?;
    Ok(Opening::Sniffed(Sniffed::Tls))
}

/// How a connection opened: with bytes (sniffed), or with none before the peer closed or reset it.
enum Opening {
    Sniffed(Sniffed),
    NoData(NoData),
}

/// Runs the rustls handshake on a connection whose first record has arrived; the established
/// connection is handed back for the relay (any application data the peer already sent stays in the
/// kernel, after the handshake's last record).
async fn handshake(
    stream: &TcpStream,
    peer: SocketAddr,
    ctx: &InboundContext,
) -> Result<Box<rustls::Connection>, Refusal> {
    let tls = ctx.snapshot.load();
    let config = if tls.endpoint_verification {
        // The verifier must know the peer's address and rustls gives it none, so this connection gets a
        // config whose verifier is bound to it (cheap: the key, roots and provider are shared `Arc`s).
        let verifier = Arc::new(tls.verifier.for_endpoint(peer.ip()));
        crate::tls::server_config(&tls.settings, tls.provider.clone(), verifier)
    } else {
        tls.config.clone()
    };
    drop(tls);
    let mut conn = rustls::ServerConnection::new(config)
        .map(rustls::Connection::Server)
        .map_err(|e| Refusal::new(Reason::Io, format!("cannot start the TLS session: {e}")))?;
    match relay::handshake(stream, &mut conn).await {
        Ok(()) => Ok(Box::new(conn)),
        Err(e) => Err(super::refusal_from_io(&e)),
    }
}
