//! Listeners: accept continuously, admit each connection within the listener's own budgets
//! ([`admission`]), hand it to its own task, never exit on an accept error. `inbound` terminates mutual
//! TLS; `sniff` recognises what a peer sent when it was not TLS.

pub mod admission;
pub mod inbound;
pub mod moves;
pub mod outbound;
pub mod sniff;
pub mod status;
pub mod tls_peers;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Limits;
use crate::metrics::{ActiveConnection, Reason};
use crate::relay::{Close, Outcome, RelayLimits};
use admission::{Admission, Pending};

/// Binds `addr` with a listen backlog of `backlog` (the kernel cuts it to `net.core.somaxconn`).
/// Through socket2 because tokio's `TcpListener::bind` fixes the backlog at 128. Like tokio (and std),
/// SO_REUSEADDR is set, so a restart does not wait for the old connections' TIME_WAIT.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    TcpListener::from_std(socket.into())
}

/// A listening socket handed over by the old process (`crate::handover`), checked before it is used:
/// a TCP socket, listening, bound to `expected` (or, for a port 0, to its address).
pub fn adopt(fd: std::os::fd::OwnedFd, expected: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Protocol, Socket, Type};
    let socket = Socket::from(fd);
    let what = |why: String| {
        io::Error::other(format!(
            "the socket handed over for {expected} is {why}; not using it"
        ))
    };
    if socket.r#type()? != Type::STREAM || socket.protocol()? != Some(Protocol::TCP) {
        return Err(what("not a TCP socket".into()));
    }
    if !socket.is_listener()? {
        return Err(what("not listening".into()));
    }
    let bound = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| what("not an IP socket".into()))?;
    let same = bound == expected || (expected.port() == 0 && bound.ip() == expected.ip());
    if !same {
        return Err(what(format!("bound to {bound}")));
    }
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

/// Accepts the next connection. Returns `None` when `shutdown` fires.
///
/// It never waits for a budget (admission is decided after accept), so the listen backlog keeps being
/// drained. Accept errors never end the loop: running out of descriptors (EMFILE/ENFILE) or memory backs
/// off (10 ms doubling to 1 s) with a rate-limited warning, because retrying at once would spin on the
/// same error; per-connection errors (ECONNABORTED) are retried immediately.
pub async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    log: &RateLimit<&'static str>,
) -> Option<(TcpStream, SocketAddr)> {
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return None,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => return Some((stream, peer)),
            Err(e) if is_resource_exhaustion(&e) => {
                if let Some(suppressed) = log.check("accept") {
                    tracing::warn!(
                        listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
                        "cannot accept connections: {e}; retrying in {backoff:?} (raise the open-file limit, \
                         e.g. LimitNOFILE in the systemd unit){}",
                        suppressed_note(suppressed)
                    );
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Err(e) => {
                tracing::debug!("accept: {e}");
            }
        }
    }
}

/// What every accept loop shares: the stop signal, the cut signal for what is still open after the
/// grace period, and the tracker that shutdown waits on. Budgets are per listener ([`Admission`]).
#[derive(Clone)]
pub struct Lifecycle {
    pub shutdown: CancellationToken,
    pub cut: CancellationToken,
    pub tracker: TaskTracker,
}

/// Accepts until shutdown, admits each connection ([`Admission::admit`]; a connection turned away is
/// reset at once) and runs `serve_connection` for it in its own tracked task, which trades its [`Pending`] place
/// for an established one once verified. An eviction or a cut drops the connection (a relayed one is reset on both legs: see
/// `relay`'s close semantics).
pub async fn serve<C, F, Fut>(
    listener: &TcpListener,
    life: Lifecycle,
    admission: &Arc<Admission>,
    log: &RateLimit<&'static str>,
    ctx: Arc<C>,
    serve_connection: F,
) where
    C: Send + Sync + 'static,
    F: Fn(TcpStream, SocketAddr, Arc<C>, Pending) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    while let Some((stream, peer)) = accept(listener, &life.shutdown, log).await {
        let Ok(pending) = admission.admit(peer) else {
            admission::reset(&stream);
            continue;
        };
        let evicted = pending.eviction();
        let cut = life.cut.clone();
        let ctx = ctx.clone();
        // The connection's future is created inside the task: captured by the task's block it would
        // be stored twice in the task (captured, and moved into `select!`).
        life.tracker.spawn(async move {
            tokio::select! {
                _ = cut.cancelled() => {}
                _ = evicted.cancelled() => {}
                _ = serve_connection(stream, peer, ctx, pending) => {}
            }
        });
    }
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The relay's deadlines from `[limits]`.
pub fn relay_limits(limits: &Limits) -> RelayLimits {
    RelayLimits {
        idle: limits.idle_timeout,
        linger: limits.close_linger,
    }
}

/// A failed handshake (`relay::handshake` wraps rustls's error in an `io::Error`) as a refusal.
pub fn refusal_from_io(e: &std::io::Error) -> Refusal {
    if let Some(tls_err) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        let (reason, message) = crate::tls::verify::classify(tls_err);
        return Refusal::new(reason, message);
    }
    let message = match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            "peer closed the connection in the middle of the handshake".to_owned()
        }
        std::io::ErrorKind::ConnectionReset => {
            "peer reset the connection in the middle of the handshake".to_owned()
        }
        _ => format!("handshake failed: {e}"),
    };
    Refusal::new(Reason::Io, message)
}

/// How a connection ended before its peer sent a byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoData {
    /// FIN: a plain TCP check (Kubernetes `tcpSocket`, Go's `net.Dial` then `Close`).
    Closed,
    /// RST (`SO_LINGER` 0): checks that avoid TIME_WAIT (HAProxy's, many load balancers').
    Reset,
}

/// Counts (`ringseal_connections_closed_total{how="no_data"}`) and logs at debug a connection that
/// ended before its first byte: a health check, not a handshake. Nothing is sent back; the socket is
/// closed when dropped.
pub fn no_data(who: &crate::metrics::Listener, peer: SocketAddr, listen: SocketAddr, how: NoData) {
    crate::metrics::closed_without_data(who);
    let what = match how {
        NoData::Closed => "closed",
        NoData::Reset => "reset",
    };
    tracing::debug!(
        listener = who.name(),
        peer = %peer,
        listen = %listen,
        "{peer} {what} the connection before sending a byte (a TCP health check?); not a handshake"
    );
}

/// What the connection-end line says about a relayed connection, gathered before its relay starts.
pub struct Ended {
    /// The remote end: the TLS peer (permissive: the plaintext peer).
    pub peer: SocketAddr,
    /// The node's end of the plaintext leg: `forward` (inbound), Cassandra's socket (outbound).
    pub local: SocketAddr,
    /// `None`: a permissive plaintext connection.
    pub tls: Option<Session>,
    /// The relay path's label (`relay::Path::label`).
    pub offload: &'static str,
    /// When the connection was accepted.
    pub started: Instant,
}

/// The verified TLS session of a relayed connection.
pub struct Session {
    pub protocol: &'static str,
    pub suite: &'static str,
    /// The peer certificate's subject, as refusals name it; only read when a line will show it.
    pub identity: Option<String>,
}

impl Session {
    /// Protocol, suite and (when `identity` is asked for) the peer certificate's subject.
    pub fn of(conn: &rustls::Connection, identity: bool) -> Self {
        use crate::tls::suites::{iana_name, protocol_name};
        Self {
            protocol: conn.protocol_version().map_or("unknown", protocol_name),
            suite: conn.negotiated_cipher_suite().map_or("unknown", iana_name),
            identity: identity.then(|| peer_subject(conn)),
        }
    }
}

/// The peer certificate's subject (parsing it again costs microseconds: only for a log line).
pub fn peer_subject(conn: &rustls::Connection) -> String {
    conn.peer_certificates()
        .and_then(|c| c.first())
        .and_then(crate::tls::x509::CertInfo::parse)
        .map(|i| i.subject)
        // An anonymous client of a listener with require_client_auth = "optional" or false.
        .unwrap_or_else(|| "none".into())
}

/// Whether connection ends get their info line (`[logging] connections`), and so whether the peer's
/// subject is worth reading at the handshake.
pub fn wants_identity(log_connections: bool) -> bool {
    (log_connections && tracing::enabled!(tracing::Level::INFO))
        || tracing::enabled!(tracing::Level::DEBUG)
}

/// Counts the end of a relayed connection and logs it, one line with every field: at info when
/// `log_connections` (`[logging] connections`) or when it ended abnormally, at debug otherwise. (A
/// connection cut at shutdown never gets here: its `active` counts it as cut when dropped.)
pub fn report_close(
    active: ActiveConnection,
    ended: &Ended,
    outcome: &Outcome,
    log_connections: bool,
) {
    let dir = active.direction();
    let listener = active.listener().to_owned();
    let how = outcome.close.label();
    active.closed(how);
    let routine = matches!(
        outcome.close,
        Close::Clean | Close::PeerNoCloseNotify | Close::PeerReset | Close::BackendReset
    );
    let tls = ended.tls.as_ref();
    let detail = outcome
        .close
        .detail()
        .map(|d| format!(": {d}"))
        .unwrap_or_default();
    // The same event at either level; the relay returned everything it says but the session.
    macro_rules! line {
        ($level:ident) => {
            tracing::$level!(
                direction = dir.as_str(),
                listener = listener.as_str(),
                peer = %ended.peer,
                local = %ended.local,
                tls = tls.is_some(),
                peer_identity = tls.and_then(|t| t.identity.as_deref()).unwrap_or(""),
                protocol = tls.map_or("", |t| t.protocol),
                cipher_suite = tls.map_or("", |t| t.suite),
                offload = ended.offload,
                bytes_from_peer = outcome.from_peer,
                bytes_to_peer = outcome.to_peer,
                duration_seconds = ended.started.elapsed().as_secs_f64(),
                how,
                "{} connection with {} on {listener} ended ({how}{detail})",
                dir.as_str(),
                ended.peer,
            )
        };
    }
    if log_connections || !routine {
        line!(info);
    } else {
        line!(debug);
    }
}

/// A refused connection: why, in a word for metrics and a sentence for the log.
#[derive(Debug)]
pub struct Refusal {
    pub reason: Reason,
    pub message: String,
}

impl Refusal {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// Rate limit for log lines: per key, the first event in a window is logged, the rest are counted and
/// reported with the next line that gets through. A scanner hammering the port produces one line per
/// (reason, address) per window, not one per connection. The table is bounded; when full, stale keys are
/// dropped, and if that is not enough everything is logged under one shared key.
pub struct RateLimit<K> {
    window: Duration,
    state: Mutex<HashMap<Option<K>, (Instant, u64)>>,
}

const RATE_LIMIT_KEYS: usize = 4096;

impl<K: std::hash::Hash + Eq + Clone> RateLimit<K> {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            state: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(n)`: log now, `n` similar events were suppressed since the last line. `None`: suppress.
    pub fn check(&self, key: K) -> Option<u64> {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.len() >= RATE_LIMIT_KEYS && !state.contains_key(&Some(key.clone())) {
            state.retain(|_, (since, _)| now.duration_since(*since) < self.window);
        }
        let slot = if state.len() >= RATE_LIMIT_KEYS && !state.contains_key(&Some(key.clone())) {
            None
        } else {
            Some(key)
        };
        match state.get_mut(&slot) {
            Some((since, suppressed)) if now.duration_since(*since) < self.window => {
                *suppressed += 1;
                None
            }
            Some((since, suppressed)) => {
                let n = *suppressed;
                *since = now;
                *suppressed = 0;
                Some(n)
            }
            None => {
                state.insert(slot, (now, 0));
                Some(0)
            }
        }
    }
}

/// Peers (by address) in some state, bounded: for "moved from plaintext to TLS" log lines.
#[derive(Default)]
pub struct PeerSet(Mutex<std::collections::HashSet<IpAddr>>);

impl PeerSet {
    /// Adds `ip`; true if it was not there. Beyond 4096 addresses new ones are not remembered (and so
    /// logged again), which bounds the memory a scanner can make us use.
    pub fn insert(&self, ip: IpAddr) -> bool {
        let mut set = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if set.contains(&ip) {
            return false;
        }
        if set.len() < RATE_LIMIT_KEYS {
            set.insert(ip);
        }
        true
    }

    /// Removes `ip`; true if it was there.
    pub fn remove(&self, ip: IpAddr) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&ip)
    }
}

/// Key for refusal log lines.
pub type RefusalKey = (Reason, IpAddr);

pub fn suppressed_note(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} similar suppressed)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_logs_first_then_counts() {
        let rl = RateLimit::new(Duration::from_secs(3600));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(rl.check((Reason::UnknownCa, ip)), Some(0));
        assert_eq!(rl.check((Reason::UnknownCa, ip)), None);
        assert_eq!(rl.check((Reason::UnknownCa, ip)), None);
        // A different reason or peer is a different key.
        assert_eq!(rl.check((Reason::Expired, ip)), Some(0));
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(rl.check((Reason::UnknownCa, other)), Some(0));
    }

    #[test]
    fn rate_limit_reports_suppressed_after_window() {
        let rl = RateLimit::new(Duration::ZERO);
        assert_eq!(rl.check("k"), Some(0));
        // Zero window: every event gets through, nothing is suppressed.
        assert_eq!(rl.check("k"), Some(0));
        let rl = RateLimit::new(Duration::from_millis(30));
        assert_eq!(rl.check("k"), Some(0));
        assert_eq!(rl.check("k"), None);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(rl.check("k"), Some(1));
    }

    #[test]
    fn rate_limit_table_is_bounded() {
        let rl = RateLimit::new(Duration::from_secs(3600));
        for i in 0..(RATE_LIMIT_KEYS as u32 + 100) {
            rl.check(i);
        }
        assert!(rl.state.lock().unwrap().len() <= RATE_LIMIT_KEYS + 1);
        // Past the bound, new keys share one slot: the first gets through, the next is suppressed.
        assert_eq!(rl.check(u32::MAX), None);
    }
}

/// Binding failed: the message names the config key and address.
#[derive(Debug, thiserror::Error)]
#[error("{key}.listen {addr}: cannot listen: {source}{hint}")]
pub struct BindError {
    /// `inbound[0]`, `outbound[1]` ...
    pub key: String,
    pub addr: SocketAddr,
    pub source: std::io::Error,
    pub hint: &'static str,
}

impl BindError {
    pub(crate) fn new(key: String, addr: SocketAddr, source: std::io::Error) -> Self {
        let hint = match source.kind() {
            std::io::ErrorKind::AddrInUse => {
                " (another process listens there: is a second ringseal running?)"
            }
            std::io::ErrorKind::AddrNotAvailable => {
                " (that address is not configured on this host)"
            }
            std::io::ErrorKind::PermissionDenied => " (ports below 1024 need privileges)",
            _ => "",
        };
        Self {
            key,
            addr,
            source,
            hint,
        }
    }
}
