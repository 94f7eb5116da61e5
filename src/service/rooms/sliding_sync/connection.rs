//! Sliding-sync connections: what each connection's client has of each room, by position.
//!
//! A connection is one `(user, device, conn_id)`. Its client holds the data of some position
//! `P` (the `pos` it sends); an answer creates a new position `P'` whose state is `P`'s plus
//! the rooms it sent. The client may resend `P` (it cancels and resends long-polls, or lost an
//! answer), so `P` stays usable until the client uses a newer position: only then are `P` and
//! the others dropped. Concurrent answers from one position are siblings; the one the client
//! uses next wins, and a request still answering from `P` (abandoned by its client) drops
//! nothing.
//!
//! Stored so that clients keep their connection across a restart of the server:
//! - `sliding_connections`: `user 0xFF device 0xFF conn_id` → [`Record`]: the base position
//!   (what the client is known to have), the positions created from it and the rooms each
//!   touched, and when the connection was last used;
//! - `sliding_rooms`: the same key `0xFF room_id` → [`RoomVersions`]: what the base position
//!   and each newer one hold of that room.
//!
//! Connections live in memory while used (a bounded cache); a request costs writes for the
//! rooms it sends, never for the rooms it does not.

use std::collections::{BTreeMap, HashMap};

use ruma::{DeviceId, OwnedRoomId, RoomId, UserId};
use serde::{Deserialize, Serialize};

use crate::{
    Error, Result,
    store::{Batch, Cf, Store, keys},
    utils,
};

/// A connection unused for this long is forgotten (its client starts over with
/// `M_UNKNOWN_POS`), as Synapse does.
pub const EXPIRY_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// How many positions made from the base are kept at most.
const MAX_NEWER: usize = 8;

/// What a position holds of one room: the client has its timeline and state up to `upto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSent {
    /// The stream count the room was sent up to (its leave, for a left room).
    pub upto: u64,
    /// The timeline limit it was sent with (a larger one later expands its timeline).
    pub timeline_limit: u64,
    /// A fingerprint of the `required_state` it was sent with (another one resends its state).
    pub config: u64,
    /// Whether it was sent as a joined room (a join after an invite is a new room to the
    /// client).
    pub joined: bool,
}

/// One room's entries: at the base position, and at the positions created from it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RoomVersions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base: Option<RoomSent>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    newer: Vec<(u64, RoomSent)>,
}

/// A connection's positions.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Record {
    /// The position the client is known to have.
    base: u64,
    /// The next position to hand out.
    next: u64,
    /// Positions created from the base, with the rooms each touched.
    newer: BTreeMap<u64, Vec<OwnedRoomId>>,
    /// Milliseconds since the epoch of the last request.
    used: u64,
}

/// A position the connection does not know (never given, dropped, or the connection expired).
#[derive(Debug)]
pub struct UnknownPosition;

/// One connection, as loaded.
pub struct Connection {
    key: Vec<u8>,
    record: Record,
    rooms: HashMap<OwnedRoomId, RoomVersions>,
    /// The position whose state `sent` answers for.
    at: u64,
}

fn room_key(connection: &[u8], room_id: &RoomId) -> Vec<u8> {
    keys::join([connection, room_id.as_bytes()])
}

/// The key of a connection.
pub fn connection_key(user_id: &UserId, device_id: &DeviceId, conn_id: &str) -> Vec<u8> {
    keys::join([user_id.as_bytes(), device_id.as_bytes(), conn_id.as_bytes()])
}

impl Connection {
    /// A connection with nothing sent: what a request without `pos` starts. The stored one (if
    /// any) is dropped in `batch`.
    pub fn fresh(store: &Store, key: Vec<u8>, batch: &mut Batch) -> Result<Self> {
        Self::delete_stored(store, &key, batch)?;
        Ok(Self {
            key,
            record: Record {
                base: 0,
                next: 1,
                newer: BTreeMap::new(),
                used: utils::now_millis(),
            },
            rooms: HashMap::new(),
            at: 0,
        })
    }

    /// Loads a stored connection (one point read and one prefix scan of the rooms it sent);
    /// `None` when there is none or it expired.
    pub fn load(store: &Store, key: Vec<u8>) -> Result<Option<Self>> {
        let Some(bytes) = store.get(Cf::SlidingConnections, &key)? else {
            return Ok(None);
        };
        let record: Record = serde_json::from_slice(&bytes)?;
        if utils::now_millis().saturating_sub(record.used) > EXPIRY_MS {
            return Ok(None);
        }
        let prefix = keys::prefix(&key);
        let mut rooms = HashMap::new();
        for item in store.scan_prefix(Cf::SlidingRooms, &prefix) {
            let (room_key, value) = item?;
            let Some(room_id) = std::str::from_utf8(&room_key[prefix.len()..])
                .ok()
                .and_then(|r| RoomId::parse(r).ok())
            else {
                continue;
            };
            rooms.insert(room_id, serde_json::from_slice(&value)?);
        }
        let at = record.base;
        Ok(Some(Self {
            key,
            record,
            rooms,
            at,
        }))
    }

    /// Deletes a stored connection (in `batch`): its record and every room entry.
    pub fn delete_stored(store: &Store, key: &[u8], batch: &mut Batch) -> Result<()> {
        batch.delete(Cf::SlidingConnections, key.to_vec());
        for item in store.scan_prefix(Cf::SlidingRooms, &keys::prefix(key)) {
            let (room_key, _) = item?;
            batch.delete(Cf::SlidingRooms, room_key.to_vec());
        }
        Ok(())
    }

    /// Answers from now on for position `position`, which the client holds. A newer position
    /// (one created from the base) becomes the base, and the base and the other newer ones are
    /// dropped (in `batch`): the client went on from this one. The base itself drops nothing:
    /// a request the client abandoned (clients cancel and resend long-polls) may still answer
    /// from it while the client already holds a newer one.
    pub fn use_position(
        &mut self,
        position: u64,
        batch: &mut Batch,
    ) -> std::result::Result<(), UnknownPosition> {
        if position == self.record.base {
            self.at = position;
            return Ok(());
        }
        if !self.record.newer.contains_key(&position) {
            return Err(UnknownPosition);
        }
        let touched: Vec<OwnedRoomId> = std::mem::take(&mut self.record.newer)
            .into_values()
            .flatten()
            .collect();
        for room_id in touched {
            let Some(versions) = self.rooms.get_mut(&room_id) else {
                continue;
            };
            if let Some((_, sent)) = versions.newer.iter().find(|(p, _)| *p == position) {
                versions.base = Some(*sent);
            }
            // A new Vec, not `clear()`: a promoted room keeps no spare capacity in the cache.
            versions.newer = Vec::new();
            let key = room_key(&self.key, &room_id);
            if versions.base.is_none() {
                self.rooms.remove(&room_id);
                batch.delete(Cf::SlidingRooms, key);
            } else {
                batch.put(
                    Cf::SlidingRooms,
                    key,
                    serde_json::to_vec(versions).unwrap_or_default(),
                );
            }
        }
        self.record.base = position;
        self.at = position;
        Ok(())
    }

    /// What the client holds of `room_id` at the position being answered for.
    pub fn sent(&self, room_id: &RoomId) -> Option<RoomSent> {
        let versions = self.rooms.get(room_id)?;
        if self.at != self.record.base
            && let Some((_, sent)) = versions.newer.iter().find(|(p, _)| *p == self.at)
        {
            return Some(*sent);
        }
        versions.base
    }

    /// Records an answer that sent `rooms` (in `batch`) and returns its position: a new one
    /// after the base when something was sent, else the base itself (nothing changed).
    pub fn record_answer(&mut self, sent: Vec<(OwnedRoomId, RoomSent)>, batch: &mut Batch) -> u64 {
        self.record.used = utils::now_millis();
        let position = if sent.is_empty() {
            self.record.base
        } else {
            let position = self.record.next;
            self.record.next += 1;
            let mut touched = Vec::with_capacity(sent.len());
            for (room_id, room) in sent {
                let versions = self.rooms.entry(room_id.clone()).or_default();
                versions.newer.reserve_exact(1);
                versions.newer.push((position, room));
                batch.put(
                    Cf::SlidingRooms,
                    room_key(&self.key, &room_id),
                    serde_json::to_vec(&*versions).unwrap_or_default(),
                );
                touched.push(room_id);
            }
            self.record.newer.insert(position, touched);
            self.drop_oldest_newer(batch);
            position
        };
        batch.put(
            Cf::SlidingConnections,
            self.key.clone(),
            serde_json::to_vec(&self.record).unwrap_or_default(),
        );
        position
    }

    /// Keeps at most [`MAX_NEWER`] positions after the base (a client that keeps resending the
    /// base makes one each time): the oldest go.
    fn drop_oldest_newer(&mut self, batch: &mut Batch) {
        while self.record.newer.len() > MAX_NEWER {
            let Some((oldest, touched)) = self.record.newer.pop_first() else {
                return;
            };
            for room_id in touched {
                let Some(versions) = self.rooms.get_mut(&room_id) else {
                    continue;
                };
                versions.newer.retain(|(p, _)| *p != oldest);
                batch.put(
                    Cf::SlidingRooms,
                    room_key(&self.key, &room_id),
                    serde_json::to_vec(&*versions).unwrap_or_default(),
                );
            }
        }
    }

    /// The rooms this connection ever sent (at any position).
    pub fn known_rooms(&self) -> usize {
        self.rooms.len()
    }
}

/// The `pos` token: `<position>.<stream count>`.
pub fn format_pos(position: u64, count: u64) -> String {
    format!("{position}.{count}")
}

/// Reads a `pos` token; `None` when it is not one of ours.
pub fn parse_pos(pos: &str) -> Option<(u64, u64)> {
    let (position, count) = pos.split_once('.')?;
    Some((position.parse().ok()?, count.parse().ok()?))
}

/// The error for a `pos` that cannot be answered for: the client starts over.
pub fn unknown_pos() -> Error {
    Error::new(
        http::StatusCode::BAD_REQUEST,
        ruma::api::error::ErrorKind::UnknownPos,
        "Unknown or expired pos: start a new connection.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;

    fn room(n: u32) -> OwnedRoomId {
        RoomId::parse(format!("!r{n}:x")).unwrap()
    }

    fn sent(upto: u64) -> RoomSent {
        RoomSent {
            upto,
            timeline_limit: 1,
            config: 7,
            joined: true,
        }
    }

    #[test]
    fn positions_survive_retries_and_a_reload_until_a_newer_one_is_used() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let key = b"conn".to_vec();
        let mut batch = Batch::new();
        let mut conn = Connection::fresh(&store, key.clone(), &mut batch).unwrap();
        let first = conn.record_answer(vec![(room(1), sent(10))], &mut batch);
        store.write(batch).unwrap();

        // The client resends the base (0) twice: each answer is a sibling of the other.
        let mut batch = Batch::new();
        conn.use_position(0, &mut batch).unwrap();
        assert_eq!(conn.sent(&room(1)), None, "position 0 holds nothing");
        let retry = conn.record_answer(vec![(room(1), sent(11))], &mut batch);
        store.write(batch).unwrap();
        assert_ne!(retry, first);

        // Reloaded (a server restart), the client uses the retry's position; its sibling
        // (the first answer, lost) goes then, not before.
        let mut conn = Connection::load(&store, key.clone()).unwrap().unwrap();
        let mut batch = Batch::new();
        conn.use_position(retry, &mut batch).unwrap();
        assert!(
            conn.use_position(first, &mut batch).is_err(),
            "a dropped sibling"
        );
        assert_eq!(conn.sent(&room(1)), Some(sent(11)));
        assert!(
            conn.use_position(0, &mut batch).is_err(),
            "older than the base"
        );
        // Nothing new sent: the answer keeps the base position.
        assert_eq!(conn.record_answer(Vec::new(), &mut batch), retry);
        store.write(batch).unwrap();
        let conn = Connection::load(&store, key).unwrap().unwrap();
        assert_eq!(conn.sent(&room(1)), Some(sent(11)));
        assert_eq!(conn.known_rooms(), 1);
    }

    #[test]
    fn pos_tokens_round_trip_and_junk_is_refused() {
        assert_eq!(
            parse_pos(&format_pos(3, 4_294_967_300)),
            Some((3, 4_294_967_300))
        );
        for junk in ["", "3", "a.b", "3.", ".4", "3.4.5", "-1.4"] {
            assert_eq!(parse_pos(junk), None, "{junk}");
        }
    }
}
