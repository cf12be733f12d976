//! The OpenAPI 3 document of the REST APIs, generated from the handlers' `#[utoipa::path]`
//! attributes and the types' `ToSchema` derives, served at `/openapi.json`.
//!
//! Adding a route: put `#[utoipa::path(...)]` on its handler (method, path, tag, request body,
//! responses; add [`super::keys_router::CommonErrors`] for the 401/403/429/500 every
//! authenticated route can give) and list the handler in [`ApiDoc`]'s `paths(...)` (and any new
//! schema not reachable from a path in `components(schemas(...))`). The tests check that the
//! document lists the routes.

use std::sync::LazyLock;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::ErrorBody;
use super::keys::Role;
use super::keys_router;

/// Where the document is served.
pub const OPENAPI_PATH: &str = "/openapi.json";

/// The document's root: every REST route of the apiserver and the security schemes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Ocellus REST APIs",
        description = "REST APIs over Ocellus resources. Authenticate with an API key (`ul_` followed by 40 hex \
            characters) as `Authorization: Bearer <key>` (or `Token <key>`), HTTP Basic with the key as password, \
            or the `api_key` query parameter. Each key acts in one namespace with one role (viewer, editor, admin). \
            Rate-limited responses carry `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`; a 429 \
            also `Retry-After` (seconds). Errors are `{\"error\": \"...\", \"code\": \"...\"}` (Roboflow routes: plain text)."
    ),
    paths(
        keys_router::create_key,
        keys_router::list_keys,
        keys_router::revoke_key_by_query,
        keys_router::revoke_key,
        crate::ultralytics::account_summary,
        crate::ultralytics::datasets::list_own,
        crate::ultralytics::datasets::create,
        crate::ultralytics::datasets::ingest_by_id,
        crate::ultralytics::datasets::list_or_retrieve_by_id,
        crate::ultralytics::datasets::delete_by_id,
        crate::ultralytics::datasets::retrieve,
        crate::ultralytics::datasets::delete,
        crate::ultralytics::datasets::ingest,
        crate::ultralytics::datasets::export,
        crate::ultralytics::datasets::class_stats,
        crate::ultralytics::upload::signed_url,
        crate::ultralytics::upload::complete,
        crate::ultralytics::deployments::list,
        crate::ultralytics::deployments::list_own,
        crate::ultralytics::deployments::create_by_model_id,
        crate::ultralytics::deployments::predict_by_model,
        crate::ultralytics::deployments::retrieve,
        crate::ultralytics::deployments::predict,
        crate::ultralytics::deployments::create,
        crate::ultralytics::deployments::update,
        crate::ultralytics::deployments::delete,
        crate::ultralytics::deployments::health,
        crate::ultralytics::deployments::logs,
        crate::ultralytics::projects::create,
        crate::ultralytics::projects::list,
        crate::ultralytics::projects::retrieve,
        crate::ultralytics::projects::delete,
        crate::ultralytics::models::create,
        crate::ultralytics::models::list,
        crate::ultralytics::models::retrieve,
        crate::ultralytics::models::delete,
        crate::ultralytics::models::start_training,
        crate::ultralytics::models::training,
        crate::ultralytics::models::cancel_training,
        crate::ultralytics::models::files,
        crate::ultralytics::models::create_export,
        crate::ultralytics::models::list_exports,
        crate::ultralytics::models::retrieve_export,
        crate::ultralytics::models::delete_export,
        crate::roboflow::add,
        crate::roboflow::list,
        crate::roboflow::retrieve,
        crate::roboflow::get_log,
        crate::roboflow::pause,
        crate::roboflow::resume,
        crate::roboflow::delete,
        crate::roboflow::machine_types,
        crate::label_studio::list,
        crate::label_studio::create,
        crate::label_studio::retrieve,
        crate::label_studio::update,
        crate::label_studio::delete,
        crate::label_studio::versions,
        crate::label_studio::train,
    ),
    components(schemas(ErrorBody, Role)),
    modifiers(&SecuritySchemes),
    security(("bearer" = []), ("basic" = []), ("api_key" = [])),
    tags(
        (name = "api-keys", description = "API keys of the caller's namespace (admin role)"),
        (name = "ultralytics", description = "The Ultralytics Platform API: the workspace (`owner`) is the key's namespace"),
        (name = "roboflow", description = "Roboflow dedicated deployments (`DEDICATED_DEPLOYMENT_URL` = `<apiserver>/api/roboflow`): \
            ModelDeployments of the key's namespace; the key as `api_key` in the query or JSON body; errors are plain text"),
        (name = "label-studio", description = "Label Studio's ML backends (`/api/ml`, `Authorization: Token <key>`): \
            the ModelDeployments of the key's namespace; errors are `{\"detail\": \"...\"}`")
    )
)]
pub struct ApiDoc;

/// Adds the three ways to present a key as security schemes.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut bearer = Http::new(HttpAuthScheme::Bearer);
        bearer.description = Some("The API key; `Authorization: Token <key>` is accepted too.".into());
        components.add_security_scheme("bearer", SecurityScheme::Http(bearer));
        let mut basic = Http::new(HttpAuthScheme::Basic);
        basic.description = Some("Any user name, the API key as password.".into());
        components.add_security_scheme("basic", SecurityScheme::Http(basic));
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description("api_key", "The API key."))),
        );
    }
}

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

static JSON: LazyLock<String> =
    LazyLock::new(|| document().to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}")));

/// `GET /openapi.json`, unauthenticated (it describes routes, holds no data).
pub fn routes() -> Router {
    Router::new().route(
        OPENAPI_PATH,
        get(|| async { ([(header::CONTENT_TYPE, "application/json")], JSON.as_str()).into_response() }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_lists_the_key_routes_with_their_errors_and_security() {
        let doc: serde_json::Value = serde_json::from_str(&JSON).expect("json");
        assert!(doc["openapi"].as_str().expect("version").starts_with("3."), "{}", doc["openapi"]);
        let keys = &doc["paths"]["/api/api-keys"];
        for method in ["get", "post", "delete"] {
            assert!(keys.get(method).is_some(), "{method} /api/api-keys missing: {keys}");
        }
        assert!(doc["paths"]["/api/api-keys/{keyId}"].get("delete").is_some());
        let post = &keys["post"];
        assert!(post["responses"].get("201").is_some());
        for code in ["400", "401", "403", "429", "500"] {
            assert!(post["responses"].get(code).is_some(), "POST lacks {code}: {post}");
        }
        assert!(keys["delete"]["parameters"].to_string().contains("keyId"));
        let schemas = &doc["components"]["schemas"];
        for s in ["ErrorBody", "CreateKeyRequest", "CreatedKey", "KeyList", "KeySummary", "Role"] {
            assert!(schemas.get(s).is_some(), "schema {s} missing");
        }
        assert!(schemas["ErrorBody"]["properties"].get("error").is_some());
        let sec = &doc["components"]["securitySchemes"];
        assert_eq!(sec["bearer"]["scheme"], "bearer");
        assert_eq!(sec["basic"]["scheme"], "basic");
        assert_eq!(sec["api_key"]["in"], "query");
        assert_eq!(sec["api_key"]["name"], "api_key");
        for (path, method) in [
            ("/api/account/summary", "get"),
            ("/api/datasets", "post"),
            ("/api/datasets/{owner}/{dataset}", "get"),
            ("/api/datasets/{owner}/{dataset}/ingest", "post"),
            ("/api/upload/signed-url", "post"),
            ("/api/upload/complete", "post"),
            ("/api/deployments/{owner}/{deployment}", "get"),
            ("/api/deployments/{owner}/{deployment}/predict", "post"),
            ("/api/roboflow/add", "post"),
            ("/api/roboflow/get_log", "get"),
            ("/api/roboflow/machine_types", "get"),
        ] {
            assert!(doc["paths"][path].get(method).is_some(), "{method} {path} missing");
        }
        assert!(schemas["DatasetItem"]["properties"].get("_id").is_some(), "both key sets");
    }
}
