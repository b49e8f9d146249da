//! The real binary and its config file: `ringseal check` prints the resolved config, a bad config makes
//! `run` and `check` exit 64 (EX_USAGE) with exactly one `error: ` line naming the file, and the help
//! texts work. Certificates are generated at test time.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ringseal_testkit::Pki;
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_ringseal");
/// EX_USAGE, what main.rs returns for a config error.
const EXIT_CONFIG: i32 = 64;

#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the binary in `cwd` with a clean environment for its own variables; a run that does not end
/// within 30s is killed and fails the test (a `run` whose config was unexpectedly accepted would serve
/// forever).
fn ringseal(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Run {
    let out = tempfile::tempdir().unwrap();
    let (stdout_path, stderr_path) = (out.path().join("stdout"), out.path().join("stderr"));
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("RINGSEAL_CONFIG")
        .env_remove("RINGSEAL_LOG")
        .env_remove("RUST_LOG")
        // A panic would print its backtrace: the tests check that none appears.
        .env("RUST_BACKTRACE", "1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ringseal {args:?} still running after 30s; stderr:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code: status.code(),
        stdout: std::fs::read_to_string(&stdout_path).unwrap(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap(),
    }
}

/// A directory with node.crt, node.key and ca.crt (see [`Pki::write`]) and a second node's key.
struct Setup {
    dir: TempDir,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        pki.write(dir.path());
        let other = pki.issue("node2", &[ringseal_testkit::LOCALHOST]);
        std::fs::write(dir.path().join("other.key"), &other.key_pem).unwrap();
        Self { dir }
    }

    /// Writes `name` into the directory; `[tls]` uses relative paths, resolved against it.
    fn config(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

const TLS: &str = "[tls]\ncert = \"node.crt\"\nkey = \"node.key\"\nca = \"ca.crt\"\n";

fn valid_config() -> String {
    format!(
        "{TLS}
[[inbound]]
listen = \"0.0.0.0:7001\"
forward = \"127.0.0.1:7000\"
require_endpoint_verification = true
allow = {{ ou = [\"TestCluster\"] }}

[limits]
handshake_timeout = \"3s\"
"
    )
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The contract for every config error: exit 64, one line on stderr that starts with
/// `error: config <path>: ` and contains `want`, and no panic. Nothing on stdout, except `check`'s
/// report of what it could examine when the config is valid but its key material is not.
fn assert_config_error(r: &Run, path: &Path, want: &str, what: &str) {
    let all = format!(
        "{what}: exit {:?}\nstdout:\n{}\nstderr:\n{}",
        r.code, r.stdout, r.stderr
    );
    assert_eq!(r.code, Some(EXIT_CONFIG), "{all}");
    assert!(
        r.stdout.is_empty()
            || (what.starts_with("check ")
                && r.stdout.starts_with("config NOT usable: 1 problem(s)")),
        "{all}"
    );
    for bad in ["panicked", "backtrace", "RUST_BACKTRACE"] {
        assert!(!r.stderr.contains(bad), "{bad:?} in {all}");
    }
    let lines: Vec<_> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stderr: {all}");
    let prefix = format!("error: config {}: ", path.display());
    assert!(lines[0].starts_with(&prefix), "want {prefix:?}: {all}");
    assert!(lines[0].contains(want), "want {want:?}: {all}");
}

#[test]
fn check_prints_the_resolved_config() {
    let s = Setup::new();
    let path = s.config("ringseal.toml", &valid_config());
    // Started elsewhere: the relative certificate paths are resolved against the config's directory.
    let r = ringseal(&["check", "--config", arg(&path)], Path::new("/"), &[]);
    let all = format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        r.code, r.stdout, r.stderr
    );
    assert_eq!(r.code, Some(0), "{all}");
    assert!(!r.stderr.contains("error"), "{all}");
    let dir = s.dir.path().display();
    for want in [
        "config OK\n".to_owned(),
        format!("identity   tls.cert {dir}/node.crt\n"),
        "  verifies serverAuth: ok; clientAuth: ok\n".to_owned(),
        "  subject  CN=node1, OU=TestCluster\n".to_owned(),
        "  issuer   CN=TestCluster CA, OU=TestCluster\n".to_owned(),
        "  IP SANs  127.0.0.1\n".to_owned(),
        format!("trust      tls.ca {dir}/ca.crt (1 CA certificate(s))"),
        "protocols  TLSv1.3, TLSv1.2\n".to_owned(),
        "client auth required\n".to_owned(),
        "inbound[0] listen 0.0.0.0:7001 -> forward 127.0.0.1:7000 (endpoint verification on, \
         allow ou=TestCluster)\n"
            .to_owned(),
        "limits     handshake 3s, connect 5s, idle none, linger 30s, max 10000 connections, \
         shutdown grace 30s\n"
            .to_owned(),
        "admission  per listener: max 10000 connections, max 1024 handshakes in progress (inbound: \
         64 per source address); listen backlog "
            .to_owned(),
    ] {
        assert!(r.stdout.contains(&want), "want {want:?} in {all}");
    }
    assert!(r.stdout.starts_with("config OK\n"), "{all}");
}

#[test]
fn check_takes_the_config_from_the_environment_and_the_short_flag() {
    let s = Setup::new();
    let path = s.config("ringseal.toml", &valid_config());
    let r = ringseal(&["check"], s.dir.path(), &[("RINGSEAL_CONFIG", arg(&path))]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout.starts_with("config OK\n"), "{}", r.stdout);
    let r = ringseal(&["check", "-c", "ringseal.toml"], s.dir.path(), &[]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout.starts_with("config OK\n"), "{}", r.stdout);
}

/// (file name, config, substring of the error)
fn invalid_configs() -> [(&'static str, String, &'static str); 3] {
    let inbound = "[[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"127.0.0.1:7000\"\n";
    [
        (
            "key-mismatch.toml",
            format!("[tls]\ncert = \"node.crt\"\nkey = \"other.key\"\nca = \"ca.crt\"\n{inbound}"),
            "other.key does not match the certificate in tls.cert",
        ),
        (
            "listen-hostname.toml",
            format!(
                "{TLS}[[inbound]]\nlisten = \"localhost:7001\"\nforward = \"127.0.0.1:7000\"\n"
            ),
            "inbound[0].listen = \"localhost:7001\" is not an IP:port address (host names are not \
             resolved; give the IP address)",
        ),
        (
            "refused-suite.toml",
            format!("{TLS}cipher_suites = [\"TLS_RSA_WITH_AES_256_CBC_SHA\"]\n{inbound}"),
            "cipher suite \"TLS_RSA_WITH_AES_256_CBC_SHA\" is refused",
        ),
    ]
}

#[test]
fn invalid_config_exits_64_with_one_line() {
    let s = Setup::new();
    for (name, text, want) in invalid_configs() {
        let path = s.config(name, &text);
        for cmd in ["run", "check"] {
            let r = ringseal(&[cmd, "--config", arg(&path)], Path::new("/"), &[]);
            assert_config_error(&r, &path, want, &format!("{cmd} {name}"));
        }
    }
}

/// TOML syntax and type errors (unknown keys, bad durations) are one line naming the line and the key.
#[test]
fn parse_errors_are_one_line() {
    let s = Setup::new();
    let inbound = "[[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"127.0.0.1:7000\"\n";
    let cases = [
        (
            "typo.toml",
            format!("{TLS}requre_client_auth = true\n{inbound}"),
            "requre_client_auth",
        ),
        (
            "duration.toml",
            format!("{TLS}{inbound}[limits]\nhandshake_timeout = \"10 parsecs\"\n"),
            "handshake_timeout",
        ),
    ];
    for (name, text, want) in cases {
        let path = s.config(name, &text);
        for cmd in ["run", "check"] {
            let r = ringseal(&[cmd, "--config", arg(&path)], Path::new("/"), &[]);
            assert_config_error(&r, &path, want, &format!("{cmd} {name}"));
        }
    }
}

#[test]
fn missing_config_file_exits_64_naming_it() {
    let s = Setup::new();
    let path = s.dir.path().join("no-such-ringseal.toml");
    for cmd in ["run", "check"] {
        let r = ringseal(&[cmd, "--config", arg(&path)], Path::new("/"), &[]);
        assert_config_error(
            &r,
            &path,
            "cannot read: No such file or directory",
            &format!("{cmd} missing file"),
        );
    }
}

/// A listen address that is taken is found by `run` only (`check` binds nothing): still exit 64 and one
/// line naming the listener.
#[test]
fn run_exits_64_when_the_listen_address_is_taken() {
    let s = Setup::new();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let path = s.config(
        "taken.toml",
        &format!("{TLS}[[inbound]]\nlisten = \"{addr}\"\nforward = \"127.0.0.1:7000\"\n"),
    );
    let r = ringseal(&["check", "--config", arg(&path)], Path::new("/"), &[]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let r = ringseal(&["run", "--config", arg(&path)], Path::new("/"), &[]);
    let all = format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        r.code, r.stdout, r.stderr
    );
    assert_eq!(r.code, Some(EXIT_CONFIG), "{all}");
    let lines: Vec<_> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{all}");
    let want = format!("error: inbound[0].listen {addr}: cannot listen: ");
    assert!(lines[0].starts_with(&want), "want {want:?}: {all}");
    assert!(lines[0].contains("another process listens there"), "{all}");
    drop(taken);
}

#[test]
fn help_texts() {
    let cwd = Path::new("/");
    let r = ringseal(&["--help"], cwd, &[]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    for want in ["Usage: ringseal", "run", "check", "demo"] {
        assert!(r.stdout.contains(want), "want {want:?} in:\n{}", r.stdout);
    }
    for cmd in ["run", "check"] {
        let r = ringseal(&[cmd, "--help"], cwd, &[]);
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        let usage = format!("Usage: ringseal {cmd} [OPTIONS]");
        for want in [
            usage.as_str(),
            "-c, --config <CONFIG>",
            "RINGSEAL_CONFIG",
            "--cassandra-yaml <CASSANDRA_YAML>",
        ] {
            assert!(r.stdout.contains(want), "want {want:?} in:\n{}", r.stdout);
        }
    }
}

/// Without a `ringseal` user and without --uid, `ringseal rules` refuses instead of excluding whoever
/// runs it (as root: every root process would bypass the interception); --uid 0 is allowed, with a
/// warning.
#[test]
fn rules_need_the_ringseal_user_or_an_explicit_uid() {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    if passwd.lines().any(|l| l.starts_with("ringseal:")) {
        eprintln!("skipped: this host has a `ringseal` user, which `rules` rightly defaults to");
        return;
    }
    let s = Setup::new();
    let path = s.config(
        "ringseal.toml",
        &format!("{TLS}\n[[outbound]]\nlisten = \"127.0.0.1:7002\"\ntransparent = true\n"),
    );
    let r = ringseal(&["rules", "--config", arg(&path)], s.dir.path(), &[]);
    assert_eq!(r.code, Some(EXIT_CONFIG), "{r:?}");
    assert_eq!(r.stdout, "", "{r:?}");
    assert!(
        r.stderr.contains("no `ringseal` user") && r.stderr.contains("--uid"),
        "{r:?}"
    );
    let r = ringseal(
        &["rules", "--config", arg(&path), "--uid", "0"],
        s.dir.path(),
        &[],
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("meta skuid 0 return"), "{r:?}");
    assert!(r.stderr.contains("every root process bypass"), "{r:?}");
}

/// `--config` naming a device or a FIFO: one line and exit 64 at once (it used to read /dev/zero until
/// memory ran out, and to wait for a FIFO's writer with no output).
#[test]
fn a_config_that_is_not_a_regular_file_is_refused_at_once() {
    let s = Setup::new();
    let fifo = s.dir.path().join("config.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    for (path, kind) in [
        (Path::new("/dev/zero"), "a character device"),
        (fifo.as_path(), "a FIFO"),
    ] {
        for command in ["check", "run"] {
            let r = ringseal(&[command, "--config", arg(path)], s.dir.path(), &[]);
            assert_config_error(&r, path, &format!("is {kind}, not a regular file"), command);
        }
    }
}
