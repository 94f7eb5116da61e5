//! Peeking and the legacy views of one room: `GET /events?room_id=` (new events of a room,
//! waited for like `/sync`) and `GET /rooms/{roomId}/initialSync` (its state and latest
//! messages at once). Members and former members read what `/messages` lets them read; anyone
//! may peek into a `world_readable` room.

use std::time::Duration;

use ruma::{RoomId, api::client::filter::RoomEventFilter};
use serde_json::{Value, json};

use super::{
    client_event::{ClientEvent, Detail, Viewer},
    history::Direction,
    sync_filter::EventMatcher,
};
use crate::{Result, service::Services};

/// Events one `/events` answer carries at most.
const EVENTS_LIMIT: usize = 100;
/// Messages `/initialSync` gives.
const INITIAL_MESSAGES: usize = 20;
/// The longest `/events` wait.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// One `/events` answer: the events after `start`, and where the next call starts.
pub struct Peeked {
    pub start: u64,
    pub end: u64,
    pub events: Vec<ClientEvent>,
}

impl Services {
    /// `GET /events?room_id=`: the room's events after `from` (after now without it) that
    /// the viewer may see, waiting up to `timeout` for one to come.
    pub async fn peek_events(
        &self,
        room_id: &RoomId,
        viewer: Viewer<'_>,
        from: Option<u64>,
        timeout: Duration,
    ) -> Result<Peeked> {
        self.require_history_reader(room_id, viewer.user_id)?;
        let mut committed = self.timeline.subscribe();
        let start = from.unwrap_or_else(|| self.timeline.current_count());
        let deadline = tokio::time::Instant::now() + timeout.min(MAX_TIMEOUT);
        let everything = EventMatcher::from_room_event_filter(&RoomEventFilter::default());
        loop {
            let now = self.timeline.current_count();
            let page = self.messages(
                room_id,
                viewer,
                Some(start),
                Some(now),
                Direction::Forward,
                EVENTS_LIMIT,
                &everything,
            )?;
            // A page that stopped early (full, or at the scan budget) ends where it stopped,
            // so nothing after it is skipped; otherwise everything up to `now` was read.
            if !page.events.is_empty()
                || page.end.is_some()
                || tokio::time::Instant::now() >= deadline
            {
                return Ok(Peeked {
                    start,
                    end: page.end.unwrap_or(now.max(start)),
                    events: page.events,
                });
            }
            match tokio::time::timeout_at(deadline, committed.changed()).await {
                // A commit, or the timeout: one more look answers.
                Err(_) | Ok(Ok(())) => continue,
                // No more commits will be announced (shutting down): answer now.
                Ok(Err(_)) => {
                    return Ok(Peeked {
                        start,
                        end: now.max(start),
                        events: Vec::new(),
                    });
                }
            }
        }
    }

    /// `GET /rooms/{roomId}/initialSync`: the room's state (as `/state` gives it), its latest
    /// messages with their tokens, the user's room account data and membership, and whether
    /// the room is published in the directory.
    pub fn room_initial_sync(&self, room_id: &RoomId, viewer: Viewer<'_>) -> Result<Value> {
        let user_id = viewer.user_id;
        self.require_history_reader(room_id, user_id)?;
        let everything = EventMatcher::from_room_event_filter(&RoomEventFilter::default());
        let now = self.timeline.current_count();
        let page = self.messages(
            room_id,
            viewer,
            Some(now),
            None,
            Direction::Backward,
            INITIAL_MESSAGES,
            &everything,
        )?;
        let mut chunk = page.events;
        chunk.reverse();
        let mut view = self.event_view(Some(viewer));
        let mut state = Vec::new();
        for event_id in self.visible_state(room_id, user_id)?.values() {
            state.push(view.event(room_id, event_id, None, Detail::State)?);
        }
        let mut answer = json!({
            "room_id": room_id,
            "messages": {
                "chunk": chunk,
                "start": page.end.unwrap_or(0).to_string(),
                "end": now.to_string(),
            },
            "state": state,
            "presence": [],
            "receipts": [],
            "account_data": self.account_data_changes(user_id, Some(room_id), None)?,
            "visibility": if self.is_published(room_id)? { "public" } else { "private" },
        });
        if let Some(membership) = self.members.membership(room_id, user_id)? {
            answer["membership"] = json!(membership.membership);
        }
        Ok(answer)
    }
}
