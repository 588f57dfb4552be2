alter table service_requests reset (fillfactor);
alter table service_requests drop constraint if exists service_requests_closed_at_check;
alter table service_requests drop column if exists "closedAt";
