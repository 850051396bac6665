//! The SDK guide's app as a new app developer makes it: the test writes a package of its own
//! in a temporary directory outside the repository, beside a clone of the suite (`tenantsync`,
//! a link to this repository, so the guide's `../tenantsync/…` dependency lines resolve as
//! written), from the guide's own blocks — its `Cargo.toml` dependencies, its `src/main.rs`,
//! its `tests/notes.rs` — with the suite's `Cargo.lock` as the guide says. It builds it,
//! runs the guide's test (the test kit's `TestHub`, from outside the repository), then routes
//! the app through the real nginx the way the guide says (a file of its own in
//! `NGINX_EXTRA_APPS`) and serves a signed-in request, a paid create and a synced change
//! through it. Nothing in the repository is edited for the new app.
//!
//! The build shares the repository's `target/` (the guide's profile lines make most of what
//! the suite compiled reusable); crates whose features differ are compiled again, about two
//! minutes on 2 cores.

use std::{path::Path, process::Stdio, time::Duration};

use anyhow::Context;
use reqwest::{Method, StatusCode};
use serde_json::json;
use tsync_e2e::{
    eventually, free_port,
    nginx::{Nginx, Upstreams},
    suite::Edge,
    unique_name,
    wrapper_app::spawn_wrapper,
};

/// The fenced blocks of `markdown` whose info string is `info`, in order.
fn blocks(markdown: &str, info: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(i)) if i.trim() == info => current = Some(String::new()),
            (Some(block), Some("")) => {
                found.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            _ => {}
        }
    }
    found
}

fn one(markdown: &str, info: &str) -> anyhow::Result<String> {
    let mut all = blocks(markdown, info);
    anyhow::ensure!(
        all.len() == 1,
        "the guide has {} ```{info} blocks, not one",
        all.len()
    );
    Ok(all.remove(0))
}

/// `cargo <args>` in `dir`, sharing the repository's target directory; its standard output,
/// or an error with all it said.
async fn cargo(
    dir: &Path,
    target: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<String> {
    let out =
        tokio::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(args)
            .current_dir(dir)
            .env("CARGO_TARGET_DIR", target)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await?;
    anyhow::ensure!(
        out.status.success(),
        "cargo {args:?} in {}:\n{}\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn the_guides_app_builds_outside_the_repository_and_serves_through_the_edge()
-> anyhow::Result<()> {
    if tsync_e2e::redis_url().starts_with("redis-cluster://") {
        return Ok(()); // built and run once, in the single-node pass
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()?;
    let guide = std::fs::read_to_string(repo.join("sync-sdk/GUIDE.md"))?;
    let home = std::env::temp_dir().join(unique_name());
    let app = home.join("notes");
    std::fs::create_dir_all(app.join("src"))?;
    std::fs::create_dir_all(app.join("tests"))?;
    let _cleanup = Cleanup(home.clone());
    std::os::unix::fs::symlink(&repo, home.join("tenantsync"))?;
    // `cargo new notes`, then the guide's blocks.
    std::fs::write(
        app.join("Cargo.toml"),
        format!(
            "[package]\nname = \"notes\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n{}",
            one(&guide, "toml")?
        ),
    )?;
    std::fs::write(app.join("src/main.rs"), one(&guide, "rust,no_run")?)?;
    std::fs::write(app.join("tests/notes.rs"), one(&guide, "rust,ignore")?)?;
    std::fs::copy(repo.join("Cargo.lock"), app.join("Cargo.lock"))?;
    let target = repo.join("target");

    // The guide's own test, with the test kit's hub (the wrapper: this suite's `replica`
    // binary serving as `wrapper`).
    let wrapper = format!("{} wrapper", env!("CARGO_BIN_EXE_replica"));
    let ran = cargo(
        &app,
        &target,
        &["test", "--offline", "--test", "notes"],
        &[("TSYNC_WRAPPER_BIN", wrapper.as_str())],
    )
    .await
    .context("the guide's app or its test")?;
    assert!(
        ran.contains("test a_note_is_charged_once_and_its_author_follows_the_wrapper ... ok"),
        "the guide's test did not run: {ran}"
    );

    // Through the edge: its own service client and a tenant with its feature, the app as a
    // process, and nginx routing /notes/ from a list of the developer's own.
    let w = spawn_wrapper().await?;
    let secret = "notes-service-secret-from-the-guide";
    wrapper::startup::upsert_service_client(&w.db.pool, "notes", secret).await?;
    let acme = w.create_tenant_with("acme", &["notes"]).await;
    w.fund_app(&acme, "notes", 100).await;
    let port = free_port()?;
    let exe = target.join("debug/notes");
    let mut notes = tokio::process::Command::new(&exe)
        .env_clear()
        .env("NOTES_LISTEN", format!("127.0.0.1:{port}"))
        .env("MONGODB_URL", tsync_e2e::mongodb_url())
        .env("APP_MONGO_DB", unique_name())
        .env("REDIS_URL", tsync_e2e::redis_url())
        .env("TSYNC_NAMESPACE", &w.state.settings.namespace)
        .env("WRAPPER_URL", &w.url)
        .env("APP_SERVICE_SECRET", secret)
        .env("APP_PUBLIC_PATH", "/notes")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let health = format!("http://127.0.0.1:{port}/health");
    eventually(Duration::from_secs(60), || {
        let health = health.clone();
        async move {
            reqwest::get(health)
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await
    .context("the guide's app never answered /health")?;
    let extra = home.join("my-apps");
    std::fs::write(&extra, format!("notes {port}\n"))?;
    let wrapper_port: u16 = w.url.rsplit(':').next().unwrap_or_default().parse()?;
    let upstreams = Upstreams {
        wrapper: vec![wrapper_port],
        crm: vec![free_port()?],
        hrms: vec![free_port()?],
        projects: vec![free_port()?],
    };
    let nginx = Nginx::start_with_extra_apps(free_port()?, &upstreams, &extra).await?;
    let edge = Edge::new(nginx.url(), "acme.yourapp.test");

    // Signed in at the wrapper, served by the app through the edge.
    let (status, people) = edge
        .send(Method::GET, "/notes/people", &acme.admin, None)
        .await?;
    assert_eq!(status, StatusCode::OK, "{people}");
    assert!(people.to_string().contains("admin@acme.test"), "{people}");
    let (status, note) = edge
        .send_keyed(
            Method::POST,
            "/notes/notes",
            &acme.admin,
            Some(json!({"title": "Through the edge"})),
            Some("edge-note-1"),
        )
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{note}");
    // A change at the wrapper reaches the app.
    let user = format!("/api/tenants/{}/users/{}", acme.id, acme.admin_id);
    let (status, changed) = edge
        .send(
            Method::PATCH,
            &user,
            &acme.admin,
            Some(json!({"email": "boss@acme.test"})),
        )
        .await?;
    assert!(status.is_success(), "{status} {changed}");
    eventually(Duration::from_secs(10), || async {
        edge.send(Method::GET, "/notes/notes", &acme.admin, None)
            .await
            .is_ok_and(|(_, n)| n.to_string().contains("boss@acme.test"))
    })
    .await
    .context("the change never reached the guide's app")?;
    assert!(matches!(notes.try_wait(), Ok(None)), "the app stopped");
    Ok(())
}

/// Removes the temporary home (the package, the link to the repository; not what the link
/// points to) when the test ends.
struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0.join("tenantsync"));
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
