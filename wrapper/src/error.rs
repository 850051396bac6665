//! The API's one error type. Every failure a client sees is an RFC 7807
//! `application/problem+json` body; internal causes are logged with their chain, never leaked.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

/// What went wrong, in the API client's terms.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A field of the request is invalid; nothing was written.
    #[error("invalid field `{field}`: {message}")]
    Validation {
        /// The field (JSON name) at fault.
        field: String,
        /// Why it is refused.
        message: String,
    },
    /// No valid credentials were presented.
    #[error("authentication required")]
    Unauthorized,
    /// The credentials do not allow this.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// The tenant's plan lacks the feature an app needs: the app may not serve, load or charge
    /// it.
    #[error("the tenant's plan does not include the feature '{feature}' that {app} needs")]
    FeatureMissing {
        /// The app's feature.
        feature: String,
        /// The app.
        app: String,
    },
    /// A per-tenant (or per-object) limit is reached; nothing was written.
    #[error("limit reached: at most {max} {what} ({limit})")]
    LimitReached {
        /// The setting that holds the limit, e.g. `WRAPPER_MAX_THRESHOLDS_PER_BALANCE`.
        limit: &'static str,
        /// What is counted, e.g. `thresholds per balance`.
        what: &'static str,
        /// The limit.
        max: i64,
    },
    /// The server is saturated (e.g. every password-hashing slot is busy): try again after
    /// `retry_after` seconds; nothing was checked or written.
    #[error("busy; try again in {retry_after} s")]
    Busy {
        /// Seconds to wait.
        retry_after: u64,
    },
    /// The resource does not exist (or is not visible to the caller).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The balance does not cover the amount; nothing was charged.
    #[error("insufficient credits: balance {balance}, required {required}")]
    InsufficientCredits {
        /// The balance now.
        balance: i64,
        /// What the operation needs.
        required: i64,
    },
    /// The body is not of a type this endpoint reads (JSON); nothing was read.
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// The body is larger than the configured limit; nothing was read.
    #[error("the request body is too large: {0}")]
    PayloadTooLarge(String),
    /// Too many attempts: try again after `retry_after` seconds; nothing was checked.
    #[error("too many attempts; try again in {retry_after} s")]
    TooManyRequests {
        /// Seconds to wait.
        retry_after: u64,
    },
    /// The request conflicts with existing state.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A unique value is taken (409 naming the field); nothing was written.
    #[error("conflict: {message}")]
    Taken {
        /// The field holding the value.
        field: &'static str,
        /// What is taken.
        message: &'static str,
    },
    /// Anything else; details are logged, not returned.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// A validation error for `field`.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Validation {
            field: field.to_owned(),
            message: message.into(),
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::Validation { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::FeatureMissing { .. } => StatusCode::FORBIDDEN,
            Self::LimitReached { .. } => StatusCode::CONFLICT,
            Self::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) | Self::Taken { .. } => StatusCode::CONFLICT,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::InsufficientCredits { .. } => StatusCode::PAYMENT_REQUIRED,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => Self::NotFound("resource"),
            // The call site names what a constraint means (`OnConstraint`); this is the net.
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                Self::Conflict("already exists".to_owned())
            }
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                Self::NotFound("referenced resource")
            }
            _ => Self::Internal(e.into()),
        }
    }
}

/// Unique violations named at the call site, where it is known what each constraint means:
/// `.await.on_constraint(&[("users_email_unique", "email", "a user with this email already exists")])?`
/// (the `ResultExt::on_constraint` of realworld-axum-sqlx, for a list).
pub trait OnConstraint<T> {
    /// A unique violation of one of `constraints` (name, field, message) becomes
    /// [`ApiError::Taken`]; every other error converts as usual.
    fn on_constraint(
        self,
        constraints: &[(&str, &'static str, &'static str)],
    ) -> Result<T, ApiError>;
}

impl<T> OnConstraint<T> for Result<T, sqlx::Error> {
    fn on_constraint(
        self,
        constraints: &[(&str, &'static str, &'static str)],
    ) -> Result<T, ApiError> {
        self.map_err(|e| {
            let taken = match &e {
                sqlx::Error::Database(db) if db.is_unique_violation() => constraints
                    .iter()
                    .find(|(c, ..)| Some(*c) == db.constraint()),
                _ => None,
            };
            if let Some((_, field, message)) = taken {
                return ApiError::Taken { field, message };
            }
            ApiError::from(e)
        })
    }
}

/// Build a problem+json response.
pub fn problem(status: StatusCode, title: &str, detail: serde_json::Value) -> Response {
    let mut body = json!({
        "type": "about:blank",
        "title": title,
        "status": status.as_u16(),
    });
    if let (Some(obj), serde_json::Value::Object(extra)) = (body.as_object_mut(), detail) {
        obj.extend(extra);
    }
    let mut response = (status, Json(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            Self::Validation { field, message } => json!({
                "detail": format!("{field}: {message}"),
                "field": field,
                "errors": [{"field": field, "message": message}],
            }),
            Self::Taken { field, message } => json!({
                "detail": format!("{field}: {message}"),
                "field": field,
                "errors": [{"field": field, "message": message}],
            }),
            Self::FeatureMissing { feature, .. } => json!({
                "detail": self.to_string(), "feature": feature,
            }),
            Self::LimitReached { limit, max, .. } => json!({
                "detail": self.to_string(), "limit": limit, "max": max,
            }),
            Self::InsufficientCredits { balance, required } => json!({
                "detail": self.to_string(), "balance": balance, "required": required,
            }),
            Self::Internal(e) => {
                tracing::error!(error = ?e, "internal error");
                json!({"detail": "internal error; see the server log"})
            }
            other => json!({"detail": other.to_string()}),
        };
        let retry_after = match &self {
            Self::TooManyRequests { retry_after } | Self::Busy { retry_after } => {
                Some(*retry_after)
            }
            _ => None,
        };
        let mut response = problem(status, status.canonical_reason().unwrap_or("error"), detail);
        if let Some(v) = retry_after.and_then(|s| HeaderValue::from_str(&s.to_string()).ok()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
