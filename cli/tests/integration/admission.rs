//! Admission control through the real binary: a flood of connections that never handshake, from one
//! address or from many, neither keeps a real peer out nor delays the node's own outbound connections
//! in the same process; the per-source cap, the eviction of the oldest handshake and the established
//! budget turn connections away, counted on `/metrics`; the listen backlog reaches listen(2).
//!
//! Floods are bounded in count (a few hundred connections) and in time (they end with the test). No
//! latency is asserted: a step that would wait for a slot fails by not finishing within a generous
//! deadline.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use ringseal_testkit::process::{Proc, address_after};
use ringseal_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A step that must not wait for a slot: far below `handshake_timeout` (30 s), far above any real
/// handshake.
const PROMPT: Duration = Duration::from_secs(10);

/// `ringseal run`: one inbound listener forwarding to `forward`, an outbound listener to `upstream` when
/// given, `[metrics]`, and `limits` under `[limits]`.
struct Binary {
    proc: Proc,
    inbound: SocketAddr,
    outbound: Option<SocketAddr>,
    admin: SocketAddr,
}

impl Binary {
    fn start(pki: &Pki, forward: SocketAddr, upstream: Option<SocketAddr>, limits: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        pki.write(dir.path());
        let outbound = upstream.map_or_else(String::new, |u| {
            format!("[[outbound]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{u}\"\n\n")
        });
        let config = dir.path().join("ringseal.toml");
        std::fs::write(
            &config,
            format!(
                "[tls]\ncert = \"node.crt\"\nkey = \"node.key\"\nca = \"ca.crt\"\n\n\
                 [[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"{forward}\"\n\n{outbound}\
                 [metrics]\nlisten = \"127.0.0.1:0\"\n\n[limits]\n{limits}\n"
            ),
        )
        .unwrap();
        let mut proc = Proc::spawn(&[], &config, dir);
        let admin = address_after(&proc.wait_for("serving metrics on"), "serving metrics on ");
        let inbound = address_after(
            &proc.wait_for("starting inbound mTLS listener"),
            "listener on ",
        );
        let outbound = upstream
            .map(|_| address_after(&proc.wait_for("starting outbound listener"), "listener on "));
        Self {
            proc,
            inbound,
            outbound,
            admin,
        }
    }

    /// Lines logged so far (after a short settle) that contain `needle`.
    fn logged(&mut self, needle: &str) -> usize {
        self.proc
            .drain(Duration::from_millis(200))
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }
}

/// Many more descriptors than the default soft limit of 1024: the floods below hold hundreds.
fn raise_nofile() {
    let _ = rlimit::increase_nofile_limit(16_384);
}

/// `n` TCP connections from `from` that never send a byte, held until dropped. One that the sidecar
/// turned away may already be reset when `connect` returns: `None` then.
async fn silent(n: usize, from: IpAddr, to: SocketAddr) -> Vec<Option<TcpStream>> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(from, 0)).unwrap();
        held.push(match socket.connect(to).await {
            Ok(s) => Some(s),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
            Err(e) => panic!("connect {to}: {e}"),
        });
    }
    held
}

/// `GET /metrics` over plain HTTP/1.1.
async fn scrape(admin: SocketAddr) -> String {
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    within("scrape", s.read_to_string(&mut out)).await.unwrap();
    out
}

/// Polls `/metrics` until `done` holds (30 s bound); returns that exposition.
async fn scrape_until(admin: SocketAddr, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape(admin).await;
        if done(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within 30s; last exposition:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The default name of the first listener of direction `dir` (its `listener` label).
fn listener(dir: &str) -> &'static str {
    if dir == "inbound" {
        "internode"
    } else {
        "outbound"
    }
}

fn turned_away(text: &str, dir: &str, reason: &str) -> f64 {
    let l = listener(dir);
    sample(
        text,
        &format!(
            "ringseal_connections_turned_away_total{{direction=\"{dir}\",listener=\"{l}\",\
             reason=\"{reason}\"}}"
        ),
    )
}

fn in_progress(text: &str, dir: &str) -> f64 {
    let l = listener(dir);
    sample(
        text,
        &format!("ringseal_handshakes_in_progress{{direction=\"{dir}\",listener=\"{l}\"}}"),
    )
}

/// A plaintext connection of the local node through the outbound listener, echoed by the peer's backend.
async fn outbound_echo(outbound: SocketAddr, msg: &[u8]) -> std::io::Result<()> {
    let mut local = TcpStream::connect(outbound).await?;
    local.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    local.read_exact(&mut back).await?;
    assert_eq!(back, msg);
    Ok(())
}

/// The flood, scaled down: with `max_connections = 50` and a 30 s handshake timeout, 300 silent
/// connections from 127.0.0.1 took every slot of the one process-wide semaphore, so a real peer from
/// 127.0.0.2 and the node's own outbound connections waited up to the handshake timeout. Now one address
/// gets `max_pending_per_source` (64) handshake slots and the rest are reset at once; the real peer
/// and the outbound listener are served promptly, and `/metrics` shows what admission did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_address_neither_keeps_a_peer_out_nor_delays_the_outbound_listener() {
    raise_nofile();
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    // The peer the node's outbound connections go to: a sidecar of its own, in front of the same echo.
    let peer = Sidecar::start(config(&pki, backend.addr)).await;
    let mut node = Binary::start(
        &pki,
        backend.addr,
        Some(peer.addr),
        "max_connections = 50\nhandshake_timeout = \"30s\"",
    );
    let flood = silent(300, LOCALHOST, node.inbound).await;

    let c = client(pki.roots(), Some(&pki.node));
    for i in 0..3 {
        tokio::time::timeout(PROMPT, roundtrip(&c, ip("127.0.0.2"), node.inbound))
            .await
            .unwrap_or_else(|_| panic!("peer {i} from 127.0.0.2 not served within {PROMPT:?}"))
            .unwrap();
    }
    let outbound = node.outbound.unwrap();
    tokio::time::timeout(PROMPT, outbound_echo(outbound, b"gossip"))
        .await
        .unwrap_or_else(|_| panic!("the outbound listener did not relay within {PROMPT:?}"))
        .unwrap();

    // 64 handshakes of the flood are in progress (held, they never end before the test does), the
    // other 236 were turned away by the per-source cap.
    let text = scrape_until(node.admin, "the flood admitted", |t| {
        in_progress(t, "inbound") == 64.0 && turned_away(t, "inbound", "source_limit") >= 236.0
    })
    .await;
    assert_eq!(turned_away(&text, "inbound", "evicted"), 0.0, "{text}");
    assert_eq!(in_progress(&text, "outbound"), 0.0, "{text}");
    assert_eq!(turned_away(&text, "outbound", "source_limit"), 0.0);
    // Rate-limited: one line per reason and listener every 10 s, not one per connection.
    let lines = node.logged("limits.max_pending_per_source");
    assert!(
        (1..=3).contains(&lines),
        "{lines} lines for 236 turned-away connections"
    );
    drop(flood);
    peer.stop().await;
}

/// The per-source cap resets excess connections at once (they are not queued), and only them: each
/// other address still gets its own share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_source_cap_are_reset_at_once_and_counted() {
    raise_nofile();
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let node = Binary::start(
        &pki,
        backend.addr,
        None,
        "max_pending_per_source = 10\nhandshake_timeout = \"30s\"",
    );
    let mut flood = silent(40, LOCALHOST, node.inbound).await;
    // The last 30 (accepted after the first 10) are closed by the sidecar without a byte, long before
    // the handshake timeout.
    assert!(flood[..10].iter().all(Option::is_some));
    let mut reads = tokio::task::JoinSet::new();
    for s in flood.split_off(10) {
        reads.spawn(async move {
            let Some(mut s) = s else {
                return (true, None);
            };
            let mut buf = [0u8; 1];
            let closed = matches!(
                tokio::time::timeout(PROMPT, s.read(&mut buf)).await,
                Ok(Ok(0) | Err(_))
            );
            (closed, Some(s))
        });
    }
    let mut closed = 0;
    while let Some(r) = reads.join_next().await {
        let (was_closed, s) = r.unwrap();
        closed += usize::from(was_closed);
        flood.push(s);
    }
    assert_eq!(
        closed, 30,
        "connections over the cap must be closed at once"
    );
    let text = scrape_until(node.admin, "10 in progress, 30 turned away", |t| {
        in_progress(t, "inbound") == 10.0 && turned_away(t, "inbound", "source_limit") == 30.0
    })
    .await;
    // Another address has its own share.
    let others = silent(10, ip("127.0.0.3"), node.inbound).await;
    scrape_until(node.admin, "20 in progress", |t| {
        in_progress(t, "inbound") == 20.0
    })
    .await;
    assert_eq!(
        turned_away(&text, "inbound", "source_limit"),
        30.0,
        "{text}"
    );
    drop((flood, others));
    scrape_until(node.admin, "handshakes ended", |t| {
        in_progress(t, "inbound") == 0.0
    })
    .await;
}

/// A flood from many addresses, each under the per-source cap, fills the handshake budget: every new
/// connection then evicts the oldest handshake, so a real peer arriving after the flood gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_handshake_budget_evicts_the_oldest_for_a_newcomer() {
    raise_nofile();
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let node = Binary::start(
        &pki,
        backend.addr,
        None,
        "max_pending_handshakes = 20\nmax_pending_per_source = 10\nhandshake_timeout = \"30s\"",
    );
    let mut flood = Vec::new();
    for host in 10..20 {
        flood.extend(silent(10, ip(&format!("127.0.0.{host}")), node.inbound).await);
    }
    let c = client(pki.roots(), Some(&pki.node));
    tokio::time::timeout(PROMPT, roundtrip(&c, ip("127.0.0.2"), node.inbound))
        .await
        .expect("a peer after the flood was not served")
        .unwrap();
    let text = scrape_until(node.admin, "80 evicted", |t| {
        turned_away(t, "inbound", "evicted") >= 80.0
    })
    .await;
    assert_eq!(turned_away(&text, "inbound", "source_limit"), 0.0);
    assert!(in_progress(&text, "inbound") <= 20.0, "{text}");
    drop(flood);
}

/// A verified peer that finds every established slot taken is reset at once (never queued, never a
/// clean close) and counted; once a slot frees, the next peer is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_peer_beyond_max_connections_is_reset_and_counted() {
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let node = Binary::start(&pki, backend.addr, None, "max_connections = 1");
    let c = client(pki.roots(), Some(&pki.node));
    let mut first = connect(&c, node.inbound).await.unwrap();
    echo(&mut first, b"one").await.unwrap();

    let second = tokio::time::timeout(PROMPT, roundtrip(&c, LOCALHOST, node.inbound))
        .await
        .expect("the second peer waited instead of being turned away");
    assert!(
        second.is_err(),
        "the second peer was served beyond max_connections"
    );
    assert_eq!(backend.accepted(), 1);
    scrape_until(node.admin, "connections_full counted", |t| {
        turned_away(t, "inbound", "connections_full") == 1.0
    })
    .await;

    first.shutdown().await.unwrap();
    drop(first);
    backend.wait_finished(1).await;
    // The slot is released when the first connection's task ends, just after the backend saw it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while roundtrip(&c, LOCALHOST, node.inbound).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "no slot freed after the first peer left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(backend.accepted(), 2);
}

/// The Send-Q column of `ss -ltn` for a listening socket is its backlog.
fn backlog_of(addr: SocketAddr) -> u32 {
    let out = Command::new("ss").args(["-ltnH"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            let cols: Vec<_> = l.split_whitespace().collect();
            (cols.get(3) == Some(&addr.to_string().as_str())).then(|| cols[2].parse().unwrap())
        })
        .unwrap_or_else(|| panic!("{addr} not in `ss -ltn`:\n{text}"))
}

/// `listen_backlog` reaches listen(2) on every listener; by default it is the system's somaxconn
/// (tokio's own bind used 128).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listen_backlog_reaches_listen() {
    if Command::new("ss").arg("-V").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "ss (iproute2) is required in CI"
        );
        eprintln!("skipping: ss (iproute2) is not installed");
        return;
    }
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let peer = Sidecar::start(config(&pki, backend.addr)).await;
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let node = Binary::start(&pki, backend.addr, Some(peer.addr), "");
    assert_eq!(backlog_of(node.inbound), somaxconn);
    assert_eq!(backlog_of(node.outbound.unwrap()), somaxconn);
    drop(node);
    let node = Binary::start(&pki, backend.addr, Some(peer.addr), "listen_backlog = 77");
    assert_eq!(backlog_of(node.inbound), 77);
    assert_eq!(backlog_of(node.outbound.unwrap()), 77);
    peer.stop().await;
}
