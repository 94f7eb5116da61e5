//! Simplified sliding sync (MSC4186, as ruma's `v5` types and Synapse speak it): what Element X
//! and every client built on matrix-rust-sdk sync with.
//!
//! A request names lists (ranges over the user's rooms, filtered and ordered by latest
//! activity), room subscriptions, and extensions. The answer carries each list's `count`,
//! the rooms in the ranges and subscriptions that are new to the connection or changed since
//! the client's position, and the extensions' data. How it stays cheap:
//!
//! - the user's rooms (membership, order, bump stamp, encryption, type) are kept in memory
//!   and updated from the recent activity ([`room_list`]): a quiet request reads nothing;
//! - what the connection's client holds of each room is kept per position ([`connection`]):
//!   only rooms that are new to it or changed are read and sent;
//! - extensions look only at the rooms the recent activity names ([`extensions`]).
//!
//! Long-polls wait on the same commit notifications as `/sync`.

pub mod connection;
mod extensions;
mod room;
pub mod room_list;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    hash::{Hash, Hasher},
    sync::Arc,
    time::Duration,
};

use ruma::{DeviceId, OwnedRoomId, RoomId, UserId, events::room::member::MembershipState};
use serde_json::{Map, Value, json};

use self::{
    connection::{Connection, RoomSent, connection_key, format_pos, parse_pos, unknown_pos},
    room_list::{ListRoom, RoomLists},
};
use super::client_event::Viewer;
use crate::{
    Result,
    service::{Services, metrics::SyncApi},
    store::Batch,
};

/// The most timeline events one room gets in one answer (larger limits are clamped).
pub const MAX_TIMELINE_LIMIT: u64 = 100;
/// The most rooms one list's ranges may select in one answer.
pub const MAX_RANGE_ROOMS: u64 = 1000;

/// The sliding-sync state shared by all requests: connections in use and users' room lists.
pub struct Sliding {
    connections: quick_cache::sync::Cache<Vec<u8>, Arc<tokio::sync::Mutex<Option<Connection>>>>,
    pub room_lists: RoomLists,
}

impl Default for Sliding {
    fn default() -> Self {
        Self {
            connections: quick_cache::sync::Cache::new(1024),
            room_lists: RoomLists::default(),
        }
    }
}

/// One sliding-sync request, as the service takes it.
pub struct SlidingRequest<'a> {
    pub device_id: &'a DeviceId,
    pub conn_id: String,
    pub pos: Option<String>,
    pub timeout: Duration,
    pub lists: BTreeMap<String, ListRequest>,
    pub subscriptions: BTreeMap<OwnedRoomId, RoomConfig>,
    pub extensions: ExtensionsRequest,
}

/// A list: ranges into the filtered, ordered rooms, and what each room gets.
#[derive(Clone, Debug, Default)]
pub struct ListRequest {
    /// Inclusive `[start, end]` ranges.
    pub ranges: Vec<(u64, u64)>,
    pub room: RoomConfig,
    pub filters: ListFilters,
}

/// What each room of a list or subscription gets.
#[derive(Clone, Debug, Default)]
pub struct RoomConfig {
    pub timeline_limit: u64,
    pub required_state: RequiredState,
}

impl RoomConfig {
    /// Two configs for one room (it is in several lists or subscribed): the larger timeline,
    /// the union of the state.
    fn merge(&mut self, other: &RoomConfig) {
        self.timeline_limit = self.timeline_limit.max(other.timeline_limit);
        self.required_state
            .entries
            .extend(other.required_state.entries.iter().cloned());
    }
}

/// A room's config in one answer: a list's or subscription's own (shared by its rooms, its
/// fingerprint worked out once), or the merge of several (a room in two lists, or subscribed).
enum RoomSetting<'r> {
    Shared(&'r RoomConfig, u64),
    Merged(RoomConfig),
}

impl<'r> RoomSetting<'r> {
    fn shared(config: &'r RoomConfig, fingerprint: u64) -> Self {
        Self::Shared(config, fingerprint)
    }

    fn merge(&mut self, other: &RoomConfig) {
        if let Self::Shared(config, _) = self {
            *self = Self::Merged((*config).clone());
        }
        if let Self::Merged(config) = self {
            config.merge(other);
        }
    }

    fn config(&self) -> &RoomConfig {
        match self {
            Self::Shared(config, _) => config,
            Self::Merged(config) => config,
        }
    }

    fn fingerprint(&self) -> u64 {
        match self {
            Self::Shared(_, fingerprint) => *fingerprint,
            Self::Merged(config) => config.required_state.fingerprint(),
        }
    }
}

/// `required_state`: `[type, state_key]` pairs, with `*` for any type or key, `$ME` for the
/// requester and `["m.room.member", "$LAZY"]` for the senders of the timeline sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequiredState {
    entries: BTreeSet<(String, String)>,
}

impl RequiredState {
    pub fn new(entries: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            entries: entries.into_iter().collect(),
        }
    }

    /// A fingerprint: a room sent with another one gets its state again.
    fn fingerprint(&self) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.entries.hash(&mut hasher);
        hasher.finish()
    }

    /// Whether every state event is asked for (a `*` type: the spec lets us send all).
    fn everything(&self) -> bool {
        self.entries.iter().any(|(kind, _)| kind == "*")
    }

    /// Whether the timeline's senders' member events are asked for.
    fn lazy_members(&self) -> bool {
        self.entries
            .iter()
            .any(|(kind, key)| kind == "m.room.member" && key == "$LAZY")
    }

    /// Whether the state event `(kind, key)` is asked for, `me` being the requester.
    fn wants(&self, kind: &str, key: &str, me: &str) -> bool {
        self.entries.iter().any(|(k, s)| {
            (k == "*" || k == kind) && (s == "*" || s == key || (s == "$ME" && key == me))
        })
    }

    /// The exact `(type, state key)` pairs asked for (`$ME` resolved), without wildcards.
    fn exact<'a>(&'a self, me: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.entries.iter().filter_map(move |(kind, key)| {
            let key = if key == "$ME" { me } else { key.as_str() };
            (kind != "*" && key != "*" && key != "$LAZY").then_some((kind.as_str(), key))
        })
    }

    /// The types asked for with any state key.
    fn any_key_types(&self) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .filter(|(kind, key)| kind != "*" && key == "*")
            .map(|(kind, _)| kind.as_str())
    }
}

/// A list's filters (those ruma's types carry).
#[derive(Clone, Debug, Default)]
pub struct ListFilters {
    pub is_dm: Option<bool>,
    pub is_encrypted: Option<bool>,
    pub is_invite: Option<bool>,
    /// Room types to keep (`None` in the list: untyped rooms); empty: all.
    pub room_types: Vec<Option<String>>,
    pub not_room_types: Vec<Option<String>>,
}

impl ListFilters {
    fn keeps(&self, room: &ListRoom, dms: &HashSet<OwnedRoomId>) -> bool {
        let membership = &room.membership.membership;
        if self
            .is_dm
            .is_some_and(|dm| dm != dms.contains(&room.room_id))
        {
            return false;
        }
        if let Some(encrypted) = self.is_encrypted
            && room.encrypted != Some(encrypted)
        {
            return false;
        }
        if self
            .is_invite
            .is_some_and(|invite| invite != (*membership == MembershipState::Invite))
        {
            return false;
        }
        if !self.room_types.is_empty() || !self.not_room_types.is_empty() {
            let Some(room_type) = &room.room_type else {
                return false;
            };
            if self.not_room_types.contains(room_type) {
                return false;
            }
            if !self.room_types.is_empty() && !self.room_types.contains(room_type) {
                return false;
            }
        }
        true
    }
}

/// The extensions asked for (`None`/`false`: not enabled).
#[derive(Clone, Debug, Default)]
pub struct ExtensionsRequest {
    pub to_device: Option<ToDeviceRequest>,
    pub e2ee: bool,
    pub account_data: Option<Scope>,
    pub receipts: Option<Scope>,
    pub typing: Option<Scope>,
    /// MSC4308: at most this many thread-subscription changes.
    pub thread_subscriptions: Option<usize>,
}

/// The `to_device` extension: messages after `since` (acknowledging those up to it).
#[derive(Clone, Debug)]
pub struct ToDeviceRequest {
    pub since: Option<u64>,
    pub limit: usize,
}

/// Which rooms an extension covers: those of the named lists' ranges (`None`: every list) and
/// the named subscriptions (`None`: every room of the answer's lists and subscriptions).
#[derive(Clone, Debug, Default)]
pub struct Scope {
    pub lists: Option<Vec<String>>,
    pub rooms: Option<Vec<ScopeRoom>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScopeRoom {
    /// `*`: every subscribed room (and every room of the lists' ranges).
    All,
    Room(OwnedRoomId),
}

/// What one pass over a request found.
/// A sliding-sync answer: each room's part written straight from its stored events (see
/// [`room::SlidingRoom`]) as soon as it is built, so that only its text is held.
#[derive(serde::Serialize)]
pub struct SlidingAnswer {
    pos: String,
    lists: Map<String, Value>,
    rooms: BTreeMap<String, Box<serde_json::value::RawValue>>,
    extensions: Value,
}

struct Answer {
    body: SlidingAnswer,
    sent: Vec<(OwnedRoomId, RoomSent)>,
    /// Rooms or extension data (list counts alone are not news).
    news: bool,
}

impl Services {
    /// Answers a sliding-sync request: at once when there is something to send (or the
    /// request starts a connection, or has no timeout), else when something happens, or at
    /// the timeout.
    pub async fn sliding_sync(
        &self,
        user_id: &UserId,
        request: SlidingRequest<'_>,
    ) -> Result<SlidingAnswer> {
        let answer = self.sliding_sync_answer(user_id, request).await;
        if answer.is_ok() {
            self.metrics.sync_response(SyncApi::sliding_sync);
        }
        answer
    }

    async fn sliding_sync_answer(
        &self,
        user_id: &UserId,
        request: SlidingRequest<'_>,
    ) -> Result<SlidingAnswer> {
        let mut committed = self.timeline.subscribe();
        let position = match &request.pos {
            None => None,
            Some(pos) => {
                let (position, count) = parse_pos(pos).ok_or_else(unknown_pos)?;
                if count > self.timeline.current_count() {
                    return Err(unknown_pos());
                }
                Some((position, count))
            }
        };
        let from = position.map(|(_, count)| count);
        // The client has the to-device messages up to `since`.
        if let Some(since) = request.extensions.to_device.as_ref().and_then(|t| t.since) {
            self.acknowledge_to_device(user_id, request.device_id, since)?;
        }
        let key = connection_key(user_id, request.device_id, &request.conn_id);
        let cell = self
            .sliding
            .connections
            .get_or_insert_with(&key, || {
                Ok::<_, std::convert::Infallible>(Arc::new(tokio::sync::Mutex::new(None)))
            })
            .unwrap_or_else(|never| match never {});
        let deadline = tokio::time::Instant::now() + request.timeout;
        let mut parked = None;
        loop {
            {
                let mut guard = cell.lock().await;
                let mut batch = Batch::new();
                let connection = match (guard.take(), position) {
                    (_, None) => Connection::fresh(&self.store, key.clone(), &mut batch)?,
                    (Some(connection), Some(_)) => connection,
                    (None, Some(_)) => {
                        Connection::load(&self.store, key.clone())?.ok_or_else(unknown_pos)?
                    }
                };
                let connection = guard.insert(connection);
                if let Some((position, _)) = position {
                    connection
                        .use_position(position, &mut batch)
                        .map_err(|_| unknown_pos())?;
                }
                let now = self.timeline.current_count();
                let answer = self.sliding_answer(user_id, &request, connection, from, now)?;
                let last_chance = tokio::time::Instant::now() >= deadline;
                if answer.news || position.is_none() || request.timeout.is_zero() || last_chance {
                    let new_position = connection.record_answer(answer.sent, &mut batch);
                    // A connection's record does not wait for the disk: lost to a power cut,
                    // the client's next position is unknown and it starts the connection
                    // again (`M_UNKNOWN_POS`), as it must after any server-side reset.
                    self.store.write_without_waiting(batch)?;
                    let mut body = answer.body;
                    body.pos = format_pos(new_position, now);
                    return Ok(body);
                }
                if !batch.is_empty() {
                    self.store.write_without_waiting(batch)?;
                }
            }
            // Nothing yet: wait for a commit (or the timeout), then look again.
            parked.get_or_insert_with(|| self.metrics.long_poll(SyncApi::sliding_sync));
            if tokio::time::timeout_at(deadline, committed.changed())
                .await
                .is_err()
            {
                // Timed out: one more pass answers with whatever there is.
                continue;
            }
        }
    }

    /// One pass: the lists, the rooms to send and the extensions.
    fn sliding_answer<'r>(
        &self,
        user_id: &UserId,
        request: &'r SlidingRequest<'_>,
        connection: &Connection,
        from: Option<u64>,
        now: u64,
    ) -> Result<Answer> {
        let viewer = Viewer {
            user_id,
            device_id: Some(request.device_id),
        };
        let mut rooms = self.list_rooms(user_id, now)?;
        // Invites from users the user ignores are not listed (a read per invite, and only
        // when the user ignores someone), nor any while the user blocks invites (MSC4380).
        let ignored = self.ignored_users(user_id)?;
        let invites_blocked = self.invites_blocked(user_id)?;
        if invites_blocked || !ignored.is_empty() {
            let mut hidden = HashSet::new();
            for room in &rooms {
                if room.membership.membership == MembershipState::Invite
                    && (invites_blocked || self.invited_by(&room.membership.event_id, &ignored)?)
                {
                    hidden.insert(room.room_id.clone());
                }
            }
            rooms.retain(|room| !hidden.contains(&room.room_id));
        }
        let dms = self.direct_rooms(user_id)?;

        // The lists: filtered, ordered by latest activity, counted; the rooms in their ranges.
        let mut lists = Map::new();
        let mut in_ranges: BTreeMap<String, Vec<OwnedRoomId>> = BTreeMap::new();
        let mut relevant: Vec<OwnedRoomId> = Vec::new();
        // Each room's config: its list's (shared, fingerprinted once), or a merge of several.
        let mut configs: HashMap<OwnedRoomId, RoomSetting<'_>> = HashMap::new();
        let mut add_config =
            |room_id: &OwnedRoomId, config: &'r RoomConfig, fingerprint: u64| match configs
                .get_mut(room_id)
            {
                Some(existing) => existing.merge(config),
                None => {
                    configs.insert(room_id.clone(), RoomSetting::shared(config, fingerprint));
                    relevant.push(room_id.clone());
                }
            };
        for (name, list) in &request.lists {
            let mut kept: Vec<&ListRoom> = rooms
                .iter()
                .map(|room| &**room)
                .filter(|room| listed(room, from) && list.filters.keeps(room, &dms))
                .collect();
            kept.sort_by(|a, b| {
                b.activity
                    .cmp(&a.activity)
                    .then_with(|| a.room_id.cmp(&b.room_id))
            });
            lists.insert(name.clone(), json!({ "count": kept.len() }));
            let mut chosen = Vec::new();
            let mut chosen_set: HashSet<&RoomId> = HashSet::new();
            for &(start, end) in &list.ranges {
                let end = end.min(start.saturating_add(MAX_RANGE_ROOMS - 1));
                for room in kept
                    .iter()
                    .skip(usize::try_from(start).unwrap_or(usize::MAX))
                    .take(usize::try_from(end - start + 1).unwrap_or(usize::MAX))
                {
                    if chosen_set.insert(&room.room_id) {
                        chosen.push(room.room_id.clone());
                    }
                }
            }
            let fingerprint = list.room.required_state.fingerprint();
            for room_id in &chosen {
                add_config(room_id, &list.room, fingerprint);
            }
            in_ranges.insert(name.clone(), chosen);
        }
        // Subscriptions: rooms the user has a membership in (no peeking).
        let by_id: HashMap<&RoomId, &ListRoom> =
            rooms.iter().map(|r| (r.room_id.as_ref(), &**r)).collect();
        for (room_id, config) in &request.subscriptions {
            if !by_id.contains_key::<RoomId>(room_id) {
                continue;
            }
            add_config(room_id, config, config.required_state.fingerprint());
        }

        // The rooms to send: new to the connection, changed, or asked for with more.
        let mut rooms_out = BTreeMap::new();
        let mut sent = Vec::new();
        let mut initial_rooms = HashSet::new();
        for room_id in &relevant {
            let (Some(room), Some(setting)) = (by_id.get::<RoomId>(room_id), configs.get(room_id))
            else {
                continue;
            };
            let (config, fingerprint) = (setting.config(), setting.fingerprint());
            let before = connection.sent(room_id);
            let due = match before {
                None => true,
                Some(before) => {
                    before.upto < room.activity
                        || before.config != fingerprint
                        || before.timeline_limit < config.timeline_limit
                        || before.joined != (room.membership.membership == MembershipState::Join)
                }
            };
            if !due {
                continue;
            }
            if let Some((data, record)) = self.sliding_room(
                viewer,
                room,
                config,
                fingerprint,
                before,
                from,
                now,
                dms.contains(room_id),
            )? {
                if data.fields.get("initial") == Some(&Value::Bool(true)) {
                    initial_rooms.insert(room_id.clone());
                }
                // Serialised at once: the events it holds (parsed, whole) go before the next
                // room is read, and only the text stays until the answer is sent.
                rooms_out.insert(room_id.to_string(), serde_json::value::to_raw_value(&data)?);
                sent.push((room_id.clone(), record));
            }
        }

        let scope = extensions::Scoping {
            in_ranges: &in_ranges,
            relevant: &relevant,
            initial: &initial_rooms,
        };
        let (extensions, extension_news) =
            self.sliding_extensions(viewer, request, &scope, from, now)?;
        let news = !rooms_out.is_empty() || extension_news;
        Ok(Answer {
            body: SlidingAnswer {
                pos: String::new(),
                lists,
                rooms: rooms_out,
                extensions,
            },
            sent,
            news,
        })
    }

    /// The rooms the user's `m.direct` account data names (DMs).
    fn direct_rooms(&self, user_id: &UserId) -> Result<HashSet<OwnedRoomId>> {
        let Some(raw) = self.account_data.get(user_id, None, "m.direct")? else {
            return Ok(HashSet::new());
        };
        let content: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
        Ok(content
            .as_object()
            .into_iter()
            .flat_map(|users| users.values())
            .filter_map(Value::as_array)
            .flatten()
            .filter_map(|room| room.as_str().and_then(|r| RoomId::parse(r).ok()))
            .collect())
    }
}

/// Whether a room belongs in lists at all: joined, invited, knocked and banned rooms do; a
/// left room when the user was kicked, or in the answer that covers their own leave.
fn listed(room: &ListRoom, from: Option<u64>) -> bool {
    match room.membership.membership {
        MembershipState::Join
        | MembershipState::Invite
        | MembershipState::Knock
        | MembershipState::Ban => true,
        MembershipState::Leave => {
            !room.left_by_self || from.is_some_and(|from| room.membership.count > from)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_state_matches_wildcards_me_and_exact_pairs() {
        let state = RequiredState::new([
            ("m.room.name".into(), "".into()),
            ("m.room.member".into(), "$ME".into()),
            ("m.room.member".into(), "$LAZY".into()),
            ("m.space.child".into(), "*".into()),
        ]);
        let me = "@me:x";
        assert!(state.wants("m.room.name", "", me));
        assert!(!state.wants("m.room.name", "x", me));
        assert!(state.wants("m.room.member", me, me));
        assert!(!state.wants("m.room.member", "@other:x", me));
        assert!(state.wants("m.space.child", "!any:x", me));
        assert!(state.lazy_members());
        assert!(!state.everything());
        assert_eq!(
            state.exact(me).collect::<Vec<_>>(),
            vec![("m.room.member", me), ("m.room.name", "")]
        );
        assert_eq!(
            state.any_key_types().collect::<Vec<_>>(),
            vec!["m.space.child"]
        );
        let all = RequiredState::new([("*".into(), "*".into())]);
        assert!(all.everything() && all.wants("anything", "at all", me));
        assert_ne!(state.fingerprint(), all.fingerprint());
    }
}
