//! A network namespace of the caller's own (`ip netns add`), deleted when dropped: a private loopback
//! with its own `net.ipv4.*` settings (the congestion control above all). Needs root; errors say why,
//! so that `ringseal bench` can report them and tests can skip outside CI.

use std::process::Command;

/// Whether this process runs as root (what `ip netns` and per-namespace sysctls need).
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
}

/// Root and every tool on PATH, or why not.
pub fn prerequisites(tools: &[&str]) -> Result<(), String> {
    if !is_root() {
        return Err("network namespaces need root".into());
    }
    for tool in ["ip"].iter().chain(tools) {
        if crate::tools::which(tool).is_none() {
            return Err(format!("{tool} is not installed"));
        }
    }
    Ok(())
}

/// For a test that needs [`prerequisites`]: `true` to go on; `false` (after saying why) to skip,
/// which only happens outside CI (`CI` unset).
pub fn available(tools: &[&str]) -> bool {
    match prerequisites(tools) {
        Ok(()) => true,
        Err(why) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "in CI this test must run: {why}"
            );
            eprintln!("skipping: {why}");
            false
        }
    }
}

/// A namespace with `lo` up.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `ringseal-TAG-PID-N` (unique within this process too).
    pub fn create(tag: &str) -> Result<Self, String> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("ringseal-{tag}-{}-{n}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        run(&mut ns.command(&["ip", "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME`: what runs a program inside.
    pub fn prefix(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .map(str::to_owned)
            .to_vec()
    }

    /// `args` run inside the namespace.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    /// Sets the namespace's default congestion control (`net.ipv4.tcp_congestion_control`). Linux
    /// lets a namespace other than the host's default only to an algorithm that is loaded and in
    /// the host-wide `net.ipv4.tcp_allowed_congestion_control`; the error says which is missing.
    pub fn set_congestion(&self, algorithm: &str) -> Result<(), String> {
        let setting = format!("net.ipv4.tcp_congestion_control={algorithm}");
        run(&mut self.command(&["sysctl", "-qw", &setting])).map_err(|e| {
            let read = |p: &str| {
                std::fs::read_to_string(p)
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            };
            let available = read("/proc/sys/net/ipv4/tcp_available_congestion_control");
            let allowed = read("/proc/sys/net/ipv4/tcp_allowed_congestion_control");
            if !available.split_whitespace().any(|a| a == algorithm) {
                format!(
                    "{e}; {algorithm} is not loaded (loaded: {available}): modprobe tcp_{algorithm}"
                )
            } else if !allowed.split_whitespace().any(|a| a == algorithm) {
                format!(
                    "{e}; a network namespace may default only to an algorithm of the host's \
                     net.ipv4.tcp_allowed_congestion_control ({allowed}): allow it first with \
                     sysctl -w net.ipv4.tcp_allowed_congestion_control=\"{allowed} {algorithm}\""
                )
            } else {
                e
            }
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
