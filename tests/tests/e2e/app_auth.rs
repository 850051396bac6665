//! The SDK's app-side authentication against the real wrapper: tokens verified by the JWKS,
//! the tenant bound to the request, key rotation picked up without a restart.

use std::{sync::Arc, time::Duration};

use axum::{Router, extract::FromRef, routing::get};
use sync_sdk::auth::{Jwks, TenantUser};
use tsync_e2e::{wrapper_app::*, *};

#[derive(Clone)]
struct AppState {
    jwks: Arc<Jwks>,
}

impl FromRef<AppState> for Arc<Jwks> {
    fn from_ref(s: &AppState) -> Self {
        s.jwks.clone()
    }
}

async fn me(user: TenantUser) -> String {
    format!("{} {}", user.tenant_id, user.email.unwrap_or_default())
}

async fn app(wrapper: &TestApp, max_age: Duration) -> anyhow::Result<TestServer> {
    let jwks = Jwks::new(
        &wrapper.url,
        wrapper.state.keys.issuer(),
        Duration::ZERO,
        max_age,
    );
    serve(
        Router::new()
            .route("/me", get(me))
            .with_state(AppState { jwks }),
    )
    .await
}

#[tokio::test]
async fn apps_verify_wrapper_sessions_and_bind_them_to_the_tenant() -> anyhow::Result<()> {
    let wrapper = spawn_wrapper().await?;
    let acme = wrapper.create_tenant("acme").await;
    let globex = wrapper.create_tenant("globex").await;
    let server = app(&wrapper, Duration::from_secs(300)).await?;
    let http = reqwest::Client::new();
    let get = |token: Option<&str>, tenant: Option<String>, cookie: bool| {
        let mut req = http.get(format!("{}/me", server.url()));
        if let Some(t) = token {
            req = if cookie {
                req.header("cookie", format!("tsync_session={t}"))
            } else {
                req.bearer_auth(t)
            };
        }
        if let Some(tenant) = tenant {
            req = req.header("x-tenant", tenant);
        }
        async move { req.send().await.unwrap() }
    };
    let ok = get(Some(&acme.admin), Some(acme.id.to_string()), false).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await?, format!("{} admin@acme.test", acme.id));
    assert_eq!(
        get(Some(&acme.admin), Some(acme.id.to_string()), true)
            .await
            .status(),
        200,
        "cookie"
    );
    assert_eq!(
        get(Some(&acme.admin), Some(globex.id.to_string()), false)
            .await
            .status(),
        403,
        "acme token on globex"
    );
    assert_eq!(
        get(Some(&globex.admin), Some(acme.id.to_string()), true)
            .await
            .status(),
        403
    );
    assert_eq!(
        get(None, Some(acme.id.to_string()), false).await.status(),
        401
    );
    assert_eq!(get(Some("abc.def.ghi"), None, false).await.status(), 401);
    assert_eq!(
        get(Some(&wrapper.root), Some(acme.id.to_string()), false)
            .await
            .status(),
        401,
        "a platform admin's token names no tenant"
    );
    let unbound = get(Some(&acme.admin), None, false).await;
    assert_eq!(
        unbound.status(),
        400,
        "a request the edge did not bind to a tenant is refused"
    );
    assert_eq!(
        unbound.headers()["content-type"],
        "application/problem+json"
    );

    // Each required claim, left out of an otherwise valid token signed with the wrapper's key.
    let now = chrono::Utc::now().timestamp();
    let full = serde_json::json!({
        "iss": wrapper.state.keys.issuer(), "sub": acme.admin_id.to_string(), "iat": now,
        "exp": now + 600, "jti": uuid::Uuid::now_v7().to_string(), "kind": "user",
        "tid": acme.id, "tsd": "acme", "email": "admin@acme.test",
    });
    let signed = wrapper.state.keys.sign(&full).await?;
    assert_eq!(
        get(Some(&signed), Some(acme.id.to_string()), false)
            .await
            .status(),
        200,
        "the control token is accepted"
    );
    for claim in ["iss", "exp", "sub", "tid"] {
        let mut claims = full.clone();
        claims.as_object_mut().unwrap().remove(claim);
        let token = wrapper.state.keys.sign(&claims).await?;
        assert_eq!(
            get(Some(&token), Some(acme.id.to_string()), false)
                .await
                .status(),
            401,
            "a token without {claim}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_rotated_key_is_picked_up_and_a_retired_one_refused_without_restart() -> anyhow::Result<()>
{
    let wrapper = spawn_wrapper().await?;
    let t = wrapper.create_tenant("rotate").await;
    let server = app(&wrapper, Duration::ZERO).await?;
    let http = reqwest::Client::new();
    let call = |token: String| {
        let req = http
            .get(format!("{}/me", server.url()))
            .header("x-tenant", "rotate")
            .bearer_auth(token);
        async move { req.send().await.unwrap().status() }
    };
    let old_token = t.admin.clone();
    assert_eq!(call(old_token.clone()).await, 200);
    let old_kid = wrapper.state.keys.jwks().await["keys"][0]["kid"]
        .as_str()
        .unwrap()
        .to_owned();

    let new_kid = wrapper.state.keys.rotate().await?;
    let new_token = wrapper
        .login("admin@rotate.test", PASSWORD, Some("rotate"))
        .await?;
    let header = jsonwebtoken::decode_header(&new_token)?;
    assert_eq!(
        header.kid.as_deref(),
        Some(new_kid.as_str()),
        "new sessions use the new key"
    );
    assert_eq!(
        call(new_token.clone()).await,
        200,
        "the app learned the new key"
    );
    assert_eq!(
        call(old_token.clone()).await,
        200,
        "the old key still verifies until retired"
    );

    wrapper.state.keys.retire(&old_kid).await?;
    assert_eq!(
        call(old_token).await,
        401,
        "a retired key no longer verifies"
    );
    assert_eq!(call(new_token).await, 200);
    Ok(())
}

#[tokio::test]
async fn when_redis_cannot_answer_sign_outs_fail_open_by_default_or_closed_by_choice()
-> anyhow::Result<()> {
    use sync_sdk::auth::RevocationPolicy;
    let wrapper = spawn_wrapper().await?;
    let acme = wrapper.create_tenant("acme").await;
    let mut redis = RedisServer::start().await?;
    let client = redis_client(&redis.url()).await?;
    let keys = sync_sdk::contract::StreamKeys::new(redis_namespace(), 1).unwrap();
    let server = |policy| {
        let jwks = Jwks::new(
            &wrapper.url,
            wrapper.state.keys.issuer(),
            Duration::ZERO,
            Duration::from_secs(300),
        )
        .with_revocations(client.clone(), keys.clone(), policy);
        serve(
            Router::new()
                .route("/me", get(me))
                .with_state(AppState { jwks }),
        )
    };
    let (open, closed) = (
        server(RevocationPolicy::FailOpen).await?,
        server(RevocationPolicy::FailClosed).await?,
    );
    let http = reqwest::Client::new();
    let status = |base: String| {
        let req = http
            .get(format!("{base}/me"))
            .header("x-tenant", "acme")
            .bearer_auth(&acme.admin);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(
        (status(open.url()).await, status(closed.url()).await),
        (200, 200)
    );
    redis.kill().await?;
    assert_eq!(
        status(open.url()).await,
        200,
        "fail open: accepted, logged, counted"
    );
    assert_eq!(
        status(closed.url()).await,
        503,
        "fail closed: refused until Redis answers"
    );
    Ok(())
}
