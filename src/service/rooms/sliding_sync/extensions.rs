//! Sliding-sync extensions: `to_device` (MSC3885), `e2ee` (MSC3884), `account_data`
//! (MSC3959), `receipts` (MSC3960), `typing` (MSC3961) and thread subscriptions (MSC4308). Each runs only when enabled in the
//! request (nothing is remembered between requests). The room-scoped ones cover the rooms their
//! `lists`/`rooms` name; of those, an incremental answer reads only the rooms the recent
//! activity names (and the rooms sent for the first time in this answer, which get everything).

use std::collections::{BTreeMap, HashSet};

use ruma::OwnedRoomId;
use serde_json::{Map, Value, json};

use super::{Scope, ScopeRoom, SlidingRequest};
use crate::{
    Result,
    service::{
        Services,
        rooms::{client_event::Viewer, timeline::activity::Change},
    },
};

/// The rooms of one answer, as extensions scope them.
pub(super) struct Scoping<'a> {
    /// Each list's rooms in its ranges.
    pub in_ranges: &'a BTreeMap<String, Vec<OwnedRoomId>>,
    /// Every room of the lists' ranges and the subscriptions.
    pub relevant: &'a [OwnedRoomId],
    /// The rooms sent with `initial` in this answer.
    pub initial: &'a HashSet<OwnedRoomId>,
}

impl<'a> Scoping<'a> {
    /// The rooms an extension's `lists`/`rooms` name, in the answer's order.
    fn rooms(&self, scope: &Scope) -> Vec<OwnedRoomId> {
        let mut seen: HashSet<&OwnedRoomId> = HashSet::new();
        let mut rooms: Vec<OwnedRoomId> = Vec::new();
        let mut add = |room: &'a OwnedRoomId| {
            if seen.insert(room) {
                rooms.push(room.clone());
            }
        };
        let all_lists = scope
            .lists
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == "*"));
        if all_lists {
            self.in_ranges.values().flatten().for_each(&mut add);
        } else if let Some(names) = &scope.lists {
            names
                .iter()
                .filter_map(|name| self.in_ranges.get(name))
                .flatten()
                .for_each(&mut add);
        }
        match &scope.rooms {
            None => self.relevant.iter().for_each(&mut add),
            Some(wanted) => {
                let relevant: HashSet<&OwnedRoomId> = self.relevant.iter().collect();
                for room in wanted {
                    match room {
                        ScopeRoom::All => self.relevant.iter().for_each(&mut add),
                        ScopeRoom::Room(id) => {
                            if let Some(known) = relevant.get(id) {
                                add(known);
                            }
                        }
                    }
                }
            }
        }
        rooms
    }
}

impl Services {
    /// The extensions' part of an answer, and whether it has anything to tell.
    pub(super) fn sliding_extensions(
        &self,
        viewer: Viewer<'_>,
        request: &SlidingRequest<'_>,
        scoping: &Scoping<'_>,
        from: Option<u64>,
        now: u64,
    ) -> Result<(Value, bool)> {
        let user_id = viewer.user_id;
        let device_id = request.device_id;
        let extensions = &request.extensions;
        let mut out = Map::new();
        let mut news = false;
        // What changed since the client's position, where the recent activity knows it.
        let recent = from.and_then(|from| self.timeline.recent_activity(from, now));
        let changed_rooms = |change: Change| -> Option<HashSet<OwnedRoomId>> {
            recent.as_ref().map(|recent| {
                recent
                    .iter()
                    .filter(|a| a.change == change)
                    .map(|a| (*a.room_id).clone())
                    .collect()
            })
        };

        if let Some(to_device) = &extensions.to_device {
            let (events, next_batch) =
                self.to_device_page(user_id, device_id, to_device.since, now, to_device.limit)?;
            news |= !events.is_empty();
            out.insert(
                "to_device".into(),
                json!({ "next_batch": next_batch.to_string(), "events": events }),
            );
        }

        if extensions.e2ee {
            let mut e2ee = Map::new();
            if let Some(from) = from {
                // Whose devices to re-query: only rooms with events since `from` can hold a
                // membership change.
                let candidates = changed_rooms(Change::Event);
                let changes =
                    self.device_list_changes_in(user_id, from, now, candidates.as_ref())?;
                if !changes.changed.is_empty() || !changes.left.is_empty() {
                    news = true;
                    e2ee.insert(
                        "device_lists".into(),
                        json!({ "changed": changes.changed, "left": changes.left }),
                    );
                }
            }
            // Always there (not news): the client keeps its key counts current from them.
            e2ee.insert(
                "device_one_time_keys_count".into(),
                json!(self.one_time_key_counts(user_id, device_id)?),
            );
            e2ee.insert(
                "device_unused_fallback_key_types".into(),
                json!(self.unused_fallback_key_types(user_id, device_id)?),
            );
            out.insert("e2ee".into(), Value::Object(e2ee));
        }

        if let Some(scope) = &extensions.account_data {
            let mut global = self.account_data_changes(user_id, None, from)?;
            if from.is_none() {
                global.retain(|e| e["type"] != "m.push_rules");
                global.push(self.push_rules_event(user_id)?);
            }
            let touched = changed_rooms(Change::AccountData);
            let mut rooms = Map::new();
            for room_id in scoping.rooms(scope) {
                let first = from.is_none() || scoping.initial.contains(&room_id);
                if !first && touched.as_ref().is_some_and(|t| !t.contains(&room_id)) {
                    continue;
                }
                let since = if first { None } else { from };
                let events = self.account_data_changes(user_id, Some(&room_id), since)?;
                if !events.is_empty() {
                    rooms.insert(room_id.to_string(), events.into());
                }
            }
            news |= !global.is_empty() || !rooms.is_empty();
            out.insert(
                "account_data".into(),
                json!({ "global": global, "rooms": rooms }),
            );
        }

        if let Some(scope) = &extensions.receipts {
            let touched = changed_rooms(Change::Receipt);
            let mut rooms = Map::new();
            for room_id in scoping.rooms(scope) {
                let first = from.is_none() || scoping.initial.contains(&room_id);
                if !first && touched.as_ref().is_some_and(|t| !t.contains(&room_id)) {
                    continue;
                }
                let since = if first { None } else { from };
                if let Some(event) = self.receipt_event(&room_id, user_id, since)? {
                    rooms.insert(room_id.to_string(), event);
                }
            }
            news |= !rooms.is_empty();
            out.insert("receipts".into(), json!({ "rooms": rooms }));
        }

        if let Some(scope) = &extensions.typing {
            let mut rooms = Map::new();
            for room_id in scoping.rooms(scope) {
                let first = from.is_none() || scoping.initial.contains(&room_id);
                if let Some(event) = self.typing_event(&room_id, if first { None } else { from }) {
                    // A first look only reports someone typing, not an empty list.
                    let empty = event["content"]["user_ids"]
                        .as_array()
                        .is_none_or(|u| u.is_empty());
                    if !(first && empty) {
                        rooms.insert(room_id.to_string(), event);
                    }
                }
            }
            news |= !rooms.is_empty();
            out.insert("typing".into(), json!({ "rooms": rooms }));
        }

        if let Some(limit) = extensions.thread_subscriptions {
            // The latest changes since the client's position; older ones of that span are
            // paged through `/thread_subscriptions` from `prev_batch`.
            let changes =
                self.thread_subscription_changes(user_id, from.unwrap_or(0), Some(now + 1), limit)?;
            news |= !changes.is_empty();
            let mut answer = Map::new();
            if !changes.subscribed.is_empty() {
                answer.insert("subscribed".into(), Value::Object(changes.subscribed));
            }
            if !changes.unsubscribed.is_empty() {
                answer.insert("unsubscribed".into(), Value::Object(changes.unsubscribed));
            }
            if let Some(before) = changes.more_before {
                answer.insert("prev_batch".into(), json!(before.to_string()));
            }
            out.insert(
                "io.element.msc4308.thread_subscriptions".into(),
                Value::Object(answer),
            );
        }
        Ok((Value::Object(out), news))
    }
}
