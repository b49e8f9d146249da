//! `ringseal run`: load the config, say what `check` would warn about, bind, serve until a signal.

use std::process::ExitCode;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::check::report::{Purpose, examine};
use super::config_error;
use crate::args::{LogFormat, SourceArgs};
use crate::notify::{Notifier, spawn_watchdog};
use crate::signals::Signals;
use crate::upgrade::Successor;

pub fn run(sources: &SourceArgs, format: LogFormat, runtime: &tokio::runtime::Runtime) -> ExitCode {
    // With JSON logs, a log shipper reads stderr: the one error line is a JSON line too.
    let config_error = |e: &dyn std::fmt::Display| match format {
        LogFormat::Text => config_error(e),
        LogFormat::Json => {
            tracing::error!("{e}");
            ExitCode::from(super::EXIT_CONFIG)
        }
    };
    let failure = |e: &dyn std::fmt::Display| match format {
        LogFormat::Text => super::failure(e),
        LogFormat::Json => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    };
    let loaded = match ringseal::load(&sources.sources()) {
        Ok(loaded) => loaded,
        Err(e) => return config_error(&e),
    };
    if let Some(derived) = &loaded.derived {
        for w in &derived.warnings {
            tracing::warn!("cassandra.yaml: {w}");
        }
        for n in &derived.notes {
            tracing::info!("cassandra.yaml: {n}");
        }
    }
    // What `check` would warn about is worth a line at start-up too: an operator who never runs
    // `check` still learns that peers will refuse this node.
    let report = examine(&loaded.config, Purpose::Startup);
    for w in report.warnings.iter().chain(&report.errors) {
        tracing::warn!("{w}");
    }
    // Now, before a package upgrade can replace the binary this path names.
    let successor = match loaded.config.handover.socket {
        Some(_) => Successor::capture().ok_or("the running binary's path cannot be read"),
        None => Err(
            "hand-over is off (set [handover] socket, or run under systemd with RuntimeDirectory=); \
             a successor could not take the listeners over",
        ),
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        // Before READY=1: a reload signal right after it must find its handler.
        let signals = Signals::install();
        let notifier = Arc::new(Notifier::default());
        spawn_watchdog(notifier.clone());
        // Before binding: a running ringseal hands its listening sockets over, so no connect is
        // refused in between (`[handover]`).
        let takeover = match &loaded.config.handover.socket {
            None => None,
            Some(path) => {
                let wanted = ringseal::handover::wanted(&loaded.config);
                match ringseal::handover::contact(path, wanted).await {
                    Ok(ringseal::handover::Contact::Alone) => None,
                    Ok(ringseal::handover::Contact::TakeOver(t)) => {
                        tracing::info!(
                            "taking over from pid {}: received {} listening socket(s)",
                            t.pid,
                            t.received()
                        );
                        Some(t)
                    }
                    // Nothing is bound: the running process keeps serving.
                    Err(e) => return failure(&e),
                }
            }
        };
        let server = match ringseal::Server::bind_taking_over(loaded.config, takeover).await {
            Ok(s) => s.with_events(notifier),
            Err(e) => return config_error(&e),
        };
        if let Some(signals) = signals {
            let reload = Some(server.reload_handle());
            tokio::spawn(signals.handle(shutdown.clone(), reload, successor));
        }
        server.serve(shutdown).await;
        ExitCode::SUCCESS
    })
}
