//! A service as its own process, for tests that SIGKILL one, configured by environment as
//! the shipped binaries are:
//!
//! * `replica wrapper [ARGS…]`: the `wrapper` binary with these arguments (serving when there are
//!   none; `replica wrapper redis-acl apply`, `replica wrapper migrate`), configured by its
//!   `WRAPPER_*`, `DATABASE_URL`, `REDIS_URL`, ….
//! * `replica crm` / `replica hrms` / `replica projects`: the app (`CRM_LISTEN` / `HRMS_LISTEN`
//!   / `PROJECTS_LISTEN` and the SDK's `AppArgs` variables).
//! * `replica consume`: the SDK consumer applying into a Postgres store (`DATABASE_URL` of
//!   the store, `REDIS_URL`, `TSYNC_NAMESPACE`, `TSYNC_PARTITIONS`, `TSYNC_APP`,
//!   `HANDLER_DELAY_MS`: how long the handler takes per event, `TSYNC_BATCH`: entries per
//!   read, default the SDK's).
//!
//! One binary for all of them, so the end-to-end tests link one more executable, not four.

use std::{sync::Arc, time::Duration};

use sync_sdk::{
    consumer::{Consumer, ConsumerConfig, Handler, HandlerError},
    contract::{Envelope, StreamKeys},
    store::postgres::PostgresStore,
};
use sync_testkit::redis_client;
use tokio_util::sync::CancellationToken;

struct Slow(Duration);

impl Handler for Slow {
    async fn handle(&self, _: &Envelope) -> Result<(), HandlerError> {
        tokio::time::sleep(self.0).await;
        Ok(())
    }
}

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).map_err(|_| anyhow::anyhow!("{name} is required"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    use clap::Parser;
    let role = std::env::args().nth(1).unwrap_or_default();
    // Quiet logs unless RUST_LOG says otherwise; traces when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    let _telemetry = sync_sdk::telemetry::init_with_default(&role, false, "warn");
    match Some(role.as_str()).filter(|r| !r.is_empty()) {
        Some("wrapper") => {
            let args = std::iter::once("wrapper".to_owned()).chain(std::env::args().skip(2));
            wrapper::command::run(wrapper::config::Cli::parse_from(args)).await
        }
        Some("crm") => {
            let settings = crm::Settings::parse_from(["crm"]);
            crm::build(settings).await?.run_until_ctrl_c().await
        }
        Some("hrms") => {
            let settings = hrms::Settings::parse_from(["hrms"]);
            hrms::build(settings).await?.run_until_ctrl_c().await
        }
        Some("projects") => {
            let settings = projects::Settings::parse_from(["projects"]);
            projects::build(settings).await?.run_until_ctrl_c().await
        }
        Some("consume") => consume().await,
        other => anyhow::bail!("usage: replica wrapper|crm|hrms|projects|consume (not {other:?})"),
    }
}

async fn consume() -> anyhow::Result<()> {
    let db = sqlx::PgPool::connect(&env("DATABASE_URL")?).await?;
    let store = PostgresStore::new(db);
    store.init().await?;
    let partitions = env("TSYNC_PARTITIONS")?.parse()?;
    let keys = StreamKeys::new(env("TSYNC_NAMESPACE")?, partitions)
        .ok_or_else(|| anyhow::anyhow!("bad namespace"))?;
    let delay = Duration::from_millis(env("HANDLER_DELAY_MS")?.parse()?);
    let mut config = ConsumerConfig::new(env("TSYNC_APP")?, keys);
    if let Ok(batch) = env("TSYNC_BATCH") {
        config.batch = batch.parse()?;
    }
    let redis = redis_client(&env("REDIS_URL")?).await?;
    let consumer = Consumer::new(redis, Arc::new(store), Arc::new(Slow(delay)), config);
    consumer.run(CancellationToken::new()).await?;
    Ok(())
}
