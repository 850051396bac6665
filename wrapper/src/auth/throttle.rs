//! Brute-force protection of sign-in, in the wrapper itself (the edge also limits requests per
//! client address, but the defence must not live only there).
//!
//! Failures are counted per account (tenant + email, whether or not the account exists, so the
//! answer tells nothing) and per client address, over a 15-minute window. Past
//! `WRAPPER_SIGN_IN_ACCOUNT_FAILURES` (5) for an account or `WRAPPER_SIGN_IN_SOURCE_FAILURES`
//! (20) for an address, the next attempt must wait 1 s, then 2, 4, … up to
//! `WRAPPER_SIGN_IN_MAX_LOCK_SECS` (15 min): an attempt inside the wait is refused with 429 and
//! `Retry-After` without the password being checked. The start of each wait is audited
//! (`login_throttled`) and every refused attempt counted.
//!
//! Every attempt counts as a failure *before* the password is checked, under a row lock, so a
//! burst of concurrent guesses cannot all slip in before the first failure is written; a
//! success then clears the account's count and returns the address's one.
//!
//! The price of per-account locking: anyone can make a known account wait (never longer than
//! the maximum), which is why the wait grows from one second instead of locking at once.

use std::net::IpAddr;

use serde_json::json;
use uuid::Uuid;

use crate::{
    audit,
    context::Ctx,
    error::{ApiError, ApiResult},
    state::AppState,
};

/// The counters one sign-in attempt is charged to.
#[derive(Debug, Clone)]
pub struct Attempt {
    account: String,
    source: String,
}

impl Attempt {
    /// Charge the attempt at `email` of `tenant_id` from `client`: refused with 429 when either
    /// counter is inside its wait, else counted as a failure until [`succeeded`](Self::succeeded).
    pub async fn begin(
        state: &AppState,
        ctx: &Ctx,
        tenant_id: Option<Uuid>,
        email: &str,
        client: Option<IpAddr>,
    ) -> ApiResult<Self> {
        let scope = tenant_id.map_or_else(|| "platform".to_owned(), |t| t.to_string());
        let attempt = Self {
            account: format!("account:{scope}:{email}"),
            source: format!(
                "source:{}",
                client.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
            ),
        };
        let settings = &state.settings;
        let limits = [
            (&attempt.account, settings.sign_in_account_failures),
            (&attempt.source, settings.sign_in_source_failures),
        ];
        // Counters of guesses at made-up accounts would pile up: about one attempt in a hundred
        // drops rows whose window and wait are over. It skips rows an attempt holds (never
        // waits for one), so it cannot deadlock with attempts that lock theirs in key order.
        if rand::random::<u8>() < 3 {
            sqlx::query(
                "delete from sign_in_failures where key in (
                   select key from sign_in_failures
                   where last_failure < now() - interval '15 minutes'
                     and (locked_until is null or locked_until < now())
                   limit 1000 for update skip locked)",
            )
            .execute(&state.db)
            .await?;
        }
        let mut tx = state.db.begin().await?;
        let mut keys: Vec<&String> = limits.iter().map(|(k, _)| *k).collect();
        keys.sort();
        // Create or lock each row in one statement, in one order: a row cannot vanish between
        // an insert that found it and the lock (a success deletes the account's row; before,
        // that left the later update with no row: a 404), and two attempts always lock in the
        // same order (no deadlock).
        let mut waits: Vec<Option<i64>> = Vec::with_capacity(keys.len());
        for key in &keys {
            let wait: Option<i64> = sqlx::query_scalar(
                "insert into sign_in_failures (key) values ($1)
                 on conflict (key) do update set key = excluded.key
                 returning ceil(extract(epoch from locked_until - now()))::bigint",
            )
            .bind(key)
            .fetch_one(&mut *tx)
            .await?;
            waits.push(wait);
        }
        let wait = waits.iter().filter_map(|w| *w).filter(|w| *w > 0).max();
        if let Some(retry_after) = wait {
            tx.commit().await?;
            metrics::counter!("tsync_wrapper_logins_total", "outcome" => "throttled").increment(1);
            return Err(ApiError::TooManyRequests {
                retry_after: retry_after as u64,
            });
        }
        let mut started = Vec::new();
        for (key, limit) in limits {
            let failures: i32 = sqlx::query_scalar(
                "update sign_in_failures set
                    failures = case when last_failure < now() - interval '15 minutes' then 1
                                    else failures + 1 end,
                    last_failure = now()
                 where key = $1
                 returning failures",
            )
            .bind(key)
            .fetch_one(&mut *tx)
            .await?;
            if failures >= limit {
                let secs = 2_i64
                    .saturating_pow((failures - limit).clamp(0, 30) as u32)
                    .min(settings.sign_in_max_lock_secs);
                sqlx::query(
                    "update sign_in_failures set locked_until = now() + make_interval(secs => $2)
                     where key = $1",
                )
                .bind(key)
                .bind(secs as f64)
                .execute(&mut *tx)
                .await?;
                started.push((key.clone(), failures, secs));
            }
        }
        tx.commit().await?;
        for (key, failures, secs) in started {
            let kind = if key.starts_with("account:") {
                "account"
            } else {
                "source"
            };
            let entry = audit::Entry {
                tenant_id,
                actor_id: None,
                action: "login_throttled",
                target: Some(if kind == "account" {
                    email.to_owned()
                } else {
                    attempt.source.trim_start_matches("source:").to_owned()
                }),
                outcome: "denied",
                details: json!({"counter": kind, "failures": failures, "waitSecs": secs}),
            };
            audit::record(&state.db, ctx, entry).await;
        }
        Ok(attempt)
    }

    /// The password matched: forget the account's failures and take this attempt back from the
    /// address's count.
    pub async fn succeeded(self, state: &AppState) -> ApiResult<()> {
        sqlx::query("delete from sign_in_failures where key = $1")
            .bind(&self.account)
            .execute(&state.db)
            .await?;
        sqlx::query(
            "update sign_in_failures set failures = greatest(failures - 1, 0) where key = $1",
        )
        .bind(&self.source)
        .execute(&state.db)
        .await?;
        Ok(())
    }
}
