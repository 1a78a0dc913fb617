//! Flotilla's wire formats, shared by masters, workers and clients.
//!
//! - [`grpc`]: generated tonic stubs for the internal services (Raft between masters, worker
//!   sessions). Their payloads are [`codec`]-encoded serde types.
//! - [`wire`]: messages of a worker session stream.
//! - [`api`]: the HTTP/JSON client API under `/v1/`.

pub mod api;
pub mod codec;
pub mod exposition;
pub mod time;
pub mod wire;

#[allow(clippy::all, missing_docs)]
pub mod grpc {
    tonic::include_proto!("flotilla.v1");
}

/// Header carrying the cluster token on every request (HTTP and gRPC).
pub const AUTH_HEADER: &str = "authorization";

/// Value of [`AUTH_HEADER`] for a token.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}
