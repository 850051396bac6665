//! A tenant's settings: one JSON object of named values, replaced as a whole (its event carries
//! the whole new state, like every state event).

use std::collections::BTreeMap;

use sqlx::{PgConnection, PgPool};
use sync_contract::{Event, SettingsState};

use super::{ids::TenantId, users::ensure_active_tenant};
use crate::{
    context::Ctx,
    error::{ApiError, ApiResult},
    outbox::{self, Aggregate},
};

/// A settings object's values: keys of 1–100 characters.
#[derive(Debug, Clone)]
pub struct Values(BTreeMap<String, serde_json::Value>);

impl Values {
    /// Parse the field `values`.
    pub fn parse(values: BTreeMap<String, serde_json::Value>) -> ApiResult<Self> {
        if let Some(key) = values.keys().find(|k| k.is_empty() || k.len() > 100) {
            return Err(ApiError::invalid(
                "values",
                format!("key `{key}` must be 1-100 characters"),
            ));
        }
        Ok(Self(values))
    }
}

/// `tenant`'s settings (empty when never set).
pub async fn get(db: &PgPool, tenant: TenantId) -> ApiResult<SettingsState> {
    let values: Option<sqlx::types::Json<BTreeMap<String, serde_json::Value>>> =
        sqlx::query_scalar(r#"select "values" from settings where tenant_id = $1"#)
            .bind(tenant)
            .fetch_optional(db)
            .await?;
    Ok(SettingsState {
        tenant_id: tenant.0,
        values: values.map(|v| v.0).unwrap_or_default(),
    })
}

/// `tenant`'s settings with their version, if ever set (the snapshot).
pub async fn versioned(
    tx: &mut PgConnection,
    tenant: TenantId,
) -> ApiResult<Option<(i64, SettingsState)>> {
    let row: Option<(i64, sqlx::types::Json<BTreeMap<String, serde_json::Value>>)> =
        sqlx::query_as(r#"select version, "values" from settings where tenant_id = $1"#)
            .bind(tenant)
            .fetch_optional(tx)
            .await?;
    Ok(row.map(|(version, values)| {
        (
            version,
            SettingsState {
                tenant_id: tenant.0,
                values: values.0,
            },
        )
    }))
}

/// Replace `tenant`'s settings (the caller authorized as its admin), with the
/// `settings.updated` event in the same transaction.
pub async fn replace(
    db: &PgPool,
    ctx: &Ctx,
    tenant: TenantId,
    values: Values,
) -> ApiResult<SettingsState> {
    let mut tx = db.begin().await?;
    ensure_active_tenant(&mut tx, tenant.0).await?;
    let version: i64 = sqlx::query_scalar(
        r#"insert into settings (tenant_id, "values") values ($1, $2)
           on conflict (tenant_id) do update
             set "values" = excluded."values", version = settings.version + 1, updated_at = now()
           returning version"#,
    )
    .bind(tenant)
    .bind(sqlx::types::Json(&values.0))
    .fetch_one(&mut *tx)
    .await?;
    let settings = SettingsState {
        tenant_id: tenant.0,
        values: values.0,
    };
    let aggregate = Aggregate {
        id: tenant.0,
        version,
    };
    outbox::append(
        &mut tx,
        ctx,
        tenant.0,
        aggregate,
        Event::SettingsUpdated(settings.clone()),
    )
    .await?;
    tx.commit().await?;
    Ok(settings)
}
