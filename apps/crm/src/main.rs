//! `crm`: parse the configuration and run the app until Ctrl-C.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Logs, and traces over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set (flushed on return).
    let _telemetry = sync_sdk::telemetry::init("crm", false);
    crm::build(crm::Settings::parse())
        .await?
        .run_until_ctrl_c()
        .await
}
