//! The old process's side: serves the hand-over socket while the sidecar runs, one hand-over at a
//! time, and drives the sidecar's accept loops through [`Request`]s.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::protocol::{Kind, ListenerId, ListenerMoves, ListenerPolicy, Message, Refusal, VERSION};
use super::wire::{Peer, Seq, SeqListener, own_uid};
use super::{StepError, recv, send, test_pause, unexpected};
use crate::listener::moves::{Move, Moves};
use crate::metrics;

/// A listening socket the old process may hand over: how its config names it, where it is bound,
/// and a duplicate of its descriptor (the same socket).
pub struct Offer {
    pub id: ListenerId,
    pub bound: SocketAddr,
    pub fd: OwnedFd,
}

/// What the hand-over asks of the sidecar's serve loop.
pub enum Request {
    /// Stop the accept loops, keeping the listening sockets; answered once they stopped.
    Stop(oneshot::Sender<()>),
    /// The new process went away before the end: accept again.
    Resume,
    /// The new process owns the listeners now: close ours, drain, exit.
    Finish(Finished),
}

/// A finished hand-over, for the serve loop's log lines.
pub struct Finished {
    pub pid: u32,
    /// The listeners (kind, bound address) the new process took.
    pub handed: Vec<(Kind, SocketAddr)>,
    pub moved: u64,
    pub stayed: u64,
}

/// Per listener: the connections established now (they stay in this process unless they move), and
/// what connections verified now depend on (the new process compares it with its own config).
pub type Live =
    Arc<dyn Fn() -> Vec<(metrics::Listener, usize, crate::tls::PolicyPrint)> + Send + Sync>;

/// Serves hand-overs on `socket` until `stop`. Connections from another uid are refused (and logged);
/// while one hand-over runs, or after one succeeded, others are refused as busy.
pub async fn serve(
    socket: SeqListener,
    offers: Vec<Offer>,
    control: mpsc::Sender<Request>,
    live: Live,
    moves: Arc<Moves>,
    stop: CancellationToken,
) {
    let offers = Arc::new(offers);
    // The pid of the process taking (or that took) over.
    let busy: Arc<Mutex<Option<u32>>> = Arc::default();
    // Set with `busy`: from the moment a hand-over starts, the socket file is the taker's to replace.
    let keep = socket.keeper();
    loop {
        let conn = tokio::select! {
            _ = stop.cancelled() => return,
            c = socket.accept() => c,
        };
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("hand-over socket {}: accept: {e}", socket.path().display());
                // Only resource exhaustion fails an accept of a Unix socket: do not spin on it.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let peer = match conn.peer() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(
                    "hand-over socket: cannot read the peer's credentials: {e}; refused"
                );
                continue;
            }
        };
        let ours = own_uid();
        if peer.uid != ours {
            metrics::handover("old", "refused");
            tracing::warn!(
                pid = peer.pid,
                uid = peer.uid,
                "refused a hand-over to pid {} of uid {}: only a process of this one's uid {ours} may \
                 take over (run the new ringseal as the same user)",
                peer.pid,
                peer.uid
            );
            continue;
        }
        let pid = u32::try_from(peer.pid).unwrap_or_default();
        let taken = *busy.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(other) = taken {
            metrics::handover("old", "refused");
            tracing::warn!(
                "refused a hand-over to pid {pid}: pid {other} is taking over (or took over) already"
            );
            tokio::spawn(async move {
                // Its Hello first: closing with it unread would make its send fail before it reads
                // why.
                let _ = recv(&conn, "Hello").await;
                let m = Message::Refused {
                    reason: Refusal::Busy { pid: other },
                };
                let _ = send(&conn, "Refused", &m, &[]).await;
            });
            continue;
        }
        *busy.lock().unwrap_or_else(|e| e.into_inner()) = Some(pid);
        keep.store(true, Ordering::SeqCst);
        let (offers, control, live, busy, moves, keep) = (
            offers.clone(),
            control.clone(),
            live.clone(),
            busy.clone(),
            moves.clone(),
            keep.clone(),
        );
        tokio::spawn(async move {
            let ok = hand_over(conn, peer, &offers, &control, &live, &moves).await;
            if !ok {
                *busy.lock().unwrap_or_else(|e| e.into_inner()) = None;
                keep.store(false, Ordering::SeqCst);
            }
        });
    }
}

/// One hand-over to `peer`; true if it finished (the sidecar is draining now). On any failure the
/// sidecar keeps (or resumes) accepting on every listener.
async fn hand_over(
    conn: Seq,
    peer: Peer,
    offers: &[Offer],
    control: &mpsc::Sender<Request>,
    live: &Live,
    moves: &Moves,
) -> bool {
    let pid = u32::try_from(peer.pid).unwrap_or_default();
    tracing::info!("pid {pid} asks to take over");
    let listeners = match offer(&conn, offers, live).await {
        Ok(Some(l)) => l,
        Ok(None) => {
            metrics::handover("old", "refused");
            return false;
        }
        Err(e) => {
            metrics::handover("old", "failed");
            tracing::warn!(
                "hand-over to pid {pid} failed at {e}; this process keeps serving everything"
            );
            return false;
        }
    };
    // From here on the new process accepts on the listeners too.
    let (ack, stopped) = oneshot::channel();
    if control.send(Request::Stop(ack)).await.is_err() || stopped.await.is_err() {
        // The sidecar is shutting down already.
        return false;
    }
    test_pause("stopped").await;
    // Established now, moved or not.
    let per_listener: Vec<_> = live().into_iter().map(|(who, n, _)| (who, n)).collect();
    let mut moved = Vec::new();
    let done = async {
        moved = move_connections(&conn, moves).await?;
        let established: u64 = per_listener.iter().map(|(_, n)| *n as u64).sum();
        let m = Message::Done {
            moved: moved.len() as u64,
            stayed: established.saturating_sub(moved.len() as u64),
            listeners: per_listener
                .iter()
                .map(|(who, n)| {
                    let went = moved_from(&moved, who);
                    ListenerMoves {
                        direction: who.dir.as_str().to_owned(),
                        listener: who.name().to_owned(),
                        moved: went as u64,
                        stayed: (*n - went.min(*n)) as u64,
                    }
                })
                .collect(),
        };
        send(&conn, "Done", &m, &[]).await?;
        match recv(&conn, "Bye").await? {
            (Message::Bye, _) => Ok(()),
            (other, _) => Err(unexpected("Bye", &other)),
        }
    };
    if let Err(e) = done.await {
        metrics::handover("old", "failed");
        tracing::warn!(
            "hand-over to pid {pid} failed at {e}: accepting again on every listener; this process \
             keeps serving everything"
        );
        let _ = control.send(Request::Resume).await;
        return false;
    }
    metrics::handover("old", "ok");
    let moved_total = moved.len() as u64;
    let established: u64 = per_listener.iter().map(|(_, n)| *n as u64).sum();
    let stayed = established.saturating_sub(moved_total);
    // Counted by the new process (`ListenerMoves` in Done): this one's /metrics went with it.
    let finished = Finished {
        pid,
        handed: listeners,
        moved: moved_total,
        stayed,
    };
    let _ = control.send(Request::Finish(finished)).await;
    true
}

/// How long the old process waits for its movable relays to reach a quiescent point and release. A
/// relay that is half-closed or aborting never releases: it stays, like a user-space one.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Asks every movable relay to release and sends each released one to the new process, which
/// acknowledges it before touching it. Returns (direction, listener) of each one moved. On an error
/// the connection in flight and every one released after it resume here.
async fn move_connections(
    conn: &Seq,
    moves: &Moves,
) -> Result<Vec<(metrics::Direction, String)>, StepError> {
    let mut released = moves.begin();
    let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
    let mut moved = Vec::new();
    let mut id = 0u64;
    let result = loop {
        let next = tokio::select! {
            m = released.recv() => m,
            _ = tokio::time::sleep(std::time::Duration::from_millis(10)) => None,
        };
        let Some(m) = next else {
            // Every movable relay has released (or ended), or the wait is over.
            if (moves.live() == 0 && released.is_empty()) || tokio::time::Instant::now() >= deadline
            {
                break Ok(moved);
            }
            continue;
        };
        id += 1;
        let Move {
            meta,
            released: parts,
            reply,
        } = m;
        let dir = match meta.direction.as_str() {
            "outbound" => metrics::Direction::Outbound,
            _ => metrics::Direction::Inbound,
        };
        let name = meta.listener.clone();
        let message = Message::Connection {
            id,
            meta,
            state: parts.state.clone(),
        };
        let fds: Vec<_> = parts.fds.iter().map(|f| f.as_fd()).collect();
        let sent = async {
            send(conn, "Connection", &message, &fds).await?;
            match recv(conn, "Adopted").await? {
                (Message::Adopted { id: acked }, _) if acked == id => Ok(()),
                (other, _) => Err(unexpected("Adopted", &other)),
            }
        }
        .await;
        drop(fds);
        match sent {
            Ok(()) => {
                // Ours no longer: the descriptors close here, the sockets live on in the new process.
                drop(parts);
                let _ = reply.send(None);
                moved.push((dir, name));
            }
            Err(e) => {
                let _ = reply.send(Some(parts));
                break Err(e);
            }
        }
    };
    // Those released from now on, or queued, resume here.
    moves.end();
    released.close();
    while let Ok(m) = released.try_recv() {
        let _ = m.reply.send(Some(m.released));
    }
    result
}

/// Whether the new process's listener `want` takes over `offer`: same kind, and its configured
/// address is the one configured here or the one bound here (a port 0 resolved). Two listeners on
/// port 0 of one address are told apart by name. Each socket goes at most once.
fn matches(offer: &Offer, want: &ListenerId) -> bool {
    offer.id.kind == want.kind
        && (offer.bound == want.listen
            || (offer.id.listen == want.listen
                && (want.listen.port() != 0 || offer.id.name == want.name)))
}

/// Hello -> Listeners, then waits for Accepting. `None`: refused (version). Returns the listeners
/// handed (kind, bound address).
async fn offer(
    conn: &Seq,
    offers: &[Offer],
    live: &Live,
) -> Result<Option<Vec<(Kind, SocketAddr)>>, StepError> {
    let wanted = match recv(conn, "Hello").await? {
        (
            Message::Hello {
                version, listeners, ..
            },
            _,
        ) if version == VERSION => listeners,
        (Message::Hello { version, .. }, _) => {
            tracing::warn!(
                "refused a hand-over: the new process speaks hand-over version {version}, this one \
                 {VERSION}"
            );
            let m = Message::Refused {
                reason: Refusal::Version { version: VERSION },
            };
            send(conn, "Refused", &m, &[]).await?;
            return Ok(None);
        }
        (other, _) => return Err(unexpected("Hello", &other)),
    };
    test_pause("hello").await;
    let mut used = vec![false; offers.len()];
    let (mut ids, mut fds, mut handed) = (Vec::new(), Vec::new(), Vec::new());
    for w in wanted.iter().take(super::wire::MAX_FDS) {
        let found = offers
            .iter()
            .enumerate()
            .position(|(i, o)| !used[i] && matches(o, w));
        if let Some(i) = found {
            used[i] = true;
            let o = &offers[i];
            ids.push(ListenerId {
                kind: w.kind,
                name: o.id.name.clone(),
                listen: w.listen,
            });
            fds.push(o.fd.as_fd());
            handed.push((o.id.kind, o.bound));
        }
    }
    let policies = live()
        .into_iter()
        .map(|(who, _, print)| ListenerPolicy {
            direction: who.dir.as_str().to_owned(),
            listener: who.name().to_owned(),
            print,
        })
        .collect();
    let m = Message::Listeners {
        pid: std::process::id(),
        listeners: ids,
        policies,
    };
    send(conn, "Listeners", &m, &fds).await?;
    test_pause("listeners").await;
    match recv(conn, "Accepting").await? {
        (Message::Accepting, _) => Ok(Some(handed)),
        (other, _) => Err(unexpected("Accepting", &other)),
    }
}

/// How many of `moved` came from the listener `who`.
fn moved_from(
    moved: &[(crate::metrics::Direction, String)],
    who: &crate::metrics::Listener,
) -> usize {
    moved
        .iter()
        .filter(|(dir, name)| *dir == who.dir && name == who.name())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(kind: Kind, name: &str, listen: &str, bound: &str) -> Offer {
        Offer {
            id: ListenerId {
                kind,
                name: name.into(),
                listen: listen.parse().unwrap(),
            },
            bound: bound.parse().unwrap(),
            fd: std::fs::File::open("/dev/null").unwrap().into(),
        }
    }

    fn want(kind: Kind, name: &str, listen: &str) -> ListenerId {
        ListenerId {
            kind,
            name: name.into(),
            listen: listen.parse().unwrap(),
        }
    }

    /// A hand-over under way when the serving task is dropped without seeing its stop (the runtime
    /// shutting down first): the socket file stays, the taker's to replace. Removed by name, it could
    /// be the taker's own file, renamed over this one between the look at its inode and the removal.
    #[tokio::test]
    async fn a_serving_task_dropped_mid_hand_over_leaves_the_socket_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sock");
        let socket = SeqListener::bind(&path).unwrap();
        let (control, _requests) = mpsc::channel(4);
        let live: Live = Arc::new(Vec::new);
        let moves = Arc::new(Moves::default());
        let serving = tokio::spawn(serve(
            socket,
            Vec::new(),
            control,
            live,
            moves,
            CancellationToken::new(),
        ));
        let taker = Seq::connect(&path).unwrap();
        let hello = Message::Hello {
            version: VERSION,
            pid: std::process::id(),
            listeners: Vec::new(),
        };
        send(&taker, "Hello", &hello, &[]).await.unwrap();
        // The answer comes from the hand-over's task: it has started.
        let (answer, _) = recv(&taker, "Listeners").await.unwrap();
        assert_eq!(answer.name(), "Listeners");
        serving.abort();
        assert!(serving.await.unwrap_err().is_cancelled());
        assert!(path.exists(), "the socket file was removed under the taker");
    }

    #[test]
    fn listeners_match_by_kind_and_configured_or_bound_address() {
        let fixed = offer(Kind::Inbound, "a", "0.0.0.0:7001", "0.0.0.0:7001");
        assert!(matches(
            &fixed,
            &want(Kind::Inbound, "renamed", "0.0.0.0:7001")
        ));
        assert!(!matches(&fixed, &want(Kind::Outbound, "a", "0.0.0.0:7001")));
        assert!(!matches(&fixed, &want(Kind::Inbound, "a", "0.0.0.0:7002")));
        let ephemeral = offer(Kind::Inbound, "a", "127.0.0.1:0", "127.0.0.1:40000");
        // The port it got, or port 0 again under the same name; another port-0 listener is another
        // listener.
        assert!(matches(
            &ephemeral,
            &want(Kind::Inbound, "b", "127.0.0.1:40000")
        ));
        assert!(matches(
            &ephemeral,
            &want(Kind::Inbound, "a", "127.0.0.1:0")
        ));
        assert!(!matches(
            &ephemeral,
            &want(Kind::Inbound, "b", "127.0.0.1:0")
        ));
        let metrics = offer(Kind::Metrics, "metrics", "127.0.0.1:9464", "127.0.0.1:9464");
        assert!(!matches(
            &metrics,
            &want(Kind::Inbound, "metrics", "127.0.0.1:9464")
        ));
    }
}
