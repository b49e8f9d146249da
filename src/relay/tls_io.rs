//! The TCP socket under a rustls handshake, read one TLS record at a time.
//!
//! tokio-rustls keeps reading while rustls "wants" to read, also after the handshake has finished, so
//! rustls may hold the first records of application data, the last of them cut in half. Plaintext it has
//! decrypted can be taken out of it; half a record cannot. For kTLS the socket must be handed to the
//! kernel at a record boundary, with the record sequence numbers rustls reports. So every read here
//! stops at the end of the current header or record: after the handshake at most one record is
//! incomplete inside rustls, and [`TlsIo::to_boundary`] knows exactly how many bytes complete it.
//! Costs one extra `recv` per record during the handshake; nothing afterwards (the relay reads the
//! socket directly).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

const HEADER: usize = 5;

/// A TCP stream that never hands its reader more than the rest of the current TLS record (or header).
pub struct TlsIo {
    tcp: TcpStream,
    /// The current record's header, `header_len` bytes of it read so far.
    header: [u8; HEADER],
    header_len: usize,
    /// Bytes of the current record's body not yet read.
    body_left: usize,
}

impl TlsIo {
    pub fn new(tcp: TcpStream) -> Self {
        Self {
            tcp,
            header: [0; HEADER],
            header_len: 0,
            body_left: 0,
        }
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// The socket; whatever part of a record was read already is inside rustls.
    pub fn into_inner(self) -> TcpStream {
        self.tcp
    }

    /// True when everything read so far ends exactly at a record boundary.
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.body_left == 0
    }

    fn limit(&self) -> usize {
        if self.body_left > 0 {
            self.body_left
        } else {
            HEADER - self.header_len
        }
    }

    fn advance(&mut self, read: &[u8]) {
        if self.body_left > 0 {
            self.body_left -= read.len();
            return;
        }
        self.header[self.header_len..self.header_len + read.len()].copy_from_slice(read);
        self.header_len += read.len();
        if self.header_len == HEADER {
            // Whatever the length says: a bogus header fails inside rustls, this only bounds reads.
            self.body_left = u16::from_be_bytes([self.header[3], self.header[4]]) as usize;
            self.header_len = 0;
        }
    }

    /// Reads the rest of the record rustls holds part of into `sink` (for `read_tls`), so that the
    /// socket is left at a record boundary. `Ok(false)`: the peer closed the stream first.
    pub async fn to_boundary(
        &mut self,
        mut sink: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<bool> {
        let mut buf = [0u8; 4096];
        while !self.at_boundary() {
            let want = self.limit().min(buf.len());
            self.tcp.readable().await?;
            match self.tcp.try_read(&mut buf[..want]) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.advance(&buf[..n]);
                    sink(&buf[..n])?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

impl AsyncRead for TlsIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let want = this.limit().min(buf.remaining());
        if want == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            std::task::ready!(this.tcp.poll_read_ready(cx))?;
            let dst = buf.initialize_unfilled_to(want);
            match this.tcp.try_read(dst) {
                Ok(n) => {
                    this.advance(&dst[..n]);
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}
