//! One handler per command; each returns the process's exit status.

pub mod bench;
pub mod certs;
pub mod check;
pub mod demo;
pub mod rules;
pub mod run;

use std::io::Write as _;
use std::process::ExitCode;

/// EX_USAGE from sysexits.h: the configuration (or command line) is wrong.
pub const EXIT_CONFIG: u8 = 64;

/// One line on stderr and exit 64: the configuration or command line is wrong.
pub fn config_error(e: &dyn std::fmt::Display) -> ExitCode {
    // Not `eprintln!`, which panics when stderr is closed.
    let _ = writeln!(std::io::stderr(), "error: {e}");
    ExitCode::from(EXIT_CONFIG)
}

/// One line on stderr and exit 1: the command was right but failed.
pub fn failure(e: &dyn std::fmt::Display) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "error: {e}");
    ExitCode::FAILURE
}
