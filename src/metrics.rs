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

/// Registers descriptions once at start, so `/metrics` explains itself.
pub fn describe() {
    describe_counter!(
        HANDSHAKES,
        "TLS handshakes by direction, result (ok|refused), reason, protocol and cipher suite"
    );
    describe_histogram!(
        HANDSHAKE_DURATION,
        metrics::Unit::Seconds,
        "Time from accept to a finished (or failed) handshake"
    );
    describe_gauge!(CONNECTIONS_ACTIVE, "Connections currently relaying");
    describe_counter!(
        CONNECTIONS,
        "Connections that completed a handshake and were relayed"
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
    describe_counter!(CLOSES, "Relayed connections by how they ended");
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label is the ringseal version"
    );
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// A successful handshake.
pub fn handshake_ok(dir: Direction, protocol: &'static str, suite: &'static str, took: Duration) {
    counter!(HANDSHAKES, "direction" => dir.as_str(), "result" => "ok", "reason" => "",
        "protocol" => protocol, "cipher_suite" => suite)
    .increment(1);
    histogram!(HANDSHAKE_DURATION, "direction" => dir.as_str(), "result" => "ok").record(took);
}

/// A refused handshake.
pub fn handshake_refused(dir: Direction, reason: Reason, took: Duration) {
    counter!(HANDSHAKES, "direction" => dir.as_str(), "result" => "refused",
        "reason" => reason.as_str(), "protocol" => "", "cipher_suite" => "")
    .increment(1);
    histogram!(HANDSHAKE_DURATION, "direction" => dir.as_str(), "result" => "refused").record(took);
}

pub fn backend_failure(dir: Direction) {
    counter!(BACKEND_FAILURES, "direction" => dir.as_str()).increment(1);
}

pub fn closed(dir: Direction, how: &'static str) {
    counter!(CLOSES, "direction" => dir.as_str(), "how" => how).increment(1);
}

/// Byte counters handed to the relay: one atomic add per chunk moved.
#[derive(Clone)]
pub struct ByteCounters {
    pub from_peer: Counter,
    pub to_peer: Counter,
}

/// Counts a relayed connection and keeps the active gauge up until dropped.
pub struct ActiveConnection {
    gauge: Gauge,
    pub bytes: ByteCounters,
}

impl ActiveConnection {
    pub fn start(dir: Direction, tls: bool) -> Self {
        let tls = if tls { "true" } else { "false" };
        counter!(CONNECTIONS, "direction" => dir.as_str(), "tls" => tls).increment(1);
        let gauge = gauge!(CONNECTIONS_ACTIVE, "direction" => dir.as_str(), "tls" => tls);
        gauge.increment(1.0);
        Self {
            gauge,
            bytes: ByteCounters {
                from_peer: counter!(BYTES, "direction" => dir.as_str(), "flow" => "from_peer"),
                to_peer: counter!(BYTES, "direction" => dir.as_str(), "flow" => "to_peer"),
            },
        }
    }
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}
