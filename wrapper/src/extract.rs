//! Reading requests: JSON bodies and query strings whose every refusal is a problem naming the
//! field at fault, and the paging types. Shared by the REST API (`api/`) and sign-in (`auth/`).

use axum::{
    extract::{FromRequest, Request, rejection::JsonRejection},
    http::StatusCode,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

use crate::error::ApiError;

/// A JSON body whose rejection is a problem naming the field at fault.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let value = match axum::Json::<serde_json::Value>::from_request(req, state).await {
            Ok(axum::Json(v)) => v,
            Err(rejection) => return Err(json_rejection(rejection)),
        };
        typed_body(value).map(Self)
    }
}

/// A parsed JSON body as `T`, or a problem naming the field (the rules of
/// `sync_web::body::typed`, which the apps' bodies follow too: an object, no NUL in any string,
/// fitting `T`).
pub fn typed_body<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    sync_web::body::typed(value).map_err(|e| ApiError::invalid(&e.field, e.message))
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let text = rejection.body_text();
    match rejection.status() {
        StatusCode::UNSUPPORTED_MEDIA_TYPE => return ApiError::UnsupportedMediaType(text),
        StatusCode::PAYLOAD_TOO_LARGE => return ApiError::PayloadTooLarge(text),
        _ => {}
    }
    // serde names a missing field as "missing field `x`" and a bad one by its path "x: ...".
    let field = text
        .split("missing field `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .or_else(|| {
            text.strip_prefix("Failed to deserialize the JSON body into the target type: ")
                .and_then(|rest| rest.split_once(": "))
                .map(|(path, _)| path)
                .filter(|p| !p.contains(' '))
        })
        .unwrap_or("body")
        .to_owned();
    ApiError::invalid(&field, text)
}

/// A query string whose rejection is a problem (`field` is `query`).
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Self(v))
            .map_err(|rejection| ApiError::invalid("query", rejection.body_text()))
    }
}

/// `?cursor=<id>&limit=<n>` of a paged list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// The last id of the previous page.
    pub cursor: Option<Uuid>,
    /// Page size (1–500, default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

impl PageQuery {
    /// The validated page size.
    pub fn limit(&self) -> Result<i64, ApiError> {
        match self.limit {
            None => Ok(50),
            Some(n) if (1..=500).contains(&n) => Ok(n),
            Some(_) => Err(ApiError::invalid("limit", "must be between 1 and 500")),
        }
    }

    /// The page to read, its size validated.
    pub fn keyset(&self) -> Result<crate::model::paging::Keyset, ApiError> {
        Ok(crate::model::paging::Keyset {
            cursor: self.cursor,
            limit: self.limit()?,
        })
    }
}

/// One page of a list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    /// The items, in id order.
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<Uuid>,
}

impl<T> Page<T> {
    /// Build a page from `limit + 1` fetched rows.
    pub fn from_rows(mut rows: Vec<T>, limit: i64, id: impl Fn(&T) -> Uuid) -> Self {
        let more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let next_cursor = if more { rows.last().map(id) } else { None };
        Self {
            items: rows,
            next_cursor,
        }
    }
}
