//! Typed identifiers: a tenant's id cannot be passed where a user's is expected. Each is a
//! UUID on the wire and in Postgres (transparent both ways).

use uuid::Uuid;

macro_rules! id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
            serde::Serialize, serde::Deserialize, sqlx::Type,
        )]
        #[serde(transparent)]
        #[sqlx(transparent)]
        pub struct $name(pub Uuid);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }
    };
}

id!(
    /// A tenant.
    TenantId
);
id!(
    /// A user (of a tenant, or a platform admin).
    UserId
);
id!(
    /// A role of a tenant.
    RoleId
);
id!(
    /// A membership: a user holding a role.
    MembershipId
);
