//! A user's rooms as sliding-sync lists see them: membership, the position of their latest
//! activity (the order of the lists), their bump stamp, and what the list filters ask about
//! (encryption, room type). Kept in memory per user and brought up to date from the recent
//! activity (`timeline::activity`): a request where nothing changed reads nothing; one where
//! rooms changed reads only those. When the activity does not reach back far enough (after a
//! restart, or a long absence) the user's rooms are read again, once.
//!
//! Bump stamps come from `room_bumps` (room → stream count of its latest event of a "bumping"
//! type), kept by [`BumpStamps`], a consumer of the commit pipeline.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId, events::room::member::MembershipState};

use crate::{
    Result,
    service::{
        Services,
        rooms::{
            members::Membership,
            pdu,
            timeline::pipeline::{Appending, EventConsumer, Origin, Staged},
        },
    },
    store::{Batch, Cf, keys},
};

/// Event types that move a room up in a client's list (Synapse's, plus the unstable names
/// clients still send for polls and live locations).
pub const BUMP_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "org.matrix.msc3381.poll.start",
    "m.beacon_info",
    "org.matrix.msc3672.beacon_info",
];

/// How far back a room without a `room_bumps` entry (from before it existed) is searched for
/// its latest bumping event.
const BUMP_LOOK_BACK: usize = 200;

/// Keeps `room_bumps` from the commit pipeline.
pub struct BumpStamps;

struct Bump(OwnedRoomId);

impl EventConsumer for BumpStamps {
    fn prepare(&self, event: &Appending<'_>) -> Result<Option<Box<dyn Staged>>> {
        let bumps = event.origin != Origin::Backfill && BUMP_TYPES.contains(&event.event_type);
        Ok(bumps.then(|| Box::new(Bump(event.room_id.to_owned())) as Box<dyn Staged>))
    }
}

impl Staged for Bump {
    fn write(&mut self, batch: &mut Batch, count: u64) -> Result<()> {
        batch.put(Cf::RoomBumps, self.0.as_bytes(), keys::u64_be(count));
        Ok(())
    }
}

/// One room of a user's list.
#[derive(Clone, Debug)]
pub struct ListRoom {
    pub room_id: OwnedRoomId,
    pub membership: Membership,
    /// Where the room sorts: its latest event for a joined room, else the user's membership.
    pub activity: u64,
    pub bump: u64,
    /// Whether it has `m.room.encryption` (`None`: unknown, an invite without that state).
    pub encrypted: Option<bool>,
    /// The create event's `type` (`Some(None)`: untyped; `None`: unknown).
    pub room_type: Option<Option<String>>,
    /// For a leave: whether the user left themself (not kicked).
    pub left_by_self: bool,
}

/// A user's rooms, as of stream count `upto` (shared with the requests reading them: a
/// request takes the list without copying a thousand rooms).
struct UserRooms {
    upto: u64,
    rooms: HashMap<OwnedRoomId, Arc<ListRoom>>,
}

/// Every user's room list, for users with a sliding-sync connection lately.
pub struct RoomLists {
    users: quick_cache::sync::Cache<OwnedUserId, Arc<Mutex<Option<UserRooms>>>>,
}

impl Default for RoomLists {
    fn default() -> Self {
        Self {
            users: quick_cache::sync::Cache::new(512),
        }
    }
}

impl RoomLists {
    /// Drops what is known of `user_id`'s rooms (a change that leaves no trace in the recent
    /// activity, such as forgetting a room).
    pub fn forget_user(&self, user_id: &UserId) {
        self.users.remove(user_id);
    }
}

impl Services {
    /// `user_id`'s rooms as of `now` (the current stream count), brought up to date.
    pub(crate) fn list_rooms(&self, user_id: &UserId, now: u64) -> Result<Vec<Arc<ListRoom>>> {
        let lists = &self.sliding.room_lists;
        let cell = lists
            .users
            .get_or_insert_with(
                user_id,
                || Ok::<_, std::convert::Infallible>(Arc::default()),
            )
            .unwrap_or_else(|never| match never {});
        let mut cached = cell.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(user_rooms) = cached.as_mut()
            && user_rooms.upto >= now
        {
            // Already as new (a concurrent request of the user's brought it up to date).
        } else if let Some(user_rooms) = cached.as_mut()
            && let Some(changes) = self.timeline.recent_activity(user_rooms.upto, now)
        {
            let changed: HashSet<OwnedRoomId> =
                changes.into_iter().map(|a| (*a.room_id).clone()).collect();
            for room_id in changed {
                match self.members.membership(&room_id, user_id)? {
                    Some(membership) => {
                        let room = self.list_room(user_id, room_id.clone(), membership, now)?;
                        user_rooms.rooms.insert(room_id, Arc::new(room));
                    }
                    None => {
                        user_rooms.rooms.remove(&room_id);
                    }
                }
            }
            user_rooms.upto = now;
        } else {
            let mut rooms = HashMap::new();
            for (room_id, membership) in self.members.rooms_of(user_id)? {
                let room = self.list_room(user_id, room_id.clone(), membership, now)?;
                rooms.insert(room_id, Arc::new(room));
            }
            *cached = Some(UserRooms { upto: now, rooms });
        }
        Ok(cached
            .as_ref()
            .map(|c| c.rooms.values().cloned().collect())
            .unwrap_or_default())
    }

    /// One room's list entry (a few point reads).
    fn list_room(
        &self,
        user_id: &UserId,
        room_id: OwnedRoomId,
        membership: Membership,
        now: u64,
    ) -> Result<ListRoom> {
        let joined = membership.membership == MembershipState::Join;
        let activity = if joined {
            self.timeline
                .last_events(&room_id, now, 1)?
                .0
                .first()
                .map_or(membership.count, |(count, _)| *count)
        } else {
            membership.count
        };
        let bump = match joined {
            true => self.bump_stamp(&room_id, now)?.unwrap_or(membership.count),
            false => membership.count,
        };
        let (encrypted, room_type) = self.room_kind(user_id, &room_id)?;
        let left_by_self = membership.membership == MembershipState::Leave
            && self
                .timeline
                .pdu_json(&membership.event_id)?
                .is_some_and(|pdu| pdu::str_field(&pdu, "sender") == Some(user_id.as_str()));
        Ok(ListRoom {
            room_id,
            membership,
            activity,
            bump,
            encrypted,
            room_type,
            left_by_self,
        })
    }

    /// The stream count of the room's latest bumping event up to `now`: from `room_bumps`; for
    /// a room whose last such event predates that index, from its latest events (a bounded
    /// look back).
    fn bump_stamp(&self, room_id: &RoomId, now: u64) -> Result<Option<u64>> {
        if let Some(bump) = self
            .store
            .get(Cf::RoomBumps, room_id.as_bytes())?
            .and_then(|b| keys::parse_u64_be(&b))
        {
            return Ok(Some(bump.min(now)));
        }
        let (recent, _) = self.timeline.last_events(room_id, now, BUMP_LOOK_BACK)?;
        for (count, event_id) in recent.into_iter().rev() {
            let bumps = self.timeline.pdu_json(&event_id)?.is_some_and(|pdu| {
                pdu::str_field(&pdu, "type").is_some_and(|t| BUMP_TYPES.contains(&t))
            });
            if bumps {
                return Ok(Some(count));
            }
        }
        Ok(None)
    }

    /// Whether a room is encrypted and its type: from its state here, or from the stripped
    /// state of an invite to a room on another server.
    fn room_kind(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
    ) -> Result<(Option<bool>, Option<Option<String>>)> {
        if let Some(room) = self.timeline.room(room_id)? {
            let state = self.timeline.current_state_entries(&room)?;
            let encrypted = self
                .timeline
                .lookup(&state, "m.room.encryption", "")?
                .is_some();
            let room_type = match self.timeline.lookup(&state, "m.room.create", "")? {
                Some(id) => Some(
                    self.timeline
                        .pdu_json(&id)?
                        .and_then(|pdu| pdu::content_str(&pdu, "type").map(str::to_owned)),
                ),
                None => None,
            };
            return Ok((Some(encrypted), room_type));
        }
        let Some(invite) = self.remote_invite(user_id, room_id)? else {
            return Ok((None, None));
        };
        let stripped = self.remote_invite_state(&invite);
        let encrypted = stripped.iter().any(|e| e["type"] == "m.room.encryption");
        let room_type = stripped
            .iter()
            .find(|e| e["type"] == "m.room.create")
            .map(|e| e["content"]["type"].as_str().map(str::to_owned));
        Ok((Some(encrypted), room_type))
    }
}
