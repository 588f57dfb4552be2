-- The columns the engine reads and writes, added beside the legacy ones. Every one is
-- nullable or has a constant default, so on PostgreSQL 11+ this is a catalog change under a
-- lock held for milliseconds: no table rewrite, no scan. The guide's promise: `version` 1
-- and "assignmentAttempts" 0 for existing rows, every other new field nullable.

alter table service_requests
    add column version                integer not null default 1,
    add column "assignmentAttempts"   integer not null default 0,
    add column "workerTimeoutAt"      timestamptz,
    add column "cityId"               text,
    add column "assignedWorkerId"     uuid,
    add column "imageRef"             text,
    add column "serviceCategory"      text,
    add column "difficultyLevel"      text,
    add column extras                 text[] not null default '{}',
    add column currency               text not null default 'ARS',
    add column "priceTotalCents"      bigint,
    add column "workerNetCents"       bigint,
    add column "platformFeeCents"     bigint,
    add column "pricingEngine"        text,
    add column "idempotencyKey"       text,
    add column "cancelledBy"          text,
    add column "cancellationReason"   text,
    add column "cancellationFeeCents" bigint,
    add column "unassignedReason"     text,
    add column "assignedAt"           timestamptz,
    add column "scheduledStart"       timestamptz,
    add column "scheduledEnd"         timestamptz,
    -- The engine's status (text, its vocabulary), filled from the legacy enum by the trigger
    -- below and by the backfill; step 7 swaps it in as `status`.
    add column "engineStatus"         text,
    -- The engine inserts without ids or "updatedAt" (Prisma's client fills both).
    alter column id set default gen_random_uuid();

alter table worker_profiles
    add column "cityId"         text,
    add column "lastActiveAt"   timestamptz,
    add column "lastLatitude"   double precision,
    add column "lastLongitude"  double precision,
    add column skills           text[] not null default '{}',
    add column "isActive"       boolean not null default true,
    alter column id set default gen_random_uuid(),
    -- timestamp(3) without time zone holding UTC, as Prisma writes it.
    alter column "updatedAt" set default (now() at time zone 'utc');

alter table customers
    add column email        text,
    add column "isActive"   boolean not null default true,
    alter column id set default gen_random_uuid(),
    alter column "updatedAt" set default (now() at time zone 'utc');

-- Legacy JobStatus → engine status (docs/migration.md has the table). A status that needs
-- an assignee but has none (the worker's profile was deleted) goes back to dispatch when
-- the job is still open, and ends CANCELLED when it was done.
create function arreglame_engine_status(legacy "JobStatus", has_worker boolean)
returns text language plpgsql immutable as $$
begin
    return case legacy::text
        when 'CREATED' then 'PENDING'
        when 'ACCEPTED' then case when has_worker then 'ASSIGNED' else 'PENDING' end
        when 'ASSIGNED' then case when has_worker then 'ASSIGNED' else 'PENDING' end
        when 'IN_PROGRESS' then case when has_worker then 'IN_PROGRESS' else 'PENDING' end
        when 'PENDING_CLIENT_APPROVAL' then case when has_worker then 'IN_PROGRESS' else 'PENDING' end
        when 'COMPLETED' then case when has_worker then 'COMPLETED' else 'CANCELLED' end
        when 'DISPUTED' then case when has_worker then 'COMPLETED' else 'CANCELLED' end
        when 'UNDER_REVIEW' then case when has_worker then 'COMPLETED' else 'CANCELLED' end
        when 'RESOLVED' then case when has_worker then 'COMPLETED' else 'CANCELLED' end
        when 'CANCELLED' then 'CANCELLED'
    end;
end $$;

-- Engine status → legacy JobStatus, for the legacy column the rollback brings back. A row
-- whose engine status still is what its legacy label maps to keeps that label (DISPUTED
-- stays DISPUTED); otherwise the nearest legacy label.
create function arreglame_legacy_status(engine text, previous "JobStatus")
returns "JobStatus" language plpgsql immutable as $$
begin
    if previous is not null and arreglame_engine_status(previous, true) = engine then
        return previous;
    end if;
    return (case engine
        when 'ASSIGNED' then 'ASSIGNED'
        when 'IN_PROGRESS' then 'IN_PROGRESS'
        when 'COMPLETED' then 'COMPLETED'
        when 'CANCELLED' then 'CANCELLED'
        when 'UNASSIGNED' then 'CANCELLED'
        else 'CREATED' -- PENDING, OFFERING, SCHEDULED: nobody has the job yet
    end)::"JobStatus";
end $$;

-- While the legacy system keeps writing during the migration, the engine's columns follow
-- its writes (the backfill covers the rows nobody touches).
create function arreglame_legacy_sync() returns trigger language plpgsql as $$
begin
    if tg_op = 'INSERT' or new.status is distinct from old.status
       or new."workerId" is distinct from old."workerId" then
        new."engineStatus" := arreglame_engine_status(new.status, new."workerId" is not null);
    end if;
    if tg_op = 'INSERT' or new."workerId" is distinct from old."workerId" then
        new."assignedWorkerId" := new."workerId";
    end if;
    return new;
end $$;
create trigger arreglame_legacy_sync
    before insert or update on service_requests
    for each row execute function arreglame_legacy_sync();
