//! systemd's side of `ringseal run` (`Type=notify-reload`): the sidecar's [`Events`] as sd_notify
//! messages, and watchdog keep-alives. Without `NOTIFY_SOCKET` every message is a no-op; a socket that
//! cannot be reached is logged once at debug and never stops the sidecar.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ringseal::events::{Events, Status};
use sd_notify::NotifyState;

/// Sends each state change to `NOTIFY_SOCKET`.
#[derive(Default)]
pub struct Notifier {
    /// A send failed once already: say so only the first time.
    failed: AtomicBool,
    /// Handed over: this process no longer speaks for the service.
    quiet: AtomicBool,
}

impl Notifier {
    fn send(&self, states: &[NotifyState]) {
        if self.quiet.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = sd_notify::notify(states)
            && !self.failed.swap(true, Ordering::Relaxed)
        {
            let socket = std::env::var("NOTIFY_SOCKET").unwrap_or_default();
            tracing::debug!("cannot notify the service manager at NOTIFY_SOCKET={socket}: {e}");
        }
    }
}

impl Events for Notifier {
    fn ready(&self, status: &Status) {
        let line = status.to_string();
        // MAINPID: a successor started by SIGUSR2 (`upgrade`) becomes the service's main process
        // once it serves (the unit's NotifyAccess=all lets systemd hear it); the first process names
        // itself, which changes nothing.
        self.send(&[
            NotifyState::Ready,
            NotifyState::Status(&line),
            NotifyState::MainPid(std::process::id()),
        ]);
    }

    fn reloading(&self) {
        // systemd accepts the RELOADING=1 answering its SIGHUP only with a CLOCK_MONOTONIC timestamp
        // taken after the signal; clock_gettime(CLOCK_MONOTONIC) cannot fail on Linux.
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    fn reloaded(&self, status: &Status) {
        let line = status.to_string();
        self.send(&[NotifyState::Ready, NotifyState::Status(&line)]);
    }

    fn handed_over(&self, _pid: u32) {
        // The successor is the service now (it said MAINPID= itself): not STOPPING=1, no STATUS=
        // over its own, and no more keep-alives, which would hide a hung successor from the watchdog
        // (NotifyAccess=all accepts them from any process of the unit).
        self.quiet.store(true, Ordering::Relaxed);
    }

    fn stopping(&self) {
        self.send(&[
            NotifyState::Stopping,
            NotifyState::Status("stopping: draining"),
        ]);
    }
}

/// With `WATCHDOG_USEC` set (and `WATCHDOG_PID`, if set, naming this process) sends `WATCHDOG=1` at
/// half the interval, as sd_watchdog_enabled(3) advises, from a task on the runtime that relays bytes:
/// a runtime that stops making progress stops the keep-alives and systemd restarts the process.
pub fn spawn_watchdog(notifier: std::sync::Arc<Notifier>) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = (interval / 2).max(Duration::from_millis(1));
    tracing::debug!("systemd watchdog: keep-alive every {period:?}");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            notifier.send(&[NotifyState::Watchdog]);
        }
    });
}
