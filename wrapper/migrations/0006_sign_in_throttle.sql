-- Failed sign-ins per account (`account:{tenant or platform}:{email}`) and per client address
-- (`source:{ip}`). Past a threshold each further attempt waits until `locked_until`, twice as
-- long per failure (see auth::throttle). A success clears the account's row.
create table sign_in_failures (
    key          text primary key,
    failures     integer not null default 0,
    last_failure timestamptz not null default now(),
    locked_until timestamptz
);
