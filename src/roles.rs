//! `flotilla master` and `flotilla worker`: argument checking, then the role's `run`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use tokio_util::sync::CancellationToken;

use flotilla_core::units::{parse_duration, parse_size};
use flotilla_master::config::parse_peers;
use flotilla_master::config::Bootstrap;
use flotilla_master::MasterConfig;
use flotilla_worker::WorkerConfig;

use crate::cli::{MasterArgs, WorkerArgs};
use crate::read_token;

/// A worker's stop signals: the first SIGTERM or SIGINT cancels `drain` (drain, then exit),
/// a second one `now`.
pub fn drain_on_signals() -> (CancellationToken, CancellationToken) {
    let (drain, now) = (CancellationToken::new(), CancellationToken::new());
    let (d, n) = (drain.clone(), now.clone());
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        for token in [d, n] {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            token.cancel();
        }
    });
    (drain, now)
}

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
    let id = args.id.ok_or_else(|| anyhow!("--id is required"))?;
    let data_dir = args.data_dir.clone().ok_or_else(|| anyhow!("--data-dir is required"))?;
    let listen: SocketAddr =
        args.listen.parse().map_err(|_| anyhow!("--listen '{}' is not an IP:PORT address", args.listen))?;
    let advertise = args.advertise.clone().unwrap_or_else(|| listen.to_string());
    let (peers, bootstrap) = match (&args.peers, &args.join) {
        (Some(peers), _) => (parse_peers(peers).map_err(|e| anyhow!("--peers: {e}"))?, Bootstrap::Peers),
        (None, join) => {
            let through: Vec<String> = join
                .as_deref()
                .unwrap_or("")
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            if join.is_some() && through.is_empty() {
                bail!("--join needs at least one HOST:PORT of a running master");
            }
            let bootstrap = if through.is_empty() { Bootstrap::AwaitAdd } else { Bootstrap::Join(through) };
            (BTreeMap::from([(id, advertise.clone())]), bootstrap)
        }
    };
    let mut config = MasterConfig::new(id, listen, data_dir, peers);
    config.bootstrap = bootstrap;
    config.token = crate::token_or_admin(args.token_file.as_deref(), args.certs.as_deref())?;
    config.tls = args
        .certs
        .clone()
        .map(|certs| flotilla_master::config::TlsConfig { certs, accept_plaintext: args.tls_upgrade });
    config.insecure_plaintext = args.insecure_plaintext;
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
    config.labels = parse_labels(&args.labels).context("--labels")?;
    if args.max_connections_per_client == 0 {
        bail!("--max-connections-per-client must be at least 1");
    }
    config.limits.connections_per_client = args.max_connections_per_client;
    config.limits.idle_timeout = parse_duration(&args.idle_timeout).context("--idle-timeout")?;
    if config.limits.idle_timeout.is_zero() {
        bail!("--idle-timeout must be more than 0");
    }
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

/// Parses `gpu=2,license=4` (a resource offer or request).
pub fn parse_resources(text: &str) -> anyhow::Result<BTreeMap<String, u32>> {
    let mut resources = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, count) = item.split_once('=').ok_or_else(|| anyhow!("resource '{item}' is not NAME=COUNT"))?;
        let name = name.trim();
        if !flotilla_core::model::valid_resource_name(name) {
            bail!("invalid resource name '{name}' (lower-case letters, digits, '_' and '-'; cpus and memory have their own flags)");
        }
        let count: u32 =
            count.trim().parse().map_err(|_| anyhow!("resource '{item}': '{}' is not a count", count.trim()))?;
        if count == 0 {
            bail!("resource '{item}': the count must be at least 1");
        }
        if resources.insert(name.to_string(), count).is_some() {
            bail!("resource '{name}' is listed twice");
        }
    }
    if resources.len() > flotilla_core::model::MAX_RESOURCES {
        bail!("too many resources (limit {})", flotilla_core::model::MAX_RESOURCES);
    }
    Ok(resources)
}

/// The machine's total memory (MemTotal in /proc/meminfo), if it can be read.
fn machine_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
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
    let memory = match args.memory.as_deref() {
        Some(m) => Some(parse_size(m).context("--memory")?),
        None => machine_memory(),
    };
    let resources = parse_resources(&args.resources).context("--resources")?;
    let data_dir = args.data_dir.unwrap_or_else(|| PathBuf::from(".flotilla").join(format!("worker-{name}")));
    let config = WorkerConfig {
        masters: args.masters.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
        name,
        cpus,
        prefetch: args.prefetch.unwrap_or(cpus.saturating_mul(16)),
        adaptive_prefetch: args.prefetch.is_none(),
        metrics: args.metrics,
        memory,
        resources,
        labels: parse_labels(&args.labels)?,
        data_dir,
        token: read_token(args.token_file.as_deref())?,
        certs: args.certs.clone(),
        run_as: args.run_as.clone(),
        keep_task_dirs: args.keep_task_dirs,
        drain_deadline: match args.drain_deadline.trim() {
            "none" => None,
            d => Some(parse_duration(d).context("--drain-deadline")?),
        },
        outputs_listen: args.outputs_listen,
        advertise: args.advertise.clone(),
        outputs_gc: parse_duration(&args.outputs_gc).context("--outputs-gc")?,
        outputs_gc_age: parse_duration(&args.outputs_gc_age).context("--outputs-gc-age")?,
        exit_when_drained: args.exit_when_drained,
    };
    let (drain, now) = drain_on_signals();
    flotilla_worker::run(config, drain, now).await?;
    Ok(())
}
