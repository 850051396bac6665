//! Redis ACL users: one per app, one for the wrapper, so the bus itself enforces who may write
//! what (`wrapper redis-acl print|apply`).
//!
//! Without them every process holding the Redis URL could append an event, a lifecycle command
//! or a credit entry for any tenant, or overwrite another app's status. With them (Redis 7
//! selectors; the same rules on every node of a cluster):
//!
//! * **An app** (`<namespace>-<app>`) reads the partition event streams and the lifecycle
//!   stream with consumer-group commands only (read, acknowledge, claim, inspect; never `XADD`,
//!   `XDEL`, `XTRIM` or `XGROUP DESTROY|SETID`), reads sign-out markers, and writes only its own
//!   keys: its dead letters, status reports, re-sync journal, full-sync record and locks, and
//!   its fast-path credit keys (mirrored balance, prices, grants, order, operation records and
//!   its own credit stream — the one the wrapper charges to it and nobody else). It cannot
//!   write the event or lifecycle streams, the shared credit stream, sign-out markers, the
//!   wrapper's keys or another app's keys, and has no administrative or dangerous command.
//! * **The wrapper** (`<namespace>-wrapper`) may do anything non-dangerous under the namespace,
//!   transactions included (the relay's fenced publication).
//!
//! What the ACL cannot say: a consumer group name is an argument, not a key, so an app can
//! still read or acknowledge with another app's group on the shared streams (it then hides
//! entries from that app, which its nightly full sync repairs; it can forge nothing). And an
//! app can raise its own mirrored balance: the ledger, not the mirror, decides what is charged
//! (the ingester charges only what the grants cover). Both are in the README's known limits.
//!
//! Passwords are given per user (`crm=<secret>`, or `crm=@/run/secrets/crm` to read a file);
//! `print` writes them hashed (`#<sha256>`), so its output can be kept as an ACL file.

use sync_contract::StreamKeys;

/// The user name of `app` (or `wrapper`) under `keys`' namespace.
pub fn user_name(keys: &StreamKeys, app: &str) -> String {
    format!("{}-{app}", keys.namespace())
}

/// Commands of the connection itself (no keys): authenticate, identify, ping, learn the
/// cluster's layout, load scripts.
const CONNECTION: &[&str] = &[
    "+@connection",
    "-@admin",
    "-@dangerous",
    "+cluster|slots",
    "+cluster|shards",
    "+cluster|nodes",
    "+cluster|info",
    "+cluster|myid",
    "+script|load",
    "+script|exists",
    "+command|docs",
    "+command|info",
    "+command|count",
];

/// Consumer-group commands on a shared stream: read, acknowledge, claim, inspect, and create
/// one's group and consumer.
const CONSUME: &str = "+xreadgroup +xack +xautoclaim +xclaim +xpending +xinfo|groups \
    +xinfo|stream +xinfo|consumers +xlen +xrange +xrevrange +xgroup|create \
    +xgroup|createconsumer +xgroup|delconsumer";

/// Data commands on keys one owns: every read and write that is neither administrative nor
/// dangerous, and scripts over them.
const OWN: &str = "+@read +@write -@admin -@dangerous +evalsha +eval";

/// The rules every user starts with: nothing, then on, no channels, the connection's commands.
fn base_rules() -> Vec<String> {
    let mut rules = vec![
        "reset".to_owned(),
        "on".to_owned(),
        "resetchannels".to_owned(),
    ];
    rules.extend(CONNECTION.iter().map(|r| (*r).to_owned()));
    rules
}

/// The ACL rules of `app`'s user (without its password): see the module docs.
pub fn app_rules(keys: &StreamKeys, app: &str) -> Vec<String> {
    let ns = keys.namespace();
    let mut rules = base_rules();
    // The shared streams, consumer-group commands only.
    rules.push(format!("(~{ns}:events:* ~{ns}:lifecycle {CONSUME})"));
    // Sign-out markers: read only.
    rules.push(format!("(%R~{ns}:revoked:* +get +exists +mget)"));
    // The app's own keys.
    let mut own = vec![
        keys.dlq(app),
        keys.status(app),
        keys.resyncs(app),
        keys.full_syncs(app),
        keys.lock(&format!("fullsync:{app}")),
        keys.lock(&format!("fullsync:{app}:*")),
    ];
    for p in 0..keys.partitions() {
        // Operation records: a per-partition prefix names this app's alone, whatever the
        // operation ids hold (the app comes right after the kind).
        own.push(format!("{ns}:credits:{{{p}}}:op:{app}:*"));
    }
    // The mirror's keys end with the app's name (a name holds no ':').
    for kind in ["balance", "prices", "grants", "order"] {
        own.push(format!("{ns}:credits:*:{kind}:*:{app}"));
    }
    own.push(format!("{ns}:credits:*:stream:{app}"));
    let patterns: Vec<String> = own.iter().map(|k| format!("~{}", glob_escape(k))).collect();
    rules.push(format!("({} {OWN})", patterns.join(" ")));
    rules
}

/// The ACL rules of the wrapper's user (without its password): every key of the namespace,
/// every command but the administrative and dangerous ones.
pub fn wrapper_rules(keys: &StreamKeys) -> Vec<String> {
    let mut rules = base_rules();
    // The relay's fenced publication is a transaction that watches the partition's epoch key.
    rules.extend(TRANSACTION.iter().map(|r| (*r).to_owned()));
    rules.push(format!("(~{}:* {OWN} +watch)", keys.namespace()));
    rules
}

/// Transactions (`MULTI` … `EXEC`, keyless); `WATCH` goes with the keys it may watch.
const TRANSACTION: &[&str] = &["+multi", "+exec", "+discard", "+unwatch"];

/// The rules of `user` (an app's name, or `wrapper`).
pub fn rules_of(keys: &StreamKeys, user: &str) -> Vec<String> {
    if user == "wrapper" {
        wrapper_rules(keys)
    } else {
        app_rules(keys, user)
    }
}

/// `pattern` with the glob characters of its literal parts escaped, except the `*` the rules
/// put there themselves (names and namespaces hold letters, digits, '-', '_' and braces).
fn glob_escape(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    for c in pattern.chars() {
        if matches!(c, '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The password rule for `secret`: `#` and its SHA-256, so the rule never holds the secret.
pub fn password_rule(secret: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    format!("#{}", hex(digest.as_ref()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One user to create: its name and password (`crm=<secret>` or `crm=@<file>`).
pub type UserSpec = crate::config::NamedSecret;

/// The ACL file lines (`user <name> <rules…>`) for `users`, passwords hashed.
pub fn acl_file(keys: &StreamKeys, users: &[UserSpec]) -> String {
    let mut out = String::new();
    for u in users {
        let mut rules = rules_of(keys, &u.name);
        rules.insert(2, password_rule(&u.secret));
        out.push_str(&format!(
            "user {} {}\n",
            user_name(keys, &u.name),
            rules.join(" ")
        ));
    }
    out
}

/// The `ACL SETUSER` arguments of `user` (name first), password hashed. A selector is one
/// argument, as Redis reads it.
pub fn setuser_args(keys: &StreamKeys, user: &UserSpec) -> Vec<String> {
    let mut args = vec![user_name(keys, &user.name)];
    let mut rules = rules_of(keys, &user.name);
    rules.insert(2, password_rule(&user.secret));
    args.extend(rules);
    args
}

/// Apply `users` on every node of the Redis at `admin_url` (an account allowed to run `ACL`;
/// for a cluster, every node it lists, replicas included: ACLs are per node). Returns the
/// nodes it applied to.
pub async fn apply(
    admin_url: &str,
    keys: &StreamKeys,
    users: &[UserSpec],
) -> anyhow::Result<Vec<String>> {
    let commands: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            std::iter::once("SETUSER".to_owned())
                .chain(setuser_args(keys, u))
                .collect()
        })
        .collect();
    on_every_node(admin_url, &commands).await
}

/// Delete the users of `names` (apps, or `wrapper`) from every node of `admin_url`.
pub async fn remove(
    admin_url: &str,
    keys: &StreamKeys,
    names: &[&str],
) -> anyhow::Result<Vec<String>> {
    let command: Vec<String> = std::iter::once("DELUSER".to_owned())
        .chain(names.iter().map(|n| user_name(keys, n)))
        .collect();
    on_every_node(admin_url, &[command]).await
}

/// Run each `ACL <args…>` of `commands` on every node of `admin_url`.
async fn on_every_node(admin_url: &str, commands: &[Vec<String>]) -> anyhow::Result<Vec<String>> {
    use fred::prelude::*;
    let config = Config::from_url(admin_url)?;
    let nodes: Vec<Config> = match &config.server {
        ServerConfig::Clustered { .. } => {
            let cluster = Builder::from_config(config.clone()).build()?;
            cluster.init().await?;
            let text: String = cluster.cluster_nodes().await?;
            cluster.quit().await?;
            text.lines()
                .filter_map(|line| line.split_whitespace().nth(1))
                .filter_map(|addr| addr.split('@').next())
                .filter_map(|addr| addr.rsplit_once(':'))
                .filter_map(|(host, port)| Some((host.to_owned(), port.parse::<u16>().ok()?)))
                .map(|(host, port)| Config {
                    server: ServerConfig::new_centralized(host, port),
                    ..config.clone()
                })
                .collect()
        }
        _ => vec![config],
    };
    let mut done = Vec::new();
    for node in nodes {
        let name = format!("{:?}", node.server);
        let client = Builder::from_config(node).build()?;
        client.init().await?;
        for command in commands {
            let args: Vec<fred::types::Value> = command.iter().map(|a| a.as_str().into()).collect();
            let _: fred::types::Value = client
                .custom(
                    fred::types::CustomCommand::new_static("ACL", None, false),
                    args,
                )
                .await?;
        }
        client.quit().await?;
        done.push(name);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_owns_its_own_keys_and_only_reads_the_shared_streams() {
        let keys = StreamKeys::new("ns", 2).unwrap();
        let rules = app_rules(&keys, "crm").join(" ");
        assert!(rules.contains("(~ns:events:* ~ns:lifecycle +xreadgroup"));
        assert!(
            !rules.contains("+xadd"),
            "no explicit XADD anywhere: {rules}"
        );
        assert!(rules.contains("~ns:dlq:crm "));
        assert!(rules.contains("~ns:credits:{0}:op:crm:* ~ns:credits:{1}:op:crm:*"));
        assert!(rules.contains("~ns:credits:*:stream:crm "));
        assert!(!rules.contains("hrms"));
        assert_eq!(user_name(&keys, "crm"), "ns-crm");
    }

    #[test]
    fn printed_rules_never_hold_the_password() {
        let keys = StreamKeys::new("ns", 2).unwrap();
        let user: UserSpec = "crm=a-password-of-some-length".parse().unwrap();
        let file = acl_file(&keys, &[user]);
        assert!(!file.contains("a-password-of-some-length"));
        assert!(file.starts_with("user ns-crm reset on #"));
        assert!("crm=short".parse::<UserSpec>().is_err());
        assert!("CRM=a-password-of-some-length".parse::<UserSpec>().is_err());
    }
}
