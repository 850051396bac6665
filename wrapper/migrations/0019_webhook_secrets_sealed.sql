-- Webhook signing secrets are sealed at rest like the token signing keys: ChaCha20-Poly1305
-- under the configured key-encryption key, bound to the endpoint's id. The wrapper seals any
-- secret still in the clear at start-up (rows written before this migration) and re-seals
-- those under an older key-encryption key.
alter table webhook_endpoints
    alter column secret drop not null,
    add column secret_sealed bytea,
    add column kek_id text,
    add constraint webhook_secret_kept check (secret is not null or (secret_sealed is not null and kek_id is not null));
