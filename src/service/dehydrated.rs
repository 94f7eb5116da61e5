//! Dehydrated devices (MSC3814): a device whose keys and pickled account a client leaves on
//! the server, so that messages sent while none of the user's devices is online can still be
//! decrypted later. The server only stores what the client gives it and queues the device's
//! to-device messages like any other device's; it never holds a usable access token for it.

use ruma::{DeviceId, OwnedDeviceId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::e2ee::KeyUpload;
use crate::{
    Error, Result,
    service::{Services, devices::Devices},
    store::{Batch, Cf, keys},
};

/// Most to-device messages one `/events` call hands out.
const EVENTS_PER_PAGE: usize = 100;

/// What the `dehydrated_devices` column family holds for a user.
#[derive(Serialize, Deserialize)]
struct Dehydrated {
    device_id: OwnedDeviceId,
    /// The client's opaque `device_data` (its pickled account, encrypted), as uploaded.
    device_data: Value,
}

/// A new dehydrated device, as `PUT /dehydrated_device` brings it.
pub struct NewDehydratedDevice {
    pub device_id: OwnedDeviceId,
    pub display_name: Option<String>,
    pub device_data: Value,
    pub keys: KeyUpload,
}

impl Services {
    fn dehydrated(&self, user_id: &UserId) -> Result<Option<Dehydrated>> {
        let Some(bytes) = self.store.get(Cf::DehydratedDevices, user_id.as_bytes())? else {
            return Ok(None);
        };
        let record: Dehydrated = serde_json::from_slice(&bytes)?;
        // The device may have been deleted since (e.g. by logging out everywhere).
        Ok(self
            .devices
            .get(user_id, &record.device_id)?
            .map(|_| record))
    }

    /// Replaces the user's dehydrated device (the old one is deleted with its keys and
    /// messages) by a new device with the given keys.
    pub async fn put_dehydrated_device(
        &self,
        user_id: &UserId,
        new: NewDehydratedDevice,
    ) -> Result<OwnedDeviceId> {
        if self.devices.get(user_id, &new.device_id)?.is_some() {
            return Err(Error::invalid_param(
                "A device with that ID exists already.",
            ));
        }
        // A device like any other (so `*` to-device messages and key queries reach it), but the
        // access token made for it is dropped unseen: nobody can sign in as it.
        let mut batch = Batch::new();
        Devices::new_device_into(
            &mut batch,
            user_id,
            Some(new.device_id.clone()),
            new.display_name,
            None,
            None,
        )?;
        self.store.write(batch)?;
        if let Err(e) = self.upload_keys(user_id, &new.device_id, new.keys).await {
            // Keys the client got wrong: the new device goes, the old one stays.
            self.delete_devices(user_id, std::slice::from_ref(&new.device_id))
                .await?;
            return Err(e);
        }
        // Only now is the old dehydrated device replaced.
        if let Some(old) = self.dehydrated(user_id)? {
            self.delete_devices(user_id, &[old.device_id]).await?;
        }
        let record = Dehydrated {
            device_id: new.device_id.clone(),
            device_data: new.device_data,
        };
        self.store.put(
            Cf::DehydratedDevices,
            user_id.as_bytes(),
            &serde_json::to_vec(&record)?,
        )?;
        Ok(new.device_id)
    }

    /// The user's dehydrated device: its ID and data.
    pub fn get_dehydrated_device(&self, user_id: &UserId) -> Result<(OwnedDeviceId, Value)> {
        let record = self
            .dehydrated(user_id)?
            .ok_or_else(|| Error::not_found("No dehydrated device."))?;
        Ok((record.device_id, record.device_data))
    }

    /// Deletes the user's dehydrated device, with its keys and messages.
    pub async fn delete_dehydrated_device(&self, user_id: &UserId) -> Result<OwnedDeviceId> {
        let record = self
            .dehydrated(user_id)?
            .ok_or_else(|| Error::not_found("No dehydrated device."))?;
        self.delete_devices(user_id, std::slice::from_ref(&record.device_id))
            .await?;
        let mut batch = Batch::new();
        batch.delete(Cf::DehydratedDevices, user_id.as_bytes());
        self.store.write(batch)?;
        Ok(record.device_id)
    }

    /// A page of the dehydrated device's to-device messages after `next_batch` (a stream count,
    /// as the previous page answered); passing it acknowledges (deletes) the messages before.
    /// Returns the messages and the token for the next page (`None` when there are none).
    pub fn dehydrated_device_events(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        next_batch: Option<&str>,
    ) -> Result<(Vec<Value>, Option<String>)> {
        let record = self
            .dehydrated(user_id)?
            .filter(|r| r.device_id == device_id)
            .ok_or_else(|| Error::forbidden("That is not your dehydrated device."))?;
        let after = match next_batch {
            Some(token) => {
                let after = token
                    .parse::<u64>()
                    .map_err(|_| Error::invalid_param("Unknown next_batch token."))?;
                self.acknowledge_to_device(user_id, &record.device_id, after)?;
                after
            }
            None => 0,
        };
        let prefix = keys::prefix(&keys::join([
            user_id.as_bytes(),
            record.device_id.as_bytes(),
        ]));
        let mut start = prefix.clone();
        start.extend_from_slice(&keys::u64_be(after.saturating_add(1)));
        let mut events = Vec::new();
        let mut last = None;
        for item in self
            .store
            .scan_prefix_from(Cf::ToDevice, &prefix, &start)
            .take(EVENTS_PER_PAGE)
        {
            let (key, value) = item?;
            last = keys::parse_u64_be(&key[prefix.len()..]);
            events.push(serde_json::from_slice(&value)?);
        }
        Ok((events, last.map(|count| count.to_string())))
    }
}
