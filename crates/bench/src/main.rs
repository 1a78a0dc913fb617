//! `flotilla-bench NAME [--size N]`: Flotilla's benchmarks, each printing its figures and, where
//! a baseline exists, the ratio against that baseline measured in the same run.
//!
//! | name | what |
//! | --- | --- |
//! | `storm` | N `/bin/true` tasks vs a bare `posix_spawn` loop (default 10,000) |
//! | `throughput` | N instantly-completing tasks on simulated workers (default 1,000,000) |
//! | `arrays` | one N-task array: time to acknowledged, memory per pending task (default 1,000,000) |
//! | `failover` | N leader SIGKILLs under load, then a silent worker (default 20) |
//! | `latency` | N single-client submits, then 64 clients (default 2,000) |
//! | `fleet` | N simulated workers heartbeating (default 10,000) |
//! | `soak` | N tasks with output as 10,000-task jobs, a short retention: RSS and speed over time, follower restart (default 20,000,000) |
//! | `balance` | heterogeneous jobs on 4 real workers, one joining or leaving (`--size` scales it, percent) |
//! | `artifacts` | replicating an N-MB task output vs plain copies; a chain of jobs with `--after` vs a client-driven chain (default 256 MB) |
//! | `autoscale` | a `local` pool from 0 workers: a burst of N 1-s tasks, the idle shrink, a square wave (default 1,000) |
//! | `all` | every one of them |
//!
//! `--smoke` runs tiny sizes (CI keeps the benchmarks working with it). The binary also plays
//! `flotilla master` and `flotilla worker` for the clusters it starts, so the code measured is
//! always the code this benchmark was built from.

mod arrays;
mod artifacts;
mod autoscale;
mod balance;
mod common;
mod failover;
mod fleet;
mod fleetscale;
mod latency;
mod procfs;
mod soak;
mod storm;
mod throughput;

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "flotilla-bench", about = "Flotilla's benchmarks (see the README's Performance section)")]
struct Args {
    /// storm, throughput, arrays, failover, latency, fleet, balance, soak, artifacts, autoscale or all.
    name: String,
    /// The main size of the benchmark (tasks, kills, requests or workers).
    #[arg(long)]
    size: Option<u64>,
    /// Tiny sizes, to check the benchmarks work (CI).
    #[arg(long)]
    smoke: bool,
    /// Extra flags for every master of the failover benchmark, space-separated (to measure
    /// other Raft timings, e.g. "--heartbeat 50ms --election-timeout 200ms").
    #[arg(long, allow_hyphen_values = true, default_value = "")]
    master_args: String,
    /// Run the clusters in plain text instead of TLS (to measure what TLS costs).
    #[arg(long)]
    plain: bool,
}

fn main() -> ExitCode {
    // Started by a benchmark as one of the cluster's processes.
    if matches!(std::env::args().nth(1).as_deref(), Some("master" | "worker")) {
        return flotilla::main_entry();
    }
    let args = Args::parse();
    common::PLAIN.store(args.plain, std::sync::atomic::Ordering::Relaxed);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let names: Vec<&str> = match args.name.as_str() {
        "all" => vec![
            "storm",
            "throughput",
            "arrays",
            "failover",
            "latency",
            "fleet",
            "balance",
            "soak",
            "artifacts",
            "autoscale",
        ],
        n => vec![n],
    };
    let size = |full: u64, smoke: u64| if args.smoke { args.size.unwrap_or(smoke) } else { args.size.unwrap_or(full) };
    println!("{:<10} {:<48} value", "benchmark", "figure");
    for name in names {
        match name {
            "storm" => {
                storm::run(size(10_000, 200)).await?;
            }
            "throughput" => {
                let workers = if args.smoke { 4 } else { 100 };
                throughput::run(size(1_000_000, 2_000), workers, 8).await?;
            }
            "arrays" => arrays::run(size(1_000_000, 10_000)).await?,
            "failover" => {
                let master_args: Vec<&str> = args.master_args.split_whitespace().collect();
                failover::run(size(20, 2) as usize, &master_args).await?;
            }
            "latency" => {
                latency::run(size(2_000, 50) as usize).await?;
            }
            "fleet" => {
                fleetscale::run(size(10_000, 50) as usize).await?;
            }
            "soak" => soak::run(size(20_000_000, 20_000)).await?,
            "balance" => {
                balance::run(size(100, 5) as f64 / 100.0).await?;
            }
            "artifacts" => {
                let chain = if args.smoke { 10 } else { 200 };
                artifacts::run(size(256, 4), chain).await?;
            }
            "autoscale" => autoscale::run(size(1_000, 40), args.smoke).await?,
            other => {
                anyhow::bail!(
                    "unknown benchmark '{other}' (storm, throughput, arrays, failover, latency, fleet, balance, soak, artifacts, autoscale, all)"
                )
            }
        }
    }
    Ok(())
}
