//! Server-rendered page responses and an app's page settings: the HTML response every page
//! answers with (no caching, no framing, a strict content security policy), `303` redirects,
//! and [`Pages`] — where an app is served and where its users sign in.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use crate::html::{escape, page, url_encode};

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
    }
}
