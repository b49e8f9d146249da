//! Interoperability with a client that is not rustls: the system `openssl s_client` against an
//! in-process sidecar. Skipped (with a note) when `openssl` is not installed, unless `CI` is set.

use ringseal_testkit::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long one s_client run may take before it is killed (a refused TLS 1.3 client may wait).
const RUN_BOUND: Duration = Duration::from_secs(15);

/// `true` when openssl can be run; otherwise explains why the test is skipped (or fails on CI).
fn have_openssl() -> bool {
    match Command::new("openssl").arg("version").output() {
        Ok(out) if out.status.success() => true,
        result => {
            let why = match result {
                Ok(out) => format!("`openssl version` exited with {}", out.status),
                Err(e) => format!("cannot run `openssl`: {e}"),
            };
            if std::env::var_os("CI").is_some() {
                panic!("{why}; CI must have the openssl command line tool installed");
            }
            eprintln!("skipping: {why} (install openssl to run the interoperability tests)");
            false
        }
    }
}

/// The PKI written to a temporary directory, and a sidecar with an echo backend.
struct Setup {
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    backend: Backend,
    sidecar: Sidecar,
}

impl Setup {
    async fn start() -> Self {
        let pki = Pki::new();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, ca) = pki.write(dir.path());
        let backend = Backend::start(Mode::Echo).await;
        let sidecar = Sidecar::start(config(&pki, backend.addr)).await;
        Self {
            dir,
            cert,
            key,
            ca,
            backend,
            sidecar,
        }
    }

    /// Runs s_client with our CA (and our node certificate when `with_cert`) plus `extra` arguments.
    async fn s_client(&self, with_cert: bool, extra: &[&str]) -> Run {
        let id = with_cert.then(|| (self.cert.clone(), self.key.clone()));
        self.s_client_as(id, extra).await
    }

    /// Runs s_client presenting `id` (certificate and key files), if any.
    async fn s_client_as(&self, id: Option<(PathBuf, PathBuf)>, extra: &[&str]) -> Run {
        let mut args: Vec<String> = vec![
            "s_client".into(),
            "-connect".into(),
            self.sidecar.addr.to_string(),
            "-CAfile".into(),
            path(&self.ca),
            "-verify_ip".into(),
            "127.0.0.1".into(),
            "-verify_return_error".into(),
            "-quiet".into(),
            // Protocol and cipher suite on stderr, to check what was negotiated.
            "-brief".into(),
        ];
        if let Some((cert, key)) = id {
            args.extend(["-cert".into(), path(&cert)]);
            args.extend(["-key".into(), path(&key)]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        within(
            "s_client",
            tokio::task::spawn_blocking(move || run_s_client(&args, LINE)),
        )
        .await
        .unwrap()
    }
}

fn path(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

const LINE: &str = "hello from openssl s_client";

/// What one s_client run did.
#[derive(Debug)]
struct Run {
    /// `LINE` came back on stdout.
    echoed: bool,
    stdout: String,
    stderr: String,
    /// `None`: it was still running when we were done with it (and was killed).
    exited: Option<ExitStatus>,
}

/// Starts `openssl` with `args`, sends `line`, and waits (bounded) for the echo or for s_client to exit.
fn run_s_client(args: &[String], line: &str) -> Run {
    let mut child: Child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start openssl");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let out_reader = std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    // s_client reads stdin once connected; a refused client may already be gone (broken pipe is fine).
    let _ = stdin.write_all(format!("{line}\n").as_bytes());
    let _ = stdin.flush();

    let deadline = Instant::now() + RUN_BOUND;
    let mut lines = Vec::new();
    let mut echoed = false;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) => {
                echoed |= l == line;
                lines.push(l);
                if echoed {
                    break;
                }
            }
            // stdout closed: s_client is exiting.
            Err(_) => break,
        }
    }
    // With -quiet s_client ignores EOF on stdin and stays connected: end it ourselves.
    let exited = match child.try_wait().unwrap() {
        Some(status) => Some(status),
        None if echoed => None,
        None => {
            // Not echoed and still running: give it the rest of the bound to exit on its own.
            let until = deadline;
            loop {
                if let Some(s) = child.try_wait().unwrap() {
                    break Some(s);
                }
                if Instant::now() >= until {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    if exited.is_none() {
        let _ = child.kill();
    }
    let _ = child.wait();
    drop(stdin);
    let _ = out_reader.join();
    lines.extend(rx.try_iter());
    Run {
        echoed,
        stdout: lines.join("\n"),
        stderr: err_reader.join().unwrap(),
        exited,
    }
}

/// The echo came back through the sidecar, over `protocol` (as s_client names it).
fn assert_echoed(run: &Run, protocol: &str) {
    assert!(run.echoed, "no echo: {run:#?}");
    assert!(
        run.stderr
            .contains(&format!("Protocol version: {protocol}")),
        "expected {protocol}: {run:#?}"
    );
}

/// s_client did not get through and ended by itself (bounded), reporting an error.
fn assert_refused(run: &Run) {
    assert!(!run.echoed, "a refused client got its echo: {run:#?}");
    assert!(
        run.stdout.is_empty(),
        "a refused client received data: {run:#?}"
    );
    let status = run
        .exited
        .unwrap_or_else(|| panic!("s_client was refused but did not exit: {run:#?}"));
    assert!(
        !status.success(),
        "s_client exited 0 when refused: {run:#?}"
    );
}

#[tokio::test]
async fn s_client_with_node_certificate_gets_echo() {
    if !have_openssl() {
        return;
    }
    let s = Setup::start().await;
    let run = s.s_client(true, &[]).await;
    assert_echoed(&run, "TLSv1.3");
    assert_eq!(s.backend.accepted(), 1);
}

#[tokio::test]
async fn s_client_without_certificate_is_refused() {
    if !have_openssl() {
        return;
    }
    let s = Setup::start().await;
    let run = s.s_client(false, &[]).await;
    assert_refused(&run);
    assert!(
        run.stderr.contains("certificate required"),
        "expected the certificate_required alert: {run:#?}"
    );
    assert_eq!(s.backend.accepted(), 0);
    // Still serving.
    let run = s.s_client(true, &[]).await;
    assert_echoed(&run, "TLSv1.3");
    assert_eq!(s.backend.accepted(), 1);
}

#[tokio::test]
async fn s_client_tls12_works() {
    if !have_openssl() {
        return;
    }
    let s = Setup::start().await;
    let run = s.s_client(true, &["-tls1_2"]).await;
    assert_echoed(&run, "TLSv1.2");
    assert_eq!(s.backend.accepted(), 1);
}

#[tokio::test]
async fn s_client_tls13_works() {
    if !have_openssl() {
        return;
    }
    let s = Setup::start().await;
    let run = s.s_client(true, &["-tls1_3"]).await;
    assert_echoed(&run, "TLSv1.3");
    assert_eq!(s.backend.accepted(), 1);
}

#[tokio::test]
async fn s_client_tls12_ecdhe_ecdsa_aes128_gcm_works() {
    if !have_openssl() {
        return;
    }
    let s = Setup::start().await;
    let run = s
        .s_client(
            true,
            &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
        )
        .await;
    assert_echoed(&run, "TLSv1.2");
    assert!(
        run.stderr
            .contains("Ciphersuite: ECDHE-ECDSA-AES128-GCM-SHA256"),
        "{run:#?}"
    );
    assert_eq!(s.backend.accepted(), 1);
}

#[tokio::test]
async fn s_client_tls11_is_refused() {
    if !have_openssl() {
        return;
    }
    let s = Setup::start().await;
    // OpenSSL 3 refuses TLS 1.1 itself at security level 1; level 0 makes it send the hello, so that the
    // refusal comes from the sidecar (protocol_version alert), not from s_client's own settings.
    let run = s
        .s_client(true, &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"])
        .await;
    assert_refused(&run);
    // A received alert proves the hello reached the sidecar (s_client's own refusal would say "no
    // protocols available"). rustls answers a TLS 1.1-only hello with handshake_failure: the suites
    // such a hello offers (CBC only) are checked before the version.
    assert!(
        run.stderr.contains("alert protocol version")
            || run.stderr.contains("alert handshake failure"),
        "expected an alert from the sidecar: {run:#?}"
    );
    assert_eq!(s.backend.accepted(), 0);
    let run = s.s_client(true, &[]).await;
    assert_echoed(&run, "TLSv1.3");
    assert_eq!(s.backend.accepted(), 1);
}

#[tokio::test]
async fn s_client_tls12_without_certificate_is_refused() {
    if !have_openssl() {
        return;
    }
    let s = Setup::start().await;
    let run = s.s_client(false, &["-tls1_2"]).await;
    assert_refused(&run);
    assert!(run.stderr.contains("alert"), "expected an alert: {run:#?}");
    assert_eq!(s.backend.accepted(), 0);
    let run = s.s_client(true, &["-tls1_2"]).await;
    assert_echoed(&run, "TLSv1.2");
    assert_eq!(s.backend.accepted(), 1);
}

#[tokio::test]
async fn s_client_with_certificate_from_another_ca_is_refused() {
    if !have_openssl() {
        return;
    }
    let s = Setup::start().await;
    let other = ringseal::pki::Ca::new("Other").unwrap();
    let stranger = other
        .issue(&ringseal::pki::NodeSpec::new("node1", &[LOCALHOST]))
        .unwrap();
    let dir = s.dir.path();
    let (cert, key) = (dir.join("stranger.crt"), dir.join("stranger.key"));
    std::fs::write(&cert, &stranger.cert_pem).unwrap();
    std::fs::write(&key, &stranger.key_pem).unwrap();
    for version in ["-tls1_3", "-tls1_2"] {
        let run = s
            .s_client_as(Some((cert.clone(), key.clone())), &[version])
            .await;
        assert_refused(&run);
        assert!(
            run.stderr.contains("alert unknown ca"),
            "{version}: expected the unknown_ca alert: {run:#?}"
        );
    }
    assert_eq!(s.backend.accepted(), 0);
    let run = s.s_client(true, &[]).await;
    assert_echoed(&run, "TLSv1.3");
    assert_eq!(s.backend.accepted(), 1);
}

/// `openssl s_time -new` finishes each handshake and closes (or resets) at once. Each of those
/// handshakes was complete and verified, so each must count as one: the whole path runs (the storage
/// port gets its connection), not a refusal "in the middle of the handshake" because the closing
/// peer was read beyond its Finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s_time_handshakes_that_close_at_once_reach_the_backend() {
    if !have_openssl() {
        return;
    }
    let s = Setup::start().await;
    let args: Vec<String> = [
        "s_time",
        "-connect",
        &s.sidecar.addr.to_string(),
        "-new",
        "-cert",
        &path(&s.cert),
        "-key",
        &path(&s.key),
        "-CAfile",
        &path(&s.ca),
        "-time",
        "1",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let out = within(
        "s_time",
        tokio::task::spawn_blocking(move || Command::new("openssl").args(&args).output()),
    )
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // "123 connections in 0.41s; ..." (the count of completed handshakes).
    let done: usize = stdout
        .lines()
        .find_map(|l| l.split(" connections in ").next()?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count in s_time's output: {stdout}"));
    assert!(done > 0, "s_time completed no handshake: {stdout}");
    for _ in 0..500 {
        if s.backend.accepted() >= done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        s.backend.accepted() >= done,
        "{done} handshakes completed, {} reached the backend",
        s.backend.accepted()
    );
    let _ = &s.dir;
}
