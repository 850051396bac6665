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
    http::{StatusCode, request::Parts},
    response::{IntoResponse, Response},
};

use crate::{
    auth::{AuthError, Jwks, TenantUser},
    html::escape,
};

pub use sync_web::page::{CONTENT_SECURITY_POLICY, Pages, html, see_other};

/// The top of an app's dashboard: the tenant's name and the signed-in user (from the synced
/// copy), links to the suite's apps ([`Pages::suite`]) and the sign-out button.
pub async fn dashboard_header<S: crate::store::TenantStore>(
    store: &S,
    pages: &Pages,
    user: &TenantUser,
    app_title: &str,
) -> String {
    header_with_links(store, pages, user, app_title, &pages.suite).await
}

/// [`dashboard_header`] linking to `links` (`(title, path)`) rather than [`Pages::suite`].
pub async fn header_with_links<S: crate::store::TenantStore>(
    store: &S,
    pages: &Pages,
    user: &TenantUser,
    app_title: &str,
    links: &[(String, String)],
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
    let links: String = links
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
        AuthError::Suspended => html(
            StatusCode::FORBIDDEN,
            "Organisation suspended",
            r#"<h1>Organisation suspended</h1><p class="error" id="error">This organisation is suspended. Its data is kept, but nobody can use it until it is resumed: ask your administrator.</p>"#,
        ),
        AuthError::FeatureMissing(feature) => html(
            StatusCode::FORBIDDEN,
            "Not in your plan",
            &format!(
                r#"<h1>Not in your plan</h1><p class="error" id="error">This organisation's plan does not include {}: ask your administrator.</p>"#,
                escape(&feature)
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
    fn an_expired_session_signs_in_again_and_another_tenant_is_refused() {
        let pages = Pages::new("crm/");
        let expired = refusal(&pages, AuthError::Invalid("ExpiredSignature".into()), "/");
        assert_eq!(expired.status(), StatusCode::SEE_OTHER);
        assert_eq!(
            refusal(&pages, AuthError::WrongTenant, "/").status(),
            StatusCode::FORBIDDEN
        );
    }
}
