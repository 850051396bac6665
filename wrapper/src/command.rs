//! What the `wrapper` binary does with its parsed command line: serve, relay, migrate or run an
//! admin command. In the library so a test can run the binary's commands as written in a
//! deployment file (`replica wrapper redis-acl apply`, `replica wrapper migrate`).

use tokio_util::sync::CancellationToken;

use crate::{
    config::{AdminCommand, Cli, Command, KeysCommand, RedisAclCommand, ServiceClientCommand},
    identity::keys::KeyStore,
    startup,
};

/// Run `cli`'s command (serve when none) until it ends, or, for the long-running ones, until
/// SIGINT or SIGTERM.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = cli.settings;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = startup::Application::build(settings).await?;
            let cancel = CancellationToken::new();
            tokio::spawn(shutdown_on_signal(cancel.clone()));
            app.run_until_stopped(cancel).await
        }
        Command::Relay => {
            let db = startup::connect_db(&settings).await?;
            let redis = startup::connect_redis(&settings.redis_url.0).await?;
            let keys =
                sync_contract::StreamKeys::new(settings.namespace.clone(), settings.partitions)
                    .ok_or_else(|| {
                        anyhow::anyhow!("invalid TSYNC_NAMESPACE or TSYNC_PARTITIONS")
                    })?;
            let relay = crate::relay::Relay::new(db, redis, keys, settings.relay_config());
            let cancel = CancellationToken::new();
            tokio::spawn(shutdown_on_signal(cancel.clone()));
            tracing::info!("relay running");
            relay.run(cancel).await;
            Ok(())
        }
        Command::Migrate => {
            let db = startup::connect_db(&settings).await?;
            crate::MIGRATOR.run(&db).await?;
            eprintln!("migrations applied");
            Ok(())
        }
        Command::Admin(AdminCommand::Create(args)) => {
            let db = startup::connect_db(&settings).await?;
            crate::MIGRATOR.run(&db).await?;
            let id = startup::create_platform_admin(&db, &args.email, &args.password.0, &args.name)
                .await?;
            println!("platform admin {} ({id})", args.email);
            Ok(())
        }
        Command::Keys(KeysCommand::NewKek) => {
            println!("{}", crate::identity::keys::Keks::generate()?);
            Ok(())
        }
        Command::Keys(command) => {
            let db = startup::connect_db(&settings).await?;
            crate::MIGRATOR.run(&db).await?;
            let keys = KeyStore::load(db, settings.issuer.clone(), settings.keks()?).await?;
            match command {
                KeysCommand::List | KeysCommand::NewKek => {}
                KeysCommand::Rotate => println!("new signing key {}", keys.rotate().await?),
                KeysCommand::Retire { kid } => keys.retire(&kid).await?,
            }
            for key in keys.jwks().await["keys"].as_array().into_iter().flatten() {
                println!("{}", key["kid"].as_str().unwrap_or_default());
            }
            Ok(())
        }
        Command::RedisAcl(command) => {
            let keys =
                sync_contract::StreamKeys::new(settings.namespace.clone(), settings.partitions)
                    .ok_or_else(|| {
                        anyhow::anyhow!("invalid TSYNC_NAMESPACE or TSYNC_PARTITIONS")
                    })?;
            match command {
                RedisAclCommand::Print(args) => {
                    print!("{}", crate::redis_acl::acl_file(&keys, &args.users));
                }
                RedisAclCommand::Apply(args) => {
                    let url = args.admin_url.map_or(settings.redis_url.0.clone(), |u| u.0);
                    let nodes = crate::redis_acl::apply(&url, &keys, &args.users).await?;
                    for user in &args.users {
                        println!(
                            "{} ready on {} node(s)",
                            crate::redis_acl::user_name(&keys, &user.name),
                            nodes.len()
                        );
                    }
                }
            }
            Ok(())
        }
        Command::ServiceClient(ServiceClientCommand::Create { app, secret }) => {
            let db = startup::connect_db(&settings).await?;
            crate::MIGRATOR.run(&db).await?;
            startup::upsert_service_client(&db, &app, &secret.0).await?;
            println!("service client {app} ready");
            Ok(())
        }
    }
}

async fn shutdown_on_signal(cancel: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
    cancel.cancel();
}
