//! Through the real nginx: path routing with the prefix stripped for apps, the tenant taken from
//! the subdomain, per-tenant rate limits, health passthrough.

use std::{collections::HashMap, time::Duration};

use axum::{Json, Router, http::HeaderMap, routing::any};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tsync_e2e::{nginx::Nginx, wrapper_app::*, *};

/// An upstream that answers with the path and headers it received.
async fn echo(name: &'static str) -> anyhow::Result<TestServer> {
    let handler = move |uri: axum::http::Uri, headers: HeaderMap| async move {
        let headers: HashMap<String, String> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        Json(json!({"app": name, "path": uri.path(), "headers": headers}))
    };
    serve(Router::new().fallback(any(handler))).await
}

#[tokio::test]
async fn nginx_routes_by_path_and_passes_the_tenant_from_the_subdomain() -> anyhow::Result<()> {
    let wrapper = spawn_wrapper().await?;
    wrapper.create_tenant("acme").await;
    let (crm, hrms) = (echo("crm").await?, echo("hrms").await?);
    let wrapper_port: u16 = wrapper.url.rsplit(':').next().unwrap().parse()?;
    let nginx = Nginx::start(wrapper_port, crm.addr.port(), hrms.addr.port()).await?;
    let http = reqwest::Client::new();
    let get = |path: &str, host: &str| {
        http.get(format!("{}{path}", nginx.url()))
            .header("host", host)
            .send()
    };

    let crm_seen: Value = get("/crm/accounts?x=1", "acme.yourapp.test")
        .await?
        .json()
        .await?;
    assert_eq!(crm_seen["app"], "crm");
    assert_eq!(crm_seen["path"], "/accounts", "the /crm prefix is stripped");
    assert_eq!(crm_seen["headers"]["x-tenant"], "acme");
    assert_eq!(crm_seen["headers"]["host"], "acme.yourapp.test");
    assert!(
        crm_seen["headers"]["x-request-id"]
            .as_str()
            .is_some_and(|id| id.len() >= 16)
    );
    assert!(crm_seen["headers"]["x-forwarded-for"].as_str().is_some());
    let hrms_seen: Value = get("/hrms/employees", "globex.yourapp.test")
        .await?
        .json()
        .await?;
    assert_eq!(
        (hrms_seen["app"].as_str(), hrms_seen["path"].as_str()),
        (Some("hrms"), Some("/employees"))
    );
    assert_eq!(hrms_seen["headers"]["x-tenant"], "globex");

    // /api/ reaches the wrapper unchanged (the host lookup is not public); /health/<app> passes
    // through.
    let domain = get("/api/domains/acme.yourapp.test", "acme.yourapp.test").await?;
    assert_eq!(domain.status(), StatusCode::UNAUTHORIZED);
    let domain = http
        .get(format!("{}/api/domains/acme.yourapp.test", nginx.url()))
        .header("host", "acme.yourapp.test")
        .bearer_auth(&wrapper.root)
        .send()
        .await?;
    assert_eq!(domain.json::<Value>().await?["subdomain"], "acme");
    let health = get("/health/wrapper", "acme.yourapp.test").await?;
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(health.json::<Value>().await?["database"], "ok");
    assert_eq!(
        get("/health/crm", "acme.yourapp.test")
            .await?
            .json::<Value>()
            .await?["path"],
        "/health"
    );
    Ok(())
}

#[tokio::test]
async fn one_tenants_burst_is_limited_while_another_tenant_is_served() -> anyhow::Result<()> {
    let (crm, hrms) = (echo("crm").await?, echo("hrms").await?);
    let wrapper = echo("wrapper").await?;
    let nginx = Nginx::start(wrapper.addr.port(), crm.addr.port(), hrms.addr.port()).await?;
    let http = reqwest::Client::new();
    let get = |host: &str| {
        http.get(format!("{}/crm/accounts", nginx.url()))
            .header("host", host)
            .send()
    };
    // acme fires 60 requests at once while globex fires 10 (within its own burst).
    let count = |statuses: Vec<reqwest::Result<reqwest::Response>>| {
        let mut by_status = HashMap::<u16, usize>::new();
        for s in statuses {
            *by_status
                .entry(s.map(|r| r.status().as_u16()).unwrap_or(0))
                .or_default() += 1;
        }
        by_status
    };
    let (acme, globex) = tokio::join!(
        futures_util::future::join_all((0..60).map(|_| get("acme.yourapp.test"))),
        futures_util::future::join_all((0..10).map(|_| get("globex.yourapp.test"))),
    );
    let (acme, globex) = (count(acme), count(globex));
    assert!(
        acme.get(&429).copied().unwrap_or(0) > 0,
        "acme's burst is limited: {acme:?}"
    );
    assert!(
        acme.get(&200).copied().unwrap_or(0) >= 20,
        "within the burst acme is served: {acme:?}"
    );
    assert_eq!(
        globex.get(&200).copied(),
        Some(10),
        "globex is unaffected: {globex:?}"
    );
    Ok(())
}

#[tokio::test]
async fn one_client_is_limited_whatever_host_it_names_and_unrouted_paths_are_problems()
-> anyhow::Result<()> {
    let (crm, hrms) = (echo("crm").await?, echo("hrms").await?);
    let wrapper = echo("wrapper").await?;
    let nginx = Nginx::start(wrapper.addr.port(), crm.addr.port(), hrms.addr.port()).await?;
    let http = reqwest::Client::new();
    let post = |path: &'static str, host: String| {
        http.post(format!("{}{path}", nginx.url()))
            .header("host", host)
            .json(&json!({"email": "a@acme.test", "password": "guess", "tenant": "acme"}))
            .send()
    };
    let statuses = |responses: Vec<reqwest::Result<reqwest::Response>>| {
        responses
            .into_iter()
            .map(|r| r.map(|r| r.status().as_u16()).unwrap_or(0))
            .collect::<Vec<u16>>()
    };
    // Sign-in posts to a host that names no tenant, and to made-up subdomains (a fresh tenant
    // bucket each): the per-tenant limit cannot count them, the per-client limits do.
    let no_tenant = statuses(
        futures_util::future::join_all((0..30).map(|_| post("/auth/login", "127.0.0.1".into())))
            .await,
    );
    let made_up = statuses(
        futures_util::future::join_all(
            (0..30).map(|n| post("/auth/login", format!("guess{n}.yourapp.test"))),
        )
        .await,
    );
    let served = |s: &[u16]| s.iter().filter(|c| **c == 200).count();
    assert!(
        served(&no_tenant) + served(&made_up) <= 11,
        "sign-in posts past the per-client burst are refused: {no_tenant:?} {made_up:?}"
    );
    assert!(made_up.contains(&429) && no_tenant.contains(&429));
    let refused = post("/auth/login", "127.0.0.1".into()).await?;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(refused.json::<Value>().await?["status"], 429);

    // Other requests of the client: past its per-client burst, whatever the host.
    let gets = statuses(
        futures_util::future::join_all((0..80).map(|n| {
            http.get(format!("{}/crm/accounts", nginx.url()))
                .header("host", format!("made-up{n}.yourapp.test"))
                .send()
        }))
        .await,
    );
    assert!(gets.contains(&429), "{gets:?}");
    assert!(gets.iter().filter(|c| **c == 200).count() <= 41, "{gets:?}");

    // Paths nothing routes are a problem from the edge, not nginx's html directory.
    for path in [
        "/CRM/x",
        "/index.html",
        "/50x.html",
        "/nothing/here",
        "/.env",
    ] {
        let response = eventually_some(Duration::from_secs(10), || async {
            let r = http
                .get(format!("{}{path}", nginx.url()))
                .header("host", "acme.yourapp.test")
                .send()
                .await
                .ok()?;
            (r.status() != StatusCode::TOO_MANY_REQUESTS).then_some(r)
        })
        .await?;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{path}"
        );
        assert_eq!(response.json::<Value>().await?["status"], 404, "{path}");
    }
    Ok(())
}

/// An app developed outside this repository is routed by the edge from a list of its own
/// (`NGINX_EXTRA_APPS`), with no edit to `nginx/apps`, the tests or the demo; the listed apps
/// the run does not start need no port either (their list port is used).
#[tokio::test]
async fn an_app_outside_the_repository_is_routed_from_an_extra_list() -> anyhow::Result<()> {
    let notes = echo("notes").await?;
    let list = std::env::temp_dir().join(unique_name());
    std::fs::write(&list, format!("# my app\nnotes {}\n", notes.addr.port()))?;
    let upstreams = tsync_e2e::nginx::Upstreams {
        wrapper: vec![free_port()?],
        crm: vec![free_port()?],
        hrms: vec![free_port()?],
        projects: vec![free_port()?],
    };
    let nginx = Nginx::start_with_extra_apps(free_port()?, &upstreams, &list).await?;
    let seen: Value = reqwest::Client::new()
        .get(format!("{}/notes/people?x=1", nginx.url()))
        .header("host", "acme.yourapp.test")
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(seen["app"], "notes");
    assert_eq!(seen["path"], "/people", "the /notes prefix is stripped");
    assert_eq!(seen["headers"]["x-tenant"], "acme");
    std::fs::remove_file(list)?;
    Ok(())
}

/// A port taken by another server (a parallel suite's nginx, say) is not this nginx ready: the
/// fixture waits for its own pid file, written only once it bound, and refuses to start.
#[tokio::test]
async fn an_nginx_whose_port_is_taken_does_not_pass_for_ready() -> anyhow::Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = taken.local_addr()?.port();
    let started = Nginx::start_on(port, 1, 1, 1).await;
    let error = started.err().expect("the port answers, but not this nginx");
    assert!(format!("{error:#}").contains("did not listen"), "{error:#}");
    Ok(())
}
