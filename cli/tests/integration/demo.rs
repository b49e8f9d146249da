//! `ringseal demo`, the README's first command, as a user runs it: it must finish by itself, show
//! traffic through the sidecars, both kinds of refusal, and a CQL client through a client listener.

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
    // node1's client listener: a CQL client with TLS from another CA and no client certificate is
    // served; a driver without TLS is refused, and the sidecar names it.
    assert!(
        stdout.contains("ringseal client listener on 127.0.0.1:"),
        "{stdout}"
    );
    let served = stdout
        .split("no client certificate): ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no client listener summary: {stdout}"));
    assert!(served >= 1, "{stdout}");
    assert!(stdout.contains("x not_tls"), "{stdout}");
    assert!(stderr.contains("a plaintext CQL client"), "{stderr}");
    assert!(stdout.contains("relayed: "), "{stdout}");
    assert!(!stdout.contains("relayed: 0.0 MiB"), "{stdout}");
    // The sidecars' own refusal lines.
    assert!(stderr.contains("refused 127.0.0.1"), "{stderr}");
    assert!(
        stderr.contains("endpoint verification failed: peer address 127.0.0.3"),
        "{stderr}"
    );
}
