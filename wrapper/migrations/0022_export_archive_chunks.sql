-- A built export as chunks of at most 1 MiB, in order: packaged and downloaded a chunk at a
-- time, so neither holds a whole tenant in memory. Archives built before become one chunk each.
create table export_archive_chunks (
    operation_id uuid not null references lifecycle_operations (id) on delete cascade,
    seq          integer not null,
    content      bytea not null,
    created_at   timestamptz not null default now(),
    primary key (operation_id, seq)
);
insert into export_archive_chunks (operation_id, seq, content, created_at)
    select operation_id, 0, content, created_at from export_archives;
drop table export_archives;
