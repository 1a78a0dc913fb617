//! Who may do what: the cluster's named tokens, their roles, and who submitted which job.
//!
//! Only a token's SHA-256 is replicated; the token itself is shown once, to whoever created
//! it. Tokens are 256 random bits, so a plain hash cannot be reversed by guessing.
//!
//! Besides the named tokens there is the bootstrap credential: the token each master was
//! given (`admin.token` of its certificates, or `--token-file`). It is an admin token that is
//! not in the replicated state; the state only records whether it was revoked.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{JobId, Millis};

/// The name the bootstrap credential goes by in `token list` and `token revoke`.
pub const BOOTSTRAP: &str = "bootstrap";
/// Named tokens a cluster keeps at most (each costs every master a comparison per request).
pub const MAX_TOKENS: usize = 1_000;
/// Longest token name.
pub const MAX_NAME: usize = 64;

/// What a credential may do. Each role can do what the ones below it can, except `Worker`,
/// which can only hold a worker session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
// The API has another `Role` (a master's Raft role): this one is `TokenRole` there.
#[schema(as = TokenRole)]
pub enum Role {
    /// Everything: tokens, masters, backups.
    Admin,
    /// Maintenance (cordon, drain, leadership, retention, sharing, purge) and cancelling any job.
    Operator,
    /// Submit jobs, cancel its own, and read.
    Submit,
    /// Read only: status, jobs, results, events, the dashboard, metrics.
    Read,
    /// Hold a worker session, nothing else.
    Worker,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Admin, Role::Operator, Role::Submit, Role::Read, Role::Worker];

    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Submit => "submit",
            Role::Read => "read",
            Role::Worker => "worker",
        }
    }

    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    /// Whether this role may do what needs `need`.
    pub fn may(self, need: Need) -> bool {
        match (self, need) {
            (Role::Admin, _) => true,
            (Role::Worker, need) => need == Need::WorkerSession,
            (_, Need::WorkerSession | Need::Admin) => false,
            (Role::Operator, _) => true,
            (Role::Submit, need) => matches!(need, Need::Submit | Need::Read),
            (Role::Read, need) => need == Need::Read,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a request needs, as the master's routes declare it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Read,
    Submit,
    Operate,
    Admin,
    WorkerSession,
}

impl Need {
    /// The least role that has it (for a refusal's message).
    pub fn least_role(self) -> Role {
        match self {
            Need::Read => Role::Read,
            Need::Submit => Role::Submit,
            Need::Operate => Role::Operator,
            Need::Admin => Role::Admin,
            Need::WorkerSession => Role::Worker,
        }
    }
}

/// A token's SHA-256.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// Compares without an early exit, so timing does not tell how much of a guess was right.
    pub fn matches(&self, other: &TokenHash) -> bool {
        self.0.iter().zip(&other.0).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// One named token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub role: Role,
    pub hash: TokenHash,
    pub created_ms: Millis,
    /// The name of the credential that created it.
    pub created_by: String,
}

/// Why a token change was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AccessRefusal {
    #[error("a token named '{0}' exists already (revoke it first, or pick another name)")]
    Exists(String),
    #[error("no token named '{0}'")]
    NoToken(String),
    #[error(
        "'{0}' is not a token name (1 to {MAX_NAME} characters: letters, digits, '.', '_' and '-'; \
         'bootstrap' is taken)"
    )]
    BadName(String),
    #[error("the cluster holds {MAX_TOKENS} tokens already; revoke some first")]
    TooMany,
    #[error("revoking '{0}' would leave no admin credential: create another admin token first")]
    LastAdmin(String),
    #[error("the bootstrap token was revoked already")]
    BootstrapRevoked,
}

/// The HTTP method of an audited request (only the ones that change something).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Method {
    Post,
    Put,
    Delete,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

/// One request that asked to change something, as the journal keeps it: who (the token's
/// name and role, or the certificate), what (method, path, the answer's status) and from where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub who: String,
    /// The token's role; none for a certificate or an open master.
    pub role: Option<Role>,
    pub method: Method,
    pub path: String,
    /// The HTTP status it was answered with (403: refused for its role).
    pub status: u16,
    /// The caller's address and port.
    pub from: String,
}

/// Longest path an audit record keeps (a longer one is cut).
pub const MAX_AUDIT_PATH: usize = 256;

/// The replicated part of access control.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    tokens: BTreeMap<String, Credential>,
    bootstrap_revoked: bool,
    /// The named token that submitted each job, while the job is kept.
    owners: BTreeMap<JobId, String>,
    /// An audit record was committed (the audit gate is open for good).
    audited: bool,
}

impl Access {
    /// Whether nothing was ever recorded here (a state an older release can still read).
    pub fn is_empty(&self) -> bool {
        *self == Access::default()
    }

    pub fn tokens(&self) -> impl Iterator<Item = (&str, &Credential)> {
        self.tokens.iter().map(|(n, c)| (n.as_str(), c))
    }

    /// The named token with this hash. Every token is compared, so timing says nothing.
    pub fn find(&self, hash: &TokenHash) -> Option<(&str, &Credential)> {
        let mut found = None;
        for (name, credential) in &self.tokens {
            if credential.hash.matches(hash) && found.is_none() {
                found = Some((name.as_str(), credential));
            }
        }
        found
    }

    pub fn bootstrap_revoked(&self) -> bool {
        self.bootstrap_revoked
    }

    pub fn owner_of(&self, job: JobId) -> Option<&str> {
        self.owners.get(&job).map(String::as_str)
    }

    pub(crate) fn create(
        &mut self,
        name: &str,
        role: Role,
        hash: TokenHash,
        at: Millis,
        by: &str,
    ) -> Result<(), AccessRefusal> {
        if !valid_name(name) {
            return Err(AccessRefusal::BadName(name.to_string()));
        }
        if self.tokens.contains_key(name) {
            return Err(AccessRefusal::Exists(name.to_string()));
        }
        if self.tokens.len() >= MAX_TOKENS {
            return Err(AccessRefusal::TooMany);
        }
        let credential = Credential { role, hash, created_ms: at, created_by: by.to_string() };
        self.tokens.insert(name.to_string(), credential);
        Ok(())
    }

    /// Revokes a named token, or the bootstrap one. The cluster always keeps one admin
    /// credential: the last cannot go.
    pub(crate) fn revoke(&mut self, name: &str) -> Result<Role, AccessRefusal> {
        let admins =
            self.tokens.values().filter(|c| c.role == Role::Admin).count() + usize::from(!self.bootstrap_revoked);
        if name == BOOTSTRAP {
            if self.bootstrap_revoked {
                return Err(AccessRefusal::BootstrapRevoked);
            }
            if admins < 2 {
                return Err(AccessRefusal::LastAdmin(name.to_string()));
            }
            self.bootstrap_revoked = true;
            return Ok(Role::Admin);
        }
        let role = self.tokens.get(name).ok_or_else(|| AccessRefusal::NoToken(name.to_string()))?.role;
        if role == Role::Admin && admins < 2 {
            return Err(AccessRefusal::LastAdmin(name.to_string()));
        }
        self.tokens.remove(name);
        Ok(role)
    }

    pub(crate) fn set_owner(&mut self, job: JobId, owner: &str) {
        self.owners.insert(job, owner.to_string());
    }

    pub(crate) fn mark_audited(&mut self) {
        self.audited = true;
    }

    pub(crate) fn forget_job(&mut self, job: JobId) {
        self.owners.remove(&job);
    }
}

/// Letters, digits, `.`, `_` and `-`, 1 to [`MAX_NAME`] long, and not the bootstrap's name.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name != BOOTSTRAP
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(n: u8) -> TokenHash {
        TokenHash([n; 32])
    }

    #[test]
    fn roles_allow_what_the_issue_lists() {
        use Need::*;
        let table = [
            (Role::Admin, [true, true, true, true, true]),
            (Role::Operator, [true, true, true, false, false]),
            (Role::Submit, [true, true, false, false, false]),
            (Role::Read, [true, false, false, false, false]),
            (Role::Worker, [false, false, false, false, true]),
        ];
        for (role, allowed) in table {
            for (need, ok) in [Read, Submit, Operate, Admin, WorkerSession].into_iter().zip(allowed) {
                assert_eq!(role.may(need), ok, "{role} for {need:?}");
            }
        }
        for role in Role::ALL {
            assert_eq!(Role::from_name(role.name()), Some(role));
        }
    }

    #[test]
    fn the_last_admin_credential_stays() {
        let mut a = Access::default();
        assert!(a.is_empty());
        assert_eq!(a.revoke(BOOTSTRAP), Err(AccessRefusal::LastAdmin(BOOTSTRAP.into())));
        a.create("ci", Role::Submit, hash(1), 5, BOOTSTRAP).unwrap();
        assert_eq!(a.revoke(BOOTSTRAP), Err(AccessRefusal::LastAdmin(BOOTSTRAP.into())));
        a.create("alice", Role::Admin, hash(2), 6, BOOTSTRAP).unwrap();
        assert_eq!(a.revoke(BOOTSTRAP), Ok(Role::Admin));
        assert!(a.bootstrap_revoked());
        assert_eq!(a.revoke(BOOTSTRAP), Err(AccessRefusal::BootstrapRevoked));
        assert_eq!(a.revoke("alice"), Err(AccessRefusal::LastAdmin("alice".into())));
        assert_eq!(a.revoke("ci"), Ok(Role::Submit));
        assert_eq!(a.revoke("ci"), Err(AccessRefusal::NoToken("ci".into())));
    }

    #[test]
    fn tokens_are_found_by_hash_and_names_are_checked() {
        let mut a = Access::default();
        a.create("viewer", Role::Read, hash(7), 1, BOOTSTRAP).unwrap();
        assert_eq!(a.find(&hash(7)).map(|(n, c)| (n, c.role)), Some(("viewer", Role::Read)));
        assert!(a.find(&hash(8)).is_none());
        assert_eq!(a.create("viewer", Role::Admin, hash(9), 2, BOOTSTRAP), Err(AccessRefusal::Exists("viewer".into())));
        for bad in ["", "bootstrap", "a b", "x/y", &"n".repeat(MAX_NAME + 1)] {
            assert_eq!(a.create(bad, Role::Read, hash(3), 2, BOOTSTRAP), Err(AccessRefusal::BadName(bad.into())));
        }
        assert!(valid_name("ci-runner_2.eu"));
    }
}
