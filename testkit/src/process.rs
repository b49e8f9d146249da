//! A child process whose stderr is read line by line: the `ringseal` binary (tests, benches,
//! `ringseal bench`) or another program (the anchors HAProxy, stunnel, nginx). It waits for a log
//! line or a listening port, reads its CPU time and resident memory from /proc, and is killed (or
//! stopped by its own command) when dropped.
//!
//! CPU time is utime + stime from `/proc/PID/stat` (it includes threads that have exited, which
//! matters for stunnel), memory is VmRSS from `/proc/PID/status`, both summed over the process and,
//! if asked, its children (nginx's master and worker).

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::pki::Pki;

/// How long a test waits for a line or an exit.
const TEST_WAIT: Duration = Duration::from_secs(30);
/// `/proc/PID/stat` counts in clock ticks; USER_HZ is 100 on every Linux architecture that matters
/// (the kernel keeps this ABI fixed whatever its internal HZ), so no sysconf call is needed.
const TICKS_PER_SEC: f64 = 100.0;
/// Lines kept for error messages.
const TAIL: usize = 12;
/// How often a wait looks whether the process has exited.
const POLL: Duration = Duration::from_millis(50);

/// Why a process did not do what was waited for (shown by `ringseal bench`; tests panic instead).
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("starting {name} ({command})")]
    Spawn {
        name: String,
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} exited ({status}): {tail}")]
    Exited {
        name: String,
        status: String,
        tail: String,
    },
    #[error("{name} did not log {needle:?} within {}s: {tail}", limit.as_secs())]
    NoLine {
        name: String,
        needle: String,
        limit: Duration,
        tail: String,
    },
    #[error("{name} does not listen on 127.0.0.1:{port} after {}s: {tail}", limit.as_secs())]
    NotListening {
        name: String,
        port: u16,
        limit: Duration,
        tail: String,
    },
}

/// Which stderr lines reach [`Proc::wait_line`] and [`Proc::drain`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lines {
    /// Every line (tests assert on them).
    All,
    /// Only the first few hundred not yet read: a chatty process whose later lines nobody reads must
    /// not grow memory, nor block on a full pipe. The last lines are kept for error messages.
    Start,
}

enum LineSender {
    All(mpsc::Sender<String>),
    Start(mpsc::SyncSender<String>),
}

impl LineSender {
    fn send(&self, line: String) {
        match self {
            Self::All(tx) => {
                let _ = tx.send(line);
            }
            Self::Start(tx) => {
                let _ = tx.try_send(line);
            }
        }
    }
}

/// A running process with its stderr collected.
pub struct Proc {
    pub child: Child,
    /// The lines read so far by [`Proc::wait_line`], [`Proc::wait_for`] and [`Proc::drain`].
    pub seen: Vec<String>,
    name: String,
    lines: mpsc::Receiver<String>,
    tail: Arc<Mutex<VecDeque<String>>>,
    /// How to stop it gracefully (nginx); otherwise SIGKILL.
    stop: Option<Command>,
    /// Count its children too (nginx's worker).
    tree: bool,
    _dir: Option<tempfile::TempDir>,
}

/// The `ringseal` binary of this build. Cargo puts a package's binaries in the directory above
/// `deps/`, where its integration tests and benches run from; `CARGO_BIN_EXE_ringseal` says the same
/// but only at the test's compile time, which a library cannot see.
pub fn ringseal_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let mut dir = exe.parent().expect("a directory").to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("ringseal");
    assert!(
        bin.is_file(),
        "{} is missing: run this through `cargo test -p ringseal-cli` or `cargo bench -p ringseal-cli`, \
         which build it",
        bin.display()
    );
    bin
}

/// `[PREFIX...] BIN run --config CONFIG`, logging at info without colours.
pub fn ringseal_run(bin: &Path, prefix: &[&str], config: &Path) -> Command {
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .env("RINGSEAL_LOG", "info")
        .env("NO_COLOR", "1");
    cmd
}

impl Proc {
    /// Starts `cmd` (stdin and stdout closed, stderr read line by line).
    pub fn launch(name: &str, mut cmd: Command, lines: Lines) -> Result<Self, ProcessError> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ProcessError::Spawn {
                name: name.to_owned(),
                command: format!("{cmd:?}"),
                source,
            })?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let keep = tail.clone();
        let (tx, rx) = match lines {
            Lines::All => {
                let (tx, rx) = mpsc::channel();
                (LineSender::All(tx), rx)
            }
            Lines::Start => {
                let (tx, rx) = mpsc::sync_channel(256);
                (LineSender::Start(tx), rx)
            }
        };
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut t) = keep.lock() {
                    if t.len() == TAIL {
                        t.pop_front();
                    }
                    t.push_back(line.clone());
                }
                tx.send(line);
            }
        });
        Ok(Self {
            child,
            seen: Vec::new(),
            name: name.to_owned(),
            lines: rx,
            tail,
            stop: None,
            tree: false,
            _dir: None,
        })
    }

    /// Stops it with `cmd` when dropped, instead of SIGKILL (nginx: SIGKILL on the master would
    /// orphan its worker).
    pub fn stop_with(mut self, cmd: Command) -> Self {
        self.stop = Some(cmd);
        self
    }

    /// Counts its children in [`Proc::cpu_seconds`] and [`Proc::rss_bytes`].
    pub fn with_children(mut self) -> Self {
        self.tree = true;
        self
    }

    /// Keeps `dir` (its config and certificates) until the process is gone.
    pub fn keep(mut self, dir: tempfile::TempDir) -> Self {
        self._dir = Some(dir);
        self
    }

    /// `ringseal run --config CONFIG` of this build, prefixed by `prefix` (e.g. `ip netns exec NS`).
    pub fn spawn(prefix: &[&str], config: &Path, dir: tempfile::TempDir) -> Self {
        Self::spawn_with(prefix, config, dir, &[])
    }

    /// `ringseal run --config CONFIG ARGS...`.
    pub fn spawn_args(args: &[&str], config: &Path, dir: tempfile::TempDir) -> Self {
        let mut cmd = ringseal_run(&ringseal_binary(), &[], config);
        cmd.args(args);
        Self::launch("ringseal", cmd, Lines::All).unwrap().keep(dir)
    }

    /// As [`Proc::spawn`], with extra environment variables (they override `RINGSEAL_LOG`).
    pub fn spawn_with(
        prefix: &[&str],
        config: &Path,
        dir: tempfile::TempDir,
        env: &[(&str, &str)],
    ) -> Self {
        let mut cmd = ringseal_run(&ringseal_binary(), prefix, config);
        cmd.envs(env.iter().copied());
        Self::launch("ringseal", cmd, Lines::All).unwrap().keep(dir)
    }

    /// Writes the PKI and a config (one inbound listener in front of `forward`, `limits` as the
    /// `[limits]` table) and starts; returns the process and its inbound address.
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
                "{}\n[[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"{forward}\"\n\n[limits]\n{limits}\n",
                crate::TLS_TABLE
            ),
        )
        .unwrap();
        let mut proc = Self::spawn(prefix, &config, dir);
        let line = proc.wait_for("starting inbound mTLS listener");
        (proc, address_after(&line, "listener on "))
    }

    /// The next line containing `needle` (bounded wait; panics with the lines so far).
    pub fn wait_for(&mut self, needle: &str) -> String {
        self.wait_line(needle, TEST_WAIT).unwrap_or_else(|_| {
            panic!(
                "no line containing {needle:?}; stderr so far:\n{}",
                self.seen.join("\n")
            )
        })
    }

    /// The next line containing `needle`, within `limit`; an error if the process exits first.
    pub fn wait_line(&mut self, needle: &str, limit: Duration) -> Result<String, ProcessError> {
        let deadline = Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left.min(POLL)) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return Ok(line);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        return self.last_lines(needle, status);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.wait_exit_within(Duration::from_secs(1));
                    return Err(self.exited(status));
                }
            }
        }
        Err(ProcessError::NoLine {
            name: self.name.clone(),
            needle: needle.to_owned(),
            limit,
            tail: self.tail(),
        })
    }

    /// The process has exited: its last lines may still be on their way through the pipe.
    fn last_lines(&mut self, needle: &str, status: ExitStatus) -> Result<String, ProcessError> {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(1)) {
            self.seen.push(line.clone());
            if line.contains(needle) {
                return Ok(line);
            }
        }
        Err(self.exited(Some(status)))
    }

    fn exited(&self, status: Option<ExitStatus>) -> ProcessError {
        ProcessError::Exited {
            name: self.name.clone(),
            status: status.map_or_else(|| "closed its stderr".to_owned(), |s| s.to_string()),
            tail: self.tail(),
        }
    }

    /// Every line received so far (and during the next `settle`).
    pub fn drain(&mut self, settle: Duration) -> &[String] {
        while let Ok(line) = self.lines.recv_timeout(settle) {
            self.seen.push(line);
        }
        &self.seen
    }

    /// The last lines of its stderr, for error messages.
    pub fn tail(&self) -> String {
        self.tail
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join(" | "))
            .unwrap_or_default()
    }

    /// An error if it has exited (crashed, or refused something at run time).
    pub fn check_alive(&mut self) -> Result<(), ProcessError> {
        match self.child.try_wait() {
            Ok(Some(status)) => {
                // Let the stderr reader catch the last lines.
                std::thread::sleep(POLL);
                Err(self.exited(Some(status)))
            }
            _ => Ok(()),
        }
    }

    /// Waits until something listens on 127.0.0.1:`port` (read from /proc/net/tcp, so no probe
    /// connection disturbs the process), or the process exits.
    pub fn wait_listening(&mut self, port: u16, limit: Duration) -> Result<(), ProcessError> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            self.check_alive()?;
            if listening(port) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(ProcessError::NotListening {
            name: self.name.clone(),
            port,
            limit,
            tail: self.tail(),
        })
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    /// Its exit status (bounded wait; panics if it keeps running).
    pub fn wait_exit(&mut self) -> ExitStatus {
        self.wait_exit_within(TEST_WAIT)
            .unwrap_or_else(|| panic!("{} did not exit", self.name))
    }

    fn wait_exit_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pids(&self) -> Vec<u32> {
        let pid = self.child.id();
        if self.tree {
            descendants(pid)
        } else {
            vec![pid]
        }
    }

    /// CPU seconds (user + system) so far, at clock-tick resolution.
    pub fn cpu_seconds(&self) -> f64 {
        let (user, system) = self.cpu_split_seconds();
        user + system
    }

    /// CPU seconds so far, (user, system: in the kernel on the process's behalf), at clock-tick
    /// resolution.
    pub fn cpu_split_seconds(&self) -> (f64, f64) {
        let (user, system) = self
            .pids()
            .into_iter()
            .filter_map(cpu_ticks)
            .fold((0, 0), |(u, s), (pu, ps)| (u + pu, s + ps));
        (user as f64 / TICKS_PER_SEC, system as f64 / TICKS_PER_SEC)
    }

    /// CPU seconds from the scheduler's exact accounting (`/proc/PID/task/*/schedstat`, nanoseconds
    /// on CPU per thread), not sampled at clock ticks. A thread that exits between two looks takes
    /// its time with it.
    pub fn sched_cpu_seconds(&self) -> f64 {
        self.pids().into_iter().map(sched_nanos).sum::<u64>() as f64 / 1e9
    }

    /// Resident memory in bytes.
    pub fn rss_bytes(&self) -> u64 {
        self.pids().into_iter().filter_map(rss_bytes).sum()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(stop) = &mut self.stop {
            let _ = stop
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if self.wait_exit_within(Duration::from_secs(3)).is_some() {
                return;
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address in a start line: `... listener on 127.0.0.1:41234 ...` (panics if there is none).
pub fn address_after(line: &str, marker: &str) -> SocketAddr {
    find_address_after(line, marker)
        .unwrap_or_else(|| panic!("no address after {marker:?} in {line:?}"))
}

/// The address in a start line, if there is one.
pub fn find_address_after(line: &str, marker: &str) -> Option<SocketAddr> {
    line.split(marker)
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
}

/// Whether a socket listens on `port` (any local address), per /proc/net/tcp.
pub fn listening(port: u16) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let want = format!(":{port:04X}");
    text.lines().skip(1).any(|l| {
        let mut f = l.split_whitespace();
        let local = f.nth(1).unwrap_or("");
        let state = f.nth(1).unwrap_or("");
        local.ends_with(&want) && state == "0A"
    })
}

/// The fields of /proc/PID/stat after the command name (which may contain spaces and parentheses).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// (utime, stime) of a process (all its threads, including exited ones), in clock ticks.
fn cpu_ticks(pid: u32) -> Option<(u64, u64)> {
    let f = stat_fields(pid)?;
    // After the name: state(0) ppid(1) ... utime(11) stime(12).
    Some((f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?))
}

/// Nanoseconds on CPU of the threads a process has now.
fn sched_nanos(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `pid` and every process below it.
fn descendants(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(ppid) = stat_fields(p).and_then(|f| f.get(1)?.parse::<u32>().ok()) {
                children.entry(ppid).or_default().push(p);
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        if let Some(c) = children.get(&out[i]) {
            out.extend(c);
        }
        i += 1;
    }
    out
}

/// Starts `ringseal run` (binary `bin`) with `config`, written to `dir/NAME.toml`, for the relay
/// benches; returns it and the address in its start line after `marker`. Only the start line is
/// read; later lines are dropped so the child never blocks on a full pipe.
pub fn ringseal_started(
    bin: &Path,
    dir: &Path,
    name: &str,
    config: &str,
    marker: &str,
) -> (Proc, SocketAddr) {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let mut proc = Proc::launch(name, ringseal_run(bin, &[], &path), Lines::Start).unwrap();
    let line = proc
        .wait_line(marker, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{name} did not start: {e}"));
    (proc, address_after(&line, marker))
}

/// A bench knob from the environment, else `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(cpu_ticks(me).is_some());
        assert!(sched_nanos(me) > 0);
        assert!(rss_bytes(me).unwrap() > 0);
        assert_eq!(descendants(me)[0], me);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(listening(l.local_addr().unwrap().port()));
    }

    #[test]
    fn waits_for_a_line_and_reports_an_exit_with_the_last_lines() {
        let mut sh = Command::new("sh");
        sh.args([
            "-c",
            "echo one >&2; echo 'two: ready' >&2; sleep 0.2; echo bye >&2; exit 3",
        ]);
        let mut p = Proc::launch("sh", sh, Lines::All).unwrap();
        assert_eq!(p.wait_line("ready", TEST_WAIT).unwrap(), "two: ready");
        let e = p.wait_line("never", TEST_WAIT).unwrap_err().to_string();
        assert!(e.starts_with("sh exited (exit status: 3): "), "{e}");
        assert!(e.ends_with("one | two: ready | bye"), "{e}");
        assert_eq!(p.seen, ["one", "two: ready", "bye"]);
    }
}
