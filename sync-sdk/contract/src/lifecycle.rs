//! Lifecycle commands (erase a user, purge or export a tenant) as the apps prove them.
//!
//! The wrapper puts a command on the lifecycle stream (`{ns}:lifecycle`), but the stream is not
//! proof: whoever can write to Redis can append an entry that names any tenant. Before it
//! deletes or hands out anything, an app asks the wrapper for the operation the entry names
//! (`GET /api/sync/operations/{id}`, with its service token, over the channel it already
//! trusts for snapshots) and acts only when the wrapper answers with a pending
//! [`LifecycleOperation`] of the same kind, tenant and user. Anything else is unproven: it
//! changes nothing and is dead-lettered.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A lifecycle operation as the wrapper vouches for it to an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LifecycleOperation {
    /// The operation.
    pub operation_id: Uuid,
    /// `erase_user`, `purge_tenant` or `export_tenant`.
    pub kind: String,
    /// The tenant it is about.
    pub tenant_id: Uuid,
    /// The user an erasure is about.
    pub user_id: Option<Uuid>,
    /// `pending` until every app confirmed, then `done`.
    pub status: String,
}

impl LifecycleOperation {
    /// Whether a command read from the stream (its kind, tenant and user) is this operation,
    /// still to be carried out. A command that names a different tenant or user, or an
    /// operation already done, is not.
    pub fn proves(&self, kind: &str, tenant_id: Uuid, user_id: Option<Uuid>) -> bool {
        self.status == "pending"
            && self.kind == kind
            && self.tenant_id == tenant_id
            && self.user_id == user_id
    }
}
