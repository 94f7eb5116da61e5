//! `GET /_matrix/key/v2/server`: this server's signing key, for other servers (and notaries) to
//! verify what culvert signs.

use axum::extract;
use ruma::{api::federation::discovery::get_server_keys::v2 as keys_v2, serde::Raw};

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse, State},
    service::globals::KEY_VALIDITY,
};

pub async fn server_keys(
    extract::State(services): extract::State<State>,
    _: Ruma<keys_v2::Request>,
) -> Result<RumaResponse<keys_v2::Response>> {
    let keys = services
        .globals
        .signed_server_keys(&services.server_name, KEY_VALIDITY)?;
    let raw = serde_json::value::to_raw_value(&keys)
        .map_err(|e| Error::internal(format!("server keys serialisation: {e}")))?;
    Ok(RumaResponse(keys_v2::Response::new(Raw::from_json(raw))))
}
