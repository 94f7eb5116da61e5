//! `/context`: the events around one event, and the state at the last one returned.

use std::collections::HashSet;

use ruma::{
    EventId, RoomId,
    api::client::filter::{LazyLoadOptions, RoomEventFilter},
};
use serde_json::Value;

use super::{
    client_event::{Detail, EventView, Viewer},
    sync_filter::EventMatcher,
};
use crate::{Error, Result, service::Services};

/// Most events one side of a `/context` answer reads while looking for visible events that
/// pass the filter: a filter matching nothing must not scan a whole room. The tokens say where
/// reading stopped, so `/messages` carries on from there.
const MAX_SCANNED: usize = 1000;

/// Events read from the timeline per seek.
const CHUNK: usize = 50;

/// What `/context` answers. Tokens are stream counts, as `/messages` takes them.
pub struct Context {
    /// Pages backward (`dir=b`) from just before the oldest event read.
    pub start: u64,
    /// Pages forward (`dir=f`) from just after the newest event read.
    pub end: u64,
    /// Newest first.
    pub events_before: Vec<Value>,
    pub event: Value,
    /// Oldest first.
    pub events_after: Vec<Value>,
    /// The state after the last event returned, filtered.
    pub state: Vec<Value>,
}

/// How `limit` is split: half before (rounded down), the rest after.
pub fn split_limit(limit: usize) -> (usize, usize) {
    let before = limit / 2;
    (before, limit - before)
}

impl Services {
    /// Up to `limit` events around `event_id` (split by [`split_limit`]) that `user_id` may see
    /// and that pass `filter`. The event itself is always returned (the filter does not apply
    /// to it); if it does not exist in the room or the user may not see it, `M_NOT_FOUND`, as
    /// for `/event`. Visibility is history visibility alone: non-members see the events of a
    /// `world_readable` room (peeking) and nothing of other rooms, without learning whether the
    /// event exists.
    pub fn context(
        &self,
        room_id: &RoomId,
        viewer: Viewer<'_>,
        event_id: &EventId,
        limit: usize,
        filter: &RoomEventFilter,
    ) -> Result<Context> {
        let user_id = viewer.user_id;
        let mut view = self.event_view(Some(viewer));
        let not_found = || Error::not_found("No such event, or you may not see it.");
        let count = self.timeline.count_of(event_id)?.ok_or_else(not_found)?;
        if !self.event_in_room(room_id, event_id)? {
            return Err(not_found());
        }
        let event = view.event(room_id, event_id, Some(count), Detail::Timeline)?;
        if !self.may_see_event(room_id, user_id, &event, count)? {
            return Err(not_found());
        }
        let limit = match filter.limit {
            Some(l) => limit.min(usize::try_from(u64::from(l)).unwrap_or(usize::MAX)),
            None => limit,
        };
        let (before_limit, after_limit) = split_limit(limit);
        let matcher = EventMatcher::from_room_event_filter(filter);
        let ignored = self.ignored_users(user_id)?;
        let wanted = |event: &Value, count: u64| -> Result<bool> {
            Ok(matcher.matches(event)
                && !crate::service::account_data::hidden_by(&ignored, event)
                && self.may_see_event(room_id, user_id, event, count)?)
        };

        // Backward from the event, newest first.
        let mut events_before = Vec::new();
        let mut start = count.saturating_sub(1);
        let mut scanned = 0;
        'before: while before_limit > 0 && scanned < MAX_SCANNED && start > 0 {
            let (mut batch, _) = self.timeline.last_events(room_id, start, CHUNK)?;
            batch.reverse();
            if batch.is_empty() {
                break;
            }
            for (c, id) in batch {
                start = c.saturating_sub(1);
                scanned += 1;
                let event = view.event(room_id, &id, Some(c), Detail::Timeline)?;
                if wanted(&event, c)? {
                    events_before.push(event);
                }
                if events_before.len() == before_limit || scanned == MAX_SCANNED {
                    break 'before;
                }
            }
        }

        // Forward from the event, oldest first.
        let mut events_after = Vec::new();
        let mut end = count;
        let mut last_returned = event_id.to_owned();
        let mut scanned = 0;
        'after: while after_limit > 0 && scanned < MAX_SCANNED {
            let batch = self.timeline.events_after(room_id, end, None, CHUNK)?;
            if batch.is_empty() {
                break;
            }
            for (c, id) in batch {
                end = c;
                scanned += 1;
                let event = view.event(room_id, &id, Some(c), Detail::Timeline)?;
                if wanted(&event, c)? {
                    events_after.push(event);
                    last_returned = id;
                }
                if events_after.len() == after_limit || scanned == MAX_SCANNED {
                    break 'after;
                }
            }
        }

        let state = self.context_state(
            &mut view,
            room_id,
            &last_returned,
            filter,
            events_before
                .iter()
                .chain([&event])
                .chain(events_after.iter()),
        )?;
        Ok(Context {
            start,
            end,
            events_before,
            event,
            events_after,
            state,
        })
    }

    /// The state after `at`, filtered; with lazy-loading, the only member events are those of
    /// the senders of `returned`.
    fn context_state<'a>(
        &self,
        view: &mut EventView<'_>,
        room_id: &RoomId,
        at: &EventId,
        filter: &RoomEventFilter,
        returned: impl Iterator<Item = &'a Value>,
    ) -> Result<Vec<Value>> {
        let senders: Option<HashSet<&str>> = match filter.lazy_load_options {
            LazyLoadOptions::Enabled { .. } => {
                Some(returned.filter_map(|e| e["sender"].as_str()).collect())
            }
            _ => None,
        };
        let matcher = EventMatcher::from_room_event_filter(filter);
        let mut state = Vec::new();
        for ((event_type, state_key), id) in self.timeline.state_after(at)? {
            // Lazy-loading: `include_redundant_members` changes nothing here, since this
            // server does not track which members a client already has and always sends
            // the senders' member events.
            if event_type == "m.room.member"
                && senders
                    .as_ref()
                    .is_some_and(|s| !s.contains(state_key.as_str()))
            {
                continue;
            }
            let event = view.event(room_id, &id, None, Detail::State)?;
            if matcher.matches(&event) {
                state.push(event);
            }
        }
        // A stable order (the state map has none), by type then state key.
        state.sort_by(|a, b| {
            (a["type"].as_str(), a["state_key"].as_str())
                .cmp(&(b["type"].as_str(), b["state_key"].as_str()))
        });
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_split_half_before_rest_after() {
        assert_eq!(split_limit(10), (5, 5));
        assert_eq!(split_limit(3), (1, 2));
        assert_eq!(split_limit(1), (0, 1));
        assert_eq!(split_limit(0), (0, 0));
    }
}
