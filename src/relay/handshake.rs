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

use std::io;
use std::os::fd::AsFd;

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::userspace::NbWrite;
use crate::sys;

const HEADER: usize = 5;
/// The largest record rustls accepts: a 5-byte header and 2^14 + 2048 bytes (RFC 5246 6.2.3). A header
/// announcing more, or one that is not a TLS record header at all, goes to rustls as it is, without
/// waiting for the rest: rustls refuses it with the precise error and alert.
const MAX_RECORD: usize = HEADER + 16 * 1024 + 2048;
/// What a flight is peeked into at first: a ClientHello, or a flight with a certificate chain, fits.
const FIRST_PEEK: usize = 4096;

/// Completes the handshake of `conn` over `tcp`: writes what rustls queues, reads whole records until
/// rustls is no longer handshaking. A TLS error comes back as an `io::Error` wrapping the
/// `rustls::Error` (after rustls's alert was sent, if the socket took it); a peer that closes before the
/// handshake is complete as `UnexpectedEof`.
pub async fn handshake(tcp: &TcpStream, conn: &mut rustls::Connection) -> io::Result<()> {
    let mut buf = vec![0u8; FIRST_PEEK];
    loop {
        flush(tcp, conn).await?;
        if !conn.is_handshaking() {
            return Ok(());
        }
        let available = peek_records(tcp, &mut buf).await?;
        let mut taken = 0;
        while conn.is_handshaking() {
            let Some(len) = whole_record(&buf[taken..available]) else {
                break;
            };
            feed(tcp, conn, &buf[taken..taken + len])?;
            taken += len;
        }
        if taken == 0 {
            // Only a header that is not TLS, or announces more than any record may hold: rustls
            // refuses it.
            feed(tcp, conn, &buf[..available])?;
            taken = available;
        }
        consume(tcp, &mut buf[..taken]).await?;
    }
}

/// The length of the first record in `bytes` if it is all there.
fn whole_record(bytes: &[u8]) -> Option<usize> {
    let len = HEADER + record_body(bytes)?;
    (len <= bytes.len()).then_some(len)
}

/// Content type change_cipher_spec, alert, handshake or application_data, protocol major version 3.
fn is_tls_header(h: &[u8]) -> bool {
    (20..=23).contains(&h[0]) && h[1] == 3
}

/// The body length a record header announces.
fn record_body(bytes: &[u8]) -> Option<usize> {
    let h = bytes.get(..HEADER)?;
    Some(u16::from_be_bytes([h[3], h[4]]) as usize)
}

/// Waits until the socket holds at least one whole record (or a header no record may have), peeks it
/// into `buf` (grown for a record larger than it) and returns how many bytes were peeked.
async fn peek_records(tcp: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    loop {
        let ready = tcp.ready(Interest::READABLE).await?;
        // Inside `try_io`, a `WouldBlock` (nothing whole yet) clears the readiness unless something
        // arrived meanwhile, so the next `ready` waits for more data instead of spinning.
        let peeked = tcp.try_io(Interest::READABLE, || {
            loop {
                let n = sys::peek(tcp.as_fd(), buf)?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed the connection in the middle of the handshake",
                    ));
                }
                let want = record_body(&buf[..n]).map(|body| HEADER + body);
                match want {
                    Some(w) if w > MAX_RECORD || w <= n || !is_tls_header(&buf[..HEADER]) => {
                        return Ok(n);
                    }
                    Some(w) if w > buf.len() => buf.resize(w, 0),
                    _ if ready.is_read_closed() => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "peer closed the connection in the middle of a handshake record",
                        ));
                    }
                    _ => return Err(io::ErrorKind::WouldBlock.into()),
                }
            }
        });
        match peeked {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// Gives `record` to rustls and processes it; on a TLS error, tries once to send rustls's alert.
fn feed(tcp: &TcpStream, conn: &mut rustls::Connection, mut record: &[u8]) -> io::Result<()> {
    while !record.is_empty() {
        // rustls reads at most a few KiB per call.
        if conn.read_tls(&mut record)? == 0 {
            return Err(io::Error::other("rustls accepts no more handshake data"));
        }
    }
    if let Err(e) = conn.process_new_packets() {
        let _ = conn.write_tls(&mut NbWrite(tcp));
        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
    }
    Ok(())
}

/// Takes `buf.len()` bytes, already peeked and given to rustls, off the socket.
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
    while conn.wants_write() {
        tcp.writable().await?;
        match conn.write_tls(&mut NbWrite(tcp)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_whole_or_not() {
        assert_eq!(whole_record(&[22, 3, 3, 0]), None);
        assert_eq!(whole_record(&[22, 3, 3, 0, 2, 1]), None);
        assert_eq!(whole_record(&[22, 3, 3, 0, 2, 1, 2]), Some(7));
        assert_eq!(whole_record(&[22, 3, 3, 0, 0, 9]), Some(5));
        assert_eq!(record_body(&[23, 3, 3, 0xff, 0xff]), Some(65535));
        assert!(is_tls_header(&[22, 3, 1, 1, 0]));
        assert!(!is_tls_header(b"HTTP/"));
        assert!(!is_tls_header(&[24, 3, 3, 0, 1]));
    }
}
