//! Authentication and authorization.
//!
//! A caller presents a JWT as `Authorization: Bearer` or in the session cookie. User tokens are
//! checked against the database on every request (a deactivated or deleted user is refused at
//! once, and a tenant-admin role revoked takes effect at once). Three user levels exist:
//! platform admin (no tenant), tenant admin (a membership in a role granting `tenant.admin`) and
//! member. Service tokens (apps) reach only the sync and credit endpoints.
//!
//! Every tenant-scoped endpoint goes through [`Caller::authorize`], which compares the caller's
//! tenant with the path's tenant; a mismatch is a 403 and an audit entry, whether or not the
//! other tenant exists.

pub mod oidc;
pub mod pages;
pub mod routes;
pub mod session;
pub mod throttle;

use axum::{extract::FromRequestParts, http::request::Parts};
use uuid::Uuid;

use crate::identity::keys::{self, TokenKind};
use crate::{audit, context::Ctx, error::ApiError, state::AppState};

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "tsync_session";
use crate::model::users::TENANT_ADMIN_PERMISSION;

/// A signed-in user, as the database sees them now.
#[derive(Debug, Clone)]
pub struct UserCaller {
    /// User id.
    pub id: Uuid,
    /// The user's tenant (none for platform admins).
    pub tenant_id: Option<Uuid>,
    /// Platform admin: may act on every tenant.
    pub platform_admin: bool,
    /// Holds a role granting `tenant.admin` in their tenant.
    pub tenant_admin: bool,
}

/// Whoever presented a valid token.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A person.
    User(UserCaller),
    /// An app's service.
    Service {
        /// The application, e.g. `crm`.
        app: String,
    },
}

/// What a request needs on a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Any member of the tenant (or a platform admin).
    Read,
    /// A tenant admin of the tenant (or a platform admin).
    Admin,
    /// Platform admins only.
    Platform,
}

/// The token a request carries: the Bearer header first, then the session cookie.
pub fn token_from(parts: &Parts) -> Option<String> {
    token_in(&parts.headers)
}

/// The token in these headers: the Bearer header first, then the session cookie (the same rule
/// as the CSRF check's, `sync_web::csrf::bearer`).
pub fn token_in(headers: &axum::http::HeaderMap) -> Option<String> {
    if let Some(bearer) = sync_web::csrf::bearer(headers) {
        return Some(bearer.to_owned());
    }
    sync_web::csrf::cookie(headers, SESSION_COOKIE).map(str::to_owned)
}

/// End a session before it expires (sign-out): recorded in Postgres, which the wrapper checks,
/// and as a Redis marker expiring with the token, which apps check (`sync_sdk::auth`).
pub async fn revoke(state: &AppState, claims: &keys::Claims) -> anyhow::Result<()> {
    use fred::prelude::*;
    sqlx::query("delete from revoked_sessions where expires_at < now()")
        .execute(&state.db)
        .await?;
    sqlx::query(
        "insert into revoked_sessions (jti, expires_at) values ($1, to_timestamp($2))
         on conflict do nothing",
    )
    .bind(&claims.jti)
    .bind(claims.exp as f64)
    .execute(&state.db)
    .await?;
    // The wrapper is safe from here on. Apps learn it from Redis; if Redis cannot take the
    // marker now, sign-out still succeeds (the cookie goes) and the failure is logged and
    // counted: apps would accept a copy of the token until it expires.
    let key = state.stream_keys.revoked_session(&claims.jti);
    let marked = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        state
            .redis
            .set::<(), _, _>(key, 1, Some(Expiration::EXAT(claims.exp)), None, false),
    )
    .await;
    if !matches!(marked, Ok(Ok(()))) {
        tracing::error!(jti = %claims.jti, "could not publish a session revocation to Redis");
        metrics::counter!("tsync_wrapper_revocation_publish_failures_total").increment(1);
    }
    Ok(())
}

/// Whether the session `jti` was signed out.
pub async fn is_revoked(state: &AppState, jti: &str) -> Result<bool, ApiError> {
    Ok(
        sqlx::query_scalar("select exists(select 1 from revoked_sessions where jti = $1)")
            .bind(jti)
            .fetch_one(&state.db)
            .await?,
    )
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = token_from(parts).ok_or(ApiError::Unauthorized)?;
        let claims = match state.keys.verify(&token).await {
            Ok(claims) => claims,
            Err(keys::TokenError::Invalid(reason)) => {
                tracing::info!(%reason, "token refused");
                return Err(ApiError::Unauthorized);
            }
            Err(keys::TokenError::Storage(e)) => return Err(ApiError::Internal(e)),
        };
        match claims.kind {
            TokenKind::Service => Ok(Caller::Service {
                app: claims.app.ok_or(ApiError::Unauthorized)?,
            }),
            TokenKind::User => {
                let id: Uuid = claims.sub.parse().map_err(|_| ApiError::Unauthorized)?;
                if is_revoked(state, &claims.jti).await? {
                    return Err(ApiError::Unauthorized);
                }
                load_user_caller(state, id)
                    .await?
                    .filter(|u| u.tenant_id == claims.tid)
                    .map(Caller::User)
                    .ok_or(ApiError::Unauthorized)
            }
        }
    }
}

/// The user as an authorization subject, if they exist and are active.
pub async fn load_user_caller(state: &AppState, id: Uuid) -> Result<Option<UserCaller>, ApiError> {
    let row: Option<(Option<Uuid>, bool, bool)> = sqlx::query_as(
        "select u.tenant_id, u.is_platform_admin,
                exists(select 1 from memberships m join roles r on r.id = m.role_id
                       where m.user_id = u.id and m.active and not r.deleted
                         and r.permissions ? $2)
         from users u
         left join tenants t on t.id = u.tenant_id
         where u.id = $1 and u.active and u.deleted_at is null
           and (u.tenant_id is null or t.status = 'active')",
    )
    .bind(id)
    .bind(TENANT_ADMIN_PERMISSION)
    .fetch_optional(&state.db)
    .await?;
    Ok(
        row.map(|(tenant_id, platform_admin, tenant_admin)| UserCaller {
            id,
            tenant_id,
            platform_admin,
            tenant_admin,
        }),
    )
}

impl Caller {
    /// The user behind the request; services are refused.
    pub fn user(&self) -> Result<&UserCaller, ApiError> {
        match self {
            Caller::User(u) => Ok(u),
            Caller::Service { .. } => Err(ApiError::Forbidden(
                "service tokens may only call the sync and credit endpoints",
            )),
        }
    }

    /// Check that the caller may act on `tenant_id` with `access`. A user of another tenant gets
    /// 403 and an audit entry on the targeted tenant.
    pub async fn authorize(
        &self,
        state: &AppState,
        ctx: &Ctx,
        tenant_id: Uuid,
        access: Access,
    ) -> Result<&UserCaller, ApiError> {
        let user = self.user()?;
        if user.platform_admin {
            return Ok(user);
        }
        if user.tenant_id != Some(tenant_id) {
            audit::record(
                &state.db,
                ctx,
                audit::Entry {
                    tenant_id: Some(tenant_id),
                    actor_id: Some(user.id),
                    action: "cross_tenant_attempt",
                    target: Some(tenant_id.to_string()),
                    outcome: "denied",
                    details: serde_json::json!({ "callerTenantId": user.tenant_id }),
                },
            )
            .await;
            metrics::counter!("tsync_wrapper_cross_tenant_attempts_total").increment(1);
            return Err(ApiError::Forbidden("not a member of this tenant"));
        }
        match access {
            Access::Read => Ok(user),
            Access::Admin if user.tenant_admin => Ok(user),
            Access::Admin => Err(ApiError::Forbidden("tenant admins only")),
            Access::Platform => Err(ApiError::Forbidden("platform admins only")),
        }
    }

    /// Platform admins only.
    pub fn require_platform_admin(&self) -> Result<&UserCaller, ApiError> {
        let user = self.user()?;
        if user.platform_admin {
            Ok(user)
        } else {
            Err(ApiError::Forbidden("platform admins only"))
        }
    }
}
