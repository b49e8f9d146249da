//! `/status` on the real binary: the fields reflect what the sidecar is doing (its bound listener,
//! the storage port's last connect failing, a reload failing with the reason) and no secret appears.
//! The metrics endpoint is configured with `--set`, as an operator without a config file would.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ringseal::pki::NodeSpec;
use ringseal::pki::files::write_node;
use ringseal_testkit::process::{Proc, address_after};
use ringseal_testkit::scrape::status;
use ringseal_testkit::*;

const PASSWORD: &str = "p4ss-status-4711";
const WRONG_PASSWORD: &str = "wr0ng-status-0815";

/// Polls `/status` until `done` holds (bounded; panics with the last document).
fn status_until(
    admin: SocketAddr,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(admin);
        if done(&s) {
            return s.to_string();
        }
        assert!(Instant::now() < deadline, "{what}: {s:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn config(password: &str, forward: SocketAddr) -> String {
    format!(
        "[tls]\nkeystore = \"node1.p12\"\nkeystore_password = \"{password}\"\nca = \"ca.crt\"\n\n\
         [[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"{forward}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reflects_listeners_storage_connects_and_reloads_without_secrets() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    pki.write(dir.path());
    write_node(
        &pki.ca,
        &NodeSpec::new("node1", &[LOCALHOST]),
        dir.path(),
        Some(PASSWORD),
        false,
    )
    .unwrap();
    // A storage port nobody listens on (bound for its number, then closed).
    let forward = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let path = dir.path().join("ringseal.toml");
    std::fs::write(&path, config(PASSWORD, forward)).unwrap();
    let mut proc = Proc::spawn_args(&["--set", "metrics.listen=127.0.0.1:0"], &path, dir);
    // The admin endpoint starts first, then the listeners.
    let admin = address_after(&proc.wait_for("serving metrics on"), "serving metrics on ");
    let inbound = address_after(&proc.wait_for("listener on"), "listener on ");

    // Ready once the accept loops run (just after the listener's start line).
    let s: serde_json::Value =
        serde_json::from_str(&status_until(admin, "ready", |s| s["ok"] == true)).unwrap();
    assert_eq!(s["message"], "ready", "{s:#}");
    assert_eq!(s["config"], path.display().to_string(), "{s:#}");
    let l = &s["listeners"][0];
    assert_eq!(l["name"], "internode");
    assert_eq!(l["key"], "inbound[0]");
    assert_eq!(l["tls"]["client_auth"], "required");
    assert_eq!(l["tls"]["reload_error"], serde_json::Value::Null);
    assert_eq!(l["kind"], "inbound");
    assert_eq!(l["listen"], inbound.to_string());
    assert_eq!(l["mode"], "strict");
    assert_eq!(l["connections_active"], 0);
    assert_eq!(l["storage"]["address"], forward.to_string());
    assert_eq!(l["storage"]["last_connect"], serde_json::Value::Null);
    assert_eq!(l["target"], serde_json::Value::Null);
    assert!(
        s["identity"]["subject"].as_str().unwrap().contains("node1"),
        "{s:#}"
    );
    assert_eq!(s["identity"]["ip_sans"], serde_json::json!(["127.0.0.1"]));
    assert!(
        s["identity"]["source"]
            .as_str()
            .unwrap()
            .starts_with("tls.keystore "),
        "{s:#}"
    );
    assert_eq!(s["trust"]["cas"], 1);
    assert!(s["trust"]["earliest_not_after"].is_string(), "{s:#}");
    assert_eq!(s["reload"]["last"], serde_json::Value::Null);
    assert_eq!(s["build"]["version"], env!("CARGO_PKG_VERSION"));
    let commit = &s["build"]["git_commit"];
    assert!(
        commit.is_null()
            || commit
                .as_str()
                .is_some_and(|c| c.len() == 12 && c.chars().all(|c| c.is_ascii_hexdigit())),
        "{s:#}"
    );
    assert!(s["uptime_seconds"].is_u64(), "{s:#}");

    // A verified peer, and the storage port refuses: the status says so.
    let client = client(pki.roots(), Some(&pki.node));
    if let Ok(mut tls) = connect(&client, inbound).await {
        let _ = echo(&mut tls, b"hello").await;
    }
    let body = status_until(admin, "storage connect error", |s| {
        s["listeners"][0]["storage"]["last_connect"]["result"] == "error"
    });
    let s: serde_json::Value = serde_json::from_str(&body).unwrap();
    let last = &s["listeners"][0]["storage"]["last_connect"];
    assert_eq!(last["error_kind"], "refused", "{s:#}");
    assert!(last["at"].as_str().unwrap().ends_with('Z'), "{s:#}");

    // A reload with the wrong keystore password fails, and the status gives the reason.
    std::fs::write(&path, config(WRONG_PASSWORD, forward)).unwrap();
    proc.signal("HUP");
    let body = status_until(admin, "failed reload", |s| {
        s["reload"]["last"]["result"] == "failed"
    });
    let s: serde_json::Value = serde_json::from_str(&body).unwrap();
    let last = &s["reload"]["last"];
    assert_eq!(last["trigger"], "sighup", "{s:#}");
    let error = last["error"].as_str().unwrap();
    assert!(
        error.contains("tls.keystore") && error.contains("wrong password"),
        "{s:#}"
    );
    assert_eq!(s["reload"]["failed"], 1, "{s:#}");
    assert_eq!(s["ok"], true, "the old material keeps serving: {s:#}");
    for secret in [PASSWORD, WRONG_PASSWORD, "PRIVATE KEY"] {
        assert!(!body.contains(secret), "{secret:?} in /status: {body}");
    }
}
