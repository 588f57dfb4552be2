-- no-transaction
-- The same CHECK constraints of service_requests in a form PostgreSQL reads faster (issue
-- 13). Every statement that writes the table reads each of its CHECK constraints back from
-- its stored form and prepares it again (per statement, not per backend); with group commit
-- that is a fixed cost of every multi-row statement. Lists of statuses become one text[]
-- constant instead of an ARRAY of constants folded again on every statement, and the
-- coordinate bounds double precision constants instead of integers cast on every statement:
-- 12 032 characters of stored expressions become 9 397. Each constraint keeps its name and
-- its meaning exactly.
--
-- Online: each replacement is added NOT VALID (a brief lock), validated in its own
-- transaction (VALIDATE takes only a SHARE UPDATE EXCLUSIVE lock: writers go on), then
-- swapped in for the old one by name in one short transaction. Re-running it (after a
-- run that stopped half-way) replaces each constraint again with the same one.
do $$
declare
    c record;
begin
    for c in select * from (values
        ('service_requests_status_check',
         $c$status = any ('{SCHEDULED,PENDING,OFFERING,ASSIGNED,IN_PROGRESS,COMPLETED,CANCELLED,UNASSIGNED}'::text[])$c$),
        ('service_requests_cancelledBy_check',
         $c$"cancelledBy" = any ('{CUSTOMER,OPS,SYSTEM}'::text[])$c$),
        ('service_requests_assignee_check',
         $c$status <> all ('{ASSIGNED,IN_PROGRESS,COMPLETED}'::text[]) or "assignedWorkerId" is not null$c$),
        ('service_requests_closed_at_check',
         $c$"closedAt" is null or status = any ('{COMPLETED,CANCELLED,UNASSIGNED}'::text[])$c$),
        ('service_requests_latitude_check',
         $c$latitude >= '-90'::float8 and latitude <= '90'::float8$c$),
        ('service_requests_longitude_check',
         $c$longitude >= '-180'::float8 and longitude <= '180'::float8$c$),
        ('service_requests_squareMeters_check',
         $c$"squareMeters" > '0'::float8$c$)
    ) as wanted (name, def)
    loop
        if exists (select 1 from pg_constraint
                   where conrelid = 'service_requests'::regclass and conname = c.name || '_compact') then
            execute format('alter table service_requests drop constraint %I', c.name || '_compact');
        end if;
        execute format('alter table service_requests add constraint %I check (%s) not valid',
                       c.name || '_compact', c.def);
        commit;
        execute format('alter table service_requests validate constraint %I', c.name || '_compact');
        commit;
        execute format('alter table service_requests drop constraint %I', c.name);
        execute format('alter table service_requests rename constraint %I to %I',
                       c.name || '_compact', c.name);
        commit;
    end loop;
end $$;
