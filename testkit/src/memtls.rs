//! TLS in memory, no sockets (crypto and protocol work only, for the criterion benches): ringseal's
//! own server configuration (the verifier it really runs), a full mutual handshake, and records
//! pumped from one end to the other.

use std::io::{Read, Write};
use std::sync::Arc;

use ringseal::pki::Identity;
use ringseal::tls::LoadedTls;
use ringseal::tls::material::TlsMaterial;
use ringseal::tls::verify::{AllowList, PeerPolicy};
use rustls::pki_types::ServerName;
use rustls::{
    ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection,
    SupportedCipherSuite,
};

use crate::Pki;

/// The provider's suite with this IANA name.
pub fn suite(iana: &str) -> SupportedCipherSuite {
    crate::client::find_suite(iana).unwrap_or_else(|| panic!("{iana} not in the provider"))
}

impl Pki {
    /// ringseal's TLS settings presenting the node certificate and trusting the CA.
    pub fn settings(&self) -> LoadedTls {
        self.settings_for(&self.node)
    }

    /// As [`Pki::settings`], presenting `id` (issued by this CA).
    pub fn settings_for(&self, id: &Identity) -> LoadedTls {
        LoadedTls::from_material(
            TlsMaterial::from_der(
                vec![id.cert_der.clone()],
                id.key(),
                vec![self.ca.cert_der.clone()],
                None,
            )
            .unwrap(),
        )
    }

    /// ringseal's inbound server configuration (client certificate required, its verifier),
    /// restricted to `suite`.
    pub fn server(&self, suite: SupportedCipherSuite) -> Arc<ServerConfig> {
        let mut settings = self.settings();
        settings.versions = vec![suite.version()];
        settings.suites = vec![suite];
        let provider = ringseal::tls::provider_for(&settings);
        let verifier = ringseal::tls::client_verifier(
            &settings,
            provider.clone(),
            Arc::new(PeerPolicy {
                allow: AllowList::default(),
            }),
        );
        ringseal::tls::server_config(&settings, provider, Arc::new(verifier))
    }
}

/// A full mutual handshake, in memory; returns both ends, ready for data.
pub fn handshake(
    client: &Arc<ClientConfig>,
    server: &Arc<ServerConfig>,
) -> (Connection, Connection) {
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let mut c = Connection::Client(ClientConnection::new(client.clone(), name).unwrap());
    let mut s = Connection::Server(ServerConnection::new(server.clone()).unwrap());
    let mut buf = Vec::with_capacity(16 * 1024);
    while c.is_handshaking() || s.is_handshaking() {
        flight(&mut c, &mut s, &mut buf);
        flight(&mut s, &mut c, &mut buf);
    }
    (c, s)
}

/// Everything `tx` has to send, delivered to `rx` and processed. `read_tls` takes at most a few KiB
/// per call (an RSA certificate flight is more), and must not see an empty read, which means EOF.
fn flight(tx: &mut Connection, rx: &mut Connection, buf: &mut Vec<u8>) {
    buf.clear();
    while tx.wants_write() {
        tx.write_tls(buf).unwrap();
    }
    let mut rd = buf.as_slice();
    while !rd.is_empty() {
        rx.read_tls(&mut rd).unwrap();
        rx.process_new_packets().unwrap();
    }
}

/// Moves `data` from `tx` to `rx` through TLS records (encrypt, then decrypt), with rustls' default
/// buffer limits, as a relay would.
pub fn pump(
    tx: &mut Connection,
    rx: &mut Connection,
    data: &[u8],
    wire: &mut Vec<u8>,
    sink: &mut [u8],
) {
    let (mut sent, mut got) = (0, 0);
    while got < data.len() {
        if sent < data.len() {
            sent += tx.writer().write(&data[sent..]).unwrap();
        }
        wire.clear();
        while tx.wants_write() {
            tx.write_tls(wire).unwrap();
        }
        let mut rd = wire.as_slice();
        while !rd.is_empty() {
            rx.read_tls(&mut rd).unwrap();
            rx.process_new_packets().unwrap();
            loop {
                match rx.reader().read(sink) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("reading plaintext: {e}"),
                }
            }
        }
    }
    assert_eq!(got, data.len());
}
