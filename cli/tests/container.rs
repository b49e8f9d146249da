//! The container image, built and run: `config/container/build-local.sh` builds the runtime image from
//! this build's `ringseal` and Debian packages (no registry), and two containers of it run as a
//! sidecar pair: outbound (plaintext from the test, mutual TLS out) and inbound (mutual TLS in,
//! plaintext to a backend the test runs on the host), each with its config and certificates mounted
//! read-only at /etc/ringseal. Checked:
//!
//! * the image agrees with the Dockerfile's runtime stage (user, ports, entrypoint, command, binary
//!   path) and holds nothing but the binary, the libraries it links, the CA bundle, passwd and group;
//! * seeded data goes through both containers and back, compared by SHA-256, and the inbound sidecar
//!   only admits the outbound one's certificate (allow-lists on CN both ways);
//! * each process runs as uid 65532 with no capabilities;
//! * the root filesystem is read-only and /tmp is not writable (`--read-only` with podman's tmpfs
//!   mounts turned off, the bad input of issue 13): podman says ReadonlyRootfs, the container's
//!   mount table has `/` mounted `ro` and nothing on /tmp, and a write through the container's own
//!   root (`/proc/PID/root/tmp`) fails with EROFS — ringseal starts and serves all the same;
//! * /healthz and /readyz answer from outside the containers;
//! * SIGTERM (`podman kill --signal TERM`) drains: a connection in flight completes byte for byte,
//!   new connections are refused, and each container exits 0 with the drain in its log.
//!
//! Networking is `--network host` on 127.0.0.1 with ports the test picks free: podman's bridge would
//! add firewall rules to the host's tables, which the interception tests rewrite concurrently, and a
//! backend on the host's loopback is out of a bridged container's reach.
//!
//! Needs root, podman, buildah, runc and the script's tools; in CI it must run, elsewhere it says why
//! it skips. Containers and the image are removed even when the test fails.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ringseal::pki::Identity;
use ringseal_testkit::process::{Lines, Proc, ringseal_binary};
use ringseal_testkit::stream::{MIB, Sink, expected_hash, send_seeded};
use ringseal_testkit::*;
use tokio::sync::{oneshot, watch};

/// The uid (and gid) the image runs as: distroless's `nonroot`.
const UID: u32 = 65532;
/// A podman command that does not finish within this is hung (a guard, not a timing assertion).
const PODMAN_WAIT: Duration = Duration::from_secs(120);
/// The image build downloads three Debian packages.
const BUILD_WAIT: Duration = Duration::from_secs(300);
/// Each connection's stream, each way.
const LEN: usize = 8 * MIB;

#[test]
fn sidecar_pair_in_read_only_containers() {
    if !can_run() {
        return;
    }
    let started = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let id = std::process::id();
    let podman = Podman::new(work.path());
    let mut cleanup = Cleanup {
        podman: podman.clone(),
        containers: Vec::new(),
        image: None,
    };

    // The image, from this build's binary.
    let image = format!("localhost/ringseal-test:{id}");
    let script = repo().join("config/container/build-local.sh");
    cleanup.image = Some(image.clone());
    let mut build = Command::new(&script);
    build.arg(ringseal_binary()).arg(&image);
    let built = output_within(build, BUILD_WAIT).unwrap();
    assert!(
        built.status.success(),
        "{}: {}",
        script.display(),
        String::from_utf8_lossy(&built.stderr)
    );
    let size = podman.run(&["image", "inspect", "--format", "{{.Size}}", &image]);
    eprintln!(
        "built {image} in {:.1}s: {} bytes (debug binary, stripped)",
        started.elapsed().as_secs_f64(),
        size.trim()
    );
    assert_matches_dockerfile(&podman, &image);
    assert_holds_only_what_it_needs(&podman, &image);

    // The PKI: node1 behind the inbound sidecar, node2 behind the outbound one.
    let pki = Pki::new();
    let node2 = pki.issue("node2", &[LOCALHOST]);
    let [p_in, p_out, m_in, m_out] = [(); 4].map(|()| free_port());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let backend = rt.block_on(Backend::start(Mode::Echo));
    // The grace outlasts the drain below; the allow-lists admit only the other sidecar.
    let limits = "[limits]\nshutdown_grace = \"2m\"";
    let in_dir = sidecar_dir(
        &work.path().join("inbound"),
        &pki,
        &pki.node,
        &format!(
            "[[inbound]]\nlisten = \"127.0.0.1:{p_in}\"\nforward = \"{}\"\nallow = {{ cn = [\"node2\"] }}\n\n\
             [metrics]\nlisten = \"127.0.0.1:{m_in}\"\n\n{limits}\n",
            backend.addr
        ),
    );
    let out_dir = sidecar_dir(
        &work.path().join("outbound"),
        &pki,
        &node2,
        &format!(
            "[[outbound]]\nlisten = \"127.0.0.1:{p_out}\"\nupstream = \"127.0.0.1:{p_in}\"\n\
             allow = {{ cn = [\"node1\"] }}\n\n[metrics]\nlisten = \"127.0.0.1:{m_out}\"\n\n{limits}\n"
        ),
    );

    let inbound = format!("ringseal-test-{id}-inbound");
    let outbound = format!("ringseal-test-{id}-outbound");
    cleanup.containers = vec![inbound.clone(), outbound.clone()];
    let mut in_proc = podman.start(&inbound, &in_dir, &image);
    in_proc.wait_for(&format!("serving metrics on 127.0.0.1:{m_in}"));
    in_proc.wait_for(&format!(
        "starting inbound mTLS listener on 127.0.0.1:{p_in}"
    ));
    let mut out_proc = podman.start(&outbound, &out_dir, &image);
    out_proc.wait_for(&format!("serving metrics on 127.0.0.1:{m_out}"));
    out_proc.wait_for(&format!("starting outbound listener on 127.0.0.1:{p_out}"));
    eprintln!(
        "both containers serving after {:.1}s",
        started.elapsed().as_secs_f64()
    );

    for name in [&inbound, &outbound] {
        assert_confined(&podman, name);
    }
    for port in [m_in, m_out] {
        let metrics = SocketAddr::from((LOCALHOST, port));
        assert_eq!(get(metrics, "/healthz").0, 200, "/healthz on {metrics}");
        assert_eq!(get(metrics, "/readyz").0, 200, "/readyz on {metrics}");
    }

    // Data through the pair: test -> outbound -> mTLS -> inbound -> backend, echoed back.
    let local = SocketAddr::from((LOCALHOST, p_out));
    rt.block_on(within("a stream through both containers", async {
        let (mut r, mut w) = tokio::net::TcpStream::connect(local)
            .await
            .unwrap()
            .into_split();
        let send = tokio::spawn(async move {
            send_seeded(&mut w, 1, LEN, None).await;
            tokio::io::AsyncWriteExt::shutdown(&mut w).await.unwrap();
        });
        let mut sink = Sink::default();
        sink.read(&mut r, None, None).await;
        send.await.unwrap();
        assert_eq!(sink.end, Some(Ok(())));
        assert_eq!(sink.len, LEN);
        assert_eq!(
            sink.sha256(),
            expected_hash(1, LEN),
            "echo through the pair"
        );
    }));
    let inbound_metrics = scrape(SocketAddr::from((LOCALHOST, m_in)));
    assert_eq!(
        samples(
            &inbound_metrics,
            "ringseal_connections_total",
            &[("tls", "true")]
        ),
        1.0,
        "{inbound_metrics}"
    );

    // SIGTERM with a connection in flight: half the stream has made the round trip when both
    // containers are told to stop; the other half must follow, then both exit 0.
    let (resume, paused) = oneshot::channel();
    let (progress, mut arrived) = watch::channel(0);
    let in_flight = rt.spawn(async move {
        let (mut r, mut w) = tokio::net::TcpStream::connect(local)
            .await
            .unwrap()
            .into_split();
        let send = tokio::spawn(async move {
            send_seeded(&mut w, 2, LEN, Some(paused)).await;
            tokio::io::AsyncWriteExt::shutdown(&mut w).await.unwrap();
        });
        let mut sink = Sink::default();
        sink.read(&mut r, Some(LEN / 2), Some(&progress)).await;
        sink.read(&mut r, None, None).await;
        send.await.unwrap();
        sink
    });
    rt.block_on(within(
        "half the stream back",
        arrived.wait_for(|n| *n >= LEN / 2),
    ))
    .unwrap();
    for name in [&inbound, &outbound] {
        podman.run(&["kill", "--signal", "TERM", name]);
    }
    // ringseal acts on the signal before it logs it, so "SIGTERM: shutting down" may come after this
    // line; it is looked for once the process has exited.
    for proc in [&mut in_proc, &mut out_proc] {
        proc.wait_for("stopped accepting; waiting up to 2m for 1 open connection(s)");
    }
    for port in [p_in, p_out] {
        let refused = TcpStream::connect((LOCALHOST, port)).unwrap_err();
        assert_eq!(
            refused.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "a new connection to 127.0.0.1:{port} while draining"
        );
    }
    resume.send(()).unwrap();
    let sink = rt
        .block_on(within("the rest of the stream", in_flight))
        .unwrap();
    assert_eq!(sink.end, Some(Ok(())));
    assert_eq!(sink.len, LEN);
    assert_eq!(sink.sha256(), expected_hash(2, LEN), "in-flight connection");
    for (proc, name) in [(&mut in_proc, &inbound), (&mut out_proc, &outbound)] {
        let status = proc.wait_exit();
        let log = proc.drain(Duration::from_secs(1)).join("\n");
        assert!(
            status.success(),
            "{name}: podman run exited {status}:\n{log}"
        );
        for line in [
            "SIGTERM: shutting down",
            "all connections finished; exiting",
        ] {
            assert!(log.contains(line), "{name}: no {line:?} in its log:\n{log}");
        }
        let code = podman.run(&["inspect", "--format", "{{.State.ExitCode}}", name]);
        assert_eq!(code.trim(), "0", "{name}'s exit code");
    }
    eprintln!(
        "container test done in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// Whether this machine can run the test: root with podman, buildah, runc and what the build script
/// uses. Outside CI a missing piece skips the test, saying why; in CI it fails it.
fn can_run() -> bool {
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if !root {
        assert!(
            std::env::var_os("CI").is_none(),
            "the container test needs root in CI (podman with runc as root)"
        );
        eprintln!("skipping: the container test needs root (podman with runc as root)");
        return false;
    }
    tools::have(&[
        "podman", "buildah", "runc", "apt-get", "dpkg-deb", "readelf", "strip",
    ])
}

/// The repository's root (this package is `cli/`).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// podman as it works on these machines: runc (crun refuses the hybrid cgroup setup here) and no
/// default ulimits (they cannot be set in this VM).
#[derive(Clone)]
struct Podman {
    conf: PathBuf,
}

impl Podman {
    fn new(dir: &Path) -> Self {
        let conf = dir.join("containers.conf");
        std::fs::write(&conf, "[containers]\ndefault_ulimits = []\n").unwrap();
        Self { conf }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_CONF", &self.conf)
            .args(["--runtime", "runc"])
            .args(args);
        cmd
    }

    /// Runs a podman command to completion, asserting success; returns its standard output.
    fn run(&self, args: &[&str]) -> String {
        let out = output_within(self.command(args), PODMAN_WAIT).unwrap();
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `podman run` in the foreground (its stderr is the container's log), the way the README runs
    /// the image: read-only root without podman's writable tmpfs on /tmp, /run and /var/tmp, no
    /// capabilities, config and certificates mounted read-only, the image's own user.
    fn start(&self, name: &str, config_dir: &Path, image: &str) -> Proc {
        let volume = format!("{}:/etc/ringseal:ro", config_dir.display());
        let cmd = self.command(&[
            "run",
            "--name",
            name,
            "--read-only",
            "--read-only-tmpfs=false",
            "--cap-drop=all",
            "--security-opt=no-new-privileges",
            "--network=host",
            "--volume",
            &volume,
            image,
        ]);
        Proc::launch(name, cmd, Lines::All).unwrap()
    }

    fn pid(&self, name: &str) -> u32 {
        let pid = self.run(&["inspect", "--format", "{{.State.Pid}}", name]);
        pid.trim().parse().unwrap()
    }
}

/// Removes the test's containers and image, also when the test fails.
struct Cleanup {
    podman: Podman,
    containers: Vec<String>,
    image: Option<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // Says so when something is left behind, but never panics while a failure unwinds.
        let quiet = |args: &[&str]| match output_within(self.podman.command(args), PODMAN_WAIT) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "cleanup: podman {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("cleanup: {e}"),
        };
        for name in &self.containers {
            quiet(&["rm", "--force", "--time", "0", name]);
        }
        if let Some(image) = &self.image {
            quiet(&["rmi", "--force", image]);
        }
    }
}

/// Runs `cmd` with no standard input, killing it if it runs longer than `limit`.
fn output_within(mut cmd: Command, limit: Duration) -> Result<Output, String> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.map_err(|e| format!("{cmd:?}: {e}")),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            Err(format!(
                "{cmd:?} did not finish within {}s",
                limit.as_secs()
            ))
        }
    }
}

/// Writes `dir` as the sidecar's /etc/ringseal: the CA, `id`'s certificate and key, and a config of
/// the `[tls]` table and `rest`; owned by the image's user as an operator would do it (the key stays
/// 0600).
fn sidecar_dir(dir: &Path, pki: &Pki, id: &Identity, rest: &str) -> PathBuf {
    std::fs::create_dir(dir).unwrap();
    for (name, text) in [
        ("ca.crt", pki.ca.cert_pem.as_str()),
        ("node.crt", &id.cert_pem),
        ("node.key", &id.key_pem),
        ("ringseal.toml", &format!("{TLS_TABLE}\n{rest}")),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        if name == "node.key" {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        std::os::unix::fs::chown(&path, Some(UID), Some(UID)).unwrap();
    }
    std::os::unix::fs::chown(dir, Some(UID), Some(UID)).unwrap();
    dir.to_owned()
}

/// A port that was free a moment ago on 127.0.0.1 (the containers bind it themselves).
fn free_port() -> u16 {
    TcpListener::bind((LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` over HTTP/1.1: the status code and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("GET {path} on {addr}: {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (code, body)
}

/// The instructions of the Dockerfile's last stage, continuation lines joined.
fn runtime_stage() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let joined = text.replace("\\\n", " ");
    let lines: Vec<_> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let last_from = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    lines[last_from..]
        .iter()
        .map(|l| {
            let (word, rest) = l.split_once(' ').unwrap_or((l, ""));
            (word.to_owned(), rest.trim().to_owned())
        })
        .collect()
}

/// The argument of the stage's only `word` instruction.
fn instruction<'a>(stage: &'a [(String, String)], word: &str) -> &'a str {
    let found: Vec<_> = stage.iter().filter(|(w, _)| w == word).collect();
    assert_eq!(found.len(), 1, "one {word} in the Dockerfile's last stage");
    &found[0].1
}

/// The offline image is configured as the Dockerfile's runtime stage: same user, ports, environment,
/// entrypoint and command, and the binary where the Dockerfile copies it.
fn assert_matches_dockerfile(podman: &Podman, image: &str) {
    let stage = runtime_stage();
    let one = |word: &str| instruction(&stage, word);
    let config = podman.run(&["image", "inspect", "--format", "{{json .Config}}", image]);
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["User"], one("USER"), "USER");
    let ports: BTreeSet<String> = one("EXPOSE")
        .split_whitespace()
        .map(|p| {
            if p.contains('/') {
                p.to_owned()
            } else {
                format!("{p}/tcp")
            }
        })
        .collect();
    let exposed: BTreeSet<String> = config["ExposedPorts"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(exposed, ports, "EXPOSE");
    let entrypoint: serde_json::Value = serde_json::from_str(one("ENTRYPOINT")).unwrap();
    assert_eq!(config["Entrypoint"], entrypoint, "ENTRYPOINT");
    let cmd: serde_json::Value = serde_json::from_str(one("CMD")).unwrap();
    assert_eq!(config["Cmd"], cmd, "CMD");
    // GLIBC_TUNABLES (README, "glibc's copies on AMD"), as the systemd unit sets it.
    let env = one("ENV");
    let image_env: Vec<&str> = config["Env"]
        .as_array()
        .unwrap_or_else(|| panic!("image Env: {config}"))
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        image_env.contains(&env),
        "ENV {env}: the image has {image_env:?}"
    );
    let copy = one("COPY");
    assert_eq!(
        copy.split_whitespace().last(),
        entrypoint[0].as_str(),
        "the Dockerfile copies the binary where the entrypoint runs it: {copy}"
    );
    assert_eq!(config["User"], format!("{UID}:{UID}"));
}

/// Every file of the image is the binary, a library it links (its loader included), the CA bundle,
/// passwd or group: no shell, no package manager, nothing else.
fn assert_holds_only_what_it_needs(podman: &Podman, image: &str) {
    let root = PathBuf::from(podman.run(&["image", "mount", image]).trim());
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() && !path.is_symlink() {
                dirs.push(path);
            } else {
                files.push(path.strip_prefix(&root).unwrap().to_owned());
            }
        }
    }
    let needed = tools::run(
        &root,
        "readelf",
        &["-d", root.join("usr/local/bin/ringseal").to_str().unwrap()],
    );
    podman.run(&["image", "unmount", image]);
    let mut expected: BTreeSet<String> = String::from_utf8_lossy(&needed.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| Some(l.split('[').nth(1)?.trim_end_matches(']').to_owned()))
        .collect();
    assert!(
        expected.iter().any(|l| l.starts_with("libc.so")),
        "{expected:?}"
    );
    for name in ["ringseal", "ca-certificates.crt", "passwd", "group"] {
        expected.insert(name.into());
    }
    let names: BTreeSet<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, expected, "the image's files: {files:?}");
}

/// The container's process runs as uid 65532 without capabilities, on a read-only root with no
/// writable /tmp.
fn assert_confined(podman: &Podman, name: &str) {
    let pid = podman.pid(name);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} in /proc/{pid}/status"))
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    // Real, effective, saved and filesystem ids.
    assert_eq!(field("Uid:"), vec![UID.to_string(); 4], "{name}: uids");
    assert_eq!(field("Gid:"), vec![UID.to_string(); 4], "{name}: gids");
    assert_eq!(
        field("CapEff:"),
        ["0000000000000000"],
        "{name}: capabilities"
    );

    let ro = podman.run(&[
        "inspect",
        "--format",
        "{{.HostConfig.ReadonlyRootfs}}",
        name,
    ]);
    assert_eq!(ro.trim(), "true", "{name}: podman's ReadonlyRootfs");
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    // Fields: id, parent, device, root, mount point, mount options, ...
    let mounted = |at: &str| {
        mounts
            .lines()
            .filter(|l| l.split(' ').nth(4) == Some(at))
            .map(|l| l.split(' ').nth(5).unwrap_or("").to_owned())
            .next_back()
    };
    let root_options = mounted("/").expect("a root mount");
    assert!(
        root_options.split(',').any(|o| o == "ro"),
        "{name}: / is mounted {root_options}"
    );
    for dir in ["/tmp", "/var/tmp", "/run"] {
        assert_eq!(mounted(dir), None, "{name}: something is mounted on {dir}");
    }
    // A write through the container's own root, as root on the host: only the read-only mount can
    // refuse it.
    for path in ["tmp/ringseal-write-probe", "ringseal-write-probe"] {
        let probe = format!("/proc/{pid}/root/{path}");
        let e = std::fs::write(&probe, b"x").expect_err(&probe);
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::ReadOnlyFilesystem,
            "{name}: writing {probe}: {e}"
        );
    }
}
