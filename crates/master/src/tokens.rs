//! The token API (`/v1/tokens`, admins only, see [`crate::auth`]): create, list and revoke
//! named tokens. A new token is drawn here and shown once; only its hash is proposed.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::{Extension, Json};

use flotilla_core::access::{valid_name, AccessRefusal, TokenHash, BOOTSTRAP};
use flotilla_core::{Command, Refusal, Response as Applied};
use flotilla_proto::api::{ApiError, ApiErrorCode, CreateToken, TokenCreated, TokenRevoked, TokenView};

use crate::api::{bad_request, failure, from_propose, read_barrier, refused, unexpected, Failure, Params};
use crate::auth::Caller;
use crate::node::Master;
use crate::proposer::ProposeError;
use crate::releases::NotUpgraded;

#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body(content = CreateToken, content_type = "application/json"), responses((status = 200, description = "Done", body = TokenCreated), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError), (status = 409, description = "Does not fit the current state, or needs every voter upgraded", body = ApiError), (status = 408, description = "The body did not arrive in time", body = ApiError), (status = 413, description = "The body is larger than 1 MiB", body = ApiError)))]
pub async fn create(
    State(master): State<Arc<Master>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<TokenCreated>, Failure> {
    let request: CreateToken =
        serde_json::from_slice(&body).map_err(|e| bad_request(format!("invalid token request: {e}")))?;
    if !valid_name(&request.name) {
        return Err(refused(Refusal::Access(AccessRefusal::BadName(request.name))));
    }
    let token = flotilla_tls::authority::new_token().map_err(|e| failure(ApiErrorCode::Internal, e.to_string()))?;
    let command = Command::CreateToken {
        name: request.name.clone(),
        role: request.role,
        hash: TokenHash(flotilla_tls::authority::hash_token(&token)),
        by: caller.name().to_string(),
    };
    match propose_gated(&master, command).await.map_err(|e| from_propose(&master, e))? {
        Applied::TokenCreated => {
            tracing::info!(name = %request.name, role = %request.role, by = caller.name(), "token created");
            Ok(Json(TokenCreated { name: request.name, role: request.role, token }))
        }
        Applied::Invalid { reason } => Err(refused(reason)),
        other => Err(unexpected(other)),
    }
}

#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", params(crate::openapi::ReadParams), responses((status = 200, description = "Done", body = Vec<TokenView>), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError)))]
pub async fn list(State(master): State<Arc<Master>>, Query(q): Params) -> Result<Json<Vec<TokenView>>, Failure> {
    read_barrier(&master, &q).await?;
    let data = master.shared.read();
    let access = data.state.access();
    let bootstrap = (master.config.token.is_some() && !access.bootstrap_revoked()).then(|| TokenView {
        name: BOOTSTRAP.to_string(),
        role: flotilla_core::access::Role::Admin,
        created_ms: None,
        created_by: None,
        bootstrap: true,
    });
    let named = access.tokens().map(|(name, c)| TokenView {
        name: name.to_string(),
        role: c.role,
        created_ms: Some(c.created_ms),
        created_by: Some(c.created_by.clone()),
        bootstrap: false,
    });
    Ok(Json(bootstrap.into_iter().chain(named).collect()))
}

#[utoipa::path(delete, path = "/v1/tokens/{name}", tag = "tokens", params(("name" = String, Path, description = "The token's name, or bootstrap")), responses((status = 200, description = "Done", body = TokenRevoked), (status = 400, description = "Malformed or refused request", body = ApiError), (status = 401, description = "No token, or one the cluster does not know", body = ApiError), (status = 403, description = "The token's role may not do this", body = ApiError), (status = 421, description = "A follower: the leader is named", body = ApiError), (status = 503, description = "No leader, or the master cannot serve now", body = ApiError), (status = 409, description = "Does not fit the current state, or needs every voter upgraded", body = ApiError), (status = 408, description = "The body did not arrive in time", body = ApiError), (status = 413, description = "The body is larger than 1 MiB", body = ApiError), (status = 404, description = "No such token", body = ApiError)))]
pub async fn revoke(
    State(master): State<Arc<Master>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<TokenRevoked>, Failure> {
    if name == BOOTSTRAP && master.identity.is_none() {
        // Without certificates the masters (Raft) and workers prove themselves with it.
        return Err(failure(
            ApiErrorCode::Conflict,
            "this cluster runs without TLS, where masters and workers authenticate with the bootstrap token: \
             move it to TLS (--certs) before revoking that token",
        ));
    }
    match propose_gated(&master, Command::RevokeToken { name: name.clone() }).await {
        Ok(Applied::TokenRevoked { role }) => {
            tracing::info!(%name, %role, by = caller.name(), "token revoked");
            Ok(Json(TokenRevoked { name, role }))
        }
        Ok(Applied::Invalid { reason }) => Err(refused(reason)),
        Ok(other) => Err(unexpected(other)),
        Err(e) => Err(from_propose(&master, e)),
    }
}

/// Proposes a command of a gated feature. Held back only because a voter has not reported its
/// release yet (just after a start or an election), it asks the voters and tries once more.
async fn propose_gated(master: &Arc<Master>, command: Command) -> Result<Applied, ProposeError> {
    match master.proposer.propose_one(command.clone()).await {
        Err(ProposeError::NotUpgraded(NotUpgraded { oldest: None, .. })) => {
            crate::links::ask_releases(master).await;
            master.proposer.propose_one(command).await
        }
        other => other,
    }
}
