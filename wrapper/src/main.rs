//! `wrapper`: parse the configuration, then serve, migrate or run an admin command
//! ([`wrapper::command::run`]).

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = wrapper::config::Cli::parse();
    // Logs, and traces over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set (flushed on return).
    let _telemetry = sync_telemetry::init("wrapper", cli.settings.log_json);
    wrapper::command::run(cli).await
}
