//! Room history: `/messages` pagination, and who may see which past event (history
//! visibility).

use std::collections::BTreeSet;

use ruma::{EventId, RoomId, UserId, events::room::member::MembershipState};
use serde_json::Value;

use super::{
    client_event::{ClientEvent, Detail, Viewer},
    members::Membership,
    pdu,
    sync_filter::EventMatcher,
    timeline::StoredPdu,
};
use crate::{Error, Result, service::Services};

/// Most timeline entries one `/messages` request reads: a filter that matches little cannot
/// make a request walk the whole history; the page then ends early with a token to go on.
const MAX_SCAN: usize = 2000;

/// Which way `/messages` pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Backward,
    Forward,
}

/// One page of history.
pub struct Page {
    /// Events in the order requested (newest first when going backward).
    pub events: Vec<ClientEvent>,
    /// The token to continue from, `None` at the end of the room's history.
    pub end: Option<u64>,
}

impl Services {
    /// Whether `user_id` may see `event` (in the client format, as `client_event` makes it),
    /// per the history visibility in force when it was sent: `world_readable` everyone;
    /// `shared` members (currently joined, or up to their leave); `invited`/`joined` only members
    /// who were invited or joined at the time. Reads the state before the event once.
    pub fn may_see_event(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        event: &Value,
        count: u64,
    ) -> Result<bool> {
        if is_own_membership(event["type"].as_str(), event["state_key"].as_str(), user_id) {
            return Ok(true);
        }
        let event_id = event["event_id"]
            .as_str()
            .and_then(|id| EventId::parse(id).ok());
        let event_id = event_id.ok_or_else(|| Error::internal("client event without ID"))?;
        let state = self.timeline.state_hash_before(&event_id)?;
        self.may_see_at(room_id, user_id, state, count, None)
    }

    /// [`Services::may_see_event`] for a caller that read the event from the store (its
    /// state is found by the short ID it was read by) and the user's current membership in
    /// the room (`known`) once for many events: a page of history or a sync timeline.
    pub(crate) fn may_see_stored(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        stored: &StoredPdu,
        count: u64,
        known: Option<Option<&Membership>>,
    ) -> Result<bool> {
        let (kind, state_key) = (
            pdu::str_field(&stored.pdu, "type"),
            pdu::str_field(&stored.pdu, "state_key"),
        );
        if is_own_membership(kind, state_key, user_id) {
            return Ok(true);
        }
        let state = self.timeline.state_hash_before_stored(stored)?;
        self.may_see_at(room_id, user_id, state, count, known)
    }

    /// The core of [`Services::may_see_event`] for an event that is not about the user's own
    /// membership: `state` is the state before it, `count` its stream count; `known` the
    /// user's current membership in the room when the caller has read it (callers checking
    /// many events read it once), else it is read if needed.
    pub fn may_see_at(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        state: u64,
        count: u64,
        known: Option<Option<&Membership>>,
    ) -> Result<bool> {
        let timeline = &self.timeline;
        let visibility = timeline.history_visibility_at(state)?;
        Ok(match &*visibility {
            "world_readable" => true,
            "invited" | "joined" => {
                let before = timeline.state_entries(state)?;
                let then = match timeline.lookup(&before, "m.room.member", user_id.as_str())? {
                    Some(id) => timeline.event_fields(room_id, &id)?["content"]["membership"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    None => String::new(),
                };
                then == "join" || (&*visibility == "invited" && then == "invite")
            }
            // shared (also when unset, and unknown values, which the spec says to treat so)
            _ => match known {
                Some(known) => self.shared_visible(user_id, count, known)?,
                None => {
                    let current = self.members.membership(room_id, user_id)?;
                    self.shared_visible(user_id, count, current.as_ref())?
                }
            },
        })
    }

    /// `shared` history: members see it while joined, and up to their leave if they had
    /// joined.
    fn shared_visible(
        &self,
        user_id: &UserId,
        count: u64,
        membership: Option<&Membership>,
    ) -> Result<bool> {
        Ok(match membership {
            Some(m) if m.membership == MembershipState::Join => true,
            // Up to their leave, if they had joined (not a refused invite or a withdrawn knock).
            Some(m)
                if m.membership == MembershipState::Leave
                    || m.membership == MembershipState::Ban =>
            {
                count <= m.count && self.left_after_joining(user_id, m)?
            }
            _ => false,
        })
    }

    /// 403 unless `user_id` is or was a member of the room (joined, or left or banned after):
    /// who may page through its history at all (`/messages`, `/threads`,
    /// `/timestamp_to_event`); which events they see is [`Services::may_see_event`]'s.
    pub fn require_history_reader(&self, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        let membership = self.members.membership(room_id, user_id)?;
        if membership.is_none_or(|m| {
            m.membership != MembershipState::Join
                && m.membership != MembershipState::Leave
                && m.membership != MembershipState::Ban
        }) && !self.world_readable(room_id)?
        {
            return Err(Error::forbidden("You are not a member of this room."));
        }
        Ok(())
    }

    /// Whether the room's history is readable by anyone now (`world_readable`): who is not a
    /// member may peek into it.
    pub fn world_readable(&self, room_id: &RoomId) -> Result<bool> {
        if self.timeline.room(room_id)?.is_none() {
            return Ok(false);
        }
        Ok(
            self.current_content(room_id, "m.room.history_visibility")?["history_visibility"]
                == "world_readable",
        )
    }

    /// A page of a room's history for `user_id`, from stream position `from` (default: the
    /// newest end going backward, the oldest going forward), up to `limit` visible events that
    /// pass `filter`.
    // The request's parts, as the endpoint has them.
    #[allow(clippy::too_many_arguments)]
    pub fn messages(
        &self,
        room_id: &RoomId,
        viewer: Viewer<'_>,
        from: Option<u64>,
        to: Option<u64>,
        direction: Direction,
        limit: usize,
        filter: &EventMatcher,
    ) -> Result<Page> {
        self.require_history_reader(room_id, viewer.user_id)?;
        self.history_page(room_id, viewer, from, to, direction, limit, filter, true)
    }

    /// [`Services::messages`] for a server admin (Synapse's admin API): every event, whatever
    /// the history visibility and the admin's membership.
    #[allow(clippy::too_many_arguments)]
    pub fn messages_for_admin(
        &self,
        room_id: &RoomId,
        admin: Viewer<'_>,
        from: Option<u64>,
        to: Option<u64>,
        direction: Direction,
        limit: usize,
        filter: &EventMatcher,
    ) -> Result<Page> {
        if self.timeline.room(room_id)?.is_none() {
            return Err(crate::Error::not_found("Room not found"));
        }
        self.history_page(room_id, admin, from, to, direction, limit, filter, false)
    }

    #[allow(clippy::too_many_arguments)]
    fn history_page(
        &self,
        room_id: &RoomId,
        viewer: Viewer<'_>,
        from: Option<u64>,
        to: Option<u64>,
        direction: Direction,
        limit: usize,
        filter: &EventMatcher,
        as_member: bool,
    ) -> Result<Page> {
        let user_id = viewer.user_id;
        let mut view = self.event_view(Some(viewer));
        let ignored = if as_member {
            self.ignored_users(user_id)?
        } else {
            Default::default()
        };
        let membership = if as_member {
            self.members.membership(room_id, user_id)?
        } else {
            None
        };
        let mut events = Vec::new();
        let mut scanned = 0;
        let mut position = match direction {
            Direction::Backward => from.unwrap_or_else(|| self.timeline.current_count()),
            Direction::Forward => from.unwrap_or(0),
        };
        // Read in batches until `limit` visible events are found or history ends.
        loop {
            let batch = match direction {
                Direction::Backward => {
                    let (mut batch, _) = self
                        .timeline
                        .last_entries_above(room_id, 0, position, limit)?;
                    batch.reverse();
                    batch.retain(|(count, _)| to.is_none_or(|to| *count > to));
                    batch
                }
                Direction::Forward => self.timeline.entries_after(room_id, position, to, limit)?,
            };
            let Some((last_count, _)) = batch.last() else {
                return Ok(Page { events, end: None });
            };
            position = match direction {
                Direction::Backward => last_count.saturating_sub(1),
                Direction::Forward => *last_count,
            };
            for (count, short) in &batch {
                scanned += 1;
                // An event purged since the entry was read is not shown.
                let Some(stored) = self.timeline.stored_pdu_by_short(*short)? else {
                    continue;
                };
                let event =
                    view.client_event(room_id, stored.clone(), Some(*count), Detail::Timeline)?;
                if filter.matches_event(&event)
                    && !crate::service::account_data::hidden_event(&ignored, &event)
                    && (!as_member
                        || self.may_see_stored(
                            room_id,
                            user_id,
                            &stored,
                            *count,
                            Some(membership.as_ref()),
                        )?)
                {
                    events.push(event);
                }
                if events.len() == limit || scanned >= MAX_SCAN {
                    let end = match direction {
                        Direction::Backward => count.saturating_sub(1),
                        Direction::Forward => *count,
                    };
                    return Ok(Page {
                        events,
                        end: Some(end),
                    });
                }
            }
        }
    }
}

impl Services {
    /// The member events of the senders of `events` (client format, one room), as they were
    /// at the earliest of them: what a client lazy-loading members needs to show a page.
    pub fn sender_members(
        &self,
        room_id: &RoomId,
        viewer: Viewer<'_>,
        events: &[ClientEvent],
    ) -> Result<Vec<Value>> {
        let mut view = self.event_view(Some(viewer));
        let senders: BTreeSet<&str> = events.iter().filter_map(ClientEvent::sender).collect();
        let earliest = events
            .iter()
            .filter_map(|e| {
                let count = match e.count {
                    Some(count) => count,
                    None => self.timeline.count_of(e.event_id()).ok()??,
                };
                Some((count, e.event_id().to_owned()))
            })
            .min();
        let Some((_, earliest)) = earliest else {
            return Ok(Vec::new());
        };
        let state = self.timeline.state_entries_after(&earliest)?;
        let mut members = Vec::with_capacity(senders.len());
        for sender in senders {
            if let Some(id) = self.timeline.lookup(&state, "m.room.member", sender)? {
                members.push(view.event(room_id, &id, None, Detail::State)?);
            }
        }
        Ok(members)
    }

    /// One event of a room in the client format, if `user_id` may see it (otherwise, and for
    /// events of other rooms, `M_NOT_FOUND`, as the spec asks).
    pub fn visible_event(
        &self,
        room_id: &RoomId,
        viewer: Viewer<'_>,
        event_id: &EventId,
    ) -> Result<Value> {
        let user_id = viewer.user_id;
        let not_found = || Error::not_found("No such event, or you may not see it.");
        let count = self.timeline.count_of(event_id)?.ok_or_else(not_found)?;
        let event = self.event_view(Some(viewer)).event(
            room_id,
            event_id,
            Some(count),
            Detail::Timeline,
        )?;
        if !self.event_in_room(room_id, event_id)?
            || self.members.membership(room_id, user_id)?.is_none()
        {
            return Err(not_found());
        }
        if !self.may_see_event(room_id, user_id, &event, count)? {
            return Err(not_found());
        }
        Ok(event)
    }

    /// Whether a stored event belongs to `room_id` (see [`super::pdu::pdu_in_room`]).
    pub fn event_in_room(&self, room_id: &RoomId, event_id: &EventId) -> Result<bool> {
        Ok(self
            .timeline
            .pdu_json(event_id)?
            .is_some_and(|pdu| super::pdu::pdu_in_room(event_id, &pdu, room_id)))
    }

    /// The room's member events as `user_id` may see them (the current state while joined,
    /// frozen at their leave after), or at stream position `at`, filtered by membership.
    pub fn member_events(
        &self,
        room_id: &RoomId,
        viewer: Viewer<'_>,
        at: Option<u64>,
        membership: Option<&str>,
        not_membership: Option<&str>,
    ) -> Result<Vec<Value>> {
        let user_id = viewer.user_id;
        let mut view = self.event_view(Some(viewer));
        let visible = self.visible_state(room_id, user_id)?;
        let state = match at {
            // Never later than what the user may see.
            Some(at) => {
                let limit = self
                    .members
                    .membership(room_id, user_id)?
                    .map(|m| m.membership);
                if limit == Some(MembershipState::Join) {
                    self.timeline.state_at_count(room_id, at)?
                } else {
                    visible
                }
            }
            None => visible,
        };
        let mut events = Vec::new();
        for ((event_type, _), event_id) in &state {
            if event_type != "m.room.member" {
                continue;
            }
            let event = view.event(room_id, event_id, None, Detail::State)?;
            let this = event["content"]["membership"].as_str().unwrap_or_default();
            if membership.is_some_and(|m| m != this) || not_membership.is_some_and(|m| m == this) {
                continue;
            }
            events.push(event);
        }
        Ok(events)
    }
}

/// How many events `/timestamp_to_event` inspects before giving up: events the user may not see
/// (after they left, or before they joined a `joined`-visibility room) are skipped, and a long
/// run of them must not turn one request into a scan of the room.
const MAX_TIMESTAMP_CANDIDATES: usize = 1000;

impl Services {
    /// `/timestamp_to_event`: the event closest to `ts` that `user_id` may see, at or after it
    /// (`forward`) or at or before it, as `(event ID, origin_server_ts)`.
    ///
    /// One seek in the room's timestamp index (`Cf::TimestampEvents`, written by the append
    /// path). It orders by `origin_server_ts`, so it stays right even when timestamps are not
    /// monotone in stream order (clock steps, and later events from other servers, whose
    /// timestamps are their claim).
    pub fn event_at_timestamp(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        ts: u64,
        forward: bool,
    ) -> Result<(ruma::OwnedEventId, u64)> {
        self.require_history_reader(room_id, user_id)?;
        let mut inspected = 0;
        let found = self.timeline.find_by_timestamp(
            room_id,
            ts,
            forward,
            |event_ts, count, event_id| {
                inspected += 1;
                if inspected > MAX_TIMESTAMP_CANDIDATES {
                    return Err(Error::not_found(
                        "No event you may see is close enough to that timestamp.",
                    ));
                }
                let event = self.timeline.event_fields(room_id, &event_id)?;
                Ok(self
                    .may_see_event(room_id, user_id, &event, count)?
                    .then_some((event_id, event_ts)))
            },
        )?;
        found.ok_or_else(|| Error::not_found("No event found in that direction."))
    }
}

/// An event about the user's own membership is always theirs to see.
fn is_own_membership(kind: Option<&str>, state_key: Option<&str>, user_id: &UserId) -> bool {
    kind == Some("m.room.member") && state_key == Some(user_id.as_str())
}
