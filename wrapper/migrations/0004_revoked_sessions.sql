-- Sessions signed out before they expired (by token id). The wrapper refuses them; apps see the
-- Redis marker `{ns}:revoked:{jti}` written at the same time. Rows go once the token expired.
create table revoked_sessions (
    jti        text primary key,
    expires_at timestamptz not null
);
create index revoked_sessions_expiry on revoked_sessions (expires_at);
