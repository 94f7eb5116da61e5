//! Device list tracking: which users' devices or cross-signing keys changed, so that clients
//! know whose keys to query again (`/keys/changes`, sync's `device_lists`).
//!
//! A change of user U (a device's identity keys uploaded or changed, a device deleted,
//! cross-signing keys or signatures changed) takes a stream count and is recorded in
//! `device_list_stream` (count ++ user), one entry per user: the previous entry, found through
//! `device_list_counts`, is deleted in the same batch, so a reader seeks from its token and
//! reads each changed user once.
//!
//! Joins and leaves are not recorded there: they are member events, so a sync computes them
//! from the memberships of the rooms it looks at (a user who joined a shared room since the
//! token is `changed`: the client never tracked their devices in that room; one who left and no
//! longer shares a room is `left`).

use std::collections::BTreeSet;

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId, events::room::member::MembershipState};
use serde_json::{Value, json};

use crate::{
    Error, Result,
    service::{Services, rooms::client_event::ClientEvent},
    store::{Batch, Cf, Store, keys},
};

/// Adds to `batch` the device-list change of `user_id` at stream position `count`.
pub fn change_into(store: &Store, batch: &mut Batch, count: u64, user_id: &UserId) -> Result<()> {
    if let Some(previous) = store.get(Cf::DeviceListCounts, user_id.as_bytes())? {
        let mut key = previous;
        key.extend_from_slice(user_id.as_bytes());
        batch.delete(Cf::DeviceListStream, key);
    }
    let mut key = keys::u64_be(count).to_vec();
    key.extend_from_slice(user_id.as_bytes());
    batch.put(Cf::DeviceListStream, key, Vec::new());
    batch.put(
        Cf::DeviceListCounts,
        user_id.as_bytes(),
        keys::u64_be(count),
    );
    Ok(())
}

/// What changed for one viewer between two positions.
#[derive(Default)]
pub struct DeviceListChanges {
    pub changed: BTreeSet<OwnedUserId>,
    pub left: BTreeSet<OwnedUserId>,
}

/// Whether sync's `device_lists` section has anything (then a long-polling sync answers).
/// What [`Services::sync_device_lists`] needs of one joined or left room of a `/sync` answer,
/// read before the room's part is serialised: the member events it carries.
pub struct SyncedRoom {
    pub room_id: OwnedRoomId,
    pub joined: bool,
    /// The users of its `m.room.member` events (timeline, state, state after under either
    /// name), with the
    /// membership each says.
    pub members: Vec<(OwnedUserId, String)>,
}

impl SyncedRoom {
    /// A room's part of the answer, from the events of its timeline and state sections.
    pub fn read<'a>(
        room_id: &RoomId,
        joined: bool,
        events: impl IntoIterator<Item = &'a ClientEvent>,
    ) -> Self {
        let members = events
            .into_iter()
            .filter(|event| event.event_type() == Some("m.room.member"))
            .filter_map(|event| {
                let member = UserId::parse(event.state_key()?).ok()?;
                Some((member, event.membership()?.to_owned()))
            })
            .collect();
        Self {
            room_id: room_id.to_owned(),
            joined,
            members,
        }
    }
}

pub fn has_changes(device_lists: &Value) -> bool {
    ["changed", "left"]
        .iter()
        .any(|k| device_lists[k].as_array().is_some_and(|a| !a.is_empty()))
}

impl Services {
    /// Deletes devices (with their keys and to-device queues) and announces the change.
    ///
    /// `Devices::delete_many` writes its batch without a stream count (the device service
    /// does not own the stream), so the announcement is a second, counted commit right after:
    /// a crash in between loses only the announcement, and clients re-query keys anyway when
    /// a device they knew fails to answer.
    pub async fn delete_devices(
        &self,
        user_id: &UserId,
        device_ids: &[ruma::OwnedDeviceId],
    ) -> Result<()> {
        if self.devices.delete_many(user_id, device_ids).await? {
            self.announce_device_list_change(&[user_id]).await?;
            for device_id in device_ids {
                self.federate_device_change(user_id, device_id, true).await;
            }
        }
        Ok(())
    }

    /// Creates an appservice's device for one of its users (MSC4190) and announces it, as
    /// `delete_devices` announces a deletion. Returns false when the device existed.
    pub async fn create_appservice_device(
        &self,
        user_id: &UserId,
        device_id: &ruma::DeviceId,
        display_name: Option<String>,
    ) -> Result<bool> {
        if !self
            .devices
            .create_tokenless(user_id, device_id, display_name)
            .await?
        {
            return Ok(false);
        }
        self.announce_device_list_change(&[user_id]).await?;
        self.federate_device_change(user_id, device_id, false).await;
        Ok(true)
    }

    /// Deletes all of a user's devices except `keep`, announcing it (see `delete_devices`).
    pub async fn delete_all_devices(
        &self,
        user_id: &UserId,
        keep: Option<&ruma::DeviceId>,
    ) -> Result<()> {
        // Listed first, to tell other servers which devices went.
        let before = self.devices.list(user_id)?;
        if self.devices.delete_all(user_id, keep).await? {
            self.announce_device_list_change(&[user_id]).await?;
            for (device_id, _) in before {
                if Some(&*device_id) != keep {
                    self.federate_device_change(user_id, &device_id, true).await;
                }
            }
        }
        Ok(())
    }

    /// Records, under one new stream count, a device-list change of each of `users`.
    pub async fn announce_device_list_change(&self, users: &[&UserId]) -> Result<u64> {
        let store = self.store.clone();
        let count = self
            .timeline
            .commit_counted(Batch::new(), |batch, count| {
                // Under the stream lock: `device_list_counts` cannot move concurrently.
                for user in users {
                    change_into(&store, batch, count, user)?;
                }
                Ok(())
            })
            .await?;
        self.push_device_list_changes(users)?;
        Ok(count)
    }

    /// Sync's `device_lists`: empty on an initial sync (the client queries everyone it needs).
    ///
    /// Joins and leaves are read off the member events of the response's rooms (`rooms`, as
    /// built for this response): the rooms with nothing new cost nothing here. A room the user
    /// joined or left in the window costs one scan of its members. The device-list stream is
    /// read only when `stream_written` (someone's devices may have changed in the window).
    pub fn sync_device_lists(
        &self,
        user_id: &UserId,
        since: Option<u64>,
        upto: u64,
        rooms: &[SyncedRoom],
        stream_written: bool,
    ) -> Result<Value> {
        let Some(since) = since else {
            return Ok(json!({ "changed": [], "left": [] }));
        };
        let mut joined_now = BTreeSet::new();
        let mut left_candidates = BTreeSet::new();
        for room in rooms {
            let own_change = self
                .members
                .membership(&room.room_id, user_id)?
                .is_some_and(|m| m.count > since && m.count <= upto);
            if own_change {
                // Joined: every member is new to the client; left: maybe none is shared.
                for (member, state) in self.members.of_room(&room.room_id)? {
                    if state == MembershipState::Join && member != user_id {
                        if room.joined {
                            joined_now.insert(member);
                        } else {
                            left_candidates.insert(member);
                        }
                    }
                }
                continue;
            }
            if !room.joined {
                continue;
            }
            for (member, membership) in &room.members {
                if member == user_id {
                    continue;
                }
                match membership.as_str() {
                    "join" => {
                        joined_now.insert(member.clone());
                    }
                    "leave" | "ban" => {
                        left_candidates.insert(member.clone());
                    }
                    _ => {}
                }
            }
        }
        let changes = self.collect_changes(
            user_id,
            since,
            upto,
            joined_now,
            left_candidates,
            stream_written,
        )?;
        Ok(json!({ "changed": changes.changed, "left": changes.left }))
    }

    /// Users whose devices `user_id` should re-query because of what happened after `since` up
    /// to `upto` (`/keys/changes`): as [`Services::sync_device_lists`], but finding membership
    /// changes by looking at every room of the user (one seek each, members of the rooms with
    /// news).
    pub fn device_list_changes(
        &self,
        user_id: &UserId,
        since: u64,
        upto: u64,
    ) -> Result<DeviceListChanges> {
        self.device_list_changes_in(user_id, since, upto, None)
    }

    /// Like [`Services::device_list_changes`], looking only at `rooms` (those with events after
    /// `since`, as the recent activity knows them) when given: a point read each instead of
    /// every room of the user.
    pub fn device_list_changes_in(
        &self,
        user_id: &UserId,
        since: u64,
        upto: u64,
        rooms: Option<&std::collections::HashSet<ruma::OwnedRoomId>>,
    ) -> Result<DeviceListChanges> {
        let mut joined_now = BTreeSet::new();
        let mut left_candidates = BTreeSet::new();
        let memberships = match rooms {
            Some(rooms) => {
                let mut memberships = Vec::with_capacity(rooms.len());
                for room_id in rooms {
                    if let Some(membership) = self.members.membership(room_id, user_id)? {
                        memberships.push((room_id.clone(), membership));
                    }
                }
                memberships
            }
            None => self.members.rooms_of(user_id)?,
        };
        for (room_id, membership) in memberships {
            let (newest, _) = self.timeline.last_events(&room_id, upto, 1)?;
            if newest.first().is_none_or(|(count, _)| *count <= since) {
                continue;
            }
            let own_change = membership.count > since && membership.count <= upto;
            match membership.membership {
                MembershipState::Join => {
                    for (member, state) in self.members.of_room(&room_id)? {
                        if member == user_id {
                            continue;
                        }
                        let moved = own_change
                            || self
                                .members
                                .membership(&room_id, &member)?
                                .is_some_and(|m| m.count > since && m.count <= upto);
                        if !moved {
                            continue;
                        }
                        if state == MembershipState::Join {
                            joined_now.insert(member);
                        } else if !own_change {
                            left_candidates.insert(member);
                        }
                    }
                }
                MembershipState::Leave | MembershipState::Ban if own_change => {
                    for (member, state) in self.members.of_room(&room_id)? {
                        if state == MembershipState::Join && member != user_id {
                            left_candidates.insert(member);
                        }
                    }
                }
                _ => {}
            }
        }
        self.collect_changes(user_id, since, upto, joined_now, left_candidates, true)
    }

    /// Adds the recorded changes (`device_list_stream` after `since`, one seek) of users who
    /// share a joined room with `user_id` (or are them) to `joined_now`; keeps in `left` the
    /// candidates who share no joined room any more. The user's rooms are read only when
    /// needed.
    fn collect_changes(
        &self,
        user_id: &UserId,
        since: u64,
        upto: u64,
        joined_now: BTreeSet<OwnedUserId>,
        left_candidates: BTreeSet<OwnedUserId>,
        stream_written: bool,
    ) -> Result<DeviceListChanges> {
        let mut result = DeviceListChanges {
            changed: joined_now,
            left: BTreeSet::new(),
        };
        let mut joined: Option<Vec<OwnedRoomId>> = None;
        let mut joined_rooms = |services: &Services| -> Result<Vec<OwnedRoomId>> {
            if joined.is_none() {
                joined = Some(
                    services
                        .members
                        .rooms_of(user_id)?
                        .into_iter()
                        .filter(|(_, m)| m.membership == MembershipState::Join)
                        .map(|(room_id, _)| room_id)
                        .collect(),
                );
            }
            Ok(joined.clone().unwrap_or_default())
        };
        let start = keys::u64_be(since.saturating_add(1));
        let stream = stream_written.then(|| {
            self.store
                .scan_prefix_from(Cf::DeviceListStream, b"", &start)
        });
        for item in stream.into_iter().flatten() {
            let (key, _) = item?;
            let count = keys::parse_u64_be(key.get(..8).unwrap_or_default())
                .ok_or_else(|| Error::internal("corrupt device_list_stream key"))?;
            if count > upto {
                break;
            }
            let user = std::str::from_utf8(&key[8..])
                .ok()
                .and_then(|u| UserId::parse(u).ok())
                .ok_or_else(|| Error::internal("corrupt device_list_stream key"))?;
            if result.changed.contains(&user) {
                continue;
            }
            if user == user_id || self.shares_room(&joined_rooms(self)?, &user)? {
                result.changed.insert(user);
            }
        }
        for member in left_candidates {
            if !result.changed.contains(&member)
                && !self.shares_room(&joined_rooms(self)?, &member)?
            {
                result.left.insert(member);
            }
        }
        Ok(result)
    }
}
