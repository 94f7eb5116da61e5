//! Redacting events: who may, and the redaction itself (the append path redacts the stored
//! target in the same batch as the redaction event).

use ruma::{EventId, OwnedEventId, RoomId, UserId};
use serde_json::json;

use super::timeline::LocalEvent;
use crate::{Error, Result, service::Services};

impl Services {
    /// A user's power level in a room, per its current power levels (room v12 creators have
    /// unlimited power; without a power-levels event the creator has 100).
    pub fn power_level(&self, room_id: &RoomId, user_id: &UserId) -> Result<i64> {
        let room = self
            .timeline
            .room(room_id)?
            .ok_or_else(|| Error::not_found("No such room."))?;
        let rules = room
            .version
            .rules()
            .ok_or_else(|| Error::internal("room of unknown version"))?;
        let state = self.timeline.current_state(room_id)?;
        let event = |kind: &str| -> Result<Option<serde_json::Value>> {
            match state.get(&(kind.to_owned(), String::new())) {
                Some(id) => Ok(Some(self.timeline.event_fields(room_id, id)?)),
                None => Ok(None),
            }
        };
        let create =
            event("m.room.create")?.ok_or_else(|| Error::internal("room without create event"))?;
        let creator = if rules.authorization.use_room_create_sender {
            create["sender"].as_str().unwrap_or_default().to_owned()
        } else {
            create["content"]["creator"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        if rules.authorization.explicitly_privilege_room_creators {
            let additional = create["content"]["additional_creators"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if creator == user_id.as_str() || additional.iter().any(|c| c == user_id.as_str()) {
                return Ok(i64::MAX);
            }
        }
        Ok(match event("m.room.power_levels")? {
            Some(power) => {
                let content = &power["content"];
                content["users"][user_id.as_str()]
                    .as_i64()
                    .or_else(|| content["users_default"].as_i64())
                    .unwrap_or(0)
            }
            None if creator == user_id.as_str() => 100,
            None => 0,
        })
    }

    /// Redacts `target` in `room_id` on behalf of `sender`, who must have sent it or hold the
    /// room's `redact` power. Idempotent per client transaction `txn`.
    pub async fn redact_event(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &EventId,
        reason: Option<&str>,
        txn: &super::timeline::ClientTxn<'_>,
    ) -> Result<OwnedEventId> {
        let not_found = || Error::not_found("No such event in this room.");
        let pdu = self.timeline.pdu_json(target)?.ok_or_else(not_found)?;
        if !super::pdu::pdu_in_room(target, &pdu, room_id) {
            return Err(not_found());
        }
        let own = matches!(pdu.get("sender"), Some(ruma::CanonicalJsonValue::String(s)) if s == sender.as_str());
        if !own {
            let power = self.power_level(room_id, sender)?;
            let state = self.timeline.current_state(room_id)?;
            let needed = match state.get(&("m.room.power_levels".to_owned(), String::new())) {
                Some(id) => self.timeline.event_fields(room_id, id)?["content"]["redact"]
                    .as_i64()
                    .unwrap_or(50),
                None => 50,
            };
            if power < needed {
                return Err(Error::forbidden(
                    "You may not redact other users' events in this room.",
                ));
            }
        }
        let mut content = json!({});
        if let Some(reason) = reason {
            content["reason"] = json!(reason);
        }
        let event = LocalEvent {
            event_type: "m.room.redaction",
            state_key: None,
            content,
            redacts: Some(target),
        };
        self.timeline
            .append_once(room_id, sender, event, Some(txn), &self.signer())
            .await
    }
}
