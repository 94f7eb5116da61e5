//! State resolution where a room's DAG forks.
//!
//! A server's own events form one chain (the append path holds a per-room lock), but events
//! from other servers will not: two events may share a parent, and the room then has several
//! forward extremities, each with its own state. The state before an event that merges them is
//! the *resolution* of the states after each of its `prev_events`, computed by ruma's state
//! resolution v2 (`ruma::state_res::resolve`), or v2.1 in room version 12, which also considers
//! the *conflicted state subgraph*. This module supplies what that algorithm needs from our
//! storage: full auth chains and the conflicted state subgraph, both walked iteratively over the
//! stored PDUs, and an event loader. It knows nothing about where the states come from, so
//! federation can call [`Timeline::resolve_state`] unchanged.
//!
//! Deviation: room version 1 specifies state resolution v1, which ruma does not implement; v1
//! rooms are resolved with the v2.0 rules (the same choice the crate documents for best-effort
//! support of old versions).

use std::{
    cell::RefCell,
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
};

use ruma::{
    EventId, OwnedEventId, RoomVersionId,
    events::StateEventType,
    room_version_rules::{RoomVersionRules, StateResolutionV2Rules},
    state_res::{self, StateMap, utils::event_id_set::EventIdSet},
};

use super::{event::Pdu, timeline::Timeline};
use crate::{
    Error, Result,
    store::{Cf, Store, keys},
};

/// A room state as the timeline hands it out: `(event type, state key)` → event ID.
pub type State = HashMap<(String, String), OwnedEventId>;

/// The v2 rules a room version resolves state with (see the module note about v1).
pub fn v2_rules(rules: &RoomVersionRules) -> StateResolutionV2Rules {
    rules
        .state_res
        .v2_rules()
        .copied()
        .unwrap_or(StateResolutionV2Rules::V2_0)
}

/// Reads stored PDUs once per resolution: the algorithm fetches the same events many times
/// while sorting, and each fetch would otherwise be two RocksDB reads and a parse.
struct Loader<'a> {
    timeline: &'a Timeline,
    rules: &'a RoomVersionRules,
    cache: RefCell<HashMap<OwnedEventId, Option<Arc<Pdu>>>>,
}

impl<'a> Loader<'a> {
    fn new(timeline: &'a Timeline, rules: &'a RoomVersionRules) -> Self {
        Self {
            timeline,
            rules,
            cache: RefCell::new(HashMap::new()),
        }
    }

    /// The event, or `None` if it is not stored (or unreadable: state resolution then ignores
    /// it, as it ignores events it cannot verify; a storage or parse error is logged).
    fn get(&self, event_id: &EventId) -> Option<Arc<Pdu>> {
        if let Some(pdu) = self.cache.borrow().get(event_id) {
            return pdu.clone();
        }
        let json = match self.timeline.pdu_json(event_id) {
            Ok(json) => json,
            Err(e) => {
                tracing::error!(%event_id, "state resolution cannot read an event: {e}");
                None
            }
        };
        let pdu = json
            .and_then(
                |json| match Pdu::from_json(event_id.to_owned(), &json, self.rules) {
                    Ok(pdu) => Some(pdu),
                    Err(e) => {
                        tracing::warn!(%event_id, "state resolution cannot parse an event: {e}");
                        None
                    }
                },
            )
            .map(Arc::new);
        self.cache
            .borrow_mut()
            .insert(event_id.to_owned(), pdu.clone());
        pdu
    }

    /// The full recursive auth chain of `events` (not including them, unless one is in the
    /// chain of another). Events we do not hold are skipped: federation fetches missing auth
    /// events before it resolves.
    ///
    /// Each event's chain is cached in `shorteventid_authchain` once it is known completely; a
    /// walk stops at any event whose chain is cached, so resolving forks of a long-lived room
    /// does not walk its history again and again.
    fn auth_chain<'e>(
        &self,
        events: impl IntoIterator<Item = &'e EventId>,
    ) -> Result<HashSet<OwnedEventId>> {
        let (store, short) = self.timeline.storage();
        let mut all: HashSet<u64> = HashSet::new();
        for event_id in events {
            let Some(top) = short.existing_event(event_id.as_str())? else {
                continue;
            };
            if let Some(cached) = cached_chain(store, top)? {
                all.extend(cached);
                continue;
            }
            let Some(pdu) = self.get(event_id) else {
                continue;
            };
            let mut chain: HashSet<u64> = HashSet::new();
            let mut complete = true;
            let mut stack: Vec<OwnedEventId> = pdu.auth_events.clone();
            while let Some(id) = stack.pop() {
                let Some(sid) = short.existing_event(id.as_str())? else {
                    complete = false;
                    continue;
                };
                if !chain.insert(sid) {
                    continue;
                }
                // A cached chain is closed under auth events: nothing below it to walk.
                if let Some(cached) = cached_chain(store, sid)? {
                    chain.extend(cached);
                    continue;
                }
                match self.get(&id) {
                    Some(pdu) => stack.extend(pdu.auth_events.iter().cloned()),
                    None => complete = false,
                }
            }
            // An incomplete chain (missing events) would be wrong forever: not cached.
            if complete {
                let mut sorted: Vec<u64> = chain.iter().copied().collect();
                sorted.sort_unstable();
                let bytes: Vec<u8> = sorted.iter().flat_map(|s| keys::u64_be(*s)).collect();
                // A cache: lost in a power cut, it is computed again.
                let mut batch = crate::store::Batch::new();
                batch.put(Cf::AuthChains, keys::u64_be(top), bytes);
                store.write_without_waiting(batch)?;
            }
            all.extend(chain);
        }
        all.into_iter()
            .map(|sid| {
                let id = short
                    .event_id(sid)?
                    .ok_or_else(|| Error::internal("unknown short event id"))?;
                EventId::parse(&id).map_err(|e| Error::internal(e.to_string()))
            })
            .collect()
    }

    /// The conflicted state subgraph (state resolution v2.1, room version 12): every event on
    /// an auth-event path from one conflicted event to another, the two ends included.
    ///
    /// Two breadth-first walks instead of enumerating paths: downward from the conflicted events
    /// along `auth_events` (everything a conflicted event leads to), then upward along the
    /// reversed edges of that explored graph (everything that leads to a conflicted event). An
    /// event is on such a path exactly when it is in both; a conflicted event counts when it is
    /// in either, since the path through it then has at least one edge.
    fn conflicted_state_subgraph(
        &self,
        conflicted: &HashSet<OwnedEventId>,
    ) -> HashSet<OwnedEventId> {
        // Downward: reachable from a conflicted event by at least one edge.
        let mut below: HashSet<OwnedEventId> = HashSet::new();
        let mut parents_of: HashMap<OwnedEventId, Vec<OwnedEventId>> = HashMap::new();
        let mut expanded: HashSet<OwnedEventId> = HashSet::new();
        let mut queue: VecDeque<OwnedEventId> = conflicted.iter().cloned().collect();
        while let Some(event_id) = queue.pop_front() {
            if !expanded.insert(event_id.clone()) {
                continue;
            }
            let Some(pdu) = self.get(&event_id) else {
                continue;
            };
            for auth in &pdu.auth_events {
                parents_of
                    .entry(auth.clone())
                    .or_default()
                    .push(event_id.clone());
                below.insert(auth.clone());
                queue.push_back(auth.clone());
            }
        }
        // Upward: leads to a conflicted event by at least one edge.
        let mut above: HashSet<OwnedEventId> = HashSet::new();
        let mut queue: VecDeque<OwnedEventId> = conflicted.iter().cloned().collect();
        while let Some(event_id) = queue.pop_front() {
            for parent in parents_of.get(&event_id).into_iter().flatten() {
                if above.insert(parent.clone()) {
                    queue.push_back(parent.clone());
                }
            }
        }
        let mut subgraph: HashSet<OwnedEventId> = below.intersection(&above).cloned().collect();
        subgraph.extend(
            conflicted
                .iter()
                .filter(|id| below.contains(*id) || above.contains(*id))
                .cloned(),
        );
        subgraph
    }
}

/// The cached auth chain of an event (short ids), if any.
fn cached_chain(store: &Store, event: u64) -> Result<Option<Vec<u64>>> {
    let Some(bytes) = store.get(Cf::AuthChains, &keys::u64_be(event))? else {
        return Ok(None);
    };
    if !bytes.len().is_multiple_of(8) {
        return Err(Error::internal("corrupt auth chain"));
    }
    Ok(Some(
        bytes
            .chunks_exact(8)
            .map(|c| keys::parse_u64_be(c).expect("8 bytes"))
            .collect(),
    ))
}

fn to_ruma(state: &State) -> StateMap<OwnedEventId> {
    state
        .iter()
        .map(|((kind, key), id)| {
            (
                (StateEventType::from(kind.as_str()), key.clone()),
                id.clone(),
            )
        })
        .collect()
}

impl Timeline {
    /// The full recursive auth chain of `events` in a room of `version` (iterative; events not
    /// stored here are skipped).
    pub fn auth_chain<'e>(
        &self,
        version: &RoomVersionId,
        events: impl IntoIterator<Item = &'e EventId>,
    ) -> Result<HashSet<OwnedEventId>> {
        let rules = rules(version)?;
        Loader::new(self, &rules).auth_chain(events)
    }

    /// The conflicted state subgraph of a set of conflicted events (see
    /// [`Loader::conflicted_state_subgraph`]); state resolution v2.1 asks for it.
    pub fn conflicted_state_subgraph(
        &self,
        version: &RoomVersionId,
        conflicted: &HashSet<OwnedEventId>,
    ) -> Result<HashSet<OwnedEventId>> {
        let rules = rules(version)?;
        Ok(Loader::new(self, &rules).conflicted_state_subgraph(conflicted))
    }

    /// Resolves several states of a room of `version` into one, with the room version's state
    /// resolution algorithm. One state (or identical states) comes back as it is, without
    /// reading any event. Synchronous and CPU-bound in the size of the conflict; it only runs
    /// where the DAG forks.
    pub fn resolve_state(&self, version: &RoomVersionId, states: &[State]) -> Result<State> {
        match states {
            [] => return Ok(State::new()),
            [only] => return Ok(only.clone()),
            [first, rest @ ..] if rest.iter().all(|s| s == first) => return Ok(first.clone()),
            _ => {}
        }
        let rules = rules(version)?;
        let loader = Loader::new(self, &rules);
        let maps: Vec<StateMap<OwnedEventId>> = states.iter().map(to_ruma).collect();
        let auth_chains = states
            .iter()
            .map(|state| {
                Ok(loader
                    .auth_chain(state.values().map(|id| &**id))?
                    .into_iter()
                    .collect::<EventIdSet<OwnedEventId>>())
            })
            .collect::<Result<Vec<_>>>()?;
        let resolved = state_res::resolve(
            &rules.authorization,
            &v2_rules(&rules),
            &maps,
            auth_chains,
            |id: &EventId| loader.get(id),
            |conflicted: &StateMap<Vec<OwnedEventId>>| {
                let ids: HashSet<OwnedEventId> = conflicted.values().flatten().cloned().collect();
                Some(loader.conflicted_state_subgraph(&ids).into_iter().collect())
            },
        )
        .map_err(|e| Error::internal(format!("state resolution failed: {e}")))?;
        Ok(resolved
            .into_iter()
            .map(|((kind, key), id)| ((kind.to_string(), key), id))
            .collect())
    }

    /// The state before a new event whose `prev_events` are `extremities`: the resolution of
    /// the states after each of them.
    pub fn state_at_extremities(
        &self,
        version: &RoomVersionId,
        extremities: &[OwnedEventId],
    ) -> Result<State> {
        self.state_at_extremities_knowing(version, extremities, None)
    }

    /// [`Timeline::state_at_extremities`], with the state after one of them (`known`: a new
    /// event not yet written) given rather than read.
    pub fn state_at_extremities_knowing(
        &self,
        version: &RoomVersionId,
        extremities: &[OwnedEventId],
        known: Option<(&EventId, &State)>,
    ) -> Result<State> {
        let states = extremities
            .iter()
            .map(|id| match known {
                Some((event_id, state)) if event_id == id => Ok(state.clone()),
                _ => self.state_after(id),
            })
            .collect::<Result<Vec<_>>>()?;
        self.resolve_state(version, &states)
    }
}

fn rules(version: &RoomVersionId) -> Result<RoomVersionRules> {
    version
        .rules()
        .ok_or_else(|| Error::internal(format!("unsupported room version {version}")))
}

#[cfg(test)]
mod tests {
    use ruma::{
        CanonicalJsonValue, OwnedRoomId, OwnedUserId, ServerName, UserId,
        signatures::Ed25519KeyPair,
    };
    use serde_json::json;

    use super::*;
    use crate::{
        service::rooms::{
            short::ShortIds,
            timeline::{LocalEvent, Signer},
        },
        store::{Store, StoreOptions},
    };

    const ALICE: &str = "@alice:example.org";
    const BOB: &str = "@bob:example.org";
    const VERSIONS: [RoomVersionId; 3] =
        [RoomVersionId::V1, RoomVersionId::V10, RoomVersionId::V12];

    struct Fixture {
        _dir: tempfile::TempDir,
        timeline: Timeline,
        key: Ed25519KeyPair,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::TempDir::new().unwrap();
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            let short = Arc::new(ShortIds::load(store.clone()).unwrap());
            Fixture {
                _dir: dir,
                timeline: Timeline::load(store, short, None).unwrap(),
                key: Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "t".into()).unwrap(),
            }
        }

        fn signer(&self) -> Signer<'_> {
            Signer {
                server_name: <&ServerName>::try_from("example.org").unwrap(),
                key: &self.key,
            }
        }

        /// A state event appended on top of the room (the usual, single-chain path).
        async fn state(
            &self,
            room: &OwnedRoomId,
            sender: &str,
            kind: &'static str,
            key: &'static str,
            content: serde_json::Value,
        ) -> OwnedEventId {
            self.timeline
                .append(
                    room,
                    &user(sender),
                    LocalEvent::state(kind, key, content),
                    &self.signer(),
                )
                .await
                .unwrap()
        }

        /// A state event on a branch: its only parent is `prev`.
        async fn state_after(
            &self,
            room: &OwnedRoomId,
            prev: &OwnedEventId,
            sender: &str,
            kind: &'static str,
            key: &'static str,
            content: serde_json::Value,
        ) -> OwnedEventId {
            self.try_state_after(room, prev, sender, kind, key, content)
                .await
                .unwrap()
        }

        /// [`Fixture::state_after`], or the auth rules' refusal.
        async fn try_state_after(
            &self,
            room: &OwnedRoomId,
            prev: &OwnedEventId,
            sender: &str,
            kind: &'static str,
            key: &'static str,
            content: serde_json::Value,
        ) -> Result<OwnedEventId> {
            self.timeline
                .append_after(
                    room,
                    &user(sender),
                    LocalEvent::state(kind, key, content),
                    std::slice::from_ref(prev),
                    &self.signer(),
                )
                .await
        }

        /// Alice's room with Bob joined at power 50, and a first topic: returns the room, Bob's
        /// join and the topic event (the last event, where the tests fork).
        async fn room(&self, version: &RoomVersionId) -> (OwnedRoomId, OwnedEventId, OwnedEventId) {
            let rules = version.rules().unwrap();
            let mut create = json!({ "room_version": version.as_str() });
            if !rules.authorization.use_room_create_sender {
                create["creator"] = json!(ALICE);
            }
            let (room, _) = self
                .timeline
                .create_room(version, &user(ALICE), create, &self.signer())
                .await
                .unwrap();
            self.state(
                &room,
                ALICE,
                "m.room.member",
                ALICE,
                json!({ "membership": "join" }),
            )
            .await;
            let users = if rules.authorization.explicitly_privilege_room_creators {
                json!({ BOB: 50 })
            } else {
                json!({ ALICE: 100, BOB: 50 })
            };
            self.state(
                &room,
                ALICE,
                "m.room.power_levels",
                "",
                json!({ "users": users }),
            )
            .await;
            self.state(
                &room,
                ALICE,
                "m.room.join_rules",
                "",
                json!({ "join_rule": "public" }),
            )
            .await;
            let bob_join = self
                .state(
                    &room,
                    BOB,
                    "m.room.member",
                    BOB,
                    json!({ "membership": "join" }),
                )
                .await;
            let topic = self
                .state(&room, ALICE, "m.room.topic", "", json!({ "topic": "T0" }))
                .await;
            (room, bob_join, topic)
        }

        /// A message by Alice on top of the room: with several extremities, the merge.
        async fn merge(&self, room: &OwnedRoomId) -> OwnedEventId {
            self.timeline
                .append(
                    room,
                    &user(ALICE),
                    LocalEvent::text("merge"),
                    &self.signer(),
                )
                .await
                .unwrap()
        }

        fn prev_events(&self, event_id: &EventId) -> Vec<String> {
            let json = self.timeline.pdu_json(event_id).unwrap().unwrap();
            let CanonicalJsonValue::Array(prev) = &json["prev_events"] else {
                panic!("no prev_events")
            };
            prev.iter()
                .map(|p| match p {
                    CanonicalJsonValue::String(id) => id.clone(),
                    CanonicalJsonValue::Array(pair) => match &pair[0] {
                        CanonicalJsonValue::String(id) => id.clone(),
                        _ => panic!(),
                    },
                    _ => panic!(),
                })
                .collect()
        }

        fn ts(&self, event_id: &EventId) -> i64 {
            match &self.timeline.pdu_json(event_id).unwrap().unwrap()["origin_server_ts"] {
                CanonicalJsonValue::Integer(ts) => i64::from(*ts),
                _ => panic!(),
            }
        }
    }

    fn user(id: &str) -> OwnedUserId {
        UserId::parse(id).unwrap()
    }

    fn key(kind: &str, state_key: &str) -> (String, String) {
        (kind.to_owned(), state_key.to_owned())
    }

    #[tokio::test]
    async fn conflicting_topics_resolve_deterministically_and_the_merge_uses_it() {
        for version in VERSIONS {
            let f = Fixture::new();
            let (room, _, fork) = f.room(&version).await;
            let a = f
                .state_after(
                    &room,
                    &fork,
                    ALICE,
                    "m.room.topic",
                    "",
                    json!({ "topic": "A" }),
                )
                .await;
            let b = f
                .state_after(
                    &room,
                    &fork,
                    ALICE,
                    "m.room.topic",
                    "",
                    json!({ "topic": "B" }),
                )
                .await;
            let record = f.timeline.room(&room).unwrap().unwrap();
            let mut tips = record.extremities.clone();
            tips.sort();
            let mut expected_tips = vec![a.clone(), b.clone()];
            expected_tips.sort();
            assert_eq!(tips, expected_tips, "{version}: two forward extremities");
            // Both branches fork from the same state.
            assert_eq!(
                f.timeline.state_before(&a).unwrap(),
                f.timeline.state_before(&b).unwrap()
            );

            // The same power event authorises both topics, so the mainline order ties and the
            // later (origin_server_ts, event ID) is applied last and wins.
            let winner = std::cmp::max((f.ts(&a), a.clone()), (f.ts(&b), b.clone())).1;
            let resolved = f
                .timeline
                .state_at_extremities(&version, &[a.clone(), b.clone()])
                .unwrap();
            assert_eq!(resolved[&key("m.room.topic", "")], winner, "{version}");
            assert_eq!(
                f.timeline.current_state(&room).unwrap(),
                resolved,
                "{version}: the room's current state is the resolved one"
            );
            assert_eq!(
                f.timeline
                    .state_at_extremities(&version, &[b.clone(), a.clone()])
                    .unwrap(),
                resolved,
                "{version}: the order of the inputs does not matter"
            );
            // Everything unconflicted is kept.
            let after_a = f.timeline.state_after(&a).unwrap();
            assert_eq!(resolved.len(), after_a.len());
            for (k, id) in &after_a {
                if k.0 != "m.room.topic" {
                    assert_eq!(&resolved[k], id);
                }
            }

            // Appending on top merges the branches: both are its parents, and the state before
            // it is the resolved one, which also becomes the room's current state.
            let merge = f.merge(&room).await;
            let mut prevs = f.prev_events(&merge);
            prevs.sort();
            assert_eq!(
                prevs,
                expected_tips
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
            );
            assert_eq!(f.timeline.state_before(&merge).unwrap(), resolved);
            assert_eq!(f.timeline.current_state(&room).unwrap(), resolved);
            let record = f.timeline.room(&room).unwrap().unwrap();
            assert_eq!(
                record.extremities,
                vec![merge.clone()],
                "{version}: one again"
            );

            // The single-chain path is back: the next event has one parent.
            let next = f.merge(&room).await;
            assert_eq!(f.prev_events(&next), vec![merge.to_string()]);
            assert_eq!(f.timeline.state_before(&next).unwrap(), resolved);
        }
    }

    // On the multi-threaded runtime, as the server runs: the merge resolves in `block_in_place`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_ban_on_one_branch_beats_the_banned_users_events_on_the_other() {
        for version in VERSIONS {
            let f = Fixture::new();
            let (room, bob_join, fork) = f.room(&version).await;
            // Branch A: Alice bans Bob. Branch B: Bob, unaware, changes the topic.
            let ban = f
                .state_after(
                    &room,
                    &fork,
                    ALICE,
                    "m.room.member",
                    BOB,
                    json!({ "membership": "ban" }),
                )
                .await;
            let bobs_topic = f
                .state_after(
                    &room,
                    &fork,
                    BOB,
                    "m.room.topic",
                    "",
                    json!({ "topic": "Bob's" }),
                )
                .await;
            assert_eq!(
                f.timeline.state_after(&bobs_topic).unwrap()[&key("m.room.topic", "")],
                bobs_topic,
                "{version}: on its own branch Bob's topic stands"
            );

            let merge = f.merge(&room).await;
            let resolved = f.timeline.state_before(&merge).unwrap();
            assert_eq!(
                resolved[&key("m.room.member", BOB)],
                ban,
                "{version}: the ban wins"
            );
            assert_eq!(
                resolved[&key("m.room.topic", "")],
                fork,
                "{version}: Bob's topic fails auth after his ban; the topic from before the fork stays"
            );
            assert_eq!(f.timeline.current_state(&room).unwrap(), resolved);

            // Bob is banned in the merged room.
            let refused = f
                .timeline
                .append(
                    &room,
                    &user(BOB),
                    LocalEvent::text("still here?"),
                    &f.signer(),
                )
                .await;
            assert!(
                matches!(refused, Err(Error::Matrix { status, .. }) if status == http::StatusCode::FORBIDDEN),
                "{version}"
            );

            // The auth chain reaches back to the first events and does not include the event.
            let chain = f.timeline.auth_chain(&version, [&*bobs_topic]).unwrap();
            let create = &resolved[&key("m.room.create", "")];
            assert!(chain.contains(&bob_join), "{version}");
            assert_eq!(
                chain.contains(create),
                version != RoomVersionId::V12,
                "{version}: from v12 on, auth events never name the create event"
            );
            assert!(!chain.contains(&bobs_topic) && !chain.contains(&ban));
            // It is cached, and the cached chain is the same.
            let (store, short) = f.timeline.storage();
            let sid = short.existing_event(bobs_topic.as_str()).unwrap().unwrap();
            let cached = cached_chain(store, sid).unwrap().expect("cached");
            assert_eq!(cached.len(), chain.len());
            assert!(cached.windows(2).all(|w| w[0] < w[1]), "sorted");
            assert_eq!(
                f.timeline.auth_chain(&version, [&*bobs_topic]).unwrap(),
                chain
            );

            // The conflicted state subgraph: the ban and Bob's topic both lead (through their
            // auth events) to Bob's join, itself conflicted; the old topic leads to no
            // conflicted event and is left out.
            let conflicted: HashSet<OwnedEventId> = [
                ban.clone(),
                bob_join.clone(),
                fork.clone(),
                bobs_topic.clone(),
            ]
            .into();
            let subgraph = f
                .timeline
                .conflicted_state_subgraph(&version, &conflicted)
                .unwrap();
            let expected: HashSet<OwnedEventId> =
                [ban.clone(), bob_join.clone(), bobs_topic.clone()].into();
            assert_eq!(subgraph, expected, "{version}");
        }
    }

    #[tokio::test]
    async fn a_merge_of_some_branches_leaves_the_others_as_extremities() {
        let version = RoomVersionId::V12;
        let f = Fixture::new();
        let (room, _, fork) = f.room(&version).await;
        let mut tips = Vec::new();
        for (topic, name) in [
            ("A", "m.room.topic"),
            ("B", "m.room.topic"),
            ("C", "m.room.name"),
        ] {
            tips.push(
                f.state_after(
                    &room,
                    &fork,
                    ALICE,
                    name,
                    "",
                    json!({ "topic": topic, "name": topic }),
                )
                .await,
            );
        }
        assert_eq!(
            f.timeline.room(&room).unwrap().unwrap().extremities.len(),
            3
        );

        // Merge A and B only: C stays a forward extremity.
        let merge = f
            .timeline
            .append_after(
                &room,
                &user(ALICE),
                LocalEvent::text("ab"),
                &tips[..2],
                &f.signer(),
            )
            .await
            .unwrap();
        let expected = f
            .timeline
            .state_at_extremities(&version, &tips[..2])
            .unwrap();
        assert_eq!(f.timeline.state_before(&merge).unwrap(), expected);
        assert!(
            !expected.contains_key(&key("m.room.name", "")),
            "C is not merged yet"
        );
        let mut extremities = f.timeline.room(&room).unwrap().unwrap().extremities;
        extremities.sort();
        let mut left = vec![tips[2].clone(), merge.clone()];
        left.sort();
        assert_eq!(extremities, left);

        // The next event merges the rest: C's name joins the state. The topic conflicts again
        // (C's branch still has the one from before the fork), and, as between A and B, the
        // later (origin_server_ts, event ID) wins: normally the merged one, but events sent
        // within one millisecond fall back to the event ID.
        let last = f.merge(&room).await;
        let state = f.timeline.state_before(&last).unwrap();
        assert_eq!(state[&key("m.room.name", "")], tips[2]);
        let merged_topic = expected[&key("m.room.topic", "")].clone();
        let winner = std::cmp::max(
            (f.ts(&merged_topic), merged_topic.clone()),
            (f.ts(&fork), fork.clone()),
        )
        .1;
        assert_eq!(state[&key("m.room.topic", "")], winner);
        assert_eq!(
            f.timeline.room(&room).unwrap().unwrap().extremities,
            vec![last]
        );
    }

    #[tokio::test]
    async fn identical_or_single_states_need_no_resolution() {
        let f = Fixture::new();
        let (room, _, topic) = f.room(&RoomVersionId::V12).await;
        let state = f.timeline.state_after(&topic).unwrap();
        assert_eq!(
            f.timeline
                .resolve_state(&RoomVersionId::V12, &[state.clone(), state.clone()])
                .unwrap(),
            state
        );
        assert_eq!(
            f.timeline.resolve_state(&RoomVersionId::V12, &[]).unwrap(),
            State::new()
        );
        assert_eq!(f.timeline.current_state(&room).unwrap(), state);
    }

    #[test]
    fn v1_rooms_use_the_v2_0_rules() {
        assert_eq!(
            v2_rules(&RoomVersionId::V1.rules().unwrap()),
            StateResolutionV2Rules::V2_0
        );
        assert_eq!(
            v2_rules(&RoomVersionId::V12.rules().unwrap()),
            StateResolutionV2Rules::V2_1
        );
    }

    /// One state change a branch tries; the auth rules may refuse it (then the branch goes on
    /// without it).
    #[derive(Clone, Debug)]
    enum Change {
        Topic { by_bob: bool, n: u8 },
        Name { by_bob: bool, n: u8 },
        BobsPower(u8),
        CarolJoins,
        CarolLeaves,
        BobLeaves,
    }

    const CAROL: &str = "@carol:example.org";

    fn change_strategy() -> impl proptest::strategy::Strategy<Value = Change> {
        use proptest::prelude::*;
        prop_oneof![
            (any::<bool>(), 0..4u8).prop_map(|(by_bob, n)| Change::Topic { by_bob, n }),
            (any::<bool>(), 0..4u8).prop_map(|(by_bob, n)| Change::Name { by_bob, n }),
            (0..101u8).prop_map(Change::BobsPower),
            Just(Change::CarolJoins),
            Just(Change::CarolLeaves),
            Just(Change::BobLeaves),
        ]
    }

    impl Fixture {
        /// Appends `change` after `prev`; the new event, or `None` when refused.
        async fn try_change(
            &self,
            version: &RoomVersionId,
            room: &OwnedRoomId,
            prev: &OwnedEventId,
            change: &Change,
        ) -> Option<OwnedEventId> {
            let by = |bob: bool| if bob { BOB } else { ALICE };
            let (sender, kind, key, content) = match change {
                Change::Topic { by_bob, n } => (
                    by(*by_bob),
                    "m.room.topic",
                    "",
                    json!({ "topic": format!("T{n}") }),
                ),
                Change::Name { by_bob, n } => (
                    by(*by_bob),
                    "m.room.name",
                    "",
                    json!({ "name": format!("N{n}") }),
                ),
                Change::BobsPower(level) => {
                    let users = if version
                        .rules()
                        .unwrap()
                        .authorization
                        .explicitly_privilege_room_creators
                    {
                        json!({ BOB: level })
                    } else {
                        json!({ ALICE: 100, BOB: level })
                    };
                    (ALICE, "m.room.power_levels", "", json!({ "users": users }))
                }
                Change::CarolJoins => (
                    CAROL,
                    "m.room.member",
                    CAROL,
                    json!({ "membership": "join" }),
                ),
                Change::CarolLeaves => (
                    CAROL,
                    "m.room.member",
                    CAROL,
                    json!({ "membership": "leave" }),
                ),
                Change::BobLeaves => (BOB, "m.room.member", BOB, json!({ "membership": "leave" })),
            };
            self.try_state_after(room, prev, sender, kind, key, content)
                .await
                .ok()
        }
    }

    proptest::proptest! {
        // Each case makes a database and a room: 24 in the suite, PROPTEST_CASES / 50 in
        // scripts/property-tests.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|n| n.parse::<u32>().ok())
                .map_or(24, |n| (n / 50).max(24))
        ))]

        /// State resolution of generated forks (two or three branches of up to four changes
        /// each, from the same point, in room versions 1, 10 and 12) gives the same state
        /// whatever the order of the states it is given; and the resolved power levels are
        /// always Alice's doing (Bob, at 50 or less, may never change them).
        #[test]
        fn resolving_forks_does_not_depend_on_the_order_of_the_states(
            version in 0..VERSIONS.len(),
            branches in proptest::collection::vec(
                proptest::collection::vec(change_strategy(), 1..5),
                2..4,
            ),
        ) {
            let version = VERSIONS[version].clone();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let f = Fixture::new();
                let (room, _, fork) = f.room(&version).await;
                let mut states = Vec::new();
                for branch in &branches {
                    let mut tip = fork.clone();
                    for change in branch {
                        if let Some(event) = f.try_change(&version, &room, &tip, change).await {
                            tip = event;
                        }
                    }
                    states.push(f.timeline.state_after(&tip).unwrap());
                }
                let resolved = f.timeline.resolve_state(&version, &states).unwrap();
                let mut reversed = states.clone();
                reversed.reverse();
                assert_eq!(f.timeline.resolve_state(&version, &reversed).unwrap(), resolved, "{version}: reversed");
                states.rotate_left(1);
                assert_eq!(f.timeline.resolve_state(&version, &states).unwrap(), resolved, "{version}: rotated");
                let power = &resolved[&key("m.room.power_levels", "")];
                let sender = match &f.timeline.pdu_json(power).unwrap().unwrap()["sender"] {
                    CanonicalJsonValue::String(sender) => sender.clone(),
                    _ => panic!("power levels without a sender"),
                };
                assert_eq!(sender, ALICE, "{version}");
            });
        }
    }
}
