//! The HTTP/JSON client API (`/v1/…`); see `flotilla_proto::api` for the routes and types.
//!
//! Writes go through the proposer and answer once committed. Reads are linearizable (Raft
//! read-index on the leader) unless `stale=true`, which any master answers from its replica.
//! A follower answers both with 421 and the leader's address.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use flotilla_core::scheduler::unschedulable_reason;
use flotilla_core::{Command, Response as Applied};
use flotilla_proto::api::{
    ApiError, Cancelled, EventView, Events, JobDetail, JobResult, JobSummary, MasterStatus, RetentionView, Status,
    SubmitRequest, Submitted, TaskResultView, WorkerStatus,
};
use flotilla_proto::time::now_ms;

use crate::node::Master;
use crate::proposer::{read_error, ProposeError};

type Shared = Arc<Master>;
type Params = Query<HashMap<String, String>>;

pub fn router(master: Shared) -> Router {
    Router::new()
        .route("/v1/jobs", post(submit).get(list_jobs))
        .route("/v1/jobs/{id}", get(show_job))
        .route("/v1/jobs/{id}/results", get(job_results))
        .route("/v1/jobs/{id}/result", get(job_result))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/v1/status", get(status))
        .route("/v1/events", get(events))
        .route("/v1/events/retention", get(retention).put(set_retention))
        .route("/v1/node", get(node))
        .route("/metrics", get(metrics))
        .with_state(master)
}

/// A failed request: HTTP status plus the JSON error body.
pub struct Failure(StatusCode, ApiError);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

fn failure(status: StatusCode, code: &str, error: impl Into<String>) -> Failure {
    Failure(status, ApiError { error: error.into(), code: code.to_string(), leader: None })
}

pub fn bad_request(error: impl Into<String>) -> Failure {
    failure(StatusCode::BAD_REQUEST, "bad_request", error)
}

pub fn not_found(error: impl Into<String>) -> Failure {
    failure(StatusCode::NOT_FOUND, "not_found", error)
}

fn from_propose(master: &Master, e: ProposeError) -> Failure {
    match e {
        ProposeError::NotLeader { leader: Some(id) } if id != master.config.id => {
            let address = master.address_of(id);
            Failure(
                StatusCode::MISDIRECTED_REQUEST,
                ApiError {
                    error: format!("master {} is not the leader; master {id} is", master.config.id),
                    code: "not_leader".to_string(),
                    leader: address,
                },
            )
        }
        ProposeError::NotLeader { .. } => {
            failure(StatusCode::SERVICE_UNAVAILABLE, "no_leader", "no leader is elected right now; retry shortly")
        }
        ProposeError::Fatal(e) => failure(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
        ProposeError::Dropped => failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "leadership changed before the request committed; retry",
        ),
    }
}

fn flag(q: &HashMap<String, String>, key: &str) -> bool {
    q.get(key).is_some_and(|v| v.is_empty() || v == "true" || v == "1")
}

fn number(q: &HashMap<String, String>, key: &str, default: u64) -> Result<u64, Failure> {
    match q.get(key) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| bad_request(format!("query parameter {key} must be a number, not '{v}'"))),
    }
}

fn job_id(raw: &str) -> Result<u64, Failure> {
    raw.parse().map_err(|_| bad_request(format!("job id must be a number, not '{raw}'")))
}

/// Waits until this master may answer a read: stale reads at once, linearizable reads after
/// the leader confirmed its leadership with a quorum and applied up to that point.
async fn read_barrier(master: &Master, q: &HashMap<String, String>) -> Result<bool, Failure> {
    if flag(q, "stale") {
        return Ok(true);
    }
    master.raft.ensure_linearizable().await.map_err(|e| from_propose(master, read_error(e)))?;
    Ok(false)
}

async fn submit(State(master): State<Shared>, body: Bytes) -> Result<Json<Submitted>, Failure> {
    let request: SubmitRequest =
        serde_json::from_slice(&body).map_err(|e| bad_request(format!("invalid job JSON: {e}")))?;
    let spec = request.to_spec().map_err(bad_request)?;
    let command = Command::SubmitJob { spec, request_id: request.request_id };
    match master.proposer.propose_one(command).await.map_err(|e| from_propose(&master, e))? {
        Applied::JobSubmitted { job, .. } => Ok(Json(Submitted { id: job })),
        Applied::Invalid { error } => Err(bad_request(error)),
        other => Err(failure(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("unexpected {other:?}"))),
    }
}

async fn cancel_job(State(master): State<Shared>, Path(id): Path<String>) -> Result<Json<Cancelled>, Failure> {
    let id = job_id(&id)?;
    match master.proposer.propose_one(Command::CancelJob { job: id }).await.map_err(|e| from_propose(&master, e))? {
        Applied::JobCancelled { job, kill } => {
            master.sessions.stop_attempts(&kill).await;
            Ok(Json(Cancelled { id: job, stopped: kill.len() }))
        }
        Applied::Invalid { error } if error.starts_with("no job") => Err(not_found(error)),
        Applied::Invalid { error } => Err(failure(StatusCode::CONFLICT, "conflict", error)),
        other => Err(failure(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("unexpected {other:?}"))),
    }
}

async fn list_jobs(State(master): State<Shared>, Query(q): Params) -> Result<Json<Vec<JobSummary>>, Failure> {
    read_barrier(&master, &q).await?;
    let data = master.shared.read();
    Ok(Json(data.state.jobs().map(JobSummary::from_job).collect()))
}

async fn show_job(
    State(master): State<Shared>,
    Path(id): Path<String>,
    Query(q): Params,
) -> Result<Json<JobDetail>, Failure> {
    let id = job_id(&id)?;
    // `wait_ms`: long poll until the job has finished or the time is up (`flotilla job wait`
    // learns of the end at once instead of at its next poll).
    let wait = Duration::from_millis(number(&q, "wait_ms", 0)?.min(30_000));
    read_barrier(&master, &q).await?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut applied = master.shared.subscribe();
    loop {
        {
            let data = master.shared.read();
            let job = data.state.job(id).ok_or_else(|| not_found(format!("no job {id}")))?;
            if job.state.is_terminal() || tokio::time::Instant::now() >= deadline {
                return Ok(Json(JobDetail::from_job(job, unschedulable_reason(&data.state, job))));
            }
        }
        if tokio::time::timeout_at(deadline, applied.changed()).await.is_ok_and(|r| r.is_err()) {
            // The state machine is gone (shutting down): answer with what there is.
            let data = master.shared.read();
            let job = data.state.job(id).ok_or_else(|| not_found(format!("no job {id}")))?;
            return Ok(Json(JobDetail::from_job(job, unschedulable_reason(&data.state, job))));
        }
    }
}

async fn job_results(
    State(master): State<Shared>,
    Path(id): Path<String>,
    Query(q): Params,
) -> Result<Json<Vec<TaskResultView>>, Failure> {
    let id = job_id(&id)?;
    let offset = number(&q, "offset", 0)?;
    let limit = number(&q, "limit", u64::MAX)?;
    read_barrier(&master, &q).await?;
    let data = master.shared.read();
    let job = data.state.job(id).ok_or_else(|| not_found(format!("no job {id}")))?;
    Ok(Json(TaskResultView::list(job, offset, limit)))
}

async fn job_result(
    State(master): State<Shared>,
    Path(id): Path<String>,
    Query(q): Params,
) -> Result<Json<JobResult>, Failure> {
    let id = job_id(&id)?;
    read_barrier(&master, &q).await?;
    let data = master.shared.read();
    let job = data.state.job(id).ok_or_else(|| not_found(format!("no job {id}")))?;
    Ok(Json(JobResult::from_job(job)))
}

async fn status(State(master): State<Shared>, Query(q): Params) -> Result<Json<Status>, Failure> {
    let stale = read_barrier(&master, &q).await?;
    // Each master's own view, asked concurrently; an unreachable one is reported as such.
    let mut asks = tokio::task::JoinSet::new();
    for (id, address) in master.members() {
        let m = master.clone();
        asks.spawn(async move {
            let info = if id == m.config.id {
                Ok(m.node_info())
            } else {
                m.fetch_node_info(&address, Duration::from_millis(500)).await
            };
            (id, address, info)
        });
    }
    let mut masters = Vec::new();
    while let Some(joined) = asks.join_next().await {
        let Ok((id, address, info)) = joined else { continue };
        masters.push(match info {
            Ok(i) => MasterStatus {
                id,
                address,
                role: i.role,
                term: Some(i.term),
                last_applied: i.last_applied,
                reachable: true,
            },
            Err(_) => MasterStatus {
                id,
                address,
                role: "unknown".to_string(),
                term: None,
                last_applied: None,
                reachable: false,
            },
        });
    }
    masters.sort_by_key(|m| m.id);
    let data = master.shared.read();
    let workers = worker_statuses(&master, &data.state);
    let jobs = data.state.job_counts().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let metrics = master.raft.metrics().borrow().clone();
    Ok(Json(Status {
        leader: metrics.current_leader,
        term: metrics.current_term,
        masters,
        workers,
        jobs,
        answered_by: master.config.id,
        stale,
    }))
}

/// Every worker's status; the time since its last message only on the leader (heartbeats
/// live in the leader's memory).
pub fn worker_statuses(master: &Master, state: &flotilla_core::state::ClusterState) -> Vec<WorkerStatus> {
    let now = now_ms();
    let leading = master.leadership().is_some();
    state
        .workers()
        .map(|w| {
            let seen = if leading {
                master.sessions.last_seen(&w.name).map(|t| now.saturating_sub(t.elapsed().as_millis() as u64))
            } else {
                None
            };
            WorkerStatus::from_worker(w, seen, now)
        })
        .collect()
}

async fn events(State(master): State<Shared>, Query(q): Params) -> Result<Json<Events>, Failure> {
    let after = number(&q, "after", 0)?;
    let limit = number(&q, "limit", 1000)?.clamp(1, 10_000) as usize;
    let wait = Duration::from_millis(number(&q, "wait_ms", 0)?.min(30_000));
    read_barrier(&master, &q).await?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut applied = master.shared.subscribe();
    loop {
        {
            let data = master.shared.read();
            let journal = data.state.journal();
            let events: Vec<EventView> = journal.since(after, limit).map(EventView::from_event).collect();
            if !events.is_empty() || tokio::time::Instant::now() >= deadline {
                let last_seq = events.last().map(|e| e.seq).unwrap_or(after.min(journal.last_seq()));
                return Ok(Json(Events { events, last_seq }));
            }
        }
        // Long poll: wait for something to be applied, up to the deadline.
        let _ = tokio::time::timeout_at(deadline, applied.changed()).await;
    }
}

async fn retention(State(master): State<Shared>, Query(q): Params) -> Result<Json<RetentionView>, Failure> {
    read_barrier(&master, &q).await?;
    Ok(Json(RetentionView::from_journal(master.shared.read().state.journal())))
}

async fn set_retention(State(master): State<Shared>, body: Bytes) -> Result<Json<RetentionView>, Failure> {
    let retention: flotilla_core::journal::Retention = serde_json::from_slice(&body)
        .map_err(|e| bad_request(format!("invalid retention JSON (want max_events, max_age_ms): {e}")))?;
    retention.validate().map_err(bad_request)?;
    let command = Command::SetJournalRetention(retention);
    match master.proposer.propose_one(command).await.map_err(|e| from_propose(&master, e))? {
        Applied::Noted => Ok(Json(RetentionView::from_journal(master.shared.read().state.journal()))),
        Applied::Invalid { error } => Err(bad_request(error)),
        other => Err(failure(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("unexpected {other:?}"))),
    }
}

/// Prometheus text exposition (see `metrics`). Served by every master, leader or not.
async fn metrics(State(master): State<Shared>) -> Response {
    let body = master.metrics.render(&master);
    ([(axum::http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response()
}

async fn node(State(master): State<Shared>) -> Json<flotilla_proto::api::NodeInfo> {
    Json(master.node_info())
}

pub async fn fallback() -> Failure {
    not_found("no such endpoint (the API lives under /v1/)")
}
