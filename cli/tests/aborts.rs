//! Aborts stay aborts: a fault on one leg of a relayed connection (a reset, a TLS stream truncated
//! without close_notify, a killed sidecar, a deadline, the shutdown cut) reaches the other end as an
//! abnormal close, never as an orderly end, after the bytes already received were delivered. Each
//! test checks what EACH end observed (an error or a reset, not a clean end of stream) and that what
//! the receiving end got is an exact prefix of what was sent (SHA-256 of the received bytes against
//! the same prefix of the seeded stream).
//!
//! The sidecars are the real binary (one process each, with its own metrics), except for the cut's
//! counter, which the in-process `Server` shows (a process stops serving metrics when it stops).

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use ringseal_testkit::process::{Proc, address_after};
use ringseal_testkit::stream::{MIB, Sink, expected_hash, prefix_hash, try_send_seeded};
use ringseal_testkit::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Big enough to be mid-flight when the fault comes (the kernel buffers a few MiB per socket).
const LEN: usize = 64 * MIB;
/// How much the backend takes before the fault.
const BEFORE_FAULT: usize = 8 * MIB;

/// A `ringseal run` process with its metrics endpoint.
struct Car {
    proc: Proc,
    addr: SocketAddr,
    metrics: SocketAddr,
}

impl Car {
    /// `listener`: an `[[inbound]]` or `[[outbound]]` table; `limits`: lines of `[limits]`.
    fn start(pki: &Pki, listener: &str, limits: &str) -> Self {
        let (dir, config) = write_config(
            pki,
            "",
            &format!("{listener}\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n[limits]\n{limits}\n"),
        );
        // Each relayed connection's end is a line (`[logging] connections`, on by default): the tests
        // wait for it.
        let env = [("RINGSEAL_LOG", "info,ringseal::listener=debug")];
        let mut proc = Proc::spawn_with(&[], &config, dir, &env);
        let metrics = address_after(&proc.wait_for("serving metrics on "), "serving metrics on ");
        let addr = address_after(&proc.wait_for("listener on "), "listener on ");
        Self {
            proc,
            addr,
            metrics,
        }
    }

    fn inbound(pki: &Pki, forward: SocketAddr, extra: &str, limits: &str) -> Self {
        Self::start(
            pki,
            &format!("[[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"{forward}\"\n{extra}"),
            limits,
        )
    }

    fn outbound(pki: &Pki, upstream: SocketAddr) -> Self {
        Self::start(
            pki,
            &format!("[[outbound]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n"),
            "",
        )
    }

    /// Waits for the line that reports the connection's end (its `how` field, e.g. `peer_reset`) and
    /// checks the counter agrees: `ringseal_connections_closed_total{direction, how}` is 1.
    fn ended(&mut self, direction: &str, how: &str) {
        let line = self.proc.wait_for(&format!("{direction} connection with "));
        assert!(
            line.contains(&format!(" ended ({how}")) && line.contains(&format!("how=\"{how}\"")),
            "{direction}: expected {how}: {line}"
        );
        let m = scrape(self.metrics);
        let closed = |how: &str| {
            samples(
                &m,
                "ringseal_connections_closed_total",
                &[("direction", direction), ("how", how)],
            )
        };
        assert_eq!(closed(how), 1.0, "{direction} how={how}:\n{m}");
        assert_eq!(closed("clean"), 0.0, "{direction} counted clean:\n{m}");
    }
}

/// The local node's side of an outbound connection: writes a seeded stream and, if every write
/// succeeded, half-closes and reads to the end. Returns (bytes written, how writing ended, how
/// reading ended).
async fn sender(
    to: SocketAddr,
    seed: u64,
) -> (usize, Result<(), ErrorKind>, Option<Result<(), ErrorKind>>) {
    let mut s = TcpStream::connect(to).await.unwrap();
    let (sent, wrote) = try_send_seeded(&mut s, seed, LEN).await;
    if wrote.is_err() {
        return (sent, wrote, None);
    }
    let _ = s.shutdown().await;
    let mut sink = Sink::default();
    sink.read(&mut s, None, None).await;
    (sent, wrote, sink.end)
}

/// Accepts the backend's connection and reads [`BEFORE_FAULT`] bytes of it, checked against the seeded
/// stream.
async fn backend_until_fault(backend: &TcpListener, seed: u64) -> (TcpStream, Sink) {
    let (mut conn, _) = within("backend accept", backend.accept()).await.unwrap();
    let mut sink = Sink::default();
    assert!(
        within(
            "before the fault",
            sink.read(&mut conn, Some(BEFORE_FAULT), None)
        )
        .await
    );
    assert_eq!(sink.sha256(), prefix_hash(seed, LEN, sink.len));
    (conn, sink)
}

/// Closes `conn` with a reset (SO_LINGER 0).
fn reset(conn: TcpStream) {
    socket2::SockRef::from(&conn)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(conn);
}

/// What the backend received, checked: an exact prefix of the seeded stream, ended by a reset.
fn assert_reset_prefix(who: &str, sink: &Sink, seed: u64, len: usize) {
    assert_eq!(
        sink.end,
        Some(Err(ErrorKind::ConnectionReset)),
        "{who}: after {} bytes the stream must end with a reset, not a clean end",
        sink.len
    );
    assert_eq!(
        sink.sha256(),
        prefix_hash(seed, len, sink.len),
        "{who}: the {} bytes received are not a prefix of what was sent",
        sink.len
    );
}

/// The sender must learn that its data is not delivered: a write fails (it is still writing when the
/// fault comes, so the relay must stop taking its bytes).
fn assert_sender_failed(
    (sent, wrote, read): (usize, Result<(), ErrorKind>, Option<Result<(), ErrorKind>>),
) {
    assert!(
        wrote.is_err(),
        "sender: all {sent} bytes written without an error, then reading ended with {read:?}"
    );
    assert!(sent < LEN);
}

/// sender -> outbound -> inbound -> backend; the inbound sidecar is killed (SIGKILL) while the stream
/// is mid-flight. The backend gets a prefix, then a reset (the kernel closes the dead process's
/// sockets, whose resets were armed); the outbound resets the sender's connection and stops reading it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_inbound_sidecar_mid_transfer() {
    const SEED: u64 = 101;
    let pki = Pki::new();
    let backend = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let mut inbound = Car::inbound(&pki, backend.local_addr().unwrap(), "", "");
    let mut outbound = Car::outbound(&pki, inbound.addr);
    let sending = tokio::spawn(sender(outbound.addr, SEED));
    let (mut conn, mut sink) = backend_until_fault(&backend, SEED).await;
    inbound.proc.child.kill().unwrap();
    within("backend", sink.read(&mut conn, None, None)).await;
    let sent = within("sender", sending).await.unwrap();
    assert_reset_prefix("backend", &sink, SEED, LEN);
    assert_sender_failed(sent);
    outbound.ended("outbound", "peer_reset");
}

/// The backend resets mid-transfer: the inbound resets its TLS leg (no close_notify), so the outbound
/// sees a reset too and resets the sender's connection; each counts what really happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_reset_mid_transfer() {
    const SEED: u64 = 102;
    let pki = Pki::new();
    let backend = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let mut inbound = Car::inbound(&pki, backend.local_addr().unwrap(), "", "");
    let mut outbound = Car::outbound(&pki, inbound.addr);
    let sending = tokio::spawn(sender(outbound.addr, SEED));
    let (conn, _) = backend_until_fault(&backend, SEED).await;
    reset(conn);
    assert_sender_failed(within("sender", sending).await.unwrap());
    inbound.ended("inbound", "backend_reset");
    outbound.ended("outbound", "peer_reset");
}

/// SIGTERM with a short `shutdown_grace` while a stream is mid-flight: the connection is cut, and a
/// cut resets both legs. The backend (paused so that the stream cannot finish within the grace) then
/// reads a prefix and the reset; the sender's writes fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cut_mid_transfer() {
    const SEED: u64 = 103;
    let pki = Pki::new();
    let backend = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let mut inbound = Car::inbound(
        &pki,
        backend.local_addr().unwrap(),
        "",
        "shutdown_grace = \"300ms\"",
    );
    let mut outbound = Car::outbound(&pki, inbound.addr);
    let sending = tokio::spawn(sender(outbound.addr, SEED));
    let (mut conn, mut sink) = backend_until_fault(&backend, SEED).await;
    inbound.proc.signal("TERM");
    inbound.proc.wait_for("cut 1 connection(s)");
    within("backend", sink.read(&mut conn, None, None)).await;
    assert_reset_prefix("backend", &sink, SEED, LEN);
    assert_sender_failed(within("sender", sending).await.unwrap());
    assert!(inbound.proc.wait_exit().success());
    outbound.ended("outbound", "peer_reset");
}

/// A TLS client that can be ended without close_notify.
async fn tls_client(pki: &Pki, to: SocketAddr) -> Tls {
    connect(&client(pki.roots(), Some(&pki.node)), to)
        .await
        .unwrap()
}

/// The TLS peer writes 16 MiB and drops TCP without close_notify while the relay is still moving
/// them: every byte it sent was authenticated, so the backend gets all of them, then a reset (not a
/// FIN: the peer's stream did not end in order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_truncates_tls_mid_transfer() {
    const SEED: u64 = 104;
    const SENT: usize = 16 * MIB;
    let pki = Pki::new();
    let backend = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let mut inbound = Car::inbound(&pki, backend.local_addr().unwrap(), "", "");
    let mut tls = tls_client(&pki, inbound.addr).await;
    let (mut conn, _) = within("backend accept", backend.accept()).await.unwrap();
    let reading = tokio::spawn(async move {
        let mut sink = Sink::default();
        sink.read(&mut conn, None, None).await;
        sink
    });
    let (_, wrote) = try_send_seeded(&mut tls, SEED, SENT).await;
    wrote.unwrap();
    tls.flush().await.unwrap();
    let (tcp, _conn) = tls.into_inner();
    drop(tcp); // FIN without close_notify, after the queued records
    let sink = within("backend", reading).await.unwrap();
    assert_reset_prefix("backend", &sink, SEED, SENT);
    assert_eq!(sink.len, SENT, "every authenticated byte is delivered");
    assert_eq!(sink.sha256(), expected_hash(SEED, SENT));
    inbound.ended("inbound", "peer_no_close_notify");
}

/// The TLS peer resets while 16 MiB are in flight: the backend gets a prefix, then a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_resets_mid_transfer() {
    const SEED: u64 = 105;
    const SENT: usize = 16 * MIB;
    let pki = Pki::new();
    let backend = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let mut inbound = Car::inbound(&pki, backend.local_addr().unwrap(), "", "");
    let mut tls = tls_client(&pki, inbound.addr).await;
    let (mut conn, _) = within("backend accept", backend.accept()).await.unwrap();
    let (first_tx, first_rx) = oneshot::channel();
    let reading = tokio::spawn(async move {
        let mut sink = Sink::default();
        sink.read(&mut conn, Some(1), None).await;
        let _ = first_tx.send(());
        sink.read(&mut conn, None, None).await;
        sink
    });
    let (_, wrote) = try_send_seeded(&mut tls, SEED, SENT).await;
    wrote.unwrap();
    tls.flush().await.unwrap();
    // The relay is moving the stream (the backend has its first bytes): reset now.
    within("first bytes", first_rx).await.unwrap();
    let (tcp, _conn) = tls.into_inner();
    reset(tcp);
    let sink = within("backend", reading).await.unwrap();
    assert_reset_prefix("backend", &sink, SEED, SENT);
    inbound.ended("inbound", "peer_reset");
}

/// The backend resets while it streams to the TLS peer: the peer reads a prefix, then a reset, never
/// close_notify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_reset_reaches_the_tls_peer_as_a_reset() {
    const SEED: u64 = 106;
    let pki = Pki::new();
    let backend = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let mut inbound = Car::inbound(&pki, backend.local_addr().unwrap(), "", "");
    let mut tls = tls_client(&pki, inbound.addr).await;
    let (mut conn, _) = within("backend accept", backend.accept()).await.unwrap();
    let (reset_tx, reset_rx) = oneshot::channel::<()>();
    let streaming = tokio::spawn(async move {
        tokio::select! {
            _ = try_send_seeded(&mut conn, SEED, LEN) => panic!("the whole stream went out"),
            _ = reset_rx => {}
        }
        reset(conn);
    });
    let mut sink = Sink::default();
    assert!(
        within(
            "before the fault",
            sink.read(&mut tls, Some(BEFORE_FAULT), None)
        )
        .await
    );
    reset_tx.send(()).unwrap();
    within("backend reset", streaming).await.unwrap();
    within("peer", sink.read(&mut tls, None, None)).await;
    assert_reset_prefix("TLS peer", &sink, SEED, LEN);
    inbound.ended("inbound", "backend_reset");
}

/// Permissive mode's plaintext legs (splice): a backend reset mid-transfer resets the plaintext peer,
/// whose writes then fail (they used to be read and discarded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_leg_backend_reset_mid_transfer() {
    const SEED: u64 = 107;
    let pki = Pki::new();
    let backend = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let mut inbound = Car::inbound(
        &pki,
        backend.local_addr().unwrap(),
        "mode = \"permissive\"\n",
        "",
    );
    let sending = tokio::spawn(sender(inbound.addr, SEED));
    let (conn, _) = backend_until_fault(&backend, SEED).await;
    reset(conn);
    assert_sender_failed(within("sender", sending).await.unwrap());
    inbound.ended("inbound", "backend_reset");
}

/// Our own deadline: `idle_timeout` ends a connection neither end asked to end, so both legs are
/// reset; the backend never sees the FIN of an orderly end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_resets_both_legs() {
    const SEED: u64 = 108;
    const SENT: usize = MIB;
    let pki = Pki::new();
    let backend = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let mut inbound = Car::inbound(
        &pki,
        backend.local_addr().unwrap(),
        "",
        "idle_timeout = \"300ms\"",
    );
    let mut tls = tls_client(&pki, inbound.addr).await;
    let (mut conn, _) = within("backend accept", backend.accept()).await.unwrap();
    let (_, wrote) = try_send_seeded(&mut tls, SEED, SENT).await;
    wrote.unwrap();
    tls.flush().await.unwrap();
    let mut backend_sink = Sink::default();
    within("backend", backend_sink.read(&mut conn, None, None)).await;
    // A prefix: a deadline resets at once, without waiting for the kernel to deliver (nothing moved
    // for the whole idle period).
    assert_reset_prefix("backend", &backend_sink, SEED, SENT);
    let mut peer_sink = Sink::default();
    within("peer", peer_sink.read(&mut tls, None, None)).await;
    assert_eq!(
        peer_sink.end,
        Some(Err(ErrorKind::ConnectionReset)),
        "TLS peer"
    );
    inbound.ended("inbound", "idle_timeout");
}

/// A cut at the end of `shutdown_grace` resets both legs (no FIN, no close_notify) and is counted as
/// `how="cut"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_at_shutdown_resets_both_legs_and_is_counted() {
    let metrics = ringseal::metrics::install();
    let pki = Pki::new();
    let backend = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let mut cfg = config(&pki, backend.local_addr().unwrap());
    cfg.limits.shutdown_grace = Duration::from_millis(200);
    let sidecar = Sidecar::start(cfg).await;
    let mut tls = tls_client(&pki, sidecar.addr).await;
    let (mut conn, _) = within("backend accept", backend.accept()).await.unwrap();
    tls.write_all(b"live").await.unwrap();
    tls.flush().await.unwrap();
    let mut backend_sink = Sink::default();
    assert!(within("first bytes", backend_sink.read(&mut conn, Some(4), None)).await);
    let before = samples(
        &metrics.render(),
        "ringseal_connections_closed_total",
        &[("direction", "inbound"), ("how", "cut")],
    );
    sidecar.shutdown.cancel();
    let drained = within("drain", sidecar.task).await.unwrap();
    assert_eq!(drained.cut, 1);
    within("backend", backend_sink.read(&mut conn, None, None)).await;
    assert_eq!(
        backend_sink.end,
        Some(Err(ErrorKind::ConnectionReset)),
        "backend"
    );
    let mut peer_sink = Sink::default();
    within("peer", peer_sink.read(&mut tls, None, None)).await;
    assert_eq!(
        peer_sink.end,
        Some(Err(ErrorKind::ConnectionReset)),
        "TLS peer"
    );
    let after = samples(
        &metrics.render(),
        "ringseal_connections_closed_total",
        &[("direction", "inbound"), ("how", "cut")],
    );
    assert_eq!(after - before, 1.0, "how=\"cut\"");
}
