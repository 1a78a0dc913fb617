//! Round trips to the peer masters, and the replication timeouts that follow them.
//!
//! openraft gives every replication call (heartbeats included) one fixed timeout. A fixed
//! figure is wrong somewhere: short enough to notice a lost call quickly on a LAN, it fails
//! every call across regions; long enough for a far link, it is slow to retry on a near one.
//! So the network keeps, per peer, a TCP-style estimate of the round trip (RFC 6298: smoothed
//! round trip and its variation) and gives each call the estimate's retransmission timeout,
//! kept between a floor (the heartbeat, as before) and a ceiling (what openraft allows).
//!
//! Everything here is plain data and arithmetic: the caller passes the samples and `now`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::NodeId;

/// Added to every timeout: the estimate's own jitter on a near link is a few hundred
/// microseconds, far less than a loaded follower's fsync.
const MARGIN: Duration = Duration::from_millis(20);

/// Round trips above this share of the replication timeout ceiling are "approaching" it: one
/// slow fsync or a retransmitted packet more and calls start to time out.
pub const SLOW_SHARE: f64 = 0.6;

/// A slow link is reported at most this often per peer, so the log stays readable.
pub const WARN_EVERY: Duration = Duration::from_secs(60);

/// Timeout bounds of replication calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Never time out sooner (the heartbeat: what the fixed timeout used to be).
    pub floor: Duration,
    /// Never wait longer (openraft's own timeout of the call).
    pub ceiling: Duration,
}

impl Bounds {
    /// Whether a smoothed round trip of `rtt` is close enough to the ceiling to warn about.
    pub fn is_slow(&self, rtt: Duration) -> bool {
        is_slow(rtt.as_secs_f64(), self.ceiling.as_secs_f64())
    }
}

/// [`Bounds::is_slow`] on plain figures (any one unit), for figures read back from peers.
pub fn is_slow(rtt: f64, ceiling: f64) -> bool {
    rtt > ceiling * SLOW_SHARE
}

/// RFC 6298's estimator, with Karn's rule: calls that timed out give no sample (their round
/// trip is unknown), and each timeout doubles the next timeout until a call succeeds again.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RttEstimator {
    /// Smoothed round trip and its mean deviation; `None` before the first sample.
    smoothed: Option<(Duration, Duration)>,
    /// Timeouts in a row since the last sample.
    backoff: u32,
}

impl RttEstimator {
    pub fn sample(&mut self, rtt: Duration) {
        self.backoff = 0;
        self.smoothed = Some(match self.smoothed {
            None => (rtt, rtt / 2),
            Some((srtt, rttvar)) => {
                let deviation = srtt.abs_diff(rtt);
                (srtt * 7 / 8 + rtt / 8, rttvar * 3 / 4 + deviation / 4)
            }
        });
    }

    pub fn timed_out(&mut self) {
        self.backoff = self.backoff.saturating_add(1).min(16);
    }

    /// The smoothed round trip, once measured.
    pub fn smoothed(&self) -> Option<Duration> {
        self.smoothed.map(|(srtt, _)| srtt)
    }

    /// The timeout for the next call: before any sample the ceiling (nothing is known yet).
    pub fn timeout(&self, bounds: Bounds) -> Duration {
        let Some((srtt, rttvar)) = self.smoothed else { return bounds.ceiling };
        // RFC 6298's four deviations, but at least a quarter of the round trip: a link of steady
        // round trips would otherwise get a timeout a hair above them, and a follower's fsync
        // of a large batch (not in the heartbeats' samples) would time out.
        let spread = (rttvar * 4).max(srtt / 4);
        let rto = (srtt + spread + MARGIN).saturating_mul(1 << self.backoff.min(16));
        rto.clamp(bounds.floor, bounds.ceiling.max(bounds.floor))
    }
}

/// One peer's link: its address (for messages), estimator and when it was last warned about.
#[derive(Clone, Debug, Default)]
struct Link {
    addr: String,
    estimator: RttEstimator,
    warned_at: Option<Instant>,
}

/// Why a link deserves a warning.
#[derive(Clone, Debug, PartialEq)]
pub enum Slow {
    /// The smoothed round trip is close to the ceiling.
    Approaching { rtt: Duration },
    /// A call waited the whole ceiling.
    TimedOutAtCeiling { rtt: Option<Duration> },
}

/// A warning to log about one peer.
#[derive(Clone, Debug, PartialEq)]
pub struct SlowLink {
    pub peer: NodeId,
    pub addr: String,
    pub why: Slow,
}

/// The round-trip estimates of every peer, shared by every connection openraft opens to it
/// (replication, votes, snapshots) and read by the master for status, metrics and elections.
#[derive(Clone, Debug)]
pub struct PeerRtts {
    bounds: Bounds,
    links: Arc<Mutex<HashMap<NodeId, Link>>>,
}

impl PeerRtts {
    pub fn new(bounds: Bounds) -> Self {
        PeerRtts { bounds, links: Arc::default() }
    }

    pub fn bounds(&self) -> Bounds {
        self.bounds
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<NodeId, Link>) -> T) -> T {
        // The map holds plain figures: a panic elsewhere cannot leave it inconsistent.
        f(&mut self.links.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Timeout of the next replication call to `peer`.
    pub fn timeout(&self, peer: NodeId) -> Duration {
        self.with(|links| links.get(&peer).map_or(self.bounds.ceiling, |l| l.estimator.timeout(self.bounds)))
    }

    /// A call to `peer` at `addr` came back after `rtt`. Returns a warning when the link is
    /// slow and was not reported in the last [`WARN_EVERY`].
    pub fn sample(&self, peer: NodeId, addr: &str, rtt: Duration, now: Instant) -> Option<SlowLink> {
        self.with(|links| {
            let link = link(links, peer, addr);
            link.estimator.sample(rtt);
            let srtt = link.estimator.smoothed()?;
            self.bounds.is_slow(srtt).then_some(())?;
            warn_once(link, peer, now, Slow::Approaching { rtt: srtt })
        })
    }

    /// A call to `peer` timed out after `waited`.
    pub fn timed_out(&self, peer: NodeId, addr: &str, waited: Duration, now: Instant) -> Option<SlowLink> {
        self.with(|links| {
            let link = link(links, peer, addr);
            link.estimator.timed_out();
            (waited >= self.bounds.ceiling).then_some(())?;
            let rtt = link.estimator.smoothed();
            warn_once(link, peer, now, Slow::TimedOutAtCeiling { rtt })
        })
    }

    /// Smoothed round trip of every measured peer.
    pub fn smoothed(&self) -> Vec<(NodeId, Duration)> {
        let mut all: Vec<(NodeId, Duration)> =
            self.with(|links| links.iter().filter_map(|(id, l)| Some((*id, l.estimator.smoothed()?))).collect());
        all.sort_unstable_by_key(|(id, _)| *id);
        all
    }

    /// The largest smoothed round trip to any peer (zero before any sample).
    pub fn largest(&self) -> Duration {
        self.smoothed().into_iter().map(|(_, rtt)| rtt).max().unwrap_or_default()
    }
}

fn link<'a>(links: &'a mut HashMap<NodeId, Link>, peer: NodeId, addr: &str) -> &'a mut Link {
    let link = links.entry(peer).or_default();
    if link.addr != addr {
        link.addr = addr.to_string();
    }
    link
}

fn warn_once(link: &mut Link, peer: NodeId, now: Instant, why: Slow) -> Option<SlowLink> {
    if link.warned_at.is_some_and(|at| now.saturating_duration_since(at) < WARN_EVERY) {
        return None;
    }
    link.warned_at = Some(now);
    Some(SlowLink { peer, addr: link.addr.clone(), why })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn bounds() -> Bounds {
        Bounds { floor: 75 * MS, ceiling: 250 * MS }
    }

    #[test]
    fn before_any_sample_the_ceiling_applies() {
        assert_eq!(RttEstimator::default().timeout(bounds()), 250 * MS);
        assert_eq!(RttEstimator::default().smoothed(), None);
    }

    #[test]
    fn the_first_sample_follows_rfc_6298() {
        let mut e = RttEstimator::default();
        e.sample(100 * MS);
        assert_eq!(e.smoothed(), Some(100 * MS));
        // srtt + 4 × (rtt / 2) + margin, capped by the ceiling.
        assert_eq!(e.timeout(bounds()), 250 * MS);
        let mut near = RttEstimator::default();
        near.sample(10 * MS);
        assert_eq!(near.timeout(bounds()), 75 * MS, "a near link keeps the heartbeat as its floor");
    }

    #[test]
    fn a_steady_far_link_gets_a_timeout_just_above_its_round_trip() {
        let mut e = RttEstimator::default();
        for i in 0..50 {
            e.sample((110 + i % 10) * MS);
        }
        let srtt = e.smoothed().unwrap();
        assert!(srtt > 110 * MS && srtt < 120 * MS, "{srtt:?}");
        let t = e.timeout(bounds());
        assert!(t > 120 * MS && t < 200 * MS, "{t:?}: above the round trip, well under the ceiling");
    }

    #[test]
    fn timeouts_double_until_the_ceiling_and_a_sample_resets_them() {
        let mut e = RttEstimator::default();
        for _ in 0..20 {
            e.sample(MS);
        }
        assert_eq!(e.timeout(bounds()), 75 * MS);
        e.timed_out();
        assert_eq!(e.timeout(bounds()), 75 * MS, "21 ms doubled is still under the floor");
        e.timed_out();
        e.timed_out();
        assert!(e.timeout(bounds()) > 75 * MS);
        for _ in 0..20 {
            e.timed_out();
        }
        assert_eq!(e.timeout(bounds()), 250 * MS);
        assert_eq!(e.smoothed().map(|d| d < 2 * MS), Some(true), "Karn: timeouts give no sample");
        e.sample(MS);
        assert_eq!(e.timeout(bounds()), 75 * MS);
    }

    #[test]
    fn a_slow_link_is_reported_once_a_minute() {
        let rtts = PeerRtts::new(bounds());
        let t0 = Instant::now();
        assert_eq!(rtts.sample(2, "h:1", 100 * MS, t0), None, "100 ms is under 60% of 250 ms");
        assert_eq!(rtts.timeout(3), 250 * MS, "an unmeasured peer gets the ceiling");
        let warned: Vec<SlowLink> = (1..40).filter_map(|i| rtts.sample(2, "h:1", 200 * MS, t0 + i * MS)).collect();
        assert_eq!(warned.len(), 1, "once the smoothed figure passes 150 ms, and only once");
        let w = &warned[0];
        assert_eq!((w.peer, w.addr.as_str()), (2, "h:1"));
        assert!(matches!(w.why, Slow::Approaching { rtt } if rtt > 150 * MS));
        assert_eq!(rtts.sample(2, "h:1", 200 * MS, t0 + 59 * 1000 * MS), None, "not again within the minute");
        assert!(rtts.sample(2, "h:1", 200 * MS, t0 + 61 * 1000 * MS).is_some());
        assert_eq!(rtts.largest(), rtts.smoothed()[0].1);
    }

    #[test]
    fn only_a_timeout_at_the_ceiling_is_reported() {
        let rtts = PeerRtts::new(bounds());
        let t0 = Instant::now();
        assert_eq!(rtts.timed_out(3, "h:3", 100 * MS, t0), None);
        let w = rtts.timed_out(3, "h:3", 250 * MS, t0).expect("a warning");
        assert_eq!(w.why, Slow::TimedOutAtCeiling { rtt: None });
        assert!(rtts.smoothed().is_empty());
        assert_eq!(rtts.largest(), Duration::ZERO);
    }
}
