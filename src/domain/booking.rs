//! Booked time slots: what a customer may book, when a booking is dispatched, and when
//! two jobs are too close for one worker. Pure rules; the settings come from
//! `system_config` (`max_slot_hours`, `booking_horizon_days`, `dispatch_lead_minutes`,
//! `travel_buffer_minutes`).

use chrono::{DateTime, Duration, Utc};

/// A time range: (start, end).
pub type Slot = (DateTime<Utc>, DateTime<Utc>);

/// Why a slot cannot be booked (the API answers `BAD_USER_INPUT` with this text).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SlotError {
    #[error("scheduledStart and scheduledEnd go together: give both or neither")]
    HalfASlot,
    #[error("the slot starts in the past")]
    InThePast,
    #[error("scheduledEnd must be after scheduledStart")]
    EndsBeforeItStarts,
    #[error("the slot is longer than {max_hours} hours (max_slot_hours)")]
    TooLong { max_hours: f64 },
    #[error("the slot starts more than {max_days} days ahead (booking_horizon_days)")]
    BeyondHorizon { max_days: f64 },
}

/// The booking limits in force.
#[derive(Debug, Clone, Copy)]
pub struct BookingRules {
    pub max_slot: std::time::Duration,
    pub horizon: std::time::Duration,
}

/// Checks an optional slot; `Ok(None)` is a job wanted now.
pub fn check_slot(
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    rules: BookingRules,
) -> Result<Option<Slot>, SlotError> {
    let (start, end) = match (start, end) {
        (None, None) => return Ok(None),
        (Some(start), Some(end)) => (start, end),
        _ => return Err(SlotError::HalfASlot),
    };
    if start <= now {
        return Err(SlotError::InThePast);
    }
    if end <= start {
        return Err(SlotError::EndsBeforeItStarts);
    }
    if (end - start).to_std().unwrap_or_default() > rules.max_slot {
        return Err(SlotError::TooLong {
            max_hours: rules.max_slot.as_secs_f64() / 3600.0,
        });
    }
    if (start - now).to_std().unwrap_or_default() > rules.horizon {
        return Err(SlotError::BeyondHorizon {
            max_days: rules.horizon.as_secs_f64() / 86_400.0,
        });
    }
    Ok(Some((start, end)))
}

/// `span` before `at` (a booking's dispatch time, its reminder time).
pub fn before(at: DateTime<Utc>, span: std::time::Duration) -> DateTime<Utc> {
    at - Duration::from_std(span).unwrap_or(Duration::zero())
}

/// When a booking starts being offered to workers.
pub fn dispatch_at(slot_start: DateTime<Utc>, lead: std::time::Duration) -> DateTime<Utc> {
    before(slot_start, lead)
}

/// The status a new request is created in: SCHEDULED for a booking whose dispatch time is
/// still ahead; PENDING (dispatched at once) for a job wanted now or booked within the lead.
pub fn initial_status(
    slot: Option<Slot>,
    lead: std::time::Duration,
    now: DateTime<Utc>,
) -> super::Status {
    match slot {
        Some((start, _)) if dispatch_at(start, lead) > now => super::Status::Scheduled,
        _ => super::Status::Pending,
    }
}

/// The time a job blocks a worker's day, widened by the travel buffer on both sides.
pub fn blocked(slot: Slot, travel_buffer: std::time::Duration) -> Slot {
    let buffer = Duration::from_std(travel_buffer).unwrap_or(Duration::zero());
    (slot.0 - buffer, slot.1 + buffer)
}

/// True when two time ranges share any instant (touching ends do not overlap).
pub fn overlaps(a: Slot, b: Slot) -> bool {
    a.0 < b.1 && b.0 < a.1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> BookingRules {
        BookingRules {
            max_slot: std::time::Duration::from_secs(8 * 3600),
            horizon: std::time::Duration::from_secs(30 * 86_400),
        }
    }

    #[test]
    fn a_slot_is_checked_against_each_rule() {
        let now = Utc::now();
        let h = Duration::hours;
        assert_eq!(check_slot(None, None, now, rules()), Ok(None));
        assert_eq!(
            check_slot(Some(now + h(1)), None, now, rules()),
            Err(SlotError::HalfASlot)
        );
        assert_eq!(
            check_slot(Some(now - h(1)), Some(now + h(1)), now, rules()),
            Err(SlotError::InThePast)
        );
        assert_eq!(
            check_slot(Some(now + h(3)), Some(now + h(2)), now, rules()),
            Err(SlotError::EndsBeforeItStarts)
        );
        assert!(matches!(
            check_slot(Some(now + h(1)), Some(now + h(10)), now, rules()),
            Err(SlotError::TooLong { .. })
        ));
        assert!(matches!(
            check_slot(
                Some(now + h(24 * 31)),
                Some(now + h(24 * 31 + 2)),
                now,
                rules()
            ),
            Err(SlotError::BeyondHorizon { .. })
        ));
        let ok = check_slot(Some(now + h(48)), Some(now + h(50)), now, rules()).unwrap();
        assert_eq!(ok, Some((now + h(48), now + h(50))));
    }

    #[test]
    fn the_travel_buffer_makes_close_jobs_overlap() {
        let t0 = Utc::now();
        let m = Duration::minutes;
        let saturday_10_to_12 = (t0, t0 + m(120));
        let right_after = (t0 + m(130), t0 + m(200));
        assert!(!overlaps(saturday_10_to_12, right_after));
        let buffer = std::time::Duration::from_secs(30 * 60);
        assert!(overlaps(blocked(saturday_10_to_12, buffer), right_after));
        assert!(!overlaps(
            blocked(saturday_10_to_12, buffer),
            (t0 + m(151), t0 + m(200))
        ));
    }
}
