//! SIGUSR2 on `ringseal run`: start a successor that takes this process's place without refusing a
//! connection. The successor is the binary at the path this process was started from (after a
//! package upgrade, the new one) with the same arguments and environment; it takes the listening
//! sockets and the movable connections over the hand-over socket (`[handover] socket`), says
//! `MAINPID=` + `READY=1` to systemd, and this process then drains and exits as on SIGTERM.

use std::ffi::OsString;
use std::path::PathBuf;

/// How to start a successor, captured at start-up: `/proc/self/exe` names the running binary by the
/// path it had then, so a binary replaced later by a package upgrade is the one the successor runs.
pub struct Successor {
    exe: PathBuf,
    args: Vec<OsString>,
}

impl Successor {
    /// `None` (with a warning) when the running binary's path cannot be read.
    pub fn capture() -> Option<Self> {
        match std::env::current_exe() {
            Ok(exe) => Some(Self {
                exe,
                args: std::env::args_os().skip(1).collect(),
            }),
            Err(e) => {
                tracing::warn!(
                    "cannot read the path of the running binary ({e}); SIGUSR2 will not upgrade"
                );
                None
            }
        }
    }

    /// Starts the successor and logs its exit if it ends before taking over (this process then keeps
    /// serving). Its standard output and error are this process's (the same journal).
    pub fn spawn(&self) {
        let mut command = tokio::process::Command::new(&self.exe);
        command
            .args(&self.args)
            .stdin(std::process::Stdio::null())
            // systemd's WATCHDOG_PID names this process: without it the successor keeps the watchdog
            // going itself (WATCHDOG_USEC alone), as the service's main process will have to.
            .env_remove("WATCHDOG_PID")
            .kill_on_drop(false);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                tracing::error!(
                    "SIGUSR2: cannot start {}: {e}; still serving",
                    self.exe.display()
                );
                return;
            }
        };
        let pid = child.id().unwrap_or(0);
        tracing::info!(
            "SIGUSR2: started {} (pid {pid}) to take over through the hand-over socket",
            self.exe.display()
        );
        tokio::spawn(async move {
            // Reaped here while this process lives; a successor that took over outlives it.
            match child.wait().await {
                Ok(status) if status.success() => {
                    tracing::info!("successor pid {pid} exited ({status})")
                }
                Ok(status) => tracing::warn!(
                    "successor pid {pid} exited ({status}) before taking over; still serving"
                ),
                Err(e) => tracing::debug!("waiting for successor pid {pid}: {e}"),
            }
        });
    }
}
