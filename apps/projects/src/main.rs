//! `projects`: parse the configuration and run the project tracker until Ctrl-C.

use clap::Parser;

#[sync_sdk::tokio::main(crate = "sync_sdk::tokio")]
async fn main() -> sync_sdk::anyhow::Result<()> {
    // Logs, and traces over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set (flushed on return).
    let _telemetry = sync_sdk::telemetry::init("projects", false);
    projects::build(projects::Settings::parse())
        .await?
        .run_until_ctrl_c()
        .await
}
