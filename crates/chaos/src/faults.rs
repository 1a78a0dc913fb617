//! The fault kinds and the seeded schedule of a scenario.

use flotilla_core::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// SIGKILL the leader, restart it later.
    KillLeader,
    /// SIGKILL a random master (leader or follower), restart it later.
    KillMaster,
    /// SIGKILL the leader and a follower of a 5-master group, restart both later.
    KillTwoMasters,
    /// SIGSTOP the leader past the election timeout (the stale-leader case), then SIGCONT.
    PauseLeader,
    /// SIGSTOP a worker that holds tasks past the worker timeout, then SIGCONT.
    PauseWorker,
    /// Cut the leader off from the other masters (both ways), then heal.
    PartitionLeader,
    /// Cut a minority of followers off from everyone, then heal.
    MinorityIsland,
    /// Drop traffic from the leader to one follower only, then heal.
    OneWayCut,
    /// Cut a worker off from all masters while its tasks keep running, then heal.
    IsolateWorker,
    /// Stop a follower, wipe its data directory, restart it.
    WipeFollower,
    /// Stop a follower, corrupt its raft log file, restart it.
    CorruptFollower,
    /// SIGKILL a worker with tasks in flight and restart it under the same name.
    RestartWorker,
    /// Fill a master's (small tmpfs) disk, then free it and restart the master if it stopped.
    DiskFull,
    /// Hand leadership to another master while the jobs run (`cluster transfer-leadership`).
    TransferLeader,
    /// Restart every master in turn with SIGTERM (followers first, the leader last), each
    /// caught up before the next.
    RollingRestart,
    /// Drain the busiest worker (with a short deadline) and SIGKILL the leader at once.
    DrainLeaderKill,
    /// Cut a minority of followers off, then ask to remove another follower: refused, as it
    /// would leave no quorum that answers; the membership stays as it was.
    RemoveDuringPartition,
    /// Add a master (3-master groups: a fourth) while it is cut off from the others: it stays
    /// a learner and the group commits on; once healed it catches up, votes, and is removed.
    LearnerCutOff,
    /// SIGKILL a worker holding copies of task outputs while tasks go on finishing (and
    /// copying theirs to it), restart it later under the same name.
    KillHolder,
    /// Overwrite a stored copy of a task's output on the worker that a fetch reads first:
    /// the read must find it, and the copy be replaced.
    CorruptArtifact,
}

pub const ALL: [Kind; 20] = [
    Kind::KillLeader,
    Kind::KillMaster,
    Kind::KillTwoMasters,
    Kind::PauseLeader,
    Kind::PauseWorker,
    Kind::PartitionLeader,
    Kind::MinorityIsland,
    Kind::OneWayCut,
    Kind::IsolateWorker,
    Kind::WipeFollower,
    Kind::CorruptFollower,
    Kind::RestartWorker,
    Kind::DiskFull,
    Kind::TransferLeader,
    Kind::RollingRestart,
    Kind::DrainLeaderKill,
    Kind::RemoveDuringPartition,
    Kind::LearnerCutOff,
    Kind::KillHolder,
    Kind::CorruptArtifact,
];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::KillLeader => "kill-leader",
            Kind::KillMaster => "kill-master",
            Kind::KillTwoMasters => "kill-two-masters",
            Kind::PauseLeader => "pause-leader",
            Kind::PauseWorker => "pause-worker",
            Kind::PartitionLeader => "partition-leader",
            Kind::MinorityIsland => "minority-island",
            Kind::OneWayCut => "one-way-cut",
            Kind::IsolateWorker => "isolate-worker",
            Kind::WipeFollower => "wipe-follower",
            Kind::CorruptFollower => "corrupt-follower",
            Kind::RestartWorker => "restart-worker",
            Kind::DiskFull => "disk-full",
            Kind::TransferLeader => "transfer-leader",
            Kind::RollingRestart => "rolling-restart",
            Kind::DrainLeaderKill => "drain-leader-kill",
            Kind::RemoveDuringPartition => "remove-during-partition",
            Kind::LearnerCutOff => "learner-cut-off",
            Kind::KillHolder => "kill-holder",
            Kind::CorruptArtifact => "corrupt-artifact",
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        ALL.iter().copied().find(|k| k.name() == name)
    }
}

#[derive(Clone, Debug)]
pub struct Fault {
    pub kind: Kind,
    /// Delay before injecting, after the previous fault healed.
    pub after_ms: u64,
    /// How long the fault lasts before it is healed.
    pub hold_ms: u64,
    /// Extra randomness for choices made at injection time.
    pub salt: u64,
}

#[derive(Clone, Debug)]
pub struct JobPlan {
    pub tasks: u64,
    pub sleep_ms: u64,
    pub mul: u64,
    pub add: u64,
    /// Tasks whose index is a multiple of 7 fail their first attempt (retried).
    pub flaky: bool,
}

#[derive(Clone, Debug)]
pub struct Schedule {
    pub seed: u64,
    pub masters: u64,
    pub faults: Vec<Fault>,
    /// Submitted at the start; one more is submitted while the first fault is active.
    pub jobs: Vec<JobPlan>,
}

impl Schedule {
    /// The schedule of a scenario: a pure function of its seed (and forced kinds, if any).
    pub fn generate(seed: u64, forced: &[Kind]) -> Schedule {
        let mut rng = Rng::new(seed);
        let kinds: Vec<Kind> = if forced.is_empty() {
            let n = rng.range(1, 3);
            (0..n).map(|_| *rng.pick(&ALL)).collect()
        } else {
            forced.to_vec()
        };
        let masters = if kinds.contains(&Kind::KillTwoMasters) || rng.chance(20) { 5 } else { 3 };
        let faults = kinds
            .into_iter()
            .map(|kind| {
                let hold_ms = match kind {
                    Kind::PauseWorker | Kind::IsolateWorker => rng.range(4_000, 6_000),
                    Kind::PauseLeader | Kind::PartitionLeader => rng.range(1_500, 3_500),
                    Kind::DiskFull => rng.range(1_500, 3_000),
                    _ => rng.range(500, 3_000),
                };
                Fault { kind, after_ms: rng.range(300, 1_500), hold_ms, salt: rng.next_u64() }
            })
            .collect();
        let jobs = (0..4)
            .map(|_| JobPlan {
                tasks: rng.range(15, 40),
                sleep_ms: rng.range(50, 400),
                mul: rng.range(1, 1000),
                add: rng.range(0, 1000),
                flaky: rng.chance(40),
            })
            .collect();
        Schedule { seed, masters, faults, jobs }
    }

    pub fn describe(&self) -> String {
        let faults: Vec<String> =
            self.faults.iter().map(|f| format!("{}@+{}ms/{}ms", f.kind.name(), f.after_ms, f.hold_ms)).collect();
        format!("seed={:#x} masters={} faults=[{}]", self.seed, self.masters, faults.join(", "))
    }
}

impl JobPlan {
    /// The bytes of the task's output file `out.txt` (it also leaves `pad.bin`, 256 KiB that
    /// differ between tasks, so that copies take a moment and are never deduplicated).
    pub fn expected_output(&self, index: u64) -> String {
        format!("{}\n", self.expected(index))
    }

    /// The task's expected stdout.
    pub fn expected(&self, index: u64) -> u64 {
        (index * self.mul + self.add) % 100_003
    }

    pub fn command(&self) -> Vec<String> {
        let fail_first = if self.flaky {
            "if [ \"$FLOTILLA_ATTEMPT\" = 1 ] && [ $((FLOTILLA_TASK_INDEX % 7)) = 0 ]; then exit 3; fi; "
        } else {
            ""
        };
        let script = format!(
            "sleep {}; {fail_first}v=$(( (FLOTILLA_TASK_INDEX * {} + {}) % 100003 )); echo $v > \"$FLOTILLA_OUTPUT_DIR/out.txt\"; \
             {{ echo $FLOTILLA_JOB_ID $FLOTILLA_TASK_INDEX; head -c 262144 /dev/zero; }} > \"$FLOTILLA_OUTPUT_DIR/pad.bin\"; echo $v",
            self.sleep_ms as f64 / 1000.0,
            self.mul,
            self.add
        );
        vec!["/bin/sh".into(), "-c".into(), script]
    }
}
