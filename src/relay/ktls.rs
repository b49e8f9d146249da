//! Kernel TLS: after the rustls handshake the session keys go to the kernel (TLS_TX and TLS_RX), and
//! the relay moves plaintext between the kTLS socket and the backend with `splice(2)` through a pipe
//! each way: the kernel decrypts into the pipe and encrypts out of it, nothing passes through user space.
//!
//! * [`support`] probes once per process which ciphers the kernel takes (on loopback, with throwaway
//!   keys), and why not if none.
//! * [`engage`] hands a connection over (the handshake left the socket at a record boundary, see
//!   [`super::handshake`]): it flushes what rustls queued, extracts the keys and sets them. Anything that rules kTLS out is found before
//!   the keys leave rustls (then the connection stays on the user-space path); after that the connection
//!   stays here, and a failure aborts it with the bytes already received delivered.
//! * Control records: `splice` stops with EINVAL at a record that is not application data; that record
//!   is read with `recvmsg` and its type. close_notify ends the peer's direction cleanly; other alerts
//!   abort the connection (user_canceled is ignored); a NewSessionTicket is ignored; a KeyUpdate aborts
//!   the connection (see the module documentation of [`super`]); a TLS 1.2 HelloRequest is declined
//!   with a no_renegotiation warning, as rustls does; anything else is a protocol error answered with
//!   an unexpected_message alert, then the abort.
//! * Sending close_notify (or an alert): a record of type alert through `sendmsg`. An abort sends no
//!   close_notify, and reads from neither socket any more (the close semantics of [`super`]).
//! * The AEAD limit: see [`TxLimit`].

use std::future::Future;
use std::io::{self, BufRead};
use std::net::{Ipv4Addr, Shutdown};
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::{CipherSuite, ProtocolVersion, SupportedCipherSuite};
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::handshake::flush;
use super::splice::{CHUNK, Pump, poll_io};
use super::{Close, Deadlines, Directions, Offload, Outcome, RelayLimits, Side};
use crate::metrics::ByteCounters;
use crate::sys::{self, CryptoInfo, KtlsCipher, KtlsDirection};

/// How long flushing what rustls queued before the hand-over may take.
const FLUSH_DEADLINE: Duration = Duration::from_secs(5);
/// The largest TLS record payload a control record can carry (2^14), plus room for TLS 1.3 padding.
const CONTROL_BUF: usize = 16 * 1024 + 256;

const ALERT_WARNING: u8 = 1;
const ALERT_FATAL: u8 = 2;
const ALERT_CLOSE_NOTIFY: u8 = 0;
const ALERT_UNEXPECTED_MESSAGE: u8 = 10;
const ALERT_DECODE_ERROR: u8 = 50;
const ALERT_USER_CANCELED: u8 = 90;
const ALERT_NO_RENEGOTIATION: u8 = 100;

const HS_HELLO_REQUEST: u8 = 0;
const HS_NEW_SESSION_TICKET: u8 = 4;
const HS_KEY_UPDATE: u8 = 24;

/// Offloadable ciphers per protocol version, as probed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ciphers(u8);

const ALL_CIPHERS: [KtlsCipher; 3] = [
    KtlsCipher::Aes128Gcm,
    KtlsCipher::Aes256Gcm,
    KtlsCipher::Chacha20Poly1305,
];

impl Ciphers {
    fn bit(tls13: bool, cipher: KtlsCipher) -> u8 {
        let i = ALL_CIPHERS.iter().position(|c| *c == cipher).unwrap_or(0);
        1 << (i + if tls13 { 3 } else { 0 })
    }

    fn supports(self, tls13: bool, cipher: KtlsCipher) -> bool {
        self.0 & Self::bit(tls13, cipher) != 0
    }
}

fn cipher_name(c: KtlsCipher) -> &'static str {
    match c {
        KtlsCipher::Aes128Gcm => "AES-128-GCM",
        KtlsCipher::Aes256Gcm => "AES-256-GCM",
        KtlsCipher::Chacha20Poly1305 => "CHACHA20-POLY1305",
    }
}

/// What this kernel can offload, probed once per process.
#[derive(Debug)]
pub struct KtlsSupport {
    /// The ciphers, or why kTLS cannot be used at all.
    pub result: Result<Ciphers, String>,
}

impl KtlsSupport {
    pub fn available(&self) -> bool {
        self.result.is_ok()
    }

    /// Whether a negotiated suite can be offloaded.
    pub fn offloads(&self, suite: SupportedCipherSuite) -> bool {
        let tls13 = matches!(suite, SupportedCipherSuite::Tls13(_));
        match (&self.result, cipher_of(suite.suite())) {
            (Ok(c), Some(cipher)) => c.supports(tls13, cipher),
            _ => false,
        }
    }

    /// For the start-up line: "AES-128-GCM, ... on TLS 1.2 and 1.3", or why not.
    pub fn describe(&self) -> String {
        match &self.result {
            Err(why) => why.clone(),
            Ok(c) => {
                let mut parts = Vec::new();
                for (tls13, name) in [(false, "TLS 1.2"), (true, "TLS 1.3")] {
                    let names: Vec<_> = ALL_CIPHERS
                        .iter()
                        .filter(|x| c.supports(tls13, **x))
                        .map(|x| cipher_name(*x))
                        .collect();
                    if !names.is_empty() {
                        parts.push(format!("{} on {name}", names.join(", ")));
                    }
                }
                parts.join("; ")
            }
        }
    }
}

/// The kernel's kTLS support, probed on first use (loopback sockets with throwaway keys, a few
/// milliseconds). Loading the `tls` module later needs a restart to be noticed.
pub fn support() -> &'static KtlsSupport {
    static SUPPORT: OnceLock<KtlsSupport> = OnceLock::new();
    SUPPORT.get_or_init(|| KtlsSupport { result: probe() })
}

fn probe() -> Result<Ciphers, String> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| format!("cannot probe for kTLS on loopback: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot probe for kTLS on loopback: {e}"))?;
    let mut ciphers = Ciphers::default();
    let mut refused = None;
    for tls13 in [false, true] {
        for cipher in ALL_CIPHERS {
            let pair = std::net::TcpStream::connect(addr).and_then(|c| Ok((c, listener.accept()?)));
            let (client, _server) =
                pair.map_err(|e| format!("cannot probe for kTLS on loopback: {e}"))?;
            if let Err(e) = sys::set_tls_ulp(client.as_fd()) {
                return Err(if e.raw_os_error() == Some(libc::ENOENT) {
                    "the kernel's tls module is not loaded (setsockopt TCP_ULP \"tls\": ENOENT); \
                     `modprobe tls` (and list it in /etc/modules-load.d/) then restart ringseal"
                        .to_owned()
                } else {
                    format!("the kernel refuses the tls ULP (setsockopt TCP_ULP \"tls\": {e})")
                });
            }
            let key = [0u8; 32];
            let key_len = if cipher == KtlsCipher::Aes128Gcm {
                16
            } else {
                32
            };
            let Some(info) = CryptoInfo::new(cipher, tls13, &key[..key_len], &[0u8; 12], 0) else {
                continue;
            };
            let set = sys::set_crypto(client.as_fd(), KtlsDirection::Tx, &info)
                .and_then(|()| sys::set_crypto(client.as_fd(), KtlsDirection::Rx, &info));
            match set {
                Ok(()) => ciphers.0 |= Ciphers::bit(tls13, cipher),
                Err(e) => refused = Some(e),
            }
        }
    }
    if ciphers == Ciphers::default() {
        return Err(format!(
            "the kernel's tls module takes none of AES-128-GCM, AES-256-GCM, CHACHA20-POLY1305 \
             (setsockopt SOL_TLS: {})",
            refused.map_or_else(|| "?".into(), |e| e.to_string())
        ));
    }
    Ok(ciphers)
}

fn cipher_of(suite: CipherSuite) -> Option<KtlsCipher> {
    use CipherSuite::*;
    match suite {
        TLS13_AES_128_GCM_SHA256
        | TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => Some(KtlsCipher::Aes128Gcm),
        TLS13_AES_256_GCM_SHA384
        | TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        | TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => Some(KtlsCipher::Aes256Gcm),
        TLS13_CHACHA20_POLY1305_SHA256
        | TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        | TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => Some(KtlsCipher::Chacha20Poly1305),
        _ => None,
    }
}

/// Our key's record budget. The kernel never rekeys for us (see the module documentation of
/// [`super`]), so the key may protect at most `stop` records, 7/8 of the suite's confidentiality limit.
/// `bound` is an upper bound of the records sent so far: every record carries at least one byte, so
/// after sending `n` bytes at most `n` more records exist. Reads from the backend are sized so that
/// sending them cannot pass `stop`; when the bound could, the exact sequence number is read back from
/// the kernel (TLS_TX): with full records once per `stop - seq` bytes, more often only in the last
/// [`CHUNK`] records. When no room is left, what was read is sent, then the connection aborts.
struct TxLimit {
    cipher: KtlsCipher,
    bound: u64,
    stop: u64,
}

impl TxLimit {
    fn new(cipher: KtlsCipher, seq: u64, confidentiality_limit: u64) -> Self {
        let stop = record_stop(confidentiality_limit, test_record_limit());
        Self {
            cipher,
            bound: seq,
            stop,
        }
    }

    /// How many bytes may be read from the backend (and then sent) without passing the stop.
    fn room(&mut self, sock: &TcpStream) -> usize {
        let room = |bound: u64| {
            usize::try_from(self.stop.saturating_sub(bound)).map_or(CHUNK, |r| r.min(CHUNK))
        };
        if room(self.bound) < CHUNK
            && let Ok(seq) = sys::tx_record_seq(sock.as_fd(), self.cipher)
        {
            self.bound = seq;
        }
        room(self.bound)
    }

    fn sent(&mut self, bytes: usize) {
        self.bound = self.bound.saturating_add(bytes as u64);
    }
}

/// Where a key stops: 7/8 of the suite's confidentiality limit, or the test limit if that is lower. A
/// testing aid may only bring the stop closer, never raise a safety limit.
fn record_stop(confidentiality_limit: u64, test_limit: Option<u64>) -> u64 {
    let stop = confidentiality_limit - confidentiality_limit / 8;
    test_limit.map_or(stop, |t| t.min(stop))
}

/// `RINGSEAL_TEST_KTLS_RECORD_LIMIT`: a lower record limit, so that tests can reach it with a few
/// megabytes. Not for production: the real limit is the suite's, and a higher value is ignored.
fn test_record_limit() -> Option<u64> {
    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var("RINGSEAL_TEST_KTLS_RECORD_LIMIT")
            .ok()
            .and_then(|v| v.parse().ok())
    })
}

// Built once per connection and unpacked at once: boxing the connection would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub(super) enum Engage {
    Engaged(Engaged),
    /// kTLS is not possible or not allowed; nothing was touched, the user-space path can take over.
    Declined {
        tcp: TcpStream,
        conn: rustls::Connection,
        plain: TcpStream,
        why: String,
    },
}

/// A connection handed to the kernel (or that failed during the hand-over, with the bytes received so
/// far still to be delivered).
pub(super) struct Engaged {
    tls: TcpStream,
    plain: TcpStream,
    up: Pump,
    down: Pump,
    /// Plaintext rustls had decrypted before the hand-over: written to the backend first.
    pending: Vec<u8>,
    /// The TX key is in the kernel; `None`: nothing more can be sent to the peer.
    tx: Option<TxLimit>,
    /// The RX key is in the kernel and the peer's stream has not ended.
    rx_open: bool,
    /// The first notable event of the hand-over.
    close: Option<Close>,
    /// Client side (a NewSessionTicket is legitimate).
    client: bool,
}

/// Hands the connection to the kernel if `offload` allows and the kernel can take its cipher.
pub(super) async fn engage(
    tls: TcpStream,
    mut conn: rustls::Connection,
    plain: TcpStream,
    offload: Offload,
) -> Engage {
    macro_rules! decline {
        ($($why:tt)+) => {
            return Engage::Declined { tcp: tls, conn, plain, why: format!($($why)+) }
        };
    }
    if offload == Offload::Off {
        decline!("offload = \"off\"");
    }
    let ciphers = match &support().result {
        Ok(c) => *c,
        Err(why) => decline!("kTLS unavailable: {why}"),
    };
    let (Some(suite), Some(version)) = (conn.negotiated_cipher_suite(), conn.protocol_version())
    else {
        decline!("the handshake is not complete");
    };
    let tls13 = match version {
        ProtocolVersion::TLSv1_3 => true,
        ProtocolVersion::TLSv1_2 => false,
        other => decline!("{other:?} cannot be offloaded"),
    };
    let Some(cipher) = cipher_of(suite.suite()).filter(|c| ciphers.supports(tls13, *c)) else {
        decline!("the kernel cannot offload {:?}", suite.suite());
    };
    let (up, down) = match Pump::new().and_then(|up| Ok((up, Pump::new()?))) {
        Ok(p) => p,
        Err(e) => decline!("cannot create pipes: {e}"),
    };
    if let Err(e) = sys::set_tls_ulp(tls.as_fd()) {
        decline!("setsockopt TCP_ULP \"tls\": {e}");
    }
    // Committed: with the tls ULP but no key yet the socket still works as plain TCP, but from here
    // on the hand-over proceeds, and a failure ends the connection.
    let limit = match suite {
        SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
        SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
    };
    let client = matches!(conn, rustls::Connection::Client(_));
    let mut pending = Vec::new();
    let mut close = None;
    let mut rx_open = true;

    // 1. Plaintext rustls decrypted: none, as `super::handshake` stops at the handshake's last record
    //    (which also leaves the socket at a record boundary); taken anyway, should that ever change.
    take_plaintext(&mut conn, &mut pending);

    // 2. What rustls queued (the client's last flight is flushed by the handshake already).
    let tcp = tls;
    let flushed = tokio::time::timeout(FLUSH_DEADLINE, flush(&tcp, &mut conn)).await;
    let mut tx = None;
    if let Ok(Err(e)) | Err(e) = flushed.map_err(|_| io::Error::from(io::ErrorKind::TimedOut)) {
        close.get_or_insert_with(|| Side::Peer.close_for(&e));
        rx_open = false;
    } else if close.is_none() {
        // 3. The keys, out of rustls and into the kernel.
        match conn.dangerous_extract_secrets() {
            Err(e) => {
                close = Some(Close::Io(format!(
                    "kTLS hand-over: extracting the keys: {e}"
                )));
                rx_open = false;
            }
            Ok(secrets) => {
                let (tx_seq, tx_secrets) = secrets.tx;
                let (rx_seq, rx_secrets) = secrets.rx;
                match set_key(&tcp, KtlsDirection::Tx, cipher, tls13, tx_seq, &tx_secrets) {
                    Ok(()) => tx = Some(TxLimit::new(cipher, tx_seq, limit)),
                    Err(e) => close = Some(Close::Io(format!("kTLS hand-over: TLS_TX: {e}"))),
                }
                if close.is_none()
                    && rx_open
                    && let Err(e) =
                        set_key(&tcp, KtlsDirection::Rx, cipher, tls13, rx_seq, &rx_secrets)
                {
                    close = Some(Close::Io(format!("kTLS hand-over: TLS_RX: {e}")));
                }
                if close.is_some() {
                    rx_open = false;
                }
                tracing::trace!(
                    "kTLS engaged: {:?} {}, tx seq {tx_seq}, rx seq {rx_seq}, {} bytes already decrypted",
                    version,
                    cipher_name(cipher),
                    pending.len()
                );
            }
        }
    }
    Engage::Engaged(Engaged {
        tls: tcp,
        plain,
        up,
        down,
        pending,
        tx,
        rx_open,
        close,
        client,
    })
}

fn take_plaintext(conn: &mut rustls::Connection, pending: &mut Vec<u8>) {
    let mut reader = conn.reader();
    while let Ok(chunk) = reader.fill_buf() {
        if chunk.is_empty() {
            break;
        }
        let n = chunk.len();
        pending.extend_from_slice(chunk);
        reader.consume(n);
    }
}

fn set_key(
    tcp: &TcpStream,
    dir: KtlsDirection,
    cipher: KtlsCipher,
    tls13: bool,
    seq: u64,
    secrets: &rustls::ConnectionTrafficSecrets,
) -> io::Result<()> {
    use rustls::ConnectionTrafficSecrets as S;
    let (key, iv) = match secrets {
        S::Aes128Gcm { key, iv } | S::Aes256Gcm { key, iv } | S::Chacha20Poly1305 { key, iv } => {
            (key.as_ref(), iv.as_ref())
        }
        _ => return Err(io::Error::other("rustls extracted an unknown cipher")),
    };
    let info = CryptoInfo::new(cipher, tls13, key, iv, seq)
        .ok_or_else(|| io::Error::other("key or IV length does not match the cipher"))?;
    sys::set_crypto(tcp.as_fd(), dir, &info)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// (down only) send close_notify, then FIN (neither after an abort).
    Closing,
    Done,
}

/// Where a handshake message that spans records stands.
#[derive(Default)]
struct HandshakeReader {
    header: [u8; 4],
    header_len: usize,
    /// Body bytes of the current message still to skip.
    skip: usize,
}

impl HandshakeReader {
    /// The type of the next message whose header completes in `data` (its body is skipped, also
    /// across records); `None` when `data` is used up.
    fn next_message(&mut self, data: &mut &[u8]) -> Option<u8> {
        while !data.is_empty() {
            if self.skip > 0 {
                let k = self.skip.min(data.len());
                self.skip -= k;
                *data = &data[k..];
                continue;
            }
            let k = (4 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + k].copy_from_slice(&data[..k]);
            self.header_len += k;
            *data = &data[k..];
            if self.header_len == 4 {
                self.header_len = 0;
                let [typ, a, b, c] = self.header;
                self.skip = u32::from_be_bytes([0, a, b, c]) as usize;
                return Some(typ);
            }
        }
        None
    }
}

/// What a control record asks of the relay.
enum Control {
    /// Nothing: keep relaying.
    Continue,
    /// Application data read along: deliver it.
    Data(usize),
    /// The peer's direction ended cleanly (close_notify).
    Closed,
    /// The peer's direction cannot go on; `Some(alert)`: tell the peer (fatal alert description).
    End(Close, Option<u8>),
}

struct Relay {
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
    pub(super) fn relay(
        self,
        limits: RelayLimits,
        counters: ByteCounters,
    ) -> impl Future<Output = Outcome> {
        let failed = self.close.is_some();
        Relay {
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
        }
    }
}

impl Relay {
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
            // Plaintext from before the hand-over, or read along with a control record.
            if self.pending_pos < self.pending.len() {
                if self.plain_wr_dead {
                    self.pending_pos = self.pending.len();
                    continue;
                }
                let (plain, chunk) = (&self.plain, &self.pending[self.pending_pos..]);
                match poll_io(cx, plain, Interest::WRITABLE, || plain.try_write(chunk)) {
                    Poll::Pending => return progress,
                    Poll::Ready(Ok(n)) => {
                        self.pending_pos += n;
                        self.delivered(n);
                    }
                    Poll::Ready(Err(e)) => {
                        self.abort(Side::Backend.close_for(&e));
                        self.plain_wr_dead = true;
                    }
                }
                progress = true;
                continue;
            }
            if !self.up_pump.is_empty() {
                if self.plain_wr_dead {
                    self.up_pump.discard();
                } else {
                    match self.up_pump.poll_drain(cx, &self.plain, usize::MAX) {
                        Poll::Pending => return progress,
                        Poll::Ready(Ok(n)) => self.delivered(n),
                        Poll::Ready(Err(e)) => {
                            self.abort(Side::Backend.close_for(&e));
                            self.plain_wr_dead = true;
                        }
                    }
                }
                progress = true;
                continue;
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
        let (record_type, n) = match std::task::ready!(poll_io(cx, tls, Interest::READABLE, || {
            sys::recv_record(tls.as_fd(), buf)
        })) {
            Ok(r) => r,
            Err(e) => return Poll::Ready(Control::End(rx_error(&e), None)),
        };
        Poll::Ready(match record_type {
            sys::RECORD_APPLICATION_DATA if n == 0 => Control::End(Close::PeerNoCloseNotify, None),
            sys::RECORD_APPLICATION_DATA => Control::Data(n),
            sys::RECORD_ALERT => match self.control[..n] {
                [_, ALERT_CLOSE_NOTIFY] => {
                    tracing::trace!("kTLS: close_notify from the peer");
                    Control::Closed
                }
                [ALERT_WARNING, ALERT_USER_CANCELED] => Control::Continue,
                [_, description] => Control::End(
                    Close::PeerTlsError(format!("the peer sent alert {description}")),
                    None,
                ),
                _ => Control::End(
                    Close::PeerTlsError("malformed alert record".into()),
                    Some(ALERT_DECODE_ERROR),
                ),
            },
            sys::RECORD_HANDSHAKE => self.handshake_messages(n),
            other => Control::End(
                Close::PeerTlsError(format!(
                    "unexpected record type {other} after the handshake"
                )),
                Some(ALERT_UNEXPECTED_MESSAGE),
            ),
        })
    }

    /// Post-handshake messages in `control[..n]` (a message may continue in the next record).
    fn handshake_messages(&mut self, n: usize) -> Control {
        let mut data = &self.control[..n];
        let mut decline_renegotiation = false;
        let mut result = Control::Continue;
        while let Some(typ) = self.handshake.next_message(&mut data) {
            match typ {
                HS_NEW_SESSION_TICKET if self.client => {
                    tracing::trace!(
                        "kTLS: NewSessionTicket from the peer ignored (resumption is off)"
                    );
                }
                HS_HELLO_REQUEST if self.client => {
                    tracing::trace!("kTLS: HelloRequest declined (no renegotiation)");
                    decline_renegotiation = true;
                }
                HS_KEY_UPDATE => {
                    tracing::trace!(
                        "kTLS: KeyUpdate from the peer; the kernel cannot follow it, aborting"
                    );
                    result = Control::End(Close::PeerKeyUpdate, None);
                    break;
                }
                other => {
                    result = Control::End(
                        Close::PeerTlsError(format!(
                            "unexpected handshake message {other} after the handshake"
                        )),
                        Some(ALERT_UNEXPECTED_MESSAGE),
                    );
                    break;
                }
            }
        }
        if decline_renegotiation {
            self.send_alert(ALERT_WARNING, ALERT_NO_RENEGOTIATION);
        }
        result
    }

    /// Backend -> peer.
    fn poll_down(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        loop {
            match self.down {
                Phase::Done => return progress,
                Phase::Closing => {
                    if !self.tls_wr_dead && !self.aborting() {
                        let tls = &self.tls;
                        let alert = [ALERT_WARNING, ALERT_CLOSE_NOTIFY];
                        match poll_io(cx, tls, Interest::WRITABLE, || {
                            sys::send_record(tls.as_fd(), sys::RECORD_ALERT, &alert)
                        }) {
                            Poll::Pending => return progress,
                            Poll::Ready(Ok(_)) => {}
                            Poll::Ready(Err(e)) => {
                                self.abort(Side::Peer.close_for(&e));
                                self.tls_wr_dead = true;
                            }
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
                    if !self.down_pump.is_empty() {
                        if discard {
                            self.down_pump.discard();
                            progress = true;
                            continue;
                        }
                        match self.down_pump.poll_drain(cx, &self.tls, usize::MAX) {
                            Poll::Pending => return progress,
                            Poll::Ready(Ok(n)) => {
                                if let Some(tx) = self.tx.as_mut() {
                                    tx.sent(n);
                                }
                                self.to_peer += n as u64;
                                self.counters.to_peer.increment(n as u64);
                            }
                            Poll::Ready(Err(e)) => {
                                self.abort(Side::Peer.close_for(&e));
                                self.tls_wr_dead = true;
                            }
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

impl Directions for Relay {
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
}

impl Future for Relay {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        super::drive(self.get_mut(), cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(reader: &mut HandshakeReader, mut record: &[u8]) -> Vec<u8> {
        std::iter::from_fn(|| reader.next_message(&mut record)).collect()
    }

    #[test]
    fn handshake_messages_across_records() {
        let mut r = HandshakeReader::default();
        // A NewSessionTicket with a 6-byte body, then a KeyUpdate, in one record.
        let record = [4, 0, 0, 6, 1, 2, 3, 4, 5, 6, 24, 0, 0, 1, 1];
        assert_eq!(types(&mut r, &record), [4, 24]);
        // The same split at every position over two records: the same messages, once each.
        for cut in 0..record.len() {
            let mut r = HandshakeReader::default();
            let mut seen = types(&mut r, &record[..cut]);
            seen.extend(types(&mut r, &record[cut..]));
            assert_eq!(seen, [4, 24], "cut at {cut}");
        }
        // A body longer than the record: skipped into the next one.
        let mut r = HandshakeReader::default();
        assert_eq!(types(&mut r, &[4, 0, 0, 10, 9, 9]), [4]);
        assert_eq!(types(&mut r, &[9; 8]), Vec::<u8>::new());
        assert_eq!(types(&mut r, &[24, 0, 0, 1, 0]), [24]);
    }

    #[test]
    fn the_test_record_limit_only_lowers_the_stop() {
        let aes_gcm = 1 << 24;
        assert_eq!(record_stop(aes_gcm, None), aes_gcm - aes_gcm / 8);
        assert_eq!(record_stop(aes_gcm, Some(1000)), 1000);
        assert_eq!(record_stop(aes_gcm, Some(u64::MAX)), aes_gcm - aes_gcm / 8);
    }

    #[test]
    fn suites_map_to_kernel_ciphers() {
        for suite in crate::tls::provider().cipher_suites.iter() {
            assert!(
                cipher_of(suite.suite()).is_some(),
                "{:?} has no kTLS cipher",
                suite.suite()
            );
        }
        let c = Ciphers(Ciphers::bit(true, KtlsCipher::Chacha20Poly1305));
        assert!(c.supports(true, KtlsCipher::Chacha20Poly1305));
        assert!(!c.supports(false, KtlsCipher::Chacha20Poly1305));
        assert!(!c.supports(true, KtlsCipher::Aes128Gcm));
    }
}
