//! `apps/projects`, the app built only on the SDK's public surface, end to end through the real
//! nginx: lazy load, a paid create charged once under retries, the tenant's price, people as the
//! synced copy has them (an email change, a deactivated member reported and cleared, a deleted
//! one), and the wrapper refusing an app that names its own price or an undeclared operation.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sync_sdk::fullsync::OrphanReason;
use tsync_e2e::{suite::Suite, wrapper_app::TestTenant, *};

async fn projects_balance(suite: &Suite, t: &TestTenant) -> i64 {
    let body = suite
        .wrapper
        .get_ok(&format!("/api/credits/balance?tenantId={}", t.id), &t.admin)
        .await;
    body["balances"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["scope"] == "app:projects"))
        .and_then(|b| b["balance"].as_i64())
        .unwrap_or(0)
}

async fn projects_charges(suite: &Suite, t: &TestTenant) -> i64 {
    sqlx::query_scalar(
        "select count(*) from credit_ledger where tenant_id = $1 and kind = 'consumption'
           and application = 'projects'",
    )
    .bind(t.id)
    .fetch_one(&suite.wrapper.db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_paid_project_is_created_once_under_retries_at_the_tenants_price() -> anyhow::Result<()> {
    let suite = Suite::start(|_| {}).await?;
    let wrapper = &suite.wrapper;
    let acme = wrapper
        .create_tenant_with("acme", &["crm", "hrms", "projects"])
        .await;
    let (ada, _) = wrapper.create_member(&acme, "ada@acme.test").await;
    wrapper.fund_app(&acme, "projects", 1000).await;
    let edge = suite.edge(&acme.subdomain);

    // First visit: the tenant is lazy-loaded; its people are listed from the synced copy.
    let (status, people) = edge
        .send_keyed(Method::GET, "/projects/people", &acme.admin, None, None)
        .await?;
    assert_eq!(status, StatusCode::OK, "{people}");
    let emails: Vec<&str> = people["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["email"].as_str())
        .collect();
    assert!(emails.contains(&"ada@acme.test"), "{people}");

    // Five concurrent sends of one create (a client retrying): one project, one charge of 20.
    let body = json!({"name": "Apollo", "memberIds": [ada]});
    let sends = (0..5).map(|_| {
        edge.send_keyed(
            Method::POST,
            "/projects/projects",
            &acme.admin,
            Some(body.clone()),
            Some("apollo-1"),
        )
    });
    let results = futures_util::future::join_all(sends).await;
    let statuses: Vec<StatusCode> = results
        .iter()
        .map(|r| r.as_ref().map(|(s, _)| *s).unwrap())
        .collect();
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::CREATED || *s == StatusCode::OK),
        "{statuses:?}"
    );
    let ids: Vec<&Value> = results
        .iter()
        .map(|r| &r.as_ref().unwrap().1["id"])
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "one project: {ids:?}");
    assert_eq!(projects_charges(&suite, &acme).await, 1);
    assert_eq!(projects_balance(&suite, &acme).await, 980);
    // The same key with another body is a conflict naming the header, and charges nothing.
    let (status, problem) = edge
        .send_keyed(
            Method::POST,
            "/projects/projects",
            &acme.admin,
            Some(json!({"name": "Zeus"})),
            Some("apollo-1"),
        )
        .await?;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(problem["field"], "idempotency-key");
    assert_eq!(projects_balance(&suite, &acme).await, 980);

    // The tenant's credit config sets the price; the app sends only the operation.
    wrapper
        .send_ok(
            Method::PUT,
            &format!("/api/tenants/{}/credit-configs", acme.id),
            &wrapper.root,
            json!({"application": "projects", "operationCode": "projects.create", "cost": 7}),
        )
        .await;
    let (status, _) = edge
        .send_keyed(
            Method::POST,
            "/projects/projects",
            &acme.admin,
            Some(json!({"name": "Gemini"})),
            None,
        )
        .await?;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(projects_balance(&suite, &acme).await, 973);

    // A member who is not a live user of the tenant is refused, naming the field; nothing
    // is charged.
    let stranger = uuid::Uuid::now_v7();
    let (status, problem) = edge
        .send_keyed(
            Method::POST,
            "/projects/projects",
            &acme.admin,
            Some(json!({"name": "Nope", "memberIds": [stranger]})),
            None,
        )
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert_eq!(problem["field"], "memberIds");
    assert_eq!(projects_charges(&suite, &acme).await, 2);

    // The app cannot name its own amount, nor charge an operation it never declared.
    let token = service_token(&suite, "projects").await;
    for (body, field) in [
        (
            json!({"tenantId": acme.id, "application": "projects", "operationCode": "projects.create",
                   "creditAmount": 1, "operationId": "cheap"}),
            "creditAmount",
        ),
        (
            json!({"tenantId": acme.id, "application": "projects", "operationCode": "projects.export",
                   "operationId": "undeclared"}),
            "operationCode",
        ),
    ] {
        let (status, problem) = wrapper
            .call(
                Method::POST,
                "/api/credits/consume",
                Some(&token),
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
        assert_eq!(problem["field"], field);
    }
    assert_eq!(projects_charges(&suite, &acme).await, 2);

    // The dashboard links to the registered apps the tenant has the feature for (acme has crm,
    // hrms and projects: an app serves only tenants with its feature), with their registered
    // titles; the projects dashboard lists Apollo.
    let (status, html) = edge.page("/projects/", &acme.admin).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains(r#"<a href="/crm/">CRM</a>"#), "{html}");
    assert!(html.contains(r#"<a href="/hrms/">HRMS</a>"#), "{html}");
    assert!(html.contains(r#"<a href="/projects/">"#), "{html}");
    assert!(html.contains("Apollo"), "{html}");
    Ok(())
}

#[tokio::test]
async fn project_members_follow_the_wrapper_deactivated_reactivated_and_deleted()
-> anyhow::Result<()> {
    let suite = Suite::start(|_| {}).await?;
    let wrapper = &suite.wrapper;
    let acme = wrapper
        .create_tenant_with("acme", &["crm", "hrms", "projects"])
        .await;
    let (ada, _) = wrapper.create_member(&acme, "ada@acme.test").await;
    let (bob, _) = wrapper.create_member(&acme, "bob@acme.test").await;
    wrapper.fund_app(&acme, "projects", 100).await;
    let edge = suite.edge(&acme.subdomain);
    let (status, project) = edge
        .send_keyed(
            Method::POST,
            "/projects/projects",
            &acme.admin,
            Some(json!({"name": "Apollo", "memberIds": [ada, bob]})),
            None,
        )
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{project}");
    let path = format!("/projects/projects/{}", project["id"].as_str().unwrap());
    let member = |p: &Value, id: uuid::Uuid| {
        p["members"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["id"] == json!(id)).cloned())
            .unwrap_or(Value::Null)
    };
    let users = format!("/api/tenants/{}/users", acme.id);
    let admin = acme.admin.as_str();
    let read_until = |want: &'static str, id: uuid::Uuid, field: &'static str| {
        let edge = &edge;
        let path = &path;
        async move {
            eventually_some(Duration::from_secs(10), || async move {
                let (_, p) = edge
                    .send_keyed(Method::GET, path, admin, None, None)
                    .await
                    .ok()?;
                let m = member(&p, id);
                (m[field] == want).then_some(m)
            })
            .await
        }
    };

    // An email change at the wrapper shows in the project.
    wrapper
        .send_ok(
            Method::PATCH,
            &format!("{users}/{ada}"),
            &acme.admin,
            json!({"email": "ada@king.test"}),
        )
        .await;
    read_until("ada@king.test", ada, "email").await?;

    // Deactivated: reported as such (kept on the project, no email shown)...
    wrapper
        .send_ok(
            Method::PATCH,
            &format!("{users}/{ada}"),
            &acme.admin,
            json!({"active": false}),
        )
        .await;
    let m = read_until("deactivated", ada, "status").await?;
    assert_eq!(m["email"], Value::Null);
    // ...reported and marked by the nightly integrity pass...
    let report = suite.projects_full_sync.run_once(|_, _| {}).await?;
    assert_eq!(
        orphans(&report),
        vec![(ada, OrphanReason::Inactive)],
        "{report:?}"
    );
    let (_, p) = edge
        .send_keyed(Method::GET, &path, admin, None, None)
        .await?;
    assert_eq!(p["orphaned"], json!({ada.to_string(): "inactive"}));
    // ...and cleared once reactivated (shown live at once, unmarked by the next pass).
    wrapper
        .send_ok(
            Method::PATCH,
            &format!("{users}/{ada}"),
            &acme.admin,
            json!({"active": true}),
        )
        .await;
    read_until("live", ada, "status").await?;
    let report = suite.projects_full_sync.run_once(|_, _| {}).await?;
    assert!(report.orphans.is_empty(), "{report:?}");
    let (_, p) = edge
        .send_keyed(Method::GET, &path, admin, None, None)
        .await?;
    assert_eq!(p["orphaned"], json!({}));

    // Deleted: reported as deleted, shown as "[Deleted User]".
    let (status, body) = wrapper
        .call(
            Method::DELETE,
            &format!("{users}/{bob}"),
            Some(&acme.admin),
            None,
        )
        .await;
    assert!(status.is_success(), "{status} {body}");
    let m = read_until("deleted", bob, "status").await?;
    assert_eq!(m["name"], "[Deleted User]");
    let report = suite.projects_full_sync.run_once(|_, _| {}).await?;
    assert_eq!(
        orphans(&report),
        vec![(bob, OrphanReason::Deleted)],
        "{report:?}"
    );
    let (_, p) = edge
        .send_keyed(Method::GET, &path, admin, None, None)
        .await?;
    assert_eq!(p["orphaned"], json!({bob.to_string(): "deleted"}));
    // `tsync full-sync` runs the same checks: the ones the app declared in its manifest, read
    // back from the wrapper.
    let report = cli_full_sync(&suite).await?;
    assert_eq!(
        orphans(&report),
        vec![(bob, OrphanReason::Deleted)],
        "{report:?}"
    );
    // Typed reads of the synced copy: the tenant's roles, a user's memberships and permissions.
    let store = sync_sdk::store::mongo::MongoStore::new(suite.projects_db.clone());
    let roles = sync_sdk::store::roles(&store, acme.id, None, 50).await?;
    let admin_role = roles
        .iter()
        .find(|r| r.id == acme.admin_role)
        .unwrap_or_else(|| panic!("the admin role is synced: {roles:?}"));
    assert!(!admin_role.deleted);
    let held = sync_sdk::store::memberships(&store, acme.id, acme.admin_id).await?;
    assert_eq!(
        held.iter().map(|m| m.role_id).collect::<Vec<_>>(),
        vec![acme.admin_role]
    );
    assert!(
        sync_sdk::store::memberships(&store, acme.id, ada)
            .await?
            .is_empty()
    );
    // The SDK answers the app's liveness check, through the edge too.
    let (status, _) = edge
        .send_keyed(Method::GET, "/projects/health", &acme.admin, None, None)
        .await?;
    assert_eq!(status, StatusCode::OK);
    Ok(())
}

async fn service_token(suite: &Suite, app: &str) -> String {
    let (status, body) = suite
        .wrapper
        .call(
            Method::POST,
            "/auth/service-token",
            None,
            Some(json!({"clientId": app, "clientSecret": suite::SERVICE_SECRET})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["accessToken"].as_str().unwrap().to_owned()
}

/// `LoadedTenant` makes lazy loading and degradation the default: with the wrapper down a
/// tenant never loaded is refused with 503 and `Retry-After`, and a loaded one is still served,
/// marked degraded (once the app has seen the wrapper fail, as the loader reports it).
#[tokio::test]
async fn with_the_wrapper_down_a_loaded_tenant_is_served_degraded() -> anyhow::Result<()> {
    let suite = Suite::start(|_| {}).await?;
    let wrapper = &suite.wrapper;
    let acme = wrapper
        .create_tenant_with("acme", &["crm", "hrms", "projects"])
        .await;
    let globex = wrapper
        .create_tenant_with("globex", &["crm", "hrms", "projects"])
        .await;
    let http = reqwest::Client::new();
    let get = |t: &TestTenant| {
        http.get(format!("{}/projects/projects", suite.nginx.url()))
            .header("host", format!("{}.yourapp.test", t.subdomain))
            .bearer_auth(&t.admin)
            .send()
    };
    let first = get(&acme).await?;
    assert_eq!(first.status(), StatusCode::OK);
    assert!(first.headers().get("x-tsync-degraded").is_none());

    wrapper.stop();
    // The first visit of globex needs the wrapper: refused, and the app now knows it is down.
    let refused = get(&globex).await?;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().get("retry-after").is_some());
    let served = get(&acme).await?;
    assert_eq!(served.status(), StatusCode::OK);
    assert_eq!(
        served
            .headers()
            .get("x-tsync-degraded")
            .map(|v| v.as_bytes()),
        Some(&b"wrapper-unreachable"[..]),
        "served from the store, marked degraded"
    );
    Ok(())
}

/// A full sync built the way `tsync full-sync` builds it: the app's manifest fetched from the
/// wrapper with its service credentials, its declared checks over its database.
async fn cli_full_sync(suite: &Suite) -> anyhow::Result<sync_sdk::fullsync::Report> {
    use std::sync::Arc;
    use sync_sdk::{
        fullsync::{FieldReferences, FullSync},
        loader::Loader,
        store::mongo::MongoStore,
        wrapper_client::{WrapperClient, WrapperConfig},
    };
    let client = WrapperClient::new(WrapperConfig {
        base_url: suite.wrapper.url.clone(),
        client_id: "projects".into(),
        client_secret: suite::SERVICE_SECRET.into(),
        page_size: 1000,
        timeout: Duration::from_secs(10),
    });
    let manifest = client
        .manifest("projects")
        .await?
        .ok_or_else(|| anyhow::anyhow!("projects is registered"))?;
    assert_eq!(manifest.references.len(), 2, "owner and members");
    let checks = FieldReferences::declared(&suite.projects_db, &manifest);
    let store = Arc::new(MongoStore::new(suite.projects_db.clone()));
    let full = FullSync::new(Loader::new(client, store.clone()), store, Arc::new(checks));
    Ok(full.run_once(|_, _| {}).await?)
}

/// Who a full sync found orphaned, and why.
fn orphans(report: &sync_sdk::fullsync::Report) -> Vec<(uuid::Uuid, OrphanReason)> {
    report
        .orphans
        .iter()
        .map(|o| (o.reference.user_id, o.reason))
        .collect()
}
