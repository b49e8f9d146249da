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
