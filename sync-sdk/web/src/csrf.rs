//! Cross-site request forgery defence shared by the wrapper and the app layer: an Origin check.
//!
//! A browser attaches the session cookie (set on the parent domain) to every request to any
//! tenant subdomain, whoever made the page that sends it. So a state-changing request that a
//! browser could have been made to send — it carries the session cookie, or it is a form post —
//! must come from a page of the very host it is sent to: its `Origin` (or, when a browser leaves
//! `Origin` out, its `Referer`) must name the request's `Host`. Requests that authenticate with
//! an `Authorization` header are not ambient and pass, as do safe methods.
//!
//! Ports are not compared: cookies are not port-scoped either, and NGINX may pass the host
//! without the port.
//!
//! ```
//! use axum::http::{Method, header::{HeaderMap, HeaderValue}};
//! use sync_web::csrf::check;
//!
//! let mut h = HeaderMap::new();
//! h.insert("host", HeaderValue::from_static("acme.yourapp.test"));
//! h.insert("cookie", HeaderValue::from_static("tsync_session=abc"));
//! h.insert("origin", HeaderValue::from_static("https://evil.test"));
//! assert!(check(&Method::POST, &h).is_err());
//! h.insert("origin", HeaderValue::from_static("https://acme.yourapp.test"));
//! assert!(check(&Method::POST, &h).is_ok());
//! assert!(check(&Method::GET, &HeaderMap::new()).is_ok());
//! ```

use axum::http::{
    Method,
    header::{self, HeaderMap},
};

/// The session cookie the wrapper sets (on the parent domain).
pub const SESSION_COOKIE: &str = "tsync_session";

/// Why a request was refused as a possible forgery.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrfError {
    /// The request names no origin at all.
    #[error("a browser request that changes state must carry an Origin or Referer header")]
    NoOrigin,
    /// The request comes from another site's page.
    #[error("cross-origin request refused: {0} may not post to this host")]
    CrossOrigin(String),
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The Bearer token of the request's `Authorization` header, when it carries one (the scheme is
/// case-insensitive; an empty token is none). Authentication uses it before the cookie, so a
/// request with one is authenticated by it alone.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Whether a browser could have sent this request on its own (cookie or form), so that it needs
/// the origin check. Only a Bearer token makes a request non-ambient: any other `Authorization`
/// (Basic, an empty Bearer) leaves the cookie to authenticate it.
pub fn is_ambient(method: &Method, headers: &HeaderMap) -> bool {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return false;
    }
    if bearer(headers).is_some() {
        return false;
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    // The three content types a cross-site form may send without a CORS preflight.
    let form = [
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "text/plain",
    ]
    .iter()
    .any(|t| content_type.starts_with(t));
    form || cookie(headers, SESSION_COOKIE).is_some()
}

/// The lower-cased host name of an origin or URL (`scheme://host[:port][/...]`).
fn host_of_url(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    Some(host_name(authority))
}

/// The lower-cased host name of a `Host` value (`host[:port]`).
fn host_name(authority: &str) -> String {
    let host = if authority.starts_with('[') {
        authority
            .split(']')
            .next()
            .map_or(authority, |h| h)
            .trim_start_matches('[')
    } else {
        authority.split(':').next().unwrap_or(authority)
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Refuse a state-changing browser request that does not come from a page of its own host.
pub fn check(method: &Method, headers: &HeaderMap) -> Result<(), CsrfError> {
    if !is_ambient(method, headers) {
        return Ok(());
    }
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(host) = text(header::HOST).map(host_name).filter(|h| !h.is_empty()) else {
        return Err(CsrfError::NoOrigin);
    };
    let claimed = match (text(header::ORIGIN), text(header::REFERER)) {
        (Some(origin), _) if origin != "null" => origin,
        (Some(_), _) => return Err(CsrfError::CrossOrigin("an opaque origin".into())),
        (None, Some(referer)) => referer,
        (None, None) => return Err(CsrfError::NoOrigin),
    };
    match host_of_url(claimed) {
        Some(h) if h == host => Ok(()),
        _ => Err(CsrfError::CrossOrigin(claimed.chars().take(200).collect())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    const HOST: (&str, &str) = ("host", "acme.yourapp.test:8088");
    const COOKIE: (&str, &str) = ("cookie", "a=b; tsync_session=tok");
    const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

    #[test]
    fn same_host_passes_whatever_the_port() {
        for origin in [
            "http://acme.yourapp.test:8088",
            "https://acme.yourapp.test",
            "http://ACME.yourapp.test:1",
        ] {
            let mut h = headers(&[HOST, COOKIE]);
            h.insert("origin", HeaderValue::from_str(origin).unwrap());
            assert_eq!(check(&Method::POST, &h), Ok(()), "{origin}");
        }
        let h = headers(&[
            HOST,
            FORM,
            ("referer", "http://acme.yourapp.test:8088/crm/?x=1"),
        ]);
        assert_eq!(check(&Method::POST, &h), Ok(()));
    }

    #[test]
    fn other_hosts_and_missing_origins_are_refused() {
        for origin in [
            "http://evil.test",
            "http://globex.yourapp.test",
            "http://acme.yourapp.test.evil.test",
            "http://acme.yourapp.test@evil.test",
        ] {
            let mut h = headers(&[HOST, COOKIE]);
            h.insert("origin", HeaderValue::from_str(origin).unwrap());
            assert!(
                matches!(check(&Method::DELETE, &h), Err(CsrfError::CrossOrigin(_))),
                "{origin}"
            );
        }
        let h = headers(&[HOST, COOKIE, ("origin", "null")]);
        assert!(check(&Method::POST, &h).is_err());
        assert_eq!(
            check(&Method::PATCH, &headers(&[HOST, FORM])),
            Err(CsrfError::NoOrigin)
        );
        let h = headers(&[HOST, ("content-type", "text/plain;charset=utf-8")]);
        assert_eq!(check(&Method::POST, &h), Err(CsrfError::NoOrigin));
    }

    #[test]
    fn bearer_json_and_safe_requests_need_no_origin() {
        let bearer = headers(&[HOST, COOKIE, ("authorization", "Bearer x")]);
        assert_eq!(check(&Method::POST, &bearer), Ok(()));
        for not_bearer in ["Basic YTpi", "Bearer ", "Bearer", "Token x"] {
            let mut h = headers(&[HOST, COOKIE, ("origin", "http://evil.test")]);
            h.insert("authorization", HeaderValue::from_static(not_bearer));
            assert!(check(&Method::POST, &h).is_err(), "{not_bearer}");
        }
        let json = headers(&[HOST, ("content-type", "application/json")]);
        assert_eq!(check(&Method::POST, &json), Ok(()));
        assert_eq!(check(&Method::GET, &headers(&[HOST, COOKIE])), Ok(()));
        assert_eq!(cookie(&headers(&[COOKIE]), "tsync_session"), Some("tok"));
        assert_eq!(cookie(&headers(&[COOKIE]), "tsync"), None);
    }
}
