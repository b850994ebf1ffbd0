//! `GET /v1/openapi.json`: the HTTP API described by OpenAPI 3.1, generated from the
//! handlers' own annotations and types (utoipa).
//!
//! The `/v1` routes are registered through [`utoipa_axum::router::OpenApiRouter`], so a
//! route and its description are one declaration: a handler cannot be served without
//! being described, nor described at a path it is not served at. The request and
//! response bodies are the Rust types the handlers decode and answer with
//! (`#[derive(ToSchema)]` next to `#[derive(Serialize, Deserialize)]`, so serde's
//! renames, defaults and `deny_unknown_fields` show up as they behave). The query
//! parameters are the extractors the handlers use ([`Stale`], …). Every operation gets
//! a `default` response of the error shape ([`ErrorBody`]), which every error has.
//!
//! CI runs schemathesis against a live node with this document (`node/tests/openapi.rs`).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::Serialize;
use utoipa::openapi::{OpenApi as Document, Ref, RefOr};
use utoipa::{IntoParams, OpenApi, ToResponse, ToSchema};

use crate::error::ApiError;

/// The document's fixed part; the paths come from the routes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "berth",
        description = "The berth HTTP API: IP pools, apps, instances, hosts, deployments, events. \
                       Every node answers; writes go through the Raft leader. See docs/api.md.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(ErrorBody, ErrorDetail), responses(ErrorBody)),
    tags(
        (name = "cluster", description = "Raft membership, snapshots, readiness"),
        (name = "ipam", description = "IP pools and allocations"),
        (name = "apps", description = "Apps, their versions and rollouts"),
        (name = "instances", description = "Instances: listing, logs, exec"),
        (name = "hosts", description = "Hosts and draining"),
        (name = "events", description = "The replicated event log and webhooks"),
        (name = "registers", description = "Small replicated cells with compare-and-set"),
        (name = "tokens", description = "API tokens and their roles (admin, deploy, read-only)"),
    ),
    modifiers(&TokenAuth),
)]
pub struct ApiDoc;

/// The `token` security scheme (`Authorization: Bearer <token>`). Optional on every
/// operation: a cluster without tokens is open (see `server::auth`).
struct TokenAuth;

impl utoipa::Modify for TokenAuth {
    fn modify(&self, doc: &mut Document) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        let mut bearer = Http::new(HttpAuthScheme::Bearer);
        bearer.description = Some(
            "An API token (`berth token create`). Needed once any token exists: writes need role deploy \
             (tokens, membership, pools and hosts: admin); reads need any token only on nodes run with \
             --require-token-for-reads."
                .into(),
        );
        components.add_security_scheme("token", SecurityScheme::Http(bearer));
        doc.security =
            Some(vec![SecurityRequirement::default(), SecurityRequirement::new("token", Vec::<String>::new())]);
    }
}

/// Every error: `{"error": {"code", "message"}}`, with the HTTP status of the kind.
#[derive(Debug, Serialize, ToSchema, ToResponse)]
#[response(description = "An error: the status names its kind (400 a bad request, 404 nothing by that \
                          name, 401 no valid token, 403 the token's role is too small, 409 the state forbids it, \
                          413 too large, 429 over the rate limit, 503 no leader or quorum — \
                          safe to retry with the same Idempotency-Key)")]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable (`app_not_found`, `pool_exhausted`, `no_leader`, …).
    pub code: String,
    /// What is wrong, for a person.
    pub message: String,
}

impl From<&ApiError> for ErrorBody {
    fn from(e: &ApiError) -> Self {
        ErrorBody { error: ErrorDetail { code: e.code.clone(), message: e.message.clone() } }
    }
}

/// `Idempotency-Key`: a write retried with the same key applies once and answers the
/// first outcome (within 15 minutes); the same key on a different request is a 409
/// `idempotency_key_reused`.
#[derive(Debug, IntoParams)]
#[into_params(names("Idempotency-Key"), parameter_in = Header)]
pub struct IdempotencyKey(#[param(min_length = 1, max_length = 128, pattern = "^[!-~]+$")] pub Option<String>);

/// `?stale=true`: answer from this node's replica without asking the leader (faster,
/// possibly behind; a read works during a partition). Default: linearizable.
#[derive(Debug, Clone, Copy, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Stale {
    /// Read this node's replica instead of confirming with the leader (`true`, `1`, or
    /// empty: yes).
    #[param(value_type = Option<String>, pattern = "^(true|false|1|0)?$")]
    pub stale: Option<bool>,
}

impl Stale {
    pub fn get(self) -> bool {
        self.stale.unwrap_or(false)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Stale {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().map(str::to_string);
        Ok(Stale { stale: Some(super::http::flag(&q, "stale")?) })
    }
}

/// The query of `GET /v1/instances`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InstancesQuery {
    /// Only this app's instances.
    pub app: Option<String>,
    /// Read this node's replica instead of confirming with the leader.
    #[param(value_type = Option<String>, pattern = "^(true|false|1|0)?$")]
    pub stale: Option<bool>,
}

/// The query of `GET /v1/instances/{id}/logs`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Keep the stream open and send new output as it comes.
    #[param(value_type = Option<String>, pattern = "^(true|false|1|0)?$")]
    pub follow: Option<bool>,
    /// The last this many lines first (at most 100000), or `all` (default).
    #[param(pattern = "^([0-9]+|all)$")]
    pub tail: Option<String>,
}

/// The query of `GET /v1/events`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only this app's events.
    pub app: Option<String>,
    /// `false`: answer the retained events as a JSON list instead of a stream.
    pub follow: Option<bool>,
    /// Start after this event id (`0`: everything retained; default: now for a stream).
    /// The `Last-Event-ID` header takes precedence.
    pub since: Option<u64>,
}

/// The document as node `config` serves it: the instance bounds are its
/// `--max-instances-per-app`.
pub fn for_node(doc: &Document, config: &berth_cluster_config::ValidConfig) -> serde_json::Value {
    let mut v = serde_json::to_value(doc).expect("the OpenAPI document serializes");
    for schema in ["AppSpec", "ScaleInput"] {
        v["components"]["schemas"][schema]["properties"]["instances"]["maximum"] = config.max_instances_per_app.into();
    }
    v
}

/// Adds the error shape as every operation's `default` response.
pub fn add_error_responses(doc: &mut Document) {
    let error = RefOr::Ref(Ref::from_response_name("ErrorBody"));
    for item in doc.paths.paths.values_mut() {
        for op in [&mut item.get, &mut item.put, &mut item.post, &mut item.delete].into_iter().flatten() {
            op.responses.responses.entry("default".to_string()).or_insert_with(|| error.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::ErrorBody;
    use crate::error::ApiError;

    fn doc() -> Value {
        serde_json::to_value(crate::server::http::openapi()).unwrap()
    }

    fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                out.push((method.clone(), path.clone(), op));
            }
        }
        out
    }

    #[test]
    fn every_operation_has_a_unique_id_a_tag_and_the_error_shape() {
        let doc = doc();
        let ops = operations(&doc);
        assert!(ops.len() >= 35, "{} operations", ops.len());
        let mut ids = BTreeSet::new();
        for (method, path, op) in &ops {
            let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path}: no operationId"));
            assert!(ids.insert(id.to_string()), "operationId {id} used twice");
            assert!(op["tags"].as_array().is_some_and(|t| !t.is_empty()), "{method} {path}: no tag");
            assert_eq!(op["responses"]["default"]["$ref"], "#/components/responses/ErrorBody", "{method} {path}");
            let path_params: Vec<&str> =
                path.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')).collect();
            for p in path_params {
                let declared = op["parameters"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|x| x["name"] == p && x["in"] == "path" && x["required"] == true));
                assert!(declared, "{method} {path}: path parameter {p} not declared");
            }
        }
        for served in
            ["put_app", "scale_app", "create_pool", "allocate", "list_instances", "events", "cancel_deployment"]
        {
            assert!(ids.contains(served), "{served} is missing");
        }
    }

    #[test]
    fn every_reference_resolves() {
        let doc = doc();
        fn walk(v: &Value, doc: &Value) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        let target = r.strip_prefix("#/").unwrap().split('/').fold(doc, |at, k| &at[k]);
                        assert!(!target.is_null(), "{r} does not resolve");
                    }
                    m.values().for_each(|x| walk(x, doc));
                }
                Value::Array(a) => a.iter().for_each(|x| walk(x, doc)),
                _ => {}
            }
        }
        walk(&doc, &doc);
    }

    #[test]
    fn bodies_are_the_handlers_types_with_serdes_rules() {
        let doc = doc();
        let spec = &doc["components"]["schemas"]["AppSpec"];
        assert_eq!(spec["additionalProperties"], false, "deny_unknown_fields shows");
        assert_eq!(spec["required"], serde_json::json!(["id"]), "fields with serde defaults are optional");
        assert!(spec["properties"]["health_check"].is_object());
        let put = &doc["paths"]["/v1/apps/{id}"]["put"];
        assert_eq!(put["requestBody"]["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/AppSpec");
        let err = &doc["components"]["schemas"]["ErrorBody"];
        assert_eq!(err["required"], serde_json::json!(["error"]));
        let states = &doc["components"]["schemas"]["InstanceState"]["enum"];
        assert!(states.as_array().unwrap().contains(&Value::from("lost")), "lowercase renames show: {states}");
    }

    #[test]
    fn the_error_body_is_what_api_errors_answer() {
        let e = ApiError::not_found("app_not_found", "no app web");
        let body = serde_json::to_value(ErrorBody::from(&e)).unwrap();
        assert_eq!(body, serde_json::json!({"error": {"code": "app_not_found", "message": "no app web"}}));
    }
}
