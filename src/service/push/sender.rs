//! The push sender: one task per pusher. It takes the user's notifications after the pusher's
//! recorded position, oldest first, to the push gateway (`POST <data.url>`, the push-gateway
//! API's `/notify`), and records the new position after each success. A notification read in
//! the meantime is skipped. Failures back off (1 s doubling to an hour); a notification that
//! could not be delivered for a day is given up, so that a gateway that comes back does not get
//! a day of stale pushes. A gateway that rejects the pushkey ends the pusher. When nothing is
//! waiting and the user's badge changed (a read receipt), the new count is sent alone.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use ruma::{OwnedUserId, UserId};
use serde_json::{Map, Value, json};
use tokio::sync::Notify;

use super::{
    evaluate::{NotificationRecord, notification_key},
    pushers::{PusherRecord, pusher_key},
};
use crate::{
    Error, Result,
    service::{Services, metrics::Outcome, rooms::pdu},
    store::{Batch, Cf, keys},
    utils,
};

/// The sender thread's nice value: request handlers (sends, syncs) go first, pushes use what
/// CPU they leave. A burst of messages to a room of 100 pushers is 100 pushes per message;
/// at the same priority they took a quarter of the send throughput of a 2-core machine.
const SENDER_NICE: libc::c_int = 10;

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Notifications a pusher reads at once (one seek, one badge count for them all).
const PUSH_BATCH: usize = 32;
/// A notification failing this long is given up.
const GIVE_UP_AFTER_MS: u64 = 24 * 60 * 60 * 1000;

/// The part of a push that comes from its event (see `Services::event_summary`).
#[derive(Debug, Default)]
pub(super) struct EventSummary {
    /// Whether the event is stored here (a push without it carries the IDs alone).
    found: bool,
    event_type: String,
    /// `type`, `sender`, `content`, `membership`, `sender_display_name`, `room_name`.
    fields: Map<String, Value>,
    /// For a member event, whom it is about (`user_is_target` differs per user).
    member_target: Option<String>,
}

/// Starts the thread the pusher tasks run on: a single-threaded runtime at a lower priority
/// than the request handlers. It lives as long as the process.
fn start_sender_thread() -> Result<tokio::runtime::Handle> {
    let (handle_tx, handle_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("culvert-push".into())
        .spawn(move || {
            // Linux keeps a nice value per thread: this one alone is lowered.
            // SAFETY: plain system calls on the calling thread.
            let lowered = unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::setpriority(libc::PRIO_PROCESS, tid, SENDER_NICE)
            };
            if lowered != 0 {
                tracing::debug!("the push sender runs at the normal priority");
            }
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = handle_tx.send(Err(e));
                    return;
                }
            };
            let _ = handle_tx.send(Ok(runtime.handle().clone()));
            runtime.block_on(std::future::pending::<()>());
        })
        .map_err(|e| Error::internal(format!("push sender thread: {e}")))?;
    handle_rx
        .recv()
        .map_err(|_| Error::internal("the push sender thread ended"))?
        .map_err(|e| Error::internal(format!("push sender runtime: {e}")))
}

/// What one step of a pusher's task did.
enum Step {
    /// A notification was sent or skipped: look for the next one.
    Progressed,
    /// Nothing to send: wait for news.
    Idle,
    /// The gateway rejected the pushkey: the pusher was deleted.
    Rejected,
}

impl Services {
    /// Starts the push sender: a task for every stored pusher (at start-up; a pusher set later
    /// starts its own).
    pub fn start_push_sender(self: &Arc<Self>) -> Result<()> {
        let _ = self.push.services.set(Arc::downgrade(self));
        let _ = self.push.runtime.set(start_sender_thread()?);
        let mut keys_found = Vec::new();
        for item in self.store.scan_prefix(Cf::Pushers, &[]) {
            let (key, _) = item?;
            keys_found.push(key.to_vec());
        }
        for key in keys_found {
            self.start_pusher(key);
        }
        Ok(())
    }

    /// Starts the task of the pusher stored under `key`, or wakes it if it runs.
    pub(crate) fn start_pusher(&self, key: Vec<u8>) {
        let Some(services) = self.push.services.get().cloned() else {
            return; // the sender is not running (the command line)
        };
        let Some(user) = keys::split(&key)
            .next()
            .and_then(|u| std::str::from_utf8(u).ok())
            .and_then(|u| UserId::parse(u).ok())
        else {
            return;
        };
        let mut tasks = self.push.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let user_tasks = tasks.entry(user.clone()).or_default();
        if let Some(notify) = user_tasks.get(&key) {
            notify.notify_one();
            return;
        }
        let notify = Arc::new(Notify::new());
        user_tasks.insert(key.clone(), notify.clone());
        let task = run_pusher(services, user, key, notify);
        match self.push.runtime.get() {
            Some(runtime) => drop(runtime.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
    }

    fn pusher_task_ended(&self, user_id: &UserId, key: &[u8]) {
        let mut tasks = self.push.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(user_tasks) = tasks.get_mut(user_id) {
            user_tasks.remove(key);
            if user_tasks.is_empty() {
                tasks.remove(user_id);
            }
        }
    }

    /// One step of a pusher: the notifications waiting (up to [`PUSH_BATCH`], read with one
    /// seek and sent with one badge count, each recorded as sent once its gateway answers),
    /// or a new badge.
    async fn push_step(
        &self,
        user_id: &UserId,
        key: &[u8],
        record: &PusherRecord,
        last_badge: &mut Option<u64>,
    ) -> Result<Step> {
        let prefix = keys::prefix(user_id.as_bytes());
        let start = notification_key(user_id, record.last_count.saturating_add(1));
        let mut waiting = Vec::new();
        for item in self
            .store
            .scan_prefix_from(Cf::Notifications, &prefix, &start)
            .take(PUSH_BATCH)
        {
            let (next_key, value) = item?;
            let count = keys::parse_u64_be(&next_key[prefix.len()..])
                .ok_or_else(|| Error::internal("corrupt notification key"))?;
            let notification: NotificationRecord = serde_json::from_slice(&value)?;
            waiting.push((count, notification));
        }
        if waiting.is_empty() {
            let badge = self.badge_count(user_id)?;
            if last_badge.is_some_and(|last| last != badge) {
                // Failures are not retried: the next push carries the count anyway.
                if let Err(e) = self.send_badge(record, badge).await {
                    tracing::info!(%user_id, "badge update failed: {e}");
                }
            }
            *last_badge = Some(badge);
            return Ok(Step::Idle);
        }
        // Counted once all these are written: it includes every one of them.
        let badge = self.badge_count(user_id)?;
        let mut failing_since = record.failing_since;
        for (count, notification) in waiting {
            // Read meanwhile (or the room left): nothing to say.
            let unread = super::counts::unread_key(user_id, &notification.room_id, count);
            if !self.store.contains(Cf::UnreadNotifications, &unread)? {
                if !self.record_progress(key, count, None).await? {
                    break;
                }
                continue;
            }
            let body = self.notification_body(user_id, record, &notification, badge)?;
            match self.post_to_gateway(record, &body).await {
                Ok(rejected) if rejected.contains(&record.pusher.ids.pushkey) => {
                    self.metrics.push(Outcome::rejected);
                    tracing::info!(%user_id, app_id = %record.pusher.ids.app_id, "the gateway rejected the pushkey: pusher removed");
                    self.remove_pusher(user_id, key).await?;
                    return Ok(Step::Rejected);
                }
                Ok(_) => {
                    self.metrics.push(Outcome::sent);
                    *last_badge = Some(badge);
                    failing_since = None;
                    if !self.record_progress(key, count, None).await? {
                        // Deleted meanwhile: its task ends at the next step.
                        break;
                    }
                }
                Err(e) => {
                    let since = failing_since.unwrap_or_else(utils::now_millis);
                    if utils::now_millis().saturating_sub(since) > GIVE_UP_AFTER_MS {
                        self.metrics.push(Outcome::given_up);
                        tracing::warn!(%user_id, "giving up a notification after a day of failures: {e}");
                        self.record_progress(key, count, None).await?;
                        return Ok(Step::Progressed);
                    }
                    self.metrics.push(Outcome::failed);
                    self.record_progress(key, record.last_count, Some(since))
                        .await?;
                    return Err(e);
                }
            }
        }
        Ok(Step::Progressed)
    }

    /// Stores a pusher's position (and since when it fails), unless it was deleted meanwhile
    /// (then `false`).
    async fn record_progress(
        &self,
        key: &[u8],
        last_count: u64,
        failing_since: Option<u64>,
    ) -> Result<bool> {
        let _guard = self.push.records.lock().await;
        let Some(mut record) = self.pusher_record(key)? else {
            return Ok(false);
        };
        record.last_count = record.last_count.max(last_count);
        record.failing_since = failing_since;
        let mut batch = Batch::new();
        batch.put(Cf::Pushers, key.to_vec(), serde_json::to_vec(&record)?);
        // A position lost to a power cut only sends a notification again: no fsync wait.
        self.store.write_without_waiting(batch)?;
        Ok(true)
    }

    async fn remove_pusher(&self, user_id: &UserId, key: &[u8]) -> Result<()> {
        let _guard = self.push.records.lock().await;
        if let Some(record) = self.pusher_record(key)? {
            let ids = &record.pusher.ids;
            let mut batch = Batch::new();
            batch.delete(Cf::Pushers, pusher_key(user_id, &ids.app_id, &ids.pushkey));
            batch.delete(
                Cf::PushkeyUsers,
                keys::join([
                    ids.app_id.as_bytes(),
                    ids.pushkey.as_bytes(),
                    user_id.as_bytes(),
                ]),
            );
            self.store.write(batch)?;
        }
        Ok(())
    }

    /// The push-gateway request for one notification: everything in the full format, only
    /// the IDs and counts in `event_id_only`.
    fn notification_body(
        &self,
        user_id: &UserId,
        record: &PusherRecord,
        notification: &NotificationRecord,
        badge: u64,
    ) -> Result<Value> {
        let tweaks = tweaks_of(&notification.actions);
        let event = self.event_summary(notification)?;
        let loud = notification.highlight
            || tweaks
                .get("highlight")
                .is_some_and(|h| h.as_bool() != Some(false))
            || tweaks.contains_key("sound");
        let prio = if event.event_type == "m.room.encrypted" || loud {
            "high"
        } else {
            "low"
        };
        let event_id_only = http_format(record) == Some("event_id_only");
        let mut device = device_json(record);
        if !event_id_only && !tweaks.is_empty() {
            device["tweaks"] = Value::Object(tweaks);
        }
        let mut body = json!({
            "event_id": notification.event_id,
            "room_id": notification.room_id,
            "prio": prio,
            "counts": { "unread": badge },
            "devices": [device],
        });
        if !event_id_only && event.found {
            for (name, value) in &event.fields {
                body[name] = value.clone();
            }
            if let Some(target) = &event.member_target {
                body["user_is_target"] = (target == user_id.as_str()).into();
            }
        }
        Ok(json!({ "notification": body }))
    }

    /// What a notification says of its event, the same for each of its pushers: read once
    /// per event, then from the cache.
    fn event_summary(&self, notification: &NotificationRecord) -> Result<Arc<EventSummary>> {
        if let Some(summary) = self.push.event_summaries.get(&notification.event_id) {
            return Ok(summary);
        }
        let mut summary = EventSummary::default();
        if let Some(event) = self.timeline.pdu_json(&notification.event_id)? {
            summary.found = true;
            summary.event_type = pdu::str_field(&event, "type")
                .unwrap_or_default()
                .to_owned();
            let sender = pdu::str_field(&event, "sender").unwrap_or_default();
            let fields = &mut summary.fields;
            fields.insert("type".into(), summary.event_type.clone().into());
            fields.insert("sender".into(), sender.into());
            if let Some(ruma::CanonicalJsonValue::Object(content)) = event.get("content")
                && !content.is_empty()
            {
                fields.insert(
                    "content".into(),
                    ruma::CanonicalJsonValue::Object(content.clone()).into(),
                );
            }
            if summary.event_type == "m.room.member"
                && let Some(target) = pdu::str_field(&event, "state_key")
            {
                summary.member_target = Some(target.to_owned());
                if let Some(membership) = pdu::content_str(&event, "membership") {
                    fields.insert("membership".into(), membership.into());
                }
            }
            if let Ok(sender) = UserId::parse(sender) {
                let name = self
                    .members
                    .membership(&notification.room_id, &sender)?
                    .and_then(|m| self.timeline.pdu_json(&m.event_id).ok().flatten())
                    .and_then(|pdu| pdu::content_str(&pdu, "displayname").map(str::to_owned));
                if let Some(name) = name.filter(|n| !n.is_empty()) {
                    fields.insert("sender_display_name".into(), name.into());
                }
            }
            if let Some(name) = self.room_display_name(&notification.room_id)? {
                fields.insert("room_name".into(), name.into());
            }
        }
        let summary = Arc::new(summary);
        self.push
            .event_summaries
            .insert(notification.event_id.clone(), summary.clone());
        Ok(summary)
    }

    /// A room's name for a push: `m.room.name`, else its canonical alias.
    fn room_display_name(&self, room_id: &ruma::RoomId) -> Result<Option<String>> {
        let Some(room) = self.timeline.room(room_id)? else {
            return Ok(None);
        };
        let state = self.timeline.current_state_entries(&room)?;
        for (kind, field) in [("m.room.name", "name"), ("m.room.canonical_alias", "alias")] {
            if let Some(id) = self.timeline.lookup(&state, kind, "")?
                && let Some(value) = self
                    .timeline
                    .pdu_json(&id)?
                    .and_then(|pdu| pdu::content_str(&pdu, field).map(str::to_owned))
                && !value.is_empty()
            {
                return Ok(Some(value));
            }
        }
        Ok(None)
    }

    /// A badge-only push: the new unread count, no event.
    async fn send_badge(&self, record: &PusherRecord, badge: u64) -> Result<()> {
        let body = json!({ "notification": {
            "counts": { "unread": badge },
            "devices": [device_json(record)],
        } });
        self.post_to_gateway(record, &body).await.map(|_| ())
    }

    /// POSTs `body` to the pusher's gateway; answers the pushkeys it rejected.
    async fn post_to_gateway(&self, record: &PusherRecord, body: &Value) -> Result<Vec<String>> {
        let ruma::api::client::push::PusherKind::Http(data) = &record.pusher.kind else {
            return Ok(Vec::new());
        };
        let url: reqwest::Url = data
            .url
            .parse()
            .map_err(|e| Error::internal(format!("pusher URL: {e}")))?;
        self.push
            .guard
            .check_url(&url)
            .map_err(|e| Error::internal(format!("push gateway refused: {e}")))?;
        let response = self
            .push
            .client
            .post(url)
            .json(body)
            .send()
            .await
            .map_err(|e| Error::internal(format!("push gateway unreachable: {e}")))?;
        let status = response.status();
        if !status.is_success() {
            return Err(Error::internal(format!("push gateway answered {status}")));
        }
        let answer: Value = response
            .json()
            .await
            .map_err(|e| Error::internal(format!("push gateway answered garbage: {e}")))?;
        Ok(answer["rejected"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// The `devices` entry of a pusher: its IDs, when it was set, its data without the URL.
fn device_json(record: &PusherRecord) -> Value {
    let mut data = match &record.pusher.kind {
        ruma::api::client::push::PusherKind::Http(http) => {
            let mut data: Map<String, Value> = http
                .data
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if let Some(format) = &http.format {
                data.insert("format".into(), format.as_str().into());
            }
            data
        }
        _ => Map::new(),
    };
    data.remove("url");
    json!({
        "app_id": record.pusher.ids.app_id,
        "pushkey": record.pusher.ids.pushkey,
        "pushkey_ts": record.ts / 1000,
        "data": data,
    })
}

/// The pusher's `data.format`.
fn http_format(record: &PusherRecord) -> Option<&str> {
    match &record.pusher.kind {
        ruma::api::client::push::PusherKind::Http(http) => http.format.as_ref().map(|f| f.as_str()),
        _ => None,
    }
}

/// The tweaks of a rule's actions, as gateways take them (`{"sound": "default",
/// "highlight": true}`; a tweak without a value is `true`).
fn tweaks_of(actions: &[ruma::push::Action]) -> Map<String, Value> {
    let mut tweaks = Map::new();
    for action in serde_json::to_value(actions)
        .ok()
        .and_then(|a| a.as_array().cloned())
        .unwrap_or_default()
    {
        if let Some(name) = action["set_tweak"].as_str() {
            let value = action.get("value").cloned().unwrap_or(Value::Bool(true));
            tweaks.insert(name.to_owned(), value);
        }
    }
    tweaks
}

/// The task of one pusher.
async fn run_pusher(
    services: Weak<Services>,
    user: OwnedUserId,
    key: Vec<u8>,
    notify: Arc<Notify>,
) {
    let mut backoff: Option<Duration> = None;
    let mut last_badge: Option<u64> = None;
    loop {
        let Some(strong) = services.upgrade() else {
            return;
        };
        let record = match strong.pusher_record(&key) {
            Ok(Some(record)) => record,
            Ok(None) => {
                strong.pusher_task_ended(&user, &key);
                return;
            }
            Err(e) => {
                tracing::warn!(%user, "reading a pusher failed: {e}");
                strong.pusher_task_ended(&user, &key);
                return;
            }
        };
        match strong
            .push_step(&user, &key, &record, &mut last_badge)
            .await
        {
            Ok(Step::Progressed) => backoff = None,
            Ok(Step::Idle) => {
                drop(strong);
                backoff = None;
                notify.notified().await;
            }
            Ok(Step::Rejected) => {
                strong.pusher_task_ended(&user, &key);
                return;
            }
            Err(e) => {
                drop(strong);
                let wait = backoff.map_or(FIRST_BACKOFF, |b| (b * 2).min(MAX_BACKOFF));
                backoff = Some(wait);
                tracing::info!(%user, "push failed, retrying in {wait:?}: {e}");
                // New notifications do not cut a back-off short: the gateway is failing.
                tokio::time::sleep(wait).await;
            }
        }
    }
}
