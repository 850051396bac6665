-- Entries an app reported (POST /api/audit/events) are kept apart from the wrapper's own facts:
-- `reported_by` names the app (null: the wrapper wrote the entry) and the action is namespaced
-- `<app>:<action>` (the wrapper's actions never hold ':'), so an app cannot write an entry
-- that reads as the wrapper's `domain_verification` or `snapshot.export`. Earlier app reports
-- carried the app in details.reportedBy; they move into the namespace too.
alter table audit_log add column reported_by text;
update audit_log
   set reported_by = details->>'reportedBy',
       action = (details->>'reportedBy') || ':' || action
 where outcome = 'denied' and details ? 'reportedBy' and reported_by is null
   and position(':' in action) = 0;
alter table audit_log add constraint audit_log_app_namespace
  check ((reported_by is null and position(':' in action) = 0)
      or (reported_by is not null and action like reported_by || ':%'));
