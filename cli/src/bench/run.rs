//! The run: find the peers, start each setup's pairs once, and measure every step interleaved
//! across peers (for each repetition: the direct baseline, ringseal, then each anchor), so that
//! whatever else the machine does is spread over every peer. A peer that fails is noted in its
//! cells and the run goes on.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use super::anchors::{self, Certs, Pair, PairSpec};
use super::catalog::{KeyType, Metric, Peer, Suite, Test, default_suite, metrics_of};
use super::measure::{Bench, derive_added_latency, measure};
use super::options::Options;
use super::plan::{Setup, Step, count_runs, plan};
use super::progress::Progress;
use super::report::{self, Key, Results, first_line};
use super::workload::{self, Backend};

/// Who is measured and under which limits, found before the first measurement.
pub struct Lineup {
    /// ringseal, then each `--compare` anchor that is installed.
    pub peers: Vec<Peer>,
    /// Version lines for the report, by peer name (and `openssl`).
    pub versions: BTreeMap<String, String>,
    /// `openssl` is installed (the `s_time` test needs it).
    pub openssl: bool,
    /// `--connections`, lowered to what the open-file limit (and stunnel) allows.
    pub connections: usize,
}

impl Lineup {
    /// Locates the anchors and raises the open-file limit; says on stderr what is skipped or lowered.
    pub fn find(opts: &Options) -> Self {
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
        let connections = idle_connections(opts, &peers);
        Self {
            peers,
            versions,
            openssl: openssl.is_some(),
            connections,
        }
    }
}

/// How many idle connections the memory test can hold open with every peer running (said on
/// stderr only when the memory test runs). The limit is raised for the small-message test's
/// connections as well.
fn idle_connections(opts: &Options, peers: &[Peer]) -> usize {
    let asked = opts.connections;
    let fits = anchors::raise_fd_limit(asked.max(opts.messages.connections()));
    let mut connections = asked.min(fits);
    let memory = opts.wants(Test::Memory);
    if connections < asked && memory {
        eprintln!(
            "the open-file limit ({}) allows {connections} idle connections (two descriptors each, in this \
             process and in every proxy), not {asked}: measuring memory at {connections} (raising the hard limit \
             needs CAP_SYS_RESOURCE)",
            anchors::fd_limit(),
        );
    }
    if peers.contains(&Peer::Stunnel) && connections > anchors::stunnel_max_clients() {
        connections = anchors::stunnel_max_clients();
        if memory {
            eprintln!(
                "stunnel serves at most 125/256 of its open-file limit ({}): measuring memory at {connections} \
             connections for every peer",
                anchors::fd_limit()
            );
        }
    }
    connections
}

/// Measures everything the options ask for with the lineup's peers, into `results`.
pub async fn measure_all(
    opts: &Options,
    lineup: &Lineup,
    results: &mut Results,
) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("ringseal-bench-")
        .tempdir()
        .context("creating a temporary directory for configs and certificates")?;
    let backend = Backend::start().await.context("starting the backend")?;
    let setups = plan(opts);
    let mut runner = Runner {
        bench: Bench {
            opts,
            backend: &backend,
            connections: lineup.connections,
            s_time: lineup.openssl,
        },
        peers: &lineup.peers,
        dir: dir.path(),
        certs: BTreeMap::new(),
        results,
        progress: Progress::new(count_runs(&setups, opts, lineup.peers.len())),
    };
    for setup in &setups {
        let certs = runner.certs(setup.key_type)?;
        runner.run_setup(setup, &certs).await;
    }
    if opts.wants(Test::Memory) {
        let certs = runner.certs(KeyType::EcdsaP256)?;
        runner.run_memory(&certs).await;
    }
    runner.progress.finish();
    Ok(())
}

/// A run under way: what the measurements need, and where their results and progress go.
struct Runner<'a> {
    bench: Bench<'a>,
    peers: &'a [Peer],
    /// Where certificates and the pairs' configs are written.
    dir: &'a Path,
    /// Certificates by key type, generated on first use (RSA keys take a while).
    certs: BTreeMap<KeyType, Arc<Certs>>,
    results: &'a mut Results,
    progress: Progress,
}

/// A peer's pair for one setup; `None` once it failed to start or died.
type PeerPair = (Peer, Option<Pair>);

impl Runner<'_> {
    fn certs(&mut self, key: KeyType) -> anyhow::Result<Arc<Certs>> {
        if let Some(c) = self.certs.get(&key) {
            return Ok(c.clone());
        }
        self.progress.status(&format!(
            "generating {} certificates (CA, node)",
            key.name()
        ));
        let c = Arc::new(Certs::write(&self.dir.join(key.name()), key)?);
        self.certs.insert(key, c.clone());
        Ok(c)
    }

    fn pair_spec(&self, suite: &'static Suite, certs: &Arc<Certs>) -> PairSpec {
        PairSpec {
            suite,
            certs: certs.clone(),
            backend: self.bench.backend.addr,
            max_connections: self
                .bench
                .connections
                .max(self.bench.opts.messages.connections())
                + 64,
            loopback_congestion_control: self.bench.opts.loopback_congestion_control.clone(),
            glibc_tunables: self.bench.opts.glibc_tunables.clone(),
        }
    }

    /// Starts every peer's pair for one suite and key type, then runs the steps interleaved.
    async fn run_setup(&mut self, setup: &Setup, certs: &Arc<Certs>) {
        // Rows in the order the table shows them (the direct baseline, measured first, has fewer).
        for &step in &setup.steps {
            for metric in metrics_of(step.test(), Peer::Ringseal) {
                self.results.ensure(setup.row_key(step, metric));
            }
        }
        let mut pairs = self.start_pairs(setup, certs);
        let repeat = self.bench.opts.repeat;
        for rep in 1..=repeat {
            for &step in &setup.steps {
                let run = format!("(run {rep}/{repeat})");
                if step.has_direct() {
                    self.measure_direct(setup, step, &run, certs).await;
                }
                for pair in &mut pairs {
                    self.measure_peer(setup, step, &run, pair, certs).await;
                }
            }
        }
        if setup.steps.contains(&Step::Latency) {
            derive_added_latency(self.results, setup);
        }
        self.progress.status("stopping the pairs");
        drop(pairs);
    }

    /// Every peer's pair; one that does not start is noted in every row of the setup.
    fn start_pairs(&mut self, setup: &Setup, certs: &Arc<Certs>) -> Vec<PeerPair> {
        let mut pairs = Vec::new();
        for &peer in self.peers {
            self.progress.status(&format!(
                "starting the {} pair ({}, {})",
                peer.name(),
                setup.suite.iana,
                setup.key_type.name()
            ));
            match Pair::start(peer, &self.pair_spec(setup.suite, certs)) {
                Ok(p) => pairs.push((peer, Some(p))),
                Err(e) => {
                    let msg = format!("did not start: {e:#}");
                    self.progress.println(&format!(
                        "{} ({} {}): {}",
                        peer.name(),
                        setup.suite.iana,
                        setup.key_type.name(),
                        report::clip(&msg)
                    ));
                    self.note_every_step(setup, peer, &msg);
                    pairs.push((peer, None));
                }
            }
        }
        pairs
    }

    /// The load generator against the backend itself, before the peers of the same repetition.
    async fn measure_direct(&mut self, setup: &Setup, step: Step, run: &str, certs: &Certs) {
        let label = step.label(setup.suite, setup.key_type);
        self.progress.step(&format!("{label}: direct {run}"));
        let peer = Peer::Direct;
        match measure(&self.bench, setup, step, peer, None, certs).await {
            Ok(m) => self.add(setup, step, peer, m),
            Err(e) => {
                for metric in metrics_of(step.test(), peer) {
                    let key = setup.row_key(step, metric);
                    self.results.note(key, peer, &format!("{e:#}"));
                }
            }
        }
    }

    /// One step against one peer's pair; a pair that died on it is dropped for the rest of the setup.
    async fn measure_peer(
        &mut self,
        setup: &Setup,
        step: Step,
        run: &str,
        (peer, pair): &mut PeerPair,
        certs: &Certs,
    ) {
        let peer = *peer;
        let Some(p) = pair else { return };
        let label = step.label(setup.suite, setup.key_type);
        self.progress
            .step(&format!("{label}: {} {run}", peer.name()));
        if matches!(step, Step::STime(_)) && !self.bench.s_time {
            let key = setup.row_key(step, Metric::HandshakesPerSec);
            self.results.note(key, peer, "openssl is not installed");
            return;
        }
        match measure(&self.bench, setup, step, peer, Some(&*p), certs).await {
            Ok(m) => self.add(setup, step, peer, m),
            Err(e) => {
                // Once per peer and step: the same refusal in every run says nothing new.
                self.progress.println_once(&format!(
                    "{} {label}: {}",
                    peer.name(),
                    report::clip(first_line(&format!("{e:#}")))
                ));
                for metric in metrics_of(step.test(), peer) {
                    let key = setup.row_key(step, metric);
                    self.results.note(key, peer, &e.to_string());
                }
            }
        }
        if let Err(e) = p.check_alive() {
            let msg = format!("{e:#}");
            let line = format!("{}: {}", peer.name(), report::clip(&msg));
            self.progress.println(&line);
            // Whatever was not measured yet says why.
            self.note_every_step(setup, peer, &msg);
            *pair = None;
        }
    }

    fn add(&mut self, setup: &Setup, step: Step, peer: Peer, measured: Vec<(Metric, f64)>) {
        for (metric, v) in measured {
            self.results.add(setup.row_key(step, metric), peer, v);
        }
    }

    /// `msg` in every cell of `peer` in this setup that has no note yet.
    fn note_every_step(&mut self, setup: &Setup, peer: Peer, msg: &str) {
        for &step in &setup.steps {
            for metric in metrics_of(step.test(), peer) {
                self.results.note(setup.row_key(step, metric), peer, msg);
            }
        }
    }

    /// Memory per idle connection: a fresh pair per peer and run (so no earlier test's freed buffers
    /// are reused), a warm-up, then RSS before and after opening the connections.
    async fn run_memory(&mut self, certs: &Arc<Certs>) {
        let n = self.bench.connections;
        let repeat = self.bench.opts.repeat;
        for rep in 1..=repeat {
            for &peer in self.peers {
                self.progress.step(&format!(
                    "memory at {n} idle connections: {} (run {rep}/{repeat})",
                    peer.name(),
                ));
                self.measure_memory(peer, certs).await;
                // Connections closed by the pair leave the backend asynchronously; start clean.
                self.bench.backend.wait_idle(Duration::from_secs(10)).await;
            }
        }
    }

    async fn measure_memory(&mut self, peer: Peer, certs: &Arc<Certs>) {
        let key = |metric| Key {
            test: Test::Memory,
            suite: default_suite(),
            key_type: KeyType::EcdsaP256,
            group: None,
            client: None,
            metric,
        };
        let spec = self.pair_spec(default_suite(), certs);
        let measured = async {
            let pair = Pair::start(peer, &spec)?;
            workload::idle_memory(&pair, self.bench.backend, self.bench.connections).await
        }
        .await;
        match measured {
            Ok(m) => {
                let pair = m.outbound + m.inbound;
                self.results.add(key(Metric::MemKibPerConnPair), peer, pair);
                self.results
                    .add(key(Metric::MemKibPerConnOut), peer, m.outbound);
                self.results
                    .add(key(Metric::MemKibPerConnIn), peer, m.inbound);
            }
            Err(e) => {
                self.progress.println(&format!(
                    "{} memory: {}",
                    peer.name(),
                    report::clip(first_line(&format!("{e:#}")))
                ));
                for metric in metrics_of(Test::Memory, peer) {
                    self.results.note(key(metric), peer, &format!("{e:#}"));
                }
            }
        }
    }
}
