//! `GET /openid/userinfo`: who an OpenID token belongs to. Asked by third parties, so not
//! signed with `X-Matrix`; the token itself is the credential.

use axum::extract;
use ruma::api::federation::openid::get_openid_userinfo;

use crate::{
    Result,
    api::ruma::{Ruma, RumaResponse, State},
};

pub async fn userinfo(
    extract::State(services): extract::State<State>,
    request: Ruma<get_openid_userinfo::v1::Request>,
) -> Result<RumaResponse<get_openid_userinfo::v1::Response>> {
    let user_id = services.openid_token_user(&request.body.access_token)?;
    Ok(RumaResponse(get_openid_userinfo::v1::Response::new(
        user_id,
    )))
}
