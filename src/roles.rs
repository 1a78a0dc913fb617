//! `flotilla master` and `flotilla worker`: argument checking, then the role's `run`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use tokio_util::sync::CancellationToken;

use flotilla_core::units::{parse_duration, parse_size};
use flotilla_master::config::parse_peers;
use flotilla_master::MasterConfig;
use flotilla_worker::WorkerConfig;

use crate::cli::{MasterArgs, WorkerArgs};
use crate::read_token;

/// Cancels the token on SIGINT or SIGTERM.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        t.cancel();
    });
    token
}

pub async fn master(args: MasterArgs) -> anyhow::Result<()> {
    let listen: SocketAddr =
        args.listen.parse().map_err(|_| anyhow!("--listen '{}' is not an IP:PORT address", args.listen))?;
    let peers = parse_peers(&args.peers).map_err(|e| anyhow!("--peers: {e}"))?;
    let mut config = MasterConfig::new(args.id, listen, args.data_dir, peers);
    config.token = read_token(args.token_file.as_deref())?;
    config.worker_timeout = parse_duration(&args.worker_timeout).context("--worker-timeout")?;
    let election = parse_duration(&args.election_timeout).context("--election-timeout")?;
    let heartbeat = parse_duration(&args.heartbeat).context("--heartbeat")?;
    if heartbeat * 2 >= election {
        bail!(
            "--heartbeat ({}) must be less than half of --election-timeout ({})",
            args.heartbeat,
            args.election_timeout
        );
    }
    config.raft.election_min = election;
    config.raft.election_max = election * 2;
    config.raft.heartbeat = heartbeat;
    if args.snapshot_every < 10 {
        bail!("--snapshot-every must be at least 10");
    }
    config.raft.snapshot_every = args.snapshot_every;
    flotilla_master::run(config, shutdown_on_signals()).await?;
    Ok(())
}

pub fn parse_labels(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (k, v) = item.split_once('=').ok_or_else(|| anyhow!("label '{item}' is not KEY=VALUE"))?;
        if k.trim().is_empty() {
            bail!("label '{item}' has an empty key");
        }
        labels.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(labels)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "worker".to_string())
}

pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let name = args.name.unwrap_or_else(host_name);
    let cpus = match args.cpus {
        Some(c) => c,
        None => std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
    };
    let memory = args.memory.as_deref().map(parse_size).transpose().context("--memory")?;
    let data_dir = args.data_dir.unwrap_or_else(|| PathBuf::from(".flotilla").join(format!("worker-{name}")));
    let config = WorkerConfig {
        masters: args.masters.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
        name,
        cpus,
        prefetch: args.prefetch.unwrap_or(cpus.saturating_mul(16)),
        adaptive_prefetch: args.prefetch.is_none(),
        metrics: args.metrics,
        memory,
        labels: parse_labels(&args.labels)?,
        data_dir,
        token: read_token(args.token_file.as_deref())?,
    };
    flotilla_worker::run(config, shutdown_on_signals()).await?;
    Ok(())
}
