//! Bulk throughput and CPU cost of the relay, the way iperf3 would see it: ONE connection streamed
//! through a real sidecar pair (plaintext in -> `ringseal run` outbound -> mutual TLS -> `ringseal run`
//! inbound -> plaintext out to a sink), TLS 1.3 AES-128-GCM, ECDSA P-256 certificates.
//!
//! `cargo bench --bench relay_throughput` (a release build of the binary). Reports, per run and as the
//! median: Gbit/s (first byte written to last byte received by the sink) and the two proxies'
//! CPU-seconds per GB: utime + stime from /proc/<pid>/stat (sampled at clock ticks), and the
//! scheduler's exact time from /proc/<pid>/task/*/schedstat. The source and the sink run in this
//! process and are not counted.
//!
//! Environment: `RELAY_BENCH_GB` (default 2) per run, `RELAY_BENCH_RUNS` (default 5),
//! `RELAY_BENCH_OFFLOAD` (default `off`: the user-space path even where kTLS exists),
//! `RELAY_BENCH_SUITE` (default `TLS_AES_128_GCM_SHA256`), `RELAY_BENCH_BIN` (another `ringseal`
//! binary, e.g. a copy built from main, for before/after comparisons).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ringseal::pki::{Ca, NodeSpec};

/// Source and sink buffers: large, so that this process is not the bottleneck.
const IO_BUF: usize = 256 * 1024;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Proxy {
    child: Child,
    addr: SocketAddr,
}

impl Proxy {
    fn start(dir: &Path, name: &str, config: &str, marker: &str) -> Self {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).unwrap();
        let bin = std::env::var("RELAY_BENCH_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_ringseal").to_string());
        let mut child = Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(&path)
            .env("RINGSEAL_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        let addr = loop {
            let line = deadline
                .checked_duration_since(Instant::now())
                .and_then(|left| rx.recv_timeout(left).ok())
                .unwrap_or_else(|| panic!("{name} did not start:\n{}", seen.join("\n")));
            seen.push(line.clone());
            if let Some(rest) = line.split(marker).nth(1) {
                break rest.split(' ').next().unwrap().parse().unwrap();
            }
        };
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Self { child, addr }
    }

    /// utime + stime in seconds.
    fn cpu(&self, tick: f64) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the command name (which is in parentheses and may contain spaces).
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        // rest[0] is field 3 (state); utime is field 14, stime field 15.
        let utime: f64 = f[11].parse().unwrap();
        let stime: f64 = f[12].parse().unwrap();
        (utime + stime) / tick
    }

    /// CPU time in seconds from the scheduler's exact accounting (`/proc/<pid>/task/*/schedstat`,
    /// nanoseconds on CPU per thread), not sampled at clock ticks like utime + stime. A thread that
    /// exits between two looks takes its time with it; the relay's threads do not exit.
    fn sched_cpu(&self) -> f64 {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.child.id())).unwrap();
        let mut ns = 0u64;
        for task in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(task.path().join("schedstat")) {
                ns += s
                    .split(' ')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
            }
        }
        ns as f64 / 1e9
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
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

fn main() {
    // `cargo bench` passes `--bench`; any other argument (a filter from `cargo bench foo`) is ignored.
    let gb: f64 = env_or("RELAY_BENCH_GB", 2.0);
    let runs: usize = env_or("RELAY_BENCH_RUNS", 5);
    let offload: String = env_or("RELAY_BENCH_OFFLOAD", "off".to_string());
    let suite: String = env_or("RELAY_BENCH_SUITE", "TLS_AES_128_GCM_SHA256".to_string());
    let total = (gb * 1e9) as u64;
    let tick = clock_ticks();

    let dir = tempfile::tempdir().unwrap();
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let ca = Ca::new("BenchCluster").unwrap();
    let node = ca.issue(&NodeSpec::new("node1", &[ip])).unwrap();
    std::fs::write(dir.path().join("node.crt"), &node.cert_pem).unwrap();
    std::fs::write(dir.path().join("node.key"), &node.key_pem).unwrap();
    std::fs::write(dir.path().join("ca.crt"), &ca.cert_pem).unwrap();
    let tls = format!(
        "offload = \"{offload}\"\n\n[tls]\ncert = \"node.crt\"\nkey = \"node.key\"\nca = \"ca.crt\"\n\
         protocols = [\"TLSv1.3\"]\ncipher_suites = [\"{suite}\"]\n\n"
    );

    let sink = TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let inbound = Proxy::start(
        dir.path(),
        "inbound",
        &format!("{tls}[[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"{sink_addr}\"\n"),
        "starting inbound mTLS listener on ",
    );
    let outbound = Proxy::start(
        dir.path(),
        "outbound",
        &format!(
            "{tls}[[outbound]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\n",
            inbound.addr
        ),
        "starting outbound listener on ",
    );

    // The sink: reads each connection to EOF and reports the byte count and when it ended.
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in sink.incoming() {
            let Ok(mut conn) = conn else { break };
            let tx = done_tx.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; IO_BUF];
                let mut n = 0u64;
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k as u64,
                    }
                }
                let _ = tx.send((n, Instant::now()));
            });
        }
    });

    let payload: Vec<u8> = (0..IO_BUF as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "relay_throughput: {gb} GB x {runs} runs, {suite}, offload = {offload}, load {}, \
         proxies: outbound pid {}, inbound pid {}",
        load.split(' ').take(3).collect::<Vec<_>>().join(" "),
        outbound.child.id(),
        inbound.child.id(),
    );

    let (mut gbits, mut cpus, mut scheds) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        let mut src = TcpStream::connect(outbound.addr).unwrap();
        // Let the handshake finish before the clock starts (the first write waits in the kernel).
        src.write_all(&payload[..1]).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let cpu0 = inbound.cpu(tick) + outbound.cpu(tick);
        let sched0 = inbound.sched_cpu() + outbound.sched_cpu();
        let start = Instant::now();
        let mut sent = 1u64;
        while sent < total {
            let n = (total - sent).min(IO_BUF as u64) as usize;
            src.write_all(&payload[..n]).unwrap();
            sent += n as u64;
        }
        src.shutdown(std::net::Shutdown::Write).unwrap();
        let (received, end) = done_rx.recv_timeout(Duration::from_secs(600)).unwrap();
        assert_eq!(received, total, "bytes lost");
        let secs = end.duration_since(start).as_secs_f64();
        // The proxies finish their close after the sink's EOF; a moment for their CPU to settle.
        drop(src);
        std::thread::sleep(Duration::from_millis(100));
        let cpu = inbound.cpu(tick) + outbound.cpu(tick) - cpu0;
        let sched = inbound.sched_cpu() + outbound.sched_cpu() - sched0;
        let g = total as f64 * 8.0 / secs / 1e9;
        let c = cpu / (total as f64 / 1e9);
        let s = sched / (total as f64 / 1e9);
        println!(
            "run {run}: {g:.2} Gbit/s, {c:.3} proxy CPU-s/GB (utime+stime; {s:.3} by schedstat) \
             ({secs:.2} s, {cpu:.2} CPU-s)"
        );
        gbits.push(g);
        cpus.push(c);
        scheds.push(s);
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "median of {runs}: {:.2} Gbit/s, {:.3} proxy CPU-s/GB (utime+stime; {:.3} by schedstat) \
         (load after {})",
        median(&mut gbits),
        median(&mut cpus),
        median(&mut scheds),
        load.split(' ').take(3).collect::<Vec<_>>().join(" ")
    );
}
