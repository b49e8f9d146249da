//! The relay: the only code that moves bytes between a verified TLS connection and its plaintext leg.
//!
//! Interface: the listener waits for a whole first record with [`first_record`] (nothing allocated
//! before), completes the TLS handshake with [`handshake`] (whole records only, so the socket is left
//! at a record boundary) or ends a refused one with [`refuse`] (FIN after the alert, never a reset),
//! then [`Relay::start`] takes the socket with its finished rustls connection and the plaintext socket
//! and picks the path; [`Relay::path`] names it for the connection counter, and [`Relay::run`] returns
//! an [`Outcome`] when both directions are finished. [`plain`] relays permissive mode's plaintext legs.
//!
//! # Paths
//! * **kTLS** (`offload="ktls"`, [`ktls`]): when the kernel has the `tls` module and takes the
//!   negotiated cipher (AES-128-GCM, AES-256-GCM, CHACHA20-POLY1305 on TLS 1.2 or 1.3), the session keys
//!   go to the kernel after the handshake and bytes move socket -> pipe -> socket with `splice(2)`, never
//!   through user space; control records (alerts, post-handshake messages) are read with `recvmsg`.
//! * **user space** (`offload="userspace"`, [`userspace`]): rustls encrypts and decrypts; the fallback
//!   whenever kTLS is not available, not allowed (`offload = "off"`) or not possible for a connection.
//! * **splice** (`offload="splice"`, [`splice`]): plaintext both ways, socket -> pipe -> socket.
//!
//! # Close semantics (the documented policy, on every path)
//! * Half-close is propagated both ways: a TLS `close_notify` from the peer becomes a TCP FIN towards the
//!   backend, a FIN from the backend becomes `close_notify` + FIN towards the peer. The other direction
//!   keeps flowing.
//! * A peer that drops TCP without `close_notify`, or resets, is treated like a close: the backend still
//!   receives every byte that was received and authenticated before, then a FIN (never a reset, which
//!   could discard data still queued in the kernel). The outcome records it (`PeerNoCloseNotify`,
//!   `PeerReset`).
//! * A backend that resets: the peer still receives every byte the backend sent before, then
//!   `close_notify` + FIN. Whatever either side still sends towards a dead leg is read and discarded, so
//!   that closing never turns into a reset that destroys data queued for the other side.
//! * Once one direction has finished, the other must finish within `close_linger`; after that the
//!   connection is dropped (`LingerTimeout`). With `idle_timeout`, a connection that moved no byte for that
//!   long is dropped (`IdleTimeout`).
//! * TLS records that rustls produces on its own (alerts, KeyUpdate responses) are written as soon as
//!   they are queued, even when the backend is silent.
//!
//! # Key updates and the AEAD limit under kTLS
//! The keys rustls hands over cannot be updated afterwards: rustls's buffered connection gives out
//! the current keys only, not the traffic secrets a TLS 1.3 KeyUpdate derives the next keys from, and
//! kernels before 6.14 cannot replace a kTLS key at all. So on the kTLS path:
//! * ringseal never sends a KeyUpdate. Instead it counts the records the kernel has sent (the exact
//!   TLS_TX sequence number, read back from the kernel whenever the bytes sent since the last look
//!   could have reached the limit) and, at 7/8 of the suite's confidentiality limit (AES-GCM: 2^23 or
//!   2^24 records, i.e. at least 7.3 million records; CHACHA20-POLY1305: none), ends the connection
//!   gracefully: what was read from the backend is sent, then `close_notify` + FIN, then the
//!   peer -> backend direction gets `close_linger` to finish (`KeyLimit`). Cassandra reconnects.
//! * A KeyUpdate from the peer cannot be followed (its next records are under keys only the peer has):
//!   everything before it is delivered to the backend, then FIN; the peer gets `close_notify` + FIN
//!   (`PeerKeyUpdate`). Records after the KeyUpdate are never read.
//! * A NewSessionTicket is read and ignored (ringseal never resumes sessions).

mod handshake;
mod ktls;
mod splice;
mod userspace;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::metrics::ByteCounters;

pub use handshake::{first_record, handshake, refuse};
pub use ktls::{KtlsSupport, support};

/// Deadlines that apply while relaying.
#[derive(Debug, Clone, Copy)]
pub struct RelayLimits {
    pub idle: Option<Duration>,
    pub linger: Duration,
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

/// Which path a connection's bytes take: the `offload` label of `ringseal_connections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Ktls,
    Userspace,
    Splice,
}

impl Path {
    pub fn label(self) -> &'static str {
        match self {
            Self::Ktls => "ktls",
            Self::Userspace => "userspace",
            Self::Splice => "splice",
        }
    }
}

/// How a relayed connection ended: the first notable event, or `Clean`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Close {
    /// Both sides closed in order (close_notify from the peer, FIN from the backend).
    Clean,
    /// The peer closed TCP without sending close_notify.
    PeerNoCloseNotify,
    PeerReset,
    /// The peer sent something rustls (or the kernel) refused (bad record MAC, unexpected message ...).
    PeerTlsError(String),
    BackendReset,
    IdleTimeout,
    LingerTimeout,
    /// kTLS: the peer sent a KeyUpdate, which the kernel cannot follow; the connection was closed.
    PeerKeyUpdate,
    /// kTLS: our key approached the cipher's confidentiality limit; the connection was closed.
    KeyLimit,
    /// `offload = "require"` and this connection could not be offloaded.
    OffloadUnavailable(String),
    Io(String),
}

impl Close {
    /// Bounded label value for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::PeerNoCloseNotify => "peer_no_close_notify",
            Self::PeerReset => "peer_reset",
            Self::PeerTlsError(_) => "peer_tls_error",
            Self::BackendReset => "backend_reset",
            Self::IdleTimeout => "idle_timeout",
            Self::LingerTimeout => "linger_timeout",
            Self::PeerKeyUpdate => "peer_key_update",
            Self::KeyLimit => "key_limit",
            Self::OffloadUnavailable(_) => "offload_unavailable",
            Self::Io(_) => "io",
        }
    }
}

/// What a relay did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Plaintext bytes received from the TLS peer and written to the plaintext side.
    pub from_peer: u64,
    /// Plaintext bytes read from the plaintext side and sent encrypted to the TLS peer.
    pub to_peer: u64,
    pub close: Close,
}

/// A connection whose path is chosen; [`Relay::run`] moves its bytes.
pub struct Relay {
    /// Boxed for the moment between `start` and `run`: the listener's task keeps the space of a
    /// `Relay` it has moved into `run` for the connection's whole life (1.2 KiB inline, measured
    /// with -Zprint-type-sizes).
    inner: Box<Inner>,
}

// Boxed whole in `Relay`; its variants are not boxed again.
#[allow(clippy::large_enum_variant)]
enum Inner {
    Userspace(TcpStream, rustls::Connection, TcpStream),
    Ktls(ktls::Engaged),
    /// `offload = "require"` and kTLS could not be engaged: the peer got close_notify.
    Refused(String),
}

impl Relay {
    /// Chooses the path for a connection whose handshake is complete in `conn`, engaging kTLS when
    /// `offload` allows and the kernel can take the negotiated cipher.
    ///
    /// Boxed: engaging kTLS holds KiBs of state for a moment (the session keys, the flush of what
    /// rustls queued); inline, that space would be part of the connection's task, and so of its
    /// memory, for the connection's whole life.
    pub fn start(
        tls: TcpStream,
        conn: rustls::Connection,
        plain: TcpStream,
        offload: Offload,
    ) -> impl Future<Output = Self> + Send {
        Box::pin(async move {
            let inner = match ktls::engage(tls, conn, plain, offload).await {
                ktls::Engage::Engaged(e) => Inner::Ktls(e),
                ktls::Engage::Declined {
                    tcp,
                    conn,
                    plain,
                    why,
                } if offload != Offload::Require => {
                    tracing::trace!("user-space relay: {why}");
                    Inner::Userspace(tcp, conn, plain)
                }
                ktls::Engage::Declined { tcp, conn, why, .. } => {
                    close(tcp, conn).await;
                    Inner::Refused(why)
                }
            };
            Self {
                inner: Box::new(inner),
            }
        })
    }

    /// The path for the connection counter; a connection refused under `offload = "require"` counts
    /// as `ktls`, the path it was required to take (and ends with `how="offload_unavailable"`).
    pub fn path(&self) -> Path {
        match *self.inner {
            Inner::Userspace(..) => Path::Userspace,
            Inner::Ktls(_) | Inner::Refused(_) => Path::Ktls,
        }
    }

    /// Relays until both directions finish. The future is the path's own relay (no more than it
    /// needs while the connection lives: it is part of every connection's task).
    pub fn run(self, limits: RelayLimits, counters: ByteCounters) -> Run {
        Run(match *self.inner {
            Inner::Userspace(tls, conn, plain) => {
                RunInner::Userspace(userspace::Relay::new(tls, conn, plain, limits, counters))
            }
            Inner::Ktls(engaged) => RunInner::Ktls(Box::pin(engaged.relay(limits, counters))),
            Inner::Refused(why) => RunInner::Refused(Some(Outcome {
                from_peer: 0,
                to_peer: 0,
                close: Close::OffloadUnavailable(why),
            })),
        })
    }
}

/// The future of [`Relay::run`].
pub struct Run(RunInner);

// One per connection: boxing the user-space relay would only add an allocation. The kTLS relay's
// future cannot be named here, so it is boxed (a few hundred bytes).
#[allow(clippy::large_enum_variant)]
enum RunInner {
    Userspace(userspace::Relay),
    Ktls(Pin<Box<dyn Future<Output = Outcome> + Send>>),
    Refused(Option<Outcome>),
}

impl Future for Run {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        match &mut self.get_mut().0 {
            RunInner::Userspace(r) => Pin::new(r).poll(cx),
            RunInner::Ktls(r) => r.as_mut().poll(cx),
            RunInner::Refused(outcome) => {
                Poll::Ready(outcome.take().expect("polled after completion"))
            }
        }
    }
}

/// The start-up line: whether TLS connections will be offloaded to the kernel, and why not.
pub fn log_offload(offload: Offload) {
    let support = support();
    match (offload, &support.result) {
        (Offload::Off, _) => tracing::info!(
            "offload = \"off\": TLS records are encrypted in user space (rustls); plaintext legs use splice"
        ),
        (_, Ok(_)) => tracing::info!(
            "kTLS available ({}); offload = \"{offload}\": connections with these ciphers are encrypted by \
             the kernel and spliced; no rekeying: a peer's KeyUpdate, or 7/8 of an AES-GCM key's record \
             limit, closes the connection",
            support.describe()
        ),
        (Offload::Auto, Err(why)) => tracing::info!(
            "kTLS unavailable: {why}; TLS records are encrypted in user space (rustls), plaintext legs \
             use splice"
        ),
        (Offload::Require, Err(why)) => tracing::warn!(
            "offload = \"require\" but kTLS is unavailable: {why}; every TLS connection will be refused"
        ),
    }
}

/// Ends a TLS connection that will carry no data (its backend could not be reached): close_notify, then
/// FIN, bounded by [`CLOSE_DEADLINE`] so a peer that does not read cannot hold the task. Boxed, like
/// [`Relay::start`], so that its state is not part of every connection's task.
pub fn close(tls: TcpStream, conn: rustls::Connection) -> impl Future<Output = ()> + Send {
    Box::pin(async move {
        let _ = tokio::time::timeout(CLOSE_DEADLINE, userspace::close(&tls, conn)).await;
    })
}

/// How long [`close`] may take.
pub const CLOSE_DEADLINE: Duration = Duration::from_secs(1);

/// Relays plaintext both ways (permissive mode's plaintext legs) with `splice(2)`, propagating each end
/// of stream; `peer` is the side whose bytes count as `from_peer`. Same close policy and deadlines as
/// the TLS paths.
pub async fn plain(
    peer: TcpStream,
    backend: TcpStream,
    limits: RelayLimits,
    counters: ByteCounters,
) -> Outcome {
    splice::plain(peer, backend, limits, counters).await
}

/// Rounds of a relay loop before yielding to the scheduler, so one busy connection cannot starve others.
const BUDGET: u32 = 32;

/// The idle and linger deadlines of one connection, shared by every path.
struct Deadlines {
    limits: RelayLimits,
    last_progress: Instant,
    idle_timer: Option<Pin<Box<Sleep>>>,
    linger_timer: Option<Pin<Box<Sleep>>>,
}

impl Deadlines {
    fn new(limits: RelayLimits) -> Self {
        Self {
            limits,
            last_progress: Instant::now(),
            idle_timer: limits.idle.map(|d| Box::pin(tokio::time::sleep(d))),
            linger_timer: None,
        }
    }

    fn progressed(&mut self) {
        self.last_progress = Instant::now();
    }

    /// After a round that moved nothing: the deadline that has passed, if any (otherwise the timers are
    /// registered with `cx`). `half_closed`: one direction has finished, so `linger` runs.
    fn poll(&mut self, cx: &mut Context<'_>, half_closed: bool) -> Option<Close> {
        if half_closed {
            let linger = self.limits.linger;
            let timer = self
                .linger_timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(linger)));
            if timer.as_mut().poll(cx).is_ready() {
                return Some(Close::LingerTimeout);
            }
        }
        if let (Some(idle), Some(timer)) = (self.limits.idle, self.idle_timer.as_mut()) {
            while timer.as_mut().poll(cx).is_ready() {
                let deadline = self.last_progress + idle;
                if Instant::now() >= deadline {
                    return Some(Close::IdleTimeout);
                }
                timer.as_mut().reset(deadline.into());
            }
        }
        None
    }
}

/// The two directions of a relay, polled in turn by [`drive`].
trait Directions {
    /// One round of both directions; true if anything moved.
    fn step(&mut self, cx: &mut Context<'_>) -> bool;
    /// (up finished, down finished)
    fn finished(&self) -> (bool, bool);
    fn deadlines(&mut self) -> &mut Deadlines;
    /// Records a deadline that passed and returns the outcome.
    fn end(&mut self, close: Option<Close>) -> Outcome;
}

/// The poll loop every path shares: rounds until nothing moves (yielding after [`BUDGET`] rounds),
/// then the deadlines.
fn drive<D: Directions>(this: &mut D, cx: &mut Context<'_>) -> Poll<Outcome> {
    let mut rounds = 0;
    loop {
        let progress = this.step(cx);
        let (up, down) = this.finished();
        if up && down {
            return Poll::Ready(this.end(None));
        }
        if !progress {
            break;
        }
        this.deadlines().progressed();
        rounds += 1;
        if rounds == BUDGET {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
    }
    let (up, down) = this.finished();
    match this.deadlines().poll(cx, up || down) {
        Some(close) => Poll::Ready(this.end(Some(close))),
        None => Poll::Pending,
    }
}

/// Which end of a relay an error came from, for the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Peer,
    Backend,
}

impl Side {
    fn close_for(self, e: &std::io::Error) -> Close {
        let reset = matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        );
        match (self, reset) {
            (Self::Peer, true) => Close::PeerReset,
            (Self::Backend, true) => Close::BackendReset,
            (Self::Peer, false) => Close::Io(format!("peer socket: {e}")),
            (Self::Backend, false) => Close::Io(format!("backend socket: {e}")),
        }
    }
}
