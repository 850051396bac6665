//! The suite's registered apps (their manifests) and the price of an operation.
//!
//! An app registers its manifest at start-up; the wrapper is then the price authority: a
//! consumption names an operation and a quantity, and the amount is `price × quantity`, where
//! the price is the tenant's active credit config for the operation, else the app's declared
//! default. An operation neither declared nor configured has no price and is refused.

use std::collections::HashSet;

use sqlx::PgConnection;
use sync_contract::{AppManifest, PaidOperation};

use crate::{
    error::{ApiError, ApiResult, OnConstraint},
    validate,
};

/// Most operations one app may declare.
pub(crate) const MAX_OPERATIONS: usize = 200;
/// Most integrity checks one app may declare.
pub(crate) const MAX_REFERENCES: usize = 50;
/// First path segments the wrapper and the edge serve themselves: an app served under one of
/// them would take over (or be shadowed by) sign-in, the API, the console, the keys or the
/// health checks, so no manifest may claim them. Compared without regard to case, since some
/// proxies and browsers fold it.
pub(crate) const RESERVED_PATHS: &[&str] = &[
    "admin",
    "api",
    "auth",
    "health",
    "metrics",
    "ready",
    "well-known",
    "static",
    "assets",
    "login",
    "logout",
    "portal",
    "oauth",
    "oidc",
    "wrapper",
];

/// `manifest` checked field by field (the first fault is named), trimmed.
pub(crate) fn checked(name: &str, manifest: AppManifest) -> ApiResult<AppManifest> {
    let valid_name = |field: &str, value: &str| {
        let ok = (1..=40).contains(&value.len())
            && value.starts_with(|c: char| c.is_ascii_lowercase())
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(value.to_owned())
        } else {
            Err(ApiError::invalid(
                field,
                "must be 1-40 lowercase letters, digits or '-', starting with a letter",
            ))
        }
    };
    let name = valid_name("name", name)?;
    if manifest.name != name {
        return Err(ApiError::invalid("name", "must equal the app in the path"));
    }
    let display_name = validate::short_text("displayName", &manifest.display_name, 60)?;
    let segment = manifest.public_path.trim_matches('/');
    valid_name("publicPath", segment)
        .map_err(|_| ApiError::invalid("publicPath", "must be one path segment such as /crm/"))?;
    if RESERVED_PATHS.contains(&segment) {
        return Err(ApiError::invalid(
            "publicPath",
            format!("/{segment}/ is served by the wrapper or the edge and cannot be an app's path"),
        ));
    }
    let feature = match manifest.feature.as_deref() {
        Some(f) => Some(validate::short_text("feature", f, 60)?),
        None => None,
    };
    if manifest.operations.len() > MAX_OPERATIONS {
        return Err(ApiError::invalid(
            "operations",
            format!("at most {MAX_OPERATIONS} operations"),
        ));
    }
    let mut seen = HashSet::new();
    let mut operations = Vec::with_capacity(manifest.operations.len());
    for (i, op) in manifest.operations.into_iter().enumerate() {
        let code = validate::short_text(&format!("operations[{i}].code"), &op.code, 100)?;
        if !seen.insert(code.clone()) {
            return Err(ApiError::invalid(
                &format!("operations[{i}].code"),
                "is declared twice",
            ));
        }
        if !(0..=super::credits::MAX_AMOUNT).contains(&op.default_cost) {
            return Err(ApiError::invalid(
                &format!("operations[{i}].defaultCost"),
                format!("must be between 0 and {}", super::credits::MAX_AMOUNT),
            ));
        }
        operations.push(PaidOperation {
            code,
            default_cost: op.default_cost,
        });
    }
    if manifest.references.len() > MAX_REFERENCES {
        return Err(ApiError::invalid(
            "references",
            format!("at most {MAX_REFERENCES} references"),
        ));
    }
    for (i, r) in manifest.references.iter().enumerate() {
        for (name, value) in [
            ("kind", &r.kind),
            ("collection", &r.collection),
            ("field", &r.field),
        ] {
            let ok = (1..=60).contains(&value.len())
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                return Err(ApiError::invalid(
                    &format!("references[{i}].{name}"),
                    "must be 1-60 letters, digits, '_' or '-'",
                ));
            }
        }
    }
    Ok(AppManifest {
        name,
        display_name,
        public_path: format!("/{segment}/"),
        feature,
        operations,
        references: manifest.references,
    })
}

/// The feature `name` was registered with: none when the app is not registered, `Some(None)`
/// when it requires no feature. The row is locked until `tx` ends (two registrations of one
/// app take turns).
pub(crate) async fn registered_feature(
    tx: &mut PgConnection,
    name: &str,
) -> ApiResult<Option<Option<String>>> {
    let row: Option<(Option<String>,)> =
        sqlx::query_as("select feature from applications where name = $1 for update")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
    Ok(row.map(|(f,)| f))
}

/// Store `manifest` (replacing the app's earlier one and its operations).
pub(crate) async fn register(tx: &mut PgConnection, manifest: &AppManifest) -> ApiResult<()> {
    sqlx::query(
        "insert into applications (name, display_name, public_path, feature, \"references\")
         values ($1, $2, $3, $4, $5)
         on conflict (name) do update set display_name = excluded.display_name,
           public_path = excluded.public_path, feature = excluded.feature,
           \"references\" = excluded.\"references\", updated_at = now()",
    )
    .bind(&manifest.name)
    .bind(&manifest.display_name)
    .bind(&manifest.public_path)
    .bind(&manifest.feature)
    .bind(sqlx::types::Json(&manifest.references))
    .execute(&mut *tx)
    .await
    .on_constraint(&[(
        "applications_public_path_key",
        "publicPath",
        "another app is served under this path",
    )])?;
    sqlx::query("delete from application_operations where application = $1")
        .bind(&manifest.name)
        .execute(&mut *tx)
        .await?;
    for op in &manifest.operations {
        sqlx::query(
            "insert into application_operations (application, operation_code, default_cost)
             values ($1, $2, $3)",
        )
        .bind(&manifest.name)
        .bind(&op.code)
        .bind(op.default_cost)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Every registered app, by name.
pub(crate) async fn all(db: &mut PgConnection) -> ApiResult<Vec<AppManifest>> {
    type Row = (
        String,
        String,
        String,
        Option<String>,
        sqlx::types::Json<Vec<sync_contract::ReferenceCheck>>,
    );
    let apps: Vec<Row> = sqlx::query_as(
        "select name, display_name, public_path, feature, \"references\" from applications
         order by name",
    )
    .fetch_all(&mut *db)
    .await?;
    let ops: Vec<(String, String, i64)> = sqlx::query_as(
        "select application, operation_code, default_cost from application_operations
         order by application, operation_code",
    )
    .fetch_all(&mut *db)
    .await?;
    Ok(apps
        .into_iter()
        .map(
            |(name, display_name, public_path, feature, references)| AppManifest {
                references: references.0,
                operations: ops
                    .iter()
                    .filter(|(app, _, _)| *app == name)
                    .map(|(_, code, cost)| PaidOperation {
                        code: code.clone(),
                        default_cost: *cost,
                    })
                    .collect(),
                name,
                display_name,
                public_path,
                feature,
            },
        )
        .collect())
}

/// The price of one `code` operation of `app` for `tenant`: its active credit config, else
/// the app's declared default; `None` when neither exists.
pub(crate) async fn price(
    db: &mut PgConnection,
    tenant: uuid::Uuid,
    app: &str,
    code: &str,
) -> ApiResult<Option<i64>> {
    let found = priced(db, tenant, app, Some(code)).await?;
    Ok(found.first().map(|(_, cost)| *cost))
}

/// Every priced operation of `app` for `tenant` (declared defaults overlaid by the tenant's
/// active configs): what the fast path's price table holds.
pub(crate) async fn prices(
    db: &mut PgConnection,
    tenant: uuid::Uuid,
    app: &str,
) -> ApiResult<Vec<(String, i64)>> {
    priced(db, tenant, app, None).await
}

/// The one pricing rule, for every operation of `app` or `only` one: the tenant's active
/// credit config, else the app's declared default.
async fn priced(
    db: &mut PgConnection,
    tenant: uuid::Uuid,
    app: &str,
    only: Option<&str>,
) -> ApiResult<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "select operation_code, cost from credit_configs
          where tenant_id = $1 and application = $2 and active
            and ($3::text is null or operation_code = $3)
         union all
         select o.operation_code, o.default_cost from application_operations o
          where o.application = $2 and ($3::text is null or o.operation_code = $3)
            and not exists (
              select 1 from credit_configs c where c.tenant_id = $1 and c.application = $2
                and c.operation_code = o.operation_code and c.active)
         order by 1",
    )
    .bind(tenant)
    .bind(app)
    .bind(only)
    .fetch_all(db)
    .await?)
}

/// Replaces the hash at KEYS[1] with the (code, price) pairs in ARGV.
const REPLACE_PRICES: &str = "redis.call('DEL', KEYS[1])
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1";

/// Write the fast path's price table of `app` for `tenant` (`StreamKeys::credit_prices`) from
/// the ledger's prices, replacing it whole. Called after a price or a manifest changes and by
/// every reconciliation; the fast path refuses (falls back to the wrapper for) an operation
/// missing from the table, so a table not written yet never lets an app name its price.
pub(crate) async fn publish_prices(
    db: &sqlx::PgPool,
    redis: &fred::clients::Client,
    keys: &sync_contract::StreamKeys,
    tenant: uuid::Uuid,
    app: &str,
) -> anyhow::Result<()> {
    let mut conn = db.acquire().await?;
    let table = prices(&mut conn, tenant, app).await?;
    drop(conn);
    let args: Vec<String> = table
        .into_iter()
        .flat_map(|(code, cost)| [code, cost.to_string()])
        .collect();
    let script = fred::types::scripts::Script::from_lua(REPLACE_PRICES);
    let _: i64 = script
        .evalsha_with_reload(redis, vec![keys.credit_prices(tenant, app)], args)
        .await?;
    Ok(())
}

/// [`publish_prices`] for every tenant with a mirrored allocation of `app`.
pub(crate) async fn publish_prices_of_app(
    db: &sqlx::PgPool,
    redis: &fred::clients::Client,
    keys: &sync_contract::StreamKeys,
    app: &str,
) -> anyhow::Result<()> {
    let tenants: Vec<uuid::Uuid> =
        sqlx::query_scalar("select tenant_id from credit_balances where scope = $1")
            .bind(super::credits::app_scope(app))
            .fetch_all(db)
            .await?;
    for tenant in tenants {
        publish_prices(db, redis, keys, tenant, app).await?;
    }
    Ok(())
}

/// Whether `app` may act for `tenant_id`: the tenant exists and its plan has the feature the
/// app's manifest requires (an app requiring none, or not registered yet, is every tenant's;
/// features compare without regard to case, as the suite links do). Otherwise the app may
/// not load, serve, charge or report for the tenant: [`ApiError::FeatureMissing`], naming the
/// feature.
pub(crate) async fn require_tenant_has_app(
    db: impl sqlx::PgExecutor<'_>,
    app: &str,
    tenant_id: uuid::Uuid,
) -> ApiResult<()> {
    let row: Option<(Option<String>, bool)> = sqlx::query_as(
        "select a.feature, coalesce(a.feature is null or exists (
                  select 1 from jsonb_array_elements_text(t.features) f
                  where lower(f) = lower(a.feature)), true)
         from tenants t left join applications a on a.name = $1
         where t.id = $2",
    )
    .bind(app)
    .bind(tenant_id)
    .fetch_optional(db)
    .await?;
    match row {
        None => Err(ApiError::NotFound("tenant")),
        Some((_, true)) => Ok(()),
        Some((feature, false)) => Err(ApiError::FeatureMissing {
            feature: feature.unwrap_or_default(),
            app: app.to_owned(),
        }),
    }
}
