//! The scheduler: a pure function from a state snapshot to a placement plan.
//!
//! Guarantees (checked by property tests):
//! - a task is placed only on a ready worker whose labels match the job's selector, that has
//!   at least the job's cpus, and whose capacity (its cpus plus its queue) covers the job's
//!   cpus, counting what this same plan already placed there; free cpus are filled before
//!   any queue;
//! - jobs are served in priority order; within a priority they take turns (the job holding
//!   the fewest attempts first) under the default `Fair` sharing, or go in submission order
//!   under `Fifo`; a job that cannot be placed does not block others from using other
//!   workers (backfill);
//! - within a job, each task goes to the eligible worker with the fewest of the job's attempts
//!   in its spread group, then the best affinity rank, then the least expected work per cpu
//!   (its attempts, running and queued, each weighed by its job's measured mean run time), ties
//!   broken by name, so the plan is deterministic;
//! - named resources and memory are never given out beyond what a worker offers.
//!
//! The plan is only a proposal: the leader commits it as one `Assign` command, and applying it
//! re-checks every placement against the state of that moment.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use crate::command::Placement;
use crate::index_set::IndexSet;
use crate::model::Sharing;
use crate::model::{Fence, JobSpec, Millis, TaskId, TaskSlot};
use crate::state::{ClusterState, Job, TaskState, Worker, WorkerState};

/// Capacity of one worker while a plan is being built.
struct Slot<'a> {
    worker: &'a Worker,
    cpus: u32,
    capacity: u32,
    used: u32,
    /// Expected cpu-milliseconds of the attempts it holds, running or queued, counting this
    /// plan's: what load is measured by.
    work: u64,
    /// Named resources and memory this plan already gave out here (beyond the worker's grants).
    planned: BTreeMap<&'a str, u32>,
    planned_memory: u64,
    /// It may hold tasks of jobs with options (limits and others, see [`plan_for`]).
    enforces_limits: bool,
}

/// The two rounds of placement for each job: first onto free cpus (the task starts at once),
/// then into workers' queues (it starts as soon as a cpu frees, without a round trip).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Round {
    Run,
    Queue,
}

impl<'a> Slot<'a> {
    /// Room for `cpus` more in this round, and the total that load is measured against.
    fn room(&self, round: Round) -> (u32, u32) {
        match round {
            Round::Run => (self.cpus.saturating_sub(self.used), self.cpus),
            Round::Queue => (self.capacity.saturating_sub(self.used), self.capacity),
        }
    }

    /// Whether the named resources and memory `spec` asks for are free here, counting this plan.
    fn has_resources_for(&self, spec: &JobSpec) -> bool {
        if !spec.holds_resources() {
            return true;
        }
        let w = self.worker;
        spec.resources.iter().all(|(name, units)| {
            let offered = w.resources.get(name).copied().unwrap_or(0);
            let planned = self.planned.get(name.as_str()).copied().unwrap_or(0);
            offered.saturating_sub(w.units_held(name) + planned) >= *units
        }) && spec
            .memory
            .is_none_or(|m| w.memory.unwrap_or(0).saturating_sub(w.memory_held() + self.planned_memory) >= m)
    }

    fn take(&mut self, job: &'a Job) {
        let spec = &job.spec;
        self.used += spec.cpus;
        self.work += expected_work(job);
        for (name, units) in &spec.resources {
            *self.planned.entry(name.as_str()).or_default() += units;
        }
        self.planned_memory += spec.memory.unwrap_or(0);
    }
}

/// Expected run time of a task whose job has no measured run yet.
pub const UNMEASURED_MS: u64 = 1_000;

/// The cpu-milliseconds one task of `job` is expected to take: its job's mean run time so far
/// (a task that ran 0 ms still counts 1), times its cpus.
fn expected_work(job: &Job) -> u64 {
    job.measured.mean_ms().unwrap_or(UNMEASURED_MS).max(1) * u64::from(job.spec.cpus)
}

/// Expected work a worker holds, in cpu-milliseconds.
fn held_work(state: &ClusterState, worker: &Worker) -> u64 {
    // Attempts are ordered by job: look each job up once.
    let mut last: Option<(crate::model::JobId, u64)> = None;
    worker
        .tasks
        .keys()
        .map(|t| match last {
            Some((job, work)) if job == t.job => work,
            _ => {
                let work = state.job(t.job).map_or(UNMEASURED_MS, expected_work);
                last = Some((t.job, work));
                work
            }
        })
        .sum()
}

/// A worker's load, expected work per cpu, compared without floats: a/b < c/d <=> a*d < c*b.
#[derive(Clone, Copy)]
struct Load {
    work: u64,
    cpus: u32,
}

impl Ord for Load {
    fn cmp(&self, other: &Self) -> Ordering {
        (u128::from(self.work) * u128::from(other.cpus)).cmp(&(u128::from(other.work) * u128::from(self.cpus)))
    }
}
impl PartialOrd for Load {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Load {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Load {}

/// Where a worker stands for one job, best first: fewest of the job's attempts in its spread
/// group, then its affinity rank (preferred first, avoided last), then its load, then its
/// name order. Every part only grows while a plan is built, so a heap of these with lazily
/// refreshed entries always pops the true best.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Standing {
    spread: u64,
    rank: i32,
    load: Load,
    slot: usize,
}

/// One job's view of the spread groups: its attempts per value of the spread label.
struct Spread<'a> {
    label: &'a str,
    held: HashMap<Option<&'a str>, u64>,
}

impl<'a> Spread<'a> {
    fn new(state: &'a ClusterState, job: &'a Job) -> Option<Self> {
        let label = job.spec.affinity.spread.as_deref()?;
        let mut held = HashMap::new();
        let (first, last) = (TaskId::array(job.id, 0), TaskId::reduce(job.id));
        for w in state.workers().filter(|w| w.state == WorkerState::Ready) {
            let n = w.tasks.range(first..=last).count() as u64;
            if n > 0 {
                *held.entry(w.labels.get(label).map(String::as_str)).or_default() += n;
            }
        }
        Some(Spread { label, held })
    }

    fn group(&self, worker: &'a Worker) -> Option<&'a str> {
        worker.labels.get(self.label).map(String::as_str)
    }
}

/// Places up to `max` waiting tasks. Returns an empty plan when nothing fits.
///
/// Jobs of a higher priority go first. Within a priority the cluster's [`Sharing`] policy
/// decides: `Fair` (the default) takes turns between the jobs that wait, the job holding the
/// fewest attempts first, so a short job submitted behind a huge array starts at once;
/// `Fifo` serves them in submission order. A job that cannot be placed never blocks others
/// from using other workers (backfill).
pub fn plan(state: &ClusterState, max: usize) -> Vec<Placement> {
    plan_for(state, max, &|_| true)
}

/// [`plan`], where a task of a job with options of release 0.2.0 (limits, inputs, an output
/// policy) goes only to a worker `enforces_limits` names (one whose release reads them; the
/// leader knows it from the worker's session, the state does not).
pub fn plan_for(state: &ClusterState, max: usize, enforces_limits: &dyn Fn(&str) -> bool) -> Vec<Placement> {
    let mut slots: Vec<Slot> = state
        .workers()
        .filter(|w| w.takes_work() && w.free_capacity() > 0)
        .map(|w| Slot {
            enforces_limits: enforces_limits(&w.name),
            worker: w,
            cpus: w.cpus,
            capacity: w.cpus + w.queue,
            used: w.cpus_used,
            work: held_work(state, w),
            planned: BTreeMap::new(),
            planned_memory: 0,
        })
        .collect();
    let mut plan = Vec::new();
    if slots.is_empty() {
        return plan;
    }
    let jobs: Vec<&Job> = state.queued_jobs().filter(|j| j.has_waiting_work()).collect();
    let mut group: Vec<&Job> = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        group.push(job);
        let next_shares = state.sharing() == Sharing::Fair
            && jobs.get(i + 1).is_some_and(|next| next.spec.priority == job.spec.priority);
        if !next_shares {
            place_group(state, std::mem::take(&mut group), &mut slots, &mut plan, max);
        }
        if plan.len() >= max {
            break;
        }
    }
    plan
}

/// One job's turn-taking state within a group.
struct Turn<'a> {
    job: &'a Job,
    waiting: std::iter::Peekable<Box<dyn Iterator<Item = TaskId> + 'a>>,
    /// Eligible workers, best first (entries may be stale: refreshed when popped).
    heap: BinaryHeap<Reverse<Standing>>,
    /// Its affinity rank on each slot; `None` without affinity (all rank alike).
    ranks: Option<Vec<i32>>,
    spread: Option<Spread<'a>>,
    /// Attempts it holds, counting this plan's placements: the fewest goes next.
    held: u64,
    /// Nothing more to place in this round (no task left, or no worker with room).
    done: bool,
}

impl Turn<'_> {
    fn standing(&self, slots: &[Slot<'_>], slot: usize) -> Standing {
        let s = &slots[slot];
        let spread = self.spread.as_ref().map_or(0, |sp| sp.held.get(&sp.group(s.worker)).copied().unwrap_or(0));
        let rank = self.ranks.as_ref().map_or(0, |r| r[slot]);
        Standing { spread, rank, load: Load { work: s.work, cpus: s.cpus }, slot }
    }
}

/// Places the waiting tasks of jobs that share a priority (one job alone under `Fifo`): free
/// cpus first, then workers' queues; each placement on the best eligible worker for the job
/// ([`Standing`]); the job holding the fewest attempts places next.
fn place_group<'a>(
    state: &'a ClusterState,
    group: Vec<&'a Job>,
    slots: &mut [Slot<'a>],
    plan: &mut Vec<Placement>,
    max: usize,
) {
    // One task iterator per job for both rounds: a task placed on a free cpu is not queued too.
    let mut turns: Vec<Turn<'a>> = group
        .iter()
        .map(|job| {
            let affinity = &job.spec.affinity;
            let ranks = (!affinity.prefer.is_empty() || !affinity.avoid.is_empty())
                .then(|| slots.iter().map(|s| affinity.rank(&s.worker.labels)).collect());
            Turn {
                job,
                waiting: waiting_tasks(job, state.held_tasks(job.id)).peekable(),
                heap: BinaryHeap::new(),
                ranks,
                spread: Spread::new(state, job),
                held: job.counts.assigned + job.counts.running,
                done: false,
            }
        })
        .collect();
    for round in [Round::Run, Round::Queue] {
        for turn in turns.iter_mut() {
            let spec = &turn.job.spec;
            let limited = state.needs_current_workers(turn.job.id);
            let eligible: Vec<usize> = (0..slots.len())
                .filter(|&i| {
                    let s = &slots[i];
                    (s.enforces_limits || !limited)
                        && s.cpus >= spec.cpus
                        && s.room(round).0 >= spec.cpus
                        && spec.selects(&s.worker.labels)
                        && s.has_resources_for(spec)
                })
                .collect();
            turn.heap = eligible.into_iter().map(|i| Reverse(turn.standing(slots, i))).collect();
            turn.done = turn.waiting.peek().is_none() || turn.heap.is_empty();
        }
        while plan.len() < max {
            // The job holding the fewest attempts that can still place one (ties: queue order).
            let Some(next) =
                turns.iter().enumerate().filter(|(_, t)| !t.done).min_by_key(|(i, t)| (t.held, *i)).map(|(i, _)| i)
            else {
                break;
            };
            let turn = &mut turns[next];
            let job = turn.job;
            let spec = &job.spec;
            // Pop until an entry is current and still has room (others placed meanwhile).
            let mut placed = false;
            while let Some(Reverse(best)) = turn.heap.pop() {
                let slot = &slots[best.slot];
                if slot.room(round).0 < spec.cpus || !slot.has_resources_for(spec) {
                    continue;
                }
                let now = turn.standing(slots, best.slot);
                if now != best {
                    turn.heap.push(Reverse(now));
                    continue;
                }
                let Some(task) = turn.waiting.next() else { break };
                slots[best.slot].take(job);
                let worker = slots[best.slot].worker;
                plan.push(Placement { task, worker: worker.name.clone() });
                if let Some(sp) = turn.spread.as_mut() {
                    *sp.held.entry(sp.group(worker)).or_default() += 1;
                }
                let slot = &slots[best.slot];
                if slot.room(round).0 >= spec.cpus && slot.has_resources_for(spec) {
                    turn.heap.push(Reverse(turn.standing(slots, best.slot)));
                }
                turn.held += 1;
                placed = true;
                break;
            }
            if !placed || turn.waiting.peek().is_none() {
                turn.done = true;
            }
        }
    }
}

/// A queued attempt to take back from its worker so that an idle worker runs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    pub task: TaskId,
    pub fence: Fence,
    /// The worker that holds it queued.
    pub worker: String,
}

/// A busy worker's queued attempts, the back of its queue first, and their cpus.
struct Backlog<'a> {
    cpus: u32,
    worker: &'a str,
    queued: Vec<(TaskId, Fence, &'a Job)>,
}

/// Attempts to take back from busy workers' queues so that idle cpus elsewhere run them. Call
/// it when the plan placed nothing: then every ready worker with free cpus has nothing waiting
/// that it could run. For each such worker (by name), up to its free cpus: attempts it could run
/// that workers holding more than their cpus queued last (the back of their queues, the least
/// likely to have started), from the most-loaded worker first. `skip` leaves out attempts
/// already being revoked. Only a worker's confirmation that it never started one makes it
/// wait again (`Command::TaskRevoked`); one that started meanwhile stays where it is.
pub fn revocations(state: &ClusterState, skip: impl Fn(TaskId, Fence) -> bool) -> Vec<Revocation> {
    revocations_for(state, skip, &|_| true)
}

/// [`revocations`], moving a task of a job with options only to a worker `enforces_limits`
/// names (as [`plan_for`]).
pub fn revocations_for(
    state: &ClusterState,
    skip: impl Fn(TaskId, Fence) -> bool,
    enforces_limits: &dyn Fn(&str) -> bool,
) -> Vec<Revocation> {
    let ready = || state.workers().filter(|w| w.state == WorkerState::Ready);
    // Most rounds have no queue beyond some worker's cpus: nothing to look at.
    if !ready().any(|w| w.cpus_used > w.cpus) {
        return Vec::new();
    }
    let idle: Vec<&Worker> = ready().filter(|w| w.takes_work() && w.free_cpus() > 0).collect();
    if idle.is_empty() {
        return Vec::new();
    }
    let mut busy: Vec<Backlog> = Vec::new();
    for w in ready().filter(|w| w.cpus_used > w.cpus) {
        let mut assigned: Vec<(Millis, TaskId, Fence, &Job)> = Vec::new();
        let mut running_cpus = 0;
        for (task, fence) in &w.tasks {
            let Some(job) = state.job(task.job) else { continue };
            match job.task(task.slot).map(|t| &t.state) {
                Some(TaskState::Assigned { since, .. }) => assigned.push((*since, *task, *fence, job)),
                Some(TaskState::Running { .. }) => running_cpus += job.spec.cpus,
                _ => {}
            }
        }
        // The oldest assignments fill the cpus not known to be running: likely started.
        assigned.sort_by_key(|(since, task, _, _)| (*since, *task));
        let mut starting = w.cpus.saturating_sub(running_cpus);
        let mut queued = Vec::new();
        for (_, task, fence, job) in assigned {
            if starting >= job.spec.cpus {
                starting -= job.spec.cpus;
                continue;
            }
            starting = 0;
            queued.push((task, fence, job));
        }
        queued.reverse();
        let queued_cpus = queued.iter().map(|(_, _, j)| j.spec.cpus).sum();
        if !queued.is_empty() {
            busy.push(Backlog { cpus: queued_cpus, worker: &w.name, queued });
        }
    }
    let mut out = Vec::new();
    for w in idle {
        let mut free = w.free_cpus();
        while free > 0 {
            // The most-loaded busy worker first (ties by name).
            busy.sort_by(|a, b| b.cpus.cmp(&a.cpus).then(a.worker.cmp(b.worker)));
            let limits_ok = enforces_limits(&w.name);
            let fits = |job: &Job| {
                (limits_ok || !state.needs_current_workers(job.id))
                    && job.spec.cpus <= free
                    && job.spec.cpus <= w.cpus
                    && job.spec.selects(&w.labels)
                    && w.has_resources_for(&job.spec)
            };
            let pick = busy.iter().enumerate().find_map(|(b, backlog)| {
                backlog.queued.iter().position(|(t, f, j)| fits(j) && !skip(*t, *f)).map(|q| (b, q))
            });
            let Some((b, q)) = pick else { break };
            let (task, fence, job) = busy[b].queued.remove(q);
            busy[b].cpus -= job.spec.cpus;
            free -= job.spec.cpus;
            out.push(Revocation { task, fence, worker: busy[b].worker.to_string() });
        }
    }
    out
}

/// Attempts queued on draining workers, to take back so they run elsewhere (a running one
/// stays until it finishes or the drain's deadline). `skip` leaves out those being revoked.
pub fn drain_revocations(state: &ClusterState, skip: impl Fn(TaskId, Fence) -> bool) -> Vec<Revocation> {
    let mut out = Vec::new();
    for w in state.workers().filter(|w| {
        w.state == WorkerState::Ready && matches!(w.maintenance, crate::state::Maintenance::Draining { .. })
    }) {
        for (task, fence) in &w.tasks {
            let queued = state
                .job(task.job)
                .and_then(|job| job.task(task.slot))
                .is_some_and(|t| matches!(t.state, TaskState::Assigned { .. }));
            if queued && !skip(*task, *fence) {
                out.push(Revocation { task: *task, fence: *fence, worker: w.name.clone() });
            }
        }
    }
    out
}

/// A job's waiting tasks in the order they should run: the reduce step, or array indices
/// lowest first (re-queued tasks have low indices and so go first).
fn waiting_tasks<'a>(job: &'a Job, held: Option<&IndexSet>) -> Box<dyn Iterator<Item = TaskId> + 'a> {
    if job.reduce_pending {
        return Box::new(std::iter::once(TaskId { job: job.id, slot: TaskSlot::Reduce }));
    }
    match held {
        // Those waiting for tasks they need are left out, range by range.
        Some(held) => {
            let ranges: Vec<(u64, u64)> = job.pending.difference(held).ranges().collect();
            Box::new(ranges.into_iter().flat_map(|(s, e)| s..=e).map(move |i| TaskId::array(job.id, i)))
        }
        None => Box::new(job.pending.iter().map(move |i| TaskId::array(job.id, i))),
    }
}

/// Why a job's waiting tasks cannot run on any worker the cluster has now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unschedulable {
    #[error("no workers are connected")]
    NoWorkers,
    #[error("no connected worker has the labels {} ({connected} workers connected)", labels(selector))]
    NoMatchingLabels { selector: BTreeMap<String, String>, connected: usize },
    #[error("each task needs {needs} cpus but the largest matching worker has {largest}")]
    TooFewCpus { needs: u32, largest: u32 },
    #[error("each task needs {resource}={needs} but {}", offered(resource, *largest))]
    TooFewUnits { resource: String, needs: u32, largest: u32 },
    #[error("each task needs {} of memory but {}", crate::units::format_bytes(*needs), memory_offered(*largest))]
    TooLittleMemory { needs: u64, largest: u64 },
    #[error("no single matching worker has every resource a task needs (cpus, resources and memory together)")]
    NoWorkerWithAll,
}

fn labels(map: &BTreeMap<String, String>) -> String {
    map.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

fn offered(resource: &str, largest: u32) -> String {
    if largest == 0 {
        format!("no matching worker offers {resource} (workers offer it with --resources {resource}=N)")
    } else {
        format!("the most any matching worker offers is {resource}={largest}")
    }
}

fn memory_offered(largest: u64) -> String {
    if largest == 0 {
        "no matching worker offers memory (--memory on the worker)".to_string()
    } else {
        format!("the largest matching worker offers {}", crate::units::format_bytes(largest))
    }
}

/// Why a job's waiting tasks cannot run on any worker the cluster has now, if so. Shown by
/// `job show` so that a job nobody can satisfy is reported rather than silently stuck.
pub fn unschedulable_reason(state: &ClusterState, job: &Job) -> Option<Unschedulable> {
    if !job.has_waiting_work() {
        return None;
    }
    let ready: Vec<_> = state.workers().filter(|w| w.takes_work()).collect();
    if ready.is_empty() {
        return Some(Unschedulable::NoWorkers);
    }
    let spec = &job.spec;
    let matching: Vec<_> = ready.iter().filter(|w| spec.selects(&w.labels)).collect();
    if matching.is_empty() {
        return Some(Unschedulable::NoMatchingLabels { selector: spec.selector.clone(), connected: ready.len() });
    }
    let largest = matching.iter().map(|w| w.cpus).max().unwrap_or(0);
    if largest < spec.cpus {
        return Some(Unschedulable::TooFewCpus { needs: spec.cpus, largest });
    }
    for (name, needs) in &spec.resources {
        let largest = matching.iter().filter_map(|w| w.resources.get(name)).copied().max().unwrap_or(0);
        if largest < *needs {
            return Some(Unschedulable::TooFewUnits { resource: name.clone(), needs: *needs, largest });
        }
    }
    if let Some(needs) = spec.memory {
        let largest = matching.iter().filter_map(|w| w.memory).max().unwrap_or(0);
        if largest < needs {
            return Some(Unschedulable::TooLittleMemory { needs, largest });
        }
    }
    if !matching.iter().any(|w| w.cpus >= spec.cpus && w.could_ever_hold(spec)) {
        return Some(Unschedulable::NoWorkerWithAll);
    }
    None
}

#[cfg(test)]
mod tests;
