//! Sync filters: `POST /user/{userId}/filter`, `GET /user/{userId}/filter/{filterId}`.

use axum::extract;
use ruma::api::client::filter::{create_filter::v3 as create_v3, get_filter::v3 as get_v3};

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse, State},
};

pub async fn create(
    extract::State(services): extract::State<State>,
    request: Ruma<create_v3::Request>,
) -> Result<RumaResponse<create_v3::Response>> {
    if request.user() != request.body.user_id {
        return Err(Error::forbidden(
            "You may only create filters for yourself.",
        ));
    }
    let id = services
        .filters
        .create(&services.short_ids, request.user(), &request.body.filter)?;
    Ok(RumaResponse(create_v3::Response::new(id)))
}

pub async fn get(
    extract::State(services): extract::State<State>,
    request: Ruma<get_v3::Request>,
) -> Result<RumaResponse<get_v3::Response>> {
    if request.user() != request.body.user_id {
        return Err(Error::forbidden("You may only read your own filters."));
    }
    let filter = services
        .filters
        .get(request.user(), &request.body.filter_id)?
        .ok_or_else(|| Error::not_found("No such filter."))?;
    Ok(RumaResponse(get_v3::Response::new(filter)))
}
