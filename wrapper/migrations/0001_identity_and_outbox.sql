-- Identity, tenants and the transactional outbox.
--
-- Every aggregate row carries `version`, bumped on each change and copied into the event's
-- aggregateVersion. `tenants.last_seq` is the tenant's event counter: the writing transaction
-- increments it (UPDATE ... RETURNING, which serialises concurrent writers of one tenant), so
-- per-tenant seq is gap-free and in commit order.

create table tenants (
    id          uuid primary key,
    name        text not null,
    subdomain   text not null unique,
    domain      text unique,
    plan        text not null default 'free',
    features    jsonb not null default '[]',
    theme       jsonb not null default '{}',
    status      text not null default 'active' check (status in ('active', 'archived')),
    last_seq    bigint not null default 0,
    -- The partition stream of the tenant's events, fixed at creation: partition_of(id, N).
    partition   integer not null check (partition >= 0),
    version     bigint not null default 1,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);

-- Platform admins have no tenant (tenant_id is null).
create table users (
    id                uuid primary key,
    tenant_id         uuid references tenants (id),
    email             text not null,
    full_name         text not null,
    avatar_url        text,
    email_verified    boolean not null default false,
    active            boolean not null default true,
    password_hash     text,
    is_platform_admin boolean not null default false,
    version           bigint not null default 1,
    deleted_at        timestamptz,
    created_at        timestamptz not null default now(),
    updated_at        timestamptz not null default now()
);
create unique index users_email_unique
    on users (coalesce(tenant_id, '00000000-0000-0000-0000-000000000000'::uuid), lower(email));
create index users_tenant_page on users (tenant_id, id);

create table roles (
    id          uuid primary key,
    tenant_id   uuid not null references tenants (id),
    name        text not null,
    permissions jsonb not null default '[]',
    deleted     boolean not null default false,
    version     bigint not null default 1,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);
create unique index roles_name_unique on roles (tenant_id, name) where not deleted;

create table memberships (
    id          uuid primary key,
    tenant_id   uuid not null references tenants (id),
    user_id     uuid not null references users (id),
    role_id     uuid not null references roles (id),
    active      boolean not null default true,
    version     bigint not null default 1,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now(),
    unique (user_id, role_id)
);
create index memberships_tenant_page on memberships (tenant_id, id);

create table settings (
    tenant_id   uuid primary key references tenants (id),
    "values"    jsonb not null default '{}',
    version     bigint not null default 1,
    updated_at  timestamptz not null default now()
);

create table audit_log (
    id          bigserial primary key,
    tenant_id   uuid,
    actor_id    uuid,
    action      text not null,
    target      text,
    outcome     text not null,
    details     jsonb not null default '{}',
    request_id  text,
    created_at  timestamptz not null default now()
);
create index audit_log_tenant on audit_log (tenant_id, id desc);

-- Apps authenticate as services: client id + secret (argon2) -> short-lived service token.
create table service_clients (
    client_id   text primary key,
    secret_hash text not null,
    application text not null,
    created_at  timestamptz not null default now()
);

-- Ed25519 signing keys for session and service JWTs, published at /.well-known/jwks.json.
create table signing_keys (
    kid         text primary key,
    private_key bytea not null,
    public_key  bytea not null,
    created_at  timestamptz not null default now(),
    retired_at  timestamptz
);

-- The outbox: written in the same transaction as the change it describes, together with a row
-- in outbox_pending. The relay publishes the rows listed in outbox_pending (never "rows above a
-- mark": serial ids commit out of order) and deletes their pending rows once Redis acknowledged.
-- Outbox rows themselves are never updated (cheap inserts, no index churn on publish) and are
-- deleted after the retention period.
create table outbox (
    id           bigserial primary key,
    event_id     uuid not null unique,
    tenant_id    uuid not null,
    seq          bigint not null,
    partition    integer not null,
    event_type   text not null,
    envelope     text not null, -- the JSON envelope, published byte for byte
    created_at   timestamptz not null default now(),
    unique (tenant_id, seq)
);
create index outbox_retention on outbox (partition, created_at);

-- Unpublished outbox rows (no foreign key: the pair is only ever written together).
create table outbox_pending (
    id        bigint primary key,
    partition integer not null
);
create index outbox_pending_partition on outbox_pending (partition, id);
