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
//!   `unsafe`). [`tcp`] picks the congestion control of the legs that stay on this host.
//! * [`metrics`]: every metric name and label value; `admin` serves them (`/metrics`, `/healthz`,
//!   `/readyz`) and the sidecar's state (`/status`) when `[metrics]` is configured.
//! * [`events`]: what a service manager hears (ready, reloading, reloaded, stopping, a status line).
//! * [`handover`]: a new `ringseal run` takes the listening sockets over from the running one without
//!   refusing a connection; the old one drains.
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
pub mod handover;
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
pub mod tcp;
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
    /// `[tcp] loopback_congestion_control`, decided against the kernel with the listeners.
    loopback: Arc<tcp::Loopback>,
    /// Taking over from an old process: finished once this one accepts.
    takeover: Option<handover::Takeover>,
    /// The connections that can move to a new process.
    moves: Arc<listener::moves::Moves>,
}

/// A bound listener, between runs of its accept loop (a hand-over stops and may resume them).
enum Bound {
    Inbound(InboundListener),
    Outbound(OutboundListener),
}

impl Bound {
    fn kind(&self) -> handover::protocol::Kind {
        match self {
            Self::Inbound(_) => handover::protocol::Kind::Inbound,
            Self::Outbound(_) => handover::protocol::Kind::Outbound,
        }
    }

    fn local_addr(&self) -> SocketAddr {
        match self {
            Self::Inbound(l) => l.local_addr(),
            Self::Outbound(l) => l.local_addr(),
        }
    }

    fn spawn(self, life: listener::Lifecycle) -> tokio::task::JoinHandle<Self> {
        match self {
            Self::Inbound(l) => tokio::spawn(async move { Self::Inbound(l.serve(life).await) }),
            Self::Outbound(l) => tokio::spawn(async move { Self::Outbound(l.serve(life).await) }),
        }
    }
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
        Self::bind_taking_over(config, None).await
    }

    /// Binds every listener, using the listening sockets `takeover` received from the old process
    /// where it has one for the address (each checked: TCP, listening, that address) and binding the
    /// others. [`Server::serve`] then finishes the hand-over once it accepts.
    pub async fn bind_taking_over(
        config: Config<LoadedTls>,
        mut takeover: Option<handover::Takeover>,
    ) -> Result<Self, BindError> {
        use handover::protocol::Kind;
        let mut inherit =
            |kind: Kind, listen: SocketAddr| takeover.as_mut().and_then(|t| t.take(kind, listen));
        // `load_tls` refused a name this process cannot set; should the kernel's settings change in
        // between, the legs keep the host's default rather than the sidecar failing.
        let loopback = Arc::new(
            tcp::Loopback::resolve(&config.tcp.loopback_congestion_control).unwrap_or_else(|e| {
                tracing::warn!("{e}; the loopback legs keep the host's default for now");
                tcp::Loopback::host()
            }),
        );
        let moves = Arc::new(listener::moves::Moves::default());
        let mut inbound = Vec::with_capacity(config.inbound.len());
        for (i, l) in config.inbound.iter().enumerate() {
            let log = config.logging.connections;
            let fd = inherit(Kind::Inbound, l.listen);
            let (limits, moves) = (&config.limits, moves.clone());
            let bound =
                InboundListener::bind(l, limits, config.offload, log, loopback.clone(), fd, moves)
                    .await;
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
            let fd = inherit(Kind::Outbound, l.listen);
            let bound = OutboundListener::bind(
                l,
                limits,
                config.offload,
                peers,
                log,
                loopback.clone(),
                fd,
                moves.clone(),
            )
            .await;
            outbound
                .push(bound.map_err(|e| BindError::new(format!("outbound[{i}]"), l.listen, e))?);
        }
        let admin = match &config.metrics {
            Some(m) => {
                let fd = inherit(Kind::Metrics, m.listen);
                Some(admin::AdminEndpoint::bind_inherited(m.listen, fd).await?)
            }
            None => None,
        };
        Ok(Self {
            config,
            inbound,
            outbound,
            admin,
            reload: Arc::new(tokio::sync::Notify::new()),
            events: Arc::new(events::NoEvents),
            loopback,
            takeover,
            moves,
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

    /// Serves until `shutdown` fires (or a new process has taken over: `[handover]`), then stops
    /// accepting, lets open connections finish for `limits.shutdown_grace`, and cuts the rest.
    pub async fn serve(mut self, shutdown: CancellationToken) -> Drained {
        let status = events::Status {
            inbound: self.inbound_addrs(),
            outbound: self.outbound_addrs(),
            identity: self.config.tls.material.identity.subject.clone(),
            identity_not_after: self.config.tls.material.identity.not_after,
            last_reload: None,
        };
        // Everything below stops with `stop`: the caller's shutdown, or the end of a hand-over.
        let stop = shutdown.child_token();
        let offers = self.handover_offers();
        // The admin endpoint first: it installs the recorder that everything below records into.
        let earliest = reload::earliest_identity(&self.config);
        let health = Arc::new(admin::Health::new(
            earliest.unwrap_or(&self.config.tls.material.identity),
        ));
        admin::start(
            self.admin.take(),
            &self.config,
            health.clone(),
            stop.clone(),
        );
        metrics::describe();
        relay::log_offload(self.config.offload);
        tracing::info!(
            "loopback legs: TCP congestion control {}; network legs keep the host default",
            self.loopback
        );
        let cut = CancellationToken::new();
        let tracker = TaskTracker::new();
        let inbound_handles: Vec<_> = self.inbound.iter().map(InboundListener::handle).collect();
        let outbound_handles: Vec<_> = self.outbound.iter().map(OutboundListener::handle).collect();
        health.status.start(
            &self.config,
            inbound_handles.clone(),
            outbound_handles.clone(),
        );
        let mut bound = Vec::new();
        for (l, cfg) in std::mem::take(&mut self.inbound)
            .into_iter()
            .zip(&self.config.inbound)
        {
            l.log_start(cfg);
            bound.push(Bound::Inbound(l));
        }
        for (l, cfg) in std::mem::take(&mut self.outbound)
            .into_iter()
            .zip(&self.config.outbound)
        {
            l.log_start(cfg);
            bound.push(Bound::Outbound(l));
        }
        // The accept loops run until `accepting` fires: `stop`, or a hand-over's request to stop
        // (then they hand their listeners back, in case the hand-over fails and they resume).
        let mut accepting = stop.child_token();
        let start = |bound: Vec<Bound>, accepting: &CancellationToken| -> Vec<_> {
            let life = listener::Lifecycle {
                shutdown: accepting.clone(),
                cut: cut.clone(),
                tracker: tracker.clone(),
            };
            bound.into_iter().map(|b| b.spawn(life.clone())).collect()
        };
        let mut loops = start(bound, &accepting);
        if let Some(sources) = self.config.sources.clone() {
            let reloader = reload::Reloader::new(
                sources,
                self.config.clone(),
                inbound_handles.clone(),
                outbound_handles.clone(),
                health.clone(),
                self.events.clone(),
                status.clone(),
            );
            tokio::spawn(reload::run(reloader, self.reload.clone(), stop.clone()));
        }
        health.set_listeners_bound(true);
        // Bound since `bind`, accepting now: peers may be sent here.
        self.events.ready(&status);
        let adopter = listener::moves::Adopter {
            listeners: inbound_handles
                .iter()
                .map(|h| h.joinable())
                .chain(outbound_handles.iter().map(|h| h.joinable()))
                .collect(),
            moves: self.moves.clone(),
            life: listener::Lifecycle {
                shutdown: stop.clone(),
                cut: cut.clone(),
                tracker: tracker.clone(),
            },
            limits: listener::relay_limits(&self.config.limits),
            log_connections: self.config.logging.connections,
        };
        let (control, mut requests) = tokio::sync::mpsc::channel(4);
        let live: handover::old::Live = Arc::new(move || {
            inbound_handles
                .iter()
                .map(|h| {
                    let (who, n) = h.established();
                    (who, n, h.policy())
                })
                .chain(outbound_handles.iter().map(|h| {
                    let (who, n) = h.established();
                    (who, n, h.policy())
                }))
                .collect()
        });
        tokio::spawn(handover_task(
            self.config.handover.socket.clone(),
            self.takeover.take(),
            offers,
            (control, live, adopter),
            stop.clone(),
        ));
        let mut finished = None;
        let mut stopped: Vec<Bound> = Vec::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(request) = requests.recv() => match request {
                    handover::old::Request::Stop(ack) => {
                        accepting.cancel();
                        for l in loops.drain(..) {
                            stopped.extend(l.await.ok());
                        }
                        let _ = ack.send(());
                    }
                    handover::old::Request::Resume => {
                        accepting = stop.child_token();
                        loops = start(std::mem::take(&mut stopped), &accepting);
                    }
                    handover::old::Request::Finish(f) => {
                        finished = Some(f);
                        stop.cancel();
                        break;
                    }
                },
            }
        }
        for l in loops {
            stopped.extend(l.await.ok());
        }
        if let Some(f) = &finished {
            for l in &stopped {
                if !f.handed.contains(&(l.kind(), l.local_addr())) {
                    tracing::info!(
                        "closing the {} listener on {}: pid {} does not listen there",
                        l.kind().as_str(),
                        l.local_addr(),
                        f.pid
                    );
                }
            }
            tracing::info!(
                "handed over to pid {}: {} listeners, {} connections moved, {} stay (user-space TLS, \
                 or half-closed) until they end or limits.shutdown_grace ({})",
                f.pid,
                f.handed.len(),
                f.moved,
                f.stayed,
                humantime::format_duration(self.config.limits.shutdown_grace)
            );
        }
        // Our descriptors of the listening sockets close here; those handed over stay open in the
        // new process.
        drop(stopped);
        // The accept loops have ended: the drain starts now. After a hand-over the service goes on
        // in the new process: systemd must not hear that it stops.
        match &finished {
            Some(f) => self.events.handed_over(f.pid),
            None => self.events.stopping(),
        }
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

    /// What this process may hand over: a duplicate of every listening socket's descriptor, with the
    /// address its config names and the one it is bound to.
    fn handover_offers(&self) -> Vec<handover::old::Offer> {
        use handover::protocol::{Kind, ListenerId};
        let mut offers = Vec::new();
        let mut offer = |kind: Kind, name: &str, listen, bound, fd: std::io::Result<_>| match fd {
            Ok(fd) => offers.push(handover::old::Offer {
                id: ListenerId {
                    kind,
                    name: name.to_owned(),
                    listen,
                },
                bound,
                fd,
            }),
            Err(e) => tracing::warn!(
                "the {} listener on {bound} cannot be handed over: {e}",
                kind.as_str()
            ),
        };
        for (l, cfg) in self.inbound.iter().zip(&self.config.inbound) {
            offer(
                Kind::Inbound,
                cfg.name.as_str(),
                cfg.listen,
                l.local_addr(),
                l.dup_fd(),
            );
        }
        for (l, cfg) in self.outbound.iter().zip(&self.config.outbound) {
            offer(
                Kind::Outbound,
                cfg.name.as_str(),
                cfg.listen,
                l.local_addr(),
                l.dup_fd(),
            );
        }
        if let (Some(a), Some(m)) = (&self.admin, &self.config.metrics) {
            offer(
                Kind::Metrics,
                "metrics",
                m.listen,
                a.local_addr(),
                a.dup_fd(),
            );
        }
        offers
    }
}

/// The hand-over's part of serving: first finish taking over from the old process (if this one does),
/// then serve hand-overs to the next one on `socket`.
async fn handover_task(
    socket: Option<std::path::PathBuf>,
    takeover: Option<handover::Takeover>,
    offers: Vec<handover::old::Offer>,
    (control, live, adopter): (
        tokio::sync::mpsc::Sender<handover::old::Request>,
        handover::old::Live,
        listener::moves::Adopter,
    ),
    stop: CancellationToken,
) {
    if let Some(t) = takeover {
        let (pid, received) = (t.pid, t.received());
        let own: Vec<_> = live()
            .into_iter()
            .map(|(who, _, print)| (who.dir.as_str().to_owned(), who.name().to_owned(), print))
            .collect();
        let differing = t.policy_differences(&own);
        match t.finish(&adopter).await {
            Ok(done) => {
                metrics::handover("new", "ok");
                // Verified under the old process's config, they keep it (as after a reload).
                let policy = if done.moved > 0 && !differing.is_empty() {
                    format!(
                        "; this config differs from pid {pid}'s in what connections depend on: {}: \
                         the connections moved from there keep what they were verified under, new \
                         ones are verified under this config",
                        differing.join(", ")
                    )
                } else {
                    String::new()
                };
                tracing::info!(
                    "took over from pid {pid}: {received} listeners, {} connections moved here, {} \
                     stay with it until they end{policy}",
                    done.moved,
                    done.stayed
                );
            }
            Err(e) => {
                metrics::handover("new", "failed");
                tracing::warn!(
                    "hand-over from pid {pid} did not finish: {e}; serving the {received} listeners it \
                     handed over and those bound here"
                );
            }
        }
    }
    let Some(path) = socket else {
        tracing::info!(
            "hand-over off: no [handover] socket and no $RUNTIME_DIRECTORY; a restart refuses \
             connections while no process listens"
        );
        return;
    };
    let listener = match handover::wire::SeqListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(
                "hand-over socket {}: cannot listen: {e}; a restart will refuse connections while no \
                 process listens (fix [handover] socket or its directory)",
                path.display()
            );
            return;
        }
    };
    tracing::info!(
        "hand-over socket {}: a new ringseal run takes over here",
        path.display()
    );
    let moves = adopter.moves.clone();
    handover::old::serve(listener, offers, control, live, moves, stop).await;
}

/// Binds and serves `config` until `shutdown`.
pub async fn run(
    config: Config<LoadedTls>,
    shutdown: CancellationToken,
) -> Result<Drained, BindError> {
    Ok(Server::bind(config).await?.serve(shutdown).await)
}
