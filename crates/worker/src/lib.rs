//! A Flotilla worker: advertises its resources and labels, keeps one session open to the
//! leader master, runs the tasks it is given as child processes and reports their outcomes.
//!
//! ```text
//!  masters ──(connect, follow NotLeader hints, capped backoff)──▶ session stream
//!     Run ─▶ runner::run (process group) ─▶ Started / Finished ─▶ leader
//!     Ack ─▶ forget the result          Stop ─▶ kill the attempt's group
//! ```
//!
//! Results are kept until the leader acknowledges them, and sent again after every reconnect,
//! so a master failover loses none; tasks keep running while the worker is disconnected.
//! Messages from a term lower than the highest seen are ignored (a deposed leader cannot make
//! this worker act).

pub mod book;
pub mod metrics;
pub mod runner;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use flotilla_core::model::{Fence, TaskId};
use flotilla_core::WorkerInfo;
use flotilla_proto::codec;
use flotilla_proto::grpc::worker_service_client::WorkerServiceClient;
use flotilla_proto::grpc::Envelope;
use flotilla_proto::wire::{MasterBody, MasterMsg, RunTask, WorkerMsg, PROTOCOL_VERSION};

use book::{Action, Book};
use runner::{Ended, PgidJournal, Stopper};

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub masters: Vec<String>,
    pub name: String,
    pub cpus: u32,
    /// Cpus' worth of tasks to keep queued beyond the running ones (see `WorkerInfo::queue`);
    /// the starting value when `adaptive_prefetch` is on.
    pub prefetch: u32,
    /// Resize the queue to cover [`QUEUE_AHEAD`] of work at the measured task durations.
    pub adaptive_prefetch: bool,
    pub memory: Option<u64>,
    pub labels: BTreeMap<String, String>,
    pub data_dir: PathBuf,
    pub token: Option<String>,
    /// Serve Prometheus metrics at this address (`/metrics`), if given.
    pub metrics: Option<std::net::SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("{0}")]
    Config(String),
    #[error("cannot prepare data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the master refused this worker: {0}")]
    Refused(String),
}

/// The adaptive queue holds about this much work (at the measured task durations): enough
/// that a finished report and the next assignment can cross the Raft group without the
/// cpus going idle, little enough that a queue does not hold much work another worker
/// could have started.
pub const QUEUE_AHEAD: Duration = Duration::from_millis(250);
/// The adaptive queue is at most this many tasks per cpu.
const MAX_QUEUE_PER_CPU: u32 = 256;
/// A busy worker (tasks queued) holds its reports this long to send more in one message:
/// the master learns of freed capacity a little later, which the queue covers.
const REPORT_LINGER: Duration = Duration::from_millis(50);
/// One heartbeat in this many asks the leader for an echo to measure the round trip (the
/// first of a session always does).
const ECHO_EVERY: u64 = 4;

/// Marks the worker disconnected when a welcomed session ends.
struct Disconnected(Arc<metrics::WorkerMetrics>);

impl Drop for Disconnected {
    fn drop(&mut self) {
        self.0.connected.set(0);
    }
}

/// Sends the reports waiting in `outbox` as one message.
fn send_reports(send: &impl Fn(&WorkerMsg) -> bool, outbox: &mut Vec<WorkerMsg>) {
    match outbox.len() {
        0 => {}
        1 => {
            send(&outbox[0]);
        }
        _ => {
            send(&WorkerMsg::Batch(std::mem::take(outbox)));
        }
    }
    outbox.clear();
}

/// Something that happened to a task attempt on this worker.
enum TaskEvent {
    Started(TaskId, Fence),
    /// Results wait in [`Slots::reports`] (the attempts' ends are already in the bookkeeping).
    /// Sent only when the box was empty or a cpu went idle, so a busy worker wakes its agent
    /// once per batch of reports rather than once per task.
    Reports,
}

/// The bookkeeping and the stop handles of running processes, shared by the agent and the
/// runner threads.
struct Slots {
    book: Book,
    /// Stop handles of the processes running now, and when each started.
    processes: HashMap<(TaskId, Fence), (Arc<Stopper>, Instant)>,
    /// The worker is shutting down: start nothing more.
    closing: bool,
    /// Results not yet picked up by the agent.
    reports: Vec<WorkerMsg>,
    /// Run times of the processes that ran to their end, not yet picked up by the agent.
    took: Vec<Duration>,
}

/// Starts task processes on the blocking pool. A runner thread that sees its process exit
/// settles the attempt in the bookkeeping and starts the next queued task itself: on a busy
/// worker a freed cpu never waits for the agent's async task to be scheduled (a round trip
/// between threads per task that cost the short-task storm ~10 % of its throughput).
#[derive(Clone)]
struct Launcher {
    slots: Arc<Mutex<Slots>>,
    events: mpsc::UnboundedSender<TaskEvent>,
    pgids: Arc<PgidJournal>,
    name: Arc<str>,
    metrics: Arc<metrics::WorkerMetrics>,
    runtime: tokio::runtime::Handle,
}

impl Launcher {
    fn lock(&self) -> MutexGuard<'_, Slots> {
        // A runner that panicked holding the lock left the bookkeeping consistent (every
        // update is a single call into `Book`), so carry on with it.
        self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Carries out the bookkeeping's actions. With `keep_one`, the first start is returned
    /// for the calling runner thread to run instead of going to a new thread.
    fn execute(&self, slots: &mut Slots, actions: Vec<Action>, keep_one: bool) -> Option<(RunTask, Arc<Stopper>)> {
        let mut kept = None;
        for action in actions {
            match action {
                Action::Kill(task, fence) => {
                    if let Some((stop, _)) = slots.processes.get(&(task, fence)) {
                        stop.stop();
                    }
                }
                Action::Start(_) if slots.closing => {}
                Action::Start(run) => {
                    let stop = Arc::new(Stopper::default());
                    slots.processes.insert((run.task, run.fence), (stop.clone(), Instant::now()));
                    if keep_one && kept.is_none() {
                        kept = Some((run, stop));
                    } else {
                        let launcher = self.clone();
                        self.runtime.spawn_blocking(move || launcher.run_chain(run, stop));
                    }
                }
            }
        }
        self.metrics.running.set(slots.book.running_count() as i64);
        self.metrics.queued.set(slots.book.queued_count() as i64);
        kept
    }

    /// Runs `run`, then whatever the bookkeeping starts next on this thread, until nothing is
    /// left to start here.
    fn run_chain(&self, mut run: RunTask, mut stop: Arc<Stopper>) {
        loop {
            let (task, fence) = (run.task, run.fence);
            let started = self.events.clone();
            let ended = runner::run_catching(&run, &self.name, &self.pgids, &stop, move || {
                let _ = started.send(TaskEvent::Started(task, fence));
            });
            if let Some(took) = stop.spawn_time() {
                self.metrics.observe_spawn(took);
            }
            self.metrics.observe_end(match &ended {
                Ended::Stopped => "stopped",
                Ended::Finished(o) if o.spawn_error.is_some() => "spawn_error",
                Ended::Finished(o) if o.succeeded() => "succeeded",
                Ended::Finished(_) => "failed",
            });
            let (wake, next) = {
                let mut slots = self.lock();
                let since = slots.processes.remove(&(task, fence)).map(|(_, since)| since);
                let outcome = match ended {
                    Ended::Stopped => None,
                    Ended::Finished(outcome) => {
                        if let Some(since) = since {
                            slots.took.push(since.elapsed());
                        }
                        Some(outcome)
                    }
                };
                let (report, actions) = slots.book.on_ended(task, fence, outcome);
                let next = self.execute(&mut slots, actions, true);
                let was_empty = slots.reports.is_empty();
                slots.reports.extend(report);
                // An idle cpu waits for the masters to hear of it: wake the agent now.
                (was_empty || slots.book.queued_count() == 0 || slots.closing, next)
            };
            if wake {
                let _ = self.events.send(TaskEvent::Reports);
            }
            match next {
                Some((r, s)) => (run, stop) = (r, s),
                None => return,
            }
        }
    }
}

/// The worker process: its bookkeeping plus the processes it runs.
struct Agent {
    config: WorkerConfig,
    instance: u64,
    launcher: Launcher,
    /// Queue depth as last told to the masters.
    queue: u32,
    /// Moving average of how long a task took, in seconds.
    mean_task_secs: Option<f64>,
    /// When the queue depth was last changed.
    queue_changed: Option<Instant>,
    /// The current session has not been told the queue depth yet.
    queue_unsent: bool,
    metrics: Arc<metrics::WorkerMetrics>,
    /// The current session got a welcome (resets the reconnect backoff).
    welcomed: bool,
}

/// Runs a worker until `shutdown` is cancelled.
pub async fn run(config: WorkerConfig, shutdown: CancellationToken) -> Result<(), WorkerError> {
    if config.masters.is_empty() {
        return Err(WorkerError::Config("no master addresses given (--masters)".into()));
    }
    if config.cpus == 0 {
        return Err(WorkerError::Config("--cpus must be at least 1".into()));
    }
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| WorkerError::DataDir { path: config.data_dir.clone(), source })?;
    let (pgids, leftovers) = PgidJournal::open(&config.data_dir)
        .map_err(|source| WorkerError::DataDir { path: config.data_dir.clone(), source })?;
    if leftovers > 0 {
        tracing::warn!(leftovers, "killed task processes left by a previous run of this worker");
    }
    let pgids = Arc::new(pgids);
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let worker_metrics = Arc::new(metrics::WorkerMetrics::new());
    worker_metrics.cpus.set(i64::from(config.cpus));
    worker_metrics.queue_depth.set(i64::from(config.prefetch));
    if let Some(addr) = config.metrics {
        let listener = metrics::bind(addr)
            .await
            .map_err(|e| WorkerError::Config(format!("cannot serve metrics on {addr}: {e}")))?;
        tokio::spawn(metrics::serve(listener, worker_metrics.clone(), shutdown.clone()));
    }
    let launcher = Launcher {
        slots: Arc::new(Mutex::new(Slots {
            book: Book::new(config.cpus),
            processes: HashMap::new(),
            closing: false,
            reports: Vec::new(),
            took: Vec::new(),
        })),
        events: events_tx,
        pgids,
        name: Arc::from(config.name.as_str()),
        metrics: worker_metrics.clone(),
        runtime: tokio::runtime::Handle::current(),
    };
    let mut agent = Agent {
        instance: random_u64(),
        launcher,
        queue: config.prefetch,
        mean_task_secs: None,
        queue_changed: None,
        queue_unsent: false,
        metrics: worker_metrics,
        welcomed: false,
        config,
    };
    let result = agent.serve(&mut events_rx, &shutdown).await;
    {
        let mut slots = agent.launcher.lock();
        slots.closing = true;
        for (stop, _) in slots.processes.values() {
            stop.stop();
        }
    }
    // Give runners a moment to kill their process groups.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while !agent.launcher.lock().processes.is_empty() {
        if !matches!(tokio::time::timeout_at(deadline, events_rx.recv()).await, Ok(Some(_))) {
            break;
        }
    }
    result
}

fn random_u64() -> u64 {
    use std::io::Read;
    let mut buf = [0u8; 8];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).is_ok() {
        return u64::from_le_bytes(buf);
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    (nanos as u64) ^ (u64::from(std::process::id()) << 32)
}

/// Why a session ended.
enum SessionEnd {
    /// Try this address next (a follower told us who leads), or any if none.
    Redirect(Option<String>),
    /// The connection failed or dropped.
    Lost(String),
    Shutdown,
}

impl Agent {
    async fn serve(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<TaskEvent>,
        shutdown: &CancellationToken,
    ) -> Result<(), WorkerError> {
        let mut next = 0usize;
        let mut hint: Option<String> = None;
        let mut failures: u32 = 0;
        // Masters that refused a connection lately: a follower may still name a leader that
        // just died, and following that hint again would only waste the failover window.
        let mut unreachable: HashMap<String, tokio::time::Instant> = HashMap::new();
        let masters = self.config.masters.len() as u32;
        loop {
            let address = hint.take().unwrap_or_else(|| {
                let a = self.config.masters[next % self.config.masters.len()].clone();
                next += 1;
                a
            });
            self.welcomed = false;
            let end = self.session(&address, events, shutdown).await?;
            if self.welcomed {
                failures = 0;
                unreachable.clear();
            }
            let delay = match end {
                SessionEnd::Shutdown => return Ok(()),
                SessionEnd::Redirect(leader) => {
                    tracing::debug!(from = %address, leader = ?leader, "not the leader");
                    let recently_failed =
                        |a: &String| unreachable.get(a).is_some_and(|t| t.elapsed() < Duration::from_millis(1000));
                    hint = leader.filter(|l| *l != address && !recently_failed(l));
                    // Asking a follower is cheap; ask often so failover is quick.
                    if hint.is_some() {
                        Duration::from_millis(2)
                    } else {
                        Duration::from_millis(50)
                    }
                }
                SessionEnd::Lost(reason) => {
                    tracing::info!(master = %address, %reason, "session lost; reconnecting");
                    unreachable.insert(address.clone(), tokio::time::Instant::now());
                    failures = failures.saturating_add(1);
                    // Try every other master at once; back off (capped) only when all failed.
                    if failures < masters {
                        Duration::from_millis(2)
                    } else {
                        Duration::from_millis(50u64 << (failures - masters).min(5)).min(Duration::from_secs(1))
                    }
                }
            };
            if self.wait(delay, events, shutdown).await {
                return Ok(());
            }
        }
    }

    /// Sleeps while still handling task events; true if shutdown was requested.
    async fn wait(
        &mut self,
        delay: Duration,
        events: &mut mpsc::UnboundedReceiver<TaskEvent>,
        shutdown: &CancellationToken,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return true,
                _ = tokio::time::sleep_until(deadline) => return false,
                Some(ev) = events.recv() => { self.on_task_event(ev, None); }
            }
        }
    }

    /// Folds one task's run time into the average and resizes the queue when the wanted
    /// depth moved by 2x or more (at most once a second, so the log is not flooded).
    fn measured(&mut self, took: Duration) {
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
        let settled = self.queue_changed.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if moved && settled {
            tracing::debug!(from = self.queue, to = wanted, mean_ms = mean * 1e3, "resizing the task queue");
            self.queue = wanted;
            self.queue_changed = Some(Instant::now());
            self.queue_unsent = true;
            self.metrics.queue_depth.set(i64::from(wanted));
        }
    }

    fn hello(&self) -> WorkerMsg {
        let slots = self.launcher.lock();
        WorkerMsg::Hello {
            protocol: PROTOCOL_VERSION,
            info: WorkerInfo {
                name: self.config.name.clone(),
                instance: self.instance,
                cpus: self.config.cpus,
                queue: self.queue,
                memory: self.config.memory,
                labels: self.config.labels.clone(),
            },
            known: slots.book.known(),
            highest_term: slots.book.highest_term(),
        }
    }

    async fn session(
        &mut self,
        address: &str,
        events: &mut mpsc::UnboundedReceiver<TaskEvent>,
        shutdown: &CancellationToken,
    ) -> Result<SessionEnd, WorkerError> {
        let endpoint = match Endpoint::from_shared(format!("http://{address}")) {
            Ok(e) => e,
            Err(e) => return Ok(SessionEnd::Lost(format!("bad master address {address}: {e}"))),
        };
        // HTTP/2 pings detect a master that is paused or cut off, not only one that is gone.
        let endpoint = endpoint
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_millis(1000))
            .keep_alive_timeout(Duration::from_millis(2000))
            .keep_alive_while_idle(true);
        let channel = tokio::select! {
            _ = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
            c = endpoint.connect() => match c {
                Ok(c) => c,
                Err(e) => return Ok(SessionEnd::Lost(format!("cannot connect: {e}"))),
            },
        };
        let (out_tx, out_rx) = mpsc::unbounded_channel::<Envelope>();
        let send = |msg: &WorkerMsg| -> bool {
            match codec::encode("worker message", msg) {
                Ok(payload) => out_tx.send(Envelope { payload }).is_ok(),
                Err(_) => false,
            }
        };
        send(&self.hello());
        self.queue_unsent = false;
        let mut request = tonic::Request::new(tokio_stream::wrappers::UnboundedReceiverStream::new(out_rx));
        if let Some(token) = &self.config.token {
            match flotilla_proto::bearer(token).parse() {
                Ok(v) => {
                    request.metadata_mut().insert(flotilla_proto::AUTH_HEADER, v);
                }
                Err(_) => return Err(WorkerError::Config("the token is not a valid header value".into())),
            }
        }
        let mut client = WorkerServiceClient::new(channel);
        let mut inbound = match client.session(request).await {
            Ok(r) => r.into_inner(),
            Err(status) if status.code() == tonic::Code::Unauthenticated || status.message().contains("401") => {
                return Err(WorkerError::Refused("missing or wrong cluster token".into()));
            }
            Err(status) => return Ok(SessionEnd::Lost(format!("session refused: {status}"))),
        };

        // The first answer says whether this master leads.
        let first = tokio::select! {
            _ = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
            m = tokio::time::timeout(Duration::from_secs(10), inbound.message()) => m,
        };
        let first: MasterMsg = match first {
            Ok(Ok(Some(env))) => match codec::decode("master message", &env.payload) {
                Ok(m) => m,
                Err(e) => return Ok(SessionEnd::Lost(e.to_string())),
            },
            Ok(Ok(None)) => return Ok(SessionEnd::Lost("stream closed before welcome".into())),
            Ok(Err(status)) => return Ok(SessionEnd::Lost(status.to_string())),
            Err(_) => return Ok(SessionEnd::Lost("no welcome within 10 s".into())),
        };
        let heartbeat = match first.body {
            MasterBody::Welcome { leader, incarnation, heartbeat_ms } => {
                let highest = {
                    let mut slots = self.launcher.lock();
                    slots.book.accept_term(first.term).then_some(()).ok_or(slots.book.highest_term())
                };
                if let Err(highest) = highest {
                    return Ok(SessionEnd::Lost(format!("master {leader} is at term {} < {highest}", first.term)));
                }
                tracing::info!(master = %address, leader, term = first.term, incarnation, "connected");
                Duration::from_millis(heartbeat_ms.max(10))
            }
            MasterBody::NotLeader { leader } => return Ok(SessionEnd::Redirect(leader)),
            MasterBody::Refused { reason } => return Err(WorkerError::Refused(reason)),
            other => return Ok(SessionEnd::Lost(format!("unexpected first message {other:?}"))),
        };
        self.welcomed = true;
        self.metrics.sessions.inc();
        self.metrics.connected.set(1);
        // Whatever way this session ends, it no longer counts as connected.
        let metrics = self.metrics.clone();
        let _disconnected = Disconnected(metrics);

        // Deliver what finished while no leader listened.
        let unacked = {
            let mut slots = self.launcher.lock();
            slots.reports.clear(); // all among the unacknowledged results
            slots.book.unacked()
        };
        if !unacked.is_empty() {
            send(&WorkerMsg::Batch(unacked));
        }
        let mut beat = tokio::time::interval(heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Reports not sent yet, and when they must go at the latest.
        let mut outbox: Vec<WorkerMsg> = Vec::new();
        let mut flush_at: Option<tokio::time::Instant> = None;
        // Round-trip sampling: every ECHO_EVERY-th heartbeat asks the leader to echo a token.
        let mut beats: u64 = 0;
        let mut echo_pending: Option<(u64, Instant)> = None;
        let mut rtt_micros: Option<u64> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
                _ = beat.tick() => {
                    let (spawned, spawn_micros) = self.metrics.spawn_totals();
                    let (running, queued) = {
                        let slots = self.launcher.lock();
                        (slots.book.running_count() as u32, slots.book.queued_count() as u32)
                    };
                    beats += 1;
                    let echo = (beats % ECHO_EVERY == 1).then_some(beats);
                    if let Some(token) = echo {
                        echo_pending = Some((token, Instant::now()));
                    }
                    let stats = WorkerMsg::Stats {
                        running,
                        queued,
                        spawned,
                        spawn_micros,
                        echo,
                        rtt_micros: rtt_micros.take(),
                    };
                    if !send(&stats) {
                        return Ok(SessionEnd::Lost("outbound stream closed".into()));
                    }
                }
                _ = tokio::time::sleep_until(flush_at.unwrap_or_else(tokio::time::Instant::now)), if flush_at.is_some() => {
                    flush_at = None;
                    self.collect_reports(&mut outbox);
                    send_reports(&send, &mut outbox);
                }
                Some(ev) = events.recv() => {
                    // Report everything that is ready in one message.
                    outbox.extend(self.on_task_event(ev, Some(())));
                    while let Ok(ev) = events.try_recv() {
                        outbox.extend(self.on_task_event(ev, Some(())));
                    }
                    if self.queue_unsent {
                        self.queue_unsent = false;
                        outbox.push(WorkerMsg::Queue { queue: self.queue });
                    }
                    if self.launcher.lock().book.queued_count() == 0 || outbox.len() >= 1024 {
                        // Idle cpus wait for this report: send now.
                        flush_at = None;
                        self.collect_reports(&mut outbox);
                        send_reports(&send, &mut outbox);
                    } else if flush_at.is_none() {
                        // The results stay in the runners' box until then, so that the runners
                        // do not wake this task for each one.
                        flush_at = Some(tokio::time::Instant::now() + REPORT_LINGER);
                    }
                }
                msg = inbound.message() => {
                    let env = match msg {
                        Ok(Some(env)) => env,
                        Ok(None) => return Ok(SessionEnd::Lost("master closed the session".into())),
                        Err(status) => return Ok(SessionEnd::Lost(status.to_string())),
                    };
                    let msg: MasterMsg = match codec::decode("master message", &env.payload) {
                        Ok(m) => m,
                        Err(e) => return Ok(SessionEnd::Lost(e.to_string())),
                    };
                    let mut slots = self.launcher.lock();
                    if !slots.book.accept_term(msg.term) {
                        tracing::warn!(term = msg.term, highest = slots.book.highest_term(), "ignoring a message from a deposed leader");
                        continue;
                    }
                    for body in msg.body.flatten() {
                        match body {
                            MasterBody::Run(run) => {
                                let actions = slots.book.on_run(run);
                                self.launcher.execute(&mut slots, actions, false);
                            }
                            MasterBody::Stop { task, fence } => {
                                let actions = slots.book.on_stop(task, fence);
                                self.launcher.execute(&mut slots, actions, false);
                            }
                            MasterBody::Ack { task, fence } => slots.book.on_ack(task, fence),
                            MasterBody::NotLeader { leader } => return Ok(SessionEnd::Redirect(leader)),
                            MasterBody::Refused { reason } => return Err(WorkerError::Refused(reason)),
                            MasterBody::Echo { token } => {
                                if let Some((_, at)) = echo_pending.take_if(|(sent, _)| *sent == token) {
                                    let rtt = at.elapsed();
                                    rtt_micros = Some(rtt.as_micros() as u64);
                                    self.metrics.observe_rtt(rtt);
                                }
                            }
                            MasterBody::Welcome { .. } | MasterBody::Batch(_) => {}
                        }
                    }
                }
            }
        }
    }

    /// Takes note of a task event; returns the message to send if a leader is listening.
    fn on_task_event(&mut self, event: TaskEvent, connected: Option<()>) -> Option<WorkerMsg> {
        match event {
            TaskEvent::Started(task, fence) => connected.map(|_| WorkerMsg::Started { task, fence }),
            TaskEvent::Reports => {
                if connected.is_none() {
                    // Kept as unacknowledged results, sent when a session opens.
                    let mut unsent = Vec::new();
                    self.collect_reports(&mut unsent);
                }
                None
            }
        }
    }

    /// Moves the runners' results into `outbox` and folds their run times into the queue
    /// sizing.
    fn collect_reports(&mut self, outbox: &mut Vec<WorkerMsg>) {
        let took = {
            let mut slots = self.launcher.lock();
            outbox.append(&mut slots.reports);
            std::mem::take(&mut slots.took)
        };
        for took in took {
            self.measured(took);
        }
    }
}
