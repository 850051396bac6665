-- Browser sign-in through OpenID Connect providers.

-- One row per sign-in in progress: created when the browser is sent to the provider, deleted
-- (single use) when it comes back. `state` is also in a cookie of the browser that started it.
create table oidc_flows (
    state         text primary key,
    provider      text not null,
    tenant_id     uuid not null references tenants (id),
    nonce         text not null,
    code_verifier text not null,
    redirect_uri  text not null,
    return_to     text not null,
    created_at    timestamptz not null default now()
);
create index oidc_flows_created on oidc_flows (created_at);

-- A provider's account (issuer-scoped subject) linked to a user of one tenant.
create table user_identities (
    provider   text not null,
    tenant_id  uuid not null references tenants (id),
    subject    text not null,
    user_id    uuid not null references users (id),
    email      text,
    created_at timestamptz not null default now(),
    primary key (provider, tenant_id, subject)
);
create index user_identities_user on user_identities (user_id);
