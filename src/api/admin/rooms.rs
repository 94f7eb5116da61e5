//! Synapse's room admin API (rooms: list, details, members, state, block, delete with its
//! status) and event reports (list, details, delete).

use axum::{
    Json,
    extract::{self, Path},
};
use ruma::{RoomId, UserId, events::room::member::MembershipState};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Admin, AdminJson, AdminQuery, backwards, room_id};
use crate::{
    Error, Result,
    api::ruma::State,
    service::{
        admin::{
            RoomOrder, RoomOverview,
            room_deletion::{DeleteRoom, Deletion},
        },
        reports::{ReportRecord, Reported},
        rooms::client_event::{Detail, Viewer},
    },
};

fn known_room(services: &State, raw: &str) -> Result<RoomOverview> {
    services
        .room_overview(&room_id(raw)?)?
        .ok_or_else(|| Error::not_found("Room not found"))
}

/// A room in a listing (Synapse's fields).
fn listed(room: &RoomOverview) -> Value {
    let d = &room.description;
    json!({
        "room_id": d.room_id,
        "name": d.name,
        "canonical_alias": d.canonical_alias,
        "joined_members": d.num_joined_members,
        "joined_local_members": room.joined_local_members,
        "version": d.room_version.as_str(),
        "creator": room.creator,
        "encryption": d.encryption,
        "federatable": room.federatable,
        "public": room.public,
        "join_rules": room.join_rules,
        "guest_access": room.guest_access,
        "history_visibility": room.history_visibility,
        "state_events": room.state_events,
        "room_type": d.room_type,
    })
}

#[derive(Deserialize)]
pub struct ListQuery {
    from: Option<usize>,
    limit: Option<usize>,
    order_by: Option<String>,
    dir: Option<String>,
    search_term: Option<String>,
}

/// `GET /v1/rooms`: every room this server knows, paginated by offset.
pub async fn list(
    extract::State(services): extract::State<State>,
    _: Admin,
    AdminQuery(query): AdminQuery<ListQuery>,
) -> Result<Json<Value>> {
    let order = match query.order_by.as_deref() {
        None => RoomOrder::Name,
        Some(name) => RoomOrder::parse(name)
            .ok_or_else(|| Error::invalid_param(format!("Unknown value for order_by: {name}")))?,
    };
    let backwards = backwards(&query.dir, false)?;
    let from = query.from.unwrap_or(0);
    let limit = query.limit.unwrap_or(100);
    let search = query.search_term.as_deref().filter(|t| !t.is_empty());
    let (page, total) = services.admin_list_rooms(search, order, backwards, from, limit)?;
    let mut body = json!({
        "offset": from,
        "rooms": page.iter().map(listed).collect::<Vec<_>>(),
        "total_rooms": total,
    });
    if from + page.len() < total {
        body["next_batch"] = json!(from + page.len());
    }
    if from > 0 {
        body["prev_batch"] = json!(from.saturating_sub(limit));
    }
    Ok(Json(body))
}

/// `GET /v1/rooms/{roomId}`.
pub async fn details(
    extract::State(services): extract::State<State>,
    _: Admin,
    Path(raw): Path<String>,
) -> Result<Json<Value>> {
    let room = known_room(&services, &raw)?;
    let d = &room.description;
    let mut body = listed(&room);
    body["avatar"] = json!(d.avatar_url);
    body["topic"] = json!(d.topic);
    body["tombstoned"] = json!(room.replacement_room.is_some());
    body["replacement_room"] = json!(room.replacement_room);
    body["forgotten"] = json!(false);
    let mut devices = 0;
    for (user, membership) in services.members.of_room(&d.room_id)? {
        if membership == MembershipState::Join && user.server_name() == services.server_name {
            devices += services.devices.list(&user)?.len();
        }
    }
    body["joined_local_devices"] = json!(devices);
    Ok(Json(body))
}

/// `GET /v1/rooms/{roomId}/members`: the joined members.
pub async fn members(
    extract::State(services): extract::State<State>,
    _: Admin,
    Path(raw): Path<String>,
) -> Result<Json<Value>> {
    let room = known_room(&services, &raw)?;
    let members: Vec<String> = services
        .members
        .of_room(&room.description.room_id)?
        .into_iter()
        .filter(|(_, membership)| *membership == MembershipState::Join)
        .map(|(user, _)| user.to_string())
        .collect();
    Ok(Json(json!({ "total": members.len(), "members": members })))
}

/// `GET /v1/rooms/{roomId}/state`: the current state events.
pub async fn state(
    extract::State(services): extract::State<State>,
    admin: Admin,
    Path(raw): Path<String>,
) -> Result<Json<Value>> {
    let room = known_room(&services, &raw)?;
    let room_id = &room.description.room_id;
    let viewer = Viewer {
        user_id: &admin.0,
        device_id: None,
    };
    let mut view = services.event_view(Some(viewer));
    let mut events = Vec::new();
    for event_id in services.timeline.current_state(room_id)?.values() {
        events.push(view.event(room_id, event_id, None, Detail::State)?);
    }
    Ok(Json(json!({ "state": events })))
}

/// An event report as Synapse lists it (`score` is not kept here); `None` for reports of
/// rooms and users, which this endpoint does not list.
fn event_report(services: &State, id: &str, record: &ReportRecord) -> Result<Option<Value>> {
    let Reported::Event { room_id, event_id } = &record.reported else {
        return Ok(None);
    };
    let room = RoomId::parse(room_id)
        .ok()
        .and_then(|r| services.room_overview(&r).ok().flatten());
    let sender = ruma::EventId::parse(event_id)
        .ok()
        .and_then(|e| services.timeline.pdu_json(&e).ok().flatten())
        .and_then(|pdu| crate::service::rooms::pdu::str_field(&pdu, "sender").map(str::to_owned));
    Ok(Some(json!({
        "id": id,
        "received_ts": record.ts,
        "room_id": room_id,
        "event_id": event_id,
        "user_id": record.reporter,
        "score": null,
        "reason": record.reason,
        "sender": sender,
        "canonical_alias": room.as_ref().and_then(|r| r.description.canonical_alias.clone()),
        "name": room.as_ref().and_then(|r| r.description.name.clone()),
    })))
}

#[derive(Deserialize)]
pub struct ReportsQuery {
    from: Option<usize>,
    limit: Option<usize>,
    dir: Option<String>,
    user_id: Option<String>,
    room_id: Option<String>,
}

/// `GET /v1/event_reports`: newest first unless `dir=f`.
pub async fn event_reports(
    extract::State(services): extract::State<State>,
    _: Admin,
    AdminQuery(query): AdminQuery<ReportsQuery>,
) -> Result<Json<Value>> {
    let mut reports = services.reports_with_ids()?;
    if backwards(&query.dir, true)? {
        reports.reverse();
    }
    let mut listed = Vec::new();
    for (id, record) in &reports {
        if query
            .user_id
            .as_deref()
            .is_some_and(|u| !record.reporter.contains(u))
        {
            continue;
        }
        if let Some(report) = event_report(&services, id, record)? {
            if query
                .room_id
                .as_deref()
                .is_some_and(|r| report["room_id"] != r)
            {
                continue;
            }
            listed.push(report);
        }
    }
    let total = listed.len();
    let from = query.from.unwrap_or(0);
    let page: Vec<Value> = listed
        .into_iter()
        .skip(from)
        .take(query.limit.unwrap_or(100))
        .collect();
    let mut body = json!({ "total": total });
    if from + page.len() < total {
        body["next_token"] = json!(from + page.len());
    }
    body["event_reports"] = Value::Array(page);
    Ok(Json(body))
}

/// `GET /v1/event_reports/{id}`: the report and the reported event.
pub async fn event_report_details(
    extract::State(services): extract::State<State>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let not_found = || Error::not_found("Event report not found");
    let record = services.report(&id)?.ok_or_else(not_found)?;
    let mut report = event_report(&services, &id, &record)?.ok_or_else(not_found)?;
    let pdu = report["event_id"]
        .as_str()
        .and_then(|e| ruma::EventId::parse(e).ok())
        .and_then(|e| services.timeline.pdu_json(&e).ok().flatten());
    report["event_json"] = serde_json::to_value(pdu)?;
    Ok(Json(report))
}

/// `DELETE /v1/event_reports/{id}`.
pub async fn delete_event_report(
    extract::State(services): extract::State<State>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    if !services.delete_report(&id)? {
        return Err(Error::not_found("Event report not found"));
    }
    admin.audit("delete report", &id);
    Ok(Json(json!({})))
}

/// `GET /v1/rooms/{roomId}/block`: whether the room is blocked, and by whom.
pub async fn get_block(
    extract::State(services): extract::State<State>,
    _: Admin,
    Path(raw): Path<String>,
) -> Result<Json<Value>> {
    let room_id = room_id(&raw)?;
    Ok(Json(match services.room_blocked_by(&room_id)? {
        Some(admin) => json!({ "block": true, "user_id": admin }),
        None => json!({ "block": false }),
    }))
}

#[derive(Deserialize)]
pub struct Block {
    block: bool,
}

/// `PUT /v1/rooms/{roomId}/block`: blocks a room (known here or not) for this server's users
/// — no joining, knocking or invites — or lifts the block.
pub async fn put_block(
    extract::State(services): extract::State<State>,
    admin: Admin,
    Path(raw): Path<String>,
    AdminJson(body): AdminJson<Block>,
) -> Result<Json<Value>> {
    let room_id = room_id(&raw)?;
    services.set_room_blocked(&room_id, &admin.0, body.block)?;
    admin.audit(
        if body.block {
            "block room"
        } else {
            "unblock room"
        },
        &room_id,
    );
    Ok(Json(json!({ "block": body.block })))
}

/// The body of a room deletion (Synapse's names and defaults: purged, not blocked).
#[derive(Deserialize)]
pub struct DeleteBody {
    new_room_user_id: Option<String>,
    room_name: Option<String>,
    message: Option<String>,
    #[serde(default)]
    block: bool,
    #[serde(default = "yes")]
    purge: bool,
    #[serde(default)]
    force_purge: bool,
}

fn yes() -> bool {
    true
}

impl DeleteBody {
    fn request(self) -> Result<DeleteRoom> {
        let new_room_user_id = match self.new_room_user_id {
            Some(raw) => Some(UserId::parse(&raw).map_err(|e| {
                Error::invalid_param(format!("Invalid new_room_user_id {raw:?}: {e}"))
            })?),
            None => None,
        };
        Ok(DeleteRoom {
            new_room_user_id,
            room_name: self.room_name,
            message: self.message,
            block: self.block,
            purge: self.purge,
            force_purge: self.force_purge,
        })
    }
}

fn shutdown_json(deletion: &Deletion) -> Value {
    serde_json::to_value(&deletion.shutdown).unwrap_or_default()
}

fn deletion_json(deletion: &Deletion) -> Value {
    let mut out = json!({
        "delete_id": deletion.delete_id,
        "status": deletion.status,
        "shutdown_room": shutdown_json(deletion),
    });
    if let Some(error) = &deletion.error {
        out["error"] = json!(error);
    }
    out
}

/// `DELETE /v1/rooms/{roomId}`: deletes a room and answers when done, with what became of its
/// members and aliases.
pub async fn delete_now(
    extract::State(services): extract::State<State>,
    admin: Admin,
    Path(raw): Path<String>,
    AdminJson(body): AdminJson<DeleteBody>,
) -> Result<Json<Value>> {
    let room_id = room_id(&raw)?;
    let request = body.request()?;
    admin.audit("delete room", &room_id);
    let deletion = services.delete_room(&room_id, &admin.0, request).await?;
    if let Some(error) = deletion.error {
        return Err(Error::invalid_param(error));
    }
    Ok(Json(shutdown_json(&deletion)))
}

/// `DELETE /v2/rooms/{roomId}`: starts deleting a room; `delete_status` tells how far it is.
pub async fn delete_in_background(
    extract::State(services): extract::State<State>,
    admin: Admin,
    Path(raw): Path<String>,
    AdminJson(body): AdminJson<DeleteBody>,
) -> Result<Json<Value>> {
    let room_id = room_id(&raw)?;
    let request = body.request()?;
    let delete_id = services.start_room_deletion(&room_id, &admin.0, request)?;
    admin.audit("delete room", &room_id);
    Ok(Json(json!({ "delete_id": delete_id })))
}

/// `GET /v2/rooms/{roomId}/delete_status`: the room's deletions of this run.
pub async fn delete_status_of_room(
    extract::State(services): extract::State<State>,
    _: Admin,
    Path(raw): Path<String>,
) -> Result<Json<Value>> {
    let room_id = room_id(&raw)?;
    let deletions = services.room_deletions.of_room(&room_id);
    if deletions.is_empty() {
        return Err(Error::not_found("No deletion of this room."));
    }
    let results: Vec<Value> = deletions.iter().map(deletion_json).collect();
    Ok(Json(json!({ "results": results })))
}

/// `GET /v2/rooms/delete_status/{deleteId}`: one deletion.
pub async fn delete_status(
    extract::State(services): extract::State<State>,
    _: Admin,
    Path(delete_id): Path<String>,
) -> Result<Json<Value>> {
    let deletion = services
        .room_deletions
        .get(&delete_id)
        .ok_or_else(|| Error::not_found("No such deletion."))?;
    let mut out = deletion_json(&deletion);
    if let Some(fields) = out.as_object_mut() {
        fields.remove("delete_id");
    }
    Ok(Json(out))
}

#[derive(Deserialize)]
pub struct MakeRoomAdminBody {
    user_id: Option<String>,
}

/// `POST /v1/rooms/{roomIdOrAlias}/make_room_admin`: gives a local user (the admin by
/// default) the power of the room's most powerful local member.
pub async fn make_room_admin(
    extract::State(services): extract::State<State>,
    admin: Admin,
    Path(raw): Path<String>,
    AdminJson(body): AdminJson<MakeRoomAdminBody>,
) -> Result<Json<Value>> {
    let room_id = match ruma::RoomAliasId::parse(&raw) {
        Ok(alias) => services
            .resolve_alias(&alias)?
            .ok_or_else(|| Error::not_found("Room not found"))?,
        Err(_) => room_id(&raw)?,
    };
    let target = match body.user_id {
        Some(raw) => super::existing_user(&services, &raw)?,
        None => admin.0.clone(),
    };
    if !services.users.is_active(&target)? {
        return Err(Error::invalid_param(format!(
            "{target} is no active account of this server."
        )));
    }
    services.make_room_admin(&room_id, &target).await?;
    admin.audit("make room admin", &format!("{target} in {room_id}"));
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub struct MessagesQuery {
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
    dir: Option<String>,
    filter: Option<String>,
}

/// `GET /v1/rooms/{roomId}/messages`: a room's history as `/messages` gives it, whatever the
/// admin may see as a member (backwards from the newest unless `dir=f`).
pub async fn messages(
    extract::State(services): extract::State<State>,
    admin: Admin,
    Path(raw): Path<String>,
    AdminQuery(query): AdminQuery<MessagesQuery>,
) -> Result<Json<Value>> {
    use crate::api::client::room::{MAX_MESSAGES, stream_token};
    use crate::service::rooms::{history::Direction, sync_filter::EventMatcher};
    let room_id = room_id(&raw)?;
    let from = stream_token(query.from.as_deref())?;
    let to = stream_token(query.to.as_deref())?;
    let direction = if backwards(&query.dir, true)? {
        Direction::Backward
    } else {
        Direction::Forward
    };
    let limit = super::number("limit", &query.limit, 10)?.clamp(1, MAX_MESSAGES);
    let filter: ruma::api::client::filter::RoomEventFilter = match &query.filter {
        Some(raw) => serde_json::from_str(raw)
            .map_err(|e| Error::invalid_param(format!("Invalid filter: {e}")))?,
        None => Default::default(),
    };
    let matcher = EventMatcher::from_room_event_filter(&filter);
    let limit = matcher.limit.map_or(limit, |l| l.min(limit));
    let viewer = Viewer {
        user_id: &admin.0,
        device_id: None,
    };
    let page =
        services.messages_for_admin(&room_id, viewer, from, to, direction, limit, &matcher)?;
    let start = from.unwrap_or_else(|| match direction {
        Direction::Backward => services.timeline.current_count(),
        Direction::Forward => 0,
    });
    let mut response = json!({ "start": start.to_string(), "chunk": page.events, "state": [] });
    if let Some(end) = page.end {
        response["end"] = json!(end.to_string());
    }
    Ok(Json(response))
}

#[derive(Deserialize)]
pub struct PurgeHistoryBody {
    #[serde(default)]
    delete_local_events: bool,
    purge_up_to_event_id: Option<String>,
    purge_up_to_ts: Option<u64>,
}

async fn start_purge(
    services: &State,
    admin: &Admin,
    raw_room: &str,
    path_event: Option<&str>,
    body: PurgeHistoryBody,
) -> Result<Json<Value>> {
    use crate::service::rooms::purge::HistoryPoint;
    let room_id = room_id(raw_room)?;
    let event = path_event.map(str::to_owned).or(body.purge_up_to_event_id);
    let point = match (event, body.purge_up_to_ts) {
        (Some(raw), _) => HistoryPoint::Event(
            ruma::EventId::parse(&raw)
                .map_err(|e| Error::invalid_param(format!("Invalid event ID {raw:?}: {e}")))?,
        ),
        (None, Some(ts)) => HistoryPoint::Timestamp(ts),
        (None, None) => {
            return Err(Error::invalid_param(
                "must specify purge_up_to_event_id or purge_up_to_ts",
            ));
        }
    };
    let purge_id = services.start_history_purge(&room_id, point, body.delete_local_events)?;
    admin.audit("purge history", &room_id);
    Ok(Json(json!({ "purge_id": purge_id })))
}

/// `POST /v1/purge_history/{roomId}`: purges a room's history up to an event or a time, in
/// the background.
pub async fn purge_history(
    extract::State(services): extract::State<State>,
    admin: Admin,
    Path(room): Path<String>,
    AdminJson(body): AdminJson<PurgeHistoryBody>,
) -> Result<Json<Value>> {
    start_purge(&services, &admin, &room, None, body).await
}

/// `POST /v1/purge_history/{roomId}/{eventId}`.
pub async fn purge_history_to_event(
    extract::State(services): extract::State<State>,
    admin: Admin,
    Path((room, event)): Path<(String, String)>,
    AdminJson(body): AdminJson<PurgeHistoryBody>,
) -> Result<Json<Value>> {
    start_purge(&services, &admin, &room, Some(&event), body).await
}

/// `GET /v1/purge_history_status/{purgeId}`.
pub async fn purge_history_status(
    extract::State(services): extract::State<State>,
    _: Admin,
    Path(purge_id): Path<String>,
) -> Result<Json<Value>> {
    let (status, error) = services
        .history_purges
        .get(&purge_id)
        .ok_or_else(|| Error::not_found("No such purge."))?;
    let mut body = json!({ "status": status });
    if let Some(error) = error {
        body["error"] = json!(error);
    }
    Ok(Json(body))
}
