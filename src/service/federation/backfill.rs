//! Backfill: a room joined through another server starts at our join; its earlier history is
//! fetched (`/backfill`) from the room's other servers when a client pages back past it.

use ruma::{
    CanonicalJsonObject, OwnedEventId, RoomId, UInt, api::federation::backfill::get_backfill,
};

use crate::{
    Result,
    service::{
        Services,
        rooms::{pdu::pdu_in_room, timeline::referenced_ids},
    },
};

/// At most this many events per backfill request.
const BACKFILL_BATCH: u32 = 50;

impl Services {
    /// Fetches history before the room's oldest event here, when that event refers to events
    /// this server does not have. Returns how many events were added (0: nothing to fetch, or
    /// nobody had it).
    pub async fn backfill_room(&self, room_id: &RoomId) -> Result<usize> {
        if !self.federation.enabled {
            return Ok(0);
        }
        let Some((_, oldest)) = self.timeline.oldest_event(room_id)? else {
            return Ok(0);
        };
        let Some(pdu) = self.timeline.pdu_json(&oldest)? else {
            return Ok(0);
        };
        let mut missing = Vec::new();
        for prev in referenced_ids(&pdu, "prev_events") {
            if self.timeline.count_of(&prev)?.is_none() {
                missing.push(prev);
            }
        }
        if missing.is_empty() {
            return Ok(0);
        }
        let Some(room) = self.timeline.room(room_id)? else {
            return Ok(0);
        };
        for server in self.servers_in_room(room_id)? {
            if server == self.server_name {
                continue;
            }
            let request = get_backfill::v1::Request::new(
                room_id.to_owned(),
                missing.clone(),
                UInt::from(BACKFILL_BATCH),
            );
            let response = match self.send_federation_request(&server, request).await {
                Ok(response) => response,
                Err(e) => {
                    tracing::info!(%room_id, %server, "backfill failed: {e}");
                    continue;
                }
            };
            let mut events: Vec<(OwnedEventId, CanonicalJsonObject)> = Vec::new();
            for raw in &response.pdus {
                let Ok(pdu) = serde_json::from_str::<CanonicalJsonObject>(raw.get()) else {
                    continue;
                };
                match self.check_incoming_pdu(&room.version, pdu).await {
                    Ok((id, pdu)) if pdu_in_room(&id, &pdu, room_id) => events.push((id, pdu)),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::info!(%room_id, %server, "a backfilled event was refused: {e}")
                    }
                }
            }
            let added = self.timeline.insert_backfilled(room_id, events).await?;
            if added > 0 {
                return Ok(added);
            }
        }
        Ok(0)
    }
}
