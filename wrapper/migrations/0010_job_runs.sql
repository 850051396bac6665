-- Scheduled jobs that run once per tick across wrapper replicas (credit mirror reconciliation):
-- the replica whose insert of (job, tick) succeeds runs it. A tick is the job's interval count
-- since the Unix epoch. Rows older than a week are deleted by the job itself.
create table job_runs (
    job        text not null,
    tick       bigint not null,
    runner     text not null,
    started_at timestamptz not null default now(),
    primary key (job, tick)
);
