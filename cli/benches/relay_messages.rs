//! Small messages through a real sidecar pair, the shape of Cassandra's internode traffic: many
//! long-lived connections, a few messages in flight on each, mostly 512 B-4 KiB with an occasional
//! 64 KiB mutation, echoed by the backend (plaintext -> `ringseal run` outbound -> mutual TLS 1.3
//! AES-128-GCM -> `ringseal run` inbound -> echo, and back). What the relay costs per message, for
//! before/after comparisons of its per-message work; `ringseal bench --tests messages` compares peers.
//!
//! `cargo bench -p ringseal-cli --bench relay_messages` (a release build of the binary). Reports, per
//! run and as medians: messages/s, the two proxies' CPU-µs per message (utime + stime from
//! /proc/<pid>/stat, and the scheduler's exact time from schedstat) and the p50/p99 round trip. The load generator runs in this process and is not
//! counted.
//!
//! Environment: `RELAY_BENCH_BIN` (one or more `ringseal` binaries, comma-separated: every run
//! measures each in turn, interleaved, so that a busy machine weighs on all alike),
//! `RELAY_BENCH_CONNECTIONS` (default 48: 16 peers x 3), `RELAY_BENCH_IN_FLIGHT` (default 4 per
//! connection), `RELAY_BENCH_SECS` (default 5 per run), `RELAY_BENCH_RUNS` (default 5),
//! `RELAY_BENCH_SYSCALLS=1`: also count, with `perf stat` on both proxies, system calls per message,
//! `recvfrom` calls and how many of them found nothing to read (EAGAIN), and context switches.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use ringseal_testkit::backend::{Backend, Mode, protocol};
use ringseal_testkit::process::{Proc, env_or, ringseal_binary, ringseal_started};
use ringseal_testkit::{Pki, TLS_TABLE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};

/// One binary's sidecar pair in front of the echo backend.
struct Pair {
    bin: PathBuf,
    outbound: Proc,
    inbound: Proc,
    addr: SocketAddr,
}

impl Pair {
    fn start(bin: PathBuf, dir: &Path, tls: &str, echo: SocketAddr, i: usize) -> Self {
        let (inbound, inbound_addr) = ringseal_started(
            &bin,
            dir,
            &format!("inbound{i}"),
            &format!("{tls}[[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"{echo}\"\n"),
            "starting inbound mTLS listener on ",
        );
        let (outbound, addr) = ringseal_started(
            &bin,
            dir,
            &format!("outbound{i}"),
            &format!(
                "{tls}[[outbound]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{inbound_addr}\"\n"
            ),
            "starting outbound listener on ",
        );
        Self {
            bin,
            outbound,
            inbound,
            addr,
        }
    }

    fn cpu(&self) -> f64 {
        self.outbound.cpu_seconds() + self.inbound.cpu_seconds()
    }

    fn sched(&self) -> f64 {
        self.outbound.sched_cpu_seconds() + self.inbound.sched_cpu_seconds()
    }

    fn pids(&self) -> String {
        format!("{},{}", self.outbound.child.id(), self.inbound.child.id())
    }
}

/// Message sizes: mostly 512 B-4 KiB, one in a hundred a 64 KiB mutation.
fn message_size(rng: &mut impl Rng) -> usize {
    if rng.random_range(0..100) == 0 {
        64 * 1024
    } else {
        rng.random_range(512..=4096)
    }
}

/// What one window of load measured.
struct Window {
    messages: u64,
    secs: f64,
    cpu: f64,
    rtts_us: Vec<u32>,
    sched: f64,
    syscalls: Option<Syscalls>,
}

/// What `perf stat` counted in both proxies over a window.
#[derive(Clone, Copy)]
struct Syscalls {
    all: u64,
    recvfrom: u64,
    /// `recvfrom` calls that returned EAGAIN.
    eagain: u64,
    switches: u64,
}

/// One connection: a writer keeps `in_flight` messages outstanding, the reader matches the echoed
/// bytes to them in order and records each round trip while `measuring`.
async fn connection(
    addr: SocketAddr,
    seed: u64,
    in_flight: usize,
    stop: Arc<AtomicBool>,
    measuring: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> Vec<u32> {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.set_nodelay(true).unwrap();
    conn.write_all(&[protocol::ECHO]).await.unwrap();
    let (mut rd, mut wr) = conn.into_split();
    let permits = Arc::new(Semaphore::new(in_flight));
    let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<(usize, Instant)>();
    let writer = {
        let (permits, stop) = (permits.clone(), stop.clone());
        tokio::spawn(async move {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let payload = vec![0x5au8; 64 * 1024];
            while !stop.load(Ordering::Relaxed) {
                permits.acquire().await.unwrap().forget();
                let n = message_size(&mut rng);
                if sent_tx.send((n, Instant::now())).is_err() {
                    break;
                }
                wr.write_all(&payload[..n]).await.unwrap();
            }
            wr
        })
    };
    let mut rtts = Vec::new();
    let mut buf = vec![0u8; 128 * 1024];
    let mut have = 0usize;
    while let Some((n, sent)) = sent_rx.recv().await {
        while have < n {
            let got = rd.read(&mut buf).await.unwrap();
            assert!(got > 0, "the pair closed a connection");
            have += got;
        }
        have -= n;
        if measuring.load(Ordering::Relaxed) {
            rtts.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
            done.fetch_add(1, Ordering::Relaxed);
        }
        permits.add_permits(1);
        if stop.load(Ordering::Relaxed) {
            break;
        }
    }
    // Closing both halves ends the echo connection; what is still in flight is dropped.
    drop(writer.await.unwrap());
    rtts
}

/// `perf stat` on `pids` for as long as it runs: every system call, every `recvfrom` and those that
/// returned EAGAIN, context switches; `None` when perf cannot trace here.
fn count_syscalls(pids: &str) -> Option<std::process::Child> {
    Command::new("perf")
        .args([
            "stat",
            "-x,",
            "-e",
            "raw_syscalls:sys_enter",
            "-e",
            "syscalls:sys_exit_recvfrom",
            "-e",
            "syscalls:sys_exit_recvfrom",
            "--filter",
            "ret == -11",
            "-e",
            "context-switches",
            "-p",
            pids,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .ok()
}

fn read_counts(child: std::process::Child) -> Option<Syscalls> {
    // SIGINT makes perf print its counts and exit.
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().ok()?;
    let counts: Vec<u64> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| l.split(',').next()?.trim().parse().ok())
        .collect();
    match counts[..] {
        [all, recvfrom, eagain, switches] => Some(Syscalls {
            all,
            recvfrom,
            eagain,
            switches,
        }),
        _ => None,
    }
}

fn window(
    runtime: &tokio::runtime::Runtime,
    pair: &Pair,
    connections: usize,
    in_flight: usize,
    secs: f64,
    syscalls: bool,
    seed: u64,
) -> Window {
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..connections)
        .map(|i| {
            runtime.spawn(connection(
                pair.addr,
                seed + i as u64,
                in_flight,
                stop.clone(),
                measuring.clone(),
                done.clone(),
            ))
        })
        .collect();
    // Handshakes and a warm-up before the window opens.
    std::thread::sleep(Duration::from_millis(500));
    let perf = syscalls.then(|| count_syscalls(&pair.pids())).flatten();
    if perf.is_some() {
        // perf attaches asynchronously; give it a moment so that the window is counted whole.
        std::thread::sleep(Duration::from_millis(300));
    }
    let (cpu0, sched0) = (pair.cpu(), pair.sched());
    let start = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs_f64(secs));
    measuring.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    let (cpu, sched) = (pair.cpu() - cpu0, pair.sched() - sched0);
    let messages = done.load(Ordering::Relaxed);
    let syscalls = perf.and_then(read_counts);
    stop.store(true, Ordering::Relaxed);
    let mut rtts_us = Vec::new();
    for t in tasks {
        rtts_us.extend(runtime.block_on(t).unwrap());
    }
    Window {
        messages,
        secs: elapsed,
        cpu,
        sched,
        rtts_us,
        syscalls,
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64
}

fn load() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split(' ').take(3).collect::<Vec<_>>().join(" ")
}

fn main() {
    let connections: usize = env_or("RELAY_BENCH_CONNECTIONS", 48);
    let in_flight: usize = env_or("RELAY_BENCH_IN_FLIGHT", 4);
    let secs: f64 = env_or("RELAY_BENCH_SECS", 5.0);
    let runs: usize = env_or("RELAY_BENCH_RUNS", 5);
    let syscalls = std::env::var("RELAY_BENCH_SYSCALLS").is_ok_and(|v| v == "1");
    let bins: Vec<PathBuf> = match std::env::var("RELAY_BENCH_BIN") {
        Ok(list) => list.split(',').map(PathBuf::from).collect(),
        Err(_) => vec![ringseal_binary()],
    };

    let dir = tempfile::tempdir().unwrap();
    Pki::new_named("BenchCluster").write(dir.path());
    let tls = format!(
        "offload = \"off\"\n\n{TLS_TABLE}protocols = [\"TLSv1.3\"]\n\
         cipher_suites = [\"TLS_AES_128_GCM_SHA256\"]\n\n"
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let echo = runtime.block_on(Backend::bind(Mode::Protocol)).unwrap();
    let pairs: Vec<Pair> = bins
        .into_iter()
        .enumerate()
        .map(|(i, bin)| Pair::start(bin, dir.path(), &tls, echo.addr, i))
        .collect();
    println!(
        "relay_messages: {connections} connections x {in_flight} in flight, {secs} s x {runs} runs, \
         load {}",
        load()
    );
    for pair in &pairs {
        println!("{}: proxies {}", pair.bin.display(), pair.pids());
    }

    let mut results: Vec<Vec<Window>> = pairs.iter().map(|_| Vec::new()).collect();
    for run in 1..=runs {
        for (pair, windows) in pairs.iter().zip(&mut results) {
            let w = window(
                &runtime,
                pair,
                connections,
                in_flight,
                secs,
                syscalls,
                run as u64 * 1000,
            );
            let mut sorted = w.rtts_us.clone();
            sorted.sort_unstable();
            let per = |n: u64| n as f64 / w.messages as f64;
            let syscalls = w.syscalls.map_or(String::new(), |s| {
                format!(
                    ", per msg: {:.2} syscalls, {:.2} recvfrom ({:.2} EAGAIN), {:.2} context switches",
                    per(s.all),
                    per(s.recvfrom),
                    per(s.eagain),
                    per(s.switches)
                )
            });
            println!(
                "run {run} {}: {:.0} msg/s, {:.2} proxy CPU-µs/msg ({:.2} by schedstat), p50 {:.0} µs, \
                 p99 {:.0} µs{syscalls} (load {})",
                pair.bin.display(),
                w.messages as f64 / w.secs,
                w.cpu * 1e6 / w.messages as f64,
                w.sched * 1e6 / w.messages as f64,
                percentile(&sorted, 0.5),
                percentile(&sorted, 0.99),
                load()
            );
            windows.push(w);
        }
    }
    for (pair, windows) in pairs.iter().zip(&results) {
        let mut rate: Vec<f64> = windows.iter().map(|w| w.messages as f64 / w.secs).collect();
        let mut cpu: Vec<f64> = windows
            .iter()
            .map(|w| w.cpu * 1e6 / w.messages as f64)
            .collect();
        let mut p50 = Vec::new();
        let mut p99 = Vec::new();
        for w in windows {
            let mut sorted = w.rtts_us.clone();
            sorted.sort_unstable();
            p50.push(percentile(&sorted, 0.5));
            p99.push(percentile(&sorted, 0.99));
        }
        let mut sched: Vec<f64> = windows
            .iter()
            .map(|w| w.sched * 1e6 / w.messages as f64)
            .collect();
        let per_msg = |f: fn(&Syscalls) -> u64| {
            let mut v: Vec<f64> = windows
                .iter()
                .filter_map(|w| w.syscalls.map(|s| f(&s) as f64 / w.messages as f64))
                .collect();
            (!v.is_empty()).then(|| median(&mut v))
        };
        let syscalls = match (
            per_msg(|s| s.all),
            per_msg(|s| s.eagain),
            per_msg(|s| s.switches),
        ) {
            (Some(all), Some(eagain), Some(switches)) => format!(
                ", per msg: {all:.2} syscalls, {eagain:.2} recvfrom EAGAIN, {switches:.2} context \
                 switches"
            ),
            _ => String::new(),
        };
        println!(
            "median of {runs} {}: {:.0} msg/s, {:.2} proxy CPU-µs/msg ({:.2} by schedstat), p50 {:.0} \
             µs, p99 {:.0} µs{syscalls} (load after {})",
            pair.bin.display(),
            median(&mut rate),
            median(&mut cpu),
            median(&mut sched),
            median(&mut p50),
            median(&mut p99),
            load()
        );
    }
}
