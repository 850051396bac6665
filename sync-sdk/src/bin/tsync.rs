//! `tsync`: operator tooling for Tenantsync apps: dead letters and consumer-group lag.

use clap::Parser;
use fred::prelude::*;
use std::{io::Write, sync::Arc, time::Duration};

use sync_sdk::{
    cli::{Cli, Command, DlqAction},
    contract::StreamKeys,
    dlq,
    fullsync::{FieldReferences, FullSync, Integrity, NoIntegrity},
    loader::Loader,
    status,
    store::{TenantStore, mongo::MongoStore, postgres::PostgresStore},
    wrapper_client::{WrapperClient, WrapperConfig},
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let keys = StreamKeys::new(cli.namespace.clone(), cli.partitions)
        .ok_or_else(|| anyhow::anyhow!("invalid namespace or partition count"))?;
    let redis = Builder::from_config(Config::from_url(&cli.redis_url)?).build()?;
    redis.init().await?;
    match cli.command {
        Command::Lag => {
            println!(
                "{:>9}  {:<16} {:>8} {:>8} {:>8}",
                "partition", "group", "lag", "pending", "length"
            );
            for g in dlq::lag(&redis, &keys).await? {
                let lag = g.lag.map_or("?".to_owned(), |l| l.to_string());
                println!(
                    "{:>9}  {:<16} {:>8} {:>8} {:>8}",
                    g.partition, g.group, lag, g.pending, g.length
                );
            }
        }
        Command::Status { app, json } => {
            let apps = match app {
                Some(app) => vec![app],
                None => dlq::lag(&redis, &keys)
                    .await?
                    .into_iter()
                    .map(|g| g.group)
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect(),
            };
            let mut all = Vec::new();
            for app in apps {
                all.push(status::AppStatus::read(&redis, &keys, &app).await?);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                for app in &all {
                    print!("{app}");
                }
            }
        }
        Command::FullSync {
            app,
            wrapper_url,
            client_secret,
            store_url,
            mongo_db,
        } => {
            let app_name = app.clone();
            let client = WrapperClient::new(WrapperConfig {
                base_url: wrapper_url,
                client_id: app,
                client_secret,
                page_size: 5_000,
                timeout: Duration::from_secs(30),
            });
            // The integrity checks the app declared in its manifest: the same the app runs.
            let manifest = client.manifest(&app_name).await?;
            if store_url.starts_with("mongodb") {
                let db = mongodb::Client::with_uri_str(&store_url)
                    .await?
                    .database(&mongo_db);
                let checks = manifest
                    .map(|m| FieldReferences::declared(&db, &m))
                    .unwrap_or_default();
                eprintln!("integrity checks declared by {app_name}: {}", checks.len());
                full_sync(client, Arc::new(MongoStore::new(db)), checks).await?;
            } else {
                if manifest.is_some_and(|m| !m.references.is_empty()) {
                    eprintln!(
                        "the app's declared integrity checks read MongoDB collections: not run on a Postgres store"
                    );
                }
                let pool = sqlx::PgPool::connect(&store_url).await?;
                full_sync(client, Arc::new(PostgresStore::new(pool)), NoIntegrity).await?;
            }
        }
        Command::Dlq { app, action } => match action {
            DlqAction::List { count } => {
                for (id, l) in dlq::list(&redis, &keys, &app, count).await? {
                    println!(
                        "{id}  {}  {}  tenant={}  attempts={}  {}",
                        l.at,
                        l.event_type.as_deref().unwrap_or("?"),
                        l.tenant_id.as_deref().unwrap_or("?"),
                        l.attempts,
                        l.error
                    );
                }
            }
            DlqAction::Show { id } => {
                let found = dlq::list(&redis, &keys, &app, None)
                    .await?
                    .into_iter()
                    .find(|(i, _)| *i == id);
                let (_, letter) = found.ok_or_else(|| anyhow::anyhow!("no dead letter {id}"))?;
                println!("{}", serde_json::to_string_pretty(&letter)?);
            }
            DlqAction::Redrive(f) => {
                println!(
                    "re-driven: {}",
                    dlq::redrive(&redis, &keys, &app, &f.filter()?).await?
                );
            }
            DlqAction::Purge(f) => {
                println!(
                    "purged: {}",
                    dlq::purge(&redis, &keys, &app, &f.filter()?).await?
                );
            }
        },
    }
    Ok(())
}

/// Run one full sync (with the app's integrity checks) with a progress bar on stderr, then
/// print the report as JSON.
async fn full_sync<S: TenantStore, I: Integrity>(
    client: WrapperClient,
    store: Arc<S>,
    integrity: I,
) -> anyhow::Result<()> {
    let loader = Loader::new(client, store.clone());
    let full = FullSync::new(loader, store, Arc::new(integrity));
    let report = full
        .run_once(|done, total| {
            let width = 30;
            let filled = (done * width).checked_div(total).unwrap_or(width);
            eprint!(
                "\r[{}{}] {done}/{total} tenants",
                "#".repeat(filled),
                " ".repeat(width - filled)
            );
            let _ = std::io::stderr().flush();
        })
        .await?;
    eprintln!();
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
