drop trigger if exists arreglame_legacy_sync on service_requests;
drop function if exists arreglame_legacy_sync();
drop function if exists arreglame_legacy_status(text, "JobStatus");
drop function if exists arreglame_engine_status("JobStatus", boolean);

alter table customers
    drop column if exists email,
    drop column if exists "isActive",
    alter column id drop default,
    alter column "updatedAt" drop default;

alter table worker_profiles
    drop column if exists "cityId",
    drop column if exists "lastActiveAt",
    drop column if exists "lastLatitude",
    drop column if exists "lastLongitude",
    drop column if exists skills,
    drop column if exists "isActive",
    alter column id drop default,
    alter column "updatedAt" drop default;

alter table service_requests
    drop column if exists version,
    drop column if exists "assignmentAttempts",
    drop column if exists "workerTimeoutAt",
    drop column if exists "cityId",
    drop column if exists "assignedWorkerId",
    drop column if exists "imageRef",
    drop column if exists "serviceCategory",
    drop column if exists "difficultyLevel",
    drop column if exists extras,
    drop column if exists currency,
    drop column if exists "priceTotalCents",
    drop column if exists "workerNetCents",
    drop column if exists "platformFeeCents",
    drop column if exists "pricingEngine",
    drop column if exists "idempotencyKey",
    drop column if exists "cancelledBy",
    drop column if exists "cancellationReason",
    drop column if exists "cancellationFeeCents",
    drop column if exists "unassignedReason",
    drop column if exists "assignedAt",
    drop column if exists "scheduledStart",
    drop column if exists "scheduledEnd",
    drop column if exists "engineStatus",
    alter column id drop default;
