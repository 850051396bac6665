//! Credits against real Postgres: no overspend under concurrency, no double charge by operation
//! id, refused requests write nothing.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tsync_e2e::wrapper_app::*;

const SECRET: &str = "crm-service-secret-for-credits";

async fn service_token(app: &TestApp, name: &str) -> String {
    wrapper::startup::upsert_service_client(&app.db.pool, name, SECRET)
        .await
        .unwrap();
    let (status, body) = app
        .call(
            Method::POST,
            "/auth/service-token",
            None,
            Some(json!({"clientId": name, "clientSecret": SECRET})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    body["accessToken"].as_str().unwrap().to_owned()
}

/// A tenant with 1,000 credits allocated to `crm`, and crm's service token.
async fn funded(app: &TestApp, name: &str) -> (TestTenant, String) {
    let t = app.create_tenant(name).await;
    app.send_ok(
        Method::POST,
        "/api/admin/credits/allocate",
        &app.root,
        json!({"tenantId": t.id, "amount": 1000}),
    )
    .await;
    app.send_ok(
        Method::POST,
        "/api/admin/credits/allocate/application",
        &t.admin,
        json!({"tenantId": t.id, "application": "crm", "amount": 1000}),
    )
    .await;
    (t, service_token(app, "crm").await)
}

fn consume_body(t: &TestTenant, op: &str) -> Value {
    json!({"tenantId": t.id, "application": "crm", "creditAmount": 35,
           "operationCode": "crm.accounts.create", "operationId": op})
}

async fn crm_balance(app: &TestApp, t: &TestTenant) -> i64 {
    let body = app
        .get_ok(&format!("/api/credits/balance?tenantId={}", t.id), &t.admin)
        .await;
    body["balances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["scope"] == "app:crm")
        .unwrap()["balance"]
        .as_i64()
        .unwrap()
}

async fn consumptions(app: &TestApp, t: &TestTenant) -> (i64, i64) {
    let ledger: i64 = sqlx::query_scalar(
        "select count(*) from credit_ledger where tenant_id = $1 and kind = 'consumption'",
    )
    .bind(t.id)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    let events: i64 = sqlx::query_scalar(
        "select count(*) from outbox where tenant_id = $1 and event_type = 'credit.consumed'",
    )
    .bind(t.id)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    (ledger, events)
}

#[tokio::test]
async fn sixty_four_concurrent_consumes_of_35_against_1000_charge_exactly_28() -> anyhow::Result<()>
{
    let app = spawn_wrapper().await?;
    let (t, token) = funded(&app, "busy").await;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let (http, url, token, body) = (
            app.http.clone(),
            app.url.clone(),
            token.clone(),
            consume_body(&t, &format!("op-{i}")),
        );
        tasks.push(tokio::spawn(async move {
            let resp = http
                .post(format!("{url}/api/credits/consume"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await?;
            let status = resp.status();
            anyhow::Ok((status, resp.json::<Value>().await?))
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for task in tasks {
        let (status, body) = task.await??;
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::PAYMENT_REQUIRED => {
                refused += 1;
                assert!(body["balance"].as_i64().is_some_and(|b| b < 35), "{body}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((ok, refused), (28, 36));
    assert_eq!(crm_balance(&app, &t).await, 20);
    assert_eq!(
        consumptions(&app, &t).await,
        (28, 28),
        "28 ledger rows and 28 credit.consumed events"
    );
    Ok(())
}

#[tokio::test]
async fn the_same_operation_id_sent_ten_times_concurrently_is_charged_once() -> anyhow::Result<()> {
    let app = spawn_wrapper().await?;
    let (t, token) = funded(&app, "retry").await;
    let replies = futures_util::future::join_all((0..10).map(|_| {
        let (http, url, token, body) = (
            app.http.clone(),
            app.url.clone(),
            token.clone(),
            consume_body(&t, "same-op"),
        );
        async move {
            let resp = http
                .post(format!("{url}/api/credits/consume"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            (resp.status(), resp.text().await.unwrap())
        }
    }))
    .await;
    assert!(
        replies.iter().all(|(s, _)| *s == StatusCode::OK),
        "{replies:?}"
    );
    assert!(
        replies.iter().all(|(_, body)| *body == replies[0].1),
        "every reply identical"
    );
    assert_eq!(crm_balance(&app, &t).await, 965);
    assert_eq!(consumptions(&app, &t).await, (1, 1));
    // The ledger shows it once, filterable.
    let ledger = app
        .get_ok(
            &format!(
                "/api/credits/ledger?tenantId={}&application=crm&operationCode=crm.accounts.create",
                t.id
            ),
            &t.admin,
        )
        .await;
    assert_eq!(ledger["items"].as_array().unwrap().len(), 1);
    Ok(())
}

#[tokio::test]
async fn refused_credit_requests_write_nothing() -> anyhow::Result<()> {
    let app = spawn_wrapper().await?;
    let (t, crm) = funded(&app, "refuse").await;
    let hrms = service_token(&app, "hrms").await;
    let before = (
        consumptions(&app, &t).await,
        crm_balance(&app, &t).await,
        app.count("outbox").await,
        app.count("credit_ledger").await,
    );
    let cases: Vec<(Option<&str>, Value, StatusCode, Option<&str>)> = vec![
        (
            Some(&hrms),
            consume_body(&t, "x1"),
            StatusCode::FORBIDDEN,
            None,
        ),
        (
            Some(&t.admin),
            consume_body(&t, "x2"),
            StatusCode::FORBIDDEN,
            None,
        ),
        (None, consume_body(&t, "x3"), StatusCode::UNAUTHORIZED, None),
        (
            Some(&crm),
            json!({"tenantId": t.id, "application": "crm", "creditAmount": -5,
            "operationCode": "c", "operationId": "x4"}),
            StatusCode::BAD_REQUEST,
            Some("creditAmount"),
        ),
        (
            Some(&crm),
            json!({"tenantId": t.id, "application": "crm", "creditAmount": 5,
            "operationCode": "", "operationId": "x5"}),
            StatusCode::BAD_REQUEST,
            Some("operationCode"),
        ),
        (
            Some(&crm),
            json!({"tenantId": t.id, "application": "crm", "creditAmount": 5000,
            "operationCode": "c", "operationId": "x6"}),
            StatusCode::PAYMENT_REQUIRED,
            None,
        ),
    ];
    for (token, body, want, field) in cases {
        let (status, problem) = app
            .call(Method::POST, "/api/credits/consume", token, Some(body))
            .await;
        assert_eq!(status, want, "{problem}");
        if let Some(field) = field {
            assert_eq!(problem["field"], field);
        }
    }
    // Moving more than the pool holds is refused too.
    let (status, problem) = app
        .call(
            Method::POST,
            "/api/admin/credits/allocate/application",
            Some(&t.admin),
            Some(json!({"tenantId": t.id, "application": "crm", "amount": 1})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::PAYMENT_REQUIRED,
        "the pool is empty: {problem}"
    );
    assert_eq!(problem["balance"], 0);
    // A malformed query string is a problem naming it.
    let (status, problem) = app
        .call(
            Method::GET,
            "/api/credits/balance?tenantId=nope",
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["field"], "query");
    let after = (
        consumptions(&app, &t).await,
        crm_balance(&app, &t).await,
        app.count("outbox").await,
        app.count("credit_ledger").await,
    );
    assert_eq!(before, after);
    Ok(())
}
