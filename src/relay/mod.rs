//! The relay: the only code that moves bytes between a verified TLS connection and its plaintext leg.
//!
//! Interface: [`relay`] takes the TLS socket with its finished rustls connection and the plaintext socket,
//! and returns an [`Outcome`] when both directions are finished. Later paths (kTLS, splice) replace the
//! inside, not this interface.
//!
//! # Close semantics (the documented policy)
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

mod userspace;

use std::time::Duration;

use tokio::net::TcpStream;

use crate::metrics::ByteCounters;

/// Deadlines that apply while relaying.
#[derive(Debug, Clone, Copy)]
pub struct RelayLimits {
    pub idle: Option<Duration>,
    pub linger: Duration,
}

/// How a relayed connection ended: the first notable event, or `Clean`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Close {
    /// Both sides closed in order (close_notify from the peer, FIN from the backend).
    Clean,
    /// The peer closed TCP without sending close_notify.
    PeerNoCloseNotify,
    PeerReset,
    /// The peer sent something rustls refused (bad record MAC, unexpected message ...).
    PeerTlsError(String),
    BackendReset,
    IdleTimeout,
    LingerTimeout,
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

/// Relays between `tls` (whose handshake is complete in `conn`) and `plain` until both directions finish.
pub async fn relay(
    tls: TcpStream,
    conn: rustls::Connection,
    plain: TcpStream,
    limits: RelayLimits,
    counters: ByteCounters,
) -> Outcome {
    userspace::Relay::new(tls, conn, plain, limits, counters).await
}

/// Ends a TLS connection that will carry no data (its backend could not be reached): close_notify, then
/// FIN, bounded by [`CLOSE_DEADLINE`] so a peer that does not read cannot hold the task.
pub async fn close(tls: TcpStream, conn: rustls::Connection) {
    let _ = tokio::time::timeout(CLOSE_DEADLINE, userspace::close(&tls, conn)).await;
}

/// How long [`close`] may take.
pub const CLOSE_DEADLINE: Duration = Duration::from_secs(1);

/// Relays plaintext both ways (permissive mode's plaintext legs), propagating each end of stream.
/// Byte counts are added when the connection ends.
pub async fn plain(mut a: TcpStream, mut b: TcpStream, counters: ByteCounters) -> Outcome {
    // 64 KiB each way, as the TLS path; splice(2) replaces this later.
    let result =
        tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, 64 * 1024, 64 * 1024).await;
    match result {
        Ok((from_peer, to_peer)) => {
            counters.from_peer.increment(from_peer);
            counters.to_peer.increment(to_peer);
            Outcome {
                from_peer,
                to_peer,
                close: Close::Clean,
            }
        }
        Err(e) => Outcome {
            from_peer: 0,
            to_peer: 0,
            close: match e.kind() {
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
                    Close::PeerReset
                }
                _ => Close::Io(e.to_string()),
            },
        },
    }
}
