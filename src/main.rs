//! Thin entry point: parse the command line, load and validate the config (exit 64 with one message if
//! it is wrong), then hand over to the library.

#![deny(unsafe_code)]

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;
use ringseal::cli::{Cli, Command};
use ringseal::config::Config;
use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// EX_USAGE from sysexits.h: the configuration (or command line) is wrong.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print to stdout and succeed; a wrong command line is a usage error.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Flushes what is still buffered when main returns.
    let _logs = init_logging(matches!(
        cli.command,
        Command::Demo { .. } | Command::Bench(_)
    ));
    // Every relayed connection holds two descriptors; the default soft limit (often 1024) would cap a
    // busy node far below limits.max_connections. The hard limit is the administrator's decision.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::debug!("cannot raise the open-file limit: {e}");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Run { sources } => {
            let config = match sources.sources().load() {
                Ok(loaded) => {
                    if let Some(derived) = &loaded.derived {
                        for w in &derived.warnings {
                            tracing::warn!("cassandra.yaml: {w}");
                        }
                        for n in &derived.notes {
                            tracing::info!("cassandra.yaml: {n}");
                        }
                    }
                    // What `check` would warn about is worth a line at start-up too: an operator
                    // who never runs `check` still learns that peers will refuse this node.
                    let report = ringseal::doctor::examine(
                        &loaded.config,
                        ringseal::doctor::Purpose::Startup,
                    );
                    for w in report.warnings.iter().chain(&report.errors) {
                        tracing::warn!("{w}");
                    }
                    loaded.config
                }
                Err(e) => return config_error(&e),
            };
            runtime.block_on(async {
                let shutdown = CancellationToken::new();
                let server = match ringseal::Server::bind(config).await {
                    Ok(s) => s,
                    Err(e) => return config_error(&e),
                };
                tokio::spawn(on_signals(shutdown.clone(), Some(server.reload_handle())));
                server.serve(shutdown).await;
                ExitCode::SUCCESS
            })
        }
        Command::Check { sources, json } => match sources.sources().load() {
            Ok(loaded) => {
                let c = &loaded.config;
                let report = ringseal::doctor::examine(c, ringseal::doctor::Purpose::Check);
                if json {
                    let mut value = serde_json::to_value(&report).expect("the report serializes");
                    if let Some(d) = &loaded.derived {
                        value["cassandra_yaml"] = serde_json::json!({
                            "derived_config": d.to_toml_redacted(),
                            "warnings": d.warnings,
                            "notes": d.notes,
                        });
                    }
                    println!("{value:#}");
                } else {
                    if let Some(d) = &loaded.derived {
                        println!("# derived from cassandra.yaml (passwords redacted)");
                        print!("{}", d.to_toml_redacted());
                        for n in &d.notes {
                            println!("# note: {n}");
                        }
                        for w in &d.warnings {
                            println!("# warning: {w}");
                        }
                        println!();
                    }
                    print!("{}", ringseal::doctor::render(&report, c));
                }
                if report.ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                if json {
                    let error = serde_json::json!({ "ok": false, "errors": [e.to_string()] });
                    println!("{error:#}");
                }
                config_error(&e)
            }
        },
        Command::Rules {
            config,
            storage_port,
            uid,
            strict,
            iptables,
            apply,
            remove,
        } => {
            use ringseal::rules;
            if remove {
                return match rules::remove() {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::FAILURE
                    }
                };
            }
            let Some(config) = config else {
                return config_error(&"rules: --config is required unless --remove is given");
            };
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => return config_error(&e),
            };
            let Some(uid) = uid.or_else(rules::default_uid) else {
                return config_error(
                    &"rules: there is no `ringseal` user on this host and no --uid: give the uid \
                      ringseal runs as (e.g. --uid $(id -u ringseal)); its own connections are the only \
                      ones not redirected",
                );
            };
            if uid == 0 {
                let _ = writeln!(
                    std::io::stderr(),
                    "warning: --uid 0: connections of every root process bypass the interception; run \
                     ringseal as a user of its own"
                );
            }
            let options = rules::RuleOptions {
                storage_port,
                uid,
                strict,
            };
            let generated = if iptables {
                rules::iptables(&config, &options)
            } else {
                rules::nftables(&config, &options)
            };
            let text = match generated {
                Ok(t) => t,
                Err(e) => return config_error(&e),
            };
            if !apply {
                print!("{text}");
                return ExitCode::SUCCESS;
            }
            match rules::apply(&text) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Certs { command } => match certs(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Bench(args) => match runtime.block_on(ringseal::bench::run(args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: bench failed: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Demo { duration } => runtime.block_on(async {
            let stop = CancellationToken::new();
            tokio::spawn(on_signals(stop.clone(), None));
            match ringseal::demo::run(duration, stop).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: demo failed: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }),
    }
}

fn certs(command: ringseal::cli::Certs) -> Result<(), ringseal::pki::files::CertsError> {
    use ringseal::cli::Certs;
    use ringseal::pki::files;
    match command {
        Certs::Ca {
            cluster_name,
            out,
            key_type,
            days,
            force,
        } => {
            for f in files::write_ca(&out, &cluster_name, key_type.into(), days, force)? {
                println!("wrote {}", f.display());
            }
        }
        Certs::Node {
            ca,
            name,
            ips,
            dns,
            out,
            key_type,
            days,
            p12_password_file,
            force,
        } => {
            let ca = files::load_ca(&ca)?;
            let mut spec = ringseal::pki::NodeSpec::new(&name, &ips);
            spec.dns = dns;
            spec.key = key_type.into();
            spec.not_after = spec.not_before + std::time::Duration::from_secs(days * 86400 + 3600);
            let password = match &p12_password_file {
                Some(path) => Some(
                    ringseal::files::read_text(path, ringseal::files::PASSWORD_FILE)
                        .map_err(|e| files::CertsError::Input {
                            path: path.clone(),
                            message: e.to_string(),
                        })?
                        .trim_end_matches(['\r', '\n'])
                        .to_owned(),
                ),
                None => None,
            };
            let written = files::write_node(&ca, &spec, &out, password.as_deref(), force)?;
            for f in &written.files {
                println!("wrote {}", f.display());
            }
            if let Some(p) = written.password_file {
                println!("the PKCS#12 password is in {}", p.display());
            }
        }
        Certs::Sign { ca, csr, days } => {
            let ca = files::load_ca(&ca)?;
            print!("{}", files::sign_csr(&ca, &csr, days)?);
        }
    }
    Ok(())
}

fn config_error(e: &dyn std::fmt::Display) -> ExitCode {
    // Not `eprintln!`, which panics when stderr is closed.
    let _ = writeln!(std::io::stderr(), "error: {e}");
    ExitCode::from(EXIT_CONFIG)
}

/// SIGTERM or SIGINT: graceful shutdown; a second one exits at once. SIGHUP: reload now.
async fn on_signals(shutdown: CancellationToken, reload: Option<Arc<Notify>>) {
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

/// Logs go to stderr through a thread of their own ([`tracing_appender::non_blocking`]), so a slow or
/// stalled reader (a paused pager, journald restarting) never blocks the runtime's workers, and a line
/// that cannot be written (EPIPE once the reader has gone) or does not fit the buffer is dropped and
/// counted instead: logging must never stop the process. tracing-subscriber's own report of a failed
/// write is off, because it goes through `eprintln!`, which panics on a closed stderr.
fn init_logging(demo: bool) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    let default = if demo { "warn" } else { "info" };
    let filter = EnvFilter::try_from_env("RINGSEAL_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        // A few MiB at most while the reader is stalled; more lines are dropped and counted.
        .buffered_lines_limit(LOG_BUFFERED_LINES)
        .thread_name("ringseal-log")
        .finish(Stderr);
    let dropped = writer.error_counter();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Counted {
            inner: writer,
            dropped,
        })
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .log_internal_errors(false)
        .init();
    guard
}

/// Log lines that may wait for a stalled stderr before new ones are dropped.
const LOG_BUFFERED_LINES: usize = 8192;

/// The log thread's sink: stderr, whose failures drop the line (counted) instead of failing.
struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::io::stderr().write(buf) {
            Err(e) if e.kind() != std::io::ErrorKind::Interrupted => {
                ringseal::metrics::log_lines_dropped(1);
                Ok(buf.len())
            }
            r => r,
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// The non-blocking writer, reporting the lines it dropped because its buffer was full.
#[derive(Clone)]
struct Counted {
    inner: tracing_appender::non_blocking::NonBlocking,
    dropped: tracing_appender::non_blocking::ErrorCounter,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Counted {
    type Writer = Self;

    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}

impl std::io::Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static REPORTED: AtomicUsize = AtomicUsize::new(0);
        let n = self.inner.write(buf);
        let dropped = self.dropped.dropped_lines();
        let before = REPORTED.swap(dropped, Ordering::Relaxed);
        if dropped > before {
            ringseal::metrics::log_lines_dropped((dropped - before) as u64);
        }
        n
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
