//! The release each master runs, as this one's probes saw it, and the gate that holds back
//! commands an older voter could not decode (rolling upgrades: see `flotilla_core::version`).

use std::collections::BTreeMap;
use std::sync::Mutex;

use flotilla_core::version::{Feature, Version, FIRST};
use flotilla_raft::NodeId;

pub struct Releases {
    own: NodeId,
    /// The release string each other master last reported (`links` probes).
    peers: Mutex<BTreeMap<NodeId, String>>,
}

impl Releases {
    pub fn new(own: NodeId) -> Self {
        Releases { own, peers: Mutex::new(BTreeMap::new()) }
    }

    /// A probe's answer; `None`: the master did not say, so it runs the first release.
    pub fn record(&self, id: NodeId, version: Option<String>) {
        let version = version.unwrap_or_else(|| FIRST.to_string());
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).insert(id, version);
    }

    /// A master's release as this one knows it: its own, or the last a probe saw.
    pub fn of(&self, id: NodeId) -> Option<String> {
        if id == self.own {
            return Some(flotilla_proto::api::VERSION.to_string());
        }
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).get(&id).cloned()
    }

    /// The oldest release among `voters`, once each has answered a probe; `None` while one
    /// has not (features that wait for every voter keep waiting).
    pub fn oldest(&self, voters: impl IntoIterator<Item = NodeId>) -> Option<Version> {
        let mut oldest: Option<Version> = None;
        for id in voters {
            let v = Version::parse(&self.of(id)?)?;
            oldest = Some(oldest.map_or(v, |o| o.min(v)));
        }
        oldest
    }
}

/// A command held back because a voter runs a release that cannot decode it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{} needs every voting master at release {needs} or later, and {}; finish upgrading the masters first",
    .feature.name(),
    match .oldest { Some(v) => format!("the oldest runs {v}"), None => "not every voter has reported its release yet".to_string() }
)]
pub struct NotUpgraded {
    pub feature: Feature,
    pub needs: Version,
    pub oldest: Option<Version>,
}

/// The first of `features` that voters running `oldest` do not all understand.
pub fn held_back(
    features: impl IntoIterator<Item = Feature>,
    oldest: impl FnOnce() -> Option<Version>,
) -> Option<NotUpgraded> {
    let mut features = features.into_iter().peekable();
    // Nearly every proposal has no gated command: the voters' releases are not even looked up.
    features.peek()?;
    let oldest = oldest();
    features.find(|f| !f.allowed(oldest)).map(|feature| NotUpgraded { feature, needs: feature.since(), oldest })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_voter_decides_and_a_silent_one_holds_everything_back() {
        let r = Releases::new(1);
        assert_eq!(r.oldest([1]), Version::parse(flotilla_proto::api::VERSION));
        assert_eq!(r.oldest([1, 2]), None, "master 2 has not answered a probe");
        r.record(2, None);
        assert_eq!(r.oldest([1, 2]), Some(FIRST), "a master that reports nothing runs 0.1.0");
        r.record(2, Some("0.2.0".into()));
        r.record(3, Some("garbage".into()));
        assert_eq!(r.oldest([1, 2]), Some(Version::new(0, 2, 0)));
        assert_eq!(r.oldest([1, 2, 3]), None, "an unreadable release counts as unknown");
        assert_eq!(held_back([], || panic!("not looked up without a gated command")), None);
    }
}
