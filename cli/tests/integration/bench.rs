//! `ringseal bench` end to end: the real binary starts real sidecar pairs (its own, and with
//! `--compare` stunnel's, HAProxy's and nginx's) on loopback. Only the structure of the output is
//! checked (table rows, JSON, CSV, SVG), never a figure: timing belongs to benchmarks, not tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const TESTS: [&str; 7] = [
    "bulk",
    "latency",
    "messages",
    "handshake",
    "kx",
    "s_time",
    "memory",
];

struct Run {
    stdout: String,
    dir: tempfile::TempDir,
}

impl Run {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn json(&self) -> Value {
        let text = std::fs::read_to_string(self.path("bench.json")).unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("bench.json: {e}\n{text}"))
    }
}

/// `ringseal bench --quick ARGS --json=DIR/bench.json --csv=DIR/bench.csv --plot DIR/bench.svg`.
fn bench(args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = Command::new(env!("CARGO_BIN_EXE_ringseal"))
        .arg("bench")
        .arg("--quick")
        .args(args)
        .arg(format!("--json={}", d.join("bench.json").display()))
        .arg(format!("--csv={}", d.join("bench.csv").display()))
        .arg("--plot")
        .arg(d.join("bench.svg"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ringseal bench failed ({}):\n{stderr}\n{stdout}",
        out.status
    );
    // The progress indicator goes to stderr, the table to stdout.
    assert!(
        stderr.contains("measured "),
        "no progress summary:\n{stderr}"
    );
    Run { stdout, dir }
}

fn results<'a>(doc: &'a Value, peer: &str) -> impl Iterator<Item = &'a Value> + use<'a> {
    let peer = peer.to_owned();
    doc["results"]
        .as_array()
        .expect("results is an array")
        .iter()
        .filter(move |r| r["peer"] == peer.as_str())
}

/// The result of `peer` for `test` and `metric` (and `which`: the group of the kx test, the client
/// of the s_time test).
fn find<'a>(
    doc: &'a Value,
    peer: &str,
    test: &str,
    metric: &str,
    which: Option<&str>,
) -> &'a Value {
    results(doc, peer)
        .find(|r| {
            r["test"] == test
                && r["metric"] == metric
                && which.is_none_or(|w| r["group"] == w || r["client"] == w)
        })
        .unwrap_or_else(|| panic!("no {peer} {test} {metric} {which:?} result"))
}

fn median(r: &Value) -> f64 {
    r["median"]
        .as_f64()
        .unwrap_or_else(|| panic!("no median in {r}"))
}

/// Every metric an anchor must deliver when it runs at all (X25519MLKEM768 is not among them:
/// OpenSSL 3.0 has no ML-KEM).
const ESSENTIAL: [(&str, &str, Option<&str>); 19] = [
    ("bulk", "gbit_per_s", None),
    ("bulk", "proxy_cpu_s_per_gb", None),
    ("latency", "added_latency_p99_us", None),
    ("messages", "messages_per_s", None),
    ("messages", "proxy_cpu_us_per_message", None),
    ("messages", "outbound_cpu_us_per_message", None),
    ("messages", "inbound_cpu_us_per_message", None),
    ("messages", "proxy_user_cpu_us_per_message", None),
    ("messages", "proxy_kernel_cpu_us_per_message", None),
    ("messages", "rtt_p50_us", None),
    ("messages", "rtt_p99_us", None),
    ("messages", "rtt_p999_us", None),
    ("handshake", "handshakes_per_s", None),
    ("handshake", "inbound_cpu_ms_per_handshake", None),
    ("kx", "server_cpu_ms_per_handshake", Some("X25519")),
    ("kx", "server_cpu_ms_per_handshake", Some("secp256r1")),
    (
        "s_time",
        "server_cpu_ms_per_handshake",
        Some("closes_at_once"),
    ),
    ("s_time", "server_cpu_ms_per_handshake", Some("one_request")),
    ("memory", "pair_kib_per_idle_connection", None),
];

#[test]
fn quick_run_prints_table_json_csv_and_svg() {
    let run = bench(&[]);

    // The table: a section per test, a row per metric, ringseal's column.
    let t = &run.stdout;
    for needle in [
        "ringseal bench, ",
        "Bulk transfer: one connection",
        "Gbit/s",
        "proxy CPU-s/GB",
        "added p50 µs",
        "added p99 µs",
        "handshakes/s",
        "outbound CPU ms/hs",
        "server CPU ms/hs",
        "X25519MLKEM768",
        "openssl s_time",
        "closes at once",
        "one request (-www)",
        "pair KiB/conn",
        "Small messages for 1s",
        "messages/s",
        "proxy CPU µs/msg",
        "RTT p99.9 µs",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "ed25519",
        "direct",
    ] {
        assert!(t.contains(needle), "no {needle:?} in the table:\n{t}");
    }
    let header = t
        .lines()
        .find(|l| l.trim_start().starts_with("ringseal") && l.contains("direct"))
        .unwrap_or_else(|| panic!("no column header with ringseal and direct:\n{t}"));
    assert!(
        !header.contains("haproxy"),
        "no anchor was asked for: {header}"
    );

    // JSON: the machine and date, and a ringseal result for every test.
    let doc = run.json();
    let meta = &doc["meta"];
    for k in ["date", "cpu", "kernel", "load_average_at_start", "build"] {
        assert!(meta[k].is_string(), "meta.{k} missing: {meta}");
    }
    assert!(meta["cores"].as_u64().unwrap() >= 1);
    assert_eq!(meta["quick"], true);
    for test in TESTS {
        assert!(
            results(&doc, "ringseal").any(|r| r["test"] == test && r["median"].is_number()),
            "no ringseal {test} result with a median"
        );
    }
    for (test, metric, group) in ESSENTIAL {
        let r = find(&doc, "ringseal", test, metric, group);
        assert!(r["note"].is_null(), "{test} {metric}: {}", r["note"]);
        assert!(median(r).is_finite());
        assert!(
            r["ratio_ringseal_to_peer"].is_null(),
            "no ratio against itself"
        );
    }
    assert!(median(find(&doc, "ringseal", "bulk", "gbit_per_s", None)) > 0.0);
    assert!(
        median(find(
            &doc,
            "ringseal",
            "handshake",
            "handshakes_per_s",
            None
        )) > 0.0
    );
    // ringseal (rustls) offers the post-quantum hybrid.
    let pq = find(
        &doc,
        "ringseal",
        "kx",
        "handshakes_per_s",
        Some("X25519MLKEM768"),
    );
    assert!(median(pq) > 0.0);
    assert!(median(find(&doc, "direct", "bulk", "gbit_per_s", None)) > 0.0);

    // CSV: a comment with the machine, the header, and rows that all have the header's fields.
    let csv = std::fs::read_to_string(run.path("bench.csv")).unwrap();
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().starts_with("# ringseal bench "));
    assert!(lines.next().unwrap().starts_with("# CPU flags: "));
    assert_eq!(
        lines.next().unwrap(),
        "test,suite,protocol,key_type,group,client,metric,unit,peer,median,runs,ratio_ringseal_to_peer,note"
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), doc["results"].as_array().unwrap().len());
    for r in &rows {
        assert!(r.split(',').count() >= 13, "short CSV row {r:?}");
    }
    assert!(rows.iter().any(|r| r.starts_with(
        "bulk,TLS_AES_128_GCM_SHA256,TLSv1.3,ecdsa-p256,,,gbit_per_s,Gbit/s,ringseal,"
    )));

    // SVG: well-formed, ringseal's series in every panel.
    let svg = std::fs::read_to_string(run.path("bench.svg")).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap_or_else(|e| panic!("bench.svg: {e}"));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let series = |class: &str| -> Vec<String> {
        doc.descendants()
            .filter(|n| n.attribute("class") == Some(class))
            .filter_map(|n| n.attribute("data-series").map(str::to_owned))
            .collect()
    };
    assert_eq!(series("legend"), ["ringseal"]);
    let panels: Vec<_> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("panel"))
        .collect();
    assert_eq!(
        panels.len(),
        9,
        "bulk, CPU, latency, messages/s, CPU per message, message p99, handshakes, kx, memory"
    );
    for p in &panels {
        assert!(
            p.descendants().any(|n| n.attribute("class") == Some("bar")
                && n.attribute("data-series") == Some("ringseal")
                && n.attribute("data-value")
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some()),
            "a panel without a ringseal bar"
        );
    }
}

/// `--tests messages` alone, tiny: its section, every metric for ringseal and the direct baseline
/// (no CPU: no proxy), the workload's shape in the JSON meta, CSV rows and the three SVG panels.
#[test]
fn messages_run_reports_rate_cpu_and_round_trips() {
    let run = bench(&[
        "--tests",
        "messages",
        "--suites",
        "TLS_AES_128_GCM_SHA256",
        "--duration",
        "300ms",
        "--message-peers",
        "2",
        "--connections-per-peer",
        "2",
        "--in-flight",
        "2",
        "--message-size",
        "100-2KiB",
        "--large-every",
        "10",
    ]);
    let t = &run.stdout;
    let title = "Small messages for 0.3s after a warm-up: 2 peers x 2 connections, 2 in flight each, \
                 100-2048 B, 1 in 10 of 65536 B, to an echo backend";
    assert!(t.contains(title), "no {title:?} in the table:\n{t}");
    for label in [
        "messages/s",
        "proxy CPU µs/msg",
        "outbound CPU µs/msg",
        "inbound CPU µs/msg",
        "user CPU µs/msg",
        "kernel CPU µs/msg",
        "RTT p50 µs",
        "RTT p99 µs",
        "RTT p99.9 µs",
    ] {
        let line = t
            .lines()
            .find(|l| l.contains(label))
            .unwrap_or_else(|| panic!("no {label:?} row:\n{t}"));
        assert!(
            line.split_whitespace()
                .last()
                .is_some_and(|v| v == "-" || v.parse::<f64>().is_ok()),
            "{label}: no value in {line:?}"
        );
    }
    assert!(
        !t.contains("Bulk transfer"),
        "only messages was asked for:\n{t}"
    );

    let doc = run.json();
    let mix = &doc["meta"]["messages"];
    assert_eq!(mix["peers"], 2, "{mix}");
    assert_eq!(mix["connections_per_peer"], 2, "{mix}");
    assert_eq!(mix["in_flight"], 2, "{mix}");
    assert_eq!(mix["size_min"], 100, "{mix}");
    assert_eq!(mix["size_max"], 2048, "{mix}");
    assert_eq!(mix["large"], 65536, "{mix}");
    assert_eq!(mix["large_every"], 10, "{mix}");
    for (test, metric, _) in ESSENTIAL.iter().filter(|e| e.0 == "messages") {
        let r = find(&doc, "ringseal", test, metric, None);
        assert!(r["note"].is_null(), "{metric}: {}", r["note"]);
        // /proc counts CPU in clock ticks: one side of a tiny run may round to zero, not both.
        let least = if metric.ends_with("bound_cpu_us_per_message")
            || metric.starts_with("proxy_user")
            || metric.starts_with("proxy_kernel")
        {
            0.0
        } else {
            f64::MIN_POSITIVE
        };
        assert!(median(r) >= least, "{metric}: {r}");
        if !metric.contains("cpu") {
            assert!(median(find(&doc, "direct", test, metric, None)) > 0.0);
        }
    }
    // One run: user and kernel time are the same reads of /proc as the total, split.
    let cpu = |metric| median(find(&doc, "ringseal", "messages", metric, None));
    let (user, kernel) = (
        cpu("proxy_user_cpu_us_per_message"),
        cpu("proxy_kernel_cpu_us_per_message"),
    );
    let total = cpu("proxy_cpu_us_per_message");
    assert!(
        (user + kernel - total).abs() <= 1e-6 * total.max(1.0),
        "user {user} + kernel {kernel} is not the total {total}"
    );
    assert!(
        !results(&doc, "direct").any(|r| r["metric"].as_str().unwrap().contains("cpu")),
        "the direct baseline runs no proxy"
    );
    assert!(
        results(&doc, "ringseal").all(|r| r["test"] == "messages"),
        "only messages was asked for"
    );

    let csv = std::fs::read_to_string(run.path("bench.csv")).unwrap();
    for metric in ["messages_per_s", "proxy_cpu_us_per_message", "rtt_p999_us"] {
        let row = format!("messages,TLS_AES_128_GCM_SHA256,TLSv1.3,ecdsa-p256,,,{metric},");
        assert!(
            csv.lines()
                .any(|l| l.starts_with(&row) && l.contains(",ringseal,")),
            "no CSV row {row}...ringseal:\n{csv}"
        );
    }

    let svg = std::fs::read_to_string(run.path("bench.svg")).unwrap();
    let svg = roxmltree::Document::parse(&svg).unwrap();
    let panels: Vec<_> = svg
        .descendants()
        .filter(|n| n.attribute("class") == Some("panel"))
        .collect();
    assert_eq!(
        panels
            .iter()
            .map(|p| p.attribute("data-unit"))
            .collect::<Vec<_>>(),
        [Some("1/s"), Some("CPU-us"), Some("us")],
        "messages/s, CPU per message, p99 round trip"
    );
    for p in &panels {
        assert!(
            p.descendants().any(|n| n.attribute("class") == Some("bar")
                && n.attribute("data-series") == Some("ringseal")
                && n.attribute("data-group") == Some("1.3 AES-128-GCM")),
            "a messages panel without a ringseal bar"
        );
    }
}

/// Where an anchor's binary is, if installed (root's PATH has sbin, a user's may not).
fn installed(bin: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .any(|d| d.join(bin).is_file())
}

#[test]
fn compare_runs_stunnel_haproxy_and_nginx_in_the_same_run() {
    let mut missing = Vec::new();
    for (bin, package) in [
        ("stunnel4", "stunnel4"),
        ("haproxy", "haproxy"),
        ("nginx", "nginx"),
    ] {
        if !installed(bin) {
            missing.push(package);
        }
    }
    if !Path::new("/usr/lib/nginx/modules/ngx_stream_module.so").exists() {
        missing.push("libnginx-mod-stream");
    }
    if !missing.is_empty() {
        let why = format!(
            "not installed: {} (apt-get install them)",
            missing.join(" ")
        );
        if std::env::var_os("CI").is_some() {
            panic!("CI must run the anchors; {why}");
        }
        eprintln!("skipping the --compare test: {why}");
        return;
    }
    let run = bench(&["--compare", "stunnel,haproxy,nginx"]);
    let doc = run.json();
    let versions = &doc["meta"]["versions"];
    for anchor in ["haproxy", "stunnel", "nginx"] {
        assert!(
            versions[anchor].is_string(),
            "no {anchor} version: {versions}"
        );
        for (test, metric, group) in ESSENTIAL {
            let r = find(&doc, anchor, test, metric, group);
            assert!(
                r["note"].is_null() && r["median"].is_number(),
                "{anchor} {test} {metric} {group:?}: {r}"
            );
        }
        // Ratios against ringseal (latency differences can be at or below zero on a noisy
        // machine, and then have no meaningful ratio, so only rates are checked here).
        for (test, metric) in [
            ("bulk", "gbit_per_s"),
            ("messages", "messages_per_s"),
            ("messages", "proxy_cpu_us_per_message"),
            ("handshake", "handshakes_per_s"),
        ] {
            let r = find(&doc, anchor, test, metric, None);
            assert!(
                r["ratio_ringseal_to_peer"]
                    .as_f64()
                    .is_some_and(|x| x > 0.0),
                "{anchor} {test} {metric}: no ratio against ringseal: {r}"
            );
        }
        // Both TLS 1.2 and TLS 1.3 configs of the anchor worked.
        let tls12 = results(&doc, anchor).find(|r| {
            r["test"] == "bulk" && r["protocol"] == "TLSv1.2" && r["metric"] == "gbit_per_s"
        });
        assert!(
            tls12.is_some_and(|r| r["median"].is_number()),
            "{anchor}: no TLS 1.2 bulk result"
        );
    }
    // The table has a column per peer and ratios.
    let t = &run.stdout;
    let header = t
        .lines()
        .find(|l| l.trim_start().starts_with("ringseal") && l.contains("haproxy"))
        .unwrap_or_else(|| panic!("no column header:\n{t}"));
    for peer in ["stunnel", "nginx", "direct"] {
        assert!(header.contains(peer), "no {peer} column: {header}");
    }
    assert!(t.contains("x)"), "no ratio in the table:\n{t}");
    let svg = std::fs::read_to_string(run.path("bench.svg")).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let legend: Vec<&str> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("legend"))
        .filter_map(|n| n.attribute("data-series"))
        .collect();
    assert_eq!(legend, ["ringseal", "haproxy", "stunnel", "nginx"]);
}

/// The smallest run that starts a pair: one bulk transfer of 1 MiB.
const TINY: [&str; 8] = [
    "--tests",
    "bulk",
    "--suites",
    "TLS_AES_128_GCM_SHA256",
    "--key-types",
    "ecdsa-p256",
    "--bytes",
    "1MiB",
];

/// The CPU flags of /proc/cpuinfo among those the header reports.
fn cpu_flags() -> Vec<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let flags = info.lines().find(|l| l.starts_with("flags")).unwrap_or("");
    ["aes", "vaes", "avx512f", "vpclmulqdq"]
        .into_iter()
        .filter(|f| flags.split_whitespace().any(|w| w == *f))
        .map(str::to_owned)
        .collect()
}

/// The header names what else a figure depends on: CPU flags, the congestion control and what
/// ringseal's loopback legs use, `lo`'s qdisc, kTLS, the proxies' GLIBC_TUNABLES; in the table, the
/// JSON and the CSV.
#[test]
fn header_names_cpu_flags_congestion_control_qdisc_and_ktls() {
    let run = bench(&TINY);
    let cc = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control").unwrap();
    let cc = cc.trim();
    let host = &run.json()["meta"]["host"];
    let flags: Vec<&str> = host["cpu_flags"]
        .as_array()
        .unwrap_or_else(|| panic!("meta.host.cpu_flags: {host}"))
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert_eq!(flags, cpu_flags(), "{host}");
    assert_eq!(host["congestion_control"], cc, "{host}");
    let legs = host["ringseal_loopback_algorithm"].as_str().unwrap();
    if cc.starts_with("bbr") {
        assert!(["cubic", "reno"].contains(&legs), "{host}");
    } else {
        assert_eq!(legs, cc, "{host}");
    }
    assert!(host["congestion_control_available"].is_array(), "{host}");
    let qdisc = host["lo_qdisc"].as_str().unwrap();
    assert!(!qdisc.is_empty() && qdisc != "unknown", "{host}");
    assert_eq!(
        host["tls_stat"],
        Path::new("/proc/net/tls_stat").exists(),
        "{host}"
    );
    assert!(host["ktls_available"].is_boolean(), "{host}");
    assert!(host["ktls"].is_string(), "{host}");
    // By default every proxy runs with the GLIBC_TUNABLES ringseal's unit sets.
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/ringseal.service"),
    )
    .unwrap();
    let tunables = unit
        .lines()
        .find_map(|l| l.strip_prefix("Environment=GLIBC_TUNABLES="))
        .expect("the unit sets GLIBC_TUNABLES");
    assert_eq!(host["glibc_tunables"], tunables, "{host}");
    assert_eq!(host["glibc_tunables_inherited"], false, "{host}");

    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("CPU flags: "))
        .unwrap_or_else(|| panic!("no host line in the table:\n{}", run.stdout));
    for part in [
        format!("aes {}", if flags.contains(&"aes") { "yes" } else { "no" }),
        format!(
            "avx512f {}",
            if flags.contains(&"avx512f") {
                "yes"
            } else {
                "no"
            }
        ),
        format!("TCP congestion control {cc}, ringseal's loopback legs {legs}"),
        format!("lo qdisc {qdisc}"),
        "kTLS ".to_owned(),
        format!("GLIBC_TUNABLES of every proxy: {tunables}"),
    ] {
        assert!(line.contains(&part), "{part:?} missing from {line:?}");
    }
    let csv = std::fs::read_to_string(run.path("bench.csv")).unwrap();
    assert_eq!(csv.lines().nth(1), Some(format!("# {line}").as_str()));
}

/// `--congestion bbr,reno`: the run once in a namespace defaulting to each, one labelled block per
/// algorithm in the table, a `congestion` field in JSON and CSV, a chart per algorithm. (reno rather
/// than cubic: a namespace may default only to an allowed algorithm, and only reno always is.)
#[test]
fn congestion_runs_one_block_per_algorithm_in_its_namespace() {
    if !ringseal_testkit::netns::available(&["sysctl"]) {
        return;
    }
    let mut args = vec!["--congestion", "bbr,reno"];
    args.extend(TINY);
    let run = bench(&args);
    let t = &run.stdout;
    for (alg, legs) in [("bbr", "cubic"), ("reno", "reno")] {
        let block = t
            .split("=== TCP congestion control ")
            .find(|b| b.starts_with(&format!("{alg}: ")))
            .unwrap_or_else(|| panic!("no {alg} block:\n{t}"));
        assert!(
            block.contains(&format!(
                "TCP congestion control {alg}, ringseal's loopback legs {legs}"
            )),
            "{alg} block:\n{block}"
        );
        assert!(block.contains("Bulk transfer"), "{alg} block:\n{block}");
        assert!(
            run.path(&format!("bench-{alg}.svg")).is_file(),
            "{alg} chart"
        );
    }
    let doc = run.json();
    let blocks: Vec<&str> = doc["congestion"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            assert_eq!(b["meta"]["host"]["congestion_control"], b["algorithm"]);
            b["algorithm"].as_str().unwrap()
        })
        .collect();
    assert_eq!(blocks, ["bbr", "reno"]);
    for alg in ["bbr", "reno"] {
        assert!(
            results(&doc, "ringseal")
                .any(|r| r["congestion"] == alg && r["metric"] == "gbit_per_s" && median(r) > 0.0),
            "no ringseal bulk result under {alg}"
        );
    }
    let csv = std::fs::read_to_string(run.path("bench.csv")).unwrap();
    let header = csv.lines().find(|l| l.starts_with("test,")).unwrap();
    assert!(header.ends_with(",note,congestion"), "{header}");
    let rows: Vec<&str> = csv
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("test,"))
        .collect();
    assert_eq!(rows.len(), doc["results"].as_array().unwrap().len());
    assert!(rows.iter().any(|r| r.ends_with(",bbr")) && rows.iter().any(|r| r.ends_with(",reno")));

    // Without root: one clear line, before anything runs.
    if ringseal_testkit::tools::which("setpriv").is_some() {
        let out = Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_ringseal"))
            .args(["bench", "--congestion", "bbr"])
            .args(TINY)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("--congestion runs each block in a network namespace of its own, and network namespaces need root"),
            "{err}"
        );
    }
}
