//! Many replicas of every service as real processes behind nginx: two wrappers, three CRMs and
//! two HRMSs (one consumer group per app), one of each SIGKILLed under a steady write load.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use fred::prelude::*;
use mongodb::bson::{Document, doc};
use reqwest::Method;
use serde_json::{Value, json};
use sync_sdk::contract::StreamKeys;
use tokio_util::sync::CancellationToken;
use tsync_e2e::{
    nginx::{Nginx, Upstreams},
    replicas::{self, Replica},
    suite::Edge,
    wrapper_app::{PASSWORD, ROOT_EMAIL},
    *,
};
use uuid::Uuid;

const REPLICA: &str = env!("CARGO_BIN_EXE_replica");
const SECRET: &str = "scale-out-service-secret-long-enough";

async fn call(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Value,
) -> anyhow::Result<Value> {
    let mut request = http.request(method.clone(), url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(status.is_success(), "{method} {url}: {status} {body}");
    Ok(body)
}

/// `(version, fullName)` of every user of `tenants` in an app's synced copy.
async fn app_users(db: &mongodb::Database, tenants: &[Uuid]) -> HashMap<Uuid, (i64, String)> {
    let ids: Vec<String> = tenants.iter().map(Uuid::to_string).collect();
    let mut out = HashMap::new();
    let Ok(mut cursor) = db
        .collection::<Document>("users")
        .find(doc! {"tenantId": {"$in": ids}})
        .await
    else {
        return out;
    };
    while cursor.advance().await.unwrap_or(false) {
        let Ok(d) = cursor.deserialize_current() else {
            continue;
        };
        let id = d.get_str("_id").ok().and_then(|s| s.parse().ok());
        let name = d
            .get_document("state")
            .ok()
            .and_then(|s| s.get_str("fullName").ok());
        if let (Some(id), Some(name)) = (id, name) {
            out.insert(id, (d.get_i64("version").unwrap_or(0), name.to_owned()));
        }
    }
    out
}

#[tokio::test]
async fn one_replica_of_each_service_killed_under_load_loses_nothing_and_the_edge_keeps_answering()
-> anyhow::Result<()> {
    let db = fresh_database().await?;
    let ns = redis_namespace();
    let keys = StreamKeys::new(ns.clone(), 8).unwrap();
    let common = replicas::common_env(&ns, 8);
    let mut wrapper_env = replicas::wrapper_env(&common, &db.url);
    wrapper_env.extend([
        ("WRAPPER_DB_MAX_CONNECTIONS", "15".to_owned()),
        ("WRAPPER_RELAY_LEASE_RETRY_MS", "200".to_owned()),
        ("WRAPPER_RELAY_POLL_MS", "100".to_owned()),
        ("WRAPPER_CREDIT_RECONCILE_SECS", "1".to_owned()),
    ]);
    // The first wrapper migrates and creates the platform admin; the second joins it.
    let mut wrappers = vec![Replica::start(REPLICA, "wrapper", &wrapper_env).await?];
    wrappers.push(Replica::start(REPLICA, "wrapper", &wrapper_env).await?);
    for app in ["crm", "hrms"] {
        wrapper::startup::upsert_service_client(&db.pool, app, SECRET).await?;
    }

    // Tenants and users, set up at the first wrapper directly (the platform host).
    let http = reqwest::Client::new();
    let w1 = wrappers[0].url();
    let login = |tenant: Option<String>, email: String| {
        let (http, w1) = (http.clone(), w1.clone());
        async move {
            let body = json!({"email": email, "password": PASSWORD, "tenant": tenant});
            let reply = call(&http, Method::POST, &format!("{w1}/auth/login"), None, body).await?;
            anyhow::Ok(reply["token"].as_str().unwrap_or_default().to_owned())
        }
    };
    let root = login(None, ROOT_EMAIL.to_owned()).await?;
    let mut tenants: Vec<(Uuid, String, String)> = Vec::new();
    let mut users: Vec<(usize, Uuid)> = Vec::new();
    for i in 0..4 {
        let sub = format!("scale{i}-{}", &Uuid::now_v7().simple().to_string()[20..]);
        let admin_email = format!("admin@{sub}.test");
        let body = json!({"name": sub, "subdomain": sub, "plan": "pro", "features": ["crm", "hrms"],
                          "admin": {"email": admin_email, "fullName": "First Admin", "password": PASSWORD}});
        let created = call(
            &http,
            Method::POST,
            &format!("{w1}/api/tenants"),
            Some(&root),
            body,
        )
        .await?;
        let id: Uuid = serde_json::from_value(created["id"].clone())?;
        let admin = login(Some(sub.clone()), admin_email).await?;
        users.push((i, serde_json::from_value(created["adminUserId"].clone())?));
        for u in 0..3 {
            let body = json!({"email": format!("u{u}@{sub}.test"), "fullName": "Member", "password": PASSWORD});
            let url = format!("{w1}/api/tenants/{id}/users");
            let user = call(&http, Method::POST, &url, Some(&admin), body).await?;
            users.push((i, serde_json::from_value(user["id"].clone())?));
        }
        tenants.push((id, sub, admin));
    }
    let tenant_ids: Vec<Uuid> = tenants.iter().map(|t| t.0).collect();

    // Three CRMs and two HRMSs, each told of both wrappers; the full sync every 2 s.
    let (crm_db, hrms_db) = (unique_name(), unique_name());
    let wrapper_urls = wrappers
        .iter()
        .map(Replica::url)
        .collect::<Vec<_>>()
        .join(",");
    let app_env = |db: &str| {
        let mut env = replicas::app_env(&common, db, &wrapper_urls, SECRET);
        env.push(("APP_FULL_SYNC_SCHEDULE", "*/2 * * * * *".to_owned()));
        env
    };
    let mut crms = Vec::new();
    for _ in 0..3 {
        crms.push(Replica::start(REPLICA, "crm", &app_env(&crm_db)).await?);
    }
    let mut hrmss = Vec::new();
    for _ in 0..2 {
        hrmss.push(Replica::start(REPLICA, "hrms", &app_env(&hrms_db)).await?);
    }
    let ports = |r: &[Replica]| r.iter().map(|r| r.port).collect::<Vec<_>>();
    let upstreams = Upstreams {
        wrapper: ports(&wrappers),
        crm: ports(&crms),
        hrms: ports(&hrmss),
        projects: vec![free_port()?],
    };
    let nginx = Nginx::start_upstreams_at(free_port()?, Some(1000), Some(5000), &upstreams).await?;
    let edge = |sub: &str| Arc::new(Edge::new(nginx.url(), format!("{sub}.yourapp.test")));

    // Every tenant visited in both apps (lazy load), through the edge.
    for (_, sub, admin) in &tenants {
        for path in ["/crm/accounts", "/hrms/employees"] {
            let (status, body) = edge(sub).send(Method::GET, path, admin, None).await?;
            anyhow::ensure!(status.is_success(), "GET {path}: {status} {body}");
        }
    }

    // Readers: idempotent requests through the edge, to every service, all the time.
    let stop = CancellationToken::new();
    let refused: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let answered = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for (id, sub, admin) in tenants.clone() {
        let (edge, stop, refused, answered) =
            (edge(&sub), stop.clone(), refused.clone(), answered.clone());
        readers.push(tokio::spawn(async move {
            let paths = [
                "/crm/accounts".to_owned(),
                "/hrms/employees".to_owned(),
                format!("/api/tenants/{id}/users"),
            ];
            while !stop.is_cancelled() {
                for path in &paths {
                    match edge.send(Method::GET, path, &admin, None).await {
                        Ok((status, _)) if status.is_success() => {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok((status, body)) => refused
                            .lock()
                            .unwrap()
                            .push(format!("GET {path}: {status} {body}")),
                        Err(e) => refused.lock().unwrap().push(format!("GET {path}: {e}")),
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    // A steady writer: user renames through the edge. A write in flight at a killed wrapper
    // may fail (nginx does not resend a non-idempotent request it had sent); it is counted and
    // the end state is compared with the wrapper's database, whatever answered.
    let failed_writes = Arc::new(AtomicUsize::new(0));
    let writes = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (stop, users, tenants) = (stop.clone(), users.clone(), tenants.clone());
        let edges: Vec<_> = tenants.iter().map(|t| edge(&t.1)).collect();
        let (failed, writes) = (failed_writes.clone(), writes.clone());
        tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.is_cancelled() {
                let (t, user) = users[n % users.len()];
                let (id, _, admin) = &tenants[t];
                let body = json!({"fullName": format!("Name {n}")});
                let path = format!("/api/tenants/{id}/users/{user}");
                match edges[t].send(Method::PATCH, &path, admin, Some(body)).await {
                    Ok((status, _)) if status.is_success() => {}
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                writes.fetch_add(1, Ordering::Relaxed);
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    // Under load, SIGKILL one replica of each service.
    eventually(Duration::from_secs(30), || async {
        writes.load(Ordering::Relaxed) >= 150
    })
    .await?;
    for replica in [&mut wrappers[0], &mut crms[0], &mut hrmss[0]] {
        replica.child.start_kill()?;
        replica.child.wait().await?;
    }
    let at_kill = writes.load(Ordering::Relaxed);
    let killed_at = chrono::Utc::now();
    eventually(Duration::from_secs(60), || async {
        writes.load(Ordering::Relaxed) >= at_kill + 300
    })
    .await
    .context("writes through the edge stalled after the kills")?;
    stop.cancel();
    writer.await?;
    for r in readers {
        r.await?;
    }

    // Nothing lost: every user in both apps ends at the wrapper's version and name (the dead
    // replicas' pending entries are claimed by the survivors, or the tenant re-synced). A
    // replica killed inside a MongoDB transaction leaves it open until the server reaps it
    // (transactionLifetimeLimitSeconds, 60 s): writes to its documents conflict until then, so
    // a tenant can take about a minute to converge.
    let expected: HashMap<Uuid, (i64, String)> = sqlx::query_as::<_, (Uuid, i64, String)>(
        "select id, version, full_name from users where tenant_id = any($1)",
    )
    .bind(&tenant_ids)
    .fetch_all(&db.pool)
    .await?
    .into_iter()
    .map(|(id, v, n)| (id, (v, n)))
    .collect();
    let redis = redis_client(&redis_url()).await?;
    let mongo = mongodb::Client::with_uri_str(mongodb_url()).await?;
    for name in [&crm_db, &hrms_db] {
        let app_db = mongo.database(name);
        let converged = eventually(Duration::from_secs(90), || async {
            app_users(&app_db, &tenant_ids).await == expected
        })
        .await;
        if converged.is_err() {
            let got = app_users(&app_db, &tenant_ids).await;
            let differ: Vec<_> = expected
                .iter()
                .filter(|(id, want)| got.get(*id) != Some(*want))
                .map(|(id, want)| format!("{id}: wrapper {want:?}, app {:?}", got.get(id)))
                .collect();
            let mut pending = Vec::new();
            for g in sync_sdk::dlq::lag(&redis, &keys).await? {
                if g.pending > 0 {
                    let stream = keys.events(g.partition);
                    let summary: fred::types::Value =
                        redis.xpending(&stream, g.group.as_str(), ()).await?;
                    pending.push(format!("{} {}: {summary:?}", g.partition, g.group));
                }
            }
            let mut status = Vec::new();
            for app in ["crm", "hrms"] {
                let s = sync_sdk::status::AppStatus::read(&redis, &keys, app).await?;
                status.push(serde_json::to_string(&s)?);
            }
            anyhow::bail!(
                "{name} did not converge: {differ:?}; pending {pending:?}; status {status:?}"
            );
        }
    }
    for app in ["crm", "hrms"] {
        let dead: u64 = fred::interfaces::StreamsInterface::xlen(&redis, keys.dlq(app)).await?;
        assert_eq!(dead, 0, "{app}: nothing dead-lettered");
    }

    // The edge kept answering every idempotent request.
    let refused = refused.lock().unwrap().clone();
    assert!(
        refused.is_empty(),
        "{} of {} reads refused: {refused:?}",
        refused.len(),
        answered.load(Ordering::Relaxed) + refused.len()
    );
    eprintln!(
        "{} writes ({} failed at the killed wrapper), {} reads answered",
        writes.load(Ordering::Relaxed),
        failed_writes.load(Ordering::Relaxed),
        answered.load(Ordering::Relaxed)
    );

    // Scheduled work ran once per scheduled time across replicas: each full sync once per
    // time across the apps' replicas, the wrappers' credit reconciliation once per second.
    for app in ["crm", "hrms"] {
        // Polled: a replica killed mid-run holds the next runs back for its lease (15 s).
        let runs = eventually_some(Duration::from_secs(60), || async {
            let runs = sync_sdk::fullsync::recent_runs(&redis, &keys, app)
                .await
                .ok()?;
            (runs.len() >= 3).then_some(runs)
        })
        .await
        .with_context(|| format!("{app}: three full syncs did not run"))?;
        assert_each_scheduled_time_ran_once(app, &runs);
    }
    // Claims are unique per (job, tick) by the table's key; what is checked here is that the
    // surviving wrapper keeps claiming ticks after the other was killed.
    let claimed_after_kill = || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from job_runs where job = 'credit_reconcile' and started_at > $1",
        )
        .bind(killed_at)
        .fetch_one(&db.pool)
        .await
        .unwrap_or(0)
    };
    eventually(Duration::from_secs(30), || async {
        claimed_after_kill().await >= 3
    })
    .await
    .context("credit reconciliation stopped after a wrapper was killed")?;
    Ok(())
}
