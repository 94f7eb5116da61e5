//! `/sync` (v2): what changed in a user's rooms since a stream position.
//!
//! Tokens are stream counts (decimal). For each room the user has a membership in (one prefix
//! scan of `user_rooms`), a joined or left room contributes its timeline since the token (a
//! reverse seek, reading back only as far as the token, the filter's limit or a scan cap), and
//! the state the client lacks: all of it when the client knows nothing of the room (first sync,
//! newly joined, `full_state`), otherwise only what changed between the token and the start of
//! the timeline (or its end, with `use_state_after`). States are compared as compressed short-id
//! arrays, so only changed entries are ever expanded to events. Invites carry stripped state.
//! Long-polling waits on the append path's watch channel, so a new event wakes every waiting
//! client at once.
//!
//! Presence of the people the user shares rooms with comes from `service::presence`.
//! Filters (`sync_filter`) apply per section; with lazy-loaded members, the member events sent to
//! each device are remembered (`lazy_loaded_members`) so they are not sent again.

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use ruma::{
    DeviceId, EventId, OwnedEventId, OwnedRoomId, RoomId, UserId,
    events::room::member::MembershipState,
};
use serde::Serialize;
use serde_json::{Map, Value, json, value::RawValue};

use super::{
    client_event::{ClientEvent, Detail, Viewer},
    members::Membership,
    state_store::StateEntry,
    sync_filter::{EventMatcher, LazyMembers, SyncFilter},
    timeline::activity::{Change, Streams},
};
use crate::service::{account_data::hidden_event, device_lists::SyncedRoom};
use crate::{
    Error, Result,
    service::{Services, metrics::SyncApi},
    store::{Batch, Cf, keys},
};

/// Timeline events per room when the filter sets no limit.
pub const DEFAULT_TIMELINE_LIMIT: usize = 10;

/// Most timeline entries read back per room and sync when a filter or history visibility
/// hides events: the timeline is then `limited`, and `/messages` goes further.
const MAX_SCAN: usize = 500;

/// Options of one `/sync` request.
pub struct SyncRequest<'a> {
    pub since: Option<u64>,
    pub full_state: bool,
    /// `use_state_after`: state up to the end of the timeline, in `state_after`.
    pub use_state_after: bool,
    /// The key of that section: `state_after`, or `org.matrix.msc4222.state_after` for a client
    /// that asked with the unstable parameter (matrix-js-sdk).
    pub state_after_key: &'static str,
    pub timeout: Duration,
    pub filter: SyncFilter,
    /// The syncing device: lazy-loaded members are remembered per device.
    pub device_id: &'a DeviceId,
}

/// State event types an invitee sees before joining (the spec's recommendation).
const STRIPPED_STATE: &[&str] = &[
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

/// What the commits after the client's token wrote, as far as it is still remembered
/// ([`activity`](super::timeline::activity)): the scans of what nobody wrote are skipped.
/// Without a token, or with one too old, everything is read.
struct Recent {
    /// The rooms with read receipts since the token (their counts may have changed).
    receipt_rooms: Option<HashSet<OwnedRoomId>>,
    /// The user-wide streams written since the token.
    streams: Option<Streams>,
}

impl Recent {
    fn may_have_receipts(&self, room_id: &RoomId) -> bool {
        self.receipt_rooms
            .as_ref()
            .is_none_or(|rooms| rooms.contains(room_id))
    }

    fn may_have(&self, stream: Streams) -> bool {
        self.streams.is_none_or(|written| written.contains(stream))
    }
}

/// Which part of a room's history one sync covers.
struct Window {
    /// Timeline events after this count (0: from the newest backwards, as far as the limit).
    floor: u64,
    /// Events up to this count (the user's leave, for left rooms).
    upto: u64,
    /// The position whose state the client has; `None`: it has none (send all state).
    state_base: Option<u64>,
}

/// The timeline of one room in one sync, newest last.
pub(crate) struct TimelinePart {
    pub(crate) events: Vec<(u64, OwnedEventId, ClientEvent)>,
    pub(crate) limited: bool,
    /// Whether events the client has not seen were skipped before the first returned one (a
    /// gap whose state changes must be sent), or, with nothing returned, at all.
    pub(crate) gap: bool,
    pub(crate) prev_batch: u64,
    /// The room's newest event at or below the timeline's end and above its start, whether
    /// returned or not: the state after it is the room's state at the end.
    pub(crate) newest: Option<(u64, OwnedEventId)>,
}

impl Services {
    /// Answers a `/sync`: immediately when something changed (or `full_state` was asked for),
    /// otherwise after waiting up to `timeout` for a new event.
    pub async fn sync(&self, user_id: &UserId, request: SyncRequest<'_>) -> Result<SyncAnswer> {
        let answer = self.sync_answer(user_id, request).await;
        if answer.is_ok() {
            self.metrics.sync_response(SyncApi::sync);
        }
        answer
    }

    async fn sync_answer(&self, user_id: &UserId, request: SyncRequest<'_>) -> Result<SyncAnswer> {
        let mut committed = self.timeline.subscribe();
        // E2EE: a token at or past the response that carried to-device messages acknowledges them.
        if let Some(since) = request.since {
            self.acknowledge_to_device(user_id, request.device_id, since)?;
        }
        // A long-poll from the newest position (a client asking again right after its answer)
        // has nothing to hear: every change a sync sends takes a stream count, and none came
        // after its token. It parks without reading anything.
        let now = *committed.borrow_and_update();
        let caught_up = request.since.is_some_and(|since| since >= now)
            && !request.full_state
            && !request.timeout.is_zero();
        if !caught_up {
            let (response, lazy) = self.sync_once(user_id, &request)?;
            if request.since.is_none()
                || request.full_state
                || request.timeout.is_zero()
                || response.has_changes()
            {
                return lazy.save_with(self, response);
            }
            // Nothing to say yet: free the empty answer before parking (an idle client costs
            // only its connection and this future).
            drop((response, lazy));
        }
        let _parked = self.metrics.long_poll(SyncApi::sync);
        let deadline = tokio::time::Instant::now() + request.timeout;
        loop {
            match tokio::time::timeout_at(deadline, committed.changed()).await {
                Ok(Ok(())) => {
                    let (response, lazy) = self.sync_once(user_id, &request)?;
                    if response.has_changes() {
                        return lazy.save_with(self, response);
                    }
                }
                // Timed out (or the server is stopping): answer with what there is.
                _ => {
                    let (response, lazy) = self.sync_once(user_id, &request)?;
                    return lazy.save_with(self, response);
                }
            }
        }
    }

    /// One answer, and the lazy-loaded members it sends (remembered only if it is the answer
    /// actually given).
    fn sync_once(
        &self,
        user_id: &UserId,
        request: &SyncRequest<'_>,
    ) -> Result<(SyncAnswer, LazyMarks)> {
        let now = self.timeline.current_count();
        let since = request.since.unwrap_or(0).min(now);
        let filter = &request.filter;
        let mut lazy = LazyMarks::new(user_id, request.device_id, now);
        let recent = Recent {
            receipt_rooms: request.since.and_then(|since| {
                self.timeline.recent_activity(since, now).map(|recent| {
                    recent
                        .into_iter()
                        .filter(|a| a.change == Change::Receipt)
                        .map(|a| (*a.room_id).clone())
                        .collect()
                })
            }),
            streams: request
                .since
                .and_then(|since| self.timeline.streams_written(since, now)),
        };
        let ignored = self.ignored_users(user_id)?;
        let invites_blocked = self.invites_blocked(user_id)?;
        let mut rooms = RoomSections::default();
        // What the device lists need of the joined and left rooms (not on a first sync).
        let mut synced = Vec::new();
        for (room_id, membership) in self.members.rooms_of(user_id)? {
            if !filter.includes_room(room_id.as_str()) {
                continue;
            }
            let changed_membership = request.since.is_none_or(|s| membership.count > s);
            match membership.membership {
                MembershipState::Join => {
                    // Joined since the last sync: the client knows nothing of the room yet.
                    let knows_room = request.since.is_some() && !changed_membership;
                    let window = Window {
                        floor: if knows_room { since } else { 0 },
                        upto: now,
                        state_base: (knows_room && !request.full_state).then_some(since),
                    };
                    if let Some(room) =
                        self.joined_room(user_id, &room_id, &window, request, &mut lazy, &recent)?
                    {
                        if request.since.is_some() {
                            synced.push(SyncedRoom::read(&room_id, true, room.events()));
                        }
                        rooms.join.push(&room_id, &room)?;
                    }
                }
                // Invites from users the user ignores are not shown, nor any while the user
                // blocks invites (MSC4380).
                MembershipState::Invite
                    if changed_membership
                        && (invites_blocked
                            || self.invited_by(&membership.event_id, &ignored)?) => {}
                MembershipState::Invite if changed_membership => {
                    // An invite to a room on another server: its state as that server gave it.
                    let events = match self.remote_invite(user_id, &room_id)? {
                        Some(remote) => self.remote_invite_state(&remote),
                        None => self.stripped_state(&room_id, &membership.event_id)?,
                    };
                    rooms
                        .invite
                        .push(&room_id, &json!({ "invite_state": { "events": events } }))?;
                }
                // Knocks: like invites, stripped state and the knock itself.
                MembershipState::Knock if changed_membership => {
                    // A knock on a room on another server: its state as that server gave it.
                    let events = match self.remote_invite(user_id, &room_id)? {
                        Some(remote) => self.remote_invite_state(&remote),
                        None => self.stripped_state(&room_id, &membership.event_id)?,
                    };
                    rooms
                        .knock
                        .push(&room_id, &json!({ "knock_state": { "events": events } }))?;
                }
                MembershipState::Leave | MembershipState::Ban => {
                    if let Some(window) = leave_window(&membership, request, filter) {
                        // Who never joined (a refused invite, a withdrawn knock) sees no state.
                        let was_joined = self.left_after_joining(user_id, &membership)?;
                        let room = self.left_room(
                            user_id, &room_id, &window, request, was_joined, &mut lazy,
                        )?;
                        if request.since.is_some() {
                            synced.push(SyncedRoom::read(&room_id, false, room.events()));
                        }
                        rooms.leave.push(&room_id, &room)?;
                    }
                }
                _ => {}
            }
        }
        let mut account_data = if recent.may_have(Streams::ACCOUNT_DATA) {
            self.account_data_changes(user_id, None, request.since)?
        } else {
            Vec::new()
        };
        // A first sync carries the push rules, the server defaults when the user never
        // changed one (and today's defaults merged into their stored set).
        if request.since.is_none() {
            account_data.retain(|e| e["type"] != "m.push_rules");
            account_data.push(self.push_rules_event(user_id)?);
        }
        account_data.retain(|e| filter.account_data.matches(e));
        let presence: Vec<Value> = if recent.may_have(Streams::PRESENCE) {
            self.presence_events(user_id, request.since, now)?
                .into_iter()
                .filter(|e| filter.presence.matches(e))
                .collect()
        } else {
            Vec::new()
        };
        let response = SyncAnswer {
            next_batch: now.to_string(),
            rooms,
            account_data: Events {
                events: account_data,
            },
            presence: Events { events: presence },
            // E2EE (service::e2ee): the device's to-device queue and key counts.
            to_device: Events {
                events: if recent.may_have(Streams::TO_DEVICE) {
                    self.to_device_events(user_id, request.device_id, request.since, now)?
                } else {
                    Vec::new()
                },
            },
            // E2EE (service::device_lists): whose devices to re-query, read off this
            // response's rooms (and the device-list stream, when written since).
            device_lists: self.sync_device_lists(
                user_id,
                request.since,
                now,
                &synced,
                recent.may_have(Streams::DEVICE_LISTS),
            )?,
            device_one_time_keys_count: self.one_time_key_counts(user_id, request.device_id)?,
            device_unused_fallback_key_types: self
                .unused_fallback_key_types(user_id, request.device_id)?,
        };
        Ok((response, lazy))
    }

    /// A joined room's part of the response, or `None` when nothing changed in it.
    fn joined_room(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        window: &Window,
        request: &SyncRequest<'_>,
        lazy: &mut LazyMarks,
        recent: &Recent,
    ) -> Result<Option<RoomPart>> {
        let filter = &request.filter;
        // Without a base the client needs everything; with one, only what was written since.
        let new_to_client = window.state_base.is_none();
        let receipts_since = new_to_client || recent.may_have_receipts(room_id);
        let mut ephemeral = Vec::new();
        if filter.ephemeral.allows_type("m.typing") {
            ephemeral.extend(self.typing_event(room_id, window.state_base));
        }
        if filter.ephemeral.allows_type("m.receipt") && receipts_since {
            ephemeral.extend(self.receipt_event(room_id, user_id, window.state_base)?);
        }
        let account_data: Vec<Value> = if new_to_client || recent.may_have(Streams::ACCOUNT_DATA) {
            self.account_data_changes(user_id, Some(room_id), window.state_base)?
                .into_iter()
                .filter(|e| filter.room_account_data.matches(e))
                .collect()
        } else {
            Vec::new()
        };
        let timeline = self.room_timeline(user_id, room_id, window, request)?;
        let (state_key, state) =
            self.room_state(user_id, room_id, window, &timeline, request, lazy)?;
        let quiet = window.state_base.is_some()
            && timeline.events.is_empty()
            && state.is_empty()
            && ephemeral.is_empty()
            && account_data.is_empty();
        // A receipt of the user's own elsewhere changes the room's counts and nothing else
        // (only rooms with receipts since are looked at).
        let counts_changed = match window.state_base {
            Some(_) if !receipts_since => false,
            Some(since) => self.own_receipt_since(room_id, user_id, since)?,
            None => true,
        };
        if quiet && !counts_changed {
            return Ok(None);
        }
        // The summary when the client may lack it: first sync, or membership changed.
        let membership_changed = window.state_base.is_none()
            || timeline
                .events
                .iter()
                .any(|(_, _, e)| e.event_type() == Some("m.room.member"));
        let summary = if membership_changed {
            self.room_summary(room_id, user_id)?
        } else {
            json!({})
        };
        let (counts, thread_counts) = self
            .unread_counts(user_id, room_id)?
            .sync_json(filter.thread_counts);
        let mut rest = Map::new();
        rest.insert("summary".into(), summary);
        rest.insert("ephemeral".into(), json!({ "events": ephemeral }));
        rest.insert("account_data".into(), json!({ "events": account_data }));
        rest.insert("unread_notifications".into(), counts);
        if let Some(thread_counts) = thread_counts {
            rest.insert("unread_thread_notifications".into(), thread_counts);
        }
        Ok(Some(RoomPart::new(
            rest, timeline, filter, state_key, state,
        )))
    }

    /// A left (or banned) room's part: its timeline up to the leave, and the state for it
    /// (none for a user who was never joined).
    fn left_room(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        window: &Window,
        request: &SyncRequest<'_>,
        was_joined: bool,
        lazy: &mut LazyMarks,
    ) -> Result<RoomPart> {
        let filter = &request.filter;
        let timeline = self.room_timeline(user_id, room_id, window, request)?;
        let (state_key, state) = if was_joined {
            self.room_state(user_id, room_id, window, &timeline, request, lazy)?
        } else {
            let key = if request.use_state_after {
                request.state_after_key
            } else {
                "state"
            };
            (key, Vec::new())
        };
        let account_data: Vec<Value> = self
            .account_data_changes(user_id, Some(room_id), window.state_base)?
            .into_iter()
            .filter(|e| filter.room_account_data.matches(e))
            .collect();
        let mut rest = Map::new();
        rest.insert("account_data".into(), json!({ "events": account_data }));
        Ok(RoomPart::new(rest, timeline, filter, state_key, state))
    }

    /// Reads a room's timeline backwards from `window.upto` to `window.floor`, keeping the
    /// events the filter passes and the user may see, up to the filter's limit.
    fn room_timeline(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        window: &Window,
        request: &SyncRequest<'_>,
    ) -> Result<TimelinePart> {
        let viewer = Viewer {
            user_id,
            device_id: Some(request.device_id),
        };
        let filter = &request.filter.timeline;
        let limit = filter.limit.unwrap_or(DEFAULT_TIMELINE_LIMIT);
        self.read_timeline(viewer, room_id, window.floor, window.upto, limit, filter)
    }

    /// Whether the invite `event_id` (a stored member event) was sent by one of `ignored`.
    pub(crate) fn invited_by(
        &self,
        event_id: &EventId,
        ignored: &HashSet<ruma::OwnedUserId>,
    ) -> Result<bool> {
        if ignored.is_empty() {
            return Ok(false);
        }
        Ok(self.timeline.pdu_json(event_id)?.is_some_and(|pdu| {
            super::pdu::str_field(&pdu, "sender")
                .and_then(|s| UserId::parse(s).ok())
                .is_some_and(|sender| ignored.contains(&sender))
        }))
    }

    /// Reads a room's timeline backwards from `upto` down to `floor` (exclusive), keeping the
    /// events `matcher` passes and the viewer may see, up to `limit` of them (in the client
    /// format, `room_id` still in). `/sync` and sliding sync share it.
    pub(crate) fn read_timeline(
        &self,
        viewer: Viewer<'_>,
        room_id: &RoomId,
        floor: u64,
        upto: u64,
        limit: usize,
        matcher: &EventMatcher,
    ) -> Result<TimelinePart> {
        let user_id = viewer.user_id;
        let ignored = self.ignored_users(user_id)?;
        let mut view = self.event_view(Some(viewer));
        // The viewer's membership, read at the first event that needs it.
        let mut membership = None;
        let mut newest = None;
        // The newest entry's stream count and short ID, its event ID read only if the loop
        // does not read the event (a timeline limit of 0).
        let mut newest_entry: Option<(u64, u64)> = None;
        let mut kept = Vec::new();
        let mut scanned = 0;
        let mut oldest_scanned = None;
        let mut limited = false;
        let mut position = upto;
        'read: loop {
            let (batch, more) =
                self.timeline
                    .last_entries_above(room_id, floor, position, limit + 1)?;
            let Some(&(first_count, _)) = batch.first() else {
                break;
            };
            if newest_entry.is_none() {
                newest_entry = batch.last().copied();
            }
            // Every entry is above the floor: `last_entries_above` stops there.
            for (count, short) in batch.into_iter().rev() {
                if kept.len() == limit || scanned == MAX_SCAN {
                    limited = true;
                    break 'read;
                }
                scanned += 1;
                oldest_scanned = Some(count);
                // An event purged since the entry was read is not shown.
                let Some(stored) = self.timeline.stored_pdu_by_short(short)? else {
                    continue;
                };
                let event_id = stored.event_id.clone();
                // The newest entry is the first read: its ID comes with it.
                if newest.is_none() && newest_entry.is_some_and(|(newest, _)| newest == count) {
                    newest = Some((count, event_id.clone()));
                }
                let event =
                    view.client_event(room_id, stored.clone(), Some(count), Detail::Timeline)?;
                if matcher.matches_event(&event) && !hidden_event(&ignored, &event) && {
                    if membership.is_none() {
                        membership = Some(self.members.membership(room_id, user_id)?);
                    }
                    let known = membership.as_ref().map(Option::as_ref);
                    self.may_see_stored(room_id, user_id, &stored, count, known)?
                } {
                    kept.push((count, event_id, event));
                }
            }
            if !more || first_count <= 1 {
                break;
            }
            position = first_count - 1;
        }
        if newest.is_none()
            && let Some((count, short)) = newest_entry
        {
            newest = Some((count, self.timeline.event_id_of_short(short)?));
        }
        kept.reverse();
        let gap = match kept.first() {
            Some((first, _, _)) => limited || oldest_scanned.is_some_and(|o| o < *first),
            None => scanned > 0,
        };
        let prev_batch = match kept.first() {
            Some((first, _, _)) => first.saturating_sub(1),
            None => upto,
        };
        Ok(TimelinePart {
            events: kept,
            limited,
            gap,
            prev_batch,
            newest,
        })
    }

    /// The room's `state` (or `state_after`) section: which key it goes under, and its events.
    fn room_state(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        window: &Window,
        timeline: &TimelinePart,
        request: &SyncRequest<'_>,
        lazy: &mut LazyMarks,
    ) -> Result<(&'static str, Vec<SyncEvent>)> {
        let filter = &request.filter;
        let mut view = self.event_view(Some(Viewer {
            user_id,
            device_id: Some(request.device_id),
        }));
        let state_key = if request.use_state_after {
            request.state_after_key
        } else {
            "state"
        };
        // The state the section describes: at the start of the timeline, or at its end.
        let target = || -> Result<Vec<StateEntry>> {
            match (request.use_state_after, timeline.events.first()) {
                (false, Some((_, first, _))) => self.timeline.state_entries_before(first),
                _ => self.timeline.state_entries_at_count(room_id, window.upto),
            }
        };
        let (mut entries, target_entries) = match window.state_base {
            None => {
                let all = target()?;
                (all.clone(), all)
            }
            Some(base) => {
                let changed = if request.use_state_after {
                    !timeline.events.is_empty() || timeline.gap
                } else {
                    timeline.gap
                };
                if !changed {
                    (Vec::new(), Vec::new())
                } else {
                    let at_base = self.timeline.state_entries_at_count(room_id, base)?;
                    let now = target()?;
                    (changed_entries(&at_base, &now), now)
                }
            }
        };
        let lazy_mode = filter.lazy_members;
        let mut wanted_members: HashSet<String> = HashSet::new();
        if let LazyMembers::On { .. } = lazy_mode {
            for (_, _, event) in &timeline.events {
                if let Some(sender) = event.sender() {
                    wanted_members.insert(sender.to_owned());
                }
            }
            if window.state_base.is_none() {
                wanted_members.insert(user_id.to_string());
            }
        }
        let expanded = self.timeline.expand_entries(&entries)?;
        let mut events = Vec::with_capacity(expanded.len());
        let mut sent_members: HashSet<String> = HashSet::new();
        for ((event_type, key), event_id) in &expanded {
            if !filter.state.allows_type(event_type) {
                continue;
            }
            let lazy_member =
                matches!(lazy_mode, LazyMembers::On { .. }) && event_type == "m.room.member";
            if lazy_member && !wanted_members.contains(key) {
                continue;
            }
            let event = view.client_event_by_id(room_id, event_id, None, Detail::State)?;
            if !filter.state.matches_event(&event) {
                continue;
            }
            if lazy_member {
                sent_members.insert(key.clone());
                lazy.sent(room_id, key, event_id);
            }
            events.push(SyncEvent::new(event, filter));
        }
        // Lazy loading: members the timeline needs whose events the delta did not carry, unless
        // this device already has them.
        if let LazyMembers::On { redundant } = lazy_mode
            && filter.state.allows_type("m.room.member")
        {
            if target_entries.is_empty() && !wanted_members.is_empty() {
                entries = target()?;
            } else {
                entries = target_entries;
            }
            for member in wanted_members.difference(&sent_members) {
                let Some(event_id) = self.timeline.lookup(&entries, "m.room.member", member)?
                else {
                    continue;
                };
                if !redundant
                    && lazy.already_sent(self, room_id, member, &event_id, request.since)?
                {
                    continue;
                }
                let event = view.client_event_by_id(room_id, &event_id, None, Detail::State)?;
                lazy.sent(room_id, member, &event_id);
                events.push(SyncEvent::new(event, filter));
            }
        }
        Ok((state_key, events))
    }

    /// `m.heroes` (up to five other joined or invited members, by user ID) and member counts.
    fn room_summary(&self, room_id: &RoomId, user_id: &UserId) -> Result<Value> {
        let members = self.members.of_room(room_id)?;
        let count = |m: MembershipState| {
            members
                .iter()
                .filter(|(_, membership)| *membership == m)
                .count()
        };
        let heroes: Vec<String> = members
            .iter()
            .filter(|(user, m)| {
                user != user_id && (*m == MembershipState::Join || *m == MembershipState::Invite)
            })
            .map(|(user, _)| user.to_string())
            .take(5)
            .collect();
        Ok(json!({
            "m.heroes": heroes,
            "m.joined_member_count": count(MembershipState::Join),
            "m.invited_member_count": count(MembershipState::Invite),
        }))
    }

    /// What an invitee (or knocker) may see of a room: a few state events, stripped, and the
    /// invite (or knock) itself.
    pub(crate) fn stripped_state(
        &self,
        room_id: &RoomId,
        invite_event: &OwnedEventId,
    ) -> Result<Vec<Value>> {
        let state = self.timeline.state_after(invite_event)?;
        // The inviter's member event too: clients name an unnamed room (a DM) after them.
        let inviter = self.timeline.event_fields(room_id, invite_event)?["sender"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut events = Vec::new();
        for ((event_type, state_key), id) in &state {
            let wanted = STRIPPED_STATE.contains(&event_type.as_str())
                || (event_type == "m.room.member" && (id == invite_event || *state_key == inviter));
            if !wanted {
                continue;
            }
            let event = self.timeline.event_fields(room_id, id)?;
            events.push(json!({
                "type": event_type,
                "state_key": state_key,
                "content": event["content"],
                "sender": event["sender"],
            }));
        }
        Ok(events)
    }
}

/// Whether and how a left room appears: in an incremental sync when the leave is new to the
/// client; with `include_leave`, on a first or `full_state` sync too (the archive).
fn leave_window(
    membership: &Membership,
    request: &SyncRequest<'_>,
    filter: &SyncFilter,
) -> Option<Window> {
    let new_leave = request.since.is_some_and(|since| membership.count > since);
    let archive = filter.include_leave && (request.since.is_none() || request.full_state);
    if new_leave {
        let since = request.since.unwrap_or(0);
        return Some(Window {
            floor: since,
            upto: membership.count,
            state_base: (!request.full_state).then_some(since),
        });
    }
    archive.then_some(Window {
        floor: 0,
        upto: membership.count,
        state_base: None,
    })
}

/// Entries of `now` that `base` lacks or holds with another event (both sorted by key).
pub(crate) fn changed_entries(base: &[StateEntry], now: &[StateEntry]) -> Vec<StateEntry> {
    now.iter()
        .filter(
            |(key, event)| match base.binary_search_by_key(key, |(k, _)| *k) {
                Ok(i) => base[i].1 != *event,
                Err(_) => true,
            },
        )
        .copied()
        .collect()
}

/// An event of a `/sync` answer, without `room_id`: written straight from its stored form, or
/// as the value the filter's `event_fields` leave of it.
pub(crate) struct SyncEvent {
    event: ClientEvent,
    projected: Option<Value>,
}

impl SyncEvent {
    fn new(event: ClientEvent, filter: &SyncFilter) -> Self {
        let event = event.without_room_id();
        let projected = filter.projects().then(|| filter.project(event.to_value()));
        Self { event, projected }
    }
}

impl Serialize for SyncEvent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.projected {
            Some(value) => value.serialize(serializer),
            None => self.event.serialize(serializer),
        }
    }
}

#[derive(Serialize)]
struct TimelineSection {
    events: Vec<SyncEvent>,
    limited: bool,
    prev_batch: String,
}

#[derive(Serialize)]
struct StateSection {
    events: Vec<SyncEvent>,
}

/// A joined or left room's part of a `/sync` answer: its timeline and state events written
/// straight from their stored form, the other sections as values.
pub(crate) struct RoomPart {
    /// Summary, ephemeral events, account data, unread counts: each under its key.
    rest: Map<String, Value>,
    timeline: TimelineSection,
    /// `state`, or `state_after` under the name the client asked for.
    state_key: &'static str,
    state: StateSection,
}

impl RoomPart {
    fn new(
        rest: Map<String, Value>,
        timeline: TimelinePart,
        filter: &SyncFilter,
        state_key: &'static str,
        state: Vec<SyncEvent>,
    ) -> Self {
        Self {
            rest,
            timeline: TimelineSection {
                events: timeline
                    .events
                    .into_iter()
                    .map(|(_, _, event)| SyncEvent::new(event, filter))
                    .collect(),
                limited: timeline.limited,
                prev_batch: timeline.prev_batch.to_string(),
            },
            state_key,
            state: StateSection { events: state },
        }
    }

    /// Its timeline's and state section's events, whole (before `event_fields`).
    fn events(&self) -> impl Iterator<Item = &ClientEvent> {
        self.timeline
            .events
            .iter()
            .chain(&self.state.events)
            .map(|e| &e.event)
    }
}

impl Serialize for RoomPart {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.rest.len() + 2))?;
        for (key, value) in &self.rest {
            map.serialize_entry(key, value)?;
        }
        map.serialize_entry("timeline", &self.timeline)?;
        map.serialize_entry(self.state_key, &self.state)?;
        map.end()
    }
}

/// Sync sends events without `room_id` (the room is the key they are listed under).
/// A `/sync` answer. Each room's part is serialised as soon as it is built, so that a large
/// answer (a first sync over a thousand rooms) is never held as one tree of JSON values — a
/// tree takes several times the memory of its text (BENCHMARKS.md, "A first sync, room by
/// room").
#[derive(Serialize)]
pub struct SyncAnswer {
    next_batch: String,
    rooms: RoomSections,
    account_data: Events,
    presence: Events,
    to_device: Events,
    device_lists: Value,
    device_one_time_keys_count: BTreeMap<String, u64>,
    device_unused_fallback_key_types: Vec<String>,
}

#[derive(Serialize)]
struct Events {
    events: Vec<Value>,
}

#[derive(Default, Serialize)]
struct RoomSections {
    join: SerialisedRooms,
    invite: SerialisedRooms,
    leave: SerialisedRooms,
    knock: SerialisedRooms,
}

/// Rooms' parts of an answer by room ID, each already JSON text.
#[derive(Default)]
struct SerialisedRooms(Vec<(String, Box<RawValue>)>);

impl SerialisedRooms {
    fn push(&mut self, room_id: &RoomId, room: &impl Serialize) -> Result<()> {
        let text = serde_json::value::to_raw_value(room)?;
        self.0.push((room_id.to_string(), text));
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for SerialisedRooms {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(room_id, room)| (room_id, room)))
    }
}

impl SyncAnswer {
    /// Whether the answer says anything new (else a long-poll keeps waiting).
    fn has_changes(&self) -> bool {
        let rooms = &self.rooms;
        !rooms.join.is_empty()
            || !rooms.invite.is_empty()
            || !rooms.leave.is_empty()
            || !rooms.knock.is_empty()
            || !self.account_data.events.is_empty()
            || !self.presence.events.is_empty()
            || !self.to_device.events.is_empty()
            || crate::service::device_lists::has_changes(&self.device_lists)
    }
}

/// The member events sent to one device under lazy loading, remembered with the sync position
/// they were sent at: a later sync from that position on knows the device has them, while a
/// retried sync from an earlier token sends them again.
struct LazyMarks {
    prefix: Vec<u8>,
    next_batch: u64,
    sent: Vec<(Vec<u8>, Vec<u8>)>,
}

impl LazyMarks {
    fn new(user_id: &UserId, device_id: &DeviceId, next_batch: u64) -> Self {
        Self {
            prefix: keys::join([user_id.as_bytes(), device_id.as_bytes()]),
            next_batch,
            sent: Vec::new(),
        }
    }

    fn key(&self, room_id: &RoomId, member: &str) -> Vec<u8> {
        let mut key = self.prefix.clone();
        key.push(keys::SEP);
        key.extend_from_slice(&keys::join([room_id.as_bytes(), member.as_bytes()]));
        key
    }

    fn sent(&mut self, room_id: &RoomId, member: &str, event_id: &EventId) {
        let mut value = keys::u64_be(self.next_batch).to_vec();
        value.extend_from_slice(event_id.as_bytes());
        self.sent.push((self.key(room_id, member), value));
    }

    /// Whether the device already has this member event from a sync it acknowledged.
    fn already_sent(
        &self,
        services: &Services,
        room_id: &RoomId,
        member: &str,
        event_id: &EventId,
        since: Option<u64>,
    ) -> Result<bool> {
        let Some(since) = since else {
            return Ok(false);
        };
        let Some(value) = services
            .store
            .get(Cf::LazyLoadedMembers, &self.key(room_id, member))?
        else {
            return Ok(false);
        };
        if value.len() < 8 {
            return Err(Error::internal("corrupt lazy-loading record"));
        }
        let at = keys::parse_u64_be(&value[..8]).unwrap_or(u64::MAX);
        Ok(at <= since && &value[8..] == event_id.as_bytes())
    }

    /// Remembers what `response` sent, then hands it back.
    fn save_with<T>(self, services: &Services, response: T) -> Result<T> {
        if self.sent.is_empty() {
            return Ok(response);
        }
        let mut batch = Batch::new();
        for (key, value) in self.sent {
            batch.put(Cf::LazyLoadedMembers, key, value);
        }
        services.store.write(batch)?;
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::changed_entries;

    #[test]
    fn changed_entries_are_new_or_replaced_keys() {
        let base = [(1, 10), (2, 20), (4, 40)];
        let now = [(1, 10), (2, 21), (3, 30), (4, 40)];
        assert_eq!(changed_entries(&base, &now), vec![(2, 21), (3, 30)]);
        assert!(changed_entries(&now, &now).is_empty());
    }
}
