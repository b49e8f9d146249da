//! `[tls]` as the config describes it: which files hold our identity and trust, where their passwords
//! come from, and how we negotiate. Nothing here reads a file; `TlsSettings::load` (in `tls`) turns it
//! into a `tls::LoadedTls`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::{SupportedCipherSuite, SupportedProtocolVersion};

use crate::secret::Secret;

/// `tls.crl_expired`: what a CRL past its nextUpdate means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrlExpired {
    /// Refuse certificates checked against it (the CRL can no longer be trusted to be complete).
    #[default]
    Deny,
    /// Keep using it and log a warning at every load.
    Warn,
}

/// `require_client_auth`: whether an inbound listener asks for and requires a client certificate.
/// Written `true`, `false` or `"optional"`, as Cassandra 5.0's `client_encryption_options`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ClientAuth {
    /// Mutual TLS: a client without a verified certificate is refused.
    #[default]
    Required,
    /// A client may send no certificate (it is relayed anonymously); one that sends a certificate has
    /// it fully verified (chain, CRLs, allow-list, endpoint) and is refused when that fails.
    Optional,
    /// No CertificateRequest at all: any TLS client is relayed, and nothing is known of its identity.
    Off,
}

impl ClientAuth {
    /// Whether the server sends a CertificateRequest (and so can verify what comes back).
    pub fn requests_certificate(self) -> bool {
        self != Self::Off
    }

    /// How the config file spells it.
    pub fn as_config(self) -> &'static str {
        match self {
            Self::Required => "true",
            Self::Optional => "\"optional\"",
            Self::Off => "false",
        }
    }
}

impl std::fmt::Display for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Required => "required",
            Self::Optional => "optional",
            Self::Off => "off",
        })
    }
}

impl<'de> serde::Deserialize<'de> for ClientAuth {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ClientAuth;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("true, false or \"optional\"")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<ClientAuth, E> {
                Ok(if v {
                    ClientAuth::Required
                } else {
                    ClientAuth::Off
                })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ClientAuth, E> {
                match v {
                    "optional" => Ok(ClientAuth::Optional),
                    _ => Err(E::custom(format!(
                        "{v:?} is not a client auth setting; write true (client certificates \
                         required), false (none asked for) or \"optional\" (verified when sent)"
                    ))),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `[tls]` (or a listener's `[inbound.tls]` / `[outbound.tls]` merged over it), validated: the files to
/// load and the negotiation settings. No key material. Two listeners with equal settings share one
/// loaded copy of the material.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    pub files: TlsFiles,
    pub versions: Vec<&'static SupportedProtocolVersion>,
    pub suites: Vec<SupportedCipherSuite>,
    pub require_client_auth: ClientAuth,
    pub crl_expired: CrlExpired,
    /// How often the referenced files are checked for changes (SIGHUP reloads at once).
    pub reload_interval: Duration,
    /// `tls.accept_v1_certificates`: X.509 v1 peer certificates signed directly by a trusted CA.
    pub accept_v1: bool,
}

/// How we negotiate, whether or not the material is loaded yet (what `ringseal check` describes).
pub trait Negotiation {
    fn versions(&self) -> &[&'static SupportedProtocolVersion];
    fn suites(&self) -> &[SupportedCipherSuite];
    fn require_client_auth(&self) -> ClientAuth;
}

impl Negotiation for TlsSettings {
    fn versions(&self) -> &[&'static SupportedProtocolVersion] {
        &self.versions
    }
    fn suites(&self) -> &[SupportedCipherSuite] {
        &self.suites
    }
    fn require_client_auth(&self) -> ClientAuth {
        self.require_client_auth
    }
}

/// The files `[tls]` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub identity: IdentityFiles,
    /// `tls.outbound_keystore`: a separate client identity for outbound connections (Cassandra 4.1+).
    pub outbound_identity: Option<IdentityFiles>,
    pub trust: TrustFiles,
    /// `tls.crl`: certificate revocation lists, PEM or DER.
    pub crls: Vec<PathBuf>,
}

/// Our identity: PEM `cert` + `key`, or a keystore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityFiles {
    Pem { cert: PathBuf, key: PathBuf },
    Store(StoreFile),
}

/// Whom we trust: a PEM CA bundle, or a truststore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustFiles {
    Pem(PathBuf),
    Store(StoreFile),
}

impl TlsFiles {
    /// The file (and config key) of our identity's certificate, for messages.
    pub fn identity_origin(&self) -> (&'static str, &Path) {
        match &self.identity {
            IdentityFiles::Pem { cert, .. } => ("tls.cert", cert),
            IdentityFiles::Store(s) => (s.key, &s.path),
        }
    }
}

/// `keystore_type` / `truststore_type`: what the operator says the file is. Informational: the content
/// decides (a stated JKS holding PKCS#12 is fine, as it is for Java); named when nothing is recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreType {
    Pkcs12,
    Jks,
    Pem,
}

impl StoreType {
    /// Parses the spellings of ringseal and Cassandra (`PKCS12`, `JKS`, `PEM`), in any case.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "pkcs12" | "p12" | "pfx" => Some(Self::Pkcs12),
            "jks" => Some(Self::Jks),
            "pem" => Some(Self::Pem),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Pkcs12 => "PKCS#12",
            Self::Jks => "JKS",
            Self::Pem => "PEM",
        }
    }
}

/// Where a store's password comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Password {
    /// None given: fine for PEM; PKCS#12 and JKS are tried with the empty password.
    None,
    /// `keystore_password = "..."`.
    Inline(Secret),
    /// `keystore_password_env`: the variable's name; read when the material is loaded, so that what
    /// needs no key material (`ringseal rules`) works without it.
    Env(String),
    /// `keystore_password_file`: the file's first line (read with the other files, so a reload notices
    /// a changed password).
    File(PathBuf),
}

/// One keystore or truststore named in `[tls]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFile {
    /// The config key, e.g. `tls.keystore`; messages derive `tls.keystore_password` etc. from it.
    pub key: &'static str,
    pub path: PathBuf,
    pub stated: Option<StoreType>,
    pub password: Password,
    /// `keystore_alias`: which key entry, when the store holds several.
    pub alias: Option<String>,
}
