//! TLS on every connection, with real processes: a cluster as `flotilla up` runs it (its own
//! CA, masters and workers knowing each other by certificate, clients by the admin token).

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use common::*;
use flotilla_proto::api::JobState;

/// Runs the CLI with the cluster's settings (FLOTILLA_MASTERS, FLOTILLA_CERTS) and `extra`.
fn cli_in(t: &TestCluster, args: &[&str], extra: &[(&str, &str)]) -> (i32, String, String) {
    let mut env = t.cluster.client_env();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    cli_with(&env, args)
}

fn log_of(t: &TestCluster, name: &str) -> String {
    std::fs::read_to_string(t.dir.path().join("logs").join(format!("{name}.log"))).unwrap_or_default()
}

/// A worker outside the harness, with these certificates (or none: plain text) and token; its
/// stderr is kept for [`stop_and_read`].
fn spawn_worker(t: &TestCluster, name: &str, certs: Option<&std::path::Path>, token: Option<&str>) -> Child {
    let mut command = std::process::Command::new(EXE);
    command
        .args(["worker", "--masters", &t.cluster.master_list(), "--cpus", "1", "--name", name])
        .arg("--data-dir")
        .arg(t.dir.path().join(format!("w-{name}")))
        .env_remove("FLOTILLA_CERTS")
        .env_remove("FLOTILLA_TOKEN")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    if let Some(certs) = certs {
        command.arg("--certs").arg(certs);
    }
    if let Some(token) = token {
        command.env("FLOTILLA_TOKEN", token);
    }
    command.spawn().expect("start a worker")
}

/// Reads what a worker of [`spawn_worker`] writes to stderr until it has written `text` (or a
/// minute passed), then kills it and returns all of it.
fn read_until(mut child: Child, text: &str) -> String {
    use std::io::Read;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    if let Some(mut err) = child.stderr.take() {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap_or_else(|p| p.into_inner()).push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline && !seen.lock().unwrap_or_else(|p| p.into_inner()).contains(text) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let out = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    out
}

/// Kills a worker of [`spawn_worker`] and returns what it wrote to stderr.
fn stop_and_read(mut child: Child) -> String {
    use std::io::Read;
    let _ = child.kill();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let _ = child.wait();
    err
}

/// Invariants: over TLS a job runs with every task recorded once, the CLI needs nothing but
/// FLOTILLA_CERTS; plain text is refused with a message that says what to do; a request
/// without a token gets 401 even on loopback; a worker certificate opens a worker session and
/// nothing else; a worker of another CA, or one speaking plain text, never joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_everywhere_admits_the_cluster_and_refuses_everyone_else() {
    let t = secure_cluster(3, &[("a", 2), ("b", 2)]).await;
    let client = t.client();
    let job = client.submit(&squares_job(12, "0")).await.expect("submit over TLS").id;
    assert_eq!(wait_job(&t, &client, job, LONG).await.state, JobState::Succeeded);
    let rows = client.results(job, 0, None, false).await.expect("results");
    assert_each_task_recorded_once(&rows, 12, |i| (i * i).to_string());

    // A master joins the running group over TLS (it asks through the API with its certificate).
    let mut t = t;
    t.cluster.join_master(4, &[1]).expect("start master 4");
    wait_until(&t, "master 4 joined over TLS and votes", LONG, || async {
        client
            .members()
            .await
            .is_ok_and(|m| m.iter().any(|m| m.id == 4 && m.role == flotilla_proto::api::MemberRole::Voter))
    })
    .await;

    let (code, out, err) = cli_in(&t, &["status", "--json"], &[]);
    assert_eq!(code, 0, "the CLI with FLOTILLA_CERTS alone: {err}");
    assert!(out.contains("\"leader\""), "{out}");

    // Plain text, on loopback: a 400 that names the way out, and nothing served.
    let address = t.cluster.address(1);
    let (status, body) = raw_http(&address, "GET", "/v1/status", &[], b"");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("TLS only") && body.contains("--certs"), "{body}");
    // TLS without a token, and with a wrong one.
    let certs = t.cluster.certs.clone().expect("certs");
    let bare = flotilla_tls::Identity::load(&certs, flotilla_tls::Role::Client).expect("identity");
    let anonymous = flotilla_client::Client::with_identity(vec![address.clone()], None, Some(bare.clone())).expect("c");
    match anonymous.status(true).await {
        Err(flotilla_client::ClientError::Api { status: 401, .. }) => {}
        other => panic!("no token over TLS: {other:?}"),
    }
    // Health checks carry no token: a master's view of itself answers them, and only that.
    let node = anonymous.node(&address).await.expect("GET /v1/node without a token (a health probe)");
    assert_eq!(node.id, 1);
    let (code, _, err) = cli_in(&t, &["status"], &[("FLOTILLA_TOKEN", "wrong")]);
    assert_ne!(code, 0);
    assert!(err.contains("token"), "{err}");
    // A worker's certificate is not an API credential.
    let worker_id = flotilla_tls::Identity::load(&certs, flotilla_tls::Role::Worker).expect("identity");
    let as_worker = flotilla_client::Client::with_identity(vec![address.clone()], None, Some(worker_id)).expect("c");
    match as_worker.status(true).await {
        Err(flotilla_client::ClientError::Api { status: 401, .. }) => {}
        other => panic!("a worker certificate reached the API: {other:?}"),
    }

    // A worker with another cluster's certificates, and one speaking plain text.
    let other = tempfile::tempdir().expect("tempdir");
    flotilla_tls::authority::init(other.path(), &[]).expect("another CA");
    let stranger = spawn_worker(&t, "stranger", Some(other.path()), None);
    let plain = spawn_worker(&t, "plain", None, None);
    // Both keep trying; give them a few rounds, then check that neither ever registered.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        let names: Vec<String> = client.workers(false).await.expect("workers").into_iter().map(|w| w.name).collect();
        assert!(!names.iter().any(|n| n == "plain" || n == "stranger"), "a foreign worker joined: {names:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let err = stop_and_read(stranger);
    assert!(err.contains("TLS") || err.contains("certificate"), "the stranger was not told why: {err}");
    let plain_err = stop_and_read(plain);
    assert!(
        plain_err.contains("accepts TLS only") && plain_err.contains("--certs"),
        "the plain worker was not told why: {plain_err}"
    );
    let masters_log = (1..=3).map(|id| log_of(&t, &format!("master-{id}"))).collect::<String>();
    assert!(masters_log.contains("refused a plain-text connection"), "no master logged the plain-text refusal");
}

/// Invariant: certificates renewed while a job runs are used from the next connection on,
/// with no restart: every member reloads them, a failover afterwards goes through (the new
/// leader reaches its peers with the new certificates) and every task is recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_without_a_restart() {
    let mut t = secure_cluster(3, &[("a", 2), ("b", 2)]).await;
    let client = t.client();
    let job = client.submit(&squares_job(40, "0.2")).await.expect("submit").id;
    let certs = t.cluster.certs.clone().expect("certs").display().to_string();
    for role in ["master", "worker", "client"] {
        let (code, _, err) = cli_in(&t, &["certs", "issue", "--dir", &certs, "--role", role], &[]);
        assert_eq!(code, 0, "certs issue --role {role}: {err}");
    }
    wait_until(&t, "every master reloaded its certificate", LONG, || async {
        (1..=3).all(|id| log_of(&t, &format!("master-{id}")).contains("certificates reloaded"))
    })
    .await;
    wait_until(&t, "every worker reloaded its certificate", LONG, || async {
        ["a", "b"].iter().all(|w| log_of(&t, &format!("worker-{w}")).contains("certificates reloaded"))
    })
    .await;
    // The leader dies: the others elect one over connections made with the new certificates,
    // and the workers re-attach to it with theirs.
    let leader = t.cluster.wait_leader(LONG).await.expect("leader");
    t.cluster.kill_master(leader);
    assert_eq!(wait_job(&t, &client, job, LONG).await.state, JobState::Succeeded);
    let rows = client.results(job, 0, None, false).await.expect("results");
    assert_each_task_recorded_once(&rows, 40, |i| (i * i).to_string());
    let (code, _, err) = cli_in(&t, &["status"], &[]);
    assert_eq!(code, 0, "{err}");
}

/// Invariants: a task's environment holds no credential of its worker (no `FLOTILLA_TOKEN*`,
/// no `FLOTILLA_CERTS`, not the token's value under another name); it runs in a directory of
/// its own, removed when it ends; with `--run-as nobody` it runs as nobody and cannot read the
/// worker's `/proc` entries, its key or its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_never_see_the_workers_credentials() {
    let t = secure_cluster(1, &[]).await;
    let client = t.client();
    let certs = t.cluster.certs.clone().expect("certs");
    let data = t.dir.path().join("w-sandboxed");
    let secret = "the-workers-own-s3cret-token";
    let mut worker = std::process::Command::new(EXE)
        .args(["worker", "--masters", &t.cluster.master_list(), "--cpus", "1", "--name", "sandboxed"])
        .args(["--labels", "sandbox=yes", "--run-as", "nobody"])
        .arg("--data-dir")
        .arg(&data)
        .arg("--certs")
        .arg(&certs)
        .env("FLOTILLA_TOKEN", secret)
        .env("COPY_OF_IT", format!("x{secret}x"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the worker");
    let key = certs.join("worker.key").display().to_string();
    let script = format!(
        "env; echo PWD=$(pwd); echo UID=$(id -u); \
         cat /proc/$PPID/environ >/dev/null 2>&1 && echo READ-ENVIRON; \
         cat {key} >/dev/null 2>&1 && echo READ-KEY; \
         ls {} >/dev/null 2>&1 && echo LISTED-DATA; true",
        data.display()
    );
    let job = client
        .submit(&flotilla_proto::api::SubmitRequest {
            command: vec!["sh".into(), "-c".into(), script],
            selector: [("sandbox".to_string(), "yes".to_string())].into(),
            ..Default::default()
        })
        .await
        .expect("submit")
        .id;
    let detail = wait_job(&t, &client, job, LONG).await;
    let rows = client.results(job, 0, None, false).await.expect("results");
    let out = rows.first().map(|r| format!("{}{}", r.stdout, r.stderr)).unwrap_or_default();
    let _ = worker.kill();
    let _ = worker.wait();
    assert_eq!(detail.state, JobState::Succeeded, "{out}");
    assert!(!out.contains("FLOTILLA_TOKEN") && !out.contains("FLOTILLA_CERTS"), "{out}");
    assert!(!out.contains(secret), "the token reached the task under another name:\n{out}");
    let nobody = out.lines().find_map(|l| l.strip_prefix("UID=")).unwrap_or_default().to_string();
    assert!(!nobody.is_empty() && nobody != "0", "the task ran as uid {nobody:?}\n{out}");
    let pwd = out.lines().find_map(|l| l.strip_prefix("PWD=")).unwrap_or_default().to_string();
    assert!(pwd.starts_with(&data.join("tasks").display().to_string()), "task directory {pwd}");
    for forbidden in ["READ-ENVIRON", "READ-KEY", "LISTED-DATA"] {
        assert!(!out.contains(forbidden), "{forbidden}:\n{out}");
    }
    assert!(!std::path::Path::new(&pwd).exists(), "the task's directory {pwd} outlived it");
}

/// The status a call answered with: 200 or the API error's.
fn code_of<T>(answer: Result<T, flotilla_client::ClientError>) -> (u16, String) {
    match answer {
        Ok(_) => (200, String::new()),
        Err(flotilla_client::ClientError::Api { status, error }) => (status, error.error),
        Err(other) => (0, other.to_string()),
    }
}

/// Invariants: each role may do exactly what the README's table says and is refused the rest
/// with 403 and the role needed; an unknown token gets 401; a `submit` token cancels its own
/// jobs only; a worker token holds a worker session and reads nothing; the last admin
/// credential cannot be revoked; a revoked token (the bootstrap one included) is refused at
/// once; and all of it survives the leader's death (it is replicated state).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_is_allowed_and_refused_exactly_as_documented() {
    let mut t = secure_cluster(3, &[("a", 2)]).await;
    let certs = t.cluster.certs.clone().expect("certs");
    let client_id = flotilla_tls::Identity::load(&certs, flotilla_tls::Role::Client).expect("identity");
    let masters: Vec<String> = (1..=3).map(|id| t.cluster.address(id)).collect();
    let as_token = |token: &str| {
        flotilla_client::Client::with_identity(masters.clone(), Some(token), Some(client_id.clone()))
            .expect("client")
            .with_retry_for(Duration::from_secs(60))
    };
    // The CLI prints the new token alone on stdout.
    let mut tokens = std::collections::BTreeMap::new();
    for (name, role) in [("ops", "operator"), ("ci", "submit"), ("ci2", "submit"), ("viewer", "read"), ("wk", "worker")]
    {
        let (code, out, err) = cli_in(&t, &["token", "create", "--role", role, "--name", name], &[]);
        assert_eq!(code, 0, "token create {name}: {err}");
        let token = out.trim().to_string();
        assert!(token.len() >= 32 && !token.contains(char::is_whitespace), "not a token alone: {out:?}");
        tokens.insert(name, as_token(&token));
    }
    let (code, _, err) = cli_in(&t, &["token", "create", "--role", "read", "--name", "viewer"], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("exists already"), "{err}");
    let (code, _, err) = cli_in(&t, &["token", "create", "--role", "boss", "--name", "x"], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("admin, operator, submit, read, worker"), "{err}");

    let (ops, ci, ci2, viewer, wk) = (&tokens["ops"], &tokens["ci"], &tokens["ci2"], &tokens["viewer"], &tokens["wk"]);
    let job = |n| squares_job(n, "30");
    // read: reads, and nothing else.
    assert_eq!(code_of(viewer.status(false).await).0, 200);
    assert_eq!(code_of(viewer.jobs(false).await).0, 200);
    let (code, why) = code_of(viewer.submit(&job(1)).await);
    assert_eq!(code, 403, "{why}");
    assert!(why.contains("token 'viewer' has role read") && why.contains("role submit or higher"), "{why}");
    assert_eq!(code_of(viewer.tokens().await).0, 403);
    // submit: submits, cancels its own jobs only.
    let mine = ci.submit(&job(2)).await.expect("ci submits").id;
    let theirs = ci2.submit(&job(2)).await.expect("ci2 submits").id;
    assert_eq!(code_of(ci.cancel(mine).await).0, 200);
    let (code, why) = code_of(ci.cancel(theirs).await);
    assert_eq!(code, 403, "{why}");
    assert!(why.contains("only its own jobs") && why.contains("token 'ci2'"), "{why}");
    let (code, why) = code_of(ci.maintain_worker("a", "cordon", None).await);
    assert_eq!(code, 403, "{why}");
    assert!(why.contains("role operator or higher"), "{why}");
    let (code, why) = code_of(ci.create_token("more", flotilla_proto::api::TokenRole::Admin).await);
    assert_eq!(code, 403, "{why}");
    assert!(why.contains("the admin role"), "{why}");
    // operator: maintenance and any job, not tokens or masters.
    assert_eq!(code_of(ops.cancel(theirs).await).0, 200);
    assert_eq!(code_of(ops.maintain_worker("a", "cordon", None).await).0, 200);
    assert_eq!(code_of(ops.maintain_worker("a", "uncordon", None).await).0, 200);
    assert_eq!(code_of(ops.tokens().await).0, 403);
    assert_eq!(code_of(ops.remove_master(3).await).0, 403);
    // worker: no API at all, but a worker session.
    let (code, why) = code_of(wk.status(false).await);
    assert_eq!(code, 403, "{why}");
    assert!(why.contains("token 'wk' has role worker"), "{why}");
    // A worker whose certificate is a client's: only its token makes it a worker.
    let tokened = t.dir.path().join("certs-of-a-tokened-worker");
    std::fs::create_dir_all(&tokened).expect("dir");
    std::fs::copy(certs.join("ca.pem"), tokened.join("ca.pem")).expect("ca");
    std::fs::copy(certs.join("client.pem"), tokened.join("worker.pem")).expect("cert");
    std::fs::copy(certs.join("client.key"), tokened.join("worker.key")).expect("key");
    let new_token = |name: &str, role: &str| {
        let (code, out, err) = cli_in(&t, &["token", "create", "--role", role, "--name", name], &[]);
        assert_eq!(code, 0, "{err}");
        out.trim().to_string()
    };
    let by_token = spawn_worker(&t, "by-token", Some(&tokened), Some(&new_token("wk2", "worker")));
    let by_reader = spawn_worker(&t, "by-reader", Some(&tokened), Some(&new_token("viewer2", "read")));
    wait_until(&t, "the worker with a worker token joined", LONG, || async {
        ops.workers(false).await.is_ok_and(|ws| ws.iter().any(|w| w.name == "by-token"))
    })
    .await;
    let names: Vec<String> = ops.workers(false).await.expect("workers").into_iter().map(|w| w.name).collect();
    assert!(!names.iter().any(|n| n == "by-reader"), "a read token held a worker session: {names:?}");
    stop_and_read(by_token);
    // Killed only once it has been refused (killing it at once could come before that).
    let err = read_until(by_reader, "has role read");
    assert!(err.contains("has role read"), "the worker with a read token was not told why: {err}");

    // Unknown tokens: 401.
    let (code, why) = code_of(as_token("not-a-token-of-this-cluster").status(false).await);
    assert_eq!(code, 401, "{why}");

    // The last admin stays; the bootstrap token goes once another admin exists.
    let (code, _, err) = cli_in(&t, &["token", "revoke", "bootstrap"], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("no admin credential"), "{err}");
    let (code, out, err) = cli_in(&t, &["token", "create", "--role", "admin", "--name", "alice"], &[]);
    assert_eq!(code, 0, "{err}");
    let alice_token = out.trim().to_string();
    let alice = as_token(&alice_token);
    let (code, _, err) = cli_in(&t, &["token", "revoke", "viewer"], &[]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli_in(&t, &["token", "revoke", "bootstrap"], &[]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli_in(&t, &["status"], &[]);
    assert_ne!(code, 0, "the revoked bootstrap token still works");
    assert!(err.contains("revoked"), "{err}");
    assert_eq!(code_of(viewer.status(false).await).0, 401);
    let (code, _, err) = cli_in(&t, &["token", "revoke", "alice"], &[("FLOTILLA_TOKEN", &alice_token)]);
    assert_ne!(code, 0);
    assert!(err.contains("no admin credential"), "{err}");

    // Replicated: the next leader knows all of it.
    // (The harness's own calls use the revoked admin.token: ask as alice.)
    let leader = alice.status(false).await.expect("status as alice").leader.expect("a leader");
    t.cluster.kill_master(leader);
    let listed = alice.tokens().await.expect("alice lists the tokens after the failover");
    let names: Vec<&str> = listed.iter().map(|v| v.name.as_str()).collect();
    assert!(names.contains(&"ci") && names.contains(&"alice"), "{names:?}");
    assert!(!names.contains(&"viewer") && !names.contains(&"bootstrap"), "{names:?}");
    assert_eq!(code_of(viewer.status(false).await).0, 401);
    assert_eq!(code_of(ci.status(false).await).0, 200);
    let (code, out, err) = cli_in(&t, &["token", "list", "--json"], &[("FLOTILLA_TOKEN", &alice_token)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"role\": \"submit\"") || out.contains("\"role\":\"submit\""), "{out}");

    // Audit: every mutating request, allowed or refused for its role, with who and from where;
    // replicated (read after the failover), and in the incident report.
    let alice_env = [("FLOTILLA_TOKEN", alice_token.as_str())];
    let mut audit = Vec::new();
    wait_until(&t, "the audit journal holds the operator's cordon and the viewer's refusal", LONG, || {
        let (code, out, _) = cli_in(&t, &["events", "--kind", "audit", "--json"], &alice_env);
        audit = out.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).collect();
        let has = |who: &str, request: &str, status: u64| {
            audit.iter().any(|e| e["who"] == who && e["request"] == request && e["status"] == status)
        };
        let ok = code == 0
            && has("ops", "POST /v1/workers/a/cordon", 200)
            && has("viewer", "POST /v1/jobs", 403)
            && has("ci", &format!("POST /v1/jobs/{theirs}/cancel"), 403)
            && has("bootstrap", "DELETE /v1/tokens/bootstrap", 200);
        async move { ok }
    })
    .await;
    assert!(audit.iter().all(|e| e["kind"] == "audit"), "{audit:?}");
    let cordon =
        audit.iter().find(|e| e["who"] == "ops" && e["request"] == "POST /v1/workers/a/cordon").expect("cordon");
    assert_eq!(cordon["role"], "operator");
    assert!(cordon["from"].as_str().is_some_and(|f| f.starts_with("127.0.0.1:")), "{cordon}");
    let (code, report, err) = cli_in(&t, &["incident", "report", "--since", "1h"], &alice_env);
    assert_eq!(code, 0, "{err}");
    assert!(report.contains("## What operators did") && report.contains("POST /v1/workers/a/cordon"), "{report}");
    let (code, _, err) = cli_in(&t, &["events", "--kind", "nonsense"], &alice_env);
    assert_ne!(code, 0);
    assert!(err.contains("not an event kind"), "{err}");
}
