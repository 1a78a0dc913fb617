//! The worker's side of its session as a synchronous state machine.
//!
//! `AgentCore` decides which master to connect to next and after what delay (following
//! `NotLeader` hints, skipping masters that just failed, capped backoff once every master
//! failed), what to say in a hello, how to take a welcome (a leader of a lower term than
//! already seen is refused), which master messages to ignore (a deposed leader's), what the
//! bookkeeping ([`Book`]) starts or kills, when reports go out (at once when a cpu is idle,
//! otherwise gathered for [`REPORT_LINGER`]), heartbeats with sampled round trips, and the
//! queue depth it asks for. The worker binary's agent (`flotilla_worker`) and the simulation
//! feed it inputs with the time and carry out its [`Effect`]s.
//!
//! ```text
//!  start/tick ─────────┐                       ┌─▶ Connect{address} / Disconnect
//!  connected / lost ───┤                       ├─▶ Send(WorkerMsg)
//!  MasterMsg ──────────┼─▶ AgentCore (+Book) ──┼─▶ Start(run) / Kill(task, fence)
//!  process started ────┤                       ├─▶ Exit(refused)
//!  process ended ──────┘                       └─▶ Observe
//! ```

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use flotilla_core::model::{Fence, NodeId, Outcome, TaskId};
use flotilla_core::WorkerInfo;
use flotilla_proto::wire::{MasterBody, MasterMsg, WorkerMsg, PROTOCOL_VERSION};

use crate::book::{Action, Book};

/// The adaptive queue holds about this much work (at the measured task durations): enough
/// that a finished report and the next assignment can cross the Raft group without the
/// cpus going idle, little enough that a queue does not hold much work another worker
/// could have started.
pub const QUEUE_AHEAD: Duration = Duration::from_millis(250);
/// The adaptive queue is at most this many tasks per cpu.
const MAX_QUEUE_PER_CPU: u32 = 256;
/// A busy worker (tasks queued) holds its reports this long to send more in one message:
/// the master learns of freed capacity a little later, which the queue covers.
pub const REPORT_LINGER: Duration = Duration::from_millis(50);
/// One heartbeat in this many asks the leader for an echo to measure the round trip (the
/// first of a session always does).
const ECHO_EVERY: u64 = 4;
/// How long a master may take to answer a hello.
pub const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// Reports sent at once, however busy the worker.
const FLUSH_AT: usize = 1024;

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub name: String,
    /// Random id of this worker process.
    pub instance: u64,
    pub cpus: u32,
    pub memory: Option<u64>,
    /// Named resources offered, e.g. gpu=2.
    pub resources: BTreeMap<String, u32>,
    pub labels: BTreeMap<String, String>,
    pub masters: Vec<String>,
    /// Cpus' worth of tasks to keep queued; the starting value with `adaptive_prefetch`.
    pub prefetch: u32,
    /// Resize the queue to cover [`QUEUE_AHEAD`] of work at the measured task durations.
    pub adaptive_prefetch: bool,
    /// Where this worker serves the outputs it holds (told to each leader after its welcome).
    pub serves: Option<String>,
    /// Exit once the leader says this worker is drained, whoever drained it (a worker an
    /// autoscaling pool started: its scale-in is a drain).
    pub exit_when_drained: bool,
}

/// What the shell must do, in this order.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Open a session to this master, then call [`AgentCore::connected`] (or
    /// [`AgentCore::lost`] if it cannot be opened).
    Connect {
        address: String,
    },
    /// Send on the open session.
    Send(WorkerMsg),
    /// Drop the current session (the core already considers it ended).
    Disconnect,
    Start(flotilla_proto::wire::RunTask),
    Kill(TaskId, Fence),
    /// Stop the worker: a master refused it for good.
    Exit(Refusal),
    /// Stop the worker: it drained as asked ([`AgentCore::drain`]) and holds nothing.
    Drained,
    /// Delete these blobs from the store (if they are still old: one just stored again for a
    /// new task is kept).
    Discard(Vec<flotilla_core::workflow::Digest>),
    /// Take a copy of a task's outputs from one of `sources`, then call
    /// [`AgentCore::copied`] with how it went.
    Copy {
        task: TaskId,
        files: Vec<flotilla_core::workflow::OutputFile>,
        sources: Vec<String>,
    },
    Observe(Observation),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The master said why.
    ByMaster(String),
    /// The cluster token was missing or wrong.
    BadToken,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::ByMaster(reason) => f.write_str(reason),
            Refusal::BadToken => f.write_str("missing or wrong cluster token"),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    Connected {
        address: String,
        leader: NodeId,
        term: u64,
        incarnation: u64,
    },
    /// A welcomed session ended.
    Disconnected,
    Redirected {
        from: String,
        leader: Option<String>,
    },
    SessionLost {
        address: String,
        reason: String,
    },
    /// A message from a leader of a lower term than already seen was ignored.
    IgnoredStale {
        term: u64,
        highest: u64,
    },
    RoundTrip(Duration),
    /// Asked to stop: draining before it exits.
    Draining {
        deadline: Option<Duration>,
    },
    /// The leader named the group's masters, and they differ from what this worker knew.
    MastersLearned {
        addresses: Vec<String>,
    },
    QueueResized {
        from: u32,
        to: u32,
    },
}

/// How opening or keeping a session failed, as the shell saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkError {
    /// The master turned the session away for a missing or wrong token.
    Unauthenticated,
    /// Anything else: unreachable, reset, closed, undecodable.
    Broken(String),
}

struct Session {
    address: String,
    since: Instant,
    welcome: Option<Welcomed>,
}

struct Welcomed {
    heartbeat: Duration,
    next_beat: Instant,
    beats: u64,
    echo_pending: Option<(u64, Instant)>,
    rtt_micros: Option<u64>,
    /// Reports gathered while busy go out at the latest then.
    flush_at: Option<Instant>,
}

enum Link {
    /// Connect when due.
    Idle {
        at: Instant,
    },
    /// `Connect` emitted; waiting for the shell to open the stream.
    Connecting {
        address: String,
    },
    Open(Session),
    Exited,
}

/// The worker's session logic and bookkeeping; see the module comment.
pub struct AgentCore {
    config: AgentConfig,
    book: Book,
    link: Link,
    next_master: usize,
    hint: Option<String>,
    failures: u32,
    /// Masters that failed lately: a follower may still name a leader that just died, and
    /// following that hint again would only waste the failover window.
    unreachable: HashMap<String, Instant>,
    /// Reports not sent yet (all among the book's unacknowledged results or starts).
    outbox: Vec<WorkerMsg>,
    queue: u32,
    mean_task_secs: Option<f64>,
    queue_changed: Option<Instant>,
    queue_unsent: bool,
    /// Set once the worker was asked to stop: drain, then exit.
    draining: Option<Draining>,
    /// The leader said this worker is drained (perhaps before it was asked to stop: an
    /// operator's drain); it exits once draining and holding nothing.
    told_drained: bool,
    /// Workers this one may copy outputs to (name, address), as the leader last said.
    peers: Vec<(String, String)>,
    /// Damaged blobs found while no leader listened, told to the next one.
    corrupt_untold: Vec<flotilla_core::workflow::Digest>,
}

/// A worker draining itself before it stops.
struct Draining {
    /// How long running attempts may still take (none: as long as they take).
    deadline: Option<Duration>,
    since: Instant,
}

/// A draining worker that still holds attempts this long past its deadline (no leader took
/// them) exits anyway; the leader re-queues what it held when it declares it lost.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

impl AgentCore {
    pub fn new(config: AgentConfig, now: Instant) -> Self {
        AgentCore {
            book: Book::new(config.cpus),
            queue: config.prefetch,
            config,
            link: Link::Idle { at: now },
            next_master: 0,
            hint: None,
            failures: 0,
            unreachable: HashMap::new(),
            outbox: Vec::new(),
            mean_task_secs: None,
            queue_changed: None,
            queue_unsent: false,
            draining: None,
            told_drained: false,
            peers: Vec::new(),
            corrupt_untold: Vec::new(),
        }
    }

    /// Workers this one may copy its tasks' outputs to (name, address), the leader's choice.
    pub fn peers(&self) -> &[(String, String)] {
        &self.peers
    }

    /// The worker was asked to stop (SIGTERM): it asks the leader to drain it and exits once
    /// the leader says it is drained (or, without a leader, `deadline` plus a grace period
    /// after now).
    pub fn drain(&mut self, now: Instant, deadline: Option<Duration>, out: &mut Vec<Effect>) {
        if self.draining.is_some() {
            return;
        }
        self.draining = Some(Draining { deadline, since: now });
        out.push(Effect::Observe(Observation::Draining { deadline }));
        if self.is_welcomed() {
            self.send_drain(now, out);
        }
    }

    fn send_drain(&self, now: Instant, out: &mut Vec<Effect>) {
        let Some(d) = &self.draining else { return };
        let left = d.deadline.map(|dl| dl.saturating_sub(now.saturating_duration_since(d.since)));
        out.push(Effect::Send(WorkerMsg::Drain { deadline_ms: left.map(|l| l.as_millis() as u64) }));
    }

    pub fn is_draining(&self) -> bool {
        self.draining.is_some()
    }

    pub fn book(&self) -> &Book {
        &self.book
    }

    /// The queue depth the worker asks for now.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    pub fn is_welcomed(&self) -> bool {
        matches!(&self.link, Link::Open(Session { welcome: Some(_), .. }))
    }

    pub fn has_exited(&self) -> bool {
        matches!(self.link, Link::Exited)
    }

    /// When [`AgentCore::on_tick`] has something to do next.
    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.link {
            Link::Idle { at } => Some(*at),
            Link::Connecting { .. } | Link::Exited => None,
            Link::Open(s) => match &s.welcome {
                None => Some(s.since + WELCOME_TIMEOUT),
                Some(w) => Some(w.flush_at.map_or(w.next_beat, |f| f.min(w.next_beat))),
            },
        }
    }

    fn hello(&self) -> WorkerMsg {
        WorkerMsg::Hello {
            protocol: PROTOCOL_VERSION,
            info: WorkerInfo {
                name: self.config.name.clone(),
                instance: self.config.instance,
                cpus: self.config.cpus,
                queue: self.queue,
                memory: self.config.memory,
                resources: self.config.resources.clone(),
                labels: self.config.labels.clone(),
            },
            known: self.book.known(),
            highest_term: self.book.highest_term(),
        }
    }

    /// The stream to the master asked for by `Connect` is open: say hello.
    pub fn connected(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let Link::Connecting { address } = &self.link else { return };
        let address = address.clone();
        out.push(Effect::Send(self.hello()));
        self.queue_unsent = false;
        self.link = Link::Open(Session { address, since: now, welcome: None });
    }

    /// The session could not be opened, or broke.
    pub fn lost(&mut self, now: Instant, error: LinkError, out: &mut Vec<Effect>) {
        let address = match &self.link {
            Link::Connecting { address } => address.clone(),
            Link::Open(s) => s.address.clone(),
            Link::Idle { .. } | Link::Exited => return,
        };
        match error {
            LinkError::Unauthenticated => self.exit(Refusal::BadToken, out),
            LinkError::Broken(reason) => self.end(now, address, reason, out),
        }
    }

    fn exit(&mut self, refusal: Refusal, out: &mut Vec<Effect>) {
        if let Link::Open(Session { welcome: Some(_), .. }) = &self.link {
            out.push(Effect::Observe(Observation::Disconnected));
        }
        self.link = Link::Exited;
        out.push(Effect::Disconnect);
        out.push(Effect::Exit(refusal));
    }

    /// The session to `address` ended for `reason`: try every other master at once, and back
    /// off (capped) only when all failed.
    fn end(&mut self, now: Instant, address: String, reason: String, out: &mut Vec<Effect>) {
        let welcomed = self.take_session(out);
        if welcomed {
            self.failures = 0;
            self.unreachable.clear();
        }
        out.push(Effect::Observe(Observation::SessionLost { address: address.clone(), reason }));
        self.unreachable.insert(address, now);
        self.failures = self.failures.saturating_add(1);
        let masters = self.config.masters.len() as u32;
        let delay = if self.failures < masters {
            Duration::from_millis(2)
        } else {
            Duration::from_millis(50u64 << (self.failures - masters).min(5)).min(Duration::from_secs(1))
        };
        self.link = Link::Idle { at: now + delay };
    }

    /// A master that does not lead answered: follow its hint unless that master just failed.
    fn redirect(&mut self, now: Instant, leader: Option<String>, out: &mut Vec<Effect>) {
        let Link::Open(session) = &self.link else { return };
        let from = session.address.clone();
        let welcomed = self.take_session(out);
        if welcomed {
            self.failures = 0;
            self.unreachable.clear();
        }
        out.push(Effect::Observe(Observation::Redirected { from: from.clone(), leader: leader.clone() }));
        let recently_failed = |a: &String| {
            self.unreachable.get(a).is_some_and(|t| now.saturating_duration_since(*t) < Duration::from_millis(1000))
        };
        self.hint = leader.filter(|l| *l != from && !recently_failed(l));
        // Asking a follower is cheap; ask often so failover is quick.
        let delay = if self.hint.is_some() { Duration::from_millis(2) } else { Duration::from_millis(50) };
        self.link = Link::Idle { at: now + delay };
    }

    /// Ends the current session; true if it had been welcomed.
    fn take_session(&mut self, out: &mut Vec<Effect>) -> bool {
        let welcomed = matches!(&self.link, Link::Open(Session { welcome: Some(_), .. }));
        if welcomed {
            out.push(Effect::Observe(Observation::Disconnected));
        }
        out.push(Effect::Disconnect);
        self.outbox.clear();
        welcomed
    }

    /// Time passed: connect when due, the welcome deadline, heartbeats, gathered reports.
    /// `spawned` and `spawn_micros`: processes started so far and the time spent starting
    /// them (the runner measures them), carried in heartbeats.
    pub fn on_tick(&mut self, now: Instant, spawned: u64, spawn_micros: u64, out: &mut Vec<Effect>) {
        if self.draining.is_some() || self.config.exit_when_drained {
            let overdue = self.draining.as_ref().is_some_and(|d| {
                d.deadline.is_some_and(|dl| now.saturating_duration_since(d.since) >= dl + DRAIN_GRACE)
            });
            // Results not yet acknowledged keep the worker until they are.
            let done = self.told_drained && self.book.is_empty();
            if (done || overdue) && !matches!(self.link, Link::Exited) {
                self.link = Link::Exited;
                out.push(Effect::Disconnect);
                out.push(Effect::Drained);
                return;
            }
        }
        match &mut self.link {
            Link::Idle { at } if *at <= now => {
                let address = self.hint.take().unwrap_or_else(|| {
                    let a = self.config.masters[self.next_master % self.config.masters.len()].clone();
                    self.next_master += 1;
                    a
                });
                self.link = Link::Connecting { address: address.clone() };
                out.push(Effect::Connect { address });
            }
            Link::Open(s) if s.welcome.is_none() && now.saturating_duration_since(s.since) >= WELCOME_TIMEOUT => {
                let address = s.address.clone();
                self.end(now, address, "no welcome within 10 s".to_string(), out);
            }
            Link::Open(Session { welcome: Some(w), .. }) => {
                if w.next_beat <= now {
                    w.next_beat = now + w.heartbeat;
                    w.beats += 1;
                    let echo = (w.beats % ECHO_EVERY == 1).then_some(w.beats);
                    if let Some(token) = echo {
                        w.echo_pending = Some((token, now));
                    }
                    out.push(Effect::Send(WorkerMsg::Stats {
                        running: self.book.running_count() as u32,
                        queued: self.book.queued_count() as u32,
                        spawned,
                        spawn_micros,
                        echo,
                        rtt_micros: w.rtt_micros.take(),
                    }));
                }
                if w.flush_at.is_some_and(|t| t <= now) {
                    w.flush_at = None;
                    self.flush(out);
                }
            }
            _ => {}
        }
    }

    /// A message from the master of the open session.
    pub fn on_message(&mut self, now: Instant, msg: MasterMsg, out: &mut Vec<Effect>) {
        let Link::Open(session) = &mut self.link else { return };
        if session.welcome.is_none() {
            // The first answer says whether this master leads.
            match msg.body {
                MasterBody::Welcome { leader, incarnation, heartbeat_ms } => {
                    if !self.book.accept_term(msg.term) {
                        let reason = format!("master {leader} is at term {} < {}", msg.term, self.book.highest_term());
                        let address = session.address.clone();
                        self.end(now, address, reason, out);
                        return;
                    }
                    session.welcome = Some(Welcomed {
                        heartbeat: Duration::from_millis(heartbeat_ms.max(10)),
                        next_beat: now,
                        beats: 0,
                        echo_pending: None,
                        rtt_micros: None,
                        flush_at: None,
                    });
                    let address = session.address.clone();
                    out.push(Effect::Observe(Observation::Connected { address, leader, term: msg.term, incarnation }));
                    // Deliver what finished while no leader listened.
                    self.outbox.clear();
                    let unacked = self.book.unacked();
                    if !unacked.is_empty() {
                        out.push(Effect::Send(WorkerMsg::Batch(unacked)));
                    }
                    out.push(Effect::Send(WorkerMsg::Version { version: flotilla_proto::api::VERSION.to_string() }));
                    if let Some(address) = &self.config.serves {
                        out.push(Effect::Send(WorkerMsg::Serves { address: address.clone() }));
                    }
                    if !self.corrupt_untold.is_empty() {
                        let digests = std::mem::take(&mut self.corrupt_untold);
                        out.push(Effect::Send(WorkerMsg::Corrupt { digests }));
                    }
                    self.send_drain(now, out);
                }
                MasterBody::NotLeader { leader } => self.redirect(now, leader, out),
                MasterBody::Refused { reason } => self.exit(Refusal::ByMaster(reason), out),
                other => {
                    let address = session.address.clone();
                    self.end(now, address, format!("unexpected first message {other:?}"), out);
                }
            }
            return;
        }
        if !self.book.accept_term(msg.term) {
            let highest = self.book.highest_term();
            out.push(Effect::Observe(Observation::IgnoredStale { term: msg.term, highest }));
            return;
        }
        let mut given_back = Vec::new();
        for body in msg.body.flatten() {
            match body {
                MasterBody::Revoke { task, fence } => {
                    if self.book.on_revoke(task, fence) {
                        given_back.push(WorkerMsg::Revoked { task, fence });
                    }
                }
                MasterBody::Run(run) => {
                    // Given work: not drained (any more).
                    self.told_drained = false;
                    let actions = self.book.on_run(run);
                    push_actions(actions, out);
                }
                MasterBody::RunWith { mut run, limits, inputs, outputs } => {
                    self.told_drained = false;
                    run.limits = limits;
                    run.inputs = inputs;
                    run.outputs = outputs;
                    let actions = self.book.on_run(*run);
                    push_actions(actions, out);
                }
                MasterBody::Peers { peers } => self.peers = peers,
                MasterBody::Replicate { task, files, sources } => out.push(Effect::Copy { task, files, sources }),
                MasterBody::Discard { digests } => out.push(Effect::Discard(digests)),
                MasterBody::Stop { task, fence } => {
                    let actions = self.book.on_stop(task, fence);
                    push_actions(actions, out);
                }
                MasterBody::Ack { task, fence } => self.book.on_ack(task, fence),
                MasterBody::NotLeader { leader } => return self.redirect(now, leader, out),
                MasterBody::Refused { reason } => return self.exit(Refusal::ByMaster(reason), out),
                MasterBody::Echo { token } => {
                    if let Link::Open(Session { welcome: Some(w), .. }) = &mut self.link {
                        if let Some((_, at)) = w.echo_pending.take_if(|(sent, _)| *sent == token) {
                            let rtt = now.saturating_duration_since(at);
                            w.rtt_micros = Some(rtt.as_micros() as u64);
                            out.push(Effect::Observe(Observation::RoundTrip(rtt)));
                        }
                    }
                }
                MasterBody::Members { addresses } => self.learn_masters(addresses, out),
                MasterBody::Drained => self.told_drained = true,
                MasterBody::Welcome { .. } | MasterBody::Batch(_) => {}
            }
        }
        // An idle worker elsewhere waits for these: at once, in one message.
        match given_back.len() {
            0 => {}
            1 => out.extend(given_back.pop().map(Effect::Send)),
            _ => out.push(Effect::Send(WorkerMsg::Batch(given_back))),
        }
    }

    /// The leader named the group's masters: later connections go through them (the ones
    /// this worker was started with may be gone for good after a replacement).
    fn learn_masters(&mut self, mut addresses: Vec<String>, out: &mut Vec<Effect>) {
        addresses.sort();
        addresses.dedup();
        let mut known = self.config.masters.clone();
        known.sort();
        if addresses.is_empty() || addresses == known {
            return;
        }
        out.push(Effect::Observe(Observation::MastersLearned { addresses: addresses.clone() }));
        self.config.masters = addresses;
        self.next_master = 0;
    }

    /// A copy asked for ([`Effect::Copy`]) is done, or failed. Told to the leader of the
    /// open session only: one that asked and is gone re-asks through its successor, who
    /// finds the copy already here.
    pub fn copied(
        &mut self,
        task: TaskId,
        result: Result<(), flotilla_core::workflow::OutputError>,
        out: &mut Vec<Effect>,
    ) {
        if !self.is_welcomed() {
            return;
        }
        let msg = match result {
            Ok(()) => WorkerMsg::Holds { tasks: vec![task] },
            Err(error) => WorkerMsg::CopyFailed { task, error },
        };
        out.push(Effect::Send(msg));
    }

    /// A read found these stored blobs damaged (they are discarded): the leader stops
    /// counting this worker's copies of them and has others made.
    pub fn corrupt(&mut self, digests: Vec<flotilla_core::workflow::Digest>, out: &mut Vec<Effect>) {
        if self.is_welcomed() {
            out.push(Effect::Send(WorkerMsg::Corrupt { digests }));
        } else {
            self.corrupt_untold.extend(digests);
        }
    }

    /// Blobs held for a while, for the leader to say which are garbage (sent only to a
    /// leader listening; the next inventory tries again).
    pub fn inventory(&mut self, digests: Vec<flotilla_core::workflow::Digest>, out: &mut Vec<Effect>) {
        if self.is_welcomed() && !digests.is_empty() {
            out.push(Effect::Send(WorkerMsg::Inventory { digests }));
        }
    }

    /// An attempt has run long enough to be worth reporting as started.
    pub fn started(&mut self, task: TaskId, fence: Fence, out: &mut Vec<Effect>) {
        if self.is_welcomed() {
            out.push(Effect::Send(WorkerMsg::Started { task, fence }));
        }
    }

    /// An attempt's process ended: `outcome` is `None` when it was killed on request, `took`
    /// its run time when it ran to its end. Returns whether the agent must see to the
    /// reports now ([`AgentCore::reports_ready`]): runner threads call this, and on a busy
    /// worker they wake the agent once per batch rather than once per task.
    pub fn ended(
        &mut self,
        now: Instant,
        task: TaskId,
        fence: Fence,
        outcome: Option<Outcome>,
        took: Option<Duration>,
        out: &mut Vec<Effect>,
    ) -> bool {
        if let Some(took) = took {
            self.measured(now, took, out);
        }
        let (report, actions) = self.book.on_ended(task, fence, outcome);
        push_actions(actions, out);
        let was_empty = self.outbox.is_empty();
        if self.is_welcomed() {
            self.outbox.extend(report);
        }
        // An idle cpu waits for the masters to hear of it.
        was_empty || self.book.queued_count() == 0 || self.queue_unsent
    }

    /// Sees to gathered reports: sent at once when a cpu waits for work or many are waiting,
    /// otherwise within [`REPORT_LINGER`].
    pub fn reports_ready(&mut self, now: Instant, out: &mut Vec<Effect>) {
        if self.queue_unsent && self.is_welcomed() {
            self.queue_unsent = false;
            self.outbox.push(WorkerMsg::Queue { queue: self.queue });
        }
        let idle = self.book.queued_count() == 0;
        let Link::Open(Session { welcome: Some(w), .. }) = &mut self.link else {
            // Kept as unacknowledged results, sent when a session opens.
            self.outbox.clear();
            return;
        };
        if idle || self.outbox.len() >= FLUSH_AT {
            w.flush_at = None;
            self.flush(out);
        } else if w.flush_at.is_none() && !self.outbox.is_empty() {
            w.flush_at = Some(now + REPORT_LINGER);
        }
    }

    fn flush(&mut self, out: &mut Vec<Effect>) {
        match self.outbox.len() {
            0 => {}
            1 => out.extend(self.outbox.pop().map(Effect::Send)),
            _ => out.push(Effect::Send(WorkerMsg::Batch(std::mem::take(&mut self.outbox)))),
        }
    }

    /// Folds one task's run time into the average and resizes the queue when the wanted
    /// depth moved by 2x or more (at most once a second, so the log is not flooded).
    fn measured(&mut self, now: Instant, took: Duration, out: &mut Vec<Effect>) {
        if !self.config.adaptive_prefetch {
            return;
        }
        let took = took.as_secs_f64().max(1e-4);
        let mean = match self.mean_task_secs {
            Some(m) => m + (took - m) * 0.05,
            None => took,
        };
        self.mean_task_secs = Some(mean);
        let cpus = self.config.cpus;
        let wanted = (f64::from(cpus) * QUEUE_AHEAD.as_secs_f64() / mean).ceil();
        let wanted = (wanted as u32).clamp(1, cpus.saturating_mul(MAX_QUEUE_PER_CPU));
        let moved = wanted >= self.queue.saturating_mul(2) || wanted.saturating_mul(2) <= self.queue;
        let settled = self.queue_changed.is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1));
        if moved && settled {
            out.push(Effect::Observe(Observation::QueueResized { from: self.queue, to: wanted }));
            self.queue = wanted;
            self.queue_changed = Some(now);
            self.queue_unsent = true;
        }
    }
}

fn push_actions(actions: Vec<Action>, out: &mut Vec<Effect>) {
    out.extend(actions.into_iter().map(|a| match a {
        Action::Start(run) => Effect::Start(run),
        Action::Kill(task, fence) => Effect::Kill(task, fence),
    }));
}

#[cfg(test)]
mod tests;
