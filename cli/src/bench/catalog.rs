//! The names of everything the bench measures and reports: cipher suites (with each peer's name for
//! them), key types, key exchange groups, tests, peers and metrics. Data only; nothing here runs.

use rustls::crypto::SupportedKxGroup;

/// A cipher suite the bench can force on every peer, with the names each one wants.
#[derive(Debug)]
pub struct Suite {
    /// IANA name: what ringseal's `tls.cipher_suites` and HAProxy's `ciphersuites` take for TLS 1.3.
    pub iana: &'static str,
    /// OpenSSL name (for TLS 1.3 the same as IANA).
    pub openssl: &'static str,
    /// A short label for the chart.
    pub short: &'static str,
    pub tls13: bool,
    /// The certificate a TLS 1.2 suite needs (`None`: TLS 1.3, any key type).
    pub tls12_key: Option<KeyType>,
}

impl Suite {
    /// The key type its certificates have in this bench: TLS 1.3 suites use ECDSA P-256.
    pub fn key_type(&self) -> KeyType {
        self.tls12_key.unwrap_or(KeyType::EcdsaP256)
    }

    pub fn protocol(&self) -> &'static str {
        if self.tls13 { "TLSv1.3" } else { "TLSv1.2" }
    }
}

const fn suite(
    iana: &'static str,
    openssl: &'static str,
    short: &'static str,
    tls12_key: Option<KeyType>,
) -> Suite {
    Suite {
        iana,
        openssl,
        short,
        tls13: tls12_key.is_none(),
        tls12_key,
    }
}

/// Every suite rustls implements (the ones `config/ringseal.toml` lists), in that order.
#[rustfmt::skip]
pub static SUITES: [Suite; 9] = [
    suite("TLS_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256", "1.3 AES-128-GCM", None),
    suite("TLS_AES_256_GCM_SHA384", "TLS_AES_256_GCM_SHA384", "1.3 AES-256-GCM", None),
    suite("TLS_CHACHA20_POLY1305_SHA256", "TLS_CHACHA20_POLY1305_SHA256", "1.3 CHACHA20", None),
    suite("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256", "1.2 ECDSA AES-128", Some(KeyType::EcdsaP256)),
    suite("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "ECDHE-ECDSA-AES256-GCM-SHA384", "1.2 ECDSA AES-256", Some(KeyType::EcdsaP256)),
    suite("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305", "1.2 ECDSA CHACHA20", Some(KeyType::EcdsaP256)),
    suite("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "1.2 RSA AES-128", Some(KeyType::Rsa2048)),
    suite("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "ECDHE-RSA-AES256-GCM-SHA384", "1.2 RSA AES-256", Some(KeyType::Rsa2048)),
    suite("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", "ECDHE-RSA-CHACHA20-POLY1305", "1.2 RSA CHACHA20", Some(KeyType::Rsa2048)),
];

/// The suite of the handshake, key-exchange, s_time and memory tests.
pub fn default_suite() -> &'static Suite {
    &SUITES[0]
}

/// A suite by IANA or OpenSSL name, case-insensitively.
pub fn find_suite(name: &str) -> Option<&'static Suite> {
    let name = name.trim();
    SUITES
        .iter()
        .find(|s| s.iana.eq_ignore_ascii_case(name) || s.openssl.eq_ignore_ascii_case(name))
}

/// `--key-types`: the key type of the CA and node certificates.
pub use ringseal::pki::KeyType;

/// `--groups`: a TLS 1.3 key exchange group, offered alone by the handshake driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Group {
    X25519,
    Secp256r1,
    #[value(name = "x25519mlkem768")]
    X25519Mlkem768,
}

impl Group {
    pub const ALL: [Group; 3] = [Self::X25519, Self::Secp256r1, Self::X25519Mlkem768];

    pub fn name(self) -> &'static str {
        match self {
            Self::X25519 => "X25519",
            Self::Secp256r1 => "secp256r1",
            Self::X25519Mlkem768 => "X25519MLKEM768",
        }
    }

    pub fn rustls(self) -> &'static dyn SupportedKxGroup {
        use rustls::crypto::aws_lc_rs::kx_group;
        match self {
            Self::X25519 => kx_group::X25519,
            Self::Secp256r1 => kx_group::SECP256R1,
            Self::X25519Mlkem768 => kx_group::X25519MLKEM768,
        }
    }
}

/// `--tests`: what to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Test {
    /// One connection streams `--bytes` through the pair: Gbit/s and proxy CPU-seconds per GB.
    Bulk,
    /// 1 KiB ping-pong through the pair: p50/p99 round trip minus the direct one.
    Latency,
    /// New connections through the pair, each a full mutual handshake between the two proxies.
    Handshake,
    /// TLS handshakes straight to the inbound proxy with one key exchange group offered.
    Kx,
    /// `openssl s_time -new` with a client certificate against the inbound proxy, twice: the client
    /// closing right after each handshake, and sending one request (`-www`) on each connection.
    #[value(name = "s_time")]
    STime,
    /// Memory of the pair at `--connections` idle established connections.
    Memory,
    /// Cassandra-like internode traffic: many long-lived connections, each with a few small
    /// messages (and the odd large one) in flight to an echo backend: messages/s, proxy CPU-µs per
    /// message, p50/p99/p99.9 round trip.
    Messages,
}

impl Test {
    pub const ALL: [Test; 7] = [
        Self::Bulk,
        Self::Latency,
        Self::Messages,
        Self::Handshake,
        Self::Kx,
        Self::STime,
        Self::Memory,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Bulk => "bulk",
            Self::Latency => "latency",
            Self::Handshake => "handshake",
            Self::Kx => "kx",
            Self::STime => "s_time",
            Self::Memory => "memory",
            Self::Messages => "messages",
        }
    }
}

/// What `openssl s_time` does on each connection after its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum STimeClient {
    /// `-new`: closes at once. A proxy may skip the storage-port connection for a client that is
    /// already gone (HAProxy does), so not every peer runs the whole path here.
    Closes,
    /// `-new -www /`: sends one request and reads the reply until the backend closes, so every
    /// proxy runs the whole path (verification, backend connect, relay, close) for every handshake.
    Request,
}

impl STimeClient {
    pub const ALL: [STimeClient; 2] = [Self::Closes, Self::Request];

    /// The JSON and CSV field.
    pub fn id(self) -> &'static str {
        match self {
            Self::Closes => "closes_at_once",
            Self::Request => "one_request",
        }
    }

    /// The row label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Closes => "closes at once",
            Self::Request => "one request (-www)",
        }
    }
}

/// Who is measured: ringseal, an anchor, or the direct loopback baseline (no proxy at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    Ringseal,
    Haproxy,
    Stunnel,
    Nginx,
    /// The load generator talking to the backend directly: the ceiling for throughput and the
    /// round trip that latency figures subtract.
    Direct,
}

impl Peer {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ringseal => "ringseal",
            Self::Haproxy => "haproxy",
            Self::Stunnel => "stunnel",
            Self::Nginx => "nginx",
            Self::Direct => "direct",
        }
    }
}

/// `--compare`: an anchor proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Anchor {
    Stunnel,
    Haproxy,
    Nginx,
}

impl From<Anchor> for Peer {
    fn from(a: Anchor) -> Self {
        match a {
            Anchor::Stunnel => Self::Stunnel,
            Anchor::Haproxy => Self::Haproxy,
            Anchor::Nginx => Self::Nginx,
        }
    }
}

/// The metrics a test yields for a peer (for failure notes and the report's row order).
pub fn metrics_of(test: Test, peer: Peer) -> Vec<Metric> {
    use Metric::*;
    match (test, peer) {
        (Test::Bulk, Peer::Direct) => vec![GbitPerSec],
        (Test::Bulk, _) => vec![GbitPerSec, CpuSecPerGb],
        (Test::Latency, Peer::Direct) => vec![RttP50Us, RttP99Us],
        (Test::Latency, _) => vec![AddedP50Us, AddedP99Us, RttP50Us, RttP99Us],
        (Test::Handshake, _) => vec![HandshakesPerSec, OutCpuMsPerHandshake, InCpuMsPerHandshake],
        (Test::Kx | Test::STime, _) => vec![HandshakesPerSec, ServerCpuMsPerHandshake],
        (Test::Memory, _) => vec![MemKibPerConnPair, MemKibPerConnOut, MemKibPerConnIn],
        (Test::Messages, Peer::Direct) => vec![MessagesPerSec, RttP50Us, RttP99Us, RttP999Us],
        (Test::Messages, _) => vec![
            MessagesPerSec,
            CpuUsPerMessage,
            OutCpuUsPerMessage,
            InCpuUsPerMessage,
            UserCpuUsPerMessage,
            KernelCpuUsPerMessage,
            RttP50Us,
            RttP99Us,
            RttP999Us,
        ],
    }
}

/// Everything the bench reports, with its unit and which direction is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    GbitPerSec,
    CpuSecPerGb,
    AddedP50Us,
    AddedP99Us,
    RttP50Us,
    RttP99Us,
    HandshakesPerSec,
    OutCpuMsPerHandshake,
    InCpuMsPerHandshake,
    ServerCpuMsPerHandshake,
    MemKibPerConnPair,
    MemKibPerConnOut,
    MemKibPerConnIn,
    MessagesPerSec,
    CpuUsPerMessage,
    OutCpuUsPerMessage,
    InCpuUsPerMessage,
    /// Both sides' CPU per message in user space ...
    UserCpuUsPerMessage,
    /// ... and in the kernel (its TCP work on loopback, most of a small message's cost).
    KernelCpuUsPerMessage,
    RttP999Us,
}

impl Metric {
    /// Machine name (JSON, CSV).
    pub fn id(self) -> &'static str {
        match self {
            Self::GbitPerSec => "gbit_per_s",
            Self::CpuSecPerGb => "proxy_cpu_s_per_gb",
            Self::AddedP50Us => "added_latency_p50_us",
            Self::AddedP99Us => "added_latency_p99_us",
            Self::RttP50Us => "rtt_p50_us",
            Self::RttP99Us => "rtt_p99_us",
            Self::HandshakesPerSec => "handshakes_per_s",
            Self::OutCpuMsPerHandshake => "outbound_cpu_ms_per_handshake",
            Self::InCpuMsPerHandshake => "inbound_cpu_ms_per_handshake",
            Self::ServerCpuMsPerHandshake => "server_cpu_ms_per_handshake",
            Self::MemKibPerConnPair => "pair_kib_per_idle_connection",
            Self::MemKibPerConnOut => "outbound_kib_per_idle_connection",
            Self::MemKibPerConnIn => "inbound_kib_per_idle_connection",
            Self::MessagesPerSec => "messages_per_s",
            Self::CpuUsPerMessage => "proxy_cpu_us_per_message",
            Self::OutCpuUsPerMessage => "outbound_cpu_us_per_message",
            Self::InCpuUsPerMessage => "inbound_cpu_us_per_message",
            Self::UserCpuUsPerMessage => "proxy_user_cpu_us_per_message",
            Self::KernelCpuUsPerMessage => "proxy_kernel_cpu_us_per_message",
            Self::RttP999Us => "rtt_p999_us",
        }
    }

    /// Human label (table).
    pub fn label(self) -> &'static str {
        match self {
            Self::GbitPerSec => "Gbit/s",
            Self::CpuSecPerGb => "proxy CPU-s/GB",
            Self::AddedP50Us => "added p50 µs",
            Self::AddedP99Us => "added p99 µs",
            Self::RttP50Us => "RTT p50 µs",
            Self::RttP99Us => "RTT p99 µs",
            Self::HandshakesPerSec => "handshakes/s",
            Self::OutCpuMsPerHandshake => "outbound CPU ms/hs",
            Self::InCpuMsPerHandshake => "inbound CPU ms/hs",
            Self::ServerCpuMsPerHandshake => "server CPU ms/hs",
            Self::MemKibPerConnPair => "pair KiB/conn",
            Self::MemKibPerConnOut => "outbound KiB/conn",
            Self::MemKibPerConnIn => "inbound KiB/conn",
            Self::MessagesPerSec => "messages/s",
            Self::CpuUsPerMessage => "proxy CPU µs/msg",
            Self::OutCpuUsPerMessage => "outbound CPU µs/msg",
            Self::InCpuUsPerMessage => "inbound CPU µs/msg",
            Self::UserCpuUsPerMessage => "user CPU µs/msg",
            Self::KernelCpuUsPerMessage => "kernel CPU µs/msg",
            Self::RttP999Us => "RTT p99.9 µs",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Self::GbitPerSec => "Gbit/s",
            Self::CpuSecPerGb => "CPU-s/GB",
            Self::AddedP50Us
            | Self::AddedP99Us
            | Self::RttP50Us
            | Self::RttP99Us
            | Self::RttP999Us => "us",
            Self::HandshakesPerSec | Self::MessagesPerSec => "1/s",
            Self::CpuUsPerMessage
            | Self::OutCpuUsPerMessage
            | Self::InCpuUsPerMessage
            | Self::UserCpuUsPerMessage
            | Self::KernelCpuUsPerMessage => "CPU-us",
            Self::OutCpuMsPerHandshake
            | Self::InCpuMsPerHandshake
            | Self::ServerCpuMsPerHandshake => "CPU-ms",
            Self::MemKibPerConnPair | Self::MemKibPerConnOut | Self::MemKibPerConnIn => "KiB",
        }
    }

    pub fn higher_is_better(self) -> bool {
        matches!(
            self,
            Self::GbitPerSec | Self::HandshakesPerSec | Self::MessagesPerSec
        )
    }

    /// Decimals in the table.
    pub fn decimals(self) -> usize {
        match self {
            Self::GbitPerSec
            | Self::CpuSecPerGb
            | Self::CpuUsPerMessage
            | Self::OutCpuUsPerMessage
            | Self::InCpuUsPerMessage
            | Self::UserCpuUsPerMessage
            | Self::KernelCpuUsPerMessage => 2,
            Self::OutCpuMsPerHandshake
            | Self::InCpuMsPerHandshake
            | Self::ServerCpuMsPerHandshake => 3,
            Self::HandshakesPerSec | Self::MessagesPerSec => 0,
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suites_by_either_name() {
        assert_eq!(
            find_suite("ecdhe-rsa-aes128-gcm-sha256").unwrap().iana,
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
        );
        assert!(find_suite("TLS_AES_128_GCM_SHA256").unwrap().tls13);
        assert!(find_suite("TLS_RSA_WITH_AES_128_CBC_SHA").is_none());
        // Every suite ringseal's config accepts is in the table, and TLS 1.2 suites say their key.
        let provider = ringseal::tls::provider();
        for s in &provider.cipher_suites {
            let name = ringseal::tls::suites::iana_name(*s);
            let ours = find_suite(name).unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(ours.tls13, ours.tls12_key.is_none());
        }
    }
}
