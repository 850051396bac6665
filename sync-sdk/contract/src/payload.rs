//! Event types and their typed payloads.
//!
//! A state event's payload is the aggregate's whole new state (not a diff), so a consumer can
//! apply it by `aggregateVersion` alone. Payloads never carry password hashes, MFA secrets or
//! tokens: the types below simply have no field for them.

use std::{collections::BTreeMap, fmt, str::FromStr};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

use super::ContractError;

macro_rules! event_types {
    ($( $variant:ident => $wire:literal, $payload:ty; )+) => {
        /// The kind of an event: `<aggregate>.<verb>` on the wire.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventType {
            $( #[doc = concat!("`", $wire, "`")] $variant, )+
        }

        impl EventType {
            /// Every event type of contract v1.
            pub const ALL: &'static [EventType] = &[$(EventType::$variant),+];

            /// The wire name, e.g. `user.email_changed`.
            pub fn as_str(self) -> &'static str {
                match self { $(EventType::$variant => $wire,)+ }
            }
        }

        impl FromStr for EventType {
            type Err = ContractError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($wire => Ok(EventType::$variant),)+
                    other => Err(ContractError::UnknownEventType(other.to_owned())),
                }
            }
        }

        #[cfg(feature = "openapi")]
        impl EventType {
            /// The Rust name of the event type (`UserEmailChanged`): its message's key in the
            /// AsyncAPI document.
            pub fn variant_name(self) -> &'static str {
                match self { $(EventType::$variant => stringify!($variant),)+ }
            }

            /// The name of the payload's schema (`UserState`).
            pub fn payload_schema_name(self) -> String {
                match self { $(EventType::$variant => <$payload as utoipa::ToSchema>::name().into_owned(),)+ }
            }

            /// Every payload's schema and the schemas they refer to, by name.
            pub(crate) fn payload_schemas(
                out: &mut std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>>,
            ) {
                $( crate::asyncapi::collect::<$payload>(out); )+
            }
        }

        /// An event: its type together with its typed payload.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Event {
            $( #[doc = concat!("`", $wire, "`")] $variant($payload), )+
        }

        impl Event {
            /// The type of this event.
            pub fn event_type(&self) -> EventType {
                match self { $(Event::$variant(_) => EventType::$variant,)+ }
            }

            /// The payload as JSON.
            pub fn payload_json(&self) -> serde_json::Value {
                // Serialising these plain structs cannot fail: no map has non-string keys.
                match self { $(Event::$variant(p) => serde_json::to_value(p),)+ }
                    .unwrap_or(serde_json::Value::Null)
            }

            /// Decode the payload of an event of type `event_type`.
            pub fn from_payload(
                event_type: EventType,
                payload: serde_json::Value,
            ) -> Result<Self, ContractError> {
                Ok(match event_type { $(EventType::$variant => Event::$variant(decode(payload)?),)+ })
            }
        }
    };
}

event_types! {
    TenantCreated => "tenant.created", TenantState;
    TenantUpdated => "tenant.updated", TenantState;
    TenantArchived => "tenant.archived", TenantState;
    TenantSuspended => "tenant.suspended", TenantState;
    TenantResumed => "tenant.resumed", TenantState;
    UserCreated => "user.created", UserState;
    UserUpdated => "user.updated", UserState;
    UserEmailChanged => "user.email_changed", UserState;
    UserDeactivated => "user.deactivated", UserState;
    UserDeleted => "user.deleted", UserState;
    UserErased => "user.erased", UserState;
    RoleCreated => "role.created", RoleState;
    RoleUpdated => "role.updated", RoleState;
    RoleDeleted => "role.deleted", RoleState;
    MembershipGranted => "membership.granted", MembershipState;
    MembershipRevoked => "membership.revoked", MembershipState;
    SettingsUpdated => "settings.updated", SettingsState;
    CreditAllocated => "credit.allocated", CreditAllocated;
    CreditConsumed => "credit.consumed", CreditConsumed;
    CreditConfigUpdated => "credit.config_updated", CreditConfigState;
    CreditGrantChanged => "credit.grant_changed", CreditGrantChanged;
    CreditThresholdReached => "credit.threshold_reached", CreditThresholdReached;
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for EventType {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("The kind of an event: `<aggregate>.<verb>`."))
            .enum_values(Some(EventType::ALL.iter().map(|t| t.as_str())))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for EventType {}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for EventType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn decode<T: DeserializeOwned>(payload: serde_json::Value) -> Result<T, ContractError> {
    serde_json::from_value(payload).map_err(|e| ContractError::InvalidField {
        field: "payload".into(),
        reason: e.to_string(),
    })
}

/// Whether a tenant is in use or archived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TenantStatus {
    /// In use.
    Active,
    /// Suspended by a platform admin (`POST /api/tenants/{id}/suspend`): every app and the
    /// wrapper refuse its users until it is resumed; its data is kept.
    Suspended,
    /// Archived (`DELETE /api/tenants/{id}`); its data is kept.
    Archived,
}

/// A tenant's state (`tenant.*` events).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TenantState {
    /// Tenant id.
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// The subdomain under the parent domain, e.g. `acme` for `acme.yourapp.test`.
    pub subdomain: String,
    /// An optional custom domain.
    #[serde(default)]
    pub domain: Option<String>,
    /// Plan name, e.g. `pro`.
    pub plan: String,
    /// Enabled feature flags.
    #[serde(default)]
    pub features: Vec<String>,
    /// Free-form theme settings.
    #[serde(default)]
    pub theme: serde_json::Value,
    /// Active, suspended or archived.
    pub status: TenantStatus,
}

/// A user's state (`user.*` events). Never carries a password hash, MFA secret or token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserState {
    /// User id.
    pub id: Uuid,
    /// The tenant the user belongs to.
    pub tenant_id: Uuid,
    /// Email, unique within the tenant.
    pub email: String,
    /// Full name (at most 100 characters).
    pub full_name: String,
    /// Avatar URL.
    #[serde(default)]
    pub avatar_url: Option<String>,
    /// Whether the email address was verified.
    #[serde(default)]
    pub email_verified: bool,
    /// False once deactivated or deleted.
    pub active: bool,
    /// Set when the user was soft-deleted.
    #[serde(default)]
    pub deleted_at: Option<DateTime<Utc>>,
}

/// The name every reference to an erased user shows (`user.erased`).
pub const ERASED_NAME: &str = "[Deleted User]";

/// The address an erased user's state carries instead of theirs: unique, pseudonymous, never
/// deliverable (`.invalid`).
pub fn erased_email(user_id: Uuid) -> String {
    format!("erased-{}@erased.invalid", user_id.simple())
}

impl UserState {
    /// Active and not deleted: the user may act, and apps show them as they are.
    pub fn is_live(&self) -> bool {
        self.active && self.deleted_at.is_none()
    }
}

/// A role's state (`role.*` events).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RoleState {
    /// Role id.
    pub id: Uuid,
    /// The tenant the role belongs to.
    pub tenant_id: Uuid,
    /// Role name, unique within the tenant.
    pub name: String,
    /// Permission names the role grants, e.g. `crm.accounts.write`.
    #[serde(default)]
    pub permissions: Vec<String>,
    /// Set when the role was deleted.
    #[serde(default)]
    pub deleted: bool,
}

/// A membership's state: a user holding a role (`membership.*` events).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MembershipState {
    /// Membership id.
    pub id: Uuid,
    /// The tenant.
    pub tenant_id: Uuid,
    /// The user holding the role.
    pub user_id: Uuid,
    /// The role held.
    pub role_id: Uuid,
    /// False once revoked.
    pub active: bool,
}

/// A tenant's settings (`settings.updated`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SettingsState {
    /// The tenant.
    pub tenant_id: Uuid,
    /// Every setting, by key.
    #[serde(default)]
    pub values: BTreeMap<String, serde_json::Value>,
}

/// Credits allocated to a tenant, an entity in it, or an application (`credit.allocated`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreditAllocated {
    /// Allocation id: consumers raise a balance once per allocation id.
    pub allocation_id: Uuid,
    /// The tenant.
    pub tenant_id: Uuid,
    /// The entity inside the tenant, if the allocation targets one.
    #[serde(default)]
    pub entity_id: Option<String>,
    /// The application, if credits moved from the tenant's pool to an application.
    #[serde(default)]
    pub application: Option<String>,
    /// Credits allocated.
    pub amount: i64,
    /// The receiving balance after the allocation.
    pub balance_after: i64,
}

/// Credits consumed by an operation (`credit.consumed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreditConsumed {
    /// The idempotency key of the consumption.
    pub operation_id: String,
    /// The tenant.
    pub tenant_id: Uuid,
    /// The consuming application.
    pub application: String,
    /// What was done, e.g. `crm.accounts.create`.
    pub operation_code: String,
    /// Credits charged.
    pub amount: i64,
    /// The balance after the charge.
    pub balance_after: i64,
}

/// A grant's credits changed on its own terms (`credit.grant_changed`, contract 1.2): it expired,
/// a recurring grant renewed, or it was voided. Each is also a ledger entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreditGrantChanged {
    /// The ledger entry recording the change (consumers act once per entry).
    pub entry_id: Uuid,
    /// The grant.
    pub grant_id: Uuid,
    /// The tenant.
    pub tenant_id: Uuid,
    /// The balance holding the grant: `tenant`, `app:<name>` or `entity:<id>`.
    pub scope: String,
    /// `expired`, `renewed` or `voided`.
    pub change: String,
    /// Credits the change removed (expired, voided) or added (renewed).
    pub amount: i64,
    /// The grant's remaining credits after the change.
    pub remaining: i64,
    /// The balance of `scope` after the change.
    pub balance_after: i64,
}

/// A balance crossed a threshold a tenant admin set (`credit.threshold_reached`, contract 1.2):
/// once per crossing, not once per consumption; it fires again only after the balance has
/// been back on the safe side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreditThresholdReached {
    /// The threshold.
    pub threshold_id: Uuid,
    /// The tenant.
    pub tenant_id: Uuid,
    /// The balance: `tenant`, `app:<name>` or `entity:<id>`.
    pub scope: String,
    /// `balance_below` or `percent_used`.
    pub kind: String,
    /// The threshold's value (credits, or percent).
    pub value: i64,
    /// The balance when it was crossed.
    pub balance: i64,
    /// Percent of the live grants' credits used when it was crossed.
    pub percent_used: i64,
}

/// The cost of one operation for a tenant (`credit.config_updated`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreditConfigState {
    /// Config id.
    pub id: Uuid,
    /// The tenant.
    pub tenant_id: Uuid,
    /// The application the operation belongs to.
    pub application: String,
    /// The operation code, e.g. `crm.accounts.create`.
    pub operation_code: String,
    /// Credits one operation costs.
    pub cost: i64,
    /// False once the config was removed.
    pub active: bool,
}
