//! A consumer process for tests that kill one: the SDK consumer applying into a Postgres store,
//! configured by environment (`DATABASE_URL` of the store, `REDIS_URL`, `TSYNC_NAMESPACE`,
//! `TSYNC_PARTITIONS`, `TSYNC_APP`, `HANDLER_DELAY_MS`: how long the handler takes per event,
//! `TSYNC_BATCH`: entries per read, default the SDK's).

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
