//! Deterministic simulation of Flotilla's control logic.
//!
//! The code that decides runs unchanged inside a seeded simulation with a simulated clock:
//! the state machine (`ClusterState::apply`), the scheduler, the leader's session core
//! (`flotilla_session::leader::LeaderCore`: admission, reconciliation, reports, liveness,
//! scheduling rounds, leadership changes) on each of three masters, and the worker's session
//! core (`flotilla_session::agent::AgentCore`: choice of master, hello and welcome, term
//! fencing, report batching, heartbeats with echoes, queue sizing, with its bookkeeping
//! `Book`). The simulator plays only what is I/O in production, as the binaries' shells do:
//!
//! - **Raft** as an abstraction: the leading master's proposals commit after a random delay
//!   and are applied in log order; a crashed or cut-off leader's uncommitted proposals are
//!   either lost or committed later by its successor (as Raft allows); a new leader, one of
//!   the live masters, is elected after a delay with the next term (only while a majority is
//!   up) and its core writes the election entry first; followers' cores answer `NotLeader`
//!   with the leader's address;
//! - **the network**: each session is an ordered stream with random per-message delays
//!   (streams interleave freely), connections to dead masters fail, a cut-off master's
//!   streams break only when keepalives notice, late messages from deposed leaders arrive,
//!   reports are delivered twice, streams break;
//! - **workers**: task processes with seeded durations and known outputs (some fail their
//!   first attempt), crashes and restarts (losing what they held), pauses, a second process
//!   under a taken name (refused while the first is connected), and a supervisor that
//!   restarts a worker the masters refused.
//!
//! After every applied entry it checks the state's invariants (`sanity_check`: capacity,
//! counters, queue, task ownership), that no task's successful result is recorded twice, that
//! no worker is declared lost within the timeout of its registration, and that an attempt
//! given back (revoked) never runs;
//! that a purge removes a finished job exactly once (an operator purges finished jobs during
//! the faults, after checking them, sometimes twice as a retrying client would);
//! at the end, after the faults stop, that every job still kept succeeded with the expected
//! outputs and reduce results, and that replaying the committed log rebuilds the same state.
//!
//! Not simulated: openraft itself (its election and replication code), the gRPC/HTTP
//! transport, redb, and real processes; the chaos harness exercises those for real.
//!
//! Replaying one seed with `SIM_DEBUG=1` in the environment prints the faults as they are
//! injected and, on a violation, the journal and where every master and worker stood.

use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use flotilla_core::command::{Command, Proposal, Response};
use flotilla_core::index_set::IndexSet;
use flotilla_core::model::{Captured, Fence, JobSpec, Outcome, TaskId, TaskSlot, MAX_WORKER_LOSSES};
use flotilla_core::reason::{JobFailure, TaskFailure};
use flotilla_core::records::{self, MemRecords, RecordReader};
use flotilla_core::rng::Rng;
use flotilla_core::state::{ApplyCtx, ClusterState, JobState, Maintenance, MaintenanceChange, TaskState};
use flotilla_proto::codec;
use flotilla_proto::wire::{MasterMsg, RunTask, WorkerMsg};
use flotilla_session::agent::{self, AgentConfig, AgentCore, LinkError};
use flotilla_session::leader::{self, Failure, LeaderConfig, LeaderCore, ProposalId, SessionId, StateView};

#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Simulated time the run lasts.
    pub duration_ms: u64,
    /// Faults are injected until this time; afterwards the cluster must finish every job.
    pub faults_until_ms: u64,
    pub step_ms: u64,
    pub workers: usize,
    pub cpus: u32,
    /// Cpus' worth of tasks each worker keeps queued at first (it resizes its queue to the
    /// task durations it measures, as real workers do).
    pub queue: u32,
    pub jobs: usize,
    pub worker_timeout_ms: u64,
    /// Chance per step of a fault, in parts per ten thousand.
    pub fault_rate: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            duration_ms: 60_000,
            faults_until_ms: 25_000,
            step_ms: 5,
            workers: 3,
            cpus: 2,
            queue: 2,
            jobs: 4,
            worker_timeout_ms: 3_000,
            fault_rate: 30,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub entries: usize,
    pub faults: usize,
    pub terms: u64,
    pub tasks: u64,
    pub messages: u64,
    /// Sessions the masters refused (a second process under a taken name).
    pub refusals: u64,
    /// Workers that drained themselves (asked to stop) and exited.
    pub drained: u64,
    /// Attempts taken from draining workers at their deadline (stopped and re-queued).
    pub drain_requeued: u64,
    /// Heartbeat round trips the workers measured (echoes answered by a leader).
    pub round_trips: u64,
    /// Queue depths the workers changed (`Queue` reports through the log).
    pub queue_resizes: u64,
    /// Queued attempts taken back from busy workers for idle ones (committed).
    pub revocations: u64,
    /// Jobs failed because a task's workers were lost more often than the limit (by design
    /// under dense faults; every other job must succeed).
    pub failed_by_losses: u64,
    /// Finished jobs purged during the run (each checked first, removed exactly once).
    pub purged: u64,
    /// Jobs submitted `--after` another that ran once it succeeded, and ones cancelled
    /// because it did not.
    pub dependents_run: u64,
    pub dependents_cancelled: u64,
    /// Jobs pairing their tasks with another's (`each`) that ran, and ones cancelled because
    /// that job did not succeed.
    pub paired_run: u64,
    pub paired_cancelled: u64,
    /// Jobs whose tasks needed others of the same job (`needs`) that ended.
    pub needs_jobs: u64,
}

/// Runs one seed; `Err` carries the violated invariant.
pub fn run(seed: u64, config: &SimConfig) -> Result<Report, String> {
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| Sim::new(seed, config.clone()).run()));
    match outcome {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".to_string());
            Err(format!("invariant broken: {msg}"))
        }
    }
}

/// A job and the outputs it must produce.
struct Plan {
    tasks: u64,
    mul: u64,
    add: u64,
    flaky: bool,
    /// Submitted with [`SIM_LIMITS`]: every attempt must reach its worker with them.
    limited: bool,
    /// Submitted `--after` this job: none of its attempts may start before that one
    /// succeeded, and if it did not, this one is cancelled without running.
    after: Option<u64>,
    /// Its task 1 fails every attempt: the job fails (and so its dependents are cancelled).
    doomed: bool,
    /// Pairs its tasks with this job's (`each`): task i starts only once that job's task i
    /// succeeded; if that job does not succeed, this one is cancelled.
    each: Option<u64>,
    /// Whether its tasks need others of it (see [`chain_rules`]): none starts before those
    /// succeeded; when one fails for good (task 1 of a doomed job), the tasks needing it
    /// never run and the job fails for it.
    chained: bool,
}

/// The `needs` of a chained job of `n` tasks: the upper half needs the lower half, and the
/// last task every other one.
fn chain_rules(n: u64) -> Vec<flotilla_core::workflow::TaskNeeds> {
    let half = n / 2;
    vec![
        flotilla_core::workflow::TaskNeeds { tasks: IndexSet::range(half + 1, n - 1), needs: IndexSet::range(1, half) },
        flotilla_core::workflow::TaskNeeds { tasks: IndexSet::range(n, n), needs: IndexSet::range(1, n - 1) },
    ]
}

/// The task limits of every third job.
const SIM_LIMITS: flotilla_core::model::TaskLimits =
    flotilla_core::model::TaskLimits { memory: None, open_files: Some(64), processes: None };

impl Plan {
    fn expected(&self, index: u64) -> u64 {
        (index * self.mul + self.add) % 100_003
    }
}

const MASTERS: usize = 3;

fn address(node: usize) -> String {
    format!("m{}", node + 1)
}

fn node_of(address: &str) -> Option<usize> {
    address.strip_prefix('m')?.parse::<usize>().ok()?.checked_sub(1).filter(|n| *n < MASTERS)
}

/// What travels on the simulated network. A session is one ordered stream each way.
enum Msg {
    /// The worker's stream reaches the master.
    Opened {
        node: usize,
        session: SessionId,
    },
    ToMaster {
        node: usize,
        session: SessionId,
        msg: WorkerMsg,
    },
    /// The worker dropped its stream.
    ClosedByWorker {
        node: usize,
        session: SessionId,
    },
    ToWorker {
        worker: usize,
        session: SessionId,
        msg: MasterMsg,
    },
    /// The master closed the stream.
    ClosedByMaster {
        worker: usize,
        session: SessionId,
    },
    /// The worker notices its stream is dead (keepalive timeout, reset) or never opened.
    Broken {
        worker: usize,
        session: SessionId,
        reason: &'static str,
    },
}

struct InFlight {
    at: u64,
    seq: u64,
    msg: Msg,
}

impl PartialEq for InFlight {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for InFlight {
    /// Reversed: the heap pops the earliest delivery first.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// Who proposed an entry: a master's core (told the outcome if it still leads in that term)
/// or a client.
#[derive(Clone, Copy)]
enum Proposer {
    Master { node: usize, id: ProposalId },
    Client,
}

struct Pending {
    due: u64,
    term: u64,
    commands: Vec<Command>,
    proposer: Proposer,
}

struct Master {
    core: LeaderCore,
    alive: bool,
    restart_at: u64,
    /// Cut off from everyone until then.
    isolated_until: u64,
}

struct Proc {
    task: TaskId,
    fence: Fence,
    started_at: u64,
    done_at: u64,
    /// Killed on request: ends without a result.
    killed: bool,
    started_reported: bool,
    outcome: Outcome,
}

struct SimWorker {
    name: String,
    core: AgentCore,
    alive: bool,
    /// A second process under a taken name: it exits for good when it stops.
    impostor: bool,
    /// When a stopped worker is started again (by its supervisor), if it will be.
    restart_at: Option<u64>,
    /// When an impostor stops by itself.
    dies_at: Option<u64>,
    paused_until: u64,
    procs: Vec<Proc>,
    /// The open stream: its session id and master.
    link: Option<(SessionId, usize)>,
    /// Processes started, and simulated microseconds spent starting them (for heartbeats).
    spawned: u64,
}

struct Sim {
    config: SimConfig,
    rng: Rng,
    base: Instant,
    now: u64,
    seq: u64,
    term: u64,
    leader: Option<usize>,
    election_at: Option<u64>,
    masters: Vec<Master>,
    /// Uncommitted proposals of a lost leader that its successor will commit.
    carried: Vec<Pending>,
    pending: Vec<Pending>,
    /// Outcomes to tell masters' cores at the next step (a proposal refused by a follower).
    refused: Vec<(usize, ProposalId)>,
    /// Applied proposals whose outcome reaches their master's core at the given time:
    /// (at, master, term, proposal, responses).
    outcomes: Vec<(u64, usize, u64, ProposalId, Vec<Response>)>,
    state: ClusterState,
    /// The finished tasks' records the applied entries stored (a master's `state.redb`).
    records: MemRecords,
    log: Vec<(ApplyCtx, Proposal)>,
    net: BinaryHeap<InFlight>,
    /// The last delivery time on each stream direction (streams are ordered).
    stream_clock: HashMap<(SessionId, bool), u64>,
    /// Session -> (worker, master).
    sessions: BTreeMap<SessionId, (usize, usize)>,
    /// Messages deposed leaders sent, for late delivery.
    old_master_msgs: Vec<(usize, MasterMsg)>,
    workers: Vec<SimWorker>,
    /// Jobs by id, once their submission applied.
    plans: BTreeMap<u64, Plan>,
    /// Jobs the simulated operator asked to purge (checked first), and those removed.
    purge_asked: BTreeMap<u64, JobCheck>,
    purged: std::collections::BTreeSet<u64>,
    /// Submissions by request id, until they apply (a lost one is submitted again).
    requests: BTreeMap<String, (Plan, JobSpec)>,
    submitted: usize,
    next_session: SessionId,
    /// Task -> the fence of its recorded successful result.
    recorded: HashMap<TaskId, Fence>,
    /// When each worker incarnation's registration was applied.
    registered: HashMap<(String, u64), u64>,
    /// Attempts taken back from their workers (committed).
    revoked: std::collections::HashSet<(TaskId, Fence)>,
    report: Report,
}

fn leader_config(node: usize, config: &SimConfig) -> LeaderConfig {
    let mut c = LeaderConfig::new(node as u64 + 1, Duration::from_millis(config.worker_timeout_ms));
    c.max_plan = 64;
    c
}

fn new_worker(name: String, instance: u64, impostor: bool, config: &SimConfig, now: Instant) -> SimWorker {
    let core = AgentCore::new(
        AgentConfig {
            name: name.clone(),
            instance,
            cpus: config.cpus,
            memory: None,
            // Every worker offers two gpus and every other job asks for one, so the
            // invariants (no unit given out twice) are checked under every fault.
            resources: [("gpu".to_string(), 2)].into(),
            labels: BTreeMap::new(),
            masters: (0..MASTERS).map(address).collect(),
            prefetch: config.queue,
            adaptive_prefetch: true,
            serves: None,
            exit_when_drained: false,
        },
        now,
    );
    SimWorker {
        name,
        core,
        alive: true,
        impostor,
        restart_at: None,
        dies_at: None,
        paused_until: 0,
        procs: Vec::new(),
        link: None,
        spawned: 0,
    }
}

impl Sim {
    fn new(seed: u64, config: SimConfig) -> Sim {
        let mut rng = Rng::new(seed);
        let base = Instant::now();
        let workers = (0..config.workers)
            .map(|i| {
                let start = base + Duration::from_millis(rng.range(0, 200));
                new_worker(format!("w{i}"), rng.next_u64(), false, &config, start)
            })
            .collect();
        let masters = (0..MASTERS)
            .map(|n| Master {
                core: LeaderCore::new(leader_config(n, &config)),
                alive: true,
                restart_at: 0,
                isolated_until: 0,
            })
            .collect();
        Sim {
            config,
            rng,
            base,
            now: 0,
            seq: 0,
            term: 0,
            leader: None,
            election_at: Some(50),
            masters,
            carried: Vec::new(),
            pending: Vec::new(),
            refused: Vec::new(),
            outcomes: Vec::new(),
            state: ClusterState::new(),
            records: MemRecords::new(),
            log: Vec::new(),
            net: BinaryHeap::new(),
            stream_clock: HashMap::new(),
            sessions: BTreeMap::new(),
            old_master_msgs: Vec::new(),
            workers,
            plans: BTreeMap::new(),
            purge_asked: Default::default(),
            purged: Default::default(),
            requests: BTreeMap::new(),
            submitted: 0,
            next_session: 1,
            recorded: HashMap::new(),
            registered: HashMap::new(),
            revoked: Default::default(),
            report: Report::default(),
        }
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_millis(self.now)
    }

    fn run(mut self) -> Result<Report, String> {
        while self.now < self.config.duration_ms {
            self.now += self.config.step_ms;
            if self.now < self.config.faults_until_ms && self.rng.range(1, 10_000) <= self.config.fault_rate {
                self.fault();
            }
            self.restart_masters();
            self.elect();
            self.commit();
            self.deliver();
            self.step_workers();
            self.tick_masters();
            self.client();
            if self.now > self.config.faults_until_ms && self.all_jobs_done() {
                break;
            }
        }
        self.check_end()?;
        self.report.entries = self.log.len();
        self.report.terms = self.term;
        Ok(self.report)
    }

    fn all_jobs_done(&self) -> bool {
        self.plans.len() == self.config.jobs
            && self.requests.is_empty()
            && self.state.jobs().all(|j| j.state.is_terminal())
    }

    fn reachable(&self, node: usize) -> bool {
        let m = &self.masters[node];
        m.alive && m.isolated_until <= self.now
    }

    // ---- Raft abstraction -------------------------------------------------------------

    fn elect(&mut self) {
        let Some(at) = self.election_at else { return };
        if at > self.now {
            return;
        }
        // A leader needs a majority of masters up and connected.
        let up: Vec<usize> = (0..MASTERS).filter(|n| self.reachable(*n)).collect();
        if up.len() * 2 <= MASTERS {
            self.election_at = Some(self.now + 100);
            return;
        }
        self.election_at = None;
        self.term += 1;
        // Entries the old leader had replicated are committed by the new one first.
        let carried = std::mem::take(&mut self.carried);
        for p in carried {
            self.apply(p.term, p.commands);
        }
        let node = up[(self.term as usize) % up.len()];
        self.leader = Some(node);
        let (term, now) = (self.term, self.instant());
        let mut out = Vec::new();
        self.masters[node].core.lead(now, term, &mut out);
        self.master_effects(node, out);
        for other in up.into_iter().filter(|n| *n != node) {
            let mut out = Vec::new();
            self.masters[other].core.follow(term, Some(address(node)), &mut out);
            self.master_effects(other, out);
        }
    }

    /// The leader is gone (crash) or cut off: its proposals in flight are lost or carried
    /// over to the next term; workers notice their streams to it are dead after
    /// `noticed_after_ms`.
    fn lose_leader(&mut self, crash: bool, noticed_after_ms: u64) {
        let Some(node) = self.leader.take() else { return };
        let pending = std::mem::take(&mut self.pending);
        if self.rng.chance(50) {
            self.carried.extend(pending);
        }
        self.election_at = Some(self.now + self.rng.range(300, 1_200));
        let broken: Vec<(SessionId, usize)> =
            self.sessions.iter().filter(|(_, (_, n))| *n == node).map(|(s, (w, _))| (*s, *w)).collect();
        for (session, worker) in broken {
            self.sessions.remove(&session);
            let at = self.now + noticed_after_ms;
            self.push_at(at, Msg::Broken { worker, session, reason: "stream to the master died" });
        }
        if crash {
            let m = &mut self.masters[node];
            m.alive = false;
            m.restart_at = self.now + self.rng.range(500, 5_000);
        } else {
            self.masters[node].isolated_until = self.now + self.rng.range(1_000, 5_000);
            // It steps down once its lease runs out without a quorum; what it says on the way
            // reaches nobody.
            let mut out = Vec::new();
            self.masters[node].core.follow(self.term, None, &mut out);
            self.master_effects(node, out);
        }
        self.report.faults += 1;
    }

    fn restart_masters(&mut self) {
        for node in 0..MASTERS {
            let m = &self.masters[node];
            if !m.alive && m.restart_at <= self.now {
                let mut core = LeaderCore::new(leader_config(node, &self.config));
                let mut out = Vec::new();
                core.follow(self.term, self.leader.map(address), &mut out);
                let m = &mut self.masters[node];
                m.core = core;
                m.alive = true;
            }
        }
    }

    fn commit(&mut self) {
        for (node, id) in std::mem::take(&mut self.refused) {
            let now = self.instant();
            let mut out = Vec::new();
            self.masters[node].core.on_failed(now, id, Failure::NotLeader, &mut out);
            self.master_effects(node, out);
        }
        self.pending.sort_by_key(|p| p.due);
        while self.pending.first().is_some_and(|p| p.due <= self.now) {
            let p = self.pending.remove(0);
            let responses = self.apply(p.term, p.commands);
            if let Proposer::Master { node, id } = p.proposer {
                // The outcome reaches the core a little after the apply, as the master's
                // callback task does: ticks and messages may come in between.
                let at = self.now + self.rng.range(0, 10);
                self.outcomes.push((at, node, p.term, id, responses));
            }
        }
        self.outcomes.sort_by_key(|o| o.0);
        while self.outcomes.first().is_some_and(|o| o.0 <= self.now) {
            let (_, node, term, id, responses) = self.outcomes.remove(0);
            let leads = self.leader == Some(node) && self.masters[node].core.leading_term() == Some(term);
            if leads {
                let now = self.instant();
                let mut out = Vec::new();
                self.masters[node].core.on_applied(
                    now,
                    &StateView { state: &self.state, records: &self.records },
                    id,
                    &responses,
                    &mut out,
                );
                self.master_effects(node, out);
            }
        }
    }

    fn apply(&mut self, term: u64, commands: Vec<Command>) -> Vec<Response> {
        let ctx = ApplyCtx { index: self.log.len() as u64 + 1, term, at_ms: self.now };
        let proposal = Proposal::new(self.now, commands);
        let responses = self.state.apply(ctx, &proposal);
        self.records.apply(self.state.take_record_ops());
        self.state.sanity_check();
        for (command, response) in proposal.commands.iter().zip(&responses) {
            match (command, response) {
                (Command::TaskFinished { task, fence, outcome, .. }, Response::ResultRecorded)
                    if outcome.succeeded() =>
                {
                    if let Some(previous) = self.recorded.insert(*task, *fence) {
                        panic!("task {task} recorded twice: {previous} then {fence}");
                    }
                }
                (Command::TaskFinished { task, fence, .. } | Command::TaskStarted { task, fence, .. }, _)
                    if self.revoked.contains(&(*task, *fence)) =>
                {
                    panic!("{task} {fence} ran although its worker gave it back");
                }
                (Command::TaskRevoked { task, fence, .. }, Response::Revoked) => {
                    self.revoked.insert((*task, *fence));
                    self.report.revocations += 1;
                }
                (Command::SubmitJobWith { .. }, Response::Invalid { reason }) => {
                    panic!("a submission was refused: {reason}");
                }
                (Command::RegisterWorker(info), Response::WorkerRegistered { incarnation, .. }) => {
                    self.registered.insert((info.name.clone(), *incarnation), self.now);
                }
                (Command::WorkerLost { name, incarnation, .. }, Response::WorkerLost { .. }) => {
                    // Liveness gives every registration a full timeout before it can be lost.
                    if let Some(at) = self.registered.get(&(name.clone(), *incarnation)) {
                        let after = self.now - at;
                        if after <= self.config.worker_timeout_ms && std::env::var_os("SIM_DEBUG").is_some() {
                            for e in self.state.journal().newest(100_000) {
                                eprintln!("event {} {}", e.at_ms, e.kind.message());
                            }
                        }
                        assert!(
                            after > self.config.worker_timeout_ms,
                            "worker {name} incarnation {incarnation} declared lost {after} ms after it registered"
                        );
                    }
                }
                (Command::DrainOverdue { .. }, Response::AttemptsTaken { kill }) => {
                    self.report.drain_requeued += kill.len() as u64;
                }
                (Command::PurgeJobs { jobs }, Response::JobsPurged(out)) => {
                    assert!(out.unfinished.is_empty() && out.unknown.is_empty(), "purge of {jobs:?} refused: {out:?}");
                    for id in &out.purged {
                        let Some(checked) = self.purge_asked.get(id) else { panic!("job {id} purged unasked") };
                        self.report.tasks += checked.tasks;
                        self.report.failed_by_losses += u64::from(checked.failed_by_losses);
                        assert!(self.purged.insert(*id), "job {id} removed twice");
                        self.report.purged += 1;
                    }
                    for id in &out.already_removed {
                        assert!(self.purged.contains(id), "job {id} reported removed but never was");
                    }
                }
                (
                    Command::SubmitJob { request_id: Some(r), .. } | Command::SubmitJobWith { request_id: Some(r), .. },
                    Response::JobSubmitted { job, duplicate },
                ) => match self.requests.remove(r) {
                    Some((plan, _)) => {
                        assert!(!duplicate, "a new request {r} was taken for a duplicate");
                        self.plans.insert(*job, plan);
                    }
                    None => assert!(*duplicate, "request {r} created a second job {job}"),
                },
                _ => {}
            }
        }
        self.log.push((ctx, proposal));
        responses
    }

    // ---- the masters' shells -----------------------------------------------------------

    fn tick_masters(&mut self) {
        for node in 0..MASTERS {
            if !self.masters[node].alive {
                continue;
            }
            let now = self.instant();
            let mut out = Vec::new();
            self.masters[node].core.on_tick(now, &StateView { state: &self.state, records: &self.records }, &mut out);
            self.master_effects(node, out);
        }
    }

    /// Carries out a master core's effects, as `flotilla_master::sessions` does.
    fn master_effects(&mut self, node: usize, effects: Vec<leader::Effect>) {
        for effect in effects {
            match effect {
                leader::Effect::Send { session, msg } => {
                    let msg = round_trip(&msg);
                    let Some((worker, _)) = self.sessions.get(&session).copied() else { continue };
                    if self.old_master_msgs.len() < 200 {
                        self.old_master_msgs.push((worker, msg.clone()));
                    }
                    if self.reachable(node) {
                        self.send(session, false, Msg::ToWorker { worker, session, msg });
                    }
                }
                leader::Effect::Close { session } => {
                    if let Some((worker, _)) = self.sessions.remove(&session) {
                        if self.reachable(node) {
                            self.send(session, false, Msg::ClosedByMaster { worker, session });
                        } else {
                            // Nothing reaches the worker: its keepalives notice.
                            let reason = "keepalive timeout";
                            self.push_at(self.now + 3_000, Msg::Broken { worker, session, reason });
                        }
                    }
                }
                leader::Effect::Propose { id, commands } => {
                    let term = self.masters[node].core.leading_term();
                    if self.leader == Some(node) && term == Some(self.term) {
                        let due = self.now + self.rng.range(1, 15);
                        let proposer = Proposer::Master { node, id };
                        self.pending.push(Pending { due, term: self.term, commands, proposer });
                    } else {
                        self.refused.push((node, id));
                    }
                }
                leader::Effect::Observe(_) => {}
            }
        }
    }

    // ---- the network -------------------------------------------------------------------

    fn push_at(&mut self, at: u64, msg: Msg) {
        self.seq += 1;
        self.net.push(InFlight { at, seq: self.seq, msg });
    }

    /// Sends on one direction of a session's stream: a random delay, but never before what
    /// was sent earlier on the same stream.
    fn send(&mut self, session: SessionId, to_master: bool, msg: Msg) {
        self.report.messages += 1;
        let earliest = self.stream_clock.get(&(session, to_master)).copied().unwrap_or(0);
        let at = (self.now + self.rng.range(0, 30)).max(earliest);
        self.stream_clock.insert((session, to_master), at);
        self.push_at(at, msg);
    }

    fn deliver(&mut self) {
        while self.net.peek().is_some_and(|m| m.at <= self.now) {
            let Some(m) = self.net.pop() else { break };
            match m.msg {
                Msg::Opened { node, session } => {
                    if self.reachable(node) {
                        let now = self.instant();
                        self.masters[node].core.open(now, session);
                    }
                }
                Msg::ToMaster { node, session, msg } => {
                    if self.reachable(node) {
                        let now = self.instant();
                        let mut out = Vec::new();
                        self.masters[node].core.on_message(
                            now,
                            &StateView { state: &self.state, records: &self.records },
                            session,
                            msg,
                            &mut out,
                        );
                        self.master_effects(node, out);
                    }
                }
                Msg::ClosedByWorker { node, session } => {
                    if self.reachable(node) {
                        let mut out = Vec::new();
                        self.masters[node].core.closed(session, &mut out);
                        self.master_effects(node, out);
                    }
                }
                msg @ (Msg::ToWorker { .. } | Msg::ClosedByMaster { .. } | Msg::Broken { .. }) => {
                    let worker = match &msg {
                        Msg::ToWorker { worker, .. }
                        | Msg::ClosedByMaster { worker, .. }
                        | Msg::Broken { worker, .. } => *worker,
                        _ => unreachable!("matched above"),
                    };
                    let w = &self.workers[worker];
                    if w.alive && w.paused_until > self.now {
                        // A paused worker reads its socket later.
                        let at = w.paused_until;
                        self.push_at(at, msg);
                    } else {
                        self.worker_receives(worker, msg);
                    }
                }
            }
        }
    }

    // ---- clients -----------------------------------------------------------------------

    /// Clients submit the jobs through whichever master leads.
    fn client(&mut self) {
        let Some(node) = self.leader else { return };
        if self.masters[node].core.ready_term().is_none() {
            return;
        }
        if (self.submitted < self.config.jobs || !self.requests.is_empty()) && self.rng.chance(2) {
            self.submit_job();
        }
        if self.rng.chance(5) {
            self.purge_a_finished_job();
        }
        // Once the faults stop, the operator puts every worker it took out back in service.
        if self.now > self.config.faults_until_ms && self.rng.chance(5) {
            let out: Vec<String> = self
                .state
                .workers()
                .filter(|w| {
                    matches!(
                        w.maintenance,
                        Maintenance::Cordoned
                            | Maintenance::Draining { by_worker: false, .. }
                            | Maintenance::Drained { by_worker: false }
                    )
                })
                .map(|w| w.name.clone())
                .collect();
            for worker in out {
                self.propose_as_client(vec![Command::SetMaintenance { worker, change: MaintenanceChange::Uncordon }]);
            }
        }
    }

    /// An operator purges the oldest finished job (after checking its results, which then
    /// leave the state), sometimes sending the purge twice as a client retrying would. The
    /// state must remove it once, and only it.
    fn purge_a_finished_job(&mut self) {
        // A job a submission not committed yet waits for stays: the submission would be
        // refused once it is gone, and retried forever.
        let named = |id: u64| self.requests.values().any(|(p, _)| p.after == Some(id) || p.each == Some(id));
        let Some(job) =
            self.state.jobs().find(|j| j.state.is_terminal() && !self.purge_asked.contains_key(&j.id) && !named(j.id))
        else {
            return;
        };
        let plan = &self.plans[&job.id];
        let checked = match check_job(job, &self.records, plan, self.state.unmet(job.id)) {
            Ok(c) => c,
            Err(e) => panic!("before purging: {e}"),
        };
        let id = job.id;
        // Counted here: a dependent purged before the end is not seen by the final check.
        count_dependent(&mut self.report, plan, &checked);
        self.purge_asked.insert(id, checked);
        self.propose_as_client(vec![Command::PurgeJobs { jobs: vec![id] }]);
        if self.rng.chance(30) {
            self.propose_as_client(vec![Command::PurgeJobs { jobs: vec![id] }]);
        }
    }

    fn propose_as_client(&mut self, commands: Vec<Command>) {
        if self.leader.is_none() {
            return;
        }
        let due = self.now + self.rng.range(1, 15);
        self.pending.push(Pending { due, term: self.term, commands, proposer: Proposer::Client });
    }

    /// A client submits a new job, or retries one whose submission was lost (same request id,
    /// so it cannot create the job twice).
    fn submit_job(&mut self) {
        if self.submitted < self.config.jobs {
            self.submitted += 1;
            // The newest committed job not being purged (a purge committed before the
            // submission would have it refused).
            let newest = self
                .plans
                .iter()
                .rev()
                .find(|(id, _)| !self.purge_asked.contains_key(id))
                .map(|(id, p)| (*id, p.tasks));
            let mut tasks = self.rng.range(5, 30);
            // Every fourth job (two after the `after` ones) pairs with the newest committed
            // job, with no more tasks than it.
            let each = newest.filter(|_| self.submitted % 4 == 2);
            if let Some((_, theirs)) = each {
                tasks = tasks.min(theirs);
            }
            let plan = Plan {
                tasks,
                mul: self.rng.range(1, 999),
                add: self.rng.range(0, 999),
                flaky: self.rng.chance(40),
                limited: self.submitted % 3 == 2,
                // Every fourth job waits for the newest job committed so far.
                after: if self.submitted.is_multiple_of(4) { newest.map(|(id, _)| id) } else { None },
                // Half the jobs just before a dependent fail for good, so that the jobs
                // waiting for them must be cancelled.
                // (And some just before a job pairing with them.)
                doomed: matches!(self.submitted % 4, 1 | 3) && self.rng.chance(50),
                each: each.map(|(id, _)| id),
                // Every third job orders its own tasks.
                chained: self.submitted.is_multiple_of(3),
            };
            let spec = JobSpec {
                command: vec!["sim".into()],
                array: Some(IndexSet::range(1, plan.tasks)),
                cpus: self.rng.range(1, u64::from(self.config.cpus)) as u32,
                retries: if plan.flaky { 2 } else { 0 },
                reduce: Some("sum".into()),
                resources: if self.submitted % 2 == 1 { [("gpu".to_string(), 1)].into() } else { BTreeMap::new() },
                ..Default::default()
            };
            self.requests.insert(format!("r{}", self.submitted), (plan, spec));
        }
        let Some((request_id, (plan, spec))) = self.requests.iter().next() else { return };
        let (spec, request_id) = (spec.clone(), Some(request_id.clone()));
        let command = if plan.limited || plan.after.is_some() || plan.each.is_some() || plan.chained {
            let options = flotilla_core::workflow::JobOptions {
                limits: if plan.limited { SIM_LIMITS } else { Default::default() },
                after: plan.after.into_iter().collect(),
                each: plan.each.into_iter().collect(),
                needs: if plan.chained { chain_rules(plan.tasks) } else { Vec::new() },
                ..Default::default()
            };
            Command::SubmitJobWith { spec, request_id, owner: None, options }
        } else {
            Command::SubmitJob { spec, request_id }
        };
        self.propose_as_client(vec![command]);
    }

    // ---- workers -------------------------------------------------------------------------

    fn worker_receives(&mut self, w: usize, msg: Msg) {
        if !self.workers[w].alive {
            return;
        }
        let now = self.instant();
        let mut out = Vec::new();
        let worker = &mut self.workers[w];
        match msg {
            Msg::ToWorker { session, msg, .. } if worker.link.map(|l| l.0) == Some(session) => {
                worker.core.on_message(now, msg, &mut out)
            }
            Msg::ClosedByMaster { session, .. } if worker.link.map(|l| l.0) == Some(session) => {
                worker.core.lost(now, LinkError::Broken("master closed the session".into()), &mut out)
            }
            Msg::Broken { session, reason, .. } if worker.link.map(|l| l.0) == Some(session) => {
                worker.core.lost(now, LinkError::Broken(reason.into()), &mut out)
            }
            _ => return, // for a stream this worker no longer has
        }
        self.worker_effects(w, out);
    }

    /// Carries out a worker core's effects, as `flotilla_worker` does.
    fn worker_effects(&mut self, w: usize, effects: Vec<agent::Effect>) {
        for effect in effects {
            match effect {
                agent::Effect::Connect { address } => self.connect(w, &address),
                agent::Effect::Send(msg) => {
                    let msg = round_trip(&msg);
                    if let Some((session, node)) = self.workers[w].link {
                        self.send(session, true, Msg::ToMaster { node, session, msg });
                    }
                }
                agent::Effect::Disconnect => {
                    if let Some((session, node)) = self.workers[w].link.take() {
                        if self.sessions.remove(&session).is_some() {
                            self.send(session, true, Msg::ClosedByWorker { node, session });
                        }
                    }
                }
                agent::Effect::Start(run) => {
                    // A job's limits reach every attempt of it (through `RunWith`), and
                    // only its attempts.
                    if let Some(plan) = self.plans.get(&run.task.job) {
                        let expected = if plan.limited { SIM_LIMITS } else { Default::default() };
                        assert_eq!(run.limits, expected, "{} started with the wrong limits", run.task);
                        // The assignment is committed, so the job it waited for had
                        // succeeded by then (or was purged after a check that says so).
                        if let Some(up) = plan.after {
                            let succeeded = match self.state.job(up) {
                                Some(j) => j.state == JobState::Succeeded,
                                None => self.purge_asked.get(&up).is_some_and(|c| !c.failed_by_losses && !c.cancelled),
                            };
                            assert!(succeeded, "{} started though job {up} it waits for has not succeeded", run.task);
                        }
                        // Task-level dependencies: the paired task, and the tasks of its
                        // own job it needs, had succeeded when the assignment committed.
                        let succeeded = |state: &ClusterState, task: TaskId| {
                            let Some(index) = task.slot.array_index() else { return true };
                            match state.job(task.job) {
                                Some(j) => j.finished(index).is_some_and(|s| s.state == TaskState::Succeeded),
                                None => self.purge_asked.get(&task.job).is_some_and(|c| !c.cancelled),
                            }
                        };
                        if let (Some(up), Some(index)) = (plan.each, run.task.slot.array_index()) {
                            let pair = TaskId::array(up, index);
                            assert!(
                                succeeded(&self.state, pair),
                                "{} started before {pair} it pairs with succeeded",
                                run.task
                            );
                        }
                        if let (true, Some(index)) = (plan.chained, run.task.slot.array_index()) {
                            let options = flotilla_core::workflow::JobOptions {
                                needs: chain_rules(plan.tasks),
                                ..Default::default()
                            };
                            for needed in options.needed_by(index).iter() {
                                let needed = TaskId::array(run.task.job, needed);
                                assert!(
                                    succeeded(&self.state, needed),
                                    "{} started before {needed} it needs succeeded",
                                    run.task
                                );
                            }
                        }
                    }
                    // A worker that gave an attempt back never starts it.
                    assert!(
                        !self.revoked.contains(&(run.task, run.fence)),
                        "worker {} started {} {} after its revocation committed",
                        self.workers[w].name,
                        run.task,
                        run.fence
                    );
                    let outcome = self.outcome_of(&run);
                    let done_at = self.now + self.rng.range(10, 400);
                    let worker = &mut self.workers[w];
                    worker.spawned += 1;
                    worker.procs.push(Proc {
                        task: run.task,
                        fence: run.fence,
                        started_at: self.now,
                        done_at,
                        killed: false,
                        started_reported: false,
                        outcome,
                    });
                }
                // Simulated workers serve no outputs (they say no address), so no leader asks
                // them to take copies.
                agent::Effect::Copy { task, .. } => panic!("worker {} asked to copy {task}", self.workers[w].name),
                // Nor do they send inventories, so nothing is discarded.
                agent::Effect::Discard(digests) => {
                    panic!("worker {} asked to discard {} blobs", self.workers[w].name, digests.len())
                }
                agent::Effect::Kill(task, fence) => {
                    let at = self.now + self.rng.range(0, 5);
                    if let Some(p) = self.workers[w].procs.iter_mut().find(|p| p.task == task && p.fence == fence) {
                        p.killed = true;
                        p.done_at = p.done_at.min(at);
                    }
                }
                agent::Effect::Drained => {
                    // Invariant: a worker that drained itself runs nothing when it exits.
                    let running = self.workers[w].procs.iter().filter(|p| !p.killed).count();
                    assert_eq!(
                        running, 0,
                        "worker {} exited drained with {running} tasks running",
                        self.workers[w].name
                    );
                    self.report.drained += 1;
                    self.stop_worker(w);
                }
                agent::Effect::Exit(_) => {
                    // The masters refused this process: it stops, and so do its tasks. A
                    // supervisor starts the worker again later; an impostor stays stopped.
                    self.report.refusals += 1;
                    self.stop_worker(w);
                }
                agent::Effect::Observe(agent::Observation::RoundTrip(_)) => self.report.round_trips += 1,
                agent::Effect::Observe(agent::Observation::QueueResized { .. }) => self.report.queue_resizes += 1,
                agent::Effect::Observe(_) => {}
            }
        }
    }

    /// Opens a stream to the master at `address`, or fails as a real connection would.
    fn connect(&mut self, w: usize, address: &str) {
        let now = self.instant();
        let Some(node) = node_of(address) else { panic!("a worker asked for an unknown master {address}") };
        if !self.reachable(node) {
            // Refused at once by a dead master's host; a cut-off one times out.
            let after = if self.masters[node].alive { 1_000 } else { self.rng.range(1, 5) };
            let session = self.next_session;
            self.next_session += 1;
            self.workers[w].link = Some((session, node));
            self.push_at(self.now + after, Msg::Broken { worker: w, session, reason: "cannot connect" });
            return;
        }
        let session = self.next_session;
        self.next_session += 1;
        self.sessions.insert(session, (w, node));
        self.workers[w].link = Some((session, node));
        self.send(session, true, Msg::Opened { node, session });
        let mut out = Vec::new();
        self.workers[w].core.connected(now, &mut out);
        self.worker_effects(w, out);
    }

    fn stop_worker(&mut self, w: usize) {
        let restart = self.now + self.rng.range(1_000, 5_000);
        let worker = &mut self.workers[w];
        worker.alive = false;
        worker.procs.clear();
        worker.restart_at = (!worker.impostor).then_some(restart);
        if let Some((session, node)) = worker.link.take() {
            // The process is gone: its host closes the stream.
            if self.sessions.remove(&session).is_some() {
                self.send(session, true, Msg::ClosedByWorker { node, session });
            }
        }
    }

    /// What the simulated process prints: each task its known value (some fail their first
    /// attempt), the reduce step the sum of its input.
    fn outcome_of(&mut self, run: &RunTask) -> Outcome {
        let text = match run.task.slot {
            TaskSlot::Array(i) => {
                let plan = &self.plans[&run.task.job];
                if plan.doomed && i == 1 {
                    return Outcome { exit_code: Some(2), ..Default::default() };
                }
                if plan.flaky && run.fence.attempt == 1 && i % 7 == 0 {
                    return Outcome { exit_code: Some(1), ..Default::default() };
                }
                format!("{}\n", plan.expected(i))
            }
            TaskSlot::Reduce => {
                let input = run.stdin.clone().unwrap_or_default();
                let sum: u64 = input.lines().filter_map(|l| l.trim().parse::<u64>().ok()).sum();
                format!("{sum}\n")
            }
        };
        Outcome {
            exit_code: Some(0),
            stdout: Captured::from_bytes(text.as_bytes(), text.len() as u64),
            ..Default::default()
        }
    }

    fn step_workers(&mut self) {
        for w in 0..self.workers.len() {
            if !self.workers[w].alive {
                if self.workers[w].restart_at.is_some_and(|t| t <= self.now) {
                    let instance = self.rng.next_u64();
                    let (name, now) = (self.workers[w].name.clone(), self.instant());
                    self.workers[w] = new_worker(name, instance, false, &self.config, now);
                }
                continue;
            }
            if self.workers[w].dies_at.is_some_and(|t| t <= self.now) {
                self.stop_worker(w);
                continue;
            }
            if self.workers[w].paused_until > self.now {
                continue;
            }
            let now = self.instant();
            let mut out = Vec::new();
            // Processes that ran long enough to report, and those that ended.
            let mut wake = false;
            {
                let worker = &mut self.workers[w];
                for p in worker.procs.iter_mut() {
                    if !p.started_reported && !p.killed && p.done_at > self.now && p.started_at + 50 <= self.now {
                        p.started_reported = true;
                        worker.core.started(p.task, p.fence, &mut out);
                    }
                }
                let (done, running): (Vec<Proc>, Vec<Proc>) =
                    std::mem::take(&mut worker.procs).into_iter().partition(|p| p.done_at <= self.now);
                worker.procs = running;
                for p in done {
                    let (outcome, took) = if p.killed {
                        (None, None)
                    } else {
                        (Some(p.outcome), Some(Duration::from_millis(p.done_at - p.started_at)))
                    };
                    wake |= worker.core.ended(now, p.task, p.fence, outcome, took, &mut out);
                }
                if wake {
                    worker.core.reports_ready(now, &mut out);
                }
                if worker.core.next_deadline().is_some_and(|t| t <= now) {
                    let spawned = worker.spawned;
                    worker.core.on_tick(now, spawned, spawned * 700, &mut out);
                }
            }
            self.worker_effects(w, out);
        }
    }

    // ---- faults --------------------------------------------------------------------------

    fn fault(&mut self) {
        let w = self.rng.range(0, self.workers.len() as u64 - 1) as usize;
        let kind = self.rng.range(0, 10);
        if std::env::var_os("SIM_DEBUG").is_some() {
            eprintln!("fault {} kind {kind} worker {w} ({})", self.now, self.workers[w].name);
        }
        match kind {
            // The leader crashes: workers see their streams close at once.
            0 => self.lose_leader(true, 1),
            // The leader is paused or cut off: workers notice through keepalives.
            1 => self.lose_leader(false, 3_000),
            2 => {
                // A worker crashes; its processes die with it (killed on restart).
                if self.workers[w].alive {
                    self.stop_worker(w);
                    self.workers[w].restart_at = Some(self.now + self.rng.range(200, 5_000));
                    self.report.faults += 1;
                }
            }
            3 => {
                // A worker pauses, sometimes past the worker timeout.
                self.workers[w].paused_until = self.now + self.rng.range(500, 6_000);
                self.report.faults += 1;
            }
            4 => {
                // Its stream breaks (a reset): both ends notice.
                if let Some((session, node)) = self.workers[w].link {
                    if self.sessions.remove(&session).is_some() {
                        self.send(session, true, Msg::ClosedByWorker { node, session });
                    }
                    self.push_at(self.now + 1, Msg::Broken { worker: w, session, reason: "stream reset" });
                    self.report.faults += 1;
                }
            }
            5 => {
                // A report is delivered twice.
                if let (Some((session, node)), true) = (self.workers[w].link, self.workers[w].core.is_welcomed()) {
                    for msg in self.workers[w].core.book().unacked().into_iter().take(1) {
                        self.send(session, true, Msg::ToMaster { node, session, msg });
                        self.report.faults += 1;
                    }
                }
            }
            6 => {
                // A second process starts under the name of a connected worker (a copy-pasted
                // --name): it must be refused; it stops by itself a little later.
                let original = &self.workers[w];
                let connected = original.alive && original.core.is_welcomed() && original.paused_until <= self.now;
                if self.workers.len() < self.config.workers + 3 && connected {
                    let (name, instance, now) = (self.workers[w].name.clone(), self.rng.next_u64(), self.instant());
                    let mut impostor = new_worker(name, instance, true, &self.config, now);
                    impostor.dies_at = Some(self.now + self.rng.range(500, 2_000));
                    self.workers.push(impostor);
                    self.report.faults += 1;
                }
            }
            8 => {
                // The worker is asked to stop (SIGTERM): it drains, with or without a deadline,
                // and exits once drained (its supervisor starts it again later).
                if self.workers[w].alive && !self.workers[w].impostor {
                    let deadline = self.rng.chance(70).then(|| Duration::from_millis(self.rng.range(0, 3_000)));
                    let (now, mut out) = (self.instant(), Vec::new());
                    self.workers[w].core.drain(now, deadline, &mut out);
                    self.worker_effects(w, out);
                    self.report.faults += 1;
                }
            }
            9 => {
                // An operator cordons, drains or puts back a worker.
                let name = self.workers[w].name.clone();
                let change = match self.rng.range(0, 3) {
                    0 => MaintenanceChange::Cordon,
                    1 => MaintenanceChange::Uncordon,
                    _ => {
                        let deadline_ms = self.rng.chance(50).then(|| self.rng.range(0, 3_000));
                        MaintenanceChange::Drain { deadline_ms, by_worker: false }
                    }
                };
                self.propose_as_client(vec![Command::SetMaintenance { worker: name, change }]);
                self.report.faults += 1;
            }
            _ => {
                // A deposed leader, which does not know it yet, reaches a worker that has
                // already seen a newer term: the worker must ignore it.
                let stale: Vec<(usize, MasterMsg)> = self
                    .old_master_msgs
                    .iter()
                    .filter(|(w, m)| {
                        let worker = &self.workers[*w];
                        worker.alive && worker.core.is_welcomed() && m.term < worker.core.book().highest_term()
                    })
                    .cloned()
                    .collect();
                if !stale.is_empty() {
                    let (worker, msg) = self.rng.pick(&stale).clone();
                    if let Some((session, _)) = self.workers[worker].link {
                        self.send(session, false, Msg::ToWorker { worker, session, msg });
                        self.report.faults += 1;
                    }
                }
            }
        }
    }

    // ---- final checks --------------------------------------------------------------------

    fn check_end(&mut self) -> Result<(), String> {
        if std::env::var_os("SIM_DEBUG").is_some() {
            eprintln!(
                "now {} term {} leader {:?} election_at {:?}",
                self.now, self.term, self.leader, self.election_at
            );
            for (n, m) in self.masters.iter().enumerate() {
                eprintln!(
                    "master {n}: alive {} isolated_until {} leading {:?} ready {:?} open {}",
                    m.alive,
                    m.isolated_until,
                    m.core.leading_term(),
                    m.core.ready_term(),
                    m.core.open_sessions()
                );
            }
            for e in self.state.journal().newest(100_000) {
                eprintln!("event {} {}", e.at_ms, e.kind.message());
            }
            for w in self.state.workers() {
                eprintln!("state worker {} {:?} inc {} tasks {}", w.name, w.state, w.incarnation, w.tasks.len());
            }
            for w in &self.workers {
                eprintln!(
                    "sim worker {} alive {} link {:?} welcomed {} exited {} deadline {:?} procs {}",
                    w.name,
                    w.alive,
                    w.link,
                    w.core.is_welcomed(),
                    w.core.has_exited(),
                    w.core.next_deadline().map(|d| d.saturating_duration_since(self.base).as_millis()),
                    w.procs.len()
                );
            }
        }
        if self.plans.len() < self.config.jobs {
            return Err(format!("only {} of {} jobs were submitted", self.plans.len(), self.config.jobs));
        }
        for (id, plan) in &self.plans {
            let Some(job) = self.state.job(*id) else {
                // Gone: only by a purge the simulated operator made after checking it.
                if !self.purged.contains(id) {
                    return Err(format!("job {id} disappeared without a purge"));
                }
                continue;
            };
            let checked = check_job(job, &self.records, plan, self.state.unmet(job.id))?;
            self.report.tasks += checked.tasks;
            self.report.failed_by_losses += u64::from(checked.failed_by_losses);
            count_dependent(&mut self.report, plan, &checked);
        }
        let mut replay = ClusterState::new();
        let mut replayed = MemRecords::new();
        for (ctx, proposal) in &self.log {
            replay.apply(*ctx, proposal);
            replayed.apply(replay.take_record_ops());
        }
        if replay != self.state {
            return Err("replaying the committed log gives a different state".into());
        }
        if replayed != self.records {
            return Err("replaying the committed log gives different task records".into());
        }
        // Records go with their jobs: none is left of a job the state no longer has.
        let orphans = self.records.job_ids().filter(|id| self.state.job(*id).is_none()).count();
        if orphans > 0 {
            return Err(format!("{orphans} removed jobs left task records behind"));
        }
        Ok(())
    }
}

fn count_dependent(report: &mut Report, plan: &Plan, checked: &JobCheck) {
    let (run, cancelled) = if plan.after.is_some() {
        (&mut report.dependents_run, &mut report.dependents_cancelled)
    } else if plan.each.is_some() {
        (&mut report.paired_run, &mut report.paired_cancelled)
    } else {
        if plan.chained {
            report.needs_jobs += 1;
        }
        return;
    };
    *if checked.cancelled { cancelled } else { run } += 1;
}

/// What checking one finished job found.
struct JobCheck {
    tasks: u64,
    failed_by_losses: bool,
    /// Cancelled, rightly, because the job it waited for did not succeed.
    cancelled: bool,
}

/// A finished job is right: it succeeded with every task's expected output from its latest
/// attempt and the expected reduce result, or it failed only because a task's workers were
/// lost more often than the limit (by design), its other results still right.
fn check_job(
    job: &flotilla_core::state::Job,
    records: &MemRecords,
    plan: &Plan,
    unmet: Option<flotilla_core::workflow::Unmet>,
) -> Result<JobCheck, String> {
    // The only cancellation the simulation makes: a dependent of a job that did not
    // succeed, cancelled before any task of it was placed.
    if job.state == JobState::Cancelled {
        return match (plan.after, plan.each, unmet) {
            (Some(up), _, Some(u)) if u.upstream == up && u.state != JobState::Succeeded && job.tasks.is_empty() => {
                Ok(JobCheck { tasks: 0, failed_by_losses: false, cancelled: true })
            }
            // A paired job may have run some tasks: those whose pair succeeded.
            (_, Some(up), Some(u)) if u.upstream == up && u.state != JobState::Succeeded => {
                Ok(JobCheck { tasks: 0, failed_by_losses: false, cancelled: true })
            }
            _ => Err(format!(
                "job {} cancelled ({unmet:?}, waited for {:?}, {} tasks placed)",
                job.id,
                plan.after,
                job.tasks.len()
            )),
        };
    }
    if unmet.is_some() {
        return Err(format!("job {} is {} but marked cancelled for {unmet:?}", job.id, job.state.name()));
    }
    // A doomed job fails, for its task 1 and for nothing else.
    if plan.doomed {
        let failure = job.failure.as_ref().map(|f| f.task);
        return match (job.state, failure) {
            (JobState::Failed, Some(t)) if t == TaskId::array(job.id, 1) => {
                Ok(JobCheck { tasks: 0, failed_by_losses: false, cancelled: false })
            }
            (state, failure) => Err(format!("doomed job {} is {} (failure {failure:?})", job.id, state.name())),
        };
    }
    let record = |i: u64| {
        records
            .record(TaskId::array(job.id, i))
            .map_err(|e| e.to_string())
            .map(|r| r.or_else(|| job.tasks.get(&i).cloned()))
    };
    let lost_too_often = matches!(
        &job.failure,
        Some(JobFailure { reason: TaskFailure::WorkerLost { times, .. }, .. }) if *times > MAX_WORKER_LOSSES
    );
    if job.state == JobState::Failed && lost_too_often {
        for i in 1..=plan.tasks {
            let Some(task) = record(i)? else { continue };
            if let Some(r) = task.result.as_ref().filter(|r| r.outcome.succeeded()) {
                if r.outcome.stdout.text.trim() != plan.expected(i).to_string() {
                    return Err(format!(
                        "job {} task {i}: {:?} != {}",
                        job.id,
                        r.outcome.stdout.text,
                        plan.expected(i)
                    ));
                }
            }
        }
        return Ok(JobCheck { tasks: 0, failed_by_losses: true, cancelled: false });
    }
    if job.state != JobState::Succeeded {
        return Err(format!(
            "job {} is {} at the end ({:?}, counts {:?}); a task was lost",
            job.id,
            job.state.name(),
            job.failure,
            job.counts
        ));
    }
    for i in 1..=plan.tasks {
        let task = record(i)?.ok_or_else(|| format!("job {} task {i} has no record", job.id))?;
        if task.state != TaskState::Succeeded {
            return Err(format!("job {} task {i} is {} in its record", job.id, task.state.name()));
        }
        let r = task.result.as_ref().ok_or_else(|| format!("job {} task {i} has no result", job.id))?;
        if r.outcome.stdout.text.trim() != plan.expected(i).to_string() {
            return Err(format!("job {} task {i}: {:?} != {}", job.id, r.outcome.stdout.text, plan.expected(i)));
        }
        if r.fence.attempt != task.attempts {
            return Err(format!(
                "job {} task {i}: result from attempt {} of {}",
                job.id, r.fence.attempt, task.attempts
            ));
        }
    }
    let expected: u64 = (1..=plan.tasks).map(|i| plan.expected(i)).sum();
    let result = records::job_result(job, records).map_err(|e| e.to_string())?.map(|(text, _)| text);
    if result.as_deref().map(str::trim) != Some(expected.to_string().as_str()) {
        return Err(format!("job {}: reduce result {result:?}, expected {expected}", job.id));
    }
    Ok(JobCheck { tasks: plan.tasks, failed_by_losses: false, cancelled: false })
}

/// Every message goes through the wire encoding, as on a real stream.
fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(msg: &T) -> T {
    let bytes = codec::encode("simulated message", msg).expect("session messages encode");
    codec::decode("simulated message", &bytes).expect("session messages decode")
}
