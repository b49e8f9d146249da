//! The command line (clap derive). Every `///` here is `--help` text.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Mutual TLS for Apache Cassandra's internode traffic, as a sidecar: accepts mTLS on the TLS port,
/// verifies the peer against the cluster CA, and forwards plaintext to the local storage port.
#[derive(Debug, Parser)]
#[command(name = "ringseal", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar with a config file.
    Run {
        /// The ringseal TOML config (see config/ringseal.toml for every key).
        #[arg(long, short, env = "RINGSEAL_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config, load its certificates and print what `run` would do, without binding ports.
    Check {
        /// The ringseal TOML config.
        #[arg(long, short, env = "RINGSEAL_CONFIG")]
        config: PathBuf,
    },
    /// Show the whole thing on loopback: a throwaway CA, three fake Cassandra nodes with sidecars, real
    /// mTLS traffic, an impostor and an endpoint-verification failure, and a live summary.
    Demo {
        /// How long to run before printing the final summary (Ctrl-C ends it earlier).
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
}
