//! `GET /status`: the sidecar's state as one JSON document, in the spirit of ghostunnel's `/_status`
//! and more: readiness and why, each listener (address, mode, connections, the storage port's last
//! connect), our identity and the trust anchors' expiry, the last reload, build and start time. Field
//! names are stable and listed in the README. Nothing secret: no key, no password, no peer address
//! (reload errors name files and config keys, as the log does).

use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

use crate::config::Config;
use crate::listener::inbound::InboundHandle;
use crate::listener::outbound::OutboundHandle;
use crate::listener::status::ListenerStatus;
use crate::tls::LoadedTls;
use crate::tls::material::TlsMaterial;
use crate::tls::x509::{CertInfo, fmt_time};

/// The git commit the binary was built from, when it says (see [`crate::set_git_commit`]).
pub(crate) static GIT_COMMIT: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// What `/status` reports beyond readiness; shared with the server (listeners) and the reloader.
#[derive(Debug)]
pub struct Status {
    started: SystemTime,
    fixed: Mutex<Fixed>,
    material: Mutex<MaterialStatus>,
    reload: Mutex<ReloadStatus>,
}

/// Set once at start.
#[derive(Default)]
struct Fixed {
    inbound: Vec<InboundHandle>,
    outbound: Vec<OutboundHandle>,
    offload: OffloadStatus,
    config: Option<String>,
}

impl std::fmt::Debug for Fixed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixed")
            .field("inbound", &self.inbound.len())
            .field("outbound", &self.outbound.len())
            .field("offload", &self.offload)
            .field("config", &self.config)
            .finish()
    }
}

impl Default for Status {
    fn default() -> Self {
        Self {
            started: SystemTime::now(),
            fixed: Mutex::default(),
            material: Mutex::default(),
            reload: Mutex::default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Status {
    /// What is fixed at start: the listeners, `offload` and the config's files.
    pub fn start(
        &self,
        config: &Config<LoadedTls>,
        inbound: Vec<InboundHandle>,
        outbound: Vec<OutboundHandle>,
    ) {
        let support = crate::relay::support();
        *lock(&self.fixed) = Fixed {
            inbound,
            outbound,
            offload: OffloadStatus {
                mode: config.offload.to_string(),
                ktls_available: support.available(),
                ktls: support.describe(),
            },
            config: config.sources.as_ref().map(|s| s.describe()),
        };
        self.set_material(&config.tls.material);
    }

    /// The material in use now (at start, and after each successful reload).
    pub fn set_material(&self, m: &TlsMaterial) {
        let earliest = m.cas.iter().min_by_key(|ca| ca.not_after);
        *lock(&self.material) = MaterialStatus {
            identity: Some(IdentityStatus::new(&m.identity, &m.origins.cert)),
            outbound_identity: m
                .outbound
                .as_ref()
                .map(|(_, info)| IdentityStatus::new(info, &("tls.outbound_keystore", "".into()))),
            trust: Some(TrustStatus {
                source: source(&m.origins.ca),
                cas: m.cas.len(),
                earliest_not_after: earliest.map(|ca| fmt_time(ca.not_after)),
                earliest_expiring: earliest.map(|ca| ca.subject.clone()),
                crls: m.crls.len(),
            }),
        };
    }

    /// A reload was attempted: `forced` by SIGHUP or because files changed; `Err` says why it failed.
    pub fn reloaded(&self, forced: bool, result: Result<(), &str>) {
        let mut r = lock(&self.reload);
        match result {
            Ok(()) => r.succeeded += 1,
            Err(_) => r.failed += 1,
        }
        r.last = Some(ReloadOutcome {
            result: if result.is_ok() { "ok" } else { "failed" },
            at: fmt_time(SystemTime::now()),
            trigger: if forced { "sighup" } else { "files_changed" },
            error: result.err().map(str::to_owned),
        });
    }

    /// The document, with readiness as `/readyz` decides it now.
    pub fn report(&self, ready: Result<(), String>, now: SystemTime) -> StatusReport {
        let fixed = lock(&self.fixed);
        let material = lock(&self.material).clone();
        let listeners = fixed
            .inbound
            .iter()
            .enumerate()
            .map(|(i, h)| h.status(i))
            .chain(fixed.outbound.iter().enumerate().map(|(i, h)| h.status(i)))
            .collect();
        StatusReport {
            ok: ready.is_ok(),
            message: ready.err().unwrap_or_else(|| "ready".to_owned()),
            time: fmt_time(now),
            started_at: fmt_time(self.started),
            uptime_seconds: now.duration_since(self.started).map_or(0, |d| d.as_secs()),
            build: Build {
                version: env!("CARGO_PKG_VERSION"),
                git_commit: GIT_COMMIT.get().copied(),
                rustls_provider: "aws-lc-rs",
                fips: crate::tls::provider().fips(),
            },
            config: fixed.config.clone(),
            offload: fixed.offload.clone(),
            listeners,
            identity: material.identity,
            outbound_identity: material.outbound_identity,
            trust: material.trust,
            reload: lock(&self.reload).clone(),
        }
    }
}

fn source((key, path): &(&'static str, std::path::PathBuf)) -> String {
    if path.as_os_str().is_empty() {
        key.to_string()
    } else {
        format!("{key} {}", path.display())
    }
}

/// The `/status` document. The README's "/status" section lists every field.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    /// Ready, as `/readyz` says.
    pub ok: bool,
    /// `ready`, or why not (the `/readyz` reason).
    pub message: String,
    pub time: String,
    pub started_at: String,
    pub uptime_seconds: u64,
    pub build: Build,
    /// The files the config was read from (`null` for an in-memory config).
    pub config: Option<String>,
    pub offload: OffloadStatus,
    pub listeners: Vec<ListenerStatus>,
    pub identity: Option<IdentityStatus>,
    pub outbound_identity: Option<IdentityStatus>,
    pub trust: Option<TrustStatus>,
    pub reload: ReloadStatus,
}

#[derive(Debug, Serialize)]
pub struct Build {
    pub version: &'static str,
    pub git_commit: Option<&'static str>,
    /// The one crypto provider rustls runs on (`tls::suites::provider`).
    pub rustls_provider: &'static str,
    /// Whether that provider runs in FIPS mode.
    pub fips: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct OffloadStatus {
    /// `offload` as configured: `auto`, `off` or `require`.
    pub mode: String,
    pub ktls_available: bool,
    /// What this kernel offloads, or why it cannot.
    pub ktls: String,
}

#[derive(Debug, Clone, Default)]
struct MaterialStatus {
    identity: Option<IdentityStatus>,
    outbound_identity: Option<IdentityStatus>,
    trust: Option<TrustStatus>,
}

/// One of our certificates.
#[derive(Debug, Clone, Serialize)]
pub struct IdentityStatus {
    /// The config key and file it came from.
    pub source: String,
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub version: u32,
    pub ip_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    pub uri_sans: Vec<String>,
    pub not_before: String,
    pub not_after: String,
}

impl IdentityStatus {
    fn new(c: &CertInfo, origin: &(&'static str, std::path::PathBuf)) -> Self {
        Self {
            source: source(origin),
            subject: c.subject.clone(),
            issuer: c.issuer.clone(),
            serial: c.serial.clone(),
            version: c.version,
            ip_sans: c.ips.iter().map(ToString::to_string).collect(),
            dns_sans: c.dns.clone(),
            uri_sans: c.uris.clone(),
            not_before: fmt_time(c.not_before),
            not_after: fmt_time(c.not_after),
        }
    }
}

/// The trust anchors.
#[derive(Debug, Clone, Serialize)]
pub struct TrustStatus {
    pub source: String,
    /// How many trusted CA certificates.
    pub cas: usize,
    /// The earliest notAfter among them: when the first one stops verifying peers.
    pub earliest_not_after: Option<String>,
    /// That CA's subject.
    pub earliest_expiring: Option<String>,
    /// Revocation lists loaded (`tls.crl`).
    pub crls: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadStatus {
    /// The last reload attempted (SIGHUP or changed files); `null` before the first.
    pub last: Option<ReloadOutcome>,
    /// Since start.
    pub succeeded: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReloadOutcome {
    /// `ok` (the new material is in use) or `failed` (the previous material still is).
    pub result: &'static str,
    pub at: String,
    /// `sighup` or `files_changed`.
    pub trigger: &'static str,
    /// With `failed`: the message the log shows.
    pub error: Option<String>,
}
