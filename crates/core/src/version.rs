//! Releases and the features that wait for every voter to understand them (rolling
//! upgrades): a leader proposes a command, or sends a message, that an older master or worker
//! cannot decode only once every member that must read it runs a release that can.

use serde::{Deserialize, Serialize};

/// A release, `major.minor.patch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Version { major, minor, patch }
    }

    /// Parses `1.2.3` (a pre-release or build suffix is ignored); `None` if it is not one.
    pub fn parse(text: &str) -> Option<Version> {
        let core = text.trim().split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
        let v = Version::new(parts.next()??, parts.next()??, parts.next()??);
        parts.next().is_none().then_some(v)
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The release before masters reported theirs: a member that says nothing runs it.
pub const FIRST: Version = Version::new(0, 1, 0);

/// What a release may not send to an older one. Each feature names the first release that
/// understands it. The commands and messages of a feature say so ([`crate::Command::feature`],
/// `MasterBody::feature` in the protocol crate): the leader's proposer refuses a command whose
/// feature the oldest voter's release lacks, and the leader's session core does not send a
/// worker a message its session's release lacks (see the README's "Rolling upgrades").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// Named tokens with roles, and jobs that remember which token submitted them.
    Tokens,
    /// Mutating requests journalled with who made them (`Command::Audit`).
    Audit,
    /// Jobs whose tasks run under limits (`Command::SubmitJobWith`), and the message that
    /// runs such a task on a worker (`MasterBody::RunWith`).
    TaskLimits,
    /// Jobs that wait for other jobs, and tasks' outputs kept on workers
    /// (`Command::SubmitJobWith` with dependencies, `Command::TaskFinishedWith`,
    /// `Command::SetWorkerEndpoint`; `MasterBody::RunWith` with inputs, `MasterBody::Peers`).
    Workflows,
    /// Pools of workers started and stopped by the leader (`Command::SetAutoscale` and the
    /// commands of its decisions).
    Autoscale,
}

impl Feature {
    pub const ALL: [Feature; 5] =
        [Feature::Tokens, Feature::Audit, Feature::TaskLimits, Feature::Workflows, Feature::Autoscale];

    pub fn since(self) -> Version {
        match self {
            Feature::Tokens | Feature::Audit | Feature::TaskLimits | Feature::Workflows | Feature::Autoscale => {
                Version::new(0, 2, 0)
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Feature::Tokens => "tokens with roles",
            Feature::Audit => "the audit journal",
            Feature::TaskLimits => "per-task limits",
            Feature::Workflows => "job dependencies and task outputs",
            Feature::Autoscale => "autoscaling",
        }
    }

    /// Whether members running `oldest` (or newer) all understand the feature.
    pub fn allowed(self, oldest: Option<Version>) -> bool {
        oldest.is_some_and(|v| v >= self.since())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse_and_order() {
        assert_eq!(Version::parse("0.2.0"), Some(Version::new(0, 2, 0)));
        assert_eq!(Version::parse("1.10.3-rc.1"), Some(Version::new(1, 10, 3)));
        assert_eq!(Version::parse("1.2"), None);
        assert_eq!(Version::parse("1.2.3.4"), None);
        assert_eq!(Version::parse("x.y.z"), None);
        assert!(Version::new(0, 10, 0) > Version::new(0, 9, 9));
        assert!(FIRST < Version::parse(env!("CARGO_PKG_VERSION")).expect("this build's release"));
        assert_eq!(Version::new(0, 2, 0).to_string(), "0.2.0");
    }
}
