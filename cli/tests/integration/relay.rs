//! The relay's promises, end to end through an in-process sidecar: nothing lost, half-close both ways
//! in both orders, records rustls queues on its own flushed promptly, and every deadline (linger,
//! idle, shutdown grace) enforced. What truncations, resets, deadlines and cuts look like at each end
//! is in `aborts.rs`.

use std::net::SocketAddr;
use std::time::Duration;

use ringseal_testkit::stream::{MIB, expected_hash, recv_all, send_seeded};
use ringseal_testkit::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

const STREAM: usize = 64 * MIB;

#[derive(Clone, Copy, Debug, PartialEq)]
enum First {
    Peer,
    Backend,
}

/// Full duplex: both sides stream 64 MiB at once. The side that closes second sends half, waits for the
/// other side's end of stream, then sends the other half through the half-closed connection.
async fn stream_both_ways(first: First) {
    const PEER_SEED: u64 = 1;
    const BACKEND_SEED: u64 = 2;
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let backend_addr = listener.local_addr().unwrap();
    let backend = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let (mut r, mut w) = s.into_split();
        let (eof_tx, eof_rx) = oneshot::channel();
        let reader = tokio::spawn(async move {
            let got = recv_all(&mut r).await;
            let _ = eof_tx.send(());
            got
        });
        // Closing second: half now, the rest after the peer's close_notify arrived here as a FIN.
        let pause = (first == First::Peer).then_some(eof_rx);
        let sent = send_seeded(&mut w, BACKEND_SEED, STREAM, pause).await;
        w.shutdown().await.unwrap();
        (sent, reader.await.unwrap())
    });

    let pki = Pki::new();
    let sidecar = Sidecar::start(config(&pki, backend_addr)).await;
    let tls = connect(&client(pki.roots(), Some(&pki.node)), sidecar.addr)
        .await
        .unwrap();
    let (mut r, mut w) = tokio::io::split(tls);
    let (eof_tx, eof_rx) = oneshot::channel();
    let reader = tokio::spawn(async move {
        let got = recv_all(&mut r).await;
        let _ = eof_tx.send(());
        got
    });
    let pause = (first == First::Backend).then_some(eof_rx);
    let peer_sent = send_seeded(&mut w, PEER_SEED, STREAM, pause).await;
    w.shutdown().await.unwrap(); // close_notify, then FIN
    let (peer_got_len, peer_got) = within("peer reading", reader).await.unwrap();
    let (backend_sent, (backend_got_len, backend_got)) = within("backend", backend).await.unwrap();

    assert_eq!(peer_sent, expected_hash(PEER_SEED, STREAM));
    assert_eq!(backend_sent, expected_hash(BACKEND_SEED, STREAM));
    assert_eq!(backend_got_len, STREAM, "backend received every byte");
    assert_eq!(
        backend_got, peer_sent,
        "backend received the peer's bytes unchanged"
    );
    assert_eq!(peer_got_len, STREAM, "peer received every byte");
    assert_eq!(
        peer_got, backend_sent,
        "peer received the backend's bytes unchanged"
    );
    assert_eq!(sidecar.stop().await.cut, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_each_way_peer_closes_first() {
    stream_both_ways(First::Peer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_each_way_backend_closes_first() {
    stream_both_ways(First::Backend).await;
}

/// A connection that is quiet, then streams, then is quiet again, on the user-space path: small
/// messages go through buffers lent for one poll, a stream grows the connection's own buffers, small
/// messages follow through those. Every byte comes back, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_then_bulk_then_quiet_again() {
    const BULK: usize = 16 * MIB;
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let mut config = config(&pki, backend.addr);
    config.offload = ringseal::config::Offload::Off;
    let sidecar = Sidecar::start(config).await;
    let mut tls = connect(&client(pki.roots(), Some(&pki.node)), sidecar.addr)
        .await
        .unwrap();
    // One byte, a few, and more than one record (a read that fills a small buffer).
    let small: [&[u8]; 3] = [b"x", b"gossip", &[7u8; 40_000]];
    for msg in small {
        within("echo before the stream", echo(&mut tls, msg))
            .await
            .unwrap();
    }

    let (mut r, mut w) = tokio::io::split(tls);
    let reader = tokio::spawn(async move {
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut left = BULK;
        while left > 0 {
            let n = r.read(&mut buf[..left.min(256 * 1024)]).await.unwrap();
            assert!(n > 0, "the echo ended early");
            hash.update(&buf[..n]);
            left -= n;
        }
        (r, hash.finalize().to_vec())
    });
    let sent = send_seeded(&mut w, 3, BULK, None).await;
    let (r, echoed) = within("the stream's echo", reader).await.unwrap();
    assert_eq!(echoed, sent, "the stream came back unchanged");
    let mut tls = r.unsplit(w);

    for msg in small.iter().rev() {
        within("echo after the stream", echo(&mut tls, msg))
            .await
            .unwrap();
    }
    tls.shutdown().await.unwrap();
    backend.wait_finished(1).await;
    let total: usize = small.iter().map(|m| 2 * m.len()).sum::<usize>() + BULK;
    assert_eq!(backend.received.lock().unwrap()[0].len(), total);
    assert_eq!(backend.endings.lock().unwrap()[0], "eof");
    assert_eq!(sidecar.stop().await.cut, 0);
}

/// Small messages each way, each read by the relay in a read that empties the socket, then the
/// half-closes, in both orders: what arrives after a short read (the next message, close_notify, a
/// FIN) must still wake the relay, which no longer reads a socket again after a short read only to
/// find it empty.
async fn messages_then_half_close(first: First) {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let backend_addr = listener.local_addr().unwrap();
    let pki = Pki::new();
    let mut config = config(&pki, backend_addr);
    config.offload = ringseal::config::Offload::Off;
    let sidecar = Sidecar::start(config).await;
    let mut tls = connect(&client(pki.roots(), Some(&pki.node)), sidecar.addr)
        .await
        .unwrap();
    let (mut backend, _) = within("accept", listener.accept()).await.unwrap();
    // One byte, a message, and one of two records: each waits for the other side to read it first.
    let sizes = [1usize, 700, 20_000];
    for (i, &n) in sizes.iter().enumerate() {
        let ping = vec![i as u8 + 1; n];
        tls.write_all(&ping).await.unwrap();
        let mut got = vec![0u8; n];
        within("to the backend", backend.read_exact(&mut got))
            .await
            .unwrap();
        assert_eq!(got, ping);
        let pong = vec![i as u8 + 101; n];
        backend.write_all(&pong).await.unwrap();
        let mut got = vec![0u8; n];
        within("to the peer", tls.read_exact(&mut got))
            .await
            .unwrap();
        assert_eq!(got, pong);
    }
    // The first side ends; the other still sends one message through the half-closed connection,
    // then ends too. Each end of stream arrives after everything was read.
    let mut rest = Vec::new();
    match first {
        First::Peer => {
            tls.shutdown().await.unwrap(); // close_notify, then FIN
            within("FIN at the backend", backend.read_to_end(&mut rest))
                .await
                .unwrap();
            assert!(rest.is_empty());
            backend.write_all(b"last").await.unwrap();
            backend.shutdown().await.unwrap();
            within("close_notify at the peer", tls.read_to_end(&mut rest))
                .await
                .unwrap();
        }
        First::Backend => {
            backend.shutdown().await.unwrap();
            within("close_notify at the peer", tls.read_to_end(&mut rest))
                .await
                .unwrap();
            assert!(rest.is_empty());
            tls.write_all(b"last").await.unwrap();
            tls.shutdown().await.unwrap();
            within("FIN at the backend", backend.read_to_end(&mut rest))
                .await
                .unwrap();
        }
    }
    assert_eq!(rest, b"last");
    assert_eq!(sidecar.stop().await.cut, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_then_peer_closes_first() {
    messages_then_half_close(First::Peer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_then_backend_closes_first() {
    messages_then_half_close(First::Backend).await;
}

/// A TLS client whose TCP socket can be taken back, to end it without close_notify or with a reset.
async fn raw_client(pki: &Pki, sidecar: SocketAddr) -> Tls {
    connect(&client(pki.roots(), Some(&pki.node)), sidecar)
        .await
        .unwrap()
}

/// rustls queues a KeyUpdate response on its own when the peer asks for one; the relay must send it
/// while the backend is silent (tokio-rustls would only write it on the next write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_update_answered_while_backend_is_quiet() {
    use std::io::{Read, Write};
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let sidecar = Sidecar::start(config(&pki, backend.addr)).await;
    let cfg = client(pki.roots(), Some(&pki.node));
    let addr = sidecar.addr;
    tokio::task::spawn_blocking(move || {
        let name = rustls::pki_types::ServerName::IpAddress(LOCALHOST.into());
        let mut conn = rustls::ClientConnection::new(cfg, name).unwrap();
        let mut sock = std::net::TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).unwrap();
        }
        // Prove the connection is accepted end to end first.
        let echo_sync =
            |conn: &mut rustls::ClientConnection, sock: &mut std::net::TcpStream, msg: &[u8]| {
                conn.writer().write_all(msg).unwrap();
                let mut got = Vec::new();
                while got.len() < msg.len() {
                    conn.complete_io(sock).unwrap();
                    let mut buf = [0u8; 64];
                    match conn.reader().read(&mut buf) {
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                assert_eq!(got, msg);
            };
        echo_sync(&mut conn, &mut sock, b"before");

        // Ask for a key update and send nothing else: the only record that can come back is the
        // sidecar's own KeyUpdate.
        conn.refresh_traffic_keys().unwrap();
        while conn.wants_write() {
            conn.write_tls(&mut sock).unwrap();
        }
        let n = conn
            .read_tls(&mut sock)
            .expect("the sidecar must answer the KeyUpdate without waiting for backend data");
        assert!(n > 0);
        let state = conn.process_new_packets().unwrap();
        assert_eq!(
            state.plaintext_bytes_to_read(),
            0,
            "no application data, only the KeyUpdate"
        );

        // Both sides use the new keys now: data still flows.
        echo_sync(&mut conn, &mut sock, b"after");
    })
    .await
    .unwrap();
    sidecar.stop().await;
}

/// A backend that reads to EOF and then keeps its socket open forever.
async fn stubborn_backend() -> SocketAddr {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
            held.push(s);
        }
    });
    addr
}

#[tokio::test]
async fn close_linger_bounds_a_half_closed_connection() {
    let pki = Pki::new();
    let mut cfg = config(&pki, stubborn_backend().await);
    cfg.limits.close_linger = Duration::from_millis(300);
    let sidecar = Sidecar::start(cfg).await;
    let tls = raw_client(&pki, sidecar.addr).await;
    let (mut r, mut w) = tokio::io::split(tls);
    w.shutdown().await.unwrap(); // half-close; the backend never closes its side
    let mut rest = Vec::new();
    // The sidecar gives up after close_linger and resets the connection (no close_notify: it was not
    // a clean end), so the read ends with an error instead of hanging.
    let end = within("linger", r.read_to_end(&mut rest)).await;
    assert!(end.is_err(), "{end:?}");
    assert!(rest.is_empty());
    assert_eq!(sidecar.stop().await.cut, 0);
}

#[tokio::test]
async fn idle_timeout_closes_a_silent_connection() {
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let mut cfg = config(&pki, backend.addr);
    cfg.limits.idle_timeout = Some(Duration::from_millis(300));
    let sidecar = Sidecar::start(cfg).await;
    let mut tls = raw_client(&pki, sidecar.addr).await;
    echo(&mut tls, b"still here").await.unwrap();
    let mut rest = Vec::new();
    let _ = within("idle close", tls.read_to_end(&mut rest)).await;
    assert!(rest.is_empty());
    backend.wait_finished(1).await;
    sidecar.stop().await;
}

#[tokio::test]
async fn shutdown_drains_then_cuts_and_counts() {
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let mut cfg = config(&pki, backend.addr);
    cfg.limits.shutdown_grace = Duration::from_millis(300);
    let sidecar = Sidecar::start(cfg).await;
    let addr = sidecar.addr;
    let c = client(pki.roots(), Some(&pki.node));
    let mut open = connect(&c, addr).await.unwrap();
    echo(&mut open, b"x").await.unwrap();
    let mut finishing = connect(&c, addr).await.unwrap();
    echo(&mut finishing, b"y").await.unwrap();

    sidecar.shutdown.cancel();
    // One connection finishes by itself during the grace period...
    finishing.shutdown().await.unwrap();
    let mut rest = Vec::new();
    within("clean end", finishing.read_to_end(&mut rest))
        .await
        .unwrap();
    // ...the other is still open when the grace runs out and is cut.
    let drained = within("drain", sidecar.task).await.unwrap();
    assert_eq!(drained.cut, 1);
    // The listener is closed: new connections are refused.
    assert!(TcpStream::connect(addr).await.is_err());
    let mut rest = Vec::new();
    let _ = within("cut connection", open.read_to_end(&mut rest)).await;
}
