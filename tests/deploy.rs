//! The Kubernetes manifests in `deploy/kubernetes/`: valid against the Kubernetes schemas
//! (`kubernetes-validate`, strict: no unknown field), and every flag their containers pass to
//! `flotilla master` or `flotilla worker` is one this build's CLI has. No API server runs on
//! the build machine, so the manifests are validated, not applied (see the README).

mod common;

use std::path::PathBuf;
use std::process::Command;

fn manifests() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "no manifests in {}", dir.display());
    files
}

#[test]
fn the_kubernetes_manifests_pass_the_schemas() {
    let probe = Command::new("python3").args(["-c", "import kubernetes_validate"]).status();
    assert!(
        probe.is_ok_and(|s| s.success()),
        "the Python package kubernetes-validate is missing (scripts/test installs it)"
    );
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--kubernetes-version", "1.31.0"])
        .args(manifests())
        .output()
        .expect("run kubernetes-validate");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the manifests fail the Kubernetes 1.31 schemas:\n{text}");
    for kind in ["statefulset/flotilla-master", "statefulset/flotilla-worker", "poddisruptionbudget/flotilla-master"] {
        assert!(text.contains(&format!("passed for resource {kind}")), "{kind} not validated:\n{text}");
    }
}

#[test]
fn the_manifests_pass_only_flags_the_cli_has() {
    for file in manifests() {
        let text = std::fs::read_to_string(&file).expect("manifest");
        for role in ["master", "worker"] {
            let Some(start) = text.find(&format!("exec flotilla {role}")) else { continue };
            // The folded command runs to the next YAML key.
            let command: String = text[start..].lines().take_while(|l| !l.trim_start().starts_with("env:")).collect();
            let help = Command::new(common::EXE).args([role, "--help"]).output().expect("flotilla --help");
            let help = String::from_utf8_lossy(&help.stdout);
            for flag in command.split_whitespace().filter(|w| w.starts_with("--")) {
                assert!(
                    help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                    "{}: `flotilla {role}` has no {flag}",
                    file.display()
                );
            }
        }
    }
}
