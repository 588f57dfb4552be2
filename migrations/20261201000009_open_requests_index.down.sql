drop index if exists service_requests_open_city_id_idx;
