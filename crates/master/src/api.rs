//! The HTTP/JSON client API (`/v1/…`); see `flotilla_proto::api` for the routes and types.
//!
//! Writes go through the proposer and answer once committed. Reads are linearizable (Raft
//! read-index on the leader) unless `stale=true`, which any master answers from its replica.
//! A follower answers both with 421 and the leader's address.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};

use flotilla_core::access::{AccessRefusal, Role as TokenRole};
use flotilla_core::scheduler::unschedulable_reason;
use flotilla_core::state::JobPresence;
use flotilla_core::{Command, Refusal, Response as Applied};
use flotilla_proto::api::{
    removed_message, AddMaster, ApiError, ApiErrorCode, Cancelled, EventView, Events, JobDetail, JobPage, JobQuery,
    JobResult, JobRetention, JobRetentionView, JobState, JobSummary, LeadershipMoved, MasterStatus, MemberView,
    PurgeOutcome, PurgeRequest, RetentionView, Role, Status, StatusWarning, SubmitRequest, Submitted, TaskResultView,
    TransferLeadership, WorkerStatus,
};
use flotilla_proto::time::now_ms;

use crate::auth::Caller;
use crate::node::Master;
use crate::proposer::{read_error, ProposeError};

type Shared = Arc<Master>;
pub(crate) type Params = Query<HashMap<String, String>>;

pub fn router(master: Shared) -> Router {
    Router::new()
        .route("/v1/jobs", post(submit).get(list_jobs))
        .route("/v1/jobs/retention", get(job_retention).put(set_job_retention))
        .route("/v1/jobs/purge", post(purge_jobs))
        .route("/v1/jobs/{id}", get(show_job))
        .route("/v1/jobs/{id}/results", get(job_results))
        .route("/v1/jobs/{id}/result", get(job_result))
        .route("/v1/jobs/{id}/outputs", get(crate::outputs::job_outputs))
        .route("/v1/jobs/{id}/outputs/{sha256}", get(crate::outputs::output_file))
        .route("/v1/jobs/{id}/logs/{task}", get(crate::outputs::task_log))
        .route("/v1/jobs/{id}/logs/{task}/live", get(crate::outputs::live_log))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/v1/schedules", get(crate::schedules::list).post(crate::schedules::add))
        .route("/v1/schedules/{name}", axum::routing::delete(crate::schedules::remove))
        .route("/v1/schedules/{name}/pause", post(crate::schedules::pause))
        .route("/v1/schedules/{name}/resume", post(crate::schedules::resume))
        .route("/v1/autoscale", get(crate::autoscale::list).post(crate::autoscale::set))
        .route("/v1/autoscale/{pool}", axum::routing::delete(crate::autoscale::remove))
        .route("/v1/autoscale/{pool}/resume", post(crate::autoscale::resume))
        .route("/v1/status", get(status))
        .route("/v1/events", get(events))
        .route("/v1/events/retention", get(retention).put(set_retention))
        .route("/v1/scheduling", get(scheduling).put(set_scheduling))
        .route("/v1/node", get(node))
        .route("/v1/cluster/members", get(cluster_members).post(add_master))
        .route("/v1/cluster/members/{id}", axum::routing::delete(remove_master))
        .route("/v1/cluster/leader", post(transfer_leadership))
        .route("/v1/cluster/stand", post(stand))
        .route("/v1/cluster/read-index", get(read_index))
        .route("/v1/snapshot", get(save_snapshot))
        .route("/v1/workers", get(list_workers))
        .route("/v1/workers/{name}/cordon", post(cordon_worker))
        .route("/v1/workers/{name}/drain", post(drain_worker))
        .route("/v1/workers/{name}/uncordon", post(uncordon_worker))
        .route("/v1/tokens", post(crate::tokens::create).get(crate::tokens::list))
        .route("/v1/tokens/{name}", axum::routing::delete(crate::tokens::revoke))
        .route("/v1/openapi.json", get(crate::openapi::openapi_json))
        .route("/metrics", get(metrics))
        .with_state(master)
        .layer(axum::middleware::from_fn(limit_body))
}

/// The largest request body a master reads: a job's spec is far smaller.
pub const MAX_REQUEST_BODY: usize = 1 << 20;
/// How long a client may take to send a request's body (slow senders hold memory).
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads a request's body whole, refusing one that is too large or too slow with a JSON
/// error, before any handler sees it.
async fn limit_body(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_REQUEST_BODY as u64) {
        return too_large().into_response();
    }
    let (parts, body) = request.into_parts();
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_REQUEST_BODY)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            // A body over the limit, or one the connection broke off.
            let too_big = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            return if too_big { too_large() } else { bad_request(format!("cannot read the request body: {e}")) }
                .into_response();
        }
        Err(_) => {
            return failure(
                ApiErrorCode::Timeout,
                format!("the request body did not arrive within {} s", BODY_TIMEOUT.as_secs()),
            )
            .into_response()
        }
    };
    next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes))).await
}

fn too_large() -> Failure {
    failure(ApiErrorCode::TooLarge, format!("the request body is larger than {} bytes", MAX_REQUEST_BODY))
}

/// A failed request: the JSON error body, answered with its code's HTTP status.
pub struct Failure(pub ApiError);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (status_of(self.0.code), Json(self.0)).into_response()
    }
}

/// The HTTP status of an error code.
pub fn status_of(code: ApiErrorCode) -> StatusCode {
    StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

pub(crate) fn failure(code: ApiErrorCode, error: impl Into<String>) -> Failure {
    Failure(ApiError::new(code, error))
}

pub fn bad_request(error: impl Into<String>) -> Failure {
    failure(ApiErrorCode::BadRequest, error)
}

pub fn not_found(error: impl Into<String>) -> Failure {
    failure(ApiErrorCode::NotFound, error)
}

pub(crate) fn unexpected(response: Applied) -> Failure {
    failure(ApiErrorCode::Internal, format!("unexpected {response:?}"))
}

/// The code a refused command is answered with.
pub fn refusal_code(refusal: &Refusal) -> ApiErrorCode {
    match refusal {
        Refusal::NoJob(_) => ApiErrorCode::NotFound,
        Refusal::JobFinished { .. } | Refusal::NoReadyWorker(_) => ApiErrorCode::Conflict,
        Refusal::WorkerWithoutCpus
        | Refusal::BadSpec(_)
        | Refusal::BadRetention(_)
        | Refusal::BadResourceName(_)
        | Refusal::BadJobRetention(_)
        | Refusal::Dependency(_) => ApiErrorCode::BadRequest,
        Refusal::Schedule(e) => match e {
            flotilla_core::schedule::ScheduleRefusal::Unknown(_) => ApiErrorCode::NotFound,
            flotilla_core::schedule::ScheduleRefusal::Exists(_) | flotilla_core::schedule::ScheduleRefusal::TooMany => {
                ApiErrorCode::Conflict
            }
            flotilla_core::schedule::ScheduleRefusal::BadName
            | flotilla_core::schedule::ScheduleRefusal::Dependencies => ApiErrorCode::BadRequest,
        },
        Refusal::Autoscale(e) => {
            use flotilla_core::autoscale::AutoscaleRefusal as A;
            match e {
                A::Unknown(_) | A::NoLaunch { .. } => ApiErrorCode::NotFound,
                A::TooManyPools | A::Paused { .. } | A::CannotGrow { .. } => ApiErrorCode::Conflict,
                A::BadName
                | A::MinAboveMax { .. }
                | A::TooManyWorkers { .. }
                | A::NoWorkers
                | A::NoCpus
                | A::ZeroDuration
                | A::MissingCommand
                | A::MissingStatefulSet => ApiErrorCode::BadRequest,
            }
        }
        Refusal::Access(e) => match e {
            AccessRefusal::NoToken(_) => ApiErrorCode::NotFound,
            AccessRefusal::BadName(_) => ApiErrorCode::BadRequest,
            AccessRefusal::Exists(_)
            | AccessRefusal::TooMany
            | AccessRefusal::LastAdmin(_)
            | AccessRefusal::BootstrapRevoked => ApiErrorCode::Conflict,
        },
    }
}

pub(crate) fn refused(refusal: Refusal) -> Failure {
    failure(refusal_code(&refusal), refusal.to_string())
}

/// A master's Raft role as the API reports it.
pub(crate) fn from_propose(master: &Master, e: ProposeError) -> Failure {
    match e {
        ProposeError::NotLeader { leader: Some(id) } if id != master.config.id => {
            let address = master.address_of(id);
            Failure(ApiError {
                error: format!("master {} is not the leader; master {id} is", master.config.id),
                code: ApiErrorCode::NotLeader,
                leader: address,
            })
        }
        ProposeError::NotLeader { .. } => {
            failure(ApiErrorCode::NoLeader, "no leader is elected right now; retry shortly")
        }
        ProposeError::Fatal(e) => failure(ApiErrorCode::Unavailable, e),
        ProposeError::Dropped => {
            failure(ApiErrorCode::Unavailable, "leadership changed before the request committed; retry")
        }
        e @ ProposeError::NotUpgraded(_) => failure(ApiErrorCode::Conflict, e.to_string()),
    }
}

fn from_membership(master: &Master, e: crate::membership::MembershipError) -> Failure {
    use crate::membership::MembershipError as E;
    match e {
        E::NotLeader { leader } => from_propose(master, ProposeError::NotLeader { leader }),
        E::Busy => failure(ApiErrorCode::Conflict, e.to_string()),
        E::Invalid(m) => bad_request(m),
        E::Conflict(m) => failure(ApiErrorCode::Conflict, m),
        E::Unavailable(m) => failure(ApiErrorCode::Unavailable, m),
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
pub(crate) async fn read_barrier(master: &Master, q: &HashMap<String, String>) -> Result<bool, Failure> {
    if flag(q, "stale") {
        return Ok(true);
    }
    let refused = match master.raft.ensure_linearizable().await {
        Ok(_) => return Ok(false),
        Err(e) => read_error(e),
    };
    // A follower asks the leader for its read index rather than sending the caller away, so
    // reads work on every master (curl, a browser, a probe).
    if let ProposeError::NotLeader { leader: Some(leader) } = refused {
        if leader != master.config.id && master.follower_read(leader, FOLLOWER_READ_TIMEOUT).await.is_some() {
            return Ok(false);
        }
    }
    Err(from_propose(master, refused))
}

/// How long a follower waits for the leader's read index and for applying up to it.
const FOLLOWER_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// The leader's confirmed commit index, for a follower's linearizable read.
#[utoipa::path(get, path = "/v1/cluster/read-index", tag = "cluster", responses((status = 200, description = "Done", body = flotilla_proto::api::ReadIndex), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError)))]
pub(crate) async fn read_index(State(master): State<Shared>) -> Result<Json<flotilla_proto::api::ReadIndex>, Failure> {
    let read = master.raft.ensure_linearizable().await.map_err(|e| from_propose(&master, read_error(e)))?;
    Ok(Json(flotilla_proto::api::ReadIndex { index: read.map_or(0, |l| l.index) }))
}

#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", request_body(content = SubmitRequest, content_type = "application/json"), responses((status = 200, description = "Done", body = Submitted), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError), (status = 409, description = "Does not fit the current state, or needs every voter upgraded", body = ApiError), (status = 408, description = "The body did not arrive in time", body = ApiError), (status = 413, description = "The body is larger than 1 MiB", body = ApiError)))]
pub(crate) async fn submit(
    State(master): State<Shared>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<Submitted>, Failure> {
    let request: SubmitRequest =
        serde_json::from_slice(&body).map_err(|e| bad_request(format!("invalid job JSON: {e}")))?;
    let spec = request.to_spec().map_err(bad_request)?;
    let options = request.to_options().map_err(bad_request)?;
    let owner = caller.owner().map(str::to_string);
    let command = match (owner, options.is_empty()) {
        (owner, false) => Command::SubmitJobWith { spec, request_id: request.request_id, owner, options },
        (Some(owner), true) => Command::SubmitJobAs { spec, request_id: request.request_id, owner },
        (None, true) => Command::SubmitJob { spec, request_id: request.request_id },
    };
    match master.proposer.propose_one(command).await.map_err(|e| from_propose(&master, e))? {
        Applied::JobSubmitted { job, .. } => Ok(Json(Submitted { id: job })),
        Applied::Invalid { reason } => Err(refused(reason)),
        other => Err(unexpected(other)),
    }
}

#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", params(("id" = u64, Path, description = "The job id")), responses((status = 200, description = "Done", body = Cancelled), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError), (status = 409, description = "Does not fit the current state, or needs every voter upgraded", body = ApiError), (status = 408, description = "The body did not arrive in time", body = ApiError), (status = 413, description = "The body is larger than 1 MiB", body = ApiError), (status = 404, description = "No such job", body = ApiError)))]
pub(crate) async fn cancel_job(
    State(master): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Cancelled>, Failure> {
    let id = job_id(&id)?;
    if caller.role() == TokenRole::Submit {
        // A job's owner is fixed when it is submitted: reading it before proposing is safe.
        let data = master.shared.read();
        if data.state.job(id).is_some() {
            let owner = data.state.access().owner_of(id);
            if owner != caller.owner() {
                let by = owner.map_or("another credential".to_string(), |o| format!("token '{o}'"));
                return Err(failure(
                    ApiErrorCode::Forbidden,
                    format!(
                        "forbidden: token '{}' has role submit, which may cancel only its own jobs; job {id} was \
                         submitted by {by} (cancelling it needs role operator or higher)",
                        caller.name()
                    ),
                ));
            }
        }
    }
    match master.proposer.propose_one(Command::CancelJob { job: id }).await.map_err(|e| from_propose(&master, e))? {
        Applied::JobCancelled { job, kill } => {
            master.sessions.stop_attempts(&kill).await;
            Ok(Json(Cancelled { id: job, stopped: kill.len() }))
        }
        Applied::Invalid { reason: Refusal::NoJob(id) } => Err(missing_job(&master.shared.read().state, id)),
        Applied::Invalid { reason } => Err(refused(reason)),
        other => Err(unexpected(other)),
    }
}

/// Jobs newest first, a page at a time, optionally of one state or name.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(crate::openapi::JobListParams), responses((status = 200, description = "Done", body = JobPage), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError)))]
pub(crate) async fn list_jobs(State(master): State<Shared>, Query(q): Params) -> Result<Json<JobPage>, Failure> {
    let limit = number(&q, "limit", JobQuery::DEFAULT_LIMIT)?;
    if !(1..=JobQuery::MAX_LIMIT).contains(&limit) {
        return Err(bad_request(format!("limit must be between 1 and {}, not {limit}", JobQuery::MAX_LIMIT)));
    }
    // The page token is the id of the last job of the previous page.
    let before = match q.get("before") {
        None => u64::MAX,
        Some(t) => t.parse().map_err(|_| bad_request(format!("'{t}' is not a page token from a previous page")))?,
    };
    let state = match q.get("state") {
        None => None,
        Some(s) => Some(JobState::from_name(s).ok_or_else(|| {
            let names: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
            bad_request(format!("state '{s}' is not one of {}", names.join(", ")))
        })?),
    };
    let name = q.get("name");
    read_barrier(&master, &q).await?;
    let data = master.shared.read();
    let mut matching = data
        .state
        .jobs_before(before)
        .filter(|j| state.is_none_or(|s| JobState::from(j.state) == s))
        .filter(|j| name.is_none_or(|n| j.spec.name.as_ref() == Some(n)));
    let jobs: Vec<JobSummary> = matching.by_ref().take(limit as usize).map(JobSummary::from_job).collect();
    // A next page only if something is left, so the last page says so.
    let next = match (jobs.last(), matching.next()) {
        (Some(last), Some(_)) => Some(last.id.to_string()),
        _ => None,
    };
    Ok(Json(JobPage { jobs, next }))
}

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = u64, Path, description = "The job id"), crate::openapi::ShowJobParams), responses((status = 200, description = "Done", body = JobDetail), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError), (status = 404, description = "No such job, worker, master or token", body = ApiError), (status = 410, description = "The job was removed (retention or purge)", body = ApiError)))]
pub(crate) async fn show_job(
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
            let job = data.state.job(id).ok_or_else(|| missing_job(&data.state, id))?;
            if job.state.is_terminal() || tokio::time::Instant::now() >= deadline {
                return Ok(Json(
                    JobDetail::from_job(job, unschedulable_reason(&data.state, job)).with_extras(&data.state),
                ));
            }
        }
        if tokio::time::timeout_at(deadline, applied.changed()).await.is_ok_and(|r| r.is_err()) {
            // The state machine is gone (shutting down): answer with what there is.
            let data = master.shared.read();
            let job = data.state.job(id).ok_or_else(|| missing_job(&data.state, id))?;
            return Ok(Json(JobDetail::from_job(job, unschedulable_reason(&data.state, job)).with_extras(&data.state)));
        }
    }
}

#[utoipa::path(get, path = "/v1/jobs/{id}/results", tag = "jobs", params(("id" = u64, Path, description = "The job id"), crate::openapi::ResultsParams), responses((status = 200, description = "Done", body = Vec<TaskResultView>), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError), (status = 404, description = "No such job, worker, master or token", body = ApiError), (status = 410, description = "The job was removed (retention or purge)", body = ApiError)))]
pub(crate) async fn job_results(
    State(master): State<Shared>,
    Path(id): Path<String>,
    Query(q): Params,
) -> Result<Json<Vec<TaskResultView>>, Failure> {
    let id = job_id(&id)?;
    let offset = number(&q, "offset", 0)?;
    let limit = number(&q, "limit", u64::MAX)?;
    read_barrier(&master, &q).await?;
    let (job, records) = job_and_records(&master, id)?;
    let records = records.wait_async().await;
    let mut rows = TaskResultView::list(&job, offset, limit, &records).map_err(records_failure)?;
    TaskResultView::note_output_errors(&mut rows, &master.shared.read().state, id);
    Ok(Json(rows))
}

#[utoipa::path(get, path = "/v1/jobs/{id}/result", tag = "jobs", params(("id" = u64, Path, description = "The job id"), crate::openapi::ReadParams), responses((status = 200, description = "Done", body = JobResult), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError), (status = 404, description = "No such job, worker, master or token", body = ApiError), (status = 410, description = "The job was removed (retention or purge)", body = ApiError)))]
pub(crate) async fn job_result(
    State(master): State<Shared>,
    Path(id): Path<String>,
    Query(q): Params,
) -> Result<Json<JobResult>, Failure> {
    let id = job_id(&id)?;
    read_barrier(&master, &q).await?;
    let (job, records) = job_and_records(&master, id)?;
    let records = records.wait_async().await;
    Ok(Json(JobResult::from_job(&job, &records).map_err(records_failure)?))
}

#[utoipa::path(get, path = "/v1/status", tag = "cluster", params(crate::openapi::ReadParams), responses((status = 200, description = "Done", body = Status), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError)))]
pub(crate) async fn status(State(master): State<Shared>, Query(q): Params) -> Result<Json<Status>, Failure> {
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
    let mut warnings = Vec::new();
    while let Some(joined) = asks.join_next().await {
        let Ok((id, address, info)) = joined else { continue };
        let rtt_ms = master.rtt_ms(id);
        masters.push(match info {
            Ok(i) => {
                warnings.extend(slow_peer_warnings(&i));
                MasterStatus {
                    id,
                    address,
                    role: i.role,
                    term: Some(i.term),
                    last_applied: i.last_applied,
                    reachable: true,
                    rtt_ms,
                    labels: i.labels,
                    version: Some(i.version.unwrap_or_else(|| "0.1.0".to_string())),
                }
            }
            Err(_) => MasterStatus {
                id,
                address,
                role: Role::Unknown,
                term: None,
                last_applied: None,
                reachable: false,
                rtt_ms,
                labels: BTreeMap::new(),
                version: None,
            },
        });
    }
    warnings.extend(StatusWarning::zone_majorities(masters.iter().map(|m| (m.id, m.reachable.then_some(&m.labels)))));
    warnings.sort_by_key(warning_key);
    masters.sort_by_key(|m| m.id);
    let seen = master.sessions.last_seen_all();
    let data = master.shared.read();
    let workers = worker_statuses(&seen, &data.state);
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
        warnings,
    }))
}

/// The links a master reports (in its own [`flotilla_proto::api::NodeInfo`]) whose round
/// trip is close to its replication timeout; the same test as its log warning
/// ([`flotilla_raft::rtt::is_slow`]).
pub fn slow_peer_warnings(info: &flotilla_proto::api::NodeInfo) -> Vec<StatusWarning> {
    let Some(timeout_ms) = info.replication_timeout_ms else { return Vec::new() };
    info.peer_rtt_ms
        .iter()
        .filter(|(_, rtt_ms)| flotilla_raft::rtt::is_slow(**rtt_ms, timeout_ms))
        .map(|(to, rtt_ms)| StatusWarning::SlowPeer { from: info.id, to: *to, rtt_ms: *rtt_ms, timeout_ms })
        .collect()
}

/// Orders warnings for display (the fan-out answers in any order).
pub fn warning_key(w: &StatusWarning) -> (u8, u64, u64) {
    match w {
        StatusWarning::SlowPeer { from, to, .. } => (0, *from, *to),
        StatusWarning::ZoneMajority { masters, .. } => (1, masters.first().copied().unwrap_or(0), 0),
    }
}

/// Every worker's status; the time since its last message only on the leader (heartbeats
/// live in the leader's memory). `seen` comes from [`crate::sessions::Sessions::last_seen_all`],
/// taken before the state's lock.
pub fn worker_statuses(
    seen: &HashMap<std::sync::Arc<str>, std::time::Instant>,
    state: &flotilla_core::state::ClusterState,
) -> Vec<WorkerStatus> {
    let now = now_ms();
    state
        .workers()
        .map(|w| {
            let ago = seen.get(w.name.as_str()).map(|t| now.saturating_sub(t.elapsed().as_millis() as u64));
            WorkerStatus::from_worker(w, ago, now)
        })
        .collect()
}

#[utoipa::path(get, path = "/v1/events", tag = "events", params(crate::openapi::EventsParams), responses((status = 200, description = "Done", body = Events), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError)))]
pub(crate) async fn events(State(master): State<Shared>, Query(q): Params) -> Result<Json<Events>, Failure> {
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

#[utoipa::path(get, path = "/v1/events/retention", tag = "events", params(crate::openapi::ReadParams), responses((status = 200, description = "Done", body = RetentionView), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError)))]
pub(crate) async fn retention(State(master): State<Shared>, Query(q): Params) -> Result<Json<RetentionView>, Failure> {
    read_barrier(&master, &q).await?;
    Ok(Json(RetentionView::from_journal(master.shared.read().state.journal())))
}

#[utoipa::path(put, path = "/v1/events/retention", tag = "events", request_body(content = flotilla_core::journal::Retention, content_type = "application/json"), responses((status = 200, description = "Done", body = RetentionView), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError), (status = 409, description = "Does not fit the current state, or needs every voter upgraded", body = ApiError), (status = 408, description = "The body did not arrive in time", body = ApiError), (status = 413, description = "The body is larger than 1 MiB", body = ApiError)))]
pub(crate) async fn set_retention(State(master): State<Shared>, body: Bytes) -> Result<Json<RetentionView>, Failure> {
    let retention: flotilla_core::journal::Retention = serde_json::from_slice(&body)
        .map_err(|e| bad_request(format!("invalid retention JSON (want max_events, max_age_ms): {e}")))?;
    retention.validate().map_err(|e| refused(Refusal::BadRetention(e)))?;
    let command = Command::SetJournalRetention(retention);
    match master.proposer.propose_one(command).await.map_err(|e| from_propose(&master, e))? {
        Applied::Noted => Ok(Json(RetentionView::from_journal(master.shared.read().state.journal()))),
        Applied::Invalid { reason } => Err(refused(reason)),
        other => Err(unexpected(other)),
    }
}

#[utoipa::path(get, path = "/v1/jobs/retention", tag = "jobs", params(crate::openapi::ReadParams), responses((status = 200, description = "Done", body = JobRetentionView), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError)))]
pub(crate) async fn job_retention(
    State(master): State<Shared>,
    Query(q): Params,
) -> Result<Json<JobRetentionView>, Failure> {
    read_barrier(&master, &q).await?;
    Ok(Json(JobRetentionView::from_state(&master.shared.read().state)))
}

#[utoipa::path(put, path = "/v1/jobs/retention", tag = "jobs", request_body(content = JobRetention, content_type = "application/json"), responses((status = 200, description = "Done", body = JobRetentionView), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError), (status = 409, description = "Does not fit the current state, or needs every voter upgraded", body = ApiError), (status = 408, description = "The body did not arrive in time", body = ApiError), (status = 413, description = "The body is larger than 1 MiB", body = ApiError)))]
pub(crate) async fn set_job_retention(
    State(master): State<Shared>,
    body: Bytes,
) -> Result<Json<JobRetentionView>, Failure> {
    let retention: JobRetention = serde_json::from_slice(&body)
        .map_err(|e| bad_request(format!("invalid retention JSON (want max_age_ms, max_finished): {e}")))?;
    retention.validate().map_err(|e| refused(Refusal::BadJobRetention(e)))?;
    match master
        .proposer
        .propose_one(Command::SetJobRetention(retention))
        .await
        .map_err(|e| from_propose(&master, e))?
    {
        Applied::Noted => Ok(Json(JobRetentionView::from_state(&master.shared.read().state))),
        Applied::Invalid { reason } => Err(refused(reason)),
        other => Err(unexpected(other)),
    }
}

/// Removes finished jobs now. Retrying is safe: a job removed already is reported as such.
#[utoipa::path(post, path = "/v1/jobs/purge", tag = "jobs", request_body(content = PurgeRequest, content_type = "application/json"), responses((status = 200, description = "Done", body = PurgeOutcome), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError), (status = 409, description = "Does not fit the current state, or needs every voter upgraded", body = ApiError), (status = 408, description = "The body did not arrive in time", body = ApiError), (status = 413, description = "The body is larger than 1 MiB", body = ApiError)))]
pub(crate) async fn purge_jobs(State(master): State<Shared>, body: Bytes) -> Result<Json<PurgeOutcome>, Failure> {
    let request: PurgeRequest = serde_json::from_slice(&body)
        .map_err(|e| bad_request(format!("invalid purge JSON (want {{\"jobs\": [ids]}}): {e}")))?;
    if request.jobs.is_empty() {
        return Err(bad_request("no job ids given"));
    }
    if request.jobs.len() > 10_000 {
        return Err(bad_request("at most 10,000 jobs per purge"));
    }
    match master
        .proposer
        .propose_one(Command::PurgeJobs { jobs: request.jobs })
        .await
        .map_err(|e| from_propose(&master, e))?
    {
        Applied::JobsPurged(outcome) => Ok(Json(outcome)),
        other => Err(unexpected(other)),
    }
}

/// The answer for a job id the state does not hold: removed (410, with when and why) or never
/// known (404).
/// A job as this replica holds it, and its stored records as of the same applied entry (the
/// job is copied so that the state's lock is not held while the records are read).
pub fn job_and_records(
    master: &Master,
    id: u64,
) -> Result<(flotilla_core::state::Job, flotilla_raft::state_store::Ticket), Failure> {
    let data = master.shared.read();
    let job = data.state.job(id).ok_or_else(|| missing_job(&data.state, id))?;
    Ok((job.clone(), master.shared.records()))
}

/// The stored task records could not be read: the disk, not the request.
pub fn records_failure(e: flotilla_core::records::RecordError) -> Failure {
    tracing::error!(error = %e, "cannot read task records");
    failure(ApiErrorCode::Internal, e.to_string())
}

pub fn missing_job(state: &flotilla_core::state::ClusterState, id: u64) -> Failure {
    match state.job_presence(id) {
        JobPresence::Removed(removal) => failure(ApiErrorCode::Gone, removed_message(id, removal)),
        _ => not_found(format!("no job {id}")),
    }
}

#[utoipa::path(get, path = "/v1/scheduling", tag = "cluster", params(crate::openapi::ReadParams), responses((status = 200, description = "Done", body = flotilla_proto::api::Scheduling), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError)))]
pub(crate) async fn scheduling(
    State(master): State<Shared>,
    Query(q): Params,
) -> Result<Json<flotilla_proto::api::Scheduling>, Failure> {
    read_barrier(&master, &q).await?;
    Ok(Json(flotilla_proto::api::Scheduling { sharing: master.shared.read().state.sharing() }))
}

#[utoipa::path(put, path = "/v1/scheduling", tag = "cluster", request_body(content = flotilla_proto::api::Scheduling, content_type = "application/json"), responses((status = 200, description = "Done", body = flotilla_proto::api::Scheduling), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError), (status = 409, description = "Does not fit the current state, or needs every voter upgraded", body = ApiError), (status = 408, description = "The body did not arrive in time", body = ApiError), (status = 413, description = "The body is larger than 1 MiB", body = ApiError)))]
pub(crate) async fn set_scheduling(
    State(master): State<Shared>,
    body: Bytes,
) -> Result<Json<flotilla_proto::api::Scheduling>, Failure> {
    let wanted: flotilla_proto::api::Scheduling = serde_json::from_slice(&body).map_err(|e| {
        bad_request(format!("invalid scheduling JSON (want {{\"sharing\": \"fair\" or \"fifo\"}}): {e}"))
    })?;
    match master
        .proposer
        .propose_one(Command::SetSharing(wanted.sharing))
        .await
        .map_err(|e| from_propose(&master, e))?
    {
        Applied::Noted => Ok(Json(flotilla_proto::api::Scheduling { sharing: master.shared.read().state.sharing() })),
        Applied::Invalid { reason } => Err(refused(reason)),
        other => Err(unexpected(other)),
    }
}

/// Prometheus text exposition (see `metrics`). Served by every master, leader or not.
#[utoipa::path(get, path = "/metrics", tag = "meta", responses((status = 200, description = "Prometheus metrics", content_type = "text/plain"), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError)))]
pub(crate) async fn metrics(State(master): State<Shared>) -> Response {
    let raft = master.raft.metrics().borrow().clone();
    let peer_rtts = master.rtts.smoothed();
    let body = {
        let data = master.shared.read();
        master.metrics.render(&crate::metrics::Scrape {
            raft: &raft,
            log_bytes: master.log_bytes.load(std::sync::atomic::Ordering::Relaxed),
            state: &data.state,
            heartbeat: master.config.heartbeat_interval(),
            peer_rtts: &peer_rtts,
            replication_timeout: master.rtts.bounds().ceiling,
            snapshots: &master.shared.snapshots,
            store_bytes: master.shared.store_bytes(),
        })
    };
    ([(axum::http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response()
}

#[utoipa::path(get, path = "/v1/node", tag = "cluster", responses((status = 200, description = "Done", body = flotilla_proto::api::NodeInfo), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError)))]
pub(crate) async fn node(State(master): State<Shared>) -> Json<flotilla_proto::api::NodeInfo> {
    Json(master.node_info())
}

#[utoipa::path(get, path = "/v1/cluster/members", tag = "cluster", responses((status = 200, description = "Done", body = Vec<MemberView>), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError)))]
pub(crate) async fn cluster_members(State(master): State<Shared>) -> Json<Vec<MemberView>> {
    Json(crate::membership::members(&master))
}

#[utoipa::path(post, path = "/v1/cluster/members", tag = "cluster", request_body(content = AddMaster, content_type = "application/json"), responses((status = 200, description = "Done", body = Vec<MemberView>), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError), (status = 409, description = "Does not fit the current state, or needs every voter upgraded", body = ApiError), (status = 408, description = "The body did not arrive in time", body = ApiError), (status = 413, description = "The body is larger than 1 MiB", body = ApiError)))]
pub(crate) async fn add_master(State(master): State<Shared>, body: Bytes) -> Result<Json<Vec<MemberView>>, Failure> {
    let request: AddMaster =
        serde_json::from_slice(&body).map_err(|e| bad_request(format!("bad add-master request: {e}")))?;
    crate::membership::add(&master, request.id, request.address)
        .await
        .map(Json)
        .map_err(|e| from_membership(&master, e))
}

#[utoipa::path(delete, path = "/v1/cluster/members/{id}", tag = "cluster", params(("id" = u64, Path, description = "The master's id")), responses((status = 200, description = "Done", body = Vec<MemberView>), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError), (status = 409, description = "Does not fit the current state, or needs every voter upgraded", body = ApiError), (status = 408, description = "The body did not arrive in time", body = ApiError), (status = 413, description = "The body is larger than 1 MiB", body = ApiError)))]
pub(crate) async fn remove_master(
    State(master): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<Vec<MemberView>>, Failure> {
    let id: u64 = id.parse().map_err(|_| bad_request(format!("master id must be a number, not '{id}'")))?;
    crate::membership::remove(&master, id).await.map(Json).map_err(|e| from_membership(&master, e))
}

#[utoipa::path(post, path = "/v1/cluster/leader", tag = "cluster", request_body(content = TransferLeadership, content_type = "application/json"), responses((status = 200, description = "Done", body = LeadershipMoved), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError), (status = 409, description = "Does not fit the current state, or needs every voter upgraded", body = ApiError), (status = 408, description = "The body did not arrive in time", body = ApiError), (status = 413, description = "The body is larger than 1 MiB", body = ApiError)))]
pub(crate) async fn transfer_leadership(
    State(master): State<Shared>,
    body: Bytes,
) -> Result<Json<LeadershipMoved>, Failure> {
    let request: TransferLeadership = if body.is_empty() {
        TransferLeadership::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| bad_request(format!("bad transfer request: {e}")))?
    };
    crate::membership::transfer(&master, request.to).await.map(Json).map_err(|e| from_membership(&master, e))
}

/// The last step of a leadership transfer, asked of the chosen follower by the leader.
#[utoipa::path(post, path = "/v1/cluster/stand", tag = "cluster", params(crate::openapi::StandParams), responses((status = 200, description = "Done", body = flotilla_proto::api::NodeInfo), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError), (status = 409, description = "Does not fit the current state, or needs every voter upgraded", body = ApiError), (status = 408, description = "The body did not arrive in time", body = ApiError), (status = 413, description = "The body is larger than 1 MiB", body = ApiError)))]
pub(crate) async fn stand(
    State(master): State<Shared>,
    Query(q): Params,
) -> Result<Json<flotilla_proto::api::NodeInfo>, Failure> {
    let asked_by = q.get("leader").and_then(|l| l.parse().ok());
    crate::membership::stand(&master, asked_by).await.map_err(|e| from_membership(&master, e))?;
    Ok(Json(master.node_info()))
}

#[utoipa::path(get, path = "/v1/workers", tag = "workers", params(crate::openapi::ReadParams), responses((status = 200, description = "Done", body = Vec<flotilla_proto::api::WorkerView>), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError)))]
pub(crate) async fn list_workers(
    State(master): State<Shared>,
    Query(q): Params,
) -> Result<Json<Vec<flotilla_proto::api::WorkerView>>, Failure> {
    read_barrier(&master, &q).await?;
    // Leader memory, taken before the state's lock (the sessions' lock comes first).
    let versions = master.sessions.worker_versions();
    let seen = master.sessions.last_seen_all();
    let data = master.shared.read();
    Ok(Json(
        data.state
            .workers()
            .map(|w| {
                let mut view = flotilla_proto::api::WorkerView::of(&data.state, w);
                let connected = seen.contains_key(w.name.as_str());
                view.version = versions.get(w.name.as_str()).cloned().or_else(|| {
                    (connected && w.state == flotilla_core::state::WorkerState::Ready).then(|| "0.1.0".into())
                });
                view
            })
            .collect(),
    ))
}

/// Commits a maintenance change and answers the worker as it is after it.
async fn maintain(
    master: &Master,
    name: String,
    change: flotilla_core::state::MaintenanceChange,
) -> Result<Json<flotilla_proto::api::WorkerView>, Failure> {
    if master.shared.read().state.worker(&name).is_none() {
        return Err(not_found(format!("no worker named {name}")));
    }
    let command = Command::SetMaintenance { worker: name.clone(), change };
    match master.proposer.propose_one(command).await.map_err(|e| from_propose(master, e))? {
        Applied::Noted => {}
        Applied::Invalid { reason } => {
            return Err(failure(ApiErrorCode::Conflict, format!("{reason} (a lost worker cannot be changed)")))
        }
        other => return Err(unexpected(other)),
    }
    let data = master.shared.read();
    let worker = data.state.worker(&name).ok_or_else(|| not_found(format!("no worker named {name}")))?;
    Ok(Json(flotilla_proto::api::WorkerView::of(&data.state, worker)))
}

#[utoipa::path(post, path = "/v1/workers/{name}/cordon", tag = "workers", params(("name" = String, Path, description = "The worker's name")), responses((status = 200, description = "Done", body = flotilla_proto::api::WorkerView), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError), (status = 409, description = "Does not fit the current state, or needs every voter upgraded", body = ApiError), (status = 408, description = "The body did not arrive in time", body = ApiError), (status = 413, description = "The body is larger than 1 MiB", body = ApiError), (status = 404, description = "No such worker", body = ApiError)))]
pub(crate) async fn cordon_worker(
    State(master): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<flotilla_proto::api::WorkerView>, Failure> {
    maintain(&master, name, flotilla_core::state::MaintenanceChange::Cordon).await
}

#[utoipa::path(post, path = "/v1/workers/{name}/uncordon", tag = "workers", params(("name" = String, Path, description = "The worker's name")), responses((status = 200, description = "Done", body = flotilla_proto::api::WorkerView), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError), (status = 409, description = "Does not fit the current state, or needs every voter upgraded", body = ApiError), (status = 408, description = "The body did not arrive in time", body = ApiError), (status = 413, description = "The body is larger than 1 MiB", body = ApiError), (status = 404, description = "No such worker", body = ApiError)))]
pub(crate) async fn uncordon_worker(
    State(master): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<flotilla_proto::api::WorkerView>, Failure> {
    maintain(&master, name, flotilla_core::state::MaintenanceChange::Uncordon).await
}

#[utoipa::path(post, path = "/v1/workers/{name}/drain", tag = "workers", params(("name" = String, Path, description = "The worker's name")), request_body(content = flotilla_proto::api::DrainRequest, content_type = "application/json"), responses((status = 200, description = "Done", body = flotilla_proto::api::WorkerView), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError), (status = 409, description = "Does not fit the current state, or needs every voter upgraded", body = ApiError), (status = 408, description = "The body did not arrive in time", body = ApiError), (status = 413, description = "The body is larger than 1 MiB", body = ApiError), (status = 404, description = "No such worker", body = ApiError)))]
pub(crate) async fn drain_worker(
    State(master): State<Shared>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<flotilla_proto::api::WorkerView>, Failure> {
    let request: flotilla_proto::api::DrainRequest = if body.is_empty() {
        Default::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| bad_request(format!("bad drain request: {e}")))?
    };
    let change = flotilla_core::state::MaintenanceChange::Drain { deadline_ms: request.deadline_ms, by_worker: false };
    maintain(&master, name, change).await
}

/// A backup of the state, taken by the leader after a linearizable barrier: everything
/// acknowledged before the request is in it. Streamed from a file that is unlinked at once
/// (its space is freed when the answer is sent).
#[utoipa::path(get, path = "/v1/snapshot", tag = "cluster", responses((status = 200, description = "A backup of the state (restore it with `flotilla snapshot restore`)", content_type = "application/octet-stream"), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError)))]
pub(crate) async fn save_snapshot(State(master): State<Shared>) -> Result<Response, Failure> {
    read_barrier(&master, &HashMap::new()).await?;
    let path = master.config.data_dir.join(format!("backup-{}.tmp", now_ms()));
    let info = flotilla_raft::backup::export(&master.shared, &path)
        .await
        .map_err(|e| failure(ApiErrorCode::Unavailable, format!("cannot write the backup: {e}")))?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| failure(ApiErrorCode::Unavailable, format!("cannot read the backup: {e}")))?;
    let _ = std::fs::remove_file(&path);
    tracing::info!(index = info.index, bytes = info.bytes, sha256 = %info.sha256, "backup sent");
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20));
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (axum::http::header::CONTENT_LENGTH, info.bytes.to_string()),
        ],
        body,
    )
        .into_response())
}

pub async fn fallback() -> Failure {
    not_found("no such endpoint (the API lives under /v1/)")
}

#[cfg(test)]
mod tests {
    use flotilla_core::journal::RetentionError;
    use flotilla_core::model::SpecError;
    use flotilla_core::state::JobState;

    use super::*;

    #[test]
    fn refusals_map_to_the_codes_and_statuses_answered_before() {
        let cases = [
            // cancel: an unknown job is 404, a finished one 409.
            (Refusal::NoJob(7), ApiErrorCode::NotFound, 404),
            (Refusal::JobFinished { job: 7, state: JobState::Succeeded }, ApiErrorCode::Conflict, 409),
            (Refusal::NoReadyWorker("a".into()), ApiErrorCode::Conflict, 409),
            (Refusal::WorkerWithoutCpus, ApiErrorCode::BadRequest, 400),
            // submit and retention: refused as bad requests.
            (Refusal::BadSpec(SpecError::NoCommand), ApiErrorCode::BadRequest, 400),
            (Refusal::BadRetention(RetentionError::AgeTooShort), ApiErrorCode::BadRequest, 400),
        ];
        for (refusal, code, status) in cases {
            assert_eq!(refusal_code(&refusal), code, "{refusal:?}");
            let text = refusal.to_string();
            let Failure(body) = refused(refusal);
            assert_eq!((body.code, body.error.as_str(), body.leader), (code, text.as_str(), None));
            assert_eq!(status_of(body.code).as_u16(), status);
        }
    }

    #[test]
    fn every_code_has_a_valid_status() {
        for code in ApiErrorCode::ALL {
            assert_eq!(status_of(code).as_u16(), code.http_status(), "{code}");
        }
        assert_eq!(status_of(ApiErrorCode::NotLeader), StatusCode::MISDIRECTED_REQUEST);
        assert_eq!(status_of(ApiErrorCode::NoLeader), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(status_of(ApiErrorCode::Unauthorized), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn links_near_the_replication_timeout_are_warned_about() {
        let info = flotilla_proto::api::NodeInfo {
            id: 2,
            address: "h:2".into(),
            role: Role::Follower,
            term: 1,
            leader: Some(1),
            leader_address: None,
            last_applied: None,
            last_log_index: None,
            last_assignment_term: 0,
            log_bytes_written: 0,
            peer_rtt_ms: [(1, 110.0), (3, 160.0)].into_iter().collect(),
            replication_timeout_ms: Some(250.0),
            labels: BTreeMap::new(),
            cluster: None,
            version: None,
        };
        assert_eq!(
            slow_peer_warnings(&info),
            vec![StatusWarning::SlowPeer { from: 2, to: 3, rtt_ms: 160.0, timeout_ms: 250.0 }],
            "110 ms is under 60% of 250 ms; 160 ms is over"
        );
        let older = flotilla_proto::api::NodeInfo { replication_timeout_ms: None, ..info };
        assert!(slow_peer_warnings(&older).is_empty(), "a master that reports no timeout is not judged");
    }

    #[test]
    fn raft_roles_keep_their_names() {
        use openraft::ServerState as S;
        let names: Vec<&str> = [S::Leader, S::Follower, S::Candidate, S::Learner, S::Shutdown]
            .iter()
            .map(|s| flotilla_raft::role(s).as_str())
            .collect();
        assert_eq!(names, ["leader", "follower", "candidate", "learner", "shutdown"]);
    }
}
