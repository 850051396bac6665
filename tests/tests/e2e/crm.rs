//! The CRM and HRMS end to end through the real nginx, with the real wrapper, Redis, Postgres
//! and the MongoDB-wire server.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tsync_e2e::{
    suite::{Edge, Suite},
    wrapper_app::TestTenant,
    *,
};

/// The CRM and the HRMS through nginx, following the wrapper: one scenario in named steps.
#[tokio::test]
async fn crm_accounts_through_nginx_follow_the_wrapper() -> anyhow::Result<()> {
    let suite = Suite::start(|_| {}).await?;
    let w = &suite.wrapper;
    let acme = w.create_tenant("acme").await;
    let (owner, owner_token) = w.create_member(&acme, "owner@acme.test").await;
    w.fund_app(&acme, "crm", 1000).await;
    let edge = suite.edge("acme");

    let account =
        first_visit_loads_the_tenant_and_an_account_costs_35(&suite, &edge, &acme, owner).await?;
    let path = format!(
        "/crm/accounts/{}",
        account["id"].as_str().unwrap_or_default()
    );
    an_account_is_updated_and_a_bad_change_names_its_field(&edge, &acme, &path).await?;
    another_tenants_host_is_refused_and_audited(&suite, &acme).await?;
    no_credits_no_account(&suite).await?;
    salaries_are_recorded_by_admins_and_shown_to_admins_only(&edge, &acme, owner, &owner_token)
        .await?;
    an_email_change_reaches_the_crm_and_the_hrms(&suite, &edge, &acme, owner).await?;
    a_deleted_owner_is_shown_reported_and_kept(&suite, &edge, &acme, owner, &path).await?;
    Ok(())
}

async fn crm_balance(suite: &Suite, t: &TestTenant) -> Value {
    let balance = suite
        .wrapper
        .get_ok(&format!("/api/credits/balance?tenantId={}", t.id), &t.admin)
        .await;
    balance["balances"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["scope"] == "app:crm"))
        .map(|b| b["balance"].clone())
        .unwrap_or(Value::Null)
}

async fn first_visit_loads_the_tenant_and_an_account_costs_35(
    suite: &Suite,
    edge: &Edge,
    acme: &TestTenant,
    owner: uuid::Uuid,
) -> anyhow::Result<Value> {
    let body = json!({"name": "Initech", "value": 5000, "ownerId": owner});
    let (status, account) = edge
        .send(Method::POST, "/crm/accounts", &acme.admin, Some(body))
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{account}");
    assert_eq!(account["owner"]["email"], "owner@acme.test");
    assert_eq!(crm_balance(suite, acme).await, 965);
    Ok(account)
}

async fn an_account_is_updated_and_a_bad_change_names_its_field(
    edge: &Edge,
    acme: &TestTenant,
    path: &str,
) -> anyhow::Result<()> {
    let rename = json!({"name": "Initrode"});
    let (_, renamed) = edge
        .send(Method::PATCH, path, &acme.admin, Some(rename))
        .await?;
    assert_eq!(renamed["name"], "Initrode");
    let (status, problem) = edge
        .send(Method::PATCH, path, &acme.admin, Some(json!({"value": -1})))
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["field"], "value");
    let (_, read) = edge.send(Method::GET, path, &acme.admin, None).await?;
    assert_eq!(read["name"], "Initrode");
    Ok(())
}

async fn another_tenants_host_is_refused_and_audited(
    suite: &Suite,
    acme: &TestTenant,
) -> anyhow::Result<()> {
    let globex_edge = suite.edge("globex");
    let (status, _) = globex_edge
        .send(Method::GET, "/crm/accounts", &acme.admin, None)
        .await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // ...and once globex exists, the attempt is in its audit log, reported by the app in its
    // own namespace: the actor is the app's claim, never the entry's actor.
    let globex = suite.wrapper.create_tenant("globex").await;
    let (status, _) = globex_edge
        .send(Method::GET, "/crm/accounts", &acme.admin, None)
        .await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let audit_path = format!(
        "/api/tenants/{}/audit?action=crm:cross_tenant_attempt",
        globex.id
    );
    eventually(Duration::from_secs(10), || async {
        let (_, audit) = suite
            .wrapper
            .call(Method::GET, &audit_path, Some(&globex.admin), None)
            .await;
        audit["items"].as_array().is_some_and(|items| {
            items.iter().any(|i| {
                i["details"]["claimedActorId"] == json!(acme.admin_id)
                    && i["reportedBy"] == "crm"
                    && i["actorId"].is_null()
            })
        })
    })
    .await
}

async fn no_credits_no_account(suite: &Suite) -> anyhow::Result<()> {
    let poor = suite.wrapper.create_tenant("poor").await;
    let body = json!({"name": "X", "value": 1, "ownerId": poor.admin_id});
    let (status, _) = suite
        .edge("poor")
        .send(Method::POST, "/crm/accounts", &poor.admin, Some(body))
        .await?;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    Ok(())
}

async fn salaries_are_recorded_by_admins_and_shown_to_admins_only(
    edge: &Edge,
    acme: &TestTenant,
    owner: uuid::Uuid,
    owner_token: &str,
) -> anyhow::Result<()> {
    let hire = json!({"userId": owner, "department": "Sales", "salary": 72000});
    let (status, _) = edge
        .send(Method::POST, "/hrms/employees", &acme.admin, Some(hire))
        .await?;
    assert_eq!(status, StatusCode::CREATED);
    let self_hire = json!({"userId": owner, "department": "Sales", "salary": 1});
    let (status, _) = edge
        .send(
            Method::POST,
            "/hrms/employees",
            owner_token,
            Some(self_hire),
        )
        .await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "members do not hire");
    let (_, admin_view) = edge
        .send(Method::GET, "/hrms/employees", &acme.admin, None)
        .await?;
    assert_eq!(admin_view["items"][0]["salary"], 72000);
    let (_, member_view) = edge
        .send(Method::GET, "/hrms/employees", owner_token, None)
        .await?;
    assert_eq!(member_view["items"][0]["department"], "Sales");
    assert!(
        member_view["items"][0].get("salary").is_none(),
        "members see no salary: {member_view}"
    );
    Ok(())
}

/// The first account's owner in the CRM listing, and the first employee in the HRMS's.
async fn first_owner_and_employee(edge: &Edge, acme: &TestTenant) -> Option<(Value, Value)> {
    let (_, accounts) = edge
        .send(Method::GET, "/crm/accounts", &acme.admin, None)
        .await
        .ok()?;
    let (_, staff) = edge
        .send(Method::GET, "/hrms/employees", &acme.admin, None)
        .await
        .ok()?;
    Some((
        accounts["items"][0]["owner"].clone(),
        staff["items"][0].clone(),
    ))
}

async fn an_email_change_reaches_the_crm_and_the_hrms(
    suite: &Suite,
    edge: &Edge,
    acme: &TestTenant,
    owner: uuid::Uuid,
) -> anyhow::Result<()> {
    let changed_at = Instant::now();
    suite
        .wrapper
        .send_ok(
            Method::PATCH,
            &format!("/api/tenants/{}/users/{owner}", acme.id),
            &acme.admin,
            json!({"email": "new@acme.test"}),
        )
        .await;
    eventually(Duration::from_secs(20), || async {
        first_owner_and_employee(edge, acme)
            .await
            .is_some_and(|(o, e)| o["email"] == "new@acme.test" && e["email"] == "new@acme.test")
    })
    .await?;
    eprintln!(
        "email change visible in CRM and HRMS after {:?}",
        changed_at.elapsed()
    );
    Ok(())
}

async fn a_deleted_owner_is_shown_reported_and_kept(
    suite: &Suite,
    edge: &Edge,
    acme: &TestTenant,
    owner: uuid::Uuid,
    path: &str,
) -> anyhow::Result<()> {
    suite
        .wrapper
        .send_ok(
            Method::DELETE,
            &format!("/api/tenants/{}/users/{owner}", acme.id),
            &acme.admin,
            json!(null),
        )
        .await;
    eventually(Duration::from_secs(20), || async {
        first_owner_and_employee(edge, acme)
            .await
            .is_some_and(|(o, e)| o["name"] == crm::DELETED_USER && e["name"] == "[Deleted User]")
    })
    .await?;
    // The nightly full sync reports the account as orphaned and marks it (the account stays).
    let report = suite.crm_full_sync.run_once(|_, _| {}).await?;
    let account_id = path.rsplit('/').next().unwrap_or_default();
    let orphan = report
        .orphans
        .iter()
        .find(|o| o.reference.record == format!("account:{account_id}"))
        .unwrap_or_else(|| panic!("the account is reported: {report:?}"));
    assert_eq!(orphan.reference.user_id, owner);
    assert_eq!(orphan.reason, sync_sdk::fullsync::OrphanReason::Deleted);
    assert_eq!(report.orphans.len(), 1, "only the deleted owner's account");
    let (_, kept) = edge.send(Method::GET, path, &acme.admin, None).await?;
    assert_eq!(kept["ownerOrphaned"], "deleted", "{kept}");
    assert_eq!(kept["owner"]["name"], crm::DELETED_USER);
    // The HRMS keeps the employee record of the deleted user and reports it too.
    let report = suite.hrms_full_sync.run_once(|_, _| {}).await?;
    assert_eq!(report.orphans.len(), 1, "{report:?}");
    assert!(report.orphans[0].reference.record.starts_with("employee:"));
    assert_eq!(report.orphans[0].reference.user_id, owner);
    Ok(())
}

#[tokio::test]
async fn account_creation_retried_with_an_idempotency_key_creates_and_charges_once()
-> anyhow::Result<()> {
    let suite = Suite::start(|_| {}).await?;
    let (wrapper, nginx) = (&suite.wrapper, &suite.nginx);
    let acme = wrapper.create_tenant("acme").await;
    wrapper.fund_app(&acme, "crm", 1000).await;
    let http = reqwest::Client::new();
    let create = |key: Option<&str>, name: &str| {
        let mut req = http
            .post(format!("{}/crm/accounts", nginx.url()))
            .header("host", "acme.yourapp.test")
            .bearer_auth(&acme.admin)
            .json(&json!({"name": name, "value": 10, "ownerId": acme.admin_id}));
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        req.send()
    };
    let balance = || async {
        let body = wrapper
            .get_ok(
                &format!("/api/credits/balance?tenantId={}", acme.id),
                &acme.admin,
            )
            .await;
        body["balances"]
            .as_array()
            .and_then(|b| b.iter().find(|x| x["scope"] == "app:crm"))
            .and_then(|x| x["balance"].as_i64())
            .unwrap_or_default()
    };

    // Five concurrent sends of one request, then a late retry: one account, 35 credits.
    let sends =
        futures_util::future::join_all((0..5).map(|_| create(Some("order-1"), "Initech"))).await;
    let mut ids = Vec::new();
    for sent in sends {
        let sent = sent?;
        assert!(
            matches!(sent.status(), StatusCode::CREATED | StatusCode::OK),
            "{}",
            sent.status()
        );
        ids.push(sent.json::<Value>().await?["id"].clone());
    }
    let retry = create(Some("order-1"), "Initech").await?;
    assert_eq!(
        retry.status(),
        StatusCode::OK,
        "a replay answers with the account"
    );
    ids.push(retry.json::<Value>().await?["id"].clone());
    ids.dedup();
    assert_eq!(ids.len(), 1, "every answer names the same account: {ids:?}");
    assert_eq!(balance().await, 965, "charged once");

    // The key reused for another request is a conflict; a bad key is a problem naming it.
    let reused = create(Some("order-1"), "Globex").await?;
    assert_eq!(reused.status(), StatusCode::CONFLICT);
    let bad = create(Some("spaces are not allowed"), "X").await?;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert_eq!(bad.json::<Value>().await?["field"], "idempotency-key");
    // Without a key every request is its own account.
    assert_eq!(create(None, "A").await?.status(), StatusCode::CREATED);
    assert_eq!(create(None, "A").await?.status(), StatusCode::CREATED);
    let listed: Value = http
        .get(format!("{}/crm/accounts", nginx.url()))
        .header("host", "acme.yourapp.test")
        .bearer_auth(&acme.admin)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(3));
    assert_eq!(listed["nextCursor"], Value::Null);
    assert_eq!(balance().await, 965 - 2 * 35);

    // Listings are paged by cursor: two pages of 2 and 1, every account once.
    let page = |query: String| {
        http.get(format!("{}/crm/accounts?{query}", nginx.url()))
            .header("host", "acme.yourapp.test")
            .bearer_auth(&acme.admin)
            .send()
    };
    let first: Value = page("limit=2".into()).await?.json().await?;
    let cursor = first["nextCursor"]
        .as_str()
        .expect("a second page")
        .to_owned();
    let second: Value = page(format!("limit=2&cursor={cursor}"))
        .await?
        .json()
        .await?;
    assert_eq!(second["nextCursor"], Value::Null);
    let mut seen: Vec<Value> = first["items"]
        .as_array()
        .into_iter()
        .chain(second["items"].as_array())
        .flatten()
        .map(|a| a["id"].clone())
        .collect();
    assert_eq!(seen.len(), 3);
    seen.dedup();
    assert_eq!(seen.len(), 3);
    let bad = page("limit=0".into()).await?;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert_eq!(bad.json::<Value>().await?["field"], "limit");
    let unreadable = page("limit=many".into()).await?;
    assert_eq!(unreadable.status(), StatusCode::BAD_REQUEST);
    assert_eq!(unreadable.json::<Value>().await?["field"], "query");
    Ok(())
}

/// Where the tenant's CRM allocation is mirrored in Redis (the wrapper's reconciliation
/// provisions it), account creation is charged on the fast path: the mirror drops at once and
/// the ledger follows by ingesting the credit stream, charging the operation once.
#[tokio::test]
async fn account_creation_takes_the_credit_fast_path_where_mirrored() -> anyhow::Result<()> {
    use sync_sdk::{contract::StreamKeys, credits::CreditMirror};
    let suite = Suite::start(|_| {}).await?;
    let (wrapper, nginx) = (&suite.wrapper, &suite.nginx);
    let acme = wrapper.create_tenant("acme").await;
    wrapper.fund_app(&acme, "crm", 1000).await;
    let keys = StreamKeys::new(
        wrapper.state.settings.namespace.clone(),
        wrapper.state.settings.partitions,
    )
    .unwrap();
    let redis = redis_client(&redis_url()).await?;
    let ingest = wrapper::credit_ingest::CreditIngest::new(
        wrapper.db.pool.clone(),
        redis.clone(),
        keys.clone(),
    );
    ingest.reconcile().await?;
    let mirror = CreditMirror::new(redis.clone(), keys.clone());
    assert_eq!(
        mirror.balance(acme.id, "crm").await?,
        Some(1000),
        "provisioned"
    );

    let created = reqwest::Client::new()
        .post(format!("{}/crm/accounts", nginx.url()))
        .header("host", "acme.yourapp.test")
        .bearer_auth(&acme.admin)
        .json(&json!({"name": "Fast Ltd", "value": 1, "ownerId": acme.admin_id}))
        .send()
        .await?;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(
        mirror.balance(acme.id, "crm").await?,
        Some(965),
        "charged on the mirror"
    );
    let entries: Vec<(String, std::collections::HashMap<String, String>)> =
        fred::prelude::StreamsInterface::xrange(
            &redis,
            keys.app_credit_stream(keys.partition_of(acme.id), "crm"),
            "-",
            "+",
            None,
        )
        .await?;
    assert!(
        entries
            .iter()
            .any(|(_, f)| f.get("tenantId") == Some(&acme.id.to_string())),
        "the charge is on the credit stream"
    );
    eventually(Duration::from_secs(20), || async {
        let ledger: Option<i64> = sqlx::query_scalar(
            "select balance from credit_balances where tenant_id = $1 and scope = 'app:crm'",
        )
        .bind(acme.id)
        .fetch_optional(&wrapper.db.pool)
        .await
        .ok()
        .flatten();
        ledger == Some(965)
    })
    .await?;
    let consumptions: i64 = sqlx::query_scalar(
        "select count(*) from credit_ledger where tenant_id = $1 and kind = 'consumption'",
    )
    .bind(acme.id)
    .fetch_one(&wrapper.db.pool)
    .await?;
    assert_eq!(consumptions, 1, "the ledger charged it once");
    Ok(())
}

/// Every app reads bodies with the wrapper's rules (`sync_sdk::http::parse_body`, the same code
/// as the API's): a bad body is 400 naming the field, not "body" for everything.
#[tokio::test]
async fn the_apps_name_the_field_a_bad_body_fails_at() -> anyhow::Result<()> {
    let suite = Suite::start(|_| {}).await?;
    let acme = suite
        .wrapper
        .create_tenant_with("acme", &["crm", "hrms", "projects"])
        .await;
    let edge = suite.edge("acme");
    for (path, body, field) in [
        (
            "/crm/accounts",
            json!({"name": "Initech", "value": "lots", "ownerId": acme.admin_id}),
            "value",
        ),
        (
            "/crm/accounts",
            json!({"name": "Initech", "value": 1, "ownerId": acme.admin_id, "extra": 1}),
            "extra",
        ),
        (
            "/crm/accounts",
            json!({"name": "Initech", "value": 1}),
            "ownerId",
        ),
        (
            "/projects/projects",
            json!({"name": "Apollo", "memberIds": [acme.admin_id, "not-a-uuid"]}),
            "memberIds[1]",
        ),
        ("/hrms/employees", json!(["not", "an", "object"]), "body"),
        (
            "/hrms/employees",
            json!({"userId": acme.admin_id, "department": "Ops\u{0}", "salary": 1}),
            "department",
        ),
    ] {
        let (status, problem) = edge
            .send(Method::POST, path, &acme.admin, Some(body))
            .await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {problem}");
        assert_eq!(problem["field"], field, "{path}: {problem}");
    }
    Ok(())
}
