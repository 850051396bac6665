//! Smoke tests: the servers do what the rest of the project relies on, through the same client
//! crates the project uses.

use std::{collections::HashMap, time::Duration};

use chrono::{TimeZone, Utc};
use fred::{prelude::*, types::streams::XReadResponse};
use mongodb::{
    IndexModel,
    bson::{Document, doc},
    options::IndexOptions,
};
use sync_sdk::contract::{
    CONTRACT_VERSION, Envelope, Event, StreamKeys, TenantState, TenantStatus,
};
use tsync_e2e::*;
use uuid::Uuid;

fn sample_envelope(tenant_id: Uuid) -> Envelope {
    Envelope {
        event_id: Uuid::now_v7(),
        event_version: CONTRACT_VERSION,
        tenant_id,
        seq: 1,
        aggregate_id: tenant_id.to_string(),
        aggregate_version: 1,
        occurred_at: Utc.with_ymd_and_hms(2025, 10, 4, 15, 30, 0).unwrap(),
        source: "wrapper".into(),
        correlation_id: Some("smoke".into()),
        traceparent: None,
        event: Event::TenantCreated(TenantState {
            id: tenant_id,
            name: "Acme".into(),
            subdomain: "acme".into(),
            domain: None,
            plan: "pro".into(),
            features: vec!["crm".into()],
            theme: serde_json::json!({}),
            status: TenantStatus::Active,
        }),
    }
}

#[tokio::test]
async fn envelope_round_trips_through_a_real_redis_stream() -> anyhow::Result<()> {
    let redis = redis_client(&redis_url()).await?;
    let keys = StreamKeys::new(redis_namespace(), 8).unwrap();
    let original = sample_envelope(Uuid::now_v7());
    let stream = keys.events_for(original.tenant_id);

    let _: () = redis.xgroup_create(&stream, "crm", "$", true).await?;
    let id: String = redis
        .xadd(&stream, false, None::<()>, "*", original.to_stream_fields())
        .await?;

    let reply: XReadResponse<String, String, String, String> = redis
        .xreadgroup_map("crm", "smoke-1", Some(10), Some(2_000), false, &stream, ">")
        .await?;
    let entries = &reply[&stream];
    assert_eq!(entries.len(), 1);
    let (read_id, fields): &(String, HashMap<String, String>) = &entries[0];
    assert_eq!(read_id, &id);
    let decoded = Envelope::from_stream_fields(fields.iter())?;
    assert_eq!(decoded, original);

    let acked: u64 = redis.xack(&stream, "crm", read_id.as_str()).await?;
    assert_eq!(acked, 1);
    Ok(())
}

#[tokio::test]
async fn private_redis_server_stops_and_restarts_on_the_same_port() -> anyhow::Result<()> {
    let mut server = RedisServer::start().await?;
    let port = server.port();
    server.stop().await?;
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "the stopped server still accepts connections"
    );
    server.restart().await?;
    let client = redis_client(&server.url()).await?;
    let _: () = client.set("k", "v", None, None, false).await?;
    let v: String = client.get("k").await?;
    assert_eq!(v, "v");
    Ok(())
}

#[tokio::test]
async fn mongo_wire_server_supports_what_the_stores_need() -> anyhow::Result<()> {
    let db = fresh_mongo().await?;
    db.run_command(doc! {"ping": 1}).await?;
    let users = db.collection::<Document>("users");

    // A unique index rejects a duplicate.
    users
        .create_index(
            IndexModel::builder()
                .keys(doc! {"tenantId": 1, "email": 1})
                .options(IndexOptions::builder().unique(true).build())
                .build(),
        )
        .await?;
    users
        .insert_many([
            doc! {"_id": "u1", "tenantId": "t1", "email": "a@x.test", "version": 1_i64},
            doc! {"_id": "u2", "tenantId": "t1", "email": "b@x.test", "version": 1_i64},
            doc! {"_id": "u3", "tenantId": "t1", "email": "c@x.test", "version": 1_i64},
        ])
        .await?;
    let dup = users
        .insert_one(doc! {"_id": "u4", "tenantId": "t1", "email": "a@x.test"})
        .await;
    assert!(dup.is_err(), "the unique index accepted a duplicate");

    // A version-filtered update applies a newer version and ignores a stale one.
    let newer = users
        .update_one(
            doc! {"_id": "u1", "version": {"$lt": 3_i64}},
            doc! {"$set": {"email": "a3@x.test", "version": 3_i64}},
        )
        .await?;
    assert_eq!(newer.modified_count, 1);
    let stale = users
        .update_one(
            doc! {"_id": "u1", "version": {"$lt": 2_i64}},
            doc! {"$set": {"email": "a2@x.test", "version": 2_i64}},
        )
        .await?;
    assert_eq!(stale.modified_count, 0);
    let u1 = users.find_one(doc! {"_id": "u1"}).await?.unwrap();
    assert_eq!(u1.get_str("email")?, "a3@x.test");

    // find with sort and limit.
    let mut cursor = users
        .find(doc! {"tenantId": "t1"})
        .sort(doc! {"email": -1})
        .limit(2)
        .await?;
    let mut emails = Vec::new();
    while cursor.advance().await? {
        emails.push(cursor.deserialize_current()?.get_str("email")?.to_owned());
    }
    assert_eq!(emails, ["c@x.test", "b@x.test"]);

    // A transaction commits two writes in two collections together.
    let processed = db.collection::<Document>("processed_events");
    processed.insert_one(doc! {"_id": "seed"}).await?; // collections exist before the transaction
    let mut session = db.client().start_session().await?;
    session.start_transaction().await?;
    users
        .update_one(doc! {"_id": "u2"}, doc! {"$set": {"version": 2_i64}})
        .session(&mut session)
        .await?;
    processed
        .insert_one(doc! {"_id": "evt-1"})
        .session(&mut session)
        .await?;
    session.commit_transaction().await?;
    assert_eq!(
        users
            .find_one(doc! {"_id": "u2"})
            .await?
            .unwrap()
            .get_i64("version")?,
        2
    );
    assert!(processed.find_one(doc! {"_id": "evt-1"}).await?.is_some());

    // An aborted transaction leaves nothing.
    let mut session = db.client().start_session().await?;
    session.start_transaction().await?;
    processed
        .insert_one(doc! {"_id": "evt-2"})
        .session(&mut session)
        .await?;
    session.abort_transaction().await?;
    assert!(processed.find_one(doc! {"_id": "evt-2"}).await?.is_none());

    db.drop().await?;
    Ok(())
}

#[tokio::test]
async fn migrations_run_on_a_fresh_database() -> anyhow::Result<()> {
    let db = fresh_database().await?;
    wrapper::MIGRATOR.run(&db.pool).await?;
    // Running them again is a no-op.
    wrapper::MIGRATOR.run(&db.pool).await?;

    let tables: Vec<String> = sqlx::query_scalar(
        "select table_name::text from information_schema.tables
         where table_schema = 'public' and table_name = any($1) order by 1",
    )
    .bind(vec!["outbox", "tenants", "users"])
    .fetch_all(&db.pool)
    .await?;
    assert_eq!(tables, ["outbox", "tenants", "users"]);

    let one: i32 = sqlx::query_scalar("select $1::int + 1")
        .bind(41)
        .fetch_one(&db.pool)
        .await?;
    assert_eq!(one, 42);
    Ok(())
}

#[tokio::test]
async fn eventually_fails_after_its_deadline() {
    let started = std::time::Instant::now();
    let result = eventually(Duration::from_millis(100), || async { false }).await;
    assert!(result.is_err());
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[tokio::test]
async fn a_router_is_served_on_a_random_port() -> anyhow::Result<()> {
    let router = axum::Router::new().route("/ping", axum::routing::get(|| async { "pong" }));
    let server = serve(router).await?;
    assert_ne!(server.addr.port(), 0);
    let mut stream = tokio::net::TcpStream::connect(server.addr).await?;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    assert!(body.ends_with("pong"), "{body}");
    Ok(())
}
