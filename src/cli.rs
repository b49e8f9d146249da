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
    /// Print (or apply, or remove) the nftables rules that redirect the node's connections to peers'
    /// storage port through the transparent outbound listener.
    Rules {
        /// The ringseal TOML config (it needs an [[outbound]] with transparent = true).
        #[arg(
            long,
            short,
            env = "RINGSEAL_CONFIG",
            required_unless_present = "remove"
        )]
        config: Option<PathBuf>,
        /// Cassandra's plaintext storage_port on every node.
        #[arg(long, default_value_t = 7000)]
        storage_port: u16,
        /// The uid ringseal runs as; its own connections are not redirected. Default: the `ringseal`
        /// user, or the current user when there is none.
        #[arg(long)]
        uid: Option<u32>,
        /// Also refuse storage-port connections that do not come from this host.
        #[arg(long)]
        strict: bool,
        /// Print an iptables (legacy) script instead of an nftables ruleset.
        #[arg(long, conflicts_with_all = ["apply", "remove"])]
        iptables: bool,
        /// Load the rules now (nft -f), replacing an earlier version.
        #[arg(long, conflicts_with = "remove")]
        apply: bool,
        /// Remove ringseal's table (and only it).
        #[arg(long)]
        remove: bool,
    },
    /// Show the whole thing on loopback: a throwaway CA, three fake Cassandra nodes with sidecars, real
    /// mTLS traffic, an impostor and an endpoint-verification failure, and a live summary.
    Demo {
        /// How long to run before printing the final summary (Ctrl-C ends it earlier).
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
}
