//! Dehydrated devices (MSC3814): `PUT/GET/DELETE /dehydrated_device` and
//! `POST /dehydrated_device/{deviceId}/events`.

use axum::{Json, extract};
use ruma::api::client::dehydrated_device::{
    delete_dehydrated_device::unstable as delete_unstable,
    get_dehydrated_device::unstable as get_unstable, get_events::unstable as events_unstable,
    put_dehydrated_device::unstable as put_unstable,
};
use serde_json::{Value, json};

use super::keys::raw_value;
use crate::{
    Result,
    api::ruma::{Ruma, State},
    service::{dehydrated::NewDehydratedDevice, e2ee::KeyUpload},
};

pub async fn put(
    extract::State(services): extract::State<State>,
    request: Ruma<put_unstable::Request>,
) -> Result<Json<Value>> {
    let body = &request.body;
    let keys = |map: &std::collections::BTreeMap<ruma::OwnedOneTimeKeyId, _>| {
        map.iter()
            .map(|(id, key): (_, &ruma::serde::Raw<_>)| {
                Ok((id.to_string(), raw_value(key.json())?))
            })
            .collect::<Result<Vec<_>>>()
    };
    let new = NewDehydratedDevice {
        device_id: body.device_id.clone(),
        display_name: body.initial_device_display_name.clone(),
        device_data: raw_value(body.device_data.json())?,
        keys: KeyUpload {
            device_keys: Some(raw_value(body.device_keys.json())?),
            one_time_keys: keys(&body.one_time_keys)?,
            fallback_keys: keys(&body.fallback_keys)?,
        },
    };
    let device_id = services.put_dehydrated_device(request.user(), new).await?;
    Ok(Json(json!({ "device_id": device_id })))
}

pub async fn get(
    extract::State(services): extract::State<State>,
    request: Ruma<get_unstable::Request>,
) -> Result<Json<Value>> {
    let (device_id, device_data) = services.get_dehydrated_device(request.user())?;
    Ok(Json(
        json!({ "device_id": device_id, "device_data": device_data }),
    ))
}

pub async fn delete(
    extract::State(services): extract::State<State>,
    request: Ruma<delete_unstable::Request>,
) -> Result<Json<Value>> {
    let device_id = services.delete_dehydrated_device(request.user()).await?;
    Ok(Json(json!({ "device_id": device_id })))
}

pub async fn events(
    extract::State(services): extract::State<State>,
    request: Ruma<events_unstable::Request>,
) -> Result<Json<Value>> {
    let body = &request.body;
    let (events, next_batch) = services.dehydrated_device_events(
        request.user(),
        &body.device_id,
        body.next_batch.as_deref(),
    )?;
    let mut response = json!({ "events": events });
    if let Some(next_batch) = next_batch {
        response["next_batch"] = json!(next_batch);
    }
    Ok(Json(response))
}
