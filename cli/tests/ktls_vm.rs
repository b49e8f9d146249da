//! Proof that kTLS works, on a kernel that has it.
//!
//! This machine's kernel has no kTLS, so every other test exercises the user-space path. Here the host
//! side ([`ktls_in_a_debian_vm`]) downloads Debian's kernel package (`apt-get download`, cached under
//! `target/tmp/ktls-vm`), builds an initramfs holding busybox, the kernel's `tls` and crypto modules,
//! the ringseal binary, this test binary and their shared libraries, and boots it under
//! `qemu-system-x86_64` (plain emulation, no KVM). Inside, `/init` loads `tls` and runs this binary's
//! [`guest`] test, which drives real `ringseal run` processes with `offload = "require"` and checks:
//!
//! * a sidecar pair (outbound -> inbound) moves 64 MiB each way byte-identical (SHA-256), once with the
//!   peer closing first and once with the backend closing first, both ends on kTLS
//!   (`/proc/net/tls_stat` counters rise; `ringseal_connections_total{offload="ktls"}`);
//! * a TLS 1.3 upstream that sends NewSessionTickets after the handshake (rustls server, CHACHA20):
//!   the tickets reach the kTLS socket as handshake records, are ignored, the data is intact;
//! * a peer that sends a KeyUpdate: everything before it reaches the backend, then a reset; the peer
//!   gets a reset too (an abort, not close_notify); counted as `how="peer_key_update"`;
//! * a TLS 1.2 connection (AES-128-GCM) whose key reaches its record limit (lowered for the test): the
//!   peer receives a prefix of the backend's stream, then a reset; `how="key_limit"`;
//! * a backend that resets mid-stream behind the sidecar pair: the client receives a prefix, then a
//!   reset through both kTLS sidecars (`how="backend_reset"` on B, `how="peer_reset"` on A).
//!
//! The host fails loudly unless the guest reports success. It skips (saying why) only when `CI` is unset
//! and qemu or the kernel package cannot be had.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringseal_testkit::process::Proc;
use ringseal_testkit::stream::{MIB, Seeded, expected_hash};
use ringseal_testkit::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// Set by the VM's /init: this process is the guest.
const GUEST_ENV: &str = "RINGSEAL_KTLS_GUEST";
/// Lines the guest prints for the host to pick up.
const MARK: &str = "RINGSEAL-VM:";
/// The whole VM run may take this long before it is killed (emulation is slow; this is a hang guard,
/// not a timing assertion).
const VM_DEADLINE: Duration = Duration::from_secs(1200);
/// A guest step that must finish (generous: the guest runs emulated).
const STEP: Duration = Duration::from_secs(300);

// ------------------------------------------------------------------------------------------------
// Host side
// ------------------------------------------------------------------------------------------------

#[test]
fn ktls_in_a_debian_vm() {
    if std::env::var_os(GUEST_ENV).is_some() {
        return; // inside the VM only `guest` runs
    }
    let ci = std::env::var_os("CI").is_some();
    let skip = |why: String| {
        assert!(!ci, "kTLS VM test cannot run in CI: {why}");
        eprintln!("SKIPPED ktls_in_a_debian_vm: {why}");
    };
    let Some(qemu) = which("qemu-system-x86_64") else {
        return skip("qemu-system-x86_64 not found (apt-get install qemu-system-x86)".into());
    };
    let Some(busybox) = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    else {
        return skip("busybox not found (apt-get install busybox-static)".into());
    };
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ktls-vm");
    let kernel = match debian_kernel(&work) {
        Ok(k) => k,
        Err(why) => return skip(why),
    };
    eprintln!(
        "kernel {} from {}",
        kernel.release,
        kernel.vmlinuz.display()
    );

    let initrd = work.join("initrd.cpio");
    build_initramfs(&initrd, &busybox, &kernel);

    let mut vm = Command::new(qemu)
        .args(["-m", "2048", "-smp", "2", "-cpu", "max", "-accel", "tcg"])
        .args([
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start qemu-system-x86_64");
    let serial = vm.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(serial).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + VM_DEADLINE;
    let mut console = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if line.contains(MARK) {
                    eprintln!("{line}");
                }
                console.push(line);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = vm.kill();
                break;
            }
        }
    }
    let status = vm.wait().unwrap();
    let console = console.join("\n");
    let passed = console.contains(&format!("{MARK} result ok"))
        && console.contains("test result: ok. 1 passed");
    assert!(
        passed,
        "the kTLS test in the VM did not pass (qemu {status}); console:\n{console}"
    );
    assert!(
        console.contains(&format!("{MARK} kernel {}", kernel.release)),
        "the VM did not run Debian's kernel {}:\n{console}",
        kernel.release
    );
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

struct Kernel {
    release: String,
    vmlinuz: PathBuf,
    /// `lib/modules/<release>`
    modules: PathBuf,
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Debian's current kernel (what `linux-image-amd64` depends on), downloaded once into `work`.
fn debian_kernel(work: &Path) -> Result<Kernel, String> {
    let root = work.join("kernel");
    if let Some(k) = find_kernel(&root) {
        return Ok(k);
    }
    let dl = work.join("download");
    let _ = std::fs::remove_dir_all(&dl);
    std::fs::create_dir_all(&dl).map_err(|e| e.to_string())?;
    let get = |pkg: &str| {
        run(Command::new("apt-get")
            .args(["download", "-q", pkg])
            .current_dir(&dl))
    };
    get("linux-image-amd64")
        .map_err(|e| format!("cannot download Debian's kernel (is apt-get update done?): {e}"))?;
    let meta = debs(&dl).into_iter().next().ok_or("no .deb downloaded")?;
    let depends = run(Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&meta)
        .arg("Depends"))?;
    let image = depends
        .split([',', ' '])
        .find(|d| d.starts_with("linux-image-") && d != &"linux-image-amd64")
        .ok_or_else(|| format!("linux-image-amd64 depends on no kernel image: {depends}"))?
        .to_owned();
    get(&image)?;
    let deb = debs(&dl)
        .into_iter()
        .find(|d| d.file_name().unwrap().to_string_lossy().starts_with(&image))
        .ok_or("the kernel image package was not downloaded")?;
    let unpacked = work.join("kernel.new");
    let _ = std::fs::remove_dir_all(&unpacked);
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    let _ = std::fs::remove_dir_all(&root);
    std::fs::rename(&unpacked, &root).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&dl);
    find_kernel(&root).ok_or_else(|| format!("{image} holds no vmlinuz and tls.ko"))
}

fn debs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "deb"))
                .collect()
        })
        .unwrap_or_default()
}

fn find_kernel(root: &Path) -> Option<Kernel> {
    let boot = std::fs::read_dir(root.join("boot")).ok()?;
    let vmlinuz = boot.filter_map(|e| e.ok().map(|e| e.path())).find(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
    })?;
    let release = vmlinuz
        .file_name()?
        .to_str()?
        .strip_prefix("vmlinuz-")?
        .to_owned();
    let modules = root.join("lib/modules").join(&release);
    modules
        .join("kernel/net/tls/tls.ko")
        .exists()
        .then_some(Kernel {
            release,
            vmlinuz,
            modules,
        })
}

/// An initramfs (newc cpio, uncompressed) with busybox, the tls and crypto modules, the ringseal
/// binary and this test binary at their host paths (the test finds ringseal through
/// `CARGO_BIN_EXE_ringseal`), their shared libraries, and `/init`. The initramfs root is itself a
/// writable RAM file system, so nothing is mounted over /tmp: the checkout may live there (CI clones
/// into /tmp), and a tmpfs on /tmp would hide the binaries.
fn build_initramfs(out: &Path, busybox: &Path, kernel: &Kernel) {
    let mut cpio = Cpio::default();
    for dir in [
        "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "etc",
    ] {
        cpio.dir(dir);
    }
    cpio.file("bin/busybox", &std::fs::read(busybox).unwrap(), 0o755);
    let modules = format!("lib/modules/{}", kernel.release);
    for sub in [
        "kernel/net/tls",
        "kernel/crypto",
        "kernel/arch/x86/crypto",
        "kernel/lib/crypto",
    ] {
        cpio.tree(&kernel.modules.join(sub), &format!("{modules}/{sub}"));
    }
    let ringseal = PathBuf::from(env!("CARGO_BIN_EXE_ringseal"));
    let me = std::env::current_exe().unwrap();
    let mut libs = std::collections::BTreeSet::new();
    for bin in [&ringseal, &me] {
        cpio.file_at(bin, &stripped(bin), 0o755);
        libs.extend(shared_libraries(bin));
    }
    for lib in libs {
        let real = std::fs::canonicalize(&lib).unwrap();
        cpio.file_at(&lib, &std::fs::read(real).unwrap(), 0o755);
    }
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sys /sys\n\
         mount -t devtmpfs dev /dev\n\
         ip link set lo up\n\
         depmod\n\
         modprobe tls || echo '{MARK} modprobe tls failed'\n\
         echo \"{MARK} kernel $(uname -r)\"\n\
         cd /tmp\n\
         {GUEST_ENV}=1 TMPDIR=/tmp {me} guest --exact --ignored --nocapture --test-threads=1\n\
         echo \"{MARK} guest exit $?\"\n\
         poweroff -f\n",
        me = me.display()
    );
    cpio.file("init", init.as_bytes(), 0o755);
    std::fs::write(out, cpio.finish()).unwrap();
}

/// The binary without debug information when `strip` is there (a fifth of the size to boot).
fn stripped(bin: &Path) -> Vec<u8> {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    let ok = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(tmp.path())
        .arg(bin)
        .status()
        .is_ok_and(|s| s.success());
    std::fs::read(if ok { tmp.path() } else { bin }).unwrap()
}

/// What `ldd` lists for `bin`, the dynamic loader included.
fn shared_libraries(bin: &Path) -> Vec<PathBuf> {
    let out = run(Command::new("ldd").arg(bin)).unwrap();
    out.lines()
        .filter_map(|l| {
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// A newc cpio archive, what the kernel unpacks as its initramfs.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
    dirs: std::collections::BTreeSet<String>,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        let mut path = String::new();
        for part in name.split('/').filter(|p| !p.is_empty()) {
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(part);
            if self.dirs.insert(path.clone()) {
                let p = path.clone();
                self.entry(&p, 0o040755, &[]);
            }
        }
    }

    fn file(&mut self, name: &str, data: &[u8], perm: u32) {
        if let Some((parent, _)) = name.rsplit_once('/') {
            self.dir(parent);
        }
        self.entry(name, 0o100000 | perm, data);
    }

    /// A file at the same absolute path as on the host.
    fn file_at(&mut self, host: &Path, data: &[u8], perm: u32) {
        let name = host.to_str().unwrap().trim_start_matches('/').to_owned();
        self.file(&name, data, perm);
    }

    /// Every regular file under `host`, at `name`.
    fn tree(&mut self, host: &Path, name: &str) {
        let Ok(entries) = std::fs::read_dir(host) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let child = format!("{name}/{}", e.file_name().to_string_lossy());
            if path.is_dir() {
                self.tree(&path, &child);
            } else if path.is_file() {
                self.file(&child, &std::fs::read(&path).unwrap(), 0o644);
            }
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}

// ------------------------------------------------------------------------------------------------
// Guest side
// ------------------------------------------------------------------------------------------------

/// The fixed ports inside the VM, which runs nothing else.
const BACKEND: &str = "127.0.0.1:7000";
const B_INBOUND: &str = "127.0.0.1:7001";
const A_OUTBOUND: &str = "127.0.0.1:7002";
const TICKET_SERVER: &str = "127.0.0.1:7003";
const A_OUTBOUND_TICKETS: &str = "127.0.0.1:7004";
const C_INBOUND: &str = "127.0.0.1:7005";
const A_METRICS: &str = "127.0.0.1:9464";
const B_METRICS: &str = "127.0.0.1:9465";
const C_METRICS: &str = "127.0.0.1:9466";
const D_INBOUND: &str = "127.0.0.1:7006";
const P_INBOUND: &str = "127.0.0.1:7008";
const A2_OUTBOUND: &str = "127.0.0.1:7007";
const D_METRICS: &str = "127.0.0.1:9467";
const A2_METRICS: &str = "127.0.0.1:9468";
/// Sidecar C's TX record limit (RINGSEAL_TEST_KTLS_RECORD_LIMIT).
const C_RECORD_LIMIT: u64 = 300;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn tls_stat() -> std::collections::BTreeMap<String, u64> {
    std::fs::read_to_string("/proc/net/tls_stat")
        .expect("/proc/net/tls_stat (is the tls module loaded?)")
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_owned(), it.next()?.parse().ok()?))
        })
        .collect()
}

fn stat_line(s: &std::collections::BTreeMap<String, u64>) -> String {
    s.iter()
        .filter(|(k, _)| {
            [
                "TlsTxSw",
                "TlsRxSw",
                "TlsCurrTxSw",
                "TlsCurrRxSw",
                "TlsDecryptError",
            ]
            .contains(&k.as_str())
        })
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: did not finish within {STEP:?}"))
}

/// Starts `ringseal run` with `body` as its config (after the [tls] table). `close_linger` is long:
/// under emulation on a busy host, the second direction of a 64 MiB stream can take longer than the
/// default 30 s to finish after the first has closed.
fn sidecar(pki: &Pki, name: &str, body: &str, env: &[(&str, &str)]) -> Proc {
    let dir = tempfile::tempdir().unwrap();
    let config = sidecar_config(pki, dir.path(), name, body);
    sidecar_at(&config, dir, name, env)
}

/// Writes the PKI and `NAME.toml` into `dir`; returns the config's path.
fn sidecar_config(pki: &Pki, dir: &Path, name: &str, body: &str) -> PathBuf {
    pki.write(dir);
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "offload = \"require\"\n\n[tls]\ncert = \"node.crt\"\nkey = \"node.key\"\nca = \"ca.crt\"\n{body}\n\
             [limits]\nclose_linger = \"10m\"\n"
        ),
    )
    .unwrap();
    config
}

/// Starts `ringseal run --config CONFIG` (keeping `dir` while it runs) and waits for kTLS.
fn sidecar_at(config: &Path, dir: tempfile::TempDir, name: &str, env: &[(&str, &str)]) -> Proc {
    let mut env = env.to_vec();
    env.push(("RINGSEAL_LOG", "info,ringseal::relay=trace"));
    let mut proc = Proc::spawn_with(&[], config, dir, &env);
    proc.wait_for("starting ");
    let line = proc
        .seen
        .iter()
        .find(|l| l.contains("kTLS available"))
        .unwrap_or_else(|| panic!("sidecar {name} did not find kTLS: {:?}", proc.seen))
        .clone();
    println!("{MARK} sidecar {name}: {line}");
    proc
}

/// What a reader got: (length, SHA-256, how the stream ended: `Ok` at a clean end, else the error).
type Got = (usize, Vec<u8>, Result<(), std::io::ErrorKind>);

/// What the backend does with its next connection.
enum Plan {
    /// Stream `len` seeded bytes back while reading; with `wait_for_peer_eof`, half of it only after
    /// the peer's end of stream. Reports what it read.
    Duplex {
        seed: u64,
        len: usize,
        wait_for_peer_eof: bool,
        /// Pauses the stream at each quarter ([`Gate`]).
        gate: Option<Gate>,
        done: oneshot::Sender<Got>,
    },
    /// Write `len` seeded bytes, then reset the connection (SO_LINGER 0).
    ResetAfter { seed: u64, len: usize },
}

async fn backend(listener: TcpListener, mut plans: mpsc::UnboundedReceiver<Plan>) {
    while let Some(plan) = plans.recv().await {
        let (s, _) = listener.accept().await.unwrap();
        let (seed, len, wait_for_peer_eof, gate, done) = match plan {
            Plan::Duplex {
                seed,
                len,
                wait_for_peer_eof,
                gate,
                done,
            } => (seed, len, wait_for_peer_eof, gate, done),
            Plan::ResetAfter { seed, len } => {
                tokio::spawn(async move {
                    let mut s = s;
                    let mut data = Seeded::new(seed, len);
                    while let Some(chunk) = data.next_chunk() {
                        s.write_all(chunk).await.unwrap();
                    }
                    socket2::SockRef::from(&s)
                        .set_linger(Some(Duration::ZERO))
                        .unwrap();
                });
                continue;
            }
        };
        tokio::spawn(async move {
            let (r, w) = s.into_split();
            let got = duplex(r, w, seed, len, wait_for_peer_eof, gate).await;
            let _ = done.send(got);
        });
    }
}

/// Reads everything from `r` while writing a seeded stream of `len` bytes to `w`, then FIN. With
/// `second`, half the stream (all of an empty one) waits for `r`'s end: this side closes second.
/// Writing stops quietly when the other side is gone (the key-limit case). With a `gate`, the
/// writer pauses at each quarter until the gate opens. Returns what was read.
async fn duplex(
    mut r: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    mut w: impl tokio::io::AsyncWrite + Unpin,
    seed: u64,
    len: usize,
    second: bool,
    mut gate: Option<Gate>,
) -> Got {
    let (eof_tx, mut eof_rx) = oneshot::channel();
    let reader = tokio::spawn(async move {
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0;
        loop {
            let n = match r.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    // The end of the other side's stream, if not an orderly one.
                    let _ = eof_tx.send(());
                    return (total, hash.finalize().to_vec(), Err(e.kind()));
                }
            };
            if n == 0 {
                let _ = eof_tx.send(());
                return (total, hash.finalize().to_vec(), Ok(()));
            }
            hash.update(&buf[..n]);
            total += n;
        }
    });
    let mut data = Seeded::new(seed, len);
    let mut sent = 0;
    if second && len == 0 {
        bounded("the other side's end of stream", &mut eof_rx)
            .await
            .unwrap();
    }
    while let Some(chunk) = data.next_chunk() {
        if let Some(g) = gate.as_mut() {
            g.pass(sent, len).await;
        }
        if w.write_all(chunk).await.is_err() {
            break;
        }
        sent += chunk.len();
        if second && sent >= len / 2 && sent - chunk.len() < len / 2 {
            bounded("the other side's end of stream", &mut eof_rx)
                .await
                .unwrap();
        }
    }
    let _ = w.shutdown().await;
    bounded("reading", reader).await.unwrap()
}

/// Both ends of a duplex stream got the other's seeded stream (`seeds`: client's, backend's) whole,
/// and saw an orderly end; returns the two SHA-256 (client -> backend, backend -> client).
fn both_intact(
    client: (usize, &Vec<u8>, Result<(), std::io::ErrorKind>),
    backend: (usize, &Vec<u8>, Result<(), std::io::ErrorKind>),
    seeds: (u64, u64),
    len: usize,
) -> (Vec<u8>, Vec<u8>) {
    assert_eq!(client.2, Ok(()), "the client's stream ends cleanly");
    assert_eq!(backend.2, Ok(()), "the backend's stream ends cleanly");
    let up = expected_hash(seeds.0, len);
    let down = expected_hash(seeds.1, len);
    assert_eq!((backend.0, backend.1), (len, &up), "client -> backend");
    assert_eq!((client.0, client.1), (len, &down), "backend -> client");
    (up, down)
}

/// Reads `client` to its end: (length, SHA-256, `Ok` at an orderly end or the error).
async fn read_to_end(client: &mut TcpStream) -> (usize, Sha256, Result<(), std::io::ErrorKind>) {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    let end = loop {
        match bounded("the client's stream", client.read(&mut buf)).await {
            Ok(0) => break Ok(()),
            Ok(n) => {
                hash.update(&buf[..n]);
                got += n;
            }
            Err(e) => break Err(e.kind()),
        }
    };
    (got, hash, end)
}

/// Pauses a writer at each quarter of its stream until the test opens that quarter: both directions
/// of a connection are in flight (neither has ended) while a sidecar is replaced.
#[derive(Clone)]
struct Gate {
    /// The last quarter this writer has reached (and waits at until `open` lets it pass).
    reached: Arc<std::sync::atomic::AtomicUsize>,
    open: tokio::sync::watch::Receiver<usize>,
}

impl Gate {
    /// Called before each chunk: at the first chunk past quarter k (1..=3), waits until k is open.
    async fn pass(&mut self, sent: usize, len: usize) {
        use std::sync::atomic::Ordering;
        let next = self.reached.load(Ordering::SeqCst) + 1;
        if next <= 3 && sent >= next * len / 4 {
            self.reached.store(next, Ordering::SeqCst);
            bounded("the gate", self.open.wait_for(|open| *open >= next))
                .await
                .unwrap();
        }
    }
}

/// One stream through the sidecar pair: 64 MiB each way, `peer_first` closing first or second.
async fn pair_stream(plans: &mpsc::UnboundedSender<Plan>, peer_first: bool, seeds: (u64, u64)) {
    const LEN: usize = 64 * MIB;
    let (done_tx, done_rx) = oneshot::channel();
    plans
        .send(Plan::Duplex {
            seed: seeds.1,
            len: LEN,
            wait_for_peer_eof: peer_first,
            gate: None,
            done: done_tx,
        })
        .unwrap();
    let client = TcpStream::connect(addr(A_OUTBOUND)).await.unwrap();
    let (r, w) = client.into_split();
    let (client_got, client_hash, client_end) = bounded(
        "the client's stream",
        duplex(r, w, seeds.0, LEN, !peer_first, None),
    )
    .await;
    let (backend_got, backend_hash, backend_end) =
        bounded("the backend's stream", done_rx).await.unwrap();
    let (up, down) = both_intact(
        (client_got, &client_hash, client_end),
        (backend_got, &backend_hash, backend_end),
        seeds,
        LEN,
    );
    println!(
        "{MARK} {} closes first: 64 MiB each way intact, client->backend sha256 {}, backend->client sha256 {}",
        if peer_first { "peer" } else { "backend" },
        hex(&up),
        hex(&down)
    );
}

/// A rustls TLS 1.3 server (CHACHA20-POLY1305 only) that requires our client certificate and sends
/// session tickets after the handshake; it echoes the SHA-256 of what it read.
async fn ticket_server(pki: Arc<Pki>) {
    let listener = TcpListener::bind(addr(TICKET_SERVER)).await.unwrap();
    let mut provider = (*ringseal::tls::provider()).clone();
    provider
        .cipher_suites
        .retain(|s| s.suite() == rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
    let provider = Arc::new(provider);
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(pki.roots(), provider.clone())
            .build()
            .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![pki.node.cert_der.clone()], pki.node.key())
        .unwrap();
    config.send_tls13_tickets = 4;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    loop {
        let (s, _) = listener.accept().await.unwrap();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let mut tls = acceptor.accept(s).await.unwrap();
            let mut hash = Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = tls.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
            }
            tls.write_all(&hash.finalize()).await.unwrap();
            tls.shutdown().await.unwrap();
        });
    }
}

fn scrape_str(a: &str) -> String {
    scrape(addr(a))
}

/// 7: the inbound sidecar D is replaced three times (a new `ringseal run` takes over through the
/// hand-over socket, the old one exits) while one connection through the pair A2 -> D streams 64 MiB
/// each way. Both writers pause at each quarter until that replacement is done, so neither direction
/// has ended when the connection moves. The connection must never close: byte-identical both ways with
/// an orderly end, one TLS connection at A2 for the whole stream, the kernel's kTLS sockets the same
/// two throughout (`TlsCurrTxSw`/`TlsCurrRxSw` at 2 after each replacement, no decrypt error).
async fn replaced_under_a_stream(
    pki: &Pki,
    plans: &mpsc::UnboundedSender<Plan>,
) -> (Proc, Proc, PathBuf, tempfile::TempDir) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    const LEN: usize = 64 * MIB;
    const REPLACEMENTS: usize = 3;
    let mut a2 = sidecar(
        pki,
        "A2",
        &format!(
            "[[outbound]]\nlisten = \"{A2_OUTBOUND}\"\nupstream = \"{D_INBOUND}\"\n\n\
             [metrics]\nlisten = \"{A2_METRICS}\"\n\n[logging]\nconnections = true\n"
        ),
        &[],
    );
    let d_dir = tempfile::tempdir().unwrap();
    let d_config = sidecar_config(
        pki,
        d_dir.path(),
        "D",
        &format!(
            "[[inbound]]\nlisten = \"{D_INBOUND}\"\nforward = \"{BACKEND}\"\n\n\
             [handover]\nsocket = \"{}\"\n\n[metrics]\nlisten = \"{D_METRICS}\"\n\n\
             [logging]\nconnections = true\n",
            d_dir.path().join("handover.sock").display()
        ),
    );
    let mut d = sidecar_at(&d_config, tempfile::tempdir().unwrap(), "D", &[]);

    let (open_tx, open_rx) = tokio::sync::watch::channel(0usize);
    let client_at = Arc::new(AtomicUsize::new(0));
    let backend_at = Arc::new(AtomicUsize::new(0));
    let (done_tx, done_rx) = oneshot::channel();
    plans
        .send(Plan::Duplex {
            seed: 72,
            len: LEN,
            wait_for_peer_eof: false,
            gate: Some(Gate {
                reached: backend_at.clone(),
                open: open_rx.clone(),
            }),
            done: done_tx,
        })
        .unwrap();
    let client = TcpStream::connect(addr(A2_OUTBOUND)).await.unwrap();
    let (r, w) = client.into_split();
    let client_gate = Gate {
        reached: client_at.clone(),
        open: open_rx,
    };
    let client_stream = tokio::spawn(duplex(r, w, 71, LEN, false, Some(client_gate)));
    // What starting a sidecar alone adds to the kernel's kTLS counters (its support probe): a
    // replacement may add that and nothing else (no socket gets the ULP or a key again).
    let t0 = tls_stat();
    let probe = sidecar(
        pki,
        "P",
        &format!("[[inbound]]\nlisten = \"{P_INBOUND}\"\nforward = \"{BACKEND}\"\n"),
        &[],
    );
    drop(probe);
    let t1 = tls_stat();
    let started = |k: &str| t1[k] - t0[k];
    let before = tls_stat();
    for k in 1..=REPLACEMENTS {
        bounded("both writers at the next quarter", async {
            while client_at.load(Ordering::SeqCst) < k || backend_at.load(Ordering::SeqCst) < k {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        // The connection is on kTLS by now (both writers have passed a quarter).
        let last = tls_stat();
        let old_pid = d.child.id();
        let mut next = sidecar_at(&d_config, tempfile::tempdir().unwrap(), "D", &[]);
        let took = next.wait_for("took over from pid");
        d.wait_for("handed over to pid");
        let status = d.wait_exit();
        assert!(
            status.success(),
            "the old D (pid {old_pid}) exited: {status}"
        );
        let now = tls_stat();
        assert_eq!(
            (now["TlsCurrTxSw"], now["TlsCurrRxSw"]),
            (2, 2),
            "replacement {k}: the same two kTLS sockets (A2's and D's): {}",
            stat_line(&now)
        );
        assert_eq!(now["TlsDecryptError"], before["TlsDecryptError"]);
        for key in ["TlsTxSw", "TlsRxSw"] {
            assert_eq!(
                now[key] - last[key],
                started(key),
                "replacement {k}: {key} rose by more than a start-up adds ({}): a moved socket was set \
                 up again; before {}, after {}",
                started(key),
                stat_line(&last),
                stat_line(&now)
            );
        }
        println!(
            "{MARK} replacement {k}: {took}; old pid {old_pid} exited; {}",
            stat_line(&now)
        );
        d = next;
        open_tx.send(k).unwrap();
    }
    let (client_got, client_hash, client_end) =
        bounded("the client's stream", client_stream).await.unwrap();
    let (backend_got, backend_hash, backend_end) =
        bounded("the backend's stream", done_rx).await.unwrap();
    let (up, down) = both_intact(
        (client_got, &client_hash, client_end),
        (backend_got, &backend_hash, backend_end),
        (71, 72),
        LEN,
    );
    // One TLS connection at A2 from start to end; the last D ended it in order.
    d.wait_for("ended (clean)");
    a2.wait_for("ended (clean)");
    let ma2 = scrape_str(A2_METRICS);
    let connections = ringseal_testkit::samples(&ma2, "ringseal_connections_total", &[]);
    assert_eq!(connections, 1.0, "A2 opened one connection to D: {ma2}");
    let after = tls_stat();
    assert_eq!(
        (after["TlsCurrTxSw"], after["TlsCurrRxSw"]),
        (0, 0),
        "no kTLS socket left: {}",
        stat_line(&after)
    );
    println!(
        "{MARK} D replaced {REPLACEMENTS} times under a 64 MiB-each-way kTLS stream: intact \
         (client->backend sha256 {}, backend->client sha256 {}), one connection at A2, {}",
        hex(&up),
        hex(&down),
        stat_line(&after)
    );
    (a2, d, d_config, d_dir)
}

/// 8: the record count of a moved kTLS connection comes from the kernel, not from a fresh start.
/// The backend sends 2 MiB (at least 128 records) through A2 -> D and pauses; D is replaced by a
/// process whose record limit (RINGSEAL_TEST_KTLS_RECORD_LIMIT = 64) is already behind: it must abort
/// the moved connection (`key_limit`) before sending a record of its own. A process that counted
/// from zero would send up to 64 more records (up to 1 MiB): the client would get more than 2 MiB.
async fn record_count_survives_a_replacement(
    plans: &mpsc::UnboundedSender<Plan>,
    mut d: Proc,
    d_config: &Path,
) -> Proc {
    use std::sync::atomic::{AtomicUsize, Ordering};
    const LEN: usize = 8 * MIB;
    let (open_tx, open_rx) = tokio::sync::watch::channel(0usize);
    let backend_at = Arc::new(AtomicUsize::new(0));
    let (done_tx, _done_rx) = oneshot::channel();
    plans
        .send(Plan::Duplex {
            seed: 81,
            len: LEN,
            wait_for_peer_eof: false,
            gate: Some(Gate {
                reached: backend_at.clone(),
                open: open_rx,
            }),
            done: done_tx,
        })
        .unwrap();
    let mut client = TcpStream::connect(addr(A2_OUTBOUND)).await.unwrap();
    bounded("the backend at its first quarter", async {
        while backend_at.load(Ordering::SeqCst) < 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut next = sidecar_at(
        d_config,
        tempfile::tempdir().unwrap(),
        "D",
        &[("RINGSEAL_TEST_KTLS_RECORD_LIMIT", "64")],
    );
    next.wait_for("took over from pid");
    d.wait_for("handed over to pid");
    assert!(d.wait_exit().success());
    open_tx.send(3).unwrap();
    let (got, hash, end) = read_to_end(&mut client).await;
    assert_eq!(
        end,
        Err(std::io::ErrorKind::ConnectionReset),
        "the moved connection aborts at its record limit: {got} bytes, then a reset"
    );
    assert!(
        got <= LEN / 4,
        "the new process sent records past the limit: the client got {got} bytes, the backend had \
         written {} before the replacement",
        LEN / 4
    );
    let mut expect = Seeded::new(81, got);
    let mut prefix = Sha256::new();
    while let Some(chunk) = expect.next_chunk() {
        prefix.update(chunk);
    }
    assert!(
        hash.finalize() == prefix.finalize(),
        "a prefix of the backend's stream"
    );
    // Logged as soon as the connection was adopted, possibly before the took-over line.
    if !next.seen.iter().any(|l| l.contains("ended (key_limit)")) {
        next.wait_for("ended (key_limit)");
    }
    println!(
        "{MARK} record count carried across a replacement: the new process (limit 64 records) aborted \
         the moved connection after {got} bytes (key_limit)"
    );
    next
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the guest side of ktls_in_a_debian_vm: runs inside the VM"]
async fn guest() {
    assert!(
        std::env::var_os(GUEST_ENV).is_some(),
        "runs inside the kTLS VM only"
    );
    let pki = Arc::new(Pki::new());

    let listener = TcpListener::bind(addr(BACKEND)).await.unwrap();
    let (plans, plan_rx) = mpsc::unbounded_channel();
    tokio::spawn(backend(listener, plan_rx));
    tokio::spawn(ticket_server(pki.clone()));

    let mut b = sidecar(
        &pki,
        "B",
        &format!(
            "[[inbound]]\nlisten = \"{B_INBOUND}\"\nforward = \"{BACKEND}\"\n\n\
             [metrics]\nlisten = \"{B_METRICS}\"\n"
        ),
        &[],
    );
    let mut a = sidecar(
        &pki,
        "A",
        &format!(
            "[[outbound]]\nlisten = \"{A_OUTBOUND}\"\nupstream = \"{B_INBOUND}\"\n\n\
             [[outbound]]\nlisten = \"{A_OUTBOUND_TICKETS}\"\nupstream = \"{TICKET_SERVER}\"\n\n\
             [metrics]\nlisten = \"{A_METRICS}\"\n"
        ),
        &[],
    );
    let limit = C_RECORD_LIMIT.to_string();
    let mut c = sidecar(
        &pki,
        "C",
        &format!(
            "protocols = [\"TLSv1.2\"]\ncipher_suites = [\"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256\"]\n\n\
             [[inbound]]\nlisten = \"{C_INBOUND}\"\nforward = \"{BACKEND}\"\n\n\
             [metrics]\nlisten = \"{C_METRICS}\"\n"
        ),
        &[("RINGSEAL_TEST_KTLS_RECORD_LIMIT", &limit)],
    );

    // After the sidecars' start-up probes (each configures 6 throwaway sockets).
    let before = tls_stat();
    println!("{MARK} tls_stat before: {}", stat_line(&before));

    // 1, 2: the sidecar pair, both close orders.
    pair_stream(&plans, true, (11, 12)).await;
    pair_stream(&plans, false, (21, 22)).await;

    // 3: session tickets on A's kTLS socket.
    {
        let mut s = TcpStream::connect(addr(A_OUTBOUND_TICKETS)).await.unwrap();
        let mut data = Seeded::new(31, 4 * MIB);
        while let Some(chunk) = data.next_chunk() {
            s.write_all(chunk).await.unwrap();
        }
        s.shutdown().await.unwrap();
        let mut back = Vec::new();
        bounded("the ticket server's answer", s.read_to_end(&mut back))
            .await
            .unwrap();
        assert_eq!(
            back,
            data.sha256(),
            "the ticket server got the bytes intact"
        );
        a.wait_for("NewSessionTicket from the peer ignored");
        println!(
            "{MARK} NewSessionTicket after the handshake ignored on kTLS (TLS 1.3 CHACHA20-POLY1305), 4 MiB intact, sha256 {}",
            hex(&back)
        );
    }

    // 4: a peer's KeyUpdate on B's kTLS socket.
    {
        let (done_tx, done_rx) = oneshot::channel();
        plans
            .send(Plan::Duplex {
                seed: 0,
                len: 0,
                wait_for_peer_eof: true,
                gate: None,
                done: done_tx,
            })
            .unwrap();
        let config = client(pki.roots(), Some(&pki.node));
        let mut tls = connect(&config, addr(B_INBOUND)).await.unwrap();
        let mut before_update = Seeded::new(41, 2 * MIB);
        while let Some(chunk) = before_update.next_chunk() {
            tls.write_all(chunk).await.unwrap();
        }
        tls.flush().await.unwrap();
        tls.get_mut().1.refresh_traffic_keys().unwrap();
        // Records under the new key: B must not deliver them (it cannot decrypt them).
        let _ = tls.write_all(&[0x55; 64 * 1024]).await;
        let _ = tls.flush().await;
        let mut rest = Vec::new();
        let end = bounded("the reset from B", tls.read_to_end(&mut rest)).await;
        assert_eq!(
            end.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionReset),
            "B aborts the connection: a reset, not close_notify"
        );
        let (got, hash, backend_end) = bounded("the backend", done_rx).await.unwrap();
        assert_eq!(
            (got, hash),
            (2 * MIB, before_update.sha256()),
            "the backend got exactly the bytes before the KeyUpdate"
        );
        assert_eq!(
            backend_end,
            Err(std::io::ErrorKind::ConnectionReset),
            "the backend sees a reset, not a FIN"
        );
        b.wait_for("KeyUpdate from the peer");
        println!(
            "{MARK} KeyUpdate from the peer: the 2 MiB before it delivered, then a reset; the peer got a reset"
        );
    }

    // 5: C's key reaches its (lowered) record limit on TLS 1.2 AES-128-GCM.
    {
        let (done_tx, done_rx) = oneshot::channel();
        plans
            .send(Plan::Duplex {
                seed: 51,
                len: 32 * MIB,
                wait_for_peer_eof: false,
                gate: None,
                done: done_tx,
            })
            .unwrap();
        let config = client(pki.roots(), Some(&pki.node));
        let tls = connect(&config, addr(C_INBOUND)).await.unwrap();
        assert_eq!(
            tls.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        let (mut r, mut w) = tokio::io::split(tls);
        let mut got = Vec::new();
        let end = bounded("the reset from C", r.read_to_end(&mut got)).await;
        assert_eq!(
            end.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionReset),
            "C aborts: a reset, not close_notify"
        );
        assert!(
            !got.is_empty() && got.len() < 32 * MIB,
            "a prefix: {} bytes",
            got.len()
        );
        let mut expect = Seeded::new(51, got.len());
        let mut prefix = Vec::new();
        while let Some(chunk) = expect.next_chunk() {
            prefix.extend_from_slice(chunk);
        }
        assert!(
            prefix == got,
            "the peer got a prefix of the backend's stream"
        );
        // The connection is reset: the half-close fails, as it should.
        let _ = w.shutdown().await;
        let _ = bounded("the backend", done_rx).await;
        c.wait_for("reached its record limit");
        println!(
            "{MARK} record limit {C_RECORD_LIMIT} (TLS 1.2 AES-128-GCM): {} bytes delivered, then a reset",
            got.len()
        );
    }

    // 6: the backend resets mid-stream behind the pair: the abort travels through both kTLS sidecars.
    {
        const SENT: usize = 16 * MIB;
        plans
            .send(Plan::ResetAfter {
                seed: 61,
                len: SENT,
            })
            .unwrap();
        let mut client = TcpStream::connect(addr(A_OUTBOUND)).await.unwrap();
        let (got, hash, end) = read_to_end(&mut client).await;
        assert_eq!(
            end,
            Err(std::io::ErrorKind::ConnectionReset),
            "the client sees a reset after {got} bytes, not an orderly end"
        );
        let mut expect = Seeded::new(61, SENT);
        let mut prefix = Sha256::new();
        let mut left = got;
        while left > 0 {
            let chunk = expect.next_chunk().unwrap();
            let k = left.min(chunk.len());
            prefix.update(&chunk[..k]);
            left -= k;
        }
        assert!(
            hash.finalize() == prefix.finalize(),
            "the client got a prefix of the backend's stream"
        );
        println!("{MARK} backend reset behind the pair: {got} bytes delivered, then a reset");
    }

    // The kernel did the work, and the metrics say so.
    let after = tls_stat();
    println!("{MARK} tls_stat after:  {}", stat_line(&after));
    let rose = |k: &str| after[k] - before.get(k).copied().unwrap_or(0);
    // Pair: 3 connections x 2 sockets; tickets: A's socket; KeyUpdate: B's; limit: C's.
    assert_eq!(
        rose("TlsTxSw"),
        9,
        "kTLS TX on every socket: {}",
        stat_line(&after)
    );
    assert_eq!(
        rose("TlsRxSw"),
        9,
        "kTLS RX on every socket: {}",
        stat_line(&after)
    );
    assert_eq!(rose("TlsDecryptError"), 0, "no record failed to decrypt");
    let ma = scrape_str(A_METRICS);
    let mb = scrape_str(B_METRICS);
    let mc = scrape_str(C_METRICS);
    let ktls = |m: &str, dir: &str| {
        ringseal_testkit::samples(
            m,
            "ringseal_connections_total",
            &[("direction", dir), ("offload", "ktls")],
        )
    };
    let userspace = |m: &str, dir: &str| {
        ringseal_testkit::samples(
            m,
            "ringseal_connections_total",
            &[("direction", dir), ("offload", "userspace")],
        )
    };
    assert_eq!(ktls(&ma, "outbound"), 4.0, "A: {ma}");
    assert_eq!(ktls(&mb, "inbound"), 4.0, "B: {mb}");
    assert_eq!(ktls(&mc, "inbound"), 1.0, "C: {mc}");
    assert_eq!(userspace(&ma, "outbound") + userspace(&mb, "inbound"), 0.0);
    let closed = |m: &str, dir: &str, how: &str| {
        ringseal_testkit::samples(
            m,
            "ringseal_connections_closed_total",
            &[("direction", dir), ("how", how)],
        )
    };
    assert_eq!(closed(&mb, "inbound", "peer_key_update"), 1.0, "B: {mb}");
    assert_eq!(closed(&mc, "inbound", "key_limit"), 1.0, "C: {mc}");
    assert_eq!(closed(&mb, "inbound", "backend_reset"), 1.0, "B: {mb}");
    assert_eq!(closed(&ma, "outbound", "peer_reset"), 1.0, "A: {ma}");
    println!(
        "{MARK} metrics: A outbound offload=ktls {}, B inbound offload=ktls {}, C inbound offload=ktls {}; B peer_key_update {}, C key_limit {}, B backend_reset {}, A peer_reset {}",
        ktls(&ma, "outbound"),
        ktls(&mb, "inbound"),
        ktls(&mc, "inbound"),
        closed(&mb, "inbound", "peer_key_update"),
        closed(&mc, "inbound", "key_limit"),
        closed(&mb, "inbound", "backend_reset"),
        closed(&ma, "outbound", "peer_reset")
    );
    // 7: replacing a sidecar moves its kTLS connection.
    let (a2, d, d_config, d_dir) = replaced_under_a_stream(&pki, &plans).await;
    // 8: the moved connection's record count comes from the kernel.
    let d = record_count_survives_a_replacement(&plans, d, &d_config).await;
    drop((a, b, c, a2, d, d_dir));
    println!("{MARK} result ok");
}
