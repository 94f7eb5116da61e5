//! End-to-end encryption support. The server never decrypts anything: it stores the keys
//! devices publish (identity keys, one-time keys, fallback keys), hands them out to other
//! devices (`/keys/query`, `/keys/claim`) and relays to-device messages, which wait in a
//! per-device queue until a `/sync` acknowledges them.
//!
//! One-time keys are handed out exactly once: uploads and claims check and write under one lock
//! (`E2ee::keys_lock`), so two concurrent claims never read the same key. To-device messages
//! take a stream count (`Timeline::commit_counted`), so a queued message wakes long-polling
//! syncs, and a sync token says which messages the client has received: a sync from token `S`
//! first deletes the device's messages with a count up to `S` (the client got them, since it
//! holds a token at or past the response that carried them), then sends those after `S`.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Mutex, MutexGuard},
};

use ruma::{
    CanonicalJsonValue, DeviceId, OwnedDeviceId, OwnedUserId, SigningKeyAlgorithm, UserId,
    serde::{Base64, base64::Standard},
    signatures::{to_canonical_json_string_for_signing, verify_canonical_json_bytes},
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::{
    Error, Result,
    service::Services,
    store::{Batch, Cf, Store, keys},
};

/// The algorithm clients expect a count for even when they hold none of its keys.
const SIGNED_CURVE25519: &str = "signed_curve25519";

/// State of the end-to-end encryption service that is not in the database.
#[derive(Default)]
pub struct E2ee {
    /// Serialises the check-then-write of one-time and fallback keys (uploads and claims).
    keys_lock: Mutex<()>,
    /// Serialises the read-merge-write of signed key objects — device keys, cross-signing
    /// keys and the signatures uploaded for them — so that a signature added by one request
    /// is never overwritten by another's older copy (a client re-uploading its device keys, or
    /// replacing its master key, while it uploads signatures).
    pub(crate) signed_keys: tokio::sync::Mutex<()>,
}

impl E2ee {
    fn lock(&self) -> MutexGuard<'_, ()> {
        self.keys_lock.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A device's fallback key for one algorithm.
#[derive(Serialize, Deserialize)]
struct FallbackKey {
    key_id: String,
    key: Value,
    used: bool,
}

/// What one `/keys/upload` carries, as JSON.
pub struct KeyUpload {
    pub device_keys: Option<Value>,
    /// `algorithm:key_id` → key.
    pub one_time_keys: Vec<(String, Value)>,
    /// `algorithm:key_id` → key.
    pub fallback_keys: Vec<(String, Value)>,
}

/// One to-device message to send: recipient, device (`None`: all their devices), content.
pub struct ToDeviceMessage {
    pub user_id: OwnedUserId,
    pub device_id: Option<OwnedDeviceId>,
    pub content: Value,
}

/// `algorithm:key_id` split in two.
fn split_key_id(id: &str) -> Result<(&str, &str)> {
    match id.split_once(':') {
        Some((algorithm, key_id)) if !algorithm.is_empty() && !key_id.is_empty() => {
            Ok((algorithm, key_id))
        }
        _ => Err(Error::bad_json(format!(
            "Key ID {id} is not of the form algorithm:key_id."
        ))),
    }
}

/// A one-time or fallback key is a string (unsigned curve25519) or an object (signed).
fn check_key_shape(id: &str, key: &Value) -> Result<()> {
    if key.is_object() || key.is_string() {
        Ok(())
    } else {
        Err(Error::bad_json(format!(
            "Key {id} must be a string or an object."
        )))
    }
}

/// Checks that `device_keys` belong to the uploading device and carry a valid signature by the
/// device's own ed25519 key.
fn check_device_keys(user_id: &UserId, device_id: &DeviceId, device_keys: &Value) -> Result<()> {
    let object = device_keys
        .as_object()
        .ok_or_else(|| Error::bad_json("device_keys must be an object."))?;
    let field = |name: &str| {
        object.get(name).and_then(Value::as_str).ok_or_else(|| {
            Error::bad_json(format!("device_keys.{name} is missing or not a string."))
        })
    };
    if field("user_id")? != user_id.as_str() {
        return Err(Error::invalid_param(
            "device_keys.user_id is not the user of the access token.",
        ));
    }
    if field("device_id")? != device_id.as_str() {
        return Err(Error::invalid_param(
            "device_keys.device_id is not the device of the access token.",
        ));
    }
    if !object.get("algorithms").is_some_and(Value::is_array) {
        return Err(Error::bad_json("device_keys.algorithms must be an array."));
    }
    let key_id = format!("ed25519:{device_id}");
    let public_key = object
        .get("keys")
        .and_then(|keys| keys.get(&key_id))
        .and_then(Value::as_str)
        .ok_or_else(|| Error::bad_json(format!("device_keys.keys lacks {key_id}.")))?;
    let public_key = Base64::<Standard, Vec<u8>>::parse(public_key)
        .map_err(|_| Error::bad_json(format!("device_keys.keys.{key_id} is not base64.")))?;
    let signature = object
        .get("signatures")
        .and_then(|s| s.get(user_id.as_str()))
        .and_then(|s| s.get(&key_id))
        .and_then(Value::as_str)
        .ok_or_else(|| Error::invalid_param(format!("device_keys is not signed with {key_id}.")))?;
    let signature = Base64::<Standard, Vec<u8>>::parse(signature)
        .map_err(|_| Error::invalid_param("The signature of device_keys is not base64."))?;
    let Ok(CanonicalJsonValue::Object(canonical)) =
        CanonicalJsonValue::try_from(device_keys.clone())
    else {
        return Err(Error::bad_json("device_keys is not canonical JSON."));
    };
    let signed = to_canonical_json_string_for_signing(&canonical)
        .map_err(|_| Error::bad_json("device_keys is not canonical JSON."))?;
    verify_canonical_json_bytes(
        &SigningKeyAlgorithm::Ed25519,
        public_key.as_bytes(),
        signature.as_bytes(),
        signed.as_bytes(),
    )
    .map_err(|_| Error::invalid_param(format!("The {key_id} signature of device_keys is invalid.")))
}

/// Keeps in `keys` the signatures of `old` that `keys` lacks (those added by cross-signing).
fn merge_signatures(keys: &mut Value, old: Option<&Value>) {
    let Some(old) = old
        .and_then(|o| o.get("signatures"))
        .and_then(Value::as_object)
    else {
        return;
    };
    let Some(object) = keys.as_object_mut() else {
        return;
    };
    let signatures = object.entry("signatures").or_insert_with(|| json!({}));
    let Some(signatures) = signatures.as_object_mut() else {
        return;
    };
    for (signer, sigs) in old {
        let Some(sigs) = sigs.as_object() else {
            continue;
        };
        let entry = signatures
            .entry(signer.clone())
            .or_insert_with(|| json!({}));
        if let Some(entry) = entry.as_object_mut() {
            for (id, sig) in sigs {
                entry.entry(id.clone()).or_insert_with(|| sig.clone());
            }
        }
    }
}

/// Adds the deletion of everything end-to-end encryption keeps for one device (identity keys,
/// one-time and fallback keys, to-device queue and transaction IDs) to `batch`.
pub fn delete_device_into(
    store: &Store,
    batch: &mut Batch,
    user_id: &UserId,
    device_id: &DeviceId,
) -> Result<()> {
    let device_key = keys::join([user_id.as_bytes(), device_id.as_bytes()]);
    batch.delete(Cf::DeviceKeys, device_key.clone());
    let prefix = keys::prefix(&device_key);
    for cf in [
        Cf::OneTimeKeys,
        Cf::OneTimeKeyOrder,
        Cf::FallbackKeys,
        Cf::ToDevice,
        Cf::ToDeviceTxn,
    ] {
        for item in store.scan_prefix(cf, &prefix) {
            batch.delete(cf, item?.0.to_vec());
        }
    }
    Ok(())
}

impl Services {
    /// The last upload place of a device's one-time keys of one algorithm (`order` is
    /// `user 0xFF device 0xFF algorithm`); 0 when none is stored.
    fn last_key_place(&self, order: &[u8]) -> Result<u64> {
        let prefix = keys::prefix(order);
        let mut start = prefix.clone();
        start.extend(keys::u64_be(u64::MAX));
        Ok(self
            .store
            .scan_prefix_rev_from(Cf::OneTimeKeyOrder, &prefix, &start)
            .next()
            .transpose()?
            .and_then(|(key, _)| keys::parse_u64_be(&key[prefix.len()..]))
            .unwrap_or(0))
    }

    /// The oldest one-time key of a device and algorithm (`device_part`): its order entry's
    /// key, its ID and content. One seek in the order, one point read; keys stored before the
    /// order existed are all indexed by the schema 7 migration.
    fn oldest_one_time_key(&self, device_part: &[u8]) -> Result<Option<(Vec<u8>, String, Value)>> {
        let prefix = keys::prefix(device_part);
        for item in self.store.scan_prefix(Cf::OneTimeKeyOrder, &prefix) {
            let (place, key_id) = item?;
            let mut store_key = prefix.clone();
            store_key.extend_from_slice(&key_id);
            match self.store.get(Cf::OneTimeKeys, &store_key)? {
                Some(value) => {
                    return Ok(Some((
                        place.to_vec(),
                        String::from_utf8_lossy(&key_id).into_owned(),
                        serde_json::from_slice(&value)?,
                    )));
                }
                // An order entry whose key is gone (never expected): skip it.
                None => continue,
            }
        }
        Ok(None)
    }

    fn is_local(&self, user_id: &UserId) -> bool {
        user_id.server_name() == self.server_name
    }

    /// `/keys/upload`: stores the device's identity keys, one-time and fallback keys; answers
    /// the device's one-time key count per algorithm.
    ///
    /// New or changed identity keys are a device-list change (they take a stream count); the
    /// same keys again keep the signatures others added since (cross-signing).
    pub async fn upload_keys(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        upload: KeyUpload,
    ) -> Result<BTreeMap<String, u64>> {
        for (id, key) in upload.one_time_keys.iter().chain(&upload.fallback_keys) {
            split_key_id(id)?;
            check_key_shape(id, key)?;
        }
        if let Some(mut device_keys) = upload.device_keys {
            check_device_keys(user_id, device_id, &device_keys)?;
            let signed_keys = self.e2ee.signed_keys.lock().await;
            // `unsigned` is for the server to fill in (the display name), not to store.
            if let Some(object) = device_keys.as_object_mut() {
                object.remove("unsigned");
            }
            let store_key = keys::join([user_id.as_bytes(), device_id.as_bytes()]);
            let old: Option<Value> = match self.store.get(Cf::DeviceKeys, &store_key)? {
                Some(bytes) => Some(serde_json::from_slice(&bytes)?),
                None => None,
            };
            let unchanged = old.as_ref().is_some_and(|old| {
                let strip = |v: &Value| {
                    let mut v = v.clone();
                    v.as_object_mut().map(|m| m.remove("signatures"));
                    v
                };
                strip(old) == strip(&device_keys)
            });
            if unchanged {
                merge_signatures(&mut device_keys, old.as_ref());
                if old.as_ref() != Some(&device_keys) {
                    self.store.put(
                        Cf::DeviceKeys,
                        &store_key,
                        &serde_json::to_vec(&device_keys)?,
                    )?;
                }
            } else {
                let value = serde_json::to_vec(&device_keys)?;
                let store = self.store.clone();
                self.timeline
                    .commit_counted(Batch::new(), |batch, count| {
                        batch.put(Cf::DeviceKeys, store_key, value);
                        crate::service::device_lists::change_into(&store, batch, count, user_id)
                    })
                    .await?;
                self.push_device_list_changes(&[user_id])?;
                drop(signed_keys);
                self.federate_device_change(user_id, device_id, false).await;
            }
        }
        let mut batch = Batch::new();
        let guard = self.e2ee.lock();
        // Each new key also takes the next place in its device's upload order (claims hand
        // out the oldest first, MSC4225); the places continue after the last one stored.
        let mut next_place: HashMap<String, u64> = HashMap::new();
        for (id, key) in &upload.one_time_keys {
            let (algorithm, key_id) = split_key_id(id)?;
            let store_key = keys::join([
                user_id.as_bytes(),
                device_id.as_bytes(),
                algorithm.as_bytes(),
                key_id.as_bytes(),
            ]);
            match self.store.get(Cf::OneTimeKeys, &store_key)? {
                // A client retrying an upload sends the same keys again: fine.
                Some(old) if serde_json::from_slice::<Value>(&old)? == *key => {}
                Some(_) => {
                    return Err(Error::invalid_param(format!(
                        "One-time key {id} was already uploaded with different content."
                    )));
                }
                None => {
                    batch.put(Cf::OneTimeKeys, store_key, serde_json::to_vec(key)?);
                    let order = keys::join([
                        user_id.as_bytes(),
                        device_id.as_bytes(),
                        algorithm.as_bytes(),
                    ]);
                    let place = match next_place.get_mut(algorithm) {
                        Some(place) => place,
                        None => {
                            let last = self.last_key_place(&order)?;
                            next_place.entry(algorithm.to_owned()).or_insert(last)
                        }
                    };
                    *place += 1;
                    batch.put(
                        Cf::OneTimeKeyOrder,
                        keys::join([order.as_slice(), &keys::u64_be(*place)]),
                        key_id.as_bytes(),
                    );
                }
            }
        }
        for (id, key) in &upload.fallback_keys {
            let (algorithm, key_id) = split_key_id(id)?;
            let store_key = keys::join([
                user_id.as_bytes(),
                device_id.as_bytes(),
                algorithm.as_bytes(),
            ]);
            if let Some(old) = self.store.get(Cf::FallbackKeys, &store_key)? {
                let old: FallbackKey = serde_json::from_slice(&old)?;
                // The same key again keeps its `used` mark; a new one replaces it, unused.
                if old.key_id == key_id && old.key == *key {
                    continue;
                }
            }
            let record = FallbackKey {
                key_id: key_id.to_owned(),
                key: key.clone(),
                used: false,
            };
            batch.put(Cf::FallbackKeys, store_key, serde_json::to_vec(&record)?);
        }
        let keys_changed = !batch.is_empty();
        if keys_changed {
            self.store.write(batch)?;
        }
        drop(guard);
        if keys_changed {
            self.push_key_counts(user_id, device_id)?;
        }
        self.one_time_key_counts(user_id, device_id)
    }

    /// The device's unclaimed one-time keys per algorithm (one prefix scan).
    pub fn one_time_key_counts(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> Result<BTreeMap<String, u64>> {
        let prefix = keys::prefix(&keys::join([user_id.as_bytes(), device_id.as_bytes()]));
        let mut counts = BTreeMap::from([(SIGNED_CURVE25519.to_owned(), 0)]);
        for item in self.store.scan_prefix(Cf::OneTimeKeys, &prefix) {
            let (key, _) = item?;
            let rest = &key[prefix.len()..];
            let algorithm = keys::split(rest).next().unwrap_or_default();
            *counts
                .entry(String::from_utf8_lossy(algorithm).into_owned())
                .or_default() += 1;
        }
        Ok(counts)
    }

    /// The algorithms of the device's fallback keys that were not handed out yet.
    pub fn unused_fallback_key_types(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> Result<Vec<String>> {
        let prefix = keys::prefix(&keys::join([user_id.as_bytes(), device_id.as_bytes()]));
        let mut types = Vec::new();
        for item in self.store.scan_prefix(Cf::FallbackKeys, &prefix) {
            let (key, value) = item?;
            let record: FallbackKey = serde_json::from_slice(&value)?;
            if !record.used {
                types.push(String::from_utf8_lossy(&key[prefix.len()..]).into_owned());
            }
        }
        Ok(types)
    }

    /// `/keys/query`: the identity keys of the listed devices (all of a user's devices when
    /// none are listed). Users of other servers are reported in `failures` (federation asks their
    /// servers: `federation::remote_keys`).
    pub fn query_keys(
        &self,
        requester: &UserId,
        requested: &BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
    ) -> Result<Value> {
        let mut device_keys = Map::new();
        let mut failures = Map::new();
        let mut signing_keys: [Map<String, Value>; 3] = Default::default();
        for (user_id, devices) in requested {
            if !self.is_local(user_id) {
                failures.insert(
                    user_id.server_name().to_string(),
                    json!({ "status": 503, "message": "Federation is disabled on this server." }),
                );
                continue;
            }
            let mut found = Vec::new();
            if devices.is_empty() {
                let prefix = keys::prefix(user_id.as_bytes());
                for item in self.store.scan_prefix(Cf::DeviceKeys, &prefix) {
                    let (key, value) = item?;
                    let device_id: OwnedDeviceId = String::from_utf8_lossy(&key[prefix.len()..])
                        .as_ref()
                        .into();
                    found.push((device_id, value));
                }
            } else {
                for device_id in devices {
                    let key = keys::join([user_id.as_bytes(), device_id.as_bytes()]);
                    if let Some(value) = self.store.get(Cf::DeviceKeys, &key)? {
                        found.push((device_id.clone(), value.into_boxed_slice()));
                    }
                }
            }
            let mut user_devices = Map::new();
            for (device_id, value) in found {
                let mut keys: Value = serde_json::from_slice(&value)?;
                if let Some(name) = self
                    .devices
                    .get(user_id, &device_id)?
                    .and_then(|record| record.display_name)
                {
                    keys["unsigned"] = json!({ "device_display_name": name });
                }
                user_devices.insert(device_id.to_string(), keys);
            }
            device_keys.insert(user_id.to_string(), Value::Object(user_devices));
            for (i, (_, key)) in self
                .query_signing_keys(requester, user_id)?
                .into_iter()
                .enumerate()
            {
                if let Some(key) = key {
                    signing_keys[i].insert(user_id.to_string(), key);
                }
            }
        }
        let [master, self_signing, user_signing] = signing_keys;
        Ok(json!({
            "device_keys": device_keys,
            "failures": failures,
            "master_keys": master,
            "self_signing_keys": self_signing,
            "user_signing_keys": user_signing,
        }))
    }

    /// `/keys/claim`: one one-time key per listed device and algorithm, each handed out once;
    /// when a device has none left, its fallback key (marked used, not deleted).
    pub fn claim_keys(
        &self,
        requested: &BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, String>>,
    ) -> Result<Value> {
        let mut claimed = Map::new();
        let mut failures = Map::new();
        let mut batch = Batch::new();
        let mut claimed_devices = Vec::new();
        let guard = self.e2ee.lock();
        for (user_id, devices) in requested {
            if !self.is_local(user_id) {
                failures.insert(
                    user_id.server_name().to_string(),
                    json!({ "status": 503, "message": "Federation is disabled on this server." }),
                );
                continue;
            }
            let mut user_keys = Map::new();
            for (device_id, algorithm) in devices {
                let device_part = keys::join([
                    user_id.as_bytes(),
                    device_id.as_bytes(),
                    algorithm.as_bytes(),
                ]);
                let prefix = keys::prefix(&device_part);
                let one_time = self.oldest_one_time_key(&device_part)?;
                let (key_id, key) = match one_time {
                    Some((place, key_id, value)) => {
                        batch.delete(Cf::OneTimeKeyOrder, place);
                        let mut store_key = prefix.clone();
                        store_key.extend_from_slice(key_id.as_bytes());
                        batch.delete(Cf::OneTimeKeys, store_key);
                        (key_id, value)
                    }
                    None => {
                        let Some(value) = self.store.get(Cf::FallbackKeys, &device_part)? else {
                            continue;
                        };
                        let mut record: FallbackKey = serde_json::from_slice(&value)?;
                        if !record.used {
                            record.used = true;
                            batch.put(
                                Cf::FallbackKeys,
                                device_part.clone(),
                                serde_json::to_vec(&record)?,
                            );
                        }
                        (record.key_id, record.key)
                    }
                };
                user_keys.insert(
                    device_id.to_string(),
                    json!({ format!("{algorithm}:{key_id}"): key }),
                );
                claimed_devices.push((user_id, device_id));
            }
            if !user_keys.is_empty() {
                claimed.insert(user_id.to_string(), Value::Object(user_keys));
            }
        }
        if !batch.is_empty() {
            self.store.write(batch)?;
        }
        drop(guard);
        // MSC3202: bridges learn their devices' new counts.
        for (user_id, device_id) in claimed_devices {
            self.push_key_counts(user_id, device_id)?;
        }
        Ok(json!({ "one_time_keys": claimed, "failures": failures }))
    }

    /// `PUT /sendToDevice`: queues `messages` for their (local) recipients' devices, once per
    /// sender device and transaction ID.
    pub async fn send_to_device(
        &self,
        sender: &UserId,
        sender_device: &DeviceId,
        event_type: &str,
        txn_id: &str,
        messages: Vec<ToDeviceMessage>,
    ) -> Result<()> {
        let txn_key = keys::join([
            sender.as_bytes(),
            sender_device.as_bytes(),
            txn_id.as_bytes(),
        ]);
        if self.store.contains(Cf::ToDeviceTxn, &txn_key)? {
            return Ok(());
        }
        let mut queued = Vec::new();
        let mut remote = Vec::new();
        for message in messages {
            if !self.is_local(&message.user_id) {
                remote.push(message);
                continue;
            }
            let devices = match message.device_id {
                None => self
                    .devices
                    .list(&message.user_id)?
                    .into_iter()
                    .map(|(device_id, _)| device_id)
                    .collect(),
                Some(device_id) => {
                    if self.devices.get(&message.user_id, &device_id)?.is_some() {
                        vec![device_id]
                    } else {
                        Vec::new()
                    }
                }
            };
            let value = serde_json::to_vec(&json!({
                "type": event_type,
                "sender": sender,
                "content": message.content,
            }))?;
            for device_id in &devices {
                // Appservices that asked for their users' to-device messages (MSC4203).
                self.push_to_device(
                    &message.user_id,
                    json!({
                        "type": event_type,
                        "sender": sender,
                        "to_user_id": message.user_id,
                        "to_device_id": device_id,
                        "content": message.content,
                    }),
                )?;
            }
            for device_id in devices {
                queued.push((
                    keys::join([message.user_id.as_bytes(), device_id.as_bytes()]),
                    value.clone(),
                ));
            }
        }
        self.timeline
            .commit_counted(Batch::new(), |batch, count| {
                // Under the stream lock: a concurrent retry of the same transaction is done.
                if self.store.contains(Cf::ToDeviceTxn, &txn_key)? {
                    return Ok(());
                }
                batch.put(Cf::ToDeviceTxn, txn_key.clone(), Vec::new());
                for (device_key, value) in queued {
                    let mut key = keys::prefix(&device_key);
                    key.extend_from_slice(&keys::u64_be(count));
                    batch.put(Cf::ToDevice, key, value);
                }
                Ok(())
            })
            .await?;
        if !remote.is_empty() {
            // Unique per sender device and transaction, so the receiver drops a repeat.
            let message_id = format!("{sender_device}-{txn_id}");
            self.federate_to_device(sender, &message_id, event_type, remote)
                .await;
        }
        Ok(())
    }

    /// The device's queued to-device messages after `since`, up to the sync position `upto`.
    pub fn to_device_events(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        since: Option<u64>,
        upto: u64,
    ) -> Result<Vec<Value>> {
        let prefix = keys::prefix(&keys::join([user_id.as_bytes(), device_id.as_bytes()]));
        let mut start = prefix.clone();
        start.extend_from_slice(&keys::u64_be(since.map_or(0, |s| s.saturating_add(1))));
        let mut events = Vec::new();
        for item in self.store.scan_prefix_from(Cf::ToDevice, &prefix, &start) {
            let (key, value) = item?;
            let count = keys::parse_u64_be(&key[prefix.len()..])
                .ok_or_else(|| Error::internal("corrupt to-device key"))?;
            if count > upto {
                break;
            }
            events.push(serde_json::from_slice(&value)?);
        }
        Ok(events)
    }

    /// Sliding sync's `to_device` page: at most `limit` messages after `since` up to `upto`,
    /// and the `next_batch` to acknowledge them with (the last one's count when the page is
    /// full, else `upto`).
    pub fn to_device_page(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        since: Option<u64>,
        upto: u64,
        limit: usize,
    ) -> Result<(Vec<Value>, u64)> {
        let prefix = keys::prefix(&keys::join([user_id.as_bytes(), device_id.as_bytes()]));
        let mut start = prefix.clone();
        start.extend_from_slice(&keys::u64_be(since.map_or(0, |s| s.saturating_add(1))));
        let mut events = Vec::new();
        let mut next_batch = upto.max(since.unwrap_or(0));
        for item in self.store.scan_prefix_from(Cf::ToDevice, &prefix, &start) {
            let (key, value) = item?;
            let count = keys::parse_u64_be(&key[prefix.len()..])
                .ok_or_else(|| Error::internal("corrupt to-device key"))?;
            if count > upto {
                break;
            }
            if events.len() == limit {
                break;
            }
            events.push(serde_json::from_slice(&value)?);
            if events.len() == limit {
                next_batch = count;
            }
        }
        Ok((events, next_batch))
    }

    /// Deletes the device's to-device messages up to `since`: a sync from `since` shows that
    /// the client received the response that carried them.
    pub fn acknowledge_to_device(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        since: u64,
    ) -> Result<()> {
        let upto = since.min(self.timeline.current_count());
        let prefix = keys::prefix(&keys::join([user_id.as_bytes(), device_id.as_bytes()]));
        let mut batch = Batch::new();
        for item in self.store.scan_prefix(Cf::ToDevice, &prefix) {
            let (key, _) = item?;
            match keys::parse_u64_be(&key[prefix.len()..]) {
                Some(count) if count <= upto => batch.delete(Cf::ToDevice, key.to_vec()),
                _ => break,
            }
        }
        if !batch.is_empty() {
            self.store.write(batch)?;
        }
        Ok(())
    }
}
