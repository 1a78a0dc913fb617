//! Batches commands from every source (API calls, worker sessions, the scheduler) into Raft
//! proposals: one log entry, one fsync round, many commands.
//!
//! Commands are handed to openraft in the order they were enqueued, so a worker's `Started`
//! is always before its `Finished`. One proposal is in flight at a time: whatever arrives
//! while it commits goes into the next one (group commit). Measured here, this gives 30-40%
//! more submits/s with 64 clients than 16 proposals in flight, at the same single-client
//! latency, because each log entry costs the leader a redb commit and a replication round.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use flotilla_core::version::Feature;
use flotilla_core::{Command, Proposal, Response};
use flotilla_proto::time::now_ms;
use flotilla_raft::{NodeId, Raft};

use crate::releases::{held_back, NotUpgraded, Releases};

/// Most commands in one log entry.
const MAX_BATCH: usize = 4096;
/// Most proposals awaiting commit at once (see the module comment).
const MAX_IN_FLIGHT: usize = 1;

#[derive(Clone, Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("this master is not the leader")]
    NotLeader { leader: Option<NodeId> },
    #[error("raft stopped: {0}")]
    Fatal(String),
    #[error("the proposal was dropped before it committed (leadership changed)")]
    Dropped,
    #[error(transparent)]
    NotUpgraded(#[from] NotUpgraded),
}

struct Pending {
    commands: Vec<Command>,
    reply: oneshot::Sender<Result<Vec<Response>, ProposeError>>,
}

/// How long a deferred command waits for a proposal to ride along with before it is proposed
/// alone (see [`Proposer::defer`]).
const DEFER_FOR: std::time::Duration = std::time::Duration::from_millis(50);

#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
    deferred: mpsc::Sender<Command>,
    in_flight: Arc<Semaphore>,
    raft: Raft,
    releases: Arc<Releases>,
    shared: Arc<flotilla_raft::state_machine::Shared>,
    /// Per feature (`Feature as usize`): the state was seen using it, so it is never gated
    /// again and the state need not be read for it (audit records come with every write).
    open: Arc<[AtomicBool; Feature::ALL.len()]>,
}

/// While held, nothing more is proposed (what arrives waits in the queue); the proposal in
/// flight when it was taken has finished.
pub struct Paused(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

impl Proposer {
    pub fn start(
        raft: Raft,
        metrics: Arc<crate::metrics::Metrics>,
        releases: Arc<Releases>,
        shared: Arc<flotilla_raft::state_machine::Shared>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(64 * 1024);
        let (deferred, deferred_rx) = mpsc::channel(64 * 1024);
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        tokio::spawn(batch_loop(raft.clone(), rx, deferred_rx, metrics, in_flight.clone()));
        let open = Arc::new(std::array::from_fn(|_| AtomicBool::new(false)));
        Proposer { tx, deferred, in_flight, raft, releases, shared, open }
    }

    /// Proposes a command nobody waits for (an audit record) with the next proposal, or alone
    /// after [`DEFER_FOR`] if none comes: under load it costs no entry of its own, so a
    /// client's next request does not wait for it. Refused like [`Proposer::enqueue`] while
    /// an older voter could not read it, and dropped if a burst filled the queue.
    pub fn defer(&self, command: Command) -> Result<(), ProposeError> {
        if let Some(refused) = self.held_back(std::slice::from_ref(&command)) {
            return Err(refused.into());
        }
        self.deferred.try_send(command).map_err(|_| ProposeError::Dropped)
    }

    /// Every command reaches the log through [`Proposer::enqueue`] or [`Proposer::defer`], so
    /// this is where a command that some voter's release could not decode is held back
    /// (rolling upgrades).
    fn held_back(&self, commands: &[Command]) -> Option<NotUpgraded> {
        let voters = || {
            let voters: Vec<NodeId> = self.raft.metrics().borrow().membership_config.membership().voter_ids().collect();
            self.releases.oldest(voters)
        };
        // A feature the replicated state already uses passed the gate once: every voter read
        // it then, and no release goes back (so a voter that is down now holds nothing back).
        let open = |f: Feature| self.open[f as usize].load(Ordering::Relaxed);
        let gated: Vec<Feature> = commands.iter().filter_map(Command::feature).filter(|f| !open(*f)).collect();
        let gated = if gated.is_empty() {
            gated
        } else {
            let data = self.shared.read();
            gated
                .into_iter()
                .filter(|f| {
                    let in_use = data.state.in_use(*f);
                    if in_use {
                        self.open[*f as usize].store(true, Ordering::Relaxed);
                    }
                    !in_use
                })
                .collect()
        };
        held_back(gated, voters)
    }

    /// Stops proposing until the guard is dropped: a leadership transfer needs the log to
    /// stand still while the new leader catches up to its last entry.
    pub async fn pause(&self) -> Option<Paused> {
        self.in_flight.clone().acquire_many_owned(MAX_IN_FLIGHT as u32).await.ok().map(Paused)
    }

    /// Enqueues commands (committed together, in order) and returns where their responses
    /// will arrive. Awaiting only the enqueue keeps the caller's order without waiting for
    /// the commit.
    pub async fn enqueue(&self, mut commands: Vec<Command>) -> oneshot::Receiver<Result<Vec<Response>, ProposeError>> {
        let (reply, rx) = oneshot::channel();
        if let Some(refused) = self.held_back(&commands) {
            // What an older voter can be told another way (a result without its outputs) is,
            // while the upgrade is under way.
            let downgraded: Option<Vec<Command>> =
                commands.iter().map(|c| if c.feature().is_some() { c.downgraded() } else { Some(c.clone()) }).collect();
            match downgraded {
                Some(d) if self.held_back(&d).is_none() => commands = d,
                _ => {
                    let _ = reply.send(Err(refused.into()));
                    return rx;
                }
            }
        }
        // A closed channel drops `reply`, which the receiver sees as `Dropped`.
        let _ = self.tx.send(Pending { commands, reply }).await;
        rx
    }

    /// Proposes commands and waits until they are committed and applied.
    pub async fn propose(&self, commands: Vec<Command>) -> Result<Vec<Response>, ProposeError> {
        let rx = self.enqueue(commands).await;
        rx.await.unwrap_or(Err(ProposeError::Dropped))
    }

    /// Proposes one command and waits for its response.
    pub async fn propose_one(&self, command: Command) -> Result<Response, ProposeError> {
        let mut responses = self.propose(vec![command]).await?;
        responses.pop().ok_or(ProposeError::Dropped)
    }
}

async fn batch_loop(
    raft: Raft,
    mut rx: mpsc::Receiver<Pending>,
    mut deferred: mpsc::Receiver<Command>,
    metrics: Arc<crate::metrics::Metrics>,
    in_flight: Arc<Semaphore>,
) {
    // Deferred commands taken off their channel, for the next proposal.
    let mut carried: Vec<Command> = Vec::new();
    loop {
        // A proposal someone waits for starts a batch at once; a deferred command waits a
        // little for one to ride along with.
        let first = tokio::select! {
            biased;
            p = rx.recv() => match p {
                Some(p) => Some(p),
                None => return,
            },
            Some(c) = deferred.recv() => {
                carried.push(c);
                match tokio::time::timeout(DEFER_FOR, rx.recv()).await {
                    Ok(Some(p)) => Some(p),
                    Ok(None) => return,
                    Err(_) => None,
                }
            }
        };
        let mut batch: Vec<Pending> = first.into_iter().collect();
        let mut count = batch.first().map_or(0, |p| p.commands.len());
        while count < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => {
                    count += p.commands.len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        // What was deferred meanwhile rides along, after the commands someone waits for (whose
        // responses come first, so each caller's slice stays where it was).
        while count + carried.len() < MAX_BATCH {
            match deferred.try_recv() {
                Ok(c) => carried.push(c),
                Err(_) => break,
            }
        }
        if batch.is_empty() && carried.is_empty() {
            continue;
        }
        let mut commands = Vec::with_capacity(count + carried.len());
        let mut sizes = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for p in batch {
            sizes.push(p.commands.len());
            commands.extend(p.commands);
            replies.push(p.reply);
        }
        commands.append(&mut carried);
        metrics.observe_proposal(commands.len());
        let proposal = Proposal::new(now_ms(), commands);
        let receiver = match raft.client_write_ff(proposal).await {
            Ok(r) => r,
            Err(fatal) => {
                for reply in replies {
                    let _ = reply.send(Err(ProposeError::Fatal(fatal.to_string())));
                }
                continue;
            }
        };
        tokio::spawn(async move {
            let _permit = permit;
            let outcome = match receiver.await {
                Ok(Ok(written)) => Ok(written.data.responses),
                Ok(Err(ClientWriteError::ForwardToLeader(f))) => Err(ProposeError::NotLeader { leader: f.leader_id }),
                Ok(Err(e)) => Err(ProposeError::Fatal(e.to_string())),
                Err(_) => Err(ProposeError::Dropped),
            };
            match outcome {
                Ok(mut responses) => {
                    // Hand each caller its own slice, in order.
                    let mut rest = responses.split_off(0).into_iter();
                    for (reply, n) in replies.into_iter().zip(sizes) {
                        let mine: Vec<Response> = rest.by_ref().take(n).collect();
                        let _ = reply.send(if mine.len() == n { Ok(mine) } else { Err(ProposeError::Dropped) });
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

/// Maps openraft's error of a linearizable read to ours.
pub fn read_error(
    e: RaftError<NodeId, openraft::error::CheckIsLeaderError<NodeId, openraft::BasicNode>>,
) -> ProposeError {
    match e {
        RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f)) => {
            ProposeError::NotLeader { leader: f.leader_id }
        }
        RaftError::APIError(openraft::error::CheckIsLeaderError::QuorumNotEnough(q)) => {
            ProposeError::Fatal(format!("no quorum: {q}"))
        }
        RaftError::Fatal(f) => ProposeError::Fatal(f.to_string()),
    }
}
