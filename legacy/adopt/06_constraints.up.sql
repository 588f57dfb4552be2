-- The engine's business rules as constraints, with migration 1's and 4's names. Each is
-- added NOT VALID (a catalog change) and validated by a separate statement, which scans the
-- table under SHARE UPDATE EXCLUSIVE: writers keep writing meanwhile.
alter table service_requests add constraint service_requests_engine_status_not_null
    check ("engineStatus" is not null) not valid;
alter table service_requests validate constraint service_requests_engine_status_not_null;
alter table service_requests add constraint service_requests_status_check check ("engineStatus" in
    ('SCHEDULED', 'PENDING', 'OFFERING', 'ASSIGNED', 'IN_PROGRESS', 'COMPLETED', 'CANCELLED', 'UNASSIGNED')) not valid;
alter table service_requests validate constraint service_requests_status_check;
alter table service_requests add constraint "service_requests_assignmentAttempts_check"
    check ("assignmentAttempts" >= 0) not valid;
alter table service_requests validate constraint "service_requests_assignmentAttempts_check";
alter table service_requests add constraint service_requests_latitude_check
    check (latitude between -90 and 90) not valid;
alter table service_requests validate constraint service_requests_latitude_check;
alter table service_requests add constraint service_requests_longitude_check
    check (longitude between -180 and 180) not valid;
alter table service_requests validate constraint service_requests_longitude_check;
alter table service_requests add constraint "service_requests_squareMeters_check"
    check ("squareMeters" > 0) not valid;
alter table service_requests validate constraint "service_requests_squareMeters_check";
alter table service_requests add constraint "service_requests_priceTotalCents_check"
    check ("priceTotalCents" >= 0) not valid;
alter table service_requests validate constraint "service_requests_priceTotalCents_check";
alter table service_requests add constraint "service_requests_workerNetCents_check"
    check ("workerNetCents" >= 0) not valid;
alter table service_requests validate constraint "service_requests_workerNetCents_check";
alter table service_requests add constraint "service_requests_platformFeeCents_check"
    check ("platformFeeCents" >= 0) not valid;
alter table service_requests validate constraint "service_requests_platformFeeCents_check";
alter table service_requests add constraint "service_requests_cancelledBy_check"
    check ("cancelledBy" in ('CUSTOMER', 'OPS', 'SYSTEM')) not valid;
alter table service_requests validate constraint "service_requests_cancelledBy_check";
alter table service_requests add constraint "service_requests_cancellationFeeCents_check"
    check ("cancellationFeeCents" >= 0) not valid;
alter table service_requests validate constraint "service_requests_cancellationFeeCents_check";
alter table service_requests add constraint service_requests_price_split_check
    check ("priceTotalCents" is null or "priceTotalCents" = "workerNetCents" + "platformFeeCents") not valid;
alter table service_requests validate constraint service_requests_price_split_check;
alter table service_requests add constraint service_requests_assignee_check
    check ("engineStatus" not in ('ASSIGNED', 'IN_PROGRESS', 'COMPLETED') or "assignedWorkerId" is not null) not valid;
alter table service_requests validate constraint service_requests_assignee_check;
alter table service_requests add constraint service_requests_offer_deadline_check
    check ("engineStatus" <> 'OFFERING' or "workerTimeoutAt" is not null) not valid;
alter table service_requests validate constraint service_requests_offer_deadline_check;
alter table service_requests add constraint service_requests_slot_check
    check (("scheduledStart" is null) = ("scheduledEnd" is null)
           and ("scheduledEnd" is null or "scheduledEnd" > "scheduledStart")) not valid;
alter table service_requests validate constraint service_requests_slot_check;
alter table service_requests add constraint "service_requests_assignedWorkerId_fkey"
    foreign key ("assignedWorkerId") references worker_profiles (id) not valid;
alter table service_requests validate constraint "service_requests_assignedWorkerId_fkey";
alter table service_requests add constraint "service_requests_serviceCategory_fkey"
    foreign key ("serviceCategory") references service_categories (code) not valid;
alter table service_requests validate constraint "service_requests_serviceCategory_fkey";
alter table worker_profiles add constraint "worker_profiles_lastLatitude_check"
    check ("lastLatitude" between -90 and 90) not valid;
alter table worker_profiles validate constraint "worker_profiles_lastLatitude_check";
alter table worker_profiles add constraint "worker_profiles_lastLongitude_check"
    check ("lastLongitude" between -180 and 180) not valid;
alter table worker_profiles validate constraint "worker_profiles_lastLongitude_check";
alter table worker_profiles add constraint worker_profiles_rating_check
    check (rating between 0 and 5) not valid;
alter table worker_profiles validate constraint worker_profiles_rating_check;
alter table customers add constraint customers_email_key unique using index customers_email_key;
