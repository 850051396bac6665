//! CRM: accounts owned by the wrapper's users, on MongoDB. Everything about tenants, users,
//! sessions and credits comes from sync-sdk; this crate is only the CRM's own domain.
//!
//! * Accounts reference their owner by user id; listings show the owner's current name and email
//!   from the synced copy, and "[Deleted User]" when the owner is gone upstream.
//! * Creating an account consumes the `crm.accounts.create` cost (35 unless the tenant's credit
//!   config says otherwise) and is refused without credits.

mod accounts;
mod dashboard;

use std::net::SocketAddr;

use axum::{Router, routing::get};
use clap::Parser;
use mongodb::{
    Collection,
    bson::{Document, doc},
};
use sync_sdk::{
    app::{AppArgs, AppKit, BoundApp, DeclaredChecks},
    consumer::NoHandler,
    contract::AppManifest,
};

use accounts::{create, list, read, remove, update};
use dashboard::dashboard;

/// The operation code of account creation.
pub const CREATE_ACCOUNT: &str = "crm.accounts.create";
/// Its price unless the tenant's credit config says otherwise (declared in the manifest; the
/// wrapper prices every consumption).
pub const DEFAULT_COST: i64 = 35;

/// What the CRM tells the wrapper about itself at start-up.
pub fn manifest() -> AppManifest {
    AppManifest::new("crm", "CRM")
        .requiring_feature("crm")
        .with_operation(CREATE_ACCOUNT, DEFAULT_COST)
        // The nightly integrity pass: accounts whose owner is gone upstream are kept and
        // marked `ownerOrphaned`.
        .with_reference("account", "accounts", "ownerId")
}
/// Shown for owners deleted or missing upstream.
pub const DELETED_USER: &str = "[Deleted User]";

/// CRM settings (`crm --help`).
#[derive(Debug, Clone, Parser)]
#[command(name = "crm", version, about = "Tenantsync example CRM")]
pub struct Settings {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "CRM_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// What every Tenantsync app is configured with.
    #[command(flatten)]
    pub app: AppArgs,
}

/// The CRM's own part of the router state (the SDK's part is in [`sync_sdk::app::AppState`]).
struct Crm {
    accounts: Collection<Document>,
}

type AppState = sync_sdk::app::AppState<Crm>;

/// Connect, create indexes and groups, bind: the app, ready to run.
pub async fn build(settings: Settings) -> anyhow::Result<BoundApp<NoHandler, DeclaredChecks>> {
    let kit = AppKit::start(manifest(), &settings.app, NoHandler).await?;
    let accounts = kit.collection("accounts");
    accounts
        .create_index(
            mongodb::IndexModel::builder()
                .keys(doc! {"tenantId": 1, "_id": 1})
                .build(),
        )
        .await?;
    let state = kit.state(Crm { accounts });
    let router = Router::new()
        .route("/", get(dashboard))
        .route("/accounts", get(list).post(create))
        .route("/accounts/{id}", get(read).patch(update).delete(remove))
        .with_state(state);
    kit.bind(settings.listen, router).await
}
