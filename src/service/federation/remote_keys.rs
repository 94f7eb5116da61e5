//! End-to-end encryption keys of other servers' users, for local clients: `/keys/query` and
//! `/keys/claim` split the request by server, answer the local part here and ask each other
//! server (`/user/keys/query`, `/user/keys/claim`) for its users, all servers at once. A
//! server that fails is named in `failures`; the answer still carries everyone else's keys.

use std::collections::BTreeMap;

use ruma::{
    OneTimeKeyAlgorithm, OwnedDeviceId, OwnedServerName, OwnedUserId, UserId,
    api::federation::keys::{claim_keys, get_keys},
};
use serde_json::{Value, json};

use crate::{Result, service::Services};

fn failure(e: impl std::fmt::Display) -> Value {
    json!({ "status": 503, "message": e.to_string() })
}

fn to_json(value: &impl serde::Serialize) -> Value {
    serde_json::to_value(value).unwrap_or_default()
}

fn merge_into(target: &mut Value, field: &str, extra: Value) {
    if let (Some(target), Value::Object(extra)) =
        (target.get_mut(field).and_then(Value::as_object_mut), extra)
    {
        target.extend(extra);
    }
}

impl Services {
    /// `/keys/query` for local and remote users.
    pub async fn query_keys_anywhere(
        &self,
        requester: &UserId,
        requested: &BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
    ) -> Result<Value> {
        let (local, remote) = self.split_by_server(requested);
        let mut answer = self.query_keys(requester, &local)?;
        if remote.is_empty() {
            return Ok(answer);
        }
        let queries = remote.into_iter().map(|(server, users)| async move {
            let result = self
                .send_federation_request(&server, get_keys::v1::Request::new(users))
                .await;
            (server, result)
        });
        for (server, result) in futures_util::future::join_all(queries).await {
            match result {
                Ok(response) => {
                    merge_into(&mut answer, "device_keys", to_json(&response.device_keys));
                    merge_into(&mut answer, "master_keys", to_json(&response.master_keys));
                    merge_into(
                        &mut answer,
                        "self_signing_keys",
                        to_json(&response.self_signing_keys),
                    );
                }
                Err(e) => {
                    if let Some(failures) = answer["failures"].as_object_mut() {
                        failures.insert(server.to_string(), failure(e));
                    }
                }
            }
        }
        Ok(answer)
    }

    /// `/keys/claim` for local and remote users.
    pub async fn claim_keys_anywhere(
        &self,
        requested: &BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, String>>,
    ) -> Result<Value> {
        let (local, remote) = self.split_by_server(requested);
        let mut answer = self.claim_keys(&local)?;
        if remote.is_empty() {
            return Ok(answer);
        }
        let claims = remote.into_iter().map(|(server, users)| async move {
            let users = users
                .into_iter()
                .map(|(user, devices)| {
                    let devices = devices
                        .into_iter()
                        .map(|(device, algorithm)| {
                            (device, OneTimeKeyAlgorithm::from(algorithm.as_str()))
                        })
                        .collect();
                    (user, devices)
                })
                .collect();
            let result = self
                .send_federation_request(&server, claim_keys::v1::Request::new(users))
                .await;
            (server, result)
        });
        for (server, result) in futures_util::future::join_all(claims).await {
            match result {
                Ok(response) => {
                    let keys = serde_json::to_value(&response.one_time_keys).unwrap_or_default();
                    merge_into(&mut answer, "one_time_keys", keys);
                }
                Err(e) => {
                    if let Some(failures) = answer["failures"].as_object_mut() {
                        failures.insert(server.to_string(), failure(e));
                    }
                }
            }
        }
        Ok(answer)
    }

    /// The local users of a request, and the others grouped by server.
    #[allow(clippy::type_complexity)]
    fn split_by_server<T: Clone>(
        &self,
        requested: &BTreeMap<OwnedUserId, T>,
    ) -> (
        BTreeMap<OwnedUserId, T>,
        BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, T>>,
    ) {
        let mut local = BTreeMap::new();
        let mut remote: BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, T>> = BTreeMap::new();
        for (user, value) in requested {
            if user.server_name() == self.server_name || !self.federation.enabled {
                local.insert(user.clone(), value.clone());
            } else {
                remote
                    .entry(user.server_name().to_owned())
                    .or_default()
                    .insert(user.clone(), value.clone());
            }
        }
        (local, remote)
    }
}
