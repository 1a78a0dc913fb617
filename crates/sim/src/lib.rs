//! Deterministic simulation of Flotilla's control logic.
//!
//! The real state machine (`ClusterState::apply`), scheduler (`scheduler::plan`), the
//! leader's session decisions (`session::reconcile`, `session::reply`) and the worker's
//! bookkeeping (`flotilla_worker::book::Book`) run unchanged inside a seeded simulation with a
//! simulated clock. Around them the simulator plays the parts that are I/O in production:
//!
//! - **Raft** as an abstraction: the current leader's proposals commit after a random delay
//!   and are applied in log order; a crashed or deposed leader's uncommitted proposals are
//!   either lost or committed later by its successor (as Raft allows); a new leader takes over
//!   after an election delay, with the next term, and writes its election entry first;
//! - **the network** between the leader and workers: per-message random delays (so messages
//!   are reordered), duplicated reports, late messages from deposed leaders, broken sessions
//!   (message loss on a stream breaks it; the worker reconnects and is reconciled);
//! - **workers**: task processes with seeded durations and known outputs (some fail their
//!   first attempt), heartbeats, crashes and restarts (losing what they held), pauses.
//!
//! After every applied entry it checks the state's invariants (`sanity_check`: capacity,
//! counters, queue, task ownership) and that no task's successful result is recorded twice;
//! at the end, after the faults stop, that every job succeeded with the expected outputs and
//! reduce results, and that replaying the committed log rebuilds the same state.
//!
//! Not simulated: openraft itself (its election and replication code), the gRPC/HTTP
//! transport, redb, and real processes; the chaos harness exercises those for real.

use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::panic::AssertUnwindSafe;

use flotilla_core::command::{Command, Proposal, Response, WorkerInfo};
use flotilla_core::index_set::IndexSet;
use flotilla_core::model::{Captured, Fence, JobSpec, Outcome, TaskId, TaskSlot};
use flotilla_core::rng::Rng;
use flotilla_core::scheduler;
use flotilla_core::session::{self, Reply};
use flotilla_core::state::{ApplyCtx, ClusterState, JobState, WorkerState};
use flotilla_proto::wire::{MasterBody, MasterMsg, RunTask, WorkerMsg, PROTOCOL_VERSION};
use flotilla_worker::book::{Action, Book};

#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Simulated time the run lasts.
    pub duration_ms: u64,
    /// Faults are injected until this time; afterwards the cluster must finish every job.
    pub faults_until_ms: u64,
    pub step_ms: u64,
    pub workers: usize,
    pub cpus: u32,
    /// Cpus' worth of tasks each worker keeps queued.
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
}

impl Plan {
    fn expected(&self, index: u64) -> u64 {
        (index * self.mul + self.add) % 100_003
    }
}

enum Msg {
    ToLeader { worker: usize, session: u64, msg: WorkerMsg },
    ToWorker { worker: usize, session: u64, msg: MasterMsg },
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

/// What to do when a proposal is applied (only if its leader still leads).
enum Origin {
    Elected,
    Hello { worker: usize, session: u64, known: Vec<(TaskId, Fence)> },
    Report { worker: usize, session: u64, task: TaskId, fence: Fence, finished: bool },
    Plan,
    Other,
}

struct Pending {
    due: u64,
    term: u64,
    commands: Vec<Command>,
    origin: Origin,
}

struct Leader {
    term: u64,
    ready: bool,
    sessions: HashMap<usize, u64>,
    last_heard: HashMap<String, u64>,
    plan_in_flight: bool,
    lost_proposed: HashSet<(String, u64)>,
}

struct Proc {
    task: TaskId,
    fence: Fence,
    done_at: u64,
    outcome: Outcome,
}

struct SimWorker {
    name: String,
    instance: u64,
    alive: bool,
    restart_at: u64,
    paused_until: u64,
    book: Book,
    procs: Vec<Proc>,
    session: Option<u64>,
    welcomed: bool,
    connect_at: Option<u64>,
    next_beat: u64,
}

struct Sim {
    config: SimConfig,
    rng: Rng,
    now: u64,
    seq: u64,
    term: u64,
    leader: Option<Leader>,
    election_at: Option<u64>,
    /// Uncommitted proposals of a lost leader that its successor will commit.
    carried: Vec<Pending>,
    pending: Vec<Pending>,
    state: ClusterState,
    log: Vec<(ApplyCtx, Proposal)>,
    net: BinaryHeap<InFlight>,
    /// Messages deposed leaders sent, for late delivery.
    old_master_msgs: Vec<(usize, MasterMsg)>,
    workers: Vec<SimWorker>,
    /// Jobs by id, once their submission applied.
    plans: BTreeMap<u64, Plan>,
    /// Submissions by request id, until they apply (a lost one is submitted again).
    requests: BTreeMap<String, (Plan, JobSpec)>,
    submitted: usize,
    next_session: u64,
    /// Task -> the fence of its recorded successful result.
    recorded: HashMap<TaskId, Fence>,
    report: Report,
}

impl Sim {
    fn new(seed: u64, config: SimConfig) -> Sim {
        let mut rng = Rng::new(seed);
        let workers = (0..config.workers)
            .map(|i| SimWorker {
                name: format!("w{i}"),
                instance: rng.next_u64(),
                alive: true,
                restart_at: 0,
                paused_until: 0,
                book: Book::new(config.cpus),
                procs: Vec::new(),
                session: None,
                welcomed: false,
                connect_at: Some(rng.range(0, 200)),
                next_beat: 0,
            })
            .collect();
        Sim {
            config,
            rng,
            now: 0,
            seq: 0,
            term: 0,
            leader: None,
            election_at: Some(50),
            carried: Vec::new(),
            pending: Vec::new(),
            state: ClusterState::new(),
            log: Vec::new(),
            net: BinaryHeap::new(),
            old_master_msgs: Vec::new(),
            workers,
            plans: BTreeMap::new(),
            requests: BTreeMap::new(),
            submitted: 0,
            next_session: 1,
            recorded: HashMap::new(),
            report: Report::default(),
        }
    }

    fn run(mut self) -> Result<Report, String> {
        while self.now < self.config.duration_ms {
            self.now += self.config.step_ms;
            if self.now < self.config.faults_until_ms && self.rng.range(1, 10_000) <= self.config.fault_rate {
                self.fault();
            }
            self.elect();
            self.commit();
            self.deliver();
            self.step_workers();
            self.lead();
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

    // ---- Raft abstraction -------------------------------------------------------------

    fn propose(&mut self, commands: Vec<Command>, origin: Origin) {
        let Some(leader) = &self.leader else { return };
        let due = self.now + self.rng.range(1, 15);
        self.pending.push(Pending { due, term: leader.term, commands, origin });
    }

    fn elect(&mut self) {
        let Some(at) = self.election_at else { return };
        if at > self.now {
            return;
        }
        self.election_at = None;
        self.term += 1;
        // Entries the old leader had replicated are committed by the new one first.
        let carried = std::mem::take(&mut self.carried);
        for p in carried {
            self.apply(p.term, p.commands);
        }
        self.leader = Some(Leader {
            term: self.term,
            ready: false,
            sessions: HashMap::new(),
            last_heard: HashMap::new(),
            plan_in_flight: false,
            lost_proposed: HashSet::new(),
        });
        self.propose(vec![Command::LeaderElected { node: self.term % 3 + 1 }], Origin::Elected);
    }

    /// The leader is gone (crash) or cut off (it learns later): sessions end, proposals in
    /// flight are lost or carried over to the next term.
    fn lose_leader(&mut self, noticed_after_ms: u64) {
        if self.leader.take().is_none() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        if self.rng.chance(50) {
            self.carried.extend(pending);
        }
        self.election_at = Some(self.now + self.rng.range(300, 1_200));
        for w in 0..self.workers.len() {
            let at = self.now + noticed_after_ms;
            self.workers[w].connect_at = self.workers[w].connect_at.map(|c| c.min(at)).or(Some(at));
            // Until it notices, the worker still "talks" to the old leader: its messages are
            // lost, as on a stream to a dead or unreachable master.
        }
        self.report.faults += 1;
    }

    fn commit(&mut self) {
        self.pending.sort_by_key(|p| p.due);
        while self.pending.first().is_some_and(|p| p.due <= self.now) {
            let p = self.pending.remove(0);
            let responses = self.apply(p.term, p.commands);
            if self.leader.as_ref().is_some_and(|l| l.term == p.term) {
                self.effects(p.origin, responses);
            }
        }
    }

    fn apply(&mut self, term: u64, commands: Vec<Command>) -> Vec<Response> {
        let ctx = ApplyCtx { index: self.log.len() as u64 + 1, term, at_ms: self.now };
        let proposal = Proposal::new(self.now, commands);
        let responses = self.state.apply(ctx, &proposal);
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
                (Command::SubmitJob { request_id: Some(r), .. }, Response::JobSubmitted { job, duplicate }) => {
                    match self.requests.remove(r) {
                        Some((plan, _)) => {
                            assert!(!duplicate, "a new request {r} was taken for a duplicate");
                            self.plans.insert(*job, plan);
                        }
                        None => assert!(*duplicate, "request {r} created a second job {job}"),
                    }
                }
                _ => {}
            }
        }
        self.log.push((ctx, proposal));
        responses
    }

    fn effects(&mut self, origin: Origin, responses: Vec<Response>) {
        match origin {
            Origin::Elected => {
                if let Some(l) = &mut self.leader {
                    l.ready = true;
                }
            }
            Origin::Hello { worker, session, known } => {
                if let Some(Response::WorkerRegistered { incarnation, .. }) = responses.first() {
                    self.welcome(worker, session, *incarnation, &known);
                }
            }
            Origin::Report { worker, session, task, fence, finished } => {
                let body = match responses.first().map(|r| session::reply(r, finished)) {
                    Some(Reply::Ack) => MasterBody::Ack { task, fence },
                    Some(Reply::Stop) => MasterBody::Stop { task, fence },
                    _ => return,
                };
                self.send_to_worker(worker, session, body);
            }
            Origin::Plan => {
                if let Some(l) = &mut self.leader {
                    l.plan_in_flight = false;
                }
                if let Some(Response::Assigned { runs }) = responses.first() {
                    for run in runs.clone() {
                        let Some(w) = self.workers.iter().position(|w| w.name == run.worker) else { continue };
                        let session = self.leader.as_ref().and_then(|l| l.sessions.get(&w).copied());
                        if let (Some(session), Some(msg)) =
                            (session, RunTask::for_attempt(&self.state, run.task, run.fence))
                        {
                            self.send_to_worker(w, session, MasterBody::Run(msg));
                        }
                    }
                }
            }
            Origin::Other => {}
        }
    }

    // ---- the network -------------------------------------------------------------------

    fn send(&mut self, msg: Msg) {
        self.seq += 1;
        self.report.messages += 1;
        let at = self.now + self.rng.range(0, 30);
        self.net.push(InFlight { at, seq: self.seq, msg });
    }

    fn send_to_worker(&mut self, worker: usize, session: u64, body: MasterBody) {
        let Some(term) = self.leader.as_ref().map(|l| l.term) else { return };
        let msg = MasterMsg { term, body };
        if self.old_master_msgs.len() < 200 {
            self.old_master_msgs.push((worker, msg.clone()));
        }
        self.send(Msg::ToWorker { worker, session, msg });
    }

    fn deliver(&mut self) {
        while self.net.peek().is_some_and(|m| m.at <= self.now) {
            let Some(m) = self.net.pop() else { break };
            match m.msg {
                Msg::ToLeader { worker, session, msg } => self.leader_receives(worker, session, msg),
                Msg::ToWorker { worker, session, msg } => {
                    let w = &self.workers[worker];
                    if w.alive && w.paused_until > self.now {
                        // A paused worker reads its socket later.
                        let at = w.paused_until;
                        self.seq += 1;
                        self.net.push(InFlight { at, seq: self.seq, msg: Msg::ToWorker { worker, session, msg } });
                    } else {
                        self.worker_receives(worker, session, msg);
                    }
                }
            }
        }
    }

    // ---- the leader ----------------------------------------------------------------------

    fn leader_receives(&mut self, worker: usize, session: u64, msg: WorkerMsg) {
        for msg in msg.flatten() {
            self.leader_handles(worker, session, msg);
        }
    }

    fn leader_handles(&mut self, worker: usize, session: u64, msg: WorkerMsg) {
        let Some(leader) = &mut self.leader else { return };
        // A worker still talking over a dead session to a previous leader is not heard.
        let name = self.workers[worker].name.clone();
        match msg {
            WorkerMsg::Hello { info, known, .. } => {
                if !leader.ready {
                    self.send(Msg::ToWorker {
                        worker,
                        session,
                        msg: MasterMsg { term: self.term, body: MasterBody::NotLeader { leader: None } },
                    });
                    return;
                }
                leader.sessions.insert(worker, session);
                leader.last_heard.insert(name.clone(), self.now);
                let attached = self
                    .state
                    .worker(&name)
                    .filter(|w| w.state == WorkerState::Ready && w.instance == info.instance)
                    .map(|w| w.incarnation);
                match attached {
                    Some(incarnation) => self.welcome(worker, session, incarnation, &known),
                    None => self.propose(vec![Command::RegisterWorker(info)], Origin::Hello { worker, session, known }),
                }
            }
            WorkerMsg::Heartbeat => {
                leader.last_heard.insert(name, self.now);
            }
            WorkerMsg::Started { task, fence } => {
                leader.last_heard.insert(name.clone(), self.now);
                let origin = Origin::Report { worker, session, task, fence, finished: false };
                self.propose(vec![Command::TaskStarted { task, fence, worker: name }], origin);
            }
            WorkerMsg::Finished { task, fence, outcome } => {
                leader.last_heard.insert(name.clone(), self.now);
                let origin = Origin::Report { worker, session, task, fence, finished: true };
                self.propose(vec![Command::TaskFinished { task, fence, worker: name, outcome }], origin);
            }
            // The simulated workers neither batch nor resize their queues.
            WorkerMsg::Batch(_) | WorkerMsg::Queue { .. } | WorkerMsg::Stats { .. } => {}
        }
    }

    fn welcome(&mut self, worker: usize, session: u64, incarnation: u64, known: &[(TaskId, Fence)]) {
        if self.leader.as_ref().and_then(|l| l.sessions.get(&worker)) != Some(&session) {
            return;
        }
        self.send_to_worker(worker, session, MasterBody::Welcome { leader: 1, incarnation, heartbeat_ms: 750 });
        let name = self.workers[worker].name.clone();
        let plan = session::reconcile(&self.state, &name, known);
        for (task, fence) in plan.run {
            if let Some(msg) = RunTask::for_attempt(&self.state, task, fence) {
                self.send_to_worker(worker, session, MasterBody::Run(msg));
            }
        }
        for (task, fence) in plan.stop {
            self.send_to_worker(worker, session, MasterBody::Stop { task, fence });
        }
    }

    /// Leader duties: submit the jobs, watch liveness, schedule.
    fn lead(&mut self) {
        let Some(leader) = &self.leader else { return };
        if !leader.ready {
            return;
        }
        if (self.submitted < self.config.jobs || !self.requests.is_empty()) && self.rng.chance(2) {
            self.submit_job();
        }
        if self.now.is_multiple_of(100) {
            self.check_liveness();
        }
        let Some(leader) = &mut self.leader else { return };
        if !leader.plan_in_flight {
            let placements = scheduler::plan(&self.state, 64);
            if !placements.is_empty() {
                leader.plan_in_flight = true;
                self.propose(vec![Command::Assign { placements }], Origin::Plan);
            }
        }
    }

    /// A client submits a new job, or retries one whose submission was lost (same request id,
    /// so it cannot create the job twice).
    fn submit_job(&mut self) {
        if self.submitted < self.config.jobs {
            self.submitted += 1;
            let plan = Plan {
                tasks: self.rng.range(5, 30),
                mul: self.rng.range(1, 999),
                add: self.rng.range(0, 999),
                flaky: self.rng.chance(40),
            };
            let spec = JobSpec {
                command: vec!["sim".into()],
                array: Some(IndexSet::range(1, plan.tasks)),
                cpus: self.rng.range(1, u64::from(self.config.cpus)) as u32,
                retries: if plan.flaky { 2 } else { 0 },
                reduce: Some("sum".into()),
                ..Default::default()
            };
            self.requests.insert(format!("r{}", self.submitted), (plan, spec));
        }
        let Some((request_id, (_, spec))) = self.requests.iter().next() else { return };
        let command = Command::SubmitJob { spec: spec.clone(), request_id: Some(request_id.clone()) };
        self.propose(vec![command], Origin::Other);
    }

    fn check_liveness(&mut self) {
        let timeout = self.config.worker_timeout_ms;
        let ready: Vec<(String, u64)> = self
            .state
            .workers()
            .filter(|w| w.state == WorkerState::Ready)
            .map(|w| (w.name.clone(), w.incarnation))
            .collect();
        let now = self.now;
        let Some(leader) = &mut self.leader else { return };
        let mut lost = Vec::new();
        for (name, incarnation) in ready {
            let last = *leader.last_heard.entry(name.clone()).or_insert(now);
            if now - last > timeout && leader.lost_proposed.insert((name.clone(), incarnation)) {
                if let Some(w) = self.workers.iter().position(|w| w.name == name) {
                    leader.sessions.remove(&w);
                    // The stream closes: the worker notices at once and reconnects.
                    let c = &mut self.workers[w].connect_at;
                    *c = Some(c.map_or(now + 1, |t| t.min(now + 1)));
                }
                lost.push(Command::WorkerLost { name, incarnation, reason: "silent".into() });
            }
        }
        for cmd in lost {
            self.propose(vec![cmd], Origin::Other);
        }
    }

    // ---- workers -------------------------------------------------------------------------

    fn worker_receives(&mut self, w: usize, session: u64, msg: MasterMsg) {
        let worker = &mut self.workers[w];
        if !worker.alive || worker.session != Some(session) {
            return;
        }
        if !worker.book.accept_term(msg.term) {
            return;
        }
        for body in msg.body.flatten() {
            self.worker_handles(w, session, body);
        }
    }

    fn worker_handles(&mut self, w: usize, session: u64, body: MasterBody) {
        let worker = &mut self.workers[w];
        if worker.session != Some(session) {
            return;
        }
        match body {
            MasterBody::Welcome { .. } => {
                worker.welcomed = true;
                worker.next_beat = self.now + 750;
                let unacked = worker.book.unacked();
                if !unacked.is_empty() {
                    self.send(Msg::ToLeader { worker: w, session, msg: WorkerMsg::Batch(unacked) });
                }
            }
            MasterBody::NotLeader { .. } | MasterBody::Refused { .. } => {
                worker.session = None;
                worker.welcomed = false;
                worker.connect_at = Some(self.now + 50);
            }
            MasterBody::Run(run) => {
                let actions = worker.book.on_run(run);
                self.execute(w, actions);
            }
            MasterBody::Stop { task, fence } => {
                let actions = worker.book.on_stop(task, fence);
                self.execute(w, actions);
            }
            MasterBody::Ack { task, fence } => worker.book.on_ack(task, fence),
            MasterBody::Batch(_) | MasterBody::Echo { .. } => {}
        }
    }

    fn execute(&mut self, w: usize, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Start(run) => {
                    let outcome = self.outcome_of(&run);
                    let done_at = self.now + self.rng.range(10, 400);
                    let worker = &mut self.workers[w];
                    worker.procs.push(Proc { task: run.task, fence: run.fence, done_at, outcome });
                    if let (Some(session), true) = (worker.session, worker.welcomed) {
                        let msg = WorkerMsg::Started { task: run.task, fence: run.fence };
                        self.send(Msg::ToLeader { worker: w, session, msg });
                    }
                }
                Action::Kill(task, fence) => {
                    let worker = &mut self.workers[w];
                    worker.procs.retain(|p| !(p.task == task && p.fence == fence));
                    let (_, next) = worker.book.on_ended(task, fence, None);
                    self.execute(w, next);
                }
            }
        }
    }

    /// What the simulated process prints: each task its known value (some fail their first
    /// attempt), the reduce step the sum of its input.
    fn outcome_of(&mut self, run: &RunTask) -> Outcome {
        let text = match run.task.slot {
            TaskSlot::Array(i) => {
                let plan = &self.plans[&run.task.job];
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
                if self.workers[w].restart_at <= self.now {
                    let worker = &mut self.workers[w];
                    worker.alive = true;
                    worker.instance = self.rng.next_u64();
                    worker.book = Book::new(self.config.cpus);
                    worker.connect_at = Some(self.now);
                }
                continue;
            }
            if self.workers[w].paused_until > self.now {
                continue;
            }
            // Processes that ended.
            let now = self.now;
            let done: Vec<Proc> = {
                let worker = &mut self.workers[w];
                let (done, running): (Vec<Proc>, Vec<Proc>) = worker.procs.drain(..).partition(|p| p.done_at <= now);
                worker.procs = running;
                done
            };
            for p in done {
                let (msg, next) = self.workers[w].book.on_ended(p.task, p.fence, Some(p.outcome));
                self.execute(w, next);
                let worker = &self.workers[w];
                if let (Some(msg), Some(session), true) = (msg, worker.session, worker.welcomed) {
                    self.send(Msg::ToLeader { worker: w, session, msg });
                }
            }
            // Heartbeats.
            let worker = &mut self.workers[w];
            if let (Some(session), true) = (worker.session, worker.welcomed) {
                if worker.next_beat <= now {
                    worker.next_beat = now + 750;
                    self.send(Msg::ToLeader { worker: w, session, msg: WorkerMsg::Heartbeat });
                }
            }
            // (Re)connect.
            let worker = &mut self.workers[w];
            if worker.connect_at.is_some_and(|t| t <= now) {
                worker.connect_at = None;
                let session = self.next_session;
                self.next_session += 1;
                worker.session = Some(session);
                worker.welcomed = false;
                let hello = WorkerMsg::Hello {
                    protocol: PROTOCOL_VERSION,
                    info: WorkerInfo {
                        name: worker.name.clone(),
                        instance: worker.instance,
                        cpus: self.config.cpus,
                        queue: self.config.queue,
                        memory: None,
                        labels: BTreeMap::new(),
                    },
                    known: worker.book.known(),
                    highest_term: worker.book.highest_term(),
                };
                if self.leader.is_some() {
                    self.send(Msg::ToLeader { worker: w, session, msg: hello });
                } else {
                    // Nobody leads yet: try again shortly.
                    self.workers[w].session = None;
                    self.workers[w].connect_at = Some(now + 50);
                }
            }
        }
    }

    // ---- faults --------------------------------------------------------------------------

    fn fault(&mut self) {
        let w = self.rng.range(0, self.workers.len() as u64 - 1) as usize;
        match self.rng.range(0, 7) {
            // The leader crashes: workers see their streams close at once.
            0 => self.lose_leader(1),
            // The leader is paused or cut off: workers notice through keepalives.
            1 => self.lose_leader(3_000),
            2 => {
                // A worker crashes; its processes die with it (killed on restart).
                let worker = &mut self.workers[w];
                if worker.alive {
                    worker.alive = false;
                    worker.procs.clear();
                    worker.session = None;
                    worker.welcomed = false;
                    worker.restart_at = self.now + self.rng.range(200, 5_000);
                    self.report.faults += 1;
                }
            }
            3 => {
                // A worker pauses, sometimes past the worker timeout.
                self.workers[w].paused_until = self.now + self.rng.range(500, 6_000);
                self.report.faults += 1;
            }
            4 => {
                // Its session breaks (message loss on a stream).
                if let Some(l) = &mut self.leader {
                    l.sessions.remove(&w);
                }
                let worker = &mut self.workers[w];
                worker.session = None;
                worker.welcomed = false;
                worker.connect_at = Some(self.now + self.rng.range(1, 300));
                self.report.faults += 1;
            }
            5 => {
                // A report is delivered twice.
                if let Some(session) = self.workers[w].session {
                    for m in self.workers[w].book.unacked().into_iter().take(1) {
                        self.send(Msg::ToLeader { worker: w, session, msg: m });
                        self.report.faults += 1;
                    }
                }
            }
            _ => {
                // A deposed leader, which does not know it yet, reaches a worker that has
                // already seen a newer term: the worker must ignore it.
                let stale: Vec<(usize, MasterMsg)> = self
                    .old_master_msgs
                    .iter()
                    .filter(|(w, m)| m.term < self.workers[*w].book.highest_term())
                    .cloned()
                    .collect();
                if !stale.is_empty() {
                    let (worker, msg) = self.rng.pick(&stale).clone();
                    if let Some(session) = self.workers[worker].session {
                        self.send(Msg::ToWorker { worker, session, msg });
                        self.report.faults += 1;
                    }
                }
            }
        }
    }

    // ---- final checks --------------------------------------------------------------------

    fn check_end(&mut self) -> Result<(), String> {
        if self.plans.len() < self.config.jobs {
            return Err(format!("only {} of {} jobs were submitted", self.plans.len(), self.config.jobs));
        }
        for job in self.state.jobs() {
            let plan = &self.plans[&job.id];
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
                let task = &job.tasks[&i];
                let r = task.result.as_ref().ok_or_else(|| format!("job {} task {i} has no result", job.id))?;
                if r.outcome.stdout.text.trim() != plan.expected(i).to_string() {
                    return Err(format!(
                        "job {} task {i}: {:?} != {}",
                        job.id,
                        r.outcome.stdout.text,
                        plan.expected(i)
                    ));
                }
                if r.fence.attempt != task.attempts {
                    return Err(format!(
                        "job {} task {i}: result from attempt {} of {}",
                        job.id, r.fence.attempt, task.attempts
                    ));
                }
                self.report.tasks += 1;
            }
            let expected: u64 = (1..=plan.tasks).map(|i| plan.expected(i)).sum();
            if job.result_text().map(|t| t.trim().to_string()) != Some(expected.to_string()) {
                return Err(format!("job {}: reduce result {:?}, expected {expected}", job.id, job.result_text()));
            }
        }
        let mut replay = ClusterState::new();
        for (ctx, proposal) in &self.log {
            replay.apply(*ctx, proposal);
        }
        if replay != self.state {
            return Err("replaying the committed log gives a different state".into());
        }
        Ok(())
    }
}
