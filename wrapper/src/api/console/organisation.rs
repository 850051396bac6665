//! The organisation's settings page: its name, its custom domain with the verification state
//! (active, waiting for proof with the token and where to serve it, the last attempt and why
//! it failed), and the settings object every app receives. Changes go through the REST API's
//! functions (same validation, events and audit).

use std::collections::BTreeMap;

use axum::{Form, extract::State, http::StatusCode, response::Response};
use serde::Deserialize;
use sync_web::{
    html::{escape, table},
    page::html,
};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{Host, TenantAdmin, back_to, internal, nav, refused_on};
use crate::{
    api::{domains, tenants},
    context::Ctx,
    error::ApiError,
    state::AppState,
};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(settings_page, replace_settings))
        .routes(routes!(rename))
        .routes(routes!(request_domain))
        .routes(routes!(verify_domain))
}

const PAGE: &str = "/admin/settings";

/// The last verification attempt of a domain: when, outcome, target, reason.
type Attempt = (
    chrono::DateTime<chrono::Utc>,
    String,
    Option<String>,
    serde_json::Value,
);

#[utoipa::path(get, path = "/admin/settings", tag = "pages", responses((status = 200, description = "The organisation's name, custom domain with its verification state, and settings, with forms to change them (its admins, on its host)", body = String, content_type = "text/html"), (status = 303, description = "Not signed in: to the sign-in page"), (status = 403, description = "Not an admin of this organisation", body = String, content_type = "text/html")))]
async fn settings_page(
    State(state): State<AppState>,
    TenantAdmin { id, name, .. }: TenantAdmin,
) -> Response {
    let domain = match domains::custom_domain(&state.db, id).await {
        Ok(d) => d,
        Err(e) => return internal(e),
    };
    let values: Option<sqlx::types::Json<BTreeMap<String, serde_json::Value>>> =
        match sqlx::query_scalar(r#"select "values" from settings where tenant_id = $1"#)
            .bind(id)
            .fetch_optional(&state.db)
            .await
        {
            Ok(v) => v,
            Err(e) => return internal(e),
        };
    let values = values.map(|v| v.0).unwrap_or_default();
    let attempt: Option<Attempt> = match sqlx::query_as(
        "select created_at, outcome, target, details from audit_log
         where tenant_id = $1 and action = 'domain_verification' and reported_by is null
         order by id desc limit 1",
    )
    .bind(id)
    .fetch_optional(&state.db)
    .await
    {
        Ok(a) => a,
        Err(e) => return internal(e),
    };

    let mut domain_state = String::from(r#"<dl id="domain-state">"#);
    domain_state.push_str(&format!(
        "<dt>Active</dt><dd>{}</dd>",
        domain
            .domain
            .as_deref()
            .map(|d| format!("<code>{}</code>", escape(d)))
            .unwrap_or_else(|| "none: the organisation is reached at its subdomain".into())
    ));
    match (&domain.pending_domain, &domain.challenge_url) {
        (Some(pending), Some(url)) => domain_state.push_str(&format!(
            r#"<dt>Waiting for proof</dt><dd id="pending-domain"><code>{}</code>: serve the token <code>{}</code> at <code>{}</code>, then verify. A platform admin can approve it instead.</dd>"#,
            escape(pending),
            escape(domain.challenge_token.as_deref().unwrap_or("")),
            escape(url),
        )),
        (Some(pending), None) => domain_state.push_str(&format!(
            r#"<dt>Waiting for approval</dt><dd id="pending-domain"><code>{}</code></dd>"#,
            escape(pending)
        )),
        _ => {}
    }
    if let Some((at, outcome, target, details)) = &attempt {
        let reason = details["reason"].as_str().unwrap_or_default();
        domain_state.push_str(&format!(
            r#"<dt>Last check</dt><dd id="last-check">{} UTC, <code>{}</code>: <span class="{}">{}</span>{}</dd>"#,
            at.format("%Y-%m-%d %H:%M"),
            escape(target.as_deref().unwrap_or("")),
            if outcome == "success" { "ok" } else { "bad" },
            if outcome == "success" {
                "verified"
            } else {
                "not verified"
            },
            if reason.is_empty() || outcome == "success" {
                String::new()
            } else {
                format!(" ({})", escape(reason))
            },
        ));
    }
    domain_state.push_str("</dl>");
    let verify = if domain.challenge_url.is_some() {
        r#"<form method="post" action="/admin/domain/verify" id="verify-domain"><button type="submit">Verify now</button></form>"#
    } else {
        ""
    };
    let setting_rows: Vec<Vec<String>> = values
        .iter()
        .map(|(k, v)| vec![k.clone(), v.to_string()])
        .collect();
    let pretty = serde_json::to_string_pretty(&values).unwrap_or_else(|_| "{}".into());
    let body = format!(
        r#"{nav}<h1 id="page-title">Settings · {name}</h1>
<h2>Organisation</h2>
<form class="inline" method="post" action="/admin/settings/name" id="rename">
<label>Name <input type="text" name="name" value="{name}" required></label><button type="submit" class="secondary">Rename</button></form>
<h2>Custom domain</h2>{domain_state}{verify}
<form class="inline" method="post" action="/admin/domain" id="request-domain">
<label>Use the domain <input type="text" name="domain" placeholder="app.example.com" required></label><button type="submit" class="secondary">Request</button></form>
<h2>Settings</h2>{settings}
<form method="post" action="{PAGE}" id="replace-settings">
<label>All settings, as one JSON object (replaces them; every app receives the new object)
<textarea name="values" rows="8" spellcheck="false" style="width:100%;font-family:monospace">{pretty}</textarea></label>
<button type="submit">Save settings</button></form>"#,
        nav = nav(Host::Tenant),
        name = escape(&name),
        settings = table(
            "settings",
            &["Key", "Value (JSON)"],
            &setting_rows,
            "No settings."
        ),
        pretty = escape(&pretty),
    );
    html(StatusCode::OK, &format!("Settings · {name}"), &body)
}

/// The settings form: every setting as one JSON object.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct SettingsForm {
    #[serde(default)]
    values: String,
}

#[utoipa::path(post, path = "/admin/settings", tag = "pages", request_body(content = SettingsForm, content_type = "application/x-www-form-urlencoded"), responses((status = 303, description = "Replaced (`settings.updated` reaches every app): back to the settings page"), (status = 400, description = "Refused, naming the field", body = String, content_type = "text/html"), (status = 403, description = "Not an admin here, or not from this origin", body = String, content_type = "text/html")))]
async fn replace_settings(
    State(state): State<AppState>,
    ctx: Ctx,
    admin: TenantAdmin,
    Form(form): Form<SettingsForm>,
) -> Response {
    let values: BTreeMap<String, serde_json::Value> = match serde_json::from_str(&form.values) {
        Ok(v) => v,
        Err(e) => {
            return refused_on(
                PAGE,
                ApiError::invalid("values", format!("not a JSON object: {e}")),
            );
        }
    };
    let replaced = async {
        let values = crate::model::settings::Values::parse(values)?;
        let tenant = crate::model::ids::TenantId(admin.id);
        crate::model::settings::replace(&state.db, &ctx, tenant, values).await
    };
    back_to(PAGE, replaced.await)
}

/// The organisation's new name, or the custom domain it asks for.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct TenantForm {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    domain: Option<String>,
}

/// Apply a form's change to the tenant (the REST API's update) and return to the page.
async fn change(
    state: &AppState,
    ctx: &Ctx,
    admin: &TenantAdmin,
    req: tenants::UpdateTenant,
) -> Response {
    back_to(
        PAGE,
        tenants::update_tenant(state, ctx, &admin.user, admin.id, req).await,
    )
}

#[utoipa::path(post, path = "/admin/settings/name", tag = "pages", request_body(content = TenantForm, content_type = "application/x-www-form-urlencoded"), responses((status = 303, description = "Renamed (`tenant.updated`): back to the settings page"), (status = 400, description = "Refused, naming the field", body = String, content_type = "text/html"), (status = 403, description = "Not an admin here, or not from this origin", body = String, content_type = "text/html")))]
async fn rename(
    State(state): State<AppState>,
    ctx: Ctx,
    admin: TenantAdmin,
    Form(form): Form<TenantForm>,
) -> Response {
    let req = tenants::UpdateTenant {
        name: Some(form.name.unwrap_or_default()),
        ..Default::default()
    };
    change(&state, &ctx, &admin, req).await
}

#[utoipa::path(post, path = "/admin/domain", tag = "pages", request_body(content = TenantForm, content_type = "application/x-www-form-urlencoded"), responses((status = 303, description = "Requested: the domain waits for proof; back to the settings page"), (status = 400, description = "Refused, naming the field", body = String, content_type = "text/html"), (status = 403, description = "Not an admin here, or not from this origin", body = String, content_type = "text/html"), (status = 409, description = "The domain is taken", body = String, content_type = "text/html")))]
async fn request_domain(
    State(state): State<AppState>,
    ctx: Ctx,
    admin: TenantAdmin,
    Form(form): Form<TenantForm>,
) -> Response {
    let req = tenants::UpdateTenant {
        domain: Some(form.domain.unwrap_or_default().trim().to_owned()),
        ..Default::default()
    };
    change(&state, &ctx, &admin, req).await
}

#[utoipa::path(post, path = "/admin/domain/verify", tag = "pages", responses((status = 303, description = "Verified: the domain is active; back to the settings page"), (status = 400, description = "The token was not served there (why, naming the field); the attempt is shown on the page", body = String, content_type = "text/html"), (status = 403, description = "Not an admin here, or not from this origin", body = String, content_type = "text/html"), (status = 409, description = "No domain waits for proof", body = String, content_type = "text/html")))]
async fn verify_domain(State(state): State<AppState>, ctx: Ctx, admin: TenantAdmin) -> Response {
    back_to(
        PAGE,
        domains::verify_domain(&state, &ctx, admin.user.id, admin.id).await,
    )
}
