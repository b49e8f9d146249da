//! The poll loop every relay path shares ([`drive`]): rounds of both directions until nothing moves,
//! the idle and linger deadlines, and an abort's drain-then-reset (the close semantics of [`super`]);
//! and for the kTLS and plaintext relays, [`Releasable`]: the same loop, released at a quiescent
//! point once asked to (see [`super::release`]).

use std::future::Future;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::{Close, Finish, Outcome, RelayLimits};

/// Rounds of a relay loop before yielding to the scheduler, so one busy connection cannot starve others.
const BUDGET: u32 = 32;

/// Arms the reset of a relayed socket: closing it sends a TCP reset instead of a FIN (`SO_LINGER`
/// 0), whatever closes it: an abort, the shutdown cut that drops the connection's task, a panic, or
/// the kernel when the process is killed. Only a connection whose directions both finished in order
/// disarms it ([`drive`]), so an end nobody asked for can never reach the other side as a FIN.
pub(super) fn arm_reset(sock: &TcpStream) {
    let _ = SockRef::from(sock).set_linger(Some(Duration::ZERO));
}

/// Undoes [`arm_reset`]: the close sends a FIN after whatever is still queued, as usual.
pub(super) fn disarm_reset(sock: &TcpStream) {
    let _ = SockRef::from(sock).set_linger(None);
}

/// The first poll interval of an aborted connection's send queues; it doubles up to
/// [`DRAIN_POLL_MAX`]. Nothing signals "acknowledged", so the queues are polled (aborts are rare).
const DRAIN_POLL_MIN: Duration = Duration::from_millis(1);
const DRAIN_POLL_MAX: Duration = Duration::from_millis(32);

/// The idle and linger deadlines of one connection, shared by every path, and the deadline of an
/// abort.
pub(super) struct Deadlines {
    limits: RelayLimits,
    pub(super) last_progress: Instant,
    idle_timer: Option<Pin<Box<Sleep>>>,
    linger_timer: Option<Pin<Box<Sleep>>>,
    /// Set when the connection aborts (boxed: most connections never do).
    abort: Option<Box<Abort>>,
}

/// An aborting connection: what was already received must be delivered within `close_linger` of the
/// abort, then both legs are reset.
struct Abort {
    deadline: Pin<Box<Sleep>>,
    /// Paces the polls of the send queues ([`poll_drained`]).
    tick: Option<Pin<Box<Sleep>>>,
    interval: Duration,
}

impl Deadlines {
    pub(super) fn new(limits: RelayLimits) -> Self {
        Self {
            limits,
            last_progress: Instant::now(),
            idle_timer: limits.idle.map(|d| Box::pin(tokio::time::sleep(d))),
            linger_timer: None,
            abort: None,
        }
    }

    fn progressed(&mut self) {
        self.last_progress = Instant::now();
    }

    /// The connection aborts: starts the abort's deadline (once).
    fn abort(&mut self) {
        if self.abort.is_none() {
            self.abort = Some(Box::new(Abort {
                deadline: Box::pin(tokio::time::sleep(self.limits.linger)),
                tick: None,
                interval: DRAIN_POLL_MIN,
            }));
        }
    }

    /// After a round that moved nothing: the deadline that has passed, if any (otherwise the timers are
    /// registered with `cx`). `half_closed`: one direction has finished, so `linger` runs. An aborting
    /// connection has its own deadline instead; when it passes, `LingerTimeout` is returned, but the
    /// outcome keeps the abort's cause (the first one noted).
    fn poll(&mut self, cx: &mut Context<'_>, half_closed: bool) -> Option<Close> {
        if let Some(abort) = self.abort.as_mut() {
            if abort.deadline.as_mut().poll(cx).is_ready() {
                return Some(Close::LingerTimeout);
            }
        } else if half_closed {
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
pub(super) trait Directions {
    /// One round of both directions; true if anything moved. Once [`Directions::aborted`], a round
    /// reads from neither socket: it only delivers what was already read, and sends no FIN or
    /// close_notify.
    fn step(&mut self, cx: &mut Context<'_>) -> bool;
    /// (up finished, down finished)
    fn finished(&self) -> (bool, bool);
    /// Something other than an orderly end happened (a cause is noted): the connection aborts.
    fn aborted(&self) -> bool;
    fn deadlines(&mut self) -> &mut Deadlines;
    /// The peer's and the backend's socket.
    fn sockets(&self) -> [&TcpStream; 2];
    /// The deadlines, and the sockets that can still be written (those to drain before the reset).
    fn drain_parts(&mut self) -> (&mut Deadlines, [Option<&TcpStream>; 2]);
    /// Records a deadline that passed and returns the outcome.
    fn end(&mut self, close: Option<Close>) -> Outcome;
    /// Whether the relay could be released now (see [`Release`]): nothing is half done. Asked
    /// between rounds only; the user-space relay never can be (rustls holds the TLS state).
    fn releasable(&self) -> bool {
        false
    }
}

/// A relay that can give up its connection at a quiescent point (see [`super::release`]).
pub(super) trait Release: Directions + Sized {
    /// Takes the relay apart: its descriptors (the sockets deregistered from this runtime) and its
    /// state. Only called when [`Directions::releasable`].
    fn release(self) -> Finish;
}

/// What [`drive_until`] came to.
pub(super) enum Driven {
    Done(Outcome),
    /// A round moved nothing, the relay is releasable, and a release was asked for.
    Release,
}

/// The poll loop every path shares: rounds until nothing moves (yielding after [`BUDGET`] rounds),
/// then the deadlines. When both directions have finished: in order, the resets are disarmed and the
/// sockets close with FIN; after an abort, once the kernel has delivered what was written (or the
/// abort's deadline passed), and the sockets close with a reset.
pub(super) fn drive<D: Directions>(this: &mut D, cx: &mut Context<'_>) -> Poll<Outcome> {
    drive_until(this, cx, false).map(|driven| match driven {
        Driven::Done(outcome) => outcome,
        Driven::Release => unreachable!("no release was asked for"),
    })
}

/// [`drive`], and with `release`, stops at the first round that moved nothing while the relay is
/// [`Directions::releasable`] (before any deadline: a released relay's deadlines start afresh).
pub(super) fn drive_until<D: Directions>(
    this: &mut D,
    cx: &mut Context<'_>,
    release: bool,
) -> Poll<Driven> {
    let mut rounds = 0;
    loop {
        let progress = this.step(cx);
        let aborted = this.aborted();
        if aborted {
            this.deadlines().abort();
        }
        let (up, down) = this.finished();
        if up && down {
            if !aborted {
                for sock in this.sockets() {
                    disarm_reset(sock);
                }
                return Poll::Ready(Driven::Done(this.end(None)));
            }
            let (deadlines, legs) = this.drain_parts();
            if poll_drained(cx, deadlines, legs).is_ready() {
                return Poll::Ready(Driven::Done(this.end(None)));
            }
            break;
        }
        if !progress {
            if release && !aborted && this.releasable() {
                return Poll::Ready(Driven::Release);
            }
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
        Some(close) => Poll::Ready(Driven::Done(this.end(Some(close)))),
        None => Poll::Pending,
    }
}

pin_project_lite::pin_project! {
    /// [`drive`] for a relay that can be released: until `release` is cancelled it is driven as
    /// any other, and while it is parked and releasable it also waits for the token (polled only
    /// then, so a relay that moves bytes pays nothing for it, and a half-closed or aborting one never
    /// again). Once cancelled, the relay is released at its next round that moves nothing, or
    /// finishes here if it stops being releasable first. A struct rather than an `async fn`, so that
    /// the relay is held once: it is part of every connection's task.
    pub(super) struct Releasable<D> {
        // `None` once finished.
        relay: Option<D>,
        requested: bool,
        #[pin]
        cancelled: WaitForCancellationFutureOwned,
    }
}

impl<D: Release + Unpin> Releasable<D> {
    pub(super) fn new(relay: D, release: CancellationToken) -> Self {
        Self {
            relay: Some(relay),
            requested: false,
            cancelled: release.cancelled_owned(),
        }
    }
}

impl<D: Release + Unpin> Future for Releasable<D> {
    type Output = Finish;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Finish> {
        let this = self.project();
        let relay = this.relay.as_mut().expect("polled after completion");
        let mut driven = drive_until(relay, cx, *this.requested);
        if driven.is_pending()
            && !*this.requested
            && relay.releasable()
            && this.cancelled.poll(cx).is_ready()
        {
            *this.requested = true;
            driven = drive_until(relay, cx, true);
        }
        let Poll::Ready(driven) = driven else {
            return Poll::Pending;
        };
        let relay = this.relay.take().expect("polled after completion");
        Poll::Ready(match driven {
            Driven::Done(outcome) => Finish::Done(outcome),
            Driven::Release => relay.release(),
        })
    }
}

/// Whether the kernel has delivered everything written to each socket in `legs` (polled: see
/// [`DRAIN_POLL_MIN`]). A reset before the last bytes were acknowledged would destroy them in flight;
/// after, the receiver reads them and then sees the reset.
fn poll_drained(
    cx: &mut Context<'_>,
    deadlines: &mut Deadlines,
    legs: [Option<&TcpStream>; 2],
) -> Poll<()> {
    if legs.into_iter().flatten().all(delivered) {
        return Poll::Ready(());
    }
    let Some(abort) = deadlines.abort.as_mut() else {
        return Poll::Ready(());
    };
    let interval = abort.interval;
    let tick = abort
        .tick
        .get_or_insert_with(|| Box::pin(tokio::time::sleep(interval)));
    while tick.as_mut().poll(cx).is_ready() {
        abort.interval = (abort.interval * 2).min(DRAIN_POLL_MAX);
        tick.as_mut()
            .reset(tokio::time::Instant::now() + abort.interval);
    }
    Poll::Pending
}

/// Everything written to `sock` has been acknowledged by its peer, or never will be (the connection was
/// reset meanwhile).
fn delivered(sock: &TcpStream) -> bool {
    crate::sys::unacknowledged(sock.as_fd()).map_or(true, |n| n == 0)
}

/// Which end of a relay an error came from, for the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Peer,
    Backend,
}

impl Side {
    pub(super) fn close_for(self, e: &std::io::Error) -> Close {
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

/// Where one direction of a relay stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Open,
    /// (backend -> peer only) send what is queued and close_notify, then FIN; neither close_notify
    /// nor FIN after an abort.
    Closing,
    Done,
}
