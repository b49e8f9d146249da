//! Permissive outbound against an attacker on the path (issue 12): once a peer has completed a
//! verified TLS handshake with the sidecar, nothing done to its TLS connections (closed after the
//! ClientHello, answered with bytes that are not TLS, refused) makes the node's traffic go to its
//! plaintext port: each failure is a refused handshake, and TLS works again as soon as the path is
//! healthy. Only a peer never seen with TLS falls back, only when its TLS port refuses or answers
//! something that is not TLS, and every fallback is counted with its reason. The memory survives a
//! restart through `permissive.state_file`; a corrupt one is a warning.
//!
//! The sidecar under test is the real binary (its metrics are its own); the peer's sidecar runs
//! in-process behind a TCP proxy the test controls.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ringseal_testkit::process::{Proc, address_after};
use ringseal_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// What the proxy on the path does with the connections it accepts from now on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Carries both directions to the peer's TLS port.
    Pass,
    /// Reads the ClientHello, then closes the connection.
    CloseAfterHello,
    /// Answers the ClientHello with an HTTP error (not a TLS record), then closes.
    NotTls,
    /// Nothing listens: connections are refused (ECONNREFUSED).
    Refuse,
}

/// A TCP proxy between the sidecar under test and the peer's TLS port.
struct OnPath {
    addr: SocketAddr,
    control: mpsc::UnboundedSender<(Fault, oneshot::Sender<()>)>,
}

impl OnPath {
    async fn start(upstream: SocketAddr) -> Self {
        // SO_REUSEPORT on the listener and on a second socket that is bound but never listens: the
        // port stays ours while the listener is closed (a connect then gets ECONNREFUSED), and
        // nothing else, such as another test's ephemeral port, can take it meanwhile.
        let bound = |addr: SocketAddr| {
            let s = TcpSocket::new_v4().unwrap();
            s.set_reuseport(true).unwrap();
            s.bind(addr).unwrap();
            s
        };
        let socket = bound((LOCALHOST, 0).into());
        let addr = socket.local_addr().unwrap();
        let listener = socket.listen(1024).unwrap();
        let holder = bound(addr);
        let (control, mut commands) = mpsc::unbounded_channel::<(Fault, oneshot::Sender<()>)>();
        tokio::spawn(async move {
            let _holder = holder;
            let mut fault = Fault::Pass;
            let mut listener = Some(listener);
            loop {
                tokio::select! {
                    command = commands.recv() => {
                        let Some((next, ack)) = command else { return };
                        if next == Fault::Refuse {
                            drop(listener.take());
                        } else if listener.is_none() {
                            listener = Some(bound(addr).listen(1024).unwrap());
                        }
                        fault = next;
                        let _ = ack.send(());
                    }
                    Ok((conn, _)) = accept(listener.as_ref()) => {
                        tokio::spawn(serve(conn, fault, upstream));
                    }
                }
            }
        });
        Self { addr, control }
    }

    /// Applies `fault` to the connections accepted from now on (refusing: at once).
    async fn set(&self, fault: Fault) {
        let (ack, done) = oneshot::channel();
        self.control.send((fault, ack)).unwrap();
        done.await.unwrap();
    }
}

async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

async fn serve(mut conn: TcpStream, fault: Fault, upstream: SocketAddr) {
    let _ = conn.set_nodelay(true);
    match fault {
        Fault::Pass => {
            if let Ok(mut up) = TcpStream::connect(upstream).await {
                let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
            }
        }
        Fault::CloseAfterHello => {
            let _ = read_record(&mut conn).await;
        }
        Fault::NotTls => {
            if read_record(&mut conn).await.is_ok() {
                let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
                let _ = conn.shutdown().await;
            }
        }
        Fault::Refuse => unreachable!("nothing is accepted while refusing"),
    }
}

/// Reads one TLS record (the ClientHello) off `conn`.
async fn read_record(conn: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut header = [0u8; 5];
    conn.read_exact(&mut header).await?;
    assert_eq!(
        header[0], 22,
        "the sidecar opens with a TLS handshake record"
    );
    let mut body = vec![0u8; u16::from_be_bytes([header[3], header[4]]) as usize];
    conn.read_exact(&mut body).await?;
    Ok(body)
}

/// The node: one connection through the outbound listener, `msg` sent, everything read back (empty
/// when the sidecar closed it without carrying it anywhere).
async fn node_sends(out: SocketAddr, msg: &[u8]) -> Vec<u8> {
    within("node connection", async {
        let mut s = TcpStream::connect(out).await.unwrap();
        // The sidecar may close (even reset) before reading: an error here is "not carried".
        if s.write_all(msg).await.is_err() || s.shutdown().await.is_err() {
            return Vec::new();
        }
        let mut back = Vec::new();
        match s.read_to_end(&mut back).await {
            Ok(_) => back,
            Err(_) => Vec::new(),
        }
    })
    .await
}

/// The sidecar under test: `ringseal run` with one permissive outbound listener towards `upstream`
/// (plaintext fallback `plain`) and a metrics endpoint.
struct Outbound {
    proc: Proc,
    out: SocketAddr,
    admin: SocketAddr,
}

impl Outbound {
    fn start(pki: &Pki, upstream: SocketAddr, plain: SocketAddr, permissive: &str) -> Self {
        let (dir, config) = write_config(
            pki,
            "",
            &format!(
                "[[outbound]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n\
                 mode = \"permissive\"\nplaintext_fallback = \"{plain}\"\n\n\
                 [metrics]\nlisten = \"127.0.0.1:0\"\n\n{permissive}\n"
            ),
        );
        let mut proc = Proc::spawn(&[], &config, dir);
        let admin = address_after(&proc.wait_for("serving metrics on"), "serving metrics on ");
        let out = address_after(
            &proc.wait_for("starting outbound listener on"),
            "listener on ",
        );
        Self { proc, out, admin }
    }

    /// The first log line containing `needle`, from start-up on (bounded wait).
    fn logged(&mut self, needle: &str) -> String {
        match self.proc.seen.iter().find(|l| l.contains(needle)) {
            Some(line) => line.clone(),
            None => self.proc.wait_for(needle),
        }
    }

    /// The sum of `metric`'s samples whose labels include every one of `labels`.
    fn count(&self, metric: &str, labels: &[&str]) -> f64 {
        scrape(self.admin)
            .lines()
            .filter(|l| {
                l.starts_with(&format!("{metric}{{")) || l.starts_with(&format!("{metric} "))
            })
            .filter(|l| labels.iter().all(|want| l.contains(want)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn refused(&self, reason: &str) -> f64 {
        self.count(
            "ringseal_handshakes_total",
            &[
                "direction=\"outbound\"",
                "result=\"refused\"",
                &format!("reason=\"{reason}\""),
            ],
        )
    }

    fn refused_total(&self) -> f64 {
        self.count(
            "ringseal_handshakes_total",
            &["direction=\"outbound\"", "result=\"refused\""],
        )
    }

    fn ok(&self) -> f64 {
        self.count(
            "ringseal_handshakes_total",
            &["direction=\"outbound\"", "result=\"ok\""],
        )
    }

    fn fallbacks(&self, reason: &str) -> f64 {
        self.count(
            "ringseal_plaintext_fallbacks_total",
            &[&format!("reason=\"{reason}\"")],
        )
    }

    fn fallbacks_total(&self) -> f64 {
        self.count("ringseal_plaintext_fallbacks_total", &[])
    }
}

/// The peer: its storage port behind its own (in-process) sidecar, reached through the proxy, and
/// its plaintext storage port, which must see nothing of a downgrade.
struct Peer {
    storage: Backend,
    _sidecar: Sidecar,
    plain: Backend,
    proxy: OnPath,
}

impl Peer {
    async fn start(pki: &Pki) -> Self {
        let storage = Backend::start(Mode::Echo).await;
        let sidecar = Sidecar::start(config(pki, storage.addr)).await;
        let plain = Backend::start(Mode::Echo).await;
        let proxy = OnPath::start(sidecar.addr).await;
        Self {
            storage,
            _sidecar: sidecar,
            plain,
            proxy,
        }
    }
}

const VERIFIED: usize = 10;
const ATTACKED: usize = 6;

/// Ten verified TLS connections, then `fault` on the path for a while: no byte reaches the plaintext
/// port, every connection is a refused handshake with `reason`, and the first connection after the
/// path heals is TLS again.
async fn a_verified_peer_is_not_downgraded_by(fault: Fault, reason: &str) {
    let pki = Pki::new();
    let peer = Peer::start(&pki).await;
    let sidecar = Outbound::start(&pki, peer.proxy.addr, peer.plain.addr, "");
    for i in 0..VERIFIED {
        let msg = format!("verified {i}");
        assert_eq!(
            node_sends(sidecar.out, msg.as_bytes()).await,
            msg.as_bytes()
        );
    }
    assert_eq!(peer.storage.accepted(), VERIFIED);

    peer.proxy.set(fault).await;
    for i in 0..ATTACKED {
        let back = node_sends(sidecar.out, format!("mutation {i}").as_bytes()).await;
        assert!(back.is_empty(), "{fault:?}: {back:?} came back");
    }
    assert_eq!(
        peer.plain.accepted(),
        0,
        "{fault:?}: the node's traffic went to the peer's plaintext port"
    );
    assert_eq!(peer.storage.accepted(), VERIFIED);
    assert_eq!(sidecar.refused(reason), ATTACKED as f64, "{fault:?}");
    assert_eq!(sidecar.refused_total(), ATTACKED as f64, "{fault:?}");
    assert_eq!(sidecar.fallbacks_total(), 0.0, "{fault:?}");

    // The path heals: the very next connection is TLS again.
    peer.proxy.set(Fault::Pass).await;
    assert_eq!(node_sends(sidecar.out, b"healed").await, b"healed");
    assert_eq!(peer.storage.accepted(), VERIFIED + 1);
    assert_eq!(sidecar.ok(), (VERIFIED + 1) as f64);
    assert_eq!(peer.plain.accepted(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_peer_closed_after_the_client_hello_is_not_downgraded() {
    a_verified_peer_is_not_downgraded_by(Fault::CloseAfterHello, "io").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_peer_answering_with_non_tls_bytes_is_not_downgraded() {
    a_verified_peer_is_not_downgraded_by(Fault::NotTls, "not_tls").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_peer_whose_tls_port_refuses_is_not_downgraded() {
    a_verified_peer_is_not_downgraded_by(Fault::Refuse, "io").await;
}

/// A peer never seen with TLS: a refusing TLS port, or one answering with something that is not TLS,
/// falls back (counted with its reason, logged); an EOF after the ClientHello does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_never_seen_peer_falls_back_only_when_it_plainly_has_no_tls() {
    let pki = Pki::new();
    for (fault, reason) in [
        (Fault::Refuse, "connection_refused"),
        (Fault::NotTls, "not_tls"),
    ] {
        let peer = Peer::start(&pki).await;
        peer.proxy.set(fault).await;
        let mut sidecar = Outbound::start(&pki, peer.proxy.addr, peer.plain.addr, "");
        for i in 0..3 {
            let msg = format!("gossip {i}");
            assert_eq!(
                node_sends(sidecar.out, msg.as_bytes()).await,
                msg.as_bytes(),
                "{fault:?}"
            );
        }
        assert_eq!(peer.plain.accepted(), 3, "{fault:?}");
        assert_eq!(sidecar.fallbacks(reason), 3.0, "{fault:?}");
        assert_eq!(sidecar.fallbacks_total(), 3.0, "{fault:?}");
        assert_eq!(sidecar.refused_total(), 0.0, "{fault:?}");
        let line = sidecar.logged("has no TLS on");
        assert!(
            line.contains("WARN") && line.contains(&format!("reason=\"{reason}\"")),
            "{line}"
        );
    }

    // Closed right after the ClientHello: a failed handshake, not "no TLS there".
    let peer = Peer::start(&pki).await;
    peer.proxy.set(Fault::CloseAfterHello).await;
    let sidecar = Outbound::start(&pki, peer.proxy.addr, peer.plain.addr, "");
    for i in 0..3 {
        let back = node_sends(sidecar.out, format!("gossip {i}").as_bytes()).await;
        assert!(back.is_empty(), "{back:?} came back");
    }
    assert_eq!(peer.plain.accepted(), 0, "fell back after an EOF");
    assert_eq!(sidecar.refused("io"), 3.0);
    assert_eq!(sidecar.fallbacks_total(), 0.0);
}

/// Waits (bounded) until the state file at `path` names `needle`.
async fn wait_for_state(path: &Path, needle: &str) -> String {
    for _ in 0..1000 {
        if let Ok(text) = std::fs::read_to_string(path)
            && text.contains(needle)
        {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} never named {needle}", path.display());
}

/// The memory survives a restart through the state file: the restarted sidecar does not downgrade a
/// peer it verified before, although it has not talked to it since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_survives_a_restart() {
    let pki = Pki::new();
    let peer = Peer::start(&pki).await;
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("tls-peers");
    let permissive = format!("[permissive]\nstate_file = \"{}\"\n", file.display());

    let mut first = Outbound::start(&pki, peer.proxy.addr, peer.plain.addr, &permissive);
    first.logged("not there yet");
    for _ in 0..3 {
        assert_eq!(node_sends(first.out, b"verified").await, b"verified");
    }
    let text = wait_for_state(&file, "127.0.0.1 ").await;
    assert_eq!(text.lines().count(), 2, "{text}");
    first.proc.signal("TERM");
    assert!(first.proc.wait_exit().success());

    peer.proxy.set(Fault::Refuse).await;
    let mut second = Outbound::start(&pki, peer.proxy.addr, peer.plain.addr, &permissive);
    second.logged("1 peer(s) with verified TLS remembered");
    for _ in 0..3 {
        assert!(node_sends(second.out, b"mutation").await.is_empty());
    }
    assert_eq!(peer.plain.accepted(), 0, "downgraded after a restart");
    assert_eq!(second.refused("io"), 3.0);
    assert_eq!(second.fallbacks_total(), 0.0);

    peer.proxy.set(Fault::Pass).await;
    assert_eq!(node_sends(second.out, b"healed").await, b"healed");
    assert_eq!(peer.storage.accepted(), 4);
}

/// A corrupt state file is one warning and an empty memory; the sidecar serves, and rewrites the
/// file at the next verified handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_is_a_warning() {
    let pki = Pki::new();
    let peer = Peer::start(&pki).await;
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("tls-peers");
    std::fs::write(&file, b"\x00\x01 not a state file\n127.0.0.1 yesterday\n").unwrap();
    let permissive = format!("[permissive]\nstate_file = \"{}\"\n", file.display());

    let mut sidecar = Outbound::start(&pki, peer.proxy.addr, peer.plain.addr, &permissive);
    let line = sidecar.logged("permissive.state_file");
    assert!(
        line.contains("WARN") && line.contains("corrupt") && line.contains("empty memory"),
        "{line}"
    );
    assert_eq!(node_sends(sidecar.out, b"hello").await, b"hello");
    // Renamed into place whole: once the header is there, so is the peer.
    let text = wait_for_state(&file, "# ringseal permissive.state_file v1").await;
    assert!(
        text.lines().nth(1).unwrap().starts_with("127.0.0.1 "),
        "{text}"
    );
    assert!(sidecar.proc.child.try_wait().unwrap().is_none());
}
