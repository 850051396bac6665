//! Password hashing with argon2id, off the async runtime, under a bound.
//!
//! One argon2id hash with the default parameters holds 19 MiB for tens of milliseconds of CPU.
//! Unbounded, 200 concurrent sign-ins put 200 hashes on the blocking pool at once, and the
//! process kept what the allocator had handed out (BENCHMARKS.md: from 43 MiB to 3.3 GiB after
//! one round, 15 GiB after five). [`Hasher`] admits at most `WRAPPER_PASSWORD_HASH_CONCURRENCY`
//! hashes at once; a caller waits for a slot at most `WRAPPER_PASSWORD_HASH_WAIT_MS` and is
//! then answered [`Busy`] (503 with `Retry-After`), so a flood costs queueing, not memory, and
//! nobody waits without bound. The hashes run on that many threads of the hasher's own, not on
//! the runtime's blocking pool: the allocator keeps the freed 19 MiB of a hash in the arena of
//! the thread that ran it, so the fewer threads ever hash, the less the process keeps (with the
//! blocking pool's rotating threads a bound of two still kept about 430 MiB).

use std::{sync::Arc, time::Duration};

use std::cell::RefCell;

use argon2::{
    Algorithm, Argon2, Block, Params, PasswordHash, Version,
    password_hash::{Output, ParamsString, SaltString, rand_core::OsRng},
};
use tokio::sync::Semaphore;

/// Every hashing slot stayed busy for the whole wait: try again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("every password-hashing slot is busy")]
pub struct Busy;

/// A hashing job for the hasher's threads.
type Job = Box<dyn FnOnce() + Send>;

/// The bounded password hasher (cheap to clone; clones share the slots and the threads, which
/// end when the last clone is dropped).
#[derive(Debug, Clone)]
pub struct Hasher {
    slots: Arc<Semaphore>,
    wait: Duration,
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Hasher {
    /// At most `concurrency` hashes at once (0: one per CPU), on as many threads of its own; a
    /// caller waits up to `wait`.
    pub fn new(concurrency: usize, wait: Duration) -> Self {
        let concurrency = match concurrency {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for i in 0..concurrency {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("password-hash-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only to take the next job, not while it runs.
                        let next = queue.lock().map(|q| q.recv());
                        match next {
                            // A panicking job drops its answer (the caller gets Busy) and
                            // leaves the thread serving the next one.
                            Ok(Ok(job)) => {
                                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                            }
                            _ => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a password-hashing thread");
            }
        }
        Self {
            slots: Arc::new(Semaphore::new(concurrency)),
            wait,
            jobs,
        }
    }

    /// Run `work` on a hashing thread once a slot is free.
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
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(work());
            drop(permit);
        });
        // No thread took it (none could be started) or the hash panicked: reported as busy
        // rather than taking the request down (a panic is logged by the thread's hook).
        self.jobs.send(job).map_err(|_| Busy)?;
        result.await.map_err(|_| Busy)
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

thread_local! {
    /// The argon2 working memory of this thread (19 MiB with the default parameters), kept from
    /// one hash to the next: allocating and freeing it per hash left the allocator holding
    /// hundreds of megabytes of freed, fragmented heap after a burst of sign-ins.
    static MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Argon2 of `password` and `salt` into `out` with `argon`'s parameters, in this thread's
/// kept working memory.
fn compute(
    argon: &Argon2<'_>,
    params: &Params,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), argon2::Error> {
    MEMORY.with(|memory| {
        let mut memory = memory.borrow_mut();
        let blocks = params.block_count();
        if memory.len() < blocks {
            memory.resize(blocks, Block::default());
        }
        argon.hash_password_into_with_memory(password, salt, out, &mut memory[..blocks])
    })
}

/// Hash `password` now, on this thread (argon2id, default parameters, random salt; start-up
/// and the command line, and the hasher's threads): the PHC string.
pub fn hash_now(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    let params = Params::default();
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt
        .decode_b64(&mut salt_buf)
        .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))?;
    let len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let output = Output::init_with(len, |out| {
        compute(&argon, &params, password.as_bytes(), salt_bytes, out)
            .map_err(|_| argon2::password_hash::Error::Crypto)
    })
    .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))?;
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params)
            .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(hash.to_string())
}

/// Whether `password` matches the PHC string `stored` (any argon2 variant, version and
/// parameters it names), compared in constant time.
fn matches(password: &str, stored: &str) -> Option<bool> {
    let hash = PasswordHash::new(stored).ok()?;
    let algorithm = Algorithm::try_from(hash.algorithm).ok()?;
    let version = match hash.version {
        Some(v) => Version::try_from(v).ok()?,
        None => Version::default(),
    };
    let params = Params::try_from(&hash).ok()?;
    let expected = hash.hash?;
    let mut salt_buf = [0u8; 64];
    let salt = hash.salt?.decode_b64(&mut salt_buf).ok()?;
    let argon = Argon2::new(algorithm, version, params.clone());
    let mut out = vec![0u8; expected.len()];
    compute(&argon, &params, password.as_bytes(), salt, &mut out).ok()?;
    Some(Output::new(&out).ok()? == expected)
}

/// Whether `password` matches `stored` now, on this thread (start-up and the command line); with
/// no stored hash a dummy one is checked, so the answer takes as long either way.
pub fn verify_now(password: &str, stored: Option<String>) -> bool {
    let (stored, known) = match stored {
        Some(s) => (s, true),
        None => (dummy_hash(), false),
    };
    matches(password, &stored).unwrap_or(false) && known
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
        assert_eq!(
            hasher.verify("secret".into(), Some(stored.clone())).await,
            Ok(true)
        );
        assert_eq!(
            hasher.verify("Secret".into(), Some(stored)).await,
            Ok(false)
        );
    }

    #[test]
    fn hashes_are_the_argon2_crates_phc_strings_both_ways() {
        use argon2::{PasswordHasher, PasswordVerifier};
        // Ours verifies with the crate's own verifier, and the crate's (as stored before the
        // kept working memory) with ours, including other parameters.
        let ours = hash_now("Correct-Horse-9").unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"Correct-Horse-9", &parsed)
                .is_ok()
        );
        let salt = SaltString::generate(&mut OsRng);
        let theirs = Argon2::default()
            .hash_password(b"Correct-Horse-9", &salt)
            .unwrap()
            .to_string();
        assert_eq!(matches("Correct-Horse-9", &theirs), Some(true));
        assert_eq!(matches("Correct-Horse-8", &theirs), Some(false));
        let small = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x10,
            Params::new(1024, 2, 1, Some(16)).unwrap(),
        )
        .hash_password(b"pw", &salt)
        .unwrap()
        .to_string();
        assert_eq!(matches("pw", &small), Some(true));
        assert!(!verify_now("pw", Some("not a hash".into())));
        assert!(!verify_now("pw", None));
    }
}
