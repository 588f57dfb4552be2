set local timezone = 'UTC';
alter table service_requests
    alter column "updatedAt" drop default,
    alter column "createdAt" type timestamp(3),
    alter column "acceptedAt" type timestamp(3),
    alter column "startedAt" type timestamp(3),
    alter column "completedAt" type timestamp(3),
    alter column "cancelledAt" type timestamp(3),
    alter column "updatedAt" type timestamp(3);
