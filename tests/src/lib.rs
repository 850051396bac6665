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

/// Every entry of every partition stream under `keys`, decoded, in stream order per partition.
pub async fn read_all_events(
    redis: &fred::clients::Client,
    keys: &sync_sdk::contract::StreamKeys,
) -> anyhow::Result<Vec<(String, sync_sdk::contract::Envelope)>> {
    use fred::prelude::*;
    let mut out = Vec::new();
    for stream in keys.all_events() {
        let entries: Vec<(String, std::collections::HashMap<String, String>)> =
            redis.xrange(&stream, "-", "+", None).await?;
        for (id, fields) in entries {
            out.push((
                id,
                sync_sdk::contract::Envelope::from_stream_fields(fields)?,
            ));
        }
    }
    Ok(out)
}

/// Checks that, per tenant, the first occurrences of events come in strictly increasing `seq`
/// and that every duplicate repeats an earlier event exactly (same eventId and seq). Returns the
/// number of distinct events.
pub fn check_per_tenant_order(events: &[(String, sync_sdk::contract::Envelope)]) -> usize {
    use std::collections::{HashMap, HashSet};
    let mut last: HashMap<uuid::Uuid, i64> = HashMap::new();
    let mut seen: HashMap<uuid::Uuid, i64> = HashMap::new();
    let mut distinct = HashSet::new();
    for (_, e) in events {
        if let Some(seq) = seen.get(&e.event_id) {
            assert_eq!(*seq, e.seq, "a duplicate must repeat the same event");
            continue;
        }
        seen.insert(e.event_id, e.seq);
        distinct.insert(e.event_id);
        let prev = last.insert(e.tenant_id, e.seq).unwrap_or(0);
        assert_eq!(
            e.seq,
            prev + 1,
            "tenant {} jumped from seq {prev} to {}",
            e.tenant_id,
            e.seq
        );
    }
    distinct.len()
}
