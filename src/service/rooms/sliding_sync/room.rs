//! One room of a sliding-sync answer: its timeline since what the connection's client has (or
//! the latest events, for a room new to it), the state it asked for (all of it for a new room,
//! what changed otherwise), and the fields clients show in their room lists (name, avatar,
//! heroes, member counts, bump stamp). Invites and knocks carry their stripped state instead.

use std::collections::{BTreeSet, HashMap};

use ruma::{OwnedEventId, RoomId, UserId, events::room::member::MembershipState};
use serde_json::{Map, Value, json};

use super::{RoomConfig, connection::RoomSent, room_list::ListRoom};
use crate::{
    Result,
    service::{
        Services,
        rooms::{
            client_event::{ClientEvent, Detail, Viewer},
            state_store::StateEntry,
            sync::{TimelinePart, changed_entries},
            sync_filter::EventMatcher,
        },
    },
};

/// How many members a room's `heroes` names.
const HEROES: usize = 5;

impl Services {
    /// The room's part of an answer and what the connection then holds of it; `None` when
    /// there is nothing to send after all.
    // The room's parts come from the list, the request, the connection and the clock.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn sliding_room(
        &self,
        viewer: Viewer<'_>,
        room: &ListRoom,
        config: &RoomConfig,
        fingerprint: u64,
        before: Option<RoomSent>,
        from: Option<u64>,
        now: u64,
        is_dm: bool,
    ) -> Result<Option<(SlidingRoom, RoomSent)>> {
        let room_id = &room.room_id;
        let membership = &room.membership.membership;
        let mut out = Map::new();
        out.insert("bump_stamp".into(), room.bump.into());
        if is_dm {
            out.insert("is_dm".into(), true.into());
        }
        if matches!(membership, MembershipState::Invite | MembershipState::Knock) {
            // What an invitee may see: the stripped state the invite came with.
            let invite_state = match self.remote_invite(viewer.user_id, room_id)? {
                Some(remote) => self.remote_invite_state(&remote),
                None => self.stripped_state(room_id, &room.membership.event_id)?,
            };
            out.insert("invite_state".into(), invite_state.into());
            out.insert("initial".into(), true.into());
            let record = RoomSent {
                upto: room.membership.count,
                timeline_limit: config.timeline_limit,
                config: fingerprint,
                joined: false,
            };
            return Ok(Some((SlidingRoom::new(out), record)));
        }
        let joined = *membership == MembershipState::Join;
        // A left room ends at the leave: nothing after it is the user's to see.
        let upto = if joined { now } else { room.membership.count };
        let initial = before.is_none_or(|b| joined && !b.joined);
        let expanded = !initial && before.is_some_and(|b| config.timeline_limit > b.timeline_limit);
        let resend_state = !initial && before.is_some_and(|b| b.config != fingerprint);
        let floor = match before {
            Some(b) if !initial && !expanded => b.upto,
            _ => 0,
        };
        let limit = usize::try_from(config.timeline_limit).unwrap_or(usize::MAX);
        let timeline = if limit > 0 {
            self.read_timeline(
                viewer,
                room_id,
                floor,
                upto,
                limit,
                &EventMatcher::default(),
            )?
        } else {
            TimelinePart {
                events: Vec::new(),
                limited: !self
                    .timeline
                    .last_events_above(room_id, floor, upto, 1)?
                    .0
                    .is_empty(),
                gap: false,
                prev_batch: upto,
                newest: None,
            }
        };
        // The state after the newest event: the timeline's scan found it when there was one.
        let state_now = match &timeline.newest {
            Some((_, newest)) => self.timeline.state_entries_after(newest)?,
            None => self.timeline.state_entries_at_count(room_id, upto)?,
        };
        // What changed in the state since the client's copy (everything, for a new room).
        let (state_events, changed) = if initial || resend_state {
            let events = self.required_state_all(viewer, room_id, &state_now, config, &timeline)?;
            (events, None)
        } else {
            let then = self
                .timeline
                .state_entries_at_count(room_id, before.map_or(0, |b| b.upto))?;
            let changed = self
                .timeline
                .expand_entries(&changed_entries(&then, &state_now))?;
            let events = self
                .required_state_changes(viewer, room_id, &changed, &state_now, config, &timeline)?;
            (events, Some(changed))
        };
        let changed_type = |kind: &str| {
            changed
                .as_ref()
                .is_none_or(|changed| changed.keys().any(|(k, _)| k == kind))
        };
        let members_changed = changed_type("m.room.member");

        let name = self.state_field(&state_now, "m.room.name", "name")?;
        if changed_type("m.room.name")
            && let Some(name) = name.as_ref().filter(|n| !n.is_empty())
        {
            out.insert("name".into(), name.clone().into());
        }
        // An avatar event without a URL removed the avatar: `null` says so.
        if changed_type("m.room.avatar")
            && self
                .timeline
                .lookup(&state_now, "m.room.avatar", "")?
                .is_some()
        {
            let avatar = self.state_field(&state_now, "m.room.avatar", "url")?;
            out.insert(
                "avatar".into(),
                avatar
                    .filter(|a| !a.is_empty())
                    .map_or(Value::Null, Value::from),
            );
        }
        if members_changed {
            let members = self.members.of_room(room_id)?;
            let count =
                |m: MembershipState| members.iter().filter(|(_, state)| *state == m).count();
            out.insert("joined_count".into(), count(MembershipState::Join).into());
            out.insert(
                "invited_count".into(),
                count(MembershipState::Invite).into(),
            );
            if name.as_deref().is_none_or(str::is_empty) {
                let mut heroes = Vec::new();
                for (user, _) in members
                    .iter()
                    .filter(|(user, m)| {
                        *user != viewer.user_id
                            && (*m == MembershipState::Join || *m == MembershipState::Invite)
                    })
                    .take(HEROES)
                {
                    heroes.push(self.hero(&state_now, user)?);
                }
                out.insert("heroes".into(), heroes.into());
            }
        }
        if let Some(from) = from {
            let live = timeline.events.iter().filter(|(c, _, _)| *c > from).count();
            out.insert("num_live".into(), live.into());
        }
        if initial {
            out.insert("initial".into(), true.into());
        }
        if expanded {
            out.insert("unstable_expanded_timeline".into(), true.into());
        }
        let counts = self.unread_counts(viewer.user_id, room_id)?;
        out.insert("notification_count".into(), counts.notifications.into());
        out.insert("highlight_count".into(), counts.highlights.into());
        out.insert("prev_batch".into(), timeline.prev_batch.to_string().into());
        if timeline.limited {
            out.insert("limited".into(), true.into());
        }
        let mut part = SlidingRoom::new(out);
        part.required_state = state_events;
        part.timeline = timeline
            .events
            .into_iter()
            .map(|(_, _, event)| event.without_room_id())
            .collect();
        let record = RoomSent {
            upto,
            timeline_limit: config.timeline_limit,
            config: fingerprint,
            joined,
        };
        Ok(Some((part, record)))
    }

    /// Every state event the config asks for, in `state` (a room new to the client, or one
    /// whose config changed).
    fn required_state_all(
        &self,
        viewer: Viewer<'_>,
        room_id: &RoomId,
        state: &[StateEntry],
        config: &RoomConfig,
        timeline: &TimelinePart,
    ) -> Result<Vec<ClientEvent>> {
        let wanted = &config.required_state;
        let me = viewer.user_id.as_str();
        let mut ids: BTreeSet<OwnedEventId> = BTreeSet::new();
        if wanted.everything() {
            ids.extend(self.timeline.expand_entries(state)?.into_values());
        } else {
            for (kind, key) in wanted.exact(me) {
                ids.extend(self.timeline.lookup(state, kind, key)?);
            }
            let types: BTreeSet<&str> = wanted.any_key_types().collect();
            if !types.is_empty() {
                for &(short_key, short_event) in state {
                    let Some(name) = self.short_ids.state_key_name(short_key)? else {
                        continue;
                    };
                    if types.contains(name.0.as_str())
                        && let Some(id) = self.short_ids.event_id(short_event)?
                        && let Ok(id) = ruma::EventId::parse(&id)
                    {
                        ids.insert(id);
                    }
                }
            }
        }
        if wanted.lazy_members() {
            for sender in timeline_members(timeline) {
                ids.extend(self.timeline.lookup(state, "m.room.member", &sender)?);
            }
        }
        self.state_events(viewer, room_id, ids)
    }

    /// The state events the config asks for that changed between `then` and `now`, and the
    /// member events of the timeline's senders (lazy members).
    fn required_state_changes(
        &self,
        viewer: Viewer<'_>,
        room_id: &RoomId,
        changed: &HashMap<(String, String), OwnedEventId>,
        now: &[StateEntry],
        config: &RoomConfig,
        timeline: &TimelinePart,
    ) -> Result<Vec<ClientEvent>> {
        let wanted = &config.required_state;
        let me = viewer.user_id.as_str();
        let mut ids: BTreeSet<OwnedEventId> = BTreeSet::new();
        for ((kind, key), id) in changed {
            // A member event is asked for by `$LAZY` too: a changed member is sent when the
            // client lazy-loads members (it may hold the old one).
            let lazy_member = kind == "m.room.member" && wanted.lazy_members();
            if wanted.wants(kind, key, me) || lazy_member {
                ids.insert(id.clone());
            }
        }
        if wanted.lazy_members() {
            for sender in timeline_members(timeline) {
                ids.extend(self.timeline.lookup(now, "m.room.member", &sender)?);
            }
        }
        self.state_events(viewer, room_id, ids)
    }

    fn state_events(
        &self,
        viewer: Viewer<'_>,
        room_id: &RoomId,
        ids: BTreeSet<OwnedEventId>,
    ) -> Result<Vec<ClientEvent>> {
        let mut view = self.event_view(Some(viewer));
        let mut events = Vec::with_capacity(ids.len());
        for id in ids {
            events.push(
                view.client_event_by_id(room_id, &id, None, Detail::State)?
                    .without_room_id(),
            );
        }
        Ok(events)
    }

    /// A string field of the content of the state event `(kind, "")` in `state`.
    fn state_field(&self, state: &[StateEntry], kind: &str, field: &str) -> Result<Option<String>> {
        let Some(id) = self.timeline.lookup(state, kind, "")? else {
            return Ok(None);
        };
        Ok(self.timeline.stored_pdu(&id)?.and_then(|stored| {
            super::super::pdu::content_str(&stored.pdu, field).map(str::to_owned)
        }))
    }

    /// A member as `heroes` names them: ID, display name and avatar from their member event.
    fn hero(&self, state: &[StateEntry], user: &UserId) -> Result<Value> {
        let mut hero = json!({ "user_id": user });
        if let Some(id) = self
            .timeline
            .lookup(state, "m.room.member", user.as_str())?
            && let Some(stored) = self.timeline.stored_pdu(&id)?
        {
            let content =
                |field| super::super::pdu::content_str(&stored.pdu, field).map(str::to_owned);
            if let Some(name) = content("displayname") {
                hero["displayname"] = name.into();
            }
            if let Some(avatar) = content("avatar_url") {
                hero["avatar_url"] = avatar.into();
            }
        }
        Ok(hero)
    }
}

/// A room's part of a sliding-sync answer: its `required_state` and `timeline` events written
/// straight from their stored form (see [`ClientEvent`]), the other fields as values.
pub(crate) struct SlidingRoom {
    pub(super) fields: Map<String, Value>,
    required_state: Vec<ClientEvent>,
    timeline: Vec<ClientEvent>,
}

impl SlidingRoom {
    fn new(fields: Map<String, Value>) -> Self {
        Self {
            fields,
            required_state: Vec::new(),
            timeline: Vec::new(),
        }
    }
}

impl serde::Serialize for SlidingRoom {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in &self.fields {
            map.serialize_entry(key, value)?;
        }
        if !self.required_state.is_empty() {
            map.serialize_entry("required_state", &self.required_state)?;
        }
        if !self.timeline.is_empty() {
            map.serialize_entry("timeline", &self.timeline)?;
        }
        map.end()
    }
}

/// The users whose member events a lazy-loading client needs for a timeline: its senders and
/// the members its member events are about.
fn timeline_members(timeline: &TimelinePart) -> BTreeSet<String> {
    let mut users = BTreeSet::new();
    for (_, _, event) in &timeline.events {
        if let Some(sender) = event.sender() {
            users.insert(sender.to_owned());
        }
        if event.event_type() == Some("m.room.member")
            && let Some(target) = event.state_key()
        {
            users.insert(target.to_owned());
        }
    }
    users
}
