//! The small-message workload (`--tests messages`): Cassandra's internode traffic as it mostly is,
//! many long-lived connections (three per peer since Cassandra 4.0) each carrying a few small
//! messages at a time, the odd large mutation among them, to the backend's echo.
//!
//! The load generator is one tokio task per connection on the bench's runtime, the same for every
//! peer (and for the direct baseline). Each task keeps `in_flight` messages outstanding: it writes a
//! message, and when the echo of the oldest one is complete it checks it and queues the next. One
//! task drives both directions (`select!` on read and write of the same socket), so there is no
//! wake-up between tasks, no channel and no timer per message: the send time is an `Instant` in
//! the task's queue, and the only timers are the run's own (warm-up, duration, drain), in the
//! caller. That keeps the generator's CPU, which shares the machine with the proxies, small and
//! alike for every peer.
//!
//! Every message is checked: its first 8 bytes are its sequence number on the connection, the rest
//! a slice of a seeded random pool chosen by that number, so a proxy that corrupts, drops, repeats
//! or reorders bytes fails the run, and one that loses a whole message fails it at the drain.
//! Sizes come from a seeded generator per connection: every peer gets the same sequence.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rand::{Rng as _, RngCore as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// The sequence number at the head of every message.
const HEADER: usize = 8;
/// The smallest message: a header and a few bytes of content.
pub const MIN_MESSAGE: usize = 16;
/// The largest message the options accept (Cassandra 4.0 frames hold at most 128 KiB; larger
/// messages are split across frames, so 16 MiB is plenty).
pub const MAX_MESSAGE: usize = 16 << 20;
/// How far apart in the pool two messages' content may start: distinct content for neighbours.
const POOL_SPREAD: usize = 64 * 1024;
/// Connections opened at once before the run (each a full mutual handshake through the pair).
const CONNECT_PARALLEL: usize = 16;
/// How long the messages still in flight when the run ends may take to come back; a message that
/// does not within this is lost (or the pair stalled), which fails the run.
pub const DRAIN: Duration = Duration::from_secs(10);

/// The shape of the workload (`--message-peers` and friends).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MessageMix {
    /// Simulated Cassandra peers (each with `connections_per_peer` connections).
    pub peers: usize,
    pub connections_per_peer: usize,
    /// Messages outstanding on each connection.
    pub in_flight: usize,
    /// Sizes of the common messages, uniform in `size_min..=size_max` bytes.
    pub size_min: usize,
    pub size_max: usize,
    /// The size of the occasional large message (a mutation).
    pub large: usize,
    /// One message in `large_every` (at random, seeded) is large; 0: none.
    pub large_every: u32,
    /// Seeds the sizes and contents: the same seed, the same messages for every peer.
    pub seed: u64,
}

impl MessageMix {
    pub fn connections(&self) -> usize {
        self.peers * self.connections_per_peer
    }

    /// The largest message this mix sends.
    fn max_size(&self) -> usize {
        if self.large_every > 0 {
            self.size_max.max(self.large)
        } else {
            self.size_max
        }
    }

    /// "16 peers x 3 connections, 4 in flight, 512-4096 B, 1 in 100 of 65536 B".
    pub fn describe(&self) -> String {
        let large = if self.large_every > 0 {
            format!(", 1 in {} of {} B", self.large_every, self.large)
        } else {
            String::new()
        };
        format!(
            "{} peers x {} connections, {} in flight each, {}-{} B{large}",
            self.peers, self.connections_per_peer, self.in_flight, self.size_min, self.size_max
        )
    }

    /// The generator of connection `conn`'s message sizes.
    fn sizes(&self, conn: usize) -> Sizes {
        Sizes {
            rng: ChaCha8Rng::seed_from_u64(self.seed ^ (conn as u64 + 1).wrapping_mul(0x9e37_79b9)),
            min: self.size_min,
            max: self.size_max,
            large: self.large,
            large_every: self.large_every,
        }
    }
}

/// Connection `conn`'s message sizes, one after another.
struct Sizes {
    rng: ChaCha8Rng,
    min: usize,
    max: usize,
    large: usize,
    large_every: u32,
}

impl Sizes {
    fn next(&mut self) -> usize {
        if self.large_every > 0 && self.rng.random_ratio(1, self.large_every) {
            self.large
        } else {
            self.rng.random_range(self.min..=self.max)
        }
    }
}

/// What a run measured.
#[derive(Debug)]
pub struct Measured {
    /// Messages completed between the end of the warm-up and the end of the run, per second.
    pub per_sec: f64,
    /// Messages completed from the end of the warm-up until every connection drained (what the
    /// CPU read over the same span is divided by).
    pub counted: u64,
    /// Round trips in microseconds of the messages completed in that span.
    pub rtts_us: Vec<f64>,
}

/// Opens `mix.connections()` connections to `entry` (each proved by one echoed byte), runs the
/// messages for `warmup` then `duration`, and drains. `window` is called at the start of the
/// measured span and again after the drain (the caller reads the proxies' CPU there).
pub async fn run(
    entry: SocketAddr,
    mix: &MessageMix,
    warmup: Duration,
    duration: Duration,
    drain: Duration,
    mut window: impl FnMut(),
) -> anyhow::Result<Measured> {
    let conns = connect_all(entry, mix.connections()).await?;
    let shared = Arc::new(Shared::default());
    let pool: Arc<[u8]> = {
        let mut p = vec![0u8; mix.max_size() + POOL_SPREAD];
        ChaCha8Rng::seed_from_u64(mix.seed).fill_bytes(&mut p);
        p.into()
    };
    let mut set = JoinSet::new();
    for (i, conn) in conns.into_iter().enumerate() {
        let c = Connection {
            index: i,
            sizes: mix.sizes(i),
            pool: pool.clone(),
            in_flight: mix.in_flight,
            read_buffer: mix.max_size() + POOL_SPREAD,
            shared: shared.clone(),
        };
        set.spawn(c.drive(conn));
    }
    // A connection that fails ends the run at once, with its error.
    let failed_early = |r: Option<Result<anyhow::Result<Done>, tokio::task::JoinError>>| match r {
        Some(Ok(Err(e))) => e,
        Some(Err(e)) => anyhow::anyhow!("a message connection panicked: {e}"),
        Some(Ok(Ok(_))) | None => anyhow::anyhow!("a message connection ended early"),
    };
    tokio::select! {
        _ = tokio::time::sleep(warmup) => {}
        r = set.join_next() => return Err(failed_early(r)),
    }
    window();
    let first = shared.completed.load(Ordering::Relaxed);
    shared.recording.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::select! {
        _ = tokio::time::sleep(duration) => {}
        r = set.join_next() => return Err(failed_early(r)),
    }
    shared.stop.store(true, Ordering::Relaxed);
    let in_time = shared.completed.load(Ordering::Relaxed) - first;
    let elapsed = started.elapsed();
    let mut rtts_us = Vec::new();
    // Closed only after the CPU is read: closing is not part of the messages' cost.
    let mut done = Vec::with_capacity(mix.connections());
    let drained = tokio::time::timeout(drain, async {
        while let Some(r) = set.join_next().await {
            let (rtts, conn) = r.context("a message connection panicked")??;
            rtts_us.extend(rtts);
            done.push(conn);
        }
        anyhow::Ok(())
    })
    .await;
    match drained {
        Ok(r) => r?,
        Err(_) => anyhow::bail!(
            "{} of {} connections still had messages in flight {}s after the run ended: the pair \
             lost them or stalled",
            set.len(),
            mix.connections(),
            drain.as_secs_f64()
        ),
    }
    window();
    drop(done);
    let counted = shared.completed.load(Ordering::Relaxed) - first;
    anyhow::ensure!(in_time > 0, "no message came back during the run");
    Ok(Measured {
        per_sec: in_time as f64 / elapsed.as_secs_f64(),
        counted,
        rtts_us,
    })
}

/// The run's state, shared by every connection (a few relaxed atomics: no lock per message).
#[derive(Default)]
struct Shared {
    /// Messages whose echo came back complete and correct.
    completed: AtomicU64,
    /// Past the warm-up: round trips are recorded.
    recording: AtomicBool,
    /// The run is over: no new messages, only the ones in flight come back.
    stop: AtomicBool,
}

/// Opens `n` connections, `CONNECT_PARALLEL` at a time.
async fn connect_all(entry: SocketAddr, n: usize) -> anyhow::Result<Vec<TcpStream>> {
    let mut conns = Vec::with_capacity(n);
    let mut set = JoinSet::new();
    let mut started = 0;
    while conns.len() < n {
        while started < n && set.len() < CONNECT_PARALLEL {
            set.spawn(super::workload::round_trip(entry));
            started += 1;
        }
        match set.join_next().await {
            Some(Ok(Ok(c))) => conns.push(c),
            Some(Ok(Err(e))) => {
                return Err(e.context(format!(
                    "opening message connection {} of {n}",
                    conns.len() + 1
                )));
            }
            Some(Err(e)) => anyhow::bail!("a connecting task failed: {e}"),
            None => break,
        }
    }
    Ok(conns)
}

/// One connection's sender and checker.
struct Connection {
    index: usize,
    sizes: Sizes,
    pool: Arc<[u8]>,
    in_flight: usize,
    read_buffer: usize,
    shared: Arc<Shared>,
}

/// A connection's round trips (µs), and the connection, still open.
type Done = (Vec<f64>, TcpStream);

/// A message sent and not yet back.
struct Pending {
    seq: u64,
    len: usize,
    sent: Instant,
}

impl Connection {
    /// Where message `seq`'s content starts in the pool: spread so that neighbours differ.
    fn offset(seq: u64) -> usize {
        (seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 48) as usize % POOL_SPREAD
    }

    /// Appends message `seq` of `len` bytes to `out`.
    fn write_message(&self, out: &mut Vec<u8>, seq: u64, len: usize) {
        let off = Self::offset(seq);
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&self.pool[off..off + len - HEADER]);
    }

    fn check(&self, got: &[u8], p: &Pending) -> anyhow::Result<()> {
        let off = Self::offset(p.seq);
        let seq = u64::from_le_bytes(got[..HEADER].try_into().expect("8 bytes"));
        anyhow::ensure!(
            seq == p.seq && got[HEADER..] == self.pool[off..off + p.len - HEADER],
            "connection {}: the echo of message {} ({} bytes) differs from what was sent{}: the pair \
             corrupted, lost or reordered data",
            self.index,
            p.seq,
            p.len,
            if seq == p.seq {
                String::new()
            } else {
                format!(" (it starts with sequence number {seq})")
            }
        );
        Ok(())
    }

    /// Sends and checks messages until the run stops and every message in flight is back; returns
    /// the recorded round trips (µs) and the connection.
    async fn drive(mut self, mut conn: TcpStream) -> anyhow::Result<Done> {
        let (mut rd, mut wr) = conn.split();
        let mut rtts = Vec::with_capacity(4096);
        let mut pending: VecDeque<Pending> = VecDeque::with_capacity(self.in_flight);
        let mut out = Vec::with_capacity(self.in_flight * self.read_buffer);
        let mut written = 0usize;
        let mut input = vec![0u8; self.read_buffer];
        let mut filled = 0usize;
        let mut seq = 0u64;
        let mut queue = |this: &mut Self, pending: &mut VecDeque<Pending>, out: &mut Vec<u8>| {
            let len = this.sizes.next();
            this.write_message(out, seq, len);
            pending.push_back(Pending {
                seq,
                len,
                sent: Instant::now(),
            });
            seq += 1;
        };
        for _ in 0..self.in_flight {
            queue(&mut self, &mut pending, &mut out);
        }
        while !pending.is_empty() {
            tokio::select! {
                biased;
                n = rd.read(&mut input[filled..]) => {
                    let n = n.with_context(|| format!("connection {}: reading echoes", self.index))?;
                    anyhow::ensure!(
                        n > 0,
                        "connection {}: closed by the pair with {} messages in flight",
                        self.index,
                        pending.len()
                    );
                    filled += n;
                    let mut at = 0;
                    while let Some(p) = pending.front() {
                        if filled - at < p.len {
                            break;
                        }
                        self.check(&input[at..at + p.len], p)?;
                        at += p.len;
                        let rtt = p.sent.elapsed();
                        pending.pop_front();
                        self.shared.completed.fetch_add(1, Ordering::Relaxed);
                        if self.shared.recording.load(Ordering::Relaxed) {
                            rtts.push(rtt.as_secs_f64() * 1e6);
                        }
                        if !self.shared.stop.load(Ordering::Relaxed) {
                            queue(&mut self, &mut pending, &mut out);
                        }
                    }
                    anyhow::ensure!(
                        !pending.is_empty() || at == filled,
                        "connection {}: {} bytes came back that were never sent",
                        self.index,
                        filled - at
                    );
                    input.copy_within(at..filled, 0);
                    filled -= at;
                }
                n = wr.write(&out[written..]), if written < out.len() => {
                    written += n.with_context(|| format!("connection {}: sending messages", self.index))?;
                    if written == out.len() {
                        out.clear();
                        written = 0;
                    }
                }
            }
        }
        Ok((rtts, conn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn mix() -> MessageMix {
        MessageMix {
            peers: 2,
            connections_per_peer: 2,
            in_flight: 4,
            size_min: 512,
            size_max: 4096,
            large: 64 * 1024,
            large_every: 10,
            seed: 7,
        }
    }

    #[test]
    fn sizes_are_seeded_and_in_range() {
        let m = mix();
        let a: Vec<usize> = (0..2000).scan(m.sizes(3), |s, _| Some(s.next())).collect();
        let b: Vec<usize> = (0..2000).scan(m.sizes(3), |s, _| Some(s.next())).collect();
        assert_eq!(a, b, "the same seed and connection give the same sizes");
        let other: Vec<usize> = (0..2000).scan(m.sizes(4), |s, _| Some(s.next())).collect();
        assert_ne!(a, other, "connections differ");
        let large = a.iter().filter(|&&s| s == m.large).count();
        assert!((100..=300).contains(&large), "about 1 in 10 large: {large}");
        assert!(a.iter().all(|&s| s == m.large || (512..=4096).contains(&s)));
    }

    /// An echo server that passes `mangle` over each chunk before echoing it.
    async fn echo(mangle: fn(&mut Vec<u8>, &mut usize)) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut c, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    // The backend's protocol: the first byte picks echo and is not echoed.
                    let mut mode = [0u8; 1];
                    if c.read_exact(&mut mode).await.is_err() {
                        return;
                    }
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut seen = 0usize;
                    loop {
                        let n = match c.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let mut chunk = buf[..n].to_vec();
                        mangle(&mut chunk, &mut seen);
                        if c.write_all(&chunk).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn run_against(addr: SocketAddr) -> anyhow::Result<Measured> {
        let ms = Duration::from_millis;
        run(addr, &mix(), ms(50), ms(200), ms(500), || {}).await
    }

    #[tokio::test]
    async fn a_faithful_echo_passes() {
        let addr = echo(|_, _| {}).await;
        let m = run_against(addr).await.unwrap();
        assert!(m.per_sec > 0.0 && m.counted > 0);
        assert!(!m.rtts_us.is_empty());
    }

    #[tokio::test]
    async fn a_corrupted_byte_fails_the_run() {
        // Flips one byte well past the connect probe (the probe's echo is 1 byte).
        let addr = echo(|chunk, seen| {
            let at = 5000usize.saturating_sub(*seen);
            if at < chunk.len() {
                chunk[at] ^= 1;
            }
            *seen += chunk.len();
        })
        .await;
        let e = run_against(addr).await.unwrap_err();
        assert!(
            format!("{e:#}").contains("differs from what was sent"),
            "{e:#}"
        );
    }

    #[tokio::test]
    async fn a_lost_byte_fails_the_run() {
        let addr = echo(|chunk, seen| {
            let at = 3000usize.saturating_sub(*seen);
            let len = chunk.len();
            if at < len {
                chunk.remove(at);
            }
            *seen += len;
        })
        .await;
        let e = run_against(addr).await.unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("differs from what was sent") || msg.contains("in flight"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn a_silent_pair_fails_at_the_drain() {
        // Echoes the connect probe, then swallows everything.
        let addr = echo(|chunk, seen| {
            let keep = usize::from(*seen == 0).min(chunk.len());
            *seen += chunk.len();
            chunk.truncate(keep);
        })
        .await;
        let e = run_against(addr).await.unwrap_err();
        assert!(
            format!("{e:#}").contains("still had messages in flight"),
            "{e:#}"
        );
    }
}
