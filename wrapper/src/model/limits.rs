//! Per-tenant bounds on what a tenant may create: every object a tenant admin can add costs
//! the hub work of its own (a threshold is checked on every consumption and may fire at once,
//! an endpoint gets a delivery per event, an export dumps every app), so each kind has a limit,
//! set in the configuration and refused with a problem naming the setting.
//!
//! The count and the insert happen in one transaction under an advisory lock per tenant and
//! kind, so concurrent requests cannot all pass a count taken before any of them wrote.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};

/// One bound: the setting that holds it, what it counts and its value.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limit {
    /// The environment variable, e.g. `WRAPPER_MAX_WEBHOOK_ENDPOINTS`.
    pub(crate) setting: &'static str,
    /// What is counted, e.g. `webhook endpoints per tenant`.
    pub(crate) what: &'static str,
    /// The most there may be.
    pub(crate) max: i64,
}

impl Limit {
    /// Serialise creators of this kind for `tenant` until `tx` ends, then refuse when
    /// `count` (run inside `tx`, after the lock, with the tenant as `$1` and `key` as `$2`)
    /// already reaches the limit.
    pub(crate) async fn check(
        &self,
        tx: &mut PgConnection,
        tenant: Uuid,
        key: &str,
        count: &str,
    ) -> ApiResult<()> {
        self.lock(tx, tenant, key).await?;
        let n: i64 = sqlx::query_scalar(count)
            .bind(tenant)
            .bind(key)
            .fetch_one(&mut *tx)
            .await?;
        self.enforce(n)
    }

    /// Serialise creators of this kind for (`scope`, `key`) until `tx` ends; the caller then
    /// counts and [`enforce`](Self::enforce)s.
    pub(crate) async fn lock(
        &self,
        tx: &mut PgConnection,
        scope: Uuid,
        key: &str,
    ) -> ApiResult<()> {
        sqlx::query("select pg_advisory_xact_lock(hashtextextended($1 || ':limit:' || $2, 0))")
            .bind(scope.to_string())
            .bind(format!("{}:{key}", self.setting))
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    /// Refuse when `n` objects already reach the limit.
    pub(crate) fn enforce(&self, n: i64) -> ApiResult<()> {
        if n >= self.max {
            return Err(ApiError::LimitReached {
                limit: self.setting,
                what: self.what,
                max: self.max,
            });
        }
        Ok(())
    }
}
