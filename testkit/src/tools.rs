//! The external tools tests and benches drive (openssl, keytool, HAProxy...): found or skipped (never
//! skipped in CI), run with no standard input (keytool prompts otherwise), failing loudly with their
//! output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Whether every tool is installed. Outside CI a missing one skips the test, saying why; under CI
/// (`CI` set) it fails it, because CI installs them.
pub fn have(tools: &[&str]) -> bool {
    for tool in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            assert!(std::env::var_os("CI").is_none(), "{tool} is required in CI");
            eprintln!("skipping: {tool} is not installed");
            return false;
        }
    }
    true
}

/// Runs `program` in `dir`, asserting success.
pub fn run(dir: &Path, program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a shell script (`sh -ec`) in `dir`, asserting success.
pub fn sh(dir: &Path, script: &str) -> Output {
    run(dir, "sh", &["-ec", script])
}

/// A binary on PATH, or in the sbin directories a non-root PATH may lack (haproxy, nginx live there).
pub fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}
