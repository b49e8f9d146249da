//! Transparent interception for real, in a network namespace of the test's own: the rules from
//! `ringseal rules --apply` redirect a plaintext connection to a peer's storage port (7000) into the
//! transparent outbound listener, which carries it over mutual TLS to the peer's TLS port (7001),
//! whose inbound listener delivers it to the storage service, over IPv4 and IPv6. ringseal's own connections are excluded
//! from the redirect, and `--remove` takes exactly its table away.
//!
//! Needs root, `ip`, `nft`, `setpriv` and `python3`; in CI it must run, elsewhere it says why it skips.
//! Fixed ports are fine here: the namespace is new and private to this test.

use std::process::{Child, Command, Output, Stdio};

use ringseal_testkit::process::Proc;
use ringseal_testkit::*;

const PEER: &str = "10.123.0.2";
const PEER6: &str = "fd00:123::2";

struct Netns(String);

impl Netns {
    fn new() -> Self {
        // One namespace per test: the tests of this file run in parallel in one process.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("ringseal-test-{}-{n}", std::process::id());
        let mut add = Command::new("ip");
        add.args(["netns", "add", &name]);
        run(add);
        let ns = Self(name);
        for cmd in [
            "ip link set lo up",
            // The peer's addresses, local to this namespace (no dummy or veth device needed).
            &format!("ip addr add {PEER}/32 dev lo"),
            "sysctl -qw net.ipv6.conf.lo.disable_ipv6=0",
            &format!("ip -6 addr add {PEER6}/128 dev lo"),
        ] {
            run(ns.cmd(&cmd.split(' ').collect::<Vec<_>>()));
        }
        ns
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).args(args);
        c
    }
}

impl Netns {
    /// Adds a rule to ringseal's table: IPv4 connections to `dport` (not on loopback) are redirected to
    /// `to` on this host.
    fn redirect(&self, dport: u16, to: u16) {
        let rule = format!(
            "add rule inet ringseal outbound_redirect ip daddr != 127.0.0.0/8 tcp dport {dport} \
             redirect to :{to}"
        );
        let mut args = vec!["nft"];
        args.extend(rule.split(' '));
        run(self.cmd(&args));
    }

    /// A command run in the namespace as the "node" (uid 65534), whose connections the rules redirect.
    fn as_node(&self, args: &[&str]) -> Command {
        let mut all = vec![
            "setpriv",
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
        ];
        all.extend_from_slice(args);
        self.cmd(&all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(mut cmd: Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn prerequisites() -> Result<(), String> {
    if !std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
    {
        return Err("not root".into());
    }
    for tool in ["ip", "nft", "setpriv", "/usr/bin/python3"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            return Err(format!("{tool} is not installed"));
        }
    }
    Ok(())
}

const ECHO_SERVER: &str = r#"
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 7000)); s.listen()
print("ready", flush=True)
def echo(c):
    while True:
        d = c.recv(65536)
        if not d: break
        c.sendall(d)
    c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=echo, args=(c,), daemon=True).start()
"#;

const CLIENT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], 7000), timeout=10)
s.sendall(b"marker-through-ringseal"); s.shutdown(socket.SHUT_WR)
data = b""
while True:
    d = s.recv(100)
    if not d: break
    data += d
print(data.decode())
"#;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn nft_redirect_carries_plaintext_to_7000_over_mtls_to_7001() {
    if let Err(why) = prerequisites() {
        assert!(
            std::env::var_os("CI").is_none(),
            "in CI this test must run: {why}"
        );
        eprintln!("skipping: {why}");
        return;
    }
    let ns = Netns::new();
    let pki = Pki::new();
    let node = pki.issue("node", &[ip(PEER), ip(PEER6), LOCALHOST]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    std::fs::write(path.join("node.crt"), &node.cert_pem).unwrap();
    std::fs::write(path.join("node.key"), &node.key_pem).unwrap();
    std::fs::write(path.join("ca.crt"), &pki.ca.cert_pem).unwrap();
    let config = path.join("ringseal.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert = \"node.crt\"\nkey = \"node.key\"\nca = \"ca.crt\"\n\n\
             [[inbound]]\nlisten = \"{PEER}:7001\"\nforward = \"127.0.0.1:7000\"\n\
             require_endpoint_verification = true\n\n\
             [[inbound]]\nlisten = \"[{PEER6}]:7001\"\nforward = \"127.0.0.1:7000\"\n\
             require_endpoint_verification = true\n\n\
             [[outbound]]\nlisten = \"127.0.0.1:7002\"\ntransparent = true\ntls_port = 7001\n\
             require_endpoint_verification = true\n\n\
             [[outbound]]\nlisten = \"[::1]:7003\"\ntransparent = true\ntls_port = 7001\n\
             require_endpoint_verification = true\n"
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_ringseal");
    let config_arg = config.to_str().unwrap();

    // The rules: ringseal runs as root (uid 0) here, so uid 0 is excluded; the "node" is nobody.
    let printed = run(ns.cmd(&[bin, "rules", "--config", config_arg, "--uid", "0"]));
    let printed = String::from_utf8_lossy(&printed.stdout).into_owned();
    assert!(
        printed.contains("ip daddr != 127.0.0.0/8 tcp dport 7000 redirect to :7002"),
        "{printed}"
    );
    assert!(
        printed.contains("ip6 daddr != ::1 tcp dport 7000 redirect to :7003"),
        "{printed}"
    );
    run(ns.cmd(&[
        bin, "rules", "--config", config_arg, "--uid", "0", "--apply",
    ]));
    // Applying twice replaces, it does not duplicate.
    run(ns.cmd(&[
        bin, "rules", "--config", config_arg, "--uid", "0", "--apply",
    ]));
    let listed = run(ns.cmd(&["nft", "list", "table", "inet", "ringseal"]));
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert_eq!(listed.matches("redirect to :7002").count(), 1, "{listed}");

    let mut echo = Killed(
        ns.cmd(&["/usr/bin/python3", "-c", ECHO_SERVER])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(echo.0.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
    }
    let netns_prefix = ["ip", "netns", "exec", ns.0.as_str()];
    let mut proc = Proc::spawn(&netns_prefix, &config, dir);
    proc.wait_for("starting outbound listener on [::1]:7003");

    // The node (uid 65534) dials the peer's storage port; nothing listens on PEER:7000, so an answer
    // can only come through the redirect, the outbound listener, mTLS to PEER:7001 and the inbound
    // listener's forward to 127.0.0.1:7000.
    let out = run(ns.as_node(&["/usr/bin/python3", "-c", CLIENT, PEER]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "marker-through-ringseal"
    );
    // The same over IPv6: SO_ORIGINAL_DST for an IPv6 connection (IP6T_SO_ORIGINAL_DST).
    let out = run(ns.as_node(&["/usr/bin/python3", "-c", CLIENT, PEER6]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "marker-through-ringseal",
        "IPv6"
    );
    // An IPv4 connection redirected to a dual-stack [::] listener arrives IPv4-mapped: its original
    // destination is read the IPv4 way (the listener's family would ask for an IPv6 NAT entry).
    let dual_config = path.join("dual-stack.toml");
    std::fs::write(
        &dual_config,
        "[tls]\ncert = \"node.crt\"\nkey = \"node.key\"\nca = \"ca.crt\"\n\n\
         [[outbound]]\nlisten = \"[::]:7004\"\ntransparent = true\ntls_port = 7001\n\
         allow_non_loopback_plaintext = true\nrequire_endpoint_verification = true\n",
    )
    .unwrap();
    let mut dual = Proc::spawn(&netns_prefix, &dual_config, tempfile::tempdir().unwrap());
    dual.wait_for("starting outbound listener on [::]:7004");
    ns.redirect(7010, 7004);
    let to_7010 = CLIENT.replace("sys.argv[1], 7000", "sys.argv[1], 7010");
    let out = ns
        .as_node(&["/usr/bin/python3", "-c", &to_7010, PEER])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "marker-through-ringseal",
        "IPv4 through a [::] listener: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        dual.drain(std::time::Duration::from_millis(200)).join("\n")
    );
    drop(dual);

    // ringseal's own uid is not redirected: the same connection as root finds nothing on PEER:7000.
    let direct = ns
        .cmd(&["/usr/bin/python3", "-c", CLIENT, PEER])
        .output()
        .unwrap();
    assert!(
        !direct.status.success(),
        "uid 0 should not have been redirected"
    );
    assert!(
        String::from_utf8_lossy(&direct.stderr).contains("Connection refused"),
        "{}",
        String::from_utf8_lossy(&direct.stderr)
    );

    // A connection straight to the transparent listener (not redirected) is refused with a reason.
    let _ = ns
        .cmd(&[
            "/usr/bin/python3",
            "-c",
            &CLIENT.replace("sys.argv[1], 7000", "'127.0.0.1', 7002"),
            "x",
        ])
        .output();
    proc.wait_for("it was not redirected");

    // A rule that also redirects the TLS port makes a loop: refused with a line that says so.
    ns.redirect(7001, 7002);
    let looped = CLIENT.replace("sys.argv[1], 7000", "sys.argv[1], 7001");
    let _ = ns
        .as_node(&["/usr/bin/python3", "-c", &looped, PEER])
        .output();
    let line = proc.wait_for("redirect loop");
    assert!(line.contains(&format!("{PEER}:7001")), "{line}");

    run(ns.cmd(&[bin, "rules", "--remove"]));
    let tables = run(ns.cmd(&["nft", "list", "tables"]));
    assert!(
        !String::from_utf8_lossy(&tables.stdout).contains("ringseal"),
        "table left behind"
    );
    drop(echo);
}

/// The listeners of [`keyless_config`], with `[tls]` given by `tls`.
fn rules_config(dir: &std::path::Path, name: &str, tls: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "[tls]\n{tls}\n\
             [[inbound]]\nlisten = \"{PEER}:7001\"\nforward = \"127.0.0.1:7000\"\n\n\
             [[outbound]]\nlisten = \"127.0.0.1:7002\"\ntransparent = true\ntls_port = 7001\n\n\
             [[outbound]]\nlisten = \"[::1]:7003\"\ntransparent = true\ntls_port = 7001\n"
        ),
    )
    .unwrap();
    path
}

/// The variable the keyless config takes its keystore password from; never set by the tests.
const UNSET_PASSWORD_VAR: &str = "RINGSEAL_TEST_KEYSTORE_PASSWORD_NEVER_SET";

/// A config whose key material cannot be read: its keystore and truststore do not exist and the
/// keystore's password comes from an unset variable. What `rules` needs (the listen ports) is there.
fn keyless_config(dir: &std::path::Path) -> std::path::PathBuf {
    rules_config(
        dir,
        "keyless.toml",
        &format!(
            "keystore = \"missing/node.p12\"\nkeystore_password_env = \"{UNSET_PASSWORD_VAR}\"\n\
             truststore = \"missing/truststore.p12\"\ntruststore_password = \"changeit\"\n"
        ),
    )
}

/// `ringseal rules --uid 0` with `config` (and more arguments), the password variable unset.
fn rules(config: &std::path::Path, more: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ringseal"));
    c.args(["rules", "--config", config.to_str().unwrap(), "--uid", "0"])
        .args(more)
        .env_remove(UNSET_PASSWORD_VAR);
    c
}

/// A root unit applying the firewall rules at boot must not need the node's private key: `rules`
/// reads the listen ports only, so unreadable key material changes nothing in what it prints.
#[test]
fn rules_print_the_same_without_readable_key_material() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let node = pki.issue("node", &[ip(PEER), LOCALHOST]);
    std::fs::write(dir.path().join("node.crt"), &node.cert_pem).unwrap();
    std::fs::write(dir.path().join("node.key"), &node.key_pem).unwrap();
    std::fs::write(dir.path().join("ca.crt"), &pki.ca.cert_pem).unwrap();
    let readable = rules_config(
        dir.path(),
        "readable.toml",
        "cert = \"node.crt\"\nkey = \"node.key\"\nca = \"ca.crt\"\n",
    );
    let missing_pem = rules_config(
        dir.path(),
        "missing-pem.toml",
        "cert = \"missing/node.crt\"\nkey = \"missing/node.key\"\nca = \"missing/ca.crt\"\n",
    );
    let want = run(rules(&readable, &[]));
    let want = String::from_utf8(want.stdout).unwrap();
    assert!(want.contains("redirect to :7002"), "{want}");
    for config in [keyless_config(dir.path()), missing_pem] {
        let out = rules(&config, &[]).output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            config.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            want,
            "{}",
            config.display()
        );
    }
    // The same config cannot run: the key material is read when the sidecar starts.
    let out = Command::new(env!("CARGO_BIN_EXE_ringseal"))
        .args([
            "check",
            "--config",
            keyless_config(dir.path()).to_str().unwrap(),
        ])
        .env_remove(UNSET_PASSWORD_VAR)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

/// `rules --apply` with the keyless config installs the rules in a namespace of the test's own.
#[test]
fn rules_apply_without_readable_key_material() {
    if let Err(why) = prerequisites() {
        assert!(
            std::env::var_os("CI").is_none(),
            "in CI this test must run: {why}"
        );
        eprintln!("skipping: {why}");
        return;
    }
    let ns = Netns::new();
    let dir = tempfile::tempdir().unwrap();
    let config = keyless_config(dir.path());
    let mut apply = ns.cmd(&[
        env!("CARGO_BIN_EXE_ringseal"),
        "rules",
        "--config",
        config.to_str().unwrap(),
        "--uid",
        "0",
        "--apply",
    ]);
    apply.env_remove(UNSET_PASSWORD_VAR);
    run(apply);
    let listed = run(ns.cmd(&["nft", "list", "table", "inet", "ringseal"]));
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains("redirect to :7002"), "{listed}");
    assert!(listed.contains("redirect to :7003"), "{listed}");
}

/// ringseal-rules.service's ExecStop runs `rules --remove`: after a reboot (no table) or a second
/// stop there is nothing to remove, and that is no failure.
#[test]
fn rules_remove_is_idempotent() {
    if let Err(why) = prerequisites() {
        assert!(
            std::env::var_os("CI").is_none(),
            "in CI this test must run: {why}"
        );
        eprintln!("skipping: {why}");
        return;
    }
    let ns = Netns::new();
    let dir = tempfile::tempdir().unwrap();
    let config = keyless_config(dir.path());
    let bin = env!("CARGO_BIN_EXE_ringseal");
    let mut apply = ns.cmd(&[
        bin,
        "rules",
        "--config",
        config.to_str().unwrap(),
        "--uid",
        "0",
    ]);
    apply.arg("--apply").env_remove(UNSET_PASSWORD_VAR);
    run(apply);
    for _ in 0..2 {
        run(ns.cmd(&[bin, "rules", "--remove"]));
    }
    let tables = run(ns.cmd(&["nft", "list", "tables"]));
    assert!(!String::from_utf8_lossy(&tables.stdout).contains("ringseal"));
}

/// A host without nft: `rules --apply` (ringseal-rules.service's ExecStart) and `--remove` fail with
/// one line naming nft and the package to install, so the unit fails and says why (and Cassandra,
/// which requires the unit, does not start without the rules).
#[test]
fn rules_without_nft_name_the_package() {
    let dir = tempfile::tempdir().unwrap();
    let config = keyless_config(dir.path());
    let empty = tempfile::tempdir().unwrap();
    let mut apply = Command::new(env!("CARGO_BIN_EXE_ringseal"));
    apply
        .args(["rules", "--apply", "--uid", "999", "--config"])
        .arg(&config);
    let mut remove = Command::new(env!("CARGO_BIN_EXE_ringseal"));
    remove.args(["rules", "--remove"]);
    for mut cmd in [apply, remove] {
        let out = cmd.env("PATH", empty.path()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{cmd:?}: {stderr}");
        assert!(
            stderr.contains("nft is not installed") && stderr.contains("nftables package"),
            "{cmd:?}: {stderr}"
        );
    }
}
