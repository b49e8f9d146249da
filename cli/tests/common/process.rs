//! The real binary as a child process, its stderr collected line by line.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::Pki;

/// A running `ringseal run` whose stderr is collected line by line.
pub struct Proc {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Proc {
    /// Writes the PKI and a config (with `extra` appended to `[[inbound]]` ... `[limits]`) and starts.
    pub fn start(
        pki: &Pki,
        forward: SocketAddr,
        limits: &str,
        prefix: &[&str],
    ) -> (Self, SocketAddr) {
        let dir = tempfile::tempdir().unwrap();
        pki.write(dir.path());
        let config = dir.path().join("ringseal.toml");
        std::fs::write(
            &config,
            format!(
                "[tls]\ncert = \"node.crt\"\nkey = \"node.key\"\nca = \"ca.crt\"\n\n\
                 [[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"{forward}\"\n\n[limits]\n{limits}\n"
            ),
        )
        .unwrap();
        let mut proc = Self::spawn(prefix, &config, dir);
        let line = proc.wait_for("starting inbound mTLS listener");
        let addr = line
            .split("listener on ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        (proc, addr)
    }

    pub fn spawn(prefix: &[&str], config: &Path, dir: tempfile::TempDir) -> Self {
        Self::spawn_with(prefix, config, dir, &[])
    }

    /// `ringseal run --config CONFIG ARGS...`.
    pub fn spawn_args(args: &[&str], config: &Path, dir: tempfile::TempDir) -> Self {
        Self::spawn_full(&[], config, dir, &[], args)
    }

    /// As [`Proc::spawn`], with extra environment variables (they override `RINGSEAL_LOG`).
    pub fn spawn_with(
        prefix: &[&str],
        config: &Path,
        dir: tempfile::TempDir,
        env: &[(&str, &str)],
    ) -> Self {
        Self::spawn_full(prefix, config, dir, env, &[])
    }

    fn spawn_full(
        prefix: &[&str],
        config: &Path,
        dir: tempfile::TempDir,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Self {
        let bin = env!("CARGO_BIN_EXE_ringseal");
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = cmd
            .arg("run")
            .arg("--config")
            .arg(config)
            .args(args)
            .env("RINGSEAL_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
            _dir: dir,
        }
    }

    /// The next line containing `needle` (bounded wait).
    pub fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no line containing {needle:?}; stderr so far:\n{}",
            self.seen.join("\n")
        );
    }

    /// Every line received so far (and during the next `settle`).
    pub fn drain(&mut self, settle: Duration) -> &[String] {
        while let Ok(line) = self.lines.recv_timeout(settle) {
            self.seen.push(line);
        }
        &self.seen
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "ringseal did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The address in a start line: `... listener on 127.0.0.1:41234 ...`.
pub fn address_after(line: &str, marker: &str) -> SocketAddr {
    line.split(marker)
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no address after {marker:?} in {line:?}"))
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
