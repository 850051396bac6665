-- Operations that every app must carry out and confirm (erasing a user, purging a tenant): the
-- wrapper sends them on the lifecycle stream until each registered app has sent a receipt.
-- No foreign key to tenants: a purge deletes the tenant, its operation stays as the proof.
create table lifecycle_operations (
    id           uuid primary key,
    tenant_id    uuid not null,
    kind         text not null check (kind in ('erase_user', 'purge_tenant')),
    subject      uuid,
    status       text not null default 'pending' check (status in ('pending', 'done')),
    requested_by uuid,
    created_at   timestamptz not null default now(),
    last_sent_at timestamptz,
    completed_at timestamptz,
    result       jsonb not null default '{}'
);
create index lifecycle_operations_pending on lifecycle_operations (created_at) where status = 'pending';
create index lifecycle_operations_tenant on lifecycle_operations (tenant_id, created_at desc);

-- One receipt per operation and app: the last word of that app (a replica's done or failed).
create table lifecycle_receipts (
    operation_id uuid not null references lifecycle_operations (id) on delete cascade,
    app          text not null,
    replica      text not null,
    status       text not null check (status in ('done', 'failed')),
    reason       text,
    details      jsonb not null default '{}',
    received_at  timestamptz not null default now(),
    primary key (operation_id, app)
);

-- Offboarding: an archived tenant can be restored until it is purged; purging marks it.
alter table tenants add column archived_at timestamptz;
update tenants set archived_at = updated_at where status = 'archived';
alter table tenants drop constraint tenants_status_check;
alter table tenants add constraint tenants_status_check
    check (status in ('active', 'suspended', 'archived', 'purging'));
