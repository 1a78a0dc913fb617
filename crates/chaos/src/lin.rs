//! A linearizability checker for the client-visible history of a chaos scenario, in the
//! style of Wing & Gong / Lowe's search (as Porcupine and Knossos do).
//!
//! The model is the job registry: `submit` creates the next job (ids 1, 2, 3, … in commit
//! order) and returns its id; `list` returns the ids of every job. A history is linearizable
//! if each operation can be placed at one instant between its invocation and its completion
//! so that the model, run in that order, gives every answer the clients saw. A submit whose
//! outcome the client never learned (an error after retries) may take effect or not.

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
    for e in history {
        if let Op::List { ids } = &e.op {
            let mut sorted = ids.clone();
            sorted.sort_unstable();
            if sorted.iter().enumerate().any(|(i, id)| *id != i as u64 + 1) {
                return Err(format!("a read saw job ids {ids:?}, which are not 1..n"));
            }
        }
    }
    let mut seen = HashSet::new();
    if search(history, 0, 0, &mut seen) {
        Ok(())
    } else {
        Err(format!("no linearization of {} operations matches the answers", history.len()))
    }
}

fn must_finish(e: &Event) -> bool {
    // Unknown submits are optional; everything that completed must be placed.
    e.complete.is_some()
}

fn search(h: &[Event], done: u128, jobs: u64, seen: &mut HashSet<(u128, u64)>) -> bool {
    if h.iter().enumerate().all(|(i, e)| done & (1 << i) != 0 || !must_finish(e)) {
        return true;
    }
    if !seen.insert((done, jobs)) {
        return false;
    }
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
        let next = match &e.op {
            Op::Submit { id: Some(id) } if *id == jobs + 1 => Some(jobs + 1),
            Op::Submit { id: Some(_) } => None,
            Op::Submit { id: None } => Some(jobs + 1),
            Op::List { ids } if ids.len() as u64 == jobs => Some(jobs),
            Op::List { .. } => None,
        };
        if let Some(n) = next {
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

    #[test]
    fn gaps_in_ids_are_reported() {
        let h = vec![Event { op: Op::List { ids: vec![1, 3] }, invoke: 0, complete: Some(1) }];
        assert!(check(&h).unwrap_err().contains("not 1..n"));
    }
}
