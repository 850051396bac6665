//! The published event contract: the AsyncAPI document the wrapper serves is valid AsyncAPI 3
//! (checked by the AsyncAPI parser, the library behind `asyncapi validate`), and what the relay
//! really publishes — an entry of every event type — matches its message's schemas.

use std::{collections::BTreeSet, path::PathBuf, process::Stdio, time::Duration};

use fred::prelude::*;
use reqwest::Method;
use serde_json::{Value, json};
use sync_sdk::contract::{EventType, StreamKeys};
use tokio::io::AsyncWriteExt;
use tsync_e2e::{
    wrapper_app::{TestApp, spawn_wrapper},
    *,
};

fn validators_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/validators")
}

/// Run `program args` with `input` on stdin: (succeeded, stdout and stderr).
async fn run_with_input(
    program: &str,
    args: &[&str],
    input: &[u8],
) -> anyhow::Result<(bool, String)> {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(validators_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("{program}: {e} (run scripts/services)"))?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin.write_all(input).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

async fn served_document(app: &TestApp) -> anyhow::Result<Value> {
    let (status, document) = app
        .call(Method::GET, "/api/asyncapi.json", None, None)
        .await;
    anyhow::ensure!(status.is_success(), "GET /api/asyncapi.json: {status}");
    Ok(document)
}

#[tokio::test]
async fn the_served_asyncapi_document_is_valid_asyncapi_3_with_a_message_per_event_type()
-> anyhow::Result<()> {
    let app = spawn_wrapper().await?;
    let document = served_document(&app).await?;
    assert_eq!(document["asyncapi"], "3.0.0");
    for t in EventType::ALL {
        let names: Vec<&Value> = document["components"]["messages"]
            .as_object()
            .unwrap()
            .values()
            .map(|m| &m["name"])
            .collect();
        assert!(names.contains(&&json!(t.as_str())), "no message for {t}");
    }
    let node = std::env::var("NODE").unwrap_or_else(|_| "node".into());
    let text = serde_json::to_vec(&document)?;
    let (valid, report) = run_with_input(&node, &["asyncapi-validate.mjs", "-"], &text).await?;
    assert!(valid, "the AsyncAPI parser refuses the document:\n{report}");

    // The validator can refuse: the same document without its required `info`.
    let mut broken = document.clone();
    broken.as_object_mut().unwrap().remove("info");
    let (valid, _) = run_with_input(
        &node,
        &["asyncapi-validate.mjs", "-"],
        &serde_json::to_vec(&broken)?,
    )
    .await?;
    assert!(!valid, "a document without `info` passed validation");
    Ok(())
}

/// Every entry of every partition stream of `keys`.
async fn stream_entries(keys: &StreamKeys) -> anyhow::Result<Vec<Value>> {
    let redis = redis_client(&redis_url()).await?;
    let mut entries = Vec::new();
    for stream in keys.all_events() {
        let found: Vec<(String, std::collections::HashMap<String, String>)> =
            redis.xrange(&stream, "-", "+", None).await?;
        entries.extend(
            found
                .into_iter()
                .map(|(id, fields)| json!({"id": id, "fields": fields})),
        );
    }
    Ok(entries)
}

/// A tenant's life touching every event type: tenant, users (every change, then erased), roles,
/// memberships, settings, credits and their prices, a threshold crossed, a voided grant, a
/// suspension and its end, then the tenant archived.
async fn every_kind_of_change(app: &TestApp) -> anyhow::Result<()> {
    let t = app.create_tenant("contract").await;
    let base = format!("/api/tenants/{}", t.id);
    let (user, _) = app.create_member(&t, "member@contract.test").await;
    let user_path = format!("{base}/users/{user}");
    for change in [
        json!({"fullName": "Renamed Member"}),
        json!({"email": "moved@contract.test"}),
        json!({"active": false}),
    ] {
        app.send_ok(Method::PATCH, &user_path, &t.admin, change)
            .await;
    }
    app.send_ok(Method::DELETE, &user_path, &t.admin, json!({}))
        .await;
    let (status, _) = app
        .call(
            Method::POST,
            &format!("{user_path}/erase"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "erase");
    let role = app
        .send_ok(
            Method::POST,
            &format!("{base}/roles"),
            &t.admin,
            json!({"name": "sales", "permissions": ["crm.accounts.read"]}),
        )
        .await;
    let role_path = format!("{base}/roles/{}", role["id"].as_str().unwrap_or_default());
    app.send_ok(
        Method::PATCH,
        &role_path,
        &t.admin,
        json!({"permissions": ["crm.accounts.read", "crm.accounts.write"]}),
    )
    .await;
    let granted = app
        .send_ok(
            Method::POST,
            &format!("{base}/memberships"),
            &t.admin,
            json!({"userId": t.admin_id, "roleId": role["id"]}),
        )
        .await;
    let membership = granted["id"].as_str().unwrap_or_default();
    app.send_ok(
        Method::DELETE,
        &format!("{base}/memberships/{membership}"),
        &t.admin,
        json!({}),
    )
    .await;
    app.send_ok(Method::DELETE, &role_path, &t.admin, json!({}))
        .await;
    app.send_ok(
        Method::PUT,
        &format!("{base}/settings"),
        &t.admin,
        json!({"values": {"locale": "fr", "limits": {"seats": 5}}}),
    )
    .await;
    app.send_ok(
        Method::PUT,
        &format!("{base}/credit-configs"),
        &app.root,
        json!({"application": "crm", "operationCode": "crm.accounts.create", "cost": 2}),
    )
    .await;
    app.fund_app(&t, "crm", 100).await;
    app.send_ok(
        Method::POST,
        &format!("{base}/credits/thresholds"),
        &t.admin,
        json!({"scope": "app:crm", "kind": "balance_below", "value": 100}),
    )
    .await;
    let crm = super::credits::service_token(app, "crm").await;
    app.send_ok(
        Method::POST,
        "/api/credits/consume",
        &crm,
        json!({"tenantId": t.id, "application": "crm", "operationCode": "crm.accounts.create",
               "operationId": "contract-op-1"}),
    )
    .await;
    let grant = app
        .send_ok(
            Method::POST,
            "/api/admin/credits/allocate",
            &app.root,
            json!({"tenantId": t.id, "application": "crm", "amount": 10, "category": "promotional"}),
        )
        .await;
    let grant = grant["grantId"].as_str().unwrap_or_default();
    app.send_ok(
        Method::POST,
        &format!("/api/admin/credits/grants/{grant}/void"),
        &app.root,
        json!({}),
    )
    .await;
    app.send_ok(
        Method::PATCH,
        &base,
        &app.root,
        json!({"plan": "enterprise", "theme": {"accent": "#0a7"}}),
    )
    .await;
    for step in ["suspend", "resume"] {
        app.send_ok(
            Method::POST,
            &format!("{base}/{step}"),
            &app.root,
            json!({}),
        )
        .await;
    }
    app.send_ok(Method::DELETE, &base, &app.root, json!({}))
        .await;
    Ok(())
}

#[tokio::test]
async fn every_envelope_the_relay_publishes_matches_its_asyncapi_message() -> anyhow::Result<()> {
    let app = spawn_wrapper().await?;
    every_kind_of_change(&app).await?;
    let settings = app.settings_for_test();
    let keys = StreamKeys::new(settings.namespace, settings.partitions).unwrap();
    let written = app.count("outbox").await as usize;
    // Everything the wrapper wrote, as the relay published it.
    let entries = eventually_some(Duration::from_secs(30), || async {
        stream_entries(&keys)
            .await
            .ok()
            .filter(|e| e.len() >= written)
    })
    .await?;
    let seen: BTreeSet<&str> = entries
        .iter()
        .filter_map(|e| e["fields"]["eventType"].as_str())
        .collect();
    let every: BTreeSet<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
    assert_eq!(seen, every, "the scenario must publish every event type");

    let document = served_document(&app).await?;
    let python = std::env::var("VALIDATORS_PYTHON").unwrap_or_else(|_| "python3".into());
    let input = serde_json::to_vec(&json!({"document": document, "entries": entries}))?;
    let (valid, report) = run_with_input(&python, &["validate_envelopes.py"], &input).await?;
    assert!(
        valid,
        "published envelopes do not match the document:\n{report}"
    );

    // The check can fail: an envelope without its payload's email, and one with seq 0.
    let mut broken = entries
        .iter()
        .find(|e| e["fields"]["eventType"] == "user.created")
        .cloned()
        .unwrap();
    let mut envelope: Value = serde_json::from_str(broken["fields"]["envelope"].as_str().unwrap())?;
    envelope["payload"].as_object_mut().unwrap().remove("email");
    envelope["seq"] = json!(0);
    broken["fields"]["envelope"] = json!(envelope.to_string());
    let input = serde_json::to_vec(&json!({"document": document, "entries": [broken]}))?;
    let (valid, report) = run_with_input(&python, &["validate_envelopes.py"], &input).await?;
    assert!(!valid, "a broken envelope passed:\n{report}");
    assert!(
        report.contains("'email' is a required property"),
        "{report}"
    );
    assert!(report.contains("at seq"), "{report}");
    Ok(())
}
