//! `fuzz`: run Schemathesis against a running wrapper, holding the API to its OpenAPI document.
//!
//! Starts a wrapper on a fresh database (the test harness), prepares a tenant with a user, a role
//! and credits, then runs `st run` (installed by `scripts/services`, path in `SCHEMATHESIS`)
//! with a platform admin's token for at most `TSYNC_FUZZ_SECS` seconds (default 120). Checked:
//! no 5xx, and every response conforms to the document (status code, content type, headers,
//! body schema); invalid input is refused. Prints the counts; exits non-zero on any failure.
//! `POST /auth/logout` is left out: it revokes the token the run authenticates with.
//! `scripts/test` runs it after the tests.

use std::{process::Stdio, time::Instant};

use anyhow::Context;
use reqwest::Method;
use serde_json::{Value, json};
use tsync_e2e::wrapper_app::spawn_wrapper;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Every panic of the wrapper (a handler that panics answers nothing: the connection just
    // closes) is counted, and fails the run.
    static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let report_panic = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        report_panic(info);
    }));
    let outcome = fuzz().await;
    let panics = PANICS.load(std::sync::atomic::Ordering::SeqCst);
    anyhow::ensure!(panics == 0, "the wrapper panicked {panics} time(s) (above)");
    outcome
}

async fn fuzz() -> anyhow::Result<()> {
    let st = std::env::var("SCHEMATHESIS")
        .context("SCHEMATHESIS is not set: run `eval \"$(scripts/services)\"` first")?;
    let secs: u64 = std::env::var("TSYNC_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let app = spawn_wrapper().await?;
    let acme = app.create_tenant("acme").await;
    let (member, _) = app.create_member(&acme, "member@acme.test").await;
    let role = app
        .send_ok(
            Method::POST,
            &format!("/api/tenants/{}/roles", acme.id),
            &app.root,
            json!({"name": "viewer", "permissions": ["crm.read"]}),
        )
        .await;
    app.fund_app(&acme, "crm", 1_000).await;
    // Real ids for the path and query parameters, so generated requests reach the handlers
    // instead of stopping at "not found".
    let config = std::env::temp_dir().join(format!("tsync-fuzz-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        format!(
            "[parameters]\n\"path.tenant_id\" = \"{t}\"\n\"path.user_id\" = \"{member}\"\n\
             \"path.role_id\" = \"{role}\"\n\"path.host\" = \"acme.yourapp.test\"\n\
             \"query.tenantId\" = \"{t}\"\n",
            t = acme.id,
            role = role["id"].as_str().unwrap_or_default(),
        ),
    )?;

    let report = std::env::temp_dir().join(format!("tsync-fuzz-{}.json", std::process::id()));
    let started = Instant::now();
    // Schemathesis keeps a cache in its working directory: one of its own per run, outside the
    // repository, so no run replays another's.
    let workdir = std::env::temp_dir().join(format!("tsync-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&workdir)?;
    let status = tokio::process::Command::new(&st)
        .current_dir(&workdir)
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("{}/api/openapi.json", app.url))
        .args(["--url", &app.url])
        .args(["--header", &format!("Authorization: Bearer {}", app.root)])
        .args(["--max-time", &secs.to_string()])
        .args(["--workers", "2", "--seed", "14"])
        // Signing out revokes the token the run authenticates with (tested in sso.rs).
        .args(["--exclude-path", "/auth/logout"])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance,negative_data_rejection",
        ])
        .args(["--report", "json", "--report-json-path"])
        .arg(&report)
        .args(["--output-truncate", "true", "--no-color"])
        .stdin(Stdio::null())
        .status()
        .await
        .with_context(|| format!("running {st}"))?;
    let summary: Value = std::fs::read(&report)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let _ = std::fs::remove_file(&report);
    let _ = std::fs::remove_file(&config);
    let _ = std::fs::remove_dir_all(&workdir);
    let count = |v: &Value| {
        v.as_array().map_or(0, |a| {
            a.iter()
                .map(|f| f["count"].as_u64().unwrap_or(1))
                .sum::<u64>()
        })
    };
    let failures = count(&summary["failures"]);
    let errors = count(&summary["errors"]);
    println!(
        "fuzz: {:.0} s, {} operations, {} requests generated, {} with failures; {} failures (5xx or \
         responses that violate the document), {} tool errors",
        started.elapsed().as_secs_f64(),
        summary["operations"]["tested"],
        summary["test_cases"]["generated"],
        summary["test_cases"]["with_failures"],
        failures,
        errors,
    );
    anyhow::ensure!(
        summary.is_object(),
        "Schemathesis wrote no report (exit {:?})",
        status.code()
    );
    anyhow::ensure!(failures == 0, "Schemathesis found failures (above)");
    // A connection the server closed or refused is not the generator's fault: the server
    // crashed or hung on that request (a panic closes the connection without an answer).
    let network = summary["errors"].as_array().map_or(0, |errors| {
        errors
            .iter()
            .filter(|e| {
                let text = e.to_string();
                text.contains("Network Error") || text.contains("Connection")
            })
            .count()
    });
    anyhow::ensure!(
        network == 0,
        "the wrapper dropped {network} connection(s) (above): a crash or a hang is a failure"
    );
    if errors > 0 {
        // Crashes of the generator itself (e.g. a Hypothesis internal error) are not responses
        // of the API; they are printed above and do not fail the run.
        eprintln!("fuzz: Schemathesis reported {errors} internal errors (above); not API failures");
    }
    Ok(())
}
