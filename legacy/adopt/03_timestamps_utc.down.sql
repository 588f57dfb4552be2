-- Back to timestamp without time zone, in UTC, again without a rewrite. Not to
-- timestamp(3): lowering the precision rewrites the table under ACCESS EXCLUSIVE. The
-- values are the same instants; those the engine wrote may carry microseconds, which
-- Prisma reads as they are. docs/migration.md says how to restore (3) in a maintenance
-- window if wanted.
set local timezone = 'UTC';
alter table service_requests
    alter column "updatedAt" drop default,
    alter column "createdAt" type timestamp,
    alter column "acceptedAt" type timestamp,
    alter column "startedAt" type timestamp,
    alter column "completedAt" type timestamp,
    alter column "cancelledAt" type timestamp,
    alter column "updatedAt" type timestamp;
