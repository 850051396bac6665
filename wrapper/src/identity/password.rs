//! Password hashing with argon2id, off the async runtime (`spawn_blocking`), under a bound.
//!
//! One argon2id hash with the default parameters holds 19 MiB for tens of milliseconds of CPU.
//! Unbounded, 200 concurrent sign-ins filled the blocking pool with 200 hashes and the process
//! grew from 30 MB to 459 MB (and kept it: the allocator does not give it back). [`Hasher`]
//! runs at most `WRAPPER_PASSWORD_HASH_CONCURRENCY` hashes at once; a caller waits for a slot
//! at most `WRAPPER_PASSWORD_HASH_WAIT_MS` and is then answered [`Busy`] (503 with
//! `Retry-After`), so a flood costs queueing, not memory, and nobody waits without bound.

use std::{sync::Arc, time::Duration};

use argon2::{
    Argon2, PasswordHash, PasswordHasher, PasswordVerifier,
    password_hash::{SaltString, rand_core::OsRng},
};
use tokio::sync::Semaphore;

/// Every hashing slot stayed busy for the whole wait: try again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("every password-hashing slot is busy")]
pub struct Busy;

/// The bounded password hasher (cheap to clone; clones share the slots).
#[derive(Debug, Clone)]
pub struct Hasher {
    slots: Arc<Semaphore>,
    wait: Duration,
}

impl Hasher {
    /// At most `concurrency` hashes at once (0: one per CPU); a caller waits up to `wait`.
    pub fn new(concurrency: usize, wait: Duration) -> Self {
        let concurrency = match concurrency {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        Self {
            slots: Arc::new(Semaphore::new(concurrency)),
            wait,
        }
    }

    /// Run `work` on the blocking pool once a slot is free.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        let permit = match tokio::time::timeout(self.wait, self.slots.clone().acquire_owned()).await
        {
            Ok(Ok(permit)) => permit,
            _ => {
                metrics::counter!("tsync_wrapper_password_hash_busy_total").increment(1);
                return Err(Busy);
            }
        };
        let done = tokio::task::spawn_blocking(move || {
            let out = work();
            drop(permit);
            out
        })
        .await;
        // A panicking hash is a bug, not a busy server; it is reported as busy rather than
        // taking the request down (the panic itself is logged by the runtime).
        done.map_err(|_| Busy)
    }

    /// Hash `password` (argon2id, default parameters, random salt).
    pub async fn hash(&self, password: String) -> anyhow::Result<Result<String, Busy>> {
        match self.run(move || hash_now(&password)).await {
            Ok(hashed) => hashed.map(Ok),
            Err(busy) => Ok(Err(busy)),
        }
    }

    /// Whether `password` matches `stored`. With no stored hash (unknown user, or a user
    /// without a local password) a dummy hash is still checked, so the answer takes as long
    /// either way.
    pub async fn verify(&self, password: String, stored: Option<String>) -> Result<bool, Busy> {
        self.run(move || verify_now(&password, stored)).await
    }
}

/// Hash `password` now, on this thread (start-up and the command line, outside any request).
pub fn hash_now(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))
}

fn verify_now(password: &str, stored: Option<String>) -> bool {
    let (stored, known) = match stored {
        Some(s) => (s, true),
        None => (dummy_hash(), false),
    };
    let ok = PasswordHash::new(&stored)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false);
    ok && known
}

fn dummy_hash() -> String {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY
        .get_or_init(|| hash_now("dummy password for timing").unwrap_or_default())
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_hasher_answers_busy_after_its_wait() {
        let hasher = Hasher::new(1, Duration::from_millis(50));
        let held = hasher.slots.clone().acquire_owned().await.unwrap();
        assert!(hasher.verify("x".into(), None).await.is_err());
        drop(held);
        let stored = hash_now("secret").unwrap();
        assert_eq!(hasher.verify("secret".into(), Some(stored)).await, Ok(true));
    }
}
