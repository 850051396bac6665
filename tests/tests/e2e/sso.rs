//! Single sign-on across the apps, in a real browser (headless Chromium through ChromeDriver)
//! and with plain HTTP for the refusals, always through the real nginx with the wrapper, CRM and
//! HRMS behind it. Screenshots of each browser step are saved under `target/test-artifacts/`.

use std::time::Duration;

use anyhow::Context;
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use sync_sdk::html::url_encode;
use tsync_e2e::{
    browser::Browser,
    oidc::OidcProvider,
    suite::Suite,
    wrapper_app::{PASSWORD, TestApp, TestTenant},
    *,
};
use uuid::Uuid;
use wrapper::identity::keys::{Claims, TokenKind};

/// A session token of `tenant`'s admin that expired an hour ago, signed with the wrapper's key.
async fn expired_session(w: &TestApp, tenant: &TestTenant) -> anyhow::Result<String> {
    let now = chrono::Utc::now().timestamp();
    w.state
        .keys
        .sign(&Claims {
            iss: w.state.keys.issuer().to_owned(),
            sub: tenant.admin_id.to_string(),
            iat: now - 7200,
            exp: now - 3600,
            jti: Uuid::now_v7().to_string(),
            kind: TokenKind::User,
            tid: Some(tenant.id),
            tsd: Some(tenant.subdomain.clone()),
            email: Some(format!("admin@{}.test", tenant.subdomain)),
            app: None,
        })
        .await
}

/// An account in the CRM and an employee in the HRMS, created through nginx with the API.
async fn seed_records(suite: &Suite, tenant: &TestTenant) -> anyhow::Result<()> {
    suite.wrapper.fund_app(tenant, "crm", 500).await;
    let http = reqwest::Client::new();
    for (path, body) in [
        (
            "/crm/accounts",
            json!({"name": "Initech", "value": 5000, "ownerId": tenant.admin_id}),
        ),
        (
            "/hrms/employees",
            json!({"userId": tenant.admin_id, "department": "Engineering", "salary": 100}),
        ),
    ] {
        let resp = http
            .post(format!("{}{path}", suite.nginx.url()))
            .header("host", suite.host(&tenant.subdomain))
            .bearer_auth(&tenant.admin)
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(
            resp.status() == StatusCode::CREATED,
            "{path}: {}",
            resp.status()
        );
    }
    Ok(())
}

/// Sign in on the page the browser shows as `email` (the test password).
pub(crate) async fn sign_in(browser: &Browser, email: &str) -> anyhow::Result<()> {
    browser.wait_for("#login").await?;
    browser.type_into("#email", email).await?;
    browser.type_into("#password", PASSWORD).await?;
    browser.click("#sign-in").await
}

/// Sign in at the fixture provider as `login` (any password), consenting when asked, until the
/// browser is at an address satisfying `done`.
async fn through_provider(
    browser: &Browser,
    provider: &OidcProvider,
    login: &str,
    done: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    let reached = eventually_some(Duration::from_secs(30), || async {
        let url = browser.url().await.ok()?;
        if done(&url) {
            return Some(());
        }
        if !url.starts_with(&provider.issuer) {
            return None; // on the way
        }
        if browser.has("input[name=login]").await {
            browser.type_into("input[name=login]", login).await.ok()?;
            browser
                .type_into("input[name=password]", "any password")
                .await
                .ok()?;
            browser.click("button[type=submit]").await.ok()?;
        } else if browser.has("button[type=submit]").await {
            // The consent prompt.
            browser.click("button[type=submit]").await.ok()?;
        }
        None
    })
    .await;
    if reached.is_err() {
        anyhow::bail!(
            "the provider never returned; the browser shows {} with: {}",
            browser.url().await?,
            browser.text().await?
        );
    }
    Ok(())
}

fn on_login(url: &str) -> bool {
    url.contains("/auth/login")
}

#[tokio::test]
async fn a_browser_signs_in_once_for_every_app_and_signs_out_of_all_of_them() -> anyhow::Result<()>
{
    let suite = Suite::start(|_| {}).await?;
    let w = &suite.wrapper;
    let acme = w.create_tenant("acme").await;
    seed_records(&suite, &acme).await?;
    let browser = Browser::start("sso-password").await?;

    // Unauthenticated: the CRM sends the browser to acme's sign-in page with a return address.
    browser.goto(&suite.url("acme", "/crm/")).await?;
    let login = browser.wait_for_url("the sign-in page", on_login).await?;
    assert_eq!(
        login,
        suite.url("acme", "/auth/login?return_to=%2Fcrm%2F"),
        "redirected with the return address"
    );
    assert!(browser.text().await?.contains("Sign in to ACME"));
    browser.screenshot("01-crm-asks-to-sign-in").await?;

    sign_in(&browser, "admin@acme.test").await?;
    browser
        .wait_for_url("the CRM dashboard", |u| u == suite.url("acme", "/crm/"))
        .await?;
    browser.wait_for("#tenant-name").await?;
    assert_eq!(browser.text_of("#tenant-name").await?, "ACME");
    assert_eq!(browser.text_of("#user-email").await?, "admin@acme.test");
    assert!(browser.text_of("#accounts").await?.contains("Initech"));
    browser.screenshot("02-crm-dashboard").await?;
    let cookies = browser.cookies().await?;
    let session = cookies
        .iter()
        .find(|c| c["name"] == "tsync_session")
        .context("no session cookie")?;
    assert_eq!(session["domain"], ".yourapp.test", "{session}");
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["sameSite"], "Lax", "{session}");

    // The HRMS opens without signing in again.
    browser.goto(&suite.url("acme", "/hrms/")).await?;
    browser.wait_for("#tenant-name").await?;
    assert_eq!(browser.url().await?, suite.url("acme", "/hrms/"));
    assert_eq!(browser.text_of("#user-email").await?, "admin@acme.test");
    assert!(browser.text_of("#employees").await?.contains("Engineering"));
    browser
        .screenshot("03-hrms-without-signing-in-again")
        .await?;

    // The tenant's own address lists its apps for the signed-in user.
    browser.goto(&suite.url("acme", "/")).await?;
    browser.wait_for("#apps").await?;
    assert!(browser.text_of("#apps").await?.contains("CRM"));
    browser.screenshot("03b-tenant-start-page").await?;
    browser.goto(&suite.url("acme", "/hrms/")).await?;
    browser.wait_for("#sign-out").await?;

    // Signing out of the HRMS signs out of both.
    browser.click("#sign-out").await?;
    let after = browser.wait_for_url("the sign-in page", on_login).await?;
    assert!(after.ends_with("return_to=%2Fhrms%2F"), "{after}");
    browser.screenshot("04-signed-out").await?;
    let cookies = browser.cookies().await?;
    assert!(
        !cookies.iter().any(|c| c["name"] == "tsync_session"),
        "the session cookie is gone: {cookies:?}"
    );
    for app in ["/crm/", "/hrms/"] {
        browser.goto(&suite.url("acme", app)).await?;
        let url = browser.wait_for_url("the sign-in page", on_login).await?;
        assert!(
            url.ends_with(&format!("return_to={}", url_encode(app))),
            "{url}"
        );
    }
    browser
        .screenshot("05-both-apps-ask-to-sign-in-again")
        .await?;

    // An expired session cookie is not a session.
    browser
        .set_cookie(
            "tsync_session",
            &expired_session(w, &acme).await?,
            ".yourapp.test",
        )
        .await?;
    browser.goto(&suite.url("acme", "/hrms/")).await?;
    browser.wait_for_url("the sign-in page", on_login).await?;
    assert!(browser.has("#login").await);

    // A globex user, signed in on globex, is refused on acme's dashboard; acme's log has it.
    let globex = w.create_tenant("globex").await;
    browser.goto(&suite.url("globex", "/crm/")).await?;
    browser
        .wait_for_url("globex's sign-in page", on_login)
        .await?;
    sign_in(&browser, "admin@globex.test").await?;
    browser
        .wait_for_url("globex's CRM", |u| u == suite.url("globex", "/crm/"))
        .await?;
    browser.wait_for("#tenant-name").await?;
    assert_eq!(browser.text_of("#tenant-name").await?, "GLOBEX");
    browser.goto(&suite.url("acme", "/crm/")).await?;
    browser.wait_for("#error").await?;
    assert!(browser.text().await?.contains("Access denied"));
    assert!(!browser.text().await?.contains("Initech"), "no acme data");
    browser.screenshot("06-globex-user-refused-on-acme").await?;
    // Reported by the CRM, in its own namespace (the actor is the app's claim).
    let audit_path = format!(
        "/api/tenants/{}/audit?action=crm:cross_tenant_attempt",
        acme.id
    );
    eventually(Duration::from_secs(10), || async {
        let (_, audit) = w
            .call(Method::GET, &audit_path, Some(&acme.admin), None)
            .await;
        audit["items"].as_array().is_some_and(|items| {
            items
                .iter()
                .any(|i| i["details"]["claimedActorId"] == json!(globex.admin_id))
        })
    })
    .await
    .context("the attempt is in acme's audit log")?;
    Ok(())
}

#[tokio::test]
async fn signing_in_through_a_real_openid_provider_lands_on_the_dashboard() -> anyhow::Result<()> {
    let port = free_port()?;
    let callback = |id: &str| format!("http://acme.yourapp.test:{port}/auth/oidc/{id}/callback");
    let provider = OidcProvider::start(&[callback("fixture"), callback("strict")]).await?;
    let providers = json!([
        provider.wrapper_config("fixture", "create"),
        {
            "id": "strict", "displayName": "Strict ID", "issuer": provider.issuer,
            "clientId": provider.client_id, "clientSecret": provider.client_secret,
            "policy": "existing", "tenants": ["acme"],
        },
    ]);
    let suite = Suite::start_on(port, |s| {
        s.oidc_providers = Some(wrapper::config::Secret(providers.to_string()));
    })
    .await?;
    let w = &suite.wrapper;
    let acme = w.create_tenant("acme").await;
    let browser = Browser::start("sso-oidc").await?;

    browser.goto(&suite.url("acme", "/crm/")).await?;
    browser.wait_for_url("the sign-in page", on_login).await?;
    assert!(browser.text().await?.contains("Sign in with Fixture ID"));
    browser.screenshot("01-sign-in-page-with-provider").await?;
    browser.click("#provider-fixture").await?;
    browser
        .wait_for_url("the provider", |u| u.starts_with(&provider.issuer))
        .await?;
    browser.wait_for("input[name=login]").await?;
    browser.screenshot("02-provider-sign-in").await?;
    let dashboard = suite.url("acme", "/crm/");
    through_provider(&browser, &provider, "new.person@acme.test", |u| {
        u == dashboard
    })
    .await?;
    browser
        .wait_for_url("the CRM dashboard", |u| u == dashboard)
        .await?;
    browser.wait_for("#tenant-name").await?;
    assert_eq!(browser.text_of("#tenant-name").await?, "ACME");
    assert_eq!(
        browser.text_of("#user-email").await?,
        "new.person@acme.test"
    );
    assert_eq!(browser.text_of("#user-name").await?, "New Person");
    browser.screenshot("04-crm-dashboard-after-oidc").await?;

    // The "create" policy made the user in acme, email verified, with its event published.
    let users = w
        .get_ok(
            &format!("/api/tenants/{}/users?limit=100", acme.id),
            &acme.admin,
        )
        .await;
    let created = users["items"]
        .as_array()
        .and_then(|items| items.iter().find(|u| u["email"] == "new.person@acme.test"))
        .cloned()
        .context("the provider's user exists in acme")?;
    assert_eq!(created["emailVerified"], true);
    let events: i64 = sqlx::query_scalar(
        "select count(*) from outbox where tenant_id = $1 and event_type = 'user.created'
           and envelope like '%new.person@acme.test%'",
    )
    .bind(acme.id)
    .fetch_one(&w.db.pool)
    .await?;
    assert_eq!(events, 1);

    // The "existing" policy: a user who has an account (matched by verified email) signs in;
    // here the provider still remembers new.person, so it returns at once.
    browser.click("#sign-out").await?;
    browser.wait_for_url("the sign-in page", on_login).await?;
    browser.click("#provider-strict").await?;
    through_provider(&browser, &provider, "new.person@acme.test", |u| {
        u == dashboard
    })
    .await?;
    browser.wait_for("#user-email").await?;
    assert_eq!(
        browser.text_of("#user-email").await?,
        "new.person@acme.test"
    );

    // ... and someone without an account is refused, and nobody is created.
    browser
        .goto(&format!(
            "{}/.well-known/openid-configuration",
            provider.issuer
        ))
        .await?;
    browser.delete_cookies().await?; // the provider forgets new.person
    browser.goto(&dashboard).await?;
    browser.wait_for("#sign-out").await?;
    browser.click("#sign-out").await?;
    browser.wait_for_url("the sign-in page", on_login).await?;
    browser.click("#provider-strict").await?;
    let callback = suite.url("acme", "/auth/oidc/strict/callback");
    through_provider(&browser, &provider, "stranger@acme.test", |u| {
        u.starts_with(&callback)
    })
    .await?;
    browser.wait_for("#error").await?;
    let text = browser.text().await?;
    assert!(text.contains("Sign-in failed"), "{text}");
    browser
        .screenshot("05-existing-policy-refuses-unknown-user")
        .await?;
    assert!(
        !browser
            .cookies()
            .await?
            .iter()
            .any(|c| c["name"] == "tsync_session"),
        "no session for a refused sign-in"
    );
    let users: i64 = sqlx::query_scalar("select count(*) from users where tenant_id = $1")
        .bind(acme.id)
        .fetch_one(&w.db.pool)
        .await?;
    assert_eq!(
        users, 2,
        "the first admin and the provider's user, nobody else"
    );
    Ok(())
}

#[tokio::test]
async fn open_redirects_forged_posts_expired_and_foreign_sessions_are_refused() -> anyhow::Result<()>
{
    let suite = Suite::start(|_| {}).await?;
    let w = &suite.wrapper;
    let acme = w.create_tenant("acme").await;
    let globex = w.create_tenant("globex").await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let host = suite.host("acme");
    let origin = format!("http://{host}");
    let request = |method: Method, path: &str| {
        http.request(method, format!("{}{path}", suite.nginx.url()))
            .header("host", &host)
    };
    let form = |return_to: &str| {
        format!(
            "email=admin%40acme.test&password={}&return_to={}",
            url_encode(PASSWORD),
            url_encode(return_to)
        )
    };
    let login = |body: String, origin: Option<&str>| {
        let mut req = request(Method::POST, "/auth/login")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send()
    };
    let logins = || async {
        let (_, audit) = w
            .call(
                Method::GET,
                &format!("/api/tenants/{}/audit?action=login", acme.id),
                Some(&acme.admin),
                None,
            )
            .await;
        audit["items"].as_array().map_or(0, Vec::len)
    };
    let logins_before = logins().await;

    // Open redirects: other hosts, protocol-relative and sibling-tenant addresses are refused
    // before anything happens, on the page and on the form.
    for evil in [
        "https://evil.test/".to_owned(),
        "//evil.test/".to_owned(),
        format!("http://globex.yourapp.test:{}/crm/", suite.nginx.port),
        "/\\evil.test".to_owned(),
    ] {
        let page = request(
            Method::GET,
            &format!("/auth/login?return_to={}", url_encode(&evil)),
        )
        .send()
        .await?;
        assert_eq!(page.status(), StatusCode::BAD_REQUEST, "page {evil}");
        let posted = login(form(&evil), Some(&origin)).await?;
        assert_eq!(posted.status(), StatusCode::BAD_REQUEST, "form {evil}");
        assert!(posted.headers().get(header::LOCATION).is_none());
        assert!(
            posted.headers().get(header::SET_COOKIE).is_none(),
            "no session for {evil}"
        );
        let oidc = request(
            Method::GET,
            &format!("/auth/oidc/any/start?return_to={}", url_encode(&evil)),
        )
        .send()
        .await?;
        assert_eq!(oidc.status(), StatusCode::BAD_REQUEST, "oidc start {evil}");
    }
    // An absolute address on the tenant's own host is accepted, as a path.
    let ok = login(form(&format!("{origin}/hrms/?tab=1")), Some(&origin)).await?;
    assert_eq!(ok.status(), StatusCode::SEE_OTHER);
    assert_eq!(ok.headers()[header::LOCATION], "/hrms/?tab=1");
    let cookie = ok.headers()[header::SET_COOKIE].to_str()?.to_owned();
    let session = cookie.split(';').next().context("cookie")?.to_owned();

    // The tenant's address itself: sign-in first, then its apps.
    let start = request(Method::GET, "/").send().await?;
    assert_eq!(start.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        start.headers()[header::LOCATION],
        "/auth/login?return_to=%2F"
    );
    let portal = request(Method::GET, "/")
        .header("cookie", &session)
        .send()
        .await?;
    assert_eq!(portal.status(), StatusCode::OK);
    let portal = portal.text().await?;
    assert!(
        portal.contains(r#"href="/crm/""#) && portal.contains(r#"href="/hrms/""#),
        "{portal}"
    );
    assert!(portal.contains("admin@acme.test"));
    let foreign_portal = request(Method::GET, "/")
        .header("cookie", format!("tsync_session={}", globex.admin))
        .send()
        .await?;
    assert_eq!(
        foreign_portal.status(),
        StatusCode::SEE_OTHER,
        "globex's session is not acme's"
    );

    // The sign-in page of a signed-in user goes straight back; another tenant's session does
    // not count here. The page cannot be framed and runs no script.
    let again = request(Method::GET, "/auth/login?return_to=%2Fcrm%2F")
        .header("cookie", &session)
        .send()
        .await?;
    assert_eq!(again.status(), StatusCode::SEE_OTHER);
    assert_eq!(again.headers()[header::LOCATION], "/crm/");
    let page = request(Method::GET, "/auth/login?return_to=%2Fcrm%2F")
        .header("cookie", format!("tsync_session={}", globex.admin))
        .send()
        .await?;
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()[header::CONTENT_SECURITY_POLICY].to_str()?;
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert_eq!(page.headers()["x-frame-options"], "DENY");

    // Login CSRF: a form posted from another site (or with no origin at all) is refused and
    // writes nothing, not even a failed-login entry.
    for origin in [Some("http://evil.test"), Some("null"), None] {
        let forged = login(form("/crm/"), origin).await?;
        assert_eq!(forged.status(), StatusCode::FORBIDDEN, "{origin:?}");
        assert!(forged.headers().get(header::SET_COOKIE).is_none());
        let body: Value = forged.json().await?;
        assert_eq!(body["reason"], "csrf", "{body}");
    }
    assert_eq!(
        logins().await,
        logins_before + 1,
        "only the real sign-in was recorded"
    );

    // CSRF on the wrapper's API with the cookie: refused from another origin, nothing changed.
    let user_path = format!("/api/tenants/{}/users/{}", acme.id, acme.admin_id);
    let rename = |origin: &str| {
        request(Method::PATCH, &user_path)
            .header("cookie", &session)
            .header("origin", origin)
            .json(&json!({"fullName": "Mallory Was Here"}))
            .send()
    };
    assert_eq!(
        rename("http://evil.test").await?.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        w.get_ok(&user_path, &acme.admin).await["fullName"],
        "First Admin"
    );
    assert_eq!(
        rename(&origin).await?.status(),
        StatusCode::OK,
        "same origin passes"
    );
    assert_eq!(
        w.get_ok(&user_path, &acme.admin).await["fullName"],
        "Mallory Was Here"
    );

    // CSRF in the apps (the SDK's session layer): an employee posted from another site is
    // refused and not created; from the tenant's own page it is.
    let hire = |origin: &str| {
        request(Method::POST, "/hrms/employees")
            .header("cookie", &session)
            .header("origin", origin)
            .json(&json!({"userId": acme.admin_id, "department": "Forged", "salary": 1}))
            .send()
    };
    assert_eq!(
        hire("http://evil.test").await?.status(),
        StatusCode::FORBIDDEN
    );
    let listed: Value = request(Method::GET, "/hrms/employees")
        .header("cookie", &session)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(listed["items"], json!([]), "nothing was created");
    assert_eq!(hire(&origin).await?.status(), StatusCode::CREATED);

    // A forged sign-out does not sign anyone out.
    let forged_logout = request(Method::POST, "/auth/logout")
        .header("cookie", &session)
        .header("origin", "http://evil.test")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("return_to=%2F")
        .send()
        .await?;
    assert_eq!(forged_logout.status(), StatusCode::FORBIDDEN);
    assert!(forged_logout.headers().get(header::SET_COOKIE).is_none());

    // A real sign-out ends the session everywhere: a copy of the token kept elsewhere no longer
    // works at the wrapper or in either app (cookie or Bearer).
    let token = session.trim_start_matches("tsync_session=").to_owned();
    let me = || {
        request(Method::GET, "/auth/me")
            .header("cookie", &session)
            .send()
    };
    assert_eq!(me().await?.status(), StatusCode::OK);
    let logout = request(Method::POST, "/auth/logout")
        .header("cookie", &session)
        .header("origin", &origin)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("return_to=%2Fcrm%2F")
        .send()
        .await?;
    assert_eq!(logout.status(), StatusCode::SEE_OTHER);
    assert_eq!(me().await?.status(), StatusCode::UNAUTHORIZED);
    let dashboard = request(Method::GET, "/crm/")
        .header("cookie", &session)
        .send()
        .await?;
    assert_eq!(dashboard.status(), StatusCode::SEE_OTHER, "back to sign-in");
    let employees = request(Method::GET, "/hrms/employees")
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(employees.status(), StatusCode::UNAUTHORIZED);
    let again = request(Method::GET, "/auth/login?return_to=%2Fcrm%2F")
        .header("cookie", &session)
        .send()
        .await?;
    assert_eq!(
        again.status(),
        StatusCode::OK,
        "the sign-in page asks again"
    );

    // An expired cookie: the dashboards send the browser to sign in, the APIs answer 401.
    let expired = format!("tsync_session={}", expired_session(w, &acme).await?);
    for (path, status) in [
        ("/crm/", StatusCode::SEE_OTHER),
        ("/hrms/", StatusCode::SEE_OTHER),
        ("/crm/accounts", StatusCode::UNAUTHORIZED),
        ("/auth/me", StatusCode::UNAUTHORIZED),
    ] {
        let resp = request(Method::GET, path)
            .header("cookie", &expired)
            .send()
            .await?;
        assert_eq!(resp.status(), status, "{path}");
        if status == StatusCode::SEE_OTHER {
            assert_eq!(
                resp.headers()[header::LOCATION],
                format!("/auth/login?return_to={}", url_encode(path))
            );
        }
    }

    // Globex's session on acme's dashboard: a 403 page, not acme's data.
    let foreign = request(Method::GET, "/crm/")
        .header("cookie", format!("tsync_session={}", globex.admin))
        .send()
        .await?;
    assert_eq!(foreign.status(), StatusCode::FORBIDDEN);
    assert!(
        foreign.headers()[header::CONTENT_TYPE]
            .to_str()?
            .starts_with("text/html")
    );
    assert!(foreign.text().await?.contains("Access denied"));

    // OIDC callbacks that this browser did not start are refused.
    let stray = request(Method::GET, "/auth/oidc/any/callback?code=x&state=abc")
        .send()
        .await?;
    assert_eq!(stray.status(), StatusCode::BAD_REQUEST, "no state cookie");
    let unknown = request(Method::GET, "/auth/oidc/any/callback?code=x&state=abc")
        .header("cookie", "tsync_oidc=abc")
        .send()
        .await?;
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST, "no such flow");
    Ok(())
}
