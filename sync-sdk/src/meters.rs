//! The metrics the SDK exports (an app's `GET /metrics`): each described once here, and the
//! series a dashboard or an alert needs from the start registered at zero. Labels are bounded:
//! the app's name, a partition, an event type, an outcome — never a tenant or a user (the
//! scrape's `job`/`instance` tell replicas apart). docs/metrics.md is the reference (a test
//! holds it to the code). [`crate::app::AppKit`] calls [`describe`]; an app assembling the
//! pieces itself calls it once at start-up.

use metrics::{describe_counter, describe_gauge, describe_histogram};

/// Describe every SDK metric and register the zero series of `app` on `partitions`.
pub fn describe(app: &str, partitions: u32) {
    describe_counter!(
        "tsync_lifecycle_unproven_total",
        "Lifecycle commands read from the stream that the wrapper did not vouch for (or unreadable), dead-lettered without acting, by app."
    );
    describe_counter!(
        "tsync_consumer_consumed_total",
        "Stream entries read, by app and event type."
    );
    describe_counter!(
        "tsync_consumer_events_total",
        "Events handled, by app, event type and outcome (applied, stale, duplicate, failed)."
    );
    describe_counter!(
        "tsync_consumer_dead_lettered_total",
        "Entries dead-lettered, by app and event type."
    );
    describe_counter!(
        "tsync_consumer_claimed_total",
        "Entries claimed from a consumer that held them past the visibility timeout."
    );
    describe_counter!(
        "tsync_consumer_gaps_total",
        "Seq gaps seen (an entry still coming, or a re-sync)."
    );
    describe_counter!(
        "tsync_consumer_restarts_total",
        "Partition readers restarted after they died, by app and partition."
    );
    describe_counter!(
        "tsync_consumer_store_retries_total",
        "Store failures retried (the tenant waits; never dead-lettered)."
    );
    describe_histogram!(
        "tsync_consumer_lag_seconds",
        "From commit at the wrapper to apply in the app: the end-to-end apply latency."
    );
    describe_histogram!(
        "tsync_consumer_handler_seconds",
        "Time the app's handler took per batch."
    );
    describe_histogram!(
        "tsync_consumer_lookup_seconds",
        "Time a batch's two store lookups took (watermarks and recorded event ids, sent together)."
    );
    describe_histogram!(
        "tsync_consumer_apply_seconds",
        "Time a batch's store write took (apply_batch, until the store confirmed it)."
    );
    describe_histogram!(
        "tsync_consumer_batch_size",
        "Events applied per store write (one apply_batch)."
    );
    describe_gauge!(
        "tsync_consumer_pending",
        "Entries delivered to the app's group and not yet acknowledged, by partition."
    );
    describe_gauge!(
        "tsync_consumer_group_lag",
        "Entries of the partition not yet delivered to the app's group."
    );
    describe_gauge!(
        "tsync_consumer_oldest_pending_age_seconds",
        "Age of the oldest unacknowledged entry of the partition (0 when none)."
    );
    describe_gauge!(
        "tsync_consumer_reader_alive",
        "1 while this replica's reader of the partition runs, else 0."
    );
    describe_gauge!(
        "tsync_consumer_parked_tenants",
        "Tenants waiting (handler retry, store failure, gap, re-sync), by partition."
    );
    describe_gauge!(
        "tsync_dlq_entries",
        "Entries in the app's dead-letter stream."
    );
    describe_gauge!(
        "tsync_store_tenants_loaded",
        "Tenants loaded into the app's store."
    );
    describe_histogram!(
        "tsync_loader_load_seconds",
        "Time to load (or re-load) one tenant's snapshot."
    );
    describe_gauge!(
        "tsync_loader_resyncs_pending",
        "Tenant re-syncs requested and not yet done."
    );
    describe_counter!(
        "tsync_loader_resync_failures_total",
        "Re-sync attempts that failed (retried with backoff)."
    );
    describe_counter!(
        "tsync_fullsync_tenants_checked_total",
        "Tenants the full sync compared with the wrapper."
    );
    describe_counter!(
        "tsync_fullsync_tenants_repaired_total",
        "Tenants the full sync found drifted and re-loaded."
    );
    describe_counter!(
        "tsync_fullsync_orphans_total",
        "References to users gone upstream the full sync found."
    );
    describe_counter!(
        "tsync_credits_consumed_total",
        "Credit consumptions by path (fast: the Redis mirror; direct: the wrapper)."
    );
    describe_counter!(
        "tsync_auth_cross_tenant_attempts_total",
        "Requests refused for a session of another tenant."
    );
    describe_counter!(
        "tsync_auth_sessions_revoked_total",
        "Requests refused for a signed-out session."
    );
    describe_counter!(
        "tsync_auth_revocation_check_failures_total",
        "Revocation checks that could not reach Redis."
    );
    describe_counter!(
        "tsync_auth_jwks_refreshes_total",
        "Refreshes of the wrapper's signing keys."
    );

    let app = app.to_owned();
    for path in ["fast", "direct"] {
        metrics::counter!("tsync_credits_consumed_total", "path" => path).increment(0);
    }
    for name in [
        "tsync_auth_cross_tenant_attempts_total",
        "tsync_auth_revocation_check_failures_total",
        "tsync_fullsync_tenants_repaired_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    for name in [
        "tsync_consumer_store_retries_total",
        "tsync_consumer_gaps_total",
    ] {
        metrics::counter!(name, "app" => app.clone()).increment(0);
    }
    for p in 0..partitions {
        let labels = [("app", app.clone()), ("partition", p.to_string())];
        metrics::counter!("tsync_consumer_restarts_total", &labels).increment(0);
        metrics::gauge!("tsync_consumer_pending", &labels).increment(0.0);
    }
}
