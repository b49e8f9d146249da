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
//! In the order a run goes through them:
//! * [`options`]: the command line and the options it resolves to; [`catalog`]: the names of suites,
//!   key types, groups, tests, peers and metrics.
//! * [`plan`]: which steps run, grouped by suite and key type so each pair starts once.
//! * [`run`]: finds the peers, starts the pairs and measures the plan interleaved (for each
//!   repetition: ringseal, haproxy, stunnel, nginx, then again), so that whatever else the machine
//!   does is spread over every peer; [`measure`]: one step against one pair; [`progress`]: stderr.
//! * [`anchors`]: the pairs (config generation, processes, `/proc` accounting) and the test PKI files.
//! * [`workload`]: the load generator: the backend, bulk transfer, 1 KiB ping-pong, connection churn
//!   (one full mutual handshake per connection), TLS handshakes against the inbound side, `openssl
//!   s_time`, idle connections; [`messages`]: the small-message workload (many connections, a few
//!   messages in flight on each, every echo checked).
//! * [`report`]: medians, ratios, the table, JSON and CSV; [`plot`]: the SVG chart.

pub mod anchors;
pub mod catalog;
pub mod measure;
pub mod messages;
pub mod options;
pub mod plan;
pub mod plot;
pub mod progress;
pub mod report;
pub mod run;
pub mod workload;

use anyhow::Context as _;

// anchors.rs and workload.rs name these as `super::...`.
pub use catalog::{Group, KeyType, Peer, STimeClient, Suite};
pub use options::BenchArgs;
use options::{Options, Output};
use report::{Meta, Results};
use run::Lineup;

/// Runs `ringseal bench`: measures, then prints the table (or JSON/CSV) and writes the chart.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let opts = Options::from_args(args)?;
    let lineup = Lineup::find(&opts);
    let meta = Meta::collect(&opts, lineup.connections, lineup.versions.clone());
    let mut results = Results::new(meta);
    if cfg!(debug_assertions) {
        eprintln!(
            "note: this is a debug build of ringseal; its figures are not representative (cargo run --release -- bench)"
        );
    }
    run::measure_all(&opts, &lineup, &mut results).await?;
    write_outputs(&opts, &results)
}

/// `--json`, `--csv` and `--plot` where they were asked to go, and the table unless stdout is taken.
fn write_outputs(opts: &Options, results: &Results) -> anyhow::Result<()> {
    let table_to_stdout = opts.json != Some(Output::Stdout) && opts.csv != Some(Output::Stdout);
    for (out, text) in [
        (
            &opts.json,
            opts.json.as_ref().map(|_| report::json(results)),
        ),
        (&opts.csv, opts.csv.as_ref().map(|_| report::csv(results))),
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
        std::fs::write(p, plot::svg(results))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if table_to_stdout {
        print!("{}", report::table(results));
    }
    Ok(())
}
