//! Deciding whether a peer is who the cluster says it may be.
//!
//! The chain, validity period and key usage (clientAuth) are checked by rustls-webpki through rustls's
//! `WebPkiClientVerifier`; on top of it [`ClientVerifier`] adds what Cassandra operators expect:
//! `require_endpoint_verification` (the peer's source IP must be an IP SAN of its certificate) and an
//! optional identity allow-list. All of it runs inside the handshake, so a refused peer receives a TLS
//! alert and nothing is ever forwarded for it.
//!
//! Both verifiers answer the chain check from a [`ChainCache`] when the peer presents a chain they
//! verified moments ago (see [`super::chain_cache`] for why that is sound); endpoint verification, the
//! allow-list and the handshake signature run on every handshake regardless.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError,
    PeerIncompatible, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

pub use super::allow::{AllowList, canonical_ip};
use super::chain_cache::ChainCache;
use super::material::TlsMaterial;
pub use super::refusal::PolicyRefusal;
use super::settings::CrlExpired;
use super::v1;
pub use super::v1::V1Trust;
use super::x509::{CertInfo, fmt_time, unix};
use crate::metrics::{Direction, Reason};

/// The checks a listener adds on top of the chain: shared by every connection of that listener.
#[derive(Debug, Default)]
pub struct PeerPolicy {
    pub allow: AllowList,
}

/// A client certificate verifier: webpki for the chain (or the cache of chains it verified), then
/// endpoint verification (when `peer_ip` is set) and the allow-list.
#[derive(Debug)]
pub struct ClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    policy: Arc<PeerPolicy>,
    peer_ip: Option<IpAddr>,
    v1: Arc<V1Trust>,
    /// Chains `inner` has verified: built with it, from the same material and settings.
    chains: Arc<ChainCache>,
    /// `require_client_auth = false`: no CertificateRequest is sent, so no certificate can arrive.
    offer: bool,
}

impl ClientVerifier {
    /// `chains` must be new and belong to `inner`'s trust material and settings: a verdict of one
    /// verifier must never answer for another.
    pub fn new(
        inner: Arc<dyn ClientCertVerifier>,
        policy: Arc<PeerPolicy>,
        v1: Arc<V1Trust>,
        chains: ChainCache,
    ) -> Self {
        Self {
            inner,
            policy,
            peer_ip: None,
            v1,
            chains: Arc::new(chains),
            offer: true,
        }
    }

    /// The same verifier, but the server asks for no client certificate (`require_client_auth =
    /// false`): rustls then refuses one sent unasked, and nothing is verified.
    pub fn without_request(mut self) -> Self {
        self.offer = false;
        self
    }

    /// The same verifier (and chain cache), additionally requiring `peer` to be an IP SAN of the client
    /// certificate.
    pub fn for_endpoint(&self, peer: IpAddr) -> Self {
        Self {
            inner: self.inner.clone(),
            policy: self.policy.clone(),
            peer_ip: Some(canonical_ip(peer)),
            v1: self.v1.clone(),
            chains: self.chains.clone(),
            offer: self.offer,
        }
    }

    /// The verified-chain cache (shared with every [`Self::for_endpoint`] copy).
    pub fn chain_cache(&self) -> &ChainCache {
        &self.chains
    }
}

/// The checks on top of the chain, shared by both directions: with `peer` set, `peer` must be an IP SAN
/// of the certificate (endpoint verification); a non-empty allow-list must match.
pub(crate) fn check_identity(
    end_entity: &CertificateDer<'_>,
    peer: Option<IpAddr>,
    allow: &AllowList,
) -> Result<(), Error> {
    let refuse = |r: PolicyRefusal| {
        Err(Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(r)),
        )))
    };
    if let Some(peer) = peer {
        // A v1 certificate has no extensions, so no IP SAN: it can never pass.
        let matches = !v1::is_v1(end_entity)
            && webpki::EndEntityCert::try_from(end_entity)
                .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?
                .verify_is_valid_for_subject_name(&ServerName::IpAddress(peer.into()))
                .is_ok();
        if !matches {
            let info = CertInfo::parse(end_entity);
            return refuse(PolicyRefusal::EndpointMismatch {
                peer,
                subject: info
                    .as_ref()
                    .map_or_else(String::new, |i| i.subject.clone()),
                sans: info.map_or_else(|| "none".into(), |i| i.ip_sans()),
            });
        }
    }
    if !allow.is_empty() {
        let info = CertInfo::parse(end_entity)
            .ok_or(Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if !allow.allows(&info) {
            return refuse(PolicyRefusal::IdentityNotAllowed {
                subject: info.subject,
                allowed: allow.to_string(),
            });
        }
    }
    Ok(())
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.offer && self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        if v1::is_v1(end_entity) {
            self.v1.verify_leaf(end_entity, now)?;
        } else {
            self.chains.verify(end_entity, intermediates, now, || {
                self.inner
                    .verify_client_cert(end_entity, intermediates, now)
                    .map(|_| ())
            })?;
        }
        // Per connection, hit or miss.
        check_identity(end_entity, self.peer_ip, &self.policy.allow)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        if v1::is_v1(cert) {
            return self.v1.verify_tls12(message, cert, dss);
        }
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        if v1::is_v1(cert) {
            return self.v1.verify_tls13(message, cert, dss);
        }
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The server certificate verifier of outbound connections. Like Cassandra, it does not match DNS names:
/// the chain must lead to a CA in `tls.ca` (webpki, serverAuth usage); with endpoint verification the
/// dialed IP must be an IP SAN; the allow-list applies as inbound. rustls's stock verifier always
/// matches the server name, hence this one.
#[derive(Debug)]
pub struct ServerVerifier {
    material: Arc<TlsMaterial>,
    v1: V1Trust,
    crl_expired: CrlExpired,
    provider: Arc<rustls::crypto::CryptoProvider>,
    policy: Arc<PeerPolicy>,
    endpoint_verification: bool,
    /// Chains verified with the material, CRLs and settings above.
    chains: ChainCache,
}

impl ServerVerifier {
    pub fn new(
        material: Arc<TlsMaterial>,
        crl_expired: CrlExpired,
        accept_v1: bool,
        provider: Arc<rustls::crypto::CryptoProvider>,
        policy: Arc<PeerPolicy>,
        endpoint_verification: bool,
    ) -> Self {
        Self {
            v1: V1Trust::new(
                accept_v1,
                material.clone(),
                crl_expired,
                provider.signature_verification_algorithms,
            ),
            chains: ChainCache::new(Direction::Outbound, &material, crl_expired),
            material,
            crl_expired,
            provider,
            policy,
            endpoint_verification,
        }
    }

    /// The verified-chain cache of this verifier.
    pub fn chain_cache(&self) -> &ChainCache {
        &self.chains
    }

    /// The full chain check: webpki, serverAuth usage, `tls.crl` with the `crl_expired` policy.
    fn verify_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), Error> {
        let ee = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let crl_refs: Vec<&webpki::CertRevocationList<'_>> =
            self.material.parsed_crls.iter().collect();
        let revocation = webpki::RevocationOptionsBuilder::new(&crl_refs)
            .ok()
            .map(|b| {
                b.with_status_policy(webpki::UnknownStatusPolicy::Allow)
                    .with_expiration_policy(match self.crl_expired {
                        CrlExpired::Deny => webpki::ExpirationPolicy::Enforce,
                        CrlExpired::Warn => webpki::ExpirationPolicy::Ignore,
                    })
                    .build()
            });
        ee.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &self.material.roots.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            revocation,
            None,
        )
        .map(|_| ())
        .map_err(webpki_error)
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if v1::is_v1(end_entity) {
            self.v1.verify_leaf(end_entity, now)?;
        } else {
            self.chains.verify(end_entity, intermediates, now, || {
                self.verify_chain(end_entity, intermediates, now)
            })?;
        }
        // Per connection, hit or miss. Outbound connections are always made to an IP address, which is
        // the "server name" here.
        let dialed = match server_name {
            ServerName::IpAddress(ip) if self.endpoint_verification => {
                Some(canonical_ip(IpAddr::from(*ip)))
            }
            _ => None,
        };
        check_identity(end_entity, dialed, &self.policy.allow)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        if v1::is_v1(cert) {
            return self.v1.verify_tls12(message, cert, dss);
        }
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        if v1::is_v1(cert) {
            return self.v1.verify_tls13(message, cert, dss);
        }
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// webpki's verdict in rustls's terms (rustls's own mapping is private), so `classify` and the alert
/// sent to the peer are the same for both directions.
pub fn webpki_error(e: webpki::Error) -> Error {
    use webpki::Error as W;
    Error::InvalidCertificate(match e {
        W::BadDer | W::BadDerTime => CertificateError::BadEncoding,
        W::CertExpired { time, not_after } => CertificateError::ExpiredContext { time, not_after },
        W::CertNotValidYet { time, not_before } => {
            CertificateError::NotValidYetContext { time, not_before }
        }
        W::CertRevoked => CertificateError::Revoked,
        W::UnknownIssuer => CertificateError::UnknownIssuer,
        W::UnknownRevocationStatus => CertificateError::UnknownRevocationStatus,
        W::CrlExpired { time, next_update } => {
            CertificateError::ExpiredRevocationListContext { time, next_update }
        }
        W::InvalidSignatureForPublicKey | W::InvalidCrlSignatureForPublicKey => {
            CertificateError::BadSignature
        }
        W::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
        W::UnsupportedSignatureAlgorithmContext(_)
        | W::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => CertificateError::BadSignature,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    })
}

/// Turns a handshake error into a metrics reason and a sentence for the log.
pub fn classify(err: &Error) -> (Reason, String) {
    use CertificateError as C;
    match err {
        Error::NoCertificatesPresented => (
            Reason::NoCertificate,
            "peer presented no client certificate (tls.require_client_auth = true)".into(),
        ),
        Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => (
                Reason::UnknownCa,
                "certificate is not signed by a CA in the trust bundle tls.ca (unknown CA)".into(),
            ),
            C::BadSignature => (
                Reason::BadSignature,
                "certificate signature does not verify against the CA of the same name in tls.ca \
                 (signed by another key: a CA regenerated under the same name, or a forgery)"
                    .into(),
            ),
            #[allow(deprecated)]
            C::UnsupportedSignatureAlgorithm
            | C::UnsupportedSignatureAlgorithmContext { .. }
            | C::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => (
                Reason::BadSignature,
                "certificate is signed with an unsupported algorithm (e.g. SHA-1 or MD5)".into(),
            ),
            C::Expired => (Reason::Expired, "certificate has expired".into()),
            C::ExpiredContext { time, not_after } => (
                Reason::Expired,
                format!(
                    "certificate expired at {} (now {})",
                    fmt_time(unix(not_after)),
                    fmt_time(unix(time))
                ),
            ),
            C::NotValidYet => (Reason::NotYetValid, "certificate is not valid yet".into()),
            C::NotValidYetContext { time, not_before } => (
                Reason::NotYetValid,
                format!(
                    "certificate is not valid before {} (now {}; check both clocks)",
                    fmt_time(unix(not_before)),
                    fmt_time(unix(time))
                ),
            ),
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => (
                Reason::InvalidPurpose,
                "certificate's extended key usage does not allow this role (clientAuth for a connecting \
                 node, serverAuth for an accepting one); internode certificates need both"
                    .into(),
            ),
            C::Revoked => (
                Reason::Revoked,
                "certificate has been revoked (it is listed in a CRL of tls.crl)".into(),
            ),
            C::ExpiredRevocationList | C::ExpiredRevocationListContext { .. } => (
                Reason::Revoked,
                "the CRL for this certificate's issuer is past its nextUpdate and tls.crl_expired = \
                 \"deny\"; publish a fresh CRL (or set crl_expired = \"warn\")"
                    .into(),
            ),
            C::Other(OtherError(e)) => match e.downcast_ref::<PolicyRefusal>() {
                Some(r @ PolicyRefusal::EndpointMismatch { .. }) => {
                    (Reason::EndpointMismatch, r.to_string())
                }
                Some(r @ PolicyRefusal::IdentityNotAllowed { .. }) => {
                    (Reason::IdentityNotAllowed, r.to_string())
                }
                Some(r @ PolicyRefusal::V1Certificate { .. }) => (Reason::V1Certificate, r.to_string()),
                None => match e.downcast_ref::<webpki::Error>() {
                    Some(
                        w @ (webpki::Error::MaximumPathDepthExceeded
                        | webpki::Error::MaximumSignatureChecksExceeded
                        | webpki::Error::MaximumPathBuildCallsExceeded
                        | webpki::Error::MaximumNameConstraintComparisonsExceeded),
                    ) => (
                        Reason::ChainTooDeep,
                        format!(
                            "certificate chain refused: {w:?} (more than 6 intermediate CAs, or too \
                             many candidate issuers to build a path; send the leaf and the \
                             intermediates that lead to a CA in tls.ca)"
                        ),
                    ),
                    _ => (Reason::Other, format!("certificate refused: {e}")),
                },
            },
            other => (Reason::Other, format!("certificate refused: {other:?}")),
        },
        Error::PeerIncompatible(p) => {
            use PeerIncompatible as P;
            match p {
                P::SupportedVersionsExtensionRequired
                | P::Tls12NotOffered
                | P::Tls12NotOfferedOrEnabled
                | P::ServerTlsVersionIsDisabledByOurConfig
                | P::ServerDoesNotSupportTls12Or13 => (
                    Reason::ProtocolVersion,
                    "no shared protocol version (the peer offers only versions tls.protocols does not allow)"
                        .into(),
                ),
                // A hello without signature_algorithms comes from a TLS 1.0/1.1-only client.
                P::SignatureAlgorithmsExtensionRequired => (
                    Reason::ProtocolVersion,
                    "the peer offers only TLS 1.0/1.1 (its hello lacks signature_algorithms); \
                     ringseal speaks TLS 1.2 and 1.3"
                        .into(),
                ),
                P::NoCipherSuitesInCommon => (
                    Reason::NoSharedCipher,
                    "no shared cipher suite (compare the peer's suites with tls.cipher_suites)".into(),
                ),
                other => (
                    Reason::NoSharedCipher,
                    format!("no shared parameters: {other:?}"),
                ),
            }
        }
        Error::AlertReceived(a) => (
            Reason::PeerAlert,
            format!("peer aborted the handshake with alert {a:?} (it refused our certificate or settings)"),
        ),
        Error::InvalidMessage(m) => (Reason::Other, format!("malformed TLS message: {m:?}")),
        other => (Reason::Other, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_mapped_addresses_are_ipv4() {
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(canonical_ip(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(canonical_ip(v6), v6);
    }

    #[test]
    fn allow_list_matches_any_listed_value() {
        let info = CertInfo {
            subject: "CN=node1, OU=TestCluster".into(),
            issuer: String::new(),
            serial: String::new(),
            version: 3,
            not_before: std::time::UNIX_EPOCH,
            not_after: std::time::UNIX_EPOCH,
            ou: vec!["TestCluster".into()],
            cn: vec!["node1".into()],
            dns: vec!["Node1.Example".into()],
            ips: vec!["::ffff:10.0.0.1".parse().unwrap()],
            uris: vec!["spiffe://c/node1".into()],
        };
        let only = |f: fn(&mut AllowList)| {
            let mut a = AllowList::default();
            f(&mut a);
            a.allows(&info)
        };
        assert!(only(|a| a.ou = vec!["TestCluster".into()]));
        assert!(!only(|a| a.ou = vec!["OtherCluster".into()]));
        assert!(only(|a| a.cn = vec!["node1".into()]));
        assert!(only(|a| a.dns = vec!["node1.example".into()]));
        assert!(only(|a| a.ip = vec!["10.0.0.1".parse().unwrap()]));
        assert!(only(|a| a.uri = vec!["spiffe://c/node1".into()]));
        assert!(!only(|a| a.uri = vec!["spiffe://c/node2".into()]));
    }

    #[test]
    fn classify_names_reasons() {
        let (r, m) = classify(&Error::PeerIncompatible(
            PeerIncompatible::SignatureAlgorithmsExtensionRequired,
        ));
        assert_eq!(r, Reason::ProtocolVersion);
        assert!(m.contains("TLS 1.0/1.1"), "{m}");
        let (r, _) = classify(&Error::PeerIncompatible(
            PeerIncompatible::NoCipherSuitesInCommon,
        ));
        assert_eq!(r, Reason::NoSharedCipher);
        let (r, m) = classify(&Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(PolicyRefusal::EndpointMismatch {
                peer: "10.0.0.9".parse().unwrap(),
                subject: "CN=node2".into(),
                sans: "10.0.0.2".into(),
            })),
        )));
        assert_eq!(r, Reason::EndpointMismatch);
        assert!(
            m.contains("10.0.0.9") && m.contains("IP SANs: 10.0.0.2"),
            "{m}"
        );
        let (r, _) = classify(&Error::InvalidCertificate(CertificateError::UnknownIssuer));
        assert_eq!(r, Reason::UnknownCa);
        let (r, _) = classify(&Error::NoCertificatesPresented);
        assert_eq!(r, Reason::NoCertificate);
        let (r, m) = classify(&Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(webpki::Error::MaximumPathDepthExceeded)),
        )));
        assert_eq!(r, Reason::ChainTooDeep);
        assert!(m.contains("MaximumPathDepthExceeded"), "{m}");
    }
}
