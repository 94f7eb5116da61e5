//! `GET /hierarchy/{roomId}`: a space and its children as this server knows them (the checks
//! are in `service::federation::knock`).

use axum::{Json, extract};
use ruma::api::federation::space::get_hierarchy;
use serde_json::Value;

use crate::{
    Error, Result,
    api::{ruma::State, server::auth::Fed},
};

pub async fn hierarchy(
    extract::State(services): extract::State<State>,
    request: Fed<get_hierarchy::v1::Request>,
) -> Result<Json<Value>> {
    let body = &request.body;
    if !services.server_acl_allows(&body.room_id, &request.origin)? {
        return Err(Error::forbidden(
            "The room's server ACL denies your server.",
        ));
    }
    Ok(Json(services.hierarchy_for_server(
        &request.origin,
        &body.room_id,
        body.suggested_only,
    )?))
}
