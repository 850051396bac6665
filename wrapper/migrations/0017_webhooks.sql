-- Webhooks (issue 20): a tenant admin registers an HTTPS endpoint for chosen event types; the
-- wrapper's `webhooks` consumer group turns each matching event on the streams into one
-- delivery per endpoint (unique per endpoint and event: a redelivered entry adds nothing),
-- and the sender posts it signed, retrying with backoff until it is delivered or dead.
create table webhook_endpoints (
    id          uuid primary key,
    tenant_id   uuid not null references tenants (id),
    url         text not null,
    event_types text[] not null,
    -- The signing secret (`whsec_…`, Standard Webhooks). Shown once at registration.
    secret      text not null,
    active      boolean not null default true,
    created_at  timestamptz not null default now()
);
create index webhook_endpoints_tenant on webhook_endpoints (tenant_id) where active;

create table webhook_deliveries (
    id              uuid primary key,
    endpoint_id     uuid not null references webhook_endpoints (id),
    tenant_id       uuid not null,
    event_id        uuid not null,
    event_type      text not null,
    -- The event's envelope, posted byte for byte.
    body            text not null,
    status          text not null default 'pending' check (status in ('pending', 'delivered', 'dead')),
    attempts        integer not null default 0,
    next_attempt_at timestamptz not null default now(),
    -- A sender holds a delivery until then (replicas never post one twice at once).
    locked_until    timestamptz,
    last_error      text,
    created_at      timestamptz not null default now(),
    delivered_at    timestamptz,
    unique (endpoint_id, event_id)
);
create index webhook_deliveries_due on webhook_deliveries (next_attempt_at) where status = 'pending';
create index webhook_deliveries_endpoint on webhook_deliveries (endpoint_id, created_at);

create table webhook_attempts (
    id          bigserial primary key,
    delivery_id uuid not null references webhook_deliveries (id),
    attempt     integer not null,
    at          timestamptz not null default now(),
    status_code integer,
    error       text,
    duration_ms integer not null
);
create index webhook_attempts_delivery on webhook_attempts (delivery_id, attempt);
