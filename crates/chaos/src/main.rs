//! `flotilla-chaos`: proves Flotilla's fault tolerance on real processes.
//!
//! Each scenario starts a real cluster (3 or 5 masters, 3 workers), every node in its own
//! network namespace, runs jobs whose every output is known in advance, injects faults from
//! a schedule derived from a seed (process kills and pauses, partitions, one-way cuts, wiped or
//! corrupted data, a full disk, worker restarts), heals them, and checks the invariants:
//!
//! - every acknowledged job exists and finishes; every task has exactly one recorded result,
//!   from its latest attempt, equal to the expected output; the reduce result is right;
//! - never two leaders in one term (in the journal and in what the masters said); every
//!   recorded assignment's term had an elected leader;
//! - the history of submissions and reads the client saw is linearizable;
//! - after the faults heal the cluster converges (one leader, all masters at the same applied
//!   index, all workers ready) within a stated bound.
//!
//! One line per scenario, then a summary; exit status 1 on any violation. A failing scenario
//! prints its seed and fault schedule: `--scenario-seed SEED` replays it.

mod cluster;
mod faults;
mod lin;
mod netns;
mod scenario;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;

use cluster::Cluster;
use faults::{Kind, Schedule, ALL};

#[derive(Parser, Debug)]
#[command(name = "flotilla-chaos", about = "Inject faults into real local Flotilla clusters and check invariants")]
struct Args {
    /// Number of scenarios to run.
    #[arg(long, default_value_t = 10)]
    scenarios: u64,
    /// Seed of the run; scenario k uses a seed derived from it.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Replay exactly one scenario by the seed it printed (decimal or 0x…).
    #[arg(long)]
    scenario_seed: Option<String>,
    /// Only these fault kinds, comma-separated (see --list-faults).
    #[arg(long)]
    faults: Option<String>,
    /// Give every fault kind a turn, two per scenario, in order (the CI run).
    #[arg(long)]
    cover_all: bool,
    /// List the fault kinds and exit.
    #[arg(long)]
    list_faults: bool,
    /// The flotilla binary (default: `flotilla` beside this program).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Keep every scenario's data and logs (failing scenarios are always kept).
    #[arg(long)]
    keep: bool,
}

fn parse_seed(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).context("bad hex seed"),
        None => s.parse().context("bad seed"),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<bool> {
    let args = Args::parse();
    if args.list_faults {
        for k in ALL {
            println!("{}", k.name());
        }
        return Ok(true);
    }
    let exe = match &args.bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.parent().context("no exe dir")?.join("flotilla"),
    };
    if !exe.exists() {
        bail!("no flotilla binary at {} (build it, or pass --bin)", exe.display());
    }
    let forced: Vec<Kind> = match &args.faults {
        Some(list) => list
            .split(',')
            .map(|n| Kind::parse(n.trim()).with_context(|| format!("unknown fault kind '{n}'")))
            .collect::<anyhow::Result<_>>()?,
        None => Vec::new(),
    };
    let schedules: Vec<Schedule> = match &args.scenario_seed {
        Some(s) => vec![Schedule::generate(parse_seed(s)?, &forced)],
        None => (0..args.scenarios)
            .map(|k| {
                let seed = flotilla_core::rng::scenario_seed(args.seed, k);
                if args.cover_all {
                    let a = ALL[(2 * k as usize) % ALL.len()];
                    let b = ALL[(2 * k as usize + 1) % ALL.len()];
                    Schedule::generate(seed, &[a, b])
                } else {
                    Schedule::generate(seed, &forced)
                }
            })
            .collect(),
    };

    netns::remove_stale();
    let mut nodes: Vec<(String, Ipv4Addr)> =
        (1..=5).map(|i| (format!("m{i}"), Ipv4Addr::new(10, 77, 0, 10 + i))).collect();
    nodes.extend((1..=3).map(|i| (format!("w{i}"), Ipv4Addr::new(10, 77, 0, 100 + i))));
    let net = netns::Net::create("c", &nodes)?;
    // The harness talks to the cluster from the hub; threads started from now on live there.
    net.enter("hub")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // On Ctrl-C or SIGTERM, stop between scenarios' steps and clean up (namespaces, mounts).
    let interrupted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        runtime.spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });
    }

    let base = tempfile_dir()?;
    let token = format!("chaos-{:x}", flotilla_core::rng::Rng::new(args.seed ^ std::process::id() as u64).next_u64());
    let token_file = base.join("token");
    std::fs::write(&token_file, &token)?;
    // TLS as in production: masters serve it only, workers and the harness show certificates.
    let certs = base.join("certs");
    flotilla_tls::authority::init(&certs, &[])?;
    let identity = flotilla_tls::Identity::load(&certs, flotilla_tls::Role::Client)?;
    let mut cluster = Cluster {
        certs,
        identity,
        net,
        exe,
        dir: base.clone(),
        token_file,
        token,
        master_ids: Vec::new(),
        worker_names: (1..=3).map(|i| format!("w{i}")).collect(),
        masters: BTreeMap::new(),
        workers: BTreeMap::new(),
        tmpfs: Vec::new(),
        worker_cpus: 2,
    };

    let started = Instant::now();
    let (mut total_faults, mut total_jobs, mut total_tasks, mut total_violations) = (0usize, 0usize, 0u64, 0usize);
    let mut kinds_seen = std::collections::BTreeSet::new();
    let count = schedules.len();
    for (k, schedule) in schedules.iter().enumerate() {
        if interrupted.load(std::sync::atomic::Ordering::SeqCst) {
            println!("interrupted after {k} scenarios");
            break;
        }
        let dir = base.join(format!("scenario-{k}"));
        std::fs::create_dir_all(dir.join("logs"))?;
        cluster.dir = dir.clone();
        cluster.master_ids = (1..=schedule.masters).collect();
        let t0 = Instant::now();
        let flag = interrupted.clone();
        let outcome = runtime.block_on(async {
            tokio::select! {
                o = scenario::run(&mut cluster, schedule) => o,
                _ = async {
                    while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                } => Err(anyhow::anyhow!("interrupted")),
            }
        });
        cluster.teardown();
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => scenario::Outcome {
                faults: 0,
                jobs: 0,
                tasks: 0,
                converged_in: None,
                violations: vec![format!("scenario could not run: {e:#}")],
                notes: Vec::new(),
            },
        };
        kinds_seen.extend(schedule.faults.iter().map(|f| f.kind));
        total_faults += outcome.faults;
        total_jobs += outcome.jobs;
        total_tasks += outcome.tasks;
        total_violations += outcome.violations.len();
        let verdict = if outcome.violations.is_empty() {
            "ok".to_string()
        } else {
            format!("{} VIOLATIONS", outcome.violations.len())
        };
        println!(
            "scenario {}/{count} {} jobs={} tasks={} converged={} took={:.1}s {verdict}",
            k + 1,
            schedule.describe(),
            outcome.jobs,
            outcome.tasks,
            outcome.converged_in.map(|d| format!("{:.1}s", d.as_secs_f64())).unwrap_or_else(|| "no".into()),
            t0.elapsed().as_secs_f64(),
        );
        for n in &outcome.notes {
            println!("    note: {n}");
        }
        for v in &outcome.violations {
            println!("    VIOLATION: {v}");
        }
        if !outcome.violations.is_empty() {
            println!("    replay: flotilla-chaos --scenario-seed {:#x}; logs kept in {}", schedule.seed, dir.display());
        } else if !args.keep {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    let kinds: Vec<&str> = kinds_seen.iter().map(|k| k.name()).collect();
    println!(
        "chaos summary: {count} scenarios, {total_faults} faults injected ({} kinds: {}), {total_jobs} jobs and {total_tasks} tasks checked, {total_violations} violations, {:.0}s",
        kinds.len(),
        kinds.join(" "),
        started.elapsed().as_secs_f64()
    );
    if total_violations == 0 && !args.keep {
        let _ = std::fs::remove_dir_all(&base);
    }
    Ok(total_violations == 0)
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("flotilla-chaos-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
