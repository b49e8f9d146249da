//! A small read-only view of a certificate for messages, logs and the identity allow-list.
//!
//! webpki verifies chains but (by design) exposes no subject fields, so the names an operator writes in an
//! allow-list (OU = cluster name, CN) and the SANs we list in a refusal come from x509-parser. Nothing here
//! decides trust: that is webpki's job in `verify.rs`.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// What we show about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    /// 1 or 3 (the X.509 version as people say it, not the encoded 0/2).
    pub version: u32,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub ou: Vec<String>,
    pub cn: Vec<String>,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub uris: Vec<String>,
}

impl CertInfo {
    /// Parses a DER certificate. `None` when it is not a parseable X.509 certificate.
    pub fn parse(der: &CertificateDer<'_>) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
        let subject = cert.subject();
        let strings =
            |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
                it.filter_map(|a| a.as_str().ok().map(str::to_owned))
                    .collect::<Vec<_>>()
            };
        let ou = strings(&mut subject.iter_organizational_unit());
        let cn = strings(&mut subject.iter_common_name());
        let (mut dns, mut ips, mut uris) = (Vec::new(), Vec::new(), Vec::new());
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                    GeneralName::URI(u) => uris.push((*u).to_owned()),
                    GeneralName::IPAddress(b) => {
                        if let Ok(a) = <[u8; 4]>::try_from(*b) {
                            ips.push(IpAddr::from(a));
                        } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                            ips.push(IpAddr::from(a));
                        }
                    }
                    _ => {}
                }
            }
        }
        let time = |t: x509_parser::time::ASN1Time| {
            let secs = t.timestamp();
            if secs >= 0 {
                UNIX_EPOCH + Duration::from_secs(secs as u64)
            } else {
                UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
            }
        };
        Some(Self {
            subject: subject.to_string(),
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string(),
            version: cert.version().0 + 1,
            not_before: time(cert.validity().not_before),
            not_after: time(cert.validity().not_after),
            ou,
            cn,
            dns,
            ips,
            uris,
        })
    }

    /// The IP SANs as an operator reads them: `10.0.0.1, 10.0.0.2` or `none`.
    pub fn ip_sans(&self) -> String {
        if self.ips.is_empty() {
            "none".into()
        } else {
            self.ips
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    }
}

/// The SubjectPublicKeyInfo DER of a certificate (parsed by x509-parser, so v1 certificates too).
pub fn spki(der: &CertificateDer<'_>) -> Option<Vec<u8>> {
    let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
    Some(cert.tbs_certificate.subject_pki.raw.to_vec())
}

/// RFC 3339 at second precision, for messages.
pub fn fmt_time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A rustls/webpki timestamp as a `SystemTime`.
pub fn unix(t: &rustls_pki_types::UnixTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t.as_secs())
}
