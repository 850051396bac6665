//! The browser's sign-in pages: `GET /auth/login` (the form for local accounts and a "sign in
//! with …" button per OpenID Connect provider), the form's post, and the sign-out redirect.
//!
//! The tenant is the one the request's host names (the domain cache), so `acme.yourapp.test`
//! shows acme's sign-in page. After sign-in the browser goes back to `return_to`, which must be
//! a path on this very host (or an absolute URL naming it): the wrapper never redirects to
//! another host, so a crafted link cannot bounce a signed-in user to an attacker's page.

use axum::{
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use sync_web::html::{escape, url_encode};
pub use sync_web::page::{html, see_other};
use uuid::Uuid;

use crate::{
    context::Ctx,
    error::{ApiError, ApiResult},
    model::hosts::DomainInfo,
    state::AppState,
};

/// Whether the request body is an HTML form post.
pub fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        })
}

/// The `Host` header (with its port, as the browser sent it).
pub fn host(headers: &HeaderMap) -> &str {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
}

/// The tenant the request's host names.
pub async fn host_tenant(state: &AppState, headers: &HeaderMap) -> ApiResult<Option<DomainInfo>> {
    state.domains.lookup(&state.db, host(headers)).await
}

/// The tenant a browser page is for (the host's), or the page saying this address belongs to
/// no organisation.
pub async fn page_tenant(state: &AppState, headers: &HeaderMap) -> Result<DomainInfo, Response> {
    match host_tenant(state, headers).await {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Err(error_page(
            StatusCode::NOT_FOUND,
            "Unknown organisation",
            "this address does not belong to any organisation",
        )),
        Err(e) => Err(e.into_response()),
    }
}

/// Whether the request came to the one host platform admins sign in on (`WRAPPER_ADMIN_HOST`).
pub fn is_admin_host(state: &AppState, headers: &HeaderMap) -> bool {
    let name = host(headers)
        .rsplit_once(':')
        .map_or(host(headers), |(h, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                host(headers)
            }
        });
    name.trim_end_matches('.')
        .eq_ignore_ascii_case(&state.settings.admin_host)
}

/// Whose accounts a sign-in on this host is for: the host's tenant, or platform accounts on the
/// admin host. Any other host offers no sign-in (404).
pub async fn sign_in_scope(
    state: &AppState,
    headers: &HeaderMap,
) -> ApiResult<(Option<DomainInfo>, Option<Uuid>)> {
    match host_tenant(state, headers).await? {
        Some(t) => {
            let id = t.tenant_id;
            Ok((Some(t), Some(id)))
        }
        None if is_admin_host(state, headers) => Ok((None, None)),
        None => Err(ApiError::NotFound("organisation at this address")),
    }
}

/// Where to send the browser after sign-in, as a path on the request's host. Accepted: a path
/// (`/crm/`), or an absolute http(s) URL whose host is `host`. Refused: other hosts,
/// protocol-relative (`//evil`) and backslash tricks, credentials in the URL, control characters.
pub fn safe_return(raw: Option<&str>, host: &str) -> Result<String, &'static str> {
    let raw = raw.map(str::trim).filter(|r| !r.is_empty()).unwrap_or("/");
    if raw.len() > 2048 || raw.chars().any(|c| c.is_control() || c == '\\') {
        return Err("the return address contains characters that are not allowed");
    }
    if raw.starts_with('/') {
        return if raw.starts_with("//") {
            Err("the return address must be on this tenant's own host")
        } else {
            Ok(raw.to_owned())
        };
    }
    let lower = raw.to_ascii_lowercase();
    let rest = if lower.starts_with("https://") || lower.starts_with("http://") {
        &raw[raw.find("://").map_or(0, |i| i + 3)..]
    } else {
        return Err("the return address must be a path or an http(s) URL");
    };
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.contains('@') || !authority.eq_ignore_ascii_case(host) || host.is_empty() {
        return Err("the return address must be on this tenant's own host");
    }
    Ok(match path.chars().next() {
        Some('/') if !path.starts_with("//") => path.to_owned(),
        Some('/') => return Err("the return address must be on this tenant's own host"),
        Some(_) => format!("/{path}"),
        None => "/".to_owned(),
    })
}

/// A return address refused by [`return_address`]; its response is the page saying why (400).
#[derive(Debug)]
pub struct ReturnRefused(&'static str);

impl IntoResponse for ReturnRefused {
    fn into_response(self) -> Response {
        error_page(StatusCode::BAD_REQUEST, "Return address refused", self.0)
    }
}

/// [`safe_return`] for this request.
pub fn return_address(raw: Option<&str>, headers: &HeaderMap) -> Result<String, ReturnRefused> {
    safe_return(raw, host(headers)).map_err(ReturnRefused)
}

/// A page telling the user what went wrong.
pub fn error_page(status: StatusCode, title: &str, message: &str) -> Response {
    html(
        status,
        title,
        &format!(
            r#"<h1>{}</h1><p class="error" id="error">{}</p><p><a href="/auth/login">Back to sign-in</a></p>"#,
            escape(title),
            escape(message)
        ),
    )
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct LoginPageQuery {
    return_to: Option<String>,
}

/// `GET /auth/login?return_to=/crm/`: the sign-in page of the host's tenant.
#[utoipa::path(get, path = "/auth/login", tag = "pages", security(()), params(LoginPageQuery), responses((status = 200, description = "The host's sign-in page", body = String, content_type = "text/html"), (status = 303, description = "Already signed in: back to return_to")))]
pub(crate) async fn login_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<LoginPageQuery>,
) -> Response {
    let return_to = match return_address(q.return_to.as_deref(), &headers) {
        Ok(r) => r,
        Err(refused) => return refused.into_response(),
    };
    let tenant = match sign_in_scope(&state, &headers).await {
        Ok((t, _)) => t,
        Err(ApiError::NotFound(_)) => {
            return error_page(
                StatusCode::NOT_FOUND,
                "No organisation here",
                "There is no organisation at this address. Use your organisation's own address.",
            );
        }
        Err(e) => return e.into_response(),
    };
    // Already signed in to this tenant (another app set the cookie): straight back.
    if signed_in_to(&state, &headers, tenant.as_ref().map(|t| t.tenant_id)).await {
        return see_other(&return_to);
    }
    render_login(
        &state,
        tenant.as_ref(),
        &return_to,
        "",
        None,
        StatusCode::OK,
    )
}

/// Whether the session cookie is a valid session of an active user of `tenant_id`.
async fn signed_in_to(state: &AppState, headers: &HeaderMap, tenant_id: Option<Uuid>) -> bool {
    session_user(state, headers, tenant_id).await.is_some()
}

/// The user (id, email) of the session cookie, if it is a valid, unrevoked session of an active
/// user of `tenant_id`.
async fn session_user(
    state: &AppState,
    headers: &HeaderMap,
    tenant_id: Option<Uuid>,
) -> Option<(Uuid, Option<String>)> {
    let token = sync_web::csrf::cookie(headers, super::SESSION_COOKIE)?;
    let claims = state.keys.verify(token).await.ok()?;
    let user_id: Uuid = claims.sub.parse().ok()?;
    let valid = claims.kind == crate::identity::keys::TokenKind::User
        && claims.tid == tenant_id
        && !super::is_revoked(state, &claims.jti).await.unwrap_or(true)
        && super::load_user_caller(state, user_id)
            .await
            .ok()
            .flatten()
            .is_some_and(|u| u.tenant_id == tenant_id);
    valid.then_some((user_id, claims.email))
}

/// `GET /` on a tenant's host: where a visit to the tenant's address starts. Signed in: the
/// tenant's apps (`sync_contract::suite_links`: the registered apps whose feature the tenant
/// has, and `WRAPPER_PORTAL_APPS` for apps not registered yet). Not signed in: the sign-in page,
/// which returns here.
#[utoipa::path(get, path = "/", tag = "pages", security(()), responses((status = 200, description = "The tenant's start page: its apps when signed in", body = String, content_type = "text/html"), (status = 303, description = "Not signed in: to the sign-in page")))]
pub(crate) async fn portal(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let tenant = match page_tenant(&state, &headers).await {
        Ok(t) => t,
        Err(page) => return page,
    };
    let Some((_, email)) = session_user(&state, &headers, Some(tenant.tenant_id)).await else {
        return see_other("/auth/login?return_to=%2F");
    };
    // The registered apps (their manifests) the tenant has the feature for, then the
    // configured ones not registered yet: the same list as every app's dashboard.
    let registered = match state.db.acquire().await {
        Ok(mut conn) => crate::model::apps::all(&mut conn).await.unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let configured = sync_web::page::Pages::parse_suite(&state.settings.portal_apps);
    let listed = sync_contract::suite_links(&registered, &tenant.features, &configured);
    let apps: String = listed
        .iter()
        .map(|(title, path)| {
            format!(
                r#"<li><a class="app" href="{}">{}</a></li>"#,
                escape(path),
                escape(title)
            )
        })
        .collect();
    let body = format!(
        r#"<h1 id="tenant-name">{name}</h1>
<p class="muted">Signed in as <span id="user-email">{email}</span></p>
<ul id="apps">{apps}</ul>
<form method="post" action="/auth/logout"><input type="hidden" name="return_to" value="/"><button type="submit" class="secondary" id="sign-out">Sign out</button></form>"#,
        name = escape(&tenant.name),
        email = escape(email.as_deref().unwrap_or_default()),
    );
    html(StatusCode::OK, &tenant.name, &body)
}

fn render_login(
    state: &AppState,
    tenant: Option<&DomainInfo>,
    return_to: &str,
    email: &str,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let name = tenant.map_or("Tenantsync", |t| t.name.as_str());
    let mut body = format!(
        r#"<h1>Sign in to {}</h1>
<p class="muted">One sign-in for every app of your organisation.</p>"#,
        escape(name)
    );
    if let Some(error) = error {
        body.push_str(&format!(
            r#"<p class="error" id="error" role="alert">{}</p>"#,
            escape(error)
        ));
    }
    body.push_str(&format!(
        r#"<form method="post" action="/auth/login" id="login">
<input type="hidden" name="return_to" value="{}">
<label for="email">Email</label>
<input type="email" id="email" name="email" value="{}" autocomplete="username" required autofocus>
<label for="password">Password</label>
<input type="password" id="password" name="password" autocomplete="current-password" required>
<button type="submit" id="sign-in">Sign in</button>
</form>"#,
        escape(return_to),
        escape(email)
    ));
    if let Some(tenant) = tenant {
        let providers = state.oidc.offered_to(&tenant.subdomain);
        if !providers.is_empty() {
            body.push_str(r#"<p class="muted">or</p>"#);
        }
        for (id, display) in providers {
            body.push_str(&format!(
                r#"<p><a class="button secondary" id="provider-{id}" href="/auth/oidc/{id}/start?return_to={ret}">Sign in with {display}</a></p>"#,
                id = escape(id),
                ret = url_encode(return_to),
                display = escape(display),
            ));
        }
    }
    html(status, &format!("Sign in · {name}"), &body)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct LoginForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    return_to: Option<String>,
}

/// The sign-in form's post: on success the session cookie and a redirect to `return_to`; on
/// failure the page again with the reason (and nothing set).
pub(crate) async fn login_form(
    state: &AppState,
    ctx: &Ctx,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let Ok(form) = serde_urlencoded::from_bytes::<LoginForm>(body) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Sign-in refused",
            "the form could not be read",
        );
    };
    let return_to = match return_address(form.return_to.as_deref(), headers) {
        Ok(r) => r,
        Err(refused) => return refused.into_response(),
    };
    let result: ApiResult<Response> =
        async {
            let (tenant, tenant_id) = sign_in_scope(state, headers).await?;
            let email = form.email.trim().to_lowercase();
            let user =
                match super::session::check_password(state, ctx, tenant_id, &email, form.password)
                    .await
                {
                    Err(ApiError::TooManyRequests { retry_after }) => {
                        return Ok(render_login(
                            state,
                            tenant.as_ref(),
                            &return_to,
                            &email,
                            Some(&format!(
                                "Too many failed attempts. Try again in {retry_after} seconds."
                            )),
                            StatusCode::TOO_MANY_REQUESTS,
                        ));
                    }
                    other => other?,
                };
            let Some(user_id) = user else {
                return Ok(render_login(
                    state,
                    tenant.as_ref(),
                    &return_to,
                    &email,
                    Some("The email or password is not right."),
                    StatusCode::UNAUTHORIZED,
                ));
            };
            let token = super::session::session_token(state, user_id, tenant_id, email).await?;
            let mut response = see_other(&return_to);
            super::session::set_cookie(
                state,
                &mut response,
                &token,
                state.settings.session_ttl_secs as i64,
                tenant_id.is_none(),
            );
            Ok(response)
        }
        .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct LogoutForm {
    return_to: Option<String>,
}

/// After the sign-out form: back to the sign-in page, which returns to `return_to` afterwards.
pub(crate) fn after_logout(headers: &HeaderMap, body: &[u8]) -> Response {
    let requested = serde_urlencoded::from_bytes::<LogoutForm>(body)
        .ok()
        .and_then(|f| f.return_to);
    let return_to = safe_return(requested.as_deref(), host(headers)).unwrap_or_else(|_| "/".into());
    see_other(&format!("/auth/login?return_to={}", url_encode(&return_to)))
}

#[cfg(test)]
mod tests {
    use super::safe_return;

    const HOST: &str = "acme.yourapp.test:8088";

    #[test]
    fn paths_and_this_host_are_accepted_as_paths() {
        for (raw, expected) in [
            (None, "/"),
            (Some(""), "/"),
            (Some("/crm/"), "/crm/"),
            (Some("/hrms/?tab=1#x"), "/hrms/?tab=1#x"),
            (Some("http://acme.yourapp.test:8088/crm/"), "/crm/"),
            (Some("HTTPS://ACME.yourapp.test:8088"), "/"),
            (Some("http://acme.yourapp.test:8088?x=1"), "/?x=1"),
        ] {
            assert_eq!(safe_return(raw, HOST).as_deref(), Ok(expected), "{raw:?}");
        }
    }

    #[test]
    fn other_hosts_and_tricks_are_refused() {
        for raw in [
            "https://evil.test/",
            "//evil.test/x",
            "/\\evil.test",
            "\\\\evil.test",
            "http://acme.yourapp.test:8088@evil.test/",
            "http://globex.yourapp.test:8088/crm/",
            "http://acme.yourapp.test:8088.evil.test/",
            "http://acme.yourapp.test:8088//evil.test",
            "javascript:alert(1)",
            "/crm/\r\nSet-Cookie: x=y",
            "evil.test",
        ] {
            assert!(safe_return(Some(raw), HOST).is_err(), "{raw:?} accepted");
        }
        assert!(safe_return(Some("http://x/"), "").is_err());
    }
}
