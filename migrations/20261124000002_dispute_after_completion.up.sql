-- Cancellation policy: a customer may still cancel (dispute) a completed job while its
-- cancellation window is open; the pending payout is cancelled with it.
insert into service_request_transitions ("fromStatus", "toStatus") values ('COMPLETED', 'CANCELLED');
