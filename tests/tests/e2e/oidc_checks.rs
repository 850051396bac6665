//! What the wrapper checks in an OpenID Connect sign-in, proven against a provider that
//! misbehaves on purpose. A real provider (tests/sso.rs) cannot be made to send a wrong nonce,
//! a token for another audience or a forged signature, so this test serves the provider side
//! itself (discovery, JWKS, authorize, token endpoint with a PKCE check) and sends, per
//! scenario, an ID token with exactly one thing wrong. The control scenario, with nothing wrong,
//! signs in — so each refusal is due to the one check it targets.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::{
    Form, Json, Router,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::Deserialize;
use serde_json::{Value, json};
use tsync_e2e::{wrapper_app::*, *};

const CLIENT_ID: &str = "tenantsync";
const CLIENT_SECRET: &str = "rogue-client-secret";
const KID: &str = "rogue-key-1";

fn ed25519() -> (Vec<u8>, String) {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
    let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
    (pkcs8.as_ref().to_vec(), x)
}

struct Pending {
    nonce: String,
    challenge: String,
    scenario: String,
}

struct Rogue {
    issuer: String,
    key: Vec<u8>,
    impostor: Vec<u8>,
    public_x: String,
    pending: Mutex<HashMap<String, Pending>>,
}

#[derive(Deserialize)]
struct Authorize {
    redirect_uri: String,
    state: String,
    nonce: String,
    code_challenge: String,
    code_challenge_method: String,
    client_id: String,
    scenario: String,
}

async fn authorize(State(r): State<Arc<Rogue>>, Query(q): Query<Authorize>) -> Response {
    assert_eq!(q.code_challenge_method, "S256");
    assert_eq!(q.client_id, CLIENT_ID);
    let code = uuid::Uuid::new_v4().simple().to_string();
    r.pending.lock().unwrap().insert(
        code.clone(),
        Pending {
            nonce: q.nonce,
            challenge: q.code_challenge,
            scenario: q.scenario,
        },
    );
    Redirect::to(&format!("{}?code={code}&state={}", q.redirect_uri, q.state)).into_response()
}

#[derive(Deserialize)]
struct TokenRequest {
    grant_type: String,
    code: String,
    code_verifier: String,
}

async fn token(
    State(r): State<Arc<Rogue>>,
    headers: HeaderMap,
    Form(req): Form<TokenRequest>,
) -> Response {
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
    );
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(&basic)
    {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let Some(p) = r.pending.lock().unwrap().remove(&req.code) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant"})),
        )
            .into_response();
    };
    // PKCE: the verifier must hash to the challenge the wrapper sent to /authorize.
    let hashed = URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        req.code_verifier.as_bytes(),
    ));
    if req.grant_type != "authorization_code" || hashed != p.challenge {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant"})),
        )
            .into_response();
    }
    let now = chrono::Utc::now().timestamp();
    let mut claims = json!({
        "iss": r.issuer, "aud": CLIENT_ID, "sub": "rogue-subject-1", "nonce": p.nonce,
        "iat": now, "exp": now + 300,
        "email": "rogue.user@acme.test", "email_verified": true, "name": "Rogue User",
    });
    let mut key = r.key.as_slice();
    match p.scenario.as_str() {
        "good" => {}
        "wrong-nonce" => claims["nonce"] = json!("a-nonce-from-another-sign-in"),
        "no-nonce" => claims
            .as_object_mut()
            .unwrap()
            .remove("nonce")
            .map(drop)
            .unwrap_or(()),
        "wrong-audience" => claims["aud"] = json!("another-client"),
        "wrong-issuer" => claims["iss"] = json!("http://evil.test"),
        "expired" => {
            claims["iat"] = json!(now - 7200);
            claims["exp"] = json!(now - 3600);
        }
        "impostor-key" => key = r.impostor.as_slice(),
        "unverified-email" => claims["email_verified"] = json!(false),
        // Verified by the provider, but not an address the API would accept either.
        "invalid-email" => claims["email"] = json!("<script>@acme.test"),
        "shared-secret" => {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some(KID.into());
            let id_token = jsonwebtoken::encode(
                &header,
                &claims,
                &EncodingKey::from_secret(CLIENT_SECRET.as_bytes()),
            )
            .unwrap();
            return Json(
                json!({"id_token": id_token, "access_token": "a", "token_type": "Bearer"}),
            )
            .into_response();
        }
        "unsigned" => {
            let part = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
            let id_token = format!(
                "{}.{}.",
                part(&json!({"alg": "none", "kid": KID})),
                part(&claims)
            );
            return Json(
                json!({"id_token": id_token, "access_token": "a", "token_type": "Bearer"}),
            )
            .into_response();
        }
        other => panic!("unknown scenario {other}"),
    }
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(KID.into());
    let id_token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(key)).unwrap();
    Json(json!({"id_token": id_token, "access_token": "a", "token_type": "Bearer"})).into_response()
}

async fn rogue_provider() -> anyhow::Result<(TestServer, Arc<Rogue>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let issuer = format!("http://{}", listener.local_addr()?);
    let ((key, public_x), (impostor, _)) = (ed25519(), ed25519());
    let rogue = Arc::new(Rogue {
        issuer,
        key,
        impostor,
        public_x,
        pending: Mutex::new(HashMap::new()),
    });
    let discovery = |State(r): State<Arc<Rogue>>| async move {
        Json(json!({
            "issuer": r.issuer,
            "authorization_endpoint": format!("{}/authorize", r.issuer),
            "token_endpoint": format!("{}/token", r.issuer),
            "jwks_uri": format!("{}/jwks", r.issuer),
        }))
    };
    let jwks = |State(r): State<Arc<Rogue>>| async move {
        Json(json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": KID, "x": r.public_x},
        ]}))
    };
    let router = Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/authorize", get(authorize))
        .route("/token", post(token))
        .with_state(rogue.clone());
    Ok((serve_listener(listener, router)?, rogue))
}

/// One sign-in through the rogue provider: start → authorize (with the scenario) → callback.
/// Returns the callback's answer.
async fn sign_in(w: &TestApp, scenario: &str) -> anyhow::Result<reqwest::Response> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let host = "acme.yourapp.test";
    let start = http
        .get(format!(
            "{}/auth/oidc/rogue/start?return_to=%2Fcrm%2F",
            w.url
        ))
        .header("host", host)
        .send()
        .await?;
    anyhow::ensure!(
        start.status() == StatusCode::SEE_OTHER,
        "start: {}",
        start.status()
    );
    let flow_cookie = start.headers()[header::SET_COOKIE]
        .to_str()?
        .split(';')
        .next()
        .unwrap_or_default()
        .to_owned();
    let to_provider = start.headers()[header::LOCATION].to_str()?.to_owned();
    let back = http
        .get(format!("{to_provider}&scenario={scenario}"))
        .send()
        .await?;
    let callback = back.headers()[header::LOCATION].to_str()?.to_owned();
    let path = callback
        .strip_prefix(&format!("http://{host}"))
        .ok_or_else(|| anyhow::anyhow!("redirect_uri on another host: {callback}"))?;
    Ok(http
        .get(format!("{}{path}", w.url))
        .header("host", host)
        .header("cookie", flow_cookie)
        .send()
        .await?)
}

fn session_cookie(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("tsync_session=") && !c.starts_with("tsync_session=;"))
        .map(str::to_owned)
}

#[tokio::test]
async fn id_tokens_with_anything_wrong_are_refused_and_sign_in_nobody() -> anyhow::Result<()> {
    let (_provider, rogue) = rogue_provider().await?;
    let config = json!([{
        "id": "rogue", "issuer": rogue.issuer, "clientId": CLIENT_ID,
        "clientSecret": CLIENT_SECRET, "policy": "create",
    }]);
    let w = spawn_wrapper_with(|s| {
        s.oidc_providers = Some(wrapper::config::Secret(config.to_string()));
    })
    .await?;
    let acme = w.create_tenant("acme").await;
    let users = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from users where tenant_id = $1")
            .bind(acme.id)
            .fetch_one(&w.db.pool)
            .await
            .unwrap()
    };

    for scenario in [
        "wrong-nonce",
        "no-nonce",
        "wrong-audience",
        "wrong-issuer",
        "expired",
        "impostor-key",
        "shared-secret",
        "unsigned",
        "unverified-email",
        "invalid-email",
    ] {
        let resp = sign_in(&w, scenario).await?;
        let status = resp.status();
        assert!(
            status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN,
            "{scenario}: {status}"
        );
        assert!(session_cookie(&resp).is_none(), "{scenario}: no session");
        assert!(resp.text().await?.contains("Sign-in failed"), "{scenario}");
        assert_eq!(users().await, 1, "{scenario}: nobody was created");
    }

    // The control: the same flow with nothing wrong signs in and creates the user once.
    let good = sign_in(&w, "good").await?;
    assert_eq!(good.status(), StatusCode::SEE_OTHER);
    assert_eq!(good.headers()[header::LOCATION], "/crm/");
    let cookie = session_cookie(&good).expect("a session");
    assert!(cookie.contains("Domain=.yourapp.test") && cookie.contains("HttpOnly"));
    assert_eq!(users().await, 2);
    // Again: the linked identity signs in the same user, nobody new.
    let again = sign_in(&w, "good").await?;
    assert_eq!(again.status(), StatusCode::SEE_OTHER);
    assert_eq!(users().await, 2);
    let linked: i64 = sqlx::query_scalar(
        "select count(*) from user_identities where provider = 'rogue' and subject = 'rogue-subject-1'",
    )
    .fetch_one(&w.db.pool)
    .await?;
    assert_eq!(linked, 1);

    // Failures are in acme's audit log with their reason.
    let audit = w
        .get_ok(
            &format!("/api/tenants/{}/audit?action=login&limit=100", acme.id),
            &acme.admin,
        )
        .await;
    let reasons: Vec<String> = audit["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["outcome"] == "failure" && i["details"]["method"] == "oidc")
        .map(|i| {
            i["details"]["reason"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(reasons.len(), 10, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("email address is not valid")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("nonce")), "{reasons:?}");
    Ok(())
}
