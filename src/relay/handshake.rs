//! The TLS handshake on the raw socket, taking whole records off it and nothing after the handshake.
//!
//! Why not tokio-rustls's handshake future: it keeps reading while rustls "wants" to read, also after
//! the handshake has finished. That reads the first records of application data into rustls (the kTLS
//! hand-over needs the socket at a record boundary with nothing decrypted in user space), and it turns
//! a peer that closes or resets right after its Finished into a failed handshake, although the
//! handshake had completed and been verified.
//!
//! So each flight is looked at with `MSG_PEEK`, its complete records are given to rustls one at a time
//! until the handshake is complete, and exactly those bytes are then taken off the socket: two system
//! calls per flight (reading record by record costs two per record). Whatever follows the handshake
//! stays in the kernel for the relay, so after [`handshake`] rustls holds no application data and the
//! socket is at a record boundary.
//!
//! # What a pending handshake costs
//! Until a whole record has arrived a connection holds nothing but its socket and task:
//! [`first_record`] waits with `FIONREAD` (how much the kernel has queued) and a 5-byte peek of the
//! record header onto the stack, and only then does the listener create the rustls connection. Each
//! flight is peeked into a buffer of the size that arrived, not a fixed one. A peer that sends part of
//! a header and then a byte every few seconds costs what it sent, in the kernel.
//!
//! # Refusals
//! * Every record is checked on its header, before rustls sees it and without waiting for its body
//!   (wherever the peer's segments end, [`frame`] decides the same). A record announcing more than any record may carry
//!   (2^14 + 2048 bytes), or a plaintext record (anything but application_data before the peer's
//!   ChangeCipherSpec) of more than 2^14 bytes, is refused with `record_overflow` (RFC 8446 5.1,
//!   RFC 5246 6.2.1); rustls itself accepts plaintext records up to 2^14 + 2048 bytes.
//! * Every refusal sends an alert: rustls's own (encrypted once keys are in use), or, where rustls
//!   sends none (a record too large, a handshake message beyond rustls's 64 KiB, a handshake message
//!   interleaved with other records), one the driver writes itself: a plaintext alert, which is only
//!   possible while everything we sent was plaintext (the whole TLS 1.2 handshake of a server, a TLS
//!   1.3 handshake up to our ServerHello). After that point rustls's refusal stands: `decode_error` for
//!   a record too large; no alert for a handshake message interleaved with other records or beyond
//!   64 KiB, which rustls 0.23 refuses without one and whose encrypted alert only rustls could write.
//! * After a refusal the bytes peeked are taken off the socket, and the listener ends the connection
//!   with [`refuse`]: FIN after the alert, then what the peer still sends is read and discarded (bounded)
//!   until it closes. Closing a socket with unread bytes would send a reset instead of a FIN, and a
//!   reset can reach the peer before it has read the alert, or fail its next write.

use std::io::{self, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::time::Duration;

use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::sys;

const HEADER: usize = 5;
const CHANGE_CIPHER_SPEC: u8 = 20;
/// The most a plaintext record may carry (RFC 8446 5.1, RFC 5246 6.2.1).
const MAX_PLAINTEXT: usize = 16 * 1024;
/// The largest record of either version: a 5-byte header and 2^14 + 2048 bytes (RFC 5246 6.2.3).
const MAX_RECORD: usize = HEADER + MAX_PLAINTEXT + 2048;
/// What is peeked at once: a whole flight of a few records in one system call, bounded so that a peer
/// with megabytes queued costs no more here than a few records.
const MAX_PEEK: usize = 2 * MAX_RECORD;
/// The record_overflow alert (RFC 8446 6.2).
const RECORD_OVERFLOW: u8 = 22;
/// The decode_error alert: what rustls sends for a handshake message beyond its 64 KiB.
const DECODE_ERROR: u8 = 50;
const UNEXPECTED_MESSAGE: u8 = 10;

/// Waits, holding nothing but the socket, until the kernel has queued a whole first record (or a
/// header no record may have, which the handshake then refuses). `UnexpectedEof` when the peer closes
/// before.
pub async fn first_record(tcp: &TcpStream) -> io::Result<()> {
    queued_records(tcp, &Records::default()).await.map(|_| ())
}

/// Completes the handshake of `conn` over `tcp`: writes what rustls queues, reads whole records until
/// rustls is no longer handshaking. A TLS error comes back as an `io::Error` wrapping the
/// `rustls::Error` (after an alert was sent, if the socket took it, and with the bytes it concerned
/// taken off the socket: end the connection with [`refuse`]); a peer that closes before the handshake
/// is complete as `UnexpectedEof`.
pub async fn handshake(tcp: &TcpStream, conn: &mut rustls::Connection) -> io::Result<()> {
    let mut state = Records::default();
    // Allocated when the first flight is peeked, at the size that arrived.
    let mut buf = Vec::new();
    loop {
        flush_watched(tcp, conn, &mut state.sent).await?;
        if !conn.is_handshaking() {
            return Ok(());
        }
        let queued = queued_records(tcp, &state).await?;
        buf.resize(queued.min(MAX_PEEK), 0);
        let peeked = sys::peek(tcp.as_fd(), &mut buf)?;
        match take(tcp, conn, &buf[..peeked], &mut state) {
            Ok(taken) => consume(tcp, &mut buf[..taken]).await?,
            Err(e) => {
                // Peeked, refused: off the socket, so that closing it sends no reset.
                let _ = consume(tcp, &mut buf[..peeked]).await;
                return Err(e);
            }
        }
    }
}

/// Gives rustls the whole records at the front of `bytes`, until the handshake is complete; returns
/// how many bytes it took.
fn take(
    tcp: &TcpStream,
    conn: &mut rustls::Connection,
    bytes: &[u8],
    state: &mut Records,
) -> io::Result<usize> {
    let mut taken = 0;
    while conn.is_handshaking() {
        let rest = &bytes[taken..];
        match frame(rest, state.peer_ccs, state.sent.encrypted) {
            Framing::NeedMore => break,
            // Whole records first; the bytes after them get their own round.
            Framing::NotTls if taken > 0 => break,
            Framing::NotTls => {
                feed(tcp, conn, rest, state)?;
                return Ok(bytes.len());
            }
            Framing::Overflow => {
                return Err(state.alert(
                    tcp,
                    RECORD_OVERFLOW,
                    rustls::Error::PeerSentOversizedRecord,
                ));
            }
            Framing::HeaderOnly => {
                feed(tcp, conn, &rest[..HEADER], state)?;
                return Ok(bytes.len());
            }
            Framing::Record(len) => {
                feed(tcp, conn, &rest[..len], state)?;
                if rest[0] == CHANGE_CIPHER_SPEC
                    && conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_2)
                {
                    state.peer_ccs = true;
                }
                taken += len;
            }
        }
    }
    Ok(taken)
}

/// What the driver does with the bytes at the front of a peeked flight (decided without rustls, so
/// that `fuzz/` can try it on any bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Less than a header, or a record that has not fully arrived: wait for more.
    NeedMore,
    /// Not a TLS record header: rustls refuses the bytes with the precise error and alert.
    NotTls,
    /// More than any record (or a plaintext record) may carry, while what we sent is still
    /// plaintext: refused with our own `record_overflow` alert.
    Overflow,
    /// More than any record may carry, after our records became encrypted: rustls gets the header and
    /// refuses it with its own (encrypted) `decode_error`.
    HeaderOnly,
    /// A whole record of this many bytes (header included), for rustls.
    Record(usize),
}

/// The decision about the first record of `bytes`: `peer_ccs`, the peer's records are encrypted
/// (TLS 1.2, after its ChangeCipherSpec); `sent_encrypted`, ours are.
pub fn frame(bytes: &[u8], peer_ccs: bool, sent_encrypted: bool) -> Framing {
    frame_queued(bytes, bytes.len(), peer_ccs, sent_encrypted)
}

/// [`frame`] from the first bytes (a header is enough) and how many bytes are queued in all.
fn frame_queued(first: &[u8], queued: usize, peer_ccs: bool, sent_encrypted: bool) -> Framing {
    let Some(len) = record_len(first) else {
        return Framing::NeedMore;
    };
    if !is_tls_header(first) {
        return Framing::NotTls;
    }
    let plaintext = first[0] != sys::RECORD_APPLICATION_DATA && !peer_ccs;
    if len > MAX_RECORD || (plaintext && len > HEADER + MAX_PLAINTEXT) {
        if !sent_encrypted {
            return Framing::Overflow;
        }
        // A plaintext record over 2^14 is out of place after the keys changed: rustls refuses it
        // whole.
        if len > MAX_RECORD {
            return Framing::HeaderOnly;
        }
    }
    if len > queued {
        Framing::NeedMore
    } else {
        Framing::Record(len)
    }
}

/// The length of the first record in `bytes` (header included), once its header is there.
fn record_len(bytes: &[u8]) -> Option<usize> {
    let h = bytes.get(..HEADER)?;
    Some(HEADER + u16::from_be_bytes([h[3], h[4]]) as usize)
}

/// Content type change_cipher_spec, alert, handshake or application_data, protocol major version 3.
fn is_tls_header(h: &[u8]) -> bool {
    (20..=23).contains(&h[0]) && h[1] == 3
}

/// Waits until the socket holds at least one whole record (or a header the driver refuses at once:
/// not TLS, or announcing more than the record may hold) and returns how many bytes it holds.
async fn queued_records(tcp: &TcpStream, state: &Records) -> io::Result<usize> {
    loop {
        let ready = tcp.ready(Interest::READABLE).await?;
        // Inside `try_io`, a `WouldBlock` (nothing whole yet) clears the readiness unless something
        // arrived meanwhile, so the next `ready` waits for more data instead of spinning.
        let queued = tcp.try_io(Interest::READABLE, || {
            let mut header = [0u8; HEADER];
            let n = sys::peek(tcp.as_fd(), &mut header)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed the connection in the middle of the handshake",
                ));
            }
            let queued = sys::queued(tcp.as_fd())?;
            if wakes(&header[..n], queued, state.peer_ccs, state.sent.encrypted) {
                Ok(queued.max(n))
            } else if ready.is_read_closed() {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed the connection in the middle of a handshake record",
                ))
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            }
        });
        match queued {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// Whether `queued` bytes starting with `header` are worth a round of [`take`]: a whole record, or a
/// header it refuses at once. The same decision as [`frame`]'s, so that a refusal never depends on
/// where the peer's segments end.
pub fn wakes(header: &[u8], queued: usize, peer_ccs: bool, sent_encrypted: bool) -> bool {
    frame_queued(header, queued, peer_ccs, sent_encrypted) != Framing::NeedMore
}

/// What the driver knows of the record layer in both directions.
#[derive(Default)]
struct Records {
    sent: Sent,
    /// TLS 1.2: the peer's ChangeCipherSpec was taken, its records are encrypted from here on.
    peer_ccs: bool,
}

impl Records {
    /// Sends `alert` (fatal) as a plaintext record, possible while everything we sent was plaintext,
    /// and returns `err` as the refusal.
    fn alert(&mut self, tcp: &TcpStream, alert: u8, err: rustls::Error) -> io::Error {
        debug_assert!(!self.sent.encrypted);
        let _ = tcp.try_write(&[sys::RECORD_ALERT, 3, 3, 0, 2, 2, alert]);
        io::Error::new(io::ErrorKind::InvalidData, err)
    }
}

/// Follows the records we write, to know whether they are still plaintext: they are until the first
/// application_data record (TLS 1.3 encrypts everything after the ServerHello in those) or, in TLS 1.2,
/// our ChangeCipherSpec.
#[derive(Default)]
struct Sent {
    header: [u8; HEADER],
    header_len: usize,
    body_left: usize,
    encrypted: bool,
}

impl Sent {
    fn wrote(&mut self, mut bytes: &[u8], tls12: bool) {
        while !bytes.is_empty() && !self.encrypted {
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len());
                self.body_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (HEADER - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len == HEADER {
                let typ = self.header[0];
                self.encrypted =
                    typ == sys::RECORD_APPLICATION_DATA || (typ == CHANGE_CIPHER_SPEC && tls12);
                self.body_left = u16::from_be_bytes([self.header[3], self.header[4]]) as usize;
                self.header_len = 0;
            }
        }
    }
}

/// `io::Write` over the non-blocking socket for `rustls::Connection::write_tls` (which batches every
/// queued record into one `writev`), noting what was written in [`Sent`].
struct Watched<'a> {
    tcp: &'a TcpStream,
    sent: &'a mut Sent,
    tls12: bool,
}

impl Write for Watched<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[io::IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let n = self.tcp.try_write_vectored(bufs)?;
        let mut left = n;
        for b in bufs {
            let k = left.min(b.len());
            self.sent.wrote(&b[..k], self.tls12);
            left -= k;
            if left == 0 {
                break;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn watched<'a>(tcp: &'a TcpStream, conn: &rustls::Connection, sent: &'a mut Sent) -> Watched<'a> {
    Watched {
        tcp,
        sent,
        tls12: conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_2),
    }
}

/// Gives `record` to rustls and processes it. On a TLS error, tries once to send rustls's alert; where
/// rustls takes no more (a handshake message beyond its 64 KiB) and sends none, writes our own while
/// that is possible.
fn feed(
    tcp: &TcpStream,
    conn: &mut rustls::Connection,
    mut record: &[u8],
    state: &mut Records,
) -> io::Result<()> {
    while !record.is_empty() {
        // rustls reads at most a few KiB per call; it refuses more once a handshake message it is
        // joining has filled its 64 KiB buffer.
        let full = match conn.read_tls(&mut record) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => true,
            Err(e) => return Err(e),
        };
        if full {
            // Not `InvalidMessage`: the outbound listener reads that as "the peer does not speak
            // TLS", and this peer does.
            let err = rustls::Error::General(
                "handshake message larger than rustls's 64 KiB buffer".into(),
            );
            if state.sent.encrypted {
                return Err(io::Error::new(io::ErrorKind::InvalidData, err));
            }
            return Err(state.alert(tcp, DECODE_ERROR, err));
        }
    }
    if let Err(e) = conn.process_new_packets() {
        if conn.wants_write() {
            let _ = conn.write_tls(&mut watched(tcp, conn, &mut state.sent));
        } else if !state.sent.encrypted {
            // rustls refuses some records without an alert (a handshake message interleaved with
            // other records, RFC 8446 5.1): ours then, while it can be plaintext.
            let alert = match e {
                rustls::Error::InvalidMessage(_) => DECODE_ERROR,
                _ => UNEXPECTED_MESSAGE,
            };
            return Err(state.alert(tcp, alert, e));
        }
        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
    }
    Ok(())
}

/// Takes `buf.len()` bytes, already peeked, off the socket.
async fn consume(tcp: &TcpStream, mut buf: &mut [u8]) -> io::Result<()> {
    while !buf.is_empty() {
        tcp.readable().await?;
        match tcp.try_read(buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => buf = &mut buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes everything rustls has queued.
pub(super) async fn flush(tcp: &TcpStream, conn: &mut rustls::Connection) -> io::Result<()> {
    flush_watched(tcp, conn, &mut Sent::default()).await
}

/// Writes everything rustls has queued, following it in `sent`.
async fn flush_watched(
    tcp: &TcpStream,
    conn: &mut rustls::Connection,
    sent: &mut Sent,
) -> io::Result<()> {
    while conn.wants_write() {
        tcp.writable().await?;
        match conn.write_tls(&mut watched(tcp, conn, sent)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// How much of what a refused peer still sends is read and discarded before closing: the rest of a
/// 64 KiB ClientHello and more.
const DRAIN_BYTES: usize = 256 * 1024;
/// How long a refused peer gets to close after our FIN.
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// Ends a connection whose handshake was refused, after the alert (if any) was written: FIN, then what
/// the peer still sends is read and discarded until it closes, at most [`DRAIN_BYTES`] within
/// [`DRAIN_TIME`], so that the close is a FIN and not a reset. Boxed: its buffer is not part of every
/// connection's task.
pub fn refuse(tcp: TcpStream) -> impl Future<Output = ()> + Send {
    Box::pin(async move {
        let _ = SockRef::from(&tcp).shutdown(Shutdown::Write);
        let mut sink = [0u8; 4096];
        let mut left = DRAIN_BYTES;
        let _ = tokio::time::timeout(DRAIN_TIME, async {
            while left > 0 {
                if tcp.readable().await.is_err() {
                    return;
                }
                match tcp.try_read(&mut sink) {
                    Ok(0) => return,
                    Ok(n) => left = left.saturating_sub(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        })
        .await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_lengths_come_from_the_header() {
        assert_eq!(record_len(&[22, 3, 3, 0]), None);
        assert_eq!(record_len(&[22, 3, 3, 0, 2, 1]), Some(7));
        assert_eq!(record_len(&[22, 3, 3, 0, 0, 9]), Some(5));
        assert_eq!(record_len(&[23, 3, 3, 0xff, 0xff]), Some(HEADER + 65535));
        assert!(is_tls_header(&[22, 3, 1, 1, 0]));
        assert!(!is_tls_header(b"HTTP/"));
        assert!(!is_tls_header(&[24, 3, 3, 0, 1]));
    }

    #[test]
    fn oversized_records_are_refused_on_their_header() {
        // A plaintext record of 2^14 + 1 bytes, header only: refused now, not after 16 KiB more.
        let header = [22, 3, 1, 0x40, 0x01];
        assert!(wakes(&header, HEADER, false, false));
        assert_eq!(frame(&header, false, false), Framing::Overflow);
        // Encrypted (after the peer's CCS), the same length is a record to wait for.
        assert!(!wakes(&header, HEADER, true, false));
        assert_eq!(frame(&header, true, false), Framing::NeedMore);
        // Beyond any record: refused on the header either way.
        let beyond = [23, 3, 3, 0xff, 0xff];
        assert!(wakes(&beyond, HEADER, true, true));
        assert_eq!(frame(&beyond, true, true), Framing::HeaderOnly);
        let mut whole = vec![22, 3, 3, 0, 2, 1, 2, 22];
        assert_eq!(frame(&whole, false, false), Framing::Record(7));
        whole.truncate(6);
        assert!(!wakes(&whole, whole.len(), false, false));
    }

    #[test]
    fn written_records_are_followed_across_partial_writes() {
        let tls13_flight = [
            &[22, 3, 3, 0, 3, 2, 0, 0][..],
            &[20, 3, 3, 0, 1, 1],
            &[23, 3, 3, 0, 2, 9, 9],
        ]
        .concat();
        // TLS 1.3: the CCS (of a HelloRetryRequest too) changes nothing, application_data does.
        let mut sent = Sent::default();
        sent.wrote(&tls13_flight[..14], false);
        assert!(
            !sent.encrypted,
            "handshake and CCS are plaintext in TLS 1.3"
        );
        sent.wrote(&tls13_flight[14..16], false);
        assert!(!sent.encrypted, "only part of the next header");
        sent.wrote(&tls13_flight[16..], false);
        assert!(sent.encrypted);
        // TLS 1.2: our ChangeCipherSpec.
        let mut sent = Sent::default();
        for b in &tls13_flight[..8] {
            sent.wrote(std::slice::from_ref(b), true);
        }
        assert!(!sent.encrypted);
        sent.wrote(&tls13_flight[8..9], true);
        assert!(!sent.encrypted, "a header byte is not a header");
        sent.wrote(&tls13_flight[9..13], true);
        assert!(sent.encrypted);
    }
}
