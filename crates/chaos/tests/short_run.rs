//! The CI fault run: ten scenarios on real clusters giving every fault kind a turn, with
//! every invariant checked (see the harness's documentation). Needs root and iproute2, like
//! the harness; it fails, rather than skips, where they are missing.

use std::process::Command;

#[test]
fn every_fault_kind_on_real_clusters_keeps_every_invariant() {
    let chaos = std::path::PathBuf::from(env!("CARGO_BIN_EXE_flotilla-chaos"));
    let flotilla = chaos.with_file_name("flotilla");
    assert!(
        flotilla.exists(),
        "{} is missing: run the suite as `cargo test --workspace`, which builds it",
        flotilla.display()
    );
    let out = Command::new(&chaos)
        .args(["--cover-all", "--scenarios", "10", "--seed", "42", "--bin"])
        .arg(&flotilla)
        .output()
        .expect("run flotilla-chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the fault run found violations or could not run:\n{stdout}");
    assert!(stdout.contains("(20 kinds:"), "not every fault kind was exercised:\n{stdout}");
}
