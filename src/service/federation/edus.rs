//! EDUs both ways: typing, read receipts, presence, to-device messages and device-list
//! changes.
//!
//! Inbound, each EDU is checked against the transaction's origin: it may only speak for its
//! own users, and a room-scoped EDU (typing, receipts) only counts in a room where the origin
//! has a joined member and the room's server ACL allows it. Anything else is dropped (a
//! transaction never fails because of an EDU). Accepted EDUs go to the same services local
//! clients use, so `/sync` shows them without knowing where they came from.
//!
//! Outbound, the local services call the `federate_*` functions after their own change is
//! stored; those queue the EDU in the federation outbox (`Services::queue_edu`) for the servers
//! that should hear of it. They never fail the local request: a failure to queue is logged.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use ruma::{
    DeviceId, EventId, OwnedDeviceId, OwnedServerName, OwnedUserId, RoomId, ServerName, UserId,
    api::federation::transactions::edu::Edu, events::room::member::MembershipState, serde::Raw,
};
use serde_json::{Map, Value, json};

use crate::{
    Result,
    service::{Services, e2ee::ToDeviceMessage, presence::PresenceRecord},
    store::{Batch, Cf, keys},
    utils,
};

/// How long a remote user shows as typing without a renewal (their server re-sends while
/// they type; a lost "stopped" must not leave them typing for ever).
const REMOTE_TYPING: Duration = Duration::from_secs(30);
/// At most this many to-device messages of one EDU are delivered.
const MAX_TO_DEVICE_MESSAGES: usize = 1000;

fn str_field<'a>(value: &'a Value, name: &str) -> Option<&'a str> {
    value.get(name).and_then(Value::as_str)
}

fn user_of(value: &Value, name: &str, origin: &ServerName) -> Option<OwnedUserId> {
    str_field(value, name)
        .and_then(|u| UserId::parse(u).ok())
        .filter(|u| u.server_name() == origin)
}

impl Services {
    /// Handles the EDUs of a transaction from `origin` (see the module documentation).
    pub async fn handle_transaction_edus(&self, origin: &ServerName, edus: &[Raw<Edu>]) {
        for edu in edus {
            let Ok(edu) = serde_json::from_str::<Value>(edu.json().get()) else {
                continue;
            };
            let kind = str_field(&edu, "edu_type").unwrap_or_default().to_owned();
            let content = edu.get("content").cloned().unwrap_or(Value::Null);
            let handled = match kind.as_str() {
                "m.typing" => self.inbound_typing(origin, &content).await,
                "m.receipt" => self.inbound_receipts(origin, &content).await,
                "m.presence" => self.inbound_presence(origin, &content).await,
                "m.direct_to_device" => self.inbound_to_device(origin, &content).await,
                "m.device_list_update" | "m.signing_key_update" => {
                    self.inbound_device_list(origin, &content).await
                }
                _ => {
                    tracing::debug!(%origin, edu_type = %kind, "EDU of an unknown type dropped");
                    Ok(())
                }
            };
            if let Err(e) = handled {
                tracing::info!(%origin, edu_type = %kind, "EDU dropped: {e}");
            }
        }
    }

    /// Whether `origin` may send room-scoped EDUs for `room_id`: it has a joined member there
    /// and the room's server ACL allows it.
    fn edu_room_allowed(&self, origin: &ServerName, room_id: &RoomId) -> Result<bool> {
        Ok(self.server_acl_allows(room_id, origin)? && self.server_in_room(origin, room_id)?)
    }

    async fn inbound_typing(&self, origin: &ServerName, content: &Value) -> Result<()> {
        let Some(room_id) = str_field(content, "room_id").and_then(|r| RoomId::parse(r).ok())
        else {
            return Ok(());
        };
        let Some(user_id) = user_of(content, "user_id", origin) else {
            return Ok(());
        };
        if !self.edu_room_allowed(origin, &room_id)? {
            return Ok(());
        }
        let typing = content
            .get("typing")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        // `set_typing` checks that the user is joined to the room.
        self.set_typing(&room_id, &user_id, typing.then_some(REMOTE_TYPING))
            .await
    }

    async fn inbound_receipts(&self, origin: &ServerName, content: &Value) -> Result<()> {
        let Some(rooms) = content.as_object() else {
            return Ok(());
        };
        for (room_id, by_type) in rooms {
            let Ok(room_id) = RoomId::parse(room_id) else {
                continue;
            };
            if !self.edu_room_allowed(origin, &room_id)? {
                continue;
            }
            // Only public read receipts travel between servers.
            let Some(users) = by_type.get("m.read").and_then(Value::as_object) else {
                continue;
            };
            for (user_id, receipt) in users {
                let Ok(user_id) = UserId::parse(user_id) else {
                    continue;
                };
                if user_id.server_name() != origin {
                    continue;
                }
                let Some(event_id) = receipt
                    .get("event_ids")
                    .and_then(Value::as_array)
                    .and_then(|ids| ids.last())
                    .and_then(Value::as_str)
                    .and_then(|id| EventId::parse(id).ok())
                else {
                    continue;
                };
                let thread = receipt
                    .get("data")
                    .and_then(|d| d.get("thread_id"))
                    .and_then(Value::as_str);
                // Checks membership and that the event is in the room and visible to the user.
                if let Err(e) = self
                    .set_receipt(&room_id, &user_id, "m.read", &event_id, thread)
                    .await
                {
                    tracing::debug!(%origin, %room_id, %user_id, "receipt dropped: {e}");
                }
            }
        }
        Ok(())
    }

    async fn inbound_presence(&self, origin: &ServerName, content: &Value) -> Result<()> {
        let Some(pushes) = content.get("push").and_then(Value::as_array) else {
            return Ok(());
        };
        for push in pushes {
            let Some(user_id) = user_of(push, "user_id", origin) else {
                continue;
            };
            let state = match str_field(push, "presence") {
                Some("online") => "online",
                Some("unavailable") => "unavailable",
                Some("offline") => "offline",
                _ => continue,
            };
            let status_msg = str_field(push, "status_msg").map(str::to_owned);
            let ago = push
                .get("last_active_ago")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            self.set_remote_presence(&user_id, state, status_msg, ago)
                .await?;
        }
        Ok(())
    }

    /// Stores a remote user's presence as their server reported it, with a stream count when
    /// it changed (as local changes are), so local syncs that share a room with them see it.
    async fn set_remote_presence(
        &self,
        user_id: &UserId,
        state: &str,
        status_msg: Option<String>,
        last_active_ago: u64,
    ) -> Result<()> {
        let last_active_ts = utils::now_millis().saturating_sub(last_active_ago);
        let current = self.presence_record(user_id)?;
        if current.as_ref().is_some_and(|r| {
            r.state == state
                && r.status_msg == status_msg
                && r.last_active_ts.abs_diff(last_active_ts) < 60_000
        }) {
            return Ok(());
        }
        let store = self.store.clone();
        let user = user_id.to_owned();
        self.timeline
            .commit_counted(Batch::new(), move |batch, count| {
                if let Some(bytes) = store.get(Cf::Presence, user.as_bytes())? {
                    let previous: PresenceRecord = serde_json::from_slice(&bytes)?;
                    batch.delete(Cf::PresenceStream, keys::u64_be(previous.count));
                }
                let record = PresenceRecord {
                    state: state.to_owned(),
                    status_msg,
                    last_active_ts,
                    count,
                };
                batch.put(Cf::Presence, user.as_bytes(), serde_json::to_vec(&record)?);
                batch.put(Cf::PresenceStream, keys::u64_be(count), user.as_bytes());
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn inbound_to_device(&self, origin: &ServerName, content: &Value) -> Result<()> {
        let Some(sender) = user_of(content, "sender", origin) else {
            return Ok(());
        };
        let (Some(event_type), Some(message_id), Some(messages)) = (
            str_field(content, "type"),
            str_field(content, "message_id"),
            content.get("messages").and_then(Value::as_object),
        ) else {
            return Ok(());
        };
        let mut queued = Vec::new();
        for (user_id, devices) in messages {
            let Ok(user_id) = UserId::parse(user_id) else {
                continue;
            };
            if user_id.server_name() != self.server_name {
                continue;
            }
            let Some(devices) = devices.as_object() else {
                continue;
            };
            for (device_id, message) in devices {
                if queued.len() == MAX_TO_DEVICE_MESSAGES {
                    break;
                }
                queued.push(ToDeviceMessage {
                    user_id: user_id.clone(),
                    device_id: (device_id != "*").then(|| OwnedDeviceId::from(device_id.as_str())),
                    content: message.clone(),
                });
            }
        }
        if queued.is_empty() {
            return Ok(());
        }
        // Deduplicated like a local client's transaction: by sender, an empty "device" (no
        // local device ID is empty) and the message ID.
        self.send_to_device(
            &sender,
            <&DeviceId>::from(""),
            event_type,
            message_id,
            queued,
        )
        .await
    }

    async fn inbound_device_list(&self, origin: &ServerName, content: &Value) -> Result<()> {
        let Some(user_id) = user_of(content, "user_id", origin) else {
            return Ok(());
        };
        // Only users this server shares a room with matter; the change is then shown to the
        // local users sharing one (sync's device_lists filters by shared rooms).
        let shares_a_room = self
            .members
            .rooms_of(&user_id)?
            .iter()
            .any(|(_, m)| m.membership == MembershipState::Join);
        if shares_a_room {
            self.announce_device_list_change(&[&user_id]).await?;
        }
        Ok(())
    }

    // ---- outbound ----

    /// The other servers sharing a joined room with `user_id`.
    fn servers_sharing_rooms(&self, user_id: &UserId) -> Result<Vec<OwnedServerName>> {
        let mut servers = BTreeSet::new();
        for (room_id, membership) in self.members.rooms_of(user_id)? {
            if membership.membership == MembershipState::Join {
                servers.extend(self.federation.outbox.remote_destinations(&room_id)?);
            }
        }
        Ok(servers.into_iter().collect())
    }

    fn log_queue_failure(result: Result<()>, what: &str) {
        if let Err(e) = result {
            tracing::warn!("could not queue the {what} EDU: {e}");
        }
    }

    /// A local user started or stopped typing: tells the room's other servers.
    pub(crate) async fn federate_typing(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        timeout: Option<Duration>,
    ) {
        if user_id.server_name() != self.server_name {
            return;
        }
        let result = async {
            let destinations = self.federation.outbox.remote_destinations(room_id)?;
            let edu = json!({
                "edu_type": "m.typing",
                "content": { "room_id": room_id, "user_id": user_id, "typing": timeout.is_some() },
            });
            self.queue_edu(&destinations, edu).await
        }
        .await;
        Self::log_queue_failure(result, "typing");
    }

    /// A local user's public read receipt: tells the room's other servers.
    pub(crate) async fn federate_receipt(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        receipt_type: &str,
        event_id: &EventId,
        thread: Option<&str>,
    ) {
        if user_id.server_name() != self.server_name || receipt_type != "m.read" {
            return;
        }
        let result = async {
            let destinations = self.federation.outbox.remote_destinations(room_id)?;
            let mut data = json!({ "ts": utils::now_millis() });
            if let Some(thread) = thread {
                data["thread_id"] = json!(thread);
            }
            let edu = json!({
                "edu_type": "m.receipt",
                "content": { room_id.as_str(): { "m.read": { user_id.as_str(): {
                    "event_ids": [event_id],
                    "data": data,
                } } } },
            });
            self.queue_edu(&destinations, edu).await
        }
        .await;
        Self::log_queue_failure(result, "receipt");
    }

    /// A local user's presence changed (only real changes call this): tells the servers
    /// sharing a room with them.
    pub(crate) async fn federate_presence(&self, user_id: &UserId) {
        if user_id.server_name() != self.server_name || !self.federation.enabled {
            return;
        }
        let result = async {
            let destinations = self.servers_sharing_rooms(user_id)?;
            if destinations.is_empty() {
                return Ok(());
            }
            let mut push = self.presence_content(user_id)?;
            push["user_id"] = json!(user_id);
            let edu = json!({ "edu_type": "m.presence", "content": { "push": [push] } });
            self.queue_edu(&destinations, edu).await
        }
        .await;
        Self::log_queue_failure(result, "presence");
    }

    /// To-device messages of a local sender for users of other servers: one
    /// `m.direct_to_device` EDU per server. `message_id` is unique per sender device and
    /// transaction, so a retried transaction is recognised by the receiver.
    pub(crate) async fn federate_to_device(
        &self,
        sender: &UserId,
        message_id: &str,
        event_type: &str,
        messages: Vec<ToDeviceMessage>,
    ) {
        let mut by_server: BTreeMap<OwnedServerName, Map<String, Value>> = BTreeMap::new();
        for message in messages {
            let users = by_server
                .entry(message.user_id.server_name().to_owned())
                .or_default();
            let devices = users
                .entry(message.user_id.to_string())
                .or_insert_with(|| json!({}));
            let device = message
                .device_id
                .as_ref()
                .map_or("*", |d| d.as_str())
                .to_owned();
            devices[device] = message.content;
        }
        for (server, messages) in by_server {
            let edu = json!({
                "edu_type": "m.direct_to_device",
                "content": {
                    "sender": sender,
                    "type": event_type,
                    "message_id": message_id,
                    "messages": messages,
                },
            });
            Self::log_queue_failure(self.queue_edu(&[server], edu).await, "to-device");
        }
    }

    /// A local user's device changed (new or changed identity keys, or deleted): tells the
    /// servers sharing a room with them, which then re-query the user's devices.
    pub(crate) async fn federate_device_change(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        deleted: bool,
    ) {
        if user_id.server_name() != self.server_name || !self.federation.enabled {
            return;
        }
        let result = async {
            let destinations = self.servers_sharing_rooms(user_id)?;
            if destinations.is_empty() {
                return Ok(());
            }
            let stream_id = self
                .store
                .get(Cf::DeviceListCounts, user_id.as_bytes())?
                .and_then(|b| keys::parse_u64_be(&b))
                .unwrap_or_else(|| self.timeline.current_count());
            let mut content = json!({
                "user_id": user_id,
                "device_id": device_id,
                "stream_id": stream_id,
                // No previous IDs: receivers that track them re-sync the whole list.
                "prev_id": [],
            });
            if deleted {
                content["deleted"] = json!(true);
            } else {
                let key = keys::join([user_id.as_bytes(), device_id.as_bytes()]);
                if let Some(bytes) = self.store.get(Cf::DeviceKeys, &key)? {
                    content["keys"] = serde_json::from_slice(&bytes)?;
                }
                if let Some(name) = self
                    .devices
                    .get(user_id, device_id)?
                    .and_then(|d| d.display_name)
                {
                    content["device_display_name"] = json!(name);
                }
            }
            let edu = json!({ "edu_type": "m.device_list_update", "content": content });
            self.queue_edu(&destinations, edu).await
        }
        .await;
        Self::log_queue_failure(result, "device list");
    }

    /// A local user's cross-signing keys (or signatures) changed: `m.signing_key_update` to
    /// the servers sharing a room with them.
    pub(crate) async fn federate_signing_keys(&self, user_id: &UserId) {
        if user_id.server_name() != self.server_name || !self.federation.enabled {
            return;
        }
        let result = async {
            let destinations = self.servers_sharing_rooms(user_id)?;
            if destinations.is_empty() {
                return Ok(());
            }
            let mut content = json!({ "user_id": user_id });
            if let Some(master) = self.cross_signing_key(user_id, "master")? {
                content["master_key"] = master;
            }
            if let Some(self_signing) = self.cross_signing_key(user_id, "self_signing")? {
                content["self_signing_key"] = self_signing;
            }
            let edu = json!({ "edu_type": "m.signing_key_update", "content": content });
            self.queue_edu(&destinations, edu).await
        }
        .await;
        Self::log_queue_failure(result, "signing key");
    }
}
