//! The user directory: finding users to talk to by user ID or display name.
//!
//! Candidates are the people sharing a joined room with the searcher and the members of rooms
//! whose join rule is currently `public` (kept in `public_join_rooms` by [`PublicJoinRooms`], a
//! consumer of the commit pipeline).
//! Each room's members are one prefix scan, so a search costs the rooms involved, not the size
//! of the server. Deactivated accounts never appear.

use std::collections::BTreeSet;

use ruma::{
    CanonicalJsonValue, OwnedRoomId, OwnedUserId, RoomId, UserId,
    events::room::member::MembershipState,
};

use crate::{
    Error, Result,
    service::{
        Services,
        rooms::{
            pdu,
            timeline::pipeline::{AdoptedState, Appending, EventConsumer, Origin, Staged},
        },
    },
    store::{Batch, Cf},
};

/// `global` key set once `public_join_rooms` covers every room (see
/// [`Services::index_public_join_rooms`]).
const PUBLIC_JOIN_ROOMS_BUILT: &[u8] = b"public_join_rooms_built";

/// Keeps `public_join_rooms` (the rooms anyone may join, whose members any local user may
/// find) from each room's `m.room.join_rules` events.
pub struct PublicJoinRooms;

/// A room's join rule changed: in or out of the set.
struct JoinRuleChange {
    room_id: OwnedRoomId,
    public: bool,
}

impl EventConsumer for PublicJoinRooms {
    fn prepare_adopted_state(&self, state: &AdoptedState<'_>) -> Result<Option<Box<dyn Staged>>> {
        let join_rules = state.events.iter().find(|(_, pdu)| {
            pdu::str_field(pdu, "type") == Some("m.room.join_rules")
                && pdu::str_field(pdu, "state_key") == Some("")
        });
        Ok(Some(Box::new(JoinRuleChange {
            room_id: state.room_id.to_owned(),
            public: join_rules
                .is_some_and(|(_, pdu)| pdu::content_str(pdu, "join_rule") == Some("public")),
        })))
    }

    fn prepare(&self, event: &Appending<'_>) -> Result<Option<Box<dyn Staged>>> {
        if event.origin == Origin::Backfill || !event.is_state("m.room.join_rules", "") {
            return Ok(None);
        }
        Ok(Some(Box::new(JoinRuleChange {
            room_id: event.room_id.to_owned(),
            public: pdu::content_str(event.pdu, "join_rule") == Some("public"),
        })))
    }
}

impl Staged for JoinRuleChange {
    fn write(&mut self, batch: &mut Batch, _count: u64) -> Result<()> {
        if self.public {
            batch.put(Cf::PublicJoinRooms, self.room_id.as_bytes(), Vec::new());
        } else {
            batch.delete(Cf::PublicJoinRooms, self.room_id.as_bytes());
        }
        Ok(())
    }
}

/// One search result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryUser {
    pub user_id: OwnedUserId,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
}

impl Services {
    /// Fills `public_join_rooms` for rooms stored before the append path kept it: once per
    /// database, at start-up (a scan of every room, which only this one-off may do).
    pub fn index_public_join_rooms(&self) -> Result<()> {
        if self.store.contains(Cf::Global, PUBLIC_JOIN_ROOMS_BUILT)? {
            return Ok(());
        }
        let mut batch = Batch::new();
        for item in self.store.scan_prefix(Cf::Rooms, b"") {
            let (key, _) = item?;
            let Some(room_id) = std::str::from_utf8(&key)
                .ok()
                .and_then(|r| RoomId::parse(r).ok())
            else {
                continue;
            };
            let state = self.timeline.current_state(&room_id)?;
            let Some(event_id) = state.get(&("m.room.join_rules".to_owned(), String::new())) else {
                continue;
            };
            let public = self.timeline.pdu_json(event_id)?.is_some_and(|pdu| {
                matches!(pdu.get("content"), Some(CanonicalJsonValue::Object(content))
                    if matches!(content.get("join_rule"), Some(CanonicalJsonValue::String(r)) if r == "public"))
            });
            if public {
                batch.put(Cf::PublicJoinRooms, room_id.as_bytes(), Vec::new());
            }
        }
        batch.put(Cf::Global, PUBLIC_JOIN_ROOMS_BUILT, Vec::new());
        self.store.write(batch)?;
        Ok(())
    }

    /// Users matching `term` (case-insensitively, in their user ID or display name) that
    /// `searcher` may find, best first, at most `limit`; and whether more matched.
    pub fn search_users(
        &self,
        searcher: &UserId,
        term: &str,
        limit: usize,
    ) -> Result<(Vec<DirectoryUser>, bool)> {
        let term = term.trim().to_lowercase();
        let mut rooms: BTreeSet<OwnedRoomId> = self
            .members
            .rooms_of(searcher)?
            .into_iter()
            .filter(|(_, m)| m.membership == MembershipState::Join)
            .map(|(room_id, _)| room_id)
            .collect();
        for item in self.store.scan_prefix(Cf::PublicJoinRooms, b"") {
            let (key, _) = item?;
            let room_id = std::str::from_utf8(&key)
                .ok()
                .and_then(|r| RoomId::parse(r).ok())
                .ok_or_else(|| Error::internal("corrupt public_join_rooms key"))?;
            rooms.insert(room_id);
        }
        let mut candidates: BTreeSet<OwnedUserId> = BTreeSet::new();
        for room_id in &rooms {
            for (user_id, membership) in self.members.of_room(room_id)? {
                if membership == MembershipState::Join {
                    candidates.insert(user_id);
                }
            }
        }

        // (rank, no display name, user ID): prefix matches before substring matches, then
        // users with a profile, then by ID.
        let mut found: Vec<((u8, bool, OwnedUserId), DirectoryUser)> = Vec::new();
        for user_id in candidates {
            if !self.users.is_active(&user_id)? {
                continue;
            }
            let text = |field: &str| -> Result<Option<String>> {
                Ok(self
                    .users
                    .profile_field(&user_id, field)?
                    .and_then(|v| v.as_str().map(str::to_owned)))
            };
            let display_name = text("displayname")?;
            let id = user_id.as_str().to_lowercase();
            let name = display_name.as_deref().map(str::to_lowercase);
            let prefix = id[1..].starts_with(&term)
                || name
                    .as_deref()
                    .is_some_and(|n| n.split_whitespace().any(|w| w.starts_with(&term)));
            let matches =
                prefix || id.contains(&term) || name.as_deref().is_some_and(|n| n.contains(&term));
            if !matches {
                continue;
            }
            let user = DirectoryUser {
                user_id: user_id.clone(),
                avatar_url: text("avatar_url")?,
                display_name,
            };
            let rank = (u8::from(!prefix), user.display_name.is_none(), user_id);
            found.push((rank, user));
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        let limited = found.len() > limit;
        Ok((
            found
                .into_iter()
                .take(limit)
                .map(|(_, user)| user)
                .collect(),
            limited,
        ))
    }
}
