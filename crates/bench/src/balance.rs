//! Balance: heterogeneous work on 4 real workers (2 cpus each) behind 3 masters with the
//! defaults, in three scenarios: every worker there from the start, one joining mid-run, and
//! one leaving mid-run.
//!
//! The workload is seeded and the same in every scenario: four jobs submitted 0.5 s apart, with
//! heavy-tailed task durations from 10 ms to 5 s (a long-tailed array, a swarm of short tasks,
//! a few long ones, a mixed one). Each task sleeps its own duration, looked up by its index.
//!
//! Figures per scenario:
//! - makespan ÷ lower bound. The bound is the larger of the capacity bound (the earliest time
//!   the cpus present, integrated over time, cover all the work) and each job's submit time
//!   plus its longest task (the longest chain: these jobs have no dependencies);
//! - mean job completion time (submit to last result);
//! - idle cpu time while work waits: from the recorded results (worker, start, end) a sweep
//!   finds every interval in which some worker had a free cpu while a submitted task had not
//!   started; reported as the total and the p99 of those gaps.
//!
//! When `FLOTILLA_BENCH_HQ` names a HyperQueue `hq` binary, the same workload runs on
//! HyperQueue (a server and the same workers) and its makespan and mean job completion time
//! are printed beside Flotilla's; otherwise it is skipped with a message.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use flotilla_core::rng::Rng;
use flotilla_proto::api::SubmitRequest;
use flotilla_proto::time::{now_ms, parse_rfc3339};

use crate::common::{figure, Bench};

const WORKERS: usize = 4;
const CPUS: u32 = 2;

/// One job of the workload: its tasks' durations (ms) and when it is submitted.
struct JobPlan {
    name: &'static str,
    at: Duration,
    durations: Vec<u64>,
}

/// Durations from `lo` to `hi` ms, log-distributed with weight on the short end (a heavy tail
/// of long tasks).
fn tailed(rng: &mut Rng, n: usize, lo: f64, hi: f64, skew: f64) -> Vec<u64> {
    (0..n)
        .map(|_| {
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            (lo * (hi / lo).powf(u.powf(skew))).round() as u64
        })
        .collect()
}

/// The workload, scaled by `scale` (1.0 is about 25 s of work per cpu on 8 cpus).
fn workload(scale: f64) -> Vec<JobPlan> {
    let mut rng = Rng::new(11);
    let n = |base: usize| ((base as f64 * scale).round() as usize).max(2);
    vec![
        JobPlan { name: "tail", at: Duration::ZERO, durations: tailed(&mut rng, n(160), 10.0, 5_000.0, 2.5) },
        JobPlan { name: "short", at: Duration::from_millis(500), durations: tailed(&mut rng, n(400), 10.0, 50.0, 1.0) },
        JobPlan {
            name: "long",
            at: Duration::from_millis(1000),
            durations: tailed(&mut rng, n(16), 2_000.0, 5_000.0, 1.0),
        },
        JobPlan {
            name: "mixed",
            at: Duration::from_millis(1500),
            durations: tailed(&mut rng, n(120), 10.0, 3_000.0, 1.5),
        },
    ]
}

/// The command every task runs: sleep the duration listed at its index (1-based) in `$0`.
fn sleeper(durations: &[u64], index_var: &str) -> Vec<String> {
    let list: Vec<String> = durations.iter().map(|ms| format!("{}.{:03}", ms / 1000, ms % 1000)).collect();
    vec![
        "sh".into(),
        "-c".into(),
        format!("exec sleep \"$(echo \"$0\" | cut -d' ' -f\"${index_var}\")\""),
        list.join(" "),
    ]
}

/// What happens to the fleet during a run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    AllThere,
    OneJoins,
    OneLeaves,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::AllThere => "all there",
            Scenario::OneJoins => "one joins at 3 s",
            Scenario::OneLeaves => "one leaves at 5 s",
        }
    }
    const CHANGE_AT: [Duration; 2] = [Duration::from_secs(3), Duration::from_secs(5)];

    /// Cpus present from t (ms since the first submit), as steps (from, cpus).
    fn capacity(self) -> Vec<(f64, f64)> {
        let all = f64::from(CPUS) * WORKERS as f64;
        let one = f64::from(CPUS);
        match self {
            Scenario::AllThere => vec![(0.0, all)],
            Scenario::OneJoins => vec![(0.0, all - one), (Self::CHANGE_AT[0].as_millis() as f64, all)],
            Scenario::OneLeaves => vec![(0.0, all), (Self::CHANGE_AT[1].as_millis() as f64, all - one)],
        }
    }
}

/// The lower bound on the makespan, in ms (see the module comment).
fn lower_bound(jobs: &[JobPlan], scenario: Scenario) -> f64 {
    let work: f64 = jobs.iter().flat_map(|j| j.durations.iter()).map(|d| *d as f64).sum();
    let chain = jobs
        .iter()
        .map(|j| j.at.as_millis() as f64 + j.durations.iter().copied().max().unwrap_or(0) as f64)
        .fold(0.0, f64::max);
    let steps = scenario.capacity();
    let (mut left, mut t) = (work, 0.0);
    for (i, (from, cpus)) in steps.iter().enumerate() {
        let until = steps.get(i + 1).map_or(f64::INFINITY, |s| s.0);
        let span = until - from;
        if left <= span * cpus {
            t = from + left / cpus;
            break;
        }
        left -= span * cpus;
    }
    t.max(chain)
}

/// One task as recorded: where it ran and when (ms since the epoch).
struct Ran {
    worker: String,
    start: u64,
    end: u64,
    /// When it could first have started: its job's submit time.
    ready: u64,
}

/// Gaps in which a worker had a free cpu while a submitted task had not started, in ms (each
/// free interval counts only while some task waited).
/// `present`: each worker and the window it was there (a worker that ran nothing counts too).
fn idle_gaps(runs: &[Ran], present: &[(String, u64, u64)]) -> Vec<u64> {
    // When some task was waiting: the union of [submitted, started) over all tasks.
    let mut spans: Vec<(u64, u64)> = runs.iter().filter(|r| r.start > r.ready).map(|r| (r.ready, r.start)).collect();
    spans.sort_unstable();
    let mut waiting: Vec<(u64, u64)> = Vec::new();
    for (a, b) in spans {
        match waiting.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => waiting.push((a, b)),
        }
    }
    // The part of [t0, t1) during which some task waited.
    let waiting_in =
        |t0: u64, t1: u64| -> u64 { waiting.iter().map(|(a, b)| (*b).min(t1).saturating_sub((*a).max(t0))).sum() };
    let mut gaps = Vec::new();
    for (worker, from, to) in present {
        let mut edges: Vec<(u64, i64)> = runs
            .iter()
            .filter(|r| &r.worker == worker)
            .flat_map(|r| [(r.start.max(*from), 1), (r.end.min(*to).max(*from), -1)])
            .collect();
        edges.push((*to, 0));
        // Starts before ends at one instant: a cpu handed straight to the next task is no gap.
        edges.sort_by_key(|(t, d)| (*t, -*d));
        let mut busy = 0i64;
        let mut free_since = Some(*from);
        for (t, d) in edges {
            busy += d;
            let free = busy < i64::from(CPUS) && t < *to;
            match (free, free_since) {
                (true, None) => free_since = Some(t),
                (false, Some(s)) => {
                    let gap = waiting_in(s, t);
                    if gap > 0 {
                        gaps.push(gap);
                    }
                    free_since = None;
                }
                _ => {}
            }
        }
    }
    gaps
}

struct Outcome {
    makespan_ms: f64,
    mean_completion_ms: f64,
    idle: Vec<u64>,
    /// The joining worker: from its registration to its first task's start, in ms.
    join_to_first_task: Option<u64>,
}

async fn run_flotilla(jobs: &[JobPlan], scenario: Scenario) -> anyhow::Result<Outcome> {
    let mut bench = Bench::start(3, &[]).await?;
    let initial = if scenario == Scenario::OneJoins { WORKERS - 1 } else { WORKERS };
    for i in 0..initial {
        bench.cluster.start_worker(&format!("w{i}"), CPUS, "")?;
    }
    bench.cluster.wait_workers(initial, Duration::from_secs(60)).await?;
    let client = bench.client()?;
    let t0 = Instant::now();
    let epoch0 = now_ms();
    let mut ids = Vec::new();
    let mut changed = false;
    for job in jobs {
        while t0.elapsed() < job.at {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let req = SubmitRequest {
            name: Some(job.name.into()),
            command: sleeper(&job.durations, "FLOTILLA_TASK_INDEX"),
            array: Some(format!("1-{}", job.durations.len())),
            ..Default::default()
        };
        ids.push((client.submit(&req).await?.id, now_ms()));
    }
    // Wait for every job, making the scenario's change on time.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut done: BTreeMap<u64, u64> = BTreeMap::new();
    while done.len() < ids.len() {
        if !changed {
            match scenario {
                Scenario::OneJoins if t0.elapsed() >= Scenario::CHANGE_AT[0] => {
                    bench.cluster.start_worker(&format!("w{}", WORKERS - 1), CPUS, "")?;
                    changed = true;
                }
                Scenario::OneLeaves if t0.elapsed() >= Scenario::CHANGE_AT[1] => {
                    if let Some(child) = bench.cluster.workers.get("w0") {
                        flotilla::local::signal(child, libc::SIGTERM);
                    }
                    changed = true;
                }
                _ => {}
            }
        }
        for (id, _) in &ids {
            if done.contains_key(id) {
                continue;
            }
            let j = client.job(*id, false).await?;
            if j.state.is_terminal() {
                let finished = j.finished_at.as_deref().and_then(parse_rfc3339).unwrap_or_else(now_ms);
                done.insert(*id, finished);
            }
        }
        if Instant::now() > deadline {
            bail!("the balance workload did not finish within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = done.values().copied().max().unwrap_or(epoch0);
    let mut runs = Vec::new();
    let mut completion = 0.0;
    for (id, submitted) in &ids {
        completion += done[id].saturating_sub(*submitted) as f64;
        for r in client.results(*id, 0, None, false).await? {
            let (Some(end), Some(ms), Some(worker)) =
                (r.finished_at.as_deref().and_then(parse_rfc3339), r.duration_ms, r.worker)
            else {
                continue;
            };
            runs.push(Ran { worker, start: end.saturating_sub(ms), end, ready: *submitted });
        }
    }
    let joiner = format!("w{}", WORKERS - 1);
    let joined = client.status(false).await?.workers.into_iter().find(|w| w.name == joiner);
    let joined_at = joined.and_then(|w| parse_rfc3339(&w.joined_at));
    // The joiner counts from its registration (not its process start), the leaver until
    // it was told to stop.
    let change = epoch0 + Scenario::CHANGE_AT[usize::from(scenario == Scenario::OneLeaves)].as_millis() as u64;
    let present: Vec<(String, u64, u64)> = (0..WORKERS)
        .map(|i| {
            let (from, to) = match (scenario, i) {
                (Scenario::OneJoins, i) if i == WORKERS - 1 => (joined_at.unwrap_or(change), last),
                (Scenario::OneLeaves, 0) => (epoch0, change),
                _ => (epoch0, last),
            };
            (format!("w{i}"), from, to)
        })
        .collect();
    let join_to_first_task = match (scenario, joined_at) {
        (Scenario::OneJoins, Some(at)) => {
            runs.iter().filter(|r| r.worker == joiner).map(|r| r.start.saturating_sub(at)).min()
        }
        _ => None,
    };
    Ok(Outcome {
        makespan_ms: last.saturating_sub(epoch0) as f64,
        mean_completion_ms: completion / ids.len() as f64,
        idle: idle_gaps(&runs, &present),
        join_to_first_task,
    })
}

/// The same workload on HyperQueue, when an `hq` binary is given.
struct Hq {
    exe: PathBuf,
    dir: tempfile::TempDir,
    children: Vec<Child>,
}

impl Hq {
    fn command(&self) -> Command {
        let mut c = Command::new(&self.exe);
        c.arg("--server-dir").arg(self.dir.path().join("server"));
        c.stdin(Stdio::null());
        c
    }

    fn spawn(&mut self, args: &[&str]) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.path().join(format!("hq-{}.log", self.children.len())))?;
        let child = self.command().args(args).stdout(log.try_clone()?).stderr(log).spawn()?;
        self.children.push(child);
        Ok(())
    }

    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.command().args(args).output().with_context(|| format!("hq {}", args.join(" ")))?;
        if !out.status.success() {
            bail!("hq {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Hq {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn run_hq(exe: &Path, jobs: &[JobPlan], scenario: Scenario) -> anyhow::Result<Outcome> {
    let mut hq = Hq {
        exe: exe.to_path_buf(),
        dir: tempfile::Builder::new().prefix("flotilla-bench-hq-").tempdir()?,
        children: Vec::new(),
    };
    hq.spawn(&["server", "start"])?;
    let ready = Instant::now();
    while hq.run(&["server", "info"]).is_err() {
        if ready.elapsed() > Duration::from_secs(30) {
            bail!("the hq server did not start");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let cpus = CPUS.to_string();
    let initial = if scenario == Scenario::OneJoins { WORKERS - 1 } else { WORKERS };
    for _ in 0..initial {
        hq.spawn(&["worker", "start", "--cpus", &cpus])?;
    }
    let t0 = Instant::now();
    let mut ids = Vec::new();
    for job in jobs {
        while t0.elapsed() < job.at {
            std::thread::sleep(Duration::from_millis(5));
        }
        let array = format!("1-{}", job.durations.len());
        let mut args: Vec<String> =
            ["submit", "--output-mode", "json", "--array", &array, "--"].iter().map(|s| s.to_string()).collect();
        args.extend(sleeper(&job.durations, "HQ_TASK_ID"));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = hq.run(&argv)?;
        let id = serde_json::from_str::<serde_json::Value>(&out)?["id"].as_u64().context("hq submit printed no id")?;
        ids.push((id, t0.elapsed()));
    }
    let mut done: BTreeMap<u64, Duration> = BTreeMap::new();
    let mut changed = false;
    while done.len() < ids.len() {
        if !changed && scenario == Scenario::OneJoins && t0.elapsed() >= Scenario::CHANGE_AT[0] {
            hq.spawn(&["worker", "start", "--cpus", &cpus])?;
            changed = true;
        }
        if !changed && scenario == Scenario::OneLeaves && t0.elapsed() >= Scenario::CHANGE_AT[1] {
            if let Some(c) = hq.children.get_mut(1) {
                let _ = c.kill();
            }
            changed = true;
        }
        for (id, _) in &ids {
            if done.contains_key(id) {
                continue;
            }
            let out = hq.run(&["job", "info", &id.to_string(), "--output-mode", "json"])?;
            let v: serde_json::Value = serde_json::from_str(&out)?;
            let info = if v.is_array() { v[0].clone() } else { v };
            let status = info["info"]["task_stats"].clone();
            let finished =
                ["finished", "failed", "canceled"].iter().map(|k| status[k].as_u64().unwrap_or(0)).sum::<u64>();
            if finished >= info["info"]["n_tasks"].as_u64().unwrap_or(u64::MAX) {
                done.insert(*id, t0.elapsed());
            }
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("the hq run did not finish within 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let makespan = done.values().max().copied().unwrap_or_default();
    let completion: f64 = ids.iter().map(|(id, at)| (done[id].saturating_sub(*at)).as_millis() as f64).sum();
    Ok(Outcome {
        makespan_ms: makespan.as_millis() as f64,
        mean_completion_ms: completion / ids.len() as f64,
        idle: Vec::new(),
        join_to_first_task: None,
    })
}

pub async fn run(scale: f64) -> anyhow::Result<()> {
    let jobs = workload(scale);
    let tasks: usize = jobs.iter().map(|j| j.durations.len()).sum();
    let work: u64 = jobs.iter().flat_map(|j| j.durations.iter()).sum();
    figure(
        "balance",
        "workload: jobs, tasks, cpu-seconds of work",
        format!("{}, {tasks}, {:.1}", jobs.len(), work as f64 / 1000.0),
        "",
    );
    let hq = std::env::var_os("FLOTILLA_BENCH_HQ").map(PathBuf::from);
    if hq.is_none() {
        figure("balance", "HyperQueue side by side", "skipped (set FLOTILLA_BENCH_HQ=/path/to/hq)".into(), "");
    }
    for scenario in [Scenario::AllThere, Scenario::OneJoins, Scenario::OneLeaves] {
        let bound = lower_bound(&jobs, scenario);
        let out = run_flotilla(&jobs, scenario).await?;
        let target = match scenario {
            Scenario::AllThere => "<= 1.10",
            Scenario::OneJoins => "<= 1.25",
            Scenario::OneLeaves => "",
        };
        let name = scenario.name();
        figure(
            "balance",
            &format!("{name}: makespan / lower bound"),
            format!("{:.2} ({:.1} s / {:.1} s)", out.makespan_ms / bound, out.makespan_ms / 1000.0, bound / 1000.0),
            target,
        );
        figure(
            "balance",
            &format!("{name}: mean job completion"),
            format!("{:.2} s", out.mean_completion_ms / 1000.0),
            "",
        );
        let total: u64 = out.idle.iter().sum();
        let p99 = {
            let mut g = out.idle.clone();
            g.sort_unstable();
            g.get(((g.len() as f64 * 0.99).ceil() as usize).saturating_sub(1)).copied().unwrap_or(0)
        };
        figure(
            "balance",
            &format!("{name}: idle cpu while work waits"),
            format!("{:.2} s total, gap p99 {p99} ms ({} gaps)", total as f64 / 1000.0, out.idle.len()),
            "p99 < 100 ms",
        );
        if let Some(ms) = out.join_to_first_task {
            figure("balance", &format!("{name}: joined worker's first task after"), format!("{ms} ms"), "< 100 ms");
        }
        if let Some(exe) = &hq {
            let jobs = workload(scale);
            let h = tokio::task::spawn_blocking({
                let exe = exe.clone();
                move || run_hq(&exe, &jobs, scenario)
            })
            .await??;
            figure(
                "balance",
                &format!("{name}: HyperQueue makespan / lower bound"),
                format!("{:.2} ({:.1} s)", h.makespan_ms / bound, h.makespan_ms / 1000.0),
                "",
            );
            figure(
                "balance",
                &format!("{name}: HyperQueue mean job completion"),
                format!("{:.2} s", h.mean_completion_ms / 1000.0),
                "",
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lower_bound_follows_the_cpus_present() {
        let jobs = vec![JobPlan { name: "x", at: Duration::ZERO, durations: vec![1_000; 16] }];
        // 16 s of work on 8 cpus: 2 s; the longest task is 1 s.
        assert!((lower_bound(&jobs, Scenario::AllThere) - 2_000.0).abs() < 1e-6);
        // 6 cpus for 3 s already cover it.
        assert!((lower_bound(&jobs, Scenario::OneJoins) - 16_000.0 / 6.0).abs() < 1e-6);
    }

    #[test]
    fn idle_gaps_count_only_while_work_waits() {
        let ran = |w: &str, start, end, ready| Ran { worker: w.into(), start, end, ready };
        let runs = vec![ran("a", 0, 200, 0), ran("a", 100, 300, 0), ran("a", 300, 400, 0)];
        // Worker a's second cpu idles from 0 to 100 and from 200 to 300 while a task waits;
        // from 300 nothing waits. Worker b, there all along, never ran anything.
        let present = vec![("a".to_string(), 0, 400), ("b".to_string(), 0, 400)];
        let mut gaps = idle_gaps(&runs, &present);
        gaps.sort_unstable();
        assert_eq!(gaps, vec![100, 100, 300]);
    }
}
