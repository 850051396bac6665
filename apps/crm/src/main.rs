//! `crm`: parse the configuration and run the app until Ctrl-C.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    crm::build(crm::Settings::parse())
        .await?
        .run_until_ctrl_c()
        .await
}
