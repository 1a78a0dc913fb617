//! The live API fuzzed from its own description (`docs/openapi.json`) with schemathesis
//! (PyPI; `scripts/test` installs it), against a real 3-master TLS cluster as `flotilla up`
//! runs one: with the admin token, a token of every other role, an unknown token and none.

mod common;

use std::process::Command;

use common::*;
use flotilla_proto::api::TokenRole;

/// Runs schemathesis against `address` with `token` (none: no header); returns whether it
/// passed and what it printed.
fn schemathesis(t: &TestCluster, address: &str, token: Option<&str>, report: &str) -> (bool, String) {
    let certs = t.cluster.certs.clone().expect("certs");
    let mut command = Command::new("python3");
    command
        .args(["-m", "schemathesis.cli", "run"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"))
        .args(["--url", &format!("https://{address}")])
        .arg("--tls-verify")
        .arg(certs.join("ca.pem"))
        // A 500, an undocumented status, a body that is not the documented JSON: each fails.
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "12", "--workers", "1", "--request-timeout", "60"])
        .args(["--generation-deterministic", "--seed", "7"])
        // Membership changes would add masters at made-up addresses or remove real ones:
        // the membership tests cover them; the fuzzer leaves the group as it is.
        .args(["--exclude-operation-id", "add_master", "--exclude-operation-id", "remove_master"])
        .args(["--report", "junit", "--report-dir", report])
        // Its cache goes into the test's own directory, not the repository.
        .current_dir(t.dir.path())
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_TELEMETRY", "false");
    if let Some(token) = token {
        command.args(["--header", &format!("Authorization: Bearer {token}")]);
    }
    let out = match command.output() {
        Ok(out) => out,
        Err(e) => {
            panic!("cannot run schemathesis ({e}): it needs python3 and `pip install schemathesis` (scripts/test does both checks)")
        }
    };
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Invariants: for every credential (admin, operator, submit, read, an unknown token, none),
/// every operation of `/v1` answers only documented statuses with bodies of the documented
/// JSON shapes (every refusal an `ApiError`), never a server error; no master crashes, and
/// the cluster still has one leader and runs a job afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_api_holds_to_its_description_under_fuzzing_with_every_role() {
    let t = secure_cluster(3, &[("a", 2)]).await;
    let client = t.client();
    let mut credentials: Vec<(&str, Option<String>)> = vec![("admin", t.cluster.token())];
    for (name, role) in [("operator", TokenRole::Operator), ("submit", TokenRole::Submit), ("read", TokenRole::Read)] {
        let created = client.create_token(&format!("fuzz-{name}"), role).await.expect("create a token");
        credentials.push((name, Some(created.token)));
    }
    credentials.push(("unknown", Some("not-a-token-of-this-cluster".to_string())));
    credentials.push(("none", None));

    let reports = t.dir.path().join("schemathesis");
    let mut failures = Vec::new();
    for (i, (name, token)) in credentials.iter().enumerate() {
        // Leader and followers alike: a follower's 421 is documented too.
        let address = t.cluster.address(1 + (i as u64 % 3));
        let (passed, output) = schemathesis(&t, &address, token.as_deref(), &reports.join(name).display().to_string());
        let summary: Vec<&str> = output.lines().rev().take(12).collect();
        eprintln!(
            "schemathesis with the {name} credential against {address}:\n{}",
            summary.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        if !passed {
            failures.push(format!("--- {name} against {address} ---\n{output}"));
        }
    }
    if !failures.is_empty() {
        t.fail(&failures.join("\n"));
    }

    // Nothing crashed: every master is up, one leads, and a job still runs.
    for id in [1, 2, 3] {
        wait_until(&t, &format!("master {id} still answers"), LONG, || async {
            client.node(&t.cluster.address(id)).await.is_ok()
        })
        .await;
    }
    let job = client.submit(&squares_job(4, "0")).await.expect("submit after fuzzing").id;
    let detail = wait_job(&t, &client, job, LONG).await;
    assert_eq!(detail.state, flotilla_proto::api::JobState::Succeeded);
    for id in [1, 2, 3] {
        let log =
            std::fs::read_to_string(t.dir.path().join("logs").join(format!("master-{id}.log"))).unwrap_or_default();
        assert!(!log.contains("panicked"), "master {id} panicked:\n{log}");
    }
}
