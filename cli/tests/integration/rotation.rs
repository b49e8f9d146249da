//! The certificate rotation of `shared/seeds/002` (add the new CA everywhere, switch identities, remove
//! the old CA), done live on two sidecars (A inbound, B outbound towards A) by rewriting files and
//! sending SIGHUP, while a generator keeps opening connections and streaming through long-lived ones:
//! no failed handshake, no dropped or corrupted connection, no restart.
//!
//! Then the same with seed 002's own material: self-signed keytool keys in JKS and PKCS#12 stores,
//! every node's certificate imported into every truststore, rotated by the seed's steps with keytool
//! and a copy into place, reloads instead of its rolling restarts. Needs `keytool` (skips outside CI).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ringseal::pki::{Ca, Identity, NodeSpec};
use ringseal_testkit::process::{Proc, address_after};
use ringseal_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn write(dir: &Path, name: &str, content: impl AsRef<[u8]>) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// A sidecar process with its files in `dir`.
struct Side {
    proc: Proc,
    dir: std::path::PathBuf,
    metrics: SocketAddr,
}

impl Side {
    fn start(id: &Identity, ca_pem: &str, listeners: &str) -> (Self, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        write(&path, "node.crt", &id.cert_pem);
        write(&path, "node.key", &id.key_pem);
        write(&path, "ca.crt", ca_pem);
        Self::spawn(
            dir,
            "cert = \"node.crt\"\nkey = \"node.key\"\nca = \"ca.crt\"\n",
            listeners,
        )
    }

    /// A sidecar on the files already in `dir`, with this `[tls]` body.
    fn spawn(dir: tempfile::TempDir, tls: &str, listeners: &str) -> (Self, String) {
        let path = dir.path().to_owned();
        std::fs::write(
            path.join("ringseal.toml"),
            format!("[tls]\n{tls}\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n{listeners}\n"),
        )
        .unwrap();
        let mut proc = Proc::spawn(&[], &path.join("ringseal.toml"), dir);
        let metrics = address_after(&proc.wait_for("serving metrics on"), "serving metrics on ");
        let start = proc.wait_for("listener on");
        (
            Self {
                proc,
                dir: path,
                metrics,
            },
            start,
        )
    }

    fn reload(&mut self) {
        self.proc.signal("HUP");
        self.proc.wait_for("reloaded /");
    }

    fn scrape(&self) -> String {
        scrape(self.metrics)
    }
}

#[derive(Default)]
struct Stats {
    opened: AtomicU64,
    streamed: AtomicU64,
    failures: AtomicU64,
}

/// Opens short connections through `via` in a loop, each echoing one message.
async fn open_connections(via: SocketAddr, stop: Arc<AtomicBool>, stats: Arc<Stats>) {
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let msg = format!("connection {n}");
        let result = async {
            let mut s = TcpStream::connect(via).await?;
            s.write_all(msg.as_bytes()).await?;
            let mut back = vec![0u8; msg.len()];
            s.read_exact(&mut back).await?;
            std::io::Result::Ok(back == msg.as_bytes())
        }
        .await;
        match result {
            Ok(true) => stats.opened.fetch_add(1, Ordering::SeqCst),
            other => {
                eprintln!("connection {n} failed: {other:?}");
                stats.failures.fetch_add(1, Ordering::SeqCst)
            }
        };
    }
}

/// Streams through one long-lived connection, checking every echoed byte.
async fn stream(via: SocketAddr, seed: u8, stop: Arc<AtomicBool>, stats: Arc<Stats>) {
    let mut s = TcpStream::connect(via).await.unwrap();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut back = vec![0u8; chunk.len()];
    let mut round = 0u32;
    while !stop.load(Ordering::SeqCst) {
        round += 1;
        for (i, b) in chunk.iter_mut().enumerate() {
            *b = seed ^ (i as u8) ^ (round as u8);
        }
        let ok = s.write_all(&chunk).await.is_ok()
            && s.read_exact(&mut back).await.is_ok()
            && back == chunk;
        if !ok {
            eprintln!("long-lived stream {seed} broke in round {round}");
            stats.failures.fetch_add(1, Ordering::SeqCst);
            return;
        }
        stats
            .streamed
            .fetch_add(chunk.len() as u64, Ordering::SeqCst);
    }
}

/// Lets the generator make visible progress (at least `n` more new connections).
async fn progress(stats: &Stats, n: u64) {
    let target = stats.opened.load(Ordering::SeqCst) + n;
    within("generator progress", async {
        while stats.opened.load(Ordering::SeqCst) < target {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_ca_and_identities_live_without_a_failure() {
    let old = Ca::new("TestCluster").unwrap();
    let new = Ca::new("TestCluster").unwrap();
    let issue = |ca: &Ca, name: &str| ca.issue(&NodeSpec::new(name, &[LOCALHOST])).unwrap();
    let (a_old, b_old, a_new, b_new) = (
        issue(&old, "nodeA"),
        issue(&old, "nodeB"),
        issue(&new, "nodeA"),
        issue(&new, "nodeB"),
    );
    let backend = Backend::start(Mode::Echo).await;
    let (mut a, line) = Side::start(
        &a_old,
        &old.cert_pem,
        &format!(
            "[[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"{}\"",
            backend.addr
        ),
    );
    let a_addr = address_after(&line, "listener on ");
    let (mut b, line) = Side::start(
        &b_old,
        &old.cert_pem,
        &format!(
            "[[outbound]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{a_addr}\"\n\
             require_endpoint_verification = true"
        ),
    );
    let b_addr = address_after(&line, "listener on ");

    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Stats::default());
    let mut tasks = Vec::new();
    for seed in 1..=3 {
        tasks.push(tokio::spawn(stream(
            b_addr,
            seed,
            stop.clone(),
            stats.clone(),
        )));
    }
    tasks.push(tokio::spawn(open_connections(
        b_addr,
        stop.clone(),
        stats.clone(),
    )));
    progress(&stats, 20).await;

    let both = format!("{}{}", old.cert_pem, new.cert_pem);
    // (1) Add the new CA to both trust bundles.
    for side in [&mut a, &mut b] {
        write(&side.dir, "ca.crt", &both);
        side.reload();
    }
    progress(&stats, 20).await;
    // (2) Switch both identities to certificates from the new CA.
    for (side, id) in [(&mut a, &a_new), (&mut b, &b_new)] {
        write(&side.dir, "node.key", &id.key_pem);
        write(&side.dir, "node.crt", &id.cert_pem);
        side.reload();
    }
    progress(&stats, 20).await;
    // (3) Remove the old CA.
    for side in [&mut a, &mut b] {
        write(&side.dir, "ca.crt", &new.cert_pem);
        side.reload();
    }
    progress(&stats, 20).await;

    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        within("generator end", t).await.unwrap();
    }
    assert_eq!(
        stats.failures.load(Ordering::SeqCst),
        0,
        "failed exchanges during rotation"
    );
    assert!(stats.opened.load(Ordering::SeqCst) >= 80);
    assert!(stats.streamed.load(Ordering::SeqCst) > 0);

    // After step 3 an old-CA certificate is refused.
    let old_roots = {
        let mut r = rustls::RootCertStore::empty();
        r.add(new.cert_der.clone()).unwrap();
        Arc::new(r)
    };
    let stale = client(old_roots, Some(&a_old));
    assert!(roundtrip(&stale, LOCALHOST, a_addr).await.is_err());

    // The metrics show each reload, and no failed handshake on either side.
    for (name, side) in [("A", &a), ("B", &b)] {
        let m = side.scrape();
        assert_eq!(
            sample(&m, "ringseal_config_reloads_total{result=\"ok\"}"),
            3.0,
            "{name}:\n{m}"
        );
        assert_eq!(
            sample(&m, "ringseal_config_reloads_total{result=\"error\"}"),
            0.0,
            "{name}"
        );
    }
    let refused = |m: &str, dir: &str| -> f64 {
        m.lines()
            .filter(|l| {
                l.starts_with("ringseal_handshakes_total{")
                    && l.contains(&format!("direction=\"{dir}\""))
                    && l.contains("result=\"refused\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    // A refused exactly one handshake: the stale certificate after step 3.
    assert_eq!(refused(&a.scrape(), "inbound"), 1.0);
    assert_eq!(refused(&b.scrape(), "outbound"), 0.0);
    let m = b.scrape();
    assert!(
        !m.lines().any(|l| l.starts_with("ringseal_handshakes_total")
            && l.contains("direction=\"outbound\"")
            && l.contains("result=\"refused\"")),
        "B saw refused handshakes:\n{m}"
    );
}

// ---------------------------------------------------------------------------------------------
// Seed 002 with keytool: self-signed node keys, every node's certificate in every truststore
// ---------------------------------------------------------------------------------------------

/// keytool (with no standard input: it prompts otherwise) in `dir`.
fn keytool(dir: &Path, args: &[&str]) {
    ringseal_testkit::tools::run(dir, "keytool", args);
}

/// Seed 002's appendix for one node: `keytool -genkey` (RSA, self-signed, CN = the node's address,
/// key password = store password) into `store` of `storetype`, and `keytool -export` of its
/// certificate to `<alias>.cer`.
fn genkey(dir: &Path, alias: &str, store: &str, storetype: &str) {
    keytool(
        dir,
        &[
            "-genkey",
            "-keyalg",
            "RSA",
            "-alias",
            alias,
            "-validity",
            "3650",
            "-keystore",
            store,
            "-storetype",
            storetype,
            "-storepass",
            "keypass",
            "-keypass",
            "keypass",
            "-dname",
            "CN=127.0.0.1, OU=None, O=None, L=None, C=None",
        ],
    );
    let cer = format!("{alias}.cer");
    keytool(
        dir,
        &[
            "-export",
            "-alias",
            alias,
            "-file",
            &cer,
            "-keystore",
            store,
            "-storepass",
            "keypass",
        ],
    );
}

/// `keytool -import -trustcacerts` of `<alias>.cer` into `store` (created when missing).
fn trust(dir: &Path, store: &str, storetype: &str, alias: &str) {
    let cer = format!("{alias}.cer");
    keytool(
        dir,
        &[
            "-import",
            "-v",
            "-trustcacerts",
            "-noprompt",
            "-alias",
            alias,
            "-file",
            &cer,
            "-keystore",
            store,
            "-storetype",
            storetype,
            "-storepass",
            "trustpass",
        ],
    );
}

/// "Use a copy utility, such as scp, to distribute": `from` (in the staging directory) replaces `to`
/// in a node's directory in one rename, so a reload never reads half a store.
fn distribute(staging: &Path, from: &str, node: &Path, to: &str) {
    let tmp = node.join(format!(".{to}.tmp"));
    std::fs::copy(staging.join(from), &tmp).unwrap();
    std::fs::rename(&tmp, node.join(to)).unwrap();
}

/// Seed 002's rotation ("Perform certificate rotation") on two live sidecars, A (inbound, JKS stores,
/// as JDK 8's keytool wrote them) and B (outbound towards A, PKCS#12 stores, JDK 9+'s default): every
/// node key is self-signed, so each node's certificate is a trust anchor in every truststore. (1) The
/// new certificates are imported next to the old ones and the truststores distributed; (2) each
/// node's keystore is replaced by its new one; (3) the old certificates are deleted from the
/// truststores. Where the seed does a rolling restart after each step, ringseal reloads (SIGHUP):
/// under continuous traffic no exchange fails and nothing restarts. Afterwards a node still on its
/// old key (a third sidecar) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_002_rotation_with_keytool_stores_live_without_a_failure() {
    if !ringseal_testkit::tools::have(&["keytool"]) {
        return;
    }
    let staging = tempfile::tempdir().unwrap();
    let st = staging.path();
    // The stores before the rotation (A's in JKS, B's in PKCS#12), and the new keys, made ahead as
    // the seed's appendix makes them. Each keytool run starts a JVM: independent ones run in parallel.
    std::thread::scope(|scope| {
        for (alias, ty) in [
            ("nodeA", "JKS"),
            ("nodeB", "PKCS12"),
            ("nodeA2", "JKS"),
            ("nodeB2", "PKCS12"),
        ] {
            scope.spawn(move || genkey(st, alias, &format!("keystore.{alias}"), ty));
        }
    });
    let each_truststore = |f: &(dyn Fn(&str, &str) + Sync)| {
        std::thread::scope(|scope| {
            scope.spawn(|| f("truststore.nodeA", "JKS"));
            scope.spawn(|| f("truststore.nodeB", "PKCS12"));
        });
    };
    each_truststore(&|store, ty| {
        for alias in ["nodeA", "nodeB"] {
            trust(st, store, ty, alias);
        }
    });

    let tls = |ty: &str| {
        format!(
            "keystore = \"keystore\"\nkeystore_password = \"keypass\"\nkeystore_type = \"{ty}\"\n\
             truststore = \"truststore\"\ntruststore_password = \"trustpass\"\n\
             truststore_type = \"{ty}\"\nrequire_client_auth = true\n\
             # Reloads happen on SIGHUP only, where the test says.\nreload_interval = \"1h\"\n"
        )
    };
    let node = |keystore: &str, truststore: &str| {
        let dir = tempfile::tempdir().unwrap();
        distribute(st, keystore, dir.path(), "keystore");
        distribute(st, truststore, dir.path(), "truststore");
        dir
    };
    let backend = Backend::start(Mode::Echo).await;
    let (mut a, line) = Side::spawn(
        node("keystore.nodeA", "truststore.nodeA"),
        &tls("jks"),
        &format!(
            "[[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"{}\"",
            backend.addr
        ),
    );
    let a_addr = address_after(&line, "listener on ");
    let (mut b, line) = Side::spawn(
        node("keystore.nodeB", "truststore.nodeB"),
        &tls("pkcs12"),
        &format!("[[outbound]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{a_addr}\""),
    );
    let b_addr = address_after(&line, "listener on ");

    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Stats::default());
    let mut tasks = Vec::new();
    for seed in 1..=2 {
        tasks.push(tokio::spawn(stream(
            b_addr,
            seed,
            stop.clone(),
            stats.clone(),
        )));
    }
    tasks.push(tokio::spawn(open_connections(
        b_addr,
        stop.clone(),
        stats.clone(),
    )));
    progress(&stats, 20).await;

    // (1) "Add the certificate for each unique generated key pair to an existing Cassandra node's
    // truststore, such that both the old certificates and new certificates exist", then distribute.
    each_truststore(&|store, ty| {
        for alias in ["nodeA2", "nodeB2"] {
            trust(st, store, ty, alias);
        }
    });
    for (side, store) in [(&mut a, "truststore.nodeA"), (&mut b, "truststore.nodeB")] {
        distribute(st, store, &side.dir, "truststore");
        side.reload();
    }
    progress(&stats, 20).await;
    // (2) "Update ... to the new keystore values" on each node.
    for (side, store) in [(&mut a, "keystore.nodeA2"), (&mut b, "keystore.nodeB2")] {
        distribute(st, store, &side.dir, "keystore");
        side.reload();
    }
    progress(&stats, 20).await;
    // (3) The old certificates leave every truststore.
    each_truststore(&|store, ty| {
        for alias in ["nodeA", "nodeB"] {
            keytool(
                st,
                &[
                    "-delete",
                    "-alias",
                    alias,
                    "-keystore",
                    store,
                    "-storetype",
                    ty,
                    "-storepass",
                    "trustpass",
                ],
            );
        }
    });
    for (side, store) in [(&mut a, "truststore.nodeA"), (&mut b, "truststore.nodeB")] {
        distribute(st, store, &side.dir, "truststore");
        side.reload();
    }
    progress(&stats, 20).await;

    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        within("generator end", t).await.unwrap();
    }
    assert_eq!(
        stats.failures.load(Ordering::SeqCst),
        0,
        "failed exchanges during rotation"
    );
    assert!(stats.opened.load(Ordering::SeqCst) >= 80);
    assert!(stats.streamed.load(Ordering::SeqCst) > 0);
    for (name, side) in [("A", &a), ("B", &b)] {
        let m = side.scrape();
        assert_eq!(
            sample(&m, "ringseal_config_reloads_total{result=\"ok\"}"),
            3.0,
            "{name}:\n{m}"
        );
        assert_eq!(
            sample(&m, "ringseal_config_reloads_total{result=\"error\"}"),
            0.0,
            "{name}"
        );
    }
    // Never restarted: the same processes answered throughout.
    a.proc.check_alive().unwrap();
    b.proc.check_alive().unwrap();

    // A node that missed step (2) still presents its old key, which no truststore holds any more.
    let (_late, line) = Side::spawn(
        node("keystore.nodeB", "truststore.nodeB"),
        &tls("pkcs12"),
        &format!("[[outbound]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{a_addr}\""),
    );
    let late_addr = address_after(&line, "listener on ");
    let refused_before = refused_inbound(&a.scrape());
    let exchanged = async {
        let mut s = TcpStream::connect(late_addr).await?;
        s.write_all(b"gossip").await?;
        let mut back = [0u8; 6];
        s.read_exact(&mut back).await?;
        std::io::Result::Ok(back)
    }
    .await;
    assert!(exchanged.is_err(), "the old key got through: {exchanged:?}");
    let line = a.proc.wait_for("refused");
    assert!(line.contains("unknown") || line.contains("CA"), "{line}");
    assert_eq!(refused_inbound(&a.scrape()), refused_before + 1.0);
}

fn refused_inbound(m: &str) -> f64 {
    m.lines()
        .filter(|l| {
            l.starts_with("ringseal_handshakes_total{")
                && l.contains("direction=\"inbound\"")
                && l.contains("result=\"refused\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
