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
