//! "Sign in with <provider>": OpenID Connect, authorization code flow with PKCE.
//!
//! Providers are configured by issuer URL, client id and secret (`WRAPPER_OIDC_PROVIDERS`, a
//! JSON array; see [`ProviderConfig`]). The flow:
//!
//! 1. `GET /auth/oidc/{provider}/start?return_to=…` on the tenant's host: the discovery document
//!    is read (cached), a flow row is stored with a random `state`, `nonce` and PKCE verifier,
//!    `state` is also put in a short-lived cookie of this browser, and the browser is sent to the
//!    provider's authorization endpoint with the S256 challenge.
//! 2. `GET /auth/oidc/{provider}/callback?code&state`: the flow row is taken (single use, ten
//!    minutes at most) and must match the browser's cookie and the host's tenant; the code is
//!    exchanged with the verifier; the ID token is verified against the provider's JWKS (issuer,
//!    audience, expiry, signature, and the nonce); the email comes from the ID token or, when
//!    the provider keeps it out of the ID token, from the userinfo endpoint (same `sub`).
//! 3. The account is found in the host's tenant: an identity linked before, else a user with the
//!    same verified email (then linked), else — under the `create` policy — a new user (with its
//!    `user.created` event). Then the session cookie is set exactly as for a password sign-in
//!    and the browser goes back to `return_to` (a path on the same host).

use utoipa_axum::{router::OpenApiRouter, routes};

use axum::{
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::Validation;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::pages::{error_page, host, host_tenant, page_tenant, return_address, see_other};
pub use crate::identity::oidc::{ProviderConfig, parse_providers};
use crate::{
    audit,
    context::Ctx,
    identity::oidc::{FlowError, Oidc, Provider, family_of_alg, offered},
    state::AppState,
};

mod account;
use account::{VerifiedUser, find_or_create};

/// The cookie binding a sign-in in progress to the browser that started it.
pub const FLOW_COOKIE: &str = "tsync_oidc";
/// How long a sign-in may take at the provider.
const FLOW_TTL_SECS: i64 = 600;

/// OIDC routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(start_by_query))
        .routes(routes!(start))
        .routes(routes!(callback))
}

fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ))
}

fn flow_cookie(state: &AppState, value: &str, max_age: i64) -> HeaderValue {
    let mut cookie = format!(
        "{FLOW_COOKIE}={value}; Path=/auth/oidc; HttpOnly; SameSite=Lax; Max-Age={max_age}"
    );
    if state.settings.cookie_secure {
        cookie.push_str("; Secure");
    }
    HeaderValue::from_str(&cookie).unwrap_or(HeaderValue::from_static("tsync_oidc=; Max-Age=0"))
}

/// `scheme://host` of the request as the browser sees it.
fn public_origin(state: &AppState, headers: &HeaderMap) -> String {
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .filter(|s| *s == "http" || *s == "https")
        .unwrap_or(if state.settings.cookie_secure {
            "https"
        } else {
            "http"
        });
    format!("{scheme}://{}", host(headers))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct StartQuery {
    return_to: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct LoginQuery {
    #[serde(default)]
    provider: String,
    return_to: Option<String>,
}

/// `GET /auth/oidc/login?provider=<id>&return_to=…` (the original design's name): the same as
/// `/auth/oidc/<id>/start`. Each provider has its own callback path, which is what the provider
/// registers as the redirect URI.
#[utoipa::path(get, path = "/auth/oidc/login", tag = "auth", security(()), params(LoginQuery), responses((status = 303, description = "To the OpenID Connect provider")))]
async fn start_by_query(
    state: State<AppState>,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Response {
    start(
        state,
        Path(q.provider),
        headers,
        Query(StartQuery {
            return_to: q.return_to,
        }),
    )
    .await
}

#[utoipa::path(get, path = "/auth/oidc/{provider}/start", tag = "auth", security(()), params(("provider" = String, Path, description = "The provider id"), StartQuery), responses((status = 303, description = "To the OpenID Connect provider")))]
async fn start(
    State(state): State<AppState>,
    Path(provider_id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<StartQuery>,
) -> Response {
    let return_to = match return_address(q.return_to.as_deref(), &headers) {
        Ok(r) => r,
        Err(refused) => return refused.into_response(),
    };
    let tenant = match page_tenant(&state, &headers).await {
        Ok(t) => t,
        Err(page) => return page,
    };
    let Some(provider) = state
        .oidc
        .provider(&provider_id)
        .filter(|p| offered(&p.config, &tenant.subdomain))
    else {
        return error_page(
            StatusCode::NOT_FOUND,
            "Unknown sign-in provider",
            "this provider is not offered for this organisation",
        );
    };
    let discovery = match state.oidc.discovery(provider).await {
        Ok(d) => d,
        Err(e) => {
            return error_page(
                StatusCode::BAD_GATEWAY,
                "Sign-in unavailable",
                &e.to_string(),
            );
        }
    };
    let redirect_uri = format!(
        "{}/auth/oidc/{}/callback",
        public_origin(&state, &headers),
        provider.config.id
    );
    let flow = NewFlow {
        state: random_token(),
        nonce: random_token(),
        verifier: random_token(),
        redirect_uri,
        return_to,
    };
    if let Err(e) = store_flow(&state, provider, tenant.tenant_id, &flow).await {
        return crate::error::ApiError::from(e).into_response();
    }
    let mut response = see_other(&authorization_url(&discovery, provider, &flow));
    response.headers_mut().append(
        header::SET_COOKIE,
        flow_cookie(&state, &flow.state, FLOW_TTL_SECS),
    );
    response
}

/// A sign-in about to leave for the provider: what the callback must find again.
struct NewFlow {
    state: String,
    nonce: String,
    verifier: String,
    redirect_uri: String,
    return_to: String,
}

/// Record the flow (single use, at most [`FLOW_TTL_SECS`] old), dropping expired ones.
async fn store_flow(
    state: &AppState,
    provider: &Provider,
    tenant_id: Uuid,
    flow: &NewFlow,
) -> Result<(), sqlx::Error> {
    sqlx::query("delete from oidc_flows where created_at < now() - make_interval(secs => $1)")
        .bind(FLOW_TTL_SECS as f64)
        .execute(&state.db)
        .await?;
    sqlx::query(
        "insert into oidc_flows (state, provider, tenant_id, nonce, code_verifier, redirect_uri, return_to)
         values ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&flow.state)
    .bind(&provider.config.id)
    .bind(tenant_id)
    .bind(&flow.nonce)
    .bind(&flow.verifier)
    .bind(&flow.redirect_uri)
    .bind(&flow.return_to)
    .execute(&state.db)
    .await?;
    Ok(())
}

/// The provider's authorization endpoint with the code flow's parameters and the S256 challenge.
fn authorization_url(
    discovery: &crate::identity::oidc::Discovery,
    provider: &Provider,
    flow: &NewFlow,
) -> String {
    let scopes = provider
        .config
        .scopes
        .as_deref()
        .unwrap_or("openid email profile");
    let separator = if discovery.authorization_endpoint.contains('?') {
        '&'
    } else {
        '?'
    };
    let enc = sync_web::html::url_encode;
    format!(
        "{}{separator}response_type=code&client_id={}&redirect_uri={}&scope={}&state={}&nonce={}&code_challenge={}&code_challenge_method=S256",
        discovery.authorization_endpoint,
        enc(&provider.config.client_id),
        enc(&flow.redirect_uri),
        enc(scopes),
        flow.state,
        flow.nonce,
        pkce_challenge(&flow.verifier),
    )
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

#[derive(Debug, sqlx::FromRow)]
struct Flow {
    tenant_id: Uuid,
    nonce: String,
    code_verifier: String,
    redirect_uri: String,
    return_to: String,
}

#[utoipa::path(get, path = "/auth/oidc/{provider}/callback", tag = "auth", security(()), params(("provider" = String, Path, description = "The provider id"), CallbackQuery), responses((status = 303, description = "Signed in: back to where the user started")))]
async fn callback(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(provider_id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let refused = |status, message: &str| sign_in_failed(&state, status, message);
    let flow = match returning_flow(&state, &headers, &provider_id, q.state.as_deref()).await {
        Ok(flow) => flow,
        Err(response) => return response,
    };
    let audit_failure =
        |reason: String| audit_login(&state, &ctx, flow.tenant_id, &provider_id, Err(reason));
    if let Some(error) = q.error.as_deref() {
        let detail = q.error_description.as_deref().unwrap_or("");
        audit_failure(format!("provider error {error}")).await;
        return refused(
            StatusCode::UNAUTHORIZED,
            &format!("the identity provider refused the sign-in: {error} {detail}"),
        );
    }
    let (Some(code), Some(provider)) = (q.code.as_deref(), state.oidc.provider(&provider_id))
    else {
        return refused(
            StatusCode::BAD_REQUEST,
            "the provider sent no authorization code",
        );
    };
    let verified = match exchange_and_verify(&state.oidc, provider, code, &flow).await {
        Ok(v) => v,
        Err(e) => {
            audit_failure(e.to_string()).await;
            return refused(StatusCode::UNAUTHORIZED, &e.to_string());
        }
    };
    let user = match find_or_create(&state, &ctx, provider, flow.tenant_id, &verified).await {
        Ok(Ok(user)) => user,
        Ok(Err(reason)) => {
            audit_failure(reason.to_owned()).await;
            return refused(StatusCode::FORBIDDEN, reason);
        }
        Err(e) => return e.into_response(),
    };
    audit_login(&state, &ctx, flow.tenant_id, &provider_id, Ok(&user)).await;
    signed_in(&state, &flow, user)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// The page of a refused sign-in, clearing the flow cookie.
fn sign_in_failed(state: &AppState, status: StatusCode, message: &str) -> Response {
    let mut response = error_page(status, "Sign-in failed", message);
    response
        .headers_mut()
        .append(header::SET_COOKIE, flow_cookie(state, "", 0));
    response
}

/// The flow the browser comes back with: its `state` must be this browser's (the flow cookie),
/// unused and unexpired, and started on this host's tenant; else the refusal to show.
async fn returning_flow(
    state: &AppState,
    headers: &HeaderMap,
    provider_id: &str,
    returned_state: Option<&str>,
) -> Result<Flow, Response> {
    let refused = |status, message: &str| sign_in_failed(state, status, message);
    let browser_state = sync_web::csrf::cookie(headers, FLOW_COOKIE);
    let Some(flow_state) = returned_state.filter(|s| Some(*s) == browser_state) else {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            "this sign-in was not started in this browser (state mismatch); please start again",
        ));
    };
    let flow = take_flow(state, flow_state, provider_id)
        .await
        .map_err(|e| crate::error::ApiError::from(e).into_response())?;
    let Some(flow) = flow else {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            "this sign-in expired or was already used; please start again",
        ));
    };
    let tenant = host_tenant(state, headers)
        .await
        .map_err(IntoResponse::into_response)?;
    if tenant.as_ref().map(|t| t.tenant_id) != Some(flow.tenant_id) {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            "this sign-in was started for another organisation",
        ));
    }
    Ok(flow)
}

/// Take the flow `flow_state` of `provider_id` (single use; none once expired).
async fn take_flow(
    state: &AppState,
    flow_state: &str,
    provider_id: &str,
) -> Result<Option<Flow>, sqlx::Error> {
    sqlx::query_as(
        "delete from oidc_flows where state = $1 and provider = $2
           and created_at > now() - make_interval(secs => $3)
         returning tenant_id, nonce, code_verifier, redirect_uri, return_to",
    )
    .bind(flow_state)
    .bind(provider_id)
    .bind(FLOW_TTL_SECS as f64)
    .fetch_optional(&state.db)
    .await
}

/// Audit and count a sign-in through a provider: the user on success, the reason on failure.
async fn audit_login(
    state: &AppState,
    ctx: &Ctx,
    tenant_id: Uuid,
    provider_id: &str,
    outcome: Result<&(Uuid, String), String>,
) {
    let (actor, target, outcome, details) = match outcome {
        Ok((id, email)) => (
            Some(*id),
            Some(email.clone()),
            "success",
            json!({"method": "oidc", "provider": provider_id}),
        ),
        Err(reason) => (
            None,
            None,
            "failure",
            json!({"method": "oidc", "provider": provider_id, "reason": reason}),
        ),
    };
    let entry = audit::Entry {
        tenant_id: Some(tenant_id),
        actor_id: actor,
        action: "login",
        target,
        outcome,
        details,
    };
    audit::record(&state.db, ctx, entry).await;
    metrics::counter!("tsync_wrapper_logins_total", "outcome" => outcome).increment(1);
}

/// The session for `user`: the cookie (as for a password sign-in), the flow cookie cleared, and
/// the browser back where it started.
async fn signed_in(
    state: &AppState,
    flow: &Flow,
    (user_id, email): (Uuid, String),
) -> crate::error::ApiResult<Response> {
    let token = super::session::session_token(state, user_id, Some(flow.tenant_id), email).await?;
    let mut response = see_other(&flow.return_to);
    super::session::set_cookie(
        state,
        &mut response,
        &token,
        state.settings.session_ttl_secs as i64,
        false,
    );
    response
        .headers_mut()
        .append(header::SET_COOKIE, flow_cookie(state, "", 0));
    Ok(response)
}

#[derive(Debug, Deserialize)]
struct TokenResponse {
    id_token: Option<String>,
    access_token: Option<String>,
}

#[derive(Debug, Deserialize)]
struct IdClaims {
    sub: String,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    aud: Value,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<Value>,
    #[serde(default)]
    name: Option<String>,
}

fn truthy(v: Option<&Value>) -> bool {
    matches!(v, Some(Value::Bool(true))) || matches!(v, Some(Value::String(s)) if s == "true")
}

async fn exchange_and_verify(
    oidc: &Oidc,
    provider: &Provider,
    code: &str,
    flow: &Flow,
) -> Result<VerifiedUser, FlowError> {
    let config = &provider.config;
    let discovery = oidc.discovery(provider).await?;
    let enc = sync_web::html::url_encode;
    let response = oidc
        .http
        .post(&discovery.token_endpoint)
        .basic_auth(enc(&config.client_id), Some(enc(&config.client_secret)))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &flow.redirect_uri),
            ("code_verifier", &flow.code_verifier),
        ])
        .send()
        .await
        .map_err(|e| FlowError::Provider(e.to_string()))?;
    if !response.status().is_success() {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        return Err(FlowError::Token(format!(
            "the token endpoint answered {status}: {}",
            body.chars().take(300).collect::<String>()
        )));
    }
    let tokens: TokenResponse = response
        .json()
        .await
        .map_err(|e| FlowError::Token(e.to_string()))?;
    let id_token = tokens
        .id_token
        .ok_or_else(|| FlowError::Token("no ID token in the token response".into()))?;
    let header = jsonwebtoken::decode_header(&id_token)
        .map_err(|e| FlowError::Token(format!("ID token: {e}")))?;
    if family_of_alg(header.alg).is_none() {
        return Err(FlowError::Token(
            "ID tokens signed with a shared secret are not accepted".into(),
        ));
    }
    let key = oidc
        .key_for(provider, &discovery, header.kid.as_deref(), header.alg)
        .await?;
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[&discovery.issuer]);
    validation.set_audience(&[&config.client_id]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.leeway = 60;
    let claims = jsonwebtoken::decode::<IdClaims>(&id_token, &key, &validation)
        .map_err(|e| FlowError::Token(format!("ID token: {e}")))?
        .claims;
    if claims.nonce.as_deref() != Some(flow.nonce.as_str()) {
        return Err(FlowError::Token(
            "ID token: the nonce does not match".into(),
        ));
    }
    if claims.aud.is_array() && claims.azp.as_deref().is_some_and(|a| a != config.client_id) {
        return Err(FlowError::Token(
            "ID token: issued to another party (azp)".into(),
        ));
    }
    let mut user = VerifiedUser {
        subject: claims.sub,
        email: claims.email,
        email_verified: truthy(claims.email_verified.as_ref()),
        name: claims.name,
    };
    // Providers may keep profile claims out of the ID token; ask the userinfo endpoint then.
    if let (None, Some(endpoint), Some(access)) = (
        &user.email,
        discovery.userinfo_endpoint.as_deref(),
        tokens.access_token.as_deref(),
    ) {
        let info = oidc.get_json(endpoint, Some(access)).await?;
        if info["sub"].as_str() != Some(user.subject.as_str()) {
            return Err(FlowError::Token(
                "userinfo describes another subject than the ID token".into(),
            ));
        }
        user.email = info["email"].as_str().map(str::to_owned);
        user.email_verified = truthy(info.get("email_verified"));
        user.name = user.name.or(info["name"].as_str().map(str::to_owned));
    }
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_challenge_is_the_rfc_7636_example() {
        // RFC 7636, appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
