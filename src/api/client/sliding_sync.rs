//! `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`: simplified sliding sync
//! (MSC4186; see `service::rooms::sliding_sync`). ruma parses the request; this maps it onto
//! the service's types, clamping what is too large, and sets presence as `/sync` does.

use std::time::Duration;

use axum::{Json, extract};
use ruma::api::client::sync::sync_events::v5;

use crate::{
    Error, Result,
    api::ruma::{Ruma, State},
    service::{
        presence::PresenceUpdate,
        rooms::{
            sliding_sync::{
                ExtensionsRequest, ListFilters, ListRequest, MAX_TIMELINE_LIMIT, RequiredState,
                RoomConfig, Scope, ScopeRoom, SlidingAnswer, SlidingRequest, ToDeviceRequest,
            },
            thread_subscriptions::MAX_CHANGES,
        },
    },
};

/// The longest long-poll (as `/sync`).
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// To-device messages per answer when the client names no limit, and the most it may name.
const TO_DEVICE_LIMIT: usize = 100;

fn room_config(
    required_state: &[(ruma::events::StateEventType, String)],
    limit: u64,
) -> RoomConfig {
    RoomConfig {
        timeline_limit: limit.min(MAX_TIMELINE_LIMIT),
        required_state: RequiredState::new(
            required_state
                .iter()
                .map(|(kind, key)| (kind.to_string(), key.clone())),
        ),
    }
}

fn scope(
    enabled: Option<bool>,
    lists: &Option<Vec<String>>,
    rooms: &Option<Vec<v5::request::ExtensionRoomConfig>>,
) -> Option<Scope> {
    (enabled == Some(true)).then(|| Scope {
        lists: lists.clone(),
        rooms: rooms.as_ref().map(|rooms| {
            rooms
                .iter()
                .filter_map(|room| match room {
                    v5::request::ExtensionRoomConfig::AllSubscribed => Some(ScopeRoom::All),
                    v5::request::ExtensionRoomConfig::Room(id) => Some(ScopeRoom::Room(id.clone())),
                    _ => None,
                })
                .collect()
        }),
    })
}

pub async fn sliding_sync(
    extract::State(services): extract::State<State>,
    request: Ruma<v5::Request>,
) -> Result<Json<SlidingAnswer>> {
    let body = &request.body;
    let mut lists = std::collections::BTreeMap::new();
    for (name, list) in &body.lists {
        let mut ranges = Vec::with_capacity(list.ranges.len());
        for (start, end) in &list.ranges {
            let (start, end) = (u64::from(*start), u64::from(*end));
            if start > end {
                return Err(Error::invalid_param(format!(
                    "List {name}: a range's start is after its end."
                )));
            }
            ranges.push((start, end));
        }
        let filters = list.filters.as_ref().map(|f| ListFilters {
            is_dm: f.is_dm,
            is_encrypted: f.is_encrypted,
            is_invite: f.is_invite,
            room_types: f
                .room_types
                .iter()
                .map(|t| t.as_str().map(str::to_owned))
                .collect(),
            not_room_types: f
                .not_room_types
                .iter()
                .map(|t| t.as_str().map(str::to_owned))
                .collect(),
        });
        lists.insert(
            name.clone(),
            ListRequest {
                ranges,
                room: room_config(
                    &list.room_details.required_state,
                    u64::from(list.room_details.timeline_limit),
                ),
                filters: filters.unwrap_or_default(),
            },
        );
    }
    let subscriptions = body
        .room_subscriptions
        .iter()
        .map(|(room_id, sub)| {
            (
                room_id.clone(),
                room_config(&sub.required_state, u64::from(sub.timeline_limit)),
            )
        })
        .collect();
    let ext = &body.extensions;
    let to_device = match ext.to_device.enabled {
        Some(true) => Some(ToDeviceRequest {
            since: match &ext.to_device.since {
                Some(since) => Some(since.parse::<u64>().map_err(|_| {
                    Error::invalid_param("to_device.since is not a token of this server.")
                })?),
                None => None,
            },
            limit: ext
                .to_device
                .limit
                .map_or(TO_DEVICE_LIMIT, |l| {
                    usize::try_from(u64::from(l)).unwrap_or(TO_DEVICE_LIMIT)
                })
                .clamp(1, TO_DEVICE_LIMIT),
        }),
        _ => None,
    };
    let extensions = ExtensionsRequest {
        to_device,
        e2ee: ext.e2ee.enabled == Some(true),
        account_data: scope(
            ext.account_data.enabled,
            &ext.account_data.lists,
            &ext.account_data.rooms,
        ),
        receipts: scope(
            ext.receipts.enabled,
            &ext.receipts.lists,
            &ext.receipts.rooms,
        ),
        typing: scope(ext.typing.enabled, &ext.typing.lists, &ext.typing.rooms),
        thread_subscriptions: (ext.thread_subscriptions.enabled == Some(true)
            && services.thread_subscriptions_enabled())
        .then(|| {
            ext.thread_subscriptions
                .limit
                .map_or(MAX_CHANGES, |l| {
                    usize::try_from(u64::from(l)).unwrap_or(MAX_CHANGES)
                })
                .clamp(1, MAX_CHANGES)
        }),
    };
    let options = SlidingRequest {
        device_id: request.device(),
        conn_id: body.conn_id.clone().unwrap_or_default(),
        pos: body.pos.clone(),
        // No timeout means none (Synapse's reading; clients send one when they want to wait).
        timeout: body.timeout.unwrap_or_default().min(MAX_TIMEOUT),
        lists,
        subscriptions,
        extensions,
    };
    if body.set_presence != ruma::presence::PresenceState::Offline {
        let state = crate::service::presence::parse_state(&body.set_presence)?;
        services
            .set_presence(request.user(), PresenceUpdate::Sync { state })
            .await?;
    }
    Ok(Json(services.sliding_sync(request.user(), options).await?))
}
