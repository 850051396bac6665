//! The `tsync` operator CLI against a real Redis: lag, and the dead-letter commands.
#![cfg(feature = "cli")]

use std::process::Command;

use fred::prelude::*;
use sync_sdk::{contract::StreamKeys, dlq};
use sync_testkit::*;
use uuid::Uuid;

fn tsync(ns: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tsync"))
        .args(args)
        .env("REDIS_URL", redis_url())
        .env("TSYNC_NAMESPACE", ns)
        .output()
        .expect("tsync runs");
    assert!(
        out.status.success(),
        "tsync {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn tsync_lists_redrives_and_purges_dead_letters_and_shows_lag() -> anyhow::Result<()> {
    let redis = redis_client(&redis_url()).await?;
    let ns = redis_namespace();
    let keys = StreamKeys::new(ns.clone(), 8).unwrap();
    let tenant = Uuid::now_v7();
    let event = user_event(tenant, Uuid::now_v7(), 1, 1, "dead@x.test");
    let stream = keys.events_for(tenant);
    let _: () = redis.xgroup_create(&stream, "crm", "$", true).await?;
    let fields: std::collections::HashMap<String, String> = event
        .to_stream_fields()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    for error in ["boom one", "boom two"] {
        let letter = dlq::DeadLetter::new(&stream, "1-1", &fields, error.into(), 3);
        dlq::push(&redis, &keys, "crm", &letter).await?;
    }

    let listed = tsync(&ns, &["dlq", "--app", "crm", "list"]);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(
        listed.contains("user.created") && listed.contains("boom one"),
        "{listed}"
    );
    let first_id = listed.split_whitespace().next().unwrap().to_owned();
    let shown = tsync(&ns, &["dlq", "--app", "crm", "show", &first_id]);
    assert!(shown.contains("\"entryId\": \"1-1\""), "{shown}");

    let out = tsync(
        &ns,
        &[
            "dlq",
            "--app",
            "crm",
            "redrive",
            "--tenant",
            &tenant.to_string(),
        ],
    );
    assert!(out.contains("re-driven: 2"), "{out}");
    let redriven: Vec<(String, std::collections::HashMap<String, String>)> =
        redis.xrange(&stream, "-", "+", None).await?;
    assert_eq!(redriven.len(), 2, "both back on their stream");
    assert_eq!(
        sync_sdk::contract::Envelope::from_stream_fields(redriven[0].1.iter())?,
        event
    );

    let lag = tsync(&ns, &["lag"]);
    assert!(lag.contains("crm"), "{lag}");
    let row = lag.lines().find(|l| l.contains("crm")).unwrap();
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>()[2..],
        ["2", "0", "2"],
        "{row}"
    );

    let letter = dlq::DeadLetter::new(&stream, "1-2", &fields, "again".into(), 3);
    dlq::push(&redis, &keys, "crm", &letter).await?;
    let refused = Command::new(env!("CARGO_BIN_EXE_tsync"))
        .args(["dlq", "--app", "crm", "purge"])
        .env("REDIS_URL", redis_url())
        .env("TSYNC_NAMESPACE", &ns)
        .output()?;
    assert!(!refused.status.success(), "purging everything needs --all");
    assert!(tsync(&ns, &["dlq", "--app", "crm", "purge", "--all"]).contains("purged: 1"));
    assert_eq!(
        tsync(&ns, &["dlq", "--app", "crm", "list"]).lines().count(),
        0
    );
    Ok(())
}
