//! Every end-to-end test of Tenantsync in one test binary: the whole graph (wrapper, SDK, apps)
//! is linked once instead of once per file. Each module is one area; run one with
//! `cargo test -p tsync-e2e --test e2e <module>::` (e.g. `security::`).

mod app_auth;
mod compose;
mod config_reference;
mod console;
mod console_pages;
mod consumer;
mod contract_docs;
mod credits;
mod crm;
mod deployment;
mod erasure;
mod grants;
mod guide_app;
mod lazy_load;
mod least_privilege;
mod lifecycle;
mod metrics;
mod nginx;
mod oidc_checks;
mod projects;
mod redis_acl;
mod relay;
mod scale_out;
mod security;
mod smoke;
mod sso;
mod tracing;
mod webhooks;
mod wrapper_api;
