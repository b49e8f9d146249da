//! Java-world key material: keystores (our identity) and truststores (the cluster CAs) as Cassandra nodes
//! already have them, read without converting anything.
//!
//! The format is detected from the content, never from the file name: keytool on JDK 9+ writes PKCS#12
//! even into a file called `node.jks`, and Java itself reads either whatever `store_type` says. Supported:
//! - PKCS#12 (`.p12`, `.pfx`, JDK 9+ `.jks`), AES/PBES2 as JDK 17 writes it and the legacy 3DES/RC2 that
//!   `openssl pkcs12 -legacy` and older JDKs write, through the `p12-keystore` crate;
//! - real JKS (magic `FEEDFEED`, `keytool -storetype JKS`, JDK 8's default), through [`super::jks`];
//! - PEM (Cassandra 4.1+'s `PEMBasedSslContextFactory`): private key and certificates in one file.
//!
//! JCEKS is recognised and refused with the conversion command (its key protection needs MD5 + 3DES for a
//! format Java itself deprecated).

use std::path::Path;

use p12_keystore::Pkcs12Archive;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::error::{ContentProblem, MaterialError};
use super::settings::{StoreFile, StoreType};
use crate::secret::Secret;

/// A private key and its chain (leaf first), as read from a keystore: Java's PrivateKeyEntry (not
/// `pki::Identity`, which ringseal issues).
#[derive(Debug)]
pub struct KeyEntry {
    pub alias: Option<String>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// What a store file turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detected {
    Pkcs12,
    Jks,
    Jceks,
    Pem,
}

fn detect(bytes: &[u8]) -> Option<Detected> {
    if super::jks::is_jks(bytes) {
        Some(Detected::Jks)
    } else if super::jks::is_jceks(bytes) {
        Some(Detected::Jceks)
    } else if bytes.len() > 2 && bytes[0] == 0x30 && bytes[1] >= 0x80 {
        // A DER SEQUENCE with a long-form length: PKCS#12's PFX (a certificate alone would also start so,
        // but then the PKCS#12 parser says precisely what is wrong).
        Some(Detected::Pkcs12)
    } else if memmem(bytes, b"-----BEGIN ") {
        Some(Detected::Pem)
    } else {
        None
    }
}

impl StoreFile {
    fn content(&self, problem: ContentProblem) -> MaterialError {
        MaterialError::Content {
            key: self.key,
            path: self.path.clone(),
            problem: Box::new(problem),
        }
    }

    fn password<'a>(&self, resolved: Option<&'a Secret>) -> &'a str {
        resolved.map_or("", Secret::expose)
    }

    fn detect(&self, bytes: &[u8]) -> Result<Detected, MaterialError> {
        let found = detect(bytes).ok_or_else(|| {
            self.content(ContentProblem::NotAKeystore {
                store_key: self.key,
                stated: self.stated,
                empty: bytes.is_empty(),
            })
        })?;
        if found == Detected::Jceks {
            return Err(self.content(ContentProblem::Jceks {
                store_key: self.key,
                path: self.path.clone(),
            }));
        }
        // The content decides, whatever the stated type says: Cassandra's `store_type` defaults to JKS
        // for files that are PKCS#12 (Java reads both) and applies to keystore and truststore at once.
        Ok(found)
    }

    fn wrong_password(&self, format: StoreType) -> MaterialError {
        self.content(ContentProblem::WrongPassword {
            store_key: self.key,
            format,
        })
    }

    /// Reads our identity: the single key entry, or the one `alias` names.
    pub fn identity(
        &self,
        bytes: &[u8],
        password: Option<&Secret>,
    ) -> Result<KeyEntry, MaterialError> {
        let entries = match self.detect(bytes)? {
            Detected::Pem => return self.pem_identity(bytes),
            Detected::Pkcs12 => self.pkcs12(bytes, password)?.0,
            Detected::Jks => self.jks(bytes, password)?.0,
            Detected::Jceks => unreachable!("refused by detect"),
        };
        self.pick(entries)
    }

    /// Reads the trusted certificates.
    pub fn trusted(
        &self,
        bytes: &[u8],
        password: Option<&Secret>,
    ) -> Result<Vec<CertificateDer<'static>>, MaterialError> {
        let certs = match self.detect(bytes)? {
            Detected::Pem => CertificateDer::pem_slice_iter(bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| self.content(ContentProblem::MalformedPem { error }))?,
            Detected::Pkcs12 => self.pkcs12(bytes, password)?.1,
            Detected::Jks => self.jks(bytes, password)?.1,
            Detected::Jceks => unreachable!("refused by detect"),
        };
        if certs.is_empty() {
            return Err(self.content(ContentProblem::NoTrustedCertificate));
        }
        Ok(certs)
    }

    /// PKCS#12 → (key entries, trusted certificates).
    fn pkcs12(
        &self,
        bytes: &[u8],
        password: Option<&Secret>,
    ) -> Result<(Vec<KeyEntry>, Vec<CertificateDer<'static>>), MaterialError> {
        let archive = Pkcs12Archive::from_pkcs12(bytes, self.password(password)).map_err(|e| {
            use p12_keystore::error::Error as E;
            match e {
                E::MacError(_) => self.wrong_password(StoreType::Pkcs12),
                E::UnsupportedEncryptionScheme | E::UnsupportedMacAlgorithm => {
                    self.content(ContentProblem::Pkcs12Unsupported {
                        path: self.path.clone(),
                        error: e,
                    })
                }
                E::UnpadError | E::Pkcs5Error(_) => {
                    self.content(ContentProblem::Pkcs12EntryUndecryptable {
                        store_key: self.key,
                        error: e,
                    })
                }
                error => self.content(ContentProblem::Pkcs12Unreadable { error }),
            }
        })?;
        let identities = archive
            .keys
            .iter()
            .map(|k| {
                let leaf = archive.certs.iter().find(|c| {
                    c.local_key_id.is_some()
                        && c.local_key_id.as_deref()
                            == k.local_key_id.as_ref().map(|id| id.as_ref())
                });
                let mut chain = Vec::new();
                if let Some(leaf) = leaf {
                    chain.push(CertificateDer::from(leaf.cert.as_der().to_vec()));
                    let others: Vec<_> = archive
                        .certs
                        .iter()
                        .filter(|c| c.local_key_id.is_none())
                        .map(|c| CertificateDer::from(c.cert.as_der().to_vec()))
                        .collect();
                    extend_chain(&mut chain, &others);
                }
                KeyEntry {
                    alias: k.friendly_name.clone(),
                    chain,
                    key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(k.key.as_der().to_vec())),
                }
            })
            .collect();
        // Java's trusted-certificate entries carry Oracle's trust attribute; a store made by
        // `openssl pkcs12 -export -nokeys` has none, then every certificate not tied to a key counts.
        let any_marked = archive.certs.iter().any(|c| c.trusted);
        let trusted = archive
            .certs
            .iter()
            .filter(|c| {
                if any_marked {
                    c.trusted
                } else {
                    c.local_key_id.is_none()
                }
            })
            .map(|c| CertificateDer::from(c.cert.as_der().to_vec()))
            .collect();
        Ok((identities, trusted))
    }

    /// JKS → (key entries, trusted certificates).
    fn jks(
        &self,
        bytes: &[u8],
        password: Option<&Secret>,
    ) -> Result<(Vec<KeyEntry>, Vec<CertificateDer<'static>>), MaterialError> {
        use super::jks::{Entry, JksError};
        let store = super::jks::parse(bytes, self.password(password)).map_err(|e| match e {
            JksError::WrongPassword => self.wrong_password(StoreType::Jks),
            JksError::KeyPasswordMismatch { alias } => {
                self.content(ContentProblem::JksKeyPasswordMismatch {
                    store_key: self.key,
                    path: self.path.clone(),
                    alias,
                })
            }
            error => self.content(ContentProblem::JksUnreadable { error }),
        })?;
        let mut identities = Vec::new();
        let mut trusted = Vec::new();
        for entry in store.entries {
            match entry {
                Entry::PrivateKey {
                    alias,
                    pkcs8,
                    chain,
                } => identities.push(KeyEntry {
                    alias: Some(alias),
                    chain: chain.into_iter().map(CertificateDer::from).collect(),
                    key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8)),
                }),
                Entry::TrustedCert { der, .. } => trusted.push(CertificateDer::from(der)),
            }
        }
        Ok((identities, trusted))
    }

    fn pem_identity(&self, bytes: &[u8]) -> Result<KeyEntry, MaterialError> {
        let chain = CertificateDer::pem_slice_iter(bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| self.content(ContentProblem::MalformedPem { error }))?;
        if memmem(bytes, b"BEGIN ENCRYPTED PRIVATE KEY") {
            return Err(self.content(ContentProblem::PemKeystoreKeyEncrypted));
        }
        let key = PrivateKeyDer::from_pem_slice(bytes)
            .map_err(|_| self.content(ContentProblem::PemKeystoreNoKey))?;
        if chain.is_empty() {
            return Err(self.content(ContentProblem::PemKeystoreNoChain));
        }
        Ok(KeyEntry {
            alias: None,
            chain,
            key,
        })
    }

    fn pick(&self, mut entries: Vec<KeyEntry>) -> Result<KeyEntry, MaterialError> {
        let aliases = || entries.iter().map(|e| e.alias.clone()).collect();
        let index = match (&self.alias, entries.len()) {
            (_, 0) => return Err(self.content(ContentProblem::NoKeyEntry)),
            (None, 1) => 0,
            (None, _) => {
                return Err(self.content(ContentProblem::SeveralKeyEntries {
                    store_key: self.key,
                    aliases: aliases(),
                }));
            }
            (Some(alias), _) => entries
                .iter()
                .position(|e| {
                    e.alias
                        .as_deref()
                        .is_some_and(|a| a.eq_ignore_ascii_case(alias))
                })
                .ok_or_else(|| {
                    self.content(ContentProblem::NoSuchAlias {
                        store_key: self.key,
                        alias: alias.clone(),
                        aliases: aliases(),
                    })
                })?,
        };
        let identity = entries.swap_remove(index);
        if identity.chain.is_empty() {
            return Err(self.content(ContentProblem::EntryWithoutCertificate {
                alias: identity.alias,
            }));
        }
        Ok(identity)
    }
}

/// Appends to `chain` the issuers of its last certificate found in `pool`, in order (keystores do not
/// promise an order for the CA certificates they carry).
fn extend_chain(chain: &mut Vec<CertificateDer<'static>>, pool: &[CertificateDer<'static>]) {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let names = |der: &CertificateDer<'_>| {
        X509Certificate::from_der(der.as_ref())
            .ok()
            .map(|(_, c)| (c.subject().as_raw().to_vec(), c.issuer().as_raw().to_vec()))
    };
    while let Some((subject, issuer)) = chain.last().and_then(names) {
        if subject == issuer {
            return;
        }
        let next = pool
            .iter()
            .find(|c| !chain.contains(c) && names(c).is_some_and(|(s, _)| s == issuer));
        match next {
            Some(c) => chain.push(c.clone()),
            None => return,
        }
    }
}

/// Reads a password file: its first line, without the line ending (editors add one).
pub fn password_from_file(
    key: &'static str,
    path: &Path,
    bytes: &[u8],
) -> Result<Secret, MaterialError> {
    let text = std::str::from_utf8(bytes).map_err(|_| MaterialError::Content {
        key,
        path: path.to_owned(),
        problem: Box::new(ContentProblem::PasswordNotUtf8),
    })?;
    Ok(Secret::new(text.lines().next().unwrap_or_default()))
}

fn memmem(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
