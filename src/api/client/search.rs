//! `POST /search`: full-text search of the rooms the user is in (category `room_events`).

use axum::{Json, extract};
use ruma::api::client::search::search_events::v3 as search_v3;
use serde_json::{Value, json};

use crate::{
    Error, Result,
    api::ruma::{Ruma, State},
    service::rooms::{
        search::{Field, Order, SearchQuery},
        sync_filter::EventMatcher,
    },
};

/// Most events of context on either side of a result.
const MAX_CONTEXT: usize = 20;

pub async fn search(
    extract::State(services): extract::State<State>,
    request: Ruma<search_v3::Request>,
) -> Result<Json<Value>> {
    let body = &request.body;
    let Some(criteria) = &body.search_categories.room_events else {
        // No category asked for: nothing to search.
        return Ok(Json(json!({ "search_categories": {} })));
    };
    let skip = match body.next_batch.as_deref() {
        None => 0,
        Some(token) => token
            .parse::<usize>()
            .map_err(|_| Error::invalid_param("Unknown next_batch token."))?,
    };
    let fields = match &criteria.keys {
        None => Vec::new(),
        Some(keys) => keys
            .iter()
            .map(|key| match key.as_str() {
                "content.body" => Ok(Field::Body),
                "content.name" => Ok(Field::Name),
                "content.topic" => Ok(Field::Topic),
                other => Err(Error::invalid_param(format!("Unknown search key {other}."))),
            })
            .collect::<Result<_>>()?,
    };
    let order = match criteria.order_by.as_ref().map(|o| o.as_str()) {
        None | Some("rank") => Order::Rank,
        Some("recent") => Order::Recent,
        Some(other) => return Err(Error::invalid_param(format!("Unknown order_by {other}."))),
    };
    let context_limit = |n: ruma::UInt| {
        usize::try_from(u64::from(n))
            .unwrap_or(MAX_CONTEXT)
            .min(MAX_CONTEXT)
    };
    let grouped = |key: &str| {
        criteria
            .groupings
            .group_by
            .iter()
            .any(|g| g.key.as_ref().is_some_and(|k| k.as_str() == key))
    };
    let filter = EventMatcher::from_room_event_filter(&criteria.filter);
    let room_events = services.search_room_events(
        request.viewer(),
        &SearchQuery {
            term: &criteria.search_term,
            fields,
            filter: &filter,
            order,
            skip,
            before_limit: context_limit(criteria.event_context.before_limit),
            after_limit: context_limit(criteria.event_context.after_limit),
            include_profile: criteria.event_context.include_profile,
            context: true,
            include_state: criteria.include_state == Some(true),
            group_by_room: grouped("room_id"),
            group_by_sender: grouped("sender"),
        },
    )?;
    Ok(Json(
        json!({ "search_categories": { "room_events": room_events } }),
    ))
}
