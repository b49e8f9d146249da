//! Permissive mode, the migration switch: plaintext peers pass through untouched next to TLS peers
//! (inbound), and a peer without TLS yet is reached in plaintext (outbound) — but never because a
//! certificate failed verification.

use std::net::SocketAddr;

use ringseal::config::{Outbound, Target};
use ringseal::tls::verify::AllowList;
use ringseal_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn plain_echo(addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(msg).await?;
    s.shutdown().await?;
    let mut back = Vec::new();
    s.read_to_end(&mut back).await?;
    Ok(back)
}

#[tokio::test]
async fn inbound_permissive_passes_plaintext_and_terminates_tls() {
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let mut cfg = config(&pki, backend.addr);
    cfg.inbound[0].mode = ringseal::config::Mode::Permissive;
    let sidecar = Sidecar::start(cfg).await;
    // A node without a sidecar: Cassandra's plaintext internode magic, passed through byte for byte.
    let frame = [0xCA, 0x55, 0x2D, 0xFA, 0, 0, 0, 12, 1, 2, 3];
    let back = within("plaintext", plain_echo(sidecar.addr, &frame))
        .await
        .unwrap();
    assert_eq!(back, frame);
    // A node with a sidecar: mutual TLS as always.
    roundtrip(
        &client(pki.roots(), Some(&pki.node)),
        LOCALHOST,
        sidecar.addr,
    )
    .await
    .unwrap();
    // TLS is still verified in permissive mode: no certificate, no entry.
    assert!(
        roundtrip(&client(pki.roots(), None), LOCALHOST, sidecar.addr)
            .await
            .is_err()
    );
    backend.wait_finished(2).await;
    assert_eq!(backend.accepted(), 2);
    assert_eq!(backend.received.lock().unwrap()[0], frame);
}

fn permissive_outbound(
    pki: &Pki,
    upstream: SocketAddr,
    fallback: SocketAddr,
) -> ringseal::config::Config<ringseal::tls::LoadedTls> {
    let mut c = config(pki, upstream);
    c.inbound.clear();
    c.outbound.push(Outbound {
        name: ringseal::config::ListenerName::default_for(false, 0),
        tls: c.tls.clone(),
        listen: SocketAddr::new(LOCALHOST, 0),
        target: Target::Fixed(upstream),
        require_endpoint_verification: false,
        allow: AllowList::default(),
        mode: ringseal::config::Mode::Permissive,
        plaintext_fallback: Some(fallback),
        bind_ip: None,
    });
    c
}

#[tokio::test]
async fn outbound_falls_back_to_plaintext_when_the_peer_has_no_tls_port() {
    let pki = Pki::new();
    let plain_peer = Backend::start(Mode::Echo).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (out, _s) = start_out(permissive_outbound(&pki, closed, plain_peer.addr)).await;
    for _ in 0..3 {
        let back = within("fallback", plain_echo(out, b"gossip"))
            .await
            .unwrap();
        assert_eq!(back, b"gossip");
    }
    assert_eq!(plain_peer.accepted(), 3);
}

#[tokio::test]
async fn outbound_falls_back_when_the_tls_port_does_not_speak_tls() {
    let pki = Pki::new();
    let plain_peer = Backend::start(Mode::Echo).await;
    // Something plaintext answers on the "TLS" port (an old service, a misconfigured node).
    let listener = tokio::net::TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let not_tls_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        }
    });
    let (out, _s) = start_out(permissive_outbound(&pki, not_tls_addr, plain_peer.addr)).await;
    let back = within("fallback", plain_echo(out, b"gossip"))
        .await
        .unwrap();
    assert_eq!(back, b"gossip");
    assert_eq!(plain_peer.accepted(), 1);
}

#[tokio::test]
async fn outbound_never_falls_back_after_a_certificate_failure() {
    let pki = Pki::new();
    let stranger = Pki::new_named("OtherCluster");
    let backend = Backend::start(Mode::Echo).await;
    let impostor = Sidecar::start(config(&stranger, backend.addr)).await;
    let plain_peer = Backend::start(Mode::Echo).await;
    let (out, _s) = start_out(permissive_outbound(&pki, impostor.addr, plain_peer.addr)).await;
    let back = within("refusal", plain_echo(out, b"secret")).await;
    assert!(back.map_or(true, |b| b.is_empty()), "data came back");
    assert_eq!(
        plain_peer.accepted(),
        0,
        "plaintext went out after a failed verification"
    );
    assert_eq!(backend.accepted(), 0);
}

#[tokio::test]
async fn outbound_prefers_tls_when_the_peer_has_it() {
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let inbound = Sidecar::start(config(&pki, backend.addr)).await;
    let plain_peer = Backend::start(Mode::Echo).await;
    let (out, _s) = start_out(permissive_outbound(&pki, inbound.addr, plain_peer.addr)).await;
    let back = within("tls", plain_echo(out, b"hello")).await.unwrap();
    assert_eq!(back, b"hello");
    assert_eq!(backend.accepted(), 1);
    assert_eq!(plain_peer.accepted(), 0);
}

/// A peer remembered as plaintext-only that has since moved to strict (its plaintext port now
/// refuses) is tried over TLS at once, not after the fallback memory runs out.
#[tokio::test]
async fn a_peer_that_went_strict_is_tried_over_tls_at_once() {
    let pki = Pki::new();
    // The port is freed now and bound again by the peer below. On 127.0.0.2 no other test's connection
    // (all from 127.0.0.1) can take it as its ephemeral source port in between ("Address in use").
    let tls_addr = std::net::TcpListener::bind("127.0.0.2:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // The peer's plaintext storage port, which we can close.
    let plain = tokio::net::TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let plain_addr = plain.local_addr().unwrap();
    let plain_task = tokio::spawn(async move {
        while let Ok((mut s, _)) = plain.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let (out, _s) = start_out(permissive_outbound(&pki, tls_addr, plain_addr)).await;
    assert_eq!(
        within("fallback", plain_echo(out, b"one")).await.unwrap(),
        b"one"
    );

    // The peer goes strict: plaintext refused, TLS on its TLS port.
    plain_task.abort();
    let _ = plain_task.await;
    let backend = Backend::start(Mode::Echo).await;
    let mut cfg = config(&pki, backend.addr);
    cfg.inbound[0].listen = tls_addr;
    let _peer = Sidecar::start(cfg).await;
    let back = tokio::time::timeout(std::time::Duration::from_secs(10), plain_echo(out, b"two"))
        .await
        .expect("waited out the fallback memory instead of trying TLS")
        .unwrap();
    assert_eq!(back, b"two");
    assert_eq!(backend.accepted(), 1);
}
