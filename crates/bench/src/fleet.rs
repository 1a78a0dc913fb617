//! An in-process fleet of simulated workers: each speaks the real worker protocol over a
//! real gRPC stream (many streams share a few HTTP/2 connections) and completes every task it
//! is given at once, so that what is measured is the cluster itself.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use flotilla_core::model::{Captured, Outcome};
use flotilla_core::WorkerInfo;
use flotilla_proto::codec;
use flotilla_proto::grpc::worker_service_client::WorkerServiceClient;
use flotilla_proto::grpc::Envelope;
use flotilla_proto::wire::{MasterBody, MasterMsg, WorkerMsg, PROTOCOL_VERSION};

#[derive(Default)]
pub struct FleetStats {
    pub connected: AtomicU64,
    pub completed: AtomicU64,
    pub heartbeats: AtomicU64,
    /// Sessions that failed to open or were turned away (not the leader, refused): a stuck
    /// fleet says why.
    pub refused: AtomicU64,
    pub failed: AtomicU64,
}

pub struct Fleet {
    pub stats: Arc<FleetStats>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn channel(address: &str, connector: &flotilla_tls::Connector) -> anyhow::Result<Channel> {
    Endpoint::from_shared(format!("http://{address}"))?
        .connect_with_connector(connector.clone())
        .await
        .with_context(|| format!("cannot connect to {address}"))
}

/// Starts `workers` simulated workers with `cpus` slots each, connected to `leader`,
/// sharing one HTTP/2 connection per `per_connection` workers.
/// `connector`: how a worker of the cluster connects (TLS with the worker certificate).
pub async fn start(
    connector: &flotilla_tls::Connector,
    leader: &str,
    workers: usize,
    cpus: u32,
    per_connection: usize,
) -> anyhow::Result<Fleet> {
    start_with_output(connector, leader, workers, cpus, per_connection, Vec::new()).await
}

/// The same, every task reporting `stdout` as its output.
pub async fn start_with_output(
    connector: &flotilla_tls::Connector,
    leader: &str,
    workers: usize,
    cpus: u32,
    per_connection: usize,
    stdout: Vec<u8>,
) -> anyhow::Result<Fleet> {
    let stdout = Captured::from_bytes(&stdout, stdout.len() as u64);
    let stats = Arc::new(FleetStats::default());
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut ch = channel(leader, connector).await?;
    for i in 0..workers {
        if i > 0 && i % per_connection == 0 {
            ch = channel(leader, connector).await?;
        }
        let client = WorkerServiceClient::new(ch.clone());
        tokio::spawn(simulated_worker(client, i, cpus, stdout.clone(), stats.clone(), stop_rx.clone()));
    }
    Ok(Fleet { stats, stop })
}

fn encode(msg: &WorkerMsg) -> Envelope {
    Envelope { payload: codec::encode("worker message", msg).unwrap_or_default() }
}

async fn simulated_worker(
    client: WorkerServiceClient<Channel>,
    index: usize,
    cpus: u32,
    stdout: Captured,
    stats: Arc<FleetStats>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    // A leader that is not ready yet answers "not leader": try again, like a real worker.
    loop {
        let welcomed = session(client.clone(), index, cpus, &stdout, &stats, &mut stop).await;
        if *stop.borrow() {
            return;
        }
        if welcomed {
            stats.connected.fetch_sub(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One session; true if it was welcomed.
async fn session(
    mut client: WorkerServiceClient<Channel>,
    index: usize,
    cpus: u32,
    stdout: &Captured,
    stats: &FleetStats,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    let (tx, rx) = mpsc::unbounded_channel::<Envelope>();
    let hello = WorkerMsg::Hello {
        protocol: PROTOCOL_VERSION,
        info: WorkerInfo {
            name: format!("sim-{index:05}"),
            instance: index as u64 + 1,
            cpus,
            // What a real worker starts with before it measures its tasks (16 per cpu).
            queue: cpus * 16,
            memory: None,
            resources: Default::default(),
            labels: BTreeMap::new(),
        },
        known: Vec::new(),
        highest_term: 0,
    };
    let _ = tx.send(encode(&hello));
    let Ok(response) = client.session(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)).await else {
        stats.failed.fetch_add(1, Ordering::Relaxed);
        return false;
    };
    let mut inbound = response.into_inner();
    let mut beat = tokio::time::interval(Duration::from_secs(3600));
    let mut welcomed = false;
    let done = Outcome { exit_code: Some(0), stdout: stdout.clone(), ..Default::default() };
    loop {
        tokio::select! {
            _ = stop.changed() => return welcomed,
            _ = beat.tick() => {
                if welcomed {
                    if tx.send(encode(&WorkerMsg::Heartbeat)).is_err() {
                        return welcomed;
                    }
                    stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                }
            }
            msg = inbound.message() => {
                let Ok(Some(env)) = msg else { return welcomed };
                let Ok(msg) = codec::decode::<MasterMsg>("master message", &env.payload) else { return welcomed };
                let mut reports = Vec::new();
                for body in msg.body.flatten() {
                match body {
                    MasterBody::Welcome { heartbeat_ms, .. } => {
                        welcomed = true;
                        stats.connected.fetch_add(1, Ordering::Relaxed);
                        // Spread the heartbeats of a large fleet over the interval.
                        let period = Duration::from_millis(heartbeat_ms.max(10));
                        let offset = period.mul_f64((index % 997) as f64 / 997.0);
                        beat = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
                    }
                    MasterBody::Run(run) => {
                        // Done as soon as it is given (too quick to be reported as started).
                        reports.push(WorkerMsg::Finished { task: run.task, fence: run.fence, outcome: done.clone() });
                        stats.completed.fetch_add(1, Ordering::Relaxed);
                    }
                    MasterBody::RunWith { run, .. } => {
                        reports.push(WorkerMsg::Finished { task: run.task, fence: run.fence, outcome: done.clone() });
                        stats.completed.fetch_add(1, Ordering::Relaxed);
                    }
                    MasterBody::NotLeader { .. } | MasterBody::Refused { .. } => {
                        stats.refused.fetch_add(1, Ordering::Relaxed);
                        return welcomed;
                    }
                    // Nothing waits in its queue: a revocation has nothing to give back.
                    MasterBody::Stop { .. } | MasterBody::Ack { .. } | MasterBody::Batch(_) | MasterBody::Echo { .. } | MasterBody::Revoke { .. } | MasterBody::Members { .. } | MasterBody::Drained | MasterBody::Peers { .. } | MasterBody::Replicate { .. } | MasterBody::Discard { .. } => {}
                }
                }
                if !reports.is_empty() && tx.send(encode(&WorkerMsg::Batch(reports))).is_err() {
                    return welcomed;
                }
            }
        }
    }
}
