//! `flotilla-sim --seeds N [--start S]`: runs the deterministic simulation for N seeds and
//! prints a summary; exit status 1 and the failing seed on a violation.

use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str, default: u64| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("usage: flotilla-sim [--seeds N (default 10000)] [--start S (default 0)]");
        return ExitCode::SUCCESS;
    }
    let seeds = value("--seeds", 10_000);
    let start = value("--start", 0);
    let config = flotilla_sim::SimConfig::default();
    let t0 = Instant::now();
    let mut totals = flotilla_sim::Report::default();
    let mut failures = 0;
    for seed in start..start + seeds {
        match flotilla_sim::run(seed, &config) {
            Ok(r) => {
                totals.entries += r.entries;
                totals.faults += r.faults;
                totals.terms += r.terms;
                totals.tasks += r.tasks;
                totals.messages += r.messages;
                totals.refusals += r.refusals;
                totals.round_trips += r.round_trips;
                totals.queue_resizes += r.queue_resizes;
                totals.failed_by_losses += r.failed_by_losses;
                totals.revocations += r.revocations;
                totals.purged += r.purged;
                totals.drained += r.drained;
                totals.drain_requeued += r.drain_requeued;
                totals.dependents_run += r.dependents_run;
                totals.dependents_cancelled += r.dependents_cancelled;
                totals.paired_run += r.paired_run;
                totals.paired_cancelled += r.paired_cancelled;
                totals.needs_jobs += r.needs_jobs;
            }
            Err(e) => {
                failures += 1;
                println!("seed {seed}: VIOLATION: {e}  (replay: flotilla-sim --start {seed} --seeds 1)");
            }
        }
    }
    println!(
        "simulation summary: {seeds} seeds, {} faults, {} leader terms, {} log entries, {} messages, {} sessions refused, {} round trips, {} queue resizes, {} queued attempts revoked, {} jobs failed by worker losses (by design), {} finished jobs purged, {} workers drained on stop, {} attempts re-queued at a drain deadline, {} dependent jobs run after their upstream succeeded, {} cancelled because it did not, {} jobs paired task by task run, {} cancelled with their pair, {} jobs ordering their own tasks, {} tasks checked, {failures} violations, {:.1}s",
        totals.faults,
        totals.terms,
        totals.entries,
        totals.messages,
        totals.refusals,
        totals.round_trips,
        totals.queue_resizes,
        totals.revocations,
        totals.failed_by_losses,
        totals.purged,
        totals.drained,
        totals.drain_requeued,
        totals.dependents_run,
        totals.dependents_cancelled,
        totals.paired_run,
        totals.paired_cancelled,
        totals.needs_jobs,
        totals.tasks,
        t0.elapsed().as_secs_f64()
    );
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
