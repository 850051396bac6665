//! Services as real processes (`replica <service>`, configured by environment as the shipped
//! binaries are), for tests that kill one or read what a whole process exports.

use std::{process::Stdio, time::Duration};

use anyhow::Context;
use reqwest::StatusCode;
use tokio::process::{Child, Command};

use crate::{
    eventually, free_port, mongodb_url, redis_url,
    wrapper_app::{PASSWORD, ROOT_EMAIL, TEST_KEK},
};

/// One variable of a replica's environment.
pub type Var = (&'static str, String);

/// What every service of one hub shares: Redis, the namespace and the partition count.
pub fn common_env(namespace: &str, partitions: u32) -> Vec<Var> {
    vec![
        ("REDIS_URL", redis_url()),
        ("TSYNC_NAMESPACE", namespace.to_owned()),
        ("TSYNC_PARTITIONS", partitions.to_string()),
    ]
}

/// A wrapper on `database_url`, bootstrapping the suite's platform admin.
pub fn wrapper_env(common: &[Var], database_url: &str) -> Vec<Var> {
    let mut env = common.to_vec();
    env.extend([
        ("DATABASE_URL", database_url.to_owned()),
        ("WRAPPER_KEY_ENCRYPTION_KEYS", TEST_KEK.to_owned()),
        ("WRAPPER_COOKIE_SECURE", "false".to_owned()),
        ("WRAPPER_COOKIE_DOMAIN", ".yourapp.test".to_owned()),
        ("WRAPPER_BOOTSTRAP_ADMIN_EMAIL", ROOT_EMAIL.to_owned()),
        ("WRAPPER_BOOTSTRAP_ADMIN_PASSWORD", PASSWORD.to_owned()),
    ]);
    env
}

/// An app storing into MongoDB database `mongo_db`, told of `wrapper_urls` (comma list).
pub fn app_env(common: &[Var], mongo_db: &str, wrapper_urls: &str, secret: &str) -> Vec<Var> {
    let mut env = common.to_vec();
    env.extend([
        ("MONGODB_URL", mongodb_url()),
        ("APP_MONGO_DB", mongo_db.to_owned()),
        ("WRAPPER_URL", wrapper_urls.to_owned()),
        ("APP_SERVICE_SECRET", secret.to_owned()),
    ]);
    env
}

/// A service process (`replica <service>`), SIGKILLed when dropped.
pub struct Replica {
    /// Its loopback port.
    pub port: u16,
    /// The process.
    pub child: Child,
}

impl Replica {
    /// Start `service` with `env` and wait (60 s at most) until it answers `/health`. `exe` is
    /// the `replica` binary (`env!("CARGO_BIN_EXE_replica")`, known to the test crate only).
    pub async fn start(exe: &str, service: &str, env: &[(&str, String)]) -> anyhow::Result<Self> {
        let port = free_port()?;
        let listen = format!("{}_LISTEN", service.to_uppercase());
        eprintln!("{service} on {port}");
        let child = Command::new(exe)
            .arg(service)
            .env(listen, format!("127.0.0.1:{port}"))
            // Loads and full syncs are what a failure here needs to show (in the test's output).
            .env(
                "RUST_LOG",
                "warn,sync_sdk::loader=info,sync_sdk::fullsync=info",
            )
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let replica = Self { port, child };
        let url = format!("{}/health", replica.url());
        eventually(Duration::from_secs(60), || {
            let url = url.clone();
            async move {
                reqwest::get(url)
                    .await
                    .is_ok_and(|r| r.status() == StatusCode::OK)
            }
        })
        .await
        .with_context(|| format!("{service} on {port} did not answer /health"))?;
        Ok(replica)
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}
