//! Server-side cost of a full mutual TLS handshake through ringseal's own configuration: the webpki
//! chain check wrapped by `ClientVerifier`, with and without a per-connection verifier for endpoint
//! verification and with an allow-list. In memory (no sockets), so it measures crypto + verification,
//! which is what features must not make heavier. `cargo bench --bench handshake`.
//!
//! A verifier remembers the chains it verified (`tls::chain_cache`), so every case that reuses one
//! measures a reconnecting peer (chain answered from the cache, everything else run); "first contact"
//! builds a fresh verifier per handshake, so the chain is verified in full.

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use ringseal::pki::KeyType;
use ringseal::tls::verify::{AllowList, PeerPolicy};
use ringseal_testkit::Pki;
use ringseal_testkit::memtls::handshake;
use rustls::ClientConfig;

fn bench(c: &mut Criterion) {
    let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    let pki = Pki::of_key("BenchCluster", KeyType::EcdsaP256);
    let mut settings = pki.settings();
    settings.versions = vec![&rustls::version::TLS13];
    let client = Arc::new(
        ClientConfig::builder_with_provider(ringseal::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(pki.roots())
            .with_client_auth_cert(vec![pki.node.cert_der.clone()], pki.node.key())
            .unwrap(),
    );
    let provider = ringseal::tls::provider_for(&settings);
    let verifier = |allow: AllowList| {
        Arc::new(ringseal::tls::client_verifier(
            &settings,
            provider.clone(),
            Arc::new(PeerPolicy { allow }),
        ))
    };

    let mut g = c.benchmark_group("mutual handshake, TLS 1.3, ECDSA P-256");
    let plain =
        ringseal::tls::server_config(&settings, provider.clone(), verifier(AllowList::default()));
    g.bench_function("chain only", |b| b.iter(|| handshake(&client, &plain)));
    g.bench_function(
        "chain only, first contact (fresh verifier and config)",
        |b| {
            b.iter(|| {
                let fresh = verifier(AllowList::default());
                handshake(
                    &client,
                    &ringseal::tls::server_config(&settings, provider.clone(), fresh),
                )
            })
        },
    );
    let base = verifier(AllowList::default());
    g.bench_function("endpoint verification (per-connection config)", |b| {
        b.iter(|| {
            let v = Arc::new(base.for_endpoint(ip));
            handshake(
                &client,
                &ringseal::tls::server_config(&settings, provider.clone(), v),
            )
        })
    });
    let allow = ringseal::tls::server_config(
        &settings,
        provider.clone(),
        verifier(AllowList {
            ou: vec!["BenchCluster".into()],
            ..AllowList::default()
        }),
    );
    g.bench_function("allow-list (OU)", |b| b.iter(|| handshake(&client, &allow)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
