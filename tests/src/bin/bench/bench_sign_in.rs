//! `bench sign-in`: password sign-ins against the real wrapper binary as a process, 200 at once
//! to one account from one address, round after round: throughput, latency, the answers, and
//! the process's resident memory (current and peak, from /proc). Run it against two builds
//! (`--wrapper-bin`) to compare them in one run: the bound on password hashing trades a 503
//! for hundreds of megabytes.
//!
//! The throttle's limits are raised for the run (`WRAPPER_SIGN_IN_*_FAILURES`), so every
//! attempt reaches the password check: this measures hashing and its bookkeeping, not the
//! throttle's early 429s.

use std::{
    collections::BTreeMap,
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::json;
use sync_testkit::*;

use super::flag;

/// Resident memory of `pid` in MiB: (now, peak), from /proc/<pid>/status.
pub(crate) fn rss(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

/// The wrapper binary `bin` as a process on database `db` (its platform admin
/// `root@bench.test` with `password`, and `extra` variables), once it answers `/health`; its
/// URL. Killed when the child is dropped.
pub(crate) async fn start_wrapper(
    bin: &str,
    db: &TestDatabase,
    password: &str,
    extra: &[(&str, String)],
) -> anyhow::Result<(tokio::process::Child, String)> {
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let child = tokio::process::Command::new(bin)
        .env("DATABASE_URL", &db.url)
        .env("REDIS_URL", redis_url())
        .env("TSYNC_NAMESPACE", redis_namespace())
        .env("WRAPPER_LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "WRAPPER_KEY_ENCRYPTION_KEYS",
            tsync_e2e::wrapper_app::TEST_KEK,
        )
        .env("WRAPPER_COOKIE_SECURE", "false")
        .env("WRAPPER_BOOTSTRAP_ADMIN_EMAIL", "root@bench.test")
        .env("WRAPPER_BOOTSTRAP_ADMIN_PASSWORD", password)
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(60), || async {
        http.get(format!("{url}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await?;
    Ok((child, url))
}

pub async fn sign_in(args: &[String]) -> anyhow::Result<()> {
    let bin = flag(args, "--wrapper-bin").unwrap_or("target/release/wrapper");
    let label = flag(args, "--label").unwrap_or(bin);
    let concurrency: usize = flag(args, "--concurrency")
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    let rounds: usize = flag(args, "--rounds")
        .and_then(|n| n.parse().ok())
        .unwrap_or(5);
    let db = fresh_database().await?;
    let password = "Bench-Sign-In-Pass-1";
    let extra = [
        ("WRAPPER_SIGN_IN_ACCOUNT_FAILURES", "100000000".to_owned()),
        ("WRAPPER_SIGN_IN_SOURCE_FAILURES", "100000000".to_owned()),
        (
            "WRAPPER_DB_MAX_CONNECTIONS",
            std::env::var("BENCH_DB_CONNECTIONS").unwrap_or_else(|_| "50".into()),
        ),
    ];
    let (mut child, url) = start_wrapper(bin, &db, password, &extra).await?;
    let pid = child.id().unwrap_or(0);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let login = |body: serde_json::Value| {
        let http = http.clone();
        let url = format!("{url}/auth/login");
        async move {
            let started = Instant::now();
            let status = match http.post(url).json(&body).send().await {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            };
            (status, started.elapsed())
        }
    };
    let body = json!({"email": "root@bench.test", "password": password});
    let (status, _) = login(body.clone()).await;
    anyhow::ensure!(
        status == 200,
        "bench sign-in: the first sign-in answered {status}"
    );
    let (idle, _) = rss(pid);
    println!(
        "bench sign-in [{label}]: {concurrency} concurrent password sign-ins to one account from one address, {rounds} rounds"
    );
    println!("  rss after start and one sign-in: {idle:.0} MiB");
    for round in 1..=rounds {
        let started = Instant::now();
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| tokio::spawn(login(body.clone())))
            .collect();
        let mut statuses = BTreeMap::new();
        let mut ok_latency = Vec::new();
        for task in tasks {
            let (status, took) = task.await?;
            *statuses.entry(status).or_insert(0) += 1;
            if status == 200 {
                ok_latency.push(took);
            }
        }
        let wall = started.elapsed();
        ok_latency.sort();
        let pct = |p: f64| {
            ok_latency
                .get(
                    ((ok_latency.len() as f64 * p) as usize)
                        .min(ok_latency.len().saturating_sub(1)),
                )
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        let (now, peak) = rss(pid);
        println!(
            "  round {round}: {:.2} s, {:.0} sign-ins/s succeeded, answers {statuses:?}, ok p50 {:.0} ms p99 {:.0} ms, rss {now:.0} MiB (peak {peak:.0} MiB)",
            wall.as_secs_f64(),
            ok_latency.len() as f64 / wall.as_secs_f64(),
            pct(0.5),
            pct(0.99),
        );
    }
    // One sign-in at a time afterwards: what the bound costs an idle system (nothing).
    let mut single = Vec::new();
    for _ in 0..20 {
        let (status, took) = login(body.clone()).await;
        anyhow::ensure!(status == 200, "single sign-in answered {status}");
        single.push(took.as_secs_f64() * 1000.0);
    }
    single.sort_by(f64::total_cmp);
    println!(
        "  one at a time (20): p50 {:.0} ms, max {:.0} ms",
        single[10], single[19]
    );
    if let Some(pid) = child.id() {
        // SIGTERM: the wrapper stops gracefully.
        let _ = std::process::Command::new("kill")
            .arg(pid.to_string())
            .status();
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    let _ = child.kill().await;
    Ok(())
}
