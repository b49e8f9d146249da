//! The Debian package, built by cargo-deb and installed for real: its files, modes, owners, conffiles
//! and maintainer scripts (`dpkg-deb`), then `dpkg -i` into a throwaway Debian root (`debootstrap
//! --variant=minbase` with systemd, cached as a tarball under target/debroot/), where the user must
//! exist, the conffile be in place, both units pass `systemd-analyze verify` and ringseal.service rate
//! an exposure of at most 2.5 in `systemd-analyze security --offline=yes`; then remove and purge.
//!
//! The root is Debian 13 (trixie): its systemd (257) knows Type=notify-reload (253 and later), this
//! host's (Debian 12, 252) does not. The package is built from the test build (`--profile dev
//! --no-build`, stripped): what is tested is the packaging, and a release build would add minutes.
//!
//! Needs root (chroot), cargo-deb, dpkg-deb, debootstrap and Debian's mirror on the first run; in CI it
//! must run, elsewhere it says why it skips.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

const SUITE: &str = "trixie";
const MIRROR: &str = "http://deb.debian.org/debian";
/// What `systemd-analyze security` calls "OK" or better.
const MAX_EXPOSURE: f64 = 2.5;

fn prerequisites() -> Result<(), String> {
    if !std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
    {
        return Err("not root (chroot and dpkg -i need it)".into());
    }
    for tool in ["dpkg-deb", "debootstrap", "chroot", "tar"] {
        if ringseal_testkit::tools::which(tool).is_none() {
            return Err(format!("{tool} is not installed"));
        }
    }
    let deb = Command::new(env!("CARGO"))
        .args(["deb", "--version"])
        .output();
    if !deb.is_ok_and(|o| o.status.success()) {
        return Err("cargo-deb is not installed (cargo install cargo-deb --locked)".into());
    }
    Ok(())
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The workspace's target directory (the binary under test is target/debug/ringseal).
fn target() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_ringseal"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_owned()
}

/// A minbase root with systemd, debootstrapped once and kept as a tarball.
fn base_tarball() -> PathBuf {
    let cache = target().join("debroot");
    let tarball = cache.join(format!("{SUITE}-minbase-systemd.tar"));
    if tarball.is_file() {
        return tarball;
    }
    let started = Instant::now();
    let build = cache.join(format!("build-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&build);
    std::fs::create_dir_all(&build).unwrap();
    run(Command::new("debootstrap")
        .args(["--variant=minbase", "--include=systemd", SUITE])
        .arg(&build)
        .arg(MIRROR));
    let partial = tarball.with_extension("tar.partial");
    run(Command::new("tar")
        .arg("-C")
        .arg(&build)
        .arg("-cf")
        .arg(&partial)
        .arg("."));
    std::fs::rename(&partial, &tarball).unwrap();
    std::fs::remove_dir_all(&build).unwrap();
    eprintln!(
        "debootstrap {SUITE} minbase + systemd: {:.0?}",
        started.elapsed()
    );
    tarball
}

fn chroot(root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("chroot");
    c.arg(root)
        .args(args)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("DEBIAN_FRONTEND", "noninteractive");
    c
}

/// `dpkg-deb -c` as path -> (mode, owner).
fn contents(deb: &Path) -> Vec<(String, String, String)> {
    stdout(&run(Command::new("dpkg-deb").arg("-c").arg(deb)))
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f[5].trim_start_matches('.').to_owned();
            (path, f[0].to_owned(), f[1].to_owned())
        })
        .collect()
}

#[test]
fn debian_package_builds_installs_and_its_units_verify() {
    if let Err(why) = prerequisites() {
        assert!(
            std::env::var_os("CI").is_none(),
            "in CI this test must run: {why}"
        );
        eprintln!("skipping: {why}");
        return;
    }
    std::fs::create_dir_all(target().join("tmp")).unwrap();
    let work = tempfile::tempdir_in(target().join("tmp")).unwrap();

    // Build.
    let started = Instant::now();
    run(Command::new(env!("CARGO"))
        .args([
            "deb",
            "-p",
            "ringseal-cli",
            "--profile",
            "dev",
            "--no-build",
            "--fast",
            "-o",
        ])
        .arg(work.path())
        .current_dir(repo()));
    let deb = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("cargo deb wrote a .deb");
    eprintln!("cargo deb: {:.1?}", started.elapsed());

    // Files, modes, owners.
    let files = contents(&deb);
    for (path, mode) in [
        ("/usr/bin/ringseal", "-rwxr-xr-x"),
        ("/etc/ringseal/ringseal.toml", "-rw-r--r--"),
        ("/usr/lib/systemd/system/ringseal.service", "-rw-r--r--"),
        (
            "/usr/lib/systemd/system/ringseal-rules.service",
            "-rw-r--r--",
        ),
        ("/usr/lib/sysusers.d/ringseal.conf", "-rw-r--r--"),
        ("/usr/lib/modules-load.d/ringseal.conf", "-rw-r--r--"),
        ("/usr/share/ringseal/alerts.yml", "-rw-r--r--"),
        ("/usr/share/ringseal/grafana-dashboard.json", "-rw-r--r--"),
        ("/usr/share/ringseal/systemd-252/notify.conf", "-rw-r--r--"),
    ] {
        let found = files.iter().find(|f| f.0 == path);
        assert_eq!(
            found.map(|f| f.1.as_str()),
            Some(mode),
            "{path} in {files:#?}"
        );
    }
    for (path, _, owner) in &files {
        assert_eq!(owner, "0/0", "{path}");
        // Merged /usr (Debian 12+): nothing in /lib, /bin or /sbin; /etc only for our config.
        assert!(
            path.starts_with("/usr/")
                || path.starts_with("/etc/ringseal/")
                || path.ends_with("./")
                || ["/", "/usr/", "/etc/"].contains(&path.as_str()),
            "{path} is outside /usr and /etc/ringseal"
        );
    }
    // Control: the conffile and the maintainer scripts (executable, valid sh).
    let conffiles = stdout(&run(Command::new("dpkg-deb")
        .args(["-I"])
        .arg(&deb)
        .arg("conffiles")));
    assert_eq!(conffiles.trim(), "/etc/ringseal/ringseal.toml");
    let control = work.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    for script in ["postinst", "prerm", "postrm"] {
        let path = control.join(script);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o755, "{script}");
        run(Command::new("sh").arg("-n").arg(&path));
    }
    let fields = stdout(&run(Command::new("dpkg-deb").arg("-f").arg(&deb)));
    assert!(fields.contains("Package: ringseal\n"), "{fields}");
    assert!(fields.contains("Depends: libc6"), "{fields}");

    // Install into a fresh Debian root.
    let started = Instant::now();
    let root = work.path().join("root");
    std::fs::create_dir(&root).unwrap();
    run(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-xf")
        .arg(base_tarball()));
    let unpacked = started.elapsed();
    std::fs::copy(&deb, root.join("tmp/ringseal.deb")).unwrap();
    run(&mut chroot(&root, &["dpkg", "-i", "/tmp/ringseal.deb"]));
    eprintln!(
        "Debian root ready in {unpacked:.1?}, dpkg -i in {:.1?}",
        started.elapsed() - unpacked
    );

    // The user, the config directory, the conffile, what is enabled.
    let passwd = stdout(&run(&mut chroot(&root, &["getent", "passwd", "ringseal"])));
    let uid = passwd.split(':').nth(2).unwrap().to_owned();
    assert!(
        passwd.trim_end().ends_with(":/usr/sbin/nologin"),
        "{passwd}"
    );
    let group = stdout(&run(&mut chroot(
        &root,
        &["stat", "-c", "%a %U %G", "/etc/ringseal"],
    )));
    assert_eq!(group.trim(), "750 root ringseal");
    assert_eq!(
        std::fs::read(root.join("etc/ringseal/ringseal.toml")).unwrap(),
        std::fs::read(repo().join("config/ringseal.toml")).unwrap()
    );
    let wants = root.join("etc/systemd/system/multi-user.target.wants/ringseal.service");
    assert!(
        wants.symlink_metadata().is_ok(),
        "ringseal.service is enabled"
    );
    let requires = root.join("etc/systemd/system/cassandra.service.requires");
    assert!(
        !requires.exists(),
        "ringseal-rules.service is not enabled by the package"
    );

    // An upgrade (here: the same version again) keeps an administrator's `disable`.
    run(&mut chroot(
        &root,
        &["systemctl", "disable", "ringseal.service"],
    ));
    run(&mut chroot(&root, &["dpkg", "-i", "/tmp/ringseal.deb"]));
    assert!(
        wants.symlink_metadata().is_err(),
        "the upgrade re-enabled ringseal.service"
    );
    run(&mut chroot(
        &root,
        &["systemctl", "enable", "ringseal.service"],
    ));

    // systemd's own checks, with the installed binary and files.
    let units = [
        "/usr/lib/systemd/system/ringseal.service",
        "/usr/lib/systemd/system/ringseal-rules.service",
    ];
    let verify = run(&mut chroot(
        &root,
        &["systemd-analyze", "verify", units[0], units[1]],
    ));
    let noise = String::from_utf8_lossy(&verify.stderr);
    assert!(noise.trim().is_empty(), "systemd-analyze verify: {noise}");
    let security = run(&mut chroot(
        &root,
        &["systemd-analyze", "security", "--offline=yes", units[0]],
    ));
    let report = stdout(&security);
    let exposure: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for ringseal.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    eprintln!("systemd-analyze security --offline=yes ringseal.service: {exposure}");
    assert!(exposure <= MAX_EXPOSURE, "exposure {exposure}:\n{report}");

    // systemd < 253 (Debian 12) gets a drop-in making the unit Type=notify with an ExecReload; this
    // root's systemd is newer, so it has none. The postinst again with a systemctl that says 252 links
    // it, systemd verifies the unit with it, and the real systemctl takes the link away again.
    let dropin = root.join("etc/systemd/system/ringseal.service.d/systemd-252.conf");
    assert!(
        dropin.symlink_metadata().is_err(),
        "no drop-in on systemd 257"
    );
    std::fs::create_dir(root.join("tmp/systemd-252")).unwrap();
    let fake = root.join("tmp/systemd-252/systemctl");
    std::fs::write(&fake, "#!/bin/sh\necho 'systemd 252 (252.38-1~deb12u1)'\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let postinst = "/var/lib/dpkg/info/ringseal.postinst";
    run(chroot(&root, &[postinst, "configure", ""])
        .env("PATH", "/tmp/systemd-252:/usr/sbin:/usr/bin:/sbin:/bin"));
    assert_eq!(
        std::fs::read_link(&dropin).unwrap(),
        Path::new("/usr/share/ringseal/systemd-252/notify.conf")
    );
    let verify = run(&mut chroot(&root, &["systemd-analyze", "verify", units[0]]));
    let noise = String::from_utf8_lossy(&verify.stderr);
    assert!(noise.trim().is_empty(), "with the drop-in: {noise}");
    run(&mut chroot(&root, &[postinst, "configure", ""]));
    assert!(
        dropin.symlink_metadata().is_err(),
        "the link stays on systemd 257"
    );

    // The rules unit's command in the root: the shipped config has no transparent listener (so the
    // unit would fail, loudly); a transparent one whose key files do not exist gets its rules, with
    // the packaged user's uid exempt.
    let shipped = chroot(
        &root,
        &[
            "ringseal",
            "rules",
            "--config",
            "/etc/ringseal/ringseal.toml",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(shipped.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&shipped.stderr).contains("transparent = true"));
    std::fs::write(
        root.join("tmp/transparent.toml"),
        "[tls]\ncert = \"/nonexistent/node.crt\"\nkey = \"/nonexistent/node.key\"\n\
         ca = \"/nonexistent/ca.crt\"\n\n[[inbound]]\nlisten = \"0.0.0.0:7001\"\n\
         forward = \"127.0.0.1:7000\"\n\n[[outbound]]\nlisten = \"127.0.0.1:7002\"\ntransparent = true\n",
    )
    .unwrap();
    let rules = stdout(&run(&mut chroot(
        &root,
        &["ringseal", "rules", "--config", "/tmp/transparent.toml"],
    )));
    assert!(
        rules.contains(&format!("meta skuid {uid} return")),
        "{rules}"
    );

    // Remove keeps the conffile; purge takes it and the unit state away.
    run(&mut chroot(&root, &["dpkg", "-r", "ringseal"]));
    assert!(!root.join("usr/bin/ringseal").exists());
    assert!(root.join("etc/ringseal/ringseal.toml").exists());
    run(&mut chroot(&root, &["dpkg", "-P", "ringseal"]));
    assert!(!root.join("etc/ringseal/ringseal.toml").exists());
    assert!(
        wants.symlink_metadata().is_err(),
        "purge left {}",
        wants.display()
    );
}
