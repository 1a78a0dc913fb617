use super::*;
use crate::command::{Command, Response, WorkerInfo};
use crate::index_set::IndexSet;
use crate::model::JobSpec;
use crate::state::{ApplyCtx, ClusterState};
use crate::Proposal;
use std::collections::BTreeMap;

struct Setup {
    state: ClusterState,
    index: u64,
}

impl Setup {
    fn new() -> Self {
        Setup { state: ClusterState::new(), index: 0 }
    }
    fn apply(&mut self, c: Command) -> Response {
        self.index += 1;
        let ctx = ApplyCtx { index: self.index, term: 1, at_ms: self.index };
        self.state.apply(ctx, &Proposal::new(self.index, vec![c])).remove(0)
    }
    fn worker(&mut self, name: &str, cpus: u32, labels: &[(&str, &str)]) {
        let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.apply(Command::RegisterWorker(WorkerInfo {
            name: name.into(),
            instance: 1,
            cpus,
            queue: 0,
            memory: None,
            resources: BTreeMap::new(),
            labels,
        }));
    }
    fn job(&mut self, tasks: u64, priority: i32, cpus: u32, selector: &[(&str, &str)]) -> u64 {
        let spec = JobSpec {
            command: vec!["x".into()],
            array: Some(IndexSet::range(1, tasks)),
            priority,
            cpus,
            selector: selector.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        };
        match self.apply(Command::SubmitJob { spec, request_id: None }) {
            Response::JobSubmitted { job, .. } => job,
            r => panic!("{r:?}"),
        }
    }
}

#[test]
fn higher_priority_first_then_fifo() {
    let mut s = Setup::new();
    assert_eq!(s.apply(Command::SetSharing(crate::model::Sharing::Fifo)), Response::Noted);
    let low = s.job(5, 0, 1, &[]);
    let high = s.job(5, 10, 1, &[]);
    let low2 = s.job(5, 0, 1, &[]);
    s.worker("a", 7, &[]);
    let plan = plan(&s.state, usize::MAX);
    let jobs: Vec<u64> = plan.iter().map(|p| p.task.job).collect();
    assert_eq!(jobs, vec![high, high, high, high, high, low, low]);
    assert!(!jobs.contains(&low2));
}

#[test]
fn load_is_spread_to_the_least_loaded_worker() {
    let mut s = Setup::new();
    s.job(6, 0, 1, &[]);
    s.worker("a", 4, &[]);
    s.worker("b", 2, &[]);
    let plan = plan(&s.state, usize::MAX);
    let on_a = plan.iter().filter(|p| p.worker == "a").count();
    let on_b = plan.iter().filter(|p| p.worker == "b").count();
    assert_eq!((on_a, on_b), (4, 2));
    // With spare capacity, the first placements alternate rather than filling one worker.
    let first_two: Vec<&str> = plan.iter().take(2).map(|p| p.worker.as_str()).collect();
    assert_eq!(first_two, vec!["a", "b"]);
}

#[test]
fn selectors_and_cpus_restrict_placement_and_blocked_jobs_do_not_block_others() {
    let mut s = Setup::new();
    let zoned = s.job(3, 5, 1, &[("zone", "b")]);
    let big = s.job(1, 4, 8, &[]);
    let any = s.job(2, 0, 1, &[]);
    s.worker("a", 2, &[("zone", "a")]);
    let plan = plan(&s.state, usize::MAX);
    assert!(plan.iter().all(|p| p.task.job == any));
    assert_eq!(plan.len(), 2);
    let zoned_job = s.state.job(zoned).unwrap();
    assert!(unschedulable_reason(&s.state, zoned_job).unwrap().to_string().contains("zone=b"));
    let big_job = s.state.job(big).unwrap();
    assert!(unschedulable_reason(&s.state, big_job).unwrap().to_string().contains("8 cpus"));
    assert_eq!(unschedulable_reason(&s.state, s.state.job(any).unwrap()), None);
}

#[test]
fn no_workers_is_reported() {
    let mut s = Setup::new();
    let j = s.job(1, 0, 1, &[]);
    assert!(plan(&s.state, 10).is_empty());
    assert_eq!(
        unschedulable_reason(&s.state, s.state.job(j).unwrap()).map(|u| u.to_string()).as_deref(),
        Some("no workers are connected")
    );
}

#[test]
fn the_plan_respects_its_size_limit() {
    let mut s = Setup::new();
    s.job(100, 0, 1, &[]);
    s.worker("a", 50, &[]);
    assert_eq!(plan(&s.state, 7).len(), 7);
}

#[test]
fn free_cpus_fill_before_queues_and_queues_stay_bounded() {
    let mut s = Setup::new();
    s.job(20, 0, 1, &[]);
    s.apply(Command::RegisterWorker(WorkerInfo {
        name: "a".into(),
        instance: 1,
        cpus: 2,
        queue: 3,
        memory: None,
        resources: BTreeMap::new(),
        labels: BTreeMap::new(),
    }));
    s.worker("b", 2, &[]);
    let plan = plan(&s.state, usize::MAX);
    let on = |w: &str| plan.iter().filter(|p| p.worker == w).count();
    // b has no queue: 2; a: 2 running + 3 queued.
    assert_eq!((on("a"), on("b")), (5, 2));
    // The first four placements are the free cpus of both workers.
    let first: Vec<&str> = plan.iter().take(4).map(|p| p.worker.as_str()).collect();
    assert_eq!(first.iter().filter(|w| **w == "a").count(), 2);
}

/// Bug: with a deep queue, a worker's capacity (cpus + queue) covered a task needing more
/// cpus than the worker has, and the task was placed there.
#[test]
fn regression_a_deep_queue_does_not_make_a_small_worker_take_a_big_task() {
    let mut s = Setup::new();
    s.job(1, 0, 64, &[]);
    s.apply(Command::RegisterWorker(WorkerInfo {
        name: "a".into(),
        instance: 1,
        cpus: 2,
        queue: 500,
        memory: None,
        resources: BTreeMap::new(),
        labels: BTreeMap::new(),
    }));
    assert!(plan(&s.state, usize::MAX).is_empty());
}

/// A busy worker holding queued attempts beyond its cpus, an idle one that could run them.
fn busy_and_idle() -> (Setup, u64) {
    let mut s = Setup::new();
    s.worker("a", 2, &[]);
    s.apply(Command::SetWorkerQueue { worker: "a".into(), queue: 8 });
    let job = s.job(6, 0, 1, &[]);
    let Response::Assigned { runs } = s.apply(Command::Assign { placements: plan(&s.state, usize::MAX) }) else {
        panic!("assign")
    };
    assert_eq!(runs.len(), 6);
    s.worker("b", 2, &[]);
    (s, job)
}

#[test]
fn an_idle_worker_gets_the_back_of_a_busy_queue() {
    let (s, job) = busy_and_idle();
    assert!(plan(&s.state, usize::MAX).is_empty(), "nothing waits in the cluster queue");
    let wanted = revocations(&s.state, |_, _| false);
    let tasks: Vec<TaskId> = wanted.iter().map(|r| r.task).collect();
    // b has 2 free cpus: the last two a queued, never the two it likely runs (1 and 2).
    assert_eq!(tasks, vec![TaskId::array(job, 6), TaskId::array(job, 5)]);
    assert!(wanted.iter().all(|r| r.worker == "a"));
    let skipped = revocations(&s.state, |t, _| t == TaskId::array(job, 6));
    let tasks: Vec<TaskId> = skipped.iter().map(|r| r.task).collect();
    assert_eq!(tasks, vec![TaskId::array(job, 5), TaskId::array(job, 4)], "one being revoked is not asked twice");
}

#[test]
fn nothing_is_revoked_for_a_worker_that_could_not_run_it() {
    let mut s = Setup::new();
    s.worker("a", 2, &[("zone", "x")]);
    s.apply(Command::SetWorkerQueue { worker: "a".into(), queue: 8 });
    s.job(6, 0, 1, &[("zone", "x")]);
    s.apply(Command::Assign { placements: plan(&s.state, usize::MAX) });
    s.worker("b", 2, &[("zone", "y")]);
    assert!(revocations(&s.state, |_, _| false).is_empty(), "b's labels do not match the job's selector");
}

#[test]
fn a_revoked_attempt_waits_again_and_goes_to_the_idle_worker() {
    let (mut s, job) = busy_and_idle();
    let r = revocations(&s.state, |_, _| false).remove(0);
    let revoke = Command::TaskRevoked { task: r.task, fence: r.fence, worker: r.worker.clone() };
    assert_eq!(s.apply(revoke.clone()), Response::Revoked);
    s.state.sanity_check();
    assert!(matches!(s.apply(revoke), Response::Stale { .. }), "a repeated confirmation changes nothing");
    let placed = plan(&s.state, usize::MAX);
    assert_eq!(placed, vec![Placement { task: TaskId::array(job, 6), worker: "b".into() }]);
    let Response::Assigned { runs } = s.apply(Command::Assign { placements: placed }) else { panic!("assign") };
    assert_eq!(runs[0].fence.attempt, 2, "a new attempt, fenced apart from the revoked one");
    let counts = s.state.job(job).map(|j| j.counts).expect("job");
    assert_eq!((counts.waiting, counts.assigned), (0, 6));
    // The old attempt's late confirmation or result changes nothing.
    let late = Command::TaskRevoked { task: r.task, fence: r.fence, worker: r.worker };
    assert!(matches!(s.apply(late), Response::Stale { .. }));
}

#[test]
fn an_attempt_that_started_is_never_revoked() {
    let (mut s, _) = busy_and_idle();
    let r = revocations(&s.state, |_, _| false).remove(0);
    let started = Command::TaskStarted { task: r.task, fence: r.fence, worker: r.worker.clone() };
    assert_eq!(s.apply(started), Response::Started);
    let revoke = Command::TaskRevoked { task: r.task, fence: r.fence, worker: r.worker };
    assert!(matches!(s.apply(revoke), Response::Stale { .. }));
    assert!(revocations(&s.state, |_, _| false).iter().all(|x| x.task != r.task), "running: not asked again");
}

#[test]
fn jobs_of_one_priority_take_turns_the_one_holding_least_first() {
    let mut s = Setup::new();
    s.worker("a", 4, &[]);
    let huge = s.job(100_000, 0, 1, &[]);
    s.apply(Command::Assign { placements: plan(&s.state, 3) });
    // Submitted behind the array, the short job gets the free cpu at once.
    let short = s.job(5, 0, 1, &[]);
    let placed: Vec<u64> = plan(&s.state, usize::MAX).iter().map(|p| p.task.job).collect();
    assert_eq!(placed, vec![short], "the array holds 3 attempts, the short job none");
    // With more room, they alternate once level.
    s.worker("b", 6, &[]);
    let placed: Vec<u64> = plan(&s.state, usize::MAX).iter().map(|p| p.task.job).collect();
    assert_eq!(placed, vec![short, short, short, huge, short, huge, short]);
}

#[test]
fn a_higher_priority_still_goes_first_under_fair_sharing() {
    let mut s = Setup::new();
    let low = s.job(5, 0, 1, &[]);
    let high = s.job(5, 10, 1, &[]);
    s.worker("a", 6, &[]);
    let jobs: Vec<u64> = plan(&s.state, usize::MAX).iter().map(|p| p.task.job).collect();
    assert_eq!(jobs, vec![high, high, high, high, high, low]);
}

impl Setup {
    fn worker_with(&mut self, name: &str, cpus: u32, queue: u32, memory: Option<u64>, resources: &[(&str, u32)]) {
        let resp = self.apply(Command::RegisterWorker(WorkerInfo {
            name: name.into(),
            instance: 1,
            cpus,
            queue,
            memory,
            resources: resources.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            labels: BTreeMap::new(),
        }));
        assert!(matches!(resp, Response::WorkerRegistered { .. }), "{resp:?}");
    }

    fn submit(&mut self, spec: JobSpec) -> u64 {
        match self.apply(Command::SubmitJob { spec, request_id: None }) {
            Response::JobSubmitted { job, .. } => job,
            r => panic!("{r:?}"),
        }
    }

    /// Plans and commits: the placements that applied.
    fn round(&mut self) -> Vec<crate::command::Assigned> {
        let placements = plan(&self.state, usize::MAX);
        match self.apply(Command::Assign { placements }) {
            Response::Assigned { runs } => runs,
            r => panic!("{r:?}"),
        }
    }
}

fn array(tasks: u64) -> JobSpec {
    JobSpec { command: vec!["x".into()], array: Some(IndexSet::range(1, tasks)), ..Default::default() }
}

/// Invariant: no unit of a named resource and no byte of memory is ever held twice, even
/// with deep cpu queues that would take many more tasks.
#[test]
fn named_resources_and_memory_are_never_over_committed() {
    let mut s = Setup::new();
    s.worker_with("gpu-box", 8, 64, Some(8 << 30), &[("gpu", 2)]);
    s.worker_with("plain", 8, 64, Some(8 << 30), &[]);
    let gpus = s.submit(JobSpec { resources: [("gpu".to_string(), 1)].into(), ..array(10) });
    let big = s.submit(JobSpec { memory: Some(3 << 30), ..array(10) });
    let runs = s.round();
    let on = |job: u64, worker: &str| runs.iter().filter(|r| r.task.job == job && r.worker == worker).count();
    assert_eq!(on(gpus, "gpu-box"), 2, "one task per gpu unit");
    assert_eq!(on(gpus, "plain"), 0, "a worker without gpus never runs a gpu task");
    assert_eq!(on(big, "gpu-box") + on(big, "plain"), 4, "two 3G tasks fit in each 8G worker");
    // The two gpu attempts hold different units.
    let w = s.state.worker("gpu-box").unwrap();
    let mut units: Vec<u32> = w.grants.values().filter_map(|g| g.units.get("gpu")).flatten().copied().collect();
    units.sort_unstable();
    assert_eq!(units, vec![0, 1]);
    // Nothing more fits until an attempt ends.
    assert!(s.round().is_empty());
    s.state.sanity_check();
    // A task that ends gives its unit back: the next gpu task gets that unit.
    let done = runs.iter().find(|r| r.task.job == gpus).unwrap().clone();
    let unit = s.state.worker("gpu-box").unwrap().grants[&done.task].units["gpu"].clone();
    s.apply(Command::TaskFinished {
        task: done.task,
        fence: done.fence,
        worker: done.worker.clone(),
        outcome: crate::state::tests::outcome(0, ""),
    });
    let next = s.round();
    assert_eq!(next.len(), 1);
    assert_eq!(s.state.worker("gpu-box").unwrap().grants[&next[0].task].units["gpu"], unit);
    s.state.sanity_check();
}

#[test]
fn a_task_no_worker_could_ever_satisfy_is_explained() {
    let mut s = Setup::new();
    s.worker_with("a", 4, 0, Some(1 << 30), &[("gpu", 1)]);
    let two_gpus = s.submit(JobSpec { resources: [("gpu".to_string(), 2)].into(), ..array(1) });
    let license = s.submit(JobSpec { resources: [("license".to_string(), 1)].into(), ..array(1) });
    let memory = s.submit(JobSpec { memory: Some(4 << 30), ..array(1) });
    let fits = s.submit(JobSpec { resources: [("gpu".to_string(), 1)].into(), ..array(1) });
    let why = |s: &Setup, j| unschedulable_reason(&s.state, s.state.job(j).unwrap()).map(|u| u.to_string());
    assert_eq!(why(&s, two_gpus).unwrap(), "each task needs gpu=2 but the most any matching worker offers is gpu=1");
    assert!(why(&s, license).unwrap().contains("no matching worker offers license"), "{:?}", why(&s, license));
    assert!(why(&s, memory).unwrap().contains("needs 4G of memory but the largest matching worker offers 1G"));
    assert_eq!(why(&s, fits), None);
}

#[test]
fn preferred_workers_fill_first_and_avoided_ones_last_but_no_cpu_stays_idle() {
    let mut s = Setup::new();
    s.worker("a", 2, &[("zone", "a")]);
    s.worker("b", 2, &[("zone", "b")]);
    s.worker("c", 2, &[("zone", "c")]);
    let affinity = crate::model::Affinity {
        prefer: [("zone".to_string(), "b".to_string())].into(),
        avoid: [("zone".to_string(), "a".to_string())].into(),
        spread: None,
    };
    let j = s.submit(JobSpec { affinity: affinity.clone(), ..array(3) });
    let runs = s.round();
    let workers: Vec<&str> = runs.iter().map(|r| r.worker.as_str()).collect();
    assert_eq!(workers, vec!["b", "b", "c"], "preferred first, then neutral");
    // Six tasks on six cpus: the avoided worker is used too rather than left idle.
    let j2 = s.submit(JobSpec { affinity, ..array(3) });
    let runs = s.round();
    assert!(runs.iter().all(|r| r.task.job == j2));
    assert_eq!(runs.iter().filter(|r| r.worker == "a").count(), 2);
    assert_eq!(runs.iter().filter(|r| r.worker == "c").count(), 1);
    let _ = j;
}

/// Invariant: a spread job's attempts differ by at most one between the label's values.
#[test]
fn a_spread_job_is_spread_evenly_over_the_label_values() {
    let mut s = Setup::new();
    // Zone a has three big workers, zone b one: by load alone most tasks would go to zone a.
    s.worker("a1", 8, &[("zone", "a")]);
    s.worker("a2", 8, &[("zone", "a")]);
    s.worker("a3", 8, &[("zone", "a")]);
    s.worker("b1", 8, &[("zone", "b")]);
    let spread = crate::model::Affinity { spread: Some("zone".into()), ..Default::default() };
    let j = s.submit(JobSpec { affinity: spread.clone(), ..array(8) });
    let runs = s.round();
    let in_zone = |z: &str| runs.iter().filter(|r| r.task.job == j && r.worker.starts_with(z)).count();
    assert_eq!((in_zone("a"), in_zone("b")), (4, 4));
    // Later rounds count what the job already holds.
    let k = s.submit(JobSpec { affinity: spread, ..array(3) });
    let first = s.round();
    assert_eq!(first.len(), 3);
    let held_in = |z: &str| s.state.workers().filter(|w| w.name.starts_with(z)).map(|w| w.tasks.len()).sum::<usize>();
    assert_eq!(held_in("a") + held_in("b"), 11);
    let _ = k;
    s.state.sanity_check();
}

/// Load is expected work, not a count: a worker queueing two tasks measured at 5 s is more
/// loaded than one queueing four measured at 10 ms, so the next task queues behind the short
/// ones.
#[test]
fn queues_fill_by_measured_work_not_by_count() {
    let mut s = Setup::new();
    s.worker_with("a", 1, 8, None, &[]);
    s.worker_with("b", 1, 8, None, &[]);
    let long = s.submit(array(2));
    let short = s.submit(array(5));
    // Measure each job once: one long task ran 5 s on a, one short one 10 ms on b.
    let finish = |s: &mut Setup, job: u64, worker: &str, ms: u64| {
        let placements = vec![Placement { task: TaskId::array(job, 1), worker: worker.into() }];
        let Response::Assigned { runs } = s.apply(Command::Assign { placements }) else { panic!() };
        let mut outcome = crate::state::tests::outcome(0, "");
        outcome.duration_ms = ms;
        s.apply(Command::TaskFinished { task: runs[0].task, fence: runs[0].fence, worker: worker.into(), outcome });
    };
    finish(&mut s, long, "a", 5_000);
    finish(&mut s, short, "b", 10);
    // a holds the other long task; b holds three short ones: by count b is busier.
    let place = |s: &mut Setup, job: u64, index: u64, worker: &str| {
        let placements = vec![Placement { task: TaskId::array(job, index), worker: worker.into() }];
        assert!(matches!(s.apply(Command::Assign { placements }), Response::Assigned { runs } if runs.len() == 1));
    };
    place(&mut s, long, 2, "a");
    for i in 2..5 {
        place(&mut s, short, i, "b");
    }
    let plan = plan(&s.state, usize::MAX);
    assert_eq!(plan.len(), 1);
    assert_eq!(plan[0].worker, "b", "the last short task should queue behind the short ones");
}
