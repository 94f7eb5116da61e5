//! A local client's `/keys/query` and `/keys/claim` for users of other servers: asked of each
//! user's server (`/user/keys/query`, `/user/keys/claim`), all servers at once, each within
//! the client's timeout; a server that fails or is too slow is listed in `failures`. Answers
//! are not cached: device-list EDUs only mark users as changed, so clients always re-query.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use ruma::{
    OneTimeKeyAlgorithm, OwnedDeviceId, OwnedServerName, OwnedUserId, UserId,
    api::federation::keys::{claim_keys, get_keys},
};
use serde_json::{Map, Value, json};
use tokio::task::JoinSet;

use crate::{Result, service::Services};

/// The timeout when the client gives none (the spec's default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

type Answer = std::result::Result<Value, String>;

fn failure(message: String) -> Value {
    json!({ "status": 503, "message": message })
}

/// Keeps only the entries of a server's answer about that server's users.
fn own_users(server: &ruma::ServerName, map: &Value) -> Map<String, Value> {
    map.as_object()
        .map(|m| {
            m.iter()
                .filter(|(user, _)| {
                    UserId::parse(user.as_str()).is_ok_and(|u| u.server_name() == server)
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

impl Services {
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

    /// `/keys/query` for any users: local ones from the store, others from their servers.
    pub async fn query_keys_anywhere(
        self: &Arc<Self>,
        requester: &UserId,
        requested: &BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
        timeout: Duration,
    ) -> Result<Value> {
        let (local, remote) = self.split_by_server(requested);
        let mut answer = self.query_keys(requester, &local)?;
        let mut tasks: JoinSet<(OwnedServerName, Answer)> = JoinSet::new();
        for (server, users) in remote {
            let services = self.clone();
            tasks.spawn(async move {
                let request = get_keys::v1::Request::new(users);
                let sent = tokio::time::timeout(
                    timeout,
                    services.send_federation_request(&server, request),
                )
                .await;
                let result = match sent {
                    Ok(Ok(response)) => (|| {
                        Ok(json!({
                            "device_keys": serde_json::to_value(&response.device_keys)?,
                            "master_keys": serde_json::to_value(&response.master_keys)?,
                            "self_signing_keys": serde_json::to_value(&response.self_signing_keys)?,
                        }))
                    })()
                    .map_err(|e: serde_json::Error| e.to_string()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("timed out".to_owned()),
                };
                (server, result)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let Ok((server, result)) = joined else {
                continue;
            };
            match result {
                Ok(response) => {
                    for field in ["device_keys", "master_keys", "self_signing_keys"] {
                        if let Some(target) = answer[field].as_object_mut() {
                            target.extend(own_users(&server, &response[field]));
                        }
                    }
                }
                Err(message) => {
                    answer["failures"][server.as_str()] = failure(message);
                }
            }
        }
        Ok(answer)
    }

    /// `/keys/claim` for any users: local ones here, others from their servers.
    pub async fn claim_keys_anywhere(
        self: &Arc<Self>,
        requested: &BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, String>>,
        timeout: Duration,
    ) -> Result<Value> {
        let (local, remote) = self.split_by_server(requested);
        let mut answer = self.claim_keys(&local)?;
        let mut tasks: JoinSet<(OwnedServerName, Answer)> = JoinSet::new();
        for (server, users) in remote {
            let services = self.clone();
            tasks.spawn(async move {
                let claims = users
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
                let request = claim_keys::v1::Request::new(claims);
                let sent = tokio::time::timeout(
                    timeout,
                    services.send_federation_request(&server, request),
                )
                .await;
                let result = match sent {
                    Ok(Ok(response)) => serde_json::to_value(&response.one_time_keys)
                        .map(|keys| json!({ "one_time_keys": keys }))
                        .map_err(|e| e.to_string()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("timed out".to_owned()),
                };
                (server, result)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let Ok((server, result)) = joined else {
                continue;
            };
            match result {
                Ok(response) => {
                    if let Some(target) = answer["one_time_keys"].as_object_mut() {
                        target.extend(own_users(&server, &response["one_time_keys"]));
                    }
                }
                Err(message) => {
                    answer["failures"][server.as_str()] = failure(message);
                }
            }
        }
        Ok(answer)
    }
}
