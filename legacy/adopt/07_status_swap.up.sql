-- The engine's `status` becomes the text column it binds parameters to, without rewriting
-- the table: converting the enum column in place would rewrite service_requests and rebuild
-- its indexes under an ACCESS EXCLUSIVE lock (seconds for a million rows). Renames are
-- catalog changes; SET NOT NULL uses the validated check instead of scanning. The legacy
-- enum column stays, as "legacyStatus", with every label it held.
drop trigger arreglame_legacy_sync on service_requests;
alter table service_requests rename column status to "legacyStatus";
alter index service_requests_status_idx rename to "service_requests_legacyStatus_idx";
alter table service_requests rename column "engineStatus" to status;
alter index service_requests_engine_status_idx rename to service_requests_status_idx;
alter table service_requests alter column status set not null;
alter table service_requests alter column status set default 'PENDING';
alter table service_requests drop constraint service_requests_engine_status_not_null;

create trigger service_requests_status_transition
    before update of status on service_requests
    for each row execute function service_requests_check_transition();

-- From now on the engine's columns lead and the legacy ones follow, so the rollback finds
-- them current: "legacyStatus" gets the nearest legacy label, "workerId" and
-- "assignedWorkerId" stay equal whichever of them a writer set, a new row gets the legacy
-- price in pesos. A writer that does not know `version` (the old system) still moves it on
-- when it changes the status or the worker, so a version-guarded write that read the row
-- before loses instead of overwriting it. Named to fire before the transition check.
create function arreglame_legacy_compat() returns trigger language plpgsql as $$
begin
    if tg_op = 'INSERT' then
        new."legacyStatus" := arreglame_legacy_status(new.status, null);
        new."assignedWorkerId" := coalesce(new."assignedWorkerId", new."workerId");
        new."workerId" := new."assignedWorkerId";
        if new."totalPrice" = 0 and new."priceTotalCents" is not null then
            new."totalPrice" := new."priceTotalCents" / 100.0;
            new."platformFee" := coalesce(new."platformFeeCents", 0) / 100.0;
        end if;
        return new;
    end if;
    if new.status is distinct from old.status then
        new."legacyStatus" := arreglame_legacy_status(new.status, old."legacyStatus");
    end if;
    if new."assignedWorkerId" is distinct from old."assignedWorkerId" then
        new."workerId" := new."assignedWorkerId";
    elsif new."workerId" is distinct from old."workerId" then
        new."assignedWorkerId" := new."workerId";
    end if;
    if new.version = old.version and (new.status is distinct from old.status
            or new."assignedWorkerId" is distinct from old."assignedWorkerId") then
        new.version := old.version + 1;
    end if;
    return new;
end $$;
create trigger arreglame_legacy_compat
    before insert or update on service_requests
    for each row execute function arreglame_legacy_compat();
