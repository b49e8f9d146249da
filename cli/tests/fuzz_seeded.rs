//! Short, deterministic runs of the fuzz targets in `fuzz/` (the sniffer, cassandra.yaml derivation,
//! TOML -> `Config`, PEM/CRL loading, allow-list matching, the handshake driver's record framing): the
//! same checks and seeds as the targets (`fuzz/src/lib.rs`, included below), on a few thousand seeded
//! mutations each, so that `cargo test` notices a regression without nightly Rust. The JKS reader's run is in `cli/tests/integration/jks.rs`. A failure
//! prints the input; `fuzz/run.sh` is the real, open-ended fuzzing.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::Path;

// `init` and `Pki::for_fuzzing` are for the fuzz processes only.
#[allow(dead_code)]
#[path = "../../fuzz/src/lib.rs"]
mod harness;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ringseal_testkit::mutate::mutate;

/// Every seed as it is, then `rounds` inputs of 1 to 3 random edits of a seed each; every outcome in
/// `expected` must have been seen (so seeds that stop reaching the code behind the first check are
/// noticed).
fn run(target: &str, rounds: usize, seed: u64, expected: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let pki = harness::Pki::at(dir.path());
    let repo = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let seeds = harness::seeds(target, repo, &pki);
    assert!(!seeds.is_empty());
    let mut outcomes = BTreeMap::<&str, usize>::new();
    let mut check = |what: &dyn std::fmt::Display, data: &[u8]| match std::panic::catch_unwind(
        AssertUnwindSafe(|| harness::check(target, &pki, data)),
    ) {
        Ok(outcome) => *outcomes.entry(outcome).or_default() += 1,
        Err(panic) => {
            eprintln!(
                "{target}: {what} failed; the input ({} bytes): b\"{}\"",
                data.len(),
                data.escape_ascii()
            );
            std::panic::resume_unwind(panic);
        }
    };
    for (name, data) in &seeds {
        check(&format!("seed {name}"), data);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for round in 0..rounds {
        let (name, seed) = &seeds[round % seeds.len()];
        let mut data = seed.clone();
        for _ in 0..rng.random_range(1..=3) {
            mutate(&mut rng, &mut data);
        }
        data.truncate(harness::MAX_LEN);
        check(&format!("round {round} (a mutation of {name})"), &data);
    }
    eprintln!("{target}: {outcomes:?}");
    for e in expected {
        assert!(
            outcomes.contains_key(e),
            "{target}: never {e:?}: {outcomes:?}"
        );
    }
}

#[test]
fn sniff_seeded() {
    run(
        "sniff",
        4000,
        0x534e_4946,
        &["tls", "internode", "cql", "ssl2", "http", "other"],
    );
}

#[test]
fn cassandra_yaml_seeded() {
    run(
        "cassandra_yaml",
        3000,
        0x5941_4d4c,
        &["derived, loads", "derived, refused", "syntax", "type"],
    );
}

#[test]
fn config_toml_seeded() {
    run(
        "config_toml",
        3000,
        0x544f_4d4c,
        &["ok", "parse", "invalid", "address", "material", "suites"],
    );
}

#[test]
fn pem_crl_seeded() {
    run(
        "pem_crl",
        3000,
        0x4352_4c21,
        &[
            "node chain",
            "node key",
            "crl, node valid",
            "crl, node revoked",
            "nothing",
        ],
    );
}

#[test]
fn allow_list_seeded() {
    run(
        "allow_list",
        4000,
        0x414c_4c57,
        &["own values admit", "admitted", "refused", "list refused"],
    );
}

#[test]
fn record_framing_seeded() {
    run(
        "record_framing",
        4000,
        0x5245_4344,
        &["records", "waiting", "not tls", "overflow", "header only"],
    );
}
