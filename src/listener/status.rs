//! What `/status` shows of a listener: its address, mode and load, and for an inbound listener the last
//! attempt to connect the storage port. Read on request from the listener's own state; the only thing
//! recorded for it is [`LastConnect`], once per connection attempt (never on the byte path).

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

use crate::tls::x509::fmt_time;

/// One listener in `/status`. Every field is present for every listener (`null` where it does not
/// apply), so consumers see one shape.
#[derive(Debug, Clone, Serialize)]
pub struct ListenerStatus {
    /// The listener's `name` (its `listener` metric label and log field).
    pub name: String,
    /// `inbound[0]`, `outbound[1]`: the config's list and index, as in config errors.
    pub key: String,
    /// `inbound` (mutual TLS in, plaintext to the storage port) or `outbound` (plaintext in from the
    /// node, mutual TLS to a peer).
    pub kind: &'static str,
    /// The bound address (the real port when the config said 0).
    pub listen: SocketAddr,
    /// `strict` or `permissive` (a reload may change it).
    pub mode: String,
    /// Established (verified, relaying) connections now.
    pub connections_active: usize,
    /// Handshakes in progress now.
    pub handshakes_in_progress: usize,
    /// `limits.max_connections` of this listener.
    pub max_connections: usize,
    /// Inbound: the storage port and the last attempt to connect it; `null` for outbound.
    pub storage: Option<StorageStatus>,
    /// Outbound: where connections go (`10.0.0.2:7001`, or `transparent:7001` for the original
    /// destination's IP with that port); `null` for inbound.
    pub target: Option<String>,
    /// The TLS material this listener uses now.
    pub tls: ListenerTls,
}

/// A listener's TLS policy as in use now (its own `[inbound.tls]`, or `[tls]`).
#[derive(Debug, Clone, Serialize)]
pub struct ListenerTls {
    /// `required`, `optional` or `off` (outbound: what the listener would ask, unused).
    pub client_auth: String,
    /// The subject of the certificate this listener presents.
    pub identity: String,
    /// Its notAfter, RFC 3339, UTC.
    pub identity_not_after: String,
    /// How many CA certificates it trusts.
    pub cas: usize,
    pub crls: usize,
    /// Why the last reload could not load this listener's material (it kept its previous one);
    /// `null` when the last reload applied it.
    pub reload_error: Option<String>,
}

impl ListenerTls {
    pub fn new(tls: &crate::tls::LoadedTls, reload_error: Option<String>) -> Self {
        let m = &tls.material;
        Self {
            client_auth: tls.require_client_auth.to_string(),
            identity: m.identity.subject.clone(),
            identity_not_after: fmt_time(m.identity.not_after),
            cas: m.cas.len(),
            crls: m.crls.len(),
            reload_error,
        }
    }
}

/// The last reload error of one listener's material, for `/status`.
#[derive(Debug, Default)]
pub struct ReloadError(Mutex<Option<String>>);

impl ReloadError {
    pub fn set(&self, e: Option<String>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = e;
    }

    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The storage port an inbound listener forwards to.
#[derive(Debug, Clone, Serialize)]
pub struct StorageStatus {
    pub address: SocketAddr,
    /// `null` until the first verified peer (or permissive plaintext peer) needed it.
    pub last_connect: Option<ConnectStatus>,
}

/// The outcome of the last connect.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectStatus {
    /// `ok` or `error`.
    pub result: &'static str,
    /// With `error`: `refused`, `timeout`, `unreachable`, `address_unavailable`,
    /// `permission_denied` or `other`.
    pub error_kind: Option<&'static str>,
    /// With `error`: the system's message.
    pub error: Option<String>,
    /// RFC 3339, UTC.
    pub at: String,
}

/// The last attempt to connect the storage port: one small lock per attempt.
#[derive(Debug, Default)]
pub struct LastConnect(Mutex<Option<(SystemTime, Attempt)>>);

/// Connected, or the error's kind and message.
type Attempt = Result<(), (&'static str, String)>;

impl LastConnect {
    /// Connected.
    pub fn ok(&self) {
        self.set(Ok(()));
    }

    /// Failed with `e` (`None`: `limits.connect_timeout` ran out), described as `message`.
    pub fn failed(&self, e: Option<&std::io::Error>, message: &str) {
        self.set(Err((e.map_or("timeout", error_kind), message.to_owned())));
    }

    fn set(&self, result: Attempt) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((SystemTime::now(), result));
    }

    pub fn get(&self) -> Option<ConnectStatus> {
        let last = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        last.map(|(at, result)| match result {
            Ok(()) => ConnectStatus {
                result: "ok",
                error_kind: None,
                error: None,
                at: fmt_time(at),
            },
            Err((kind, message)) => ConnectStatus {
                result: "error",
                error_kind: Some(kind),
                error: Some(message),
                at: fmt_time(at),
            },
        })
    }
}

/// A connect error as a bounded label.
fn error_kind(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "refused",
        TimedOut => "timeout",
        HostUnreachable | NetworkUnreachable | NetworkDown => "unreachable",
        AddrNotAvailable => "address_unavailable",
        PermissionDenied => "permission_denied",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_attempt_wins() {
        let last = LastConnect::default();
        assert!(last.get().is_none());
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        last.failed(Some(&refused), "connection refused");
        let s = last.get().unwrap();
        assert_eq!(
            (s.result, s.error_kind, s.error.as_deref()),
            ("error", Some("refused"), Some("connection refused"))
        );
        last.failed(None, "no answer within 5s");
        assert_eq!(last.get().unwrap().error_kind, Some("timeout"));
        last.ok();
        let s = last.get().unwrap();
        assert_eq!((s.result, s.error_kind), ("ok", None));
        assert!(s.at.ends_with('Z'), "{}", s.at);
    }
}
