//! `ringseal demo`, the README's first command, as a user runs it: it must finish by itself, show
//! traffic through the sidecars, and show both kinds of refusal.

use std::process::Command;

#[test]
fn demo_runs_shows_traffic_and_refusals_and_ends_by_itself() {
    let out = Command::new(env!("CARGO_BIN_EXE_ringseal"))
        .args(["demo", "--duration", "3s"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    // Six node pairs, each one connection through a sidecar pair: six outbound and six inbound
    // handshakes.
    assert!(stdout.contains("handshakes accepted: 12"), "{stdout}");
    assert!(stdout.contains("x TLSv1.3 TLS_"), "{stdout}");
    assert!(stdout.contains("x unknown_ca"), "{stdout}");
    assert!(stdout.contains("x endpoint_mismatch"), "{stdout}");
    assert!(stdout.contains("relayed: "), "{stdout}");
    assert!(!stdout.contains("relayed: 0.0 MiB"), "{stdout}");
    // The sidecars' own refusal lines.
    assert!(stderr.contains("refused 127.0.0.1"), "{stderr}");
    assert!(
        stderr.contains("endpoint verification failed: peer address 127.0.0.3"),
        "{stderr}"
    );
}
