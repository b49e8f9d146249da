//! The admin endpoint on `[metrics] listen`: plain HTTP/1.1 (hyper) serving
//!
//! * `GET /metrics`: the Prometheus text exposition of the process-wide recorder ([`crate::metrics::install`]);
//! * `GET /healthz`: `200 ok` while the process runs (liveness);
//! * `GET /readyz`: `200 ready` when every listener is bound and accepting and our identity certificate is
//!   within its validity period, else `503` with a one-line reason (readiness);
//! * `GET /status`: the sidecar's state as JSON ([`status`]): listeners, the storage port's last connect,
//!   identity and CA expiry, the last reload, build and uptime.
//!
//! `HEAD` is answered like `GET`; other methods get `405`, other paths `404`. The endpoint is bounded and
//! cannot be starved: at most [`MAX_CONNECTIONS`] connections at once, and when all are taken a new
//! client is still accepted at once and the least recently active connection is closed for it (see
//! `Slots`); request headers must arrive within [`HEADER_READ_TIMEOUT`] and fit in
//! [`MAX_HEADER_BYTES`], and a connection is closed gracefully after [`MAX_CONNECTION_AGE`]. A request
//! that is not HTTP gets `400` (or `431` for an over-long head) and a closed connection; HTTP/2's
//! connection preface gets HTTP/2's own "use HTTP/1.1" answer (GOAWAY `HTTP_1_1_REQUIRED`) and a close.
//! It stops accepting when the server's shutdown token fires.
//!
//! No authentication and no TLS: bind it to loopback or a management network (the reference config uses
//! `127.0.0.1:9464`). Nothing it serves is secret (no label carries a peer address, `/status` shows no
//! key or password), but it is not meant for the internode network.

pub mod status;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::listener::BindError;
use crate::listener::RateLimit;
use crate::tls::x509::{CertInfo, fmt_time};

/// Concurrent admin connections; Prometheus needs one per scraping server. When all are taken, the least
/// recently active one is closed for a newcomer.
pub const MAX_CONNECTIONS: usize = 64;
/// A request head (or, on a kept-alive connection, the next one) must arrive within this.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// hyper's read buffer, and so the largest request head accepted (its minimum is 8 KiB).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// A connection is closed (after the request in flight) once this old: a client that stops reading
/// cannot hold a slot for ever.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);
/// How often histogram samples are folded into their buckets between scrapes (bounds memory when
/// nobody scrapes).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The exposition format version Prometheus expects from a text endpoint.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What `/readyz` decides on. Shared (`Arc`) between the server, which marks the listeners bound, and
/// whoever loads certificates, which publishes the identity's validity; every field is atomic, so
/// updates need no lock and are seen by the next request.
#[derive(Debug)]
pub struct Health {
    listeners_bound: AtomicBool,
    /// Unix seconds.
    identity_not_before: AtomicU64,
    /// Unix seconds.
    identity_not_after: AtomicU64,
    /// What `/status` adds to readiness.
    pub status: status::Status,
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Health {
    /// Not ready yet (listeners not marked bound), with `identity`'s validity period.
    pub fn new(identity: &CertInfo) -> Self {
        let health = Self {
            listeners_bound: AtomicBool::new(false),
            identity_not_before: AtomicU64::new(0),
            identity_not_after: AtomicU64::new(0),
            status: status::Status::default(),
        };
        health.set_identity(identity);
        health
    }

    /// Every listener is bound and accepting (`true`), or no longer (`false`, e.g. while draining).
    pub fn set_listeners_bound(&self, bound: bool) {
        self.listeners_bound.store(bound, Ordering::Release);
    }

    /// A new identity certificate is in use (after a reload).
    pub fn set_identity(&self, identity: &CertInfo) {
        self.identity_not_before
            .store(unix_secs(identity.not_before), Ordering::Release);
        self.set_identity_not_after(identity.not_after);
    }

    /// The identity certificate in use now expires at `not_after`.
    pub fn set_identity_not_after(&self, not_after: SystemTime) {
        self.identity_not_after
            .store(unix_secs(not_after), Ordering::Release);
    }

    /// `Ok` when ready at `now`; otherwise why not.
    pub fn check(&self, now: SystemTime) -> Result<(), NotReady> {
        if !self.listeners_bound.load(Ordering::Acquire) {
            return Err(NotReady::ListenersNotAccepting);
        }
        let now = unix_secs(now);
        let not_before = self.identity_not_before.load(Ordering::Acquire);
        let not_after = self.identity_not_after.load(Ordering::Acquire);
        if now > not_after {
            return Err(NotReady::IdentityExpired { not_after });
        }
        if now < not_before {
            return Err(NotReady::IdentityNotYetValid { not_before });
        }
        Ok(())
    }
}

/// Why `/readyz` answers 503, as one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("listeners are not accepting connections (starting or shutting down)")]
    ListenersNotAccepting,
    #[error(
        "the identity certificate (tls.cert) expired at {}; install a renewed certificate",
        fmt_unix_secs(*.not_after)
    )]
    IdentityExpired {
        /// Unix seconds.
        not_after: u64,
    },
    #[error(
        "the identity certificate (tls.cert) is not valid before {} (check the clock)",
        fmt_unix_secs(*.not_before)
    )]
    IdentityNotYetValid {
        /// Unix seconds.
        not_before: u64,
    },
}

/// A time given in Unix seconds, as the log writes times.
fn fmt_unix_secs(secs: u64) -> String {
    UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .map_or_else(|| format!("{secs} (Unix time)"), fmt_time)
}

/// A bound admin listener.
pub struct AdminEndpoint {
    listener: TcpListener,
    addr: SocketAddr,
}

impl AdminEndpoint {
    /// Binds `addr`, or uses `inherited`: its listening socket handed over by the old process. The
    /// error names `metrics.listen`.
    pub async fn bind_inherited(
        addr: SocketAddr,
        inherited: Option<std::os::fd::OwnedFd>,
    ) -> Result<Self, BindError> {
        // The system's largest backlog, like the listeners: a burst of connections waits for the accept
        // loop (which never stops draining it) instead of being dropped.
        let bind = || {
            let listener = match inherited {
                Some(fd) => crate::listener::adopt(fd, addr)?,
                None => crate::listener::bind(addr, crate::config::system_backlog())?,
            };
            let local = listener.local_addr()?;
            Ok::<_, std::io::Error>((listener, local))
        };
        match bind() {
            Ok((listener, addr)) => Ok(Self { listener, addr }),
            Err(e) => Err(BindError::new("metrics".into(), addr, e)),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A duplicate of the listening socket's descriptor, to hand over.
    pub fn dup_fd(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        self.listener.as_fd().try_clone_to_owned()
    }

    /// Serves `prometheus`'s exposition and `health` until `shutdown`.
    pub async fn serve(
        self,
        prometheus: PrometheusHandle,
        health: Arc<Health>,
        shutdown: CancellationToken,
    ) {
        let slots = Arc::new(Slots::default());
        let accept_log = RateLimit::new(Duration::from_secs(10));
        let evict_log = RateLimit::new(Duration::from_secs(10));
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_HEADER_BYTES)
            .keep_alive(true);
        let upkeep = tokio::spawn(upkeep(prometheus.clone(), shutdown.clone()));
        // Never waits for a slot: the listen backlog keeps being drained, and a full table evicts.
        while let Some((stream, peer)) =
            crate::listener::accept(&self.listener, &shutdown, &accept_log).await
        {
            let (slot, evict, evicted) = slots.admit(peer);
            if let Some(old) = evicted {
                crate::metrics::admin_evicted();
                if let Some(n) = evict_log.check(()) {
                    tracing::debug!(
                        "metrics endpoint: all {MAX_CONNECTIONS} connections taken; closed the least \
                         recently active one, from {old}, for {peer}{}",
                        crate::listener::suppressed_note(n)
                    );
                }
            }
            let http = http.clone();
            let (prometheus, health, shutdown) =
                (prometheus.clone(), health.clone(), shutdown.clone());
            let slots = slots.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = evict.cancelled() => {}
                    _ = serve_http_connection(stream, peer, &http, prometheus, health, shutdown, (&slots, slot)) => {}
                }
                slots.release(slot);
            });
        }
        let _ = upkeep.await;
        tracing::debug!("metrics endpoint on {} closed", self.addr);
    }
}

/// The endpoint's connection slots. When every slot is taken, a new connection still gets one and the
/// least recently active connection (the one whose last request, or whose accept if it sent none, is
/// oldest) is closed. Why eviction rather than the alternatives: a per-address cap does not help when
/// the scraper shares the flood's address (a local Prometheus, a NAT), a reserve of slots is only a
/// larger pool that a flood fills as well, and a short deadline alone still hands every slot to a flood
/// that keeps reconnecting. A real client sends its request as soon as it is connected and is answered
/// within microseconds, so a flood would have to open [`MAX_CONNECTIONS`] connections in that time to
/// crowd it out.
#[derive(Default)]
struct Slots {
    table: Mutex<HashMap<u64, SlotEntry>>,
    /// Ticks at every admission and request: "last activity" is a tick, not a clock reading.
    clock: AtomicU64,
}

struct SlotEntry {
    last_active: u64,
    evict: CancellationToken,
    peer: SocketAddr,
}

impl Slots {
    /// A slot for a new connection from `peer`: its id, its eviction signal, and the peer of the
    /// connection evicted for it (if one was).
    fn admit(&self, peer: SocketAddr) -> (u64, CancellationToken, Option<SocketAddr>) {
        let id = self.clock.fetch_add(1, Ordering::Relaxed);
        let evict = CancellationToken::new();
        let mut table = self.lock();
        let mut evicted = None;
        if table.len() >= MAX_CONNECTIONS {
            let oldest = table
                .iter()
                .min_by_key(|(_, e)| e.last_active)
                .map(|(id, _)| *id);
            if let Some(old) = oldest.and_then(|id| table.remove(&id)) {
                old.evict.cancel();
                evicted = Some(old.peer);
            }
        }
        let entry = SlotEntry {
            last_active: id,
            evict: evict.clone(),
            peer,
        };
        table.insert(id, entry);
        (id, evict, evicted)
    }

    /// A request arrived on connection `id`.
    fn touch(&self, id: u64) {
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        if let Some(e) = self.lock().get_mut(&id) {
            e.last_active = now;
        }
    }

    fn release(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, SlotEntry>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The HTTP/2 connection preface (RFC 9113 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// HTTP/2's answer of a server that speaks HTTP/1.1 only: an empty SETTINGS frame (the server preface),
/// then GOAWAY with last stream 0 and error HTTP_1_1_REQUIRED (0xd), so that an HTTP/2 client says why.
/// Two constant frames, written by hand rather than pulling in an HTTP/2 stack.
const H2_GOAWAY: &[u8] = &[
    0, 0, 0, 0x4, 0, 0, 0, 0, 0, // SETTINGS, length 0, stream 0
    0, 0, 8, 0x7, 0, 0, 0, 0, 0, // GOAWAY, length 8, stream 0
    0, 0, 0, 0, // last stream id
    0, 0, 0, 0xd, // HTTP_1_1_REQUIRED
];

/// Waits until the first bytes tell whether the client sent HTTP/2's connection preface; nothing is
/// consumed. `false` as soon as a byte differs, or at end of stream.
async fn is_h2_preface(stream: &TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let ready = stream.ready(Interest::READABLE).await?;
        // A `WouldBlock` inside `try_io` clears the readiness, so a partial preface waits for more bytes
        // instead of peeking the same ones again.
        let decided = stream.try_io(Interest::READABLE, || {
            let n = crate::sys::peek(stream.as_fd(), &mut buf)?;
            let prefix = n > 0 && buf[..n] == H2_PREFACE[..n];
            if prefix && n < H2_PREFACE.len() && !ready.is_read_closed() {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            Ok(prefix && n == H2_PREFACE.len())
        });
        match decided {
            Ok(is) => return Ok(is),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// Answers an HTTP/2 preface with [`H2_GOAWAY`] and closes. The preface is read first and what follows
/// (the client's SETTINGS) drained for a moment: closing with unread bytes would be a reset, which can
/// destroy the answer before the client reads it.
async fn refuse_h2(mut stream: TcpStream) {
    let answer = async {
        let mut preface = [0u8; H2_PREFACE.len()];
        stream.read_exact(&mut preface).await?;
        stream.write_all(H2_GOAWAY).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
}

/// One HTTP connection, from accept to close.
async fn serve_http_connection(
    stream: TcpStream,
    peer: SocketAddr,
    http: &hyper::server::conn::http1::Builder,
    prometheus: PrometheusHandle,
    health: Arc<Health>,
    shutdown: CancellationToken,
    (slots, slot): (&Arc<Slots>, u64),
) {
    match tokio::time::timeout(HEADER_READ_TIMEOUT, is_h2_preface(&stream)).await {
        Ok(Ok(false)) => {}
        Ok(Ok(true)) => {
            tracing::debug!(
                peer = %peer,
                "metrics endpoint: {peer} sent the HTTP/2 connection preface; this endpoint speaks \
                 HTTP/1.1 only: answered GOAWAY HTTP_1_1_REQUIRED and closed"
            );
            return refuse_h2(stream).await;
        }
        Ok(Err(e)) => {
            tracing::debug!(peer = %peer, "metrics endpoint: connection from {peer}: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(
                peer = %peer,
                "metrics endpoint: {peer} did not start a request within {HEADER_READ_TIMEOUT:?}; closed"
            );
            return;
        }
    }
    let slots = slots.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        slots.touch(slot);
        let response = respond(&req, &prometheus, &health);
        async move { Ok::<_, Infallible>(response) }
    });
    let conn = http.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = tokio::time::sleep(MAX_CONNECTION_AGE) => {
            // Let the request in flight (if any) complete, then close; bounded, in case the client
            // stopped reading.
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(HEADER_READ_TIMEOUT, conn.as_mut()).await.unwrap_or(Ok(()))
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(HEADER_READ_TIMEOUT, conn.as_mut()).await.unwrap_or(Ok(()))
        }
    };
    if let Err(e) = result {
        // Garbage, a port scanner, a client that went away: routine on an HTTP port.
        tracing::debug!(peer = %peer, "metrics endpoint: connection from {peer}: {e}");
    }
}

/// Folds histogram samples into buckets every [`UPKEEP_INTERVAL`] until `shutdown`.
async fn upkeep(prometheus: PrometheusHandle, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => prometheus.run_upkeep(),
        }
    }
}

/// A plain-text response that no cache keeps.
fn text_response(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Routes one request. Never fails: every outcome is a response.
fn respond<B>(
    req: &Request<B>,
    prometheus: &PrometheusHandle,
    health: &Health,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz" | "/status") {
        return text_response(
            StatusCode::NOT_FOUND,
            "not found; this endpoint serves /metrics, /healthz, /readyz and /status\n",
        );
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut response = text_response(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {} not allowed; use GET\n", req.method()),
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/metrics" => {
            let mut response = text_response(StatusCode::OK, prometheus.render());
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
            response
        }
        "/status" => {
            let now = SystemTime::now();
            let ready = health.check(now).map_err(|why| why.to_string());
            let body = serde_json::to_vec_pretty(&health.status.report(ready, now))
                .expect("the status document serializes");
            let mut response = text_response(StatusCode::OK, body);
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        "/readyz" => match health.check(SystemTime::now()) {
            Ok(()) => text_response(StatusCode::OK, "ready\n"),
            Err(why) => text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        _ => text_response(StatusCode::OK, "ok\n"),
    }
}

/// Starts the endpoint for `config.metrics` (a no-op when it is `None`): installs the recorder (so call
/// this before anything is recorded), publishes the certificate expiry gauges and starts every bounded
/// series at zero, binds, logs the start line and serves until `shutdown`.
///
/// A port that cannot be bound is logged as an error and the sidecar runs without the endpoint: the
/// internode traffic matters more than its metrics, and `/healthz` failing to answer makes the problem
/// visible to whatever probes it.
pub fn start(
    endpoint: Option<AdminEndpoint>,
    config: &Config<crate::tls::LoadedTls>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    let Some(endpoint) = endpoint else {
        return;
    };
    let prometheus = crate::metrics::install();
    use crate::metrics::{Direction, Listener};
    let listeners: Vec<Listener> = config
        .inbound
        .iter()
        .map(|l| {
            l.tls.material.publish_expiry(l.name.as_str());
            Listener::new(Direction::Inbound, l.name.shared())
        })
        .chain(config.outbound.iter().map(|l| {
            l.tls.material.publish_expiry(l.name.as_str());
            Listener::new(Direction::Outbound, l.name.shared())
        }))
        .collect();
    crate::metrics::register_zeroes(&listeners);
    tracing::info!(
        "serving metrics on {} (/metrics, /healthz, /readyz, /status)",
        endpoint.local_addr()
    );
    tokio::spawn(endpoint.serve(prometheus, health, shutdown));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(not_before: u64, not_after: u64) -> Health {
        Health {
            listeners_bound: AtomicBool::new(true),
            identity_not_before: AtomicU64::new(not_before),
            identity_not_after: AtomicU64::new(not_after),
            status: status::Status::default(),
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn ready_only_when_bound_and_within_validity() {
        let h = health(1_000, 2_000);
        assert_eq!(h.check(at(1_500)), Ok(()));
        assert_eq!(h.check(at(2_000)), Ok(()), "notAfter itself is still valid");
        let why = h.check(at(2_001)).unwrap_err().to_string();
        assert!(why.contains("expired at 1970-01-01T00:33:20Z"), "{why}");
        let why = h.check(at(999)).unwrap_err().to_string();
        assert!(why.contains("not valid before"), "{why}");
        h.set_listeners_bound(false);
        let why = h.check(at(1_500)).unwrap_err().to_string();
        assert!(why.contains("listeners"), "{why}");
    }

    #[test]
    fn a_renewed_identity_makes_it_ready_again() {
        let h = health(1_000, 2_000);
        assert!(h.check(at(3_000)).is_err());
        h.set_identity_not_after(at(4_000));
        assert_eq!(h.check(at(3_000)), Ok(()));
    }

    #[test]
    fn status_reports_identity_trust_and_the_last_reload() {
        use crate::pki::{Ca, NodeSpec};
        let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle();
        let ca = Ca::new("StatusCluster").unwrap();
        let id = ca
            .issue(&NodeSpec::new("node7", &["127.0.0.7".parse().unwrap()]))
            .unwrap();
        let material = crate::tls::material::TlsMaterial::from_der(
            vec![id.cert_der.clone()],
            id.key(),
            vec![ca.cert_der.clone()],
            None,
        )
        .unwrap();
        let h = health(0, u64::MAX / 2);
        h.status.set_material(&material);
        let status = |h: &Health| {
            let req = Request::builder().uri("/status").body(()).unwrap();
            let response = respond(&req, &prometheus, h);
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
            let body = futures_body(response);
            serde_json::from_slice::<serde_json::Value>(&body).unwrap()
        };
        let s = status(&h);
        assert_eq!(s["ok"], true, "{s:#}");
        assert_eq!(s["message"], "ready");
        assert_eq!(s["identity"]["ip_sans"], serde_json::json!(["127.0.0.7"]));
        assert!(s["identity"]["subject"].as_str().unwrap().contains("node7"));
        assert_eq!(
            s["identity"]["not_after"].as_str().unwrap(),
            fmt_time(material.identity.not_after)
        );
        assert_eq!(s["trust"]["cas"], 1);
        assert_eq!(
            s["trust"]["earliest_not_after"].as_str().unwrap(),
            fmt_time(material.cas[0].not_after)
        );
        assert_eq!(s["reload"]["last"], serde_json::Value::Null);
        assert_eq!(s["build"]["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(s["build"]["rustls_provider"], "aws-lc-rs");

        h.status
            .reloaded(true, Err("tls.keystore /k.p12: wrong password"));
        h.set_listeners_bound(false);
        let s = status(&h);
        assert_eq!(s["ok"], false);
        assert!(
            s["message"].as_str().unwrap().contains("listeners"),
            "{s:#}"
        );
        let last = &s["reload"]["last"];
        assert_eq!(last["result"], "failed", "{s:#}");
        assert_eq!(last["trigger"], "sighup");
        assert_eq!(last["error"], "tls.keystore /k.p12: wrong password");
        assert_eq!(s["reload"]["failed"], 1);
        h.status.reloaded(false, Ok(()));
        let s = status(&h);
        assert_eq!(s["reload"]["last"]["result"], "ok");
        assert_eq!(s["reload"]["last"]["error"], serde_json::Value::Null);
        assert_eq!(s["reload"]["succeeded"], 1);
    }

    /// The whole body of a `Full` response.
    fn futures_body(response: Response<Full<Bytes>>) -> Bytes {
        use http_body_util::BodyExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(response.into_body().collect())
            .unwrap()
            .to_bytes()
    }

    #[test]
    fn routes_methods_and_paths() {
        // A private recorder: unit tests leave the process-wide one alone.
        let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle();
        let h = health(0, u64::MAX / 2);
        let get = |method: Method, path: &str| {
            let req = Request::builder()
                .method(method)
                .uri(path)
                .body(())
                .unwrap();
            respond(&req, &prometheus, &h)
        };
        assert_eq!(get(Method::GET, "/healthz").status(), StatusCode::OK);
        assert_eq!(get(Method::HEAD, "/readyz").status(), StatusCode::OK);
        assert_eq!(get(Method::GET, "/readyz?verbose").status(), StatusCode::OK);
        let metrics = get(Method::GET, "/metrics");
        assert_eq!(metrics.status(), StatusCode::OK);
        assert_eq!(metrics.headers()[CONTENT_TYPE], METRICS_CONTENT_TYPE);
        assert_eq!(get(Method::GET, "/").status(), StatusCode::NOT_FOUND);
        assert_eq!(get(Method::POST, "/nope").status(), StatusCode::NOT_FOUND);
        let post = get(Method::POST, "/metrics");
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[ALLOW], "GET, HEAD");
        h.set_listeners_bound(false);
        assert_eq!(
            get(Method::GET, "/readyz").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
