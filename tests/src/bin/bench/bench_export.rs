//! `bench export`: a tenant's export with the real wrapper binary as a process. The tenant gets
//! `--users` users (100,000 by default, inserted with SQL), its admin requests an export (no app
//! is registered, so the wrapper packages it at its next lifecycle round), waits until it is
//! done, then downloads the archive as a stream. Printed: the archive's size, how long packaging
//! and the download took, and the process's resident memory (now and peak, from /proc) before
//! the export, after packaging and after the download. Run it against two builds
//! (`--wrapper-bin`) to compare them.

use std::time::{Duration, Instant};

use serde_json::json;
use sync_testkit::*;

use super::{
    bench_sign_in::{rss, start_wrapper},
    flag,
};

pub async fn export(args: &[String]) -> anyhow::Result<()> {
    let bin = flag(args, "--wrapper-bin").unwrap_or("target/release/wrapper");
    let label = flag(args, "--label").unwrap_or(bin);
    let users: i64 = flag(args, "--users")
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let db = fresh_database().await?;
    let password = "Bench-Export-Pass-1";
    let extra = [("WRAPPER_LIFECYCLE_RESEND_SECS", "1".to_owned())];
    let (mut child, url) = start_wrapper(bin, &db, password, &extra).await?;
    let pid = child.id().unwrap_or(0);
    let http = reqwest::Client::new();
    let sign_in = |body: serde_json::Value| {
        let http = http.clone();
        let url = format!("{url}/auth/login");
        async move {
            let reply: serde_json::Value = http.post(url).json(&body).send().await?.json().await?;
            anyhow::Ok(reply["token"].as_str().unwrap_or_default().to_owned())
        }
    };
    let root = sign_in(json!({"email": "root@bench.test", "password": password})).await?;
    let tenant: serde_json::Value = http
        .post(format!("{url}/api/tenants"))
        .bearer_auth(&root)
        .json(
            &json!({"name": "Big", "subdomain": "big", "plan": "pro", "features": [],
            "admin": {"email": "admin@big.test", "fullName": "Big Admin", "password": password}}),
        )
        .send()
        .await?
        .json()
        .await?;
    let tenant_id: uuid::Uuid = serde_json::from_value(tenant["id"].clone())?;
    let admin =
        sign_in(json!({"email": "admin@big.test", "password": password, "tenant": "big"})).await?;
    let started = Instant::now();
    sqlx::query(
        "insert into users (id, tenant_id, email, full_name, email_verified, active,
                            is_platform_admin, version, created_at, updated_at)
         select gen_random_uuid(), $1, 'user' || g || '@big.test', 'Bench User ' || g, false,
                true, false, 1, now(), now()
         from generate_series(1, $2) g",
    )
    .bind(tenant_id)
    .bind(users)
    .execute(&db.pool)
    .await?;
    println!(
        "bench export [{label}]: a tenant of {users} users (inserted in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    let (now, peak) = rss(pid);
    println!("  rss before the export: {now:.0} MiB (peak {peak:.0} MiB)");

    let started = Instant::now();
    let operation: serde_json::Value = http
        .post(format!("{url}/api/tenants/{tenant_id}/export"))
        .bearer_auth(&admin)
        .send()
        .await?
        .json()
        .await?;
    let location = format!(
        "{url}/api/operations/{}",
        operation["id"].as_str().unwrap_or_default()
    );
    let done = eventually_some(Duration::from_secs(600), || async {
        let op: serde_json::Value = http
            .get(&location)
            .bearer_auth(&admin)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (op["status"] == "done").then_some(op)
    })
    .await?;
    let packaged = started.elapsed();
    let (now, peak) = rss(pid);
    println!(
        "  packaged in {:.1} s ({} bytes, {} users exported): rss {now:.0} MiB (peak {peak:.0} MiB)",
        packaged.as_secs_f64(),
        done["result"]["archiveBytes"],
        done["result"]["files"]["wrapper/users.jsonl"],
    );
    let started = Instant::now();
    let mut response = http
        .get(format!("{location}/archive"))
        .bearer_auth(&admin)
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "download: {}",
        response.status()
    );
    let mut bytes = 0usize;
    while let Some(chunk) = response.chunk().await? {
        bytes += chunk.len();
    }
    let (now, peak) = rss(pid);
    println!(
        "  downloaded {bytes} bytes in {:.1} s: rss {now:.0} MiB (peak {peak:.0} MiB)",
        started.elapsed().as_secs_f64()
    );
    child.kill().await.ok();
    Ok(())
}
