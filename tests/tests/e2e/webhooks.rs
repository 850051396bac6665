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

/// Webhook secrets are sealed at rest like the signing keys: a new endpoint's row holds no
/// secret in the clear; a row written in the clear before sealing existed is sealed at the
/// next start; a new key-encryption key re-seals every row; deliveries are still signed with
/// the secret the tenant was given.
#[tokio::test]
async fn webhook_secrets_are_sealed_at_rest_and_resealed_with_a_new_key() -> anyhow::Result<()> {
    let mut app =
        spawn_wrapper_with(|s| s.webhook_insecure_hosts = vec!["127.0.0.1".into()]).await?;
    let (addr, received) = receiver().await?;
    let t = app.create_tenant("sealed").await;
    let path = format!("/api/tenants/{}/webhooks", t.id);
    let created = app
        .send_ok(
            Method::POST,
            &path,
            &t.admin,
            json!({"url": format!("http://{addr}/ok"), "eventTypes": ["user.created"]}),
        )
        .await;
    let secret = created["secret"].as_str().unwrap().to_owned();
    type Row = (uuid::Uuid, Option<String>, Option<Vec<u8>>, Option<String>);
    let rows = |app: &TestApp| {
        let pool = app.db.pool.clone();
        async move {
            sqlx::query_as::<_, Row>(
                "select id, secret, secret_sealed, kek_id from webhook_endpoints order by id",
            )
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    let new = rows(&app).await;
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].1, None, "no secret in the clear");
    assert_eq!(new[0].3.as_deref(), Some("test-kek"));
    let sealed = new[0].2.clone().expect("sealed");
    let key = secret.trim_start_matches("whsec_").as_bytes();
    assert!(
        !sealed.windows(key.len()).any(|w| w == key),
        "the sealed bytes do not hold the secret"
    );

    // A row from before sealing (its secret in the clear), sealed at the next start.
    let legacy_secret = wrapper::webhooks::new_secret()?;
    let legacy = uuid::Uuid::now_v7();
    sqlx::query(
        "insert into webhook_endpoints (id, tenant_id, url, event_types, secret)
         values ($1, $2, $3, $4, $5)",
    )
    .bind(legacy)
    .bind(t.id)
    .bind(format!("http://{addr}/ok"))
    .bind(vec!["user.created"])
    .bind(&legacy_secret)
    .execute(&app.db.pool)
    .await?;
    app.restart().await?;
    let after = rows(&app).await;
    assert!(
        after
            .iter()
            .all(|r| r.1.is_none() && r.3.as_deref() == Some("test-kek"))
    );
    // A new key-encryption key first: every row is re-sealed under it; then the old one goes.
    app.restart_with(|s| {
        s.key_encryption_keys = Some(wrapper::config::Secret(format!("{K2},{TEST_KEK}")))
    })
    .await?;
    let rotated = rows(&app).await;
    assert!(
        rotated
            .iter()
            .all(|r| r.1.is_none() && r.3.as_deref() == Some("k2"))
    );
    assert!(rotated.iter().zip(&after).all(|(a, b)| a.2 != b.2));
    app.restart_with(|s| s.key_encryption_keys = Some(wrapper::config::Secret(K2.into())))
        .await?;

    // Both endpoints still sign with the secrets their tenant holds.
    app.send_ok(
        Method::POST,
        &format!("/api/tenants/{}/users", t.id),
        &t.admin,
        json!({"email": "new@sealed.test", "fullName": "New Person", "password": PASSWORD}),
    )
    .await;
    // Each post verifies with one of the two secrets, and each secret signs (the admin's own
    // `user.created` may be delivered too, if the group read it after the registration).
    let signers = |got: &[(String, HeaderMap, String)]| -> anyhow::Result<Vec<&'static str>> {
        let mut signers = Vec::new();
        for (_, headers, body) in got {
            let header = |n: &str| headers[n].to_str().unwrap().to_owned();
            let (id, at) = (header("webhook-id"), header("webhook-timestamp").parse()?);
            let signature = header("webhook-signature");
            let by: Vec<&'static str> = [("new", &secret), ("legacy", &legacy_secret)]
                .into_iter()
                .filter(|(_, s)| {
                    wrapper::webhooks::sign(s, &id, at, body).ok() == Some(signature.clone())
                })
                .map(|(name, _)| name)
                .collect();
            anyhow::ensure!(by.len() == 1, "post {id} verifies with {by:?}");
            signers.extend(by);
        }
        signers.sort();
        signers.dedup();
        Ok(signers)
    };
    eventually(Duration::from_secs(20), || async {
        let got = received.lock().unwrap().clone();
        signers(&got).is_ok_and(|s| s == ["legacy", "new"])
    })
    .await?;
    let got = received.lock().unwrap().clone();
    assert_eq!(
        signers(&got)?,
        ["legacy", "new"],
        "each signed with its own secret"
    );
    Ok(())
}
