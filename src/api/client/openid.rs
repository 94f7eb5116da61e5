//! `POST /user/{userId}/openid/request_token`: a token a third party checks with this server's
//! federation `openid/userinfo` (see `service::federation::openid`).

use std::time::Duration;

use axum::extract;
use ruma::api::client::account::request_openid_token::v3 as request_token_v3;

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse, State},
};

pub async fn request_token(
    extract::State(services): extract::State<State>,
    request: Ruma<request_token_v3::Request>,
) -> Result<RumaResponse<request_token_v3::Response>> {
    if request.body.user_id != request.user() {
        return Err(Error::forbidden(
            "You can only request OpenID tokens for yourself.",
        ));
    }
    let (token, lifetime_ms) = services.create_openid_token(request.user())?;
    Ok(RumaResponse(request_token_v3::Response::new(
        token,
        ruma::authentication::TokenType::Bearer,
        services.server_name.clone(),
        Duration::from_millis(lifetime_ms),
    )))
}
