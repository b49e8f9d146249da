//! `ringseal demo`: the product on one machine, with nothing to prepare.
//!
//! A throwaway cluster CA and three node identities are generated in memory. Each "node" is a fake
//! storage service (it echoes what it receives, as a stand-in for Cassandra's port 7000) on its own
//! loopback address (127.0.0.1-3), with a real ringseal sidecar in front of it that requires client
//! certificates, endpoint verification and OU = the cluster name. Every node streams to every other
//! node through mutual TLS; an impostor with a certificate from another CA, and a real node certificate
//! used from the wrong address, are refused. node1's sidecar also has a client listener (named
//! "client") in front of a fake CQL port, with its own TLS policy: a server certificate from a separate
//! client CA and no client certificate asked for, as drivers connect to Cassandra's TLS port; a CQL
//! client connects through it every second, and a driver without TLS is refused. The summary is read
//! from ringseal's own Prometheus metrics.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use metrics_exporter_prometheus::PrometheusHandle;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

use ringseal::config::{Config, Inbound, ListenerName, Mode, Outbound, Target};
use ringseal::pki::{Ca, Identity, NodeSpec};
use ringseal::tls::LoadedTls;
use ringseal::tls::material::TlsMaterial;
use ringseal::tls::settings::ClientAuth;
use ringseal::tls::verify::AllowList;
use ringseal::{Server, metrics as m};

use crate::signals::Signals;

const CLUSTER: &str = "DemoCluster";
/// The CA of the CQL listener's certificate: not the cluster's, as drivers often trust another one.
const CLIENT_CA: &str = "DemoClients";
/// The client listener's name: its `listener` metric label.
const CLIENT_LISTENER: &str = "client";
/// Bytes per message each node sends and reads back.
const MESSAGE: usize = 256 * 1024;

struct Node {
    ip: IpAddr,
    identity: Identity,
    /// The inbound sidecar.
    sidecar: SocketAddr,
    tls: LoadedTls,
    /// The node's outbound sidecars, one per peer.
    outbound: Vec<SocketAddr>,
}

/// node1's client listener and what a driver needs to trust it.
struct ClientPort {
    sidecar: SocketAddr,
    roots: Arc<RootCertStore>,
}

pub fn run(duration: Duration, runtime: &tokio::runtime::Runtime) -> std::process::ExitCode {
    runtime.block_on(async {
        let stop = CancellationToken::new();
        if let Some(signals) = Signals::install() {
            tokio::spawn(signals.handle(stop.clone(), None, Err("the demo cannot be upgraded")));
        }
        match demo(duration, stop).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => super::failure(&format_args!("demo failed: {e:#}")),
        }
    })
}

/// Runs the demo for `duration` or until `stop`.
async fn demo(duration: Duration, stop: CancellationToken) -> anyhow::Result<()> {
    let metrics = m::install();
    let ca = Ca::new(CLUSTER)?;
    let servers = CancellationToken::new();
    let (mut nodes, client_port) = start_nodes(&ca, &servers).await?;
    start_outbound(&mut nodes, &servers).await?;
    println!(
        "traffic: every node streams {} KiB messages in plaintext to its outbound sidecars, which carry them \
         over mutual TLS to the other nodes' inbound sidecars; the echo is checked. Every 2s an impostor \
         (certificate from another CA) and node2's certificate used from 127.0.0.3 try node1 directly. \
         Every 1s a CQL client connects to node1's client listener with TLS (trusting only {CLIENT_CA}, \
         no client certificate) and gets SUPPORTED for its OPTIONS, and a driver without TLS tries the \
         same port\n",
        MESSAGE / 1024
    );
    let traffic = CancellationToken::new();
    let mut tasks = start_traffic(&ca, &nodes, &traffic)?;
    tasks.spawn(cql_clients(client_port, traffic.clone()));
    let started = Instant::now();
    show_progress(&metrics, started, duration, &stop).await;
    traffic.cancel();
    let mut failures = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok(Err(e)) = r {
            failures.push(e);
        }
    }
    let s = Summary::read(&metrics);
    print_summary(&s, started.elapsed());
    servers.cancel();
    if let Some(e) = failures.first() {
        anyhow::bail!("{} stream(s) failed, first: {e:#}", failures.len());
    }
    if s.ok == 0 || s.bytes == 0.0 {
        anyhow::bail!("no traffic went through the sidecars");
    }
    if s.client_ok == 0 {
        anyhow::bail!("no CQL client got through node1's client listener");
    }
    Ok(())
}

/// Three nodes on 127.0.0.1-3: a fake storage port each and an inbound sidecar in front of it; node1's
/// sidecar also has the client listener in front of a fake CQL port.
async fn start_nodes(
    ca: &Ca,
    servers: &CancellationToken,
) -> anyhow::Result<(Vec<Node>, ClientPort)> {
    let mut nodes = Vec::new();
    let mut client_port = None;
    for i in 1..=3u8 {
        let ip = nodes_ip(i);
        let identity = ca.issue(&NodeSpec::new(&format!("node{i}"), &[ip]))?;
        let storage = fake_storage(ip, servers.clone()).await.with_context(|| {
            format!("binding a fake storage port on {ip} (is {ip} a loopback address here?)")
        })?;
        let material = TlsMaterial::from_der(
            vec![identity.cert_der.clone()],
            identity.key(),
            vec![ca.cert_der.clone()],
            None,
        )?;
        let tls = LoadedTls::from_material(material);
        let mut config = Config::new(tls.clone());
        config.inbound.push(Inbound {
            name: ListenerName::default_for(true, 0),
            tls: tls.clone(),
            listen: SocketAddr::new(ip, 0),
            forward: storage,
            require_endpoint_verification: true,
            allow: cluster_only(),
            mode: Mode::Strict,
        });
        let client = if i == 1 {
            let (listener, roots, cql) = client_listener(ip, servers).await?;
            config.inbound.push(listener);
            Some((roots, cql))
        } else {
            None
        };
        config.limits.shutdown_grace = Duration::from_secs(2);
        let server = Server::bind(config).await?;
        let addrs = server.inbound_addrs();
        let sidecar = addrs[0];
        tokio::spawn(server.serve(servers.clone()));
        println!(
            "node{i}: storage (echo) on {storage}, ringseal inbound on {sidecar} (mTLS, endpoint verification, OU={CLUSTER})"
        );
        if let Some((roots, cql)) = client {
            let client_sidecar = addrs[1];
            println!(
                "node{i}: CQL (fake) on {cql}, ringseal client listener on {client_sidecar} (TLS, \
                 certificate from {CLIENT_CA}, no client certificate asked)"
            );
            client_port = Some(ClientPort {
                sidecar: client_sidecar,
                roots,
            });
        }
        nodes.push(Node {
            ip,
            identity,
            sidecar,
            tls,
            outbound: Vec::new(),
        });
    }
    let client_port = client_port.context("node1 has the client listener")?;
    Ok((nodes, client_port))
}

/// The client listener on `ip`: its own TLS policy (a certificate from [`CLIENT_CA`], no client
/// certificate asked), in front of a fake CQL port. Returns the listener, the roots a driver trusts
/// and the CQL port.
async fn client_listener(
    ip: IpAddr,
    servers: &CancellationToken,
) -> anyhow::Result<(Inbound<LoadedTls>, Arc<RootCertStore>, SocketAddr)> {
    let client_ca = Ca::new(CLIENT_CA)?;
    let cert = client_ca.issue(&NodeSpec::new("node1-cql", &[ip]))?;
    let cql = fake_cql(ip, servers.clone())
        .await
        .with_context(|| format!("binding a fake CQL port on {ip}"))?;
    let material = TlsMaterial::from_der(
        vec![cert.cert_der.clone()],
        cert.key(),
        vec![client_ca.cert_der.clone()],
        None,
    )?;
    let mut tls = LoadedTls::from_material(material);
    tls.require_client_auth = ClientAuth::Off;
    let name = ListenerName::parse(CLIENT_LISTENER)
        .map_err(|e| anyhow::anyhow!("listener name {CLIENT_LISTENER:?}: {e:?}"))?;
    let listener = Inbound {
        name,
        tls,
        listen: SocketAddr::new(ip, 0),
        forward: cql,
        require_endpoint_verification: false,
        allow: AllowList::default(),
        mode: Mode::Strict,
    };
    let mut roots = RootCertStore::empty();
    roots.add(client_ca.cert_der.clone())?;
    Ok((listener, Arc::new(roots), cql))
}

/// Each node's own connections to its peers go through its outbound sidecar: plaintext in, mutual
/// TLS from the node's address to the peer's inbound sidecar, plaintext out to the peer's storage.
async fn start_outbound(nodes: &mut [Node], servers: &CancellationToken) -> anyhow::Result<()> {
    let inbound: Vec<(IpAddr, SocketAddr)> = nodes.iter().map(|n| (n.ip, n.sidecar)).collect();
    for node in nodes {
        let mut config = Config::new(node.tls.clone());
        for (i, (_, peer)) in inbound.iter().filter(|(ip, _)| *ip != node.ip).enumerate() {
            config.outbound.push(Outbound {
                name: ListenerName::default_for(false, i),
                tls: node.tls.clone(),
                listen: SocketAddr::new(node.ip, 0),
                target: Target::Fixed(*peer),
                require_endpoint_verification: true,
                allow: cluster_only(),
                mode: Mode::Strict,
                plaintext_fallback: None,
                bind_ip: Some(node.ip),
            });
        }
        config.limits.shutdown_grace = Duration::from_secs(2);
        let server = Server::bind(config).await?;
        node.outbound = server.outbound_addrs();
        tokio::spawn(server.serve(servers.clone()));
    }
    Ok(())
}

/// Peers must carry the cluster's name as their OU.
fn cluster_only() -> AllowList {
    AllowList {
        ou: vec![CLUSTER.into()],
        ..AllowList::default()
    }
}

/// Every node streams through each of its outbound sidecars; every 2 s an impostor (another CA) and
/// a real certificate used from the wrong address try node1. Each task returns the bytes it moved.
fn start_traffic(
    ca: &Ca,
    nodes: &[Node],
    traffic: &CancellationToken,
) -> anyhow::Result<tokio::task::JoinSet<anyhow::Result<u64>>> {
    let impostor = Ca::new("ImpostorCluster")?.issue(&NodeSpec::new("impostor", &[nodes[0].ip]))?;
    let roots = {
        let mut r = RootCertStore::empty();
        r.add(ca.cert_der.clone())?;
        Arc::new(r)
    };
    let mut tasks = tokio::task::JoinSet::new();
    for from in nodes {
        for via in &from.outbound {
            tasks.spawn(stream(*via, traffic.clone()));
        }
    }
    let impostor_client = client_config(&roots, &impostor)?;
    let misplaced_client = client_config(&roots, &nodes[1].identity)?;
    let target = nodes[0].sidecar;
    let bad = traffic.clone();
    tasks.spawn(async move {
        while !bad.is_cancelled() {
            let _ = attempt(&impostor_client, nodes_ip(1), target).await;
            let _ = attempt(&misplaced_client, nodes_ip(3), target).await;
            tokio::select! {
                _ = bad.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
        Ok(0)
    });
    Ok(tasks)
}

/// A line a second from ringseal's own metrics until `duration` has passed or `stop`.
async fn show_progress(
    metrics: &PrometheusHandle,
    started: Instant,
    duration: Duration,
    stop: &CancellationToken,
) {
    let mut last_bytes = 0.0;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    while started.elapsed() < duration {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let s = Summary::read(metrics);
        let negotiated = s
            .negotiated
            .iter()
            .max_by_key(|(_, n)| **n)
            .map_or(String::new(), |((p, c), _)| format!("  {p} {c}"));
        println!(
            "[{:>3}s] handshakes ok {:>3}  refused {:>3}  CQL clients {:>3}  bytes {:>9}  {:>8.1} MiB/s{negotiated}",
            started.elapsed().as_secs(),
            s.ok,
            s.refused.values().sum::<u64>(),
            s.client_ok,
            human_bytes(s.bytes),
            (s.bytes - last_bytes) / (1024.0 * 1024.0),
        );
        last_bytes = s.bytes;
    }
}

fn print_summary(s: &Summary, elapsed: Duration) {
    println!("\nsummary after {:.1}s", elapsed.as_secs_f64());
    println!("  handshakes accepted: {}", s.ok);
    for ((protocol, suite), n) in &s.negotiated {
        println!("    {n:>4} x {protocol} {suite}");
    }
    println!("  handshakes refused:  {}", s.refused.values().sum::<u64>());
    for (reason, n) in &s.refused {
        println!("    {n:>4} x {reason}");
    }
    println!(
        "  client listener (CQL, TLS from {CLIENT_CA}, no client certificate): {} client(s) \
         served, {} refused",
        s.client_ok,
        s.client_refused.values().sum::<u64>()
    );
    for (reason, n) in &s.client_refused {
        println!("    {n:>4} x {reason}");
    }
    println!(
        "  relayed: {} through the sidecars ({:.1} MiB/s on average)",
        human_bytes(s.bytes),
        s.bytes / (1024.0 * 1024.0) / elapsed.as_secs_f64()
    );
}

fn nodes_ip(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, i))
}

fn client_config(roots: &Arc<RootCertStore>, id: &Identity) -> anyhow::Result<Arc<ClientConfig>> {
    Ok(Arc::new(
        ClientConfig::builder_with_provider(ringseal::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(vec![id.cert_der.clone()], id.key())?,
    ))
}

async fn connect(
    config: &Arc<ClientConfig>,
    from: IpAddr,
    to: SocketAddr,
) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let tcp = socket.connect(to).await?;
    let name = ServerName::IpAddress(to.ip().into());
    let mut tls = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await?;
    // TLS 1.3: the server's verdict on our certificate arrives after our handshake is done; one
    // round trip shows it.
    tls.write_all(b"ping").await?;
    let mut pong = [0u8; 4];
    tls.read_exact(&mut pong).await?;
    Ok(tls)
}

/// One connection attempt that is expected to be refused.
async fn attempt(config: &Arc<ClientConfig>, from: IpAddr, to: SocketAddr) -> anyhow::Result<()> {
    connect(config, from, to).await.map(drop)
}

/// Streams messages in plaintext through a node's outbound sidecar (as Cassandra would) and checks
/// each echo, until `stop`.
async fn stream(via: SocketAddr, stop: CancellationToken) -> anyhow::Result<u64> {
    let mut conn = tokio::net::TcpStream::connect(via)
        .await
        .with_context(|| format!("connecting the outbound sidecar {via}"))?;
    let mut out = vec![0u8; MESSAGE];
    let mut back = vec![0u8; MESSAGE];
    let mut sent = 0u64;
    let mut seq = 0u64;
    while !stop.is_cancelled() {
        seq += 1;
        for (k, chunk) in out.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&(seq ^ k as u64).to_le_bytes());
        }
        conn.write_all(&out).await?;
        conn.read_exact(&mut back).await?;
        anyhow::ensure!(back == out, "via {via}: echo differs from what was sent");
        sent += MESSAGE as u64;
    }
    conn.shutdown().await?;
    Ok(sent)
}

/// A CQL client every second until `stop`: one with TLS (trusting only the client CA, no client
/// certificate) whose OPTIONS must be answered with SUPPORTED, and one without TLS that must get no
/// answer.
async fn cql_clients(port: ClientPort, stop: CancellationToken) -> anyhow::Result<u64> {
    let config = Arc::new(
        ClientConfig::builder_with_provider(ringseal::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(port.roots.clone())
            .with_no_client_auth(),
    );
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    while !stop.is_cancelled() {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let tcp = tokio::net::TcpStream::connect(port.sidecar).await?;
        let name = ServerName::IpAddress(port.sidecar.ip().into());
        let mut tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
            .context("a CQL client through the client listener")?;
        anyhow::ensure!(
            cql_options(&mut tls).await? == Some(CQL_SUPPORTED),
            "the fake CQL port did not answer OPTIONS with SUPPORTED"
        );
        // Refused by the sidecar: no answer (counted as not_tls by ringseal itself).
        let mut plain = tokio::net::TcpStream::connect(port.sidecar).await?;
        anyhow::ensure!(
            cql_options(&mut plain).await.ok().flatten().is_none(),
            "a CQL client without TLS got an answer through the client listener"
        );
    }
    Ok(0)
}

/// CQL native protocol v4: OPTIONS request, SUPPORTED response.
const CQL_OPTIONS: u8 = 0x05;
const CQL_SUPPORTED: u8 = 0x06;

/// Sends a v4 OPTIONS frame; the opcode of the answer, `None` when the connection ends instead.
async fn cql_options<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    conn: &mut S,
) -> anyhow::Result<Option<u8>> {
    conn.write_all(&[0x04, 0, 0, 1, CQL_OPTIONS, 0, 0, 0, 0])
        .await?;
    let mut header = [0u8; 9];
    if conn.read_exact(&mut header).await.is_err() {
        return Ok(None);
    }
    let len = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
    let mut body = vec![0u8; len.min(64 * 1024) as usize];
    conn.read_exact(&mut body).await?;
    Ok(Some(header[4]))
}

/// A stand-in for Cassandra's CQL port: answers each OPTIONS with SUPPORTED (CQL_VERSION 3.4.6).
async fn fake_cql(ip: IpAddr, stop: CancellationToken) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                _ = stop.cancelled() => return,
                c = listener.accept() => c,
            };
            let Ok((mut conn, _)) = conn else { continue };
            tokio::spawn(async move {
                let mut header = [0u8; 9];
                while conn.read_exact(&mut header).await.is_ok() {
                    let len = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
                    let mut body = vec![0u8; len.min(64 * 1024) as usize];
                    if conn.read_exact(&mut body).await.is_err() || header[4] != CQL_OPTIONS {
                        return;
                    }
                    // [string multimap] {"CQL_VERSION": ["3.4.6"]}
                    let mut reply = vec![0x84, 0, header[2], header[3], CQL_SUPPORTED];
                    let payload: &[u8] = b"\x00\x01\x00\x0bCQL_VERSION\x00\x01\x00\x053.4.6";
                    reply.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                    reply.extend_from_slice(payload);
                    if conn.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// A stand-in for a Cassandra storage port: echoes every connection.
async fn fake_storage(ip: IpAddr, stop: CancellationToken) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                _ = stop.cancelled() => return,
                c = listener.accept() => c,
            };
            if let Ok((mut conn, _)) = conn {
                tokio::spawn(async move {
                    let (mut r, mut w) = conn.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        }
    });
    Ok(addr)
}

/// The numbers the demo shows, read from ringseal's Prometheus exposition: internode handshakes, and
/// the client listener's apart.
#[derive(Default)]
struct Summary {
    ok: u64,
    negotiated: BTreeMap<(String, String), u64>,
    refused: BTreeMap<String, u64>,
    bytes: f64,
    client_ok: u64,
    client_refused: BTreeMap<String, u64>,
}

impl Summary {
    /// Handshakes of the client listener are told apart by their `listener` label.
    fn read(handle: &PrometheusHandle) -> Self {
        let mut s = Self::default();
        for line in handle.render().lines() {
            let Some((name, labels, value)) = parse_sample(line) else {
                continue;
            };
            let label = |k: &str| {
                labels
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map_or("", |(_, v)| *v)
                    .to_owned()
            };
            let client = label("listener") == CLIENT_LISTENER;
            match name {
                m::HANDSHAKES if client && label("result") == "ok" => s.client_ok += value as u64,
                m::HANDSHAKES if client => {
                    *s.client_refused.entry(label("reason")).or_default() += value as u64;
                }
                m::HANDSHAKES if label("result") == "ok" => {
                    s.ok += value as u64;
                    *s.negotiated
                        .entry((label("protocol"), label("cipher_suite")))
                        .or_default() += value as u64;
                }
                m::HANDSHAKES => *s.refused.entry(label("reason")).or_default() += value as u64,
                m::BYTES => s.bytes += value,
                _ => {}
            }
        }
        s
    }
}

/// One sample of the Prometheus text format: name, labels, value.
type Sample<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);

/// `name{k="v",...} value` -> parts; `None` for comments and other lines.
fn parse_sample(line: &str) -> Option<Sample<'_>> {
    if line.starts_with('#') {
        return None;
    }
    let (head, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let (name, labels) = match head.split_once('{') {
        Some((n, rest)) => (n, rest.strip_suffix('}')?),
        None => (head, ""),
    };
    let labels = labels
        .split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k, v.trim_matches('"')))
        })
        .collect();
    Some((name, labels, value))
}

fn human_bytes(b: f64) -> String {
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    } else {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_samples() {
        let (name, labels, v) =
            parse_sample(r#"ringseal_handshakes_total{direction="inbound",result="ok"} 12"#)
                .unwrap();
        assert_eq!(name, "ringseal_handshakes_total");
        assert_eq!(labels, vec![("direction", "inbound"), ("result", "ok")]);
        assert_eq!(v, 12.0);
        assert!(parse_sample("# TYPE x counter").is_none());
        assert_eq!(parse_sample("up 1").unwrap().2, 1.0);
    }
}
