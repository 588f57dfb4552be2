//! `/ops/attention`: the requests an operator should look at, each one click from its
//! decision trail on the page. Stuck means what the backstop means (`Store::stalled_requests`
//! through the cron's thresholds); unassigned means given up on within the last hour.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{OpsContext, OpsError};
use crate::jobs::cron::{STALLED_OFFER_OVERDUE_BY, STALLED_PENDING_AFTER};
use crate::store::{AttentionRow, AttentionWindow};

/// How far back UNASSIGNED requests are listed.
pub const UNASSIGNED_WITHIN: Duration = Duration::from_secs(3600);
/// At most this many stuck requests, and this many unassigned ones.
pub const LIST_LIMIT: i64 = 50;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Attention {
    pub at: DateTime<Utc>,
    /// A PENDING request untouched this long is stuck.
    pub stalled_pending_after_seconds: u64,
    /// An OFFERING request this far past its offer deadline is stuck.
    pub offer_overdue_after_seconds: u64,
    /// UNASSIGNED requests of this last stretch are listed.
    pub unassigned_within_seconds: u64,
    pub limit: i64,
    /// Stuck ones first (longest without progress first), then unassigned (newest first).
    pub items: Vec<AttentionItem>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttentionItem {
    /// The request as the database has it.
    #[serde(flatten)]
    pub row: AttentionRow,
    /// Seconds since the row last changed.
    pub idle_seconds: i64,
    /// Whether this engine has a live actor for it.
    pub has_actor: bool,
}

impl Attention {
    pub async fn load(state: &OpsContext) -> Result<Attention, OpsError> {
        let window = AttentionWindow {
            pending_for: STALLED_PENDING_AFTER,
            overdue_by: STALLED_OFFER_OVERDUE_BY,
            unassigned_within: UNASSIGNED_WITHIN,
            limit: LIST_LIMIT,
        };
        let rows = state.store.attention_requests(window).await?;
        let now = Utc::now();
        Ok(Attention {
            at: now,
            stalled_pending_after_seconds: window.pending_for.as_secs(),
            offer_overdue_after_seconds: window.overdue_by.as_secs(),
            unassigned_within_seconds: window.unassigned_within.as_secs(),
            limit: window.limit,
            items: rows
                .into_iter()
                .map(|row| AttentionItem {
                    has_actor: state.dispatcher.has_actor(row.id),
                    idle_seconds: (now - row.updated_at).num_seconds().max(0),
                    row,
                })
                .collect(),
        })
    }
}
