//! Room history: `/messages` pagination, and who may see which past event (history
//! visibility).

use ruma::{EventId, RoomId, UserId};
use serde_json::Value;

use crate::{Error, Result, service::Services};

/// Which way `/messages` pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Backward,
    Forward,
}

/// One page of history.
pub struct Page {
    /// Events in the order requested (newest first when going backward).
    pub events: Vec<Value>,
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
        // An event about the user's own membership is always theirs to see.
        if event["type"] == "m.room.member" && event["state_key"] == user_id.as_str() {
            return Ok(true);
        }
        let timeline = &self.timeline;
        let event_id = event["event_id"]
            .as_str()
            .and_then(|id| EventId::parse(id).ok());
        let event_id = event_id.ok_or_else(|| Error::internal("client event without ID"))?;
        let before = timeline.state_entries_before(&event_id)?;
        let content_field = |event_type: &str, state_key: &str, field: &str| -> Result<String> {
            Ok(match timeline.lookup(&before, event_type, state_key)? {
                Some(id) => timeline.client_event(room_id, &id)?["content"][field]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                None => String::new(),
            })
        };
        let visibility = content_field("m.room.history_visibility", "", "history_visibility")?;
        Ok(match visibility.as_str() {
            "world_readable" => true,
            "invited" | "joined" => {
                let then = content_field("m.room.member", user_id.as_str(), "membership")?;
                then == "join" || (visibility == "invited" && then == "invite")
            }
            // shared (also when unset, and unknown values, which the spec says to treat so)
            _ => match timeline.membership(room_id, user_id)? {
                Some(m) if m.membership == "join" => true,
                Some(m) if m.membership == "leave" || m.membership == "ban" => count <= m.count,
                _ => false,
            },
        })
    }

    /// A page of a room's history for `user_id`, from stream position `from` (default: the
    /// newest end going backward, the oldest going forward), up to `limit` visible events.
    pub fn messages(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        from: Option<u64>,
        to: Option<u64>,
        direction: Direction,
        limit: usize,
    ) -> Result<Page> {
        let membership = self.timeline.membership(room_id, user_id)?;
        if membership.is_none_or(|m| {
            m.membership != "join" && m.membership != "leave" && m.membership != "ban"
        }) {
            return Err(Error::forbidden("You are not a member of this room."));
        }
        let mut events = Vec::new();
        let mut position = match direction {
            Direction::Backward => from.unwrap_or_else(|| self.timeline.current_count()),
            Direction::Forward => from.unwrap_or(0),
        };
        // Read in batches until `limit` visible events are found or history ends.
        loop {
            let batch = match direction {
                Direction::Backward => {
                    let (mut batch, _) = self.timeline.last_events(room_id, position, limit)?;
                    batch.reverse();
                    batch.retain(|(count, _)| to.is_none_or(|to| *count > to));
                    batch
                }
                Direction::Forward => self.timeline.events_after(room_id, position, to, limit)?,
            };
            let Some((last_count, _)) = batch.last() else {
                return Ok(Page { events, end: None });
            };
            position = match direction {
                Direction::Backward => last_count.saturating_sub(1),
                Direction::Forward => *last_count,
            };
            for (count, event_id) in &batch {
                let event = self.timeline.client_event(room_id, event_id)?;
                if self.may_see_event(room_id, user_id, &event, *count)? {
                    events.push(event);
                }
                if events.len() == limit {
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
    /// One event of a room in the client format, if `user_id` may see it (otherwise, and for
    /// events of other rooms, `M_NOT_FOUND`, as the spec asks).
    pub fn visible_event(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        event_id: &EventId,
    ) -> Result<Value> {
        let not_found = || Error::not_found("No such event, or you may not see it.");
        let count = self.timeline.count_of(event_id)?.ok_or_else(not_found)?;
        let event = self.timeline.client_event(room_id, event_id)?;
        if !self.event_in_room(room_id, event_id)?
            || self.timeline.membership(room_id, user_id)?.is_none()
        {
            return Err(not_found());
        }
        if !self.may_see_event(room_id, user_id, &event, count)? {
            return Err(not_found());
        }
        Ok(event)
    }

    /// Whether a stored event belongs to `room_id` (a v12 create event names no room: its ID
    /// is the room's).
    pub fn event_in_room(&self, room_id: &RoomId, event_id: &EventId) -> Result<bool> {
        Ok(
            match self
                .timeline
                .pdu_json(event_id)?
                .and_then(|p| p.get("room_id").cloned())
            {
                Some(ruma::CanonicalJsonValue::String(id)) => id == room_id.as_str(),
                _ => event_id.localpart() == room_id.strip_sigil(),
            },
        )
    }

    /// The room's member events as `user_id` may see them (the current state while joined,
    /// frozen at their leave after), or at stream position `at`, filtered by membership.
    pub fn member_events(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        at: Option<u64>,
        membership: Option<&str>,
        not_membership: Option<&str>,
    ) -> Result<Vec<Value>> {
        let visible = self.visible_state(room_id, user_id)?;
        let state = match at {
            // Never later than what the user may see.
            Some(at) => {
                let limit = self
                    .timeline
                    .membership(room_id, user_id)?
                    .map(|m| m.membership);
                if limit.as_deref() == Some("join") {
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
            let event = self.timeline.client_event(room_id, event_id)?;
            let this = event["content"]["membership"].as_str().unwrap_or_default();
            if membership.is_some_and(|m| m != this) || not_membership.is_some_and(|m| m == this) {
                continue;
            }
            events.push(event);
        }
        Ok(events)
    }
}
