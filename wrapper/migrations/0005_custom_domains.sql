-- Custom domains become active only once proven: a tenant admin's request is kept as
-- `pending_domain` with a random `domain_challenge` token until the wrapper has fetched that token
-- from the domain itself (`/.well-known/tenantsync-challenge/{token}`) or a platform admin has
-- approved it. `domain` holds active domains only, so a host resolves to at most one tenant.
alter table tenants add column pending_domain text, add column domain_challenge text;

-- Domains set before this migration were never proven: they wait for verification again.
update tenants set pending_domain = domain,
                   domain_challenge = replace(gen_random_uuid()::text, '-', ''),
                   domain = null
 where domain is not null;
