//! Test support for ringseal, shared by the integration tests (`cli/tests`), the criterion benches
//! (`benches/`, `cli/benches/`) and `ringseal bench`: one PKI builder ([`pki`]), one backend standing
//! in for the storage port ([`backend`]), one process spawner ([`process`]), in-process sidecars and
//! TLS clients ([`sidecar`], [`client`]), a CQL stand-in for Cassandra's client port ([`cql`]),
//! in-memory TLS ([`memtls`]), a peer's TLS port seen from the peer ([`tls_peer`]), seeded streams
//! ([`stream`]), seeded mutations ([`mutate`]), network namespaces ([`netns`]), external tools
//! ([`tools`]) and metrics scraping ([`scrape`]).
//!
//! Everything panics on failure (a test's failure is its message) except what `ringseal bench` uses
//! at run time, which returns errors an operator can read.

pub mod backend;
pub mod client;
pub mod cql;
pub mod memtls;
pub mod mutate;
pub mod netns;
pub mod pki;
pub mod process;
pub mod scrape;
pub mod sidecar;
pub mod stream;
pub mod tls_peer;
pub mod tools;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

pub use backend::{Backend, Mode};
pub use client::{Tls, client, connect, connect_from, echo, roundtrip};
pub use pki::Pki;
pub use scrape::{sample, samples, scrape};
pub use sidecar::{Sidecar, TLS_TABLE, config, config_with, start_out, write_config};
pub use tls_peer::TlsPeer;

pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Bounds a step that must finish; a hang fails the test instead of blocking CI.
pub async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: did not finish within 30s"))
}
