//! Serving app requests by tenant availability (feature `axum`).
//!
//! [`serve_tenant`] loads the tenant on its first visit and runs the app's handler; when the
//! wrapper is unreachable a loaded tenant is still served from the store and the response carries
//! [`DEGRADED_HEADER`], while a tenant never loaded gets `503` with `Retry-After`.

use std::{future::Future, sync::Arc};

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use uuid::Uuid;

use crate::{
    loader::{Availability, Loader},
    store::{SyncState, TenantStore},
    wrapper_client::LoadError,
};

/// Set on responses served from local data while the wrapper is unreachable.
pub const DEGRADED_HEADER: &str = "x-tsync-degraded";

pub use sync_web::body::{BodyError, JsonBody};
pub use sync_web::problem::{problem, problems_only};

/// `bytes` as a JSON body of `T`, or [`AppError::Body`] naming the field at fault (an object,
/// no NUL in any string, fitting `T`: the wrapper's own rules). For handlers that also need the
/// raw bytes; others take [`JsonBody`] as an extractor.
pub fn parse_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
    Ok(sync_web::body::parse(bytes)?)
}

/// An app handler's failure, answered as a problem (`IntoResponse`), so handlers return
/// `AppResult<T>` and use `?` on store, Mongo and credit errors.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A field of the request is invalid (400 naming it); nothing was written.
    #[error("{field}: {message}")]
    Invalid {
        /// The field at fault (JSON name, or a header).
        field: &'static str,
        /// Why.
        message: String,
    },
    /// The JSON body does not fit (400 naming the field, e.g. `memberIds[2]`); nothing was
    /// written. `?` on [`parse_body`] gives it.
    #[error(transparent)]
    Body(#[from] sync_web::body::BodyError),
    /// Not found (404).
    #[error("{0}")]
    NotFound(&'static str),
    /// Not allowed (403).
    #[error("{0}")]
    Forbidden(&'static str),
    /// Conflicts with what exists (409), naming the field when there is one.
    #[error("{message}")]
    Conflict {
        /// The field at fault.
        field: Option<&'static str>,
        /// Why.
        message: String,
    },
    /// The tenant's credits do not cover the operation (402, `x-credit-balance`).
    #[error("not enough credits")]
    InsufficientCredits {
        /// The balance at the wrapper.
        balance: i64,
    },
    /// A dependency (the store, the wrapper) did not answer (503); details are logged.
    #[error("{0}")]
    Unavailable(String),
    /// The app itself is wrong, e.g. it consumed an operation its manifest does not declare
    /// (500); details are logged, not shown.
    #[error("{0}")]
    Internal(String),
}

impl AppError {
    /// A 400 naming `field`.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            message: message.into(),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            AppError::Invalid { field, message } => {
                problem(StatusCode::BAD_REQUEST, Some(field), &message)
            }
            AppError::Body(refused) => refused.into_response(),
            AppError::NotFound(what) => problem(StatusCode::NOT_FOUND, None, what),
            AppError::Forbidden(why) => problem(StatusCode::FORBIDDEN, None, why),
            AppError::Conflict { field, message } => problem(StatusCode::CONFLICT, field, &message),
            AppError::InsufficientCredits { balance } => {
                let mut r = problem(StatusCode::PAYMENT_REQUIRED, None, "not enough credits");
                if let Ok(v) = HeaderValue::from_str(&balance.to_string()) {
                    r.headers_mut().insert("x-credit-balance", v);
                }
                r
            }
            AppError::Internal(detail) => {
                tracing::error!(%detail, "the app failed");
                problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    None,
                    "the app could not complete the request",
                )
            }
            AppError::Unavailable(detail) => {
                tracing::warn!(%detail, "a dependency did not answer");
                problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    None,
                    "please try again shortly",
                )
            }
        }
    }
}

impl From<crate::store::StoreError> for AppError {
    fn from(e: crate::store::StoreError) -> Self {
        AppError::Unavailable(e.to_string())
    }
}

#[cfg(feature = "mongo")]
impl From<mongodb::error::Error> for AppError {
    fn from(e: mongodb::error::Error) -> Self {
        AppError::Unavailable(e.to_string())
    }
}

impl From<crate::credits::offline::CreditError> for AppError {
    fn from(e: crate::credits::offline::CreditError) -> Self {
        match e {
            crate::credits::offline::CreditError::Insufficient { balance } => {
                AppError::InsufficientCredits { balance }
            }
            refused @ crate::credits::offline::CreditError::Refused { .. } => {
                AppError::Internal(refused.to_string())
            }
            other => AppError::Unavailable(other.to_string()),
        }
    }
}

/// What an app handler returns.
pub type AppResult<T> = Result<T, AppError>;

/// `?cursor=<last id of the previous page>&limit=<n>` of an app's paged listing, as an
/// extractor: an unreadable query is a problem naming `query`, a limit outside 1–500 one naming
/// `limit`. Answers are `{"items": [...], "nextCursor": <id or null>}` ([`PageQuery::page`]).
#[derive(Debug, Clone)]
pub struct PageQuery {
    /// The last id of the previous page.
    pub cursor: Option<String>,
    /// Page size (1–500, default 50).
    pub limit: i64,
}

#[derive(serde::Deserialize)]
struct RawPageQuery {
    cursor: Option<String>,
    limit: Option<i64>,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PageQuery {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Response> {
        let axum::extract::Query(raw) =
            axum::extract::Query::<RawPageQuery>::from_request_parts(parts, state)
                .await
                .map_err(|e| problem(StatusCode::BAD_REQUEST, Some("query"), &e.body_text()))?;
        let limit = raw.limit.unwrap_or(50);
        if !(1..=500).contains(&limit) {
            return Err(problem(
                StatusCode::BAD_REQUEST,
                Some("limit"),
                "must be between 1 and 500",
            ));
        }
        Ok(Self {
            cursor: raw.cursor,
            limit,
        })
    }
}

impl PageQuery {
    /// This page of `tenant_id`'s documents of an app collection, in `_id` order after the
    /// cursor, one more than `limit` (so [`page`](Self::page) sees whether more follow).
    #[cfg(feature = "mongo")]
    pub async fn find(
        &self,
        collection: &mongodb::Collection<mongodb::bson::Document>,
        tenant_id: Uuid,
    ) -> mongodb::error::Result<mongodb::Cursor<mongodb::bson::Document>> {
        use mongodb::bson::doc;
        let mut filter = doc! {"tenantId": tenant_id.to_string()};
        if let Some(after) = &self.cursor {
            filter.insert("_id", doc! {"$gt": after});
        }
        collection
            .find(filter)
            .sort(doc! {"_id": 1})
            .limit(self.limit + 1)
            .await
    }

    /// The page of `items` (fetched with `limit + 1` to see whether more follow) as the answer
    /// body, with the cursor taken from the last item by `id`.
    pub fn page(
        mut items: Vec<serde_json::Value>,
        limit: i64,
        id: impl Fn(&serde_json::Value) -> serde_json::Value,
    ) -> serde_json::Value {
        let more = items.len() as i64 > limit;
        items.truncate(limit.max(0) as usize);
        let next = if more { items.last().map(id) } else { None };
        serde_json::json!({"items": items, "nextCursor": next})
    }
}

/// Serve a request for `tenant_id`: load it if needed, then run `handler` with its sync state.
pub async fn serve_tenant<S, F, Fut, R>(
    loader: &Arc<Loader<S>>,
    tenant_id: Uuid,
    handler: F,
) -> Response
where
    S: TenantStore,
    F: FnOnce(SyncState) -> Fut,
    Fut: Future<Output = R>,
    R: IntoResponse,
{
    match served(tenant_id, loader.availability(tenant_id).await) {
        Ok((state, degraded)) => {
            let mut response = handler(state).await.into_response();
            if degraded {
                mark_degraded(&mut response);
            }
            response
        }
        Err(refusal) => *refusal,
    }
}

/// What serving a tenant of this availability means: its sync state and whether it is served
/// degraded (from the store, the wrapper unreachable), or the refusal to answer instead (503
/// with `Retry-After` for a tenant never loaded, 404 for a tenant the wrapper does not know).
pub(crate) fn served(
    tenant_id: Uuid,
    availability: Result<Availability, LoadError>,
) -> Result<(SyncState, bool), Box<Response>> {
    match availability {
        Ok(Availability::Fresh(state)) => Ok((state, false)),
        Ok(Availability::Degraded(state)) => Ok((state, true)),
        Ok(Availability::Unavailable { retry_after }) => {
            let mut response = problem(
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                "this tenant is not loaded yet and the identity service is unreachable",
            );
            if let Ok(v) = HeaderValue::from_str(&retry_after.as_secs().max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
            Err(Box::new(response))
        }
        Err(LoadError::NotFound) => Err(Box::new(problem(
            StatusCode::NOT_FOUND,
            None,
            "no such tenant",
        ))),
        Err(e @ LoadError::FeatureMissing(_)) => Err(Box::new(problem(
            StatusCode::FORBIDDEN,
            Some("feature"),
            &e.to_string(),
        ))),
        Err(e) => {
            tracing::error!(%tenant_id, error = %e, "tenant could not be served");
            Err(Box::new(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                "the tenant could not be loaded",
            )))
        }
    }
}

/// Mark `response` as served from local data while the wrapper is unreachable.
pub(crate) fn mark_degraded(response: &mut Response) {
    response.headers_mut().insert(
        DEGRADED_HEADER,
        HeaderValue::from_static("wrapper-unreachable"),
    );
}
