//! The scheduler: a pure function from a state snapshot to a placement plan.
//!
//! Guarantees (checked by property tests):
//! - a task is placed only on a ready worker whose labels match the job's selector and whose
//!   free cpus cover the job's cpus, counting what this same plan already placed there;
//! - jobs are served in priority order, FIFO within a priority; a job that cannot be placed
//!   does not block lower-priority jobs from using other workers (backfill);
//! - within a job, each task goes to the least-loaded eligible worker (used/total cpus), ties
//!   broken by name, so the plan is deterministic.
//!
//! The plan is only a proposal: the leader commits it as one `Assign` command, and applying it
//! re-checks every placement against the state of that moment.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::command::Placement;
use crate::model::{TaskId, TaskSlot};
use crate::state::{ClusterState, Job, WorkerState};

/// Free capacity of one worker while a plan is being built.
struct Slot<'a> {
    name: &'a str,
    total: u32,
    used: u32,
}

/// Heap entry ordering workers by load, least loaded on top.
struct ByLoad {
    used: u32,
    total: u32,
    slot: usize,
    name_rank: usize,
}

impl ByLoad {
    fn cmp_load(&self, other: &Self) -> Ordering {
        // used/total compared without floats: a/b < c/d  <=>  a*d < c*b
        let lhs = u64::from(self.used) * u64::from(other.total);
        let rhs = u64::from(other.used) * u64::from(self.total);
        lhs.cmp(&rhs).then(self.name_rank.cmp(&other.name_rank))
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
pub fn plan(state: &ClusterState, max: usize) -> Vec<Placement> {
    let mut slots: Vec<Slot> = state
        .workers()
        .filter(|w| w.state == WorkerState::Ready && w.free_cpus() > 0)
        .map(|w| Slot { name: &w.name, total: w.cpus, used: w.cpus_used })
        .collect();
    let mut plan = Vec::new();
    if slots.is_empty() {
        return plan;
    }
    let workers_by_slot: Vec<_> = slots.iter().map(|s| state.worker(s.name)).collect();
    for job in state.queued_jobs() {
        if plan.len() >= max {
            break;
        }
        let cpus = job.spec.cpus;
        let mut heap: BinaryHeap<ByLoad> = slots
            .iter()
            .enumerate()
            .filter(|(i, s)| {
                s.total - s.used >= cpus && workers_by_slot[*i].is_some_and(|w| job.spec.selects(&w.labels))
            })
            .map(|(i, s)| ByLoad { used: s.used, total: s.total, slot: i, name_rank: i })
            .collect();
        if heap.is_empty() {
            continue;
        }
        for task in waiting_tasks(job) {
            if plan.len() >= max {
                break;
            }
            let Some(mut best) = heap.pop() else { break };
            let slot = &mut slots[best.slot];
            slot.used += cpus;
            plan.push(Placement { task, worker: slot.name.to_string() });
            if slot.total - slot.used >= cpus {
                best.used = slot.used;
                heap.push(best);
            }
        }
    }
    plan
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
