//! The user-space TLS <-> plaintext relay, driving the rustls connection directly on non-blocking
//! sockets (not through tokio-rustls) so that this module alone decides when records are written, how
//! half-close propagates and what happens to bytes on a dead leg (the policy: [`super`]'s close
//! semantics). An abort stops every read from either socket; what was already read (and, from the
//! peer, authenticated: ciphertext already received is still decrypted) is delivered where it can
//! be, without close_notify or FIN, and [`super::poll_loop::drive`] then resets both legs.
//!
//! Most of a relayed byte's cost is the kernel's TCP work, so what this module controls, the number
//! of system calls, segments and wake-ups, is what matters (the measurements: README, *Benchmarks*):
//! * peer -> backend: one `recv` of up to [`MAX_IN`] ciphertext into `cin` feeds rustls many records;
//!   rustls holds at most about one record of plaintext at a time, so while more ciphertext waits in
//!   `cin`, the plaintext of every record decrypted is gathered into `pout` and written to the backend
//!   with ONE `send` when `pout` is full or nothing more has arrived (a 16 KiB copy costs far less than
//!   a system call and a TCP segment per record). A record that arrives alone (small messages) is
//!   written straight from rustls.
//! * backend -> peer: one `recv` of up to [`MAX_IN`] plaintext into `pin`; rustls encrypts it into full
//!   16 KiB records in its send queue ([`MAX_OUT`] at a time, its limit raised from 64 KiB), which goes
//!   out with ONE `writev`.
//!
//! * both: a read that returns less than the buffer had room for has emptied the socket, so the next
//!   read waits for readiness instead of making a `recv` that only returns `EAGAIN`
//!   ([`socket_io::try_read_drain`]).
//!
//! rustls's buffered API, not its unbuffered one: the unbuffered API copies as often (once more on
//! send, once less on receive) and would need the handshake rewritten around it.
//!
//! A quiet connection holds no buffer ([`buffer`]): buffers are lent by the worker thread for one poll
//! and grown only for a stream. Nothing is allocated per chunk here (rustls itself allocates one `Vec`
//! per record).

mod buffer;
mod socket_io;

use std::future::Future;
use std::io::{self, BufRead, Read, Write};
use std::net::Shutdown;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::poll_loop::{Deadlines, Directions, Phase, Side};
use super::{Close, Outcome, RelayLimits};
use crate::metrics::ByteCounters;
use buffer::{Buf, MAX_IN, MAX_OUT, SHRINK_AFTER};
use socket_io::{Dir, NbWrite, poll_nb, try_read_drain};

pub(super) use socket_io::send_close_notify_and_fin;

/// One connection on the user-space path: rustls encrypts and decrypts, both directions polled in
/// turn by [`super::poll_loop::drive`].
pub(super) struct UserspaceRelay {
    tls: TcpStream,
    plain: TcpStream,
    conn: rustls::Connection,
    /// Ciphertext received from the peer, not yet handed to rustls.
    cin: Buf,
    /// Plaintext decrypted by rustls, not yet written to the backend.
    pout: Buf,
    /// Plaintext received from the backend, not yet handed to rustls.
    pin: Buf,
    /// How the peer's stream ended, once rustls has no more plaintext: written out when `pout` is empty.
    up_end: Option<UpEnd>,
    /// No more ciphertext is read (EOF, reset, a TLS error, or an abort).
    tls_rd_done: bool,
    /// The TLS socket cannot be written any more.
    tls_wr_dead: bool,
    /// The peer broke the protocol: send it nothing more.
    tls_app_dead: bool,
    /// The backend socket cannot be written any more; peer data already read is discarded.
    plain_wr_dead: bool,
    up: Phase,
    down: Phase,
    /// The abort's cause (`None`: everything so far was in order).
    close: Option<Close>,
    from_peer: u64,
    to_peer: u64,
    counters: ByteCounters,
    deadlines: Deadlines,
    /// Fires [`SHRINK_AFTER`] after the last progress while buffers are grown; created on first use.
    shrink_timer: Option<Pin<Box<Sleep>>>,
}

impl UserspaceRelay {
    pub(super) fn new(
        tls: TcpStream,
        mut conn: rustls::Connection,
        plain: TcpStream,
        limits: RelayLimits,
        counters: ByteCounters,
    ) -> Self {
        // rustls's send queue (64 KiB by default) takes a whole `pin` at once, so a full buffer of
        // plaintext becomes one `writev` of full records.
        conn.set_buffer_limit(Some(MAX_OUT));
        Self {
            tls,
            plain,
            conn,
            cin: Buf::new(MAX_IN),
            pout: Buf::new(MAX_OUT),
            pin: Buf::new(MAX_IN),
            up_end: None,
            tls_rd_done: false,
            tls_wr_dead: false,
            tls_app_dead: false,
            plain_wr_dead: false,
            up: Phase::Open,
            down: Phase::Open,
            close: None,
            from_peer: 0,
            to_peer: 0,
            counters,
            deadlines: Deadlines::new(limits),
            shrink_timer: None,
        }
    }

    /// After a round that moved nothing: gives grown buffers back once the connection has been quiet
    /// for [`SHRINK_AFTER`] (otherwise the timer is registered with `cx`). The timer is reset only
    /// when it fires, so a busy connection pays nothing per wake-up.
    fn poll_shrink(&mut self, cx: &mut Context<'_>) {
        if !(self.cin.is_grown() || self.pin.is_grown() || self.pout.is_grown()) {
            return;
        }
        let due = self.deadlines.last_progress + SHRINK_AFTER;
        let timer = self
            .shrink_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due.into())));
        while timer.as_mut().poll(cx).is_ready() {
            let due = self.deadlines.last_progress + SHRINK_AFTER;
            if Instant::now() >= due {
                self.cin.shrink();
                self.pin.shrink();
                self.pout.shrink();
                return;
            }
            timer.as_mut().reset(due.into());
        }
    }

    /// The connection aborts; the first cause is kept, later ones are consequences of it.
    fn abort(&mut self, close: Close) {
        if self.close.is_none() {
            self.close = Some(close);
        }
    }

    fn aborting(&self) -> bool {
        self.close.is_some()
    }

    fn tls_err(&mut self, e: &io::Error) {
        self.abort(Side::Peer.close_for(e));
    }

    fn plain_err(&mut self, e: &io::Error) {
        self.abort(Side::Backend.close_for(e));
    }

    /// Writes whatever rustls has queued (records, alerts, KeyUpdate responses, close_notify).
    fn flush_tls(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while !self.tls_wr_dead && self.conn.wants_write() {
            let (conn, tls) = (&mut self.conn, &self.tls);
            match poll_nb(cx, tls, Dir::Write, || conn.write_tls(&mut NbWrite(tls))) {
                Poll::Pending => break,
                Poll::Ready(Ok(_)) => progress = true,
                Poll::Ready(Err(e)) => {
                    self.tls_err(&e);
                    self.tls_wr_dead = true;
                    progress = true;
                }
            }
        }
        progress
    }

    fn finish_up(&mut self) {
        if !self.plain_wr_dead && !self.aborting() {
            // FIN after everything written: the backend sees the end of the stream, nothing lost.
            let _ = SockRef::from(&self.plain).shutdown(Shutdown::Write);
        }
        self.up = Phase::Done;
    }

    /// Peer -> backend: gathers decrypted plaintext into `pout`, then writes it with one `send`.
    fn poll_up(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while self.up != Phase::Done {
            let gathered = match self.up_end {
                None => self.gather(cx, &mut progress),
                Some(_) => Gather::Ended,
            };
            if self.plain_wr_dead {
                // Already read; nowhere to go (and nothing more is read: the connection aborts).
                self.pout.clear();
            } else if !self.pout.is_empty() {
                let (plain, pout) = (&self.plain, &self.pout);
                match poll_nb(cx, plain, Dir::Write, || plain.try_write(pout.pending())) {
                    Poll::Pending => return progress,
                    Poll::Ready(Ok(n)) => {
                        self.pout.consume(n);
                        self.from_peer += n as u64;
                        self.counters.from_peer.increment(n as u64);
                    }
                    Poll::Ready(Err(e)) => {
                        self.plain_err(&e);
                        self.plain_wr_dead = true;
                    }
                }
                progress = true;
                continue;
            }
            match gathered {
                Gather::Pending => return progress,
                Gather::Full => {}
                Gather::Ended => {
                    match self.up_end.take() {
                        Some(UpEnd::Truncated) => self.abort(Close::PeerNoCloseNotify),
                        Some(UpEnd::Failed(e)) => self.abort(Close::Io(format!("peer: {e}"))),
                        _ => {}
                    }
                    self.finish_up();
                    progress = true;
                }
            }
        }
        progress
    }

    /// Moves decrypted plaintext towards the backend until `pout` is full, the peer's stream has ended
    /// (`up_end` set), the backend cannot take more, or nothing more has arrived (interest registered).
    fn gather(&mut self, cx: &mut Context<'_>, progress: &mut bool) -> Gather {
        loop {
            match self.take_plaintext(cx, progress) {
                Step::Again => continue,
                Step::Done(gathered) => return gathered,
                Step::Proceed => {}
            }
            match self.receive_ciphertext(cx, progress) {
                Step::Again => continue,
                Step::Done(gathered) => return gathered,
                Step::Proceed => {}
            }
            self.decrypt_one_record(cx);
        }
    }

    /// Takes the plaintext rustls holds: straight to the backend, or gathered into `pout`.
    /// `Proceed`: rustls needs more ciphertext.
    fn take_plaintext(&mut self, cx: &mut Context<'_>, progress: &mut bool) -> Step {
        if self.pout.is_empty() && self.cin.is_empty() {
            // Nothing to gather this plaintext with: it goes to the backend straight from rustls's
            // buffer, without a copy. The usual case for small messages, which therefore never
            // need `pout` at all.
            return match self.deliver_direct(cx) {
                Direct::Moved => {
                    *progress = true;
                    Step::Again
                }
                Direct::Blocked => Step::Done(Gather::Pending),
                Direct::Ended => Step::Done(Gather::Ended),
                Direct::NeedMore => Step::Proceed,
            };
        }
        if self.pout.spare().is_empty() {
            return Step::Done(Gather::Full);
        }
        match self.conn.reader().read(self.pout.spare()) {
            // close_notify received and all plaintext delivered.
            Ok(0) => {
                self.up_end = Some(UpEnd::Closed);
                Step::Done(Gather::Ended)
            }
            Ok(n) => {
                self.pout.filled(n);
                *progress = true;
                Step::Again
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::Proceed,
            Err(e) => {
                self.up_end = Some(UpEnd::from_reader(e));
                Step::Done(Gather::Ended)
            }
        }
    }

    /// rustls needs more ciphertext: reads the peer's socket into `cin` when it is empty.
    /// `Proceed`: `cin` holds ciphertext for rustls.
    fn receive_ciphertext(&mut self, cx: &mut Context<'_>, progress: &mut bool) -> Step {
        // An aborting connection reads no more from the socket, but what it has already received is
        // still decrypted (and so authenticated) and delivered.
        if self.aborting() {
            self.tls_rd_done = true;
        }
        if self.tls_rd_done && self.cin.is_empty() {
            self.up_end = Some(UpEnd::Closed);
            return Step::Done(Gather::Ended);
        }
        if !self.cin.is_empty() {
            return Step::Proceed;
        }
        let (tls, cin) = (&self.tls, &mut self.cin);
        match poll_nb(cx, tls, Dir::Read, || try_read_drain(tls, cin.spare())) {
            Poll::Pending => Step::Done(Gather::Pending),
            Poll::Ready(Ok(0)) => {
                // Let rustls see the EOF: its reader then tells a clean close_notify from a
                // truncation.
                let _ = self.conn.read_tls(&mut io::empty());
                self.tls_rd_done = true;
                *progress = true;
                Step::Again
            }
            Poll::Ready(Ok(n)) => {
                self.cin.filled(n);
                *progress = true;
                Step::Proceed
            }
            Poll::Ready(Err(e)) => {
                self.tls_err(&e);
                self.tls_rd_done = true;
                *progress = true;
                Step::Again
            }
        }
    }

    /// Gives rustls the next record in `cin` and processes it; records rustls produces in answer go
    /// out at once.
    fn decrypt_one_record(&mut self, cx: &mut Context<'_>) {
        // One record per round. rustls answers a KeyUpdate that requests an update with one
        // KeyUpdate for all the requests it processed before the next write (RFC 8446 4.6.3 allows
        // both), so a peer that sent several got one answer or several depending on how its
        // records happened to arrive; record by record, every request gets its answer.
        let pending = self.cin.pending();
        let one = record_end(pending);
        match self.conn.read_tls(&mut &pending[..one]) {
            Ok(n) => self.cin.consume(n),
            Err(e) => {
                self.abort(Close::Io(format!("tls buffer: {e}")));
                self.tls_rd_done = true;
                self.cin.clear();
            }
        }
        if let Err(e) = self.conn.process_new_packets() {
            // rustls queued an alert for the peer; flush_tls sends it. Nothing more goes to a peer
            // that broke the protocol, and nothing more comes from it.
            self.abort(Close::PeerTlsError(e.to_string()));
            self.tls_rd_done = true;
            self.tls_app_dead = true;
            self.cin.clear();
        }
        if self.down == Phase::Open && !self.tls_app_dead {
            // rustls holds the KeyUpdate it owes the peer (after a KeyUpdate with update_requested)
            // until the application next writes; an empty write releases it into the send queue
            // without producing a record.
            let _ = self.conn.writer().write(&[]);
        }
        if self.conn.wants_write() {
            // Records rustls produced by itself (KeyUpdate response, alert) go out now, not when the
            // backend next has something to say.
            self.flush_tls(cx);
        }
    }

    /// Writes the plaintext rustls holds straight to the backend (or discards it when the backend is
    /// dead).
    fn deliver_direct(&mut self, cx: &mut Context<'_>) -> Direct {
        let (plain, discard) = (&self.plain, self.plain_wr_dead);
        let mut reader = self.conn.reader();
        let written = match reader.fill_buf() {
            Ok([]) => {
                self.up_end = Some(UpEnd::Closed);
                return Direct::Ended;
            }
            Ok(chunk) if discard => {
                let n = chunk.len();
                reader.consume(n);
                return Direct::Moved;
            }
            Ok(chunk) => match poll_nb(cx, plain, Dir::Write, || plain.try_write(chunk)) {
                Poll::Pending => return Direct::Blocked,
                Poll::Ready(Ok(n)) => {
                    reader.consume(n);
                    Ok(n)
                }
                Poll::Ready(Err(e)) => Err(e),
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Direct::NeedMore,
            Err(e) => {
                self.up_end = Some(UpEnd::from_reader(e));
                return Direct::Ended;
            }
        };
        match written {
            Ok(n) => {
                self.from_peer += n as u64;
                self.counters.from_peer.increment(n as u64);
            }
            Err(e) => {
                self.plain_err(&e);
                self.plain_wr_dead = true;
            }
        }
        Direct::Moved
    }

    /// Backend -> peer.
    fn poll_down(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        loop {
            match self.down {
                Phase::Done => return progress,
                Phase::Closing => {
                    if !self.tls_wr_dead && self.conn.wants_write() {
                        progress |= self.flush_tls(cx);
                        if !self.tls_wr_dead && self.conn.wants_write() {
                            return progress;
                        }
                    }
                    if !self.tls_wr_dead && !self.aborting() {
                        let _ = SockRef::from(&self.tls).shutdown(Shutdown::Write);
                    }
                    self.down = Phase::Done;
                    progress = true;
                }
                Phase::Open => {
                    let discard = self.tls_wr_dead || self.tls_app_dead;
                    if discard {
                        self.pin.clear();
                    }
                    if !self.pin.is_empty() {
                        let n = self.conn.writer().write(self.pin.pending()).unwrap_or(0);
                        self.pin.consume(n);
                        self.to_peer += n as u64;
                        self.counters.to_peer.increment(n as u64);
                        progress |= n > 0;
                        progress |= self.flush_tls(cx);
                        if n == 0 {
                            if self.conn.wants_write() && !self.tls_wr_dead {
                                return progress; // send queue full and the socket is not writable
                            }
                            // rustls accepts nothing although its queue is empty: the connection is
                            // unusable for data.
                            self.tls_app_dead = true;
                        }
                        continue;
                    }
                    if self.aborting() {
                        // Nothing more is read from the backend; what rustls holds still goes out
                        // (Closing), without close_notify.
                        self.down = Phase::Closing;
                        progress = true;
                        continue;
                    }
                    let (plain, pin) = (&self.plain, &mut self.pin);
                    match poll_nb(cx, plain, Dir::Read, || try_read_drain(plain, pin.spare())) {
                        Poll::Pending => return progress,
                        Poll::Ready(Ok(0)) => {
                            if !discard {
                                self.conn.send_close_notify();
                            }
                            self.down = Phase::Closing;
                        }
                        Poll::Ready(Ok(n)) => self.pin.filled(n),
                        Poll::Ready(Err(e)) => {
                            self.plain_err(&e);
                            self.down = Phase::Closing;
                        }
                    }
                    progress = true;
                }
            }
        }
    }

    fn outcome(&mut self) -> Outcome {
        Outcome {
            from_peer: self.from_peer,
            to_peer: self.to_peer,
            close: self.close.take().unwrap_or(Close::Clean),
        }
    }
}

impl Directions for UserspaceRelay {
    fn step(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = self.flush_tls(cx);
        progress |= self.poll_up(cx);
        progress |= self.poll_down(cx);
        if !progress {
            self.poll_shrink(cx);
        }
        progress
    }

    fn finished(&self) -> (bool, bool) {
        (self.up == Phase::Done, self.down == Phase::Done)
    }

    fn aborted(&self) -> bool {
        self.aborting()
    }

    fn deadlines(&mut self) -> &mut Deadlines {
        &mut self.deadlines
    }

    fn sockets(&self) -> [&TcpStream; 2] {
        [&self.tls, &self.plain]
    }

    fn drain_parts(&mut self) -> (&mut Deadlines, [Option<&TcpStream>; 2]) {
        let tls = (!self.tls_wr_dead).then_some(&self.tls);
        let plain = (!self.plain_wr_dead).then_some(&self.plain);
        (&mut self.deadlines, [tls, plain])
    }

    fn end(&mut self, close: Option<Close>) -> Outcome {
        if let Some(close) = close {
            self.abort(close);
        }
        self.outcome()
    }
}

impl Future for UserspaceRelay {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = self.get_mut();
        let poll = super::poll_loop::drive(this, cx);
        this.cin.return_if_idle();
        this.pin.return_if_idle();
        this.pout.return_if_idle();
        poll
    }
}

/// Where the first record in `bytes` ends, or all of `bytes` while that record is incomplete.
fn record_end(bytes: &[u8]) -> usize {
    match bytes {
        [_, _, _, hi, lo, ..] => (5 + u16::from_be_bytes([*hi, *lo]) as usize).min(bytes.len()),
        _ => bytes.len(),
    }
}

/// What gathering decrypted plaintext came to.
enum Gather {
    /// `pout` has no room left.
    Full,
    /// Nothing more now: the peer socket's read readiness (or the backend's write readiness) is
    /// registered.
    Pending,
    /// No more plaintext will come: `up_end` says how the stream ended.
    Ended,
}

/// How the peer's stream ended.
enum UpEnd {
    /// close_notify (or the read side already finished for a reason noted before).
    Closed,
    /// TCP EOF without close_notify.
    Truncated,
    Failed(io::Error),
}

impl UpEnd {
    /// From an error of rustls's plaintext reader other than `WouldBlock`.
    fn from_reader(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Self::Truncated
        } else {
            Self::Failed(e)
        }
    }
}

/// What one step of [`UserspaceRelay::gather`] came to.
enum Step {
    /// Something moved (or the read side ended): go round again.
    Again,
    Done(Gather),
    /// Go on to the next step.
    Proceed,
}

/// What writing rustls's plaintext straight to the backend came to.
enum Direct {
    /// Bytes written (or discarded, or the backend found dead).
    Moved,
    /// The backend is not writable; its readiness is registered.
    Blocked,
    /// rustls holds no plaintext.
    NeedMore,
    /// No more plaintext will come: `up_end` says how the stream ended.
    Ended,
}
