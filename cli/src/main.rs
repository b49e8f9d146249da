//! The `ringseal` command: parse the command line, start logging and the runtime, hand over to the
//! command's handler in [`cmd`].

#![deny(unsafe_code)]

mod args;
mod bench;
mod cmd;
mod logging;
mod notify;
mod signals;
mod upgrade;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};

fn main() -> ExitCode {
    if let Some(commit) = option_env!("RINGSEAL_GIT_COMMIT") {
        ringseal::set_git_commit(commit);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print to stdout and succeed; a wrong command line is a usage error.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(cmd::EXIT_CONFIG);
        }
    };
    // Flushes what is still buffered when main returns.
    let format = match cli.command {
        Command::Run { log_format, .. } => log_format,
        _ => args::LogFormat::Text,
    };
    let _logs = logging::init(
        matches!(cli.command, Command::Demo { .. } | Command::Bench(_)),
        format,
    );
    // Every relayed connection holds two descriptors; the default soft limit (often 1024) would cap a
    // busy node far below limits.max_connections. The hard limit is the administrator's decision.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::debug!("cannot raise the open-file limit: {e}");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return cmd::failure(&format_args!("cannot start the async runtime: {e}")),
    };
    match cli.command {
        Command::Run {
            sources,
            log_format,
        } => cmd::run::run(&sources, log_format, &runtime),
        Command::Check(args) => cmd::check::run(&args),
        Command::Rules(args) => cmd::rules::run(&args),
        Command::Certs { command } => cmd::certs::run(command),
        Command::Bench(args) => cmd::bench::run(*args, &runtime),
        Command::Demo { duration } => cmd::demo::run(duration, &runtime),
    }
}
