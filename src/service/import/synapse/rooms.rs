//! Rooms: events in Synapse's order through the append path, the state before an event
//! from Synapse's state groups where its earlier events are missing, aliases, the directory.

use super::*;

impl Import<'_> {
    pub(super) async fn rooms(&self, report: &mut ImportReport) -> Result<(), StartError> {
        let partial: Vec<String> = self
            .db
            .rows("SELECT room_id FROM partial_state_rooms", &[])
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r[0].text())
            .collect();
        let rooms = self
            .db
            .rows(
                "SELECT r.room_id, r.room_version, r.is_public FROM rooms r ORDER BY (SELECT MIN(stream_ordering) FROM events e WHERE e.room_id = r.room_id AND e.stream_ordering > 0)",
                &[],
            )
            .map_err(StartError::Other)?;
        let total = self
            .db
            .count("SELECT COUNT(*) FROM events WHERE NOT outlier");
        let mut progress = Progress::new("events", total);
        let mut published = Vec::new();
        for room in rooms {
            let Some(room_id) = room[0].text().and_then(|r| OwnedRoomId::try_from(r).ok()) else {
                continue;
            };
            if partial.iter().any(|p| p == room_id.as_str()) {
                report.skip(format!(
                    "{room_id}: Synapse had not finished joining it (partial state); join it again"
                ));
                continue;
            }
            let imported = self
                .room(&room_id, room[1].text(), report, &mut progress)
                .await?;
            if imported > 0 {
                report.count("rooms");
                if room[2].flag() {
                    published.push(room_id);
                }
            }
        }
        progress.finish();
        for room_id in published {
            if let Some(services) = self.services {
                services.publish(&room_id, true)?;
            }
            report.count("rooms in the directory");
        }
        self.aliases(report)
    }

    /// One room's events, oldest first; returns how many were imported.
    async fn room(
        &self,
        room_id: &OwnedRoomId,
        version: Option<String>,
        report: &mut ImportReport,
        progress: &mut Progress,
    ) -> Result<u64, StartError> {
        // Newer Synapses note a rejection on the event's row too.
        let rejected = if self.db.has_column("events", "rejection_reason") {
            "COALESCE(e.rejection_reason, r.reason)"
        } else {
            "r.reason"
        };
        let events = self
            .db
            .rows(
                &format!(
                    "SELECT e.event_id, j.json, j.format_version, {rejected} \
                     FROM events e JOIN event_json j ON j.event_id = e.event_id \
                     LEFT JOIN rejections r ON r.event_id = e.event_id \
                     WHERE e.room_id = $1 AND NOT e.outlier \
                     ORDER BY e.topological_ordering, e.stream_ordering"
                ),
                &[room_id.as_str()],
            )
            .map_err(StartError::Other)?;
        let version = version
            .and_then(|v| RoomVersionId::try_from(v.as_str()).ok())
            .unwrap_or(RoomVersionId::V1);
        let mut imported = 0;
        let mut known = false;
        for row in events {
            progress.step();
            let Some(event_id) = row[0].text().and_then(|e| OwnedEventId::try_from(e).ok()) else {
                continue;
            };
            if row[3].text().is_some() {
                report.skip(format!("{event_id} in {room_id}: Synapse had rejected it"));
                continue;
            }
            let Some(pdu) = synapse_pdu(&row[1], &row[2]) else {
                report.skip(format!("{event_id} in {room_id}: unreadable"));
                continue;
            };
            let Some(services) = self.services else {
                imported += 1;
                report.count("events");
                continue;
            };
            // Read until the room exists here; from then on it does.
            let room_exists = known || services.timeline.room(room_id)?.is_some();
            known = room_exists;
            let mut outcome = if room_exists || is_create(&pdu) {
                services
                    .timeline
                    .import_event(room_id, &event_id, pdu.clone(), None)
                    .await
            } else {
                Ok(Appended::MissingPrevious(Vec::new()))
            };
            // Earlier events this database never had (a room joined over federation):
            // the state before the event as Synapse's state groups kept it.
            if let Ok(Appended::MissingPrevious(_)) = &outcome {
                match self.state_before(services, &event_id, &pdu) {
                    Ok(Some(state)) if room_exists => {
                        outcome = services
                            .timeline
                            .import_event(room_id, &event_id, pdu, Some(state))
                            .await;
                    }
                    // The room starts here: as a join through another server does.
                    Ok(Some(state)) => {
                        let state_events = self.state_events(&state);
                        outcome = match state_events {
                            Ok(state_events) => services
                                .timeline
                                .import_joined_room(
                                    room_id,
                                    &version,
                                    state_events,
                                    (event_id.clone(), pdu),
                                )
                                .await
                                .map(|()| Appended::New),
                            Err(e) => Err(crate::Error::internal(e)),
                        };
                    }
                    Ok(None) => {}
                    Err(e) => {
                        report.skip(format!("{event_id} in {room_id}: {e}"));
                        continue;
                    }
                }
            }
            if tally(report, room_id, &event_id, outcome) {
                imported += 1;
            }
        }
        Ok(imported)
    }

    /// The full state of a state group: its own rows over those of the groups before it.
    fn group_state(&self, group: i64) -> Result<State, String> {
        let mut chain = vec![group];
        loop {
            if chain.len() > 10_000 {
                return Err("a state group's chain does not end".into());
            }
            let last = chain[chain.len() - 1].to_string();
            let parent = self.db.rows(
                "SELECT prev_state_group FROM state_group_edges WHERE state_group = CAST($1 AS BIGINT)",
                &[&last],
            )?;
            match parent.first().and_then(|p| p[0].int()) {
                Some(parent) => chain.push(parent),
                None => break,
            }
        }
        let mut state = State::new();
        for group in chain.iter().rev() {
            for row in self.db.rows(
                "SELECT type, state_key, event_id FROM state_groups_state WHERE state_group = CAST($1 AS BIGINT)",
                &[&group.to_string()],
            )? {
                if let (Some(kind), Some(key), Some(id)) = (row[0].text(), row[1].text(), row[2].text())
                    && let Ok(id) = OwnedEventId::try_from(id)
                {
                    state.insert((kind, key), id);
                }
            }
        }
        Ok(state)
    }

    /// The state before `event_id` (Synapse keeps the state after each event): the group
    /// after it, with a state event's own entry set back to what it replaced. Its events, and
    /// the auth events the PDU cites, are stored first as outliers where they are not here.
    fn state_before(
        &self,
        services: &Services,
        event_id: &OwnedEventId,
        pdu: &CanonicalJsonObject,
    ) -> Result<Option<State>, String> {
        let group = self.db.rows(
            "SELECT state_group FROM event_to_state_groups WHERE event_id = $1",
            &[event_id.as_str()],
        )?;
        let Some(group) = group.first().and_then(|g| g[0].int()) else {
            return Ok(None);
        };
        let mut state = self.group_state(group)?;
        if let Some(key) = state_key_of(pdu) {
            let replaced = self.db.rows(
                "SELECT json FROM event_json WHERE event_id = $1",
                &[event_id.as_str()],
            )?;
            let replaces = replaced
                .first()
                .and_then(|r| r[0].json())
                .and_then(|j| j["unsigned"]["replaces_state"].as_str().map(str::to_owned))
                .and_then(|id| OwnedEventId::try_from(id).ok());
            match replaces {
                Some(previous) => {
                    state.insert(key, previous);
                }
                None => {
                    state.remove(&key);
                }
            }
        }
        super::super::store_state_events(services, &state, pdu, |id| self.pdu(id))?;
        Ok(Some(state))
    }

    /// The state's events as (ID, PDU), read from what is stored here.
    fn state_events(
        &self,
        state: &State,
    ) -> Result<Vec<(OwnedEventId, CanonicalJsonObject)>, String> {
        let mut events = Vec::new();
        for id in state.values() {
            match self.pdu(id)? {
                Some(pdu) => events.push((id.clone(), pdu)),
                None => return Err(format!("the state event {id} is not in the database")),
            }
        }
        Ok(events)
    }

    /// An event as its server signed it.
    fn pdu(&self, event_id: &ruma::EventId) -> Result<Option<CanonicalJsonObject>, String> {
        let rows = self.db.rows(
            "SELECT json, format_version FROM event_json WHERE event_id = $1",
            &[event_id.as_str()],
        )?;
        Ok(rows.first().and_then(|r| synapse_pdu(&r[0], &r[1])))
    }

    fn aliases(&self, report: &mut ImportReport) -> Result<(), StartError> {
        for row in self
            .db
            .rows("SELECT room_alias, room_id, creator FROM room_aliases", &[])
            .map_err(StartError::Other)?
        {
            let (Some(alias), Some(room)) = (row[0].text(), row[1].text()) else {
                continue;
            };
            let Some(services) = self.services else {
                report.count("aliases");
                continue;
            };
            let (Ok(alias), Ok(room_id)) = (
                OwnedRoomAliasId::try_from(alias.as_str()),
                OwnedRoomId::try_from(room),
            ) else {
                report.skip(format!("alias {alias:?}: unreadable"));
                continue;
            };
            if services.timeline.room(&room_id)?.is_none() {
                report.skip(format!("{alias}: its room is not imported"));
                continue;
            }
            let Some(creator) = user(&row[2]) else {
                report.skip(format!("{alias}: no creator"));
                continue;
            };
            match services.create_alias(&alias, &room_id, &creator) {
                Ok(()) => report.count("aliases"),
                Err(e) => report.skip(format!("{alias}: {e}")),
            }
        }
        Ok(())
    }
}

fn is_create(pdu: &CanonicalJsonObject) -> bool {
    matches!(pdu.get("type"), Some(CanonicalJsonValue::String(t)) if t == "m.room.create")
}

fn state_key_of(pdu: &CanonicalJsonObject) -> Option<(String, String)> {
    match (pdu.get("type"), pdu.get("state_key")) {
        (Some(CanonicalJsonValue::String(kind)), Some(CanonicalJsonValue::String(key))) => {
            Some((kind.clone(), key.clone()))
        }
        _ => None,
    }
}
