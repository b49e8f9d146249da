//! `ringseal bench`: ringseal and the classic TLS terminators (stunnel, HAProxy, nginx) measured side
//! by side, end to end, on loopback, the way a sidecar pair really runs.
//!
//! Every proxy under test runs as **two OS processes**: an *outbound* one that takes plaintext from the
//! "node" and speaks mutual TLS, and an *inbound* one that terminates mutual TLS and forwards plaintext
//! to the "storage port" (an in-process sink/echo backend). ringseal's pair is the real `ringseal run`
//! binary with generated TOML configs; the anchors get generated configs with the same certificates and
//! the same forced protocol and cipher suite. CPU time (utime + stime) and memory (VmRSS) are read from
//! `/proc` for every proxy process alike, so nobody is measured differently.
//!
//! * [`anchors`]: the pairs (config generation, processes, `/proc` accounting) and the test PKI files.
//! * [`workload`]: the load generator: the backend, bulk transfer, 1 KiB ping-pong, connection churn
//!   (one full mutual handshake per connection), TLS handshakes against the inbound side, `openssl
//!   s_time`, idle connections.
//! * [`report`]: medians, ratios, the table, JSON and CSV; [`plot`]: the SVG chart.
//!
//! Runs are interleaved (for each repetition: ringseal, haproxy, stunnel, nginx, then again), so that
//! whatever else the machine does is spread over every peer; medians are reported.

pub mod anchors;
pub mod plot;
pub mod report;
pub mod workload;

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rustls::crypto::SupportedKxGroup;

use crate::args::BenchArgs;
use anchors::{Certs, Pair};
use report::{Key, Results};
use workload::Backend;

/// A cipher suite the bench can force on every peer, with the names each one wants.
#[derive(Debug)]
pub struct Suite {
    /// IANA name: what ringseal's `tls.cipher_suites` and HAProxy's `ciphersuites` take for TLS 1.3.
    pub iana: &'static str,
    /// OpenSSL name (for TLS 1.3 the same as IANA).
    pub openssl: &'static str,
    /// A short label for the chart.
    pub short: &'static str,
    pub tls13: bool,
    /// The certificate a TLS 1.2 suite needs (`None`: TLS 1.3, any key type).
    pub key: Option<KeyKind>,
}

impl Suite {
    /// The key type its certificates have in this bench: TLS 1.3 suites use ECDSA P-256.
    pub fn key(&self) -> KeyKind {
        self.key.unwrap_or(KeyKind::EcdsaP256)
    }

    pub fn protocol(&self) -> &'static str {
        if self.tls13 { "TLSv1.3" } else { "TLSv1.2" }
    }
}

const fn suite(
    iana: &'static str,
    openssl: &'static str,
    short: &'static str,
    key: Option<KeyKind>,
) -> Suite {
    Suite {
        iana,
        openssl,
        short,
        tls13: key.is_none(),
        key,
    }
}

/// Every suite rustls implements (the ones `config/ringseal.toml` lists), in that order.
#[rustfmt::skip]
pub static SUITES: [Suite; 9] = [
    suite("TLS_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256", "1.3 AES-128-GCM", None),
    suite("TLS_AES_256_GCM_SHA384", "TLS_AES_256_GCM_SHA384", "1.3 AES-256-GCM", None),
    suite("TLS_CHACHA20_POLY1305_SHA256", "TLS_CHACHA20_POLY1305_SHA256", "1.3 CHACHA20", None),
    suite("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256", "1.2 ECDSA AES-128", Some(KeyKind::EcdsaP256)),
    suite("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "ECDHE-ECDSA-AES256-GCM-SHA384", "1.2 ECDSA AES-256", Some(KeyKind::EcdsaP256)),
    suite("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305", "1.2 ECDSA CHACHA20", Some(KeyKind::EcdsaP256)),
    suite("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "1.2 RSA AES-128", Some(KeyKind::Rsa2048)),
    suite("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "ECDHE-RSA-AES256-GCM-SHA384", "1.2 RSA AES-256", Some(KeyKind::Rsa2048)),
    suite("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", "ECDHE-RSA-CHACHA20-POLY1305", "1.2 RSA CHACHA20", Some(KeyKind::Rsa2048)),
];

/// The suite of the handshake, key-exchange, s_time and memory tests (and of the targets).
pub fn default_suite() -> &'static Suite {
    &SUITES[0]
}

/// A suite by IANA or OpenSSL name, case-insensitively.
pub fn find_suite(name: &str) -> Option<&'static Suite> {
    let name = name.trim();
    SUITES
        .iter()
        .find(|s| s.iana.eq_ignore_ascii_case(name) || s.openssl.eq_ignore_ascii_case(name))
}

/// `--key-types`: the key type of the CA and node certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum KeyKind {
    #[value(name = "ecdsa-p256")]
    EcdsaP256,
    Ed25519,
    #[value(name = "rsa-2048")]
    Rsa2048,
    #[value(name = "rsa-4096")]
    Rsa4096,
}

impl KeyKind {
    pub const ALL: [KeyKind; 4] = [Self::EcdsaP256, Self::Ed25519, Self::Rsa2048, Self::Rsa4096];

    pub fn name(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ecdsa-p256",
            Self::Ed25519 => "ed25519",
            Self::Rsa2048 => "rsa-2048",
            Self::Rsa4096 => "rsa-4096",
        }
    }

    pub fn pki(self) -> ringseal::pki::KeyType {
        use ringseal::pki::KeyType;
        match self {
            Self::EcdsaP256 => KeyType::EcdsaP256,
            Self::Ed25519 => KeyType::Ed25519,
            Self::Rsa2048 => KeyType::Rsa2048,
            Self::Rsa4096 => KeyType::Rsa4096,
        }
    }
}

/// `--groups`: a TLS 1.3 key exchange group, offered alone by the handshake driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Group {
    X25519,
    Secp256r1,
    #[value(name = "x25519mlkem768")]
    X25519Mlkem768,
}

impl Group {
    pub const ALL: [Group; 3] = [Self::X25519, Self::Secp256r1, Self::X25519Mlkem768];

    pub fn name(self) -> &'static str {
        match self {
            Self::X25519 => "X25519",
            Self::Secp256r1 => "secp256r1",
            Self::X25519Mlkem768 => "X25519MLKEM768",
        }
    }

    pub fn rustls(self) -> &'static dyn SupportedKxGroup {
        use rustls::crypto::aws_lc_rs::kx_group;
        match self {
            Self::X25519 => kx_group::X25519,
            Self::Secp256r1 => kx_group::SECP256R1,
            Self::X25519Mlkem768 => kx_group::X25519MLKEM768,
        }
    }
}

/// `--tests`: what to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Test {
    /// One connection streams `--bytes` through the pair: Gbit/s and proxy CPU-seconds per GB.
    Bulk,
    /// 1 KiB ping-pong through the pair: p50/p99 round trip minus the direct one.
    Latency,
    /// New connections through the pair, each a full mutual handshake between the two proxies.
    Handshake,
    /// TLS handshakes straight to the inbound proxy with one key exchange group offered.
    Kx,
    /// `openssl s_time -new` with a client certificate against the inbound proxy, twice: the client
    /// closing right after each handshake, and sending one request (`-www`) on each connection.
    #[value(name = "s_time")]
    STime,
    /// Memory of the pair at `--connections` idle established connections.
    Memory,
}

impl Test {
    pub const ALL: [Test; 6] = [
        Self::Bulk,
        Self::Latency,
        Self::Handshake,
        Self::Kx,
        Self::STime,
        Self::Memory,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Bulk => "bulk",
            Self::Latency => "latency",
            Self::Handshake => "handshake",
            Self::Kx => "kx",
            Self::STime => "s_time",
            Self::Memory => "memory",
        }
    }
}

/// What `openssl s_time` does on each connection after its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum STimeClient {
    /// `-new`: closes at once. A proxy may skip the storage-port connection for a client that is
    /// already gone (HAProxy does), so not every peer runs the whole path here.
    Closes,
    /// `-new -www /`: sends one request and reads the reply until the backend closes, so every
    /// proxy runs the whole path (verification, backend connect, relay, close) for every handshake.
    Request,
}

impl STimeClient {
    pub const ALL: [STimeClient; 2] = [Self::Closes, Self::Request];

    /// The JSON and CSV field.
    pub fn id(self) -> &'static str {
        match self {
            Self::Closes => "closes_at_once",
            Self::Request => "one_request",
        }
    }

    /// The row label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Closes => "closes at once",
            Self::Request => "one request (-www)",
        }
    }
}

/// Who is measured: ringseal, an anchor, or the direct loopback baseline (no proxy at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    Ringseal,
    Haproxy,
    Stunnel,
    Nginx,
    /// The load generator talking to the backend directly: the ceiling for throughput and the
    /// round trip that latency figures subtract.
    Direct,
}

impl Peer {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ringseal => "ringseal",
            Self::Haproxy => "haproxy",
            Self::Stunnel => "stunnel",
            Self::Nginx => "nginx",
            Self::Direct => "direct",
        }
    }
}

/// `--compare`: an anchor proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Anchor {
    Stunnel,
    Haproxy,
    Nginx,
}

impl From<Anchor> for Peer {
    fn from(a: Anchor) -> Self {
        match a {
            Anchor::Stunnel => Self::Stunnel,
            Anchor::Haproxy => Self::Haproxy,
            Anchor::Nginx => Self::Nginx,
        }
    }
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
    pub key_types: Vec<KeyKind>,
    pub groups: Vec<Group>,
    pub tests: Vec<Test>,
    pub bytes: u64,
    pub duration: Duration,
    pub connections: usize,
    pub repeat: usize,
    pub anchors: Vec<Anchor>,
    pub quick: bool,
    pub json: Option<Output>,
    pub csv: Option<Output>,
    pub plot: Option<PathBuf>,
}

impl Options {
    pub fn from_args(a: BenchArgs) -> anyhow::Result<Self> {
        let quick = a.quick;
        let suites = if a.suites.is_empty() {
            if quick {
                vec![&SUITES[0], &SUITES[3]]
            } else {
                SUITES.iter().collect()
            }
        } else {
            let mut v: Vec<&'static Suite> = Vec::new();
            for name in &a.suites {
                let s = find_suite(name).with_context(|| {
                    format!(
                        "--suites: unknown cipher suite {name:?}; one of: {}",
                        SUITES.iter().map(|s| s.iana).collect::<Vec<_>>().join(", ")
                    )
                })?;
                if !v.iter().any(|x| std::ptr::eq(*x, s)) {
                    v.push(s);
                }
            }
            v
        };
        let key_types = match (a.key_types.is_empty(), quick) {
            (false, _) => dedup(a.key_types),
            // RSA-4096 key generation alone takes seconds: not for CI-sized runs.
            (true, true) => vec![KeyKind::EcdsaP256, KeyKind::Ed25519],
            (true, false) => KeyKind::ALL.to_vec(),
        };
        let groups = if a.groups.is_empty() {
            Group::ALL.to_vec()
        } else {
            dedup(a.groups)
        };
        let tests = if a.tests.is_empty() {
            Test::ALL.to_vec()
        } else {
            dedup(a.tests)
        };
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
        let duration = a.duration.unwrap_or(if quick {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        });
        anyhow::ensure!(
            duration >= Duration::from_millis(100),
            "--duration must be at least 100ms"
        );
        let bytes = a.bytes.unwrap_or(if quick { 64 << 20 } else { 2 << 30 });
        anyhow::ensure!(bytes >= 1 << 20, "--bytes must be at least 1MiB");
        let anchors = dedup(a.compare);
        Ok(Self {
            suites,
            key_types,
            groups,
            tests,
            bytes,
            duration,
            connections,
            repeat,
            anchors,
            quick,
            json,
            csv,
            plot: a.plot,
        })
    }

    fn wants(&self, t: Test) -> bool {
        self.tests.contains(&t)
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

/// One measurement of one setup (a suite and key type with every peer's pair running).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Bulk,
    Latency,
    Handshake,
    Kx(Group),
    STime(STimeClient),
}

impl Step {
    fn test(self) -> Test {
        match self {
            Self::Bulk => Test::Bulk,
            Self::Latency => Test::Latency,
            Self::Handshake => Test::Handshake,
            Self::Kx(_) => Test::Kx,
            Self::STime(_) => Test::STime,
        }
    }

    fn group(self) -> Option<Group> {
        match self {
            Self::Kx(g) => Some(g),
            _ => None,
        }
    }

    fn client(self) -> Option<STimeClient> {
        match self {
            Self::STime(c) => Some(c),
            _ => None,
        }
    }

    /// Whether the direct baseline runs too (before the proxies, in every repetition).
    fn has_direct(self) -> bool {
        matches!(self, Self::Bulk | Self::Latency)
    }

    fn label(self, suite: &Suite, key: KeyKind) -> String {
        match self {
            Self::Bulk => format!("bulk {} ({})", suite.iana, key.name()),
            Self::Latency => format!("ping-pong {} ({})", suite.iana, key.name()),
            Self::Handshake => format!("handshakes through the pair ({})", key.name()),
            Self::Kx(g) => format!("handshakes to the inbound side ({})", g.name()),
            Self::STime(c) => format!("openssl s_time -new, {}", c.label()),
        }
    }
}

/// Pairs that share a suite and key type run together: started once, measured in turn.
struct Setup {
    suite: &'static Suite,
    key: KeyKind,
    steps: Vec<Step>,
}

fn plan(o: &Options) -> Vec<Setup> {
    let mut setups: Vec<Setup> = Vec::new();
    let mut add = |suite: &'static Suite, key: KeyKind, step: Step| match setups
        .iter_mut()
        .find(|s| std::ptr::eq(s.suite, suite) && s.key == key)
    {
        Some(s) => s.steps.push(step),
        None => setups.push(Setup {
            suite,
            key,
            steps: vec![step],
        }),
    };
    for s in &o.suites {
        if o.wants(Test::Bulk) {
            add(s, s.key(), Step::Bulk);
        }
        if o.wants(Test::Latency) {
            add(s, s.key(), Step::Latency);
        }
    }
    let d = default_suite();
    if o.wants(Test::Handshake) {
        for k in &o.key_types {
            add(d, *k, Step::Handshake);
        }
    }
    if o.wants(Test::Kx) {
        for g in &o.groups {
            add(d, KeyKind::EcdsaP256, Step::Kx(*g));
        }
    }
    if o.wants(Test::STime) {
        for c in STimeClient::ALL {
            add(d, KeyKind::EcdsaP256, Step::STime(c));
        }
    }
    setups
}

/// Runs `ringseal bench`: measures, then prints the table (or JSON/CSV) and writes the chart.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let opts = Options::from_args(args)?;
    let mut peers = vec![Peer::Ringseal];
    let mut versions = BTreeMap::new();
    versions.insert(
        Peer::Ringseal.name().to_owned(),
        format!("ringseal {}", env!("CARGO_PKG_VERSION")),
    );
    for a in &opts.anchors {
        let peer = Peer::from(*a);
        match anchors::locate(peer) {
            Ok(v) => {
                versions.insert(peer.name().to_owned(), v);
                peers.push(peer);
            }
            Err(why) => eprintln!("{}: {why}; continuing without it", peer.name()),
        }
    }
    let openssl = anchors::openssl_version();
    if let Some(v) = &openssl {
        versions.insert("openssl".to_owned(), v.clone());
    }
    let mut connections = anchors::raise_fd_limit(opts.connections);
    if connections < opts.connections {
        eprintln!(
            "the open-file limit ({}) allows {connections} idle connections (two descriptors each, in this \
             process and in every proxy), not {}: measuring memory at {connections} (raising the hard limit \
             needs CAP_SYS_RESOURCE)",
            anchors::fd_limit(),
            opts.connections
        );
    }
    if peers.contains(&Peer::Stunnel) && connections > anchors::stunnel_max_clients() {
        connections = anchors::stunnel_max_clients();
        eprintln!(
            "stunnel serves at most 125/256 of its open-file limit ({}): measuring memory at {connections} \
             connections for every peer",
            anchors::fd_limit()
        );
    }
    let mut results = Results::new(report::Meta::collect(&opts, connections, versions));
    if cfg!(debug_assertions) {
        eprintln!(
            "note: this is a debug build of ringseal; its figures are not representative (cargo run --release -- bench)"
        );
    }

    let dir = tempfile::Builder::new()
        .prefix("ringseal-bench-")
        .tempdir()
        .context("creating a temporary directory for configs and certificates")?;
    let backend = Backend::start().await.context("starting the backend")?;
    let setups = plan(&opts);
    let memory = opts.wants(Test::Memory);
    let total: usize = setups
        .iter()
        .flat_map(|s| s.steps.iter())
        .map(|st| opts.repeat * (peers.len() + usize::from(st.has_direct())))
        .sum::<usize>()
        + if memory { opts.repeat * peers.len() } else { 0 };
    let mut progress = Progress::new(total);

    let mut certs: BTreeMap<KeyKind, Arc<Certs>> = BTreeMap::new();
    let ctx = Ctx {
        opts: &opts,
        backend: &backend,
        connections,
        s_time: openssl.is_some(),
    };
    for setup in &setups {
        let c = certs_for(&mut certs, setup.key, dir.path(), &mut progress)?;
        run_setup(&ctx, setup, &c, &peers, &mut results, &mut progress).await;
    }
    if memory {
        let c = certs_for(&mut certs, KeyKind::EcdsaP256, dir.path(), &mut progress)?;
        run_memory(&ctx, &c, &peers, &mut results, &mut progress).await;
    }
    progress.finish();
    drop(backend);

    let table_to_stdout = opts.json != Some(Output::Stdout) && opts.csv != Some(Output::Stdout);
    for (out, text) in [
        (
            &opts.json,
            opts.json.as_ref().map(|_| report::json(&results)),
        ),
        (&opts.csv, opts.csv.as_ref().map(|_| report::csv(&results))),
    ] {
        match (out, text) {
            (Some(Output::Stdout), Some(t)) => print!("{t}"),
            (Some(Output::File(p)), Some(t)) => {
                std::fs::write(p, t).with_context(|| format!("writing {}", p.display()))?
            }
            _ => {}
        }
    }
    if let Some(p) = &opts.plot {
        std::fs::write(p, plot::svg(&results))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if table_to_stdout {
        print!("{}", report::table(&results));
    }
    Ok(())
}

/// What every measurement needs.
struct Ctx<'a> {
    opts: &'a Options,
    backend: &'a Backend,
    /// `--connections`, possibly lowered to what the open-file limit allows.
    connections: usize,
    /// `openssl` is installed.
    s_time: bool,
}

fn certs_for(
    map: &mut BTreeMap<KeyKind, Arc<Certs>>,
    key: KeyKind,
    dir: &std::path::Path,
    progress: &mut Progress,
) -> anyhow::Result<Arc<Certs>> {
    if let Some(c) = map.get(&key) {
        return Ok(c.clone());
    }
    progress.status(&format!(
        "generating {} certificates (CA, node)",
        key.name()
    ));
    let c = Arc::new(Certs::write(&dir.join(key.name()), key)?);
    map.insert(key, c.clone());
    Ok(c)
}

/// Starts every peer's pair for one suite and key type, then runs the steps interleaved.
async fn run_setup(
    ctx: &Ctx<'_>,
    setup: &Setup,
    certs: &Arc<Certs>,
    peers: &[Peer],
    results: &mut Results,
    progress: &mut Progress,
) {
    // Rows in the order the table shows them (the direct baseline, measured first, has fewer).
    for &step in &setup.steps {
        for metric in metrics_of(step.test(), Peer::Ringseal) {
            results.ensure(key(setup, step, metric));
        }
    }
    let mut pairs: Vec<(Peer, Option<Pair>)> = Vec::new();
    for &peer in peers {
        progress.status(&format!(
            "starting the {} pair ({}, {})",
            peer.name(),
            setup.suite.iana,
            setup.key.name()
        ));
        let spec = anchors::PairSpec {
            suite: setup.suite,
            certs: certs.clone(),
            backend: ctx.backend.addr,
            max_connections: ctx.connections + 64,
        };
        match Pair::start(peer, &spec) {
            Ok(p) => pairs.push((peer, Some(p))),
            Err(e) => {
                let msg = format!("did not start: {e:#}");
                progress.println(&format!(
                    "{} ({} {}): {}",
                    peer.name(),
                    setup.suite.iana,
                    setup.key.name(),
                    report::clip(&msg)
                ));
                for step in &setup.steps {
                    for metric in metrics_of(step.test(), peer) {
                        results.note(key(setup, *step, metric), peer, &msg);
                    }
                }
                pairs.push((peer, None));
            }
        }
    }
    for rep in 0..ctx.opts.repeat {
        for &step in &setup.steps {
            if step.has_direct() {
                progress.step(&format!(
                    "{}: direct (run {}/{})",
                    step.label(setup.suite, setup.key),
                    rep + 1,
                    ctx.opts.repeat
                ));
                match measure(ctx, setup, step, Peer::Direct, None, certs).await {
                    Ok(m) => {
                        for (metric, v) in m {
                            results.add(key(setup, step, metric), Peer::Direct, v);
                        }
                    }
                    Err(e) => {
                        for metric in metrics_of(step.test(), Peer::Direct) {
                            results.note(key(setup, step, metric), Peer::Direct, &format!("{e:#}"));
                        }
                    }
                }
            }
            for (peer, pair) in &mut pairs {
                let Some(p) = pair else { continue };
                progress.step(&format!(
                    "{}: {} (run {}/{})",
                    step.label(setup.suite, setup.key),
                    peer.name(),
                    rep + 1,
                    ctx.opts.repeat
                ));
                if matches!(step, Step::STime(_)) && !ctx.s_time {
                    results.note(
                        key(setup, step, Metric::HandshakesPerSec),
                        *peer,
                        "openssl is not installed",
                    );
                    continue;
                }
                match measure(ctx, setup, step, *peer, Some(p), certs).await {
                    Ok(m) => {
                        for (metric, v) in m {
                            results.add(key(setup, step, metric), *peer, v);
                        }
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        // Once per peer and step: the same refusal in every run says nothing new.
                        progress.println_once(&format!(
                            "{} {}: {}",
                            peer.name(),
                            step.label(setup.suite, setup.key),
                            report::clip(first_line(&format!("{e:#}")))
                        ));
                        for metric in metrics_of(step.test(), *peer) {
                            results.note(key(setup, step, metric), *peer, &msg);
                        }
                    }
                }
                if let Err(e) = p.check_alive() {
                    progress.println(&format!(
                        "{}: {}",
                        peer.name(),
                        report::clip(&format!("{e:#}"))
                    ));
                    // Whatever was not measured yet says why.
                    for step in &setup.steps {
                        for metric in metrics_of(step.test(), *peer) {
                            results.note(key(setup, *step, metric), *peer, &format!("{e:#}"));
                        }
                    }
                    *pair = None;
                }
            }
        }
    }
    if setup.steps.contains(&Step::Latency) {
        derive_added_latency(results, setup);
    }
    progress.status("stopping the pairs");
    drop(pairs);
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

fn key(setup: &Setup, step: Step, metric: Metric) -> Key {
    Key {
        test: step.test(),
        suite: setup.suite,
        key_type: setup.key,
        group: step.group(),
        client: step.client(),
        metric,
    }
}

/// Added latency: a peer's median round trip minus the direct baseline's median (both over the
/// interleaved runs of the same setup). Medians on both sides keep one disturbed run from turning
/// the difference negative.
fn derive_added_latency(results: &mut Results, setup: &Setup) {
    for (rtt, added) in [
        (Metric::RttP50Us, Metric::AddedP50Us),
        (Metric::RttP99Us, Metric::AddedP99Us),
    ] {
        let base = key(setup, Step::Latency, rtt);
        let Some(row) = results.rows.iter().find(|r| r.key == base).cloned() else {
            continue;
        };
        let direct = row.cells.get(&Peer::Direct).and_then(report::Cell::median);
        for (peer, cell) in &row.cells {
            if *peer == Peer::Direct {
                continue;
            }
            let target = key(setup, Step::Latency, added);
            match (cell.median(), direct) {
                (Some(v), Some(d)) => results.add(target, *peer, v - d),
                (Some(_), None) => results.note(target, *peer, "the direct baseline failed"),
                (None, _) => results.note(
                    target,
                    *peer,
                    cell.note.as_deref().unwrap_or("no round trips measured"),
                ),
            }
        }
    }
}

/// The metrics a test yields for a peer (for failure notes and the report's row order).
pub fn metrics_of(test: Test, peer: Peer) -> Vec<Metric> {
    use Metric::*;
    match (test, peer) {
        (Test::Bulk, Peer::Direct) => vec![GbitPerSec],
        (Test::Bulk, _) => vec![GbitPerSec, CpuSecPerGb],
        (Test::Latency, Peer::Direct) => vec![RttP50Us, RttP99Us],
        (Test::Latency, _) => vec![AddedP50Us, AddedP99Us, RttP50Us, RttP99Us],
        (Test::Handshake, _) => vec![HandshakesPerSec, OutCpuMsPerHandshake, InCpuMsPerHandshake],
        (Test::Kx | Test::STime, _) => vec![HandshakesPerSec, ServerCpuMsPerHandshake],
        (Test::Memory, _) => vec![MemKibPerConnPair, MemKibPerConnOut, MemKibPerConnIn],
    }
}

/// Everything the bench reports, with its unit and which direction is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    GbitPerSec,
    CpuSecPerGb,
    AddedP50Us,
    AddedP99Us,
    RttP50Us,
    RttP99Us,
    HandshakesPerSec,
    OutCpuMsPerHandshake,
    InCpuMsPerHandshake,
    ServerCpuMsPerHandshake,
    MemKibPerConnPair,
    MemKibPerConnOut,
    MemKibPerConnIn,
}

impl Metric {
    /// Machine name (JSON, CSV).
    pub fn id(self) -> &'static str {
        match self {
            Self::GbitPerSec => "gbit_per_s",
            Self::CpuSecPerGb => "proxy_cpu_s_per_gb",
            Self::AddedP50Us => "added_latency_p50_us",
            Self::AddedP99Us => "added_latency_p99_us",
            Self::RttP50Us => "rtt_p50_us",
            Self::RttP99Us => "rtt_p99_us",
            Self::HandshakesPerSec => "handshakes_per_s",
            Self::OutCpuMsPerHandshake => "outbound_cpu_ms_per_handshake",
            Self::InCpuMsPerHandshake => "inbound_cpu_ms_per_handshake",
            Self::ServerCpuMsPerHandshake => "server_cpu_ms_per_handshake",
            Self::MemKibPerConnPair => "pair_kib_per_idle_connection",
            Self::MemKibPerConnOut => "outbound_kib_per_idle_connection",
            Self::MemKibPerConnIn => "inbound_kib_per_idle_connection",
        }
    }

    /// Human label (table).
    pub fn label(self) -> &'static str {
        match self {
            Self::GbitPerSec => "Gbit/s",
            Self::CpuSecPerGb => "proxy CPU-s/GB",
            Self::AddedP50Us => "added p50 µs",
            Self::AddedP99Us => "added p99 µs",
            Self::RttP50Us => "RTT p50 µs",
            Self::RttP99Us => "RTT p99 µs",
            Self::HandshakesPerSec => "handshakes/s",
            Self::OutCpuMsPerHandshake => "outbound CPU ms/hs",
            Self::InCpuMsPerHandshake => "inbound CPU ms/hs",
            Self::ServerCpuMsPerHandshake => "server CPU ms/hs",
            Self::MemKibPerConnPair => "pair KiB/conn",
            Self::MemKibPerConnOut => "outbound KiB/conn",
            Self::MemKibPerConnIn => "inbound KiB/conn",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Self::GbitPerSec => "Gbit/s",
            Self::CpuSecPerGb => "CPU-s/GB",
            Self::AddedP50Us | Self::AddedP99Us | Self::RttP50Us | Self::RttP99Us => "us",
            Self::HandshakesPerSec => "1/s",
            Self::OutCpuMsPerHandshake
            | Self::InCpuMsPerHandshake
            | Self::ServerCpuMsPerHandshake => "CPU-ms",
            Self::MemKibPerConnPair | Self::MemKibPerConnOut | Self::MemKibPerConnIn => "KiB",
        }
    }

    pub fn higher_is_better(self) -> bool {
        matches!(self, Self::GbitPerSec | Self::HandshakesPerSec)
    }

    /// Decimals in the table.
    pub fn decimals(self) -> usize {
        match self {
            Self::GbitPerSec | Self::CpuSecPerGb => 2,
            Self::OutCpuMsPerHandshake
            | Self::InCpuMsPerHandshake
            | Self::ServerCpuMsPerHandshake => 3,
            Self::HandshakesPerSec => 0,
            _ => 1,
        }
    }
}

/// Runs one step for one peer (`pair` is `None` for the direct baseline).
async fn measure(
    ctx: &Ctx<'_>,
    setup: &Setup,
    step: Step,
    peer: Peer,
    pair: Option<&Pair>,
    certs: &Certs,
) -> anyhow::Result<Vec<(Metric, f64)>> {
    let entry = pair.map_or(ctx.backend.addr, |p| p.entry);
    let before = pair.map(Pair::cpu);
    let cpu_since = |p: &Pair, b: anchors::Cpu| {
        let now = p.cpu();
        (now.outbound - b.outbound, now.inbound - b.inbound)
    };
    let d = ctx.opts.duration;
    match step {
        Step::Bulk => {
            let bytes = ctx.opts.bytes;
            let elapsed = workload::bulk(entry, bytes).await?;
            let gb = bytes as f64 / 1e9;
            let mut m = vec![(Metric::GbitPerSec, gb * 8.0 / elapsed.as_secs_f64())];
            if let (Some(p), Some(b)) = (pair, before) {
                let (o, i) = cpu_since(p, b);
                m.push((Metric::CpuSecPerGb, (o + i) / gb));
            }
            Ok(m)
        }
        Step::Latency => {
            let rtts = workload::pingpong(entry, d).await?;
            Ok(vec![
                (Metric::RttP50Us, workload::percentile(&rtts, 0.50)),
                (Metric::RttP99Us, workload::percentile(&rtts, 0.99)),
            ])
        }
        Step::Handshake => {
            let p = pair.context("handshakes need a pair")?;
            let b = before.context("cpu")?;
            let started = Instant::now();
            let n = workload::churn(entry, d, workload::HANDSHAKE_WORKERS).await?;
            let secs = started.elapsed().as_secs_f64();
            let (o, i) = cpu_since(p, b);
            Ok(vec![
                (Metric::HandshakesPerSec, n as f64 / secs),
                (Metric::OutCpuMsPerHandshake, o * 1e3 / n as f64),
                (Metric::InCpuMsPerHandshake, i * 1e3 / n as f64),
            ])
        }
        Step::Kx(group) => {
            let p = pair.context("handshakes need a pair")?;
            let b = before.context("cpu")?;
            let client = workload::tls_client(certs, setup.suite, group)?;
            let started = Instant::now();
            let n = workload::tls_churn(p.tls, client, d, workload::HANDSHAKE_WORKERS)
                .await
                .map_err(|e| match (peer, group) {
                    (Peer::Ringseal, _) | (_, Group::X25519 | Group::Secp256r1) => e,
                    _ => e.context(
                        "unsupported: OpenSSL before 3.5 has no ML-KEM, so no X25519MLKEM768",
                    ),
                })?;
            let secs = started.elapsed().as_secs_f64();
            let (_, i) = cpu_since(p, b);
            Ok(vec![
                (Metric::HandshakesPerSec, n as f64 / secs),
                (Metric::ServerCpuMsPerHandshake, i * 1e3 / n as f64),
            ])
        }
        Step::STime(client) => {
            let p = pair.context("s_time needs a pair")?;
            let b = before.context("cpu")?;
            let answered = ctx.backend.requests();
            let started = Instant::now();
            let n = workload::s_time(p.tls, certs, setup.suite, d, client).await?;
            let secs = started.elapsed().as_secs_f64();
            let (_, i) = cpu_since(p, b);
            // Every connection s_time counted must have been answered by the storage port: a proxy
            // that dropped requests would otherwise look cheap.
            let answered = ctx.backend.requests() - answered;
            anyhow::ensure!(
                client == STimeClient::Closes || answered >= n,
                "openssl s_time -www made {n} connections but only {answered} requests reached the backend"
            );
            Ok(vec![
                (Metric::HandshakesPerSec, n as f64 / secs),
                (Metric::ServerCpuMsPerHandshake, i * 1e3 / n as f64),
            ])
        }
    }
}

/// Memory per idle connection: a fresh pair per peer and run (so no earlier test's freed buffers
/// are reused), a warm-up, then RSS before and after opening the connections.
async fn run_memory(
    ctx: &Ctx<'_>,
    certs: &Arc<Certs>,
    peers: &[Peer],
    results: &mut Results,
    progress: &mut Progress,
) {
    let suite = default_suite();
    let n = ctx.connections;
    for rep in 0..ctx.opts.repeat {
        for &peer in peers {
            progress.step(&format!(
                "memory at {n} idle connections: {} (run {}/{})",
                peer.name(),
                rep + 1,
                ctx.opts.repeat
            ));
            let key = |metric| Key {
                test: Test::Memory,
                suite,
                key_type: KeyKind::EcdsaP256,
                group: None,
                client: None,
                metric,
            };
            let spec = anchors::PairSpec {
                suite,
                certs: certs.clone(),
                backend: ctx.backend.addr,
                max_connections: n + 64,
            };
            let r = async {
                let pair = Pair::start(peer, &spec)?;
                workload::idle_memory(&pair, ctx.backend, n).await
            }
            .await;
            match r {
                Ok(m) => {
                    results.add(key(Metric::MemKibPerConnPair), peer, m.outbound + m.inbound);
                    results.add(key(Metric::MemKibPerConnOut), peer, m.outbound);
                    results.add(key(Metric::MemKibPerConnIn), peer, m.inbound);
                }
                Err(e) => {
                    progress.println(&format!(
                        "{} memory: {}",
                        peer.name(),
                        report::clip(first_line(&format!("{e:#}")))
                    ));
                    for metric in metrics_of(Test::Memory, peer) {
                        results.note(key(metric), peer, &format!("{e:#}"));
                    }
                }
            }
            // Connections closed by the pair leave the backend asynchronously; start clean.
            ctx.backend.wait_idle(Duration::from_secs(10)).await;
        }
    }
}

/// A progress line on stderr: rewritten in place on a terminal, one line per step otherwise (CI logs).
struct Progress {
    total: usize,
    done: usize,
    started: Instant,
    tty: bool,
    /// Whether the terminal line currently shows something that must be cleared first.
    dirty: bool,
    printed: Vec<String>,
}

impl Progress {
    fn new(total: usize) -> Self {
        Self {
            total,
            done: 0,
            started: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            dirty: false,
            printed: Vec::new(),
        }
    }

    /// A measurement starts.
    fn step(&mut self, what: &str) {
        self.done += 1;
        let elapsed = self.started.elapsed().as_secs();
        let eta = if self.done > 1 {
            let per = self.started.elapsed().as_secs_f64() / (self.done - 1) as f64;
            format!(
                ", about {}s left",
                (per * (self.total + 1 - self.done) as f64).round()
            )
        } else {
            String::new()
        };
        let line = format!(
            "[{:>3}/{}] {:>3}% {elapsed}s{eta}  {what}",
            self.done,
            self.total,
            100 * (self.done - 1) / self.total.max(1)
        );
        self.show(&line);
    }

    /// Something between measurements (starting pairs, generating keys).
    fn status(&mut self, what: &str) {
        if self.tty {
            let line = format!(
                "[{:>3}/{}] {}s  {what}",
                self.done,
                self.total,
                self.started.elapsed().as_secs()
            );
            self.show(&line);
        }
    }

    fn show(&mut self, line: &str) {
        if self.tty {
            let width = 119;
            let cut: String = line.chars().take(width).collect();
            eprint!("\r\x1b[2K{cut}");
            self.dirty = true;
        } else {
            eprintln!("{line}");
        }
    }

    /// [`Progress::println`], unless the same message was printed before.
    fn println_once(&mut self, msg: &str) {
        if !self.printed.iter().any(|m| m == msg) {
            self.printed.push(msg.to_owned());
            self.println(msg);
        }
    }

    /// A message that must stay (a failure).
    fn println(&mut self, msg: &str) {
        if self.dirty {
            eprint!("\r\x1b[2K");
            self.dirty = false;
        }
        eprintln!("{msg}");
    }

    fn finish(&mut self) {
        if self.dirty {
            eprint!("\r\x1b[2K");
            self.dirty = false;
        }
        eprintln!(
            "measured {} runs in {:.1}s",
            self.done,
            self.started.elapsed().as_secs_f64()
        );
    }
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
    }

    #[test]
    fn suites_by_either_name() {
        assert_eq!(
            find_suite("ecdhe-rsa-aes128-gcm-sha256").unwrap().iana,
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
        );
        assert!(find_suite("TLS_AES_128_GCM_SHA256").unwrap().tls13);
        assert!(find_suite("TLS_RSA_WITH_AES_128_CBC_SHA").is_none());
        // Every suite ringseal's config accepts is in the table, and TLS 1.2 suites say their key.
        let provider = ringseal::tls::provider();
        for s in &provider.cipher_suites {
            let name = ringseal::tls::suites::iana_name(*s);
            let ours = find_suite(name).unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(ours.tls13, ours.key.is_none());
        }
    }

    #[test]
    fn plan_groups_steps_by_suite_and_key() {
        let args = <crate::args::Cli as clap::Parser>::parse_from(["ringseal", "bench", "--quick"]);
        let crate::args::Command::Bench(a) = args.command else {
            panic!("not bench")
        };
        let o = Options::from_args(a).unwrap();
        let setups = plan(&o);
        let main = &setups[0];
        assert!(std::ptr::eq(main.suite, default_suite()));
        assert_eq!(main.key, KeyKind::EcdsaP256);
        assert!(main.steps.contains(&Step::Bulk) && main.steps.contains(&Step::Handshake));
        assert!(main.steps.contains(&Step::Kx(Group::X25519Mlkem768)));
        assert!(setups.iter().any(|s| s.key == KeyKind::Ed25519));
    }
}
