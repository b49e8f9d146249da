//! `allow = { ou, cn, dns, ip, uri }`: which peer identities a listener accepts, as the config states
//! them and as verification checks them.

use std::fmt;
use std::net::IpAddr;

use super::pattern::{DnsPattern, UriPattern};
use super::x509::CertInfo;

/// `allow = { ou, cn, dns, ip, uri }`: a certificate is allowed when any listed value matches. `dns`
/// and `uri` entries with a `*` are patterns (see [`super::pattern`]), the others exact values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    pub ou: Vec<String>,
    pub cn: Vec<String>,
    /// Lower-cased.
    pub dns: Vec<String>,
    /// Canonical (IPv4-mapped IPv6 addresses are stored as IPv4).
    pub ip: Vec<IpAddr>,
    pub uri: Vec<String>,
    /// `dns` entries with a wildcard: `*.headless-service.ns.svc.cluster.local`.
    pub dns_patterns: Vec<DnsPattern>,
    /// `uri` entries with wildcard segments: `spiffe://cluster.local/ns/cassandra/sa/*`.
    pub uri_patterns: Vec<UriPattern>,
}

impl AllowList {
    pub fn is_empty(&self) -> bool {
        self.ou.is_empty()
            && self.cn.is_empty()
            && self.dns.is_empty()
            && self.ip.is_empty()
            && self.uri.is_empty()
            && self.dns_patterns.is_empty()
            && self.uri_patterns.is_empty()
    }

    pub(crate) fn allows(&self, c: &CertInfo) -> bool {
        c.ou.iter().any(|v| self.ou.contains(v))
            || c.cn.iter().any(|v| self.cn.contains(v))
            || c.dns
                .iter()
                .any(|v| self.dns.contains(&v.to_ascii_lowercase()))
            || c.ips.iter().any(|v| self.ip.contains(&canonical_ip(*v)))
            || c.uris.iter().any(|v| self.uri.contains(v))
            || c.dns
                .iter()
                .any(|v| self.dns_patterns.iter().any(|p| p.matches(v)))
            || c.uris
                .iter()
                .any(|v| self.uri_patterns.iter().any(|p| p.matches(v)))
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        let dns: Vec<String> = (self.dns.iter().cloned())
            .chain(self.dns_patterns.iter().map(ToString::to_string))
            .collect();
        let uri: Vec<String> = (self.uri.iter().cloned())
            .chain(self.uri_patterns.iter().map(ToString::to_string))
            .collect();
        for (k, v) in [
            ("ou", &self.ou),
            ("cn", &self.cn),
            ("dns", &dns),
            ("uri", &uri),
        ] {
            if !v.is_empty() {
                parts.push(format!("{k}={}", v.join("|")));
            }
        }
        if !self.ip.is_empty() {
            let ips: Vec<_> = self.ip.iter().map(ToString::to_string).collect();
            parts.push(format!("ip={}", ips.join("|")));
        }
        // What a wildcard stands for, so `check` and the start-up line say it, not only the README.
        if !self.dns_patterns.is_empty() {
            parts.push("(dns *: one left-most label)".into());
        }
        if !self.uri_patterns.is_empty() {
            parts.push("(uri *: one path segment, final **: one or more)".into());
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
