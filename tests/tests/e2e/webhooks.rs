//! Webhooks to an endpoint on loopback: signed deliveries of the subscribed event types only,
//! a failing endpoint retried with backoff then dead-lettered with every attempt visible, and
//! registrations that would reach the inside refused.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, http::HeaderMap, http::StatusCode as AxumStatus, routing::post};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sync_testkit::eventually;
use tsync_e2e::wrapper_app::*;

use super::credits::{register_crm, service_token};

/// What a receiver got: (path, headers, body).
type Received = Arc<Mutex<Vec<(String, HeaderMap, String)>>>;

/// A receiver on loopback: `/ok` answers 204, `/fail` 503; it records every post. Stops with
/// the test's runtime.
async fn receiver() -> anyhow::Result<(SocketAddr, Received)> {
    let received: Received = Arc::default();
    let record = |path: &'static str, status: AxumStatus| {
        let received = received.clone();
        post(move |headers: HeaderMap, body: String| async move {
            received
                .lock()
                .unwrap()
                .push((path.to_owned(), headers, body));
            status
        })
    };
    let app = Router::new()
        .route("/ok", record("/ok", AxumStatus::NO_CONTENT))
        .route("/fail", record("/fail", AxumStatus::SERVICE_UNAVAILABLE));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((addr, received))
}

#[tokio::test]
async fn signed_deliveries_reach_a_loopback_endpoint_and_a_failing_one_is_retried_then_dead()
-> anyhow::Result<()> {
    let app = spawn_wrapper_with(|s| {
        s.webhook_insecure_hosts = vec!["127.0.0.1".into()];
        s.webhook_backoff_ms = 50;
        s.webhook_max_attempts = 3;
    })
    .await?;
    let (addr, received) = receiver().await?;
    let t = app.create_tenant("hooks").await;
    let path = format!("/api/tenants/{}/webhooks", t.id);

    // Refused, naming the field, and nothing written.
    let (_, member) = app.create_member(&t, "member@hooks.test").await;
    for (body, field) in [
        (
            json!({"url": "https://169.254.169.254/latest", "eventTypes": ["user.created"]}),
            "url",
        ),
        (
            json!({"url": "http://hooks.example.com/x", "eventTypes": ["user.created"]}),
            "url",
        ),
        (
            json!({"url": format!("http://{addr}/ok"), "eventTypes": ["user.exploded"]}),
            "eventTypes",
        ),
        (
            json!({"url": format!("http://{addr}/ok"), "eventTypes": []}),
            "eventTypes",
        ),
    ] {
        let (status, problem) = app
            .call(Method::POST, &path, Some(&t.admin), Some(body))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
        assert_eq!(problem["field"], field, "{problem}");
    }
    let ok = json!({"url": format!("http://{addr}/ok"),
                    "eventTypes": ["credit.threshold_reached", "user.created"]});
    let (status, _) = app
        .call(Method::POST, &path, Some(&member), Some(ok.clone()))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "members register nothing");
    assert_eq!(app.count("webhook_endpoints").await, 0);

    let good = app.send_ok(Method::POST, &path, &t.admin, ok).await;
    let secret = good["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let listed = app.get_ok(&path, &t.admin).await;
    assert!(listed[0].get("secret").is_none(), "shown once: {listed}");
    let bad = app
        .send_ok(
            Method::POST,
            &path,
            &t.admin,
            json!({"url": format!("http://{addr}/fail"), "eventTypes": ["user.created"]}),
        )
        .await;

    // A garbage entry of a subscribed type on the tenant's stream first: skipped, it must not
    // hold the partition's deliveries back.
    let redis = sync_testkit::redis_client(&app.state.settings.redis_url.0).await?;
    let keys = sync_sdk::contract::StreamKeys::new(
        app.state.settings.namespace.clone(),
        app.state.settings.partitions,
    )
    .unwrap();
    let _: String = fred::interfaces::StreamsInterface::xadd(
        &redis,
        keys.events_for(t.id),
        false,
        None::<()>,
        "*",
        vec![
            ("eventType", "user.created".to_owned()),
            ("tenantId", t.id.to_string()),
            ("envelope", "{not an envelope".to_owned()),
        ],
    )
    .await?;
    // Events: a user (both endpoints), credits moving (nobody), a threshold crossed (the good one).
    app.send_ok(
        Method::POST,
        &format!("/api/tenants/{}/users", t.id),
        &t.admin,
        json!({"email": "new@hooks.test", "fullName": "New Person", "password": PASSWORD}),
    )
    .await;
    let crm = service_token(&app, "crm").await;
    register_crm(&app, &crm).await;
    app.fund_app(&t, "crm", 100).await;
    app.send_ok(
        Method::POST,
        &format!("/api/tenants/{}/credits/thresholds", t.id),
        &t.admin,
        json!({"scope": "app:crm", "kind": "balance_below", "value": 50}),
    )
    .await;
    for op in ["h-1", "h-2"] {
        app.send_ok(
            Method::POST,
            "/api/credits/consume",
            &crm,
            json!({"tenantId": t.id, "application": "crm", "operationCode": "crm.accounts.create",
                   "operationId": op}),
        )
        .await;
    }

    let posts = |to: &'static str| {
        let received = received.clone();
        move || {
            received
                .lock()
                .unwrap()
                .iter()
                .filter(|p| p.0 == to)
                .cloned()
                .collect::<Vec<_>>()
        }
    };
    let (good_posts, bad_posts) = (posts("/ok"), posts("/fail"));
    eventually(Duration::from_secs(20), || async {
        good_posts().len() >= 2
    })
    .await?;
    let deliveries_of = |endpoint: &Value| {
        format!(
            "{path}/{}/deliveries",
            endpoint["id"].as_str().unwrap_or_default()
        )
    };
    let dead = || async {
        let list = app.get_ok(&deliveries_of(&bad), &t.admin).await;
        list["items"][0]["status"] == "dead"
    };
    eventually(Duration::from_secs(20), dead).await?;

    // The good endpoint got exactly its two event types, each signed as Standard Webhooks say.
    let got = good_posts();
    let mut types: Vec<String> = Vec::new();
    for (_, headers, body) in &got {
        let header = |n: &str| headers[n].to_str().unwrap().to_owned();
        let (id, timestamp) = (header("webhook-id"), header("webhook-timestamp"));
        let sent_at: i64 = timestamp.parse()?;
        assert!((chrono::Utc::now().timestamp() - sent_at).abs() < 60);
        let expected = wrapper::webhooks::sign(&secret, &id, sent_at, body)?;
        assert_eq!(header("webhook-signature"), expected, "signed");
        assert_ne!(
            wrapper::webhooks::sign(&secret, &id, sent_at, &format!("{body} "))?,
            expected,
            "the signature covers the body"
        );
        let envelope: Value = serde_json::from_str(body)?;
        assert_eq!(envelope["tenantId"], t.id.to_string());
        types.push(envelope["eventType"].as_str().unwrap().to_owned());
    }
    types.sort();
    assert_eq!(types, ["credit.threshold_reached", "user.created"]);
    let list = app.get_ok(&deliveries_of(&good), &t.admin).await;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(
        items
            .iter()
            .all(|d| d["status"] == "delivered" && d["attempts"] == 1)
    );

    // The failing endpoint: three attempts, then dead, each attempt visible.
    assert_eq!(bad_posts().len(), 3, "tried three times, no more");
    let list = app.get_ok(&deliveries_of(&bad), &t.admin).await;
    let delivery = list["items"][0]["id"].as_str().unwrap().to_owned();
    let shown = app
        .get_ok(&format!("{}/{delivery}", deliveries_of(&bad)), &t.admin)
        .await;
    let attempts = shown["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{shown}");
    assert!(attempts.iter().all(|a| a["statusCode"] == 503), "{shown}");
    assert_eq!(shown["body"]["eventType"], "user.created");
    // Sent again on request: one more attempt, dead again.
    let (status, _) = app
        .call(
            Method::POST,
            &format!("{}/{delivery}/retry", deliveries_of(&bad)),
            Some(&t.admin),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    eventually(Duration::from_secs(20), || async { bad_posts().len() == 4 }).await?;
    eventually(Duration::from_secs(20), dead).await?;
    // Another tenant's admin sees none of it.
    let other = app.create_tenant("nosy").await;
    let (status, _) = app
        .call(Method::GET, &deliveries_of(&bad), Some(&other.admin), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    Ok(())
}
