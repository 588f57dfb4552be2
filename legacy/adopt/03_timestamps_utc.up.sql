-- The engine reads service_requests' times as timestamptz; Prisma wrote timestamp(3) in UTC.
-- With the session in UTC, PostgreSQL 12+ changes the type without rewriting the table
-- (only indexes on these columns are rebuilt, under this statement's lock). The precision
-- stays 3, so the way back is no rewrite either.
set local timezone = 'UTC';
alter table service_requests
    alter column "createdAt" type timestamptz(3),
    alter column "acceptedAt" type timestamptz(3),
    alter column "startedAt" type timestamptz(3),
    alter column "completedAt" type timestamptz(3),
    alter column "cancelledAt" type timestamptz(3),
    alter column "updatedAt" type timestamptz(3),
    alter column "updatedAt" set default now();
