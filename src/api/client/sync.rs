//! `GET /sync` (v2).

use std::time::Duration;

use axum::{Json, extract};
use ruma::api::client::sync::sync_events::v3 as sync_v3;
use serde_json::Value;

use crate::{
    Error, Result,
    api::ruma::{Ruma, State},
    service::{presence::PresenceUpdate, rooms::sync::SyncRequest},
};

/// Default and largest timeline per room, and the longest long-poll.
const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 100;
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn sync(
    extract::State(services): extract::State<State>,
    request: Ruma<sync_v3::Request>,
) -> Result<Json<Value>> {
    let body = &request.body;
    let since = match &body.since {
        Some(token) => Some(
            token
                .parse::<u64>()
                .map_err(|_| Error::invalid_param("Unknown sync token."))?,
        ),
        None => None,
    };
    // The filter, inline or by ID, sets the timeline limit (its other fields come later).
    let stored;
    let filter = match &body.filter {
        Some(sync_v3::Filter::FilterDefinition(filter)) => Some(filter),
        Some(sync_v3::Filter::FilterId(id)) => {
            stored = services
                .filters
                .get(request.user(), id)?
                .ok_or_else(|| Error::invalid_param("Unknown filter ID."))?;
            Some(&stored)
        }
        _ => None,
    };
    let limit = filter
        .and_then(|f| f.room.timeline.limit)
        .map(|l| usize::try_from(u64::from(l)).unwrap_or(MAX_LIMIT))
        .unwrap_or(DEFAULT_LIMIT)
        .clamp(1, MAX_LIMIT);
    let options = SyncRequest {
        since,
        full_state: body.full_state,
        timeout: body.timeout.unwrap_or_default().min(MAX_TIMEOUT),
        limit,
    };
    // Presence: `offline` leaves it alone; otherwise a transition wakes others' long-polls.
    if body.set_presence != ruma::presence::PresenceState::Offline {
        let state = crate::service::presence::parse_state(&body.set_presence)?;
        services
            .set_presence(request.user(), PresenceUpdate::Sync { state })
            .await?;
    }
    Ok(Json(services.sync(request.user(), options).await?))
}
