//! `GET /sync` (v2).

use std::time::Duration;

use axum::{Json, extract};
use ruma::api::client::sync::sync_events::v3 as sync_v3;

use crate::{
    Error, Result,
    api::ruma::{Ruma, State},
    service::{
        presence::PresenceUpdate,
        rooms::{sync::SyncRequest, sync_filter::SyncFilter},
    },
};

/// The longest long-poll.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn sync(
    extract::State(services): extract::State<State>,
    extract::RawQuery(query): extract::RawQuery,
    request: Ruma<sync_v3::Request>,
) -> Result<Json<crate::service::rooms::sync::SyncAnswer>> {
    let body = &request.body;
    // MSC4222 under its unstable name (what matrix-js-sdk sends on every sync): answered in
    // the unstable section name it reads.
    let unstable_state_after = !body.use_state_after
        && query.as_deref().is_some_and(|q| {
            q.split('&')
                .any(|pair| pair == "org.matrix.msc4222.use_state_after=true")
        });
    let since = match &body.since {
        Some(token) => Some(
            token
                .parse::<u64>()
                .map_err(|_| Error::invalid_param("Unknown sync token."))?,
        ),
        None => None,
    };
    // The filter, inline or by ID.
    let filter = match &body.filter {
        Some(sync_v3::Filter::FilterDefinition(filter)) => SyncFilter::new(filter),
        Some(sync_v3::Filter::FilterId(id)) => SyncFilter::new(
            &services
                .filters
                .get(request.user(), id)?
                .ok_or_else(|| Error::invalid_param("Unknown filter ID."))?,
        ),
        _ => SyncFilter::default(),
    };
    let options = SyncRequest {
        since,
        full_state: body.full_state,
        use_state_after: body.use_state_after || unstable_state_after,
        state_after_key: if unstable_state_after {
            "org.matrix.msc4222.state_after"
        } else {
            "state_after"
        },
        timeout: body.timeout.unwrap_or_default().min(MAX_TIMEOUT),
        filter,
        device_id: request.device(),
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
