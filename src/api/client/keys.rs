//! `/keys/upload`, `/keys/query` and `/keys/claim`: end-to-end encryption keys.

use std::collections::BTreeMap;

use axum::{Json, extract};
use ruma::api::client::keys::{
    claim_keys::v3 as claim_v3, get_keys::v3 as query_v3, upload_keys::v3 as upload_v3,
};
use serde_json::{Value, json};

use crate::{
    Error, Result,
    api::ruma::{Ruma, State},
    service::e2ee::KeyUpload,
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
    let counts = services.upload_keys(request.user(), request.device(), upload)?;
    Ok(Json(json!({ "one_time_key_counts": counts })))
}

pub async fn query(
    extract::State(services): extract::State<State>,
    request: Ruma<query_v3::Request>,
) -> Result<Json<Value>> {
    Ok(Json(services.query_keys(&request.body.device_keys)?))
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
    Ok(Json(services.claim_keys(&requested)?))
}
