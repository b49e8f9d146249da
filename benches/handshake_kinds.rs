//! Full mutual TLS 1.3 handshake cost (client and server together, in memory, through ringseal's
//! server configuration and verifier) per key type of the certificates (ECDSA P-256, Ed25519,
//! RSA 2048, RSA 4096; X25519) and per key exchange group (X25519, secp256r1, X25519MLKEM768;
//! ECDSA P-256). The server's share alone is what `ringseal bench` measures as server CPU per
//! handshake. `cargo bench --bench handshake_kinds`.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use ringseal::pki::KeyType;
use ringseal_testkit::Pki;
use ringseal_testkit::memtls::{handshake, suite};
use rustls::crypto::aws_lc_rs::kx_group;

fn bench(c: &mut Criterion) {
    let suite = suite("TLS_AES_128_GCM_SHA256");
    let mut g = c.benchmark_group("mutual handshake TLS 1.3, X25519, per key type");
    for (name, key) in [
        ("ECDSA P-256", KeyType::EcdsaP256),
        ("Ed25519", KeyType::Ed25519),
        ("RSA 2048", KeyType::Rsa2048),
        ("RSA 4096", KeyType::Rsa4096),
    ] {
        let pki = Pki::of_key("BenchCluster", key);
        let (client, server) = (
            pki.restricted_client(suite, kx_group::X25519).unwrap(),
            pki.server(suite),
        );
        g.bench_function(name, |b| b.iter(|| handshake(&client, &server)));
    }
    g.finish();

    let pki = Pki::of_key("BenchCluster", KeyType::EcdsaP256);
    let server = pki.server(suite);
    let mut g = c.benchmark_group("mutual handshake TLS 1.3, ECDSA P-256, per key exchange");
    for (name, group) in [
        ("X25519", kx_group::X25519),
        ("secp256r1", kx_group::SECP256R1),
        ("X25519MLKEM768", kx_group::X25519MLKEM768),
    ] {
        let client = pki.restricted_client(suite, group).unwrap();
        let (c, _) = handshake(&client, &server);
        assert_eq!(
            c.negotiated_key_exchange_group().map(|k| k.name()),
            Some(group.name())
        );
        g.bench_function(name, |b| b.iter(|| handshake(&client, &server)));
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
