//! Worker sessions: the I/O shell around [`LeaderCore`], which makes every decision.
//!
//! Each worker keeps one gRPC bidirectional stream open to a master. This module accepts the
//! streams, decodes what arrives (gathering what has already arrived into one input, so a
//! busy worker's reports become one proposal), feeds the core with the time and the replicated
//! state, and carries out its effects: messages go on the streams, closed streams end,
//! proposals go to the [`Proposer`] in the order the core made them, and their outcomes come
//! back to the core. A driver task ticks the core (deadlines, liveness, scheduling) on a
//! timer and whenever the state changes.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use flotilla_core::command::Kill;
use flotilla_core::records::RecordReader;
use flotilla_core::state::ClusterState;
use flotilla_core::Command;
use flotilla_proto::codec;
use flotilla_proto::grpc::worker_service_server::WorkerService;
use flotilla_proto::grpc::Envelope;
use flotilla_proto::wire::{MasterMsg, WorkerMsg};
use flotilla_raft::state_machine::Shared;
use flotilla_session::leader::{
    Effect, Failure, LeaderConfig, LeaderCore, Observation, ProposalId, Replica, SessionId, MAX_REPORTS,
};

use crate::metrics::Metrics;
use crate::proposer::{ProposeError, Proposer};

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The replicated state as the core reads it: under the state machine's lock, only when an
/// input needs it (heartbeats and reports do not).
struct Current<'a>(&'a Shared);

impl Replica for Current<'_> {
    fn read<R>(&self, f: impl FnOnce(&ClusterState, &dyn RecordReader) -> R) -> R {
        let data = self.0.read();
        let records = self.0.records_when_read();
        f(&data.state, &records)
    }
}

struct Outbound {
    tx: mpsc::UnboundedSender<MasterMsg>,
    /// Stops the task reading the worker's messages.
    cancel: CancellationToken,
}

struct Inner {
    core: LeaderCore,
    streams: HashMap<SessionId, Outbound>,
    /// The effects buffer, kept between inputs.
    effects: Vec<Effect>,
}

/// The worker sessions of this master and the core that decides for them.
pub struct Sessions {
    inner: Mutex<Inner>,
    next_id: AtomicU64,
    proposer: Proposer,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
}

impl Sessions {
    pub fn new(config: LeaderConfig, proposer: Proposer, shared: Arc<Shared>, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Sessions {
            inner: Mutex::new(Inner { core: LeaderCore::new(config), streams: HashMap::new(), effects: Vec::new() }),
            next_id: AtomicU64::new(1),
            proposer,
            shared,
            metrics,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update of the core is one call that leaves it consistent; a panic in a shell
        // task while holding the lock does not make it unusable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs one input through the core (which reads the state, under the state's lock taken
    /// after the core's, only if the input needs it)
    /// and carries out the effects: stream effects at once, under the lock, so every stream
    /// sees messages in the order the core made them; proposals after, in order.
    async fn drive(self: &Arc<Self>, input: impl FnOnce(&mut LeaderCore, Instant, &Current<'_>, &mut Vec<Effect>)) {
        let proposals = self.step(input);
        // Most inputs (heartbeats) propose nothing: no task, no allocation.
        if !proposals.is_empty() {
            self.propose(proposals).await;
        }
    }

    fn step(
        &self,
        input: impl FnOnce(&mut LeaderCore, Instant, &Current<'_>, &mut Vec<Effect>),
    ) -> Vec<(ProposalId, Vec<Command>)> {
        let mut inner = self.lock();
        // One buffer reused for every input: a heartbeat costs no allocation.
        let mut effects = std::mem::take(&mut inner.effects);
        input(&mut inner.core, Instant::now(), &Current(&self.shared), &mut effects);
        let proposals = self.act(&mut inner, &mut effects);
        inner.effects = effects;
        proposals
    }

    /// Carries out stream and observation effects; returns the proposals.
    fn act(&self, inner: &mut Inner, effects: &mut Vec<Effect>) -> Vec<(ProposalId, Vec<Command>)> {
        let mut proposals = Vec::new();
        for effect in effects.drain(..) {
            match effect {
                Effect::Send { session, msg } => {
                    if let Some(s) = inner.streams.get(&session) {
                        let _ = s.tx.send(msg);
                    }
                }
                Effect::Close { session } => {
                    if let Some(s) = inner.streams.remove(&session) {
                        s.cancel.cancel();
                    }
                }
                Effect::Propose { id, commands } => proposals.push((id, commands)),
                Effect::Observe(o) => self.observe(inner.core.config(), o),
            }
        }
        proposals
    }

    fn observe(&self, config: &LeaderConfig, observation: Observation) {
        match observation {
            Observation::Heartbeat { gap } => self.metrics.observe_heartbeat(gap, config.heartbeat),
            Observation::WorkerStats { worker, running, queued, spawned, spawn_micros } => {
                self.metrics.worker_reported(&worker, running, queued, spawned, spawn_micros)
            }
            Observation::RoundTrip(rtt) => self.metrics.observe_heartbeat_rtt(rtt),
            Observation::Placement { took, assigned } => self.metrics.observe_placement(took, assigned),
            Observation::SessionOpened { worker, incarnation, attached } => {
                tracing::info!(%worker, incarnation, attached, "worker session open")
            }
            Observation::SessionClosed { worker } => tracing::info!(%worker, "worker session closed"),
            Observation::WorkerSilent { worker, incarnation, silent } => {
                tracing::warn!(%worker, incarnation, silent_s = silent.as_secs_f64(), "worker lost")
            }
            Observation::ProtocolError { session, error } => tracing::debug!(session, %error, "worker session ended"),
            Observation::CopyFailed { worker, task, error } => {
                tracing::warn!(%worker, %task, %error, "a worker could not take the copy of outputs it was asked for")
            }
            Observation::RecordsUnreadable { task, error } => {
                tracing::error!(%task, %error, "cannot send an assignment: the stored task records are unreadable")
            }
        }
    }

    /// Hands proposals to the proposer in order, and their outcomes back to the core.
    /// Boxed: the follow-up proposals of an outcome come back through this function.
    fn propose(self: &Arc<Self>, proposals: Vec<(ProposalId, Vec<Command>)>) -> BoxFuture {
        let this = self.clone();
        Box::pin(async move { this.propose_in_order(proposals).await })
    }

    async fn propose_in_order(self: Arc<Self>, proposals: Vec<(ProposalId, Vec<Command>)>) {
        for (id, commands) in proposals {
            // Enqueue in order; wait for the commit elsewhere so the stream keeps flowing.
            let pending = self.proposer.enqueue(commands).await;
            let sessions = self.clone();
            tokio::spawn(async move {
                let outcome = pending.await.unwrap_or(Err(ProposeError::Dropped));
                let proposals = match outcome {
                    Ok(responses) => {
                        sessions.step(|core, now, state, out| core.on_applied(now, state, id, &responses, out))
                    }
                    Err(e) => {
                        let failure = match e {
                            ProposeError::NotLeader { .. } => Failure::NotLeader,
                            ProposeError::Fatal(_) | ProposeError::Dropped | ProposeError::NotUpgraded(_) => {
                                Failure::Other
                            }
                        };
                        sessions.step(|core, now, _, out| core.on_failed(now, id, failure, out))
                    }
                };
                if !proposals.is_empty() {
                    sessions.propose(proposals).await;
                }
            });
        }
    }

    /// Raft made this master leader for `term`.
    pub async fn lead(self: &Arc<Self>, term: u64) {
        self.drive(|core, now, _, out| core.lead(now, term, out)).await;
    }

    /// This master follows in `term`; `leader` is the leader's address if known.
    pub async fn follow(self: &Arc<Self>, term: u64, leader: Option<String>) {
        self.drive(|core, _, _, out| core.follow(term, leader, out)).await;
    }

    /// The group's masters are these (from the Raft membership): workers are told.
    pub async fn set_masters(self: &Arc<Self>, addresses: Vec<String>) {
        self.drive(|core, _, _, out| core.set_masters(addresses, out)).await;
    }

    /// The term this master leads and can act in (its state is current).
    pub fn ready_term(&self) -> Option<u64> {
        self.lock().core.ready_term()
    }

    /// The release each connected worker reported (empty on a follower).
    pub fn worker_versions(&self) -> HashMap<Arc<str>, String> {
        self.lock().core.worker_versions()
    }

    /// When the leader last heard from each worker (empty on a follower). Take it before the
    /// state's lock, never under it: the core's lock comes first everywhere.
    pub fn last_seen_all(&self) -> HashMap<Arc<str>, Instant> {
        self.lock().core.last_seen_all()
    }

    /// Tells workers to stop attempts the state took from them.
    pub async fn stop_attempts(self: &Arc<Self>, kills: &[Kill]) {
        self.drive(|core, _, _, out| core.stop_attempts(kills, out)).await;
    }

    /// Ticks the core until `shutdown`: on a timer (deadlines, liveness) and after every
    /// change of the state (scheduling).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut applied = self.shared.subscribe();
        let period = {
            let inner = self.lock();
            (inner.core.config().worker_timeout / 10).clamp(Duration::from_millis(20), Duration::from_millis(100))
        };
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = applied.changed() => if changed.is_err() { break },
                _ = tick.tick() => {}
            }
            self.drive(|core, now, state, out| core.on_tick(now, state, out)).await;
        }
        self.follow(0, None).await;
    }

    fn open(&self, tx: mpsc::UnboundedSender<MasterMsg>, cancel: CancellationToken) -> SessionId {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.lock();
        inner.streams.insert(id, Outbound { tx, cancel });
        inner.core.open(Instant::now(), id);
        id
    }

    async fn closed(self: &Arc<Self>, session: SessionId) {
        let proposals = {
            let mut inner = self.lock();
            inner.streams.remove(&session);
            let mut effects = Vec::new();
            inner.core.closed(session, &mut effects);
            self.act(&mut inner, &mut effects)
        };
        self.propose(proposals).await;
    }
}

/// The gRPC service workers connect to.
#[derive(Clone)]
pub struct WorkerSvc {
    pub sessions: Arc<Sessions>,
}

type OutStream = Pin<Box<dyn Stream<Item = Result<Envelope, Status>> + Send>>;

#[tonic::async_trait]
impl WorkerService for WorkerSvc {
    type SessionStream = OutStream;

    async fn session(&self, request: Request<Streaming<Envelope>>) -> Result<Response<OutStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel::<MasterMsg>();
        let cancel = CancellationToken::new();
        let session = self.sessions.open(tx, cancel.clone());
        let sessions = self.sessions.clone();
        tokio::spawn(async move {
            if let Err(e) = read_session(&sessions, session, inbound, &cancel).await {
                tracing::debug!(error = %e, "worker session ended");
            }
            sessions.closed(session).await;
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

/// Feeds the worker's messages to the core until the stream ends or the core closes it.
async fn read_session(
    sessions: &Arc<Sessions>,
    session: SessionId,
    mut inbound: Streaming<Envelope>,
    cancel: &CancellationToken,
) -> Result<(), String> {
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            m = recv(&mut inbound) => m?,
        };
        let Some(first) = msg else { return Ok(()) };
        // Take every report that has already arrived as well: one input, one proposal. (A
        // heartbeat, most of what an idle fleet sends, goes alone: no second poll.)
        let mut batch: Vec<WorkerMsg> = Vec::new();
        if !matches!(first, WorkerMsg::Hello { .. } | WorkerMsg::Heartbeat | WorkerMsg::Stats { .. }) {
            while batch.len() < MAX_REPORTS {
                match recv_ready(&mut inbound).await {
                    Some(Ok(Some(more))) => batch.push(more),
                    Some(Ok(None)) | None => break,
                    Some(Err(e)) => return Err(e),
                }
            }
        }
        let msg = if batch.is_empty() {
            first
        } else {
            batch.insert(0, first);
            WorkerMsg::Batch(batch)
        };
        sessions.drive(|core, now, state, out| core.on_message(now, state, session, msg, out)).await;
    }
}
