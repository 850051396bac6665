-- Who consumed: the acting user an app names with a consumption (usage reports by user), and
-- an index for reports over a time range.
alter table credit_ledger add column user_id uuid;
create index credit_ledger_usage on credit_ledger (tenant_id, created_at) where kind = 'consumption';
