//! Unit and property tests of the transition function.

use super::*;
use crate::command::{Command, Placement, Proposal, Response, WorkerInfo};
use crate::journal::EventKind;
use crate::model::{Captured, Outcome, SpecError, MAX_WORKER_LOSSES};
use crate::reason::{LostReason, Refusal, TaskFailure};
use crate::records::RecordReader;
use crate::scheduler;
use proptest::prelude::*;

/// Drives a `ClusterState` the way the leader would: numbered entries, an advancing clock.
pub(crate) struct Driver {
    pub state: ClusterState,
    /// The finished tasks' records the applied entries stored.
    pub records: crate::records::MemRecords,
    pub log: Vec<(ApplyCtx, Proposal)>,
    pub term: u64,
    pub now: Millis,
}

impl Driver {
    pub fn new() -> Self {
        Driver { state: ClusterState::new(), records: Default::default(), log: Vec::new(), term: 1, now: 1_000 }
    }

    pub fn apply(&mut self, command: Command) -> Response {
        self.now += 10;
        let ctx = ApplyCtx { index: self.log.len() as u64 + 1, term: self.term, at_ms: self.now };
        let proposal = Proposal::new(self.now, vec![command]);
        let mut responses = self.state.apply(ctx, &proposal);
        self.records.apply(self.state.take_record_ops());
        self.log.push((ctx, proposal));
        self.state.sanity_check();
        responses.pop().expect("one response per command")
    }

    pub fn submit(&mut self, spec: JobSpec) -> JobId {
        match self.apply(Command::SubmitJob { spec, request_id: None }) {
            Response::JobSubmitted { job, .. } => job,
            other => panic!("submit refused: {other:?}"),
        }
    }

    pub fn worker(&mut self, name: &str, cpus: u32) -> u64 {
        let info = WorkerInfo {
            name: name.to_string(),
            instance: 7,
            cpus,
            queue: 0,
            memory: None,
            resources: BTreeMap::new(),
            labels: BTreeMap::new(),
        };
        match self.apply(Command::RegisterWorker(info)) {
            Response::WorkerRegistered { incarnation, .. } => incarnation,
            other => panic!("register refused: {other:?}"),
        }
    }

    pub fn schedule(&mut self) -> Vec<crate::command::Assigned> {
        let placements = scheduler::plan(&self.state, usize::MAX);
        match self.apply(Command::Assign { placements }) {
            Response::Assigned { runs } => runs,
            other => panic!("assign refused: {other:?}"),
        }
    }

    pub fn finish(&mut self, run: &crate::command::Assigned, exit: i32, stdout: &str) -> Response {
        self.apply(Command::TaskFinished {
            task: run.task,
            fence: run.fence,
            worker: run.worker.clone(),
            outcome: outcome(exit, stdout),
        })
    }

    /// Replays the recorded log into a fresh state.
    pub fn replay(&self) -> ClusterState {
        let mut fresh = ClusterState::new();
        for (ctx, proposal) in &self.log {
            fresh.apply(*ctx, proposal);
        }
        fresh
    }
}

pub(crate) fn outcome(exit: i32, stdout: &str) -> Outcome {
    Outcome {
        exit_code: Some(exit),
        stdout: Captured::from_bytes(stdout.as_bytes(), stdout.len() as u64),
        ..Default::default()
    }
}

fn spec(array: &str) -> JobSpec {
    JobSpec { command: vec!["echo".into()], array: Some(IndexSet::parse(array).unwrap()), ..Default::default() }
}

impl ClusterState {
    fn without_journal(&self) -> ClusterState {
        // Bookkeeping of which entry came last changes with every entry, on purpose.
        ClusterState { journal: Journal::default(), applied_index: 0, last_entry: None, ..self.clone() }
    }
}

#[test]
fn a_job_with_a_reduce_runs_to_completion() {
    let mut d = Driver::new();
    let job = d.submit(JobSpec { reduce: Some("sum".into()), ..spec("1-3") });
    d.worker("a", 2);
    let runs = d.schedule();
    assert_eq!(runs.len(), 2, "two cpus, two tasks");
    assert_eq!(d.state.job(job).unwrap().state, JobState::Running);
    for r in &runs {
        let i = match r.task.slot {
            TaskSlot::Array(i) => i,
            TaskSlot::Reduce => unreachable!(),
        };
        assert_eq!(d.finish(r, 0, &format!("{i}\n")), Response::ResultRecorded);
    }
    let runs = d.schedule();
    assert_eq!(runs.len(), 1);
    d.finish(&runs[0], 0, "3\n");
    assert_eq!(d.state.job(job).unwrap().state, JobState::Reducing);
    let runs = d.schedule();
    assert_eq!(runs[0].task, TaskId::reduce(job));
    let input = crate::records::concatenated_stdout(d.state.job(job).unwrap(), &d.records).unwrap();
    assert_eq!(input, "1\n2\n3\n");
    d.finish(&runs[0], 0, "6\n");
    let j = d.state.job(job).unwrap();
    assert_eq!(j.state, JobState::Succeeded);
    let result = crate::records::job_result(j, &d.records).unwrap().map(|(text, _)| text);
    assert_eq!(result.as_deref(), Some("6\n"));
    assert_eq!(d.replay(), d.state);
}

#[test]
fn a_stale_result_is_rejected_journalled_and_changes_nothing_else() {
    let mut d = Driver::new();
    d.submit(spec("1"));
    d.worker("a", 1);
    let run = d.schedule().remove(0);
    let stale =
        crate::command::Assigned { fence: Fence { attempt: run.fence.attempt + 1, ..run.fence }, ..run.clone() };
    let before = d.state.without_journal();
    let seq = d.state.journal().last_seq();
    assert!(matches!(d.finish(&stale, 0, "x"), Response::Stale { .. }));
    assert_eq!(d.state.without_journal(), before);
    let event = d.state.journal().since(seq, 10).next().unwrap();
    assert_eq!(event.kind.name(), "result_rejected");
    // The right attempt is still accepted, exactly once.
    assert_eq!(d.finish(&run, 0, "x"), Response::ResultRecorded);
    assert_eq!(d.finish(&run, 0, "x"), Response::Duplicate);
}

#[test]
fn a_lost_worker_gives_its_tasks_back_with_a_new_attempt() {
    let mut d = Driver::new();
    let job = d.submit(spec("1-2"));
    let inc = d.worker("a", 2);
    let first = d.schedule();
    assert_eq!(
        d.apply(Command::WorkerLost {
            name: "a".into(),
            incarnation: inc,
            reason: LostReason::Silent { silent_ms: 5_000 }
        }),
        Response::WorkerLost { requeued: 2 }
    );
    assert_eq!(d.state.job(job).unwrap().counts.waiting, 2);
    d.worker("b", 2);
    let second = d.schedule();
    assert!(second.iter().all(|r| r.worker == "b" && r.fence.attempt == 2));
    // The lost worker's late result is fenced off.
    assert!(matches!(d.finish(&first[0], 0, "late"), Response::Stale { .. }));
    for r in &second {
        d.finish(r, 0, "ok");
    }
    assert_eq!(d.state.job(job).unwrap().state, JobState::Succeeded);
}

#[test]
fn a_task_that_keeps_losing_its_worker_fails_instead_of_looping() {
    let mut d = Driver::new();
    let job = d.submit(spec("1"));
    for round in 0..=MAX_WORKER_LOSSES {
        let name = format!("w{round}");
        let inc = d.worker(&name, 1);
        assert_eq!(d.schedule().len(), 1);
        d.apply(Command::WorkerLost { name, incarnation: inc, reason: LostReason::Silent { silent_ms: 5_000 } });
    }
    let j = d.state.job(job).unwrap();
    assert_eq!(j.state, JobState::Failed);
    assert!(matches!(j.failure.as_ref().unwrap().reason, TaskFailure::WorkerLost { times: 4, .. }), "{:?}", j.failure);
    assert!(j.failure.as_ref().unwrap().to_string().contains("lost"));
}

#[test]
fn failures_are_retried_up_to_the_limit() {
    let mut d = Driver::new();
    let job = d.submit(JobSpec { retries: 1, ..spec("1") });
    d.worker("a", 1);
    let r = d.schedule().remove(0);
    d.finish(&r, 1, "");
    assert_eq!(d.state.job(job).unwrap().counts.waiting, 1);
    let r = d.schedule().remove(0);
    assert_eq!(r.fence.attempt, 2);
    d.finish(&r, 1, "");
    let j = d.state.job(job).unwrap();
    assert_eq!(j.state, JobState::Failed);
    assert_eq!(j.counts.failed, 1);
    assert_eq!(j.failure.as_ref().map(|f| f.to_string()), Some(format!("task {} failed: exit code 1", r.task)));
    let messages: Vec<String> = d.state.journal().since(0, 100).map(|e| e.kind.message()).collect();
    assert!(messages.contains(&format!("task {} rescheduled after attempt 1: exit code 1; retry 1 of 1", r.task)));
}

#[test]
fn cancelling_stops_running_attempts_and_drops_waiting_ones() {
    let mut d = Driver::new();
    let job = d.submit(spec("1-10"));
    d.worker("a", 3);
    let runs = d.schedule();
    let Response::JobCancelled { kill, .. } = d.apply(Command::CancelJob { job }) else { panic!("cancel refused") };
    assert_eq!(kill.len(), runs.len());
    let j = d.state.job(job).unwrap();
    assert_eq!(j.state, JobState::Cancelled);
    assert_eq!(j.counts.cancelled, 10);
    assert_eq!(d.state.worker("a").unwrap().cpus_used, 0);
    assert_eq!(d.apply(Command::CancelJob { job: 99 }), Response::Invalid { reason: Refusal::NoJob(99) });
}

#[test]
fn a_retried_submission_creates_one_job() {
    let mut d = Driver::new();
    let cmd = Command::SubmitJob { spec: spec("1"), request_id: Some("r1".into()) };
    let a = d.apply(cmd.clone());
    let b = d.apply(cmd);
    assert_eq!(a, Response::JobSubmitted { job: 1, duplicate: false });
    assert_eq!(b, Response::JobSubmitted { job: 1, duplicate: true });
    assert_eq!(d.state.jobs().count(), 1);
}

#[test]
fn an_invalid_spec_is_refused_by_apply() {
    let mut d = Driver::new();
    let r = d.apply(Command::SubmitJob { spec: JobSpec::default(), request_id: None });
    assert_eq!(r, Response::Invalid { reason: Refusal::BadSpec(SpecError::NoCommand) });
    assert_eq!(d.state.jobs().count(), 0);
}

#[test]
fn a_restarted_worker_loses_what_its_old_process_held() {
    let mut d = Driver::new();
    let job = d.submit(spec("1"));
    d.worker("a", 1);
    d.schedule();
    let info = WorkerInfo {
        name: "a".into(),
        instance: 8,
        cpus: 1,
        queue: 0,
        memory: None,
        resources: BTreeMap::new(),
        labels: BTreeMap::new(),
    };
    d.apply(Command::RegisterWorker(info));
    assert_eq!(d.state.job(job).unwrap().counts.waiting, 1);
    assert_eq!(d.schedule()[0].fence.attempt, 2);
}

#[test]
fn the_million_task_array_is_stored_as_a_range() {
    let mut d = Driver::new();
    let job = d.submit(spec("1-1000000"));
    let j = d.state.job(job).unwrap();
    assert_eq!(j.total, 1_000_000);
    assert_eq!(j.pending.range_count(), 1);
    assert!(j.tasks.is_empty());
}

#[test]
fn the_state_survives_an_encode_decode_round_trip() {
    let mut d = Driver::new();
    d.submit(JobSpec { reduce: Some("cat".into()), ..spec("1-5") });
    d.worker("a", 2);
    let runs = d.schedule();
    d.finish(&runs[0], 0, "hello");
    let bytes = postcard::to_allocvec(&d.state).unwrap();
    let back: ClusterState = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, d.state);
}

#[test]
fn membership_changes_are_journalled_and_a_removed_master_id_is_retired() {
    use crate::command::MemberChange;
    let mut d = Driver::new();
    d.apply(Command::MasterReachability { node: 4, reachable: false });
    d.apply(Command::MembershipChanged(MemberChange::LearnerAdded { node: 4, address: "h:1".into() }));
    d.apply(Command::MembershipChanged(MemberChange::Promoted { node: 4 }));
    assert!(d.state.retired_masters().is_empty());
    d.apply(Command::MembershipChanged(MemberChange::Removed { node: 4 }));
    assert!(d.state.retired_masters().contains(&4));
    assert!(d.state.unreachable_masters().is_empty(), "a removed master is not reported unreachable");
    let names: Vec<&str> = d.state.journal().since(0, 100).map(|e| e.kind.name()).collect();
    assert_eq!(names.iter().filter(|n| **n == "membership_changed").count(), 3, "{names:?}");
    let bytes = postcard::to_allocvec(&d.state).unwrap();
    let back: ClusterState = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, d.state);
}

fn maintain(d: &mut Driver, worker: &str, change: MaintenanceChange) -> Response {
    d.apply(Command::SetMaintenance { worker: worker.into(), change })
}

#[test]
fn a_cordoned_or_draining_worker_gets_no_new_tasks_and_a_drained_one_holds_nothing() {
    let mut d = Driver::new();
    d.worker("a", 1);
    d.worker("b", 1);
    d.submit(spec("1-4"));
    let runs = d.schedule();
    assert_eq!(runs.len(), 2, "one per worker (no queue)");
    let on_a = runs.iter().find(|r| r.worker == "a").expect("a run").clone();
    assert_eq!(maintain(&mut d, "a", MaintenanceChange::Cordon), Response::Noted);
    assert_eq!(d.state.worker("a").map(|w| w.condition()), Some(WorkerCondition::Cordoned));
    d.finish(&on_a, 0, "x");
    let runs = d.schedule();
    assert!(runs.iter().all(|r| r.worker != "a"), "a cordoned worker was given {runs:?}");
    // Draining a worker that holds nothing drains it at once.
    maintain(&mut d, "a", MaintenanceChange::Drain { deadline_ms: None, by_worker: false });
    assert_eq!(d.state.worker("a").map(|w| w.condition()), Some(WorkerCondition::Drained));
    maintain(&mut d, "a", MaintenanceChange::Uncordon);
    assert!(d.state.worker("a").is_some_and(|w| w.takes_work()));
    assert_eq!(
        maintain(&mut d, "nobody", MaintenanceChange::Cordon),
        Response::Invalid { reason: Refusal::NoReadyWorker("nobody".into()) }
    );
    assert_eq!(d.replay(), d.state, "maintenance replays to the same state");
}

#[test]
fn a_drain_past_its_deadline_requeues_what_the_worker_holds_with_new_attempts() {
    let mut d = Driver::new();
    let incarnation = d.worker("a", 2);
    d.submit(spec("1-2"));
    let runs = d.schedule();
    assert_eq!(runs.len(), 2);
    maintain(&mut d, "a", MaintenanceChange::Drain { deadline_ms: Some(1_000), by_worker: false });
    assert_eq!(d.state.worker("a").map(|w| w.condition()), Some(WorkerCondition::Draining));
    // Before the deadline (on the entries' clock): nothing happens.
    assert_eq!(d.apply(Command::DrainOverdue { worker: "a".into(), incarnation }), Response::Noted);
    d.now += 2_000;
    let Response::AttemptsTaken { kill } = d.apply(Command::DrainOverdue { worker: "a".into(), incarnation }) else {
        panic!("nothing taken")
    };
    assert_eq!(kill.len(), 2);
    assert_eq!(d.state.worker("a").map(|w| w.condition()), Some(WorkerCondition::Drained));
    // The old attempts' results are stale now; the tasks wait for another worker.
    assert!(matches!(d.finish(&runs[0], 0, "late"), Response::Stale { .. }));
    d.worker("b", 2);
    let again = d.schedule();
    assert_eq!(again.len(), 2);
    assert!(again.iter().all(|r| r.worker == "b" && r.fence.attempt == 2), "{again:?}");
    let names: Vec<&str> = d.state.journal().since(0, 100).map(|e| e.kind.name()).collect();
    assert!(names.contains(&"worker_draining") && names.contains(&"worker_drained"), "{names:?}");
}

#[test]
fn an_operators_decision_outlives_a_restart_and_a_self_drain_does_not() {
    let mut d = Driver::new();
    d.worker("a", 1);
    d.worker("b", 1);
    maintain(&mut d, "a", MaintenanceChange::Drain { deadline_ms: None, by_worker: false });
    maintain(&mut d, "b", MaintenanceChange::Drain { deadline_ms: None, by_worker: true });
    let restart = |d: &mut Driver, name: &str| {
        let info = WorkerInfo {
            name: name.to_string(),
            instance: 99,
            cpus: 1,
            queue: 0,
            memory: None,
            resources: BTreeMap::new(),
            labels: BTreeMap::new(),
        };
        d.apply(Command::RegisterWorker(info));
    };
    restart(&mut d, "a");
    restart(&mut d, "b");
    assert_eq!(d.state.worker("a").map(|w| w.condition()), Some(WorkerCondition::Cordoned));
    assert_eq!(d.state.worker("b").map(|w| w.condition()), Some(WorkerCondition::Ready));
}

/// A random step, interpreted against the current state so that most steps are meaningful.
#[derive(Clone, Debug)]
enum Op {
    /// `needs`: 0 nothing beyond cpus, 1 a gpu, 2 3G of memory, 3 both.
    Submit {
        tasks: u8,
        cpus: u8,
        retries: u8,
        reduce: bool,
        priority: i8,
        zone: Option<u8>,
        needs: u8,
    },
    Register {
        worker: u8,
        cpus: u8,
        queue: u8,
        zone: u8,
        restart: bool,
    },
    Lose {
        worker: u8,
    },
    SetQueue {
        worker: u8,
        queue: u8,
    },
    Schedule {
        max: u8,
    },
    Start {
        pick: u16,
    },
    Finish {
        pick: u16,
        ok: bool,
        stale: bool,
    },
    Cancel {
        pick: u8,
    },
    Maintain {
        worker: u8,
        change: u8,
    },
    Overdue {
        worker: u8,
    },
    Purge {
        pick: u8,
    },
    /// A job pairing its tasks with the latest job's (`each`), or whose tasks need each
    /// other (`needs`), or both.
    SubmitDependent {
        tasks: u8,
        each: bool,
        chain: bool,
    },
    NewTerm,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..16).prop_map(|pick| Op::Purge { pick }),
        (0u8..4, 0u8..4).prop_map(|(worker, change)| Op::Maintain { worker, change }),
        (0u8..4).prop_map(|worker| Op::Overdue { worker }),
        (1u8..8, 1u8..3, 0u8..2, any::<bool>(), -1i8..2, proptest::option::of(0u8..2), 0u8..4).prop_map(
            |(tasks, cpus, retries, reduce, priority, zone, needs)| Op::Submit {
                tasks,
                cpus,
                retries,
                reduce,
                priority,
                zone,
                needs
            }
        ),
        (0u8..4, 1u8..4, 0u8..3, 0u8..2, any::<bool>()).prop_map(|(worker, cpus, queue, zone, restart)| Op::Register {
            worker,
            cpus,
            queue,
            zone,
            restart
        }),
        (0u8..4).prop_map(|worker| Op::Lose { worker }),
        (0u8..4, 0u8..4).prop_map(|(worker, queue)| Op::SetQueue { worker, queue }),
        (1u8..10).prop_map(|max| Op::Schedule { max }),
        any::<u16>().prop_map(|pick| Op::Start { pick }),
        (any::<u16>(), any::<bool>(), proptest::bool::weighted(0.2)).prop_map(|(pick, ok, stale)| Op::Finish {
            pick,
            ok,
            stale
        }),
        (0u8..8).prop_map(|pick| Op::Cancel { pick }),
        (1u8..6, any::<bool>(), any::<bool>()).prop_map(|(tasks, each, chain)| Op::SubmitDependent {
            tasks,
            each,
            chain
        }),
        Just(Op::NewTerm),
    ]
}

/// Every attempt currently in flight, in a stable order.
fn in_flight(state: &ClusterState) -> Vec<(TaskId, String, Fence, bool)> {
    let mut out = Vec::new();
    for w in state.workers() {
        for (task, fence) in &w.tasks {
            let job = state.job(task.job).unwrap();
            let running = matches!(job.task(task.slot).unwrap().state, TaskState::Running { .. });
            out.push((*task, w.name.clone(), *fence, running));
        }
    }
    out
}

/// `needs` rules chaining a job's tasks `1-n`: tasks 2 on need task 1, and task n needs the
/// ones between.
fn chained(n: u64) -> Vec<crate::workflow::TaskNeeds> {
    let mut rules = Vec::new();
    if n >= 2 {
        rules.push(crate::workflow::TaskNeeds { tasks: IndexSet::range(2, n), needs: IndexSet::range(1, 1) });
    }
    if n >= 3 {
        rules.push(crate::workflow::TaskNeeds { tasks: IndexSet::range(n, n), needs: IndexSet::range(2, n - 1) });
    }
    rules
}

fn run_op(d: &mut Driver, op: &Op) {
    match op.clone() {
        Op::SubmitDependent { tasks, each, chain } => {
            let latest = d.state.jobs().map(|j| j.id).max();
            let options = crate::workflow::JobOptions {
                each: latest.filter(|_| each).into_iter().collect(),
                needs: if chain { chained(u64::from(tasks)) } else { Vec::new() },
                ..Default::default()
            };
            // Refused when the latest job lacks some index: the refusal changes nothing.
            d.apply(Command::SubmitJobWith {
                spec: spec(&format!("1-{tasks}")),
                request_id: None,
                owner: None,
                options,
            });
        }
        Op::Submit { tasks, cpus, retries, reduce, priority, zone, needs } => {
            let spec = JobSpec {
                command: vec!["t".into()],
                array: Some(IndexSet::range(1, u64::from(tasks))),
                cpus: u32::from(cpus),
                retries: u32::from(retries),
                reduce: reduce.then(|| "r".to_string()),
                priority: i32::from(priority),
                selector: zone.map(|z| [("zone".to_string(), z.to_string())].into()).unwrap_or_default(),
                resources: if needs & 1 == 1 { [("gpu".to_string(), 1)].into() } else { BTreeMap::new() },
                memory: (needs & 2 == 2).then_some(3 << 30),
                ..Default::default()
            };
            d.submit(spec);
        }
        Op::Register { worker, cpus, queue, zone, restart } => {
            let name = format!("w{worker}");
            let old = d.state.worker(&name).map(|w| w.instance).unwrap_or(0);
            let info = WorkerInfo {
                name,
                instance: if restart { old + 1 } else { old },
                cpus: u32::from(cpus),
                queue: u32::from(queue),
                // Workers 1 and 3 offer one and three gpus; all offer 8G.
                memory: Some(8 << 30),
                resources: if worker % 2 == 1 {
                    [("gpu".to_string(), u32::from(worker))].into()
                } else {
                    BTreeMap::new()
                },
                labels: [("zone".to_string(), zone.to_string())].into(),
            };
            d.apply(Command::RegisterWorker(info));
        }
        Op::Lose { worker } => {
            let name = format!("w{worker}");
            if let Some(w) = d.state.worker(&name) {
                let incarnation = w.incarnation;
                d.apply(Command::WorkerLost { name, incarnation, reason: LostReason::Restarted });
            }
        }
        Op::Maintain { worker, change } => {
            let change = match change {
                0 => MaintenanceChange::Cordon,
                1 => MaintenanceChange::Uncordon,
                2 => MaintenanceChange::Drain { deadline_ms: Some(50), by_worker: false },
                _ => MaintenanceChange::Drain { deadline_ms: None, by_worker: true },
            };
            d.apply(Command::SetMaintenance { worker: format!("w{worker}"), change });
        }
        Op::Overdue { worker } => {
            let name = format!("w{worker}");
            let incarnation = d.state.worker(&name).map_or(0, |w| w.incarnation);
            d.now += 100;
            d.apply(Command::DrainOverdue { worker: name, incarnation });
        }
        Op::SetQueue { worker, queue } => {
            // Lowering a queue below what is already assigned must not break anything.
            d.apply(Command::SetWorkerQueue { worker: format!("w{worker}"), queue: u32::from(queue) });
        }
        Op::Schedule { max } => {
            let placements = scheduler::plan(&d.state, usize::from(max));
            check_plan(&d.state, &placements);
            let n = placements.len();
            match d.apply(Command::Assign { placements }) {
                Response::Assigned { runs } => assert_eq!(runs.len(), n, "a fresh plan applies whole"),
                other => panic!("{other:?}"),
            }
        }
        Op::Start { pick } => {
            let flights = in_flight(&d.state);
            if let Some((task, worker, fence, _)) = flights.get(usize::from(pick) % flights.len().max(1)).cloned() {
                d.apply(Command::TaskStarted { task, fence, worker });
            }
        }
        Op::Finish { pick, ok, stale } => {
            let flights = in_flight(&d.state);
            let Some((task, worker, fence, _)) = flights.get(usize::from(pick) % flights.len().max(1)).cloned() else {
                return;
            };
            let command = |fence| Command::TaskFinished {
                task,
                fence,
                worker: worker.clone(),
                outcome: outcome(if ok { 0 } else { 1 }, "out\n"),
            };
            if stale {
                // Invariant: a fenced result never changes the state (only the journal).
                let before = d.state.without_journal();
                let old = Fence { attempt: fence.attempt + 100, ..fence };
                assert!(matches!(d.apply(command(old)), Response::Stale { .. }));
                assert_eq!(d.state.without_journal(), before);
            } else {
                assert_eq!(d.apply(command(fence)), Response::ResultRecorded);
                // Delivered twice: recorded once.
                let before = d.state.clone();
                let again = d.apply(command(fence));
                assert!(matches!(again, Response::Duplicate | Response::Stale { .. }), "{again:?}");
                if again == Response::Duplicate {
                    assert_eq!(d.state.without_journal(), before.without_journal());
                }
            }
        }
        Op::Purge { pick } => {
            // Any id, known or not, finished or not: only finished ones go, and only once.
            let job = u64::from(pick);
            let before = d.state.job(job).map(|j| j.state.is_terminal());
            match d.apply(Command::PurgeJobs { jobs: vec![job] }) {
                Response::JobsPurged(out) => {
                    assert_eq!(out.purged.len(), usize::from(before == Some(true)));
                    assert_eq!(out.unfinished.len(), usize::from(before == Some(false)));
                    assert!(d.state.job(job).is_none() || before == Some(false));
                }
                other => panic!("{other:?}"),
            }
        }
        Op::Cancel { pick } => {
            let ids: Vec<JobId> = d.state.jobs().map(|j| j.id).collect();
            if let Some(&job) = ids.get(usize::from(pick) % ids.len().max(1)) {
                d.apply(Command::CancelJob { job });
            }
        }
        Op::NewTerm => {
            d.term += 1;
            d.apply(Command::LeaderElected { node: d.term % 3 + 1 });
        }
    }
}

/// A plan never exceeds capacity (cpus plus queue), never places on an ineligible worker,
/// never repeats a task, and fills free cpus before queues.
fn check_plan(state: &ClusterState, placements: &[Placement]) {
    let mut used: BTreeMap<&str, u32> = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for p in placements {
        assert!(seen.insert(p.task), "task {} placed twice", p.task);
        if let TaskSlot::Array(i) = p.task.slot {
            assert!(!state.is_held(p.task.job, i), "task {} placed while waiting for tasks it needs", p.task);
        }
        let job = state.job(p.task.job).unwrap();
        let w = state.worker(&p.worker).unwrap();
        assert_eq!(w.state, WorkerState::Ready);
        assert!(job.spec.selects(&w.labels));
        assert!(job.spec.cpus <= w.cpus, "a task bigger than worker {} placed there", w.name);
        let u = used.entry(&w.name).or_insert(w.cpus_used);
        *u += job.spec.cpus;
        assert!(*u <= w.cpus + w.queue, "worker {} over capacity", w.name);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Replaying the log gives the same state; invariants hold after every step (sanity_check
    /// runs inside `Driver::apply`), including capacity and fencing.
    #[test]
    fn random_histories_keep_every_invariant_and_replay_identically(ops in proptest::collection::vec(op(), 1..120)) {
        let mut d = Driver::new();
        for op in &ops {
            run_op(&mut d, op);
        }
        prop_assert_eq!(d.replay(), d.state.clone());
    }

    /// With enough steps every job finishes when workers are plentiful and everything succeeds.
    #[test]
    fn every_job_finishes_when_tasks_succeed(jobs in proptest::collection::vec((1u8..20, 1u8..3), 1..6)) {
        let mut d = Driver::new();
        d.worker("a", 4);
        d.worker("b", 3);
        for (tasks, cpus) in &jobs {
            d.submit(JobSpec { cpus: u32::from(*cpus), ..spec(&format!("1-{tasks}")) });
        }
        for _ in 0..500 {
            let runs = d.schedule();
            if runs.is_empty() && in_flight(&d.state).is_empty() {
                break;
            }
            for (task, worker, fence, _) in in_flight(&d.state) {
                d.apply(Command::TaskFinished { task, fence, worker, outcome: outcome(0, "") });
            }
        }
        for job in d.state.jobs() {
            prop_assert_eq!(job.state, JobState::Succeeded);
        }
    }
}

/// Regression (found by the property test): cancelling a job whose failed task was waiting
/// for its retry left that task "waiting" outside the queue.
#[test]
fn regression_cancelling_a_job_with_a_requeued_task() {
    let mut d = Driver::new();
    let job = d.submit(JobSpec { retries: 1, ..spec("1") });
    d.worker("a", 1);
    let run = d.schedule().remove(0);
    d.finish(&run, 1, "");
    assert_eq!(d.state.job(job).unwrap().counts.waiting, 1, "re-queued for its retry");
    d.apply(Command::CancelJob { job });
    let j = d.state.job(job).unwrap();
    assert_eq!(j.settled[&1].state, TaskState::Cancelled);
    assert_eq!(j.counts.cancelled, 1);
    let record = d.records.record(TaskId::array(job, 1)).unwrap().expect("the cancelled task's record");
    assert_eq!((record.state, record.attempts), (TaskState::Cancelled, 1));
}

#[test]
fn finished_tasks_leave_memory_for_the_records_and_go_with_their_job() {
    let mut d = Driver::new();
    let job = d.submit(JobSpec { retries: 1, ..spec("1-100") });
    d.worker("a", 100);
    let runs = d.schedule();
    for run in &runs {
        let exit = if run.task.slot == TaskSlot::Array(7) { 1 } else { 0 };
        d.finish(run, exit, "out\n");
    }
    let retry = d.schedule().remove(0);
    d.finish(&retry, 0, "second\n");
    let j = d.state.job(job).unwrap();
    assert_eq!(j.state, JobState::Succeeded);
    assert!(j.tasks.is_empty(), "no finished task stays in memory");
    // Only the task that needed two attempts is remembered, by state and attempts.
    assert_eq!(j.settled.len(), 1);
    assert_eq!(j.settled[&7], Settled { state: TaskState::Succeeded, attempts: 2, recorded: Some(retry.fence) });
    assert_eq!(d.records.len(), 100);
    let seventh = d.records.record(TaskId::array(job, 7)).unwrap().unwrap();
    assert_eq!(seventh.result.unwrap().outcome.stdout.text, "second\n");
    let page = d.records.array_records(job, 95, 10).unwrap();
    assert_eq!(page.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![95, 96, 97, 98, 99, 100]);

    // A repeated report of a settled task is a duplicate; one from an older attempt is stale.
    assert_eq!(d.finish(&runs[0], 0, "out\n"), Response::Duplicate);
    assert_eq!(d.finish(&retry, 0, "second\n"), Response::Duplicate);
    let first_of_seventh = runs.iter().find(|r| r.task.slot == TaskSlot::Array(7)).unwrap();
    assert!(matches!(d.finish(first_of_seventh, 0, "late"), Response::Stale { .. }));

    let purged = d.apply(Command::PurgeJobs { jobs: vec![job] });
    assert!(matches!(purged, Response::JobsPurged(_)));
    assert!(d.records.is_empty(), "the job's records went with it");
}

#[test]
fn a_worker_that_asks_for_a_deeper_queue_gets_more_tasks() {
    let mut d = Driver::new();
    d.submit(spec("1-20"));
    d.worker("a", 2);
    assert_eq!(d.schedule().len(), 2, "no queue: one task per cpu");
    let set = |queue| Command::SetWorkerQueue { worker: "a".into(), queue };
    assert_eq!(d.apply(set(6)), Response::Noted);
    assert_eq!(d.schedule().len(), 6, "then the queue fills");
    assert!(matches!(d.apply(Command::SetWorkerQueue { worker: "nobody".into(), queue: 1 }), Response::Invalid { .. }));
    // Replicas that replay the same log agree.
    assert_eq!(d.replay().without_journal(), d.state.without_journal());
}

fn quick_job(d: &mut Driver) -> JobId {
    let job = d.submit(spec("1-1"));
    let runs = d.schedule();
    assert_eq!(d.finish(&runs[0], 0, "x\n"), Response::ResultRecorded);
    job
}

/// Invariant: beyond the count, the oldest finished jobs go at the entry that exceeds it,
/// identically on replay; unfinished jobs never go; a removed id answers "removed", with why.
#[test]
fn finished_jobs_beyond_the_retention_count_are_removed_oldest_first() {
    let mut d = Driver::new();
    d.worker("w", 1);
    let retention = JobRetention { max_age_ms: None, max_finished: 10 };
    assert_eq!(d.apply(Command::SetJobRetention(retention)), Response::Noted);
    let jobs: Vec<JobId> = (0..12).map(|_| quick_job(&mut d)).collect();
    let waiting = d.submit(spec("1-3"));
    assert_eq!(d.state.finished_jobs(), 10);
    assert!(d.state.job(jobs[0]).is_none() && d.state.job(jobs[1]).is_none());
    assert!(d.state.job(jobs[2]).is_some() && d.state.job(waiting).is_some());
    match d.state.job_presence(jobs[0]) {
        JobPresence::Removed(Some(r)) => assert_eq!(r.reason, RemovalReason::Excess),
        other => panic!("{other:?}"),
    }
    assert_eq!(d.state.job_presence(999), JobPresence::Unknown);
    let removed =
        d.state.journal().since(0, usize::MAX).filter(|e| matches!(e.kind, EventKind::JobRemoved { .. })).count();
    assert_eq!(removed, 2, "each removal journals the job's summary");
    assert_eq!(d.replay(), d.state);
}

/// Invariant: age counts from when a job finished, by the entries' leader clock.
#[test]
fn finished_jobs_expire_after_the_retention_age() {
    let mut d = Driver::new();
    d.worker("w", 1);
    let retention = JobRetention { max_age_ms: Some(60_000), max_finished: 1_000 };
    assert_eq!(d.apply(Command::SetJobRetention(retention)), Response::Noted);
    let old = quick_job(&mut d);
    d.now += 30_000;
    let young = quick_job(&mut d);
    d.now += 30_000;
    d.apply(Command::SetSharing(crate::model::Sharing::Fair));
    assert!(d.state.job(old).is_none(), "older than a minute");
    assert!(d.state.job(young).is_some(), "30 s old");
    match d.state.job_presence(old) {
        JobPresence::Removed(Some(r)) => assert_eq!(r.reason, RemovalReason::Expired),
        other => panic!("{other:?}"),
    }
    assert_eq!(d.replay(), d.state);
}

#[test]
fn purge_removes_finished_jobs_once_and_refuses_the_rest() {
    let mut d = Driver::new();
    d.worker("w", 1);
    let done = quick_job(&mut d);
    let running = d.submit(spec("1-2"));
    d.schedule();
    let out = match d.apply(Command::PurgeJobs { jobs: vec![done, running, 77] }) {
        Response::JobsPurged(out) => out,
        other => panic!("{other:?}"),
    };
    assert_eq!(out.purged, vec![done]);
    assert_eq!(out.unfinished, vec![running]);
    assert_eq!(out.unknown, vec![77]);
    // A retried purge (say, across a failover) removes nothing twice.
    let again = match d.apply(Command::PurgeJobs { jobs: vec![done] }) {
        Response::JobsPurged(out) => out,
        other => panic!("{other:?}"),
    };
    assert_eq!(again.already_removed, vec![done]);
    assert!(again.purged.is_empty());
    // Bad settings are refused by apply too.
    let bad = JobRetention { max_age_ms: Some(1_000), max_finished: 10 };
    assert!(matches!(d.apply(Command::SetJobRetention(bad)), Response::Invalid { .. }));
    assert_eq!(d.replay(), d.state);
}

/// Regression (review of the records change): a finished task out of memory answers a repeated
/// report exactly as before: the fence of its recorded result is a duplicate even when the
/// task ended otherwise (here cancelled while waiting for its retry), any other fence is stale.
#[test]
fn a_settled_task_answers_repeats_by_the_fence_of_its_recorded_result() {
    let mut d = Driver::new();
    let job = d.submit(JobSpec { retries: 1, ..spec("1") });
    d.worker("a", 1);
    let first = d.schedule().remove(0);
    assert_eq!(d.finish(&first, 1, "boom"), Response::ResultRecorded);
    d.apply(Command::CancelJob { job });
    let j = d.state.job(job).unwrap();
    assert!(j.tasks.is_empty());
    assert_eq!(j.settled[&1].recorded, Some(first.fence));
    assert_eq!(d.finish(&first, 1, "boom"), Response::Duplicate);
    let forged = crate::command::Assigned { fence: Fence { attempt: 2, ..first.fence }, ..first.clone() };
    assert!(matches!(d.finish(&forged, 0, "late"), Response::Stale { .. }));
}

#[test]
fn a_workers_own_drain_keeps_an_operators_decision_and_deadline() {
    let mut d = Driver::new();
    d.worker("a", 1);
    d.submit(spec("1-1"));
    d.schedule();
    maintain(&mut d, "a", MaintenanceChange::Drain { deadline_ms: Some(1_000), by_worker: false });
    maintain(&mut d, "a", MaintenanceChange::Drain { deadline_ms: Some(60_000), by_worker: true });
    let w = d.state.worker("a").expect("a");
    let Maintenance::Draining { deadline: Some(deadline), by_worker: false } = w.maintenance else {
        panic!("{:?}", w.maintenance)
    };
    assert!(deadline < d.now + 1_000, "the operator's earlier deadline holds");
}

/// Invariant: a job's task limits are kept beside it while it is kept, are absent for a job
/// that asked none, and go with it when it is purged (they mark the state as 0.2.0's only
/// while such a job exists).
#[test]
fn task_limits_stay_with_their_job_and_go_with_it() {
    let mut d = Driver::new();
    let limits = crate::model::TaskLimits { memory: Some(64 << 20), ..Default::default() };
    let submitted = d.apply(Command::SubmitJobWith {
        spec: spec("1-2"),
        request_id: None,
        owner: Some("ci".into()),
        options: crate::workflow::JobOptions { limits: limits.clone(), ..Default::default() },
    });
    let Response::JobSubmitted { job, .. } = submitted else { panic!("{submitted:?}") };
    let plain = d.submit(spec("1-2"));
    assert_eq!(d.state.task_limits(job), Some(&limits));
    assert_eq!(d.state.task_limits(plain), None);
    assert_eq!(d.state.access().owner_of(job), Some("ci"));
    assert!(d.state.in_use(crate::version::Feature::TaskLimits));
    d.apply(Command::CancelJob { job });
    assert!(matches!(d.apply(Command::PurgeJobs { jobs: vec![job] }), Response::JobsPurged(_)));
    assert_eq!(d.state.task_limits(job), None);
    assert!(!d.state.in_use(crate::version::Feature::TaskLimits));
    assert_eq!(
        crate::model::TaskLimits { open_files: Some(3), ..Default::default() }.validate(),
        Err(crate::model::LimitsError::TooFewFiles)
    );
}

/// Invariants: a task's outputs list only workers holding a copy — a worker lost or one that
/// found its copy damaged comes off — and the task is short of copies exactly while it has
/// fewer than its job asks for; copies made to repair count once, for workers in service;
/// losing the last copy is journalled; a snapshot's restore works out the same shortfall.
#[test]
fn copies_of_outputs_follow_losses_damage_and_repairs() {
    use crate::workflow::{CopyLoss, Digest, OutputFile, Outputs};
    let mut d = Driver::new();
    for w in ["a", "b", "c", "d"] {
        d.worker(w, 1);
    }
    let options = crate::workflow::JobOptions { replicas: Some(1), ..Default::default() };
    let submitted = d.apply(Command::SubmitJobWith { spec: spec("1"), request_id: None, owner: None, options });
    let Response::JobSubmitted { job, .. } = submitted else { panic!("{submitted:?}") };
    let run = d.schedule().pop().expect("placed");
    let file = OutputFile { path: "out.txt".into(), size: 3, sha256: Digest([7; 32]) };
    let holder = run.worker.clone();
    let outcome = Outcome {
        outputs: Outputs { files: vec![file.clone()], holders: vec![holder.clone()], error: None, logs: Vec::new() },
        ..outcome(0, "")
    };
    d.apply(Command::task_finished(run.task, run.fence, holder.clone(), outcome));
    assert_eq!(d.state.wanted_copies(job), 2);
    assert!(d.state.short_of_copies().contains(&run.task), "one copy of two");

    let other = ["a", "b", "c", "d"].into_iter().find(|w| *w != holder).expect("another worker").to_string();
    d.apply(Command::CopiesAdded { worker: other.clone(), tasks: vec![run.task] });
    d.apply(Command::CopiesAdded { worker: other.clone(), tasks: vec![run.task] });
    assert_eq!(d.state.task_outputs(run.task).expect("kept").holders, vec![holder.clone(), other.clone()]);
    assert!(d.state.short_of_copies().is_empty());

    // Damage found on the first holder: only outputs with that blob lose it.
    d.apply(Command::CopiesCorrupt { worker: holder.clone(), digests: vec![Digest([9; 32])] });
    assert!(d.state.short_of_copies().is_empty());
    d.apply(Command::CopiesCorrupt { worker: holder.clone(), digests: vec![file.sha256] });
    assert_eq!(d.state.task_outputs(run.task).expect("kept").holders, vec![other.clone()]);
    assert!(d.state.short_of_copies().contains(&run.task));

    // A copy reported by a worker since lost does not count; losing the last holder is told.
    let incarnation = d.state.worker(&other).expect("registered").incarnation;
    d.apply(Command::WorkerLost { name: other.clone(), incarnation, reason: LostReason::Restarted });
    d.apply(Command::CopiesAdded { worker: other.clone(), tasks: vec![run.task] });
    assert!(d.state.task_outputs(run.task).expect("kept").holders.is_empty());
    let kinds: Vec<&EventKind> = d.state.journal().since(0, usize::MAX).map(|e| &e.kind).collect();
    assert!(kinds.iter().any(|k| matches!(k, EventKind::OutputCopiesGone { reason: CopyLoss::Corrupt, tasks: 1, .. })));
    assert!(kinds.iter().any(|k| matches!(k, EventKind::OutputCopiesGone { reason: CopyLoss::WorkerLost, .. })));
    assert!(kinds
        .iter()
        .any(|k| matches!(k, EventKind::OutputsLost { job: j, tasks: 1, rerun: Some(_) } if *j == job)));
    assert!(kinds.iter().any(|k| matches!(k, EventKind::OutputsCopied { tasks: 1, .. })));

    let mut restored = ClusterState::new();
    restored.restore_added(d.state.added().clone());
    assert_eq!(restored.short_of_copies(), d.state.short_of_copies());
    assert_eq!(d.replay(), d.state);
}

/// Invariants: when every copy of a task's outputs is lost, a new job runs that task again
/// (same command and index) and is journalled as the re-run; jobs not ended that read the
/// outputs wait for it (out of the queue), and an attempt of theirs that could not stage the
/// lost input waits too, with no failure counted; the re-run's outputs become the original
/// task's, and the readers go on once it ends.
#[test]
fn outputs_whose_every_copy_is_lost_are_made_again_by_a_rerun() {
    use crate::workflow::{Digest, OutputError, OutputFile, Outputs};
    let mut d = Driver::new();
    d.worker("a", 1);
    let options = |after: Vec<JobId>| crate::workflow::JobOptions { after, replicas: Some(0), ..Default::default() };
    let submit = |d: &mut Driver, array: &str, after: Vec<JobId>| {
        let command =
            Command::SubmitJobWith { spec: spec(array), request_id: None, owner: None, options: options(after) };
        let Response::JobSubmitted { job, .. } = d.apply(command) else { panic!("refused") };
        job
    };
    let with_file = |seed: u8, holder: &str| Outcome {
        outputs: Outputs {
            files: vec![OutputFile { path: "o".into(), size: 1, sha256: Digest([seed; 32]) }],
            holders: vec![holder.to_string()],
            error: None,
            logs: Vec::new(),
        },
        ..outcome(0, "")
    };
    let producer = submit(&mut d, "1", vec![]);
    let run = d.schedule().pop().expect("placed");
    d.apply(Command::task_finished(run.task, run.fence, "a".into(), with_file(1, "a")));
    let reader = submit(&mut d, "1-2", vec![producer]);
    d.worker("b", 1);
    let reading = d.schedule();
    assert_eq!(reading.len(), 2, "both reader tasks placed");

    // Worker a is lost with the only copy.
    let incarnation = d.state.worker("a").expect("registered").incarnation;
    d.apply(Command::WorkerLost { name: "a".into(), incarnation, reason: LostReason::Restarted });
    let rerun = d.state.jobs().map(|j| j.id).max().expect("a job");
    assert_eq!(d.state.rerun_of(rerun), Some(producer));
    assert_eq!(d.state.job(rerun).expect("kept").total, 1);
    let lost = d.state.journal().since(0, usize::MAX).find_map(|e| match e.kind {
        EventKind::OutputsLost { job, tasks, rerun } => Some((job, tasks, rerun)),
        _ => None,
    });
    assert_eq!(lost, Some((producer, 1, Some(rerun))));
    assert_eq!(d.state.waiting_on(reader).map(|w| w.iter().copied().collect::<Vec<_>>()), Some(vec![rerun]));

    // The reader's attempt on b cannot stage the input: it waits, no failure counted.
    let on_b = reading.iter().find(|r| r.worker == "b").expect("one on b");
    let missing = Outcome {
        outputs: Outputs {
            error: Some(OutputError::InputUnavailable { task: run.task, path: "o".into() }),
            ..Default::default()
        },
        ..Default::default()
    };
    d.apply(Command::task_finished(on_b.task, on_b.fence, "b".into(), missing));
    let task = d.state.job(reader).and_then(|j| j.task(on_b.task.slot)).expect("kept");
    assert_eq!((task.state.clone(), task.failures), (TaskState::Waiting, 0));

    // Only the re-run is placed; its outputs become the producer's; then the reader goes on.
    let runs = d.schedule();
    assert!(runs.iter().all(|r| r.task.job == rerun) && runs.len() == 1, "{runs:?}");
    d.apply(Command::task_finished(runs[0].task, runs[0].fence, runs[0].worker.clone(), with_file(2, "b")));
    let outputs = d.state.task_outputs(run.task).expect("the producer's outputs");
    assert_eq!((outputs.files[0].sha256, outputs.holders.clone()), (Digest([2; 32]), vec!["b".to_string()]));
    assert!(d.state.task_outputs(runs[0].task).is_none());
    assert_eq!(d.state.job(rerun).expect("kept").state, JobState::Succeeded);
    assert!(d.state.waiting_on(reader).is_none());
    assert!(d.schedule().iter().any(|r| r.task.job == reader));
    assert_eq!(d.replay(), d.state);
}

fn submit_with(d: &mut Driver, spec: JobSpec, options: crate::workflow::JobOptions) -> Response {
    d.apply(Command::SubmitJobWith { spec, request_id: None, owner: None, options })
}

fn submitted(response: Response) -> JobId {
    match response {
        Response::JobSubmitted { job, .. } => job,
        other => panic!("refused: {other:?}"),
    }
}

fn placed_indices(runs: &[crate::command::Assigned], job: JobId) -> Vec<u64> {
    let mut out: Vec<u64> =
        runs.iter().filter(|r| r.task.job == job).filter_map(|r| r.task.slot.array_index()).collect();
    out.sort_unstable();
    out
}

/// Invariants: a job pairing with another (`each`) runs task i only once task i of the other
/// has succeeded, before the other job ends; the held tasks are ranges (a million-task array
/// pairing with another costs a few of them); what is held is exactly what a restored replica
/// works out; the dependent ends once every task ran.
#[test]
fn each_pairs_task_i_with_task_i_and_starts_it_when_that_one_succeeded() {
    let mut d = Driver::new();
    d.worker("a", 16);
    let up = d.submit(spec("1-4"));
    let options = crate::workflow::JobOptions { each: vec![up], ..Default::default() };
    let down = submitted(submit_with(&mut d, spec("1-4"), options.clone()));
    assert_eq!(d.state.held_tasks(down).map(ToString::to_string), Some("1-4".to_string()));
    let first = d.schedule();
    assert_eq!(placed_indices(&first, up), vec![1, 2, 3, 4]);
    assert!(placed_indices(&first, down).is_empty(), "a paired task placed before its pair ran");

    let two = first.iter().find(|r| r.task == TaskId::array(up, 2)).expect("placed");
    d.finish(two, 0, "");
    assert_eq!(d.state.held_tasks(down).map(ToString::to_string), Some("1,3-4".to_string()));
    let mut restored = ClusterState::new();
    restored.restore_added(d.state.added().clone());
    let next = d.schedule();
    assert_eq!(placed_indices(&next, down), vec![2], "task 2 starts while job {up} still runs");
    assert!(!d.state.job(up).expect("kept").state.is_terminal());

    for run in first.iter().filter(|r| r.task != two.task).chain(&next) {
        d.finish(run, 0, "");
    }
    let rest = d.schedule();
    assert_eq!(placed_indices(&rest, down), vec![1, 3, 4]);
    for run in &rest {
        d.finish(run, 0, "");
    }
    assert_eq!(d.state.job(down).expect("kept").state, JobState::Succeeded);
    assert!(d.state.held_tasks(down).is_none());
    assert_eq!(d.replay(), d.state);

    // A million tasks pairing with a million: a range or two, whatever the size.
    let big_up = d.submit(spec("1-1000000"));
    let big = submitted(submit_with(
        &mut d,
        spec("1-1000000"),
        crate::workflow::JobOptions { each: vec![big_up], ..Default::default() },
    ));
    assert_eq!(d.state.held_tasks(big).map(IndexSet::range_count), Some(1));
    let runs = d.schedule();
    assert!(placed_indices(&runs, big).is_empty());
    assert!(d.state.held_tasks(big).is_some_and(|h| h.range_count() <= 2));
}

/// Invariants: a paired job that lacks an index, an unknown task, or a cycle is refused at
/// submit and leaves nothing behind; a job whose pair fails is cancelled, naming it.
#[test]
fn task_dependencies_are_checked_at_submit_and_a_failed_pair_cancels() {
    use crate::workflow::{DependencyError, JobOptions, TaskNeeds};
    let mut d = Driver::new();
    d.worker("a", 8);
    let up = d.submit(spec("1-3"));
    let before = d.state.jobs().count();
    let refused = |r: Response| match r {
        Response::Invalid { reason: Refusal::Dependency(e) } => e,
        other => panic!("not refused: {other:?}"),
    };
    let each = JobOptions { each: vec![up], ..Default::default() };
    assert_eq!(
        refused(submit_with(&mut d, spec("2-5"), each.clone())),
        DependencyError::EachMissing { job: up, task: 4 }
    );
    let rule = |t: &str, n: &str| TaskNeeds { tasks: IndexSet::parse(t).unwrap(), needs: IndexSet::parse(n).unwrap() };
    let cycle = JobOptions { needs: vec![rule("1", "2"), rule("2", "1")], ..Default::default() };
    assert_eq!(refused(submit_with(&mut d, spec("1-3"), cycle)), DependencyError::Cycle(vec![2, 1]));
    let unknown = JobOptions { needs: vec![rule("3", "9")], ..Default::default() };
    assert_eq!(refused(submit_with(&mut d, spec("1-3"), unknown)), DependencyError::NoSuchTask(9));
    assert_eq!(d.state.jobs().count(), before, "a refused job left something");

    let down = submitted(submit_with(&mut d, spec("1-3"), each));
    let runs = d.schedule();
    d.finish(&runs[0], 0, "");
    let released = d.schedule();
    assert_eq!(released.len(), 1, "the paired task of the one that succeeded");
    for run in runs.iter().skip(1) {
        d.finish(run, 1, "");
    }
    let job = d.state.job(down).expect("kept");
    assert_eq!(job.state, JobState::Cancelled);
    assert_eq!(d.state.unmet(down), Some(crate::workflow::Unmet { upstream: up, state: JobState::Failed }));
    assert_eq!(d.replay(), d.state);
}

/// Invariants: a task that needs others of its job starts once every one of them succeeded;
/// when one fails for good, the tasks needing it (and those needing them) are cancelled
/// without running and journalled, the rest run, and the job ends failed.
#[test]
fn needs_order_a_jobs_tasks_and_a_failure_cancels_what_depends_on_it() {
    use crate::workflow::{JobOptions, TaskNeeds};
    let rule = |t: &str, n: &str| TaskNeeds { tasks: IndexSet::parse(t).unwrap(), needs: IndexSet::parse(n).unwrap() };
    let mut d = Driver::new();
    d.worker("a", 8);
    let options = JobOptions { needs: vec![rule("4", "1-3"), rule("3", "1")], ..Default::default() };
    let job = submitted(submit_with(&mut d, spec("1-4"), options.clone()));
    let first = d.schedule();
    assert_eq!(placed_indices(&first, job), vec![1, 2]);
    d.finish(&first[0], 0, "");
    let three = d.schedule();
    assert_eq!(placed_indices(&three, job), vec![3]);
    d.finish(&three[0], 0, "");
    assert!(d.schedule().is_empty(), "task 4 waits for task 2");
    d.finish(&first[1], 0, "");
    let four = d.schedule();
    assert_eq!(placed_indices(&four, job), vec![4]);
    d.finish(&four[0], 0, "");
    assert_eq!(d.state.job(job).expect("kept").state, JobState::Succeeded);

    // Task 1 fails for good: 3 needs it, 4 needs 3; task 2 runs on; the job fails.
    let failing = submitted(submit_with(&mut d, spec("1-4"), options));
    let runs = d.schedule();
    assert_eq!(placed_indices(&runs, failing), vec![1, 2]);
    let one = runs.iter().find(|r| r.task == TaskId::array(failing, 1)).expect("placed");
    d.finish(one, 3, "");
    let j = d.state.job(failing).expect("kept");
    assert_eq!((j.counts.cancelled, j.counts.running + j.counts.assigned), (2, 1));
    let not_run = d.state.journal().since(0, usize::MAX).find_map(|e| match e.kind {
        EventKind::TasksNotRun { job, tasks, needed } => Some((job, tasks, needed)),
        _ => None,
    });
    assert_eq!(not_run, Some((failing, 2, TaskId::array(failing, 1))));
    let two = runs.iter().find(|r| r.task == TaskId::array(failing, 2)).expect("placed");
    d.finish(two, 0, "");
    assert_eq!(d.state.job(failing).expect("kept").state, JobState::Failed);
    assert_eq!(d.replay(), d.state);
}
