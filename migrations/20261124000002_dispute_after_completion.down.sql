delete from service_request_transitions where "fromStatus" = 'COMPLETED' and "toStatus" = 'CANCELLED';
