//! The live web dashboard in a real headless Chromium, driven over WebDriver (chromedriver).
//!
//! Invariants checked: the page served by a follower shows three masters and exactly one
//! leader; a submitted job's progress bar reaches 100 % with no reload; after the leader is
//! SIGKILLed the same page (never reloaded) shows the old leader unreachable and a new leader
//! in a higher term. Screenshots of each step are written to
//! `target/tmp/dashboard-screenshots/` as test artifacts.
//!
//! Chromium and chromedriver come from Debian's `chromium` and `chromium-driver` packages,
//! which `scripts/test` installs when missing; run directly without them, the test fails and
//! names the packages.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client as Browser, ClientBuilder};
use serde_json::{json, Value};

use common::*;
use flotilla_proto::api::SubmitRequest;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Panics, naming the package, if Chromium or its WebDriver server is missing.
fn ensure_chromium() {
    for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
        assert!(
            std::path::Path::new(path).exists(),
            "{path} not found: install Debian's `{package}` package (scripts/test does this)"
        );
    }
}

/// A chromedriver process on a free port, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

async fn start_driver(log: PathBuf) -> Driver {
    let port = free_port();
    let log = std::fs::File::create(log).expect("driver log");
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start chromedriver");
    let driver = Driver { child, port };
    let deadline = Instant::now() + LONG;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen on port {port}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    driver
}

async fn open_browser(driver: &Driver, profile: &std::path::Path) -> Browser {
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,860",
                format!("--user-data-dir={}", profile.display()),
            ]
        }),
    );
    let url = format!("http://127.0.0.1:{}", driver.port);
    let deadline = Instant::now() + LONG;
    loop {
        match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(b) => return b,
            Err(e) if Instant::now() < deadline => {
                eprintln!("browser session not ready yet: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("cannot open a Chromium session: {e}"),
        }
    }
}

/// Evaluates `script` (a function body) in the page.
async fn eval(browser: &Browser, script: &str) -> Value {
    browser.execute(script, vec![]).await.unwrap_or(Value::Null)
}

/// Polls the page until `script` returns something truthy; returns that.
async fn wait_page(t: &TestCluster, browser: &Browser, what: &str, script: &str) -> Value {
    let deadline = Instant::now() + LONG;
    loop {
        let v = eval(browser, script).await;
        let truthy = !matches!(v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
        if truthy {
            return v;
        }
        if Instant::now() > deadline {
            let shown = eval(browser, "return document.body.innerText").await;
            t.fail(&format!("the dashboard never showed: {what}\npage text:\n{shown}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn screenshot(browser: &Browser, name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    let path = dir.join(format!("{name}.png"));
    let png = browser.screenshot().await.expect("screenshot");
    std::fs::write(&path, png).expect("write screenshot");
    eprintln!("screenshot: {}", path.display());
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_follows_a_job_and_a_leader_change_live() {
    ensure_chromium();
    let mut t = cluster(3, &[], &[]).await;
    t.cluster.start_worker("eu-a-1", 2, "region=eu,zone=a").expect("worker");
    t.cluster.start_worker("eu-b-1", 2, "region=eu,zone=b").expect("worker");
    if let Err(e) = t.cluster.wait_workers(2, LONG).await {
        t.fail(&e.to_string());
    }
    let client = t.client();
    let leader = t.cluster.wait_leader(LONG).await.unwrap_or_else(|| t.fail("no leader"));
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");

    let driver = start_driver(t.dir.path().join("logs").join("chromedriver.log")).await;
    let browser = open_browser(&driver, &t.dir.path().join("chromium-profile")).await;
    // A follower serves the page: it must survive the leader's death below.
    let url = format!("http://{}/#/cluster", t.cluster.address(follower));
    browser.goto(&url).await.expect("open the dashboard");
    eval(&browser, "window.__flotillaPage = 'never reloaded'; return true").await;

    // Three masters, exactly one leader, as this follower sees them.
    let seen = wait_page(
        &t,
        &browser,
        "three reachable masters with one leader",
        &format!(
            "const m = [...document.querySelectorAll('#masters tr.master')].map(r => [Number(r.dataset.id), r.dataset.role]); \
             return m.filter(x => x[1] !== 'unreachable').length === 3 \
                 && m.filter(x => x[1] === 'leader').length === 1 \
                 && m.find(x => x[1] === 'leader')[0] === {leader}"
        ),
    )
    .await;
    assert_eq!(seen, json!(true));
    // The page is served with a strict Content-Security-Policy (no inline style or script), and
    // still draws its bars: their sizes are set from script.
    let page = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(t.cluster.address(follower)).expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("write");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("read");
        answer.to_ascii_lowercase()
    };
    assert!(
        page.contains("content-security-policy: default-src 'none'; script-src 'self'; style-src 'self';"),
        "no strict CSP on the page: {}",
        page.split("\r\n\r\n").next().unwrap_or_default()
    );
    wait_page(
        &t,
        &browser,
        "worker load bars sized under the CSP",
        "const bars = [...document.querySelectorAll('.load > div')]; \
         return bars.length > 0 && bars.every(b => b.style.width.endsWith('%'))",
    )
    .await;
    let conn = eval(&browser, "return document.querySelector('#conn').textContent").await;
    assert!(
        conn.as_str().is_some_and(|c| c.contains(&format!("master {follower}")) && c.contains("follower")),
        "the page says which master it reads and how fresh that is: {conn}"
    );
    wait_page(&t, &browser, "both workers by zone", "return document.querySelectorAll('#workers .worker').length === 2 && document.querySelectorAll('#workers .zone').length === 2").await;
    screenshot(&browser, "1-cluster").await;

    // An autoscaling pool shows with its bounds and state.
    let (code, _, stderr) = cli(
        &t.cluster.master_list(),
        &[
            "autoscale",
            "set",
            "--provider",
            "command",
            "--max",
            "2",
            "--add-command",
            "true",
            "--remove-command",
            "true",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    wait_page(
        &t,
        &browser,
        "the autoscaling pool on the cluster page",
        "const p = document.querySelector('#pools tr.pool[data-pool=\"auto\"]'); \
         return p !== null && p.dataset.paused === 'false' && p.textContent.includes('0–2')",
    )
    .await;

    // A job: its progress bar climbs to 100 % on the jobs page.
    let job = SubmitRequest {
        name: Some("dashboard-demo".into()),
        command: vec!["sh".into(), "-c".into(), "sleep 0.3; echo task $FLOTILLA_TASK_INDEX".into()],
        array: Some("1-16".into()),
        ..Default::default()
    };
    let id = client.submit(&job).await.unwrap_or_else(|e| t.fail(&format!("submit: {e}"))).id;
    eval(&browser, "location.hash = '#/jobs'; return true").await;
    let bar = format!("document.querySelector('.progress[data-job=\"{id}\"]')");
    wait_page(&t, &browser, "the job's progress bar", &format!("return {bar} !== null")).await;
    let pct = |v: Value| v.as_f64().unwrap_or(0.0);
    let first = pct(eval(&browser, &format!("return Number({bar}.dataset.pct)")).await);
    wait_page(&t, &browser, "the job at 100 %", &format!("return {bar} && {bar}.dataset.pct === '100'")).await;
    wait_page(
        &t,
        &browser,
        "the job marked succeeded",
        &format!("return document.querySelector('tr.job[data-id=\"{id}\"]').dataset.state === 'succeeded'"),
    )
    .await;
    eprintln!("progress bar went from {first} % to 100 %");
    screenshot(&browser, "2-jobs").await;

    // The cluster page charts the master's own samples: the job's tasks show as throughput.
    eval(&browser, "location.hash = '#/cluster'; return true").await;
    let peak = wait_page(
        &t,
        &browser,
        "charts of throughput, waiting tasks, cpus and elections, the job's tasks in the throughput",
        "const c = (k) => document.querySelector(`#charts .chart[data-chart=\"${k}\"]`); \
         const ok = ['throughput', 'waiting', 'cpus', 'elections'].every(k => c(k) !== null) \
             && Number(c('cpus').dataset.points) >= 2 && Number(c('throughput').dataset.peak) > 0; \
         return ok ? Number(c('throughput').dataset.peak) : null",
    )
    .await;
    eprintln!("throughput chart peaked at {peak} tasks/s");
    screenshot(&browser, "2b-charts").await;

    // The job page lists its tasks with their recorded attempts and output.
    eval(&browser, &format!("location.hash = '#/job/{id}'; return true")).await;
    wait_page(&t, &browser, "16 task rows", "return document.querySelectorAll('#tasks tr.task').length === 16").await;
    let out = eval(&browser, "return document.querySelector('#tasks tr.task[data-index=\"7\"] pre').textContent").await;
    assert_eq!(out.as_str().map(str::trim), Some("task 7"), "task 7's stdout is shown");
    screenshot(&browser, "3-job").await;

    // A job `--after` it: its page links the job it needs, and that job's page links it.
    let after = SubmitRequest { command: vec!["true".into()], after: vec![id], ..Default::default() };
    let next = client.submit(&after).await.unwrap_or_else(|e| t.fail(&format!("submit: {e}"))).id;
    eval(&browser, &format!("location.hash = '#/job/{next}'; return true")).await;
    wait_page(
        &t,
        &browser,
        "the dependent job's page linking the job it needs",
        &format!("return document.querySelector('#deps a.dep[data-rel=\"after\"][data-job=\"{id}\"]') !== null"),
    )
    .await;
    eval(&browser, &format!("location.hash = '#/job/{id}'; return true")).await;
    wait_page(
        &t,
        &browser,
        "the upstream job's page linking its dependent",
        &format!("return document.querySelector('#deps a.dep[data-rel=\"downstream\"][data-job=\"{next}\"]') !== null"),
    )
    .await;
    eval(&browser, "location.hash = '#/graph'; return true").await;
    wait_page(
        &t,
        &browser,
        "the dependency graph with the edge between the two jobs",
        &format!(
            "return document.querySelector('#graph path.edge[data-from=\"{id}\"][data-to=\"{next}\"]') !== null \
                 && document.querySelectorAll('#graph a.node').length === 2"
        ),
    )
    .await;
    screenshot(&browser, "3b-dependencies").await;

    // A second tab reads from the leader itself: when the leader dies, that page must carry on
    // with another master's stream.
    let first_tab = browser.window().await.expect("window handle");
    let second_tab = browser.new_window(true).await.expect("new tab").handle;
    browser.switch_to_window(second_tab.clone()).await.expect("switch tab");
    browser.goto(&format!("http://{}/#/cluster", t.cluster.address(leader))).await.expect("open on the leader");
    wait_page(
        &t,
        &browser,
        "the leader's own page",
        &format!("return document.querySelector('#conn').dataset.node === '{leader}'"),
    )
    .await;
    browser.switch_to_window(first_tab.clone()).await.expect("switch tab");

    // SIGKILL the leader: the page (not reloaded) shows it unreachable and a new leader.
    eval(&browser, "location.hash = '#/cluster'; return true").await;
    let old_term = eval(&browser, &format!("return Number(document.querySelector('#masters tr.master[data-id=\"{leader}\"] td:nth-child(4)').textContent)")).await;
    t.cluster.kill_master(leader);
    let killed_at = Instant::now();
    let new_leader = wait_page(
        &t,
        &browser,
        "a new leader and the old one unreachable",
        &format!(
            "const rows = [...document.querySelectorAll('#masters tr.master')]; \
             const old = rows.find(r => r.dataset.id === '{leader}'); \
             const lead = rows.filter(r => r.dataset.role === 'leader'); \
             return old && old.dataset.role === 'unreachable' && lead.length === 1 ? Number(lead[0].dataset.id) : null"
        ),
    )
    .await;
    eprintln!("the dashboard showed leader {new_leader} {:.2} s after the SIGKILL", killed_at.elapsed().as_secs_f64());
    assert_ne!(new_leader, json!(leader));
    let new_term = eval(&browser, &format!("return Number(document.querySelector('#masters tr.master[data-id=\"{new_leader}\"] td:nth-child(4)').textContent)")).await;
    assert!(
        new_term.as_f64() > old_term.as_f64(),
        "the new leader's term {new_term} is above the old one's {old_term}"
    );
    wait_page(
        &t,
        &browser,
        "the failover in the elections chart",
        "const c = document.querySelector('#charts .chart[data-chart=\"elections\"]'); return c !== null && Number(c.dataset.points) >= 1",
    )
    .await;
    let marker = eval(&browser, "return window.__flotillaPage || null").await;
    assert_eq!(marker, json!("never reloaded"), "the page was not reloaded");
    screenshot(&browser, "4-new-leader").await;

    // The tab whose master died reads another master's stream now.
    browser.switch_to_window(second_tab).await.expect("switch tab");
    let moved = wait_page(
        &t,
        &browser,
        "the dead leader's page live from another master, showing the new leader",
        &format!(
            "const c = document.querySelector('#conn'); \
             const lead = document.querySelector('#masters tr.master[data-role=\"leader\"]'); \
             return c.classList.contains('conn-live') && c.dataset.node !== '{leader}' && lead && lead.dataset.id === '{new_leader}' ? c.dataset.node : null"
        ),
    )
    .await;
    eprintln!("the page served by the killed leader now reads master {moved}");
    screenshot(&browser, "5-page-of-the-dead-leader").await;
    browser.switch_to_window(first_tab).await.expect("switch tab");

    // The timeline shows the election.
    eval(&browser, "location.hash = '#/timeline'; return true").await;
    wait_page(
        &t,
        &browser,
        "two elections in the timeline",
        "return document.querySelectorAll('#events tr.event[data-kind=\"leader_elected\"]').length >= 2",
    )
    .await;
    screenshot(&browser, "6-timeline").await;

    let _ = browser.close().await;
    drop(driver);
}
