//! systemd's side of the notify protocol (`Type=notify-reload`), played by the test: a datagram socket
//! in `NOTIFY_SOCKET`, the real binary, and the messages in order: READY=1 (the listeners already
//! take handshakes), RELOADING=1 with a CLOCK_MONOTONIC timestamp then READY=1 around each reload
//! (applied or failed), STOPPING=1 at SIGTERM; watchdog keep-alives with WATCHDOG_USEC. Without a
//! reachable socket ringseal runs as usual.

use std::net::SocketAddr;

use ringseal_testkit::backend::{Backend, Mode};
use ringseal_testkit::process::Proc;
use ringseal_testkit::*;
use tokio::net::UnixDatagram;

/// The service manager's end.
struct Manager {
    socket: UnixDatagram,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Manager {
    fn bind() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        Self {
            socket: UnixDatagram::bind(&path).unwrap(),
            path,
            _dir: dir,
        }
    }

    /// The next datagram, one `KEY=value` per line.
    async fn next(&self) -> Vec<String> {
        let mut buf = vec![0u8; 4096];
        let n = within("a notify message", self.socket.recv(&mut buf))
            .await
            .unwrap();
        String::from_utf8(buf[..n].to_vec())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The next datagram that is not a watchdog keep-alive.
    async fn next_state(&self) -> Vec<String> {
        loop {
            let m = self.next().await;
            if m != ["WATCHDOG=1"] {
                return m;
            }
        }
    }
}

fn value<'a>(message: &'a [String], key: &str) -> Option<&'a str> {
    message
        .iter()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd compares MONOTONIC_USEC with.
fn monotonic_usec() -> i128 {
    match sd_notify::NotifyState::monotonic_usec_now().unwrap() {
        sd_notify::NotifyState::MonotonicUsec(u) => u,
        _ => unreachable!(),
    }
}

/// A config with one inbound (to `forward`) and one outbound listener on free ports.
fn write_config(pki: &Pki, forward: SocketAddr) -> (tempfile::TempDir, std::path::PathBuf) {
    sidecar::write_config(
        pki,
        "",
        &format!(
            "\n[[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"{forward}\"\n\n\
             [[outbound]]\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:9\"\n"
        ),
    )
}

/// The addresses `inbound [A], outbound [B]` of a STATUS line.
fn listeners(status: &str, which: &str) -> Vec<SocketAddr> {
    let list = status
        .split(&format!("{which} ["))
        .nth(1)
        .and_then(|s| s.split(']').next())
        .unwrap_or_else(|| panic!("no {which} listeners in STATUS={status}"));
    list.split(' ').map(|a| a.parse().unwrap()).collect()
}

async fn handshake_echo(pki: &Pki, to: SocketAddr) {
    let config = client(pki.roots(), Some(&pki.node));
    let mut tls = within("a handshake", connect(&config, to)).await.unwrap();
    within("an echo", echo(&mut tls, b"ping")).await.unwrap();
}

#[tokio::test]
async fn ready_reloading_ready_stopping_in_order() {
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let manager = Manager::bind();
    let (dir, config) = write_config(&pki, backend.addr);
    let dir_path = dir.path().to_owned();
    let mut proc = Proc::spawn_with(
        &[],
        &config,
        dir,
        &[("NOTIFY_SOCKET", manager.path.to_str().unwrap())],
    );

    // The first thing systemd hears is READY=1, and by then both listeners take connections.
    let ready = manager.next().await;
    assert!(ready.contains(&"READY=1".to_owned()), "{ready:?}");
    let status = value(&ready, "STATUS").expect("a STATUS line").to_owned();
    assert!(
        status.contains("identity \"") && status.contains("no reload yet"),
        "{status}"
    );
    let inbound = listeners(&status, "inbound");
    let outbound = listeners(&status, "outbound");
    assert_eq!((inbound.len(), outbound.len()), (1, 1), "{status}");
    handshake_echo(&pki, inbound[0]).await;
    std::net::TcpStream::connect(outbound[0]).expect("the outbound listener accepts");

    // SIGHUP: RELOADING=1 stamped after the signal, then READY=1 saying the reload was applied.
    let before = monotonic_usec();
    proc.signal("HUP");
    let reloading = manager.next().await;
    assert!(
        reloading.contains(&"RELOADING=1".to_owned()),
        "{reloading:?}"
    );
    let stamp: i128 = value(&reloading, "MONOTONIC_USEC")
        .expect("MONOTONIC_USEC with RELOADING=1")
        .parse()
        .unwrap();
    assert!(
        (before..=monotonic_usec()).contains(&stamp),
        "MONOTONIC_USEC={stamp} is not between the signal ({before}) and now"
    );
    let reloaded = manager.next().await;
    assert!(reloaded.contains(&"READY=1".to_owned()), "{reloaded:?}");
    let status = value(&reloaded, "STATUS").unwrap_or_default();
    assert!(status.contains("applied"), "{status}");

    // A reload that fails still ends in READY=1 (the old material serves), and STATUS says so.
    std::fs::write(dir_path.join("node.crt"), "not a certificate").unwrap();
    proc.signal("HUP");
    let reloading = manager.next().await;
    assert!(
        reloading.contains(&"RELOADING=1".to_owned()),
        "{reloading:?}"
    );
    let failed = manager.next().await;
    assert!(failed.contains(&"READY=1".to_owned()), "{failed:?}");
    let status = value(&failed, "STATUS").unwrap_or_default();
    assert!(
        status.contains("FAILED") && status.contains("node.crt"),
        "{status}"
    );
    assert!(
        !status.contains("PRIVATE KEY") && !status.contains(&pki.node.key_pem),
        "{status}"
    );
    handshake_echo(&pki, inbound[0]).await;

    proc.signal("TERM");
    let stopping = manager.next().await;
    assert!(stopping.contains(&"STOPPING=1".to_owned()), "{stopping:?}");
    assert!(proc.wait_exit().success());
    drop(backend);
}

/// A changed certificate found by the periodic file check (`tls.reload_interval`) is announced like a
/// SIGHUP reload: RELOADING=1 with a fresh timestamp, then READY=1 with the new identity in STATUS.
#[tokio::test]
async fn a_reload_found_by_the_file_check_is_announced_too() {
    let pki = Pki::new();
    let manager = Manager::bind();
    let (dir, config) = write_config(&pki, "127.0.0.1:9".parse().unwrap());
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replacen("[tls]\n", "[tls]\nreload_interval = \"1s\"\n", 1);
    std::fs::write(&config, text).unwrap();
    let dir_path = dir.path().to_owned();
    let mut proc = Proc::spawn_with(
        &[],
        &config,
        dir,
        &[("NOTIFY_SOCKET", manager.path.to_str().unwrap())],
    );
    assert_eq!(manager.next().await[0], "READY=1");
    let before = monotonic_usec();
    let renewed = pki.issue("node1-renewed", &[LOCALHOST]);
    std::fs::write(dir_path.join("node.key"), &renewed.key_pem).unwrap();
    std::fs::write(dir_path.join("node.crt"), &renewed.cert_pem).unwrap();
    // The check may catch the pair half-written once (a failed reload, announced the same way); every
    // READY=1 follows a RELOADING=1, until one carries the new identity.
    within("a reload with the renewed certificate", async {
        loop {
            let reloading = manager.next().await;
            assert_eq!(reloading[0], "RELOADING=1", "{reloading:?}");
            let stamp: i128 = value(&reloading, "MONOTONIC_USEC")
                .unwrap()
                .parse()
                .unwrap();
            assert!(
                stamp >= before,
                "MONOTONIC_USEC={stamp} before the change ({before})"
            );
            let ready = manager.next().await;
            assert_eq!(ready[0], "READY=1", "{ready:?}");
            if value(&ready, "STATUS")
                .unwrap()
                .contains("CN=node1-renewed")
            {
                break;
            }
        }
    })
    .await;
    proc.signal("TERM");
    assert_eq!(manager.next().await[0], "STOPPING=1");
    assert!(proc.wait_exit().success());
}

/// With WATCHDOG_USEC (and WATCHDOG_PID naming ringseal itself, as systemd sets it) keep-alives come
/// at half the interval, also between the state messages.
#[tokio::test]
async fn watchdog_keep_alives_when_asked() {
    let pki = Pki::new();
    let manager = Manager::bind();
    let (dir, config) = write_config(&pki, "127.0.0.1:9".parse().unwrap());
    // `exec` keeps the shell's pid, so $$ is ringseal's pid: what systemd puts in WATCHDOG_PID.
    let mut proc = Proc::spawn_with(
        &["sh", "-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\""],
        &config,
        dir,
        &[
            ("NOTIFY_SOCKET", manager.path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    within("READY=1 and three keep-alives", async {
        let (mut keep_alives, mut ready) = (0, false);
        while keep_alives < 3 || !ready {
            let m = manager.next().await;
            ready |= m.contains(&"READY=1".to_owned());
            keep_alives += usize::from(m == ["WATCHDOG=1"]);
        }
    })
    .await;
    proc.signal("TERM");
    assert_eq!(manager.next_state().await[0], "STOPPING=1");
    assert!(proc.wait_exit().success());
}

/// WATCHDOG_PID naming another process (a variable inherited from a parent) means: not ours, no
/// keep-alives. The messages up to STOPPING=1 carry none.
#[tokio::test]
async fn watchdog_of_another_process_is_not_fed() {
    let pki = Pki::new();
    let manager = Manager::bind();
    let (dir, config) = write_config(&pki, "127.0.0.1:9".parse().unwrap());
    let mut proc = Proc::spawn_with(
        &[],
        &config,
        dir,
        &[
            ("NOTIFY_SOCKET", manager.path.to_str().unwrap()),
            ("WATCHDOG_USEC", "20000"),
            ("WATCHDOG_PID", "1"),
        ],
    );
    let mut seen = vec![manager.next().await];
    proc.signal("HUP");
    seen.push(manager.next().await);
    seen.push(manager.next().await);
    proc.signal("TERM");
    seen.push(manager.next().await);
    assert!(proc.wait_exit().success());
    let firsts: Vec<&str> = seen.iter().map(|m| m[0].as_str()).collect();
    assert_eq!(
        firsts,
        ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"],
        "{seen:?}"
    );
}

/// NOTIFY_SOCKET unset, or naming a socket that does not exist: start, reload and stop as usual.
#[tokio::test]
async fn runs_without_a_service_manager() {
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    for socket in [
        None,
        Some("/nonexistent/ringseal-notify"),
        Some("@no-such-abstract"),
    ] {
        let (dir, config) = write_config(&pki, backend.addr);
        let env: Vec<(&str, &str)> = socket.map(|s| ("NOTIFY_SOCKET", s)).into_iter().collect();
        let mut proc = Proc::spawn_with(&[], &config, dir, &env);
        let line = proc.wait_for("starting inbound mTLS listener");
        handshake_echo(&pki, process::address_after(&line, "listener on ")).await;
        proc.signal("HUP");
        proc.wait_for("reloaded ");
        proc.signal("TERM");
        let status = proc.wait_exit();
        assert!(status.success(), "NOTIFY_SOCKET={socket:?}: {status}");
    }
}

/// Kills a process this test did not spawn itself (a successor) when the test ends, however it ends.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}

/// SIGUSR2, the unit's upgrade (`systemctl kill --kill-whom=main --signal=SIGUSR2 ringseal`): the
/// process starts its successor (the same binary and arguments), which takes the listener over the
/// hand-over socket and says READY=1 with MAINPID= its own pid; the old process exits 0 without
/// STOPPING=1 (which would tell systemd that the service stops). A client connecting all along is
/// never refused, and the watchdog keep-alives go on from the successor after the old one is gone.
// Multi-threaded: `Proc`'s waits block their thread, and the client loop must go on meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_starts_a_successor_that_becomes_the_main_process() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let pki = Arc::new(Pki::new());
    let backend = Backend::start(Mode::Echo).await;
    let manager = Manager::bind();
    let (dir, config) = write_config(&pki, backend.addr);
    let socket = dir.path().join("handover.sock");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}\n[handover]\nsocket = \"{}\"\n", socket.display()),
    )
    .unwrap();
    // `exec` keeps the shell's pid: WATCHDOG_PID names ringseal, as systemd sets it.
    let mut proc = Proc::spawn_with(
        &["sh", "-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\""],
        &config,
        dir,
        &[
            ("NOTIFY_SOCKET", manager.path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let old = proc.child.id();
    let ready = manager.next_state().await;
    assert!(ready.contains(&"READY=1".to_owned()), "{ready:?}");
    assert_eq!(value(&ready, "MAINPID"), Some(old.to_string().as_str()));
    let inbound = listeners(value(&ready, "STATUS").unwrap(), "inbound")[0];

    let (ok, failures, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(std::sync::Mutex::new(Vec::new())),
        Arc::new(AtomicBool::new(false)),
    );
    let client_loop = {
        let (pki, ok, failures, stop) = (pki.clone(), ok.clone(), failures.clone(), stop.clone());
        tokio::spawn(async move {
            let config = client(pki.roots(), Some(&pki.node));
            while !stop.load(Ordering::SeqCst) {
                let result = within("a handshake and an echo", async {
                    let mut tls = connect(&config, inbound).await?;
                    echo(&mut tls, b"ping").await
                })
                .await;
                match result {
                    Ok(()) => ok.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        failures.lock().unwrap().push(e.to_string());
                        0
                    }
                };
            }
        })
    };
    within("connections before the upgrade", async {
        while ok.load(Ordering::SeqCst) < 5 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;

    proc.signal("USR2");
    let ready = within("READY=1 from the successor", async {
        loop {
            let m = manager.next_state().await;
            assert!(
                !m.contains(&"STOPPING=1".to_owned()),
                "the old process told systemd it stops: {m:?}"
            );
            if m.contains(&"READY=1".to_owned()) {
                return m;
            }
        }
    })
    .await;
    let new: u32 = value(&ready, "MAINPID")
        .expect("MAINPID with READY=1")
        .parse()
        .unwrap();
    let _successor = KillOnDrop(new);

    assert_ne!(new, old, "READY=1 came from a new process: {ready:?}");
    proc.wait_for(&format!("took over from pid {old}"));
    let status = proc.wait_exit();
    assert!(status.success(), "the old process exited {status}");
    let after_exit = ok.load(Ordering::SeqCst);
    within(
        "connections and keep-alives after the old process exited",
        async {
            let mut keep_alives = 0;
            while keep_alives < 3 || ok.load(Ordering::SeqCst) < after_exit + 5 {
                let m = manager.next().await;
                assert!(!m.contains(&"STOPPING=1".to_owned()), "{m:?}");
                keep_alives += usize::from(m == ["WATCHDOG=1"]);
            }
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    client_loop.await.unwrap();
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} connections failed across the upgrade: {failures:?}",
        failures.len()
    );
    // The successor is the service now: SIGTERM stops it as usual.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &new.to_string()])
        .status();
    assert_eq!(manager.next_state().await[0], "STOPPING=1");
}

/// Without a hand-over socket SIGUSR2 cannot upgrade: one warning, and the process goes on serving
/// (SIGUSR2's default action would have killed it).
#[tokio::test]
async fn sigusr2_without_a_handover_socket_is_refused_and_harmless() {
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let (dir, config) = write_config(&pki, backend.addr);
    let mut proc = Proc::spawn_with(&[], &config, dir, &[]);
    let line = proc.wait_for("starting inbound mTLS listener");
    let inbound = ringseal_testkit::process::address_after(&line, "listener on ");
    proc.signal("USR2");
    let warning = proc.wait_for("SIGUSR2");
    assert!(
        warning.contains("hand-over is off") && warning.contains("[handover] socket"),
        "{warning}"
    );
    handshake_echo(&pki, inbound).await;
    proc.check_alive().unwrap();
}
