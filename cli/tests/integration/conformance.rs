//! TLS record-layer conformance of the inbound handshake, with hand-built records: every refusal sends
//! the alert RFC 8446 asks for and then ends with a FIN (the peer reads the alert, then EOF, never a
//! reset), and a refused chain is counted under a reason that says why.

use ringseal_testkit::*;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HANDSHAKE: u8 = 22;
const ALERT: u8 = 21;
const APPLICATION_DATA: u8 = 23;
const UNEXPECTED_MESSAGE: u8 = 10;
const RECORD_OVERFLOW: u8 = 22;
const DECODE_ERROR: u8 = 50;

async fn start(pki: &Pki) -> (Backend, Sidecar) {
    let backend = Backend::start(Mode::Echo).await;
    let sidecar = Sidecar::start(config(pki, backend.addr)).await;
    (backend, sidecar)
}

/// The first flight of a rustls client (TLS 1.2 only with `tls12`): its ClientHello records.
fn first_flight(pki: &Pki, tls12: bool) -> Vec<u8> {
    let cfg = if tls12 {
        let b = ClientConfig::builder_with_provider(ringseal::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(pki.roots());
        Arc::new(
            b.with_client_auth_cert(vec![pki.node.cert_der.clone()], pki.node.key())
                .unwrap(),
        )
    } else {
        client(pki.roots(), Some(&pki.node))
    };
    let mut conn =
        rustls::ClientConnection::new(cfg, ServerName::IpAddress(LOCALHOST.into())).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// The handshake message(s) carried by `records` (record headers removed).
fn unframe(mut records: &[u8]) -> Vec<u8> {
    let mut msg = Vec::new();
    while records.len() >= 5 {
        let len = u16::from_be_bytes([records[3], records[4]]) as usize;
        msg.extend_from_slice(&records[5..5 + len]);
        records = &records[5 + len..];
    }
    msg
}

/// `payload` as records of `typ`, at most `max` bytes each.
fn frame(typ: u8, payload: &[u8], max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in payload.chunks(max) {
        out.extend_from_slice(&[typ, 3, 3]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// A ClientHello handshake message grown by a padding extension (RFC 7685) of `pad` bytes: still a
/// valid ClientHello, only larger.
fn padded_hello(hello: &[u8], pad: usize) -> Vec<u8> {
    assert_eq!(hello[0], 1, "not a ClientHello");
    let body = &hello[4..];
    // legacy_version, random, session id, cipher suites, compression methods, then extensions.
    let mut at = 2 + 32;
    at += 1 + body[at] as usize;
    at += 2 + u16::from_be_bytes([body[at], body[at + 1]]) as usize;
    at += 1 + body[at] as usize;
    let ext_len = u16::from_be_bytes([body[at], body[at + 1]]) as usize;
    assert!(
        ext_len + 4 + pad <= 0xffff,
        "the extensions block holds at most 64 KiB"
    );
    let mut exts = body[at + 2..at + 2 + ext_len].to_vec();
    // Before the last extension: a pre_shared_key extension must stay last.
    exts.splice(0..0, [&[0, 21][..], &(pad as u16).to_be_bytes()].concat());
    exts.splice(4..4, std::iter::repeat_n(0u8, pad));
    let mut new_body = body[..at].to_vec();
    new_body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    new_body.extend_from_slice(&exts);
    let mut msg = vec![1];
    msg.extend_from_slice(&(new_body.len() as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(&new_body);
    msg
}

/// Everything the sidecar sends until the connection ends, and how it ended: `Ok(())` for a FIN,
/// the error (a reset) otherwise.
async fn until_end(s: &mut TcpStream) -> (Vec<u8>, io::Result<()>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => return (got, Ok(())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (got, Err(e)),
        }
    }
}

/// The description of the first plaintext alert among the records in `got`.
fn alert_in(got: &[u8]) -> Option<u8> {
    let mut rest = got;
    while rest.len() >= 5 {
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        if rest[0] == ALERT && len == 2 && rest.len() >= 7 {
            return Some(rest[6]);
        }
        rest = rest.get(5 + len..)?;
    }
    None
}

/// Sends `bytes` on a fresh connection and returns what came back and how the connection ended.
async fn exchange(to: SocketAddr, bytes: &[u8]) -> (Vec<u8>, io::Result<()>) {
    let mut s = TcpStream::connect(to).await.unwrap();
    s.write_all(bytes).await.unwrap();
    within("the sidecar's answer", until_end(&mut s)).await
}

/// The refusal is `alert`, followed by a FIN: a reset would mean the sidecar closed with our bytes
/// unread, and could destroy the alert before a peer reads it.
fn assert_alert_then_fin(what: &str, (got, end): (Vec<u8>, io::Result<()>), alert: u8) {
    assert_eq!(
        alert_in(&got),
        Some(alert),
        "{what}: expected alert {alert}, got {} bytes starting {:02x?}",
        got.len(),
        &got[..got.len().min(16)]
    );
    if let Err(e) = end {
        panic!(
            "{what}: the alert was followed by {e} ({:?}), not a FIN",
            e.kind()
        );
    }
}

#[tokio::test]
async fn client_hello_beyond_64_kib_gets_an_alert_then_a_fin() {
    let pki = Pki::new();
    let (backend, sidecar) = start(&pki).await;
    let hello = unframe(&first_flight(&pki, false));
    // rustls joins handshake messages of up to 64 KiB: one announced beyond (decode_error from
    // rustls as soon as it sees the length) ...
    let mut beyond = vec![1, 0x01, 0x11, 0x70];
    beyond.resize(4 + 0x01_1170, 0);
    // ... and a valid one of exactly 64 KiB - 1, whose records with their headers fill rustls's
    // buffer before it is whole (the driver's own decode_error).
    let within_limit = padded_hello(&hello, 65_535 - hello.len() - 4);
    for big in [beyond, within_limit] {
        let what = format!("ClientHello of {} bytes", big.len());
        let answer = exchange(sidecar.addr, &frame(HANDSHAKE, &big, 16 * 1024)).await;
        assert_alert_then_fin(&what, answer, DECODE_ERROR);
    }
    assert_eq!(backend.accepted(), 0);
}

#[tokio::test]
async fn plaintext_record_beyond_2_14_bytes_gets_record_overflow() {
    let pki = Pki::new();
    let (backend, sidecar) = start(&pki).await;
    let hello = unframe(&first_flight(&pki, false));
    // A valid ClientHello in one record of 2^14 + 1 bytes: rustls would take it (it allows 2^14 +
    // 2048 for every record); RFC 8446 5.1 says record_overflow.
    let big = padded_hello(&hello, 16 * 1024 + 1 - hello.len() - 4);
    assert_eq!(big.len(), 16 * 1024 + 1);
    let answer = exchange(sidecar.addr, &frame(HANDSHAKE, &big, big.len())).await;
    assert_alert_then_fin("2^14 + 1 byte ClientHello record", answer, RECORD_OVERFLOW);
    // Exactly 2^14 is allowed: the sidecar answers with its ServerHello.
    let fits = padded_hello(&hello, 16 * 1024 - hello.len() - 4);
    let mut s = TcpStream::connect(sidecar.addr).await.unwrap();
    s.write_all(&frame(HANDSHAKE, &fits, fits.len()))
        .await
        .unwrap();
    let mut first = [0u8; 1];
    within("ServerHello", s.read_exact(&mut first))
        .await
        .unwrap();
    assert_eq!(
        first[0], HANDSHAKE,
        "a 2^14-byte ClientHello record was refused"
    );
    assert_eq!(backend.accepted(), 0);
}

#[tokio::test]
async fn plaintext_record_header_beyond_2_14_bytes_is_refused_at_once() {
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let mut cfg = config(&pki, backend.addr);
    // An hour: an answer within `within`'s bound is the refusal, not the handshake timeout.
    cfg.limits.handshake_timeout = std::time::Duration::from_secs(3600);
    let sidecar = Sidecar::start(cfg).await;
    // The header of a ClientHello record announcing 2^14 + 1 bytes and the start of its body, alone
    // in a segment: refused on the header, as when it follows a whole record in the same segment,
    // without waiting for a body that may never come (found by the record_framing fuzz target).
    let answer = exchange(sidecar.addr, &[HANDSHAKE, 3, 1, 0x40, 0x01, 1, 0, 0x3f]).await;
    assert_alert_then_fin("a 2^14 + 1 byte record header", answer, RECORD_OVERFLOW);
    assert_eq!(backend.accepted(), 0);
}

#[tokio::test]
async fn application_data_during_the_handshake_gets_unexpected_message() {
    let pki = Pki::new();
    let (backend, sidecar) = start(&pki).await;
    let app_data = frame(APPLICATION_DATA, b"too early", 1024);
    let flight = first_flight(&pki, true);
    // After the whole ClientHello (rustls's own alert) ...
    let after = [flight.clone(), app_data.clone()].concat();
    assert_alert_then_fin(
        "application data after the ClientHello",
        exchange(sidecar.addr, &after).await,
        UNEXPECTED_MESSAGE,
    );
    // ... and between two fragments of it (RFC 8446 5.1), which rustls refuses without an alert.
    let hello = unframe(&flight);
    let half = hello.len() / 2;
    let between = [
        frame(HANDSHAKE, &hello[..half], half),
        app_data,
        frame(HANDSHAKE, &hello[half..], hello.len()),
    ]
    .concat();
    assert_alert_then_fin(
        "application data inside a fragmented ClientHello",
        exchange(sidecar.addr, &between).await,
        UNEXPECTED_MESSAGE,
    );
    assert_eq!(backend.accepted(), 0);
}

/// A root CA and a line of intermediate CAs below it, each signed by the one above.
struct Ladder {
    root_pem: String,
    /// Top down: `certs[0]` is signed by the root.
    certs: Vec<CertificateDer<'static>>,
    issuers: Vec<rcgen::Issuer<'static, rcgen::KeyPair>>,
}

impl Ladder {
    fn new(intermediates: usize) -> Self {
        use rcgen::KeyUsagePurpose::{CrlSign, KeyCertSign};
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_params = |name: String| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name.push(DnType::CommonName, name);
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyCertSign, CrlSign];
            p
        };
        let key = KeyPair::generate().unwrap();
        let params = ca_params("Ladder Root".into());
        let root_pem = params.self_signed(&key).unwrap().pem();
        let root = Issuer::new(params, key);
        let (mut certs, mut issuers) = (Vec::new(), Vec::new());
        for i in 0..intermediates {
            let key = KeyPair::generate().unwrap();
            let params = ca_params(format!("Ladder Intermediate {i}"));
            let above = issuers.last().unwrap_or(&root);
            certs.push(params.signed_by(&key, above).unwrap().der().clone());
            issuers.push(Issuer::new(params, key));
        }
        Self {
            root_pem,
            certs,
            issuers,
        }
    }

    /// A client certificate `depth` intermediates below the root: the chain it presents (leaf
    /// first, root left out) and its key.
    fn leaf(&self, depth: usize) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, SanType};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("node at depth {depth}"));
        params.subject_alt_names = vec![SanType::IpAddress(LOCALHOST)];
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let leaf = params.signed_by(&key, &self.issuers[depth - 1]).unwrap();
        let mut chain = vec![leaf.der().clone()];
        chain.extend(self.certs[..depth].iter().rev().cloned());
        (chain, PrivateKeyDer::Pkcs8(key.serialize_der().into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_deeper_than_webpki_follows_is_refused_as_chain_too_deep() {
    use ringseal_testkit::process::{Proc, address_after};
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    pki.write(dir.path());
    let ladder = Ladder::new(7);
    std::fs::write(dir.path().join("ca.crt"), &ladder.root_pem).unwrap();
    let config = dir.path().join("ringseal.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert = \"node.crt\"\nkey = \"node.key\"\nca = \"ca.crt\"\n\n\
             [[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"{}\"\n",
            backend.addr
        ),
    )
    .unwrap();
    let mut proc = Proc::spawn(&[], &config, dir);
    let addr = address_after(&proc.wait_for("listener on"), "listener on ");
    let presenting = |depth| {
        let (chain, key) = ladder.leaf(depth);
        let b = ClientConfig::builder_with_provider(ringseal::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(pki.roots());
        Arc::new(b.with_client_auth_cert(chain, key).unwrap())
    };
    // Six intermediates are as deep as webpki goes: accepted, so the ladder itself is sound ...
    within(
        "6 intermediates",
        roundtrip(&presenting(6), LOCALHOST, addr),
    )
    .await
    .expect("a chain of 6 intermediates must be accepted");
    // ... a seventh is refused, and the refusal says why.
    within(
        "7 intermediates",
        roundtrip(&presenting(7), LOCALHOST, addr),
    )
    .await
    .expect_err("the sidecar relayed for a chain it must refuse");
    let line = proc.wait_for("refused 127.0.0.1");
    assert!(line.contains("chain_too_deep"), "{line}");
    assert_eq!(backend.accepted(), 1);
}

/// RFC 8446 4.6.3 lets a peer answer several KeyUpdate requests with one KeyUpdate, but the answers
/// must not depend on how the requests happened to arrive: here they arrive in one segment, and each
/// gets its own (as OpenSSL does and tlsfuzzer expects by default).
#[tokio::test]
async fn every_key_update_request_gets_its_own_answer() {
    use std::io::Write;
    let pki = Pki::new();
    let (_backend, sidecar) = start(&pki).await;
    let c = client(pki.roots(), Some(&pki.node));
    let tls = within("handshake", connect(&c, sidecar.addr))
        .await
        .unwrap();
    let (mut tcp, mut conn) = tls.into_inner();
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    // rustls (either side) takes at most 32 requests without application data between them.
    const REQUESTS: usize = 32;
    for _ in 0..REQUESTS {
        conn.refresh_traffic_keys().unwrap();
    }
    conn.writer().write_all(b"ping").unwrap();
    let mut flight = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut flight).unwrap();
    }
    tcp.write_all(&flight).await.unwrap();
    // A KeyUpdate record carries 5 bytes of message, 1 of content type and a 16-byte tag; the echo
    // of "ping" 4 + 1 + 16.
    let mut answers = 0;
    loop {
        let mut header = [0u8; 5];
        within("the next record", tcp.read_exact(&mut header))
            .await
            .unwrap();
        let mut record = header.to_vec();
        record.resize(5 + u16::from_be_bytes([header[3], header[4]]) as usize, 0);
        tcp.read_exact(&mut record[5..]).await.unwrap();
        conn.read_tls(&mut &record[..]).unwrap();
        conn.process_new_packets().unwrap();
        match record.len() - 5 {
            22 => answers += 1,
            21 => break,
            _ => {}
        }
    }
    let mut echo = [0u8; 4];
    std::io::Read::read_exact(&mut conn.reader(), &mut echo).unwrap();
    assert_eq!(&echo, b"ping");
    assert_eq!(answers, REQUESTS, "KeyUpdate answers before the echo");
}

/// The outbound side refusing a server (a certificate from another CA): its alert reaches the server,
/// then a FIN. The rest of the server's flight, unread when the refusal came, is read and discarded
/// first: closing with it unread would send a reset, which can destroy the alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_refusal_sends_its_alert_then_a_fin() {
    use ringseal::config::{Outbound, Target};
    let pki = Pki::new();
    let stranger = Pki::new_named("OtherCluster");
    let listener = tokio::net::TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let upstream = listener.local_addr().unwrap();
    // A TLS server driven by hand: it answers the ClientHello with its whole flight at once, then
    // records what comes back and how the connection ends.
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(ringseal::tls::provider())
            .with_protocol_versions(rustls::ALL_VERSIONS)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![stranger.node.cert_der.clone()], stranger.node.key())
            .unwrap();
        let mut conn = rustls::ServerConnection::new(Arc::new(cfg)).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        while !conn.wants_write() {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "no ClientHello");
            conn.read_tls(&mut &buf[..n]).unwrap();
            conn.process_new_packets().unwrap();
        }
        let mut flight = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut flight).unwrap();
        }
        s.write_all(&flight).await.unwrap();
        let (got, end) = until_end(&mut s).await;
        let mut rest = &got[..];
        let mut verdict = None;
        while !rest.is_empty() && verdict.is_none() {
            if conn.read_tls(&mut rest).unwrap() == 0 {
                break;
            }
            verdict = conn.process_new_packets().err();
        }
        (verdict, end)
    });
    let mut c = config(&pki, upstream);
    c.inbound.clear();
    c.outbound.push(Outbound {
        name: ringseal::config::ListenerName::default_for(false, 0),
        tls: c.tls.clone(),
        listen: SocketAddr::new(LOCALHOST, 0),
        target: Target::Fixed(upstream),
        require_endpoint_verification: false,
        allow: ringseal::tls::verify::AllowList::default(),
        mode: ringseal::config::Mode::Strict,
        plaintext_fallback: None,
        bind_ip: None,
    });
    let (out_addr, _outbound) = start_out(c).await;
    let _local = TcpStream::connect(out_addr).await.unwrap();
    let (verdict, end) = within("the server's view", server).await.unwrap();
    assert!(
        matches!(verdict, Some(rustls::Error::AlertReceived(_))),
        "the server got no alert: {verdict:?}"
    );
    if let Err(e) = end {
        panic!("the alert was followed by {e} ({:?}), not a FIN", e.kind());
    }
}
