//! The tenant's account for a provider's user: the identity linked before, else the user with the
//! same verified email (then linked), else, under the `create` policy, a new user with its
//! `user.created` event. Refusals are reasons, shown to the user and audited by the flow.

use sync_contract::UserState;
use uuid::Uuid;

use crate::{
    context::Ctx,
    identity::oidc::{Policy, Provider},
    state::AppState,
};

/// What the provider says about the user, after verification.
#[derive(Debug)]
pub(crate) struct VerifiedUser {
    pub(crate) subject: String,
    pub(crate) email: Option<String>,
    pub(crate) email_verified: bool,
    pub(crate) name: Option<String>,
}

/// The tenant's user for this provider account: `Ok(Err(reason))` when the policy refuses.
pub(crate) async fn find_or_create(
    state: &AppState,
    ctx: &Ctx,
    provider: &Provider,
    tenant_id: Uuid,
    user: &VerifiedUser,
) -> crate::error::ApiResult<Result<(Uuid, String), &'static str>> {
    let provider_id = provider.config.id.as_str();
    let linked: Option<(Uuid, String)> = sqlx::query_as(
        "select u.id, u.email from user_identities i join users u on u.id = i.user_id
         where i.provider = $1 and i.tenant_id = $2 and i.subject = $3
           and u.active and u.deleted_at is null",
    )
    .bind(provider_id)
    .bind(tenant_id)
    .bind(&user.subject)
    .fetch_optional(&state.db)
    .await?;
    if let Some(found) = linked {
        return Ok(Ok(found));
    }
    let Some(email) = user.email.as_deref() else {
        return Ok(Err("the identity provider did not share an email address"));
    };
    // The same rule as every other way an address enters.
    let Ok(email) = crate::validate::email("email", email) else {
        return Ok(Err("the identity provider's email address is not valid"));
    };
    if !user.email_verified {
        return Ok(Err(
            "the identity provider has not verified this email address",
        ));
    }
    let mut tx = state.db.begin().await?;
    let existing: Option<(Uuid, bool)> = sqlx::query_as(
        "select id, active and deleted_at is null from users
         where tenant_id = $1 and lower(email) = $2 for update",
    )
    .bind(tenant_id)
    .bind(&email)
    .fetch_optional(&mut *tx)
    .await?;
    let user_id = match existing {
        Some((_, false)) => return Ok(Err("this account is deactivated")),
        Some((id, true)) => id,
        None if provider.config.policy == Policy::Create => {
            let full_name = user
                .name
                .as_deref()
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| email.split('@').next().unwrap_or("User"));
            let full_name =
                crate::validate::full_name("fullName", full_name).unwrap_or_else(|_| email.clone());
            let new = UserState {
                id: Uuid::now_v7(),
                tenant_id,
                email: email.clone(),
                full_name,
                avatar_url: None,
                email_verified: true,
                active: true,
                deleted_at: None,
            };
            crate::model::users::ensure_active_tenant(&mut tx, tenant_id).await?;
            crate::model::users::insert(&mut tx, ctx, &new, None).await?;
            new.id
        }
        None => {
            return Ok(Err(
                "there is no account with this email in this organisation",
            ));
        }
    };
    sqlx::query(
        "insert into user_identities (provider, tenant_id, subject, user_id, email)
         values ($1, $2, $3, $4, $5) on conflict do nothing",
    )
    .bind(provider_id)
    .bind(tenant_id)
    .bind(&user.subject)
    .bind(user_id)
    .bind(&email)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Ok((user_id, email)))
}
