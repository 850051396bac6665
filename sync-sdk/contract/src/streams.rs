//! The transport side of the contract (feature `redis`): a Redis client as every Tenantsync
//! process wants it — it reconnects with exponential backoff forever, starting while Redis is
//! down is not fatal, and commands time out — and one read of a consumer group.

use std::{collections::HashMap, time::Duration};

use fred::{prelude::*, types::streams::XReadResponse};

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

/// One XREADGROUP of new entries (`>`) on one stream: the entries, oldest first. A read that
/// times out (nil reply) is an empty batch, not an error.
pub async fn read_group(
    redis: &Client,
    group: &str,
    consumer: &str,
    stream: &str,
    count: u64,
    block: Option<Duration>,
) -> Result<Vec<(String, HashMap<String, String>)>, Error> {
    let reply: fred::types::Value = redis
        .xreadgroup(
            group,
            consumer,
            Some(count),
            // BLOCK 0 would block forever.
            block.map(|b| (b.as_millis() as u64).max(1)),
            false,
            stream,
            ">",
        )
        .await?;
    if reply.is_null() {
        return Ok(Vec::new());
    }
    let mut map: XReadResponse<String, String, String, String> = reply.into_xread_response()?;
    Ok(map.remove(stream).unwrap_or_default())
}

/// The entries already delivered to `consumer` of `group` on `stream` and not acknowledged
/// (XREADGROUP from `0`), oldest first, at most `count`: a consumer reads them after a restart
/// or a failure, before new ones.
pub async fn read_group_pending(
    redis: &Client,
    group: &str,
    consumer: &str,
    stream: &str,
    count: u64,
) -> Result<Vec<(String, HashMap<String, String>)>, Error> {
    let reply: fred::types::Value = redis
        .xreadgroup(group, consumer, Some(count), None, false, stream, "0")
        .await?;
    if reply.is_null() {
        return Ok(Vec::new());
    }
    let mut map: XReadResponse<String, String, String, String> = reply.into_xread_response()?;
    Ok(map.remove(stream).unwrap_or_default())
}
