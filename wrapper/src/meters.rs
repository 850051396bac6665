//! The metrics the wrapper exports (`GET /metrics`): each described once here, and the series
//! a dashboard or an alert needs from the start registered at zero, so `rate()` over them is 0
//! rather than "no data" until the first sign-in or refusal. Labels are bounded: a partition,
//! an outcome, an HTTP status, an app name — never a tenant or a user. docs/metrics.md is the
//! reference (a test holds it to the code).

use metrics::{describe_counter, describe_gauge, describe_histogram};

/// Describe every wrapper metric and register the zero series (`partitions` of the relay).
pub fn describe(partitions: u32) {
    describe_counter!(
        "tsync_wrapper_password_hash_busy_total",
        "Requests answered 503 because every password-hashing slot stayed busy for the whole wait."
    );
    describe_counter!(
        "tsync_wrapper_credit_entries_refused_total",
        "Fast-path credit entries the ledger will never take (malformed, another app's, or for a tenant without the app), dead-lettered to {ns}:dlq:ledger."
    );
    describe_counter!(
        "tsync_relay_published_total",
        "Events the relay published, by partition: the committed write rate."
    );
    describe_counter!(
        "tsync_relay_errors_total",
        "Relay publish attempts that failed and are retried, by partition."
    );
    describe_counter!(
        "tsync_relay_fenced_total",
        "Publishes refused because a newer leader holds the partition."
    );
    describe_gauge!(
        "tsync_relay_leader",
        "1 while this replica leads the partition's relay, else 0."
    );
    describe_gauge!(
        "tsync_relay_outbox_depth",
        "Outbox rows not yet published, by partition."
    );
    describe_gauge!(
        "tsync_relay_oldest_unpublished_age_seconds",
        "Age of the oldest unpublished outbox row, by partition: the relay lag."
    );
    describe_gauge!(
        "tsync_relay_stream_length",
        "Entries in the partition stream (trimmed once every group has read them)."
    );
    describe_counter!(
        "tsync_relay_trimmed_total",
        "Stream entries trimmed after every consumer group read them."
    );
    describe_counter!(
        "tsync_relay_waits_total",
        "WAITs for Redis replicas after a publish, by outcome (ok, short)."
    );
    describe_histogram!(
        "tsync_relay_publish_batch_seconds",
        "Time to publish one batch of outbox rows."
    );
    describe_counter!(
        "tsync_credit_stream_trimmed_total",
        "Credit-stream entries trimmed after the ledger recorded them."
    );
    describe_counter!(
        "tsync_wrapper_credit_consumptions_total",
        "Credit consumptions at the wrapper, by outcome (charged, replayed, refused)."
    );
    describe_counter!(
        "tsync_wrapper_credit_mirror_corrections_total",
        "Redis credit balances the reconciliation found different from the ledger and corrected."
    );
    describe_counter!(
        "tsync_wrapper_credit_ingest_failures_total",
        "Fast-path consumptions the ledger could not record yet (tried again every 5 s; a steady rate means one is refused: see the log)."
    );
    describe_counter!(
        "tsync_wrapper_webhook_attempts_total",
        "Webhook posts by outcome (delivered, retry: failed and tried again later, dead: failed for the last time)."
    );
    describe_counter!(
        "tsync_wrapper_credit_grant_changes_total",
        "Credit grants changed on their terms by the scheduled job, by change (expired, renewed)."
    );
    describe_counter!(
        "tsync_wrapper_logins_total",
        "Sign-ins by outcome (success, failure, throttled)."
    );
    describe_counter!(
        "tsync_wrapper_csrf_refusals_total",
        "Cookie-authenticated writes refused for a missing or foreign Origin."
    );
    describe_counter!(
        "tsync_wrapper_cross_tenant_attempts_total",
        "Requests refused for reaching into another tenant."
    );
    describe_counter!(
        "tsync_wrapper_revocation_publish_failures_total",
        "Sign-outs whose revocation could not be published to Redis."
    );
    describe_counter!(
        "tsync_wrapper_snapshots_total",
        "Snapshot pages served to apps (lazy loads, re-syncs), by app."
    );
    describe_gauge!(
        "tsync_lifecycle_operations_pending",
        "Erasures, exports and purges not yet confirmed by every app, by kind."
    );
    describe_counter!(
        "tsync_lifecycle_receipts_total",
        "Receipts apps sent for lifecycle operations, by outcome (done, failed)."
    );
    describe_histogram!(
        "tsync_wrapper_http_request_duration_seconds",
        "HTTP request duration, by status code."
    );

    for outcome in ["success", "failure", "throttled"] {
        metrics::counter!("tsync_wrapper_logins_total", "outcome" => outcome).increment(0);
    }
    for outcome in ["done", "failed"] {
        metrics::counter!("tsync_lifecycle_receipts_total", "outcome" => outcome).increment(0);
    }
    for kind in ["erase_user", "purge_tenant", "export_tenant"] {
        metrics::gauge!("tsync_lifecycle_operations_pending", "kind" => kind).increment(0.0);
    }
    for outcome in ["charged", "replayed", "refused"] {
        metrics::counter!("tsync_wrapper_credit_consumptions_total", "outcome" => outcome)
            .increment(0);
    }
    for outcome in ["delivered", "retry", "dead"] {
        metrics::counter!("tsync_wrapper_webhook_attempts_total", "outcome" => outcome)
            .increment(0);
    }
    for change in ["expired", "renewed"] {
        metrics::counter!("tsync_wrapper_credit_grant_changes_total", "change" => change)
            .increment(0);
    }
    for name in [
        "tsync_wrapper_csrf_refusals_total",
        "tsync_wrapper_cross_tenant_attempts_total",
        "tsync_wrapper_revocation_publish_failures_total",
        "tsync_wrapper_credit_mirror_corrections_total",
        "tsync_wrapper_credit_ingest_failures_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    for p in 0..partitions {
        let partition = p.to_string();
        for name in [
            "tsync_relay_published_total",
            "tsync_relay_errors_total",
            "tsync_relay_fenced_total",
        ] {
            metrics::counter!(name, "partition" => partition.clone()).increment(0);
        }
    }
}
