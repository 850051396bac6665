//! Credits from the app's side: two ways to consume.
//!
//! An app consumes an *operation* (its code and a quantity), never an amount: the wrapper is the
//! price authority (the tenant's credit config for the operation, else the default the app
//! declared in its manifest), and an operation with no price is refused.
//!
//! * **Direct** ([`crate::wrapper_client::WrapperClient::consume`]): the wrapper charges its ledger in
//!   one transaction; idempotent by operation id; a 402 carries the balance.
//! * **Fast path** ([`CreditMirror`]): the app's allocation is mirrored in Redis, grant by
//!   grant, and one Lua script checks the operation id, prices the operation from the price
//!   table the wrapper writes beside the balance, draws the grants in effect in the ledger's
//!   order (priority, then the earliest expiry, then the oldest), decrements the balance and
//!   appends a `credit.consumed` entry naming the grants drawn to the partition's credit
//!   stream, atomically. The wrapper ingests that stream into its ledger, idempotently by
//!   operation id, drawing the same grants. The wrapper alone writes the mirror: it adds the
//!   grants of every allocation to an application, takes expired and voided grants out, and its
//!   reconciliation corrects a mirror that drifted (for example after Redis lost its data).

pub mod offline;

use fred::{prelude::*, types::scripts::Script};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::contract::StreamKeys;

/// How long a fast-path operation id is remembered (its replay window): 7 days.
pub const OPERATION_TTL_SECS: u64 = 7 * 24 * 3600;

/// The reply of a charged fast-path consumption (replayed verbatim for a repeated id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FastReceipt {
    /// The idempotency key.
    pub operation_id: String,
    /// The tenant.
    pub tenant_id: String,
    /// The consuming application.
    pub application: String,
    /// What was done.
    pub operation_code: String,
    /// How many operations.
    pub quantity: i64,
    /// Credits charged: the tenant's price of the operation times the quantity.
    pub amount: i64,
    /// The mirrored balance after the charge.
    pub balance_after: i64,
    /// The credit stream entry the wrapper ingests.
    pub entry: String,
    /// The grants drawn, `<grant id>:<credits>` comma-separated in the order drawn (see
    /// [`FastReceipt::drawn`]).
    #[serde(default)]
    pub draws: String,
}

impl FastReceipt {
    /// The grants drawn and the credits taken from each, in the order drawn.
    pub fn drawn(&self) -> Vec<(Uuid, i64)> {
        crate::contract::credit_draws(&self.draws)
    }
}

/// What a fast-path consumption did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FastOutcome {
    /// Charged now.
    Charged(FastReceipt),
    /// Charged before under the same operation id; nothing charged now.
    Replayed(FastReceipt),
    /// The grants in effect do not cover the amount; nothing charged.
    Insufficient {
        /// The mirrored credits in effect now.
        balance: i64,
    },
    /// No mirror exists for this tenant and application (use the direct path or reconcile).
    NotMirrored,
    /// The mirror has no price for the operation (not declared, not published yet, or the
    /// amount is over one request's limit): ask the wrapper, which prices authoritatively.
    NotPriced,
}

/// The mirrored allocations of one app, in Redis.
pub struct CreditMirror {
    redis: Client,
    keys: StreamKeys,
    consume: Script,
}

fn parse_error(e: impl std::fmt::Display) -> Error {
    Error::new(fred::error::ErrorKind::Parse, e.to_string())
}

impl CreditMirror {
    /// Mirrors under `keys`' namespace.
    pub fn new(redis: Client, keys: StreamKeys) -> Self {
        Self {
            redis,
            keys,
            consume: Script::from_lua(include_str!("consume.lua")),
        }
    }

    /// Consume `quantity` × the tenant's price of `operation_code` from `app`'s allocation in
    /// `tenant_id` (the price comes from the table the wrapper writes; the app names none).
    pub async fn consume(
        &self,
        tenant_id: Uuid,
        app: &str,
        operation_code: &str,
        operation_id: &str,
        quantity: i64,
    ) -> Result<FastOutcome, Error> {
        self.consume_as(None, tenant_id, app, operation_code, operation_id, quantity)
            .await
    }

    /// [`consume`](Self::consume), recording the user the app acted for (usage by user).
    pub async fn consume_as(
        &self,
        user: Option<Uuid>,
        tenant_id: Uuid,
        app: &str,
        operation_code: &str,
        operation_id: &str,
        quantity: i64,
    ) -> Result<FastOutcome, Error> {
        let keys = self.keys.credit_consume_keys(tenant_id, app, operation_id);
        let args = vec![
            operation_id.to_owned(),
            quantity.to_string(),
            tenant_id.to_string(),
            app.to_owned(),
            operation_code.to_owned(),
            OPERATION_TTL_SECS.to_string(),
            user.map(|u| u.to_string()).unwrap_or_default(),
        ];
        let (status, text): (i64, String) = self
            .consume
            .evalsha_with_reload(&self.redis, keys, args)
            .await?;
        let receipt = || serde_json::from_str::<FastReceipt>(&text).map_err(parse_error);
        Ok(match status {
            0 => FastOutcome::Charged(receipt()?),
            1 => FastOutcome::Replayed(receipt()?),
            2 => FastOutcome::Insufficient {
                balance: text.parse().map_err(parse_error)?,
            },
            3 => FastOutcome::NotMirrored,
            _ => FastOutcome::NotPriced,
        })
    }

    /// The mirrored balance, if mirrored.
    pub async fn balance(&self, tenant_id: Uuid, app: &str) -> Result<Option<i64>, Error> {
        self.redis
            .get(self.keys.credit_balance(tenant_id, app))
            .await
    }

    /// The mirrored grants and their remaining credits, if mirrored.
    pub async fn grants(&self, tenant_id: Uuid, app: &str) -> Result<Vec<(Uuid, i64)>, Error> {
        let all: std::collections::HashMap<String, String> = self
            .redis
            .hgetall(self.keys.credit_grants(tenant_id, app))
            .await?;
        let mut grants: Vec<(Uuid, i64)> = all
            .iter()
            .filter_map(|(k, v)| Some((k.parse().ok()?, v.parse().ok()?)))
            .collect();
        grants.sort();
        Ok(grants)
    }
}
