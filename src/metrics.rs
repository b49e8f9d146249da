//! Every metric name and label value lives here (Prometheus naming: `ringseal_` prefix, `_total`,
//! `_seconds`, `_bytes`). Labels are bounded: never a peer address. Listeners report outcomes through these
//! functions; the relay only increments the byte counters it is handed.

use std::time::Duration;

use metrics::{
    Counter, Gauge, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

pub const HANDSHAKES: &str = "ringseal_handshakes_total";
pub const HANDSHAKE_DURATION: &str = "ringseal_handshake_duration_seconds";
pub const CONNECTIONS_ACTIVE: &str = "ringseal_connections_active";
pub const CONNECTIONS: &str = "ringseal_connections_total";
pub const BYTES: &str = "ringseal_bytes_total";
pub const BACKEND_FAILURES: &str = "ringseal_backend_connect_failures_total";
pub const CLOSES: &str = "ringseal_connections_closed_total";
pub const BUILD_INFO: &str = "ringseal_build_info";
pub const CERT_EXPIRY: &str = "ringseal_certificate_expiry_timestamp_seconds";
pub const RELOADS: &str = "ringseal_config_reloads_total";
pub const CHAIN_CACHE: &str = "ringseal_chain_cache_lookups_total";
pub const LOG_LINES_DROPPED: &str = "ringseal_log_lines_dropped_total";
pub const PLAINTEXT_FALLBACKS: &str = "ringseal_plaintext_fallbacks_total";
pub const TURNED_AWAY: &str = "ringseal_connections_turned_away_total";
pub const HANDSHAKES_IN_PROGRESS: &str = "ringseal_handshakes_in_progress";
pub const ADMIN_EVICTIONS: &str = "ringseal_admin_connections_evicted_total";
pub const HANDOVERS: &str = "ringseal_handovers_total";
pub const HANDOVER_CONNECTIONS: &str = "ringseal_handover_connections_total";

/// Every metric name above: what `/metrics` may contain, and what dashboards and alerts may reference.
pub const ALL: &[&str] = &[
    HANDSHAKES,
    HANDSHAKE_DURATION,
    CONNECTIONS_ACTIVE,
    CONNECTIONS,
    BYTES,
    BACKEND_FAILURES,
    CLOSES,
    BUILD_INFO,
    CERT_EXPIRY,
    RELOADS,
    CHAIN_CACHE,
    LOG_LINES_DROPPED,
    PLAINTEXT_FALLBACKS,
    TURNED_AWAY,
    HANDSHAKES_IN_PROGRESS,
    ADMIN_EVICTIONS,
    HANDOVERS,
    HANDOVER_CONNECTIONS,
];

/// Why a handshake was refused: the `reason` label, a small fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    NoCertificate,
    UnknownCa,
    BadSignature,
    Expired,
    NotYetValid,
    InvalidPurpose,
    EndpointMismatch,
    IdentityNotAllowed,
    V1Certificate,
    /// The chain is longer than webpki follows (6 intermediates), or too tangled to build a path
    /// within webpki's budget.
    ChainTooDeep,
    Revoked,
    ProtocolVersion,
    NoSharedCipher,
    PeerAlert,
    Timeout,
    NotTls,
    Io,
    Other,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoCertificate => "no_certificate",
            Self::UnknownCa => "unknown_ca",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::InvalidPurpose => "invalid_purpose",
            Self::EndpointMismatch => "endpoint_mismatch",
            Self::IdentityNotAllowed => "identity_not_allowed",
            Self::V1Certificate => "v1_certificate",
            Self::ChainTooDeep => "chain_too_deep",
            Self::Revoked => "revoked",
            Self::ProtocolVersion => "protocol_version",
            Self::NoSharedCipher => "no_shared_cipher",
            Self::PeerAlert => "peer_alert",
            Self::Timeout => "timeout",
            Self::NotTls => "not_tls",
            Self::Io => "io",
            Self::Other => "other",
        }
    }
}

/// Why permissive outbound sent a connection in plaintext: the `reason` label of
/// [`PLAINTEXT_FALLBACKS`]. Only these two: anything else that goes wrong with TLS is a refused
/// handshake, never a fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FallbackReason {
    /// The peer's TLS port refused the connection (ECONNREFUSED): nothing listens there.
    ConnectionRefused,
    /// The peer's TLS port answered our ClientHello with bytes that are not a TLS record header.
    NotTls,
}

impl FallbackReason {
    pub const ALL: [Self; 2] = [Self::ConnectionRefused, Self::NotTls];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnectionRefused => "connection_refused",
            Self::NotTls => "not_tls",
        }
    }
}

/// Why admission control closed a connection: the `reason` label of [`TURNED_AWAY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TurnAway {
    /// Its source address already had `max_pending_per_source` handshakes in progress.
    SourceLimit,
    /// The oldest handshake in progress, closed to make room for a new connection.
    Evicted,
    /// Verified, but the listener already had `max_connections` established connections.
    ConnectionsFull,
}

impl TurnAway {
    pub const ALL: [Self; 3] = [Self::SourceLimit, Self::Evicted, Self::ConnectionsFull];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::SourceLimit => "source_limit",
            Self::Evicted => "evicted",
            Self::ConnectionsFull => "connections_full",
        }
    }
}

/// `direction` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

/// Whose series these are: the `direction` and `listener` labels of one listener. The name is the
/// listener's configured (or default) name, bounded by the config, never taken from the wire.
#[derive(Debug, Clone)]
pub struct Listener {
    pub dir: Direction,
    name: metrics::SharedString,
}

impl Listener {
    pub fn new(dir: Direction, name: std::sync::Arc<str>) -> Self {
        Self {
            dir,
            name: metrics::SharedString::from_shared(name),
        }
    }

    fn d(&self) -> &'static str {
        self.dir.as_str()
    }

    /// The listener's name, as its log lines show it.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn l(&self) -> metrics::SharedString {
        self.name.clone()
    }
}

/// Registers descriptions once at start, so `/metrics` explains itself.
pub fn describe() {
    describe_counter!(
        HANDSHAKES,
        "TLS handshakes by direction, listener (its configured name), result (ok|refused), reason, \
         protocol and cipher suite"
    );
    describe_histogram!(
        HANDSHAKE_DURATION,
        metrics::Unit::Seconds,
        "Time from accept to a finished (or failed) handshake"
    );
    describe_gauge!(CONNECTIONS_ACTIVE, "Connections currently relaying");
    describe_counter!(
        CONNECTIONS,
        "Connections relayed, by direction, tls (false: permissive plaintext) and offload (ktls: the \
         kernel encrypts and splices; userspace: rustls; splice: plaintext spliced)"
    );
    describe_counter!(
        BYTES,
        metrics::Unit::Bytes,
        "Plaintext bytes relayed; flow=from_peer (received from the TLS peer) or to_peer (sent to it)"
    );
    describe_counter!(
        BACKEND_FAILURES,
        "Verified peers dropped because the forward address could not be connected"
    );
    describe_counter!(
        CLOSES,
        "Connections by how they ended: relayed ones how=clean (in order both ways), the cause of an \
         abort (both sides reset), or cut (still open at the end of shutdown_grace); how=no_data: \
         accepted and closed or reset by the peer before it sent a byte (a TCP health check), never \
         a handshake"
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label is the ringseal version"
    );
    describe_gauge!(
        CERT_EXPIRY,
        "notAfter of a certificate in use by a listener, as a Unix timestamp; role=identity (ours) or \
         ca (trusted)"
    );
    describe_counter!(
        RELOADS,
        "Certificate and configuration reload attempts by result (ok|error)"
    );
    describe_counter!(
        CHAIN_CACHE,
        "Peer certificate chains looked up in the verified-chain cache, by direction and result (hit: \
         the chain's signatures were not checked again; miss: verified in full)"
    );
    describe_counter!(
        LOG_LINES_DROPPED,
        "Log lines dropped because stderr could not take them (closed, or stalled until the buffer \
         was full)"
    );
    describe_counter!(
        PLAINTEXT_FALLBACKS,
        "Outbound connections sent in plaintext by permissive mode to a peer that has never completed a \
         verified TLS handshake with this sidecar (within permissive.tls_peer_memory), by reason \
         (connection_refused: its TLS port refused; not_tls: it answered with bytes that are not TLS)"
    );
    describe_counter!(
        TURNED_AWAY,
        "Connections closed by admission control, by direction and reason (source_limit: its address \
         had limits.max_pending_per_source handshakes in progress; evicted: the oldest handshake in \
         progress, closed for a newcomer when limits.max_pending_handshakes were; connections_full: \
         verified while limits.max_connections were established)"
    );
    describe_gauge!(
        HANDSHAKES_IN_PROGRESS,
        "Connections accepted whose handshake is not finished yet (outbound: dialing or handshaking)"
    );
    describe_counter!(
        ADMIN_EVICTIONS,
        "Connections to this endpoint closed to make room for a new one (the least recently active, \
         when all slots were taken)"
    );
    describe_counter!(
        HANDOVERS,
        "Process hand-overs (a new `ringseal run` taking over the listeners) by role (old: this \
         process handed over; new: it took over) and result (ok; refused: another uid, busy or another \
         protocol version; failed: the other process went away or timed out, and the old one kept \
         serving)"
    );
    describe_counter!(
        HANDOVER_CONNECTIONS,
        "Connections open when this process handed over, by listener, direction and result (moved: \
         continued by the new process; stayed: drained here until they end or limits.shutdown_grace)"
    );
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Starts the series that exist from the first moment at zero, for every listener, so that
/// `increase()` and `rate()` see their first event (a series that appears at 1 shows no increase).
/// Only bounded label sets: handshake counters get their protocol, suite and reason labels when they
/// happen.
pub fn register_zeroes(listeners: &[Listener]) {
    let mut directions = Vec::new();
    for who in listeners {
        let (d, l) = (who.d(), who.l());
        if !directions.contains(&who.dir) {
            directions.push(who.dir);
        }
        for offload in ["ktls", "userspace"] {
            counter!(CONNECTIONS, "direction" => d, "listener" => l.clone(), "tls" => "true",
                "offload" => offload)
            .increment(0);
        }
        gauge!(CONNECTIONS_ACTIVE, "direction" => d, "listener" => l.clone(), "tls" => "true")
            .increment(0.0);
        counter!(BYTES, "direction" => d, "listener" => l.clone(), "flow" => "from_peer")
            .increment(0);
        counter!(BYTES, "direction" => d, "listener" => l.clone(), "flow" => "to_peer")
            .increment(0);
        counter!(BACKEND_FAILURES, "direction" => d, "listener" => l.clone()).increment(0);
        for result in ["ok", "refused"] {
            // Registering is enough: the histogram renders with empty buckets.
            let _ = histogram!(HANDSHAKE_DURATION, "direction" => d, "listener" => l.clone(),
                "result" => result);
        }
        for reason in TurnAway::ALL {
            counter!(TURNED_AWAY, "direction" => d, "listener" => l.clone(),
                "reason" => reason.as_str())
            .increment(0);
        }
        handshakes_in_progress(who).increment(0.0);
        for result in ["moved", "stayed"] {
            handover_connections(who, result, 0);
        }
        // Only inbound listeners look at a connection before its first byte (outbound ones dial the
        // peer at once): probes counted from 0, so the first one shows in `increase()`.
        if who.dir == Direction::Inbound {
            counter!(CLOSES, "direction" => d, "listener" => l.clone(), "how" => HOW_NO_DATA)
                .increment(0);
        }
        // Outbound only, but always there (an inbound listener's stay at 0), so that every
        // sidecar's exposition has every metric.
        for reason in FallbackReason::ALL {
            counter!(PLAINTEXT_FALLBACKS, "listener" => l.clone(), "reason" => reason.as_str())
                .increment(0);
        }
    }
    // Per direction: the verified-chain caches are the verifiers', not a listener's.
    for dir in directions {
        for result in ["hit", "miss"] {
            counter!(CHAIN_CACHE, "direction" => dir.as_str(), "result" => result).increment(0);
        }
    }
    for result in ["ok", "error"] {
        counter!(RELOADS, "result" => result).increment(0);
    }
    counter!(LOG_LINES_DROPPED).increment(0);
    counter!(ADMIN_EVICTIONS).increment(0);
    for role in ["old", "new"] {
        for result in ["ok", "refused", "failed"] {
            counter!(HANDOVERS, "role" => role, "result" => result).increment(0);
        }
    }
}

/// A hand-over ended: `role` old|new, `result` ok|refused|failed.
pub fn handover(role: &'static str, result: &'static str) {
    counter!(HANDOVERS, "role" => role, "result" => result).increment(1);
}

/// `n` connections of `who` were moved to the new process or stayed here (`result`).
pub fn handover_connections(who: &Listener, result: &'static str, n: u64) {
    counter!(HANDOVER_CONNECTIONS, "direction" => who.d(), "listener" => who.l(),
        "result" => result)
    .increment(n);
}

/// A connection closed by admission control.
pub fn turned_away(who: &Listener, reason: TurnAway) {
    counter!(TURNED_AWAY, "direction" => who.d(), "listener" => who.l(),
        "reason" => reason.as_str())
    .increment(1);
}

/// The gauge of handshakes in progress; admission control moves it.
pub fn handshakes_in_progress(who: &Listener) -> Gauge {
    gauge!(HANDSHAKES_IN_PROGRESS, "direction" => who.d(), "listener" => who.l())
}

/// An admin connection closed to make room for a new one.
pub fn admin_evicted() {
    counter!(ADMIN_EVICTIONS).increment(1);
}

/// A successful handshake.
pub fn handshake_ok(who: &Listener, protocol: &'static str, suite: &'static str, took: Duration) {
    counter!(HANDSHAKES, "direction" => who.d(), "listener" => who.l(), "result" => "ok",
        "reason" => "", "protocol" => protocol, "cipher_suite" => suite)
    .increment(1);
    histogram!(HANDSHAKE_DURATION, "direction" => who.d(), "listener" => who.l(), "result" => "ok")
        .record(took);
}

/// A refused handshake.
pub fn handshake_refused(who: &Listener, reason: Reason, took: Duration) {
    counter!(HANDSHAKES, "direction" => who.d(), "listener" => who.l(), "result" => "refused",
        "reason" => reason.as_str(), "protocol" => "", "cipher_suite" => "")
    .increment(1);
    histogram!(HANDSHAKE_DURATION, "direction" => who.d(), "listener" => who.l(),
        "result" => "refused")
    .record(took);
}

/// A permissive outbound connection sent in plaintext, and why.
pub fn plaintext_fallback(who: &Listener, reason: FallbackReason) {
    counter!(PLAINTEXT_FALLBACKS, "listener" => who.l(), "reason" => reason.as_str()).increment(1);
}

/// One lookup in a verifier's verified-chain cache (`tls::chain_cache`).
pub fn chain_cache_lookup(dir: Direction, hit: bool) {
    counter!(CHAIN_CACHE, "direction" => dir.as_str(), "result" => if hit { "hit" } else { "miss" })
        .increment(1);
}

pub fn backend_failure(who: &Listener) {
    counter!(BACKEND_FAILURES, "direction" => who.d(), "listener" => who.l()).increment(1);
}

/// Byte counters handed to the relay: one atomic add per chunk moved.
#[derive(Clone)]
pub struct ByteCounters {
    pub from_peer: Counter,
    pub to_peer: Counter,
}

/// The `how` of an inbound connection that the peer closed or reset before sending a byte: what a TCP
/// health check (Kubernetes `tcpSocket`, a load balancer's check, HAProxy's `check`) does. Not a
/// handshake, and so never a refusal.
pub const HOW_NO_DATA: &str = "no_data";

/// An accepted connection that ended before its first byte ([`HOW_NO_DATA`]).
pub fn closed_without_data(who: &Listener) {
    counter!(CLOSES, "direction" => who.d(), "listener" => who.l(), "how" => HOW_NO_DATA)
        .increment(1);
}

/// The `how` of a connection whose task was dropped before its relay finished: the shutdown cut at the
/// end of `shutdown_grace`. Every other `how` is a `relay::Close` label.
pub const HOW_CUT: &str = "cut";

/// Counts a relayed connection and keeps the active gauge up until dropped; dropped without
/// [`ActiveConnection::closed`], it counts the connection as cut ([`HOW_CUT`]).
pub struct ActiveConnection {
    who: Listener,
    gauge: Gauge,
    pub bytes: ByteCounters,
    /// `closed` counted how it ended.
    counted: bool,
}

impl ActiveConnection {
    /// `offload`: the relay path's label (`relay::Path::label`).
    pub fn start(who: &Listener, tls: bool, offload: &'static str) -> Self {
        let label = if tls { "true" } else { "false" };
        counter!(CONNECTIONS, "direction" => who.d(), "listener" => who.l(), "tls" => label,
            "offload" => offload)
        .increment(1);
        Self::adopted(who, tls)
    }

    /// A connection adopted from the old process in a hand-over: active here, but not counted again
    /// in `ringseal_connections_total` (the old process counted it when it was accepted).
    pub fn adopted(who: &Listener, tls: bool) -> Self {
        let tls = if tls { "true" } else { "false" };
        let (d, l) = (who.d(), who.l());
        let gauge = gauge!(CONNECTIONS_ACTIVE, "direction" => d, "listener" => l.clone(),
            "tls" => tls);
        gauge.increment(1.0);
        Self {
            who: who.clone(),
            gauge,
            bytes: ByteCounters {
                from_peer: counter!(BYTES, "direction" => d, "listener" => l.clone(),
                    "flow" => "from_peer"),
                to_peer: counter!(BYTES, "direction" => d, "listener" => l, "flow" => "to_peer"),
            },
            counted: false,
        }
    }

    /// The connection moved to the new process: no longer active here, neither closed nor cut
    /// (`ringseal_handover_connections_total{result="moved"}` counts it).
    pub fn moved(mut self) {
        self.counted = true;
    }

    pub fn direction(&self) -> Direction {
        self.who.dir
    }

    pub fn listener(&self) -> &str {
        self.who.name()
    }

    /// The relay finished: counts how (`ringseal_connections_closed_total{how}`).
    pub fn closed(mut self, how: &'static str) {
        counter!(CLOSES, "direction" => self.who.d(), "listener" => self.who.l(), "how" => how)
            .increment(1);
        self.counted = true;
    }
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
        if !self.counted {
            counter!(CLOSES, "direction" => self.who.d(), "listener" => self.who.l(),
                "how" => HOW_CUT)
            .increment(1);
        }
    }
}

/// The process-wide Prometheus recorder, installed on first use. One per process: the exposition of
/// every listener and of the demo comes from it.
pub fn install() -> metrics_exporter_prometheus::PrometheusHandle {
    use std::sync::OnceLock;
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
                // Handshakes take from ~0.3 ms (loopback, ECDSA) to seconds (timeouts).
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(HANDSHAKE_DURATION.into()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0,
                    ],
                )
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only when another recorder was installed first (a library user's); then that one
            // receives our metrics and this handle renders nothing, which is their choice.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// A certificate's subject and notAfter, as the expiry gauge publishes them.
pub type Expiry<'a> = (&'a str, std::time::SystemTime);

/// Publishes the notAfter of `listener`'s identity and of every CA it trusts.
pub fn certificate_expiry<'a>(
    listener: &str,
    identity: Expiry<'a>,
    cas: impl IntoIterator<Item = Expiry<'a>>,
) {
    let unix = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    };
    let l = listener.to_owned();
    gauge!(CERT_EXPIRY, "listener" => l.clone(), "role" => "identity",
        "subject" => identity.0.to_owned())
    .set(unix(identity.1));
    for (subject, not_after) in cas {
        gauge!(CERT_EXPIRY, "listener" => l.clone(), "role" => "ca",
            "subject" => subject.to_owned())
        .set(unix(not_after));
    }
}

/// Log lines that could not be written (called from the log thread).
pub fn log_lines_dropped(n: u64) {
    counter!(LOG_LINES_DROPPED).increment(n);
}

/// One reload attempt.
pub fn reload(ok: bool) {
    counter!(RELOADS, "result" => if ok { "ok" } else { "error" }).increment(1);
}

/// After a reload: certificates no longer in use (a CA removed from the bundle, a replaced identity)
/// report NaN, so an expiry alert does not fire for them. The exporter cannot drop a series, and a
/// comparison with NaN is never true in PromQL.
/// Takes the subjects of our identity and CAs before and after.
pub fn certificate_expiry_retired(
    listener: &str,
    (old_identity, old_cas): (&str, &[&str]),
    (new_identity, new_cas): (&str, &[&str]),
) {
    let l = listener.to_owned();
    if old_identity != new_identity {
        gauge!(CERT_EXPIRY, "listener" => l.clone(), "role" => "identity",
            "subject" => old_identity.to_owned())
        .set(f64::NAN);
    }
    for ca in old_cas.iter().filter(|ca| !new_cas.contains(ca)) {
        gauge!(CERT_EXPIRY, "listener" => l.clone(), "role" => "ca",
            "subject" => (*ca).to_owned())
        .set(f64::NAN);
    }
}
