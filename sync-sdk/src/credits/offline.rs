//! Offline mode (the source specification's circuit breaker): when the wrapper is unreachable,
//! the direct path may consume from a bounded local allowance per tenant and application. Such
//! consumptions are queued durably in the app's store ([`CreditQueue`]) and replayed, idempotently
//! by operation id, once the wrapper answers again; beyond the allowance the consumption is
//! refused with [`CreditError::AllowanceExhausted`].

use std::{future::Future, sync::Arc};

use serde_json::Value;
use uuid::Uuid;

use crate::{
    loader::{LoadError, WrapperClient},
    store::StoreError,
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
    /// Credits.
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
    /// Any other wrapper failure.
    #[error(transparent)]
    Wrapper(#[from] LoadError),
    /// The queue failed.
    #[error(transparent)]
    Store(#[from] StoreError),
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
    /// Refused by the wrapper for insufficient credits (removed from the queue; reported).
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
}

impl<Q: CreditQueue> CreditClient<Q> {
    /// A client allowing `allowance` credits per tenant and application while offline.
    pub fn new(wrapper: Arc<WrapperClient>, queue: Arc<Q>, allowance: i64) -> Self {
        Self {
            wrapper,
            queue,
            allowance,
            mirror: None,
        }
    }

    /// Try the fast path first: the Redis mirror of the tenant's allocation (the wrapper's
    /// reconciliation provisions one per app allocation). A tenant not mirrored, or a Redis
    /// error, takes the direct path with the same operation id (the ledger charges an id once,
    /// whichever path brings it).
    pub fn with_mirror(mut self, mirror: super::CreditMirror) -> Self {
        self.mirror = Some(mirror);
        self
    }

    /// Consume on the fast path where mirrored, else at the wrapper, or from the offline
    /// allowance when the wrapper is unreachable.
    pub async fn consume(
        &self,
        tenant_id: Uuid,
        application: &str,
        operation_code: &str,
        operation_id: &str,
        amount: i64,
    ) -> Result<Consumed, CreditError> {
        use super::FastOutcome;
        if let Some(mirror) = &self.mirror {
            let fast = mirror
                .consume(tenant_id, application, operation_code, operation_id, amount)
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
                Ok(FastOutcome::NotMirrored) => {}
                Err(e) => {
                    tracing::warn!(%tenant_id, application, error = %e, "credit mirror unavailable: direct path");
                }
            }
        }
        metrics::counter!("tsync_credits_consumed_total", "path" => "direct").increment(1);
        self.consume_direct(tenant_id, application, operation_code, operation_id, amount)
            .await
    }

    /// Consume at the wrapper, or from the offline allowance when it is unreachable.
    pub async fn consume_direct(
        &self,
        tenant_id: Uuid,
        application: &str,
        operation_code: &str,
        operation_id: &str,
        amount: i64,
    ) -> Result<Consumed, CreditError> {
        match self
            .wrapper
            .consume(tenant_id, application, operation_code, operation_id, amount)
            .await
        {
            Ok(Ok(entry)) => Ok(Consumed::Charged(entry)),
            Ok(Err(balance)) => Err(CreditError::Insufficient { balance }),
            Err(LoadError::Unavailable(reason)) => {
                tracing::warn!(%tenant_id, application, %reason, "wrapper unreachable: offline credits");
                let c = QueuedConsumption {
                    operation_id: operation_id.to_owned(),
                    tenant_id,
                    application: application.to_owned(),
                    operation_code: operation_code.to_owned(),
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
                    c.amount,
                )
                .await;
            match outcome {
                Ok(Ok(_)) => report.charged += 1,
                Ok(Err(balance)) => {
                    tracing::error!(operation_id = %c.operation_id, balance, "offline consumption refused on replay");
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
