//! `GET /api/openapi.json`: the OpenAPI 3.1 document, generated from the handlers themselves;
//! `GET /api/asyncapi.json`: the AsyncAPI 3.0 document of the event streams, generated from the
//! contract's types (`sync_contract::asyncapi`).
//!
//! Every route is registered through `utoipa_axum::OpenApiRouter::routes`, which takes the
//! method, path, parameters, request body and success responses from the handler's
//! `#[utoipa::path]` and its types (`ToSchema`, `IntoParams`), so a served route is always in
//! the document. What every operation shares is added here once: the problem responses (each
//! refusal of the API is `application/problem+json`, from any layer), and the security schemes
//! (a Bearer token or the session cookie) — required everywhere except on operations declared
//! `security(())`, which are public.

use std::sync::OnceLock;

use axum::Json;
use serde_json::{Value, json};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::state::AppState;

/// The OpenAPI route.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(serve))
        .routes(routes!(serve_asyncapi))
}

/// The event contract: the streams, one message per event type with its JSON Schema.
#[utoipa::path(get, path = "/api/asyncapi.json", tag = "meta", security(()),
    responses((status = 200, description = "The AsyncAPI 3.0 document of the event streams", body = Value)))]
async fn serve_asyncapi() -> Json<Value> {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    Json(
        DOCUMENT
            .get_or_init(sync_contract::asyncapi::document)
            .clone(),
    )
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "meta", security(()),
    responses((status = 200, description = "This OpenAPI document", body = Value)))]
async fn serve() -> Json<Value> {
    Json(document().clone())
}

/// The statuses any operation may refuse with, and why.
const REFUSALS: &[(u16, &str)] = &[
    (
        400,
        "A field, the path or the query is invalid (`field` names it); nothing was written",
    ),
    (401, "No valid session or token"),
    (
        403,
        "Not allowed for this caller (another tenant, not an admin, a forged browser request)",
    ),
    (404, "Not found, or not visible to this caller"),
    (405, "Method not allowed on this path"),
    (408, "The request took longer than the server's timeout"),
    (
        409,
        "Conflicts with existing state (a duplicate, a taken domain, the tenant's last admin), or a per-tenant limit is reached (`limit` names its setting)",
    ),
    (413, "The body is larger than the limit"),
    (415, "The body is not JSON"),
    (429, "Too many attempts; retry after `Retry-After` seconds"),
    (500, "An internal error; the server log has the details"),
    (503, "A dependency does not answer; retry later"),
];

/// The document (built once: it depends only on the code).
pub fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| finish(super::router().into_openapi()))
}

fn finish(api: utoipa::openapi::OpenApi) -> Value {
    let mut doc = serde_json::to_value(api).unwrap_or_else(|_| json!({}));
    doc["openapi"] = json!("3.1.0");
    doc["info"] = json!({
        "title": "Tenantsync wrapper",
        "version": env!("CARGO_PKG_VERSION"),
        "description": "Identity, tenants and credits. Every refusal is application/problem+json.",
    });
    doc["security"] = json!([{"bearer": []}, {"cookie": []}]);
    let components = &mut doc["components"];
    components["securitySchemes"] = json!({
        "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
        "cookie": {"type": "apiKey", "in": "cookie", "name": crate::auth::SESSION_COOKIE},
    });
    components["schemas"]["Problem"] = json!({
        "type": "object",
        "description": "RFC 7807 problem details",
        "required": ["type", "title", "status"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "field": {"type": "string", "description": "The field at fault, for 400"},
            "feature": {"type": "string", "description": "The feature the tenant's plan lacks, for 403 to an app"},
            "limit": {"type": "string", "description": "The setting holding the limit reached, for 409"},
            "max": {"type": "integer", "description": "That limit"},
            "errors": {"type": "array", "items": {"type": "object"}},
        },
    });
    for (status, why) in REFUSALS {
        let problem = json!({"schema": {"$ref": "#/components/schemas/Problem"}});
        components["responses"][format!("Problem{status}")] = json!({
            "description": why,
            "content": {"application/problem+json": problem},
        });
        // Browser flows (pages, sign-in, OpenID Connect) refuse with an HTML page instead.
        components["responses"][format!("PageProblem{status}")] = json!({
            "description": why,
            "content": {
                "application/problem+json": problem,
                "text/html": {"schema": {"type": "string"}},
            },
        });
    }
    if let Some(paths) = doc["paths"].as_object_mut() {
        for operations in paths.values_mut().filter_map(Value::as_object_mut) {
            for operation in operations.values_mut().filter_map(Value::as_object_mut) {
                // Handler names repeat across resources (`update`): qualify them by tag.
                let tag = operation["tags"][0].as_str().unwrap_or("api").to_owned();
                if let Some(id) = operation.get_mut("operationId") {
                    *id = json!(format!("{tag}.{}", id.as_str().unwrap_or_default()));
                }
                let responses = operation
                    .entry("responses")
                    .or_insert_with(|| json!({}))
                    .as_object_mut();
                if let Some(responses) = responses {
                    let browser = responses.iter().any(|(status, response)| {
                        status == "303" || !response["content"]["text/html"].is_null()
                    });
                    let kind = if browser { "PageProblem" } else { "Problem" };
                    for (status, _) in REFUSALS {
                        responses.entry(status.to_string()).or_insert_with(
                            || json!({"$ref": format!("#/components/responses/{kind}{status}")}),
                        );
                    }
                }
            }
        }
    }
    doc
}

/// Every (method, path) the document lists, e.g. `("get", "/api/tenants/{tenant_id}")`.
pub fn operations() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, ops) in document()["paths"].as_object().into_iter().flatten() {
        for method in ops.as_object().into_iter().flatten().map(|(m, _)| m) {
            out.push((method.clone(), path.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, path::Path};

    /// Every type deriving `ToSchema` in `dir`'s Rust files, by the name it takes in the
    /// document (`#[schema(as = …)]` or its own), with where it is.
    fn schema_names(dir: &Path, out: &mut BTreeMap<String, Vec<String>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                schema_names(&path, out);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let mut attrs = String::new();
            for line in text.lines().map(str::trim) {
                if line.starts_with("#[") || (!attrs.is_empty() && line.starts_with("//")) {
                    attrs.push_str(line);
                    continue;
                }
                let item = line
                    .trim_start_matches("pub(crate) ")
                    .trim_start_matches("pub ");
                let name = item
                    .strip_prefix("struct ")
                    .or_else(|| item.strip_prefix("enum "))
                    .map(|rest| {
                        rest.split(|c: char| !c.is_alphanumeric() && c != '_')
                            .next()
                            .unwrap_or_default()
                            .to_owned()
                    });
                if let Some(name) = name
                    && attrs.contains("ToSchema")
                {
                    let renamed = attrs.split("schema(as = ").nth(1).map(|r| {
                        r.split([')', ','])
                            .next()
                            .unwrap_or_default()
                            .trim()
                            .to_owned()
                    });
                    out.entry(renamed.unwrap_or(name))
                        .or_default()
                        .push(path.display().to_string());
                }
                attrs.clear();
            }
        }
    }

    /// Two types of one name both in the document would be one schema: the later registration
    /// silently replaces the other (a membership's `Grant` was once replaced by a credit grant's,
    /// and only the fuzzer noticed). Every schema type needs a name of its own.
    #[test]
    fn schema_names_are_unique() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut names = BTreeMap::new();
        for dir in ["src", "../sync-sdk/contract/src", "../sync-sdk/web/src"] {
            schema_names(&root.join(dir), &mut names);
        }
        assert!(
            names.len() > 40,
            "the scan finds the schema types: {names:?}"
        );
        let repeated: Vec<_> = names.iter().filter(|(_, at)| at.len() > 1).collect();
        assert!(repeated.is_empty(), "schema names used twice: {repeated:?}");
    }
}
