//! Periodic jobs: a named schedule submits its job once per period of a cron expression,
//! read in a time zone (`0 3 * * *` in `Europe/Berlin`: 03:00 there, summer or winter).
//!
//! Which periods are done is replicated ([`Schedule::done_until`]); the leader compares it
//! with its clock ([`Timing::due`]) and proposes the launch of the latest period that is due
//! (`LaunchPeriod`). Applying a launch for a period already done changes nothing, so each
//! period is launched at most once however many leaders propose it. Periods missed while no
//! leader could commit are not each made up for: the next leader launches the latest one
//! only (one late launch, never a burst).

use std::str::FromStr;

use chrono::TimeZone as _;
use serde::{Deserialize, Serialize};

use crate::model::{JobId, JobSpec, Millis};
use crate::workflow::JobOptions;

/// Schedules one cluster keeps at most.
pub const MAX_SCHEDULES: usize = 1_000;
/// Bytes of a schedule's name.
pub const MAX_NAME: usize = 64;

/// What a period does when the job of the previous one has not ended yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Overlap {
    /// The period is skipped (journalled): one run at a time.
    #[default]
    Skip,
    /// The period's job is submitted anyway.
    Allow,
}

impl Overlap {
    pub fn name(self) -> &'static str {
        match self {
            Overlap::Skip => "skip",
            Overlap::Allow => "allow",
        }
    }
}

impl FromStr for Overlap {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "skip" => Ok(Overlap::Skip),
            "allow" => Ok(Overlap::Allow),
            other => Err(format!("--overlap must be skip or allow, not '{other}'")),
        }
    }
}

/// One periodic job, as the replicated state keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// Five fields (minute hour day month weekday) or six (seconds first), as given.
    pub cron: String,
    /// An IANA time zone name (`UTC`, `Europe/Berlin`).
    pub timezone: String,
    pub overlap: Overlap,
    pub spec: JobSpec,
    pub options: JobOptions,
    /// The token that added it: its jobs are that token's (a `submit` token may cancel them).
    pub owner: Option<String>,
    pub paused: bool,
    pub created_at: Millis,
    /// Periods starting at or before this (leader time, ms) are launched, skipped, or passed
    /// while the schedule was paused.
    pub done_until: Millis,
    /// The last period launched or skipped, and the last job it submitted.
    pub last_period: Option<Millis>,
    pub last_job: Option<JobId>,
    pub launched: u64,
    pub skipped: u64,
}

/// Why a schedule command was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ScheduleRefusal {
    #[error("no schedule named '{0}'")]
    Unknown(String),
    #[error("a schedule named '{0}' exists already (remove it first)")]
    Exists(String),
    #[error("at most {max} schedules", max = MAX_SCHEDULES)]
    TooMany,
    #[error("a schedule name is 1 to {max} letters, digits, '-', '_' or '.'", max = MAX_NAME)]
    BadName,
    /// A scheduled job cannot wait for other jobs: they would be the same jobs every period.
    #[error("a scheduled job cannot use --after or --after-finished")]
    Dependencies,
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A schedule's cron expression and time zone, parsed.
#[derive(Debug)]
pub struct Timing {
    cron: croner::Cron,
    zone: chrono_tz::Tz,
}

impl Timing {
    /// Parses what a user gave; the error says what is wrong with which.
    pub fn parse(cron: &str, timezone: &str) -> Result<Timing, String> {
        let zone: chrono_tz::Tz = timezone
            .parse()
            .map_err(|_| format!("unknown time zone '{timezone}' (an IANA name such as UTC or Europe/Berlin)"))?;
        let fields = cron.split_whitespace().count();
        if !(5..=6).contains(&fields) && !cron.trim_start().starts_with('@') {
            return Err(format!(
                "cron expression '{cron}' has {fields} fields: give 5 (minute hour day month weekday) or 6 (seconds first)"
            ));
        }
        let cron = croner::Cron::from_str(cron).map_err(|e| format!("cron expression '{cron}': {e}"))?;
        let timing = Timing { cron, zone };
        // A pattern that never fires (the 30th of February) is refused now, not silent later.
        if timing.next_after(0).is_none() {
            return Err("the cron expression never fires".to_string());
        }
        Ok(timing)
    }

    fn at(&self, ms: Millis) -> Option<chrono::DateTime<chrono_tz::Tz>> {
        let utc = chrono::DateTime::from_timestamp_millis(i64::try_from(ms).ok()?)?;
        Some(self.zone.from_utc_datetime(&utc.naive_utc()))
    }

    /// The latest period starting after `done_until` and at or before `now` (ms since the
    /// epoch), if any: the one to launch now.
    pub fn due(&self, done_until: Millis, now: Millis) -> Option<Millis> {
        let previous = self.cron.find_previous_occurrence(&self.at(now)?, true).ok()?;
        let start = u64::try_from(previous.timestamp_millis()).ok()?;
        (start > done_until).then_some(start)
    }

    /// The first period starting after `ms`.
    pub fn next_after(&self, ms: Millis) -> Option<Millis> {
        let next = self.cron.find_next_occurrence(&self.at(ms)?, false).ok()?;
        u64::try_from(next.timestamp_millis()).ok()
    }
}

impl Schedule {
    /// A schedule as added: nothing launched yet (`AddSchedule` sets when it starts).
    pub fn new(
        cron: &str,
        timezone: &str,
        overlap: Overlap,
        spec: JobSpec,
        options: JobOptions,
        owner: Option<String>,
    ) -> Schedule {
        Schedule {
            cron: cron.to_string(),
            timezone: timezone.to_string(),
            overlap,
            spec,
            options,
            owner,
            paused: false,
            created_at: 0,
            done_until: 0,
            last_period: None,
            last_job: None,
            launched: 0,
            skipped: 0,
        }
    }

    pub fn timing(&self) -> Option<Timing> {
        Timing::parse(&self.cron, &self.timezone).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: u64 = 60_000;

    #[test]
    fn the_due_period_is_the_latest_one_not_done() {
        let t = Timing::parse("* * * * *", "UTC").expect("parses");
        let noon = 1_764_763_200_000; // 2025-12-03T12:00:00Z
        assert_eq!(t.due(noon - 1, noon + 30_000), Some(noon));
        assert_eq!(t.due(noon, noon + 30_000), None, "done already");
        // Five minutes without a leader: one launch, of the latest period.
        assert_eq!(t.due(noon, noon + 5 * MINUTE + 10), Some(noon + 5 * MINUTE));
        assert_eq!(t.next_after(noon), Some(noon + MINUTE));
        let seconds = Timing::parse("*/2 * * * * *", "UTC").expect("six fields");
        assert_eq!(seconds.due(noon, noon + 3_000), Some(noon + 2_000));
    }

    #[test]
    fn a_time_zone_moves_the_periods_with_its_offset() {
        let berlin = Timing::parse("0 3 * * *", "Europe/Berlin").expect("parses");
        let day = 1_764_720_000_000; // 2025-12-03T00:00:00Z; Berlin is UTC+1 in winter
        assert_eq!(berlin.next_after(day), Some(day + 2 * 3_600_000));
        let summer = 1_751_500_800_000; // 2025-07-03T00:00:00Z; UTC+2
        assert_eq!(berlin.next_after(summer), Some(summer + 3_600_000));
    }

    #[test]
    fn bad_input_says_what_is_wrong() {
        assert!(Timing::parse("* * * *", "UTC").unwrap_err().contains("4 fields"));
        assert!(Timing::parse("* * * * *", "Mars/Olympus").unwrap_err().contains("unknown time zone"));
        assert!(Timing::parse("61 * * * *", "UTC").is_err());
        assert!(Timing::parse("0 0 30 2 *", "UTC").unwrap_err().contains("never"));
        assert!(Timing::parse("@hourly", "UTC").is_ok());
        assert!(valid_name("nightly-build.v2") && !valid_name("") && !valid_name("a b"));
    }
}
