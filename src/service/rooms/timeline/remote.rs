//! Events made by other servers entering a room: the auth steps (4–6) of the spec's checks on
//! receipt of a PDU, and the state they leave behind. The PDUs arrive here already checked for
//! format, signatures and hashes (`federation::pdu_check`).
//!
//! - [`Timeline::append_remote`]: a new event whose `prev_events` are known. Authorised
//!   against its own auth events and against the state before it (the resolution of the states
//!   after its `prev_events` when they are several); refused if either fails. Then checked
//!   against the room's current state: failing that it is *soft-failed* — stored, so others
//!   can refer to it, but never shown to clients nor made a forward extremity.
//! - [`Timeline::join_remote_room`]: the room as another server's `send_join` describes it
//!   (the state before our join and its auth chain), then our join on top.
//! - [`Timeline::event_template`]: the unsigned event `make_join` hands to another server.

use std::{collections::HashMap, sync::Arc};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, RoomId, RoomVersionId, UserId,
    events::StateEventType,
};

use super::{
    LocalEvent, RoomRecord, StoredPdu, Timeline,
    pipeline::{AdoptedState, Appending, Origin, Redacted},
};
use crate::{
    Error, Result,
    service::rooms::{
        auth,
        event::Pdu,
        pdu::rules_of,
        pdu::{self, NewEvent},
        state_res::State,
    },
    store::{Batch, Cf, keys},
    utils,
};

/// What became of a remote event.
#[derive(Debug, PartialEq, Eq)]
pub enum Appended {
    /// Part of the room now, visible to clients.
    New,
    /// Stored but not shown: it is not allowed by the room's current state.
    SoftFailed,
    /// Seen before; nothing was done.
    Known,
    /// Some `prev_events` are unknown here: fetch them first.
    MissingPrevious(Vec<OwnedEventId>),
}

/// The event IDs in a PDU's `prev_events` or `auth_events` (plain IDs from v3 on, `[id,
/// hashes]` pairs in v1 and v2).
pub fn referenced_ids(pdu: &CanonicalJsonObject, field: &str) -> Vec<OwnedEventId> {
    let Some(CanonicalJsonValue::Array(items)) = pdu.get(field) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| match item {
            CanonicalJsonValue::String(id) => EventId::parse(id).ok(),
            CanonicalJsonValue::Array(pair) => match pair.first() {
                Some(CanonicalJsonValue::String(id)) => EventId::parse(id).ok(),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// A room's state as another server described it, to start the room from (our join through
/// `send_join`, an import): the stored form of each event, and of each state event only what
/// the state map and the pipeline's consumers read. Not the parsed events: a big room's state
/// and auth chain are tens of thousands of events, and a parsed event takes several times its
/// JSON (a join of a room with 20,000 state events peaked at 160 MiB holding them all).
#[derive(Default)]
pub struct ReceivedState {
    /// The stored form ([`StoredPdu`]) of every event of the state and its auth chain.
    outliers: Vec<(OwnedEventId, Vec<u8>)>,
    /// Each state event: its ID and its [`summary_of`].
    state: Vec<(OwnedEventId, CanonicalJsonObject)>,
}

impl ReceivedState {
    /// An event of the state (checked already).
    pub fn add_state_event(
        &mut self,
        event_id: OwnedEventId,
        pdu: &CanonicalJsonObject,
    ) -> Result<()> {
        self.outliers
            .push((event_id.clone(), StoredPdu::bytes_of(&event_id, pdu)?));
        self.state.push((event_id, summary_of(pdu)));
        Ok(())
    }

    /// An event of the state's auth chain (checked already), stored as an outlier.
    pub fn add_auth_event(
        &mut self,
        event_id: OwnedEventId,
        pdu: &CanonicalJsonObject,
    ) -> Result<()> {
        let bytes = StoredPdu::bytes_of(&event_id, pdu)?;
        self.outliers.push((event_id, bytes));
        Ok(())
    }
}

/// The fields of a state event that the state map and [`AdoptedState`]'s consumers read.
fn summary_of(pdu: &CanonicalJsonObject) -> CanonicalJsonObject {
    ["type", "state_key", "sender", "content"]
        .into_iter()
        .filter_map(|field| Some((field.to_owned(), pdu.get(field)?.clone())))
        .collect()
}

/// The `(type, state_key)` of a state event.
fn state_key_of(pdu: &CanonicalJsonObject) -> Option<(String, String)> {
    Some((
        pdu::str_field(pdu, "type")?.to_owned(),
        pdu::str_field(pdu, "state_key")?.to_owned(),
    ))
}

impl Timeline {
    /// Whether an event is part of a room's graph here (stored with the state before it), as
    /// opposed to unknown or an outlier.
    pub fn has_state_for(&self, event_id: &EventId) -> Result<bool> {
        Ok(match self.short.existing_event(event_id.as_str())? {
            Some(short) => self
                .store
                .get(Cf::EventState, &keys::u64_be(short))?
                .is_some(),
            None => false,
        })
    }

    /// The oldest event of a room's timeline here, with its count.
    pub fn oldest_event(&self, room_id: &RoomId) -> Result<Option<(u64, OwnedEventId)>> {
        let prefix = keys::prefix(room_id.as_bytes());
        match self.store.scan_prefix(Cf::Timeline, &prefix).next() {
            Some(item) => {
                let (key, value) = item?;
                Ok(Some(self.timeline_entry(prefix.len(), &key, &value)?))
            }
            None => Ok(None),
        }
    }

    /// Puts history fetched from another server (`/backfill`) before the room's oldest event:
    /// each event newest first takes the next count down. They are history, not news: no
    /// membership index changes, nothing for `/sync` to wake up for. Events whose auth events
    /// are unknown here, or which their auth events do not allow, are left out. The state
    /// before each is taken to be the state before the oldest event known (what clients use
    /// it for, history visibility, rarely changes). Returns how many were added.
    pub async fn insert_backfilled(
        &self,
        room_id: &RoomId,
        mut events: Vec<(OwnedEventId, CanonicalJsonObject)>,
    ) -> Result<usize> {
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().await;
        let Some(room) = self.room(room_id)? else {
            return Ok(0);
        };
        let rules = rules_of(&room.version)?;
        let Some((mut count, oldest)) = self.oldest_event(room_id)? else {
            return Ok(0);
        };
        let oldest_short = self
            .short
            .existing_event(oldest.as_str())?
            .ok_or_else(|| Error::internal("the oldest event has no short ID"))?;
        let state_before = self
            .store
            .get(Cf::EventState, &keys::u64_be(oldest_short))?
            .ok_or_else(|| Error::internal("the oldest event has no state"))?;
        events.sort_by_key(|(_, pdu)| std::cmp::Reverse(pdu::depth_of(pdu)));
        let mut batch = Batch::new();
        let mut staged = Vec::new();
        let mut added = 0;
        for (event_id, pdu) in events {
            if self.count_of(&event_id)?.is_some() || count <= 1 {
                continue;
            }
            let Ok(event) = Pdu::from_json(event_id.clone(), &pdu, &rules) else {
                continue;
            };
            let allowed = self
                .authorize_by_cited_auth_events(room_id, &event, &pdu, &rules)
                .is_ok();
            if !allowed {
                tracing::info!(%event_id, %room_id, "backfilled event left out: not authorised by known auth events");
                continue;
            }
            count -= 1;
            let short = self.short.event(event_id.as_str())?;
            let stored = StoredPdu::new(event_id, pdu);
            batch.put(Cf::Pdus, keys::u64_be(short), serde_json::to_vec(&stored)?);
            batch.put(Cf::EventState, keys::u64_be(short), state_before.clone());
            super::index_timeline(&mut batch, count, room_id, short, &stored.pdu);
            let event_type = event.event_type.to_string();
            let mut work = self.pipeline.prepare(&Appending {
                room_id,
                event_id: &stored.event_id,
                short,
                pdu: &stored.pdu,
                origin: Origin::Backfill,
                sender: &event.sender,
                event_type: &event_type,
                state_key: event.state_key.as_deref(),
                redacted: None,
            })?;
            work.write(&mut batch, count)?;
            staged.push(work);
            added += 1;
        }
        self.store.write(batch)?;
        for work in staged {
            work.committed();
        }
        Ok(added)
    }

    /// Replaces a stored PDU by another copy of the same event (more signatures).
    pub fn replace_pdu(&self, event_id: &EventId, pdu: CanonicalJsonObject) -> Result<()> {
        let short = self
            .short
            .existing_event(event_id.as_str())?
            .ok_or_else(|| Error::not_found("No such event."))?;
        // What we recorded about the event stays; only the PDU changes.
        let mut stored = self
            .pdu_by_short(short)?
            .map(Arc::unwrap_or_clone)
            .unwrap_or_else(|| StoredPdu::new(event_id.to_owned(), CanonicalJsonObject::new()));
        stored.pdu = pdu;
        self.store.put(
            Cf::Pdus,
            &keys::u64_be(short),
            &serde_json::to_vec(&stored)?,
        )?;
        Ok(())
    }

    /// The unsigned event a remote user's server fills in and signs (`make_join`,
    /// `make_leave`, `make_knock`): current extremities, the auth events the current state
    /// gives, the next depth.
    pub fn event_template(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        event: LocalEvent<'_>,
    ) -> Result<(ruma::RoomVersionId, CanonicalJsonObject)> {
        let room = self
            .room(room_id)?
            .ok_or_else(|| Error::not_found("Unknown room."))?;
        let rules = rules_of(&room.version)?;
        let entries = if room.state == 0 {
            Vec::new()
        } else {
            self.states.load(room.state)?
        };
        let auth_ids = self.auth_event_ids(&rules, &entries, sender, &event)?;
        let needs_pdus = rules.events_reference_format
            == ruma::room_version_rules::EventsReferenceFormatVersion::V1;
        let load = |ids: &[OwnedEventId]| -> Result<Vec<Option<CanonicalJsonObject>>> {
            ids.iter()
                .map(|id| match needs_pdus {
                    true => self.pdu_json(id),
                    false => Ok(None),
                })
                .collect()
        };
        let auth_json = load(&auth_ids)?;
        let prev_json = load(&room.extremities)?;
        let CanonicalJsonValue::Object(content) = CanonicalJsonValue::try_from(event.content)
            .map_err(|e| Error::bad_json(format!("Invalid event content: {e}")))?
        else {
            return Err(Error::bad_json("Event content must be a JSON object."));
        };
        let template = pdu::assemble(
            NewEvent {
                room_id: Some(room_id),
                sender,
                event_type: event.event_type,
                state_key: event.state_key,
                content,
                redacts: None,
                prev_events: &super::event_refs(&room.extremities, &prev_json),
                auth_events: &super::event_refs(&auth_ids, &auth_json),
                depth: pdu::depth_after(room.depth),
                origin_server_ts: utils::now_millis(),
            },
            &rules,
            None,
        )?;
        Ok((room.version, template))
    }

    /// Appends an event from another server (see the module note). The PDU must already have
    /// passed the signature and hash checks.
    pub async fn append_remote(
        &self,
        room_id: &RoomId,
        event_id: &EventId,
        pdu: CanonicalJsonObject,
    ) -> Result<Appended> {
        self.append_remote_inner(room_id, event_id, pdu, None, Origin::Remote, None)
            .await
    }

    /// Appends an event taken from another homeserver's database (`culvert import`), in that
    /// server's order: checked like a received event (its auth events and the state before
    /// it), committed as [`Origin::Import`]. A room's create event starts the room. The PDU
    /// is the event as its server signed it (a redacted event's redacted form). An event whose
    /// `prev_events` that database never had comes with the state before it as that database
    /// kept it (`state_before`; the events it names stored first, as outliers).
    pub async fn import_event(
        &self,
        room_id: &RoomId,
        event_id: &EventId,
        pdu: CanonicalJsonObject,
        state_before: Option<State>,
    ) -> Result<Appended> {
        let is_create = matches!(pdu.get("type"), Some(CanonicalJsonValue::String(t)) if t == "m.room.create")
            && matches!(pdu.get("state_key"), Some(CanonicalJsonValue::String(k)) if k.is_empty());
        let new_room = if is_create && self.room(room_id)?.is_none() {
            let version = match pdu.get("content") {
                Some(CanonicalJsonValue::Object(content)) => match content.get("room_version") {
                    Some(CanonicalJsonValue::String(v)) => v.clone(),
                    _ => "1".to_owned(),
                },
                _ => "1".to_owned(),
            };
            Some(RoomRecord {
                version: RoomVersionId::try_from(version.as_str())
                    .map_err(|_| Error::invalid_param("Unknown room version."))?,
                state: 0,
                extremities: Vec::new(),
                depth: 0,
            })
        } else {
            None
        };
        self.append_remote_inner(
            room_id,
            event_id,
            pdu,
            state_before,
            Origin::Import,
            new_room,
        )
        .await
    }

    /// Like [`Timeline::append_remote`] for an event whose `prev_events` are not all known
    /// here, with the state before it as the origin described it (`/state_ids`; the events
    /// it names stored as outliers first). The event joins the room as a fork; the room's
    /// current state is then the resolution of its extremities' states.
    pub async fn append_remote_with_state(
        &self,
        room_id: &RoomId,
        event_id: &EventId,
        pdu: CanonicalJsonObject,
        state_before: State,
    ) -> Result<Appended> {
        self.append_remote_inner(
            room_id,
            event_id,
            pdu,
            Some(state_before),
            Origin::Remote,
            None,
        )
        .await
    }

    /// Stores PDUs that are not part of the room's graph here (state and auth events fetched
    /// from another server), unless they are known already.
    pub fn store_outliers(&self, events: &[(OwnedEventId, CanonicalJsonObject)]) -> Result<()> {
        let mut batch = Batch::new();
        for (event_id, pdu) in events {
            if self.pdu_json(event_id)?.is_some() {
                continue;
            }
            let short = self.short.event(event_id.as_str())?;
            let stored = StoredPdu::new(event_id.clone(), pdu.clone());
            batch.put(Cf::Pdus, keys::u64_be(short), serde_json::to_vec(&stored)?);
        }
        Ok(self.store.write(batch)?)
    }

    async fn append_remote_inner(
        &self,
        room_id: &RoomId,
        event_id: &EventId,
        pdu: CanonicalJsonObject,
        given_state: Option<State>,
        origin: Origin,
        new_room: Option<RoomRecord>,
    ) -> Result<Appended> {
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().await;
        if self.has_state_for(event_id)? {
            return Ok(Appended::Known);
        }
        let room = match new_room {
            Some(room) => room,
            None => self
                .room(room_id)?
                .ok_or_else(|| Error::not_found("Unknown room."))?,
        };
        let rules = rules_of(&room.version)?;
        let prevs = referenced_ids(&pdu, "prev_events");
        let mut missing = Vec::new();
        for prev in &prevs {
            if !self.has_state_for(prev)? {
                missing.push(prev.clone());
            }
        }
        if !missing.is_empty() && given_state.is_none() {
            return Ok(Appended::MissingPrevious(missing));
        }
        let event = Pdu::from_json(event_id.to_owned(), &pdu, &rules)?;

        // 4. Allowed by its own auth events?
        self.authorize_by_cited_auth_events(room_id, &event, &pdu, &rules)?;
        let load = |id: &EventId| self.load_pdu(id, &rules);

        // 5. Allowed by the state before it?
        let state_before: State = match (given_state, prevs.as_slice()) {
            (Some(given), _) => given,
            // A create event: nothing before it.
            (None, []) => State::new(),
            (None, [one]) => self.state_after(one)?,
            (None, many) => self.resolve_blocking(&room.version, many, None)?,
        };
        let in_state = |state: &State, kind: &StateEventType, key: &str| {
            state
                .get(&(kind.to_string(), key.to_owned()))
                .and_then(|id| self.load_pdu(id, &rules))
        };
        auth::authorize(&rules.authorization, &event, load, |kind, key| {
            in_state(&state_before, kind, key)
        })?;

        // 6. Allowed by the current state? If not, soft-fail.
        let current: State = self.expand_entries(&if room.state == 0 {
            Vec::new()
        } else {
            self.states.load(room.state)?
        })?;
        let soft_failed = auth::authorize(&rules.authorization, &event, load, |kind, key| {
            in_state(&current, kind, key)
        })
        .is_err();

        let short_event = self.short.event(event_id.as_str())?;
        let before = self.save_state(room.state, &state_before)?;
        let stored = StoredPdu::new(event_id.to_owned(), pdu);
        let mut batch = Batch::new();
        batch.put(
            Cf::Pdus,
            keys::u64_be(short_event),
            serde_json::to_vec(&stored)?,
        );
        batch.put(
            Cf::EventState,
            keys::u64_be(short_event),
            keys::u64_be(before),
        );
        if soft_failed {
            tracing::info!(%event_id, %room_id, "soft-failed: not allowed by the current state");
            self.store.write(batch)?;
            return Ok(Appended::SoftFailed);
        }
        // The state after it, and the room's new current state.
        let mut after = state_before;
        if let Some(key) = state_key_of(&stored.pdu) {
            after.insert(key, event_id.to_owned());
        }
        let extremities: Vec<OwnedEventId> = room
            .extremities
            .iter()
            .filter(|e| !prevs.contains(e))
            .cloned()
            .chain([event_id.to_owned()])
            .collect();
        let new_state = if extremities.len() == 1 {
            self.save_state(before, &after)?
        } else {
            // Resolution reads the event's PDU from the store: write it first, alone. Alone it
            // is harmless — without its state entry the event still counts as unknown, so if
            // the process dies before the commit, the event is taken again when its server
            // sends it again. (Its state entry written here too made it "known" after such a
            // crash, and it was never appended: the kill -9 loop found that.) Its state after
            // it is handed to the resolution instead.
            let mut pdu_first = Batch::new();
            pdu_first.put(
                Cf::Pdus,
                keys::u64_be(short_event),
                serde_json::to_vec(&stored)?,
            );
            self.store.write_without_waiting(pdu_first)?;
            let resolved =
                self.resolve_blocking(&room.version, &extremities, Some((event_id, &after)))?;
            self.save_state(room.state, &resolved)?
        };
        let redacted = self.redact_target_in(&mut batch, &stored, &rules)?;
        let record = RoomRecord {
            version: room.version.clone(),
            state: new_state,
            extremities,
            depth: room.depth.max(pdu::depth_of(&stored.pdu)),
        };
        batch.put(Cf::Rooms, room_id.as_bytes(), serde_json::to_vec(&record)?);
        let event_type = event.event_type.to_string();
        self.commit_event(
            batch,
            &Appending {
                room_id,
                event_id,
                short: short_event,
                pdu: &stored.pdu,
                origin,
                sender: &event.sender,
                event_type: &event_type,
                state_key: event.state_key.as_deref(),
                redacted: redacted.as_ref().map(|(short, target)| Redacted {
                    event_id: &target.event_id,
                    short: *short,
                    pdu: &target.pdu,
                }),
            },
        )
        .await?
        .finish(self)
        .await?;
        Ok(Appended::New)
    }

    /// The resolution of the states after `events`, off the async worker when it can be;
    /// `known`: an event whose state after it is given rather than read.
    fn resolve_blocking(
        &self,
        version: &ruma::RoomVersionId,
        events: &[OwnedEventId],
        known: Option<(&EventId, &State)>,
    ) -> Result<State> {
        let resolve = || self.state_at_extremities_knowing(version, events, known);
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(resolve),
            _ => resolve(),
        }
    }

    /// A redaction from another server redacts its target, when known, in the same batch.
    /// (Whether the sender may redact it was part of the auth checks.) Returns the target's
    /// short ID and its PDU from before, when it was redacted.
    fn redact_target_in(
        &self,
        batch: &mut Batch,
        redaction: &StoredPdu,
        rules: &ruma::room_version_rules::RoomVersionRules,
    ) -> Result<Option<(u64, Arc<StoredPdu>)>> {
        if pdu::str_field(&redaction.pdu, "type") != Some("m.room.redaction") {
            return Ok(None);
        }
        let target = if rules.redaction.content_field_redacts {
            match redaction.pdu.get("content") {
                Some(CanonicalJsonValue::Object(content)) => match content.get("redacts") {
                    Some(CanonicalJsonValue::String(id)) => Some(id.clone()),
                    _ => None,
                },
                _ => None,
            }
        } else {
            pdu::str_field(&redaction.pdu, "redacts").map(ToOwned::to_owned)
        };
        let Some(target) = target else {
            return Ok(None);
        };
        let Some(short) = self.short.existing_event(&target)? else {
            return Ok(None);
        };
        let Some(stored_target) = self.pdu_by_short(short)? else {
            return Ok(None);
        };
        let original = stored_target.clone();
        let mut stored_target = Arc::unwrap_or_clone(stored_target);
        // Another server may redact only events of its own users (or with power, which the
        // auth rules checked); a redaction of a foreign event by a plain user is not applied.
        let redactor = pdu::str_field(&redaction.pdu, "sender").unwrap_or_default();
        let author = pdu::str_field(&stored_target.pdu, "sender").unwrap_or_default();
        let same_server = UserId::parse(redactor)
            .ok()
            .zip(UserId::parse(author).ok())
            .is_some_and(|(a, b)| a.server_name() == b.server_name());
        if !same_server && !self.may_redact_others(&redaction.pdu, rules)? {
            return Ok(None);
        }
        let Ok(room_id) =
            RoomId::parse(pdu::str_field(&redaction.pdu, "room_id").unwrap_or_default())
        else {
            return Ok(None);
        };
        let because = ruma::canonical_json::RedactedBecause::from_json(
            crate::service::rooms::client_event::redaction_record(
                &room_id,
                &redaction.event_id,
                &redaction.pdu,
            ),
        );
        ruma::canonical_json::redact_in_place(
            &mut stored_target.pdu,
            &rules.redaction,
            Some(because),
        )
        .map_err(|e| Error::internal(format!("redaction failed: {e}")))?;
        batch.put(
            Cf::Pdus,
            keys::u64_be(short),
            serde_json::to_vec(&stored_target)?,
        );
        Ok(Some((short, original)))
    }

    /// Whether the redaction's sender has the `redact` power level in the room's current state.
    fn may_redact_others(
        &self,
        redaction: &CanonicalJsonObject,
        _rules: &ruma::room_version_rules::RoomVersionRules,
    ) -> Result<bool> {
        let (Some(room_id), Some(sender)) = (
            pdu::str_field(redaction, "room_id"),
            pdu::str_field(redaction, "sender"),
        ) else {
            return Ok(false);
        };
        let Ok(room_id) = RoomId::parse(room_id) else {
            return Ok(false);
        };
        let Some(room) = self.room(&room_id)? else {
            return Ok(false);
        };
        let entries = self.states.load(room.state)?;
        let Some(levels_id) = self.lookup(&entries, "m.room.power_levels", "")? else {
            return Ok(false);
        };
        let Some(levels) = self.pdu_json(&levels_id)? else {
            return Ok(false);
        };
        let content = match levels.get("content") {
            Some(CanonicalJsonValue::Object(c)) => c.clone(),
            _ => return Ok(false),
        };
        let int = |v: Option<&CanonicalJsonValue>, default: i64| match v {
            Some(CanonicalJsonValue::Integer(i)) => i64::from(*i),
            _ => default,
        };
        let needed = int(content.get("redact"), 50);
        let user_level = match content.get("users") {
            Some(CanonicalJsonValue::Object(users)) => {
                int(users.get(sender), int(content.get("users_default"), 0))
            }
            _ => int(content.get("users_default"), 0),
        };
        Ok(user_level >= needed)
    }

    /// Whether a stored event passes the auth rules against the auth events it cites (all of
    /// which must be stored here).
    fn allowed_by_own_auth_events(
        &self,
        room_id: &RoomId,
        event_id: &EventId,
        rules: &ruma::room_version_rules::RoomVersionRules,
    ) -> bool {
        let json = match self.pdu_json(event_id) {
            Ok(Some(json)) => json,
            Ok(None) => return false,
            Err(e) => {
                tracing::error!(%event_id, "cannot read a stored event to check it: {e}");
                return false;
            }
        };
        let event = match Pdu::from_json(event_id.to_owned(), &json, rules) {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(%event_id, "cannot parse a stored event to check it: {e}");
                return false;
            }
        };
        self.authorize_by_cited_auth_events(room_id, &event, &json, rules)
            .is_ok()
    }

    /// Step 4 of the checks on receipt: `event` (`json` its PDU) against the auth rules, with
    /// the auth events it cites as the state (and, from v12, the create event its room ID
    /// names). Refused (`M_FORBIDDEN`) when one of them is not stored here.
    fn authorize_by_cited_auth_events(
        &self,
        room_id: &RoomId,
        event: &Pdu,
        json: &CanonicalJsonObject,
        rules: &ruma::room_version_rules::RoomVersionRules,
    ) -> Result<()> {
        let mut auth_state: HashMap<(String, String), Arc<Pdu>> = HashMap::new();
        for id in referenced_ids(json, "auth_events") {
            let auth_json = self
                .pdu_json(&id)?
                .ok_or_else(|| Error::forbidden(format!("Auth event {id} is unknown here.")))?;
            let key = state_key_of(&auth_json)
                .ok_or_else(|| Error::forbidden(format!("Auth event {id} is not state.")))?;
            let auth_event = self
                .load_pdu(&id, rules)
                .ok_or_else(|| Error::forbidden(format!("Auth event {id} is unreadable.")))?;
            auth_state.insert(key, auth_event);
        }
        if rules.authorization.room_create_event_id_as_room_id
            && let Some(create_id) = pdu::create_event_id_of(room_id)
            && let Some(create) = self.load_pdu(&create_id, rules)
        {
            auth_state.insert(("m.room.create".to_owned(), String::new()), create);
        }
        auth::authorize(
            &rules.authorization,
            event,
            |id: &EventId| self.load_pdu(id, rules),
            |kind, key| auth_state.get(&(kind.to_string(), key.to_owned())).cloned(),
        )
    }

    /// Sets up a room this server joins through another: stores the state before our join and
    /// its auth chain (as outliers), then our join event on top of that state, and indexes the
    /// members so that the room's traffic reaches them. The join must already be signed by the
    /// resident server where the room version asks for it, and every PDU checked.
    pub async fn join_remote_room(
        &self,
        room_id: &RoomId,
        version: &ruma::RoomVersionId,
        state: ReceivedState,
        join: (OwnedEventId, CanonicalJsonObject),
    ) -> Result<()> {
        self.start_room_at(room_id, version, state, join, Origin::RemoteJoin)
            .await
    }

    /// Like [`Timeline::join_remote_room`] for a room another homeserver's database holds
    /// from a join on (`culvert import`): its first event there, on the state before it (the
    /// auth chain stored already), committed as [`Origin::Import`].
    pub async fn import_joined_room(
        &self,
        room_id: &RoomId,
        version: &ruma::RoomVersionId,
        state: Vec<(OwnedEventId, CanonicalJsonObject)>,
        first: (OwnedEventId, CanonicalJsonObject),
    ) -> Result<()> {
        let mut received = ReceivedState::default();
        for (event_id, pdu) in state {
            received.add_state_event(event_id, &pdu)?;
        }
        self.start_room_at(room_id, version, received, first, Origin::Import)
            .await
    }

    async fn start_room_at(
        &self,
        room_id: &RoomId,
        version: &ruma::RoomVersionId,
        received: ReceivedState,
        join: (OwnedEventId, CanonicalJsonObject),
        origin: Origin,
    ) -> Result<()> {
        let rules = rules_of(version)?;
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().await;

        // Outliers first: the PDUs the state and the auth rules refer to (read from the store
        // from here on, by the auth rules' loader).
        let ReceivedState {
            outliers: stored,
            state,
        } = received;
        let mut outliers = Batch::new();
        let mut state_map = State::new();
        for (event_id, bytes) in stored {
            let short = self.short.event(event_id.as_str())?;
            outliers.put(Cf::Pdus, keys::u64_be(short), bytes);
        }
        for (event_id, pdu) in &state {
            if let Some(key) = state_key_of(pdu) {
                state_map.insert(key, event_id.clone());
            }
        }
        let (join_id, join_pdu) = join;
        let join_short = self.short.event(join_id.as_str())?;
        let join_stored = StoredPdu::new(join_id.clone(), join_pdu);
        outliers.put(
            Cf::Pdus,
            keys::u64_be(join_short),
            serde_json::to_vec(&join_stored)?,
        );
        // Durable with the join committed below (one log, fsynced in order).
        self.store.write_without_waiting(outliers)?;

        // Each state event must be allowed by the auth events it cites (the auth chain came
        // with it); one that is not is left out of the state.
        state_map.retain(|_, id| {
            let allowed = self.allowed_by_own_auth_events(room_id, id, &rules);
            if !allowed {
                tracing::warn!(%room_id, event_id = %id, "send_join state event refused by its auth events");
            }
            allowed
        });

        // Our join must be allowed by the state the resident server gave.
        let event = Pdu::from_json(join_id.clone(), &join_stored.pdu, &rules)?;
        auth::authorize(
            &rules.authorization,
            &event,
            |id: &EventId| self.load_pdu(id, &rules),
            |kind, key| {
                state_map
                    .get(&(kind.to_string(), key.to_owned()))
                    .and_then(|id| self.load_pdu(id, &rules))
            },
        )?;

        let before = self.save_state(0, &state_map)?;
        let mut after = state_map;
        if let Some(key) = state_key_of(&join_stored.pdu) {
            after.insert(key, join_id.clone());
        }
        let after_hash = self.save_state(before, &after)?;
        let record = RoomRecord {
            version: version.clone(),
            state: after_hash,
            extremities: vec![join_id.clone()],
            depth: pdu::depth_of(&join_stored.pdu),
        };
        let mut batch = Batch::new();
        batch.put(
            Cf::EventState,
            keys::u64_be(join_short),
            keys::u64_be(before),
        );
        batch.put(Cf::Rooms, room_id.as_bytes(), serde_json::to_vec(&record)?);
        // The consumers see our join, then index the whole state it completes (the members and
        // their servers, the join rule), which replaces whatever an earlier stay left.
        let kept: std::collections::HashSet<&OwnedEventId> = after.values().collect();
        let adopted: Vec<(OwnedEventId, CanonicalJsonObject)> = state
            .into_iter()
            .filter(|(event_id, _)| kept.contains(event_id))
            .chain([(join_id.clone(), join_stored.pdu.clone())])
            .collect();
        let join_type = event.event_type.to_string();
        let mut staged = self
            .pipeline
            .prepare(&Appending {
                room_id,
                event_id: &join_id,
                short: join_short,
                pdu: &join_stored.pdu,
                origin,
                sender: &event.sender,
                event_type: &join_type,
                state_key: event.state_key.as_deref(),
                redacted: None,
            })?
            .then(self.pipeline.prepare_adopted_state(&AdoptedState {
                room_id,
                events: &adopted,
            })?);
        let change = Some((room_id, super::activity::Change::Event));
        self.commit_counted_in(change, batch, |batch, count| {
            super::index_timeline(batch, count, room_id, join_short, &join_stored.pdu);
            staged.write(batch, count)
        })
        .await?;
        staged.committed();
        Ok(())
    }
}
