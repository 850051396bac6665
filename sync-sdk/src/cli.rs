//! The `tsync` operator CLI's command line (feature `cli`): its flags and variables, in the
//! library so the configuration reference is generated from them like every binary's.

use clap::{Parser, Subcommand};
use uuid::Uuid;

use crate::dlq::Filter;

/// Tenantsync operator CLI.
#[derive(Debug, Parser)]
#[command(name = "tsync", version, about)]
pub struct Cli {
    /// Redis holding the streams.
    #[arg(
        long,
        env = "REDIS_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// Key namespace.
    #[arg(long, env = "TSYNC_NAMESPACE", default_value = "tsync")]
    pub namespace: String,
    /// Partition count.
    #[arg(long, env = "TSYNC_PARTITIONS", default_value_t = 8)]
    pub partitions: u32,
    #[allow(missing_docs)]
    #[command(subcommand)]
    pub command: Command,
}

/// What `tsync` does.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Dead letters of an app.
    Dlq {
        /// The app (consumer group), e.g. `crm`.
        #[arg(long, env = "TSYNC_APP")]
        app: String,
        #[allow(missing_docs)]
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

/// What `tsync dlq` does.
#[derive(Debug, Subcommand)]
pub enum DlqAction {
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

/// Which dead letters a redrive or a purge acts on.
#[derive(Debug, clap::Args)]
pub struct FilterArgs {
    /// Only this event type.
    #[arg(long)]
    pub event_type: Option<String>,
    /// Only this tenant.
    #[arg(long)]
    pub tenant: Option<Uuid>,
    /// Required to act on every dead letter when no filter is given.
    #[arg(long)]
    pub all: bool,
}

impl FilterArgs {
    /// The filter, refused when it would act on every dead letter without `--all`.
    pub fn filter(&self) -> anyhow::Result<Filter> {
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
