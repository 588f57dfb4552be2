-- Status updates that are HOT (issue 13, item 5). A transition rewrites a request's row; when
-- no indexed column changes and the page has room, PostgreSQL keeps the new version on the
-- same page and touches no index at all (a heap-only tuple). Any index whose key or predicate
-- holds `status` (or the offer deadline) made every transition rewrite every index: 0 of
-- 6 720 updates were HOT when the issue was filed.
--
-- So the open requests are found by "closedAt", set once, when a request reaches COMPLETED,
-- CANCELLED or UNASSIGNED: offers, rejections, expiries and the start of a job change no
-- indexed column. Accepting (the assignee) and closing still touch the indexes.

-- When the request reached a terminal status (the first time: a dispute that cancels a
-- completed job keeps the completion's). Set by the engine's transition; nothing else needs
-- to: an open request never has it (the check below), which is what lets the partial
-- indexes stand for "open". Rows closed by a writer that does not set it (the legacy
-- dispatcher during a rollout) stay in those indexes, and every query still filters on
-- status, so they cost a row read, never a wrong answer.
alter table service_requests add column if not exists "closedAt" timestamptz;
update service_requests set "closedAt" = coalesce("completedAt", "cancelledAt", "updatedAt")
    where status in ('COMPLETED', 'CANCELLED', 'UNASSIGNED') and "closedAt" is null;
alter table service_requests add constraint service_requests_closed_at_check
    check ("closedAt" is null or status in ('COMPLETED', 'CANCELLED', 'UNASSIGNED')) not valid;
alter table service_requests validate constraint service_requests_closed_at_check;

-- The open requests by city, oldest first: recovery of a city's actors, the stalled-request
-- sweep, the offer-deadline backstop, the ops page's attention list, the placement of
-- legacy requests. Replaces the (status, "workerTimeoutAt") and ("cityId", status) indexes.
create index if not exists service_requests_open_city_id_idx
    on service_requests ("cityId", "createdAt") where "closedAt" is null;
-- Requests that ended UNASSIGNED, by when (the ops page's recent list).
create index if not exists service_requests_unassigned_closed_at_idx
    on service_requests ("closedAt") where "unassignedReason" is not null;

-- Indexes no query needs (each checked against every statement in src/store):
-- ("status") alone: the status distribution query of the guide reads the whole table anyway;
-- (status, "workerTimeoutAt") and ("cityId", status): replaced above;
-- the booked-slot index: no query filters on "scheduledStart" with the assignee;
-- on outbox_events, (processed), (type, processed) and ("createdAt"): the relay reads
-- through the partial index of unprocessed rows (outbox_events_unprocessed_id_idx), the
-- lag figure too; nothing reads the processed history by these columns. Each cost an
-- index entry on every insert and every mark.
drop index if exists service_requests_status_idx;
drop index if exists service_requests_status_worker_timeout_at_idx;
drop index if exists service_requests_city_id_status_idx;
drop index if exists service_requests_assigned_worker_slot_idx;
drop index if exists outbox_events_processed_idx;
drop index if exists outbox_events_type_processed_idx;
drop index if exists outbox_events_created_at_idx;

-- Room on each page for the next versions of its rows (new pages only; existing ones fill
-- up as they are rewritten).
alter table service_requests set (fillfactor = 80);
