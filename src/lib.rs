//! ringseal: mutual TLS for Apache Cassandra's internode traffic, as a sidecar.
//!
//! The path a byte takes, and the module that owns each step:
//!
//! * [`config`]: the TOML file -> a validated runtime [`config::Config`] that names files, secrets and
//!   settings but reads no key material; [`load`] then loads what `[tls]` names
//!   ([`tls::TlsSettings::load`]). Every file an operator names is read through `files` (regular files
//!   only, bounded per kind).
//! * [`tls`]: our identity and trust ([`tls::material`]) from PEM files or Java keystores
//!   ([`tls::keystore`], JKS in [`tls::jks`]), suite/protocol names ([`tls::suites`]), peer verification
//!   on webpki + endpoint verification + allow-list ([`tls::verify`]) with recently verified chains
//!   reused ([`tls::chain_cache`]), X.509 v1 opt-in ([`tls::v1`]).
//! * `listener`: accept, admit within the listener's budgets (`listener::admission`), sniff,
//!   handshake under a deadline, verify, then connect the storage port (`listener::inbound`); or
//!   accept the local node's plaintext and dial a peer's sidecar with mutual TLS
//!   (`listener::outbound`).
//! * `relay`: the only code that moves bytes (kTLS + splice, user-space rustls, plaintext splice);
//!   half-close, resets and deadlines. `sys` holds the kernel interfaces it needs (the crate's only
//!   `unsafe`).
//! * [`metrics`]: every metric name and label value; `admin` serves them (`/metrics`, `/healthz`,
//!   `/readyz`) and the sidecar's state (`/status`) when `[metrics]` is configured.
//! * [`events`]: what a service manager hears (ready, reloading, reloaded, stopping, a status line).
//! * [`pki`]: certificates for `ringseal certs` (cluster CA, node certificates, CSR signing), the demo
//!   and the tests.
//!
//! [`Server::bind`] then [`Server::serve`] (or [`run`]) is the whole sidecar. The `ringseal` command and
//! its tools (`check`, `rules`, `certs`, `demo`, `bench`) are the `ringseal-cli` crate in `cli/`.

#![deny(unsafe_code)]

pub(crate) mod admin;
pub mod config;
pub mod events;
pub(crate) mod files;
/// For the fuzz targets in `fuzz/` only.
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod listener;
pub mod metrics;
pub mod pki;
pub(crate) mod relay;
pub(crate) mod reload;
pub mod rules;
mod runtime;
mod secret;
#[allow(unsafe_code)]
mod sys;
pub mod tls;

pub use admin::MAX_CONNECTIONS as ADMIN_MAX_CONNECTIONS;
pub use listener::BindError;
pub use relay::{KtlsSupport, support as ktls_support};
pub use runtime::{LoadError, StartError, describe, diagnose, load, load_tls};

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use config::Config;
use listener::inbound::InboundListener;
use listener::outbound::OutboundListener;
use tls::LoadedTls;

/// The git commit the binary was built from, for `/status` (`build.git_commit`). The `ringseal`
/// binary sets it from its build script; the first call wins.
pub fn set_git_commit(commit: &'static str) {
    let _ = admin::status::GIT_COMMIT.set(commit);
}

/// A sidecar with its listeners bound, ready to serve.
pub struct Server {
    config: Config<LoadedTls>,
    inbound: Vec<InboundListener>,
    outbound: Vec<OutboundListener>,
    /// `[metrics]`: bound with the listeners, so a taken port fails start-up like any other.
    admin: Option<admin::AdminEndpoint>,
    reload: Arc<tokio::sync::Notify>,
    events: Arc<dyn events::Events>,
}

/// What shutdown did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Connections still open when `shutdown_grace` ran out, cut then.
    pub cut: usize,
}

impl Server {
    /// Binds every listener (nothing is accepted until [`Server::serve`]).
    pub async fn bind(config: Config<LoadedTls>) -> Result<Self, BindError> {
        let mut inbound = Vec::with_capacity(config.inbound.len());
        for (i, l) in config.inbound.iter().enumerate() {
            let log = config.logging.connections;
            let bound = InboundListener::bind(l, &config.limits, config.offload, log).await;
            inbound.push(bound.map_err(|e| BindError::new(format!("inbound[{i}]"), l.listen, e))?);
        }
        let mut outbound = Vec::with_capacity(config.outbound.len());
        // One memory of the peers that have TLS for all outbound listeners (permissive mode never
        // downgrades them); its state file is read only when there is an outbound listener.
        let mut tls_peers = None;
        for (i, l) in config.outbound.iter().enumerate() {
            let peers = tls_peers
                .get_or_insert_with(|| {
                    Arc::new(listener::tls_peers::TlsPeers::load(&config.permissive))
                })
                .clone();
            let (limits, log) = (&config.limits, config.logging.connections);
            let bound = OutboundListener::bind(l, limits, config.offload, peers, log).await;
            outbound
                .push(bound.map_err(|e| BindError::new(format!("outbound[{i}]"), l.listen, e))?);
        }
        let admin = match &config.metrics {
            Some(m) => Some(admin::AdminEndpoint::bind(m.listen).await?),
            None => None,
        };
        Ok(Self {
            config,
            inbound,
            outbound,
            admin,
            reload: Arc::new(tokio::sync::Notify::new()),
            events: Arc::new(events::NoEvents),
        })
    }

    /// Tells `events` when the sidecar is ready, reloads and stops (the `ringseal` command: sd_notify).
    pub fn with_events(mut self, events: Arc<dyn events::Events>) -> Self {
        self.events = events;
        self
    }

    /// Notify it to reload the config file now (what SIGHUP does); without a config file (in-memory
    /// config) it does nothing.
    pub fn reload_handle(&self) -> Arc<tokio::sync::Notify> {
        self.reload.clone()
    }

    /// The bound inbound addresses, in config order (useful with port 0).
    pub fn inbound_addrs(&self) -> Vec<SocketAddr> {
        self.inbound
            .iter()
            .map(InboundListener::local_addr)
            .collect()
    }

    /// The bound outbound addresses, in config order.
    pub fn outbound_addrs(&self) -> Vec<SocketAddr> {
        self.outbound
            .iter()
            .map(OutboundListener::local_addr)
            .collect()
    }

    /// Serves until `shutdown` fires, then stops accepting, lets open connections finish for
    /// `limits.shutdown_grace`, and cuts the rest.
    pub async fn serve(self, shutdown: CancellationToken) -> Drained {
        let status = events::Status {
            inbound: self.inbound_addrs(),
            outbound: self.outbound_addrs(),
            identity: self.config.tls.material.identity.subject.clone(),
            identity_not_after: self.config.tls.material.identity.not_after,
            last_reload: None,
        };
        // The admin endpoint first: it installs the recorder that everything below records into.
        let earliest = reload::earliest_identity(&self.config);
        let health = Arc::new(admin::Health::new(
            earliest.unwrap_or(&self.config.tls.material.identity),
        ));
        admin::start(self.admin, &self.config, health.clone(), shutdown.clone());
        metrics::describe();
        relay::log_offload(self.config.offload);
        let cut = CancellationToken::new();
        let tracker = TaskTracker::new();
        let life = listener::Lifecycle {
            shutdown: shutdown.clone(),
            cut: cut.clone(),
            tracker: tracker.clone(),
        };
        let mut accept_loops = Vec::new();
        let inbound_handles: Vec<_> = self.inbound.iter().map(InboundListener::handle).collect();
        let outbound_handles: Vec<_> = self.outbound.iter().map(OutboundListener::handle).collect();
        health.status.start(
            &self.config,
            inbound_handles.clone(),
            outbound_handles.clone(),
        );
        for (l, cfg) in self.inbound.into_iter().zip(&self.config.inbound) {
            l.log_start(cfg);
            accept_loops.push(tokio::spawn(l.serve(life.clone())));
        }
        for (l, cfg) in self.outbound.into_iter().zip(&self.config.outbound) {
            l.log_start(cfg);
            accept_loops.push(tokio::spawn(l.serve(life.clone())));
        }
        if let Some(sources) = self.config.sources.clone() {
            let reloader = reload::Reloader::new(
                sources,
                self.config.clone(),
                inbound_handles,
                outbound_handles,
                health.clone(),
                self.events.clone(),
                status.clone(),
            );
            tokio::spawn(reload::run(reloader, self.reload.clone(), shutdown.clone()));
        }
        health.set_listeners_bound(true);
        // Bound since `bind`, accepting now: peers may be sent here.
        self.events.ready(&status);
        for l in accept_loops {
            let _ = l.await;
        }
        // The accept loops end when `shutdown` fires: the drain starts now.
        self.events.stopping();
        health.set_listeners_bound(false);
        // The listening sockets are closed now: new peers get a refusal and reconnect elsewhere later.
        tracker.close();
        let grace = self.config.limits.shutdown_grace;
        let open = tracker.len();
        if open > 0 {
            tracing::info!(
                "stopped accepting; waiting up to {} for {open} open connection(s)",
                humantime::format_duration(grace)
            );
        }
        let mut drained = Drained { cut: 0 };
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            drained.cut = tracker.len();
            cut.cancel();
            tracker.wait().await;
            tracing::warn!(
                "shutdown grace of {} ran out: cut {} connection(s)",
                humantime::format_duration(grace),
                drained.cut
            );
        } else {
            tracing::info!("all connections finished; exiting");
        }
        drained
    }
}

/// Binds and serves `config` until `shutdown`.
pub async fn run(
    config: Config<LoadedTls>,
    shutdown: CancellationToken,
) -> Result<Drained, BindError> {
    Ok(Server::bind(config).await?.serve(shutdown).await)
}
