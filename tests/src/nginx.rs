//! The real nginx binary running the loopback rendering of `nginx/nginx.conf`.

use std::{path::PathBuf, process::Stdio, time::Duration};

use anyhow::Context;
use tokio::process::{Child, Command};

use crate::{eventually, free_port, unique_name};

/// The loopback ports of the services nginx routes to: one per replica, each an upstream
/// server.
#[derive(Debug, Clone)]
pub struct Upstreams {
    /// The wrapper (`/api/`, `/auth/`, `/`).
    pub wrapper: Vec<u16>,
    /// `/crm/`.
    pub crm: Vec<u16>,
    /// `/hrms/`.
    pub hrms: Vec<u16>,
    /// `/projects/`.
    pub projects: Vec<u16>,
}

fn port_list(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A running nginx; killed when dropped.
pub struct Nginx {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    prefix: PathBuf,
    _child: Child,
}

impl Nginx {
    /// Render the loopback config for these upstream ports and start nginx.
    pub async fn start(wrapper_port: u16, crm_port: u16, hrms_port: u16) -> anyhow::Result<Self> {
        Self::start_on(free_port()?, wrapper_port, crm_port, hrms_port).await
    }

    /// Like [`start`](Self::start), listening on `port` (chosen earlier, e.g. because an OIDC
    /// provider must know the redirect URI before the wrapper starts).
    pub async fn start_on(
        port: u16,
        wrapper_port: u16,
        crm_port: u16,
        hrms_port: u16,
    ) -> anyhow::Result<Self> {
        Self::start_with_burst(port, None, wrapper_port, crm_port, hrms_port).await
    }

    /// Like [`start_on`](Self::start_on) with another burst than production's for every limit
    /// (per tenant, per client, sign-in), for scenario tests that send many requests from one
    /// address and are not about limits.
    pub async fn start_with_burst(
        port: u16,
        burst: Option<u32>,
        wrapper_port: u16,
        crm_port: u16,
        hrms_port: u16,
    ) -> anyhow::Result<Self> {
        let upstreams = Upstreams {
            wrapper: vec![wrapper_port],
            crm: vec![crm_port],
            hrms: vec![hrms_port],
            // Nothing listens there: /projects/ answers 502 in tests that do not run it.
            projects: vec![free_port()?],
        };
        Self::start_upstreams(port, burst, &upstreams).await
    }

    /// nginx on `port` in front of `upstreams` (burst as in [`start_with_burst`](Self::start_with_burst)).
    pub async fn start_upstreams(
        port: u16,
        burst: Option<u32>,
        upstreams: &Upstreams,
    ) -> anyhow::Result<Self> {
        Self::start_upstreams_at(port, burst, None, upstreams).await
    }

    /// Like [`start_upstreams`](Self::start_upstreams) with every limit's rate at `rate`
    /// requests per second instead of production's, for load tests from one address.
    pub async fn start_upstreams_at(
        port: u16,
        burst: Option<u32>,
        rate: Option<u32>,
        upstreams: &Upstreams,
    ) -> anyhow::Result<Self> {
        Self::start_inner(port, burst, rate, None, None, upstreams).await
    }

    /// Like [`start_upstreams`](Self::start_upstreams), connecting to the upstreams from
    /// `proxy_bind` (a loopback address of the edge's own, e.g. `127.0.2.1`): what the wrapper
    /// sees as the edge's address, as a proxy on another host of a network would be.
    pub async fn start_bound(
        port: u16,
        burst: Option<u32>,
        proxy_bind: &str,
        upstreams: &Upstreams,
    ) -> anyhow::Result<Self> {
        Self::start_inner(port, burst, None, Some(proxy_bind), None, upstreams).await
    }

    /// Like [`start_upstreams`](Self::start_upstreams), also routing the apps of `extra_apps`
    /// (a file of `name port` lines, as `NGINX_EXTRA_APPS` gives `nginx/render`): an app
    /// outside this repository, on its own loopback port.
    pub async fn start_with_extra_apps(
        port: u16,
        upstreams: &Upstreams,
        extra_apps: &std::path::Path,
    ) -> anyhow::Result<Self> {
        Self::start_inner(port, None, None, None, Some(extra_apps), upstreams).await
    }

    async fn start_inner(
        port: u16,
        burst: Option<u32>,
        rate: Option<u32>,
        proxy_bind: Option<&str>,
        extra_apps: Option<&std::path::Path>,
        upstreams: &Upstreams,
    ) -> anyhow::Result<Self> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let prefix = std::env::temp_dir().join(unique_name());
        let rendered = Command::new(root.join("nginx/render"))
            .env("NGINX_PORT", port.to_string())
            .env("WRAPPER_PORT", port_list(&upstreams.wrapper))
            .env("CRM_PORT", port_list(&upstreams.crm))
            .env("HRMS_PORT", port_list(&upstreams.hrms))
            .env("PROJECTS_PORT", port_list(&upstreams.projects))
            .env("NGINX_PREFIX", &prefix)
            .env("NGINX_TENANT_BURST", burst.unwrap_or(20).to_string())
            .env("NGINX_CLIENT_BURST", burst.unwrap_or(40).to_string())
            .env("NGINX_SIGN_IN_BURST", burst.unwrap_or(10).to_string())
            .envs(rate.map(|r| ("NGINX_RATE", format!("{r}r/s"))))
            .envs(proxy_bind.map(|b| ("NGINX_PROXY_BIND", b.to_owned())))
            .envs(extra_apps.map(|f| ("NGINX_EXTRA_APPS", f.as_os_str().to_owned())))
            .output()
            .await
            .context("running nginx/render")?;
        anyhow::ensure!(rendered.status.success(), "nginx/render failed");
        Self::run(port, prefix, &String::from_utf8(rendered.stdout)?).await
    }

    /// nginx running `conf` (a whole configuration, listening on `127.0.0.1:port`) in
    /// `prefix` (its logs, pid and temp files, made here and removed when it stops): for a test
    /// that maps a deployment file's configuration itself.
    pub async fn run(port: u16, prefix: PathBuf, conf: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(prefix.join("logs"))?;
        std::fs::create_dir_all(prefix.join("tmp"))?;
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let conf = conf_path;
        let bin = std::env::var("NGINX_BIN").unwrap_or_else(|_| "nginx".into());
        let child = Command::new(&bin)
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {bin} (run scripts/services)"))?;
        // Ready when *this* nginx listens: it writes its pid file only after binding every
        // port. An answer on the port alone could come from another suite's server that took
        // the same free port first (this one then retries binding and exits).
        let pid_file = pid_file_of(&std::fs::read_to_string(&conf)?, &prefix);
        let mut nginx = Self {
            port,
            prefix,
            _child: child,
        };
        let listening = eventually(Duration::from_secs(10), || {
            let pid_file = pid_file.clone();
            async move {
                pid_file.exists()
                    && tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .is_ok()
            }
        })
        .await;
        let alive = matches!(nginx._child.try_wait(), Ok(None));
        if listening.is_err() || !alive {
            // Its prefix goes with it: say what its log said.
            let log =
                std::fs::read_to_string(nginx.prefix.join("logs/error.log")).unwrap_or_default();
            anyhow::bail!("nginx did not listen on {port}: {}", log.trim());
        }
        Ok(nginx)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Where the configuration `conf` (run in `prefix`) has nginx write its pid: its `pid`
/// directive, else nginx's default `logs/nginx.pid` under the prefix.
fn pid_file_of(conf: &str, prefix: &std::path::Path) -> PathBuf {
    conf.lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("pid ").and_then(|v| v.strip_suffix(';')))
        .map_or_else(|| prefix.join("logs/nginx.pid"), |p| prefix.join(p.trim()))
}

impl Drop for Nginx {
    /// Stop nginx gracefully: SIGTERM makes the master stop its workers and exit (SIGKILL would
    /// leave the workers listening without their master); wait for it, at most 5 s.
    fn drop(&mut self) {
        if let Some(pid) = self._child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                if matches!(self._child.try_wait(), Ok(Some(_)) | Err(_)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_dir_all(&self.prefix);
    }
}
