//! The verified-chain cache: a peer that reconnects with the chain it presented a moment ago is not
//! verified again signature by signature.
//!
//! A Cassandra cluster has a handful of peers, each presenting the same chain on every reconnect, and
//! reconnect storms after a restart are when handshake cost matters. Verifying a P-256 chain (the CA's
//! signature on the peer's certificate, and on each CRL of its issuer) costs about as much as the
//! peer's CertificateVerify signature, which must be checked every time. So each verifier remembers, for
//! a short while, which exact chains it has verified.
//!
//! # Why a hit is as good as a full verification
//!
//! webpki's verdict on a chain (rustls's `WebPkiClientVerifier` inbound, `verify::ServerVerifier`
//! outbound) is a function of: the chain's bytes, the trust anchors, the CRLs, the options (key usage,
//! unknown-status and expired-CRL policies) and the time. The cache fixes or re-checks each of them:
//!
//! - **Chain bytes**: an entry is keyed by SHA-256 over the end-entity certificate and every intermediate,
//!   in the order presented, each prefixed with its length (so no two chains hash the same input) and
//!   the whole prefixed with the key usage. A different chain, or the same certificates in another
//!   order, is a different key.
//! - **Trust anchors, CRLs, options**: the cache is a field of one verifier, built together with it from
//!   one snapshot of the TLS material and settings. A reload (SIGHUP or a changed file, see
//!   the reloader) builds new verifiers with new, empty caches, so an entry made under old trust can
//!   never answer under new trust: a CRL added by a reload, or a CA removed from `tls.ca`, applies to the
//!   very next handshake. Each listener builds its own verifiers, so its own caches.
//! - **Time**: webpki's only time-dependent checks are each certificate's validity period (valid when
//!   `notBefore <= now <= notAfter`, trust anchors excepted) and, with `crl_expired = "deny"`, each
//!   CRL's nextUpdate (expired when `now >= nextUpdate`). An entry stores the intersection of every
//!   presented certificate's validity period (max notBefore, min notAfter; certificates webpki may not
//!   have used only narrow it), with `crl_expired = "deny"` the earliest nextUpdate of every configured
//!   CRL (not only the issuer's: narrower again), the moment it was made and [`MAX_AGE`]. A hit needs
//!   `now` inside all of it, so every time check webpki made passes at `now` as it did then. A clock
//!   that steps backwards before the entry's creation is a miss.
//! - **Only successes are cached**; a miss, a stale entry and every failure go through the full path, so
//!   refusals keep their exact reason and message. The cache can only ever say "verified before", never
//!   refuse.
//! - **Everything per connection still runs on a hit**: the caller checks the peer's CertificateVerify
//!   signature (proof of possession of the key), endpoint verification (the peer's address is an IP
//!   SAN), the allow-list and metrics after the cache answered, exactly as after a full verification.
//!   X.509 v1 leaves (`tls::v1`) are never cached.
//! - **Bounded**: at most [`CAPACITY`] entries (expired ones are dropped first when it is full, then an
//!   arbitrary one), so a peer presenting ever new chains, all of which would have to be signed by a
//!   trusted CA, costs a full verification each and no memory growth. The lock is held for one map
//!   lookup or insert; digests and certificate parsing happen outside it.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use aws_lc_rs::digest::{Context, SHA256};
use rustls::Error;
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::material::TlsMaterial;
use super::settings::CrlExpired;
use crate::metrics::{self, Direction};

/// The longest an entry is used. A reconnect storm after a restart lasts seconds, so a minute keeps
/// nearly every handshake of one a hit; beyond that a chain is verified again in full once a minute per
/// peer, which costs nothing measurable. The validity windows and the trust generation are what make a
/// hit sound; this bound is defence in depth, so that no verdict lives long whatever else happens.
pub const MAX_AGE: Duration = Duration::from_secs(60);

/// The most entries a cache holds: far more than the chains of a cluster's peers (one each, two
/// during a certificate rotation), and small (about 50 bytes an entry).
pub const CAPACITY: usize = 1024;

type Key = [u8; 32];

/// Seconds since the epoch during which an entry may answer: `from <= now < until`.
#[derive(Debug, Clone, Copy)]
struct Window {
    from: u64,
    until: u64,
}

impl Window {
    fn contains(self, now: u64) -> bool {
        self.from <= now && now < self.until
    }
}

/// The chains one verifier has verified recently (see the module docs).
pub struct ChainCache {
    direction: Direction,
    /// With `crl_expired = "deny"` and CRLs configured: the earliest nextUpdate (seconds), after which
    /// no entry answers.
    crl_deadline: Option<u64>,
    entries: Mutex<HashMap<Key, Window>>,
    /// Chains verified in full (every miss): what tests count to show that a hit skipped the checks.
    full: AtomicU64,
}

impl fmt::Debug for ChainCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainCache")
            .field("direction", &self.direction)
            .field("crl_deadline", &self.crl_deadline)
            .field("entries", &self.len())
            .finish()
    }
}

impl ChainCache {
    /// An empty cache for the verifier of `direction` (inbound verifies clientAuth, outbound
    /// serverAuth) built on `material` with `crl_expired`.
    pub fn new(direction: Direction, material: &TlsMaterial, crl_expired: CrlExpired) -> Self {
        let crl_deadline = match crl_expired {
            // Expired CRLs are used anyway: nothing about them changes with time.
            CrlExpired::Warn => None,
            // Every CRL parsed when the material was loaded; one without a nextUpdate (webpki would
            // not have accepted it) stops the cache answering at all rather than guessing.
            CrlExpired::Deny => material
                .crl_info
                .iter()
                .map(|c| {
                    c.next_update
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_secs())
                })
                .min(),
        };
        Self {
            direction,
            crl_deadline,
            entries: Mutex::new(HashMap::new()),
            full: AtomicU64::new(0),
        }
    }

    /// Verifies `end_entity` + `intermediates` at `now`: from the cache when this exact chain was
    /// verified before and the entry is still valid at `now`, otherwise with `full`, remembering a
    /// success.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        full: impl FnOnce() -> Result<(), Error>,
    ) -> Result<(), Error> {
        let key = self.key(end_entity, intermediates);
        let now = now.as_secs();
        if self.lookup(&key, now) {
            metrics::chain_cache_lookup(self.direction, true);
            return Ok(());
        }
        metrics::chain_cache_lookup(self.direction, false);
        self.full.fetch_add(1, Ordering::Relaxed);
        full()?;
        if let Some(window) = self.window(end_entity, intermediates, now) {
            self.insert(key, window, now);
        }
        Ok(())
    }

    /// How many chains went through the full verification (every miss, successful or not).
    pub fn full_verifications(&self) -> u64 {
        self.full.load(Ordering::Relaxed)
    }

    /// Entries held (valid or not yet dropped).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Window>> {
        // The map is consistent after every statement that holds the lock: a panic elsewhere leaves
        // nothing half-done.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn key(&self, end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> Key {
        let mut ctx = Context::new(&SHA256);
        // Each cache serves one usage already; the tag keeps keys distinct should that ever change.
        ctx.update(match self.direction {
            Direction::Inbound => b"clientAuth",
            Direction::Outbound => b"serverAuth",
        });
        for der in std::iter::once(end_entity).chain(intermediates) {
            ctx.update(&(der.len() as u64).to_be_bytes());
            ctx.update(der.as_ref());
        }
        let mut key = [0; 32];
        key.copy_from_slice(ctx.finish().as_ref());
        key
    }

    fn lookup(&self, key: &Key, now: u64) -> bool {
        let mut entries = self.lock();
        match entries.get(key) {
            Some(w) if w.contains(now) => true,
            Some(_) => {
                entries.remove(key);
                false
            }
            None => false,
        }
    }

    /// When a chain just verified at `now` may be reused; `None` when it may not (a certificate that
    /// does not parse here, or a window that does not even contain `now`).
    fn window(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: u64,
    ) -> Option<Window> {
        let mut w = Window {
            from: now,
            until: now.saturating_add(MAX_AGE.as_secs()),
        };
        if let Some(deadline) = self.crl_deadline {
            w.until = w.until.min(deadline);
        }
        for der in std::iter::once(end_entity).chain(intermediates) {
            let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
            let validity = cert.validity();
            // A notBefore before 1970 does not narrow anything; a notAfter before it never verified.
            w.from = w
                .from
                .max(u64::try_from(validity.not_before.timestamp()).unwrap_or(0));
            // webpki accepts `now == notAfter`: the window ends one second later.
            let not_after = u64::try_from(validity.not_after.timestamp()).ok()?;
            w.until = w.until.min(not_after.saturating_add(1));
        }
        w.contains(now).then_some(w)
    }

    fn insert(&self, key: Key, window: Window, now: u64) {
        let mut entries = self.lock();
        if entries.len() >= CAPACITY && !entries.contains_key(&key) {
            entries.retain(|_, w| w.contains(now));
            if entries.len() >= CAPACITY
                && let Some(victim) = entries.keys().next().copied()
            {
                entries.remove(&victim);
            }
        }
        entries.insert(key, window);
    }
}

#[cfg(test)]
mod tests {
    //! Real certificates (rcgen) through the real verifiers; the clock is the `now` rustls passes in.

    use std::net::IpAddr;
    use std::path::Path;
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::server::danger::ClientCertVerifier;
    use rustls::{CertificateError, Error};
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
    use time::OffsetDateTime;

    use super::*;
    use crate::metrics::Reason;
    use crate::pki::{Ca, Identity, NodeSpec};
    use crate::tls::LoadedTls;
    use crate::tls::verify::{ClientVerifier, PeerPolicy, ServerVerifier, classify};

    const ONE: &str = "127.0.0.1";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn at(secs: u64) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(secs))
    }

    /// Now, in whole seconds (certificate times have no fractions).
    fn now() -> u64 {
        UnixTime::now().as_secs()
    }

    struct Pki {
        ca: Ca,
        node: Identity,
    }

    impl Pki {
        fn new() -> Self {
            let ca = Ca::new("TestCluster").unwrap();
            let node = ca.issue(&NodeSpec::new("node1", &[ip(ONE)])).unwrap();
            Self { ca, node }
        }

        /// Our settings, trusting this CA, with `crl` (PEM) and `crl_expired`.
        fn settings(&self, crl: Option<String>, crl_expired: CrlExpired) -> LoadedTls {
            let mut material = TlsMaterial::from_der(
                vec![self.node.cert_der.clone()],
                self.node.key(),
                vec![self.ca.cert_der.clone()],
                None,
            )
            .unwrap();
            if let Some(pem) = crl {
                material
                    .add_crls(Path::new("crl.pem"), pem.as_bytes())
                    .unwrap();
            }
            let mut settings = LoadedTls::from_material(material);
            settings.crl_expired = crl_expired;
            settings
        }

        fn inbound(&self) -> ClientVerifier {
            inbound(&self.settings(None, CrlExpired::Deny))
        }

        fn issue(&self, name: &str, tweak: impl FnOnce(&mut NodeSpec)) -> Identity {
            let mut spec = NodeSpec::new(name, &[ip(ONE)]);
            tweak(&mut spec);
            self.ca.issue(&spec).unwrap()
        }
    }

    fn inbound(settings: &LoadedTls) -> ClientVerifier {
        crate::tls::client_verifier(
            settings,
            crate::tls::provider_for(settings),
            Arc::new(PeerPolicy::default()),
        )
    }

    fn verify(v: &ClientVerifier, cert: &CertificateDer<'_>, secs: u64) -> Result<(), Error> {
        v.verify_client_cert(cert, &[], at(secs)).map(|_| ())
    }

    #[test]
    fn a_verified_chain_is_answered_from_the_cache() {
        let pki = Pki::new();
        let v = pki.inbound();
        let t = now();
        verify(&v, &pki.node.cert_der, t).unwrap();
        assert_eq!(v.chain_cache().full_verifications(), 1);
        for i in 1..10 {
            verify(&v, &pki.node.cert_der, t + i).unwrap();
        }
        // Every copy bound to a peer address shares the cache.
        verify(&v.for_endpoint(ip(ONE)), &pki.node.cert_der, t).unwrap();
        assert_eq!(v.chain_cache().full_verifications(), 1);
        assert_eq!(v.chain_cache().len(), 1);

        // Another certificate, and the same one with an intermediate, are other chains.
        let node2 = pki.issue("node2", |_| {});
        verify(&v, &node2.cert_der, t).unwrap();
        let with_ca = [pki.ca.cert_der.clone()];
        v.verify_client_cert(&pki.node.cert_der, &with_ca, at(t))
            .unwrap();
        assert_eq!(v.chain_cache().full_verifications(), 3);
        v.verify_client_cert(&pki.node.cert_der, &with_ca, at(t + 1))
            .unwrap();
        assert_eq!(v.chain_cache().full_verifications(), 3);
        assert_eq!(v.chain_cache().len(), 3);
    }

    #[test]
    fn failures_are_never_cached_and_keep_their_reason() {
        let pki = Pki::new();
        let v = pki.inbound();
        let other = Ca::new("OtherCluster").unwrap();
        let stranger = other.issue(&NodeSpec::new("node1", &[ip(ONE)])).unwrap();
        // Same CA name, another key: a forgery.
        let impostor = Pki::new().node;
        let t = now();
        for i in 0..3 {
            let e = verify(&v, &stranger.cert_der, t + i).unwrap_err();
            assert_eq!(
                e,
                Error::InvalidCertificate(CertificateError::UnknownIssuer)
            );
            let e = verify(&v, &impostor.cert_der, t + i).unwrap_err();
            assert_eq!(e, Error::InvalidCertificate(CertificateError::BadSignature));
        }
        assert_eq!(v.chain_cache().full_verifications(), 6);
        assert!(v.chain_cache().is_empty());
    }

    #[test]
    fn an_entry_ends_when_the_certificate_expires() {
        let pki = Pki::new();
        let v = pki.inbound();
        let t = now();
        let short = pki.issue("short", |s| {
            s.not_after = OffsetDateTime::from_unix_timestamp(t as i64 + 5).unwrap();
        });
        verify(&v, &short.cert_der, t).unwrap();
        // webpki accepts the notAfter second itself ...
        verify(&v, &short.cert_der, t + 3).unwrap();
        verify(&v, &short.cert_der, t + 5).unwrap();
        assert_eq!(v.chain_cache().full_verifications(), 1);
        // ... and the second after it goes through the full path, with webpki's own error.
        let e = verify(&v, &short.cert_der, t + 6).unwrap_err();
        assert_eq!(v.chain_cache().full_verifications(), 2);
        assert!(
            matches!(
                e,
                Error::InvalidCertificate(CertificateError::ExpiredContext { not_after, .. })
                    if not_after.as_secs() == t + 5
            ),
            "{e:?}"
        );
        assert_eq!(classify(&e).0, Reason::Expired);
    }

    #[test]
    fn an_entry_lives_at_most_max_age_and_never_before_it_was_made() {
        let pki = Pki::new();
        let v = pki.inbound();
        let t = now();
        let age = MAX_AGE.as_secs();
        verify(&v, &pki.node.cert_der, t).unwrap();
        verify(&v, &pki.node.cert_der, t + age - 1).unwrap();
        assert_eq!(v.chain_cache().full_verifications(), 1);
        verify(&v, &pki.node.cert_der, t + age).unwrap();
        assert_eq!(v.chain_cache().full_verifications(), 2);
        // Verified again, so cached again from then on.
        verify(&v, &pki.node.cert_der, t + age + 1).unwrap();
        assert_eq!(v.chain_cache().full_verifications(), 2);
        // A clock stepped back before the entry was made: verified in full.
        verify(&v, &pki.node.cert_der, t).unwrap();
        assert_eq!(v.chain_cache().full_verifications(), 3);
    }

    #[test]
    fn an_entry_ends_at_the_crl_next_update_when_expired_crls_deny() {
        let pki = Pki::new();
        let t = now();
        let next = OffsetDateTime::from_unix_timestamp(t as i64 + 30).unwrap();
        let crl = pki.ca.crl(&[], next).unwrap();

        let deny = inbound(&pki.settings(Some(crl.clone()), CrlExpired::Deny));
        verify(&deny, &pki.node.cert_der, t).unwrap();
        verify(&deny, &pki.node.cert_der, t + 29).unwrap();
        assert_eq!(deny.chain_cache().full_verifications(), 1);
        let e = verify(&deny, &pki.node.cert_der, t + 30).unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidCertificate(CertificateError::ExpiredRevocationListContext { .. })
            ),
            "{e:?}"
        );
        assert_eq!(deny.chain_cache().full_verifications(), 2);

        // With "warn" an expired CRL changes nothing, so time past it does not end the entry.
        let warn = inbound(&pki.settings(Some(crl), CrlExpired::Warn));
        verify(&warn, &pki.node.cert_der, t).unwrap();
        verify(&warn, &pki.node.cert_der, t + 31).unwrap();
        assert_eq!(warn.chain_cache().full_verifications(), 1);
    }

    #[test]
    fn a_revoked_certificate_is_never_cached() {
        let pki = Pki::new();
        let t = now();
        let next = OffsetDateTime::from_unix_timestamp(t as i64 + 86400).unwrap();
        let crl = pki.ca.crl(&[&pki.node], next).unwrap();
        let v = inbound(&pki.settings(Some(crl), CrlExpired::Deny));
        for i in 0..2 {
            let e = verify(&v, &pki.node.cert_der, t + i).unwrap_err();
            assert_eq!(e, Error::InvalidCertificate(CertificateError::Revoked));
        }
        assert_eq!(v.chain_cache().full_verifications(), 2);
    }

    #[test]
    fn endpoint_verification_applies_on_a_hit() {
        let pki = Pki::new();
        let v = pki.inbound();
        let t = now();
        verify(&v.for_endpoint(ip(ONE)), &pki.node.cert_der, t).unwrap();
        let e = verify(&v.for_endpoint(ip("127.0.0.2")), &pki.node.cert_der, t + 1).unwrap_err();
        // The chain came from the cache; the address check refused it all the same.
        assert_eq!(v.chain_cache().full_verifications(), 1);
        let (reason, message) = classify(&e);
        assert_eq!(reason, Reason::EndpointMismatch, "{message}");
        assert!(message.contains("127.0.0.2"), "{message}");
    }

    #[test]
    fn outbound_verifier_caches_and_checks_the_dialed_address_on_a_hit() {
        let pki = Pki::new();
        let settings = pki.settings(None, CrlExpired::Deny);
        let v = ServerVerifier::new(
            settings.material.clone(),
            settings.crl_expired,
            false,
            crate::tls::provider_for(&settings),
            Arc::new(PeerPolicy::default()),
            true,
        );
        let t = now();
        let dial = |to: &str, secs: u64| {
            v.verify_server_cert(
                &pki.node.cert_der,
                &[],
                &ServerName::IpAddress(ip(to).into()),
                &[],
                at(secs),
            )
            .map(|_| ())
        };
        dial(ONE, t).unwrap();
        dial(ONE, t + 1).unwrap();
        let e = dial("127.0.0.2", t + 2).unwrap_err();
        assert_eq!(classify(&e).0, Reason::EndpointMismatch);
        assert_eq!(v.chain_cache().full_verifications(), 1);
        // A serverAuth verdict is not a clientAuth one: an inbound verifier has its own cache.
        let inbound = inbound(&settings);
        verify(&inbound, &pki.node.cert_der, t).unwrap();
        assert_eq!(inbound.chain_cache().full_verifications(), 1);
    }

    #[test]
    fn the_cache_is_bounded_and_drops_stale_entries_first() {
        let pki = Pki::new();
        let v = pki.inbound();
        let cache = v.chain_cache();
        let t = now();
        let peers: Vec<Identity> = (0..CAPACITY + 10)
            .map(|i| pki.issue(&format!("node{i}"), |_| {}))
            .collect();
        for peer in &peers {
            verify(&v, &peer.cert_der, t).unwrap();
            assert!(cache.len() <= CAPACITY);
        }
        assert_eq!(cache.len(), CAPACITY);
        // The newest one was kept.
        let last = &peers.last().unwrap().cert_der;
        let full = cache.full_verifications();
        verify(&v, last, t + 1).unwrap();
        assert_eq!(cache.full_verifications(), full);
        // Once every entry is past its age, the next insert drops them all rather than one.
        verify(&v, &pki.node.cert_der, t + MAX_AGE.as_secs()).unwrap();
        assert_eq!(cache.len(), 1);
    }
}
