//! Relations and threads: `/relations` (the events that relate to one, by type) and
//! `/threads` (a room's thread roots by latest reply).

use axum::{Json, extract};
use ruma::api::client::{
    relations::{
        get_relating_events::v1 as relating_v1,
        get_relating_events_with_rel_type::v1 as by_type_v1,
        get_relating_events_with_rel_type_and_event_type::v1 as by_type_and_event_v1,
    },
    threads::get_threads::v1 as threads_v1,
};
use ruma::{EventId, RoomId, UInt};
use serde_json::{Value, json};

use super::room::stream_token;
use crate::{
    Result,
    api::ruma::{Ruma, State},
    service::rooms::{
        client_event::Viewer,
        history::Direction,
        relations::{RECURSION_DEPTH, RelationsPage, RelationsQuery},
    },
};

/// Events per page when the client names no limit, and the most it may ask for.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 1000;

fn limit(limit: Option<UInt>) -> usize {
    limit.map_or(DEFAULT_LIMIT, |l| {
        usize::try_from(u64::from(l))
            .unwrap_or(MAX_LIMIT)
            .clamp(1, MAX_LIMIT)
    })
}

/// The parts the three `/relations` routes share.
struct Params<'a> {
    room_id: &'a RoomId,
    event_id: &'a EventId,
    from: Option<&'a str>,
    to: Option<&'a str>,
    dir: ruma::api::Direction,
    limit: Option<UInt>,
    recurse: bool,
}

/// The [`Params`] of any of the three requests (their shared fields have the same names).
macro_rules! params {
    ($body:expr) => {
        Params {
            room_id: &$body.room_id,
            event_id: &$body.event_id,
            from: $body.from.as_deref(),
            to: $body.to.as_deref(),
            dir: $body.dir,
            limit: $body.limit,
            recurse: $body.recurse,
        }
    };
}

fn relations_response(
    services: &State,
    viewer: Viewer<'_>,
    params: Params<'_>,
    rel_type: Option<&str>,
    event_type: Option<&str>,
) -> Result<Json<Value>> {
    let direction = match params.dir {
        ruma::api::Direction::Forward => Direction::Forward,
        _ => Direction::Backward,
    };
    let from = stream_token(params.from)?;
    let page = services.relations(
        params.room_id,
        viewer,
        params.event_id,
        &RelationsQuery {
            rel_type,
            event_type,
            from,
            to: stream_token(params.to)?,
            direction,
            limit: limit(params.limit),
            recurse: params.recurse,
        },
    )?;
    let mut response = page_json(page);
    if let Some(from) = params.from {
        response["prev_batch"] = from.into();
    }
    if params.recurse {
        response["recursion_depth"] = RECURSION_DEPTH.into();
    }
    Ok(Json(response))
}

fn page_json(page: RelationsPage) -> Value {
    let mut response = json!({ "chunk": page.events });
    if let Some(next) = page.next {
        response["next_batch"] = next.to_string().into();
    }
    response
}

pub async fn relating_events(
    extract::State(services): extract::State<State>,
    request: Ruma<relating_v1::Request>,
) -> Result<Json<Value>> {
    let body = &request.body;
    let params = params!(body);
    relations_response(&services, request.viewer(), params, None, None)
}

pub async fn relating_events_by_type(
    extract::State(services): extract::State<State>,
    request: Ruma<by_type_v1::Request>,
) -> Result<Json<Value>> {
    let body = &request.body;
    let params = params!(body);
    let rel_type = body.rel_type.to_string();
    relations_response(&services, request.viewer(), params, Some(&rel_type), None)
}

pub async fn relating_events_by_type_and_event_type(
    extract::State(services): extract::State<State>,
    request: Ruma<by_type_and_event_v1::Request>,
) -> Result<Json<Value>> {
    let body = &request.body;
    let params = params!(body);
    let rel_type = body.rel_type.to_string();
    let event_type = body.event_type.to_string();
    relations_response(
        &services,
        request.viewer(),
        params,
        Some(&rel_type),
        Some(&event_type),
    )
}

pub async fn threads(
    extract::State(services): extract::State<State>,
    request: Ruma<threads_v1::Request>,
) -> Result<Json<Value>> {
    let body = &request.body;
    let page = services.threads(
        &body.room_id,
        request.viewer(),
        body.include == threads_v1::IncludeThreads::Participated,
        stream_token(body.from.as_deref())?,
        limit(body.limit),
    )?;
    Ok(Json(page_json(page)))
}
