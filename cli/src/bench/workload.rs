//! The load generator: the clients that drive a pair, and the backend standing in for the storage
//! port (`ringseal_testkit`'s, speaking its wire protocol: see `ringseal_testkit::backend`). Plain
//! TCP on the plaintext sides (tokio), rustls where the driver speaks TLS itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ringseal_testkit::backend::protocol::{ECHO, SINK};
use ringseal_testkit::backend::{BULK_BUFFER, Mode, STALL};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::anchors::{Certs, Pair};
use super::{Group, STimeClient, Suite};

/// Ping-pong message size.
const PING: usize = 1024;
/// Round trips before the ping-pong starts recording (connection setup, lazily grown buffers).
const PING_WARMUP: usize = 200;
/// Connections in flight in the handshake tests: enough to keep both cores busy whichever side is
/// the bottleneck; more would only queue.
pub const HANDSHAKE_WORKERS: usize = 4;
/// Idle connections opened at once in the memory test.
const IDLE_PARALLEL: usize = 64;
/// Deadline for one connection's setup and first round trip (a wedged proxy must not hang the bench).
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);

/// The storage-port stand-in: the tests' backend in its bench-protocol mode.
pub struct Backend(ringseal_testkit::Backend);

impl Backend {
    pub async fn start() -> std::io::Result<Self> {
        ringseal_testkit::Backend::bind(Mode::Protocol)
            .await
            .map(Self)
    }
}

impl std::ops::Deref for Backend {
    type Target = ringseal_testkit::Backend;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// Streams `bytes` through `entry` on one connection; returns the time from connect until the
/// backend acknowledged the last byte.
///
/// The sender and the backend's sink use blocking I/O on threads of their own, as iperf3 does:
/// as tokio tasks each full or empty socket buffer costs an extra `epoll_wait` and wake-up, CPU
/// taken from the proxies being measured (direct loopback measured 10-20% slower that way than
/// iperf3 on this machine), and more so from the faster pair.
pub async fn bulk(entry: SocketAddr, bytes: u64) -> anyhow::Result<Duration> {
    tokio::task::spawn_blocking(move || bulk_blocking(entry, bytes))
        .await
        .context("the bulk sender panicked")?
}

fn bulk_blocking(entry: SocketAddr, bytes: u64) -> anyhow::Result<Duration> {
    use std::io::{Read as _, Write as _};
    let started = Instant::now();
    let mut conn = std::net::TcpStream::connect_timeout(&entry, CONNECT_DEADLINE)
        .with_context(|| format!("connecting {entry}"))?;
    // A stalled pair fails instead of hanging.
    conn.set_write_timeout(Some(STALL))?;
    conn.set_read_timeout(Some(STALL))?;
    let mut header = [0u8; 9];
    header[0] = SINK;
    header[1..].copy_from_slice(&bytes.to_be_bytes());
    conn.write_all(&header)?;
    // Not all zeros (nothing compresses in TLS, but keep the data honest anyway).
    let chunk: Vec<u8> = (0..BULK_BUFFER)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut left = bytes;
    while left > 0 {
        let n = chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        conn.write_all(&chunk[..n]).with_context(|| {
            format!(
                "sending the bulk stream ({} of {bytes} bytes sent; no progress for {}s means a stalled pair)",
                bytes - left,
                STALL.as_secs()
            )
        })?;
        left -= n as u64;
    }
    let mut ack = [0u8; 1];
    conn.read_exact(&mut ack)
        .context("no acknowledgement from the backend: the pair lost or truncated the stream")?;
    Ok(started.elapsed())
}

/// 1 KiB ping-pong on one connection for `duration`; returns the round trips in microseconds.
pub async fn pingpong(entry: SocketAddr, duration: Duration) -> anyhow::Result<Vec<f64>> {
    let mut conn = tokio::time::timeout(CONNECT_DEADLINE, TcpStream::connect(entry))
        .await
        .context("connect timed out")?
        .with_context(|| format!("connecting {entry}"))?;
    conn.set_nodelay(true)?;
    conn.write_all(&[ECHO]).await?;
    let out = [0x5au8; PING];
    let mut back = [0u8; PING];
    let mut rtts = Vec::with_capacity(64 * 1024);
    let mut i = 0usize;
    let mut started = None;
    loop {
        let t = Instant::now();
        let round = async {
            conn.write_all(&out).await?;
            conn.read_exact(&mut back).await
        };
        tokio::time::timeout(CONNECT_DEADLINE, round)
            .await
            .context("a round trip took more than 10s")?
            .context("ping-pong")?;
        let rtt = t.elapsed();
        i += 1;
        if i <= PING_WARMUP {
            continue;
        }
        let s = *started.get_or_insert(t);
        rtts.push(rtt.as_secs_f64() * 1e6);
        if s.elapsed() >= duration || rtts.len() >= 2_000_000 {
            break;
        }
    }
    anyhow::ensure!(back == out, "the echo differs from what was sent");
    Ok(rtts)
}

/// The `q` quantile (0..=1) by nearest rank; `samples` need not be sorted.
pub fn percentile(samples: &[f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// One connection through the pair that proves the whole path: plaintext in, a full mutual
/// handshake between the proxies, plaintext out to the backend, and one byte back.
pub(super) async fn round_trip(entry: SocketAddr) -> anyhow::Result<TcpStream> {
    tokio::time::timeout(CONNECT_DEADLINE, async {
        let mut conn = TcpStream::connect(entry).await?;
        conn.set_nodelay(true)?;
        conn.write_all(&[ECHO, 0x2a]).await?;
        let mut b = [0u8; 1];
        conn.read_exact(&mut b).await?;
        anyhow::ensure!(b[0] == 0x2a, "wrong byte echoed");
        Ok(conn)
    })
    .await
    .context("no echo within 10s")?
}

/// New connections through the pair for `duration` with `workers` in flight; returns how many
/// completed. Fails if none did, or if more than a tenth failed (the pair is refusing).
pub async fn churn(entry: SocketAddr, duration: Duration, workers: usize) -> anyhow::Result<u64> {
    run_workers(duration, workers, move || async move {
        round_trip(entry).await.map(drop)
    })
    .await
}

/// A client config that offers exactly one suite and one key exchange group, with the node
/// certificate for client authentication and no resumption (every connection a full handshake).
pub fn tls_client(certs: &Certs, suite: &Suite, group: Group) -> anyhow::Result<Arc<ClientConfig>> {
    let cs = ringseal_testkit::client::find_suite(suite.iana)
        .with_context(|| format!("{} is not in the crypto provider", suite.iana))?;
    Ok(certs.pki.restricted_client(cs, group.rustls())?)
}

/// Full mutual TLS handshakes straight to an inbound side (`tls`), each followed by one echoed
/// byte (the server has verified us and connected its backend), then close_notify.
pub async fn tls_churn(
    tls: SocketAddr,
    config: Arc<ClientConfig>,
    duration: Duration,
    workers: usize,
) -> anyhow::Result<u64> {
    let connector = tokio_rustls::TlsConnector::from(config);
    run_workers(duration, workers, move || {
        let connector = connector.clone();
        async move {
            tokio::time::timeout(CONNECT_DEADLINE, async {
                let tcp = TcpStream::connect(tls).await?;
                tcp.set_nodelay(true)?;
                let name = ServerName::IpAddress(tls.ip().into());
                let mut s = connector.connect(name, tcp).await?;
                s.write_all(&[ECHO, 0x2a]).await?;
                s.flush().await?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await?;
                s.shutdown().await?;
                anyhow::Ok(())
            })
            .await
            .context("no echo within 10s")?
        }
    })
    .await
}

async fn run_workers<F, Fut>(duration: Duration, workers: usize, one: F) -> anyhow::Result<u64>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let deadline = Instant::now() + duration;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let one = one.clone();
        set.spawn(async move {
            let (mut ok, mut failed, mut first) = (0u64, 0u64, None);
            while Instant::now() < deadline {
                match one().await {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        failed += 1;
                        first.get_or_insert(e);
                        if ok == 0 && failed >= 3 {
                            break; // refused outright: no point hammering
                        }
                    }
                }
            }
            (ok, failed, first)
        });
    }
    let (mut ok, mut failed, mut first) = (0, 0, None);
    while let Some(r) = set.join_next().await {
        let (o, f, e) = r.context("a handshake worker panicked")?;
        ok += o;
        failed += f;
        if first.is_none() {
            first = e;
        }
    }
    if let Some(e) = first
        && (ok == 0 || failed * 10 > ok)
    {
        return Err(e.context(format!("{failed} of {} connections failed", ok + failed)));
    }
    Ok(ok)
}

/// `openssl s_time -new` with the node certificate as client certificate against an inbound side,
/// for `duration` (whole seconds, at least one), each connection closed at once or carrying one
/// request (`-www /`, answered by the backend); returns the number of connections it made.
pub async fn s_time(
    tls: SocketAddr,
    certs: &Certs,
    suite: &Suite,
    duration: Duration,
    client: STimeClient,
) -> anyhow::Result<u64> {
    let secs = duration.as_secs().max(1);
    let mut cmd = tokio::process::Command::new("openssl");
    cmd.arg("s_time")
        .arg("-connect")
        .arg(tls.to_string())
        .arg("-new")
        .arg("-cert")
        .arg(&certs.files.cert)
        .arg("-key")
        .arg(&certs.files.key)
        .arg("-CAfile")
        .arg(&certs.files.ca)
        .arg("-time")
        .arg(secs.to_string());
    if client == STimeClient::Request {
        cmd.arg("-www").arg("/");
    }
    if suite.tls13 {
        cmd.arg("-tls1_3").arg("-ciphersuites").arg(suite.openssl);
    } else {
        cmd.arg("-tls1_2").arg("-cipher").arg(suite.openssl);
    }
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(secs + 30), cmd.output())
        .await
        .context("openssl s_time did not finish")?
        .context("running openssl s_time")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "1234 connections in 0.85s; 1451.76 connections/user sec, bytes read 0"
    let n = text
        .lines()
        .find_map(|l| {
            let (n, rest) = l.trim().split_once(' ')?;
            rest.starts_with("connections in")
                .then(|| n.parse::<u64>().ok())?
        })
        .with_context(|| {
            format!(
                "openssl s_time ({}) printed no connection count: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .next()
                    .unwrap_or("")
            )
        })?;
    anyhow::ensure!(
        n > 0,
        "openssl s_time made no connection: {}",
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .next()
            .unwrap_or("")
    );
    Ok(n)
}

/// Memory per idle connection of each side, in KiB.
pub struct IdleMemory {
    pub outbound: f64,
    pub inbound: f64,
}

/// Opens `n` connections through the pair (each proven with one echoed byte), lets them sit, and
/// compares the proxies' resident memory with what it was before.
pub async fn idle_memory(pair: &Pair, backend: &Backend, n: usize) -> anyhow::Result<IdleMemory> {
    // Warm-up: whatever a proxy allocates once (pools, lazily built TLS contexts) is not per
    // connection.
    drop(open_idle(pair.entry, IDLE_PARALLEL.min(n)).await?);
    backend.wait_idle(Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = pair.rss();
    let conns = open_idle(pair.entry, n).await?;
    // Let deferred work (buffers released after the first exchange) settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = pair.rss();
    anyhow::ensure!(
        backend.active() >= n,
        "only {} of {n} connections reached the backend",
        backend.active()
    );
    drop(conns);
    let per = |a: u64, b: u64| (a as f64 - b as f64) / 1024.0 / n as f64;
    Ok(IdleMemory {
        outbound: per(after.0, before.0),
        inbound: per(after.1, before.1),
    })
}

/// Opens `n` connections through `entry`, `IDLE_PARALLEL` at a time.
async fn open_idle(entry: SocketAddr, n: usize) -> anyhow::Result<Vec<TcpStream>> {
    let mut conns = Vec::with_capacity(n);
    let mut set = tokio::task::JoinSet::new();
    let mut started = 0;
    while conns.len() < n {
        while started < n && set.len() < IDLE_PARALLEL {
            set.spawn(round_trip(entry));
            started += 1;
        }
        match set.join_next().await {
            Some(Ok(Ok(c))) => conns.push(c),
            Some(Ok(Err(e))) => {
                return Err(e.context(format!(
                    "opening idle connection {} of {n}",
                    conns.len() + 1
                )));
            }
            Some(Err(e)) => anyhow::bail!("a connecting task failed: {e}"),
            None => break,
        }
    }
    Ok(conns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
    }

    #[tokio::test]
    async fn backend_sinks_and_echoes() {
        let b = Backend::start().await.unwrap();
        let t = bulk(b.addr, 3 << 20).await.unwrap();
        assert!(t > Duration::ZERO);
        let rtts = pingpong(b.addr, Duration::from_millis(50)).await.unwrap();
        assert!(!rtts.is_empty());
        let n = churn(b.addr, Duration::from_millis(50), 2).await.unwrap();
        assert!(n > 0);
        // s_time -www: one request, one reply, then the backend closes.
        let mut c = TcpStream::connect(b.addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.0\r\n").await.unwrap();
        c.write_all(b"\r\n").await.unwrap();
        let mut reply = Vec::new();
        c.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, ringseal_testkit::backend::protocol::REPLY);
        assert_eq!(b.requests(), 1);
        let conns = open_idle(b.addr, 10).await.unwrap();
        assert_eq!(conns.len(), 10);
        drop(conns);
        b.wait_idle(Duration::from_secs(5)).await;
        assert_eq!(b.active(), 0);
    }
}
