//! The admin console over HTTP: the credits page through nginx on the tenant's host (balances,
//! the server-drawn consumption chart, grants, thresholds), refused to members and sent to
//! sign-in without a session; the sync-health page on the platform host with its redrive form,
//! refused without this origin. Pages carry the strict content security policy and no script.

use std::collections::HashMap;

use reqwest::{StatusCode, header};
use serde_json::json;
use sync_sdk::{
    contract::StreamKeys,
    dlq::{self, DeadLetter},
};
use tsync_e2e::{suite::Suite, *};

const COOKIE: &str = "tsync_session";

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_credits_page_charts_consumption_per_app_and_only_admins_see_it() -> anyhow::Result<()>
{
    let suite = Suite::start(|_| {}).await?;
    let (w, nginx) = (&suite.wrapper, &suite.nginx);
    let acme = w.create_tenant("acme").await;
    let (_, member) = w.create_member(&acme, "member@acme.test").await;
    w.fund_app(&acme, "crm", 1000).await;
    w.send_ok(
        reqwest::Method::POST,
        &format!("/api/tenants/{}/credits/thresholds", acme.id),
        &acme.admin,
        json!({"scope": "app:crm", "kind": "percent_used", "value": 80}),
    )
    .await;
    let http = no_redirects();
    for name in ["Initech", "Globex"] {
        let created = http
            .post(format!("{}/crm/accounts", nginx.url()))
            .header("host", "acme.yourapp.test")
            .bearer_auth(&acme.admin)
            .json(&json!({"name": name, "value": 10, "ownerId": acme.admin_id}))
            .send()
            .await?;
        assert_eq!(created.status(), StatusCode::CREATED);
    }
    let page = |token: Option<String>| {
        let mut req = http
            .get(format!("{}/admin/credits", nginx.url()))
            .header("host", "acme.yourapp.test");
        if let Some(t) = token {
            req = req.header(header::COOKIE, format!("{COOKIE}={t}"));
        }
        req.send()
    };
    let shown = page(Some(acme.admin.clone())).await?;
    assert_eq!(shown.status(), StatusCode::OK);
    let csp = shown.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()?
        .to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let body = shown.text().await?;
    assert!(!body.contains("<script"), "no script");
    assert!(body.contains(r#"id="usage-chart""#), "the chart");
    let today = chrono::Utc::now().format("%d %b").to_string();
    assert!(
        body.contains(&format!("<title>crm: 70 ({today})</title>")),
        "two accounts of 35 today, one bar segment: {body}"
    );
    assert!(
        body.contains(r#"id="balances""#) && body.contains("930"),
        "the balance"
    );
    assert!(
        body.contains("percent used") && body.contains("80 %"),
        "the threshold"
    );

    // The ledger's filters: by kind and application, by day, on the page and in the API.
    let ledger = |query: &str| {
        http.get(format!("{}/admin/credits?{query}", nginx.url()))
            .header("host", "acme.yourapp.test")
            .header(header::COOKIE, format!("{COOKIE}={}", acme.admin))
            .send()
    };
    let consumptions = ledger("kind=consumption&application=crm")
        .await?
        .text()
        .await?;
    let rows = |page: &str| {
        let table = page.split(r#"<table id="ledger">"#).nth(1).unwrap_or("");
        let table = table.split("</table>").next().unwrap_or("").to_owned();
        table.matches("<tr>").count() - 1
    };
    assert_eq!(rows(&consumptions), 2, "{consumptions}");
    assert!(consumptions.contains(r#"<option value="consumption" selected>"#));
    let allocations = ledger("kind=allocation").await?.text().await?;
    assert!(rows(&allocations) >= 1 && !allocations.contains("<td>consumption</td>"));
    let tomorrow = (chrono::Utc::now() + chrono::TimeDelta::days(1)).format("%Y-%m-%d");
    let none = ledger(&format!("from={tomorrow}")).await?.text().await?;
    assert_eq!(rows(&none), 0);
    assert!(none.contains("No entry matches."));
    let api = w
        .get_ok(
            &format!("/api/credits/ledger?tenantId={}&kind=consumption", acme.id),
            &acme.admin,
        )
        .await;
    assert_eq!(api["items"].as_array().map(Vec::len), Some(2), "{api}");

    let refused = page(Some(member)).await?;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(refused.text().await?.contains(r#"id="error""#));
    let anonymous = page(None).await?;
    assert_eq!(anonymous.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        anonymous.headers()[header::LOCATION],
        "/auth/login?return_to=%2Fadmin%2Fcredits"
    );
    // Another tenant's admin on this host: refused, and audited as a cross-tenant attempt.
    let other = w.create_tenant("globex").await;
    assert_eq!(
        page(Some(other.admin.clone())).await?.status(),
        StatusCode::FORBIDDEN
    );
    let audited: i64 = sqlx::query_scalar(
        "select count(*) from audit_log where tenant_id = $1 and action = 'cross_tenant_attempt'",
    )
    .bind(acme.id)
    .fetch_one(&w.db.pool)
    .await?;
    assert!(audited >= 1);

    // The audit page shows that refusal, filtered by action and day, without naming the other
    // tenant's user (an id, not their address).
    let audit = |query: String| {
        http.get(format!("{}/admin/audit?{query}", nginx.url()))
            .header("host", "acme.yourapp.test")
            .header(header::COOKIE, format!("{COOKIE}={}", acme.admin))
            .send()
    };
    let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let shown = audit(format!("action=cross_tenant_attempt&from={day}&to={day}"))
        .await?
        .text()
        .await?;
    assert!(
        shown.contains("<td>cross_tenant_attempt</td><td>denied</td>"),
        "{shown}"
    );
    assert!(shown.contains(&other.admin_id.to_string()));
    assert!(
        !shown.contains("admin@globex.test"),
        "no other tenant's address"
    );
    let tomorrow = (chrono::Utc::now() + chrono::TimeDelta::days(1)).format("%Y-%m-%d");
    let none = audit(format!("action=cross_tenant_attempt&from={tomorrow}"))
        .await?
        .text()
        .await?;
    assert!(none.contains("No entry matches."));
    Ok(())
}

#[tokio::test]
async fn the_sync_health_page_lists_dead_letters_and_its_form_redrives_them() -> anyhow::Result<()>
{
    let suite = Suite::start(|_| {}).await?;
    let w = &suite.wrapper;
    let acme = w.create_tenant("acme").await;
    let redis = redis_client(&w.state.settings.redis_url.0).await?;
    let keys = StreamKeys::new(
        w.state.settings.namespace.clone(),
        w.state.settings.partitions,
    )
    .unwrap();
    // The tenant's first event, as if the CRM's handler had failed on it: once redriven, the
    // fixed handler (here: the CRM, which applied it already) takes it without a new letter.
    let stream = keys.events_for(acme.id);
    let tenant = acme.id.to_string();
    let (id, fields): (String, HashMap<String, String>) =
        eventually_some(std::time::Duration::from_secs(10), || async {
            let entries: Vec<(String, HashMap<String, String>)> =
                fred::interfaces::StreamsInterface::xrange(&redis, &stream, "-", "+", None)
                    .await
                    .ok()?;
            entries
                .into_iter()
                .find(|(_, f)| f.get("tenantId") == Some(&tenant))
        })
        .await?;
    let letter = DeadLetter::new(
        &stream,
        &id,
        &fields,
        "handler failed: store down".into(),
        5,
    );
    dlq::push(&redis, &keys, "crm", &letter).await?;

    let http = no_redirects();
    let cookie = format!("{COOKIE}={}", w.root);
    // The platform host: the wrapper's own address (WRAPPER_ADMIN_HOST is 127.0.0.1).
    let page = http
        .get(format!("{}/admin/sync-health", w.url))
        .header(header::COOKIE, &cookie)
        .send()
        .await?;
    assert_eq!(page.status(), StatusCode::OK);
    let body = page.text().await?;
    assert!(body.contains(r#"id="app-crm""#), "{body}");
    assert!(
        body.contains(r#"<span id="dead-letters-crm">1</span>"#),
        "{body}"
    );
    assert!(body.contains("handler failed: store down"));
    assert!(body.contains(r#"id="lag-crm""#), "the lag chart");

    let form = [
        ("tenantId", acme.id.to_string()),
        ("eventType", String::new()),
    ];
    // Without this origin: refused by the CSRF guard, nothing moved.
    let forged = http
        .post(format!("{}/admin/sync-health/crm/redrive", w.url))
        .header(header::COOKIE, &cookie)
        .header(header::ORIGIN, "https://evil.example")
        .form(&form)
        .send()
        .await?;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert_eq!(dlq::list(&redis, &keys, "crm", None).await?.len(), 1);
    let done = http
        .post(format!("{}/admin/sync-health/crm/redrive", w.url))
        .header(header::COOKIE, &cookie)
        .header(header::ORIGIN, &w.url)
        .form(&form)
        .send()
        .await?;
    assert_eq!(
        done.status(),
        StatusCode::SEE_OTHER,
        "{}",
        done.text().await?
    );
    assert!(dlq::list(&redis, &keys, "crm", None).await?.is_empty());
    let after = http
        .get(format!("{}/admin/sync-health?app=crm&redriven=1", w.url))
        .header(header::COOKIE, &cookie)
        .send()
        .await?
        .text()
        .await?;
    assert!(after.contains(r#"<span id="dead-letters-crm">0</span>"#));
    assert!(
        after.contains("1 dead letter(s) of crm redriven."),
        "{after}"
    );
    // The notice shows only what the page knows: no text from the address.
    let spoofed = http
        .get(format!(
            "{}/admin/sync-health?app=Call+us+at+555&redriven=1",
            w.url
        ))
        .header(header::COOKIE, &cookie)
        .send()
        .await?
        .text()
        .await?;
    assert!(!spoofed.contains("Call us") && !spoofed.contains(r#"id="notice""#));
    // Every tenant, for platform admins.
    let tenants = http
        .get(format!("{}/admin/tenants", w.url))
        .header(header::COOKIE, &cookie)
        .send()
        .await?
        .text()
        .await?;
    assert!(
        tenants.contains(r#"id="tenants""#) && tenants.contains("<td>acme</td>"),
        "{tenants}"
    );
    // A tenant admin is not an operator, here or on their own host.
    let refused = http
        .get(format!("{}/admin/sync-health", w.url))
        .header(header::COOKIE, format!("{COOKIE}={}", acme.admin))
        .send()
        .await?;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let refused = http
        .get(format!("{}/admin/tenants", w.url))
        .header(header::COOKIE, format!("{COOKIE}={}", acme.admin))
        .send()
        .await?;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    Ok(())
}

/// In headless Chromium at 1280×800: a tenant admin signs in and sees the credits chart, a
/// member gets the 403 page, and a platform admin sees a dead letter on the sync-health page
/// and empties the queue with the redrive button. Screenshots in
/// `target/test-artifacts/console/`.
#[tokio::test]
async fn in_a_browser_admins_see_credits_and_sync_health_and_redrive_with_a_button()
-> anyhow::Result<()> {
    use tsync_e2e::browser::Browser;
    let suite = Suite::start(|_| {}).await?;
    let w = &suite.wrapper;
    let acme = w.create_tenant("acme").await;
    w.create_member(&acme, "member@acme.test").await;
    w.fund_app(&acme, "crm", 1000).await;
    for name in ["Initech", "Globex", "Umbrella"] {
        let created = no_redirects()
            .post(format!("{}/crm/accounts", suite.nginx.url()))
            .header("host", "acme.yourapp.test")
            .bearer_auth(&acme.admin)
            .json(&json!({"name": name, "value": 10, "ownerId": acme.admin_id}))
            .send()
            .await?;
        assert_eq!(created.status(), StatusCode::CREATED);
    }
    let browser = Browser::start("console").await?;
    browser.resize(1280, 800).await?;
    let sign_in = |email: &'static str| super::sso::sign_in(&browser, email);

    browser.goto(&suite.url("acme", "/admin/credits")).await?;
    sign_in("admin@acme.test").await?;
    browser
        .wait_for_url("the credits page", |u| u.ends_with("/admin/credits"))
        .await?;
    browser.wait_for("#usage-chart").await?;
    assert!(browser.text_of("#balances").await?.contains("895"));
    browser.screenshot("01-tenant-admin-credits").await?;
    // The users page: add a user with the form; the CRM then knows her.
    browser.goto(&suite.url("acme", "/admin/users")).await?;
    browser
        .type_into("input[name=fullName]", "Grace Hopper")
        .await?;
    browser
        .type_into("input[name=email]", "grace@acme.test")
        .await?;
    browser.click("#create-user button[type=submit]").await?;
    browser.wait_for("#notice").await?;
    assert!(browser.text_of("#users").await?.contains("grace@acme.test"));
    browser.screenshot("01b-tenant-admin-added-a-user").await?;
    let grace: uuid::Uuid =
        sqlx::query_scalar("select id from users where email = 'grace@acme.test'")
            .fetch_one(&w.db.pool)
            .await?;
    eventually(std::time::Duration::from_secs(20), || async {
        no_redirects()
            .post(format!("{}/crm/accounts", suite.nginx.url()))
            .header("host", "acme.yourapp.test")
            .bearer_auth(&acme.admin)
            .json(&json!({"name": "Navy", "value": 1, "ownerId": grace}))
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::CREATED)
    })
    .await?;

    browser.delete_cookies().await?;
    browser.goto(&suite.url("acme", "/admin/credits")).await?;
    sign_in("member@acme.test").await?;
    browser.wait_for("#error").await?;
    browser.screenshot("02-member-is-refused").await?;

    // A poison letter of the CRM, then the platform admin on the platform host.
    let redis = redis_client(&w.state.settings.redis_url.0).await?;
    let keys = StreamKeys::new(
        w.state.settings.namespace.clone(),
        w.state.settings.partitions,
    )
    .unwrap();
    let stream = keys.events_for(acme.id);
    let entries: Vec<(String, HashMap<String, String>)> =
        fred::interfaces::StreamsInterface::xrange(&redis, &stream, "-", "+", Some(1)).await?;
    let (id, fields) = entries.into_iter().next().expect("the tenant has events");
    let letter = DeadLetter::new(
        &stream,
        &id,
        &fields,
        "handler failed: store down".into(),
        5,
    );
    dlq::push(&redis, &keys, "crm", &letter).await?;
    browser.delete_cookies().await?;
    browser
        .goto(&format!("{}/admin/sync-health", w.url))
        .await?;
    sign_in("root@platform.test").await?;
    browser.wait_for("#app-crm").await?;
    // The CRM's first report is written as it starts, before its readers run: wait for the
    // one that says it is ready (a replica not ready reports every second).
    let url = format!("{}/admin/sync-health", w.url);
    eventually(std::time::Duration::from_secs(20), || async {
        browser.goto(&url).await.is_ok()
            && browser
                .text_of("#replicas-crm")
                .await
                .is_ok_and(|t| t.contains("ready") && !t.contains("not ready"))
    })
    .await?;
    assert_eq!(browser.text_of("#dead-letters-crm").await?, "1");
    browser
        .screenshot("03-sync-health-with-a-dead-letter")
        .await?;
    // The whole page, for the README.
    browser.resize(1280, 1500).await?;
    browser.screenshot("03b-sync-health-whole-page").await?;
    browser.resize(1280, 800).await?;
    browser.click("#redrive-crm button[type=submit]").await?;
    browser.wait_for("#notice").await?;
    assert_eq!(browser.text_of("#dead-letters-crm").await?, "0");
    assert!(dlq::list(&redis, &keys, "crm", None).await?.is_empty());
    browser.screenshot("04-sync-health-after-redrive").await?;
    Ok(())
}

/// The users page through nginx: a tenant admin adds a user with the form and the CRM can make
/// them an account's owner (the user reached it by the stream); a bad address is refused naming
/// the field and writes nothing; search finds the user; deactivation reaches the wrapper's API.
#[tokio::test]
async fn a_user_added_on_the_users_page_reaches_the_crm() -> anyhow::Result<()> {
    let suite = Suite::start(|_| {}).await?;
    let (w, nginx) = (&suite.wrapper, &suite.nginx);
    let acme = w.create_tenant("acme").await;
    w.fund_app(&acme, "crm", 1000).await;
    let http = no_redirects();
    let origin = suite.url("acme", "");
    let cookie = format!("{COOKIE}={}", acme.admin);
    let post = |path: &str, form: Vec<(&'static str, String)>| {
        http.post(format!("{}{path}", nginx.url()))
            .header("host", format!("acme.yourapp.test:{}", nginx.port))
            .header(header::ORIGIN, &origin)
            .header(header::COOKIE, &cookie)
            .form(&form)
            .send()
    };
    let users_before = w.count("users").await;
    let bad = post(
        "/admin/users",
        vec![
            ("fullName", "Nadia Nobody".into()),
            ("email", "not-an-address".into()),
            ("password", String::new()),
        ],
    )
    .await?;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert!(bad.text().await?.contains("email:"), "names the field");
    assert_eq!(w.count("users").await, users_before, "nothing written");

    let added = post(
        "/admin/users",
        vec![
            ("fullName", "Grace Hopper".into()),
            ("email", "grace@acme.test".into()),
            ("password", String::new()),
        ],
    )
    .await?;
    assert_eq!(added.status(), StatusCode::SEE_OTHER);
    let location = added.headers()[header::LOCATION].to_str()?.to_owned();
    let id: uuid::Uuid = location
        .rsplit_once("created=")
        .map(|(_, id)| id.parse())
        .expect("the new user's id")?;
    // The CRM knows her: she can own an account (it checks owners against its synced users).
    eventually(std::time::Duration::from_secs(20), || async {
        http.post(format!("{}/crm/accounts", nginx.url()))
            .header("host", "acme.yourapp.test")
            .bearer_auth(&acme.admin)
            .json(&json!({"name": "Navy", "value": 1, "ownerId": id}))
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::CREATED)
    })
    .await?;
    let found = http
        .get(format!("{}/admin/users?q=HOPPER", nginx.url()))
        .header("host", "acme.yourapp.test")
        .header(header::COOKIE, &cookie)
        .send()
        .await?
        .text()
        .await?;
    assert!(found.contains("grace@acme.test") && !found.contains("admin@acme.test"));

    // Credits move from the pool to an application with the credits form; more than the pool
    // holds is refused (402) and moves nothing.
    w.send_ok(
        reqwest::Method::POST,
        "/api/admin/credits/allocate",
        &w.root,
        json!({"tenantId": acme.id, "amount": 200}),
    )
    .await;
    let too_much = post(
        "/admin/credits/move",
        vec![("amount", "500".into()), ("application", "crm".into())],
    )
    .await?;
    assert_eq!(too_much.status(), StatusCode::PAYMENT_REQUIRED);
    let moved = post(
        "/admin/credits/move",
        vec![("amount", "150".into()), ("application", "crm".into())],
    )
    .await?;
    assert_eq!(moved.status(), StatusCode::SEE_OTHER);
    let balances = w
        .get_ok(
            &format!("/api/credits/balance?tenantId={}", acme.id),
            &acme.admin,
        )
        .await;
    let pool = balances["balances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["scope"] == "tenant")
        .unwrap()["balance"]
        .clone();
    assert_eq!(pool, 50, "{balances}");

    let deactivated = post(&format!("/admin/users/{id}/deactivate"), vec![]).await?;
    assert_eq!(deactivated.status(), StatusCode::SEE_OTHER);
    let user = w
        .get_ok(&format!("/api/tenants/{}/users/{id}", acme.id), &acme.admin)
        .await;
    assert_eq!(user["active"], false);
    Ok(())
}
