//! Signals for the long-running commands (`run`, `demo`).

use std::sync::Arc;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::upgrade::Successor;

/// The handlers of SIGTERM, SIGINT, SIGHUP and SIGUSR2. Installed before the process binds and says it is
/// ready: a SIGHUP that arrives right after READY=1 (systemd's reload) must reload, not kill the
/// process with the default action; a signal that arrives before [`Signals::handle`] runs waits.
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    usr2: Signal,
}

impl Signals {
    /// `None` (with a warning) when the handlers cannot be installed. Needs a tokio runtime.
    pub fn install() -> Option<Self> {
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
            signal(SignalKind::user_defined2()),
        ) {
            (Ok(term), Ok(int), Ok(hup), Ok(usr2)) => Some(Self {
                term,
                int,
                hup,
                usr2,
            }),
            _ => {
                tracing::warn!("cannot install signal handlers; stop ringseal with SIGKILL");
                None
            }
        }
    }

    /// SIGTERM or SIGINT: graceful shutdown; a second one exits at once. SIGHUP: reload now. SIGUSR2:
    /// start `successor` (`upgrade`); without one (`demo`, or hand-over off) it is logged and ignored,
    /// never the default action (which would kill the process).
    pub async fn handle(
        mut self,
        shutdown: CancellationToken,
        reload: Option<Arc<Notify>>,
        successor: Result<Successor, &'static str>,
    ) {
        let mut round = 0;
        while round < 2 {
            let name = tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
                _ = self.hup.recv() => {
                    // Without a handler SIGHUP would kill the process; `systemctl reload` must not.
                    match &reload {
                        Some(r) => r.notify_one(),
                        None => tracing::info!("SIGHUP: nothing to reload"),
                    }
                    continue;
                }
                _ = self.usr2.recv() => {
                    match &successor {
                        Ok(s) => s.spawn(),
                        Err(why) => tracing::warn!("SIGUSR2: no upgrade: {why}"),
                    }
                    continue;
                }
            };
            round += 1;
            // Act first, log second: whatever happens to the log line, the signal takes effect.
            if round == 1 {
                shutdown.cancel();
                tracing::info!("{name}: shutting down");
            } else {
                tracing::warn!("{name} again: exiting now");
                std::process::exit(130);
            }
        }
    }
}
