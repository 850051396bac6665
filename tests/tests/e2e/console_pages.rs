//! The console's pages for who may do what, the organisation's settings and domain, the
//! platform's plans and domain approvals, and each tenant's own sync page, over HTTP through
//! nginx: every form changes what its REST route changes (events, audit), refuses bad input
//! naming the field and writing nothing, refuses forms from another origin and people who are
//! not admins here; the sync page shows nothing of other tenants.

use std::{collections::HashMap, time::Duration};

use reqwest::{StatusCode, header};
use serde_json::{Value, json};
use sync_sdk::{
    contract::StreamKeys,
    dlq::{self, DeadLetter},
};
use tsync_e2e::{suite::Suite, *};
use uuid::Uuid;

const COOKIE: &str = "tsync_session";

/// A signed-in browser's requests on one host: pages, and forms carrying this origin.
struct Console {
    http: reqwest::Client,
    base: String,
    host: String,
    origin: String,
    cookie: String,
}

impl Console {
    /// As `token`'s holder on `tenant`'s host through nginx.
    fn tenant(suite: &Suite, tenant: &str, token: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: suite.nginx.url(),
            host: suite.host(tenant),
            origin: suite.url(tenant, ""),
            cookie: format!("{COOKIE}={token}"),
        }
    }

    /// As `token`'s holder on the platform host (the wrapper's own address).
    fn platform(suite: &Suite, token: &str) -> Self {
        let url = suite.wrapper.url.clone();
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            host: url.trim_start_matches("http://").to_owned(),
            base: url.clone(),
            origin: url,
            cookie: format!("{COOKIE}={token}"),
        }
    }

    async fn get(&self, path: &str) -> anyhow::Result<(StatusCode, String)> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .header("host", &self.host)
            .header(header::COOKIE, &self.cookie)
            .send()
            .await?;
        Ok((resp.status(), resp.text().await?))
    }

    async fn post_from(
        &self,
        origin: &str,
        path: &str,
        form: &[(&str, &str)],
    ) -> anyhow::Result<(StatusCode, String)> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("host", &self.host)
            .header(header::ORIGIN, origin)
            .header(header::COOKIE, &self.cookie)
            .form(form)
            .send()
            .await?;
        // A redirect answers with where it sends the browser.
        if let Some(to) = resp.headers().get(header::LOCATION) {
            return Ok((resp.status(), format!("see {}", to.to_str()?)));
        }
        Ok((resp.status(), resp.text().await?))
    }

    async fn post(
        &self,
        path: &str,
        form: &[(&str, &str)],
    ) -> anyhow::Result<(StatusCode, String)> {
        self.post_from(&self.origin, path, form).await
    }
}

async fn scalar<T>(w: &wrapper_app::TestApp, sql: &str, id: Uuid) -> T
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    sqlx::query_scalar(sql)
        .bind(id)
        .fetch_one(&w.db.pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::test]
async fn roles_memberships_and_settings_change_the_tenant_as_the_api_does() -> anyhow::Result<()> {
    // The custom domain is served on loopback; it answers the challenge once the test sets it.
    let (challenge, served) = challenge_server().await?;
    let addr = challenge.addr;
    let suite = Suite::start(|s| s.domain_challenge_addr = Some(addr)).await?;
    let w = &suite.wrapper;
    let acme = w.create_tenant("acme").await;
    let (member_id, member) = w.create_member(&acme, "member@acme.test").await;
    let admin = Console::tenant(&suite, "acme", &acme.admin);

    // Roles: the built-in admin role is shown, never editable.
    let (status, page) = admin.get("/admin/roles").await?;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains(&format!(r#"id="role-{}""#, acme.admin_role)) && page.contains("built in")
    );
    let roles_before = w.count("roles").await;
    let (status, refused) = admin
        .post(
            "/admin/roles",
            &[("name", "support"), ("permissions", "crm.read, crm write!")],
        )
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        refused.contains("permissions:"),
        "names the field: {refused}"
    );
    assert_eq!(w.count("roles").await, roles_before, "nothing written");
    let (status, _) = admin
        .post(
            "/admin/roles",
            &[
                ("name", "support"),
                ("permissions", "crm.read crm.accounts.write"),
            ],
        )
        .await?;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let support: Uuid = sqlx::query_scalar(
        "select id from roles where tenant_id = $1 and name = 'support' and not deleted",
    )
    .bind(acme.id)
    .fetch_one(&w.db.pool)
    .await?;
    let perms: Value = scalar(w, "select permissions from roles where id = $1", support).await;
    assert_eq!(perms, json!(["crm.read", "crm.accounts.write"]));
    let (status, _) = admin
        .post(
            &format!("/admin/roles/{}", acme.admin_role),
            &[("name", "admin"), ("permissions", "")],
        )
        .await?;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the admin role is not editable"
    );
    let (status, _) = admin
        .post(
            &format!("/admin/roles/{support}"),
            &[("name", "helpdesk"), ("permissions", "crm.read")],
        )
        .await?;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let name: String = scalar(w, "select name from roles where id = $1", support).await;
    assert_eq!(name, "helpdesk");

    // Memberships: granted by address; an address of nobody here is refused, naming it.
    let memberships_before = w.count("memberships").await;
    let role = support.to_string();
    let (status, refused) = admin
        .post(
            "/admin/memberships",
            &[("email", "admin@globex.test"), ("roleId", &role)],
        )
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(refused.contains("email:"), "{refused}");
    assert_eq!(w.count("memberships").await, memberships_before);
    // From another origin: refused by the CSRF guard, nothing written.
    let (status, _) = admin
        .post_from(
            "https://evil.example",
            "/admin/memberships",
            &[("email", "member@acme.test"), ("roleId", &role)],
        )
        .await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(w.count("memberships").await, memberships_before);
    let (status, _) = admin
        .post(
            "/admin/memberships",
            &[("email", "MEMBER@acme.test"), ("roleId", &role)],
        )
        .await?;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let membership: Uuid = sqlx::query_scalar(
        "select id from memberships where user_id = $1 and role_id = $2 and active",
    )
    .bind(member_id)
    .bind(support)
    .fetch_one(&w.db.pool)
    .await?;
    let (_, listed) = admin.get("/admin/memberships?user=member").await?;
    assert!(
        listed.contains("member@acme.test") && listed.contains("helpdesk"),
        "{listed}"
    );
    assert!(!listed.contains("admin@acme.test"), "filtered by user");
    let (_, by_role) = admin
        .get(&format!("/admin/memberships?role={support}"))
        .await?;
    assert!(by_role.contains(&format!(r#"<option value="{support}" selected>"#)));
    // The member is no admin: every page and form of the console refuses them.
    let as_member = Console::tenant(&suite, "acme", &member);
    for page in [
        "/admin/roles",
        "/admin/memberships",
        "/admin/settings",
        "/admin/sync",
    ] {
        assert_eq!(
            as_member.get(page).await?.0,
            StatusCode::FORBIDDEN,
            "{page}"
        );
    }
    let (status, _) = as_member
        .post(&format!("/admin/memberships/{membership}/revoke"), &[])
        .await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = admin
        .post(&format!("/admin/memberships/{membership}/revoke"), &[])
        .await?;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let active: bool = scalar(
        w,
        "select active from memberships where id = $1",
        membership,
    )
    .await;
    assert!(!active);
    let (status, _) = admin
        .post(&format!("/admin/roles/{support}/delete"), &[])
        .await?;
    assert_eq!(status, StatusCode::SEE_OTHER);
    // Each change was audited with the admin as its actor, like the API's.
    let actions: Vec<String> = sqlx::query_scalar(
        "select action from audit_log where tenant_id = $1 and actor_id = $2
           and action in ('role.created', 'role.updated', 'role.deleted',
                          'membership.granted', 'membership.revoked') order by id",
    )
    .bind(acme.id)
    .bind(acme.admin_id)
    .fetch_all(&w.db.pool)
    .await?;
    assert_eq!(
        actions,
        [
            "role.created",
            "role.updated",
            "membership.granted",
            "membership.revoked",
            "role.deleted"
        ]
    );

    // Settings: one JSON object; anything else is refused naming `values`, nothing written.
    let (status, refused) = admin
        .post("/admin/settings", &[("values", "[1, 2]")])
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(refused.contains("values:"), "{refused}");
    let settings = format!("/api/tenants/{}/settings", acme.id);
    assert_eq!(w.get_ok(&settings, &acme.admin).await["values"], json!({}));
    let (status, _) = admin
        .post(
            "/admin/settings",
            &[("values", r#"{"locale": "fr", "seats": 12}"#)],
        )
        .await?;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        w.get_ok(&settings, &acme.admin).await["values"],
        json!({"locale": "fr", "seats": 12})
    );
    let (status, refused) = admin
        .post("/admin/settings/name", &[("name", "  ")])
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(refused.contains("name:"), "{refused}");
    let (status, _) = admin
        .post("/admin/settings/name", &[("name", "Acme Corporation")])
        .await?;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, page) = admin.get("/admin/settings").await?;
    assert!(page.contains("Settings · Acme Corporation") && page.contains("&quot;locale&quot;"));

    // The custom domain: requested, shown waiting with its token; a failed check is shown
    // with its reason; once the token is served, "Verify now" makes it active.
    let (status, _) = admin
        .post("/admin/domain", &[("domain", "portal.acme-corp.example")])
        .await?;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let token: String = scalar(
        w,
        "select domain_challenge from tenants where id = $1",
        acme.id,
    )
    .await;
    let (_, page) = admin.get("/admin/settings").await?;
    assert!(
        page.contains(r#"id="pending-domain""#) && page.contains(&token),
        "{page}"
    );
    let (status, refused) = admin.post("/admin/domain/verify", &[]).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert!(refused.contains("domain:"));
    let (_, page) = admin.get("/admin/settings").await?;
    assert!(
        page.contains("not verified") && page.contains("status 404"),
        "{page}"
    );
    let active: Option<String> =
        scalar(w, "select domain from tenants where id = $1", acme.id).await;
    assert_eq!(active, None);
    *served.lock().unwrap() = Some(token);
    let (status, _) = admin.post("/admin/domain/verify", &[]).await?;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let active: Option<String> =
        scalar(w, "select domain from tenants where id = $1", acme.id).await;
    assert_eq!(active.as_deref(), Some("portal.acme-corp.example"));
    let (_, page) = admin.get("/admin/settings").await?;
    assert!(page.contains("<code>portal.acme-corp.example</code>") && page.contains("verified"));
    Ok(())
}

#[tokio::test]
async fn platform_admins_set_plans_and_features_and_approve_domains() -> anyhow::Result<()> {
    let suite = Suite::start(|_| {}).await?;
    let w = &suite.wrapper;
    let acme = w.create_tenant("acme").await;
    let platform = Console::platform(&suite, &w.root);
    let plan_path = format!("/admin/tenants/{}/plan", acme.id);
    let plan = || scalar::<String>(w, "select plan from tenants where id = $1", acme.id);

    let before = plan().await;
    // A tenant admin cannot, on their host or on the platform's.
    let tenant_admin = Console::tenant(&suite, "acme", &acme.admin);
    let form = [("plan", "enterprise"), ("features", "sso")];
    assert_eq!(
        tenant_admin.post(&plan_path, &form).await?.0,
        StatusCode::FORBIDDEN
    );
    let on_platform = Console::platform(&suite, &acme.admin);
    assert_eq!(
        on_platform.post(&plan_path, &form).await?.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(plan().await, before);

    let (status, refused) = platform
        .post(&plan_path, &[("plan", ""), ("features", "sso")])
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(refused.contains("plan:"), "{refused}");
    assert_eq!(plan().await, before, "nothing written");
    let (status, _) = platform
        .post(
            &plan_path,
            &[
                ("plan", "scale"),
                ("features", "sso, audit-export  webhooks"),
            ],
        )
        .await?;
    assert_eq!(status, StatusCode::SEE_OTHER);

    let tenant = w
        .get_ok(&format!("/api/tenants/{}", acme.id), &acme.admin)
        .await;
    assert_eq!(tenant["plan"], "scale");
    assert_eq!(
        tenant["features"],
        json!(["sso", "audit-export", "webhooks"])
    );

    // A domain a tenant admin asked for waits on the tenants page until approved there.
    w.send_ok(
        reqwest::Method::PATCH,
        &format!("/api/tenants/{}", acme.id),
        &acme.admin,
        json!({"domain": "crm.acme-inc.example"}),
    )
    .await;
    let (status, page) = platform.get("/admin/tenants?q=acm").await?;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(r#"id="pending-domains""#) && page.contains("crm.acme-inc.example"));
    assert!(
        page.contains(r#"value="sso, audit-export, webhooks""#),
        "{page}"
    );
    let approve = format!("/admin/tenants/{}/approve-domain", acme.id);
    assert_eq!(
        tenant_admin.post(&approve, &[]).await?.0,
        StatusCode::FORBIDDEN
    );
    let (status, _) = platform.post(&approve, &[]).await?;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let active: Option<String> =
        scalar(w, "select domain from tenants where id = $1", acme.id).await;
    assert_eq!(active.as_deref(), Some("crm.acme-inc.example"));
    let (status, _) = platform.post(&approve, &[]).await?;
    assert_eq!(status, StatusCode::CONFLICT, "nothing waits any more");
    let (_, none) = platform.get("/admin/tenants?q=nobody-like-this").await?;
    assert!(none.contains("No tenant matches."));

    // Suspend and resume with the buttons; a tenant admin cannot.
    let status = || scalar::<String>(w, "select status from tenants where id = $1", acme.id);
    let suspend = format!("/admin/tenants/{}/suspend", acme.id);
    assert_eq!(
        tenant_admin.post(&suspend, &[]).await?.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(status().await, "active");
    assert_eq!(platform.post(&suspend, &[]).await?.0, StatusCode::SEE_OTHER);
    assert_eq!(status().await, "suspended");
    let (_, page) = platform.get("/admin/tenants?q=acme").await?;
    assert!(
        page.contains(&format!(r#"id="resume-{}""#, acme.id)),
        "{page}"
    );
    let resume = format!("/admin/tenants/{}/resume", acme.id);
    assert_eq!(platform.post(&resume, &[]).await?.0, StatusCode::SEE_OTHER);
    assert_eq!(status().await, "active");
    assert_eq!(
        platform.post(&resume, &[]).await?.0,
        StatusCode::NOT_FOUND,
        "not suspended"
    );
    Ok(())
}

/// A dead letter of `tenant`'s first event in the CRM, failed with `error`.
async fn poison(
    redis: &fred::prelude::Client,
    keys: &StreamKeys,
    tenant: Uuid,
    error: &str,
) -> anyhow::Result<()> {
    let stream = keys.events_for(tenant);
    let id = tenant.to_string();
    let (entry, fields): (String, HashMap<String, String>) =
        eventually_some(Duration::from_secs(10), || async {
            let entries: Vec<(String, HashMap<String, String>)> =
                fred::interfaces::StreamsInterface::xrange(redis, &stream, "-", "+", None)
                    .await
                    .ok()?;
            entries
                .into_iter()
                .find(|(_, f)| f.get("tenantId") == Some(&id))
        })
        .await?;
    let letter = DeadLetter::new(&stream, &entry, &fields, error.into(), 5);
    dlq::push(redis, keys, "crm", &letter).await?;
    Ok(())
}

#[tokio::test]
async fn each_tenant_admin_sees_their_own_sync_state_and_its_history() -> anyhow::Result<()> {
    let suite = Suite::start(|s| s.lag_history_secs = 1).await?;
    let w = &suite.wrapper;
    let acme = w.create_tenant("acme").await;
    let globex = w.create_tenant("globex").await;
    let redis = redis_client(&w.state.settings.redis_url.0).await?;
    let keys = StreamKeys::new(
        w.state.settings.namespace.clone(),
        w.state.settings.partitions,
    )
    .unwrap();
    // The CRM loads acme on its first visit.
    let (status, _) = suite
        .edge("acme")
        .send(reqwest::Method::GET, "/crm/accounts", &acme.admin, None)
        .await?;
    assert_eq!(status, StatusCode::OK);
    poison(&redis, &keys, acme.id, "acme letter: store down").await?;
    poison(&redis, &keys, globex.id, "globex letter: handler panicked").await?;

    let path = format!("/api/tenants/{}/sync-health", acme.id);
    // The history fills once a second; wait for a sample of the CRM.
    let report = eventually_some(Duration::from_secs(20), || async {
        let r = w.get_ok(&path, &acme.admin).await;
        let crm = r["apps"]
            .as_array()?
            .iter()
            .find(|a| a["app"] == "crm")?
            .clone();
        (!crm["lagHistory"].as_array()?.is_empty() && crm["replicasReady"].as_u64()? > 0)
            .then_some(crm)
    })
    .await?;
    assert_eq!(report["partition"], keys.partition_of(acme.id));
    assert_eq!(report["deadLetters"], 1, "acme's only: {report}");
    assert_eq!(report["letters"][0]["error"], "acme letter: store down");
    assert!(report["lastLoadedAt"].is_string(), "{report}");
    assert!(!report.to_string().contains(&globex.id.to_string()));
    // Another tenant's admin is refused (and audited as a cross-tenant attempt).
    let (status, _) = w
        .call(reqwest::Method::GET, &path, Some(&globex.admin), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = w
        .call(
            reqwest::Method::GET,
            &format!("{path}?minutes=0"),
            Some(&acme.admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.to_string().contains("minutes"), "{body}");

    // The page: acme's dead letter, not globex's; the history chart; a re-sync, audited.
    let admin = Console::tenant(&suite, "acme", &acme.admin);
    let (status, page) = admin.get("/admin/sync").await?;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains(r#"<span id="dead-letters-crm">1</span>"#),
        "{page}"
    );
    assert!(page.contains("acme letter: store down"));
    assert!(!page.contains("globex letter") && !page.contains(&globex.id.to_string()));
    assert!(page.contains(r#"id="history-crm""#));
    let (status, _) = admin.post("/admin/sync/crm/resync", &[]).await?;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let audited: i64 = sqlx::query_scalar(
        "select count(*) from audit_log where tenant_id = $1 and actor_id = $2
           and action = 'sync.resync' and target = 'crm'",
    )
    .bind(acme.id)
    .bind(acme.admin_id)
    .fetch_one(&w.db.pool)
    .await?;
    assert_eq!(audited, 1);
    let (status, _) = admin.post("/admin/sync/no-such-app/resync", &[]).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Operators read the same history as JSON, per partition.
    let history = w
        .get_ok("/api/admin/sync-health/crm/lag-history?minutes=5", &w.root)
        .await;
    let items = history["items"].as_array().expect("items");
    assert!(!items.is_empty());
    assert_eq!(
        items[0]["partitions"].as_array().map(Vec::len),
        Some(w.state.settings.partitions as usize)
    );
    let (status, _) = w
        .call(
            reqwest::Method::GET,
            "/api/admin/sync-health/crm/lag-history",
            Some(&acme.admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, platform_page) = Console::platform(&suite, &w.root)
        .get("/admin/sync-health")
        .await?;
    assert!(platform_page.contains(r#"id="history-crm""#));
    Ok(())
}

/// In headless Chromium at 1280×800 through nginx: a tenant admin adds a role, grants it with
/// the memberships form, saves settings, asks for a custom domain and looks at the
/// organisation's sync page with a dead letter; the platform admin approves the domain on the
/// tenants page. Screenshots in `target/test-artifacts/console-pages/`.
#[tokio::test]
async fn in_a_browser_admins_manage_roles_memberships_settings_and_see_their_sync_state()
-> anyhow::Result<()> {
    use tsync_e2e::browser::Browser;
    let suite = Suite::start(|s| s.lag_history_secs = 1).await?;
    let w = &suite.wrapper;
    let acme = w.create_tenant("acme").await;
    w.create_member(&acme, "member@acme.test").await;
    let (status, _) = suite
        .edge("acme")
        .send(reqwest::Method::GET, "/crm/accounts", &acme.admin, None)
        .await?;
    assert_eq!(status, StatusCode::OK);
    let browser = Browser::start("console-pages").await?;
    browser.resize(1280, 800).await?;

    browser.goto(&suite.url("acme", "/admin/roles")).await?;
    super::sso::sign_in(&browser, "admin@acme.test").await?;
    browser.wait_for("#roles").await?;
    browser
        .type_into("#create-role input[name=name]", "support")
        .await?;
    browser
        .type_into(
            "#create-role input[name=permissions]",
            "crm.read, crm.accounts.write",
        )
        .await?;
    browser.click("#create-role button[type=submit]").await?;
    eventually(Duration::from_secs(10), || async {
        browser
            .text_of("#roles")
            .await
            .is_ok_and(|t| t.contains("Holders"))
            && browser.has("input[value=support]").await
    })
    .await?;
    browser.screenshot("01-roles").await?;

    let support: Uuid = sqlx::query_scalar(
        "select id from roles where tenant_id = $1 and name = 'support' and not deleted",
    )
    .bind(acme.id)
    .fetch_one(&w.db.pool)
    .await?;
    browser
        .goto(&suite.url("acme", &format!("/admin/memberships?role={support}")))
        .await?;
    browser
        .type_into("#grant input[name=email]", "member@acme.test")
        .await?;
    browser.click("#grant button[type=submit]").await?;
    eventually(Duration::from_secs(10), || async {
        browser
            .text_of("#memberships")
            .await
            .is_ok_and(|t| t.contains("member@acme.test") && t.contains("support"))
    })
    .await?;
    browser.screenshot("02-memberships").await?;

    browser.goto(&suite.url("acme", "/admin/settings")).await?;
    browser
        .type_into("textarea[name=values]", r#"{"locale": "fr", "seats": 12}"#)
        .await?;
    browser
        .click("#replace-settings button[type=submit]")
        .await?;
    eventually(Duration::from_secs(10), || async {
        browser
            .text_of("#settings")
            .await
            .is_ok_and(|t| t.contains("locale"))
    })
    .await?;
    browser
        .type_into(
            "#request-domain input[name=domain]",
            "portal.acme-corp.example",
        )
        .await?;
    browser.click("#request-domain button[type=submit]").await?;
    browser.wait_for("#pending-domain").await?;
    browser.screenshot("03-settings-domain-waiting").await?;
    browser.resize(1280, 1200).await?;
    browser.screenshot("03b-settings-whole-page").await?;
    browser.resize(1280, 800).await?;

    // Another site's page with a form aimed at the settings: the browser posts it from that
    // origin, the console refuses it, and the settings stay as they were.
    let target = suite.url("acme", "/admin/settings");
    let evil = serve(axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let target = target.clone();
            async move {
                axum::response::Html(format!(
                    r#"<!doctype html><title>Win a prize</title><form method="post" action="{target}" id="prize"><input type="hidden" name="values" value='{{"hacked": true}}'><button type="submit">Claim</button></form>"#
                ))
            }
        }),
    ))
    .await?;
    browser.goto(&format!("http://{}/", evil.addr)).await?;
    browser.click("#prize button").await?;
    eventually(Duration::from_secs(10), || async {
        browser
            .text()
            .await
            .is_ok_and(|t| t.contains("Not allowed") || t.contains("origin"))
    })
    .await?;
    browser.screenshot("03c-cross-site-form-refused").await?;
    let settings = w
        .get_ok(&format!("/api/tenants/{}/settings", acme.id), &acme.admin)
        .await;
    assert_eq!(settings["values"], json!({"locale": "fr", "seats": 12}));

    // A dead letter of acme's in the CRM, then the organisation's sync page.
    let redis = redis_client(&w.state.settings.redis_url.0).await?;
    let keys = StreamKeys::new(
        w.state.settings.namespace.clone(),
        w.state.settings.partitions,
    )
    .unwrap();
    poison(&redis, &keys, acme.id, "handler failed: store down").await?;
    let sync = suite.url("acme", "/admin/sync");
    eventually(Duration::from_secs(20), || async {
        browser.goto(&sync).await.is_ok()
            && browser
                .text_of("#state-crm")
                .await
                .is_ok_and(|t| t.contains("1 of 1 replicas ready"))
    })
    .await?;
    assert_eq!(browser.text_of("#dead-letters-crm").await?, "1");
    browser.wait_for("#history-crm").await?;
    browser.screenshot("04-tenant-sync").await?;
    browser.resize(1280, 1400).await?;
    browser.screenshot("04b-tenant-sync-whole-page").await?;
    browser.resize(1280, 800).await?;
    browser.click("#resync-crm button[type=submit]").await?;
    browser.wait_for("#notice").await?;

    // The platform admin approves the domain on the tenants page.
    browser.delete_cookies().await?;
    browser.goto(&format!("{}/admin/tenants", w.url)).await?;
    super::sso::sign_in(&browser, "root@platform.test").await?;
    browser.wait_for("#pending-domains").await?;
    browser.screenshot("05-platform-tenants").await?;
    browser.click(&format!("#approve-{}", acme.id)).await?;
    eventually(Duration::from_secs(10), || async {
        !browser.has("#pending-domains").await
            && browser
                .text_of("#tenants")
                .await
                .is_ok_and(|t| t.contains("portal.acme-corp.example"))
    })
    .await?;
    browser.screenshot("06-platform-domain-approved").await?;
    let active: Option<String> =
        scalar(w, "select domain from tenants where id = $1", acme.id).await;
    assert_eq!(active.as_deref(), Some("portal.acme-corp.example"));
    Ok(())
}

/// What an app's replica reports (here written as the SDK's reporter writes it, for an app that
/// is behind on acme's partition and holds acme's events back) is what the lag history keeps,
/// partition by partition, and what the pages draw; another tenant sees none of acme's.
#[tokio::test]
async fn the_lag_history_keeps_what_replicas_report_per_partition() -> anyhow::Result<()> {
    use sync_sdk::{
        consumer::{HealthReport, ParkedTenant, PartitionReport},
        status::ReplicaStatus,
    };
    let suite = Suite::start(|s| s.lag_history_secs = 1).await?;
    let w = &suite.wrapper;
    let acme = w.create_tenant("acme").await;
    let globex = w.create_tenant("globex").await;
    let manifest =
        serde_json::to_value(sync_sdk::contract::AppManifest::new("reports", "Reports"))?;
    w.send_ok(reqwest::Method::PUT, "/api/apps/reports", &w.root, manifest)
        .await;
    let redis = redis_client(&w.state.settings.redis_url.0).await?;
    let keys = StreamKeys::new(
        w.state.settings.namespace.clone(),
        w.state.settings.partitions,
    )
    .unwrap();
    let p = keys.partition_of(acme.id);
    let report = |now_ms: u64| ReplicaStatus {
        app: "reports".into(),
        replica: "reports-1".into(),
        reported_at_ms: now_ms,
        health: HealthReport {
            ready: false,
            reasons: vec!["partition behind".into()],
            resyncs_pending: 0,
            partitions: (0..keys.partitions())
                .map(|i| PartitionReport {
                    partition: i,
                    alive: true,
                    restarts: 0,
                    last_death: None,
                    lag: Some(if i == p { 42 } else { 0 }),
                    pending: Some(if i == p { 3 } else { 0 }),
                    oldest_pending_age_ms: Some(if i == p { 1500 } else { 0 }),
                    parked: if i == p {
                        vec![ParkedTenant {
                            tenant_id: acme.id,
                            reason: "handler".into(),
                            entries: 3,
                        }]
                    } else {
                        vec![]
                    },
                })
                .collect(),
        },
        resyncs: vec![],
        tenants_loaded: Some(1),
    };
    let history = eventually_some(Duration::from_secs(20), || async {
        let now = chrono::Utc::now().timestamp_millis() as u64;
        let json = serde_json::to_string(&report(now)).ok()?;
        let _: i64 = fred::interfaces::HashesInterface::hset(
            &redis,
            keys.status("reports"),
            ("reports-1", json),
        )
        .await
        .ok()?;
        let h = w
            .get_ok(
                "/api/admin/sync-health/reports/lag-history?minutes=5",
                &w.root,
            )
            .await;
        let last = h["items"].as_array()?.last()?.clone();
        (last["partitions"][p as usize] == json!([42, 3])).then_some(last)
    })
    .await?;
    assert_eq!(
        history["partitions"].as_array().map(Vec::len),
        Some(keys.partitions() as usize)
    );

    let mine = w
        .get_ok(
            &format!("/api/tenants/{}/sync-health", acme.id),
            &acme.admin,
        )
        .await;
    let app = mine["apps"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["app"] == "reports"))
        .cloned()
        .expect("the reports app");
    assert_eq!(app["lag"], 42);
    assert_eq!(app["pending"], 3);
    assert_eq!(app["oldestPendingAgeMs"], 1500);
    assert_eq!(app["parked"], json!([{"reason": "handler", "entries": 3}]));
    assert_eq!(
        (
            app["replicasReporting"].clone(),
            app["replicasReady"].clone()
        ),
        (json!(1), json!(0))
    );
    assert!(
        app["lagHistory"]
            .as_array()
            .is_some_and(|h| h.iter().any(|s| s[1] == 42 && s[2] == 3)),
        "{app}"
    );
    let theirs = w
        .get_ok(
            &format!("/api/tenants/{}/sync-health", globex.id),
            &globex.admin,
        )
        .await;
    let theirs_app = theirs["apps"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["app"] == "reports"))
        .cloned()
        .expect("the reports app");
    assert_eq!(theirs_app["parked"], json!([]));
    assert!(!theirs.to_string().contains(&acme.id.to_string()));

    // The pages draw it: the tenant's history and held-back events, the platform's charts.
    let (_, page) = Console::tenant(&suite, "acme", &acme.admin)
        .get("/admin/sync")
        .await?;
    assert!(page.contains("3 event(s) held back (handler)"), "{page}");
    assert!(page.contains("<title>not yet read: 42 ("));
    assert!(page.contains("0 of 1 replicas ready"));
    let (_, platform) = Console::platform(&suite, &w.root)
        .get("/admin/sync-health")
        .await?;
    let section = platform
        .split(r#"<section id="app-reports">"#)
        .nth(1)
        .unwrap_or_default();
    assert!(
        section.contains(&format!("<title>not yet read: 42 (P{p})</title>")),
        "{section}"
    );
    assert!(
        section.contains(r#"id="history-reports""#)
            && section.contains("<title>not yet read: 42 (")
    );
    Ok(())
}
