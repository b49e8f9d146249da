//! Process hand-over: a new `ringseal run` started while an old one runs takes over its listening
//! sockets without a moment in which a connect is refused, and the old one then drains as on SIGTERM.
//!
//! How: the old process serves a Unix socket (`[handover] socket`, by default
//! `$RUNTIME_DIRECTORY/handover.sock`); the new one connects before binding anything and receives the
//! old one's listening sockets themselves, passed with `SCM_RIGHTS` over `SOCK_SEQPACKET`
//! ([`protocol`] has the exchange). Both processes then hold the *same* socket, so its accept queue is
//! shared: the new one accepts, then the old one stops accepting, and no connection queued meanwhile
//! is lost. `SO_REUSEPORT` was the alternative and is worse on both counts: each process gets a socket
//! of its own with its own queue, and closing the old one resets whatever sits in its queue (unless
//! `net.ipv4.tcp_migrate_req` is set); and any process of the same uid may bind into the group and
//! receive a share of the connections.
//!
//! Safety: the socket file is 0600 (only its owner, and root, may connect), both ends check the
//! other's credentials (`SO_PEERCRED`: same uid, else refused with a log line naming the uid and pid),
//! and the old process serves one hand-over at a time. Every step has a deadline ([`STEP_TIMEOUT`]),
//! so a stuck or hostile peer cannot hold the old process; messages are bounded in size and
//! descriptors ([`wire::MAX_MESSAGE`], [`wire::MAX_FDS`]). Until the new process confirms the end of
//! the hand-over, the old one keeps its listening sockets and resumes accepting if the new one goes
//! away: a failed hand-over leaves the old process serving everything.
//!
//! Connections: once the new process accepts, the old one asks its kTLS and spliced-plaintext relays
//! to release at a quiescent point (`crate::listener::moves`) and sends each one's sockets, pipes and
//! state; the new process acknowledges a connection before touching it (an old process that hears no
//! acknowledgement resumes it itself) and continues it under its listener of the same name. The new
//! process's policy (identity, trust, allow-lists) applies to new connections only: moved ones were
//! verified under the old one's, as a reload keeps them. User-space TLS connections (rustls holds
//! their state), and relays that are half-closed or aborting, stay and drain within
//! `limits.shutdown_grace`.

pub(crate) mod new;
pub(crate) mod old;
pub mod protocol;
pub(crate) mod wire;

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Duration;

pub use new::{Contact, HandoverError, Takeover, contact};
use protocol::Message;
use wire::Seq;

/// How long either side waits for the other's next message (the new process binds what it did not
/// receive in between: milliseconds).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Test-only hook: `RINGSEAL_TEST_HANDOVER_PAUSE=STEP:FILE` stops a hand-over at `STEP` (old side:
/// `hello`, `listeners`, `stopped`; new side: `adopt`, a connection received, not acknowledged) until
/// `FILE` exists (at most 30 s), so that a test can kill either
/// process at that point. Not for production use.
pub const TEST_PAUSE_ENV: &str = "RINGSEAL_TEST_HANDOVER_PAUSE";

async fn test_pause(step: &str) {
    let Some(v) = std::env::var_os(TEST_PAUSE_ENV) else {
        return;
    };
    let v = v.to_string_lossy();
    let Some((at, file)) = v.split_once(':') else {
        return;
    };
    if at != step {
        return;
    }
    tracing::warn!("{TEST_PAUSE_ENV} (test only): hand-over paused at {step} until {file} exists");
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    while !std::path::Path::new(file).exists() && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A step that failed: which message was awaited or sent, and why.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}")]
pub struct StepError {
    pub step: &'static str,
    #[source]
    pub source: io::Error,
}

async fn send(
    conn: &Seq,
    step: &'static str,
    m: &Message,
    fds: &[BorrowedFd<'_>],
) -> Result<(), StepError> {
    let fail = |source| StepError { step, source };
    match tokio::time::timeout(STEP_TIMEOUT, conn.send(&m.encode(), fds)).await {
        Ok(r) => r.map_err(fail),
        Err(_) => Err(fail(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("could not send within {}s", STEP_TIMEOUT.as_secs()),
        ))),
    }
}

async fn recv(conn: &Seq, step: &'static str) -> Result<(Message, Vec<OwnedFd>), StepError> {
    let fail = |source| StepError { step, source };
    match tokio::time::timeout(STEP_TIMEOUT, conn.recv()).await {
        Ok(Ok(Some((bytes, fds)))) => Ok((Message::decode(&bytes).map_err(fail)?, fds)),
        Ok(Ok(None)) => Err(fail(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the other process closed the connection (did it exit?)",
        ))),
        Ok(Err(e)) => Err(fail(e)),
        Err(_) => Err(fail(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {}s", STEP_TIMEOUT.as_secs()),
        ))),
    }
}

/// An answer that is not the one the step waits for.
fn unexpected(step: &'static str, got: &Message) -> StepError {
    StepError {
        step,
        source: io::Error::other(format!("got {} instead", got.name())),
    }
}

/// The listening sockets `config` asks for, as a hand-over names them.
pub fn wanted<Tls>(config: &crate::config::Config<Tls>) -> Vec<protocol::ListenerId> {
    use protocol::{Kind, ListenerId};
    let id = |kind, name: &str, listen| ListenerId {
        kind,
        name: name.to_owned(),
        listen,
    };
    let inbound = config
        .inbound
        .iter()
        .map(|l| id(Kind::Inbound, l.name.as_str(), l.listen));
    let outbound = config
        .outbound
        .iter()
        .map(|l| id(Kind::Outbound, l.name.as_str(), l.listen));
    let metrics = config
        .metrics
        .iter()
        .map(|m| id(Kind::Metrics, "metrics", m.listen));
    inbound.chain(outbound).chain(metrics).collect()
}
