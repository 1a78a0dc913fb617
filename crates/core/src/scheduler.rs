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
//! - within a job, each task goes to the least-loaded eligible worker (used/total cpus, then
//!   used/total capacity for queues), ties broken by name, so the plan is deterministic.
//!
//! The plan is only a proposal: the leader commits it as one `Assign` command, and applying it
//! re-checks every placement against the state of that moment.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::command::Placement;
use crate::model::Sharing;
use crate::model::{Fence, Millis, TaskId, TaskSlot};
use crate::state::{ClusterState, Job, TaskState, Worker, WorkerState};

/// Capacity of one worker while a plan is being built.
struct Slot<'a> {
    name: &'a str,
    labels: &'a std::collections::BTreeMap<String, String>,
    cpus: u32,
    capacity: u32,
    used: u32,
}

/// The two rounds of placement for each job: first onto free cpus (the task starts at once),
/// then into workers' queues (it starts as soon as a cpu frees, without a round trip).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Round {
    Run,
    Queue,
}

impl Slot<'_> {
    /// Room for `cpus` more in this round, and the total that load is measured against.
    fn room(&self, round: Round) -> (u32, u32) {
        match round {
            Round::Run => (self.cpus.saturating_sub(self.used), self.cpus),
            Round::Queue => (self.capacity.saturating_sub(self.used), self.capacity),
        }
    }
}

/// Heap entry ordering workers by load, least loaded on top.
struct ByLoad {
    used: u32,
    total: u32,
    slot: usize,
}

impl ByLoad {
    fn cmp_load(&self, other: &Self) -> Ordering {
        // used/total compared without floats: a/b < c/d  <=>  a*d < c*b; ties by name order.
        let lhs = u64::from(self.used) * u64::from(other.total);
        let rhs = u64::from(other.used) * u64::from(self.total);
        lhs.cmp(&rhs).then(self.slot.cmp(&other.slot))
    }
}

impl PartialEq for ByLoad {
    fn eq(&self, other: &Self) -> bool {
        self.cmp_load(other) == Ordering::Equal
    }
}
impl Eq for ByLoad {}
impl PartialOrd for ByLoad {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ByLoad {
    /// Reversed so that `BinaryHeap` (a max-heap) pops the least-loaded worker.
    fn cmp(&self, other: &Self) -> Ordering {
        other.cmp_load(self)
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
    let mut slots: Vec<Slot> = state
        .workers()
        .filter(|w| w.state == WorkerState::Ready && w.free_capacity() > 0)
        .map(|w| Slot { name: &w.name, labels: &w.labels, cpus: w.cpus, capacity: w.cpus + w.queue, used: w.cpus_used })
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
            place_group(std::mem::take(&mut group), &mut slots, &mut plan, max);
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
    /// Eligible workers by load (entries may be stale: re-checked when popped).
    heap: BinaryHeap<ByLoad>,
    /// Attempts it holds, counting this plan's placements: the fewest goes next.
    held: u64,
    /// Nothing more to place in this round (no task left, or no worker with room).
    done: bool,
}

/// Places the waiting tasks of jobs that share a priority (one job alone under `Fifo`): free
/// cpus first, then workers' queues; each placement on the least-loaded eligible worker; the
/// job holding the fewest attempts places next.
fn place_group<'a>(group: Vec<&'a Job>, slots: &mut [Slot<'_>], plan: &mut Vec<Placement>, max: usize) {
    // One task iterator per job for both rounds: a task placed on a free cpu is not queued too.
    let mut turns: Vec<Turn<'a>> = group
        .iter()
        .map(|job| Turn {
            job,
            waiting: waiting_tasks(job).peekable(),
            heap: BinaryHeap::new(),
            held: job.counts.assigned + job.counts.running,
            done: false,
        })
        .collect();
    for round in [Round::Run, Round::Queue] {
        for turn in turns.iter_mut() {
            let (job, cpus) = (turn.job, turn.job.spec.cpus);
            turn.heap = slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.cpus >= cpus && s.room(round).0 >= cpus && job.spec.selects(s.labels))
                .map(|(i, s)| ByLoad { used: s.used, total: s.room(round).1, slot: i })
                .collect();
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
            let cpus = turn.job.spec.cpus;
            // Pop until an entry is current and still has room (others placed meanwhile).
            let mut placed = false;
            while let Some(mut best) = turn.heap.pop() {
                let slot = &slots[best.slot];
                if slot.room(round).0 < cpus {
                    continue;
                }
                if best.used != slot.used {
                    best.used = slot.used;
                    turn.heap.push(best);
                    continue;
                }
                let Some(task) = turn.waiting.next() else { break };
                let slot = &mut slots[best.slot];
                slot.used += cpus;
                plan.push(Placement { task, worker: slot.name.to_string() });
                if slot.room(round).0 >= cpus {
                    best.used = slot.used;
                    turn.heap.push(best);
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
    let ready = || state.workers().filter(|w| w.state == WorkerState::Ready);
    // Most rounds have no queue beyond some worker's cpus: nothing to look at.
    if !ready().any(|w| w.cpus_used > w.cpus) {
        return Vec::new();
    }
    let idle: Vec<&Worker> = ready().filter(|w| w.free_cpus() > 0).collect();
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
            let fits = |job: &Job| job.spec.cpus <= free && job.spec.cpus <= w.cpus && job.spec.selects(&w.labels);
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

/// A job's waiting tasks in the order they should run: the reduce step, or array indices
/// lowest first (re-queued tasks have low indices and so go first).
fn waiting_tasks(job: &Job) -> Box<dyn Iterator<Item = TaskId> + '_> {
    if job.reduce_pending {
        return Box::new(std::iter::once(TaskId { job: job.id, slot: TaskSlot::Reduce }));
    }
    Box::new(job.pending.iter().map(move |i| TaskId::array(job.id, i)))
}

/// Why a job's waiting tasks cannot run on any worker the cluster has now, if so. Shown by
/// `job show` so that a job nobody can satisfy is reported rather than silently stuck.
pub fn unschedulable_reason(state: &ClusterState, job: &Job) -> Option<String> {
    if !job.has_waiting_work() {
        return None;
    }
    let ready: Vec<_> = state.workers().filter(|w| w.state == WorkerState::Ready).collect();
    if ready.is_empty() {
        return Some("no workers are connected".to_string());
    }
    let matching: Vec<_> = ready.iter().filter(|w| job.spec.selects(&w.labels)).collect();
    if matching.is_empty() {
        let selector: Vec<String> = job.spec.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        return Some(format!(
            "no connected worker has the labels {} ({} workers connected)",
            selector.join(","),
            ready.len()
        ));
    }
    let largest = matching.iter().map(|w| w.cpus).max().unwrap_or(0);
    if largest < job.spec.cpus {
        return Some(format!("each task needs {} cpus but the largest matching worker has {largest}", job.spec.cpus));
    }
    None
}

#[cfg(test)]
mod tests;
