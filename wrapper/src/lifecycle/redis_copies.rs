//! The copies of an erased user's data on Redis: the entries of their `user.*` events in their
//! tenant's partition stream, and every app's dead letters of those events. Streams are
//! append-only (an entry cannot be rewritten), so the copies are deleted (`XDEL`):
//!
//! * an event entry once every consumer group has read and acknowledged it (its id at or
//!   below the group's last-delivered id, and not in the group's pending list), so no app
//!   misses it: an app that has not read it yet reads it, then the erasure's next round
//!   deletes it. The erasure's own `user.erased` entry carries the tombstone only and stays;
//! * a dead letter at once (an operator redriving it would only bring the person back).
//!
//! Every key touched is one stream, so this holds on a Redis Cluster as on one node.

use std::collections::HashMap;

use fred::prelude::*;
use serde_json::Value;
use sync_contract::StreamKeys;
use uuid::Uuid;

/// What one round found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RedisCopies {
    /// Event entries deleted.
    pub events_deleted: u64,
    /// Dead letters deleted.
    pub dead_letters_deleted: u64,
    /// Event entries of the user some group has not acknowledged yet (deleted by a later
    /// round).
    pub events_waiting: u64,
}

/// Whether an envelope (JSON text) is an event of user `user_id` of `tenant_id` that carries
/// their data (every `user.*` event but the erasure's own).
fn holds_the_user(envelope: &str, tenant_id: &str, user_id: &str) -> bool {
    let Ok(v) = serde_json::from_str::<Value>(envelope) else {
        return false;
    };
    let event_type = v["eventType"].as_str().unwrap_or_default();
    v["tenantId"] == tenant_id
        && v["aggregateId"] == user_id
        && event_type.starts_with("user.")
        && event_type != "user.erased"
}

/// A stream entry id as `(milliseconds, sequence)`.
fn id_of(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// Every entry of `stream` from id `start` (`-`: the first), a page at a time, as
/// `(id, fields)`.
async fn entries(
    redis: &Client,
    stream: &str,
    start: &str,
) -> Result<Vec<(String, HashMap<String, String>)>, Error> {
    let mut out = Vec::new();
    let mut start = start.to_owned();
    loop {
        let page: Vec<(String, HashMap<String, String>)> = redis
            .xrange(stream, start.as_str(), "+", Some(1_000))
            .await?;
        let Some(last) = page.last() else {
            return Ok(out);
        };
        start = format!("({}", last.0);
        let full = page.len() == 1_000;
        out.extend(page);
        if !full {
            return Ok(out);
        }
    }
}

/// Delete what Redis holds of user `user_id` of `tenant_id` that may be deleted now (see the
/// module docs); `apps` are the registered apps (their dead-letter streams). `since`: when the
/// user's first event was written (the outbox keeps it), so the partition stream is read from
/// an hour before that (entry ids are the time Redis appended them; the hour covers clocks
/// that disagree) instead of from its start; None reads it all.
pub async fn erase(
    redis: &Client,
    keys: &StreamKeys,
    apps: &[String],
    tenant_id: Uuid,
    user_id: Uuid,
    since: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<RedisCopies, Error> {
    let (tenant, user) = (tenant_id.to_string(), user_id.to_string());
    let mut found = RedisCopies::default();

    let stream = keys.events_for(tenant_id);
    let start = since.map_or_else(
        || "-".to_owned(),
        |t| format!("{}-0", (t.timestamp_millis() - 3_600_000).max(0)),
    );
    let candidates: Vec<String> = entries(redis, &stream, &start)
        .await?
        .into_iter()
        .filter(|(_, f)| {
            f.get(sync_contract::FIELD_ENVELOPE)
                .is_some_and(|e| holds_the_user(e, &tenant, &user))
        })
        .map(|(id, _)| id)
        .collect();
    if !candidates.is_empty() {
        let groups: Vec<HashMap<String, fred::types::Value>> =
            redis.xinfo_groups(&stream).await.unwrap_or_default();
        let mut deletable = Vec::new();
        for id in candidates {
            let mut acknowledged = true;
            for group in &groups {
                let name = group
                    .get("name")
                    .and_then(|v| v.as_string())
                    .unwrap_or_default();
                let delivered = group
                    .get("last-delivered-id")
                    .and_then(|v| v.as_string())
                    .unwrap_or_default();
                let pending: Vec<fred::types::Value> = redis
                    .xpending(&stream, name.as_str(), (id.as_str(), id.as_str(), 1))
                    .await?;
                if id_of(&id) > id_of(&delivered) || !pending.is_empty() {
                    acknowledged = false;
                    break;
                }
            }
            if acknowledged {
                deletable.push(id);
            } else {
                found.events_waiting += 1;
            }
        }
        if !deletable.is_empty() {
            found.events_deleted = redis.xdel(&stream, deletable).await?;
        }
    }

    for app in apps {
        let dlq = keys.dlq(app);
        let letters: Vec<String> = entries(redis, &dlq, "-")
            .await?
            .into_iter()
            .filter(|(_, f)| {
                let original: HashMap<String, String> = f
                    .get("fields")
                    .and_then(|j| serde_json::from_str(j).ok())
                    .unwrap_or_default();
                original
                    .get(sync_contract::FIELD_ENVELOPE)
                    .is_some_and(|e| holds_the_user(e, &tenant, &user))
            })
            .map(|(id, _)| id)
            .collect();
        if !letters.is_empty() {
            let deleted: u64 = redis.xdel(&dlq, letters).await?;
            found.dead_letters_deleted += deleted;
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_users_events_before_the_erasure_hold_them() {
        let (t, u) = ("t1", "u1");
        let env = |ty: &str, tenant: &str, agg: &str| {
            serde_json::json!({"eventType": ty, "tenantId": tenant, "aggregateId": agg}).to_string()
        };
        assert!(holds_the_user(&env("user.created", t, u), t, u));
        assert!(holds_the_user(&env("user.email_changed", t, u), t, u));
        assert!(!holds_the_user(&env("user.erased", t, u), t, u));
        assert!(!holds_the_user(&env("user.created", "t2", u), t, u));
        assert!(!holds_the_user(&env("user.created", t, "u2"), t, u));
        assert!(!holds_the_user(&env("membership.granted", t, u), t, u));
        assert!(!holds_the_user("not json", t, u));
        assert!(id_of("5-2") < id_of("10-0") && id_of("5-2") > id_of("5-1"));
    }
}
