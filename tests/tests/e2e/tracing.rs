//! One trace across the hub: the wrapper, the CRM and the HRMS run as processes exporting spans
//! over OTLP/HTTP to a receiver inside the test, which checks the parent links span by span.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tsync_e2e::{
    nginx::{Nginx, Upstreams},
    otlp::{OtlpReceiver, ReceivedSpan},
    replicas::{self, Replica},
    suite::Edge,
    wrapper_app::{PASSWORD, ROOT_EMAIL},
    *,
};
use uuid::Uuid;

const REPLICA: &str = env!("CARGO_BIN_EXE_replica");
const SECRET: &str = "tracing-service-secret-long-enough";

async fn call(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Value,
    traceparent: Option<&str>,
) -> anyhow::Result<Value> {
    let mut request = http.request(method.clone(), url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let response = request.send().await?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(status.is_success(), "{method} {url}: {status} {body}");
    Ok(body)
}

/// The spans of `trace` named `name` exported by `service`.
fn named<'a>(
    spans: &'a [ReceivedSpan],
    trace: &str,
    service: &str,
    name: &str,
) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.trace_id == trace && s.service == service && s.name == name)
        .collect()
}

#[tokio::test]
async fn one_email_change_is_one_trace_from_the_request_to_every_apps_apply() -> anyhow::Result<()>
{
    let receiver = OtlpReceiver::start().await?;
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        // Export every 100 ms instead of every 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ];
    let db = fresh_database().await?;
    let ns = redis_namespace();
    let common = replicas::common_env(&ns, 4);
    let mut wrapper_env = replicas::wrapper_env(&common, &db.url);
    wrapper_env.extend(otel.clone());
    let wrapper = Replica::start(REPLICA, "wrapper", &wrapper_env).await?;
    for app in ["crm", "hrms"] {
        wrapper::startup::upsert_service_client(&db.pool, app, SECRET).await?;
    }

    let http = reqwest::Client::new();
    let w = wrapper.url();
    let login = |tenant: Option<&str>, email: &str| {
        let body = json!({"email": email, "password": PASSWORD, "tenant": tenant});
        let (http, url) = (http.clone(), format!("{w}/auth/login"));
        async move {
            let reply = call(&http, Method::POST, &url, None, body, None).await?;
            anyhow::Ok(reply["token"].as_str().unwrap_or_default().to_owned())
        }
    };
    let root = login(None, ROOT_EMAIL).await?;
    let sub = format!("trace-{}", &Uuid::now_v7().simple().to_string()[20..]);
    let admin_email = format!("admin@{sub}.test");
    let body = json!({"name": sub, "subdomain": sub, "plan": "pro", "features": ["crm", "hrms"],
                      "admin": {"email": admin_email, "fullName": "First Admin", "password": PASSWORD}});
    let url = format!("{w}/api/tenants");
    let tenant = call(&http, Method::POST, &url, Some(&root), body, None).await?;
    let tenant_id = tenant["id"].as_str().unwrap_or_default().to_owned();
    let admin_id = tenant["adminUserId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let admin = login(Some(&sub), &admin_email).await?;

    let mut app_processes = Vec::new();
    for app in ["crm", "hrms"] {
        let mut env = replicas::app_env(&common, &unique_name(), &w, SECRET);
        env.extend(otel.clone());
        app_processes.push(Replica::start(REPLICA, app, &env).await?);
    }
    let upstreams = Upstreams {
        wrapper: vec![wrapper.port],
        crm: vec![app_processes[0].port],
        hrms: vec![app_processes[1].port],
        projects: vec![free_port()?],
    };
    let nginx = Nginx::start_upstreams_at(free_port()?, None, None, &upstreams).await?;
    let edge = Edge::new(nginx.url(), format!("{sub}.yourapp.test"));
    // The first visit loads the tenant into each app (the lazy load).
    for path in ["/crm/accounts", "/hrms/employees"] {
        let (status, body) = edge.send(Method::GET, path, &admin, None).await?;
        anyhow::ensure!(status.is_success(), "GET {path}: {status} {body}");
    }

    // The email change, sent as part of a trace the test starts.
    let trace = Uuid::new_v4().simple().to_string();
    let caller_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace}-{caller_span}-01");
    let url = format!("{w}/api/tenants/{tenant_id}/users/{admin_id}");
    let body = json!({"email": format!("renamed@{sub}.test")});
    call(
        &http,
        Method::PATCH,
        &url,
        Some(&admin),
        body,
        Some(&traceparent),
    )
    .await?;

    // Both apps applied it, each in an `apply` span of the trace.
    let applied = |spans: &[ReceivedSpan], app: &str| {
        named(spans, &trace, app, "apply").into_iter().any(|s| {
            s.attributes.get("event_type").map(String::as_str) == Some("user.email_changed")
        })
    };
    eventually(Duration::from_secs(30), || async {
        let spans = receiver.spans();
        applied(&spans, "crm") && applied(&spans, "hrms")
    })
    .await?;
    let spans = receiver.spans();
    let one = |service: &str, name: &str| -> anyhow::Result<ReceivedSpan> {
        let found = named(&spans, &trace, service, name);
        anyhow::ensure!(
            found.len() == 1,
            "expected one {service} {name} span in the trace, found {}: {spans:#?}",
            found.len()
        );
        Ok(found[0].clone())
    };
    // HTTP request → write in the transaction → relay publish → each app's apply.
    let request = one("wrapper", "request")?;
    assert_eq!(
        request.parent, caller_span,
        "the request continues the caller's trace"
    );
    assert_eq!(request.attributes["method"], "PATCH");
    let append = one("wrapper", "outbox.append")?;
    assert_eq!(
        append.parent, request.span_id,
        "the outbox write is the request's child"
    );
    assert_eq!(append.attributes["event_type"], "user.email_changed");
    let publish = one("wrapper", "relay.publish")?;
    assert_eq!(
        publish.parent, append.span_id,
        "the publish is the write's child"
    );
    for app in ["crm", "hrms"] {
        let apply = one(app, "apply")?;
        assert_eq!(
            apply.parent, publish.span_id,
            "{app}'s apply is the publish's child"
        );
        assert_eq!(apply.attributes["tenant_id"], tenant_id);
        assert_eq!(apply.attributes["app"], app);
    }

    // The lazy load: each app's snapshot requests are requests of the app's `lazy_load` trace
    // at the wrapper.
    for app in ["crm", "hrms"] {
        let loads: Vec<&ReceivedSpan> = spans
            .iter()
            .filter(|s| s.service == app && s.name == "lazy_load")
            .filter(|s| s.attributes.get("tenant_id") == Some(&tenant_id))
            .collect();
        anyhow::ensure!(!loads.is_empty(), "no lazy_load span from {app}");
        let snapshot = format!("/api/sync/tenant/{tenant_id}");
        let served = spans.iter().any(|s| {
            s.service == "wrapper"
                && s.name == "request"
                && s.attributes.get("path") == Some(&snapshot)
                && loads
                    .iter()
                    .any(|l| s.trace_id == l.trace_id && s.parent == l.span_id)
        });
        assert!(
            served,
            "{app}'s snapshot request is not a child of its lazy_load span"
        );
    }
    drop(nginx);
    Ok(())
}
