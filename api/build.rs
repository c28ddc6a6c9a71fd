//! Build script: records the git revision the API is built from, for `miqat_build_info`.
//! `MIQAT_GIT_SHA` in the build's environment wins (a build from an archive or a container
//! context without `.git`); otherwise `git rev-parse`, and `unknown` when neither answers.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=MIQAT_GIT_SHA");
    let sha = std::env::var("MIQAT_GIT_SHA")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=MIQAT_GIT_SHA={sha}");
    // Rebuild when HEAD moves: HEAD itself, and the branch file it points to.
    for path in [
        Some("HEAD".to_owned()),
        git(&["symbolic-ref", "-q", "HEAD"]),
    ]
    .into_iter()
    .flatten()
    {
        if let Some(file) = git(&["rev-parse", "--git-path", &path]) {
            println!("cargo:rerun-if-changed={file}");
        }
    }
}
