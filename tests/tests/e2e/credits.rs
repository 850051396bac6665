//! Credits against real Postgres: no overspend under concurrency, no double charge by operation
//! id, refused requests write nothing.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tsync_e2e::wrapper_app::*;

pub(crate) const SECRET: &str = "crm-service-secret-for-credits";

pub(crate) async fn service_token(app: &TestApp, name: &str) -> String {
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
    let token = service_token(app, "crm").await;
    register_crm(app, &token).await;
    (t, token)
}

/// The CRM's manifest, registered with its own service token as the app does at start-up: the
/// wrapper then prices `crm.accounts.create` at 35 (and publishes that to mirrored tenants).
pub(crate) async fn register_crm(app: &TestApp, token: &str) {
    let manifest = serde_json::to_value(crm::manifest()).unwrap();
    app.send_ok(Method::PUT, "/api/apps/crm", token, manifest)
        .await;
}

fn consume_body(t: &TestTenant, op: &str) -> Value {
    json!({"tenantId": t.id, "application": "crm",
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

pub(crate) async fn consumptions(app: &TestApp, t: &TestTenant) -> (i64, i64) {
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
        // The app names an amount that is not the tenant's price: refused, whichever.
        (
            Some(&crm),
            json!({"tenantId": t.id, "application": "crm", "creditAmount": -5,
            "operationCode": "crm.accounts.create", "operationId": "x4"}),
            StatusCode::BAD_REQUEST,
            Some("creditAmount"),
        ),
        (
            Some(&crm),
            json!({"tenantId": t.id, "application": "crm", "creditAmount": 1,
            "operationCode": "crm.accounts.create", "operationId": "x4b"}),
            StatusCode::BAD_REQUEST,
            Some("creditAmount"),
        ),
        (
            Some(&crm),
            json!({"tenantId": t.id, "application": "crm",
            "operationCode": "", "operationId": "x5"}),
            StatusCode::BAD_REQUEST,
            Some("operationCode"),
        ),
        // An operation the app never declared has no price.
        (
            Some(&crm),
            json!({"tenantId": t.id, "application": "crm",
            "operationCode": "crm.free.lunch", "operationId": "x5b"}),
            StatusCode::BAD_REQUEST,
            Some("operationCode"),
        ),
        (
            Some(&crm),
            json!({"tenantId": t.id, "application": "crm", "quantity": 0,
            "operationCode": "crm.accounts.create", "operationId": "x5c"}),
            StatusCode::BAD_REQUEST,
            Some("quantity"),
        ),
        (
            Some(&crm),
            json!({"tenantId": t.id, "application": "crm", "quantity": 200,
            "operationCode": "crm.accounts.create", "operationId": "x6"}),
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

mod fast_path {
    use std::{sync::Arc, time::Duration};

    use sync_sdk::{
        contract::StreamKeys,
        credits::{CreditMirror, FastOutcome},
    };
    use sync_testkit::{RedisServer, eventually, redis_client};
    use uuid::Uuid;
    use wrapper::{config::Secret, credit_ingest::CreditIngest};

    use super::*;

    struct Rig {
        app: TestApp,
        tenant: TestTenant,
        mirror: Arc<CreditMirror>,
        redis: fred::clients::Client,
        keys: StreamKeys,
        _redis_server: Option<RedisServer>,
    }

    /// A funded tenant whose 1,000-credit crm allocation is mirrored in Redis (provisioned by
    /// the reconciliation).
    async fn rig(name: &str, private_redis: bool) -> anyhow::Result<Rig> {
        let server = if private_redis {
            Some(RedisServer::start().await?)
        } else {
            None
        };
        let url = server.as_ref().map(|s| s.url());
        let app = spawn_wrapper_with(|s| {
            if let Some(url) = url {
                s.redis_url = Secret(url);
            }
        })
        .await?;
        let (tenant, _) = funded(&app, name).await;
        let redis = redis_client(&app.state.settings.redis_url.0).await?;
        let keys = StreamKeys::new(app.state.settings.namespace.clone(), 8).unwrap();
        let mirror = Arc::new(CreditMirror::new(redis.clone(), keys.clone()));
        // The reconciliation provisions the mirror: one grant of 1,000.
        CreditIngest::new(app.db.pool.clone(), redis.clone(), keys.clone())
            .reconcile()
            .await?;
        assert_eq!(mirror.grants(tenant.id, "crm").await?.len(), 1);
        assert_eq!(mirror.balance(tenant.id, "crm").await?, Some(1000));
        Ok(Rig {
            app,
            tenant,
            mirror,
            redis,
            keys,
            _redis_server: server,
        })
    }

    async fn ingested(rig: &Rig, n: i64) -> bool {
        consumptions(&rig.app, &rig.tenant).await == (n, n)
    }

    #[tokio::test]
    async fn a_fast_path_consumption_records_the_user_the_app_named() -> anyhow::Result<()> {
        let rig = rig("fastuser", false).await?;
        let user = rig.tenant.admin_id;
        let outcome = rig
            .mirror
            .consume_as(
                Some(user),
                rig.tenant.id,
                "crm",
                "crm.accounts.create",
                "fu-1",
                1,
            )
            .await?;
        assert!(matches!(outcome, FastOutcome::Charged(_)), "{outcome:?}");
        eventually(Duration::from_secs(20), || ingested(&rig, 1)).await?;
        let recorded: Option<Uuid> = sqlx::query_scalar(
            "select user_id from credit_ledger where tenant_id = $1 and operation_id = 'fu-1'",
        )
        .bind(rig.tenant.id)
        .fetch_one(&rig.app.db.pool)
        .await?;
        assert_eq!(recorded, Some(user));
        Ok(())
    }

    #[tokio::test]
    async fn sixty_four_concurrent_fast_consumes_charge_exactly_28_and_the_ledger_follows()
    -> anyhow::Result<()> {
        let rig = rig("fast", false).await?;
        let outcomes = futures_util::future::join_all((0..64).map(|i| {
            let mirror = rig.mirror.clone();
            let tenant = rig.tenant.id;
            async move {
                mirror
                    .consume(tenant, "crm", "crm.accounts.create", &format!("op-{i}"), 1)
                    .await
                    .unwrap()
            }
        }))
        .await;
        let charged = outcomes
            .iter()
            .filter(|o| matches!(o, FastOutcome::Charged(_)))
            .count();
        let refused = outcomes
            .iter()
            .filter(|o| matches!(o, FastOutcome::Insufficient { balance } if *balance < 35))
            .count();
        assert_eq!((charged, refused), (28, 36));
        assert_eq!(rig.mirror.balance(rig.tenant.id, "crm").await?, Some(20));
        eventually(Duration::from_secs(20), || ingested(&rig, 28)).await?;
        assert_eq!(
            crm_balance(&rig.app, &rig.tenant).await,
            20,
            "the ledger agrees with the mirror"
        );
        // The relay's maintenance trims the credit stream below what the ledger acknowledged:
        // the stream does not grow without bound, and nothing is lost or counted twice.
        let partition = rig.keys.partition_of(rig.tenant.id);
        let stream = rig.keys.app_credit_stream(partition, "crm");
        let relay = wrapper::startup::relay_for(&rig.app.state);
        eventually(Duration::from_secs(20), || async {
            relay.maintain(partition).await.is_ok()
                && fred::interfaces::StreamsInterface::xlen::<u64, _>(&rig.redis, &stream)
                    .await
                    .is_ok_and(|n| n <= 1)
        })
        .await?;
        let ingest =
            CreditIngest::new(rig.app.db.pool.clone(), rig.redis.clone(), rig.keys.clone());
        assert!(
            ingest.reconcile().await?.is_empty(),
            "mirror and ledger still agree"
        );
        assert_eq!(crm_balance(&rig.app, &rig.tenant).await, 20);
        assert_eq!(rig.mirror.balance(rig.tenant.id, "crm").await?, Some(20));
        Ok(())
    }

    /// The wrapper is the price authority on both paths: the app names an operation and a
    /// quantity; the tenant's credit config (else the manifest's default) sets the amount, a
    /// price change reaches the mirror at once, and an undeclared operation is charged nowhere.
    #[tokio::test]
    async fn the_wrapper_prices_every_consumption_on_both_paths() -> anyhow::Result<()> {
        use sync_sdk::{
            credits::offline::{Consumed, CreditClient, CreditError},
            wrapper_client::{WrapperClient, WrapperConfig},
        };
        let rig = rig("priced", false).await?;
        let t = rig.tenant.id;
        // The manifest's default: 2 × 35.
        let FastOutcome::Charged(receipt) = rig
            .mirror
            .consume(t, "crm", "crm.accounts.create", "p-1", 2)
            .await?
        else {
            panic!("charged on the fast path")
        };
        assert_eq!((receipt.quantity, receipt.amount), (2, 70));
        // The tenant's price changes: the next consumption pays it, on the fast path at once.
        rig.app
            .send_ok(
                Method::PUT,
                &format!("/api/tenants/{t}/credit-configs"),
                &rig.app.root,
                json!({"application": "crm", "operationCode": "crm.accounts.create", "cost": 40}),
            )
            .await;
        let FastOutcome::Charged(receipt) = rig
            .mirror
            .consume(t, "crm", "crm.accounts.create", "p-2", 1)
            .await?
        else {
            panic!("charged on the fast path")
        };
        assert_eq!(receipt.amount, 40);
        assert_eq!(rig.mirror.balance(t, "crm").await?, Some(1000 - 70 - 40));
        // An operation nobody declared has no price on the mirror: nothing is charged there...
        assert_eq!(
            rig.mirror
                .consume(t, "crm", "crm.free.lunch", "p-3", 1)
                .await?,
            FastOutcome::NotPriced
        );
        assert_eq!(rig.mirror.balance(t, "crm").await?, Some(890));
        // ...and the SDK's client, falling back to the wrapper, is refused there too.
        let wrapper = Arc::new(WrapperClient::new(WrapperConfig {
            base_url: rig.app.url.clone(),
            client_id: "crm".into(),
            client_secret: SECRET.into(),
            page_size: 1000,
            timeout: Duration::from_secs(10),
        }));
        let store = Arc::new(sync_sdk::store::postgres::PostgresStore::new(
            rig.app.db.pool.clone(),
        ));
        store.init().await?;
        let credits = CreditClient::new(wrapper.clone(), store, 100)
            .with_mirror(CreditMirror::new(rig.redis.clone(), rig.keys.clone()));
        match credits.consume(t, "crm", "crm.free.lunch", "p-4", 1).await {
            Err(CreditError::Refused { field, .. }) => assert_eq!(field, "operationCode"),
            other => panic!("an undeclared operation: {other:?}"),
        }
        // The direct path prices the same way: 3 × 40.
        let Consumed::Charged(entry) = credits
            .consume_direct(t, "crm", "crm.accounts.create", "p-5", 3)
            .await?
        else {
            panic!("charged at the wrapper")
        };
        assert_eq!(entry["amount"], 120);
        eventually(Duration::from_secs(20), || ingested(&rig, 3)).await?;
        assert_eq!(
            crm_balance(&rig.app, &rig.tenant).await,
            1000 - 70 - 40 - 120
        );
        Ok(())
    }

    #[tokio::test]
    async fn one_fast_operation_id_ten_times_is_charged_once_with_identical_receipts()
    -> anyhow::Result<()> {
        let rig = rig("fastonce", false).await?;
        let outcomes = futures_util::future::join_all((0..10).map(|_| {
            rig.mirror
                .consume(rig.tenant.id, "crm", "crm.accounts.create", "same-op", 1)
        }))
        .await;
        let receipts: Vec<_> = outcomes
            .into_iter()
            .map(|o| match o.unwrap() {
                FastOutcome::Charged(r) | FastOutcome::Replayed(r) => r,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(receipts.iter().all(|r| *r == receipts[0]));
        assert_eq!(rig.mirror.balance(rig.tenant.id, "crm").await?, Some(965));
        eventually(Duration::from_secs(20), || ingested(&rig, 1)).await?;
        // Re-ingesting the same entry (a redelivery) changes nothing.
        let ingest =
            CreditIngest::new(rig.app.db.pool.clone(), rig.redis.clone(), rig.keys.clone());
        let entry = &receipts[0].entry;
        let stream = rig
            .keys
            .app_credit_stream(rig.keys.partition_of(rig.tenant.id), "crm");
        let fields: Vec<(String, std::collections::HashMap<String, String>)> =
            fred::interfaces::StreamsInterface::xrange(
                &rig.redis,
                &stream,
                entry.as_str(),
                entry.as_str(),
                None,
            )
            .await?;
        ingest.ingest(entry, &fields[0].1).await?;
        assert_eq!(consumptions(&rig.app, &rig.tenant).await, (1, 1));
        assert_eq!(crm_balance(&rig.app, &rig.tenant).await, 965);
        Ok(())
    }

    #[tokio::test]
    async fn after_redis_is_flushed_reconciliation_restores_the_mirror_from_the_ledger()
    -> anyhow::Result<()> {
        let rig = rig("flushed", true).await?;
        for i in 0..4 {
            let outcome = rig
                .mirror
                .consume(
                    rig.tenant.id,
                    "crm",
                    "crm.accounts.create",
                    &format!("f-{i}"),
                    1,
                )
                .await?;
            assert!(matches!(outcome, FastOutcome::Charged(_)));
        }
        eventually(Duration::from_secs(20), || ingested(&rig, 4)).await?;
        let _: () = fred::interfaces::ClientLike::flushall(&rig.redis, false).await?;
        assert_eq!(
            rig.mirror.balance(rig.tenant.id, "crm").await?,
            None,
            "Redis lost the mirror"
        );
        assert!(matches!(
            rig.mirror
                .consume(
                    rig.tenant.id,
                    "crm",
                    "crm.accounts.create",
                    "after-flush",
                    1
                )
                .await?,
            FastOutcome::NotMirrored
        ));

        let ingest =
            CreditIngest::new(rig.app.db.pool.clone(), rig.redis.clone(), rig.keys.clone());
        let corrections = ingest.reconcile().await?;
        assert_eq!(corrections.len(), 1, "{corrections:?}");
        assert_eq!((corrections[0].mirror, corrections[0].ledger), (None, 860));
        assert_eq!(rig.mirror.balance(rig.tenant.id, "crm").await?, Some(860));
        assert_eq!(rig.mirror.grants(rig.tenant.id, "crm").await?.len(), 1);
        assert!(
            ingest.reconcile().await?.is_empty(),
            "nothing left to correct"
        );
        Ok(())
    }
}

#[tokio::test]
async fn the_sdk_direct_path_charges_exactly_28_of_64_concurrent_consumes() -> anyhow::Result<()> {
    use sync_sdk::wrapper_client::{Refusal, WrapperClient, WrapperConfig};
    let app = spawn_wrapper().await?;
    let (t, _) = funded(&app, "sdkdirect").await;
    let client = WrapperClient::new(WrapperConfig {
        base_url: app.url.clone(),
        client_id: "crm".into(),
        client_secret: SECRET.into(),
        page_size: 1000,
        timeout: std::time::Duration::from_secs(10),
    });
    let ops: Vec<String> = (0..64).map(|i| format!("sdk-{i}")).collect();
    let results = futures_util::future::join_all(
        ops.iter()
            .map(|op| client.consume(t.id, "crm", "crm.accounts.create", op, 1)),
    )
    .await;
    let charged = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Ok(Err(Refusal::Insufficient { balance })) if *balance < 35))
        .count();
    assert_eq!((charged, refused), (28, 36));
    assert_eq!(crm_balance(&app, &t).await, 20);
    assert_eq!(consumptions(&app, &t).await, (28, 28));
    // A retry of a charged operation returns the same receipt and charges nothing.
    let first: Value = results
        .into_iter()
        .find_map(|r| r.ok()?.ok())
        .expect("28 were charged");
    let op = first["operationId"].as_str().unwrap().to_owned();
    let again = client
        .consume(t.id, "crm", "crm.accounts.create", &op, 1)
        .await?;
    assert_eq!(again.ok(), Some(first));
    assert_eq!(crm_balance(&app, &t).await, 20);
    Ok(())
}

mod offline {
    use std::{sync::Arc, time::Duration};

    use sync_sdk::{
        credits::offline::{Consumed, CreditClient, CreditError, CreditQueue},
        store::{TenantStore, mongo::MongoStore, postgres::PostgresStore},
        wrapper_client::{WrapperClient, WrapperConfig},
    };
    use sync_testkit::{fresh_database, fresh_mongo};

    use super::*;

    async fn wrapper_down_then_back<Q: CreditQueue + TenantStore>(
        queue: Arc<Q>,
        name: &str,
    ) -> anyhow::Result<()> {
        let mut app = spawn_wrapper().await?;
        let (t, _) = funded(&app, name).await;
        let wrapper = Arc::new(WrapperClient::new(WrapperConfig {
            base_url: app.url.clone(),
            client_id: "crm".into(),
            client_secret: SECRET.into(),
            page_size: 1000,
            timeout: Duration::from_secs(5),
        }));
        let credits =
            CreditClient::new(wrapper, queue.clone(), 100).with_manifest(&crm::manifest());
        // Online: charged at once.
        assert!(matches!(
            credits
                .consume(t.id, "crm", "crm.accounts.create", "on-1", 1)
                .await?,
            Consumed::Charged(_)
        ));

        app.stop();
        // Offline: 35 + 35 fit the allowance of 100, the next 35 does not.
        for op in ["off-1", "off-2"] {
            assert_eq!(
                credits
                    .consume(t.id, "crm", "crm.accounts.create", op, 1)
                    .await?,
                Consumed::Queued
            );
        }
        assert_eq!(
            credits
                .consume(t.id, "crm", "crm.accounts.create", "off-1", 1)
                .await?,
            Consumed::Queued,
            "a retry of a queued operation is not queued twice"
        );
        match credits
            .consume(t.id, "crm", "crm.accounts.create", "off-3", 1)
            .await
        {
            Err(CreditError::AllowanceExhausted {
                allowance: 100,
                queued: 70,
            }) => {}
            other => panic!("beyond the allowance: {other:?}"),
        }
        assert_eq!(queue.queued().await?.len(), 2);
        let still_down = credits.replay().await?;
        assert_eq!((still_down.charged, still_down.left), (0, 2));

        app.restart().await?;
        let report = credits.replay().await?;
        assert_eq!(
            (report.charged, report.left, report.refused.len()),
            (2, 0, 0)
        );
        assert!(queue.queued().await?.is_empty());
        // Replaying again (say, after a crash before the dequeue) charges nothing new.
        assert_eq!(credits.replay().await?.charged, 0);
        assert_eq!(
            consumptions(&app, &t).await,
            (3, 3),
            "on-1, off-1, off-2: once each"
        );
        assert_eq!(crm_balance(&app, &t).await, 1000 - 3 * 35);
        Ok(())
    }

    async fn concurrent_offline_consumes_stay_within_the_allowance<Q: CreditQueue>(
        queue: Arc<Q>,
    ) -> anyhow::Result<()> {
        use sync_sdk::credits::offline::{Enqueued, QueuedConsumption};
        let tenant = uuid::Uuid::now_v7();
        let outcomes = futures_util::future::join_all((0..10).map(|i| {
            let queue = queue.clone();
            async move {
                let c = QueuedConsumption {
                    operation_id: format!("{tenant}-c{i}"),
                    tenant_id: tenant,
                    application: "crm".into(),
                    operation_code: "c".into(),
                    quantity: 1,
                    amount: 35,
                };
                queue.enqueue(&c, 100).await.unwrap()
            }
        }))
        .await;
        let queued = outcomes.iter().filter(|o| **o == Enqueued::Queued).count();
        assert_eq!(queued, 2, "{outcomes:?}");
        Ok(())
    }

    #[tokio::test]
    async fn concurrent_offline_consumes_stay_within_the_allowance_postgres() -> anyhow::Result<()>
    {
        let store = PostgresStore::new(fresh_database().await?.pool);
        store.init().await?;
        concurrent_offline_consumes_stay_within_the_allowance(Arc::new(store)).await
    }

    #[tokio::test]
    async fn concurrent_offline_consumes_stay_within_the_allowance_mongo() -> anyhow::Result<()> {
        let store = MongoStore::new(fresh_mongo().await?);
        store.init().await?;
        concurrent_offline_consumes_stay_within_the_allowance(Arc::new(store)).await
    }

    #[tokio::test]
    async fn offline_consumption_within_the_allowance_replays_once_postgres_queue()
    -> anyhow::Result<()> {
        let db = fresh_database().await?;
        let store = PostgresStore::new(db.pool.clone());
        store.init().await?;
        wrapper_down_then_back(Arc::new(store), "offpg").await
    }

    #[tokio::test]
    async fn offline_consumption_within_the_allowance_replays_once_mongo_queue()
    -> anyhow::Result<()> {
        let store = MongoStore::new(fresh_mongo().await?);
        store.init().await?;
        wrapper_down_then_back(Arc::new(store), "offmongo").await
    }
}

/// Only an app itself (or a platform admin) registers its manifest; a bad manifest is a problem
/// naming the field, and nothing of it is written.
#[tokio::test]
async fn an_app_registers_only_itself_and_a_bad_manifest_writes_nothing() -> anyhow::Result<()> {
    let app = spawn_wrapper().await?;
    let crm = service_token(&app, "crm").await;
    let hrms = service_token(&app, "hrms").await;
    let manifest = serde_json::to_value(crm::manifest())?;
    let t = app.create_tenant("registry").await;
    let before = (
        app.count("applications").await,
        app.count("application_operations").await,
    );
    let mut duplicate = manifest.clone();
    duplicate["operations"] =
        json!([{"code": "a", "defaultCost": 1}, {"code": "a", "defaultCost": 2}]);
    let mut negative = manifest.clone();
    negative["operations"] = json!([{"code": "a", "defaultCost": -1}]);
    let mut path = manifest.clone();
    path["publicPath"] = json!("/crm/../admin");
    let mut unknown = manifest.clone();
    unknown["price"] = json!(1);
    let cases = [
        (Some(&hrms), manifest.clone(), StatusCode::FORBIDDEN, None),
        (
            Some(&t.admin),
            manifest.clone(),
            StatusCode::FORBIDDEN,
            None,
        ),
        (None, manifest.clone(), StatusCode::UNAUTHORIZED, None),
        (
            Some(&crm),
            duplicate,
            StatusCode::BAD_REQUEST,
            Some("operations[1].code"),
        ),
        (
            Some(&crm),
            negative,
            StatusCode::BAD_REQUEST,
            Some("operations[0].defaultCost"),
        ),
        (
            Some(&crm),
            path,
            StatusCode::BAD_REQUEST,
            Some("publicPath"),
        ),
        (Some(&crm), unknown, StatusCode::BAD_REQUEST, None),
    ];
    for (token, body, want, field) in cases {
        let (status, problem) = app
            .call(
                Method::PUT,
                "/api/apps/crm",
                token.map(String::as_str),
                Some(body),
            )
            .await;
        assert_eq!(status, want, "{problem}");
        if let Some(field) = field {
            assert_eq!(problem["field"], field, "{problem}");
        }
    }
    let after = (
        app.count("applications").await,
        app.count("application_operations").await,
    );
    assert_eq!(before, after, "nothing of a refused manifest is written");
    // The app itself registers, and every signed-in caller sees it.
    register_crm(&app, &crm).await;
    let listed = app.get_ok("/api/apps", &t.admin).await;
    assert_eq!(listed, json!([manifest]));
    Ok(())
}

#[tokio::test]
async fn usage_reports_add_up_to_the_ledger_by_user_app_operation_and_day() -> anyhow::Result<()> {
    let app = spawn_wrapper().await?;
    let (t, crm) = funded(&app, "usage").await;
    let (alice, member) = app.create_member(&t, "alice@usage.test").await;
    let (bob, _) = app.create_member(&t, "bob@usage.test").await;
    let charges = [
        (Some(alice), "u-1"),
        (Some(alice), "u-2"),
        (Some(alice), "u-3"),
        (Some(bob), "u-4"),
        (None, "u-5"),
    ];
    for (user, op) in charges {
        let mut body = consume_body(&t, op);
        if let Some(user) = user {
            body["userId"] = json!(user);
        }
        app.send_ok(Method::POST, "/api/credits/consume", &crm, body)
            .await;
    }
    let usage = |query: &str| format!("/api/tenants/{}/credits/usage?{query}", t.id);
    // By user: alice 3 × 35, bob 1 × 35, and the consumption that named nobody.
    let report = app.get_ok(&usage("by=user"), &t.admin).await;
    let rows: std::collections::HashMap<String, (i64, i64)> = report["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let user = r["userId"].as_str().unwrap_or("none").to_owned();
            (
                user,
                (
                    r["operations"].as_i64().unwrap(),
                    r["credits"].as_i64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(rows[&alice.to_string()], (3, 105), "{report}");
    assert_eq!(rows[&bob.to_string()], (1, 35), "{report}");
    assert_eq!(rows["none"], (1, 35), "{report}");
    // To the credit what the ledger says.
    let ledger: i64 = sqlx::query_scalar(
        "select sum(amount)::bigint from credit_ledger where tenant_id = $1 and kind = 'consumption'",
    )
    .bind(t.id)
    .fetch_one(&app.db.pool)
    .await?;
    let reported: i64 = rows.values().map(|(_, credits)| credits).sum();
    assert_eq!(
        (reported, report["totals"]["credits"].as_i64()),
        (ledger, Some(ledger))
    );
    // By app, operation and day (the default): one row for today.
    let report = app.get_ok(&usage(""), &t.admin).await;
    let today = chrono::Utc::now().date_naive().to_string();
    assert_eq!(
        report["items"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
    let row = &report["items"][0];
    assert_eq!(
        (row["day"].as_str(), row["application"].as_str()),
        (Some(today.as_str()), Some("crm"))
    );
    assert_eq!(
        (row["operations"].as_i64(), row["credits"].as_i64()),
        (Some(5), Some(175))
    );
    // Paged: one row a page, the same three rows in all.
    let (mut seen, mut cursor) = (Vec::new(), None::<i64>);
    loop {
        let page_query = match cursor {
            Some(c) => format!("by=user&limit=1&cursor={c}"),
            None => "by=user&limit=1".to_owned(),
        };
        let page = app.get_ok(&usage(&page_query), &t.admin).await;
        seen.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next"].as_i64() {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    // As CSV.
    let response = app
        .http
        .get(format!("{}{}", app.url, usage("by=user&format=csv")))
        .bearer_auth(&t.admin)
        .send()
        .await?;
    assert!(
        response.headers()["content-type"]
            .to_str()?
            .starts_with("text/csv")
    );
    let csv = response.text().await?;
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "user_id,operations,credits");
    assert!(lines.contains(&format!("{alice},3,105").as_str()), "{csv}");
    assert_eq!(lines.len(), 4, "{csv}");
    // Refusals name the field; members see no report.
    let (status, problem) = app
        .call(Method::GET, &usage("by=tenant"), Some(&t.admin), None)
        .await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("by"))
    );
    let (status, _) = app
        .call(Method::GET, &usage("by=user"), Some(&member), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    Ok(())
}
