-- Private signing keys are stored sealed (ChaCha20-Poly1305 under a key-encryption key from
-- configuration, `kek_id` naming which; the kid is the associated data). Rows written before
-- this migration hold `private_key` in the clear until the wrapper next starts and seals them.
alter table signing_keys
    alter column private_key drop not null,
    add column private_key_sealed bytea,
    add column kek_id text,
    add constraint signing_keys_private_present
        check (private_key is not null or (private_key_sealed is not null and kek_id is not null));
