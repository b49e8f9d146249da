//! X.509 version 1 certificates, accepted on request (`tls.accept_v1_certificates`).
//!
//! The commands of many Cassandra guides (`openssl x509 -req` without `-extfile`, see the seed tutorial)
//! produce v1 certificates: no extensions, so no SANs, no key usage, no basic constraints. Java accepts
//! them; webpki (and so rustls's verifiers and its handshake-signature checks, which parse the leaf with
//! webpki) refuses a v1 end-entity certificate outright. This module is the narrow path around that:
//!
//! - a v1 leaf is accepted only when it is signed **directly** by a trusted CA (no intermediates: a v1
//!   certificate cannot say it is a CA, so it cannot be one in a chain);
//! - its signature (through the provider's webpki algorithms, against the CA's public key), its validity
//!   period and the CRLs of its issuer are checked as webpki would check a v3 certificate;
//! - the TLS handshake signature is verified against the leaf's public key with rustls's raw-key helpers.
//!
//! Parsing stays with x509-parser and a ten-line DER walker (for the three raw parts of a signed
//! structure: to-be-signed bytes, algorithm identifier, signature), because neither webpki nor
//! x509-parser hands out the raw AlgorithmIdentifier bytes that webpki's algorithms are matched by.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{CertificateError, DigitallySignedStruct, Error, OtherError, PeerMisbehaved};
use rustls_pki_types::{CertificateDer, SubjectPublicKeyInfoDer, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use super::material::TlsMaterial;
use super::refusal::PolicyRefusal;
use super::settings::CrlExpired;

/// What the v1 path needs: whether it is on, the trusted CAs and CRLs, and the signature algorithms.
#[derive(Debug)]
pub struct V1Trust {
    pub accept: bool,
    material: Arc<TlsMaterial>,
    crl_expired: CrlExpired,
    algs: WebPkiSupportedAlgorithms,
}

impl V1Trust {
    pub fn new(
        accept: bool,
        material: Arc<TlsMaterial>,
        crl_expired: CrlExpired,
        algs: WebPkiSupportedAlgorithms,
    ) -> Self {
        Self {
            accept,
            material,
            crl_expired,
            algs,
        }
    }

    /// Verifies a v1 leaf (see the module docs). With the option off, refuses it naming both remedies.
    pub fn verify_leaf(&self, leaf: &CertificateDer<'_>, now: UnixTime) -> Result<(), Error> {
        let bad = || Error::InvalidCertificate(CertificateError::BadEncoding);
        let (_, cert) = X509Certificate::from_der(leaf.as_ref()).map_err(|_| bad())?;
        if !self.accept {
            return Err(Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(PolicyRefusal::V1Certificate {
                    subject: cert.subject().to_string(),
                })),
            )));
        }
        let signed = Signed::parse(leaf.as_ref()).ok_or_else(bad)?;
        let issuer = cert.issuer().as_raw();
        let mut issuers = self
            .material
            .ca_certs
            .iter()
            .filter_map(|ca| X509Certificate::from_der(ca.as_ref()).ok().map(|(_, c)| c))
            .filter(|ca| ca.subject().as_raw() == issuer)
            .peekable();
        if issuers.peek().is_none() {
            return Err(Error::InvalidCertificate(CertificateError::UnknownIssuer));
        }
        let ca = issuers
            .find(|ca| signed.verify(ca, &self.algs))
            .ok_or(Error::InvalidCertificate(CertificateError::BadSignature))?;

        let validity = cert.validity();
        let (not_before, not_after) = (
            unix_time(validity.not_before.timestamp()),
            unix_time(validity.not_after.timestamp()),
        );
        if now.as_secs() < not_before.as_secs() {
            return Err(Error::InvalidCertificate(
                CertificateError::NotValidYetContext {
                    time: now,
                    not_before,
                },
            ));
        }
        if now.as_secs() > not_after.as_secs() {
            return Err(Error::InvalidCertificate(
                CertificateError::ExpiredContext {
                    time: now,
                    not_after,
                },
            ));
        }
        self.check_revocation(&cert, &ca, now)
    }

    /// The CRLs of the leaf's issuer, each verified against the CA's key, as webpki does for v3.
    fn check_revocation(
        &self,
        leaf: &X509Certificate<'_>,
        ca: &X509Certificate<'_>,
        now: UnixTime,
    ) -> Result<(), Error> {
        for der in &self.material.crls {
            // The material parsed every CRL with this parser at load; should that ever not hold,
            // fail closed rather than skip a list that may revoke this certificate.
            let Ok((_, crl)) = CertificateRevocationList::from_der(der.as_ref()) else {
                return Err(Error::InvalidCertificate(
                    CertificateError::UnknownRevocationStatus,
                ));
            };
            if crl.issuer().as_raw() != leaf.issuer().as_raw() {
                continue;
            }
            let signed_by_ca =
                Signed::parse(der.as_ref()).is_some_and(|s| s.verify(ca, &self.algs));
            if !signed_by_ca {
                return Err(Error::InvalidCertificate(CertificateError::BadSignature));
            }
            if let Some(next) = crl.next_update() {
                let next_update = unix_time(next.timestamp());
                if self.crl_expired == CrlExpired::Deny && next_update.as_secs() < now.as_secs() {
                    return Err(Error::InvalidCertificate(
                        CertificateError::ExpiredRevocationListContext {
                            time: now,
                            next_update,
                        },
                    ));
                }
            }
            if crl
                .iter_revoked_certificates()
                .any(|r| r.raw_serial() == leaf.raw_serial())
            {
                return Err(Error::InvalidCertificate(CertificateError::Revoked));
            }
        }
        Ok(())
    }

    /// TLS 1.2 CertificateVerify / ServerKeyExchange signature by a v1 leaf's key: every algorithm the
    /// scheme maps to is tried, as rustls does for v3.
    pub fn verify_tls12(
        &self,
        message: &[u8],
        leaf: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        let spki = spki(leaf)?;
        let key = webpki::RawPublicKeyEntity::try_from(&spki)
            .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let algs = self
            .algs
            .mapping
            .iter()
            .find(|(scheme, _)| *scheme == dss.scheme)
            .map(|(_, algs)| *algs)
            .ok_or(PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme)?;
        if algs
            .iter()
            .any(|alg| key.verify_signature(*alg, message, dss.signature()).is_ok())
        {
            Ok(HandshakeSignatureValid::assertion())
        } else {
            Err(Error::InvalidCertificate(CertificateError::BadSignature))
        }
    }

    /// TLS 1.3 CertificateVerify by a v1 leaf's key.
    pub fn verify_tls13(
        &self,
        message: &[u8],
        leaf: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature_with_raw_key(message, &spki(leaf)?, dss, &self.algs)
    }
}

/// Whether a certificate is X.509 v1: its TBSCertificate does not start with the `[0]` version field.
pub fn is_v1(der: &[u8]) -> bool {
    Signed::parse(der)
        .and_then(|s| element(s.tbs_contents))
        .is_some_and(|(tag, ..)| tag != 0xa0)
}

fn spki(leaf: &CertificateDer<'_>) -> Result<SubjectPublicKeyInfoDer<'static>, Error> {
    super::x509::spki(leaf)
        .map(SubjectPublicKeyInfoDer::from)
        .ok_or(Error::InvalidCertificate(CertificateError::BadEncoding))
}

fn unix_time(secs: i64) -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs.max(0) as u64))
}

/// The three parts of a signed X.509 structure (certificate or CRL).
struct Signed<'a> {
    /// The whole TBS element: what the signature covers.
    tbs: &'a [u8],
    tbs_contents: &'a [u8],
    /// The contents of the AlgorithmIdentifier, as webpki's algorithm ids are written.
    alg: &'a [u8],
    signature: &'a [u8],
}

impl<'a> Signed<'a> {
    fn parse(der: &'a [u8]) -> Option<Self> {
        let (0x30, outer, _, []) = element(der)? else {
            return None;
        };
        let (0x30, tbs_contents, tbs, rest) = element(outer)? else {
            return None;
        };
        let (0x30, alg, _, rest) = element(rest)? else {
            return None;
        };
        let (0x03, bits, _, []) = element(rest)? else {
            return None;
        };
        let (0, signature) = bits.split_first()? else {
            return None;
        };
        Some(Self {
            tbs,
            tbs_contents,
            alg,
            signature,
        })
    }

    /// Whether `issuer`'s key signed this, with any provider algorithm of the stated identifier.
    fn verify(&self, issuer: &X509Certificate<'_>, algs: &WebPkiSupportedAlgorithms) -> bool {
        let spki = SubjectPublicKeyInfoDer::from(issuer.tbs_certificate.subject_pki.raw);
        let Ok(key) = webpki::RawPublicKeyEntity::try_from(&spki) else {
            return false;
        };
        algs.all
            .iter()
            .filter(|alg| alg.signature_alg_id().as_ref() == self.alg)
            .any(|alg| key.verify_signature(*alg, self.tbs, self.signature).is_ok())
    }
}

/// One DER element: (tag, contents, the whole element, what follows).
type Element<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

/// Reads one DER element with a definite length of up to 4 bytes.
fn element(input: &[u8]) -> Option<Element<'_>> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    let header = input.len() - rest.len();
    Some((tag, &rest[..len], &input[..header + len], &rest[len..]))
}
