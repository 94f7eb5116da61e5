//! Devices and their access tokens (sessions).
//!
//! An access token is 32 random alphanumerics. Only its SHA-256 is stored (as the key of the
//! `access_tokens` column family), so authenticating a request is one point read, and a copy of
//! the database does not hand out working tokens.

use std::net::IpAddr;

use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::{
    Error, Result,
    store::{Batch, Cf, Store, keys},
    utils,
};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub display_name: Option<String>,
    pub last_seen_ip: Option<String>,
    pub last_seen_ts: Option<u64>,
    pub created_ts: u64,
    /// Hex SHA-256 of the device's current access token.
    pub token_hash: String,
}

/// Who a valid access token belongs to.
#[derive(Clone, Debug)]
pub struct Session {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
}

pub struct Devices {
    store: Store,
    /// Serialises token rotation on one device (login with an existing `device_id`).
    write_lock: Mutex<()>,
}

const TOKEN_LEN: usize = 32;
const DEVICE_ID_LEN: usize = 10;

impl Devices {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            write_lock: Mutex::new(()),
        }
    }

    fn device_key(user_id: &UserId, device_id: &DeviceId) -> Vec<u8> {
        keys::join([user_id.as_bytes(), device_id.as_bytes()])
    }

    /// Looks up the session an access token belongs to: one point read.
    pub fn authenticate(&self, token: &str) -> Result<Option<Session>> {
        let hash = utils::sha256(token.as_bytes());
        let Some(value) = self.store.get(Cf::AccessTokens, &hash)? else {
            return Ok(None);
        };
        let mut parts = keys::split(&value);
        let (Some(user), Some(device)) = (parts.next(), parts.next()) else {
            return Err(Error::internal("corrupt access token record"));
        };
        let user_id = std::str::from_utf8(user)
            .ok()
            .and_then(|s| UserId::parse(s).ok())
            .ok_or_else(|| Error::internal("corrupt access token record"))?;
        let device_id: OwnedDeviceId = String::from_utf8_lossy(device).as_ref().into();
        Ok(Some(Session { user_id, device_id }))
    }

    /// Logs a device in: creates it (with a random ID unless one is given) or, for an existing
    /// device, replaces its access token (the old one stops working). Returns the device ID and
    /// the new access token.
    pub async fn create_session(
        &self,
        user_id: &UserId,
        device_id: Option<OwnedDeviceId>,
        display_name: Option<String>,
        ip: Option<IpAddr>,
    ) -> Result<(OwnedDeviceId, String)> {
        let _guard = self.write_lock.lock().await;
        let mut batch = Batch::new();
        let existing = match &device_id {
            Some(device_id) => self.get(user_id, device_id)?,
            None => None,
        };
        let session = match existing {
            Some(mut record) => {
                let device_id = device_id.expect("an existing device was looked up by its ID");
                batch.delete(Cf::AccessTokens, decode_hex(&record.token_hash)?);
                let token = utils::random_string(TOKEN_LEN);
                let token_hash = utils::sha256(token.as_bytes());
                record.token_hash = utils::hex(&token_hash);
                if display_name.is_some() {
                    record.display_name = display_name;
                }
                record.last_seen_ip = ip.map(|ip| ip.to_string());
                record.last_seen_ts = Some(utils::now_millis());
                let key = Self::device_key(user_id, &device_id);
                batch.put(Cf::Devices, key.clone(), serde_json::to_vec(&record)?);
                batch.put(Cf::AccessTokens, token_hash.to_vec(), key);
                (device_id, token)
            }
            None => Self::new_device_into(&mut batch, user_id, device_id, display_name, ip)?,
        };
        self.store.write(batch)?;
        Ok(session)
    }

    /// Adds a brand-new device with a fresh access token to `batch` (for a device that does not
    /// exist yet, e.g. during registration). Returns the device ID and the access token.
    pub fn new_device_into(
        batch: &mut Batch,
        user_id: &UserId,
        device_id: Option<OwnedDeviceId>,
        display_name: Option<String>,
        ip: Option<IpAddr>,
    ) -> Result<(OwnedDeviceId, String)> {
        let device_id =
            device_id.unwrap_or_else(|| utils::random_string(DEVICE_ID_LEN).to_uppercase().into());
        let token = utils::random_string(TOKEN_LEN);
        let token_hash = utils::sha256(token.as_bytes());
        let now = utils::now_millis();
        let record = DeviceRecord {
            display_name,
            last_seen_ip: ip.map(|ip| ip.to_string()),
            last_seen_ts: Some(now),
            created_ts: now,
            token_hash: utils::hex(&token_hash),
        };
        let key = Self::device_key(user_id, &device_id);
        batch.put(Cf::Devices, key.clone(), serde_json::to_vec(&record)?);
        batch.put(Cf::AccessTokens, token_hash.to_vec(), key);
        Ok((device_id, token))
    }

    pub fn get(&self, user_id: &UserId, device_id: &DeviceId) -> Result<Option<DeviceRecord>> {
        match self
            .store
            .get(Cf::Devices, &Self::device_key(user_id, device_id))?
        {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// All of a user's devices, in device ID order: one prefix scan.
    pub fn list(&self, user_id: &UserId) -> Result<Vec<(OwnedDeviceId, DeviceRecord)>> {
        let prefix = keys::prefix(user_id.as_bytes());
        let mut devices = Vec::new();
        for item in self.store.scan_prefix(Cf::Devices, &prefix) {
            let (key, value) = item?;
            let device_id: OwnedDeviceId = String::from_utf8_lossy(&key[prefix.len()..])
                .as_ref()
                .into();
            devices.push((device_id, serde_json::from_slice(&value)?));
        }
        Ok(devices)
    }

    pub async fn set_display_name(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        display_name: Option<String>,
    ) -> Result<()> {
        let _guard = self.write_lock.lock().await;
        let mut record = self
            .get(user_id, device_id)?
            .ok_or_else(|| Error::not_found("No such device."))?;
        record.display_name = display_name;
        self.store.put(
            Cf::Devices,
            &Self::device_key(user_id, device_id),
            &serde_json::to_vec(&record)?,
        )?;
        Ok(())
    }

    /// Deletes the given devices and their access tokens in one batch. Missing ones are skipped.
    ///
    /// Returns whether any device was deleted: the caller announces that as a device-list
    /// change (see `Services::delete_devices`), which needs a stream count this service
    /// does not own.
    pub async fn delete_many(
        &self,
        user_id: &UserId,
        device_ids: &[OwnedDeviceId],
    ) -> Result<bool> {
        let _guard = self.write_lock.lock().await;
        let mut batch = Batch::new();
        for device_id in device_ids {
            if let Some(record) = self.get(user_id, device_id)? {
                self.delete_device_into(&mut batch, user_id, device_id, &record)?;
            }
        }
        let deleted = !batch.is_empty();
        self.store.write(batch)?;
        Ok(deleted)
    }

    /// Deletes one device (the one a request came from, for `/logout`).
    pub async fn delete(&self, user_id: &UserId, device_id: &DeviceId) -> Result<bool> {
        self.delete_many(user_id, &[device_id.to_owned()]).await
    }

    /// Deletes all of a user's devices except `keep`.
    /// Returns whether any device was deleted (see [`Devices::delete_many`]).
    pub async fn delete_all(&self, user_id: &UserId, keep: Option<&DeviceId>) -> Result<bool> {
        let _guard = self.write_lock.lock().await;
        let mut batch = Batch::new();
        self.delete_all_into(&mut batch, user_id, keep)?;
        let deleted = !batch.is_empty();
        self.store.write(batch)?;
        Ok(deleted)
    }

    /// Adds the deletion of all of a user's devices (except `keep`) to `batch`.
    pub fn delete_all_into(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        keep: Option<&DeviceId>,
    ) -> Result<()> {
        for (device_id, record) in self.list(user_id)? {
            if Some(device_id.as_ref()) == keep {
                continue;
            }
            self.delete_device_into(batch, user_id, &device_id, &record)?;
        }
        Ok(())
    }

    /// Adds the deletion of one device, its token and what is kept per device (the member
    /// events lazy-loading `/sync` sent it, its sliding-sync connections, its encryption keys
    /// and to-device queue) to `batch`.
    fn delete_device_into(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        device_id: &DeviceId,
        record: &DeviceRecord,
    ) -> Result<()> {
        batch.delete(Cf::AccessTokens, decode_hex(&record.token_hash)?);
        let device_key = Self::device_key(user_id, device_id);
        let prefix = keys::prefix(&device_key);
        // The member events lazy-loading `/sync` sent it, and its sliding-sync connections.
        for cf in [
            Cf::LazyLoadedMembers,
            Cf::SlidingConnections,
            Cf::SlidingRooms,
        ] {
            for item in self.store.scan_prefix(cf, &prefix) {
                batch.delete(cf, item?.0.to_vec());
            }
        }
        // Its keys and to-device queue go with it (E2EE), and the pushers it set.
        crate::service::e2ee::delete_device_into(&self.store, batch, user_id, device_id)?;
        crate::service::push::pushers::delete_device_pushers_into(
            &self.store,
            batch,
            user_id,
            device_id,
        )?;
        batch.delete(Cf::Devices, device_key);
        Ok(())
    }
}

fn decode_hex(hex: &str) -> Result<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return Err(Error::internal("corrupt token hash"));
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&hex[i..i + 2], 16)
                .map_err(|_| Error::internal("corrupt token hash"))
        })
        .collect()
}
