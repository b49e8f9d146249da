//! Why our own key material cannot be loaded. Its own module so that the keystore readers and the
//! material they feed can both return it without importing each other.

use std::path::PathBuf;
use std::time::SystemTime;

use rustls_pki_types::pem;

use super::jks::JksError;
use super::settings::StoreType;
use super::x509::fmt_time;
use crate::files;

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
    #[error("{key} {path}: {why}")]
    Unusable {
        key: &'static str,
        path: PathBuf,
        why: files::ReadError,
    },
    #[error("{key} {path}: {problem}")]
    Content {
        key: &'static str,
        path: PathBuf,
        /// Boxed: some problems carry a parser's error, and every `MaterialError` would be that large.
        problem: Box<ContentProblem>,
    },
    #[error(
        "{key_key} {key_path} does not match the certificate in {cert_key} {cert_path} (their public keys \
         differ); use the private key the certificate was issued for"
    )]
    KeyMismatch {
        key_key: &'static str,
        key_path: PathBuf,
        cert_key: &'static str,
        cert_path: PathBuf,
    },
    #[error(
        "{key} {path}: certificate \"{subject}\" expired at {not_after}; issue a new one from the cluster CA \
         before starting"
    )]
    Expired {
        key: &'static str,
        path: PathBuf,
        subject: String,
        not_after: String,
    },
    #[error(
        "tls.cipher_suites: none of the configured suites can be used with the {key_type} key in {key} {path} \
         (TLS 1.2 suites are tied to a key type); add a matching TLS_ECDHE_{suggest}_WITH_... suite or a TLS 1.3 suite"
    )]
    NoSuiteForKey {
        key: &'static str,
        path: PathBuf,
        key_type: String,
        suggest: &'static str,
    },
    #[error("{key}: environment variable {var}: {source}; export it in the service's environment")]
    PasswordEnv {
        /// `tls.keystore_password_env` etc.
        key: String,
        var: String,
        source: std::env::VarError,
    },
    #[error(
        "{key}: {path}: certificate \"{subject}\" is an X.509 v1 certificate (no extensions, no SANs), which \
         ringseal refuses by default; set tls.accept_v1_certificates = true in the config file, or give \
         `--set tls.accept_v1_certificates=true` on the command line (v1 leaves are then accepted only \
         when signed directly by a trusted CA), or reissue it with `ringseal certs node`"
    )]
    V1Identity {
        key: &'static str,
        path: PathBuf,
        subject: String,
    },
}

/// What is wrong inside a file that was read: the data each message formats. Underlying errors are plain
/// fields, not `#[source]`: the message already shows them, and a chain printer (`{:#}`) would repeat them.
#[derive(Debug, thiserror::Error)]
pub enum ContentProblem {
    #[error("malformed PEM: {error}")]
    MalformedPem { error: pem::Error },

    // Trusted CAs (tls.ca, or a truststore's certificates).
    #[error("no trusted CA certificate: without one no peer can be verified; add the cluster CA")]
    NoTrustedCa,
    #[error("certificate #{number} is not a valid X.509 certificate")]
    CaInvalid { number: usize },
    #[error("certificate #{number} (\"{subject}\") cannot be a trust anchor: {error}")]
    CaNotAnchor {
        number: usize,
        subject: String,
        error: rustls::Error,
    },
    #[error(
        "every trusted CA has expired ({}), so no peer certificate can be verified; add the \
         cluster's current CA certificate",
        expired_list(.cas)
    )]
    AllCasExpired {
        /// Each CA's subject and notAfter.
        cas: Vec<(String, SystemTime)>,
    },

    // Revocation lists (tls.crl).
    #[error(
        "no \"BEGIN X509 CRL\" block and not a DER CRL either; export the CRL from the CA \
         (`openssl ca -gencrl -out crl.pem`)"
    )]
    NoCrl,
    #[error("CRL #{number} is malformed or unsupported: {error:?}")]
    CrlRejected { number: usize, error: webpki::Error },
    #[error("CRL #{number} cannot be parsed")]
    CrlUnparsable { number: usize },

    // Our certificate chain and private key.
    #[error("no certificate")]
    NoCertificate,
    #[error("the first certificate is not a valid X.509 certificate")]
    LeafInvalid,
    #[error(
        "no \"BEGIN CERTIFICATE\" block found; {}{}",
        .role.expectation(),
        .found.hint()
    )]
    NoCertificateBlock { role: CertFile, found: Lookalike },
    #[error(
        "the private key is encrypted with a passphrase; write a plain copy readable only by ringseal \
         (`openssl pkey -in KEY -out KEY.plain && chmod 600 KEY.plain`)"
    )]
    KeyEncrypted,
    #[error(
        "no usable private key ({error}); expected PEM \"PRIVATE KEY\" (PKCS#8), \"RSA PRIVATE KEY\" (PKCS#1) \
         or \"EC PRIVATE KEY\" (SEC1){}",
        if *.holds_certificate {
            " (this file holds a certificate, not a private key: are tls.cert and tls.key swapped?)"
        } else {
            ""
        }
    )]
    NoPrivateKey {
        error: pem::Error,
        holds_certificate: bool,
    },
    #[error(
        "the private key cannot be used: {error}; supported are RSA (2048 bits or more), ECDSA \
         P-256/P-384 and Ed25519"
    )]
    KeyUnusable { error: rustls::Error },
    #[error(
        "cannot tell whether the private key matches the certificate (its public key \
         cannot be derived); use an RSA, ECDSA P-256/P-384 or Ed25519 key"
    )]
    KeyMatchUnknown,
    /// Key and certificate from one file (a keystore entry); two files get [`MaterialError::KeyMismatch`].
    #[error(
        "the private key does not match its certificate (their public keys differ); \
         re-create the entry or import the certificate issued for this key"
    )]
    EntryKeyMismatch,

    // Keystores and truststores; `store_key` is the store's config key, e.g. `tls.keystore`.
    #[error(
        "not a keystore: neither PKCS#12, JKS nor PEM{}{}",
        .stated.map_or(String::new(), |t| format!(" ({store_key}_type says {})", t.name())),
        if *.empty {
            "; the file is empty"
        } else {
            "; is it truncated, or base64 text of a binary store?"
        }
    )]
    NotAKeystore {
        store_key: &'static str,
        stated: Option<StoreType>,
        empty: bool,
    },
    #[error(
        "JCEKS keystores are not supported; convert it once with `keytool -importkeystore \
         -srckeystore {path} -srcstoretype JCEKS -destkeystore {path}.p12 -deststoretype PKCS12` \
         and point {store_key} at the .p12"
    )]
    Jceks {
        store_key: &'static str,
        path: PathBuf,
    },
    #[error(
        "wrong password, or the file is damaged (the {} integrity check failed); check {store_key}_password \
         (Cassandra: server_encryption_options.{}_password)",
        .format.name(),
        .store_key.trim_start_matches("tls.")
    )]
    WrongPassword {
        store_key: &'static str,
        format: StoreType,
    },
    #[error(
        "PKCS#12 encryption not supported ({error}); re-export it with \
         `keytool -importkeystore -srckeystore {path} -destkeystore {path}.p12 -deststoretype PKCS12`"
    )]
    Pkcs12Unsupported {
        path: PathBuf,
        error: p12_keystore::error::Error,
    },
    /// A bag that does not decrypt without a MAC failure: the key or certificate password differs from
    /// the store's (Cassandra needs them equal) or the file is damaged.
    #[error(
        "an entry cannot be decrypted with {store_key}_password ({error}); Cassandra and ringseal need the key \
         password to equal the store password"
    )]
    Pkcs12EntryUndecryptable {
        store_key: &'static str,
        error: p12_keystore::error::Error,
    },
    #[error("not a readable PKCS#12 file ({error}); is it truncated?")]
    Pkcs12Unreadable { error: p12_keystore::error::Error },
    #[error(
        "key entry \"{alias}\" cannot be decrypted with {store_key}_password: its key password differs from \
         the store password; Cassandra and ringseal need them equal (`keytool -keypasswd \
         -alias {alias} -keystore {path}`)"
    )]
    JksKeyPasswordMismatch {
        store_key: &'static str,
        path: PathBuf,
        alias: String,
    },
    #[error("not a readable JKS keystore: {error}")]
    JksUnreadable { error: JksError },
    #[error(
        "holds no trusted certificate; import the cluster CA with `keytool -importcert \
         -trustcacerts -alias ca -file ca.pem -keystore FILE`"
    )]
    NoTrustedCertificate,
    #[error(
        "the PEM private key is encrypted; write a plain copy readable only by ringseal \
         (`openssl pkey -in FILE -out FILE.plain && chmod 600 FILE.plain`)"
    )]
    PemKeystoreKeyEncrypted,
    #[error(
        "a PEM keystore must hold the private key (\"BEGIN PRIVATE KEY\") and the certificate \
         chain; no private key found"
    )]
    PemKeystoreNoKey,
    #[error(
        "a PEM keystore must hold the certificate chain after the private key; no \
         \"BEGIN CERTIFICATE\" block found"
    )]
    PemKeystoreNoChain,
    #[error(
        "holds no private key entry (a truststore?); the keystore must hold this node's \
         key and certificate (`keytool -genkeypair` or `ringseal certs node`)"
    )]
    NoKeyEntry,
    #[error(
        "holds {} private key entries ({}); say which one with {store_key}_alias",
        .aliases.len(),
        alias_list(.aliases)
    )]
    SeveralKeyEntries {
        store_key: &'static str,
        aliases: Vec<Option<String>>,
    },
    #[error(
        "{store_key}_alias = \"{alias}\" names no private key entry; the entries are {}",
        alias_list(.aliases)
    )]
    NoSuchAlias {
        store_key: &'static str,
        alias: String,
        aliases: Vec<Option<String>>,
    },
    #[error("key entry \"{}\" has no certificate", .alias.as_deref().unwrap_or(NO_ALIAS))]
    EntryWithoutCertificate { alias: Option<String> },

    // Password files.
    #[error("the password file is not UTF-8 text")]
    PasswordNotUtf8,
}

/// What a certificate file named by the config was meant to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertFile {
    /// `tls.ca`.
    TrustBundle,
    /// `tls.cert`.
    NodeChain,
}

impl CertFile {
    fn expectation(self) -> &'static str {
        match self {
            Self::TrustBundle => "the trust bundle must hold the cluster CA certificate(s) in PEM",
            Self::NodeChain => "expected the node certificate chain in PEM, leaf first",
        }
    }
}

/// What a file without the expected PEM block looks like instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookalike {
    Der,
    PrivateKey,
    Unknown,
}

impl Lookalike {
    fn hint(self) -> &'static str {
        match self {
            Self::Der => {
                " (this looks like DER: convert with `openssl x509 -inform der -in FILE -out FILE.pem`)"
            }
            Self::PrivateKey => " (this file holds a private key, not a certificate)",
            Self::Unknown => "",
        }
    }
}

const NO_ALIAS: &str = "<no alias>";

fn alias_list(aliases: &[Option<String>]) -> String {
    aliases
        .iter()
        .map(|a| format!("\"{}\"", a.as_deref().unwrap_or(NO_ALIAS)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn expired_list(cas: &[(String, SystemTime)]) -> String {
    cas.iter()
        .map(|(subject, not_after)| format!("\"{subject}\" expired at {}", fmt_time(*not_after)))
        .collect::<Vec<_>>()
        .join(", ")
}
