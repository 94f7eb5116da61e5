//! The membership index: who is in which room, and which servers a room spans. Kept by the
//! commit pipeline from every `m.room.member` event of the timeline, in the event's own batch,
//! so that "is this user in this room" and "where do this room's events go" are point reads
//! or one prefix scan, never a walk of the room's state.
//!
//! - `user_rooms` (`user 0xFF room` → [`Membership`]): a user's rooms, for `/sync` and every
//!   membership check; forgetting a room drops the entry.
//! - `room_members` (`room 0xFF user` → membership): a room's members as its state has them.
//! - `room_servers` (`room 0xFF server` → joined members, u64 BE): the servers with joined
//!   members, where the room's new events go.

use ruma::{
    OwnedEventId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomId, ServerName, UserId,
    events::room::member::MembershipState,
};
use serde::{Deserialize, Serialize};

use super::{
    pdu,
    timeline::pipeline::{AdoptedState, Appending, EventConsumer, Origin, Staged},
};
use crate::{
    Error, Result,
    store::{Batch, Cf, Store, keys},
};

/// A user's membership in a room, as the `user_rooms` index keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub membership: MembershipState,
    /// The `m.room.member` event that set it.
    pub event_id: OwnedEventId,
    /// Its stream count (for sync: what changed since a token).
    pub count: u64,
}

/// The index and its reads.
pub struct Members {
    store: Store,
}

/// A membership as `room_members` keeps it (its name, e.g. `join`).
fn membership_of_bytes(bytes: &[u8]) -> MembershipState {
    MembershipState::from(String::from_utf8_lossy(bytes).as_ref())
}

fn user_room_key(user_id: &str, room_id: &RoomId) -> Vec<u8> {
    keys::join([user_id.as_bytes(), room_id.as_bytes()])
}

fn room_member_key(room_id: &RoomId, user_id: &str) -> Vec<u8> {
    keys::join([room_id.as_bytes(), user_id.as_bytes()])
}

impl Members {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// A user's membership in a room (one point read).
    pub fn membership(&self, room_id: &RoomId, user_id: &UserId) -> Result<Option<Membership>> {
        match self
            .store
            .get(Cf::UserRooms, &user_room_key(user_id.as_str(), room_id))?
        {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// A user's membership as the room's state has it (one point read on `room_members`).
    /// Unlike [`Members::membership`], this survives the user forgetting the room.
    pub fn member_state(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Option<MembershipState>> {
        Ok(self
            .store
            .get(Cf::RoomMembers, &room_member_key(room_id, user_id.as_str()))?
            .map(|m| membership_of_bytes(&m)))
    }

    /// Every room a user has a membership in (one prefix scan).
    pub fn rooms_of(&self, user_id: &UserId) -> Result<Vec<(OwnedRoomId, Membership)>> {
        let prefix = keys::prefix(user_id.as_bytes());
        let mut rooms = Vec::new();
        for item in self.store.scan_prefix(Cf::UserRooms, &prefix) {
            let (key, value) = item?;
            let room_id = std::str::from_utf8(&key[prefix.len()..])
                .ok()
                .and_then(|r| RoomId::parse(r).ok())
                .ok_or_else(|| Error::internal("corrupt user_rooms key"))?;
            rooms.push((room_id, serde_json::from_slice(&value)?));
        }
        Ok(rooms)
    }

    /// Every user with a membership in a room, and that membership (one prefix scan).
    pub fn of_room(&self, room_id: &RoomId) -> Result<Vec<(OwnedUserId, MembershipState)>> {
        let prefix = keys::prefix(room_id.as_bytes());
        let mut members = Vec::new();
        for item in self.store.scan_prefix(Cf::RoomMembers, &prefix) {
            let (key, value) = item?;
            let user_id = std::str::from_utf8(&key[prefix.len()..])
                .ok()
                .and_then(|u| UserId::parse(u).ok())
                .ok_or_else(|| Error::internal("corrupt room_members key"))?;
            members.push((user_id, membership_of_bytes(&value)));
        }
        Ok(members)
    }

    /// The servers with joined members in a room (one prefix scan of a key per server,
    /// however many members the room has).
    pub fn servers_of_room(&self, room_id: &RoomId) -> Result<Vec<OwnedServerName>> {
        let prefix = keys::prefix(room_id.as_bytes());
        let mut servers = Vec::new();
        for item in self.store.scan_prefix(Cf::RoomServers, &prefix) {
            let (key, _) = item?;
            if let Ok(name) = std::str::from_utf8(&key[prefix.len()..])
                && let Ok(server) = ServerName::parse(name)
            {
                servers.push(server);
            }
        }
        Ok(servers)
    }

    /// Whether `server` has a joined member in `room_id` (one point read).
    pub fn server_in_room(&self, room_id: &RoomId, server: &ServerName) -> Result<bool> {
        Ok(self
            .store
            .get(
                Cf::RoomServers,
                &keys::join([room_id.as_bytes(), server.as_bytes()]),
            )?
            .is_some())
    }

    /// Adds to `batch` a local user's membership in a room this server is not in (an invite or
    /// knock kept with the room's stripped state, or its rejection), at stream count `count`:
    /// only `user_rooms` knows it, the room has no timeline here.
    pub(crate) fn put_outside_membership(
        batch: &mut Batch,
        user_id: &UserId,
        room_id: &RoomId,
        membership: MembershipState,
        event_id: OwnedEventId,
        count: u64,
    ) -> Result<()> {
        let record = Membership {
            membership,
            event_id,
            count,
        };
        batch.put(
            Cf::UserRooms,
            user_room_key(user_id.as_str(), room_id),
            serde_json::to_vec(&record)?,
        );
        Ok(())
    }

    /// Drops a user's `user_rooms` entry (forgetting a room): the room leaves their `/sync`,
    /// `/joined_rooms` and history reads. The caller holds the room's lock.
    pub(crate) fn forget(&self, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        let mut batch = Batch::new();
        batch.delete(Cf::UserRooms, user_room_key(user_id.as_str(), room_id));
        Ok(self.store.write(batch)?)
    }
}

/// The index entries of one member event.
struct MemberChange {
    user_room: Vec<u8>,
    room_member: Vec<u8>,
    membership: MembershipState,
    event_id: OwnedEventId,
    /// `room_servers`: the key and the server's new count of joined members (0: delete).
    server_count: Option<(Vec<u8>, u64)>,
}

/// A room's index rebuilt from an adopted state: every member as the state has them, and the
/// servers of the joined ones (replacing what an earlier stay in the room left).
struct RoomReindex {
    room_id: OwnedRoomId,
    members: Vec<(String, MembershipState, OwnedEventId)>,
    stale_servers: Vec<OwnedServerName>,
}

impl Staged for RoomReindex {
    fn write(&mut self, batch: &mut Batch, count: u64) -> Result<()> {
        let room_id = &self.room_id;
        let mut servers: std::collections::BTreeMap<String, u64> = Default::default();
        for (user, membership, event_id) in &self.members {
            let record = Membership {
                membership: membership.clone(),
                event_id: event_id.clone(),
                count,
            };
            batch.put(
                Cf::UserRooms,
                user_room_key(user, room_id),
                serde_json::to_vec(&record)?,
            );
            batch.put(
                Cf::RoomMembers,
                room_member_key(room_id, user),
                membership.as_str(),
            );
            if *membership == MembershipState::Join
                && let Ok(user) = UserId::parse(user)
            {
                *servers.entry(user.server_name().to_string()).or_default() += 1;
            }
        }
        for server in &self.stale_servers {
            batch.delete(
                Cf::RoomServers,
                keys::join([room_id.as_bytes(), server.as_bytes()]),
            );
        }
        for (server, joined) in &servers {
            batch.put(
                Cf::RoomServers,
                keys::join([room_id.as_bytes(), server.as_bytes()]),
                keys::u64_be(*joined),
            );
        }
        Ok(())
    }
}

impl EventConsumer for Members {
    fn prepare_adopted_state(&self, state: &AdoptedState<'_>) -> Result<Option<Box<dyn Staged>>> {
        let members = state
            .events
            .iter()
            .filter(|(_, pdu)| pdu::str_field(pdu, "type") == Some("m.room.member"))
            .filter_map(|(event_id, pdu)| {
                Some((
                    pdu::str_field(pdu, "state_key")?.to_owned(),
                    MembershipState::from(pdu::content_str(pdu, "membership").unwrap_or_default()),
                    event_id.clone(),
                ))
            })
            .collect();
        Ok(Some(Box::new(RoomReindex {
            room_id: state.room_id.to_owned(),
            members,
            stale_servers: self.servers_of_room(state.room_id)?,
        })))
    }

    fn prepare(&self, event: &Appending<'_>) -> Result<Option<Box<dyn Staged>>> {
        // Backfilled history is not news: the index says where the room is now.
        if event.origin == Origin::Backfill || event.event_type != "m.room.member" {
            return Ok(None);
        }
        let Some(target) = event.state_key else {
            return Ok(None);
        };
        let membership =
            MembershipState::from(pdu::content_str(event.pdu, "membership").unwrap_or_default());
        let room_member = room_member_key(event.room_id, target);
        // A join or a leave moves its server's count in `room_servers`.
        let was_joined = self
            .store
            .get(Cf::RoomMembers, &room_member)?
            .is_some_and(|m| membership_of_bytes(&m) == MembershipState::Join);
        let is_joined = membership == MembershipState::Join;
        let server_count = match UserId::parse(target) {
            Ok(target_id) if was_joined != is_joined => {
                let key =
                    keys::join([event.room_id.as_bytes(), target_id.server_name().as_bytes()]);
                let current = self
                    .store
                    .get(Cf::RoomServers, &key)?
                    .and_then(|v| keys::parse_u64_be(&v))
                    .unwrap_or(0);
                let next = if is_joined {
                    current + 1
                } else {
                    current.saturating_sub(1)
                };
                Some((key, next))
            }
            _ => None,
        };
        Ok(Some(Box::new(MemberChange {
            user_room: user_room_key(target, event.room_id),
            room_member,
            membership,
            event_id: event.event_id.to_owned(),
            server_count,
        })))
    }
}

impl Staged for MemberChange {
    fn write(&mut self, batch: &mut Batch, count: u64) -> Result<()> {
        let record = Membership {
            membership: self.membership.clone(),
            event_id: self.event_id.clone(),
            count,
        };
        batch.put(
            Cf::UserRooms,
            self.user_room.clone(),
            serde_json::to_vec(&record)?,
        );
        batch.put(
            Cf::RoomMembers,
            self.room_member.clone(),
            self.membership.as_str(),
        );
        match &self.server_count {
            Some((key, 0)) => batch.delete(Cf::RoomServers, key.clone()),
            Some((key, joined)) => batch.put(Cf::RoomServers, key.clone(), keys::u64_be(*joined)),
            None => {}
        }
        Ok(())
    }
}

impl crate::service::Services {
    /// The rooms both users are joined to, in room ID order: one prefix scan of `a`'s rooms
    /// and a point read of `b`'s membership in each room `a` is joined to.
    pub fn mutual_rooms(&self, a: &UserId, b: &UserId) -> Result<Vec<OwnedRoomId>> {
        let mut shared = Vec::new();
        for (room_id, membership) in self.members.rooms_of(a)? {
            if membership.membership == MembershipState::Join
                && self
                    .members
                    .membership(&room_id, b)?
                    .is_some_and(|m| m.membership == MembershipState::Join)
            {
                shared.push(room_id);
            }
        }
        Ok(shared)
    }
}
