//! Why our own key material cannot be loaded. Its own module so that the keystore readers and the
//! material they feed can both return it without importing each other.

use std::path::PathBuf;

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
    #[error("{key} {path}: {message}")]
    Content {
        key: &'static str,
        path: PathBuf,
        message: String,
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
         ringseal refuses by default; set tls.accept_v1_certificates = true (v1 leaves are then \
         accepted only when signed directly by a trusted CA) or reissue it with `ringseal certs node`"
    )]
    V1Identity {
        key: &'static str,
        path: PathBuf,
        subject: String,
    },
}
