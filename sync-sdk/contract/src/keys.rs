//! Redis key naming and the tenant → partition function.
//!
//! Every key starts with a namespace (`tsync` by default) so that several deployments, or many
//! tests, share one Redis server without seeing each other's data. Partition streams carry the
//! partition number as a hash tag (`tsync:events:{3}`), which spreads them over Redis Cluster
//! slots while keeping each stream in one slot.

use uuid::Uuid;

/// The key prefix used when none is configured.
pub const DEFAULT_NAMESPACE: &str = "tsync";

/// The number of partition streams used when none is configured.
pub const DEFAULT_PARTITIONS: u32 = 8;

/// The partition a tenant's events go to, for `partitions` partitions.
///
/// This is FNV-1a (64 bit) over the tenant id's 16 bytes, modulo `partitions`. It must never
/// change: every tenant's order depends on all its events landing in one stream, and a test
/// vector pins it. Changing the partition count is a migration (drain, then switch), not a
/// configuration tweak.
///
/// # Panics
/// If `partitions` is zero; [`StreamKeys::new`] refuses that before it can happen.
pub fn partition_of(tenant_id: Uuid, partitions: u32) -> u32 {
    assert!(partitions > 0, "partition count must be positive");
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = tenant_id
        .as_bytes()
        .iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME));
    (hash % u64::from(partitions)) as u32
}

/// Names of every Redis key Tenantsync uses, under one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamKeys {
    namespace: String,
    partitions: u32,
}

impl StreamKeys {
    /// Keys under `namespace` with `partitions` partition streams.
    ///
    /// Returns `None` when `partitions` is zero or the namespace is empty or contains a brace
    /// (which would break the hash tags).
    pub fn new(namespace: impl Into<String>, partitions: u32) -> Option<Self> {
        let namespace = namespace.into();
        let valid = partitions > 0 && !namespace.is_empty() && !namespace.contains(['{', '}']);
        valid.then_some(Self {
            namespace,
            partitions,
        })
    }

    /// The namespace every key starts with.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The number of partition streams.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The partition of `tenant_id`.
    pub fn partition_of(&self, tenant_id: Uuid) -> u32 {
        partition_of(tenant_id, self.partitions)
    }

    /// The stream of partition `partition`: `{ns}:events:{P}`.
    pub fn events(&self, partition: u32) -> String {
        format!("{}:events:{{{partition}}}", self.namespace)
    }

    /// The relay's leadership epoch of partition `partition` (its fencing token):
    /// `{ns}:events:{P}:epoch`, in the stream's slot so one script checks it and appends.
    pub fn relay_epoch(&self, partition: u32) -> String {
        format!("{}:epoch", self.events(partition))
    }

    /// The keys of one fenced publication, in the order the relay's script takes them: the
    /// partition stream and its epoch (one slot).
    pub fn relay_publish_keys(&self, partition: u32) -> Vec<String> {
        vec![self.events(partition), self.relay_epoch(partition)]
    }

    /// The stream `tenant_id`'s events go to.
    pub fn events_for(&self, tenant_id: Uuid) -> String {
        self.events(self.partition_of(tenant_id))
    }

    /// Every partition stream, in partition order.
    pub fn all_events(&self) -> Vec<String> {
        (0..self.partitions).map(|p| self.events(p)).collect()
    }

    /// The dead-letter stream of application `app`: `{ns}:dlq:{app}`.
    pub fn dlq(&self, app: &str) -> String {
        format!("{}:dlq:{app}", self.namespace)
    }

    /// The shared credit stream of partition `partition`, `{ns}:credits:{P}`: where SDKs before
    /// per-app credit streams appended fast-path consumptions. The wrapper still drains it,
    /// but nothing in it says which app wrote an entry, so under the Redis ACLs no app may
    /// write it; current SDKs append to [`app_credit_stream`](Self::app_credit_stream).
    pub fn credit_stream(&self, partition: u32) -> String {
        format!("{}:credits:{{{partition}}}", self.namespace)
    }

    /// The credit stream application `app` appends its fast-path consumptions of partition
    /// `partition` to, `{ns}:credits:{P}:stream:{app}`. One stream per app, so the Redis ACL
    /// that lets only `app` write it is what proves an entry is `app`'s: the wrapper charges an
    /// entry of this stream to `app` only.
    pub fn app_credit_stream(&self, partition: u32, app: &str) -> String {
        format!("{}:credits:{{{partition}}}:stream:{app}", self.namespace)
    }

    /// The mirrored balance of an application's allocation:
    /// `{ns}:credits:{P}:balance:{tenant}:{app}`. It shares its partition's hash tag with the
    /// credit stream, so one script can update both atomically on Redis Cluster.
    pub fn credit_balance(&self, tenant_id: Uuid, app: &str) -> String {
        let p = self.partition_of(tenant_id);
        format!(
            "{}:credits:{{{p}}}:balance:{tenant_id}:{app}",
            self.namespace
        )
    }

    /// The remembered reply of one fast-path consumption (its idempotency record):
    /// `{ns}:credits:{P}:op:{app}:{tenant}:{operation id}`. The app comes right after the kind,
    /// so a per-partition prefix names one app's records and nothing else, whatever the
    /// operation id holds (the Redis ACL grants each app its own prefix).
    pub fn credit_operation(&self, tenant_id: Uuid, app: &str, operation_id: &str) -> String {
        let p = self.partition_of(tenant_id);
        format!(
            "{}:credits:{{{p}}}:op:{app}:{tenant_id}:{operation_id}",
            self.namespace
        )
    }

    /// The prices of an application's operations for a tenant (a hash: operation code →
    /// credits), written by the wrapper beside the mirrored balance: the fast path charges
    /// `price × quantity`, never an amount the app names.
    pub fn credit_prices(&self, tenant_id: Uuid, app: &str) -> String {
        let p = self.partition_of(tenant_id);
        format!(
            "{}:credits:{{{p}}}:prices:{tenant_id}:{app}",
            self.namespace
        )
    }

    /// The grants of a mirrored balance (a hash: `<grant>` → remaining credits, `<grant>:w` →
    /// `"<effective ms> <expiry ms>"`, 0 for none): the fast path draws them in the order of
    /// [`credit_grant_order`](Self::credit_grant_order), skipping those not in effect.
    pub fn credit_grants(&self, tenant_id: Uuid, app: &str) -> String {
        let p = self.partition_of(tenant_id);
        format!(
            "{}:credits:{{{p}}}:grants:{tenant_id}:{app}",
            self.namespace
        )
    }

    /// The order the fast path draws a mirrored balance's grants in (a sorted set of grant ids,
    /// scored by priority then expiry; ties by id, the oldest grant first): the ledger's order.
    pub fn credit_grant_order(&self, tenant_id: Uuid, app: &str) -> String {
        let p = self.partition_of(tenant_id);
        format!("{}:credits:{{{p}}}:order:{tenant_id}:{app}", self.namespace)
    }

    /// The keys of one fast-path consumption, in the order the consume script takes them:
    /// balance, operation record, the app's credit stream, price table, grants, grant order. One hash
    /// tag, so one slot: the script runs atomically on Redis Cluster too
    /// (`tests::every_key_pattern_has_its_cluster_slot_rule`).
    pub fn credit_consume_keys(
        &self,
        tenant_id: Uuid,
        app: &str,
        operation_id: &str,
    ) -> Vec<String> {
        vec![
            self.credit_balance(tenant_id, app),
            self.credit_operation(tenant_id, app, operation_id),
            self.app_credit_stream(self.partition_of(tenant_id), app),
            self.credit_prices(tenant_id, app),
            self.credit_grants(tenant_id, app),
            self.credit_grant_order(tenant_id, app),
        ]
    }

    /// The keys the wrapper's mirror scripts take: balance, applied change ids, grants, grant
    /// order (one slot).
    pub fn credit_mirror_keys(&self, tenant_id: Uuid, app: &str) -> Vec<String> {
        vec![
            self.credit_balance(tenant_id, app),
            self.credit_allocations(tenant_id, app),
            self.credit_grants(tenant_id, app),
            self.credit_grant_order(tenant_id, app),
        ]
    }

    /// The allocation ids already added to a mirrored balance.
    pub fn credit_allocations(&self, tenant_id: Uuid, app: &str) -> String {
        let p = self.partition_of(tenant_id);
        format!(
            "{}:credits:{{{p}}}:allocs:{tenant_id}:{app}",
            self.namespace
        )
    }

    /// A glob matching every key of `tenant_id` under the credit prefix (mirrored balances,
    /// allocation sets, price tables, operation records): `{ns}:credits:{P}:*:{tenant}:*`. It
    /// names the partition's hash tag, so a scan of it goes to one node of a cluster.
    pub fn tenant_keys_pattern(&self, tenant_id: Uuid) -> String {
        let p = self.partition_of(tenant_id);
        format!("{}:credits:{{{p}}}:*:{tenant_id}:*", self.namespace)
    }

    /// The lifecycle stream: operations every app carries out and confirms (erase a user,
    /// purge a tenant), read by each app's consumer group: `{ns}:lifecycle`.
    pub fn lifecycle(&self) -> String {
        format!("{}:lifecycle", self.namespace)
    }

    /// Every credit stream of `app`, in partition order.
    pub fn all_app_credit_streams(&self, app: &str) -> Vec<String> {
        (0..self.partitions)
            .map(|p| self.app_credit_stream(p, app))
            .collect()
    }

    /// Every shared (legacy) credit stream, in partition order.
    pub fn all_credit_streams(&self) -> Vec<String> {
        (0..self.partitions)
            .map(|p| self.credit_stream(p))
            .collect()
    }

    /// The marker of a session signed out before it expired: `{ns}:revoked:{jti}` (it expires
    /// with the token; apps refuse tokens that have one).
    pub fn revoked_session(&self, jti: &str) -> String {
        format!("{}:revoked:{jti}", self.namespace)
    }

    /// The status reports of application `app`'s replicas: a hash, replica → its latest report
    /// (JSON with the time it was written), `{ns}:status:{app}`. Readers ignore and remove
    /// reports older than their freshness window, so a dead replica drops out on its own.
    pub fn status(&self, app: &str) -> String {
        format!("{}:status:{app}", self.namespace)
    }

    /// The re-syncs of application `app` requested and not yet done: a hash, tenant → the
    /// replica retrying it, `{ns}:resyncs:{app}`. It outlives the process, so a re-sync a crashed
    /// replica was retrying is taken over by a live one instead of waiting for the nightly sync.
    pub fn resyncs(&self, app: &str) -> String {
        format!("{}:resyncs:{app}", self.namespace)
    }

    /// The latest full-sync runs of application `app`, newest first (at most 100): a list of
    /// JSON records (the scheduled time, the replica that ran it, when it ended, what it
    /// found), `{ns}:fullsyncs:{app}`.
    pub fn full_syncs(&self, app: &str) -> String {
        format!("{}:fullsyncs:{app}", self.namespace)
    }

    /// The fast-path consumptions the wrapper could not charge yet (they stay pending in their
    /// credit stream and are tried again): a hash, `{stream}/{entry id}` → JSON with the tenant,
    /// application, operation, credits, the first and last failure and the last reason,
    /// `{ns}:credit-failures`. An entry leaves it once charged.
    pub fn credit_failures(&self) -> String {
        format!("{}:credit-failures", self.namespace)
    }

    /// The lag history of application `app`: a stream with one entry per sample (the wrapper
    /// samples its replicas' reports on a schedule; field `p` holds `[lag, pending]` per
    /// partition as JSON), capped to about a day, `{ns}:lag-history:{app}`.
    pub fn lag_history(&self, app: &str) -> String {
        format!("{}:lag-history:{app}", self.namespace)
    }

    /// A lock or lease key: `{ns}:lock:{name}`.
    pub fn lock(&self, name: &str) -> String {
        format!("{}:lock:{name}", self.namespace)
    }
}

impl Default for StreamKeys {
    fn default() -> Self {
        Self {
            namespace: DEFAULT_NAMESPACE.to_owned(),
            partitions: DEFAULT_PARTITIONS,
        }
    }
}

/// The Redis Cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag (the first `{…}` with
/// something inside) or of the whole key, modulo 16384.
pub fn hash_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = key.find('{').and_then(|open| {
        let close = key[open + 1..].find('}')?;
        (close > 0).then(|| &bytes[open + 1..open + 1 + close])
    });
    let crc = tagged.unwrap_or(bytes).iter().fold(0u16, |crc, b| {
        (0..8).fold(crc ^ (u16::from(*b) << 8), |c, _| {
            if c & 0x8000 != 0 {
                (c << 1) ^ 0x1021
            } else {
                c << 1
            }
        })
    });
    crc % 16384
}
