//! A real OpenID Connect provider for the tests: `tests/fixtures/oidc/provider.mjs`
//! (panva/oidc-provider from npm, run with node; `scripts/services` installs it).

use std::{path::PathBuf, process::Stdio, time::Duration};

use anyhow::Context;
use tokio::process::{Child, Command};

use crate::{eventually, free_port};

/// A running provider; killed when dropped.
pub struct OidcProvider {
    /// Its issuer URL (`http://127.0.0.1:<port>`).
    pub issuer: String,
    /// The client registered for the wrapper.
    pub client_id: String,
    /// That client's secret.
    pub client_secret: String,
    _child: Child,
}

impl OidcProvider {
    /// Start the provider with one confidential client allowed to return to `redirect_uris`.
    pub async fn start(redirect_uris: &[String]) -> anyhow::Result<Self> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/oidc");
        anyhow::ensure!(
            dir.join("node_modules/oidc-provider").exists(),
            "the OIDC fixture is not installed in {}; run scripts/services",
            dir.display()
        );
        let port = free_port()?;
        let client_secret = format!("fixture-secret-{}", uuid::Uuid::new_v4().simple());
        let node = std::env::var("NODE").unwrap_or_else(|_| "node".into());
        let child = Command::new(&node)
            .arg("provider.mjs")
            .current_dir(&dir)
            .env("PORT", port.to_string())
            .env("CLIENT_ID", "tenantsync")
            .env("CLIENT_SECRET", &client_secret)
            .env("REDIRECT_URIS", redirect_uris.join(","))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {node} (run scripts/services)"))?;
        let issuer = format!("http://127.0.0.1:{port}");
        let discovery = format!("{issuer}/.well-known/openid-configuration");
        let http = reqwest::Client::new();
        eventually(Duration::from_secs(20), || {
            let req = http.get(&discovery).send();
            async move { req.await.is_ok_and(|r| r.status().is_success()) }
        })
        .await
        .context("the OIDC provider did not serve its discovery document")?;
        Ok(Self {
            issuer,
            client_id: "tenantsync".into(),
            client_secret,
            _child: child,
        })
    }

    /// The wrapper's `WRAPPER_OIDC_PROVIDERS` entry for this provider.
    pub fn wrapper_config(&self, id: &str, policy: &str) -> serde_json::Value {
        serde_json::json!({
            "id": id, "displayName": "Fixture ID", "issuer": self.issuer,
            "clientId": self.client_id, "clientSecret": self.client_secret, "policy": policy,
        })
    }
}
