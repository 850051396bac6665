//! The app's client of the wrapper: a service token cached until shortly before it expires
//! (renewed once on a `401`), the tenant snapshot and digests, credit consumption, audit
//! reports and the app's registration (its manifest). Every call goes through one request
//! function, so the token handling exists once.
//!
//! The base URL may list several wrappers, separated by commas (`http://w1:8080,http://w2:8080`):
//! a request that cannot connect to one goes to the next, and the client stays with the one
//! that answered. Only connection failures move on (the request never reached a wrapper);
//! a timeout or an error status is the caller's to handle, as with one wrapper.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use crate::store::{EntityKind, SnapshotItem, StoreError};

/// The wrapper's refusal of a consumption (nothing charged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The balance does not cover it.
    #[error("insufficient credits: balance {balance}")]
    Insufficient {
        /// The balance at the wrapper.
        balance: i64,
    },
    /// The operation has no price for this tenant, or the request was invalid.
    #[error("refused by the wrapper: {field}: {detail}")]
    Refused {
        /// The field at fault, e.g. `operationCode`.
        field: String,
        /// Why.
        detail: String,
    },
}

/// Why a tenant could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The wrapper could not be reached or failed: serve what is loaded, retry later.
    #[error("wrapper unavailable: {0}")]
    Unavailable(String),
    /// The wrapper does not know the tenant.
    #[error("no such tenant")]
    NotFound,
    /// The app's credentials were refused.
    #[error("the wrapper refused the app's credentials")]
    Unauthorized,
    /// The tenant's plan does not include the feature this app needs: the app may not load,
    /// serve or charge it.
    #[error("this organisation's plan does not include the feature '{0}'")]
    FeatureMissing(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How an app reaches the wrapper: base URL and service credentials.
#[derive(Clone)]
pub struct WrapperConfig {
    /// e.g. `http://127.0.0.1:8080`, or several wrappers separated by commas (see the module
    /// docs).
    pub base_url: String,
    /// The service client id (the app's name).
    pub client_id: String,
    /// The service client secret.
    pub client_secret: String,
    /// Users per snapshot page.
    pub page_size: u32,
    /// Timeout of one wrapper request.
    pub timeout: Duration,
}

impl std::fmt::Debug for WrapperConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WrapperConfig")
            .field("base_url", &self.base_url)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// A client of the wrapper's sync endpoints, with a cached service token.
pub struct WrapperClient {
    http: reqwest::Client,
    config: WrapperConfig,
    wrappers: WrapperUrls,
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
}

/// One or more wrapper base URLs (comma-separated), and the one that answered last.
#[derive(Debug)]
pub struct WrapperUrls {
    bases: Vec<String>,
    current: AtomicUsize,
}

impl WrapperUrls {
    /// The URLs of `list` (comma-separated, trailing slashes dropped).
    pub fn new(list: &str) -> Self {
        let bases: Vec<String> = list
            .split(',')
            .map(|b| b.trim().trim_end_matches('/').to_owned())
            .filter(|b| !b.is_empty())
            .collect();
        Self {
            bases: if bases.is_empty() {
                vec![String::new()]
            } else {
                bases
            },
            current: AtomicUsize::new(0),
        }
    }

    /// Send the request `build` makes for a base URL, starting with the one that answered
    /// last and moving on to the next only when it cannot connect.
    pub async fn send(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let first = self.current.load(Ordering::Relaxed);
        let mut failed = None;
        for attempt in 0..self.bases.len() {
            let i = (first + attempt) % self.bases.len();
            match build(&self.bases[i]).send().await {
                Err(e) if e.is_connect() => {
                    tracing::warn!(wrapper = %self.bases[i], error = %e, "wrapper unreachable; trying the next");
                    failed = Some(e);
                }
                answered => {
                    self.current.store(i, Ordering::Relaxed);
                    return answered;
                }
            }
        }
        Err(failed.expect("at least one base URL was tried"))
    }
}

#[derive(Debug, Deserialize)]
struct Versioned {
    version: i64,
    state: Value,
}

/// One page of a tenant snapshot.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotPage {
    /// The tenant's seq when the page was read.
    pub watermark: i64,
    /// Continue with this cursor; None on the last page.
    pub next_cursor: Option<Uuid>,
    #[serde(default)]
    tenant: Option<Versioned>,
    #[serde(default)]
    users: Vec<Versioned>,
    #[serde(default)]
    roles: Vec<Versioned>,
    #[serde(default)]
    memberships: Vec<Versioned>,
    #[serde(default)]
    settings: Option<Versioned>,
    #[serde(default)]
    credit_configs: Vec<Versioned>,
}

impl SnapshotPage {
    /// The page's aggregates as store items.
    pub fn items(self, tenant_id: Uuid) -> Vec<SnapshotItem> {
        let id_of = |v: &Versioned, field: &str| {
            v.state
                .get(field)
                .and_then(|i| i.as_str())
                .and_then(|s| s.parse().ok())
        };
        let mut items = Vec::new();
        let mut push = |kind: EntityKind, v: Versioned, field: &str| {
            if let Some(id) = id_of(&v, field) {
                items.push((kind, id, v.version, v.state));
            }
        };
        if let Some(v) = self.tenant {
            push(EntityKind::Tenant, v, "id");
        }
        for v in self.users {
            push(EntityKind::User, v, "id");
        }
        for v in self.roles {
            push(EntityKind::Role, v, "id");
        }
        for v in self.memberships {
            push(EntityKind::Membership, v, "id");
        }
        if let Some(v) = self.settings {
            push(EntityKind::Settings, v, "tenantId");
        }
        for v in self.credit_configs {
            push(EntityKind::CreditConfig, v, "id");
        }
        // Settings are keyed by tenant: a page for another tenant would be a wrapper bug.
        items.retain(|i| i.0 != EntityKind::Settings || i.1 == tenant_id);
        items
    }
}

fn unavailable(e: impl std::fmt::Display) -> LoadError {
    LoadError::Unavailable(e.to_string())
}

impl WrapperClient {
    /// A client for `config`.
    pub fn new(config: WrapperConfig) -> Self {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .unwrap_or_default();
        Self {
            http,
            wrappers: WrapperUrls::new(&config.base_url),
            config,
            token: tokio::sync::Mutex::new(None),
        }
    }

    async fn token(&self, refresh: bool) -> Result<String, LoadError> {
        let mut cached = self.token.lock().await;
        let fresh = cached
            .as_ref()
            .filter(|(_, until)| !refresh && Instant::now() < *until);
        if let Some((token, _)) = fresh {
            return Ok(token.clone());
        }
        let credentials = serde_json::json!({
            "clientId": self.config.client_id, "clientSecret": self.config.client_secret,
        });
        let resp = self
            .wrappers
            .send(|base| {
                self.http
                    .post(format!("{base}/auth/service-token"))
                    .json(&credentials)
            })
            .await
            .map_err(unavailable)?;
        match resp.status().as_u16() {
            200 => {}
            401 | 403 => return Err(LoadError::Unauthorized),
            s => return Err(unavailable(format!("service token: HTTP {s}"))),
        }
        let body: Value = resp.json().await.map_err(unavailable)?;
        let token = body["accessToken"].as_str().unwrap_or_default().to_owned();
        let ttl = body["expiresIn"].as_u64().unwrap_or(60);
        // Renew a little before expiry.
        let until = Instant::now() + Duration::from_secs(ttl.saturating_sub(ttl / 5).max(1));
        *cached = Some((token.clone(), until));
        Ok(token)
    }

    /// One page of `tenant_id`'s snapshot.
    pub async fn snapshot_page(
        &self,
        tenant_id: Uuid,
        cursor: Option<Uuid>,
    ) -> Result<SnapshotPage, LoadError> {
        let mut url = format!(
            "/api/sync/tenant/{tenant_id}?limit={}",
            self.config.page_size
        );
        if let Some(c) = cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        self.get_json(&url).await
    }
}

/// A tenant's digests as the wrapper computes them.
#[derive(Debug, Clone, Deserialize)]
pub struct RemoteDigest {
    /// The tenant's seq when the digests were computed.
    pub watermark: i64,
    /// Digest per kind name (`users`, `roles`, …).
    pub digests: HashMap<String, String>,
}

impl WrapperClient {
    /// The wrapper's digests of `tenant_id`.
    pub async fn digest(&self, tenant_id: Uuid) -> Result<RemoteDigest, LoadError> {
        self.get_json(&format!("/api/sync/tenant/{tenant_id}/digest"))
            .await
    }

    /// Report a security event (e.g. a refused cross-tenant attempt) into the audit log of
    /// `tenant` (its id or subdomain).
    pub async fn report_audit(
        &self,
        tenant: &str,
        actor_id: Option<Uuid>,
        action: &str,
        details: Value,
    ) -> Result<(), LoadError> {
        let url = "/api/audit/events";
        let body = serde_json::json!({"tenant": tenant, "actorId": actor_id, "action": action, "details": details});
        let (status, _) = self
            .request(reqwest::Method::POST, url, Some(&body))
            .await?;
        match status {
            202 => Ok(()),
            s => Err(unavailable(format!("audit: HTTP {s}"))),
        }
    }

    /// Register (or update) the app's manifest: its place in the suite and the paid operations
    /// it may consume, with their default prices.
    pub async fn register(&self, manifest: &sync_contract::AppManifest) -> Result<(), LoadError> {
        let url = format!("/api/apps/{}", manifest.name);
        let body = serde_json::to_value(manifest).map_err(unavailable)?;
        match self
            .request(reqwest::Method::PUT, &url, Some(&body))
            .await?
        {
            (200, _) => Ok(()),
            (s, problem) => Err(unavailable(format!(
                "registering the app: HTTP {s}: {}",
                problem["detail"].as_str().unwrap_or("")
            ))),
        }
    }

    /// Every registered app's manifest.
    pub async fn apps(&self) -> Result<Vec<sync_contract::AppManifest>, LoadError> {
        self.get_json("/api/apps").await
    }

    /// The manifest `app` registered, if it did.
    pub async fn manifest(
        &self,
        app: &str,
    ) -> Result<Option<sync_contract::AppManifest>, LoadError> {
        Ok(self.apps().await?.into_iter().find(|a| a.name == app))
    }

    /// Consume `quantity` operations directly at the wrapper, which prices them (idempotent by
    /// `operation_id`). `Ok(Err(_))` is a refusal: insufficient credits (nothing charged) or an
    /// operation without a price; the receipt is the ledger entry.
    pub async fn consume(
        &self,
        tenant_id: Uuid,
        application: &str,
        operation_code: &str,
        operation_id: &str,
        quantity: i64,
    ) -> Result<Result<Value, Refusal>, LoadError> {
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

    /// [`consume`](Self::consume), recording the user the app acted for (usage by user).
    pub async fn consume_as(
        &self,
        user: Option<Uuid>,
        tenant_id: Uuid,
        application: &str,
        operation_code: &str,
        operation_id: &str,
        quantity: i64,
    ) -> Result<Result<Value, Refusal>, LoadError> {
        let url = "/api/credits/consume";
        let mut body = serde_json::json!({
            "tenantId": tenant_id, "application": application, "quantity": quantity,
            "operationCode": operation_code, "operationId": operation_id,
        });
        if let Some(user) = user {
            body["userId"] = serde_json::json!(user);
        }
        let (status, reply) = self
            .request(reqwest::Method::POST, url, Some(&body))
            .await?;
        match status {
            200 => Ok(Ok(reply)),
            402 => Ok(Err(Refusal::Insufficient {
                balance: reply["balance"].as_i64().unwrap_or(0),
            })),
            400 | 422 => Ok(Err(Refusal::Refused {
                field: reply["field"].as_str().unwrap_or("body").to_owned(),
                detail: reply["detail"].as_str().unwrap_or("refused").to_owned(),
            })),
            404 => Err(LoadError::NotFound),
            s => Err(unavailable(format!("consume: HTTP {s}"))),
        }
    }

    /// Lifecycle operation `operation_id` as the wrapper recorded it: what proves a command
    /// read from the lifecycle stream. [`LoadError::NotFound`] when the wrapper knows none.
    pub async fn operation(
        &self,
        operation_id: Uuid,
    ) -> Result<sync_contract::LifecycleOperation, LoadError> {
        self.get_json(&format!("/api/sync/operations/{operation_id}"))
            .await
    }

    /// Send this app's receipt for lifecycle operation `operation_id` (`body`: replica, status,
    /// reason, details). [`LoadError::NotFound`] when the wrapper knows no such operation.
    pub async fn receipt(&self, operation_id: Uuid, body: &Value) -> Result<(), LoadError> {
        let path = format!("/api/sync/operations/{operation_id}/receipt");
        match self
            .request(reqwest::Method::PUT, &path, Some(body))
            .await?
        {
            (204, _) => Ok(()),
            (404, _) => Err(LoadError::NotFound),
            (s, body) => Err(unavailable(format!("{path}: HTTP {s} {body}"))),
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, LoadError> {
        match self.request(reqwest::Method::GET, path, None).await? {
            (200, body) => serde_json::from_value(body).map_err(unavailable),
            (404, _) => Err(LoadError::NotFound),
            (s, _) => Err(unavailable(format!("{path}: HTTP {s}"))),
        }
    }

    /// One call with the service token: renewed once when the wrapper answers `401`; `401`
    /// again or `403` is [`LoadError::Unauthorized`], a transport failure
    /// [`LoadError::Unavailable`]. Any other status comes back with its JSON body (`null` when
    /// there is none) for the caller to interpret. `path` is the wrapper's (`/api/...`).
    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), LoadError> {
        self.send_body(method, path, body.map_or(Body::None, Body::Json))
            .await
    }

    /// Upload `bytes` (of `content_type`) to the wrapper's `path` with `PUT`; the status.
    pub async fn upload(
        &self,
        path: &str,
        content_type: &'static str,
        bytes: Vec<u8>,
    ) -> Result<u16, LoadError> {
        let body = Body::Raw(content_type, bytes);
        let (status, _) = self.send_body(reqwest::Method::PUT, path, body).await?;
        Ok(status)
    }

    async fn send_body(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Body<'_>,
    ) -> Result<(u16, Value), LoadError> {
        for refresh in [false, true] {
            let token = self.token(refresh).await?;
            let resp = self
                .wrappers
                .send(|base| {
                    let mut request = self
                        .http
                        .request(method.clone(), format!("{base}{path}"))
                        .bearer_auth(&token);
                    if let Some(traceparent) = crate::telemetry::current_traceparent() {
                        request = request.header(crate::telemetry::TRACEPARENT, traceparent);
                    }
                    match &body {
                        Body::Json(json) => request.json(json),
                        Body::Raw(content_type, bytes) => request
                            .header(reqwest::header::CONTENT_TYPE, *content_type)
                            .body(bytes.clone()),
                        Body::None => request,
                    }
                })
                .await
                .map_err(unavailable)?;
            let status = resp.status().as_u16();
            match status {
                401 if !refresh => continue,
                401 => return Err(LoadError::Unauthorized),
                _ => {}
            }
            let bytes = resp.bytes().await.map_err(unavailable)?;
            let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if status == 403 {
                // The wrapper names the feature when the tenant's plan lacks the app's.
                return Err(match value["feature"].as_str() {
                    Some(feature) => LoadError::FeatureMissing(feature.to_owned()),
                    None => LoadError::Unauthorized,
                });
            }
            return Ok((status, value));
        }
        Err(LoadError::Unauthorized)
    }
}

/// What a request to the wrapper carries.
enum Body<'a> {
    None,
    Json(&'a Value),
    Raw(&'static str, Vec<u8>),
}
