//! Post-incident reports built from the replicated journal (`flotilla incident report`).
//!
//! Pure: events in, a [`Report`] out, rendered as Markdown or as a self-contained HTML page
//! with an SVG timeline. What each figure means:
//! - an election's *unavailability* is the time since the previous term's last committed
//!   entry (`quiet_ms` of `leader_elected`): an upper bound of how long nothing could commit,
//!   tight when the cluster was busy, loose when it was idle;
//! - a lost worker's capacity is *restored* when a worker of the same name joins again;
//! - the *work recovered* when the last election happened and every job that had a task
//!   rescheduled or retried had finished; *full recovery* also waits for every lost worker's
//!   return (capacity restored);
//! - *what operators did* is every audited request in the window but submissions (the
//!   workload): cancels, drains, membership and token changes, settings, refusals (403).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use flotilla_proto::api::{EventType, EventView, JobState};
use flotilla_proto::time::rfc3339;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Election {
    pub at_ms: u64,
    pub term: u64,
    pub node: u64,
    pub quiet_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LostWorker {
    pub at_ms: u64,
    pub worker: String,
    pub reason: String,
    pub cpus: Option<u64>,
    pub requeued: u64,
    pub back_at_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AffectedJob {
    pub job: u64,
    pub first_disruption_ms: u64,
    pub rescheduled: u64,
    pub retried: u64,
    pub finished_ms: Option<u64>,
    pub state: Option<JobState>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub since_ms: u64,
    pub until_ms: u64,
    pub events: Vec<EventView>,
    pub elections: Vec<Election>,
    pub lost_workers: Vec<LostWorker>,
    pub unreachable_masters: Vec<(u64, u64, Option<u64>)>,
    pub jobs: Vec<AffectedJob>,
    pub rejected_results: u64,
    pub first_failure_ms: Option<u64>,
    pub work_recovered_ms: Option<u64>,
    pub recovered_ms: Option<u64>,
    /// Audited requests other than submissions, oldest first.
    pub operator_actions: Vec<EventView>,
}

/// Builds the report of the events in `[since_ms, until_ms)`.
pub fn build(all: &[EventView], since_ms: u64, until_ms: u64) -> Report {
    let events: Vec<EventView> = all.iter().filter(|e| e.at_ms >= since_ms && e.at_ms < until_ms).cloned().collect();
    let mut cpus_of: BTreeMap<String, u64> = BTreeMap::new();
    // Cpus of workers that joined before the window too.
    for e in all.iter().filter(|e| e.at_ms < until_ms && e.kind == EventType::WorkerJoined) {
        if let (Some(w), Some(c)) = (&e.worker, e.cpus) {
            cpus_of.insert(w.clone(), u64::from(c));
        }
    }
    let mut elections = Vec::new();
    let mut lost_workers: Vec<LostWorker> = Vec::new();
    let mut unreachable: Vec<(u64, u64, Option<u64>)> = Vec::new();
    let mut jobs: BTreeMap<u64, AffectedJob> = BTreeMap::new();
    let mut rejected = 0;
    let mut first_failure: Option<u64> = None;
    let mut note_failure = |at: u64| first_failure = Some(first_failure.map_or(at, |f: u64| f.min(at)));
    for e in &events {
        match e.kind {
            // The first election of a cluster is its start, not a failure.
            EventType::LeaderElected if e.quiet_ms.is_some() => {
                let quiet = e.quiet_ms.unwrap_or(0);
                note_failure(e.at_ms.saturating_sub(quiet));
                elections.push(Election {
                    at_ms: e.at_ms,
                    term: e.term.unwrap_or(0),
                    node: e.node.unwrap_or(0),
                    quiet_ms: e.quiet_ms,
                });
            }
            EventType::MasterUnreachable => {
                note_failure(e.at_ms);
                unreachable.push((e.node.unwrap_or(0), e.at_ms, None));
            }
            EventType::MasterReachable => {
                if let Some(u) = unreachable.iter_mut().rev().find(|u| Some(u.0) == e.node && u.2.is_none()) {
                    u.2 = Some(e.at_ms);
                }
            }
            EventType::WorkerLost => {
                note_failure(e.at_ms);
                let worker = e.worker.clone().unwrap_or_default();
                lost_workers.push(LostWorker {
                    at_ms: e.at_ms,
                    cpus: cpus_of.get(&worker).copied(),
                    reason: e.reason.clone().unwrap_or_default(),
                    requeued: e.requeued.unwrap_or(0),
                    worker,
                    back_at_ms: None,
                });
            }
            EventType::WorkerJoined => {
                if let Some(l) =
                    lost_workers.iter_mut().find(|l| Some(&l.worker) == e.worker.as_ref() && l.back_at_ms.is_none())
                {
                    l.back_at_ms = Some(e.at_ms);
                }
            }
            EventType::TaskRescheduled | EventType::TaskFailed => {
                let Some(job) = e.job else { continue };
                note_failure(e.at_ms);
                let j = jobs.entry(job).or_insert(AffectedJob {
                    job,
                    first_disruption_ms: e.at_ms,
                    rescheduled: 0,
                    retried: 0,
                    finished_ms: None,
                    state: None,
                });
                if e.kind == EventType::TaskRescheduled {
                    j.rescheduled += 1;
                } else {
                    j.retried += 1;
                }
            }
            EventType::ResultRejected => rejected += 1,
            EventType::JobFinished => {
                if let Some(j) = e.job.and_then(|id| jobs.get_mut(&id)) {
                    j.finished_ms = Some(e.at_ms);
                    j.state = e.state;
                }
            }
            _ => {}
        }
    }
    let work_recovered = first_failure.and_then(|first| {
        let mut last = elections.iter().map(|e| e.at_ms).max().unwrap_or(first);
        for j in jobs.values() {
            last = last.max(j.finished_ms?);
        }
        Some(last)
    });
    let recovered = work_recovered.and_then(|mut last| {
        for l in &lost_workers {
            last = last.max(l.back_at_ms?);
        }
        Some(last)
    });
    let operator_actions = events
        .iter()
        .filter(|e| e.kind == EventType::Audit && e.request.as_deref() != Some("POST /v1/jobs"))
        .cloned()
        .collect();
    Report {
        since_ms,
        until_ms,
        operator_actions,
        events,
        elections,
        lost_workers,
        unreachable_masters: unreachable,
        jobs: jobs.into_values().collect(),
        rejected_results: rejected,
        first_failure_ms: first_failure,
        work_recovered_ms: work_recovered,
        recovered_ms: recovered,
    }
}

fn secs(ms: u64) -> String {
    format!("{:.2} s", ms as f64 / 1000.0)
}

impl Report {
    fn summary(&self) -> Vec<(String, String)> {
        let cpus_lost: u64 = self.lost_workers.iter().filter_map(|l| l.cpus).sum();
        let longest = self.elections.iter().filter_map(|e| e.quiet_ms).max();
        vec![
            ("Leader elections (failovers)".into(), self.elections.len().to_string()),
            ("Longest unavailability (no commit)".into(), longest.map_or("—".into(), secs)),
            ("Masters found unreachable".into(), self.unreachable_masters.len().to_string()),
            (
                "Workers lost / back".into(),
                format!(
                    "{} / {} ({} cpus lost)",
                    self.lost_workers.len(),
                    self.lost_workers.iter().filter(|l| l.back_at_ms.is_some()).count(),
                    cpus_lost
                ),
            ),
            ("Tasks rescheduled".into(), self.jobs.iter().map(|j| j.rescheduled).sum::<u64>().to_string()),
            (
                "Task attempts failed (retried or given up)".into(),
                self.jobs.iter().map(|j| j.retried).sum::<u64>().to_string(),
            ),
            ("Stale results rejected (fencing)".into(), self.rejected_results.to_string()),
            (
                "Time to recover the work (leader back, affected jobs finished)".into(),
                match (self.first_failure_ms, self.work_recovered_ms) {
                    (None, _) => "no failure in this window".into(),
                    (Some(f), Some(r)) => {
                        format!("{} (from {} to {})", secs(r.saturating_sub(f)), rfc3339(f), rfc3339(r))
                    }
                    (Some(_), None) => "not within the window".into(),
                },
            ),
            (
                "Time to full recovery (lost capacity back too)".into(),
                match (self.first_failure_ms, self.recovered_ms) {
                    (None, _) => "no failure in this window".into(),
                    (Some(f), Some(r)) => {
                        format!("{} (from {} to {})", secs(r.saturating_sub(f)), rfc3339(f), rfc3339(r))
                    }
                    (Some(_), None) => format!(
                        "not within the window: {} lost cpus not back",
                        self.lost_workers.iter().filter(|l| l.back_at_ms.is_none()).filter_map(|l| l.cpus).sum::<u64>()
                    ),
                },
            ),
        ]
    }

    /// time, who, role, request, status, from of each operator action (Markdown-safe).
    fn operator_rows(&self) -> Vec<(String, String, String, String, String, String)> {
        let cell = |s: Option<&str>| s.unwrap_or("—").replace('|', "\\|");
        self.operator_actions
            .iter()
            .map(|e| {
                (
                    e.time.clone(),
                    cell(e.who.as_deref()),
                    cell(e.role.map(|r| r.name())),
                    cell(e.request.as_deref()),
                    e.status.map_or("—".to_string(), |s| s.to_string()),
                    cell(e.from.as_deref()),
                )
            })
            .collect()
    }

    pub fn markdown(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "# Flotilla incident report\n");
        let _ = writeln!(
            o,
            "Window: {} to {}; {} journal events.\n",
            rfc3339(self.since_ms),
            rfc3339(self.until_ms),
            self.events.len()
        );
        let _ = writeln!(o, "## Summary\n\n| figure | value |\n| --- | --- |");
        for (k, v) in self.summary() {
            let _ = writeln!(o, "| {k} | {v} |");
        }
        if !self.elections.is_empty() {
            let _ = writeln!(o, "\n## Elections\n\n| time | term | new leader | unavailability (no commit) |\n| --- | --- | --- | --- |");
            for e in &self.elections {
                let q = e.quiet_ms.map_or("—".into(), secs);
                let _ = writeln!(o, "| {} | {} | master {} | {} |", rfc3339(e.at_ms), e.term, e.node, q);
            }
        }
        if !self.lost_workers.is_empty() {
            let _ = writeln!(o, "\n## Workers lost\n\n| time | worker | cpus | reason | tasks requeued | back after |\n| --- | --- | --- | --- | --- | --- |");
            for l in &self.lost_workers {
                let back = l.back_at_ms.map_or("not back".into(), |b| secs(b.saturating_sub(l.at_ms)));
                let cpus = l.cpus.map_or("?".into(), |c| c.to_string());
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} | {} | {} |",
                    rfc3339(l.at_ms),
                    l.worker,
                    cpus,
                    l.reason,
                    l.requeued,
                    back
                );
            }
        }
        if !self.jobs.is_empty() {
            let _ = writeln!(o, "\n## Jobs with rescheduled or retried tasks\n\n| job | rescheduled | failed attempts | first disruption | finished | added time (disruption → finish) |\n| --- | --- | --- | --- | --- | --- |");
            for j in &self.jobs {
                let fin = j.finished_ms.map_or("not finished".into(), |f| {
                    format!("{} ({})", rfc3339(f), j.state.map(|s| s.to_string()).unwrap_or_default())
                });
                let added = j.finished_ms.map_or("—".into(), |f| secs(f.saturating_sub(j.first_disruption_ms)));
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} | {} | {} |",
                    j.job,
                    j.rescheduled,
                    j.retried,
                    rfc3339(j.first_disruption_ms),
                    fin,
                    added
                );
            }
        }
        if !self.operator_actions.is_empty() {
            let _ = writeln!(o, "\n## What operators did\n\n| time | who | role | request | answer | from |\n| --- | --- | --- | --- | --- | --- |");
            for (time, who, role, request, status, from) in self.operator_rows() {
                let _ = writeln!(o, "| {time} | {who} | {role} | {request} | {status} | {from} |");
            }
        }
        let _ = writeln!(o, "\n## Timeline\n\n| time | event |\n| --- | --- |");
        for e in &self.events {
            let _ = writeln!(o, "| {} | {} |", e.time, e.message.replace('|', "\\|"));
        }
        o
    }

    /// A self-contained page: the Markdown's content as HTML plus an SVG timeline.
    pub fn html(&self) -> String {
        let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
        let mut o = String::new();
        o.push_str("<!doctype html><html><head><meta charset=\"utf-8\"><title>Flotilla incident report</title><style>body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}th{background:#f3f3f3}</style></head><body>");
        let _ = write!(
            o,
            "<h1>Flotilla incident report</h1><p>Window: {} to {}; {} journal events.</p>",
            rfc3339(self.since_ms),
            rfc3339(self.until_ms),
            self.events.len()
        );
        o.push_str("<h2>Summary</h2><table>");
        for (k, v) in self.summary() {
            let _ = write!(o, "<tr><th>{}</th><td>{}</td></tr>", esc(&k), esc(&v));
        }
        o.push_str("</table>");
        if !self.operator_actions.is_empty() {
            o.push_str("<h2>What operators did</h2><table><tr><th>time</th><th>who</th><th>role</th><th>request</th><th>answer</th><th>from</th></tr>");
            for (time, who, role, request, status, from) in self.operator_rows() {
                let _ = write!(
                    o,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&time),
                    esc(&who),
                    esc(&role),
                    esc(&request),
                    esc(&status),
                    esc(&from)
                );
            }
            o.push_str("</table>");
        }
        o.push_str("<h2>Timeline</h2>");
        o.push_str(&self.svg());
        o.push_str("<table><tr><th>time</th><th>event</th></tr>");
        for e in &self.events {
            let _ = write!(o, "<tr><td>{}</td><td>{}</td></tr>", esc(&e.time), esc(&e.message));
        }
        o.push_str("</table></body></html>\n");
        o
    }

    /// Lanes: elections (red bar = no commit), workers (orange bar = lost until back), task
    /// disruptions (ticks), over the window's time axis.
    pub fn svg(&self) -> String {
        let (w, left) = (900.0, 150.0);
        let start = self.events.first().map_or(self.since_ms, |e| e.at_ms);
        let end = self.events.last().map_or(self.until_ms, |e| e.at_ms).max(start + 1);
        let span = (end - start) as f64;
        let x = |ms: u64| left + (ms.saturating_sub(start) as f64 / span) * (w - left - 20.0);
        let mut lanes: Vec<(String, String)> = Vec::new();
        let mut cluster = String::new();
        for e in &self.elections {
            let from = e.at_ms.saturating_sub(e.quiet_ms.unwrap_or(0));
            let _ = write!(cluster, "<rect x=\"{:.1}\" y=\"4\" width=\"{:.1}\" height=\"14\" fill=\"#d33\"><title>no commit for {} before term {}</title></rect>", x(from), (x(e.at_ms) - x(from)).max(2.0), secs(e.quiet_ms.unwrap_or(0)), e.term);
            let _ = write!(
                cluster,
                "<circle cx=\"{:.1}\" cy=\"11\" r=\"4\" fill=\"#222\"><title>term {}: master {} leads</title></circle>",
                x(e.at_ms),
                e.term,
                e.node
            );
        }
        lanes.push(("masters".into(), cluster));
        for l in &self.lost_workers {
            let until = l.back_at_ms.unwrap_or(end);
            let bar = format!("<rect x=\"{:.1}\" y=\"4\" width=\"{:.1}\" height=\"14\" fill=\"#e90\"><title>{} lost: {}</title></rect>", x(l.at_ms), (x(until) - x(l.at_ms)).max(2.0), l.worker, l.reason);
            lanes.push((format!("worker {}", l.worker), bar));
        }
        let mut ticks = String::new();
        for e in self.events.iter().filter(|e| {
            matches!(e.kind, EventType::TaskRescheduled | EventType::TaskFailed | EventType::ResultRejected)
        }) {
            let _ = write!(
                ticks,
                "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"4\" y2=\"18\" stroke=\"#36c\"><title>{1}</title></line>",
                x(e.at_ms),
                e.message.replace('<', "&lt;")
            );
        }
        lanes.push(("tasks".into(), ticks));
        let h = lanes.len() as f64 * 24.0 + 30.0;
        let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">");
        for (i, (name, body)) in lanes.iter().enumerate() {
            let y = i as f64 * 24.0;
            let _ = write!(
                s,
                "<text x=\"4\" y=\"{:.0}\">{}</text><g transform=\"translate(0,{y})\">{body}</g>",
                y + 15.0,
                name.replace('<', "&lt;")
            );
        }
        let axis = lanes.len() as f64 * 24.0 + 12.0;
        let _ = write!(s, "<line x1=\"{left}\" x2=\"{:.0}\" y1=\"{axis}\" y2=\"{axis}\" stroke=\"#888\"/>", w - 20.0);
        let _ = write!(
            s,
            "<text x=\"{left}\" y=\"{:.0}\">{}</text><text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"end\">+{}</text>",
            axis + 14.0,
            rfc3339(start),
            w - 20.0,
            axis + 14.0,
            secs(end - start)
        );
        s.push_str("</svg>");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, at_ms: u64, kind: EventType, message: &str) -> EventView {
        EventView { seq, time: rfc3339(at_ms), at_ms, kind, message: message.to_string(), ..Default::default() }
    }

    #[test]
    fn operators_actions_are_listed_but_not_submissions() {
        let audit = |seq, request: &str, who: &str| EventView {
            who: Some(who.into()),
            role: Some(flotilla_proto::api::TokenRole::Operator),
            request: Some(request.into()),
            status: Some(200),
            from: Some("10.0.0.9:51000".into()),
            ..ev(seq, 1_000 + seq, EventType::Audit, "audit")
        };
        let events = vec![
            audit(1, "POST /v1/jobs", "ci"),
            audit(2, "POST /v1/workers/w1/drain", "ops"),
            audit(3, "DELETE /v1/tokens/x", "ops"),
        ];
        let report = build(&events, 0, u64::MAX);
        let requests: Vec<_> = report.operator_actions.iter().filter_map(|e| e.request.as_deref()).collect();
        assert_eq!(requests, ["POST /v1/workers/w1/drain", "DELETE /v1/tokens/x"]);
        let md = report.markdown();
        assert!(md.contains("## What operators did"), "{md}");
        assert!(md.contains("| ops | operator | POST /v1/workers/w1/drain | 200 | 10.0.0.9:51000 |"), "{md}");
        assert!(report.html().contains("What operators did"));
    }

    #[test]
    fn a_leader_kill_and_a_worker_loss_are_measured_from_the_journal() {
        let mut events = vec![
            EventView {
                node: Some(1),
                term: Some(1),
                ..ev(1, 1_000, EventType::LeaderElected, "master 1 elected leader for term 1")
            },
            EventView {
                worker: Some("a".into()),
                cpus: Some(2),
                ..ev(2, 1_100, EventType::WorkerJoined, "worker a joined")
            },
            EventView { job: Some(1), ..ev(3, 1_200, EventType::JobSubmitted, "job 1 submitted with 10 tasks") },
            EventView {
                node: Some(2),
                term: Some(2),
                quiet_ms: Some(700),
                ..ev(4, 5_000, EventType::LeaderElected, "master 2 elected leader for term 2")
            },
            EventView {
                worker: Some("a".into()),
                reason: Some("no heartbeat for 3.0s".into()),
                requeued: Some(2),
                ..ev(5, 6_000, EventType::WorkerLost, "worker a lost")
            },
            EventView {
                job: Some(1),
                attempt: Some(2),
                ..ev(6, 6_000, EventType::TaskRescheduled, "task 1/3 rescheduled")
            },
            EventView {
                job: Some(1),
                state: Some(JobState::Succeeded),
                ..ev(7, 7_500, EventType::JobFinished, "job 1 finished")
            },
            EventView {
                worker: Some("a".into()),
                cpus: Some(2),
                ..ev(8, 9_000, EventType::WorkerJoined, "worker a joined")
            },
        ];
        events.sort_by_key(|e| e.seq);
        let r = build(&events, 0, u64::MAX);
        assert_eq!(r.elections, vec![Election { at_ms: 5_000, term: 2, node: 2, quiet_ms: Some(700) }]);
        assert_eq!(r.lost_workers.len(), 1);
        let l = &r.lost_workers[0];
        assert_eq!(
            (l.cpus, l.requeued, l.back_at_ms, l.reason.as_str()),
            (Some(2), 2, Some(9_000), "no heartbeat for 3.0s")
        );
        assert_eq!(r.jobs[0].rescheduled, 1);
        assert_eq!(r.jobs[0].finished_ms, Some(7_500));
        assert_eq!(r.first_failure_ms, Some(4_300), "the old leader's last commit");
        assert_eq!(r.recovered_ms, Some(9_000), "when the lost worker came back");
        let md = r.markdown();
        assert!(md.contains("| Leader elections (failovers) | 1 |"), "{md}");
        assert!(md.contains("| Longest unavailability (no commit) | 0.70 s |"), "{md}");
        assert!(md.contains("| Time to full recovery (lost capacity back too) | 4.70 s"), "{md}");
        assert!(md.contains("| Time to recover the work (leader back, affected jobs finished) | 3.20 s"), "{md}");
        let html = r.html();
        assert!(html.starts_with("<!doctype html>") && html.contains("<svg") && !html.contains("http://cdn"));
        // A window that ends before the failures reports none.
        assert_eq!(build(&events, 0, 2_000).first_failure_ms, None);
    }
}
