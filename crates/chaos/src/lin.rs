//! A linearizability checker for the client-visible history of a chaos scenario, in the
//! style of Wing & Gong / Lowe's search (as Porcupine and Knossos do).
//!
//! The model is the job registry: `submit` creates the next job (ids 1, 2, 3, … in commit
//! order) and returns its id; `purge` removes jobs (each at most once: a job removed already is
//! reported so); `list` returns the ids of every job not removed. A history is linearizable
//! if each operation can be placed at one instant between its invocation and its completion
//! so that the model, run in that order, gives every answer the clients saw. A submit or purge
//! whose outcome the client never learned (an error after retries) may take effect or not.

use std::collections::HashSet;

#[derive(Clone, Debug)]
pub enum Op {
    /// `id`: what the cluster answered; `None` when the outcome is unknown.
    Submit {
        id: Option<u64>,
    },
    List {
        ids: Vec<u64>,
    },
    /// A purge of `job`: `Some(true)` removed it, `Some(false)` found it removed already,
    /// `None` when the outcome is unknown. The jobs purged are finished (the harness waits).
    /// `Some(false)` may also be the answer to the client's own retry, after an attempt whose
    /// answer was lost had removed the job: the removal then falls inside this operation.
    Purge {
        job: u64,
        removed: Option<bool>,
    },
}

#[derive(Clone, Debug)]
pub struct Event {
    pub op: Op,
    /// Monotonic microseconds.
    pub invoke: u64,
    /// `None`: the client never got an answer (the op may or may not have happened).
    pub complete: Option<u64>,
}

/// Ok, or the reason no linearization exists.
pub fn check(history: &[Event]) -> Result<(), String> {
    if history.len() > 128 {
        return Err(format!("history of {} operations is too long for this checker (max 128)", history.len()));
    }
    let purged: u128 = history
        .iter()
        .filter_map(|e| match e.op {
            Op::Purge { job, .. } if job < 128 => Some(1u128 << job),
            _ => None,
        })
        .fold(0, |a, b| a | b);
    for e in history {
        if let Op::List { ids } = &e.op {
            let mut sorted = ids.clone();
            sorted.sort_unstable();
            // Gaps are only allowed where a purge could have removed a job.
            let listed: u128 = sorted.iter().filter(|id| **id < 128).map(|id| 1u128 << id).fold(0, |a, b| a | b);
            let top = sorted.last().copied().unwrap_or(0);
            let gap = (1..=top.min(127)).any(|id| listed & (1 << id) == 0 && purged & (1 << id) == 0);
            if gap || top >= 128 {
                return Err(format!("a read saw job ids {ids:?}, which are not 1..n"));
            }
        }
    }
    let mut seen = HashSet::new();
    if search(history, 0, Registry::default(), &mut seen) {
        Ok(())
    } else {
        Err(format!("no linearization of {} operations matches the answers", history.len()))
    }
}

fn must_finish(e: &Event) -> bool {
    // Unknown submits are optional; everything that completed must be placed.
    e.complete.is_some()
}

/// The model's state: jobs created, and which were removed (a bit per id).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
struct Registry {
    jobs: u64,
    removed: u128,
}

impl Registry {
    fn lists(&self, ids: &[u64]) -> bool {
        let live = (1..=self.jobs).filter(|id| self.removed & (1 << id) == 0).count();
        ids.len() == live && ids.iter().all(|id| *id >= 1 && *id <= self.jobs && self.removed & (1 << id) == 0)
    }
}

fn search(h: &[Event], done: u128, model: Registry, seen: &mut HashSet<(u128, Registry)>) -> bool {
    if h.iter().enumerate().all(|(i, e)| done & (1 << i) != 0 || !must_finish(e)) {
        return true;
    }
    if !seen.insert((done, model)) {
        return false;
    }
    let jobs = model.jobs;
    // An op may go next only if no other pending op completed before it was invoked.
    let earliest_end = h
        .iter()
        .enumerate()
        .filter(|(i, _)| done & (1 << i) == 0)
        .filter_map(|(_, e)| e.complete)
        .min()
        .unwrap_or(u64::MAX);
    for (i, e) in h.iter().enumerate() {
        if done & (1 << i) != 0 || e.invoke > earliest_end {
            continue;
        }
        let created = Registry { jobs: jobs + 1, ..model };
        let mut next = Vec::new();
        match &e.op {
            Op::Submit { id: Some(id) } if *id == jobs + 1 => next.push(created),
            Op::Submit { id: Some(_) } => {}
            Op::Submit { id: None } => next.push(created),
            Op::List { ids } if model.lists(ids) => next.push(model),
            Op::List { .. } => {}
            Op::Purge { job, removed } => {
                let exists = *job >= 1 && *job <= jobs && *job < 128;
                let gone = exists && model.removed & (1 << job) != 0;
                let removing = Registry { removed: model.removed | (1 << job), ..model };
                match removed {
                    Some(true) if exists && !gone => next.push(removing),
                    Some(false) if gone => next.push(model),
                    // The client retries a purge whose answer it lost (a leadership change):
                    // the retry finds the job removed by the first attempt and says so. The
                    // removal is then this operation's own, inside its interval.
                    Some(false) if exists => next.push(removing),
                    None if exists && !gone => next.extend([removing, model]),
                    None => next.push(model),
                    _ => {}
                }
            }
        }
        for n in next {
            if search(h, done | (1 << i), n, seen) {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submit(id: Option<u64>, invoke: u64, complete: Option<u64>) -> Event {
        Event { op: Op::Submit { id }, invoke, complete }
    }
    fn list(n: u64, invoke: u64, complete: u64) -> Event {
        Event { op: Op::List { ids: (1..=n).collect() }, invoke, complete: Some(complete) }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h =
            vec![list(0, 0, 1), submit(Some(1), 2, Some(3)), list(1, 4, 5), submit(Some(2), 6, Some(7)), list(2, 8, 9)];
        assert!(check(&h).is_ok());
    }

    #[test]
    fn a_read_that_misses_a_finished_submit_is_not() {
        let h = vec![submit(Some(1), 0, Some(1)), list(0, 2, 3)];
        assert!(check(&h).is_err());
    }

    #[test]
    fn concurrent_operations_may_go_either_way() {
        let h = vec![submit(Some(1), 0, Some(10)), list(0, 1, 2), list(1, 3, 4)];
        assert!(check(&h).is_ok());
        // But a read cannot go back in time.
        let h = vec![submit(Some(1), 0, Some(10)), list(1, 1, 2), list(0, 3, 4)];
        assert!(check(&h).is_err());
    }

    #[test]
    fn unknown_submits_may_or_may_not_happen() {
        let h = vec![submit(None, 0, None), list(1, 5, 6)];
        assert!(check(&h).is_ok());
        let h = vec![submit(None, 0, None), list(0, 5, 6)];
        assert!(check(&h).is_ok());
        // A job nobody submitted is a violation.
        let h = vec![list(1, 5, 6)];
        assert!(check(&h).is_err());
    }

    #[test]
    fn ids_must_follow_commit_order() {
        let h = vec![submit(Some(2), 0, Some(1)), submit(Some(1), 2, Some(3))];
        assert!(check(&h).is_err());
        let h = vec![submit(Some(1), 0, Some(1)), submit(Some(1), 2, Some(3))];
        assert!(check(&h).is_err(), "one id given twice");
    }

    fn purge(job: u64, removed: Option<bool>, invoke: u64, complete: Option<u64>) -> Event {
        Event { op: Op::Purge { job, removed }, invoke, complete }
    }

    #[test]
    fn a_purged_job_leaves_the_listing_once() {
        let only_2 = Event { op: Op::List { ids: vec![2] }, invoke: 8, complete: Some(9) };
        let h = vec![
            submit(Some(1), 0, Some(1)),
            submit(Some(2), 2, Some(3)),
            purge(1, Some(true), 4, Some(5)),
            purge(1, Some(false), 6, Some(7)),
            only_2.clone(),
        ];
        assert!(check(&h).is_ok());
        // Removed twice is a violation, and so is a read that still sees it afterwards.
        let h = vec![submit(Some(1), 0, Some(1)), purge(1, Some(true), 2, Some(3)), purge(1, Some(true), 4, Some(5))];
        assert!(check(&h).is_err());
        let h = vec![submit(Some(1), 0, Some(1)), purge(1, Some(true), 2, Some(3)), list(1, 4, 5)];
        assert!(check(&h).is_err());
        // A purge of unknown outcome may have removed it or not.
        let h = vec![submit(Some(1), 0, Some(1)), submit(Some(2), 2, Some(3)), purge(1, None, 4, None), only_2];
        assert!(check(&h).is_ok());
    }

    #[test]
    fn gaps_in_ids_are_reported() {
        let h = vec![Event { op: Op::List { ids: vec![1, 3] }, invoke: 0, complete: Some(1) }];
        assert!(check(&h).unwrap_err().contains("not 1..n"));
    }

    #[test]
    fn a_retried_purge_that_finds_its_own_removal_is_linearizable_but_a_second_removal_is_not() {
        // Job 1 is listed, then a purge whose first attempt removed it answers "already
        // removed" (its retry); a later read no longer lists it.
        let h = vec![submit(Some(1), 0, Some(1)), list(1, 2, 3), purge(1, Some(false), 4, Some(8)), list(0, 9, 10)];
        assert!(check(&h).is_ok());
        // But the job cannot be listed after that purge completed.
        let h = vec![submit(Some(1), 0, Some(1)), purge(1, Some(false), 4, Some(8)), list(1, 9, 10)];
        assert!(check(&h).is_err());
        // Nor removed twice.
        let h = vec![submit(Some(1), 0, Some(1)), purge(1, Some(true), 2, Some(3)), purge(1, Some(true), 4, Some(5))];
        assert!(check(&h).is_err());
    }
}
