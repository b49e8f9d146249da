//! `ringseal check`: the PKI doctor. After the config has loaded (every file read and every hard check of
//! `config` and `tls::material` passed), it reports what an operator needs to see about the identity and
//! trust — subject, issuer, SANs, validity, key, version, EKU, whether our chain verifies against our own
//! trust store — and warns about what works today but will hurt: v1 certificates, no IP SAN while
//! endpoint verification is on, expiry within 30 days, SHA-1, RSA below 2048 bits, an OU that is not the
//! cluster name. Errors (our chain does not verify) make the exit status non-zero.

use std::fmt::Write;
use std::time::SystemTime;

use rustls_pki_types::{CertificateDer, UnixTime};
use serde::Serialize;
use x509_parser::prelude::{FromDer, X509Certificate};

use ringseal::config::Config;
use ringseal::tls::LoadedTls;
use ringseal::tls::v1::{self, V1Trust};
use ringseal::tls::verify::classify;
use ringseal::tls::x509::{CertInfo, fmt_time};

/// Certificates expiring sooner than this are warned about.
const EXPIRY_WARNING_DAYS: i64 = 30;

/// Everything `check` found.
#[derive(Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    pub cluster_name: Option<String>,
    pub identity: IdentityReport,
    pub outbound_identity: Option<IdentityReport>,
    pub trust: Trust,
    /// Every listener, with the material it uses; warnings and errors about a listener's own material
    /// (`[inbound.tls]`) are in `warnings`/`errors`, prefixed with `listener "NAME": `.
    pub listeners: Vec<ListenerReport>,
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
}

/// One listener: its name and the policy it runs with.
#[derive(Debug, Serialize)]
pub struct ListenerReport {
    pub name: String,
    /// `inbound` or `outbound`.
    pub kind: &'static str,
    pub listen: String,
    /// `[tls]` (the default policy) or the listener's own table, e.g. `inbound[1].tls`.
    pub policy: String,
    /// `required`, `optional` or `off`.
    pub client_auth: String,
    pub identity: IdentityReport,
    pub trust: Trust,
}

/// One identity: where it came from, its leaf and what verifying it against our trust store says.
#[derive(Debug, Serialize)]
pub struct IdentityReport {
    /// The config key and file, e.g. `tls.keystore /etc/cassandra/conf/node1.jks`.
    pub source: String,
    pub certificate: Cert,
    /// Further certificates of the chain (intermediates, often the CA itself).
    pub chain: Vec<Cert>,
    /// Checked when the config loaded: a mismatch is refused there.
    pub key_matches_certificate: bool,
    /// Per usage: `ok` or why not.
    pub verifies_for_server_auth: String,
    pub verifies_for_client_auth: String,
}

#[derive(Debug, Serialize)]
pub struct Trust {
    pub source: String,
    pub cas: Vec<Cert>,
}

/// What we show about one certificate.
#[derive(Debug, Serialize)]
pub struct Cert {
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub version: u32,
    pub not_before: String,
    pub not_after: String,
    pub days_left: i64,
    /// e.g. "ECDSA P-256", "RSA 2048", "Ed25519".
    pub key: String,
    /// RSA modulus or curve size in bits (0 when unknown).
    pub key_bits: usize,
    /// The signature algorithm, e.g. "sha256WithRSAEncryption".
    pub signature: String,
    pub ip_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    /// Extended key usages; empty when the extension is absent (any usage).
    pub eku: Vec<String>,
    pub is_ca: bool,
}

impl Cert {
    fn new(der: &CertificateDer<'_>) -> Option<Self> {
        let info = CertInfo::parse(der)?;
        let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
        let (key, key_bits) = key_description(&cert);
        let sig_oid = &cert.signature_algorithm.algorithm;
        let signature = x509_parser::objects::oid2sn(sig_oid, x509_parser::objects::oid_registry())
            .map_or_else(|_| sig_oid.to_id_string(), str::to_owned);
        let eku = match cert.extended_key_usage() {
            Ok(Some(e)) => {
                let e = &e.value;
                let mut v = Vec::new();
                for (set, name) in [
                    (e.any, "any"),
                    (e.server_auth, "serverAuth"),
                    (e.client_auth, "clientAuth"),
                    (e.code_signing, "codeSigning"),
                    (e.email_protection, "emailProtection"),
                    (e.time_stamping, "timeStamping"),
                    (e.ocsp_signing, "OCSPSigning"),
                ] {
                    if set {
                        v.push(name.to_owned());
                    }
                }
                v.extend(e.other.iter().map(|o| o.to_id_string()));
                v
            }
            _ => Vec::new(),
        };
        Some(Self {
            subject: info.subject,
            issuer: info.issuer,
            serial: info.serial,
            version: info.version,
            not_before: fmt_time(info.not_before),
            not_after: fmt_time(info.not_after),
            days_left: days_left(info.not_after),
            key,
            key_bits,
            signature,
            ip_sans: info.ips.iter().map(ToString::to_string).collect(),
            dns_sans: info.dns,
            eku,
            is_ca: cert.is_ca(),
        })
    }

    fn uses_weak_hash(&self) -> bool {
        let s = self.signature.to_ascii_lowercase();
        s.contains("sha1") || s.contains("md5") || s.contains("sha-1")
    }
}

fn key_description(cert: &X509Certificate<'_>) -> (String, usize) {
    use x509_parser::public_key::PublicKey;
    let spki = cert.public_key();
    let alg = spki.algorithm.algorithm.to_id_string();
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => (format!("RSA {}", rsa.key_size()), rsa.key_size()),
        Ok(PublicKey::EC(point)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string());
            let name = match curve.as_deref() {
                Some("1.2.840.10045.3.1.7") => "P-256",
                Some("1.3.132.0.34") => "P-384",
                Some("1.3.132.0.35") => "P-521",
                _ => "(unknown curve)",
            };
            (format!("ECDSA {name}"), point.key_size())
        }
        _ if alg == "1.3.101.112" => ("Ed25519".into(), 256),
        _ if alg == "1.3.101.113" => ("Ed448".into(), 456),
        _ => (format!("unknown ({alg})"), 0),
    }
}

fn days_left(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::now()) {
        Ok(d) => (d.as_secs() / 86_400) as i64,
        Err(e) => -((e.duration().as_secs() / 86_400) as i64) - 1,
    }
}

/// Who asks: `check` gets everything; `run` logs the report at start-up, where our identity's expiry is
/// already warned about by the reloader (at 30, 14, 7 and 1 days, and again after reloads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Check,
    Startup,
}

/// Examines a loaded config: `[tls]`, then each listener's policy (those with their own material in
/// full, their findings named by the listener).
pub fn examine(config: &Config<LoadedTls>, purpose: Purpose) -> Report {
    let (mut identities, trust, mut warnings, mut errors) =
        examine_tls(config, &config.tls, purpose);
    let kinds = config
        .inbound
        .iter()
        .enumerate()
        .map(|(i, l)| ("inbound", i, &l.name, l.listen, &l.tls))
        .chain(
            config
                .outbound
                .iter()
                .enumerate()
                .map(|(i, l)| ("outbound", i, &l.name, l.listen, &l.tls)),
        );
    let mut listeners = Vec::new();
    let mut examined: Vec<&LoadedTls> = vec![&config.tls];
    for (kind, index, name, listen, tls) in kinds {
        let own = !std::sync::Arc::ptr_eq(&tls.material, &config.tls.material);
        let (ids, trust, w, e) = examine_tls(config, tls, purpose);
        if !examined
            .iter()
            .any(|t| std::sync::Arc::ptr_eq(&t.material, &tls.material))
        {
            examined.push(tls);
            warnings.extend(w.into_iter().map(|w| format!("listener \"{name}\": {w}")));
            errors.extend(e.into_iter().map(|e| format!("listener \"{name}\": {e}")));
        }
        let identity = ids.into_iter().next().expect("the identity always exists");
        listeners.push(ListenerReport {
            name: name.to_string(),
            kind,
            listen: listen.to_string(),
            policy: if own {
                format!("{kind}[{index}].tls")
            } else {
                "[tls]".to_owned()
            },
            client_auth: tls.require_client_auth.to_string(),
            identity,
            trust,
        });
    }
    let outbound_identity = (identities.len() > 1).then(|| identities.remove(1));
    Report {
        ok: errors.is_empty(),
        cluster_name: config.cluster_name.clone(),
        identity: identities.remove(0),
        outbound_identity,
        trust,
        listeners,
        warnings,
        errors,
    }
}

/// One policy's identities (ours, then the outbound one if any), trust, warnings and errors.
fn examine_tls(
    config: &Config<LoadedTls>,
    tls: &LoadedTls,
    purpose: Purpose,
) -> (Vec<IdentityReport>, Trust, Vec<String>, Vec<String>) {
    let material = &tls.material;
    let mut warnings = Vec::new();
    let mut errors = Vec::new();
    let v1_trust = V1Trust::new(
        true,
        material.clone(),
        tls.crl_expired,
        ringseal::tls::provider().signature_verification_algorithms,
    );
    let own = [
        Some((
            &material.certified,
            "identity",
            origin(&material.origins.cert),
        )),
        material
            .outbound
            .as_ref()
            .map(|(c, _)| (c, "outbound identity", "tls.outbound_keystore".to_owned())),
    ];
    let mut identities = Vec::new();
    for (certified, role, source) in own.into_iter().flatten() {
        let Some(chain) = ChainCheck::of(&certified.cert, material, &v1_trust) else {
            continue;
        };
        chain.report_failures(role, &mut errors);
        warn_about_identity(
            config,
            material,
            role,
            &chain.leaf,
            &chain.rest,
            purpose,
            &mut warnings,
        );
        identities.push(chain.into_report(source));
    }
    let cas: Vec<Cert> = material.ca_certs.iter().filter_map(Cert::new).collect();
    warn_about_cas(&cas, &mut warnings);
    if !material.sends_ca_names() {
        warnings.push(format!(
            "{}: the names of its {} trusted CAs take {} KiB, more than a CertificateRequest can \
             carry to every peer; ringseal sends no CA names, and peers choose their certificate \
             without that hint",
            origin(&material.origins.ca),
            material.cas.len(),
            material.ca_names_len() / 1024
        ));
    }
    let trust = Trust {
        source: origin(&material.origins.ca),
        cas,
    };
    (identities, trust, warnings, errors)
}

/// `tls.cert /etc/...`: the config key and the file it names.
fn origin((key, path): &(&'static str, std::path::PathBuf)) -> String {
    format!("{key} {}", path.display())
}

/// One of our chains, parsed, and what our own trust store says of it for each usage.
struct ChainCheck {
    leaf: Cert,
    rest: Vec<Cert>,
    server_auth: String,
    client_auth: String,
}

impl ChainCheck {
    fn of(
        chain: &[CertificateDer<'static>],
        material: &ringseal::tls::material::TlsMaterial,
        v1_trust: &V1Trust,
    ) -> Option<Self> {
        let mut parsed = chain.iter().filter_map(Cert::new);
        let leaf = parsed.next()?;
        let [server_auth, client_auth] = [
            webpki::KeyUsage::server_auth(),
            webpki::KeyUsage::client_auth(),
        ]
        .map(|usage| verify_own(chain, material, v1_trust, usage));
        Some(Self {
            leaf,
            rest: parsed.collect(),
            server_auth,
            client_auth,
        })
    }

    fn report_failures(&self, role: &str, errors: &mut Vec<String>) {
        for (usage, verdict) in [
            ("serverAuth", &self.server_auth),
            ("clientAuth", &self.client_auth),
        ] {
            if verdict != "ok" {
                errors.push(format!(
                    "{role} \"{}\" does not verify against the trust store for {usage}: {verdict}; \
                     peers trusting the same CAs will refuse it",
                    self.leaf.subject
                ));
            }
        }
    }

    fn into_report(self, source: String) -> IdentityReport {
        IdentityReport {
            source,
            certificate: self.leaf,
            chain: self.rest,
            key_matches_certificate: true,
            verifies_for_server_auth: self.server_auth,
            verifies_for_client_auth: self.client_auth,
        }
    }
}

/// Trusted CAs that expired, expire soon, or have a weak key.
fn warn_about_cas(cas: &[Cert], warnings: &mut Vec<String>) {
    for ca in cas {
        if ca.days_left < 0 {
            warnings.push(format!(
                "trusted CA \"{}\" expired at {}: remove it from the trust store once no peer \
                 certificate needs it",
                ca.subject, ca.not_after
            ));
        } else if ca.days_left < EXPIRY_WARNING_DAYS {
            warnings.push(format!(
                "trusted CA \"{}\" expires in {} days ({}): roll out the next CA now (add it to every \
                 trust store first)",
                ca.subject, ca.days_left, ca.not_after
            ));
        }
        if ca.key.starts_with("RSA") && ca.key_bits < 2048 {
            warnings.push(format!(
                "trusted CA \"{}\" has an {} key, below 2048 bits",
                ca.subject, ca.key
            ));
        }
    }
}

/// Our own chain against our own trust store, for one usage: "ok" or the reason.
fn verify_own(
    chain: &[CertificateDer<'static>],
    material: &ringseal::tls::material::TlsMaterial,
    v1_trust: &V1Trust,
    usage: webpki::KeyUsage,
) -> String {
    let now = UnixTime::now();
    let result = if v1::is_v1(&chain[0]) {
        v1_trust.verify_leaf(&chain[0], now)
    } else {
        webpki::EndEntityCert::try_from(&chain[0])
            .map_err(ringseal::tls::verify::webpki_error)
            .and_then(|ee| {
                ee.verify_for_usage(
                    ringseal::tls::provider()
                        .signature_verification_algorithms
                        .all,
                    &material.roots.roots,
                    &chain[1..],
                    now,
                    usage,
                    None,
                    None,
                )
                .map(|_| ())
                .map_err(ringseal::tls::verify::webpki_error)
            })
    };
    match result {
        Ok(()) => "ok".into(),
        Err(e) => classify(&e).1,
    }
}

fn warn_about_identity(
    config: &Config<LoadedTls>,
    material: &ringseal::tls::material::TlsMaterial,
    role: &str,
    leaf: &Cert,
    rest: &[Cert],
    purpose: Purpose,
    warnings: &mut Vec<String>,
) {
    if leaf.version == 1 {
        warnings.push(format!(
            "{role} \"{}\" is an X.509 v1 certificate: no SANs (endpoint verification cannot pass), no \
             key usage; peers need tls.accept_v1_certificates = true (Java accepts v1, webpki does not); \
             reissue it with `ringseal certs node --ip ...`",
            leaf.subject
        ));
    }
    let endpoint_checked = config
        .inbound
        .iter()
        .map(|l| l.require_endpoint_verification)
        .chain(
            config
                .outbound
                .iter()
                .map(|o| o.require_endpoint_verification),
        )
        .any(|on| on);
    if endpoint_checked && leaf.ip_sans.is_empty() {
        warnings.push(format!(
            "endpoint verification is on but {role} \"{}\" has no IP SAN: peers that verify endpoints \
             will refuse this node; reissue it with the node's IP (`ringseal certs node --ip ...`)",
            leaf.subject
        ));
    }
    if leaf.days_left < EXPIRY_WARNING_DAYS && purpose == Purpose::Check {
        warnings.push(format!(
            "{role} \"{}\" expires in {} days ({}); issue the next one now",
            leaf.subject, leaf.days_left, leaf.not_after
        ));
    }
    for c in std::iter::once(leaf).chain(rest) {
        if c.uses_weak_hash() {
            warnings.push(format!(
                "\"{}\" is signed with {} (SHA-1/MD5 signatures are forgeable; webpki refuses them): \
                 reissue it with SHA-256",
                c.subject, c.signature
            ));
        }
    }
    if leaf.key.starts_with("RSA") && leaf.key_bits < 2048 {
        warnings.push(format!(
            "{role} \"{}\" has an {} key, below 2048 bits (rustls refuses to use it)",
            leaf.subject, leaf.key
        ));
    }
    if let Some(cluster) = &config.cluster_name {
        warn_about_ou(material, cluster, role, leaf, warnings);
    }
}

/// The guides' convention (and allow-lists on OU) expect the cluster's name as the OU.
fn warn_about_ou(
    material: &ringseal::tls::material::TlsMaterial,
    cluster: &str,
    role: &str,
    leaf: &Cert,
    warnings: &mut Vec<String>,
) {
    let ous = if role == "identity" {
        material.identity.ou.clone()
    } else {
        material
            .outbound
            .as_ref()
            .map(|(_, i)| i.ou.clone())
            .unwrap_or_default()
    };
    if !ous.iter().any(|ou| ou == cluster) {
        warnings.push(format!(
            "{role} \"{}\" has OU {} but the cluster is \"{cluster}\": allow-lists on OU (and the \
             guides' convention) expect the cluster name",
            leaf.subject,
            if ous.is_empty() {
                "none".to_owned()
            } else {
                ous.iter()
                    .map(|o| format!("\"{o}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ));
    }
}

/// The report as text for a terminal.
pub fn render(report: &Report, config: &Config<LoadedTls>) -> String {
    let mut out = String::new();
    let _ = match (report.errors.len(), report.warnings.len()) {
        (0, 0) => writeln!(out, "config OK"),
        (0, w) => writeln!(out, "config OK, {w} warning(s)"),
        (e, w) => writeln!(out, "config loaded, {e} error(s), {w} warning(s)"),
    };
    if let Some(name) = &report.cluster_name {
        let _ = writeln!(out, "cluster    {name}");
    }
    for (title, id) in std::iter::once(("identity", &report.identity))
        .chain(report.outbound_identity.iter().map(|i| ("outbound", i)))
    {
        let _ = writeln!(out, "{title:<10} {}", id.source);
        render_cert(&mut out, &id.certificate);
        let _ = writeln!(
            out,
            "  keypair  private key matches the certificate\n  verifies serverAuth: {}; clientAuth: {}",
            id.verifies_for_server_auth, id.verifies_for_client_auth
        );
        for c in &id.chain {
            let _ = writeln!(
                out,
                "  chain    {} (until {}, {})",
                c.subject, c.not_after, c.signature
            );
        }
    }
    let _ = writeln!(
        out,
        "trust      {} ({} CA certificate(s))",
        report.trust.source,
        report.trust.cas.len()
    );
    for ca in &report.trust.cas {
        let _ = writeln!(
            out,
            "  CA       {} (v{}, {}, until {}, {} days left)",
            ca.subject, ca.version, ca.key, ca.not_after, ca.days_left
        );
    }
    for l in &report.listeners {
        let id = &l.identity;
        let _ = writeln!(
            out,
            "listener   {} ({} {}): {}, client auth {}, identity \"{}\" until {} ({} days left), \
             serverAuth {}, clientAuth {}; trust {} ({} CA certificate(s))",
            l.name,
            l.kind,
            l.listen,
            l.policy,
            l.client_auth,
            id.certificate.subject,
            id.certificate.not_after,
            id.certificate.days_left,
            id.verifies_for_server_auth,
            id.verifies_for_client_auth,
            l.trust.source,
            l.trust.cas.len()
        );
    }
    out.push_str(&ringseal::describe(config));
    for w in &report.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    for e in &report.errors {
        let _ = writeln!(out, "error: {e}");
    }
    out
}

fn render_cert(out: &mut String, c: &Cert) {
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(", ")
        }
    };
    let _ = writeln!(
        out,
        "  subject  {}\n  issuer   {}\n  serial   {}\n  version  v{}\n  key      {}\n  signed   {}\n  \
         valid    {} .. {} ({} days left)\n  IP SANs  {}\n  DNS SANs {}\n  EKU      {}",
        c.subject,
        c.issuer,
        c.serial,
        c.version,
        c.key,
        c.signature,
        c.not_before,
        c.not_after,
        c.days_left,
        list(&c.ip_sans),
        list(&c.dns_sans),
        if c.eku.is_empty() {
            "none (any usage)".to_owned()
        } else {
            c.eku.join(", ")
        },
    );
}
