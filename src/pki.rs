//! Throwaway certificates made with rcgen: a cluster CA and node identities with proper v3 extensions
//! (IP SANs, serverAuth + clientAuth). Used by `ringseal demo` and by the tests, which never ship fixed
//! key material.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

/// A cluster CA (ECDSA P-256), able to issue node certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub cert_der: CertificateDer<'static>,
    pub cert_pem: String,
    pub cluster: String,
}

/// What a node certificate says and for how long.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub dns: Vec<String>,
    pub usage: Usage,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// Extended key usage of a node certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// What internode certificates need: the node is server and client.
    ServerAndClient,
    ServerOnly,
}

impl NodeSpec {
    /// A node certificate valid from an hour ago for a year, with both purposes.
    pub fn new(name: &str, ips: &[IpAddr]) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            name: name.to_owned(),
            ips: ips.to_vec(),
            dns: Vec::new(),
            usage: Usage::ServerAndClient,
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(365 * 86400),
        }
    }
}

/// A certificate with its private key, as DER and PEM.
pub struct Identity {
    pub cert_der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_der: PrivatePkcs8KeyDer<'static>,
    pub key_pem: String,
}

impl Identity {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key_der.clone_key())
    }
}

impl Ca {
    /// A new CA whose subject carries the cluster name as OU, like the seeds' `OU=TestCluster`.
    pub fn new(cluster: &str) -> Result<Self, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{cluster} CA"));
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, cluster);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(3600);
        params.not_after = now + Duration::from_secs(10 * 365 * 86400);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
            cluster: cluster.to_owned(),
        })
    }

    /// Issues a node certificate (ECDSA P-256 key) for `spec`.
    pub fn issue(&self, spec: &NodeSpec) -> Result<Identity, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, &spec.name);
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, &self.cluster);
        params.subject_alt_names = spec
            .ips
            .iter()
            .map(|ip| SanType::IpAddress(*ip))
            .chain(
                spec.dns
                    .iter()
                    .filter_map(|d| d.clone().try_into().ok().map(SanType::DnsName)),
            )
            .collect();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match spec.usage {
            Usage::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Usage::ServerOnly => vec![ExtendedKeyUsagePurpose::ServerAuth],
        };
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Identity {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            key_der: PrivatePkcs8KeyDer::from(key.serialize_der()),
        })
    }
}

impl Ca {
    /// A CRL (PEM) signed by this CA, revoking `revoked`, valid from an hour ago until `next_update`.
    pub fn crl(
        &self,
        revoked: &[&Identity],
        next_update: OffsetDateTime,
    ) -> Result<String, rcgen::Error> {
        use rcgen::{
            CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber,
        };
        use x509_parser::prelude::{FromDer, X509Certificate};
        let now = OffsetDateTime::now_utc();
        let revoked_certs = revoked
            .iter()
            .filter_map(|id| {
                let (_, cert) = X509Certificate::from_der(id.cert_der.as_ref()).ok()?;
                Some(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(cert.raw_serial()),
                    revocation_time: now - Duration::from_secs(60),
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect();
        let params = CertificateRevocationListParams {
            this_update: (now - Duration::from_secs(3600))
                .min(next_update - Duration::from_secs(60)),
            next_update,
            crl_number: SerialNumber::from(now.unix_timestamp() as u64),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer)?.pem()
    }
}
