//! Worker sessions: the leader side of each worker's long-lived gRPC stream.
//!
//! A session registers (or re-attaches) the worker, reconciles what the worker holds with what
//! the replicated state says it should hold, then turns the worker's messages into commands.
//! Only the leader keeps sessions; on losing leadership every session is closed, and workers
//! reconnect to the new leader.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use flotilla_core::model::{Fence, TaskId};
use flotilla_core::session::{self, Reply};
use flotilla_core::state::WorkerState;
use flotilla_core::{Command, Response as Applied};
use flotilla_proto::codec;
use flotilla_proto::grpc::worker_service_server::WorkerService;
use flotilla_proto::grpc::Envelope;
use flotilla_proto::wire::{MasterBody, MasterMsg, RunTask, WorkerMsg, PROTOCOL_VERSION};

use crate::node::Master;

/// How long a new stream may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

struct Handle {
    id: u64,
    term: u64,
    tx: mpsc::UnboundedSender<MasterMsg>,
}

/// The sessions of the workers connected to this leader, and when each was last heard from.
#[derive(Default)]
pub struct Sessions {
    next_id: AtomicU64,
    by_worker: Mutex<HashMap<String, Handle>>,
    last_seen: Mutex<HashMap<String, Instant>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Handle>> {
        self.by_worker.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.last_seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends to a worker's session, if it has one. Lost messages are fine: a worker that
    /// reconnects is reconciled from the replicated state.
    pub fn send(&self, worker: &str, body: MasterBody) -> bool {
        let map = self.lock();
        match map.get(worker) {
            Some(h) => h.tx.send(MasterMsg { term: h.term, body }).is_ok(),
            None => false,
        }
    }

    /// Notes a message from `worker`; returns the time since its previous one.
    pub fn touch(&self, worker: &str) -> Option<Duration> {
        let now = Instant::now();
        let mut seen = self.seen();
        match seen.get_mut(worker) {
            Some(t) => Some(now.saturating_duration_since(std::mem::replace(t, now))),
            None => {
                seen.insert(worker.to_string(), now);
                None
            }
        }
    }

    /// When the worker was last heard from by this leader.
    pub fn last_seen(&self, worker: &str) -> Option<Instant> {
        self.seen().get(worker).copied()
    }

    /// Of the given workers, those not heard from for longer than `timeout`, with how long.
    /// A worker not heard from yet starts its grace period now (after a leader change).
    /// One lock and no allocation per worker: the leader runs this over every worker
    /// several times a second.
    pub fn silent<'a>(
        &self,
        workers: impl Iterator<Item = (&'a str, u64)>,
        timeout: Duration,
    ) -> Vec<(String, u64, Duration)> {
        let now = Instant::now();
        let mut seen = self.seen();
        let mut silent = Vec::new();
        for (name, incarnation) in workers {
            let since = match seen.get(name) {
                Some(t) => now.saturating_duration_since(*t),
                None => {
                    seen.insert(name.to_string(), now);
                    Duration::ZERO
                }
            };
            if since > timeout {
                silent.push((name.to_string(), incarnation, since));
            }
        }
        silent
    }

    /// Whether the worker has a session heard from within `within`.
    pub fn is_connected(&self, worker: &str, within: Duration) -> bool {
        self.lock().contains_key(worker) && self.last_seen(worker).is_some_and(|t| t.elapsed() < within)
    }

    pub fn forget(&self, worker: &str) {
        self.seen().remove(worker);
        self.lock().remove(worker);
    }

    /// Drops every session (leadership lost): their streams end and workers reconnect.
    pub fn clear(&self) {
        self.lock().clear();
        self.seen().clear();
    }

    fn register(&self, worker: &str, term: u64, tx: mpsc::UnboundedSender<MasterMsg>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(worker.to_string(), Handle { id, term, tx });
        self.touch(worker);
        id
    }

    fn unregister(&self, worker: &str, id: u64) {
        let mut map = self.lock();
        if map.get(worker).is_some_and(|h| h.id == id) {
            map.remove(worker);
        }
    }
}

/// The gRPC service workers connect to.
#[derive(Clone)]
pub struct WorkerSvc {
    pub master: Arc<Master>,
}

type OutStream = Pin<Box<dyn Stream<Item = Result<Envelope, Status>> + Send>>;

#[tonic::async_trait]
impl WorkerService for WorkerSvc {
    type SessionStream = OutStream;

    async fn session(&self, request: Request<Streaming<Envelope>>) -> Result<Response<OutStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel::<MasterMsg>();
        let master = self.master.clone();
        tokio::spawn(async move {
            if let Err(e) = run_session(master, inbound, tx).await {
                tracing::debug!(error = %e, "worker session ended");
            }
        });
        let out = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(|msg| {
            codec::encode("master message", &msg)
                .map(|payload| Envelope { payload })
                .map_err(|e| Status::internal(e.to_string()))
        });
        Ok(Response::new(Box::pin(out)))
    }
}

async fn recv(inbound: &mut Streaming<Envelope>) -> Result<Option<WorkerMsg>, String> {
    match inbound.message().await {
        Ok(Some(env)) => codec::decode("worker message", &env.payload).map(Some).map_err(|e| e.to_string()),
        Ok(None) => Ok(None),
        Err(status) => Err(status.to_string()),
    }
}

async fn run_session(
    master: Arc<Master>,
    mut inbound: Streaming<Envelope>,
    tx: mpsc::UnboundedSender<MasterMsg>,
) -> Result<(), String> {
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, recv(&mut inbound)).await {
        Ok(Ok(Some(m))) => m,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err("no hello within 10 s".to_string()),
    };
    let WorkerMsg::Hello { protocol, info, known, highest_term: _ } = hello else {
        return Err("the first message of a session must be hello".to_string());
    };
    let refuse = |term: u64, reason: String| {
        let _ = tx.send(MasterMsg { term, body: MasterBody::Refused { reason } });
    };
    if protocol != PROTOCOL_VERSION {
        refuse(0, format!("protocol {protocol} is not supported (this master speaks {PROTOCOL_VERSION})"));
        return Ok(());
    }
    let Some(lead) = master.leadership() else {
        let leader = master.leader_address();
        let _ = tx.send(MasterMsg { term: master.current_term(), body: MasterBody::NotLeader { leader } });
        return Ok(());
    };
    let term = lead.term;
    // Reconciling from a state that misses entries committed before this leader took over
    // would stop attempts that are in fact assigned; wait until the state is current.
    if !lead.wait_ready(Duration::from_secs(10)).await {
        let _ = tx.send(MasterMsg { term, body: MasterBody::NotLeader { leader: master.leader_address() } });
        return Ok(());
    }
    if info.name.is_empty() || info.name.len() > flotilla_core::model::MAX_NAME_LEN {
        refuse(term, "worker name must be 1 to 256 characters".to_string());
        return Ok(());
    }

    // Register, unless this very process is already a ready member (a re-attach).
    let (attached, other_instance) = {
        let data = master.shared.read();
        let ready = data.state.worker(&info.name).filter(|w| w.state == WorkerState::Ready);
        (
            ready.filter(|w| w.instance == info.instance).map(|w| w.incarnation),
            ready.is_some_and(|w| w.instance != info.instance),
        )
    };
    // Another live process under the same name: two workers would keep evicting each other.
    // A restarted worker is accepted once its old session is gone (closed, or timed out).
    if other_instance && master.sessions.is_connected(&info.name, master.config.worker_timeout) {
        refuse(term, format!("a worker named '{}' is already connected; give each worker a unique --name", info.name));
        return Ok(());
    }
    let incarnation = match attached {
        Some(i) => i,
        None => match master.proposer.propose_one(Command::RegisterWorker(info.clone())).await {
            Ok(Applied::WorkerRegistered { incarnation, .. }) => incarnation,
            Ok(Applied::Invalid { reason }) => {
                refuse(term, reason.to_string());
                return Ok(());
            }
            Ok(other) => return Err(format!("unexpected register response {other:?}")),
            Err(e) => {
                let _ = tx.send(MasterMsg { term, body: MasterBody::NotLeader { leader: master.leader_address() } });
                return Err(format!("register failed: {e}"));
            }
        },
    };
    let name = info.name.clone();
    // Register before reading the state to reconcile: an assignment committed after this
    // point is pushed to the session, one committed before is found by the reconcile.
    let session_id = master.sessions.register(&name, term, tx.clone());
    let heartbeat_ms = master.config.heartbeat_interval().as_millis() as u64;
    let _ =
        tx.send(MasterMsg { term, body: MasterBody::Welcome { leader: master.config.id, incarnation, heartbeat_ms } });
    tracing::info!(worker = %name, incarnation, attached = attached.is_some(), "worker session open");

    reconcile(&master, &name, &known, term, &tx);

    let weak = tx.downgrade();
    drop(tx);
    let result = session_loop(&master, &name, &mut inbound, &weak, &lead.cancel, term).await;
    master.sessions.unregister(&name, session_id);
    tracing::info!(worker = %name, "worker session closed");
    result
}

/// Sends a (re)connected worker the committed assignments it lacks and stops the attempts
/// the state no longer gives it.
fn reconcile(master: &Master, name: &str, known: &[(TaskId, Fence)], term: u64, tx: &mpsc::UnboundedSender<MasterMsg>) {
    let data = master.shared.read();
    let plan = session::reconcile(&data.state, name, known);
    let mut bodies: Vec<MasterBody> = plan
        .run
        .iter()
        .filter_map(|(task, fence)| RunTask::for_attempt(&data.state, *task, *fence).map(MasterBody::Run))
        .collect();
    bodies.extend(plan.stop.iter().map(|(task, fence)| MasterBody::Stop { task: *task, fence: *fence }));
    if let Some(body) = MasterBody::batch(bodies) {
        let _ = tx.send(MasterMsg { term, body });
    }
}

/// The next message if one has already arrived, without waiting (a zero timeout would wait
/// for the timer driver's next tick).
async fn recv_ready(inbound: &mut Streaming<Envelope>) -> Option<Result<Option<WorkerMsg>, String>> {
    let mut next = std::pin::pin!(recv(inbound));
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match next.as_mut().poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

/// Most reports turned into one proposal.
const MAX_REPORTS: usize = 1024;

async fn session_loop(
    master: &Arc<Master>,
    name: &str,
    inbound: &mut Streaming<Envelope>,
    tx: &mpsc::WeakUnboundedSender<MasterMsg>,
    cancel: &CancellationToken,
    term: u64,
) -> Result<(), String> {
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            m = recv(inbound) => m?,
        };
        let Some(msg) = msg else { return Ok(()) };
        // Most messages from an idle fleet are heartbeats: no allocation, no second poll.
        if let WorkerMsg::Heartbeat | WorkerMsg::Stats { .. } = msg {
            let gap = master.sessions.touch(name);
            master.metrics.observe_heartbeat(gap, master.config.heartbeat_interval());
            if let WorkerMsg::Stats { running, queued, spawned, spawn_micros, echo, rtt_micros } = msg {
                master.metrics.worker_reported(name, running, queued, spawned, spawn_micros);
                if let Some(rtt) = rtt_micros {
                    master.metrics.observe_heartbeat_rtt(Duration::from_micros(rtt));
                }
                if let (Some(token), Some(tx)) = (echo, tx.upgrade()) {
                    let _ = tx.send(MasterMsg { term, body: MasterBody::Echo { token } });
                }
            }
            continue;
        }
        // Take every report that has already arrived as well: one proposal, one reply.
        let mut msgs = msg.flatten();
        while msgs.len() < MAX_REPORTS {
            match recv_ready(inbound).await {
                Some(Ok(Some(more))) => msgs.extend(more.flatten()),
                Some(Ok(None)) | None => break,
                Some(Err(e)) => return Err(e),
            }
        }
        let gap = master.sessions.touch(name);
        master.metrics.observe_heartbeat(gap, master.config.heartbeat_interval());
        let mut commands = Vec::with_capacity(msgs.len());
        let mut reports = Vec::with_capacity(msgs.len());
        for msg in msgs {
            let (command, report) = match msg {
                WorkerMsg::Heartbeat | WorkerMsg::Stats { .. } => continue,
                WorkerMsg::Hello { .. } => return Err("hello sent twice".to_string()),
                WorkerMsg::Batch(_) => continue, // flattened above
                WorkerMsg::Started { task, fence } => {
                    (Command::TaskStarted { task, fence, worker: name.to_string() }, Some((task, fence, false)))
                }
                WorkerMsg::Finished { task, fence, outcome } => (
                    Command::TaskFinished { task, fence, worker: name.to_string(), outcome },
                    Some((task, fence, true)),
                ),
                WorkerMsg::Queue { queue } => (Command::SetWorkerQueue { worker: name.to_string(), queue }, None),
            };
            commands.push(command);
            reports.push(report);
        }
        if commands.is_empty() {
            continue;
        }
        // Enqueue in order; wait for the commit elsewhere so the stream keeps flowing.
        let pending = master.proposer.enqueue(commands).await;
        let tx = tx.clone();
        tokio::spawn(async move {
            // Not committed: the worker resends its results after reconnecting.
            let Ok(Ok(responses)) = pending.await else { return };
            let bodies: Vec<MasterBody> = reports
                .into_iter()
                .zip(&responses)
                .filter_map(|(report, response)| {
                    let (task, fence, finished) = report?;
                    match session::reply(response, finished) {
                        Reply::Ack => Some(MasterBody::Ack { task, fence }),
                        Reply::Stop => Some(MasterBody::Stop { task, fence }),
                        Reply::Nothing => None,
                    }
                })
                .collect();
            if let (Some(body), Some(tx)) = (MasterBody::batch(bodies), tx.upgrade()) {
                let _ = tx.send(MasterMsg { term, body });
            }
        });
    }
}
