//! Device management: list, get, rename, delete (behind user-interactive auth). Appservices
//! (spec v1.17, MSC4190) also create devices for their users through `PUT /devices/{id}`, and
//! delete them and upload cross-signing keys without user-interactive auth: they have no
//! password to give.

use axum::{
    Json, extract,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use ruma::{
    OwnedDeviceId,
    api::client::device::{
        delete_device::v3 as delete_v3, delete_devices::v3 as delete_many_v3,
        get_device::v3 as get_v3, get_devices::v3 as list_v3, update_device::v3 as update_v3,
    },
};
use serde_json::{Value, json};

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse, State},
    service::devices::DeviceRecord,
};

/// A device as JSON with every field present (`null` when unknown). ruma's `Device` omits
/// absent fields, which the spec allows, but clients such as matrix-nio require the keys, and
/// Synapse sends them; so these two endpoints serialise devices themselves.
fn device_json(device_id: &OwnedDeviceId, record: &DeviceRecord) -> Value {
    json!({
        "device_id": device_id,
        "display_name": record.display_name,
        "last_seen_ip": record.last_seen_ip,
        "last_seen_ts": record.last_seen_ts,
    })
}

fn no_such_device() -> Error {
    Error::not_found("No device with that ID.")
}

pub async fn list(
    extract::State(services): extract::State<State>,
    request: Ruma<list_v3::Request>,
) -> Result<Json<Value>> {
    let devices: Vec<Value> = services
        .devices
        .list(request.user())?
        .iter()
        .map(|(id, record)| device_json(id, record))
        .collect();
    Ok(Json(json!({ "devices": devices })))
}

pub async fn get(
    extract::State(services): extract::State<State>,
    request: Ruma<get_v3::Request>,
) -> Result<Json<Value>> {
    let device_id = &request.body.device_id;
    let record = services
        .devices
        .get(request.user(), device_id)?
        .ok_or_else(no_such_device)?;
    Ok(Json(device_json(device_id, &record)))
}

/// `PUT /devices/{deviceId}`: renames a device; an appservice's request for a device its user
/// does not have creates it (201).
pub async fn update(
    extract::State(services): extract::State<State>,
    request: Ruma<update_v3::Request>,
) -> Result<Response> {
    let body = &request.body;
    if services
        .devices
        .get(request.user(), &body.device_id)?
        .is_none()
    {
        if request.appservice.is_none() {
            return Err(no_such_device());
        }
        if services
            .create_appservice_device(request.user(), &body.device_id, body.display_name.clone())
            .await?
        {
            return Ok((StatusCode::CREATED, Json(json!({}))).into_response());
        }
    }
    services
        .devices
        .set_display_name(request.user(), &body.device_id, body.display_name.clone())
        .await?;
    Ok(RumaResponse(update_v3::Response::new()).into_response())
}

pub async fn delete(
    extract::State(services): extract::State<State>,
    request: Ruma<delete_v3::Request>,
) -> Result<RumaResponse<delete_v3::Response>> {
    let user_id = request.user();
    let device_id = &request.body.device_id;
    if services.devices.get(user_id, device_id)?.is_none() {
        return Err(no_such_device());
    }
    if request.appservice.is_none() {
        let purpose = format!("delete_device:{user_id}:{device_id}");
        services
            .confirm_password(&purpose, request.body.auth.as_ref(), user_id)
            .await?;
    }
    services
        .delete_devices(user_id, std::slice::from_ref(device_id))
        .await?;
    Ok(RumaResponse(delete_v3::Response::new()))
}

pub async fn delete_many(
    extract::State(services): extract::State<State>,
    request: Ruma<delete_many_v3::Request>,
) -> Result<RumaResponse<delete_many_v3::Response>> {
    let user_id = request.user();
    if request.appservice.is_none() {
        let purpose = format!("delete_devices:{user_id}");
        services
            .confirm_password(&purpose, request.body.auth.as_ref(), user_id)
            .await?;
    }
    services
        .delete_devices(user_id, &request.body.devices)
        .await?;
    Ok(RumaResponse(delete_many_v3::Response::new()))
}
