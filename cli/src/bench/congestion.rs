//! `--congestion bbr,cubic`: the same run once per TCP congestion control, so one command shows how
//! much a pacing default costs each pair.
//!
//! The default congestion control is a setting of the network namespace, and every socket of a run
//! (the pairs, the load generator, the backend, the anchors' children) must live under it. So each
//! block is this very command run again, whole, inside a namespace of its own (`ip netns exec`, `lo`
//! up, `net.ipv4.tcp_congestion_control` set), with a hidden `--block-dir` where it leaves its table,
//! JSON and CSV; this process then merges them. A separate process per block, rather than switching
//! namespaces inside this one, because a namespace is per thread and the runtime's worker threads and
//! the proxies it starts would not follow; the merge works on the outputs the blocks already write.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use ringseal_testkit::netns::{self, Netns};
use serde_json::Value;

use super::options::{Options, Output};
use super::report::{self, Results};

/// What one block leaves in its directory.
const TABLE: &str = "table.txt";
const JSON: &str = "bench.json";
const CSV: &str = "bench.csv";
const SVG: &str = "bench.svg";

/// Inside a block: the outputs, into `dir`.
pub fn write_block(dir: &Path, opts: &Options, results: &Results) -> anyhow::Result<()> {
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).with_context(|| format!("writing {name}"))
    };
    write(TABLE, report::table(results))?;
    write(JSON, report::json(results))?;
    write(CSV, report::csv(results))?;
    if opts.plot.is_some() {
        write(SVG, super::plot::svg(results))?;
    }
    Ok(())
}

/// One block's outputs, read back.
struct Block {
    algorithm: String,
    table: String,
    json: Value,
    csv: String,
    svg: Option<String>,
}

/// Runs every block, then writes the merged outputs where `--json`, `--csv`, `--plot` and stdout
/// say.
pub async fn run(opts: &Options) -> anyhow::Result<()> {
    netns::prerequisites(&["sysctl"]).map_err(|why| {
        anyhow!(
            "--congestion runs each block in a network namespace of its own, and {why}; run it as \
             root, or leave --congestion out to measure under this host's default ({})",
            ringseal::tcp::HostCongestion::read().default
        )
    })?;
    let exe = std::env::current_exe().context("finding this executable")?;
    // Every namespace first: an algorithm the kernel refuses fails the run before any measuring.
    let mut namespaces = Vec::new();
    for algorithm in &opts.congestion {
        let ns = Netns::create("bench").map_err(|e| anyhow!("--congestion: {e}"))?;
        ns.set_congestion(algorithm)
            .map_err(|e| anyhow!("--congestion {algorithm}: {e}"))?;
        namespaces.push((algorithm, ns));
    }
    let mut blocks = Vec::new();
    for (algorithm, ns) in &namespaces {
        blocks.push(block(&exe, algorithm, ns).await?);
    }
    write_merged(opts, &blocks)
}

async fn block(exe: &Path, algorithm: &str, ns: &Netns) -> anyhow::Result<Block> {
    let dir = tempfile::tempdir().context("a directory for the block's outputs")?;
    eprintln!(
        "--congestion: measuring under {algorithm} (network namespace {}, net.ipv4.tcp_congestion_control = {algorithm})",
        ns.name()
    );
    let mut cmd = ns.command(&[&exe.to_string_lossy()]);
    cmd.args(std::env::args_os().skip(1))
        .arg("--block-dir")
        .arg(dir.path())
        .stdin(std::process::Stdio::null());
    let status = tokio::process::Command::from(cmd)
        .status()
        .await
        .context("running a --congestion block")?;
    anyhow::ensure!(
        status.success(),
        "the run under {algorithm} failed ({status}); its messages are above"
    );
    let read = |name: &str| {
        std::fs::read_to_string(dir.path().join(name))
            .with_context(|| format!("the {algorithm} block wrote no {name}"))
    };
    Ok(Block {
        algorithm: algorithm.to_owned(),
        table: read(TABLE)?,
        json: serde_json::from_str(&read(JSON)?).context("the block's JSON")?,
        csv: read(CSV)?,
        svg: read(SVG).ok(),
    })
}

fn write_merged(opts: &Options, blocks: &[Block]) -> anyhow::Result<()> {
    let table_to_stdout = opts.json != Some(Output::Stdout) && opts.csv != Some(Output::Stdout);
    for (out, text) in [
        (&opts.json, opts.json.as_ref().map(|_| merged_json(blocks))),
        (&opts.csv, opts.csv.as_ref().map(|_| merged_csv(blocks))),
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
        for b in blocks {
            let path = plot_path(p, &b.algorithm);
            if let Some(svg) = &b.svg {
                std::fs::write(&path, svg)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    if table_to_stdout {
        print!("{}", merged_table(blocks));
    }
    Ok(())
}

/// `bench.svg` -> `bench-bbr.svg`.
pub fn plot_path(p: &Path, algorithm: &str) -> PathBuf {
    let stem = p
        .file_stem()
        .map_or_else(|| "bench".to_owned(), |s| s.to_string_lossy().into_owned());
    p.with_file_name(format!("{stem}-{algorithm}.svg"))
}

/// The label every block's section starts with.
fn heading(algorithm: &str) -> String {
    format!(
        "=== TCP congestion control {algorithm}: a network namespace whose \
         net.ipv4.tcp_congestion_control = {algorithm} ==="
    )
}

fn merged_table(blocks: &[Block]) -> String {
    let mut out = String::new();
    for (i, b) in blocks.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&heading(&b.algorithm));
        out.push('\n');
        out.push_str(&b.table);
    }
    out
}

/// The first block's `meta`, every block's results with a `congestion` field, and each block's own
/// `meta` (its host line names the namespace's settings) under `congestion`.
fn merged_json(blocks: &[Block]) -> String {
    let mut results = Vec::new();
    let mut each = Vec::new();
    for b in blocks {
        for r in b.json["results"].as_array().into_iter().flatten() {
            let mut r = r.clone();
            r["congestion"] = Value::from(b.algorithm.as_str());
            results.push(r);
        }
        each.push(serde_json::json!({
            "algorithm": b.algorithm,
            "meta": b.json["meta"],
        }));
    }
    let doc = serde_json::json!({
        "meta": blocks.first().map_or(Value::Null, |b| b.json["meta"].clone()),
        "congestion": each,
        "results": results,
    });
    let mut s =
        serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}

/// The blocks' rows under one header with a `congestion` column at the end; each block's comment
/// lines first, labelled.
fn merged_csv(blocks: &[Block]) -> String {
    let mut comments = String::new();
    let mut rows = String::new();
    for b in blocks {
        for line in b.csv.lines() {
            if let Some(c) = line.strip_prefix("# ") {
                comments.push_str(&format!("# [{}] {c}\n", b.algorithm));
            } else if line != report::CSV_HEADER && !line.is_empty() {
                rows.push_str(&format!("{line},{}\n", b.algorithm));
            }
        }
    }
    format!("{comments}{},congestion\n{rows}", report::CSV_HEADER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_paths() {
        assert_eq!(
            plot_path(Path::new("/tmp/x/bench.svg"), "bbr"),
            Path::new("/tmp/x/bench-bbr.svg")
        );
    }

    #[test]
    fn csv_merge_labels_every_row() {
        let block = |alg: &str| Block {
            algorithm: alg.to_owned(),
            table: String::new(),
            json: Value::Null,
            csv: format!(
                "# ringseal bench x\n# CPU flags aes\n{}\nbulk,a,\"n, m\"\n",
                report::CSV_HEADER
            ),
            svg: None,
        };
        let csv = merged_csv(&[block("bbr"), block("reno")]);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "# [bbr] ringseal bench x");
        assert_eq!(lines[4], format!("{},congestion", report::CSV_HEADER));
        assert_eq!(&lines[5..], ["bulk,a,\"n, m\",bbr", "bulk,a,\"n, m\",reno"]);
    }
}
