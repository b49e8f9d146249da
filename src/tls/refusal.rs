//! The refusals verification adds to webpki's. Its own module so that the v1 path and the verifiers
//! can both raise them without importing each other.

use std::net::IpAddr;

/// Our own refusals, carried through rustls as `CertificateError::Other` so the handshake fails with an
/// alert; `verify::classify` turns them back into a reason and a message.
#[derive(Debug, thiserror::Error)]
pub enum PolicyRefusal {
    #[error(
        "endpoint verification failed: peer address {peer} is not an IP SAN of its certificate \"{subject}\" \
         (IP SANs: {sans}); reissue the certificate with IP SAN {peer} or set \
         require_endpoint_verification = false"
    )]
    EndpointMismatch {
        peer: IpAddr,
        subject: String,
        sans: String,
    },
    #[error(
        "identity not allowed: certificate \"{subject}\" matches no entry of the allow-list ({allowed})"
    )]
    IdentityNotAllowed { subject: String, allowed: String },
    #[error(
        "certificate \"{subject}\" is an X.509 v1 certificate (no extensions), refused by default; set \
         tls.accept_v1_certificates = true on this node (or `--set tls.accept_v1_certificates=true`; v1 is \
         then accepted when signed directly by a trusted CA) or reissue the peer's certificate with `ringseal certs node`"
    )]
    V1Certificate { subject: String },
}
