//! A real browser for the SSO tests: Debian's headless Chromium driven through ChromeDriver's
//! W3C WebDriver endpoints. The few commands the tests need (navigate, find, type, click, read,
//! cookies, screenshot) are plain JSON over HTTP, so this is a small client on reqwest rather
//! than a WebDriver crate.
//!
//! Every `*.yourapp.test` host resolves to 127.0.0.1 inside the browser (`--host-resolver-rules`),
//! so pages are reached through the real nginx exactly as a user's browser would reach them.

use std::{path::PathBuf, process::Stdio, time::Duration};

use anyhow::{Context, bail};
use base64::Engine;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::{eventually_some, free_port, unique_name};

const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A ChromeDriver with one headless Chromium session; both are killed when dropped.
pub struct Browser {
    http: reqwest::Client,
    session: String,
    artifacts: PathBuf,
    profile: PathBuf,
    _driver: Child,
}

/// Where screenshots go: `$TSYNC_ARTIFACTS/<name>`, by default `target/test-artifacts/<name>`.
pub fn artifacts_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("TSYNC_ARTIFACTS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts"),
        PathBuf::from,
    );
    base.join(name)
}

impl Browser {
    /// Start ChromeDriver and a headless Chromium; screenshots go to [`artifacts_dir`]`(name)`.
    pub async fn start(name: &str) -> anyhow::Result<Self> {
        let driver_bin = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let port = free_port()?;
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            // Its own process group, so that dropping the browser also ends Chromium.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {driver_bin} (run scripts/services)"))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let base = format!("http://127.0.0.1:{port}");
        let ready = eventually_some(Duration::from_secs(20), || {
            let (http, url) = (http.clone(), format!("{base}/status"));
            async move {
                let status: Value = http.get(url).send().await.ok()?.json().await.ok()?;
                status["value"]["ready"].as_bool().filter(|r| *r)
            }
        })
        .await;
        ready.context("chromedriver did not become ready")?;
        let profile = std::env::temp_dir().join(unique_name());
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--no-proxy-server",
            "--window-size=1100,800",
            "--host-resolver-rules=MAP *.yourapp.test 127.0.0.1",
            &format!("--user-data-dir={}", profile.display()),
        ];
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "pageLoadStrategy": "normal",
                "goog:chromeOptions": {"binary": chromium, "args": args},
            }}}))
            .send()
            .await?
            .json()
            .await?;
        let Some(session) = created["value"]["sessionId"].as_str() else {
            bail!("chromedriver refused the session: {created}");
        };
        let artifacts = artifacts_dir(name);
        std::fs::create_dir_all(&artifacts)?;
        Ok(Self {
            http,
            session: format!("{base}/session/{session}"),
            artifacts,
            profile,
            _driver: driver,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.session));
        if let Some(b) = body {
            req = req.json(&b);
        } else if method == reqwest::Method::POST {
            req = req.json(&json!({}));
        }
        let answer: Value = req.send().await?.json().await?;
        if let Some(error) = answer["value"]["error"].as_str() {
            bail!("webdriver {path}: {error}: {}", answer["value"]["message"]);
        }
        Ok(answer["value"].clone())
    }

    /// Open `url` and wait for the page to load.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await
            .map(drop)
    }

    /// The address of the page shown now.
    pub async fn url(&self) -> anyhow::Result<String> {
        Ok(self
            .call(reqwest::Method::GET, "/url", None)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// The visible text of the page.
    pub async fn text(&self) -> anyhow::Result<String> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/execute/sync",
                Some(json!({"script": "return document.body ? document.body.innerText : ''", "args": []})),
            )
            .await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    async fn find(&self, css: &str) -> anyhow::Result<String> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await
            .with_context(|| format!("finding {css}"))?;
        v[ELEMENT_KEY]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no element {css}"))
    }

    /// Whether an element matching `css` is on the page.
    pub async fn has(&self, css: &str) -> bool {
        self.find(css).await.is_ok()
    }

    /// The text of the element matching `css`.
    pub async fn text_of(&self, css: &str) -> anyhow::Result<String> {
        let id = self.find(css).await?;
        let v = self
            .call(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// Type `text` into the element matching `css`.
    pub async fn type_into(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let id = self.find(css).await?;
        self.call(reqwest::Method::POST, &format!("/element/{id}/clear"), None)
            .await?;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        )
        .await
        .map(drop)
    }

    /// Click the element matching `css` (navigation it causes is awaited by the driver).
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        let id = self.find(css).await?;
        self.call(reqwest::Method::POST, &format!("/element/{id}/click"), None)
            .await
            .map(drop)
    }

    /// Wait until the page's address satisfies `pred` (navigations may chain redirects).
    pub async fn wait_for_url(
        &self,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let reached = eventually_some(Duration::from_secs(20), || async {
            self.url().await.ok().filter(|u| pred(u))
        })
        .await;
        match reached {
            Ok(url) => Ok(url),
            Err(e) => Err(e.context(format!(
                "the browser never reached {what}; it shows {} with: {}",
                self.url().await.unwrap_or_default(),
                self.text()
                    .await
                    .unwrap_or_default()
                    .chars()
                    .take(600)
                    .collect::<String>()
            ))),
        }
    }

    /// Wait until an element matching `css` is on the page.
    pub async fn wait_for(&self, css: &str) -> anyhow::Result<()> {
        eventually_some(Duration::from_secs(20), || async {
            self.has(css).await.then_some(())
        })
        .await
        .with_context(|| format!("no {css} on the page"))
    }

    /// Set a cookie on the current page's site.
    pub async fn set_cookie(&self, name: &str, value: &str, domain: &str) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::POST,
            "/cookie",
            Some(json!({"cookie": {"name": name, "value": value, "domain": domain, "path": "/", "httpOnly": true}})),
        )
        .await
        .map(drop)
    }

    /// Delete every cookie of the current page's site.
    pub async fn delete_cookies(&self) -> anyhow::Result<()> {
        self.call(reqwest::Method::DELETE, "/cookie", None)
            .await
            .map(drop)
    }

    /// The cookies visible to the current page.
    pub async fn cookies(&self) -> anyhow::Result<Vec<Value>> {
        Ok(self
            .call(reqwest::Method::GET, "/cookie", None)
            .await?
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Set the window's size (the console is checked at 1280×800).
    pub async fn resize(&self, width: u32, height: u32) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await?;
        Ok(())
    }

    /// Save a PNG screenshot as `<artifacts>/<step>.png`; returns its path.
    pub async fn screenshot(&self, step: &str) -> anyhow::Result<PathBuf> {
        let v = self.call(reqwest::Method::GET, "/screenshot", None).await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .context("screenshot is not base64")?;
        anyhow::ensure!(png.starts_with(b"\x89PNG"), "screenshot is not a PNG");
        let path = self.artifacts.join(format!("{step}.png"));
        std::fs::write(&path, png)?;
        Ok(path)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // ChromeDriver and every Chromium process it started share one process group.
        if let Some(pid) = self._driver.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
