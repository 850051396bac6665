//! One trace across the hub: the wrapper, the CRM and the HRMS run as processes exporting spans
//! over OTLP/HTTP to a receiver inside the test, which checks the parent links span by span.

use std::time::Duration;

use serde_json::json;
use tsync_e2e::{
    otlp::{OtlpReceiver, ReceivedSpan},
    replicas::Hub,
    *,
};
use uuid::Uuid;

const REPLICA: &str = env!("CARGO_BIN_EXE_replica");

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
    let hub = Hub::start(
        REPLICA,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
            // Export every 100 ms instead of every 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ],
    )
    .await?;
    let (tenant_id, sub) = (hub.tenant_id.clone(), hub.subdomain.clone());

    // The email change, sent as part of a trace the test starts.
    let trace = Uuid::new_v4().simple().to_string();
    let caller_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace}-{caller_span}-01");
    let url = format!(
        "{}/api/tenants/{tenant_id}/users/{}",
        hub.wrapper.url(),
        hub.admin_id
    );
    let response = hub
        .http
        .patch(&url)
        .bearer_auth(&hub.admin)
        .header("traceparent", &traceparent)
        .json(&json!({"email": format!("renamed@{sub}.test")}))
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "PATCH {url}: {}",
        response.status()
    );

    // Both apps applied it, each in an `apply` span of the trace.
    let applied = |spans: &[ReceivedSpan], app: &str| {
        named(spans, &trace, app, "apply").into_iter().any(|s| {
            s.attributes.get("event_type").map(String::as_str) == Some("user.email_changed")
        })
    };
    // And the wrapper's spans of the chain have been exported too (each process exports in its
    // own batches, so the apps' may arrive first).
    eventually(Duration::from_secs(30), || async {
        let spans = receiver.spans();
        applied(&spans, "crm")
            && applied(&spans, "hrms")
            && ["request", "outbox.append", "relay.publish"]
                .iter()
                .all(|name| !named(&spans, &trace, "wrapper", name).is_empty())
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
    Ok(())
}
