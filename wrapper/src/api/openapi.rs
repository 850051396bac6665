//! `GET /api/openapi.json`: the OpenAPI document, generated from [`ROUTES`]. A test sends a
//! request to every entry of the table and fails if the router does not know it, so the
//! document cannot list a route that does not exist.

use axum::{Json, Router, routing::get};
use serde_json::{Value, json};

use crate::startup::AppState;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Anyone.
    Public,
    /// A signed-in user (session cookie or Bearer).
    User,
}

/// Every route: method, path, summary, auth.
pub const ROUTES: &[(&str, &str, &str, Auth)] = &[
    ("get", "/health", "Database and Redis health", Auth::Public),
    ("get", "/metrics", "Prometheus metrics", Auth::Public),
    ("get", "/api/openapi.json", "This document", Auth::Public),
    (
        "get",
        "/.well-known/jwks.json",
        "Public keys that verify the wrapper's tokens",
        Auth::Public,
    ),
    (
        "get",
        "/",
        "The tenant's start page (HTML): its apps when signed in, else the sign-in page",
        Auth::Public,
    ),
    (
        "get",
        "/auth/login",
        "The host's tenant's sign-in page (HTML; ?return_to=a path on this host)",
        Auth::Public,
    ),
    (
        "post",
        "/auth/login",
        "Sign in with a local account (JSON, or the sign-in page's form); sets the session cookie",
        Auth::Public,
    ),
    (
        "post",
        "/auth/logout",
        "Clear the session cookie for every app (the dashboards' form is redirected to sign-in)",
        Auth::Public,
    ),
    (
        "get",
        "/auth/oidc/login",
        "Start signing in with an OpenID Connect provider (?provider=<id>&return_to=)",
        Auth::Public,
    ),
    (
        "get",
        "/auth/oidc/{provider}/start",
        "Start signing in with an OpenID Connect provider (redirects to it)",
        Auth::Public,
    ),
    (
        "get",
        "/auth/oidc/{provider}/callback",
        "Where the provider returns the browser (code, state)",
        Auth::Public,
    ),
    ("get", "/auth/me", "The signed-in user", Auth::User),
    (
        "post",
        "/auth/service-token",
        "Exchange app client credentials for a service token",
        Auth::Public,
    ),
    (
        "get",
        "/api/domains/{host}",
        "Tenant configuration for a host (domain cache)",
        Auth::Public,
    ),
    (
        "get",
        "/api/tenants",
        "List tenants (platform admins)",
        Auth::User,
    ),
    (
        "post",
        "/api/tenants",
        "Create a tenant (platform admins)",
        Auth::User,
    ),
    (
        "get",
        "/api/tenants/{tenant_id}",
        "Read a tenant",
        Auth::User,
    ),
    (
        "patch",
        "/api/tenants/{tenant_id}",
        "Update a tenant",
        Auth::User,
    ),
    (
        "delete",
        "/api/tenants/{tenant_id}",
        "Archive a tenant (platform admins)",
        Auth::User,
    ),
    (
        "get",
        "/api/tenants/{tenant_id}/users",
        "List users (paged)",
        Auth::User,
    ),
    (
        "post",
        "/api/tenants/{tenant_id}/users",
        "Create a user (tenant admins)",
        Auth::User,
    ),
    (
        "get",
        "/api/tenants/{tenant_id}/users/{user_id}",
        "Read a user",
        Auth::User,
    ),
    (
        "patch",
        "/api/tenants/{tenant_id}/users/{user_id}",
        "Update a user",
        Auth::User,
    ),
    (
        "delete",
        "/api/tenants/{tenant_id}/users/{user_id}",
        "Soft-delete a user",
        Auth::User,
    ),
    (
        "get",
        "/api/tenants/{tenant_id}/roles",
        "List roles (paged)",
        Auth::User,
    ),
    (
        "post",
        "/api/tenants/{tenant_id}/roles",
        "Create a role",
        Auth::User,
    ),
    (
        "get",
        "/api/tenants/{tenant_id}/roles/{role_id}",
        "Read a role",
        Auth::User,
    ),
    (
        "patch",
        "/api/tenants/{tenant_id}/roles/{role_id}",
        "Update a role",
        Auth::User,
    ),
    (
        "delete",
        "/api/tenants/{tenant_id}/roles/{role_id}",
        "Delete a role",
        Auth::User,
    ),
    (
        "get",
        "/api/tenants/{tenant_id}/memberships",
        "List memberships (paged)",
        Auth::User,
    ),
    (
        "post",
        "/api/tenants/{tenant_id}/memberships",
        "Grant a role to a user",
        Auth::User,
    ),
    (
        "delete",
        "/api/tenants/{tenant_id}/memberships/{membership_id}",
        "Revoke a membership",
        Auth::User,
    ),
    (
        "get",
        "/api/tenants/{tenant_id}/settings",
        "Read the tenant's settings",
        Auth::User,
    ),
    (
        "put",
        "/api/tenants/{tenant_id}/settings",
        "Replace the tenant's settings",
        Auth::User,
    ),
    (
        "get",
        "/api/tenants/{tenant_id}/audit",
        "The tenant's audit log (tenant admins)",
        Auth::User,
    ),
];

/// The OpenAPI route.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/openapi.json", get(|| async { Json(document()) }))
}

/// The OpenAPI 3.1 document.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for (method, path, summary, auth) in ROUTES {
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut op = json!({
            "summary": summary,
            "parameters": params,
            "responses": {
                "200": {"description": "OK"},
                "400": {"$ref": "#/components/responses/Problem"},
                "401": {"$ref": "#/components/responses/Problem"},
                "403": {"$ref": "#/components/responses/Problem"},
                "404": {"$ref": "#/components/responses/Problem"},
            },
        });
        if *auth == Auth::User {
            op["security"] = json!([{"bearer": []}, {"cookie": []}]);
        }
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[*method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Tenantsync wrapper", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": crate::auth::SESSION_COOKIE},
            },
            "responses": {
                "Problem": {
                    "description": "RFC 7807 problem",
                    "content": {"application/problem+json": {"schema": {
                        "type": "object",
                        "properties": {
                            "type": {"type": "string"}, "title": {"type": "string"},
                            "status": {"type": "integer"}, "detail": {"type": "string"},
                            "field": {"type": "string"},
                        },
                    }}},
                },
            },
        },
    })
}
