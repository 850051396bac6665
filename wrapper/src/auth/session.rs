//! Signing in, whichever way it comes (the JSON API, the sign-in page, OpenID Connect):
//! checking a local account's password, issuing tokens, the session cookie.

use axum::{
    http::{HeaderValue, header},
    response::Response,
};
use chrono::Utc;
use serde_json::json;
use uuid::Uuid;

use super::SESSION_COOKIE;
use crate::{
    audit,
    context::Ctx,
    error::ApiResult,
    identity::keys::{Claims, TokenKind},
    state::AppState,
};

/// Check a local account's password; audits and counts the outcome. The user id when it matches.
/// Throttled per account and per client address (`throttle`): a 429 while either waits.
pub(crate) async fn check_password(
    state: &AppState,
    ctx: &Ctx,
    tenant_id: Option<Uuid>,
    email: &str,
    password: String,
) -> ApiResult<Option<Uuid>> {
    let attempt =
        super::throttle::Attempt::begin(state, ctx, tenant_id, email, ctx.client_ip).await?;
    let row: Option<(Uuid, Option<String>)> = sqlx::query_as(
        "select u.id, u.password_hash from users u left join tenants t on t.id = u.tenant_id
         where lower(u.email) = $1 and u.tenant_id is not distinct from $2
           and u.active and u.deleted_at is null and (t.id is null or t.status = 'active')",
    )
    .bind(email)
    .bind(tenant_id)
    .fetch_optional(&state.db)
    .await?;
    let (user_id, stored) = row.map_or((None, None), |(id, h)| (Some(id), h));
    let ok = state.verify_password(password, stored).await?;
    let user_id = user_id.filter(|_| ok);
    let outcome = if user_id.is_some() {
        "success"
    } else {
        "failure"
    };
    let entry = audit::Entry {
        tenant_id,
        actor_id: user_id,
        action: "login",
        target: Some(email.to_owned()),
        outcome,
        details: json!({"method": "password"}),
    };
    audit::record(&state.db, ctx, entry).await;
    metrics::counter!("tsync_wrapper_logins_total", "outcome" => outcome).increment(1);
    if user_id.is_some() {
        attempt.succeeded(state).await?;
    }
    Ok(user_id)
}

/// Sign a session token for the user (set it with [`set_cookie`]).
pub(crate) async fn session_token(
    state: &AppState,
    user_id: Uuid,
    tenant_id: Option<Uuid>,
    email: String,
) -> ApiResult<String> {
    let ttl = state.settings.session_ttl_secs;
    issue(
        state,
        user_id.to_string(),
        TokenKind::User,
        tenant_id,
        Some(email),
        None,
        ttl,
    )
    .await
}

/// Sign a token for `sub`.
pub async fn issue(
    state: &AppState,
    sub: String,
    kind: TokenKind,
    tid: Option<Uuid>,
    email: Option<String>,
    app: Option<String>,
    ttl_secs: u64,
) -> ApiResult<String> {
    let now = Utc::now().timestamp();
    let tsd: Option<String> = match tid {
        Some(t) => {
            sqlx::query_scalar("select subdomain from tenants where id = $1")
                .bind(t)
                .fetch_optional(&state.db)
                .await?
        }
        None => None,
    };
    let claims = Claims {
        iss: state.keys.issuer().to_owned(),
        sub,
        iat: now,
        exp: now + ttl_secs as i64,
        jti: Uuid::now_v7().to_string(),
        kind,
        tid,
        tsd,
        email,
        app,
    };
    Ok(state.keys.sign(&claims).await?)
}

/// Set (or, with `max_age` 0, clear) the session cookie: on the parent domain for tenant users
/// (every app of the suite), on this host only for platform admins (`host_only`).
pub(crate) fn set_cookie(
    state: &AppState,
    response: &mut Response,
    value: &str,
    max_age: i64,
    host_only: bool,
) {
    let mut cookie =
        format!("{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}");
    if let Some(domain) = state.settings.cookie_domain.as_ref().filter(|_| !host_only) {
        cookie.push_str(&format!("; Domain={domain}"));
    }
    if state.settings.cookie_secure {
        cookie.push_str("; Secure");
    }
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
}
