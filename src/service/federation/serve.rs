//! What other servers may read here: single events, the events between two points of a
//! room's graph, the state at an event, backfill, auth chains, the event closest to a time.
//! A server may read a room's events while one of its users is joined to it and the room's
//! server ACL (`m.room.server_acl`) allows it. Timeline events it may not see under the room's
//! history visibility (`invited`/`joined` before any of its users was there) are backfilled
//! redacted and never found by `/timestamp_to_event`.

use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, RoomId, ServerName,
    events::room::server_acl::RoomServerAclEventContent,
};

use crate::{
    Error, Result,
    service::{
        Services,
        rooms::{
            pdu::{depth_of, str_field},
            timeline::referenced_ids,
        },
    },
};

impl Services {
    /// Whether `server` has a joined user in `room_id`.
    pub fn server_in_room(&self, server: &ServerName, room_id: &RoomId) -> Result<bool> {
        self.members.server_in_room(room_id, server)
    }

    fn check_server_may_read(&self, server: &ServerName, room_id: &RoomId) -> Result<()> {
        if !self.server_acl_allows(room_id, server)? {
            return Err(Error::forbidden(
                "The room's server ACL denies your server.",
            ));
        }
        if self.server_in_room(server, room_id)? {
            Ok(())
        } else {
            Err(Error::forbidden("Your server is not in this room."))
        }
    }

    /// Whether the room's current `m.room.server_acl` allows `server` (no ACL, an unknown
    /// room or an ACL whose content cannot be read: allowed). Point reads on the current state.
    pub fn server_acl_allows(&self, room_id: &RoomId, server: &ServerName) -> Result<bool> {
        let Some(room) = self.timeline.room(room_id)? else {
            return Ok(true);
        };
        let entries = self.timeline.current_state_entries(&room)?;
        let Some(acl_id) = self.timeline.lookup(&entries, "m.room.server_acl", "")? else {
            return Ok(true);
        };
        let Some(content) = self
            .timeline
            .pdu_json(&acl_id)?
            .and_then(|pdu| pdu.get("content").cloned())
        else {
            return Ok(true);
        };
        let content = serde_json::to_value(content)?;
        match serde_json::from_value::<RoomServerAclEventContent>(content) {
            Ok(acl) => Ok(acl.is_allowed(server)),
            Err(_) => Ok(true),
        }
    }

    /// An event's PDU if it is an event of `room_id` (else 404).
    fn room_event(&self, room_id: &RoomId, event_id: &EventId) -> Result<CanonicalJsonObject> {
        self.timeline
            .pdu_json(event_id)?
            .filter(|pdu| str_field(pdu, "room_id") == Some(room_id.as_str()))
            .ok_or_else(|| Error::not_found("No such event in this room."))
    }

    /// Whether `server` may see an event under the room's history visibility: `shared` and
    /// `world_readable` events yes (it is in the room now); `invited`/`joined` ones only if one
    /// of its users was invited or joined (or sent the event) at that point. Decisions are
    /// remembered per state in `cache` for the length of one request.
    fn server_may_see(
        &self,
        server: &ServerName,
        event_id: &EventId,
        pdu: &CanonicalJsonObject,
        cache: &mut HashMap<u64, bool>,
    ) -> Result<bool> {
        if let Some(CanonicalJsonValue::String(sender)) = pdu.get("sender")
            && ruma::UserId::parse(sender).is_ok_and(|s| s.server_name() == server)
        {
            return Ok(true);
        }
        let state = self.timeline.state_hash_before(event_id)?;
        if let Some(known) = cache.get(&state) {
            return Ok(*known);
        }
        let visibility = self.timeline.history_visibility_at(state)?;
        let allowed = match &*visibility {
            "invited" | "joined" => {
                let accepted: &[&str] = if &*visibility == "invited" {
                    &["join", "invite"]
                } else {
                    &["join"]
                };
                let entries = self.timeline.state_entries(state)?;
                let mut found = false;
                for ((kind, key), id) in self.timeline.expand_entries(&entries)? {
                    if kind != "m.room.member"
                        || ruma::UserId::parse(&key).map_or(true, |u| u.server_name() != server)
                    {
                        continue;
                    }
                    let membership =
                        self.timeline
                            .pdu_json(&id)?
                            .and_then(|p| match p.get("content") {
                                Some(CanonicalJsonValue::Object(c)) => match c.get("membership") {
                                    Some(CanonicalJsonValue::String(m)) => Some(m.clone()),
                                    _ => None,
                                },
                                _ => None,
                            });
                    if membership.is_some_and(|m| accepted.contains(&m.as_str())) {
                        found = true;
                        break;
                    }
                }
                found
            }
            _ => true,
        };
        cache.insert(state, allowed);
        Ok(allowed)
    }

    /// `/state_ids`: the IDs of the room's state before `event_id` and of its auth chain.
    pub fn state_ids_for_server(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<(Vec<OwnedEventId>, Vec<OwnedEventId>)> {
        self.check_server_may_read(server, room_id)?;
        // State and auth events are what a server in the room needs to check events; history
        // visibility applies to the timeline (backfill), not to them.
        self.room_event(room_id, event_id)?;
        let room = self
            .timeline
            .room(room_id)?
            .ok_or_else(|| Error::not_found("Unknown room."))?;
        let mut state: Vec<OwnedEventId> = self
            .timeline
            .expand_entries(&self.timeline.state_entries_before(event_id)?)?
            .into_values()
            .collect();
        state.sort_unstable();
        let mut chain: Vec<OwnedEventId> = self
            .timeline
            .auth_chain(&room.version, state.iter().map(|id| &**id))?
            .into_iter()
            .collect();
        chain.sort_unstable();
        Ok((state, chain))
    }

    /// `/state`: as [`Services::state_ids_for_server`], with the PDUs.
    pub fn state_for_server(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<(Vec<CanonicalJsonObject>, Vec<CanonicalJsonObject>)> {
        let (state, chain) = self.state_ids_for_server(server, room_id, event_id)?;
        Ok((self.pdus_of(&state)?, self.pdus_of(&chain)?))
    }

    fn pdus_of(&self, ids: &[OwnedEventId]) -> Result<Vec<CanonicalJsonObject>> {
        let mut pdus = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(pdu) = self.timeline.pdu_json(id)? {
                pdus.push(pdu);
            }
        }
        Ok(pdus)
    }

    /// `/event_auth`: the full auth chain of an event.
    pub fn event_auth_for_server(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<Vec<CanonicalJsonObject>> {
        self.check_server_may_read(server, room_id)?;
        // State and auth events are what a server in the room needs to check events; history
        // visibility applies to the timeline (backfill), not to them.
        self.room_event(room_id, event_id)?;
        let room = self
            .timeline
            .room(room_id)?
            .ok_or_else(|| Error::not_found("Unknown room."))?;
        let mut chain: Vec<OwnedEventId> = self
            .timeline
            .auth_chain(&room.version, [event_id])?
            .into_iter()
            .collect();
        chain.sort_unstable();
        self.pdus_of(&chain)
    }

    /// `/backfill`: the events `from` and those before them (through `prev_events`), newest
    /// (deepest) first, at most `limit`; events the server may not see come redacted.
    pub fn backfill_for_server(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        from: &[OwnedEventId],
        limit: usize,
    ) -> Result<Vec<CanonicalJsonObject>> {
        self.check_server_may_read(server, room_id)?;
        let mut cache = HashMap::new();
        let mut seen: HashSet<OwnedEventId> = HashSet::new();
        let mut queue: BinaryHeap<(u64, OwnedEventId)> = BinaryHeap::new();
        let mut enqueue = |services: &Self,
                           id: OwnedEventId,
                           queue: &mut BinaryHeap<(u64, OwnedEventId)>|
         -> Result<()> {
            if !seen.insert(id.clone()) {
                return Ok(());
            }
            if let Some(pdu) = services.timeline.pdu_json(&id)?
                && str_field(&pdu, "room_id") == Some(room_id.as_str())
            {
                queue.push((depth_of(&pdu), id));
            }
            Ok(())
        };
        for id in from.iter().take(20) {
            enqueue(self, id.clone(), &mut queue)?;
        }
        let mut events = Vec::new();
        // A bound on the walk, in case most events are invisible to the server.
        let mut budget = limit.saturating_mul(4).max(100);
        while let Some((_, id)) = queue.pop() {
            if events.len() >= limit || budget == 0 {
                break;
            }
            budget -= 1;
            let Some(pdu) = self.timeline.pdu_json(&id)? else {
                continue;
            };
            for prev in referenced_ids(&pdu, "prev_events") {
                enqueue(self, prev, &mut queue)?;
            }
            if self.server_may_see(server, &id, &pdu, &mut cache)? {
                events.push(pdu);
            } else {
                // Redacted rather than left out, so the server's copy of the graph has no hole.
                let room = self
                    .timeline
                    .room(room_id)?
                    .ok_or_else(|| Error::not_found("Unknown room."))?;
                let rules = room
                    .version
                    .rules()
                    .ok_or_else(|| Error::internal("unsupported room version"))?;
                let redacted = ruma::canonical_json::redact(pdu, &rules.redaction, None)
                    .map_err(|e| Error::internal(format!("cannot redact {id}: {e}")))?;
                events.push(redacted);
            }
        }
        Ok(events)
    }

    /// `/timestamp_to_event`: the event closest to `ts` in the direction asked that `server`
    /// may see, as `(event ID, origin_server_ts)`.
    pub fn timestamp_for_server(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        ts: u64,
        forward: bool,
    ) -> Result<(OwnedEventId, u64)> {
        self.check_server_may_read(server, room_id)?;
        let mut cache = HashMap::new();
        let mut inspected = 0usize;
        let found =
            self.timeline
                .find_by_timestamp(room_id, ts, forward, |event_ts, _, event_id| {
                    inspected += 1;
                    if inspected > 1000 {
                        return Err(Error::not_found(
                            "No event you may see is close enough to that timestamp.",
                        ));
                    }
                    let Some(pdu) = self.timeline.pdu_json(&event_id)? else {
                        return Ok(None);
                    };
                    Ok(self
                        .server_may_see(server, &event_id, &pdu, &mut cache)?
                        .then_some((event_id, event_ts)))
                })?;
        found.ok_or_else(|| Error::not_found("No event found in that direction."))
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
        let room_id = str_field(&pdu, "room_id")
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
            if str_field(&pdu, "room_id") != Some(room_id.as_str()) || depth_of(&pdu) < min_depth {
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
