-- The status machine's trigger, without a table lookup per row (issue 13): the allowed edges
-- of service_request_transitions are written into the trigger's WHEN clause, which the
-- executor evaluates itself, so a legal transition (every one the engine writes) no longer
-- calls PL/pgSQL and its SPI lookup; only an illegal one reaches the function, which checks
-- the table once more and refuses it exactly as before (same message, errcode and
-- constraint name). The table stays the one source of the edges: any change to it rebuilds
-- the trigger (a statement trigger below), so a later migration adds an edge as it always
-- did, with an insert. Like any trigger change, that rebuild holds an ACCESS EXCLUSIVE lock
-- on service_requests (DROP TRIGGER) until the edit commits: edit the edges in a migration,
-- in a transaction of its own, not beside long-running work.
create function arreglame_rebuild_status_guard() returns void language plpgsql as $$
declare
    edges text;
begin
    -- One text[] constant (`'{A>B,...}'`), not an ARRAY[...] of constants: the WHEN clause
    -- is read back from its stored form on every statement, and one constant reads faster.
    select '{' || coalesce(string_agg("fromStatus" || '>' || "toStatus", ','
                                      order by "fromStatus", "toStatus"), '') || '}'
      into edges from service_request_transitions;
    execute 'drop trigger if exists service_requests_status_transition on service_requests';
    execute format(
        'create trigger service_requests_status_transition before update of status on service_requests '
        'for each row when (old.status is distinct from new.status '
        'and (old.status || ''>'' || new.status) <> all (%L::text[])) '
        'execute function service_requests_check_transition()', edges);
end $$;

create function arreglame_status_edges_changed() returns trigger language plpgsql as $$
begin
    perform arreglame_rebuild_status_guard();
    return null;
end $$;

create trigger service_request_transitions_rebuild_guard
    after insert or update or delete or truncate on service_request_transitions
    for each statement execute function arreglame_status_edges_changed();

select arreglame_rebuild_status_guard();
