//! The tenant lifecycle on the real stack, through nginx: a suspended tenant is refused by the
//! wrapper and by every app within a second, and resuming it restores access with its data.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use tsync_e2e::{
    replicas::{self, Hub},
    wrapper_app::PASSWORD,
    *,
};

const REPLICA: &str = env!("CARGO_BIN_EXE_replica");

/// The statuses the tenant's admin gets from the wrapper's API and from both apps' APIs and
/// dashboards, through the edge.
async fn statuses(hub: &Hub) -> anyhow::Result<Vec<(String, StatusCode)>> {
    let edge = hub.edge();
    let mut out = Vec::new();
    let users = format!("/api/tenants/{}/users", hub.tenant_id);
    for path in [users.as_str(), "/crm/accounts", "/hrms/employees"] {
        let (status, _) = edge.send(Method::GET, path, &hub.admin, None).await?;
        out.push((path.to_owned(), status));
    }
    for path in ["/crm/", "/hrms/"] {
        let (status, _) = edge.page(path, &hub.admin).await?;
        out.push((path.to_owned(), status));
    }
    Ok(out)
}

#[tokio::test]
async fn a_suspended_tenant_is_refused_everywhere_within_a_second_and_resuming_restores_it()
-> anyhow::Result<()> {
    let hub = Hub::start(REPLICA, &[]).await?;
    let before = statuses(&hub).await?;
    assert!(before.iter().all(|(_, s)| s.is_success()), "{before:?}");
    let accounts_before = hub
        .edge()
        .send(Method::GET, "/crm/accounts", &hub.admin, None)
        .await?
        .1;

    let w = hub.wrapper.url();
    let suspend = format!("{w}/api/tenants/{}/suspend", hub.tenant_id);
    let tenant = replicas::send(&hub.http, Method::POST, &suspend, &hub.root, json!({})).await?;
    assert_eq!(tenant["status"], "suspended");
    // Every app applies `tenant.suspended` and refuses: the promise is one second.
    let refused = |all: &[(String, StatusCode)]| {
        all.iter()
            .all(|(_, s)| *s == StatusCode::FORBIDDEN || *s == StatusCode::UNAUTHORIZED)
    };
    let within = eventually(Duration::from_secs(1), || async {
        statuses(&hub).await.is_ok_and(|all| refused(&all))
    })
    .await;
    let now = statuses(&hub).await?;
    assert!(
        within.is_ok(),
        "still served 1 s after the suspension: {now:?}"
    );
    // The apps say why: a problem for the API, a page for the browser.
    let edge = hub.edge();
    let (status, problem) = edge
        .send(Method::GET, "/crm/accounts", &hub.admin, None)
        .await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("suspended"),
        "{problem}"
    );
    let (status, page) = edge.page("/hrms/", &hub.admin).await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(page.contains("suspended"), "{page}");
    // The wrapper refuses its sign-ins.
    let login = json!({"email": format!("admin@{}.test", hub.subdomain), "password": PASSWORD,
                       "tenant": hub.subdomain});
    let refused = hub
        .http
        .post(format!("{w}/auth/login"))
        .json(&login)
        .send()
        .await?;
    assert!(
        refused.status().is_client_error(),
        "signed in while suspended: {}",
        refused.status()
    );
    // Suspending twice is refused; the tenant is not active.
    let again = hub
        .http
        .post(&suspend)
        .bearer_auth(&hub.root)
        .send()
        .await?;
    assert_eq!(again.status(), StatusCode::NOT_FOUND);

    let resume = format!("{w}/api/tenants/{}/resume", hub.tenant_id);
    let tenant = replicas::send(&hub.http, Method::POST, &resume, &hub.root, json!({})).await?;
    assert_eq!(tenant["status"], "active");
    let signed_in = hub
        .http
        .post(format!("{w}/auth/login"))
        .json(&login)
        .send()
        .await?;
    assert_eq!(signed_in.status(), StatusCode::OK, "sign-in after resume");
    eventually(Duration::from_secs(1), || async {
        statuses(&hub)
            .await
            .is_ok_and(|all| all.iter().all(|(_, s)| s.is_success()))
    })
    .await?;
    // Nothing was lost while it was suspended.
    let accounts_after = edge
        .send(Method::GET, "/crm/accounts", &hub.admin, None)
        .await?
        .1;
    assert_eq!(accounts_before, accounts_after);
    Ok(())
}

/// `(table, rows)` of every table of the wrapper's database with a row whose text holds
/// `needle`, except `except`.
async fn wrapper_rows_with(
    db: &sqlx::PgPool,
    needle: &str,
    except: &[&str],
) -> anyhow::Result<Vec<(String, i64)>> {
    let tables: Vec<String> = sqlx::query_scalar(
        "select table_name::text from information_schema.tables
         where table_schema = 'public' and table_type = 'BASE TABLE' order by 1",
    )
    .fetch_all(db)
    .await?;
    let mut found = Vec::new();
    for table in tables.into_iter().filter(|t| !except.contains(&t.as_str())) {
        // Names from the catalogue, not from input.
        let rows: i64 = sqlx::query_scalar(&format!(
            "select count(*) from \"{table}\" t where strpos(lower(t::text), lower($1)) > 0"
        ))
        .bind(needle)
        .fetch_one(db)
        .await?;
        if rows > 0 {
            found.push((table, rows));
        }
    }
    Ok(found)
}

/// Poll operation `location` until it is done; returns it.
async fn until_done(hub: &Hub, location: &str) -> anyhow::Result<serde_json::Value> {
    eventually_some(Duration::from_secs(60), || async {
        let op = hub.get_as_root(location).await.ok()?;
        (op["status"] == "done").then_some(op)
    })
    .await
}

fn receipt_of<'a>(operation: &'a serde_json::Value, app: &str) -> &'a serde_json::Value {
    operation["apps"]
        .as_array()
        .and_then(|apps| apps.iter().find(|a| a["app"] == app))
        .unwrap_or(&serde_json::Value::Null)
}

#[tokio::test]
async fn an_erased_user_is_deleted_user_everywhere_and_their_email_is_in_no_store()
-> anyhow::Result<()> {
    let hub = Hub::start(
        REPLICA,
        &[("WRAPPER_LIFECYCLE_RESEND_SECS", "1".to_owned())],
    )
    .await?;
    let w = hub.wrapper.url();
    let email = format!(
        "Erase.Me-{}@{}.test",
        &uuid::Uuid::new_v4().simple().to_string()[..8],
        hub.subdomain
    );
    let users = format!("{w}/api/tenants/{}/users", hub.tenant_id);
    let body = json!({"email": email, "fullName": "Erin Erasable", "password": PASSWORD});
    let user = replicas::send(&hub.http, Method::POST, &users, &hub.admin, body).await?;
    let user_id = user["id"].as_str().unwrap_or_default().to_owned();
    // Traces of the address at the wrapper: a sign-in, a failed one (throttle counter), and in
    // both apps' synced copies; an account the user owns in the CRM.
    let login =
        |password: &str| json!({"email": email, "password": password, "tenant": hub.subdomain});
    hub.http
        .post(format!("{w}/auth/login"))
        .json(&login(PASSWORD))
        .send()
        .await?;
    hub.http
        .post(format!("{w}/auth/login"))
        .json(&login("not-the-password-1"))
        .send()
        .await?;
    for db in &hub.mongo_dbs {
        eventually(Duration::from_secs(10), || async {
            tsync_e2e::mongo_docs_with(db, &email)
                .await
                .is_ok_and(|f| !f.is_empty())
        })
        .await?;
    }
    fund_crm(&hub).await?;
    let edge = hub.edge();
    let account = json!({"name": "Erin's deal", "value": 10, "ownerId": user_id});
    let (status, created) = edge
        .send(Method::POST, "/crm/accounts", &hub.admin, Some(account))
        .await?;
    anyhow::ensure!(status.is_success(), "{status} {created}");

    let erase = format!("{users}/{user_id}/erase");
    let response = hub.http.post(&erase).bearer_auth(&hub.admin).send().await?;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str()?.to_owned();
    let operation = until_done(&hub, &location).await?;
    for app in ["crm", "hrms"] {
        assert_eq!(receipt_of(&operation, app)["status"], "done", "{operation}");
    }
    // "[Deleted User]" wherever the user appears.
    let (_, account) = edge
        .send(
            Method::GET,
            &format!(
                "/crm/accounts/{}",
                created["id"].as_str().unwrap_or_default()
            ),
            &hub.admin,
            None,
        )
        .await?;
    assert_eq!(account["owner"]["name"], "[Deleted User]", "{account}");
    let user = replicas::send(
        &hub.http,
        Method::GET,
        &format!("{users}/{user_id}"),
        &hub.admin,
        json!(null),
    )
    .await?;
    assert_eq!(user["fullName"], "[Deleted User]");
    // And the address in no table and no collection (the audit log keeps the user's id).
    let rows = wrapper_rows_with(&hub.db.pool, &email, &[]).await?;
    assert!(rows.is_empty(), "the email is still in {rows:?}");
    for db in &hub.mongo_dbs {
        let docs = tsync_e2e::mongo_docs_with(db, &email).await?;
        assert!(docs.is_empty(), "the email is still in {db}: {docs:?}");
    }
    let audit = wrapper_rows_with(&hub.db.pool, &user_id, &[]).await?;
    assert!(audit.iter().any(|(t, _)| t == "audit_log"), "{audit:?}");
    // Erasing again is refused: nothing left to erase.
    let again = hub.http.post(&erase).bearer_auth(&hub.admin).send().await?;
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
    Ok(())
}

#[tokio::test]
async fn a_purge_reaches_an_app_that_was_down_and_leaves_nothing_of_the_tenant_anywhere()
-> anyhow::Result<()> {
    let mut hub = Hub::start(
        REPLICA,
        &[("WRAPPER_LIFECYCLE_RESEND_SECS", "1".to_owned())],
    )
    .await?;
    let w = hub.wrapper.url();
    let tenant = hub.tenant_id.clone();
    // Data everywhere: credits mirrored in Redis, an account in the CRM, an employee in the HRMS.
    seed_both_apps(&hub).await?;
    let redis = redis_client(&redis_url()).await?;
    // The CRM's allocation mirrored in Redis, as the wrapper's reconciliation provisions it
    // (balance, grants, price table).
    let keys = sync_sdk::contract::StreamKeys::new(hub.namespace.clone(), 4).unwrap();
    wrapper::credit_ingest::CreditIngest::new(hub.db.pool.clone(), redis.clone(), keys)
        .reconcile()
        .await?;
    let pattern = format!("{}*{tenant}*", hub.namespace);
    let tenant_keys = || async { redis_keys(&redis, &pattern).await.unwrap_or_default() };
    let mirrored = eventually(Duration::from_secs(10), || async {
        !tenant_keys().await.is_empty()
    })
    .await;
    let all = redis_keys(&redis, &format!("{}*", hub.namespace)).await?;
    assert!(mirrored.is_ok(), "no key of {tenant} ({pattern}): {all:?}");

    for db in &hub.mongo_dbs {
        assert!(
            !tsync_e2e::mongo_docs_with(db, &tenant).await?.is_empty(),
            "{db} holds nothing yet"
        );
    }
    // The HRMS is down while the tenant is archived and purged.
    hub.hrms.child.start_kill()?;
    hub.hrms.child.wait().await?;
    replicas::send(
        &hub.http,
        Method::DELETE,
        &format!("{w}/api/tenants/{tenant}"),
        &hub.root,
        json!({}),
    )
    .await?;
    let response = hub
        .http
        .post(format!("{w}/api/tenants/{tenant}/purge"))
        .bearer_auth(&hub.root)
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str()?.to_owned();
    let operation = eventually_some(Duration::from_secs(30), || async {
        let op = hub.get_as_root(&location).await.ok()?;
        (receipt_of(&op, "crm")["status"] == "done").then_some(op)
    })
    .await?;
    assert_eq!(
        operation["status"], "pending",
        "done without the HRMS: {operation}"
    );
    assert_eq!(
        receipt_of(&operation, "hrms")["status"],
        "pending",
        "{operation}"
    );

    // Back, it finds the purge (resent every second) and the operation completes.
    hub.restart("hrms").await?;
    let operation = until_done(&hub, &location).await?;
    for app in ["crm", "hrms"] {
        let receipt = receipt_of(&operation, app);
        assert_eq!(receipt["status"], "done", "{operation}");
        assert!(receipt["details"]["documents"].is_object(), "{receipt}");
    }
    // Nothing of the tenant remains: no document in either app, no Redis key, no wrapper row
    // but the audit log (and the operation with its receipts, the proof).
    for db in &hub.mongo_dbs {
        let docs = tsync_e2e::mongo_docs_with(db, &tenant).await?;
        assert!(docs.is_empty(), "{db} still holds {docs:?}");
    }
    let keys = tenant_keys().await;
    assert!(keys.is_empty(), "Redis still holds {keys:?}");
    let kept = ["audit_log", "lifecycle_operations", "lifecycle_receipts"];
    let rows = wrapper_rows_with(&hub.db.pool, &tenant, &kept).await?;
    assert!(rows.is_empty(), "the wrapper still holds {rows:?}");
    let audit = wrapper_rows_with(&hub.db.pool, &tenant, &[]).await?;
    assert!(
        audit.iter().any(|(t, _)| t == "audit_log"),
        "the audit log was not kept: {audit:?}"
    );
    assert!(
        operation["result"]["rowsDeleted"]["tenants"] == 1,
        "{operation}"
    );
    Ok(())
}

/// 500 credits for the tenant, all allocated to the CRM (accounts cost credits).
async fn fund_crm(hub: &Hub) -> anyhow::Result<()> {
    let allocate = format!("{}/api/admin/credits/allocate", hub.wrapper.url());
    let tenant = &hub.tenant_id;
    let body = json!({"tenantId": tenant, "amount": 500});
    replicas::send(&hub.http, Method::POST, &allocate, &hub.root, body).await?;
    let body = json!({"tenantId": tenant, "application": "crm", "amount": 500});
    let url = format!("{allocate}/application");
    replicas::send(&hub.http, Method::POST, &url, &hub.admin, body).await?;
    Ok(())
}

/// Credits for the CRM, an account in the CRM and an employee in the HRMS, all of the hub's
/// tenant.
async fn seed_both_apps(hub: &Hub) -> anyhow::Result<()> {
    fund_crm(hub).await?;
    let edge = hub.edge();
    let account = json!({"name": "A deal", "value": 10, "ownerId": hub.admin_id});
    let (status, body) = edge
        .send(Method::POST, "/crm/accounts", &hub.admin, Some(account))
        .await?;
    anyhow::ensure!(status.is_success(), "{status} {body}");
    let employee = json!({"userId": hub.admin_id, "department": "Ops", "salary": 1000});
    let (status, body) = edge
        .send(Method::POST, "/hrms/employees", &hub.admin, Some(employee))
        .await?;
    anyhow::ensure!(status.is_success(), "{status} {body}");
    Ok(())
}

/// Every key matching `pattern` (SCAN).
async fn redis_keys(redis: &fred::clients::Client, pattern: &str) -> anyhow::Result<Vec<String>> {
    use fred::types::scan::Scanner;
    use futures_util::TryStreamExt;
    let mut keys = Vec::new();
    let mut pages = redis.scan(pattern, Some(500), None);
    while let Some(mut page) = pages.try_next().await? {
        if let Some(found) = page.take_results() {
            keys.extend(found.into_iter().filter_map(|k| k.into_string()));
        }
        page.next();
    }
    Ok(keys)
}

#[tokio::test]
async fn an_export_holds_exactly_the_tenants_records_from_the_wrapper_and_both_apps()
-> anyhow::Result<()> {
    let hub = Hub::start(
        REPLICA,
        &[("WRAPPER_LIFECYCLE_RESEND_SECS", "1".to_owned())],
    )
    .await?;
    let w = hub.wrapper.url();
    // The tenant's data in both apps.
    seed_both_apps(&hub).await?;
    // Another tenant with data of its own in both apps: none of it may leak into the export.
    let other = format!("other-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let body = json!({"name": other, "subdomain": other, "plan": "pro", "features": ["crm", "hrms"],
        "admin": {"email": format!("admin@{other}.test"), "fullName": "Other Admin", "password": PASSWORD}});
    let created = replicas::send(
        &hub.http,
        Method::POST,
        &format!("{w}/api/tenants"),
        &hub.root,
        body,
    )
    .await?;
    let other_id = created["id"].as_str().unwrap_or_default().to_owned();
    let login =
        json!({"email": format!("admin@{other}.test"), "password": PASSWORD, "tenant": other});
    let other_admin: serde_json::Value = hub
        .http
        .post(format!("{w}/auth/login"))
        .json(&login)
        .send()
        .await?
        .json()
        .await?;
    let other_admin = other_admin["token"].as_str().unwrap_or_default().to_owned();
    let other_edge = tsync_e2e::suite::Edge::new(hub.nginx.url(), format!("{other}.yourapp.test"));
    let employee =
        json!({"userId": created["adminUserId"], "department": "Elsewhere", "salary": 5});
    let (status, body) = other_edge
        .send(
            Method::POST,
            "/hrms/employees",
            &other_admin,
            Some(employee),
        )
        .await?;
    anyhow::ensure!(status.is_success(), "{status} {body}");
    let (status, _) = other_edge
        .send(Method::GET, "/crm/accounts", &other_admin, None)
        .await?;
    anyhow::ensure!(status.is_success());

    let response = hub
        .http
        .post(format!("{w}/api/tenants/{}/export", hub.tenant_id))
        .bearer_auth(&hub.admin)
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str()?.to_owned();
    let operation = until_done(&hub, &location).await?;
    for app in ["crm", "hrms"] {
        let receipt = receipt_of(&operation, app);
        assert_eq!(receipt["status"], "done", "{operation}");
        assert!(
            receipt["details"]["documents"]["users"].as_u64() > Some(0),
            "{receipt}"
        );
    }
    // The tenant's admin downloads it.
    let archive = hub
        .http
        .get(format!("{w}{location}/archive"))
        .bearer_auth(&hub.admin)
        .send()
        .await?;
    assert_eq!(archive.status(), StatusCode::OK);
    assert_eq!(archive.headers()["content-type"], "application/x-tar");
    let files = tsync_e2e::untar(&archive.bytes().await?)?;
    let lines = |path: &str| files.get(path).map_or(0, |t| t.lines().count());
    // Exactly its records: as many users as the wrapper has, its one account and one employee.
    let users: i64 = sqlx::query_scalar("select count(*) from users where tenant_id = $1")
        .bind(hub.tenant_id.parse::<uuid::Uuid>()?)
        .fetch_one(&hub.db.pool)
        .await?;
    assert_eq!(
        lines("wrapper/users.jsonl") as i64,
        users,
        "{:?}",
        files.keys()
    );
    assert_eq!(lines("wrapper/tenants.jsonl"), 1);
    assert_eq!(lines("crm/app.accounts.jsonl"), 1, "{:?}", files.keys());
    assert_eq!(lines("hrms/app.employees.jsonl"), 1, "{:?}", files.keys());
    assert!(
        lines("crm/users.jsonl") >= 1 && lines("hrms/users.jsonl") >= 1,
        "{:?}",
        files.keys()
    );
    assert_eq!(
        operation["result"]["files"]["crm/app.accounts.jsonl"], 1,
        "{operation}"
    );
    // Every line is the tenant's; nothing of the other tenant, no password hash.
    for (path, text) in &files {
        assert!(!text.contains(&other_id), "{path} holds the other tenant");
        assert!(
            !text.contains("password_hash"),
            "{path} holds a password hash"
        );
        for line in text.lines() {
            let record: serde_json::Value = serde_json::from_str(line)?;
            assert!(
                line.contains(&hub.tenant_id),
                "{path}: {record} is not the tenant's"
            );
        }
    }
    // Another tenant's admin cannot read it.
    let refused = hub
        .http
        .get(format!("{w}{location}/archive"))
        .bearer_auth(&other_admin)
        .send()
        .await?;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    Ok(())
}

#[tokio::test]
async fn an_archived_tenant_is_restorable_until_its_grace_period_ends_then_purged_on_its_own()
-> anyhow::Result<()> {
    let extra = [
        ("WRAPPER_LIFECYCLE_RESEND_SECS", "1".to_owned()),
        ("WRAPPER_PURGE_GRACE_SECS", "3".to_owned()),
    ];
    let hub = Hub::start(REPLICA, &extra).await?;
    let w = hub.wrapper.url();
    let tenant = format!("{w}/api/tenants/{}", hub.tenant_id);
    let archive = || replicas::send(&hub.http, Method::DELETE, &tenant, &hub.root, json!({}));
    // Archived, then restored within the grace period: served again, with its data.
    archive().await?;
    let restored = replicas::send(
        &hub.http,
        Method::POST,
        &format!("{tenant}/restore"),
        &hub.root,
        json!({}),
    )
    .await?;
    assert_eq!(restored["status"], "active");
    let login = json!({"email": format!("admin@{}.test", hub.subdomain), "password": PASSWORD,
                       "tenant": hub.subdomain});
    let signed_in = hub
        .http
        .post(format!("{w}/auth/login"))
        .json(&login)
        .send()
        .await?;
    assert_eq!(signed_in.status(), StatusCode::OK);
    // Archived again and left: the wrapper purges it once the grace period is over.
    archive().await?;
    let purged = eventually_some(Duration::from_secs(30), || async {
        let id: Option<uuid::Uuid> = sqlx::query_scalar(
            "select id from lifecycle_operations where tenant_id = $1 and kind = 'purge_tenant'
             and status = 'done'",
        )
        .bind(hub.tenant_id.parse::<uuid::Uuid>().ok()?)
        .fetch_optional(&hub.db.pool)
        .await
        .ok()?;
        id
    })
    .await?;
    let operation = until_done(&hub, &format!("/api/operations/{purged}")).await?;
    for app in ["crm", "hrms"] {
        assert_eq!(receipt_of(&operation, app)["status"], "done", "{operation}");
    }
    let restore = hub
        .http
        .post(format!("{tenant}/restore"))
        .bearer_auth(&hub.root)
        .send()
        .await?;
    assert_eq!(
        restore.status(),
        StatusCode::NOT_FOUND,
        "restored after the purge"
    );
    for db in &hub.mongo_dbs {
        assert!(
            tsync_e2e::mongo_docs_with(db, &hub.tenant_id)
                .await?
                .is_empty(),
            "{db}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn an_app_registered_while_an_operation_is_pending_must_confirm_it_too() -> anyhow::Result<()>
{
    let mut hub = Hub::start(
        REPLICA,
        &[("WRAPPER_LIFECYCLE_RESEND_SECS", "1".to_owned())],
    )
    .await?;
    let w = hub.wrapper.url();
    // The HRMS is down, so the erasure stays pending.
    hub.hrms.child.start_kill()?;
    hub.hrms.child.wait().await?;
    let users = format!("{w}/api/tenants/{}/users", hub.tenant_id);
    let body = json!({"email": format!("late@{}.test", hub.subdomain), "fullName": "Late", "password": PASSWORD});
    let user = replicas::send(&hub.http, Method::POST, &users, &hub.admin, body).await?;
    let erase = format!("{users}/{}/erase", user["id"].as_str().unwrap_or_default());
    let response = hub.http.post(&erase).bearer_auth(&hub.admin).send().await?;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str()?.to_owned();
    // A new app registers meanwhile (its service client, then its manifest).
    let secret = "reports-service-secret-long-enough";
    wrapper::startup::upsert_service_client(&hub.db.pool, "reports", secret).await?;
    let token: serde_json::Value = hub
        .http
        .post(format!("{w}/auth/service-token"))
        .json(&json!({"clientId": "reports", "clientSecret": secret}))
        .send()
        .await?
        .json()
        .await?;
    let token = token["accessToken"].as_str().unwrap_or_default().to_owned();
    let manifest =
        serde_json::to_value(sync_sdk::contract::AppManifest::new("reports", "Reports"))?;
    replicas::send(
        &hub.http,
        Method::PUT,
        &format!("{w}/api/apps/reports"),
        &token,
        manifest,
    )
    .await?;
    // The HRMS comes back and confirms; the operation still waits for the new app.
    hub.restart("hrms").await?;
    let read = || hub.get_as_root(&location);
    let operation = eventually_some(Duration::from_secs(30), || async {
        let op = read().await.ok()?;
        (receipt_of(&op, "hrms")["status"] == "done").then_some(op)
    })
    .await?;
    assert_eq!(operation["status"], "pending", "{operation}");
    assert_eq!(
        receipt_of(&operation, "reports")["status"],
        "pending",
        "{operation}"
    );
    // Its receipt — a failure first, shown with the reason, then done — completes it.
    let receipt = format!(
        "{w}/api/sync/operations/{}/receipt",
        operation["id"].as_str().unwrap_or_default()
    );
    let failed = json!({"replica": "reports-1", "status": "failed", "reason": "store down"});
    let answered = hub
        .http
        .put(&receipt)
        .bearer_auth(&token)
        .json(&failed)
        .send()
        .await?;
    assert_eq!(answered.status(), StatusCode::NO_CONTENT);
    let op = read().await?;
    assert_eq!(receipt_of(&op, "reports")["reason"], "store down", "{op}");
    assert_eq!(op["status"], "pending");
    let done = json!({"replica": "reports-1", "status": "done", "details": {"users": 0}});
    let answered = hub
        .http
        .put(&receipt)
        .bearer_auth(&token)
        .json(&done)
        .send()
        .await?;
    assert_eq!(answered.status(), StatusCode::NO_CONTENT);
    // Done once the wrapper has also removed the user's stream entries, which waits for every
    // consumer group to have acknowledged them (the HRMS was just restarted).
    let op = eventually_some(Duration::from_secs(30), || async {
        let op = read().await.ok()?;
        (op["status"] == "done").then_some(op)
    })
    .await?;
    assert_eq!(receipt_of(&op, "reports")["status"], "done", "{op}");
    // A user token cannot answer for an app.
    let refused = hub
        .http
        .put(&receipt)
        .bearer_auth(&hub.admin)
        .json(&done)
        .send()
        .await?;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    Ok(())
}
