//! Delayed events (MSC4140): a message or state event that the server sends later, unless it
//! is cancelled or its timer restarted first. Element Call schedules a "leave" for each call it
//! joins and keeps restarting it; a client that crashes stops restarting it, and the server
//! sends the leave, so no call stays stuck.
//!
//! Kept in the store (a restart sends what fell due meanwhile):
//! - `delayed_events`: `delay_id` → [`DelayedEvent`];
//! - `delayed_due`: send time (u64 BE) ++ `delay_id` → empty, what the timer works through;
//! - `delayed_by_user`: `user 0xFF delay_id` → empty, for listing and the per-user limit;
//! - `delayed_by_state`: `room 0xFF type 0xFF state_key 0xFF delay_id` → owner, so a state
//!   change by someone else cancels the pending delayed state events it overwrites;
//! - `delayed_txns`: `user 0xFF device 0xFF room 0xFF txn` → `delay_id`, so a retried send
//!   gets the same delay ID;
//! - `delayed_finalised`: `user 0xFF time (u64 BE) ++ delay_id` → [`Finalised`]: what became of
//!   the user's last [`KEPT_FINALISED`] delayed events (sent, cancelled, failed), for the
//!   listing's `status=finalised`.
//!
//! A delayed event leaves these in the batch of the event it becomes, and a state event
//! cancels others' pending ones in its own batch: both through the commit pipeline
//! ([`DelayedEventCommits`]). An event that can no longer be sent when it falls due (the user
//! left, lost the power) is dropped, as Synapse does.

use std::{sync::Arc, time::Duration};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId, events::room::member::MembershipState};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    Error, Result,
    service::{
        Services,
        rooms::timeline::{
            ClientTxn, LocalEvent,
            pipeline::{Appending, EventConsumer, Origin, Staged},
            with_origin_ts,
        },
    },
    store::{Batch, Cf, Store, keys},
    utils,
};

/// Scheduled delayed events one user may have at once (Synapse's default).
pub const MAX_PER_USER: usize = 100;
/// Finalised delayed events kept per user (older ones are dropped as new ones come).
pub const KEPT_FINALISED: usize = 50;

/// One scheduled event.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DelayedEvent {
    pub delay_id: String,
    pub user_id: OwnedUserId,
    pub room_id: OwnedRoomId,
    pub event_type: String,
    /// Present for a state event.
    pub state_key: Option<String>,
    pub content: Value,
    pub delay_ms: u64,
    /// When it is sent (milliseconds since the epoch): its timer's start plus the delay.
    pub send_at: u64,
    /// The `origin_server_ts` an appservice chose (`ts`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_ts: Option<u64>,
}

impl DelayedEvent {
    /// As the listing shows it: the names of the merged MSC and the older ones clients read.
    pub fn to_json(&self) -> Value {
        let since = self.send_at.saturating_sub(self.delay_ms);
        let mut out = json!({
            "delay_id": self.delay_id,
            "room_id": self.room_id,
            "type": self.event_type,
            "content": self.content,
            "delay_ms": self.delay_ms,
            "delayed_since_ts": since,
            "delay": self.delay_ms,
            "running_since": since,
        });
        if let Some(key) = &self.state_key {
            out["state_key"] = key.as_str().into();
        }
        out
    }

    fn due_key(&self) -> Vec<u8> {
        let mut key = keys::u64_be(self.send_at).to_vec();
        key.extend_from_slice(self.delay_id.as_bytes());
        key
    }

    fn user_key(&self) -> Vec<u8> {
        keys::join([self.user_id.as_bytes(), self.delay_id.as_bytes()])
    }

    fn state_index_key(&self) -> Option<Vec<u8>> {
        let key = self.state_key.as_ref()?;
        Some(keys::join([
            self.room_id.as_bytes(),
            self.event_type.as_bytes(),
            key.as_bytes(),
            self.delay_id.as_bytes(),
        ]))
    }

    /// Adds the event and its index entries to `batch`.
    fn put(&self, batch: &mut Batch) -> Result<()> {
        batch.put(
            Cf::DelayedEvents,
            self.delay_id.as_bytes(),
            serde_json::to_vec(self)?,
        );
        batch.put(Cf::DelayedDue, self.due_key(), Vec::new());
        batch.put(Cf::DelayedByUser, self.user_key(), Vec::new());
        if let Some(key) = self.state_index_key() {
            batch.put(Cf::DelayedByState, key, self.user_id.as_bytes().to_vec());
        }
        Ok(())
    }

    /// Removes the event and its index entries in `batch`.
    fn delete(&self, batch: &mut Batch) {
        batch.delete(Cf::DelayedEvents, self.delay_id.as_bytes());
        batch.delete(Cf::DelayedDue, self.due_key());
        batch.delete(Cf::DelayedByUser, self.user_key());
        if let Some(key) = self.state_index_key() {
            batch.delete(Cf::DelayedByState, key);
        }
    }
}

/// What became of a delayed event: sent (with its event ID) or not (with the error).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Finalised {
    pub event: DelayedEvent,
    pub finalised_ts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

impl Finalised {
    /// As the listing shows it (ruma's `DelayedEventData`: the event, `finalised_ts`, and
    /// `event_id` or `error`).
    pub fn to_json(&self) -> Value {
        let mut out = self.event.to_json();
        out["finalised_ts"] = self.finalised_ts.into();
        if let Some(id) = &self.event_id {
            out["event_id"] = id.as_str().into();
        }
        if let Some(error) = &self.error {
            out["error"] = error.clone();
        }
        out
    }
}

/// The end of a delayed event, ready to join a batch: its records out, its [`Finalised`] in,
/// and the user's oldest finalised ones out beyond [`KEPT_FINALISED`].
struct Finalisation {
    event: DelayedEvent,
    finalised: (Vec<u8>, Vec<u8>),
    dropped: Vec<Vec<u8>>,
}

impl Finalisation {
    /// Reads what the user keeps already (one prefix scan).
    fn new(
        store: &Store,
        event: DelayedEvent,
        event_id: Option<String>,
        error: Option<Value>,
    ) -> Result<Self> {
        let now = utils::now_millis();
        let prefix = keys::prefix(event.user_id.as_bytes());
        let mut kept = Vec::new();
        for item in store.scan_prefix(Cf::DelayedFinalised, &prefix) {
            kept.push(item?.0.to_vec());
        }
        let excess = (kept.len() + 1).saturating_sub(KEPT_FINALISED);
        kept.truncate(excess);
        let mut key = prefix;
        key.extend_from_slice(&keys::u64_be(now));
        key.extend_from_slice(event.delay_id.as_bytes());
        let record = Finalised {
            event: event.clone(),
            finalised_ts: now,
            event_id,
            error,
        };
        Ok(Self {
            finalised: (key, serde_json::to_vec(&record)?),
            event,
            dropped: kept,
        })
    }

    fn write(&self, batch: &mut Batch) {
        self.event.delete(batch);
        batch.put(
            Cf::DelayedFinalised,
            self.finalised.0.clone(),
            self.finalised.1.clone(),
        );
        for key in &self.dropped {
            batch.delete(Cf::DelayedFinalised, key.clone());
        }
    }
}

/// The error recorded for a delayed event that was not sent.
fn error_json(errcode: &str, message: &str) -> Value {
    json!({ "errcode": errcode, "error": message })
}

/// What `restart`, `cancel` and `send` do to a scheduled event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DelayedAction {
    Restart,
    Cancel,
    Send,
}

/// A new delayed event, as a send or state request describes it.
pub struct NewDelayedEvent<'a> {
    pub room_id: &'a RoomId,
    pub event_type: &'a str,
    pub state_key: Option<&'a str>,
    pub content: Value,
    pub delay_ms: u64,
    pub origin_ts: Option<u64>,
}

/// The delayed events' timer and limits.
pub struct DelayedEvents {
    store: Store,
    /// The longest delay allowed, in milliseconds; 0: delayed events are off.
    pub max_delay_ms: u64,
    /// Woken when an event is scheduled or restarted (it may be due before the timer's next).
    /// Shared with the timer task, which must not keep the services alive while it waits.
    wake: Arc<tokio::sync::Notify>,
}

tokio::task_local! {
    /// The delayed event being sent by the append running inside it: its records leave in the
    /// event's own batch.
    static SENDING: Arc<DelayedEvent>;
}

impl DelayedEvents {
    pub fn new(store: Store, max_delay_ms: u64) -> Self {
        Self {
            store,
            max_delay_ms,
            wake: Arc::new(tokio::sync::Notify::new()),
        }
    }

    fn load(&self, delay_id: &str) -> Result<Option<DelayedEvent>> {
        match self.store.get(Cf::DelayedEvents, delay_id.as_bytes())? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// The user's scheduled events, soonest first.
    pub fn of_user(&self, user_id: &UserId) -> Result<Vec<DelayedEvent>> {
        let prefix = keys::prefix(user_id.as_bytes());
        let mut events = Vec::new();
        for item in self.store.scan_prefix(Cf::DelayedByUser, &prefix) {
            let (key, _) = item?;
            let id = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            if let Some(event) = self.load(&id)? {
                events.push(event);
            }
        }
        events.sort_by_key(|e| e.send_at);
        Ok(events)
    }

    /// How many events the user has scheduled (keys only: no event is read).
    fn count_of_user(&self, user_id: &UserId) -> Result<usize> {
        let prefix = keys::prefix(user_id.as_bytes());
        let mut count = 0;
        for item in self.store.scan_prefix(Cf::DelayedByUser, &prefix) {
            item?;
            count += 1;
        }
        Ok(count)
    }

    /// The user's finalised delayed events, latest first.
    pub fn finalised_of_user(&self, user_id: &UserId) -> Result<Vec<Finalised>> {
        let prefix = keys::prefix(user_id.as_bytes());
        let mut events = Vec::new();
        for item in self.store.scan_prefix(Cf::DelayedFinalised, &prefix) {
            events.push(serde_json::from_slice(&item?.1)?);
        }
        events.reverse();
        Ok(events)
    }

    /// One of the user's scheduled events.
    pub fn get(&self, user_id: &UserId, delay_id: &str) -> Result<DelayedEvent> {
        self.load(delay_id)?
            .filter(|e| e.user_id == user_id)
            .ok_or_else(unknown_delay)
    }

    /// The earliest send time scheduled, if any.
    fn next_due(&self) -> Result<Option<u64>> {
        match self.store.scan_prefix(Cf::DelayedDue, &[]).next() {
            Some(item) => Ok(keys::parse_u64_be(&item?.0[..8])),
            None => Ok(None),
        }
    }

    /// The events due at `now`, soonest first (at most `limit`).
    fn due(&self, now: u64, limit: usize) -> Result<Vec<DelayedEvent>> {
        let mut events = Vec::new();
        for item in self.store.scan_prefix(Cf::DelayedDue, &[]) {
            let (key, _) = item?;
            if key.len() < 8 || keys::parse_u64_be(&key[..8]).is_none_or(|at| at > now) {
                break;
            }
            let id = String::from_utf8_lossy(&key[8..]).into_owned();
            match self.load(&id)? {
                Some(event) => events.push(event),
                // An index entry without its event: nothing to send; drop the entry.
                None => {
                    let mut batch = Batch::new();
                    batch.delete(Cf::DelayedDue, key.to_vec());
                    self.store.write(batch)?;
                }
            }
            if events.len() == limit {
                break;
            }
        }
        Ok(events)
    }
}

fn unknown_delay() -> Error {
    Error::not_found("No scheduled delayed event has this ID.")
}

/// The error clients recognise for a delay over the server's maximum (matrix-js-sdk's call
/// membership retries with `org.matrix.msc4140.max_delay`).
fn delay_too_long(max_delay_ms: u64) -> Error {
    Error::with_fields(
        http::StatusCode::BAD_REQUEST,
        ruma::api::error::ErrorKind::Unknown,
        format!("The delay may be at most {max_delay_ms} ms."),
        [
            ("org.matrix.msc4140.errcode", json!("M_MAX_DELAY_EXCEEDED")),
            ("org.matrix.msc4140.max_delay", json!(max_delay_ms)),
        ],
    )
}

impl Services {
    /// Schedules an event `delay_ms` from now; returns its delay ID. A retried send (the same
    /// transaction) gets the same ID.
    pub async fn schedule_delayed_event(
        &self,
        user_id: &UserId,
        event: NewDelayedEvent<'_>,
        txn: Option<&ClientTxn<'_>>,
    ) -> Result<String> {
        let delayed = &self.delayed_events;
        if delayed.max_delay_ms == 0 {
            return Err(Error::forbidden(
                "Delayed events are disabled on this server.",
            ));
        }
        if event.delay_ms == 0 {
            return Err(Error::invalid_param(
                "The delay must be a positive number of ms.",
            ));
        }
        if event.delay_ms > delayed.max_delay_ms {
            return Err(delay_too_long(delayed.max_delay_ms));
        }
        let txn_key = txn.map(|txn| {
            keys::join([
                user_id.as_bytes(),
                txn.device_id.as_bytes(),
                event.room_id.as_bytes(),
                txn.txn_id.as_bytes(),
            ])
        });
        if let Some(key) = &txn_key
            && let Some(id) = self.store.get(Cf::DelayedTxns, key)?
        {
            return Ok(String::from_utf8_lossy(&id).into_owned());
        }
        let joined = self
            .members
            .membership(event.room_id, user_id)?
            .is_some_and(|m| m.membership == MembershipState::Join);
        if !joined {
            return Err(Error::forbidden("You are not in this room."));
        }
        let now = utils::now_millis();
        if delayed.count_of_user(user_id)? >= MAX_PER_USER {
            // Retry once the soonest of them is due (its events are read only here).
            let next = delayed
                .of_user(user_id)?
                .first()
                .map_or(0, |e| e.send_at.saturating_sub(now));
            return Err(Error::limit_exceeded(Duration::from_millis(next.max(1000))));
        }
        let record = DelayedEvent {
            delay_id: format!("cvd_{}", utils::random_string(20)),
            user_id: user_id.to_owned(),
            room_id: event.room_id.to_owned(),
            event_type: event.event_type.to_owned(),
            state_key: event.state_key.map(str::to_owned),
            content: event.content,
            delay_ms: event.delay_ms,
            send_at: now + event.delay_ms,
            origin_ts: event.origin_ts,
        };
        let mut batch = Batch::new();
        record.put(&mut batch)?;
        if let Some(key) = txn_key {
            batch.put(Cf::DelayedTxns, key, record.delay_id.as_bytes().to_vec());
        }
        let pending = self.store.write_pending(batch)?;
        self.store.make_durable_async(pending).await?;
        delayed.wake.notify_one();
        Ok(record.delay_id)
    }

    /// Restarts, cancels or sends a scheduled event. The delay ID is the credential (a call's
    /// SFU keeps its leave scheduled without the user's token).
    pub async fn update_delayed_event(&self, delay_id: &str, action: DelayedAction) -> Result<()> {
        let delayed = &self.delayed_events;
        let record = delayed.load(delay_id)?.ok_or_else(unknown_delay)?;
        match action {
            DelayedAction::Cancel => {
                let mut batch = Batch::new();
                let error = error_json("M_UNKNOWN", "Cancelled.");
                Finalisation::new(&self.store, record, None, Some(error))?.write(&mut batch);
                let pending = self.store.write_pending(batch)?;
                self.store.make_durable_async(pending).await?;
            }
            DelayedAction::Restart => {
                let mut batch = Batch::new();
                batch.delete(Cf::DelayedDue, record.due_key());
                let restarted = DelayedEvent {
                    send_at: utils::now_millis() + record.delay_ms,
                    ..record
                };
                restarted.put(&mut batch)?;
                let pending = self.store.write_pending(batch)?;
                self.store.make_durable_async(pending).await?;
                delayed.wake.notify_one();
            }
            DelayedAction::Send => self.send_delayed_event(record).await?,
        }
        Ok(())
    }

    /// Sends a delayed event now. Its records leave in the event's batch; when it cannot be
    /// sent, they are dropped and the error returned.
    async fn send_delayed_event(&self, record: DelayedEvent) -> Result<()> {
        let record = Arc::new(record);
        let event = match &record.state_key {
            Some(key) => LocalEvent::state(&record.event_type, key, record.content.clone()),
            None => LocalEvent {
                event_type: &record.event_type,
                state_key: None,
                content: record.content.clone(),
                redacts: None,
            },
        };
        let signer = self.signer();
        let append = self
            .timeline
            .append(&record.room_id, &record.user_id, event, &signer);
        let sent = SENDING
            .scope(record.clone(), with_origin_ts(record.origin_ts, append))
            .await;
        // Its records left with the event (or it could not be sent: they are dropped). Should
        // they still be there, the timer would send it again and again: take them out.
        if let Err(e) = &sent {
            tracing::info!(delay_id = %record.delay_id, "a delayed event could not be sent: {e}");
            let (_, body) = e.to_status_and_body();
            let mut batch = Batch::new();
            Finalisation::new(&self.store, (*record).clone(), None, Some(body))?.write(&mut batch);
            self.store.write(batch)?;
        } else if self
            .store
            .contains(Cf::DelayedEvents, record.delay_id.as_bytes())?
        {
            let mut batch = Batch::new();
            record.delete(&mut batch);
            self.store.write(batch)?;
        }
        sent.map(drop)
    }

    /// Sends every delayed event that is due; returns when the next one is.
    pub async fn send_due_delayed_events(&self) -> Result<Option<u64>> {
        loop {
            let due = self.delayed_events.due(utils::now_millis(), 64)?;
            if due.is_empty() {
                return self.delayed_events.next_due();
            }
            for record in due {
                let delay_id = record.delay_id.clone();
                // Its failure is the event's: logged and dropped in `send_delayed_event`.
                if let Err(e) = self.send_delayed_event(record).await {
                    tracing::debug!(%delay_id, "delayed event dropped: {e}");
                }
            }
        }
    }

    /// The timer: sends delayed events as they fall due (at once for those overdue after a
    /// restart). Holds the services weakly, so it ends with the server.
    pub fn run_delayed_events(self: &Arc<Self>) {
        let services = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(strong) = services.upgrade() else {
                    return;
                };
                let next = match strong.send_due_delayed_events().await {
                    Ok(next) => next,
                    Err(e) => {
                        tracing::warn!("sending delayed events failed: {e}");
                        Some(utils::now_millis() + 1000)
                    }
                };
                // At most a minute between looks, so the task notices the server has gone.
                let wait = next
                    .map_or(60_000, |at| at.saturating_sub(utils::now_millis()))
                    .min(60_000);
                let wake = Arc::clone(&strong.delayed_events.wake);
                drop(strong);
                let _ = tokio::time::timeout(Duration::from_millis(wait), wake.notified()).await;
            }
        });
    }
}

/// The commit pipeline's part: a delayed event's records leave in the batch of the event it
/// becomes, and a state event by one user cancels the pending delayed state events of others
/// for the same type and state key (Element Call schedules its leave, then sends its join: the
/// owner's own change keeps it).
pub struct DelayedEventCommits(pub Store);

struct Finished(Vec<Finalisation>);

impl EventConsumer for DelayedEventCommits {
    fn prepare(&self, event: &Appending<'_>) -> Result<Option<Box<dyn Staged>>> {
        if matches!(event.origin, Origin::Backfill | Origin::Import) {
            return Ok(None);
        }
        let mut finished = Vec::new();
        if let Ok(sending) = SENDING.try_with(Arc::clone)
            && event.origin == Origin::Local
            && event.room_id == sending.room_id
            && event.sender == sending.user_id
        {
            finished.push(Finalisation::new(
                &self.0,
                (*sending).clone(),
                Some(event.event_id.to_string()),
                None,
            )?);
        }
        if let Some(state_key) = event.state_key {
            let prefix = keys::join([
                event.room_id.as_bytes(),
                event.event_type.as_bytes(),
                state_key.as_bytes(),
                b"",
            ]);
            for item in self.0.scan_prefix(Cf::DelayedByState, &prefix) {
                let (key, owner) = item?;
                if owner.as_ref() == event.sender.as_bytes() {
                    continue;
                }
                let id = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
                if let Some(bytes) = self.0.get(Cf::DelayedEvents, id.as_bytes())? {
                    let error = json!({
                        "errcode": "M_UNKNOWN",
                        "error": "Cancelled: someone else changed this state.",
                        "org.matrix.msc4140.errcode": "M_CANCELLED_BY_STATE_UPDATE",
                    });
                    finished.push(Finalisation::new(
                        &self.0,
                        serde_json::from_slice(&bytes)?,
                        None,
                        Some(error),
                    )?);
                }
            }
        }
        Ok((!finished.is_empty()).then(|| Box::new(Finished(finished)) as Box<dyn Staged>))
    }
}

impl Staged for Finished {
    fn write(&mut self, batch: &mut Batch, _count: u64) -> Result<()> {
        for finalisation in &self.0 {
            finalisation.write(batch);
        }
        Ok(())
    }
}
