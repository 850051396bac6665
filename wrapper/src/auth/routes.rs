//! `/auth/*` and `/.well-known/jwks.json`: sign-in for local accounts, sign-out, the current
//! user, service tokens for apps, and the public keys.

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::json;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    Caller,
    session::{check_password, issue, session_token, set_cookie},
};
use crate::identity::keys::TokenKind;
use crate::{
    audit,
    context::Ctx,
    error::{ApiError, ApiResult},
    state::AppState,
};

/// The auth routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(super::pages::portal))
        .routes(routes!(super::pages::login_page, login))
        .routes(routes!(logout))
        .routes(routes!(me))
        .routes(routes!(service_token))
        .routes(routes!(jwks))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct LoginRequest {
    email: String,
    password: String,
    /// Subdomain or id of the tenant; when absent, the Host header's subdomain, else platform
    /// accounts.
    tenant: Option<String>,
}

/// `POST /auth/login`: JSON for API clients (the token in the body and the cookie), or the
/// sign-in page's form (the cookie, then a redirect back to where the user started).
#[utoipa::path(post, path = "/auth/login", tag = "auth", security(()), request_body(content(( LoginRequest = "application/json"), (super::pages::LoginForm = "application/x-www-form-urlencoded")), description = "JSON for API clients; the sign-in page posts the form"), responses((status = 200, description = "Signed in: the token (JSON); the session cookie is set", body = Value), (status = 303, description = "Signed in from the form: back to return_to"), (status = 200, description = "The sign-in page again, with the reason", body = String, content_type = "text/html")))]
async fn login(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    if super::pages::is_form(&headers) {
        return Ok(super::pages::login_form(&state, &ctx, &headers, &body).await);
    }
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::invalid("body", e.to_string()))?;
    let req: LoginRequest = crate::extract::typed_body(value)?;
    let email = crate::validate::email("email", &req.email)?;
    let tenant_id = match req.tenant.as_deref() {
        Some(t) => Some(
            state
                .domains
                .resolve_tenant_ref(&state.db, t)
                .await?
                .ok_or(ApiError::invalid("tenant", "no such tenant"))?,
        ),
        None => super::pages::sign_in_scope(&state, &headers).await?.1,
    };
    let user_id = check_password(&state, &ctx, tenant_id, &email, req.password)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    let ttl = state.settings.session_ttl_secs;
    let token = session_token(&state, user_id, tenant_id, email).await?;
    let mut response = Json(json!({
        "token": token, "tokenType": "Bearer", "expiresIn": ttl, "userId": user_id, "tenantId": tenant_id,
    }))
    .into_response();
    set_cookie(
        &state,
        &mut response,
        &token,
        ttl as i64,
        tenant_id.is_none(),
    );
    Ok(response)
}

/// `POST /auth/logout`: clear the session cookie on the parent domain (every app at once). The
/// apps' sign-out form gets a redirect to the sign-in page; API clients get 204.
#[utoipa::path(post, path = "/auth/logout", tag = "auth", security(()), request_body(content((super::pages::LogoutForm = "application/x-www-form-urlencoded")), description = "The dashboards' sign-out form; API clients send no body"), responses((status = 204, description = "Signed out everywhere (API)"), (status = 303, description = "Signed out (the form): to the sign-in page")))]
async fn logout(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    // The session ends for good, not only in this browser: a copy of the token stops working.
    let claims = match super::token_in(&headers) {
        Some(token) => state.keys.verify(&token).await.ok(),
        None => None,
    };
    if let Some(claims) = claims.filter(|c| c.kind == TokenKind::User) {
        super::revoke(&state, &claims).await?;
        let entry = audit::Entry {
            tenant_id: claims.tid,
            actor_id: claims.sub.parse().ok(),
            action: "logout",
            target: claims.email.clone(),
            outcome: "success",
            details: json!({}),
        };
        audit::record(&state.db, &ctx, entry).await;
    }
    let mut response = if super::pages::is_form(&headers) {
        super::pages::after_logout(&headers, &body)
    } else {
        StatusCode::NO_CONTENT.into_response()
    };
    // Clear both the suite's cookie and a host-only one.
    set_cookie(&state, &mut response, "", 0, false);
    set_cookie(&state, &mut response, "", 0, true);
    Ok(response)
}

#[utoipa::path(get, path = "/auth/me", tag = "auth", responses((status = 200, description = "The signed-in user", body = Value)))]
async fn me(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<serde_json::Value>> {
    let user = caller.user()?;
    let (email, full_name): (String, String) =
        sqlx::query_as("select email, full_name from users where id = $1")
            .bind(user.id)
            .fetch_one(&state.db)
            .await?;
    Ok(Json(json!({
        "id": user.id, "tenantId": user.tenant_id, "email": email, "fullName": full_name,
        "platformAdmin": user.platform_admin, "tenantAdmin": user.tenant_admin,
    })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct ServiceTokenRequest {
    client_id: String,
    client_secret: String,
}

#[utoipa::path(post, path = "/auth/service-token", tag = "auth", security(()), request_body = ServiceTokenRequest, responses((status = 200, description = "A service token for the app", body = Value)))]
async fn service_token(
    State(state): State<AppState>,
    ctx: Ctx,
    crate::extract::ApiJson(req): crate::extract::ApiJson<ServiceTokenRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    let row: Option<(String, String)> =
        sqlx::query_as("select secret_hash, application from service_clients where client_id = $1")
            .bind(&req.client_id)
            .fetch_optional(&state.db)
            .await?;
    let (stored, app) = row.map_or((None, None), |(h, a)| (Some(h), Some(a)));
    let ok = state.verify_password(req.client_secret, stored).await?;
    let Some(app) = app.filter(|_| ok) else {
        let entry = audit::Entry {
            tenant_id: None,
            actor_id: None,
            action: "service_token",
            target: Some(req.client_id.clone()),
            outcome: "failure",
            details: json!({}),
        };
        audit::record(&state.db, &ctx, entry).await;
        return Err(ApiError::Unauthorized);
    };
    let ttl = state.settings.service_ttl_secs;
    let token = issue(
        &state,
        req.client_id,
        TokenKind::Service,
        None,
        None,
        Some(app),
        ttl,
    )
    .await?;
    Ok(Json(
        json!({"accessToken": token, "tokenType": "Bearer", "expiresIn": ttl}),
    ))
}

#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth", security(()), responses((status = 200, description = "The public keys that verify the wrapper's tokens", body = Value)))]
async fn jwks(State(state): State<AppState>) -> Response {
    let mut response = Json(state.keys.jwks().await).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}
