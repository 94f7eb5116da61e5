//! Rooms: events, state and timelines. Being built (see docs/design/rooms.md): PDUs, auth,
//! short ids, state snapshots and the append path exist; endpoints and sync come next.

pub mod alias;
pub mod auth;
pub mod canonical_json;
pub mod client_event;
pub mod context;
pub mod create;
pub mod directory;
pub mod ephemeral;
pub mod event;
pub mod history;
pub mod members;
pub mod membership;
pub mod pdu;
pub mod peeking;
pub mod profile;
pub mod purge;
pub mod redaction;
pub mod relations;
pub mod search;
pub mod short;
pub mod sliding_sync;
pub mod spaces;
pub mod state_res;
pub mod state_store;
pub mod sync;
pub mod sync_filter;
pub mod thread_subscriptions;
pub mod timeline;
pub mod upgrade;

use ruma::{OwnedEventId, RoomId, RoomVersionId, UserId};
use serde_json::Value;

use crate::{Result, service::Services};
use timeline::{LocalEvent, Signer};

impl Services {
    /// This server's signing identity, for the events it builds.
    pub fn signer(&self) -> Signer<'_> {
        Signer {
            server_name: &self.server_name,
            key: self.globals.signing_key(),
        }
    }

    /// Signs, authorises and appends a state event sent by a local user.
    pub async fn send_state_event(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        event_type: &str,
        state_key: &str,
        content: Value,
    ) -> Result<OwnedEventId> {
        // An invite to a user of this server who blocks invites (MSC4380), whichever endpoint
        // sends it: `/invite`, `/state`, `/createRoom`.
        if event_type == "m.room.member"
            && content["membership"] == "invite"
            && let Ok(invitee) = UserId::parse(state_key)
        {
            self.check_invite_permitted(&invitee)?;
        }
        let event = LocalEvent::state(event_type, state_key, content);
        self.timeline
            .append(room_id, sender, event, &self.signer())
            .await
    }
}

/// The room versions culvert understands, oldest first.
pub const SUPPORTED_ROOM_VERSIONS: [RoomVersionId; 12] = [
    RoomVersionId::V1,
    RoomVersionId::V2,
    RoomVersionId::V3,
    RoomVersionId::V4,
    RoomVersionId::V5,
    RoomVersionId::V6,
    RoomVersionId::V7,
    RoomVersionId::V8,
    RoomVersionId::V9,
    RoomVersionId::V10,
    RoomVersionId::V11,
    RoomVersionId::V12,
];
