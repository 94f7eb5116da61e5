//! Pushers (`/pushers`, `/pushers/set`): where a user's notifications go. Kept in `pushers`
//! (`user 0xFF app_id 0xFF pushkey` → [`PusherRecord`]) with the reverse index `pushkey_users`
//! (`app_id 0xFF pushkey 0xFF user`), which `append: false` uses to take the pushkey from other
//! users. A pusher belongs to the device that set it and is deleted with it.

use ruma::{
    DeviceId, OwnedDeviceId, UserId,
    api::client::push::{Pusher, PusherKind, set_pusher::v3::PusherAction},
};
use serde::{Deserialize, Serialize};

use crate::{
    Error, Result,
    service::Services,
    store::{Batch, Cf, Store, keys},
    utils,
};

/// The spec's limits.
const MAX_PUSHKEY_BYTES: usize = 512;
const MAX_APP_ID_CHARS: usize = 64;
/// The path every HTTP pusher's URL must have.
pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";

/// A pusher, as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PusherRecord {
    /// As the client set it (`GET /pushers` shows it so).
    pub pusher: Pusher,
    /// The device that set it (deleted with it).
    pub device_id: Option<OwnedDeviceId>,
    /// When it was last set (ms since the epoch; `pushkey_ts` in seconds to gateways).
    pub ts: u64,
    /// The stream count of the last notification handled: the next ones are after it.
    pub last_count: u64,
    /// Since when sending has failed (ms), if it does.
    #[serde(default)]
    pub failing_since: Option<u64>,
}

/// The key of a pusher.
pub fn pusher_key(user_id: &UserId, app_id: &str, pushkey: &str) -> Vec<u8> {
    keys::join([user_id.as_bytes(), app_id.as_bytes(), pushkey.as_bytes()])
}

fn index_key(user_id: &UserId, app_id: &str, pushkey: &str) -> Vec<u8> {
    keys::join([app_id.as_bytes(), pushkey.as_bytes(), user_id.as_bytes()])
}

/// Deletes a pusher in `batch` (record and index entry).
fn delete_into(batch: &mut Batch, user_id: &UserId, app_id: &str, pushkey: &str) {
    batch.delete(Cf::Pushers, pusher_key(user_id, app_id, pushkey));
    batch.delete(Cf::PushkeyUsers, index_key(user_id, app_id, pushkey));
}

/// Adds the deletion of the pushers `device_id` set to `batch` (the device is being deleted).
pub fn delete_device_pushers_into(
    store: &Store,
    batch: &mut Batch,
    user_id: &UserId,
    device_id: &DeviceId,
) -> Result<()> {
    for item in store.scan_prefix(Cf::Pushers, &keys::prefix(user_id.as_bytes())) {
        let (_, value) = item?;
        let record: PusherRecord = serde_json::from_slice(&value)?;
        if record.device_id.as_deref() == Some(device_id) {
            let ids = &record.pusher.ids;
            delete_into(batch, user_id, &ids.app_id, &ids.pushkey);
        }
    }
    Ok(())
}

/// Checks a new pusher: the spec's limits, an HTTP pusher's URL; e-mail and unknown kinds are
/// not built here.
fn check(pusher: &Pusher) -> Result<()> {
    let ids = &pusher.ids;
    if ids.pushkey.len() > MAX_PUSHKEY_BYTES {
        return Err(Error::invalid_param(format!(
            "pushkey is longer than {MAX_PUSHKEY_BYTES} bytes."
        )));
    }
    if ids.app_id.chars().count() > MAX_APP_ID_CHARS {
        return Err(Error::invalid_param(format!(
            "app_id is longer than {MAX_APP_ID_CHARS} characters."
        )));
    }
    if ids.pushkey.is_empty() || ids.app_id.is_empty() {
        return Err(Error::invalid_param("pushkey and app_id may not be empty."));
    }
    match &pusher.kind {
        PusherKind::Http(data) => {
            let url = reqwest::Url::parse(&data.url)
                .map_err(|e| Error::invalid_param(format!("data.url is not a URL: {e}")))?;
            if !matches!(url.scheme(), "https" | "http") || url.path() != NOTIFY_PATH {
                return Err(Error::invalid_param(format!(
                    "data.url must be an http(s) URL with the path {NOTIFY_PATH}."
                )));
            }
            Ok(())
        }
        PusherKind::Email(_) => Err(Error::invalid_param(
            "E-mail pushers are not supported by this server.",
        )),
        _ => Err(Error::invalid_param(
            "Unknown pusher kind: only http pushers are supported.",
        )),
    }
}

impl Services {
    /// `user_id`'s pushers, as set.
    pub fn pushers(&self, user_id: &UserId) -> Result<Vec<Pusher>> {
        Ok(self
            .pusher_records(user_id)?
            .into_iter()
            .map(|r| r.pusher)
            .collect())
    }

    pub(crate) fn pusher_records(&self, user_id: &UserId) -> Result<Vec<PusherRecord>> {
        let mut records = Vec::new();
        for item in self
            .store
            .scan_prefix(Cf::Pushers, &keys::prefix(user_id.as_bytes()))
        {
            let (_, value) = item?;
            records.push(serde_json::from_slice(&value)?);
        }
        Ok(records)
    }

    pub(crate) fn pusher_record(&self, key: &[u8]) -> Result<Option<PusherRecord>> {
        match self.store.get(Cf::Pushers, key)? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// `POST /pushers/set`: sets (creates or updates) or deletes a pusher of `user_id`, set
    /// from `device_id`.
    pub async fn set_pusher(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        action: PusherAction,
    ) -> Result<()> {
        let _guard = self.push.records.lock().await;
        let mut batch = Batch::new();
        match action {
            PusherAction::Delete(ids) => {
                delete_into(&mut batch, user_id, &ids.app_id, &ids.pushkey);
                self.store.write(batch)?;
                Ok(())
            }
            PusherAction::Post(data) => {
                let pusher = data.pusher;
                check(&pusher)?;
                let (app_id, pushkey) = (pusher.ids.app_id.clone(), pusher.ids.pushkey.clone());
                let key = pusher_key(user_id, &app_id, &pushkey);
                let existing = self.pusher_record(&key)?;
                let record = PusherRecord {
                    device_id: existing
                        .as_ref()
                        .and_then(|e| e.device_id.clone())
                        .or_else(|| Some(device_id.to_owned())),
                    ts: utils::now_millis(),
                    // A new pusher gets what happens from now on; an updated one goes on.
                    last_count: existing
                        .as_ref()
                        .map_or_else(|| self.timeline.current_count(), |e| e.last_count),
                    failing_since: None,
                    pusher,
                };
                batch.put(Cf::Pushers, key.clone(), serde_json::to_vec(&record)?);
                batch.put(
                    Cf::PushkeyUsers,
                    index_key(user_id, &app_id, &pushkey),
                    Vec::new(),
                );
                if !data.append {
                    // The pushkey is this user's now: other users' pushers with it go.
                    let prefix = keys::prefix(&keys::join([app_id.as_bytes(), pushkey.as_bytes()]));
                    for item in self.store.scan_prefix(Cf::PushkeyUsers, &prefix) {
                        let (index, _) = item?;
                        let Some(other) = std::str::from_utf8(&index[prefix.len()..])
                            .ok()
                            .and_then(|u| UserId::parse(u).ok())
                        else {
                            continue;
                        };
                        if other != user_id {
                            delete_into(&mut batch, &other, &app_id, &pushkey);
                        }
                    }
                }
                self.store.write(batch)?;
                drop(_guard);
                self.start_pusher(key);
                Ok(())
            }
            _ => Err(Error::invalid_param("Unknown pusher action.")),
        }
    }
}
