//! OpenID Connect providers: their configuration (`WRAPPER_OIDC_PROVIDERS`), discovery
//! documents and signing keys (cached), and which tenants each is offered to. The sign-in flow
//! that uses them is `auth::oidc`.

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, jwk::Jwk};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::Mutex;

/// What to do with a provider's user who has no account in the tenant yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Only existing users (matched by verified email) may sign in.
    #[default]
    Existing,
    /// Create a user (no password, no roles) on first sign-in.
    Create,
}

/// One provider, as configured.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderConfig {
    /// Short id used in URLs (`[a-z0-9-]`), e.g. `corp`.
    pub id: String,
    /// Shown on the button ("Sign in with …"); defaults to the id.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Issuer URL; `{issuer}/.well-known/openid-configuration` is read.
    pub issuer: String,
    /// OAuth client id at the provider.
    pub client_id: String,
    /// OAuth client secret at the provider.
    pub client_secret: String,
    /// Unknown users: `existing` (refuse) or `create`.
    #[serde(default)]
    pub policy: Policy,
    /// Offer the provider only on these tenants (subdomains); absent: every tenant.
    #[serde(default)]
    pub tenants: Option<Vec<String>>,
    /// Scopes requested (default `openid email profile`).
    #[serde(default)]
    pub scopes: Option<String>,
}

/// Parse `WRAPPER_OIDC_PROVIDERS`.
pub fn parse_providers(json: &str) -> anyhow::Result<Vec<ProviderConfig>> {
    let providers: Vec<ProviderConfig> = serde_json::from_str(json)
        .map_err(|e| anyhow::anyhow!("WRAPPER_OIDC_PROVIDERS is not a valid provider list: {e}"))?;
    for (i, p) in providers.iter().enumerate() {
        anyhow::ensure!(
            !p.id.is_empty()
                && p.id.len() <= 40
                && p.id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "WRAPPER_OIDC_PROVIDERS[{i}].id must be 1-40 characters of a-z, 0-9 and -"
        );
        anyhow::ensure!(
            p.issuer.starts_with("https://") || p.issuer.starts_with("http://"),
            "WRAPPER_OIDC_PROVIDERS[{i}].issuer must be an http(s) URL"
        );
        anyhow::ensure!(
            providers[..i].iter().all(|q| q.id != p.id),
            "WRAPPER_OIDC_PROVIDERS: provider id {} appears twice",
            p.id
        );
    }
    Ok(providers)
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Discovery {
    pub(crate) issuer: String,
    pub(crate) authorization_endpoint: String,
    pub(crate) token_endpoint: String,
    pub(crate) jwks_uri: String,
    #[serde(default)]
    pub(crate) userinfo_endpoint: Option<String>,
}

pub(crate) struct ProviderKeys {
    pub(crate) keys: Vec<(Option<String>, &'static str, DecodingKey)>,
    pub(crate) fetched: Instant,
}

pub(crate) struct Provider {
    pub(crate) config: ProviderConfig,
    pub(crate) discovery: Mutex<Option<(Instant, Discovery)>>,
    pub(crate) keys: Mutex<Option<ProviderKeys>>,
}

/// The configured providers and their cached metadata.
pub struct Oidc {
    pub(crate) providers: Vec<Provider>,
    pub(crate) http: reqwest::Client,
}

/// Why a sign-in through a provider failed (shown to the user, audited).
#[derive(Debug, thiserror::Error)]
pub(crate) enum FlowError {
    #[error("the identity provider could not be reached: {0}")]
    Provider(String),
    #[error("the identity provider's answer was refused: {0}")]
    Token(String),
}

pub(crate) const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
pub(crate) const KEYS_MIN_REFRESH: Duration = Duration::from_secs(10);

impl Oidc {
    /// The providers of `configs`; nothing is fetched until the first sign-in.
    pub fn new(configs: Vec<ProviderConfig>) -> Self {
        Self {
            providers: configs
                .into_iter()
                .map(|config| Provider {
                    config,
                    discovery: Mutex::new(None),
                    keys: Mutex::new(None),
                })
                .collect(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
        }
    }

    /// `(id, display name)` of the providers offered on tenant `subdomain`.
    pub fn offered_to(&self, subdomain: &str) -> Vec<(&str, &str)> {
        self.providers
            .iter()
            .filter(|p| offered(&p.config, subdomain))
            .map(|p| {
                let c = &p.config;
                (c.id.as_str(), c.display_name.as_deref().unwrap_or(&c.id))
            })
            .collect()
    }

    pub(crate) fn provider(&self, id: &str) -> Option<&Provider> {
        self.providers.iter().find(|p| p.config.id == id)
    }

    pub(crate) async fn discovery(&self, p: &Provider) -> Result<Discovery, FlowError> {
        let mut cached = p.discovery.lock().await;
        if let Some((_, d)) = cached
            .as_ref()
            .filter(|(at, _)| at.elapsed() < DISCOVERY_TTL)
        {
            return Ok(d.clone());
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            p.config.issuer.trim_end_matches('/')
        );
        let d: Discovery = self.get_json(&url, None).await.and_then(|v| {
            serde_json::from_value(v).map_err(|e| FlowError::Provider(e.to_string()))
        })?;
        if d.issuer.trim_end_matches('/') != p.config.issuer.trim_end_matches('/') {
            return Err(FlowError::Provider(format!(
                "the discovery document names issuer {}, not {}",
                d.issuer, p.config.issuer
            )));
        }
        *cached = Some((Instant::now(), d.clone()));
        Ok(d)
    }

    pub(crate) async fn get_json(
        &self,
        url: &str,
        bearer: Option<&str>,
    ) -> Result<Value, FlowError> {
        let mut request = self.http.get(url);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        request
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| FlowError::Provider(e.to_string()))?
            .json()
            .await
            .map_err(|e| FlowError::Provider(e.to_string()))
    }

    /// The provider's keys, fetched again when `kid` is unknown (at most every 10 s).
    pub(crate) async fn key_for(
        &self,
        p: &Provider,
        d: &Discovery,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<DecodingKey, FlowError> {
        let mut keys = p.keys.lock().await;
        let family = family_of_alg(alg);
        let pick = |k: &ProviderKeys| {
            k.keys
                .iter()
                .find(|(id, f, _)| {
                    kid.is_none_or(|kid| id.as_deref() == Some(kid)) && Some(*f) == family
                })
                .map(|(_, _, key)| key.clone())
        };
        if let Some(key) = keys.as_ref().and_then(pick) {
            return Ok(key);
        }
        if keys
            .as_ref()
            .is_some_and(|k| k.fetched.elapsed() < KEYS_MIN_REFRESH)
        {
            return Err(FlowError::Token(format!(
                "no key {kid:?} in the provider's key set"
            )));
        }
        let set = self.get_json(&d.jwks_uri, None).await?;
        let fetched = ProviderKeys {
            keys: set["keys"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|k| k["use"].as_str().is_none_or(|u| u == "sig"))
                .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
                .filter_map(|k| {
                    let family = family_of_jwk(&k)?;
                    Some((
                        k.common.key_id.clone(),
                        family,
                        DecodingKey::from_jwk(&k).ok()?,
                    ))
                })
                .collect(),
            fetched: Instant::now(),
        };
        let key = pick(&fetched);
        *keys = Some(fetched);
        key.ok_or_else(|| FlowError::Token(format!("no key {kid:?} in the provider's key set")))
    }
}

pub(crate) fn offered(config: &ProviderConfig, subdomain: &str) -> bool {
    config
        .tenants
        .as_ref()
        .is_none_or(|t| t.iter().any(|s| s.eq_ignore_ascii_case(subdomain)))
}

/// The key family an algorithm needs (none for shared-secret algorithms, never accepted).
pub(crate) fn family_of_alg(alg: Algorithm) -> Option<&'static str> {
    use jsonwebtoken::Algorithm::*;
    match alg {
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Some("rsa"),
        ES256 | ES384 => Some("ec"),
        EdDSA => Some("okp"),
        HS256 | HS384 | HS512 => None,
    }
}

pub(crate) fn family_of_jwk(jwk: &Jwk) -> Option<&'static str> {
    use jsonwebtoken::jwk::AlgorithmParameters::*;
    match jwk.algorithm {
        RSA(_) => Some("rsa"),
        EllipticCurve(_) => Some("ec"),
        OctetKeyPair(_) => Some("okp"),
        OctetKey(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_lists_are_validated() {
        let ok = r#"[{"id":"corp","issuer":"https://id.corp.test","clientId":"c","clientSecret":"s","policy":"create","tenants":["acme"]}]"#;
        let parsed = parse_providers(ok).unwrap();
        assert_eq!(parsed[0].policy, Policy::Create);
        let oidc = Oidc::new(parsed);
        assert_eq!(oidc.offered_to("acme"), vec![("corp", "corp")]);
        assert!(oidc.offered_to("globex").is_empty());
        for bad in [
            r#"[{"id":"Corp!","issuer":"https://x","clientId":"c","clientSecret":"s"}]"#,
            r#"[{"id":"a","issuer":"ftp://x","clientId":"c","clientSecret":"s"}]"#,
            r#"[{"id":"a","issuer":"https://x","clientId":"c"}]"#,
            r#"[{"id":"a","issuer":"https://x","clientId":"c","clientSecret":"s","policy":"maybe"}]"#,
            r#"[{"id":"a","issuer":"https://x","clientId":"c","clientSecret":"s"},{"id":"a","issuer":"https://y","clientId":"c","clientSecret":"s"}]"#,
        ] {
            assert!(parse_providers(bad).is_err(), "{bad}");
        }
    }
}
