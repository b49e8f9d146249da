//! Connections that move to a new process: the per-process registry a hand-over (`crate::handover`)
//! uses to ask relayed connections to let go, and the adoption of those a new process receives.
//!
//! A relayed connection on a movable path (kTLS, spliced plaintext) runs its relay with the
//! registry's release token. When a hand-over cancels it, the relay stops at its next quiescent point
//! (`relay::Finish::Released`) and its task offers the parts ([`Meta`] + `relay::Released`) to the
//! hand-over, then waits: moved (the new process acknowledged it: the task ends, counted neither as
//! closed nor as cut) or not (the task resumes the relay here and goes on). User-space relays never
//! release: they stay until they end or `limits.shutdown_grace`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::admission::Admission;
use super::{Ended, Session};
use crate::metrics::{self, ActiveConnection, Direction};
use crate::relay::{self, Close, Finish, Outcome, RelayLimits, Released};

/// This process's movable connections.
pub struct Moves {
    state: Mutex<State>,
    /// Movable relays running now (not released).
    live: AtomicUsize,
}

struct State {
    release: CancellationToken,
    /// Where released connections go while a hand-over takes them.
    to: Option<mpsc::UnboundedSender<Move>>,
}

impl Default for Moves {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                release: CancellationToken::new(),
                to: None,
            }),
            live: AtomicUsize::new(0),
        }
    }
}

/// A released connection offered to the hand-over. `reply`: `None` moved, `Some` given back.
pub struct Move {
    pub meta: Meta,
    pub released: Released,
    pub reply: oneshot::Sender<Option<Released>>,
}

/// What the connection-end line and the metrics of a moved connection need, besides the relay's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    pub listener: String,
    /// `inbound` or `outbound`.
    pub direction: String,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// `None`: a permissive plaintext connection.
    pub tls: Option<TlsMeta>,
    /// Seconds since it was accepted.
    pub age_seconds: f64,
    pub from_peer: u64,
    pub to_peer: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsMeta {
    pub protocol: String,
    pub suite: String,
    /// The verified peer's certificate subject, when it was read.
    pub identity: Option<String>,
}

impl Moves {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The token movable relays run with now.
    pub fn token(&self) -> CancellationToken {
        self.lock().release.clone()
    }

    /// Movable relays running now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Asks every movable relay to release; they arrive on the returned channel until [`Moves::end`].
    pub fn begin(&self) -> mpsc::UnboundedReceiver<Move> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut state = self.lock();
        state.to = Some(tx);
        state.release.cancel();
        rx
    }

    /// The hand-over takes no more: relays released from now on resume here, with a fresh token.
    pub fn end(&self) {
        let mut state = self.lock();
        state.to = None;
        state.release = CancellationToken::new();
    }

    fn track(&self) -> LiveGuard<'_> {
        self.live.fetch_add(1, Ordering::SeqCst);
        LiveGuard(self)
    }

    /// Offers a released relay; `None`: it moved. `live` is dropped once it is queued, so that a
    /// hand-over that sees no live relay and an empty queue has every released one.
    async fn offer(&self, meta: Meta, released: Released, live: LiveGuard<'_>) -> Option<Released> {
        let to = self.lock().to.clone();
        let Some(to) = to else {
            return Some(released);
        };
        let (reply, answer) = oneshot::channel();
        let queued = to.send(Move {
            meta,
            released,
            reply,
        });
        drop(live);
        match queued {
            Err(mpsc::error::SendError(m)) => Some(m.released),
            // A hand-over always answers; were it gone without answering, the parts went with it.
            Ok(()) => answer.await.unwrap_or(None),
        }
    }
}

struct LiveGuard<'a>(&'a Moves);

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs a relayed connection to its end: `first` is its relay (run with [`Moves::token`] when
/// `movable`). Released for a hand-over, it moves or resumes here. Counts and logs the end
/// (`report_close`) unless it moved.
///
/// `first` is pinned by the caller: awaited by value, the relay (1.5 KiB with rustls's connection)
/// would be held twice in every connection's task, as this future's argument and as what it awaits
/// (README, *Idle memory, again*).
pub async fn relay_to_end(
    moves: &Moves,
    movable: bool,
    first: Pin<&mut (dyn Future<Output = Finish> + Send)>,
    active: ActiveConnection,
    ended: &Ended,
    limits: RelayLimits,
    log_connections: bool,
) {
    let (mut finish, mut live) = if movable {
        let live = moves.track();
        (first.await, Some(live))
    } else {
        (first.await, None)
    };
    loop {
        let released = match finish {
            Finish::Done(outcome) => {
                drop(live);
                return super::report_close(active, ended, &outcome, log_connections);
            }
            Finish::Released(r) => r,
        };
        let meta = Meta::of(&active, ended, released.bytes());
        let guard = live.take().unwrap_or_else(|| moves.track());
        // Boxed: a hand-over is rare, and inline its state would be part of every connection's task.
        let Some(released) = Box::pin(moves.offer(meta, released, guard)).await else {
            tracing::debug!(
                listener = active.listener(),
                peer = %ended.peer,
                "{} connection with {} moved to the new process",
                active.direction().as_str(),
                ended.peer
            );
            return active.moved();
        };
        let (from_peer, to_peer) = released.bytes();
        // Boxed at once: inline (also as the match's scrutinee), a resumed relay's space would be
        // reserved in every connection's task.
        let resumed = relay::resume(released, limits, active.bytes.clone(), moves.token());
        match resumed.map(Box::pin) {
            Ok(run) => {
                let guard = moves.track();
                finish = run.await;
                live = Some(guard);
            }
            Err(e) => {
                drop(live);
                let outcome = Outcome {
                    from_peer,
                    to_peer,
                    close: Close::Io(format!(
                        "cannot resume the relay after a hand-over that did not take it: {e}"
                    )),
                };
                return super::report_close(active, ended, &outcome, log_connections);
            }
        }
    }
}

impl Meta {
    fn of(active: &ActiveConnection, ended: &Ended, (from_peer, to_peer): (u64, u64)) -> Self {
        Self {
            listener: active.listener().to_owned(),
            direction: active.direction().as_str().to_owned(),
            peer: ended.peer,
            local: ended.local,
            tls: ended.tls.as_ref().map(|t| TlsMeta {
                protocol: t.protocol.to_owned(),
                suite: t.suite.to_owned(),
                identity: t.identity.clone(),
            }),
            age_seconds: ended.started.elapsed().as_secs_f64(),
            from_peer,
            to_peer,
        }
    }

    fn direction(&self) -> Option<Direction> {
        match self.direction.as_str() {
            "inbound" => Some(Direction::Inbound),
            "outbound" => Some(Direction::Outbound),
            _ => None,
        }
    }
}

/// A listener of this process that adopted connections join: its labels and budgets.
pub struct Joinable {
    pub who: metrics::Listener,
    pub admission: Arc<Admission>,
    pub limits: RelayLimits,
    pub log_connections: bool,
}

/// The new process's side: continues connections received from the old one under its listener of the
/// same name (or, with none, under the name they had, with this process's limits).
pub struct Adopter {
    pub listeners: Vec<Joinable>,
    pub moves: Arc<Moves>,
    pub life: super::Lifecycle,
    /// For a connection whose listener is gone.
    pub limits: RelayLimits,
    pub log_connections: bool,
}

impl Adopter {
    /// Continues `released` in its own tracked task. The error says why it could not (its
    /// descriptors are closed then: the connection is lost).
    pub fn adopt(&self, meta: Meta, released: Released) -> Result<(), String> {
        let dir = meta
            .direction()
            .ok_or_else(|| format!("unknown direction {:?}", meta.direction))?;
        let joined = self
            .listeners
            .iter()
            .find(|l| l.who.dir == dir && l.who.name() == meta.listener);
        let (who, slot, limits, log) = match joined {
            // Its place even beyond max_connections: it was established before the hand-over.
            Some(l) => (
                l.who.clone(),
                l.admission.adopt(),
                l.limits,
                l.log_connections,
            ),
            None => (
                metrics::Listener::new(dir, meta.listener.as_str().into()),
                None,
                self.limits,
                self.log_connections,
            ),
        };
        let path = released.path();
        let active = ActiveConnection::adopted(&who, meta.tls.is_some());
        let run = relay::resume(released, limits, active.bytes.clone(), self.moves.token())
            .map_err(|e| format!("cannot resume its relay: {e}"))?;
        let ended = Ended {
            peer: meta.peer,
            local: meta.local,
            tls: meta.tls.as_ref().map(|t| Session {
                protocol: crate::tls::suites::known_name(&t.protocol),
                suite: crate::tls::suites::known_name(&t.suite),
                identity: t.identity.clone(),
            }),
            offload: path.label(),
            started: Instant::now()
                .checked_sub(Duration::from_secs_f64(meta.age_seconds.clamp(0.0, 1e9)))
                .unwrap_or_else(Instant::now),
        };
        let moves = self.moves.clone();
        let cut = self.life.cut.clone();
        // Boxed here, not pinned in the task: the task would hold it twice (captured, and pinned).
        let mut run = Box::pin(run);
        self.life.tracker.spawn(async move {
            let _slot = slot;
            tokio::select! {
                _ = cut.cancelled() => {}
                _ = relay_to_end(&moves, true, run.as_mut(), active, &ended, limits, log) => {}
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection's task holds this future for the connection's whole life, so its size is
    /// idle memory per connection: the relay it runs must be held once, by the caller, and a resumed
    /// relay boxed. Awaiting either by value here held the relay twice in every task (README,
    /// *Idle memory, again*).
    #[test]
    fn the_task_holds_the_relay_once() {
        let moves = Moves::default();
        let who = metrics::Listener::new(Direction::Inbound, Arc::from("internode"));
        let active = ActiveConnection::start(&who, true, "userspace");
        let addr: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let ended = Ended {
            peer: addr,
            local: addr,
            tls: None,
            offload: "userspace",
            started: Instant::now(),
        };
        let limits = RelayLimits {
            idle: None,
            linger: Duration::from_secs(1),
        };
        let mut relay = std::pin::pin!(std::future::pending::<Finish>());
        let fut = relay_to_end(&moves, true, relay.as_mut(), active, &ended, limits, false);
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 768, "relay_to_end's future is {size} bytes");
    }
}
