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

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ringseal_testkit::backend::{Backend, Mode};
use ringseal_testkit::process::{Proc, env_or, ringseal_binary, ringseal_started};
use ringseal_testkit::{Pki, TLS_TABLE};

/// Source buffer: large, so that this process is not the bottleneck.
const IO_BUF: usize = 256 * 1024;

/// CPU seconds of both proxies: (utime + stime, schedstat).
fn cpu(a: &Proc, b: &Proc) -> (f64, f64) {
    (
        a.cpu_seconds() + b.cpu_seconds(),
        a.sched_cpu_seconds() + b.sched_cpu_seconds(),
    )
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
    let bin = std::env::var_os("RELAY_BENCH_BIN").map_or_else(ringseal_binary, PathBuf::from);

    let dir = tempfile::tempdir().unwrap();
    Pki::new_named("BenchCluster").write(dir.path());
    let tls = format!(
        "offload = \"{offload}\"\n\n{TLS_TABLE}protocols = [\"TLSv1.3\"]\ncipher_suites = [\"{suite}\"]\n\n"
    );

    // The sink reads each connection to EOF on a thread of its own, and reports its byte count and
    // when it ended.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let sink = runtime.block_on(Backend::bind(Mode::Count)).unwrap();
    let (inbound, inbound_addr) = ringseal_started(
        &bin,
        dir.path(),
        "inbound",
        &format!(
            "{tls}[[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"{}\"\n",
            sink.addr
        ),
        "starting inbound mTLS listener on ",
    );
    let (outbound, outbound_addr) = ringseal_started(
        &bin,
        dir.path(),
        "outbound",
        &format!("{tls}[[outbound]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{inbound_addr}\"\n"),
        "starting outbound listener on ",
    );

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
        let mut src = TcpStream::connect(outbound_addr).unwrap();
        // Let the handshake finish before the clock starts (the first write waits in the kernel).
        src.write_all(&payload[..1]).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let (cpu0, sched0) = cpu(&inbound, &outbound);
        let start = Instant::now();
        let mut sent = 1u64;
        while sent < total {
            let n = (total - sent).min(IO_BUF as u64) as usize;
            src.write_all(&payload[..n]).unwrap();
            sent += n as u64;
        }
        src.shutdown(std::net::Shutdown::Write).unwrap();
        let done = sink.next_counted(Duration::from_secs(600)).unwrap();
        assert_eq!(done.bytes, total, "bytes lost");
        let secs = done.ended.duration_since(start).as_secs_f64();
        // The proxies finish their close after the sink's EOF; a moment for their CPU to settle.
        drop(src);
        std::thread::sleep(Duration::from_millis(100));
        let (cpu1, sched1) = cpu(&inbound, &outbound);
        let (cpu, sched) = (cpu1 - cpu0, sched1 - sched0);
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
