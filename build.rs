//! Puts the git commit the binary was built from into `flotilla --version`
//! (`FLOTILLA_COMMIT`, or `git rev-parse`; `unknown` outside a checkout, e.g. a container
//! build without `.git`, unless the build passes FLOTILLA_COMMIT).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// Rebuild when this file changes; a path that does not exist would rebuild every time.
fn watch(path: Option<String>) {
    if let Some(path) = path.filter(|p| std::path::Path::new(p).exists()) {
        println!("cargo:rerun-if-changed={path}");
    }
}

fn main() {
    println!("cargo:rerun-if-env-changed=FLOTILLA_COMMIT");
    let commit = match std::env::var("FLOTILLA_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => {
            // Rebuilt when HEAD moves: HEAD itself, and the branch file it names.
            watch(git(&["rev-parse", "--git-path", "HEAD"]));
            if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
                watch(git(&["rev-parse", "--git-path", &branch]));
                watch(git(&["rev-parse", "--git-path", "packed-refs"]));
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_string())
        }
    };
    println!("cargo:rustc-env=FLOTILLA_COMMIT={commit}");
}
