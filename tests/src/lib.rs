//! End-to-end tests of Tenantsync. The harness lives in `sync_testkit`; scenario
//! helpers shared by several test files live here.

pub use sync_testkit::*;

pub mod browser;
pub mod nginx;
pub mod oidc;
pub mod suite;
pub mod wrapper_app;
