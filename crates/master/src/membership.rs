//! Changes to the group of masters, made by the leader one at a time (etcd's rules):
//!
//! - **add**: the new master joins as a learner, receives the log (or a snapshot), and becomes
//!   a voter only once it has caught up with the leader's log;
//! - **remove**: refused when it would remove the last voter, or leave the remaining voters
//!   without a quorum that answers; a leader asked to remove itself hands leadership on first
//!   and sends the request after it;
//! - **transfer**: the log is held still, the chosen voter catches up to its last entry and
//!   stands for election (see [`transfer`] for why it wins at once).
//!
//! openraft commits the membership itself (joint consensus); each committed change is then
//! journalled with `Command::MembershipChanged`, which also retires a removed master's id.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};

use flotilla_core::{Command, MemberChange};
use flotilla_proto::api::{LeadershipMoved, MemberRole, MemberView};
use flotilla_raft::NodeId;

use crate::node::Master;

/// How long a new master may take to catch up before the request gives up (it stays a
/// learner; asking again resumes the wait).
pub const CATCH_UP_DEADLINE: Duration = Duration::from_secs(120);
/// A learner that matched the leader's last entry within this long of it being written is
/// current: it keeps up with the leader's pace.
const KEEPING_UP: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("this master is not the leader")]
    NotLeader { leader: Option<NodeId> },
    #[error("another membership change or leadership transfer is in progress; retry when it has finished")]
    Busy,
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
}

/// The group as this master's Raft node knows it.
pub fn members(master: &Master) -> Vec<MemberView> {
    // Copied out first: reading Raft's metrics again while this borrow is held can deadlock
    // with openraft publishing new metrics in between.
    let (nodes, voters, leader) = {
        let metrics = master.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let nodes: Vec<(NodeId, String)> = membership.nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
        (nodes, voters, m.current_leader)
    };
    let mut out: Vec<MemberView> = nodes
        .into_iter()
        .map(|(id, address)| MemberView {
            id,
            address,
            role: if voters.contains(&id) { MemberRole::Voter } else { MemberRole::Learner },
            leader: leader == Some(id),
            version: master.releases.of(id),
        })
        .collect();
    if out.is_empty() {
        // Not yet part of a group (a new master waiting to be added): only itself.
        out.push(MemberView {
            id: master.config.id,
            address: master.address_of(master.config.id).unwrap_or_default(),
            role: MemberRole::Learner,
            leader: false,
            version: master.releases.of(master.config.id),
        });
    }
    out
}

/// The change lock: a change that is about to finish (journalling) is waited for briefly; one
/// that takes long (a new master catching up) is answered with [`MembershipError::Busy`].
async fn one_at_a_time(master: &Master) -> Result<tokio::sync::MutexGuard<'_, ()>, MembershipError> {
    tokio::time::timeout(Duration::from_secs(5), master.membership_lock.lock()).await.map_err(|_| MembershipError::Busy)
}

fn require_leader(master: &Master) -> Result<(), MembershipError> {
    let metrics = master.raft.metrics();
    let m = metrics.borrow();
    if m.state == ServerState::Leader && m.current_leader == Some(master.config.id) {
        Ok(())
    } else {
        Err(MembershipError::NotLeader { leader: m.current_leader.filter(|l| *l != master.config.id) })
    }
}

fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> MembershipError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => MembershipError::NotLeader { leader: f.leader_id },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => MembershipError::Conflict(c.to_string()),
        RaftError::Fatal(f) => MembershipError::Unavailable(f.to_string()),
    }
}

fn check_address(address: &str) -> Result<(), MembershipError> {
    match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => Ok(()),
        _ => Err(MembershipError::Invalid(format!("master address '{address}' is not HOST:PORT"))),
    }
}

/// Journals a committed change. The change itself is already in force; a failure here only
/// loses the journal line (and, for a removal, the retirement of the id), so it is logged.
async fn journal(master: &Master, change: MemberChange) {
    if let Err(e) = master.proposer.propose_one(Command::MembershipChanged(change.clone())).await {
        tracing::warn!(?change, error = %e, "membership change not journalled");
    }
}

/// Adds master `id` at `address`: as a learner, then as a voter once it has caught up.
/// Asking again for a master that is already a learner resumes the wait; for a voter at the
/// same address it answers at once.
pub async fn add(master: &Master, id: NodeId, address: String) -> Result<Vec<MemberView>, MembershipError> {
    if id == 0 {
        return Err(MembershipError::Invalid("master ids start at 1".into()));
    }
    check_address(&address)?;
    require_leader(master)?;
    let _one_at_a_time = one_at_a_time(master).await?;
    if master.shared.read().state.retired_masters().contains(&id) {
        return Err(MembershipError::Conflict(format!(
            "master id {id} belonged to a master removed from the group; give the new master a new id"
        )));
    }
    let current = members(master);
    match current.iter().find(|m| m.id == id) {
        Some(m) if m.address != address => {
            return Err(MembershipError::Conflict(format!(
                "master id {id} is already used by the master at {}; give the new master a new id",
                m.address
            )))
        }
        Some(m) if m.role == MemberRole::Voter => return Ok(current),
        Some(_) => tracing::info!(id, "master is a learner already; waiting for it to catch up"),
        None => {
            if let Some(other) = current.iter().find(|m| m.address == address) {
                return Err(MembershipError::Conflict(format!(
                    "{address} is already the address of master {}",
                    other.id
                )));
            }
            master.raft.add_learner(id, BasicNode { addr: address.clone() }, false).await.map_err(write_error)?;
            tracing::info!(id, %address, "master added as a learner");
            journal(master, MemberChange::LearnerAdded { node: id, address }).await;
        }
    }
    wait_caught_up(master, id, CATCH_UP_DEADLINE).await?;
    master.raft.change_membership(ChangeMembers::AddVoterIds([id].into()), true).await.map_err(write_error)?;
    tracing::info!(id, "master caught up and now votes");
    journal(master, MemberChange::Promoted { node: id }).await;
    Ok(members(master))
}

/// Waits until `id` has matched the leader's last entry, within [`KEEPING_UP`] of it being
/// the last one.
async fn wait_caught_up(master: &Master, id: NodeId, deadline: Duration) -> Result<(), MembershipError> {
    let give_up = Instant::now() + deadline;
    let mut metrics = master.raft.metrics();
    loop {
        let round = Instant::now();
        let goal = metrics.borrow().last_log_index.unwrap_or(0);
        loop {
            let matched = {
                let m = metrics.borrow_and_update();
                if m.state != ServerState::Leader {
                    return Err(MembershipError::NotLeader { leader: m.current_leader });
                }
                m.replication.as_ref().and_then(|r| r.get(&id).cloned()).flatten().map(|l| l.index)
            };
            if matched.is_some_and(|i| i >= goal) {
                break;
            }
            let now = Instant::now();
            if now >= give_up {
                return Err(MembershipError::Unavailable(format!(
                    "master {id} did not catch up within {} s (it has entry {} of {goal}); it stays a learner. \
                     Check that it runs and that the leader reaches it, then ask again",
                    deadline.as_secs(),
                    matched.map_or("none".to_string(), |i| i.to_string())
                )));
            }
            if let Ok(Err(_)) =
                tokio::time::timeout((give_up - now).min(Duration::from_millis(100)), metrics.changed()).await
            {
                return Err(MembershipError::Unavailable("raft stopped".into()));
            }
        }
        if round.elapsed() <= KEEPING_UP {
            return Ok(());
        }
    }
}

/// Voters other than this master that answer, with the last log index the leader knows they
/// hold, most current first.
async fn answering_voters(master: &Master, among: &BTreeSet<NodeId>) -> Vec<(NodeId, u64)> {
    let matched: Vec<(NodeId, u64)> = {
        let metrics = master.raft.metrics();
        let m = metrics.borrow();
        among
            .iter()
            .filter(|id| **id != master.config.id)
            .map(|id| {
                let index = m.replication.as_ref().and_then(|r| r.get(id).cloned()).flatten().map_or(0, |l| l.index);
                (*id, index)
            })
            .collect()
    };
    let term = master.current_term();
    let mut answering = Vec::new();
    for (id, index) in matched {
        let Some(address) = master.address_of(id) else { continue };
        match master.fetch_node_info(&address, Duration::from_millis(700)).await {
            Ok(info) if info.term == term => answering.push((id, index)),
            _ => {}
        }
    }
    answering.sort_by_key(|(id, index)| (std::cmp::Reverse(*index), *id));
    answering
}

fn voters(master: &Master) -> BTreeSet<NodeId> {
    master.raft.metrics().borrow().membership_config.membership().voter_ids().collect()
}

/// Removes master `id` from the group. Removing one that is already gone answers the
/// current members (a retry after a lost answer is not an error).
pub async fn remove(master: &Master, id: NodeId) -> Result<Vec<MemberView>, MembershipError> {
    require_leader(master)?;
    let one_at_a_time = one_at_a_time(master).await?;
    let current = members(master);
    let Some(target) = current.iter().find(|m| m.id == id) else {
        if master.shared.read().state.retired_masters().contains(&id) {
            return Ok(current);
        }
        let ids: Vec<String> = current.iter().map(|m| m.id.to_string()).collect();
        return Err(MembershipError::Invalid(format!(
            "no master {id} in the group (its masters are {})",
            ids.join(", ")
        )));
    };
    if target.role == MemberRole::Learner {
        master.raft.change_membership(ChangeMembers::RemoveNodes([id].into()), false).await.map_err(write_error)?;
    } else {
        let all = voters(master);
        let remaining: BTreeSet<NodeId> = all.iter().copied().filter(|v| *v != id).collect();
        if remaining.is_empty() {
            return Err(MembershipError::Conflict(format!(
                "master {id} is the group's last voter; a group cannot remove its last voter"
            )));
        }
        // The change commits in two steps (joint consensus): both the old and the new voters
        // need a quorum that answers. The leader counts itself when it stays.
        let answering = answering_voters(master, &all).await;
        let up_old: BTreeSet<NodeId> =
            answering.iter().map(|(v, _)| *v).chain(std::iter::once(master.config.id)).collect();
        let up: BTreeSet<NodeId> = up_old.iter().copied().filter(|v| remaining.contains(v)).collect();
        let need = remaining.len() / 2 + 1;
        let need_old = all.len() / 2 + 1;
        let answering: Vec<(NodeId, u64)> = answering.into_iter().filter(|(v, _)| *v != id).collect();
        if up.len() < need || up_old.len() < need_old {
            return Err(MembershipError::Conflict(format!(
                "removing master {id} would leave {} voters of which {} answer, and a quorum needs {need}; \
                 bring a master back or add one first",
                remaining.len(),
                up.len()
            )));
        }
        if id == master.config.id {
            // The leader cannot commit its own removal and then lead nobody: it hands
            // leadership on, and the client follows the redirect to the new leader.
            let moved = transfer_locked(master, answering.first().map(|(v, _)| *v)).await?;
            drop(one_at_a_time);
            return Err(MembershipError::NotLeader { leader: Some(moved.to) });
        }
        master.raft.change_membership(ChangeMembers::RemoveVoters([id].into()), false).await.map_err(write_error)?;
    }
    tracing::info!(id, "master removed from the group");
    journal(master, MemberChange::Removed { node: id }).await;
    Ok(members(master))
}

/// Hands leadership to voter `to`, or to the most current voter that answers.
pub async fn transfer(master: &Master, to: Option<NodeId>) -> Result<LeadershipMoved, MembershipError> {
    require_leader(master)?;
    let _one_at_a_time = one_at_a_time(master).await?;
    transfer_locked(master, to).await
}

/// The transfer itself (the caller holds the membership lock).
///
/// openraft 0.9 has no leadership transfer; this builds one from its election rules. A
/// follower refuses to vote while the leader's lease runs (it heard from the leader within
/// the maximum election timeout), but the leader itself grants a vote to a candidate of a
/// higher term whose log is at least as long as its own, once its own lease since it was
/// elected has run out, and steps down. So the leader holds its log still (the proposer
/// pauses; what arrives waits), lets the target catch up to its last entry, and asks it to
/// stand: with three masters the target's and the old leader's votes are a majority at
/// once. With four or five the target needs more votes than those two, which the other
/// voters give only once their leases ran out, one lease after the old leader stopped
/// heartbeating; the target stands again then (see [`stand`]). Meanwhile the old leader
/// holds its own elections: it would otherwise stand as soon as its election timer fires,
/// and, its log being as long as anyone's, win back the leadership it is handing over (a
/// group of four once went round that way for a minute). Requests that waited are then
/// refused by the old leader with a redirect, and clients retry at the new one.
async fn transfer_locked(master: &Master, to: Option<NodeId>) -> Result<LeadershipMoved, MembershipError> {
    let started = Instant::now();
    let me = master.config.id;
    let voters = voters(master);
    let candidates: BTreeSet<NodeId> = match to {
        Some(t) if t == me => {
            return Err(MembershipError::Invalid(format!("master {me} already leads")));
        }
        Some(t) if !voters.contains(&t) => {
            return Err(MembershipError::Invalid(format!("master {t} is not a voter of the group")));
        }
        Some(t) => [t].into(),
        None => voters.iter().copied().filter(|v| *v != me).collect(),
    };
    if candidates.is_empty() {
        return Err(MembershipError::Conflict("no other voter to hand leadership to".into()));
    }
    let Some((target, _)) = answering_voters(master, &candidates).await.first().copied() else {
        return Err(MembershipError::Unavailable(match to {
            Some(t) => format!("master {t} does not answer; leadership stays with master {me}"),
            None => format!("no other voter answers; leadership stays with master {me}"),
        }));
    };
    let address = master
        .address_of(target)
        .ok_or_else(|| MembershipError::Unavailable(format!("no address known for master {target}")))?;
    // Our own lease must have run out, or we refuse the target's vote request ourselves.
    let lease = master.config.raft.election_max + Duration::from_millis(20);
    if let Some(since) = master.leadership().map(|l| l.since) {
        let led = since.elapsed();
        if led < lease {
            tokio::time::sleep(lease - led).await;
        }
    }
    let paused = tokio::time::timeout(Duration::from_secs(2), master.proposer.pause())
        .await
        .ok()
        .flatten()
        .ok_or_else(|| MembershipError::Unavailable("the proposal in flight did not commit within 2 s".into()))?;
    let outcome = async {
        let last = master.raft.metrics().borrow().last_log_index.unwrap_or(0);
        let mut metrics = master.raft.metrics();
        let caught_up_by = Instant::now() + Duration::from_secs(3);
        loop {
            let matched = metrics
                .borrow_and_update()
                .replication
                .as_ref()
                .and_then(|r| r.get(&target).cloned())
                .flatten()
                .map_or(0, |l| l.index);
            if matched >= last {
                break;
            }
            if Instant::now() >= caught_up_by {
                return Err(MembershipError::Unavailable(format!(
                    "master {target} did not catch up with entry {last} within 3 s (it has {matched}); \
                     leadership stays with master {me}"
                )));
            }
            if let Ok(Err(_)) = tokio::time::timeout(Duration::from_millis(50), metrics.changed()).await {
                return Err(MembershipError::Unavailable("raft stopped".into()));
            }
        }
        let _held = ElectionsHeld::new(&master.raft);
        let (status, body) = master
            .http
            .send(
                hyper::Method::POST,
                &address,
                &format!("/v1/cluster/stand?leader={me}"),
                None,
                Duration::from_secs(2),
            )
            .await
            .map_err(|e| MembershipError::Unavailable(format!("master {target} was not reached: {e}")))?;
        if !status.is_success() {
            return Err(MembershipError::Unavailable(format!(
                "master {target} refused to stand: HTTP {status} {}",
                String::from_utf8_lossy(&body)
            )));
        }
        let deadline = Instant::now() + master.config.raft.election_max * 4 + Duration::from_secs(1);
        loop {
            let (state, leader, term) = {
                let m = metrics.borrow_and_update();
                (m.state, m.current_leader, m.current_term)
            };
            if state != ServerState::Leader && leader.is_some_and(|l| l != me) {
                return Ok(LeadershipMoved {
                    from: me,
                    to: leader.unwrap_or(target),
                    term,
                    took_ms: started.elapsed().as_millis() as u64,
                });
            }
            if Instant::now() >= deadline {
                return Err(MembershipError::Unavailable(format!(
                    "master {target} stood but no new leader was known within {} ms",
                    (master.config.raft.election_max * 4 + Duration::from_secs(1)).as_millis()
                )));
            }
            if let Ok(Err(_)) = tokio::time::timeout(Duration::from_millis(50), metrics.changed()).await {
                return Err(MembershipError::Unavailable("raft stopped".into()));
            }
        }
    }
    .await;
    drop(paused);
    match &outcome {
        Ok(m) => tracing::info!(to = m.to, term = m.term, took_ms = m.took_ms, "leadership handed over"),
        Err(e) => tracing::warn!(error = %e, "leadership transfer failed"),
    }
    outcome
}

/// A follower asked by the leader to stand for election (the last step of a transfer). Only
/// the master it follows may ask: anyone else would move leadership at will.
pub async fn stand(master: &Arc<Master>, asked_by: Option<NodeId>) -> Result<(), MembershipError> {
    let leader = master.leader_id();
    if asked_by.is_none() || asked_by != leader || leader == Some(master.config.id) {
        return Err(MembershipError::Conflict(format!(
            "only the leader (master {}) may ask master {} to stand",
            leader.map_or("unknown".to_string(), |l| l.to_string()),
            master.config.id
        )));
    }
    let voter = voters(master).contains(&master.config.id);
    if !voter {
        return Err(MembershipError::Conflict(format!("master {} does not vote", master.config.id)));
    }
    master.raft.trigger().elect().await.map_err(|e| MembershipError::Unavailable(e.to_string()))?;
    // With more than three voters this first round cannot win: the voters other than the old
    // leader still hold its lease. They give their votes once it has run out, one lease after
    // the old leader's last heartbeat, which came before this request. Standing again right
    // then comes before their own election timers and watchdogs, which wait longer.
    let master = master.clone();
    let old_leader = leader;
    tokio::spawn(async move {
        let lease = master.config.raft.election_max;
        for _ in 0..STAND_AGAIN {
            tokio::time::sleep(lease + STAND_AGAIN_MARGIN).await;
            let (state, leader) = {
                let m = master.raft.metrics();
                let m = m.borrow();
                (m.state, m.current_leader)
            };
            let settled = state == ServerState::Leader || leader.is_some_and(|l| Some(l) != old_leader);
            if settled || state == ServerState::Shutdown {
                return;
            }
            tracing::info!(asked_by = ?old_leader, "standing again for the hand-over: the other voters' leases ran out");
            if master.raft.trigger().elect().await.is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// How many times the target of a hand-over stands again when a round did not settle.
const STAND_AGAIN: u32 = 3;
/// How long past the lease the target waits before standing again: the old leader's last
/// heartbeat may reach a voter a little after the target stood.
const STAND_AGAIN_MARGIN: Duration = Duration::from_millis(15);

/// Keeps this master from standing for election until dropped (see [`transfer_locked`]).
struct ElectionsHeld<'a> {
    raft: &'a flotilla_raft::Raft,
}

impl<'a> ElectionsHeld<'a> {
    fn new(raft: &'a flotilla_raft::Raft) -> Self {
        raft.runtime_config().elect(false);
        ElectionsHeld { raft }
    }
}

impl Drop for ElectionsHeld<'_> {
    fn drop(&mut self) {
        self.raft.runtime_config().elect(true);
    }
}
