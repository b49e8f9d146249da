//! Process hand-over (`[handover]`): real `ringseal run` processes taking the listening sockets over
//! from each other while a client connects continuously, and the ways a hand-over goes wrong.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringseal_testkit::process::{Lines, Proc, address_after, ringseal_binary, ringseal_run};
use ringseal_testkit::*;
use tokio::io::AsyncWriteExt;

const HANDOVER: &str = "[handover]\nsocket = \"handover.sock\"\n";

/// A directory with the PKI, configs and the hand-over socket; an echo backend; a runtime for it.
struct Setup {
    dir: tempfile::TempDir,
    pki: Pki,
    backend: Backend,
    rt: tokio::runtime::Runtime,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        pki.write(dir.path());
        let rt = tokio::runtime::Runtime::new().unwrap();
        let backend = rt.block_on(Backend::start(Mode::Echo));
        Self {
            dir,
            pki,
            backend,
            rt,
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("handover.sock")
    }

    /// Writes `NAME.toml`: `head` (e.g. the `[handover]` table), `[tls]`, one inbound listener per
    /// (name, listen) in front of the echo backend.
    fn config(&self, name: &str, head: &str, inbound: &[(&str, &str)]) -> PathBuf {
        let mut text = format!("{head}{TLS_TABLE}\n[limits]\nshutdown_grace = \"5s\"\n");
        for (n, listen) in inbound {
            text.push_str(&format!(
                "\n[[inbound]]\nname = \"{n}\"\nlisten = \"{listen}\"\nforward = \"{}\"\n",
                self.backend.addr
            ));
        }
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn spawn(&self, config: &Path, env: &[(&str, &str)]) -> Proc {
        let mut cmd = ringseal_run(&ringseal_binary(), &[], config);
        cmd.envs(env.iter().copied());
        Proc::launch("ringseal", cmd, Lines::All).unwrap()
    }

    fn client(&self) -> Arc<rustls::ClientConfig> {
        client(self.pki.roots(), Some(&self.pki.node))
    }

    /// One TLS connection with an echo through the sidecar at `addr`.
    fn roundtrip(&self, addr: SocketAddr) -> std::io::Result<()> {
        let client = self.client();
        self.rt
            .block_on(within("roundtrip", roundtrip(&client, LOCALHOST, addr)))
    }
}

/// A client connecting and echoing through `addr` continuously, recording every failure.
struct ConnectLoop {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ConnectLoop {
    fn start(setup: &Setup, addr: SocketAddr) -> Self {
        let (stop, ok, errors) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(Mutex::new(Vec::new())),
        );
        let client = setup.client();
        let (s, o, e) = (stop.clone(), ok.clone(), errors.clone());
        let task = setup.rt.spawn(async move {
            while !s.load(Ordering::SeqCst) {
                match tokio::time::timeout(
                    Duration::from_secs(10),
                    roundtrip(&client, LOCALHOST, addr),
                )
                .await
                {
                    Ok(Ok(())) => {
                        o.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(Err(err)) => e.lock().unwrap().push(format!("{err} ({:?})", err.kind())),
                    Err(_) => e.lock().unwrap().push("no answer within 10s".into()),
                }
            }
        });
        Self {
            stop,
            ok,
            errors,
            task,
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until `n` more connections have succeeded, or any has failed.
    fn wait_progress(&self, n: u64) {
        let want = self.ok() + n;
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.ok() < want && self.errors.lock().unwrap().is_empty() {
            assert!(
                Instant::now() < deadline,
                "the connect loop made no progress"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits (bounded) until a connection has failed; its error.
    fn wait_error(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(e) = self.errors.lock().unwrap().first() {
                return e.clone();
            }
            assert!(Instant::now() < deadline, "no connection failed");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn finish(self, setup: &Setup) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let (ok, errors) = (self.ok.clone(), self.errors.clone());
        setup
            .rt
            .block_on(async { within("connect loop", self.task).await.unwrap() });
        (ok.load(Ordering::SeqCst), errors.lock().unwrap().clone())
    }
}

fn pid(p: &Proc) -> u32 {
    p.child.id()
}

/// Starts `config` and waits until it accepts and serves its hand-over socket; its first inbound
/// address.
fn start(setup: &Setup, config: &Path, env: &[(&str, &str)]) -> (Proc, SocketAddr) {
    let mut p = setup.spawn(config, env);
    let line = p.wait_for("starting inbound mTLS listener");
    p.wait_for("hand-over socket");
    (p, address_after(&line, "listener on "))
}

/// 20 hand-overs in a row while a client connects and echoes continuously: not one connect refused,
/// not one connection reset. (`restart_without_handover_refuses` shows the loop notices a gap.)
#[test]
fn twenty_handovers_refuse_and_reset_nothing() {
    let setup = Setup::new();
    let config = setup.config("ringseal", HANDOVER, &[("internode", "127.0.0.1:0")]);
    let (mut old, addr) = start(&setup, &config, &[]);
    let lp = ConnectLoop::start(&setup, addr);
    lp.wait_progress(5);
    for i in 0..20 {
        let mut new = setup.spawn(&config, &[]);
        let line = new.wait_for("took over from pid");
        assert!(
            line.contains(&format!("took over from pid {}: 1 listeners", pid(&old))),
            "{line}"
        );
        old.wait_for(&format!("handed over to pid {}", pid(&new)));
        assert!(
            old.wait_exit().success(),
            "hand-over {i}: the old process failed"
        );
        new.wait_for("hand-over socket");
        // Connections keep succeeding through the new process before the next hand-over.
        lp.wait_progress(3);
        old = new;
    }
    let (ok, errors) = lp.finish(&setup);
    assert!(errors.is_empty(), "after {ok} connections: {errors:?}");
    // Still the same address, in one process: the listening socket moved 20 times.
    assert!(setup.roundtrip(addr).is_ok());
}

/// The control for the test above: a restart without hand-over (old stopped, then new started)
/// refuses connects, and the connect loop sees it.
#[test]
fn restart_without_handover_refuses() {
    let setup = Setup::new();
    let config = setup.config("plain", "", &[("internode", "127.0.0.1:0")]);
    let mut old = setup.spawn(&config, &[]);
    let addr = address_after(
        &old.wait_for("starting inbound mTLS listener"),
        "listener on ",
    );
    old.wait_for("hand-over off");
    let lp = ConnectLoop::start(&setup, addr);
    lp.wait_progress(5);
    old.signal("TERM");
    old.wait_exit();
    let error = lp.wait_error();
    assert!(error.contains("ConnectionRefused"), "{error}");
    let config = setup.config(
        "plain2",
        "",
        &[("internode", &format!("127.0.0.1:{}", addr.port()))],
    );
    let mut new = setup.spawn(&config, &[]);
    new.wait_for("starting inbound mTLS listener");
    lp.finish(&setup);
}

/// Old A + C, new A + B: A is handed over, B bound by the new process, C closed by the old one (with
/// a line saying so).
#[test]
fn partial_overlap_hands_over_the_shared_listener_only() {
    let setup = Setup::new();
    let config = setup.config(
        "old",
        HANDOVER,
        &[("a", "127.0.0.1:0"), ("c", "127.0.0.1:0")],
    );
    let mut old = setup.spawn(&config, &[]);
    let a = address_after(
        &old.wait_for("starting inbound mTLS listener"),
        "listener on ",
    );
    let c = address_after(
        &old.wait_for("starting inbound mTLS listener"),
        "listener on ",
    );
    old.wait_for("hand-over socket");
    let new_config = setup.config(
        "new",
        HANDOVER,
        &[("a", &a.to_string()), ("b", "127.0.0.1:0")],
    );
    let mut new = setup.spawn(&new_config, &[]);
    let line = new.wait_for("taking over from pid");
    assert!(line.contains("received 1 listening socket"), "{line}");
    new.wait_for(&format!("listener on {a}"));
    let b = address_after(
        &new.wait_for("starting inbound mTLS listener"),
        "listener on ",
    );
    new.wait_for("took over from pid");
    old.wait_for(&format!(
        "closing the inbound listener on {c}: pid {}",
        pid(&new)
    ));
    let line = old.wait_for("handed over to pid");
    assert!(line.contains(": 1 listeners"), "{line}");
    assert!(old.wait_exit().success());
    assert!(setup.roundtrip(a).is_ok());
    assert!(setup.roundtrip(b).is_ok());
    let gone = setup.roundtrip(c).unwrap_err();
    assert_eq!(gone.kind(), std::io::ErrorKind::ConnectionRefused, "{gone}");
}

/// A socket file left by a SIGKILLed process: the next one starts normally and replaces it (and can
/// hand over from there).
#[test]
fn a_stale_socket_is_replaced() {
    let setup = Setup::new();
    let config = setup.config("ringseal", HANDOVER, &[("internode", "127.0.0.1:0")]);
    let (mut dead, addr) = start(&setup, &config, &[]);
    dead.signal("KILL");
    dead.wait_exit();
    assert!(setup.socket().exists(), "SIGKILL leaves the socket file");
    let config = setup.config(
        "next",
        HANDOVER,
        &[("internode", &format!("127.0.0.1:{}", addr.port()))],
    );
    let mut next = setup.spawn(&config, &[]);
    next.wait_for("is stale");
    next.wait_for("hand-over socket");
    assert!(setup.roundtrip(addr).is_ok());
    // Replaced: the next process can take over from it.
    let mut third = setup.spawn(&config, &[]);
    third.wait_for(&format!("took over from pid {}", pid(&next)));
    assert!(next.wait_exit().success());
}

/// Two new processes for the same old one: the first takes over, the second exits with one error
/// line naming the first, and binds nothing.
#[test]
fn two_new_processes_race_one_wins() {
    let setup = Setup::new();
    let release = setup.dir.path().join("release");
    let pause = format!("hello:{}", release.display());
    let config = setup.config("ringseal", HANDOVER, &[("internode", "127.0.0.1:0")]);
    let (mut old, addr) = start(&setup, &config, &[("RINGSEAL_TEST_HANDOVER_PAUSE", &pause)]);
    let mut first = setup.spawn(&config, &[]);
    old.wait_for("paused at hello");
    let mut second = setup.spawn(&config, &[]);
    let status = second.wait_exit();
    assert_eq!(status.code(), Some(1));
    let lines = second.drain(Duration::from_millis(200)).join("\n");
    assert!(
        lines.contains(&format!(
            "pid {} is already handing over to pid {}",
            pid(&old),
            pid(&first)
        )),
        "{lines}"
    );
    assert!(!lines.contains("starting inbound"), "{lines}");
    std::fs::write(&release, b"").unwrap();
    first.wait_for(&format!("took over from pid {}", pid(&old)));
    assert!(old.wait_exit().success());
    assert!(setup.roundtrip(addr).is_ok());
}

/// The old process SIGKILLed right after sending its listening sockets: the new one keeps serving
/// them, and owns the hand-over socket.
#[test]
fn old_killed_mid_handover_new_serves() {
    let setup = Setup::new();
    let release = setup.dir.path().join("release");
    let pause = format!("listeners:{}", release.display());
    let config = setup.config("ringseal", HANDOVER, &[("internode", "127.0.0.1:0")]);
    let (mut old, addr) = start(&setup, &config, &[("RINGSEAL_TEST_HANDOVER_PAUSE", &pause)]);
    let mut new = setup.spawn(&config, &[]);
    old.wait_for("paused at listeners");
    new.wait_for("starting inbound mTLS listener");
    old.signal("KILL");
    old.wait_exit();
    new.wait_for("did not finish");
    new.wait_for("hand-over socket");
    assert!(setup.roundtrip(addr).is_ok());
    assert_eq!(listening_sockets(addr.port()), 1, "one listening socket");
    // And it hands over in turn.
    let mut next = setup.spawn(&config, &[]);
    next.wait_for(&format!("took over from pid {}", pid(&new)));
}

/// The new process SIGKILLed after the old one stopped accepting: the old one resumes and keeps
/// serving everything.
#[test]
fn new_killed_mid_handover_old_resumes() {
    let setup = Setup::new();
    let release = setup.dir.path().join("release");
    let pause = format!("stopped:{}", release.display());
    let config = setup.config("ringseal", HANDOVER, &[("internode", "127.0.0.1:0")]);
    let (mut old, addr) = start(&setup, &config, &[("RINGSEAL_TEST_HANDOVER_PAUSE", &pause)]);
    let mut new = setup.spawn(&config, &[]);
    old.wait_for("paused at stopped");
    new.signal("KILL");
    new.wait_exit();
    std::fs::write(&release, b"").unwrap();
    old.wait_for("accepting again on every listener");
    assert!(setup.roundtrip(addr).is_ok());
    old.check_alive().unwrap();
    // The failed attempt does not block the next one.
    std::fs::remove_file(&release).unwrap();
    let mut next = setup.spawn(&config, &[]);
    std::fs::write(&release, b"").unwrap();
    next.wait_for(&format!("took over from pid {}", pid(&old)));
    assert!(old.wait_exit().success());
}

/// Another uid cannot take over: the socket is 0600 (connect refused with EACCES), and with the file
/// opened to everyone the old process refuses it by its credentials, naming its uid.
#[test]
fn another_uid_is_refused() {
    if !other_uid_available() {
        return;
    }
    let setup = Setup::new();
    // The directory must be reachable for uid 65534 to get as far as the socket's own mode.
    chmod(setup.dir.path(), 0o755);
    let config = setup.config("ringseal", HANDOVER, &[("internode", "127.0.0.1:0")]);
    let (mut old, addr) = start(&setup, &config, &[]);
    // A config and PKI that uid 65534 can read, naming the same socket.
    let theirs = tempfile::tempdir().unwrap();
    setup.pki.write(theirs.path());
    let their_config = theirs.path().join("ringseal.toml");
    std::fs::write(
        &their_config,
        format!(
            "[handover]\nsocket = \"{}\"\n{TLS_TABLE}\n[[inbound]]\nlisten = \"{addr}\"\nforward = \"{}\"\n",
            setup.socket().display(),
            setup.backend.addr
        ),
    )
    .unwrap();
    for entry in std::fs::read_dir(theirs.path()).unwrap() {
        std::os::unix::fs::chown(entry.unwrap().path(), Some(65534), Some(65534)).unwrap();
    }
    std::os::unix::fs::chown(theirs.path(), Some(65534), Some(65534)).unwrap();
    let as_nobody = || {
        let mut cmd = ringseal_run(
            &ringseal_binary(),
            &[
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ],
            &their_config,
        );
        cmd.env("HOME", "/");
        let mut p = Proc::launch("ringseal as 65534", cmd, Lines::All).unwrap();
        let status = p.wait_exit();
        (status, p.drain(Duration::from_millis(200)).join("\n"))
    };
    let (status, lines) = as_nobody();
    assert_eq!(status.code(), Some(1), "{lines}");
    assert!(lines.contains("Permission denied"), "{lines}");
    chmod(&setup.socket(), 0o666);
    let (status, lines) = as_nobody();
    assert_eq!(status.code(), Some(1), "{lines}");
    assert!(
        lines.contains("runs as uid 0, this one as uid 65534"),
        "{lines}"
    );
    old.wait_for("of uid 65534: only a process of this one's uid 0 may take over");
    old.check_alive().unwrap();
    assert!(setup.roundtrip(addr).is_ok());
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Root and setpriv(1) (util-linux), to run a process as uid 65534; outside CI their absence skips.
fn other_uid_available() -> bool {
    let root = rustix_uid() == 0;
    let setpriv = Command::new("setpriv").arg("--version").output().is_ok();
    if root && setpriv {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "in CI this test must run: it needs root and setpriv"
    );
    eprintln!("skipping: needs root and setpriv(1) to run a process as uid 65534");
    false
}

fn rustix_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective uid.
    std::fs::metadata("/proc/self").unwrap().uid()
}

/// How many listening sockets /proc/net/tcp shows on `port`.
fn listening_sockets(port: u16) -> usize {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let want = format!(":{port:04X}");
    text.lines()
        .skip(1)
        .filter(|l| {
            let mut f = l.split_whitespace();
            let local = f.nth(1).unwrap_or("");
            let state = f.nth(1).unwrap_or("");
            local.ends_with(&want) && state == "0A"
        })
        .count()
}

/// Permissive plaintext connections (spliced) streaming both ways survive 3 hand-overs byte for byte,
/// neither end seeing a close: each moves to the new process. A user-space TLS connection stays in
/// the first process, which exits once it ends. The logs and the new process's metrics say so.
#[test]
fn spliced_connections_move_and_tls_ones_stay() {
    use ringseal_testkit::stream::expected_hash;
    let setup = Setup::new();
    let config = setup.config(
        "ringseal",
        &format!("mode = \"permissive\"\n{HANDOVER}[metrics]\nlisten = \"127.0.0.1:0\"\n"),
        &[("internode", "127.0.0.1:0")],
    );
    let (mut first, addr) = start(&setup, &config, &[]);
    let line = first.seen.iter().find(|l| l.contains("serving metrics on"));
    let metrics = address_after(line.expect("a metrics line"), "metrics on ");
    // The user-space TLS connection: open, verified, idle.
    let client = setup.client();
    let mut tls = setup.rt.block_on(async {
        let mut tls = within("tls connect", connect(&client, addr)).await.unwrap();
        within("tls echo", echo(&mut tls, b"before")).await.unwrap();
        tls
    });
    // Two plaintext connections, each writing a seeded stream in quarters (the next quarter once the
    // hand-over of that phase is done) and reading its echo.
    let (phase, phases) = tokio::sync::watch::channel(0usize);
    let streams: Vec<_> = (0..2u64)
        .map(|seed| {
            let (watched, task) = stream(&setup, addr, seed + 1, phases.clone());
            (seed + 1, watched, task)
        })
        .collect();
    let wait_progress = |at: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        for (_, watched, _) in &streams {
            while *watched.borrow() < at {
                assert!(Instant::now() < deadline, "no echo progress");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    };
    let mut old = first.child.id();
    let mut current: Option<Proc> = None;
    for round in 1..=3 {
        // Each stream's quarter has been echoed: its relay runs (spliced) before the hand-over.
        wait_progress(round * LEN / 4);
        let mut new = setup.spawn(&config, &[]);
        let line = new.wait_for(&format!("took over from pid {old}"));
        let stay = if round == 1 { 1 } else { 0 };
        assert!(
            line.contains(&format!("2 connections moved here, {stay} stay with it")),
            "{line}"
        );
        let line = match current.as_mut() {
            None => first.wait_for(&format!("handed over to pid {}", pid(&new))),
            Some(p) => p.wait_for(&format!("handed over to pid {}", pid(&new))),
        };
        assert!(
            line.contains(&format!("2 connections moved, {stay} stay")),
            "{line}"
        );
        if let Some(mut p) = current.take() {
            assert!(p.wait_exit().success());
        }
        // The new process counts what its predecessor moved and kept (the old one's /metrics is
        // the new one's now); polled, as the old one's endpoint may answer a last scrape.
        let counted = |result| {
            let exposition = scrape(metrics);
            let labels = [("listener", "internode"), ("result", result)];
            samples(&exposition, "ringseal_handover_connections_total", &labels)
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while counted("moved") != 2.0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!((counted("moved"), counted("stayed")), (2.0, stay as f64));
        new.wait_for("hand-over socket");
        phase.send_replace(round);
        old = pid(&new);
        current = Some(new);
    }
    // The last process counts the moved connections as active, not as new ones.
    let exposition = scrape(metrics);
    let active = samples(
        &exposition,
        "ringseal_connections_active",
        &[("tls", "false")],
    );
    assert_eq!(active, 2.0, "{exposition}");
    let total = samples(
        &exposition,
        "ringseal_connections_total",
        &[("tls", "false")],
    );
    assert_eq!(total, 0.0, "{exposition}");
    for (seed, _, task) in streams {
        let (sink, during) = setup.rt.block_on(within("stream", task)).unwrap();
        assert_eq!(
            during, None,
            "stream {seed} saw its end during the hand-overs"
        );
        assert_eq!(sink.end, Some(Ok(())));
        assert_eq!(sink.len, LEN);
        assert_eq!(sink.sha256(), expected_hash(seed, LEN), "stream {seed}");
    }
    assert_eq!(setup.backend.accepted(), 3, "no connection was made again");
    // The TLS connection stayed with the first process, which still relays it, and exits after it.
    setup.rt.block_on(async {
        within("tls echo", echo(&mut tls, b"after")).await.unwrap();
        tls.shutdown().await.unwrap();
    });
    first.wait_for("all connections finished; exiting");
    assert!(first.wait_exit().success());
}

/// The length of [`stream`]'s streams.
const LEN: usize = 4 * ringseal_testkit::stream::MIB;

/// How a [`stream`] ended: what came back, and whether it had ended before all of it was echoed.
type Streamed = (
    ringseal_testkit::stream::Sink,
    Option<Result<(), std::io::ErrorKind>>,
);

/// A plaintext connection to `addr` writing a seeded stream (`seed`, [`LEN`]) in quarters, the next
/// one once `phases` reaches its number, and reading its echo; `FIN` only once all of it is back.
/// Returns the echo's progress and the task.
fn stream(
    setup: &Setup,
    addr: SocketAddr,
    seed: u64,
    mut phases: tokio::sync::watch::Receiver<usize>,
) -> (
    tokio::sync::watch::Receiver<usize>,
    tokio::task::JoinHandle<Streamed>,
) {
    use ringseal_testkit::stream::{Seeded, Sink};

    let (progress, watched) = tokio::sync::watch::channel(0usize);
    let task = setup.rt.spawn(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut r, mut w) = tcp.into_split();
        let (all, echoed) = tokio::sync::oneshot::channel();
        let reader = tokio::spawn(async move {
            let mut sink = Sink::default();
            sink.read(&mut r, Some(LEN), Some(&progress)).await;
            let during = sink.end;
            let _ = all.send(());
            // Both ends close only now: the echo of our FIN.
            sink.read(&mut r, None, None).await;
            (sink, during)
        });
        let mut data = Seeded::new(seed, LEN);
        let mut written = 0;
        while let Some(chunk) = data.next_chunk() {
            w.write_all(chunk).await.unwrap();
            written += chunk.len();
            let quarter = written / (LEN / 4);
            if quarter < 4 && written % (LEN / 4) == 0 {
                phases.wait_for(|p| *p >= quarter).await.unwrap();
            }
        }
        // Everything echoed before our FIN, so that no end is seen during the hand-overs.
        let _ = within("the whole echo", echoed).await;
        w.shutdown().await.unwrap();
        within("echo to the end", reader).await.unwrap()
    });
    (watched, task)
}

/// The new process SIGKILLed after a connection was sent to it but before it acknowledged it: the
/// old process resumes the connection itself (byte for byte, no end seen) and keeps serving.
#[test]
fn new_killed_before_acknowledging_a_connection_old_resumes_it() {
    use ringseal_testkit::stream::expected_hash;
    let setup = Setup::new();
    let release = setup.dir.path().join("release");
    let pause = format!("adopt:{}", release.display());
    let config = setup.config(
        "ringseal",
        &format!("mode = \"permissive\"\n{HANDOVER}"),
        &[("internode", "127.0.0.1:0")],
    );
    let (mut old, addr) = start(&setup, &config, &[]);
    let (phase, phases) = tokio::sync::watch::channel(0usize);
    let (watched, task) = stream(&setup, addr, 7, phases);
    let deadline = Instant::now() + Duration::from_secs(20);
    while *watched.borrow() < LEN / 4 {
        assert!(Instant::now() < deadline, "no echo progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut new = setup.spawn(&config, &[("RINGSEAL_TEST_HANDOVER_PAUSE", &pause)]);
    new.wait_for("paused at adopt");
    new.signal("KILL");
    new.wait_exit();
    let line = old.wait_for("accepting again on every listener");
    assert!(line.contains("failed at Adopted"), "{line}");
    phase.send_replace(3);
    let (sink, during) = setup.rt.block_on(within("stream", task)).unwrap();
    assert_eq!(during, None, "the stream saw its end");
    assert_eq!(sink.end, Some(Ok(())));
    assert_eq!((sink.len, sink.sha256()), (LEN, expected_hash(7, LEN)));
    assert_eq!(setup.backend.accepted(), 1, "no connection was made again");
    assert!(setup.roundtrip(addr).is_ok());
    old.check_alive().unwrap();
}

/// A new process whose config differs in what the moved connections depend on still takes them
/// (they were verified under the old config, as a reload allows) and says which listener and which
/// part differ; with the same config it says nothing of the kind.
#[test]
fn a_changed_config_takes_the_connections_and_says_so() {
    use ringseal_testkit::stream::expected_hash;
    let setup = Setup::new();
    let head = format!("mode = \"permissive\"\n{HANDOVER}");
    let config = setup.config("ringseal", &head, &[("internode", "127.0.0.1:0")]);
    let changed = setup.dir.path().join("changed.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &changed,
        text.replacen("[tls]\n", "[tls]\nprotocols = [\"TLSv1.3\"]\n", 1),
    )
    .unwrap();
    let (mut first, addr) = start(&setup, &config, &[]);
    let (phase, phases) = tokio::sync::watch::channel(0usize);
    let (watched, task) = stream(&setup, addr, 9, phases);
    let wait_progress = |at: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while *watched.borrow() < at {
            assert!(Instant::now() < deadline, "no echo progress");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_progress(LEN / 4);
    // The same config: moved, and no word of a difference.
    let mut second = setup.spawn(&config, &[]);
    let line = second.wait_for(&format!("took over from pid {}", pid(&first)));
    assert!(line.contains("1 connections moved here"), "{line}");
    assert!(!line.contains("differs"), "{line}");
    assert!(first.wait_exit().success());
    second.wait_for("hand-over socket");
    phase.send_replace(1);
    wait_progress(LEN / 2);
    // Another protocol list: moved all the same, and the line names the listener and the part.
    let mut third = setup.spawn(&changed, &[]);
    let line = third.wait_for(&format!("took over from pid {}", pid(&second)));
    assert!(line.contains("1 connections moved here"), "{line}");
    assert!(
        line.contains("differs from pid")
            && line.contains("inbound listener \"internode\" (policy)")
            && line.contains("keep what they were verified under"),
        "{line}"
    );
    assert!(second.wait_exit().success());
    third.wait_for("hand-over socket");
    phase.send_replace(3);
    let (sink, during) = setup.rt.block_on(within("stream", task)).unwrap();
    assert_eq!(during, None, "the stream saw its end during the hand-overs");
    assert_eq!(sink.len, LEN);
    assert_eq!(sink.sha256(), expected_hash(9, LEN));
}
