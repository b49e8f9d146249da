//! Entry points for the fuzz targets in `fuzz/` (and their seeded runs in `cargo test`) into code that
//! is private to the crate. Not an API: each function is a thin wrapper (or re-export) that exists only
//! so a target can reach the code it fuzzes without that code becoming public.

use std::net::IpAddr;
use std::path::Path;

use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The handshake driver's record framing (`record_framing`).
pub use crate::listener::sniff::{Sniffed, sniff};
pub use crate::relay::handshake::{Framing, frame, wakes};
use crate::tls::material::MaterialError;
use crate::tls::verify::AllowList;

/// `tls.cert` (`ca = false`) or `tls.ca` (`ca = true`): the certificates of a PEM file.
pub fn certs_from(
    ca: bool,
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, MaterialError> {
    crate::tls::material::certs_from(if ca { "tls.ca" } else { "tls.cert" }, path, bytes)
}

/// `tls.key`: the private key of a PEM file.
pub fn key_from(path: &Path, bytes: &[u8]) -> Result<PrivateKeyDer<'static>, MaterialError> {
    crate::tls::material::key_from(path, bytes)
}

/// The body of an `allow = { ... }` table, as TOML text, converted as a config file's is.
pub fn allow_list(toml: &str) -> Result<AllowList, String> {
    let file: crate::config::file::FileAllow = toml::from_str(toml).map_err(|e| e.to_string())?;
    file.into_allow_list().map_err(|e| e.to_string())
}

/// What a verifier checks after the chain: `peer` an IP SAN of `end_entity` (endpoint verification)
/// when given, then the allow-list when it is not empty.
pub fn check_identity(
    end_entity: &[u8],
    peer: Option<IpAddr>,
    allow: &AllowList,
) -> Result<(), rustls::Error> {
    crate::tls::verify::check_identity(&CertificateDer::from(end_entity), peer, allow)
}
