drop trigger if exists service_request_transitions_rebuild_guard on service_request_transitions;
drop function if exists arreglame_status_edges_changed();
drop trigger if exists service_requests_status_transition on service_requests;
drop function if exists arreglame_rebuild_status_guard();
create trigger service_requests_status_transition
    before update of status on service_requests
    for each row execute function service_requests_check_transition();
