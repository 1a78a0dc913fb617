//! Task outputs as clients see them: the list a job's tasks left (`GET /v1/jobs/{id}/outputs`)
//! and one file's bytes (`GET /v1/jobs/{id}/outputs/{sha256}`), read from a worker holding a
//! copy. The bytes never pass through the Raft log; this master relays them, checking the hash
//! as they pass, and tries the next holder when one does not answer.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;

use flotilla_core::workflow::Digest;
use flotilla_proto::api::{serves_now, ApiError, ApiErrorCode, JobOutputs, LiveLog};

use crate::api::{bad_request, failure, missing_job, not_found, read_barrier, Failure, Params};
use crate::node::Master;

/// The header naming the worker a file's bytes came from.
pub const HOLDER_HEADER: &str = "x-flotilla-holder";

fn job_id(raw: &str) -> Result<u64, Failure> {
    raw.parse().map_err(|_| bad_request(format!("job id must be a number, not '{raw}'")))
}

#[utoipa::path(get, path = "/v1/jobs/{id}/outputs", tag = "jobs", params(("id" = u64, Path, description = "The job id"), crate::openapi::ReadParams), responses((status = 200, description = "Done", body = JobOutputs), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError), (status = 404, description = "No such job, worker, master or token", body = ApiError), (status = 410, description = "The job was removed (retention or purge)", body = ApiError)))]
pub(crate) async fn job_outputs(
    State(master): State<Arc<Master>>,
    Path(id): Path<String>,
    Query(q): Params,
) -> Result<Json<JobOutputs>, Failure> {
    let id = job_id(&id)?;
    read_barrier(&master, &q).await?;
    let data = master.shared.read();
    data.state.job(id).ok_or_else(|| missing_job(&data.state, id))?;
    Ok(Json(JobOutputs::of(&data.state, id)))
}

#[utoipa::path(get, path = "/v1/jobs/{id}/outputs/{sha256}", tag = "jobs", params(("id" = u64, Path, description = "The job id"), ("sha256" = String, Path, description = "The file's SHA-256, as the outputs list gives it"), crate::openapi::OutputParams), responses((status = 200, description = "The file's bytes (checked against the hash as they pass: a corrupt copy ends the body early)", content_type = "application/octet-stream"), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or no worker holding a copy answered", body = ApiError), (status = 404, description = "No such job, or the job left no such file", body = ApiError), (status = 410, description = "The job was removed (retention or purge)", body = ApiError)))]
pub(crate) async fn output_file(
    State(master): State<Arc<Master>>,
    Path((id, sha256)): Path<(String, String)>,
    Query(q): Params,
) -> Result<Response, Failure> {
    let id = job_id(&id)?;
    let digest = Digest::parse(&sha256)
        .ok_or_else(|| bad_request(format!("'{sha256}' is not a SHA-256 (64 hexadecimal digits)")))?;
    let attempt = match q.get("attempt") {
        Some(a) => a.parse::<u32>().map_err(|_| bad_request(format!("attempt must be a number, not '{a}'")))?,
        None => 0,
    };
    read_barrier(&master, &q).await?;
    // The workers to read from, in service now, in the order they got it; a later attempt
    // starts further down the list (`job fetch` asks again after a copy failed its check).
    let (size, sources) = {
        let data = master.shared.read();
        let state = &data.state;
        state.job(id).ok_or_else(|| missing_job(state, id))?;
        let mut found = None;
        for (_, outputs) in state.job_outputs(id) {
            if let Some(file) = outputs.files.iter().find(|f| f.sha256 == digest) {
                let entry = found.get_or_insert((file.size, Vec::new()));
                for holder in &outputs.holders {
                    if serves_now(state, holder) && !entry.1.iter().any(|(h, _)| h == holder) {
                        let address = state.endpoint(holder).unwrap_or_default().to_string();
                        entry.1.push((holder.clone(), address));
                    }
                }
            }
        }
        let (size, mut sources) =
            found.ok_or_else(|| not_found(format!("job {id} left no file with sha256 {sha256}")))?;
        if !sources.is_empty() {
            let len = sources.len();
            sources.rotate_left(attempt as usize % len);
        }
        (size, sources)
    };
    let mut tried = Vec::new();
    for (holder, address) in sources {
        match master.blobs.stream(&address, digest, size).await {
            Ok(stream) => {
                let body = axum::body::Body::from_stream(stream);
                return Ok((
                    [
                        (axum::http::header::CONTENT_TYPE, "application/octet-stream".to_string()),
                        (axum::http::header::CONTENT_LENGTH, size.to_string()),
                        (axum::http::HeaderName::from_static(HOLDER_HEADER), holder),
                    ],
                    body,
                )
                    .into_response());
            }
            Err(e) => {
                tracing::warn!(job = id, %holder, error = %e, "an output holder did not serve");
                tried.push(format!("{holder}: {e}"));
            }
        }
    }
    let why = if tried.is_empty() { "no worker holding a copy is in service".to_string() } else { tried.join("; ") };
    Err(failure(ApiErrorCode::Unavailable, format!("cannot read {sha256} of job {id}: {why}")))
}

/// The task and stream a log request names.
fn log_target(
    id: &str,
    task: &str,
    q: &std::collections::HashMap<String, String>,
) -> Result<(flotilla_core::model::TaskId, flotilla_core::workflow::LogStream), Failure> {
    use flotilla_core::workflow::LogStream;
    let job = job_id(id)?;
    let slot = match task {
        "reduce" => flotilla_core::model::TaskSlot::Reduce,
        i => flotilla_core::model::TaskSlot::Array(
            i.parse().map_err(|_| bad_request(format!("task must be an index or 'reduce', not '{i}'")))?,
        ),
    };
    let stream = match q.get("stream").map(String::as_str) {
        None | Some("stdout") => LogStream::Stdout,
        Some("stderr") => LogStream::Stderr,
        Some(other) => return Err(bad_request(format!("stream must be stdout or stderr, not '{other}'"))),
    };
    Ok((flotilla_core::model::TaskId { job, slot }, stream))
}

#[utoipa::path(get, path = "/v1/jobs/{id}/logs/{task}/live", tag = "jobs", params(("id" = u64, Path, description = "The job id"), ("task" = String, Path, description = "The task's index, or `reduce`"), crate::openapi::LiveLogParams), responses((status = 200, description = "The running attempt's stream from the offset, as its worker has it so far (`running` false when no attempt is in flight)", body = LiveLog), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 503, description = "The worker running it did not answer", body = ApiError), (status = 404, description = "No such job or task", body = ApiError), (status = 410, description = "The job was removed (retention or purge)", body = ApiError)))]
pub(crate) async fn live_log(
    State(master): State<Arc<Master>>,
    Path((id, task)): Path<(String, String)>,
    Query(q): Params,
) -> Result<Json<LiveLog>, Failure> {
    let (task, stream) = log_target(&id, &task, &q)?;
    let offset = match q.get("offset").map(|o| o.parse::<u64>()) {
        None => 0,
        Some(Ok(o)) => o,
        Some(Err(_)) => return Err(bad_request("offset must be a byte count")),
    };
    // This master's replica says where the attempt runs: a stale answer costs one poll.
    let (worker, fence, address) = {
        let data = master.shared.read();
        let state = &data.state;
        let job = state.job(task.job).ok_or_else(|| missing_job(state, task.job))?;
        if let flotilla_core::model::TaskSlot::Array(i) = task.slot {
            if !job.spec.has_index(i) {
                return Err(not_found(format!("job {} has no task {i}", task.job)));
            }
        }
        let Some((worker, fence)) = job.task(task.slot).and_then(|t| t.state.in_flight()) else {
            return Ok(Json(LiveLog { running: false, next_offset: offset, ..Default::default() }));
        };
        (worker.to_string(), fence, state.endpoint(worker).map(str::to_string))
    };
    let attempt = format!("{}.{}", fence.term, fence.attempt);
    let waiting = LiveLog {
        running: true,
        attempt: Some(attempt.clone()),
        worker: Some(worker.clone()),
        next_offset: offset,
        ..Default::default()
    };
    let Some(address) = address else { return Ok(Json(waiting)) };
    match master.blobs.live(&address, task, stream, offset).await {
        // Another attempt than the state's (an older replica): it is the one running there.
        Ok(read) => {
            let (text, next_offset) = LiveLog::text_of(&read.bytes, offset);
            Ok(Json(LiveLog {
                running: true,
                attempt: Some(read.attempt),
                worker: Some(worker),
                text,
                next_offset,
                total: read.total,
            }))
        }
        // Not started there yet, or just ended: nothing to show this time.
        Err(flotilla_blobs::TransferError::NotHeld { .. }) => Ok(Json(waiting)),
        Err(e) => Err(failure(ApiErrorCode::Unavailable, format!("cannot read the log from worker {worker}: {e}"))),
    }
}

#[utoipa::path(get, path = "/v1/jobs/{id}/logs/{task}", tag = "jobs", params(("id" = u64, Path, description = "The job id"), ("task" = String, Path, description = "The task's index, or `reduce`"), crate::openapi::LogParams), responses((status = 200, description = "The whole stream of the task's latest recorded attempt (checked against its hash as it passes)", content_type = "text/plain"), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the worker holding the log did not answer", body = ApiError), (status = 404, description = "No such job, or the stream was not longer than the result keeps (it is in the results)", body = ApiError), (status = 410, description = "The job was removed (retention or purge)", body = ApiError)))]
pub(crate) async fn task_log(
    State(master): State<Arc<Master>>,
    Path((id, task)): Path<(String, String)>,
    Query(q): Params,
) -> Result<Response, Failure> {
    let (target, stream) = log_target(&id, &task, &q)?;
    let (id, slot) = (target.job, target.slot);
    read_barrier(&master, &q).await?;
    let (file, holder, address) = {
        let data = master.shared.read();
        let state = &data.state;
        state.job(id).ok_or_else(|| missing_job(state, id))?;
        let task = flotilla_core::model::TaskId { job: id, slot };
        let logs = state.task_logs(task);
        let file = logs.and_then(|l| l.files.iter().find(|f| f.stream == stream).cloned()).ok_or_else(|| {
            not_found(format!(
                "task {task}'s {} was not longer than a result keeps (64 KiB): `flotilla job results {id}` shows it",
                stream.name()
            ))
        })?;
        let holder = logs.map(|l| l.holder.clone()).unwrap_or_default();
        if !serves_now(state, &holder) {
            return Err(failure(
                ApiErrorCode::Unavailable,
                format!("worker {holder}, which keeps task {task}'s whole {}, is not in service", stream.name()),
            ));
        }
        (file, holder.clone(), state.endpoint(&holder).unwrap_or_default().to_string())
    };
    match master.blobs.stream(&address, file.sha256, file.size).await {
        Ok(stream) => Ok((
            [
                (axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8".to_string()),
                (axum::http::header::CONTENT_LENGTH, file.size.to_string()),
                (axum::http::HeaderName::from_static(HOLDER_HEADER), holder),
            ],
            axum::body::Body::from_stream(stream),
        )
            .into_response()),
        Err(e) => Err(failure(ApiErrorCode::Unavailable, format!("cannot read the log from worker {holder}: {e}"))),
    }
}
