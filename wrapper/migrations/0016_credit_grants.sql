-- Credit grants (issue 20): every credit in a balance belongs to a grant with its terms —
-- category, priority, when it takes effect and expires, and for a recurring grant its period
-- and rollover rule. A balance is the sum of its grants' remaining credits (kept in the same
-- transaction as every change); consumption draws grants in order: priority (lower first),
-- then the earliest expiry (none last), then the oldest grant.
--
-- Credits moved from the tenant's pool to an application keep the terms of the grant they
-- came from: the application receives a child grant (`parent_id`) with the same category,
-- priority and expiry. Recurrence stays with the parent: a renewal refills the parent only.
create table credit_grants (
    id              uuid primary key,
    tenant_id       uuid not null references tenants (id),
    scope           text not null,
    parent_id       uuid references credit_grants (id),
    category        text not null check (category in ('paid', 'promotional')),
    priority        integer not null check (priority between 0 and 100),
    effective_at    timestamptz not null,
    expires_at      timestamptz,
    recurrence      text check (recurrence in ('daily', 'weekly', 'monthly')),
    rollover        text not null default 'none' check (rollover in ('none', 'all', 'capped')),
    rollover_cap    bigint check (rollover_cap >= 0),
    -- Credits a period brings (for a recurring grant), else the credits granted.
    amount          bigint not null check (amount >= 0),
    -- Credits at the start of the current period (the base of "percent used").
    initial         bigint not null check (initial >= 0),
    remaining       bigint not null check (remaining >= 0),
    next_renewal_at timestamptz,
    status          text not null default 'active' check (status in ('active', 'expired', 'voided')),
    version         bigint not null default 1,
    created_at      timestamptz not null default now(),
    check (rollover <> 'capped' or rollover_cap is not null)
);
create index credit_grants_scope on credit_grants (tenant_id, scope) where status = 'active';
create index credit_grants_expiry on credit_grants (expires_at) where status = 'active';
create index credit_grants_renewal on credit_grants (next_renewal_at) where status = 'active';

-- Which grant an entry concerns (allocation into it, expiry, renewal, void), and for a
-- consumption or a move to an application, which grants it drew and how much from each.
alter table credit_ledger add column grant_id uuid;
alter table credit_ledger add column draws jsonb;
alter table credit_ledger drop constraint credit_ledger_kind_check;
alter table credit_ledger add constraint credit_ledger_kind_check
    check (kind in ('allocation', 'consumption', 'expiry', 'renewal', 'void'));
-- A free operation (a price of 0) is still recorded (usage reports count it); it draws nothing.
alter table credit_ledger drop constraint credit_ledger_amount_check;
alter table credit_ledger add constraint credit_ledger_amount_check
    check (amount > 0 or (amount = 0 and kind in ('consumption', 'expiry', 'void')));

-- What was there before grants: each balance becomes one paid grant of default priority that
-- never expires.
insert into credit_grants (id, tenant_id, scope, category, priority, effective_at, amount, initial, remaining)
select gen_random_uuid(), tenant_id, scope, 'paid', 50, now(), balance, balance, balance
from credit_balances where balance > 0;

-- Thresholds a tenant admin sets on a balance: `balance_below` (credits) or `percent_used` (of
-- the credits its live grants started their period with). `armed` is false from a crossing
-- until the balance is back on the safe side: one event per crossing, not per consumption.
create table credit_thresholds (
    id         uuid primary key,
    tenant_id  uuid not null references tenants (id),
    scope      text not null,
    kind       text not null check (kind in ('balance_below', 'percent_used')),
    value      bigint not null check (value >= 0),
    armed      boolean not null default true,
    version    bigint not null default 1,
    created_at timestamptz not null default now(),
    unique (tenant_id, scope, kind, value)
);
