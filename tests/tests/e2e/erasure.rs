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
    sqlx::query(wrapper::domain::users::ADMIN_LOCK)
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
