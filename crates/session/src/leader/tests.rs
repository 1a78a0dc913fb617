//! Exact effect lists of the leader's session core, every message through the wire encoding.

use std::time::Duration;

use flotilla_core::command::{Command, Response};
use flotilla_core::model::{Fence, Outcome, TaskId};
use flotilla_core::reason::LostReason;
use flotilla_proto::wire::{MasterBody, MasterMsg, RunTask, WorkerMsg, PROTOCOL_VERSION};

use super::*;
use crate::testing::{info, Cluster, Outbox};

const TERM: u64 = 4;

/// A core leading `TERM` and ready, with a cluster state.
struct Leader {
    core: LeaderCore,
    cluster: Cluster,
    out: Outbox<Effect>,
}

fn config() -> LeaderConfig {
    LeaderConfig::new(2, Duration::from_secs(3))
}

fn msg(body: MasterBody) -> MasterMsg {
    MasterMsg { term: TERM, body }
}

fn hello(name: &str, instance: u64, known: Vec<(TaskId, Fence)>) -> WorkerMsg {
    WorkerMsg::Hello { protocol: PROTOCOL_VERSION, info: info(name, instance, 2), known, highest_term: 0 }
}

impl Leader {
    /// Leading and ready: the election note is committed.
    fn ready() -> Leader {
        let mut l = Leader { core: LeaderCore::new(config()), cluster: Cluster::new(), out: Outbox::default() };
        l.core.lead(l.cluster.at(0), TERM, &mut l.out.effects);
        let effects = l.out.take();
        assert_eq!(effects, vec![Effect::Propose { id: 1, commands: vec![Command::LeaderElected { node: 2 }] }]);
        l.commit(0, 1, vec![Command::LeaderElected { node: 2 }]);
        // The first leader names the cluster.
        let effects = l.out.take();
        let [Effect::Propose { id: 2, commands }] = effects.as_slice() else { panic!("{effects:?}") };
        assert!(matches!(commands.as_slice(), [Command::SetClusterIdentity { id }] if *id != 0));
        l.commit(0, 2, commands.clone());
        assert_eq!(l.out.take(), vec![]);
        l
    }

    /// Commits a proposal and tells the core.
    fn commit(&mut self, ms: u64, id: ProposalId, commands: Vec<Command>) -> Vec<Response> {
        let responses = self.cluster.commit(TERM, commands);
        let now = self.cluster.at(ms);
        self.core.on_applied(now, &self.cluster, id, &responses, &mut self.out.effects);
        responses
    }

    fn message(&mut self, ms: u64, session: SessionId, m: WorkerMsg) -> Vec<Effect> {
        let now = self.cluster.at(ms);
        self.core.on_message(now, &self.cluster, session, m, &mut self.out.effects);
        self.out.take()
    }

    fn tick(&mut self, ms: u64) -> Vec<Effect> {
        let now = self.cluster.at(ms);
        self.core.on_tick(now, &self.cluster, &mut self.out.effects);
        self.out.take()
    }

    /// Opens session `session` for a new worker and registers it; returns its incarnation.
    fn admit(&mut self, ms: u64, session: SessionId, name: &str, instance: u64) -> u64 {
        self.core.open(self.cluster.at(ms), session);
        let effects = self.message(ms, session, hello(name, instance, vec![]));
        let [Effect::Propose { id, commands }] = effects.as_slice() else {
            panic!("expected a registration: {effects:?}")
        };
        let (id, commands) = (*id, commands.clone());
        let responses = self.commit(ms, id, commands);
        let Some(Response::WorkerRegistered { incarnation, .. }) = responses.first() else { panic!("{responses:?}") };
        let incarnation = *incarnation;
        let worker: Arc<str> = Arc::from(name);
        assert_eq!(
            self.out.take(),
            vec![
                Effect::Send { session, msg: msg(MasterBody::Welcome { leader: 2, incarnation, heartbeat_ms: 1000 }) },
                Effect::Observe(Observation::SessionOpened { worker, incarnation, attached: false }),
            ]
        );
        incarnation
    }
}

#[test]
fn a_fresh_worker_is_registered_then_welcomed() {
    let mut l = Leader::ready();
    let incarnation = l.admit(10, 7, "w1", 11);
    assert_eq!(incarnation, 1);
    assert_eq!(l.core.open_sessions(), 1);
    l.out.assert_empty();
}

#[test]
fn a_second_live_process_under_the_same_name_is_refused() {
    let mut l = Leader::ready();
    l.admit(10, 7, "w1", 11);
    l.core.open(l.cluster.at(20), 8);
    let effects = l.message(20, 8, hello("w1", 12, vec![]));
    let reason = "a worker named 'w1' is already connected; give each worker a unique --name".to_string();
    assert_eq!(
        effects,
        vec![Effect::Send { session: 8, msg: msg(MasterBody::Refused { reason }) }, Effect::Close { session: 8 }]
    );
}

#[test]
fn a_restarted_worker_registers_anew_once_its_old_session_is_gone() {
    let mut l = Leader::ready();
    l.admit(10, 7, "w1", 11);
    let mut effects = Vec::new();
    l.core.closed(7, &mut effects);
    assert_eq!(effects, vec![Effect::Observe(Observation::SessionClosed { worker: Arc::from("w1") })]);
    l.core.open(l.cluster.at(20), 8);
    let effects = l.message(20, 8, hello("w1", 12, vec![]));
    assert!(
        matches!(effects.as_slice(), [Effect::Propose { commands, .. }] if matches!(commands[0], Command::RegisterWorker(_)))
    );
}

#[test]
fn the_same_process_reattaches_without_a_registration_and_is_reconciled() {
    let mut l = Leader::ready();
    let incarnation = l.admit(10, 7, "w1", 11);
    let job = l.cluster.submit(2);
    // A plan puts both tasks on w1.
    let effects = l.tick(20);
    let [Effect::Propose { id, commands }] = effects.as_slice() else { panic!("expected a plan: {effects:?}") };
    let (id, commands) = (*id, commands.clone());
    l.commit(25, id, commands);
    let effects = l.out.take();
    let runs: Vec<RunTask> = (1..=2)
        .map(|i| {
            RunTask::for_attempt(
                &l.cluster.state,
                &l.cluster.records,
                TaskId::array(job, i),
                Fence { term: TERM, attempt: 1 },
            )
            .unwrap()
        })
        .map(|r| r.expect("assigned"))
        .collect();
    let run = |i: usize| runs[i - 1].clone();
    assert_eq!(
        effects,
        vec![
            Effect::Observe(Observation::Placement { took: Duration::from_millis(5), assigned: 2 }),
            Effect::Send {
                session: 7,
                msg: msg(MasterBody::Batch(vec![MasterBody::Run(run(1)), MasterBody::Run(run(2))]))
            },
        ]
    );
    // The stream breaks; the same process comes back knowing task 1 and an attempt the state
    // no longer gives it.
    l.core.closed(7, &mut Vec::new());
    l.core.open(l.cluster.at(30), 9);
    let fence = Fence { term: TERM, attempt: 1 };
    let stale = (TaskId::array(job, 9), Fence { term: 1, attempt: 1 });
    let effects = l.message(30, 9, hello("w1", 11, vec![(TaskId::array(job, 1), fence), stale]));
    assert_eq!(
        effects,
        vec![
            Effect::Send { session: 9, msg: msg(MasterBody::Welcome { leader: 2, incarnation, heartbeat_ms: 1000 }) },
            Effect::Observe(Observation::SessionOpened { worker: Arc::from("w1"), incarnation, attached: true }),
            Effect::Send {
                session: 9,
                msg: msg(MasterBody::Batch(vec![
                    MasterBody::Run(run(2)),
                    MasterBody::Stop { task: stale.0, fence: stale.1 }
                ]))
            },
        ]
    );
}

#[test]
fn a_worker_of_another_protocol_version_is_refused() {
    let mut l = Leader::ready();
    l.core.open(l.cluster.at(0), 3);
    let old = WorkerMsg::Hello { protocol: 1, info: info("w1", 1, 1), known: vec![], highest_term: 0 };
    let effects = l.message(0, 3, old);
    let reason = format!("protocol 1 is not supported (this master speaks {PROTOCOL_VERSION})");
    assert_eq!(
        effects,
        vec![
            Effect::Send { session: 3, msg: MasterMsg { term: 0, body: MasterBody::Refused { reason } } },
            Effect::Close { session: 3 },
        ]
    );
}

#[test]
fn a_bad_name_is_refused() {
    let mut l = Leader::ready();
    l.core.open(l.cluster.at(0), 3);
    let effects = l.message(0, 3, hello("", 1, vec![]));
    let reason = "worker name must be 1 to 256 characters".to_string();
    assert_eq!(
        effects,
        vec![Effect::Send { session: 3, msg: msg(MasterBody::Refused { reason }) }, Effect::Close { session: 3 }]
    );
}

#[test]
fn a_follower_names_the_leader() {
    let mut core = LeaderCore::new(config());
    let cluster = Cluster::new();
    let mut out = Outbox::default();
    core.follow(5, Some("10.0.0.3:7700".into()), &mut out.effects);
    assert_eq!(out.take(), vec![]);
    core.open(cluster.at(0), 1);
    core.on_message(cluster.at(0), &cluster, 1, hello("w1", 1, vec![]), &mut out.effects);
    let body = MasterBody::NotLeader { leader: Some("10.0.0.3:7700".into()) };
    assert_eq!(
        out.take(),
        vec![Effect::Send { session: 1, msg: MasterMsg { term: 5, body } }, Effect::Close { session: 1 }]
    );
}

#[test]
fn a_hello_waits_for_the_new_leader_to_be_ready() {
    let mut core = LeaderCore::new(config());
    let mut cluster = Cluster::new();
    let mut out = Outbox::default();
    core.lead(cluster.at(0), TERM, &mut out.effects);
    out.take();
    core.open(cluster.at(1), 1);
    core.on_message(cluster.at(1), &cluster, 1, hello("w1", 1, vec![]), &mut out.effects);
    assert_eq!(out.take(), vec![], "not ready: the hello waits");
    let responses = cluster.commit(TERM, vec![Command::LeaderElected { node: 2 }]);
    core.on_applied(cluster.at(2), &cluster, 1, &responses, &mut out.effects);
    let effects = out.take();
    assert!(
        matches!(effects.as_slice(), [Effect::Propose { id: 2, commands }, Effect::Propose { id: 3, .. }] if matches!(commands[0], Command::RegisterWorker(_))),
        "{effects:?}"
    );
}

#[test]
fn a_hello_that_waits_too_long_for_readiness_is_sent_away() {
    let mut core = LeaderCore::new(config());
    let cluster = Cluster::new();
    let mut out = Outbox::default();
    core.lead(cluster.at(0), TERM, &mut out.effects);
    out.take();
    core.open(cluster.at(0), 1);
    core.on_message(cluster.at(0), &cluster, 1, hello("w1", 1, vec![]), &mut out.effects);
    core.on_tick(cluster.at(10_000), &cluster, &mut out.effects);
    assert_eq!(
        out.take(),
        vec![
            Effect::Send { session: 1, msg: msg(MasterBody::NotLeader { leader: None }) },
            Effect::Close { session: 1 }
        ]
    );
}

#[test]
fn a_stream_without_hello_is_closed() {
    let mut l = Leader::ready();
    l.core.open(l.cluster.at(0), 5);
    assert_eq!(l.tick(9_999), vec![]);
    assert_eq!(
        l.tick(10_000),
        vec![
            Effect::Observe(Observation::ProtocolError { session: 5, error: ProtocolError::NoHello }),
            Effect::Close { session: 5 },
        ]
    );
}

#[test]
fn a_silent_worker_is_declared_lost_once() {
    let mut l = Leader::ready();
    let incarnation = l.admit(0, 7, "w1", 11);
    assert_eq!(l.tick(3_000), vec![], "exactly the timeout is not yet past it");
    let effects = l.tick(3_300);
    assert_eq!(
        effects,
        vec![
            Effect::Close { session: 7 },
            Effect::Observe(Observation::WorkerSilent {
                worker: Arc::from("w1"),
                incarnation,
                silent: Duration::from_millis(3_300)
            }),
            Effect::Propose {
                id: 4,
                commands: vec![Command::WorkerLost {
                    name: "w1".into(),
                    incarnation,
                    reason: LostReason::Silent { silent_ms: 3_300 }
                }]
            },
        ]
    );
    assert_eq!(l.tick(3_600), vec![], "proposed once");
    // The proposal failed: the next check proposes it again.
    l.core.on_failed(l.cluster.at(3_700), 4, Failure::Other, &mut l.out.effects);
    let effects = l.tick(3_900);
    assert!(matches!(effects.as_slice(), [Effect::Observe(_), Effect::Propose { .. }]), "{effects:?}");
}

#[test]
fn heartbeats_keep_a_worker_alive_and_echoes_come_back() {
    let mut l = Leader::ready();
    l.admit(0, 7, "w1", 11);
    let stats =
        WorkerMsg::Stats { running: 1, queued: 2, spawned: 3, spawn_micros: 400, echo: Some(9), rtt_micros: Some(250) };
    assert_eq!(
        l.message(2_000, 7, stats),
        vec![
            Effect::Observe(Observation::Heartbeat { gap: Some(Duration::from_millis(2_000)) }),
            Effect::Observe(Observation::WorkerStats {
                worker: Arc::from("w1"),
                running: 1,
                queued: 2,
                spawned: 3,
                spawn_micros: 400
            }),
            Effect::Observe(Observation::RoundTrip(Duration::from_micros(250))),
            Effect::Send { session: 7, msg: msg(MasterBody::Echo { token: 9 }) },
        ]
    );
    assert_eq!(l.tick(4_000), vec![], "heard from 2 s ago");
}

#[test]
fn reports_become_one_proposal_and_fenced_attempts_are_stopped_or_acknowledged() {
    let mut l = Leader::ready();
    l.admit(0, 7, "w1", 11);
    let job = l.cluster.submit(1);
    let stale = Fence { term: 1, attempt: 1 };
    let task = TaskId::array(job, 1);
    let reports = WorkerMsg::Batch(vec![
        WorkerMsg::Started { task, fence: stale },
        WorkerMsg::Finished { task, fence: stale, outcome: Outcome::default() },
        WorkerMsg::Queue { queue: 5 },
    ]);
    let effects = l.message(10, 7, reports);
    let [Effect::Observe(Observation::Heartbeat { .. }), Effect::Propose { id, commands }] = effects.as_slice() else {
        panic!("{effects:?}")
    };
    assert_eq!(commands.len(), 3);
    let (id, commands) = (*id, commands.clone());
    let responses = l.commit(20, id, commands);
    assert!(matches!(responses[0], Response::Stale { .. }) && matches!(responses[1], Response::Stale { .. }));
    assert_eq!(
        l.out.take(),
        vec![Effect::Send {
            session: 7,
            msg: msg(MasterBody::Batch(vec![
                MasterBody::Stop { task, fence: stale },
                MasterBody::Ack { task, fence: stale }
            ]))
        }]
    );
}

#[test]
fn stepping_down_closes_every_session_and_forgets_pending_proposals() {
    let mut l = Leader::ready();
    l.admit(0, 7, "w1", 11);
    l.admit(0, 8, "w2", 12);
    l.core.follow(TERM + 1, Some("m3".into()), &mut l.out.effects);
    assert_eq!(
        l.out.take(),
        vec![
            Effect::Observe(Observation::SessionClosed { worker: Arc::from("w1") }),
            Effect::Close { session: 7 },
            Effect::Observe(Observation::SessionClosed { worker: Arc::from("w2") }),
            Effect::Close { session: 8 },
        ]
    );
    assert_eq!(l.core.leading_term(), None);
    assert_eq!(l.core.last_seen("w1"), None);
    // A late answer to an old proposal does nothing.
    l.core.on_applied(l.cluster.at(10), &l.cluster, 1, &[Response::Noted], &mut l.out.effects);
    l.out.assert_empty();
}

/// Regression (found by the chaos run, `isolate-worker`): a worker declared lost that came back
/// was declared lost again at once, because the liveness check ran between its registration's
/// commit and its welcome and still saw the silence from before.
#[test]
fn regression_a_worker_registering_again_after_being_lost_gets_a_fresh_grace_period() {
    let mut l = Leader::ready();
    let incarnation = l.admit(0, 7, "w1", 11);
    let effects = l.tick(3_300);
    let Some(Effect::Propose { id, commands }) = effects.last() else { panic!("{effects:?}") };
    let (id, commands) = (*id, commands.clone());
    l.commit(3_310, id, commands);
    // The same process reconnects: a new registration, committed, its outcome not yet back.
    l.core.open(l.cluster.at(3_400), 8);
    let effects = l.message(3_400, 8, hello("w1", 11, vec![]));
    let [Effect::Propose { id, commands }] = effects.as_slice() else { panic!("{effects:?}") };
    let (id, commands) = (*id, commands.clone());
    let responses = l.cluster.commit(TERM, commands);
    assert!(matches!(responses[0], Response::WorkerRegistered { incarnation: i, .. } if i > incarnation));
    assert_eq!(l.tick(3_600), vec![], "not lost again before its welcome");
    l.core.on_applied(l.cluster.at(3_650), &l.cluster, id, &responses, &mut l.out.effects);
    assert!(matches!(
        l.out.take().first(),
        Some(Effect::Send { msg: MasterMsg { body: MasterBody::Welcome { .. }, .. }, .. })
    ));
    assert_eq!(l.tick(6_000), vec![], "heard at its welcome");
}

#[test]
fn an_idle_worker_gets_queued_work_from_a_busy_one_through_a_confirmed_revocation() {
    let mut l = Leader::ready();
    l.admit(0, 7, "busy", 1);
    let queue = l.message(1, 7, WorkerMsg::Queue { queue: 8 });
    let Some(Effect::Propose { id, commands }) = queue.last() else { panic!("{queue:?}") };
    let (id, commands) = (*id, commands.clone());
    l.commit(2, id, commands);
    let job = l.cluster.submit(6);
    let effects = l.tick(3);
    let Some(Effect::Propose { id, commands }) = effects.last() else { panic!("{effects:?}") };
    let (id, commands) = (*id, commands.clone());
    l.commit(4, id, commands);
    l.out.take();
    l.admit(5, 8, "idle", 2);
    // Nothing waits: the back of the busy worker's queue is asked back for the idle one.
    let fence = Fence { term: TERM, attempt: 1 };
    let (t5, t6) = (TaskId::array(job, 5), TaskId::array(job, 6));
    assert_eq!(
        l.tick(6),
        vec![Effect::Send {
            session: 7,
            msg: msg(MasterBody::Batch(vec![
                MasterBody::Revoke { task: t6, fence },
                MasterBody::Revoke { task: t5, fence }
            ]))
        }]
    );
    assert_eq!(l.tick(7), vec![], "asked once");
    // The busy worker gives one back (the other had started).
    let effects = l.message(8, 7, WorkerMsg::Revoked { task: t6, fence });
    let [Effect::Observe(_), Effect::Propose { id, commands }] = effects.as_slice() else { panic!("{effects:?}") };
    assert_eq!(commands, &vec![Command::TaskRevoked { task: t6, fence, worker: "busy".into() }]);
    let (id, commands) = (*id, commands.clone());
    l.commit(9, id, commands);
    assert_eq!(l.out.take(), vec![Effect::Send { session: 7, msg: msg(MasterBody::Ack { task: t6, fence }) }]);
    // The next round places it on the idle worker, as a new attempt.
    let effects = l.tick(10);
    let Some(Effect::Propose { commands, .. }) = effects.last() else { panic!("{effects:?}") };
    let Command::Assign { placements } = &commands[0] else { panic!("{commands:?}") };
    assert_eq!(placements, &vec![flotilla_core::command::Placement { task: t6, worker: "idle".into() }]);
}

#[test]
fn workers_hear_of_the_group_after_the_welcome_and_on_every_change() {
    let mut l = Leader::ready();
    l.core.set_masters(vec!["m2".into(), "m1".into()], &mut l.out.effects);
    l.out.assert_empty();
    l.core.open(l.cluster.at(10), 7);
    let effects = l.message(10, 7, hello("w1", 11, vec![]));
    let [Effect::Propose { id, commands }] = effects.as_slice() else { panic!("{effects:?}") };
    let (id, commands) = (*id, commands.clone());
    l.commit(10, id, commands);
    let effects = l.out.take();
    let members =
        Effect::Send { session: 7, msg: msg(MasterBody::Members { addresses: vec!["m1".into(), "m2".into()] }) };
    assert!(matches!(effects[0], Effect::Send { msg: MasterMsg { body: MasterBody::Welcome { .. }, .. }, .. }));
    assert_eq!(effects[1], members, "{effects:?}");
    // The same group in another order is no change.
    l.core.set_masters(vec!["m1".into(), "m2".into()], &mut l.out.effects);
    l.out.assert_empty();
    l.core.set_masters(vec!["m1".into(), "m2".into(), "m4".into()], &mut l.out.effects);
    let addresses = vec!["m1".into(), "m2".into(), "m4".into()];
    assert_eq!(l.out.take(), vec![Effect::Send { session: 7, msg: msg(MasterBody::Members { addresses }) }]);
}

#[test]
fn a_worker_asking_to_drain_is_drained_and_told_once() {
    use flotilla_core::state::MaintenanceChange;
    let mut l = Leader::ready();
    l.admit(0, 7, "w1", 11);
    let effects = l.message(10, 7, WorkerMsg::Drain { deadline_ms: Some(60_000) });
    let change = MaintenanceChange::Drain { deadline_ms: Some(60_000), by_worker: true };
    let expected = vec![Command::SetMaintenance { worker: "w1".into(), change }];
    let proposal = effects.iter().find_map(|e| match e {
        Effect::Propose { id, commands } if *commands == expected => Some(*id),
        _ => None,
    });
    let Some(id) = proposal else { panic!("no drain proposal in {effects:?}") };
    l.commit(10, id, expected);
    l.out.take();
    // It holds nothing: drained at once, and its session is told at the next liveness check.
    let effects = l.tick(1_000);
    assert!(effects.contains(&Effect::Send { session: 7, msg: msg(MasterBody::Drained) }), "{effects:?}");
    assert!(!l.tick(2_000).contains(&Effect::Send { session: 7, msg: msg(MasterBody::Drained) }), "told twice");
    // Asked again (after a reconnect): nothing more to propose.
    let effects = l.message(2_010, 7, WorkerMsg::Drain { deadline_ms: Some(50_000) });
    assert!(!effects.iter().any(|e| matches!(e, Effect::Propose { .. })), "{effects:?}");
}

/// Invariant: a task of a job with limits goes only to a worker whose release sets them. One
/// that reported no release (0.1.0, which could not decode `RunWith`) is given none of it,
/// while a job without limits runs there; once a worker reports 0.2.0 the task is placed on it
/// at once and sent as `RunWith`, its limits inside.
#[test]
fn a_job_with_limits_runs_only_where_the_release_sets_them() {
    let mut l = Leader::ready();
    l.admit(0, 7, "old", 1);
    let limits = flotilla_core::model::TaskLimits { open_files: Some(64), ..Default::default() };
    let limited = l.cluster.submit_limited(1, limits.clone());
    let effects = l.tick(1);
    assert!(!effects.iter().any(|e| matches!(e, Effect::Propose { .. })), "nothing placed on 'old': {effects:?}");
    let plain = l.cluster.submit(1);
    let effects = l.tick(2);
    let Some(Effect::Propose { id, commands }) = effects.last() else { panic!("{effects:?}") };
    let Command::Assign { placements } = &commands[0] else { panic!("{commands:?}") };
    assert_eq!(
        placements,
        &vec![flotilla_core::command::Placement { task: TaskId::array(plain, 1), worker: "old".into() }]
    );
    let (id, commands) = (*id, commands.clone());
    l.commit(3, id, commands);
    l.out.take();

    l.admit(4, 8, "new", 2);
    let effects = l.message(5, 8, WorkerMsg::Version { version: "0.2.0".into() });
    let Some(Effect::Propose { id, commands }) = effects.last() else { panic!("{effects:?}") };
    let Command::Assign { placements } = &commands[0] else { panic!("{commands:?}") };
    let task = TaskId::array(limited, 1);
    assert_eq!(placements, &vec![flotilla_core::command::Placement { task, worker: "new".into() }]);
    let (id, commands) = (*id, commands.clone());
    l.commit(6, id, commands);
    let effects = l.out.take();
    let sent: Vec<&MasterBody> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send { session: 8, msg } => Some(&msg.body),
            _ => None,
        })
        .collect();
    let [MasterBody::RunWith { run, limits: sent_limits, .. }] = sent.as_slice() else { panic!("{effects:?}") };
    assert_eq!((run.task, sent_limits), (task, &limits));
}

/// Invariant: a run held back from a session until its worker reports its release goes out
/// only if its attempt is still that worker's by then; the rest of a held batch (a Stop) is
/// not held at all.
#[test]
fn a_held_run_goes_out_only_if_its_attempt_is_still_current() {
    let mut l = Leader::ready();
    l.admit(0, 7, "w", 11);
    l.message(1, 7, WorkerMsg::Version { version: "0.2.0".into() });
    let limits = flotilla_core::model::TaskLimits { open_files: Some(64), ..Default::default() };
    let kept = l.cluster.submit_limited(1, limits.clone());
    let cancelled = l.cluster.submit_limited(1, limits);
    let effects = l.tick(2);
    let Some(Effect::Propose { id, commands }) = effects.last() else { panic!("{effects:?}") };
    let (id, commands) = (*id, commands.clone());
    l.commit(3, id, commands);
    l.out.take();

    // The same process comes back without either attempt, and with one the state does not
    // give it: the runs wait for its release, the Stop goes at once.
    l.core.closed(7, &mut Vec::new());
    l.core.open(l.cluster.at(4), 9);
    let stale = (TaskId::array(kept, 7), Fence { term: 1, attempt: 1 });
    let effects = l.message(4, 9, hello("w", 11, vec![stale]));
    let sent: Vec<&MasterBody> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send { session: 9, msg } => Some(&msg.body),
            _ => None,
        })
        .collect();
    assert!(matches!(sent.as_slice(), [MasterBody::Welcome { .. }, MasterBody::Stop { .. }]), "{effects:?}");

    // Meanwhile one of the jobs is cancelled; then the worker reports 0.2.0.
    l.cluster.commit(TERM, vec![Command::CancelJob { job: cancelled }]);
    let effects = l.message(5, 9, WorkerMsg::Version { version: "0.2.0".into() });
    let runs: Vec<TaskId> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send { session: 9, msg } => Some(msg.body.clone().flatten()),
            _ => None,
        })
        .flatten()
        .filter_map(|b| match b {
            MasterBody::RunWith { run, .. } => Some(run.task),
            _ => None,
        })
        .collect();
    assert_eq!(runs, vec![TaskId::array(kept, 1)], "{effects:?}");
}

/// The `Replicate` bodies among `effects`, by session.
fn replicates(effects: &[Effect]) -> Vec<(SessionId, TaskId, Vec<String>)> {
    effects
        .iter()
        .flat_map(|e| match e {
            Effect::Send { session, msg } => {
                msg.body.clone().flatten().into_iter().map(|b| (*session, b)).collect::<Vec<_>>()
            }
            _ => Vec::new(),
        })
        .filter_map(|(session, body)| match body {
            MasterBody::Replicate { task, sources, .. } => Some((session, task, sources)),
            _ => None,
        })
        .collect()
}

/// Invariants: a task whose outputs have fewer copies than its job asks for gets one more
/// at a time, asked of a connected worker in service that lacks one, from the holders in
/// service (by their addresses); a worker's `Holds` becomes `CopiesAdded`; nothing is asked
/// once the task has its copies, nor of a worker that cannot read the message, nor when no
/// holder is left to copy from.
#[test]
fn outputs_short_of_copies_are_copied_from_a_holder_to_a_worker_without_one() {
    let mut l = Leader::ready();
    for (session, name) in [(1, "w1"), (2, "w2"), (3, "w3"), (4, "w4")] {
        l.admit(10, session, name, 10 + session);
        l.cluster.commit(
            TERM,
            vec![Command::SetWorkerEndpoint { worker: name.into(), address: format!("10.0.0.{session}:7300") }],
        );
    }
    // w4 never says its release: it runs the first one, which cannot take copies.
    for session in [1, 2, 3] {
        l.message(20, session, WorkerMsg::Version { version: "0.2.0".into() });
    }
    let job = l.cluster.submit(1);
    let placements = flotilla_core::scheduler::plan(&l.cluster.state, usize::MAX);
    let Some(Response::Assigned { runs }) = l.cluster.commit(TERM, vec![Command::Assign { placements }]).pop() else {
        panic!("not placed")
    };
    let run = &runs[0];
    let file = flotilla_core::workflow::OutputFile {
        path: "o".into(),
        size: 1,
        sha256: flotilla_core::workflow::Digest([1; 32]),
    };
    let mut outcome = Outcome { exit_code: Some(0), ..Default::default() };
    outcome.outputs = flotilla_core::workflow::Outputs {
        files: vec![file],
        holders: vec![run.worker.clone()],
        error: None,
        logs: Vec::new(),
    };
    l.cluster.commit(TERM, vec![Command::task_finished(run.task, run.fence, run.worker.clone(), outcome)]);
    assert_eq!(l.cluster.state.wanted_copies(job), 3);

    let asks = replicates(&l.tick(1_000));
    let holder_session = [1, 2, 3, 4].into_iter().find(|s| format!("w{s}") == run.worker).expect("placed on one");
    let source = format!("10.0.0.{holder_session}:7300");
    let [(session, task, sources)] = asks.as_slice() else { panic!("one copy asked at a time: {asks:?}") };
    assert_eq!((*task, sources.clone()), (run.task, vec![source.clone()]));
    assert!(*session != holder_session && *session != 4, "asked of {session}");
    assert!(replicates(&l.tick(1_300)).is_empty(), "asked again while the first is under way");

    let effects = l.message(1_400, *session, WorkerMsg::Holds { tasks: vec![run.task] });
    let [Effect::Observe(Observation::Heartbeat { .. }), Effect::Propose { commands, .. }] = effects.as_slice() else {
        panic!("{effects:?}")
    };
    let taker = format!("w{session}");
    assert_eq!(commands, &vec![Command::CopiesAdded { worker: taker.clone(), tasks: vec![run.task] }]);
    l.cluster.commit(TERM, commands.clone());
    let asks = replicates(&l.tick(2_000));
    let [(third, _, sources)] = asks.as_slice() else { panic!("{asks:?}") };
    assert!(![holder_session, *session, 4].contains(third), "asked of {third}");
    assert_eq!(sources.len(), 2);
    l.cluster.commit(TERM, vec![Command::CopiesAdded { worker: format!("w{third}"), tasks: vec![run.task] }]);
    assert!(l.cluster.state.short_of_copies().is_empty());
    assert!(replicates(&l.tick(3_000)).is_empty());

    // Every holder lost: nothing to copy from, nothing asked.
    for name in [run.worker.clone(), taker, format!("w{third}")] {
        let incarnation = l.cluster.state.worker(&name).expect("registered").incarnation;
        l.cluster.commit(TERM, vec![Command::WorkerLost { name, incarnation, reason: LostReason::Restarted }]);
    }
    assert!(l.cluster.state.task_outputs(run.task).is_some_and(|o| o.holders.is_empty()));
    assert!(replicates(&l.tick(4_000)).is_empty());
}

/// Invariant: of the blobs a worker lists as held for a while, the leader calls garbage
/// exactly those that no kept task's outputs or whole logs count on that worker for.
#[test]
fn an_inventory_is_answered_with_the_blobs_no_kept_output_needs() {
    use flotilla_core::workflow::{Digest, OutputFile, Outputs};
    let mut l = Leader::ready();
    l.admit(10, 1, "w1", 11);
    l.message(20, 1, WorkerMsg::Version { version: "0.2.0".into() });
    l.cluster.submit(1);
    let placements = flotilla_core::scheduler::plan(&l.cluster.state, usize::MAX);
    let Some(Response::Assigned { runs }) = l.cluster.commit(TERM, vec![Command::Assign { placements }]).pop() else {
        panic!("not placed")
    };
    let mut outcome = Outcome { exit_code: Some(0), ..Default::default() };
    let (kept, other, garbage, log) = (Digest([1; 32]), Digest([2; 32]), Digest([3; 32]), Digest([4; 32]));
    outcome.outputs = Outputs {
        files: vec![OutputFile { path: "o".into(), size: 1, sha256: kept }],
        holders: vec!["w1".into()],
        error: None,
        logs: vec![flotilla_core::workflow::LogFile {
            stream: flotilla_core::workflow::LogStream::Stdout,
            size: 100_000,
            sha256: log,
        }],
    };
    l.cluster.commit(TERM, vec![Command::task_finished(runs[0].task, runs[0].fence, "w1".into(), outcome)]);
    let effects = l.message(30, 1, WorkerMsg::Inventory { digests: vec![garbage, kept, log, other] });
    let sent: Vec<&MasterBody> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send { msg, .. } => Some(&msg.body),
            _ => None,
        })
        .collect();
    assert_eq!(sent, vec![&MasterBody::Discard { digests: vec![other, garbage] }]);
}
