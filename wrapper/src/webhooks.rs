//! Webhooks for tenant systems outside the suite.
//!
//! * **From the streams.** The consumer group `webhooks` reads every partition's event stream
//!   like any app; an event of a tenant with endpoints subscribed to its type becomes one
//!   delivery per endpoint (`unique (endpoint, event)`: an entry read twice adds nothing), and
//!   the entry is acknowledged after that insert. Replicas share the group; a replica re-reads
//!   the pending entries when it starts and after a failure.
//! * **Signed** as Standard Webhooks do: headers `webhook-id` (the delivery), `webhook-timestamp`
//!   (Unix seconds) and `webhook-signature` = `v1,` + base64 HMAC-SHA256 of
//!   `{id}.{timestamp}.{body}` under the endpoint's secret (`whsec_` + base64 key). The body is
//!   the event's envelope, byte for byte as on the stream.
//! * **Retried** with exponential backoff (with jitter) until a 2xx, at most
//!   `WRAPPER_WEBHOOK_MAX_ATTEMPTS` times; then the delivery is `dead` (the dead-letter state),
//!   visible with every attempt, and can be sent again on request. A sender holds a delivery
//!   for the time of one post (`locked_until`, `for update skip locked`): replicas never post
//!   it twice at once.
//! * **Secrets sealed at rest** under the key-encryption key that seals the token signing keys
//!   (`WRAPPER_KEY_ENCRYPTION_KEYS`), bound to their endpoint; sealed (or re-sealed under a new
//!   KEK) at start-up like the signing keys, so the database alone cannot forge a delivery.
//! * **Only public HTTPS endpoints** (no redirects followed; a name resolving to a loopback,
//!   private or link-local address is refused at connect time, so DNS cannot point a webhook
//!   at the inside), except the hosts of `WRAPPER_WEBHOOK_INSECURE_HOSTS` (development, tests).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use fred::prelude::*;
use sqlx::PgPool;
use sync_contract::StreamKeys;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    config::Settings,
    error::ApiError,
    identity::keys::Keks,
    public_net::{self, is_public},
};

/// The consumer group of the webhook deliveries on the event streams.
pub const GROUP: &str = crate::relay::WEBHOOKS_GROUP;

/// A new signing secret: `whsec_` and 32 random bytes in base64.
pub fn new_secret() -> anyhow::Result<String> {
    use ring::rand::SecureRandom;
    let mut key = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| anyhow::anyhow!("no randomness"))?;
    Ok(format!("whsec_{}", STANDARD.encode(key)))
}

/// The associated data a webhook secret is sealed with: it binds the sealed secret to its
/// endpoint, so it cannot be moved to another row.
fn secret_label(endpoint: Uuid) -> String {
    format!("webhook secret {endpoint}")
}

/// Seal `endpoint`'s signing secret under the current key-encryption key: the KEK's id and the
/// sealed bytes.
pub fn seal_secret(keks: &Keks, endpoint: Uuid, secret: &str) -> anyhow::Result<(String, Vec<u8>)> {
    keks.seal(&secret_label(endpoint), secret.as_bytes())
}

/// `endpoint`'s signing secret, opened (or, from a row written before sealing, as it is).
fn open_secret(
    keks: &Keks,
    endpoint: Uuid,
    clear: Option<String>,
    sealed: Option<Vec<u8>>,
    kek: Option<String>,
) -> anyhow::Result<String> {
    match (sealed, kek, clear) {
        (Some(sealed), Some(kek), _) => Ok(String::from_utf8(keks.open(
            &kek,
            &secret_label(endpoint),
            &sealed,
        )?)?),
        (_, _, Some(clear)) => Ok(clear),
        _ => anyhow::bail!("webhook endpoint {endpoint} has no secret"),
    }
}

/// Seal every webhook secret still in the clear and re-seal those under another KEK than the
/// current one, in one transaction (at start-up, beside the signing keys). A secret that does not
/// open stops the start, as a signing key does. Returns how many rows changed.
pub async fn seal_all_secrets(db: &PgPool, keks: &Keks) -> anyhow::Result<usize> {
    let mut tx = db.begin().await?;
    type Row = (Uuid, Option<String>, Option<Vec<u8>>, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "select id, secret, secret_sealed, kek_id from webhook_endpoints
         where secret is not null or kek_id is distinct from $1 order by id for update",
    )
    .bind(keks.current())
    .fetch_all(&mut *tx)
    .await?;
    let changed = rows.len();
    for (id, clear, sealed, kek) in rows {
        let secret = open_secret(keks, id, clear, sealed, kek)?;
        let (kek, sealed) = seal_secret(keks, id, &secret)?;
        sqlx::query(
            "update webhook_endpoints set secret = null, secret_sealed = $2, kek_id = $3
             where id = $1",
        )
        .bind(id)
        .bind(sealed)
        .bind(kek)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    if changed > 0 {
        tracing::info!(changed, kek = %keks.current(), "webhook secrets sealed under the current key-encryption key");
    }
    Ok(changed)
}

/// The `webhook-signature` of `body` sent as delivery `id` at `timestamp` (Unix seconds).
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> anyhow::Result<String> {
    let key = STANDARD.decode(secret.trim_start_matches("whsec_"))?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let tag = ring::hmac::sign(&key, format!("{id}.{timestamp}.{body}").as_bytes());
    Ok(format!("v1,{}", STANDARD.encode(tag.as_ref())))
}

/// Check a webhook URL: HTTPS (plain HTTP only for an insecure host), a host, no credentials,
/// and no IP literal outside the public internet (unless an insecure host).
pub fn check_url(text: &str, insecure_hosts: &[String]) -> Result<reqwest::Url, ApiError> {
    let bad = |why: &str| ApiError::invalid("url", why.to_owned());
    if text.len() > 2000 {
        return Err(bad("must be at most 2000 characters"));
    }
    let url = reqwest::Url::parse(text).map_err(|e| bad(&format!("not a URL: {e}")))?;
    let host = url.host_str().ok_or_else(|| bad("needs a host"))?;
    let insecure = insecure_hosts.iter().any(|h| h.eq_ignore_ascii_case(host));
    match url.scheme() {
        "https" => {}
        "http" if insecure => {}
        _ => return Err(bad("must be https")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not carry credentials"));
    }
    let literal = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>();
    if let Ok(ip) = literal
        && !insecure
        && !is_public(ip)
    {
        return Err(bad("must be a public address"));
    }
    Ok(url)
}

/// Turns events into deliveries and sends them.
pub struct Webhooks {
    db: PgPool,
    keks: Keks,
    redis: Client,
    keys: StreamKeys,
    http: reqwest::Client,
    insecure: Arc<Vec<String>>,
    max_attempts: i32,
    backoff: Duration,
}

impl Webhooks {
    /// Webhooks of the wrapper configured by `settings`.
    pub fn new(
        db: PgPool,
        keks: Keks,
        redis: Client,
        keys: StreamKeys,
        settings: &Settings,
    ) -> anyhow::Result<Arc<Self>> {
        let insecure = Arc::new(settings.webhook_insecure_hosts.clone());
        let http = public_net::public_client(
            insecure.clone(),
            Duration::from_millis(settings.webhook_timeout_ms),
        )
        .user_agent("tenantsync-webhooks/1")
        .build()?;
        Ok(Arc::new(Self {
            db,
            keks,
            redis,
            keys,
            http,
            insecure,
            max_attempts: settings.webhook_max_attempts.max(1),
            backoff: Duration::from_millis(settings.webhook_backoff_ms.max(1)),
        }))
    }

    /// Read every partition and send deliveries until cancelled.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        for partition in 0..self.keys.partitions() {
            tasks.spawn(self.clone().partition_loop(partition, cancel.clone()));
        }
        tasks.spawn(self.clone().send_loop(cancel.clone()));
        while tasks.join_next().await.is_some() {}
    }

    async fn partition_loop(self: Arc<Self>, partition: u32, cancel: CancellationToken) {
        let stream = self.keys.events(partition);
        let reader = self.redis.clone_new();
        let _connection = reader.connect();
        let mut failures = 0u32;
        // Pending entries first: those a replica read and did not acknowledge.
        let mut pending_first = true;
        while !cancel.is_cancelled() {
            let batch = self.read(&reader, &stream, pending_first).await;
            let outcome = match batch {
                Ok(entries) if entries.is_empty() && pending_first => {
                    pending_first = false;
                    Ok(())
                }
                Ok(entries) => self.enqueue(&stream, entries).await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    pending_first = true;
                    tracing::warn!(%stream, error = %e, "webhooks: reading events failed");
                    tokio::select! {
                        _ = cancel.cancelled() => {},
                        _ = tokio::time::sleep(Duration::from_millis(100 * u64::from(failures.min(50)))) => {},
                    }
                }
            }
        }
        let _ = reader.quit().await;
    }

    async fn read(
        &self,
        reader: &Client,
        stream: &str,
        pending: bool,
    ) -> anyhow::Result<Vec<(String, HashMap<String, String>)>> {
        let created: Result<(), Error> = self.redis.xgroup_create(stream, GROUP, "0", true).await;
        if let Err(e) = created
            && !e.details().contains("BUSYGROUP")
        {
            return Err(e.into());
        }
        Ok(if pending {
            sync_contract::streams::read_group_pending(reader, GROUP, "wrapper", stream, 100)
                .await?
        } else {
            sync_contract::streams::read_group(
                reader,
                GROUP,
                "wrapper",
                stream,
                100,
                Some(Duration::from_millis(500)),
            )
            .await?
        })
    }

    /// Record the deliveries of `entries` and acknowledge them: one query for the endpoints of
    /// the batch's tenants, then one insert per subscribed endpoint and event.
    async fn enqueue(
        &self,
        stream: &str,
        entries: Vec<(String, HashMap<String, String>)>,
    ) -> anyhow::Result<()> {
        let tenant_of =
            |f: &HashMap<String, String>| f.get("tenantId").and_then(|t| t.parse::<Uuid>().ok());
        let mut tenants: Vec<Uuid> = entries.iter().filter_map(|(_, f)| tenant_of(f)).collect();
        tenants.sort();
        tenants.dedup();
        let endpoints: Vec<(Uuid, Uuid, Vec<String>)> = sqlx::query_as(
            "select tenant_id, id, event_types from webhook_endpoints
             where active and tenant_id = any($1)",
        )
        .bind(&tenants)
        .fetch_all(&self.db)
        .await?;
        for (_, fields) in &entries {
            let event_type = fields.get("eventType");
            let envelope = fields.get(sync_contract::FIELD_ENVELOPE);
            if let (Some(tenant), Some(event_type), Some(envelope)) =
                (tenant_of(fields), event_type, envelope)
            {
                let subscribed: Vec<Uuid> = endpoints
                    .iter()
                    .filter(|(t, _, types)| *t == tenant && types.contains(event_type))
                    .map(|e| e.1)
                    .collect();
                self.record(tenant, event_type, envelope, &subscribed)
                    .await?;
            }
        }
        let ids: Vec<&str> = entries.iter().map(|(id, _)| id.as_str()).collect();
        if !ids.is_empty() {
            let _: u64 = self.redis.xack(stream, GROUP, ids).await?;
        }
        Ok(())
    }

    async fn record(
        &self,
        tenant: Uuid,
        event_type: &str,
        envelope: &str,
        subscribed: &[Uuid],
    ) -> anyhow::Result<()> {
        if subscribed.is_empty() {
            return Ok(());
        }
        // An entry whose envelope names no event id cannot be delivered once: it is skipped
        // (and acknowledged), never retried, so it cannot hold the partition back.
        let event_id = serde_json::from_str::<serde_json::Value>(envelope)
            .ok()
            .and_then(|v| v["eventId"].as_str().and_then(|e| e.parse::<Uuid>().ok()));
        let Some(event_id) = event_id else {
            tracing::warn!(%tenant, event_type, "webhooks: an entry without a readable event id, skipped");
            return Ok(());
        };
        for endpoint in subscribed {
            sqlx::query(
                "insert into webhook_deliveries (id, endpoint_id, tenant_id, event_id, event_type, body)
                 values ($1, $2, $3, $4, $5, $6) on conflict (endpoint_id, event_id) do nothing",
            )
            .bind(Uuid::now_v7())
            .bind(endpoint)
            .bind(tenant)
            .bind(event_id)
            .bind(event_type)
            .bind(envelope)
            .execute(&self.db)
            .await?;
        }
        Ok(())
    }

    async fn send_loop(self: Arc<Self>, cancel: CancellationToken) {
        while !cancel.is_cancelled() {
            let sent = match self.send_due().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "webhooks: sending failed");
                    0
                }
            };
            if sent == 0 {
                tokio::select! {
                    _ = cancel.cancelled() => {},
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {},
                }
            }
        }
    }

    /// Post every delivery that is due (up to 32, 8 at a time); how many were attempted.
    pub async fn send_due(&self) -> anyhow::Result<usize> {
        type Due = (
            Uuid,
            String,
            Uuid,
            Option<String>,
            Option<Vec<u8>>,
            Option<String>,
            String,
            i32,
        );
        let due: Vec<Due> = sqlx::query_as(
            "update webhook_deliveries d set locked_until = now() + interval '1 minute'
             from webhook_endpoints e
             where d.endpoint_id = e.id and d.id in (
                 select id from webhook_deliveries
                 where status = 'pending' and next_attempt_at <= now()
                   and (locked_until is null or locked_until < now())
                 order by next_attempt_at limit 32 for update skip locked)
             returning d.id, e.url, e.id, e.secret, e.secret_sealed, e.kek_id, d.body, d.attempts",
        )
        .fetch_all(&self.db)
        .await?;
        let count = due.len();
        futures_util::stream::iter(due)
            .for_each_concurrent(8, |(id, url, endpoint, clear, sealed, kek, body, attempts)| async move {
                // Sealed at start-up under a configured key, so this only fails for a row
                // altered since: the delivery waits (locked for a minute) and is logged.
                let secret = match open_secret(&self.keks, endpoint, clear, sealed, kek) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(delivery = %id, error = %e, "webhooks: the endpoint's secret does not open");
                        return;
                    }
                };
                if let Err(e) = self.attempt(id, &url, &secret, body, attempts + 1).await {
                    tracing::warn!(delivery = %id, error = %e, "webhooks: could not record an attempt");
                }
            })
            .await;
        Ok(count)
    }

    async fn attempt(
        &self,
        id: Uuid,
        url: &str,
        secret: &str,
        body: String,
        attempt: i32,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let result = self.post(id, url, secret, body).await;
        let took = started.elapsed().as_millis().min(i32::MAX as u128) as i32;
        let (code, error) = match &result {
            Ok(status) if status.is_success() => (Some(i32::from(status.as_u16())), None),
            Ok(status) => (
                Some(i32::from(status.as_u16())),
                Some(format!("HTTP {status}")),
            ),
            Err(e) => (None, Some(e.to_string())),
        };
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "insert into webhook_attempts (delivery_id, attempt, status_code, error, duration_ms)
             values ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(attempt)
        .bind(code)
        .bind(&error)
        .bind(took)
        .execute(&mut *tx)
        .await?;
        let outcome = match &error {
            None => "delivered",
            Some(_) if attempt >= self.max_attempts => "dead",
            Some(_) => "retry",
        };
        let delay = self.delay(attempt);
        sqlx::query(
            "update webhook_deliveries set attempts = $2, last_error = $3, locked_until = null,
                 status = case $4 when 'retry' then 'pending' else $4 end,
                 delivered_at = case $4 when 'delivered' then now() end,
                 next_attempt_at = now() + $5 * interval '1 millisecond'
             where id = $1",
        )
        .bind(id)
        .bind(attempt)
        .bind(&error)
        .bind(outcome)
        .bind(delay.as_millis() as f64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        metrics::counter!("tsync_wrapper_webhook_attempts_total", "outcome" => outcome)
            .increment(1);
        Ok(())
    }

    /// The wait before attempt `attempt + 1`: the backoff doubled per attempt, at most an
    /// hour, less up to a fifth at random (retries of many deliveries do not stay in step).
    fn delay(&self, attempt: i32) -> Duration {
        let doubled = self
            .backoff
            .saturating_mul(1u32 << (attempt - 1).clamp(0, 20) as u32)
            .min(Duration::from_secs(3600));
        let jitter = rand::random::<f64>() * 0.2;
        doubled.mul_f64(1.0 - jitter)
    }

    async fn post(
        &self,
        id: Uuid,
        url: &str,
        secret: &str,
        body: String,
    ) -> anyhow::Result<reqwest::StatusCode> {
        // The URL was checked when registered; again here, as the rules may have tightened.
        let url = check_url(url, &self.insecure).map_err(|e| anyhow::anyhow!("{e}"))?;
        let timestamp = chrono::Utc::now().timestamp();
        let id = id.to_string();
        let signature = sign(secret, &id, timestamp, &body)?;
        let response = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{}", without_url(&e)))?;
        Ok(response.status())
    }
}

/// A request error's text without the URL (which the delivery shows already).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    match std::error::Error::source(e) {
        Some(source) => format!("{kind}: {source}"),
        None => kind.to_owned(),
    }
}

use futures_util::StreamExt as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_standard_webhooks_one() {
        // The example of the Standard Webhooks specification.
        let signature = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn only_public_https_endpoints_unless_the_host_is_insecure() {
        let none: Vec<String> = Vec::new();
        assert!(check_url("https://hooks.example.com/x", &none).is_ok());
        for bad in [
            "http://hooks.example.com/x",
            "https://127.0.0.1/x",
            "https://10.1.2.3/x",
            "https://169.254.169.254/latest",
            "https://[::1]/x",
            "https://[fd00::1]/x",
            "https://[::ffff:127.0.0.1]/x",
            "https://user:pw@hooks.example.com/",
            "ftp://hooks.example.com/",
            "not a url",
        ] {
            assert!(check_url(bad, &none).is_err(), "{bad}");
        }
        let local = vec!["127.0.0.1".to_owned()];
        assert!(check_url("http://127.0.0.1:8080/hook", &local).is_ok());
        for embedded in [
            "https://[::127.0.0.1]/x",
            "https://[64:ff9b::a9fe:a9fe]/latest",
            "https://[2002:a00:1::]/x",
            "https://[fec0::1]/x",
        ] {
            assert!(check_url(embedded, &none).is_err(), "{embedded}");
        }
    }
}
