//! Invites across servers (`PUT /_matrix/federation/v2/invite`), both ways, and rejecting an
//! invite to a room this server is not in (`make_leave` / `send_leave`).
//!
//! An invite from another server to a room we are not in arrives with the invite event and a
//! few of the room's state events; both are kept in `remote_invites` (the room itself is not
//! known here until the user joins), and the user's `user_rooms` entry says "invite", so
//! `/sync` shows it like any other.

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedServerName, RoomId,
    RoomVersionId, ServerName, UserId,
    api::federation::membership::{
        RawStrippedState, create_invite, create_leave_event, prepare_leave_event,
    },
    events::room::member::MembershipState,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::pdu_check::event_id_of;
use crate::service::rooms::pdu::rules_of;
use crate::{
    Error, Result,
    service::{
        Services,
        rooms::{members::Members, pdu::str_field, timeline::activity::Change},
    },
    store::{Batch, Cf, keys},
};

/// State event types an invitee's server is shown (the spec's recommendation).
const INVITE_STATE: &[&str] = &[
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

/// An invite to a room on another server, or a local user's knock on one (`remote_invites`,
/// JSON; the user's `user_rooms` entry says which).
#[derive(Serialize, Deserialize)]
pub struct RemoteInvite {
    pub event_id: OwnedEventId,
    pub room_version: RoomVersionId,
    /// The invite event, signed by both servers (or the knock, signed by us).
    pub event: CanonicalJsonObject,
    /// What the inviting server showed of the room: stripped events or full PDUs.
    pub room_state: Vec<serde_json::Value>,
    /// Servers that can let the user in (the inviter's first).
    pub servers: Vec<OwnedServerName>,
}

fn raw(object: &CanonicalJsonObject) -> Result<Box<RawValue>> {
    serde_json::value::to_raw_value(object).map_err(|e| Error::internal(e.to_string()))
}

fn remote_invite_key(user_id: &UserId, room_id: &RoomId) -> Vec<u8> {
    keys::join([user_id.as_bytes(), room_id.as_bytes()])
}

impl Services {
    pub fn remote_invite(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
    ) -> Result<Option<RemoteInvite>> {
        Ok(
            match self
                .store
                .get(Cf::RemoteInvites, &remote_invite_key(user_id, room_id))?
            {
                Some(bytes) => Some(serde_json::from_slice(&bytes)?),
                None => None,
            },
        )
    }

    /// The invite state a client sees for a remote invite: the room's stripped state as the
    /// inviting server gave it, and the invite itself.
    pub fn remote_invite_state(&self, invite: &RemoteInvite) -> Vec<serde_json::Value> {
        let strip = |e: &serde_json::Value| {
            serde_json::json!({
                "type": e["type"], "state_key": e["state_key"],
                "content": e["content"], "sender": e["sender"],
            })
        };
        let mut events: Vec<serde_json::Value> = invite.room_state.iter().map(strip).collect();
        events.push(strip(
            &serde_json::to_value(&invite.event).unwrap_or_default(),
        ));
        events
    }

    /// Sends a local invite of a remote user to the user's server, which signs it too; our copy
    /// gains its signature. The invite is in the room already; when that server refuses it
    /// (it blocks invites, MSC4380) or cannot be reached, the inviter withdraws it, so the room
    /// does not show an invite the user never got (if the inviter may: withdrawing takes the
    /// power to kick). The error is returned either way.
    pub async fn send_remote_invite(&self, room_id: &RoomId, event_id: &EventId) -> Result<()> {
        let Err(error) = self.deliver_remote_invite(room_id, event_id).await else {
            return Ok(());
        };
        let pdu = self.timeline.pdu_json(event_id)?;
        let field = |name| {
            pdu.as_ref()
                .and_then(|pdu| str_field(pdu, name))
                .and_then(|u| UserId::parse(u).ok())
        };
        if let (Some(inviter), Some(invitee)) = (field("sender"), field("state_key")) {
            let content = serde_json::json!({
                "membership": "leave",
                "reason": "The invitee's server did not accept the invite.",
            });
            if let Err(e) = self
                .send_state_event(
                    room_id,
                    &inviter,
                    "m.room.member",
                    invitee.as_str(),
                    content,
                )
                .await
            {
                tracing::info!(room = %room_id, %invitee, "the refused invite stays: {e}");
            }
        }
        Err(error)
    }

    async fn deliver_remote_invite(&self, room_id: &RoomId, event_id: &EventId) -> Result<()> {
        let room = self
            .timeline
            .room(room_id)?
            .ok_or_else(|| Error::not_found("Unknown room."))?;
        let pdu = self
            .timeline
            .pdu_json(event_id)?
            .ok_or_else(|| Error::internal("the invite vanished"))?;
        let target = str_field(&pdu, "state_key")
            .and_then(|u| UserId::parse(u).ok())
            .ok_or_else(|| Error::internal("an invite without a target"))?;
        let entries = self.timeline.current_state_entries(&room)?;
        let mut invite_state = Vec::new();
        for kind in INVITE_STATE {
            if let Some(id) = self.timeline.lookup(&entries, kind, "")?
                && let Some(state_pdu) = self.timeline.pdu_json(&id)?
            {
                invite_state.push(RawStrippedState::Pdu(raw(&state_pdu)?));
            }
        }
        let request = create_invite::v2::Request::new(
            room_id.to_owned(),
            event_id.to_owned(),
            room.version.clone(),
            raw(&pdu)?,
            invite_state,
        );
        let response = self
            .send_federation_request(target.server_name(), request)
            .await?;
        let signed: CanonicalJsonObject = serde_json::from_str(response.event.get())
            .map_err(|e| Error::bad_json(format!("The invitee's server sent back no PDU: {e}")))?;
        let rules = rules_of(&room.version)?;
        if event_id_of(&signed, &rules)? != event_id {
            return Err(Error::forbidden(
                "The invitee's server sent back a different event.",
            ));
        }
        self.timeline.replace_pdu(event_id, signed)
    }

    /// An invite from `origin` for a local user: checked, countersigned, kept.
    pub async fn accept_remote_invite(
        &self,
        origin: &ServerName,
        request: &create_invite::v2::Request,
    ) -> Result<CanonicalJsonObject> {
        let version = &request.room_version;
        let rules = rules_of(version)?;
        let pdu: CanonicalJsonObject = serde_json::from_str(request.event.get())
            .map_err(|e| Error::bad_json(format!("Not a PDU: {e}")))?;
        let (event_id, mut pdu) = self.check_incoming_pdu(version, pdu).await?;
        if event_id != request.event_id {
            return Err(Error::bad_json("The event ID does not match the event."));
        }
        let target = str_field(&pdu, "state_key")
            .and_then(|u| UserId::parse(u).ok())
            .ok_or_else(|| Error::bad_json("The invite has no valid target."))?;
        let is_invite = matches!(pdu.get("content"), Some(CanonicalJsonValue::Object(c))
            if matches!(c.get("membership"), Some(CanonicalJsonValue::String(m)) if m == "invite"));
        if str_field(&pdu, "type") != Some("m.room.member")
            || !is_invite
            || str_field(&pdu, "room_id") != Some(request.room_id.as_str())
        {
            return Err(Error::bad_json("That is not an invite to this room."));
        }
        let sender = str_field(&pdu, "sender")
            .and_then(|u| UserId::parse(u).ok())
            .ok_or_else(|| Error::bad_json("The invite has no valid sender."))?;
        if sender.server_name() != origin {
            return Err(Error::forbidden("The inviter is not on your server."));
        }
        if target.server_name() != self.server_name || !self.users.is_active(&target)? {
            return Err(Error::not_found("No such user here."));
        }
        self.check_invite_permitted(&target)?;
        ruma::signatures::sign_event(
            self.server_name.as_str(),
            self.globals.signing_key(),
            &mut pdu,
            &rules.redaction,
        )
        .map_err(|e| Error::internal(format!("countersigning the invite failed: {e}")))?;
        // In a room we take part in, the invite also arrives through /send like any event.
        if self.is_resident(&request.room_id)? {
            return Ok(pdu);
        }
        let room_state = request
            .invite_room_state
            .iter()
            .filter_map(|state| match state {
                #[allow(deprecated)]
                RawStrippedState::Stripped(raw) => serde_json::from_str(raw.json().get()).ok(),
                RawStrippedState::Pdu(raw) => serde_json::from_str(raw.get()).ok(),
                #[allow(unreachable_patterns)]
                _ => None,
            })
            .collect();
        let mut servers = vec![origin.to_owned()];
        if let Some(room_server) = request.room_id.server_name()
            && room_server != origin
        {
            servers.push(room_server.to_owned());
        }
        let invite = RemoteInvite {
            event_id: event_id.clone(),
            room_version: version.clone(),
            event: pdu.clone(),
            room_state,
            servers,
        };
        let room_id = request.room_id.clone();
        let batch = Batch::new();
        let stored = serde_json::to_vec(&invite)?;
        self.timeline
            .commit_counted_in(
                Some((&room_id, Change::Membership)),
                batch,
                |batch, count| {
                    batch.put(
                        Cf::RemoteInvites,
                        remote_invite_key(&target, &room_id),
                        stored,
                    );
                    Members::put_outside_membership(
                        batch,
                        &target,
                        &room_id,
                        MembershipState::Invite,
                        event_id.clone(),
                        count,
                    )
                },
            )
            .await?;
        Ok(pdu)
    }

    /// Rejects an invite to a room this server is not in: `make_leave` and `send_leave`
    /// through the inviting server, then the user's membership is "leave" here whatever the
    /// remote answered (nobody should be stuck with an invite they cannot refuse).
    pub async fn reject_remote_invite(&self, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        let invite = self
            .remote_invite(user_id, room_id)?
            .ok_or_else(|| Error::not_found("No invite to that room."))?;
        let mut leave_id = invite.event_id.clone();
        for server in &invite.servers {
            match self
                .send_leave_through(server, room_id, user_id, &invite.room_version)
                .await
            {
                Ok(id) => {
                    leave_id = id;
                    break;
                }
                Err(e) => {
                    tracing::info!(%room_id, %server, "rejecting the invite remotely failed: {e}")
                }
            }
        }
        let room_id = room_id.to_owned();
        self.timeline
            .commit_counted_in(
                Some((&room_id, Change::Membership)),
                Batch::new(),
                |batch, count| {
                    batch.delete(Cf::RemoteInvites, remote_invite_key(user_id, &room_id));
                    Members::put_outside_membership(
                        batch,
                        user_id,
                        &room_id,
                        MembershipState::Leave,
                        leave_id,
                        count,
                    )
                },
            )
            .await?;
        Ok(())
    }

    /// Keeps a local user's invite or knock (`membership`) for a room this server is not in,
    /// and sets their `user_rooms` entry so `/sync` shows it.
    pub(super) async fn keep_remote_membership(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        membership: MembershipState,
        record: RemoteInvite,
    ) -> Result<()> {
        let stored = serde_json::to_vec(&record)?;
        let room_id = room_id.to_owned();
        self.timeline
            .commit_counted_in(
                Some((&room_id, Change::Membership)),
                Batch::new(),
                |batch, count| {
                    batch.put(
                        Cf::RemoteInvites,
                        remote_invite_key(user_id, &room_id),
                        stored,
                    );
                    Members::put_outside_membership(
                        batch,
                        user_id,
                        &room_id,
                        membership,
                        record.event_id.clone(),
                        count,
                    )
                },
            )
            .await?;
        Ok(())
    }

    /// Forgets a remote invite once the user joined the room.
    pub fn drop_remote_invite(&self, user_id: &UserId, room_id: &RoomId) -> Result<()> {
        let mut batch = Batch::new();
        batch.delete(Cf::RemoteInvites, remote_invite_key(user_id, room_id));
        Ok(self.store.write(batch)?)
    }

    async fn send_leave_through(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        user_id: &UserId,
        version: &RoomVersionId,
    ) -> Result<OwnedEventId> {
        let response = self
            .send_federation_request(
                server,
                prepare_leave_event::v1::Request::new(room_id.to_owned(), user_id.to_owned()),
            )
            .await?;
        let version = response.room_version.unwrap_or_else(|| version.clone());
        let rules = rules_of(&version)?;
        let signed = self.sign_membership_template(
            server,
            &response.event,
            room_id,
            user_id,
            &rules,
            "leave",
            None,
        )?;
        self.send_federation_request(
            server,
            create_leave_event::v2::Request::new(
                room_id.to_owned(),
                signed.event_id.clone(),
                raw(&signed.json)?,
            ),
        )
        .await?;
        Ok(signed.event_id)
    }
}
