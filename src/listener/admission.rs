//! Admission control: which accepted connections may run a handshake, and which verified ones may stay.
//!
//! Every listener has its own budgets, so a flood on one port never delays another (the node's own
//! outbound connections keep flowing while the TLS port is flooded, and the reverse):
//!
//! * **Handshakes in progress** (`limits.max_pending_handshakes`): accepted, not yet verified (outbound:
//!   dialing the peer and handshaking). When the budget is full, the *oldest* handshake is closed to make
//!   room for the newcomer. Refusing the newcomer, or leaving it in the listen backlog, would let a
//!   few thousand connections that never finish their handshake lock every real peer out for a whole
//!   `handshake_timeout`; evicting the oldest makes a flood race a real peer's handshake, which takes
//!   milliseconds, and lose unless it opens connections faster than the budget per handshake time.
//! * **Per source address** (`limits.max_pending_per_source`, inbound only; an IPv6 /64 counts as one
//!   address): a connection over the cap is reset at once, not queued, so one address can neither take
//!   the shared budget nor evict other peers' handshakes. Outbound listeners have no such cap: every
//!   connection there comes from the local node.
//! * **Established connections** (`limits.max_connections`): a slot is taken only once the handshake is
//!   verified (a permissive plaintext connection: once recognised). When every slot is taken the
//!   verified connection is reset at once: holding it in the handshake budget while waiting would let
//!   verified peers crowd out handshakes, and a reset (never a clean close) makes the peer reconnect as
//!   after any failure.
//!
//! Admission is decided right after accept and never waits, so the accept loop keeps draining the
//! listen backlog: a real peer queued behind a flood is accepted promptly. Turned-away connections are
//! counted in `ringseal_connections_turned_away_total{reason}` and logged at most once per reason and
//! listener every [`LOG_WINDOW`].

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{RateLimit, suppressed_note};
use crate::config::Limits;
use crate::metrics::{self, TurnAway};

/// Turned-away connections are logged once per reason and listener in this window, with the count of
/// those suppressed: a flood is one line every 10 s, not one per connection.
pub const LOG_WINDOW: Duration = Duration::from_secs(10);

/// One listener's budgets.
pub struct Admission {
    who: metrics::Listener,
    listen: SocketAddr,
    max_pending: usize,
    /// `None`: no per-source cap (outbound).
    per_source: Option<usize>,
    max_connections: usize,
    established: Arc<Semaphore>,
    table: Mutex<Table>,
    log: RateLimit<TurnAway>,
}

#[derive(Default)]
struct Table {
    next: u64,
    /// Handshakes in progress by admission order: the first is the oldest.
    pending: BTreeMap<u64, Entry>,
    /// Handshakes in progress per source; an address leaves the map with its last one, so its size is
    /// bounded by `pending`'s.
    sources: HashMap<IpAddr, usize>,
}

struct Entry {
    source: IpAddr,
    peer: SocketAddr,
    evict: CancellationToken,
}

impl Table {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.pending.remove(&id)?;
        if let Some(n) = self.sources.get_mut(&entry.source) {
            *n -= 1;
            if *n == 0 {
                self.sources.remove(&entry.source);
            }
        }
        Some(entry)
    }
}

impl Admission {
    /// Budgets from `limits` for the listener on `listen`; `per_source`: apply
    /// `limits.max_pending_per_source` (inbound).
    pub fn new(
        who: metrics::Listener,
        listen: SocketAddr,
        limits: &Limits,
        per_source: bool,
    ) -> Self {
        // The validated config bounds max_connections; the cap only keeps `Semaphore::new` from panicking
        // for a config built in code.
        let max_connections = limits.max_connections.min(Semaphore::MAX_PERMITS);
        Self {
            who,
            listen,
            max_pending: limits.max_pending_handshakes.max(1),
            per_source: per_source.then_some(limits.max_pending_per_source.max(1)),
            max_connections,
            established: Arc::new(Semaphore::new(max_connections)),
            table: Mutex::new(Table::default()),
            log: RateLimit::new(LOG_WINDOW),
        }
    }

    /// Established connections now (for `/status`).
    pub fn established(&self) -> usize {
        self.max_connections - self.established.available_permits()
    }

    /// Handshakes in progress now (for `/status`).
    pub fn pending(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pending
            .len()
    }

    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Admits a just-accepted connection from `peer` to its handshake, or says why not (counted and
    /// logged here; the caller resets the connection). A full budget evicts the oldest handshake.
    pub fn admit(self: &Arc<Self>, peer: SocketAddr) -> Result<Pending, TurnAway> {
        let source = source_key(peer.ip());
        let evict = CancellationToken::new();
        let (id, evicted) = {
            let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(cap) = self.per_source
                && t.sources.get(&source).is_some_and(|n| *n >= cap)
            {
                drop(t);
                self.turn_away(TurnAway::SourceLimit, peer);
                return Err(TurnAway::SourceLimit);
            }
            let evicted = if t.pending.len() >= self.max_pending {
                let oldest = t.pending.keys().next().copied();
                oldest.and_then(|id| t.remove(id))
            } else {
                None
            };
            let id = t.next;
            t.next += 1;
            t.pending.insert(
                id,
                Entry {
                    source,
                    peer,
                    evict: evict.clone(),
                },
            );
            *t.sources.entry(source).or_default() += 1;
            (id, evicted)
        };
        match evicted {
            Some(old) => {
                old.evict.cancel();
                self.turn_away(TurnAway::Evicted, old.peer);
            }
            None => metrics::handshakes_in_progress(&self.who).increment(1.0),
        }
        Ok(Pending {
            admission: self.clone(),
            id,
            evict,
        })
    }

    /// Ends a handshake's membership; true if it was still in progress (not evicted).
    fn release(&self, id: u64) -> bool {
        let removed = self
            .table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
            .is_some();
        if removed {
            metrics::handshakes_in_progress(&self.who).decrement(1.0);
        }
        removed
    }

    fn turn_away(&self, reason: TurnAway, peer: SocketAddr) {
        metrics::turned_away(&self.who, reason);
        let Some(n) = self.log.check(reason) else {
            return;
        };
        let d = self.who.dir.as_str();
        let listen = self.listen;
        let why = match reason {
            TurnAway::SourceLimit => format!(
                "reset {d} connection from {peer} on {listen}: its address already has {} handshakes in \
                 progress (limits.max_pending_per_source)",
                self.per_source.unwrap_or_default()
            ),
            TurnAway::Evicted => format!(
                "closed the {d} handshake in progress from {peer} on {listen}, the oldest, to admit a new \
                 connection: {} handshakes were in progress (limits.max_pending_handshakes); many \
                 connections that do not finish their handshake?",
                self.max_pending
            ),
            TurnAway::ConnectionsFull => format!(
                "reset verified {d} connection from {peer} on {listen}: {} connections are established \
                 (limits.max_connections); raise it if this node needs more",
                self.max_connections
            ),
        };
        tracing::warn!(
            peer = %peer,
            listen = %listen,
            reason = reason.as_str(),
            "{why}{}",
            suppressed_note(n)
        );
    }
}

/// A handshake in progress, holding its place in the budgets until it is dropped or established.
pub struct Pending {
    admission: Arc<Admission>,
    id: u64,
    evict: CancellationToken,
}

impl Pending {
    /// Fires when this handshake was evicted for a newer connection: the connection's task ends.
    pub fn eviction(&self) -> CancellationToken {
        self.evict.clone()
    }

    /// The handshake with `peer` is verified: trade the handshake slot for an established one. `None`
    /// (counted and logged) when every established slot is taken, or the handshake was evicted
    /// meanwhile: the caller resets the connection ([`reset`]).
    pub fn establish(self, peer: SocketAddr) -> Option<Established> {
        if !self.admission.release(self.id) {
            return None;
        }
        match self.admission.established.clone().try_acquire_owned() {
            Ok(permit) => Some(Established { _permit: permit }),
            Err(_) => {
                self.admission.turn_away(TurnAway::ConnectionsFull, peer);
                None
            }
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.admission.release(self.id);
    }
}

/// An established connection's slot, held until the connection ends.
pub struct Established {
    _permit: OwnedSemaphorePermit,
}

impl Admission {
    /// A slot for a connection adopted from the old process: `None` when every slot is taken, and
    /// the connection stays all the same (it was established before the hand-over; refusing it now
    /// would cut a working connection).
    pub fn adopt(&self) -> Option<Established> {
        let permit = self.established.clone().try_acquire_owned().ok()?;
        Some(Established { _permit: permit })
    }
}

/// Makes the close of `stream` a reset (SO_LINGER 0): a turned-away connection is an abort, not an
/// orderly end, and a reset leaves no TIME_WAIT entry behind on our side during a flood.
pub fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// The address a per-source cap counts: IPv4 (also IPv4-mapped IPv6) as it is, IPv6 by its /64, the
/// smallest prefix a host is usually given.
fn source_key(ip: IpAddr) -> IpAddr {
    match crate::tls::verify::canonical_ip(ip) {
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::V6(octets.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max_pending: usize, per_source: usize, max_connections: usize) -> Arc<Admission> {
        let limits = Limits {
            max_pending_handshakes: max_pending,
            max_pending_per_source: per_source,
            max_connections,
            ..Limits::default()
        };
        Arc::new(Admission::new(
            metrics::Listener::new(metrics::Direction::Inbound, "internode".into()),
            "127.0.0.1:7001".parse().unwrap(),
            &limits,
            true,
        ))
    }

    fn peer(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_source_is_capped_and_others_still_get_in() {
        let a = admission(10, 2, 10);
        let first = a.admit(peer("10.0.0.1:1000")).unwrap();
        let _second = a.admit(peer("10.0.0.1:1001")).unwrap();
        assert_eq!(
            a.admit(peer("10.0.0.1:1002")).err(),
            Some(TurnAway::SourceLimit)
        );
        assert!(a.admit(peer("10.0.0.2:1000")).is_ok());
        // A finished handshake frees its source's place.
        drop(first);
        assert!(a.admit(peer("10.0.0.1:1003")).is_ok());
    }

    #[test]
    fn an_ipv6_slash_64_is_one_source_and_mapped_ipv4_is_ipv4() {
        let a = admission(10, 1, 10);
        let _one = a.admit(peer("[2001:db8::1]:1")).unwrap();
        assert!(a.admit(peer("[2001:db8::ffff:2]:1")).is_err());
        assert!(a.admit(peer("[2001:db8:0:1::1]:1")).is_ok());
        let _v4 = a.admit(peer("10.0.0.9:1")).unwrap();
        assert!(a.admit(peer("[::ffff:10.0.0.9]:2")).is_err());
    }

    #[test]
    fn a_full_budget_evicts_the_oldest() {
        let a = admission(2, 2, 10);
        let oldest = a.admit(peer("10.0.0.1:1")).unwrap();
        let middle = a.admit(peer("10.0.0.2:1")).unwrap();
        let newest = a.admit(peer("10.0.0.3:1")).unwrap();
        assert!(oldest.eviction().is_cancelled());
        assert!(!middle.eviction().is_cancelled());
        assert!(!newest.eviction().is_cancelled());
        // The evicted one cannot establish; its source's place was freed with it.
        assert!(oldest.establish(peer("10.0.0.1:1")).is_none());
        assert_eq!(a.table.lock().unwrap().pending.len(), 2);
        assert!(
            !a.table
                .lock()
                .unwrap()
                .sources
                .contains_key(&"10.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn established_slots_are_separate_and_bounded() {
        let a = admission(10, 10, 1);
        let first = a.admit(peer("10.0.0.1:1")).unwrap();
        let second = a.admit(peer("10.0.0.1:2")).unwrap();
        let slot = first.establish(peer("10.0.0.1:1")).unwrap();
        // The established connection no longer counts as a handshake in progress.
        assert_eq!(a.table.lock().unwrap().pending.len(), 1);
        assert!(second.establish(peer("10.0.0.1:2")).is_none());
        drop(slot);
        let third = a.admit(peer("10.0.0.1:3")).unwrap();
        assert!(third.establish(peer("10.0.0.1:3")).is_some());
        assert!(a.table.lock().unwrap().pending.is_empty());
        assert!(a.table.lock().unwrap().sources.is_empty());
    }
}
