-- Exporting a tenant: an operation like the others; each app uploads its documents of the tenant
-- as JSON Lines parts (chunks), the wrapper packages them with its own rows into one archive once
-- every app confirmed. Parts and archives go with the tenant's erasures and purge.
alter table lifecycle_operations drop constraint lifecycle_operations_kind_check;
alter table lifecycle_operations add constraint lifecycle_operations_kind_check
    check (kind in ('erase_user', 'purge_tenant', 'export_tenant'));

create table export_parts (
    operation_id uuid not null references lifecycle_operations (id) on delete cascade,
    source       text not null,
    collection   text not null,
    chunk        integer not null,
    lines        bigint not null,
    content      bytea not null,
    primary key (operation_id, source, collection, chunk)
);

create table export_archives (
    operation_id uuid primary key references lifecycle_operations (id) on delete cascade,
    content      bytea not null,
    created_at   timestamptz not null default now()
);
