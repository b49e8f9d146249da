//! Records the git commit the binary is built from, for `/status` (`build.git_commit`): from
//! `RINGSEAL_GIT_COMMIT` when the build sets it (a source tarball, a container build without `.git`),
//! else from `git` when building in a checkout; absent otherwise.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=RINGSEAL_GIT_COMMIT");
    let commit = std::env::var("RINGSEAL_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            // Run again when HEAD moves: HEAD itself (a checkout), the branch it points to (a commit)
            // and packed-refs. Only files that exist: a missing one would rerun this at every build.
            let refs = ["HEAD".to_owned(), "packed-refs".to_owned()]
                .into_iter()
                .chain(git(&["symbolic-ref", "-q", "HEAD"]));
            for name in refs {
                if let Some(path) =
                    git(&["rev-parse", "--path-format=absolute", "--git-path", &name])
                    && std::path::Path::new(&path).exists()
                {
                    println!("cargo:rerun-if-changed={path}");
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"])
        });
    // Without a checkout nothing above was watched: do not rerun for every file of the package.
    println!("cargo:rerun-if-changed=build.rs");
    if let Some(commit) = commit {
        println!("cargo:rustc-env=RINGSEAL_GIT_COMMIT={commit}");
    }
}
