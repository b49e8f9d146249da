//! The real binary: start-up lines, refusal log lines and their rate limit, a dead backend, descriptor
//! exhaustion, and SIGTERM's drain-then-cut.

use std::process::Command;
use std::time::Duration;

use ringseal_testkit::process::Proc;
use ringseal_testkit::*;

fn count(lines: &[String], needle: &str) -> usize {
    lines.iter().filter(|l| l.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_line_refusal_lines_and_their_rate_limit() {
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let (mut proc, addr) = Proc::start(&pki, backend.addr, "", &[]);
    let start = proc.seen.last().unwrap().clone();
    for part in [
        format!("forwarding to {}", backend.addr).as_str(),
        "protocols TLSv1.3,TLSv1.2",
        "TLS_AES_256_GCM_SHA384",
        "client auth required",
        "endpoint verification off",
    ] {
        assert!(start.contains(part), "{part:?} missing from {start:?}");
    }

    // 20 identical refusals from one address: one warn line.
    let anonymous = client(pki.roots(), None);
    for _ in 0..20 {
        assert!(roundtrip(&anonymous, LOCALHOST, addr).await.is_err());
    }
    let line = proc.wait_for("refused 127.0.0.1");
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("no client certificate"), "{line}");
    assert!(
        line.contains("reason=\"no_certificate\"") || line.contains("reason=no_certificate"),
        "{line}"
    );
    // A different reason is a different line.
    let other = ringseal::pki::Ca::new("OtherCluster").unwrap();
    let stranger = other
        .issue(&ringseal::pki::NodeSpec::new("x", &[LOCALHOST]))
        .unwrap();
    let impostor = client(pki.roots(), Some(&stranger));
    assert!(roundtrip(&impostor, LOCALHOST, addr).await.is_err());
    let line = proc.wait_for("unknown CA");
    assert!(line.contains("refused 127.0.0.1"), "{line}");
    // A CA regenerated under the same name: named as such.
    let twin = Pki::new();
    let forged = client(pki.roots(), Some(&twin.node));
    assert!(roundtrip(&forged, LOCALHOST, addr).await.is_err());
    let line = proc.wait_for("reason=\"bad_signature\"");
    assert!(line.contains("regenerated under the same name"), "{line}");
    // And the proxy still serves.
    let good = client(pki.roots(), Some(&pki.node));
    roundtrip(&good, LOCALHOST, addr).await.unwrap();
    let lines = proc.drain(Duration::from_millis(300));
    assert_eq!(
        count(lines, "no client certificate"),
        1,
        "rate-limited:\n{}",
        lines.join("\n")
    );
    assert_eq!(backend.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_backend_closes_tls_promptly_with_one_line() {
    let pki = Pki::new();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (mut proc, addr) = Proc::start(&pki, dead, "", &[]);
    let good = client(pki.roots(), Some(&pki.node));
    for _ in 0..5 {
        let mut tls = connect(&good, addr).await.unwrap();
        let mut buf = [0u8; 16];
        // close_notify arrives promptly: a clean end of stream.
        let n = within("close", tokio::io::AsyncReadExt::read(&mut tls, &mut buf))
            .await
            .unwrap();
        assert_eq!(n, 0);
    }
    let line = proc.wait_for("cannot connect to forward address");
    assert!(line.contains(&dead.to_string()), "{line}");
    assert!(
        line.contains("Connection refused") || line.contains("refused"),
        "{line}"
    );
    let lines = proc.drain(Duration::from_millis(300));
    assert_eq!(
        count(lines, "cannot connect to forward address"),
        1,
        "one line, not one per connection:\n{}",
        lines.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_cuts_and_logs_how_many() {
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let (mut proc, addr) = Proc::start(&pki, backend.addr, "shutdown_grace = \"500ms\"", &[]);
    let good = client(pki.roots(), Some(&pki.node));
    let mut open = connect(&good, addr).await.unwrap();
    echo(&mut open, b"live").await.unwrap();
    proc.signal("TERM");
    proc.wait_for("stopped accepting; waiting up to 500ms for 1 open connection");
    let line = proc.wait_for("cut 1 connection(s)");
    assert!(line.contains("WARN"), "{line}");
    assert!(proc.wait_exit().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_survives_and_sigint_exits_at_once() {
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let (mut proc, addr) = Proc::start(&pki, backend.addr, "", &[]);
    // SIGHUP must not kill it (its default action would).
    proc.signal("HUP");
    proc.wait_for("SIGHUP: reloading");
    roundtrip(&client(pki.roots(), Some(&pki.node)), LOCALHOST, addr)
        .await
        .unwrap();
    proc.signal("INT");
    proc.wait_for("all connections finished");
    assert!(proc.wait_exit().success());
}

/// With 32 descriptors, accepting runs out (EMFILE): ringseal warns, backs off and keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_exhaustion_backs_off_and_recovers() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "prlimit (util-linux) is required in CI"
        );
        eprintln!("skipping: prlimit not installed");
        return;
    }
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let (mut proc, addr) = Proc::start(&pki, backend.addr, "", &["prlimit", "--nofile=32"]);
    let good = client(pki.roots(), Some(&pki.node));
    // Hold connections until accept fails; each relayed one costs ringseal two descriptors.
    let mut held = Vec::new();
    for _ in 0..40 {
        if let Ok(Ok(mut tls)) =
            tokio::time::timeout(Duration::from_millis(500), connect(&good, addr)).await
            && echo(&mut tls, b"x").await.is_ok()
        {
            held.push(tls);
        }
    }
    let line = proc.wait_for("cannot accept connections");
    assert!(line.contains("Too many open files"), "{line}");
    assert!(held.len() < 40, "the limit was never reached");
    drop(held);
    // Descriptors come back; the listener is still there.
    let mut ok = false;
    for _ in 0..100 {
        if roundtrip(&good, LOCALHOST, addr).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "ringseal did not recover after descriptors were freed");
    assert!(proc.child.try_wait().unwrap().is_none(), "ringseal exited");
}

/// `ringseal run 2>&1 | head -n 2`: once the reader of stderr is gone, log lines fail with EPIPE. They
/// are dropped and counted, the sidecar keeps serving, and SIGTERM still shuts it down (a failed log
/// write used to panic, in the signal task too, after which no signal was acted on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stderr_is_counted_and_sigterm_still_works() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let (_dir, config) = write_config(
        &pki,
        "",
        &format!(
            "[[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"{}\"\n\n[metrics]\n\
             listen = \"127.0.0.1:0\"\n",
            backend.addr
        ),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringseal"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RINGSEAL_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut metrics, mut listen) = (None, None);
    {
        // Read the start lines, then close our end of the pipe, as `head` does when it exits.
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        while listen.is_none() {
            let line = lines.next().expect("ringseal exited").unwrap();
            if line.contains("serving metrics on ") {
                metrics = Some(process::address_after(&line, "serving metrics on "));
            }
            if line.contains("starting inbound mTLS listener on ") {
                listen = Some(process::address_after(&line, "listener on "));
            }
        }
    }
    let (metrics, listen) = (metrics.unwrap(), listen.unwrap());
    // Every refusal is a WARN line that now cannot be written; the sidecar serves on regardless.
    let anonymous = client(pki.roots(), None);
    let good = client(pki.roots(), Some(&pki.node));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert!(roundtrip(&anonymous, LOCALHOST, listen).await.is_err());
        roundtrip(&good, LOCALHOST, listen)
            .await
            .expect("a verified peer is relayed while logging fails");
        let dropped = sample(&scrape(metrics), "ringseal_log_lines_dropped_total");
        if dropped >= 1.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no dropped log line counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("SIGTERM was ignored with stderr closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}
