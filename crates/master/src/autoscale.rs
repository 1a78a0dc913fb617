//! Autoscaling: the API (`/v1/autoscale`) and the leader's duty that carries out each pool's
//! decisions (see `flotilla_core::autoscale` for what is decided and replicated, and
//! `flotilla_autoscale` for the providers).
//!
//! Four times a second the leader plans every pool from the applied state. Each decision is
//! committed first (`ScaleUp` chooses the new workers' names; `ScaleDown` drains idle
//! workers) and only then carried out by the pool's provider, whose answers are committed in
//! turn (`LaunchReported`, `LaunchEnded`). A provider call runs in a task of its own, so a
//! slow `sbatch` holds up neither the other pools nor the next round.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::Json;

use flotilla_autoscale::{LaunchRequest, Provider, WorkerTemplate};
use flotilla_core::autoscale::{
    plan, statefulset_replicas, Decision, LaunchFailure, LaunchOutcome, LaunchStage, PlanInput, Pool, ProviderSpec,
};
use flotilla_core::model::Millis;
use flotilla_core::{Command, Response as Applied};
use flotilla_proto::api::{ApiError, AutoscaleRequest, PoolView, Pools};
use flotilla_proto::time::now_ms;

use crate::api::{bad_request, failure, from_propose, read_barrier, refused, unexpected, Failure, Params};
use crate::node::{Leadership, Master};

/// How often the leader plans every pool.
const ROUND: Duration = Duration::from_millis(250);
/// How often providers are asked whether what they started for workers that have not joined
/// is still there (`squeue`, the process): one that ended fails its launch at once instead
/// of at the join timeout.
const FOLLOW_EVERY: u32 = 20;

#[utoipa::path(get, path = "/v1/autoscale", tag = "autoscale", params(crate::openapi::ReadParams), responses((status = 200, description = "Done", body = Pools), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError)))]
pub(crate) async fn list(State(master): State<Arc<Master>>, Query(q): Params) -> Result<Json<Pools>, Failure> {
    read_barrier(&master, &q).await?;
    let data = master.shared.read();
    let pools = data.state.pools().iter().map(|(name, p)| PoolView::new(name, p, &data.state)).collect();
    Ok(Json(Pools { pools }))
}

fn view(master: &Master, name: &str) -> Result<Json<PoolView>, Failure> {
    let data = master.shared.read();
    let pool = data.state.pools().get(name).ok_or_else(|| missing(name))?;
    Ok(Json(PoolView::new(name, pool, &data.state)))
}

fn missing(name: &str) -> Failure {
    failure(flotilla_proto::api::ApiErrorCode::NotFound, format!("no autoscaling pool named '{name}'"))
}

#[utoipa::path(post, path = "/v1/autoscale", tag = "autoscale", request_body = AutoscaleRequest, responses((status = 200, description = "Set: the pool as it is now", body = PoolView), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError), (status = 409, description = "Every voter must be upgraded first", body = ApiError), (status = 408, description = "The body did not arrive in time", body = ApiError), (status = 413, description = "The body is larger than 1 MiB", body = ApiError)))]
pub(crate) async fn set(State(master): State<Arc<Master>>, body: Bytes) -> Result<Json<PoolView>, Failure> {
    let request: AutoscaleRequest =
        serde_json::from_slice(&body).map_err(|e| bad_request(format!("invalid autoscaling policy JSON: {e}")))?;
    let (pool, policy) = request.to_policy().map_err(bad_request)?;
    change(&master, &pool, Command::SetAutoscale { pool: pool.clone(), policy }).await?;
    view(&master, &pool)
}

async fn change(master: &Master, name: &str, command: Command) -> Result<(), Failure> {
    match master.proposer.propose_one(command).await.map_err(|e| from_propose(master, e))? {
        Applied::Noted => Ok(()),
        Applied::Invalid { reason } => Err(refused(reason)),
        other => {
            tracing::warn!(pool = name, "unexpected answer to an autoscaling change");
            Err(unexpected(other))
        }
    }
}

#[utoipa::path(post, path = "/v1/autoscale/{pool}/resume", tag = "autoscale", params(("pool" = String, Path, description = "The pool's name")), responses((status = 200, description = "Resumed: its failures are forgotten", body = PoolView), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError), (status = 409, description = "Needs every voter upgraded", body = ApiError), (status = 404, description = "No such pool", body = ApiError)))]
pub(crate) async fn resume(
    State(master): State<Arc<Master>>,
    Path(pool): Path<String>,
) -> Result<Json<PoolView>, Failure> {
    change(&master, &pool, Command::ResumeAutoscale { pool: pool.clone() }).await?;
    view(&master, &pool)
}

#[utoipa::path(delete, path = "/v1/autoscale/{pool}", tag = "autoscale", params(("pool" = String, Path, description = "The pool's name")), responses((status = 200, description = "Removed (the workers it started stay)", body = PoolView), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError), (status = 409, description = "Needs every voter upgraded", body = ApiError), (status = 404, description = "No such pool", body = ApiError)))]
pub(crate) async fn remove(
    State(master): State<Arc<Master>>,
    Path(pool): Path<String>,
) -> Result<Json<PoolView>, Failure> {
    let before = view(&master, &pool)?;
    change(&master, &pool, Command::RemoveAutoscale { pool: pool.clone() }).await?;
    Ok(before)
}

/// The providers of this leadership, one per pool, and the workers they are busy with.
struct Providers {
    by_pool: HashMap<String, Arc<Provider>>,
    /// Workers a provider call of this leader is under way for: not planned again until it
    /// answers.
    busy: Arc<Mutex<HashSet<String>>>,
}

impl Providers {
    fn get(&mut self, master: &Master, pool: &str, spec: &ProviderSpec) -> Arc<Provider> {
        if let Some(p) = self.by_pool.get(pool).filter(|p| p.spec() == spec) {
            return p.clone();
        }
        let template = WorkerTemplate {
            exe: std::env::current_exe().unwrap_or_else(|_| "flotilla".into()),
            masters: master.members().into_iter().map(|(_, a)| a).collect(),
            certs: master.config.tls.as_ref().map(|t| t.certs.clone()),
            token: master.config.token.clone(),
            dir: flotilla_autoscale::local_dir(&master.config.data_dir),
        };
        let provider = Arc::new(Provider::new(spec.clone(), template));
        self.by_pool.insert(pool.to_string(), provider.clone());
        provider
    }
}

fn busy(set: &Mutex<HashSet<String>>) -> std::sync::MutexGuard<'_, HashSet<String>> {
    set.lock().unwrap_or_else(|p| p.into_inner())
}

/// Cpus a new worker of the pool will offer, for planning: the policy's, else what its joined
/// workers offer, else (local workers) this machine's, else 1.
fn launch_cpus(state: &flotilla_core::ClusterState, pool: &Pool) -> u32 {
    if let Some(c) = pool.policy.worker_cpus {
        return c;
    }
    let joined = pool.launches.keys().filter_map(|n| state.worker(n)).map(|w| w.cpus).max();
    joined.unwrap_or_else(|| match pool.policy.provider {
        ProviderSpec::Local => std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
        _ => 1,
    })
}

/// The leader's duty (see the module's comment).
pub(crate) async fn scale(master: Arc<Master>, lead: Leadership) {
    let mut providers = Providers { by_pool: HashMap::new(), busy: Arc::new(Mutex::new(HashSet::new())) };
    // Since when each worker has held no task (this leader's watch).
    let mut idle_since: BTreeMap<String, Millis> = BTreeMap::new();
    // Launches whose provider says what it started has ended before they joined.
    let vanished: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut round: u32 = 0;
    loop {
        round = round.wrapping_add(1);
        tokio::select! {
            _ = lead.cancel.cancelled() => return,
            _ = tokio::time::sleep(ROUND) => {}
        }
        // A state that misses entries of earlier terms would plan from stale launches.
        if master.sessions.ready_term() != Some(lead.term) {
            continue;
        }
        let now = now_ms();
        let plans: Vec<(String, Pool, Vec<Decision>)> = {
            let data = master.shared.read();
            let state = &data.state;
            if state.pools().is_empty() {
                idle_since.clear();
                continue;
            }
            idle_since.retain(|name, _| state.worker(name).is_some_and(|w| w.tasks.is_empty()));
            for w in state.workers().filter(|w| w.tasks.is_empty()) {
                idle_since.entry(w.name.clone()).or_insert(now);
            }
            let busy = busy(&providers.busy);
            let gone = lock(&vanished).clone();
            state
                .pools()
                .iter()
                .map(|(name, pool)| {
                    let input = PlanInput {
                        now,
                        idle_since: &idle_since,
                        vanished: &gone,
                        launch_cpus: launch_cpus(state, pool),
                    };
                    let decisions = plan(state, pool, &input)
                        .into_iter()
                        .filter(|d| !matches!(d, Decision::End { name, .. } if busy.contains(name)))
                        .collect();
                    (name.clone(), pool.clone(), decisions)
                })
                .filter(|(_, _, d): &(String, Pool, Vec<Decision>)| !d.is_empty())
                .collect()
        };
        if round.is_multiple_of(FOLLOW_EVERY) {
            follow(&master, &mut providers, &vanished, &lead);
        }
        for (name, pool, decisions) in plans {
            let provider = providers.get(&master, &name, &pool.policy.provider);
            for decision in decisions {
                carry_out(&master, &lead, &name, &pool, &provider, &providers.busy, decision).await;
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Asks each pool's provider, in the background, which of its launches that have not joined
/// have ended; what it says becomes the next plans' input.
fn follow(master: &Master, providers: &mut Providers, vanished: &Arc<Mutex<BTreeSet<String>>>, lead: &Leadership) {
    // Per pool: its provider, and its launches not joined yet (name, handle).
    type Ask = (Arc<Provider>, Vec<(String, String)>);
    let asks: Vec<Ask> = {
        let data = master.shared.read();
        let started: BTreeSet<&String> = data
            .state
            .pools()
            .values()
            .flat_map(|p| p.launches.iter())
            .filter(|(_, l)| l.stage == LaunchStage::Started)
            .map(|(n, _)| n)
            .collect();
        lock(vanished).retain(|n| started.contains(n));
        data.state
            .pools()
            .iter()
            .filter_map(|(name, pool)| {
                let launches: Vec<(String, String)> = pool
                    .launches
                    .iter()
                    .filter(|(_, l)| l.stage == LaunchStage::Started)
                    .filter_map(|(n, l)| Some((n.clone(), l.handle.clone()?)))
                    .collect();
                (!launches.is_empty()).then(|| (name.clone(), pool.policy.provider.clone(), launches))
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|(name, spec, launches)| (providers.get(master, &name, &spec), launches))
            .collect()
    };
    for (provider, launches) in asks {
        let vanished = vanished.clone();
        lead.tasks.spawn(async move {
            if let Some(gone) = provider.vanished(&launches).await {
                lock(&vanished).extend(gone);
            }
        });
    }
}

async fn carry_out(
    master: &Arc<Master>,
    lead: &Leadership,
    pool_name: &str,
    pool: &Pool,
    provider: &Arc<Provider>,
    busy_set: &Arc<Mutex<HashSet<String>>>,
    decision: Decision,
) {
    match decision {
        Decision::Up { count, reason } => {
            let command = Command::ScaleUp { pool: pool_name.to_string(), count, reason };
            let workers = match master.proposer.propose_one(command).await {
                Ok(Applied::ScaledUp { workers }) => workers,
                Ok(other) => return tracing::debug!(pool = pool_name, answer = ?other, "scale-up not taken"),
                Err(e) => return tracing::debug!(pool = pool_name, error = %e, "scale-up not committed"),
            };
            tracing::info!(pool = pool_name, ?workers, "starting workers");
            // A StatefulSet's count once these are in (the state now holds their launches).
            let replicas = master.shared.read().state.pools().get(pool_name).and_then(statefulset_replicas);
            let request = LaunchRequest {
                pool: pool_name.to_string(),
                names: workers.clone(),
                cpus: pool.policy.worker_cpus,
                labels: pool.policy.selector.clone(),
                replicas,
            };
            busy(busy_set).extend(workers.iter().cloned());
            let (master, provider, busy_set, pool_name) =
                (master.clone(), provider.clone(), busy_set.clone(), pool_name.to_string());
            lead.tasks.spawn(async move {
                let answers = provider.launch(&request).await;
                let commands: Vec<Command> = answers
                    .into_iter()
                    .map(|(worker, answer)| {
                        let outcome = match answer {
                            Ok(handle) => LaunchOutcome::Started { handle },
                            Err(e) => {
                                tracing::warn!(pool = %pool_name, %worker, error = %e, "could not start a worker");
                                LaunchOutcome::Failed(LaunchFailure::Provider { detail: e.to_string() })
                            }
                        };
                        Command::LaunchReported { pool: pool_name.clone(), worker, outcome }
                    })
                    .collect();
                if let Err(e) = master.proposer.propose(commands).await {
                    tracing::debug!(pool = %pool_name, error = %e, "launch reports not committed (the next leader times them out)");
                }
                let mut b = busy(&busy_set);
                for w in &request.names {
                    b.remove(w);
                }
            });
        }
        Decision::Down { workers, reason } => {
            let command = Command::ScaleDown { pool: pool_name.to_string(), workers, reason };
            match master.proposer.propose_one(command).await {
                Ok(Applied::ScaledDown { workers }) if !workers.is_empty() => {
                    tracing::info!(pool = pool_name, ?workers, "draining idle workers to stop them")
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(pool = pool_name, error = %e, "scale-in not committed"),
            }
        }
        Decision::End { name, why } => {
            let handle = pool.launches.get(&name).and_then(|l| l.handle.clone());
            // A StatefulSet keeps every worker not retiring (this one is, or never joined).
            let replicas = {
                let mut without = pool.clone();
                without.launches.remove(&name);
                statefulset_replicas(&without)
            };
            busy(busy_set).insert(name.clone());
            let (master, provider, busy_set, pool_name) =
                (master.clone(), provider.clone(), busy_set.clone(), pool_name.to_string());
            lead.tasks.spawn(async move {
                if let Err(e) = provider.remove(&pool_name, &name, handle.as_deref(), replicas).await {
                    // The pool lets go of it all the same: it is drained, lost or never came.
                    tracing::warn!(pool = %pool_name, worker = %name, error = %e, "the provider could not stop a worker");
                }
                let command = Command::LaunchEnded { pool: pool_name.clone(), worker: name.clone(), why };
                if let Err(e) = master.proposer.propose_one(command).await {
                    tracing::debug!(pool = %pool_name, error = %e, "launch end not committed");
                }
                busy(&busy_set).remove(&name);
            });
        }
    }
}
