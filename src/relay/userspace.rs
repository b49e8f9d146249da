//! The user-space TLS <-> plaintext relay, driving the rustls connection directly on non-blocking
//! sockets (not through tokio-rustls) so that this module alone decides when records are written, how
//! half-close propagates and what happens to bytes on a dead leg (the policy: [`super`]'s close
//! semantics). An abort stops every read from either socket; what was already read (and, from the
//! peer, authenticated: ciphertext already received is still decrypted) is delivered where it can
//! be, without close_notify or FIN, and [`super::drive`] then resets both legs.
//!
//! What a byte costs, and why the buffers are what they are. Profiled on loopback
//! (`benches/relay_throughput.rs`), about three quarters of the relay's CPU time is the kernel's TCP
//! work (copies into and out of socket buffers, segments, wake-ups), AES-GCM an eighth, copies in user
//! space a twentieth. So what this module controls, the number of system calls, segments and wake-ups,
//! is what matters:
//! * peer -> backend: one `recv` of up to [`MAX_IN`] ciphertext into `cin` feeds rustls many records;
//!   rustls holds at most about one record of plaintext at a time, so while more ciphertext waits in
//!   `cin`, the plaintext of every record decrypted is gathered into `pout` and written to the backend
//!   with ONE `send` when `pout` is full or nothing more has arrived (a 16 KiB copy costs far less than
//!   a system call and a TCP segment per record: one `send` per 16 KiB before, one per up to
//!   [`MAX_OUT`] now). A record that arrives alone (small messages) is written straight from rustls.
//! * backend -> peer: one `recv` of up to [`MAX_IN`] plaintext into `pin`; rustls encrypts it into full
//!   16 KiB records in its send queue ([`MAX_OUT`] at a time, its limit raised from 64 KiB), which goes
//!   out with ONE `writev`.
//!
//! Why not rustls's unbuffered API: in rustls 0.23 it does not decrypt in place either. It decrypts in
//! the caller's buffer, then copies each record's plaintext into a fresh `Vec`
//! (`CommonState::take_received_plaintext`), exactly as the buffered API does; and it encrypts each
//! record into a fresh `Vec` that it then copies into the caller's buffer (`write_fragments`), one copy
//! more than the buffered API's send queue. It would save one copy on receive (`read_tls` copying
//! from `cin`), lose one on send, and need the handshake rewritten around it. In-place decryption for
//! the unbuffered API is merged upstream (rustls/rustls#2746) but not in 0.23.46; with it the receive
//! side could drop two copies.
//!
//! A quiet connection holds no buffer: buffers of [`MIN_BUF`] are lent by the worker thread for one
//! poll and given back at its end when empty; a read that fills one makes it grow, and grown buffers
//! stay with the connection until [`SHRINK_AFTER`] without traffic. Nothing is allocated per chunk
//! here (rustls itself allocates one `Vec` per record, see above). Measured 2026-11-22
//! (`ringseal bench --compare haproxy --tests bulk,memory`, 9,968 idle connections that each echoed
//! one byte, medians of 3, load average 0.2-2.5): 12.4 KiB per connection on the outbound side,
//! 16.4 KiB inbound (HAProxy 30.7 / 22.8), down from 52.5 / 54.9 KiB with 16 KiB buffers held from
//! the first poll and a connection task of 27 KiB (now 4.6-4.7 KiB, see `Relay::start`); most of
//! what remains is rustls's (its record buffer alone about 6 KiB). Bulk unchanged by this: 0.78-0.81
//! proxy CPU-s/GB against 0.84 before, HAProxy 1.59-1.76, in the same runs.

use std::cell::RefCell;
use std::future::Future;
use std::io::{self, BufRead, Read, Write};
use std::net::Shutdown;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::{Close, Deadlines, Directions, Outcome, RelayLimits, Side};
use crate::metrics::ByteCounters;

/// The size of a buffer before it grows: 16 KiB, one full TLS record. A connection holds no buffer of
/// this size while it is quiet: each is lent from the worker thread's [`SPARE`] for one poll and given
/// back at the end of it if it is empty then (small messages, gossip and mutations, are relayed within
/// the poll that read them). The first read that fills a buffer grows it, and the connection keeps
/// that one (a bulk stream) until [`SHRINK_AFTER`].
const MIN_BUF: usize = 16 * 1024;
/// Empty [`MIN_BUF`] buffers a worker thread keeps for lending; a connection uses at most three at
/// once (`cin`, `pin`, `pout`).
const SPARE_KEPT: usize = 4;

thread_local! {
    /// The worker thread's empty buffers of [`MIN_BUF`], lent to connections for one poll.
    static SPARE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A [`MIN_BUF`] buffer from the thread's [`SPARE`], or a new one.
fn lend() -> Box<[u8]> {
    SPARE
        .with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| vec![0; MIN_BUF].into_boxed_slice())
}

/// Gives an empty [`MIN_BUF`] buffer back to the thread's [`SPARE`] (or frees it when that is full).
fn give_back(buf: Box<[u8]>) {
    SPARE.with_borrow_mut(|spare| {
        if spare.len() < SPARE_KEPT {
            spare.push(buf);
        }
    });
}
/// Buffers that sockets are read into (`cin`, `pin`) grow to 768 KiB once a read fills them: a reader
/// that was scheduled late drains everything queued in one `recv`, so fewer reads and wake-ups per
/// byte. Measured on loopback (benches/relay_throughput.rs, 2 cores): 768 KiB and 1 MiB cost ~10% less
/// CPU per byte than 256 KiB; 512 KiB is in between and 2 MiB no better.
const MAX_IN: usize = 768 * 1024;
/// What is written to a socket at once (`pout`, and rustls's send queue) grows to 256 KiB: 16 full
/// records per `send`/`writev`. Larger writes (512 KiB, 1 MiB) measured worse, more so on a busy
/// machine.
const MAX_OUT: usize = 256 * 1024;
/// Grown buffers are released once the connection has moved nothing for this long, so that only
/// connections streaming right now hold large buffers (about 2 MiB at most each), not every connection
/// that ever did.
const SHRINK_AFTER: Duration = Duration::from_secs(5);

/// A byte buffer whose unconsumed bytes are `data[pos..len]`. Reads append at `len`; once everything
/// is consumed both go back to 0 (and the buffer grows then, if the last fill asked for it).
struct Buf {
    data: Box<[u8]>,
    pos: usize,
    len: usize,
    /// The size it grows to.
    max: usize,
    grow: bool,
}

impl Buf {
    /// Allocated at the first read into it.
    fn new(max: usize) -> Self {
        Self {
            data: Box::default(),
            pos: 0,
            len: 0,
            max,
            grow: false,
        }
    }

    /// Grown beyond [`MIN_BUF`].
    fn is_grown(&self) -> bool {
        self.data.len() > MIN_BUF
    }

    /// Gives a [`MIN_BUF`] buffer back to the thread's [`SPARE`] if it is empty (the end of every
    /// poll): a quiet connection holds none.
    fn give_back(&mut self) {
        if self.is_empty() && self.data.len() == MIN_BUF && !self.grow {
            give_back(std::mem::take(&mut self.data));
        }
    }

    /// Released (allocated again at the next read) if it is grown and empty.
    fn shrink(&mut self) {
        if self.is_grown() && self.is_empty() {
            self.data = Box::default();
            self.pos = 0;
            self.len = 0;
        }
    }

    fn pending(&self) -> &[u8] {
        &self.data[self.pos..self.len]
    }

    fn is_empty(&self) -> bool {
        self.pos == self.len
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.len {
            self.clear();
        }
    }

    fn clear(&mut self) {
        self.pos = 0;
        self.len = 0;
        if self.grow {
            // Once per bulk transfer (see SHRINK_AFTER), not per chunk.
            self.grow = false;
            let small = std::mem::replace(&mut self.data, vec![0; self.max].into_boxed_slice());
            if small.len() == MIN_BUF {
                give_back(small);
            }
        }
    }

    /// Where the next read goes: the free tail (empty when the buffer is full).
    fn spare(&mut self) -> &mut [u8] {
        if self.data.is_empty() {
            self.data = lend();
        }
        &mut self.data[self.len..]
    }

    /// `n` bytes were read into [`Buf::spare`].
    fn filled(&mut self, n: usize) {
        self.len += n;
        if self.len == self.data.len() && self.data.len() < self.max {
            self.grow = true;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// (down only) flush what rustls queued (close_notify, unless the connection aborts), then FIN
    /// (not after an abort).
    Closing,
    Done,
}

pub(super) struct Relay {
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

impl Relay {
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
            if self.pout.is_empty() && self.cin.is_empty() {
                // Nothing to gather this plaintext with: it goes to the backend straight from rustls's
                // buffer, without a copy. The usual case for small messages, which therefore never
                // need `pout` at all.
                match self.deliver_direct(cx) {
                    Direct::Moved => {
                        *progress = true;
                        continue;
                    }
                    Direct::Blocked => return Gather::Pending,
                    Direct::Ended => return Gather::Ended,
                    Direct::NeedMore => {}
                }
            } else {
                if self.pout.spare().is_empty() {
                    return Gather::Full;
                }
                match self.conn.reader().read(self.pout.spare()) {
                    // close_notify received and all plaintext delivered.
                    Ok(0) => {
                        self.up_end = Some(UpEnd::Closed);
                        return Gather::Ended;
                    }
                    Ok(n) => {
                        self.pout.filled(n);
                        *progress = true;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        self.up_end = Some(UpEnd::from_reader(e));
                        return Gather::Ended;
                    }
                }
            }
            // rustls needs more ciphertext. An aborting connection reads no more from the socket, but
            // what it has already received is still decrypted (and so authenticated) and delivered.
            if self.aborting() {
                self.tls_rd_done = true;
            }
            if self.tls_rd_done && self.cin.is_empty() {
                self.up_end = Some(UpEnd::Closed);
                return Gather::Ended;
            }
            if self.cin.is_empty() {
                let (tls, cin) = (&self.tls, &mut self.cin);
                match poll_nb(cx, tls, Dir::Read, || tls.try_read(cin.spare())) {
                    Poll::Pending => return Gather::Pending,
                    Poll::Ready(Ok(0)) => {
                        // Let rustls see the EOF: its reader then tells a clean close_notify from a
                        // truncation.
                        let _ = self.conn.read_tls(&mut io::empty());
                        self.tls_rd_done = true;
                        *progress = true;
                        continue;
                    }
                    Poll::Ready(Ok(n)) => {
                        self.cin.filled(n);
                        *progress = true;
                    }
                    Poll::Ready(Err(e)) => {
                        self.tls_err(&e);
                        self.tls_rd_done = true;
                        *progress = true;
                        continue;
                    }
                }
            }
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
                // rustls 0.23 holds the KeyUpdate it owes the peer (after a KeyUpdate with
                // update_requested) until the application next writes; an empty write releases it into
                // the send queue without producing a record.
                let _ = self.conn.writer().write(&[]);
            }
            if self.conn.wants_write() {
                // Records rustls produced by itself (KeyUpdate response, alert) go out now, not when the
                // backend next has something to say.
                self.flush_tls(cx);
            }
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
                    match poll_nb(cx, plain, Dir::Read, || plain.try_read(pin.spare())) {
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

impl Directions for Relay {
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

impl Future for Relay {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = self.get_mut();
        let poll = super::drive(this, cx);
        this.cin.give_back();
        this.pin.give_back();
        this.pout.give_back();
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

#[derive(Clone, Copy)]
enum Dir {
    Read,
    Write,
}

/// Runs a non-blocking socket operation; when it would block, registers for readiness and returns
/// `Pending` (or retries at once if the socket became ready meanwhile).
fn poll_nb<T>(
    cx: &mut Context<'_>,
    sock: &TcpStream,
    dir: Dir,
    mut op: impl FnMut() -> io::Result<T>,
) -> Poll<io::Result<T>> {
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let ready = match dir {
                    Dir::Read => sock.poll_read_ready(cx),
                    Dir::Write => sock.poll_write_ready(cx),
                };
                match ready {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {}
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return Poll::Ready(r),
        }
    }
}

/// `io::Write` over a non-blocking socket, for `rustls::Connection::write_tls` (which batches every
/// queued record into one `writev`).
pub(super) struct NbWrite<'a>(pub(super) &'a TcpStream);

impl Write for NbWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Sends close_notify and FIN on a connection that carried no data.
pub(super) async fn close(tls: &TcpStream, mut conn: rustls::Connection) {
    conn.send_close_notify();
    while conn.wants_write() {
        if tls.writable().await.is_err() {
            return;
        }
        match conn.write_tls(&mut NbWrite(tls)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
    let _ = SockRef::from(tls).shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::{Buf, MAX_IN, MIN_BUF};

    fn fill(b: &mut Buf, n: usize) {
        let spare = b.spare();
        assert!(spare.len() >= n);
        spare[..n].fill(7);
        b.filled(n);
    }

    #[test]
    fn a_buffer_stays_small_until_a_read_fills_it() {
        let mut b = Buf::new(MAX_IN);
        assert!(b.data.is_empty(), "nothing allocated before the first read");
        fill(&mut b, 1000);
        assert_eq!(b.pending().len(), 1000);
        b.consume(400);
        assert_eq!(b.pending().len(), 600);
        b.consume(600);
        assert!(b.is_empty());
        // Emptied: the next read starts at the front, and the buffer did not grow.
        assert_eq!(b.spare().len(), MIN_BUF);
        assert!(!b.is_grown());
    }

    #[test]
    fn a_full_buffer_grows_once_it_is_empty() {
        let mut b = Buf::new(MAX_IN);
        fill(&mut b, MIN_BUF - 10);
        fill(&mut b, 10);
        assert!(b.spare().is_empty());
        // Still full of unconsumed bytes: nothing is moved or reallocated under them.
        b.consume(MIN_BUF / 2);
        assert!(b.spare().is_empty());
        assert_eq!(b.pending().len(), MIN_BUF / 2);
        b.consume(MIN_BUF / 2);
        assert_eq!(b.spare().len(), MAX_IN);
        fill(&mut b, MAX_IN);
        b.clear();
        assert_eq!(b.spare().len(), MAX_IN);
    }

    #[test]
    fn an_empty_small_buffer_goes_back_to_the_thread() {
        let mut b = Buf::new(MAX_IN);
        fill(&mut b, 100);
        b.give_back();
        assert_eq!(
            b.pending().len(),
            100,
            "bytes still waiting keep their buffer"
        );
        b.consume(100);
        b.give_back();
        assert!(b.data.is_empty(), "a quiet connection holds no buffer");
        assert_eq!(b.spare().len(), MIN_BUF, "the next read borrows one again");
        // A read that fills it: a stream, which keeps its grown buffer.
        fill(&mut b, MIN_BUF);
        b.clear();
        b.give_back();
        assert!(b.is_grown());
    }

    #[test]
    fn a_grown_buffer_shrinks_only_when_empty() {
        let mut b = Buf::new(MAX_IN);
        fill(&mut b, MIN_BUF);
        b.clear();
        assert!(b.is_grown());
        fill(&mut b, 100);
        b.shrink();
        assert!(b.is_grown(), "bytes still waiting are never dropped");
        assert_eq!(b.pending().len(), 100);
        b.consume(100);
        b.shrink();
        assert!(!b.is_grown());
        assert!(b.data.is_empty(), "released");
        assert_eq!(b.spare().len(), MIN_BUF);
    }
}
