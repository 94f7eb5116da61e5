//! Pushing events to appservices: a persistent queue per appservice and one sender task each.
//!
//! The append path writes a queue entry for every interested appservice in the event's own
//! batch (so an event that is stored is never missing from the queue, whatever crashes). A
//! sender task turns the head of its queue into a transaction, records it (ID, the queue keys it
//! covers and its exact body) before sending, and sends it with `PUT
//! /_matrix/app/v1/transactions/{txnId}` until the appservice accepts it; only then are those
//! queue entries deleted and the next transaction ID taken, in one batch. After a crash or
//! restart, the recorded transaction is sent again unchanged, as the spec asks of a retry.
//! Failures back off exponentially (up to five minutes); new events end a long wait early.

use std::{
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use ruma::{RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Appservice, Appservices};
use crate::{
    Result,
    service::{
        Services,
        metrics::Outcome,
        rooms::{
            client_event::Detail,
            timeline::pipeline::{Appending, EventConsumer, Origin, Staged},
        },
    },
    store::{Batch, Cf, keys},
    utils,
};

/// Items per transaction (Synapse's limit for events too).
const MAX_ITEMS: usize = 100;
const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// During a back-off longer than this, new data makes the sender try again at once.
const WAKE_AFTER: Duration = Duration::from_secs(2);
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// One queued item.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum QueueItem {
    /// A room event, by its room and short event id.
    Pdu { room_id: String, short: u64 },
    /// An ephemeral event (typing, receipt, presence), as sent.
    Edu(Value),
    /// A to-device message (MSC4203), as sent.
    ToDevice(Value),
    /// A device whose one-time or fallback keys changed (MSC3202): its counts are read when
    /// the transaction is built.
    Keys { user_id: String, device_id: String },
    /// A user whose device list changed (MSC3202).
    DeviceList { user_id: String },
}

#[derive(Default, Serialize, Deserialize)]
struct TxnState {
    next_txn_id: u64,
    pending: Option<PendingTxn>,
}

#[derive(Serialize, Deserialize)]
struct PendingTxn {
    txn_id: u64,
    keys: Vec<Vec<u8>>,
    body: Value,
}

/// `appservice_id 0xFF count ++ seq`: queue order is stream order.
fn queue_key(id: &str, count: u64, seq: u64) -> Vec<u8> {
    let mut at = [0u8; 16];
    at[..8].copy_from_slice(&keys::u64_be(count));
    at[8..].copy_from_slice(&keys::u64_be(seq));
    keys::join([id.as_bytes(), &at])
}

/// Sequence numbers for items that do not take a stream count of their own: unique and
/// increasing across restarts (microseconds at start-up, then counting).
static SEQ: AtomicU64 = AtomicU64::new(0);

fn next_seq() -> u64 {
    let start = utils::now_millis() * 1000;
    let _ = SEQ.compare_exchange(0, start, Ordering::SeqCst, Ordering::SeqCst);
    SEQ.fetch_add(1, Ordering::SeqCst).max(1)
}

/// The appservice queue as a consumer of the commit pipeline: each room event (made here or
/// received, not backfilled history) is queued for the appservices interested in it, in the
/// event's own batch.
pub struct RoomEventQueue(pub Arc<Appservices>);

/// One event's queue entries.
struct QueuedPdu {
    appservices: Arc<Appservices>,
    targets: Vec<Arc<Appservice>>,
    item: Vec<u8>,
    room_id: ruma::OwnedRoomId,
    /// A membership change: who is interested in the room may change with it.
    membership_change: bool,
}

impl EventConsumer for RoomEventQueue {
    fn prepare(&self, event: &Appending<'_>) -> Result<Option<Box<dyn Staged>>> {
        if matches!(event.origin, Origin::Backfill | Origin::Import) {
            return Ok(None);
        }
        let targets = self.0.interested_in_event(
            event.room_id,
            event.sender,
            event.event_type,
            event.state_key,
        )?;
        let membership_change = event.event_type == "m.room.member";
        if targets.is_empty() && !membership_change {
            return Ok(None);
        }
        let item = QueueItem::Pdu {
            room_id: event.room_id.to_string(),
            short: event.short,
        };
        Ok(Some(Box::new(QueuedPdu {
            appservices: self.0.clone(),
            targets,
            item: serde_json::to_vec(&item)?,
            room_id: event.room_id.to_owned(),
            membership_change,
        })))
    }
}

impl Staged for QueuedPdu {
    fn write(&mut self, batch: &mut Batch, count: u64) -> Result<()> {
        for service in &self.targets {
            batch.put(
                Cf::AppserviceQueue,
                queue_key(service.id(), count, 0),
                self.item.clone(),
            );
        }
        Ok(())
    }

    fn written(&mut self) {
        if self.membership_change {
            self.appservices.forget_room_interest(&self.room_id);
        }
    }

    fn committed(self: Box<Self>) {
        Appservices::wake(&self.targets);
    }
}

impl Appservices {
    /// Wakes the sender tasks of `targets` (after their entries are written).
    pub fn wake(targets: &[Arc<Appservice>]) {
        for service in targets {
            service.wake.notify_one();
        }
    }

    fn queue_other(&self, targets: &[Arc<Appservice>], count: u64, item: &QueueItem) -> Result<()> {
        if targets.is_empty() {
            return Ok(());
        }
        let value = serde_json::to_vec(item)?;
        let mut batch = Batch::new();
        for service in targets {
            batch.put(
                Cf::AppserviceQueue,
                queue_key(service.id(), count, next_seq()),
                value.clone(),
            );
        }
        self.store.write(batch)?;
        Self::wake(targets);
        Ok(())
    }
}

impl Services {
    /// Queues an ephemeral event of a room (typing, receipt) for the appservices that asked for
    /// ephemeral events and are interested in the room.
    pub fn push_room_edu(&self, room_id: &RoomId, event: Value) -> Result<()> {
        self.push_room_edu_for(room_id, event, None)
    }

    /// Like [`Services::push_room_edu`], limited to the appservices whose namespace holds
    /// `owner` when it is given (private read receipts).
    pub fn push_room_edu_for(
        &self,
        room_id: &RoomId,
        event: Value,
        owner: Option<&UserId>,
    ) -> Result<()> {
        let mut targets = self.appservices.interested_in_room(room_id)?;
        if let Some(owner) = owner {
            targets.retain(|s| s.is_user_match(owner));
        }
        self.appservices.queue_other(
            &targets,
            self.timeline.current_count(),
            &QueueItem::Edu(event),
        )
    }

    /// Queues an ephemeral event for `targets`.
    pub fn push_edu_to(&self, targets: &[Arc<Appservice>], event: Value) -> Result<()> {
        self.appservices.queue_other(
            targets,
            self.timeline.current_count(),
            &QueueItem::Edu(event),
        )
    }

    /// MSC3202: queues the new one-time/fallback key counts of a device of an appservice's user.
    pub fn push_key_counts(&self, user_id: &UserId, device_id: &ruma::DeviceId) -> Result<()> {
        let targets: Vec<_> = self
            .appservices
            .interested_in_user(user_id)
            .into_iter()
            .filter(|s| s.file.msc3202 == Some(true))
            .collect();
        self.appservices.queue_other(
            &targets,
            self.timeline.current_count(),
            &QueueItem::Keys {
                user_id: user_id.to_string(),
                device_id: device_id.to_string(),
            },
        )
    }

    /// MSC3202: queues device-list changes for the appservices that own the users or share a
    /// room with them.
    pub fn push_device_list_changes(&self, users: &[&UserId]) -> Result<()> {
        let list = self.appservices.list();
        if !list
            .iter()
            .any(|s| s.file.msc3202 == Some(true) && s.url().is_some())
        {
            return Ok(());
        }
        for user in users {
            let mut targets = self.appservices.interested_in_user(user);
            for item in self
                .store
                .scan_prefix(Cf::UserRooms, &keys::prefix(user.as_bytes()))
            {
                let (key, value) = item?;
                let joined = serde_json::from_slice::<Value>(&value)
                    .is_ok_and(|m| m["membership"] == "join");
                let room = String::from_utf8_lossy(&key[user.as_str().len() + 1..]).into_owned();
                let (true, Ok(room)) = (joined, RoomId::parse(&room)) else {
                    continue;
                };
                let list = self.appservices.list();
                let flags = self.appservices.room_interest(&list, &room)?;
                targets.extend(
                    list.iter()
                        .zip(flags.iter())
                        .filter(|(s, f)| **f && s.url().is_some())
                        .map(|(s, _)| s.clone()),
                );
            }
            targets.retain(|s| s.file.msc3202 == Some(true));
            targets.sort_by(|a, b| a.id().cmp(b.id()));
            targets.dedup_by(|a, b| a.id() == b.id());
            self.appservices.queue_other(
                &targets,
                self.timeline.current_count(),
                &QueueItem::DeviceList {
                    user_id: user.to_string(),
                },
            )?;
        }
        Ok(())
    }

    /// Queues a to-device message for the appservices that own its recipient and asked for
    /// to-device messages (MSC4203).
    pub fn push_to_device(&self, recipient: &UserId, event: Value) -> Result<()> {
        let targets: Vec<_> = self
            .appservices
            .interested_in_user(recipient)
            .into_iter()
            .filter(|s| s.receive_to_device())
            .collect();
        self.appservices.queue_other(
            &targets,
            self.timeline.current_count(),
            &QueueItem::ToDevice(event),
        )
    }

    /// The transaction to send next: the recorded one, or a new one from the head of the queue
    /// (recorded before it is returned). `None` when the queue is empty.
    fn prepare_transaction(&self, service: &Appservice) -> Result<Option<(u64, Value)>> {
        let id = service.id();
        let mut state: TxnState = match self.store.get(Cf::AppserviceTxns, id.as_bytes())? {
            Some(bytes) => serde_json::from_slice(&bytes)?,
            None => TxnState::default(),
        };
        if let Some(pending) = &state.pending {
            return Ok(Some((pending.txn_id, pending.body.clone())));
        }
        let prefix = keys::prefix(id.as_bytes());
        let mut queue_keys = Vec::new();
        let (mut events, mut ephemeral, mut to_device) = (Vec::new(), Vec::new(), Vec::new());
        let mut changed: Vec<String> = Vec::new();
        let mut key_devices: Vec<(String, String)> = Vec::new();
        let mut view = self.event_view(None);
        for item in self
            .store
            .scan_prefix(Cf::AppserviceQueue, &prefix)
            .take(MAX_ITEMS)
        {
            let (key, value) = item?;
            queue_keys.push(key.to_vec());
            match serde_json::from_slice::<QueueItem>(&value) {
                Ok(QueueItem::Pdu { room_id, short }) => {
                    let Some(event_id) = self.short_ids.event_id(short)? else {
                        continue;
                    };
                    let (Ok(room_id), Ok(event_id)) =
                        (RoomId::parse(&room_id), ruma::EventId::parse(&event_id))
                    else {
                        continue;
                    };
                    if let Ok(event) = view.event(&room_id, &event_id, None, Detail::State) {
                        events.push(event);
                    }
                }
                Ok(QueueItem::Edu(event)) => ephemeral.push(event),
                Ok(QueueItem::ToDevice(event)) => to_device.push(event),
                Ok(QueueItem::DeviceList { user_id }) => {
                    if !changed.contains(&user_id) {
                        changed.push(user_id);
                    }
                }
                Ok(QueueItem::Keys { user_id, device_id }) => {
                    if !key_devices.contains(&(user_id.clone(), device_id.clone())) {
                        key_devices.push((user_id, device_id));
                    }
                }
                Err(e) => tracing::warn!(appservice = id, "skipping a corrupt queue entry: {e}"),
            }
        }
        if queue_keys.is_empty() {
            return Ok(None);
        }
        let mut body = json!({ "events": events });
        if !ephemeral.is_empty() {
            // The stable name and MSC2409's, which bridges built before v1.x still read.
            body["ephemeral"] = Value::Array(ephemeral.clone());
            body["de.sorunome.msc2409.ephemeral"] = Value::Array(ephemeral);
        }
        if !to_device.is_empty() {
            body["de.sorunome.msc2409.to_device"] = Value::Array(to_device);
        }
        if !changed.is_empty() {
            body["org.matrix.msc3202.device_lists"] = json!({ "changed": changed, "left": [] });
        }
        if !key_devices.is_empty() {
            // Counts as they are now (later changes are queued again, so nothing is missed).
            let mut counts = serde_json::Map::new();
            let mut fallback = serde_json::Map::new();
            for (user, device) in key_devices {
                let (Ok(user_id), device_id) = (
                    UserId::parse(&user),
                    ruma::OwnedDeviceId::from(device.as_str()),
                ) else {
                    continue;
                };
                let count = self.one_time_key_counts(&user_id, &device_id)?;
                let types = self.unused_fallback_key_types(&user_id, &device_id)?;
                counts
                    .entry(user.clone())
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                    .map(|m| m.insert(device.clone(), json!(count)));
                fallback
                    .entry(user)
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                    .map(|m| m.insert(device, json!(types)));
            }
            body["org.matrix.msc3202.device_one_time_keys_count"] = Value::Object(counts);
            body["org.matrix.msc3202.device_unused_fallback_key_types"] = Value::Object(fallback);
        }
        let txn_id = state.next_txn_id.max(1);
        state.pending = Some(PendingTxn {
            txn_id,
            keys: queue_keys,
            body: body.clone(),
        });
        self.store.put(
            Cf::AppserviceTxns,
            id.as_bytes(),
            &serde_json::to_vec(&state)?,
        )?;
        Ok(Some((txn_id, body)))
    }

    /// The appservice accepted transaction `txn_id`: drop its entries, take the next ID.
    fn acknowledge_transaction(&self, service: &Appservice, txn_id: u64) -> Result<()> {
        let id = service.id();
        let Some(bytes) = self.store.get(Cf::AppserviceTxns, id.as_bytes())? else {
            return Ok(());
        };
        let state: TxnState = serde_json::from_slice(&bytes)?;
        let Some(pending) = state.pending.filter(|p| p.txn_id == txn_id) else {
            return Ok(());
        };
        let mut batch = Batch::new();
        for key in pending.keys {
            batch.delete(Cf::AppserviceQueue, key);
        }
        let next = TxnState {
            next_txn_id: txn_id + 1,
            pending: None,
        };
        batch.put(
            Cf::AppserviceTxns,
            id.as_bytes(),
            serde_json::to_vec(&next)?,
        );
        self.store.write(batch)?;
        Ok(())
    }

    /// Starts the sender tasks of registrations that have none yet. The tasks hold the
    /// services weakly, so they end with the server (and when unregistered).
    pub fn start_appservice_senders(self: &Arc<Self>) {
        self.appservices
            .started
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let pending: Vec<_> = std::mem::take(
            &mut *self
                .appservices
                .spawn_requests
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for service in pending {
            if service.url().is_some() {
                tokio::spawn(run_sender(Arc::downgrade(self), service));
            }
        }
    }

    /// Registers an appservice at run time (the admin interface's entry point) and starts
    /// its sender.
    pub fn register_appservice(
        self: &Arc<Self>,
        file: super::RegistrationFile,
    ) -> Result<Arc<Appservice>> {
        let service = self.appservices.register(file)?;
        if self.appservices.started.load(Ordering::SeqCst) {
            self.start_appservice_senders();
        }
        Ok(service)
    }
}

/// Why a push failed (for the log).
async fn send_transaction(
    http: &reqwest::Client,
    service: &Appservice,
    txn_id: u64,
    body: &Value,
) -> Result<(), String> {
    let url = service.url().ok_or("no url")?;
    let url = format!(
        "{}/_matrix/app/v1/transactions/{txn_id}",
        url.trim_end_matches('/')
    );
    let response = http
        .put(&url)
        .bearer_auth(&service.registration().hs_token)
        .timeout(SEND_TIMEOUT)
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("status {}", response.status()))
    }
}

async fn run_sender(services: Weak<Services>, service: Arc<Appservice>) {
    let mut backoff = INITIAL_BACKOFF;
    loop {
        if service.retired.load(Ordering::SeqCst) {
            return;
        }
        // Hold the services only while touching the database: a sender waiting on a slow
        // appservice must not keep a stopped server's database open.
        let (prepared, http) = {
            let Some(services) = services.upgrade() else {
                return;
            };
            (
                services.prepare_transaction(&service),
                services.appservices.http.clone(),
            )
        };
        let (txn_id, body) = match prepared {
            Ok(Some(next)) => next,
            Ok(None) => {
                // Idle: wait for new data (or look again now and then, so a stopped server's
                // task notices and ends).
                tokio::select! {
                    _ = service.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
                continue;
            }
            Err(e) => {
                tracing::error!(appservice = service.id(), "cannot build a transaction: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        match send_transaction(&http, &service, txn_id, &body).await {
            Ok(()) => {
                backoff = INITIAL_BACKOFF;
                let Some(services) = services.upgrade() else {
                    return;
                };
                services.metrics.appservice_transaction(Outcome::sent);
                if let Err(e) = services.acknowledge_transaction(&service, txn_id) {
                    tracing::error!(
                        appservice = service.id(),
                        "cannot record a sent transaction: {e}"
                    );
                }
            }
            Err(e) => {
                if let Some(services) = services.upgrade() {
                    services.metrics.appservice_transaction(Outcome::failed);
                }
                tracing::warn!(
                    appservice = service.id(),
                    txn_id,
                    retry_in_ms = backoff.as_millis() as u64,
                    "pushing a transaction failed: {e}"
                );
                let wait = backoff;
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = async {
                        tokio::time::sleep(wait.min(WAKE_AFTER)).await;
                        service.wake.notified().await;
                    } => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
