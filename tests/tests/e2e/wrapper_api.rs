//! The wrapper's REST API against real Postgres and Redis: happy paths, the outbox written with
//! every change, validation and authorization that write nothing, and token checks.

use std::collections::BTreeSet;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tsync_e2e::wrapper_app::*;
use uuid::Uuid;
use wrapper::identity::keys::{Claims, TokenKind};

fn id_of(v: &Value) -> Uuid {
    serde_json::from_value(v["id"].clone()).expect("an id")
}

/// The event types and seqs written since `from` (exclusive).
fn events_after(outbox: &[Value], from: usize) -> Vec<(String, i64)> {
    outbox[from..]
        .iter()
        .map(|e| {
            (
                e["eventType"].as_str().unwrap().to_owned(),
                e["seq"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn assert_seq_gap_free(outbox: &[Value]) {
    let seqs: Vec<i64> = outbox.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    let want: Vec<i64> = (1..=seqs.len() as i64).collect();
    assert_eq!(
        seqs, want,
        "per-tenant seq must be 1..n without gap or duplicate"
    );
}

/// Each mutating route writes exactly its events, with consecutive seq, and the response and the
/// payloads never carry secrets.
#[tokio::test]
async fn every_mutation_commits_exactly_its_events_with_consecutive_seq() -> anyhow::Result<()> {
    let app = spawn_wrapper().await?;
    let mut bodies: Vec<String> = Vec::new();
    let t = app.create_tenant("acme").await;
    let base = format!("/api/tenants/{}", t.id);
    let mut seen = 0;
    let mut step = |outbox: &[Value], want: &[&str]| {
        let got = events_after(outbox, seen);
        let types: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(types, want);
        for (i, (_, seq)) in got.iter().enumerate() {
            assert_eq!(*seq, (seen + i + 1) as i64);
        }
        seen = outbox.len();
    };
    step(
        &app.outbox(t.id).await,
        &[
            "tenant.created",
            "role.created",
            "user.created",
            "membership.granted",
        ],
    );

    let user = app
        .send_ok(
            Method::POST,
            &format!("{base}/users"),
            &t.admin,
            json!({"email": "ada@acme.test", "fullName": "Ada Lovelace", "password": PASSWORD}),
        )
        .await;
    bodies.push(user.to_string());
    let user_id = id_of(&user);
    step(&app.outbox(t.id).await, &["user.created"]);

    let updated = app
        .send_ok(
            Method::PATCH,
            &format!("{base}/users/{user_id}"),
            &t.admin,
            json!({"fullName": "Ada King"}),
        )
        .await;
    assert_eq!(updated["fullName"], "Ada King");
    bodies.push(updated.to_string());
    step(&app.outbox(t.id).await, &["user.updated"]);

    let changed = app
        .send_ok(
            Method::PATCH,
            &format!("{base}/users/{user_id}"),
            &t.admin,
            json!({"email": "ada@king.test"}),
        )
        .await;
    bodies.push(changed.to_string());
    step(&app.outbox(t.id).await, &["user.email_changed"]);

    app.send_ok(
        Method::PATCH,
        &format!("{base}/users/{user_id}"),
        &t.admin,
        json!({"active": false}),
    )
    .await;
    step(&app.outbox(t.id).await, &["user.deactivated"]);

    let role = app
        .send_ok(
            Method::POST,
            &format!("{base}/roles"),
            &t.admin,
            json!({"name": "sales", "permissions": ["crm.accounts.write"]}),
        )
        .await;
    let role_id = id_of(&role);
    step(&app.outbox(t.id).await, &["role.created"]);
    app.send_ok(
        Method::PATCH,
        &format!("{base}/roles/{role_id}"),
        &t.admin,
        json!({"permissions": ["crm.*"]}),
    )
    .await;
    step(&app.outbox(t.id).await, &["role.updated"]);

    let member = app
        .send_ok(
            Method::POST,
            &format!("{base}/users"),
            &t.admin,
            json!({"email": "bob@acme.test", "fullName": "Bob"}),
        )
        .await;
    step(&app.outbox(t.id).await, &["user.created"]);
    let membership = app
        .send_ok(
            Method::POST,
            &format!("{base}/memberships"),
            &t.admin,
            json!({"userId": id_of(&member), "roleId": role_id}),
        )
        .await;
    step(&app.outbox(t.id).await, &["membership.granted"]);
    let listed = app.get_ok(&format!("{base}/memberships"), &t.admin).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 2);
    app.send_ok(
        Method::DELETE,
        &format!("{base}/memberships/{}", id_of(&membership)),
        &t.admin,
        json!(null),
    )
    .await;
    step(&app.outbox(t.id).await, &["membership.revoked"]);

    app.send_ok(
        Method::DELETE,
        &format!("{base}/roles/{role_id}"),
        &t.admin,
        json!(null),
    )
    .await;
    step(&app.outbox(t.id).await, &["role.deleted"]);

    let settings = app
        .send_ok(
            Method::PUT,
            &format!("{base}/settings"),
            &t.admin,
            json!({"values": {"locale": "en-GB"}}),
        )
        .await;
    assert_eq!(settings["values"]["locale"], "en-GB");
    step(&app.outbox(t.id).await, &["settings.updated"]);
    assert_eq!(
        app.get_ok(&format!("{base}/settings"), &t.admin).await["values"]["locale"],
        "en-GB"
    );

    app.send_ok(
        Method::PATCH,
        &base,
        &t.admin,
        json!({"name": "Acme Inc", "theme": {"primary": "#ff0000"}}),
    )
    .await;
    step(&app.outbox(t.id).await, &["tenant.updated"]);

    app.send_ok(
        Method::DELETE,
        &format!("{base}/users/{}", id_of(&member)),
        &t.admin,
        json!(null),
    )
    .await;
    step(&app.outbox(t.id).await, &["user.deleted"]);
    let users = app.get_ok(&format!("{base}/users"), &t.admin).await;
    let emails: BTreeSet<&str> = users["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    assert!(
        !emails.contains("bob@acme.test"),
        "a soft-deleted user is not listed by default"
    );
    let with_deleted = app
        .get_ok(&format!("{base}/users?includeDeleted=true"), &t.admin)
        .await;
    assert_eq!(with_deleted["items"].as_array().unwrap().len(), 3);

    let domain = app
        .get_ok("/api/domains/acme.yourapp.test", &app.root)
        .await;
    assert_eq!(domain["tenantId"], json!(t.id));
    assert_eq!(
        domain["name"], "Acme Inc",
        "the domain cache was invalidated by the update"
    );
    bodies.push(domain.to_string());

    app.send_ok(Method::DELETE, &base, &app.root, json!(null))
        .await;
    let outbox = app.outbox(t.id).await;
    step(&outbox, &["tenant.archived"]);
    assert_seq_gap_free(&outbox);
    let (status, _) = app
        .call(
            Method::GET,
            "/api/domains/acme.yourapp.test",
            Some(&app.root),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "an archived tenant has no domain"
    );

    // Every envelope is a valid contract v1 event carrying the request's correlation id.
    for envelope in &outbox {
        let decoded = sync_sdk::contract::Envelope::from_json(envelope.clone())?;
        assert!(decoded.correlation_id.is_some());
    }
    // No secret anywhere: not in responses, not in payloads.
    let payloads = outbox.iter().map(|e| e["payload"].to_string());
    for text in bodies.into_iter().chain(payloads) {
        let lower = text.to_lowercase();
        for secret in [
            "password",
            "$argon2",
            "secret",
            "mfa",
            "token",
            &t.admin.to_lowercase(),
        ] {
            assert!(!lower.contains(secret), "`{secret}` leaked in {text}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn correlation_id_from_the_request_is_copied_into_events() -> anyhow::Result<()> {
    let app = spawn_wrapper().await?;
    let t = app.create_tenant("corr").await;
    let resp = app
        .http
        .post(format!("{}/api/tenants/{}/users", app.url, t.id))
        .bearer_auth(&t.admin)
        .header("x-correlation-id", "trace-me-42")
        .json(&json!({"email": "c@corr.test", "fullName": "C"}))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()["x-correlation-id"], "trace-me-42");
    let last = app.outbox(t.id).await.pop().unwrap();
    assert_eq!(last["correlationId"], "trace-me-42");
    Ok(())
}

#[tokio::test]
async fn bad_input_is_a_problem_naming_the_field_and_writes_nothing() -> anyhow::Result<()> {
    let app = spawn_wrapper().await?;
    let t = app.create_tenant("valid").await;
    let path = format!("/api/tenants/{}/users", t.id);
    let cases = [
        (json!({"email": "not-an-email", "fullName": "X"}), "email"),
        (
            json!({"email": "x@valid.test", "fullName": "x".repeat(101)}),
            "fullName",
        ),
        (
            json!({"email": "x@valid.test", "fullName": "X", "password": "short"}),
            "password",
        ),
        (
            json!({"email": "x@valid.test", "fullName": "X", "password": "alllowercase-123"}),
            "password",
        ),
        (json!({"fullName": "X"}), "email"),
        (
            json!({"email": "x@valid.test", "fullName": "X", "isPlatformAdmin": true}),
            "body",
        ),
    ];
    let users = app.count("users").await;
    let events = app.count("outbox").await;
    for (body, field) in cases {
        let resp = app
            .http
            .post(format!("{}{path}", app.url))
            .bearer_auth(&t.admin)
            .json(&body)
            .send()
            .await?;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let problem: Value = resp.json().await?;
        if field != "body" {
            assert_eq!(problem["field"], field, "{problem}");
        }
        assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    // A duplicate email is a 409 and writes nothing either.
    let dup = app
        .call(
            Method::POST,
            &path,
            Some(&t.admin),
            Some(json!({"email": "ADMIN@valid.test", "fullName": "Dup"})),
        )
        .await;
    assert_eq!(dup.0, StatusCode::CONFLICT, "{}", dup.1);
    // A tenant with an invalid first admin writes no tenant.
    let tenants = app.count("tenants").await;
    let bad_tenant = app
        .call(
            Method::POST,
            "/api/tenants",
            Some(&app.root),
            Some(json!({"name": "B", "subdomain": "bad",
            "admin": {"email": "a@bad.test", "fullName": "A", "password": "weak"}})),
        )
        .await;
    assert_eq!(bad_tenant.0, StatusCode::BAD_REQUEST);
    assert_eq!(bad_tenant.1["field"], "admin.password");
    let bad_sub = app
        .call(
            Method::POST,
            "/api/tenants",
            Some(&app.root),
            Some(json!({"name": "B", "subdomain": "-x-"})),
        )
        .await;
    assert_eq!(bad_sub.1["field"], "subdomain");
    assert_eq!(app.count("tenants").await, tenants);
    assert_eq!(app.count("users").await, users);
    assert_eq!(app.count("outbox").await, events);
    // Oversized bodies are refused.
    let huge = json!({"values": {"k": "x".repeat(2 * 1024 * 1024)}});
    let (status, _) = app
        .call(
            Method::PUT,
            &format!("/api/tenants/{}/settings", t.id),
            Some(&t.admin),
            Some(huge),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(app.count("outbox").await, events);
    Ok(())
}

#[tokio::test]
async fn fifty_concurrent_updates_get_seq_without_gap_or_duplicate() -> anyhow::Result<()> {
    let app = spawn_wrapper().await?;
    let t = app.create_tenant("busy").await;
    let before = app.outbox(t.id).await.len();
    let path = format!("/api/tenants/{}", t.id);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (http, url, token) = (
            app.http.clone(),
            format!("{}{path}", app.url),
            t.admin.clone(),
        );
        tasks.push(tokio::spawn(async move {
            http.patch(url)
                .bearer_auth(token)
                .json(&json!({"theme": {"n": i}}))
                .send()
                .await
                .map(|r| r.status())
        }));
    }
    for task in tasks {
        assert_eq!(task.await??, StatusCode::OK);
    }
    let outbox = app.outbox(t.id).await;
    assert_eq!(outbox.len(), before + 50);
    assert_seq_gap_free(&outbox);
    let versions: BTreeSet<i64> = outbox[before..]
        .iter()
        .map(|e| e["aggregateVersion"].as_i64().unwrap())
        .collect();
    assert_eq!(
        versions,
        (2..=51).collect(),
        "each update got its own aggregate version"
    );
    let ids: BTreeSet<&str> = outbox
        .iter()
        .map(|e| e["eventId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), outbox.len());
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Anonymous,
    OtherTenantAdmin,
    Member,
    TenantAdmin,
    PlatformAdmin,
}

const EVERYONE: [Who; 5] = [
    Who::Anonymous,
    Who::OtherTenantAdmin,
    Who::Member,
    Who::TenantAdmin,
    Who::PlatformAdmin,
];

/// The authorization matrix: every tenant route, every kind of caller, the expected status.
/// Refused cells must leave the database as it was; cross-tenant cells leave an audit entry.
#[tokio::test]
async fn authorization_matrix_over_every_route() -> anyhow::Result<()> {
    let app = spawn_wrapper().await?;
    let t = app.create_tenant("matrix").await;
    let other = app.create_tenant("other").await;
    let (member_id, member) = app.create_member(&t, "member@matrix.test").await;
    let token = |who: Who| match who {
        Who::Anonymous => None,
        Who::OtherTenantAdmin => Some(other.admin.clone()),
        Who::Member => Some(member.clone()),
        Who::TenantAdmin => Some(t.admin.clone()),
        Who::PlatformAdmin => Some(app.root.clone()),
    };
    use StatusCode as S;
    let (ok, created) = (S::OK, S::CREATED);
    let (unauth, forbid) = (S::UNAUTHORIZED, S::FORBIDDEN);
    // [anonymous, other tenant, member, tenant admin, platform admin]
    let read = [unauth, forbid, ok, ok, ok];
    let admin_write = [unauth, forbid, forbid, ok, ok];
    let admin_create = [unauth, forbid, forbid, created, created];
    let platform = [unauth, forbid, forbid, forbid, ok];
    let base = format!("/api/tenants/{}", t.id);

    let mut n = 0;
    for (i, who) in EVERYONE.into_iter().enumerate() {
        n += 1;
        // Fresh targets for each caller, created by the platform admin.
        let victim = app
            .send_ok(
                Method::POST,
                &format!("{base}/users"),
                &app.root,
                json!({"email": format!("v{n}@matrix.test"), "fullName": "V"}),
            )
            .await;
        let role = app
            .send_ok(
                Method::POST,
                &format!("{base}/roles"),
                &app.root,
                json!({"name": format!("r{n}")}),
            )
            .await;
        let grant = app
            .send_ok(
                Method::POST,
                &format!("{base}/memberships"),
                &app.root,
                json!({"userId": id_of(&victim), "roleId": id_of(&role)}),
            )
            .await;
        let (v, r, m) = (id_of(&victim), id_of(&role), id_of(&grant));
        let cases: Vec<(Method, String, Option<Value>, [StatusCode; 5])> = vec![
            (Method::GET, base.clone(), None, read),
            (
                Method::PATCH,
                base.clone(),
                Some(json!({"name": format!("Matrix {n}")})),
                admin_write,
            ),
            (
                Method::PATCH,
                base.clone(),
                Some(json!({"plan": "enterprise"})),
                platform,
            ),
            (Method::GET, format!("{base}/users"), None, read),
            (
                Method::POST,
                format!("{base}/users"),
                Some(json!({"email": format!("new{n}@matrix.test"), "fullName": "N"})),
                admin_create,
            ),
            (Method::GET, format!("{base}/users/{v}"), None, read),
            (
                Method::PATCH,
                format!("{base}/users/{v}"),
                Some(json!({"fullName": "Renamed"})),
                admin_write,
            ),
            (Method::GET, format!("{base}/roles"), None, read),
            (
                Method::POST,
                format!("{base}/roles"),
                Some(json!({"name": format!("new{n}")})),
                admin_create,
            ),
            (Method::GET, format!("{base}/roles/{r}"), None, read),
            (
                Method::PATCH,
                format!("{base}/roles/{r}"),
                Some(json!({"permissions": ["x.y"]})),
                admin_write,
            ),
            (Method::GET, format!("{base}/memberships"), None, read),
            (
                Method::POST,
                format!("{base}/memberships"),
                Some(json!({"userId": member_id, "roleId": r})),
                admin_create,
            ),
            (
                Method::DELETE,
                format!("{base}/memberships/{m}"),
                None,
                admin_write,
            ),
            (
                Method::DELETE,
                format!("{base}/roles/{r}"),
                None,
                admin_write,
            ),
            (Method::GET, format!("{base}/settings"), None, read),
            (
                Method::PUT,
                format!("{base}/settings"),
                Some(json!({"values": {"n": n}})),
                admin_write,
            ),
            (Method::GET, format!("{base}/audit"), None, admin_write),
            (
                Method::DELETE,
                format!("{base}/users/{v}"),
                None,
                admin_write,
            ),
            (Method::GET, "/api/tenants".into(), None, platform),
            (
                Method::POST,
                "/api/tenants".into(),
                Some(json!({"name": "N", "subdomain": format!("new{n}")})),
                [unauth, forbid, forbid, forbid, created],
            ),
            (
                Method::GET,
                "/auth/me".into(),
                None,
                [unauth, ok, ok, ok, ok],
            ),
        ];
        for (method, path, body, expected) in cases {
            let rows_before = (
                app.count("outbox").await,
                app.count("users").await,
                app.count("roles").await,
            );
            let (status, resp) = app
                .call(method.clone(), &path, token(who).as_deref(), body)
                .await;
            assert_eq!(status, expected[i], "{who:?} {method} {path}: {resp}");
            if !status.is_success() {
                let rows_after = (
                    app.count("outbox").await,
                    app.count("users").await,
                    app.count("roles").await,
                );
                assert_eq!(
                    rows_before, rows_after,
                    "{who:?} {method} {path} was refused but wrote"
                );
            }
        }
    }
    // The other tenant's attempts were audited on the targeted tenant and readable by its admin.
    let audit = app
        .get_ok(
            &format!("{base}/audit?action=cross_tenant_attempt"),
            &t.admin,
        )
        .await;
    let attempts = audit["items"].as_array().unwrap();
    assert!(
        attempts.len() >= 15,
        "{} cross-tenant attempts audited",
        attempts.len()
    );
    assert!(
        attempts
            .iter()
            .all(|a| a["actorId"] == json!(other.admin_id))
    );
    Ok(())
}

#[tokio::test]
async fn service_tokens_reach_no_tenant_route() -> anyhow::Result<()> {
    let app = spawn_wrapper().await?;
    let t = app.create_tenant("svc").await;
    wrapper::startup::upsert_service_client(&app.db.pool, "crm", "a-long-enough-service-secret")
        .await?;
    let (status, _) = app
        .call(
            Method::POST,
            "/auth/service-token",
            None,
            Some(json!({"clientId": "crm", "clientSecret": "wrong-secret-wrong-secret"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = app
        .call(
            Method::POST,
            "/auth/service-token",
            None,
            Some(json!({"clientId": "crm", "clientSecret": "a-long-enough-service-secret"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let service = body["accessToken"].as_str().unwrap();
    for path in [
        format!("/api/tenants/{}", t.id),
        format!("/api/tenants/{}/users", t.id),
        "/auth/me".into(),
    ] {
        let (status, _) = app.call(Method::GET, &path, Some(service), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
    }
    Ok(())
}

fn forge(header: Value, claims: &Claims, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let h = URL_SAFE_NO_PAD.encode(header.to_string());
    let c = URL_SAFE_NO_PAD.encode(serde_json::to_string(claims).unwrap());
    let signing_input = format!("{h}.{c}");
    let sig = URL_SAFE_NO_PAD.encode(sign(signing_input.as_bytes()));
    format!("{signing_input}.{sig}")
}

#[tokio::test]
async fn forged_expired_and_unsigned_tokens_are_refused() -> anyhow::Result<()> {
    let app = spawn_wrapper().await?;
    let t = app.create_tenant("tokens").await;
    let kid = app.state.keys.jwks().await["keys"][0]["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        iss: app.state.keys.issuer().to_owned(),
        sub: t.admin_id.to_string(),
        iat: now,
        exp: now + 600,
        jti: Uuid::now_v7().to_string(),
        kind: TokenKind::User,
        tid: Some(t.id),
        tsd: None,
        email: None,
        app: None,
    };
    let path = format!("/api/tenants/{}", t.id);
    // The genuine token works.
    let genuine = app.state.keys.sign(&claims).await?;
    assert_eq!(
        app.call(Method::GET, &path, Some(&genuine), None).await.0,
        StatusCode::OK
    );

    // Signed by another Ed25519 key under the real kid.
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let stranger = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let other_key = forge(
        json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}),
        &claims,
        |m| stranger.sign(m).as_ref().to_vec(),
    );
    // alg none, no signature.
    let unsigned = forge(
        json!({"alg": "none", "typ": "JWT", "kid": kid}),
        &claims,
        |_| Vec::new(),
    );
    // HS256 keyed with the public key (algorithm confusion).
    let public = URL_SAFE_NO_PAD.decode(
        app.state.keys.jwks().await["keys"][0]["x"]
            .as_str()
            .unwrap(),
    )?;
    let hmac_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &public);
    let confused = forge(
        json!({"alg": "HS256", "typ": "JWT", "kid": kid}),
        &claims,
        |m| ring::hmac::sign(&hmac_key, m).as_ref().to_vec(),
    );
    // Expired, correctly signed.
    let expired = app
        .state
        .keys
        .sign(&Claims {
            iat: now - 7200,
            exp: now - 3600,
            ..claims.clone()
        })
        .await?;
    // Tampered claims: the genuine signature over other claims.
    let mut parts: Vec<&str> = genuine.split('.').collect();
    let elevated = URL_SAFE_NO_PAD.encode(serde_json::to_string(&Claims {
        tid: None,
        ..claims.clone()
    })?);
    parts[1] = &elevated;
    let tampered = parts.join(".");

    for (name, token) in [
        ("other key", other_key),
        ("alg none", unsigned),
        ("HS256 confusion", confused),
        ("expired", expired),
        ("tampered", tampered),
        ("garbage", "abc.def.ghi".into()),
    ] {
        let (status, body) = app.call(Method::GET, &path, Some(&token), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {body}");
    }

    // A tenant-A token on tenant-B paths.
    let b = app.create_tenant("tokensb").await;
    for path in [
        format!("/api/tenants/{}", b.id),
        format!("/api/tenants/{}/users", b.id),
        format!("/api/tenants/{}/users/{}", b.id, b.admin_id),
    ] {
        assert_eq!(
            app.call(Method::GET, &path, Some(&t.admin), None).await.0,
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn login_sets_the_parent_domain_cookie_and_logout_clears_it() -> anyhow::Result<()> {
    let app = spawn_wrapper().await?;
    let t = app.create_tenant("cookie").await;
    let resp = app
        .http
        .post(format!("{}/auth/login", app.url))
        .header("host", "cookie.yourapp.test")
        .json(&json!({"email": "admin@cookie.test", "password": PASSWORD}))
        .send()
        .await?;
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "the tenant came from the Host header"
    );
    let cookie = resp.headers()["set-cookie"].to_str()?.to_owned();
    for part in [
        "tsync_session=",
        "HttpOnly",
        "SameSite=Lax",
        "Domain=.yourapp.test",
        "Path=/",
    ] {
        assert!(cookie.contains(part), "{cookie} lacks {part}");
    }
    let token = cookie
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("tsync_session=");
    let me = app
        .http
        .get(format!("{}/auth/me", app.url))
        .header("cookie", format!("tsync_session={token}"))
        .send()
        .await?;
    assert_eq!(me.status(), StatusCode::OK);
    let me: Value = me.json().await?;
    assert_eq!(me["tenantId"], json!(t.id));
    assert_eq!(me["tenantAdmin"], true);

    let out = app
        .http
        .post(format!("{}/auth/logout", app.url))
        .send()
        .await?;
    let cleared = out.headers()["set-cookie"].to_str()?;
    assert!(
        cleared.contains("Max-Age=0") && cleared.contains("Domain=.yourapp.test"),
        "{cleared}"
    );

    // Wrong password: 401, audited as a failure on the tenant.
    let (status, _) = app.call(Method::POST, "/auth/login", None, Some(json!({"email": "admin@cookie.test", "password": "Wrong-Password-1", "tenant": "cookie"}))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let audit = app
        .get_ok(
            &format!("/api/tenants/{}/audit?action=login", t.id),
            &t.admin,
        )
        .await;
    let outcomes: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert!(
        outcomes.contains(&"failure") && outcomes.contains(&"success"),
        "{outcomes:?}"
    );
    // A deactivated user's still-valid token stops working at once.
    let (bob, bob_token) = app.create_member(&t, "bob@cookie.test").await;
    app.send_ok(
        Method::PATCH,
        &format!("/api/tenants/{}/users/{bob}", t.id),
        &t.admin,
        json!({"active": false}),
    )
    .await;
    assert_eq!(
        app.call(Method::GET, "/auth/me", Some(&bob_token), None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    Ok(())
}

#[tokio::test]
async fn health_metrics_jwks_and_openapi_are_served() -> anyhow::Result<()> {
    let app = spawn_wrapper().await?;
    let (status, health) = app.call(Method::GET, "/health", None, None).await;
    assert_eq!(status, StatusCode::OK, "{health}");
    assert_eq!(health["database"], "ok");
    assert_eq!(health["redis"], "ok");
    let metrics = app
        .http
        .get(format!("{}/metrics", app.url))
        .send()
        .await?
        .text()
        .await?;
    assert!(metrics.contains("tsync_wrapper_logins_total"), "{metrics}");
    let jwks = app.get_ok("/.well-known/jwks.json", &app.root).await;
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(jwks["keys"][0]["alg"], "EdDSA");

    // Every route the OpenAPI document lists is routed (no "no such route" 404 or 405).
    let doc = app.get_ok("/api/openapi.json", &app.root).await;
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(
        paths
            .values()
            .map(|p| p.as_object().unwrap().len())
            .sum::<usize>(),
        wrapper::api::openapi::operations().len()
    );
    for (path, ops) in paths {
        let concrete = path
            .split('/')
            .map(|seg| {
                if seg.starts_with('{') {
                    if seg == "{host}" {
                        "nohost.test".to_owned()
                    } else {
                        Uuid::nil().to_string()
                    }
                } else {
                    seg.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        for method in ops.as_object().unwrap().keys() {
            let method: Method = method.to_uppercase().parse()?;
            let (status, body) = app
                .call(method.clone(), &concrete, Some(&app.root), Some(json!({})))
                .await;
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_ne!(body["detail"], "no such route", "{method} {path}");
        }
    }
    let (status, body) = app.call(Method::GET, "/api/nope", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["detail"], "no such route");
    Ok(())
}

/// Every route is served through `OpenApiRouter::routes`, which documents it: no source file
/// of the wrapper registers a route any other way (`Router::route`, `route_service`, `nest`).
/// And the document has what clients and the fuzzer need: bodies, parameters, problems.
#[test]
fn every_served_route_is_in_the_openapi_document() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wrapper/src");
    let mut stack = vec![root];
    let mut offenders = Vec::new();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for needle in [".route(", ".route_service(", ".nest(", ".nest_service("] {
                    if text.contains(needle) {
                        offenders.push(format!("{} uses {needle}", path.display()));
                    }
                }
            }
        }
    }
    assert!(offenders.is_empty(), "undocumented routes: {offenders:?}");

    let doc = wrapper::api::openapi::document();
    let ops = wrapper::api::openapi::operations();
    for (method, path) in [
        ("get", "/api/credits/balance"),
        ("post", "/api/credits/consume"),
        ("put", "/api/tenants/{tenant_id}/credit-configs"),
        ("get", "/api/sync/tenant/{tenant_id}"),
        ("get", "/api/sync/tenant/{tenant_id}/digest"),
        ("post", "/api/audit/events"),
        ("post", "/api/tenants/{tenant_id}/domain/verify"),
    ] {
        assert!(
            ops.contains(&(method.to_owned(), path.to_owned())),
            "{method} {path} is missing"
        );
    }
    let create_user = &doc["paths"]["/api/tenants/{tenant_id}/users"]["post"];
    assert!(
        create_user["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            .as_str()
            .is_some_and(|r| r.ends_with("/CreateUser")),
        "{create_user}"
    );
    assert_eq!(
        create_user["parameters"][0]["name"], "tenant_id",
        "{create_user}"
    );
    assert_eq!(
        create_user["responses"]["400"]["$ref"],
        "#/components/responses/Problem400"
    );
    assert_eq!(doc["paths"]["/health"]["get"]["security"], json!([{}]));
    let ids: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|ops| ops.as_object().unwrap().values())
        .map(|op| op["operationId"].as_str().unwrap())
        .collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "operation ids repeat: {ids:?}");
    assert!(doc["components"]["schemas"]["UserState"].is_object());
}

#[test]
#[ignore = "prints the OpenAPI document"]
fn print_openapi() {
    println!(
        "{}",
        serde_json::to_string_pretty(wrapper::api::openapi::document()).unwrap()
    );
}

/// "No tenant at this host" is cached briefly: a tenant created by another replica (here: a
/// second wrapper on the same database, whose cache this one never hears about) is found within
/// the negative TTL, not after the full domain-cache TTL.
#[tokio::test]
async fn a_host_unknown_a_moment_ago_resolves_soon_after_another_replica_creates_it()
-> anyhow::Result<()> {
    let app = spawn_wrapper_with(|s| s.domain_cache_ttl_secs = 3600).await?;
    let domains = &app.state.domains;
    assert!(
        domains
            .lookup(&app.db.pool, "later.yourapp.test")
            .await?
            .is_none()
    );
    // Another replica creates the tenant: this replica's cache is not invalidated.
    sqlx::query(
        "insert into tenants (id, name, subdomain, partition) values ($1, 'Later', 'later', 0)",
    )
    .bind(Uuid::now_v7())
    .execute(&app.db.pool)
    .await?;
    // Within 10 s: the hour-long TTL of positive answers does not apply to "no tenant".
    tsync_e2e::eventually(std::time::Duration::from_secs(10), || async {
        domains
            .lookup(&app.db.pool, "later.yourapp.test")
            .await
            .ok()
            .flatten()
            .is_some()
    })
    .await?;
    Ok(())
}
