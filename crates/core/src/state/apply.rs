//! The transition function: one command at a time, deterministic, total (every input yields a
//! response; a command that does not fit the state is refused without changing it).

use std::cmp::Reverse;

use super::*;
use crate::command::{Assigned, Command, Kill, Placement, Proposal, Response, WorkerInfo};
use crate::journal::EventKind;
use crate::model::{Fence, Outcome, TaskId, TaskSlot, MAX_WORKER_LOSSES};
use crate::reason::{JobFailure, LostReason, Refusal, RescheduleReason, StaleReason, TaskFailure};
use crate::schedule::ScheduleRefusal;

impl ClusterState {
    /// Applies one log entry's batch of commands; one response per command.
    pub fn apply(&mut self, ctx: ApplyCtx, proposal: &Proposal) -> Vec<Response> {
        let ctx = ApplyCtx { at_ms: proposal.at_ms, ..ctx };
        let first_op = self.record_ops.0.len();
        let responses = proposal.commands.iter().map(|c| self.apply_command(ctx, c)).collect();
        for op in &mut self.record_ops.0[first_op..] {
            if let RecordOp::Put { entry, .. } = op {
                *entry = ctx.index;
            }
        }
        // Every entry moves the clock: finished jobs past the retention go now, on every replica
        // at this same entry.
        self.expire_jobs(ctx.at_ms);
        self.applied_index = self.applied_index.max(ctx.index);
        self.last_entry = Some((ctx.term, proposal.at_ms));
        responses
    }

    pub fn apply_command(&mut self, ctx: ApplyCtx, command: &Command) -> Response {
        let response = self.apply_one(ctx, command);
        self.resolve_dependents(ctx);
        response
    }

    fn apply_one(&mut self, ctx: ApplyCtx, command: &Command) -> Response {
        match command {
            Command::SubmitJob { spec, request_id } => self.submit(ctx, spec, request_id.as_deref()),
            Command::SubmitJobAs { spec, request_id, owner } => {
                let response = self.submit(ctx, spec, request_id.as_deref());
                if let Response::JobSubmitted { job, duplicate: false } = response {
                    self.added.access.set_owner(job, owner);
                }
                response
            }
            Command::SubmitJobWith { spec, request_id, owner, options } => {
                self.submit_with(ctx, spec, request_id.as_deref(), owner.as_deref(), options)
            }
            Command::TaskFinishedWith { task, fence, worker, outcome, outputs } => {
                let mut outcome = outcome.clone();
                outcome.outputs = outputs.clone();
                self.task_finished(ctx, *task, *fence, worker, &outcome)
            }
            Command::SetWorkerEndpoint { worker, address } => self.set_endpoint(ctx, worker, address),
            Command::CopiesAdded { worker, tasks } => self.copies_added(ctx, worker, tasks),
            Command::AddSchedule { name, schedule } => self.add_schedule(ctx, name, schedule),
            Command::RemoveSchedule { name } => match self.added.schedules.remove(name) {
                Some(_) => Response::Noted,
                None => Response::Invalid { reason: Refusal::Schedule(ScheduleRefusal::Unknown(name.clone())) },
            },
            Command::PauseSchedule { name, paused } => self.pause_schedule(ctx, name, *paused),
            Command::LaunchPeriod { name, period } => self.launch_period(ctx, name, *period),
            Command::SetAutoscale { pool, policy } => self.set_pool(ctx, pool, policy),
            Command::RemoveAutoscale { pool } => self.remove_pool(pool),
            Command::ResumeAutoscale { pool } => self.resume_pool(pool),
            Command::ScaleUp { pool, count, reason } => self.scale_up(ctx, pool, *count, reason),
            Command::LaunchReported { pool, worker, outcome } => self.launch_reported(ctx, pool, worker, outcome),
            Command::ScaleDown { pool, workers, reason } => self.scale_down(ctx, pool, workers, reason),
            Command::LaunchEnded { pool, worker, why } => self.launch_ended(ctx, pool, worker, *why),
            Command::CopiesCorrupt { worker, digests } => {
                self.drop_copies(ctx, worker, Some(digests), crate::workflow::CopyLoss::Corrupt);
                Response::Noted
            }
            Command::CreateToken { name, role, hash, by } => {
                match self.added.access.create(name, *role, *hash, ctx.at_ms, by) {
                    Ok(()) => Response::TokenCreated,
                    Err(e) => Response::Invalid { reason: Refusal::Access(e) },
                }
            }
            Command::Audit(record) => {
                self.added.access.mark_audited();
                self.journal.record(ctx.at_ms, EventKind::Audit(record.clone()));
                Response::Noted
            }
            Command::RevokeToken { name } => match self.added.access.revoke(name) {
                Ok(role) => Response::TokenRevoked { role },
                Err(e) => Response::Invalid { reason: Refusal::Access(e) },
            },
            Command::CancelJob { job } => self.cancel(ctx, *job),
            Command::RegisterWorker(info) => self.register_worker(ctx, info),
            Command::WorkerLost { name, incarnation, reason } => self.worker_lost(ctx, name, *incarnation, *reason),
            Command::Assign { placements } => self.assign(ctx, placements),
            Command::TaskStarted { task, fence, worker } => self.task_started(ctx, *task, *fence, worker),
            Command::TaskFinished { task, fence, worker, outcome } => {
                self.task_finished(ctx, *task, *fence, worker, outcome)
            }
            Command::LeaderElected { node } => {
                self.leader = Some((*node, ctx.term));
                // Since the previous term's last entry: an upper bound of how long the cluster
                // could not commit (tight when it was busy, loose when it was idle).
                let quiet_ms =
                    self.last_entry.filter(|(term, _)| *term < ctx.term).map(|(_, at)| ctx.at_ms.saturating_sub(at));
                self.journal.record(ctx.at_ms, EventKind::LeaderElected { node: *node, term: ctx.term, quiet_ms });
                Response::Noted
            }
            Command::MasterReachability { node, reachable } => {
                let changed = if *reachable {
                    self.unreachable_masters.remove(node)
                } else {
                    self.unreachable_masters.insert(*node)
                };
                if changed {
                    let kind = if *reachable {
                        EventKind::MasterReachable { node: *node }
                    } else {
                        EventKind::MasterUnreachable { node: *node }
                    };
                    self.journal.record(ctx.at_ms, kind);
                }
                Response::Noted
            }
            Command::MembershipChanged(change) => {
                if let crate::command::MemberChange::Removed { node } = change {
                    self.retired_masters.insert(*node);
                    self.unreachable_masters.remove(node);
                }
                self.journal.record(ctx.at_ms, EventKind::MembershipChanged(change.clone()));
                Response::Noted
            }
            Command::SetClusterIdentity { id } => {
                if self.cluster_id == 0 {
                    self.cluster_id = *id;
                }
                Response::Noted
            }
            Command::SetMaintenance { worker, change } => self.set_maintenance(ctx, worker, *change),
            Command::DrainOverdue { worker, incarnation } => self.drain_overdue(ctx, worker, *incarnation),
            Command::SetWorkerQueue { worker, queue } => match self.workers.get_mut(worker) {
                Some(w) if w.state == WorkerState::Ready => {
                    w.queue = *queue;
                    Response::Noted
                }
                _ => Response::Invalid { reason: Refusal::NoReadyWorker(worker.clone()) },
            },
            Command::SetJournalRetention(retention) => match retention.validate() {
                Ok(()) => {
                    self.journal.set_retention(*retention, ctx.at_ms);
                    Response::Noted
                }
                Err(e) => Response::Invalid { reason: Refusal::BadRetention(e) },
            },
            Command::TaskRevoked { task, fence, worker } => self.task_revoked(ctx, *task, *fence, worker),
            Command::SetSharing(sharing) => {
                self.sharing = *sharing;
                Response::Noted
            }
            Command::SetJobRetention(retention) => match retention.validate() {
                Ok(()) => {
                    self.set_job_retention(*retention, ctx.at_ms);
                    Response::Noted
                }
                Err(e) => Response::Invalid { reason: Refusal::BadJobRetention(e) },
            },
            Command::PurgeJobs { jobs } => Response::JobsPurged(self.purge_jobs(jobs, ctx.at_ms)),
        }
    }

    /// A queued attempt its worker never started goes back to waiting. It costs the task no
    /// retry and no loss: nothing ran.
    fn task_revoked(&mut self, ctx: ApplyCtx, id: TaskId, fence: Fence, worker: &str) -> Response {
        let Some(job) = self.jobs.get_mut(&id.job) else {
            return Response::Stale { reason: StaleReason::NoJob(id.job) };
        };
        let cpus = job.spec.cpus;
        let Some(task) = task_mut(job, id.slot) else {
            return Response::Stale { reason: StaleReason::NoTask(id) };
        };
        match &task.state {
            TaskState::Assigned { worker: w, fence: f, .. } if *f == fence && w == worker => {}
            other => return Response::Stale { reason: StaleReason::for_state(other, fence) },
        }
        wait_again(job, id.slot, false);
        self.release(ctx, worker, id, cpus);
        self.after_task_change(ctx, id.job);
        Response::Revoked
    }

    pub(super) fn submit(&mut self, ctx: ApplyCtx, spec: &JobSpec, request_id: Option<&str>) -> Response {
        if let Some(existing) = request_id.and_then(|r| self.request_ids.get(r)) {
            return Response::JobSubmitted { job: *existing, duplicate: true };
        }
        if let Err(e) = spec.validate() {
            return Response::Invalid { reason: Refusal::BadSpec(e) };
        }
        let id = self.next_job_id;
        self.next_job_id += 1;
        let pending = spec.indices();
        let total = pending.len();
        let job = Job {
            id,
            spec: spec.clone(),
            submitted_at: ctx.at_ms,
            finished_at: None,
            state: JobState::Waiting,
            total,
            pending,
            tasks: BTreeMap::new(),
            settled: BTreeMap::new(),
            never_ran: IndexSet::new(),
            reduce: None,
            reduce_recorded: None,
            reduce_pending: false,
            counts: TaskCounts { waiting: total, ..Default::default() },
            failure: None,
            measured: Measured::default(),
        };
        self.queue.insert((Reverse(spec.priority), id));
        self.jobs.insert(id, job);
        if let Some(r) = request_id {
            self.request_ids.insert(r.to_string(), id);
            self.request_order.push_back(r.to_string());
            while self.request_order.len() > REQUEST_ID_WINDOW {
                if let Some(old) = self.request_order.pop_front() {
                    self.request_ids.remove(&old);
                }
            }
        }
        self.journal.record(ctx.at_ms, EventKind::JobSubmitted { job: id, tasks: total });
        Response::JobSubmitted { job: id, duplicate: false }
    }

    pub(super) fn cancel(&mut self, ctx: ApplyCtx, id: JobId) -> Response {
        let Some(job) = self.jobs.get_mut(&id) else {
            return Response::Invalid { reason: Refusal::NoJob(id) };
        };
        match job.state {
            JobState::Cancelled => return Response::JobCancelled { job: id, kill: Vec::new() },
            s if s.is_terminal() => return Response::Invalid { reason: Refusal::JobFinished { job: id, state: s } },
            _ => {}
        }
        let mut kill: Vec<Kill> = Vec::new();
        let waiting = job.pending.len();
        let mut never_ran = std::mem::take(&mut job.pending);
        for &index in job.tasks.keys() {
            // A re-queued task ran before: it gets a record like any other.
            never_ran.remove(index);
        }
        // Tasks cancelled earlier because a task they needed failed stay among them.
        job.never_ran.union_with(&never_ran);
        job.reduce_pending = false;
        job.counts.waiting -= waiting;
        job.counts.cancelled += waiting;
        for (&index, task) in job.tasks.iter_mut() {
            if task.state == TaskState::Waiting {
                // A re-queued task: counted among the waiting ones cleared above.
                task.state = TaskState::Cancelled;
                continue;
            }
            if let Some((worker, fence)) = task.state.in_flight() {
                kill.push(Assigned { task: TaskId::array(id, index), worker: worker.to_string(), fence });
                match task.state {
                    TaskState::Assigned { .. } => job.counts.assigned -= 1,
                    _ => job.counts.running -= 1,
                }
                job.counts.cancelled += 1;
                task.state = TaskState::Cancelled;
            }
        }
        if let Some(reduce) = job.reduce.as_mut() {
            if reduce.state == TaskState::Waiting {
                reduce.state = TaskState::Cancelled;
            }
            if let Some((worker, fence)) = reduce.state.in_flight() {
                kill.push(Assigned { task: TaskId::reduce(id), worker: worker.to_string(), fence });
                reduce.state = TaskState::Cancelled;
            }
        }
        let cpus = job.spec.cpus;
        let mut settle: Vec<TaskId> = job.tasks.keys().map(|&i| TaskId::array(id, i)).collect();
        if job.reduce.as_ref().is_some_and(|r| r.state == TaskState::Cancelled) {
            settle.push(TaskId::reduce(id));
        }
        for k in &kill {
            self.release(ctx, &k.worker, k.task, cpus);
        }
        for task in settle {
            self.settle(task);
        }
        self.finish_job(ctx, id, JobState::Cancelled);
        Response::JobCancelled { job: id, kill }
    }

    fn register_worker(&mut self, ctx: ApplyCtx, info: &WorkerInfo) -> Response {
        // An operator's decision outlives a restart (the worker stays out of service until
        // uncordoned); a worker that drained itself to stop comes back in service.
        let maintenance = match self.workers.get(&info.name).map(|w| w.maintenance) {
            Some(Maintenance::Cordoned)
            | Some(Maintenance::Draining { by_worker: false, .. })
            | Some(Maintenance::Drained { by_worker: false }) => Maintenance::Cordoned,
            _ => Maintenance::InService,
        };
        if let Some(existing) = self.workers.get(&info.name) {
            if existing.state == WorkerState::Ready && existing.instance == info.instance {
                // The same process registering twice (a retried proposal): nothing to do.
                return Response::WorkerRegistered { incarnation: existing.incarnation, kill: Vec::new() };
            }
        }
        // Refused before anything changes: a bad registration must not cost the live process
        // under the same name its tasks.
        if info.cpus == 0 {
            return Response::Invalid { reason: Refusal::WorkerWithoutCpus };
        }
        if let Some(bad) = info.resources.keys().find(|n| !crate::model::valid_resource_name(n)) {
            return Response::Invalid { reason: Refusal::BadResourceName(bad.clone()) };
        }
        if self.workers.get(&info.name).is_some_and(|w| w.state == WorkerState::Ready) {
            self.lose_worker(ctx, &info.name, LostReason::Restarted);
        }
        let incarnation = self.next_incarnation;
        self.next_incarnation += 1;
        self.workers.insert(
            info.name.clone(),
            Worker {
                name: info.name.clone(),
                instance: info.instance,
                incarnation,
                cpus: info.cpus,
                queue: info.queue,
                memory: info.memory,
                resources: info.resources.clone(),
                labels: info.labels.clone(),
                state: WorkerState::Ready,
                cpus_used: 0,
                tasks: BTreeMap::new(),
                joined_at: ctx.at_ms,
                lost_at: None,
                lost_reason: None,
                grants: BTreeMap::new(),
                maintenance,
            },
        );
        self.forget_old_lost_workers();
        self.journal.record(ctx.at_ms, EventKind::WorkerJoined { worker: info.name.clone(), cpus: info.cpus });
        self.pool_worker_joined(ctx, &info.name);
        self.note_peers_changed(ctx);
        Response::WorkerRegistered { incarnation, kill: Vec::new() }
    }

    fn worker_lost(&mut self, ctx: ApplyCtx, name: &str, incarnation: u64, reason: LostReason) -> Response {
        match self.workers.get(name) {
            Some(w) if w.state == WorkerState::Ready && w.incarnation == incarnation => {
                let requeued = self.lose_worker(ctx, name, reason);
                Response::WorkerLost { requeued }
            }
            _ => Response::Noted,
        }
    }

    /// Marks a worker lost and puts every attempt it held back in the queue.
    fn lose_worker(&mut self, ctx: ApplyCtx, name: &str, reason: LostReason) -> u64 {
        let Some(worker) = self.workers.get_mut(name) else { return 0 };
        worker.state = WorkerState::Lost;
        worker.lost_at = Some(ctx.at_ms);
        worker.lost_reason = Some(reason);
        worker.cpus_used = 0;
        worker.grants.clear();
        let held = std::mem::take(&mut worker.tasks);
        let requeued = held.len() as u64;
        self.journal.record(ctx.at_ms, EventKind::WorkerLost { worker: name.to_string(), reason, requeued });
        self.note_peers_changed(ctx);
        self.drop_copies(ctx, name, None, crate::workflow::CopyLoss::WorkerLost);
        for (task, fence) in held {
            self.requeue_after_loss(ctx, task, fence, name);
        }
        requeued
    }

    fn requeue_after_loss(&mut self, ctx: ApplyCtx, id: TaskId, fence: Fence, worker: &str) {
        let Some(job) = self.jobs.get_mut(&id.job) else { return };
        let Some(task) = task_mut(job, id.slot) else { return };
        if task.state.in_flight().map(|(_, f)| f) != Some(fence) {
            debug_assert!(false, "worker {worker} held {id} {fence} but the task is {:?}", task.state);
            return;
        }
        task.losses += 1;
        let was_running = matches!(task.state, TaskState::Running { .. });
        if task.losses > MAX_WORKER_LOSSES {
            let reason = TaskFailure::WorkerLost { times: task.losses, last_worker: worker.to_string() };
            task.state = TaskState::Failed;
            self.journal
                .record(ctx.at_ms, EventKind::TaskFailed { task: id, attempt: fence.attempt, reason: reason.clone() });
            if let TaskSlot::Array(_) = id.slot {
                move_count(&mut job.counts, was_running, Dest::Failed);
            }
            job.failure.get_or_insert(JobFailure { task: id, reason });
            self.settle(id);
        } else {
            wait_again(job, id.slot, was_running);
            self.journal.record(
                ctx.at_ms,
                EventKind::TaskRescheduled {
                    task: id,
                    attempt: fence.attempt,
                    reason: RescheduleReason::WorkerLost(worker.to_string()),
                },
            );
        }
        self.after_task_change(ctx, id.job);
    }

    fn assign(&mut self, ctx: ApplyCtx, placements: &[Placement]) -> Response {
        let mut runs = Vec::with_capacity(placements.len());
        for p in placements {
            if let Some(fence) = self.try_assign(ctx, p) {
                runs.push(Assigned { task: p.task, worker: p.worker.clone(), fence });
            }
        }
        Response::Assigned { runs }
    }

    /// Re-checks one planned placement against the current state; `None` if it no longer fits.
    fn try_assign(&mut self, ctx: ApplyCtx, p: &Placement) -> Option<Fence> {
        let job = self.jobs.get_mut(&p.task.job)?;
        let worker = self.workers.get_mut(&p.worker)?;
        let cpus = job.spec.cpus;
        if job.state.is_terminal()
            || !worker.takes_work()
            || worker.free_capacity() < cpus
            || worker.cpus < cpus
            || !job.spec.selects(&worker.labels)
            || !worker.has_resources_for(&job.spec)
        {
            return None;
        }
        let task = match p.task.slot {
            TaskSlot::Array(i) => {
                // A task waiting for tasks it needs is not placed (no leader plans it; a
                // placement planned from an older state is refused here).
                if self.added.held.tasks.get(&p.task.job).is_some_and(|h| h.contains(i)) || !job.pending.remove(i) {
                    return None;
                }
                job.counts.waiting -= 1;
                job.counts.assigned += 1;
                job.tasks.entry(i).or_insert_with(Task::new)
            }
            TaskSlot::Reduce => {
                if !job.reduce_pending {
                    return None;
                }
                job.reduce_pending = false;
                job.reduce.get_or_insert_with(Task::new)
            }
        };
        task.attempts += 1;
        let fence = Fence { term: ctx.term, attempt: task.attempts };
        task.state = TaskState::Assigned { worker: p.worker.clone(), fence, since: ctx.at_ms };
        worker.cpus_used += cpus;
        worker.tasks.insert(p.task, fence);
        worker.grant(p.task, &job.spec);
        self.last_assignment_term = ctx.term;
        if job.state == JobState::Waiting {
            job.state = JobState::Running;
        }
        self.refresh_queue(p.task.job);
        Some(fence)
    }

    fn task_started(&mut self, ctx: ApplyCtx, id: TaskId, fence: Fence, worker: &str) -> Response {
        let Some(job) = self.jobs.get_mut(&id.job) else {
            return Response::Stale { reason: StaleReason::NoJob(id.job) };
        };
        let is_array = matches!(id.slot, TaskSlot::Array(_));
        let Some(task) = task_mut(job, id.slot) else {
            return Response::Stale { reason: StaleReason::NoTask(id) };
        };
        match &task.state {
            TaskState::Assigned { worker: w, fence: f, .. } if *f == fence && w == worker => {
                task.state = TaskState::Running { worker: worker.to_string(), fence, since: ctx.at_ms };
                if is_array {
                    job.counts.assigned -= 1;
                    job.counts.running += 1;
                }
                Response::Started
            }
            TaskState::Running { worker: w, fence: f, .. } if *f == fence && w == worker => Response::Duplicate,
            other => Response::Stale { reason: StaleReason::for_state(other, fence) },
        }
    }

    fn task_finished(&mut self, ctx: ApplyCtx, id: TaskId, fence: Fence, worker: &str, outcome: &Outcome) -> Response {
        let current = self.jobs.get(&id.job).and_then(|job| match (job.task(id.slot), id.slot) {
            (Some(task), _) => {
                let duplicate = match &task.result {
                    Some(r) => r.fence == fence,
                    // A finished reduce step's result is stored; memory kept its fence.
                    None => job.reduce_recorded == Some(fence),
                };
                Some((task.state.clone(), duplicate))
            }
            (None, TaskSlot::Array(i)) => job.finished(i).map(|s| {
                let duplicate = match s.recorded {
                    Some(recorded) => recorded == fence,
                    // Succeeded at attempt 1, the only attempt it had (the common case, kept
                    // without a fence): attempt 1 is the recorded one. A settled task without
                    // a recorded result has none to repeat.
                    None => !job.settled.contains_key(&i) && fence.attempt == 1,
                };
                (s.state, duplicate)
            }),
            (None, TaskSlot::Reduce) => None,
        });
        let (state, duplicate) = match current {
            Some(c) => c,
            None => {
                return self.reject(ctx, id, fence, worker, StaleReason::NeverAssigned(id));
            }
        };
        let live = matches!(state.in_flight(), Some((w, f)) if f == fence && w == worker);
        if !live {
            if duplicate {
                return Response::Duplicate;
            }
            return self.reject(ctx, id, fence, worker, StaleReason::for_state(&state, fence));
        }
        let was_running = matches!(state, TaskState::Running { .. });
        // An input missing because every copy of it was lost and is being made again: the
        // task waits for that (no failure counted) rather than failing for it.
        let wanted_copies = self.wanted_copies(id.job);
        let input_rerun = match &outcome.outputs.error {
            Some(crate::workflow::OutputError::InputUnavailable { task: from, .. }) => {
                self.rerun_under_way(from.job).map(|rerun| (from.job, rerun))
            }
            _ => None,
        };
        let cpus = self.jobs[&id.job].spec.cpus;
        self.release(ctx, worker, id, cpus);
        let job = self.jobs.get_mut(&id.job).expect("job checked above");
        let retries = job.spec.retries;
        if let TaskSlot::Array(_) = id.slot {
            job.measured.total_ms = job.measured.total_ms.saturating_add(outcome.duration_ms);
            job.measured.count += 1;
        }
        let task = task_mut(job, id.slot).expect("task checked above");
        // The result keeps what its encoding holds; the outputs and their error are kept
        // beside it, so that a replica restored from a snapshot equals one that applied this.
        let mut kept = outcome.clone();
        kept.outputs = Default::default();
        task.result = Some(TaskResult { fence, worker: worker.to_string(), outcome: kept, finished_at: ctx.at_ms });
        match &outcome.outputs.error {
            Some(e) => {
                self.added.output_errors.insert(id, e.clone());
            }
            None => {
                self.added.output_errors.remove(&id);
            }
        }
        // The latest recorded attempt's long logs (or none: an earlier attempt's go).
        if outcome.outputs.logs.is_empty() {
            self.added.logs.remove(&id);
        } else {
            let logs = crate::workflow::TaskLogs { files: outcome.outputs.logs.clone(), holder: worker.to_string() };
            self.added.logs.insert(id, logs);
        }

        let dest = if outcome.succeeded() {
            task.state = TaskState::Succeeded;
            if !outcome.outputs.files.is_empty() {
                // Kept beside the result: the record's encoding (0.1.0's) does not hold them.
                let outputs = crate::workflow::TaskOutputs {
                    files: outcome.outputs.files.clone(),
                    holders: outcome.outputs.holders.clone(),
                };
                if outputs.holders.len() < wanted_copies {
                    self.added.short_of_copies.insert(id);
                }
                self.added.outputs.insert(id, outputs);
            }
            Dest::Succeeded
        } else if let Some((from, rerun)) = input_rerun {
            task.state = TaskState::Waiting;
            self.journal.record(
                ctx.at_ms,
                EventKind::TaskRescheduled {
                    task: id,
                    attempt: fence.attempt,
                    reason: RescheduleReason::InputRerun { job: from, rerun },
                },
            );
            Dest::Waiting
        } else {
            task.failures += 1;
            let failure = outcome.failure();
            if task.failures <= retries {
                task.state = TaskState::Waiting;
                self.journal.record(
                    ctx.at_ms,
                    EventKind::TaskRescheduled {
                        task: id,
                        attempt: fence.attempt,
                        reason: RescheduleReason::Retry { failure, retry: task.failures, retries },
                    },
                );
                Dest::Waiting
            } else {
                task.state = TaskState::Failed;
                let reason = TaskFailure::Process(failure);
                self.journal.record(
                    ctx.at_ms,
                    EventKind::TaskFailed { task: id, attempt: fence.attempt, reason: reason.clone() },
                );
                job.failure.get_or_insert(JobFailure { task: id, reason });
                Dest::Failed
            }
        };
        match id.slot {
            TaskSlot::Array(i) => {
                move_count(&mut job.counts, was_running, dest);
                if dest == Dest::Waiting {
                    job.pending.insert(i);
                }
            }
            TaskSlot::Reduce => {
                if dest == Dest::Waiting {
                    job.reduce_pending = true;
                }
            }
        }
        if dest != Dest::Waiting {
            self.settle(id);
        }
        if dest == Dest::Succeeded {
            self.adopt_rerun_outputs(id);
            self.needed_task_succeeded(id);
        }
        if dest == Dest::Failed {
            self.needed_task_failed(ctx, id);
        }
        self.after_task_change(ctx, id.job);
        Response::ResultRecorded
    }

    /// A task reached its final state: its record goes to the stored records, and memory keeps
    /// only what answering later reports about it needs.
    fn settle(&mut self, id: TaskId) {
        let Some(job) = self.jobs.get_mut(&id.job) else { return };
        match id.slot {
            TaskSlot::Array(i) => {
                let Some(task) = job.tasks.remove(&i) else { return };
                if !(task.state == TaskState::Succeeded && task.attempts == 1) {
                    let recorded = task.result.as_ref().map(|r| r.fence);
                    job.settled.insert(i, Settled { state: task.state.clone(), attempts: task.attempts, recorded });
                }
                // The entry's index is filled in once the entry is applied.
                self.record_ops.0.push(RecordOp::Put { entry: 0, task: id, record: Box::new(task) });
            }
            TaskSlot::Reduce => {
                let Some(reduce) = job.reduce.as_mut() else { return };
                job.reduce_recorded = reduce.result.as_ref().map(|r| r.fence);
                let record = Task { result: reduce.result.take(), ..reduce.clone() };
                self.record_ops.0.push(RecordOp::Put { entry: 0, task: id, record: Box::new(record) });
            }
        }
    }

    fn reject(&mut self, ctx: ApplyCtx, task: TaskId, fence: Fence, worker: &str, reason: StaleReason) -> Response {
        self.journal.record(
            ctx.at_ms,
            EventKind::ResultRejected { task, fence, worker: worker.to_string(), reason: reason.clone() },
        );
        Response::Stale { reason }
    }

    /// Frees the cpus a worker held for one attempt (a draining worker that held its last
    /// one is drained).
    fn release(&mut self, ctx: ApplyCtx, worker: &str, task: TaskId, cpus: u32) {
        let Some(w) = self.workers.get_mut(worker) else { return };
        if w.tasks.remove(&task).is_some() {
            w.cpus_used -= cpus;
            w.grants.remove(&task);
            self.note_drained(ctx, worker);
        }
    }

    /// A draining worker that holds nothing is drained.
    fn note_drained(&mut self, ctx: ApplyCtx, name: &str) {
        let Some(w) = self.workers.get_mut(name) else { return };
        if let Maintenance::Draining { by_worker, .. } = w.maintenance {
            if w.tasks.is_empty() && w.state == WorkerState::Ready {
                w.maintenance = Maintenance::Drained { by_worker };
                self.journal.record(ctx.at_ms, EventKind::WorkerDrained { worker: name.to_string() });
                if by_worker {
                    self.pool_worker_stopping(ctx, name);
                }
            }
        }
    }

    pub(super) fn set_maintenance(&mut self, ctx: ApplyCtx, name: &str, change: MaintenanceChange) -> Response {
        let Some(w) = self.workers.get_mut(name).filter(|w| w.state == WorkerState::Ready) else {
            return Response::Invalid { reason: Refusal::NoReadyWorker(name.to_string()) };
        };
        w.maintenance = match (change, w.maintenance) {
            (MaintenanceChange::Cordon, _) => Maintenance::Cordoned,
            (MaintenanceChange::Uncordon, _) => Maintenance::InService,
            // A worker that drains itself to stop keeps an operator's decision: it stays out of
            // service after its restart, and an operator's earlier deadline holds.
            (MaintenanceChange::Drain { deadline_ms, by_worker: true }, current)
                if current != Maintenance::InService
                    && !matches!(
                        current,
                        Maintenance::Draining { by_worker: true, .. } | Maintenance::Drained { by_worker: true }
                    ) =>
            {
                let mine = deadline_ms.map(|d| ctx.at_ms.saturating_add(d));
                let deadline = match current {
                    Maintenance::Draining { deadline: Some(theirs), .. } => {
                        Some(mine.map_or(theirs, |m| m.min(theirs)))
                    }
                    _ => mine,
                };
                match current {
                    Maintenance::Drained { .. } => current,
                    _ => Maintenance::Draining { deadline, by_worker: false },
                }
            }
            (MaintenanceChange::Drain { deadline_ms, by_worker }, _) => {
                Maintenance::Draining { deadline: deadline_ms.map(|d| ctx.at_ms.saturating_add(d)), by_worker }
            }
        };
        self.journal.record(ctx.at_ms, EventKind::WorkerMaintenance { worker: name.to_string(), change });
        self.note_drained(ctx, name);
        self.note_peers_changed(ctx);
        Response::Noted
    }

    /// A draining worker's deadline passed: every attempt it holds waits again, with a new
    /// attempt number (its late results are then refused); it is drained.
    fn drain_overdue(&mut self, ctx: ApplyCtx, name: &str, incarnation: u64) -> Response {
        let Some(w) = self.workers.get(name).filter(|w| w.incarnation == incarnation) else { return Response::Noted };
        if !w.drain_overdue(ctx.at_ms) {
            return Response::Noted;
        }
        let held: Vec<(TaskId, Fence)> = w.tasks.iter().map(|(t, f)| (*t, *f)).collect();
        let mut kill = Vec::with_capacity(held.len());
        for (id, fence) in held {
            let Some(job) = self.jobs.get_mut(&id.job) else { continue };
            let cpus = job.spec.cpus;
            let Some(task) = task_mut(job, id.slot) else { continue };
            if task.state.in_flight().map(|(_, f)| f) != Some(fence) {
                continue;
            }
            let was_running = matches!(task.state, TaskState::Running { .. });
            wait_again(job, id.slot, was_running);
            self.journal.record(
                ctx.at_ms,
                EventKind::TaskRescheduled {
                    task: id,
                    attempt: fence.attempt,
                    reason: RescheduleReason::DrainDeadline(name.to_string()),
                },
            );
            self.release(ctx, name, id, cpus);
            self.after_task_change(ctx, id.job);
            kill.push(Kill { task: id, worker: name.to_string(), fence });
        }
        Response::AttemptsTaken { kill }
    }

    /// Moves a job forward after one of its tasks changed: starts the reduce step, or finishes
    /// the job, and keeps the scheduling queue in step.
    fn after_task_change(&mut self, ctx: ApplyCtx, id: JobId) {
        let Some(job) = self.jobs.get_mut(&id) else { return };
        if job.state.is_terminal() {
            self.refresh_queue(id);
            return;
        }
        let next = if job.counts.unfinished() > 0 {
            None
        } else if job.counts.failed > 0 {
            Some(JobState::Failed)
        } else if job.spec.reduce.is_none() {
            Some(JobState::Succeeded)
        } else {
            match job.reduce.as_ref().map(|r| &r.state) {
                None if !job.reduce_pending => {
                    job.reduce_pending = true;
                    job.state = JobState::Reducing;
                    None
                }
                Some(TaskState::Succeeded) => Some(JobState::Succeeded),
                Some(TaskState::Failed) => Some(JobState::Failed),
                _ => {
                    job.state = JobState::Reducing;
                    None
                }
            }
        };
        match next {
            Some(state) => self.finish_job(ctx, id, state),
            None => self.refresh_queue(id),
        }
    }

    fn finish_job(&mut self, ctx: ApplyCtx, id: JobId, state: JobState) {
        let Some(job) = self.jobs.get_mut(&id) else { return };
        job.state = state;
        job.finished_at = Some(ctx.at_ms);
        job.pending.clear();
        self.added.held.tasks.remove(&id);
        self.added.held.left.remove(&id);
        job.reduce_pending = false;
        self.queue.remove(&(Reverse(job.spec.priority), id));
        self.journal.record(ctx.at_ms, EventKind::JobFinished { job: id, state });
        self.note_finished(id, ctx.at_ms);
        self.ended_now.0.push((id, state));
    }

    /// Keeps `queue` holding exactly the jobs with waiting work.
    pub(super) fn refresh_queue(&mut self, id: JobId) {
        let Some(job) = self.jobs.get(&id) else { return };
        let key = (Reverse(job.spec.priority), id);
        if self.has_placeable_work(job) && !self.added.waiting_on.contains_key(&id) {
            self.queue.insert(key);
        } else {
            self.queue.remove(&key);
        }
    }

    fn forget_old_lost_workers(&mut self) {
        let lost = self.workers.values().filter(|w| w.state == WorkerState::Lost).count();
        if lost <= LOST_WORKERS_KEPT {
            return;
        }
        let mut by_age: Vec<(Millis, String)> = self
            .workers
            .values()
            .filter(|w| w.state == WorkerState::Lost)
            .map(|w| (w.lost_at.unwrap_or(0), w.name.clone()))
            .collect();
        by_age.sort();
        for (_, name) in by_age.into_iter().take(lost - LOST_WORKERS_KEPT) {
            self.workers.remove(&name);
        }
    }
}

/// Puts an attempt's task (assigned, or running if `was_running`) back among the job's
/// waiting tasks, to be placed again.
fn wait_again(job: &mut Job, slot: TaskSlot, was_running: bool) {
    if let Some(task) = task_mut(job, slot) {
        task.state = TaskState::Waiting;
    }
    match slot {
        TaskSlot::Array(i) => {
            job.pending.insert(i);
            move_count(&mut job.counts, was_running, Dest::Waiting);
        }
        TaskSlot::Reduce => job.reduce_pending = true,
    }
}

fn task_mut(job: &mut Job, slot: TaskSlot) -> Option<&mut Task> {
    match slot {
        TaskSlot::Array(i) => job.tasks.get_mut(&i),
        TaskSlot::Reduce => job.reduce.as_mut(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dest {
    Waiting,
    Succeeded,
    Failed,
}

/// Moves one array task out of assigned/running into `dest` in the job's counters.
fn move_count(counts: &mut TaskCounts, was_running: bool, dest: Dest) {
    if was_running {
        counts.running -= 1;
    } else {
        counts.assigned -= 1;
    }
    match dest {
        Dest::Waiting => counts.waiting += 1,
        Dest::Succeeded => counts.succeeded += 1,
        Dest::Failed => counts.failed += 1,
    }
}
