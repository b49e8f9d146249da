//! Non-blocking socket operations for the user-space relay: one system call, and readiness
//! registered with the task when it would block.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::task::{Context, Poll};

use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Which readiness a blocked operation waits for.
#[derive(Clone, Copy)]
pub(super) enum Dir {
    Read,
    Write,
}

/// Runs a non-blocking socket operation; when it would block, registers for readiness and returns
/// `Pending` (or retries at once if the socket became ready meanwhile).
pub(super) fn poll_nb<T>(
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

/// Reads into `buf` like `TcpStream::try_read`, except that a read which returns less than `buf` had
/// room for ends the socket's readiness the way `EAGAIN` would: the receive queue was empty when the
/// read returned, so the next read waits for the next readiness event instead of making a `recvfrom`
/// that finds nothing (one per small message otherwise). tokio clears the readiness only if no event
/// arrived since it was seen, so bytes (or a FIN) arriving meanwhile still wake the task; a FIN seen
/// already is never cleared.
pub(super) fn try_read_drain(sock: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let room = buf.len();
    let mut short = None;
    let read = sock.try_io(Interest::READABLE, || {
        let n = (&*SockRef::from(sock)).read(buf)?;
        if n > 0 && n < room {
            // Reported as WouldBlock so that tokio clears the readiness; the bytes are returned below.
            short = Some(n);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match (read, short) {
        (Err(_), Some(n)) => Ok(n),
        (read, _) => read,
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
pub(in crate::relay) async fn send_close_notify_and_fin(
    tls: &TcpStream,
    mut conn: rustls::Connection,
) {
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
