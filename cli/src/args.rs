//! The command line (clap derive). Every `///` here is `--help` text.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ringseal::pki::KeyType;

use crate::bench::BenchArgs;

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
    /// Run the sidecar with a config file, the node's cassandra.yaml, or both.
    Run {
        #[command(flatten)]
        sources: SourceArgs,
        /// How log lines are written to stderr: `text` (one human-readable line per event) or `json`
        /// (one JSON object per line for log shippers: `timestamp`, `level`, `message` and the
        /// event's fields, such as `peer`, `reason`, or the connection-end line's `direction`,
        /// `bytes_from_peer`, `how`; see the README, *Logging*).
        #[arg(long, env = "RINGSEAL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Validate a config, load its certificates and keystores, and report on the PKI (subject, SANs,
    /// validity, key, version, EKU, chain against the trust store) and what `run` would do, without
    /// binding ports. Warns about v1 certificates, missing IP SANs, expiry within 30 days, SHA-1, RSA
    /// below 2048 bits, an OU other than the cluster name. When the key material does not load, every
    /// problem is reported (each store on its own), not only the first. Exit status: 0 fine (warnings
    /// allowed), 1 an error in the PKI (our chain does not verify), 64 the config cannot be loaded.
    Check(CheckArgs),
    /// Print (or apply, or remove) the nftables rules that redirect the node's connections to peers'
    /// storage port through the transparent outbound listener.
    Rules(RulesArgs),
    /// Issue certificates: a cluster CA, node certificates (PEM + PKCS#12), or sign a keytool CSR.
    Certs {
        #[command(subcommand)]
        command: Certs,
    },
    /// Show the whole thing on loopback: a throwaway CA, three fake Cassandra nodes with sidecars, real
    /// mTLS traffic, an impostor and an endpoint-verification failure, and a live summary.
    Demo {
        /// How long to run before printing the final summary (Ctrl-C ends it earlier).
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// Measure ringseal end to end on loopback (a real sidecar pair: plaintext in, mutual TLS between,
    /// plaintext out) and, with --compare, stunnel, HAProxy and nginx pairs with the same
    /// certificates and suite, interleaved: throughput, proxy CPU per GB, handshakes, added latency,
    /// memory per idle connection. Prints a table (ratios are ringseal / peer).
    Bench(Box<BenchArgs>),
}

/// `run --log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the config comes from (`run`, `check`).
#[derive(Debug, clap::Args)]
pub struct SourceArgs {
    /// The ringseal TOML config (see config/ringseal.toml for every key). With --cassandra-yaml, its
    /// values override the derived ones.
    #[arg(
        long,
        short,
        env = "RINGSEAL_CONFIG",
        required_unless_present = "cassandra_yaml"
    )]
    pub config: Option<PathBuf>,
    /// Derive the config from the node's own cassandra.yaml (server_encryption_options, storage_port,
    /// ssl_storage_port, listen_address, cluster_name); keys ringseal cannot honour are named in a
    /// warning. `check` prints the derived config.
    #[arg(long, env = "RINGSEAL_CASSANDRA_YAML")]
    pub cassandra_yaml: Option<PathBuf>,
    /// Set one config key, applied over the config file or the config derived from cassandra.yaml;
    /// repeat for several. KEY is a dotted key of the file (`tls.accept_v1_certificates`,
    /// `metrics.listen`), VALUE a TOML value (`true`, `5`, `"10s"`, `["TLSv1.3"]`); a value that is not
    /// TOML is a string (`--set tls.truststore=/etc/c/trust.jks`). Unknown keys are refused like in
    /// the file; passwords are refused (the command line is visible to every local user).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

impl SourceArgs {
    pub fn sources(&self) -> ringseal::config::Sources {
        ringseal::config::Sources {
            config: self.config.clone(),
            cassandra_yaml: self.cassandra_yaml.clone(),
            set: self.set.clone(),
        }
    }
}

/// `ringseal certs ...`
#[derive(Debug, Subcommand)]
pub enum Certs {
    /// Create a cluster CA: DIR/ca.crt and DIR/ca.key (0600). OU = the cluster name.
    Ca {
        /// Cassandra's cluster_name; becomes the CA's OU (and the OU of every node certificate).
        #[arg(long)]
        cluster_name: String,
        /// Directory to write to (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Key type.
        #[arg(long, value_parser = key_type_parser(&CERT_KEY_TYPES), default_value = "ecdsa-p256")]
        key_type: KeyType,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u64,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a node certificate from a CA made by `certs ca`: OUT/NAME.crt (leaf, then CA), NAME.key
    /// (0600) and NAME.p12 (0600, for Cassandra's keystore), with IP SANs for endpoint verification
    /// and both serverAuth and clientAuth.
    Node {
        /// The CA directory (ca.crt, ca.key).
        #[arg(long)]
        ca: PathBuf,
        /// The node's name (CN, file names and the PKCS#12 alias).
        #[arg(long)]
        name: String,
        /// The node's IP addresses (listen_address, broadcast_address); repeat for several.
        #[arg(long = "ip", required = true)]
        ips: Vec<std::net::IpAddr>,
        /// DNS names, if peers should also match names; repeat for several.
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// Directory to write to (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Key type.
        #[arg(long, value_parser = key_type_parser(&CERT_KEY_TYPES), default_value = "ecdsa-p256")]
        key_type: KeyType,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// File holding the PKCS#12 password (default: a random one, written to NAME.p12.password).
        #[arg(long)]
        p12_password_file: Option<PathBuf>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Sign a certificate signing request (e.g. `keytool -certreq`) as a node certificate; prints PEM.
    Sign {
        /// The CA directory (ca.crt, ca.key).
        #[arg(long)]
        ca: PathBuf,
        /// The CSR file (PEM).
        #[arg(long)]
        csr: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u64,
    },
}

/// `certs --key-type`: the three `ringseal certs` has always offered (Ed25519 is for `bench` only).
const CERT_KEY_TYPES: [KeyType; 3] = [KeyType::EcdsaP256, KeyType::Rsa2048, KeyType::Rsa4096];

/// Parses a key type by its name, offering (and listing in `--help`) only `allowed`: the one key-type
/// enum is `ringseal::pki::KeyType`, which knows nothing of clap.
pub fn key_type_parser(
    allowed: &'static [KeyType],
) -> impl clap::builder::TypedValueParser<Value = KeyType> {
    use clap::builder::{PossibleValuesParser, TypedValueParser as _};
    PossibleValuesParser::new(allowed.iter().map(|k| k.name())).map(|name| {
        KeyType::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .expect("the parser offers only known names")
    })
}

// `ringseal check` (its help text is on `Command::Check`).
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub sources: SourceArgs,
    /// Print the report as JSON (for monitoring and configuration management).
    #[arg(long)]
    pub json: bool,
}

// `ringseal rules` (its help text is on `Command::Rules`).
#[derive(Debug, clap::Args)]
pub struct RulesArgs {
    /// The ringseal TOML config (it needs an [[outbound]] with transparent = true).
    #[arg(
        long,
        short,
        env = "RINGSEAL_CONFIG",
        required_unless_present = "remove"
    )]
    pub config: Option<PathBuf>,
    /// Cassandra's plaintext storage_port on every node.
    #[arg(long, default_value_t = 7000)]
    pub storage_port: u16,
    /// The uid ringseal runs as; its own connections are not redirected. Default: the `ringseal`
    /// user (without one, --uid is required).
    #[arg(long)]
    pub uid: Option<u32>,
    /// Also refuse storage-port connections that do not come from this host.
    #[arg(long)]
    pub strict: bool,
    /// Print an iptables (legacy) script instead of an nftables ruleset.
    #[arg(long, conflicts_with_all = ["apply", "remove"])]
    pub iptables: bool,
    /// Load the rules now (nft -f), replacing an earlier version.
    #[arg(long, conflicts_with = "remove")]
    pub apply: bool,
    /// Remove ringseal's table (and only it).
    #[arg(long)]
    pub remove: bool,
}
