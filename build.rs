//! Build script of the `miqat` binary: records the git revision it is built from for
//! `miqat --version` (`unknown` when building outside a git checkout, e.g. from a source
//! archive or in a container build without `.git`).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn main() {
    let revision = std::env::var("MIQAT_GIT_REVISION")
        .ok()
        .filter(|r| !r.trim().is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=MIQAT_GIT_REVISION={revision}");
    println!("cargo:rerun-if-env-changed=MIQAT_GIT_REVISION");
    // Rebuild when HEAD moves (a commit, a checkout, a reset).
    for path in ["HEAD", "logs/HEAD"] {
        if let Some(file) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={file}");
        }
    }
}
