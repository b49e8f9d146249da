//! Outbound listeners with a fixed upstream: the local node's plaintext goes out as mutual TLS to a
//! peer's sidecar (ours, or `openssl s_server`), the peer verified by chain (+ dialed IP with endpoint
//! verification, + allow-list); and what happens when the peer is down, refuses, stalls or hangs up.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use ringseal::config::{Config, Outbound, Target};
use ringseal::tls::verify::AllowList;
use ringseal_testkit::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A config with one outbound listener on 127.0.0.1:0 towards `upstream`, presenting `pki.node`.
fn outbound_config(
    pki: &Pki,
    upstream: SocketAddr,
    endpoint: bool,
) -> Config<ringseal::tls::LoadedTls> {
    let mut c = config(pki, upstream);
    c.inbound.clear();
    c.outbound.push(Outbound {
        name: ringseal::config::ListenerName::default_for(false, 0),
        tls: c.tls.clone(),
        listen: SocketAddr::new(LOCALHOST, 0),
        target: Target::Fixed(upstream),
        require_endpoint_verification: endpoint,
        allow: AllowList::default(),
        mode: ringseal::config::Mode::Strict,
        plaintext_fallback: None,
        bind_ip: None,
    });
    c
}

/// The local side must see its connection end (EOF or reset) without anything delivered.
async fn assert_closed_without_data(local: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match within("local close", local.read(&mut buf)).await {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("unexpected {n} bytes: {:?}", &buf[..n]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_in_mtls_between_plaintext_out() {
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let inbound = Sidecar::start(config(&pki, backend.addr)).await;
    // The peer's certificate has IP SAN 127.0.0.1, the address dialed: endpoint verification passes.
    let (out_addr, outbound) = start_out(outbound_config(&pki, inbound.addr, true)).await;

    let mut local = TcpStream::connect(out_addr).await.unwrap();
    let mut data = vec![0u8; 8 * 1024 * 1024];
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i * 7 + i / 4096) as u8;
    }
    let (mut r, mut w) = local.split();
    let send = async {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let recv = async {
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.unwrap();
        back
    };
    let ((), back) = within("echo through the pair", async { tokio::join!(send, recv) }).await;
    assert_eq!(Sha256::digest(&back), Sha256::digest(&data));
    backend.wait_finished(1).await;
    assert_eq!(backend.received.lock().unwrap()[0].len(), data.len());
    drop(local);
    assert_eq!(outbound.stop().await.cut, 0);
    assert_eq!(inbound.stop().await.cut, 0);
}

#[tokio::test]
async fn peer_from_another_ca_is_refused() {
    let pki = Pki::new();
    let stranger = Pki::new_named("OtherCluster");
    let backend = Backend::start(Mode::Echo).await;
    let inbound = Sidecar::start(config(&stranger, backend.addr)).await;
    let (out_addr, _outbound) = start_out(outbound_config(&pki, inbound.addr, false)).await;
    let mut local = TcpStream::connect(out_addr).await.unwrap();
    local.write_all(b"secret mutation").await.unwrap();
    assert_closed_without_data(&mut local).await;
    assert_eq!(backend.accepted(), 0);
}

#[tokio::test]
async fn endpoint_verification_refuses_a_peer_without_the_dialed_ip() {
    let pki = Pki::new();
    // The peer's certificate names 127.0.0.2 only; it is dialed at 127.0.0.1.
    let node2 = pki.issue("node2", &[ip("127.0.0.2")]);
    let backend = Backend::start(Mode::Echo).await;
    let peer_cfg = config_with(&pki, &node2, backend.addr);
    let inbound = Sidecar::start(peer_cfg).await;
    let (strict, _a) = start_out(outbound_config(&pki, inbound.addr, true)).await;
    let mut local = TcpStream::connect(strict).await.unwrap();
    assert_closed_without_data(&mut local).await;
    // Without endpoint verification the same peer is accepted (chain only, as Cassandra does).
    let (lenient, _b) = start_out(outbound_config(&pki, inbound.addr, false)).await;
    let mut local = TcpStream::connect(lenient).await.unwrap();
    local.write_all(b"ping").await.unwrap();
    let mut pong = [0u8; 4];
    within("echo", local.read_exact(&mut pong)).await.unwrap();
    assert_eq!(&pong, b"ping");
    assert_eq!(
        backend.accepted(),
        1,
        "only the lenient connection reached the backend"
    );
}

#[tokio::test]
async fn allow_list_refuses_a_peer_of_another_cluster_name() {
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let inbound = Sidecar::start(config(&pki, backend.addr)).await;
    let mut cfg = outbound_config(&pki, inbound.addr, false);
    cfg.outbound[0].allow = AllowList {
        ou: vec!["ProdCluster".into()],
        ..AllowList::default()
    };
    let (out_addr, _o) = start_out(cfg).await;
    let mut local = TcpStream::connect(out_addr).await.unwrap();
    assert_closed_without_data(&mut local).await;
    assert_eq!(backend.accepted(), 0);
}

#[tokio::test]
async fn peer_down_closes_the_local_connection_promptly() {
    let pki = Pki::new();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (out_addr, outbound) = start_out(outbound_config(&pki, dead, false)).await;
    let mut local = TcpStream::connect(out_addr).await.unwrap();
    assert_closed_without_data(&mut local).await;
    assert_eq!(outbound.stop().await.cut, 0);
}

#[tokio::test]
async fn half_open_peer_times_out() {
    let pki = Pki::new();
    // Accepts TCP and never says anything.
    let silent = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let mut cfg = outbound_config(&pki, silent_addr, false);
    cfg.limits.handshake_timeout = Duration::from_millis(300);
    let (out_addr, _o) = start_out(cfg).await;
    let mut local = TcpStream::connect(out_addr).await.unwrap();
    assert_closed_without_data(&mut local).await;
}

#[tokio::test]
async fn peer_closing_mid_stream_is_seen_locally() {
    let pki = Pki::new();
    // A backend that answers once and hangs up.
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let backend_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(b"bye").await.unwrap();
    });
    let inbound = Sidecar::start(config(&pki, backend_addr)).await;
    let (out_addr, _o) = start_out(outbound_config(&pki, inbound.addr, false)).await;
    let mut local = TcpStream::connect(out_addr).await.unwrap();
    local.write_all(b"hello").await.unwrap();
    let mut got = Vec::new();
    within("remote close", local.read_to_end(&mut got))
        .await
        .unwrap();
    assert_eq!(got, b"bye");
}

/// The peer is `openssl s_server` requiring a client certificate from our CA: interoperability with a
/// TLS server we did not write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_server_as_the_peer() {
    if Command::new("openssl").arg("version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "openssl is required in CI"
        );
        eprintln!("skipping: openssl not installed");
        return;
    }
    let pki = Pki::new();
    let peer = pki.issue("node2", &[LOCALHOST]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("peer.crt"), &peer.cert_pem).unwrap();
    std::fs::write(dir.path().join("peer.key"), &peer.key_pem).unwrap();
    std::fs::write(dir.path().join("ca.crt"), &pki.ca.cert_pem).unwrap();
    let mut server = Command::new("openssl")
        .current_dir(dir.path())
        .args([
            "s_server",
            "-accept",
            "127.0.0.1:0",
            "-naccept",
            "1",
            "-rev",
            "-cert",
            "peer.crt",
            "-key",
            "peer.key",
            "-CAfile",
            "ca.crt",
            "-Verify",
            "1",
            "-verify_return_error",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = server.stdout.take().unwrap();
    let stderr = server.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("ACCEPT ") {
                let _ = port_tx.send(addr.to_owned());
            }
            lines.push(line);
        }
        lines
    });
    let accept = port_rx
        .recv_timeout(Duration::from_secs(15))
        .expect("s_server did not start");
    let upstream: SocketAddr = accept.parse().unwrap();
    let (out_addr, _o) = start_out(outbound_config(&pki, upstream, true)).await;
    let mut local = TcpStream::connect(out_addr).await.unwrap();
    local.write_all(b"cassandra\n").await.unwrap();
    let mut back = [0u8; 10];
    within("s_server answer", local.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(&back, b"ardnassac\n", "s_server -rev reverses each line");
    drop(local);
    let _ = server.kill();
    let _ = server.wait();
    let mut lines = reader.join().unwrap();
    lines.extend(errors.join().unwrap());
    // s_server prints the verified client certificate's subject (verify callback, on stderr).
    assert!(
        lines
            .iter()
            .any(|l| l.contains("CN=node1") || l.contains("CN = node1")),
        "s_server did not report our client certificate:\n{}",
        lines.join("\n")
    );
}

/// A peer whose server certificate is in our CRL is refused, like a revoked client inbound.
#[tokio::test]
async fn revoked_peer_certificate_is_refused() {
    let pki = Pki::new();
    let peer = pki.issue("node2", &[LOCALHOST]);
    let backend = Backend::start(Mode::Echo).await;
    let inbound = Sidecar::start(config_with(&pki, &peer, backend.addr)).await;
    let crl = pki
        .ca
        .crl(
            &[&peer],
            time::OffsetDateTime::now_utc() + Duration::from_secs(3600),
        )
        .unwrap();
    let mut cfg = outbound_config(&pki, inbound.addr, false);
    let mut material = ringseal::tls::material::TlsMaterial::from_der(
        vec![pki.node.cert_der.clone()],
        pki.node.key(),
        vec![pki.ca.cert_der.clone()],
        None,
    )
    .unwrap();
    material
        .add_crls(std::path::Path::new("crl.pem"), crl.as_bytes())
        .unwrap();
    // The listener runs with its own copy of the policy.
    cfg.outbound[0].tls.material = std::sync::Arc::new(material);
    let (out_addr, _o) = start_out(cfg).await;
    let mut local = TcpStream::connect(out_addr).await.unwrap();
    local.write_all(b"mutation").await.unwrap();
    assert_closed_without_data(&mut local).await;
    assert_eq!(backend.accepted(), 0);
    // Without the CRL the same peer is fine.
    let (out_addr, _p) = start_out(outbound_config(&pki, inbound.addr, false)).await;
    let mut local = TcpStream::connect(out_addr).await.unwrap();
    local.write_all(b"ping").await.unwrap();
    let mut pong = [0u8; 4];
    within("echo", local.read_exact(&mut pong)).await.unwrap();
    assert_eq!(backend.accepted(), 1);
}

/// A transparent listener only serves connections the firewall redirected: one made to it directly has
/// no original destination (or its own), and is refused without dialing anything.
#[tokio::test]
async fn transparent_listener_refuses_connections_that_were_not_redirected() {
    let pki = Pki::new();
    let mut cfg = outbound_config(&pki, "127.0.0.1:9".parse().unwrap(), false);
    cfg.outbound[0].target = Target::Transparent { tls_port: 7001 };
    let (out_addr, outbound) = start_out(cfg).await;
    let mut local = TcpStream::connect(out_addr).await.unwrap();
    local.write_all(b"gossip").await.unwrap();
    assert_closed_without_data(&mut local).await;
    assert_eq!(outbound.stop().await.cut, 0);
}
