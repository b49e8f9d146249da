//! `ringseal bench`: see [`crate::bench`].

use std::io::Write as _;
use std::process::ExitCode;

use crate::bench::BenchArgs;

pub fn run(args: BenchArgs, runtime: &tokio::runtime::Runtime) -> ExitCode {
    match runtime.block_on(crate::bench::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
