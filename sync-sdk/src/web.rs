//! Browser pages for apps (feature `axum`): the signed-in user of an HTML page, and what a
//! browser gets instead when there is none.
//!
//! [`PageUser`] is [`TenantUser`] for pages: with no session, or an expired or invalid one, the
//! browser is sent to the wrapper's sign-in page with a return address (this page, under the
//! app's public path), and comes back here signed in; a session of another tenant gets a `403`
//! page (and the attempt is audited as for the API). An app's state provides the [`Jwks`] and
//! the [`Pages`] settings through `FromRef`:
//!
//! ```no_run
//! use std::sync::Arc;
//! use axum::{Router, extract::FromRef, response::Response, routing::get};
//! use sync_sdk::{auth::Jwks, web::{PageUser, Pages}};
//!
//! #[derive(Clone)]
//! struct State { jwks: Arc<Jwks>, pages: Arc<Pages> }
//! impl FromRef<State> for Arc<Jwks> { fn from_ref(s: &State) -> Self { s.jwks.clone() } }
//! impl FromRef<State> for Arc<Pages> { fn from_ref(s: &State) -> Self { s.pages.clone() } }
//!
//! async fn dashboard(user: PageUser) -> Response {
//!     let body = format!("<p>Signed in as {}</p>", sync_sdk::html::escape(&user.0.user_id.to_string()));
//!     sync_sdk::web::html(axum::http::StatusCode::OK, "Dashboard", &body)
//! }
//! # fn router(state: State) -> Router { Router::new().route("/", get(dashboard)).with_state(state) }
//! ```

use std::sync::Arc;

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};

use crate::{
    auth::{AuthError, Jwks, TenantUser},
    html::{escape, page, url_encode},
};

/// Where an app's pages live and where its users sign in.
#[derive(Debug, Clone)]
pub struct Pages {
    /// The path prefix the edge serves the app under, e.g. `/crm` (NGINX strips it).
    pub public_path: String,
    /// The wrapper's sign-in page, e.g. `/auth/login` (same host, through the edge).
    pub login_url: String,
    /// The wrapper's sign-out endpoint, e.g. `/auth/logout`.
    pub logout_url: String,
    /// The suite's apps linked from every dashboard: `(title, public path)`.
    pub suite: Vec<(String, String)>,
}

impl Pages {
    /// Pages of an app served under `public_path`, signing in at the wrapper's `/auth/login`.
    pub fn new(public_path: &str) -> Self {
        Self {
            public_path: format!("/{}", public_path.trim_matches('/'))
                .trim_end_matches('/')
                .to_owned(),
            login_url: "/auth/login".into(),
            logout_url: "/auth/logout".into(),
            suite: Vec::new(),
        }
    }

    /// Parse suite links written as `CRM=/crm/,HRMS=/hrms/`.
    pub fn parse_suite(text: &str) -> Vec<(String, String)> {
        text.split(',')
            .filter_map(|pair| pair.split_once('='))
            .map(|(title, path)| (title.trim().to_owned(), path.trim().to_owned()))
            .filter(|(title, path)| !title.is_empty() && path.starts_with('/'))
            .collect()
    }

    /// The public address of an app path (`/` → `/crm/`).
    pub fn public(&self, path_and_query: &str) -> String {
        format!("{}{}", self.public_path, path_and_query)
    }

    /// The sign-in page, returning to `path_and_query` of this app afterwards.
    pub fn login_redirect(&self, path_and_query: &str) -> Response {
        see_other(&format!(
            "{}?return_to={}",
            self.login_url,
            url_encode(&self.public(path_and_query))
        ))
    }

    /// A sign-out button (a form posting to the wrapper; it clears the session of every app).
    pub fn logout_form(&self, return_to_path: &str) -> String {
        format!(
            r#"<form method="post" action="{}"><input type="hidden" name="return_to" value="{}"><button type="submit" class="secondary" id="sign-out">Sign out</button></form>"#,
            escape(&self.logout_url),
            escape(&self.public(return_to_path)),
        )
    }
}

/// The content security policy of every page: no scripts at all, inline styles only, forms
/// post to the page's own origin, and no framing (no clickjacking of the sign-in form).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; \
     img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// An HTML page response (not cached: pages show one user's data).
pub fn html(status: StatusCode, title: &str, body: &str) -> Response {
    let mut response = (status, page(title, body)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// A `303 See Other` to `location` (a path on this host), not cached.
pub fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The top of an app's dashboard: the tenant's name and the signed-in user (from the synced
/// copy), links to the suite's apps ([`Pages::suite`]) and the sign-out button.
pub async fn dashboard_header<S: crate::store::TenantStore>(
    store: &S,
    pages: &Pages,
    user: &TenantUser,
    app_title: &str,
) -> String {
    let t = user.tenant_id;
    let tenant_name = crate::store::tenant(store, t)
        .await
        .map_or_else(|| t.to_string(), |tenant| tenant.name);
    let person = crate::store::user(store, t, user.user_id).await;
    let name = person
        .as_ref()
        .map(|p| p.full_name.clone())
        .unwrap_or_default();
    let email = person
        .as_ref()
        .map(|p| p.email.clone())
        .or_else(|| user.email.clone())
        .unwrap_or_default();
    let links: String = pages
        .suite
        .iter()
        .map(|(title, path)| format!(r#"<a href="{}">{}</a>"#, escape(path), escape(title)))
        .collect();
    format!(
        r#"<nav>{links}{logout}</nav>
<h1><span id="tenant-name">{tenant}</span> · {app}</h1>
<p class="muted">Signed in as <strong id="user-name">{name}</strong> (<span id="user-email">{email}</span>)</p>"#,
        logout = pages.logout_form("/"),
        tenant = escape(&tenant_name),
        app = escape(app_title),
        name = escape(&name),
        email = escape(&email),
    )
}

/// The signed-in user of a page (see the module docs).
#[derive(Debug, Clone)]
pub struct PageUser(pub TenantUser);

/// What a browser gets when a page has no user: the sign-in page, or an error page.
#[derive(Debug)]
pub struct PageRejection(Response);

impl IntoResponse for PageRejection {
    fn into_response(self) -> Response {
        self.0
    }
}

/// The page a browser sees for a refused session.
pub fn refusal(pages: &Pages, error: AuthError, path_and_query: &str) -> Response {
    match error {
        AuthError::Missing | AuthError::Invalid(_) | AuthError::Revoked(_) => {
            pages.login_redirect(path_and_query)
        }
        AuthError::NoTenant => html(
            StatusCode::BAD_REQUEST,
            "Unknown workspace",
            r#"<h1>Unknown workspace</h1><p class="error">Open this app from your organisation's own address.</p>"#,
        ),
        AuthError::WrongTenant => html(
            StatusCode::FORBIDDEN,
            "Access denied",
            &format!(
                r#"<h1>Access denied</h1>
<p class="error" id="error">You are signed in to another organisation. This workspace belongs to a different tenant, and the attempt has been recorded.</p>
{}"#,
                pages.logout_form(path_and_query)
            ),
        ),
        AuthError::Forgery(e) => html(
            StatusCode::FORBIDDEN,
            "Request refused",
            &format!(
                r#"<h1>Request refused</h1><p class="error">{}</p>"#,
                escape(&e.to_string())
            ),
        ),
        AuthError::Keys(_) | AuthError::Unavailable(_) => html(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in unavailable",
            r#"<h1>Sign-in unavailable</h1><p class="error">Sessions cannot be checked right now; please try again shortly.</p>"#,
        ),
    }
}

impl<S> FromRequestParts<S> for PageUser
where
    Arc<Jwks>: FromRef<S>,
    Arc<Pages>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = PageRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, PageRejection> {
        match TenantUser::from_request_parts(parts, state).await {
            Ok(user) => Ok(PageUser(user)),
            Err(e) => {
                let pages = Arc::<Pages>::from_ref(state);
                let path = parts
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned();
                Err(PageRejection(refusal(&pages, e, &path)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_in_returns_to_the_public_address_of_the_page() {
        let pages = Pages::new("crm/");
        assert_eq!(pages.public("/"), "/crm/");
        let r = pages.login_redirect("/accounts?x=1");
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(
            r.headers()[header::LOCATION],
            "/auth/login?return_to=%2Fcrm%2Faccounts%3Fx%3D1"
        );
        assert!(pages.logout_form("/").contains(r#"value="/crm/""#));
        assert_eq!(
            Pages::parse_suite("CRM=/crm/, HRMS = /hrms/,bad,x=http://evil"),
            vec![
                ("CRM".into(), "/crm/".into()),
                ("HRMS".into(), "/hrms/".into())
            ]
        );
        let expired = refusal(&pages, AuthError::Invalid("ExpiredSignature".into()), "/");
        assert_eq!(expired.status(), StatusCode::SEE_OTHER);
        assert_eq!(
            refusal(&pages, AuthError::WrongTenant, "/").status(),
            StatusCode::FORBIDDEN
        );
    }
}
