//! Reading a JSON body so that every refusal names the field at fault: the wrapper's API and
//! every app's handlers read bodies through [`parse`], so a bad body is `400` with `field`
//! everywhere (axum's `Json` answers `422` naming nothing). An app takes [`JsonBody`] as an
//! extractor.
//!
//! ```
//! use sync_web::body::parse;
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct NewNote { title: String, pinned: bool }
//!
//! let refused = parse::<NewNote>(br#"{"title": "x", "pinned": "yes"}"#).err().unwrap();
//! assert_eq!(refused.field, "pinned");
//! let missing = parse::<NewNote>(br#"{"title": "x"}"#).err().unwrap();
//! assert_eq!(missing.field, "pinned");
//! let unknown = parse::<NewNote>(br#"{"title": "x", "pinned": true, "tags": []}"#).err().unwrap();
//! assert_eq!(unknown.field, "tags");
//! ```

use axum::{
    extract::{FromRequest, Request},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::de::DeserializeOwned;

/// Why a body was refused: the field at fault (`body` for the whole of it) and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct BodyError {
    /// The field, as a path (`admin.email`, `items[2].name`), or `body`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl BodyError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl IntoResponse for BodyError {
    fn into_response(self) -> Response {
        crate::problem::problem(
            StatusCode::BAD_REQUEST,
            Some(&self.field),
            &format!("{}: {}", self.field, self.message),
        )
    }
}

/// `bytes` as JSON of `T`, or the field at fault.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, BodyError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| BodyError::new("body", format!("not JSON: {e}")))?;
    typed(value)
}

/// A parsed JSON body as `T`: refused, naming the field, when it is not an object, when any
/// string in it (key or value) holds a NUL character (which PostgreSQL cannot store as text),
/// or when it does not fit `T`.
pub fn typed<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, BodyError> {
    // serde would also read a struct from an array (`[null, null]`): every body is an object.
    if !value.is_object() {
        return Err(BodyError::new("body", "must be a JSON object"));
    }
    if let Some(field) = nul_field(&value, String::new()) {
        return Err(BodyError::new(
            field,
            "must not contain NUL characters (\\u0000)",
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        // A missing or unknown field is reported at its parent; name the field itself.
        let named = ["missing field `", "unknown field `"]
            .iter()
            .find_map(|p| message.split(p).nth(1))
            .and_then(|rest| rest.split('`').next());
        // (serde_path_to_error's path already ends at an unknown key, not at a missing one.)
        let ends_with = |name: &str| path == name || path.ends_with(&format!(".{name}"));
        let field = match (path.as_str(), named) {
            (".", Some(name)) => name.to_owned(),
            (_, Some(name)) if ends_with(name) => path,
            (_, Some(name)) => format!("{path}.{name}"),
            (".", None) => "body".to_owned(),
            (_, None) => path,
        };
        BodyError::new(field, message)
    })
}

/// The path (`a.b[2].c`, or the key itself) of the first string holding a NUL.
fn nul_field(value: &serde_json::Value, at: String) -> Option<String> {
    use serde_json::Value;
    let named = |at: &str| {
        if at.is_empty() {
            "body".to_owned()
        } else {
            at.to_owned()
        }
    };
    match value {
        Value::String(s) if s.contains('\0') => Some(named(&at)),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_field(v, format!("{at}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let path = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            if k.contains('\0') {
                Some(named(&at))
            } else {
                nul_field(v, path)
            }
        }),
        _ => None,
    }
}

/// A JSON body as `T`, for handlers: a body that is not JSON, not an object, or does not fit
/// `T` is answered `400` as a problem naming the field ([`BodyError`]).
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        parse(&bytes).map(Self).map_err(IntoResponse::into_response)
    }
}
