//! Signals for the long-running commands (`run`, `demo`).

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// SIGTERM or SIGINT: graceful shutdown; a second one exits at once. SIGHUP: reload now.
pub async fn on_signals(shutdown: CancellationToken, reload: Option<Arc<Notify>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::warn!("cannot install signal handlers; stop ringseal with SIGKILL");
        return;
    };
    let mut round = 0;
    while round < 2 {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = hup.recv() => {
                // Without a handler SIGHUP would kill the process; `systemctl reload` must not.
                match &reload {
                    Some(r) => r.notify_one(),
                    None => tracing::info!("SIGHUP: nothing to reload"),
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
