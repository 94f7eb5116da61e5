//! `GET /voip/turnServer`: TURN credentials for calls (see `service::voip`). With no TURN server
//! configured the answer is an empty object, as Synapse gives: clients (nheko asks at start)
//! then call without relays.

use axum::{Json, extract};
use ruma::api::client::voip::get_turn_server_info::v3 as turn_v3;
use serde_json::{Value, json};

use crate::{
    Result,
    api::ruma::{Ruma, State},
};

pub async fn turn_server(
    extract::State(services): extract::State<State>,
    request: Ruma<turn_v3::Request>,
) -> Result<Json<Value>> {
    let user = request.user();
    let guest = services.users.get(user)?.is_some_and(|record| record.guest);
    Ok(Json(match services.turn_credentials(user, guest)? {
        Some(credentials) => serde_json::to_value(credentials)?,
        None => json!({}),
    }))
}
