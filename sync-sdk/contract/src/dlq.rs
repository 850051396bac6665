//! Dead letters: entries an app could not process, kept in `{ns}:dlq:{app}` with the original
//! stream and entry id, the error, the attempt count and the time, and the original fields, so
//! they can be listed, re-driven onto their stream once the cause is fixed, or purged.
//!
//! Re-driving appends the original fields to the original stream again: every app's group sees
//! the entry once more, and each skips it by event id if it already processed it.

use std::collections::HashMap;

use fred::prelude::*;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::StreamKeys;

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// The stream the entry was read from.
    pub stream: String,
    /// Its id there.
    pub entry_id: String,
    /// Why it was dead-lettered.
    pub error: String,
    /// Handler attempts made (0: never attempted, e.g. undecodable).
    pub attempts: u32,
    /// When (RFC 3339).
    pub at: String,
    /// The event type, when the entry said.
    pub event_type: Option<String>,
    /// The tenant, when the entry said.
    pub tenant_id: Option<String>,
    /// The original entry's fields.
    pub fields: HashMap<String, String>,
}

impl DeadLetter {
    /// A dead letter for entry `id` of `stream`.
    pub fn new(
        stream: &str,
        id: &str,
        fields: &HashMap<String, String>,
        error: String,
        attempts: u32,
    ) -> Self {
        Self {
            stream: stream.to_owned(),
            entry_id: id.to_owned(),
            error,
            attempts,
            at: chrono::Utc::now().to_rfc3339(),
            event_type: fields.get("eventType").cloned(),
            tenant_id: fields.get("tenantId").cloned(),
            fields: fields.clone(),
        }
    }

    fn to_fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("stream", self.stream.clone()),
            ("entryId", self.entry_id.clone()),
            ("error", self.error.clone()),
            ("attempts", self.attempts.to_string()),
            ("at", self.at.clone()),
            ("eventType", self.event_type.clone().unwrap_or_default()),
            ("tenantId", self.tenant_id.clone().unwrap_or_default()),
            (
                "fields",
                serde_json::to_string(&self.fields).unwrap_or_default(),
            ),
        ]
    }

    fn from_fields(f: &HashMap<String, String>) -> Self {
        let get = |k: &str| f.get(k).cloned().unwrap_or_default();
        let opt = |k: &str| f.get(k).filter(|v| !v.is_empty()).cloned();
        Self {
            stream: get("stream"),
            entry_id: get("entryId"),
            error: get("error"),
            attempts: get("attempts").parse().unwrap_or(0),
            at: get("at"),
            event_type: opt("eventType"),
            tenant_id: opt("tenantId"),
            fields: serde_json::from_str(&get("fields")).unwrap_or_default(),
        }
    }
}

/// Which dead letters an operation applies to.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this event type.
    pub event_type: Option<String>,
    /// Only this tenant.
    pub tenant_id: Option<Uuid>,
}

impl Filter {
    /// Whether `letter` is one of these.
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        self.event_type
            .as_ref()
            .is_none_or(|t| letter.event_type.as_ref() == Some(t))
            && self
                .tenant_id
                .is_none_or(|t| letter.tenant_id.as_deref() == Some(t.to_string().as_str()))
    }
}

/// Append a dead letter to the app's DLQ.
pub async fn push(
    redis: &Client,
    keys: &StreamKeys,
    app: &str,
    letter: &DeadLetter,
) -> Result<(), Error> {
    let _: String = redis
        .xadd(keys.dlq(app), false, None::<()>, "*", letter.to_fields())
        .await?;
    Ok(())
}

/// Dead letters of `app`, oldest first, with their DLQ entry ids (at most `count`).
pub async fn list(
    redis: &Client,
    keys: &StreamKeys,
    app: &str,
    count: Option<u64>,
) -> Result<Vec<(String, DeadLetter)>, Error> {
    let entries: Vec<(String, HashMap<String, String>)> =
        redis.xrange(keys.dlq(app), "-", "+", count).await?;
    Ok(entries
        .into_iter()
        .map(|(id, f)| (id, DeadLetter::from_fields(&f)))
        .collect())
}

/// Put matching dead letters back on their original streams and remove them from the DLQ;
/// returns how many. Only letters of this namespace's event and lifecycle streams go back; any
/// other stream a letter names is left alone. The fields are the letter's own, as the app wrote
/// them: the wrapper's redrive (sync health) republishes its own copy of each event instead,
/// which is what an operator should use when an app's Redis user may not be trusted.
pub async fn redrive(
    redis: &Client,
    keys: &StreamKeys,
    app: &str,
    filter: &Filter,
) -> Result<usize, Error> {
    let mut moved = 0;
    for (id, letter) in list(redis, keys, app, None).await? {
        let shared =
            keys.all_events().contains(&letter.stream) || letter.stream == keys.lifecycle();
        if !filter.matches(&letter) || letter.fields.is_empty() || !shared {
            continue;
        }
        let fields: Vec<(String, String)> = letter.fields.into_iter().collect();
        let _: String = redis
            .xadd(letter.stream.as_str(), false, None::<()>, "*", fields)
            .await?;
        let _: u64 = redis.xdel(keys.dlq(app), id.as_str()).await?;
        moved += 1;
    }
    Ok(moved)
}

/// Remove matching dead letters; returns how many.
pub async fn purge(
    redis: &Client,
    keys: &StreamKeys,
    app: &str,
    filter: &Filter,
) -> Result<usize, Error> {
    let ids: Vec<String> = list(redis, keys, app, None)
        .await?
        .into_iter()
        .filter(|(_, l)| filter.matches(l))
        .map(|(id, _)| id)
        .collect();
    if ids.is_empty() {
        return Ok(0);
    }
    let removed: u64 = redis.xdel(keys.dlq(app), ids).await?;
    Ok(removed as usize)
}

/// Lag and pending count of one group on one partition.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupLag {
    /// The partition.
    pub partition: u32,
    /// The group (app).
    pub group: String,
    /// Entries not yet delivered to the group (None when Redis cannot tell).
    pub lag: Option<u64>,
    /// Entries delivered but not acknowledged.
    pub pending: u64,
    /// Stream length.
    pub length: u64,
}

/// Lag and pending counts of every group on every partition.
pub async fn lag(redis: &Client, keys: &StreamKeys) -> Result<Vec<GroupLag>, Error> {
    let mut out = Vec::new();
    for partition in 0..keys.partitions() {
        let stream = keys.events(partition);
        let exists: u64 = redis.exists(&stream).await?;
        if exists == 0 {
            continue;
        }
        let length: u64 = redis.xlen(&stream).await?;
        let groups: Vec<HashMap<String, fred::types::Value>> = redis.xinfo_groups(&stream).await?;
        for g in groups {
            out.push(GroupLag {
                partition,
                group: g
                    .get("name")
                    .and_then(|v| v.as_string())
                    .unwrap_or_default(),
                lag: g.get("lag").and_then(|v| v.as_u64()),
                pending: g.get("pending").and_then(|v| v.as_u64()).unwrap_or(0),
                length,
            });
        }
    }
    Ok(out)
}
