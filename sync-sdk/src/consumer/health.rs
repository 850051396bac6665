//! Whether the consumer is doing its job: every partition has a live reader (liveness of the
//! process is not enough: a dead reader under a healthy process is the worst case), with
//! restarts, parked tenants, lag and the age of the oldest pending entry per partition. Apps
//! serve [`HealthReport`] as their readiness endpoint.

use std::sync::{
    Mutex,
    atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
};

use fred::prelude::*;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Consumer, Handler, ResyncHook, batch::Partition};
use crate::store::TenantStore;

/// Shared between the readers, their supervisor and whoever asks.
pub struct ConsumerHealth {
    running: AtomicBool,
    partitions: Vec<PartitionHealth>,
    resync: Option<ResyncHook>,
}

#[derive(Default)]
pub(super) struct PartitionHealth {
    alive: AtomicBool,
    restarts: AtomicU64,
    last_death: Mutex<Option<String>>,
    parked_entries: AtomicUsize,
    parked: Mutex<Vec<ParkedTenant>>,
}

/// A tenant whose events wait on a partition.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParkedTenant {
    /// The tenant.
    pub tenant_id: Uuid,
    /// Why: `handler`, `store`, `gap` or `re-sync`.
    pub reason: String,
    /// Entries waiting.
    pub entries: usize,
}

/// The consumer's state, as a readiness endpoint reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthReport {
    /// Running, and every partition has a live reader.
    pub ready: bool,
    /// Why not ready (empty when ready).
    pub reasons: Vec<String>,
    /// Re-syncs requested and not yet succeeded.
    pub resyncs_pending: usize,
    /// Per partition.
    pub partitions: Vec<PartitionReport>,
}

/// One partition's reader.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionReport {
    /// The partition.
    pub partition: u32,
    /// Whether a reader is running.
    pub alive: bool,
    /// How often its reader died and was restarted.
    pub restarts: u64,
    /// Why the reader last died.
    pub last_death: Option<String>,
    /// Entries in the stream the group has not read yet (None if Redis did not say).
    pub lag: Option<u64>,
    /// Entries read and not yet acknowledged.
    pub pending: Option<u64>,
    /// Age of the oldest pending entry, from its stream id.
    pub oldest_pending_age_ms: Option<u64>,
    /// Tenants whose events wait on this partition.
    pub parked: Vec<ParkedTenant>,
}

impl ConsumerHealth {
    pub(super) fn new(partitions: u32, resync: Option<ResyncHook>) -> Self {
        Self {
            running: AtomicBool::new(false),
            partitions: (0..partitions)
                .map(|_| PartitionHealth::default())
                .collect(),
            resync,
        }
    }

    pub(super) fn set_running(&self, running: bool) {
        self.running.store(running, Ordering::SeqCst);
    }

    pub(super) fn partition(&self, partition: u32) -> &PartitionHealth {
        &self.partitions[partition as usize]
    }

    /// Partitions without a live reader.
    pub fn dead_partitions(&self) -> Vec<u32> {
        (0..self.partitions.len() as u32)
            .filter(|p| !self.partitions[*p as usize].alive.load(Ordering::SeqCst))
            .collect()
    }

    /// Restarts of every partition's reader so far.
    pub fn restarts(&self) -> u64 {
        self.partitions
            .iter()
            .map(|p| p.restarts.load(Ordering::SeqCst))
            .sum()
    }

    /// Whether the consumer runs with a live reader on every partition, and why not.
    pub fn readiness(&self) -> (bool, Vec<String>) {
        let mut reasons = Vec::new();
        if !self.running.load(Ordering::SeqCst) {
            reasons.push("the consumer is not running".to_owned());
        }
        for p in self.dead_partitions() {
            let death = self.partitions[p as usize]
                .last_death
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let why = death.map_or_else(String::new, |d| format!(" (last death: {d})"));
            reasons.push(format!("partition {p} has no live reader{why}"));
        }
        (reasons.is_empty(), reasons)
    }
}

impl PartitionHealth {
    pub(super) fn set_alive(&self, alive: bool) {
        self.alive.store(alive, Ordering::SeqCst);
    }

    pub(super) fn record_death(&self, cause: &str) {
        self.restarts.fetch_add(1, Ordering::SeqCst);
        *self.last_death.lock().unwrap_or_else(|e| e.into_inner()) = Some(cause.to_owned());
    }

    pub(super) fn record_parked(&self, app: &str, part: &Partition) {
        self.parked_entries
            .store(part.parked_entries(), Ordering::SeqCst);
        let summary = part
            .parked_summary()
            .into_iter()
            .map(|(tenant_id, reason, entries)| ParkedTenant {
                tenant_id,
                reason: reason.to_owned(),
                entries,
            })
            .collect::<Vec<_>>();
        metrics::gauge!("tsync_consumer_parked_tenants", "app" => app.to_owned(),
            "partition" => part.partition.to_string())
        .set(summary.len() as f64);
        *self.parked.lock().unwrap_or_else(|e| e.into_inner()) = summary;
    }
}

impl<S: TenantStore, H: Handler> Consumer<S, H> {
    /// The readiness of the consumer with each partition's lag and oldest pending entry read
    /// from Redis now (left empty for a partition Redis did not answer for).
    pub async fn health_report(&self) -> HealthReport {
        let (ready, reasons) = self.health.readiness();
        let mut partitions = Vec::new();
        for (i, p) in self.health.partitions.iter().enumerate() {
            let stream = self.config.keys.events(i as u32);
            let (lag, pending, oldest) = self.group_position(&stream).await;
            partitions.push(PartitionReport {
                partition: i as u32,
                alive: p.alive.load(Ordering::SeqCst),
                restarts: p.restarts.load(Ordering::SeqCst),
                last_death: p
                    .last_death
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
                lag,
                pending,
                oldest_pending_age_ms: oldest,
                parked: p.parked.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            });
        }
        HealthReport {
            ready,
            reasons,
            resyncs_pending: self.health.resync.as_ref().map_or(0, |r| r.pending()),
            partitions,
        }
    }

    /// (lag, pending, age of the oldest pending entry in ms) of the app's group on `stream`.
    async fn group_position(&self, stream: &str) -> (Option<u64>, Option<u64>, Option<u64>) {
        let groups: Result<Vec<std::collections::HashMap<String, fred::types::Value>>, Error> =
            self.redis.xinfo_groups(stream).await;
        let group = groups.ok().and_then(|gs| {
            gs.into_iter().find(|g| {
                g.get("name").and_then(|n| n.as_str()).as_deref() == Some(&self.config.app)
            })
        });
        let lag = group.as_ref().and_then(|g| g.get("lag")?.as_u64());
        let pending = group.as_ref().and_then(|g| g.get("pending")?.as_u64());
        let summary: Result<Vec<fred::types::Value>, Error> = self
            .redis
            .xpending(stream, self.config.app.as_str(), ())
            .await;
        let oldest = summary.ok().and_then(|s| {
            let id = s.get(1)?.as_string()?;
            let ms: u64 = id.split('-').next()?.parse().ok()?;
            let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
            Some(now.saturating_sub(ms))
        });
        (lag, pending, oldest)
    }
}
