-- The engine reads service_requests' times as timestamptz; Prisma wrote timestamp(3) in UTC.
-- With the session in UTC, PostgreSQL 12+ changes timestamp to timestamptz without
-- rewriting the table (measured: a catalog change, the table's file unchanged). Not to
-- timestamptz(3): a type modifier makes it a rewrite under ACCESS EXCLUSIVE (1.2 s per
-- column at a million rows). Indexes on these columns would still be rebuilt inside the
-- ALTER; step 3's Rust side moves them out of the lock's way (store/legacy.rs).
set local timezone = 'UTC';
alter table service_requests
    alter column "createdAt" type timestamptz,
    alter column "acceptedAt" type timestamptz,
    alter column "startedAt" type timestamptz,
    alter column "completedAt" type timestamptz,
    alter column "cancelledAt" type timestamptz,
    alter column "updatedAt" type timestamptz,
    alter column "updatedAt" set default now();
