//! Cipher suite and protocol names for `tls.cipher_suites` and `tls.protocols`.
//!
//! Operators paste these lists from cassandra.yaml (Java/JSSE names such as
//! `TLS_RSA_WITH_AES_256_CBC_SHA`, or `SSL_`-prefixed legacy ones), from OpenSSL configs
//! (`ECDHE-RSA-AES128-GCM-SHA256`) or from IANA tables. rustls deliberately implements only a
//! small modern set (TLS 1.3, and ECDHE with AEAD ciphers on TLS 1.2), so most classic Cassandra
//! configurations name suites rustls does not have. Rather than failing later with an opaque
//! handshake error, this module maps every spelling to rustls types and, for refused suites,
//! parses the name's structure (key exchange, cipher, MAC) to explain *why* it is refused and
//! which supported suite replaces it.

use Strength::{Aes128, Aes256, Chacha};
use rustls::crypto::CryptoProvider;
use rustls::version::{TLS12, TLS13};
use rustls::{CipherSuite, ProtocolVersion, SupportedCipherSuite, SupportedProtocolVersion};

/// The one crypto provider: rustls with aws-lc-rs. Held in a static so that library users (tests calling
/// `run()`) get the same provider as the binary without installing a process default.
pub fn provider() -> std::sync::Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<std::sync::Arc<CryptoProvider>> =
        std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// Why a `tls.protocols` or `tls.cipher_suites` entry cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    /// An obsolete protocol version (SSL, TLS 1.0, TLS 1.1).
    #[error(
        "protocol {name:?} is refused: it is deprecated by RFC 8996 (SSL was already prohibited by \
         RFC 6176 and RFC 7568) and has no AEAD ciphers. Use \"TLSv1.2\" (and \"TLSv1.3\") instead."
    )]
    RefusedProtocol { name: String },
    /// A protocol name that is not recognised at all.
    #[error(
        "unknown protocol {name:?}. Accepted spellings (case-insensitive) are \"TLSv1.2\", \
         \"TLSv1.3\", \"TLS1.2\", \"TLS1.3\", and \"TLS\" for every supported version."
    )]
    UnknownProtocol { name: String },
    /// A real cipher suite that is weak or not implemented by rustls.
    #[error("cipher suite {name:?} is refused: {reasons}. {replacement}")]
    RefusedSuite {
        name: String,
        reasons: String,
        replacement: String,
    },
    /// A signalling cipher suite value such as `TLS_EMPTY_RENEGOTIATION_INFO_SCSV`.
    #[error(
        "{name:?} is not a cipher suite: it is a signalling value that the TLS library handles \
         by itself; remove it from tls.cipher_suites."
    )]
    SignallingValue { name: String },
    /// A name that matches no known cipher suite.
    #[error("unknown cipher suite {name:?}.{hint} Supported cipher suites: {supported}.")]
    UnknownSuite {
        name: String,
        hint: String,
        supported: String,
    },
    /// A supported suite that the configured crypto provider does not offer.
    #[error(
        "cipher suite {name:?} is not offered by the configured crypto provider. \
         Suites it offers: {offered}."
    )]
    NotInProvider { name: String, offered: String },
    /// An enabled protocol version has no usable cipher suite.
    #[error(
        "protocol {version} is enabled but none of the configured cipher suites can be used with \
         it. Add {suggestion} to tls.cipher_suites, or remove {version} from tls.protocols."
    )]
    NoSuiteForVersion {
        version: &'static str,
        suggestion: &'static str,
    },
    /// Nothing is left after filtering.
    #[error(
        "no cipher suite remains for the enabled protocols; configure at least one protocol and \
         one supported cipher suite for it."
    )]
    NoSuites,
}

/// Certificate type a TLS 1.2 suite authenticates with (`Any`: unknown, suggest both).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Auth {
    Rsa,
    Ecdsa,
    Any,
}

/// Which supported bulk cipher best replaces a refused one.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Strength {
    Aes128,
    Aes256,
    Chacha,
}

/// A suite rustls implements. `auth` is `None` for TLS 1.3 suites.
struct Known {
    id: CipherSuite,
    iana: &'static str,
    openssl: &'static str,
    auth: Option<Auth>,
    strength: Strength,
}

const fn known(
    id: CipherSuite,
    iana: &'static str,
    openssl: &'static str,
    auth: Option<Auth>,
    strength: Strength,
) -> Known {
    Known {
        id,
        iana,
        openssl,
        auth,
        strength,
    }
}

#[rustfmt::skip]
static KNOWN: [Known; 9] = [
    known(CipherSuite::TLS13_AES_128_GCM_SHA256, "TLS_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256", None, Aes128),
    known(CipherSuite::TLS13_AES_256_GCM_SHA384, "TLS_AES_256_GCM_SHA384", "TLS_AES_256_GCM_SHA384", None, Aes256),
    known(CipherSuite::TLS13_CHACHA20_POLY1305_SHA256, "TLS_CHACHA20_POLY1305_SHA256", "TLS_CHACHA20_POLY1305_SHA256", None, Chacha),
    known(CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256", Some(Auth::Ecdsa), Aes128),
    known(CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "ECDHE-ECDSA-AES256-GCM-SHA384", Some(Auth::Ecdsa), Aes256),
    known(CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305", Some(Auth::Ecdsa), Chacha),
    known(CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "ECDHE-RSA-AES128-GCM-SHA256", Some(Auth::Rsa), Aes128),
    known(CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "ECDHE-RSA-AES256-GCM-SHA384", Some(Auth::Rsa), Aes256),
    known(CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256, "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", "ECDHE-RSA-CHACHA20-POLY1305", Some(Auth::Rsa), Chacha),
];

type Names = &'static [&'static str];

// Refusal reasons; several may apply to one suite.
const CBC: &str = "CBC mode (MAC-then-encrypt, padding-oracle attacks such as Lucky13; rustls implements only AEAD ciphers)";
const NO_FS_RSA: &str =
    "no forward secrecy (static RSA key exchange: a stolen node key decrypts all recorded traffic)";
const NO_FS_DH: &str = "no forward secrecy (static (EC)DH key exchange: a stolen node key decrypts all recorded traffic)";
const FFDHE: &str =
    "finite-field DHE key exchange is not supported by rustls (slow, and weak with small groups)";
const FFDH: &str =
    "finite-field DH key exchange is not supported by rustls (slow, and weak with small groups)";
const DES3: &str = "3DES: broken cipher (64-bit blocks, Sweet32)";
const DES: &str = "DES: broken cipher (56-bit key)";
const RC4: &str = "RC4: broken cipher (biased keystream, prohibited by RFC 7465)";
const NULL: &str = "NULL: broken cipher (no encryption at all)";
const EXPORT: &str = "EXPORT: broken cipher (deliberately weakened keys, FREAK/Logjam)";
const MD5: &str = "MD5 MAC: broken hash";
const ANON: &str = "anonymous: no authentication at all (anyone can impersonate a node)";
const PSK: &str = "PSK: not used for certificate-based internode TLS";
const SRP: &str = "SRP: not used for certificate-based internode TLS";
const KRB5: &str = "Kerberos: not used for certificate-based internode TLS";
const CCM: &str = "CCM: not implemented by rustls";
const CAMELLIA: &str = "Camellia: not implemented by rustls";
const ARIA: &str = "ARIA: not implemented by rustls";
const SEED: &str = "SEED: not implemented by rustls";
const IDEA: &str = "IDEA: not implemented by rustls";

/// Key exchange: IANA spelling (upper case, after `TLS_`/`SSL_`), OpenSSL prefixes, auth, reasons.
type Kx = (&'static str, Names, Auth, Names);
#[rustfmt::skip]
static KX: &[Kx] = &[
    ("RSA", &[], Auth::Rsa, &[NO_FS_RSA]), // first: OpenSSL names without a prefix are static RSA
    ("NULL", &[], Auth::Any, &[ANON]),
    ("DHE_RSA", &["DHE-RSA", "EDH-RSA"], Auth::Rsa, &[FFDHE]),
    ("DHE_DSS", &["DHE-DSS", "EDH-DSS"], Auth::Any, &[FFDHE]),
    ("DH_RSA", &["DH-RSA"], Auth::Rsa, &[NO_FS_DH, FFDH]),
    ("DH_DSS", &["DH-DSS"], Auth::Any, &[NO_FS_DH, FFDH]),
    ("DH_ANON", &["ADH"], Auth::Any, &[ANON, FFDHE]),
    ("ECDH_RSA", &["ECDH-RSA"], Auth::Rsa, &[NO_FS_DH]),
    ("ECDH_ECDSA", &["ECDH-ECDSA"], Auth::Ecdsa, &[NO_FS_DH]),
    ("ECDHE_RSA", &["ECDHE-RSA", "ECDHE"], Auth::Rsa, &[]),
    ("ECDHE_ECDSA", &["ECDHE-ECDSA"], Auth::Ecdsa, &[]),
    ("ECDH_ANON", &["AECDH"], Auth::Any, &[ANON]),
    ("PSK", &["PSK"], Auth::Any, &[PSK]),
    ("DHE_PSK", &["DHE-PSK"], Auth::Any, &[PSK]),
    ("RSA_PSK", &["RSA-PSK"], Auth::Rsa, &[PSK]),
    ("ECDHE_PSK", &["ECDHE-PSK"], Auth::Any, &[PSK]),
    ("SRP_SHA", &["SRP"], Auth::Any, &[SRP]),
    ("SRP_SHA_RSA", &["SRP-RSA"], Auth::Rsa, &[SRP]),
    ("SRP_SHA_DSS", &["SRP-DSS"], Auth::Any, &[SRP]),
    ("KRB5", &["KRB5"], Auth::Any, &[KRB5]),
];

/// Bulk cipher: IANA spelling, OpenSSL spellings, replacement strength, reasons.
type Cipher = (&'static str, Names, Strength, Names);
#[rustfmt::skip]
static CIPHERS: &[Cipher] = &[
    ("AES_128_GCM", &["AES128-GCM"], Aes128, &[]),
    ("AES_256_GCM", &["AES256-GCM"], Aes256, &[]),
    ("CHACHA20_POLY1305", &["CHACHA20-POLY1305"], Chacha, &[]),
    ("AES_128_CBC", &["AES128", "AES128-CBC", "AES-128-CBC"], Aes128, &[CBC]),
    ("AES_256_CBC", &["AES256", "AES256-CBC", "AES-256-CBC"], Aes256, &[CBC]),
    ("AES_128_CCM", &["AES128-CCM"], Aes128, &[CCM]),
    ("AES_256_CCM", &["AES256-CCM"], Aes256, &[CCM]),
    ("AES_128_CCM_8", &["AES128-CCM8"], Aes128, &[CCM]),
    ("AES_256_CCM_8", &["AES256-CCM8"], Aes256, &[CCM]),
    ("3DES_EDE_CBC", &["DES-CBC3", "3DES-EDE-CBC"], Aes128, &[DES3, CBC]),
    ("DES_CBC", &["DES-CBC"], Aes128, &[DES, CBC]),
    ("DES40_CBC", &[], Aes128, &[EXPORT, CBC]),
    ("DES_CBC_40", &[], Aes128, &[EXPORT, CBC]),
    ("RC4_128", &["RC4"], Aes128, &[RC4]),
    ("RC4_40", &[], Aes128, &[RC4, EXPORT]),
    ("RC2_CBC_40", &["RC2-CBC"], Aes128, &[EXPORT, CBC]),
    ("NULL", &["NULL"], Aes128, &[NULL]),
    ("IDEA_CBC", &["IDEA-CBC", "IDEA"], Aes128, &[IDEA, CBC]),
    ("SEED_CBC", &["SEED"], Aes128, &[SEED, CBC]),
    ("CAMELLIA_128_CBC", &["CAMELLIA128"], Aes128, &[CAMELLIA, CBC]),
    ("CAMELLIA_256_CBC", &["CAMELLIA256"], Aes256, &[CAMELLIA, CBC]),
    ("CAMELLIA_128_GCM", &["CAMELLIA128-GCM"], Aes128, &[CAMELLIA]),
    ("CAMELLIA_256_GCM", &["CAMELLIA256-GCM"], Aes256, &[CAMELLIA]),
    ("ARIA_128_CBC", &["ARIA128"], Aes128, &[ARIA, CBC]),
    ("ARIA_256_CBC", &["ARIA256"], Aes256, &[ARIA, CBC]),
    ("ARIA_128_GCM", &["ARIA128-GCM"], Aes128, &[ARIA]),
    ("ARIA_256_GCM", &["ARIA256-GCM"], Aes256, &[ARIA]),
];

const MACS: &[&str] = &["SHA", "SHA256", "SHA384", "MD5", "NULL"];

/// Parses `tls.protocols` (case-insensitive "TLSv1.2", "TLSv1.3", "TLS1.2", "TLS1.3", or "TLS"
/// for every supported version). An empty list enables both versions; duplicates are ignored.
/// SSL, TLS 1.0 and TLS 1.1 are refused.
pub fn parse_protocols(
    names: &[String],
) -> Result<Vec<&'static SupportedProtocolVersion>, SuiteError> {
    let (mut tls12, mut tls13) = (names.is_empty(), names.is_empty());
    for name in names {
        match name.trim().to_ascii_uppercase().as_str() {
            "TLS" => (tls12, tls13) = (true, true),
            "TLSV1.2" | "TLS1.2" => tls12 = true,
            "TLSV1.3" | "TLS1.3" => tls13 = true,
            "SSL" | "SSLV2" | "SSLV2HELLO" | "SSLV3" | "TLSV1" | "TLSV1.0" | "TLSV1.1" | "TLS1"
            | "TLS1.0" | "TLS1.1" => {
                return Err(SuiteError::RefusedProtocol { name: name.clone() });
            }
            _ => return Err(SuiteError::UnknownProtocol { name: name.clone() }),
        }
    }
    let all = [(tls13, &TLS13), (tls12, &TLS12)];
    Ok(all
        .into_iter()
        .filter_map(|(on, v)| on.then_some(v))
        .collect())
}

/// Parses `tls.cipher_suites`: IANA, OpenSSL or Java/JSSE names, case-insensitive.
///
/// An empty list means the provider's defaults. Only suites in `provider.cipher_suites` are
/// returned, deduplicated and filtered to `versions`; every version in `versions` must keep at
/// least one suite. Weak or unimplemented suites are refused with the reason and a replacement.
pub fn parse_cipher_suites(
    names: &[String],
    versions: &[&'static SupportedProtocolVersion],
    provider: &CryptoProvider,
) -> Result<Vec<SupportedCipherSuite>, SuiteError> {
    let mut selected = if names.is_empty() {
        provider.cipher_suites.clone()
    } else {
        Vec::new()
    };
    for name in names {
        let suite = resolve(name, provider)?;
        if !selected.iter().any(|s| s.suite() == suite.suite()) {
            selected.push(suite);
        }
    }
    for v in versions {
        if !selected.iter().any(|s| s.version().version == v.version) {
            let suggestion = if v.version == ProtocolVersion::TLSv1_3 {
                "TLS_AES_128_GCM_SHA256"
            } else {
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 (RSA certificates) or \
                 TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 (ECDSA certificates)"
            };
            let version = protocol_name(v.version);
            return Err(SuiteError::NoSuiteForVersion {
                version,
                suggestion,
            });
        }
    }
    selected.retain(|s| versions.iter().any(|v| v.version == s.version().version));
    if selected.is_empty() {
        Err(SuiteError::NoSuites)
    } else {
        Ok(selected)
    }
}

/// The IANA name of a suite for logs, e.g. "TLS_AES_128_GCM_SHA256"; "unknown" if not in the table.
pub fn iana_name(suite: SupportedCipherSuite) -> &'static str {
    KNOWN
        .iter()
        .find(|k| k.id == suite.suite())
        .map_or("unknown", |k| k.iana)
}

/// The conventional name of a protocol version ("TLSv1.2", "TLSv1.3") for logs and metrics labels.
pub fn protocol_name(version: ProtocolVersion) -> &'static str {
    match version {
        ProtocolVersion::TLSv1_3 => "TLSv1.3",
        ProtocolVersion::TLSv1_2 => "TLSv1.2",
        ProtocolVersion::TLSv1_1 => "TLSv1.1",
        ProtocolVersion::TLSv1_0 => "TLSv1",
        ProtocolVersion::SSLv3 => "SSLv3",
        _ => "unknown",
    }
}

/// The name [`iana_name`] or [`protocol_name`] returns that equals `name`, "unknown" if none: a
/// connection moved from another process carries its names as strings, metrics labels are static.
pub fn known_name(name: &str) -> &'static str {
    const PROTOCOLS: [&str; 5] = ["TLSv1.3", "TLSv1.2", "TLSv1.1", "TLSv1", "SSLv3"];
    PROTOCOLS
        .iter()
        .copied()
        .chain(KNOWN.iter().map(|k| k.iana))
        .find(|k| *k == name)
        .unwrap_or("unknown")
}

/// Maps one configured name to a provider suite, or explains why it cannot be used.
fn resolve(name: &str, provider: &CryptoProvider) -> Result<SupportedCipherSuite, SuiteError> {
    let upper = name.trim().to_ascii_uppercase();
    let debug_name = |id: CipherSuite| format!("{id:?}"); // rustls spelling, e.g. TLS13_AES_128_GCM_SHA256
    let in_provider = |id: CipherSuite| provider.cipher_suites.iter().find(|s| s.suite() == id);
    if let Some(k) = KNOWN
        .iter()
        .find(|k| upper == k.iana || upper == k.openssl || upper == debug_name(k.id))
    {
        return in_provider(k.id)
            .copied()
            .ok_or_else(|| SuiteError::NotInProvider {
                name: name.to_owned(),
                offered: offered(provider),
            });
    }
    // Suites of custom providers that are not in the table, by their rustls name.
    if let Some(s) = provider
        .cipher_suites
        .iter()
        .find(|s| debug_name(s.suite()) == upper)
    {
        return Ok(*s);
    }
    if upper.ends_with("_SCSV") {
        return Err(SuiteError::SignallingValue {
            name: name.to_owned(),
        });
    }
    match analyse(&upper) {
        Some((reasons, auth, strength)) if !reasons.is_empty() => Err(SuiteError::RefusedSuite {
            name: name.to_owned(),
            reasons: sentence(&reasons),
            replacement: replacement(auth, strength),
        }),
        parsed => Err(SuiteError::UnknownSuite {
            name: name.to_owned(),
            hint: parsed.map_or(String::new(), |(_, a, s)| format!(" {}", replacement(a, s))),
            supported: offered(provider),
        }),
    }
}

/// Splits a classic suite name into key exchange, cipher and MAC. Returns the refusal reasons,
/// the authentication (`None` for TLS 1.3-style names without key exchange) and the strength.
fn analyse(upper: &str) -> Option<(Vec<&'static str>, Option<Auth>, Strength)> {
    let mut kx_reasons: Vec<&'static str> = Vec::new();
    let (kx, rest, sep) = if let Some(body) = upper
        .strip_prefix("TLS_")
        .or_else(|| upper.strip_prefix("SSL_"))
    {
        match body.split_once("_WITH_") {
            None => (None, body, '_'),
            Some((kx, rest)) => {
                let base = kx
                    .strip_suffix("_EXPORT")
                    .or_else(|| kx.strip_suffix("_EXPORT1024"));
                if base.is_some() {
                    kx_reasons.push(EXPORT);
                }
                let base = base.unwrap_or(kx);
                (Some(KX.iter().find(|e| e.0 == base)?), rest, '_')
            }
        }
    } else {
        let body = match upper
            .strip_prefix("EXP-")
            .or_else(|| upper.strip_prefix("EXP1024-"))
        {
            Some(body) => {
                kx_reasons.push(EXPORT);
                body
            }
            None => upper,
        };
        // Longest matching OpenSSL key-exchange prefix; none means static RSA.
        let mut best: (&Kx, usize) = (&KX[0], 0);
        for e in KX {
            for alias in e.1 {
                let matches = body.strip_prefix(alias).is_some_and(|t| t.starts_with('-'));
                if matches && alias.len() + 1 > best.1 {
                    best = (e, alias.len() + 1);
                }
            }
        }
        (Some(best.0), &body[best.1..], '-')
    };
    let (cipher, mac) = CIPHERS.iter().find_map(|c| {
        let names: &[&str] = if sep == '_' {
            std::slice::from_ref(&c.0)
        } else {
            c.1
        };
        names.iter().find_map(|n| {
            let tail = rest.strip_prefix(n)?;
            if tail.is_empty() {
                return Some((c, ""));
            }
            let mac = tail.strip_prefix(sep)?;
            MACS.contains(&mac).then_some((c, mac))
        })
    })?;
    let mut reasons: Vec<&'static str> = Vec::new();
    let mac_reasons: &[&str] = if mac == "MD5" { &[MD5] } else { &[] };
    let kx_table_reasons = kx.map_or(&[][..], |k| k.3);
    for r in [cipher.3, mac_reasons, &kx_reasons, kx_table_reasons].concat() {
        if !reasons.contains(&r) {
            reasons.push(r);
        }
    }
    Some((reasons, kx.map(|k| k.2), cipher.2))
}

/// The supported suite(s) replacing a refused one, as an operator-facing sentence.
fn replacement(auth: Option<Auth>, strength: Strength) -> String {
    let pick = |auth: Option<Auth>| {
        let found = KNOWN
            .iter()
            .find(|k| k.auth == auth && k.strength == strength);
        found.unwrap_or(&KNOWN[0])
    };
    let tls13 = pick(None).iana;
    let tls12 = |a: Auth| {
        format!(
            "{} (OpenSSL: {})",
            pick(Some(a)).iana,
            pick(Some(a)).openssl
        )
    };
    match auth {
        None => format!("Use {tls13}."),
        Some(Auth::Any) => format!(
            "Use {} or {}, depending on the certificate key type, or on TLS 1.3 {tls13}.",
            tls12(Auth::Ecdsa),
            tls12(Auth::Rsa)
        ),
        Some(a) => format!("Use {}, or on TLS 1.3 {tls13}.", tls12(a)),
    }
}

/// "a", "a and b", "a, b and c".
fn sentence(parts: &[&str]) -> String {
    match parts {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// The provider's suites as "IANA (OpenSSL)" names, for error messages.
fn offered(provider: &CryptoProvider) -> String {
    let name = |s: &SupportedCipherSuite| match KNOWN.iter().find(|k| k.id == s.suite()) {
        Some(k) if k.iana != k.openssl => format!("{} ({})", k.iana, k.openssl),
        Some(k) => k.iana.to_owned(),
        None => format!("{:?}", s.suite()),
    };
    provider
        .cipher_suites
        .iter()
        .map(name)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::aws_lc_rs::default_provider;

    type Versions<'a> = &'a [&'static SupportedProtocolVersion];
    /// (configured names, enabled versions, must appear in the error, must not appear)
    type Case<'a> = (&'a [&'a str], Versions<'a>, &'a [&'a str], &'a [&'a str]);
    const BOTH: Versions<'static> = &[&TLS13, &TLS12];

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    fn parse(names: &[&str], versions: Versions) -> Vec<&'static str> {
        let got = parse_cipher_suites(&strings(names), versions, &default_provider());
        let got = got.unwrap_or_else(|e| panic!("{names:?}: {e}"));
        got.into_iter().map(iana_name).collect()
    }

    fn check(msg: &str, present: &[&str], absent: &[&str]) {
        present
            .iter()
            .for_each(|n| assert!(msg.contains(n), "want {n:?} in: {msg}"));
        absent
            .iter()
            .for_each(|n| assert!(!msg.contains(n), "unwanted {n:?} in: {msg}"));
    }

    #[test]
    fn every_supported_suite_in_every_spelling() {
        // (IANA = Java/JSSE name, OpenSSL name, rustls id); TLS 1.3 OpenSSL names equal IANA.
        #[rustfmt::skip]
        let table = [
            ("TLS_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256", CipherSuite::TLS13_AES_128_GCM_SHA256),
            ("TLS_AES_256_GCM_SHA384", "TLS_AES_256_GCM_SHA384", CipherSuite::TLS13_AES_256_GCM_SHA384),
            ("TLS_CHACHA20_POLY1305_SHA256", "TLS_CHACHA20_POLY1305_SHA256", CipherSuite::TLS13_CHACHA20_POLY1305_SHA256),
            ("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256", CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
            ("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "ECDHE-ECDSA-AES256-GCM-SHA384", CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
            ("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305", CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
            ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "ECDHE-RSA-AES128-GCM-SHA256", CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
            ("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "ECDHE-RSA-AES256-GCM-SHA384", CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384),
            ("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", "ECDHE-RSA-CHACHA20-POLY1305", CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256),
        ];
        for (iana, openssl, id) in table {
            let (java, lower, rustls_name) = (iana, openssl.to_lowercase(), format!("{id:?}"));
            let version: Versions = if iana.contains("_WITH_") {
                &[&TLS12]
            } else {
                &[&TLS13]
            };
            for name in [
                iana,
                openssl,
                java,
                &lower,
                &rustls_name,
                &format!(" {iana} "),
            ] {
                let got = parse_cipher_suites(&strings(&[name]), version, &default_provider());
                let got: Vec<_> = got
                    .unwrap_or_else(|e| panic!("{name}: {e}"))
                    .iter()
                    .map(|s| s.suite())
                    .collect();
                assert_eq!(got, [id], "{name}");
                assert_eq!(parse(&[name], version), [iana], "{name}");
            }
        }
        let got = parse(
            &[
                "TLS_AES_256_GCM_SHA384",
                "ECDHE-RSA-AES128-GCM-SHA256",
                "tls_aes_256_gcm_sha384",
            ],
            BOTH,
        );
        assert_eq!(
            got,
            [
                "TLS_AES_256_GCM_SHA384",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
            ],
            "dedup, keep order"
        );
    }

    #[test]
    fn cassandra_tutorial_suite_message_is_exact() {
        let names = strings(&["TLS_RSA_WITH_AES_256_CBC_SHA"]);
        let msg = parse_cipher_suites(&names, BOTH, &default_provider())
            .unwrap_err()
            .to_string();
        let want = format!(
            "cipher suite \"TLS_RSA_WITH_AES_256_CBC_SHA\" is refused: {CBC} and {NO_FS_RSA}. \
             Use TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 (OpenSSL: ECDHE-RSA-AES256-GCM-SHA384), \
             or on TLS 1.3 TLS_AES_256_GCM_SHA384."
        );
        assert_eq!(msg, want);
    }

    #[test]
    fn error_messages() {
        const R128: &str =
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 (OpenSSL: ECDHE-RSA-AES128-GCM-SHA256)";
        const E128: &str =
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 (OpenSSL: ECDHE-ECDSA-AES128-GCM-SHA256)";
        const ANY_AUTH: &str = "depending on the certificate key type";
        const REFUSED: &str = "\" is refused: ";
        const UNKNOWN: &str = "unknown cipher suite \"";
        const LISTED: &str = "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 (ECDHE-RSA-AES128-GCM-SHA256)";
        #[rustfmt::skip]
        let table: &[Case] = &[
            // The Cassandra documentation's suites.
            (&["TLS_RSA_WITH_AES_128_CBC_SHA"], BOTH, &["\"TLS_RSA_WITH_AES_128_CBC_SHA\" is refused: ", "CBC mode", "Lucky13", "no forward secrecy (static RSA", R128, "or on TLS 1.3 TLS_AES_128_GCM_SHA256."], &["finite-field"]),
            (&["TLS_DHE_RSA_WITH_AES_128_CBC_SHA"], BOTH, &["\"TLS_DHE_RSA_WITH_AES_128_CBC_SHA\" is refused: ", "CBC mode", "finite-field DHE", R128, "TLS 1.3 TLS_AES_128_GCM_SHA256."], &["forward secrecy"]),
            // OpenSSL spellings.
            (&["AES128-SHA"], BOTH, &["\"AES128-SHA\" is refused: ", "CBC mode", "static RSA", R128], &["finite-field"]),
            (&["DES-CBC3-SHA"], BOTH, &["\"DES-CBC3-SHA\" is refused: ", "3DES: broken cipher", "CBC mode", "static RSA", R128], &[]),
            (&["RC4-MD5"], BOTH, &["\"RC4-MD5\" is refused: ", "RC4: broken cipher", "MD5 MAC", "static RSA", R128], &["CBC"]),
            (&["DHE-RSA-AES256-GCM-SHA384"], BOTH, &["\"DHE-RSA-AES256-GCM-SHA384\" is refused: finite-field DHE", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "TLS 1.3 TLS_AES_256_GCM_SHA384"], &["CBC", "forward secrecy"]),
            (&["AES128-GCM-SHA256"], BOTH, &["\"AES128-GCM-SHA256\" is refused: no forward secrecy (static RSA", R128], &["CBC", "finite-field"]),
            (&["EDH-RSA-DES-CBC3-SHA"], BOTH, &[REFUSED, "3DES", "CBC mode", "finite-field DHE", R128], &[]),
            (&["ECDHE-ECDSA-AES256-SHA384"], BOTH, &[REFUSED, "CBC mode", "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 (OpenSSL: ECDHE-ECDSA-AES256-GCM-SHA384)"], &["forward secrecy", "RSA_WITH"]),
            (&["ECDHE-RSA-AES128-SHA"], BOTH, &[REFUSED, "CBC mode", R128], &["forward secrecy"]),
            (&["ADH-AES128-SHA"], BOTH, &[REFUSED, "anonymous", "CBC mode", E128, R128, ANY_AUTH], &[]),
            (&["AECDH-NULL-SHA"], BOTH, &[REFUSED, "anonymous", "NULL: broken cipher"], &["CBC"]),
            (&["PSK-AES128-GCM-SHA256"], BOTH, &[REFUSED, "PSK: not used", ANY_AUTH], &["CBC"]),
            (&["CAMELLIA128-SHA"], BOTH, &[REFUSED, "Camellia: not implemented", "CBC mode", R128], &[]),
            (&["ECDH-RSA-AES128-SHA"], BOTH, &[REFUSED, "static (EC)DH", R128], &[]),
            (&["EXP-RC4-MD5"], BOTH, &[REFUSED, "EXPORT", "RC4", "MD5", "static RSA"], &[]),
            (&["DHE-RSA-CHACHA20-POLY1305"], BOTH, &[REFUSED, "finite-field DHE", "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", "TLS 1.3 TLS_CHACHA20_POLY1305_SHA256"], &["CBC"]),
            (&["SRP-RSA-AES-256-CBC-SHA"], BOTH, &[REFUSED, "SRP: not used", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"], &[]),
            (&["ecdhe-ecdsa-aes128-ccm8"], BOTH, &[REFUSED, "CCM: not implemented", E128], &[]),
            // IANA / Java spellings, including Java's SSL_ prefix.
            (&["SSL_RSA_WITH_3DES_EDE_CBC_SHA"], BOTH, &["\"SSL_RSA_WITH_3DES_EDE_CBC_SHA\" is refused: ", "3DES", "CBC mode", "static RSA", R128], &[]),
            (&["SSL_RSA_WITH_RC4_128_MD5"], BOTH, &[REFUSED, "RC4", "MD5", "static RSA", R128], &["CBC"]),
            (&["SSL_DH_anon_WITH_DES_CBC_SHA"], BOTH, &[REFUSED, "anonymous", "DES: broken", "finite-field DHE", ANY_AUTH], &[]),
            (&["SSL_RSA_EXPORT_WITH_RC4_40_MD5"], BOTH, &[REFUSED, "RC4", "EXPORT: broken cipher (deliberately weakened keys, FREAK/Logjam), MD5", "static RSA"], &[]),
            (&["TLS_DHE_DSS_WITH_AES_256_GCM_SHA384"], BOTH, &[REFUSED, "finite-field DHE", ANY_AUTH, "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"], &["CBC"]),
            (&["TLS_ECDHE_RSA_WITH_ARIA_256_GCM_SHA384"], BOTH, &[REFUSED, "ARIA", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"], &[]),
            (&["TLS_ECDH_ECDSA_WITH_CAMELLIA_128_CBC_SHA256"], BOTH, &[REFUSED, "Camellia", "CBC mode", "static (EC)DH", E128], &[]),
            (&["TLS_RSA_WITH_SEED_CBC_SHA", "TLS_AES_128_GCM_SHA256"], BOTH, &[REFUSED, "SEED", R128], &[]),
            (&["TLS_RSA_WITH_IDEA_CBC_SHA"], BOTH, &[REFUSED, "IDEA", R128], &[]),
            (&["TLS_NULL_WITH_NULL_NULL"], BOTH, &[REFUSED, "NULL: broken cipher", "anonymous"], &[]),
            (&["TLS_AES_128_CCM_SHA256"], BOTH, &[REFUSED, "CCM: not implemented", "Use TLS_AES_128_GCM_SHA256."], &["ECDHE"]),
            (&["tls_ecdhe_psk_with_chacha20_poly1305_sha256"], BOTH, &[REFUSED, "PSK", "TLS_CHACHA20_POLY1305_SHA256"], &[]),
            (&["TLS_KRB5_WITH_3DES_EDE_CBC_MD5"], BOTH, &[REFUSED, "Kerberos", "3DES", "MD5"], &[]),
            // Signalling values and unknown names.
            (&["TLS_EMPTY_RENEGOTIATION_INFO_SCSV"], BOTH, &["\"TLS_EMPTY_RENEGOTIATION_INFO_SCSV\" is not a cipher suite", "signalling value", "remove it"], &[]),
            (&["TLS_FALLBACK_SCSV"], BOTH, &["signalling value"], &[REFUSED]),
            (&["TLS_FOO_WITH_BAR"], BOTH, &["unknown cipher suite \"TLS_FOO_WITH_BAR\".", "TLS_AES_128_GCM_SHA256", LISTED], &["Use "]),
            (&["rot13"], BOTH, &["unknown cipher suite \"rot13\"", LISTED], &[]),
            (&[""], BOTH, &["unknown cipher suite \"\"", LISTED], &[]),
            (&["TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA256"], BOTH, &[UNKNOWN, "Use TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"], &[REFUSED]),
            // Every enabled version needs a suite.
            (&["TLS_AES_128_GCM_SHA256"], BOTH, &["protocol TLSv1.2 is enabled", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "remove TLSv1.2"], &[]),
            (&["ECDHE-RSA-AES128-GCM-SHA256"], &[&TLS13], &["protocol TLSv1.3 is enabled", "Add TLS_AES_128_GCM_SHA256", "remove TLSv1.3"], &[]),
            (&["ECDHE-RSA-AES128-GCM-SHA256"], &[], &["no cipher suite remains"], &[]),
        ];
        for (names, versions, present, absent) in table {
            match parse_cipher_suites(&strings(names), versions, &default_provider()) {
                Ok(s) => panic!("{names:?} unexpectedly accepted: {s:?}"),
                Err(e) => check(&e.to_string(), present, absent),
            }
        }
    }

    #[test]
    fn suites_missing_from_provider() {
        let mut provider = default_provider();
        provider
            .cipher_suites
            .retain(|s| !iana_name(*s).contains("CHACHA"));
        let names = strings(&["ECDHE-RSA-CHACHA20-POLY1305"]);
        let msg = parse_cipher_suites(&names, &[&TLS12], &provider)
            .unwrap_err()
            .to_string();
        let lacks =
            "\"ECDHE-RSA-CHACHA20-POLY1305\" is not offered by the configured crypto provider";
        check(
            &msg,
            &[
                lacks,
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 (ECDHE-RSA-AES128-GCM-SHA256)",
            ],
            &["CHACHA20_POLY1305_SHA256"],
        );
    }

    #[test]
    fn protocols() {
        #[rustfmt::skip]
        let accepted: &[(&[&str], &[&str])] = &[
            (&[], &["TLSv1.3", "TLSv1.2"]),
            (&["TLS"], &["TLSv1.3", "TLSv1.2"]),
            (&["tls"], &["TLSv1.3", "TLSv1.2"]),
            (&["TLSv1.2"], &["TLSv1.2"]),
            (&["TLS1.2", "tlsv1.2"], &["TLSv1.2"]),
            (&["TLSv1.3"], &["TLSv1.3"]),
            (&["tls1.3"], &["TLSv1.3"]),
            (&["TLSv1.2", "TLSv1.3", "TLS"], &["TLSv1.3", "TLSv1.2"]),
        ];
        for (names, want) in accepted {
            let got = parse_protocols(&strings(names)).unwrap_or_else(|e| panic!("{names:?}: {e}"));
            let got: Vec<_> = got.iter().map(|v| protocol_name(v.version)).collect();
            assert_eq!(&got, want, "{names:?}");
        }
        for bad in ["TLSv1", "TLSv1.1", "SSLv3", "SSLv2", "TLSv1.0", "TLS1.1"] {
            let msg = parse_protocols(&strings(&["TLSv1.2", bad]))
                .unwrap_err()
                .to_string();
            let refused = format!("protocol \"{bad}\" is refused");
            check(
                &msg,
                &[&refused, "RFC 8996", "no AEAD", "Use \"TLSv1.2\""],
                &[],
            );
        }
        let msg = parse_protocols(&strings(&["TLSv1.4"]))
            .unwrap_err()
            .to_string();
        check(
            &msg,
            &[
                "unknown protocol \"TLSv1.4\"",
                "\"TLSv1.2\"",
                "\"TLS1.3\"",
                "\"TLS\"",
            ],
            &[],
        );
    }

    #[test]
    fn empty_list_means_provider_defaults_for_enabled_versions() {
        let all = parse(&[], BOTH);
        assert_eq!(all.len(), default_provider().cipher_suites.len());
        assert!(!all.contains(&"unknown"), "{all:?}");
        let mut tls13 = parse(&[], &[&TLS13]);
        tls13.sort_unstable();
        let want = [
            "TLS_AES_128_GCM_SHA256",
            "TLS_AES_256_GCM_SHA384",
            "TLS_CHACHA20_POLY1305_SHA256",
        ];
        assert_eq!(tls13, want);
        let tls12 = parse(&[], &[&TLS12]);
        assert!(
            tls12.len() == 6 && tls12.iter().all(|n| n.starts_with("TLS_ECDHE_")),
            "{tls12:?}"
        );
        // Suites for disabled versions are dropped from explicit lists too.
        let got = parse(
            &["TLS_AES_128_GCM_SHA256", "ECDHE-RSA-AES128-GCM-SHA256"],
            &[&TLS12],
        );
        assert_eq!(got, ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]);
    }

    #[test]
    fn names_for_logs() {
        assert_eq!(protocol_name(ProtocolVersion::TLSv1_2), "TLSv1.2");
        assert_eq!(protocol_name(ProtocolVersion::TLSv1_3), "TLSv1.3");
        assert_eq!(protocol_name(ProtocolVersion::Unknown(0x7f00)), "unknown");
        assert_eq!(
            parse(&["TLS13_CHACHA20_POLY1305_SHA256"], &[&TLS13]),
            ["TLS_CHACHA20_POLY1305_SHA256"]
        );
    }
}
