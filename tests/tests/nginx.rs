//! Through the real nginx: path routing with the prefix stripped for apps, the tenant taken from
//! the subdomain, per-tenant rate limits, health passthrough.

use std::collections::HashMap;

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
