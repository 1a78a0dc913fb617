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
//!
//! Every decision of the session is made by `flotilla_session::agent::AgentCore` (which the
//! simulation drives too); this crate is its shell: the gRPC stream, timers, and the task
//! processes ([`runner`]), started on the blocking pool.

pub mod metrics;
pub mod outputs;
pub mod runner;
pub mod sandbox;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tonic::Streaming;

use flotilla_core::model::{Fence, TaskId};
use flotilla_proto::codec;
use flotilla_proto::grpc::worker_service_client::WorkerServiceClient;
use flotilla_proto::grpc::Envelope;
use flotilla_proto::wire::{MasterMsg, RunTask};
use flotilla_session::agent::{AgentConfig, AgentCore, Effect, LinkError, Observation};

use runner::{Ended, PgidJournal, Stopper};

pub use flotilla_session::agent::QUEUE_AHEAD;

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
    /// Bytes of memory offered to tasks that ask for memory.
    pub memory: Option<u64>,
    /// Named resources offered, e.g. gpu=2 (units 0 and 1).
    pub resources: BTreeMap<String, u32>,
    pub labels: BTreeMap<String, String>,
    pub data_dir: PathBuf,
    pub token: Option<String>,
    /// The cluster's certificates directory: connect over TLS with the worker certificate
    /// (which is what admits the session); `None`: plain text.
    pub certs: Option<PathBuf>,
    /// Run tasks as this user (the worker must run as root), not the worker's.
    pub run_as: Option<String>,
    /// Keep each attempt's working directory after it ended (they are removed by default).
    pub keep_task_dirs: bool,
    /// Serve Prometheus metrics at this address (`/metrics`), if given.
    pub metrics: Option<std::net::SocketAddr>,
    /// When asked to stop (the `drain` token), how long running tasks may take before the
    /// leader stops and re-queues them (none: as long as they take).
    pub drain_deadline: Option<Duration>,
    /// Where to serve the outputs this worker holds; `None`: a free port on loopback when
    /// every master is on loopback, on every interface otherwise.
    pub outputs_listen: Option<std::net::SocketAddr>,
    /// How often the worker asks the leader which of its stored outputs are garbage (their
    /// job was removed), and how long a blob must have been stored before it is asked about.
    pub outputs_gc: Duration,
    pub outputs_gc_age: Duration,
    /// The host other workers and the masters reach that server at; `None`: the listening
    /// address, or (listening on every interface) the address this machine uses to reach
    /// the first master.
    pub advertise: Option<String>,
    /// Exit 0 once drained, whoever drained it (autoscaled workers: their scale-in is a
    /// drain).
    pub exit_when_drained: bool,
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

/// Something that happened on a runner thread that the agent must see to.
enum TaskEvent {
    Started(TaskId, Fence),
    /// Reports wait in the core, or effects in [`Slots::deferred`]. Sent only when the core
    /// asks (a cpu went idle, or the first report of a batch), so a busy worker wakes its
    /// agent once per batch of reports rather than once per task.
    Reports,
    /// A copy of a task's outputs asked for by the leader is done, or failed.
    Copied(TaskId, Result<(), flotilla_core::workflow::OutputError>),
    /// A read found a stored blob damaged (it is discarded) or missing.
    Corrupt(flotilla_core::workflow::Digest),
    /// Part of the inventory of blobs held for a while, for the leader.
    Inventory(Vec<flotilla_core::workflow::Digest>),
}

/// The session core and the stop handles of running processes, shared by the agent and the
/// runner threads.
struct Slots {
    core: AgentCore,
    /// Stop handles of the processes running now, and when each started.
    processes: HashMap<(TaskId, Fence), (Arc<Stopper>, Instant)>,
    /// The worker is shutting down: start nothing more.
    closing: bool,
    /// Effects a runner thread got from the core that only the agent can carry out.
    deferred: Vec<Effect>,
}

/// Starts task processes on the blocking pool. A runner thread that sees its process exit
/// tells the core and starts whatever it starts next itself: on a busy worker a freed cpu
/// never waits for the agent's async task to be scheduled (a round trip between threads per
/// task that cost the short-task storm ~10 % of its throughput).
#[derive(Clone)]
struct Launcher {
    slots: Arc<Mutex<Slots>>,
    events: mpsc::UnboundedSender<TaskEvent>,
    pgids: Arc<PgidJournal>,
    name: Arc<str>,
    sandbox: Arc<sandbox::Sandbox>,
    metrics: Arc<metrics::WorkerMetrics>,
    runtime: tokio::runtime::Handle,
    data: Arc<outputs::Data>,
}

impl runner::TaskData for Launcher {
    fn stage(&self, task: &RunTask, dir: &std::path::Path) -> Result<(), flotilla_core::workflow::OutputError> {
        self.data.stage(task, dir)
    }

    fn keep(&self, task: &RunTask, dir: &std::path::Path) -> flotilla_core::workflow::Outputs {
        let peers = self.lock().core.peers().to_vec();
        self.data.keep(task, dir, peers)
    }

    fn spill(&self) -> Option<(std::fs::File, std::path::PathBuf)> {
        self.data.store.temp_file().ok()
    }

    fn live(&self, task: &RunTask) -> Option<Arc<flotilla_blobs::live::LiveAttempt>> {
        Some(self.data.live.start(task.task, task.fence))
    }

    fn live_ended(&self, task: &RunTask) {
        self.data.live.end(task.task, task.fence);
    }

    fn keep_log(
        &self,
        path: &std::path::Path,
        stream: flotilla_core::workflow::LogStream,
    ) -> Option<flotilla_core::workflow::LogFile> {
        match self.data.store.adopt(path) {
            Ok((sha256, size)) => Some(flotilla_core::workflow::LogFile { stream, size, sha256 }),
            Err(e) => {
                tracing::warn!(error = %e, stream = stream.name(), "a long log could not be kept whole");
                let _ = std::fs::remove_file(path);
                None
            }
        }
    }
}

impl Launcher {
    fn lock(&self) -> MutexGuard<'_, Slots> {
        // A runner that panicked holding the lock left the core consistent (every update is
        // a single call into it), so carry on with it.
        self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Carries out the process effects and observations; returns the rest (session effects)
    /// in order. With `keep_one`, the first start is returned for the calling runner thread
    /// to run instead of going to a new thread.
    fn execute(
        &self,
        slots: &mut Slots,
        effects: Vec<Effect>,
        keep_one: bool,
    ) -> (Option<(RunTask, Arc<Stopper>)>, Vec<Effect>) {
        let mut kept = None;
        let mut rest = Vec::new();
        for effect in effects {
            match effect {
                Effect::Kill(task, fence) => {
                    if let Some((stop, _)) = slots.processes.get(&(task, fence)) {
                        stop.stop();
                    }
                }
                Effect::Start(_) if slots.closing => {}
                Effect::Start(run) => {
                    let stop = Arc::new(Stopper::default());
                    slots.processes.insert((run.task, run.fence), (stop.clone(), Instant::now()));
                    if keep_one && kept.is_none() {
                        kept = Some((run, stop));
                    } else {
                        let launcher = self.clone();
                        self.runtime.spawn_blocking(move || launcher.run_chain(run, stop));
                    }
                }
                Effect::Observe(o) => self.observe(o),
                other => rest.push(other),
            }
        }
        self.metrics.running.set(slots.core.book().running_count() as i64);
        self.metrics.queued.set(slots.core.book().queued_count() as i64);
        (kept, rest)
    }

    fn observe(&self, observation: Observation) {
        match observation {
            Observation::Connected { address, leader, term, incarnation } => {
                tracing::info!(master = %address, leader, term, incarnation, "connected");
                self.metrics.sessions.inc();
                self.metrics.connected.set(1);
            }
            Observation::Disconnected => {
                self.metrics.connected.set(0);
            }
            Observation::Redirected { from, leader } => tracing::debug!(%from, ?leader, "not the leader"),
            Observation::SessionLost { address, reason } => {
                tracing::info!(master = %address, %reason, "session lost; reconnecting")
            }
            Observation::IgnoredStale { term, highest } => {
                tracing::warn!(term, highest, "ignoring a message from a deposed leader")
            }
            Observation::RoundTrip(rtt) => self.metrics.observe_rtt(rtt),
            Observation::Draining { deadline } => match deadline {
                Some(d) => tracing::info!(
                    deadline_s = d.as_secs(),
                    "draining before stopping: no new tasks; running ones may take the deadline (signal again to stop now)"
                ),
                None => tracing::info!("draining before stopping: no new tasks (signal again to stop now)"),
            },
            Observation::MastersLearned { addresses } => {
                tracing::info!(masters = %addresses.join(","), "the group's masters changed")
            }
            Observation::QueueResized { from, to } => {
                tracing::debug!(from, to, "resizing the task queue");
                self.metrics.queue_depth.set(i64::from(to));
            }
        }
    }

    /// Runs `run`, then whatever the core starts next on this thread, until nothing is left
    /// to start here.
    fn run_chain(&self, mut run: RunTask, mut stop: Arc<Stopper>) {
        loop {
            let (task, fence) = (run.task, run.fence);
            let started = self.events.clone();
            let ended = runner::run_catching(&run, &self.name, &self.sandbox, &self.pgids, &stop, self, move || {
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
                let now = Instant::now();
                let (outcome, took) = match ended {
                    Ended::Stopped => (None, None),
                    Ended::Finished(outcome) => (Some(outcome), since.map(|s| now.saturating_duration_since(s))),
                };
                let mut effects = Vec::new();
                let wake = slots.core.ended(now, task, fence, outcome, took, &mut effects);
                let (next, rest) = self.execute(&mut slots, effects, true);
                let deferred = !rest.is_empty();
                slots.deferred.extend(rest);
                (wake || deferred || slots.closing, next)
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

/// The open session's stream, as far as it got.
struct Link {
    out: mpsc::UnboundedSender<Envelope>,
    inbound: Option<Streaming<Envelope>>,
}

/// The worker process: the shell that carries out the core's effects.
struct Agent {
    launcher: Launcher,
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    /// TLS with the worker certificate, or plain text.
    connector: flotilla_tls::Connector,
    link: Option<Link>,
    drain_deadline: Option<Duration>,
    /// Blobs stored again within this long are kept though the leader called them garbage.
    outputs_gc_age: Duration,
}

/// Runs a worker until `shutdown` is cancelled, or until it drained after `drain` was
/// cancelled (the first SIGTERM: no new tasks, queued ones move, running ones finish).
pub async fn run(
    config: WorkerConfig,
    drain: CancellationToken,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    if config.masters.is_empty() {
        return Err(WorkerError::Config("no master addresses given (--masters)".into()));
    }
    if config.cpus == 0 {
        return Err(WorkerError::Config("--cpus must be at least 1".into()));
    }
    let token = match &config.token {
        Some(t) => Some(
            flotilla_proto::bearer(t)
                .parse()
                .map_err(|_| WorkerError::Config("the token is not a valid header value".into()))?,
        ),
        None => None,
    };
    let identity = match &config.certs {
        Some(dir) => {
            let identity = flotilla_tls::Identity::load(dir, flotilla_tls::Role::Worker)
                .map_err(|e| WorkerError::Config(format!("--certs: {e}")))?;
            identity.watch();
            Some(identity)
        }
        None => None,
    };
    let connector = flotilla_tls::Connector::new(identity.clone(), flotilla_tls::Alpn::H2);
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| WorkerError::DataDir { path: config.data_dir.clone(), source })?;
    let secrets: Vec<&str> = config.token.as_deref().into_iter().collect();
    let sandbox = sandbox::Sandbox::new(&config.data_dir, config.keep_task_dirs, config.run_as.as_deref(), &secrets)
        .map_err(WorkerError::Config)?;
    if let Some(user) = sandbox.run_as() {
        tracing::info!(user = %user.name, uid = user.uid, "tasks run as another user");
    }
    let (pgids, leftovers) = PgidJournal::open(&config.data_dir)
        .map_err(|source| WorkerError::DataDir { path: config.data_dir.clone(), source })?;
    if leftovers > 0 {
        tracing::warn!(leftovers, "killed task processes left by a previous run of this worker");
    }
    let pgids = Arc::new(pgids);
    let (events_tx, mut events_rx) = mpsc::unbounded_channel::<TaskEvent>();
    let worker_metrics = Arc::new(metrics::WorkerMetrics::new());
    worker_metrics.cpus.set(i64::from(config.cpus));
    worker_metrics.queue_depth.set(i64::from(config.prefetch));
    if let Some(addr) = config.metrics {
        let listener = metrics::bind(addr)
            .await
            .map_err(|e| WorkerError::Config(format!("cannot serve metrics on {addr}: {e}")))?;
        tokio::spawn(metrics::serve(listener, worker_metrics.clone(), shutdown.clone()));
    }
    let store = Arc::new(
        flotilla_blobs::Store::open(&config.data_dir.join("outputs"))
            .map_err(|source| WorkerError::DataDir { path: config.data_dir.join("outputs"), source })?,
    );
    let agent_store = store.clone();
    let events_gc = events_tx.clone();
    {
        let events = events_tx.clone();
        store.on_corrupt(Box::new(move |digest| {
            let _ = events.send(TaskEvent::Corrupt(digest));
        }));
    }
    let listen = config.outputs_listen.unwrap_or_else(|| default_outputs_listen(&config.masters));
    let outputs_listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| WorkerError::Config(format!("cannot serve outputs on {listen}: {e}")))?;
    let bound = outputs_listener.local_addr().map_err(|e| WorkerError::Config(format!("outputs listener: {e}")))?;
    let serves = advertised(&config, bound);
    let transport = match &identity {
        Some(identity) => flotilla_tls::Transport::Tls(identity.clone()),
        None => flotilla_tls::Transport::Plain,
    };
    let live = Arc::new(flotilla_blobs::live::LiveLogs::default());
    tokio::spawn(flotilla_blobs::server::serve(
        outputs_listener,
        transport,
        store.clone(),
        live.clone(),
        shutdown.clone().cancelled_owned(),
    ));
    tracing::info!(listen = %bound, advertised = %serves, "serving the outputs this worker holds");
    let data = Arc::new(outputs::Data {
        store,
        live,
        client: flotilla_blobs::BlobClient::new(identity.clone()),
        runtime: tokio::runtime::Handle::current(),
        name: Arc::from(config.name.as_str()),
    });
    let core = AgentCore::new(
        AgentConfig {
            name: config.name.clone(),
            instance: random_u64(),
            cpus: config.cpus,
            memory: config.memory,
            resources: config.resources.clone(),
            labels: config.labels.clone(),
            masters: config.masters.clone(),
            prefetch: config.prefetch,
            adaptive_prefetch: config.adaptive_prefetch,
            serves: Some(serves),
            exit_when_drained: config.exit_when_drained,
        },
        Instant::now(),
    );
    let launcher = Launcher {
        slots: Arc::new(Mutex::new(Slots { core, processes: HashMap::new(), closing: false, deferred: Vec::new() })),
        events: events_tx,
        pgids,
        name: Arc::from(config.name.as_str()),
        sandbox: Arc::new(sandbox),
        metrics: worker_metrics.clone(),
        runtime: tokio::runtime::Handle::current(),
        data,
    };
    tokio::spawn(collect_garbage(agent_store, events_gc, config.outputs_gc, config.outputs_gc_age, shutdown.clone()));
    let mut agent = Agent {
        launcher,
        token,
        connector,
        link: None,
        drain_deadline: config.drain_deadline,
        outputs_gc_age: config.outputs_gc_age,
    };
    let result = agent.serve(&mut events_rx, &drain, &shutdown).await;
    worker_metrics.connected.set(0);
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

/// Blobs in one inventory message.
const INVENTORY_PART: usize = 4096;

/// Every `every`, the blobs stored longer ago than `age` go to the leader in parts; it
/// answers with the garbage among them (see `WorkerMsg::Inventory`).
async fn collect_garbage(
    store: Arc<flotilla_blobs::Store>,
    events: mpsc::UnboundedSender<TaskEvent>,
    every: Duration,
    age: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let store = store.clone();
        let Ok(old) = tokio::task::spawn_blocking(move || store.older_than(age)).await else { continue };
        for part in old.chunks(INVENTORY_PART) {
            if events.send(TaskEvent::Inventory(part.to_vec())).is_err() {
                return;
            }
        }
    }
}

/// Loopback when every master is on loopback (a local cluster), every interface otherwise.
fn default_outputs_listen(masters: &[String]) -> std::net::SocketAddr {
    let local = masters.iter().all(|m| {
        let host = m.rsplit_once(':').map_or(m.as_str(), |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
        host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    });
    if local {
        std::net::SocketAddr::from(([127, 0, 0, 1], 0))
    } else {
        std::net::SocketAddr::from(([0, 0, 0, 0], 0))
    }
}

/// The address others reach this worker's outputs at (see `WorkerConfig::advertise`).
fn advertised(config: &WorkerConfig, bound: std::net::SocketAddr) -> String {
    let host = match &config.advertise {
        Some(host) => host.clone(),
        None if !bound.ip().is_unspecified() => bound.ip().to_string(),
        // The address of the interface that routes to the first master: a UDP "connection"
        // sends nothing, it only picks the route.
        None => config
            .masters
            .first()
            .and_then(|m| {
                let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
                socket.connect(m).ok()?;
                Some(socket.local_addr().ok()?.ip().to_string())
            })
            .unwrap_or_else(|| "127.0.0.1".to_string()),
    };
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{}", bound.port())
    } else {
        format!("{host}:{}", bound.port())
    }
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

/// What woke the agent.
enum Wake {
    Shutdown,
    Drain,
    Deadline,
    Event(Option<TaskEvent>),
    Inbound(Result<Option<Envelope>, tonic::Status>),
}

impl Agent {
    /// Feeds the core (time, task events, the master's messages) and carries out its effects
    /// until shutdown or a refusal.
    async fn serve(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<TaskEvent>,
        drain: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Result<(), WorkerError> {
        let drain_deadline = self.drain_deadline;
        let mut todo: VecDeque<Effect> = VecDeque::new();
        self.input(&mut todo, |core, out| core.on_tick(Instant::now(), 0, 0, out));
        loop {
            while let Some(effect) = todo.pop_front() {
                match effect {
                    Effect::Connect { address } => self.connect(&address, &mut todo, shutdown).await,
                    Effect::Send(msg) => {
                        if let (Some(link), Ok(payload)) = (&self.link, codec::encode("worker message", &msg)) {
                            let _ = link.out.send(Envelope { payload });
                        }
                    }
                    Effect::Disconnect => self.link = None,
                    Effect::Exit(refusal) => return Err(WorkerError::Refused(refusal.to_string())),
                    Effect::Drained => {
                        tracing::info!("drained: every task finished or moved; stopping");
                        return Ok(());
                    }
                    Effect::Discard(digests) => {
                        let store = self.launcher.data.store.clone();
                        let age = self.outputs_gc_age;
                        tokio::task::spawn_blocking(move || {
                            let removed = digests.iter().filter(|d| store.discard_if_older(d, age)).count();
                            if removed > 0 {
                                tracing::info!(removed, "removed outputs no kept job needs");
                            }
                        });
                    }
                    Effect::Copy { task, files, sources } => {
                        let data = self.launcher.data.clone();
                        let events = self.launcher.events.clone();
                        tokio::spawn(async move {
                            let result = data.take_copy(task, &files, &sources).await;
                            if let Err(e) = &result {
                                tracing::warn!(%task, error = %e, "could not take a copy of a task's outputs");
                            }
                            let _ = events.send(TaskEvent::Copied(task, result));
                        });
                    }
                    process @ (Effect::Start(_) | Effect::Kill(..) | Effect::Observe(_)) => {
                        self.input(&mut todo, |_, out| out.push(process))
                    }
                }
            }
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let deadline = self.launcher.lock().core.next_deadline().map(tokio::time::Instant::from_std);
            let inbound = self.link.as_mut().and_then(|l| l.inbound.as_mut());
            let draining = self.launcher.lock().core.is_draining();
            let wake = tokio::select! {
                _ = shutdown.cancelled() => Wake::Shutdown,
                _ = drain.cancelled(), if !draining => Wake::Drain,
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => Wake::Deadline,
                ev = events.recv() => Wake::Event(ev),
                msg = async { inbound.expect("guarded").message().await }, if inbound.is_some() => Wake::Inbound(msg),
            };
            match wake {
                Wake::Shutdown => return Ok(()),
                Wake::Drain => self.input(&mut todo, |core, out| core.drain(Instant::now(), drain_deadline, out)),
                Wake::Deadline => {
                    let (spawned, spawn_micros) = self.launcher.metrics.spawn_totals();
                    self.input(&mut todo, |core, out| core.on_tick(Instant::now(), spawned, spawn_micros, out));
                }
                Wake::Event(None) => return Ok(()),
                Wake::Event(Some(first)) => {
                    // Everything that is ready, in one go.
                    let mut batch = vec![first];
                    while let Ok(ev) = events.try_recv() {
                        batch.push(ev);
                    }
                    self.input(&mut todo, |core, out| {
                        let now = Instant::now();
                        let mut reports = false;
                        for ev in batch {
                            match ev {
                                TaskEvent::Started(task, fence) => core.started(task, fence, out),
                                TaskEvent::Reports => reports = true,
                                TaskEvent::Copied(task, result) => core.copied(task, result, out),
                                TaskEvent::Corrupt(digest) => core.corrupt(vec![digest], out),
                                TaskEvent::Inventory(digests) => core.inventory(digests, out),
                            }
                        }
                        if reports {
                            core.reports_ready(now, out);
                        }
                    });
                }
                Wake::Inbound(msg) => {
                    let decoded = match msg {
                        // An undecodable message is a newer master's that a gate should have held
                        // back: say so, and reconnect (after the next master upgrade it stops).
                        Ok(Some(env)) => codec::decode::<MasterMsg>("master message", &env.payload).map_err(|e| {
                            format!(
                                "{e}: the master runs a newer release than this worker ({}) and sent what it \
                                 does not understand; upgrade this worker",
                                flotilla_proto::api::VERSION
                            )
                        }),
                        Ok(None) => Err("master closed the session".to_string()),
                        Err(status) => Err(status.to_string()),
                    };
                    self.input(&mut todo, |core, out| match decoded {
                        Ok(msg) => core.on_message(Instant::now(), msg, out),
                        Err(reason) => core.lost(Instant::now(), LinkError::Broken(reason), out),
                    });
                }
            }
        }
    }

    /// Runs one input through the core; process effects are carried out at once (under the
    /// lock, in order), session effects are queued in `todo`, after any a runner deferred.
    fn input(&self, todo: &mut VecDeque<Effect>, input: impl FnOnce(&mut AgentCore, &mut Vec<Effect>)) {
        let mut slots = self.launcher.lock();
        let mut effects = std::mem::take(&mut slots.deferred);
        input(&mut slots.core, &mut effects);
        let (_, rest) = self.launcher.execute(&mut slots, effects, false);
        todo.extend(rest);
    }

    /// Opens a session to `address`: the channel, then the stream; the core hears how it went.
    async fn connect(&mut self, address: &str, todo: &mut VecDeque<Effect>, shutdown: &CancellationToken) {
        self.link = None;
        let endpoint = match Endpoint::from_shared(format!("http://{address}")) {
            Ok(e) => e,
            Err(e) => {
                let error = LinkError::Broken(format!("bad master address {address}: {e}"));
                return self.input(todo, |core, out| core.lost(Instant::now(), error, out));
            }
        };
        // HTTP/2 pings detect a master that is paused or cut off, not only one that is gone.
        let endpoint = endpoint
            .connect_timeout(Duration::from_secs(1))
            .http2_keep_alive_interval(Duration::from_millis(1000))
            .keep_alive_timeout(Duration::from_millis(2000))
            .keep_alive_while_idle(true);
        let channel = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = endpoint.connect_with_connector(self.connector.clone()) => match c {
                Ok(c) => c,
                Err(e) => {
                    // tonic's own message is only "transport error": the cause says why (TLS, say).
                    let mut why = e.to_string();
                    let mut source = std::error::Error::source(&e);
                    while let Some(cause) = source {
                        why = format!("{why}: {cause}");
                        source = cause.source();
                    }
                    let error = LinkError::Broken(format!("cannot connect: {why}"));
                    return self.input(todo, |core, out| core.lost(Instant::now(), error, out));
                }
            },
        };
        let (out_tx, out_rx) = mpsc::unbounded_channel::<Envelope>();
        self.link = Some(Link { out: out_tx, inbound: None });
        // The hello goes into the stream's queue before the stream is opened.
        let mut hello = VecDeque::new();
        self.input(&mut hello, |core, out| core.connected(Instant::now(), out));
        for effect in hello {
            match effect {
                Effect::Send(msg) => {
                    if let (Some(link), Ok(payload)) = (&self.link, codec::encode("worker message", &msg)) {
                        let _ = link.out.send(Envelope { payload });
                    }
                }
                other => todo.push_back(other),
            }
        }
        let mut request = tonic::Request::new(tokio_stream::wrappers::UnboundedReceiverStream::new(out_rx));
        if let Some(token) = &self.token {
            request.metadata_mut().insert(flotilla_proto::AUTH_HEADER, token.clone());
        }
        let mut client = WorkerServiceClient::new(channel);
        let opened = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = client.session(request) => r,
        };
        match opened {
            Ok(r) => {
                if let Some(link) = &mut self.link {
                    link.inbound = Some(r.into_inner());
                }
            }
            Err(status) => {
                let error = if status.code() == tonic::Code::Unauthenticated {
                    LinkError::Unauthenticated
                } else if !self.connector.is_tls() && status.to_string().contains("FRAME_SIZE_ERROR") {
                    // What a TLS-only master's plain-text refusal looks like to an HTTP/2 client.
                    LinkError::Broken(format!(
                        "session refused: the master accepts TLS only; give this worker --certs DIR (or \
                         FLOTILLA_CERTS) with the cluster's certificates ({status})"
                    ))
                } else {
                    LinkError::Broken(format!("session refused: {status}"))
                };
                self.input(todo, |core, out| core.lost(Instant::now(), error, out));
            }
        }
    }
}
