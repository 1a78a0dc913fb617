//! Who may call a master, in front of every route (client API, dashboard, worker sessions,
//! Raft). A refused request gets 401 (no known credential) or 403 (a role that may not do
//! this) and reaches no handler, so it changes nothing.
//!
//! Over TLS the certificate a caller showed (checked against the cluster CA by the listener)
//! may say enough: a master may do everything, a worker may hold a worker session, and Raft
//! is spoken with masters only. Anything else needs a token: the bootstrap one this master was
//! given (`admin.token` or `--token-file`, an admin until revoked), or a named one from the
//! replicated state, whose role decides. What each route needs is [`need_of`].

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use flotilla_core::access::{AuditRecord, Method as AuditMethod, Need, Role, TokenHash, BOOTSTRAP, MAX_AUDIT_PATH};
use flotilla_core::Command;
use flotilla_tls::{Connection, Peer};

use flotilla_proto::api::{ApiError, ApiErrorCode};

use crate::node::Master;

const RAFT_SERVICE: &str = "/flotilla.v1.RaftService/";
const WORKER_SERVICE: &str = "/flotilla.v1.WorkerService/";

/// Who made a request, as the handlers see it (a request extension).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A master of this cluster, by its certificate.
    Master,
    /// A worker, by its certificate.
    Worker,
    /// A token: the bootstrap one (named [`BOOTSTRAP`]) or a named one.
    Token { name: String, role: Role },
    /// A master given no token (loopback experiments): anyone may do anything.
    Anyone,
}

impl Caller {
    /// The named token that made the request: what a job submitted by it remembers.
    pub fn owner(&self) -> Option<&str> {
        match self {
            Caller::Token { name, .. } if name != BOOTSTRAP => Some(name),
            _ => None,
        }
    }

    /// The role, for tokens; certificates and open masters act as admins where they may act.
    pub fn role(&self) -> Role {
        match self {
            Caller::Token { role, .. } => *role,
            Caller::Worker => Role::Worker,
            Caller::Master | Caller::Anyone => Role::Admin,
        }
    }

    /// How the caller is named in messages and in what it creates.
    pub fn name(&self) -> &str {
        match self {
            Caller::Master => "a master certificate",
            Caller::Worker => "a worker certificate",
            Caller::Token { name, .. } => name,
            Caller::Anyone => "anyone",
        }
    }
}

/// Requests answered without a credential: the dashboard's page and assets, and a master's
/// view of itself (`GET /v1/node`), which health checks ask (Kubernetes probes and load
/// balancers carry no token); it tells its role, term and indexes, nothing of the jobs.
pub fn is_public(method: &Method, path: &str) -> bool {
    crate::dashboard::is_public(method, path) || (matches!(*method, Method::GET | Method::HEAD) && path == "/v1/node")
}

/// What a request needs. Unknown routes need an admin: nothing is open by omission.
pub fn need_of(method: &Method, path: &str) -> Need {
    if path.starts_with(WORKER_SERVICE) {
        return Need::WorkerSession;
    }
    if path.starts_with(RAFT_SERVICE) {
        return Need::Admin;
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        // A backup holds every job and the tokens' hashes.
        (&Method::GET, ["v1", "snapshot"]) | (_, ["v1", "tokens", ..]) => Need::Admin,
        // Asked by followers of the leader (their certificate, or the bootstrap token).
        (&Method::GET, ["v1", "cluster", "read-index"]) => Need::Admin,
        (&Method::GET | &Method::HEAD, ["v1", ..] | ["ui", ..] | ["metrics"]) => Need::Read,
        (&Method::POST, ["v1", "jobs"] | ["v1", "schedules"]) => Need::Submit,
        // A `submit` token may cancel its own jobs only: the handler checks the owner.
        (&Method::POST, ["v1", "jobs", _, "cancel"]) => Need::Submit,
        (&Method::POST, ["v1", "jobs", "purge"])
        | (&Method::PUT, ["v1", "jobs", "retention"] | ["v1", "events", "retention"] | ["v1", "scheduling"])
        | (&Method::POST, ["v1", "workers", _, "cordon" | "drain" | "uncordon"])
        | (&Method::POST, ["v1", "schedules", _, "pause" | "resume"])
        | (&Method::DELETE, ["v1", "schedules", _])
        // Resuming or dropping a pool is an operator's business; setting a policy is not (the
        // command provider runs its commands on the masters): that falls to admin below.
        | (&Method::POST, ["v1", "autoscale", _, "resume"])
        | (&Method::DELETE, ["v1", "autoscale", _])
        | (&Method::POST, ["v1", "cluster", "leader"]) => Need::Operate,
        _ => Need::Admin,
    }
}

pub async fn authenticate(State(master): State<Arc<Master>>, mut request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<Connection>().map(|c| c.peer);
    let remote = request.extensions().get::<Connection>().map(|c| c.remote);
    let path = request.uri().path();
    let need = need_of(request.method(), path);
    let audited = audited(request.method(), path).map(|method| (method, path.to_string()));
    let caller = match peer {
        Some(Peer::Tls(Some(flotilla_tls::Role::Master))) => Some(Caller::Master),
        Some(Peer::Tls(Some(flotilla_tls::Role::Worker))) if need == Need::WorkerSession => Some(Caller::Worker),
        Some(Peer::Tls(_)) if path.starts_with(RAFT_SERVICE) => {
            return refuse(request, ApiErrorCode::Unauthorized, "Raft calls need a master certificate of this cluster")
                .await;
        }
        _ => None,
    };
    let caller = match caller {
        Some(c) => c,
        None if is_public(request.method(), path) => Caller::Anyone,
        None => match identify(&master, &request) {
            Ok(c) => c,
            Err(why) => return refuse(request, ApiErrorCode::Unauthorized, &why).await,
        },
    };
    if !caller.role().may(need) {
        let why = forbidden(&caller, need);
        if let Some((method, path)) = audited {
            // A follower sends a write to the leader, refused or not, so that the refusal
            // is journalled there (a follower cannot propose the audit record).
            if let Some(leader) = master.leader_id().filter(|l| *l != master.config.id) {
                drain(request).await;
                return crate::api::Failure(ApiError {
                    error: format!("master {} is not the leader; master {leader} is", master.config.id),
                    code: ApiErrorCode::NotLeader,
                    leader: master.address_of(leader),
                })
                .into_response();
            }
            audit(&master, &caller, method, path, 403, remote);
        }
        return refuse(request, ApiErrorCode::Forbidden, &why).await;
    }
    request.extensions_mut().insert(caller.clone());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    // A follower's 421 and a 503 did nothing: there is nothing to audit.
    if let Some((method, path)) = audited.filter(|_| !matches!(status, 421 | 503)) {
        audit(&master, &caller, method, path, status, remote);
    }
    response
}

/// The requests the audit journal keeps: every one that asks to change something, but the
/// last step of a leadership transfer (one master asking another, journalled as the election).
fn audited(method: &Method, path: &str) -> Option<AuditMethod> {
    if !path.starts_with("/v1/") || path == "/v1/cluster/stand" {
        return None;
    }
    match *method {
        Method::POST => Some(AuditMethod::Post),
        Method::PUT => Some(AuditMethod::Put),
        Method::DELETE => Some(AuditMethod::Delete),
        _ => None,
    }
}

/// Proposes the audit record with the next proposal, without holding the answer back. Until every voter reads audit
/// records (a rolling upgrade from 0.1.0) there is none, and the master logs the request.
fn audit(
    master: &Arc<Master>,
    caller: &Caller,
    method: AuditMethod,
    mut path: String,
    status: u16,
    remote: Option<std::net::SocketAddr>,
) {
    if path.len() > MAX_AUDIT_PATH {
        let mut cut = MAX_AUDIT_PATH;
        while !path.is_char_boundary(cut) {
            cut -= 1;
        }
        path.truncate(cut);
    }
    let role = match caller {
        Caller::Token { role, .. } => Some(*role),
        _ => None,
    };
    let from = remote.map_or_else(|| "unknown".to_string(), |r| r.to_string());
    let record = AuditRecord { who: caller.name().to_string(), role, method, path, status, from };
    if let Err(e) = master.proposer.defer(Command::Audit(record.clone())) {
        // During an upgrade from 0.1.0 this is every request: not worth more than debug.
        tracing::debug!(
            who = %record.who, method = record.method.name(), path = %record.path, status = record.status,
            from = %record.from, reason = %e, "request not in the audit journal"
        );
    }
}

/// The token a request shows, checked against the bootstrap token and the named ones.
fn identify(master: &Master, request: &Request) -> Result<Caller, String> {
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let bootstrap = master.config.token.as_deref();
    let Some(presented) = presented else {
        if bootstrap.is_none() {
            return Ok(Caller::Anyone);
        }
        return Err("no token: set FLOTILLA_TOKEN (or --token-file), or FLOTILLA_CERTS for its admin.token".into());
    };
    let is_bootstrap = bootstrap.is_some_and(|b| constant_time_eq(presented.as_bytes(), b.as_bytes()));
    // Hashed before the state's lock is taken: apply waits for readers.
    let hash = TokenHash(flotilla_tls::authority::hash_token(presented));
    let data = master.shared.read();
    let access = data.state.access();
    if is_bootstrap {
        if access.bootstrap_revoked() {
            return Err("the bootstrap token (admin.token) was revoked: use a named token".into());
        }
        return Ok(Caller::Token { name: BOOTSTRAP.to_string(), role: Role::Admin });
    }
    match access.find(&hash) {
        Some((name, credential)) => Ok(Caller::Token { name: name.to_string(), role: credential.role }),
        // A master given no token is open (loopback only, as config checks): a named token
        // still has its role there, anything else is ignored as before tokens had roles.
        None if bootstrap.is_none() => Ok(Caller::Anyone),
        None => Err("unknown token (wrong, revoked, or of another cluster): set FLOTILLA_TOKEN to a token \
                     of this cluster"
            .into()),
    }
}

/// Why `caller` may not do what needs `need`.
pub fn forbidden(caller: &Caller, need: Need) -> String {
    let needed = match need.least_role() {
        Role::Admin => "the admin role".to_string(),
        Role::Worker => "a worker credential (role worker or admin)".to_string(),
        least => format!("role {least} or higher"),
    };
    match caller {
        Caller::Token { name, role } => format!("forbidden: token '{name}' has role {role}; this needs {needed}"),
        other => format!("forbidden: {} may not do this; it needs a token with {needed}", other.name()),
    }
}

/// How long a refused request's body may take to arrive before the answer goes anyway.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads (and drops) the body of a request answered without it. An HTTP/1 server that answers
/// while the client is still sending closes the connection under it, and the client sees a
/// reset (a TLS "EOF in violation of protocol") instead of the 401 or 403 it was sent; the
/// fuzzer found that. A body larger than the API accepts anyway, or one that trickles, is
/// not waited for: that connection is closed as before.
async fn drain(request: Request) {
    let body = request.into_body();
    let _ = tokio::time::timeout(DRAIN_TIME, axum::body::to_bytes(body, crate::api::MAX_REQUEST_BODY)).await;
}

/// 401 or 403, as gRPC or JSON as the caller speaks.
async fn refuse(request: Request, code: ApiErrorCode, why: &str) -> Response {
    let grpc = request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        // A gRPC client (a worker, a master) reads the status code, not the body.
        let status = match code {
            ApiErrorCode::Forbidden => tonic::Status::permission_denied(why.to_string()),
            _ => tonic::Status::unauthenticated(why.to_string()),
        };
        return status.into_http();
    }
    drain(request).await;
    crate::api::Failure(ApiError::new(code, why)).into_response()
}

/// Compares without an early exit, so timing does not reveal how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_tokens() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn routes_need_what_the_readme_says() {
        let cases = [
            (Method::GET, "/v1/status", Need::Read),
            (Method::GET, "/v1/jobs/3/results", Need::Read),
            (Method::GET, "/ui/snapshot", Need::Read),
            (Method::GET, "/metrics", Need::Read),
            (Method::POST, "/v1/jobs", Need::Submit),
            (Method::POST, "/v1/jobs/7/cancel", Need::Submit),
            (Method::POST, "/v1/jobs/purge", Need::Operate),
            (Method::PUT, "/v1/scheduling", Need::Operate),
            (Method::PUT, "/v1/events/retention", Need::Operate),
            (Method::POST, "/v1/workers/w1/drain", Need::Operate),
            (Method::POST, "/v1/cluster/leader", Need::Operate),
            (Method::GET, "/v1/autoscale", Need::Read),
            // A policy's commands run on the masters.
            (Method::POST, "/v1/autoscale", Need::Admin),
            (Method::POST, "/v1/autoscale/auto/resume", Need::Operate),
            (Method::DELETE, "/v1/autoscale/auto", Need::Operate),
            (Method::POST, "/v1/cluster/members", Need::Admin),
            (Method::DELETE, "/v1/cluster/members/3", Need::Admin),
            (Method::POST, "/v1/cluster/stand", Need::Admin),
            (Method::GET, "/v1/snapshot", Need::Admin),
            (Method::GET, "/v1/cluster/read-index", Need::Admin),
            (Method::GET, "/v1/tokens", Need::Admin),
            (Method::POST, "/v1/tokens", Need::Admin),
            (Method::DELETE, "/v1/tokens/ci", Need::Admin),
            (Method::POST, "/v1/unknown", Need::Admin),
            (Method::POST, "/flotilla.v1.WorkerService/Session", Need::WorkerSession),
            (Method::POST, "/flotilla.v1.RaftService/Vote", Need::Admin),
        ];
        for (method, path, need) in cases {
            assert_eq!(need_of(&method, path), need, "{method} {path}");
        }
    }
}
