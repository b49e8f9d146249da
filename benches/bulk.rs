//! In-memory bulk throughput per cipher suite: an established mutual-TLS pair (ringseal's server
//! configuration, a client restricted to one suite) moves 1 MiB each way per iteration, encrypting
//! and decrypting every record, with no sockets involved. This is the crypto + record-layer ceiling
//! that `ringseal bench` (real sidecar pairs on loopback) can be compared with.
//! `cargo bench --bench bulk`.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ringseal::pki::KeyType;
use ringseal_testkit::Pki;
use ringseal_testkit::memtls::{handshake, pump, suite};
use rustls::crypto::aws_lc_rs::kx_group;

const MIB: usize = 1 << 20;

/// (suite, key type of its certificates): TLS 1.2 suites are tied to the key type.
const SUITES: [(&str, KeyType); 9] = [
    ("TLS_AES_128_GCM_SHA256", KeyType::EcdsaP256),
    ("TLS_AES_256_GCM_SHA384", KeyType::EcdsaP256),
    ("TLS_CHACHA20_POLY1305_SHA256", KeyType::EcdsaP256),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        KeyType::EcdsaP256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        KeyType::EcdsaP256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        KeyType::EcdsaP256,
    ),
    ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", KeyType::Rsa2048),
    ("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", KeyType::Rsa2048),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        KeyType::Rsa2048,
    ),
];

fn bench(c: &mut Criterion) {
    let ecdsa = Pki::of_key("BenchCluster", KeyType::EcdsaP256);
    let rsa = Pki::of_key("BenchCluster", KeyType::Rsa2048);
    let data: Vec<u8> = (0..MIB)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut wire = Vec::with_capacity(256 * 1024);
    let mut sink = vec![0u8; 64 * 1024];
    let mut g = c.benchmark_group("bulk, 1 MiB each way, in memory");
    // Both directions: every byte is encrypted once and decrypted once per direction.
    g.throughput(Throughput::Bytes(2 * MIB as u64));
    for (name, key) in SUITES {
        let pki = if key == KeyType::Rsa2048 {
            &rsa
        } else {
            &ecdsa
        };
        let suite = suite(name);
        let (mut client, mut server) = handshake(
            &pki.restricted_client(suite, kx_group::X25519).unwrap(),
            &pki.server(suite),
        );
        g.bench_function(name, |b| {
            b.iter(|| {
                pump(&mut client, &mut server, &data, &mut wire, &mut sink);
                pump(&mut server, &mut client, &data, &mut wire, &mut sink);
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    // Short: nine suites should take well under a minute.
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
