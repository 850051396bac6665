//! Erasure and offboarding a data-protection officer can sign (issue 33): a tenant always keeps
//! an admin.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tsync_e2e::wrapper_app::{TestApp, TestTenant, spawn_wrapper};
use uuid::Uuid;

/// `method path` as `token`: the status and the answer.
async fn call(
    w: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    body: Value,
) -> (StatusCode, Value) {
    let body = (!body.is_null()).then_some(body);
    w.call(method, path, Some(token), body).await
}

/// Operation `operation` (as `POST` answered it) polled as `token` until it is done (60 s): the
/// operation, and its path.
async fn until_done(
    w: &TestApp,
    token: &str,
    operation: &Value,
) -> anyhow::Result<(Value, String)> {
    let location = format!(
        "/api/operations/{}",
        operation["id"].as_str().unwrap_or_default()
    );
    let done = tsync_e2e::eventually_some(std::time::Duration::from_secs(60), || async {
        let (_, op) = w.call(Method::GET, &location, Some(token), None).await;
        (op["status"] == "done").then_some(op)
    })
    .await?;
    Ok((done, location))
}

/// The number of `user.*`, `membership.*` and `role.*` events of `tenant` in the outbox.
async fn events(w: &TestApp, tenant: &TestTenant) -> i64 {
    sqlx::query_scalar("select count(*) from outbox where tenant_id = $1")
        .bind(tenant.id)
        .fetch_one(&w.db.pool)
        .await
        .unwrap_or(-1)
}

/// The admin memberships (active) of `user`.
async fn admin_membership(w: &TestApp, tenant: &TestTenant, user: Uuid) -> Uuid {
    sqlx::query_scalar(
        "select m.id from memberships m where m.tenant_id = $1 and m.user_id = $2 and m.role_id = $3 and m.active",
    )
    .bind(tenant.id)
    .bind(user)
    .bind(tenant.admin_role)
    .fetch_one(&w.db.pool)
    .await
    .expect("an admin membership")
}

#[tokio::test]
async fn the_last_admin_cannot_be_taken_away_by_any_path() -> anyhow::Result<()> {
    let w = spawn_wrapper().await?;
    let acme = w.create_tenant("acme").await;
    let t = acme.id;
    let me = acme.admin_id;
    let before = events(&w, &acme).await;
    let membership = admin_membership(&w, &acme, me).await;
    let refused = [
        (
            Method::PATCH,
            format!("/api/tenants/{t}/users/{me}"),
            json!({"active": false}),
        ),
        (
            Method::DELETE,
            format!("/api/tenants/{t}/users/{me}"),
            json!({}),
        ),
        (
            Method::POST,
            format!("/api/tenants/{t}/users/{me}/erase"),
            json!({}),
        ),
        (
            Method::DELETE,
            format!("/api/tenants/{t}/memberships/{membership}"),
            json!({}),
        ),
    ];
    for token in [&acme.admin, &w.root] {
        for (method, path, body) in &refused {
            let (status, problem) = call(&w, method.clone(), path, token, body.clone()).await;
            assert_eq!(status, StatusCode::CONFLICT, "{method} {path}: {problem}");
            assert!(
                problem.to_string().contains("without an admin"),
                "{method} {path}: the reason is named: {problem}"
            );
        }
    }
    // Nothing was written: still active, still an admin, no event.
    let (status, user) = call(
        &w,
        Method::GET,
        &format!("/api/tenants/{t}/users/{me}"),
        &acme.admin,
        json!(null),
    )
    .await;
    assert_eq!(
        (status, user["active"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{user}"
    );
    assert_eq!(admin_membership(&w, &acme, me).await, membership);
    assert_eq!(
        events(&w, &acme).await,
        before,
        "an event of a refused change"
    );
    // A platform admin still offboards the tenant as a whole.
    let other = w.create_tenant("offboarded").await;
    let tenant = format!("/api/tenants/{}", other.id);
    let (status, archived) = call(&w, Method::DELETE, &tenant, &w.root, json!(null)).await;
    assert_eq!(status, StatusCode::OK, "{archived}");
    assert_eq!(archived["status"], "archived", "{archived}");

    // A custom role granting tenant.admin held by the only other admin: taking the permission
    // away or deleting the role would leave no admin once the first is gone.
    let (other, _) = w.create_member(&acme, "second@acme.test").await;
    let (_, role) = call(
        &w,
        Method::POST,
        &format!("/api/tenants/{t}/roles"),
        &acme.admin,
        json!({"name": "co-admins", "permissions": ["tenant.admin"]}),
    )
    .await;
    let role = role["id"].as_str().unwrap_or_default().to_owned();
    let (status, granted) = call(
        &w,
        Method::POST,
        &format!("/api/tenants/{t}/memberships"),
        &acme.admin,
        json!({"userId": other, "roleId": role}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{granted}");
    // With a second admin, the first may go.
    let (status, gone) = call(
        &w,
        Method::PATCH,
        &format!("/api/tenants/{t}/users/{me}"),
        &w.root,
        json!({"active": false}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{gone}");
    for (method, body) in [
        (Method::PATCH, json!({"permissions": ["crm.read"]})),
        (Method::DELETE, json!({})),
    ] {
        let (status, problem) = call(
            &w,
            method.clone(),
            &format!("/api/tenants/{t}/roles/{role}"),
            &w.root,
            body,
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT, "{method} the role: {problem}");
    }
    Ok(())
}

/// Two admins removed at the same moment: one change waits for the other and is then refused.
/// The other change is made here in a transaction of the test's own that takes the tenant's
/// admin lock as the wrapper's changes do and holds it, so the request is sure to overlap it.
#[tokio::test]
async fn two_admins_removed_at_once_leave_one() -> anyhow::Result<()> {
    let w = spawn_wrapper().await?;
    let acme = w.create_tenant("acme").await;
    let t = acme.id;
    let (second, _) = w.create_member(&acme, "second@acme.test").await;
    let grant = json!({"userId": second, "roleId": acme.admin_role});
    let path = format!("/api/tenants/{t}/memberships");
    let (status, _) = call(&w, Method::POST, &path, &acme.admin, grant).await;
    assert_eq!(status, StatusCode::CREATED);

    // The test's transaction: the second admin deactivated, not committed yet.
    let mut tx = w.db.pool.begin().await?;
    sqlx::query(wrapper::model::users::ADMIN_LOCK)
        .bind(t)
        .execute(&mut *tx)
        .await?;
    sqlx::query("update users set active = false where id = $1")
        .bind(second)
        .execute(&mut *tx)
        .await?;
    // The first admin deactivated through the API meanwhile.
    let first = format!("/api/tenants/{t}/users/{}", acme.admin_id);
    let request = {
        let (w_url, token) = (w.url.clone(), w.root.clone());
        tokio::spawn(async move {
            reqwest::Client::new()
                .patch(format!("{w_url}{first}"))
                .bearer_auth(token)
                .json(&json!({"active": false}))
                .send()
                .await
                .map(|r| r.status())
        })
    };
    // It waits for the lock (seen in pg_stat_activity) or, without the lock, is answered.
    let waiting = tsync_e2e::eventually(std::time::Duration::from_secs(10), || async {
        request.is_finished()
            || sqlx::query_scalar::<_, bool>(
                "select exists(select 1 from pg_stat_activity
                  where datname = current_database() and wait_event_type = 'Lock')",
            )
            .fetch_one(&w.db.pool)
            .await
            .unwrap_or(false)
    })
    .await;
    assert!(waiting.is_ok(), "the request neither waited nor finished");
    tx.commit().await?;
    let status = request.await??;
    assert_eq!(status, StatusCode::CONFLICT, "both admins were removed");
    let admins: i64 = sqlx::query_scalar(
        "select count(*) from users u join memberships m on m.user_id = u.id and m.active
         where u.tenant_id = $1 and u.active and m.role_id = $2",
    )
    .bind(t)
    .bind(acme.admin_role)
    .fetch_one(&w.db.pool)
    .await?;
    assert_eq!(admins, 1);
    Ok(())
}

/// Every key of `namespace` on the test Redis (every master of a cluster) with its content as
/// text: streams entry by entry, hashes, strings, sets, sorted sets and lists.
async fn redis_dump(namespace: &str) -> anyhow::Result<Vec<(String, String)>> {
    use fred::{prelude::*, types::scan::Scanner};
    use futures_util::TryStreamExt;
    let redis = tsync_e2e::redis_client(&tsync_e2e::redis_url()).await?;
    let pattern = format!("{namespace}*");
    let mut keys: Vec<String> = Vec::new();
    if redis.is_clustered() {
        let mut pages = redis.scan_cluster(pattern.as_str(), Some(500), None);
        while let Some(mut page) = pages.try_next().await? {
            if let Some(found) = page.take_results() {
                keys.extend(found.into_iter().filter_map(|k| k.into_string()));
            }
            page.next();
        }
    } else {
        let mut pages = redis.scan(pattern.as_str(), Some(500), None);
        while let Some(mut page) = pages.try_next().await? {
            if let Some(found) = page.take_results() {
                keys.extend(found.into_iter().filter_map(|k| k.into_string()));
            }
            page.next();
        }
    }
    keys.sort();
    keys.dedup();
    let mut out = Vec::new();
    for key in keys {
        let kind: String = redis.r#type(key.as_str()).await?;
        let content: fred::types::Value = match kind.as_str() {
            "stream" => redis.xrange(key.as_str(), "-", "+", None).await?,
            "hash" => redis.hgetall(key.as_str()).await?,
            "string" => redis.get(key.as_str()).await?,
            "set" => redis.smembers(key.as_str()).await?,
            "zset" => {
                redis
                    .zrange(key.as_str(), 0, -1, None, false, None, true)
                    .await?
            }
            "list" => redis.lrange(key.as_str(), 0, -1).await?,
            _ => fred::types::Value::Null,
        };
        out.push((key, format!("{content:?}")));
    }
    Ok(out)
}

/// A user with two addresses and two names, failed sign-ins with both addresses, webhook
/// deliveries of their events (one endpoint failing, so its deliveries stay pending), documents
/// in every app and a dead letter of their first event, erased: afterwards no value that
/// identified them is in a full dump of the wrapper's database, in any collection of any app's
/// database, or in any key of the namespace on Redis; the operation lists what went where.
#[tokio::test]
async fn an_erased_user_is_in_no_table_collection_delivery_dead_letter_or_stream()
-> anyhow::Result<()> {
    use std::time::Duration;
    use tsync_e2e::suite::Suite;
    let suite = Suite::start(|s| {
        s.webhook_insecure_hosts = vec!["127.0.0.1".into()];
        s.lifecycle_resend_secs = 1;
    })
    .await?;
    let w = &suite.wrapper;
    let acme = w
        .create_tenant_with("acme", &["crm", "hrms", "projects"])
        .await;
    w.fund_app(&acme, "crm", 100).await;
    w.fund_app(&acme, "projects", 100).await;
    let edge = suite.edge("acme");
    let t = acme.id;
    let tag = &Uuid::new_v4().simple().to_string()[..8];
    let (email1, email2) = (
        format!("ada.{tag}@acme.test"),
        format!("countess.{tag}@acme.test"),
    );
    let (name1, name2) = (format!("Ada Byron {tag}"), format!("Ada Lovelace {tag}"));
    let values = [&email1, &email2, &name1, &name2];

    // Webhooks: one endpoint that answers, one nobody listens on (its deliveries stay pending).
    let ok = tsync_e2e::serve(
        axum::Router::new().route("/hook", axum::routing::post(|| async { "ok" })),
    )
    .await?;
    let dead = format!("http://127.0.0.1:{}/hook", tsync_e2e::free_port()?);
    let types = json!([
        "user.created",
        "user.email_changed",
        "user.updated",
        "user.erased"
    ]);
    for url in [format!("{}/hook", ok.url()), dead] {
        let body = json!({"url": url, "eventTypes": types});
        let (status, reply) = call(
            w,
            Method::POST,
            &format!("/api/tenants/{t}/webhooks"),
            &acme.admin,
            body,
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{reply}");
    }

    // The user, then a second address and a second name.
    let (status, ada) = call(
        w,
        Method::POST,
        &format!("/api/tenants/{t}/users"),
        &acme.admin,
        json!({"email": email1, "fullName": name1}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{ada}");
    let ada: Uuid = serde_json::from_value(ada["id"].clone())?;
    let user = format!("/api/tenants/{t}/users/{ada}");
    for change in [json!({"email": email2}), json!({"fullName": name2})] {
        let (status, reply) = call(w, Method::PATCH, &user, &acme.admin, change).await;
        assert_eq!(status, StatusCode::OK, "{reply}");
    }
    // Failed sign-ins with both addresses.
    for email in [&email1, &email2] {
        let (status, _) = w
            .call(
                Method::POST,
                "/auth/login",
                None,
                Some(json!({"email": email, "password": "Wrong-Password-1", "tenant": "acme"})),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // And one typed where platform admins sign in (no tenant), in capitals.
    let (status, _) = w
        .call(
            Method::POST,
            "/auth/login",
            None,
            Some(json!({"email": email1.to_uppercase(), "password": "Wrong-Password-1"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Documents in every app.
    let posted = [
        (
            "/crm/accounts",
            json!({"name": "Analytical Engines", "value": 10, "ownerId": ada}),
        ),
        (
            "/hrms/employees",
            json!({"userId": ada, "department": "Mathematics", "salary": 1}),
        ),
        (
            "/projects/projects",
            json!({"name": "Notes on the Engine", "memberIds": [ada]}),
        ),
    ];
    for (path, body) in posted {
        let (status, reply) = edge
            .send(Method::POST, path, &acme.admin, Some(body))
            .await?;
        assert!(status.is_success(), "{path}: {status} {reply}");
    }
    for db in &suite.mongo_dbs {
        tsync_e2e::eventually(Duration::from_secs(20), || async {
            tsync_e2e::mongo_docs_with(db, &name2)
                .await
                .is_ok_and(|h| !h.is_empty())
        })
        .await?;
    }
    // A dead letter of the user's first event in the CRM's queue, as its consumer writes one.
    let keys = sync_sdk::contract::StreamKeys::new(
        w.state.settings.namespace.clone(),
        w.state.settings.partitions,
    )
    .expect("keys");
    let redis = tsync_e2e::redis_client(&tsync_e2e::redis_url()).await?;
    let stream = keys.events_for(t);
    let entry = tsync_e2e::eventually_some(Duration::from_secs(10), || async {
        use fred::prelude::*;
        let all: Vec<(String, std::collections::HashMap<String, String>)> =
            redis.xrange(stream.as_str(), "-", "+", None).await.ok()?;
        all.into_iter()
            .find(|(_, f)| f.get("envelope").is_some_and(|e| e.contains(&email1)))
    })
    .await?;
    let letter =
        sync_sdk::contract::dlq::DeadLetter::new(&stream, &entry.0, &entry.1, "a test's".into(), 5);
    sync_sdk::contract::dlq::push(&redis, &keys, "crm", &letter).await?;
    // Deliveries of the user's events exist, the failing endpoint's pending.
    tsync_e2e::eventually(Duration::from_secs(20), || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from webhook_deliveries where tenant_id = $1 and status = 'pending'
               and strpos(body, $2) > 0",
        )
        .bind(t)
        .bind(&email1)
        .fetch_one(&w.db.pool)
        .await
        .is_ok_and(|n| n > 0)
    })
    .await?;
    let before = redis_dump(keys.namespace()).await?;
    assert!(
        before.iter().any(|(_, c)| c.contains(&email1)),
        "the test put nothing on Redis"
    );

    // Erased, and confirmed by every app.
    let (status, operation) = call(
        w,
        Method::POST,
        &format!("{user}/erase"),
        &acme.admin,
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{operation}");
    let (done, _) = until_done(w, &acme.admin, &operation).await?;

    // Every store, scanned for every value.
    let dump = tokio::process::Command::new("pg_dump")
        .args(["--data-only", "--no-owner", "--dbname", &w.db.url])
        .output()
        .await?;
    assert!(
        dump.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let dump = String::from_utf8_lossy(&dump.stdout).to_lowercase();
    let redis_now = redis_dump(keys.namespace()).await?;
    for value in values {
        let v = value.to_lowercase();
        let lines: Vec<&str> = dump.lines().filter(|l| l.contains(&v)).collect();
        assert!(
            lines.is_empty(),
            "{value} in the wrapper's database: {lines:?}"
        );
        for db in &suite.mongo_dbs {
            let hits = tsync_e2e::mongo_docs_with(db, value).await?;
            assert!(hits.is_empty(), "{value} in {db}: {hits:?}");
        }
        let keys_with: Vec<&String> = redis_now
            .iter()
            .filter(|(_, c)| c.to_lowercase().contains(&v))
            .map(|(k, _)| k)
            .collect();
        assert!(keys_with.is_empty(), "{value} on Redis in {keys_with:?}");
    }
    // The proof lists what was removed where.
    let result = &done["result"];
    assert!(
        result["wrapper"]["webhook_deliveries"].as_u64() > Some(0),
        "{done}"
    );
    assert!(result["wrapper"]["outbox"].as_u64() > Some(0), "{done}");
    assert!(
        result["redis"]["eventEntriesDeleted"].as_u64() >= Some(3),
        "{done}"
    );
    assert_eq!(result["redis"]["deadLettersDeleted"], 1, "{done}");
    for app in ["crm", "hrms", "projects"] {
        let receipt = done["apps"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["app"] == app))
            .cloned()
            .unwrap_or_default();
        assert_eq!(receipt["status"], "done", "{app}: {done}");
    }
    Ok(())
}

/// A repeated export request while one is pending answers the pending one; the archive holds
/// the tenant's rows by an allow-list of columns: a secret column a later migration adds is
/// not exported, nor are webhook secrets, their key ids or password hashes.
#[tokio::test]
async fn an_export_is_single_and_hands_out_no_secret() -> anyhow::Result<()> {
    use tsync_e2e::wrapper_app::spawn_wrapper_with;
    let w = spawn_wrapper_with(|s| {
        s.lifecycle_resend_secs = 1;
        s.webhook_insecure_hosts = vec!["127.0.0.1".into()];
    })
    .await?;
    let acme = w.create_tenant("acme").await;
    let t = acme.id;
    let hook = json!({"url": "http://127.0.0.1:9/hook", "eventTypes": ["user.created"]});
    let (status, endpoint) = call(
        &w,
        Method::POST,
        &format!("/api/tenants/{t}/webhooks"),
        &acme.admin,
        hook,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{endpoint}");
    let webhook_secret = endpoint["secret"].as_str().unwrap_or_default().to_owned();
    // A column a later migration might add, holding a secret.
    let recovery = format!("RECOVERY-{}", Uuid::new_v4().simple());
    sqlx::query("alter table users add column recovery_code text")
        .execute(&w.db.pool)
        .await?;
    sqlx::query("update users set recovery_code = $2 where tenant_id = $1")
        .bind(t)
        .bind(&recovery)
        .execute(&w.db.pool)
        .await?;
    // An app that has not answered yet keeps the export pending.
    sqlx::query("insert into applications (name, display_name, public_path) values ('slow', 'Slow', '/slow/')")
        .execute(&w.db.pool)
        .await?;
    let export = format!("/api/tenants/{t}/export");
    let (first, one) = call(&w, Method::POST, &export, &acme.admin, json!({})).await;
    let (second, two) = call(&w, Method::POST, &export, &acme.admin, json!({})).await;
    assert_eq!(
        (first, second),
        (StatusCode::ACCEPTED, StatusCode::ACCEPTED),
        "{one} {two}"
    );
    assert_eq!(one["id"], two["id"], "a second export started");
    let exports: i64 = sqlx::query_scalar(
        "select count(*) from lifecycle_operations where tenant_id = $1 and kind = 'export_tenant'",
    )
    .bind(t)
    .fetch_one(&w.db.pool)
    .await?;
    assert_eq!(exports, 1);
    sqlx::query("delete from applications where name = 'slow'")
        .execute(&w.db.pool)
        .await?;
    let (_, location) = until_done(&w, &acme.admin, &one).await?;
    let archive = w
        .http
        .get(format!("{}{location}/archive", w.url))
        .bearer_auth(&acme.admin)
        .send()
        .await?;
    assert_eq!(archive.status(), StatusCode::OK);
    let files = tsync_e2e::untar(&archive.bytes().await?)?;
    assert!(
        files
            .get("wrapper/users.jsonl")
            .is_some_and(|u| u.contains("admin@acme.test")),
        "{:?}",
        files.keys()
    );
    assert!(
        files
            .get("wrapper/webhook_endpoints.jsonl")
            .is_some_and(|e| e.contains("127.0.0.1:9"))
    );
    for (path, text) in &files {
        for secret in [
            recovery.as_str(),
            "recovery_code",
            "password_hash",
            "secret",
            "kek_id",
            "test-kek",
            "domain_challenge",
            webhook_secret.as_str(),
        ] {
            assert!(!text.contains(secret), "{path} holds {secret}");
        }
    }
    Ok(())
}

/// An export requested before an erasure and built after it: the archive has the tenant's
/// records from every app, and nothing of the erased person.
#[tokio::test]
async fn an_export_overlapping_an_erasure_leaves_the_person_out() -> anyhow::Result<()> {
    use std::time::Duration;
    use tsync_e2e::suite::Suite;
    let suite = Suite::start(|s| s.lifecycle_resend_secs = 1).await?;
    let w = &suite.wrapper;
    let (acme, edge) = suite.tenant_with_a_crm_account("acme").await?;
    let t = acme.id;
    let tag = &Uuid::new_v4().simple().to_string()[..8];
    let (email, name) = (
        format!("grace.{tag}@acme.test"),
        format!("Grace Hopper {tag}"),
    );
    let (status, grace) = call(
        w,
        Method::POST,
        &format!("/api/tenants/{t}/users"),
        &acme.admin,
        json!({"email": email, "fullName": name}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{grace}");
    let grace = grace["id"].as_str().unwrap_or_default().to_owned();
    let (status, reply) = edge
        .send(
            Method::POST,
            "/hrms/employees",
            &acme.admin,
            Some(json!({"userId": grace, "department": "Navy", "salary": 1})),
        )
        .await?;
    assert!(status.is_success(), "{reply}");
    for db in &suite.mongo_dbs[..2] {
        tsync_e2e::eventually(Duration::from_secs(20), || async {
            tsync_e2e::mongo_docs_with(db, &email)
                .await
                .is_ok_and(|h| !h.is_empty())
        })
        .await?;
    }
    // The export first, the erasure right after.
    let (status, export) = call(
        w,
        Method::POST,
        &format!("/api/tenants/{t}/export"),
        &acme.admin,
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{export}");
    let (status, erase) = call(
        w,
        Method::POST,
        &format!("/api/tenants/{t}/users/{grace}/erase"),
        &acme.admin,
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{erase}");
    until_done(w, &acme.admin, &erase).await?;
    let (_, location) = until_done(w, &acme.admin, &export).await?;
    let archive = w
        .http
        .get(format!("{}{location}/archive", w.url))
        .bearer_auth(&acme.admin)
        .send()
        .await?;
    assert_eq!(archive.status(), StatusCode::OK);
    let files = tsync_e2e::untar(&archive.bytes().await?)?;
    // The tenant's records are there, from every app…
    let lines = |path: &str| files.get(path).map_or(0, |t| t.lines().count());
    assert_eq!(lines("crm/app.accounts.jsonl"), 1, "{:?}", files.keys());
    assert_eq!(lines("hrms/app.employees.jsonl"), 1, "{:?}", files.keys());
    assert!(lines("crm/users.jsonl") >= 1, "{:?}", files.keys());
    // …and nothing of the person.
    for (path, text) in &files {
        for value in [&email, &name] {
            assert!(
                !text.to_lowercase().contains(&value.to_lowercase()),
                "{path} holds {value}"
            );
        }
    }
    Ok(())
}

/// An export larger than one stored chunk (1 MiB) is stored in several and downloaded whole,
/// its length announced, every file intact.
#[tokio::test]
async fn a_large_export_is_stored_and_streamed_in_chunks() -> anyhow::Result<()> {
    use tsync_e2e::wrapper_app::spawn_wrapper_with;
    let w = spawn_wrapper_with(|s| s.lifecycle_resend_secs = 1).await?;
    let acme = w.create_tenant("acme").await;
    let t = acme.id;
    let users = 6_000;
    sqlx::query(
        "insert into users (id, tenant_id, email, full_name, email_verified, active,
                            is_platform_admin, version, created_at, updated_at)
         select gen_random_uuid(), $1, 'user' || g || '@acme.test', 'A Rather Long Name For Bulk ' || g,
                false, true, false, 1, now(), now()
         from generate_series(1, $2) g",
    )
    .bind(t)
    .bind(users)
    .execute(&w.db.pool)
    .await?;
    let (status, op) = call(
        &w,
        Method::POST,
        &format!("/api/tenants/{t}/export"),
        &acme.admin,
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{op}");
    let (done, location) = until_done(&w, &acme.admin, &op).await?;
    assert!(
        done["result"]["chunks"].as_u64() >= Some(2),
        "{}",
        done["result"]
    );
    let response = w
        .http
        .get(format!("{}{location}/archive", w.url))
        .bearer_auth(&acme.admin)
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    let announced = response.content_length();
    let bytes = response.bytes().await?;
    assert_eq!(announced, Some(bytes.len() as u64));
    assert_eq!(
        done["result"]["archiveBytes"].as_u64(),
        Some(bytes.len() as u64)
    );
    let files = tsync_e2e::untar(&bytes)?;
    let lines = files
        .get("wrapper/users.jsonl")
        .map_or(0, |f| f.lines().count());
    assert_eq!(lines, users as usize + 1, "{:?}", files.keys());
    Ok(())
}
