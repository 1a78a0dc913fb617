//! The OpenAPI 3.1 description of `/v1`, derived from the handlers' annotations and the API
//! types (`utoipa`), served at `/v1/openapi.json` and committed as `docs/openapi.json` (a test
//! fails when they differ). Each operation also says which role it needs, read from the same
//! table the masters enforce ([`crate::auth::need_of`]).

use axum::http::Method;
use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi};

use flotilla_proto::api::JobState;

use crate::api;
use crate::autoscale;
use crate::outputs;
use crate::schedules;
use crate::tokens;

/// `?stale=true`: answer from this master's replica without the linearizable barrier.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadParams {
    /// Answer from this master's replica at once (possibly behind the leader).
    pub stale: Option<bool>,
}

/// The query of `GET /v1/jobs`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobListParams {
    /// Jobs per page, 1 to 10,000 (default 1,000).
    pub limit: Option<u64>,
    /// The `next` of the previous page.
    pub before: Option<String>,
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs of this name (exact).
    pub name: Option<String>,
    pub stale: Option<bool>,
}

/// The query of `GET /v1/jobs/{id}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ShowJobParams {
    /// Long poll: answer once the job has finished, or after this long (at most 30,000 ms).
    pub wait_ms: Option<u64>,
    pub stale: Option<bool>,
}

/// The query of `GET /v1/jobs/{id}/results`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ResultsParams {
    /// Skip the tasks before this index.
    pub offset: Option<u64>,
    /// At most this many tasks.
    pub limit: Option<u64>,
    pub stale: Option<bool>,
}

/// The query of `GET /v1/events`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsParams {
    /// Only events after this sequence number.
    pub after: Option<u64>,
    /// At most this many (1 to 10,000; default 1,000).
    pub limit: Option<u64>,
    /// Wait up to this long (at most 30,000 ms) for an event if none is there yet.
    pub wait_ms: Option<u64>,
    pub stale: Option<bool>,
}

/// The query of `GET /v1/jobs/{id}/outputs/{sha256}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OutputParams {
    /// Read from the holder after the first `attempt` ones in service (`job fetch` asks
    /// again this way after a copy failed or did not pass its check).
    pub attempt: Option<u32>,
    pub stale: Option<bool>,
}

/// The query of `GET /v1/jobs/{id}/logs/{task}/live`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LiveLogParams {
    /// `stdout` (the default) or `stderr`.
    pub stream: Option<String>,
    /// Bytes of the stream already read (`next_offset` of the previous answer).
    pub offset: Option<u64>,
}

/// The query of `GET /v1/jobs/{id}/logs/{task}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogParams {
    /// `stdout` (the default) or `stderr`.
    pub stream: Option<String>,
    pub stale: Option<bool>,
}

/// The query of `POST /v1/cluster/stand`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StandParams {
    /// The leader that asks this master to stand (it holds its own elections meanwhile).
    pub leader: Option<u64>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Flotilla",
        description = "The HTTP/JSON API of a Flotilla master. Reads are linearizable unless \
                       `stale=true`; a follower answers writes with 421 naming the leader. Every \
                       error is a JSON `ApiError`.",
        license(name = "Apache-2.0"),
    ),
    paths(
        api::submit,
        api::list_jobs,
        api::show_job,
        api::job_results,
        api::job_result,
        outputs::job_outputs,
        outputs::output_file,
        outputs::task_log,
        outputs::live_log,
        api::cancel_job,
        schedules::list,
        schedules::add,
        schedules::pause,
        schedules::resume,
        schedules::remove,
        autoscale::list,
        autoscale::set,
        autoscale::resume,
        autoscale::remove,
        api::job_retention,
        api::set_job_retention,
        api::purge_jobs,
        api::status,
        api::events,
        api::retention,
        api::set_retention,
        api::scheduling,
        api::set_scheduling,
        api::node,
        api::cluster_members,
        api::add_master,
        api::remove_master,
        api::transfer_leadership,
        api::stand,
        api::read_index,
        api::save_snapshot,
        api::list_workers,
        api::cordon_worker,
        api::drain_worker,
        api::uncordon_worker,
        tokens::create,
        tokens::list,
        tokens::revoke,
        api::metrics,
        openapi_json,
    ),
    modifiers(&Security, &Roles),
)]
struct ApiDoc;

/// The document, as `/v1/openapi.json` serves it.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// This description of the API.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta",
    responses(
        (status = 200, description = "The OpenAPI 3.1 description of /v1", content_type = "application/json"),
        (status = 401, description = "No token, or one the cluster does not know", body = flotilla_proto::api::ApiError),
        (status = 403, description = "The token's role may not do this", body = flotilla_proto::api::ApiError),
    ))]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(document())
}

/// Bearer tokens (`FLOTILLA_TOKEN`, `certs/admin.token`, or one `token create` printed).
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security =
            Some(vec![utoipa::openapi::security::SecurityRequirement::new("token", Vec::<String>::new())]);
    }
}

/// Notes on each operation the least role it needs (`x-flotilla-role`, and in its
/// description), from the table the masters enforce.
struct Roles;

impl Modify for Roles {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            // A path parameter stands for any value: the table matches any segment there.
            let concrete: String =
                path.split('/').map(|s| if s.starts_with('{') { "x" } else { s }).collect::<Vec<_>>().join("/");
            let operations = [
                (Method::GET, item.get.as_mut()),
                (Method::POST, item.post.as_mut()),
                (Method::PUT, item.put.as_mut()),
                (Method::DELETE, item.delete.as_mut()),
            ];
            for (method, operation) in operations {
                let Some(operation) = operation else { continue };
                let role = crate::auth::need_of(&method, &concrete).least_role();
                let public = crate::auth::is_public(&method, &concrete);
                let note = if public {
                    "Needs no token (health checks ask it).".to_string()
                } else {
                    format!("Needs a token of role `{}` or higher.", role.name())
                };
                operation.description =
                    Some(operation.description.take().map_or(note.clone(), |d| format!("{d}\n\n{note}")));
                let extensions = operation.extensions.get_or_insert_with(Default::default);
                let role = if public { "none" } else { role.name() };
                extensions.insert("x-flotilla-role".to_string(), serde_json::Value::from(role));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
    }

    /// Invariant: `docs/openapi.json` is what the masters serve. `FLOTILLA_BLESS=1` rewrites
    /// it after an API change (review the diff).
    #[test]
    fn the_committed_description_is_the_generated_one() {
        let generated = document().to_pretty_json().expect("the document renders") + "\n";
        if std::env::var_os("FLOTILLA_BLESS").is_some() {
            std::fs::write(committed(), &generated).expect("write docs/openapi.json");
        }
        let on_file = std::fs::read_to_string(committed()).unwrap_or_default();
        assert!(
            on_file == generated,
            "docs/openapi.json differs from the API's description: run \
             FLOTILLA_BLESS=1 cargo test -p flotilla-master openapi, and review the diff"
        );
    }

    /// Invariant: every route of the API router is described, each operation names the role
    /// it needs, and every 2xx body it names is a defined schema.
    #[test]
    fn every_route_is_described_with_its_role() {
        let doc = serde_json::to_value(document()).expect("JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().expect("paths");
        let routes = [
            "/v1/jobs",
            "/v1/jobs/retention",
            "/v1/jobs/purge",
            "/v1/jobs/{id}",
            "/v1/jobs/{id}/results",
            "/v1/jobs/{id}/result",
            "/v1/jobs/{id}/outputs",
            "/v1/jobs/{id}/outputs/{sha256}",
            "/v1/jobs/{id}/logs/{task}",
            "/v1/jobs/{id}/logs/{task}/live",
            "/v1/jobs/{id}/cancel",
            "/v1/schedules",
            "/v1/schedules/{name}",
            "/v1/schedules/{name}/pause",
            "/v1/schedules/{name}/resume",
            "/v1/autoscale",
            "/v1/autoscale/{pool}",
            "/v1/autoscale/{pool}/resume",
            "/v1/status",
            "/v1/events",
            "/v1/events/retention",
            "/v1/scheduling",
            "/v1/node",
            "/v1/cluster/members",
            "/v1/cluster/members/{id}",
            "/v1/cluster/leader",
            "/v1/cluster/stand",
            "/v1/cluster/read-index",
            "/v1/snapshot",
            "/v1/workers",
            "/v1/workers/{name}/cordon",
            "/v1/workers/{name}/drain",
            "/v1/workers/{name}/uncordon",
            "/v1/tokens",
            "/v1/tokens/{name}",
            "/v1/openapi.json",
            "/metrics",
        ];
        let mut described: Vec<&str> = paths.keys().map(String::as_str).collect();
        described.sort_unstable();
        let mut expected = routes.to_vec();
        expected.sort_unstable();
        assert_eq!(described, expected);
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        for (path, item) in paths {
            for (method, operation) in item.as_object().expect("item") {
                let role = operation["x-flotilla-role"].as_str().unwrap_or_default();
                assert!(!role.is_empty(), "{method} {path} names no role");
                let body = &operation["responses"]["200"]["content"]["application/json"]["schema"];
                let reference = body["$ref"].as_str().or_else(|| body["items"]["$ref"].as_str());
                if let Some(name) = reference.and_then(|r| r.strip_prefix("#/components/schemas/")) {
                    assert!(schemas.contains_key(name), "{method} {path}: no schema {name}");
                }
            }
        }
        assert_eq!(paths["/v1/jobs"]["post"]["x-flotilla-role"], "submit");
        assert_eq!(paths["/v1/tokens"]["get"]["x-flotilla-role"], "admin");
        assert_eq!(paths["/v1/workers/{name}/drain"]["post"]["x-flotilla-role"], "operator");
        assert_eq!(paths["/v1/status"]["get"]["x-flotilla-role"], "read");
    }
}
