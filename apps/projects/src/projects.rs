//! The project API: list, create (charging credits, retry-safe with `Idempotency-Key`), read,
//! and the people a project can have (the tenant's synced users). Handlers take
//! [`LoadedTenant`]: they run once the tenant is loaded (lazily, on its first visit), degrade
//! when the wrapper is down, and answer problems through `?`.

use serde::{Deserialize, Serialize};
use sync_sdk::{
    app::LoadedTenant,
    axum::{
        Json,
        extract::{Path, State},
        http::StatusCode,
    },
    contract::UserState,
    http::{AppError, AppResult, PageQuery},
    idempotency::{IdempotencyKey, insert_paid},
    mongodb::bson::{Document, doc},
    serde_json::Value,
    store::{Person, mongo::MongoStore, person, person_view, users},
    uuid::Uuid,
};

use crate::{AppState, CREATE_PROJECT};

/// Most members one project may have.
const MAX_MEMBERS: usize = 100;

/// A project as the API shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Project {
    /// Project id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Who owns it.
    pub owner: Member,
    /// Who works on it.
    pub members: Vec<Member>,
    /// What the nightly integrity pass found, by user id: `inactive`, `deleted` or `missing`
    /// (cleared once the user is live again).
    pub orphaned: std::collections::BTreeMap<String, String>,
}

/// A user referenced by a project, as the synced copy has them now (the SDK's view: name,
/// address while live, status).
pub type Member = sync_sdk::store::PersonView;

fn ids(d: &Document, field: &str) -> Vec<Uuid> {
    d.get_array(field)
        .map(|a| a.iter().filter_map(|v| v.as_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

impl Project {
    /// The project stored as `d`, its people looked up in the synced copy.
    pub async fn load(store: &MongoStore, tenant: Uuid, d: &Document) -> Self {
        let owner: Uuid = d
            .get_str("ownerId")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_default();
        let mut members = Vec::new();
        for id in ids(d, "memberIds") {
            members.push(person_view(store, tenant, id).await);
        }
        let mut orphaned = std::collections::BTreeMap::new();
        if let Ok(reason) = d.get_str("ownerOrphaned") {
            orphaned.insert(owner.to_string(), reason.to_owned());
        }
        if let Ok(marks) = d.get_document("memberOrphaned") {
            for (user, reason) in marks {
                if let Some(reason) = reason.as_str() {
                    orphaned.insert(user.clone(), reason.to_owned());
                }
            }
        }
        Project {
            id: d.get_str("_id").unwrap_or_default().to_owned(),
            name: d.get_str("name").unwrap_or_default().to_owned(),
            owner: person_view(store, tenant, owner).await,
            members,
            orphaned,
        }
    }
}

pub(crate) async fn list(
    State(s): State<AppState>,
    tenant: LoadedTenant,
    page: PageQuery,
) -> AppResult<Json<Value>> {
    let t = tenant.id();
    let mut cursor = page.find(&s.projects, t).await?;
    let mut items = Vec::new();
    while cursor.advance().await? {
        let project = Project::load(&s.store, t, &cursor.deserialize_current()?).await;
        items.push(sync_sdk::serde_json::to_value(project).unwrap_or_default());
    }
    Ok(Json(PageQuery::page(items, page.limit, |p| {
        p["id"].clone()
    })))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewProject {
    name: String,
    #[serde(default)]
    member_ids: Vec<Uuid>,
}

fn checked(bytes: &[u8]) -> AppResult<(String, Vec<Uuid>)> {
    let req: NewProject = sync_sdk::http::parse_body(bytes)?;
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(AppError::invalid("name", "must be 1-200 characters"));
    }
    let mut members = req.member_ids;
    members.sort();
    members.dedup();
    if members.len() > MAX_MEMBERS {
        return Err(AppError::invalid(
            "memberIds",
            format!("at most {MAX_MEMBERS} members"),
        ));
    }
    Ok((name.to_owned(), members))
}

/// Creates a project owned by the caller. Every member must be a live user of the tenant;
/// the tenant pays `projects.create` at its price.
pub(crate) async fn create(
    State(s): State<AppState>,
    key: IdempotencyKey,
    tenant: LoadedTenant,
    bytes: sync_sdk::axum::body::Bytes,
) -> AppResult<(StatusCode, Json<Project>)> {
    let t = tenant.id();
    let (name, members) = checked(&bytes)?;
    for (i, member) in members.iter().enumerate() {
        if !matches!(person(&*s.store, t, *member).await, Person::Live(_)) {
            return Err(AppError::Invalid {
                field: "memberIds",
                message: format!("memberIds[{i}] is not a live user of this tenant"),
            });
        }
    }
    // Charged once and created once, however often the client retries with its key.
    let member_ids: Vec<String> = members.iter().map(Uuid::to_string).collect();
    let project = doc! {"name": &name, "ownerId": tenant.user.user_id.to_string(),
    "memberIds": member_ids};
    let same = ["name", "ownerId", "memberIds"];
    let (status, stored) = insert_paid(
        &s,
        &tenant.user,
        CREATE_PROJECT,
        &s.projects,
        &key,
        project,
        &same,
    )
    .await?;
    Ok((status, Json(Project::load(&s.store, t, &stored).await)))
}

pub(crate) async fn read(
    State(s): State<AppState>,
    tenant: LoadedTenant,
    Path(id): Path<Uuid>,
) -> AppResult<Json<Project>> {
    let t = tenant.id();
    let found = s
        .projects
        .find_one(doc! {"_id": id.to_string(), "tenantId": t.to_string()})
        .await?
        .ok_or(AppError::NotFound("no such project"))?;
    Ok(Json(Project::load(&s.store, t, &found).await))
}

/// A person a project can have: the tenant's users as synced (for a member picker).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    /// The user id.
    pub id: Uuid,
    /// Their name.
    pub name: String,
    /// Their email.
    pub email: String,
    /// Active and not deleted: may be added to a project.
    pub live: bool,
}

impl From<UserState> for Candidate {
    fn from(u: UserState) -> Self {
        Self {
            live: u.is_live(),
            id: u.id,
            name: u.full_name,
            email: u.email,
        }
    }
}

/// `GET /people?cursor=&limit=`: the tenant's users (with whether each is live), a page at a
/// time.
pub(crate) async fn people(
    State(s): State<AppState>,
    tenant: LoadedTenant,
    page: PageQuery,
) -> AppResult<Json<Value>> {
    let t = tenant.id();
    let after = page
        .cursor
        .as_deref()
        .map(str::parse::<Uuid>)
        .transpose()
        .map_err(|_| AppError::invalid("cursor", "must be a user id"))?;
    let found: Vec<UserState> = users(&*s.store, t, after, page.limit + 1).await?;
    let items = found
        .into_iter()
        .map(|u| sync_sdk::serde_json::to_value(Candidate::from(u)).unwrap_or_default())
        .collect();
    Ok(Json(PageQuery::page(items, page.limit, |p| {
        p["id"].clone()
    })))
}
