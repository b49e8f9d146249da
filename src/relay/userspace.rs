//! The user-space TLS <-> plaintext relay, driving the rustls connection directly on non-blocking
//! sockets (not through tokio-rustls) so that this module alone decides when records are written, how
//! half-close propagates and what happens to bytes on a dead leg.
//!
//! Copies: peer -> backend reads ciphertext into `cin` (one 64 KiB `recv` feeds several records to rustls,
//! instead of rustls's own 4 KiB reads), rustls decrypts in place, and the plaintext is written to the
//! backend straight out of rustls's buffer (`fill_buf`/`consume`, no copy). Backend -> peer reads into
//! `pin` and rustls encrypts from there into its send queue, which goes out with one `writev`.
//! Buffers are allocated once per connection; nothing is allocated per chunk here.

use std::future::Future;
use std::io::{self, BufRead, Write};
use std::net::Shutdown;
use std::pin::Pin;
use std::task::{Context, Poll};

use socket2::SockRef;
use tokio::net::TcpStream;

use super::{Close, Deadlines, Directions, Outcome, RelayLimits, Side};
use crate::metrics::ByteCounters;

/// 64 KiB: several full 16 KiB TLS records per system call, the same size as the socket's usual send
/// window on loopback.
const BUF: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// (down only) close_notify is queued; flush it, then FIN.
    Closing,
    Done,
}

pub(super) struct Relay {
    tls: TcpStream,
    plain: TcpStream,
    conn: rustls::Connection,
    /// Ciphertext received from the peer, not yet handed to rustls: `cin[cin_pos..cin_len]`.
    cin: Box<[u8]>,
    cin_pos: usize,
    cin_len: usize,
    /// Plaintext received from the backend, not yet handed to rustls: `pin[pin_pos..pin_len]`.
    pin: Box<[u8]>,
    pin_pos: usize,
    pin_len: usize,
    /// No more ciphertext will arrive (EOF, reset, or a TLS error).
    tls_rd_done: bool,
    /// The TLS socket cannot be written any more.
    tls_wr_dead: bool,
    /// The peer broke the protocol: send it nothing more.
    tls_app_dead: bool,
    /// The backend socket cannot be written any more; peer data is discarded.
    plain_wr_dead: bool,
    up: Phase,
    down: Phase,
    close: Option<Close>,
    from_peer: u64,
    to_peer: u64,
    counters: ByteCounters,
    deadlines: Deadlines,
}

impl Relay {
    pub(super) fn new(
        tls: TcpStream,
        conn: rustls::Connection,
        plain: TcpStream,
        limits: RelayLimits,
        counters: ByteCounters,
    ) -> Self {
        Self {
            tls,
            plain,
            conn,
            cin: vec![0; BUF].into_boxed_slice(),
            cin_pos: 0,
            cin_len: 0,
            pin: vec![0; BUF].into_boxed_slice(),
            pin_pos: 0,
            pin_len: 0,
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
        }
    }

    /// Records the first notable event; later ones are consequences of it.
    fn note(&mut self, close: Close) {
        if self.close.is_none() {
            self.close = Some(close);
        }
    }

    fn note_tls_err(&mut self, e: &io::Error) {
        self.note(Side::Peer.close_for(e));
    }

    fn note_plain_err(&mut self, e: &io::Error) {
        self.note(Side::Backend.close_for(e));
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
                    self.note_tls_err(&e);
                    self.tls_wr_dead = true;
                    progress = true;
                }
            }
        }
        progress
    }

    fn finish_up(&mut self) {
        if !self.plain_wr_dead {
            // FIN after everything written: the backend sees the end of the stream, nothing lost.
            let _ = SockRef::from(&self.plain).shutdown(Shutdown::Write);
        }
        self.up = Phase::Done;
    }

    /// Peer -> backend.
    fn poll_up(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while self.up != Phase::Done {
            let step = {
                let (plain, discard) = (&self.plain, self.plain_wr_dead);
                let mut reader = self.conn.reader();
                match reader.fill_buf() {
                    // close_notify received and all plaintext delivered.
                    Ok([]) => Up::Closed,
                    Ok(chunk) if discard => {
                        let n = chunk.len();
                        reader.consume(n);
                        Up::Moved(0)
                    }
                    Ok(chunk) => match poll_nb(cx, plain, Dir::Write, || plain.try_write(chunk)) {
                        Poll::Pending => return progress,
                        Poll::Ready(Ok(n)) => {
                            reader.consume(n);
                            Up::Moved(n)
                        }
                        Poll::Ready(Err(e)) => Up::BackendErr(e),
                    },
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Up::NeedMore,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Up::Truncated,
                    Err(e) => Up::Failed(e),
                }
            };
            match step {
                Up::NeedMore => {}
                Up::Moved(n) => {
                    self.from_peer += n as u64;
                    self.counters.from_peer.increment(n as u64);
                    progress = true;
                    continue;
                }
                Up::BackendErr(e) => {
                    self.note_plain_err(&e);
                    self.plain_wr_dead = true;
                    progress = true;
                    continue;
                }
                Up::Closed | Up::Truncated | Up::Failed(_) => {
                    match step {
                        Up::Truncated => self.note(Close::PeerNoCloseNotify),
                        Up::Failed(e) => self.note(Close::Io(format!("peer: {e}"))),
                        _ => {}
                    }
                    self.finish_up();
                    progress = true;
                    continue;
                }
            }
            if self.tls_rd_done {
                self.finish_up();
                progress = true;
                continue;
            }

            if self.cin_pos == self.cin_len {
                let (tls, buf) = (&self.tls, &mut self.cin);
                match poll_nb(cx, tls, Dir::Read, || tls.try_read(buf)) {
                    Poll::Pending => return progress,
                    Poll::Ready(Ok(0)) => {
                        // Let rustls see the EOF: its reader then tells a clean close_notify from a
                        // truncation.
                        let _ = self.conn.read_tls(&mut io::empty());
                        self.tls_rd_done = true;
                        progress = true;
                        continue;
                    }
                    Poll::Ready(Ok(n)) => {
                        self.cin_pos = 0;
                        self.cin_len = n;
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => {
                        self.note_tls_err(&e);
                        self.tls_rd_done = true;
                        progress = true;
                        continue;
                    }
                }
            }
            match self
                .conn
                .read_tls(&mut &self.cin[self.cin_pos..self.cin_len])
            {
                Ok(n) => self.cin_pos += n,
                Err(e) => {
                    self.note(Close::Io(format!("tls buffer: {e}")));
                    self.tls_rd_done = true;
                }
            }
            if let Err(e) = self.conn.process_new_packets() {
                // rustls queued an alert for the peer; flush_tls sends it. Nothing more goes to a peer
                // that broke the protocol, and nothing more comes from it.
                self.note(Close::PeerTlsError(e.to_string()));
                self.tls_rd_done = true;
                self.tls_app_dead = true;
                self.cin_pos = self.cin_len;
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
        progress
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
                    if !self.tls_wr_dead {
                        let _ = SockRef::from(&self.tls).shutdown(Shutdown::Write);
                    }
                    self.down = Phase::Done;
                    progress = true;
                }
                Phase::Open => {
                    let discard = self.tls_wr_dead || self.tls_app_dead;
                    if !discard && self.pin_pos < self.pin_len {
                        let n = self
                            .conn
                            .writer()
                            .write(&self.pin[self.pin_pos..self.pin_len])
                            .unwrap_or(0);
                        self.pin_pos += n;
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
                    let (plain, buf) = (&self.plain, &mut self.pin);
                    match poll_nb(cx, plain, Dir::Read, || plain.try_read(buf)) {
                        Poll::Pending => return progress,
                        Poll::Ready(Ok(0)) => {
                            if !discard {
                                self.conn.send_close_notify();
                            }
                            self.down = Phase::Closing;
                        }
                        Poll::Ready(Ok(n)) => {
                            if !discard {
                                self.pin_pos = 0;
                                self.pin_len = n;
                            }
                        }
                        Poll::Ready(Err(e)) => {
                            self.note_plain_err(&e);
                            if !discard {
                                self.conn.send_close_notify();
                            }
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
        progress
    }

    fn finished(&self) -> (bool, bool) {
        (self.up == Phase::Done, self.down == Phase::Done)
    }

    fn deadlines(&mut self) -> &mut Deadlines {
        &mut self.deadlines
    }

    fn end(&mut self, close: Option<Close>) -> Outcome {
        if let Some(close) = close {
            self.note(close);
        }
        self.outcome()
    }
}

impl Future for Relay {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        super::drive(self.get_mut(), cx)
    }
}

/// What delivering decrypted plaintext to the backend came to.
enum Up {
    Moved(usize),
    NeedMore,
    Closed,
    Truncated,
    Failed(io::Error),
    BackendErr(io::Error),
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
