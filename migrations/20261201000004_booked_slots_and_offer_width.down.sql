drop index if exists service_requests_assigned_worker_slot_idx;
drop table if exists worker_strikes;
alter table offers drop column if exists "candidateScores";
-- Back to one pending offer per request: the newest of a parallel batch stays out.
update offers o set outcome = 'WITHDRAWN', "respondedAt" = now()
where o.outcome is null and exists (
    select 1 from offers n where n."requestId" = o."requestId" and n.outcome is null and n.attempt > o.attempt);
create unique index if not exists offers_one_pending_per_request_idx on offers ("requestId") where outcome is null;
update offers set outcome = 'WITHDRAWN' where outcome in ('RELEASED', 'NO_SHOW');
alter table offers drop constraint offers_outcome_check;
alter table offers add constraint offers_outcome_check
    check (outcome in ('ACCEPTED', 'REJECTED', 'EXPIRED', 'WITHDRAWN'));
-- Booked requests dispatch at once on the older schema (its edge is still there).
update service_requests set status = 'PENDING' where status = 'SCHEDULED';
delete from service_request_transitions where ("fromStatus", "toStatus") in
    (('SCHEDULED', 'PENDING'), ('SCHEDULED', 'CANCELLED'), ('ASSIGNED', 'PENDING'));
alter table service_requests drop constraint service_requests_status_check;
alter table service_requests add constraint service_requests_status_check check (status in
    ('PENDING', 'OFFERING', 'ASSIGNED', 'IN_PROGRESS', 'COMPLETED', 'CANCELLED', 'UNASSIGNED'));
alter table service_requests drop constraint if exists service_requests_slot_check;
alter table service_requests drop column if exists "scheduledEnd", drop column if exists "scheduledStart";
