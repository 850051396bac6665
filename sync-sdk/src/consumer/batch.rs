//! A partition reader's work: entries are decoded, grouped by tenant (each tenant's in stream
//! order), run through the handler as one batch and applied in one store transaction.
//!
//! When something fails, only the tenant it belongs to stops: the tenant is *parked* from the
//! failed event on. Its later entries join it as they are read and wait, in order, while the
//! other tenants of the partition keep flowing; the parked tenant is retried when its time
//! comes. Why a tenant waits decides how long and whether it counts:
//!
//! | reason  | retried after                         | counts towards the DLQ |
//! | ------- | ------------------------------------- | ---------------------- |
//! | handler | `retry_base` doubling                 | yes (`max_attempts`)   |
//! | store   | `retry_base` doubling up to `retry_cap` | never (transient)    |
//! | gap     | 50 ms polls until `gap_wait`, then a re-sync | no              |
//! | re-sync | 100 ms polls while a load of the tenant runs or is pending | no |
//!
//! A permanent handler or store error dead-letters the event at once and the tenant moves on.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use tokio::time::Instant;
use uuid::Uuid;

use super::{Consumer, Entry, Handler, HandlerError, TenantTurn, backoff};
use crate::{
    contract::Envelope,
    store::{Applied, StoreError, SyncState, TenantStore},
};

const GAP_POLL: Duration = Duration::from_millis(50);
const TURN_POLL: Duration = Duration::from_millis(100);

/// A decoded entry.
struct Pending {
    entry: Entry,
    envelope: Envelope,
}

/// A tenant's entries in stream order, with what is known about the first one.
struct Queue {
    tenant: Uuid,
    events: Vec<Pending>,
    /// Handler failures of `events[0]`.
    attempts: u32,
    /// Store failures of `events[0]` (for the backoff only).
    store_failures: u32,
    /// Until when the gap before `events[0]` is waited for.
    gap_deadline: Option<Instant>,
    /// The re-sync for the gap before `events[0]` was requested: apply it whatever its seq.
    gap_handled: bool,
}

impl Queue {
    fn new(tenant: Uuid) -> Self {
        Self {
            tenant,
            events: Vec::new(),
            attempts: 0,
            store_failures: 0,
            gap_deadline: None,
            gap_handled: false,
        }
    }
}

/// A tenant whose entries wait.
struct Parked {
    queue: Queue,
    reason: &'static str,
    retry_at: Instant,
}

/// What a partition reader holds between reads: its parked tenants.
pub(super) struct Partition {
    pub stream: String,
    pub partition: u32,
    parked: HashMap<Uuid, Parked>,
    parked_ids: HashSet<String>,
}

impl Partition {
    pub fn new(stream: String, partition: u32) -> Self {
        Self {
            stream,
            partition,
            parked: HashMap::new(),
            parked_ids: HashSet::new(),
        }
    }

    /// Whether the entry waits in a parked tenant here.
    pub fn holds(&self, id: &str) -> bool {
        self.parked_ids.contains(id)
    }

    pub fn parked_ids(&self) -> Vec<String> {
        self.parked_ids.iter().cloned().collect()
    }

    pub fn parked_entries(&self) -> usize {
        self.parked_ids.len()
    }

    /// `(tenant, reason, entries)` of every parked tenant.
    pub fn parked_summary(&self) -> Vec<(Uuid, &'static str, usize)> {
        self.parked
            .iter()
            .map(|(t, p)| (*t, p.reason, p.queue.events.len()))
            .collect()
    }

    /// How long the next read may block: until the first parked tenant is due, at most `block`.
    pub fn wait(&self, block: Duration) -> Duration {
        let now = Instant::now();
        self.parked
            .values()
            .map(|p| p.retry_at.saturating_duration_since(now))
            .min()
            .map_or(block, |due| due.min(block))
            .max(Duration::from_millis(1))
    }

    fn park(&mut self, queue: Queue, reason: &'static str, retry_at: Instant) {
        if queue.events.is_empty() {
            return;
        }
        self.parked_ids
            .extend(queue.events.iter().map(|p| p.entry.0.clone()));
        let tenant = queue.tenant;
        self.parked.insert(
            tenant,
            Parked {
                queue,
                reason,
                retry_at,
            },
        );
    }

    /// Queue the entry behind its tenant if the tenant is parked.
    fn join_parked(&mut self, pending: Pending) -> Option<Pending> {
        match self.parked.get_mut(&pending.envelope.tenant_id) {
            Some(parked) => {
                self.parked_ids.insert(pending.entry.0.clone());
                parked.queue.events.push(pending);
                None
            }
            None => Some(pending),
        }
    }

    fn take_due(&mut self) -> Vec<Queue> {
        let now = Instant::now();
        let due: Vec<Uuid> = self
            .parked
            .iter()
            .filter(|(_, p)| p.retry_at <= now)
            .map(|(t, _)| *t)
            .collect();
        let mut queues = Vec::with_capacity(due.len());
        for tenant in due {
            if let Some(p) = self.parked.remove(&tenant) {
                for e in &p.queue.events {
                    self.parked_ids.remove(&e.entry.0);
                }
                queues.push(p.queue);
            }
        }
        queues
    }
}

/// What happens to one tenant's queue in this round.
struct Plan {
    queue: Queue,
    /// Indexes of events to handle and apply now.
    apply: Vec<usize>,
    /// Events from this index on wait (parked).
    cut: usize,
    reason: &'static str,
    retry_at: Instant,
    /// Handler and store failures of the event at `cut`.
    head_attempts: u32,
    head_store_failures: u32,
    /// Gap state of the event at `cut`.
    head_gap_deadline: Option<Instant>,
}

impl Plan {
    /// Stop the tenant at `at` (if earlier than where it stops already).
    fn stop(&mut self, at: usize, reason: &'static str, retry_at: Instant) {
        if at < self.cut {
            self.cut = at;
            self.reason = reason;
            self.retry_at = retry_at;
            self.head_attempts = 0;
            self.head_store_failures = 0;
            self.head_gap_deadline = None;
        }
    }

    fn envelope(&self, i: usize) -> &Envelope {
        &self.queue.events[i].envelope
    }
}

/// The events the plans still apply, tenant by tenant, each tenant's in order.
fn to_apply(plans: &[Plan]) -> Vec<Envelope> {
    plans
        .iter()
        .flat_map(|p| p.apply.iter().map(|&i| p.envelope(i).clone()))
        .collect()
}

impl<S: TenantStore, H: Handler> Consumer<S, H> {
    /// Process entries just read or claimed (with their delivery counts).
    pub(super) async fn process_entries(&self, part: &mut Partition, entries: Vec<(Entry, u64)>) {
        if entries.is_empty() {
            return;
        }
        let mut acks = Vec::new();
        let mut queues: Vec<Queue> = Vec::new();
        let mut index: HashMap<Uuid, usize> = HashMap::new();
        for (entry, deliveries) in entries {
            let envelope = match Envelope::from_stream_fields(entry.1.iter()) {
                Ok(e) => e,
                Err(e) => {
                    let error = format!("undecodable entry: {e}");
                    self.dead_letter(&part.stream, &entry, error, 0).await;
                    acks.push(entry.0);
                    continue;
                }
            };
            metrics::counter!("tsync_consumer_consumed_total", "app" => self.config.app.clone(),
                "event_type" => envelope.event_type().as_str())
            .increment(1);
            if deliveries > self.config.max_deliveries {
                let limit = self.config.max_deliveries;
                let reason = format!("delivered {deliveries} times (limit {limit})");
                self.dead_letter(&part.stream, &entry, reason, 0).await;
                acks.push(entry.0);
                continue;
            }
            let Some(pending) = part.join_parked(Pending { entry, envelope }) else {
                continue;
            };
            let tenant = pending.envelope.tenant_id;
            let i = *index.entry(tenant).or_insert_with(|| {
                queues.push(Queue::new(tenant));
                queues.len() - 1
            });
            queues[i].events.push(pending);
        }
        self.ack(&part.stream, acks).await;
        self.run_queues(part, queues).await;
    }

    /// Retry the parked tenants that are due.
    pub(super) async fn retry_parked(&self, part: &mut Partition) {
        let due = part.take_due();
        self.run_queues(part, due).await;
    }

    /// One round over tenants' queues: turns, skips, handler, one store transaction, acks,
    /// and parking of whatever has to wait.
    async fn run_queues(&self, part: &mut Partition, queues: Vec<Queue>) {
        if queues.is_empty() {
            return;
        }
        let mut acks = Vec::new();
        let (ready, _turns) = self.take_turns(part, queues);
        if ready.is_empty() {
            return;
        }
        let tenants: Vec<Uuid> = ready.iter().map(|q| q.tenant).collect();
        let ids: Vec<Uuid> = ready
            .iter()
            .flat_map(|q| q.events.iter().map(|p| p.envelope.event_id))
            .collect();
        // Both lookups at once: one round trip of latency instead of two.
        let started = std::time::Instant::now();
        let looked_up = tokio::join!(
            self.store.sync_states(&tenants),
            self.store.processed_among(&ids)
        );
        metrics::histogram!("tsync_consumer_lookup_seconds", "app" => self.config.app.clone())
            .record(started.elapsed().as_secs_f64());
        let looked_up = match looked_up {
            (Ok(states), Ok(done)) => Ok((states, done)),
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        let (states, processed) = match looked_up {
            Ok(found) => found,
            Err(e) => {
                for q in ready {
                    self.park_after_store_error(part, q, &e);
                }
                return;
            }
        };
        let mut plans: Vec<Plan> = ready
            .into_iter()
            .map(|q| {
                let state = states.get(&q.tenant).copied();
                self.plan(q, state, &processed, &mut acks)
            })
            .collect();
        let spans = self.trace_spans(&plans);
        self.run_handler(part, &mut plans, &mut acks).await;
        self.apply(part, &mut plans, &mut acks).await;
        drop(spans);
        self.ack(&part.stream, acks).await;
        for plan in plans {
            self.park_rest(part, plan);
        }
    }

    /// The tenants whose turn it is (with their turns, held until the round ends); the others
    /// wait for their load or re-sync. A gap waited out long enough is handed to the re-sync.
    fn take_turns(
        &self,
        part: &mut Partition,
        queues: Vec<Queue>,
    ) -> (Vec<Queue>, Vec<TenantTurn>) {
        let mut ready = Vec::with_capacity(queues.len());
        let mut turns = Vec::with_capacity(queues.len());
        for mut q in queues {
            if q.gap_deadline.is_some_and(|d| Instant::now() >= d) {
                self.gap_expired(&mut q);
            }
            let turn = match &self.config.resync {
                Some(resync) => resync.claim(q.tenant),
                None => Some(TenantTurn::free()),
            };
            match turn {
                Some(turn) => {
                    turns.push(turn);
                    ready.push(q);
                }
                None => part.park(q, "re-sync", Instant::now() + TURN_POLL),
            }
        }
        (ready, turns)
    }

    fn gap_expired(&self, q: &mut Queue) {
        let first = &q.events[0].envelope;
        tracing::warn!(tenant_id = %q.tenant, seq = first.seq, "consumer: seq gap did not fill; re-sync");
        metrics::counter!("tsync_consumer_gaps_total", "app" => self.config.app.clone())
            .increment(1);
        if let Some(resync) = &self.config.resync {
            resync.request(q.tenant);
        }
        q.gap_deadline = None;
        q.gap_handled = true;
    }

    /// Skip what needs no work (acknowledged now), pick what to apply, stop at a gap.
    fn plan(
        &self,
        queue: Queue,
        state: Option<SyncState>,
        processed: &HashSet<Uuid>,
        acks: &mut Vec<String>,
    ) -> Plan {
        let len = queue.events.len();
        let mut plan = Plan {
            apply: Vec::new(),
            cut: len,
            reason: "",
            retry_at: Instant::now(),
            head_attempts: 0,
            head_store_failures: 0,
            head_gap_deadline: None,
            queue,
        };
        let mut seen = HashSet::new();
        let mut last = state.map_or(0, |s| s.last_seq);
        for i in 0..len {
            let e = plan.envelope(i);
            let skip = match state {
                None => Some("skipped_not_loaded"),
                Some(s) if !s.is_loading() && e.seq <= s.snapshot_seq => {
                    Some("skipped_in_snapshot")
                }
                _ if processed.contains(&e.event_id) || !seen.insert(e.event_id) => {
                    Some("duplicate")
                }
                _ => None,
            };
            if let Some(label) = skip {
                self.count(e, label);
                last = last.max(e.seq);
                acks.push(plan.queue.events[i].entry.0.clone());
                continue;
            }
            let loading = state.is_some_and(|s| s.is_loading());
            let gap_handled = i == 0 && plan.queue.gap_handled;
            if !loading && !gap_handled && e.seq > last + 1 {
                let deadline = match plan.queue.gap_deadline {
                    Some(d) if i == 0 => d,
                    _ => Instant::now() + self.config.gap_wait,
                };
                plan.stop(i, "gap", (Instant::now() + GAP_POLL).min(deadline));
                plan.head_gap_deadline = Some(deadline);
                break;
            }
            last = last.max(e.seq);
            plan.apply.push(i);
        }
        plan
    }

    /// When traces are exported: one `apply` span per event about to be handled and applied,
    /// the child of the relay's publish (the entry's `traceparent`) or, for an entry without
    /// one, of the write that made the event (the envelope's). Open until the round ends.
    fn trace_spans(&self, plans: &[Plan]) -> Vec<tracing::Span> {
        if !crate::telemetry::exporting() {
            return Vec::new();
        }
        let events = plans
            .iter()
            .flat_map(|p| p.apply.iter().map(move |&i| &p.queue.events[i]));
        events
            .map(|pending| {
                let envelope = &pending.envelope;
                let span = tracing::info_span!("apply", app = %self.config.app,
                    event_type = %envelope.event_type(), tenant_id = %envelope.tenant_id,
                    event_id = %envelope.event_id, seq = envelope.seq);
                let parent = pending.entry.1.get(crate::telemetry::TRACEPARENT);
                let parent = parent
                    .map(String::as_str)
                    .or(envelope.traceparent.as_deref());
                crate::telemetry::continue_trace(&span, parent);
                span
            })
            .collect()
    }

    /// Run the handler over every event to apply, in one batch; a failure stops its tenant.
    async fn run_handler(&self, part: &Partition, plans: &mut [Plan], acks: &mut Vec<String>) {
        let batch = to_apply(plans);
        if batch.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        let mut results = self.handler.handle_batch(&batch).await.into_iter();
        metrics::histogram!("tsync_consumer_handler_seconds", "app" => self.config.app.clone())
            .record(started.elapsed().as_secs_f64());
        for plan in plans.iter_mut() {
            let apply = std::mem::take(&mut plan.apply);
            let mut results_of_tenant = apply.iter().map(|_| {
                results.next().unwrap_or_else(|| {
                    Err(HandlerError::Transient(
                        "the handler returned no result".into(),
                    ))
                })
            });
            let mut kept = Vec::with_capacity(apply.len());
            for (&i, result) in apply.iter().zip(&mut results_of_tenant) {
                let error = match result {
                    Ok(()) => {
                        kept.push(i);
                        continue;
                    }
                    Err(e) => e,
                };
                let attempts = if i == 0 { plan.queue.attempts + 1 } else { 1 };
                let exhausted = attempts >= self.config.max_attempts;
                if matches!(error, HandlerError::Permanent(_)) || exhausted {
                    self.count(plan.envelope(i), "failed");
                    let entry = &plan.queue.events[i].entry;
                    self.dead_letter(&part.stream, entry, error.to_string(), attempts)
                        .await;
                    acks.push(entry.0.clone());
                    plan.stop(i + 1, "handler", Instant::now());
                } else {
                    let delay = backoff(self.config.retry_base, attempts);
                    let envelope = plan.envelope(i);
                    tracing::info!(event_id = %envelope.event_id, tenant_id = %envelope.tenant_id,
                        error = %error, attempts, ?delay, "consumer: handler failed; retrying");
                    plan.stop(i, "handler", Instant::now() + delay);
                    plan.head_attempts = attempts;
                }
                break;
            }
            // Results of the tenant's events after its failure are ignored.
            results_of_tenant.for_each(drop);
            plan.apply = kept;
        }
    }

    /// Apply every event that passed the handler in one transaction. If the batch fails, fall
    /// back to one event at a time so that only the failing event's tenant waits (transient)
    /// or only the failing event is dead-lettered (permanent).
    async fn apply(&self, part: &Partition, plans: &mut [Plan], acks: &mut Vec<String>) {
        let batch = to_apply(plans);
        if batch.is_empty() {
            return;
        }
        metrics::histogram!("tsync_consumer_batch_size", "app" => self.config.app.clone())
            .record(batch.len() as f64);
        let started = std::time::Instant::now();
        let applied = self.store.apply_batch(&batch).await;
        metrics::histogram!("tsync_consumer_apply_seconds", "app" => self.config.app.clone())
            .record(started.elapsed().as_secs_f64());
        match applied {
            Ok(outcomes) => {
                let applied = plans
                    .iter()
                    .flat_map(|p| p.apply.iter().map(move |&i| (p, i)));
                for ((plan, i), outcome) in applied.zip(outcomes) {
                    self.count_applied(plan.envelope(i), outcome);
                    acks.push(plan.queue.events[i].entry.0.clone());
                }
            }
            Err(e) if batch.len() == 1 => {
                let plan = plans.iter_mut().find(|p| !p.apply.is_empty());
                if let Some(plan) = plan {
                    let i = plan.apply[0];
                    self.on_store_error(part, plan, i, e, acks).await;
                }
            }
            Err(e) => {
                tracing::info!(error = %e, events = batch.len(), "consumer: batch failed; applying one by one");
                for plan in plans.iter_mut() {
                    for i in plan.apply.clone() {
                        if i >= plan.cut {
                            break;
                        }
                        match self.store.apply(plan.envelope(i)).await {
                            Ok(outcome) => {
                                self.count_applied(plan.envelope(i), outcome);
                                acks.push(plan.queue.events[i].entry.0.clone());
                            }
                            Err(e) => self.on_store_error(part, plan, i, e, acks).await,
                        }
                    }
                }
            }
        }
    }

    /// A store error applying event `i` alone: dead-letter it if permanent, else park the tenant.
    async fn on_store_error(
        &self,
        part: &Partition,
        plan: &mut Plan,
        i: usize,
        error: StoreError,
        acks: &mut Vec<String>,
    ) {
        if error.permanent {
            self.count(plan.envelope(i), "failed");
            let entry = &plan.queue.events[i].entry;
            self.dead_letter(&part.stream, entry, error.to_string(), 1)
                .await;
            acks.push(entry.0.clone());
            return;
        }
        let failures = if i == 0 {
            plan.queue.store_failures + 1
        } else {
            1
        };
        let delay = self.store_retry_delay(failures);
        tracing::warn!(tenant_id = %plan.queue.tenant, error = %error, failures, ?delay,
            "consumer: store failed; the tenant waits (not counted against the event)");
        metrics::counter!("tsync_consumer_store_retries_total", "app" => self.config.app.clone())
            .increment(1);
        let attempts = if i == 0 { plan.queue.attempts } else { 0 };
        plan.stop(i, "store", Instant::now() + delay);
        plan.head_attempts = attempts;
        plan.head_store_failures = failures;
    }

    fn store_retry_delay(&self, failures: u32) -> Duration {
        backoff(self.config.retry_base, failures).min(self.config.retry_cap)
    }

    fn park_after_store_error(&self, part: &mut Partition, queue: Queue, error: &StoreError) {
        let failures = queue.store_failures + 1;
        tracing::warn!(tenant_id = %queue.tenant, error = %error, failures, "consumer: store failed; the tenant waits");
        metrics::counter!("tsync_consumer_store_retries_total", "app" => self.config.app.clone())
            .increment(1);
        let retry_at = Instant::now() + self.store_retry_delay(failures);
        let queue = Queue {
            store_failures: failures,
            ..queue
        };
        part.park(queue, "store", retry_at);
    }

    /// Park the events from the plan's cut on, carrying what is known about the new head.
    fn park_rest(&self, part: &mut Partition, mut plan: Plan) {
        if plan.cut >= plan.queue.events.len() {
            return;
        }
        let events = plan.queue.events.split_off(plan.cut);
        let queue = Queue {
            tenant: plan.queue.tenant,
            events,
            attempts: plan.head_attempts,
            store_failures: plan.head_store_failures,
            gap_deadline: plan.head_gap_deadline,
            gap_handled: plan.cut == 0 && plan.queue.gap_handled,
        };
        part.park(queue, plan.reason, plan.retry_at);
    }

    fn count(&self, envelope: &Envelope, outcome: &'static str) {
        metrics::counter!("tsync_consumer_events_total", "app" => self.config.app.clone(),
            "event_type" => envelope.event_type().as_str(), "outcome" => outcome)
        .increment(1);
    }

    fn count_applied(&self, envelope: &Envelope, outcome: Applied) {
        let label = match outcome {
            Applied::Applied => "applied",
            Applied::Stale => "stale",
            Applied::Duplicate => "duplicate",
        };
        self.count(envelope, label);
        let lag = (chrono::Utc::now() - envelope.occurred_at)
            .num_milliseconds()
            .max(0) as f64
            / 1000.0;
        metrics::histogram!("tsync_consumer_lag_seconds", "app" => self.config.app.clone())
            .record(lag);
    }
}
