//! The state every handler shares (cheap to clone): the database, Redis, keys, settings, the
//! host cache and the OpenID Connect providers. Built by `startup`.

use std::sync::Arc;

use sqlx::PgPool;
use sync_contract::StreamKeys;
use sync_telemetry::PrometheusHandle;

use crate::{
    config::Settings,
    error::{ApiError, ApiResult},
    identity::keys::KeyStore,
    model::hosts::DomainCache,
};

/// Everything a handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The wrapper's database.
    pub db: PgPool,
    /// Redis (event streams).
    pub redis: fred::clients::Client,
    /// Signing keys.
    pub keys: Arc<KeyStore>,
    /// Settings.
    pub settings: Arc<Settings>,
    /// Stream key names.
    pub stream_keys: StreamKeys,
    /// Host → tenant cache.
    pub domains: Arc<DomainCache>,
    /// Prometheus exporter handle.
    pub metrics: PrometheusHandle,
    /// OpenID Connect providers for browser sign-in.
    pub oidc: Arc<crate::identity::oidc::Oidc>,
    /// Password hashing, bounded (`WRAPPER_PASSWORD_HASH_CONCURRENCY`).
    pub passwords: crate::identity::password::Hasher,
}

/// The answer to a caller when every hashing slot stayed busy: 503, try again in a second.
fn busy(_: crate::identity::password::Busy) -> ApiError {
    ApiError::Busy { retry_after: 1 }
}

impl AppState {
    /// `password` hashed, or 503 when every hashing slot stayed busy.
    pub async fn hash_password(&self, password: String) -> ApiResult<String> {
        self.passwords.hash(password).await?.map_err(busy)
    }

    /// Whether `password` matches `stored`, or 503 when every hashing slot stayed busy.
    pub async fn verify_password(
        &self,
        password: String,
        stored: Option<String>,
    ) -> ApiResult<bool> {
        self.passwords.verify(password, stored).await.map_err(busy)
    }

    /// The credit mirrors in Redis, checked against the ledger.
    pub fn mirror(&self) -> crate::mirror::Mirror {
        crate::mirror::Mirror::new(
            self.db.clone(),
            self.redis.clone(),
            self.stream_keys.clone(),
        )
    }
}
