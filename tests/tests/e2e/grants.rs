//! Credit grants against real Postgres and Redis: the draw order on both paths under
//! concurrency, expiries and renewals landing once with two wrapper replicas, thresholds
//! firing once per crossing, the fast path's mirror equal to the ledger grant by grant, and an
//! offline replay that cannot spend a grant that expired meanwhile.

use std::{collections::HashMap, sync::Arc, time::Duration};

use chrono::{DateTime, TimeDelta, Timelike, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sync_sdk::{
    contract::StreamKeys,
    credits::{CreditMirror, FastOutcome},
};
use sync_testkit::{eventually, redis_client};
use tsync_e2e::wrapper_app::*;
use uuid::Uuid;

use super::credits::{consumptions, register_crm, service_token};

const OP: &str = "crm.accounts.create";

/// A tenant whose CRM is registered (`crm.accounts.create` costs 35), and the CRM's token.
async fn tenant_with_crm(app: &TestApp, name: &str) -> (TestTenant, String) {
    let t = app.create_tenant(name).await;
    let token = service_token(app, "crm").await;
    register_crm(app, &token).await;
    (t, token)
}

/// Grant `amount` credits to the tenant's CRM with `terms`; the grant's id.
async fn grant(app: &TestApp, t: &TestTenant, amount: i64, terms: Value) -> Uuid {
    let mut body = json!({"tenantId": t.id, "application": "crm", "amount": amount});
    body.as_object_mut()
        .unwrap()
        .extend(terms.as_object().cloned().unwrap_or_default());
    let entry = app
        .send_ok(Method::POST, "/api/admin/credits/allocate", &app.root, body)
        .await;
    entry["grantId"].as_str().unwrap().parse().unwrap()
}

fn in_secs(secs: i64) -> DateTime<Utc> {
    Utc::now() + TimeDelta::seconds(secs)
}

/// Every grant of the tenant (any status), by id: (remaining, status).
async fn grants(app: &TestApp, t: &TestTenant) -> HashMap<Uuid, (i64, String)> {
    let list = app
        .get_ok(
            &format!("/api/credits/grants?tenantId={}&all=true", t.id),
            &t.admin,
        )
        .await;
    list.as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["id"].as_str().unwrap().parse().unwrap(),
                (
                    g["remaining"].as_i64().unwrap(),
                    g["status"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect()
}

/// The CRM balance as (balance, available).
async fn crm_balance(app: &TestApp, t: &TestTenant) -> (i64, i64) {
    let body = app
        .get_ok(&format!("/api/credits/balance?tenantId={}", t.id), &t.admin)
        .await;
    let b = body["balances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["scope"] == "app:crm")
        .cloned()
        .unwrap_or(json!({"balance": 0, "available": 0}));
    (
        b["balance"].as_i64().unwrap(),
        b["available"].as_i64().unwrap(),
    )
}

/// The draws of every consumption of the tenant, in ledger order.
async fn draws_in_order(app: &TestApp, t: &TestTenant) -> Vec<Vec<(Uuid, i64)>> {
    let rows: Vec<sqlx::types::Json<Vec<Value>>> = sqlx::query_scalar(
        "select draws from credit_ledger where tenant_id = $1 and kind = 'consumption' order by id",
    )
    .bind(t.id)
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|r| {
            r.0.iter()
                .map(|d| {
                    (
                        d["grantId"].as_str().unwrap().parse().unwrap(),
                        d["amount"].as_i64().unwrap(),
                    )
                })
                .collect()
        })
        .collect()
}

/// The ledger holds the tenant's balances as the sum of their grants' remaining credits.
async fn assert_balances_are_the_grants(app: &TestApp, t: &TestTenant) {
    let mismatched: i64 = sqlx::query_scalar(
        "select count(*) from credit_balances b where b.tenant_id = $1 and b.balance <>
             (select coalesce(sum(g.remaining), 0) from credit_grants g
              where g.tenant_id = b.tenant_id and g.scope = b.scope)",
    )
    .bind(t.id)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(mismatched, 0, "every balance is the sum of its grants");
}

/// Provision the Redis mirrors of every application balance, as the wrapper's periodic
/// reconciliation does.
async fn provision_mirror(app: &TestApp) -> anyhow::Result<()> {
    let redis = redis_client(&app.state.settings.redis_url.0).await?;
    let keys = StreamKeys::new(app.state.settings.namespace.clone(), 8).unwrap();
    wrapper::credit_ingest::CreditIngest::new(app.db.pool.clone(), redis, keys)
        .reconcile()
        .await?;
    Ok(())
}

async fn consume(app: &TestApp, token: &str, t: &TestTenant, op: String) -> (StatusCode, Value) {
    app.call(
        Method::POST,
        "/api/credits/consume",
        Some(token),
        Some(
            json!({"tenantId": t.id, "application": "crm", "operationCode": OP,
                    "operationId": op}),
        ),
    )
    .await
}

#[tokio::test]
async fn grants_are_drawn_by_priority_then_expiry_and_64_concurrent_consumes_never_overspend()
-> anyhow::Result<()> {
    let app = spawn_wrapper().await?;
    let (t, token) = tenant_with_crm(&app, "order").await;
    // Made in the opposite of the draw order: the order comes from the terms, not creation.
    let paid = grant(&app, &t, 300, json!({})).await;
    let later = grant(
        &app,
        &t,
        100,
        json!({"priority": 10, "expiresAt": in_secs(7200), "category": "promotional"}),
    )
    .await;
    let sooner = grant(
        &app,
        &t,
        100,
        json!({"priority": 10, "expiresAt": in_secs(3600), "category": "promotional"}),
    )
    .await;
    let future = grant(&app, &t, 1000, json!({"effectiveAt": in_secs(3600)})).await;
    assert_eq!(crm_balance(&app, &t).await, (1500, 500));

    let outcomes = futures_util::future::join_all(
        (0..64).map(|i| consume(&app, &token, &t, format!("op-{i}"))),
    )
    .await;
    let charged = outcomes.iter().filter(|o| o.0 == StatusCode::OK).count();
    for (status, body) in &outcomes {
        if *status != StatusCode::OK {
            assert_eq!(*status, StatusCode::PAYMENT_REQUIRED, "{body}");
            assert!(body["balance"].as_i64().is_some_and(|b| b < 35), "{body}");
        }
    }
    assert_eq!(charged, 14, "500 credits in effect buy 14 × 35");

    // In ledger order, no consumption drew a grant while an earlier one in the order had
    // credits left, and none drew the grant not in effect yet.
    let order = [sooner, later, paid];
    let mut position = 0;
    let mut per_grant: HashMap<Uuid, i64> = HashMap::new();
    for draws in draws_in_order(&app, &t).await {
        for (g, amount) in draws {
            let at = order
                .iter()
                .position(|o| *o == g)
                .expect("a grant in effect");
            assert!(at >= position, "drew {g} after a later grant");
            position = at;
            *per_grant.entry(g).or_default() += amount;
        }
    }
    assert_eq!(
        (per_grant[&sooner], per_grant[&later], per_grant[&paid]),
        (100, 100, 290)
    );
    let now = grants(&app, &t).await;
    assert_eq!(now[&sooner].0, 0);
    assert_eq!(now[&later].0, 0);
    assert_eq!(now[&paid].0, 10);
    assert_eq!(now[&future].0, 1000);
    assert_eq!(crm_balance(&app, &t).await, (1010, 10));
    assert_balances_are_the_grants(&app, &t).await;
    assert_eq!(consumptions(&app, &t).await, (14, 14));

    // Bad terms are refused naming the field, and write nothing.
    let before: i64 = sqlx::query_scalar("select count(*) from credit_grants")
        .fetch_one(&app.db.pool)
        .await?;
    for (terms, field) in [
        (json!({"priority": 101}), "priority"),
        (json!({"category": "gift"}), "category"),
        (json!({"expiresAt": in_secs(-10)}), "expiresAt"),
        (json!({"recurrence": "hourly"}), "recurrence"),
        (
            json!({"recurrence": "monthly", "rollover": "capped"}),
            "rolloverCap",
        ),
        (json!({"rollover": "all"}), "rollover"),
        (
            json!({"effectiveAt": "1990-01-01T00:00:00Z"}),
            "effectiveAt",
        ),
        (json!({"expiresAt": "3100-01-01T00:00:00Z"}), "expiresAt"),
        (
            json!({"recurrence": "daily", "effectiveAt": in_secs(-3 * 86_400)}),
            "effectiveAt",
        ),
    ] {
        let mut body = json!({"tenantId": t.id, "application": "crm", "amount": 10});
        body.as_object_mut()
            .unwrap()
            .extend(terms.as_object().cloned().unwrap());
        let (status, problem) = app
            .call(
                Method::POST,
                "/api/admin/credits/allocate",
                Some(&app.root),
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{terms}: {problem}");
        assert_eq!(problem["field"], field, "{problem}");
    }
    let after: i64 = sqlx::query_scalar("select count(*) from credit_grants")
        .fetch_one(&app.db.pool)
        .await?;
    assert_eq!(before, after, "refused grants wrote nothing");
    Ok(())
}

/// Credits moved from the pool keep their grant's terms: the CRM's grants drawn first are the
/// children of the pool's promotional grant, and voiding that grant voids them too.
#[tokio::test]
async fn credits_moved_to_an_app_keep_their_grants_terms_and_a_void_reaches_them()
-> anyhow::Result<()> {
    let app = spawn_wrapper().await?;
    let (t, token) = tenant_with_crm(&app, "moved").await;
    let pool_grant = |body: Value| {
        let mut b = json!({"tenantId": t.id});
        b.as_object_mut()
            .unwrap()
            .extend(body.as_object().cloned().unwrap());
        app.send_ok(Method::POST, "/api/admin/credits/allocate", &app.root, b)
    };
    pool_grant(json!({"amount": 500})).await;
    let promo = pool_grant(
        json!({"amount": 100, "priority": 5, "category": "promotional",
                                  "expiresAt": in_secs(3600)}),
    )
    .await["grantId"]
        .as_str()
        .unwrap()
        .parse::<Uuid>()?;
    let moved = app
        .send_ok(
            Method::POST,
            "/api/admin/credits/allocate/application",
            &t.admin,
            json!({"tenantId": t.id, "application": "crm", "amount": 150}),
        )
        .await;
    let draws = moved["draws"].as_array().unwrap();
    assert_eq!(draws.len(), 2, "{moved}");
    assert_eq!(draws[0]["grantId"], promo.to_string(), "the pool's order");
    assert_eq!(draws[0]["amount"], 100);
    assert_eq!(draws[1]["amount"], 50);
    let child: Uuid = draws[0]["into"].as_str().unwrap().parse()?;
    let list = app
        .get_ok(
            &format!("/api/credits/grants?tenantId={}&scope=app:crm", t.id),
            &t.admin,
        )
        .await;
    let first = &list[0];
    assert_eq!(first["id"], child.to_string(), "drawn first: {list}");
    assert_eq!(
        (
            &first["category"],
            &first["priority"],
            &first["parentId"],
            first["expiresAt"].is_string()
        ),
        (
            &json!("promotional"),
            &json!(5),
            &json!(promo.to_string()),
            true
        )
    );
    assert_eq!(
        consume(&app, &token, &t, "m-1".into()).await.0,
        StatusCode::OK
    );
    let voided = app
        .send_ok(
            Method::POST,
            &format!("/api/admin/credits/grants/{promo}/void"),
            &app.root,
            json!({}),
        )
        .await;
    let voided = voided.as_array().unwrap();
    assert_eq!(voided.len(), 2, "the grant and its child: {voided:?}");
    assert_eq!(voided[1]["amount"], 65, "100 moved, 35 consumed");
    let now = grants(&app, &t).await;
    assert_eq!(now[&child], (0, "voided".to_owned()));
    assert_eq!(now[&promo], (0, "voided".to_owned()));
    assert_eq!(crm_balance(&app, &t).await, (50, 50));
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/api/admin/credits/grants/{promo}/void"),
            Some(&app.root),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "a grant ends once");
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/api/admin/credits/grants/{promo}/void"),
            Some(&t.admin),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "platform admins only");
    assert_balances_are_the_grants(&app, &t).await;
    Ok(())
}

/// With the job running every second on two replicas: a grant that expires and a monthly grant
/// whose period ends land once each — one expiry entry, one renewal with its capped rollover —
/// and later ticks do nothing more.
#[tokio::test]
async fn an_expiry_and_a_monthly_renewal_with_rollover_land_once_with_two_replicas()
-> anyhow::Result<()> {
    let app = spawn_wrapper_with(|s| s.credit_grants_secs = 1).await?;
    let _second = app.another_replica().await?;
    let (t, token) = tenant_with_crm(&app, "renewals").await;
    let expiring = grant(
        &app,
        &t,
        50,
        json!({"priority": 90, "expiresAt": in_secs(3)}),
    )
    .await;
    // Its month started a month ago less three seconds: it renews in three seconds.
    let anchor = (Utc::now()
        .checked_sub_months(chrono::Months::new(1))
        .unwrap()
        + TimeDelta::seconds(3))
    .with_nanosecond(0)
    .unwrap();
    let monthly = grant(
        &app,
        &t,
        100,
        json!({"priority": 1, "effectiveAt": anchor, "recurrence": "monthly",
               "rollover": "capped", "rolloverCap": 30}),
    )
    .await;
    provision_mirror(&app).await?;
    assert_eq!(
        consume(&app, &token, &t, "before".into()).await.0,
        StatusCode::OK
    );

    let ledger = |kind: &'static str, grant: Uuid| {
        let pool = app.db.pool.clone();
        async move {
            sqlx::query_as::<_, (i64,)>(
                "select amount from credit_ledger where grant_id = $1 and kind = $2 order by id",
            )
            .bind(grant)
            .bind(kind)
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.0)
            .collect::<Vec<i64>>()
        }
    };
    eventually(Duration::from_secs(20), || async {
        !ledger("expiry", expiring).await.is_empty() && !ledger("renewal", monthly).await.is_empty()
    })
    .await?;
    // Three more ticks of the job, on either replica.
    let ticks = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, i64>("select count(*) from job_runs where job = 'credit_grants'")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let seen = ticks(app.db.pool.clone()).await;
    eventually(Duration::from_secs(20), || async {
        ticks(app.db.pool.clone()).await >= seen + 3
    })
    .await?;

    assert_eq!(ledger("expiry", expiring).await, vec![50], "expired once");
    // 100 − 35 consumed = 65 left: the cap keeps 30, 35 expire, the month brings 100.
    assert_eq!(
        ledger("expiry", monthly).await,
        vec![35],
        "rolled over once"
    );
    assert_eq!(ledger("renewal", monthly).await, vec![100], "renewed once");
    let now = grants(&app, &t).await;
    assert_eq!(now[&expiring], (0, "expired".to_owned()));
    assert_eq!(now[&monthly], (130, "active".to_owned()));
    let next: DateTime<Utc> =
        sqlx::query_scalar("select next_renewal_at from credit_grants where id = $1")
            .bind(monthly)
            .fetch_one(&app.db.pool)
            .await?;
    assert_eq!(
        next,
        anchor
            .checked_add_months(chrono::Months::new(2))
            .unwrap()
            .with_timezone(&Utc),
        "the next period counts from the anchor"
    );
    let events: i64 = sqlx::query_scalar(
        "select count(*) from outbox where tenant_id = $1 and event_type = 'credit.grant_changed'",
    )
    .bind(t.id)
    .fetch_one(&app.db.pool)
    .await?;
    assert_eq!(events, 3, "expired, rolled over, renewed: one event each");
    assert_eq!(crm_balance(&app, &t).await, (130, 130));
    assert_balances_are_the_grants(&app, &t).await;
    // The renewed grant is in the fast path's mirror with the ledger's credits.
    let redis = redis_client(&app.state.settings.redis_url.0).await?;
    let mirror = CreditMirror::new(
        redis,
        StreamKeys::new(app.state.settings.namespace.clone(), 8).unwrap(),
    );
    assert_eq!(mirror.grants(t.id, "crm").await?, vec![(monthly, 130)]);
    Ok(())
}

#[tokio::test]
async fn a_threshold_crossed_by_concurrent_consumes_emits_one_event_per_crossing()
-> anyhow::Result<()> {
    let app = spawn_wrapper().await?;
    let (t, token) = tenant_with_crm(&app, "thresholds").await;
    grant(&app, &t, 1000, json!({})).await;
    let path = format!("/api/tenants/{}/credits/thresholds", t.id);
    for (kind, value) in [("percent_used", 50), ("balance_below", 100)] {
        app.send_ok(
            Method::POST,
            &path,
            &t.admin,
            json!({"scope": "app:crm", "kind": kind, "value": value}),
        )
        .await;
    }
    let (status, problem) = app
        .call(
            Method::POST,
            &path,
            Some(&t.admin),
            Some(json!({"scope": "app:crm", "kind": "percent_used", "value": 120})),
        )
        .await;
    assert_eq!(
        (status, &problem["field"]),
        (StatusCode::BAD_REQUEST, &json!("value"))
    );
    let reached = || async {
        let rows: Vec<(String,)> = sqlx::query_as(
            "select envelope from outbox where tenant_id = $1 and event_type = 'credit.threshold_reached' order by seq",
        )
        .bind(t.id)
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
        rows.into_iter()
            .map(|r| serde_json::from_str::<Value>(&r.0).unwrap()["payload"].clone())
            .collect::<Vec<_>>()
    };

    let burst = |prefix: &'static str| {
        futures_util::future::join_all(
            (0..64).map(|i| consume(&app, &token, &t, format!("{prefix}-{i}"))),
        )
    };
    burst("a").await;
    let events = reached().await;
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["percent_used", "balance_below"], "{events:?}");
    // 15 × 35 = 525 of 1,000 used: the consumption that crossed 50 % fired it.
    assert_eq!(
        events[0]["percentUsed"], 52,
        "fired at the crossing: {}",
        events[0]
    );
    assert!(events[1]["balance"].as_i64().unwrap() < 100);
    let audited: i64 = sqlx::query_scalar(
        "select count(*) from audit_log where tenant_id = $1 and action = 'credit.threshold_reached'",
    )
    .bind(t.id)
    .fetch_one(&app.db.pool)
    .await?;
    assert_eq!(audited, 2);

    // A top-up puts both back on the safe side (they re-arm silently); the next burst crosses
    // them again: one more event each.
    grant(&app, &t, 2000, json!({})).await;
    assert_eq!(reached().await.len(), 2, "re-arming emits nothing");
    burst("b").await;
    burst("c").await;
    let kinds: Vec<String> = reached()
        .await
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        [
            "percent_used",
            "balance_below",
            "percent_used",
            "balance_below"
        ]
    );
    Ok(())
}

/// The fast path and the ledger stay equal grant by grant while 8 consumers cross a grant
/// boundary and a grant expires under them; no consumption draws the grant after its expiry.
#[tokio::test]
async fn the_mirror_equals_the_ledger_after_consumes_across_a_boundary_and_an_expiry()
-> anyhow::Result<()> {
    // The job runs every 3 s; the grant expires 1 s past a tick, so for 2 s the mirror still
    // holds it and only the consume script's own clock check keeps it from being drawn.
    let app = spawn_wrapper_with(|s| s.credit_grants_secs = 3).await?;
    let (t, _) = tenant_with_crm(&app, "fastgrants").await;
    let small = grant(&app, &t, 100, json!({"priority": 1})).await;
    let mut expires_at = in_secs(3).with_nanosecond(0).unwrap();
    while expires_at.timestamp() % 3 != 1 {
        expires_at += TimeDelta::seconds(1);
    }
    let expiring = grant(
        &app,
        &t,
        1_000_000,
        json!({"priority": 10, "expiresAt": expires_at}),
    )
    .await;
    let lasting = grant(&app, &t, 1_000_000, json!({})).await;
    provision_mirror(&app).await?;
    let redis = redis_client(&app.state.settings.redis_url.0).await?;
    let mirror = Arc::new(CreditMirror::new(
        redis,
        StreamKeys::new(app.state.settings.namespace.clone(), 8).unwrap(),
    ));
    assert_eq!(
        mirror.grants(t.id, "crm").await?.len(),
        3,
        "mirrored as granted"
    );
    // A grant made now reaches the existing mirror at once (and leaves it when voided).
    let extra = grant(&app, &t, 7, json!({"priority": 99})).await;
    assert!(mirror.grants(t.id, "crm").await?.contains(&(extra, 7)));
    app.send_ok(
        Method::POST,
        &format!("/api/admin/credits/grants/{extra}/void"),
        &app.root,
        json!({}),
    )
    .await;
    assert_eq!(mirror.grants(t.id, "crm").await?.len(), 3);

    let until = expires_at + TimeDelta::milliseconds(3500);
    let receipts = futures_util::future::join_all((0..8).map(|worker| {
        let (mirror, tenant) = (mirror.clone(), t.id);
        async move {
            let mut receipts = Vec::new();
            let mut pace = tokio::time::interval(Duration::from_millis(40));
            for i in 0.. {
                pace.tick().await;
                if Utc::now() > until {
                    break;
                }
                match mirror
                    .consume(tenant, "crm", OP, &format!("w{worker}-{i}"), 1)
                    .await
                    .unwrap()
                {
                    FastOutcome::Charged(r) => receipts.push(r),
                    other => panic!("{other:?}"),
                }
            }
            receipts
        }
    }))
    .await
    .concat();
    let n = receipts.len() as i64;
    assert!(n > 16, "{n} consumptions");
    // Nothing drew the expiring grant at or after its expiry (the entry id is Redis's clock).
    for r in &receipts {
        let at_ms: i64 = r.entry.split('-').next().unwrap().parse()?;
        if r.drawn().iter().any(|(g, _)| *g == expiring) {
            assert!(at_ms < expires_at.timestamp_millis(), "{r:?}");
        }
    }
    assert!(
        receipts.iter().any(|r| r.drawn().len() == 2),
        "one consumption crossed from the small grant to the next"
    );
    eventually(Duration::from_secs(30), || async {
        consumptions(&app, &t).await == (n, n)
    })
    .await?;
    eventually(Duration::from_secs(20), || async {
        grants(&app, &t).await[&expiring].1 == "expired"
    })
    .await?;
    let ledger = grants(&app, &t).await;
    assert_eq!(ledger[&small].0, 0);
    assert_eq!(
        ledger[&expiring].0, 0,
        "expired, its consumptions all ingested"
    );
    let mirrored: HashMap<Uuid, i64> = mirror.grants(t.id, "crm").await?.into_iter().collect();
    assert_eq!(
        mirrored.get(&expiring),
        None,
        "the expired grant left the mirror"
    );
    assert_eq!(mirrored[&small], 0);
    assert_eq!(mirrored[&lasting], ledger[&lasting].0, "grant by grant");
    assert_eq!(
        mirror.balance(t.id, "crm").await?,
        Some(crm_balance(&app, &t).await.0),
        "balance"
    );
    // Every credit of the expiring grant was either drawn or expired, once.
    let (drawn, expired): (i64, i64) = sqlx::query_as(
        "select
           coalesce((select sum((d->>'amount')::bigint) from credit_ledger l, jsonb_array_elements(l.draws) d
                     where l.tenant_id = $1 and l.kind = 'consumption' and d->>'grantId' = $2::text), 0)::bigint,
           coalesce((select sum(amount) from credit_ledger where grant_id = $2 and kind = 'expiry'), 0)::bigint",
    )
    .bind(t.id)
    .bind(expiring)
    .fetch_one(&app.db.pool)
    .await?;
    assert_eq!(drawn + expired, 1_000_000);
    assert!(drawn > 0 && expired > 0, "drawn {drawn}, expired {expired}");
    assert_balances_are_the_grants(&app, &t).await;
    Ok(())
}

/// Offline consumptions are charged at the wrapper when replayed, from the grants in effect
/// then: a grant that expired while the wrapper was away is not drawn — the replay draws the
/// next grant, or is refused when none covers it, and the ledger never goes below its grants.
#[tokio::test]
async fn an_offline_replay_cannot_spend_a_grant_that_expired_while_the_wrapper_was_away()
-> anyhow::Result<()> {
    use sync_sdk::{
        credits::offline::{Consumed, CreditClient},
        store::postgres::PostgresStore,
        wrapper_client::{WrapperClient, WrapperConfig},
    };
    let mut app = spawn_wrapper_with(|s| s.credit_grants_secs = 1).await?;
    let (t, _) = tenant_with_crm(&app, "offgrants").await;
    let expires_at = in_secs(2);
    let expiring = grant(
        &app,
        &t,
        100,
        json!({"priority": 1, "expiresAt": expires_at}),
    )
    .await;
    let lasting = grant(&app, &t, 40, json!({})).await;
    let db = sync_testkit::fresh_database().await?;
    let queue = Arc::new(PostgresStore::new(db.pool.clone()));
    queue.init().await?;
    let wrapper = Arc::new(WrapperClient::new(WrapperConfig {
        base_url: app.url.clone(),
        client_id: "crm".into(),
        client_secret: super::credits::SECRET.into(),
        page_size: 1000,
        timeout: Duration::from_secs(5),
    }));
    let credits = CreditClient::new(wrapper, queue.clone(), 100).with_manifest(&crm::manifest());

    app.stop();
    for op in ["away-1", "away-2"] {
        assert_eq!(
            credits.consume(t.id, "crm", OP, op, 1).await?,
            Consumed::Queued
        );
    }
    // The grant's expiry passes while the wrapper is away.
    eventually(Duration::from_secs(10), || async {
        Utc::now() > expires_at
    })
    .await?;
    app.restart().await?;
    eventually(Duration::from_secs(20), || async {
        grants(&app, &t).await[&expiring].1 == "expired"
    })
    .await?;
    let report = credits.replay().await?;
    assert_eq!((report.charged, report.refused.len()), (1, 1), "{report:?}");
    let draws = draws_in_order(&app, &t).await;
    assert_eq!(
        draws,
        vec![vec![(lasting, 35)]],
        "charged to the grant in effect"
    );
    let now = grants(&app, &t).await;
    assert_eq!(now[&expiring], (0, "expired".to_owned()));
    assert_eq!(now[&lasting].0, 5);
    assert_balances_are_the_grants(&app, &t).await;
    Ok(())
}

/// An operation a tenant's config makes free is recorded (usage reports count it) and draws no
/// grant, on the direct path.
#[tokio::test]
async fn a_free_operation_is_recorded_and_draws_nothing() -> anyhow::Result<()> {
    let app = spawn_wrapper().await?;
    let (t, token) = tenant_with_crm(&app, "free").await;
    grant(&app, &t, 100, json!({})).await;
    app.send_ok(
        Method::PUT,
        &format!("/api/tenants/{}/credit-configs", t.id),
        &app.root,
        json!({"application": "crm", "operationCode": OP, "cost": 0}),
    )
    .await;
    let (status, entry) = consume(&app, &token, &t, "free-1".into()).await;
    assert_eq!(status, StatusCode::OK, "{entry}");
    assert_eq!((&entry["amount"], &entry["draws"]), (&json!(0), &json!([])));
    assert_eq!(crm_balance(&app, &t).await, (100, 100));
    assert_balances_are_the_grants(&app, &t).await;
    Ok(())
}

/// A fast-path consumption the ledger refuses when it first reads it (no grant covers it yet)
/// stays pending and is tried again: once a grant arrives it is recorded, once. Before, such an
/// entry was never read again (the group only read new entries).
#[tokio::test]
async fn a_fast_path_entry_the_ledger_refused_is_ingested_once_it_can_be() -> anyhow::Result<()> {
    use fred::interfaces::StreamsInterface;
    let app = spawn_wrapper().await?;
    let (t, _) = tenant_with_crm(&app, "late").await;
    let redis = redis_client(&app.state.settings.redis_url.0).await?;
    let keys = StreamKeys::new(app.state.settings.namespace.clone(), 8).unwrap();
    let stream = keys.app_credit_stream(keys.partition_of(t.id), "crm");
    // As the consume script writes it, for a mirror that had credits the ledger has not.
    let _: String = redis
        .xadd(
            &stream,
            false,
            None::<()>,
            "*",
            vec![
                ("operationId", "late-1".to_owned()),
                ("tenantId", t.id.to_string()),
                ("application", "crm".to_owned()),
                ("operationCode", OP.to_owned()),
                ("quantity", "1".to_owned()),
                ("amount", "35".to_owned()),
                ("balanceAfter", "0".to_owned()),
                ("userId", String::new()),
                ("draws", String::new()),
            ],
        )
        .await?;
    let pending = || async {
        let summary: fred::types::Value = redis
            .xpending(&stream, wrapper::credit_ingest::GROUP, ())
            .await
            .unwrap_or(fred::types::Value::Null);
        summary
            .into_array()
            .first()
            .and_then(|v| v.as_i64())
            .unwrap_or(-1)
    };
    eventually(Duration::from_secs(20), || async { pending().await == 1 }).await?;
    assert_eq!(
        consumptions(&app, &t).await,
        (0, 0),
        "refused: nothing charged"
    );
    // Shown while it waits, with the ledger's reason: to the platform and to the tenant.
    let waiting = |token: String, path: String| {
        let app = &app;
        async move { app.get_ok(&path, &token).await["creditsWaiting"].clone() }
    };
    let tenant_path = format!("/api/tenants/{}/sync-health", t.id);
    let mine = waiting(t.admin.clone(), tenant_path.clone()).await;
    assert_eq!(mine.as_array().map(Vec::len), Some(1), "{mine}");
    assert_eq!(
        (
            &mine[0]["operationId"],
            &mine[0]["amount"],
            &mine[0]["application"]
        ),
        (&json!("late-1"), &json!(35), &json!("crm"))
    );
    assert!(
        mine[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("late-1")),
        "{mine}"
    );
    let all = waiting(app.root.clone(), "/api/admin/sync-health".into()).await;
    assert_eq!(all.as_array().map(Vec::len), Some(1), "{all}");
    let other = app.create_tenant("other").await;
    let theirs = waiting(
        other.admin.clone(),
        format!("/api/tenants/{}/sync-health", other.id),
    )
    .await;
    assert_eq!(theirs, json!([]), "another tenant sees none of it");
    let paid = grant(&app, &t, 100, json!({})).await;
    eventually(Duration::from_secs(30), || async {
        consumptions(&app, &t).await == (1, 1) && pending().await == 0
    })
    .await?;
    assert_eq!(
        waiting(t.admin.clone(), tenant_path).await,
        json!([]),
        "charged: gone"
    );
    assert_eq!(draws_in_order(&app, &t).await, vec![vec![(paid, 35)]]);
    assert_eq!(crm_balance(&app, &t).await, (65, 65));
    Ok(())
}
