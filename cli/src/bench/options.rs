//! `ringseal bench`'s command line: the clap arguments (every `///` is `--help` text) and the
//! [`Options`] they resolve to, with the `--quick` defaults filled in and every bound checked once.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use super::catalog::{Anchor, Group, KeyType, SUITES, Suite, Test, find_suite};
use super::messages::{MAX_MESSAGE, MIN_MESSAGE, MessageMix};

/// The `GLIBC_TUNABLES` of ringseal's systemd unit and container image (tests check they agree).
pub const GLIBC_TUNABLES: &str = "glibc.cpu.x86_rep_movsb_threshold=0x100000";

/// `ringseal bench ...`
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Cipher suites for the bulk and latency comparison, IANA or OpenSSL names, comma-separated.
    /// TLS 1.2 ECDSA suites run with ECDSA P-256 certificates, RSA suites with RSA 2048. Default:
    /// all nine (--quick: TLS_AES_128_GCM_SHA256 and TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256).
    #[arg(long, value_delimiter = ',')]
    pub suites: Vec<String>,
    /// Key types for the handshake comparison, comma-separated. Default: all (--quick: ecdsa-p256,
    /// ed25519).
    #[arg(long, value_delimiter = ',', value_parser = crate::args::key_type_parser(&KeyType::ALL))]
    pub key_types: Vec<KeyType>,
    /// Key exchange groups the handshake driver offers (one at a time) to each inbound side,
    /// comma-separated. Default: all.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub groups: Vec<Group>,
    /// Which tests to run, comma-separated. Default: all.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub tests: Vec<Test>,
    /// Bytes per bulk transfer (one connection): 2GiB, 512M, 1000000000 ... Default: 2GiB
    /// (--quick: 64MiB).
    #[arg(long, value_parser = parse_size)]
    pub bytes: Option<u64>,
    /// How long each handshake, ping-pong and small-message run lasts (the small-message test
    /// warms up for a fifth of it more, at most 1s). Default: 5s (--quick: 1s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Idle connections for the memory test; needs about 2 open files per connection in this
    /// process and in each proxy (the limit is raised when allowed). Default: 10000 (--quick: 200).
    #[arg(long)]
    pub connections: Option<usize>,
    /// Small-message test: simulated Cassandra peers, each with --connections-per-peer long-lived
    /// connections through the pair.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub message_peers: usize,
    /// Small-message test: connections per simulated peer (Cassandra 4.0+ opens three: urgent,
    /// small and large messages).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub connections_per_peer: usize,
    /// Small-message test: messages outstanding on each connection; the next one is sent when the
    /// echo of one is back.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub in_flight: usize,
    /// Small-message test: sizes of the common messages, MIN-MAX (uniform), or one size; units as
    /// --bytes.
    #[arg(long, value_name = "MIN-MAX", default_value = "512-4KiB", value_parser = parse_size_range)]
    pub message_size: (u64, u64),
    /// Small-message test: the size of the occasional large message (a big mutation).
    #[arg(long, value_name = "SIZE", default_value = "64KiB", value_parser = parse_size)]
    pub large_message: u64,
    /// Small-message test: one message in N (at random) is large; 0: none.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub large_every: u32,
    /// Small-message test: seeds the message sizes and contents, so that every peer (and every
    /// run with the same seed) gets the same messages.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seed: u64,
    /// Runs of every measurement, interleaved across peers; medians are reported. Default: 3
    /// (--quick: 1).
    #[arg(long)]
    pub repeat: Option<usize>,
    /// Also measure these proxies as sidecar pairs in the same run, comma-separated (Debian
    /// packages stunnel4, haproxy, nginx + libnginx-mod-stream). A missing one is skipped with a
    /// note.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub compare: Vec<Anchor>,
    /// CI-sized run: smaller defaults for everything above (a minute or two on two cores).
    #[arg(long)]
    pub quick: bool,
    /// JSON instead of the table on stdout; --json=FILE writes it to FILE and keeps the table.
    #[arg(long, value_name = "FILE", num_args = 0..=1, require_equals = true, default_missing_value = "-")]
    pub json: Option<PathBuf>,
    /// CSV instead of the table on stdout; --csv=FILE writes it to FILE and keeps the table.
    #[arg(long, value_name = "FILE", num_args = 0..=1, require_equals = true, default_missing_value = "-")]
    pub csv: Option<PathBuf>,
    /// Write an SVG chart of the suites, key types, groups and peers side by side to FILE (with
    /// --congestion: one chart per algorithm, FILE-ALGORITHM.svg).
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Run everything once per TCP congestion control listed, comma-separated (e.g. bbr,cubic), each
    /// in a network namespace of its own whose net.ipv4.tcp_congestion_control is that algorithm
    /// (every pair, the load generator and the backend inside it, on its loopback): one block per
    /// algorithm in the table, a `congestion` field in JSON and CSV. Needs root and `ip`; a
    /// namespace may default only to an algorithm in net.ipv4.tcp_allowed_congestion_control.
    #[arg(long, value_delimiter = ',', value_name = "ALGORITHMS")]
    pub congestion: Vec<String>,
    /// The `[tcp] loopback_congestion_control` of ringseal's pairs: auto (ringseal's default: no
    /// pacing on its loopback legs when the host default paces), host (leave the host default, as
    /// ringseal did before it had the setting), or an algorithm name.
    #[arg(long, value_name = "auto|host|NAME", value_parser = |s: &str| s.parse::<ringseal::tcp::LoopbackCongestion>())]
    pub loopback_congestion_control: Option<ringseal::tcp::LoopbackCongestion>,
    /// GLIBC_TUNABLES for every proxy process of every peer alike (ringseal's and the anchors'),
    /// named in the header; `inherit` leaves this process's environment to them. The default is
    /// what ringseal's systemd unit and container image set: glibc 2.36 copies above 2 KiB with
    /// `rep movsb`, several times slower on AMD Zen 3/4 for misaligned buffers (README, "glibc's
    /// copies on AMD").
    #[arg(long, value_name = "TUNABLES|inherit", default_value = GLIBC_TUNABLES)]
    pub glibc_tunables: String,
    /// Internal: one --congestion block, run inside its namespace; writes table.txt, bench.json,
    /// bench.csv (and bench.svg with --plot) into DIR instead of the usual outputs.
    #[arg(long, hide = true, value_name = "DIR")]
    pub block_dir: Option<PathBuf>,
}

/// Where `--json` / `--csv` go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout,
    File(PathBuf),
}

impl Output {
    fn from_arg(path: Option<PathBuf>) -> Option<Self> {
        path.map(|p| {
            if p.as_os_str() == "-" {
                Self::Stdout
            } else {
                Self::File(p)
            }
        })
    }
}

/// The command line resolved: defaults (or `--quick` defaults) filled in.
#[derive(Debug, Clone)]
pub struct Options {
    pub suites: Vec<&'static Suite>,
    pub key_types: Vec<KeyType>,
    pub groups: Vec<Group>,
    pub tests: Vec<Test>,
    pub bytes: u64,
    pub duration: Duration,
    pub connections: usize,
    /// The small-message test's workload.
    pub messages: MessageMix,
    pub repeat: usize,
    pub anchors: Vec<Anchor>,
    pub quick: bool,
    pub json: Option<Output>,
    pub csv: Option<Output>,
    pub plot: Option<PathBuf>,
    /// `--congestion`: the algorithms, each once, names checked.
    pub congestion: Vec<String>,
    /// `--loopback-congestion-control`; `None`: the generated configs leave it to ringseal.
    pub loopback_congestion_control: Option<ringseal::tcp::LoopbackCongestion>,
    /// `--glibc-tunables`: the value every proxy gets; `None`: inherited.
    pub glibc_tunables: Option<String>,
    /// Set when this process is one `--congestion` block.
    pub block_dir: Option<PathBuf>,
}

impl Options {
    pub fn from_args(a: BenchArgs) -> anyhow::Result<Self> {
        let quick = a.quick;
        let messages = message_mix(&a)?;
        let suites = suites(&a.suites, quick)?;
        let key_types = match (a.key_types.is_empty(), quick) {
            (false, _) => dedup(a.key_types),
            // RSA-4096 key generation alone takes seconds: not for CI-sized runs.
            (true, true) => vec![KeyType::EcdsaP256, KeyType::Ed25519],
            (true, false) => KeyType::ALL.to_vec(),
        };
        let groups = all_if_empty(a.groups, &Group::ALL);
        let tests = all_if_empty(a.tests, &Test::ALL);
        let json = Output::from_arg(a.json);
        let csv = Output::from_arg(a.csv);
        if json == Some(Output::Stdout) && csv == Some(Output::Stdout) {
            anyhow::bail!(
                "--json and --csv cannot both go to stdout; give one a file, e.g. --csv=bench.csv"
            );
        }
        let repeat = a.repeat.unwrap_or(if quick { 1 } else { 3 });
        anyhow::ensure!(repeat >= 1, "--repeat must be at least 1");
        let connections = a.connections.unwrap_or(if quick { 200 } else { 10_000 });
        anyhow::ensure!(connections >= 1, "--connections must be at least 1");
        let duration = a
            .duration
            .unwrap_or(Duration::from_secs(if quick { 1 } else { 5 }));
        anyhow::ensure!(
            duration >= Duration::from_millis(100),
            "--duration must be at least 100ms"
        );
        let bytes = a.bytes.unwrap_or(if quick { 64 << 20 } else { 2 << 30 });
        anyhow::ensure!(bytes >= 1 << 20, "--bytes must be at least 1MiB");
        for name in &a.congestion {
            let ok = (1..16).contains(&name.len())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            anyhow::ensure!(
                ok,
                "--congestion: {name:?} is not a congestion control name (e.g. bbr,cubic; this \
                 kernel has: {})",
                ringseal::tcp::HostCongestion::read().available.join(" ")
            );
        }
        Ok(Self {
            suites,
            key_types,
            groups,
            tests,
            bytes,
            duration,
            connections,
            messages,
            repeat,
            anchors: dedup(a.compare),
            quick,
            json,
            csv,
            plot: a.plot,
            congestion: dedup(a.congestion),
            loopback_congestion_control: a.loopback_congestion_control,
            glibc_tunables: (a.glibc_tunables != "inherit").then_some(a.glibc_tunables),
            block_dir: a.block_dir,
        })
    }

    pub fn wants(&self, t: Test) -> bool {
        self.tests.contains(&t)
    }
}

/// The most connections the small-message test opens: a 1000-node cluster's three per peer, well
/// within the open-file limits the memory test already copes with.
const MAX_MESSAGE_CONNECTIONS: usize = 4096;

/// The small-message options, each checked against its bounds.
fn message_mix(a: &BenchArgs) -> anyhow::Result<MessageMix> {
    anyhow::ensure!(
        (1..=1000).contains(&a.message_peers),
        "--message-peers must be 1 to 1000"
    );
    anyhow::ensure!(
        (1..=100).contains(&a.connections_per_peer),
        "--connections-per-peer must be 1 to 100"
    );
    // Two descriptors per connection in this process (client and backend side) and in each proxy.
    let connections = a.message_peers * a.connections_per_peer;
    anyhow::ensure!(
        connections <= MAX_MESSAGE_CONNECTIONS,
        "--message-peers x --connections-per-peer = {connections} connections; at most \
         {MAX_MESSAGE_CONNECTIONS}"
    );
    anyhow::ensure!(
        (1..=1024).contains(&a.in_flight),
        "--in-flight must be 1 to 1024"
    );
    let bounds = MIN_MESSAGE as u64..=MAX_MESSAGE as u64;
    let (min, max) = a.message_size;
    anyhow::ensure!(
        bounds.contains(&min) && bounds.contains(&max),
        "--message-size {min}-{max}: sizes must be {MIN_MESSAGE} B to {} MiB (a message carries an \
         8-byte sequence number)",
        MAX_MESSAGE >> 20
    );
    anyhow::ensure!(
        a.large_every == 0 || bounds.contains(&a.large_message),
        "--large-message {}: must be {MIN_MESSAGE} B to {} MiB",
        a.large_message,
        MAX_MESSAGE >> 20
    );
    Ok(MessageMix {
        peers: a.message_peers,
        connections_per_peer: a.connections_per_peer,
        in_flight: a.in_flight,
        // Bounded above: these fit.
        size_min: min as usize,
        size_max: max as usize,
        large: a.large_message as usize,
        large_every: a.large_every,
        seed: a.seed,
    })
}

/// Parses `--message-size`: `MIN-MAX` or one size, each as [`parse_size`] takes it.
pub fn parse_size_range(s: &str) -> Result<(u64, u64), String> {
    let (min, max) = match s.split_once('-') {
        Some((a, b)) => (parse_size(a)?, parse_size(b)?),
        None => {
            let v = parse_size(s)?;
            (v, v)
        }
    };
    if min > max {
        return Err(format!(
            "{s:?}: the smaller size comes first (e.g. 512-4KiB)"
        ));
    }
    Ok((min, max))
}

/// `--suites` by name, each once; none given: all of them (`--quick`: one TLS 1.3, one TLS 1.2).
fn suites(names: &[String], quick: bool) -> anyhow::Result<Vec<&'static Suite>> {
    if names.is_empty() {
        return Ok(if quick {
            vec![&SUITES[0], &SUITES[3]]
        } else {
            SUITES.iter().collect()
        });
    }
    let mut found: Vec<&'static Suite> = Vec::new();
    for name in names {
        let suite = find_suite(name).with_context(|| {
            format!(
                "--suites: unknown cipher suite {name:?}; one of: {}",
                SUITES.iter().map(|s| s.iana).collect::<Vec<_>>().join(", ")
            )
        })?;
        if !found.iter().any(|x| std::ptr::eq(*x, suite)) {
            found.push(suite);
        }
    }
    Ok(found)
}

/// What was asked for, each once; nothing asked for: `all`.
fn all_if_empty<T: PartialEq + Copy>(asked: Vec<T>, all: &[T]) -> Vec<T> {
    if asked.is_empty() {
        all.to_vec()
    } else {
        dedup(asked)
    }
}

/// `v` without repeated entries, first occurrence kept.
fn dedup<T: PartialEq>(v: Vec<T>) -> Vec<T> {
    let mut out = Vec::with_capacity(v.len());
    for x in v {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

/// Parses `--bytes`: a number with an optional unit. K, M, G (and KiB, MiB, GiB) are powers of 1024,
/// as in iperf; KB, MB, GB are powers of 1000.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 2GiB, 512MiB, 1000000)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (K, M, G, KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    Ok((num * mult) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert_eq!(parse_size("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("3 parsecs").is_err());
        assert_eq!(parse_size_range("512-4KiB").unwrap(), (512, 4096));
        assert_eq!(parse_size_range("1k").unwrap(), (1024, 1024));
        assert!(parse_size_range("4k-512").is_err());
        assert!(parse_size_range("1k-").is_err());
    }
}
