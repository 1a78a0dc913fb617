//! The cluster token check, in front of every route (client API, worker sessions, Raft).
//! A request without the right token gets 401 and reaches no handler, so it changes nothing.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use flotilla_proto::api::{ApiError, ApiErrorCode};

pub async fn require_token(State(token): State<Option<Arc<str>>>, request: Request, next: Next) -> Response {
    if let Some(expected) = token.filter(|_| !crate::dashboard::is_public(request.method(), request.uri().path())) {
        let presented = request
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = presented.is_some_and(|p| constant_time_eq(p.as_bytes(), expected.as_bytes()));
        if !ok {
            let grpc = request
                .headers()
                .get(axum::http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
            if grpc {
                // A gRPC client (a worker, a master) reads the status code, not the body.
                return tonic::Status::unauthenticated("missing or wrong cluster token").into_http();
            }
            let body = ApiError::new(
                ApiErrorCode::Unauthorized,
                "missing or wrong cluster token (set FLOTILLA_TOKEN or --token-file)",
            );
            return crate::api::Failure(body).into_response();
        }
    }
    next.run(request).await
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
