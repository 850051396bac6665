-- An operation id is the app's own: the same id used by two apps is two operations. Before, a
-- consumption reusing another app's id answered that app's entry and charged nothing.
drop index credit_ledger_operation;
create unique index credit_ledger_operation on credit_ledger (tenant_id, application, operation_id)
    where kind = 'consumption';
