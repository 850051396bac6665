-- The audit log by tenant and action, newest first: the console's and the API's filters by
-- action, a tenant's last snapshot export per app (its sync page) and its last domain check
-- read this instead of walking the tenant's whole log.
create index audit_log_tenant_action on audit_log (tenant_id, action, id desc);
