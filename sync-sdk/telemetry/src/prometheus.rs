//! The process's Prometheus recorder: one per process (the wrapper's `/metrics` and an app's
//! render it), with real histograms (buckets) for every `*_seconds` metric so dashboards can
//! take quantiles across replicas; other histograms are summaries.

use std::sync::OnceLock;

pub use metrics_exporter_prometheus::PrometheusHandle;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Bucket bounds of `*_seconds` histograms: 1 ms to 60 s.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The recorder, installed as the global one on first use. When an embedding program installed
/// its own first, metrics go there and this handle renders nothing: that program's choice.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
