//! `/sync` (v2): what changed in a user's rooms since a stream position.
//!
//! Tokens are stream counts (decimal). For each room the user has a membership in (one prefix
//! scan of `user_rooms`), a joined room contributes its new timeline events (one reverse seek),
//! and the state the client lacks: all of it on a first sync (or after joining), otherwise only
//! what changed inside a gap the limited timeline skipped. Invites carry stripped state; leaves
//! (in incremental syncs) the timeline up to the leave. Long-polling waits on the append path's
//! watch channel, so a new event wakes every waiting client at once.
//!
//! Not yet here (later work of the rooms and E2EE issues): most filter fields, lazy-loading,
//! presence, to-device, device lists.

use std::{collections::HashMap, time::Duration};

use ruma::{OwnedEventId, RoomId, UserId};
use serde_json::{Map, Value, json};

use crate::{Result, service::Services};

/// Options of one `/sync` request.
pub struct SyncRequest {
    pub since: Option<u64>,
    pub full_state: bool,
    pub timeout: Duration,
    /// Timeline events per room.
    pub limit: usize,
}

/// State event types an invitee sees before joining (the spec's recommendation).
const STRIPPED_STATE: &[&str] = &[
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

impl Services {
    /// Answers a `/sync`: immediately when something changed, otherwise after waiting up to
    /// `timeout` for a new event.
    pub async fn sync(&self, user_id: &UserId, request: SyncRequest) -> Result<Value> {
        let mut committed = self.timeline.subscribe();
        let response = self.sync_once(user_id, &request)?;
        if request.since.is_none() || request.timeout.is_zero() || has_changes(&response) {
            return Ok(response);
        }
        let deadline = tokio::time::Instant::now() + request.timeout;
        loop {
            match tokio::time::timeout_at(deadline, committed.changed()).await {
                Ok(Ok(())) => {
                    let response = self.sync_once(user_id, &request)?;
                    if has_changes(&response) {
                        return Ok(response);
                    }
                }
                // Timed out (or the server is stopping): answer with what there is.
                _ => return self.sync_once(user_id, &request),
            }
        }
    }

    fn sync_once(&self, user_id: &UserId, request: &SyncRequest) -> Result<Value> {
        let now = self.timeline.current_count();
        let since = request.since.unwrap_or(0).min(now);
        let mut join = Map::new();
        let mut invite = Map::new();
        let mut leave = Map::new();
        let mut knock = Map::new();
        for (room_id, membership) in self.timeline.rooms_of(user_id)? {
            let changed_membership = request.since.is_none_or(|s| membership.count > s);
            match membership.membership.as_str() {
                "join" => {
                    // Joined since the last sync: the client knows nothing of the room yet.
                    let initial =
                        request.since.is_none() || changed_membership || request.full_state;
                    if let Some(room) =
                        self.joined_room(user_id, &room_id, since, now, initial, request.limit)?
                    {
                        join.insert(room_id.to_string(), room);
                    }
                }
                "invite" if changed_membership => {
                    invite.insert(
                        room_id.to_string(),
                        json!({ "invite_state": { "events": self.stripped_state(&room_id, &membership.event_id)? } }),
                    );
                }
                // Knocks: like invites, stripped state and the knock itself.
                "knock" if changed_membership => {
                    knock.insert(
                        room_id.to_string(),
                        json!({ "knock_state": { "events": self.stripped_state(&room_id, &membership.event_id)? } }),
                    );
                }
                "leave" | "ban" if changed_membership && request.since.is_some() => {
                    leave.insert(
                        room_id.to_string(),
                        self.left_room(user_id, &room_id, since, membership.count, request.limit)?,
                    );
                }
                _ => {}
            }
        }
        let account_data = self.account_data_changes(user_id, None, request.since)?;
        Ok(json!({
            "next_batch": now.to_string(),
            "rooms": { "join": join, "invite": invite, "leave": leave, "knock": knock },
            "account_data": { "events": account_data },
            "presence": { "events": [] },
            "to_device": { "events": [] },
            "device_lists": { "changed": [], "left": [] },
            "device_one_time_keys_count": {},
        }))
    }

    /// A joined room's part of the response, or `None` when nothing changed in it.
    fn joined_room(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        since: u64,
        now: u64,
        initial: bool,
        limit: usize,
    ) -> Result<Option<Value>> {
        let ephemeral_since = (!initial).then_some(since);
        let mut ephemeral = Vec::new();
        ephemeral.extend(self.typing_event(room_id, ephemeral_since));
        ephemeral.extend(self.receipt_event(room_id, user_id, ephemeral_since)?);
        let account_data = self.account_data_changes(user_id, Some(room_id), ephemeral_since)?;
        let (mut events, mut limited) = self.timeline.last_events(room_id, now, limit)?;
        if !initial {
            events.retain(|(count, _)| *count > since);
            let Some((oldest, _)) = events.first() else {
                if ephemeral.is_empty() && account_data.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(json!({
                    "timeline": { "events": [], "limited": false },
                    "state": { "events": [] },
                    "ephemeral": { "events": ephemeral },
                    "account_data": { "events": account_data },
                })));
            };
            // Limited only if an event the client has not seen precedes the returned ones.
            let (previous, _) = self.timeline.last_events(room_id, oldest - 1, 1)?;
            limited = previous.first().is_some_and(|(count, _)| *count > since);
        }
        // Each event is read once, then kept only if the user may see it (by the history
        // visibility in force when it was sent).
        let mut visible = Vec::with_capacity(events.len());
        for (count, event_id) in events {
            let event = self.timeline.client_event(room_id, &event_id)?;
            if self.may_see_event(room_id, user_id, &event, count)? {
                visible.push((count, event_id, event));
            }
        }
        let events = visible;
        let state = match (initial, events.first()) {
            (true, Some((_, first, _))) => self.timeline.state_before(first)?,
            (true, None) => self.timeline.current_state(room_id)?,
            // A gap between `since` and the timeline: the state that changed inside it.
            (false, Some((_, first, _))) if limited => {
                let at_since = self.timeline.state_at_count(room_id, since)?;
                let mut before = self.timeline.state_before(first)?;
                before.retain(|key, id| at_since.get(key) != Some(id));
                before
            }
            (false, _) => HashMap::new(),
        };
        let prev_batch = events
            .first()
            .map(|(count, _, _)| count.saturating_sub(1).to_string());
        // The summary when the client may lack it: first sync, or membership changed.
        let membership_changed =
            initial || events.iter().any(|(_, _, e)| e["type"] == "m.room.member");
        let summary = if membership_changed {
            self.room_summary(room_id, user_id)?
        } else {
            json!({})
        };
        Ok(Some(json!({
            "summary": summary,
            "timeline": {
                "events": events.into_iter().map(|(_, _, e)| without_room_id(e)).collect::<Vec<_>>(),
                "limited": limited,
                "prev_batch": prev_batch,
            },
            "state": { "events": self.sync_events(room_id, state.values())? },
            "ephemeral": { "events": ephemeral },
            "account_data": { "events": account_data },
        })))
    }

    /// `m.heroes` (up to five other joined or invited members, by user ID) and member counts.
    fn room_summary(&self, room_id: &RoomId, user_id: &UserId) -> Result<Value> {
        let members = self.timeline.members(room_id)?;
        let count = |m: &str| {
            members
                .iter()
                .filter(|(_, membership)| membership == m)
                .count()
        };
        let heroes: Vec<String> = members
            .iter()
            .filter(|(user, m)| user != user_id && (m == "join" || m == "invite"))
            .map(|(user, _)| user.to_string())
            .take(5)
            .collect();
        Ok(json!({
            "m.heroes": heroes,
            "m.joined_member_count": count("join"),
            "m.invited_member_count": count("invite"),
        }))
    }

    fn left_room(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        since: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Value> {
        let (mut events, _) = self.timeline.last_events(room_id, upto, limit)?;
        events.retain(|(count, _)| *count > since);
        // Only what the user may see: a withdrawn knock or a refused invite shows the user's own
        // membership events, not the room's conversation.
        let mut visible = Vec::with_capacity(events.len());
        for (count, event_id) in &events {
            let event = self.timeline.client_event(room_id, event_id)?;
            if self.may_see_event(room_id, user_id, &event, *count)? {
                visible.push(without_room_id(event));
            }
        }
        Ok(json!({
            "timeline": {
                "events": visible,
                "limited": false,
            },
            "state": { "events": [] },
        }))
    }

    /// Events in the sync format (the client format without `room_id`).
    fn sync_events<'a>(
        &self,
        room_id: &RoomId,
        ids: impl Iterator<Item = &'a OwnedEventId>,
    ) -> Result<Vec<Value>> {
        ids.map(|id| Ok(without_room_id(self.timeline.client_event(room_id, id)?)))
            .collect()
    }

    /// What an invitee (or knocker) may see of a room: a few state events, stripped, and the
    /// invite (or knock) itself.
    fn stripped_state(&self, room_id: &RoomId, invite_event: &OwnedEventId) -> Result<Vec<Value>> {
        let state = self.timeline.state_after(invite_event)?;
        let mut events = Vec::new();
        for ((event_type, state_key), id) in &state {
            let wanted = STRIPPED_STATE.contains(&event_type.as_str())
                || (event_type == "m.room.member" && id == invite_event);
            if !wanted {
                continue;
            }
            let event = self.timeline.client_event(room_id, id)?;
            events.push(json!({
                "type": event_type,
                "state_key": state_key,
                "content": event["content"],
                "sender": event["sender"],
            }));
        }
        Ok(events)
    }
}

/// Sync sends events without `room_id` (the room is the key they are listed under).
fn without_room_id(mut event: Value) -> Value {
    if let Some(object) = event.as_object_mut() {
        object.remove("room_id");
    }
    event
}

fn has_changes(response: &Value) -> bool {
    let rooms = &response["rooms"];
    ["join", "invite", "leave", "knock"]
        .iter()
        .any(|section| rooms[section].as_object().is_some_and(|m| !m.is_empty()))
        || response["account_data"]["events"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
}
