//! Keeps every benchmark compiling and working: runs `flotilla-bench all --smoke` (tiny
//! sizes, a few seconds each). Its figures mean nothing in a debug build under a loaded test
//! run; the real figures come from the release build (README, "Performance").

use std::process::Command;

#[test]
fn every_benchmark_runs_at_smoke_size() {
    let out = Command::new(env!("CARGO_BIN_EXE_flotilla-bench"))
        .args(["all", "--smoke"])
        .output()
        .expect("run flotilla-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "flotilla-bench all --smoke failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    for name in ["storm", "throughput", "arrays", "failover", "latency", "fleet", "balance", "soak"] {
        assert!(stdout.lines().any(|l| l.starts_with(name)), "no figures from {name}:\n{stdout}");
    }
}
