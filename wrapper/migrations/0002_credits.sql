-- Credits: an append-only ledger (the truth) and balances maintained in the same transaction.
--
-- A balance belongs to a tenant and a scope: `tenant` (the tenant's pool), `entity:<id>` (an
-- entity inside it) or `app:<name>` (an application's allocation, moved from the pool). The
-- check constraint is the last line of defence against overspending; the consume query
-- decrements only when the balance covers the amount.

create table credit_balances (
    tenant_id uuid not null references tenants (id),
    scope     text not null,
    balance   bigint not null check (balance >= 0),
    version   bigint not null default 1,
    primary key (tenant_id, scope)
);

create table credit_ledger (
    id             bigserial primary key,
    entry_id       uuid not null unique,
    tenant_id      uuid not null references tenants (id),
    kind           text not null check (kind in ('allocation', 'consumption')),
    scope          text not null,
    source_scope   text,
    amount         bigint not null check (amount > 0),
    application    text,
    operation_code text,
    operation_id   text,
    balance_after  bigint not null,
    created_at     timestamptz not null default now()
);
-- One consumption per operation id and tenant: the idempotency key.
create unique index credit_ledger_operation on credit_ledger (tenant_id, operation_id)
    where kind = 'consumption';
create index credit_ledger_page on credit_ledger (tenant_id, id);

-- The cost of an operation per tenant, synced to apps (credit.config_updated).
create table credit_configs (
    id             uuid primary key,
    tenant_id      uuid not null references tenants (id),
    application    text not null,
    operation_code text not null,
    cost           bigint not null check (cost >= 0),
    active         boolean not null default true,
    version        bigint not null default 1,
    updated_at     timestamptz not null default now(),
    unique (tenant_id, application, operation_code)
);
