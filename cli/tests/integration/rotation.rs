//! The certificate rotation of `shared/seeds/002` (add the new CA everywhere, switch identities, remove
//! the old CA), done live on two sidecars (A inbound, B outbound towards A) by rewriting files and
//! sending SIGHUP, while a generator keeps opening connections and streaming through long-lived ones:
//! no failed handshake, no dropped or corrupted connection, no restart.

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
        std::fs::write(
            path.join("ringseal.toml"),
            format!(
                "[tls]\ncert = \"node.crt\"\nkey = \"node.key\"\nca = \"ca.crt\"\n\n\
                 [metrics]\nlisten = \"127.0.0.1:0\"\n\n{listeners}\n"
            ),
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
