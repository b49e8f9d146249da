//! The integration tests that need no process of their own, as one test binary (one link instead of
//! one per file). `aborts` and `metrics` install the process-wide metrics recorder and count exact
//! values, `ktls_vm` runs itself inside a VM, `fuzz_seeded` includes the fuzz crate's source: they stay
//! binaries of their own.

mod admission;
mod bench;
mod binary;
mod cassandra_yaml;
mod certs;
mod chain_cache;
mod check;
mod cli_config;
mod cluster_netns;
mod conformance;
mod congestion;
mod cql_clients;
mod demo;
mod doctor;
mod downgrade;
mod handover;
mod identity_patterns;
mod jks;
mod keystores;
mod kubernetes;
mod legacy_pki;
mod listener_tls;
mod logs;
mod netns;
mod offload;
mod openssl;
mod outbound;
mod package;
mod permissive;
mod probes;
mod prometheus;
mod refusals;
mod relay;
mod reload;
mod rotation;
mod smoke;
mod status;
mod systemd_notify;
mod units;
