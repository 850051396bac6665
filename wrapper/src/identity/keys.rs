//! Signing keys and tokens.
//!
//! Tokens are JWTs signed with Ed25519 (EdDSA). The public keys are published at
//! `/.well-known/jwks.json` with a `kid`, so apps verify tokens without a shared secret, and a
//! key can be added and the old one retired without any app restart. Keys live in Postgres so
//! every wrapper replica signs and verifies with the same set; a token with a `kid` this replica
//! has not seen makes it reload the set once (a key added by another replica).
//!
//! Private keys are sealed at rest: ChaCha20-Poly1305 under a key-encryption key (KEK) from
//! configuration (`WRAPPER_KEY_ENCRYPTION_KEYS`, `id:base64` entries, the first one seals), with
//! the key's `kid` as associated data so a sealed key cannot be moved to another row. Reading
//! the database alone no longer lets anyone mint tokens. At start-up the wrapper seals any row
//! still in the clear (written before sealing existed) and re-seals rows sealed under an older
//! KEK with the current one; a row sealed under a KEK that is not configured stops the start.
//!
//! Rotating the KEK on a running fleet: (1) add the new KEK *second* on every replica
//! (`old:…,new:…`: all can open both, rows stay under `old`); (2) put it first (`new:…,old:…`):
//! the first replica to start re-seals every row under `new`; (3) drop `old`.

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
    keks: Keks,
    set: RwLock<Arc<KeySet>>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("issuer", &self.issuer)
            .finish()
    }
}

/// The key-encryption keys: the first seals, all open (by id).
#[derive(Clone)]
pub struct Keks {
    current: String,
    by_id: HashMap<String, [u8; 32]>,
}

impl std::fmt::Debug for Keks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keks")
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

impl Keks {
    /// Parse `id:base64url-or-standard(32 bytes),…`; the first entry is the one that seals.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        use base64::engine::general_purpose::STANDARD;
        let mut current = None;
        let mut by_id = HashMap::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (id, key) = entry
                .split_once(':')
                .context("each key-encryption key is written id:base64")?;
            anyhow::ensure!(
                !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
                "key-encryption key ids are letters, digits and hyphens"
            );
            let bytes = URL_SAFE_NO_PAD
                .decode(key.trim_end_matches('='))
                .or_else(|_| STANDARD.decode(key))
                .context("a key-encryption key is not base64")?;
            let key: [u8; 32] = bytes
                .try_into()
                .map_err(|_| anyhow::anyhow!("key-encryption key {id} is not 32 bytes"))?;
            anyhow::ensure!(
                by_id.insert(id.to_owned(), key).is_none(),
                "key-encryption key {id} is listed twice"
            );
            current.get_or_insert_with(|| id.to_owned());
        }
        Ok(Self {
            current: current.context("no key-encryption key is configured")?,
            by_id,
        })
    }

    /// A fresh key-encryption key, as `id:base64` (for `wrapper keys new-kek`).
    pub fn generate() -> anyhow::Result<String> {
        use ring::rand::SecureRandom;
        let mut key = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| anyhow::anyhow!("no randomness"))?;
        Ok(format!(
            "kek-{}:{}",
            chrono::Utc::now().format("%Y%m%d"),
            URL_SAFE_NO_PAD.encode(key)
        ))
    }

    fn cipher(&self, id: &str) -> anyhow::Result<ring::aead::LessSafeKey> {
        let key = self
            .by_id
            .get(id)
            .with_context(|| format!("key-encryption key {id} is not configured"))?;
        let unbound = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, key)
            .map_err(|_| anyhow::anyhow!("bad key-encryption key {id}"))?;
        Ok(ring::aead::LessSafeKey::new(unbound))
    }

    /// The KEK that seals (the first configured).
    pub fn current(&self) -> &str {
        &self.current
    }

    /// Seal `plain` (the private key of `kid`, or another secret named by `kid`, which is bound
    /// to it as associated data) under the current KEK: nonce ‖ ciphertext ‖ tag, and the
    /// KEK's id.
    pub fn seal(&self, kid: &str, plain: &[u8]) -> anyhow::Result<(String, Vec<u8>)> {
        use ring::{aead, rand::SecureRandom};
        let mut nonce = [0u8; aead::NONCE_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| anyhow::anyhow!("no randomness"))?;
        let mut sealed = plain.to_vec();
        self.cipher(&self.current)?
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(kid.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| anyhow::anyhow!("sealing {kid} failed"))?;
        let mut out = nonce.to_vec();
        out.extend(sealed);
        Ok((self.current.clone(), out))
    }

    /// Open what [`seal`](Self::seal) sealed under `kek_id` for `kid`.
    pub fn open(&self, kek_id: &str, kid: &str, sealed: &[u8]) -> anyhow::Result<Vec<u8>> {
        use ring::aead;
        anyhow::ensure!(
            sealed.len() > aead::NONCE_LEN,
            "sealed key {kid} is truncated"
        );
        let (nonce, body) = sealed.split_at(aead::NONCE_LEN);
        let nonce = aead::Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| anyhow::anyhow!("bad nonce"))?;
        let mut body = body.to_vec();
        let plain = self
            .cipher(kek_id)?
            .open_in_place(nonce, aead::Aad::from(kid.as_bytes()), &mut body)
            .map_err(|_| {
                anyhow::anyhow!(
                    "{kid} does not open with key-encryption key {kek_id} \
                     (wrong key, or the row was altered)"
                )
            })?;
        Ok(plain.to_vec())
    }
}

/// Seal every private key still in the clear and re-seal those under another KEK than the
/// current one, in one transaction. Returns how many rows changed.
pub async fn seal_all(db: &PgPool, keks: &Keks) -> anyhow::Result<usize> {
    let mut tx = db.begin().await?;
    /// kid, private key in the clear, sealed private key, KEK id.
    type Row = (String, Option<Vec<u8>>, Option<Vec<u8>>, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "select kid, private_key, private_key_sealed, kek_id from signing_keys
         order by kid for update",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut changed = 0;
    for (kid, clear, sealed, kek_id) in rows {
        let plain = match (clear, sealed, kek_id) {
            (_, Some(sealed), Some(kek)) if kek == keks.current => {
                keks.open(&kek, &kid, &sealed)?;
                continue;
            }
            (_, Some(sealed), Some(kek)) => keks.open(&kek, &kid, &sealed)?,
            (Some(clear), _, _) => clear,
            _ => anyhow::bail!("signing key {kid} has no private key"),
        };
        let (kek, sealed) = keks.seal(&kid, &plain)?;
        sqlx::query(
            "update signing_keys set private_key = null, private_key_sealed = $2, kek_id = $3
             where kid = $1",
        )
        .bind(&kid)
        .bind(sealed)
        .bind(kek)
        .execute(&mut *tx)
        .await?;
        changed += 1;
    }
    tx.commit().await?;
    if changed > 0 {
        tracing::info!(changed, kek = %keks.current, "signing keys sealed under the current key-encryption key");
    }
    Ok(changed)
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
    /// Seal what is not sealed under the current KEK, load the active keys, and create a first
    /// one on a fresh database.
    pub async fn load(db: PgPool, issuer: String, keks: Keks) -> anyhow::Result<Self> {
        seal_all(&db, &keks).await?;
        let set = read_keys(&db, &keks).await?;
        let set = match set {
            Some(set) => set,
            None => {
                add_key(&db, &keks).await?;
                read_keys(&db, &keks)
                    .await?
                    .context("no signing key after creating one")?
            }
        };
        Ok(Self {
            db,
            issuer,
            keks,
            set: RwLock::new(Arc::new(set)),
        })
    }

    /// The key-encryption keys (they seal other secrets at rest too, e.g. webhook secrets).
    pub fn keks(&self) -> &Keks {
        &self.keks
    }

    /// The issuer tokens carry.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Re-read the key set (after a rotation by any replica).
    pub async fn reload(&self) -> anyhow::Result<()> {
        let set = read_keys(&self.db, &self.keks)
            .await?
            .context("every signing key is retired")?;
        *self.set.write().await = Arc::new(set);
        Ok(())
    }

    /// Add a new signing key; it signs from now on. Returns its `kid`.
    pub async fn rotate(&self) -> anyhow::Result<String> {
        let kid = add_key(&self.db, &self.keks).await?;
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

async fn add_key(db: &PgPool, keks: &Keks) -> anyhow::Result<String> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| anyhow::anyhow!("generating an Ed25519 key failed"))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| anyhow::anyhow!("reading the generated Ed25519 key failed"))?;
    let kid = Uuid::now_v7().simple().to_string();
    let (kek, sealed) = keks.seal(&kid, pkcs8.as_ref())?;
    sqlx::query(
        "insert into signing_keys (kid, private_key_sealed, kek_id, public_key)
         values ($1, $2, $3, $4)",
    )
    .bind(&kid)
    .bind(sealed)
    .bind(kek)
    .bind(pair.public_key().as_ref())
    .execute(db)
    .await?;
    Ok(kid)
}

async fn read_keys(db: &PgPool, keks: &Keks) -> anyhow::Result<Option<KeySet>> {
    type Row = (String, Option<Vec<u8>>, Option<String>, Vec<u8>);
    let rows: Vec<Row> = sqlx::query_as(
        "select kid, private_key_sealed, kek_id, public_key from signing_keys
         where retired_at is null order by created_at desc, kid desc",
    )
    .fetch_all(db)
    .await?;
    let Some((signing_kid, sealed, kek_id, _)) = rows.first().cloned() else {
        return Ok(None);
    };
    let private = match (sealed, kek_id) {
        (Some(sealed), Some(kek)) => keks.open(&kek, &signing_kid, &sealed)?,
        // Written in the clear by a replica that predates sealing: the next start seals it.
        _ => {
            sqlx::query_scalar("select private_key from signing_keys where kid = $1")
                .bind(&signing_kid)
                .fetch_one(db)
                .await?
        }
    };
    let mut verifying = HashMap::new();
    let mut jwks = Vec::new();
    for (kid, _, _, public) in rows {
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
