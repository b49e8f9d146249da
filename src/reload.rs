//! Hot reload: on SIGHUP, and whenever the config file or a file it names changes (checked every
//! `tls.reload_interval`), the config is read and validated again and every listener gets the new TLS
//! material and peer policy. New handshakes use it; established connections keep running.
//!
//! Each listener's material is loaded on its own (listeners with equal policies share one load): when
//! one listener's files are broken, THAT listener keeps its previous material and peer policy, the
//! others take their new material, and the log, `ringseal_config_reloads_total{result="error"}` and
//! `/status` name the listener that failed.
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
use crate::config::{Config, Policy, Sources};
use crate::events::{Events, Status};
use crate::listener::inbound::InboundHandle;
use crate::listener::outbound::OutboundHandle;
use crate::metrics;
use crate::runtime::Loader;
use crate::tls::material::FileBytes;
use crate::tls::settings::TlsFiles;
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
    /// The expiry warning threshold (days) last logged, per identity subject in use.
    warned: std::collections::HashMap<String, u64>,
    /// The files the last config read names (what a fixed file must change to retry a failed
    /// listener), beside those in use.
    attempted: Vec<TlsFiles>,
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
            warned: Default::default(),
            attempted: Vec::new(),
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
        match self.sources.load() {
            Ok(loaded) => self.apply(loaded.config, fingerprint, forced),
            Err(e) => self.failed(e.to_string(), forced),
        }
        self.events.reloaded(&self.status);
    }

    /// Loads each listener's material from `config` and hands it over; a listener whose material
    /// fails to load keeps its previous material and peer policy.
    fn apply(&mut self, config: Config, fingerprint: u64, forced: bool) {
        let path = self.sources.path().to_owned();
        self.attempted = files_of(&config);
        // Fixed at start: the suites are checked against the offload the listeners run with.
        let offload = self.current.offload;
        let old = &self.current;
        let mut loader = Loader::default();
        let mut failures: Vec<String> = Vec::new();
        let top = loader.load_checked(Policy::Default, config.tls.clone(), offload, &path);
        let mut inbound = Vec::new();
        for (i, l) in config.inbound.into_iter().enumerate() {
            let (l, settings) = l.split_tls();
            match loader.load_checked(Policy::Listener(&l.name), settings, offload, &path) {
                Ok(tls) => inbound.push((l.with_tls(tls), None)),
                Err(e) => {
                    failures.push(e.to_string());
                    if let Some(kept) = old.inbound.get(i) {
                        inbound.push((kept.clone(), Some(e.to_string())));
                    }
                }
            }
        }
        let mut outbound = Vec::new();
        for (i, l) in config.outbound.into_iter().enumerate() {
            let (l, settings) = l.split_tls();
            match loader.load_checked(Policy::Listener(&l.name), settings, offload, &path) {
                Ok(tls) => outbound.push((l.with_tls(tls), None)),
                Err(e) => {
                    failures.push(e.to_string());
                    if let Some(kept) = old.outbound.get(i) {
                        outbound.push((kept.clone(), Some(e.to_string())));
                    }
                }
            }
        }
        let applied = inbound.iter().any(|(_, kept)| kept.is_none())
            || outbound.iter().any(|(_, kept)| kept.is_none());
        if !applied && !failures.is_empty() {
            // Nothing loaded: the whole reload failed, as with one listener.
            let error = failures.join("; ");
            for (h, (_, kept)) in self.inbound.iter().zip(&inbound) {
                if let Some(e) = kept {
                    h.kept(e.clone());
                }
            }
            for (h, (_, kept)) in self.outbound.iter().zip(&outbound) {
                if let Some(e) = kept {
                    h.kept(e.clone());
                }
            }
            self.failed(error, forced);
            return;
        }
        let tls = match top {
            Ok(tls) => tls,
            Err(e) => {
                // Only news when no listener inherits [tls] (they failed with it already).
                if failures.is_empty() {
                    failures.push(e.to_string());
                }
                old.tls.clone()
            }
        };
        for ((h, (cfg, kept)), i) in self.inbound.iter().zip(&inbound).zip(0..) {
            match kept {
                Some(e) => h.kept(e.clone()),
                None => {
                    h.apply(cfg);
                    swap_expiry(old.inbound.get(i).map(|o| &o.tls), &cfg.tls, &cfg.name);
                }
            }
        }
        for ((h, (cfg, kept)), i) in self.outbound.iter().zip(&outbound).zip(0..) {
            match kept {
                Some(e) => h.kept(e.clone()),
                None => {
                    h.apply(cfg);
                    swap_expiry(old.outbound.get(i).map(|o| &o.tls), &cfg.tls, &cfg.name);
                }
            }
        }
        let kept: Vec<String> = inbound
            .iter()
            .filter(|(_, k)| k.is_some())
            .map(|(l, _)| l.name.to_string())
            .chain(
                outbound
                    .iter()
                    .filter(|(_, k)| k.is_some())
                    .map(|(l, _)| l.name.to_string()),
            )
            .collect();
        let config = Config {
            tls,
            inbound: inbound.into_iter().map(|(l, _)| l).collect(),
            outbound: outbound.into_iter().map(|(l, _)| l).collect(),
            limits: config.limits,
            offload: config.offload,
            metrics: config.metrics,
            sources: config.sources,
            cluster_name: config.cluster_name,
            permissive: config.permissive,
            logging: config.logging,
            tcp: config.tcp,
            handover: config.handover,
        };
        let restart_needed = self.layout_changes(&config);
        metrics::reload(failures.is_empty());
        if let Some(id) = earliest_identity(&config) {
            self.health.set_identity(id);
        }
        self.health.status.set_material(&config.tls.material);
        let error = (!failures.is_empty()).then(|| failures.join("; "));
        self.health
            .status
            .reloaded(forced, error.as_deref().map_or(Ok(()), Err));
        let m = &config.tls.material;
        if failures.is_empty() {
            tracing::info!(
                "reloaded {}: identity \"{}\" valid until {}, {} trusted CA(s), {} CRL(s)",
                self.sources.describe(),
                m.identity.subject,
                fmt_time(m.identity.not_after),
                m.cas.len(),
                m.crls.len()
            );
        }
        // Listeners with their own material: one line each, so a rotation of a client port shows.
        for (name, tls) in listeners(&config) {
            if !Arc::ptr_eq(&tls.material, m) && !kept.iter().any(|k| k == name) {
                let lm = &tls.material;
                tracing::info!(
                    listener = name,
                    "reloaded listener \"{name}\": identity \"{}\" valid until {}, {} trusted \
                     CA(s), {} CRL(s)",
                    lm.identity.subject,
                    fmt_time(lm.identity.not_after),
                    lm.cas.len(),
                    lm.crls.len()
                );
            }
        }
        if !restart_needed.is_empty() {
            tracing::warn!(
                "{}: {} changed; that part is fixed at start and NOT applied: restart ringseal to apply it",
                self.sources.describe(),
                restart_needed.join(", ")
            );
        }
        self.status.identity = m.identity.subject.clone();
        self.status.identity_not_after = m.identity.not_after;
        self.status.last_reload = Some((SystemTime::now(), error.clone().map_or(Ok(()), Err)));
        self.current = config;
        self.applied_fingerprint = Some(fingerprint);
        match error {
            None => self.last_error = None,
            Some(e) => {
                if self.last_error.as_ref() != Some(&e) {
                    tracing::warn!(
                        "reload applied to the other listeners; kept the previous certificates of \
                         the listener(s) that failed: {e}"
                    );
                }
                self.last_error = Some(e);
            }
        }
        self.check_expiry();
        self.warn_expired_crls();
    }

    /// The contents of the config file and of every file the current config (and the last one read)
    /// names. An unreadable file counts by its error, so it neither stops the check nor reloads again
    /// until it changes; loading then says which listener it breaks.
    fn fingerprint_files(&self) -> Result<u64, String> {
        use std::hash::{Hash, Hasher};
        let text = self.sources.read().map_err(|e| format!("config {e}"))?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut h);
        let mut seen: Vec<&TlsFiles> = Vec::new();
        let current = listeners(&self.current).filter_map(|(_, t)| t.files.as_ref());
        for files in self
            .current
            .tls
            .files
            .iter()
            .chain(current)
            .chain(&self.attempted)
        {
            if seen.contains(&files) {
                continue;
            }
            seen.push(files);
            match FileBytes::read(files) {
                Ok(bytes) => bytes.fingerprint().hash(&mut h),
                Err(e) => e.to_string().hash(&mut h),
            }
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

    /// What a reload cannot change in place: listener addresses, `[limits]`, `offload`, `[permissive]`,
    /// `[logging]` and `[tcp]`.
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
        let names =
            |c: &Config<LoadedTls>| listeners(c).map(|(n, _)| n.to_owned()).collect::<Vec<_>>();
        if names(old) != names(new) {
            changed.push("listener names".to_owned());
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
        // The loopback legs' algorithm is decided against the kernel once, with the listeners.
        if old.tcp != new.tcp {
            changed.push("[tcp]".to_owned());
        }
        changed
    }

    /// Warns 30, 14, 7 and 1 days before a certificate in use expires (each threshold once per
    /// certificate), naming the listeners that present it.
    fn check_expiry(&mut self) {
        let mut ids: Vec<(&crate::tls::x509::CertInfo, Vec<&str>)> = Vec::new();
        for (name, tls) in listeners(&self.current) {
            let id = &tls.material.identity;
            match ids
                .iter_mut()
                .find(|(i, _)| i.subject == id.subject && i.not_after == id.not_after)
            {
                Some((_, names)) => names.push(name),
                None => ids.push((id, vec![name])),
            }
        }
        let mut warned = std::collections::HashMap::new();
        for (id, names) in ids {
            let left = id
                .not_after
                .duration_since(SystemTime::now())
                .map_or(0, |d| d.as_secs() / 86400);
            let Some(threshold) = EXPIRY_WARNINGS.iter().rev().find(|t| left < **t).copied() else {
                continue;
            };
            if self.warned.get(&id.subject) != Some(&threshold) {
                tracing::warn!(
                    "our certificate \"{}\" (listener {}) expires in {left} day(s), at {}: issue a \
                     new one and reload (SIGHUP) before then",
                    id.subject,
                    names.join(", "),
                    fmt_time(id.not_after)
                );
            }
            warned.insert(id.subject.clone(), threshold);
        }
        self.warned = warned;
    }

    fn warn_expired_crls(&self) {
        let mut seen: Vec<&LoadedTls> = Vec::new();
        for (_, tls) in listeners(&self.current) {
            if seen.iter().any(|s| Arc::ptr_eq(&s.material, &tls.material)) {
                continue;
            }
            seen.push(tls);
            for crl in tls.material.expired_crls(SystemTime::now()) {
                let next = crl.next_update.map_or_else(String::new, fmt_time);
                match tls.crl_expired {
                    CrlExpired::Warn => tracing::warn!(
                        "CRL of \"{}\" is past its nextUpdate ({next}); still used because \
                         tls.crl_expired = \"warn\": publish a fresh one",
                        crl.issuer
                    ),
                    CrlExpired::Deny => tracing::warn!(
                        "CRL of \"{}\" is past its nextUpdate ({next}); certificates of that CA are \
                         refused (tls.crl_expired = \"deny\") until a fresh CRL is published",
                        crl.issuer
                    ),
                }
            }
        }
    }
}

/// Every listener's name and material, inbound then outbound.
fn listeners(c: &Config<LoadedTls>) -> impl Iterator<Item = (&str, &LoadedTls)> {
    c.inbound
        .iter()
        .map(|l| (l.name.as_str(), &l.tls))
        .chain(c.outbound.iter().map(|l| (l.name.as_str(), &l.tls)))
}

/// The files every policy of a validated config names.
fn files_of(c: &Config) -> Vec<TlsFiles> {
    let mut files = vec![c.tls.files.clone()];
    for f in c
        .inbound
        .iter()
        .map(|l| &l.tls.files)
        .chain(c.outbound.iter().map(|l| &l.tls.files))
    {
        if !files.contains(f) {
            files.push(f.clone());
        }
    }
    files
}

/// The identity that expires first among the listeners': what `/readyz` watches.
pub(crate) fn earliest_identity(c: &Config<LoadedTls>) -> Option<&crate::tls::x509::CertInfo> {
    listeners(c)
        .map(|(_, t)| &t.material.identity)
        .min_by_key(|id| id.not_after)
}

/// A listener's new material replaces `old`: the expiry gauges of certificates it no longer uses
/// report NaN, the new ones their notAfter.
fn swap_expiry(old: Option<&LoadedTls>, new: &LoadedTls, name: &crate::config::ListenerName) {
    if let Some(old) = old {
        old.material.retire_expiry(&new.material, name.as_str());
    }
    new.material.publish_expiry(name.as_str());
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
