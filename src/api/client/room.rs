//! Rooms: `createRoom`, sending message and state events, reading state.

use axum::{
    Json, extract,
    response::{IntoResponse, Response},
};
use ruma::api::client::{
    membership::get_member_events::v3 as members_v3,
    message::{get_message_events::v3 as messages_v3, send_message_event::v3 as send_v3},
    redact::redact_event::v3 as redact_v3,
    room::get_room_event::v3 as event_v3,
    room::{Visibility, create_room::v3 as create_v3},
    state::{
        get_state_event_for_key::v3 as get_state_key_v3, get_state_events::v3 as get_state_v3,
        send_state_event::v3 as state_v3,
    },
};
use ruma::serde::Raw;
use serde_json::{Map, Value, json};

use super::delayed_events;
use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse, State},
    service::delayed_events::NewDelayedEvent,
    service::rooms::{
        client_event::{ClientEvent, Detail},
        create::{CreateRoom, Preset},
        history::Direction,
        sync_filter::EventMatcher,
        timeline::{ClientTxn, LocalEvent, with_origin_ts},
    },
    service::users,
};

fn object(json: &serde_json::value::RawValue, what: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str(json.get()) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Error::bad_json(format!("{what} must be a JSON object."))),
    }
}

pub async fn create_room(
    extract::State(services): extract::State<State>,
    request: Ruma<create_v3::Request>,
) -> Result<RumaResponse<create_v3::Response>> {
    let body = &request.body;
    let alias = match &body.room_alias_name {
        Some(name) if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == ':') => {
            return Err(Error::invalid_param(
                "room_alias_name must be non-empty, without spaces or colons.",
            ));
        }
        Some(name) if name.len() + services.server_name.as_str().len() + 2 > 255 => {
            return Err(Error::invalid_param(
                "The room alias would be longer than 255 bytes.",
            ));
        }
        Some(name) => Some(
            ruma::RoomAliasId::parse(format!("#{name}:{}", services.server_name))
                .map_err(|e| Error::invalid_param(format!("Invalid room_alias_name: {e}")))?,
        ),
        None => None,
    };
    if let Some(alias) = &alias {
        services
            .appservices
            .check_alias_exclusive(alias, request.appservice.as_deref())?;
    }
    for invitee in &body.invite {
        services.query_appservices_for_user(invitee).await?;
    }
    let preset = match body.preset.as_ref().map(|p| p.as_str()) {
        Some("private_chat") => Preset::PrivateChat,
        Some("trusted_private_chat") => Preset::TrustedPrivateChat,
        Some("public_chat") => Preset::PublicChat,
        Some(other) => return Err(Error::bad_json(format!("Unknown preset {other}."))),
        None if body.visibility == Visibility::Public => Preset::PublicChat,
        None => Preset::PrivateChat,
    };
    let mut initial_state = Vec::new();
    for event in &body.initial_state {
        let event = object(event.json(), "An initial_state event")?;
        let event_type = event.get("type").and_then(Value::as_str);
        let content = event.get("content").cloned();
        let (Some(event_type), Some(content)) = (event_type, content) else {
            return Err(Error::bad_json(
                "initial_state events need a type and a content.",
            ));
        };
        let state_key = event
            .get("state_key")
            .and_then(Value::as_str)
            .unwrap_or_default();
        initial_state.push((event_type.to_owned(), state_key.to_owned(), content));
    }
    let create = CreateRoom {
        version: body.room_version.clone(),
        preset,
        creation_content: match &body.creation_content {
            Some(raw) => object(raw.json(), "creation_content")?,
            None => Map::new(),
        },
        power_level_override: match &body.power_level_content_override {
            Some(raw) => object(raw.json(), "power_level_content_override")?,
            None => Map::new(),
        },
        initial_state,
        name: body.name.clone(),
        topic: body.topic.clone(),
        // A shadow-banned account's room is made, its invites are not.
        invite: if request.shadow_banned() {
            Vec::new()
        } else {
            body.invite.clone()
        },
        is_direct: body.is_direct,
        alias,
    };
    let room_id = services.create_room(request.user(), create).await?;
    if body.visibility == Visibility::Public {
        services.publish(&room_id, true)?;
    }
    Ok(RumaResponse(create_v3::Response::new(room_id)))
}

/// The limit on the events a user sends (`rate_limits.message_per_minute`, off by default;
/// appservices are not limited).
fn check_message_rate<T>(services: &State, request: &Ruma<T>) -> Result<()> {
    if request.rate_limited() {
        services
            .rate_limiter
            .check_message(request.user().as_str())
            .map_err(Error::limit_exceeded)?;
    }
    Ok(())
}

pub async fn send_message(
    extract::State(services): extract::State<State>,
    extract::RawQuery(query): extract::RawQuery,
    request: Ruma<send_v3::Request>,
) -> Result<Response> {
    let body = &request.body;
    let event_type = body.event_type.to_string();
    let content = Value::Object(object(body.body.json(), "The event content")?);
    if request.shadow_banned() {
        return Ok(RumaResponse(send_v3::Response::new(users::fake_event_id())).into_response());
    }
    check_message_rate(&services, &request)?;
    let txn = ClientTxn::new(
        request.user(),
        request.device(),
        &body.room_id,
        body.txn_id.as_str(),
    );
    // A redaction sent like any event (spec v1.18, MSC4169): `redacts` in the content, moved
    // where the room version wants it by the redaction path.
    if event_type == "m.room.redaction" {
        if delayed_events::requested_delay(query.as_deref())?.is_some() {
            return Err(Error::invalid_param("Redactions cannot be delayed here."));
        }
        let target = content["redacts"]
            .as_str()
            .and_then(|id| ruma::EventId::parse(id).ok())
            .ok_or_else(|| {
                Error::bad_json("A redaction needs `redacts`: the event ID to redact.")
            })?;
        let event_id = services
            .redact_event(
                &body.room_id,
                request.user(),
                &target,
                content["reason"].as_str(),
                &txn,
            )
            .await?;
        return Ok(RumaResponse(send_v3::Response::new(event_id)).into_response());
    }
    let event = LocalEvent {
        event_type: &event_type,
        state_key: None,
        content,
        redacts: None,
    };
    // Timestamp massaging: an appservice may date a bridged message with `ts`.
    let ts = request.massaged_ts(body.timestamp);
    if let Some(delay_ms) = delayed_events::requested_delay(query.as_deref())? {
        let delayed = NewDelayedEvent {
            room_id: &body.room_id,
            event_type: &event_type,
            state_key: None,
            content: event.content,
            delay_ms,
            origin_ts: ts,
        };
        let delay_id = services
            .schedule_delayed_event(request.user(), delayed, Some(&txn))
            .await?;
        return Ok(Json(json!({ "delay_id": delay_id })).into_response());
    }
    let event_id = with_origin_ts(
        ts,
        services.timeline.append_once(
            &body.room_id,
            request.user(),
            event,
            Some(&txn),
            &services.signer(),
        ),
    )
    .await?;
    Ok(RumaResponse(send_v3::Response::new(event_id)).into_response())
}

pub async fn send_state(
    extract::State(services): extract::State<State>,
    extract::RawQuery(query): extract::RawQuery,
    request: Ruma<state_v3::Request>,
) -> Result<Response> {
    let body = &request.body;
    let event_type = body.event_type.to_string();
    let content = Value::Object(object(body.body.json(), "The event content")?);
    if request.shadow_banned() {
        return Ok(RumaResponse(state_v3::Response::new(users::fake_event_id())).into_response());
    }
    check_message_rate(&services, &request)?;
    if event_type == "m.room.canonical_alias" && body.state_key.is_empty() {
        services.check_canonical_alias(&body.room_id, &content)?;
    }
    let ts = request.massaged_ts(body.timestamp);
    if let Some(delay_ms) = delayed_events::requested_delay(query.as_deref())? {
        let delayed = NewDelayedEvent {
            room_id: &body.room_id,
            event_type: &event_type,
            state_key: Some(&body.state_key),
            content,
            delay_ms,
            origin_ts: ts,
        };
        let delay_id = services
            .schedule_delayed_event(request.user(), delayed, None)
            .await?;
        return Ok(Json(json!({ "delay_id": delay_id })).into_response());
    }
    let invites_remote_user = event_type == "m.room.member"
        && content["membership"] == "invite"
        && ruma::UserId::parse(&body.state_key)
            .is_ok_and(|invitee| invitee.server_name() != services.server_name);
    let event_id = with_origin_ts(
        ts,
        services.send_state_event(
            &body.room_id,
            request.user(),
            &event_type,
            &body.state_key,
            content,
        ),
    )
    .await?;
    // An invite sent as state reaches the invitee's server as `/invite` does.
    if invites_remote_user {
        services
            .send_remote_invite(&body.room_id, &event_id)
            .await?;
    }
    Ok(RumaResponse(state_v3::Response::new(event_id)).into_response())
}

pub async fn get_state(
    extract::State(services): extract::State<State>,
    request: Ruma<get_state_v3::Request>,
) -> Result<RumaResponse<get_state_v3::Response>> {
    let room_id = &request.body.room_id;
    let state = services.visible_state(room_id, request.user())?;
    let mut view = services.event_view(Some(request.viewer()));
    let mut events = Vec::with_capacity(state.len());
    for event_id in state.values() {
        let event = view.event(room_id, event_id, None, Detail::State)?;
        events.push(Raw::from_json(serde_json::value::to_raw_value(&event)?));
    }
    Ok(RumaResponse(get_state_v3::Response::new(events)))
}

pub async fn get_state_event(
    extract::State(services): extract::State<State>,
    request: Ruma<get_state_key_v3::Request>,
) -> Result<RumaResponse<get_state_key_v3::Response>> {
    let body = &request.body;
    let state = services.visible_state(&body.room_id, request.user())?;
    let key = (body.event_type.to_string(), body.state_key.clone());
    let event_id = state
        .get(&key)
        .ok_or_else(|| Error::not_found("No state event of that type and key."))?;
    let event = services.event_view(Some(request.viewer())).event(
        &body.room_id,
        event_id,
        None,
        Detail::State,
    )?;
    let answer = match body.format {
        get_state_key_v3::StateEventFormat::Event => event,
        _ => event["content"].clone(),
    };
    Ok(RumaResponse(get_state_key_v3::Response::new(
        serde_json::value::to_raw_value(&answer)?,
    )))
}

/// A pagination token of the room's stream (`/messages`, `/sync`'s `prev_batch`,
/// `/relations`, `/threads`): a stream count, else 400 `M_INVALID_PARAM`.
pub(crate) fn stream_token(token: Option<&str>) -> Result<Option<u64>> {
    token
        .map(|t| {
            t.parse::<u64>()
                .map_err(|_| Error::invalid_param("Unknown pagination token."))
        })
        .transpose()
}

/// Most events one `/messages` page returns.
pub(crate) const MAX_MESSAGES: usize = 1000;

pub async fn messages(
    extract::State(services): extract::State<State>,
    request: Ruma<messages_v3::Request>,
) -> Result<axum::Json<MessagesResponse>> {
    let body = &request.body;
    let (from, to) = (
        stream_token(body.from.as_deref())?,
        stream_token(body.to.as_deref())?,
    );
    let direction = match body.dir {
        ruma::api::Direction::Forward => Direction::Forward,
        _ => Direction::Backward,
    };
    let limit = usize::try_from(u64::from(body.limit))
        .unwrap_or(MAX_MESSAGES)
        .clamp(1, MAX_MESSAGES);
    let filter = EventMatcher::from_room_event_filter(&body.filter);
    let limit = filter.limit.map_or(limit, |l| l.min(limit));
    let read_page = || {
        services.messages(
            &body.room_id,
            request.viewer(),
            from,
            to,
            direction,
            limit,
            &filter,
        )
    };
    let mut page = read_page()?;
    // Paged back to the start of what this server has: fetch earlier history from the room's
    // other servers, if any, and read again.
    if direction == Direction::Backward
        && page.end.is_none()
        && services.backfill_room(&body.room_id).await? > 0
    {
        page = read_page()?;
    }
    // Lazy-loading clients get the member events of the page's senders alongside.
    let state = if body.filter.lazy_load_options.is_disabled() {
        Vec::new()
    } else {
        services.sender_members(&body.room_id, request.viewer(), &page.events)?
    };
    let start = from.unwrap_or_else(|| match direction {
        Direction::Backward => services.timeline.current_count(),
        Direction::Forward => 0,
    });
    Ok(axum::Json(MessagesResponse {
        start: start.to_string(),
        chunk: page.events,
        state,
        end: page.end.map(|end| end.to_string()),
    }))
}

/// `/messages`' answer, its events serialised straight from their stored form.
#[derive(serde::Serialize)]
pub struct MessagesResponse {
    start: String,
    chunk: Vec<ClientEvent>,
    state: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    end: Option<String>,
}

pub async fn redact(
    extract::State(services): extract::State<State>,
    request: Ruma<redact_v3::Request>,
) -> Result<RumaResponse<redact_v3::Response>> {
    let body = &request.body;
    let txn = ClientTxn::new(
        request.user(),
        request.device(),
        &body.room_id,
        body.txn_id.as_str(),
    );
    let event_id = services
        .redact_event(
            &body.room_id,
            request.user(),
            &body.event_id,
            body.reason.as_deref(),
            &txn,
        )
        .await?;
    Ok(RumaResponse(redact_v3::Response::new(event_id)))
}

pub async fn get_event(
    extract::State(services): extract::State<State>,
    request: Ruma<event_v3::Request>,
) -> Result<RumaResponse<event_v3::Response>> {
    let body = &request.body;
    let event = services.visible_event(&body.room_id, request.viewer(), &body.event_id)?;
    Ok(RumaResponse(event_v3::Response::new(Raw::from_json(
        serde_json::value::to_raw_value(&event)?,
    ))))
}

pub async fn members(
    extract::State(services): extract::State<State>,
    request: Ruma<members_v3::Request>,
) -> Result<RumaResponse<members_v3::Response>> {
    let body = &request.body;
    let at = body
        .at
        .as_deref()
        .map(|t| {
            t.parse::<u64>()
                .map_err(|_| Error::invalid_param("Unknown `at` token."))
        })
        .transpose()?;
    let membership = body.membership.as_ref().map(|m| m.as_str());
    let not_membership = body.not_membership.as_ref().map(|m| m.as_str());
    let events = services.member_events(
        &body.room_id,
        request.viewer(),
        at,
        membership,
        not_membership,
    )?;
    let chunk = events
        .iter()
        .map(|e| serde_json::value::to_raw_value(e).map(Raw::from_json))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RumaResponse(members_v3::Response::new(chunk)))
}
