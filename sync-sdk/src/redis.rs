//! A Redis client as every Tenantsync process wants it: it reconnects with exponential backoff
//! forever, starting while Redis is down is not fatal, and commands time out.

use std::time::Duration;

use fred::prelude::*;

/// A client for `url`, connecting in the background (commands wait for the connection).
pub fn connect(url: &str) -> Result<Client, Error> {
    let mut config = Config::from_url(url)?;
    // Starting while Redis is down must not be fatal: work waits for it.
    config.fail_fast = false;
    let client = Builder::from_config(config)
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(5))
        .build()?;
    client.connect();
    Ok(client)
}
