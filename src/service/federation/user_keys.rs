//! What other servers may ask about this server's users' devices and keys:
//! `/user/devices/{userId}`, `/user/keys/query`, `/user/keys/claim`. Only local users are
//! answered (another server's users are not ours to vouch for); user-signing keys and
//! third-party signatures of master keys never leave the server.

use std::collections::BTreeMap;

use ruma::{OwnedDeviceId, OwnedUserId, UserId};
use serde_json::{Map, Value, json};

use crate::{
    Error, Result,
    service::Services,
    store::{Cf, keys},
};

/// At most this many users per query or claim.
const MAX_USERS: usize = 1000;

impl Services {
    fn require_local_user(&self, user_id: &UserId) -> Result<()> {
        if user_id.server_name() != self.server_name {
            return Err(Error::invalid_param("That user is not on this server."));
        }
        Ok(())
    }

    /// `/user/devices/{userId}`: the user's devices with identity keys, the stream position
    /// of their device list, and their master and self-signing keys.
    pub fn user_devices_for_server(&self, user_id: &UserId) -> Result<Value> {
        self.require_local_user(user_id)?;
        if !self.users.exists(user_id)? {
            return Err(Error::not_found("No such user."));
        }
        let mut devices = Vec::new();
        for (device_id, record) in self.devices.list(user_id)? {
            let key = keys::join([user_id.as_bytes(), device_id.as_bytes()]);
            // A device without identity keys is of no use to another server's clients.
            let Some(bytes) = self.store.get(Cf::DeviceKeys, &key)? else {
                continue;
            };
            let mut device = json!({
                "device_id": device_id,
                "keys": serde_json::from_slice::<Value>(&bytes)?,
            });
            if let Some(name) = record.display_name {
                device["device_display_name"] = json!(name);
            }
            devices.push(device);
        }
        let stream_id = self
            .store
            .get(Cf::DeviceListCounts, user_id.as_bytes())?
            .and_then(|b| keys::parse_u64_be(&b))
            .unwrap_or(0);
        let mut response = json!({
            "user_id": user_id,
            "stream_id": stream_id,
            "devices": devices,
        });
        let [(_, master), (_, self_signing), _] = self.query_signing_keys(user_id, user_id)?;
        if let Some(master) = master {
            response["master_key"] = master;
        }
        if let Some(self_signing) = self_signing {
            response["self_signing_key"] = self_signing;
        }
        Ok(response)
    }

    /// `/user/keys/query`: device keys, master and self-signing keys of local users (others
    /// are left out).
    pub fn query_keys_for_server(
        &self,
        requested: &BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
    ) -> Result<Value> {
        if requested.len() > MAX_USERS {
            return Err(Error::invalid_param(format!(
                "At most {MAX_USERS} users per query."
            )));
        }
        let mut device_keys = Map::new();
        let mut master_keys = Map::new();
        let mut self_signing_keys = Map::new();
        for (user_id, devices) in requested {
            if user_id.server_name() != self.server_name {
                continue;
            }
            // Asked as the user themself: only the owner's signatures on their master key.
            let one = BTreeMap::from([(user_id.clone(), devices.clone())]);
            let answer = self.query_keys(user_id, &one)?;
            let key = user_id.as_str();
            if let Some(devices) = answer["device_keys"].get(key) {
                device_keys.insert(key.to_owned(), devices.clone());
            }
            if let Some(master) = answer["master_keys"].get(key) {
                master_keys.insert(key.to_owned(), master.clone());
            }
            if let Some(self_signing) = answer["self_signing_keys"].get(key) {
                self_signing_keys.insert(key.to_owned(), self_signing.clone());
            }
        }
        Ok(json!({
            "device_keys": device_keys,
            "master_keys": master_keys,
            "self_signing_keys": self_signing_keys,
        }))
    }

    /// `/user/keys/claim`: one-time (or fallback) keys of local users' devices.
    pub fn claim_keys_for_server(
        &self,
        requested: &BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, String>>,
    ) -> Result<Value> {
        if requested.len() > MAX_USERS {
            return Err(Error::invalid_param(format!(
                "At most {MAX_USERS} users per claim."
            )));
        }
        let local: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, String>> = requested
            .iter()
            .filter(|(user_id, _)| user_id.server_name() == self.server_name)
            .map(|(u, d)| (u.clone(), d.clone()))
            .collect();
        let answer = self.claim_keys(&local)?;
        Ok(json!({ "one_time_keys": answer["one_time_keys"] }))
    }
}
