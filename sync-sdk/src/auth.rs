//! Authentication for apps (feature `axum`): verify the wrapper's session tokens against its
//! published keys, and bind every request to one tenant.
//!
//! * Tokens are EdDSA JWTs; the public keys come from the wrapper's `/.well-known/jwks.json`.
//!   They are cached; a token signed with a key the cache does not know makes it refresh (at
//!   most once per `min_refresh`), so a rotated key is picked up without a restart and a retired
//!   one stops verifying after the next refresh.
//! * A token must carry `iss` (this wrapper), `exp`, `sub` and its tenant (`tid`); one without
//!   any of them is refused.
//! * [`TenantUser`] is an axum extractor: the token comes from `Authorization: Bearer` or the
//!   session cookie, and the tenant it names must equal the request's tenant (the `X-Tenant`
//!   header that NGINX derives from the subdomain: the tenant's subdomain or id). A request
//!   without `X-Tenant` is refused (400): an app only serves requests the edge has bound to a
//!   tenant. A mismatch is a 403 and is logged and counted as a cross-tenant attempt.
//! * With [`Jwks::with_sessions`] (what [`crate::app::AppKit`] wires), the signature is not
//!   enough: the user is looked up in the app's synced copy on every request, so a deactivated
//!   or deleted user, or a suspended or archived tenant, is refused as soon as the event is
//!   applied, and the user's permissions are those of their memberships at that moment.
//! * Sign-out markers in Redis: if Redis cannot answer, the session is accepted by default
//!   (logged and counted; the synced-copy check above still applies) or, with
//!   [`RevocationPolicy::FailClosed`], refused with 503.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{StatusCode, request::Parts},
    response::{IntoResponse, Response},
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::RwLock;
use uuid::Uuid;

/// The session cookie the wrapper sets.
pub use crate::csrf::SESSION_COOKIE;
/// The header carrying the request's tenant (set by NGINX from the subdomain).
pub const TENANT_HEADER: &str = "x-tenant";

/// The claims apps rely on.
#[derive(Debug, Clone, Deserialize)]
pub struct SessionClaims {
    /// The user id.
    pub sub: String,
    /// The user's tenant.
    #[serde(default)]
    pub tid: Option<Uuid>,
    /// The subdomain of the user's tenant.
    #[serde(default)]
    pub tsd: Option<String>,
    /// The user's email.
    #[serde(default)]
    pub email: Option<String>,
    /// `user` or `service`.
    pub kind: String,
    /// Expiry.
    pub exp: i64,
    /// Token id (sign-out revokes it).
    #[serde(default)]
    pub jti: Option<String>,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No token on the request.
    #[error("authentication required")]
    Missing,
    /// Bad signature, unknown key, expired, wrong issuer or algorithm.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token's tenant is not the request's tenant.
    #[error("this session belongs to another tenant")]
    WrongTenant,
    /// The keys could not be fetched.
    #[error("key set unavailable: {0}")]
    Keys(String),
    /// A cookie-authenticated request that changes state came from another host's page.
    #[error(transparent)]
    Forgery(#[from] crate::csrf::CsrfError),
    /// The request does not name its tenant (no `X-Tenant` from the edge).
    #[error("the request names no tenant (the edge sets X-Tenant from the host)")]
    NoTenant,
    /// The token is valid but its user may no longer use this tenant (synced copy).
    #[error("access revoked: {0}")]
    Revoked(&'static str),
    /// The tenant is suspended (synced copy): refused until a platform admin resumes it.
    #[error("this organisation is suspended: ask your administrator")]
    Suspended,
    /// The tenant's plan does not include the feature this app needs (synced copy).
    #[error("this organisation's plan does not include the feature '{0}'")]
    FeatureMissing(String),
    /// The session cannot be checked now (tenant not loaded and the wrapper unreachable, or the
    /// revocation check unavailable under [`RevocationPolicy::FailClosed`]).
    #[error("sessions cannot be checked right now: {0}")]
    Unavailable(&'static str),
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let status = match self {
            AuthError::Missing | AuthError::Invalid(_) | AuthError::Revoked(_) => {
                StatusCode::UNAUTHORIZED
            }
            AuthError::WrongTenant
            | AuthError::Forgery(_)
            | AuthError::Suspended
            | AuthError::FeatureMissing(_) => StatusCode::FORBIDDEN,
            AuthError::NoTenant => StatusCode::BAD_REQUEST,
            AuthError::Keys(_) | AuthError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let field = matches!(self, AuthError::FeatureMissing(_)).then_some("feature");
        let mut response = crate::http::problem(status, field, &self.to_string());
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // A dependency (the wrapper, Redis, the store) is away: worth retrying shortly.
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("5"),
            );
        }
        response
    }
}

/// What to do with a session when Redis cannot say whether it was signed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RevocationPolicy {
    /// Accept it (logged and counted as `tsync_auth_revocation_check_failures_total`): the
    /// window is bounded by the token's lifetime, and deactivation still applies through the
    /// synced copy. The default: a Redis outage does not sign everybody out.
    #[default]
    FailOpen,
    /// Refuse it with 503 until Redis answers again.
    FailClosed,
}

/// The check of a verified session against the app's synced copy: the user's permissions, or
/// why they are refused. [`crate::app::AppKit`] provides one over its store and loader.
pub trait SessionCheck: Send + Sync + 'static {
    /// Check `user_id` of `tenant_id` now.
    fn check(
        &self,
        tenant_id: Uuid,
        user_id: Uuid,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Vec<String>, AuthError>> + Send + '_>>;
}

struct Keys {
    by_kid: HashMap<String, DecodingKey>,
    fetched: Option<Instant>,
}

/// The wrapper's public keys, cached, refreshed on an unknown `kid`.
pub struct Jwks {
    http: reqwest::Client,
    wrappers: crate::wrapper_client::WrapperUrls,
    issuer: String,
    min_refresh: Duration,
    max_age: Duration,
    keys: RwLock<Keys>,
    audit: Option<Arc<crate::wrapper_client::WrapperClient>>,
    revocations: Option<(fred::clients::Client, crate::contract::StreamKeys)>,
    revocation_policy: RevocationPolicy,
    sessions: Option<Arc<dyn SessionCheck>>,
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kid: String,
    kty: String,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
}

impl Jwks {
    /// Keys from `wrapper_url/.well-known/jwks.json` (several wrappers may be listed, comma-
    /// separated, as for [`WrapperClient`](crate::wrapper_client::WrapperClient)), for tokens issued by `issuer`. The set is
    /// fetched again when a token names an unknown key (at most once per `min_refresh`) and
    /// when it is older than `max_age` (so a retired key stops verifying).
    pub fn new(
        wrapper_url: &str,
        issuer: &str,
        min_refresh: Duration,
        max_age: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            wrappers: crate::wrapper_client::WrapperUrls::new(wrapper_url),
            issuer: issuer.to_owned(),
            min_refresh,
            max_age,
            keys: RwLock::new(Keys {
                by_kid: HashMap::new(),
                fetched: None,
            }),
            audit: None,
            revocations: None,
            revocation_policy: RevocationPolicy::FailOpen,
            sessions: None,
        })
    }

    /// Also refuse sessions signed out before they expired: the wrapper marks them in Redis
    /// (`{ns}:revoked:{jti}`) and this checks the marker on every verification. If Redis cannot
    /// answer, `policy` decides (see [`RevocationPolicy`]). Call before sharing the `Arc`.
    pub fn with_revocations(
        self: Arc<Self>,
        redis: fred::clients::Client,
        keys: crate::contract::StreamKeys,
        policy: RevocationPolicy,
    ) -> Arc<Self> {
        let mut jwks = Arc::into_inner(self).expect("with_revocations is called before sharing");
        jwks.revocations = Some((redis, keys));
        jwks.revocation_policy = policy;
        Arc::new(jwks)
    }

    /// Also check every session's user against the app's synced copy (see the module docs).
    /// Call before sharing the `Arc`.
    pub fn with_sessions(self: Arc<Self>, sessions: Arc<dyn SessionCheck>) -> Arc<Self> {
        let mut jwks = Arc::into_inner(self).expect("with_sessions is called before sharing");
        jwks.sessions = Some(sessions);
        Arc::new(jwks)
    }

    /// Like [`new`](Self::new), and refused cross-tenant attempts are reported to the wrapper's
    /// audit log of the targeted tenant through `client`.
    pub fn with_audit(
        wrapper_url: &str,
        issuer: &str,
        min_refresh: Duration,
        max_age: Duration,
        client: Arc<crate::wrapper_client::WrapperClient>,
    ) -> Arc<Self> {
        let mut jwks = Arc::into_inner(Self::new(wrapper_url, issuer, min_refresh, max_age))
            .expect("a fresh Arc has one owner");
        jwks.audit = Some(client);
        Arc::new(jwks)
    }

    async fn refresh(&self) -> Result<(), AuthError> {
        let mut keys = self.keys.write().await;
        if keys
            .fetched
            .is_some_and(|at| at.elapsed() < self.min_refresh)
        {
            return Ok(());
        }
        let set: JwkSet = self
            .wrappers
            .send(|base| self.http.get(format!("{base}/.well-known/jwks.json")))
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| AuthError::Keys(e.to_string()))?
            .json()
            .await
            .map_err(|e| AuthError::Keys(e.to_string()))?;
        keys.by_kid = set
            .keys
            .into_iter()
            .filter(|k| k.kty == "OKP" && k.crv.as_deref() == Some("Ed25519"))
            .filter_map(|k| {
                Some((
                    k.kid,
                    DecodingKey::from_ed_components(k.x.as_deref()?).ok()?,
                ))
            })
            .collect();
        keys.fetched = Some(Instant::now());
        metrics::counter!("tsync_auth_jwks_refreshes_total").increment(1);
        Ok(())
    }

    /// Verify a session token.
    pub async fn verify(&self, token: &str) -> Result<SessionClaims, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::Invalid(format!("algorithm {:?}", header.alg)));
        }
        let kid = header
            .kid
            .ok_or_else(|| AuthError::Invalid("no kid".into()))?;
        let (known, fresh) = {
            let keys = self.keys.read().await;
            let fresh = keys.fetched.is_some_and(|at| at.elapsed() < self.max_age);
            (keys.by_kid.contains_key(&kid), fresh)
        };
        if !known || !fresh {
            self.refresh().await?;
        }
        let keys = self.keys.read().await;
        let key = keys
            .by_kid
            .get(&kid)
            .ok_or_else(|| AuthError::Invalid(format!("unknown kid {kid}")))?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&self.issuer]);
        // `set_issuer` alone checks `iss` only when present: require it.
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.validate_aud = false;
        validation.leeway = 5;
        let claims = jsonwebtoken::decode::<SessionClaims>(token, key, &validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?
            .claims;
        if claims.kind != "user" {
            return Err(AuthError::Invalid("not a session token".into()));
        }
        if claims.tid.is_none() {
            return Err(AuthError::Invalid("the token names no tenant".into()));
        }
        drop(keys);
        if let (Some((redis, stream_keys)), Some(jti)) = (&self.revocations, &claims.jti) {
            use fred::prelude::*;
            let probe = tokio::time::timeout(
                Duration::from_secs(1),
                redis.exists::<i64, _>(stream_keys.revoked_session(jti)),
            )
            .await;
            match probe {
                Ok(Ok(0)) => {}
                Ok(Ok(_)) => return Err(AuthError::Invalid("the session was signed out".into())),
                _ => {
                    metrics::counter!("tsync_auth_revocation_check_failures_total").increment(1);
                    if self.revocation_policy == RevocationPolicy::FailClosed {
                        tracing::warn!(jti, "revocation check unavailable; session refused");
                        return Err(AuthError::Unavailable("the sign-out check"));
                    }
                    tracing::warn!(jti, "revocation check unavailable; session accepted");
                }
            }
        }
        Ok(claims)
    }
}

/// A signed-in user of the request's tenant.
#[derive(Debug, Clone)]
pub struct TenantUser {
    /// The user id.
    pub user_id: Uuid,
    /// The tenant (token and request agree).
    pub tenant_id: Uuid,
    /// The user's email, when the token carries it.
    pub email: Option<String>,
    /// The user's permissions in the tenant, from their memberships in the synced copy at the
    /// time of the request (empty when the [`Jwks`] has no [`SessionCheck`]).
    pub permissions: Vec<String>,
}

impl TenantUser {
    /// Whether the user holds `permission` (through a role of one of their memberships).
    pub fn has(&self, permission: &str) -> bool {
        self.permissions.iter().any(|p| p == permission)
    }
}

/// The request's token and whether it came from the (ambient) session cookie.
fn token(parts: &Parts) -> Option<(String, bool)> {
    if let Some(bearer) = crate::csrf::bearer(&parts.headers) {
        return Some((bearer.to_owned(), false));
    }
    crate::csrf::cookie(&parts.headers, SESSION_COOKIE).map(|t| (t.to_owned(), true))
}

impl<S> FromRequestParts<S> for TenantUser
where
    Arc<Jwks>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AuthError> {
        let jwks = Arc::<Jwks>::from_ref(state);
        let (token, from_cookie) = token(parts).ok_or(AuthError::Missing)?;
        if from_cookie {
            // The browser sends the cookie whoever made the page: state changes must come from
            // a page of this host.
            crate::csrf::check(&parts.method, &parts.headers)?;
        }
        let claims = jwks.verify(&token).await?;
        let tenant_id = claims.tid.ok_or(AuthError::WrongTenant)?;
        let requested = parts
            .headers
            .get(TENANT_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .ok_or(AuthError::NoTenant)?;
        let matches = |r: &String| *r == tenant_id.to_string() || Some(r) == claims.tsd.as_ref();
        if !matches(&requested) {
            tracing::warn!(%tenant_id, requested, user = claims.sub, "cross-tenant attempt refused");
            metrics::counter!("tsync_auth_cross_tenant_attempts_total").increment(1);
            if let Some(client) = jwks.audit.clone() {
                let actor = claims.sub.parse().ok();
                let details =
                    serde_json::json!({"callerTenantId": tenant_id, "path": parts.uri.path()});
                tokio::spawn(async move {
                    let reported = client
                        .report_audit(&requested, actor, "cross_tenant_attempt", details)
                        .await;
                    if let Err(e) = reported {
                        tracing::warn!(error = %e, "could not report a cross-tenant attempt");
                    }
                });
            }
            return Err(AuthError::WrongTenant);
        }
        let user_id = claims
            .sub
            .parse()
            .map_err(|_| AuthError::Invalid("bad subject".into()))?;
        let permissions = match &jwks.sessions {
            Some(sessions) => {
                let checked = sessions.check(tenant_id, user_id).await;
                if let Err(AuthError::Revoked(reason)) = &checked {
                    tracing::info!(%tenant_id, %user_id, reason, "session refused by the synced copy");
                    metrics::counter!("tsync_auth_sessions_revoked_total").increment(1);
                }
                checked?
            }
            None => Vec::new(),
        };
        Ok(TenantUser {
            user_id,
            tenant_id,
            email: claims.email,
            permissions,
        })
    }
}

/// The [`SessionCheck`] of an app's synced copy: the tenant is loaded first if this replica
/// never saw it, then [`crate::store::user_access`] decides.
pub struct SyncedSessions<S> {
    loader: Arc<crate::loader::Loader<S>>,
    store: Arc<S>,
}

impl<S: crate::store::TenantStore> SyncedSessions<S> {
    /// Sessions checked against `store`, loading tenants through `loader`.
    pub fn new(loader: Arc<crate::loader::Loader<S>>, store: Arc<S>) -> Arc<Self> {
        Arc::new(Self { loader, store })
    }

    async fn check_now(&self, tenant_id: Uuid, user_id: Uuid) -> Result<Vec<String>, AuthError> {
        use crate::{
            store::{UserAccess, user_access},
            wrapper_client::LoadError,
        };
        match self.loader.ensure_tenant(tenant_id).await {
            Ok(_) => {}
            Err(LoadError::NotFound) => return Err(AuthError::Revoked("the tenant is unknown")),
            Err(LoadError::FeatureMissing(f)) => return Err(AuthError::FeatureMissing(f)),
            Err(e) => {
                tracing::warn!(%tenant_id, error = %e, "session check: the tenant is not loaded");
                return Err(AuthError::Unavailable("the tenant is not loaded yet"));
            }
        }
        match user_access(&*self.store, tenant_id, user_id).await {
            Ok(UserAccess::Granted { permissions }) => Ok(permissions),
            Ok(UserAccess::Refused(reason)) => Err(AuthError::Revoked(reason)),
            Ok(UserAccess::Suspended) => Err(AuthError::Suspended),
            Err(e) => {
                tracing::warn!(%tenant_id, error = %e, "session check: the store failed");
                Err(AuthError::Unavailable("the app's store did not answer"))
            }
        }
    }
}

impl<S: crate::store::TenantStore> SessionCheck for SyncedSessions<S> {
    fn check(
        &self,
        tenant_id: Uuid,
        user_id: Uuid,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Vec<String>, AuthError>> + Send + '_>> {
        Box::pin(self.check_now(tenant_id, user_id))
    }
}
