//! The shipped systemd units agree with each other, with the Debian package (`[package.metadata.deb]`
//! in cli/Cargo.toml) and with the shipped config: the binary and config paths they run, the user,
//! the directories they open, and the promises the README makes (notify-reload, rules before
//! Cassandra and required by it, root only for the rules). `cli/tests/package.rs` then checks the
//! built package with systemd's own tools.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `Key=value` lines per section; a key given twice keeps every value.
type Unit = BTreeMap<(String, String), Vec<String>>;

fn unit(name: &str) -> Unit {
    let text = std::fs::read_to_string(repo().join("config").join(name)).unwrap();
    let mut section = String::new();
    let mut unit = Unit::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_owned();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{name}: {line}"));
        unit.entry((section.clone(), k.to_owned()))
            .or_default()
            .push(v.to_owned());
    }
    unit
}

fn one<'a>(unit: &'a Unit, section: &str, key: &str) -> &'a str {
    match unit
        .get(&(section.to_owned(), key.to_owned()))
        .map(Vec::as_slice)
    {
        Some([v]) => v,
        other => panic!("[{section}] {key}: expected one value, got {other:?}"),
    }
}

fn words(unit: &Unit, section: &str, key: &str) -> Vec<String> {
    unit.get(&(section.to_owned(), key.to_owned()))
        .into_iter()
        .flatten()
        .flat_map(|v| v.split_whitespace().map(str::to_owned))
        .collect()
}

/// The package's assets: destination (absolute) -> source (relative to cli/).
fn assets() -> BTreeMap<String, String> {
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(repo().join("cli/Cargo.toml")).unwrap()).unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    deb["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let a = a.as_array().unwrap();
            let (src, dest) = (a[0].as_str().unwrap(), a[1].as_str().unwrap());
            let dest = if dest.ends_with('/') {
                format!(
                    "/{dest}{}",
                    Path::new(src).file_name().unwrap().to_str().unwrap()
                )
            } else {
                format!("/{dest}")
            };
            (dest, src.to_owned())
        })
        .collect()
}

#[test]
fn ringseal_service_runs_the_packaged_binary_and_config_as_ringseal() {
    let u = unit("ringseal.service");
    let assets = assets();
    assert_eq!(one(&u, "Service", "Type"), "notify-reload");
    // notify-reload sends SIGHUP itself; an ExecReload as well would reload twice.
    assert!(!u.contains_key(&("Service".into(), "ExecReload".into())));
    assert_eq!(one(&u, "Service", "User"), "ringseal");
    for key in ["ExecStart", "ExecStartPre"] {
        let cmd: Vec<&str> = one(&u, "Service", key).split(' ').collect();
        assert!(
            assets.contains_key(cmd[0]),
            "{key}: {} is not packaged",
            cmd[0]
        );
        let config = cmd.iter().skip_while(|w| **w != "--config").nth(1).unwrap();
        assert_eq!(assets[*config], "../config/ringseal.toml", "{key}");
    }
    assert_eq!(
        words(&u, "Service", "ReadOnlyPaths"),
        ["/etc/ringseal"],
        "the config's directory"
    );
    // The shipped config keeps the permissive memory where the unit lets it write.
    let shipped = std::fs::read_to_string(repo().join("config/ringseal.toml")).unwrap();
    let config: toml::Table = toml::from_str(&shipped).unwrap();
    let state = config["permissive"]["state_file"].as_str().unwrap();
    let dir = format!("/var/lib/{}/", one(&u, "Service", "StateDirectory"));
    assert!(state.starts_with(&dir), "{state} is outside {dir}");
    assert_eq!(
        words(&u, "Service", "CapabilityBoundingSet"),
        [] as [&str; 0]
    );
    assert!(words(&u, "Unit", "Before").contains(&"cassandra.service".to_owned()));
}

/// The unit, the Dockerfile and the offline image builder give ringseal the same GLIBC_TUNABLES
/// (README, "glibc's copies on AMD"); `integration::bench` checks the bench's default against the
/// unit's.
#[test]
fn unit_and_images_set_the_same_glibc_tunables() {
    let u = unit("ringseal.service");
    let unit_value = one(&u, "Service", "Environment")
        .strip_prefix("GLIBC_TUNABLES=")
        .expect("the unit's Environment= is GLIBC_TUNABLES");
    assert!(
        unit_value.starts_with("glibc.cpu.x86_rep_movsb_threshold="),
        "{unit_value}"
    );
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let env: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ENV "))
        .collect();
    assert_eq!(
        env,
        [format!("GLIBC_TUNABLES={unit_value}")],
        "Dockerfile ENV"
    );
    let builder = std::fs::read_to_string(repo().join("config/container/build-local.sh")).unwrap();
    let envs: Vec<&str> = builder
        .lines()
        .filter_map(|l| l.trim().strip_prefix("--env "))
        .map(|l| l.trim_end_matches('\\').trim())
        .collect();
    assert_eq!(
        envs,
        [format!("GLIBC_TUNABLES={unit_value}")],
        "build-local.sh --env"
    );
}

#[test]
fn rules_service_applies_before_cassandra_as_root_and_removes_on_stop() {
    let u = unit("ringseal-rules.service");
    let assets = assets();
    assert!(assets.contains_key("/usr/lib/systemd/system/ringseal-rules.service"));
    assert_eq!(one(&u, "Service", "Type"), "oneshot");
    assert_eq!(one(&u, "Service", "RemainAfterExit"), "yes");
    assert!(
        !u.contains_key(&("Service".into(), "User".into())),
        "runs as root"
    );
    let start: Vec<&str> = one(&u, "Service", "ExecStart").split(' ').collect();
    assert!(assets.contains_key(start[0]));
    assert_eq!(start[1..4], ["rules", "--apply", "--config"]);
    assert_eq!(assets[start[4]], "../config/ringseal.toml");
    assert_eq!(
        one(&u, "Service", "ExecStop"),
        format!("{} rules --remove", start[0])
    );
    // Ordered before Cassandra and required by it: if the rules fail, Cassandra does not start.
    assert!(words(&u, "Unit", "Before").contains(&"cassandra.service".to_owned()));
    assert_eq!(one(&u, "Install", "RequiredBy"), "cassandra.service");
    assert_eq!(
        words(&u, "Service", "CapabilityBoundingSet"),
        ["CAP_NET_ADMIN"]
    );
}

/// Every system call `ringseal run` makes (traced with strace through start, a verified handshake and
/// echo, a refused outbound connection, a reload and a stop) is one ringseal.service's
/// `SystemCallFilter=` allows, and every socket it opens is of a family `RestrictAddressFamilies=`
/// allows: the hardening cannot kill the sidecar (systemd is not PID 1 here to run the unit itself).
#[tokio::test]
async fn the_hardened_unit_allows_every_system_call_ringseal_makes() {
    use ringseal_testkit::process::{Proc, address_after};
    use ringseal_testkit::*;
    if !tools::have(&["strace", "systemd-analyze", "pgrep"]) {
        return;
    }
    let u = unit("ringseal.service");
    let (mut allowed, mut denied) = (Vec::new(), Vec::new());
    for filter in u[&("Service".to_owned(), "SystemCallFilter".to_owned())].iter() {
        match filter.strip_prefix('~') {
            Some(deny) => denied.extend(deny.split_whitespace().flat_map(syscalls)),
            None => allowed.extend(filter.split_whitespace().flat_map(syscalls)),
        }
    }
    let families = words(&u, "Service", "RestrictAddressFamilies");

    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let (dir, config) = write_config(
        &pki,
        "",
        &format!(
            "\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n[[inbound]]\nlisten = \"127.0.0.1:0\"\n\
             forward = \"{}\"\n\n[[outbound]]\nlisten = \"127.0.0.1:0\"\ntransparent = true\n\
             mode = \"permissive\"\n\n[permissive]\nstate_file = \"tls-peers\"\n",
            backend.addr
        ),
    );
    let trace = dir.path().join("strace.out");
    let trace_arg = trace.to_str().unwrap().to_owned();
    // As under systemd: a notify socket (AF_UNIX) and a watchdog.
    let notify = dir.path().join("notify");
    let _manager = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    let mut proc = Proc::spawn_with(
        &["strace", "-f", "-qq", "-o", &trace_arg],
        &config,
        dir,
        &[
            ("NOTIFY_SOCKET", notify.to_str().unwrap()),
            ("WATCHDOG_USEC", "20000000"),
        ],
    );
    let inbound = address_after(
        &proc.wait_for("starting inbound mTLS listener"),
        "listener on ",
    );
    let outbound = address_after(&proc.wait_for("starting outbound listener"), "listener on ");
    let mut tls = within(
        "a handshake",
        connect(&client(pki.roots(), Some(&pki.node)), inbound),
    )
    .await
    .unwrap();
    within("an echo", echo(&mut tls, b"ping")).await.unwrap();
    drop(tls);
    // Not redirected, so no original destination: refused, after the getsockopt.
    drop(std::net::TcpStream::connect(outbound).unwrap());
    proc.wait_for("original destination");
    // strace forwards no signal: send them to ringseal, its child.
    let pgrep = std::process::Command::new("pgrep")
        .args(["-P", &proc.child.id().to_string()])
        .output()
        .unwrap();
    let ringseal = String::from_utf8(pgrep.stdout).unwrap().trim().to_owned();
    let kill = |sig: &str| {
        assert!(
            std::process::Command::new("kill")
                .args([sig, &ringseal])
                .status()
                .unwrap()
                .success()
        );
    };
    kill("-HUP");
    proc.wait_for("reloaded ");
    kill("-TERM");
    assert!(proc.wait_exit().success());

    let text = std::fs::read_to_string(&trace).unwrap();
    let mut used = std::collections::BTreeSet::new();
    let mut opened = std::collections::BTreeSet::new();
    for line in text.lines() {
        // "PID name(args) = result", or "PID <... name resumed> ..." for a call split by another thread.
        let call = line
            .split_once(' ')
            .map_or("", |(_, rest)| rest.trim_start());
        let Some((name, args)) = call.split_once('(') else {
            continue;
        };
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            continue;
        }
        used.insert(name.to_owned());
        if name == "socket" {
            opened.insert(args.split(',').next().unwrap().to_owned());
        }
    }
    assert!(
        used.contains("accept4") && used.contains("getsockopt"),
        "{used:?}"
    );
    assert!(opened.contains("AF_UNIX"), "no notify socket: {opened:?}");
    let refused: Vec<&String> = used
        .iter()
        .filter(|s| !allowed.contains(s) || denied.contains(s))
        .collect();
    assert!(refused.is_empty(), "SystemCallFilter= refuses {refused:?}");
    for family in &opened {
        assert!(
            families.contains(family),
            "socket({family}) is not in RestrictAddressFamilies={families:?}"
        );
    }
}

/// The system calls of a `systemd-analyze syscall-filter` group (nested groups expanded) or one call.
fn syscalls(name: &str) -> Vec<String> {
    if !name.starts_with('@') {
        return vec![name.to_owned()];
    }
    let out = std::process::Command::new("systemd-analyze")
        .args(["syscall-filter", name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-analyze syscall-filter {name}"
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .flat_map(syscalls)
        .collect()
}
