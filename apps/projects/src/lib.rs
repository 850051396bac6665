//! Projects: a project tracker for the tenant's users, built on the public surface of sync-sdk
//! only. A project has a name, an owner and members chosen among the tenant's users; creating
//! one costs `projects.create` credits (20 unless the tenant's credit config says otherwise,
//! priced by the wrapper), and a retried create with the same `Idempotency-Key` creates and
//! charges once. Owners and members are shown as the synced copy has them now: live,
//! deactivated, deleted or missing.

mod dashboard;
mod projects;

use std::net::SocketAddr;

use clap::Parser;
use sync_sdk::{
    app::{AppArgs, AppKit, BoundApp, DeclaredChecks},
    axum::{Router, routing::get},
    consumer::NoHandler,
    contract::AppManifest,
    mongodb::bson::{Document, doc},
};

/// The operation code of project creation.
pub const CREATE_PROJECT: &str = "projects.create";

/// What the project tracker tells the wrapper about itself at start-up.
pub fn manifest() -> AppManifest {
    AppManifest::new("projects", "Projects")
        .requiring_feature("projects")
        .with_operation(CREATE_PROJECT, 20)
        // The nightly integrity pass: owners and members gone upstream are kept and marked
        // (`ownerOrphaned`, `memberOrphaned.<user id>`), and unmarked once live again.
        .with_reference("project", "projects", "ownerId")
        .with_references("project", "projects", "memberIds")
}

/// Settings (`projects --help`).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "projects",
    version,
    about = "Tenantsync example project tracker"
)]
pub struct Settings {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "PROJECTS_LISTEN", default_value = "127.0.0.1:8083")]
    pub listen: SocketAddr,
    /// What every Tenantsync app is configured with.
    #[command(flatten)]
    pub app: AppArgs,
}

/// The app's own part of the router state.
struct Projects {
    projects: sync_sdk::mongodb::Collection<Document>,
}

type AppState = sync_sdk::app::AppState<Projects>;

/// Connect, register, bind: the app, ready to run.
pub async fn build(
    settings: Settings,
) -> sync_sdk::anyhow::Result<BoundApp<NoHandler, DeclaredChecks>> {
    let kit = AppKit::start(manifest(), &settings.app, NoHandler).await?;
    let projects = kit.collection("projects");
    projects
        .create_index(
            sync_sdk::mongodb::IndexModel::builder()
                .keys(doc! {"tenantId": 1, "_id": 1})
                .build(),
        )
        .await?;
    let state = kit.state(Projects { projects });
    let router = Router::new()
        .route("/", get(dashboard::dashboard))
        .route("/projects", get(projects::list).post(projects::create))
        .route("/projects/{id}", get(projects::read))
        .route("/people", get(projects::people))
        .with_state(state);
    kit.bind(settings.listen, router).await
}
