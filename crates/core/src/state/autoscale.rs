//! Applying the autoscaling commands (see [`crate::autoscale`] for the whole loop).

use super::*;
use crate::autoscale::{
    valid_name, AutoscaleRefusal, Launch, LaunchEnd, LaunchFailure, LaunchOutcome, LaunchStage, Policy, Pool,
    ScaleDownReason, ScaleUpReason, MAX_ERROR_BYTES, MAX_POOLS,
};
use crate::command::Response;
use crate::journal::EventKind;
use crate::reason::Refusal;

fn refused(reason: AutoscaleRefusal) -> Response {
    Response::Invalid { reason: Refusal::Autoscale(reason) }
}

impl ClusterState {
    /// Autoscaling pools by name.
    pub fn pools(&self) -> &BTreeMap<String, Pool> {
        &self.added.pools
    }

    /// `SetAutoscale`: a new pool, or a new policy for one (what it has under way stays; a
    /// paused pool resumes, as the new policy may be the fix).
    pub(super) fn set_pool(&mut self, ctx: ApplyCtx, name: &str, policy: &Policy) -> Response {
        if !valid_name(name) {
            return refused(AutoscaleRefusal::BadName);
        }
        if let Err(e) = policy.check() {
            return refused(e);
        }
        let full = self.added.pools.len() >= MAX_POOLS;
        match self.added.pools.get_mut(name) {
            Some(pool) => {
                pool.policy = policy.clone();
                resume(pool);
            }
            None if full => return refused(AutoscaleRefusal::TooManyPools),
            None => {
                self.added.pools.insert(name.to_string(), Pool::new(policy.clone(), ctx.at_ms));
            }
        }
        Response::Noted
    }

    /// `RemoveAutoscale`: the pool stops being managed; the workers it started stay.
    pub(super) fn remove_pool(&mut self, name: &str) -> Response {
        match self.added.pools.remove(name) {
            Some(_) => Response::Noted,
            None => refused(AutoscaleRefusal::Unknown(name.to_string())),
        }
    }

    pub(super) fn resume_pool(&mut self, name: &str) -> Response {
        match self.added.pools.get_mut(name) {
            Some(pool) => {
                resume(pool);
                Response::Noted
            }
            None => refused(AutoscaleRefusal::Unknown(name.to_string())),
        }
    }

    /// `ScaleUp`: names for `count` new workers, recorded as requested before any provider
    /// is asked (a new leader then knows they are on their way).
    pub(super) fn scale_up(&mut self, ctx: ApplyCtx, name: &str, count: u32, reason: &ScaleUpReason) -> Response {
        let Some(pool) = self.added.pools.get_mut(name) else {
            return refused(AutoscaleRefusal::Unknown(name.to_string()));
        };
        if pool.paused {
            return refused(AutoscaleRefusal::Paused { pool: name.to_string(), failures: pool.failures });
        }
        if count == 0 || pool.active().saturating_add(count) > pool.policy.max {
            return refused(AutoscaleRefusal::CannotGrow { pool: name.to_string(), count });
        }
        let mut names = Vec::with_capacity(count as usize);
        // A StatefulSet's pods are NAME-0, NAME-1, …: its workers take the lowest free ordinals.
        let statefulset = match &pool.policy.provider {
            crate::autoscale::ProviderSpec::Kubernetes { statefulset, .. } => Some(statefulset.clone()),
            _ => None,
        };
        let mut ordinal = 0u64;
        while names.len() < count as usize {
            let candidate = match &statefulset {
                Some(sts) => {
                    ordinal += 1;
                    format!("{sts}-{}", ordinal - 1)
                }
                None => {
                    pool.next_serial += 1;
                    crate::autoscale::worker_name(name, pool.next_serial - 1)
                }
            };
            // A name some worker already has (one started by hand, say) is skipped.
            if self.workers.contains_key(&candidate) || pool.launches.contains_key(&candidate) {
                continue;
            }
            pool.launches.insert(
                candidate.clone(),
                Launch { requested_at: ctx.at_ms, since: ctx.at_ms, handle: None, stage: LaunchStage::Requested },
            );
            names.push(candidate);
        }
        pool.last_up = Some(ctx.at_ms);
        pool.last_decision = Some((ctx.at_ms, crate::autoscale::Scaled::Up { workers: count, reason: reason.clone() }));
        pool.launched += u64::from(count);
        self.journal.record(
            ctx.at_ms,
            EventKind::ScaledUp { pool: name.to_string(), workers: names.clone(), reason: reason.clone() },
        );
        Response::ScaledUp { workers: names }
    }

    /// `LaunchReported`: what the provider said. A failure ends the launch and backs the pool
    /// off (pausing it after too many in a row).
    pub(super) fn launch_reported(
        &mut self,
        ctx: ApplyCtx,
        name: &str,
        worker: &str,
        outcome: &LaunchOutcome,
    ) -> Response {
        let Some(pool) = self.added.pools.get_mut(name) else {
            return refused(AutoscaleRefusal::Unknown(name.to_string()));
        };
        let Some(launch) = pool.launches.get_mut(worker) else {
            return refused(AutoscaleRefusal::NoLaunch { pool: name.to_string(), name: worker.to_string() });
        };
        match outcome {
            LaunchOutcome::Started { handle } => {
                launch.handle.clone_from(handle);
                if launch.stage == LaunchStage::Requested {
                    launch.stage = LaunchStage::Started;
                    launch.since = ctx.at_ms;
                }
            }
            // A worker that joined already is there, whatever its provider said after.
            LaunchOutcome::Failed(_)
                if launch.stage != LaunchStage::Requested && launch.stage != LaunchStage::Started => {}
            LaunchOutcome::Failed(failure) => {
                pool.launches.remove(worker);
                let failure = match failure {
                    LaunchFailure::Provider { detail } => LaunchFailure::Provider { detail: cut(detail) },
                    other => other.clone(),
                };
                pool.failed(ctx.at_ms, failure.clone());
                let (failures, paused) = (pool.failures, pool.paused);
                self.journal.record(
                    ctx.at_ms,
                    EventKind::LaunchFailed {
                        pool: name.to_string(),
                        worker: worker.to_string(),
                        failure,
                        failures,
                        paused,
                    },
                );
            }
        }
        Response::Noted
    }

    /// `ScaleDown`: each named worker of the pool that is in service and holds nothing now
    /// drains (it is drained at once) and retires; the others are left as they are.
    pub(super) fn scale_down(
        &mut self,
        ctx: ApplyCtx,
        name: &str,
        workers: &[String],
        reason: &ScaleDownReason,
    ) -> Response {
        let Some(pool) = self.added.pools.get(name) else {
            return refused(AutoscaleRefusal::Unknown(name.to_string()));
        };
        let chosen: Vec<String> = workers
            .iter()
            .filter(|w| pool.launches.get(*w).is_some_and(|l| l.stage == LaunchStage::Joined))
            .filter(|w| {
                self.workers.get(*w).is_some_and(|w| {
                    w.state == WorkerState::Ready && w.maintenance == Maintenance::InService && w.tasks.is_empty()
                })
            })
            .cloned()
            .collect();
        if chosen.is_empty() {
            return Response::ScaledDown { workers: chosen };
        }
        self.journal.record(
            ctx.at_ms,
            EventKind::ScaledDown { pool: name.to_string(), workers: chosen.clone(), reason: reason.clone() },
        );
        for worker in &chosen {
            self.set_maintenance(ctx, worker, MaintenanceChange::Drain { deadline_ms: None, by_worker: false });
        }
        if let Some(pool) = self.added.pools.get_mut(name) {
            pool.last_down = Some(ctx.at_ms);
            pool.last_decision = Some((
                ctx.at_ms,
                crate::autoscale::Scaled::Down { workers: chosen.len() as u32, reason: reason.clone() },
            ));
            for worker in &chosen {
                if let Some(l) = pool.launches.get_mut(worker) {
                    l.stage = LaunchStage::Retiring;
                    l.since = ctx.at_ms;
                }
            }
        }
        Response::ScaledDown { workers: chosen }
    }

    /// `LaunchEnded`: the provider was asked to stop (or cancel) it; the pool lets go of it.
    pub(super) fn launch_ended(&mut self, ctx: ApplyCtx, name: &str, worker: &str, why: LaunchEnd) -> Response {
        let Some(pool) = self.added.pools.get_mut(name) else {
            return refused(AutoscaleRefusal::Unknown(name.to_string()));
        };
        let Some(launch) = pool.launches.remove(worker) else { return Response::Noted };
        match why {
            LaunchEnd::Retired => pool.retired += 1,
            LaunchEnd::Lost => {}
            LaunchEnd::NeverJoined | LaunchEnd::EndedBeforeJoining => {
                let failure = match why {
                    LaunchEnd::EndedBeforeJoining => LaunchFailure::EndedBeforeJoining,
                    _ => LaunchFailure::NeverJoined { waited_ms: ctx.at_ms.saturating_sub(launch.requested_at) },
                };
                pool.failed(ctx.at_ms, failure.clone());
                let (failures, paused) = (pool.failures, pool.paused);
                self.journal.record(
                    ctx.at_ms,
                    EventKind::LaunchFailed {
                        pool: name.to_string(),
                        worker: worker.to_string(),
                        failure,
                        failures,
                        paused,
                    },
                );
            }
        }
        self.journal
            .record(ctx.at_ms, EventKind::LaunchEnded { pool: name.to_string(), worker: worker.to_string(), why });
        Response::Noted
    }

    /// A worker joined: if a pool asked for it, it is that pool's now, and the pool's run of
    /// failures is over.
    pub(super) fn pool_worker_joined(&mut self, ctx: ApplyCtx, worker: &str) {
        for pool in self.added.pools.values_mut() {
            if let Some(l) = pool.launches.get_mut(worker) {
                if l.stage.pending() {
                    l.stage = LaunchStage::Joined;
                    l.since = ctx.at_ms;
                    pool.failures = 0;
                    pool.retry_at = None;
                }
            }
        }
    }

    /// A pool's worker drained itself to stop (SIGTERM: a Slurm job's time limit coming): it
    /// is leaving.
    pub(super) fn pool_worker_stopping(&mut self, ctx: ApplyCtx, worker: &str) {
        for pool in self.added.pools.values_mut() {
            if let Some(l) = pool.launches.get_mut(worker).filter(|l| l.stage == LaunchStage::Joined) {
                l.stage = LaunchStage::Retiring;
                l.since = ctx.at_ms;
            }
        }
    }
}

fn resume(pool: &mut Pool) {
    pool.paused = false;
    pool.failures = 0;
    pool.retry_at = None;
}

/// A provider's words, cut at a character boundary.
fn cut(text: &str) -> String {
    if text.len() <= MAX_ERROR_BYTES {
        return text.to_string();
    }
    let mut end = MAX_ERROR_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::autoscale::*;
    use crate::command::{Command, Response, WorkerInfo};
    use crate::model::{JobSpec, Millis};
    use crate::state::tests::Driver;
    use crate::state::{Maintenance, WorkerState};
    use crate::IndexSet;

    fn policy(min: u32, max: u32) -> Policy {
        let mut p = Policy::new(ProviderSpec::Local, min, max);
        p.idle_ms = 10_000;
        p.worker_cpus = Some(2);
        p
    }

    fn set(d: &mut Driver, p: Policy) {
        assert_eq!(d.apply(Command::SetAutoscale { pool: "auto".into(), policy: p }), Response::Noted);
    }

    fn pool(d: &Driver) -> Pool {
        d.state.pools().get("auto").cloned().expect("the pool")
    }

    fn decide(d: &Driver, idle: &BTreeMap<String, Millis>) -> Vec<Decision> {
        plan(
            &d.state,
            &pool(d),
            &PlanInput { now: d.now, idle_since: idle, vanished: &Default::default(), launch_cpus: 2 },
        )
    }

    fn burst(d: &mut Driver, tasks: &str) -> crate::model::JobId {
        d.submit(JobSpec {
            command: vec!["true".into()],
            array: Some(IndexSet::parse(tasks).expect("indices")),
            ..Default::default()
        })
    }

    fn scale_up(d: &mut Driver, count: u32) -> Vec<String> {
        let reason = ScaleUpReason::Minimum { have: 0, min: count };
        match d.apply(Command::ScaleUp { pool: "auto".into(), count, reason }) {
            Response::ScaledUp { workers } => workers,
            other => panic!("scale-up refused: {other:?}"),
        }
    }

    fn join(d: &mut Driver, name: &str) {
        let info = WorkerInfo {
            name: name.to_string(),
            instance: 9,
            cpus: 2,
            queue: 0,
            memory: None,
            resources: BTreeMap::new(),
            labels: BTreeMap::new(),
        };
        assert!(matches!(d.apply(Command::RegisterWorker(info)), Response::WorkerRegistered { .. }));
    }

    fn failed(d: &mut Driver, worker: &str) {
        let outcome = LaunchOutcome::Failed(LaunchFailure::Provider { detail: "sbatch: no partition".into() });
        assert_eq!(
            d.apply(Command::LaunchReported { pool: "auto".into(), worker: worker.into(), outcome }),
            Response::Noted
        );
    }

    /// Invariant: a burst asks for enough workers at once (bounded by max), and the workers on
    /// their way count, so the next round asks for none more.
    #[test]
    fn a_burst_asks_for_workers_once_and_they_join_the_pool() {
        let mut d = Driver::new();
        set(&mut d, policy(0, 3));
        assert_eq!(decide(&d, &BTreeMap::new()), vec![], "no work, no workers");
        burst(&mut d, "1-1000");
        let up = decide(&d, &BTreeMap::new());
        assert!(
            matches!(&up[..], [Decision::Up { count: 3, reason: ScaleUpReason::Demand { waiting_tasks: 1000, .. } }]),
            "{up:?}"
        );
        let names = scale_up(&mut d, 3);
        assert_eq!(names, vec!["auto-1", "auto-2", "auto-3"]);
        assert_eq!(decide(&d, &BTreeMap::new()), vec![], "three on their way: nothing more");
        let started = LaunchOutcome::Started { handle: Some("4242".into()) };
        d.apply(Command::LaunchReported { pool: "auto".into(), worker: "auto-1".into(), outcome: started });
        assert_eq!(pool(&d).launches["auto-1"].stage, LaunchStage::Started);
        join(&mut d, "auto-1");
        assert_eq!(pool(&d).launches["auto-1"].stage, LaunchStage::Joined);
        assert_eq!(pool(&d).launches["auto-1"].handle.as_deref(), Some("4242"));
        let refused = d.apply(Command::ScaleUp {
            pool: "auto".into(),
            count: 1,
            reason: ScaleUpReason::Minimum { have: 3, min: 4 },
        });
        assert!(matches!(refused, Response::Invalid { .. }), "beyond max: {refused:?}");
        assert_eq!(d.replay(), d.state);
    }

    /// Invariant: only workers idle for the idle time go, never below min, never one that
    /// holds a task; they drain first and the pool lets go of them once drained.
    #[test]
    fn idle_workers_drain_then_leave_the_pool() {
        let mut d = Driver::new();
        set(&mut d, policy(1, 3));
        let names = scale_up(&mut d, 3);
        for n in &names {
            join(&mut d, n);
        }
        let job = burst(&mut d, "1");
        let runs = d.schedule();
        let busy = runs[0].worker.clone();
        let mut idle: BTreeMap<String, Millis> = names.iter().map(|n| (n.clone(), d.now)).collect();
        idle.remove(&busy);
        d.now += 20_000;
        let down = decide(&d, &idle);
        let [Decision::Down { workers, reason: ScaleDownReason::Idle { .. } }] = &down[..] else { panic!("{down:?}") };
        assert_eq!(workers.len(), 2, "three active, min 1, one busy: two go");
        assert!(!workers.contains(&busy));
        // The busy one, named anyway (a race), is left alone.
        let mut asked = workers.clone();
        asked.push(busy.clone());
        let answer = d.apply(Command::ScaleDown {
            pool: "auto".into(),
            workers: asked,
            reason: ScaleDownReason::Idle { idle_ms: 20_000 },
        });
        assert_eq!(answer, Response::ScaledDown { workers: workers.clone() });
        for w in workers {
            assert!(matches!(d.state.worker(w).unwrap().maintenance, Maintenance::Drained { .. }));
            assert_eq!(pool(&d).launches[w].stage, LaunchStage::Retiring);
        }
        // Their provider is told once they are gone (lost), or drained for long.
        assert!(decide(&d, &idle).is_empty(), "still there: they exit by themselves");
        let gone = workers[0].clone();
        let incarnation = d.state.worker(&gone).unwrap().incarnation;
        let silent = crate::reason::LostReason::Silent { silent_ms: 3_000 };
        d.apply(Command::WorkerLost { name: gone.clone(), incarnation, reason: silent });
        assert_eq!(decide(&d, &idle), vec![Decision::End { name: gone, why: LaunchEnd::Retired }]);
        d.now += RETIRE_GRACE_MS;
        let ends = decide(&d, &idle);
        assert_eq!(ends.iter().filter(|e| matches!(e, Decision::End { why: LaunchEnd::Retired, .. })).count(), 2);
        for w in workers.clone() {
            d.apply(Command::LaunchEnded { pool: "auto".into(), worker: w, why: LaunchEnd::Retired });
        }
        let p = pool(&d);
        assert_eq!((p.active(), p.retired), (1, 2));
        assert_eq!(d.state.job(job).unwrap().counts.assigned, 1, "its task untouched");
        assert_eq!(d.replay(), d.state);
    }

    /// Invariant: no scale-in within cooldown_down of a scale-up, and no scale-up within
    /// cooldown_up of a scale-in (no flapping).
    #[test]
    fn cooldowns_keep_the_pool_from_flapping() {
        let mut d = Driver::new();
        let mut p = policy(0, 4);
        p.cooldown_down_ms = 30_000;
        p.cooldown_up_ms = 30_000;
        set(&mut d, p);
        let names = scale_up(&mut d, 1);
        join(&mut d, &names[0]);
        let idle: BTreeMap<String, Millis> = [(names[0].clone(), d.now)].into();
        d.now += 15_000;
        assert_eq!(decide(&d, &idle), vec![], "idle long enough, but within the cooldown after a scale-up");
        d.now += 20_000;
        let down = decide(&d, &idle);
        assert!(matches!(&down[..], [Decision::Down { .. }]), "{down:?}");
        d.apply(Command::ScaleDown {
            pool: "auto".into(),
            workers: names.clone(),
            reason: ScaleDownReason::Idle { idle_ms: 35_000 },
        });
        burst(&mut d, "1-10");
        let soon = decide(&d, &idle);
        assert!(
            soon.iter().all(|d| !matches!(d, Decision::Up { .. })),
            "within the cooldown after a scale-in: {soon:?}"
        );
        d.now += 31_000;
        assert!(decide(&d, &idle).iter().any(|d| matches!(d, Decision::Up { .. })));
    }

    /// Invariant: a failing provider backs off, and pauses after ten failures in a row; a
    /// worker that never joins is cancelled and counts as a failure; nothing loops.
    #[test]
    fn failed_launches_back_off_and_pause_the_pool() {
        let mut d = Driver::new();
        set(&mut d, policy(0, 2));
        burst(&mut d, "1-100");
        for round in 1..=FAILURES_BEFORE_PAUSE {
            let up = decide(&d, &BTreeMap::new());
            assert!(matches!(&up[..], [Decision::Up { .. }]), "round {round}: {up:?}");
            let names = scale_up(&mut d, 1);
            failed(&mut d, &names[0]);
            let p = pool(&d);
            assert_eq!(p.failures, round);
            if round < FAILURES_BEFORE_PAUSE {
                assert_eq!(decide(&d, &BTreeMap::new()), vec![], "backing off");
                d.now = p.retry_at.expect("a retry time");
            }
        }
        let p = pool(&d);
        assert!(p.paused);
        assert!(matches!(p.last_failure, Some(LaunchFailure::Provider { .. })));
        d.now += MAX_BACKOFF_MS;
        assert_eq!(decide(&d, &BTreeMap::new()), vec![], "paused");
        let refused = d.apply(Command::ScaleUp {
            pool: "auto".into(),
            count: 1,
            reason: ScaleUpReason::Minimum { have: 0, min: 1 },
        });
        assert!(matches!(refused, Response::Invalid { .. }));
        assert_eq!(d.apply(Command::ResumeAutoscale { pool: "auto".into() }), Response::Noted);
        let names = scale_up(&mut d, 1);
        d.now += pool(&d).policy.join_timeout_ms;
        let ends = decide(&d, &BTreeMap::new());
        assert!(ends.contains(&Decision::End { name: names[0].clone(), why: LaunchEnd::NeverJoined }), "{ends:?}");
        d.apply(Command::LaunchEnded { pool: "auto".into(), worker: names[0].clone(), why: LaunchEnd::NeverJoined });
        assert_eq!(pool(&d).failures, 1);
        assert_eq!(d.state.journal().totals().get("launch_failed"), Some(&11));
        assert_eq!(d.replay(), d.state);
    }

    /// Invariant: a launch whose Slurm job or process ended before its worker joined fails at
    /// once (not at the join timeout), and counts as a failure.
    #[test]
    fn a_launch_that_ends_before_joining_fails_at_once() {
        let mut d = Driver::new();
        set(&mut d, policy(1, 1));
        let names = scale_up(&mut d, 1);
        let started = LaunchOutcome::Started { handle: Some("77".into()) };
        d.apply(Command::LaunchReported { pool: "auto".into(), worker: names[0].clone(), outcome: started });
        let gone: std::collections::BTreeSet<String> = [names[0].clone()].into();
        let input = PlanInput { now: d.now, idle_since: &BTreeMap::new(), vanished: &gone, launch_cpus: 2 };
        let ends = plan(&d.state, &pool(&d), &input);
        assert_eq!(ends, vec![Decision::End { name: names[0].clone(), why: LaunchEnd::EndedBeforeJoining }]);
        d.apply(Command::LaunchEnded {
            pool: "auto".into(),
            worker: names[0].clone(),
            why: LaunchEnd::EndedBeforeJoining,
        });
        let p = pool(&d);
        assert_eq!((p.failures, p.last_failure), (1, Some(LaunchFailure::EndedBeforeJoining)));
    }

    /// Invariant: a pool's workers that are lost leave the pool; its minimum brings new ones.
    #[test]
    fn a_lost_worker_leaves_the_pool_and_the_minimum_is_kept() {
        let mut d = Driver::new();
        set(&mut d, policy(1, 2));
        let up = decide(&d, &BTreeMap::new());
        assert!(matches!(&up[..], [Decision::Up { count: 1, reason: ScaleUpReason::Minimum { .. } }]), "{up:?}");
        let names = scale_up(&mut d, 1);
        join(&mut d, &names[0]);
        let incarnation = d.state.worker(&names[0]).unwrap().incarnation;
        d.apply(Command::WorkerLost {
            name: names[0].clone(),
            incarnation,
            reason: crate::reason::LostReason::Silent { silent_ms: 5_000 },
        });
        assert_eq!(d.state.worker(&names[0]).unwrap().state, WorkerState::Lost);
        let ends = decide(&d, &BTreeMap::new());
        assert_eq!(ends.first(), Some(&Decision::End { name: names[0].clone(), why: LaunchEnd::Lost }));
        d.apply(Command::LaunchEnded { pool: "auto".into(), worker: names[0].clone(), why: LaunchEnd::Lost });
        let up = decide(&d, &BTreeMap::new());
        assert!(matches!(&up[..], [Decision::Up { count: 1, .. }]), "{up:?}");
        assert_eq!(scale_up(&mut d, 1), vec!["auto-2"], "names are never reused");
    }

    /// Invariant: a pool's worker that drains itself to stop (SIGTERM ahead of a Slurm time
    /// limit) leaves the pool, which starts another to keep its minimum.
    #[test]
    fn a_worker_stopping_by_itself_is_replaced() {
        let mut d = Driver::new();
        set(&mut d, policy(1, 1));
        let names = scale_up(&mut d, 1);
        join(&mut d, &names[0]);
        let change = crate::state::MaintenanceChange::Drain { deadline_ms: Some(30_000), by_worker: true };
        d.apply(Command::SetMaintenance { worker: names[0].clone(), change });
        assert_eq!(pool(&d).launches[&names[0]].stage, LaunchStage::Retiring);
        let up = decide(&d, &BTreeMap::new());
        assert!(matches!(&up[..], [Decision::Up { count: 1, reason: ScaleUpReason::Minimum { .. } }]), "{up:?}");
    }

    /// Invariants, for a StatefulSet: the pool's workers are named after its pods (the lowest
    /// free ordinals), the replica count keeps every one not retiring, and only a run of idle
    /// workers at the highest ordinals goes (a StatefulSet cannot remove a pod in the middle).
    #[test]
    fn a_statefulset_pool_grows_and_shrinks_by_ordinal() {
        let mut d = Driver::new();
        let provider = ProviderSpec::Kubernetes { api: None, namespace: "batch".into(), statefulset: "fw".into() };
        let mut p = Policy::new(provider, 0, 4);
        p.idle_ms = 1_000;
        p.cooldown_down_ms = 0;
        set(&mut d, p);
        let names = scale_up(&mut d, 3);
        assert_eq!(names, vec!["fw-0", "fw-1", "fw-2"]);
        assert_eq!(statefulset_replicas(&pool(&d)), Some(3));
        for n in &names {
            join(&mut d, n);
        }
        // fw-1 holds a task: fw-2 may go, fw-1 and fw-0 may not (fw-0 is below a busy one).
        burst(&mut d, "1");
        let runs = d.schedule();
        let busy = runs[0].worker.clone();
        let mut idle: BTreeMap<String, Millis> = names.iter().map(|n| (n.clone(), d.now)).collect();
        idle.remove(&busy);
        d.now += 5_000;
        let down = decide(&d, &idle);
        let expected: Vec<String> = match busy.as_str() {
            "fw-2" => vec![],
            "fw-1" => vec!["fw-2".into()],
            _ => vec!["fw-2".into(), "fw-1".into()],
        };
        match &down[..] {
            [] => assert!(expected.is_empty(), "{busy} busy: expected {expected:?}"),
            [Decision::Down { workers, .. }] => assert_eq!(workers, &expected, "{busy} busy"),
            other => panic!("{other:?}"),
        }
        if let [Decision::Down { workers, reason }] = &down[..] {
            d.apply(Command::ScaleDown { pool: "auto".into(), workers: workers.clone(), reason: reason.clone() });
            // Drained workers of a StatefulSet go at once: the count is lowered, the pod stopped.
            let ends = decide(&d, &idle);
            assert_eq!(ends.len(), workers.len(), "{ends:?}");
            let keep = 3 - workers.len() as u32;
            assert_eq!(statefulset_replicas(&pool(&d)), Some(keep));
        }
    }

    /// Invariant: a busy worker running a stream of short, measured tasks (with its queue full)
    /// is no demand; a burst of a job not measured yet is, and so is work behind long tasks.
    #[test]
    fn short_measured_work_asks_for_no_worker_and_a_new_burst_does() {
        let mut d = Driver::new();
        set(&mut d, policy(0, 4));
        let info = WorkerInfo {
            name: "static".into(),
            instance: 1,
            cpus: 2,
            queue: 16,
            memory: None,
            resources: BTreeMap::new(),
            labels: BTreeMap::new(),
        };
        d.apply(Command::RegisterWorker(info));
        let short = burst(&mut d, "1-200");
        for run in d.schedule().into_iter().take(4) {
            let mut outcome = crate::state::tests::outcome(0, "");
            outcome.duration_ms = 5;
            d.apply(Command::TaskStarted { task: run.task, fence: run.fence, worker: run.worker.clone() });
            d.apply(Command::TaskFinished { task: run.task, fence: run.fence, worker: run.worker, outcome });
        }
        d.schedule();
        let w = d.state.worker("static").unwrap();
        assert!(w.cpus_queued() > 0, "its queue holds tasks");
        // Start two so that its cpus are busy with measured work.
        let held: Vec<(crate::model::TaskId, crate::model::Fence)> =
            w.tasks.iter().map(|(t, f)| (*t, *f)).take(2).collect();
        for (task, fence) in held {
            d.apply(Command::TaskStarted { task, fence, worker: "static".into() });
        }
        assert_eq!(d.state.job(short).unwrap().measured.mean_ms(), Some(5));
        assert_eq!(decide(&d, &BTreeMap::new()), vec![], "5-ms tasks: no demand");
        burst(&mut d, "1-50");
        let up = decide(&d, &BTreeMap::new());
        assert!(matches!(&up[..], [Decision::Up { .. }]), "a new burst: {up:?}");
    }

    #[test]
    fn bad_policies_are_refused_with_the_reason() {
        let mut d = Driver::new();
        let bad = |p: Policy| Command::SetAutoscale { pool: "auto".into(), policy: p };
        for (p, what) in [
            (policy(3, 2), "above"),
            (policy(0, 0), "at least 1"),
            (Policy { worker_cpus: Some(0), ..policy(0, 1) }, "cpus"),
            (Policy::new(ProviderSpec::Command { add: " ".into(), remove: "x".into() }, 0, 1), "add-command"),
        ] {
            match d.apply(bad(p)) {
                Response::Invalid { reason } => assert!(reason.to_string().contains(what), "{reason}"),
                other => panic!("accepted: {other:?}"),
            }
        }
        let named = d.apply(Command::SetAutoscale { pool: "no spaces".into(), policy: policy(0, 1) });
        assert!(matches!(named, Response::Invalid { .. }));
        assert!(d.state.pools().is_empty());
    }

    /// One step of the random walk below.
    #[derive(Clone, Debug)]
    enum Step {
        Burst(u64),
        Schedule,
        Finish(usize),
        /// Runs the queue dry on the workers there are (a quiet spell follows).
        FinishAll,
        Tick(u64),
        Join(usize),
        Fail(usize),
        Lose(usize),
        Plan,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            (1u64..40).prop_map(Step::Burst),
            Just(Step::Schedule),
            (1usize..20).prop_map(Step::Finish),
            Just(Step::FinishAll),
            (100u64..25_000).prop_map(Step::Tick),
            (0usize..8).prop_map(Step::Join),
            (0usize..8).prop_map(Step::Fail),
            (0usize..8).prop_map(Step::Lose),
            Just(Step::Plan),
            Just(Step::Plan),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

        /// Invariants, whatever the work, the joins, failed launches and lost workers, driving
        /// the planner as the leader does (every decision applied): the pool never holds more
        /// than `max` workers; a scale-in names only joined workers in service that hold no
        /// task, and never takes the pool below `min`; no scale-up within `cooldown_up` of a
        /// scale-in nor scale-in within `cooldown_down` of a scale-up (no flapping); a paused
        /// pool launches nothing; and replaying the log gives the same state.
        #[test]
        fn the_planner_keeps_its_invariants_on_a_random_walk(steps in proptest::collection::vec(step(), 1..80)) {
            let mut d = Driver::new();
            let mut p = policy(1, 4);
            p.cooldown_up_ms = 5_000;
            p.cooldown_down_ms = 5_000;
            p.idle_ms = 8_000;
            set(&mut d, p.clone());
            let mut runs: Vec<crate::command::Assigned> = Vec::new();
            let mut idle: BTreeMap<String, Millis> = BTreeMap::new();
            for step in steps {
                match step {
                    Step::Burst(n) => {
                        burst(&mut d, &format!("1-{n}"));
                    }
                    Step::Schedule => runs.extend(d.schedule()),
                    Step::Finish(k) => {
                        for run in runs.drain(..k.min(runs.len())).collect::<Vec<_>>() {
                            d.finish(&run, 0, "");
                        }
                    }
                    Step::FinishAll => {
                        for _ in 0..20 {
                            runs.extend(d.schedule());
                            if runs.is_empty() {
                                break;
                            }
                            for run in std::mem::take(&mut runs) {
                                d.finish(&run, 0, "");
                            }
                        }
                    }
                    Step::Tick(ms) => d.now += ms,
                    Step::Join(i) | Step::Fail(i) | Step::Lose(i) => {
                        let pool = pool(&d);
                        let waiting: Vec<&String> = pool.launches.iter().filter(|(_, l)| l.stage.pending()).map(|(n, _)| n).collect();
                        let joined: Vec<&String> = pool.launches.iter().filter(|(_, l)| l.stage == LaunchStage::Joined).map(|(n, _)| n).collect();
                        match step {
                            Step::Join(_) if !waiting.is_empty() => join(&mut d, &waiting[i % waiting.len()].clone()),
                            Step::Fail(_) if !waiting.is_empty() => failed(&mut d, &waiting[i % waiting.len()].clone()),
                            Step::Lose(_) if !joined.is_empty() => {
                                let name = joined[i % joined.len()].clone();
                                let incarnation = d.state.worker(&name).map(|w| w.incarnation).unwrap_or(0);
                                let reason = crate::reason::LostReason::Silent { silent_ms: 3_000 };
                                d.apply(Command::WorkerLost { name: name.clone(), incarnation, reason });
                                runs.retain(|r| r.worker != name);
                            }
                            _ => {}
                        }
                    }
                    Step::Plan => {
                        // The leader's idle watch: since when each worker has held nothing.
                        idle.retain(|n, _| d.state.worker(n).is_some_and(|w| w.tasks.is_empty()));
                        let now = d.now;
                        for w in d.state.workers().filter(|w| w.tasks.is_empty()) {
                            idle.entry(w.name.clone()).or_insert(now);
                        }
                        let before = pool(&d);
                        for decision in decide(&d, &idle) {
                            match decision {
                                Decision::Up { count, reason } => {
                                    proptest::prop_assert!(!before.paused, "a paused pool launched");
                                    proptest::prop_assert!(before.active() + count <= p.max, "beyond max");
                                    proptest::prop_assert!(
                                        before.last_down.is_none_or(|t| d.now - t >= p.cooldown_up_ms),
                                        "a scale-up within the cooldown after a scale-in"
                                    );
                                    d.apply(Command::ScaleUp { pool: "auto".into(), count, reason });
                                }
                                Decision::Down { workers, reason } => {
                                    proptest::prop_assert!(
                                        before.last_up.is_none_or(|t| d.now - t >= p.cooldown_down_ms),
                                        "a scale-in within the cooldown after a scale-up"
                                    );
                                    proptest::prop_assert!(before.active() - workers.len() as u32 >= p.min, "below min");
                                    for w in &workers {
                                        let worker = d.state.worker(w).expect("a scaled-in worker exists");
                                        proptest::prop_assert!(worker.tasks.is_empty(), "{w} holds tasks");
                                        proptest::prop_assert_eq!(worker.maintenance, Maintenance::InService);
                                        proptest::prop_assert_eq!(before.launches[w].stage, LaunchStage::Joined);
                                    }
                                    d.apply(Command::ScaleDown { pool: "auto".into(), workers, reason });
                                }
                                Decision::End { name, why } => {
                                    d.apply(Command::LaunchEnded { pool: "auto".into(), worker: name, why });
                                }
                            }
                        }
                    }
                }
                proptest::prop_assert!(pool(&d).active() <= p.max, "{} workers, max {}", pool(&d).active(), p.max);
            }
            proptest::prop_assert_eq!(d.replay(), d.state);
        }
    }
}
