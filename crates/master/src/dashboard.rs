//! The live web dashboard every master serves at `/`: static assets compiled into the binary
//! (no CDN, no build step) plus two data routes the page reads.
//!
//! - `GET /ui/snapshot`: one [`View`] as JSON.
//! - `GET /ui/stream`: server-sent events, a fresh [`View`] whenever the replicated state
//!   changes (at most [`MAX_RATE`] a second) and at least every [`IDLE_REFRESH`].
//!
//! A view comes from this master's own replica, leader or follower alike, and says how fresh
//! it is (the follower's lag and how long since the leader last replicated to it): the
//! dashboard keeps working while the masters elect a new leader, and shows the change live.
//! The data routes allow any origin, so that a page whose master died can carry on with
//! another master's stream; they are behind the cluster token like the rest of the API.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Path;
use axum::extract::State;
use axum::http::{header, Method, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio_stream::wrappers::ReceiverStream;

use flotilla_core::scheduler::unschedulable_reason;
use flotilla_proto::api::{
    EventView, JobDetail, JobSummary, NodeInfo, Role, StatusWarning, TaskResultView, WorkerStatus,
};
use flotilla_proto::time::now_ms;

use crate::node::Master;

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const APP_CSS: &str = include_str!("dashboard/app.css");

/// Views per second a stream sends at most, however fast the state changes.
const MAX_RATE: u32 = 4;
/// A stream sends a view at least this often, so the freshness shown stays current.
const IDLE_REFRESH: Duration = Duration::from_secs(1);
/// How long a view waits for another master's own figures.
const PEER_TIMEOUT: Duration = Duration::from_millis(400);
/// Jobs and events in a view (the newest).
const VIEW_JOBS: usize = 200;
const VIEW_EVENTS: usize = 300;

/// The routes without the cluster token: the page and its code hold no cluster data.
pub fn public_router() -> Router {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/ui/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/ui/app.css", get(|| async { asset("text/css; charset=utf-8", APP_CSS) }))
}

/// The data routes (behind the token when one is set).
pub fn router(master: Arc<Master>) -> Router {
    let history = Arc::new(History::default());
    // The sampler runs for as long as the master does (it holds it weakly), whether or not a
    // page is open, so that a page opened now charts the last minutes.
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(sample(Arc::downgrade(&master), history.clone()));
    }
    let hub = Arc::new(Hub { master, history, views: std::sync::Mutex::new(None) });
    Router::new()
        .route("/ui/snapshot", get(snapshot).options(preflight))
        .route("/ui/stream", get(stream).options(preflight))
        .route("/ui/job/{id}", get(job).options(preflight))
        .with_state(hub)
}

/// One view for every open stream on this master: a single producer builds and encodes it
/// (asking each peer once) while at least one page listens, and stops when the last goes.
struct Hub {
    master: Arc<Master>,
    history: Arc<History>,
    /// The producer's channel while it runs: the newest view, encoded.
    views: std::sync::Mutex<Option<tokio::sync::watch::Sender<Option<Arc<String>>>>>,
}

impl Hub {
    fn subscribe(self: &Arc<Self>) -> tokio::sync::watch::Receiver<Option<Arc<String>>> {
        let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = views.as_ref() {
            return tx.subscribe();
        }
        let (tx, rx) = tokio::sync::watch::channel(None);
        *views = Some(tx.clone());
        tokio::spawn(produce(self.clone(), tx));
        rx
    }

    /// True, and the producer must stop, if nobody listens any more. Under the same lock as
    /// `subscribe`, so a page that subscribes now is never left with a stopped producer.
    fn retire(&self) -> bool {
        let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        if views.as_ref().is_some_and(|tx| tx.receiver_count() > 0) {
            return false;
        }
        *views = None;
        true
    }
}

/// Builds views while anyone listens: on every change of the state, at most [`MAX_RATE`] a
/// second, and at least every [`IDLE_REFRESH`].
async fn produce(hub: Arc<Hub>, tx: tokio::sync::watch::Sender<Option<Arc<String>>>) {
    let master = &hub.master;
    let mut applied = master.shared.subscribe();
    let min_gap = Duration::from_secs(1) / MAX_RATE;
    loop {
        let started = tokio::time::Instant::now();
        match serde_json::to_string(&view(master, &hub.history).await) {
            Ok(json) => {
                tx.send_replace(Some(Arc::new(json)));
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode a dashboard view"),
        }
        // Wait for a change (or the idle refresh), then keep to the rate limit.
        tokio::select! {
            _ = tx.closed() => {}
            _ = tokio::time::timeout(IDLE_REFRESH, applied.changed()) => {}
        }
        if tx.is_closed() && hub.retire() {
            return; // the last page went away
        }
        tokio::time::sleep_until(started + min_gap).await;
    }
}

/// True for requests that need no token: the page and its code (no cluster data), and the
/// browser's CORS preflight questions (which carry no token by design).
pub fn is_public(method: &Method, path: &str) -> bool {
    matches!(path, "/" | "/ui/app.js" | "/ui/app.css") || (method == Method::OPTIONS && path.starts_with("/ui/"))
}

/// The dashboard runs only its own script and style (no inline code, no other origin's);
/// it may fetch from any master (it follows the leader), and nothing may frame it.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self' https: http:; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

/// One master as the dashboard shows it.
#[derive(Clone, Debug, Serialize)]
pub struct MasterView {
    pub id: u64,
    pub address: String,
    /// `leader`, `follower`, `candidate`, `learner`, or `unreachable`.
    pub role: Role,
    pub term: Option<u64>,
    pub last_applied: Option<u64>,
    /// Entries behind the most advanced master in this view.
    pub lag: Option<u64>,
    pub reachable: bool,
    /// Smoothed round trip from the answering master, in milliseconds.
    pub rtt_ms: Option<f64>,
}

/// Everything one dashboard refresh needs, from the answering master's replica.
#[derive(Clone, Debug, Serialize)]
pub struct View {
    /// The master that made this view, and what it knows of the cluster's leadership.
    pub node: NodeInfo,
    /// Milliseconds since a leader last replicated to this master (`None` on the leader).
    pub leader_silent_ms: Option<u64>,
    pub generated_at_ms: u64,
    pub masters: Vec<MasterView>,
    pub workers: Vec<WorkerStatus>,
    /// Jobs by state over the whole cluster.
    pub job_counts: std::collections::BTreeMap<String, u64>,
    /// The newest jobs, newest first.
    pub jobs: Vec<JobSummary>,
    /// The newest journal events, oldest first.
    pub events: Vec<EventView>,
    /// What needs attention, as `/v1/status` reports it.
    pub warnings: Vec<StatusWarning>,
    /// Autoscaling pools, as `/v1/autoscale` reports them.
    pub pools: Vec<flotilla_proto::api::PoolView>,
    /// The charts' samples, oldest first (every [`SAMPLE_EVERY`], the last 10 minutes).
    pub history: Vec<Sample>,
    /// Dependencies among the jobs of the view (and the jobs they need).
    pub deps: Vec<DependencyEdge>,
}

/// How often the charts' figures are sampled, and how many samples are kept (10 minutes).
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
const HISTORY_LEN: usize = 300;

/// One sample of the figures the dashboard charts, from this master's replica.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct Sample {
    pub at_ms: u64,
    /// Tasks of the kept jobs that have finished (succeeded, failed or cancelled): its rise
    /// between two samples is the throughput (it falls when finished jobs are removed).
    pub done: u64,
    pub waiting: u64,
    /// Cpus of ready workers running tasks, and offered by them.
    pub cpus_busy: u64,
    pub cpus_total: u64,
}

impl Sample {
    pub fn of(state: &flotilla_core::state::ClusterState, workers: &[WorkerStatus], at_ms: u64) -> Self {
        let mut sample = Sample { at_ms, done: 0, waiting: 0, cpus_busy: 0, cpus_total: 0 };
        for job in state.jobs() {
            let c = &job.counts;
            sample.done += c.succeeded + c.failed + c.cancelled;
            sample.waiting += c.waiting;
        }
        for w in workers.iter().filter(|w| w.state == flotilla_proto::api::WorkerState::Ready) {
            sample.cpus_busy += u64::from(w.cpus_busy);
            sample.cpus_total += u64::from(w.cpus_total);
        }
        sample
    }
}

/// The newest [`HISTORY_LEN`] samples, oldest first.
#[derive(Default)]
pub struct History {
    samples: std::sync::Mutex<std::collections::VecDeque<Sample>>,
}

impl History {
    pub fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() == HISTORY_LEN {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    pub fn all(&self) -> Vec<Sample> {
        self.samples.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect()
    }
}

async fn sample(master: std::sync::Weak<Master>, history: Arc<History>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(master) = master.upgrade() else { return };
        let seen = master.sessions.last_seen_all();
        let data = master.shared.read();
        let workers = crate::api::worker_statuses(&seen, &data.state);
        history.push(Sample::of(&data.state, &workers, now_ms()));
    }
}

/// One edge of the dependency graph: job `to` needs job `from` (`rel`: `after`,
/// `after_finished` or `each`).
#[derive(Clone, Debug, Serialize)]
pub struct DependencyEdge {
    pub from: u64,
    pub to: u64,
    pub rel: &'static str,
}

/// Builds a view: this master's replica plus each other master's own figures.
pub async fn view(master: &Arc<Master>, history: &History) -> View {
    let mut asks = tokio::task::JoinSet::new();
    for (id, address) in master.others() {
        let m = master.clone();
        asks.spawn(async move {
            let info = m.fetch_node_info(&address, PEER_TIMEOUT).await;
            (id, address, info.ok())
        });
    }
    let me = master.node_info();
    let mut infos: Vec<(u64, String, Option<NodeInfo>)> = vec![(me.id, me.address.clone(), Some(me.clone()))];
    while let Some(joined) = asks.join_next().await {
        if let Ok(answer) = joined {
            infos.push(answer);
        }
    }
    infos.sort_by_key(|(id, _, _)| *id);
    let newest = infos.iter().filter_map(|(_, _, i)| i.as_ref().and_then(|i| i.last_log_index)).max();
    let mut warnings: Vec<StatusWarning> =
        infos.iter().filter_map(|(_, _, i)| i.as_ref()).flat_map(crate::api::slow_peer_warnings).collect();
    warnings
        .extend(StatusWarning::zone_majorities(infos.iter().map(|(id, _, i)| (*id, i.as_ref().map(|i| &i.labels)))));
    warnings.sort_by_key(crate::api::warning_key);
    let masters = infos
        .into_iter()
        .map(|(id, address, info)| match info {
            Some(i) => MasterView {
                id,
                address,
                role: i.role,
                term: Some(i.term),
                last_applied: i.last_applied,
                lag: newest.map(|n| n.saturating_sub(i.last_applied.unwrap_or(0))),
                reachable: true,
                rtt_ms: master.rtt_ms(id),
            },
            None => MasterView {
                id,
                address,
                role: Role::Unreachable,
                term: None,
                last_applied: None,
                lag: None,
                reachable: false,
                rtt_ms: master.rtt_ms(id),
            },
        })
        .collect();

    let leading = master.leadership().is_some();
    let now = now_ms();
    let seen = master.sessions.last_seen_all();
    let data = master.shared.read();
    let workers = crate::api::worker_statuses(&seen, &data.state);
    let job_counts = data.state.job_counts().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let jobs: Vec<JobSummary> = data.state.jobs().rev().take(VIEW_JOBS).map(JobSummary::from_job).collect();
    let journal = data.state.journal();
    // The journal may keep up to a million events; a view walks only the ones it shows.
    let events = journal.newest(VIEW_EVENTS).map(EventView::from_event).collect();
    let pools =
        data.state.pools().iter().map(|(name, p)| flotilla_proto::api::PoolView::new(name, p, &data.state)).collect();
    let mut deps = Vec::new();
    for job in &jobs {
        let Some(options) = data.state.job_options(job.id) else { continue };
        for (ids, rel) in
            [(&options.after, "after"), (&options.after_finished, "after_finished"), (&options.each, "each")]
        {
            deps.extend(ids.iter().map(|from| DependencyEdge { from: *from, to: job.id, rel }));
        }
    }
    let mut history = history.all();
    if history.is_empty() {
        // A master just started: one sample now, so the charts have a point.
        history.push(Sample::of(&data.state, &workers, now));
    }
    View {
        leader_silent_ms: (!leading).then(|| master.leader_contact.silent_for().as_millis() as u64),
        node: me,
        generated_at_ms: now,
        masters,
        workers,
        job_counts,
        jobs,
        events,
        warnings,
        pools,
        history,
        deps,
    }
}

fn cors(response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    response.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, header::HeaderValue::from_static("*"));
    response.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache"));
    response
}

/// Allows another master's page to read this master's data routes (with the token header).
async fn preflight() -> Response {
    let mut response = cors(StatusCode::NO_CONTENT);
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, header::HeaderValue::from_static("GET, OPTIONS"));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, header::HeaderValue::from_static("authorization"));
    h.insert(header::ACCESS_CONTROL_MAX_AGE, header::HeaderValue::from_static("600"));
    response
}

/// A job and its first [`JOB_TASKS`] tasks, from this master's replica.
#[derive(Serialize)]
struct JobPage {
    detail: JobDetail,
    results: Vec<TaskResultView>,
}

/// Tasks a job page lists at most.
const JOB_TASKS: u64 = 1000;

async fn job(State(hub): State<Arc<Hub>>, Path(id): Path<String>) -> Response {
    let master = &hub.master;
    let Ok(id) = id.parse::<u64>() else {
        return cors(crate::api::bad_request(format!("job id must be a number, not '{id}'")));
    };
    let (detail, job, records) = {
        let data = master.shared.read();
        let Some(job) = data.state.job(id) else { return cors(crate::api::missing_job(&data.state, id)) };
        (
            JobDetail::from_job(job, unschedulable_reason(&data.state, job)).with_extras(&data.state),
            job.clone(),
            master.shared.records(),
        )
    };
    let records = records.wait_async().await;
    match TaskResultView::list(&job, 0, JOB_TASKS, &records) {
        Ok(mut results) => {
            TaskResultView::note_output_errors(&mut results, &hub.master.shared.read().state, id);
            cors(Json(JobPage { detail, results }))
        }
        Err(e) => cors(crate::api::records_failure(e)),
    }
}

async fn snapshot(State(hub): State<Arc<Hub>>) -> Response {
    cors(Json(view(&hub.master, &hub.history).await))
}

async fn stream(State(hub): State<Arc<Hub>>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(2);
    let mut views = hub.subscribe();
    tokio::spawn(async move {
        loop {
            let view = views.borrow_and_update().clone();
            if let Some(json) = view {
                if tx.send(Ok(SseEvent::default().event("view").data(json.as_str()))).await.is_err() {
                    return; // the page went away
                }
            }
            tokio::select! {
                _ = tx.closed() => return,
                changed = views.changed() => if changed.is_err() { return },
            }
        }
    });
    cors(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::new().interval(Duration::from_secs(10))))
}
