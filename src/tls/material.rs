//! Loading our identity (certificate chain + private key) and the trusted cluster CAs.
//!
//! The result is one immutable [`TlsMaterial`]: every check that can be done before binding a port is done
//! here (file readable, PEM present, key matches certificate, CA bundle not empty, identity not expired),
//! so a running listener never meets a half-valid identity.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::RootCertStore;
use rustls::SupportedCipherSuite;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use super::x509::{CertInfo, fmt_time};

/// The files `[tls]` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// `tls.crl`: certificate revocation lists, PEM or DER.
    pub crls: Vec<PathBuf>,
}

/// Why our own key material is unusable. Every message names the config key and file and says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum MaterialError {
    #[error(
        "{key} {path}: cannot read: {source} (relative paths are resolved against the config file's directory)"
    )]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key} {path}: {message}")]
    Content {
        key: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error(
        "tls.key {key_path} does not match the certificate in tls.cert {cert_path} (their public keys differ); \
         use the private key the certificate was issued for"
    )]
    KeyMismatch {
        key_path: PathBuf,
        cert_path: PathBuf,
    },
    #[error(
        "tls.cert {path}: certificate \"{subject}\" expired at {not_after}; issue a new one from the cluster CA \
         before starting"
    )]
    Expired {
        path: PathBuf,
        subject: String,
        not_after: String,
    },
    #[error(
        "tls.cipher_suites: none of the configured suites can be used with the {key_type} key in tls.key {path} \
         (TLS 1.2 suites are tied to a key type); add a matching TLS_ECDHE_{suggest}_WITH_... suite or a TLS 1.3 suite"
    )]
    NoSuiteForKey {
        path: PathBuf,
        key_type: String,
        suggest: &'static str,
    },
}

/// Identity and trust, ready for rustls. Cheap to share: everything inside is behind an `Arc`.
#[derive(Debug)]
pub struct TlsMaterial {
    pub certified: Arc<CertifiedKey>,
    pub roots: Arc<RootCertStore>,
    /// The leaf certificate of our identity.
    pub identity: CertInfo,
    /// Every trusted CA, in bundle order.
    pub cas: Vec<CertInfo>,
    /// `tls.crl`: revocation lists for peer certificates.
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    /// What the log says about each CRL, in the same order.
    pub crl_info: Vec<CrlInfo>,
}

/// A CRL as the log shows it.
#[derive(Debug, Clone)]
pub struct CrlInfo {
    pub issuer: String,
    pub next_update: Option<SystemTime>,
    pub revoked: usize,
}

impl CrlInfo {
    fn parse(der: &CertificateRevocationListDer<'_>) -> Option<Self> {
        use x509_parser::prelude::FromDer;
        let (_, crl) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(der.as_ref()).ok()?;
        Some(Self {
            issuer: crl.issuer().to_string(),
            next_update: crl.next_update().map(|t| {
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.timestamp().max(0) as u64)
            }),
            revoked: crl.iter_revoked_certificates().count(),
        })
    }
}

/// The bytes of every file `[tls]` names, read in one go: reload compares their fingerprint to notice a
/// change, and parses exactly these bytes, so certificate and key always come from the same read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileBytes {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub ca: Vec<u8>,
    pub crls: Vec<Vec<u8>>,
}

impl FileBytes {
    pub fn read(files: &TlsFiles) -> Result<Self, MaterialError> {
        Ok(Self {
            cert: read("tls.cert", &files.cert)?,
            key: read("tls.key", &files.key)?,
            ca: read("tls.ca", &files.ca)?,
            crls: files
                .crls
                .iter()
                .map(|p| read("tls.crl", p))
                .collect::<Result<_, _>>()?,
        })
    }

    /// A fingerprint of the contents (not of names or times: a symlink swap to identical files is no
    /// change, and a file rewritten in place within the same second is one).
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }
}

impl TlsMaterial {
    /// Reads and checks the files.
    pub fn load(files: &TlsFiles) -> Result<Self, MaterialError> {
        Self::from_files(files, &FileBytes::read(files)?)
    }

    /// Parses and checks the bytes of the files (read together by [`FileBytes::read`]).
    pub fn from_files(files: &TlsFiles, bytes: &FileBytes) -> Result<Self, MaterialError> {
        let chain = certs_from("tls.cert", &files.cert, &bytes.cert)?;
        let key = key_from(&files.key, &bytes.key)?;
        let cas = certs_from("tls.ca", &files.ca, &bytes.ca)?;
        let mut material = Self::from_der(chain, key, cas, Some(files))?;
        for (path, crl) in files.crls.iter().zip(&bytes.crls) {
            material.add_crls(path, crl)?;
        }
        Ok(material)
    }

    /// Builds material from DER (certificates generated in memory, or read from files by [`Self::load`]).
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        cas: Vec<CertificateDer<'static>>,
        files: Option<&TlsFiles>,
    ) -> Result<Self, MaterialError> {
        let path = |f: fn(&TlsFiles) -> &PathBuf| {
            files
                .map(|fs| f(fs).clone())
                .unwrap_or_else(|| "<memory>".into())
        };
        let content = |key: &'static str, p: PathBuf, message: String| MaterialError::Content {
            key,
            path: p,
            message,
        };
        let identity = CertInfo::parse(&chain[0]).ok_or_else(|| {
            content(
                "tls.cert",
                path(|f| &f.cert),
                "the first certificate is not a valid X.509 certificate".into(),
            )
        })?;
        if identity.not_after < SystemTime::now() {
            return Err(MaterialError::Expired {
                path: path(|f| &f.cert),
                subject: identity.subject.clone(),
                not_after: fmt_time(identity.not_after),
            });
        }

        let provider = super::provider();
        let signing_key = provider.key_provider.load_private_key(key).map_err(|e| {
            content(
                "tls.key",
                path(|f| &f.key),
                format!(
                    "the private key cannot be used: {e}; supported are RSA (2048 bits or more), ECDSA P-256/P-384 and Ed25519"
                ),
            )
        })?;
        let certified = CertifiedKey::new(chain, signing_key);
        match certified.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(MaterialError::KeyMismatch {
                    key_path: path(|f| &f.key),
                    cert_path: path(|f| &f.cert),
                });
            }
            // Unknown means the provider could not derive the public key; rustls will still sign with it.
            Err(_) => {}
        }

        let mut roots = RootCertStore::empty();
        let mut infos = Vec::with_capacity(cas.len());
        for (i, ca) in cas.into_iter().enumerate() {
            let info = CertInfo::parse(&ca).ok_or_else(|| {
                content(
                    "tls.ca",
                    path(|f| &f.ca),
                    format!("certificate #{} is not a valid X.509 certificate", i + 1),
                )
            })?;
            roots.add(ca).map_err(|e| {
                content(
                    "tls.ca",
                    path(|f| &f.ca),
                    format!(
                        "certificate #{} (\"{}\") cannot be a trust anchor: {e}",
                        i + 1,
                        info.subject
                    ),
                )
            })?;
            infos.push(info);
        }

        Ok(Self {
            certified: Arc::new(certified),
            roots: Arc::new(roots),
            identity,
            cas: infos,
            crls: Vec::new(),
            crl_info: Vec::new(),
        })
    }

    /// Adds the revocation lists in `bytes` (PEM "X509 CRL" blocks, or one DER CRL), read from `path`.
    pub fn add_crls(&mut self, path: &Path, bytes: &[u8]) -> Result<(), MaterialError> {
        let content = |message: String| MaterialError::Content {
            key: "tls.crl",
            path: path.to_owned(),
            message,
        };
        let mut crls = CertificateRevocationListDer::pem_slice_iter(bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| content(format!("malformed PEM: {e}")))?;
        if crls.is_empty() {
            if !looks_like_der(bytes) {
                return Err(content(
                    "no \"BEGIN X509 CRL\" block and not a DER CRL either; export the CRL from the CA \
                     (`openssl ca -gencrl -out crl.pem`)"
                        .into(),
                ));
            }
            crls.push(CertificateRevocationListDer::from(bytes.to_vec()));
        }
        for (i, crl) in crls.into_iter().enumerate() {
            // webpki decides revocation; it must accept the list now, not at the first handshake.
            webpki::OwnedCertRevocationList::from_der(crl.as_ref()).map_err(|e| {
                content(format!("CRL #{} is malformed or unsupported: {e:?}", i + 1))
            })?;
            let info = CrlInfo::parse(&crl)
                .ok_or_else(|| content(format!("CRL #{} cannot be parsed", i + 1)))?;
            self.crl_info.push(info);
            self.crls.push(crl);
        }
        Ok(())
    }

    /// CRLs whose nextUpdate has passed: they may be missing recent revocations.
    pub fn expired_crls(&self, now: SystemTime) -> impl Iterator<Item = &CrlInfo> {
        self.crl_info
            .iter()
            .filter(move |c| c.next_update.is_some_and(|t| t <= now))
    }

    /// Refuses a suite list that cannot work with our key type (a TLS 1.2-only ECDSA list with an RSA key).
    pub fn check_suites(
        &self,
        suites: &[SupportedCipherSuite],
        key_path: &Path,
    ) -> Result<(), MaterialError> {
        let alg = self.certified.key.algorithm();
        if suites.iter().any(|s| s.usable_for_signature_algorithm(alg)) {
            return Ok(());
        }
        Err(MaterialError::NoSuiteForKey {
            path: key_path.to_owned(),
            key_type: format!("{alg:?}"),
            suggest: if alg == rustls::SignatureAlgorithm::RSA {
                "RSA"
            } else {
                "ECDSA"
            },
        })
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, MaterialError> {
    std::fs::read(path).map_err(|source| MaterialError::Read {
        key,
        path: path.to_owned(),
        source,
    })
}

fn certs_from(
    key: &'static str,
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, MaterialError> {
    let content = |message: String| MaterialError::Content {
        key,
        path: path.to_owned(),
        message,
    };
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| content(format!("malformed PEM: {e}")))?;
    if certs.is_empty() {
        let what = if key == "tls.ca" {
            "the trust bundle must hold the cluster CA certificate(s) in PEM"
        } else {
            "expected the node certificate chain in PEM, leaf first"
        };
        let hint = if looks_like_der(bytes) {
            " (this looks like DER: convert with `openssl x509 -inform der -in FILE -out FILE.pem`)"
        } else if contains(bytes, b"PRIVATE KEY-----") {
            " (this file holds a private key, not a certificate)"
        } else {
            ""
        };
        return Err(content(format!(
            "no \"BEGIN CERTIFICATE\" block found; {what}{hint}"
        )));
    }
    Ok(certs)
}

fn key_from(path: &Path, bytes: &[u8]) -> Result<PrivateKeyDer<'static>, MaterialError> {
    let content = |message: String| MaterialError::Content {
        key: "tls.key",
        path: path.to_owned(),
        message,
    };
    if contains(bytes, b"BEGIN ENCRYPTED PRIVATE KEY") || contains(bytes, b"Proc-Type: 4,ENCRYPTED")
    {
        return Err(content(
            "the private key is encrypted with a passphrase; write a plain copy readable only by ringseal \
             (`openssl pkey -in KEY -out KEY.plain && chmod 600 KEY.plain`)"
                .into(),
        ));
    }
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| {
        let hint = if contains(bytes, b"BEGIN CERTIFICATE") {
            " (this file holds a certificate, not a private key: are tls.cert and tls.key swapped?)"
        } else {
            ""
        };
        content(format!(
            "no usable private key ({e}); expected PEM \"PRIVATE KEY\" (PKCS#8), \"RSA PRIVATE KEY\" (PKCS#1) \
             or \"EC PRIVATE KEY\" (SEC1){hint}"
        ))
    })
}

/// DER: a SEQUENCE (0x30) with a long-form length, as every certificate and CRL has.
fn looks_like_der(bytes: &[u8]) -> bool {
    bytes.len() > 2 && bytes[0] == 0x30 && (0x81..=0x84).contains(&bytes[1])
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
