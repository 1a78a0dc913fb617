//! Sets of task indices kept as sorted, disjoint, inclusive ranges.
//!
//! A job array of a million tasks is one range here, so submitting it costs a few bytes, and the
//! queue of tasks still waiting to run is the same structure: taking the next task off the queue
//! shrinks a range instead of touching a million objects.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Largest number of tasks one job may have; keeps counters in `u64` far from overflow and
/// rejects typos such as `1-99999999999` before they become a job.
pub const MAX_TASKS_PER_JOB: u64 = 100_000_000;

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq, Serialize, Deserialize)]
pub enum IndexSetError {
    #[error("empty array specification")]
    Empty,
    #[error("'{0}' is not a task index or range (expected forms: 7, 1-100, 1,5,9-12)")]
    Malformed(String),
    #[error("range '{0}' ends before it starts")]
    Backwards(String),
    #[error("array has {0} tasks, more than the limit of {MAX_TASKS_PER_JOB}")]
    TooLarge(u64),
}

/// A set of `u64` indices as disjoint inclusive ranges, keyed by range start.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexSet {
    /// start -> end (inclusive); ranges never overlap nor touch.
    ranges: BTreeMap<u64, u64>,
    len: u64,
}

impl IndexSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// One contiguous range `start..=end`.
    pub fn range(start: u64, end: u64) -> Self {
        let mut set = Self::new();
        set.insert_range(start, end);
        set
    }

    /// Parses `1-1000`, `1,5,9-12` or a single index. Whitespace around items is ignored.
    pub fn parse(text: &str) -> Result<Self, IndexSetError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(IndexSetError::Empty);
        }
        let mut set = Self::new();
        for item in text.split(',') {
            let item = item.trim();
            let parse_num = |s: &str| s.trim().parse::<u64>().map_err(|_| IndexSetError::Malformed(item.to_string()));
            let (start, end) = match item.split_once('-') {
                Some((a, b)) => (parse_num(a)?, parse_num(b)?),
                None => {
                    let n = parse_num(item)?;
                    (n, n)
                }
            };
            if end < start {
                return Err(IndexSetError::Backwards(item.to_string()));
            }
            if end - start >= MAX_TASKS_PER_JOB {
                return Err(IndexSetError::TooLarge(end - start + 1));
            }
            set.insert_range(start, end);
            if set.len > MAX_TASKS_PER_JOB {
                return Err(IndexSetError::TooLarge(set.len));
            }
        }
        Ok(set)
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of stored ranges (the memory cost of the set).
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    pub fn contains(&self, index: u64) -> bool {
        self.ranges.range(..=index).next_back().is_some_and(|(_, &end)| index <= end)
    }

    pub fn first(&self) -> Option<u64> {
        self.ranges.keys().next().copied()
    }

    pub fn insert(&mut self, index: u64) -> bool {
        if self.contains(index) {
            return false;
        }
        self.insert_range(index, index);
        true
    }

    /// Adds `start..=end`, merging with neighbours so ranges stay disjoint and non-adjacent.
    pub fn insert_range(&mut self, start: u64, end: u64) {
        debug_assert!(start <= end);
        let mut new_start = start;
        let mut new_end = end;
        // Absorb every range that overlaps or touches [start, end].
        let touching: Vec<(u64, u64)> = self
            .ranges
            .range(..=end.saturating_add(1))
            .rev()
            .take_while(|(_, &e)| e.saturating_add(1) >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.ranges.remove(&s);
            self.len -= e - s + 1;
            new_start = new_start.min(s);
            new_end = new_end.max(e);
        }
        self.ranges.insert(new_start, new_end);
        self.len += new_end - new_start + 1;
    }

    pub fn remove(&mut self, index: u64) -> bool {
        let Some((&s, &e)) = self.ranges.range(..=index).next_back() else {
            return false;
        };
        if index > e {
            return false;
        }
        self.ranges.remove(&s);
        if s < index {
            self.ranges.insert(s, index - 1);
        }
        if index < e {
            self.ranges.insert(index + 1, e);
        }
        self.len -= 1;
        true
    }

    pub fn pop_first(&mut self) -> Option<u64> {
        let first = self.first()?;
        self.remove(first);
        Some(first)
    }

    pub fn clear(&mut self) {
        self.ranges.clear();
        self.len = 0;
    }

    /// Indices in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.ranges.iter().flat_map(|(&s, &e)| s..=e)
    }

    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&s, &e)| (s, e))
    }

    /// Removes `start..=end` (whatever part of it is here).
    pub fn remove_range(&mut self, start: u64, end: u64) {
        debug_assert!(start <= end);
        let hit: Vec<(u64, u64)> =
            self.ranges.range(..=end).rev().take_while(|(_, &e)| e >= start).map(|(&s, &e)| (s, e)).collect();
        for (s, e) in hit {
            self.ranges.remove(&s);
            self.len -= e - s + 1;
            if s < start {
                self.ranges.insert(s, start - 1);
                self.len += start - s;
            }
            if e > end {
                self.ranges.insert(end + 1, e);
                self.len += e - end;
            }
        }
    }

    /// Adds every index of `other`.
    pub fn union_with(&mut self, other: &IndexSet) {
        for (s, e) in other.ranges() {
            self.insert_range(s, e);
        }
    }

    /// Takes away every index of `other`.
    pub fn subtract(&mut self, other: &IndexSet) {
        for (s, e) in other.ranges() {
            self.remove_range(s, e);
        }
    }

    /// The indices here that are not in `other`, range by range (a few bytes for a million
    /// tasks).
    pub fn difference(&self, other: &IndexSet) -> IndexSet {
        let mut out = self.clone();
        out.subtract(other);
        out
    }

    /// The indices in both.
    pub fn intersection(&self, other: &IndexSet) -> IndexSet {
        let mut out = IndexSet::new();
        let mut theirs = other.ranges().peekable();
        for (s, e) in self.ranges() {
            while let Some(&(os, oe)) = theirs.peek() {
                if oe < s {
                    theirs.next();
                    continue;
                }
                if os > e {
                    break;
                }
                out.insert_range(s.max(os), e.min(oe));
                if oe <= e {
                    theirs.next();
                } else {
                    break;
                }
            }
        }
        out
    }

    pub fn intersects(&self, other: &IndexSet) -> bool {
        // The smaller set's ranges, each looked up in the larger one.
        let (small, large) = if self.range_count() <= other.range_count() { (self, other) } else { (other, self) };
        small.ranges().any(|(s, e)| large.ranges.range(..=e).next_back().is_some_and(|(_, &le)| le >= s))
    }

    pub fn is_subset(&self, other: &IndexSet) -> bool {
        self.ranges().all(|(s, e)| other.ranges.range(..=s).next_back().is_some_and(|(_, &oe)| oe >= e))
    }

    /// Checks the internal invariants; used by tests after every step.
    pub fn sanity_check(&self) {
        let mut prev_end: Option<u64> = None;
        let mut len = 0;
        for (&s, &e) in &self.ranges {
            assert!(s <= e, "range {s}-{e} backwards");
            if let Some(p) = prev_end {
                assert!(s > p.saturating_add(1), "ranges overlap or touch at {s}");
            }
            prev_end = Some(e);
            len += e - s + 1;
        }
        assert_eq!(len, self.len, "cached length is wrong");
    }
}

impl fmt::Display for IndexSet {
    /// The same syntax `parse` accepts: `1-3,7,9-12`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (s, e)) in self.ranges().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if s == e {
                write!(f, "{s}")?;
            } else {
                write!(f, "{s}-{e}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for IndexSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IndexSet({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(IndexSet::parse("1-1000").unwrap().len(), 1000);
        let s = IndexSet::parse("1,5,9-12").unwrap();
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![1, 5, 9, 10, 11, 12]);
        assert_eq!(s.to_string(), "1,5,9-12");
        assert_eq!(IndexSet::parse(" 3 ").unwrap().to_string(), "3");
        assert_eq!(IndexSet::parse("1-3,4-6").unwrap().range_count(), 1);
    }

    #[test]
    fn rejects_malformed_arrays() {
        assert_eq!(IndexSet::parse(""), Err(IndexSetError::Empty));
        assert!(matches!(IndexSet::parse("a-b"), Err(IndexSetError::Malformed(_))));
        assert!(matches!(IndexSet::parse("1-"), Err(IndexSetError::Malformed(_))));
        assert!(matches!(IndexSet::parse("1,,2"), Err(IndexSetError::Malformed(_))));
        assert!(matches!(IndexSet::parse("-5"), Err(IndexSetError::Malformed(_))));
        assert!(matches!(IndexSet::parse("9-1"), Err(IndexSetError::Backwards(_))));
        assert!(matches!(IndexSet::parse("0-999999999999"), Err(IndexSetError::TooLarge(_))));
    }

    #[test]
    fn a_million_tasks_is_one_range() {
        let mut s = IndexSet::parse("1-1000000").unwrap();
        assert_eq!(s.range_count(), 1);
        assert_eq!(s.pop_first(), Some(1));
        assert_eq!(s.len(), 999_999);
        assert_eq!(s.range_count(), 1);
    }

    #[test]
    fn set_operations_work_range_by_range() {
        let a = IndexSet::parse("1-10,20-30").unwrap();
        let b = IndexSet::parse("5-22,29").unwrap();
        assert_eq!(a.intersection(&b).to_string(), "5-10,20-22,29");
        assert_eq!(a.difference(&b).to_string(), "1-4,23-28,30");
        assert!(a.intersects(&b));
        assert!(!a.intersects(&IndexSet::parse("11-19").unwrap()));
        assert!(IndexSet::parse("2-4,25").unwrap().is_subset(&a));
        assert!(!IndexSet::parse("9-11").unwrap().is_subset(&a));
        let big = IndexSet::parse("1-1000000").unwrap();
        assert_eq!(big.difference(&IndexSet::parse("1-999999").unwrap()).to_string(), "1000000");
    }

    proptest! {
        #[test]
        fn behaves_like_a_btreeset(ops in proptest::collection::vec((0u8..3, 0u64..64), 0..200)) {
            let mut set = IndexSet::new();
            let mut model = BTreeSet::new();
            for (op, i) in ops {
                match op {
                    0 => prop_assert_eq!(set.insert(i), model.insert(i)),
                    1 => prop_assert_eq!(set.remove(i), model.remove(&i)),
                    _ => prop_assert_eq!(set.pop_first(), model.pop_first()),
                }
                set.sanity_check();
                prop_assert_eq!(set.len(), model.len() as u64);
                prop_assert_eq!(set.iter().collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
            }
            let reparsed = if set.is_empty() { IndexSet::new() } else { IndexSet::parse(&set.to_string()).unwrap() };
            prop_assert_eq!(reparsed, set);
        }

        #[test]
        fn set_operations_match_btreesets(a in proptest::collection::btree_set(0u64..80, 0..40),
                                          b in proptest::collection::btree_set(0u64..80, 0..40)) {
            let to_set = |m: &BTreeSet<u64>| { let mut s = IndexSet::new(); for &i in m { s.insert(i); } s };
            let (sa, sb) = (to_set(&a), to_set(&b));
            let listed = |s: &IndexSet| s.iter().collect::<Vec<_>>();
            let inter = sa.intersection(&sb);
            inter.sanity_check();
            prop_assert_eq!(listed(&inter), a.intersection(&b).copied().collect::<Vec<_>>());
            let diff = sa.difference(&sb);
            diff.sanity_check();
            prop_assert_eq!(listed(&diff), a.difference(&b).copied().collect::<Vec<_>>());
            prop_assert_eq!(sa.intersects(&sb), !a.is_disjoint(&b));
            prop_assert_eq!(sa.is_subset(&sb), a.is_subset(&b));
            let mut union = sa.clone();
            union.union_with(&sb);
            union.sanity_check();
            prop_assert_eq!(listed(&union), a.union(&b).copied().collect::<Vec<_>>());
        }
    }
}
