-- A tenant can be suspended (refused everywhere, data kept) and resumed.
alter table tenants drop constraint tenants_status_check;
alter table tenants add constraint tenants_status_check
    check (status in ('active', 'suspended', 'archived'));
