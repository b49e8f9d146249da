//! Allow-list patterns: a DNS name with a wildcard left-most label (`*.cluster-dc-service.ns.svc.cluster.local`)
//! and a URI with wildcard path segments (`spiffe://cluster.local/ns/cassandra/sa/*`). They exist for
//! Kubernetes, where a certificate is issued before the pod has an IP, so endpoint verification cannot
//! work and the stable names are the headless service's DNS names and the service account's SPIFFE ID.
//!
//! Both are deliberately narrow. A DNS `*` is one whole label, as RFC 6125 §6.4.3 and the CA/Browser
//! Forum allow for certificates: `*.a.b` matches `x.a.b`, never `a.b`, `x.y.a.b` or `.a.b`. A URI `*` is
//! one whole path segment and `**` (last segment only) one or more, like ghostunnel's `--allow-uri`;
//! unlike ghostunnel, scheme and authority (a SPIFFE trust domain) never contain a wildcard.

use std::fmt;

/// `*.suffix`: any one DNS label followed by `.suffix`, compared without regard to ASCII case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsPattern {
    /// Lower-cased, without the `*.`: `cluster-dc-service.ns.svc.cluster.local`.
    suffix: String,
}

/// Why a `dns` or `uri` entry with a `*` is not a pattern we take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("a lone * would allow every name; list the names, or remove the allow-list")]
    Everything,
    #[error(
        "* must be the whole left-most label, as in *.{example}; partial labels (a*, *a) do not match"
    )]
    PartialLabel { example: String },
    #[error("* is allowed only as the left-most label (one label, e.g. *.{example})")]
    NotLeftMost { example: String },
    #[error("a pattern needs at least two labels after *. (e.g. *.service.ns.svc.cluster.local)")]
    TooBroad,
    #[error("has an empty label (two dots in a row, or a leading dot)")]
    EmptyLabel,
    #[error("ends with a dot; write the name without it (certificates carry names without it)")]
    TrailingDot,
    #[error(
        "is not ASCII; write an internationalised name in its punycode (A-label) form, xn--..., as \
         certificates carry it"
    )]
    NotAscii,
    #[error(
        "label {0:?} is not a DNS label (letters, digits and hyphens, at most 63, not starting or \
         ending with a hyphen)"
    )]
    BadLabel(String),
    #[error(
        "is not a URI of the form scheme://authority/path (e.g. spiffe://cluster.local/ns/db/sa/*)"
    )]
    NotAUri,
    #[error(
        "a * may not be in the scheme or authority (the SPIFFE trust domain); only path segments can be wildcards"
    )]
    WildcardAuthority,
    #[error(
        "* and ** must be whole path segments (/*/ or a final /**); {0:?} mixes a wildcard with text"
    )]
    PartialSegment(String),
    #[error("** is allowed only as the last path segment")]
    InnerDoubleStar,
    #[error("a pattern may not have a query (?) or fragment (#)")]
    QueryOrFragment,
    #[error("has an empty path segment (// or a trailing /)")]
    EmptySegment,
}

impl DnsPattern {
    pub fn parse(entry: &str) -> Result<Self, PatternError> {
        if !entry.is_ascii() {
            return Err(PatternError::NotAscii);
        }
        if entry == "*" {
            return Err(PatternError::Everything);
        }
        if entry.ends_with('.') {
            return Err(PatternError::TrailingDot);
        }
        let (first, rest) = entry.split_once('.').unwrap_or((entry, ""));
        // The labels after the last wildcard: what the pattern was probably meant to end with.
        let example = entry
            .rsplit_once('*')
            .map_or("", |(_, tail)| tail.trim_start_matches('.'))
            .to_owned();
        if first != "*" && !rest.contains('*') {
            return Err(PatternError::PartialLabel { example });
        }
        if first != "*" || rest.contains('*') {
            return Err(PatternError::NotLeftMost { example });
        }
        let labels: Vec<&str> = rest.split('.').collect();
        if labels.iter().any(|l| l.is_empty()) {
            return Err(PatternError::EmptyLabel);
        }
        if let Some(bad) = labels.iter().find(|l| !is_label(l)) {
            return Err(PatternError::BadLabel((*bad).to_owned()));
        }
        if labels.len() < 2 {
            return Err(PatternError::TooBroad);
        }
        Ok(Self {
            suffix: rest.to_ascii_lowercase(),
        })
    }

    /// Whether a certificate's DNS SAN matches: its first label is a valid label and the rest equals
    /// the suffix. A name with a trailing dot never matches. A wildcard certificate matches only the
    /// very same pattern (it claims exactly the names the pattern allows, and before patterns existed
    /// the entry matched it as an exact name).
    pub fn matches(&self, name: &str) -> bool {
        let Some((first, rest)) = name.split_once('.') else {
            return false;
        };
        (first == "*" || is_label(first)) && rest.eq_ignore_ascii_case(&self.suffix)
    }
}

impl fmt::Display for DnsPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "*.{}", self.suffix)
    }
}

/// A letter-digit-hyphen label (RFC 1123; punycode `xn--` labels are of this form).
fn is_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && !l.starts_with('-')
        && !l.ends_with('-')
        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// One path segment of a [`UriPattern`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one non-empty segment.
    One,
    /// `**` (last only): one or more non-empty segments.
    Rest,
}

/// `scheme://authority/seg/.../*`: scheme and authority compared without regard to ASCII case (SPIFFE
/// trust domains are lower case, URI schemes and hosts case-insensitive), the path segment by segment
/// and exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriPattern {
    /// Lower-cased `scheme://authority`.
    prefix: String,
    segments: Vec<Segment>,
    text: String,
}

impl UriPattern {
    pub fn parse(entry: &str) -> Result<Self, PatternError> {
        if entry == "*" || entry == "**" {
            return Err(PatternError::Everything);
        }
        if entry.contains(['?', '#']) {
            return Err(PatternError::QueryOrFragment);
        }
        if let Some((scheme, rest)) = entry.split_once("://") {
            let authority = rest.split('/').next().unwrap_or_default();
            if scheme.contains('*') || authority.contains('*') {
                return Err(PatternError::WildcardAuthority);
            }
        }
        let (prefix, path) = split_uri(entry).ok_or(PatternError::NotAUri)?;
        let parts: Vec<&str> = path.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            segments.push(match *part {
                "" => return Err(PatternError::EmptySegment),
                "*" => Segment::One,
                "**" if i + 1 == parts.len() => Segment::Rest,
                "**" => return Err(PatternError::InnerDoubleStar),
                p if p.contains('*') => return Err(PatternError::PartialSegment(p.to_owned())),
                p => Segment::Literal(p.to_owned()),
            });
        }
        Ok(Self {
            prefix: prefix.to_ascii_lowercase(),
            segments,
            text: entry.to_owned(),
        })
    }

    /// Whether a certificate's URI SAN matches. A URI with a query, a fragment or an empty path
    /// segment never matches (a SPIFFE ID has none of them).
    pub fn matches(&self, uri: &str) -> bool {
        if uri.contains(['?', '#']) {
            return false;
        }
        let Some((prefix, path)) = split_uri(uri) else {
            return false;
        };
        if !prefix.eq_ignore_ascii_case(&self.prefix) {
            return false;
        }
        let parts: Vec<&str> = path.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return false;
        }
        let mut parts = parts.iter();
        for segment in &self.segments {
            match segment {
                Segment::Rest => return parts.next().is_some(),
                Segment::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(l) => {
                    if parts.next() != Some(&l.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

impl fmt::Display for UriPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// `scheme://authority/path` split into `scheme://authority` and `path` (without its leading `/`);
/// `None` without a scheme, an authority or a path.
fn split_uri(s: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = s.split_once("://")?;
    let valid_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    let slash = rest.find('/')?;
    if !valid_scheme || slash == 0 {
        return None;
    }
    Some((&s[..scheme.len() + 3 + slash], &rest[slash + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns(p: &str) -> DnsPattern {
        DnsPattern::parse(p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    fn uri(p: &str) -> UriPattern {
        UriPattern::parse(p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    #[test]
    fn dns_star_is_exactly_one_left_most_label() {
        let p = dns("*.a.b");
        assert!(p.matches("x.a.b"));
        assert!(p.matches("cassandra-dc1-default-sts-0.a.b"));
        // Not the parent, not two labels, not an empty label.
        assert!(!p.matches("a.b"));
        assert!(!p.matches("x.y.a.b"));
        assert!(!p.matches(".a.b"));
        assert!(!p.matches("x..a.b"));
        // The suffix must be whole labels.
        assert!(!p.matches("x.za.b"));
        assert!(!p.matches("xa.b"));
        assert!(!p.matches("x.a.b.c"));
    }

    #[test]
    fn dns_patterns_ignore_ascii_case_both_ways() {
        let p = dns("*.Cluster-DC-Service.NS.svc.cluster.local");
        assert_eq!(p.to_string(), "*.cluster-dc-service.ns.svc.cluster.local");
        assert!(p.matches("POD-0.cluster-dc-service.ns.SVC.cluster.local"));
        assert!(p.matches("pod-0.cluster-dc-service.ns.svc.cluster.local"));
    }

    #[test]
    fn dns_trailing_dot_wildcard_sans_and_non_ldh_names_never_match() {
        let p = dns("*.a.b");
        // A trailing dot is not the preferred name syntax of RFC 5280 certificates.
        assert!(!p.matches("x.a.b."));
        // A wildcard certificate matches only the same pattern, never a narrower or wider one.
        assert!(p.matches("*.A.b"));
        assert!(!p.matches("*.x.a.b"));
        assert!(!dns("*.x.a.b").matches("*.a.b"));
        assert!(!p.matches("x*.a.b"));
        assert!(!p.matches("x_y.a.b"));
        assert!(!p.matches("-x.a.b"));
        assert!(!p.matches("b\u{fc}cher.a.b"));
        // Punycode is plain LDH and matches; the pattern's own labels compare as text.
        assert!(p.matches("xn--bcher-kva.a.b"));
        assert!(dns("*.xn--bcher-kva.example").matches("www.XN--BCHER-KVA.example"));
        assert!(!p.matches(&format!("{}.a.b", "x".repeat(64))));
        assert!(p.matches(&format!("{}.a.b", "x".repeat(63))));
    }

    #[test]
    fn bad_dns_patterns_are_refused_with_the_reason() {
        let err = |p: &str| DnsPattern::parse(p).unwrap_err();
        assert_eq!(err("*"), PatternError::Everything);
        assert_eq!(
            err("a*.b.c"),
            PatternError::PartialLabel {
                example: "b.c".into()
            }
        );
        assert!(matches!(err("*a.b.c"), PatternError::PartialLabel { .. }));
        assert_eq!(
            err("a.*.b.c"),
            PatternError::NotLeftMost {
                example: "b.c".into()
            }
        );
        assert!(matches!(err("*.*.b.c"), PatternError::NotLeftMost { .. }));
        assert!(matches!(err("**.b.c"), PatternError::PartialLabel { .. }));
        assert_eq!(err("*.com"), PatternError::TooBroad);
        assert_eq!(err("*.a..b"), PatternError::EmptyLabel);
        assert_eq!(err("*..a.b"), PatternError::EmptyLabel);
        assert_eq!(err("*.a.b."), PatternError::TrailingDot);
        assert_eq!(err("*.b\u{fc}cher.de"), PatternError::NotAscii);
        assert_eq!(err("*.a_b.c"), PatternError::BadLabel("a_b".into()));
        assert_eq!(err("*.-a.c"), PatternError::BadLabel("-a".into()));
        let message = err("a*.b.c").to_string();
        assert!(message.contains("*.b.c"), "{message}");
    }

    #[test]
    fn uri_star_is_one_segment_and_double_star_the_rest() {
        let p = uri("spiffe://cluster.local/ns/cassandra/sa/*");
        assert!(p.matches("spiffe://cluster.local/ns/cassandra/sa/cassandra-dc1"));
        assert!(p.matches("SPIFFE://Cluster.Local/ns/cassandra/sa/x"));
        assert!(!p.matches("spiffe://cluster.local/ns/cassandra/sa"));
        assert!(!p.matches("spiffe://cluster.local/ns/cassandra/sa/"));
        assert!(!p.matches("spiffe://cluster.local/ns/cassandra/sa/x/y"));
        assert!(!p.matches("spiffe://cluster.local/ns/Cassandra/sa/x"));
        assert!(!p.matches("spiffe://cluster.local/ns/other/sa/x"));
        assert!(!p.matches("spiffe://other.local/ns/cassandra/sa/x"));
        assert!(!p.matches("spiffe://cluster.local.evil/ns/cassandra/sa/x"));
        assert!(!p.matches("spiffe://cluster.local/ns/cassandra/sa/x?y"));
        assert!(!p.matches("spiffe://cluster.local/ns/cassandra/sa//x"));
        assert!(!p.matches("https://cluster.local/ns/cassandra/sa/x"));
        let inner = uri("spiffe://td/ns/*/sa/cassandra");
        assert!(inner.matches("spiffe://td/ns/prod/sa/cassandra"));
        assert!(!inner.matches("spiffe://td/ns/prod/sa/other"));
        let rest = uri("spiffe://td/ns/cassandra/**");
        assert!(rest.matches("spiffe://td/ns/cassandra/sa/x"));
        assert!(rest.matches("spiffe://td/ns/cassandra/x"));
        assert!(!rest.matches("spiffe://td/ns/cassandra"));
        assert!(!rest.matches("spiffe://td/ns/cassandra/"));
    }

    #[test]
    fn bad_uri_patterns_are_refused_with_the_reason() {
        let err = |p: &str| UriPattern::parse(p).unwrap_err();
        assert_eq!(err("spiffe://*/ns/x"), PatternError::WildcardAuthority);
        assert_eq!(
            err("spiffe://*.local/ns/x"),
            PatternError::WildcardAuthority
        );
        assert_eq!(err("*://td/ns/x"), PatternError::WildcardAuthority);
        assert_eq!(
            err("spiffe://td/ns/cass*"),
            PatternError::PartialSegment("cass*".into())
        );
        assert_eq!(err("spiffe://td/**/sa/x"), PatternError::InnerDoubleStar);
        assert_eq!(err("spiffe://td/ns//*"), PatternError::EmptySegment);
        assert_eq!(err("spiffe://td/ns/*/"), PatternError::EmptySegment);
        assert_eq!(err("spiffe://td/*?x=1"), PatternError::QueryOrFragment);
        assert_eq!(err("spiffe:/td/*"), PatternError::NotAUri);
        assert_eq!(err("spiffe://td*"), PatternError::WildcardAuthority);
        assert_eq!(err("td/ns/*"), PatternError::NotAUri);
        assert_eq!(err("*"), PatternError::Everything);
    }
}
