//! What a server admin sees of rooms: every room this server knows, described from its
//! current state, listed, searched and sorted.

use ruma::{OwnedRoomId, RoomId, UserId, events::room::member::MembershipState};
use serde_json::Value;

use crate::{
    Error, Result,
    service::{Services, rooms::directory::RoomDescription},
    store::{Batch, Cf},
};

/// A room as admins see it: its description and what only admins are told.
pub struct RoomOverview {
    pub description: RoomDescription,
    pub creator: Option<String>,
    pub federatable: bool,
    pub public: bool,
    pub guest_access: Option<String>,
    pub history_visibility: Option<String>,
    pub join_rules: Option<String>,
    pub joined_local_members: u64,
    pub state_events: u64,
    pub replacement_room: Option<String>,
}

/// How a room listing is sorted (Synapse's `order_by`; ties by room ID).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum RoomOrder {
    Name,
    CanonicalAlias,
    JoinedMembers,
    JoinedLocalMembers,
    Version,
    Creator,
    Encryption,
    Federatable,
    Public,
    JoinRules,
    GuestAccess,
    HistoryVisibility,
    StateEvents,
}

impl RoomOrder {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "name" | "alphabetical" => Self::Name,
            "canonical_alias" => Self::CanonicalAlias,
            "joined_members" | "size" => Self::JoinedMembers,
            "joined_local_members" => Self::JoinedLocalMembers,
            "version" => Self::Version,
            "creator" => Self::Creator,
            "encryption" => Self::Encryption,
            "federatable" => Self::Federatable,
            "public" => Self::Public,
            "join_rules" => Self::JoinRules,
            "guest_access" => Self::GuestAccess,
            "history_visibility" => Self::HistoryVisibility,
            "state_events" => Self::StateEvents,
            _ => return None,
        })
    }

    /// Whether the natural order is largest first (sizes), as Synapse sorts them.
    fn largest_first(self) -> bool {
        matches!(
            self,
            Self::JoinedMembers | Self::JoinedLocalMembers | Self::StateEvents
        )
    }
}

impl Services {
    /// The admin who blocked a room, if it is blocked (one point read).
    pub fn room_blocked_by(&self, room_id: &RoomId) -> Result<Option<String>> {
        Ok(self
            .store
            .get(Cf::BlockedRooms, room_id.as_bytes())?
            .map(|admin| String::from_utf8_lossy(&admin).into_owned()))
    }

    /// Blocks a room (known here or not) for this server's users, or lifts the block.
    pub fn set_room_blocked(&self, room_id: &RoomId, admin: &UserId, block: bool) -> Result<()> {
        let mut batch = Batch::new();
        if block {
            batch.put(Cf::BlockedRooms, room_id.as_bytes(), admin.as_bytes());
        } else {
            batch.delete(Cf::BlockedRooms, room_id.as_bytes().to_vec());
        }
        self.store.write(batch)?;
        Ok(())
    }

    /// Refuses joining, knocking on and inviting to a blocked room: 403 `M_FORBIDDEN`.
    pub fn check_room_not_blocked(&self, room_id: &RoomId) -> Result<()> {
        if self.store.contains(Cf::BlockedRooms, room_id.as_bytes())? {
            return Err(Error::forbidden(
                "This room has been blocked on this server.",
            ));
        }
        Ok(())
    }

    /// One room, described for admins; `None` for a room this server does not know.
    pub fn room_overview(&self, room_id: &RoomId) -> Result<Option<RoomOverview>> {
        if self.timeline.room(room_id)?.is_none() {
            return Ok(None);
        }
        let description = self.describe_room(room_id)?;
        let state = self.timeline.current_state(room_id)?;
        let content = |event_type: &str| -> Result<Value> {
            Ok(match state.get(&(event_type.to_owned(), String::new())) {
                Some(event_id) => self.timeline.event_fields(room_id, event_id)?["content"].take(),
                None => Value::Null,
            })
        };
        let text = |value: &Value, field: &str| value[field].as_str().map(str::to_owned);
        let create = content("m.room.create")?;
        // The creator: the create event's sender (`creator` before room version 11).
        let creator = match state.get(&("m.room.create".to_owned(), String::new())) {
            Some(event_id) => text(&self.timeline.event_fields(room_id, event_id)?, "sender"),
            None => None,
        };
        let members = self.members.of_room(room_id)?;
        let joined_local_members = members
            .iter()
            .filter(|(user, m)| {
                *m == MembershipState::Join && user.server_name() == self.server_name
            })
            .count() as u64;
        Ok(Some(RoomOverview {
            creator,
            federatable: create["m.federate"].as_bool().unwrap_or(true),
            public: self.is_published(room_id)?,
            guest_access: text(&content("m.room.guest_access")?, "guest_access"),
            history_visibility: text(&content("m.room.history_visibility")?, "history_visibility"),
            join_rules: text(&content("m.room.join_rules")?, "join_rule"),
            joined_local_members,
            state_events: state.len() as u64,
            replacement_room: text(&content("m.room.tombstone")?, "replacement_room"),
            description,
        }))
    }

    /// A page of the rooms this server knows whose name, canonical alias or ID contains
    /// `search` (any case), sorted; and how many match. One scan of the rooms, each
    /// described from its state.
    pub fn admin_list_rooms(
        &self,
        search: Option<&str>,
        order: RoomOrder,
        backwards: bool,
        from: usize,
        limit: usize,
    ) -> Result<(Vec<RoomOverview>, usize)> {
        let search = search.map(str::to_lowercase);
        let mut rooms = Vec::new();
        for item in self.store.scan_prefix(Cf::Rooms, b"") {
            let (key, _) = item?;
            let Some(room_id) = std::str::from_utf8(&key)
                .ok()
                .and_then(|r| OwnedRoomId::try_from(r).ok())
            else {
                continue;
            };
            let Some(room) = self.room_overview(&room_id)? else {
                continue;
            };
            if let Some(term) = &search {
                let d = &room.description;
                let found = [
                    d.name.as_deref(),
                    d.canonical_alias.as_deref(),
                    Some(d.room_id.as_str()),
                ]
                .into_iter()
                .flatten()
                .any(|text| text.to_lowercase().contains(term.as_str()));
                if !found {
                    continue;
                }
            }
            rooms.push(room);
        }
        rooms.sort_by(|a, b| {
            let (da, db) = (&a.description, &b.description);
            let by = match order {
                RoomOrder::Name => da.name.cmp(&db.name),
                RoomOrder::CanonicalAlias => da.canonical_alias.cmp(&db.canonical_alias),
                RoomOrder::JoinedMembers => da.num_joined_members.cmp(&db.num_joined_members),
                RoomOrder::JoinedLocalMembers => {
                    a.joined_local_members.cmp(&b.joined_local_members)
                }
                RoomOrder::Version => da.room_version.as_str().cmp(db.room_version.as_str()),
                RoomOrder::Creator => a.creator.cmp(&b.creator),
                RoomOrder::Encryption => da.encryption.cmp(&db.encryption),
                RoomOrder::Federatable => a.federatable.cmp(&b.federatable),
                RoomOrder::Public => a.public.cmp(&b.public),
                RoomOrder::JoinRules => a.join_rules.cmp(&b.join_rules),
                RoomOrder::GuestAccess => a.guest_access.cmp(&b.guest_access),
                RoomOrder::HistoryVisibility => a.history_visibility.cmp(&b.history_visibility),
                RoomOrder::StateEvents => a.state_events.cmp(&b.state_events),
            };
            let by = if order.largest_first() {
                by.reverse()
            } else {
                by
            };
            let by = if backwards { by.reverse() } else { by };
            by.then_with(|| da.room_id.cmp(&db.room_id))
        });
        let total = rooms.len();
        let page = rooms.into_iter().skip(from).take(limit).collect();
        Ok((page, total))
    }
}

impl Services {
    /// Gives `target` (a local account) the power of the room's most powerful local member,
    /// through a power-levels event that member sends; a target outside a room that is not
    /// public is invited by that member. 400 when no local member may change power levels.
    pub async fn make_room_admin(&self, room_id: &RoomId, target: &UserId) -> Result<()> {
        if self.timeline.room(room_id)?.is_none() {
            return Err(Error::not_found("Room not found"));
        }
        let mut strongest: Option<(ruma::OwnedUserId, i64)> = None;
        for (user_id, membership) in self.members.of_room(room_id)? {
            if membership != MembershipState::Join || user_id.server_name() != self.server_name {
                continue;
            }
            let power = self.power_level(room_id, &user_id)?;
            if strongest.as_ref().is_none_or(|(_, best)| power > *best) {
                strongest = Some((user_id, power));
            }
        }
        let needed = self.state_power_needed(room_id, "m.room.power_levels")?;
        let Some((admin, power)) = strongest.filter(|(_, power)| *power >= needed) else {
            return Err(Error::invalid_param(
                "No local member of the room may change its power levels.",
            ));
        };
        let state = self.timeline.current_state(room_id)?;
        let mut content = match state.get(&("m.room.power_levels".to_owned(), String::new())) {
            Some(event_id) => self.timeline.event_fields(room_id, event_id)?["content"].take(),
            None => serde_json::json!({}),
        };
        let users = content
            .as_object_mut()
            .ok_or_else(|| Error::internal("power levels that are no object"))?
            .entry("users")
            .or_insert_with(|| serde_json::json!({}));
        // A room creator's power (room version 12) is above any number: give the highest
        // level anyone has, at least 100.
        let level = if power == i64::MAX {
            users
                .as_object()
                .into_iter()
                .flat_map(|u| u.values())
                .filter_map(Value::as_i64)
                .max()
                .unwrap_or(100)
                .max(100)
        } else {
            power
        };
        // The most powerful local member already is (the target asked for itself).
        if admin != target {
            users[target.as_str()] = serde_json::json!(level);
            self.send_state_event(room_id, &admin, "m.room.power_levels", "", content)
                .await?;
        }
        let present = self.members.membership(room_id, target)?.is_some_and(|m| {
            matches!(
                m.membership,
                MembershipState::Join | MembershipState::Invite
            )
        });
        if !present && self.describe_room(room_id)?.join_rule != "public" {
            self.set_membership(room_id, &admin, target, MembershipState::Invite, None)
                .await?;
        }
        Ok(())
    }
}
