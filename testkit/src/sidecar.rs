//! In-process sidecars on 127.0.0.1:0 (`Server::bind` + `serve`) and the configs they start from.

use std::net::SocketAddr;
use std::path::PathBuf;

use ringseal::config::{Config, Inbound, ListenerName};
use ringseal::pki::Identity;
use ringseal::tls::LoadedTls;
use ringseal::tls::verify::AllowList;
use ringseal::{Drained, Server};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{LOCALHOST, Pki};

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
    let mut config = Config::new(pki.settings_for(id));
    config.inbound.push(Inbound {
        name: ListenerName::default_for(true, 0),
        tls: config.tls.clone(),
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
