//! `tsync`: operator tooling for Tenantsync apps: dead letters and consumer-group lag.

use clap::{Parser, Subcommand};
use fred::prelude::*;
use std::{io::Write, sync::Arc, time::Duration};

use sync_sdk::{
    contract::StreamKeys,
    dlq::{self, Filter},
    fullsync::{FieldReferences, FullSync, Integrity, NoIntegrity},
    loader::{Loader, WrapperClient, WrapperConfig},
    status,
    store::{TenantStore, mongo::MongoStore, postgres::PostgresStore},
};
use uuid::Uuid;

/// Tenantsync operator CLI.
#[derive(Debug, Parser)]
#[command(name = "tsync", version, about)]
struct Cli {
    /// Redis holding the streams.
    #[arg(
        long,
        env = "REDIS_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379"
    )]
    redis_url: String,
    /// Key namespace.
    #[arg(long, env = "TSYNC_NAMESPACE", default_value = "tsync")]
    namespace: String,
    /// Partition count.
    #[arg(long, env = "TSYNC_PARTITIONS", default_value_t = 8)]
    partitions: u32,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Dead letters of an app.
    Dlq {
        /// The app (consumer group), e.g. `crm`.
        #[arg(long, env = "TSYNC_APP")]
        app: String,
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Lag and pending counts of every group on every partition.
    Lag,
    /// What every live replica of an app reports (readers, lag, pending, parked tenants,
    /// re-syncs, tenants loaded), the re-syncs not yet done and the dead letters waiting.
    Status {
        /// The app (consumer group); every app with a group when not given.
        #[arg(long, env = "TSYNC_APP")]
        app: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run the full sync of an app's store now (digest compare, repair, integrity counts).
    FullSync {
        /// The app, e.g. `crm` (also its service client id).
        #[arg(long, env = "TSYNC_APP")]
        app: String,
        /// The wrapper's base URL.
        #[arg(long, env = "WRAPPER_URL", default_value = "http://127.0.0.1:8080")]
        wrapper_url: String,
        /// The app's service client secret.
        #[arg(long, env = "TSYNC_SERVICE_SECRET", hide_env_values = true)]
        client_secret: String,
        /// The app's store: a `postgres://` or `mongodb://` URL (Mongo: the database is `--mongo-db`).
        #[arg(long, env = "TSYNC_STORE_URL", hide_env_values = true)]
        store_url: String,
        /// The Mongo database of the store.
        #[arg(long, env = "TSYNC_MONGO_DB", default_value = "app")]
        mongo_db: String,
    },
}

#[derive(Debug, Subcommand)]
enum DlqAction {
    /// List dead letters (one line each).
    List {
        /// At most this many.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Show one dead letter in full (JSON).
    Show {
        /// Its DLQ entry id.
        id: String,
    },
    /// Put dead letters back on their streams.
    Redrive(FilterArgs),
    /// Delete dead letters.
    Purge(FilterArgs),
}

#[derive(Debug, clap::Args)]
struct FilterArgs {
    /// Only this event type.
    #[arg(long)]
    event_type: Option<String>,
    /// Only this tenant.
    #[arg(long)]
    tenant: Option<Uuid>,
    /// Required to act on every dead letter when no filter is given.
    #[arg(long)]
    all: bool,
}

impl FilterArgs {
    fn filter(&self) -> anyhow::Result<Filter> {
        anyhow::ensure!(
            self.all || self.event_type.is_some() || self.tenant.is_some(),
            "give --event-type, --tenant or --all"
        );
        Ok(Filter {
            event_type: self.event_type.clone(),
            tenant_id: self.tenant,
        })
    }
}

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
