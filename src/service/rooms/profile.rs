//! Profile changes reach rooms: a new display name or avatar is announced by a fresh
//! `m.room.member` join event in every room the user is joined to, since clients read names
//! from member events, not from profiles.

use ruma::{CanonicalJsonValue, RoomId, UserId, events::room::member::MembershipState};
use serde_json::Value;

use crate::{Result, service::Services};

/// The profile fields that member events carry.
pub const MEMBER_PROFILE_FIELDS: [&str; 2] = ["displayname", "avatar_url"];

impl Services {
    /// Sends `user_id`'s current display name and avatar into each room they are joined to
    /// (one prefix scan of their rooms, then one append per room whose member event differs).
    /// A room that refuses is logged and skipped: the profile change itself has happened.
    pub async fn propagate_profile(&self, user_id: &UserId) {
        let rooms = match self.members.rooms_of(user_id) {
            Ok(rooms) => rooms,
            Err(e) => {
                tracing::warn!(%user_id, error = %e, "cannot list rooms to propagate a profile change");
                return;
            }
        };
        for (room_id, membership) in rooms {
            if membership.membership != MembershipState::Join {
                continue;
            }
            if let Err(e) = self.update_member_profile(&room_id, user_id).await {
                tracing::warn!(%user_id, %room_id, error = %e, "profile change not sent to room");
            }
        }
    }

    async fn update_member_profile(&self, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        // Read again right before sending: a user who left meanwhile must not be re-joined.
        let Some(membership) = self.members.membership(room_id, user_id)? else {
            return Ok(());
        };
        if membership.membership != MembershipState::Join {
            return Ok(());
        }
        let member_event = &membership.event_id;
        // Keep whatever else the current join carries; replace only the profile fields.
        let mut content = match self
            .timeline
            .pdu_json(member_event)?
            .and_then(|pdu| pdu.get("content").cloned())
        {
            Some(CanonicalJsonValue::Object(object)) => {
                Value::from(CanonicalJsonValue::Object(object))
            }
            _ => serde_json::json!({}),
        };
        let before = content.clone();
        let Some(fields) = content.as_object_mut() else {
            return Ok(());
        };
        fields.insert("membership".into(), "join".into());
        for field in MEMBER_PROFILE_FIELDS {
            match self.users.profile_field(user_id, field)? {
                Some(value) => {
                    fields.insert(field.into(), value);
                }
                None => {
                    fields.remove(field);
                }
            }
        }
        if content == before {
            return Ok(());
        }
        self.send_state_event(room_id, user_id, "m.room.member", user_id.as_str(), content)
            .await?;
        Ok(())
    }
}
