//! End-to-end tests of Tenantsync. The harness lives in `sync_testkit`; scenario
//! helpers shared by several test files live here.

pub use sync_testkit::*;

pub mod browser;
pub mod nginx;
pub mod oidc;
pub mod otlp;
pub mod replicas;
pub mod suite;
pub mod wrapper_app;

/// Fail unless every scheduled time among `runs` (an app's recorded full syncs) ran once.
pub fn assert_each_scheduled_time_ran_once(app: &str, runs: &[sync_sdk::fullsync::FullSyncRun]) {
    let mut times: Vec<_> = runs.iter().map(|r| r.scheduled_for).collect();
    times.sort();
    times.dedup();
    assert_eq!(
        times.len(),
        runs.len(),
        "{app}: a scheduled full sync ran twice: {runs:?}"
    );
}
