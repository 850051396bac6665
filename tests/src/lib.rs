//! End-to-end tests of Tenantsync. The harness lives in `sync_sdk::test_support`; scenario
//! helpers shared by several test files live here.

pub use sync_sdk::test_support::*;

/// A connected fred client for `url`.
pub async fn redis_client(url: &str) -> anyhow::Result<fred::clients::Client> {
    use fred::prelude::*;
    let client = Builder::from_config(Config::from_url(url)?).build()?;
    client.init().await?;
    Ok(client)
}

pub mod wrapper_app;
