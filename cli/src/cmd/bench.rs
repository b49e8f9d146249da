//! `ringseal bench`: see [`crate::bench`].

use std::process::ExitCode;

use crate::bench::BenchArgs;

pub fn run(args: BenchArgs, runtime: &tokio::runtime::Runtime) -> ExitCode {
    match runtime.block_on(crate::bench::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::failure(&format_args!("bench failed: {e:#}")),
    }
}
