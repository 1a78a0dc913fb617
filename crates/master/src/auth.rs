//! Who may call a master, in front of every route (client API, worker sessions, Raft).
//! A refused request gets 401 and reaches no handler, so it changes nothing.
//!
//! Over TLS the certificate a caller showed (checked against the cluster CA by the listener)
//! says what it is: a master may do everything, a worker may hold a worker session, and Raft
//! is spoken with masters only. Anything else needs the cluster token.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use flotilla_tls::{Connection, Peer, Role};

use flotilla_proto::api::{ApiError, ApiErrorCode};

const RAFT_SERVICE: &str = "/flotilla.v1.RaftService/";
const WORKER_SERVICE: &str = "/flotilla.v1.WorkerService/";

pub async fn require_token(State(token): State<Option<Arc<str>>>, request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<Connection>().map(|c| c.peer);
    let path = request.uri().path();
    match peer {
        Some(Peer::Tls(Some(Role::Master))) => return next.run(request).await,
        Some(Peer::Tls(Some(Role::Worker))) if path.starts_with(WORKER_SERVICE) => return next.run(request).await,
        Some(Peer::Tls(_)) if path.starts_with(RAFT_SERVICE) => {
            return refuse(&request, "Raft calls need a master certificate of this cluster");
        }
        _ => {}
    }
    if let Some(expected) = token.filter(|_| !crate::dashboard::is_public(request.method(), path)) {
        let presented = request
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = presented.is_some_and(|p| constant_time_eq(p.as_bytes(), expected.as_bytes()));
        if !ok {
            return refuse(&request, "missing or wrong cluster token (set FLOTILLA_TOKEN or --token-file)");
        }
    }
    next.run(request).await
}

/// 401, as gRPC or JSON as the caller speaks.
fn refuse(request: &Request, why: &str) -> Response {
    let grpc = request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        // A gRPC client (a worker, a master) reads the status code, not the body.
        return tonic::Status::unauthenticated(why.to_string()).into_http();
    }
    crate::api::Failure(ApiError::new(ApiErrorCode::Unauthorized, why)).into_response()
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
    #[test]
    fn compares_tokens() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"ab"));
    }
}
