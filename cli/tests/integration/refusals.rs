//! Every way a peer can be refused on the inbound listener. In each refused case the client sees an
//! error, the storage port never sees a connection, and the sidecar keeps serving good peers.

use ringseal_testkit::*;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ringseal::config::Config;
use ringseal::pki::{Ca, Identity, NodeSpec, Usage};
use ringseal::tls::verify::AllowList;
use rustls::pki_types::ServerName;
use rustls::{AlertDescription, ClientConfig};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A handshake timeout far beyond `within()`'s 30 s: a close seen within the bound was not the timeout.
const NEVER: Duration = Duration::from_secs(3600);
/// A handshake timeout short enough to wait for.
const SHORT: Duration = Duration::from_millis(500);
const DAY: Duration = Duration::from_secs(86400);

/// A sidecar in front of a fresh echo backend, with `tweak` applied to the default test config.
async fn start(
    pki: &Pki,
    tweak: impl FnOnce(&mut Config<ringseal::tls::LoadedTls>),
) -> (Backend, Sidecar) {
    let backend = Backend::start(Mode::Echo).await;
    let mut cfg = config(pki, backend.addr);
    tweak(&mut cfg);
    let sidecar = Sidecar::start(cfg).await;
    (backend, sidecar)
}

/// The alert the sidecar sent, when the client's error carries one.
fn alert_of(e: &io::Error) -> Option<AlertDescription> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(a) => Some(*a),
        _ => None,
    }
}

/// `client` connecting from `from` is refused: the handshake fails or (TLS 1.3: the server decides
/// after the client's side has finished) the first echo fails, and always with `alert` (the sidecar
/// ends a refusal with a FIN after the alert, never a reset that could destroy it).
async fn assert_refused(
    client: &Arc<ClientConfig>,
    from: IpAddr,
    to: SocketAddr,
    alert: AlertDescription,
) {
    let err = within("refused roundtrip", roundtrip(client, from, to))
        .await
        .expect_err("the sidecar relayed for a peer it must refuse");
    assert_eq!(
        alert_of(&err),
        Some(alert),
        "refused without the alert: {err} ({:?})",
        err.kind()
    );
}

/// After refusals: nothing reached the storage port, and a good peer still gets through (exactly once).
async fn assert_still_serves(pki: &Pki, backend: &Backend, sidecar: &Sidecar, before: usize) {
    assert_eq!(
        backend.accepted(),
        before,
        "a refused peer caused a connection to the storage port"
    );
    let good = client(pki.roots(), Some(&pki.node));
    within("good roundtrip", roundtrip(&good, LOCALHOST, sidecar.addr))
        .await
        .expect("a good peer must still be served after refusals");
    assert_eq!(backend.accepted(), before + 1);
    assert!(!sidecar.task.is_finished(), "the sidecar stopped serving");
}

/// Reads until the sidecar closes (EOF) or resets the connection; returns what it sent before.
async fn until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Whatever the sidecar sends a refused raw connection, it is at most a TLS alert record.
fn assert_nothing_but_alert(got: &[u8], what: &str) {
    assert!(
        got.is_empty() || got[0] == 0x15,
        "{what}: the sidecar sent something other than a TLS alert: {got:02x?}"
    );
}

/// A real ClientHello, as the first flight of a rustls client.
fn client_hello(pki: &Pki) -> Vec<u8> {
    let cfg = client(pki.roots(), Some(&pki.node));
    let mut conn =
        rustls::ClientConnection::new(cfg, ServerName::IpAddress(LOCALHOST.into())).unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    assert_eq!(hello[0], 0x16, "not a handshake record");
    assert!(hello.len() > 100, "ClientHello too short: {}", hello.len());
    hello
}

fn spec_valid(name: &str, not_before: OffsetDateTime, not_after: OffsetDateTime) -> NodeSpec {
    NodeSpec {
        not_before,
        not_after,
        ..NodeSpec::new(name, &[LOCALHOST])
    }
}

/// Raises the soft open-file limit for the 1,000-connection tests (each costs four descriptors here).
fn enough_descriptors() {
    let _ = rlimit::increase_nofile_limit(16_384);
}

// 1. Plaintext (and other non-TLS bytes) on the TLS port.

#[tokio::test]
async fn plaintext_on_tls_port_is_closed() {
    let pki = Pki::new();
    let (backend, sidecar) = start(&pki, |c| c.limits.handshake_timeout = NEVER).await;
    let mut internode = vec![0xCA, 0x55, 0x2D, 0xFA, 0x00, 0x00, 0x01, 0x0C];
    internode.extend_from_slice(&[0x00, 0x00, 0x00, 0x0C, 0x00, 0x00, 0x00, 0x01, 0x7F, 0x00]);
    let cases: [(&str, Vec<u8>); 6] = [
        ("cassandra internode frame", internode),
        (
            "http request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "cql startup frame",
            vec![0x04, 0x00, 0x00, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00],
        ),
        (
            "sslv2 hello",
            vec![0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00],
        ),
        ("junk", b"hello there, is anyone listening?\n".to_vec()),
        (
            "tls application data record first",
            vec![0x17, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5],
        ),
    ];
    for (what, bytes) in cases {
        let mut s = TcpStream::connect(sidecar.addr).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        let got = within(what, until_closed(&mut s)).await;
        assert_nothing_but_alert(&got, what);
    }
    assert_still_serves(&pki, &backend, &sidecar, 0).await;
}

#[tokio::test]
async fn malformed_handshake_record_is_refused() {
    let pki = Pki::new();
    let (backend, sidecar) = start(&pki, |c| c.limits.handshake_timeout = NEVER).await;
    // A handshake record whose body is not a ClientHello: rustls refuses it, no timeout involved.
    let mut s = TcpStream::connect(sidecar.addr).await.unwrap();
    s.write_all(&[
        0x16, 0x03, 0x01, 0x00, 0x08, 0xFF, 0x00, 0x00, 0x04, 1, 2, 3, 4,
    ])
    .await
    .unwrap();
    let got = within("malformed handshake", until_closed(&mut s)).await;
    assert_nothing_but_alert(&got, "malformed handshake");
    assert_still_serves(&pki, &backend, &sidecar, 0).await;
}

#[tokio::test]
async fn record_header_announcing_more_than_any_record_is_refused_at_once() {
    let pki = Pki::new();
    let (backend, sidecar) = start(&pki, |c| c.limits.handshake_timeout = NEVER).await;
    // 65,535 bytes announced, more than TLS allows (2^14 + 2048): refused on the header, without
    // waiting for a body that may never come (the handshake timeout is an hour).
    let mut s = TcpStream::connect(sidecar.addr).await.unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0x00])
        .await
        .unwrap();
    let got = within("oversized record header", until_closed(&mut s)).await;
    assert_nothing_but_alert(&got, "oversized record header");
    assert_still_serves(&pki, &backend, &sidecar, 0).await;
}

/// A TCP stream whose writes carry at most 3 bytes each: with TCP_NODELAY every record reaches the
/// sidecar in pieces.
struct Dribble(TcpStream);

impl tokio::io::AsyncRead for Dribble {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Dribble {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let n = buf.len().min(3);
        std::pin::Pin::new(&mut self.0).poll_write(cx, &buf[..n])
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn handshake_records_arriving_in_pieces_complete() {
    let pki = Pki::new();
    let (backend, sidecar) = start(&pki, |c| c.limits.handshake_timeout = NEVER).await;
    let tcp = TcpStream::connect(sidecar.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let cfg = client(pki.roots(), Some(&pki.node));
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let mut tls = within(
        "handshake in 3-byte pieces",
        connector.connect(ServerName::IpAddress(LOCALHOST.into()), Dribble(tcp)),
    )
    .await
    .expect("a handshake whose records arrive in pieces must complete");
    let msg = b"pieces of a record";
    tls.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    within("echo", tls.read_exact(&mut back)).await.unwrap();
    assert_eq!(&back, msg);
    assert_eq!(backend.accepted(), 1);
}

// 2. A truncated ClientHello.

#[tokio::test]
async fn truncated_client_hello_then_fin_is_closed() {
    let pki = Pki::new();
    let (backend, sidecar) = start(&pki, |c| c.limits.handshake_timeout = NEVER).await;
    let hello = client_hello(&pki);
    let mut s = TcpStream::connect(sidecar.addr).await.unwrap();
    s.write_all(&hello[..hello.len() / 2]).await.unwrap();
    s.shutdown().await.unwrap();
    // The handshake timeout is an hour: only the peer's FIN can end this within the bound.
    let got = within("truncated hello + FIN", until_closed(&mut s)).await;
    assert_nothing_but_alert(&got, "truncated hello + FIN");
    assert_still_serves(&pki, &backend, &sidecar, 0).await;
}

#[tokio::test]
async fn truncated_client_hello_then_silence_times_out() {
    let pki = Pki::new();
    let (backend, sidecar) = start(&pki, |c| c.limits.handshake_timeout = SHORT).await;
    let hello = client_hello(&pki);
    let mut s = TcpStream::connect(sidecar.addr).await.unwrap();
    s.write_all(&hello[..hello.len() / 2]).await.unwrap();
    let got = within("truncated hello, silent", until_closed(&mut s)).await;
    assert_nothing_but_alert(&got, "truncated hello, silent");
    assert_still_serves(&pki, &backend, &sidecar, 0).await;
}

// 3. A client that connects and says nothing.

#[tokio::test]
async fn silent_client_times_out() {
    let pki = Pki::new();
    let (backend, sidecar) = start(&pki, |c| c.limits.handshake_timeout = SHORT).await;
    let mut s = TcpStream::connect(sidecar.addr).await.unwrap();
    let got = within("silent client", until_closed(&mut s)).await;
    assert!(got.is_empty(), "sent {got:02x?} to a silent client");
    assert_still_serves(&pki, &backend, &sidecar, 0).await;
}

#[tokio::test]
async fn client_that_connects_and_closes_is_harmless() {
    let pki = Pki::new();
    let (backend, sidecar) = start(&pki, |c| c.limits.handshake_timeout = NEVER).await;
    for _ in 0..3 {
        let s = TcpStream::connect(sidecar.addr).await.unwrap();
        drop(s);
    }
    assert_still_serves(&pki, &backend, &sidecar, 0).await;
}

// 4. No client certificate.

#[tokio::test]
async fn no_client_certificate_is_refused() {
    let pki = Pki::new();
    let (backend, sidecar) = start(&pki, |_| {}).await;
    let anonymous = client(pki.roots(), None);
    assert_refused(
        &anonymous,
        LOCALHOST,
        sidecar.addr,
        AlertDescription::CertificateRequired,
    )
    .await;
    assert_still_serves(&pki, &backend, &sidecar, 0).await;
}

#[tokio::test]
async fn no_client_certificate_over_tls12_is_refused() {
    let pki = Pki::new();
    let (backend, sidecar) = start(&pki, |_| {}).await;
    let anonymous = tls12_client(&pki, None);
    // TLS 1.2 has no certificate_required alert: the handshake itself fails.
    let err = within("tls1.2 no cert", connect(&anonymous, sidecar.addr))
        .await
        .expect_err("a TLS 1.2 handshake without a client certificate must fail");
    assert!(
        alert_of(&err).is_some()
            || matches!(
                err.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof
            ),
        "{err}"
    );
    assert_still_serves(&pki, &backend, &sidecar, 0).await;
}

/// A TLS 1.2-only client.
fn tls12_client(pki: &Pki, id: Option<&Identity>) -> Arc<ClientConfig> {
    let b = ClientConfig::builder_with_provider(ringseal::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(pki.roots());
    Arc::new(match id {
        Some(id) => b
            .with_client_auth_cert(vec![id.cert_der.clone()], id.key())
            .unwrap(),
        None => b.with_no_client_auth(),
    })
}

// 5. A certificate from another CA.

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    let pki = Pki::new();
    let (backend, sidecar) = start(&pki, |_| {}).await;
    let other = Ca::new("Other").unwrap();
    let stranger = other.issue(&NodeSpec::new("node1", &[LOCALHOST])).unwrap();
    // Trusts our CA (so it accepts the sidecar), presents a certificate we do not trust.
    let c = client(pki.roots(), Some(&stranger));
    assert_refused(&c, LOCALHOST, sidecar.addr, AlertDescription::UnknownCA).await;
    // Over TLS 1.2 the handshake itself fails.
    let c12 = tls12_client(&pki, Some(&stranger));
    let err = within("tls1.2 other CA", connect(&c12, sidecar.addr))
        .await
        .expect_err("TLS 1.2 handshake with an untrusted certificate must fail");
    if let Some(a) = alert_of(&err) {
        assert_eq!(a, AlertDescription::UnknownCA, "{err}");
    }
    assert_still_serves(&pki, &backend, &sidecar, 0).await;
}

#[tokio::test]
async fn client_of_another_cluster_is_refused() {
    let pki = Pki::new();
    let (backend, sidecar) = start(&pki, |_| {}).await;
    // A node of another cluster: trusts only its own CA, so both sides refuse each other.
    let other = Ca::new("Other").unwrap();
    let stranger = other.issue(&NodeSpec::new("node1", &[LOCALHOST])).unwrap();
    let mut other_roots = rustls::RootCertStore::empty();
    other_roots.add(other.cert_der.clone()).unwrap();
    let c = client(Arc::new(other_roots), Some(&stranger));
    let err = within("other cluster", roundtrip(&c, LOCALHOST, sidecar.addr))
        .await
        .expect_err("a node of another cluster must not get through");
    // Our client refuses the sidecar's certificate first.
    assert!(
        matches!(
            err.get_ref()
                .and_then(|e| e.downcast_ref::<rustls::Error>()),
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))
        ),
        "{err}"
    );
    assert_still_serves(&pki, &backend, &sidecar, 0).await;
}

// 6. Validity period.

#[tokio::test]
async fn expired_certificate_is_refused() {
    let pki = Pki::new();
    let (backend, sidecar) = start(&pki, |_| {}).await;
    let now = OffsetDateTime::now_utc();
    let expired = pki
        .ca
        .issue(&spec_valid("node1", now - DAY * 30, now - DAY))
        .unwrap();
    let c = client(pki.roots(), Some(&expired));
    assert_refused(
        &c,
        LOCALHOST,
        sidecar.addr,
        AlertDescription::CertificateExpired,
    )
    .await;
    assert_still_serves(&pki, &backend, &sidecar, 0).await;
}

#[tokio::test]
async fn not_yet_valid_certificate_is_refused() {
    let pki = Pki::new();
    let (backend, sidecar) = start(&pki, |_| {}).await;
    let now = OffsetDateTime::now_utc();
    let early = pki
        .ca
        .issue(&spec_valid("node1", now + DAY, now + DAY * 365))
        .unwrap();
    let c = client(pki.roots(), Some(&early));
    assert_refused(
        &c,
        LOCALHOST,
        sidecar.addr,
        AlertDescription::CertificateExpired,
    )
    .await;
    assert_still_serves(&pki, &backend, &sidecar, 0).await;
}

// 7. Extended key usage.

#[tokio::test]
async fn server_only_certificate_is_refused_as_client() {
    let pki = Pki::new();
    let (backend, sidecar) = start(&pki, |_| {}).await;
    let server_only = pki
        .ca
        .issue(&NodeSpec {
            usage: Usage::ServerOnly,
            ..NodeSpec::new("node1", &[LOCALHOST])
        })
        .unwrap();
    let c = client(pki.roots(), Some(&server_only));
    assert_refused(
        &c,
        LOCALHOST,
        sidecar.addr,
        AlertDescription::UnsupportedCertificate,
    )
    .await;
    assert_still_serves(&pki, &backend, &sidecar, 0).await;
}

// 8. Endpoint verification.

#[tokio::test]
async fn endpoint_verification_checks_source_ip() {
    let pki = Pki::new();
    let (backend, sidecar) = start(&pki, |c| {
        c.inbound[0].require_endpoint_verification = true;
    })
    .await;
    let two = ip("127.0.0.2");
    let node2 = pki.issue("node2", &[two]);
    let c2 = client(pki.roots(), Some(&node2));
    // Its only IP SAN is 127.0.0.2: from 127.0.0.1 it is refused ...
    assert_refused(
        &c2,
        LOCALHOST,
        sidecar.addr,
        AlertDescription::CertificateUnknown,
    )
    .await;
    // ... and so is node1 (IP SAN 127.0.0.1) connecting from 127.0.0.2, and from 127.0.0.3.
    let c1 = client(pki.roots(), Some(&pki.node));
    assert_refused(&c1, two, sidecar.addr, AlertDescription::CertificateUnknown).await;
    assert_refused(
        &c2,
        ip("127.0.0.3"),
        sidecar.addr,
        AlertDescription::CertificateUnknown,
    )
    .await;
    assert_eq!(backend.accepted(), 0);
    // From its own address it is accepted.
    within("node2 from 127.0.0.2", roundtrip(&c2, two, sidecar.addr))
        .await
        .expect("a peer connecting from its certificate's IP must be accepted");
    assert_eq!(backend.accepted(), 1);
    assert_still_serves(&pki, &backend, &sidecar, 1).await;
}

/// Session resumption skips the client certificate: were it enabled, a session from an allowed address
/// would let the same client in from any other. Each client config keeps its sessions, so a resumable
/// session would be offered on the second connection.
#[tokio::test]
async fn resumption_cannot_bypass_endpoint_verification() {
    let pki = Pki::new();
    let (backend, sidecar) = start(&pki, |c| {
        c.inbound[0].require_endpoint_verification = true;
    })
    .await;
    let two = ip("127.0.0.2");
    let node2 = pki.issue("node2", &[two]);
    for (i, c) in [
        client(pki.roots(), Some(&node2)),
        tls12_client(&pki, Some(&node2)),
    ]
    .iter()
    .enumerate()
    {
        for _ in 0..2 {
            within("from its own address", roundtrip(c, two, sidecar.addr))
                .await
                .expect("node2 from 127.0.0.2 must be accepted");
        }
        let err = within(
            "from another address",
            roundtrip(c, LOCALHOST, sidecar.addr),
        )
        .await
        .expect_err("a second connection from another address must be verified again");
        if let Some(a) = alert_of(&err) {
            assert_eq!(a, AlertDescription::CertificateUnknown, "{err}");
        }
        assert_eq!(backend.accepted(), 2 * (i + 1));
    }
    assert_still_serves(&pki, &backend, &sidecar, 4).await;
}

#[tokio::test]
async fn endpoint_verification_refuses_certificate_without_ip_san() {
    let pki = Pki::new();
    let (backend, sidecar) = start(&pki, |c| {
        c.inbound[0].require_endpoint_verification = true;
    })
    .await;
    let dns_only = pki
        .ca
        .issue(&NodeSpec {
            dns: vec!["node3.cluster.test".into()],
            ..NodeSpec::new("node3", &[])
        })
        .unwrap();
    let c = client(pki.roots(), Some(&dns_only));
    assert_refused(
        &c,
        LOCALHOST,
        sidecar.addr,
        AlertDescription::CertificateUnknown,
    )
    .await;
    assert_still_serves(&pki, &backend, &sidecar, 0).await;
}

#[tokio::test]
async fn without_endpoint_verification_source_ip_is_not_checked() {
    let pki = Pki::new();
    let (backend, sidecar) = start(&pki, |_| {}).await;
    let node2 = pki.issue("node2", &[ip("127.0.0.2")]);
    let c2 = client(pki.roots(), Some(&node2));
    within(
        "node2 from 127.0.0.1",
        roundtrip(&c2, LOCALHOST, sidecar.addr),
    )
    .await
    .expect("endpoint verification is off: the source IP must not matter");
    assert_eq!(backend.accepted(), 1);
}

// 9. Identity allow-list.

/// A sidecar with `allow`: each (client identity, accepted?) is tried in turn.
async fn check_allow_list(pki: &Pki, allow: AllowList, cases: &[(&Identity, bool)]) {
    let (backend, sidecar) = start(pki, |c| c.inbound[0].allow = allow.clone()).await;
    let mut accepted = 0;
    for (i, (id, ok)) in cases.iter().enumerate() {
        let c = client(pki.roots(), Some(id));
        if *ok {
            within("allowed roundtrip", roundtrip(&c, LOCALHOST, sidecar.addr))
                .await
                .unwrap_or_else(|e| panic!("case {i}: allow-list {allow} must accept: {e}"));
            accepted += 1;
        } else {
            assert_refused(
                &c,
                LOCALHOST,
                sidecar.addr,
                AlertDescription::CertificateUnknown,
            )
            .await;
        }
        assert_eq!(backend.accepted(), accepted, "case {i}, allow-list {allow}");
    }
}

#[tokio::test]
async fn allow_list_ou_of_our_cluster_accepts() {
    let pki = Pki::new();
    let allow = AllowList {
        ou: vec!["TestCluster".into()],
        ..Default::default()
    };
    check_allow_list(&pki, allow, &[(&pki.node, true)]).await;
}

#[tokio::test]
async fn allow_list_ou_of_another_cluster_refuses() {
    let pki = Pki::new();
    let node2 = pki.issue("node2", &[LOCALHOST]);
    // node1 matches neither entry; node2 matches by CN: proves the sidecar still serves the list's members.
    let allow = AllowList {
        ou: vec!["OtherCluster".into()],
        cn: vec!["node2".into()],
        ..Default::default()
    };
    check_allow_list(
        &pki,
        allow,
        &[(&pki.node, false), (&node2, true), (&pki.node, false)],
    )
    .await;
    // OU alone, no member: refused as well.
    let allow = AllowList {
        ou: vec!["OtherCluster".into()],
        ..Default::default()
    };
    check_allow_list(&pki, allow, &[(&pki.node, false), (&node2, false)]).await;
}

#[tokio::test]
async fn allow_list_cn_accepts_only_listed_names() {
    let pki = Pki::new();
    let node2 = pki.issue("node2", &[LOCALHOST]);
    let allow = AllowList {
        cn: vec!["node1".into()],
        ..Default::default()
    };
    check_allow_list(&pki, allow, &[(&node2, false), (&pki.node, true)]).await;
}

#[tokio::test]
async fn allow_list_dns_and_ip() {
    let pki = Pki::new();
    let named = pki
        .ca
        .issue(&NodeSpec {
            dns: vec!["Node7.Cluster.Test".into()],
            ..NodeSpec::new("node7", &[LOCALHOST])
        })
        .unwrap();
    // DNS entries are compared lower-cased.
    let allow = AllowList {
        dns: vec!["node7.cluster.test".into()],
        ..Default::default()
    };
    check_allow_list(&pki, allow, &[(&pki.node, false), (&named, true)]).await;
    let other_ip = pki.issue("node9", &[ip("10.9.9.9")]);
    let allow = AllowList {
        ip: vec![LOCALHOST],
        ..Default::default()
    };
    check_allow_list(&pki, allow, &[(&other_ip, false), (&pki.node, true)]).await;
}

// 10. Many at once.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_handshakes() {
    enough_descriptors();
    let pki = Pki::new();
    // One address with 1000 handshakes at once is over the per-source cap (64) by design: raised here,
    // this tests the handshake path itself.
    let (backend, sidecar) = start(&pki, |c| c.limits.max_pending_per_source = 1024).await;
    let good = client(pki.roots(), Some(&pki.node));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let (c, to) = (good.clone(), sidecar.addr);
        set.spawn(async move { roundtrip(&c, LOCALHOST, to).await });
    }
    let results = within("1000 roundtrips", set.join_all()).await;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of 1000 roundtrips failed, first: {:?}",
        failed.len(),
        failed.first()
    );
    assert_eq!(backend.accepted(), 1000);
    backend.wait_finished(1000).await;
    assert_eq!(sidecar.stop().await.cut, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_refused_connections_do_not_block_a_good_peer() {
    enough_descriptors();
    let pki = Pki::new();
    // As above: every connection is processed to its refusal, none turned away by the per-source cap.
    let (backend, sidecar) = start(&pki, |c| c.limits.max_pending_per_source = 1024).await;
    let other = Ca::new("Other").unwrap();
    let stranger = client(
        pki.roots(),
        Some(&other.issue(&NodeSpec::new("node1", &[LOCALHOST])).unwrap()),
    );
    let anonymous = client(pki.roots(), None);
    let good = client(pki.roots(), Some(&pki.node));
    let to = sidecar.addr;

    let mut bad = tokio::task::JoinSet::new();
    let spawn_bad = |bad: &mut tokio::task::JoinSet<Result<(), String>>, i: usize| {
        let (stranger, anonymous) = (stranger.clone(), anonymous.clone());
        bad.spawn(async move {
            match i % 3 {
                0 => match roundtrip(&stranger, LOCALHOST, to).await {
                    Ok(()) => Err(format!("{i}: other-CA client got through")),
                    Err(_) => Ok(()),
                },
                1 => match roundtrip(&anonymous, LOCALHOST, to).await {
                    Ok(()) => Err(format!("{i}: client without certificate got through")),
                    Err(_) => Ok(()),
                },
                _ => {
                    let mut s = TcpStream::connect(to).await.map_err(|e| e.to_string())?;
                    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                        .await
                        .map_err(|e| e.to_string())?;
                    let got = until_closed(&mut s).await;
                    if got.is_empty() || got[0] == 0x15 {
                        Ok(())
                    } else {
                        Err(format!("{i}: plaintext peer got {got:02x?}"))
                    }
                }
            }
        });
    };
    for i in 0..500 {
        spawn_bad(&mut bad, i);
    }
    let good_task = tokio::spawn(async move { roundtrip(&good, LOCALHOST, to).await });
    for i in 500..1000 {
        spawn_bad(&mut bad, i);
    }
    within("good peer amid refusals", good_task)
        .await
        .unwrap()
        .expect("a good peer must get through while the port is under refused traffic");
    let results = within("1000 refused connections", bad.join_all()).await;
    let wrong: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        wrong.is_empty(),
        "{} wrong outcomes: {wrong:?}",
        wrong.len()
    );
    assert_eq!(
        backend.accepted(),
        1,
        "only the good peer reaches the storage port"
    );
    assert_still_serves(&pki, &backend, &sidecar, 1).await;
}

// 11. A dead backend.

/// Echo server on an already bound socket, counting accepted connections.
fn serve_echo(listener: tokio::net::TcpListener) -> Arc<AtomicUsize> {
    let accepted = Arc::new(AtomicUsize::new(0));
    let a = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    accepted
}

#[tokio::test]
async fn dead_backend_closes_verified_peer_and_keeps_serving() {
    let pki = Pki::new();
    // Bound but not listening: connecting is refused, and no other process can take the port meanwhile.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(LOCALHOST, 0)).unwrap();
    let dead = socket.local_addr().unwrap();
    let sidecar = Sidecar::start(config(&pki, dead)).await;
    let good = client(pki.roots(), Some(&pki.node));

    for attempt in 0..2 {
        let mut tls = within("handshake", connect(&good, sidecar.addr))
            .await
            .expect("the certificate is fine: the handshake must complete");
        let mut buf = [0u8; 64];
        let n = within("first read", tls.read(&mut buf))
            .await
            .unwrap_or_else(|e| panic!("attempt {attempt}: expected close_notify + EOF, got {e}"));
        assert_eq!(n, 0, "attempt {attempt}: data from a dead backend?");
    }
    // A peer that sends first: still closed (EOF or reset), never answered.
    let mut tls = within("handshake", connect(&good, sidecar.addr))
        .await
        .expect("the certificate is fine: the handshake must complete");
    let _ = tls.write_all(b"hello nobody").await;
    let mut buf = [0u8; 64];
    match within("first read after write", tls.read(&mut buf)).await {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("got {n} bytes from a dead backend"),
    }
    assert!(!sidecar.task.is_finished(), "the sidecar stopped serving");

    // The storage port comes up: the same sidecar now relays.
    let accepted = serve_echo(socket.listen(64).unwrap());
    within(
        "roundtrip to revived backend",
        roundtrip(&good, LOCALHOST, sidecar.addr),
    )
    .await
    .expect("the sidecar must serve once the storage port is up");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(sidecar.stop().await.cut, 0);
}
