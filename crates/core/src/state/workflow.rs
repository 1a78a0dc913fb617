//! Dependencies between jobs and the outputs of tasks, as the replicated state keeps them
//! (see [`crate::workflow`]).
//!
//! A job that waits stays `Waiting` with all its tasks pending, out of the scheduling queue,
//! until every job it waits for has ended; then it enters the queue like a new job. If a job
//! it needs to succeed fails or is cancelled, it is cancelled, and [`ClusterState::unmet`]
//! says which job it was. Jobs can only wait for jobs submitted before them, so no cycle can
//! form.

use std::collections::{BTreeMap, BTreeSet};

use super::{Added, ApplyCtx, ClusterState, Job, WorkerState};
use crate::command::Response;
use crate::journal::EventKind;
use crate::model::{JobId, JobSpec, JobState, TaskId};
use crate::reason::Refusal;
use crate::schedule::{Overlap, Schedule, ScheduleRefusal};
use crate::workflow::{CopyLoss, DependencyError, Digest, JobOptions, Unmet};

impl ClusterState {
    /// `SubmitJobWith`: refused whole if an option is bad or names a job that is not kept.
    pub(super) fn submit_with(
        &mut self,
        ctx: ApplyCtx,
        spec: &JobSpec,
        request_id: Option<&str>,
        owner: Option<&str>,
        options: &JobOptions,
    ) -> Response {
        if let Some(existing) = request_id.and_then(|r| self.request_ids.get(r)) {
            return Response::JobSubmitted { job: *existing, duplicate: true };
        }
        if let Err(e) = options.validate() {
            return Response::Invalid { reason: Refusal::Dependency(e) };
        }
        let upstream = options.upstream();
        for &up in &upstream {
            if !self.jobs.contains_key(&up) {
                let error = if up == 0 || up >= self.next_job_id {
                    DependencyError::UnknownJob(up)
                } else {
                    DependencyError::Removed(up)
                };
                return Response::Invalid { reason: Refusal::Dependency(error) };
            }
        }
        if !options.each.is_empty() || !options.needs.is_empty() {
            let indices = spec.indices();
            for &up in &options.each {
                if let Some(task) = indices.difference(&self.jobs[&up].spec.indices()).first() {
                    let error = DependencyError::EachMissing { job: up, task };
                    return Response::Invalid { reason: Refusal::Dependency(error) };
                }
            }
            if let Err(e) = options.check_needs(&indices) {
                return Response::Invalid { reason: Refusal::Dependency(e) };
            }
        }
        let response = self.submit(ctx, spec, request_id);
        let Response::JobSubmitted { job, duplicate: false } = response else { return response };
        if let Some(owner) = owner {
            self.added.access.set_owner(job, owner);
        }
        if !options.is_empty() {
            self.added.options.insert(job, options.clone());
        }
        let mut waits = BTreeSet::new();
        let mut unmet = None;
        for up in upstream {
            let state = self.jobs[&up].state;
            if !state.is_terminal() {
                // A job paired task by task (`each`) starts before it ends.
                if options.whole_upstream().contains(&up) {
                    waits.insert(up);
                }
            } else if state != JobState::Succeeded && options.needs_success_of(up) {
                unmet.get_or_insert(Unmet { upstream: up, state });
            }
        }
        if let Some(unmet) = unmet {
            self.added.unmet.insert(job, unmet);
            self.cancel(ctx, job);
            return response;
        }
        if !waits.is_empty() {
            for up in &waits {
                self.added.dependents.entry(*up).or_default().insert(job);
            }
            self.added.waiting_on.insert(job, waits);
            self.refresh_queue(job);
        }
        self.hold_new_job(job, options);
        response
    }

    /// Sees to the dependents of the jobs that ended while applying one command: each either
    /// waits for one job less (and enters the queue when it waits for none), or is cancelled
    /// because a job it needed did not succeed (which may cancel its own dependents in turn:
    /// a worklist, not recursion, however long the chain).
    pub(super) fn resolve_dependents(&mut self, ctx: ApplyCtx) {
        while let Some((id, state)) = self.ended_now.0.pop() {
            self.needs_job_ended(ctx, id, state);
            // A job that ended while it waited (cancelled) waits no more.
            if let Some(ups) = self.added.waiting_on.remove(&id) {
                for up in ups {
                    if let Some(d) = self.added.dependents.get_mut(&up) {
                        d.remove(&id);
                        if d.is_empty() {
                            self.added.dependents.remove(&up);
                        }
                    }
                }
            }
            let Some(waiting) = self.added.dependents.remove(&id) else { continue };
            for dependent in waiting {
                let needs_success = self.added.options.get(&dependent).is_some_and(|o| o.after.contains(&id));
                if needs_success && state != JobState::Succeeded {
                    self.added.unmet.insert(dependent, Unmet { upstream: id, state });
                    self.cancel(ctx, dependent);
                } else if let Some(left) = self.added.waiting_on.get_mut(&dependent) {
                    left.remove(&id);
                    if left.is_empty() {
                        self.added.waiting_on.remove(&dependent);
                        self.refresh_queue(dependent);
                    }
                }
            }
        }
    }

    pub(super) fn set_endpoint(&mut self, ctx: ApplyCtx, worker: &str, address: &str) -> Response {
        if !self.workers.contains_key(worker) {
            return Response::Invalid { reason: Refusal::NoReadyWorker(worker.to_string()) };
        }
        if self.added.endpoints.get(worker).map(String::as_str) != Some(address) {
            self.added.endpoints.insert(worker.to_string(), address.to_string());
            self.added.peers_changed = ctx.index;
        }
        Response::Noted
    }

    /// Workers joined, left or changed service: the peers each is told change too. Only
    /// once some worker serves outputs (a state without any stays one 0.1.0 reads).
    pub(super) fn note_peers_changed(&mut self, ctx: ApplyCtx) {
        if !self.added.endpoints.is_empty() {
            self.added.peers_changed = ctx.index;
        }
    }

    /// `CopiesAdded`: the worker holds whole copies of these tasks' outputs now. Counted only
    /// for a worker in service (one lost since it reported may not have them any more).
    pub(super) fn copies_added(&mut self, ctx: ApplyCtx, worker: &str, tasks: &[TaskId]) -> Response {
        if !self.workers.get(worker).is_some_and(|w| w.state == WorkerState::Ready) {
            return Response::Noted;
        }
        let mut by_job: BTreeMap<JobId, u64> = BTreeMap::new();
        for task in tasks {
            let wanted = self.wanted_copies(task.job);
            let Some(outputs) = self.added.outputs.get_mut(task) else { continue };
            if outputs.holders.iter().any(|h| h == worker) {
                continue;
            }
            outputs.holders.push(worker.to_string());
            if outputs.holders.len() >= wanted {
                self.added.short_of_copies.remove(task);
            }
            *by_job.entry(task.job).or_default() += 1;
        }
        for (job, tasks) in by_job {
            self.journal.record(ctx.at_ms, EventKind::OutputsCopied { job, tasks, worker: worker.to_string() });
        }
        Response::Noted
    }

    /// Takes `worker` off the holders of every task's outputs (`digests`: only of outputs
    /// that include one of them). Those tasks are short of copies now; the ones left with
    /// none have lost their outputs. One journal event per job, whatever the count.
    pub(super) fn drop_copies(&mut self, ctx: ApplyCtx, worker: &str, digests: Option<&[Digest]>, reason: CopyLoss) {
        // Logs are kept on one worker only: they go with it, or with their damaged blob.
        self.added.logs.retain(|_, l| {
            l.holder != worker || digests.is_some_and(|d| !l.files.iter().any(|f| d.contains(&f.sha256)))
        });
        if self.added.outputs.is_empty() {
            return;
        }
        let mut gone: BTreeMap<JobId, u64> = BTreeMap::new();
        let mut lost: BTreeMap<JobId, Vec<TaskId>> = BTreeMap::new();
        for (task, outputs) in self.added.outputs.iter_mut() {
            let Some(at) = outputs.holders.iter().position(|h| h == worker) else { continue };
            if digests.is_some_and(|d| !d.iter().any(|d| outputs.holds(d))) {
                continue;
            }
            outputs.holders.remove(at);
            self.added.short_of_copies.insert(*task);
            *gone.entry(task.job).or_default() += 1;
            if outputs.holders.is_empty() {
                lost.entry(task.job).or_default().push(*task);
            }
        }
        for (job, tasks) in gone {
            self.journal
                .record(ctx.at_ms, EventKind::OutputCopiesGone { job, tasks, worker: worker.to_string(), reason });
        }
        let mut reruns = Vec::new();
        for (job, tasks) in lost {
            let rerun = self.rerun(ctx, job, &tasks);
            self.journal.record(ctx.at_ms, EventKind::OutputsLost { job, tasks: tasks.len() as u64, rerun });
            reruns.extend(rerun.map(|r| (job, r)));
        }
        self.hold_for_reruns(&reruns);
    }

    /// Every copy of these tasks' outputs is gone: a new job runs them again, with the same
    /// command, indices, inputs and output policy (its id is the new job's; it is told
    /// `FLOTILLA_RERUN_OF`), and their outputs become `job`'s when they succeed. A reduce
    /// step's outputs are not made again (its input, the tasks' stdout, is in the records,
    /// not in a job that can be re-run).
    fn rerun(&mut self, ctx: ApplyCtx, job: JobId, tasks: &[TaskId]) -> Option<JobId> {
        let original = self.jobs.get(&job)?;
        let indices: Vec<u64> = tasks
            .iter()
            .filter_map(|t| match t.slot {
                crate::model::TaskSlot::Array(i) => Some(i),
                crate::model::TaskSlot::Reduce => None,
            })
            .collect();
        if indices.is_empty() {
            return None;
        }
        let mut spec = original.spec.clone();
        spec.reduce = None;
        spec.array = if original.spec.array.is_none() && indices == [0] {
            None
        } else {
            let mut set = crate::index_set::IndexSet::new();
            for i in indices {
                set.insert(i);
            }
            Some(set)
        };
        let options = self.added.options.get(&job).cloned();
        let owner = self.added.access.owner_of(job).map(str::to_string);
        let Response::JobSubmitted { job: rerun, duplicate: false } = self.submit(ctx, &spec, None) else {
            return None;
        };
        if let Some(owner) = owner {
            self.added.access.set_owner(rerun, &owner);
        }
        if let Some(options) = options {
            self.added.options.insert(rerun, options);
        }
        self.added.reruns.insert(rerun, job);
        Some(rerun)
    }

    /// Jobs not ended that read what a re-run makes again wait for it (out of the queue;
    /// their running attempts go on), and so does a re-run that needs another's outputs.
    fn hold_for_reruns(&mut self, reruns: &[(JobId, JobId)]) {
        for &(original, rerun) in reruns {
            let readers: Vec<JobId> = self
                .added
                .options
                .iter()
                .filter(|(reader, o)| **reader != rerun && o.upstream().contains(&original))
                .map(|(reader, _)| *reader)
                .filter(|reader| self.jobs.get(reader).is_some_and(|j| !j.state.is_terminal()))
                .collect();
            for reader in readers {
                self.added.waiting_on.entry(reader).or_default().insert(rerun);
                self.added.dependents.entry(rerun).or_default().insert(reader);
                self.refresh_queue(reader);
            }
        }
    }

    /// The re-run that is making `job`'s lost outputs again, if one has not ended.
    pub(super) fn rerun_under_way(&self, job: JobId) -> Option<JobId> {
        self.added
            .reruns
            .iter()
            .find(|(rerun, original)| **original == job && self.jobs.get(rerun).is_some_and(|j| !j.state.is_terminal()))
            .map(|(rerun, _)| *rerun)
    }

    /// A re-run's task succeeded: its outputs become those of the task it ran again (if that
    /// job is still kept), which is then short of copies or not by its own job's count.
    pub(super) fn adopt_rerun_outputs(&mut self, task: TaskId) {
        let Some(&original) = self.added.reruns.get(&task.job) else { return };
        let Some(outputs) = self.added.outputs.remove(&task) else { return };
        self.added.short_of_copies.remove(&task);
        if !self.jobs.contains_key(&original) {
            return;
        }
        let target = TaskId { job: original, slot: task.slot };
        if outputs.holders.len() < self.wanted_copies(original) {
            self.added.short_of_copies.insert(target);
        } else {
            self.added.short_of_copies.remove(&target);
        }
        self.added.outputs.insert(target, outputs);
    }

    /// `AddSchedule`: the periods before this entry are done (a new schedule starts with the
    /// next one).
    pub(super) fn add_schedule(&mut self, ctx: ApplyCtx, name: &str, schedule: &Schedule) -> Response {
        let refuse = |r: ScheduleRefusal| Response::Invalid { reason: Refusal::Schedule(r) };
        if !crate::schedule::valid_name(name) {
            return refuse(ScheduleRefusal::BadName);
        }
        if self.added.schedules.contains_key(name) {
            return refuse(ScheduleRefusal::Exists(name.to_string()));
        }
        if self.added.schedules.len() >= crate::schedule::MAX_SCHEDULES {
            return refuse(ScheduleRefusal::TooMany);
        }
        if !schedule.options.upstream().is_empty() {
            return refuse(ScheduleRefusal::Dependencies);
        }
        if let Err(e) = schedule.spec.validate() {
            return Response::Invalid { reason: Refusal::BadSpec(e) };
        }
        if let Err(e) = schedule.options.validate() {
            return Response::Invalid { reason: Refusal::Dependency(e) };
        }
        // Whatever the proposer filled in, a new schedule starts here with nothing launched.
        let mut kept = Schedule::new(
            &schedule.cron,
            &schedule.timezone,
            schedule.overlap,
            schedule.spec.clone(),
            schedule.options.clone(),
            schedule.owner.clone(),
        );
        kept.created_at = ctx.at_ms;
        kept.done_until = ctx.at_ms;
        self.added.schedules.insert(name.to_string(), kept);
        Response::Noted
    }

    /// Pausing keeps the schedule; resuming marks the periods missed meanwhile as done.
    pub(super) fn pause_schedule(&mut self, ctx: ApplyCtx, name: &str, paused: bool) -> Response {
        let Some(schedule) = self.added.schedules.get_mut(name) else {
            return Response::Invalid { reason: Refusal::Schedule(ScheduleRefusal::Unknown(name.to_string())) };
        };
        if schedule.paused && !paused {
            schedule.done_until = schedule.done_until.max(ctx.at_ms);
        }
        schedule.paused = paused;
        Response::Noted
    }

    /// `LaunchPeriod`: the period's job is submitted (as the schedule's owner), or the period
    /// is skipped if the last one's job still runs and overlaps are not allowed. A period at
    /// or before `done_until` was done already: nothing changes (a launch proposed by two
    /// leaders happens once).
    pub(super) fn launch_period(&mut self, ctx: ApplyCtx, name: &str, period: crate::model::Millis) -> Response {
        let Some(schedule) = self.added.schedules.get(name) else { return Response::Noted };
        if schedule.paused || period <= schedule.done_until {
            return Response::Duplicate;
        }
        let running = schedule
            .last_job
            .filter(|_| schedule.overlap == Overlap::Skip)
            .filter(|j| self.jobs.get(j).is_some_and(|j| !j.state.is_terminal()));
        if let Some(running) = running {
            let schedule = self.added.schedules.get_mut(name).expect("checked above");
            schedule.done_until = period;
            schedule.last_period = Some(period);
            schedule.skipped += 1;
            self.journal.record(ctx.at_ms, EventKind::ScheduleSkipped { name: name.to_string(), period, running });
            return Response::Noted;
        }
        let (spec, options, owner) = (schedule.spec.clone(), schedule.options.clone(), schedule.owner.clone());
        let response = self.submit_with(ctx, &spec, None, owner.as_deref(), &options);
        let schedule = self.added.schedules.get_mut(name).expect("checked above");
        schedule.done_until = period;
        schedule.last_period = Some(period);
        if let Response::JobSubmitted { job, .. } = response {
            schedule.last_job = Some(job);
            schedule.launched += 1;
            self.journal.record(ctx.at_ms, EventKind::ScheduleLaunched { name: name.to_string(), period, job });
        }
        response
    }

    /// A job is removed (retention, purge): what was kept beside it goes too.
    pub(super) fn forget_job_extras(&mut self, id: JobId) {
        self.added.access.forget_job(id);
        self.added.reruns.remove(&id);
        self.added.options.remove(&id);
        self.added.unmet.remove(&id);
        let range = TaskId::array(id, 0)..=TaskId::reduce(id);
        let tasks: Vec<TaskId> = self.added.outputs.range(range.clone()).map(|(t, _)| *t).collect();
        for t in tasks {
            self.added.outputs.remove(&t);
            self.added.short_of_copies.remove(&t);
        }
        let logged: Vec<TaskId> = self.added.logs.range(range.clone()).map(|(t, _)| *t).collect();
        for t in logged {
            self.added.logs.remove(&t);
        }
        let failed: Vec<TaskId> = self.added.output_errors.range(range).map(|(t, _)| *t).collect();
        for t in failed {
            self.added.output_errors.remove(&t);
        }
    }
}

impl Added {
    /// The dependency maps mirror each other, and name only kept, unfinished jobs.
    pub(super) fn sanity_check(&self, jobs: &BTreeMap<JobId, Job>) {
        for (job, ups) in &self.waiting_on {
            assert!(!ups.is_empty(), "job {job} waits for nothing");
            assert!(jobs.get(job).is_some_and(|j| !j.state.is_terminal()), "waiting job {job} is gone or ended");
            for up in ups {
                assert!(self.dependents.get(up).is_some_and(|d| d.contains(job)), "{job} waits for {up} unseen");
                assert!(jobs.get(up).is_some_and(|j| !j.state.is_terminal()), "{job} waits for ended job {up}");
                assert!(up < job || self.reruns.contains_key(up), "job {job} waits for a later job {up}");
            }
        }
        for (up, deps) in &self.dependents {
            assert!(!deps.is_empty(), "job {up} has an empty dependents set");
            for d in deps {
                assert!(self.waiting_on.get(d).is_some_and(|u| u.contains(up)), "{d} listed as waiting for {up}");
            }
        }
        for (job, unmet) in &self.unmet {
            assert!(jobs.get(job).is_none_or(|j| j.state == JobState::Cancelled), "unmet job {job} not cancelled");
            assert!(unmet.state != JobState::Succeeded, "job {job} cancelled for a success");
        }
        for (task, outputs) in &self.outputs {
            assert!(jobs.contains_key(&task.job), "outputs of removed job {}", task.job);
            assert!(!outputs.files.is_empty(), "task {task} kept with no outputs");
        }
        assert!(self.options.keys().all(|j| jobs.contains_key(j)), "options of a removed job");
        assert!(self.reruns.iter().all(|(r, o)| jobs.contains_key(r) && o < r), "a re-run gone or before its job");
        for task in &self.short_of_copies {
            assert!(self.outputs.contains_key(task), "task {task} short of copies of outputs it does not have");
        }
        for (task, outputs) in &self.outputs {
            let replicas = self.options.get(&task.job).map_or(crate::workflow::DEFAULT_REPLICAS, |o| o.replicas());
            let short = outputs.holders.len() < 1 + replicas as usize;
            assert_eq!(short, self.short_of_copies.contains(task), "task {task} short of copies: {short}, not as kept");
            let mut seen = BTreeSet::new();
            assert!(outputs.holders.iter().all(|h| seen.insert(h)), "task {task} lists a holder twice");
        }
        assert!(self.output_errors.keys().all(|t| jobs.contains_key(&t.job)), "output error of a removed job");
        assert!(self.logs.keys().all(|t| jobs.contains_key(&t.job)), "logs of a removed job");
        for (job, options) in &self.options {
            let ended = jobs.get(job).is_none_or(|j| j.state.is_terminal());
            assert!(options.whole_upstream().iter().all(|up| up < job), "job {job} names a later job");
            assert!(options.each.iter().all(|up| up < job), "job {job} pairs with a later job");
            if ended {
                assert!(
                    !self.held.tasks.contains_key(job) && !self.held.left.contains_key(job),
                    "ended job {job} holds"
                );
            }
        }
    }
}
