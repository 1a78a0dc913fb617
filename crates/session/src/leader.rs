//! The leader's side of the worker sessions as a synchronous state machine.
//!
//! `LeaderCore` decides everything a master does with worker sessions: whom to admit (protocol
//! version, name, a second live process under the same name, a re-attach without a new
//! registration), what to tell a worker that (re)connects, how to turn its reports into
//! commands and answer them once applied, when a silent worker is declared lost, when to plan
//! and where committed assignments go, and what happens to every session when leadership
//! changes. It owns no socket, clock or task: the master's session service
//! (`flotilla_master::sessions`) and the simulation (`flotilla-sim`) feed it inputs with the
//! time and the replicated state, and carry out the [`Effect`]s it returns.
//!
//! ```text
//!  stream opened ─▶ open ─┐
//!  WorkerMsg ─────────────┤                 ┌─▶ Send / Close  (the session's stream)
//!  stream ended ─▶ closed ┼─▶ LeaderCore ───┼─▶ Propose       (the proposer; the answer
//!  Raft role ─▶ lead/follow                 │                  comes back as applied/failed)
//!  timer / state change ─▶ tick ┘           └─▶ Observe       (metrics, logs)
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_core::command::{Command, Kill, Response, WorkerInfo};
use flotilla_core::model::{Fence, NodeId, TaskId, MAX_NAME_LEN};
use flotilla_core::reason::LostReason;
use flotilla_core::records::RecordReader;
use flotilla_core::scheduler;
use flotilla_core::session::{self, Reply};
use flotilla_core::state::{ClusterState, Maintenance, MaintenanceChange, WorkerState};
use flotilla_proto::wire::{MasterBody, MasterMsg, RunTask, WorkerMsg, PROTOCOL_VERSION};

/// Read access to the replicated state, taken only by the inputs that need it (a heartbeat or
/// a report does not): the master's shell reads under the state's lock, the simulation and the
/// tests hand the state itself.
pub trait Replica {
    /// Runs `f` on the state and the stored records of the same applied entry.
    fn read<R>(&self, f: impl FnOnce(&ClusterState, &dyn RecordReader) -> R) -> R;
}

/// A state and its records, borrowed (the simulation's replica).
pub struct StateView<'a> {
    pub state: &'a ClusterState,
    pub records: &'a dyn RecordReader,
}

impl Replica for StateView<'_> {
    fn read<R>(&self, f: impl FnOnce(&ClusterState, &dyn RecordReader) -> R) -> R {
        f(self.state, self.records)
    }
}

/// A worker's stream, numbered by the shell that accepted it.
pub type SessionId = u64;
/// A proposal, numbered by the core; the shell reports its outcome under this number.
pub type ProposalId = u64;

#[derive(Clone, Debug)]
pub struct LeaderConfig {
    /// This master's id (named in the welcome).
    pub me: NodeId,
    /// How often workers send a heartbeat.
    pub heartbeat: Duration,
    /// A ready worker silent this long is declared lost.
    pub worker_timeout: Duration,
    /// How long a new stream may take to say hello.
    pub hello_timeout: Duration,
    /// How long a hello may wait for a new leader to become ready.
    pub ready_timeout: Duration,
    /// Most placements in one plan (one log entry).
    pub max_plan: usize,
}

impl LeaderConfig {
    pub fn new(me: NodeId, worker_timeout: Duration) -> Self {
        LeaderConfig {
            me,
            heartbeat: worker_timeout / 3,
            worker_timeout,
            hello_timeout: Duration::from_secs(10),
            ready_timeout: Duration::from_secs(10),
            max_plan: 2048,
        }
    }

    /// How often liveness is checked: a tenth of the timeout, within 20 to 250 ms.
    fn liveness_period(&self) -> Duration {
        (self.worker_timeout / 10).clamp(Duration::from_millis(20), Duration::from_millis(250))
    }
}

/// What the shell must do, in this order.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Send on the session's stream.
    Send { session: SessionId, msg: MasterMsg },
    /// End the session's stream (its worker reconnects if it still runs).
    Close { session: SessionId },
    /// Propose these commands, in order after every command proposed before; report the
    /// outcome with [`LeaderCore::on_applied`] or [`LeaderCore::on_failed`].
    Propose { id: ProposalId, commands: Vec<Command> },
    /// Something to count or log.
    Observe(Observation),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// A heartbeat, with the time since the worker's previous message.
    Heartbeat {
        gap: Option<Duration>,
    },
    /// A worker's own figures, from its heartbeat.
    WorkerStats {
        worker: Arc<str>,
        running: u32,
        queued: u32,
        spawned: u64,
        spawn_micros: u64,
    },
    /// A session round trip a worker measured.
    RoundTrip(Duration),
    /// A plan committed: how long from planning to commit, and how many tasks it placed.
    Placement {
        took: Duration,
        assigned: usize,
    },
    SessionOpened {
        worker: Arc<str>,
        incarnation: u64,
        attached: bool,
    },
    SessionClosed {
        worker: Arc<str>,
    },
    WorkerSilent {
        worker: Arc<str>,
        incarnation: u64,
        silent: Duration,
    },
    /// A session broke the protocol and was closed.
    ProtocolError {
        session: SessionId,
        error: ProtocolError,
    },
    /// An assignment could not be sent: the stored records its reduce step reads could not be
    /// read. The worker's next reconcile tries again.
    /// A worker could not take the copy of a task's outputs it was asked for.
    CopyFailed {
        worker: Arc<str>,
        task: TaskId,
        error: flotilla_core::workflow::OutputError,
    },
    RecordsUnreadable {
        task: TaskId,
        error: Arc<str>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    NoHello,
    FirstMessageNotHello,
    HelloTwice,
    UnexpectedRegisterResponse,
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProtocolError::NoHello => "no hello in time",
            ProtocolError::FirstMessageNotHello => "the first message of a session must be hello",
            ProtocolError::HelloTwice => "hello sent twice",
            ProtocolError::UnexpectedRegisterResponse => "unexpected response to a registration",
        })
    }
}

/// Why a proposal did not commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// This master no longer leads (the shell will call [`LeaderCore::follow`]).
    NotLeader,
    /// Anything else (a dropped proposal, a storage error): worth trying again.
    Other,
}

enum Stage {
    AwaitHello {
        since: Instant,
    },
    /// A hello that came before this leader was ready.
    AwaitReady {
        since: Instant,
        info: WorkerInfo,
        known: Vec<(TaskId, Fence)>,
    },
    Registering {
        name: Arc<str>,
        known: Vec<(TaskId, Fence)>,
    },
    Open {
        name: Arc<str>,
    },
}

enum Origin {
    Elected,
    Register {
        session: SessionId,
    },
    /// Per command: the report it answers (task, fence, whether a result), if any.
    Reports {
        session: SessionId,
        reports: Vec<Option<(TaskId, Fence, bool)>>,
    },
    Plan {
        at: Instant,
    },
    Lost {
        name: String,
        incarnation: u64,
        /// When the worker was last heard, restored if the proposal fails.
        last_seen: Option<Instant>,
    },
    /// A draining worker's deadline passed.
    Overdue {
        worker: String,
    },
    /// The cluster's identity (retried by the next leader if lost).
    Identity,
}

/// A cluster identity from the first leader's clock, term and id (splitmix64; never 0).
fn identity(clock_ms: u64, term: u64, me: NodeId) -> u64 {
    let mut z = clock_ms ^ term.rotate_left(24) ^ me.rotate_left(48);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)).max(1)
}

struct Lead {
    term: u64,
    /// The election entry is applied: the state holds everything committed before this term.
    ready: bool,
    elect_retry_at: Option<Instant>,
    by_worker: HashMap<Arc<str>, SessionId>,
    last_seen: HashMap<Arc<str>, Instant>,
    /// Workers (name, incarnation) whose loss this leader proposed.
    lost_proposed: HashMap<String, u64>,
    next_liveness: Instant,
    plan_in_flight: bool,
    /// Queued attempts asked back from their workers, and when (asked again after a while:
    /// one that had started is never given back, and the question may have been lost).
    revoking: HashMap<(TaskId, Fence), Instant>,
    /// Draining workers with a deadline, and when this leader takes what they still hold.
    drains: HashMap<String, DrainWatch>,
    /// Sessions told that their worker is drained.
    told_drained: std::collections::HashSet<SessionId>,
    /// The release each worker reported (leader memory, like `last_seen`).
    versions: HashMap<Arc<str>, Reported>,
    /// Sessions told their peers, and as of which change of them (`peers_changed`).
    peers_told: HashMap<SessionId, u64>,
    /// Tasks whose outputs a worker was asked to copy, and until when the answer is waited
    /// for (then asked again, perhaps of another worker).
    repairs: HashMap<TaskId, Repair>,
    /// Where the last look at the tasks short of copies stopped (each look is bounded).
    repair_cursor: Option<TaskId>,
    /// The state (applied index) and the workers able to take copies when a whole look
    /// found nothing to ask: no look again until one of them changes. A cluster smaller than
    /// a job's copies keeps its tasks short for good, and looking each tick would be waste.
    repair_idle: Option<(u64, Vec<SessionId>)>,
}

/// A copy of a task's outputs asked of a worker.
struct Repair {
    worker: Arc<str>,
    until: Instant,
}

/// A worker's release as it reported it, and parsed once (the scheduler asks per plan).
struct Reported {
    text: String,
    release: flotilla_core::version::Version,
}

impl Lead {
    /// The release `worker` reported; one that reported none runs the first release.
    fn release_of(&self, worker: &str) -> flotilla_core::version::Version {
        self.versions.get(worker).map_or(flotilla_core::version::FIRST, |r| r.release)
    }
}

/// When a draining worker's deadline passes, as this leader measures it.
struct DrainWatch {
    incarnation: u64,
    /// The deadline it watches (a new drain with another deadline starts a new watch).
    deadline: u64,
    due: Instant,
    proposed: bool,
}

// One per master, replaced only when the Raft role changes: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Role {
    Following { term: u64, leader: Option<String> },
    Leading(Lead),
}

/// The leader's session logic; see the module comment.
pub struct LeaderCore {
    config: LeaderConfig,
    role: Role,
    sessions: BTreeMap<SessionId, Stage>,
    /// Sessions that may be waiting for a hello or for readiness (checked for deadlines).
    waiting: std::collections::BTreeSet<SessionId>,
    pending: HashMap<ProposalId, Origin>,
    next_proposal: ProposalId,
    /// Every master's address, as the Raft membership names them (told to each worker).
    masters: Vec<String>,
    /// Messages held back from a session until its worker reports a release that reads them.
    held: HashMap<SessionId, Vec<MasterBody>>,
}

/// A queued attempt asked back is asked again after this long (it may have started, or the
/// question or its answer may have been lost with a session).
const REVOKE_AGAIN: Duration = Duration::from_secs(1);
/// Workers one worker is told it may copy outputs to: enough to find `replicas` that answer.
pub const MAX_PEERS: usize = 16;
/// Copies of tasks' outputs asked for at once, in all and of one worker.
pub const MAX_REPAIRS: usize = 64;
pub const MAX_REPAIRS_PER_WORKER: usize = 4;
/// Tasks short of copies looked at per liveness period (the rest on the next ones).
const REPAIR_SCAN: usize = 4096;

/// How long a worker may take to copy `bytes` before it is asked again: a floor for the
/// round trips, then 5 MB/s (the blob client's own allowance per file).
fn repair_wait(bytes: u64) -> Duration {
    Duration::from_secs(30) + Duration::from_millis(bytes / 5_000)
}

/// Most reports turned into one proposal (the shell batches what has arrived up to this).
pub const MAX_REPORTS: usize = 1024;

impl LeaderCore {
    pub fn new(config: LeaderConfig) -> Self {
        LeaderCore {
            config,
            role: Role::Following { term: 0, leader: None },
            sessions: BTreeMap::new(),
            waiting: Default::default(),
            pending: HashMap::new(),
            next_proposal: 1,
            masters: Vec::new(),
            held: HashMap::new(),
        }
    }

    /// The group's masters changed (or are first known): every open session is told.
    pub fn set_masters(&mut self, mut addresses: Vec<String>, out: &mut Vec<Effect>) {
        addresses.sort();
        addresses.dedup();
        if addresses == self.masters {
            return;
        }
        self.masters = addresses;
        if self.leading_term().is_none() {
            return;
        }
        let open: Vec<SessionId> =
            self.sessions.iter().filter(|(_, s)| matches!(s, Stage::Open { .. })).map(|(id, _)| *id).collect();
        for session in open {
            self.send(session, MasterBody::Members { addresses: self.masters.clone() }, out);
        }
    }

    pub fn config(&self) -> &LeaderConfig {
        &self.config
    }

    /// The term this master leads, once it is ready to act on its state.
    pub fn ready_term(&self) -> Option<u64> {
        match &self.role {
            Role::Leading(l) if l.ready => Some(l.term),
            _ => None,
        }
    }

    pub fn leading_term(&self) -> Option<u64> {
        match &self.role {
            Role::Leading(l) => Some(l.term),
            Role::Following { .. } => None,
        }
    }

    /// The release each worker reported to this leader (empty while following; a worker
    /// that reported none runs 0.1.0).
    pub fn worker_versions(&self) -> HashMap<Arc<str>, String> {
        match &self.role {
            Role::Leading(l) => l.versions.iter().map(|(name, r)| (name.clone(), r.text.clone())).collect(),
            Role::Following { .. } => HashMap::new(),
        }
    }

    /// When this leader last heard from the worker (none while following).
    pub fn last_seen(&self, worker: &str) -> Option<Instant> {
        match &self.role {
            Role::Leading(l) => l.last_seen.get(worker).copied(),
            Role::Following { .. } => None,
        }
    }

    /// When this leader last heard from each worker (empty while following).
    pub fn last_seen_all(&self) -> HashMap<Arc<str>, Instant> {
        match &self.role {
            Role::Leading(l) => l.last_seen.clone(),
            Role::Following { .. } => HashMap::new(),
        }
    }

    /// Number of open sessions (admitted workers).
    pub fn open_sessions(&self) -> usize {
        self.sessions.values().filter(|s| matches!(s, Stage::Open { .. })).count()
    }

    fn term(&self) -> u64 {
        match &self.role {
            Role::Leading(l) => l.term,
            Role::Following { term, .. } => *term,
        }
    }

    fn propose(&mut self, commands: Vec<Command>, origin: Origin, out: &mut Vec<Effect>) {
        let id = self.next_proposal;
        self.next_proposal += 1;
        self.pending.insert(id, origin);
        out.push(Effect::Propose { id, commands });
    }

    fn send(&mut self, session: SessionId, body: MasterBody, out: &mut Vec<Effect>) {
        // A worker that cannot decode a message would drop its session and reconnect to be
        // sent it again: a message of a feature its release lacks is held back instead, until
        // the worker reports a release that reads it (a new session reports its release just
        // after its welcome; the scheduler gives a worker nothing it cannot read).
        // A batch is split: what the worker reads goes now, only the rest waits.
        if body.feature().is_some_and(|feature| !self.understands(session, feature)) {
            let (now, later): (Vec<MasterBody>, Vec<MasterBody>) = body
                .flatten()
                .into_iter()
                .partition(|b| b.feature().is_none_or(|feature| self.understands(session, feature)));
            if matches!(self.sessions.get(&session), Some(Stage::Open { .. })) {
                self.held.entry(session).or_default().extend(later);
            }
            if let Some(body) = MasterBody::batch(now) {
                out.push(Effect::Send { session, msg: MasterMsg { term: self.term(), body } });
            }
            return;
        }
        out.push(Effect::Send { session, msg: MasterMsg { term: self.term(), body } });
    }

    /// A worker reported its release: messages held back for it go out if it reads them now,
    /// and work only such a release may take is placed.
    fn note_version(
        &mut self,
        now: Instant,
        state: &impl Replica,
        session: SessionId,
        name: &Arc<str>,
        version: String,
        out: &mut Vec<Effect>,
    ) {
        let Role::Leading(lead) = &mut self.role else { return };
        // Unparsable text counts as the first release: nothing newer is sent on its word.
        let release = flotilla_core::version::Version::parse(&version).unwrap_or(flotilla_core::version::FIRST);
        let capable = flotilla_core::version::Feature::TaskLimits.allowed(Some(release));
        lead.versions.insert(name.clone(), Reported { text: version, release });
        let held = self.held.remove(&session).unwrap_or_default();
        state.read(|state, _| {
            for body in held {
                // Only an attempt still assigned to this worker: one stopped or moved while
                // it waited must not start now.
                let current = match &body {
                    MasterBody::RunWith { run, .. } => state
                        .job(run.task.job)
                        .and_then(|job| job.task(run.task.slot))
                        .and_then(|task| task.state.in_flight())
                        .is_some_and(|(worker, fence)| worker == &**name && fence == run.fence),
                    _ => true,
                };
                if current {
                    self.send(session, body, out);
                }
            }
            self.tell_peers(state, Some(session), out);
            if capable {
                self.schedule(now, state, out);
            }
        });
    }

    /// Whether the worker of `session` reported a release that understands `feature` (one
    /// that has not reported yet counts as the oldest release).
    pub fn understands(&self, session: SessionId, feature: flotilla_core::version::Feature) -> bool {
        let Role::Leading(lead) = &self.role else { return false };
        let release = match self.sessions.get(&session) {
            Some(Stage::Open { name }) => lead.release_of(name),
            _ => flotilla_core::version::FIRST,
        };
        feature.allowed(Some(release))
    }

    /// Ends one session: its stream is closed and its worker forgets this leader.
    fn close(&mut self, session: SessionId, out: &mut Vec<Effect>) {
        self.forget(session, out);
        out.push(Effect::Close { session });
    }

    /// Drops the session from the core (its stream is gone or going).
    fn forget(&mut self, session: SessionId, out: &mut Vec<Effect>) {
        self.held.remove(&session);
        if let Role::Leading(lead) = &mut self.role {
            lead.peers_told.remove(&session);
        }
        if let Some(Stage::Open { name }) = self.sessions.remove(&session) {
            if let Role::Leading(l) = &mut self.role {
                if l.by_worker.get(&name) == Some(&session) {
                    l.by_worker.remove(&name);
                }
            }
            out.push(Effect::Observe(Observation::SessionClosed { worker: name }));
        }
    }

    fn close_all(&mut self, out: &mut Vec<Effect>) {
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            self.close(id, out);
        }
        self.pending.clear();
    }

    /// Raft made this master leader for `term`: every session of an earlier role ends (workers
    /// reconnect), and the election is noted in the log first; once that entry is applied
    /// the state is current and the leader is ready.
    pub fn lead(&mut self, now: Instant, term: u64, out: &mut Vec<Effect>) {
        self.close_all(out);
        self.role = Role::Leading(Lead {
            term,
            ready: false,
            elect_retry_at: None,
            by_worker: HashMap::new(),
            last_seen: HashMap::new(),
            lost_proposed: HashMap::new(),
            next_liveness: now,
            plan_in_flight: false,
            revoking: HashMap::new(),
            drains: HashMap::new(),
            told_drained: Default::default(),
            versions: HashMap::new(),
            peers_told: HashMap::new(),
            repairs: HashMap::new(),
            repair_cursor: None,
            repair_idle: None,
        });
        self.propose(vec![Command::LeaderElected { node: self.config.me }], Origin::Elected, out);
    }

    /// This master follows (or is a candidate) in `term`; `leader` is the leader's address if
    /// known. A leader stepping down closes every session.
    pub fn follow(&mut self, term: u64, leader: Option<String>, out: &mut Vec<Effect>) {
        if matches!(self.role, Role::Leading(_)) {
            self.close_all(out);
        }
        self.role = Role::Following { term, leader };
    }

    /// A worker opened a stream.
    pub fn open(&mut self, now: Instant, session: SessionId) {
        self.await_hello(session, now);
    }

    fn await_hello(&mut self, session: SessionId, now: Instant) {
        self.sessions.insert(session, Stage::AwaitHello { since: now });
        self.waiting.insert(session);
    }

    /// The worker's stream ended (or failed).
    pub fn closed(&mut self, session: SessionId, out: &mut Vec<Effect>) {
        self.forget(session, out);
    }

    /// A message arrived on a session (a batch of several as one [`WorkerMsg::Batch`]).
    pub fn on_message(
        &mut self,
        now: Instant,
        state: &impl Replica,
        session: SessionId,
        msg: WorkerMsg,
        out: &mut Vec<Effect>,
    ) {
        let Some(stage) = self.sessions.get(&session) else { return };
        let name = match stage {
            Stage::AwaitHello { .. } => {
                match msg {
                    WorkerMsg::Hello { protocol, info, known, highest_term: _ } => state
                        .read(|state, records| self.hello(now, state, records, session, protocol, info, known, out)),
                    _ => {
                        out.push(Effect::Observe(Observation::ProtocolError {
                            session,
                            error: ProtocolError::FirstMessageNotHello,
                        }));
                        self.close(session, out);
                    }
                }
                return;
            }
            // A worker sends nothing before its welcome.
            Stage::AwaitReady { .. } | Stage::Registering { .. } => return,
            Stage::Open { name } => name.clone(),
        };
        let Role::Leading(lead) = &mut self.role else { return };
        let gap = touch(&mut lead.last_seen, &name, now);
        out.push(Effect::Observe(Observation::Heartbeat { gap }));
        // Most messages from an idle fleet are heartbeats: no allocation beyond the effects.
        let msgs = match msg {
            WorkerMsg::Heartbeat => return,
            WorkerMsg::Version { version } => return self.note_version(now, state, session, &name, version, out),
            stats @ WorkerMsg::Stats { .. } => return self.stats(session, &name, stats, out),
            WorkerMsg::Batch(msgs) => msgs.into_iter().flat_map(WorkerMsg::flatten).collect(),
            other => vec![other],
        };
        let mut commands = Vec::with_capacity(msgs.len());
        let mut reports = Vec::with_capacity(msgs.len());
        for msg in msgs {
            let worker = name.to_string();
            let (command, report) = match msg {
                WorkerMsg::Heartbeat | WorkerMsg::Batch(_) => continue,
                WorkerMsg::Version { version } => {
                    self.note_version(now, state, session, &name, version, out);
                    continue;
                }
                stats @ WorkerMsg::Stats { .. } => {
                    self.stats(session, &name, stats, out);
                    continue;
                }
                WorkerMsg::Hello { .. } => {
                    out.push(Effect::Observe(Observation::ProtocolError { session, error: ProtocolError::HelloTwice }));
                    self.close(session, out);
                    return;
                }
                WorkerMsg::Started { task, fence } => {
                    (Command::TaskStarted { task, fence, worker }, Some((task, fence, false)))
                }
                WorkerMsg::Finished { task, fence, outcome } => {
                    (Command::TaskFinished { task, fence, worker, outcome }, Some((task, fence, true)))
                }
                WorkerMsg::FinishedWith { task, fence, mut outcome, outputs } => {
                    outcome.outputs = outputs;
                    (Command::task_finished(task, fence, worker, outcome), Some((task, fence, true)))
                }
                WorkerMsg::Serves { address } => {
                    let known = state.read(|s, _| s.endpoint(&worker) == Some(address.as_str()));
                    if known {
                        continue;
                    }
                    (Command::SetWorkerEndpoint { worker, address }, None)
                }
                WorkerMsg::Holds { tasks } => {
                    if let Role::Leading(lead) = &mut self.role {
                        for task in &tasks {
                            lead.repairs.remove(task);
                        }
                    }
                    (Command::CopiesAdded { worker, tasks }, None)
                }
                WorkerMsg::CopyFailed { task, error } => {
                    if let Role::Leading(lead) = &mut self.role {
                        lead.repairs.remove(&task);
                    }
                    out.push(Effect::Observe(Observation::CopyFailed { worker: name.clone(), task, error }));
                    continue;
                }
                WorkerMsg::Corrupt { digests } => (Command::CopiesCorrupt { worker, digests }, None),
                WorkerMsg::Inventory { digests } => {
                    let discard = state.read(|s, _| unreferenced(s, &worker, digests));
                    if !discard.is_empty() {
                        self.send(session, MasterBody::Discard { digests: discard }, out);
                    }
                    continue;
                }
                WorkerMsg::Queue { queue } => (Command::SetWorkerQueue { worker, queue }, None),
                WorkerMsg::Revoked { task, fence } => {
                    (Command::TaskRevoked { task, fence, worker }, Some((task, fence, true)))
                }
                WorkerMsg::Drain { deadline_ms } => {
                    // Asked again after a reconnect: already draining itself, nothing to do.
                    let already = state.read(|s, _| {
                        s.worker(&worker).is_some_and(|w| {
                            matches!(
                                w.maintenance,
                                Maintenance::Draining { by_worker: true, .. }
                                    | Maintenance::Drained { by_worker: true }
                            )
                        })
                    });
                    if already {
                        continue;
                    }
                    let change = MaintenanceChange::Drain { deadline_ms, by_worker: true };
                    (Command::SetMaintenance { worker, change }, None)
                }
            };
            commands.push(command);
            reports.push(report);
        }
        if !commands.is_empty() {
            self.propose(commands, Origin::Reports { session, reports }, out);
        }
    }

    /// A heartbeat with the worker's figures: recorded, and its echo token sent back.
    fn stats(&mut self, session: SessionId, name: &Arc<str>, stats: WorkerMsg, out: &mut Vec<Effect>) {
        let WorkerMsg::Stats { running, queued, spawned, spawn_micros, echo, rtt_micros } = stats else { return };
        out.push(Effect::Observe(Observation::WorkerStats {
            worker: name.clone(),
            running,
            queued,
            spawned,
            spawn_micros,
        }));
        if let Some(rtt) = rtt_micros {
            out.push(Effect::Observe(Observation::RoundTrip(Duration::from_micros(rtt))));
        }
        if let Some(token) = echo {
            self.send(session, MasterBody::Echo { token }, out);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn hello(
        &mut self,
        now: Instant,
        state: &ClusterState,
        records: &dyn RecordReader,
        session: SessionId,
        protocol: u32,
        info: WorkerInfo,
        known: Vec<(TaskId, Fence)>,
        out: &mut Vec<Effect>,
    ) {
        if protocol != PROTOCOL_VERSION {
            let reason = format!("protocol {protocol} is not supported (this master speaks {PROTOCOL_VERSION})");
            out.push(Effect::Send { session, msg: MasterMsg { term: 0, body: MasterBody::Refused { reason } } });
            self.close(session, out);
            return;
        }
        match &self.role {
            Role::Following { leader, .. } => {
                let leader = leader.clone();
                self.send(session, MasterBody::NotLeader { leader }, out);
                self.close(session, out);
            }
            Role::Leading(l) if !l.ready => {
                self.sessions.insert(session, Stage::AwaitReady { since: now, info, known });
                self.waiting.insert(session);
            }
            Role::Leading(_) => self.admit(now, state, records, session, info, known, out),
        }
    }

    /// Admits a worker on a ready leader: refuses a bad name or a second live process under
    /// the same name, re-attaches the same process, or registers it anew.
    #[allow(clippy::too_many_arguments)]
    fn admit(
        &mut self,
        now: Instant,
        state: &ClusterState,
        records: &dyn RecordReader,
        session: SessionId,
        info: WorkerInfo,
        known: Vec<(TaskId, Fence)>,
        out: &mut Vec<Effect>,
    ) {
        if info.name.is_empty() || info.name.len() > MAX_NAME_LEN {
            self.refuse(session, "worker name must be 1 to 256 characters".to_string(), out);
            return;
        }
        let ready = state.worker(&info.name).filter(|w| w.state == WorkerState::Ready);
        let attached = ready.filter(|w| w.instance == info.instance).map(|w| w.incarnation);
        let other_instance = ready.is_some_and(|w| w.instance != info.instance);
        let Role::Leading(lead) = &self.role else { return };
        // Another live process under the same name: two workers would keep evicting each other.
        // A restarted worker is accepted once its old session is gone (closed, or timed out).
        let connected = lead.by_worker.contains_key(info.name.as_str())
            && lead
                .last_seen
                .get(info.name.as_str())
                .is_some_and(|t| now.saturating_duration_since(*t) < self.config.worker_timeout);
        if other_instance && connected {
            let reason =
                format!("a worker named '{}' is already connected; give each worker a unique --name", info.name);
            self.refuse(session, reason, out);
            return;
        }
        let name: Arc<str> = Arc::from(info.name.as_str());
        // The hello is word from the worker: silence from an earlier process or session must
        // not count against the registration that follows (the liveness check may run between
        // its commit and its welcome).
        if let Role::Leading(lead) = &mut self.role {
            lead.last_seen.insert(name.clone(), now);
        }
        match attached {
            Some(incarnation) => self.welcome(now, state, records, session, name, incarnation, &known, true, out),
            None => {
                self.sessions.insert(session, Stage::Registering { name, known });
                self.propose(vec![Command::RegisterWorker(info)], Origin::Register { session }, out);
            }
        }
    }

    fn refuse(&mut self, session: SessionId, reason: String, out: &mut Vec<Effect>) {
        self.send(session, MasterBody::Refused { reason }, out);
        self.close(session, out);
    }

    /// Opens the session: welcome, then the committed assignments the worker lacks and stops
    /// for the attempts it should no longer hold.
    #[allow(clippy::too_many_arguments)]
    fn welcome(
        &mut self,
        now: Instant,
        state: &ClusterState,
        records: &dyn RecordReader,
        session: SessionId,
        name: Arc<str>,
        incarnation: u64,
        known: &[(TaskId, Fence)],
        attached: bool,
        out: &mut Vec<Effect>,
    ) {
        let Role::Leading(lead) = &mut self.role else { return };
        // Register before reading the state to reconcile: an assignment committed later is
        // pushed to this session, one committed earlier is found by the reconcile.
        if let Some(old) = lead.by_worker.insert(name.clone(), session) {
            if old != session {
                self.sessions.remove(&old);
                out.push(Effect::Close { session: old });
            }
        }
        lead.last_seen.insert(name.clone(), now);
        // Whatever process is behind this session reports its release anew.
        lead.versions.remove(&name);
        self.sessions.insert(session, Stage::Open { name: name.clone() });
        let heartbeat_ms = self.config.heartbeat.as_millis() as u64;
        self.send(session, MasterBody::Welcome { leader: self.config.me, incarnation, heartbeat_ms }, out);
        if !self.masters.is_empty() {
            self.send(session, MasterBody::Members { addresses: self.masters.clone() }, out);
        }
        out.push(Effect::Observe(Observation::SessionOpened { worker: name.clone(), incarnation, attached }));
        let plan = session::reconcile(state, &name, known);
        let mut bodies: Vec<MasterBody> =
            plan.run.iter().filter_map(|(task, fence)| self.run_message(state, records, *task, *fence, out)).collect();
        bodies.extend(plan.stop.iter().map(|(task, fence)| MasterBody::Stop { task: *task, fence: *fence }));
        if let Some(body) = MasterBody::batch(bodies) {
            self.send(session, body, out);
        }
    }

    /// Time passed (call at least every liveness period, and whenever the state changed):
    /// hello and readiness deadlines, worker liveness, a retry of the election note, and a
    /// scheduling round.
    pub fn on_tick(&mut self, now: Instant, state: &impl Replica, out: &mut Vec<Effect>) {
        self.expire_waiting(now, out);
        let Role::Leading(lead) = &mut self.role else { return };
        if lead.elect_retry_at.is_some_and(|t| t <= now) {
            lead.elect_retry_at = None;
            self.propose(vec![Command::LeaderElected { node: self.config.me }], Origin::Elected, out);
            return;
        }
        if !lead.ready {
            return;
        }
        let liveness = lead.next_liveness <= now;
        if liveness {
            lead.next_liveness = now + self.config.liveness_period();
        }
        if !liveness && lead.plan_in_flight {
            return; // nothing to read the state for
        }
        state.read(|state, _| {
            if liveness {
                self.check_liveness(now, state, out);
                self.watch_drains(now, state, out);
                self.tell_peers(state, None, out);
                self.repair(now, state, out);
            }
            self.schedule(now, state, out);
        });
    }

    /// Tells workers (of a release that copies outputs) which others they may copy their
    /// tasks' outputs to, when that changed since they were last told: up to [`MAX_PEERS`]
    /// workers in service, a different rotation of them for each worker so copies spread.
    fn tell_peers(&mut self, state: &ClusterState, only: Option<SessionId>, out: &mut Vec<Effect>) {
        let changed = state.peers_changed();
        let Role::Leading(lead) = &self.role else { return };
        if changed == 0 {
            return;
        }
        let due: Vec<(SessionId, Arc<str>)> = self
            .sessions
            .iter()
            .filter_map(|(session, stage)| match stage {
                Stage::Open { name } => Some((*session, name.clone())),
                _ => None,
            })
            .filter(|(session, _)| only.is_none_or(|o| o == *session))
            .filter(|(session, _)| lead.peers_told.get(session) != Some(&changed))
            .filter(|(_, name)| flotilla_core::version::Feature::Workflows.allowed(Some(lead.release_of(name))))
            .collect();
        if due.is_empty() {
            return;
        }
        let candidates: Vec<(String, String)> = state
            .workers()
            .filter(|w| w.takes_work())
            .filter_map(|w| Some((w.name.clone(), state.endpoint(&w.name)?.to_string())))
            .collect();
        for (session, name) in due {
            let start = candidates.partition_point(|(n, _)| n.as_str() <= &*name);
            let peers: Vec<(String, String)> = candidates
                .iter()
                .cycle()
                .skip(start)
                .take(candidates.len())
                .filter(|(n, _)| n.as_str() != &*name)
                .take(MAX_PEERS)
                .cloned()
                .collect();
            if let Role::Leading(lead) = &mut self.role {
                lead.peers_told.insert(session, changed);
            }
            self.send(session, MasterBody::Peers { peers }, out);
        }
    }

    /// Tasks whose outputs are short of copies: asks workers in service that lack a copy to
    /// take one from a holder, a bounded number at a time (see [`MAX_REPAIRS`]). The copy
    /// counts once its `CopiesAdded` commits; one not reported in time is asked again. A
    /// task whose every copy is gone has nothing to copy from and is left as it is.
    fn repair(&mut self, now: Instant, state: &ClusterState, out: &mut Vec<Effect>) {
        let short = state.short_of_copies();
        let Role::Leading(lead) = &mut self.role else { return };
        lead.repairs.retain(|task, r| r.until > now && short.contains(task));
        if short.is_empty() || lead.repairs.len() >= MAX_REPAIRS {
            return;
        }
        let workflows = flotilla_core::version::Feature::Workflows;
        // Workers that can take a copy now: in service, serving, connected to this leader,
        // of a release that copies.
        let mut takers: Vec<(Arc<str>, SessionId, usize)> = state
            .workers()
            .filter(|w| w.takes_work() && state.endpoint(&w.name).is_some())
            .filter(|w| workflows.allowed(Some(lead.release_of(&w.name))))
            .filter_map(|w| {
                let (name, session) = lead.by_worker.get_key_value(w.name.as_str())?;
                Some((name.clone(), *session, 0))
            })
            .collect();
        if takers.is_empty() {
            return;
        }
        let seen = (state.applied_index(), takers.iter().map(|t| t.1).collect::<Vec<_>>());
        if lead.repairs.is_empty() && lead.repair_idle.as_ref() == Some(&seen) {
            return;
        }
        lead.repair_idle = None;
        for r in lead.repairs.values() {
            if let Some(t) = takers.iter_mut().find(|t| t.0 == r.worker) {
                t.2 += 1;
            }
        }
        // One turn of the set, from after where the last look stopped.
        let order: Vec<TaskId> = match lead.repair_cursor {
            Some(c) => {
                let after = short.range((std::ops::Bound::Excluded(c), std::ops::Bound::Unbounded));
                after.chain(short.range(..=c)).take(REPAIR_SCAN).copied().collect()
            }
            None => short.iter().take(REPAIR_SCAN).copied().collect(),
        };
        let mut asks: Vec<(SessionId, MasterBody)> = Vec::new();
        for task in order {
            lead.repair_cursor = Some(task);
            if lead.repairs.contains_key(&task) {
                continue;
            }
            let Some(outputs) = state.task_outputs(task) else { continue };
            if outputs.holders.len() >= state.wanted_copies(task.job) {
                continue;
            }
            let sources: Vec<String> = outputs
                .holders
                .iter()
                .filter(|h| state.worker(h).is_some_and(|w| w.state == WorkerState::Ready))
                .filter_map(|h| state.endpoint(h).map(str::to_string))
                .collect();
            if sources.is_empty() {
                continue;
            }
            // From a place in the list that depends on the task, so copies spread.
            let spread = (task.job as usize).wrapping_mul(31).wrapping_add(match task.slot {
                flotilla_core::model::TaskSlot::Array(i) => i as usize,
                flotilla_core::model::TaskSlot::Reduce => 7,
            });
            let n = takers.len();
            let Some(pick) = (0..n).map(|k| (spread + k) % n).find(|&i| {
                takers[i].2 < MAX_REPAIRS_PER_WORKER && !outputs.holders.iter().any(|h| h.as_str() == &*takers[i].0)
            }) else {
                continue;
            };
            takers[pick].2 += 1;
            let until = now + repair_wait(outputs.total_bytes());
            lead.repairs.insert(task, Repair { worker: takers[pick].0.clone(), until });
            asks.push((takers[pick].1, MasterBody::Replicate { task, files: outputs.files.clone(), sources }));
            if lead.repairs.len() >= MAX_REPAIRS {
                break;
            }
        }
        if asks.is_empty() && lead.repairs.is_empty() && short.len() <= REPAIR_SCAN {
            lead.repair_idle = Some(seen);
        }
        for (session, body) in asks {
            self.send(session, body, out);
        }
    }

    /// Sessions that did not say hello in time, or waited too long for this leader to be ready.
    fn expire_waiting(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let mut expired = Vec::new();
        // Only the sessions that may still wait are looked at (a leader of a large fleet ticks
        // often); the others drop out of the set here.
        let sessions = &self.sessions;
        self.waiting.retain(|id| match sessions.get(id) {
            Some(Stage::AwaitHello { since }) => {
                if now.saturating_duration_since(*since) >= self.config.hello_timeout {
                    expired.push((*id, true));
                }
                true
            }
            Some(Stage::AwaitReady { since, .. }) => {
                if now.saturating_duration_since(*since) >= self.config.ready_timeout {
                    expired.push((*id, false));
                }
                true
            }
            _ => false,
        });
        for (session, no_hello) in expired {
            if no_hello {
                out.push(Effect::Observe(Observation::ProtocolError { session, error: ProtocolError::NoHello }));
            } else {
                self.send(session, MasterBody::NotLeader { leader: None }, out);
            }
            self.close(session, out);
        }
    }

    /// Declares lost every ready worker not heard from within the timeout, and closes its
    /// session: if it is only paused, it reconnects and registers again.
    fn check_liveness(&mut self, now: Instant, state: &ClusterState, out: &mut Vec<Effect>) {
        let Role::Leading(lead) = &mut self.role else { return };
        // Forget proposals that took effect (or whose worker came back as a new incarnation).
        lead.lost_proposed.retain(|name, incarnation| {
            state.worker(name).is_some_and(|w| w.state == WorkerState::Ready && w.incarnation == *incarnation)
        });
        let mut silent = Vec::new();
        for w in state.workers().filter(|w| w.state == WorkerState::Ready) {
            if lead.lost_proposed.get(w.name.as_str()) == Some(&w.incarnation) {
                continue; // already proposed
            }
            let since = match lead.last_seen.get(w.name.as_str()) {
                Some(t) => now.saturating_duration_since(*t),
                None => {
                    // Not heard from yet (a new leader): its grace period starts now.
                    lead.last_seen.insert(Arc::from(w.name.as_str()), now);
                    Duration::ZERO
                }
            };
            if since > self.config.worker_timeout {
                silent.push((w.name.clone(), w.incarnation, since));
            }
        }
        for (name, incarnation, since) in silent {
            let Role::Leading(lead) = &mut self.role else { return };
            lead.lost_proposed.insert(name.clone(), incarnation);
            // Its next registration starts a fresh grace period (the liveness check may run
            // between that registration's commit and its welcome).
            let last_seen = lead.last_seen.remove(name.as_str());
            if let Some(session) = lead.by_worker.remove(name.as_str()) {
                self.sessions.remove(&session);
                out.push(Effect::Close { session });
            }
            let worker: Arc<str> = Arc::from(name.as_str());
            out.push(Effect::Observe(Observation::WorkerSilent { worker, incarnation, silent: since }));
            let reason = LostReason::silent(since);
            let command = Command::WorkerLost { name: name.clone(), incarnation, reason };
            self.propose(vec![command], Origin::Lost { name, incarnation, last_seen }, out);
        }
    }

    /// Draining workers: their queued attempts are asked back (to run elsewhere), what they
    /// still hold when the deadline passes is taken, and a drained worker's session is told.
    fn watch_drains(&mut self, now: Instant, state: &ClusterState, out: &mut Vec<Effect>) {
        let Role::Leading(lead) = &mut self.role else { return };
        lead.drains.retain(|name, watch| {
            state.worker(name).is_some_and(|w| {
                w.incarnation == watch.incarnation
                    && w.state == WorkerState::Ready
                    && matches!(w.maintenance, Maintenance::Draining { deadline: Some(d), .. } if d == watch.deadline)
            })
        });
        let sessions = &self.sessions;
        lead.told_drained.retain(|s| sessions.contains_key(s));
        // The deadline is on the leader clock of the entries; the state's clock is the last
        // entry's, at most now: the wait measured from it never ends early.
        let clock = state.clock_ms();
        let mut overdue = Vec::new();
        let mut drained = Vec::new();
        for w in state.workers().filter(|w| w.state == WorkerState::Ready) {
            match w.maintenance {
                Maintenance::Draining { deadline: Some(d), .. } if !w.tasks.is_empty() => {
                    let watch = lead.drains.entry(w.name.clone()).or_insert_with(|| DrainWatch {
                        incarnation: w.incarnation,
                        deadline: d,
                        due: now + Duration::from_millis(d.saturating_sub(clock)),
                        proposed: false,
                    });
                    if !watch.proposed && watch.due <= now {
                        watch.proposed = true;
                        overdue.push((w.name.clone(), w.incarnation));
                    }
                }
                Maintenance::Drained { .. } => {
                    if let Some(session) = lead.by_worker.get(w.name.as_str()) {
                        if lead.told_drained.insert(*session) {
                            drained.push(*session);
                        }
                    }
                }
                _ => {}
            }
        }
        lead.revoking.retain(|_, asked| now.saturating_duration_since(*asked) < REVOKE_AGAIN);
        let wanted = scheduler::drain_revocations(state, |task, fence| lead.revoking.contains_key(&(task, fence)));
        let mut by_worker: BTreeMap<&str, Vec<MasterBody>> = BTreeMap::new();
        for r in &wanted {
            lead.revoking.insert((r.task, r.fence), now);
            by_worker.entry(r.worker.as_str()).or_default().push(MasterBody::Revoke { task: r.task, fence: r.fence });
        }
        self.push(by_worker, out);
        for session in drained {
            self.send(session, MasterBody::Drained, out);
        }
        for (worker, incarnation) in overdue {
            self.propose(
                vec![Command::DrainOverdue { worker: worker.clone(), incarnation }],
                Origin::Overdue { worker },
                out,
            );
        }
    }

    /// Plans from the state unless a plan is still being committed.
    fn schedule(&mut self, now: Instant, state: &ClusterState, out: &mut Vec<Effect>) {
        let Role::Leading(lead) = &mut self.role else { return };
        if !lead.ready || lead.plan_in_flight {
            return;
        }
        let limits = flotilla_core::version::Feature::TaskLimits;
        let placements =
            scheduler::plan_for(state, self.config.max_plan, &|name| limits.allowed(Some(lead.release_of(name))));
        if placements.is_empty() {
            self.revoke(now, state, out);
            return;
        }
        lead.plan_in_flight = true;
        self.propose(vec![Command::Assign { placements }], Origin::Plan { at: now }, out);
    }

    /// Nothing waiting can be placed: asks busy workers for queued attempts that idle cpus
    /// elsewhere could run (see `scheduler::revocations`). Their confirmations come back as
    /// reports; only a committed `TaskRevoked` makes a task wait again.
    fn revoke(&mut self, now: Instant, state: &ClusterState, out: &mut Vec<Effect>) {
        let Role::Leading(lead) = &mut self.role else { return };
        lead.revoking.retain(|_, asked| now.saturating_duration_since(*asked) < REVOKE_AGAIN);
        // The answers to the last round come first: asking more meanwhile would take back
        // more work than the idle cpus can run.
        if !lead.revoking.is_empty() {
            return;
        }
        let wanted =
            scheduler::revocations_for(state, |task, fence| lead.revoking.contains_key(&(task, fence)), &|name| {
                flotilla_core::version::Feature::TaskLimits.allowed(Some(lead.release_of(name)))
            });
        let mut by_worker: BTreeMap<&str, Vec<MasterBody>> = BTreeMap::new();
        for r in &wanted {
            lead.revoking.insert((r.task, r.fence), now);
            by_worker.entry(r.worker.as_str()).or_default().push(MasterBody::Revoke { task: r.task, fence: r.fence });
        }
        self.push(by_worker, out);
    }

    /// A proposal committed and was applied; `state` is the state now (at or after it).
    pub fn on_applied(
        &mut self,
        now: Instant,
        state: &impl Replica,
        id: ProposalId,
        responses: &[Response],
        out: &mut Vec<Effect>,
    ) {
        let Some(origin) = self.pending.remove(&id) else { return };
        match origin {
            // Answers to reports need no state.
            Origin::Reports { session, reports } => self.answer_reports(session, reports, responses, out),
            Origin::Lost { .. } => {}
            other => state.read(|state, records| self.applied(now, state, records, other, responses, out)),
        }
    }

    fn answer_reports(
        &mut self,
        session: SessionId,
        reports: Vec<Option<(TaskId, Fence, bool)>>,
        responses: &[Response],
        out: &mut Vec<Effect>,
    ) {
        if let Role::Leading(lead) = &mut self.role {
            // Given back, started or finished: no longer waited for.
            for (task, fence, _) in reports.iter().flatten() {
                lead.revoking.remove(&(*task, *fence));
            }
        }
        if !matches!(self.sessions.get(&session), Some(Stage::Open { .. })) {
            return; // the worker resends what is not acknowledged when it reconnects
        }
        let bodies: Vec<MasterBody> = reports
            .into_iter()
            .zip(responses)
            .filter_map(|(report, response)| {
                let (task, fence, finished) = report?;
                match session::reply(response, finished) {
                    Reply::Ack => Some(MasterBody::Ack { task, fence }),
                    Reply::Stop => Some(MasterBody::Stop { task, fence }),
                    Reply::Nothing => None,
                }
            })
            .collect();
        if let Some(body) = MasterBody::batch(bodies) {
            self.send(session, body, out);
        }
    }

    fn applied(
        &mut self,
        now: Instant,
        state: &ClusterState,
        records: &dyn RecordReader,
        origin: Origin,
        responses: &[Response],
        out: &mut Vec<Effect>,
    ) {
        match origin {
            Origin::Elected => {
                if let Role::Leading(lead) = &mut self.role {
                    lead.ready = true;
                }
                // Hellos that waited for this are admitted now, in the order they came.
                let waiting: Vec<SessionId> = self
                    .sessions
                    .iter()
                    .filter(|(_, s)| matches!(s, Stage::AwaitReady { .. }))
                    .map(|(id, _)| *id)
                    .collect();
                for session in waiting {
                    if let Some(Stage::AwaitReady { info, known, .. }) = self.sessions.remove(&session) {
                        self.admit(now, state, records, session, info, known, out);
                    }
                }
                if state.cluster_id() == 0 {
                    // The first leader names the cluster; each term and leader give another id.
                    let term = self.leading_term().unwrap_or(0);
                    let id = identity(state.clock_ms(), term, self.config.me);
                    self.propose(vec![Command::SetClusterIdentity { id }], Origin::Identity, out);
                }
                self.schedule(now, state, out);
            }
            Origin::Register { session } => {
                let Some(Stage::Registering { name, known }) = self.sessions.remove(&session) else { return };
                match responses.first() {
                    Some(Response::WorkerRegistered { incarnation, .. }) => {
                        self.welcome(now, state, records, session, name, *incarnation, &known, false, out)
                    }
                    Some(Response::Invalid { reason }) => {
                        self.refuse(session, reason.to_string(), out);
                    }
                    _ => {
                        out.push(Effect::Observe(Observation::ProtocolError {
                            session,
                            error: ProtocolError::UnexpectedRegisterResponse,
                        }));
                        out.push(Effect::Close { session });
                    }
                }
            }
            Origin::Plan { at } => {
                if let Role::Leading(lead) = &mut self.role {
                    lead.plan_in_flight = false;
                }
                if let Some(Response::Assigned { runs }) = responses.first() {
                    let took = now.saturating_duration_since(at);
                    out.push(Effect::Observe(Observation::Placement { took, assigned: runs.len() }));
                    let mut by_worker: BTreeMap<&str, Vec<MasterBody>> = BTreeMap::new();
                    for run in runs {
                        if let Some(msg) = self.run_message(state, records, run.task, run.fence, out) {
                            by_worker.entry(run.worker.as_str()).or_default().push(msg);
                        }
                    }
                    self.push(by_worker, out);
                }
                // Whatever the capped plan left over is placed at once.
                self.schedule(now, state, out);
            }
            Origin::Overdue { worker } => match responses.first() {
                Some(Response::AttemptsTaken { kill }) => self.stop_attempts(kill, out),
                // Not due yet on the entry's clock: asked again a little later.
                _ => self.overdue_again(now, &worker),
            },
            Origin::Reports { .. } | Origin::Lost { .. } | Origin::Identity => {}
        }
    }

    fn overdue_again(&mut self, now: Instant, worker: &str) {
        if let Role::Leading(lead) = &mut self.role {
            if let Some(watch) = lead.drains.get_mut(worker) {
                watch.proposed = false;
                watch.due = now + Duration::from_secs(1);
            }
        }
    }

    /// The message that runs one committed attempt.
    fn run_message(
        &self,
        state: &ClusterState,
        records: &dyn RecordReader,
        task: TaskId,
        fence: Fence,
        out: &mut Vec<Effect>,
    ) -> Option<MasterBody> {
        match RunTask::for_attempt(state, records, task, fence) {
            Ok(run) => run.map(RunTask::into_body),
            Err(error) => {
                out.push(Effect::Observe(Observation::RecordsUnreadable { task, error: Arc::from(error.to_string()) }));
                None
            }
        }
    }

    /// A proposal did not commit.
    pub fn on_failed(&mut self, now: Instant, id: ProposalId, failure: Failure, out: &mut Vec<Effect>) {
        let Some(origin) = self.pending.remove(&id) else { return };
        match origin {
            Origin::Elected => {
                if let (Role::Leading(lead), Failure::Other) = (&mut self.role, failure) {
                    lead.elect_retry_at = Some(now + Duration::from_millis(100));
                }
            }
            Origin::Register { session } => {
                if self.sessions.remove(&session).is_some() {
                    self.send(session, MasterBody::NotLeader { leader: None }, out);
                    self.close(session, out);
                }
            }
            // Not committed: the worker resends its results after reconnecting.
            Origin::Reports { .. } => {}
            Origin::Plan { .. } => {
                if let Role::Leading(lead) = &mut self.role {
                    lead.plan_in_flight = false;
                }
            }
            Origin::Overdue { worker } => self.overdue_again(now, &worker),
            Origin::Identity => {}
            Origin::Lost { name, incarnation, last_seen } => {
                // Try again at the next liveness check, unless the worker was heard meanwhile.
                if let Role::Leading(lead) = &mut self.role {
                    if let (Some(t), false) = (last_seen, lead.last_seen.contains_key(name.as_str())) {
                        lead.last_seen.insert(Arc::from(name.as_str()), t);
                    }
                    if lead.lost_proposed.get(&name) == Some(&incarnation) {
                        lead.lost_proposed.remove(&name);
                    }
                }
            }
        }
    }

    /// Tells workers to stop attempts the state took from them (a cancelled job).
    pub fn stop_attempts(&mut self, kills: &[Kill], out: &mut Vec<Effect>) {
        let mut by_worker: BTreeMap<&str, Vec<MasterBody>> = BTreeMap::new();
        for k in kills {
            by_worker.entry(k.worker.as_str()).or_default().push(MasterBody::Stop { task: k.task, fence: k.fence });
        }
        self.push(by_worker, out);
    }

    /// One message per worker that has a session here.
    fn push(&mut self, by_worker: BTreeMap<&str, Vec<MasterBody>>, out: &mut Vec<Effect>) {
        let Role::Leading(lead) = &self.role else { return };
        let sends: Vec<(SessionId, MasterBody)> = by_worker
            .into_iter()
            .filter_map(|(worker, bodies)| Some((*lead.by_worker.get(worker)?, MasterBody::batch(bodies)?)))
            .collect();
        for (session, body) in sends {
            self.send(session, body, out);
        }
    }
}

/// Of `digests`, those that no kept task's outputs or logs count on `worker` for: garbage.
fn unreferenced(
    state: &ClusterState,
    worker: &str,
    digests: Vec<flotilla_core::workflow::Digest>,
) -> Vec<flotilla_core::workflow::Digest> {
    let mut left: std::collections::HashSet<_> = digests.into_iter().collect();
    for outputs in state.all_outputs().filter(|o| o.holders.iter().any(|h| h == worker)) {
        for f in &outputs.files {
            left.remove(&f.sha256);
        }
        if left.is_empty() {
            break;
        }
    }
    for logs in state.all_logs().filter(|l| l.holder == worker) {
        for f in &logs.files {
            left.remove(&f.sha256);
        }
    }
    let mut left: Vec<_> = left.into_iter().collect();
    left.sort();
    left
}

/// Notes a message from `worker`; returns the time since its previous one.
fn touch(last_seen: &mut HashMap<Arc<str>, Instant>, worker: &Arc<str>, now: Instant) -> Option<Duration> {
    match last_seen.get_mut(worker) {
        Some(t) => Some(now.saturating_duration_since(std::mem::replace(t, now))),
        None => {
            last_seen.insert(worker.clone(), now);
            None
        }
    }
}

#[cfg(test)]
mod tests;
