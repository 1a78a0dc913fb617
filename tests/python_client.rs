//! Runs the Python client's tests (`python/tests`, pytest) against real local clusters of
//! this build's `flotilla` binary: the client submits, waits across a leader SIGKILL, reads
//! results and maps errors to its exceptions; its generated types match docs/openapi.json;
//! `pip install ./python` works in a fresh virtual environment.

use std::process::Command;

#[test]
fn python_client_passes_its_tests_against_a_real_cluster() {
    let root = env!("CARGO_MANIFEST_DIR");
    let has_pytest =
        Command::new("python3").args(["-c", "import pytest"]).status().map(|s| s.success()).unwrap_or(false);
    assert!(has_pytest, "pytest is missing: python3 -m pip install pytest (scripts/test installs it)");
    let out = Command::new("python3")
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "python/tests"])
        .current_dir(root)
        .env("FLOTILLA_BIN", env!("CARGO_BIN_EXE_flotilla"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run python3 -m pytest");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the Python client's tests failed:\n{text}");
    eprintln!("{}", text.lines().last().unwrap_or_default());
}
