-- The relay's leadership epochs (fencing tokens), one per namespace and partition. A replica that
-- takes a partition's advisory lock raises its epoch; Redis refuses publications with an older
-- epoch, and rows are marked published only under the current one.
create table relay_epochs (
    namespace text not null,
    partition integer not null,
    epoch bigint not null,
    primary key (namespace, partition)
);
