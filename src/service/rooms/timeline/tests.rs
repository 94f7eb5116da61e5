//! Tests of the append path against a real store in a temporary directory: the timeline and
//! its state, concurrent senders, a restart, and the commit pipeline's consumers.

use serde_json::json;

use super::*;
use crate::store::StoreOptions;

const ALICE: &str = "@alice:example.org";
const BOB: &str = "@bob:example.org";

struct Fixture {
    _dir: tempfile::TempDir,
    timeline: Arc<Timeline>,
    key: Ed25519KeyPair,
}

fn fixture_in(dir: tempfile::TempDir, key: Option<Ed25519KeyPair>) -> Fixture {
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let short = Arc::new(ShortIds::load(store.clone()).unwrap());
    let key = key.unwrap_or_else(|| {
        Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "t".into()).unwrap()
    });
    Fixture {
        _dir: dir,
        timeline: Arc::new(Timeline::load(store, short, None).unwrap()),
        key,
    }
}

fn signer(key: &Ed25519KeyPair) -> Signer<'_> {
    Signer {
        server_name: <&ServerName>::try_from("example.org").unwrap(),
        key,
    }
}

fn user(id: &str) -> ruma::OwnedUserId {
    UserId::parse(id).unwrap()
}

async fn new_room(f: &Fixture, version: RoomVersionId) -> OwnedRoomId {
    let s = signer(&f.key);
    let rules = version.rules().unwrap();
    let mut create = json!({ "room_version": version.as_str() });
    if !rules.authorization.use_room_create_sender {
        create["creator"] = json!(ALICE);
    }
    let (room, _) = f
        .timeline
        .create_room(&version, &user(ALICE), create, &s)
        .await
        .unwrap();
    let users = if rules.authorization.explicitly_privilege_room_creators {
        json!({})
    } else {
        json!({ ALICE: 100 })
    };
    f.timeline
        .append(
            &room,
            &user(ALICE),
            LocalEvent::state("m.room.member", ALICE, json!({ "membership": "join" })),
            &s,
        )
        .await
        .unwrap();
    f.timeline
        .append(
            &room,
            &user(ALICE),
            LocalEvent::state("m.room.power_levels", "", json!({ "users": users })),
            &s,
        )
        .await
        .unwrap();
    f.timeline
        .append(
            &room,
            &user(ALICE),
            LocalEvent::state("m.room.join_rules", "", json!({ "join_rule": "invite" })),
            &s,
        )
        .await
        .unwrap();
    room
}

#[tokio::test]
async fn appended_events_form_a_timeline_with_state() {
    for version in [RoomVersionId::V10, RoomVersionId::V12] {
        let f = fixture_in(tempfile::TempDir::new().unwrap(), None);
        let s = signer(&f.key);
        let room = new_room(&f, version.clone()).await;
        let hello = f
            .timeline
            .append(&room, &user(ALICE), LocalEvent::text("hello"), &s)
            .await
            .unwrap();

        let events = f.timeline.events_after(&room, 0, None, usize::MAX).unwrap();
        assert_eq!(events.len(), 5, "{version}");
        assert!(
            events.windows(2).all(|w| w[0].0 < w[1].0),
            "counts increase"
        );
        assert_eq!(events.last().unwrap().1, hello);
        assert_eq!(*f.timeline.subscribe().borrow(), events.last().unwrap().0);

        // Each event points at the one before it: a single chain.
        for pair in events.windows(2) {
            let json = f.timeline.pdu_json(&pair[1].1).unwrap().unwrap();
            let CanonicalJsonValue::Array(prev) = &json["prev_events"] else {
                panic!()
            };
            assert_eq!(prev.len(), 1);
        }

        let current = f.timeline.current_state(&room).unwrap();
        assert_eq!(
            current.len(),
            4,
            "{version}: create, member, power levels, join rules"
        );
        assert_eq!(
            f.timeline.state_before(&hello).unwrap(),
            current,
            "a message leaves state alone"
        );
        let before_join_rules = f.timeline.state_before(&events[3].1).unwrap();
        assert_eq!(before_join_rules.len(), 3);
        assert!(!before_join_rules.contains_key(&("m.room.join_rules".into(), String::new())));

        // Refused events leave no trace.
        let refused = f
            .timeline
            .append(&room, &user(BOB), LocalEvent::text("intruder"), &s)
            .await;
        assert!(
            matches!(refused, Err(Error::Matrix { status, .. }) if status == http::StatusCode::FORBIDDEN)
        );
        assert_eq!(
            f.timeline
                .events_after(&room, 0, None, usize::MAX)
                .unwrap()
                .len(),
            5
        );
        assert_eq!(*f.timeline.subscribe().borrow(), events.last().unwrap().0);

        // Incremental reads start after a count.
        let since = events[2].0;
        assert_eq!(
            f.timeline
                .events_after(&room, since, None, usize::MAX)
                .unwrap(),
            events[3..].to_vec()
        );

        // Backwards reads stop at a floor: the newest first up to the limit, then `more`.
        let upto = events.last().unwrap().0;
        let (above, more) = f
            .timeline
            .last_events_above(&room, since, upto, 10)
            .unwrap();
        assert_eq!(above, events[3..].to_vec());
        assert!(!more, "nothing else above the floor");
        let (newest, more) = f.timeline.last_events_above(&room, since, upto, 1).unwrap();
        assert_eq!(newest, events[4..].to_vec());
        assert!(more, "one more above the floor");
        let (nothing, more) = f.timeline.last_events_above(&room, upto, upto, 10).unwrap();
        assert!(nothing.is_empty() && !more);
    }
}

#[tokio::test]
async fn unknown_room_versions_and_rooms_are_refused() {
    let f = fixture_in(tempfile::TempDir::new().unwrap(), None);
    let s = signer(&f.key);
    let custom = RoomVersionId::try_from("org.example.custom").unwrap();
    let result = f
        .timeline
        .create_room(&custom, &user(ALICE), json!({}), &s)
        .await;
    assert!(matches!(
        result,
        Err(Error::Matrix {
            kind: ruma::api::error::ErrorKind::UnsupportedRoomVersion,
            ..
        })
    ));
    let missing = RoomId::parse("!nope:example.org").unwrap();
    let result = f
        .timeline
        .append(&missing, &user(ALICE), LocalEvent::text("x"), &s)
        .await;
    assert!(
        matches!(result, Err(Error::Matrix { status, .. }) if status == http::StatusCode::NOT_FOUND)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_make_one_chain_without_losses() {
    let f = fixture_in(tempfile::TempDir::new().unwrap(), None);
    let room = new_room(&f, RoomVersionId::V12).await;
    let key = Arc::new(f.key);
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let timeline = f.timeline.clone();
            let room = room.clone();
            let key = key.clone();
            tokio::spawn(async move {
                let s = signer(&key);
                timeline
                    .append(&room, &user(ALICE), LocalEvent::text(&format!("m{i}")), &s)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut sent = Vec::new();
    for task in tasks {
        sent.push(task.await.unwrap());
    }
    let events = f.timeline.events_after(&room, 0, None, usize::MAX).unwrap();
    assert_eq!(events.len(), 4 + 32);
    let ids: std::collections::HashSet<_> = events.iter().map(|(_, id)| id.clone()).collect();
    assert!(
        sent.iter().all(|id| ids.contains(id)),
        "every acknowledged event is in the timeline"
    );
    // One chain: depth rises by one along the timeline.
    let depths: Vec<i64> = events
        .iter()
        .map(
            |(_, id)| match &f.timeline.pdu_json(id).unwrap().unwrap()["depth"] {
                CanonicalJsonValue::Integer(d) => i64::from(*d),
                _ => panic!(),
            },
        )
        .collect();
    assert!(depths.windows(2).all(|w| w[1] == w[0] + 1), "{depths:?}");
}

#[tokio::test]
async fn the_timeline_survives_a_restart() {
    let f = fixture_in(tempfile::TempDir::new().unwrap(), None);
    let room = new_room(&f, RoomVersionId::V11).await;
    let before = f.timeline.events_after(&room, 0, None, usize::MAX).unwrap();
    let Fixture {
        _dir: dir,
        timeline,
        key,
    } = f;
    drop(timeline);
    let f = fixture_in(dir, Some(key));
    assert_eq!(
        f.timeline.events_after(&room, 0, None, usize::MAX).unwrap(),
        before
    );
    assert_eq!(*f.timeline.subscribe().borrow(), before.last().unwrap().0);
    let s = signer(&f.key);
    f.timeline
        .append(&room, &user(ALICE), LocalEvent::text("after restart"), &s)
        .await
        .unwrap();
    let after = f.timeline.events_after(&room, 0, None, usize::MAX).unwrap();
    assert_eq!(after.len(), before.len() + 1);
    assert!(
        after.last().unwrap().0 > before.last().unwrap().0,
        "counts keep rising"
    );
}

/// A consumer that records what it saw and writes one marker per event.
#[derive(Default)]
struct Recorder {
    seen: StdMutex<Vec<(OwnedEventId, pipeline::Origin)>>,
    committed: Arc<std::sync::atomic::AtomicUsize>,
    refuse: std::sync::atomic::AtomicBool,
}

struct Marker {
    key: Vec<u8>,
    committed: Arc<std::sync::atomic::AtomicUsize>,
}

impl pipeline::EventConsumer for Recorder {
    fn prepare(
        &self,
        event: &pipeline::Appending<'_>,
    ) -> Result<Option<Box<dyn pipeline::Staged>>> {
        if self.refuse.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::forbidden("refused by the recorder"));
        }
        self.seen
            .lock()
            .unwrap()
            .push((event.event_id.to_owned(), event.origin));
        Ok(Some(Box::new(Marker {
            key: format!("marker {}", event.event_id).into_bytes(),
            committed: self.committed.clone(),
        })))
    }
}

impl pipeline::Staged for Marker {
    fn write(&mut self, batch: &mut Batch, count: u64) -> Result<()> {
        batch.put(Cf::Global, self.key.clone(), keys::u64_be(count));
        Ok(())
    }

    fn committed(self: Box<Self>) {
        self.committed
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test]
async fn consumers_write_into_the_events_own_batch_under_its_count() {
    let f = fixture_in(tempfile::TempDir::new().unwrap(), None);
    let room = new_room(&f, RoomVersionId::V11).await;
    let recorder = Arc::new(Recorder::default());
    f.timeline.register_consumer(recorder.clone());
    let s = signer(&f.key);
    let id = f
        .timeline
        .append(&room, &user(ALICE), LocalEvent::text("hello"), &s)
        .await
        .unwrap();
    assert_eq!(
        *recorder.seen.lock().unwrap(),
        vec![(id.clone(), pipeline::Origin::Local)]
    );
    let marker = f
        .timeline
        .store
        .get(Cf::Global, format!("marker {id}").as_bytes())
        .unwrap()
        .and_then(|v| keys::parse_u64_be(&v));
    assert_eq!(
        marker,
        f.timeline.count_of(&id).unwrap(),
        "the event's count"
    );
    assert_eq!(
        recorder.committed.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "told once, after the write"
    );
}

#[tokio::test]
async fn a_consumer_that_fails_refuses_the_whole_event() {
    let f = fixture_in(tempfile::TempDir::new().unwrap(), None);
    let room = new_room(&f, RoomVersionId::V11).await;
    let recorder = Arc::new(Recorder::default());
    f.timeline.register_consumer(recorder.clone());
    recorder
        .refuse
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let before = f.timeline.events_after(&room, 0, None, usize::MAX).unwrap();
    let extremities = f.timeline.room(&room).unwrap().unwrap().extremities;
    let s = signer(&f.key);
    let refused = f
        .timeline
        .append(&room, &user(ALICE), LocalEvent::text("refused"), &s)
        .await;
    assert!(refused.is_err());
    assert_eq!(
        f.timeline.events_after(&room, 0, None, usize::MAX).unwrap(),
        before,
        "no timeline entry"
    );
    assert_eq!(
        f.timeline.room(&room).unwrap().unwrap().extremities,
        extremities,
        "the room record is unchanged"
    );
    assert_eq!(
        recorder.committed.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}
