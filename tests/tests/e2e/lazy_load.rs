//! Lazy loading against the real wrapper (with its relay), Redis and Postgres: the snapshot to
//! stream handoff loses nothing, and concurrent first visits share one snapshot fetch.

use std::{sync::Arc, time::Duration};

use reqwest::Method;
use serde_json::json;
use sync_sdk::{
    consumer::{Consumer, ConsumerConfig, NoHandler},
    contract::StreamKeys,
    fullsync::{FullSync, Integrity, NoIntegrity, Orphan, OrphanReason, Reference},
    loader::{Availability, Loader},
    store::{EntityKind, TenantStore, postgres::PostgresStore},
    wrapper_client::{LoadError, WrapperClient, WrapperConfig},
};
use tokio_util::sync::CancellationToken;
use tsync_e2e::{wrapper_app::*, *};
use uuid::Uuid;

const SECRET: &str = "crm-service-secret-for-tests";

struct App {
    wrapper: TestApp,
    store: Arc<PostgresStore>,
    store_db: sqlx::PgPool,
    loader: Arc<Loader<PostgresStore>>,
    cancel: CancellationToken,
    consumer: tokio::task::JoinHandle<Result<(), fred::error::Error>>,
}

/// The CRM's client of `base_url` (its service credentials), `page_size` users a page.
fn crm_client(base_url: String, page_size: u32, timeout: Duration) -> WrapperClient {
    WrapperClient::new(WrapperConfig {
        base_url,
        client_id: "crm".into(),
        client_secret: SECRET.into(),
        page_size,
        timeout,
    })
}

/// A wrapper the CRM may call (its service client registered), a fresh PostgreSQL store for
/// the CRM's side (and its database, kept by the caller), and the wrapper's stream keys.
async fn crm_side() -> anyhow::Result<(TestApp, TestDatabase, Arc<PostgresStore>, StreamKeys)> {
    let wrapper = spawn_wrapper().await?;
    wrapper::startup::upsert_service_client(&wrapper.db.pool, "crm", SECRET).await?;
    let db = fresh_database().await?;
    let store = Arc::new(PostgresStore::new(db.pool.clone()));
    store.init().await?;
    let keys = StreamKeys::new(
        wrapper.state.settings.namespace.clone(),
        wrapper.state.settings.partitions,
    )
    .unwrap();
    Ok((wrapper, db, store, keys))
}

async fn app_with_consumer(page_size: u32) -> anyhow::Result<App> {
    app_with(page_size, Duration::from_secs(900)).await
}

async fn app_with(page_size: u32, staleness: Duration) -> anyhow::Result<App> {
    let (wrapper, db, store, keys) = crm_side().await?;
    let client = crm_client(wrapper.url.clone(), page_size, Duration::from_secs(10));
    let loader = Loader::with_staleness(client, store.clone(), staleness)
        .with_resync_backoff(Duration::from_millis(100), Duration::from_millis(500));
    let mut config = ConsumerConfig::new("crm", keys);
    config.block = Duration::from_millis(200);
    config.gap_wait = Duration::from_millis(300);
    config.resync = Some(loader.resync_hook());
    let cancel = CancellationToken::new();
    let consumer = Consumer::new(
        redis_client(&redis_url()).await?,
        store.clone(),
        Arc::new(NoHandler),
        config,
    );
    consumer.ensure_groups().await?;
    let consumer = tokio::spawn(consumer.run(cancel.clone()));
    Ok(App {
        wrapper,
        store,
        store_db: db.pool.clone(),
        loader,
        cancel,
        consumer,
    })
}

/// Every user, role and membership of the tenant, and the tenant itself, has the wrapper's
/// version in the app's store, with the same state.
async fn store_matches_wrapper(app: &App, tenant: Uuid) -> bool {
    store_matches(&app.wrapper, app.store.as_ref(), tenant).await
}

async fn store_matches<S: TenantStore>(wrapper: &TestApp, store: &S, tenant: Uuid) -> bool {
    let db = &wrapper.db.pool;
    let users: Vec<(Uuid, i64, String, String, bool)> = sqlx::query_as(
        "select id, version, email, full_name, active from users where tenant_id = $1",
    )
    .bind(tenant)
    .fetch_all(db)
    .await
    .unwrap();
    for (id, version, email, name, active) in users {
        match store.get(EntityKind::User, tenant, id).await {
            Ok(Some(v))
                if v.version == version
                    && v.state["email"] == email.as_str()
                    && v.state["fullName"] == name.as_str()
                    && v.state["active"] == active => {}
            _ => return false,
        }
    }
    for (table, kind) in [
        ("roles", EntityKind::Role),
        ("memberships", EntityKind::Membership),
    ] {
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(&format!(
            "select id, version from {table} where tenant_id = $1"
        ))
        .bind(tenant)
        .fetch_all(db)
        .await
        .unwrap();
        for (id, version) in rows {
            if store
                .get(kind, tenant, id)
                .await
                .ok()
                .flatten()
                .map(|v| v.version)
                != Some(version)
            {
                return false;
            }
        }
    }
    let tenant_version: i64 = sqlx::query_scalar("select version from tenants where id = $1")
        .bind(tenant)
        .fetch_one(db)
        .await
        .unwrap();
    store
        .get(EntityKind::Tenant, tenant, tenant)
        .await
        .ok()
        .flatten()
        .map(|v| v.version)
        == Some(tenant_version)
}

#[tokio::test]
async fn a_tenant_loaded_while_500_changes_are_written_ends_equal_to_the_wrapper()
-> anyhow::Result<()> {
    // Small pages, so the snapshot itself spans several reads while writes go on.
    let app = app_with_consumer(7).await?;
    let t = app.wrapper.create_tenant("race").await;
    let base = format!("/api/tenants/{}", t.id);
    let mut users = Vec::new();
    for i in 0..20 {
        let body = app
            .wrapper
            .send_ok(
                Method::POST,
                &format!("{base}/users"),
                &t.admin,
                json!({"email": format!("u{i}@race.test"), "fullName": "U"}),
            )
            .await;
        users.push(body["id"].as_str().unwrap().to_owned());
    }
    // 4 writers, 119 updates each (plus the 20 creations and the tenant's own 4 events: 500).
    let mut writers = Vec::new();
    for w in 0..4 {
        let (http, url, token, users) = (
            app.wrapper.http.clone(),
            app.wrapper.url.clone(),
            t.admin.clone(),
            users.clone(),
        );
        let base = base.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..119 {
                let user = &users[(w * 7 + i) % users.len()];
                let resp = http
                    .patch(format!("{url}{base}/users/{user}"))
                    .bearer_auth(&token)
                    .json(&json!({"fullName": format!("W{w} change {i}")}))
                    .send()
                    .await?;
                anyhow::ensure!(
                    resp.status().is_success(),
                    "update failed: {}",
                    resp.status()
                );
            }
            anyhow::Ok(())
        }));
    }
    // The first visit comes in the middle of the writes.
    eventually(Duration::from_secs(30), || async {
        app.wrapper.outbox(t.id).await.len() >= 150
    })
    .await?;
    let loaded = app.loader.ensure_tenant(t.id).await?;
    assert!(
        loaded.snapshot_seq >= 150,
        "loaded mid-stream at seq {}",
        loaded.snapshot_seq
    );
    for w in writers {
        w.await??;
    }
    assert_eq!(app.wrapper.outbox(t.id).await.len(), 500);
    eventually(Duration::from_secs(60), || {
        store_matches_wrapper(&app, t.id)
    })
    .await?;
    // Not only the end state: every event after the snapshot's watermark was applied from the
    // stream (none was dropped in the handoff and papered over by later full-state events).
    let after: Vec<Uuid> = sqlx::query_scalar(
        "select event_id from outbox where tenant_id = $1 and seq > $2 order by seq",
    )
    .bind(t.id)
    .bind(loaded.snapshot_seq)
    .fetch_all(&app.wrapper.db.pool)
    .await?;
    assert!(!after.is_empty());
    for event_id in after {
        assert!(
            app.store.is_processed(event_id).await?,
            "event {event_id} after the watermark was skipped"
        );
    }
    app.cancel.cancel();
    Ok(())
}

#[tokio::test]
async fn a_hundred_concurrent_first_visits_fetch_one_snapshot() -> anyhow::Result<()> {
    let app = app_with_consumer(1000).await?;
    let t = app.wrapper.create_tenant("crowd").await;
    let visits = (0..100).map(|_| app.loader.ensure_tenant(t.id));
    let results = futures_util::future::join_all(visits).await;
    assert!(
        results.iter().all(Result::is_ok),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    let fetches: i64 = sqlx::query_scalar(
        "select count(*) from audit_log where tenant_id = $1 and action = 'snapshot.export'",
    )
    .bind(t.id)
    .fetch_one(&app.wrapper.db.pool)
    .await?;
    assert_eq!(fetches, 1, "one snapshot for 100 first visits");
    assert!(store_matches_wrapper(&app, t.id).await);
    // Another visit does not fetch again.
    app.loader.ensure_tenant(t.id).await?;
    let unknown = app.loader.ensure_tenant(Uuid::now_v7()).await;
    assert!(matches!(unknown, Err(LoadError::NotFound)), "{unknown:?}");
    app.cancel.cancel();
    Ok(())
}

#[tokio::test]
async fn only_app_service_tokens_read_snapshots() -> anyhow::Result<()> {
    let wrapper = spawn_wrapper().await?;
    let t = wrapper.create_tenant("guarded").await;
    let path = format!("/api/sync/tenant/{}", t.id);
    for token in [None, Some(t.admin.as_str()), Some(wrapper.root.as_str())] {
        let (status, _) = wrapper.call(Method::GET, &path, token, None).await;
        assert!(status == 401 || status == 403, "{status}");
    }
    Ok(())
}

async fn snapshot_fetches(app: &App, tenant: Uuid) -> i64 {
    sqlx::query_scalar(
        "select count(*) from audit_log where tenant_id = $1 and action = 'snapshot.export'",
    )
    .bind(tenant)
    .fetch_one(&app.wrapper.db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn full_sync_repairs_exactly_the_drifted_tenant() -> anyhow::Result<()> {
    let app = app_with_consumer(1000).await?;
    let mut tenants = Vec::new();
    for name in ["drift-a", "drift-b", "drift-c"] {
        let t = app.wrapper.create_tenant(name).await;
        app.loader.ensure_tenant(t.id).await?;
        tenants.push(t);
    }
    for t in &tenants {
        eventually(Duration::from_secs(20), || {
            store_matches_wrapper(&app, t.id)
        })
        .await?;
    }
    let full = FullSync::new(app.loader.clone(), app.store.clone(), Arc::new(NoIntegrity));
    let clean = full.run_once(|_, _| {}).await?;
    assert!(clean.repaired.is_empty(), "nothing drifted yet: {clean:?}");

    // Drift: an older version of b's admin, written straight into the app's store.
    let b = &tenants[1];
    sqlx::query(
        "update tsync_entities set version = version - 1, state = jsonb_set(state, '{fullName}', '\"drifted\"')
         where tenant_id = $1 and kind = 'users' and id = $2",
    )
    .bind(b.id)
    .bind(b.admin_id)
    .execute(&app.store_db)
    .await?;
    assert!(!store_matches_wrapper(&app, b.id).await);
    let before: Vec<i64> =
        futures_util::future::join_all(tenants.iter().map(|t| snapshot_fetches(&app, t.id))).await;

    let progress = std::sync::Mutex::new(Vec::new());
    let report = full
        .run_once(|done, total| progress.lock().unwrap().push((done, total)))
        .await?;
    assert_eq!(report.tenants_checked, 3);
    assert_eq!(report.repaired, vec![b.id]);
    assert!(report.failed.is_empty());
    assert_eq!(progress.lock().unwrap().last(), Some(&(3, 3)));
    let after: Vec<i64> =
        futures_util::future::join_all(tenants.iter().map(|t| snapshot_fetches(&app, t.id))).await;
    assert_eq!(
        after,
        vec![before[0], before[1] + 1, before[2]],
        "only b was fetched again"
    );
    assert!(store_matches_wrapper(&app, b.id).await);
    app.cancel.cancel();
    Ok(())
}

/// The app's references for the integrity pass: accounts owned by users.
struct Accounts(Vec<Reference>, std::sync::Mutex<Vec<Orphan>>);

impl Integrity for Accounts {
    async fn references(&self, _: Uuid) -> Vec<Reference> {
        self.0.clone()
    }
    async fn on_orphan(&self, orphan: &Orphan) {
        self.1.lock().unwrap().push(orphan.clone());
    }
}

#[tokio::test]
async fn a_lost_delete_is_repaired_by_the_full_sync_and_the_orphan_reported() -> anyhow::Result<()>
{
    let app = app_with_consumer(1000).await?;
    let t = app.wrapper.create_tenant("lost").await;
    let (gone, _) = app.wrapper.create_member(&t, "gone@lost.test").await;
    app.loader.ensure_tenant(t.id).await?;
    eventually(Duration::from_secs(20), || {
        store_matches_wrapper(&app, t.id)
    })
    .await?;

    // The app stops reading; the user is deleted upstream; the event is lost before the app
    // reads it.
    app.cancel.cancel();
    let App { consumer, .. } = &app;
    while !consumer.is_finished() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.wrapper
        .send_ok(
            Method::DELETE,
            &format!("/api/tenants/{}/users/{gone}", t.id),
            &t.admin,
            json!(null),
        )
        .await;
    let deleted = app.wrapper.outbox(t.id).await.pop().unwrap();
    assert_eq!(deleted["eventType"], "user.deleted");
    let redis = redis_client(&redis_url()).await?;
    let keys = StreamKeys::new(app.wrapper.state.settings.namespace.clone(), 8).unwrap();
    let stream = keys.events_for(t.id);
    let entry_id = eventually_some(Duration::from_secs(20), || async {
        read_all_events(&redis, &keys)
            .await
            .ok()?
            .into_iter()
            .find(|(_, e)| e.event_id.to_string() == deleted["eventId"].as_str().unwrap())
            .map(|(id, _)| id)
    })
    .await?;
    let removed: u64 =
        fred::interfaces::StreamsInterface::xdel(&redis, &stream, entry_id.as_str()).await?;
    assert_eq!(removed, 1);
    let before = app.store.get(EntityKind::User, t.id, gone).await?.unwrap();
    assert_eq!(
        before.state["active"], true,
        "the app never heard of the delete"
    );

    let accounts = Arc::new(Accounts(
        vec![
            Reference {
                record: "account:1".into(),
                user_id: gone,
            },
            Reference {
                record: "account:2".into(),
                user_id: t.admin_id,
            },
            Reference {
                record: "account:3".into(),
                user_id: Uuid::now_v7(),
            },
        ],
        Default::default(),
    ));
    let full = FullSync::new(app.loader.clone(), app.store.clone(), accounts.clone());
    let report = full.run_once(|_, _| {}).await?;
    assert_eq!(report.repaired, vec![t.id]);
    let after = app.store.get(EntityKind::User, t.id, gone).await?.unwrap();
    assert_eq!(after.state["active"], false, "marked inactive");
    assert!(!after.state["deletedAt"].is_null());
    assert_eq!(after.state["email"], "gone@lost.test", "the data is kept");
    let named: Vec<(&str, OrphanReason)> = report
        .orphans
        .iter()
        .map(|o| (o.reference.record.as_str(), o.reason))
        .collect();
    assert_eq!(
        named,
        vec![
            ("account:1", OrphanReason::Deleted),
            ("account:3", OrphanReason::Missing)
        ]
    );
    assert_eq!(
        accounts.1.lock().unwrap().len(),
        2,
        "the app's policy ran for each orphan"
    );
    Ok(())
}

#[tokio::test]
async fn with_the_wrapper_down_loaded_tenants_degrade_and_unknown_ones_are_unavailable()
-> anyhow::Result<()> {
    let app = app_with(1000, Duration::ZERO).await?;
    let t = app.wrapper.create_tenant("degrade").await;
    let never_loaded = app.wrapper.create_tenant("cold").await;
    assert!(matches!(
        app.loader.availability(t.id).await?,
        Availability::Fresh(_)
    ));
    app.wrapper.stop();
    // Each request finds the tenant stale (bound zero) and refreshes it in the background; the
    // refresh fails, and from then on the tenant is served degraded.
    eventually(Duration::from_secs(20), || async {
        matches!(
            app.loader.availability(t.id).await,
            Ok(Availability::Degraded(_))
        )
    })
    .await?;
    match app.loader.availability(never_loaded.id).await? {
        Availability::Unavailable { retry_after } => assert!(retry_after > Duration::ZERO),
        other => panic!("a tenant never loaded cannot be served: {other:?}"),
    }

    // Through the SDK's HTTP helper, as an app serves it.
    let loader = app.loader.clone();
    let router = axum::Router::new().route(
        "/t/{id}",
        axum::routing::get(move |axum::extract::Path(id): axum::extract::Path<Uuid>| {
            let loader = loader.clone();
            async move {
                sync_sdk::http::serve_tenant(&loader, id, |_| async {
                    axum::response::IntoResponse::into_response("records")
                })
                .await
            }
        }),
    );
    let server = serve(router).await?;
    let http = reqwest::Client::new();
    let served = http
        .get(format!("{}/t/{}", server.url(), t.id))
        .send()
        .await?;
    assert_eq!(served.status(), 200);
    assert_eq!(
        served.headers()[sync_sdk::http::DEGRADED_HEADER],
        "wrapper-unreachable"
    );
    assert_eq!(served.text().await?, "records");
    let refused = http
        .get(format!("{}/t/{}", server.url(), never_loaded.id))
        .send()
        .await?;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    app.cancel.cancel();
    Ok(())
}

#[tokio::test]
async fn the_full_sync_lock_admits_one_holder_and_only_it_releases() -> anyhow::Result<()> {
    use sync_sdk::fullsync::RedisLock;
    let redis = redis_client(&redis_url()).await?;
    let key = StreamKeys::new(redis_namespace(), 8)
        .unwrap()
        .lock("fullsync:crm");
    let (a, b) = (
        RedisLock::new(redis.clone(), key.clone()),
        RedisLock::new(redis, key),
    );
    let token = a
        .try_acquire(Duration::from_secs(60))
        .await?
        .expect("first holder");
    assert!(
        b.try_acquire(Duration::from_secs(60)).await?.is_none(),
        "one holder at a time"
    );
    assert!(
        !b.release("not-the-token").await?,
        "only the holder releases"
    );
    assert!(a.release(&token).await?);
    assert!(b.try_acquire(Duration::from_secs(60)).await?.is_some());
    Ok(())
}

#[tokio::test]
async fn the_scheduled_full_sync_repairs_drift_once_per_scheduled_time_across_replicas()
-> anyhow::Result<()> {
    let app = app_with_consumer(1000).await?;
    let t = app.wrapper.create_tenant("nightly").await;
    app.loader.ensure_tenant(t.id).await?;
    eventually(Duration::from_secs(20), || {
        store_matches_wrapper(&app, t.id)
    })
    .await?;
    sqlx::query("delete from tsync_entities where tenant_id = $1 and kind = 'roles'")
        .bind(t.id)
        .execute(&app.store_db)
        .await?;
    assert!(!store_matches_wrapper(&app, t.id).await);

    let full = FullSync::new(app.loader.clone(), app.store.clone(), Arc::new(NoIntegrity));
    let keys = StreamKeys::new(app.wrapper.state.settings.namespace.clone(), 8).unwrap();
    let stop = CancellationToken::new();
    // Every second (cron with a seconds field), two replicas sharing the lock.
    let mut replicas = Vec::new();
    for replica in ["a", "b"] {
        replicas.push(tokio::spawn(full.clone().run_scheduled(
            "* * * * * *",
            redis_client(&redis_url()).await?,
            keys.clone(),
            "crm".into(),
            replica.into(),
            Duration::from_secs(30),
            stop.clone(),
        )));
    }
    eventually(Duration::from_secs(20), || {
        store_matches_wrapper(&app, t.id)
    })
    .await?;
    // Each scheduled second ran once, on one replica or the other.
    let redis = redis_client(&redis_url()).await?;
    let runs = eventually_some(Duration::from_secs(20), || async {
        let runs = sync_sdk::fullsync::recent_runs(&redis, &keys, "crm")
            .await
            .ok()?;
        (runs.len() >= 4).then_some(runs)
    })
    .await?;
    stop.cancel();
    assert_each_scheduled_time_ran_once("crm", &runs);
    assert!(
        runs.iter().any(|r| r.repaired == 1),
        "the drifted tenant was repaired: {runs:?}"
    );
    for r in replicas {
        r.await??;
    }
    app.cancel.cancel();
    Ok(())
}

#[tokio::test]
async fn credit_configs_reach_the_app_by_snapshot_and_by_stream() -> anyhow::Result<()> {
    let app = app_with_consumer(1000).await?;
    let t = app.wrapper.create_tenant("pricing").await;
    let path = format!("/api/tenants/{}/credit-configs", t.id);
    let body = json!({"application": "crm", "operationCode": "crm.accounts.create", "cost": 35});
    let (status, _) = app
        .wrapper
        .call(Method::PUT, &path, Some(&t.admin), Some(body.clone()))
        .await;
    assert_eq!(status, 403, "prices are set by platform admins");
    let config = app
        .wrapper
        .send_ok(Method::PUT, &path, &app.wrapper.root, body)
        .await;
    let id: Uuid = serde_json::from_value(config["id"].clone())?;
    let listed = app.wrapper.get_ok(&path, &t.admin).await;
    assert_eq!(listed[0]["cost"], 35);

    app.loader.ensure_tenant(t.id).await?;
    let loaded = app
        .store
        .get(EntityKind::CreditConfig, t.id, id)
        .await?
        .expect("in the snapshot");
    assert_eq!(
        (loaded.version, loaded.state["cost"].as_i64()),
        (1, Some(35))
    );

    app.wrapper
        .send_ok(
            Method::PUT,
            &path,
            &app.wrapper.root,
            json!({"application": "crm", "operationCode": "crm.accounts.create", "cost": 40}),
        )
        .await;
    eventually(Duration::from_secs(20), || async {
        app.store
            .get(EntityKind::CreditConfig, t.id, id)
            .await
            .ok()
            .flatten()
            .map(|v| v.version)
            == Some(2)
    })
    .await?;
    let full = FullSync::new(app.loader.clone(), app.store.clone(), Arc::new(NoIntegrity));
    assert!(
        full.in_sync(t.id).await?,
        "digests agree, credit configs included"
    );
    app.cancel.cancel();
    Ok(())
}

/// An event for `tenant` two seqs beyond its last applied one (the one between is lost), for a
/// user the wrapper does not know: a gap only a re-sync can close.
async fn publish_after_a_gap<S: TenantStore>(
    wrapper: &TestApp,
    store: &S,
    tenant: Uuid,
) -> anyhow::Result<sync_sdk::contract::Envelope> {
    let keys = StreamKeys::new(
        wrapper.state.settings.namespace.clone(),
        wrapper.state.settings.partitions,
    )
    .unwrap();
    let last = store.sync_state(tenant).await?.unwrap().last_seq;
    let event = user_event(tenant, Uuid::now_v7(), 1, last + 2, "gap@x.test");
    let redis = redis_client(&redis_url()).await?;
    let _: String = fred::prelude::StreamsInterface::xadd(
        &redis,
        keys.events_for(tenant),
        false,
        None::<()>,
        "*",
        event.to_stream_fields(),
    )
    .await?;
    Ok(event)
}

/// A gap asks for a re-sync while the wrapper is down: the re-sync keeps failing, stays
/// pending (counted) and the tenant's events wait; when the wrapper returns it completes on its
/// own (no nightly job runs here) and repairs what only a re-sync can: a row the app lost.
#[tokio::test]
async fn a_resync_with_the_wrapper_down_completes_when_it_returns() -> anyhow::Result<()> {
    let mut app = app_with_consumer(1000).await?;
    let t = app.wrapper.create_tenant("resyncdown").await;
    let (member, _) = app.wrapper.create_member(&t, "m@resyncdown.test").await;
    app.loader.ensure_tenant(t.id).await?;
    eventually(Duration::from_secs(20), || {
        store_matches_wrapper(&app, t.id)
    })
    .await?;
    sqlx::query("delete from tsync_entities where id = $1")
        .bind(member)
        .execute(&app.store_db)
        .await?;
    app.wrapper.stop();
    let after_gap = publish_after_a_gap(&app.wrapper, app.store.as_ref(), t.id).await?;
    eventually(Duration::from_secs(10), || async {
        app.loader.pending_resyncs() == vec![t.id]
    })
    .await?;
    assert!(
        !app.store.is_processed(after_gap.event_id).await?,
        "the tenant's events wait for the re-sync"
    );
    assert!(!store_matches_wrapper(&app, t.id).await, "still drifted");

    app.wrapper.restart().await?;
    eventually(Duration::from_secs(20), || async {
        app.loader.pending_resyncs().is_empty()
            && store_matches_wrapper(&app, t.id).await
            && app
                .store
                .is_processed(after_gap.event_id)
                .await
                .unwrap_or(false)
    })
    .await?;
    app.cancel.cancel();
    app.consumer.await??;
    Ok(())
}

/// Every write of the tenants' watermarks fails (a validator on `tsync_sync` refuses them, code
/// 121: the store is writable again once it is removed, like a write conflict that ends), while
/// events arrive and a re-sync of the tenant is asked for. With one handler attempt allowed,
/// counting that store error against an event would dead-letter it: nothing is dead-lettered,
/// and once the store takes writes again it equals the wrapper.
#[tokio::test]
async fn a_write_conflict_during_a_resync_dead_letters_nothing() -> anyhow::Result<()> {
    use mongodb::bson::doc;
    use sync_sdk::store::mongo::MongoStore;
    let wrapper = spawn_wrapper().await?;
    wrapper::startup::upsert_service_client(&wrapper.db.pool, "crm", SECRET).await?;
    let store = Arc::new(MongoStore::new(fresh_mongo().await?));
    store.init().await?;
    let validator =
        |rule: mongodb::bson::Document| doc! {"collMod": "tsync_sync", "validator": rule};
    let client = crm_client(wrapper.url.clone(), 1000, Duration::from_secs(10));
    let loader = Loader::new(client, store.clone())
        .with_resync_backoff(Duration::from_millis(100), Duration::from_millis(500));
    let keys = StreamKeys::new(
        wrapper.state.settings.namespace.clone(),
        wrapper.state.settings.partitions,
    )
    .unwrap();
    let mut config = ConsumerConfig::new("crm", keys.clone());
    config.block = Duration::from_millis(200);
    config.max_attempts = 1;
    config.retry_cap = Duration::from_millis(300);
    config.resync = Some(loader.resync_hook());
    let redis = redis_client(&redis_url()).await?;
    let consumer = Consumer::new(redis.clone(), store.clone(), Arc::new(NoHandler), config);
    let cancel = CancellationToken::new();
    let running = tokio::spawn(consumer.clone().run(cancel.clone()));

    let t = wrapper.create_tenant("conflict").await;
    loader.ensure_tenant(t.id).await?;
    let refuse = validator(doc! {"held": {"$exists": true}});
    store.database().run_command(refuse).await?;
    for i in 0..5 {
        wrapper
            .create_member(&t, &format!("m{i}@conflict.test"))
            .await;
    }
    let partition = keys.partition_of(t.id) as usize;
    eventually(Duration::from_secs(20), || async {
        let report = consumer.health_report().await;
        report.partitions[partition]
            .parked
            .iter()
            .any(|p| p.tenant_id == t.id && p.reason == "store")
    })
    .await?;
    loader.request_resync(t.id);
    for i in 5..8 {
        wrapper
            .create_member(&t, &format!("m{i}@conflict.test"))
            .await;
    }
    store.database().run_command(validator(doc! {})).await?;
    eventually(Duration::from_secs(30), || async {
        loader.pending_resyncs().is_empty() && store_matches(&wrapper, store.as_ref(), t.id).await
    })
    .await?;
    let letters = sync_sdk::dlq::list(&redis, &keys, "crm", None).await?;
    assert!(letters.is_empty(), "nothing dead-lettered: {letters:?}");
    cancel.cancel();
    running.await??;
    Ok(())
}

/// A re-sync outlives the replica that asked for it. Replica A (whose wrapper is unreachable)
/// sees a gap and keeps retrying the tenant's re-sync, journalled in Redis and shown by its
/// status report; A dies. Replica B never sees the gap (its consumer does not run): its status
/// reporter finds the re-sync of a replica that stopped reporting, takes it over and repairs
/// what only a re-sync repairs (a row the app lost), without waiting for the nightly sync.
#[tokio::test]
async fn a_resync_pending_in_a_dead_replica_is_taken_over_by_a_live_one() -> anyhow::Result<()> {
    use sync_sdk::{
        loader::ResyncJournal,
        status::{AppStatus, StatusReporter},
    };
    let (wrapper, db, store, keys) = crm_side().await?;
    let t = wrapper.create_tenant("takeover").await;
    let (member, _) = wrapper.create_member(&t, "m@takeover.test").await;
    let redis = redis_client(&redis_url()).await?;
    let replica = |base_url: String| {
        let client = crm_client(base_url, 1000, Duration::from_secs(2));
        let loader = Loader::new(client, store.clone())
            .with_resync_backoff(Duration::from_millis(100), Duration::from_millis(300));
        let mut config = ConsumerConfig::new("crm", keys.clone());
        config.block = Duration::from_millis(200);
        config.gap_wait = Duration::from_millis(300);
        config.resync = Some(loader.resync_hook());
        let consumer = Consumer::new(redis.clone(), store.clone(), Arc::new(NoHandler), config);
        let reporter = StatusReporter::new(
            redis.clone(),
            consumer.clone(),
            loader.clone(),
            store.clone(),
        )
        .with_timing(Duration::from_millis(200), Duration::from_secs(1));
        (loader, consumer, reporter)
    };
    let (loader_b, consumer_b, reporter_b) = replica(wrapper.url.clone());
    loader_b.ensure_tenant(t.id).await?;
    sqlx::query("delete from tsync_entities where id = $1")
        .bind(member)
        .execute(&db.pool)
        .await?;

    // Replica A cannot reach the wrapper: its re-sync stays pending, journalled.
    let (loader_a, consumer_a, reporter_a) = replica("http://127.0.0.1:9".to_owned());
    consumer_a.ensure_groups().await?;
    let replica_a = consumer_a.config().consumer.clone();
    let stop_a = CancellationToken::new();
    let running_a = tokio::spawn(consumer_a.clone().run(stop_a.clone()));
    publish_after_a_gap(&wrapper, store.as_ref(), t.id).await?;
    let journal = ResyncJournal::new(redis.clone(), &keys, "crm", "test");
    eventually(Duration::from_secs(10), || async {
        loader_a.pending_resyncs() == vec![t.id]
            && journal.pending().await.unwrap_or_default() == vec![(t.id, replica_a.clone())]
    })
    .await?;
    reporter_a.tick().await?;
    let status = AppStatus::read(&redis, &keys, "crm").await?;
    let a = status.replicas.iter().find(|r| r.replica == replica_a);
    assert_eq!(
        a.map(|r| r.resyncs.clone()),
        Some(vec![t.id]),
        "{status:#?}"
    );
    assert!(
        status
            .to_string()
            .contains(&format!("re-sync pending: tenant {}", t.id))
    );

    // A dies (stops consuming and reporting). B takes its re-sync over once A's report is stale.
    stop_a.cancel();
    running_a.await??;
    let stop_b = CancellationToken::new();
    let reporting_b = tokio::spawn(reporter_b.run(stop_b.clone()));
    eventually(Duration::from_secs(20), || async {
        journal.pending().await.is_ok_and(|p| p.is_empty())
            && loader_b.pending_resyncs().is_empty()
            && store_matches(&wrapper, store.as_ref(), t.id).await
    })
    .await?;
    assert_eq!(consumer_b.health().restarts(), 0);
    stop_b.cancel();
    reporting_b.await?;
    Ok(())
}

/// A starting replica's first report says it is not ready (its readers do not run yet). While
/// not ready it reports five times as often, so the report saying it is ready follows within a
/// fifth of the interval (4 s of 20 here), not a whole one: the test waits 15 s at most.
#[tokio::test]
async fn a_replica_not_ready_reports_again_within_a_fifth_of_the_interval() -> anyhow::Result<()> {
    use sync_sdk::status::{StatusReporter, read};
    let (wrapper, _db, store, keys) = crm_side().await?;
    let redis = redis_client(&redis_url()).await?;
    let loader = Loader::new(
        crm_client(wrapper.url.clone(), 1000, Duration::from_secs(2)),
        store.clone(),
    );
    let mut config = ConsumerConfig::new("crm", keys.clone());
    config.block = Duration::from_millis(200);
    let consumer = Consumer::new(redis.clone(), store.clone(), Arc::new(NoHandler), config);
    let reporter = StatusReporter::new(redis.clone(), consumer.clone(), loader, store.clone())
        .with_timing(Duration::from_secs(20), Duration::from_secs(60));
    let stop = CancellationToken::new();
    let reporting = tokio::spawn(reporter.run(stop.clone()));
    let first = eventually_some(Duration::from_secs(10), || async {
        read(&redis, &keys, "crm").await.ok()?.into_iter().next()
    })
    .await?;
    assert!(!first.health.ready, "the readers do not run yet: {first:?}");

    consumer.ensure_groups().await?;
    let running = tokio::spawn(consumer.clone().run(stop.clone()));
    eventually(Duration::from_secs(15), || async {
        read(&redis, &keys, "crm")
            .await
            .is_ok_and(|r| r.first().is_some_and(|s| s.health.ready))
    })
    .await?;
    stop.cancel();
    reporting.await?;
    running.await??;
    Ok(())
}
