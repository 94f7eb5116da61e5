//! Account data: global and per room (`/user/{userId}[/rooms/{roomId}]/account_data/{type}`),
//! room tags (stored as the room's `m.tag` account data) and read markers.

use axum::extract;
use ruma::{
    RoomId, UserId,
    api::client::{
        config::{
            get_global_account_data::v3 as get_v3, get_room_account_data::v3 as get_room_v3,
            set_global_account_data::v3 as set_v3, set_room_account_data::v3 as set_room_v3,
        },
        read_marker::set_read_marker::v3 as read_marker_v3,
        tag::{
            create_tag::v3 as create_tag_v3, delete_tag::v3 as delete_tag_v3,
            get_tags::v3 as get_tags_v3,
        },
    },
    serde::Raw,
};
use serde_json::{Value, json, value::RawValue};

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse, State},
    service::Services,
};

/// Types the server manages itself; clients may not set them through the account data API.
const SERVER_MANAGED: &[&str] = &["m.fully_read", "m.push_rules"];

fn require_own(sender: &UserId, target: &UserId) -> Result<()> {
    if sender != target {
        return Err(Error::forbidden(
            "You may only access your own account data.",
        ));
    }
    Ok(())
}

fn checked_content<'a>(event_type: &str, content: &'a RawValue) -> Result<&'a RawValue> {
    if SERVER_MANAGED.contains(&event_type) {
        return Err(Error::new(
            http::StatusCode::METHOD_NOT_ALLOWED,
            ruma::api::error::ErrorKind::BadJson,
            format!("{event_type} is managed by the server and cannot be set here."),
        ));
    }
    if !content.get().trim_start().starts_with('{') {
        return Err(Error::bad_json(
            "Account data content must be a JSON object.",
        ));
    }
    Ok(content)
}

fn found(content: Option<Box<RawValue>>) -> Result<Box<RawValue>> {
    content.ok_or_else(|| Error::not_found("No account data of that type."))
}

pub async fn get_global(
    extract::State(services): extract::State<State>,
    request: Ruma<get_v3::Request>,
) -> Result<RumaResponse<get_v3::Response>> {
    require_own(request.user(), &request.body.user_id)?;
    let event_type = request.body.event_type.to_string();
    let content = found(
        services
            .account_data
            .get(request.user(), None, &event_type)?,
    )?;
    Ok(RumaResponse(get_v3::Response::new(Raw::from_json(content))))
}

pub async fn set_global(
    extract::State(services): extract::State<State>,
    request: Ruma<set_v3::Request>,
) -> Result<RumaResponse<set_v3::Response>> {
    require_own(request.user(), &request.body.user_id)?;
    let event_type = request.body.event_type.to_string();
    let content = checked_content(&event_type, request.body.data.json())?;
    services
        .set_account_data(request.user(), None, &event_type, content)
        .await?;
    Ok(RumaResponse(set_v3::Response::new()))
}

pub async fn get_room(
    extract::State(services): extract::State<State>,
    request: Ruma<get_room_v3::Request>,
) -> Result<RumaResponse<get_room_v3::Response>> {
    let body = &request.body;
    require_own(request.user(), &body.user_id)?;
    let event_type = body.event_type.to_string();
    let content = found(services.account_data.get(
        request.user(),
        Some(&body.room_id),
        &event_type,
    )?)?;
    Ok(RumaResponse(get_room_v3::Response::new(Raw::from_json(
        content,
    ))))
}

pub async fn set_room(
    extract::State(services): extract::State<State>,
    request: Ruma<set_room_v3::Request>,
) -> Result<RumaResponse<set_room_v3::Response>> {
    let body = &request.body;
    require_own(request.user(), &body.user_id)?;
    let event_type = body.event_type.to_string();
    let content = checked_content(&event_type, body.data.json())?;
    services
        .set_account_data(request.user(), Some(&body.room_id), &event_type, content)
        .await?;
    Ok(RumaResponse(set_room_v3::Response::new()))
}

/// The room's `m.tag` content's `tags` object.
fn tags_of(
    services: &Services,
    user: &UserId,
    room: &RoomId,
) -> Result<serde_json::Map<String, Value>> {
    Ok(
        match services.account_data.get(user, Some(room), "m.tag")? {
            Some(raw) => serde_json::from_str::<Value>(raw.get())?["tags"]
                .as_object()
                .cloned()
                .unwrap_or_default(),
            None => serde_json::Map::new(),
        },
    )
}

async fn store_tags(
    services: &Services,
    user: &UserId,
    room: &RoomId,
    tags: serde_json::Map<String, Value>,
) -> Result<()> {
    let content = serde_json::value::to_raw_value(&json!({ "tags": tags }))?;
    services
        .set_account_data(user, Some(room), "m.tag", &content)
        .await
}

pub async fn get_tags(
    extract::State(services): extract::State<State>,
    request: Ruma<get_tags_v3::Request>,
) -> Result<RumaResponse<get_tags_v3::Response>> {
    let body = &request.body;
    require_own(request.user(), &body.user_id)?;
    let tags = tags_of(&services, request.user(), &body.room_id)?;
    let tags = serde_json::from_value(Value::Object(tags))
        .map_err(|e| Error::internal(format!("stored tags unreadable: {e}")))?;
    Ok(RumaResponse(get_tags_v3::Response::new(tags)))
}

pub async fn create_tag(
    extract::State(services): extract::State<State>,
    request: Ruma<create_tag_v3::Request>,
) -> Result<RumaResponse<create_tag_v3::Response>> {
    let body = &request.body;
    require_own(request.user(), &body.user_id)?;
    let mut tags = tags_of(&services, request.user(), &body.room_id)?;
    tags.insert(body.tag.clone(), serde_json::to_value(&body.tag_info)?);
    store_tags(&services, request.user(), &body.room_id, tags).await?;
    Ok(RumaResponse(create_tag_v3::Response::new()))
}

pub async fn delete_tag(
    extract::State(services): extract::State<State>,
    request: Ruma<delete_tag_v3::Request>,
) -> Result<RumaResponse<delete_tag_v3::Response>> {
    let body = &request.body;
    require_own(request.user(), &body.user_id)?;
    let mut tags = tags_of(&services, request.user(), &body.room_id)?;
    tags.remove(&body.tag);
    store_tags(&services, request.user(), &body.room_id, tags).await?;
    Ok(RumaResponse(delete_tag_v3::Response::new()))
}

/// `POST /rooms/{roomId}/read_markers`: the fully-read marker (room account data
/// `m.fully_read`) and, optionally, read receipts.
pub async fn read_markers(
    extract::State(services): extract::State<State>,
    request: Ruma<read_marker_v3::Request>,
) -> Result<RumaResponse<read_marker_v3::Response>> {
    let body = &request.body;
    let user = request.user();
    if let Some(event_id) = &body.fully_read {
        services.visible_event(&body.room_id, request.viewer(), event_id)?;
        let content = serde_json::value::to_raw_value(&json!({ "event_id": event_id }))?;
        services
            .set_account_data(user, Some(&body.room_id), "m.fully_read", &content)
            .await?;
    }
    if let Some(event_id) = &body.read_receipt {
        services
            .set_receipt(&body.room_id, user, "m.read", event_id, None)
            .await?;
    }
    if let Some(event_id) = &body.private_read_receipt {
        services
            .set_receipt(&body.room_id, user, "m.read.private", event_id, None)
            .await?;
    }
    Ok(RumaResponse(read_marker_v3::Response::new()))
}
