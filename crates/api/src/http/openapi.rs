//! The OpenAPI 3.1 document, generated from the handlers' annotations. It is served at
//! `/openapi.json` (the route is here too) and checked in at `docs/openapi.json`
//! (`cargo xtask openapi --check` fails when they differ).

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{access, dto, error, events, health, operations, pools, sessions, workspaces};

/// The API's document.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "berth", description = "Workspace lifecycle engine: HTTP API v1"),
    paths(
        health::healthz, health::readyz, health::metrics, openapi,
        workspaces::create_workspace, workspaces::list_workspaces, workspaces::get_workspace,
        workspaces::delete_workspace, workspaces::start, workspaces::stop, workspaces::restart,
        workspaces::wait, operations::get_operation, operations::list_operations,
        events::events, sessions::launch_session, sessions::list_sessions,
        sessions::stop_session, sessions::session_output, workspaces::main_output,
        workspaces::whoami, access::exec_to_end, access::exec_stream, access::attach,
        access::logs, access::files_out, access::files_in, pools::list_pools, pools::get_pool,
        pools::put_pool, pools::delete_pool,
    ),
    components(schemas(
        error::ErrorBody, error::ErrorDetail, dto::WorkspaceView, dto::OperationView,
        dto::EventView, dto::SessionView, dto::CreateRequest, dto::CreateResponse,
        dto::OpResponse, dto::WaitResponse, dto::SessionRequest, access::ExecBody,
        access::ExecResult, access::ExecStart, access::LogLineView, dto::PoolRequest,
        dto::PoolView, dto::PoolList, dto::PoolMemberView,
    )),
    modifiers(&Bearer, &CommonErrors),
)]
pub struct ApiDoc;

#[derive(Debug)]
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The answers every authenticated route can give besides its own: 401 without a
/// valid token, 403 for a workspace token outside its workspace, 503 while the daemon
/// starts or stops, 504 when a request outlives the daemon's request timeout.
#[derive(Debug)]
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{RefOr, ResponseBuilder, content::ContentBuilder};
        let error = |what: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(what)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build(),
            )
        };
        for (path, item) in &mut openapi.paths.paths {
            if path == "/healthz" || path == "/openapi.json" {
                continue;
            }
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let answers = &mut op.responses.responses;
                for (status, what) in [
                    (
                        "400",
                        "A malformed request: bad JSON, an unknown field, a bad query (`invalid_request`)",
                    ),
                    ("401", "No valid token (`unauthorized`)"),
                    (
                        "403",
                        "A workspace token outside its workspace (`forbidden`)",
                    ),
                    (
                        "503",
                        "Starting, shutting down, or the store or runtime is unavailable",
                    ),
                    (
                        "504",
                        "The request outlived the daemon's request timeout, or a runtime call timed out",
                    ),
                ] {
                    answers
                        .entry(status.to_owned())
                        .or_insert_with(|| error(what));
                }
                if path.starts_with("/v1/") {
                    answers.entry("422".to_owned()).or_insert_with(|| {
                        error("A value the API refuses (`validation_failed`, naming the field)")
                    });
                }
            }
        }
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "health",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document()).into_response()
}

/// The document as pretty JSON with a trailing newline (the form checked in).
pub fn document() -> String {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = ApiDoc::openapi();
        doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
        let mut value = serde_json::to_value(&doc).unwrap_or_default();
        // What utoipa cannot say: an argv has a program first and no NUL anywhere.
        let no_nul = serde_json::json!({"type": "string", "pattern": "^[^\\u0000]*$"});
        let program =
            serde_json::json!({"type": "string", "minLength": 1, "pattern": "^[^\\u0000]*$"});
        for schema in [
            "CreateRequest",
            "PoolRequest",
            "SessionRequest",
            "ExecBody",
            "ExecStart",
        ] {
            let command = &mut value["components"]["schemas"][schema]["properties"]["command"];
            if command.is_object() {
                command["minItems"] = serde_json::json!(1);
                command["prefixItems"] = serde_json::json!([program.clone()]);
                command["items"] = no_nul.clone();
            }
        }
        // ... and the names an environment may have.
        for schema in ["CreateRequest", "PoolRequest", "SessionRequest"] {
            let env = &mut value["components"]["schemas"][schema]["properties"]["env"];
            if env.is_object() {
                env["propertyNames"] = serde_json::json!({"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"});
            }
        }
        let mut text = serde_json::to_string_pretty(&value)
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
        text.push('\n');
        text
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use berth_core::ErrorCode;

    /// Every code is documented with its status in `docs/api.md`, and listed by the
    /// OpenAPI document: a new code cannot ship undocumented.
    #[test]
    fn every_error_code_is_in_docs_api_md_and_the_openapi_document() {
        let api_md = include_str!("../../../../docs/api.md");
        let doc: serde_json::Value = serde_json::from_str(&super::document()).unwrap();
        let listed: Vec<&str> =
            doc["components"]["schemas"]["ErrorDetail"]["properties"]["code"]["enum"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|v| v.as_str())
                .collect();
        for code in ErrorCode::ALL {
            assert!(
                listed.contains(&code.as_str()),
                "{code} is missing from the OpenAPI document"
            );
            let row = format!("| `{}` | {} |", code.as_str(), code.http_status());
            assert!(
                api_md.contains(&row),
                "docs/api.md has no row {row:?} in its code table"
            );
        }
        assert_eq!(
            listed.len(),
            ErrorCode::ALL.len(),
            "the document lists no other code"
        );
    }
}
