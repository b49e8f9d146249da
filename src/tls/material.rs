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
use zeroize::Zeroizing;

pub use super::error::MaterialError;
use super::error::{CertFile, ContentProblem, Lookalike};
use super::keystore;
use super::settings::{IdentityFiles, Password, StoreFile, TlsFiles, TrustFiles};
use super::x509::{CertInfo, fmt_time};
use crate::files;
use crate::secret::Secret;

impl TlsFiles {
    /// Every file to read, with the config key that names it.
    pub(super) fn paths(&self) -> Vec<(&'static str, &Path)> {
        fn store<'a>(s: &'a StoreFile, paths: &mut Vec<(&'static str, &'a Path)>) {
            paths.push((s.key, s.path.as_path()));
            if let Password::File(p) = &s.password {
                paths.push((password_file_key(s.key), p.as_path()));
            }
        }
        let mut paths = Vec::new();
        for identity in std::iter::once(&self.identity).chain(&self.outbound_identity) {
            match identity {
                IdentityFiles::Pem { cert, key } => {
                    paths.push(("tls.cert", cert.as_path()));
                    paths.push(("tls.key", key.as_path()));
                }
                IdentityFiles::Store(s) => store(s, &mut paths),
            }
        }
        match &self.trust {
            TrustFiles::Pem(ca) => paths.push(("tls.ca", ca.as_path())),
            TrustFiles::Store(s) => store(s, &mut paths),
        }
        paths.extend(self.crls.iter().map(|c| ("tls.crl", c.as_path())));
        paths
    }
}

fn password_file_key(store_key: &'static str) -> &'static str {
    match store_key {
        "tls.keystore" => "tls.keystore_password_file",
        "tls.truststore" => "tls.truststore_password_file",
        _ => "tls.outbound_keystore_password_file",
    }
}

/// Where each part of the material came from (config key and file), for messages.
#[derive(Debug, Clone)]
pub struct Origins {
    pub cert: (&'static str, PathBuf),
    pub key: (&'static str, PathBuf),
    pub ca: (&'static str, PathBuf),
}

/// The most bytes of CA names a CertificateRequest carries. Peers refuse handshake messages above
/// 64 KiB (rustls: "excessive message size"), so a bundle whose names take more than half of that is
/// not announced at all: no names, and peers choose their certificate without the hint (a node has
/// one).
pub const CA_NAMES_LIMIT: usize = 32 * 1024;

/// Identity and trust, ready for rustls. Cheap to share: everything inside is behind an `Arc`.
#[derive(Debug)]
pub struct TlsMaterial {
    pub certified: Arc<CertifiedKey>,
    /// `tls.outbound_keystore`: the client certificate outbound connections present, when it differs.
    pub outbound: Option<(Arc<CertifiedKey>, CertInfo)>,
    pub roots: Arc<RootCertStore>,
    /// The trusted CA certificates themselves (the v1 path checks signatures against them).
    pub ca_certs: Vec<CertificateDer<'static>>,
    /// The leaf certificate of our identity.
    pub identity: CertInfo,
    /// Where the identity and trust came from, for messages.
    pub origins: Origins,
    /// Every trusted CA, in bundle order.
    pub cas: Vec<CertInfo>,
    /// `tls.crl`: revocation lists for peer certificates.
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    /// The same lists as webpki parsed them at load, for verifiers that use them directly (so no
    /// verifier can ever drop one that fails to parse later).
    pub parsed_crls: Vec<webpki::CertRevocationList<'static>>,
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
/// change, and parses exactly these bytes, so certificate and key always come from the same read. They
/// include private keys and password files: wiped when dropped, and `Debug` shows only names and sizes.
#[derive(Clone, PartialEq, Eq)]
pub struct FileBytes {
    files: Vec<(PathBuf, Zeroizing<Vec<u8>>)>,
}

impl std::fmt::Debug for FileBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(
                self.files
                    .iter()
                    .map(|(p, b)| (p.display(), format!("<{} bytes>", b.len()))),
            )
            .finish()
    }
}

impl FileBytes {
    pub fn read(files: &TlsFiles) -> Result<Self, MaterialError> {
        let mut read_files: Vec<(PathBuf, Zeroizing<Vec<u8>>)> = Vec::new();
        for (key, path) in files.paths() {
            if !read_files.iter().any(|(p, _)| p == path) {
                read_files.push((path.to_owned(), read(key, path)?));
            }
        }
        Ok(Self { files: read_files })
    }

    /// Files read one by one (a diagnosis reads on past an unreadable one).
    pub(super) fn from_read(files: Vec<(PathBuf, Zeroizing<Vec<u8>>)>) -> Self {
        Self { files }
    }

    pub(super) fn get(&self, path: &Path) -> &[u8] {
        self.files
            .iter()
            .find(|(p, _)| p == path)
            .map_or(&[], |(_, b)| b.as_slice())
    }

    /// A fingerprint of the contents (not of names or times: a symlink swap to identical files is no
    /// change, and a file rewritten in place within the same second is one).
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for (path, bytes) in &self.files {
            path.hash(&mut h);
            bytes.as_slice().hash(&mut h);
        }
        h.finish()
    }

    fn password(&self, store: &StoreFile) -> Result<Option<Secret>, MaterialError> {
        Ok(match &store.password {
            Password::None => None,
            Password::Inline(s) => Some(s.clone()),
            Password::Env(var) => Some(Secret::new(std::env::var(var).map_err(|source| {
                MaterialError::PasswordEnv {
                    key: format!("{}_password_env", store.key),
                    var: var.clone(),
                    source,
                }
            })?)),
            Password::File(p) => Some(keystore::password_from_file(
                password_file_key(store.key),
                p,
                self.get(p),
            )?),
        })
    }

    /// Chain, key and where they came from.
    pub(super) fn identity(
        &self,
        files: &IdentityFiles,
    ) -> Result<
        (
            Vec<CertificateDer<'static>>,
            PrivateKeyDer<'static>,
            Origins,
        ),
        MaterialError,
    > {
        Ok(match files {
            IdentityFiles::Pem { cert, key } => (
                certs_from("tls.cert", cert, self.get(cert))?,
                key_from(key, self.get(key))?,
                Origins {
                    cert: ("tls.cert", cert.clone()),
                    key: ("tls.key", key.clone()),
                    ca: ("tls.ca", PathBuf::new()),
                },
            ),
            IdentityFiles::Store(store) => {
                let id = store.identity(self.get(&store.path), self.password(store)?.as_ref())?;
                let at = (store.key, store.path.clone());
                (
                    id.chain,
                    id.key,
                    Origins {
                        cert: at.clone(),
                        key: at.clone(),
                        ca: at,
                    },
                )
            }
        })
    }
}

impl FileBytes {
    /// The trusted CA certificates and where they came from.
    pub(super) fn trusted(
        &self,
        trust: &TrustFiles,
    ) -> Result<(Vec<CertificateDer<'static>>, (&'static str, PathBuf)), MaterialError> {
        Ok(match trust {
            TrustFiles::Pem(ca) => (
                certs_from("tls.ca", ca, self.get(ca))?,
                ("tls.ca", ca.clone()),
            ),
            TrustFiles::Store(store) => (
                store.trusted(self.get(&store.path), self.password(store)?.as_ref())?,
                (store.key, store.path.clone()),
            ),
        })
    }
}

impl Origins {
    fn memory() -> Self {
        let m = || ("tls", PathBuf::from("<memory>"));
        Self {
            cert: m(),
            key: m(),
            ca: m(),
        }
    }
}

impl TlsMaterial {
    /// Reads and checks the files.
    pub fn load(files: &TlsFiles) -> Result<Self, MaterialError> {
        Self::from_files(files, &FileBytes::read(files)?)
    }

    /// Parses and checks the bytes of the files (read together by [`FileBytes::read`]).
    pub fn from_files(files: &TlsFiles, bytes: &FileBytes) -> Result<Self, MaterialError> {
        let (chain, key, mut origins) = bytes.identity(&files.identity)?;
        let (cas, ca_origin) = bytes.trusted(&files.trust)?;
        origins.ca = ca_origin;
        let mut material = Self::from_der(chain, key, cas, Some(&origins))?;
        if let Some(outbound) = &files.outbound_identity {
            let (chain, key, origins) = bytes.identity(outbound)?;
            let (certified, info) = certify(chain, key, &origins)?;
            material.outbound = Some((Arc::new(certified), info));
        }
        for path in &files.crls {
            material.add_crls(path, bytes.get(path))?;
        }
        Ok(material)
    }

    /// Builds material from DER (certificates generated in memory, or read from files by [`Self::load`]).
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        cas: Vec<CertificateDer<'static>>,
        origins: Option<&Origins>,
    ) -> Result<Self, MaterialError> {
        let origins = origins.cloned().unwrap_or_else(Origins::memory);
        let (certified, identity) = certify(chain, key, &origins)?;
        let (roots, infos) = trust_anchors(&cas, &origins.ca)?;
        Ok(Self {
            certified: Arc::new(certified),
            outbound: None,
            roots: Arc::new(roots),
            ca_certs: cas,
            identity,
            origins,
            cas: infos,
            crls: Vec::new(),
            parsed_crls: Vec::new(),
            crl_info: Vec::new(),
        })
    }

    /// The bytes the trusted CAs' names take in a CertificateRequest (each a DER name with a 2-byte
    /// length).
    pub fn ca_names_len(&self) -> usize {
        self.roots
            .subjects()
            .iter()
            .map(|n| n.as_ref().len() + 2)
            .sum()
    }

    /// Whether the CAs' names fit a CertificateRequest; see [`CA_NAMES_LIMIT`].
    /// Publishes the expiry gauge of our identity and of every trusted CA.
    pub fn publish_expiry(&self, listener: &str) {
        crate::metrics::certificate_expiry(
            listener,
            (&self.identity.subject, self.identity.not_after),
            self.cas
                .iter()
                .map(|ca| (ca.subject.as_str(), ca.not_after)),
        );
    }

    /// After a reload to `new`: the certificates no longer in use stop reporting an expiry.
    pub fn retire_expiry(&self, new: &Self, listener: &str) {
        let old_cas: Vec<&str> = self.cas.iter().map(|c| c.subject.as_str()).collect();
        let new_cas: Vec<&str> = new.cas.iter().map(|c| c.subject.as_str()).collect();
        crate::metrics::certificate_expiry_retired(
            listener,
            (&self.identity.subject, &old_cas),
            (&new.identity.subject, &new_cas),
        );
    }

    pub fn sends_ca_names(&self) -> bool {
        self.ca_names_len() <= CA_NAMES_LIMIT
    }

    /// The identity outbound connections present: `tls.outbound_keystore` when given, else ours.
    pub fn client_identity(&self) -> &Arc<CertifiedKey> {
        self.outbound.as_ref().map_or(&self.certified, |(c, _)| c)
    }

    /// Adds the revocation lists in `bytes` (PEM "X509 CRL" blocks, or one DER CRL), read from `path`.
    pub fn add_crls(&mut self, path: &Path, bytes: &[u8]) -> Result<(), MaterialError> {
        for (crl, parsed, info) in parse_crls(path, bytes)? {
            self.parsed_crls.push(parsed.into());
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
    pub fn check_suites(&self, suites: &[SupportedCipherSuite]) -> Result<(), MaterialError> {
        check_suites(&self.certified, &self.origins.key, suites)
    }
}

/// Refuses a suite list that cannot work with `certified`'s key, read from `origin`.
pub(super) fn check_suites(
    certified: &CertifiedKey,
    origin: &(&'static str, PathBuf),
    suites: &[SupportedCipherSuite],
) -> Result<(), MaterialError> {
    let alg = certified.key.algorithm();
    if suites.iter().any(|s| s.usable_for_signature_algorithm(alg)) {
        return Ok(());
    }
    Err(MaterialError::NoSuiteForKey {
        key: origin.0,
        path: origin.1.clone(),
        key_type: format!("{alg:?}"),
        suggest: if alg == rustls::SignatureAlgorithm::RSA {
            "RSA"
        } else {
            "ECDSA"
        },
    })
}

/// The revocation lists in `bytes` (PEM "X509 CRL" blocks, or one DER CRL), each as webpki and the log
/// see it; `path` is the `tls.crl` file they were read from.
pub(super) fn parse_crls(
    path: &Path,
    bytes: &[u8],
) -> Result<
    Vec<(
        CertificateRevocationListDer<'static>,
        webpki::OwnedCertRevocationList,
        CrlInfo,
    )>,
    MaterialError,
> {
    let content = |problem| MaterialError::Content {
        key: "tls.crl",
        path: path.to_owned(),
        problem: Box::new(problem),
    };
    let mut crls = CertificateRevocationListDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| content(ContentProblem::MalformedPem { error }))?;
    if crls.is_empty() {
        if !looks_like_der(bytes) {
            return Err(content(ContentProblem::NoCrl));
        }
        crls.push(CertificateRevocationListDer::from(bytes.to_vec()));
    }
    let mut parsed_crls = Vec::with_capacity(crls.len());
    for (i, crl) in crls.into_iter().enumerate() {
        // webpki decides revocation; it must accept the list now, not at the first handshake.
        let number = i + 1;
        let parsed = webpki::OwnedCertRevocationList::from_der(crl.as_ref())
            .map_err(|error| content(ContentProblem::CrlRejected { number, error }))?;
        let info = CrlInfo::parse(&crl)
            .ok_or_else(|| content(ContentProblem::CrlUnparsable { number }))?;
        parsed_crls.push((crl, parsed, info));
    }
    Ok(parsed_crls)
}

/// The trusted CAs as a root store, with what we show about each: at least one, each usable as a
/// trust anchor, not all expired. `origin`: the config key and file they came from.
pub(super) fn trust_anchors(
    cas: &[CertificateDer<'static>],
    origin: &(&'static str, PathBuf),
) -> Result<(RootCertStore, Vec<CertInfo>), MaterialError> {
    let content = |problem| MaterialError::Content {
        key: origin.0,
        path: origin.1.clone(),
        problem: Box::new(problem),
    };
    if cas.is_empty() {
        return Err(content(ContentProblem::NoTrustedCa));
    }
    let mut roots = RootCertStore::empty();
    let mut infos = Vec::with_capacity(cas.len());
    for (i, ca) in cas.iter().enumerate() {
        let number = i + 1;
        let info =
            CertInfo::parse(ca).ok_or_else(|| content(ContentProblem::CaInvalid { number }))?;
        roots.add(ca.clone()).map_err(|error| {
            content(ContentProblem::CaNotAnchor {
                number,
                subject: info.subject.clone(),
                error,
            })
        })?;
        infos.push(info);
    }
    // One expired CA among several is normal during a rotation (`check` warns); when every one has
    // expired, no peer can ever be verified.
    let now = SystemTime::now();
    if !infos.is_empty() && infos.iter().all(|ca| ca.not_after < now) {
        let cas = infos
            .iter()
            .map(|ca| (ca.subject.clone(), ca.not_after))
            .collect();
        return Err(content(ContentProblem::AllCasExpired { cas }));
    }
    Ok((roots, infos))
}

/// Pairs a chain with its key: the leaf parses, has not expired, and its public key is the key's.
pub(super) fn certify(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    origins: &Origins,
) -> Result<(CertifiedKey, CertInfo), MaterialError> {
    let (cert_key, cert_path) = &origins.cert;
    let (key_key, key_path) = &origins.key;
    let cert_problem = |problem| MaterialError::Content {
        key: cert_key,
        path: cert_path.clone(),
        problem: Box::new(problem),
    };
    let key_problem = |problem| MaterialError::Content {
        key: key_key,
        path: key_path.clone(),
        problem: Box::new(problem),
    };
    let leaf = chain
        .first()
        .ok_or_else(|| cert_problem(ContentProblem::NoCertificate))?;
    let identity =
        CertInfo::parse(leaf).ok_or_else(|| cert_problem(ContentProblem::LeafInvalid))?;
    if identity.not_after < SystemTime::now() {
        return Err(MaterialError::Expired {
            key: cert_key,
            path: cert_path.clone(),
            subject: identity.subject.clone(),
            not_after: fmt_time(identity.not_after),
        });
    }
    let signing_key = super::suites::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|error| key_problem(ContentProblem::KeyUnusable { error }))?;
    // Compared here rather than with CertifiedKey::keys_match, which parses the leaf with webpki and so
    // cannot judge a v1 certificate.
    let Some(spki) = signing_key.public_key() else {
        // Unknown is not a match: a certificate must never go out beside a key it was not issued for.
        return Err(key_problem(ContentProblem::KeyMatchUnknown));
    };
    let matches = Some(spki.as_ref()) == super::x509::spki(leaf).as_deref();
    if !matches {
        if cert_path == key_path {
            return Err(key_problem(ContentProblem::EntryKeyMismatch));
        }
        return Err(MaterialError::KeyMismatch {
            key_key,
            key_path: key_path.clone(),
            cert_key,
            cert_path: cert_path.clone(),
        });
    }
    Ok((CertifiedKey::new(chain, signing_key), identity))
}

pub(super) fn read(key: &'static str, path: &Path) -> Result<Zeroizing<Vec<u8>>, MaterialError> {
    let limit = match key {
        "tls.cert" | "tls.key" => files::PEM,
        "tls.ca" => files::CA_BUNDLE,
        "tls.crl" => files::CRL,
        k if k.ends_with("_password_file") => files::PASSWORD_FILE,
        _ => files::KEYSTORE,
    };
    files::read(path, limit).map_err(|e| match e {
        files::ReadError::Io(source) => MaterialError::Read {
            key,
            path: path.to_owned(),
            source,
        },
        why => MaterialError::Unusable {
            key,
            path: path.to_owned(),
            why,
        },
    })
}

pub(crate) fn certs_from(
    key: &'static str,
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, MaterialError> {
    let content = |problem| MaterialError::Content {
        key,
        path: path.to_owned(),
        problem: Box::new(problem),
    };
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| content(ContentProblem::MalformedPem { error }))?;
    if certs.is_empty() {
        let role = if key == "tls.ca" {
            CertFile::TrustBundle
        } else {
            CertFile::NodeChain
        };
        let found = if looks_like_der(bytes) {
            Lookalike::Der
        } else if contains(bytes, b"PRIVATE KEY-----") {
            Lookalike::PrivateKey
        } else {
            Lookalike::Unknown
        };
        return Err(content(ContentProblem::NoCertificateBlock { role, found }));
    }
    Ok(certs)
}

pub(crate) fn key_from(path: &Path, bytes: &[u8]) -> Result<PrivateKeyDer<'static>, MaterialError> {
    let content = |problem| MaterialError::Content {
        key: "tls.key",
        path: path.to_owned(),
        problem: Box::new(problem),
    };
    if contains(bytes, b"BEGIN ENCRYPTED PRIVATE KEY") || contains(bytes, b"Proc-Type: 4,ENCRYPTED")
    {
        return Err(content(ContentProblem::KeyEncrypted));
    }
    PrivateKeyDer::from_pem_slice(bytes).map_err(|error| {
        content(ContentProblem::NoPrivateKey {
            error,
            holds_certificate: contains(bytes, b"BEGIN CERTIFICATE"),
        })
    })
}

/// DER: a SEQUENCE (0x30) with a long-form length, as every certificate and CRL has.
fn looks_like_der(bytes: &[u8]) -> bool {
    bytes.len() > 2 && bytes[0] == 0x30 && (0x81..=0x84).contains(&bytes[1])
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Ca, NodeSpec};

    #[test]
    fn file_bytes_never_show_their_contents() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("T").unwrap();
        let id = ca.issue(&NodeSpec::new("n", &[])).unwrap();
        let (cert, key, ca_path) = (
            dir.path().join("n.crt"),
            dir.path().join("n.key"),
            dir.path().join("ca.crt"),
        );
        std::fs::write(&cert, &id.cert_pem).unwrap();
        std::fs::write(&key, &id.key_pem).unwrap();
        std::fs::write(&ca_path, &ca.cert_pem).unwrap();
        let files = TlsFiles {
            identity: IdentityFiles::Pem { cert, key },
            outbound_identity: None,
            trust: TrustFiles::Pem(ca_path),
            crls: Vec::new(),
        };
        let bytes = FileBytes::read(&files).unwrap();
        let shown = format!("{bytes:?}");
        assert!(
            shown.contains("n.key") && shown.contains("bytes>"),
            "{shown}"
        );
        // Neither the text nor the byte values of the key (the derived Debug printed the latter).
        let key_bytes = format!("{:?}", &id.key_pem.as_bytes()[..16]);
        let key_bytes = key_bytes.trim_matches(['[', ']']);
        assert!(
            !shown.contains("PRIVATE KEY") && !shown.contains(key_bytes),
            "{shown}"
        );
    }

    #[test]
    fn material_without_a_trusted_ca_is_refused() {
        let ca = Ca::new("T").unwrap();
        let id = ca.issue(&NodeSpec::new("n", &[])).unwrap();
        let err = TlsMaterial::from_der(vec![id.cert_der.clone()], id.key(), Vec::new(), None)
            .expect_err("no CA at all must not build material (the verifier would panic later)");
        assert!(err.to_string().contains("no trusted CA"), "{err}");
        assert!(
            TlsMaterial::from_der(vec![id.cert_der.clone()], id.key(), vec![ca.cert_der], None)
                .is_ok()
        );
    }
}
