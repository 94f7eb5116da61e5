//! Appending local events to rooms: the write path every client action that changes a room goes
//! through (createRoom, send, state, membership, redaction).
//!
//! One event is one atomic batch: the PDU, the state before it, its place in the room's
//! timeline, the room's new current state and forward extremities, and the stream counter.
//! Events of one room are appended one at a time (a per-room lock), so a server's own events form
//! a single chain. The stream counter is taken and written under one global lock, so counts
//! become visible in order: a `/sync` that saw count N has seen every count below N. Each commit
//! is announced on a watch channel that long-polling `/sync` will wait on.

pub mod activity;
mod parsed;
pub mod pipeline;
mod read;
mod remote;

pub use remote::{Appended, ReceivedState, referenced_ids};

use std::{
    collections::HashMap,
    sync::{Arc, Mutex as StdMutex},
};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, DeviceId, EventId, OwnedDeviceId, OwnedEventId,
    OwnedRoomId, RoomId, RoomVersionId, ServerName, UserId,
    events::{StateEventType, TimelineEventType},
    room_version_rules::RoomVersionRules,
    signatures::Ed25519KeyPair,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, watch};

use super::{
    auth,
    event::Pdu,
    pdu::{self, EventRef, NewEvent, rules_of},
    short::ShortIds,
    state_store::{StateEntry, StateStore},
};
use crate::{
    Error, Result,
    store::{Batch, Cf, Store, durability::Pending, keys},
    utils,
};

const STREAM_KEY: &[u8] = b"stream_count";

/// How many parsed auth events the timeline keeps (a few per active room).
const AUTH_EVENTS_CACHED: usize = 512;
/// The stream starts here (or jumps here once, on a database from before backfill): the counts
/// below a room's first event are for its backfilled history.
pub const BACKFILL_HEADROOM: u64 = 1 << 32;

/// `prev_events` or `auth_events` references: IDs, with their PDUs where loaded.
fn event_refs<'a>(
    ids: &'a [OwnedEventId],
    pdus: &'a [Option<CanonicalJsonObject>],
) -> Vec<EventRef<'a>> {
    ids.iter()
        .zip(pdus)
        .map(|(event_id, pdu)| EventRef {
            event_id,
            pdu: pdu.as_ref(),
        })
        .collect()
}

/// A client transaction (`PUT /send/{type}/{txnId}`, `PUT /redact/{eventId}/{txnId}`): a
/// repeat of it returns the first event, and the event shows the transaction ID to the device
/// that sent it (`unsigned.transaction_id`), so the client can match its local echo.
pub struct ClientTxn<'a> {
    pub device_id: &'a DeviceId,
    pub txn_id: &'a str,
    /// Where it is remembered in `txn_ids`.
    key: Vec<u8>,
}

impl<'a> ClientTxn<'a> {
    pub fn new(
        user_id: &UserId,
        device_id: &'a DeviceId,
        room_id: &RoomId,
        txn_id: &'a str,
    ) -> Self {
        let key = keys::join([
            user_id.as_bytes(),
            device_id.as_bytes(),
            room_id.as_bytes(),
            txn_id.as_bytes(),
        ]);
        Self {
            device_id,
            txn_id,
            key,
        }
    }
}

/// The key of an event in the `TimestampEvents` index: its room, then its `origin_server_ts`
/// and stream count (fixed width, so the room's events sort by time, ties by stream order).
pub fn timestamp_key(room_id: &RoomId, ts: u64, count: u64) -> Vec<u8> {
    let mut at = [0u8; 16];
    at[..8].copy_from_slice(&keys::u64_be(ts));
    at[8..].copy_from_slice(&keys::u64_be(count));
    keys::join([room_id.as_bytes(), &at])
}

/// Who signs local events.
pub struct Signer<'a> {
    pub server_name: &'a ServerName,
    pub key: &'a Ed25519KeyPair,
}

/// A new event, as a client asks for it.
pub struct LocalEvent<'a> {
    pub event_type: &'a str,
    pub state_key: Option<&'a str>,
    pub content: serde_json::Value,
    pub redacts: Option<&'a EventId>,
}

impl<'a> LocalEvent<'a> {
    /// A state event.
    pub fn state(event_type: &'a str, state_key: &'a str, content: serde_json::Value) -> Self {
        Self {
            event_type,
            state_key: Some(state_key),
            content,
            redacts: None,
        }
    }

    /// A text message (what most tests send).
    #[cfg(test)]
    pub fn text(body: &str) -> Self {
        Self {
            event_type: "m.room.message",
            state_key: None,
            content: serde_json::json!({ "msgtype": "m.text", "body": body }),
            redacts: None,
        }
    }
}

/// What the `pdus` column family holds for each event.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct StoredPdu {
    pub(crate) event_id: OwnedEventId,
    #[serde(deserialize_with = "super::canonical_json::object")]
    pub(crate) pdu: CanonicalJsonObject,
    /// For a local event sent with a client transaction: the device and transaction ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sent_by: Option<SentBy>,
    /// The event's short ID when it was read from the store by it (not stored: the key):
    /// readers find the event's state by it without looking its ID up again.
    #[serde(skip)]
    pub(crate) short: Option<u64>,
}

/// The device that sent a local event and its transaction ID.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SentBy {
    pub(crate) device_id: OwnedDeviceId,
    pub(crate) txn_id: String,
}

impl StoredPdu {
    pub(crate) fn new(event_id: OwnedEventId, pdu: CanonicalJsonObject) -> Self {
        Self {
            event_id,
            pdu,
            sent_by: None,
            short: None,
        }
    }

    /// The stored form of an event without a sender's transaction, serialised from borrowed
    /// parts (no copy of the event: a big room's join stores thousands).
    pub(crate) fn bytes_of(event_id: &EventId, pdu: &CanonicalJsonObject) -> Result<Vec<u8>> {
        #[derive(Serialize)]
        struct Borrowed<'a> {
            event_id: &'a EventId,
            pdu: &'a CanonicalJsonObject,
        }
        Ok(serde_json::to_vec(&Borrowed { event_id, pdu })?)
    }
}

/// What the `rooms` column family holds for each room.
#[derive(Clone, Serialize, Deserialize)]
pub struct RoomRecord {
    pub version: RoomVersionId,
    /// Short state hash of the current state.
    pub state: u64,
    /// Forward extremities: the `prev_events` of the next event.
    pub extremities: Vec<OwnedEventId>,
    /// Highest depth in the room.
    pub depth: u64,
}

pub struct Timeline {
    store: Store,
    short: Arc<ShortIds>,
    states: StateStore,
    room_locks: StdMutex<HashMap<OwnedRoomId, Arc<Mutex<()>>>>,
    /// The last stream count taken; held while a batch carrying a new count is written.
    stream: Mutex<u64>,
    committed: watch::Sender<u64>,
    /// The `origin_server_ts` of the last create event made here: each new one is later, so
    /// two rooms created by one user in the same millisecond do not get the same v12 room ID
    /// (which is the hash of the create event).
    last_create_ts: std::sync::atomic::AtomicU64,
    /// The history visibility in force at a state snapshot. A snapshot never changes, and
    /// redaction keeps `history_visibility`, so an entry is never stale.
    visibility: quick_cache::sync::Cache<u64, Arc<str>>,
    /// Recently used events parsed for the auth rules (create, power levels, join rules, the
    /// sender's membership: the same few for every event a room receives). An event never
    /// changes but by redaction, which keeps every key the auth rules read, so an entry from
    /// before a redaction authorises alike.
    auth_events: quick_cache::sync::Cache<OwnedEventId, Arc<Pdu>>,
    /// Recently read events, parsed (see [`parsed`]).
    parsed: Arc<parsed::ParsedPdus>,
    /// The per-event work that joins each event's commit (see [`pipeline`]).
    pipeline: pipeline::Pipeline,
    /// Which rooms the recent commits changed (see [`activity`]).
    activity: activity::RecentActivity,
}

tokio::task_local! {
    /// An `origin_server_ts` chosen by an appservice (timestamp massaging, the `ts` query
    /// parameter) for the events appended inside [`with_origin_ts`].
    static ORIGIN_TS: u64;
}

/// Runs `future` with its appended events stamped `ts` instead of now (`None`: now).
pub async fn with_origin_ts<F: std::future::Future>(ts: Option<u64>, future: F) -> F::Output {
    match ts {
        Some(ts) => ORIGIN_TS.scope(ts, future).await,
        None => future.await,
    }
}

fn origin_ts_now() -> u64 {
    ORIGIN_TS
        .try_with(|ts| *ts)
        .unwrap_or_else(|_| utils::now_millis())
}

impl Timeline {
    /// Loads the stream position; `parsed_events` is how many read events are kept parsed
    /// (`pdu_cache_capacity`; `None`: [`parsed::DEFAULT_CAPACITY`]).
    pub fn load(store: Store, short: Arc<ShortIds>, parsed_events: Option<usize>) -> Result<Self> {
        let count = match store.get(Cf::Global, STREAM_KEY)? {
            Some(bytes) => {
                keys::parse_u64_be(&bytes).ok_or_else(|| Error::internal("corrupt stream count"))?
            }
            None => 0,
        }
        // Room history fetched from other servers (backfill) takes the counts just below a
        // room's oldest: new events start high enough to leave that room.
        .max(BACKFILL_HEADROOM);
        let parsed = Arc::new(parsed::ParsedPdus::new(
            parsed_events.unwrap_or(parsed::DEFAULT_CAPACITY),
        ));
        let watcher = parsed.clone();
        store.watch_writes(Cf::Pdus, Arc::new(move |key| watcher.written(key)));
        Ok(Self {
            states: StateStore::new(store.clone()),
            store,
            short,
            room_locks: StdMutex::new(HashMap::new()),
            stream: Mutex::new(count),
            committed: watch::channel(count).0,
            last_create_ts: std::sync::atomic::AtomicU64::new(0),
            visibility: quick_cache::sync::Cache::new(4096),
            auth_events: quick_cache::sync::Cache::new(AUTH_EVENTS_CACHED),
            parsed,
            pipeline: pipeline::Pipeline::default(),
            activity: activity::RecentActivity::new(count),
        })
    }

    /// What the timeline's caches take now, by cache (see [`crate::service::cache_memory`]).
    pub fn cache_bytes(&self) -> [(&'static str, u64); 4] {
        use crate::service::cache_memory::cache_bytes;
        [
            ("parsed_events", self.parsed.bytes()),
            ("auth_events", cache_bytes(&self.auth_events)),
            ("history_visibility", cache_bytes(&self.visibility)),
            ("state_snapshots", self.states.cache_bytes()),
        ]
    }

    /// Adds a consumer to the commit pipeline (at start-up).
    pub fn register_consumer(&self, consumer: Arc<dyn pipeline::EventConsumer>) {
        self.pipeline.register(consumer);
    }

    /// The latest committed stream count, to wait on for new events.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }

    pub fn room(&self, room_id: &RoomId) -> Result<Option<RoomRecord>> {
        match self.store.get(Cf::Rooms, room_id.as_bytes())? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    fn room_lock(&self, room_id: &RoomId) -> Arc<Mutex<()>> {
        let mut locks = self.room_locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(room_id.to_owned()).or_default().clone()
    }

    /// Holds the room's lock, the one appends take: no event enters the room meanwhile.
    pub async fn lock_room(&self, room_id: &RoomId) -> tokio::sync::OwnedMutexGuard<()> {
        self.room_lock(room_id).lock_owned().await
    }

    /// Writes `batch` with the next stream count, which `build` may use in its keys. Counts are
    /// taken and written under one lock, so they become visible in order; the new count is
    /// then announced to waiting `/sync`s.
    pub async fn commit_counted(
        &self,
        batch: Batch,
        build: impl FnOnce(&mut Batch, u64) -> Result<()>,
    ) -> Result<u64> {
        self.commit_counted_in(None, batch, build).await
    }

    /// Like [`Timeline::commit_counted`] for a commit that changes a room: the change is
    /// remembered in the recent activity (see [`activity`]) before the count is published.
    pub async fn commit_counted_in(
        &self,
        change: Option<(&RoomId, activity::Change)>,
        batch: Batch,
        build: impl FnOnce(&mut Batch, u64) -> Result<()>,
    ) -> Result<u64> {
        let (count, pending) = self.write_counted(change, batch, build).await?;
        self.publish(count, pending).await
    }

    /// The first half of [`Timeline::commit_counted_in`]: the batch written under its count,
    /// not yet known to be on disk nor announced.
    async fn write_counted(
        &self,
        change: Option<(&RoomId, activity::Change)>,
        mut batch: Batch,
        build: impl FnOnce(&mut Batch, u64) -> Result<()>,
    ) -> Result<(u64, Pending)> {
        let mut stream = self.stream.lock().await;
        let count = *stream + 1;
        build(&mut batch, count)?;
        batch.put(Cf::Global, STREAM_KEY, keys::u64_be(count));
        let streams = activity::Streams::written_by(&batch);
        let pending = self.store.write_pending(batch)?;
        *stream = count;
        if let Some((room_id, change)) = change {
            self.activity.record(count, room_id, change);
        }
        self.activity.record_streams(count, streams);
        drop(stream);
        Ok((count, pending))
    }

    /// The second half: waits until the write is on disk — outside the stream lock, so that
    /// the next commits share the fsync (group durability) — then announces its count.
    async fn publish(&self, count: u64, pending: Pending) -> Result<u64> {
        let durable = self.store.make_durable_async(pending).await;
        // Commits reach this point in any order: the announced count only grows. A count
        // announced covers every lower one, which was written before it (and so is on disk
        // once this one is).
        self.committed.send_if_modified(|announced| {
            let newer = count > *announced;
            if newer {
                *announced = count;
            }
            newer
        });
        durable?;
        Ok(count)
    }

    /// The user-wide streams the commits after `since` up to `upto` wrote to; `None` when that
    /// is too long ago to be remembered.
    pub fn streams_written(&self, since: u64, upto: u64) -> Option<activity::Streams> {
        self.activity.streams_between(since, upto)
    }

    /// The rooms the commits after `since` up to `upto` changed, oldest first; `None` when
    /// that is too long ago to be remembered.
    pub fn recent_activity(&self, since: u64, upto: u64) -> Option<Vec<activity::Activity>> {
        self.activity.between(since, upto)
    }

    /// Creates a room: signs and stores its `m.room.create` event. Returns the room ID (derived
    /// from the create event in v12; random before).
    pub async fn create_room(
        &self,
        version: &RoomVersionId,
        sender: &UserId,
        content: serde_json::Value,
        signer: &Signer<'_>,
    ) -> Result<(OwnedRoomId, OwnedEventId)> {
        let rules = rules_of(version)?;
        let room_id = (rules.room_id_format == ruma::room_version_rules::RoomIdFormatVersion::V1)
            .then(|| RoomId::new_v1(signer.server_name));
        let event = LocalEvent {
            event_type: "m.room.create",
            state_key: Some(""),
            content,
            redacts: None,
        };
        let empty = RoomRecord {
            version: version.clone(),
            state: 0,
            extremities: Vec::new(),
            depth: 0,
        };
        let (room_id, event_id, commit) = self
            .append_with(
                room_id.as_deref(),
                empty,
                sender,
                event,
                None,
                self.next_create_ts(),
                signer,
            )
            .await?;
        commit.finish(self).await?;
        Ok((room_id, event_id))
    }

    /// Signs, authorises and stores a new local event in an existing room.
    pub async fn append(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        event: LocalEvent<'_>,
        signer: &Signer<'_>,
    ) -> Result<OwnedEventId> {
        self.append_once(room_id, sender, event, None, signer).await
    }

    /// Like [`Timeline::append`], but idempotent per `txn` (a client transaction, see
    /// [`ClientTxn`]): a repeated transaction returns the first event's ID and sends nothing.
    pub async fn append_once(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        event: LocalEvent<'_>,
        txn: Option<&ClientTxn<'_>>,
        signer: &Signer<'_>,
    ) -> Result<OwnedEventId> {
        let lock = self.room_lock(room_id);
        let guard = lock.lock().await;
        if let Some(txn) = txn
            && let Some(id) = self.store.get(Cf::TxnIds, &txn.key)?
        {
            drop(guard);
            // The first request may still be waiting for the disk: so does its repeat.
            self.store.wait_durable_async().await?;
            let id = String::from_utf8_lossy(&id).into_owned();
            return EventId::parse(&id).map_err(|e| Error::internal(e.to_string()));
        }

        let room = self
            .room(room_id)?
            .ok_or_else(|| Error::not_found("No such room."))?;
        let (_, event_id, commit) = self
            .append_with(
                Some(room_id),
                room,
                sender,
                event,
                txn,
                origin_ts_now(),
                signer,
            )
            .await?;
        // The room's next event may be built on this one while it waits for the disk: a
        // power cut that loses this one loses that one too (one log, kept as a prefix).
        drop(guard);
        commit.finish(self).await?;
        Ok(event_id)
    }

    /// A timestamp for a new create event: now, or just after the previous one.
    fn next_create_ts(&self) -> u64 {
        use std::sync::atomic::Ordering::SeqCst;
        let now = utils::now_millis();
        let mut last = self.last_create_ts.load(SeqCst);
        loop {
            let next = now.max(last + 1);
            match self
                .last_create_ts
                .compare_exchange(last, next, SeqCst, SeqCst)
            {
                Ok(_) => return next,
                Err(actual) => last = actual,
            }
        }
    }

    /// The current state events a new event must cite as its `auth_events`, looked up in the
    /// state `entries`.
    pub(crate) fn auth_event_ids(
        &self,
        rules: &RoomVersionRules,
        entries: &[StateEntry],
        sender: &UserId,
        event: &LocalEvent<'_>,
    ) -> Result<Vec<OwnedEventId>> {
        let kind = TimelineEventType::from(event.event_type);
        let raw_content = serde_json::value::to_raw_value(&event.content)?;
        let auth_keys = auth::auth_event_keys(
            &rules.authorization,
            &kind,
            sender,
            event.state_key,
            &raw_content,
        )?;
        let mut auth_ids = Vec::with_capacity(auth_keys.len());
        for (event_type, state_key) in &auth_keys {
            if let Some(id) = self.lookup(entries, &event_type.to_string(), state_key)? {
                auth_ids.push(id);
            }
        }
        Ok(auth_ids)
    }

    // The event's parts come from several places (the room record, the client, the caller's
    // transaction and clock); bundling them into a struct would only move the list.
    #[allow(clippy::too_many_arguments)]
    async fn append_with(
        &self,
        room_id: Option<&RoomId>,
        room: RoomRecord,
        sender: &UserId,
        event: LocalEvent<'_>,
        txn: Option<&ClientTxn<'_>>,
        origin_server_ts: u64,
        signer: &Signer<'_>,
    ) -> Result<(OwnedRoomId, OwnedEventId, PendingCommit)> {
        let rules = rules_of(&room.version)?;
        // Forks (state_res.rs): with several forward extremities, which only federation (or a
        // test) creates, the state before the new event is the resolution of the states after
        // each of them. With one extremity, the usual case, this costs nothing.
        let room = if room.extremities.len() > 1 {
            self.merge_forks(room)?
        } else {
            room
        };
        // A redaction redacts its target in the same batch.
        let redact_target = match event.redacts {
            Some(target) if event.event_type == "m.room.redaction" => Some(
                self.short
                    .existing_event(target.as_str())?
                    .ok_or_else(|| Error::not_found("No such event to redact."))?,
            ),
            _ => None,
        };
        // The compressed state before the event; lookups resolve only the keys they need, so
        // the cost does not grow with the size of the room's state.
        let entries: Vec<StateEntry> = if room.state == 0 {
            Vec::new()
        } else {
            self.states.load(room.state)?
        };
        let state_event =
            |event_type: &str, state_key: &str| self.lookup(&entries, event_type, state_key);
        let auth_ids = self.auth_event_ids(&rules, &entries, sender, &event)?;
        // Rooms v1 and v2 refer to events by reference hash, which needs their PDUs; later
        // versions need only the IDs, so nothing is loaded for them.
        let needs_pdus = rules.events_reference_format
            == ruma::room_version_rules::EventsReferenceFormatVersion::V1;
        let load = |ids: &[OwnedEventId]| -> Result<Vec<Option<CanonicalJsonObject>>> {
            ids.iter()
                .map(|id| match needs_pdus {
                    true => self
                        .pdu_json(id)?
                        .map(Some)
                        .ok_or_else(|| Error::internal(format!("missing event {id}"))),
                    false => Ok(None),
                })
                .collect()
        };
        let auth_json = load(&auth_ids)?;
        let prev_json = load(&room.extremities)?;
        let CanonicalJsonValue::Object(content) = CanonicalJsonValue::try_from(event.content)
            .map_err(|e| Error::bad_json(format!("Invalid event content: {e}")))?
        else {
            return Err(Error::bad_json("Event content must be a JSON object."));
        };
        let signed = pdu::build(
            NewEvent {
                room_id,
                sender,
                event_type: event.event_type,
                state_key: event.state_key,
                content,
                redacts: event.redacts,
                prev_events: &event_refs(&room.extremities, &prev_json),
                auth_events: &event_refs(&auth_ids, &auth_json),
                depth: pdu::depth_after(room.depth),
                origin_server_ts,
            },
            &rules,
            signer.server_name,
            signer.key,
        )?;
        if room_id.is_none() && self.room(&signed.room_id)?.is_some() {
            // A v12 room ID is the create event's hash: never let a new room take over one.
            return Err(Error::internal(format!(
                "a new create event hashes to the existing room {}",
                signed.room_id
            )));
        }
        let pdu = Pdu::from_json(signed.event_id.clone(), &signed.json, &rules)?;
        auth::authorize(
            &rules.authorization,
            &pdu,
            |id: &EventId| self.load_pdu(id, &rules),
            |kind: &StateEventType, key: &str| match state_event(&kind.to_string(), key) {
                Ok(id) => id.and_then(|id| self.load_pdu(&id, &rules)),
                Err(e) => {
                    tracing::error!(%kind, key, "looking up state for the auth rules failed: {e}");
                    None
                }
            },
        )?;

        // Allowed: work out the state after it and write everything in one batch.
        let short_event = self.short.event(signed.event_id.as_str())?;
        let new_state = match event.state_key {
            Some(state_key) => {
                let mut after = entries.clone();
                let key = self.short.state_key(event.event_type, state_key)?;
                match after.binary_search_by_key(&key, |(k, _)| *k) {
                    Ok(i) => after[i].1 = short_event,
                    Err(i) => after.insert(i, (key, short_event)),
                }
                let parent = (room.state != 0).then_some((room.state, entries.as_slice()));
                self.states.save(&self.short, parent, &after)?
            }
            None => room.state,
        };
        let record = RoomRecord {
            version: room.version.clone(),
            state: new_state,
            extremities: vec![signed.event_id.clone()],
            depth: pdu::depth_after(room.depth),
        };
        let stored = StoredPdu {
            event_id: signed.event_id.clone(),
            pdu: signed.json,
            sent_by: txn.map(|txn| SentBy {
                device_id: txn.device_id.to_owned(),
                txn_id: txn.txn_id.to_owned(),
            }),
            short: None,
        };
        let mut batch = Batch::new();
        batch.put(
            Cf::Pdus,
            keys::u64_be(short_event),
            serde_json::to_vec(&stored)?,
        );
        batch.put(
            Cf::EventState,
            keys::u64_be(short_event),
            keys::u64_be(room.state),
        );
        batch.put(
            Cf::Rooms,
            signed.room_id.as_bytes(),
            serde_json::to_vec(&record)?,
        );
        if let Some(txn) = txn {
            batch.put(
                Cf::TxnIds,
                txn.key.clone(),
                signed.event_id.as_bytes().to_vec(),
            );
        }
        let mut redacted = None;
        if let Some(target) = redact_target
            && let Some(stored_target) = self.pdu_by_short(target)?
        {
            redacted = Some((target, stored_target.clone()));
            let mut stored_target = Arc::unwrap_or_clone(stored_target);
            let because = ruma::canonical_json::RedactedBecause::from_json(
                super::client_event::redaction_record(
                    &signed.room_id,
                    &stored.event_id,
                    &stored.pdu,
                ),
            );
            ruma::canonical_json::redact_in_place(
                &mut stored_target.pdu,
                &rules.redaction,
                Some(because),
            )
            .map_err(|e| Error::internal(format!("redaction failed: {e}")))?;
            batch.put(
                Cf::Pdus,
                keys::u64_be(target),
                serde_json::to_vec(&stored_target)?,
            );
        }

        let commit = self
            .commit_event(
                batch,
                &pipeline::Appending {
                    room_id: &signed.room_id,
                    event_id: &stored.event_id,
                    short: short_event,
                    pdu: &stored.pdu,
                    origin: pipeline::Origin::Local,
                    sender,
                    event_type: event.event_type,
                    state_key: event.state_key,
                    redacted: redacted.as_ref().map(|(short, target)| pipeline::Redacted {
                        event_id: &target.event_id,
                        short: *short,
                        pdu: &target.pdu,
                    }),
                },
            )
            .await?;
        Ok((signed.room_id, signed.event_id, commit))
    }

    /// Commits an event's `batch` through the pipeline (see [`pipeline`]): the consumers
    /// stage their work, the event takes the next stream count with its timeline entries and
    /// everything staged in one write, then the consumers and `/sync` hear of it.
    pub(crate) async fn commit_event(
        &self,
        batch: Batch,
        event: &pipeline::Appending<'_>,
    ) -> Result<PendingCommit> {
        let mut staged = self.pipeline.prepare(event)?;
        let (count, pending) = self
            .write_counted(
                Some((event.room_id, activity::Change::Event)),
                batch,
                |batch, count| {
                    index_timeline(batch, count, event.room_id, event.short, event.pdu);
                    staged.write(batch, count)
                },
            )
            .await?;
        staged.written();
        Ok(PendingCommit {
            count,
            pending,
            staged,
        })
    }
}

/// An event written (visible to reads, its staged work's caches updated) but not yet known
/// to be on disk, announced or heard of by the consumers' queues: [`PendingCommit::finish`]
/// does that, once the caller has let go of the room's lock, before answering anyone.
#[must_use = "an event's commit must be finished before it is acknowledged"]
pub(crate) struct PendingCommit {
    count: u64,
    pending: Pending,
    staged: pipeline::StagedWork,
}

impl PendingCommit {
    /// Waits for the disk (shared with other commits), announces the event to `/sync` and
    /// tells the consumers (their queues' senders wake); returns its stream count.
    pub(crate) async fn finish(self, timeline: &Timeline) -> Result<u64> {
        let count = timeline.publish(self.count, self.pending).await?;
        self.staged.committed();
        Ok(count)
    }
}

/// The timeline's own entries for an event at stream count `count`: its place in the room's
/// timeline, its count, and the room's timestamp index (`/timestamp_to_event`).
pub(crate) fn index_timeline(
    batch: &mut Batch,
    count: u64,
    room_id: &RoomId,
    short_event: u64,
    pdu: &CanonicalJsonObject,
) {
    let origin_server_ts = origin_ts(pdu);
    batch.put(
        Cf::Timeline,
        keys::join([room_id.as_bytes(), &keys::u64_be(count)]),
        keys::u64_be(short_event),
    );
    batch.put(
        Cf::EventCount,
        keys::u64_be(short_event),
        keys::u64_be(count),
    );
    batch.put(
        Cf::TimestampEvents,
        timestamp_key(room_id, origin_server_ts, count),
        keys::u64_be(short_event),
    );
}

/// An event's `origin_server_ts` (0 when missing or negative).
fn origin_ts(pdu: &CanonicalJsonObject) -> u64 {
    match pdu.get("origin_server_ts") {
        Some(CanonicalJsonValue::Integer(ts)) => u64::try_from(i64::from(*ts)).unwrap_or(0),
        _ => 0,
    }
}

/// Takes out what [`index_timeline`] wrote for an event, and the event itself (a history
/// purge): afterwards the event is unknown here but for its short ID.
pub(crate) fn unindex_timeline(
    batch: &mut Batch,
    count: u64,
    room_id: &RoomId,
    short_event: u64,
    pdu: &CanonicalJsonObject,
) {
    let origin_server_ts = origin_ts(pdu);
    batch.delete(
        Cf::Timeline,
        keys::join([room_id.as_bytes(), &keys::u64_be(count)]),
    );
    batch.delete(Cf::EventCount, keys::u64_be(short_event).to_vec());
    batch.delete(
        Cf::TimestampEvents,
        timestamp_key(room_id, origin_server_ts, count),
    );
    batch.delete(Cf::Pdus, keys::u64_be(short_event).to_vec());
}

/// Forks: the parts of the append path that state resolution (`state_res.rs`) needs.
impl Timeline {
    /// `room` with its state set to the resolution of the states after its extremities,
    /// stored as a snapshot (a delta against the current state). State resolution is
    /// CPU-bound and synchronous: on a multi-threaded runtime it tells tokio so
    /// (`block_in_place`), so a large conflict does not stall the other tasks of its worker.
    fn merge_forks(&self, mut room: RoomRecord) -> Result<RoomRecord> {
        let resolve = || self.state_at_extremities(&room.version, &room.extremities);
        let resolved = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(resolve),
            _ => resolve(),
        }?;
        room.state = self.save_state(room.state, &resolved)?;
        Ok(room)
    }

    /// The storage state resolution reads directly (its auth-chain cache).
    pub(crate) fn storage(&self) -> (&Store, &ShortIds) {
        (&self.store, &self.short)
    }

    /// Stores a state map as a snapshot, as a delta against `parent` (a short state hash, 0 for
    /// none) where that pays, and returns its short state hash.
    pub(crate) fn save_state(
        &self,
        parent: u64,
        state: &HashMap<(String, String), OwnedEventId>,
    ) -> Result<u64> {
        let mut entries = Vec::with_capacity(state.len());
        for ((kind, key), id) in state {
            entries.push((
                self.short.state_key(kind, key)?,
                self.short.event(id.as_str())?,
            ));
        }
        entries.sort_unstable();
        let parent_entries = match parent {
            0 => None,
            id => Some(self.states.load(id)?),
        };
        self.states.save(
            &self.short,
            parent_entries.as_deref().map(|e| (parent, e)),
            &entries,
        )
    }

    /// Appends a local event whose `prev_events` are `prev_events` instead of the room's
    /// forward extremities, making a fork: the room's extremities become the old ones minus
    /// `prev_events`, plus the new event, and the room's current state the resolution of the
    /// states after them. Stands in for federation in tests.
    #[cfg(test)]
    pub(crate) async fn append_after(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        event: LocalEvent<'_>,
        prev_events: &[OwnedEventId],
        signer: &Signer<'_>,
    ) -> Result<OwnedEventId> {
        let lock = self.room_lock(room_id);
        let _guard = lock.lock().await;
        let room = self
            .room(room_id)?
            .ok_or_else(|| Error::not_found("No such room."))?;
        let state = match prev_events {
            [one] => self.save_state(room.state, &self.state_after(one)?)?,
            _ => room.state,
        };
        let forked = RoomRecord {
            extremities: prev_events.to_vec(),
            state,
            ..room.clone()
        };
        let (_, event_id, commit) = self
            .append_with(
                Some(room_id),
                forked,
                sender,
                event,
                None,
                utils::now_millis(),
                signer,
            )
            .await?;
        commit.finish(self).await?;
        let mut record = self
            .room(room_id)?
            .ok_or_else(|| Error::internal("room vanished"))?;
        record.extremities = room
            .extremities
            .iter()
            .filter(|e| !prev_events.contains(e))
            .cloned()
            .chain([event_id.clone()])
            .collect();
        if record.extremities.len() > 1 {
            let resolved = self.state_at_extremities(&record.version, &record.extremities)?;
            record.state = self.save_state(record.state, &resolved)?;
        }
        let mut batch = Batch::new();
        batch.put(Cf::Rooms, room_id.as_bytes(), serde_json::to_vec(&record)?);
        self.store.write(batch)?;
        Ok(event_id)
    }
}

#[cfg(test)]
mod tests;
