//! `[tcp] loopback_congestion_control`, read back from the kernel: a real pair (an outbound and an
//! inbound `ringseal run`) carries a connection from a node to an echo storage port, and `ss -ti`
//! names the congestion control of each of ringseal's sockets: the node's plaintext leg (accepted by
//! the outbound listener), the storage-port leg (the inbound side's connection to the backend) and the
//! two ends of the TLS leg between them (a network leg, even on loopback here).
//!
//! On this host against its own default; in namespaces whose default is bbr (pacing) and reno
//! (root, `ip`; in CI they must run, elsewhere they say why they skip). `ss` (iproute2) and python3
//! (the node and the storage port) are needed everywhere.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

use ringseal_testkit::netns::{self, Netns};
use ringseal_testkit::process::{Proc, address_after, ringseal_binary};
use ringseal_testkit::*;

const PYTHON: &str = "/usr/bin/python3";

/// `serve`: an echo storage port on 127.0.0.1:0 that prints its port. `client PORT`: a node that
/// connects PORT, sees one echo, prints "ok" and holds the connection until its stdin closes.
const PEERS: &str = r#"
import socket, sys, threading
if sys.argv[1] == "serve":
    s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
    print(s.getsockname()[1], flush=True)
    def echo(c):
        try:
            while True:
                d = c.recv(65536)
                if not d: break
                c.sendall(d)
        except OSError:
            pass
    while True:
        c, _ = s.accept(); threading.Thread(target=echo, args=(c,), daemon=True).start()
else:
    c = socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=20)
    c.sendall(b"ping")
    got = b""
    while len(got) < 4:
        d = c.recv(4)
        if not d: break
        got += d
    print("ok" if got == b"ping" else "echo: %r" % got, flush=True)
    sys.stdin.read()
"#;

/// A child killed when dropped, with the first line it printed.
struct Peer(Child, String);

impl Peer {
    fn start(prefix: &[String], args: &[&str]) -> Self {
        let mut cmd = command(prefix, PYTHON);
        cmd.args(["-c", PEERS])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let line = first_line(child.stdout.take().unwrap());
        Self(child, line)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn first_line(out: ChildStdout) -> String {
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).unwrap();
    line.trim().to_owned()
}

fn command(prefix: &[String], program: &str) -> Command {
    match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(program);
            c
        }
        None => Command::new(program),
    }
}

fn read(prefix: &[String], args: &[&str]) -> String {
    let out = command(prefix, args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The congestion control of the one established socket `filter` selects (e.g. `dport = :7000`), as
/// `ss -ti` names it: the word of its info line that is an algorithm the kernel has.
fn algorithm(prefix: &[String], filter: &str) -> String {
    let available = read(prefix, &["cat", ringseal::tcp::AVAILABLE_PATH]);
    let mut args = vec!["ss", "-tinH", "state", "established"];
    args.extend(filter.split(' '));
    let out = read(prefix, &args);
    let names: Vec<&str> = out
        .split_whitespace()
        .filter(|w| available.split_whitespace().any(|a| a == *w))
        .collect();
    assert_eq!(names.len(), 1, "one socket for {filter:?}:\n{out}");
    names[0].to_owned()
}

/// What `ss` read from ringseal's sockets.
#[derive(Debug)]
struct Legs {
    /// The node's plaintext leg, accepted by the outbound listener.
    node: String,
    /// The inbound side's connection to the storage port.
    storage: String,
    /// The TLS leg: the outbound side's connection and the inbound side's accepted socket.
    tls: [String; 2],
    /// The start-up lines that name the choice.
    logged: String,
}

/// A pair under `tcp` (a `[tcp]` table or nothing), in the namespace `prefix` enters, carrying one
/// held connection; what its sockets use.
fn pair(prefix: &[String], tcp: &str) -> Legs {
    let pki = Pki::new();
    let backend = Peer::start(prefix, &["serve"]);
    let start = |listener: &str, needle: &str| {
        let dir = tempfile::tempdir().unwrap();
        pki.write(dir.path());
        let config = dir.path().join("ringseal.toml");
        std::fs::write(&config, format!("{TLS_TABLE}\n{listener}\n{tcp}\n")).unwrap();
        let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
        let mut proc = Proc::spawn(&prefix, &config, dir);
        let line = proc.wait_for(needle);
        let addr = address_after(&line, "listener on ");
        let logged = proc
            .seen
            .iter()
            .find(|l| l.contains("loopback legs:"))
            .cloned()
            .unwrap_or_else(|| panic!("no \"loopback legs:\" line before {line}"));
        (proc, addr, logged)
    };
    let (_inbound, inbound, logged) = start(
        &format!(
            "[[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"127.0.0.1:{}\"\n",
            backend.1
        ),
        "starting inbound mTLS listener",
    );
    let (_outbound, outbound, _) = start(
        &format!("[[outbound]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{inbound}\"\n"),
        "starting outbound listener",
    );
    let node = Peer::start(prefix, &["client", &outbound.port().to_string()]);
    assert_eq!(node.1, "ok", "the echo through the pair");
    Legs {
        node: algorithm(prefix, &format!("sport = :{}", outbound.port())),
        storage: algorithm(prefix, &format!("dport = :{}", backend.1)),
        tls: [
            algorithm(prefix, &format!("dport = :{}", inbound.port())),
            algorithm(prefix, &format!("sport = :{}", inbound.port())),
        ],
        logged,
    }
}

fn have_tools() -> bool {
    tools::have(&["ss", PYTHON])
}

#[test]
fn auto_on_this_host_unpaces_only_the_loopback_legs() {
    if !have_tools() {
        return;
    }
    let host = ringseal::tcp::HostCongestion::read().default;
    let legs = pair(&[], "");
    assert_eq!(legs.tls, [host.clone(), host.clone()], "{legs:?}");
    if ringseal::tcp::paces(&host) {
        for leg in [&legs.node, &legs.storage] {
            assert!(["cubic", "reno"].contains(&leg.as_str()), "{legs:?}");
        }
        assert!(
            legs.logged
                .contains(&format!("{} (host default {host} paces)", legs.node)),
            "{legs:?}"
        );
    } else {
        assert_eq!([&legs.node, &legs.storage], [&host, &host], "{legs:?}");
        assert!(legs.logged.contains("does not pace"), "{legs:?}");
    }
}

#[test]
fn host_leaves_every_leg_on_the_host_default() {
    if !have_tools() {
        return;
    }
    let host = ringseal::tcp::HostCongestion::read().default;
    let legs = pair(&[], "[tcp]\nloopback_congestion_control = \"host\"\n");
    for leg in [&legs.node, &legs.storage, &legs.tls[0], &legs.tls[1]] {
        assert_eq!(leg, &host, "{legs:?}");
    }
}

/// In namespaces whose default is bbr, then reno: the same pair under "auto", "host" and a name.
#[test]
fn namespaces_with_bbr_and_reno() {
    if !have_tools() || !netns::available(&["sysctl", "ss"]) {
        return;
    }
    let bbr = Netns::create("cc-bbr").unwrap();
    bbr.set_congestion("bbr").unwrap();
    let legs = pair(&bbr.prefix(), "");
    // As root ringseal may set cubic whatever the allowed list says.
    assert_eq!([&legs.node, &legs.storage], ["cubic", "cubic"], "{legs:?}");
    assert_eq!(legs.tls, ["bbr", "bbr"], "network legs keep the default");
    assert!(
        legs.logged.contains("cubic (host default bbr paces)"),
        "{legs:?}"
    );
    // "host" under bbr: nothing changes.
    let legs = pair(
        &bbr.prefix(),
        "[tcp]\nloopback_congestion_control = \"host\"\n",
    );
    assert_eq!([&legs.node, &legs.storage], ["bbr", "bbr"], "{legs:?}");

    // Under a default that does not pace, auto leaves it: reno rather than cubic, so that "left" and
    // "set to auto's own choice" differ. (A namespace may default only to an algorithm of
    // net.ipv4.tcp_allowed_congestion_control, which need not list cubic; reno is always allowed.)
    let reno = Netns::create("cc-reno").unwrap();
    reno.set_congestion("reno").unwrap();
    let legs = pair(&reno.prefix(), "");
    for leg in [&legs.node, &legs.storage, &legs.tls[0], &legs.tls[1]] {
        assert_eq!(leg, "reno", "{legs:?}");
    }
    assert!(
        legs.logged.contains("reno (host default, does not pace)"),
        "{legs:?}"
    );
    // An explicit name applies under any default, and only to the loopback legs.
    let legs = pair(
        &reno.prefix(),
        "[tcp]\nloopback_congestion_control = \"cubic\"\n",
    );
    assert_eq!([&legs.node, &legs.storage], ["cubic", "cubic"], "{legs:?}");
    assert_eq!(legs.tls, ["reno", "reno"], "{legs:?}");
}

/// A name the kernel refuses: `run` exits 64 naming the key, the lists and the fix; `check` says it.
#[test]
fn a_name_the_kernel_refuses_is_a_config_error() {
    let pki = Pki::new();
    let (dir, config) = write_config(
        &pki,
        "",
        "[[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"127.0.0.1:7000\"\n\n\
         [tcp]\nloopback_congestion_control = \"nosuchcc\"\n",
    );
    let run = Command::new(ringseal_binary())
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(64), "{run:?}");
    let err = String::from_utf8_lossy(&run.stderr);
    for part in [
        "tcp.loopback_congestion_control",
        "\"nosuchcc\"",
        "net.ipv4.tcp_available_congestion_control",
        "net.ipv4.tcp_allowed_congestion_control",
        "\"auto\" or \"host\"",
    ] {
        assert!(err.contains(part), "{part:?} missing from {err}");
    }
    let check = check_output(dir.path(), &config);
    assert!(!check.status.success());
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        out.contains("tcp.loopback_congestion_control: this process cannot set \"nosuchcc\""),
        "{out}"
    );
}

/// `check` names the choice.
#[test]
fn check_says_what_the_loopback_legs_use() {
    let pki = Pki::new();
    let (dir, config) = write_config(
        &pki,
        "",
        "[[inbound]]\nlisten = \"127.0.0.1:0\"\nforward = \"127.0.0.1:7000\"\n\n\
         [tcp]\nloopback_congestion_control = \"reno\"\n",
    );
    let check = check_output(dir.path(), &config);
    let out = String::from_utf8_lossy(&check.stdout);
    let host = ringseal::tcp::HostCongestion::read().default;
    assert!(
        out.contains(&format!(
            "loopback legs: reno (configured; host default {host}); network legs keep the host default"
        )),
        "{out}"
    );
}

fn check_output(dir: &Path, config: &Path) -> std::process::Output {
    Command::new(ringseal_binary())
        .current_dir(dir)
        .args(["check", "--config"])
        .arg(config)
        .output()
        .unwrap()
}
