//! Shared test harness: PKI generated with rcgen at test time, in-process sidecars on `127.0.0.1:0`,
//! recording backends, TLS clients, and the real binary.
#![allow(dead_code)]

pub mod mutate;
pub mod process;
pub mod stream;
pub mod tools;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringseal::config::{Config, Inbound};
use ringseal::pki::{Ca, Identity, NodeSpec};
use ringseal::tls::LoadedTls;
use ringseal::tls::material::TlsMaterial;
use ringseal::tls::verify::AllowList;
use ringseal::{Drained, Server};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A cluster CA and a node identity for 127.0.0.1.
pub struct Pki {
    pub ca: Ca,
    pub node: Identity,
}

impl Pki {
    pub fn new() -> Self {
        Self::new_named("TestCluster")
    }

    /// A CA whose cluster name (OU) is `cluster`, and node1 at 127.0.0.1.
    pub fn new_named(cluster: &str) -> Self {
        let ca = Ca::new(cluster).unwrap();
        let node = ca.issue(&NodeSpec::new("node1", &[LOCALHOST])).unwrap();
        Self { ca, node }
    }

    pub fn issue(&self, name: &str, ips: &[IpAddr]) -> Identity {
        self.ca.issue(&NodeSpec::new(name, ips)).unwrap()
    }

    pub fn roots(&self) -> Arc<RootCertStore> {
        let mut r = RootCertStore::empty();
        r.add(self.ca.cert_der.clone()).unwrap();
        Arc::new(r)
    }

    /// Writes node.crt, node.key and ca.crt into `dir`.
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let (c, k, a) = (
            dir.join("node.crt"),
            dir.join("node.key"),
            dir.join("ca.crt"),
        );
        std::fs::write(&c, &self.node.cert_pem).unwrap();
        std::fs::write(&k, &self.node.key_pem).unwrap();
        std::fs::write(&a, &self.ca.cert_pem).unwrap();
        (c, k, a)
    }
}

/// The `[tls]` table of a config written next to the files of [`Pki::write`].
pub const TLS_TABLE: &str = "[tls]\ncert = \"node.crt\"\nkey = \"node.key\"\nca = \"ca.crt\"\n";

/// Writes `pki`'s files and `ringseal.toml` (`before` the `[tls]` table, `after` it) into a new
/// directory; returns the directory (kept alive by the caller) and the config's path.
pub fn write_config(pki: &Pki, before: &str, after: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    pki.write(dir.path());
    let config = dir.path().join("ringseal.toml");
    std::fs::write(&config, format!("{before}{TLS_TABLE}\n{after}")).unwrap();
    (dir, config)
}

/// A runtime config for one inbound listener on 127.0.0.1:0 in front of `forward`.
pub fn config(pki: &Pki, forward: SocketAddr) -> Config<LoadedTls> {
    config_with(pki, &pki.node, forward)
}

/// As [`config`], presenting `id` (issued by `pki.ca`) instead of `pki.node`.
pub fn config_with(pki: &Pki, id: &Identity, forward: SocketAddr) -> Config<LoadedTls> {
    let material = TlsMaterial::from_der(
        vec![id.cert_der.clone()],
        id.key(),
        vec![pki.ca.cert_der.clone()],
        None,
    )
    .unwrap();
    let mut config = Config::new(LoadedTls::from_material(material));
    config.inbound.push(Inbound {
        listen: SocketAddr::new(LOCALHOST, 0),
        forward,
        require_endpoint_verification: false,
        allow: AllowList::default(),
        mode: ringseal::config::Mode::Strict,
    });
    config
}

/// An in-process sidecar.
pub struct Sidecar {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Drained>,
}

impl Sidecar {
    /// An in-process sidecar whose first inbound listener is `addr`.
    pub async fn start(config: Config<LoadedTls>) -> Self {
        let server = Server::bind(config).await.unwrap();
        let addr = server.inbound_addrs()[0];
        Self::serve(server, addr)
    }

    /// An in-process sidecar whose first outbound listener is `addr`.
    pub async fn start_outbound(config: Config<LoadedTls>) -> Self {
        let server = Server::bind(config).await.unwrap();
        let addr = server.outbound_addrs()[0];
        Self::serve(server, addr)
    }

    fn serve(server: Server, addr: SocketAddr) -> Self {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.serve(shutdown.clone()));
        Self {
            addr,
            shutdown,
            task,
        }
    }

    pub async fn stop(self) -> Drained {
        self.shutdown.cancel();
        self.task.await.unwrap()
    }
}

/// Starts an outbound sidecar; returns its listen address and the sidecar.
pub async fn start_out(config: Config<LoadedTls>) -> (SocketAddr, Sidecar) {
    let sidecar = Sidecar::start_outbound(config).await;
    (sidecar.addr, sidecar)
}

/// What a backend does with each connection.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Echo,
    /// Read everything, keep it, then close.
    Sink,
}

/// A fake storage port that counts connections and records what each one received.
pub struct Backend {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    pub received: Arc<Mutex<Vec<Vec<u8>>>>,
    /// One entry per finished connection: how its read side ended ("eof" or the error kind).
    pub endings: Arc<Mutex<Vec<String>>>,
}

impl Backend {
    pub async fn start(mode: Mode) -> Self {
        let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let endings = Arc::new(Mutex::new(Vec::new()));
        let (a, r, e) = (accepted.clone(), received.clone(), endings.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let (r, e) = (r.clone(), e.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut got = Vec::new();
                    let ending = loop {
                        match s.read(&mut buf).await {
                            Ok(0) => break "eof".to_string(),
                            Ok(n) => {
                                got.extend_from_slice(&buf[..n]);
                                if mode == Mode::Echo && s.write_all(&buf[..n]).await.is_err() {
                                    break "write error".to_string();
                                }
                            }
                            Err(err) => break format!("{:?}", err.kind()),
                        }
                    };
                    r.lock().unwrap().push(got);
                    e.lock().unwrap().push(ending);
                    let _ = s.shutdown().await;
                });
            }
        });
        Self {
            addr,
            accepted,
            received,
            endings,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Waits until `n` connections have finished on the backend (bounded, to fail rather than hang).
    pub async fn wait_finished(&self, n: usize) {
        for _ in 0..1000 {
            if self.endings.lock().unwrap().len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "backend: expected {n} finished connections, have {}",
            self.endings.lock().unwrap().len()
        );
    }
}

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

/// Bounds a step that must finish; a hang fails the test instead of blocking CI.
pub async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: did not finish within 30s"))
}

/// `GET /metrics` from a ringseal metrics endpoint (plain HTTP/1.1, connection closed after).
pub fn scrape(addr: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The value of the first sample line starting with `name_and_labels` (0 when absent).
pub fn sample(exposition: &str, name_and_labels: &str) -> f64 {
    exposition
        .lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The sum of the samples of `name` that carry every label in `labels` (whatever their order).
pub fn samples(exposition: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    exposition
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
