//! Hot reload through the real binary: SIGHUP and file changes (including a Kubernetes-style `..data`
//! symlink swap) load new material for new handshakes while established connections keep running; every
//! failed reload keeps the old material; CRLs refuse revoked peers and expired lists as configured.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ringseal::pki::{Ca, Identity, NodeSpec};
use ringseal_testkit::process::Proc;
use ringseal_testkit::*;
use rustls::RootCertStore;
use time::OffsetDateTime;

fn roots(cas: &[&Ca]) -> Arc<RootCertStore> {
    let mut r = RootCertStore::empty();
    for ca in cas {
        r.add(ca.cert_der.clone()).unwrap();
    }
    Arc::new(r)
}

fn write(dir: &Path, name: &str, content: impl AsRef<[u8]>) {
    // Write-then-rename, as deployment tools do, so the reader never sees a half-written file unless a
    // test means it to.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn write_identity(dir: &Path, id: &Identity) {
    write(dir, "node.key", &id.key_pem);
    write(dir, "node.crt", &id.cert_pem);
}

/// Starts `ringseal run` on `dir/ringseal.toml` with an inbound listener to `forward`.
fn start(
    dir: tempfile::TempDir,
    forward: SocketAddr,
    tls_extra: &str,
) -> (Proc, SocketAddr, PathBuf) {
    let path = dir.path().to_owned();
    std::fs::write(
        path.join("ringseal.toml"),
        config_text(forward, tls_extra, ""),
    )
    .unwrap();
    let mut proc = Proc::spawn(&[], &path.join("ringseal.toml"), dir);
    let line = proc.wait_for("starting inbound mTLS listener");
    let addr = line
        .split("listener on ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    (proc, addr, path)
}

/// The config these tests use: `tls_extra` goes into [tls], `inbound_extra` into [[inbound]], and a
/// metrics endpoint on a free port.
fn config_text(forward: SocketAddr, tls_extra: &str, inbound_extra: &str) -> String {
    format!(
        "[tls]\ncert = \"node.crt\"\nkey = \"node.key\"\nca = \"ca.crt\"\n{tls_extra}\n\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n\n\
         [[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"{forward}\"\n{inbound_extra}\n"
    )
}

fn metrics_addr(proc: &Proc) -> SocketAddr {
    let line = proc
        .seen
        .iter()
        .find(|l| l.contains("serving metrics on "))
        .expect("metrics endpoint started");
    line.split("serving metrics on ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap()
}

fn reload(proc: &mut Proc) -> String {
    proc.signal("HUP");
    proc.wait_for("reloaded /")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_ca_and_identity_for_new_handshakes_only() {
    let old = Pki::new();
    let new_ca = Ca::new("TestCluster").unwrap();
    let new_node = new_ca.issue(&NodeSpec::new("node1", &[LOCALHOST])).unwrap();
    let backend = Backend::start(Mode::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    old.write(dir.path());
    let (mut proc, addr, path) = start(dir, backend.addr, "");

    let old_client = client(roots(&[&old.ca]), Some(&old.node));
    let mut live = connect(&old_client, addr).await.unwrap();
    echo(&mut live, b"before").await.unwrap();
    let new_client = client(roots(&[&old.ca, &new_ca]), Some(&new_node));
    assert!(
        roundtrip(&new_client, LOCALHOST, addr).await.is_err(),
        "new CA not trusted yet"
    );

    // (1) trust both CAs
    write(
        &path,
        "ca.crt",
        format!("{}{}", old.ca.cert_pem, new_ca.cert_pem),
    );
    let line = reload(&mut proc);
    assert!(line.contains("2 trusted CA(s)"), "{line}");
    roundtrip(&new_client, LOCALHOST, addr).await.unwrap();
    roundtrip(&old_client, LOCALHOST, addr).await.unwrap();
    echo(&mut live, b"during").await.unwrap();

    // (2) our identity from the new CA: a client trusting only the new CA now accepts the sidecar.
    write_identity(&path, &new_node);
    reload(&mut proc);
    let new_only = client(roots(&[&new_ca]), Some(&new_node));
    roundtrip(&new_only, LOCALHOST, addr).await.unwrap();

    // (3) drop the old CA: old certificates are refused from now on, the live connection stays.
    write(&path, "ca.crt", &new_ca.cert_pem);
    let line = reload(&mut proc);
    assert!(line.contains("1 trusted CA(s)"), "{line}");
    let old_client_new_trust = client(roots(&[&new_ca]), Some(&old.node));
    assert!(
        roundtrip(&old_client_new_trust, LOCALHOST, addr)
            .await
            .is_err()
    );
    echo(&mut live, b"after").await.unwrap();
    assert!(proc.child.try_wait().unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failed_reload_keeps_the_old_material() {
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    pki.write(dir.path());
    std::fs::write(
        dir.path().join("crl.pem"),
        pki.ca
            .crl(&[], OffsetDateTime::now_utc() + Duration::from_secs(86400))
            .unwrap(),
    )
    .unwrap();
    let (mut proc, addr, path) = start(dir, backend.addr, "crl = [\"crl.pem\"]");
    let good = client(pki.roots(), Some(&pki.node));
    roundtrip(&good, LOCALHOST, addr).await.unwrap();
    let other = pki.issue("node2", &[LOCALHOST]);
    let cert = std::fs::read_to_string(path.join("node.crt")).unwrap();

    // (what, how to break the files, what the log line must say)
    type Case<'a> = (&'a str, Box<dyn Fn(&Path) + 'a>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "missing certificate file",
            Box::new(|p| std::fs::remove_file(p.join("node.crt")).unwrap()),
            "cannot read",
        ),
        (
            "key of another certificate",
            Box::new(|p| write(p, "node.key", &other.key_pem)),
            "does not match the certificate",
        ),
        (
            "half-written certificate",
            Box::new(|p| write(p, "node.crt", &cert[..cert.len() / 2])),
            "tls.cert",
        ),
        (
            "empty CA bundle",
            Box::new(|p| write(p, "ca.crt", "")),
            "no \"BEGIN CERTIFICATE\" block",
        ),
        (
            "malformed CRL",
            Box::new(|p| {
                write(
                    p,
                    "crl.pem",
                    "-----BEGIN X509 CRL-----\nMIIBAAAA\n-----END X509 CRL-----\n",
                )
            }),
            "tls.crl",
        ),
    ];
    for (what, break_it, expect) in &cases {
        let snapshot = ["node.crt", "node.key", "ca.crt", "crl.pem"]
            .map(|f| (f, std::fs::read(path.join(f)).unwrap()));
        break_it(&path);
        proc.signal("HUP");
        let line = proc.wait_for("reload failed, still serving the previous certificates");
        assert!(line.contains(expect), "{what}: {line}");
        assert!(line.contains("WARN"), "{what}: {line}");
        roundtrip(&good, LOCALHOST, addr)
            .await
            .unwrap_or_else(|e| panic!("{what}: old material no longer served: {e}"));
        for (f, bytes) in snapshot {
            write(&path, f, bytes);
        }
        let line = reload(&mut proc);
        assert!(line.contains("reloaded"), "{what}: restoring: {line}");
    }
    assert_eq!(backend.accepted(), 1 + cases.len());
    let m = scrape(metrics_addr(&proc));
    let errors = sample(&m, "ringseal_config_reloads_total{result=\"error\"}");
    let oks = sample(&m, "ringseal_config_reloads_total{result=\"ok\"}");
    assert_eq!(errors, cases.len() as f64, "{m}");
    assert_eq!(oks, cases.len() as f64, "one good reload after each repair");
}

/// Allow-lists and endpoint verification come from the config file; a reload applies them to new
/// handshakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_list_changes_apply_on_reload() {
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    pki.write(dir.path());
    let (mut proc, addr, path) = start(dir, backend.addr, "");
    let good = client(pki.roots(), Some(&pki.node));
    let mut live = connect(&good, addr).await.unwrap();
    echo(&mut live, b"before").await.unwrap();
    std::fs::write(
        path.join("ringseal.toml"),
        config_text(backend.addr, "", "allow = { ou = [\"OtherCluster\"] }"),
    )
    .unwrap();
    reload(&mut proc);
    assert!(
        roundtrip(&good, LOCALHOST, addr).await.is_err(),
        "allow-list not applied"
    );
    let line = proc.wait_for("refused 127.0.0.1");
    assert!(line.contains("identity not allowed"), "{line}");
    // The connection verified before the change keeps running.
    echo(&mut live, b"after").await.unwrap();
    std::fs::write(
        path.join("ringseal.toml"),
        config_text(backend.addr, "", "allow = { ou = [\"TestCluster\"] }"),
    )
    .unwrap();
    reload(&mut proc);
    roundtrip(&good, LOCALHOST, addr).await.unwrap();
}

/// `[limits]`, `offload`, `[logging]` and `[tcp]` are fixed at start: a reload that changes them applies the rest and says
/// plainly that those parts need a restart (it used to log "reloaded" as if they had applied).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_offload_changes_say_they_need_a_restart() {
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    pki.write(dir.path());
    let (mut proc, addr, path) = start(dir, backend.addr, "");
    let base = config_text(backend.addr, "", "");
    for (change, named) in [
        ("[limits]\nhandshake_timeout = \"3s\"\n", "[limits]"),
        ("offload = \"off\"\n", "offload"),
        ("[logging]\nconnections = false\n", "[logging]"),
        ("[tcp]\nloopback_congestion_control = \"host\"\n", "[tcp]"),
    ] {
        // Top-level keys must precede the first table.
        let text = if change.starts_with('[') {
            format!("{base}\n{change}")
        } else {
            format!("{change}{base}")
        };
        std::fs::write(path.join("ringseal.toml"), text).unwrap();
        reload(&mut proc);
        let line = proc.wait_for("restart ringseal to apply it");
        assert!(
            line.contains(named) && line.contains("NOT applied"),
            "{line}"
        );
        std::fs::write(path.join("ringseal.toml"), &base).unwrap();
        reload(&mut proc);
    }
    let good = client(pki.roots(), Some(&pki.node));
    roundtrip(&good, LOCALHOST, addr).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_changes_are_picked_up_through_symlink_swaps() {
    use std::os::unix::fs::symlink;
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    // The layout a Kubernetes Secret volume has: files are links into ..data, itself a link that the
    // kubelet swaps atomically to a new timestamped directory.
    let generation = |name: &str, id: &Identity| {
        let d = root.join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("node.crt"), &id.cert_pem).unwrap();
        std::fs::write(d.join("node.key"), &id.key_pem).unwrap();
        std::fs::write(d.join("ca.crt"), &pki.ca.cert_pem).unwrap();
        let tmp = root.join("..data_tmp");
        symlink(name, &tmp).unwrap();
        std::fs::rename(&tmp, root.join("..data")).unwrap();
    };
    generation("..gen1", &pki.node);
    for f in ["node.crt", "node.key", "ca.crt"] {
        symlink(format!("..data/{f}"), root.join(f)).unwrap();
    }
    let (mut proc, addr, _) = start(dir, backend.addr, "reload_interval = \"1s\"");
    let good = client(pki.roots(), Some(&pki.node));
    roundtrip(&good, LOCALHOST, addr).await.unwrap();

    for (i, gen_name) in ["..gen2", "..gen3"].into_iter().enumerate() {
        let id = pki.issue(&format!("node1-v{}", i + 2), &[LOCALHOST]);
        generation(gen_name, &id);
        let line = proc.wait_for("reloaded");
        assert!(line.contains(&format!("CN=node1-v{}", i + 2)), "{line}");
        roundtrip(&good, LOCALHOST, addr).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_peer_is_refused_with_reason_revoked() {
    let pki = Pki::new();
    let revoked = pki.issue("node2", &[LOCALHOST]);
    let backend = Backend::start(Mode::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    pki.write(dir.path());
    let next = OffsetDateTime::now_utc() + Duration::from_secs(86400);
    std::fs::write(
        dir.path().join("crl.pem"),
        pki.ca.crl(&[&revoked], next).unwrap(),
    )
    .unwrap();
    let (mut proc, addr, _) = start(dir, backend.addr, "crl = [\"crl.pem\"]");
    let c = client(pki.roots(), Some(&revoked));
    assert!(roundtrip(&c, LOCALHOST, addr).await.is_err());
    let line = proc.wait_for("refused 127.0.0.1");
    assert!(line.contains("reason=\"revoked\""), "{line}");
    assert!(line.contains("revoked"), "{line}");
    // Everyone else is still accepted.
    roundtrip(&client(pki.roots(), Some(&pki.node)), LOCALHOST, addr)
        .await
        .unwrap();
    assert_eq!(backend.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_crl_denies_or_warns_as_configured() {
    for (policy, accepted) in [("deny", false), ("warn", true)] {
        let pki = Pki::new();
        let backend = Backend::start(Mode::Echo).await;
        let dir = tempfile::tempdir().unwrap();
        pki.write(dir.path());
        // nextUpdate a minute ago: the list may be missing recent revocations.
        let past = OffsetDateTime::now_utc() - Duration::from_secs(60);
        std::fs::write(dir.path().join("crl.pem"), pki.ca.crl(&[], past).unwrap()).unwrap();
        let (mut proc, addr, _) = start(
            dir,
            backend.addr,
            &format!("crl = [\"crl.pem\"]\ncrl_expired = \"{policy}\""),
        );
        let line = proc.wait_for("past its nextUpdate");
        assert!(
            line.contains(&format!("crl_expired = \"{policy}\"")),
            "{line}"
        );
        let result = roundtrip(&client(pki.roots(), Some(&pki.node)), LOCALHOST, addr).await;
        assert_eq!(result.is_ok(), accepted, "{policy}: {result:?}");
        if !accepted {
            let line = proc.wait_for("refused 127.0.0.1");
            assert!(line.contains("nextUpdate"), "{line}");
        }
    }
}

/// Our own certificate: a warning at start when it expires within 30 days, and again at each of the
/// 14, 7 and 1 day thresholds it crosses (here by reloading a shorter-lived certificate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_expiry_is_warned_at_thresholds() {
    let pki = Pki::new();
    let lasting = |days: u64| {
        let mut spec = NodeSpec::new("node1", &[LOCALHOST]);
        spec.not_after = OffsetDateTime::now_utc() + Duration::from_secs(days * 86400 - 3600);
        pki.ca.issue(&spec).unwrap()
    };
    let backend = Backend::start(Mode::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    pki.write(dir.path());
    write_identity(dir.path(), &lasting(10));
    let (mut proc, _addr, path) = start(dir, backend.addr, "");
    let line = proc.wait_for("expires in");
    assert!(line.contains("expires in 9 day(s)"), "{line}");
    assert!(line.contains("WARN"), "{line}");
    write_identity(&path, &lasting(3));
    reload(&mut proc);
    let line = proc.wait_for("expires in");
    assert!(line.contains("expires in 2 day(s)"), "{line}");
    // A long-lived certificate again: no warning, and the next short one warns anew.
    write_identity(&path, &lasting(365));
    reload(&mut proc);
    write_identity(&path, &lasting(20));
    reload(&mut proc);
    let line = proc.wait_for("expires in");
    assert!(line.contains("expires in 19 day(s)"), "{line}");
    let lines = proc.drain(Duration::from_millis(200));
    assert_eq!(lines.iter().filter(|l| l.contains("expires in")).count(), 3);
}
