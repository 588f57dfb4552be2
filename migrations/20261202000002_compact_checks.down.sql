-- The constraints as migrations 1, 3, 4 and 7 wrote them (same names, same meaning).
alter table service_requests
    drop constraint service_requests_status_check,
    add constraint service_requests_status_check check (status in
        ('SCHEDULED', 'PENDING', 'OFFERING', 'ASSIGNED', 'IN_PROGRESS', 'COMPLETED', 'CANCELLED', 'UNASSIGNED')),
    drop constraint "service_requests_cancelledBy_check",
    add constraint "service_requests_cancelledBy_check" check ("cancelledBy" in ('CUSTOMER', 'OPS', 'SYSTEM')),
    drop constraint service_requests_assignee_check,
    add constraint service_requests_assignee_check
        check (status not in ('ASSIGNED', 'IN_PROGRESS', 'COMPLETED') or "assignedWorkerId" is not null),
    drop constraint service_requests_closed_at_check,
    add constraint service_requests_closed_at_check
        check ("closedAt" is null or status in ('COMPLETED', 'CANCELLED', 'UNASSIGNED')),
    drop constraint service_requests_latitude_check,
    add constraint service_requests_latitude_check check (latitude between -90 and 90),
    drop constraint service_requests_longitude_check,
    add constraint service_requests_longitude_check check (longitude between -180 and 180),
    drop constraint "service_requests_squareMeters_check",
    add constraint "service_requests_squareMeters_check" check ("squareMeters" > 0);
