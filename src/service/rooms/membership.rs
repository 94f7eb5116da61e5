//! Membership changes (join, leave, invite, kick, ban, unban) by local users, and what state a
//! user may read.

use std::collections::HashMap;

use ruma::{OwnedEventId, RoomId, UserId, events::room::member::MembershipState};
use serde_json::{Value, json};

use crate::{Error, Result, service::Services};

impl Services {
    /// Sends `target`'s new `membership` in `room_id`, as `sender`. The room version's auth
    /// rules decide whether `sender` may (join an invite-only room, kick, ban, …).
    pub async fn set_membership(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        membership: MembershipState,
        reason: Option<&str>,
    ) -> Result<OwnedEventId> {
        use MembershipState::{Invite, Join, Knock, Leave};
        if matches!(membership, Join | Invite | Knock) {
            self.check_room_not_blocked(room_id)?;
        }
        if self.timeline.room(room_id)?.is_none() {
            // Refusing an invite to a room that lives elsewhere.
            if membership == Leave
                && sender == target
                && self.remote_invite(target, room_id)?.is_some()
            {
                self.reject_remote_invite(room_id, target).await?;
                return self
                    .members
                    .membership(room_id, target)?
                    .map(|m| m.event_id)
                    .ok_or_else(|| Error::internal("the rejection left no membership"));
            }
            return Err(Error::not_found("This server knows no such room."));
        }
        let remote_target = target.server_name() != self.server_name;
        if remote_target && !self.federation.enabled {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                ruma::api::error::ErrorKind::Unknown,
                "Users of other servers need federation, which is disabled here.",
            ));
        }
        if remote_target && matches!(membership, Join | Knock) {
            return Err(Error::forbidden("Only the user's own server can do that."));
        }
        if membership == Invite && !remote_target && !self.users.is_active(target)? {
            return Err(Error::not_found(format!(
                "No user {target} on this server."
            )));
        }
        let mut content = json!({ "membership": membership.as_str() });
        if let Some(reason) = reason {
            content["reason"] = json!(reason);
        }
        if membership == Join
            && sender == target
            && let Some(authoriser) = self.local_join_authoriser(room_id, target)?
        {
            content["join_authorised_via_users_server"] = json!(authoriser);
        }
        // Joins and invites carry the member's profile, so that clients show "bob invited
        // Alice" rather than a Matrix ID.
        if matches!(membership, Join | Invite) {
            for (field, value) in self.member_profile(target).await? {
                content[field] = value;
            }
        }
        let event_id = self
            .send_state_event(room_id, sender, "m.room.member", target.as_str(), content)
            .await?;
        if membership == Invite && remote_target {
            self.send_remote_invite(room_id, &event_id).await?;
        }
        Ok(event_id)
    }

    /// The `displayname` and `avatar_url` a member event of `user_id` carries: this server's
    /// record for its own users; for another server's, what their server says (asked with a
    /// short timeout — an invite does not wait on a slow server, it goes out without them).
    pub(crate) async fn member_profile(
        &self,
        user_id: &UserId,
    ) -> Result<Vec<(&'static str, Value)>> {
        const FIELDS: [&str; 2] = ["displayname", "avatar_url"];
        let mut profile = Vec::new();
        if user_id.server_name() == self.server_name {
            for field in FIELDS {
                if let Some(value) = self.users.profile_field(user_id, field)? {
                    profile.push((field, value));
                }
            }
            return Ok(profile);
        }
        let asked = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            self.remote_profile(user_id, None),
        )
        .await;
        match asked {
            Ok(Ok(fields)) => {
                for field in FIELDS {
                    if let Some(value) = fields.get(field).filter(|v| v.is_string()) {
                        profile.push((field, value.clone()));
                    }
                }
            }
            Ok(Err(e)) => tracing::info!(%user_id, "no profile for the invite: {e}"),
            Err(_) => tracing::info!(%user_id, "no profile for the invite: their server is slow"),
        }
        Ok(profile)
    }

    /// The state `user_id` may read: the current state while joined (or, not joined, of a
    /// `world_readable` room); the state as it was when they left (or were kicked or banned)
    /// afterwards; nothing otherwise.
    pub fn visible_state(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<HashMap<(String, String), OwnedEventId>> {
        let not_member = || Error::forbidden("You are not a member of this room.");
        let membership = match self.members.membership(room_id, user_id)? {
            Some(m)
                if m.membership == MembershipState::Join || !self.world_readable(room_id)? =>
            {
                m
            }
            _ if self.world_readable(room_id)? => return self.timeline.current_state(room_id),
            _ => return Err(not_member()),
        };
        match membership.membership {
            MembershipState::Join => self.timeline.current_state(room_id),
            MembershipState::Leave | MembershipState::Ban
                if self.left_after_joining(user_id, &membership)? =>
            {
                let mut state = self.timeline.state_before(&membership.event_id)?;
                state.insert(
                    ("m.room.member".to_owned(), user_id.to_string()),
                    membership.event_id,
                );
                Ok(state)
            }
            _ => Err(not_member()),
        }
    }
}

impl Services {
    /// `POST /knock`: asks to join `room_id`. The room version's auth rules decide (knocking
    /// needs room v7+ and the join rule `knock`, or `knock_restricted` in v10+).
    pub async fn knock(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        reason: Option<&str>,
    ) -> Result<OwnedEventId> {
        self.set_membership(room_id, user_id, user_id, MembershipState::Knock, reason)
            .await
    }

    /// `POST /forget`: the room disappears from the user's view. Only once they are out of it
    /// (left, kicked, banned, or never there: then there is nothing to forget).
    pub async fn forget_room(&self, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        // Under the room's lock, so that a membership change cannot slip in between the check
        // and the forgetting.
        let _guard = self.timeline.lock_room(room_id).await;
        match self.members.membership(room_id, user_id)? {
            None => Ok(()),
            Some(m) if !matches!(m.membership, MembershipState::Leave | MembershipState::Ban) => {
                Err(Error::new(
                    http::StatusCode::BAD_REQUEST,
                    ruma::api::error::ErrorKind::Unknown,
                    format!(
                        "User {user_id} is in room {room_id} ({}): leave it first.",
                        m.membership
                    ),
                ))
            }
            Some(_) => {
                self.members.forget(room_id, user_id)?;
                // Forgetting leaves no trace in the recent activity the lists follow.
                self.sliding.room_lists.forget_user(user_id);
                Ok(())
            }
        }
    }

    /// Whether a `leave` or `ban` ended a stay in the room (the user was joined just before it),
    /// rather than a refused invite, a withdrawn knock, or a ban of an outsider: only then may
    /// the user still read what they saw as a member. Looks one membership back, so someone who
    /// left, knocked again and withdrew counts as an outsider (the safe side).
    pub fn left_after_joining(
        &self,
        user_id: &UserId,
        membership: &super::members::Membership,
    ) -> Result<bool> {
        let before = self.timeline.state_entries_before(&membership.event_id)?;
        let Some(previous) = self
            .timeline
            .lookup(&before, "m.room.member", user_id.as_str())?
        else {
            return Ok(false);
        };
        let pdu = self.timeline.pdu_json(&previous)?;
        Ok(matches!(
            pdu.as_ref().and_then(|p| p.get("content")),
            Some(ruma::CanonicalJsonValue::Object(content))
                if content.get("membership") == Some(&ruma::CanonicalJsonValue::String("join".into()))
        ))
    }
}

/// Which servers take part in a room.
impl Services {
    /// The servers with at least one joined member in `room_id`, this server first when it is
    /// one of them (one prefix scan of `room_servers`).
    pub fn servers_in_room(&self, room_id: &RoomId) -> Result<Vec<ruma::OwnedServerName>> {
        let mut servers: std::collections::BTreeSet<_> =
            self.members.servers_of_room(room_id)?.into_iter().collect();
        let ours = servers.remove(&self.server_name);
        Ok(ours
            .then(|| self.server_name.clone())
            .into_iter()
            .chain(servers)
            .collect())
    }
}
