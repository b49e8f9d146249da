//! The relay loop of a connection handed to the kernel: `splice(2)` through a pipe each way, control
//! records read with `recvmsg` ([`super::control`]), close_notify and alerts sent as records of type
//! alert through `sendmsg`. An abort sends no close_notify, and reads from neither socket any more
//! (the close semantics of [`crate::relay`]).

use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::task::{Context, Poll, ready};

use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::control::{
    ALERT_CLOSE_NOTIFY, ALERT_FATAL, ALERT_NO_RENEGOTIATION, ALERT_WARNING, CONTROL_BUF, Control,
    HandshakeReader, interpret,
};
use super::handover::Engaged;
use super::record_limit::TxLimit;
use super::support::cipher_name;
use crate::metrics::ByteCounters;
use crate::relay::poll_loop::{Deadlines, Directions, Phase, Releasable, Release, Side};
use crate::relay::release::{KtlsState, Parts, RelayState, StateCipher};
use crate::relay::splice::{CHUNK, Pump, poll_io};
use crate::relay::{Close, Finish, MAX_PENDING, Outcome, Path, RelayLimits};

// What a control record leaves behind always fits a released relay's state.
const _: () = assert!(CONTROL_BUF <= MAX_PENDING);
use crate::sys::{self, KtlsCipher};

/// One connection on the kTLS path: the kernel encrypts and decrypts, bytes move through a pipe
/// each way, both directions polled in turn by [`Releasable`].
pub(super) struct KtlsRelay {
    tls: TcpStream,
    plain: TcpStream,
    up_pump: Pump,
    down_pump: Pump,
    pending: Vec<u8>,
    pending_pos: usize,
    /// Control records land here (allocated when the first one arrives).
    control: Vec<u8>,
    handshake: HandshakeReader,
    client: bool,
    tx: Option<TxLimit>,
    /// Nothing more is read from the peer.
    rx_done: bool,
    /// Nothing more can be written to the peer (TCP).
    tls_wr_dead: bool,
    /// No more application data may be sent to the peer (it broke the protocol, its KeyUpdate cannot
    /// be answered, or the hand-over failed).
    tls_app_dead: bool,
    plain_wr_dead: bool,
    up: Phase,
    down: Phase,
    /// The abort's cause (`None`: everything so far was in order).
    close: Option<Close>,
    from_peer: u64,
    to_peer: u64,
    counters: ByteCounters,
    deadlines: Deadlines,
}

impl Engaged {
    pub(in crate::relay) fn relay(
        self,
        limits: RelayLimits,
        counters: ByteCounters,
        release: CancellationToken,
    ) -> impl Future<Output = Finish> + Send {
        let failed = self.close.is_some();
        let relay = KtlsRelay {
            tls: self.tls,
            plain: self.plain,
            up_pump: self.up,
            down_pump: self.down,
            pending: self.pending,
            pending_pos: 0,
            control: Vec::new(),
            handshake: HandshakeReader::default(),
            client: self.client,
            tls_wr_dead: self.tx.is_none(),
            tx: self.tx,
            rx_done: !self.rx_open,
            // A failed hand-over ends the connection: nothing more goes to the peer.
            tls_app_dead: failed,
            plain_wr_dead: false,
            up: Phase::Open,
            down: Phase::Open,
            close: self.close,
            from_peer: 0,
            to_peer: 0,
            counters,
            deadlines: Deadlines::new(limits),
        };
        Releasable::new(relay, release)
    }
}

/// Checks the peer socket of a released kTLS relay before anything is touched: it must carry a TX
/// key of the state's cipher (the `tls` ULP stays on the socket; it is not set again). Returns the
/// key's record budget, counted from the exact sequence number the kernel reports now.
pub(in crate::relay) fn check_resumed(
    peer: &OwnedFd,
    state: &RelayState,
) -> Result<TxLimit, String> {
    let ktls = state.ktls.as_ref().ok_or("the state has no kTLS part")?;
    let cipher = from_state(ktls.cipher);
    let seq = sys::tx_record_seq(peer.as_fd(), cipher).map_err(|e| {
        format!(
            "not a kTLS socket with a {} TX key (getsockopt TLS_TX: {e})",
            cipher_name(cipher)
        )
    })?;
    Ok(TxLimit::new(cipher, seq, ktls.confidentiality_limit))
}

/// Continues a released kTLS relay (its parts checked by [`crate::relay::resume`] with
/// [`check_resumed`]).
pub(in crate::relay) fn resume(
    parts: Parts,
    state: &RelayState,
    tx: TxLimit,
    limits: RelayLimits,
    counters: ByteCounters,
    release: CancellationToken,
) -> impl Future<Output = Finish> + Send + use<> {
    let (pending, client) = state
        .ktls
        .as_ref()
        .map_or((Vec::new(), false), |k| (k.pending.clone(), k.client));
    let relay = KtlsRelay {
        tls: parts.peer,
        plain: parts.backend,
        up_pump: parts.up,
        down_pump: parts.down,
        pending,
        pending_pos: 0,
        control: Vec::new(),
        handshake: HandshakeReader::default(),
        client,
        tx: Some(tx),
        rx_done: false,
        tls_wr_dead: false,
        tls_app_dead: false,
        plain_wr_dead: false,
        up: Phase::Open,
        down: Phase::Open,
        close: None,
        from_peer: state.from_peer,
        to_peer: state.to_peer,
        counters,
        deadlines: Deadlines::new(limits),
    };
    Releasable::new(relay, release)
}

fn to_state(cipher: KtlsCipher) -> StateCipher {
    match cipher {
        KtlsCipher::Aes128Gcm => StateCipher::Aes128Gcm,
        KtlsCipher::Aes256Gcm => StateCipher::Aes256Gcm,
        KtlsCipher::Chacha20Poly1305 => StateCipher::Chacha20Poly1305,
    }
}

fn from_state(cipher: StateCipher) -> KtlsCipher {
    match cipher {
        StateCipher::Aes128Gcm => KtlsCipher::Aes128Gcm,
        StateCipher::Aes256Gcm => KtlsCipher::Aes256Gcm,
        StateCipher::Chacha20Poly1305 => KtlsCipher::Chacha20Poly1305,
    }
}

impl KtlsRelay {
    /// The connection aborts; the first cause is kept, later ones are consequences of it.
    fn abort(&mut self, close: Close) {
        if self.close.is_none() {
            self.close = Some(close);
        }
    }

    fn aborting(&self) -> bool {
        self.close.is_some()
    }

    fn delivered(&mut self, n: usize) {
        self.from_peer += n as u64;
        self.counters.from_peer.increment(n as u64);
    }

    fn finish_up(&mut self) {
        if !self.plain_wr_dead && !self.aborting() {
            // FIN after everything written: the backend sees the end of the stream, nothing lost.
            let _ = SockRef::from(&self.plain).shutdown(Shutdown::Write);
        }
        self.up = Phase::Done;
    }

    /// Sends an alert record; best effort (a full send buffer loses it, the FIN follows anyway).
    fn send_alert(&mut self, level: u8, description: u8) {
        if !self.tls_wr_dead {
            let _ = self.tls.try_io(Interest::WRITABLE, || {
                sys::send_record(self.tls.as_fd(), sys::RECORD_ALERT, &[level, description])
            });
        }
    }

    /// Peer -> backend.
    fn poll_up(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while self.up != Phase::Done {
            match self.deliver_held(cx) {
                Poll::Pending => return progress,
                Poll::Ready(Some(moved)) => {
                    progress |= moved;
                    continue;
                }
                Poll::Ready(None) => {}
            }
            if self.aborting() {
                // Nothing more is read from the peer; what was read is delivered above.
                self.rx_done = true;
            }
            if self.rx_done {
                self.finish_up();
                progress = true;
                continue;
            }
            match self.up_pump.poll_fill(cx, &self.tls, CHUNK) {
                Poll::Pending => return progress,
                Poll::Ready(Ok(0)) => {
                    self.abort(Close::PeerNoCloseNotify);
                    self.rx_done = true;
                }
                Poll::Ready(Ok(_)) => {}
                // The next record is not application data (splice cannot carry its type).
                Poll::Ready(Err(e))
                    if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EIO)) =>
                {
                    match self.poll_control(cx) {
                        Poll::Pending => return progress,
                        Poll::Ready(control) => self.apply(control),
                    }
                }
                Poll::Ready(Err(e)) => {
                    self.abort(rx_error(&e));
                    self.rx_done = true;
                    if e.raw_os_error() == Some(libc::EBADMSG) {
                        self.tls_app_dead = true;
                    }
                }
            }
            progress = true;
        }
        progress
    }

    /// Delivers plaintext already read to the backend (or discards it when the backend is dead):
    /// first what came before the hand-over or along with a control record, then the pipe.
    /// `Ready(None)`: nothing is held; `Ready(Some(progress))`: one step was taken.
    fn deliver_held(&mut self, cx: &mut Context<'_>) -> Poll<Option<bool>> {
        if self.pending_pos < self.pending.len() {
            if self.plain_wr_dead {
                self.pending_pos = self.pending.len();
                return Poll::Ready(Some(false));
            }
            let (plain, chunk) = (&self.plain, &self.pending[self.pending_pos..]);
            match ready!(poll_io(cx, plain, Interest::WRITABLE, || plain.try_write(chunk))) {
                Ok(n) => {
                    self.pending_pos += n;
                    self.delivered(n);
                }
                Err(e) => {
                    self.abort(Side::Backend.close_for(&e));
                    self.plain_wr_dead = true;
                }
            }
            return Poll::Ready(Some(true));
        }
        if self.up_pump.is_empty() {
            return Poll::Ready(None);
        }
        if self.plain_wr_dead {
            self.up_pump.discard();
        } else {
            match ready!(self.up_pump.poll_drain(cx, &self.plain, usize::MAX)) {
                Ok(n) => self.delivered(n),
                Err(e) => {
                    self.abort(Side::Backend.close_for(&e));
                    self.plain_wr_dead = true;
                }
            }
        }
        Poll::Ready(Some(true))
    }

    fn apply(&mut self, control: Control) {
        match control {
            Control::Continue => {}
            Control::Data(n) => {
                self.pending.clear();
                self.pending.extend_from_slice(&self.control[..n]);
                self.pending_pos = 0;
            }
            Control::Closed => self.rx_done = true,
            Control::End(close, alert) => {
                self.abort(close);
                self.rx_done = true;
                self.tls_app_dead = true;
                if let Some(description) = alert {
                    self.send_alert(ALERT_FATAL, description);
                }
            }
        }
    }

    /// Reads one record that splice would not carry, and says what it means.
    fn poll_control(&mut self, cx: &mut Context<'_>) -> Poll<Control> {
        if self.control.is_empty() {
            self.control = vec![0; CONTROL_BUF];
        }
        let (tls, buf) = (&self.tls, &mut self.control);
        let (record_type, n) = match ready!(poll_io(cx, tls, Interest::READABLE, || {
            sys::recv_record(tls.as_fd(), buf)
        })) {
            Ok(r) => r,
            Err(e) => return Poll::Ready(Control::End(rx_error(&e), None)),
        };
        let interpreted = interpret(
            record_type,
            &self.control[..n],
            &mut self.handshake,
            self.client,
        );
        if interpreted.decline_renegotiation {
            self.send_alert(ALERT_WARNING, ALERT_NO_RENEGOTIATION);
        }
        Poll::Ready(interpreted.control)
    }

    /// Backend -> peer.
    fn poll_down(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        loop {
            match self.down {
                Phase::Done => return progress,
                Phase::Closing => {
                    if self.poll_send_close_notify_and_fin(cx).is_pending() {
                        return progress;
                    }
                    self.down = Phase::Done;
                    progress = true;
                }
                Phase::Open => {
                    let discard = self.tls_wr_dead || self.tls_app_dead;
                    if !self.down_pump.is_empty() {
                        if self.send_held(cx, discard).is_pending() {
                            return progress;
                        }
                        progress = true;
                        continue;
                    }
                    if self.aborting() {
                        // Nothing more is read from the backend; no close_notify (Closing).
                        self.down = Phase::Closing;
                        progress = true;
                        continue;
                    }
                    let room = match self.tx.as_mut() {
                        Some(tx) if !discard => tx.room(&self.tls),
                        _ => CHUNK,
                    };
                    if room == 0 {
                        tracing::trace!("kTLS: the key reached its record limit; aborting");
                        self.abort(Close::KeyLimit);
                        self.tls_app_dead = true;
                        self.down = Phase::Closing;
                        progress = true;
                        continue;
                    }
                    match self.down_pump.poll_fill(cx, &self.plain, room) {
                        Poll::Pending => return progress,
                        Poll::Ready(Ok(0)) => self.down = Phase::Closing,
                        Poll::Ready(Ok(_)) => {}
                        Poll::Ready(Err(e)) => {
                            self.abort(Side::Backend.close_for(&e));
                            self.down = Phase::Closing;
                        }
                    }
                    progress = true;
                }
            }
        }
    }

    /// Sends what the down pipe holds to the peer (counted against the key's record limit), or
    /// discards it when nothing more may go to the peer.
    fn send_held(&mut self, cx: &mut Context<'_>, discard: bool) -> Poll<()> {
        if discard {
            self.down_pump.discard();
            return Poll::Ready(());
        }
        match ready!(self.down_pump.poll_drain(cx, &self.tls, usize::MAX)) {
            Ok(n) => {
                if let Some(tx) = self.tx.as_mut() {
                    tx.sent(n);
                }
                self.to_peer += n as u64;
                self.counters.to_peer.increment(n as u64);
            }
            Err(e) => {
                self.abort(Side::Peer.close_for(&e));
                self.tls_wr_dead = true;
            }
        }
        Poll::Ready(())
    }

    /// The end of the backend's stream towards the peer: close_notify (an alert record through the
    /// kernel), then FIN; neither after an abort.
    fn poll_send_close_notify_and_fin(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.tls_wr_dead && !self.aborting() {
            let tls = &self.tls;
            let alert = [ALERT_WARNING, ALERT_CLOSE_NOTIFY];
            let sent = ready!(poll_io(cx, tls, Interest::WRITABLE, || {
                sys::send_record(tls.as_fd(), sys::RECORD_ALERT, &alert)
            }));
            if let Err(e) = sent {
                self.abort(Side::Peer.close_for(&e));
                self.tls_wr_dead = true;
            }
        }
        if !self.tls_wr_dead && !self.aborting() {
            let _ = SockRef::from(&self.tls).shutdown(Shutdown::Write);
        }
        Poll::Ready(())
    }

    fn outcome(&mut self) -> Outcome {
        Outcome {
            from_peer: self.from_peer,
            to_peer: self.to_peer,
            close: self.close.take().unwrap_or(Close::Clean),
        }
    }
}

/// A failed read from the kTLS socket as an outcome.
fn rx_error(e: &io::Error) -> Close {
    match e.raw_os_error() {
        Some(libc::EBADMSG) => {
            Close::PeerTlsError("a record failed to decrypt (bad_record_mac)".into())
        }
        Some(libc::EMSGSIZE) => Close::PeerTlsError("record overflow".into()),
        _ => Side::Peer.close_for(e),
    }
}

impl Directions for KtlsRelay {
    fn step(&mut self, cx: &mut Context<'_>) -> bool {
        let up = self.poll_up(cx);
        let down = self.poll_down(cx);
        up || down
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

    /// Both directions open and in order, both keys in the kernel, no control record half read
    /// (one is read whole by `recvmsg`; a handshake message may span records).
    fn releasable(&self) -> bool {
        !self.aborting()
            && self.up == Phase::Open
            && self.down == Phase::Open
            && !(self.rx_done || self.tls_wr_dead || self.tls_app_dead || self.plain_wr_dead)
            && self.tx.is_some()
            && self.handshake.idle()
            && self.pending.len() - self.pending_pos <= MAX_PENDING
    }
}

impl Release for KtlsRelay {
    fn release(self) -> Finish {
        let Some(tx) = &self.tx else {
            unreachable!("released without its TX key (not releasable)");
        };
        let (cipher, confidentiality_limit) = tx.released();
        let ktls = KtlsState {
            pending: self.pending[self.pending_pos..].to_vec(),
            client: self.client,
            cipher: to_state(cipher),
            confidentiality_limit,
        };
        let parts = Parts {
            peer: self.tls,
            backend: self.plain,
            up: self.up_pump,
            down: self.down_pump,
        };
        parts.release(Path::Ktls, self.from_peer, self.to_peer, Some(ktls))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::release::PipeState;

    /// A kTLS relay over plain loopback sockets (no key in the kernel: only its release is tried).
    async fn relay() -> (KtlsRelay, [TcpStream; 2]) {
        let pair = || async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            (a, l.accept().await.unwrap().0)
        };
        let ((tls, far_peer), (plain, far_backend)) = (pair().await, pair().await);
        let relay = KtlsRelay {
            tls,
            plain,
            up_pump: Pump::new().unwrap(),
            down_pump: Pump::new().unwrap(),
            pending: b"abcdef".to_vec(),
            pending_pos: 2,
            control: Vec::new(),
            handshake: HandshakeReader::default(),
            client: true,
            tx: Some(TxLimit::new(KtlsCipher::Aes256Gcm, 7, 1 << 23)),
            rx_done: false,
            tls_wr_dead: false,
            tls_app_dead: false,
            plain_wr_dead: false,
            up: Phase::Open,
            down: Phase::Open,
            close: None,
            from_peer: 100,
            to_peer: 200,
            counters: ByteCounters {
                from_peer: metrics::Counter::noop(),
                to_peer: metrics::Counter::noop(),
            },
            deadlines: Deadlines::new(RelayLimits {
                idle: None,
                linger: std::time::Duration::from_secs(1),
            }),
        };
        (relay, [far_peer, far_backend])
    }

    #[tokio::test]
    async fn a_ktls_relay_is_released_only_with_nothing_half_done() {
        type HalfDone = (&'static str, fn(&mut KtlsRelay));
        let half_done: [HalfDone; 10] = [
            ("aborting", |r| r.close = Some(Close::PeerReset)),
            ("close_notify received", |r| r.rx_done = true),
            ("up finished", |r| r.up = Phase::Done),
            ("down closing", |r| r.down = Phase::Closing),
            ("peer not writable", |r| r.tls_wr_dead = true),
            ("no more data to the peer", |r| r.tls_app_dead = true),
            ("backend not writable", |r| r.plain_wr_dead = true),
            ("no TX key", |r| r.tx = None),
            ("a handshake message half read", |r| {
                assert_eq!(r.handshake.next_message(&mut &[4u8, 0][..]), None);
            }),
            // More than a hand-over message carries: delivered first.
            ("more plaintext held than MAX_PENDING", |r| {
                r.pending = vec![7; MAX_PENDING + 2];
                r.pending_pos = 1;
            }),
        ];
        for (what, make) in half_done {
            let (mut r, _far) = relay().await;
            assert!(r.releasable());
            make(&mut r);
            assert!(!r.releasable(), "released while {what}");
        }

        let (r, _far) = relay().await;
        let released = match r.release() {
            Finish::Released(released) => released,
            Finish::Done(o) => panic!("not released: {o:?}"),
        };
        assert_eq!(released.fds.len(), 6);
        let state = released.state;
        assert_eq!(state.path, Path::Ktls);
        assert_eq!((state.from_peer, state.to_peer), (100, 200));
        let empty = PipeState {
            held: 0,
            grow: true,
        };
        assert_eq!((state.up, state.down), (empty, empty));
        assert_eq!(
            state.ktls,
            Some(KtlsState {
                // Only what was not yet delivered.
                pending: b"cdef".to_vec(),
                client: true,
                cipher: StateCipher::Aes256Gcm,
                confidentiality_limit: 1 << 23,
            })
        );
        for c in [
            KtlsCipher::Aes128Gcm,
            KtlsCipher::Aes256Gcm,
            KtlsCipher::Chacha20Poly1305,
        ] {
            assert_eq!(from_state(to_state(c)), c);
        }
    }
}
