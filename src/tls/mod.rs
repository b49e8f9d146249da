//! TLS: our key material, the suite and protocol names operators write, peer verification, and the
//! rustls configurations built from them.

pub mod chain_cache;
pub mod jks;
pub mod keystore;
pub mod material;
pub mod suites;
pub mod v1;
pub mod verify;
pub mod x509;

use std::sync::{Arc, OnceLock};

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::sign::SingleCertAndKey;
use rustls::{ClientConfig, ServerConfig};

use crate::config::{CrlExpired, TlsSettings};
use verify::{PeerPolicy, PeerVerifier, ServerVerifier};

/// The one crypto provider: rustls with aws-lc-rs. Held in a static so that library users (tests calling
/// `run()`) get the same provider as the binary without installing a process default.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// The provider restricted to the configured suites.
pub fn provider_for(settings: &TlsSettings) -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: settings.suites.clone(),
        ..(*provider()).clone()
    })
}

fn provider_signature_algs() -> rustls::crypto::WebPkiSupportedAlgorithms {
    provider().signature_verification_algorithms
}

/// The chain verifier every inbound listener wraps: webpki with the cluster CAs, client certificates
/// mandatory unless `require_client_auth = false`.
pub fn client_verifier(
    settings: &TlsSettings,
    provider: Arc<CryptoProvider>,
    policy: Arc<PeerPolicy>,
) -> PeerVerifier {
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(settings.material.roots.clone(), provider)
            .with_crls(settings.material.crls.iter().cloned())
            // A CA without a CRL in tls.crl is not an error: CRLs are optional per CA.
            .allow_unknown_revocation_status();
    if settings.crl_expired == CrlExpired::Deny {
        builder = builder.enforce_revocation_expiration();
    }
    if !settings.require_client_auth {
        builder = builder.allow_unauthenticated();
    }
    if !settings.material.sends_ca_names() {
        builder = builder.clear_root_hint_subjects();
    }
    // The material guarantees at least one root, the only reason build() fails.
    let inner = builder
        .build()
        .expect("a non-empty root store always builds a verifier");
    let v1 = verify::V1Trust::new(
        settings.accept_v1,
        settings.material.clone(),
        settings.crl_expired,
        provider_signature_algs(),
    );
    let chains = chain_cache::ChainCache::new(
        crate::metrics::Direction::Inbound,
        &settings.material,
        settings.crl_expired,
    );
    PeerVerifier::new(inner, policy, Arc::new(v1), chains)
}

/// A server config for one listener (or one connection, when the verifier is bound to the peer's IP).
///
/// Session resumption is off on purpose: a resumed TLS 1.3 session skips the client certificate, which
/// would let a session ticket from one address bypass endpoint verification from another, and outlive a
/// CA removed during rotation. Internode connections are long-lived, so full handshakes cost little.
pub fn server_config(
    settings: &TlsSettings,
    provider: Arc<CryptoProvider>,
    verifier: Arc<PeerVerifier>,
) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&settings.versions)
        .expect("suites and versions were checked against each other when the config was parsed")
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(
            settings.material.certified.clone(),
        )));
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    // kTLS: the relay hands the session keys to the kernel after the handshake.
    config.enable_secret_extraction = true;
    // The operator's cipher_suites order is a preference order, as in Cassandra.
    config.ignore_client_order = true;
    Arc::new(config)
}

/// The client config of an outbound listener: our identity as client certificate, the peer verified by
/// [`ServerVerifier`]. No resumption, for the reasons given at [`server_config`].
pub fn client_config(
    settings: &TlsSettings,
    provider: Arc<CryptoProvider>,
    policy: Arc<PeerPolicy>,
    endpoint_verification: bool,
) -> Arc<ClientConfig> {
    let verifier = ServerVerifier::new(
        settings.material.clone(),
        settings.crl_expired,
        settings.accept_v1,
        provider.clone(),
        policy,
        endpoint_verification,
    );
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&settings.versions)
        .expect("suites and versions were checked against each other when the config was parsed")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(
            settings.material.client_identity().clone(),
        )));
    config.resumption = Resumption::disabled();
    // kTLS: the relay hands the session keys to the kernel after the handshake.
    config.enable_secret_extraction = true;
    Arc::new(config)
}
