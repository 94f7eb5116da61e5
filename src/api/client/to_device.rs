//! `PUT /sendToDevice/{eventType}/{txnId}`.

use axum::extract;
use ruma::{
    api::client::to_device::send_event_to_device::v3 as send_v3, to_device::DeviceIdOrAllDevices,
};

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse, State},
    service::e2ee::ToDeviceMessage,
};

pub async fn send(
    extract::State(services): extract::State<State>,
    request: Ruma<send_v3::Request>,
) -> Result<RumaResponse<send_v3::Response>> {
    let body = &request.body;
    let mut messages = Vec::new();
    for (user_id, devices) in &body.messages {
        for (target, content) in devices {
            let content = super::keys::raw_value(content.json())?;
            if !content.is_object() {
                return Err(Error::bad_json(
                    "A to-device message's content must be an object.",
                ));
            }
            messages.push(ToDeviceMessage {
                user_id: user_id.clone(),
                device_id: match target {
                    DeviceIdOrAllDevices::DeviceId(device_id) => Some(device_id.clone()),
                    DeviceIdOrAllDevices::AllDevices => None,
                },
                content,
            });
        }
    }
    services
        .send_to_device(
            request.user(),
            request.device(),
            &body.event_type.to_string(),
            body.txn_id.as_str(),
            messages,
        )
        .await?;
    Ok(RumaResponse(send_v3::Response::new()))
}
