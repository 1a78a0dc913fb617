//! The CLI's conventions: shell completions and man pages generated from the clap
//! definitions, `--json` on every command that prints something, `--version` with the git
//! commit, the documented exit codes, a progress bar on a terminal and plain lines elsewhere,
//! and `--log-format json` on masters and workers.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use clap::CommandFactory;
use common::{cli, cluster, EXE, LONG};

/// Invariant: the definitions are consistent (clap's debug asserts over the whole tree: no
/// two arguments of a command share a name), which parsing alone checks for one path only.
#[test]
fn the_command_tree_is_consistent() {
    flotilla::cli::Cli::command().debug_assert();
}

/// Every leaf command that prints something takes --json. Exempt: the two that run a
/// master or a worker (they log; `--log-format json`) and `completions` (prints a script).
#[test]
fn every_command_that_prints_has_json() {
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        let subs: Vec<&clap::Command> = cmd.get_subcommands().filter(|s| s.get_name() != "help").collect();
        let runs_something = cmd.get_arguments().any(|a| a.get_id() != "help" && a.get_id() != "version");
        if subs.is_empty() || (runs_something && !path.is_empty()) {
            let exempt = ["flotilla master", "flotilla worker", "flotilla completions"];
            if !exempt.contains(&path) && !cmd.get_arguments().any(|a| a.get_id() == "json") {
                missing.push(path.to_string());
            }
        }
        for s in subs {
            walk(s, format!("{path} {}", s.get_name()).trim(), missing);
        }
    }
    let mut missing = Vec::new();
    let root = flotilla::cli::Cli::command();
    for s in root.get_subcommands().filter(|s| s.get_name() != "help") {
        walk(s, &format!("flotilla {}", s.get_name()), &mut missing);
    }
    assert!(missing.is_empty(), "commands without --json: {missing:?}");
}

#[test]
fn completions_are_generated_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(EXE).args(["completions", shell]).output().expect("run");
        assert!(out.status.success(), "{shell}: {}", String::from_utf8_lossy(&out.stderr));
        let script = String::from_utf8_lossy(&out.stdout);
        for word in ["submit", "autoscale", "transfer-leadership", "--masters"] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
    }
    // The bash script is valid bash.
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("flotilla.bash");
    let out = Command::new(EXE).args(["completions", "bash"]).output().expect("run");
    std::fs::write(&file, &out.stdout).expect("write");
    let check = Command::new("bash").arg("-n").arg(&file).status().expect("bash -n");
    assert!(check.success(), "bash -n rejects the completion script");
    // An unknown shell is a usage error (2).
    let bad = Command::new(EXE).args(["completions", "tcsh"]).output().expect("run");
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn man_pages_are_generated_for_every_command() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = Command::new(EXE).args(["man", "--json", "--dir"]).arg(dir.path()).output().expect("run flotilla man");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pages: Vec<String> = serde_json::from_slice(&out.stdout).expect("a JSON array of pages");
    for page in ["flotilla.1", "flotilla-master.1", "flotilla-worker.1", "flotilla-submit.1", "flotilla-job-wait.1"] {
        assert!(pages.iter().any(|p| p == page), "no {page} among {pages:?}");
    }
    // One page per command of the tree.
    fn count(cmd: &clap::Command) -> usize {
        1 + cmd.get_subcommands().filter(|s| s.get_name() != "help").map(count).sum::<usize>()
    }
    assert_eq!(pages.len(), count(&flotilla::cli::Cli::command()));
    // `man` renders one.
    let page = dir.path().join("flotilla-job-wait.1");
    let shown = Command::new("man").arg("-l").arg(&page).env("MANPAGER", "cat").env("MANWIDTH", "100").output();
    let shown =
        shown.unwrap_or_else(|e| panic!("man is missing ({e}): Debian package man-db (scripts/test installs it)"));
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.status.success() && text.contains("flotilla job wait"), "{text}");
}

#[test]
fn version_names_the_commit_and_help_the_exit_codes() {
    let out = Command::new(EXE).arg("--version").output().expect("run");
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(version.starts_with(&format!("flotilla {} (commit ", env!("CARGO_PKG_VERSION"))), "{version}");
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if let Some(head) = head {
        assert!(version.contains(&head), "{version} does not name HEAD {head}");
    }
    let help = Command::new(EXE).arg("--help").output().expect("run");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("Exit status: 0 success; 1") && help.contains("2 a usage error"), "{help}");
    // 2: usage. 1: an error (no master answers).
    let usage = Command::new(EXE).args(["status", "--no-such-flag"]).output().expect("run");
    assert_eq!(usage.status.code(), Some(2));
    let (code, _, err) = cli("127.0.0.1:1", &["status", "--retry-for", "200ms"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
}

/// `--log-format json`: every line a master or worker logs is one JSON object with a level.
#[test]
fn masters_and_workers_log_json_lines_when_asked() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let address = format!("127.0.0.1:{port}");
    let master = Command::new(EXE)
        .args(["master", "--id", "1", "--listen", &address, "--insecure-plaintext", "--log-format", "json"])
        .args(["--peers", &format!("1={address}"), "--data-dir"])
        .arg(dir.path().join("m1"))
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start master");
    let worker = Command::new(EXE)
        .args(["worker", "--masters", &address, "--cpus", "1", "--name", "w"])
        .arg("--data-dir")
        .arg(dir.path().join("w"))
        .env("FLOTILLA_LOG_FORMAT", "json")
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start worker");
    for (role, mut child) in [("master", master), ("worker", worker)] {
        let lines = BufReader::new(child.stderr.take().expect("stderr"));
        let deadline = Instant::now() + LONG;
        let mut seen = 0;
        for line in lines.lines() {
            let line = line.expect("a log line");
            let value: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("{role} logged a line that is not JSON ({e}): {line}"));
            assert!(value["level"].is_string() && value["timestamp"].is_string(), "{role}: {line}");
            seen += 1;
            if seen >= 2 || Instant::now() > deadline {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(seen >= 2, "{role} logged {seen} lines");
    }
}

/// The client commands' JSON, and the progress display: a bar on a terminal (under
/// `script`, which gives the command a pseudo-terminal), plain lines into a pipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_and_progress_on_a_real_cluster() {
    let t = cluster(1, &[("a", 2)], &[]).await;
    let masters = t.cluster.master_list();
    let (code, out, err) = cli(&masters, &["submit", "--json", "--array", "1-4", "--", "echo", "hi"]);
    assert_eq!(code, 0, "{err}");
    let id = serde_json::from_str::<serde_json::Value>(&out).expect("submit --json")["id"].as_u64().expect("id");
    let (code, out, err) = cli(&masters, &["job", "wait", &id.to_string(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let detail: serde_json::Value = serde_json::from_str(&out).expect("job wait --json");
    assert_eq!(detail["state"], "succeeded");
    // Into a pipe: plain lines, the last one final.
    assert!(err.lines().last().is_some_and(|l| l.contains("succeeded") && l.contains("4/4 done")), "{err}");
    let (code, out, _) = cli(&masters, &["job", "result", &id.to_string(), "--json"]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).expect("result --json")["result"], "hi\nhi\nhi\nhi\n");
    let (code, out, _) = cli(&masters, &["job", "logs", &id.to_string(), "--task", "2", "--json"]);
    assert_eq!(code, 0);
    let piece: serde_json::Value = serde_json::from_str(out.lines().next().unwrap_or_default()).expect("logs --json");
    assert_eq!((piece["task"].as_str(), piece["text"].as_str()), (Some("2"), Some("hi\n")));
    let (code, out, err) = cli(&masters, &["submit", "--json", "--wait", "--", "sh", "-c", "exit 3"]);
    assert_eq!(code, 1, "a failed job exits 1: {err}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).expect("submit --wait --json")["state"], "failed");
    let (_, out, _) = cli(&masters, &["submit", "--", "sleep", "60"]);
    let (code, out, _) = cli(&masters, &["job", "cancel", out.trim(), "--json"]);
    assert_eq!(code, 0);
    assert!(serde_json::from_str::<serde_json::Value>(&out).expect("cancel --json")["stopped"].is_u64());
    let (code, out, _) = cli(&masters, &["incident", "report", "--json"]);
    assert_eq!(code, 0);
    assert!(serde_json::from_str::<serde_json::Value>(&out).expect("incident --json")["elections"].is_array());

    // On a terminal: indicatif's bar (its `=` fill and `pos/len`), not the plain lines.
    let (_, out, _) = cli(&masters, &["submit", "--array", "1-6", "--", "sleep", "0.5"]);
    let wait = format!("{EXE} job wait {} --masters {masters}", out.trim());
    let shown = Command::new("script").args(["-qec", &wait, "/dev/null"]).env("TERM", "xterm").output();
    let shown =
        shown.unwrap_or_else(|e| panic!("script is missing ({e}): Debian package bsdutils (scripts/test installs it)"));
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.status.success(), "job wait under a terminal: {text}");
    assert!(text.contains("6/6") && text.contains("==="), "no progress bar in: {text:?}");
    assert!(!text.contains("done ("), "plain lines on a terminal: {text:?}");
}
