//! `projects`: parse the configuration and run the project tracker until Ctrl-C.

use clap::Parser;

#[sync_sdk::tokio::main(crate = "sync_sdk::tokio")]
async fn main() -> sync_sdk::anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    projects::build(projects::Settings::parse())
        .await?
        .run_until_ctrl_c()
        .await
}
