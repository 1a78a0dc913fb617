//! Exact effect lists of the worker's session core, every message through the wire encoding.

use std::time::{Duration, Instant};

use flotilla_core::model::{Fence, Outcome, TaskId};
use flotilla_proto::wire::{MasterBody, MasterMsg, RunTask, WorkerMsg};

use super::*;
use crate::testing::Outbox;

struct Worker {
    core: AgentCore,
    t0: Instant,
    out: Outbox<Effect>,
}

fn run(index: u64, term: u64) -> RunTask {
    RunTask {
        task: TaskId::array(1, index),
        fence: Fence { term, attempt: 1 },
        command: vec!["true".into()],
        env: vec![],
        cpus: 1,
        timeout_ms: None,
        stdin: None,
        limits: Default::default(),
        inputs: Vec::new(),
        outputs: Default::default(),
    }
}

impl Worker {
    fn new(cpus: u32) -> Worker {
        let t0 = Instant::now();
        let config = AgentConfig {
            name: "w1".into(),
            instance: 42,
            cpus,
            memory: None,
            resources: Default::default(),
            labels: Default::default(),
            masters: vec!["m1".into(), "m2".into(), "m3".into()],
            prefetch: 1,
            adaptive_prefetch: false,
            serves: None,
            exit_when_drained: false,
        };
        Worker { core: AgentCore::new(config, t0), t0, out: Outbox::default() }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    fn tick(&mut self, ms: u64) -> Vec<Effect> {
        self.core.on_tick(self.at(ms), 0, 0, &mut self.out.effects);
        self.out.take()
    }

    fn message(&mut self, ms: u64, term: u64, body: MasterBody) -> Vec<Effect> {
        self.core.on_message(self.at(ms), MasterMsg { term, body }, &mut self.out.effects);
        self.out.take()
    }

    /// Connects to the first master and is welcomed in `term`.
    fn welcomed(cpus: u32, term: u64) -> Worker {
        let mut w = Worker::new(cpus);
        assert_eq!(w.tick(0), vec![Effect::Connect { address: "m1".into() }]);
        w.core.connected(w.at(1), &mut w.out.effects);
        let effects = w.out.take();
        assert!(matches!(effects.as_slice(), [Effect::Send(WorkerMsg::Hello { .. })]), "{effects:?}");
        let welcome = MasterBody::Welcome { leader: 1, incarnation: 3, heartbeat_ms: 1000 };
        assert_eq!(
            w.message(2, term, welcome),
            vec![
                Effect::Observe(Observation::Connected { address: "m1".into(), leader: 1, term, incarnation: 3 }),
                Effect::Send(WorkerMsg::Version { version: flotilla_proto::api::VERSION.to_string() }),
            ]
        );
        let effects = w.tick(2);
        assert!(matches!(effects.as_slice(), [Effect::Send(WorkerMsg::Stats { echo: Some(1), .. })]), "{effects:?}");
        w
    }
}

#[test]
fn the_hello_carries_what_the_worker_holds() {
    let mut w = Worker::welcomed(1, 2);
    assert_eq!(w.message(10, 2, MasterBody::Run(run(1, 2))), vec![Effect::Start(run(1, 2))]);
    w.core.lost(w.at(20), LinkError::Broken("reset".into()), &mut w.out.effects);
    w.out.take();
    assert_eq!(w.tick(22), vec![Effect::Connect { address: "m2".into() }]);
    w.core.connected(w.at(23), &mut w.out.effects);
    let effects = w.out.take();
    let [Effect::Send(WorkerMsg::Hello { known, highest_term, info, .. })] = effects.as_slice() else {
        panic!("{effects:?}")
    };
    assert_eq!(known, &vec![(TaskId::array(1, 1), Fence { term: 2, attempt: 1 })]);
    assert_eq!(*highest_term, 2);
    assert_eq!((info.name.as_str(), info.instance), ("w1", 42));
}

#[test]
fn a_follower_hint_is_followed_at_once() {
    let mut w = Worker::new(1);
    w.tick(0);
    w.core.connected(w.at(1), &mut w.out.effects);
    w.out.take();
    assert_eq!(
        w.message(2, 3, MasterBody::NotLeader { leader: Some("m3".into()) }),
        vec![
            Effect::Disconnect,
            Effect::Observe(Observation::Redirected { from: "m1".into(), leader: Some("m3".into()) })
        ]
    );
    assert_eq!(w.tick(3), vec![], "2 ms later");
    assert_eq!(w.tick(4), vec![Effect::Connect { address: "m3".into() }]);
}

#[test]
fn a_refusal_stops_the_worker() {
    let mut w = Worker::new(1);
    w.tick(0);
    w.core.connected(w.at(1), &mut w.out.effects);
    w.out.take();
    let reason = "a worker named 'w1' is already connected".to_string();
    assert_eq!(
        w.message(2, 3, MasterBody::Refused { reason: reason.clone() }),
        vec![Effect::Disconnect, Effect::Exit(Refusal::ByMaster(reason))]
    );
    assert!(w.core.has_exited());
    assert_eq!(w.tick(5_000), vec![], "an exited worker does not reconnect");
}

#[test]
fn a_bad_token_stops_the_worker() {
    let mut w = Worker::new(1);
    w.tick(0);
    w.core.lost(w.at(1), LinkError::Unauthenticated, &mut w.out.effects);
    assert_eq!(w.out.take(), vec![Effect::Disconnect, Effect::Exit(Refusal::BadToken)]);
}

#[test]
fn reconnects_back_off_only_once_every_master_failed() {
    let mut w = Worker::new(1);
    let mut at = 0;
    let mut delays = Vec::new();
    for _ in 0..6 {
        let effects = w.tick(at);
        assert!(matches!(effects.as_slice(), [Effect::Connect { .. }]), "{effects:?}");
        w.core.lost(w.at(at), LinkError::Broken("refused".into()), &mut w.out.effects);
        w.out.take();
        let next = w.core.next_deadline().expect("a retry");
        let delay = next.saturating_duration_since(w.at(at)).as_millis() as u64;
        delays.push(delay);
        at += delay;
    }
    assert_eq!(delays, vec![2, 2, 50, 100, 200, 400]);
}

#[test]
fn a_welcome_from_an_older_term_is_refused() {
    let mut w = Worker::welcomed(1, 5);
    w.core.lost(w.at(10), LinkError::Broken("reset".into()), &mut w.out.effects);
    w.out.take();
    w.tick(12);
    w.core.connected(w.at(13), &mut w.out.effects);
    w.out.take();
    let welcome = MasterBody::Welcome { leader: 2, incarnation: 3, heartbeat_ms: 1000 };
    assert_eq!(
        w.message(14, 4, welcome),
        vec![
            Effect::Disconnect,
            Effect::Observe(Observation::SessionLost {
                address: "m2".into(),
                reason: "master 2 is at term 4 < 5".into()
            })
        ]
    );
}

#[test]
fn messages_from_a_deposed_leader_are_ignored() {
    let mut w = Worker::welcomed(1, 5);
    assert_eq!(
        w.message(10, 4, MasterBody::Run(run(1, 4))),
        vec![Effect::Observe(Observation::IgnoredStale { term: 4, highest: 5 })]
    );
    assert_eq!(w.core.book().known(), vec![]);
}

#[test]
fn an_idle_worker_reports_at_once_a_busy_one_gathers_reports() {
    let mut w = Worker::welcomed(1, 2);
    assert_eq!(w.message(10, 2, MasterBody::Run(run(1, 2))), vec![Effect::Start(run(1, 2))]);
    assert_eq!(w.message(11, 2, MasterBody::Run(run(2, 2))), vec![], "queued behind task 1");
    let (t1, t2, fence) = (TaskId::array(1, 1), TaskId::array(1, 2), Fence { term: 2, attempt: 1 });
    // Task 1 ends; task 2 starts on the freed cpu; nothing is queued now: report at once.
    let wake = w.core.ended(
        w.at(20),
        t1,
        fence,
        Some(Outcome::default()),
        Some(Duration::from_millis(10)),
        &mut w.out.effects,
    );
    assert!(wake);
    assert_eq!(w.out.take(), vec![Effect::Start(run(2, 2))]);
    w.core.reports_ready(w.at(20), &mut w.out.effects);
    let finished = |task| WorkerMsg::Finished { task, fence, outcome: Outcome::default() };
    assert_eq!(w.out.take(), vec![Effect::Send(finished(t1))]);
    // Busy: task 3 waits in the queue when task 2 ends, so its report lingers.
    w.message(21, 2, MasterBody::Run(run(3, 2)));
    w.message(22, 2, MasterBody::Run(run(4, 2)));
    let wake = w.core.ended(w.at(30), t2, fence, Some(Outcome::default()), None, &mut w.out.effects);
    assert!(wake, "the first report of a batch wakes the agent");
    assert_eq!(w.out.take(), vec![Effect::Start(run(3, 2))]);
    w.core.reports_ready(w.at(30), &mut w.out.effects);
    assert_eq!(w.out.take(), vec![]);
    assert_eq!(w.core.next_deadline(), Some(w.at(30) + REPORT_LINGER));
    assert_eq!(w.tick(80), vec![Effect::Send(finished(t2))]);
    // Acknowledged results are forgotten.
    w.message(90, 2, MasterBody::Batch(vec![MasterBody::Ack { task: t1, fence }, MasterBody::Ack { task: t2, fence }]));
    assert_eq!(w.core.book().unacked(), vec![]);
}

#[test]
fn results_finished_while_disconnected_are_sent_after_the_welcome() {
    let mut w = Worker::welcomed(1, 2);
    w.message(10, 2, MasterBody::Run(run(1, 2)));
    w.core.lost(w.at(20), LinkError::Broken("reset".into()), &mut w.out.effects);
    w.out.take();
    let fence = Fence { term: 2, attempt: 1 };
    w.core.ended(w.at(30), TaskId::array(1, 1), fence, Some(Outcome::default()), None, &mut w.out.effects);
    w.core.reports_ready(w.at(30), &mut w.out.effects);
    assert_eq!(w.out.take(), vec![], "nobody listens");
    w.tick(30);
    w.core.connected(w.at(31), &mut w.out.effects);
    w.out.take();
    let welcome = MasterBody::Welcome { leader: 2, incarnation: 3, heartbeat_ms: 1000 };
    let effects = w.message(32, 3, welcome);
    assert_eq!(
        effects[1..],
        [
            Effect::Send(WorkerMsg::Batch(vec![WorkerMsg::Finished {
                task: TaskId::array(1, 1),
                fence,
                outcome: Outcome::default()
            }])),
            Effect::Send(WorkerMsg::Version { version: flotilla_proto::api::VERSION.to_string() })
        ]
    );
}

#[test]
fn echoes_measure_the_round_trip() {
    let mut w = Worker::welcomed(1, 2);
    assert_eq!(
        w.message(40, 2, MasterBody::Echo { token: 1 }),
        vec![Effect::Observe(Observation::RoundTrip(Duration::from_millis(38)))]
    );
    let effects = w.tick(1_002);
    assert!(
        matches!(effects.as_slice(), [Effect::Send(WorkerMsg::Stats { echo: None, rtt_micros: Some(38_000), .. })]),
        "{effects:?}"
    );
}

#[test]
fn only_a_queued_attempt_is_given_back() {
    let mut w = Worker::welcomed(1, 2);
    w.message(10, 2, MasterBody::Run(run(1, 2)));
    w.message(11, 2, MasterBody::Run(run(2, 2)));
    let fence = Fence { term: 2, attempt: 1 };
    let (t1, t2) = (TaskId::array(1, 1), TaskId::array(1, 2));
    let ask = MasterBody::Batch(vec![MasterBody::Revoke { task: t1, fence }, MasterBody::Revoke { task: t2, fence }]);
    assert_eq!(
        w.message(12, 2, ask),
        vec![Effect::Send(WorkerMsg::Revoked { task: t2, fence })],
        "task 1 runs: it stays"
    );
    // Task 1 ends: the given-back task 2 is not started.
    w.core.ended(w.at(20), t1, fence, Some(Outcome::default()), None, &mut w.out.effects);
    assert!(w.out.take().iter().all(|e| !matches!(e, Effect::Start(_))));
}

#[test]
fn the_worker_reconnects_through_the_masters_the_leader_named() {
    let mut w = Worker::welcomed(1, 2);
    let addresses = vec!["m4".to_string(), "m5".to_string()];
    assert_eq!(
        w.message(10, 2, MasterBody::Members { addresses: addresses.clone() }),
        vec![Effect::Observe(Observation::MastersLearned { addresses })]
    );
    // The same group again is no news.
    assert_eq!(w.message(11, 2, MasterBody::Members { addresses: vec!["m5".into(), "m4".into()] }), vec![]);
    w.core.lost(w.at(20), LinkError::Broken("reset".into()), &mut w.out.effects);
    w.out.take();
    assert_eq!(w.tick(22), vec![Effect::Connect { address: "m4".into() }], "m1 to m3 are gone for good");
}

#[test]
fn a_draining_worker_asks_every_leader_and_exits_once_drained_and_empty() {
    let mut w = Worker::welcomed(1, 2);
    assert_eq!(w.message(5, 2, MasterBody::Run(run(1, 2))), vec![Effect::Start(run(1, 2))]);
    w.core.drain(w.at(10), Some(Duration::from_secs(60)), &mut w.out.effects);
    let effects = w.out.take();
    assert!(effects.contains(&Effect::Send(WorkerMsg::Drain { deadline_ms: Some(60_000) })), "{effects:?}");
    // A new leader hears it again, with the time left.
    w.core.lost(w.at(1_000), LinkError::Broken("reset".into()), &mut w.out.effects);
    w.out.take();
    w.tick(1_002);
    w.core.connected(w.at(1_003), &mut w.out.effects);
    w.out.take();
    let welcome = MasterBody::Welcome { leader: 2, incarnation: 3, heartbeat_ms: 1000 };
    let effects = w.message(1_010, 3, welcome);
    assert!(effects.contains(&Effect::Send(WorkerMsg::Drain { deadline_ms: Some(59_000) })), "{effects:?}");
    // Told it is drained while its task still runs: it stays until the task is done and acknowledged.
    w.message(1_020, 3, MasterBody::Drained);
    assert!(!w.tick(1_030).contains(&Effect::Drained));
    w.core.ended(
        w.at(1_040),
        TaskId::array(1, 1),
        Fence { term: 2, attempt: 1 },
        Some(Outcome::default()),
        None,
        &mut w.out.effects,
    );
    w.out.take();
    w.message(1_050, 3, MasterBody::Ack { task: TaskId::array(1, 1), fence: Fence { term: 2, attempt: 1 } });
    assert!(w.tick(1_060).contains(&Effect::Drained));
}
