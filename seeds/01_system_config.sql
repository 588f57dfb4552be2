-- Every tunable the engine reads at run time. `on conflict do nothing`: seeding again never
-- overwrites a value an operator has tuned with the guide's UPDATE statements.
insert into system_config (key, value, description) values
    ('worker_timeout_minutes', '5', 'Minutes a worker has to answer an offer (fractions allowed)'),
    ('cancellation_window_hours', '24', 'Hours after completion during which the customer may dispute; payouts are released after it'),
    ('commission_percentage', '0.15', 'Platform commission as a fraction of the total (0.0 to 1.0)'),
    ('max_assignment_attempts', '5', 'Offers made for one request before it ends UNASSIGNED'),
    ('search_radius_steps_km', '2,5,10,20', 'Radii searched outward, in kilometres, comma separated'),
    ('candidates_per_search', '10', 'Nearest workers fetched per radius step'),
    ('late_cancellation_fee_percentage', '0.10', 'Share of the total charged when the customer cancels after a worker was assigned'),
    ('worker_assignment_cron', '* * * * *', 'Schedule of the WorkerAssignmentCron sweep (5 or 6 field cron)'),
    ('payout_release_cron', '* * * * *', 'Schedule of the PayoutReleaseCron sweep (5 or 6 field cron)'),
    ('payout_release_batch_size', '100', 'Payouts released per batch'),
    ('outbox_batch_size', '500', 'Outbox events claimed per relay batch'),
    ('outbox_max_attempts', '10', 'Publish attempts before an outbox event is parked'),
    ('ai_multiplier_min', '0.5', 'Lowest combined multiplier the AI pricing may produce'),
    ('ai_multiplier_max', '3.0', 'Highest combined multiplier the AI pricing may produce'),
    ('max_square_meters', '100000', 'Largest job size accepted, in square metres'),
    ('dispatch_rollout_percentage', '100', 'Share of requests (0-100, by a hash of the id) this engine dispatches; the others are left to the legacy dispatcher')
on conflict (key) do nothing;
