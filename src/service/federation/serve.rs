//! What other servers may read here: single events and the events between two points of a
//! room's graph. A server may read a room's events while one of its users is joined to it.

use std::collections::{BTreeSet, HashSet, VecDeque};

use ruma::{CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, RoomId, ServerName};

use crate::{
    Error, Result,
    service::{Services, rooms::timeline::referenced_ids},
};

fn room_of(pdu: &CanonicalJsonObject) -> Option<&str> {
    match pdu.get("room_id") {
        Some(CanonicalJsonValue::String(r)) => Some(r),
        _ => None,
    }
}

fn depth_of(pdu: &CanonicalJsonObject) -> u64 {
    match pdu.get("depth") {
        Some(CanonicalJsonValue::Integer(d)) => u64::try_from(i64::from(*d)).unwrap_or(0),
        _ => 0,
    }
}

impl Services {
    /// Whether `server` has a joined user in `room_id`.
    pub fn server_in_room(&self, server: &ServerName, room_id: &RoomId) -> Result<bool> {
        Ok(self
            .timeline
            .members(room_id)?
            .iter()
            .any(|(user, m)| m == "join" && user.server_name() == server))
    }

    fn check_server_may_read(&self, server: &ServerName, room_id: &RoomId) -> Result<()> {
        if self.server_in_room(server, room_id)? {
            Ok(())
        } else {
            Err(Error::forbidden("Your server is not in this room."))
        }
    }

    /// `GET /event/{eventId}` for `server`.
    pub fn event_for_server(
        &self,
        server: &ServerName,
        event_id: &EventId,
    ) -> Result<CanonicalJsonObject> {
        let pdu = self
            .timeline
            .pdu_json(event_id)?
            .ok_or_else(|| Error::not_found("No such event."))?;
        let room_id = room_of(&pdu)
            .and_then(|r| RoomId::parse(r).ok())
            .ok_or_else(|| Error::not_found("No such event."))?;
        self.check_server_may_read(server, &room_id)?;
        Ok(pdu)
    }

    /// `/get_missing_events`: walking back from `latest` through `prev_events`, the events
    /// not reachable from `earliest`, at least `min_depth` deep, oldest first, at most `limit`.
    pub fn missing_events_for_server(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        earliest: &[OwnedEventId],
        latest: &[OwnedEventId],
        limit: usize,
        min_depth: u64,
    ) -> Result<Vec<CanonicalJsonObject>> {
        self.check_server_may_read(server, room_id)?;
        let stop: HashSet<&EventId> = earliest.iter().map(|id| &**id).collect();
        let mut seen: HashSet<OwnedEventId> = latest.iter().cloned().collect();
        let mut queue: VecDeque<OwnedEventId> = VecDeque::new();
        for id in latest {
            if let Some(pdu) = self.timeline.pdu_json(id)? {
                queue.extend(referenced_ids(&pdu, "prev_events"));
            }
        }
        let mut found: BTreeSet<(u64, OwnedEventId)> = BTreeSet::new();
        let mut events = Vec::new();
        while let Some(id) = queue.pop_front() {
            if found.len() >= limit {
                break;
            }
            if stop.contains(&*id) || !seen.insert(id.clone()) {
                continue;
            }
            let Some(pdu) = self.timeline.pdu_json(&id)? else {
                continue;
            };
            if room_of(&pdu) != Some(room_id.as_str()) || depth_of(&pdu) < min_depth {
                continue;
            }
            queue.extend(referenced_ids(&pdu, "prev_events"));
            found.insert((depth_of(&pdu), id));
            events.push(pdu);
        }
        events.sort_by_key(depth_of);
        Ok(events)
    }
}
