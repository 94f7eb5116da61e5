//! Room upgrades (`POST /rooms/{roomId}/upgrade`): a new room of another version replaces an old
//! one, which points at it with a tombstone.

use ruma::{
    OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UserId, events::room::member::MembershipState,
};
use serde_json::{Map, Value, json};

use super::{
    SUPPORTED_ROOM_VERSIONS,
    create::{CreateRoom, Preset},
};
use crate::{Error, Result, service::Services};

/// State copied to the replacement room with its content unchanged (the spec's recommended
/// transferable state, less power levels, which are adjusted, and membership, which cannot be:
/// users of other servers cannot be joined for them).
const TRANSFERRED_STATE: &[&str] = &[
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.name",
    "m.room.topic",
    "m.room.avatar",
    "m.room.encryption",
    "m.room.server_acl",
];

/// A power level as room versions before 10 allowed it: an integer, or a string holding one.
fn level(value: &Value) -> Option<i64> {
    value
        .as_i64()
        .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
}

/// Every level in a power-levels content made an integer (v10+ rooms refuse strings); values
/// that are no level at all are dropped rather than carried into a room that would refuse them.
fn integer_levels(content: &mut Map<String, Value>) {
    for (key, value) in content.iter_mut() {
        match (key.as_str(), value) {
            ("users" | "events" | "notifications", Value::Object(map)) => {
                map.retain(|_, v| level(v).is_some());
                for v in map.values_mut() {
                    *v = json!(level(v));
                }
            }
            (_, v) if level(v).is_some() => *v = json!(level(v)),
            _ => {}
        }
    }
    content.retain(|key, v| {
        matches!(key.as_str(), "users" | "events" | "notifications") || level(v).is_some()
    });
}

/// The highest level any action in a power-levels content requires.
fn highest_needed(content: &Map<String, Value>) -> i64 {
    let mut needed = 100;
    for (key, value) in content {
        match key.as_str() {
            "users" | "notifications" | "users_default" => {}
            "events" => {
                for v in value.as_object().into_iter().flat_map(|m| m.values()) {
                    needed = needed.max(level(v).unwrap_or(0));
                }
            }
            _ => needed = needed.max(level(value).unwrap_or(0)),
        }
    }
    needed
}

impl Services {
    /// Upgrades `room_id` to `new_version` for `sender`, who must be joined and allowed to send
    /// `m.room.tombstone` there (checked before anything is created). Returns the new room.
    pub async fn upgrade_room(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        new_version: RoomVersionId,
        additional_creators: Vec<OwnedUserId>,
    ) -> Result<OwnedRoomId> {
        if !SUPPORTED_ROOM_VERSIONS.contains(&new_version) {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                ruma::api::error::ErrorKind::UnsupportedRoomVersion,
                format!("Room version {new_version} is not supported."),
            ));
        }
        let old_room = self
            .timeline
            .room(room_id)?
            .ok_or_else(|| Error::not_found("No such room."))?;
        if self
            .members
            .membership(room_id, sender)?
            .is_none_or(|m| m.membership != MembershipState::Join)
        {
            return Err(Error::forbidden("You are not in this room."));
        }
        let old_rules = old_room
            .version
            .rules()
            .ok_or_else(|| Error::internal("room of unknown version"))?;
        let new_rules = new_version.rules().expect("supported versions have rules");
        let state = self.timeline.current_state(room_id)?;
        let content = |event_type: &str| -> Result<Option<Map<String, Value>>> {
            match state.get(&(event_type.to_owned(), String::new())) {
                Some(id) => Ok(self.timeline.event_fields(room_id, id)?["content"]
                    .as_object()
                    .cloned()),
                None => Ok(None),
            }
        };

        // 1. May the sender send the tombstone? Decided on the old room's power levels.
        let old_power = content("m.room.power_levels")?;
        let needed = match &old_power {
            Some(pl) => pl
                .get("events")
                .and_then(|e| e.get("m.room.tombstone"))
                .and_then(level)
                .or_else(|| pl.get("state_default").and_then(level))
                .unwrap_or(50),
            None => 0,
        };
        if self.power_level(room_id, sender)? < needed {
            return Err(Error::forbidden(
                "You need the power to send m.room.tombstone to upgrade this room.",
            ));
        }

        // 2. The new room's create content: predecessor, room type, federation flag, creators.
        let old_create = content("m.room.create")?.unwrap_or_default();
        let mut creation_content = Map::new();
        // `event_id` is deprecated since Matrix 1.16 (a v12 room ID depends on its create event,
        // so the tombstone cannot exist first); still filled where known: the old room's latest
        // event before the upgrade.
        let mut predecessor = json!({ "room_id": room_id });
        if let Some(last) = old_room.extremities.first() {
            predecessor["event_id"] = json!(last);
        }
        creation_content.insert("predecessor".into(), predecessor);
        for key in ["type", "m.federate"] {
            if let Some(value) = old_create.get(key) {
                creation_content.insert(key.into(), value.clone());
            }
        }
        let v12_target = new_rules.authorization.explicitly_privilege_room_creators;
        if new_rules.authorization.additional_room_creators && !additional_creators.is_empty() {
            creation_content.insert("additional_creators".into(), json!(additional_creators));
        }

        // 3. Power levels: the old room's, with creators handled as the new version wants.
        let mut power = old_power.clone().unwrap_or_default();
        if new_rules.authorization.integer_power_levels {
            integer_levels(&mut power);
        }
        let mut users = power
            .get("users")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        if v12_target {
            // Creators have unlimited power in v12 and must not be listed.
            users.remove(sender.as_str());
            for creator in &additional_creators {
                users.remove(creator.as_str());
            }
        } else if old_rules.authorization.explicitly_privilege_room_creators {
            // Out of a v12 room, whose creators were unlisted: the upgrader keeps full power.
            users.insert(sender.to_string(), json!(100));
        }
        let final_level = users
            .get(sender.as_str())
            .and_then(level)
            .or_else(|| power.get("users_default").and_then(level))
            .unwrap_or(0);
        // The sender sends every copied state event: raised to what they need, while the new
        // room is set up (not needed in v12, where the creator's power is unlimited).
        let raise = !v12_target && final_level < highest_needed(&power);
        let mut initial_power = power.clone();
        if raise {
            let mut raised = users.clone();
            raised.insert(sender.to_string(), json!(highest_needed(&power)));
            initial_power.insert("users".into(), Value::Object(raised));
        } else {
            initial_power.insert("users".into(), Value::Object(users.clone()));
        }
        power.insert("users".into(), Value::Object(users));

        // 4. The transferable state, in the order createRoom sends initial_state.
        let mut initial_state = Vec::new();
        for event_type in TRANSFERRED_STATE {
            if let Some(content) = content(event_type)? {
                initial_state.push((
                    (*event_type).to_owned(),
                    String::new(),
                    Value::Object(content),
                ));
            }
        }
        let new_room = self
            .create_room(
                sender,
                CreateRoom {
                    version: Some(new_version.clone()),
                    preset: Preset::PrivateChat,
                    creation_content,
                    power_level_override: initial_power,
                    initial_state,
                    name: None,
                    topic: None,
                    invite: Vec::new(),
                    is_direct: false,
                    alias: None,
                },
            )
            .await?;
        let send = |room: &RoomId, event_type: &'static str, state_key: String, content: Value| {
            let room = room.to_owned();
            async move {
                self.send_state_event(&room, sender, event_type, &state_key, content)
                    .await
            }
        };

        // 5. Bans carry over (best effort: a ban the sender could not issue is left out).
        for ((event_type, user), id) in &state {
            if event_type != "m.room.member" {
                continue;
            }
            let member = self.timeline.event_fields(room_id, id)?;
            if member["content"]["membership"] != "ban" {
                continue;
            }
            let mut ban = json!({ "membership": "ban" });
            if let Some(reason) = member["content"].get("reason") {
                ban["reason"] = reason.clone();
            }
            if let Err(error) = send(&new_room, "m.room.member", user.clone(), ban).await {
                tracing::warn!(%user, room = %new_room, %error, "ban not copied on upgrade");
            }
        }
        if raise {
            send(
                &new_room,
                "m.room.power_levels",
                String::new(),
                Value::Object(power),
            )
            .await?;
        }

        // 6. This server's aliases move to the new room, and with them the canonical alias.
        self.move_aliases(room_id, &new_room)?;
        if let Some(canonical) = content("m.room.canonical_alias")?
            && !canonical.is_empty()
        {
            send(
                &new_room,
                "m.room.canonical_alias",
                String::new(),
                Value::Object(canonical),
            )
            .await?;
            if let Err(error) =
                send(room_id, "m.room.canonical_alias", String::new(), json!({})).await
            {
                tracing::warn!(room = %room_id, %error, "old canonical alias not removed");
            }
        }

        // 7. The tombstone: the old room points at its replacement.
        send(
            room_id,
            "m.room.tombstone",
            String::new(),
            json!({
                "body": "This room has been replaced",
                "replacement_room": new_room,
            }),
        )
        .await?;

        // 8. The old room goes quiet: sending and inviting need at least 50 (or more than
        // users_default). Only if the sender may change power levels there.
        if let Some(mut old_power) = content("m.room.power_levels")? {
            let users_default = old_power.get("users_default").and_then(level).unwrap_or(0);
            let restricted = 50.max(users_default + 1);
            let mut changed = false;
            for key in ["events_default", "invite"] {
                let current = old_power.get(key).and_then(level).unwrap_or(0);
                if current < restricted {
                    old_power.insert(key.into(), json!(restricted));
                    changed = true;
                }
            }
            if changed
                && let Err(error) = send(
                    room_id,
                    "m.room.power_levels",
                    String::new(),
                    Value::Object(old_power),
                )
                .await
            {
                tracing::warn!(room = %room_id, %error, "old room's power levels not restricted");
            }
        }
        tracing::info!(old = %room_id, new = %new_room, version = %new_version, "room upgraded");
        Ok(new_room)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_become_integers_and_the_highest_need_is_found() {
        let mut content = json!({
            "users": { "@a:x": "100", "@b:x": 50, "@c:x": "lots" },
            "events": { "m.room.tombstone": "150" },
            "state_default": 50,
            "ban": "75",
            "bogus": "no",
        })
        .as_object()
        .cloned()
        .unwrap();
        integer_levels(&mut content);
        assert_eq!(
            Value::Object(content.clone()),
            json!({
                "users": { "@a:x": 100, "@b:x": 50 },
                "events": { "m.room.tombstone": 150 },
                "state_default": 50,
                "ban": 75,
            })
        );
        assert_eq!(highest_needed(&content), 150);
    }
}
