-- The apps of the suite, as each registers itself at start-up (its manifest): where it is
-- served, what a tenant needs to use it, and the paid operations it may consume credits for.
create table applications (
    name          text primary key,
    display_name  text not null,
    public_path   text not null unique,
    feature       text,
    -- Its declared integrity checks (fields of its collections holding user ids), as JSON.
    "references"  jsonb not null default '[]',
    registered_at timestamptz not null default now(),
    updated_at    timestamptz not null default now()
);

-- An app's paid operations with their default price. A tenant's active credit config for the
-- operation overrides the price; an operation declared nowhere cannot be consumed.
create table application_operations (
    application    text not null references applications (name) on delete cascade,
    operation_code text not null,
    default_cost   bigint not null check (default_cost >= 0),
    primary key (application, operation_code)
);
