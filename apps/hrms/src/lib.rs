//! HRMS: employees (a wrapper user, a department, a salary) on MongoDB. Salaries are visible
//! to tenant admins only; who is an admin comes from the synced roles and memberships.

mod dashboard;
mod employees;

use std::net::SocketAddr;

use axum::{Router, routing::get};
use clap::Parser;
use mongodb::bson::{Document, doc};
use sync_sdk::{
    app::{AppArgs, AppKit, BoundApp, DeclaredChecks},
    consumer::NoHandler,
    contract::AppManifest,
};

use dashboard::dashboard;
use employees::{create, list};

/// The permission of tenant admins (the wrapper's built-in `admin` role).
pub const ADMIN_PERMISSION: &str = "tenant.admin";

/// What the HRMS tells the wrapper about itself at start-up (it charges no credits).
pub fn manifest() -> AppManifest {
    AppManifest::new("hrms", "HRMS")
        .requiring_feature("hrms")
        // The nightly integrity pass: employees whose user is gone upstream are kept and
        // marked `userOrphaned`.
        .with_reference("employee", "employees", "userId")
}

/// HRMS settings (`hrms --help`).
#[derive(Debug, Clone, Parser)]
#[command(name = "hrms", version, about = "Tenantsync example HRMS")]
pub struct Settings {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "HRMS_LISTEN", default_value = "127.0.0.1:8082")]
    pub listen: SocketAddr,
    /// What every Tenantsync app is configured with.
    #[command(flatten)]
    pub app: AppArgs,
}

/// The HRMS's own part of the router state (the SDK's part is in [`sync_sdk::app::AppState`]).
struct Hrms {
    employees: mongodb::Collection<Document>,
}

type AppState = sync_sdk::app::AppState<Hrms>;

/// Connect, prepare, bind: the app, ready to run.
pub async fn build(settings: Settings) -> anyhow::Result<BoundApp<NoHandler, DeclaredChecks>> {
    let kit = AppKit::start(manifest(), &settings.app, NoHandler).await?;
    let employees = kit.collection("employees");
    employees
        .create_index(
            mongodb::IndexModel::builder()
                .keys(doc! {"tenantId": 1, "userId": 1})
                .build(),
        )
        .await?;
    let state = kit.state(Hrms { employees });
    let router = Router::new()
        .route("/", get(dashboard))
        .route("/employees", get(list).post(create))
        .with_state(state);
    kit.bind(settings.listen, router).await
}
