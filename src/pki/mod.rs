//! Certificates made with rcgen: a cluster CA and node identities with proper v3 extensions (IP SANs,
//! serverAuth + clientAuth). In memory for `ringseal demo` and the tests (which never ship fixed key
//! material); on disk, with PKCS#12 for Cassandra, through `ringseal certs` ([`files`]).

pub mod files;

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
    /// The CA's private key (PEM), to write it out.
    pub key_pem: String,
}

/// The key type of a new certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyType {
    /// ECDSA P-256: small, fast handshakes, what every peer supports.
    #[default]
    EcdsaP256,
    /// Ed25519: the smallest keys and signatures (rustls, OpenSSL 1.1.1+; Java only from 15 on).
    Ed25519,
    Rsa2048,
    Rsa4096,
}

impl KeyType {
    pub const ALL: [KeyType; 4] = [Self::EcdsaP256, Self::Ed25519, Self::Rsa2048, Self::Rsa4096];

    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ecdsa-p256",
            Self::Ed25519 => "ed25519",
            Self::Rsa2048 => "rsa-2048",
            Self::Rsa4096 => "rsa-4096",
        }
    }

    fn generate(self) -> Result<KeyPair, rcgen::Error> {
        match self {
            Self::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            Self::Rsa2048 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            }
            Self::Rsa4096 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_4096)
            }
            Self::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519),
        }
    }
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
    pub key: KeyType,
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
            key: KeyType::EcdsaP256,
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
        Self::create(cluster, KeyType::EcdsaP256, 10 * 365)
    }

    /// A new CA with the given key type, valid for `days` from an hour ago.
    pub fn create(cluster: &str, key: KeyType, days: u64) -> Result<Self, rcgen::Error> {
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
        params.not_after = now + Duration::from_secs(days * 86400);
        let key = key.generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
            cluster: cluster.to_owned(),
        })
    }

    /// A CA from its certificate and private key (PEM), e.g. written earlier by `ringseal certs ca`.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, rcgen::Error> {
        use rustls_pki_types::pem::PemObject;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
        let key = KeyPair::from_pem(key_pem)?;
        let cluster = crate::tls::x509::CertInfo::parse(&cert_der)
            .and_then(|i| i.ou.into_iter().next())
            .unwrap_or_default();
        Ok(Self {
            issuer: Issuer::from_ca_cert_der(&cert_der, key)?,
            cert_der,
            cert_pem: cert_pem.to_owned(),
            cluster,
            key_pem: key_pem.to_owned(),
        })
    }

    /// Issues a node certificate (ECDSA P-256 key) for `spec`.
    pub fn issue(&self, spec: &NodeSpec) -> Result<Identity, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, &spec.name);
        if !self.cluster.is_empty() {
            params
                .distinguished_name
                .push(DnType::OrganizationalUnitName, &self.cluster);
        }
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
        let key = spec.key.generate()?;
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
    /// Signs a certificate signing request (DER) as a node certificate valid from an hour ago until
    /// `not_after`: its subject, SANs and public key are kept, serverAuth + clientAuth set. Written
    /// with x509-parser rather than rcgen's CSR reader, which refuses the SubjectKeyIdentifier
    /// extension that `keytool -certreq` puts in every request.
    pub fn sign_csr_der(&self, der: &[u8], not_after: OffsetDateTime) -> Result<String, String> {
        use x509_parser::certification_request::X509CertificationRequest;
        use x509_parser::extensions::{GeneralName, ParsedExtension};
        use x509_parser::prelude::FromDer;
        let (_, csr) = X509CertificationRequest::from_der(der)
            .map_err(|e| format!("not a PKCS#10 certificate request: {e}"))?;
        csr.verify_signature()
            .map_err(|e| format!("its signature does not verify ({e:?}): the request was altered or is not self-signed"))?;
        let info = &csr.certification_request_info;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        for rdn in info.subject.iter() {
            for attr in rdn.iter() {
                let oid: Vec<u64> = attr
                    .attr_type()
                    .iter()
                    .map(|it| it.collect())
                    .unwrap_or_default();
                if let Ok(value) = attr.as_str() {
                    params
                        .distinguished_name
                        .push(DnType::from_oid(&oid), value.to_owned());
                }
            }
        }
        for ext in csr.requested_extensions().into_iter().flatten() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    let san = match name {
                        GeneralName::DNSName(d) => {
                            (*d).to_owned().try_into().ok().map(SanType::DnsName)
                        }
                        GeneralName::URI(u) => (*u).to_owned().try_into().ok().map(SanType::URI),
                        GeneralName::IPAddress(b) => match b.len() {
                            4 => <[u8; 4]>::try_from(*b)
                                .ok()
                                .map(|a| SanType::IpAddress(a.into())),
                            16 => <[u8; 16]>::try_from(*b)
                                .ok()
                                .map(|a| SanType::IpAddress(a.into())),
                            _ => None,
                        },
                        _ => None,
                    };
                    params.subject_alt_names.extend(san);
                }
            }
        }
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(3600);
        params.not_after = not_after;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let public = rcgen::SubjectPublicKeyInfo::from_der(info.subject_pki.raw)
            .map_err(|e| format!("unsupported public key: {e}"))?;
        params
            .signed_by(&public, &self.issuer)
            .map(|c| c.pem())
            .map_err(|e| e.to_string())
    }

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
