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
use ringseal::pki::{Ca, NodeSpec};
use ringseal::tls::LoadedTls;
use ringseal::tls::material::TlsMaterial;
use ringseal::tls::verify::{AllowList, PeerPolicy};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};

fn handshake(client: &Arc<ClientConfig>, server: Arc<rustls::ServerConfig>) {
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let mut c = ClientConnection::new(client.clone(), name).unwrap();
    let mut s = ServerConnection::new(server).unwrap();
    let mut buf = Vec::with_capacity(16 * 1024);
    while c.is_handshaking() || s.is_handshaking() {
        buf.clear();
        c.write_tls(&mut buf).unwrap();
        s.read_tls(&mut buf.as_slice()).unwrap();
        s.process_new_packets().unwrap();
        buf.clear();
        s.write_tls(&mut buf).unwrap();
        c.read_tls(&mut buf.as_slice()).unwrap();
        c.process_new_packets().unwrap();
    }
}

fn bench(c: &mut Criterion) {
    let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    let ca = Ca::new("BenchCluster").unwrap();
    let node = ca.issue(&NodeSpec::new("node1", &[ip])).unwrap();
    let mut settings = LoadedTls::from_material(
        TlsMaterial::from_der(
            vec![node.cert_der.clone()],
            node.key(),
            vec![ca.cert_der.clone()],
            None,
        )
        .unwrap(),
    );
    settings.versions = vec![&rustls::version::TLS13];
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der.clone()).unwrap();
    let client = Arc::new(
        ClientConfig::builder_with_provider(ringseal::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![node.cert_der.clone()], node.key())
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
    g.bench_function("chain only", |b| {
        b.iter(|| handshake(&client, plain.clone()))
    });
    g.bench_function(
        "chain only, first contact (fresh verifier and config)",
        |b| {
            b.iter(|| {
                let fresh = verifier(AllowList::default());
                handshake(
                    &client,
                    ringseal::tls::server_config(&settings, provider.clone(), fresh),
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
                ringseal::tls::server_config(&settings, provider.clone(), v),
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
    g.bench_function("allow-list (OU)", |b| {
        b.iter(|| handshake(&client, allow.clone()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
