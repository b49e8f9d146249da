//! TLS clients of a sidecar: presenting a node certificate or none, or restricted to one suite and
//! one key exchange group (benches, `ringseal bench`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ringseal::pki::Identity;
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore, SupportedCipherSuite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::{LOCALHOST, Pki};

/// A client config presenting `id` (or no certificate) and trusting `roots`.
pub fn client(roots: Arc<RootCertStore>, id: Option<&Identity>) -> Arc<ClientConfig> {
    let b = ClientConfig::builder_with_provider(ringseal::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match id {
        Some(id) => b
            .with_client_auth_cert(vec![id.cert_der.clone()], id.key())
            .unwrap(),
        None => b.with_no_client_auth(),
    })
}

/// The provider's suite with this IANA name.
pub fn find_suite(iana: &str) -> Option<SupportedCipherSuite> {
    ringseal::tls::provider()
        .cipher_suites
        .iter()
        .copied()
        .find(|s| ringseal::tls::suites::iana_name(*s) == iana)
}

impl Pki {
    /// A client presenting the node certificate, offering only `suite` (and its protocol version)
    /// and `group`, with no resumption: every connection a full mutual handshake.
    pub fn restricted_client(
        &self,
        suite: SupportedCipherSuite,
        group: &'static dyn SupportedKxGroup,
    ) -> Result<Arc<ClientConfig>, rustls::Error> {
        let provider = CryptoProvider {
            cipher_suites: vec![suite],
            kx_groups: vec![group],
            ..(*ringseal::tls::provider()).clone()
        };
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.cert_der.clone())?;
        let mut c = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[suite.version()])?
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![self.node.cert_der.clone()], self.node.key())?;
        c.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(c))
    }
}

pub type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// Connects from `from` (any loopback address) and completes the client side of the handshake.
pub async fn connect_from(
    config: &Arc<ClientConfig>,
    from: IpAddr,
    to: SocketAddr,
) -> std::io::Result<Tls> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let tcp = socket.connect(to).await?;
    tokio_rustls::TlsConnector::from(config.clone())
        .connect(ServerName::IpAddress(LOCALHOST.into()), tcp)
        .await
}

pub async fn connect(config: &Arc<ClientConfig>, to: SocketAddr) -> std::io::Result<Tls> {
    connect_from(config, LOCALHOST, to).await
}

/// Sends `msg` and reads the echo: proves the connection is fully accepted. With TLS 1.3 the server's
/// verdict on our certificate only shows here, after the client-side handshake has finished.
pub async fn echo(tls: &mut Tls, msg: &[u8]) -> std::io::Result<()> {
    tls.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    tls.read_exact(&mut back).await?;
    assert_eq!(back, msg);
    Ok(())
}

/// Connects, handshakes and echoes one message; `Err` if any step is refused.
pub async fn roundtrip(
    config: &Arc<ClientConfig>,
    from: IpAddr,
    to: SocketAddr,
) -> std::io::Result<()> {
    let mut tls = connect_from(config, from, to).await?;
    echo(&mut tls, b"hello ring").await?;
    tls.shutdown().await
}
