//! Release and resume: a kTLS or spliced-plaintext relay gives up its connection at a quiescent
//! point ([`Released`]: its descriptors and a serialisable [`RelayState`]), and [`resume`] continues
//! it from those parts, in this process or another one (the descriptors travel over `SCM_RIGHTS`).
//! See "Release and resume" in [`super`].

use std::io;
use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{Outcome, Path, RelayLimits, Run};
use crate::metrics::ByteCounters;

/// How a relay's future ends: the connection finished here, or it was released to be resumed.
#[derive(Debug)]
pub enum Finish {
    Done(Outcome),
    Released(Released),
}

/// A connection given up at a quiescent point: everything [`resume`] needs.
///
/// `fds`, on both paths: `[peer socket, backend socket, up pipe read end, up pipe write end, down
/// pipe read end, down pipe write end]` (up: peer -> backend). On the kTLS path the peer socket is
/// the kTLS one; on the plaintext path, the socket whose bytes count as `from_peer`.
#[derive(Debug)]
pub struct Released {
    pub state: RelayState,
    pub fds: Vec<OwnedFd>,
}

impl Released {
    pub fn path(&self) -> Path {
        self.state.path
    }

    /// (from_peer, to_peer): the bytes relayed so far, before the release.
    pub fn bytes(&self) -> (u64, u64) {
        (self.state.from_peer, self.state.to_peer)
    }
}

/// Everything of a released relay that is not in its descriptors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayState {
    /// `ktls` or `splice` (a user-space relay is never released).
    pub path: Path,
    pub from_peer: u64,
    pub to_peer: u64,
    /// The pipe peer -> backend.
    pub up: PipeState,
    /// The pipe backend -> peer.
    pub down: PipeState,
    /// kTLS only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ktls: Option<KtlsState>,
}

/// A pipe of a released relay: the bytes it holds move with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipeState {
    /// Bytes in the pipe (checked against the pipe on resume).
    pub held: usize,
    /// The pipe may still be grown (false once it has grown or the kernel refused).
    pub grow: bool,
}

/// What a kTLS relay holds besides its descriptors (the keys and sequence numbers stay in the
/// kernel, with the socket).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KtlsState {
    /// Plaintext from the peer already read into user space, not yet written to the backend.
    pub pending: Vec<u8>,
    /// We are the TLS client (a NewSessionTicket or HelloRequest is legitimate).
    pub client: bool,
    /// The TX key's cipher: the exact record count is read back from the kernel with it.
    pub cipher: StateCipher,
    /// The suite's confidentiality limit in records (the key stops at 7/8 of it).
    pub confidentiality_limit: u64,
}

/// The kTLS cipher of a released connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StateCipher {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

/// Continues a released relay from its parts: checks that the descriptors are what the state says
/// (TCP sockets, pipe ends holding the bytes the state counts), registers them with this process's
/// runtime and rebuilds the relay. Its deadlines start afresh.
pub fn resume(
    released: Released,
    limits: RelayLimits,
    counters: ByteCounters,
    release: CancellationToken,
) -> io::Result<Run> {
    let _ = (released, limits, counters, release);
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "resuming a relay is not implemented yet",
    ))
}

/// Relays a released connection to its end in this process (nobody took it over). A connection that
/// cannot be resumed is lost: its descriptors close, with the reset armed.
pub async fn take_back(
    mut released: Released,
    limits: RelayLimits,
    counters: ByteCounters,
) -> Outcome {
    loop {
        let (from_peer, to_peer) = released.bytes();
        let run = match resume(released, limits, counters.clone(), CancellationToken::new()) {
            Ok(run) => run,
            Err(e) => {
                return Outcome {
                    from_peer,
                    to_peer,
                    close: super::Close::Io(format!("cannot resume a released relay: {e}")),
                };
            }
        };
        match run.await {
            Finish::Done(outcome) => return outcome,
            // Not with a token nobody cancels; taken back again all the same.
            Finish::Released(r) => released = r,
        }
    }
}
