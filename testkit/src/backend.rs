//! A stand-in for the storage port behind a sidecar: it accepts on 127.0.0.1:0, counts connections
//! (accepted, open now) and treats each one as its [`Mode`] says.
//!
//! [`Mode::Protocol`] is `ringseal bench`'s wire protocol (the proxies just relay it): the first byte
//! picks what the connection does. [`protocol::SINK`] + a u64 length (big-endian): the backend reads
//! exactly that many bytes, then answers one byte, so the sender knows everything arrived without
//! relying on half-close (which proxies treat differently). [`protocol::ECHO`]: echo everything until
//! EOF. [`protocol::REQUEST`]: `openssl s_time -www`'s "GET / HTTP/1.0" request, answered with an
//! empty HTTP/1.0 reply and a close. A connection that sends nothing is simply closed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::LOCALHOST;

/// The first bytes of [`Mode::Protocol`]'s connections, and its HTTP reply.
pub mod protocol {
    pub const SINK: u8 = b'S';
    pub const ECHO: u8 = b'E';
    /// The first byte of `openssl s_time -www`'s request line ("GET ...").
    pub const REQUEST: u8 = b'G';
    /// The answer to it.
    pub const REPLY: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
}

/// The sink's buffer: large, like iperf3's default 128 KiB, so the backend's own syscalls stay a
/// small part of the machine's work.
pub const BULK_BUFFER: usize = 256 * 1024;
/// The most an echo connection reads (and writes back) at once: a large Cassandra message.
const ECHO_BUFFER_MAX: usize = 128 * 1024;
/// A bulk transfer that makes no progress for this long has stalled: it fails instead of hanging.
pub const STALL: Duration = Duration::from_secs(30);

/// What a backend does with each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Echo everything, keeping a copy of what arrived.
    Echo,
    /// Read everything, keep it, then close.
    Sink,
    /// Read to EOF on a blocking thread, counting bytes only (gigabytes through a relay bench):
    /// each finished connection is a [`Counted`].
    Count,
    /// `ringseal bench`'s wire protocol (see the module doc).
    Protocol,
}

/// A finished [`Mode::Count`] connection.
#[derive(Debug, Clone, Copy)]
pub struct Counted {
    pub bytes: u64,
    /// When its last byte (or EOF) arrived.
    pub ended: Instant,
}

/// A fake storage port; stops accepting when dropped.
pub struct Backend {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    /// What each finished connection received ([`Mode::Echo`], [`Mode::Sink`]).
    pub received: Arc<Mutex<Vec<Vec<u8>>>>,
    /// One entry per finished connection ([`Mode::Echo`], [`Mode::Sink`]): how its read side ended
    /// ("eof" or the error kind).
    pub endings: Arc<Mutex<Vec<String>>>,
    counted: Mutex<mpsc::Receiver<Counted>>,
    active: Arc<AtomicUsize>,
    /// [`protocol::REQUEST`]s answered.
    requests: Arc<AtomicU64>,
    stop: CancellationToken,
}

/// What a connection's task shares with the backend.
#[derive(Clone)]
struct Shared {
    mode: Mode,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    endings: Arc<Mutex<Vec<String>>>,
    counted: mpsc::Sender<Counted>,
    requests: Arc<AtomicU64>,
}

impl Backend {
    /// A backend on 127.0.0.1:0 (panics if it cannot listen: for tests).
    pub async fn start(mode: Mode) -> Self {
        Self::bind(mode).await.unwrap()
    }

    /// A backend on 127.0.0.1:0.
    pub async fn bind(mode: Mode) -> std::io::Result<Self> {
        let listener = TcpListener::bind((LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (counted, counts) = mpsc::channel();
        let shared = Shared {
            mode,
            received: Arc::default(),
            endings: Arc::default(),
            counted,
            requests: Arc::default(),
        };
        let backend = Self {
            addr,
            accepted: Arc::default(),
            received: shared.received.clone(),
            endings: shared.endings.clone(),
            counted: Mutex::new(counts),
            active: Arc::default(),
            requests: shared.requests.clone(),
            stop: CancellationToken::new(),
        };
        let (accepted, active, halt) = (
            backend.accepted.clone(),
            backend.active.clone(),
            backend.stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    _ = halt.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((conn, _)) = conn else {
                    // Out of descriptors (a memory test's thousands of connections): back off
                    // instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                active.fetch_add(1, Ordering::SeqCst);
                let (active, halt, shared) = (active.clone(), halt.clone(), shared.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = halt.cancelled() => {}
                        _ = shared.serve(conn) => {}
                    }
                    active.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Ok(backend)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// [`protocol::REQUEST`]s answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// Waits until `n` connections have finished on the backend (bounded, to fail rather than hang).
    pub async fn wait_finished(&self, n: usize) {
        for _ in 0..1000 {
            if self.endings.lock().unwrap().len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "backend: expected {n} finished connections, have {}",
            self.endings.lock().unwrap().len()
        );
    }

    /// Waits (bounded) until no connection is open at the backend.
    pub async fn wait_idle(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.active() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The next finished [`Mode::Count`] connection, waiting up to `limit` for it (blocking: for a
    /// bench's main thread).
    pub fn next_counted(&self, limit: Duration) -> Option<Counted> {
        self.counted.lock().unwrap().recv_timeout(limit).ok()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Shared {
    async fn serve(self, conn: TcpStream) {
        match self.mode {
            Mode::Echo | Mode::Sink => self.record(conn).await,
            Mode::Count => {
                let counted = self.counted.clone();
                let Ok(conn) = conn.into_std() else { return };
                let c = tokio::task::spawn_blocking(move || count(conn)).await;
                if let Ok(c) = c {
                    let _ = counted.send(c);
                }
            }
            Mode::Protocol => {
                let _ = serve_protocol(conn, &self.requests).await;
            }
        }
    }

    /// Reads to the end, echoing if asked, and records what arrived and how the read side ended.
    async fn record(self, mut s: TcpStream) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = Vec::new();
        let ending = loop {
            match s.read(&mut buf).await {
                Ok(0) => break "eof".to_string(),
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if self.mode == Mode::Echo && s.write_all(&buf[..n]).await.is_err() {
                        break "write error".to_string();
                    }
                }
                Err(err) => break format!("{:?}", err.kind()),
            }
        };
        self.received.lock().unwrap().push(got);
        self.endings.lock().unwrap().push(ending);
        let _ = s.shutdown().await;
    }
}

/// Reads to EOF (or an error), with blocking reads on a thread of its own as iperf3 does: as a
/// tokio task each empty socket buffer costs an extra `epoll_wait` and wake-up, CPU taken from the
/// proxies being measured.
fn count(mut conn: std::net::TcpStream) -> Counted {
    use std::io::Read as _;
    let _ = conn.set_nonblocking(false);
    let mut buf = vec![0u8; BULK_BUFFER];
    let mut bytes = 0u64;
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => bytes += n as u64,
        }
    }
    Counted {
        bytes,
        ended: Instant::now(),
    }
}

async fn serve_protocol(mut conn: TcpStream, answered: &AtomicU64) -> std::io::Result<()> {
    let _ = conn.set_nodelay(true);
    let mut mode = [0u8; 1];
    if conn.read(&mut mode).await? == 0 {
        return Ok(());
    }
    match mode[0] {
        protocol::SINK => {
            let left = conn.read_u64().await?;
            // Nothing is buffered above the socket, so the stream continues exactly here.
            let conn = conn.into_std()?;
            return tokio::task::spawn_blocking(move || sink(conn, left))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        }
        protocol::ECHO => {
            // Small buffer: an idle echo connection should cost the backend little. It grows the
            // first time a read fills it (large messages), so a 64 KiB message goes back in one
            // write, as a storage node would send it, not in sixteen.
            let mut buf = vec![0u8; 4096];
            loop {
                let n = conn.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                conn.write_all(&buf[..n]).await?;
                if n == buf.len() && buf.len() < ECHO_BUFFER_MAX {
                    buf.resize(ECHO_BUFFER_MAX, 0);
                }
            }
        }
        protocol::REQUEST => {
            // `openssl s_time -www PAGE`: "GET PAGE HTTP/1.0" and a blank line; answer and close, as
            // an HTTP/1.0 server does, so the client's read of the reply ends.
            let mut seen = vec![mode[0]];
            let mut buf = [0u8; 512];
            while !seen.ends_with(b"\r\n\r\n") {
                let n = conn.read(&mut buf).await?;
                if n == 0 || seen.len() > 8192 {
                    return Ok(());
                }
                seen.extend_from_slice(&buf[..n]);
            }
            conn.write_all(protocol::REPLY).await?;
            answered.fetch_add(1, Ordering::SeqCst);
        }
        _ => {}
    }
    let _ = conn.shutdown().await;
    Ok(())
}

/// The bulk sink: reads `left` bytes, acknowledges them with one byte, then reads until the sender
/// closes. Blocking reads on a thread of its own (see [`count`]).
fn sink(mut conn: std::net::TcpStream, mut left: u64) -> std::io::Result<()> {
    use std::io::{Read as _, Write as _};
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(STALL))?;
    conn.set_write_timeout(Some(STALL))?;
    let mut buf = vec![0u8; BULK_BUFFER];
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = conn.read(&mut buf[..want])?;
        if n == 0 {
            return Ok(()); // truncated: the sender sees no acknowledgement
        }
        left -= n as u64;
    }
    conn.write_all(&[1])?;
    // Until the sender closes.
    while conn.read(&mut buf)? > 0 {}
    Ok(())
}
