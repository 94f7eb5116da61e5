//! Server notices (Synapse's `send_server_notice`): messages from the server to one of its
//! users, in a room that the server's own user (`@culvert:server`) keeps with that user,
//! tagged `m.server_notice` so that clients show it apart (Element's "System Alerts"). The
//! user may read and leave it, not write in it; a user who left gets a new one with the next
//! notice. The room of each user is kept in `global` (`server_notices:<user_id>`).

use ruma::{DeviceId, OwnedEventId, OwnedRoomId, UserId, events::room::member::MembershipState};
use serde_json::{Map, Value, json};

use crate::{
    Error, Result,
    service::{
        Services,
        rooms::{
            create::{CreateRoom, Preset},
            timeline::{ClientTxn, LocalEvent},
        },
    },
    store::Cf,
};

/// The room tag clients know server notices rooms by.
const NOTICE_TAG: &str = "m.server_notice";

fn room_key(user_id: &UserId) -> Vec<u8> {
    [b"server_notices:".as_slice(), user_id.as_bytes()].concat()
}

/// A notice to send.
pub struct Notice<'a> {
    pub event_type: &'a str,
    /// For a state event.
    pub state_key: Option<&'a str>,
    pub content: Value,
}

impl Services {
    /// Sends a notice to a local user, in their notices room (made and the user invited the
    /// first time). With `txn` (the admin and their transaction ID), a repeated request sends
    /// nothing new and gets the same event ID.
    pub async fn send_server_notice(
        &self,
        user_id: &UserId,
        notice: Notice<'_>,
        txn: Option<(&UserId, &str)>,
    ) -> Result<OwnedEventId> {
        if user_id.server_name() != self.server_name {
            return Err(Error::invalid_param(
                "Server notices can only be sent to local users.",
            ));
        }
        if !self.users.is_active(user_id)? {
            return Err(Error::not_found(format!(
                "No active account {user_id} here."
            )));
        }
        if !notice.content.is_object() {
            return Err(Error::bad_json("`content` must be a JSON object."));
        }
        let server_user = self.server_user();
        let room_id = self.notice_room(user_id, &server_user).await?;
        let device = txn.map(|(admin, _)| <&DeviceId>::from(admin.as_str()));
        let client_txn = match (device, txn) {
            (Some(device), Some((_, txn_id))) => {
                Some(ClientTxn::new(&server_user, device, &room_id, txn_id))
            }
            _ => None,
        };
        let event = LocalEvent {
            event_type: notice.event_type,
            state_key: notice.state_key,
            content: notice.content,
            redacts: None,
        };
        self.timeline
            .append_once(
                &room_id,
                &server_user,
                event,
                client_txn.as_ref(),
                &self.signer(),
            )
            .await
    }

    /// The user's notices room: the kept one while the user is in it or invited, else a new
    /// one (the user invited, the tag set for them).
    async fn notice_room(&self, user_id: &UserId, server_user: &UserId) -> Result<OwnedRoomId> {
        if let Some(bytes) = self.store.get(Cf::Global, &room_key(user_id))?
            && let Ok(room_id) = OwnedRoomId::try_from(String::from_utf8_lossy(&bytes).as_ref())
            && self
                .members
                .membership(&room_id, user_id)?
                .is_some_and(|m| {
                    matches!(
                        m.membership,
                        MembershipState::Join | MembershipState::Invite
                    )
                })
        {
            return Ok(room_id);
        }
        let mut power = Map::new();
        // Only the server speaks here.
        power.insert("events_default".into(), json!(100));
        let room_id = self
            .create_room_anyway(
                server_user,
                CreateRoom {
                    version: None,
                    preset: Preset::PrivateChat,
                    creation_content: Map::new(),
                    power_level_override: power,
                    initial_state: vec![(
                        "m.room.guest_access".to_owned(),
                        String::new(),
                        json!({ "guest_access": "forbidden" }),
                    )],
                    name: Some("Server Notices".to_owned()),
                    topic: None,
                    invite: vec![user_id.to_owned()],
                    is_direct: false,
                    alias: None,
                },
            )
            .await?;
        let tag = serde_json::value::to_raw_value(&json!({ "tags": { NOTICE_TAG: {} } }))?;
        self.set_account_data(user_id, Some(&room_id), "m.tag", &tag)
            .await?;
        self.store
            .put(Cf::Global, &room_key(user_id), room_id.as_bytes())?;
        tracing::info!(user = %user_id, room = %room_id, "server notices room made");
        Ok(room_id)
    }
}
