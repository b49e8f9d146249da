//! `allow = { ou, cn, dns, ip, uri }`: which peer identities a listener accepts, as the config states
//! them and as verification checks them.

use std::fmt;
use std::net::IpAddr;

use super::x509::CertInfo;

/// `allow = { ou, cn, dns, ip, uri }`: a certificate is allowed when any listed value matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    pub ou: Vec<String>,
    pub cn: Vec<String>,
    /// Lower-cased.
    pub dns: Vec<String>,
    /// Canonical (IPv4-mapped IPv6 addresses are stored as IPv4).
    pub ip: Vec<IpAddr>,
    pub uri: Vec<String>,
}

impl AllowList {
    pub fn is_empty(&self) -> bool {
        self.ou.is_empty()
            && self.cn.is_empty()
            && self.dns.is_empty()
            && self.ip.is_empty()
            && self.uri.is_empty()
    }

    pub(crate) fn allows(&self, c: &CertInfo) -> bool {
        c.ou.iter().any(|v| self.ou.contains(v))
            || c.cn.iter().any(|v| self.cn.contains(v))
            || c.dns
                .iter()
                .any(|v| self.dns.contains(&v.to_ascii_lowercase()))
            || c.ips.iter().any(|v| self.ip.contains(&canonical_ip(*v)))
            || c.uris.iter().any(|v| self.uri.contains(v))
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (k, v) in [
            ("ou", &self.ou),
            ("cn", &self.cn),
            ("dns", &self.dns),
            ("uri", &self.uri),
        ] {
            if !v.is_empty() {
                parts.push(format!("{k}={}", v.join("|")));
            }
        }
        if !self.ip.is_empty() {
            let ips: Vec<_> = self.ip.iter().map(ToString::to_string).collect();
            parts.push(format!("ip={}", ips.join("|")));
        }
        if parts.is_empty() {
            f.write_str("any")
        } else {
            f.write_str(&parts.join(" "))
        }
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, what a dual-stack socket reports for an IPv4 peer) are
/// the IPv4 address: a certificate lists `10.0.0.1`, and the two must compare equal.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}
