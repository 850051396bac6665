//! Signing keys and tokens.
//!
//! Tokens are JWTs signed with Ed25519 (EdDSA). The public keys are published at
//! `/.well-known/jwks.json` with a `kid`, so apps verify tokens without a shared secret, and a
//! key can be added and the old one retired without any app restart. Keys live in Postgres so
//! every wrapper replica signs and verifies with the same set; a token with a `kid` this replica
//! has not seen makes it reload the set once (a key added by another replica).

use std::{collections::HashMap, sync::Arc};

use anyhow::Context;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::RwLock;
use uuid::Uuid;

/// Who a token speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// A signed-in person (session).
    User,
    /// An app's service (client credentials), limited to the sync and credit endpoints.
    Service,
}

/// The claims of every token the wrapper signs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Subject: the user id, or the service client id.
    pub sub: String,
    /// Issued at (seconds since the epoch).
    pub iat: i64,
    /// Expires at (seconds since the epoch).
    pub exp: i64,
    /// Token id.
    pub jti: String,
    /// User or service.
    pub kind: TokenKind,
    /// The user's tenant (none for platform admins and services).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid: Option<Uuid>,
    /// The subdomain of the user's tenant (apps compare it with the X-Tenant header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tsd: Option<String>,
    /// The user's email, for display.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The service's application, e.g. `crm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

struct KeySet {
    signing_kid: String,
    signing: EncodingKey,
    verifying: HashMap<String, DecodingKey>,
    jwks: serde_json::Value,
}

/// The wrapper's signing keys, shared by every request.
pub struct KeyStore {
    db: PgPool,
    issuer: String,
    set: RwLock<Arc<KeySet>>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("issuer", &self.issuer)
            .finish()
    }
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Bad signature, unknown key, wrong algorithm, expired, wrong issuer, or garbage.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The key set could not be read.
    #[error(transparent)]
    Storage(#[from] anyhow::Error),
}

impl KeyStore {
    /// Load the active keys, creating a first one on a fresh database.
    pub async fn load(db: PgPool, issuer: String) -> anyhow::Result<Self> {
        let set = read_keys(&db).await?;
        let set = match set {
            Some(set) => set,
            None => {
                add_key(&db).await?;
                read_keys(&db)
                    .await?
                    .context("no signing key after creating one")?
            }
        };
        Ok(Self {
            db,
            issuer,
            set: RwLock::new(Arc::new(set)),
        })
    }

    /// The issuer tokens carry.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Re-read the key set (after a rotation by any replica).
    pub async fn reload(&self) -> anyhow::Result<()> {
        let set = read_keys(&self.db)
            .await?
            .context("every signing key is retired")?;
        *self.set.write().await = Arc::new(set);
        Ok(())
    }

    /// Add a new signing key; it signs from now on. Returns its `kid`.
    pub async fn rotate(&self) -> anyhow::Result<String> {
        let kid = add_key(&self.db).await?;
        self.reload().await?;
        Ok(kid)
    }

    /// Retire a key: tokens it signed stop verifying.
    pub async fn retire(&self, kid: &str) -> anyhow::Result<()> {
        sqlx::query("update signing_keys set retired_at = now() where kid = $1")
            .bind(kid)
            .execute(&self.db)
            .await?;
        self.reload().await
    }

    /// The public keys as a JWK Set.
    pub async fn jwks(&self) -> serde_json::Value {
        self.set.read().await.jwks.clone()
    }

    /// Sign `claims` with the current key (the wrapper signs [`Claims`]; tests also sign
    /// malformed ones).
    pub async fn sign<C: serde::Serialize>(&self, claims: &C) -> anyhow::Result<String> {
        let set = self.set.read().await.clone();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(set.signing_kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &set.signing)?)
    }

    /// Verify a token: signature by a known active key, EdDSA only, issuer, expiry.
    pub async fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Invalid(format!("algorithm {:?}", header.alg)));
        }
        let kid = header
            .kid
            .ok_or_else(|| TokenError::Invalid("no kid".into()))?;
        let mut set = self.set.read().await.clone();
        if !set.verifying.contains_key(&kid) {
            self.reload().await?;
            set = self.set.read().await.clone();
        }
        let key = set
            .verifying
            .get(&kid)
            .ok_or_else(|| TokenError::Invalid(format!("unknown kid {kid}")))?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.leeway = 5;
        validation.validate_aud = false;
        jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|e| TokenError::Invalid(e.to_string()))
    }
}

async fn add_key(db: &PgPool) -> anyhow::Result<String> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| anyhow::anyhow!("generating an Ed25519 key failed"))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| anyhow::anyhow!("reading the generated Ed25519 key failed"))?;
    let kid = Uuid::now_v7().simple().to_string();
    sqlx::query("insert into signing_keys (kid, private_key, public_key) values ($1, $2, $3)")
        .bind(&kid)
        .bind(pkcs8.as_ref())
        .bind(pair.public_key().as_ref())
        .execute(db)
        .await?;
    Ok(kid)
}

async fn read_keys(db: &PgPool) -> anyhow::Result<Option<KeySet>> {
    let rows: Vec<(String, Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "select kid, private_key, public_key from signing_keys
         where retired_at is null order by created_at desc, kid desc",
    )
    .fetch_all(db)
    .await?;
    let Some((signing_kid, private, _)) = rows.first().cloned() else {
        return Ok(None);
    };
    let mut verifying = HashMap::new();
    let mut jwks = Vec::new();
    for (kid, _, public) in rows {
        let x = URL_SAFE_NO_PAD.encode(&public);
        verifying.insert(kid.clone(), DecodingKey::from_ed_components(&x)?);
        jwks.push(serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid, "x": x,
        }));
    }
    Ok(Some(KeySet {
        signing_kid,
        signing: EncodingKey::from_ed_der(&private),
        verifying,
        jwks: serde_json::json!({ "keys": jwks }),
    }))
}
