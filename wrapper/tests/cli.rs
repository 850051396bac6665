//! The wrapper binary's command line.

#[test]
fn help_documents_every_flag_without_printing_secrets() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wrapper"))
        .arg("--help")
        .env("DATABASE_URL", "postgres://user:s3cret-db@db/tsync")
        .env("REDIS_URL", "redis://:s3cret-redis@redis:6379")
        .env("WRAPPER_BOOTSTRAP_ADMIN_PASSWORD", "S3cret-Admin-Pass!")
        .env(
            "WRAPPER_KEY_ENCRYPTION_KEYS",
            "k1:S3cretS3cretS3cretS3cretS3cretS3cretS3cretA",
        )
        .output()
        .expect("wrapper --help runs");
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--database-url",
        "--redis-url",
        "--cookie-domain",
        "--relay-batch-size",
        "DATABASE_URL",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    assert!(
        !help.contains("s3cret") && !help.contains("S3cret"),
        "--help printed a secret"
    );
}
