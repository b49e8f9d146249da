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
//! off`. Per-connection logging is off as well (ringseal logs routine closes at debug): HAProxy and
//! nginx log nothing here, stunnel only warnings. Anchors run as a sidecar would: HAProxy with
//! `nbthread 1`, nginx with `worker_processes 1` (plus its idle master, counted too), stunnel as it
//! comes (a thread per connection). ringseal runs `ringseal run` with its defaults.
//!
//! CPU time is utime + stime from `/proc/PID/stat` (it includes threads that have exited, which
//! matters for stunnel), memory is VmRSS from `/proc/PID/status`, both summed over the process and
//! its children (nginx's master and worker).

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::{KeyKind, Peer, Suite};
use ringseal::pki::{Ca, Identity, NodeSpec};

/// How long a proxy may take to listen after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// `/proc/PID/stat` counts in clock ticks; USER_HZ is 100 on every Linux architecture that matters
/// (the kernel keeps this ABI fixed whatever its internal HZ), so no sysconf call is needed.
const TICKS_PER_SEC: f64 = 100.0;
/// nginx's stream module as Debian's libnginx-mod-stream installs it.
const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// The test PKI on disk: a CA and one node certificate (IP SAN 127.0.0.1, DNS SAN localhost for
/// nginx, which checks names), both of `key` type, shared by both sides of every pair.
pub struct Certs {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Certificate and key in one file (HAProxy's `crt`).
    pub pem: PathBuf,
    pub ca_der: rustls_pki_types::CertificateDer<'static>,
    pub node: Identity,
}

impl Certs {
    pub fn write(dir: &Path, kind: KeyKind) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let ca = Ca::create("BenchCluster", kind.pki(), 30)
            .with_context(|| format!("generating a {} CA", kind.name()))?;
        let mut spec = NodeSpec::new("bench-node", &[std::net::Ipv4Addr::LOCALHOST.into()]);
        spec.dns = vec!["localhost".to_owned()];
        spec.key = kind.pki();
        let node = ca
            .issue(&spec)
            .with_context(|| format!("issuing a {} node certificate", kind.name()))?;
        let c = Self {
            ca: dir.join("ca.crt"),
            cert: dir.join("node.crt"),
            key: dir.join("node.key"),
            pem: dir.join("node.pem"),
            dir: dir.to_owned(),
            ca_der: ca.cert_der.clone(),
            node,
        };
        let write = |p: &Path, s: &str| {
            std::fs::write(p, s).with_context(|| format!("writing {}", p.display()))
        };
        write(&c.ca, &ca.cert_pem)?;
        write(&c.cert, &c.node.cert_pem)?;
        let key_pem = match kind {
            KeyKind::Ed25519 => pkcs8_v1_ed25519(&c.node.key_der)?,
            _ => c.node.key_pem.clone(),
        };
        write(&c.key, &key_pem)?;
        write(&c.pem, &format!("{}{}", c.node.cert_pem, key_pem))?;
        Ok(c)
    }
}

/// rcgen (aws-lc-rs) writes Ed25519 keys as PKCS#8 v2 (with the public key), which OpenSSL 3.0
/// refuses ("wrong tag ... Field=attributes"); every peer gets the plain v1 encoding of the same key
/// (RFC 8410): a fixed prefix and the 32-byte seed.
fn pkcs8_v1_ed25519(der: &rustls_pki_types::PrivatePkcs8KeyDer<'_>) -> anyhow::Result<String> {
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let bytes = der.secret_pkcs8_der();
    // The seed is the OCTET STRING inside the privateKey OCTET STRING: 04 22 04 20 <32 bytes>.
    let at = bytes
        .windows(4)
        .position(|w| w == [0x04, 0x22, 0x04, 0x20])
        .filter(|i| i + 4 + 32 <= bytes.len())
        .context("unexpected Ed25519 PKCS#8 encoding")?;
    let mut v1 = PREFIX.to_vec();
    v1.extend_from_slice(&bytes[at + 4..at + 36]);
    // rcgen keeps the DER it was given, so this also checks that the key loads.
    let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&v1.into(), &rcgen::PKCS_ED25519)
        .context("re-encoding the Ed25519 key")?;
    Ok(key.serialize_pem())
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

/// A binary on PATH, or in the sbin directories a non-root PATH may lack (haproxy, nginx live there).
fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
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
}

/// CPU seconds (user + system) of each side so far.
#[derive(Debug, Clone, Copy)]
pub struct Cpu {
    pub outbound: f64,
    pub inbound: f64,
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
        let dir = spec.certs.dir.join(format!(
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
        Cpu {
            outbound: self.outbound.cpu_seconds(),
            inbound: self.inbound.cpu_seconds(),
        }
    }

    /// Resident memory in bytes: (outbound, inbound).
    pub fn rss(&self) -> (u64, u64) {
        (self.outbound.rss_bytes(), self.inbound.rss_bytes())
    }

    /// An error if either side has exited (crashed, or refused something at run time).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.inbound.check_alive()?;
        self.outbound.check_alive()
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
            let exe = std::env::current_exe().context("locating the ringseal binary")?;
            let mut cmd = Command::new(exe);
            cmd.arg("run")
                .arg("--config")
                .arg(&file)
                .env("RINGSEAL_LOG", "info")
                .env("NO_COLOR", "1");
            let mut proc = Proc::spawn(&name, cmd, None, false)?;
            let needle = match self {
                Self::Inbound => "starting inbound mTLS listener on ",
                Self::Outbound => "starting outbound listener on ",
            };
            let line = proc.wait_line(needle)?;
            let addr = line
                .split(needle)
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("{name}: no address in its start line {line:?}"))?;
            return Ok((proc, addr));
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
        let mut proc = Proc::spawn(&name, cmd, stop, tree)?;
        proc.wait_listening(port)?;
        Ok((proc, listen))
    }
}

fn toml_str(p: &Path) -> String {
    let s = p.display().to_string();
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn ringseal_config(side: Side, spec: &PairSpec, target: SocketAddr) -> String {
    let c = &spec.certs;
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
    let _ = writeln!(t, "[limits]\nmax_connections = {}", spec.max_connections);
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
    let c = s.certs;
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
    let c = s.certs;
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
    let c = s.certs;
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

/// A child process whose stderr is collected (the last lines, for error messages).
struct Proc {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    tail: Arc<Mutex<VecDeque<String>>>,
    /// How to stop it gracefully (nginx); otherwise SIGKILL.
    stop: Option<Command>,
    /// Count its children too (nginx's worker).
    tree: bool,
}

impl Proc {
    fn spawn(
        name: &str,
        mut cmd: Command,
        stop: Option<Command>,
        tree: bool,
    ) -> anyhow::Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        // Bounded: only the start lines are read from the channel; later lines are only kept in
        // the tail (a chatty proxy must not grow memory, nor block on a full pipe).
        let (tx, lines) = mpsc::sync_channel(256);
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let keep = tail.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.try_send(line.clone());
                if let Ok(mut t) = keep.lock() {
                    if t.len() == 12 {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            }
        });
        Ok(Self {
            name: name.to_owned(),
            child,
            lines,
            tail,
            stop,
            tree,
        })
    }

    fn tail(&self) -> String {
        self.tail
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join(" | "))
            .unwrap_or_default()
    }

    fn died(&mut self) -> Option<anyhow::Error> {
        match self.child.try_wait() {
            Ok(Some(status)) => {
                // Let the stderr reader catch the last lines.
                std::thread::sleep(Duration::from_millis(50));
                Some(anyhow::anyhow!(
                    "{} exited ({status}): {}",
                    self.name,
                    self.tail()
                ))
            }
            _ => None,
        }
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.died() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Waits for a stderr line containing `needle` (ringseal's start line with its address).
    fn wait_line(&mut self, needle: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(50)) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if let Some(e) = self.died() {
                return Err(e);
            }
        }
        if let Some(e) = self.died() {
            return Err(e);
        }
        anyhow::bail!(
            "{} did not log {needle:?} within {}s: {}",
            self.name,
            START_TIMEOUT.as_secs(),
            self.tail()
        )
    }

    /// Waits until something listens on 127.0.0.1:`port` (read from /proc/net/tcp, so no probe
    /// connection disturbs the proxy), or the process exits.
    fn wait_listening(&mut self, port: u16) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(e) = self.died() {
                return Err(e);
            }
            if listening(port) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        anyhow::bail!(
            "{} does not listen on 127.0.0.1:{port} after {}s: {}",
            self.name,
            START_TIMEOUT.as_secs(),
            self.tail()
        )
    }

    fn pids(&self) -> Vec<u32> {
        let pid = self.child.id();
        if self.tree {
            descendants(pid)
        } else {
            vec![pid]
        }
    }

    fn cpu_seconds(&self) -> f64 {
        self.pids().into_iter().filter_map(cpu_ticks).sum::<u64>() as f64 / TICKS_PER_SEC
    }

    fn rss_bytes(&self) -> u64 {
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
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a socket listens on `port` (any local address), per /proc/net/tcp.
fn listening(port: u16) -> bool {
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

/// utime + stime of a process (all its threads, including exited ones), in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let f = stat_fields(pid)?;
    // After the name: state(0) ppid(1) ... utime(11) stime(12).
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(cpu_ticks(me).is_some());
        assert!(rss_bytes(me).unwrap() > 0);
        assert_eq!(descendants(me)[0], me);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(listening(l.local_addr().unwrap().port()));
    }
}
