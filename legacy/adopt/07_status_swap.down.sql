-- Back to the legacy `status` enum column (kept current by arreglame_legacy_compat), again
-- by renames only.
drop trigger if exists arreglame_legacy_compat on service_requests;
drop function if exists arreglame_legacy_compat();
drop trigger if exists service_requests_status_transition on service_requests;
alter index service_requests_status_idx rename to service_requests_engine_status_idx;
alter table service_requests alter column status drop default;
alter table service_requests alter column status drop not null;
alter table service_requests rename column status to "engineStatus";
alter index "service_requests_legacyStatus_idx" rename to service_requests_status_idx;
alter table service_requests rename column "legacyStatus" to status;
alter table service_requests add constraint service_requests_engine_status_not_null
    check ("engineStatus" is not null) not valid;
create trigger arreglame_legacy_sync
    before insert or update on service_requests
    for each row execute function arreglame_legacy_sync();
