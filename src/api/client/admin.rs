//! The client-server API's administration endpoints: `GET /admin/whois/{userId}` (a user's
//! devices and where they were last seen), for server admins and for the user themself.

use axum::{Json, extract};
use ruma::api::client::admin::get_user_info::v3 as whois_v3;
use serde_json::{Map, Value, json};

use crate::{
    Error, Result,
    api::ruma::{Ruma, State},
};

pub async fn whois(
    extract::State(services): extract::State<State>,
    request: Ruma<whois_v3::Request>,
) -> Result<Json<Value>> {
    let asker = request.user();
    let user_id = &request.body.user_id;
    let admin = services.users.get(asker)?.is_some_and(|r| r.admin);
    if asker != user_id && !admin {
        return Err(Error::forbidden(
            "Only server admins may look up other users' sessions.",
        ));
    }
    if user_id.server_name() != services.server_name || !services.users.exists(user_id)? {
        return Err(Error::not_found("No such user on this server."));
    }
    let mut devices = Map::new();
    for (device_id, record) in services.devices.list(user_id)? {
        let mut connection = Map::new();
        if let Some(ip) = record.last_seen_ip {
            connection.insert("ip".into(), json!(ip));
        }
        if let Some(ts) = record.last_seen_ts {
            connection.insert("last_seen".into(), json!(ts));
        }
        devices.insert(
            device_id.to_string(),
            json!({ "sessions": [{ "connections": [connection] }] }),
        );
    }
    Ok(Json(json!({ "user_id": user_id, "devices": devices })))
}
