//! Least privilege inside the hub (issue 31): no app acts for another app, another tenant or
//! the wrapper, and nothing read from Redis is obeyed unproven. Every test runs on the real
//! servers and checks both the refusal and that nothing changed.

use std::time::Duration;

use fred::prelude::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sync_sdk::contract::{self as sync_contract, dlq};
use tsync_e2e::{suite::Suite, wrapper_app::*, *};
use uuid::Uuid;

use crate::credits::{register_crm, service_token};

/// A Redis client as any holder of the apps' Redis URL has one.
async fn raw_redis() -> anyhow::Result<Client> {
    wrapper::startup::connect_redis(&redis_url()).await
}

/// The dead letters of `app` whose error contains `needle`.
async fn letters(
    redis: &Client,
    keys: &sync_contract::StreamKeys,
    app: &str,
    needle: &str,
) -> Vec<dlq::DeadLetter> {
    dlq::list(redis, keys, app, None)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|(_, l)| l)
        .filter(|l| l.error.contains(needle))
        .collect()
}

#[tokio::test]
async fn forged_purge_erasure_and_credit_entries_on_the_streams_change_nothing()
-> anyhow::Result<()> {
    let suite = Suite::start(|_| {}).await?;
    let w = &suite.wrapper;
    let (acme, edge) = suite.tenant_with_a_crm_account("acme").await?;
    // A tenant without the CRM: a forged consumption for it must charge nothing.
    let bare_id = w.create_tenant_with("bare", &[]).await.id;
    let ledger_before: i64 = w.count("credit_ledger").await;

    let keys = w.state.stream_keys.clone();
    let redis = raw_redis().await?;
    let forged = |kind: &str, user: Option<Uuid>| {
        let mut fields = vec![
            ("operationId", Uuid::now_v7().to_string()),
            ("kind", kind.to_owned()),
            ("tenantId", acme.id.to_string()),
        ];
        if let Some(u) = user {
            fields.push(("userId", u.to_string()));
        }
        fields
    };
    let _: String = redis
        .xadd(
            keys.lifecycle(),
            false,
            None,
            "*",
            forged("purge_tenant", None),
        )
        .await?;
    let _: String = redis
        .xadd(
            keys.lifecycle(),
            false,
            None,
            "*",
            forged("erase_user", Some(acme.admin_id)),
        )
        .await?;
    let credit = vec![
        ("tenantId", bare_id.to_string()),
        ("application", "crm".to_owned()),
        ("operationId", Uuid::now_v7().to_string()),
        ("operationCode", "crm.accounts.create".to_owned()),
        ("amount", "35".to_owned()),
    ];
    let _: String = redis
        .xadd(
            keys.credit_stream(keys.partition_of(bare_id)),
            false,
            None,
            "*",
            credit,
        )
        .await?;

    // An entry on the CRM's own stream that names another app is a forgery too.
    let _: String = redis
        .xadd(
            keys.app_credit_stream(keys.partition_of(acme.id), "crm"),
            false,
            None,
            "*",
            vec![
                ("tenantId", acme.id.to_string()),
                ("application", "projects".to_owned()),
                ("operationId", Uuid::now_v7().to_string()),
                ("operationCode", "projects.create".to_owned()),
                ("amount", "20".to_owned()),
            ],
        )
        .await?;

    // Each app refuses both commands and parks them in its dead letters (visible in sync
    // health); the wrapper parks the credit entry.
    for app in ["crm", "hrms", "projects"] {
        eventually(Duration::from_secs(20), || async {
            letters(&redis, &keys, app, "unproven lifecycle command")
                .await
                .len()
                == 2
        })
        .await
        .map_err(|e| anyhow::anyhow!("{app}: {e}"))?;
    }
    eventually(Duration::from_secs(20), || async {
        !letters(&redis, &keys, "ledger", "feature").await.is_empty()
            && !letters(&redis, &keys, "ledger", "names another application")
                .await
                .is_empty()
    })
    .await?;
    let health = w.get_ok("/api/admin/sync-health", &w.root).await;
    for app in health["apps"].as_array().into_iter().flatten() {
        assert!(
            app["deadLetters"].as_i64() >= Some(2),
            "sync health shows the refused commands: {app}"
        );
    }

    // Nothing changed: the account and its owner are in the CRM, the ledger is as it was.
    let (status, list) = edge
        .send(Method::GET, "/crm/accounts", &acme.admin, None)
        .await?;
    assert_eq!(status, StatusCode::OK);
    let text = list.to_string();
    assert!(text.contains("Initech"), "{list}");
    assert!(text.contains("admin@acme.test"), "not erased: {list}");
    assert_eq!(w.count("credit_ledger").await, ledger_before);
    let bare_ledger: i64 =
        sqlx::query_scalar("select count(*) from credit_ledger where tenant_id = $1")
            .bind(bare_id)
            .fetch_one(&w.db.pool)
            .await?;
    assert_eq!(bare_ledger, 0);

    // A real erasure still goes through (the apps ask, the wrapper vouches).
    w.erase_a_new_user(&acme).await?;
    redis.quit().await?;
    Ok(())
}

/// Create service client `name` and register a manifest requiring `feature` with one paid
/// operation `<name>.op` at `cost`; its token.
async fn app_with(w: &TestApp, name: &str, feature: &str, cost: i64) -> String {
    let token = service_token(w, name).await;
    let manifest = sync_contract::AppManifest::new(name, &name.to_uppercase())
        .requiring_feature(feature)
        .with_operation(&format!("{name}.op"), cost);
    w.send_ok(
        Method::PUT,
        &format!("/api/apps/{name}"),
        &token,
        serde_json::to_value(manifest).unwrap(),
    )
    .await;
    token
}

#[tokio::test]
async fn an_app_reads_and_spends_only_its_own_credits_and_only_for_tenants_with_its_feature()
-> anyhow::Result<()> {
    let w = spawn_wrapper().await?;
    let acme = w.create_tenant("acme").await;
    let crm = service_token(&w, "crm").await;
    register_crm(&w, &crm).await;
    let tickets = app_with(&w, "tickets", "crm", 5).await;
    w.fund_app(&acme, "crm", 500).await;
    w.fund_app(&acme, "tickets", 500).await;
    // One operation id, two apps: two operations, each charged.
    let consume = |app: &str, code: &str, user: Option<Uuid>| {
        json!({"tenantId": acme.id, "application": app, "operationCode": code,
               "operationId": "shared-key-1", "userId": user})
    };
    let crm_entry = w
        .send_ok(
            Method::POST,
            "/api/credits/consume",
            &crm,
            consume("crm", "crm.accounts.create", Some(acme.admin_id)),
        )
        .await;
    let tickets_entry = w
        .send_ok(
            Method::POST,
            "/api/credits/consume",
            &tickets,
            consume("tickets", "tickets.op", None),
        )
        .await;
    assert_ne!(
        crm_entry["id"], tickets_entry["id"],
        "the other app's entry"
    );
    assert_eq!(tickets_entry["application"], "tickets");
    assert_eq!(tickets_entry["amount"], 5);

    // Each app sees its own balance, grants and ledger only.
    let base = format!("tenantId={}", acme.id);
    let balance = w
        .get_ok(&format!("/api/credits/balance?{base}"), &tickets)
        .await;
    let scopes: Vec<&str> = balance["balances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["scope"].as_str())
        .collect();
    assert_eq!(scopes, ["app:tickets"], "{balance}");
    let ledger = w
        .get_ok(&format!("/api/credits/ledger?{base}"), &tickets)
        .await;
    let items = ledger["items"].as_array().cloned().unwrap_or_default();
    assert!(!items.is_empty());
    assert!(
        items.iter().all(|e| e["scope"] == "app:tickets"),
        "{ledger}"
    );
    assert!(!ledger.to_string().contains(&acme.admin_id.to_string()));
    let grants = w
        .get_ok(&format!("/api/credits/grants?{base}"), &tickets)
        .await;
    assert!(
        grants
            .as_array()
            .into_iter()
            .flatten()
            .all(|g| g["scope"] == "app:tickets")
    );
    let (status, _) = w
        .call(
            Method::GET,
            &format!("/api/credits/grants?{base}&scope=app:crm"),
            Some(&tickets),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A tenant without the feature: nothing read, nothing charged, the feature named.
    let bare_id = w.create_tenant_with("bare", &["hrms"]).await.id;
    let ledger_rows = w.count("credit_ledger").await;
    for (method, path, body) in [
        (
            Method::GET,
            format!("/api/credits/balance?tenantId={bare_id}"),
            None,
        ),
        (
            Method::GET,
            format!("/api/credits/ledger?tenantId={bare_id}"),
            None,
        ),
        (Method::GET, format!("/api/sync/tenant/{bare_id}"), None),
        (
            Method::POST,
            "/api/credits/consume".to_owned(),
            Some(json!({"tenantId": bare_id, "application": "crm",
                        "operationCode": "crm.accounts.create", "operationId": "x-1"})),
        ),
    ] {
        let (status, problem) = w.call(method, &path, Some(&crm), body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {problem}");
        assert_eq!(problem["feature"], "crm", "{path}: {problem}");
    }
    assert_eq!(w.count("credit_ledger").await, ledger_rows);

    // A member sees only their own id in the ledger; the admin sees every user's.
    let (_, member) = w.create_member(&acme, "member@acme.test").await;
    let as_member = w
        .get_ok(
            &format!("/api/credits/ledger?{base}&application=crm"),
            &member,
        )
        .await;
    assert!(
        !as_member.to_string().contains(&acme.admin_id.to_string()),
        "{as_member}"
    );
    let as_admin = w
        .get_ok(
            &format!("/api/credits/ledger?{base}&application=crm"),
            &acme.admin,
        )
        .await;
    assert!(as_admin.to_string().contains(&acme.admin_id.to_string()));
    Ok(())
}

#[tokio::test]
async fn app_reports_and_manifests_cannot_pass_for_the_wrapper() -> anyhow::Result<()> {
    let w = spawn_wrapper().await?;
    let acme = w.create_tenant("acme").await;
    let crm = service_token(&w, "crm").await;
    register_crm(&w, &crm).await;
    let audit_rows = w.count("audit_log").await;
    // A report that looks like a wrapper fact lands in the app's namespace.
    let (status, _) = w
        .call(
            Method::POST,
            "/api/audit/events",
            Some(&crm),
            Some(json!({"tenant": "acme", "action": "domain_verification",
                        "actorId": acme.admin_id, "details": {"reason": "fake"}})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let base = format!("/api/tenants/{}/audit", acme.id);
    let facts = w
        .get_ok(&format!("{base}?action=domain_verification"), &acme.admin)
        .await;
    assert_eq!(facts["items"], json!([]), "read as a wrapper fact: {facts}");
    let reported = w
        .get_ok(
            &format!("{base}?action=crm:domain_verification"),
            &acme.admin,
        )
        .await;
    let entry = &reported["items"][0];
    assert_eq!(entry["reportedBy"], "crm");
    assert!(entry["actorId"].is_null(), "{entry}");
    // Bad reports are refused, naming the field; nothing is written.
    let audit_after_good = w.count("audit_log").await;
    assert_eq!(audit_after_good, audit_rows + 1);
    for (body, field) in [
        (
            json!({"tenant": "acme", "action": "Domain Verification!"}),
            "action",
        ),
        (json!({"tenant": "acme", "action": "a:b"}), "action"),
        (
            json!({"tenant": "acme", "action": "x", "details": {"blob": "y".repeat(5000)}}),
            "details",
        ),
    ] {
        let (status, problem) = w
            .call(Method::POST, "/api/audit/events", Some(&crm), Some(body))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
        assert_eq!(problem["field"], field, "{problem}");
    }
    assert_eq!(w.count("audit_log").await, audit_after_good);

    // No manifest may claim a path the wrapper or the edge serves.
    let tickets = service_token(&w, "tickets").await;
    let apps_before = w.count("applications").await;
    for path in ["/admin/", "/api/", "/auth/", "/health/", "/metrics/"] {
        let manifest = sync_contract::AppManifest::new("tickets", "Tickets").served_at(path);
        let (status, problem) = w
            .call(
                Method::PUT,
                "/api/apps/tickets",
                Some(&tickets),
                Some(serde_json::to_value(manifest)?),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {problem}");
        assert_eq!(problem["field"], "publicPath", "{problem}");
    }
    assert_eq!(w.count("applications").await, apps_before);
    // Once registered, an app cannot drop (or change) the feature that gates it; a platform
    // admin can.
    let mut open_to_all = crm::manifest();
    open_to_all.feature = None;
    let (status, _) = w
        .call(
            Method::PUT,
            "/api/apps/crm",
            Some(&crm),
            Some(serde_json::to_value(&open_to_all)?),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let listed = w.get_ok("/api/apps", &w.root).await;
    assert!(
        listed.to_string().contains("\"feature\":\"crm\""),
        "{listed}"
    );
    let (status, _) = w
        .call(
            Method::PUT,
            "/api/apps/crm",
            Some(&w.root),
            Some(serde_json::to_value(&open_to_all)?),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // A webhook URL at an IPv6 literal that carries an inside IPv4 address is no public address.
    let hooks = format!("/api/tenants/{}/webhooks", acme.id);
    for url in [
        "https://[::127.0.0.1]/hook",
        "https://[64:ff9b::a9fe:a9fe]/latest/meta-data",
        "https://[2002:a00:1::1]/hook",
        "https://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/hook",
        "https://[fec0::1]/hook",
    ] {
        let (status, problem) = w
            .call(
                Method::POST,
                &hooks,
                Some(&acme.admin),
                Some(json!({"url": url, "eventTypes": ["user.created"]})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {problem}");
        assert_eq!(problem["field"], "url");
    }
    assert_eq!(w.count("webhook_endpoints").await, 0);
    Ok(())
}

#[tokio::test]
async fn an_app_refuses_a_tenant_whose_plan_lacks_its_feature_and_one_that_loses_it()
-> anyhow::Result<()> {
    let suite = Suite::start(|_| {}).await?;
    let w = &suite.wrapper;
    let acme = w.create_tenant("acme").await;
    let edge = suite.edge("acme");
    for path in ["/crm/accounts", "/hrms/employees"] {
        let (status, body) = edge.send(Method::GET, path, &acme.admin, None).await?;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    // The plan loses the CRM: the CRM refuses as soon as the change is applied, naming it.
    w.send_ok(
        Method::PATCH,
        &format!("/api/tenants/{}", acme.id),
        &w.root,
        json!({"features": ["hrms"]}),
    )
    .await;
    eventually(Duration::from_secs(5), || async {
        edge.send(Method::GET, "/crm/accounts", &acme.admin, None)
            .await
            .is_ok_and(|(s, p)| s == StatusCode::FORBIDDEN && p["field"] == "feature")
    })
    .await?;
    let (_, problem) = edge
        .send(Method::GET, "/crm/accounts", &acme.admin, None)
        .await?;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("crm"),
        "{problem}"
    );
    let (status, page) = edge.page("/crm/", &acme.admin).await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(page.contains("does not include crm"), "{page}");
    let (status, _) = edge
        .send(Method::GET, "/hrms/employees", &acme.admin, None)
        .await?;
    assert_eq!(status, StatusCode::OK, "the HRMS still serves it");

    // A tenant that never had it is never loaded by the CRM.
    let bare = w.create_tenant_with("bare", &["hrms"]).await;
    let (status, problem) = suite
        .edge("bare")
        .send(Method::GET, "/crm/accounts", &bare.admin, None)
        .await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    assert_eq!(problem["field"], "feature");
    let exports: i64 = sqlx::query_scalar(
        "select count(*) from audit_log where tenant_id = $1 and action = 'snapshot.export'
           and target = 'crm'",
    )
    .bind(bare.id)
    .fetch_one(&w.db.pool)
    .await?;
    assert_eq!(exports, 0, "the CRM loaded a tenant without its feature");
    Ok(())
}

#[tokio::test]
async fn per_tenant_limits_hold_under_concurrent_requests_and_a_repeated_export_is_the_pending_one()
-> anyhow::Result<()> {
    let w = spawn_wrapper_with(|s| {
        s.max_thresholds_per_balance = 3;
        s.max_export_parts = 2;
    })
    .await?;
    let acme = w.create_tenant("acme").await;
    let path = format!("/api/tenants/{}/credits/thresholds", acme.id);
    let tries = (1..=12).map(|i| {
        w.call(
            Method::POST,
            &path,
            Some(&acme.admin),
            Some(json!({"scope": "tenant", "kind": "balance_below", "value": i * 10})),
        )
    });
    let answers = futures_join_all(tries).await;
    let created = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    assert_eq!(created, 3, "{answers:?}");
    for (status, problem) in answers.iter().filter(|(s, _)| *s != StatusCode::CREATED) {
        assert_eq!(*status, StatusCode::CONFLICT, "{problem}");
        assert_eq!(problem["limit"], "WRAPPER_MAX_THRESHOLDS_PER_BALANCE");
    }
    let rows: i64 =
        sqlx::query_scalar("select count(*) from credit_thresholds where tenant_id = $1")
            .bind(acme.id)
            .fetch_one(&w.db.pool)
            .await?;
    assert_eq!(rows, 3);
    // Another balance has its own three.
    let (status, _) = w
        .call(
            Method::POST,
            &path,
            Some(&acme.admin),
            Some(json!({"scope": "app:crm", "kind": "balance_below", "value": 10})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    // Exports: a repeat while one is pending answers the pending one and starts nothing.
    let export = format!("/api/tenants/{}/export", acme.id);
    let first =
        futures_join_all((0..5).map(|_| w.call(Method::POST, &export, Some(&acme.admin), None)))
            .await;
    let ids: std::collections::HashSet<String> = first
        .iter()
        .map(|(s, op)| {
            assert_eq!(*s, StatusCode::ACCEPTED, "{op}");
            op["id"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{first:?}");
    let pending: i64 = sqlx::query_scalar(
        "select count(*) from lifecycle_operations where tenant_id = $1 and kind = 'export_tenant'",
    )
    .bind(acme.id)
    .fetch_one(&w.db.pool)
    .await?;
    assert_eq!(pending, 1);

    // An app uploads at most WRAPPER_MAX_EXPORT_PARTS parts to one export (a part sent again
    // replaces itself and does not count twice).
    let crm = service_token(&w, "crm").await;
    let op = ids.iter().next().cloned().unwrap_or_default();
    let part = |chunk: u32| {
        w.http
            .put(format!(
                "{}/api/sync/operations/{op}/parts/accounts/{chunk}",
                w.url
            ))
            .bearer_auth(&crm)
            .header("content-type", "text/plain")
            .body("{\"name\":\"Initech\"}\n")
            .send()
    };
    for chunk in [0, 1, 1] {
        assert_eq!(part(chunk).await?.status(), StatusCode::NO_CONTENT);
    }
    let refused = part(2).await?;
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    let problem: Value = refused.json().await?;
    assert_eq!(problem["limit"], "WRAPPER_MAX_EXPORT_PARTS");
    let parts: i64 = sqlx::query_scalar("select count(*) from export_parts")
        .fetch_one(&w.db.pool)
        .await?;
    assert_eq!(parts, 2);
    Ok(())
}

/// Every future of `futures`, run concurrently, in order.
async fn futures_join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut out = Vec::with_capacity(set.len());
    // Polled together: each is a request, and they overlap on the server.
    let joined = tokio_join_vec(set).await;
    out.extend(joined);
    out
}

async fn tokio_join_vec<F: Future + Unpin>(mut futures: Vec<F>) -> Vec<F::Output> {
    let mut results: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futures.iter_mut().enumerate() {
            if results[i].is_none() {
                match std::pin::Pin::new(f).poll(cx) {
                    std::task::Poll::Ready(v) => results[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    results.into_iter().flatten().collect()
}

#[tokio::test]
async fn two_hundred_concurrent_sign_ins_to_one_account_get_only_documented_answers()
-> anyhow::Result<()> {
    // Two hashing slots and a short wait: the bound must show as 503 with Retry-After. The
    // throttle's limits are raised so every attempt reaches the hasher (all 200 still lock the
    // same account's and address's rows, the race that deadlocked).
    let w = spawn_wrapper_with(|s| {
        s.password_hash_concurrency = 2;
        s.password_hash_wait_ms = 50;
        s.sign_in_account_failures = 10_000;
        s.sign_in_source_failures = 10_000;
    })
    .await?;
    w.create_tenant("acme").await;
    let url = format!("{}/auth/login", w.url);
    let attempts = (0..200).map(|i| {
        let http = w.http.clone();
        let url = url.clone();
        async move {
            let password = if i % 2 == 0 {
                PASSWORD
            } else {
                "wrong-password-1"
            };
            let resp = http
                .post(&url)
                .json(&json!({"email": "admin@acme.test", "password": password,
                              "tenant": "acme"}))
                .send()
                .await
                .expect("the wrapper answers");
            let retry_after = resp.headers().contains_key("retry-after");
            let status = resp.status();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            (status, retry_after, body)
        }
    });
    let answers = futures_join_all(attempts.map(|f| Box::pin(tokio::spawn(f)))).await;
    let mut counts = std::collections::BTreeMap::new();
    for answer in answers {
        let (status, retry_after, body) = answer?;
        *counts.entry(status.as_u16()).or_insert(0) += 1;
        assert!(
            [200, 401, 429, 503].contains(&status.as_u16()),
            "undocumented answer {status}: {body}"
        );
        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
            assert!(retry_after, "{status} without Retry-After: {body}");
        }
    }
    eprintln!("200 concurrent sign-ins: {counts:?}");
    assert!(
        counts.contains_key(&503),
        "the bound never showed: {counts:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_redrive_republishes_the_wrappers_own_copy_never_what_an_app_wrote_in_its_dead_letters()
-> anyhow::Result<()> {
    let w = spawn_wrapper().await?;
    let crm = service_token(&w, "crm").await;
    register_crm(&w, &crm).await;
    let acme = w.create_tenant("acme").await;
    let keys = w.state.stream_keys.clone();
    let redis = raw_redis().await?;
    // A genuine event, as the relay published it.
    let (event_id, envelope): (Uuid, String) = sqlx::query_as(
        "select event_id, envelope from outbox where tenant_id = $1 and event_type = 'user.created'",
    )
    .bind(acme.id)
    .fetch_one(&w.db.pool)
    .await?;
    let stream = keys.events(keys.partition_of(acme.id));
    let as_fields = |envelope: &str| -> std::collections::HashMap<String, String> {
        let parsed = sync_contract::Envelope::from_json_str(envelope).expect("an envelope");
        parsed
            .to_stream_fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.replace("First Admin", "Mallory Admin")))
            .collect()
    };
    // The app's dead letters hold it tampered with, and an event the wrapper never wrote.
    let tampered = as_fields(&envelope);
    let forged_envelope = envelope.replace(&event_id.to_string(), &Uuid::now_v7().to_string());
    let forged = as_fields(&forged_envelope);
    for fields in [&tampered, &forged] {
        let letter = dlq::DeadLetter::new(&stream, "1-0", fields, "handler failed".into(), 3);
        dlq::push(&redis, &keys, "crm", &letter).await?;
    }
    let before: u64 = redis.xlen(&stream).await?;
    let answer = w
        .send_ok(
            Method::POST,
            "/api/admin/sync-health/crm/dead-letters/redrive",
            &w.root,
            json!({}),
        )
        .await;
    assert_eq!(answer, json!({"redriven": 1, "refused": 1}));
    let entries: Vec<(String, std::collections::HashMap<String, String>)> =
        redis.xrange(&stream, "-", "+", None).await?;
    assert_eq!(entries.len() as u64, before + 1);
    let republished = &entries.last().expect("an entry").1;
    assert_eq!(
        republished.get(sync_contract::FIELD_ENVELOPE),
        Some(&envelope),
        "the wrapper's own copy, byte for byte"
    );
    let text = format!("{entries:?}");
    assert!(!text.contains("Mallory"), "the app's version was published");
    // The forged one stays in the dead letters for a person to look at.
    let left = dlq::list(&redis, &keys, "crm", None).await?;
    assert_eq!(left.len(), 1);
    redis.quit().await?;
    Ok(())
}

#[tokio::test]
async fn service_clients_come_from_the_configuration_at_start_idempotently() -> anyhow::Result<()> {
    let secret_file = std::env::temp_dir().join(format!("tsync-hrms-{}", Uuid::now_v7()));
    std::fs::write(&secret_file, "hrms-secret-from-a-mounted-file-0123\n")?;
    let clients = format!(
        "crm=crm-secret-from-the-environment-0123,hrms=@{}",
        secret_file.display()
    );
    let parse = |text: &str| -> Vec<wrapper::config::NamedSecret> {
        text.split(',')
            .map(|c| c.parse().expect("a client"))
            .collect()
    };
    let mut w = spawn_wrapper_with(|s| s.bootstrap_service_clients = parse(&clients)).await?;
    async fn token(w: &TestApp, app: &str, secret: &str) -> StatusCode {
        w.call(
            Method::POST,
            "/auth/service-token",
            None,
            Some(json!({"clientId": app, "clientSecret": secret})),
        )
        .await
        .0
    }
    assert_eq!(
        token(&w, "crm", "crm-secret-from-the-environment-0123").await,
        StatusCode::OK
    );
    assert_eq!(
        token(&w, "hrms", "hrms-secret-from-a-mounted-file-0123").await,
        StatusCode::OK
    );
    let pool = w.db.pool.clone();
    let hash_of = |app: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "select secret_hash from service_clients where client_id = $1",
            )
            .bind(app)
            .fetch_one(&pool)
            .await
            .expect("a client")
        }
    };
    let before = hash_of("crm").await;
    // Started again with the same configuration: nothing rewritten.
    w.restart().await?;
    assert_eq!(hash_of("crm").await, before);
    // With a new secret: replaced, the old one refused.
    let rotated = "crm=crm-secret-rotated-by-the-operator-9".to_owned();
    w.restart_with(|s| s.bootstrap_service_clients = parse(&rotated))
        .await?;
    assert_ne!(hash_of("crm").await, before);
    assert_eq!(
        token(&w, "crm", "crm-secret-from-the-environment-0123").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        token(&w, "crm", "crm-secret-rotated-by-the-operator-9").await,
        StatusCode::OK
    );
    // A bad entry stops the start with the reason.
    let settings = {
        let mut s = w.settings_for_test();
        s.bootstrap_service_clients = parse("crm=too-short-a-secret-x");
        s
    };
    let refused = wrapper::startup::Application::build(settings).await;
    assert!(
        refused
            .err()
            .is_some_and(|e| format!("{e:#}").contains("24 characters")),
        "a short service secret was accepted"
    );
    std::fs::remove_file(secret_file)?;
    Ok(())
}

#[tokio::test]
async fn a_first_tenant_comes_from_the_configuration_once() -> anyhow::Result<()> {
    let spec = json!({"name": "Acme", "subdomain": "acme", "plan": "pro",
                      "features": ["crm", "hrms"],
                      "admin": {"email": "admin@acme.test", "fullName": "First Admin",
                                "password": PASSWORD}})
    .to_string();
    let mut w = spawn_wrapper_with(|s| {
        s.bootstrap_tenant = Some(wrapper::config::Secret(spec.clone()));
    })
    .await?;
    let token = w.login("admin@acme.test", PASSWORD, Some("acme")).await?;
    let tenants = w.get_ok("/api/tenants", &w.root).await;
    assert_eq!(
        tenants["items"].as_array().map(Vec::len),
        Some(1),
        "{tenants}"
    );
    assert!(!token.is_empty());
    // Started again: the tenant is there already, nothing is added or changed.
    w.restart().await?;
    assert_eq!(w.count("tenants").await, 1);
    assert_eq!(
        w.count("users").await,
        2,
        "the platform admin and the tenant's admin"
    );
    // A spec that is not a tenant stops the start with the reason.
    let mut settings = w.settings_for_test();
    settings.listen = "127.0.0.1:0".parse()?;
    settings.bootstrap_tenant = Some(wrapper::config::Secret(r#"{"name": "x"}"#.into()));
    let refused = wrapper::startup::Application::build(settings).await;
    assert!(
        refused
            .err()
            .is_some_and(|e| format!("{e:#}").contains("WRAPPER_BOOTSTRAP_TENANT")),
        "a bad bootstrap tenant was accepted"
    );
    Ok(())
}
