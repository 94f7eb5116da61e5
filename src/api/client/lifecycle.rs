//! A room's life beyond joining and leaving: knocking, forgetting, upgrading, and finding events
//! by time.

use axum::extract;
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedRoomId, UInt,
    api::client::{
        knock::knock_room::v3 as knock_v3, membership::forget_room::v3 as forget_v3,
        room::get_event_by_timestamp::v1 as timestamp_v1, room::upgrade_room::v3 as upgrade_v3,
    },
};

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse, State},
};

/// `POST /knock/{roomIdOrAlias}`. `via`/`server_name` only matter for rooms on other servers,
/// which need federation.
pub async fn knock(
    extract::State(services): extract::State<State>,
    request: Ruma<knock_v3::Request>,
) -> Result<RumaResponse<knock_v3::Response>> {
    let (room_id, via) = match OwnedRoomId::try_from(request.body.room_id_or_alias.clone()) {
        Ok(room_id) => (room_id, request.body.via.clone()),
        Err(alias) if alias.server_name() == services.server_name => (
            services
                .resolve_alias(&alias)?
                .ok_or_else(|| Error::not_found("No room has that alias."))?,
            request.body.via.clone(),
        ),
        Err(alias) => {
            let (room_id, servers) = services.resolve_alias_anywhere(&alias).await?;
            let via = request.body.via.iter().cloned().chain(servers).collect();
            (room_id, via)
        }
    };
    services
        .knock_anywhere(
            &room_id,
            request.user(),
            &via,
            request.body.reason.as_deref(),
        )
        .await?;
    Ok(RumaResponse(knock_v3::Response::new(room_id)))
}

pub async fn forget(
    extract::State(services): extract::State<State>,
    request: Ruma<forget_v3::Request>,
) -> Result<RumaResponse<forget_v3::Response>> {
    services
        .forget_room(&request.body.room_id, request.user())
        .await?;
    Ok(RumaResponse(forget_v3::Response::new()))
}

pub async fn upgrade(
    extract::State(services): extract::State<State>,
    request: Ruma<upgrade_v3::Request>,
) -> Result<RumaResponse<upgrade_v3::Response>> {
    let body = &request.body;
    let new_room = services
        .upgrade_room(
            &body.room_id,
            request.user(),
            body.new_version.clone(),
            body.additional_creators.clone(),
        )
        .await?;
    Ok(RumaResponse(upgrade_v3::Response::new(new_room)))
}

pub async fn timestamp_to_event(
    extract::State(services): extract::State<State>,
    request: Ruma<timestamp_v1::Request>,
) -> Result<RumaResponse<timestamp_v1::Response>> {
    let body = &request.body;
    let forward = matches!(body.dir, ruma::api::Direction::Forward);
    let (event_id, ts) = services.event_at_timestamp(
        &body.room_id,
        request.user(),
        body.ts.get().into(),
        forward,
    )?;
    let ts = UInt::new(ts).ok_or_else(|| Error::internal("timestamp out of range"))?;
    Ok(RumaResponse(timestamp_v1::Response::new(
        event_id,
        MilliSecondsSinceUnixEpoch(ts),
    )))
}
