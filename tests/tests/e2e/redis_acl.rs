//! The suite on Redis ACL users (`wrapper redis-acl apply`): every app and the wrapper run on
//! a user of their own and everything works, while each app is refused (NOPERM) everything
//! beyond its role. Run on the single server and, in `scripts/test`, on the Redis Cluster.

use std::time::Duration;

use fred::prelude::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use sync_sdk::contract::StreamKeys;
use tsync_e2e::{
    suite::{Suite, acl_url},
    *,
};
use uuid::Uuid;

/// Whether `result` is Redis's refusal for lack of permission.
fn refused<T: std::fmt::Debug>(result: Result<T, Error>) -> bool {
    matches!(&result, Err(e) if e.details().contains("NOPERM"))
}

#[tokio::test]
async fn apps_on_their_own_redis_users_work_end_to_end_and_are_refused_beyond_their_role()
-> anyhow::Result<()> {
    let suite = Suite::start_with_redis_users(|_| {}).await?;
    let w = &suite.wrapper;
    let keys: StreamKeys = w.state.stream_keys.clone();
    let namespace = keys.namespace().to_owned();

    // Everything still works: lazy load, the fast path (the app's own credit stream, charged by
    // the wrapper), events applied, status reports.
    let (acme, edge) = suite.tenant_with_a_crm_account("acme").await?;
    eventually(Duration::from_secs(20), || async {
        let ledger = w
            .get_ok(
                &format!("/api/credits/ledger?tenantId={}&kind=consumption", acme.id),
                &acme.admin,
            )
            .await;
        ledger["items"].as_array().is_some_and(|i| i.len() == 1)
    })
    .await?;
    let users = format!("/api/tenants/{}/users", acme.id);
    w.send_ok(
        Method::PATCH,
        &format!("{users}/{}", acme.admin_id),
        &acme.admin,
        json!({"fullName": "Renamed Admin"}),
    )
    .await;
    eventually(Duration::from_secs(10), || async {
        edge.send(Method::GET, "/crm/accounts", &acme.admin, None)
            .await
            .is_ok_and(|(_, list)| list.to_string().contains("Renamed Admin"))
    })
    .await?;
    let (status, _) = edge
        .send(Method::GET, "/hrms/employees", &acme.admin, None)
        .await?;
    assert_eq!(status, StatusCode::OK);
    // The lifecycle: an erasure is carried out and confirmed by every app.
    w.erase_a_new_user(&acme).await?;

    // As the CRM's user: its own keys yes, nothing else.
    let crm = wrapper::startup::connect_redis(&acl_url(&namespace, "crm")).await?;
    let p = keys.partition_of(acme.id);
    let entry = vec![
        ("tenantId", acme.id.to_string()),
        ("kind", "purge_tenant".into()),
    ];
    assert!(refused(
        crm.xadd::<String, _, _, _, _>(keys.events(p), false, None, "*", entry.clone())
            .await
    ));
    assert!(refused(
        crm.xadd::<String, _, _, _, _>(keys.lifecycle(), false, None, "*", entry.clone())
            .await
    ));
    assert!(refused(
        crm.xadd::<String, _, _, _, _>(keys.credit_stream(p), false, None, "*", entry.clone())
            .await
    ));
    assert!(refused(
        crm.xadd::<String, _, _, _, _>(
            keys.app_credit_stream(p, "hrms"),
            false,
            None,
            "*",
            entry.clone()
        )
        .await
    ));
    assert!(refused(
        crm.hset::<i64, _, _>(keys.status("hrms"), ("forged", "{}"))
            .await
    ));
    assert!(refused(
        crm.set::<(), _, _>(keys.revoked_session("x"), "1", None, None, false)
            .await
    ));
    assert!(refused(
        crm.set::<(), _, _>(
            keys.credit_balance(acme.id, "hrms"),
            "1000000",
            None,
            None,
            false
        )
        .await
    ));
    // Another app's operation records, even under an operation id made to look like its own.
    let sneaky = keys.credit_operation(acme.id, "hrms", &format!("x:op:crm:{}", Uuid::now_v7()));
    assert!(refused(
        crm.set::<(), _, _>(sneaky, "{}", None, None, false).await
    ));
    assert!(refused(crm.del::<i64, _>(keys.events(p)).await));
    assert!(refused(
        crm.xtrim::<i64, _, _>(keys.events(p), ("MAXLEN", 0)).await
    ));
    assert!(refused(crm.flushall::<()>(false).await));
    // Its own: allowed.
    let _: i64 = crm.hset(keys.status("crm"), ("probe", "{}")).await?;
    let _: i64 = crm.hdel(keys.status("crm"), "probe").await?;
    let len: u64 = crm.xlen(keys.events(p)).await?;
    assert!(len > 0);
    crm.quit().await?;

    // The wrapper's own user is not an administrator either.
    let wrapper_user = wrapper::startup::connect_redis(&acl_url(&namespace, "wrapper")).await?;
    assert!(refused(wrapper_user.flushall::<()>(false).await));
    assert!(refused(
        wrapper_user
            .set::<(), _, _>("another-namespace:key", "1", None, None, false)
            .await
    ));
    wrapper_user.quit().await?;

    drop(suite);
    wrapper::redis_acl::remove(&redis_url(), &keys, &["wrapper", "crm", "hrms", "projects"])
        .await?;
    Ok(())
}
