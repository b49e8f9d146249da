//! One measurement: a step of the plan run once against one peer's pair (or straight against the
//! backend, the direct baseline), turned into the metrics the report shows.
//!
//! CPU is read from `/proc` for both sides of the pair before and after the workload, so every
//! peer is charged the same way; the load generator's own CPU is never counted.

use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::anchors::{Certs, Cpu, Pair};
use super::catalog::{Group, Metric, Peer, STimeClient, Suite};
use super::messages;
use super::options::Options;
use super::plan::{Setup, Step};
use super::report::{Cell, Results};
use super::workload::{self, Backend};

/// What every measurement needs.
pub struct Bench<'a> {
    pub opts: &'a Options,
    pub backend: &'a Backend,
    /// `--connections`, possibly lowered to what the open-file limit allows.
    pub connections: usize,
    /// `openssl` is installed.
    pub s_time: bool,
}

/// Runs one step for one peer (`pair` is `None` for the direct baseline).
pub async fn measure(
    bench: &Bench<'_>,
    setup: &Setup,
    step: Step,
    peer: Peer,
    pair: Option<&Pair>,
    certs: &Certs,
) -> anyhow::Result<Vec<(Metric, f64)>> {
    match step {
        Step::Bulk => bulk(bench, pair).await,
        Step::Latency => latency(bench, pair).await,
        Step::Messages => messages(bench, pair).await,
        Step::Handshake => handshakes_through(bench, pair.context("handshakes need a pair")?).await,
        Step::Kx(group) => {
            let pair = pair.context("handshakes need a pair")?;
            handshakes_to_inbound(bench, setup.suite, group, peer, pair, certs).await
        }
        Step::STime(client) => {
            let pair = pair.context("s_time needs a pair")?;
            s_time(bench, setup.suite, client, pair, certs).await
        }
    }
}

/// Where the load generator connects: the pair's plaintext entry, or the backend itself.
fn entry(bench: &Bench<'_>, pair: Option<&Pair>) -> std::net::SocketAddr {
    pair.map_or(bench.backend.addr, |p| p.entry)
}

/// CPU seconds (outbound, inbound) the pair spent since `before`.
fn cpu_since(pair: &Pair, before: Cpu) -> (f64, f64) {
    let now = pair.cpu();
    (now.outbound - before.outbound, now.inbound - before.inbound)
}

async fn bulk(bench: &Bench<'_>, pair: Option<&Pair>) -> anyhow::Result<Vec<(Metric, f64)>> {
    let before = pair.map(Pair::cpu);
    let bytes = bench.opts.bytes;
    let elapsed = workload::bulk(entry(bench, pair), bytes).await?;
    let gb = bytes as f64 / 1e9;
    let mut m = vec![(Metric::GbitPerSec, gb * 8.0 / elapsed.as_secs_f64())];
    if let (Some(p), Some(b)) = (pair, before) {
        let (o, i) = cpu_since(p, b);
        m.push((Metric::CpuSecPerGb, (o + i) / gb));
    }
    Ok(m)
}

async fn latency(bench: &Bench<'_>, pair: Option<&Pair>) -> anyhow::Result<Vec<(Metric, f64)>> {
    let rtts = workload::pingpong(entry(bench, pair), bench.opts.duration).await?;
    Ok(vec![
        (Metric::RttP50Us, workload::percentile(&rtts, 0.50)),
        (Metric::RttP99Us, workload::percentile(&rtts, 0.99)),
    ])
}

/// The small-message workload; CPU is read after the warm-up and after the drain, so it covers
/// exactly the messages counted.
async fn messages(bench: &Bench<'_>, pair: Option<&Pair>) -> anyhow::Result<Vec<(Metric, f64)>> {
    let duration = bench.opts.duration;
    let warmup = (duration / 5).min(Duration::from_secs(1));
    let mut cpu = Vec::with_capacity(2);
    let m = messages::run(
        entry(bench, pair),
        &bench.opts.messages,
        warmup,
        duration,
        messages::DRAIN,
        || cpu.extend(pair.map(Pair::cpu)),
    )
    .await?;
    let mut out = vec![(Metric::MessagesPerSec, m.per_sec)];
    if let [before, after] = cpu[..] {
        let per = |secs: f64| secs * 1e6 / m.counted as f64;
        let (o, i) = (
            after.outbound - before.outbound,
            after.inbound - before.inbound,
        );
        out.push((Metric::CpuUsPerMessage, per(o + i)));
        out.push((Metric::OutCpuUsPerMessage, per(o)));
        out.push((Metric::InCpuUsPerMessage, per(i)));
        out.push((Metric::UserCpuUsPerMessage, per(after.user - before.user)));
        out.push((
            Metric::KernelCpuUsPerMessage,
            per(after.system - before.system),
        ));
    }
    for (q, metric) in [
        (0.50, Metric::RttP50Us),
        (0.99, Metric::RttP99Us),
        (0.999, Metric::RttP999Us),
    ] {
        out.push((metric, workload::percentile(&m.rtts_us, q)));
    }
    Ok(out)
}

/// New connections through the pair: each a full mutual handshake between the two proxies.
async fn handshakes_through(bench: &Bench<'_>, pair: &Pair) -> anyhow::Result<Vec<(Metric, f64)>> {
    let before = pair.cpu();
    let started = Instant::now();
    let n = workload::churn(pair.entry, bench.opts.duration, workload::HANDSHAKE_WORKERS).await?;
    let secs = started.elapsed().as_secs_f64();
    let (o, i) = cpu_since(pair, before);
    Ok(vec![
        (Metric::HandshakesPerSec, n as f64 / secs),
        (Metric::OutCpuMsPerHandshake, o * 1e3 / n as f64),
        (Metric::InCpuMsPerHandshake, i * 1e3 / n as f64),
    ])
}

/// Handshakes from this process straight to the inbound side, offering only `group`.
async fn handshakes_to_inbound(
    bench: &Bench<'_>,
    suite: &Suite,
    group: Group,
    peer: Peer,
    pair: &Pair,
    certs: &Certs,
) -> anyhow::Result<Vec<(Metric, f64)>> {
    let before = pair.cpu();
    let client = workload::tls_client(certs, suite, group)?;
    let started = Instant::now();
    let n = workload::tls_churn(
        pair.tls,
        client,
        bench.opts.duration,
        workload::HANDSHAKE_WORKERS,
    )
    .await
    .map_err(|e| match (peer, group) {
        (Peer::Ringseal, _) | (_, Group::X25519 | Group::Secp256r1) => e,
        _ => e.context("unsupported: OpenSSL before 3.5 has no ML-KEM, so no X25519MLKEM768"),
    })?;
    let secs = started.elapsed().as_secs_f64();
    let (_, i) = cpu_since(pair, before);
    Ok(vec![
        (Metric::HandshakesPerSec, n as f64 / secs),
        (Metric::ServerCpuMsPerHandshake, i * 1e3 / n as f64),
    ])
}

async fn s_time(
    bench: &Bench<'_>,
    suite: &Suite,
    client: STimeClient,
    pair: &Pair,
    certs: &Certs,
) -> anyhow::Result<Vec<(Metric, f64)>> {
    let before = pair.cpu();
    let answered = bench.backend.requests();
    let started = Instant::now();
    let n = workload::s_time(pair.tls, certs, suite, bench.opts.duration, client).await?;
    let secs = started.elapsed().as_secs_f64();
    let (_, i) = cpu_since(pair, before);
    // Every connection s_time counted must have been answered by the storage port: a proxy
    // that dropped requests would otherwise look cheap.
    let answered = bench.backend.requests() - answered;
    anyhow::ensure!(
        client == STimeClient::Closes || answered >= n,
        "openssl s_time -www made {n} connections but only {answered} requests reached the backend"
    );
    Ok(vec![
        (Metric::HandshakesPerSec, n as f64 / secs),
        (Metric::ServerCpuMsPerHandshake, i * 1e3 / n as f64),
    ])
}

/// Added latency: a peer's median round trip minus the direct baseline's median (both over the
/// interleaved runs of the same setup). Medians on both sides keep one disturbed run from turning
/// the difference negative.
pub fn derive_added_latency(results: &mut Results, setup: &Setup) {
    for (rtt, added) in [
        (Metric::RttP50Us, Metric::AddedP50Us),
        (Metric::RttP99Us, Metric::AddedP99Us),
    ] {
        let base = setup.row_key(Step::Latency, rtt);
        let Some(row) = results.rows.iter().find(|r| r.key == base).cloned() else {
            continue;
        };
        let direct = row.cells.get(&Peer::Direct).and_then(Cell::median);
        for (peer, cell) in &row.cells {
            if *peer == Peer::Direct {
                continue;
            }
            let target = setup.row_key(Step::Latency, added);
            match (cell.median(), direct) {
                (Some(v), Some(d)) => results.add(target, *peer, v - d),
                (Some(_), None) => results.note(target, *peer, "the direct baseline failed"),
                (None, _) => results.note(
                    target,
                    *peer,
                    cell.note.as_deref().unwrap_or("no round trips measured"),
                ),
            }
        }
    }
}
