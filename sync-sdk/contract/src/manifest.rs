//! An app's manifest: what it tells the wrapper about itself when it starts
//! (`PUT /api/apps/{name}` with its service credentials). The wrapper lists registered apps in
//! the portal and on every dashboard, derives the edge's routes from them, and prices credit
//! consumption from the operations they declare: an app consumes an *operation*, never an
//! amount of its own choosing.

use serde::{Deserialize, Serialize};

/// An app of the suite.
///
/// ```
/// use sync_contract::{AppManifest, PaidOperation};
///
/// let manifest = AppManifest::new("projects", "Projects")
///     .requiring_feature("projects")
///     .with_operation("projects.create", 20);
/// assert_eq!(manifest.public_path, "/projects/");
/// assert_eq!(manifest.operations, vec![PaidOperation { code: "projects.create".into(), default_cost: 20 }]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppManifest {
    /// The app's name, also its service account and credit scope, e.g. `crm` (lowercase
    /// letters, digits and `-`, at most 40).
    pub name: String,
    /// Its title in the portal and the suite links, e.g. `CRM`.
    pub display_name: String,
    /// The path the edge serves it under, e.g. `/crm/`.
    pub public_path: String,
    /// The tenant feature a tenant needs to use it, if any.
    #[serde(default)]
    pub feature: Option<String>,
    /// The operations it may consume credits for, with their default price.
    #[serde(default)]
    pub operations: Vec<PaidOperation>,
    /// Where its own data points at users: what the nightly integrity pass (in the app and in
    /// `tsync full-sync`) checks.
    #[serde(default)]
    pub references: Vec<ReferenceCheck>,
}

/// A field of an app collection that holds user ids, declared for the integrity pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReferenceCheck {
    /// What a record is called in reports, e.g. `account` (`account:<id>`).
    pub kind: String,
    /// The app's collection, e.g. `accounts`.
    pub collection: String,
    /// The field holding the user id(s), e.g. `ownerId`.
    pub field: String,
    /// The field holds an array of user ids (e.g. `memberIds`) rather than one.
    #[serde(default)]
    pub many: bool,
}

/// A paid operation an app declares: its code and the price a tenant pays unless the
/// tenant's credit configuration says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PaidOperation {
    /// The operation code, e.g. `crm.accounts.create`.
    pub code: String,
    /// Credits one operation costs by default.
    pub default_cost: i64,
}

impl AppManifest {
    /// An app named `name` (served under `/{name}/`), shown as `display_name`.
    pub fn new(name: &str, display_name: &str) -> Self {
        Self {
            name: name.to_owned(),
            display_name: display_name.to_owned(),
            public_path: format!("/{name}/"),
            feature: None,
            operations: Vec::new(),
            references: Vec::new(),
        }
    }

    /// Declares that `field` of `collection` holds one user id (`kind` names its records).
    pub fn with_reference(mut self, kind: &str, collection: &str, field: &str) -> Self {
        self.references.push(ReferenceCheck {
            kind: kind.to_owned(),
            collection: collection.to_owned(),
            field: field.to_owned(),
            many: false,
        });
        self
    }

    /// Declares that `field` of `collection` holds an array of user ids.
    pub fn with_references(mut self, kind: &str, collection: &str, field: &str) -> Self {
        self.references.push(ReferenceCheck {
            kind: kind.to_owned(),
            collection: collection.to_owned(),
            field: field.to_owned(),
            many: true,
        });
        self
    }

    /// Served under `path` instead of `/{name}/`.
    pub fn served_at(mut self, path: &str) -> Self {
        self.public_path = path.to_owned();
        self
    }

    /// Usable by tenants that have `feature`.
    pub fn requiring_feature(mut self, feature: &str) -> Self {
        self.feature = Some(feature.to_owned());
        self
    }

    /// Declares a paid operation and its default price.
    pub fn with_operation(mut self, code: &str, default_cost: i64) -> Self {
        self.operations.push(PaidOperation {
            code: code.to_owned(),
            default_cost,
        });
        self
    }

    /// The default price of `code`, if declared.
    pub fn default_cost(&self, code: &str) -> Option<i64> {
        self.operations
            .iter()
            .find(|o| o.code == code)
            .map(|o| o.default_cost)
    }
}

/// The suite's apps as a tenant with `features` sees them, as `(title, path)`: the registered
/// `apps` whose feature it has (an app requiring none is everyone's), then the `configured`
/// links of apps not registered (yet) whose title is one of its features. The wrapper's portal
/// and every app's dashboard list the same.
pub fn suite_links(
    apps: &[AppManifest],
    features: &[String],
    configured: &[(String, String)],
) -> Vec<(String, String)> {
    let has = |f: &str| features.iter().any(|g| g.eq_ignore_ascii_case(f));
    let mut links: Vec<(String, String)> = apps
        .iter()
        .filter(|a| a.feature.as_deref().is_none_or(has))
        .map(|a| (a.display_name.clone(), a.public_path.clone()))
        .collect();
    for (title, path) in configured {
        if !apps.iter().any(|a| a.public_path == *path) && has(title) {
            links.push((title.clone(), path.clone()));
        }
    }
    links
}
