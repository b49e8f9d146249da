//! A peer's TLS port played in process: a rustls server presenting one identity and requiring a
//! client certificate from its own CA (webpki's verifier, not ringseal's), echoing what it reads and
//! recording which client certificate and protocol each connection came with. For outbound tests
//! that must see the TLS side from the peer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringseal::pki::Identity;
use ringseal::tls::x509::CertInfo;
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{LOCALHOST, Pki};

/// One connection whose handshake the peer completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The subject of the client's certificate.
    pub subject: String,
    /// "TLSv1.2" or "TLSv1.3".
    pub protocol: &'static str,
}

/// Stops accepting when dropped.
pub struct TlsPeer {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Handshakes that failed (refused by either side): nothing of theirs was read as data.
    failed: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl TlsPeer {
    /// A peer on 127.0.0.1:0 presenting `id` and trusting client certificates of `pki`'s CA only;
    /// TLS 1.2 and 1.3.
    pub async fn start(pki: &Pki, id: &Identity) -> Self {
        let provider = ringseal::tls::provider();
        let verifier = WebPkiClientVerifier::builder_with_provider(pki.roots(), provider.clone())
            .build()
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![id.cert_der.clone()], id.key())
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        let peer = Self {
            addr: listener.local_addr().unwrap(),
            seen: Arc::default(),
            failed: Arc::default(),
            stop: CancellationToken::new(),
        };
        let (seen, failed, halt) = (peer.seen.clone(), peer.failed.clone(), peer.stop.clone());
        tokio::spawn(async move {
            loop {
                let (conn, _) = tokio::select! {
                    _ = halt.cancelled() => return,
                    a = listener.accept() => a.unwrap(),
                };
                let (acceptor, seen, failed) = (acceptor.clone(), seen.clone(), failed.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(conn).await else {
                        failed.fetch_add(1, Ordering::SeqCst);
                        return;
                    };
                    let session = tls.get_ref().1;
                    let cert = &session.peer_certificates().unwrap()[0];
                    seen.lock().unwrap().push(Seen {
                        subject: CertInfo::parse(cert).unwrap().subject,
                        protocol: ringseal::tls::suites::protocol_name(
                            session.protocol_version().unwrap(),
                        ),
                    });
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n @ 1..) = tls.read(&mut buf).await {
                        if tls.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                    let _ = tls.shutdown().await;
                });
            }
        });
        peer
    }

    /// The connections whose handshake completed, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Handshakes that failed so far.
    pub fn failed(&self) -> usize {
        self.failed.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until `n` handshakes have failed.
    pub async fn wait_failed(&self, n: usize) {
        for _ in 0..1000 {
            if self.failed() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "TLS peer: expected {n} failed handshakes, have {}",
            self.failed()
        );
    }
}

impl Drop for TlsPeer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
