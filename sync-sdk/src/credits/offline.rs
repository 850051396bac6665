//! Offline mode (the source specification's circuit breaker): when the wrapper is unreachable,
//! the direct path may consume from a bounded local allowance per tenant and application. Such
//! consumptions are queued durably in the app's store ([`CreditQueue`]) and replayed, idempotently
//! by operation id, once the wrapper answers again; beyond the allowance the consumption is
//! refused with [`CreditError::AllowanceExhausted`].

use std::{collections::BTreeMap, future::Future, sync::Arc};

use serde_json::Value;
use uuid::Uuid;

use crate::{
    store::{StoreError, TenantStore},
    wrapper_client::{LoadError, Refusal, WrapperClient},
};

/// A consumption made while the wrapper was unreachable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedConsumption {
    /// The idempotency key.
    pub operation_id: String,
    /// The tenant.
    pub tenant_id: Uuid,
    /// The consuming application.
    pub application: String,
    /// What was done.
    pub operation_code: String,
    /// How many operations.
    pub quantity: i64,
    /// The credits it is expected to cost (the synced price, else the manifest's default),
    /// counted against the allowance; the wrapper charges its own price on replay.
    pub amount: i64,
}

/// Whether a consumption was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Queued now.
    Queued,
    /// Already queued under this operation id (nothing added).
    AlreadyQueued,
    /// The allowance would be exceeded; nothing queued.
    OverAllowance {
        /// Credits already queued for this tenant and application.
        queued: i64,
    },
}

/// The durable queue of offline consumptions, in the app's store.
pub trait CreditQueue: Send + Sync + 'static {
    /// Queue `c` if the credits queued for its tenant and application stay within `allowance`
    /// (atomically), or if it is queued already.
    fn enqueue(
        &self,
        c: &QueuedConsumption,
        allowance: i64,
    ) -> impl Future<Output = Result<Enqueued, StoreError>> + Send;
    /// Every queued consumption, oldest first.
    fn queued(&self) -> impl Future<Output = Result<Vec<QueuedConsumption>, StoreError>> + Send;
    /// Remove a replayed consumption.
    fn dequeue(&self, operation_id: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Why a consumption was refused.
#[derive(Debug, thiserror::Error)]
pub enum CreditError {
    /// The balance does not cover it; nothing charged.
    #[error("insufficient credits: balance {balance}")]
    Insufficient {
        /// The balance at the wrapper.
        balance: i64,
    },
    /// The wrapper is unreachable and the offline allowance is used up.
    #[error(
        "the identity service is unreachable and the offline allowance of {allowance} credits is used ({queued} queued)"
    )]
    AllowanceExhausted {
        /// The allowance.
        allowance: i64,
        /// Credits queued already.
        queued: i64,
    },
    /// The operation has no price for this tenant (the app did not declare it) or the request
    /// was refused as invalid; the problem's field and detail say why.
    #[error("refused by the wrapper: {field}: {detail}")]
    Refused {
        /// The field at fault, e.g. `operationCode`.
        field: String,
        /// Why.
        detail: String,
    },
    /// Any other wrapper failure.
    #[error(transparent)]
    Wrapper(#[from] LoadError),
    /// The queue failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Refusal> for CreditError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Insufficient { balance } => Self::Insufficient { balance },
            Refusal::Refused { field, detail } => Self::Refused { field, detail },
        }
    }
}

/// What a consumption did.
#[derive(Debug, Clone, PartialEq)]
pub enum Consumed {
    /// Charged at the wrapper: its ledger entry.
    Charged(Value),
    /// Queued offline; charged when the wrapper is back.
    Queued,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplayReport {
    /// Replayed and charged (or found charged already).
    pub charged: usize,
    /// Refused by the wrapper, for insufficient credits or an operation without a price
    /// (removed from the queue; reported).
    pub refused: Vec<QueuedConsumption>,
    /// Left queued because the wrapper is still unreachable.
    pub left: usize,
}

/// Consumption the way an app wants it: on the fast path (one Lua call on the Redis mirror)
/// where the tenant's allocation is mirrored, else directly at the wrapper's ledger, with the
/// offline fallback when the wrapper is unreachable.
pub struct CreditClient<Q> {
    wrapper: Arc<WrapperClient>,
    queue: Arc<Q>,
    allowance: i64,
    mirror: Option<super::CreditMirror>,
    defaults: BTreeMap<(String, String), i64>,
}

impl<Q: CreditQueue + TenantStore> CreditClient<Q> {
    /// A client allowing `allowance` credits per tenant and application while offline.
    pub fn new(wrapper: Arc<WrapperClient>, queue: Arc<Q>, allowance: i64) -> Self {
        Self {
            wrapper,
            queue,
            allowance,
            mirror: None,
            defaults: BTreeMap::new(),
        }
    }

    /// The default prices an app declared (its manifest), for estimating what an offline
    /// consumption will cost where the tenant has no synced price of its own.
    pub fn with_manifest(mut self, manifest: &sync_contract::AppManifest) -> Self {
        for op in &manifest.operations {
            self.defaults
                .insert((manifest.name.clone(), op.code.clone()), op.default_cost);
        }
        self
    }

    /// What the app expects `quantity` operations to cost the tenant: its synced credit config,
    /// else the declared default; `None` for an operation the app never declared.
    pub async fn estimate(
        &self,
        tenant_id: Uuid,
        application: &str,
        operation_code: &str,
        quantity: i64,
    ) -> Result<Option<i64>, StoreError> {
        let configured = self
            .queue
            .credit_cost(tenant_id, application, operation_code)
            .await?;
        let price = configured.or_else(|| {
            self.defaults
                .get(&(application.to_owned(), operation_code.to_owned()))
                .copied()
        });
        Ok(price.map(|p| p.saturating_mul(quantity)))
    }

    /// Try the fast path first: the Redis mirror of the tenant's allocation (the wrapper's
    /// reconciliation provisions one per app allocation). A tenant not mirrored, or a Redis
    /// error, takes the direct path with the same operation id (the ledger charges an id once,
    /// whichever path brings it).
    pub fn with_mirror(mut self, mirror: super::CreditMirror) -> Self {
        self.mirror = Some(mirror);
        self
    }

    /// Consume `quantity` operations on the fast path where mirrored, else at the wrapper, or
    /// from the offline allowance when the wrapper is unreachable. The tenant's price applies:
    /// the app names the operation, not the amount.
    pub async fn consume(
        &self,
        tenant_id: Uuid,
        application: &str,
        operation_code: &str,
        operation_id: &str,
        quantity: i64,
    ) -> Result<Consumed, CreditError> {
        self.consume_as(
            None,
            tenant_id,
            application,
            operation_code,
            operation_id,
            quantity,
        )
        .await
    }

    /// [`consume`](Self::consume), recording `user`, the user the app acted for, in the ledger
    /// (usage reports by user). A consumption queued offline is recorded without its user.
    pub async fn consume_as(
        &self,
        user: Option<Uuid>,
        tenant_id: Uuid,
        application: &str,
        operation_code: &str,
        operation_id: &str,
        quantity: i64,
    ) -> Result<Consumed, CreditError> {
        use super::FastOutcome;
        if let Some(mirror) = &self.mirror {
            let fast = mirror
                .consume_as(
                    user,
                    tenant_id,
                    application,
                    operation_code,
                    operation_id,
                    quantity,
                )
                .await;
            match fast {
                Ok(FastOutcome::Charged(r) | FastOutcome::Replayed(r)) => {
                    metrics::counter!("tsync_credits_consumed_total", "path" => "fast")
                        .increment(1);
                    return Ok(Consumed::Charged(
                        serde_json::to_value(r).unwrap_or_default(),
                    ));
                }
                Ok(FastOutcome::Insufficient { balance }) => {
                    return Err(CreditError::Insufficient { balance });
                }
                Ok(FastOutcome::NotMirrored | FastOutcome::NotPriced) => {}
                Err(e) => {
                    tracing::warn!(%tenant_id, application, error = %e, "credit mirror unavailable: direct path");
                }
            }
        }
        metrics::counter!("tsync_credits_consumed_total", "path" => "direct").increment(1);
        self.consume_direct_as(
            user,
            tenant_id,
            application,
            operation_code,
            operation_id,
            quantity,
        )
        .await
    }

    /// Consume at the wrapper, or from the offline allowance when it is unreachable.
    pub async fn consume_direct(
        &self,
        tenant_id: Uuid,
        application: &str,
        operation_code: &str,
        operation_id: &str,
        quantity: i64,
    ) -> Result<Consumed, CreditError> {
        self.consume_direct_as(
            None,
            tenant_id,
            application,
            operation_code,
            operation_id,
            quantity,
        )
        .await
    }

    async fn consume_direct_as(
        &self,
        user: Option<Uuid>,
        tenant_id: Uuid,
        application: &str,
        operation_code: &str,
        operation_id: &str,
        quantity: i64,
    ) -> Result<Consumed, CreditError> {
        match self
            .wrapper
            .consume_as(
                user,
                tenant_id,
                application,
                operation_code,
                operation_id,
                quantity,
            )
            .await
        {
            Ok(Ok(entry)) => Ok(Consumed::Charged(entry)),
            Ok(Err(refusal)) => Err(refusal.into()),
            Err(LoadError::Unavailable(reason)) => {
                tracing::warn!(%tenant_id, application, %reason, "wrapper unreachable: offline credits");
                let Some(amount) = self
                    .estimate(tenant_id, application, operation_code, quantity)
                    .await?
                else {
                    return Err(CreditError::Refused {
                        field: "operationCode".into(),
                        detail: format!("'{operation_code}' is not a declared paid operation"),
                    });
                };
                let c = QueuedConsumption {
                    operation_id: operation_id.to_owned(),
                    tenant_id,
                    application: application.to_owned(),
                    operation_code: operation_code.to_owned(),
                    quantity,
                    amount,
                };
                match self.queue.enqueue(&c, self.allowance).await? {
                    Enqueued::Queued | Enqueued::AlreadyQueued => Ok(Consumed::Queued),
                    Enqueued::OverAllowance { queued } => Err(CreditError::AllowanceExhausted {
                        allowance: self.allowance,
                        queued,
                    }),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Replay the queue at the wrapper (idempotent by operation id); stops at the first
    /// consumption the wrapper cannot be reached for.
    pub async fn replay(&self) -> Result<ReplayReport, CreditError> {
        let mut report = ReplayReport::default();
        let queued = self.queue.queued().await?;
        let total = queued.len();
        for (i, c) in queued.into_iter().enumerate() {
            let outcome = self
                .wrapper
                .consume(
                    c.tenant_id,
                    &c.application,
                    &c.operation_code,
                    &c.operation_id,
                    c.quantity,
                )
                .await;
            match outcome {
                Ok(Ok(_)) => report.charged += 1,
                Ok(Err(refusal)) => {
                    tracing::error!(operation_id = %c.operation_id, %refusal, "offline consumption refused on replay");
                    report.refused.push(c.clone());
                }
                Err(LoadError::Unavailable(_)) => {
                    report.left = total - i;
                    return Ok(report);
                }
                Err(e) => return Err(e.into()),
            }
            self.queue.dequeue(&c.operation_id).await?;
        }
        Ok(report)
    }
}
