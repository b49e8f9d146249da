//! The pairs under test: ringseal's own and the anchors' (HAProxy, stunnel, nginx), each as two OS
//! processes with generated configs, the same certificates and the same forced protocol and suite.
//!
//! * outbound: plaintext on 127.0.0.1 in, mutual TLS out to the inbound side, verifying it against
//!   the CA and presenting the node certificate;
//! * inbound: mutual TLS in (client certificate required, chained to the CA), plaintext out to the
//!   bench's backend.
//!
//! Session resumption is off everywhere (ringseal never resumes: see `tls::server_config`), so every
//! new connection is a full mutual handshake for everyone: HAProxy `no-ssl-reuse`/`no-tls-tickets`,
//! stunnel `sessionResume = no`/`NO_TICKET`, nginx `proxy_ssl_session_reuse off`/`ssl_session_*
//! off`. Per-connection logging is off as well (ringseal with `[logging] connections = false`, so
//! routine closes log at debug): HAProxy and nginx log nothing here, stunnel only warnings. Anchors
//! run as a sidecar would: HAProxy with `nbthread 1`, nginx with `worker_processes 1` (plus its idle
//! master, counted too), stunnel as it comes (a thread per connection). ringseal runs `ringseal run`
//! with its defaults otherwise.
//!
//! Certificates, processes and their CPU time and memory come from `ringseal_testkit` (the tests'
//! PKI builder and process spawner): utime + stime and VmRSS from /proc, summed over nginx's master
//! and worker.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use ringseal::pki::NodeSpec;
use ringseal_testkit::pki::{Pki, PkiFiles};
use ringseal_testkit::process::{Lines, Proc, find_address_after, ringseal_run};
use ringseal_testkit::tools::which;

use super::{KeyType, Peer, Suite};

/// How long a proxy may take to listen after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// nginx's stream module as Debian's libnginx-mod-stream installs it.
const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// The test PKI on disk: a CA and one node certificate (IP SAN 127.0.0.1, DNS SAN localhost for
/// nginx, which checks names), both of `key` type, shared by both sides of every pair.
pub struct Certs {
    pub pki: Pki,
    pub files: PkiFiles,
}

impl Certs {
    pub fn write(dir: &Path, kind: KeyType) -> anyhow::Result<Self> {
        let mut spec = NodeSpec::new("bench-node", &[std::net::Ipv4Addr::LOCALHOST.into()]);
        spec.dns = vec!["localhost".to_owned()];
        spec.key = kind;
        let pki = Pki::generate("BenchCluster", &spec)?;
        let files = pki.write_files(dir)?;
        Ok(Self { pki, files })
    }
}

/// Finds an anchor's binary; `Ok(version line)` or `Err(why not)` in a few words.
pub fn locate(peer: Peer) -> Result<String, String> {
    let (bin, package) = match peer {
        Peer::Haproxy => ("haproxy", "haproxy"),
        Peer::Stunnel => ("stunnel4", "stunnel4"),
        Peer::Nginx => ("nginx", "nginx libnginx-mod-stream"),
        Peer::Ringseal | Peer::Direct => return Ok(String::new()),
    };
    let path = which(bin)
        .or_else(|| (peer == Peer::Stunnel).then(|| which("stunnel")).flatten())
        .ok_or_else(|| format!("{bin} is not installed (apt-get install {package})"))?;
    if peer == Peer::Nginx && !Path::new(NGINX_STREAM_MODULE).exists() {
        return Err(format!(
            "nginx's stream module {NGINX_STREAM_MODULE} is missing (apt-get install libnginx-mod-stream)"
        ));
    }
    let arg = match peer {
        Peer::Haproxy => "-v",
        Peer::Stunnel => "-version",
        _ => "-v",
    };
    let out = Command::new(&path)
        .arg(arg)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{} does not run: {e}", path.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("haproxy version")
                || l.starts_with("nginx version")
                || l.starts_with("stunnel ")
        })
        .unwrap_or("version unknown");
    Ok(line.to_owned())
}

/// `openssl version`, if openssl is installed (it drives the s_time test).
pub fn openssl_version() -> Option<String> {
    let out = Command::new(which("openssl")?)
        .arg("version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Descriptors a process needs besides two per connection (listeners, epoll, pipes, stdio).
const FD_SPARE: u64 = 64;

/// Raises the open-file limit for `connections` idle connections: this process holds two
/// descriptors per connection (client and backend side), and so does every proxy process, which
/// inherits the limit. Raising the hard limit needs CAP_SYS_RESOURCE; without it the connection
/// count is lowered to what fits, which the caller reports.
pub fn raise_fd_limit(connections: usize) -> usize {
    use rlimit::Resource;
    let need = 2 * connections as u64 + FD_SPARE;
    let Ok((soft, hard)) = rlimit::getrlimit(Resource::NOFILE) else {
        return connections;
    };
    if soft < need
        && rlimit::setrlimit(Resource::NOFILE, need, need.max(hard)).is_err()
        && soft < hard
    {
        let _ = rlimit::setrlimit(Resource::NOFILE, hard, hard);
    }
    connections.min((fd_limit().saturating_sub(FD_SPARE) / 2) as usize)
}

/// stunnel refuses clients beyond 125/256 of its open-file limit (its `max_clients`, not
/// configurable); a little less, for its listeners.
pub fn stunnel_max_clients() -> usize {
    (fd_limit() * 125 / 256).saturating_sub(32) as usize
}

/// The soft open-file limit now (what the proxies inherit).
pub fn fd_limit() -> u64 {
    rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
}

/// What a pair is started with.
pub struct PairSpec {
    pub suite: &'static Suite,
    pub certs: Arc<Certs>,
    /// Where the inbound side forwards plaintext.
    pub backend: SocketAddr,
    /// Connection limit for the proxies that have one (ringseal, HAProxy, nginx).
    pub max_connections: usize,
    /// ringseal's `[tcp] loopback_congestion_control`; `None`: its default.
    pub loopback_congestion_control: Option<ringseal::tcp::LoopbackCongestion>,
    /// `GLIBC_TUNABLES` for both sides of every pair alike; `None`: inherited.
    pub glibc_tunables: Option<String>,
}

/// CPU seconds (user + system) of each side so far, and of both sides split into user and system
/// (kernel) time.
#[derive(Debug, Clone, Copy)]
pub struct Cpu {
    pub outbound: f64,
    pub inbound: f64,
    pub user: f64,
    pub system: f64,
}

/// A running pair.
pub struct Pair {
    /// The outbound side's plaintext address: where the "node" connects.
    pub entry: SocketAddr,
    /// The inbound side's mutual-TLS address.
    pub tls: SocketAddr,
    outbound: Proc,
    inbound: Proc,
}

impl Pair {
    /// Starts the inbound side, then the outbound side pointing at it. Anchors need their ports in
    /// the config: a port is taken from 127.0.0.1:0 and released just before the start, so another
    /// process may grab it in between; that is retried.
    pub fn start(peer: Peer, spec: &PairSpec) -> anyhow::Result<Self> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(peer, spec) {
                Ok(p) => return Ok(p),
                Err(e) if attempt < 3 && format!("{e:#}").contains("in use") => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn start_once(peer: Peer, spec: &PairSpec) -> anyhow::Result<Self> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = spec.certs.files.dir.join(format!(
            "{}-{}",
            peer.name(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let (inbound, tls) = Side::Inbound.start(peer, spec, &dir, spec.backend)?;
        let (outbound, entry) = Side::Outbound.start(peer, spec, &dir, tls)?;
        Ok(Self {
            entry,
            tls,
            outbound,
            inbound,
        })
    }

    pub fn cpu(&self) -> Cpu {
        let (out_user, out_system) = self.outbound.cpu_split_seconds();
        let (in_user, in_system) = self.inbound.cpu_split_seconds();
        Cpu {
            outbound: out_user + out_system,
            inbound: in_user + in_system,
            user: out_user + in_user,
            system: out_system + in_system,
        }
    }

    /// Resident memory in bytes: (outbound, inbound).
    pub fn rss(&self) -> (u64, u64) {
        (self.outbound.rss_bytes(), self.inbound.rss_bytes())
    }

    /// An error if either side has exited (crashed, or refused something at run time).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.inbound.check_alive()?;
        Ok(self.outbound.check_alive()?)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Outbound,
    Inbound,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
        }
    }

    /// Starts one side; `target` is the backend (inbound) or the inbound side (outbound). Returns
    /// the process and the address it listens on.
    fn start(
        self,
        peer: Peer,
        spec: &PairSpec,
        dir: &Path,
        target: SocketAddr,
    ) -> anyhow::Result<(Proc, SocketAddr)> {
        let name = format!("{} {}", peer.name(), self.name());
        let file = dir.join(format!("{}.conf", self.name()));
        let write = |text: &str| {
            std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))
        };
        if peer == Peer::Ringseal {
            write(&ringseal_config(self, spec, target))?;
            return self.start_ringseal(&name, &file, spec);
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("reserving a port")?
            .port();
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        let s = &ConfigInput {
            side: self,
            suite: spec.suite,
            certs: &spec.certs,
            listen,
            target,
            max_connections: spec.max_connections,
            dir,
        };
        let bin = |b: &str| which(b).with_context(|| format!("{b} is not installed"));
        let (cmd, stop, tree) = match peer {
            Peer::Haproxy => {
                write(&haproxy_config(s))?;
                let mut cmd = Command::new(bin("haproxy")?);
                cmd.arg("-db").arg("-f").arg(&file);
                (cmd, None, false)
            }
            Peer::Stunnel => {
                write(&stunnel_config(s))?;
                let b = bin("stunnel4").or_else(|_| bin("stunnel"))?;
                let mut cmd = Command::new(b);
                cmd.arg(&file);
                (cmd, None, false)
            }
            Peer::Nginx => {
                write(&nginx_config(s))?;
                let nginx = bin("nginx")?;
                let args = |c: &mut Command| {
                    c.arg("-p")
                        .arg(dir)
                        .arg("-c")
                        .arg(&file)
                        .arg("-e")
                        .arg(dir.join(format!("{}-error.log", self.name())));
                };
                let mut cmd = Command::new(&nginx);
                args(&mut cmd);
                // SIGKILL on the master would orphan the worker: `nginx -s stop` has the master
                // stop it.
                let mut stop = Command::new(&nginx);
                args(&mut stop);
                stop.arg("-s").arg("stop");
                (cmd, Some(stop), true)
            }
            Peer::Ringseal | Peer::Direct => unreachable!("not an anchor"),
        };
        let mut proc = Proc::launch(&name, environment(cmd, spec), Lines::Start)?;
        if let Some(stop) = stop {
            proc = proc.stop_with(stop);
        }
        if tree {
            proc = proc.with_children();
        }
        proc.wait_listening(port, START_TIMEOUT)?;
        Ok((proc, listen))
    }

    /// ringseal itself (this very binary) on port 0; its start line says where it listens.
    fn start_ringseal(
        self,
        name: &str,
        file: &Path,
        spec: &PairSpec,
    ) -> anyhow::Result<(Proc, SocketAddr)> {
        let exe = std::env::current_exe().context("locating the ringseal binary")?;
        let cmd = environment(ringseal_run(&exe, &[], file), spec);
        let mut proc = Proc::launch(name, cmd, Lines::Start)?;
        let needle = match self {
            Self::Inbound => "starting inbound mTLS listener on ",
            Self::Outbound => "starting outbound listener on ",
        };
        let line = proc.wait_line(needle, START_TIMEOUT)?;
        let addr = find_address_after(&line, needle)
            .with_context(|| format!("{name}: no address in its start line {line:?}"))?;
        Ok((proc, addr))
    }
}

/// The environment every proxy of every peer starts with: the same for all, so that no pair is
/// measured under a libc setting the others lack.
fn environment(mut cmd: Command, spec: &PairSpec) -> Command {
    if let Some(tunables) = &spec.glibc_tunables {
        cmd.env("GLIBC_TUNABLES", tunables);
    }
    cmd
}

fn toml_str(p: &Path) -> String {
    let s = p.display().to_string();
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn ringseal_config(side: Side, spec: &PairSpec, target: SocketAddr) -> String {
    let c = &spec.certs.files;
    let mut t = format!(
        "# generated by ringseal bench\n[tls]\ncert = {}\nkey = {}\nca = {}\nprotocols = [\"{}\"]\n\
         cipher_suites = [\"{}\"]\n\n",
        toml_str(&c.cert),
        toml_str(&c.key),
        toml_str(&c.ca),
        spec.suite.protocol(),
        spec.suite.iana,
    );
    match side {
        Side::Inbound => {
            let _ = write!(
                t,
                "[[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"{target}\"\n\n"
            );
        }
        Side::Outbound => {
            let _ = write!(
                t,
                "[[outbound]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{target}\"\n\n"
            );
        }
    }
    // Routine connection ends at debug, not one info line each: the anchors log no connection here.
    let _ = writeln!(t, "[logging]\nconnections = false\n");
    let _ = writeln!(t, "[limits]\nmax_connections = {}", spec.max_connections);
    if let Some(cc) = &spec.loopback_congestion_control {
        let _ = writeln!(t, "\n[tcp]\nloopback_congestion_control = \"{cc}\"");
    }
    t
}

/// What an anchor's config is generated from.
struct ConfigInput<'a> {
    side: Side,
    suite: &'static Suite,
    certs: &'a Certs,
    listen: SocketAddr,
    target: SocketAddr,
    max_connections: usize,
    dir: &'a Path,
}

fn haproxy_config(s: &ConfigInput) -> String {
    let c = &s.certs.files;
    let v = s.suite.protocol();
    let ciphers = if s.suite.tls13 {
        format!("ciphersuites {}", s.suite.openssl)
    } else {
        format!("ciphers {}", s.suite.openssl)
    };
    let tls = format!(
        "crt {} ca-file {} verify required ssl-min-ver {v} ssl-max-ver {v} {ciphers}",
        c.pem.display(),
        c.ca.display()
    );
    let (bind, server) = match s.side {
        Side::Inbound => (
            format!("bind {} ssl {tls} no-tls-tickets", s.listen),
            format!("server storage {}", s.target),
        ),
        Side::Outbound => (
            format!("bind {}", s.listen),
            format!("server peer {} ssl {tls} no-ssl-reuse", s.target),
        ),
    };
    // HAProxy sizes its descriptor table from maxconn and exits if it cannot raise the limit that
    // far: give it the limit this process has, and the connections that fit in it.
    let ulimit = fd_limit();
    let max = s
        .max_connections
        .min((ulimit.saturating_sub(FD_SPARE) / 2) as usize);
    format!(
        "# generated by ringseal bench: a sidecar runs one thread\n\
         global\n    nbthread 1\n    ulimit-n {ulimit}\n    maxconn {max}\n    tune.ssl.cachesize 0\n\n\
         defaults\n    mode tcp\n    maxconn {max}\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n\n\
         frontend front\n    {bind}\n    default_backend back\n\n\
         backend back\n    {server}\n",
    )
}

fn stunnel_config(s: &ConfigInput) -> String {
    let c = &s.certs.files;
    let v = s.suite.protocol();
    let ciphers = if s.suite.tls13 {
        format!("ciphersuites = {}", s.suite.openssl)
    } else {
        format!("ciphers = {}", s.suite.openssl)
    };
    let role = match s.side {
        Side::Inbound => "requireCert = yes\noptions = NO_TICKET\n",
        Side::Outbound => "client = yes\nsessionResume = no\n",
    };
    format!(
        "; generated by ringseal bench\nforeground = yes\npid =\nsyslog = no\ndebug = warning\n\
         socket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n\n\
         [{side}]\naccept = {listen}\nconnect = {target}\ncert = {cert}\nkey = {key}\nCAfile = {ca}\n\
         verifyChain = yes\nsslVersionMin = {v}\nsslVersionMax = {v}\n{ciphers}\n{role}",
        side = s.side.name(),
        listen = s.listen,
        target = s.target,
        cert = c.cert.display(),
        key = c.key.display(),
        ca = c.ca.display(),
    )
}

fn nginx_config(s: &ConfigInput) -> String {
    let c = &s.certs.files;
    let v = s.suite.protocol();
    let (prefix, suite) = match s.side {
        Side::Inbound => ("ssl_", s.suite),
        Side::Outbound => ("proxy_ssl_", s.suite),
    };
    let ciphers = if suite.tls13 {
        format!("{prefix}conf_command Ciphersuites {};", suite.openssl)
    } else {
        format!("{prefix}ciphers {};", suite.openssl)
    };
    let server = match s.side {
        Side::Inbound => format!(
            "listen {} ssl;\n        ssl_certificate {};\n        ssl_certificate_key {};\n        \
             ssl_client_certificate {};\n        ssl_verify_client on;\n        \
             ssl_session_tickets off;\n        ssl_session_cache off;",
            s.listen,
            c.cert.display(),
            c.key.display(),
            c.ca.display()
        ),
        Side::Outbound => format!(
            "listen {};\n        proxy_ssl on;\n        proxy_ssl_certificate {};\n        \
             proxy_ssl_certificate_key {};\n        proxy_ssl_trusted_certificate {};\n        \
             proxy_ssl_verify on;\n        proxy_ssl_name localhost;\n        \
             proxy_ssl_session_reuse off;",
            s.listen,
            c.cert.display(),
            c.key.display(),
            c.ca.display()
        ),
    };
    // Each relayed connection is two connections for the worker; it cannot have more descriptors
    // than this process may give it.
    let worker_connections = 2 * s.max_connections + 64;
    let rlimit = (worker_connections as u64 + 64).min(fd_limit());
    format!(
        "# generated by ringseal bench: one worker, as a sidecar would run\n\
         daemon off;\nmaster_process on;\nworker_processes 1;\nworker_rlimit_nofile {rlimit};\n\
         pid {pid};\nerror_log {err} error;\nload_module {NGINX_STREAM_MODULE};\n\n\
         events {{\n    worker_connections {worker_connections};\n}}\n\n\
         stream {{\n    server {{\n        {server}\n        {prefix}protocols {v};\n        {ciphers}\n        \
         proxy_pass {target};\n        proxy_timeout 1h;\n    }}\n}}\n",
        pid = s.dir.join(format!("{}.pid", s.side.name())).display(),
        err = s.dir.join(format!("{}-error.log", s.side.name())).display(),
        target = s.target,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--glibc-tunables` reaches every proxy's command line alike; `inherit` (None) adds nothing.
    #[test]
    fn every_proxy_starts_with_the_same_glibc_tunables() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = PairSpec {
            suite: super::super::catalog::find_suite("TLS_AES_128_GCM_SHA256").unwrap(),
            certs: Arc::new(Certs::write(dir.path(), KeyType::EcdsaP256).unwrap()),
            backend: "127.0.0.1:9".parse().unwrap(),
            max_connections: 10,
            loopback_congestion_control: None,
            glibc_tunables: Some("glibc.cpu.x86_rep_movsb_threshold=0x100000".into()),
        };
        let tunables = |cmd: &Command| {
            cmd.get_envs()
                .find(|(k, _)| *k == "GLIBC_TUNABLES")
                .and_then(|(_, v)| v.map(|v| v.to_string_lossy().into_owned()))
        };
        let exe = Path::new("/usr/bin/ringseal");
        for cmd in [
            ringseal_run(exe, &[], Path::new("pair.conf")),
            Command::new("haproxy"),
        ] {
            let cmd = environment(cmd, &spec);
            assert_eq!(tunables(&cmd), spec.glibc_tunables, "{cmd:?}");
        }
        spec.glibc_tunables = None;
        assert_eq!(tunables(&environment(Command::new("nginx"), &spec)), None);
    }

    /// The anchors log no connection here, so neither may ringseal's pairs: an info line per
    /// connection costs the log thread's wake-ups, which showed in the handshake ratios (README,
    /// *Handshake CPU: the bench's method, fixed*).
    #[test]
    fn ringseal_pairs_log_routine_connection_ends_at_debug() {
        let dir = tempfile::tempdir().unwrap();
        let spec = PairSpec {
            suite: super::super::catalog::find_suite("TLS_AES_128_GCM_SHA256").unwrap(),
            certs: Arc::new(Certs::write(dir.path(), KeyType::EcdsaP256).unwrap()),
            backend: "127.0.0.1:9".parse().unwrap(),
            max_connections: 10,
            loopback_congestion_control: None,
            glibc_tunables: None,
        };
        for side in [Side::Inbound, Side::Outbound] {
            let text = ringseal_config(side, &spec, spec.backend);
            let config = ringseal::config::Config::from_toml(&text, &dir.path().join("pair.conf"))
                .unwrap_or_else(|e| panic!("{side:?}: {e}\n{text}"));
            assert!(!config.logging.connections, "{side:?}:\n{text}");
        }
    }
}
