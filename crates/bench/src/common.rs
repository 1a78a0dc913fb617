//! Shared pieces: the local cluster (this very binary plays master and worker), waiting for
//! jobs, percentiles, and the figure table every benchmark prints.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use flotilla::local::LocalCluster;
use flotilla_client::Client;
use flotilla_proto::api::JobState;

pub struct Bench {
    pub cluster: LocalCluster,
    /// Removed when the benchmark ends (after the cluster, which is dropped first).
    pub _dir: tempfile::TempDir,
}

/// Run the clusters in plain text (`--plain`), to measure what TLS costs.
pub static PLAIN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Bench {
    /// `masters` masters on free loopback ports, with extra master flags; no workers yet.
    pub async fn start(masters: u64, master_args: &[&str]) -> anyhow::Result<Bench> {
        let dir = tempfile::Builder::new().prefix("flotilla-bench-").tempdir()?;
        let exe: PathBuf = std::env::current_exe()?;
        let mut cluster = if PLAIN.load(std::sync::atomic::Ordering::Relaxed) {
            LocalCluster::plain(&exe, dir.path(), masters, None)?
        } else {
            LocalCluster::new(&exe, dir.path(), masters, None)?
        };
        cluster.master_args = master_args.iter().map(|s| s.to_string()).collect();
        cluster.start_masters()?;
        cluster.wait_leader(Duration::from_secs(60)).await.context("no leader elected")?;
        Ok(Bench { cluster, _dir: dir })
    }

    /// How a simulated worker connects: as a real one does (TLS with the worker certificate).
    pub fn worker_connector(&self) -> anyhow::Result<flotilla_tls::Connector> {
        let identity = match &self.cluster.certs {
            Some(dir) => Some(flotilla_tls::Identity::load(dir, flotilla_tls::Role::Worker)?),
            None => None,
        };
        Ok(flotilla_tls::Connector::new(identity, flotilla_tls::Alpn::H2))
    }

    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(self.cluster.client()?.with_retry_for(Duration::from_secs(60)))
    }

    pub async fn leader_pid(&self) -> anyhow::Result<(u64, u32)> {
        let id = self.cluster.wait_leader(Duration::from_secs(30)).await.context("no leader")?;
        Ok((id, self.cluster.masters[&id].id()))
    }
}

/// Waits until the job has finished; returns when it was first seen finished.
pub async fn wait_job(client: &Client, id: u64, timeout: Duration) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        // Long poll: the leader answers as soon as the job ends (no polling load on it).
        let j = client.job_when_finished(id, Duration::from_secs(5)).await?;
        match j.state {
            JobState::Succeeded => return Ok(Instant::now()),
            JobState::Failed | JobState::Cancelled => bail!("job {id} {}: {:?}", j.state, j.failure),
            _ => {}
        }
        if Instant::now() > deadline {
            bail!("job {id} did not finish within {timeout:?} ({}/{} done)", j.tasks.succeeded, j.tasks.total);
        }
    }
}

/// The p-th percentile (0..=100) of samples, nearest rank.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut s = samples.to_vec();
    s.sort();
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// One line of results: `benchmark  figure  value  [target]`.
pub fn figure(bench: &str, name: &str, value: String, target: &str) {
    if target.is_empty() {
        println!("{bench:<10} {name:<48} {value}");
    } else {
        println!("{bench:<10} {name:<48} {value:<24} target {target}");
    }
}
