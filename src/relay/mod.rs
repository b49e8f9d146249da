//! The relay: the only code that moves bytes between a verified TLS connection and its plaintext leg.
//!
//! Interface: the listener waits for a whole first record with [`first_record`] (nothing allocated
//! before), completes the TLS handshake with [`handshake`] (whole records only, so the socket is left
//! at a record boundary) or ends a refused one with [`refuse`] (FIN after the alert, never a reset),
//! then [`Relay::start`] takes the socket with its finished rustls connection and the plaintext socket
//! and picks the path; [`Relay::path`] names it for the connection counter, and [`Relay::run`] returns
//! [`Finish::Done`] with an [`Outcome`] when both directions are finished, or [`Finish::Released`]
//! when asked to let the connection go ([`resume`] takes it up again, see *Release and resume*).
//! [`plain`] relays permissive mode's plaintext legs.
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
//! A connection ends either **in order** or by an **abort**; an abort on one leg never reaches the
//! other leg as an orderly end.
//! * In order: half-close is propagated both ways: a TLS `close_notify` from the peer becomes a TCP
//!   FIN towards the backend, a FIN from the backend becomes `close_notify` + FIN towards the peer (on
//!   plaintext legs, FIN becomes FIN). The other direction keeps flowing; once both have ended so, the
//!   sockets close normally (`Clean`).
//! * Abort: the peer resets (`PeerReset`), ends TCP without `close_notify` (`PeerNoCloseNotify`) or
//!   breaks the protocol (`PeerTlsError`: rustls's or the kernel's fatal alert is still sent); the
//!   backend resets (`BackendReset`); a socket fails otherwise (`Io`); under kTLS, a KeyUpdate from the
//!   peer or our key's record limit (below). Then the relay reads nothing more from either socket, so
//!   a sender learns promptly that its bytes are not delivered; it delivers what it has already read
//!   (from the peer: received and authenticated, ciphertext already received is still decrypted) to
//!   each leg that is still writable, with neither FIN nor close_notify; it waits until the kernel
//!   has delivered it (`SIOCOUTQ` at 0: the receiver then reads every byte before it sees the reset),
//!   at most `close_linger` after the abort; then both legs are **reset** (`SO_LINGER` 0 and close).
//!   A TLS leg gets a reset rather than a fatal alert: rustls has no way to send one on an established
//!   connection, a reset is understood by every TLS stack and every TCP one alike, and it also tells
//!   a sender still writing that its bytes are not taken.
//! * Our own deadlines abort too, resetting both legs at once (nothing can move any more): with
//!   `idle_timeout`, a connection that moved no byte for that long (`IdleTimeout`); once one direction
//!   has ended in order, the other must end within `close_linger` (`LingerTimeout`). Neither end asked
//!   for the end, so neither may see an orderly one.
//! * The reset is armed (`SO_LINGER` 0) on both sockets as soon as the relay takes them, and disarmed
//!   only when both directions have ended in order. So whatever else closes them is a reset as well:
//!   the cut at the end of `shutdown_grace` (the connection's task is dropped; counted as `cut` by the
//!   listener), a panic, or the kernel closing the sockets of a killed process.
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
//!   2^24 records, i.e. at least 7.3 million records; CHACHA20-POLY1305: none), aborts the connection
//!   (`KeyLimit`): what was read from the backend is sent, then both legs are reset. Not
//!   `close_notify`: the backend's stream did not end, and the peer must not take its truncation for
//!   an end. Cassandra reconnects.
//! * A KeyUpdate from the peer cannot be followed (its next records are under keys only the peer has):
//!   everything before it is delivered to the backend, then the connection aborts (`PeerKeyUpdate`).
//!   Records after the KeyUpdate are never read.
//! * A NewSessionTicket is read and ignored (ringseal never resumes sessions).
//!
//! # Release and resume
//! A kTLS or spliced-plaintext relay can move to another process (a restart or upgrade hands its
//! connections over) because all of its state but a few bytes is in the kernel: the sockets (with
//! kTLS, the keys and record sequence numbers too), and the pipes with the bytes they hold. Once the
//! `release` token passed to [`Relay::run`] or [`plain`] is cancelled, the relay stops at its next
//! quiescent point, a round that moved nothing with both directions open and no abort (kTLS: both
//! keys in the kernel, no handshake message half read), and returns [`Finish::Released`]:
//! * **What moves**: the two sockets, deregistered from this process's runtime; both pipes with
//!   their contents; and a [`RelayState`] with the rest: the bytes relayed so far, how much each
//!   pipe holds (checked against the pipe on resume), and under kTLS the plaintext already read
//!   into user space and not yet delivered, whether we are the client, and the cipher and limit of
//!   our key (its exact record count is read back from the kernel by [`resume`], never carried).
//!   The armed reset is a socket option, so it moves with the socket.
//! * **What never moves**: a relay that is half-closed or aborting (it finishes where it is, within
//!   `close_linger`), and the user-space path, whose TLS state is in rustls (it ignores the token).
//!   The deadlines do not move either: `idle_timeout` and `close_linger` start afresh on resume.
//! * [`resume`], in any process, checks each descriptor (connected TCP sockets; under kTLS a TX key
//!   of the state's cipher on the peer socket, whose `tls` ULP is not set again; the read and the
//!   write end of one pipe each way), registers the sockets with its runtime and continues byte
//!   for byte: nothing read is lost or read twice, and neither end notices the move.

pub(crate) mod handshake;
mod ktls;
mod poll_loop;
mod release;
mod splice;
mod userspace;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::metrics::ByteCounters;
use poll_loop::{arm_reset, disarm_reset};

pub use crate::config::Offload;
pub use handshake::{first_record, handshake, refuse};
pub use ktls::{KtlsSupport, KtlsUnavailable, support};
// The process hand-over (src/listener, src/lib.rs) moves connections with these.
#[allow(unused_imports)]
pub use release::{
    Finish, KtlsState, MAX_PENDING, PipeState, RelayState, Released, StateCipher, resume,
};

/// Deadlines that apply while relaying.
#[derive(Debug, Clone, Copy)]
pub struct RelayLimits {
    pub idle: Option<Duration>,
    pub linger: Duration,
}

/// Which path a connection's bytes take: the `offload` label of `ringseal_connections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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

/// How a relayed connection ended: `Clean`, or the cause of its abort (the first abnormal event; what
/// followed from it is not recorded). Every variant but `Clean` means both legs were reset.
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
    /// kTLS: the peer sent a KeyUpdate, which the kernel cannot follow.
    PeerKeyUpdate,
    /// kTLS: our key approached the cipher's confidentiality limit.
    KeyLimit,
    /// `offload = "require"` and this connection could not be offloaded (nothing was relayed; the peer
    /// got close_notify, like a peer whose backend cannot be reached).
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

    /// What the label leaves out: the error's text, for a log line.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Self::PeerTlsError(d) | Self::OffloadUnavailable(d) | Self::Io(d) => Some(d),
            _ => None,
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
    /// `Relay` it has moved into `run` for the connection's whole life, and inline that would be
    /// rustls's connection or the kTLS hand-over's state (README, *Benchmarks*).
    chosen: Box<ChosenPath>,
}

// Boxed whole in `Relay`; its variants are not boxed again.
#[allow(clippy::large_enum_variant)]
enum ChosenPath {
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
            // From here until both directions have finished in order, closing either socket for any
            // reason (an abort, the shutdown cut, a panic, the process killed) sends a reset.
            arm_reset(&tls);
            arm_reset(&plain);
            let chosen = match ktls::engage(tls, conn, plain, offload).await {
                ktls::Engage::Engaged(e) => ChosenPath::Ktls(e),
                ktls::Engage::Declined {
                    tcp,
                    conn,
                    plain,
                    why,
                } if offload != Offload::Require => {
                    tracing::trace!("user-space relay: {why}");
                    ChosenPath::Userspace(tcp, conn, plain)
                }
                ktls::Engage::Declined {
                    tcp,
                    conn,
                    plain,
                    why,
                } => {
                    // Nothing was relayed: the documented close_notify, as for a dead backend.
                    disarm_reset(&tcp);
                    disarm_reset(&plain);
                    close_without_data(tcp, conn).await;
                    ChosenPath::Refused(why.to_string())
                }
            };
            Self {
                chosen: Box::new(chosen),
            }
        })
    }

    /// The path for the connection counter; a connection refused under `offload = "require"` counts
    /// as `ktls`, the path it was required to take (and ends with `how="offload_unavailable"`).
    pub fn path(&self) -> Path {
        match *self.chosen {
            ChosenPath::Userspace(..) => Path::Userspace,
            ChosenPath::Ktls(_) | ChosenPath::Refused(_) => Path::Ktls,
        }
    }

    /// Relays until both directions finish, or (kTLS only) until `release` is cancelled and the
    /// relay reaches a quiescent point ([`Finish::Released`]). The future is the path's own relay (no
    /// more than it needs while the connection lives: it is part of every connection's task).
    pub fn run(
        self,
        limits: RelayLimits,
        counters: ByteCounters,
        release: CancellationToken,
    ) -> Run {
        Run(match *self.chosen {
            // rustls holds the TLS state in user space: this relay never moves.
            ChosenPath::Userspace(tls, conn, plain) => Running::Userspace(
                userspace::UserspaceRelay::new(tls, conn, plain, limits, counters),
            ),
            ChosenPath::Ktls(engaged) => {
                Running::Boxed(Box::pin(engaged.relay(limits, counters, release)))
            }
            ChosenPath::Refused(why) => Running::Refused(Some(Outcome {
                from_peer: 0,
                to_peer: 0,
                close: Close::OffloadUnavailable(why),
            })),
        })
    }
}

/// The future of [`Relay::run`].
pub struct Run(Running);

// One per connection: boxing the user-space relay would only add an allocation. The kTLS relay's
// future (and a resumed relay's) cannot be named here, so it is boxed (a few hundred bytes).
#[allow(clippy::large_enum_variant)]
enum Running {
    Userspace(userspace::UserspaceRelay),
    Boxed(Pin<Box<dyn Future<Output = Finish> + Send>>),
    Refused(Option<Outcome>),
}

impl Future for Run {
    type Output = Finish;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Finish> {
        match &mut self.get_mut().0 {
            Running::Userspace(r) => Pin::new(r).poll(cx).map(Finish::Done),
            Running::Boxed(r) => r.as_mut().poll(cx),
            Running::Refused(outcome) => Poll::Ready(Finish::Done(
                outcome.take().expect("polled after completion"),
            )),
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
             limit, aborts the connection",
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
pub fn close_without_data(
    tls: TcpStream,
    conn: rustls::Connection,
) -> impl Future<Output = ()> + Send {
    Box::pin(async move {
        let _ = tokio::time::timeout(
            CLOSE_DEADLINE,
            userspace::send_close_notify_and_fin(&tls, conn),
        )
        .await;
    })
}

/// How long [`close_without_data`] may take.
pub const CLOSE_DEADLINE: Duration = Duration::from_secs(1);

/// Relays plaintext both ways (permissive mode's plaintext legs) with `splice(2)`, propagating each end
/// of stream; `peer` is the side whose bytes count as `from_peer`. Same close policy (FIN in order,
/// resets on an abort) and deadlines as the TLS paths. Once `release` is cancelled, the relay is
/// released at its next quiescent point ([`Finish::Released`]).
pub fn plain(
    peer: TcpStream,
    backend: TcpStream,
    limits: RelayLimits,
    counters: ByteCounters,
    release: CancellationToken,
) -> impl Future<Output = Finish> + Send + use<> {
    arm_reset(&peer);
    arm_reset(&backend);
    splice::plain(peer, backend, limits, counters, release)
}
