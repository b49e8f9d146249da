//! TLS: our key material, the suite and protocol names operators write, peer verification, and the
//! rustls configurations built from them.
//!
//! Leaf parts, which read no file and which `config` builds on: [`settings`] (what `[tls]` describes),
//! [`suites`], [`allow`] (with its [`pattern`]s), [`x509`]. [`TlsSettings::load`] reads the files they name into a [`LoadedTls`].

pub mod allow;
pub mod chain_cache;
pub mod diagnosis;
pub mod error;
pub mod jks;
pub mod keystore;
pub mod material;
pub mod pattern;
pub mod refusal;
pub mod settings;
pub mod suites;
pub mod v1;
pub mod verify;
pub mod x509;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::sign::SingleCertAndKey;
use rustls::{ClientConfig, ServerConfig, SupportedCipherSuite, SupportedProtocolVersion};

pub use allow::AllowList;
pub use error::MaterialError;
use material::TlsMaterial;
pub use settings::{CrlExpired, TlsSettings};
pub use suites::provider;
use verify::{ClientVerifier, PeerPolicy, ServerVerifier};

/// `[tls]` with its key material loaded: what the listeners build their rustls configs from.
#[derive(Debug, Clone)]
pub struct LoadedTls {
    /// Where the material came from (what a reload reads again); `None` for in-memory material (the
    /// demo, tests).
    pub files: Option<settings::TlsFiles>,
    pub material: Arc<TlsMaterial>,
    pub versions: Vec<&'static SupportedProtocolVersion>,
    pub suites: Vec<SupportedCipherSuite>,
    pub require_client_auth: settings::ClientAuth,
    pub crl_expired: CrlExpired,
    /// How often the referenced files are checked for changes (SIGHUP reloads at once).
    pub reload_interval: Duration,
    /// `tls.accept_v1_certificates`: X.509 v1 peer certificates signed directly by a trusted CA.
    pub accept_v1: bool,
}

impl TlsSettings {
    /// Reads every file `[tls]` names and checks the material against the settings: the suites can
    /// be used with our key, and an X.509 v1 identity only with `accept_v1_certificates`.
    pub fn load(self) -> Result<LoadedTls, MaterialError> {
        let material = TlsMaterial::load(&self.files)?;
        material.check_suites(&self.suites)?;
        let v1 = std::iter::once(&material.identity)
            .chain(material.outbound.as_ref().map(|(_, info)| info))
            .find(|id| id.version == 1);
        if let (Some(id), false) = (v1, self.accept_v1) {
            let (key, path) = self.files.identity_origin();
            return Err(MaterialError::V1Identity {
                key,
                path: PathBuf::from(path),
                subject: id.subject.clone(),
            });
        }
        Ok(LoadedTls {
            files: Some(self.files),
            material: Arc::new(material),
            versions: self.versions,
            suites: self.suites,
            require_client_auth: self.require_client_auth,
            crl_expired: self.crl_expired,
            reload_interval: self.reload_interval,
            accept_v1: self.accept_v1,
        })
    }
}

impl settings::Negotiation for LoadedTls {
    fn versions(&self) -> &[&'static SupportedProtocolVersion] {
        &self.versions
    }
    fn suites(&self) -> &[SupportedCipherSuite] {
        &self.suites
    }
    fn require_client_auth(&self) -> settings::ClientAuth {
        self.require_client_auth
    }
}

impl LoadedTls {
    /// Settings for in-memory material (the demo, tests, benchmarks): both protocol versions, the
    /// provider's suites, client certificates required, no CRLs.
    pub fn from_material(material: TlsMaterial) -> Self {
        Self {
            files: None,
            material: Arc::new(material),
            versions: rustls::ALL_VERSIONS.to_vec(),
            suites: provider().cipher_suites.clone(),
            require_client_auth: settings::ClientAuth::Required,
            crl_expired: CrlExpired::Deny,
            reload_interval: Duration::from_secs(60),
            accept_v1: false,
        }
    }
}

/// The provider restricted to the configured suites.
pub fn provider_for(settings: &LoadedTls) -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: settings.suites.clone(),
        ..(*provider()).clone()
    })
}

fn provider_signature_algs() -> rustls::crypto::WebPkiSupportedAlgorithms {
    provider().signature_verification_algorithms
}

/// The chain verifier every inbound listener wraps: webpki with the listener's CAs; client certificates
/// mandatory (`require_client_auth = true`), verified when sent (`"optional"`), or not asked for
/// (`false`).
pub fn client_verifier(
    settings: &LoadedTls,
    provider: Arc<CryptoProvider>,
    policy: Arc<PeerPolicy>,
) -> ClientVerifier {
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(settings.material.roots.clone(), provider)
            .with_crls(settings.material.crls.iter().cloned())
            // A CA without a CRL in tls.crl is not an error: CRLs are optional per CA.
            .allow_unknown_revocation_status();
    if settings.crl_expired == CrlExpired::Deny {
        builder = builder.enforce_revocation_expiration();
    }
    if settings.require_client_auth != settings::ClientAuth::Required {
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
    let verifier = ClientVerifier::new(inner, policy, Arc::new(v1), chains);
    if settings.require_client_auth.requests_certificate() {
        verifier
    } else {
        verifier.without_request()
    }
}

/// A server config for one listener (or one connection, when the verifier is bound to the peer's IP).
///
/// Session resumption is off on purpose: a resumed TLS 1.3 session skips the client certificate, which
/// would let a session ticket from one address bypass endpoint verification from another, and outlive a
/// CA removed during rotation. Internode connections are long-lived, so full handshakes cost little.
pub fn server_config(
    settings: &LoadedTls,
    provider: Arc<CryptoProvider>,
    verifier: Arc<ClientVerifier>,
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
    settings: &LoadedTls,
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

/// Digests of what a verified connection depends on, by part: our identity, the trust in peers
/// (CAs, CRLs and how they are applied), the rest of the policy (protocols, suites, client auth and
/// the listener's own rules, `listener_policy`). Two processes compare them at a hand-over, so that
/// a new config's difference for the connections it takes over is said, not silent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyPrint {
    pub identity: String,
    pub trust: String,
    pub policy: String,
}

impl PolicyPrint {
    /// The parts in which `other` differs from this one.
    pub fn differences(&self, other: &Self) -> Vec<&'static str> {
        let mut parts = Vec::new();
        if self.identity != other.identity {
            parts.push("identity");
        }
        if self.trust != other.trust {
            parts.push("trust");
        }
        if self.policy != other.policy {
            parts.push("policy");
        }
        parts
    }
}

impl LoadedTls {
    /// This material's [`PolicyPrint`], with the listener's own rules (allow-list, endpoint
    /// verification, mode ...) as `listener_policy`.
    pub fn print(&self, listener_policy: &str) -> PolicyPrint {
        use aws_lc_rs::digest::{Context, SHA256};
        let hex = |ctx: Context| -> String {
            ctx.finish().as_ref()[..16]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        let m = &self.material;
        let mut identity = Context::new(&SHA256);
        let outbound = m.outbound.as_ref().map(|(k, _)| k.cert.as_slice());
        for cert in m.certified.cert.iter().chain(outbound.unwrap_or_default()) {
            identity.update(&(cert.len() as u64).to_be_bytes());
            identity.update(cert);
        }
        let mut trust = Context::new(&SHA256);
        for der in m
            .ca_certs
            .iter()
            .map(|c| c.as_ref())
            .chain(m.crls.iter().map(|c| c.as_ref()))
        {
            trust.update(&(der.len() as u64).to_be_bytes());
            trust.update(der);
        }
        trust.update(format!("{:?} {}", self.crl_expired, self.accept_v1).as_bytes());
        let mut policy = Context::new(&SHA256);
        let versions: Vec<_> = self.versions.iter().map(|v| v.version).collect();
        let suites: Vec<_> = self.suites.iter().map(|s| s.suite()).collect();
        policy.update(
            format!(
                "{versions:?} {suites:?} {:?} {listener_policy}",
                self.require_client_auth
            )
            .as_bytes(),
        );
        PolicyPrint {
            identity: hex(identity),
            trust: hex(trust),
            policy: hex(policy),
        }
    }
}
