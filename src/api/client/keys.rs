//! `/keys/upload`, `/keys/query`, `/keys/claim`, `/keys/changes`, and cross-signing
//! (`/keys/device_signing/upload`, `/keys/signatures/upload`): end-to-end encryption keys.

use std::collections::BTreeMap;

use axum::{Json, extract};
use ruma::api::client::keys::{
    claim_keys::v3 as claim_v3, get_key_changes::v3 as changes_v3, get_keys::v3 as query_v3,
    upload_keys::v3 as upload_v3, upload_signatures::v3 as signatures_v3,
    upload_signing_keys::v3 as signing_v3,
};
use serde_json::{Value, json};

use crate::{
    Error, Result,
    api::ruma::{Ruma, State},
    service::{cross_signing::SigningKeysUpload, e2ee::KeyUpload},
};

/// Raw JSON from the request as a value (ruma kept it unparsed).
pub(super) fn raw_value(raw: &serde_json::value::RawValue) -> Result<Value> {
    serde_json::from_str(raw.get()).map_err(|e| Error::bad_json(format!("Invalid JSON: {e}")))
}

pub async fn upload(
    extract::State(services): extract::State<State>,
    request: Ruma<upload_v3::Request>,
) -> Result<Json<Value>> {
    let body = &request.body;
    let keys = |map: &BTreeMap<ruma::OwnedOneTimeKeyId, _>| -> Result<Vec<(String, Value)>> {
        map.iter()
            .map(|(id, key): (_, &ruma::serde::Raw<_>)| {
                Ok((id.to_string(), raw_value(key.json())?))
            })
            .collect()
    };
    let upload = KeyUpload {
        device_keys: body
            .device_keys
            .as_ref()
            .map(|raw| raw_value(raw.json()))
            .transpose()?,
        one_time_keys: keys(&body.one_time_keys)?,
        fallback_keys: keys(&body.fallback_keys)?,
    };
    let counts = services
        .upload_keys(request.user(), request.device(), upload)
        .await?;
    Ok(Json(json!({ "one_time_key_counts": counts })))
}

pub async fn query(
    extract::State(services): extract::State<State>,
    request: Ruma<query_v3::Request>,
) -> Result<Json<Value>> {
    let timeout = request
        .body
        .timeout
        .unwrap_or(crate::service::federation::remote_keys::DEFAULT_TIMEOUT);
    Ok(Json(
        services
            .query_keys_anywhere(request.user(), &request.body.device_keys, timeout)
            .await?,
    ))
}

pub async fn claim(
    extract::State(services): extract::State<State>,
    request: Ruma<claim_v3::Request>,
) -> Result<Json<Value>> {
    let requested = request
        .body
        .one_time_keys
        .iter()
        .map(|(user_id, devices)| {
            let devices = devices
                .iter()
                .map(|(device_id, algorithm)| (device_id.clone(), algorithm.to_string()))
                .collect();
            (user_id.clone(), devices)
        })
        .collect();
    let timeout = request
        .body
        .timeout
        .unwrap_or(crate::service::federation::remote_keys::DEFAULT_TIMEOUT);
    Ok(Json(
        services.claim_keys_anywhere(&requested, timeout).await?,
    ))
}

/// `POST /keys/device_signing/upload`. Replacing existing cross-signing keys needs the
/// account's password (user-interactive auth); the first upload, when the user has no master
/// key yet, does not (as the spec allows, so clients can bootstrap cross-signing silently),
/// nor does an appservice's for its users (spec v1.17, MSC4190).
pub async fn upload_signing_keys(
    extract::State(services): extract::State<State>,
    request: Ruma<signing_v3::Request>,
) -> Result<Json<Value>> {
    let user_id = request.user();
    let body = &request.body;
    let raw = |key: &Option<ruma::serde::Raw<_>>| -> Result<Option<Value>> {
        key.as_ref()
            .map(|k: &ruma::serde::Raw<_>| raw_value(k.json()))
            .transpose()
    };
    let upload = SigningKeysUpload {
        master_key: raw(&body.master_key)?,
        self_signing_key: raw(&body.self_signing_key)?,
        user_signing_key: raw(&body.user_signing_key)?,
    };
    if request.appservice.is_none() && services.has_master_key(user_id)? {
        // The keys the user has already, uploaded again: nothing to confirm or change.
        if services.signing_keys_unchanged(user_id, &upload)? {
            return Ok(Json(json!({})));
        }
        let purpose = format!("device_signing_upload:{user_id}");
        services
            .confirm_password(&purpose, body.auth.as_ref(), user_id)
            .await?;
    }
    services.upload_signing_keys(user_id, upload).await?;
    Ok(Json(json!({})))
}

/// `POST /keys/signatures/upload`.
pub async fn upload_signatures(
    extract::State(services): extract::State<State>,
    request: Ruma<signatures_v3::Request>,
) -> Result<Json<Value>> {
    let mut signed = Vec::new();
    for (user_id, keys) in &request.body.signed_keys {
        for (key_id, object) in keys.iter() {
            signed.push((user_id.clone(), key_id.to_owned(), raw_value(object)?));
        }
    }
    Ok(Json(
        services.upload_signatures(request.user(), signed).await?,
    ))
}

/// `GET /keys/changes?from=&to=`: tokens are sync tokens (stream positions).
pub async fn changes(
    extract::State(services): extract::State<State>,
    request: Ruma<changes_v3::Request>,
) -> Result<Json<Value>> {
    let parse = |token: &str| {
        token
            .parse::<u64>()
            .map_err(|_| Error::invalid_param(format!("Unknown token {token}.")))
    };
    let from = parse(&request.body.from)?;
    let to = parse(&request.body.to)?.min(services.timeline.current_count());
    let changes = services.device_list_changes(request.user(), from, to)?;
    Ok(Json(
        json!({ "changed": changes.changed, "left": changes.left }),
    ))
}
