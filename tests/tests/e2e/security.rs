//! Security on the real stack (issue 14): each test attacks one class of weakness, asserts the
//! refusal, and reads back that nothing was written or changed.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tsync_e2e::{suite::Suite, wrapper_app::*, *};

/// The tenant as a platform admin reads it, and what `host` resolves to.
async fn tenant_and_host(app: &TestApp, tenant: &TestTenant, host: &str) -> (Value, Value) {
    let read = app
        .get_ok(&format!("/api/tenants/{}", tenant.id), &app.root)
        .await;
    let (_, resolved) = app
        .call(
            Method::GET,
            &format!("/api/domains/{host}"),
            Some(&app.root),
            None,
        )
        .await;
    (read, resolved)
}

#[tokio::test]
async fn custom_domains_are_validated_unique_and_active_only_once_proven() -> anyhow::Result<()> {
    // The "custom domain" is served on loopback: the wrapper reaches every domain it verifies
    // at this server, which answers the challenge only once the test has set it.
    let (challenge, served) = challenge_server().await?;
    let challenge_addr = challenge.addr;
    let app = spawn_wrapper_with(|s| s.domain_challenge_addr = Some(challenge_addr)).await?;
    let acme = app.create_tenant("acme").await;
    let globex = app.create_tenant("globex").await;
    let patch = |t: &TestTenant, body: Value| {
        let (token, path) = (t.admin.clone(), format!("/api/tenants/{}", t.id));
        let app = &app;
        async move {
            app.call(Method::PATCH, &path, Some(&token), Some(body))
                .await
        }
    };

    // The takeover of the attack run, and every other host that is not a custom domain.
    for bad in [
        "globex.yourapp.test",
        "GLOBEX.yourapp.test.",
        "yourapp.test",
        "x.y.yourapp.test",
        "127.0.0.1",
        "localhost",
        "acme",
        "bad host.test",
        "http://acme.example/",
        "acme.example:8080",
    ] {
        let (status, body) = patch(&acme, json!({"domain": bad})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["field"], "domain", "{bad}");
    }
    let (read, resolved) = tenant_and_host(&app, &globex, "globex.yourapp.test").await;
    assert_eq!(
        resolved["tenantId"],
        json!(globex.id),
        "globex keeps its host"
    );
    assert_eq!(read["domain"], Value::Null);
    assert_eq!(
        app.get_ok(&format!("/api/tenants/{}/domain", acme.id), &acme.admin)
            .await["pendingDomain"],
        Value::Null,
        "nothing refused was kept as pending"
    );

    // A valid request waits for proof: the host names nobody yet.
    let (status, body) = patch(&acme, json!({"domain": "CRM.Acme-Corp.example"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["domain"],
        Value::Null,
        "not active on a tenant admin's word"
    );
    let pending = app
        .get_ok(&format!("/api/tenants/{}/domain", acme.id), &acme.admin)
        .await;
    assert_eq!(pending["pendingDomain"], "crm.acme-corp.example");
    let token = pending["challengeToken"].as_str().unwrap().to_owned();
    assert!(token.len() >= 32, "{pending}");
    assert_eq!(
        pending["challengeUrl"],
        format!("http://crm.acme-corp.example/.well-known/tenantsync-challenge/{token}")
    );
    let (_, resolved) = tenant_and_host(&app, &acme, "crm.acme-corp.example").await;
    assert_eq!(resolved["status"], 404, "{resolved}");
    let (status, _) = app
        .call(
            Method::GET,
            &format!("/api/tenants/{}/domain", acme.id),
            Some(&globex.admin),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "globex cannot read acme's challenge"
    );

    // Verification fails while the domain does not serve the token (audited), then succeeds.
    let verify = format!("/api/tenants/{}/domain/verify", acme.id);
    let (status, body) = app
        .call(Method::POST, &verify, Some(&acme.admin), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["field"], "domain");
    let (_, resolved) = tenant_and_host(&app, &acme, "crm.acme-corp.example").await;
    assert_eq!(resolved["status"], 404);
    *served.lock().unwrap() = Some(token.clone());
    let (status, _) = app
        .call(Method::POST, &verify, Some(&globex.admin), None)
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "globex cannot verify acme's domain"
    );
    let verified = app
        .send_ok(Method::POST, &verify, &acme.admin, json!(null))
        .await;
    assert_eq!(verified["domain"], "crm.acme-corp.example");
    let (_, resolved) = tenant_and_host(&app, &acme, "crm.acme-corp.example").await;
    assert_eq!(resolved["tenantId"], json!(acme.id));
    let audit = app
        .get_ok(&format!("/api/tenants/{}/audit", acme.id), &acme.admin)
        .await;
    let outcomes: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "domain_verification")
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes.len(), 2, "{audit}");
    assert!(outcomes.contains(&"failure") && outcomes.contains(&"success"));
    let events: Vec<String> = app
        .outbox(acme.id)
        .await
        .iter()
        .map(|e| e["eventType"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events.last().map(String::as_str), Some("tenant.updated"));

    // Unique: another tenant cannot claim an active domain, even to wait for it.
    let (status, body) = patch(&globex, json!({"domain": "crm.acme-corp.example"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let globex_domain = app
        .get_ok(&format!("/api/tenants/{}/domain", globex.id), &globex.admin)
        .await;
    assert_eq!(globex_domain["pendingDomain"], Value::Null);

    // A platform admin may approve instead; a tenant admin may not approve their own.
    let (status, _) = patch(&globex, json!({"domain": "hr.globex.example"})).await;
    assert_eq!(status, StatusCode::OK);
    let approve = format!("/api/tenants/{}/domain/approve", globex.id);
    let (status, _) = app
        .call(Method::POST, &approve, Some(&globex.admin), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, resolved) = tenant_and_host(&app, &globex, "hr.globex.example").await;
    assert_eq!(resolved["status"], 404);
    let approved = app
        .send_ok(Method::POST, &approve, &app.root, json!(null))
        .await;
    assert_eq!(approved["domain"], "hr.globex.example");

    // One answer per host: the subdomains still name their own tenants, and signing in on
    // globex's host lands in globex.
    let (_, resolved) = tenant_and_host(&app, &globex, "globex.yourapp.test").await;
    assert_eq!(resolved["tenantId"], json!(globex.id));
    let (_, resolved) = tenant_and_host(&app, &acme, "acme.yourapp.test").await;
    assert_eq!(resolved["tenantId"], json!(acme.id));
    let login = app
        .http
        .post(format!("{}/auth/login", app.url))
        .header("host", "globex.yourapp.test")
        .json(&json!({"email": "admin@globex.test", "password": PASSWORD}))
        .send()
        .await?;
    assert_eq!(login.status(), StatusCode::OK);
    assert_eq!(login.json::<Value>().await?["tenantId"], json!(globex.id));
    Ok(())
}

/// `true` once `request` is refused (401 for the API, a redirect to sign-in for a page).
fn refused(status: StatusCode) -> bool {
    status == StatusCode::UNAUTHORIZED || status == StatusCode::SEE_OTHER
}

#[tokio::test]
async fn deactivated_deleted_and_removed_access_is_refused_by_every_app_at_once()
-> anyhow::Result<()> {
    let suite = Suite::start(|_| {}).await?;
    let (wrapper, nginx) = (&suite.wrapper, &suite.nginx);
    let acme = wrapper.create_tenant("acme").await;
    let host = suite.host("acme");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    // Every way a session reaches an app: the API with a Bearer token, and the dashboard page
    // with the session cookie, in the CRM and in the HRMS.
    let probes = |token: String| {
        let (http, host, base) = (http.clone(), host.clone(), nginx.url());
        async move {
            let mut out = Vec::new();
            for (what, path, cookie) in [
                ("crm api", "/crm/accounts", false),
                ("hrms api", "/hrms/employees", false),
                ("crm page", "/crm/", true),
                ("hrms page", "/hrms/", true),
            ] {
                let req = http.get(format!("{base}{path}")).header("host", &host);
                let req = if cookie {
                    req.header("cookie", format!("tsync_session={token}"))
                } else {
                    req.bearer_auth(&token)
                };
                out.push((what, req.send().await.map(|r| r.status())));
            }
            out
        }
    };
    // Polls every probe until each is refused; returns how long each took after `since`.
    let until_refused = |token: String, since: Instant| async move {
        let mut took: Vec<(&str, Duration)> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        while took.len() < 4 {
            assert!(Instant::now() < deadline, "still served: {took:?}");
            for (what, status) in probes(token.clone()).await {
                let status = status.expect("nginx answers");
                if refused(status) && !took.iter().any(|(w, _)| *w == what) {
                    took.push((what, since.elapsed()));
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        took
    };
    let all_served = |token: String| async move {
        probes(token)
            .await
            .into_iter()
            .all(|(_, s)| s.expect("nginx answers") == StatusCode::OK)
    };

    // Deactivation.
    let (carol, carol_token) = wrapper.create_member(&acme, "carol@acme.test").await;
    // Served once every app has the new user (its creation travels like any change).
    eventually(Duration::from_secs(10), || all_served(carol_token.clone()))
        .await
        .expect("a new member is served by every app");
    let at = Instant::now();
    wrapper
        .send_ok(
            Method::PATCH,
            &format!("/api/tenants/{}/users/{carol}", acme.id),
            &acme.admin,
            json!({"active": false}),
        )
        .await;
    let took = until_refused(carol_token, at).await;
    println!("deactivated user refused after the PATCH: {took:?}");

    // Soft delete.
    let (dave, dave_token) = wrapper.create_member(&acme, "dave@acme.test").await;
    // Served once every app has the new user (its creation travels like any change).
    eventually(Duration::from_secs(10), || all_served(dave_token.clone()))
        .await
        .expect("a new member is served by every app");
    let at = Instant::now();
    let (status, _) = wrapper
        .call(
            Method::DELETE,
            &format!("/api/tenants/{}/users/{dave}", acme.id),
            Some(&acme.admin),
            None,
        )
        .await;
    assert!(status.is_success());
    let took = until_refused(dave_token, at).await;
    println!("deleted user refused after the DELETE: {took:?}");

    // A removed membership takes its permissions away in the apps: the HRMS's admin-only write.
    let (erin, erin_token) = wrapper.create_member(&acme, "erin@acme.test").await;
    let granted = wrapper
        .send_ok(
            Method::POST,
            &format!("/api/tenants/{}/memberships", acme.id),
            &acme.admin,
            json!({"userId": erin, "roleId": acme.admin_role}),
        )
        .await;
    let hire = |n: i64| {
        http.post(format!("{}/hrms/employees", nginx.url()))
            .header("host", &host)
            .bearer_auth(&erin_token)
            .json(&json!({"userId": erin, "department": format!("Dept {n}"), "salary": n}))
            .send()
    };
    let first = eventually_some(Duration::from_secs(15), || async {
        let status = hire(1).await.ok()?.status();
        (status == StatusCode::CREATED).then_some(status)
    })
    .await?;
    assert_eq!(first, StatusCode::CREATED);
    let at = Instant::now();
    let (status, _) = wrapper
        .call(
            Method::DELETE,
            &format!(
                "/api/tenants/{}/memberships/{}",
                acme.id,
                granted["id"].as_str().unwrap()
            ),
            Some(&acme.admin),
            None,
        )
        .await;
    assert!(status.is_success());
    let mut n = 2;
    let refused_after = loop {
        let status = hire(n).await?.status();
        if status == StatusCode::FORBIDDEN {
            break at.elapsed();
        }
        assert!(
            at.elapsed() < Duration::from_secs(15),
            "still an admin in the HRMS"
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!("removed membership refused by the HRMS after the DELETE: {refused_after:?}");
    let employees: Value = http
        .get(format!("{}/hrms/employees", nginx.url()))
        .header("host", &host)
        .bearer_auth(&acme.admin)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        employees["items"].as_array().unwrap().len() as i64,
        n - 1,
        "the refused writes wrote nothing"
    );

    // The tenant archived: even its admin is refused by every app.
    assert!(all_served(acme.admin.clone()).await);
    let at = Instant::now();
    wrapper
        .send_ok(
            Method::DELETE,
            &format!("/api/tenants/{}", acme.id),
            &wrapper.root,
            json!(null),
        )
        .await;
    let took = until_refused(acme.admin.clone(), at).await;
    println!("archived tenant's admin refused after the DELETE: {took:?}");
    Ok(())
}

#[tokio::test]
async fn password_guessing_waits_per_account_and_per_address_in_the_wrapper_itself()
-> anyhow::Result<()> {
    let app = spawn_wrapper().await?;
    let acme = app.create_tenant("acme").await;
    // The test talks to the wrapper from loopback, a trusted proxy: X-Forwarded-For names the
    // client, as nginx's would.
    let attempt = |email: String, password: &'static str, from: &'static str| {
        let request = app
            .http
            .post(format!("{}/auth/login", app.url))
            .header("x-forwarded-for", from)
            .json(&json!({"email": email, "password": password, "tenant": "acme"}));
        async move {
            let r = request.send().await.expect("the wrapper answers");
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let content_type = r.headers()["content-type"].to_str()?.to_owned();
            anyhow::Ok((r.status(), retry, content_type))
        }
    };
    let admin = || "admin@acme.test".to_owned();

    // Per account: five failures, then each attempt waits, even with the right password.
    for _ in 0..5 {
        let (status, ..) = attempt(admin(), "Wrong-Password-1", "198.51.100.1").await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, retry, content_type) = attempt(admin(), PASSWORD, "198.51.100.2").await?;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "from another address too"
    );
    assert_eq!(content_type, "application/problem+json");
    assert!(retry.is_some_and(|r| r.parse::<u64>().unwrap() >= 1));
    let audit = app
        .get_ok(&format!("/api/tenants/{}/audit", acme.id), &app.root)
        .await;
    let throttled: Vec<&Value> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "login_throttled")
        .collect();
    assert_eq!(throttled.len(), 1, "{audit}");
    assert_eq!(throttled[0]["target"], "admin@acme.test");
    // The wait ends; the right password clears the count.
    let ok = eventually_some(Duration::from_secs(10), || async {
        let (status, ..) = attempt(admin(), PASSWORD, "198.51.100.2").await.ok()?;
        (status == StatusCode::OK).then_some(status)
    })
    .await?;
    assert_eq!(ok, StatusCode::OK);
    let (status, ..) = attempt(admin(), "Wrong-Password-1", "198.51.100.2").await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the count started over");

    // Per address: twenty failures over many accounts (real or not), then that address waits
    // for every account; another address is served.
    for n in 0..20 {
        let (status, ..) = attempt(
            format!("nobody{n}@acme.test"),
            "Guess-1234567",
            "203.0.113.9",
        )
        .await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, ..) = attempt(admin(), PASSWORD, "203.0.113.9").await?;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let (status, ..) = attempt(admin(), PASSWORD, "198.51.100.3").await?;
    assert_eq!(status, StatusCode::OK);

    // A burst of concurrent guesses at one account: at most the threshold is checked.
    app.create_member(&acme, "bob@acme.test").await;
    let results = futures_util::future::join_all(
        (0..30).map(|_| attempt("bob@acme.test".into(), "Wrong-Password-1", "198.51.100.4")),
    )
    .await;
    let checked = results
        .iter()
        .filter(|r| matches!(r, Ok((StatusCode::UNAUTHORIZED, ..))))
        .count();
    assert!(checked <= 5, "{checked} guesses were checked");
    let failed_logins: i64 = sqlx::query_scalar(
        "select count(*) from audit_log where action = 'login' and outcome = 'failure'
           and target = 'bob@acme.test'",
    )
    .fetch_one(&app.db.pool)
    .await?;
    assert_eq!(
        failed_logins as usize, checked,
        "only checked guesses reach the audit log"
    );
    Ok(())
}

#[tokio::test]
async fn platform_admins_sign_in_only_on_the_admin_host_with_a_host_only_cookie()
-> anyhow::Result<()> {
    let app = spawn_wrapper().await?;
    app.create_tenant("acme").await;
    let login = |host: &'static str, email: &'static str, form: bool| {
        let request = app
            .http
            .post(format!("{}/auth/login", app.url))
            .header("host", host);
        let request = if form {
            request.header("origin", format!("http://{host}")).form(&[
                ("email", email),
                ("password", PASSWORD),
                ("return_to", "/"),
            ])
        } else {
            request.json(&json!({"email": email, "password": PASSWORD}))
        };
        async move { request.send().await.expect("the wrapper answers") }
    };
    let cookie = |r: &reqwest::Response| {
        r.headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .find(|c| c.starts_with("tsync_session=") && !c.starts_with("tsync_session=;"))
    };
    // On a host that names no tenant there is no sign-in at all.
    for form in [false, true] {
        let r = login("nowhere.example", ROOT_EMAIL, form).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "form: {form}");
        assert!(cookie(&r).is_none());
    }
    let r = login("nowhere.example", ROOT_EMAIL, false).await;
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    // On a tenant's host, platform accounts are not that tenant's accounts.
    let r = login("acme.yourapp.test", ROOT_EMAIL, false).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(cookie(&r).is_none());
    // On the admin host: signed in, with a cookie for this host only.
    let r = login("127.0.0.1", ROOT_EMAIL, false).await;
    assert_eq!(r.status(), StatusCode::OK);
    let root_cookie = cookie(&r).unwrap();
    assert!(
        !root_cookie.to_lowercase().contains("domain="),
        "{root_cookie}"
    );
    // A tenant user's cookie still spans the suite.
    let r = login("acme.yourapp.test", "admin@acme.test", false).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(cookie(&r).unwrap().contains("Domain=.yourapp.test"));
    Ok(())
}

#[tokio::test]
async fn every_refusal_is_a_problem_naming_the_field_and_writes_nothing() -> anyhow::Result<()> {
    let app = spawn_wrapper_with(|s| s.body_limit = 64 * 1024).await?;
    let acme = app.create_tenant("acme").await;
    let (bob, _) = app.create_member(&acme, "bob@acme.test").await;
    let base = format!("/api/tenants/{}", acme.id);
    let snapshot = || async {
        let tenant = app.get_ok(&base, &app.root).await;
        let users = app.get_ok(&format!("{base}/users"), &app.root).await;
        let roles = app.get_ok(&format!("{base}/roles"), &app.root).await;
        let settings = app.get_ok(&format!("{base}/settings"), &app.root).await;
        (
            tenant,
            users,
            roles,
            settings,
            app.outbox(acme.id).await.len(),
        )
    };
    let before = snapshot().await;
    let problem = |status: StatusCode, field: &str, got: (StatusCode, Value), what: &str| {
        assert_eq!(got.0, status, "{what}: {}", got.1);
        assert_eq!(got.1["status"], status.as_u16(), "{what}: a problem body");
        assert_eq!(got.1["field"], field, "{what}: {}", got.1);
    };

    // NUL characters, in every kind of string field.
    let nul = "a\u{0}b";
    for (method, path, body, field) in [
        (
            Method::POST,
            format!("{base}/users"),
            json!({"email": "n@acme.test", "fullName": nul}),
            "fullName",
        ),
        (
            Method::PATCH,
            format!("{base}/users/{bob}"),
            json!({"avatarUrl": nul}),
            "avatarUrl",
        ),
        (
            Method::POST,
            format!("{base}/roles"),
            json!({"name": nul}),
            "name",
        ),
        (
            Method::POST,
            format!("{base}/roles"),
            json!({"name": "ok", "permissions": ["x", nul]}),
            "permissions[1]",
        ),
        (
            Method::PUT,
            format!("{base}/settings"),
            json!({"values": {nul: 1}}),
            "values",
        ),
        (
            Method::PUT,
            format!("{base}/settings"),
            json!({"values": {"k": nul}}),
            "values.k",
        ),
        (
            Method::PATCH,
            base.clone(),
            json!({"theme": {"color": nul}}),
            "theme.color",
        ),
        (Method::PATCH, base.clone(), json!({"name": nul}), "name"),
        (
            Method::POST,
            "/auth/login".into(),
            json!({"email": "admin@acme.test", "password": "x", "tenant": nul}),
            "tenant",
        ),
    ] {
        let got = app.call(method, &path, Some(&acme.admin), Some(body)).await;
        problem(
            StatusCode::BAD_REQUEST,
            field,
            got,
            &format!("NUL in {field}"),
        );
    }

    // A body that is not an object (serde would read a struct from an array).
    let got = app
        .call(
            Method::PATCH,
            &format!("{base}/roles/{}", acme.admin_role),
            Some(&acme.admin),
            Some(json!([null, ["x"]])),
        )
        .await;
    problem(StatusCode::BAD_REQUEST, "body", got, "an array body");

    // A taken unique value is a 409 naming its field (the call site maps the constraint).
    let got = app
        .call(
            Method::POST,
            &format!("{base}/users"),
            Some(&acme.admin),
            Some(json!({"email": "BOB@acme.test", "fullName": "Bob Again"})),
        )
        .await;
    problem(StatusCode::CONFLICT, "email", got, "a taken email");
    let got = app
        .call(
            Method::POST,
            &format!("{base}/roles"),
            Some(&acme.admin),
            Some(json!({"name": "admin"})),
        )
        .await;
    problem(StatusCode::CONFLICT, "name", got, "a taken role name");

    // Email addresses, everywhere one enters.
    for bad in [
        "<script>@acme.test",
        "a,b@acme.test",
        "\"a b\"@acme.test",
        "a@[127.0.0.1]",
    ] {
        let got = app
            .call(
                Method::POST,
                &format!("{base}/users"),
                Some(&acme.admin),
                Some(json!({"email": bad, "fullName": "X"})),
            )
            .await;
        problem(StatusCode::BAD_REQUEST, "email", got, bad);
        let got = app
            .call(
                Method::PATCH,
                &format!("{base}/users/{bob}"),
                Some(&acme.admin),
                Some(json!({"email": bad})),
            )
            .await;
        problem(StatusCode::BAD_REQUEST, "email", got, bad);
        let got = app
            .call(
                Method::POST,
                "/api/tenants",
                Some(&app.root),
                Some(json!({"name": "N", "subdomain": "n1",
                              "admin": {"email": bad, "fullName": "X", "password": PASSWORD}})),
            )
            .await;
        problem(StatusCode::BAD_REQUEST, "admin.email", got, bad);
        let got = app
            .call(
                Method::POST,
                "/auth/login",
                None,
                Some(json!({"email": bad, "password": PASSWORD, "tenant": "acme"})),
            )
            .await;
        problem(StatusCode::BAD_REQUEST, "email", got, bad);
    }

    // Refusals made by layers and the router, not by handlers.
    let raw = |method: Method, path: &str| {
        app.http
            .request(method, format!("{}{path}", app.url))
            .bearer_auth(&acme.admin)
    };
    let as_problem = |r: reqwest::Response| async move {
        let status = r.status();
        assert_eq!(
            r.headers()["content-type"],
            "application/problem+json",
            "{status}"
        );
        (status, r.json::<Value>().await.unwrap())
    };
    let huge = json!({"fullName": "x".repeat(100 * 1024)});
    let got = as_problem(
        raw(Method::PATCH, &format!("{base}/users/{bob}"))
            .json(&huge)
            .send()
            .await?,
    )
    .await;
    assert_eq!(got.0, StatusCode::PAYLOAD_TOO_LARGE, "{}", got.1);
    let got = as_problem(raw(Method::GET, "/api/tenants/not-a-uuid").send().await?).await;
    problem(
        StatusCode::BAD_REQUEST,
        "path",
        got,
        "unparsable path parameter",
    );
    let got = as_problem(raw(Method::GET, "/api/domains/a%00b.test").send().await?).await;
    problem(StatusCode::BAD_REQUEST, "path", got, "NUL in the path");
    let got = as_problem(
        raw(Method::GET, &format!("{base}/users?cursor=%00"))
            .send()
            .await?,
    )
    .await;
    problem(StatusCode::BAD_REQUEST, "query", got, "NUL in the query");
    let got = as_problem(raw(Method::DELETE, "/api/credits/balance").send().await?).await;
    assert_eq!(got.0, StatusCode::METHOD_NOT_ALLOWED);
    let got = as_problem(
        raw(Method::POST, &format!("{base}/users"))
            .header("content-type", "text/plain")
            .body("{}")
            .send()
            .await?,
    )
    .await;
    assert_eq!(got.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // Cookie plus a non-Bearer Authorization from another site's page: still a forgery.
    let forged = app
        .http
        .patch(format!("{}{base}/users/{bob}", app.url))
        .header("cookie", format!("tsync_session={}", acme.admin))
        .header("authorization", "Basic YWRtaW46eA==")
        .header("origin", "http://evil.test")
        .json(&json!({"fullName": "Forged"}))
        .send()
        .await?;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);

    assert_eq!(snapshot().await, before, "nothing was written");
    Ok(())
}

#[tokio::test]
async fn apps_refuse_forged_posts_and_answer_every_refusal_with_a_problem() -> anyhow::Result<()> {
    let suite = Suite::start(|_| {}).await?;
    let (wrapper, nginx) = (&suite.wrapper, &suite.nginx);
    let acme = wrapper.create_tenant("acme").await;
    wrapper.fund_app(&acme, "crm", 1000).await;
    let host = suite.host("acme");
    let http = reqwest::Client::new();
    let post = |auth: Option<&'static str>| {
        let mut req = http
            .post(format!("{}/crm/accounts", nginx.url()))
            .header("host", &host)
            .header("cookie", format!("tsync_session={}", acme.admin))
            .header("origin", "http://evil.test")
            .json(&json!({"name": "Forged", "value": 1, "ownerId": acme.admin_id}));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    for auth in [
        None,
        Some("Basic YWRtaW46eA=="),
        Some("Bearer "),
        Some("Token abc"),
    ] {
        let r = post(auth).await?;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{auth:?}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    }
    let listed: Value = http
        .get(format!("{}/crm/accounts", nginx.url()))
        .header("host", &host)
        .bearer_auth(&acme.admin)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(listed["items"], json!([]), "no forged account was created");

    // Straight to the app, around the edge: a request must name its tenant, and the right one.
    for (tenant, status) in [(None, 400), (Some("globex"), 403), (Some("acme"), 200)] {
        let mut req = http
            .get(format!("{}/accounts", suite.crm_url))
            .bearer_auth(&acme.admin);
        if let Some(t) = tenant {
            req = req.header("x-tenant", t);
        }
        let r = req.send().await?;
        assert_eq!(r.status().as_u16(), status, "X-Tenant {tenant:?}");
    }

    // The app's own router and layers answer with problems too.
    for (method, path, status) in [
        (
            Method::GET,
            "/crm/accounts/not-a-uuid",
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/crm/accounts?cursor=%00",
            StatusCode::BAD_REQUEST,
        ),
        (Method::PUT, "/crm/accounts", StatusCode::METHOD_NOT_ALLOWED),
        (Method::GET, "/crm/nothing", StatusCode::NOT_FOUND),
    ] {
        let r = http
            .request(method.clone(), format!("{}{path}", nginx.url()))
            .header("host", &host)
            .bearer_auth(&acme.admin)
            .send()
            .await?;
        assert_eq!(r.status(), status, "{method} {path}");
        assert_eq!(
            r.headers()["content-type"],
            "application/problem+json",
            "{method} {path}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn signing_keys_are_sealed_at_rest_and_the_sealing_key_rotates() -> anyhow::Result<()> {
    let mut app = spawn_wrapper().await?;
    let acme = app.create_tenant("acme").await;
    let rows = |app: &TestApp| {
        let pool = app.db.pool.clone();
        async move {
            sqlx::query_as::<_, (String, Option<Vec<u8>>, Option<Vec<u8>>, Option<String>)>(
                "select kid, private_key, private_key_sealed, kek_id from signing_keys order by kid",
            )
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    let kek_of = |app: &TestApp| {
        let rows = rows(app);
        async move {
            let rows = rows.await;
            for (kid, clear, sealed, _) in &rows {
                assert!(clear.is_none(), "{kid} is stored in the clear");
                let sealed = sealed.as_deref().unwrap();
                assert!(
                    ring::signature::Ed25519KeyPair::from_pkcs8(sealed).is_err(),
                    "the sealed bytes are not a usable key"
                );
            }
            rows.into_iter().map(|r| r.3.unwrap()).collect::<Vec<_>>()
        }
    };
    assert_eq!(kek_of(&app).await, vec!["test-kek"]);

    // A key written in the clear before sealing existed is sealed at the next start.
    let legacy_kid = "legacy0000000000";
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    sqlx::query(
        "insert into signing_keys (kid, private_key, public_key, created_at)
         values ($1, $2, $3, now() + interval '1 minute')",
    )
    .bind(legacy_kid)
    .bind(pkcs8.as_ref())
    .bind(ring::signature::KeyPair::public_key(&pair).as_ref())
    .execute(&app.db.pool)
    .await?;
    app.restart().await?;
    assert_eq!(kek_of(&app).await, vec!["test-kek", "test-kek"]);
    let signed_by_legacy = app.login("admin@acme.test", PASSWORD, Some("acme")).await?;
    assert_eq!(
        jsonwebtoken::decode_header(&signed_by_legacy)?
            .kid
            .as_deref(),
        Some(legacy_kid),
        "the sealed legacy key (the newest) signs"
    );

    // Rotation: the new KEK first, the old one still listed; every row is re-sealed and every
    // token still verifies. Then the old KEK goes.
    app.restart_with(|s| {
        s.key_encryption_keys = Some(wrapper::config::Secret(format!("{K2},{TEST_KEK}")))
    })
    .await?;
    assert_eq!(kek_of(&app).await, vec!["k2", "k2"]);
    for token in [&acme.admin, &signed_by_legacy] {
        app.get_ok(&format!("/api/tenants/{}", acme.id), token)
            .await;
    }
    app.restart_with(|s| s.key_encryption_keys = Some(wrapper::config::Secret(K2.into())))
        .await?;
    app.get_ok(&format!("/api/tenants/{}", acme.id), &signed_by_legacy)
        .await;
    app.login("admin@acme.test", PASSWORD, Some("acme")).await?;

    // Without the right KEK the wrapper does not start, and says why.
    let settings_without = |keks: Option<&str>| {
        let mut s = app.settings_for_test();
        s.listen = "127.0.0.1:0".parse().unwrap();
        s.key_encryption_keys = keks.map(|k| wrapper::config::Secret(k.into()));
        s
    };
    for (keks, says) in [
        (Some(TEST_KEK), "k2"),
        (
            Some("k2:d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3I"),
            "does not open",
        ),
        (None, "WRAPPER_KEY_ENCRYPTION_KEYS"),
    ] {
        let refused = wrapper::startup::Application::build(settings_without(keks))
            .await
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(refused.contains(says), "{keks:?}: {refused}");
    }
    Ok(())
}

/// The edge at an address of its own (`proxy_bind 127.0.2.1`), trusted as a CIDR range, as a
/// proxy on another host of a pod or compose network is: two clients behind it are two
/// addresses to the wrapper, so one guessing passwords slows only itself.
#[tokio::test]
async fn a_client_guessing_behind_the_edge_does_not_slow_another_clients_sign_in()
-> anyhow::Result<()> {
    use tsync_e2e::nginx::{Nginx, Upstreams};
    let w = spawn_wrapper_with(|s| {
        s.trusted_proxies = vec!["127.0.2.0/24".parse().expect("a range")];
    })
    .await?;
    w.create_tenant("acme").await;
    let wrapper_port: u16 = w.url.rsplit(':').next().unwrap_or_default().parse()?;
    let upstreams = Upstreams {
        wrapper: vec![wrapper_port],
        crm: vec![free_port()?],
        hrms: vec![free_port()?],
        projects: vec![free_port()?],
    };
    let edge = Nginx::start_bound(free_port()?, Some(500), "127.0.2.1", &upstreams).await?;
    let from = |addr: &str| {
        reqwest::Client::builder()
            .local_address(addr.parse::<std::net::IpAddr>().ok())
            .build()
    };
    let (guesser, other) = (from("127.0.3.1")?, from("127.0.3.2")?);
    let url = format!("http://127.0.0.1:{}/auth/login", edge.port);
    let sign_in = |client: &reqwest::Client, email: String, password: &str| {
        client
            .post(&url)
            .header("host", "acme.yourapp.test")
            .json(&json!({"email": email, "password": password, "tenant": "acme"}))
            .send()
    };
    let mut answers = Vec::new();
    for i in 0..25 {
        let r = sign_in(&guesser, format!("guess{i}@acme.test"), "Wrong-Password-1").await?;
        answers.push(r.status().as_u16());
    }
    assert!(
        answers.ends_with(&[429, 429, 429]),
        "the guessing client is slowed: {answers:?}"
    );
    let r = sign_in(&other, "admin@acme.test".into(), PASSWORD).await?;
    assert_eq!(r.status(), StatusCode::OK, "the other client waits");
    // The wrapper counted the guessing client's address, never the edge's.
    let sources: Vec<String> =
        sqlx::query_scalar("select key from sign_in_failures where key like 'source:%'")
            .fetch_all(&w.db.pool)
            .await?;
    assert!(
        sources.contains(&"source:127.0.3.1".to_owned()),
        "{sources:?}"
    );
    assert!(
        !sources.iter().any(|k| k.starts_with("source:127.0.2.")),
        "{sources:?}"
    );
    Ok(())
}
