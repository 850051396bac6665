//! The metrics operators look at: every metric the code records is described and documented
//! (docs/metrics.md), and every metric the Grafana dashboard queries is exported by a running
//! wrapper, CRM or HRMS process after ordinary use.

use std::{collections::BTreeSet, path::Path, time::Duration};

use reqwest::Method;
use serde_json::{Value, json};
use tsync_e2e::{replicas::Hub, *};

const REPLICA: &str = env!("CARGO_BIN_EXE_replica");

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
}

/// Every Rust source under `dir`.
fn sources(dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(std::fs::read_to_string(&path).unwrap_or_default());
        }
    }
}

/// `tsync_*` names given as the first argument of `macro!(` calls whose name ends in one of
/// `macros` (and, with `described`, starts with `describe_`).
fn metric_names(texts: &[String], described: bool) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for text in texts {
        for (at, _) in text.match_indices("!(") {
            let before = &text[..at];
            let word_start = before
                .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
                .map_or(0, |i| i + 1);
            let word = &before[word_start..];
            let is_metric = ["counter", "gauge", "histogram"]
                .iter()
                .any(|m| word == *m || word == format!("describe_{m}"));
            if !is_metric || word.starts_with("describe_") != described {
                continue;
            }
            let rest = text[at + 2..].trim_start();
            if let Some(name) = rest
                .strip_prefix("\"tsync_")
                .and_then(|r| r.split('"').next())
            {
                names.insert(format!("tsync_{name}"));
            }
        }
    }
    names
}

#[test]
fn every_metric_the_code_records_is_described_and_documented() {
    let mut texts = Vec::new();
    for dir in ["wrapper/src", "sync-sdk/src", "apps"] {
        sources(&repo().join(dir), &mut texts);
    }
    let recorded = metric_names(&texts, false);
    let described = metric_names(&texts, true);
    assert!(recorded.len() > 30, "the scan found only {recorded:?}");
    let undescribed: Vec<_> = recorded.difference(&described).collect();
    assert!(
        undescribed.is_empty(),
        "recorded but not described (wrapper/src/meters.rs, sync-sdk/src/meters.rs): {undescribed:?}"
    );
    let docs = std::fs::read_to_string(repo().join("docs/metrics.md")).unwrap();
    let undocumented: Vec<_> = described
        .iter()
        .filter(|n| !docs.contains(&format!("`{n}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "not in docs/metrics.md: {undocumented:?}"
    );
}

/// The base names of the metrics a Prometheus exposition holds (from its `# TYPE` lines).
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The metric names the dashboard's queries read (histogram series named by their base).
fn dashboard_metrics() -> BTreeSet<String> {
    let path = repo().join("deploy/grafana/dashboards/tenantsync.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut names = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            for (at, _) in expr.match_indices("tsync_") {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                names.insert(name);
            }
        }
    }
    names
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_is_exported_by_a_running_service() -> anyhow::Result<()>
{
    let wanted = dashboard_metrics();
    assert!(wanted.len() > 15, "the dashboard reads only {wanted:?}");
    let hub = Hub::start(REPLICA, &[]).await?;
    // Ordinary use: a change every app applies, an account (credits), a failed sign-in.
    let edge = hub.edge();
    let user = format!("/api/tenants/{}/users/{}", hub.tenant_id, hub.admin_id);
    let (status, body) = edge
        .send(
            Method::PATCH,
            &user,
            &hub.admin,
            Some(json!({"fullName": "Renamed"})),
        )
        .await?;
    anyhow::ensure!(status.is_success(), "{status} {body}");
    let (status, _) = edge
        .send(
            Method::POST,
            "/auth/login",
            "",
            Some(json!({"email": "nobody@x.test", "password": "wrong-password-1"})),
        )
        .await?;
    anyhow::ensure!(
        status.is_client_error(),
        "a wrong password signed in: {status}"
    );

    let docs = std::fs::read_to_string(repo().join("docs/metrics.md"))?;
    let services = [&hub.wrapper, &hub.crm, &hub.hrms];
    // The probes the images and deploy/k8s use answer on every service.
    for (service, ready) in [
        (&hub.wrapper, "/health"),
        (&hub.crm, "/health/ready"),
        (&hub.hrms, "/health/ready"),
    ] {
        for path in ["/health/live", ready] {
            let status = reqwest::get(format!("{}{path}", service.url()))
                .await?
                .status();
            assert!(status.is_success(), "{path} of {}: {status}", service.url());
        }
    }
    // (what the dashboard reads that no service exports, exported metrics not documented)
    let check = || async {
        let mut found = BTreeSet::new();
        for service in services {
            let response = reqwest::get(format!("{}/metrics", service.url())).await;
            if let Ok(text) = response.and_then(|r| r.error_for_status()) {
                found.extend(exported(&text.text().await.unwrap_or_default()));
            }
        }
        let missing: Vec<String> = wanted
            .iter()
            .filter(|name| {
                let base = ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(name);
                !found.contains(*name) && !found.contains(base)
            })
            .cloned()
            .collect();
        let undocumented: Vec<String> = found
            .into_iter()
            .filter(|n| n.starts_with("tsync_") && !docs.contains(&format!("`{n}`")))
            .collect();
        (missing, undocumented)
    };
    let all_there = eventually(Duration::from_secs(30), || async {
        check().await.0.is_empty()
    })
    .await;
    let (missing, undocumented) = check().await;
    assert!(
        all_there.is_ok(),
        "the dashboard queries metrics no running service exports: {missing:?}"
    );
    assert!(
        undocumented.is_empty(),
        "exported, not documented: {undocumented:?}"
    );
    Ok(())
}

#[tokio::test]
async fn sync_health_shows_each_apps_replicas_lag_and_dead_letters_to_platform_admins()
-> anyhow::Result<()> {
    let hub = Hub::start(REPLICA, &[]).await?;
    let url = format!("{}/api/admin/sync-health", hub.wrapper.url());
    // Both apps' replicas report within a few seconds (every 5 s, the first at start).
    let health = eventually_some(Duration::from_secs(20), || async {
        let health = hub.get_as_root("/api/admin/sync-health").await.ok()?;
        let reported = |app: &str| {
            health["apps"].as_array().into_iter().flatten().any(|a| {
                a["app"] == app
                    && a["replicas"].as_array().is_some_and(|r| {
                        r.iter()
                            .any(|r| r["fresh"] == true && r["health"]["partitions"].is_array())
                    })
            })
        };
        (reported("crm") && reported("hrms")).then_some(health)
    })
    .await?;
    for app in health["apps"].as_array().unwrap() {
        assert_eq!(app["deadLetters"], 0, "{app}");
        let replica = &app["replicas"][0];
        assert_eq!(
            replica["health"]["partitions"].as_array().map(Vec::len),
            Some(4),
            "{replica}"
        );
        assert!(
            replica["health"]["partitions"][0]["lag"].is_u64(),
            "{replica}"
        );
    }
    // Tenant admins see no operator data.
    let refused = hub.http.get(&url).bearer_auth(&hub.admin).send().await?;
    assert_eq!(refused.status(), reqwest::StatusCode::FORBIDDEN);

    // A re-sync requested through the wrapper is taken over by the CRM's live replica and done:
    // the request leaves the app's journal.
    let journal = sync_sdk::contract::StreamKeys::new(hub.namespace.clone(), 4)
        .unwrap()
        .resyncs("crm");
    let redis = redis_client(&redis_url()).await?;
    tsync_e2e::replicas::send(
        &hub.http,
        Method::POST,
        &format!("{url}/crm/resync"),
        &hub.root,
        json!({"tenantId": hub.tenant_id}),
    )
    .await?;
    let requested: Option<String> =
        fred::interfaces::HashesInterface::hget(&redis, &journal, &hub.tenant_id).await?;
    assert!(requested.is_some(), "requested");
    eventually(Duration::from_secs(30), || async {
        fred::interfaces::HashesInterface::hget::<Option<String>, _, _>(
            &redis,
            &journal,
            &hub.tenant_id,
        )
        .await
        .is_ok_and(|r| r.is_none())
    })
    .await?;
    Ok(())
}

/// The operator's actions on sync health: an app's dead letters listed and filtered, redriven
/// by tenant onto their original stream (another tenant's stay), a re-sync requested in the
/// app's journal for a live replica to take over; each audited, refused to tenant admins, and a
/// bad filter refused naming the field.
#[tokio::test]
async fn sync_health_actions_redrive_dead_letters_by_tenant_and_request_a_resync()
-> anyhow::Result<()> {
    use fred::interfaces::{HashesInterface, StreamsInterface};
    use std::collections::HashMap;
    use sync_sdk::{
        contract::StreamKeys,
        dlq::{self, DeadLetter},
    };
    use tsync_e2e::wrapper_app::spawn_wrapper;
    use wrapper::api::sync_health::RESYNC_REQUESTER;

    let app = spawn_wrapper().await?;
    let crm = super::credits::service_token(&app, "crm").await;
    super::credits::register_crm(&app, &crm).await;
    let (a, b) = (
        app.create_tenant("lettera").await,
        app.create_tenant("letterb").await,
    );
    let redis = redis_client(&app.state.settings.redis_url.0).await?;
    let keys = StreamKeys::new(app.state.settings.namespace.clone(), 8).unwrap();
    // One entry per tenant its handler failed on, as the consumer dead-letters them: each a
    // real event of the tenant (the wrapper republishes its own copy of it from the outbox).
    let mut envelopes = HashMap::new();
    for t in [&a, &b] {
        let stream = keys.events_for(t.id);
        let (seq, envelope): (i64, String) = sqlx::query_as(
            "select seq, envelope from outbox where tenant_id = $1 and event_type = 'user.created'",
        )
        .bind(t.id)
        .fetch_one(&app.db.pool)
        .await?;
        envelopes.insert(t.id, envelope.clone());
        let fields: HashMap<String, String> =
            sync_sdk::contract::stream_fields("user.created", t.id, seq, envelope)
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
        let letter = DeadLetter::new(&stream, "1-0", &fields, "handler failed".into(), 5);
        dlq::push(&redis, &keys, "crm", &letter).await?;
    }
    let base = "/api/admin/sync-health/crm";
    let listed = app
        .get_ok(&format!("{base}/dead-letters?tenantId={}", a.id), &app.root)
        .await;
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{listed}");
    assert_eq!(
        (
            &items[0]["eventType"],
            &items[0]["attempts"],
            &items[0]["error"]
        ),
        (&json!("user.created"), &json!(5), &json!("handler failed"))
    );
    let (status, problem) = app
        .call(
            Method::POST,
            &format!("{base}/dead-letters/redrive"),
            Some(&app.root),
            Some(json!({"eventType": "user.exploded"})),
        )
        .await;
    assert_eq!(
        (status.as_u16(), &problem["field"]),
        (400, &json!("eventType"))
    );
    let (status, _) = app
        .call(
            Method::POST,
            &format!("{base}/dead-letters/redrive"),
            Some(&a.admin),
            Some(json!({"tenantId": a.id})),
        )
        .await;
    assert_eq!(status.as_u16(), 403, "platform admins only");
    let (status, _) = app
        .call(
            Method::POST,
            "/api/admin/sync-health/nosuchapp/dead-letters/redrive",
            Some(&app.root),
            Some(json!({})),
        )
        .await;
    assert_eq!(status.as_u16(), 404);

    let stream = keys.events_for(a.id);
    let before: u64 = redis.xlen(&stream).await?;
    let moved = app
        .send_ok(
            Method::POST,
            &format!("{base}/dead-letters/redrive"),
            &app.root,
            json!({"tenantId": a.id}),
        )
        .await;
    assert_eq!(moved, json!({"redriven": 1, "refused": 0}));
    let after: u64 = redis.xlen(&stream).await?;
    assert_eq!(after, before + 1, "back on its stream");
    let last: Vec<(String, HashMap<String, String>)> =
        redis.xrevrange(&stream, "+", "-", Some(1)).await?;
    assert_eq!(last[0].1["envelope"], envelopes[&a.id]);
    let left = dlq::list(&redis, &keys, "crm", None).await?;
    assert_eq!(left.len(), 1);
    assert_eq!(
        left[0].1.tenant_id,
        Some(b.id.to_string()),
        "the other tenant's stays"
    );

    let (status, _) = app
        .call(
            Method::POST,
            &format!("{base}/resync"),
            Some(&app.root),
            Some(json!({"tenantId": b.id})),
        )
        .await;
    assert_eq!(status.as_u16(), 202);
    let journal: Option<String> = redis.hget(keys.resyncs("crm"), b.id.to_string()).await?;
    assert_eq!(journal.as_deref(), Some(RESYNC_REQUESTER));
    let audited: Vec<(String, Option<uuid::Uuid>)> = sqlx::query_as(
        "select action, tenant_id from audit_log where action like 'sync.%' order by id",
    )
    .fetch_all(&app.db.pool)
    .await?;
    assert_eq!(
        audited,
        vec![
            ("sync.redrive".to_owned(), Some(a.id)),
            ("sync.resync".to_owned(), Some(b.id))
        ]
    );
    Ok(())
}
