//! Typed configuration, parsed once at start-up. `wrapper --help` is the reference: every flag
//! has an environment fallback, and secrets are wrapped so they are never printed.

use std::{fmt, net::SocketAddr, time::Duration};

use clap::{Args, Parser, Subcommand};

/// A string that never appears in logs or `Debug` output.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// A name and its secret, given as `name=secret` or `name=@file` (the file's content, trimmed:
/// a mounted secret): Redis users, service clients.
#[derive(Clone)]
pub struct NamedSecret {
    /// `crm`, `hrms`, … (or `wrapper` for its Redis user).
    pub name: String,
    /// Its secret (never printed).
    pub secret: String,
}

impl std::fmt::Debug for NamedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamedSecret")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl std::str::FromStr for NamedSecret {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (name, secret) = text
            .split_once('=')
            .ok_or("expected <app>=<secret> or <app>=@<file>")?;
        let valid = !name.is_empty()
            && name.len() <= 40
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(format!("'{name}': 1-40 lowercase letters, digits or '-'"));
        }
        let secret = match secret.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("{path}: {e}"))?
                .trim()
                .to_owned(),
            None => secret.to_owned(),
        };
        if secret.len() < 16 {
            return Err(format!("{name}: a password needs at least 16 characters"));
        }
        Ok(Self {
            name: name.to_owned(),
            secret,
        })
    }
}

/// The Tenantsync wrapper: identity, tenants and credits, published through an outbox.
#[derive(Debug, Parser)]
#[command(name = "wrapper", version, about)]
pub struct Cli {
    /// Settings shared by every command.
    #[command(flatten)]
    pub settings: Settings,
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Commands of the wrapper binary.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API (the default).
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
    /// Run only the outbox relay (no HTTP API).
    Relay,
    /// Manage platform administrators.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Manage service clients (apps that call the sync and credit endpoints).
    #[command(subcommand)]
    ServiceClient(ServiceClientCommand),
    /// Manage the token signing keys (published at /.well-known/jwks.json).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Redis ACL users for the apps and the wrapper (see `redis_acl`): print them as an ACL
    /// file, or apply them on every node.
    #[command(subcommand)]
    RedisAcl(RedisAclCommand),
}

/// `wrapper redis-acl ...`
#[derive(Debug, Subcommand)]
pub enum RedisAclCommand {
    /// Print the users as ACL file lines (`user <namespace>-<app> …`, passwords hashed).
    Print(RedisAclArgs),
    /// Create or update the users on every node of `--admin-url` (default: REDIS_URL).
    Apply(RedisAclArgs),
}

/// The users to make: `<app>=<password>` or `<app>=@<file>`; `wrapper` is the wrapper's own.
#[derive(Debug, Args)]
pub struct RedisAclArgs {
    /// A user, e.g. `crm=@/run/secrets/crm-redis` (repeat, or comma-separate in the variable).
    #[arg(
        long = "user",
        env = "WRAPPER_REDIS_ACL_USERS",
        value_delimiter = ',',
        required = true
    )]
    pub users: Vec<NamedSecret>,
    /// A Redis URL allowed to run `ACL SETUSER` (an operator's, not the wrapper's own user).
    #[arg(long, env = "WRAPPER_REDIS_ADMIN_URL")]
    pub admin_url: Option<Secret>,
}

/// `wrapper keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List the active keys (kid, newest first; the first signs).
    List,
    /// Add a new signing key: new tokens are signed with it, old ones still verify.
    Rotate,
    /// Retire a key: tokens it signed stop verifying (apps drop it at their next JWKS refresh).
    Retire {
        /// The key id.
        #[arg(long)]
        kid: String,
    },
    /// Print a fresh key-encryption key (`id:base64`) for WRAPPER_KEY_ENCRYPTION_KEYS.
    NewKek,
}

/// `wrapper admin ...`
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create a platform administrator (idempotent: an existing email is left as it is).
    Create(AdminArgs),
}

/// A platform administrator's credentials.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Email address of the administrator.
    #[arg(long)]
    pub email: String,
    /// Password (≥ 12 characters with upper, lower, digit and special character).
    #[arg(long, env = "TSYNC_ADMIN_PASSWORD", hide_env_values = true)]
    pub password: Secret,
    /// Full name.
    #[arg(long, default_value = "Platform Admin")]
    pub name: String,
}

/// `wrapper service-client ...`
#[derive(Debug, Subcommand)]
pub enum ServiceClientCommand {
    /// Create (or replace the secret of) the service client of an application.
    Create {
        /// The application, e.g. `crm`; also the client id.
        #[arg(long)]
        app: String,
        /// The client secret (at least 24 characters).
        #[arg(long, env = "TSYNC_SERVICE_SECRET", hide_env_values = true)]
        secret: Secret,
    },
}

/// Settings of the running service.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address the HTTP API listens on (port 0 picks a free port).
    #[arg(long, env = "WRAPPER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// PostgreSQL URL of the wrapper's database.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/tsync"
    )]
    pub database_url: Secret,
    /// Largest number of Postgres connections.
    #[arg(long, env = "WRAPPER_DB_MAX_CONNECTIONS", default_value_t = 20)]
    pub db_max_connections: u32,
    /// Redis URL (the event streams).
    #[arg(
        long,
        env = "REDIS_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: Secret,
    /// Prefix of every Redis key.
    #[arg(long, env = "TSYNC_NAMESPACE", default_value = "tsync")]
    pub namespace: String,
    /// Number of partition streams (changing it is a migration).
    #[arg(long, env = "TSYNC_PARTITIONS", default_value_t = 8)]
    pub partitions: u32,
    /// Issuer (`iss`) of the tokens the wrapper signs.
    #[arg(long, env = "WRAPPER_ISSUER", default_value = "tenantsync")]
    pub issuer: String,
    /// Key-encryption keys sealing the private signing keys in the database, as
    /// `id:base64(32 bytes),…`; the first seals, the others still open (rotation: see
    /// `wrapper keys new-kek` and the README). Required.
    #[arg(long, env = "WRAPPER_KEY_ENCRYPTION_KEYS", hide_env_values = true)]
    pub key_encryption_keys: Option<Secret>,
    /// Parent domain the session cookie is set on, e.g. `.yourapp.test` (none: host-only).
    #[arg(long, env = "WRAPPER_COOKIE_DOMAIN")]
    pub cookie_domain: Option<String>,
    /// Mark the session cookie Secure (turn off only for plain-http loopback tests).
    #[arg(long, env = "WRAPPER_COOKIE_SECURE", default_value_t = true, action = clap::ArgAction::Set)]
    pub cookie_secure: bool,
    /// OpenID Connect providers offered on the sign-in page, as a JSON array of
    /// `{"id", "displayName", "issuer", "clientId", "clientSecret", "policy": "existing"|"create",
    /// "tenants": [subdomains], "scopes"}`. The redirect URI to register at the provider is
    /// `https://<tenant host>/auth/oidc/<id>/callback`.
    #[arg(long, env = "WRAPPER_OIDC_PROVIDERS", hide_env_values = true)]
    pub oidc_providers: Option<Secret>,
    /// The apps listed at `GET /` of a tenant's host until they register their manifests, as
    /// `Title=/path/,…`; a tenant sees those whose title (case-insensitive) is one of its
    /// features. A registered app is listed from its manifest instead.
    #[arg(
        long,
        env = "WRAPPER_PORTAL_APPS",
        default_value = "CRM=/crm/,HRMS=/hrms/"
    )]
    pub portal_apps: String,
    /// Lifetime of a session token, in seconds.
    #[arg(long, env = "WRAPPER_SESSION_TTL_SECS", default_value_t = 3600)]
    pub session_ttl_secs: u64,
    /// Lifetime of a service token, in seconds.
    #[arg(long, env = "WRAPPER_SERVICE_TTL_SECS", default_value_t = 300)]
    pub service_ttl_secs: u64,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "WRAPPER_BODY_LIMIT", default_value_t = 1024 * 1024)]
    pub body_limit: usize,
    /// Requests taking longer than this many seconds are answered 408.
    #[arg(long, env = "WRAPPER_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// Seconds a domain-cache entry is trusted before it is read again (changes made through
    /// this replica invalidate it at once).
    #[arg(long, env = "WRAPPER_DOMAIN_CACHE_TTL_SECS", default_value_t = 30)]
    pub domain_cache_ttl_secs: u64,
    /// Proxies whose `X-Forwarded-For` names the client: the edge's addresses or CIDR ranges
    /// (`172.28.0.0/16`), comma-separated. Only what reaches the wrapper through the edge.
    #[arg(
        long,
        env = "WRAPPER_TRUSTED_PROXIES",
        value_delimiter = ',',
        default_value = "127.0.0.1,::1"
    )]
    pub trusted_proxies: Vec<crate::context::IpRange>,
    /// The one host platform admins sign in on (their cookie is for this host only). Hosts that
    /// name no tenant offer no sign-in otherwise.
    #[arg(long, env = "WRAPPER_ADMIN_HOST", default_value = "127.0.0.1")]
    pub admin_host: String,
    /// Failed sign-ins of one account (per 15 minutes) before each further attempt waits: 1 s,
    /// then twice as long per failure, up to `WRAPPER_SIGN_IN_MAX_LOCK_SECS`.
    #[arg(long, env = "WRAPPER_SIGN_IN_ACCOUNT_FAILURES", default_value_t = 5)]
    pub sign_in_account_failures: i32,
    /// Failed sign-ins from one client address (per 15 minutes, any account) before it waits.
    #[arg(long, env = "WRAPPER_SIGN_IN_SOURCE_FAILURES", default_value_t = 20)]
    pub sign_in_source_failures: i32,
    /// The longest wait after repeated failures.
    #[arg(long, env = "WRAPPER_SIGN_IN_MAX_LOCK_SECS", default_value_t = 900)]
    pub sign_in_max_lock_secs: i64,
    /// Password hashes (sign-in, service tokens, new passwords) run at once; argon2id holds
    /// 19 MiB each. 0: one per CPU.
    #[arg(long, env = "WRAPPER_PASSWORD_HASH_CONCURRENCY", default_value_t = 0)]
    pub password_hash_concurrency: usize,
    /// How long a request waits for a hashing slot before it is answered 503 with
    /// `Retry-After`, in milliseconds.
    #[arg(long, env = "WRAPPER_PASSWORD_HASH_WAIT_MS", default_value_t = 2000)]
    pub password_hash_wait_ms: u64,
    /// Most thresholds on one balance of a tenant.
    #[arg(long, env = "WRAPPER_MAX_THRESHOLDS_PER_BALANCE", default_value_t = 10)]
    pub max_thresholds_per_balance: i64,
    /// Most webhook endpoints of one tenant.
    #[arg(long, env = "WRAPPER_MAX_WEBHOOK_ENDPOINTS", default_value_t = 20)]
    pub max_webhook_endpoints: i64,
    /// Most export parts (collection chunks) one app may upload for one export.
    #[arg(long, env = "WRAPPER_MAX_EXPORT_PARTS", default_value_t = 1000)]
    pub max_export_parts: i64,
    /// Reach custom domains being verified at this address instead of their DNS answer (tests
    /// serve the challenge on loopback; an operator may point it at the edge).
    #[arg(long, env = "WRAPPER_DOMAIN_CHALLENGE_ADDR")]
    pub domain_challenge_addr: Option<SocketAddr>,
    /// Apply migrations when serving starts.
    #[arg(long, env = "WRAPPER_MIGRATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate: bool,
    /// Bootstrap: create this platform admin at start-up if missing (for containers).
    #[arg(long, env = "WRAPPER_BOOTSTRAP_ADMIN_EMAIL")]
    pub bootstrap_admin_email: Option<String>,
    /// Bootstrap: the password of that admin.
    #[arg(long, env = "WRAPPER_BOOTSTRAP_ADMIN_PASSWORD", hide_env_values = true)]
    pub bootstrap_admin_password: Option<Secret>,
    /// Bootstrap: service clients to create or update at start-up, `<app>=<secret>` or
    /// `<app>=@<file>`, comma-separated (what `wrapper service-client create` does, so compose
    /// and Kubernetes need no manual step). Idempotent: a client whose stored secret already
    /// matches is left as it is.
    #[arg(
        long = "bootstrap-service-client",
        env = "WRAPPER_BOOTSTRAP_SERVICE_CLIENTS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub bootstrap_service_clients: Vec<NamedSecret>,
    /// Bootstrap: a first tenant to create at start-up if no tenant has its subdomain, as the
    /// JSON body of `POST /api/tenants` (name, subdomain, plan, features, admin with its
    /// password), or `@<file>` holding it. Idempotent: an existing subdomain is left as it is.
    #[arg(long, env = "WRAPPER_BOOTSTRAP_TENANT", hide_env_values = true)]
    pub bootstrap_tenant: Option<Secret>,
    /// Run the outbox relay and the credit-stream ingester inside `serve` (`wrapper relay` runs
    /// the relay alone).
    #[arg(long, env = "WRAPPER_RELAY", default_value_t = true, action = clap::ArgAction::Set)]
    pub relay: bool,
    /// Outbox rows per pipelined publish batch.
    #[arg(long, env = "WRAPPER_RELAY_BATCH_SIZE", default_value_t = 1000)]
    pub relay_batch_size: i64,
    /// Fallback poll interval of the relay, in milliseconds (NOTIFY wakes it sooner).
    #[arg(long, env = "WRAPPER_RELAY_POLL_MS", default_value_t = 500)]
    pub relay_poll_ms: u64,
    /// How often a follower relay tries to take a partition over, in milliseconds.
    #[arg(long, env = "WRAPPER_RELAY_LEASE_RETRY_MS", default_value_t = 1000)]
    pub relay_lease_retry_ms: u64,
    /// How often streams are trimmed and outbox metrics refreshed, in seconds.
    #[arg(long, env = "WRAPPER_RELAY_MAINTENANCE_SECS", default_value_t = 30)]
    pub relay_maintenance_secs: u64,
    /// Replicas of the stream's Redis master that must hold a published batch before its
    /// outbox rows are marked (`WAIT`; 0: do not wait). See the README on Redis Cluster.
    #[arg(long, env = "WRAPPER_RELAY_WAIT_REPLICAS", default_value_t = 0)]
    pub relay_wait_replicas: u32,
    /// How long the relay's `WAIT` may block, in milliseconds (a shortfall retries the batch).
    #[arg(long, env = "WRAPPER_RELAY_WAIT_TIMEOUT_MS", default_value_t = 1000)]
    pub relay_wait_timeout_ms: u64,
    /// Published outbox rows are deleted after this many seconds.
    #[arg(long, env = "WRAPPER_OUTBOX_RETENTION_SECS", default_value_t = 86_400)]
    pub outbox_retention_secs: u64,
    /// How often mirrored credit balances are reconciled with the ledger, in seconds (0: never).
    #[arg(long, env = "WRAPPER_CREDIT_RECONCILE_SECS", default_value_t = 300)]
    pub credit_reconcile_secs: u64,
    /// How often credit grants that expired or ended a period are expired and renewed, in
    /// seconds (0: never).
    #[arg(long, env = "WRAPPER_CREDIT_GRANTS_SECS", default_value_t = 60)]
    pub credit_grants_secs: u64,
    /// How often each app's lag is sampled into its lag history, in seconds (0: never).
    #[arg(long, env = "WRAPPER_LAG_HISTORY_SECS", default_value_t = 15)]
    pub lag_history_secs: u64,
    /// Attempts of a webhook delivery before it is dead-lettered.
    #[arg(long, env = "WRAPPER_WEBHOOK_MAX_ATTEMPTS", default_value_t = 8)]
    pub webhook_max_attempts: i32,
    /// The first retry's delay of a webhook delivery, in milliseconds (doubling, at most an
    /// hour).
    #[arg(long, env = "WRAPPER_WEBHOOK_BACKOFF_MS", default_value_t = 5000)]
    pub webhook_backoff_ms: u64,
    /// How long one webhook post may take, in milliseconds.
    #[arg(long, env = "WRAPPER_WEBHOOK_TIMEOUT_MS", default_value_t = 10_000)]
    pub webhook_timeout_ms: u64,
    /// Hosts a webhook may reach over plain HTTP and at a loopback or private address (local
    /// development and tests); every other endpoint must be HTTPS at a public address.
    #[arg(long, env = "WRAPPER_WEBHOOK_INSECURE_HOSTS", value_delimiter = ',')]
    pub webhook_insecure_hosts: Vec<String>,
    /// How often lifecycle operations (erasures, purges) not yet confirmed by every app are
    /// sent again, in seconds.
    #[arg(long, env = "WRAPPER_LIFECYCLE_RESEND_SECS", default_value_t = 30)]
    pub lifecycle_resend_secs: u64,
    /// How long an archived tenant can be restored before it is purged, in seconds (0: purge
    /// only when asked, `POST /api/tenants/{id}/purge`).
    #[arg(long, env = "WRAPPER_PURGE_GRACE_SECS", default_value_t = 30 * 24 * 3600)]
    pub purge_grace_secs: u64,
    /// Log as JSON (production) instead of human-readable text.
    #[arg(long, env = "WRAPPER_LOG_JSON", default_value_t = false, action = clap::ArgAction::Set)]
    pub log_json: bool,
}

impl Settings {
    /// Settings with every default, for tests and embedding.
    pub fn defaults() -> Self {
        Cli::parse_from(["wrapper"]).settings
    }

    /// The configured key-encryption keys.
    pub fn keks(&self) -> anyhow::Result<crate::identity::keys::Keks> {
        let text = self.key_encryption_keys.as_ref().map(|s| s.0.as_str());
        let text = text.filter(|t| !t.trim().is_empty()).ok_or_else(|| {
            anyhow::anyhow!(
                "WRAPPER_KEY_ENCRYPTION_KEYS is required: it seals the token signing keys in the \
                 database (make one with `wrapper keys new-kek`)"
            )
        })?;
        crate::identity::keys::Keks::parse(text)
    }

    /// The relay's configuration.
    pub fn relay_config(&self) -> crate::relay::RelayConfig {
        crate::relay::RelayConfig {
            database_url: self.database_url.0.clone(),
            batch_size: self.relay_batch_size.max(1),
            poll_interval: Duration::from_millis(self.relay_poll_ms),
            lease_retry: Duration::from_millis(self.relay_lease_retry_ms),
            maintenance_interval: Duration::from_secs(self.relay_maintenance_secs),
            retention: Duration::from_secs(self.outbox_retention_secs),
            wait_replicas: self.relay_wait_replicas,
            wait_timeout: Duration::from_millis(self.relay_wait_timeout_ms),
        }
    }

    /// The request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
}
