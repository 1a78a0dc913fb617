//! Periodic jobs: the API (`/v1/schedules`) and the leader's duty of launching each period
//! (see `flotilla_core::schedule` for what is replicated and why a period launches once).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::{Extension, Json};

use flotilla_core::schedule::{Schedule, Timing};
use flotilla_core::{Command, Response as Applied};
use flotilla_proto::api::{ApiError, ScheduleRequest, ScheduleView, Schedules};
use flotilla_proto::time::now_ms;

use crate::api::{bad_request, failure, from_propose, read_barrier, refused, unexpected, Failure, Params};
use crate::auth::Caller;
use crate::node::{Leadership, Master};

#[utoipa::path(get, path = "/v1/schedules", tag = "schedules", params(crate::openapi::ReadParams), responses((status = 200, description = "Done", body = Schedules), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError)))]
pub(crate) async fn list(State(master): State<Arc<Master>>, Query(q): Params) -> Result<Json<Schedules>, Failure> {
    read_barrier(&master, &q).await?;
    let data = master.shared.read();
    let now = now_ms();
    let schedules = data.state.schedules().iter().map(|(name, s)| ScheduleView::new(name, s, now)).collect();
    Ok(Json(Schedules { schedules }))
}

fn view(master: &Master, name: &str) -> Result<Json<ScheduleView>, Failure> {
    let data = master.shared.read();
    let schedule = data.state.schedules().get(name).ok_or_else(|| missing(name))?;
    Ok(Json(ScheduleView::new(name, schedule, now_ms())))
}

fn missing(name: &str) -> Failure {
    failure(flotilla_proto::api::ApiErrorCode::NotFound, format!("no schedule named '{name}'"))
}

#[utoipa::path(post, path = "/v1/schedules", tag = "schedules", request_body = ScheduleRequest, responses((status = 200, description = "Added", body = ScheduleView), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError), (status = 409, description = "The name is taken, or every voter must be upgraded first", body = ApiError), (status = 408, description = "The body did not arrive in time", body = ApiError), (status = 413, description = "The body is larger than 1 MiB", body = ApiError)))]
pub(crate) async fn add(
    State(master): State<Arc<Master>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<ScheduleView>, Failure> {
    let request: ScheduleRequest =
        serde_json::from_slice(&body).map_err(|e| bad_request(format!("invalid schedule JSON: {e}")))?;
    let timezone = request.timezone.clone().unwrap_or_else(|| "UTC".to_string());
    Timing::parse(&request.cron, &timezone).map_err(bad_request)?;
    let spec = request.job.to_spec().map_err(bad_request)?;
    let options = request.job.to_options().map_err(bad_request)?;
    let schedule = Schedule::new(
        request.cron.trim(),
        &timezone,
        request.overlap.into(),
        spec,
        options,
        caller.owner().map(str::to_string),
    );
    let command = Command::AddSchedule { name: request.name.clone(), schedule: Box::new(schedule) };
    match master.proposer.propose_one(command).await.map_err(|e| from_propose(&master, e))? {
        Applied::Noted => view(&master, &request.name),
        Applied::Invalid { reason } => Err(refused(reason)),
        other => Err(unexpected(other)),
    }
}

async fn change(master: &Master, name: &str, command: Command) -> Result<(), Failure> {
    match master.proposer.propose_one(command).await.map_err(|e| from_propose(master, e))? {
        Applied::Noted => Ok(()),
        Applied::Invalid { reason } => Err(refused(reason)),
        other => {
            tracing::warn!(schedule = name, "unexpected answer to a schedule change");
            Err(unexpected(other))
        }
    }
}

#[utoipa::path(post, path = "/v1/schedules/{name}/pause", tag = "schedules", params(("name" = String, Path, description = "The schedule's name")), responses((status = 200, description = "Done", body = ScheduleView), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError), (status = 409, description = "Needs every voter upgraded", body = ApiError), (status = 404, description = "No such schedule", body = ApiError)))]
pub(crate) async fn pause(
    State(master): State<Arc<Master>>,
    Path(name): Path<String>,
) -> Result<Json<ScheduleView>, Failure> {
    change(&master, &name, Command::PauseSchedule { name: name.clone(), paused: true }).await?;
    view(&master, &name)
}

#[utoipa::path(post, path = "/v1/schedules/{name}/resume", tag = "schedules", params(("name" = String, Path, description = "The schedule's name")), responses((status = 200, description = "Done (periods missed while paused are not launched)", body = ScheduleView), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError), (status = 409, description = "Needs every voter upgraded", body = ApiError), (status = 404, description = "No such schedule", body = ApiError)))]
pub(crate) async fn resume(
    State(master): State<Arc<Master>>,
    Path(name): Path<String>,
) -> Result<Json<ScheduleView>, Failure> {
    change(&master, &name, Command::PauseSchedule { name: name.clone(), paused: false }).await?;
    view(&master, &name)
}

#[utoipa::path(delete, path = "/v1/schedules/{name}", tag = "schedules", params(("name" = String, Path, description = "The schedule's name")), responses((status = 200, description = "Removed (its jobs stay)", body = ScheduleView), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError), (status = 409, description = "Needs every voter upgraded", body = ApiError), (status = 404, description = "No such schedule", body = ApiError)))]
pub(crate) async fn remove(
    State(master): State<Arc<Master>>,
    Path(name): Path<String>,
) -> Result<Json<ScheduleView>, Failure> {
    let before = view(&master, &name)?;
    change(&master, &name, Command::RemoveSchedule { name: name.clone() }).await?;
    Ok(before)
}

/// The leader's duty: about four times a second, each schedule whose latest period is not
/// done gets a `LaunchPeriod` for it (applied once however often proposed). Expressions are
/// parsed once each, outside the state's lock.
pub(crate) async fn launch_periods(master: Arc<Master>, lead: Leadership) {
    let mut parsed: std::collections::HashMap<(String, String), Option<Timing>> = Default::default();
    loop {
        tokio::select! {
            _ = lead.cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        // A state that misses entries of earlier terms could launch a period again needlessly.
        if master.sessions.ready_term() != Some(lead.term) {
            continue;
        }
        let active: Vec<(String, String, String, u64)> = {
            let data = master.shared.read();
            data.state
                .schedules()
                .iter()
                .filter(|(_, s)| !s.paused)
                .map(|(name, s)| (name.clone(), s.cron.clone(), s.timezone.clone(), s.done_until))
                .collect()
        };
        parsed.retain(|key, _| active.iter().any(|(_, cron, zone, _)| (cron, zone) == (&key.0, &key.1)));
        let now = now_ms();
        for (name, cron, zone, done_until) in active {
            let timing = parsed.entry((cron, zone)).or_insert_with_key(|(c, z)| Timing::parse(c, z).ok());
            let Some(period) = timing.as_ref().and_then(|t| t.due(done_until, now)) else { continue };
            if let Err(e) = master.proposer.propose_one(Command::LaunchPeriod { name: name.clone(), period }).await {
                tracing::debug!(schedule = %name, error = %e, "period not launched (a later leader will)");
            }
        }
    }
}
