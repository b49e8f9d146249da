//! Hot reload: on SIGHUP, and whenever the config file or a file it names changes (checked every
//! `tls.reload_interval`), the config is read and validated again and every listener gets the new TLS
//! material and peer policy. New handshakes use it; established connections keep running.
//!
//! Change detection compares a fingerprint of the *contents* of the config and of every certificate,
//! key and CRL file, not names or modification times, so it keeps working through a Kubernetes-style
//! `..data` symlink swap and through editors that replace files. A reload that fails (unreadable file,
//! key not matching the certificate, a half-written file, an empty CA bundle, a malformed CRL) keeps
//! the old material, logs why, counts `result="error"`, and is retried at the next check: a pair that
//! was caught half-written is picked up complete a moment later, never mixed.

use std::time::{Duration, SystemTime};

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::admin::Health;
use crate::config::{Config, Sources};
use crate::events::{Events, Status};
use crate::listener::inbound::InboundHandle;
use crate::listener::outbound::OutboundHandle;
use crate::metrics;
use crate::tls::material::FileBytes;
use crate::tls::x509::fmt_time;
use crate::tls::{CrlExpired, LoadedTls};

/// Days before our certificate's expiry at which a warning is logged (each once).
const EXPIRY_WARNINGS: [u64; 4] = [30, 14, 7, 1];

/// Reloads one config file into running listeners.
pub struct Reloader {
    sources: Sources,
    current: Config<LoadedTls>,
    /// The fingerprint of the files as last applied (or at start).
    applied_fingerprint: Option<u64>,
    inbound: Vec<InboundHandle>,
    outbound: Vec<OutboundHandle>,
    health: Arc<Health>,
    last_error: Option<String>,
    /// The expiry warning threshold (days) last logged for the current identity.
    warned: Option<u64>,
    events: Arc<dyn Events>,
    status: Status,
}

impl Reloader {
    pub fn new(
        sources: Sources,
        current: Config<LoadedTls>,
        inbound: Vec<InboundHandle>,
        outbound: Vec<OutboundHandle>,
        health: Arc<Health>,
        events: Arc<dyn Events>,
        status: Status,
    ) -> Self {
        let mut r = Self {
            events,
            status,
            applied_fingerprint: None,
            sources,
            current,
            inbound,
            outbound,
            health,
            last_error: None,
            warned: None,
        };
        r.applied_fingerprint = r.fingerprint_files().ok();
        r.check_expiry();
        r.warn_expired_crls();
        r
    }

    /// How long until the next check for changed files.
    pub fn interval(&self) -> Duration {
        self.current.tls.reload_interval
    }

    /// Checks for changes and reloads if there are any; `forced` (SIGHUP) reloads regardless. A reload
    /// is announced to [`Events`] before it starts and after it ends, applied or not.
    pub fn check(&mut self, forced: bool) {
        if forced {
            self.events.reloading();
        }
        let fingerprint = match self.fingerprint_files() {
            Ok(f) => f,
            Err(e) => {
                // Unforced, a file that stays unreadable is only news when the error changes.
                let news = forced || self.last_error.as_ref() != Some(&e);
                if news && !forced {
                    self.events.reloading();
                }
                self.failed(e, forced);
                if news {
                    self.events.reloaded(&self.status);
                }
                return;
            }
        };
        if !forced && Some(fingerprint) == self.applied_fingerprint {
            self.check_expiry();
            return;
        }
        if !forced {
            self.events.reloading();
        }
        match crate::runtime::load(&self.sources) {
            Ok(loaded) => self.apply(loaded.config, fingerprint, forced),
            Err(e) => self.failed(e.to_string(), forced),
        }
        self.events.reloaded(&self.status);
    }

    /// Hands `config` to every listener.
    fn apply(&mut self, config: Config<LoadedTls>, fingerprint: u64, forced: bool) {
        let restart_needed = self.layout_changes(&config);
        for (h, cfg) in self.inbound.iter().zip(&config.inbound) {
            h.apply(cfg);
        }
        for (h, cfg) in self.outbound.iter().zip(&config.outbound) {
            h.apply(cfg);
        }
        metrics::reload(true);
        self.current
            .tls
            .material
            .retire_expiry(&config.tls.material);
        config.tls.material.publish_expiry();
        self.health.set_identity(&config.tls.material.identity);
        self.health.status.set_material(&config.tls.material);
        self.health.status.reloaded(forced, Ok(()));
        let m = &config.tls.material;
        tracing::info!(
            "reloaded {}: identity \"{}\" valid until {}, {} trusted CA(s), {} CRL(s)",
            self.sources.describe(),
            m.identity.subject,
            fmt_time(m.identity.not_after),
            m.cas.len(),
            m.crls.len()
        );
        if !restart_needed.is_empty() {
            tracing::warn!(
                "{}: {} changed; that part is fixed at start and NOT applied: restart ringseal to apply it",
                self.sources.describe(),
                restart_needed.join(", ")
            );
        }
        if m.identity.subject != self.current.tls.material.identity.subject
            || m.identity.not_after != self.current.tls.material.identity.not_after
        {
            self.warned = None;
        }
        self.status.identity = m.identity.subject.clone();
        self.status.identity_not_after = m.identity.not_after;
        self.status.last_reload = Some((SystemTime::now(), Ok(())));
        self.current = config;
        self.applied_fingerprint = Some(fingerprint);
        self.last_error = None;
        self.check_expiry();
        self.warn_expired_crls();
    }

    /// The contents of the config file and of every file the current config names.
    fn fingerprint_files(&self) -> Result<u64, String> {
        use std::hash::{Hash, Hasher};
        let text = self.sources.read().map_err(|e| format!("config {e}"))?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut h);
        if let Some(files) = &self.current.tls.files {
            FileBytes::read(files)
                .map_err(|e| format!("config {}: {e}", self.sources.describe()))?
                .fingerprint()
                .hash(&mut h);
        }
        Ok(h.finish())
    }

    fn failed(&mut self, error: String, forced: bool) {
        metrics::reload(false);
        self.status.last_reload = Some((SystemTime::now(), Err(error.clone())));
        self.health.status.reloaded(forced, Err(&error));
        // Logged when it first happens or changes, not at every check while the files stay broken.
        if self.last_error.as_ref() != Some(&error) {
            tracing::warn!("reload failed, still serving the previous certificates: {error}");
            self.last_error = Some(error);
        }
    }

    /// What a reload cannot change in place: listener addresses, `[limits]`, `offload`, `[permissive]`
    /// and `[logging]`.
    fn layout_changes(&self, new: &Config<LoadedTls>) -> Vec<String> {
        let old = &self.current;
        let mut changed = Vec::new();
        let inbound = |c: &Config<LoadedTls>| {
            c.inbound
                .iter()
                .map(|l| (l.listen, l.forward))
                .collect::<Vec<_>>()
        };
        let outbound = |c: &Config<LoadedTls>| {
            c.outbound
                .iter()
                .map(|l| (l.listen, l.target))
                .collect::<Vec<_>>()
        };
        if inbound(old) != inbound(new) {
            changed.push("[[inbound]] listen/forward".to_owned());
        }
        if outbound(old) != outbound(new) {
            changed.push("[[outbound]] listen/upstream".to_owned());
        }
        if old.metrics.as_ref().map(|m| m.listen) != new.metrics.as_ref().map(|m| m.listen) {
            changed.push("metrics.listen".to_owned());
        }
        // Listeners hold their limits and path choice from start; applying half of them to new
        // connections only would make the running process match neither file.
        if old.limits != new.limits {
            changed.push("[limits]".to_owned());
        }
        if old.offload != new.offload {
            changed.push("offload".to_owned());
        }
        if old.permissive != new.permissive {
            changed.push("[permissive]".to_owned());
        }
        if old.logging != new.logging {
            changed.push("[logging]".to_owned());
        }
        changed
    }

    /// Warns 30, 14, 7 and 1 days before our certificate expires (each threshold once).
    fn check_expiry(&mut self) {
        let id = &self.current.tls.material.identity;
        let left = id
            .not_after
            .duration_since(SystemTime::now())
            .map_or(0, |d| d.as_secs() / 86400);
        let threshold = EXPIRY_WARNINGS.iter().rev().find(|t| left < **t).copied();
        if threshold.is_some() && threshold != self.warned {
            tracing::warn!(
                "our certificate \"{}\" expires in {left} day(s), at {}: issue a new one and reload \
                 (SIGHUP) before then",
                id.subject,
                fmt_time(id.not_after)
            );
            self.warned = threshold;
        }
    }

    fn warn_expired_crls(&self) {
        let tls = &self.current.tls;
        for crl in tls.material.expired_crls(SystemTime::now()) {
            let next = crl.next_update.map_or_else(String::new, fmt_time);
            match tls.crl_expired {
                CrlExpired::Warn => tracing::warn!(
                    "CRL of \"{}\" is past its nextUpdate ({next}); still used because \
                     tls.crl_expired = \"warn\": publish a fresh one",
                    crl.issuer
                ),
                CrlExpired::Deny => tracing::warn!(
                    "CRL of \"{}\" is past its nextUpdate ({next}); certificates of that CA are refused \
                     (tls.crl_expired = \"deny\") until a fresh CRL is published",
                    crl.issuer
                ),
            }
        }
    }
}

/// Checks every `reload_interval`, and at once when `reload_now` is notified (SIGHUP), until
/// `shutdown`.
pub async fn run(mut reloader: Reloader, reload_now: Arc<Notify>, shutdown: CancellationToken) {
    loop {
        let forced = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = reload_now.notified() => true,
            _ = tokio::time::sleep(reloader.interval()) => false,
        };
        if forced {
            tracing::info!("SIGHUP: reloading {}", reloader.sources.describe());
        }
        // Reading and parsing files blocks; keep it off the threads that relay bytes.
        reloader = match tokio::task::spawn_blocking(move || {
            reloader.check(forced);
            reloader
        })
        .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("reload task failed: {e}; hot reload is off until restart");
                return;
            }
        };
    }
}
