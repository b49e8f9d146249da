//! What a service manager is told about the sidecar's life: ready (every listener bound, identity
//! loaded), reloading, reloaded (with the outcome), stopping. The library only calls an [`Events`]
//! implementation at those points; the `ringseal` command speaks systemd's sd_notify protocol with it
//! (`cli/src/notify.rs`), tests and embedders may use their own or none.

use std::fmt;
use std::net::SocketAddr;
use std::time::SystemTime;

use crate::tls::x509::fmt_time;

/// Receives the sidecar's state changes. Called from the runtime's threads (reloads from a blocking
/// thread): implementations must not block for long.
pub trait Events: Send + Sync {
    /// Every listener is bound and accepting, and the identity is loaded.
    fn ready(&self, status: &Status);
    /// A reload (SIGHUP, or a changed file) starts now.
    fn reloading(&self);
    /// The reload finished: applied, or failed and the previous material still serves
    /// ([`Status::last_reload`] says which).
    fn reloaded(&self, status: &Status);
    /// Shutdown started: no new connections; open ones drain.
    fn stopping(&self);
    /// This process handed its listeners over to process `pid` and drains what stayed: the service
    /// goes on (so not [`Events::stopping`]).
    fn handed_over(&self, pid: u32) {
        let _ = pid;
    }
}

/// No one listens (the default).
pub struct NoEvents;

impl Events for NoEvents {
    fn ready(&self, _: &Status) {}
    fn reloading(&self) {}
    fn reloaded(&self, _: &Status) {}
    fn stopping(&self) {}
}

/// A one-line summary for an operator (systemd's `STATUS=`): listeners, identity, last reload. It holds
/// addresses, the certificate's subject and expiry and reload errors as logged: nothing secret.
#[derive(Debug, Clone)]
pub struct Status {
    pub inbound: Vec<SocketAddr>,
    pub outbound: Vec<SocketAddr>,
    /// Our certificate's subject.
    pub identity: String,
    pub identity_not_after: SystemTime,
    /// When the last reload ended and how; `None` before the first.
    pub last_reload: Option<(SystemTime, Result<(), String>)>,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |addrs: &[SocketAddr]| {
            addrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        };
        write!(f, "inbound [{}]", list(&self.inbound))?;
        if !self.outbound.is_empty() {
            write!(f, ", outbound [{}]", list(&self.outbound))?;
        }
        write!(
            f,
            "; identity \"{}\" until {}; ",
            self.identity,
            fmt_time(self.identity_not_after)
        )?;
        match &self.last_reload {
            None => write!(f, "no reload yet"),
            Some((at, Ok(()))) => write!(f, "last reload {} applied", fmt_time(*at)),
            // One line whatever the error says: STATUS= is a single line.
            Some((at, Err(e))) => write!(
                f,
                "last reload {} FAILED, previous certificates still serve: {}",
                fmt_time(*at),
                e.replace('\n', "; ")
            ),
        }
    }
}
